"""Refit time, state size and refit cadence of the online forecaster against the run's length.

``latency`` (default): for a run observed at every step up to 90% of 1k ... 1M steps, the time to ingest
the history, the time of one refit (wall median and p90 of several, warm-started as in a live run, and its CPU
time, which a loaded machine does not inflate), its peak memory, and the size of the forecaster's state (what a checkpoint carries) against the 8 bytes per step a
plain float64 schedule would take. The targets: a refit cost and a state size that do not grow with the run.

``state``: the state size of several schedule shapes against run length, and the time to encode and decode the
schedule.

``cadence``: refits per run under the run-scaled cadence against a fixed 100-step period, and (``--replay``)
the forecast accuracy of both: real loss curves fed flush by flush through ``OnlineForecaster.update``, the
last forecast made before 25/50/75% of each run scored against the run's final loss (median of its last 2% of
points), as median and p90 |error| in %, with refits on the caller's thread and in the background (which
take effect one flush later).

    python benchmarks/refit_latency.py [latency] [--lengths 1000 10000 100000 1000000] [--repeats 5]
    python benchmarks/refit_latency.py state
    python benchmarks/refit_latency.py cadence [--replay]
    python benchmarks/refit_latency.py first [--repeats 5]

``first``: the first refit of a fresh process (what the training thread waits for at its second flush, when the
refit started at the first has not finished): as the first thing the fitter does, and after the forecaster
loaded the fitter's modules on its worker when the schedule was set (as the callbacks' forecaster does).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import LAWS
from scaleforecast.results import LawParams
from scaleforecast.schedules import parse_schedule

OLD_CADENCE = {"refit_every": 100, "refit_growth": 0.25}  # the fixed period used before the run-scaled one


def _run(total: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    warmup = max(total // 100, 1)
    lrs = parse_schedule(f"wsd:peak=1e-3,warmup={warmup},total={total},cooldown=0.2").lrs()
    steps = np.arange(1, total + 1)
    y = LAWS["tissue"].predict(LawParams(L0=2.0, A=1.5, alpha=0.5, C=0.3), lrs, steps)
    return lrs, steps, y * (1 + 0.01 * np.random.default_rng(seed).standard_normal(total))


def measure(total: int, repeats: int) -> dict[str, float]:
    lrs, steps, y = _run(total)
    seen = int(0.9 * total)
    fc = OnlineForecaster(lrs)
    t0 = time.perf_counter()
    chunk = 1000
    for i in range(0, seen, chunk):
        fc.observe_many(steps[i : min(i + chunk, seen)], y[i : min(i + chunk, seen)])
    ingest = time.perf_counter() - t0
    fc.refit()  # the warm start a live run has
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fc.refit()
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
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
        "refit_p90_ms": 1e3 * float(np.percentile(times, 90)),
        "refit_cpu_ms": 1e3 * float(np.median(cpu)),
        "refit_peak_mib": peak / 2**20,
        "state_kib": len(json.dumps(fc.state_dict())) / 1024,
        "raw_schedule_kib": len(base64.b64encode(lrs.tobytes())) / 1024,
    }


def latency(args: argparse.Namespace) -> None:
    rows = [measure(n, args.repeats) for n in args.lengths]
    header = (
        f"{'steps':>9} {'observed':>9} {'bins':>5} {'ingest us/step':>15} {'refit ms':>9} {'p90 ms':>7} {'CPU ms':>7} "
        f"{'refit peak MiB':>15} {'state KiB':>10} {'(float64 plan KiB)':>19}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['steps']:>9} {r['observed']:>9} {r['bins']:>5} {r['ingest_us_per_step']:>15.2f} "
            f"{r['refit_ms']:>9.1f} {r['refit_p90_ms']:>7.1f} {r['refit_cpu_ms']:>7.1f} {r['refit_peak_mib']:>15.1f} "
            f"{r['state_kib']:>10.0f} {r['raw_schedule_kib']:>19.0f}",
            flush=True,
        )


STATE_SPECS = {
    "cosine": "cosine:peak=6e-4,warmup={w},total={n}",
    "wsd": "wsd:peak=1e-3,warmup={w},total={n},cooldown=0.2",
    "linear": "linear:peak=1e-3,warmup={w},total={n}",
    "inv-sqrt": "invsqrt:peak=1e-3,warmup={w},total={n}",
    "step": "step:peak=1e-3,total={n},milestones={a}/{b},gamma=0.3",
}


def state(args: argparse.Namespace) -> None:
    from scaleforecast.schedule_codec import decode_lrs, encode_lrs

    header = (
        f"{'schedule':<10}{'steps':>10}{'segments':>10}{'schedule KiB':>14}{'state KiB':>11}"
        f"{'float64 KiB':>13}{'encode ms':>11}{'decode ms':>11}{'max rel err':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, spec in STATE_SPECS.items():
        for n in args.lengths:
            lrs = parse_schedule(spec.format(w=max(n // 100, 1), n=n, a=n // 4, b=n * 3 // 5)).lrs()
            t0 = time.perf_counter()
            code = encode_lrs(lrs)
            enc = time.perf_counter() - t0
            t0 = time.perf_counter()
            back = decode_lrs(code)
            dec = time.perf_counter() - t0
            fc = OnlineForecaster(lrs)
            fc.observe_many(np.arange(1, n + 1), 2.0 + 1.5 * np.cumsum(lrs) ** -0.5)
            size = len(json.dumps(fc.state_dict())) / 1024
            floor = 1e-3 * lrs.max()
            err = float(np.max(np.abs(back - lrs) / np.maximum(lrs, floor)))
            print(
                f"{name:<10}{n:>10}{len(code.get('segments', [])):>10}{len(json.dumps(code)) / 1024:>14.1f}"
                f"{size:>11.1f}{len(base64.b64encode(lrs.tobytes())) / 1024:>13.0f}{1e3 * enc:>11.0f}"
                f"{1e3 * dec:>11.0f}{err:>13.1e}",
                flush=True,
            )


def _count(total: int, config: ForecasterConfig, every: int = 50) -> int:
    """Refits the policy makes over a run fed every ``every`` steps (the policy alone, no fitting)."""
    fc = OnlineForecaster(np.full(total, 1e-3), config)
    fc._fit = object()  # type: ignore[assignment]
    fc._history.add(np.array([1]), np.array([1]), np.array([1.0]))
    n = 0
    for s in range(every, total + 1, every):
        fc._last_step = s
        fc._history._count[-1] += every  # the observation count the growth rule of the old policy reads
        if fc.should_refit():
            fc._step_at_fit, fc._raw_at_fit = s, fc._history.n_raw
            n += 1
    return n


def _replay_curves() -> list:
    from curves import load_curves

    curves = load_curves()
    picked: dict[str, object] = {}
    for c in curves:
        steps, _ = c.column("train_loss")
        if len(steps) < 200:
            continue
        key = f"{c.folder}/{c.shape}"
        if key not in picked or c.total_steps > picked[key].total_steps:  # type: ignore[attr-defined]
            picked[key] = c
    return [picked[k] for k in sorted(picked)]


def _replay(c: object, config: ForecasterConfig, flush: int = 50) -> tuple[dict[float, float], int]:
    """Feed a curve's train loss flush by flush; the last forecast made before each cut, and the refits."""
    steps, loss = c.column("train_loss")  # type: ignore[attr-defined]
    lrs = np.maximum(c.lrs, 1e-12 * c.lrs.max())  # type: ignore[attr-defined]
    total = len(lrs)
    fc = OnlineForecaster(lrs, config)
    cuts = {f: None for f in (0.25, 0.5, 0.75)}
    refits = 0
    edges = np.arange(flush, total + flush, flush)
    lo = 0
    for edge in edges:
        hi = int(np.searchsorted(steps, edge, side="right"))
        if hi > lo:
            forecast = fc.update(steps[lo:hi], loss[lo:hi])
            lo = hi
            if forecast is not None:
                refits += 1
                for f in cuts:
                    if edge <= f * total and forecast.final is not None:
                        cuts[f] = forecast.final.loss
    tail = loss[steps >= 0.98 * total]
    final = float(np.median(tail if tail.size else loss[-3:]))
    return {f: (np.nan if v is None else 100 * abs(v - final) / final) for f, v in cuts.items()}, refits


