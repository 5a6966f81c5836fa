"""Per-step values kept on the device, and the two collectives the training session needs from a framework.

Reading a CUDA loss with ``.item()`` every step stalls the host until the GPU catches up. :class:`DeviceBuffer`
instead keeps a detached copy of each step value on the value's device (an asynchronous device-side copy, no
host read) and stacks them at the flush. Every K steps the session packs the buffer (:meth:`DeviceBuffer.pack`: the values, the step
numbers, the LRs used and a count) and all-gathers it: one collective and one device-to-host copy, the only
synchronising work. A rank whose own part of the plugin failed sends :meth:`DeviceBuffer.no_data` instead, a
message of the same shape marked "no data", so that it still joins every collective. :func:`reduce_ranks`
turns the gathered messages into per-step values over the ranks that had data: the mean and the max of the
loss, the gradient norm, and whether any rank saw a loss at that step.

:class:`Collectives` is the small protocol a framework implements (all-gather, reduce-boolean);
:class:`TorchCollectives` implements it over ``torch.distributed`` (any process group, or none: local).
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from scaleforecast.caller import warn_user

__all__ = [
    "Collectives",
    "DeviceBuffer",
    "Reduced",
    "TorchCollectives",
    "collective_device",
    "dist_ready",
    "reduce_ranks",
]

LOSS, SEEN, GRAD = 0, 1, 2
"""Channels of the buffer: the step's loss, 1 where a loss was pushed, and the gradient norm (optional)."""


_HELD: deque[Any] = deque(maxlen=4)
"""The latest collectives' work handles. A backend's worker thread (gloo's run loop, NCCL's watchdog) holds a
collective's work, and its tensors, for a moment after the call returned; were it the one to free them, it would
take the GIL to release the Python tensors, and in a process that exits right after its last collective (a run
this plugin stopped) it finds the interpreter finalising and aborts the process ("terminate called without an
active exception"). Held here a few collectives long, and the last ones until the interpreter frees them, the
work is always freed by Python, on a thread that holds the GIL."""


def dist_ready() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def collective_device(fallback: torch.device, group: Any = None) -> torch.device:
    """NCCL needs CUDA tensors and gloo CPU ones; pick the device the group's backend wants."""
    if not dist_ready():
        return fallback
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if "gloo" in backend:
        return torch.device("cpu")
    return fallback


@runtime_checkable
class Collectives(Protocol):
    """The collectives the training session runs, at the same step on every rank.

    ``all_gather(t)`` returns a ``(world_size, *t.shape)`` tensor of every rank's ``t`` (on ``device``);
    ``any(flag)`` is true on every rank when it is true on one. ``rank``/``world_size`` place this process.
    """

    rank: int
    world_size: int
    device: torch.device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor: ...

    def any(self, flag: bool) -> bool: ...


