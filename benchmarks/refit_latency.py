"""Refit time and memory of the online forecaster against history length (1k ... 1M steps).

Prints a table: for a run observed at every step, the time to ingest the whole history, the time of one refit
(median of several, warm-started as in a live run), the peak memory of that refit, and the size of the
forecaster's state (what a checkpoint carries). The target is a refit cost that does not grow with the run.

    python benchmarks/refit_latency.py [--lengths 1000 10000 100000 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from scaleforecast.forecaster import OnlineForecaster
from scaleforecast.laws import LAWS
from scaleforecast.results import LawParams
from scaleforecast.schedules import parse_schedule


def measure(total: int, repeats: int, seed: int = 0) -> dict[str, float]:
    warmup = max(total // 100, 1)
    lrs = parse_schedule(f"wsd:peak=1e-3,warmup={warmup},total={total},cooldown=0.2").lrs()
    steps = np.arange(1, total + 1)
    params = LawParams(L0=2.0, A=1.5, alpha=0.5, C=0.3)
    y = LAWS["tissue"].predict(params, lrs, steps)
    y = y * (1 + 0.01 * np.random.default_rng(seed).standard_normal(total))
    seen = int(0.9 * total)
    fc = OnlineForecaster(lrs)
    t0 = time.perf_counter()
    chunk = 1000
    for i in range(0, seen, chunk):
        fc.observe_many(steps[i : min(i + chunk, seen)], y[i : min(i + chunk, seen)])
    ingest = time.perf_counter() - t0
    fc.refit()  # the warm start a live run has
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fc.refit()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    fc.refit()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "steps": total,
        "observed": seen,
        "bins": len(fc.observations()),
        "ingest_us_per_step": 1e6 * ingest / seen,
        "refit_ms": 1e3 * float(np.median(times)),
        "refit_peak_mib": peak / 2**20,
        "state_kib": len(json.dumps(fc.state_dict())) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(n, args.repeats) for n in args.lengths]
    header = f"{'steps':>9} {'observed':>9} {'bins':>5} {'ingest us/step':>15} {'refit ms':>9} {'refit peak MiB':>15} {'state KiB':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['steps']:>9} {r['observed']:>9} {r['bins']:>5} {r['ingest_us_per_step']:>15.2f} "
            f"{r['refit_ms']:>9.1f} {r['refit_peak_mib']:>15.1f} {r['state_kib']:>10.0f}"
        )


if __name__ == "__main__":
    main()
