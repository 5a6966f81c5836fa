"""How often a stopped two-process HF Trainer job aborts at exit, with and without the plugin.

A process that exits right after its last collective, with its process group alive, races the backend's worker
thread: gloo's thread may still hold that collective's tensors, and if it frees them while the interpreter
finalises it aborts the process ("terminate called without an active exception", exit status -6), and
``torchrun`` reports the job as failed. The HF Trainer's last collective is its FLOP count, gathered after the
training loop. The plugin ends a multi-process job with one more collective, waited with the GIL released,
and keeps its collectives' work handles for Python to free, which narrows that window; destroying the process
group at the end of the script (``torch.distributed.destroy_process_group()``) closes it.

Each job is ``tests/hf_stop_exit_worker.py`` under ``torchrun`` on 2 CPU processes (gloo), stopped at update
40 of 200 by the forecast, or, without the plugin, by a callback that stops it at the same update. Prints, per
variant, the jobs that failed. The rate depends on the machine's load: run it beside other work to see the race.

    python benchmarks/exit_race.py [--jobs 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).resolve().parent.parent / "tests" / "hf_stop_exit_worker.py"
VARIANTS = {
    "no plugin, group left alive": ["--no-plugin"],
    "plugin, group left alive": [],
    "no plugin, group destroyed": ["--no-plugin", "--destroy"],
    "plugin, group destroyed": ["--destroy"],
}


def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def job(out: Path, flags: list[str], timeout: float = 600.0) -> bool:
    """Run one job; True when every process exited with status 0 and none aborted."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_port()),
        str(WORKER),
        str(out),
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode == 0 and "terminate called" not in proc.stderr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10, help="jobs per variant")
    ns = parser.parse_args(argv)
    t0 = time.perf_counter()
    print("| variant | jobs | failed at exit |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in VARIANTS.items():
            failed = sum(not job(Path(tmp) / f"{name}-{i}", flags) for i in range(ns.jobs))
            print(f"| {name} | {ns.jobs} | {failed} ({100 * failed / ns.jobs:.0f} %) |", flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
