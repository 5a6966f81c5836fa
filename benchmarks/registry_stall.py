"""Registry stall benchmark: training-thread time lost per flush by the sweep stopper when the registry is
locked or slow.

A loop stands for the training thread: each "flush" calls ``SweepStopper(step, forecast)`` (what the
callbacks do at each new forecast) and the time spent inside the call is counted as lost. Scenarios:

* ``free``: nobody else holds the SQLite file;
* ``WAL, locked mid-run``: after the first read, another process holds ``BEGIN EXCLUSIVE`` on the sweep's file
  (WAL journal: writers wait, readers do not);
* ``rollback journal, locked from the start``: the file is in rollback-journal mode and another process holds
  ``BEGIN EXCLUSIVE`` before the run starts (nothing can read or write);
* ``slow storage``: every registry call takes 0.5 s (an injected delay, e.g. a network file system);
* ``synchronous call (the old path)``: for contrast, the registry called on the training thread, as before the
  background worker, with the lock held (busy timeout 1 s, 1 retry here; the old defaults were 30 s x 5).

Each locked scenario runs ``--flushes`` flushes while the lock is held (the lock is taken before the first
counted flush and released after the last), then checks that the queued writes landed after the release.

Run: ``python benchmarks/registry_stall.py [--flushes 200]``.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleforecast.decision import SweepStopper, decide_stop_in_sweep
from scaleforecast.registry import RunRecord, SQLiteRegistry
from scaleforecast.results import FitStatus, Forecast, ForecastPoint

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
if sys.argv[2] == "rollback":
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE IF NOT EXISTS filler (x)")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def forecast(loss: float) -> Forecast:
    point = ForecastPoint(step=10_000, loss=loss, lower=loss - 0.02, upper=loss + 0.02, std=0.02)
    return Forecast(
        law="tissue",
        level=0.8,
        fitted_at_step=100,
        final_step=10_000,
        points=[point],
        params=None,
        n_points=20,
        status=FitStatus.OK,
    )


class Lock:
    def __init__(self, path: Path, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        self.proc.wait(60)


class Slow(SQLiteRegistry):
    def records(self) -> list[RunRecord]:
        time.sleep(0.5)
        return super().records()

    def report_forecast(self, run_id: str, **kw: object) -> None:  # type: ignore[override]
        time.sleep(0.5)
        super().report_forecast(run_id, **kw)  # type: ignore[arg-type]


def loop(stopper: SweepStopper, flushes: int, pause_s: float) -> list[float]:
    lost = []
    for i in range(flushes):
        t0 = time.perf_counter()
        stopper(1000 + 10 * i, forecast(2.0))
        lost.append(time.perf_counter() - t0)
        time.sleep(pause_s)  # the training steps between two flushes
    return lost


def row(name: str, lost: list[float], landed: str) -> str:
    ms = 1e3 * np.asarray(lost)
    return (
        f"| {name} | {len(ms)} | {np.median(ms):.3f} | {np.percentile(ms, 99):.3f} | {ms.max():.3f} | "
        f"{ms.sum():.1f} | {landed} |"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flushes", type=int, default=200)
    ap.add_argument("--pause", type=float, default=0.02, help="seconds of 'training' between flushes")
    args = ap.parse_args(argv)
    print("| scenario | flushes | median ms lost | p99 ms | max ms | total ms | writes after release |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name, mode in (
            ("free", None),
            ("WAL, locked mid-run", "wal"),
            ("rollback journal, locked from the start", "rollback"),
        ):
            path = base / f"{mode}.sqlite"
            if mode != "rollback":
                SQLiteRegistry("s", path).report_final("other", 3.0)
            lock = Lock(path, mode) if mode == "rollback" else None
            stopper = SweepStopper(path, "job", sweep="s", min_fraction=0.0, timeout_s=2.0)
            if mode == "wal":
                stopper.sync(30)
                lock = Lock(path, mode)
            lost = loop(stopper, args.flushes, args.pause)
            if lock is not None:
                lock.release()
            ok = stopper.sync(120)
            landed = len(SQLiteRegistry("s", path).history("job"))
            print(row(name, lost, f"{landed}/{args.flushes}" + ("" if ok else " (not yet)")), flush=True)
        path = base / "slow.sqlite"
        stopper = SweepStopper(Slow("s", path), "job", sweep="s", min_fraction=0.0)
        lost = loop(stopper, args.flushes, args.pause)
        ok = stopper.sync(600)
        landed = len(SQLiteRegistry("s", path).history("job"))
        print(
            row(
                "slow storage (0.5 s per call)",
                lost,
                f"{landed}/{args.flushes}" + ("" if ok else " (not yet)"),
            )
        )
        path = base / "sync.sqlite"
        SQLiteRegistry("s", path).report_final("other", 3.0)
        lock = Lock(path, "wal")
        reg = SQLiteRegistry("s", path, busy_timeout_s=1.0, retries=1)
        lost = []
        for i in range(3):
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):  # the old path gave up after its retries
                decide_stop_in_sweep(forecast(2.0), reg, "job", step=1000 + i, total_steps=10_000)
            lost.append(time.perf_counter() - t0)
        lock.release()
        print(row("synchronous call (the old path), 1 s busy timeout x 2 tries", lost, "-"))


if __name__ == "__main__":
    main()
