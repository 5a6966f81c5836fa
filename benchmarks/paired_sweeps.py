"""Would a sibling-relative (paired) error model let sweeps stop more? A measurement, not a shipped rule.

The sweep stopper compares a run's forecast with the best other run's, each read with its own measured error.
Runs of one sweep share their codebase, data and (often) schedule, so much of their forecasts' error is shared:
the drop their cooldowns will give is misjudged alike. The error of the *gap* between two running runs,
``e_ij = log(m_i / m_j) - log(final_i / final_j)``, may then be smaller than either run's own.

For every sweep of ``sweep_replay.py`` (all runs started at once), every ordered pair of its runs and every
checkpoint of run ``i`` at which ``j`` is still running, this takes ``e_ij``; learns a scale per fraction bin of
``i``'s run (the 0.9 quantile of ``|e_ij|``, each sweep weighing the same) and the run-pair maxima
``Z_ij = max_k e_ij / scale``, weighted so that each sweep counts once; and replays the sweeps with the
calibrated rule (cross-fitted, as ``sweep_replay.py``), alone and together with a paired rule: stop ``i`` when
a running sibling's forecast is below ``i``'s by more than ``z_c`` paired scales. Both the scales and ``z_c``
are learned leaving the replayed sweep out. A sweep is one independent group, so ``n`` sweeps certify at most
``n / (n + 1)``: the 19-36 sweeps here cannot certify the default 0.98 (``z_c`` is then infinite and the paired
rule silent); ``--confidence`` shows what a lower one would give.

    python benchmarks/paired_sweeps.py [--confidence 0.9] [--workers 0 4]      # ~3 min per confidence
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sweep_replay as sr
from stop_replay import all_runs, replay_all

from scaleforecast.calibration import ErrorModel, load_error_model

EDGES = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01])
Pair = tuple[int, int, float, float]
"""``(i, j, fraction of i's run, e_ij)``."""


def _latest(rt: sr.RunTrace, step: int) -> int:
    """The index of ``rt``'s latest checkpoint at or before ``step`` (-1: none yet)."""
    return int(np.searchsorted(rt.steps, step, side="right")) - 1


def _usable(rt: sr.RunTrace, k: int) -> bool:
    m = float(rt.fc_loss[k])
    return math.isfinite(m) and m > 0 and rt.fc_status[k] in sr.USABLE


def pair_errors(sweep: sr.Sweep) -> list[Pair]:
    """Every ``e_ij`` of the sweep run all at once: at each checkpoint of ``i`` before its end, against ``j``'s
    latest forecast while ``j`` is still running (both usable)."""
    out: list[Pair] = []
    for i, ri in enumerate(sweep.runs):
        for j, rj in enumerate(sweep.runs):
            if i == j:
                continue
            for k in range(len(ri.steps) - 1):
                kj = _latest(rj, int(ri.steps[k]))
                if kj < 0 or kj >= len(rj.steps) - 1 or not (_usable(ri, k) and _usable(rj, kj)):
                    continue
                e = math.log(ri.fc_loss[k] / rj.fc_loss[kj]) - math.log(ri.final / rj.final)
                out.append((i, j, float(ri.steps[k]) / ri.total_steps, e))
    return out


def _bin(fraction: float) -> int:
    return int(min(np.searchsorted(EDGES, fraction, side="right") - 1, len(EDGES) - 2))


def learn_scales(pairs_by_sweep: dict[str, list[Pair]], quantile: float = 0.9) -> np.ndarray:
    """The paired scale per fraction bin: the weighted ``quantile`` of ``|e_ij|`` (each sweep weighs the same;
    an empty bin takes the widest)."""
    f, e, w = [], [], []
    for pairs in pairs_by_sweep.values():
        for _, _, fr, err in pairs:
            f.append(fr)
            e.append(abs(err))
            w.append(1.0 / len(pairs))
    fa, ea, wa = np.asarray(f), np.asarray(e), np.asarray(w)
    scale = np.full(len(EDGES) - 1, np.nan)
    for b in range(len(scale)):
        m = (fa >= EDGES[b]) & (fa < EDGES[b + 1])
        if m.sum() >= 5:
            o = np.argsort(ea[m])
            cw = np.cumsum(wa[m][o]) / wa[m].sum()
            scale[b] = ea[m][o][min(int(np.searchsorted(cw, quantile)), int(m.sum()) - 1)]
    return np.maximum(np.where(np.isfinite(scale), scale, np.nanmax(scale)), 1e-3)


def threshold(pairs_by_sweep: dict[str, list[Pair]], scale: np.ndarray, confidence: float) -> float:
    """``z_c``: the smallest run-pair maximum ``Z_ij`` at which the share of sweeps' pairs below it, times
    ``n / (n + 1)`` for ``n`` sweeps, reaches ``confidence`` (``inf`` when ``n`` sweeps cannot certify it)."""
    values, weights = [], []
    for pairs in pairs_by_sweep.values():
        z: dict[tuple[int, int], float] = {}
        for i, j, fr, err in pairs:
            z[(i, j)] = max(z.get((i, j), -math.inf), err / scale[_bin(fr)])
        values += list(z.values())
        weights += [1.0 / len(z)] * len(z)
    if not values:
        return math.inf
    o = np.argsort(values)
    acc = np.cumsum(np.asarray(weights)[o]) / (sum(weights) + 1.0)
    k = int(np.searchsorted(acc, confidence - 1e-12))
    return float(np.asarray(values)[o][k]) if k < len(values) else math.inf


class PairedRule(sr.CalibratedRule):
    """The calibrated rule, or: stop ``i`` when a running sibling's forecast is below ``i``'s by more than
    ``z_c`` paired scales (both learned without the replayed sweep)."""

    def __init__(
        self,
        name: str,
        model_of: Callable[[str], ErrorModel],
        paired: dict[str, tuple[np.ndarray, float]],
        confidence: float,
    ) -> None:
        super().__init__(name, model_of, confidence)
        self.paired = paired

    def check(self, i: int, k: int) -> bool:
        if super().check(i, k):
            return True
        view = self.view
        scale, z_c = self.paired[view.sweep.name]
        run = view.sweep.runs[i]
        if not math.isfinite(z_c) or not _usable(run, k):
            return False
        bar = z_c * scale[_bin(float(run.steps[k]) / run.total_steps)]
        for j, other in enumerate(view.sweep.runs):
            kj = view.latest[j]
            if j == i or view.state[j] != "running" or kj < 0 or not _usable(other, kj):
                continue
            if math.log(run.fc_loss[k] / other.fc_loss[kj]) > bar:
                return True
        return False


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--confidence", type=float, default=0.98)
    ap.add_argument("--workers", type=int, nargs="+", default=[0])
    ap.add_argument("--cache", default=None, help="folder to cache the replayed traces in")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("scaleforecast").setLevel(logging.ERROR)
    from early_stop import cross_fitted_models

    runs = all_runs(None)
    replayed = replay_all(runs, cache=args.cache)
    by_key = {r.key: r for r in runs}
    traces = {t.key: rt for t in replayed if (rt := sr.run_trace(by_key[t.key], t, 40)) is not None}
    folds = cross_fitted_models(replayed)
    shipped = load_error_model()
    for kind in sr.KINDS:
        sweeps = sr.make_sweeps(runs, traces, kind=kind, min_runs=2)
        pairs = {s.name: pair_errors(s) for s in sweeps}
        paired = {}
        for s in sweeps:
            rest = {n: p for n, p in pairs.items() if n != s.name}
            scale = learn_scales(rest)
            paired[s.name] = (scale, threshold(rest, scale, args.confidence))
        scales = learn_scales(pairs)
        z_cs = [z for _, z in paired.values()]
        print(f"### {len(sweeps)} {sr.KINDS[kind]}: paired scale by tenth of the run (%, all sweeps)")
        print("  " + " ".join(f"{100 * v:.2f}" for v in scales))
        print(f"  z_c at {args.confidence:g}, leaving each sweep out: median {np.median(z_cs):.2f}\n")
        policies = [
            sr.CalibratedRule(
                f"calibrated (conf {args.confidence:g}, cross-fitted)",
                lambda key: folds.get(key, shipped),
                args.confidence,
            ),
            PairedRule(
                f"calibrated + paired (conf {args.confidence:g})",
                lambda key: folds.get(key, shipped),
                paired,
                args.confidence,
            ),
            sr.Oracle(0.0),
        ]
        for w in args.workers:
            rows = sr.run_benchmark(sweeps, policies, workers=w, orders=5, seed=0)
            who = "all runs at once" if w <= 0 else f"{w} workers"
            print(sr.table(f"{len(sweeps)} {sr.KINDS[kind]}, {who}", rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
