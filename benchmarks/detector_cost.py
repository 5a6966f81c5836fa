"""Detector cost benchmark: CPU time of the health detectors alone, per training step, amortised.

A per-step loss stream goes through a :class:`scaleforecast.monitor.RunMonitor` with
``detectors=[HealthMonitor()]``
in flushes of 50 steps (the callbacks' default); only the ``HealthMonitor.check`` calls are timed (the
forecaster's ingest and refits are not: they are the forecaster's cost). Streams:

* ``llm.c``: the real per-step training loss of the llm.c GPT-2 124M run (19,560 steps), its own schedule,
  refits every 100 steps (the callbacks' default);
* ``synthetic 1M``: 1,000,000 steps of ``L(s) = 2.5 + 4 (s / 100)^-0.3`` with a cosine schedule, normal
  noise (sd 0.02) and a +1.0 spike every 50,000 steps (19), refits every 10,000 steps (about 100 fits:
  the forecaster's own refit cost at 1M steps of history would dominate the run time of this script).

Printed: detector CPU time per step (thread CPU time, so other processes on the machine do not count), the
slowest flush, the CPU time of the whole replay (forecaster included), and the events raised.

Run: ``python benchmarks/detector_cost.py [--steps 1000000]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaleforecast.detectors import HealthMonitor
from scaleforecast.forecaster import ForecasterConfig
from scaleforecast.monitor import FlushBatch, RunMonitor, StopConfig

FLUSH = 50


class Timed:
    def __init__(self) -> None:
        self.inner = HealthMonitor()
        self.seconds = 0.0
        self.slowest = 0.0

    def check(self, batch: FlushBatch, view: object) -> list:
        t0 = time.thread_time()
        out = self.inner.check(batch, view)
        dt = time.thread_time() - t0
        self.seconds += dt
        self.slowest = max(self.slowest, dt)
        return out


def stream(name: str, steps: np.ndarray, y: np.ndarray, lrs: np.ndarray, refit_every: int) -> str:
    timed = Timed()
    mon = RunMonitor(
        lrs,
        config=ForecasterConfig(refit_every=refit_every),
        detectors=[timed],
        verbose=False,
        stop=StopConfig(action="warn"),
    )
    events: Counter = Counter()
    t0 = time.thread_time()
    for i in range(0, len(steps), FLUSH):
        res = mon.flush(
            FlushBatch(steps=steps[i : i + FLUSH], loss=y[i : i + FLUSH], lrs=lrs[steps[i : i + FLUSH] - 1])
        )
        for ev in res.events:
            events[f"{ev.kind}/{ev.severity}"] += 1
    cpu = time.thread_time() - t0
    shown = ", ".join(f"{k}: {v}" for k, v in sorted(events.items())) or "-"
    return (
        f"| {name} | {len(steps):,} | {1e6 * timed.seconds / len(steps):.2f} | {1e3 * timed.slowest:.1f} | "
        f"{cpu:.0f} | {mon.refits} | {shown} |"
    )


def synthetic(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    steps = np.arange(1, n + 1)
    warm = max(n // 100, 1)
    lrs = 1e-3 * np.minimum(
        steps / warm, 0.5 * (1 + np.cos(np.pi * np.clip((steps - warm) / (n - warm), 0, 1)))
    )
    lrs = np.maximum(lrs, 1e-6)
    noise = 0.02 * rng.standard_normal(n)
    y = 2.5 + 4.0 * (steps / 100.0) ** -0.3 + noise
    y[np.arange(50_000, n, 50_000)] += 1.0
    return steps, y, lrs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--skip-synthetic", action="store_true")
    args = ap.parse_args(argv)
    print("| stream | steps | detectors us/step | slowest flush ms | replay CPU s | refits | events |")
    print("|---|---|---|---|---|---|---|")
    from benchmarks.curves import load_curves

    llmc = [c for c in load_curves() if c.folder == "llmc_gpt2_124m"]
    for c in llmc:
        steps, y = c.column("train_loss")
        keep = steps > 0
        print(stream("llm.c GPT-2 124M (real)", steps[keep], y[keep], c.lrs, 100), flush=True)
    if not args.skip_synthetic:
        s, y, lrs = synthetic(args.steps)
        print(stream(f"synthetic {args.steps:,}", s, y, lrs, max(100, args.steps // 100)), flush=True)


if __name__ == "__main__":
    main()
