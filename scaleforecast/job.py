"""Which process of which training job this is, read from the launcher's environment (no torch import).

A multi-process job (torchrun, Lightning DDP, SLURM) is one run of a sweep: its global rank 0 writes the
job's record to the sweep registry and every rank reads. The rank comes from the variables the launchers set:
``RANK`` (torchrun, Lightning, accelerate), ``SLURM_PROCID``, or ``LOCAL_RANK`` on the first node
(``NODE_RANK``/``GROUP_RANK`` 0). The job's id, which every rank must agree on, comes from
``SCALEFORECAST_RUN_ID``, ``TORCHELASTIC_RUN_ID`` (torchrun's rendezvous id, unique per single-node launch
or given with ``--rdzv-id``) or ``SLURM_JOB_ID`` (with the step id); adapters that own a process group can
pass both instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["job_rank", "job_run_id", "job_world_size"]


def _int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        return None


def job_rank(env: Mapping[str, str] | None = None) -> int:
    """The global rank of this process (0 when the environment names none: a single process).

    ``LOCAL_RANK`` alone counts only on node 0; on another node a process with no global rank in the
    environment is reported as a non-zero rank (it must not write the job's record)."""
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        rank = _int(env, key)
        if rank is not None:
            return rank
    local = _int(env, "LOCAL_RANK")
    if local is None:
        return 0
    node = _int(env, "NODE_RANK") or _int(env, "GROUP_RANK") or 0
    return local if node == 0 else max(local, 1)


def job_world_size(env: Mapping[str, str] | None = None) -> int:
    """The number of processes of the job (1 when the environment names none)."""
    env = os.environ if env is None else env
    for key in ("WORLD_SIZE", "SLURM_NTASKS"):
        n = _int(env, key)
        if n is not None and n >= 1:
            return n
    return 1


def job_run_id(env: Mapping[str, str] | None = None) -> str | None:
    """An id that every process of this job shares and other jobs do not, or ``None`` when the environment
    has none (torchrun's static rendezvous says ``none``)."""
    env = os.environ if env is None else env
    explicit = env.get("SCALEFORECAST_RUN_ID", "").strip()
    if explicit:
        return explicit
    elastic = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if elastic and elastic.lower() != "none":
        return f"torchrun-{elastic}"
    slurm = env.get("SLURM_JOB_ID", "").strip()
    if slurm:
        step = env.get("SLURM_STEP_ID", "").strip()
        return f"slurm-{slurm}" + (f".{step}" if step else "")
    return None