def cadence(args: argparse.Namespace) -> None:
    print("refits per run, fed every 50 steps")
    header = f"{'steps':>10}{'fixed 100-step period':>24}{'run-scaled':>12}"
    print(header)
    print("-" * len(header))
    for n in (2_000, 10_000, 100_000, 1_000_000):
        old = _count(n, ForecasterConfig(**OLD_CADENCE))
        new = _count(n, ForecasterConfig())
        print(f"{n:>10}{old:>24}{new:>12}")
    if not args.replay:
        return
    variants = {} if args.no_fixed else {"fixed 100": ForecasterConfig(**OLD_CADENCE)}
    for n in args.per_run:
        variants[f"{n} per run"] = ForecasterConfig(refits_per_run=n)
        variants[f"{n} per run, bg"] = ForecasterConfig(refits_per_run=n, background=True)
    print("\nlast forecast before each cut vs the final loss (train loss fed every 50 steps): |error| %")
    head = f"{'run':<52}{'variant':<16}{'refits':>7}{'25%':>8}{'50%':>8}{'75%':>8}"
    print(head)
    print("-" * len(head))
    errs: dict[str, list[dict[float, float]]] = {k: [] for k in variants}
    for c in _replay_curves():
        for name, config in variants.items():
            e, refits = _replay(c, config)
            errs[name].append(e)
            print(
                f"{c.key[-50:]:<52}{name:<16}{refits:>7}{e[0.25]:>8.2f}{e[0.5]:>8.2f}{e[0.75]:>8.2f}",  # type: ignore[attr-defined]
                flush=True,
            )
    print("\nover the runs above: median / p90 |error| %")
    head = f"{'variant':<16}{'25%':>14}{'50%':>14}{'75%':>14}"
    print(head)
    print("-" * len(head))
    for name, rows in errs.items():
        cells = []
        for f in (0.25, 0.5, 0.75):
            v = np.array([r[f] for r in rows], dtype=float)
            v = v[np.isfinite(v)]
            cells.append(f"{np.median(v):.2f} / {np.percentile(v, 90):.2f}" if v.size else "-")
        print(f"{name:<16}" + "".join(f"{c:>14}" for c in cells))