class TorchCollectives:
    """:class:`Collectives` over ``torch.distributed`` (``group``: a process group, default the world);
    without an initialised process group it is local (rank 0 of 1, no communication)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        ready = dist_ready()
        self.rank = dist.get_rank(group) if ready else 0
        if ready and group is not None and self.rank < 0:
            raise ValueError(
                f"process_group: this process (global rank {dist.get_rank()}) is not in it; pass every rank the "
                "group its decision is agreed in, one that holds the rank"
            )
        self.world_size = dist.get_world_size(group) if ready else 1
        self._over_dist = ready
        self.device = collective_device(torch.device("cpu"), group)
        if ready and group is not None and self.world_size < dist.get_world_size():
            warn_user(
                f"process_group: {self.world_size} of the job's {dist.get_world_size()} processes: each group decides "
                "to stop on its own; a group that stops leaves the others waiting in the job's own collectives "
                "(DDP's), unless the groups train apart"
            )

    def late_world(self) -> int | None:
        """The world size of a process group initialised after this was built (which it does not use), else
        ``None``."""
        if self.world_size == 1 and self.group is None and dist_ready() and dist.get_world_size() > 1:
            return int(dist.get_world_size())
        return None

    def group_gone(self) -> bool:
        """True when this spans processes over ``torch.distributed`` and its process group was destroyed since
        (``destroy_process_group()``): no collective can run."""
        return self.world_size > 1 and self._over_dist and not dist_ready()

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor.unsqueeze(0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        work = dist.all_gather(parts, tensor.contiguous(), group=self.group, async_op=True)
        _HELD.append(work)
        work.wait()
        return torch.stack(parts)

    def any(self, flag: bool) -> bool:
        if self.world_size == 1:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        _HELD.append(work)
        work.wait()
        return bool(t.item())


class DeviceBuffer:
    """One flush of per-step values, ``channels`` per step, kept where they were computed.

    :meth:`push` records one step's values (a tensor is detached and copied on its device, one operation and
    no read-back; a Python float is kept as is), so the per-step cost is a few microseconds of Python. On a full
    buffer it raises ``BufferError`` (the session flushes every ``capacity`` steps). :meth:`pack` stacks them
    into the ``(channels + 3, capacity)`` float64 message that is gathered, and empties the buffer.
    """

    def __init__(self, capacity: int, channels: int = 2) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.capacity = capacity
        self.channels = channels
        self._cols: list[list[tuple[int, torch.Tensor | float]]] = [[] for _ in range(channels)]
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def rows(self) -> int:
        """Rows of a packed message: the channels, the step numbers, the LRs and the count."""
        return self.channels + 3

    def push(self, *values: torch.Tensor | float | None) -> None:
        """Store one step: ``values[c]`` goes to channel ``c`` (``None`` or missing channels stay NaN)."""
        if len(values) > self.channels:
            raise ValueError(f"got {len(values)} values for {self.channels} channel(s)")
        if self._n >= self.capacity:
            raise BufferError(f"buffer full ({self.capacity} steps): flush first")
        for c, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(
                    f"a step value must be one number, got a tensor of shape {tuple(value.shape)} "
                    "(pass the update's mean loss, e.g. loss.mean())"
                )
            # a copy now, on the device: the caller may change its tensor in place afterwards
            kept = value.detach().clone() if isinstance(value, torch.Tensor) else float(value)
            self._cols[c].append((self._n, kept))
        self._n += 1

    def _fill(self, out: torch.Tensor) -> None:
        """Write the buffered values into ``out`` (``(channels, >= len)``, float64): a few operations per
        channel, whatever the number of steps."""
        for c, entries in enumerate(self._cols):
            tensors = [(i, v) for i, v in entries if isinstance(v, torch.Tensor)]
            floats = [(i, v) for i, v in entries if not isinstance(v, torch.Tensor)]
            if tensors:
                values = [v for _, v in tensors]
                try:
                    stacked = torch.stack(values).reshape(-1)
                except RuntimeError:  # mixed shapes or dtypes across steps
                    stacked = torch.stack([v.reshape(()).double() for v in values])
                index = torch.tensor([i for i, _ in tensors], device=out.device)
                out[c].index_copy_(0, index, stacked.to(device=out.device, dtype=torch.float64))
            if floats:
                out[c, [i for i, _ in floats]] = torch.tensor([v for _, v in floats], dtype=torch.float64).to(
                    out.device
                )

    def pack(self, steps: list[int], lrs: list[float], device: torch.device) -> torch.Tensor:
        """The message for the gather, and the buffer emptied: ``(rows, capacity)`` float64 on ``device``.

        Rows: the channels, then the step numbers, the LRs each update used and (in column 0) the count of
        steps; ``steps``/``lrs`` are this rank's host-side records of the buffered steps.
        """
        n = self._n
        if len(steps) != n or len(lrs) != n:
            raise ValueError(f"{n} buffered steps but {len(steps)} step numbers and {len(lrs)} LRs")
        msg = self.no_data(device)
        self._fill(msg)
        msg[self.channels, :n] = torch.tensor(steps, dtype=torch.float64)
        msg[self.channels + 1, :n] = torch.tensor(lrs, dtype=torch.float64)
        msg[self.channels + 2, 0] = float(n)
        self.clear()
        return msg

    def no_data(self, device: torch.device) -> torch.Tensor:
        """A message of the same shape that says "this rank has no data" (count -1)."""
        msg = torch.full((self.rows, self.capacity), float("nan"), dtype=torch.float64, device=device)
        msg[self.channels + 2, 0] = -1.0
        return msg

    def clear(self) -> None:
        """Drop what is buffered (a rank whose per-step part failed sends "no data" from then on)."""
        for entries in self._cols:
            entries.clear()
        self._n = 0

    def peek(self) -> np.ndarray:
        """This rank's buffered values, ``(channels, len)`` on the host, without a collective or emptying.

        For checkpoints (already a sync point); the regular path is :meth:`pack`.
        """
        out = torch.full((self.channels, self._n), float("nan"), dtype=torch.float64)
        self._fill(out)
        return out.numpy()


@dataclass(frozen=True)
class Reduced:
    """Per-step values over the ranks that had data (all arrays of length ``count``).

    ``loss``: the mean over the ranks that saw a loss at that step (NaN if one of them saw NaN); ``loss_max``:
    their max; ``seen``: whether any rank saw a loss; ``grad_norm``: the mean gradient norm (NaN when not
    measured); ``ranks``: how many ranks had data.
    """

    steps: np.ndarray
    lrs: np.ndarray
    loss: np.ndarray
    loss_max: np.ndarray
    seen: np.ndarray
    grad_norm: np.ndarray
    ranks: int

    @property
    def count(self) -> int:
        return len(self.steps)


def _counts(gathered: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Each rank's count of steps in ``gathered``, which ranks had data, and the count they all hold (0: none)."""
    counts = gathered[:, channels + 2, 0]
    ok = counts >= 0
    return counts, ok, int(counts[ok].min()) if ok.any() else 0


