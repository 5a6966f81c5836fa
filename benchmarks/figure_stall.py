"""How long drawing the forecast figures keeps the training thread waiting, and the memory it takes.

The TensorBoard sink draws its figures with matplotlib on a worker thread. A training thread that waits on the
GPU (here: sleeps 0.5 ms, then a tiny torch op) needs the GIL back at each iteration; the table gives the
longest gap between its iterations, how many gaps exceed 50 ms, and the process's resident memory, while the
worker draws ``--figures`` figures of a 300k-step run forecast at half its length, with the garbage collector
paused during each draw (as the sink does) and left running (a full collection of every object of the process
then runs about every fifth figure, holding the GIL).

    python benchmarks/figure_stall.py [--figures 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import torch

from scaleforecast import tensorboard_sink as tbs
from scaleforecast.monitor import RunMonitor
from scaleforecast.schedules import as_lrs

TOTAL = 300_000


def snapshot() -> tbs.CurveSnapshot:
    """The figure's data for a 300k-step warm-up + cosine run fitted on its first half."""
    lrs = as_lrs(f"cosine:peak=6e-4,warmup=3000,total={TOTAL}")
    steps = np.arange(1, TOTAL // 2 + 1)
    noise = 0.02 * np.random.default_rng(0).standard_normal(steps.size)
    loss = 2.0 + 3.0 * np.cumsum(lrs)[steps - 1] ** -0.4 + noise
    monitor = RunMonitor(lrs, verbose=False)
    monitor.forecaster.observe_many(steps, loss)
    monitor.forecaster.refit()
    return monitor.snapshot(int(steps[-1]))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def stall(draw: object, snap: tbs.CurveSnapshot, figures: int) -> tuple[float, int, float]:
    """(longest gap in ms, gaps over 50 ms, RSS in MiB after) of the training-like loop while ``figures`` draw."""
    x = torch.ones(4)
    worker = threading.Thread(target=lambda: [draw(snap) for _ in range(figures)])  # type: ignore[operator]
    gaps, last = [], time.perf_counter()
    worker.start()
    while worker.is_alive():
        time.sleep(0.0005)
        x.add_(1.0)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    g = 1e3 * np.array(gaps)
    return float(g.max()), int((g > 50).sum()), rss_mib()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--figures", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    snap = snapshot()
    tbs._picture(snap)  # matplotlib's imports and caches, before anything is timed
    ways = {
        "collector paused (the sink)": tbs._picture,
        "collector running": lambda s: tbs.render_rgb(tbs.draw_snapshot(s)),
    }
    print(f"{args.figures} figures per round, on a worker thread; the training-like loop's gaps")
    print(f"{'drawn with':30s} {'round':>5s} {'max gap ms':>11s} {'gaps >50 ms':>12s} {'RSS MiB':>8s}")
    for name, draw in ways.items():
        for r in range(args.rounds):
            worst, over, rss = stall(draw, snap, args.figures)
            print(f"{name:30s} {r:5d} {worst:11.1f} {over:12d} {rss:8.0f}")


if __name__ == "__main__":
    main()
