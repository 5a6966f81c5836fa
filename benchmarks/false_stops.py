"""False-stop benchmark: the default health policy replayed over every finished run, and real failures injected.

Every run in ``../shared/curves`` went to completion; all but one are healthy, so a stop on them is a false
stop. One (an epfml cosine run at LR 0.005) diverged in the data: its training loss climbed from 5.1 to 7.8
and stayed there to the end (final validation loss 7.55 where its siblings reach about 3.3); a stop on it is
a correct stop. A run counts as diverged in the data when its final level (median of the last 2% of the
logged losses) is more than 25% above its best level (the lowest such median). Each run's logged
training losses are replayed through the callbacks' own path: :class:`scaleforecast.monitor.RunMonitor` with
the default detectors (``detectors=[HealthMonitor()]``), the default ``action="stop"`` and the callbacks'
defaults (``flush_every=50``, ``refit_every=100``), flushing the logged points every 50 optimizer steps, as
``LossForecast`` and ``HFLossForecast`` do. Printed:

* the replay table, by source: healthy runs and the stops on them (false stops, target 0), runs that diverged
  in the data and the stops on them, and the health events shown;
* the failure table: on a sample of the healthy runs, the monitor is copied at 60% of the run and the rest of the
  run is replayed with an injected failure, which must stop the run (recall, delay in steps), and with
  injected transients that the run recovers from, which must not (stops);
* with ``--timing``, the detectors' own cost per observation (the ``HealthMonitor.check`` calls).

Injected failures (``sigma``: the curve's local noise, as in ``benchmarks/detection.py``; ``L0``: the first
logged loss, about the loss of an untrained model):

* ``nan storm``: every loss is NaN from the injection on (the weights went non-finite);
* ``divergence``: ``+ sigma * (exp(i / 30) - 1)`` after the injection (``i`` counts observations), capped at
  ``L0``: the loss runs away and settles where an untrained model is;
* ``jump to L0``: the loss jumps to ``L0`` and stays (training lost what it learnt).

Transients (the run recovers; a stop is a false stop): one ``+50 sigma`` spike; a spike to twice the loss that
decays with a 100-step time constant; two consecutive NaN losses.

Run: ``python benchmarks/false_stops.py [--quick] [--sample N] [--timing]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.curves import Curve, load_curves
from benchmarks.detection import local_sigma
from scaleforecast.detectors import HealthMonitor
from scaleforecast.forecaster import ForecasterConfig
from scaleforecast.monitor import FlushBatch, RunMonitor

FLUSH_EVERY = 50  # the callbacks' default
REFIT_EVERY = 100  # the callbacks' default
INJECT_AT = 0.6  # fraction of the observations replayed clean before an injection
DIV_TAU = 30.0


@dataclass
class Replay:
    """What one replay did: the stop (step, reason) and the events it showed."""

    stopped_at: int | None = None
    reason: str | None = None
    events: Counter = field(default_factory=Counter)
    detector_s: float = 0.0
    observations: int = 0


class _Timed:
    """Wraps a health check to time its calls (the detectors' own cost)."""

    def __init__(self, inner: HealthMonitor, clock: list[float]) -> None:
        self.inner, self.clock = inner, clock

    def check(self, batch: FlushBatch, view: object) -> list:
        t0 = time.thread_time()
        try:
            return self.inner.check(batch, view)
        finally:
            self.clock[0] += time.thread_time() - t0

    def state_dict(self) -> dict:
        return self.inner.state_dict()


def new_monitor(lrs: np.ndarray, clock: list[float]) -> RunMonitor:
    """The monitor a ``LossForecast(detectors=[HealthMonitor()])`` builds, with no sinks and quiet logs."""
    return RunMonitor(
        lrs,
        config=ForecasterConfig(refit_every=REFIT_EVERY),
        detectors=[_Timed(HealthMonitor(), clock)],
        verbose=False,
    )


def flush_slices(steps: np.ndarray) -> list[slice]:
    """Slices of the logged points flushed together: a flush when ``FLUSH_EVERY`` steps passed since the last."""
    out, start, last = [], 0, 0
    for i, s in enumerate(steps.tolist()):
        if s - last >= FLUSH_EVERY:
            out.append(slice(start, i + 1))
            start, last = i + 1, s
    if start < len(steps):
        out.append(slice(start, len(steps)))
    return out


def replay(
    mon: RunMonitor,
    steps: np.ndarray,
    y: np.ndarray,
    slices: list[slice],
    clock: list[float],
    on_slice: Callable[[int, RunMonitor], None] | None = None,
) -> Replay:
    """Flush ``slices`` of ``(steps, y)`` into ``mon`` until it asks to stop."""
    out = Replay()
    t0 = clock[0]
    for k, sl in enumerate(slices):
        if on_slice is not None:
            on_slice(k, mon)
        res = mon.flush(FlushBatch(steps=steps[sl], loss=y[sl], lrs=None))
        out.observations += sl.stop - sl.start
        for ev in res.events:
            out.events[(ev.kind, ev.severity)] += 1
        if res.stop:
            out.stopped_at, out.reason = int(steps[sl][-1]), res.reason
            break
    out.detector_s = clock[0] - t0
    return out


def series(c: Curve) -> tuple[np.ndarray, np.ndarray]:
    steps, y = c.column("train_loss")
    keep = steps > 0
    return steps[keep], y[keep]


def diverged_in_data(y: np.ndarray) -> bool:
    """Final level more than 25% above the best level (medians over 2% of the points)."""
    w = max(5, len(y) // 50)
    levels = [float(np.median(y[i : i + w])) for i in range(0, len(y) - w + 1, max(1, w // 2))]
    return float(np.median(y[-w:])) > 1.25 * min(levels)


# ------------------------------------------------------------------------------------------------ injections
Injection = Callable[[np.ndarray, np.ndarray, int, np.ndarray], np.ndarray]


def nan_storm(steps: np.ndarray, y: np.ndarray, i0: int, sigma: np.ndarray) -> np.ndarray:
    z = y.copy()
    z[i0:] = np.nan
    return z


def divergence(steps: np.ndarray, y: np.ndarray, i0: int, sigma: np.ndarray) -> np.ndarray:
    z = y.copy()
    i = np.arange(len(y) - i0, dtype=float)
    cap = max(float(y[0]), float(np.max(y[i0:])))
    z[i0:] = np.minimum(y[i0:] + sigma[i0] * np.expm1(np.minimum(i / DIV_TAU, 50.0)), cap)
    return z


def jump_to_start(steps: np.ndarray, y: np.ndarray, i0: int, sigma: np.ndarray) -> np.ndarray:
    z = y.copy()
    z[i0:] = float(y[0]) + (y[i0:] - y[i0:].mean())
    return z


def one_spike(steps: np.ndarray, y: np.ndarray, i0: int, sigma: np.ndarray) -> np.ndarray:
    z = y.copy()
    z[i0] += 50.0 * sigma[i0]
    return z


def decaying_spike(steps: np.ndarray, y: np.ndarray, i0: int, sigma: np.ndarray) -> np.ndarray:
    z = y.copy()
    dt = (steps[i0:] - steps[i0]).astype(float)
    z[i0:] += y[i0] * np.exp(-dt / 100.0)
    return z


def two_nans(steps: np.ndarray, y: np.ndarray, i0: int, sigma: np.ndarray) -> np.ndarray:
    z = y.copy()
    z[i0 : i0 + 2] = np.nan
    return z


FAILURES: dict[str, Injection] = {
    "nan storm": nan_storm,
    "divergence (exp, capped at L0)": divergence,
    "jump to L0": jump_to_start,
}
TRANSIENTS: dict[str, Injection] = {
    "one +50σ spike": one_spike,
    "spike to 2x, 100-step decay": decaying_spike,
    "two NaN losses": two_nans,
}


# -------------------------------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    key: str
    folder: str
    n: int
    total: int
    diverged: bool
    clean: Replay
    inject_step: int | None = None
    injected: dict[str, Replay] = field(default_factory=dict)


def run_curve(c: Curve, inject: bool) -> RunResult:
    steps, y = series(c)
    slices = flush_slices(steps)
    clock = [0.0]
    mon = new_monitor(c.lrs, clock)
    at = int(INJECT_AT * len(slices))
    saved: dict[str, RunMonitor] = {}

    def keep(k: int, m: RunMonitor) -> None:
        if inject and k == at and m.stopped_at is None:
            saved["mon"] = copy.deepcopy(m)

    clean = replay(mon, steps, y, slices, clock, keep)
    out = RunResult(c.key, c.folder, len(y), c.total_steps, diverged_in_data(y), clean)
    if not inject or out.diverged or "mon" not in saved or at >= len(slices):
        return out
    i0 = slices[at].start
    out.inject_step = int(steps[i0])
    sigma = np.maximum(local_sigma(y), 1e-6)
    for name, fn in {**FAILURES, **TRANSIENTS}.items():
        z = fn(steps, y, i0, sigma)
        m = copy.deepcopy(saved["mon"])
        m.detectors[0].clock = clock  # type: ignore[attr-defined]
        out.injected[name] = replay(m, steps, z, slices[at:], clock)
    return out


def _pct(x: list[float], q: float) -> str:
    return f"{np.percentile(x, q):.0f}" if x else "-"


def print_tables(results: list[RunResult], timing: bool) -> None:
    print("\n## Finished runs replayed with the defaults\n")
    print(
        "| source | runs | observations | healthy runs | false stops | diverged in the data | stopped "
        "| stops (step/total: reason) | events shown (kind/severity: n) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    by_src: dict[str, list[RunResult]] = {}
    for r in results:
        by_src.setdefault(r.folder, []).append(r)
    for src, rs in [*sorted(by_src.items()), ("all", results)]:
        healthy = [r for r in rs if not r.diverged]
        bad = [r for r in rs if r.diverged]
        false = [r for r in healthy if r.clean.stopped_at is not None]
        true = [r for r in bad if r.clean.stopped_at is not None]
        shown: Counter = Counter()
        for r in rs:
            for (kind, sev), n in r.clean.events.items():
                shown[f"{kind}/{sev}"] += n
        stops = [*false, *true]
        where = "; ".join(
            f"{'FALSE ' if not r.diverged else ''}{r.key.split('/', 1)[1][:36]} @{r.clean.stopped_at}/{r.total}: "
            f"{(r.clean.reason or '')[:60]}"
            for r in stops[:3]
        )
        if len(stops) > 3:
            where += f"; ... ({len(stops) - 3} more)"
        events = ", ".join(f"{k}: {n}" for k, n in sorted(shown.items())) or "-"
        print(
            f"| {src} | {len(rs)} | {sum(r.n for r in rs)} | {len(healthy)} | {len(false)} | {len(bad)} | "
            f"{len(true)} | {where or '-'} | {events} |"
        )
    injected = [r for r in results if r.injected]
    if injected:
        print(f"\n## Injected at 60% of the run ({len(injected)} healthy runs)\n")
        print(
            "| injection | must stop | stopped | recall | delay steps median / p90 / max | events shown "
            "| missed (steps left after the injection) |"
        )
        print("|---|---|---|---|---|---|---|")
        for name in [*FAILURES, *TRANSIENTS]:
            must = name in FAILURES
            reps = [(r, r.injected[name]) for r in injected if name in r.injected]
            stops = [(r, p) for r, p in reps if p.stopped_at is not None]
            delays = [float(p.stopped_at - r.inject_step) for r, p in stops]  # type: ignore[operator]
            shown: Counter = Counter()
            for _, p in reps:
                for (kind, sev), n in p.events.items():
                    shown[f"{kind}/{sev}"] += n
            recall = f"{len(stops) / len(reps):.2f}" if must and reps else "-"
            dl = f"{_pct(delays, 50)} / {_pct(delays, 90)} / {_pct(delays, 100)}" if must else "-"
            events = ", ".join(f"{k}: {n}" for k, n in sorted(shown.items())) or "-"
            missed = sorted(
                (r.total - r.inject_step, r.key.split("/", 1)[1][:28])  # type: ignore[operator]
                for r, p in reps
                if must and p.stopped_at is None
            )
            miss = "; ".join(f"{k} ({left})" for left, k in missed) or "-"
            print(
                f"| {name} | {'yes' if must else 'no'} | {len(stops)}/{len(reps)} | {recall} | {dl} | {events} "
                f"| {miss} |"
            )
    if timing:
        obs = sum(r.clean.observations for r in results)
        det = sum(r.clean.detector_s for r in results)
        print(
            f"\ndetectors (HealthMonitor.check) on the clean replays: {1e6 * det / max(obs, 1):.1f} us per observation"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="every 4th run only")
    ap.add_argument("--sample", type=int, default=4, help="inject failures into every N-th run (0: none)")
    ap.add_argument("--only", default=None, help="only runs whose key contains this text")
    ap.add_argument("--timing", action="store_true")
    args = ap.parse_args(argv)
    curves = load_curves()
    if args.only:
        curves = [c for c in curves if args.only in c.key]
    if args.quick:
        curves = curves[::4]
    t0 = time.time()
    results = []
    for i, c in enumerate(curves):
        inject = args.sample > 0 and i % args.sample == 0
        r = run_curve(c, inject)
        results.append(r)
        flag = f"STOP @{r.clean.stopped_at}: {r.clean.reason}" if r.clean.stopped_at else "ok"
        print(
            f"[{i + 1}/{len(curves)} {time.time() - t0:.0f}s] {c.key[:90]}: {flag}",
            file=sys.stderr,
            flush=True,
        )
    print_tables(results, args.timing)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