def misaligned_ranks(gathered: np.ndarray, channels: int) -> str | None:
    """How the ranks' step numbers in ``gathered`` differ (``"rank 0: 41..50, rank 1: 42..51"``), or ``None``
    when every rank with data flushed the same updates: a loop that steps one rank more than another."""
    counts, ok, _ = _counts(gathered, channels)
    ranks = np.flatnonzero(ok)
    if ranks.size < 2:
        return None
    spans = []
    for r in ranks:
        n = int(counts[r])
        steps = gathered[r, channels, :n]
        spans.append((int(r), int(steps[0]) if n else 0, int(steps[-1]) if n else 0, n))
    if len({(a, b, n) for _, a, b, n in spans}) == 1:
        return None
    return ", ".join(f"rank {r}: {a}..{b}" if n else f"rank {r}: none" for r, a, b, n in spans)


def nonfinite_ranks(gathered: np.ndarray, channels: int) -> tuple[list[int], int, list[int]] | None:
    """The ranks whose losses in ``gathered`` (as :func:`reduce_ranks` reads it) are NaN or Inf at the first
    step one is, that step, and every rank with one, or ``None``: a NaN on one host is found by its rank (the
    mean over ranks hides it; under DDP the others follow it an update later)."""
    _, ok, n = _counts(gathered, channels)
    bad = (gathered[:, SEEN, :n] == 1.0) & ~np.isfinite(gathered[:, LOSS, :n]) & ok[:, None]
    ranks = np.flatnonzero(bad.any(axis=1))
    if not ranks.size:
        return None
    col = int(np.flatnonzero(bad.any(axis=0))[0])
    first_ranks = [int(r) for r in np.flatnonzero(bad[:, col])]
    return first_ranks, int(gathered[first_ranks[0], channels, col]), [int(r) for r in ranks]


def reduce_ranks(gathered: np.ndarray, channels: int) -> Reduced:
    """Reduce ``(world, channels + 3, capacity)`` gathered messages (see :meth:`DeviceBuffer.pack`).

    Ranks marked "no data" are left out; the step numbers and LRs are those of the first rank with data. If
    the ranks with data buffered different counts (a caller bug, told by :func:`misaligned_ranks`), the common
    prefix is kept.
    """
    _, ok, n = _counts(gathered, channels)
    if not ok.any():
        empty = np.empty(0)
        return Reduced(empty, empty, empty, empty, np.empty(0, dtype=bool), empty, 0)
    msgs = gathered[ok][:, :, :n]
    first = msgs[0]
    seen = msgs[:, SEEN, :] == 1.0
    n_seen = seen.sum(axis=0)
    loss = np.where(seen, msgs[:, LOSS, :], 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_seen > 0, loss / np.maximum(n_seen, 1), np.nan)
    # NaN on any rank that saw a loss makes the max NaN too: a NaN storm on one rank is not hidden.
    top = np.where(seen, msgs[:, LOSS, :], -np.inf).max(axis=0)
    top = np.where(n_seen > 0, top, np.nan)
    grad = np.full(n, np.nan)
    if channels > GRAD:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # steps without a gradient norm on any rank
            grad = np.nanmean(msgs[:, GRAD, :], axis=0)
    return Reduced(
        steps=first[channels].astype(np.int64),
        lrs=first[channels + 1].copy(),
        loss=mean,
        loss_max=top,
        seen=n_seen > 0,
        grad_norm=grad,
        ranks=int(ok.sum()),
    )