_FIRST = """
import sys, time
import numpy as np
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.background import refit_worker
fc = OnlineForecaster("cosine:peak=1e-3,warmup=20,total=4000", ForecasterConfig(background=sys.argv[1] == "1"))
refit_worker().submit(lambda: None).result()  # what the worker was given at set_schedule is done
steps = np.arange(1, 101)
fc.observe_many(steps, 2.0 + 3.0 * steps**-0.3)
t = time.perf_counter()
fc.refit()
print(1000 * (time.perf_counter() - t), "scipy.signal" in sys.modules)
"""


def first(args: argparse.Namespace) -> None:
    header = f"{'first refit of a process':<40}{'median ms':>12}{'max ms':>10}  scipy.signal loaded"
    print(header)
    print("-" * len(header))
    for name, flag in (("cold (nothing loaded before it)", "0"), ("fitter loaded at set_schedule", "1")):
        out = [
            subprocess.run(
                [sys.executable, "-c", _FIRST, flag], capture_output=True, text=True, check=True
            ).stdout.split()
            for _ in range(args.repeats)
        ]
        ms = [float(o[0]) for o in out]
        print(f"{name:<40}{np.median(ms):>12.0f}{max(ms):>10.0f}  {out[0][1]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="part")
    p = sub.add_parser("latency")
    p.add_argument("--lengths", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    p.add_argument("--repeats", type=int, default=5)
    p = sub.add_parser("state")
    p.add_argument("--lengths", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000])
    p = sub.add_parser("cadence")
    p.add_argument("--replay", action="store_true", help="also replay real curves at both cadences")
    p.add_argument("--per-run", type=int, nargs="+", default=[ForecasterConfig().refits_per_run])
    p.add_argument("--no-fixed", action="store_true", help="leave out the fixed 100-step period")
    p = sub.add_parser("first")
    p.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.part is None:
        args = parser.parse_args(["latency", *sys.argv[1:]])
    {"latency": latency, "state": state, "cadence": cadence, "first": first}[args.part](args)


if __name__ == "__main__":
    main()
