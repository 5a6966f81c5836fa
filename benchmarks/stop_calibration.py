"""Learn the stop rule's error model from finished real runs, and write it as shipped data with its provenance.

    python benchmarks/stop_calibration.py              # replay, learn, cross-validate, write the model
    python benchmarks/stop_calibration.py --check      # learn and report only; the shipped file is untouched

Re-run it whenever the forecaster changes: the error model measures *this* forecaster's errors. Every run of
``../shared/curves`` and every tiny run of ``data/tiny_runs`` is replayed through ``RunMonitor.flush`` at the
adapters' cadence (``stop_replay.py``); every usable forecast gives one sample ``e = log(forecast / final)``
with the features of :class:`scaleforecast.evidence.StopFeatures`. Forecasts the law check could not judge
yet (too few losses after the LR peak), and those whose own band reaches below zero, are learned from, though
the rule never stops on them: their errors keep the early scales and the tails wide, on the safe side. Then (see
:mod:`scaleforecast.calibration` for what the numbers mean):

1. ``table[column][bin]``: per fraction bin and column (the LR phase of a forecast with a backtest, or
   ``unproven`` without one), the weighted ``QUANTILE`` of the pessimistic errors ``max(e, 0)``, at least
   ``TWO_SIDED_SHARE`` of the ``QUANTILE`` of ``|e|``; each run weighs the same within a cell and each group of
   related runs (shared trunk, replicates) as one run. Runs whose fit reports a relative noise per observation
   of ``NOISE_SPLIT`` or more (per-step losses of small batches: the tiny runs) get their own ``noisy:`` columns,
   and the other runs shorter than ``LENGTH_SPLIT`` steps their own ``short:`` columns.
   A phase cell with fewer than ``MIN_GROUPS`` groups takes its bin's value over all columns of its regime; a
   sparse ``unproven`` cell the widest measured ``unproven`` value.
   The ``stable`` and ``early_decay`` columns never narrow as the fraction grows (the drop ahead stays unseen).
2. ``fallback[bin]`` / ``fallback_noisy[bin]``: the weighted ``QUANTILE`` of the full scale (table and
   backtest) over that bin, per regime, never below any column of the regime: the scale assumed when only a
   forecast is known; ``rel_std_split[bin]``, ``SPLIT_MARGIN`` times the smallest relative std a noisy run's
   forecast showed in the bin or its neighbours, tells the regimes apart by the forecast's own std.
3. ``upper``/``lower``: every run's largest ``e / scale`` (and ``-e / scale``) over its forecasts, computed with
   the table learned *without the run's group* (leave one group out), so that the tails measure the error of a
   model that has not seen the run.

The report cross-validates the whole procedure: grouped 5-fold, and leave one source out (the honest proxy for a
codebase nobody has seen), printing false stops and stops of unreachable targets as ``early_stop.py`` does.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import subprocess
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stop_replay import TINY_DIR, Trace, all_runs, replay_all

from scaleforecast.calibration import COLUMNS, REGIMES, ErrorModel, ErrorTail
from scaleforecast.evidence import PHASES

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "scaleforecast" / "data" / "stop_error_default.json"
FRACTION_EDGES = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
QUANTILE = 0.9
TWO_SIDED_SHARE = 0.3
BACKTEST_WEIGHT = 1.0
BACKTEST = "worst"
NOISE_SPLIT: float | None = 0.01
SPLIT_MARGIN = 0.5
LENGTH_SPLIT: int | None = None  # 15_000 measured: earlier stops, but 20 % false stops leaving one source out
MIN_GROUPS = 5
FLOOR = 1e-4
COMMAND = "python benchmarks/stop_calibration.py"


# ------------------------------------------------------------------------------------------------ samples
@dataclass
class Samples:
    """One row per usable forecast of every trace: its run, group, source, features and error."""

    run: np.ndarray
    group: np.ndarray
    fraction: np.ndarray
    phase: np.ndarray
    backtest_latest: np.ndarray
    backtest: np.ndarray
    noise: np.ndarray
    rel_std: np.ndarray
    error: np.ndarray
    flush_step: np.ndarray
    judged: np.ndarray
    keys: list[str]
    groups: list[str]
    sources: list[str]
    totals: np.ndarray
    finals: np.ndarray

    def rows(self, runs: np.ndarray) -> np.ndarray:
        """Row mask of the given run indices."""
        return np.isin(self.run, runs)


def samples(traces: Sequence[Trace]) -> Samples:
    """The calibration samples of ``traces`` (see the module docstring)."""
    run, fr, ph, bt, bw, nz, rs, err, fs, jd = [], [], [], [], [], [], [], [], [], []
    group_names = sorted({t.group for t in traces})
    gidx = {g: i for i, g in enumerate(group_names)}
    for i, t in enumerate(traces):
        # the flush at which each forecast was first seen: where a rule could act on it
        seen: dict[int, int] = {}
        for step, j in zip(t.flush_steps.tolist(), t.latest.tolist(), strict=True):
            if j >= 0 and j not in seen:
                seen[j] = step
        usable = t.usable
        for j, f in enumerate(t.features):
            if f is None or not usable[j] or j not in seen or seen[j] >= t.flush_steps[-1]:
                continue
            # a forecast of a loss at or below zero holds no usable number: never a stop
            if not t.mean[j] > 0:
                continue
            run.append(i)
            fr.append(f.fraction)
            ph.append(-1 if f.phase is None else PHASES.index(f.phase))
            bt.append(math.nan if f.backtest is None else f.backtest)
            bw.append(math.nan if f.backtest_worst is None else f.backtest_worst)
            nz.append(math.nan if f.noise is None else f.noise)
            rs.append(f.rel_std)
            err.append(math.log(t.mean[j] / t.final))
            fs.append(seen[j])
            jd.append(f.law_checked)
    run_a = np.asarray(run, dtype=np.int64)
    return Samples(
        run=run_a,
        group=np.array([gidx[traces[i].group] for i in run_a], dtype=np.int64),
        fraction=np.asarray(fr, dtype=float),
        phase=np.asarray(ph, dtype=np.int64),
        backtest_latest=np.asarray(bt, dtype=float),
        backtest=np.asarray(bw if BACKTEST == "worst" else bt, dtype=float),
        noise=np.asarray(nz, dtype=float),
        rel_std=np.asarray(rs, dtype=float),
        error=np.asarray(err, dtype=float),
        flush_step=np.asarray(fs, dtype=np.int64),
        judged=np.asarray(jd, dtype=bool),
        keys=[t.key for t in traces],
        groups=[t.group for t in traces],
        sources=[t.source for t in traces],
        totals=np.array([t.total for t in traces], dtype=np.int64),
        finals=np.array([t.final for t in traces], dtype=float),
    )


def weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    """The smallest ``x`` whose weighted CDF reaches ``q``."""
    if x.size == 0:
        return math.nan
    o = np.argsort(x)
    c = np.cumsum(w[o])
    return float(x[o][min(int(np.searchsorted(c, q * c[-1])), x.size - 1)])


def _run_weights(S: Samples, runs: np.ndarray) -> np.ndarray:
    """Weight of each run: 1 / (runs of its group among ``runs``), so every group counts once."""
    g = np.array([S.groups[i] for i in runs])
    _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    return 1.0 / counts[inv]


def _bins(fraction: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(FRACTION_EDGES, fraction, side="right") - 1, 0, len(FRACTION_EDGES) - 2)


def _columns(S: Samples) -> np.ndarray:
    """The table column of each sample: its phase once it has a backtest, ``unproven`` before."""
    return np.where(np.isfinite(S.backtest), S.phase, COLUMNS.index("unproven"))


def _model(table: dict[str, list[float]], fallback: list[float], upper: ErrorTail, lower: ErrorTail,
           provenance: dict | None = None, fallback_short: list[float] | None = None,
           fallback_noisy: list[float] | None = None,
           rel_std_split: list[float] | None = None) -> ErrorModel:  # fmt: skip
    return ErrorModel(
        fraction_edges=list(FRACTION_EDGES),
        table={k: [round(x, 6) for x in v] for k, v in table.items()},
        fallback=[round(x, 6) for x in fallback],
        fallback_short=None if fallback_short is None else [round(x, 6) for x in fallback_short],
        fallback_noisy=None if fallback_noisy is None else [round(x, 6) for x in fallback_noisy],
        rel_std_split=None if rel_std_split is None else [round(x, 6) for x in rel_std_split],
        backtest_weight=BACKTEST_WEIGHT,
        backtest=BACKTEST,
        noise_split=NOISE_SPLIT,
        length_split=LENGTH_SPLIT,
        floor=FLOOR,
        upper=upper,
        lower=lower,
        provenance=provenance or {},
    )


_EMPTY = ErrorTail(values=[], weights=[])


def _cell_scale(err: np.ndarray, w: np.ndarray) -> float:
    """A cell's scale: the ``QUANTILE`` of its pessimistic errors, at least ``TWO_SIDED_SHARE`` of the
    ``QUANTILE`` of the absolute ones."""
    return max(
        weighted_quantile(np.maximum(err, 0.0), w, QUANTILE),
        TWO_SIDED_SHARE * weighted_quantile(np.abs(err), w, QUANTILE),
    )


def learn_scales(S: Samples, runs: np.ndarray) -> ErrorModel:
    """The table and fallbacks learned from the forecasts of ``runs`` (tails left empty)."""
    rows = S.rows(runs)
    weight = np.zeros(len(S.keys))
    weight[runs] = _run_weights(S, runs)
    run, err = S.run[rows], S.error[rows]
    b = _bins(S.fraction[rows])
    col = _columns(S)[rows]
    group = S.group[rows]
    regime = _model({}, [], _EMPTY, _EMPTY).regimes(S.noise[rows], S.totals[run])
    nb = len(FRACTION_EDGES) - 1

    def cell(mask: np.ndarray) -> tuple[float, int]:
        if not mask.any():
            return math.nan, 0
        # every run weighs the same within a cell whatever its number of forecasts there; each group once
        _, inv, cnt = np.unique(run[mask], return_inverse=True, return_counts=True)
        w = weight[run[mask]] / cnt[inv]
        return _cell_scale(err[mask], w), len(np.unique(group[mask]))

    def fill(values: np.ndarray, default: np.ndarray) -> np.ndarray:
        ok = np.isfinite(values)
        return np.interp(np.arange(nb), np.nonzero(ok)[0], values[ok]) if ok.any() else default

    table: dict[str, list[float]] = {}
    long_pooled = np.full(nb, 0.05)
    for r, prefix in enumerate(REGIMES):
        here = regime == r
        if not here.any():
            continue
        pooled = fill(np.array([cell((b == k) & here)[0] for k in range(nb)]), long_pooled)
        if r == 0:
            long_pooled = pooled
        for i, name in enumerate(COLUMNS):
            values, dense = [], []
            for k in range(nb):
                v, n_groups = cell((b == k) & (col == i) & here)
                values.append(v)
                dense.append(n_groups >= MIN_GROUPS and math.isfinite(v))
            vals = np.array(values)
            if name == "unproven":
                # a run that has not tested itself where too few runs were seen untested: the widest measured
                worst = np.nanmax(vals[dense]) if any(dense) else np.nanmax(pooled)
                filled = [
                    max(worst, pooled[k]) if not d else v
                    for k, (v, d) in enumerate(zip(vals, dense, strict=True))
                ]
            else:
                filled = [v if d else pooled[k] for k, (v, d) in enumerate(zip(vals, dense, strict=True))]
            if name in ("stable", "early_decay"):
                # before the LR decays (or while most of its drop is still ahead) the annealing drop is unseen,
                # and seeing more of the run before it does not reveal it: such a forecast is never read as
                # sharper than an earlier one (the few runs still there late, WSD with short cooldowns, would
                # otherwise set a narrow scale)
                filled = list(np.maximum.accumulate(np.asarray(filled, dtype=float)))
            table[prefix + name] = [max(float(x), FLOOR) for x in filled]
    for name in COLUMNS:  # no long run seen: the widest regime seen stands in
        seen = [table[p + name] for p in reversed(REGIMES) if p + name in table]
        table.setdefault(name, seen[0] if seen else [0.05] * nb)
    model = _model(table, [float(x) for x in long_pooled], _EMPTY, _EMPTY)
    full = model.scales(S.fraction[rows], S.phase[rows], S.backtest[rows], S.noise[rows], total=S.totals[run])
    rel_std = S.rel_std[rows]

    def fallback_of(mask: np.ndarray, columns: list[list[float]]) -> np.ndarray:
        """A high quantile of the full scales of ``mask``'s forecasts, never narrower than ``columns``."""
        out = np.full(nb, np.nan)
        for k in range(nb):
            m = (b == k) & mask
            if m.any():
                _, inv, cnt = np.unique(run[m], return_inverse=True, return_counts=True)
                out[k] = weighted_quantile(full[m], weight[run[m]] / cnt[inv], QUANTILE)
        return np.maximum(fill(out, long_pooled), np.max(columns, axis=0))

    def columns(*prefixes: str) -> list[list[float]]:
        return [table[p + c] for p in prefixes for c in COLUMNS if p + c in table] or [
            table[c] for c in COLUMNS
        ]

    # only a forecast is known: its regime is guessed from its length and its own relative std
    fallback = fallback_of(regime == 0, columns(""))
    short = fallback_of(regime == 1, columns("", "short:")) if (regime == 1).any() else None
    if short is not None:
        short = np.maximum(short, fallback)
    if not (regime == 2).any():
        return _model(table, [float(x) for x in fallback], _EMPTY, _EMPTY, fallback_short=_list(short))
    noisy = np.maximum(fallback_of(regime == 2, list(table.values())), fallback if short is None else short)
    # below the split, only smooth runs were seen: half the smallest relative std of a noisy run's forecast in
    # the bin or its neighbours, so that a noisy run a little steadier than those seen still reads wide
    split = np.full(nb, np.nan)
    for k in range(nb):
        m = (np.abs(b - k) <= 1) & (regime == 2)
        if m.any():
            split[k] = SPLIT_MARGIN * float(np.min(rel_std[m]))
    return _model(
        table,
        [float(x) for x in fallback],
        _EMPTY,
        _EMPTY,
        fallback_short=_list(short),
        fallback_noisy=_list(noisy),
        rel_std_split=_list(fill(split, np.zeros(nb))),
    )


def _list(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [float(x) for x in values]


def run_maxima(S: Samples, model: ErrorModel, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each run's largest pessimistic and optimistic ``z`` (``e / scale`` and ``-e / scale``) under ``model``."""
    up = np.full(len(runs), -np.inf)
    lo = np.full(len(runs), -np.inf)
    rows = S.rows(runs)
    sc = model.scales(
        S.fraction[rows], S.phase[rows], S.backtest[rows], S.noise[rows], total=S.totals[S.run[rows]]
    )
    z = S.error[rows] / sc
    pos = {r: i for i, r in enumerate(runs.tolist())}
    idx = np.array([pos[r] for r in S.run[rows]], dtype=np.int64)
    np.maximum.at(up, idx, z)
    np.maximum.at(lo, idx, -z)
    return up, lo


def _tail(values: np.ndarray, weights: np.ndarray) -> ErrorTail:
    keep = np.isfinite(values)
    o = np.argsort(values[keep])
    # rounded up, so that the shipped file never lets a z pass that the measured one would not
    up = np.ceil(values[keep][o] * 1e6) / 1e6
    return ErrorTail(values=up.tolist(), weights=weights[keep][o].round(6).tolist())


def learn(S: Samples, runs: np.ndarray | None = None, provenance: dict | None = None) -> ErrorModel:
    """The error model of ``runs`` (default: all): the scales learned on all of them, the tails out of group."""
    runs = np.unique(S.run) if runs is None else np.asarray(runs)
    base = learn_scales(S, runs)
    groups = np.array([S.groups[i] for i in runs])
    up = np.full(len(runs), np.nan)
    lo = np.full(len(runs), np.nan)
    for g in np.unique(groups):
        held = groups == g
        m = learn_scales(S, runs[~held])
        u, low = run_maxima(S, m, runs[held])
        up[held], lo[held] = u, low
    w = _run_weights(S, runs)
    return base.model_copy(
        update={"upper": _tail(up, w), "lower": _tail(lo, w), "provenance": provenance or {}}
    )


# ------------------------------------------------------------------------------------------------ evaluate
RATIOS = (0.97, 0.98, 0.99, 1.01, 1.02, 1.05)
CONFIDENCES = (0.9, 0.95, 0.98, 0.99)


def stop_steps(
    S: Samples, model: ErrorModel, runs: np.ndarray, ratio: float, confidence: float
) -> np.ndarray:
    """For each of ``runs``, the flush step at which the rule stops a target ``ratio * final`` (-1: never).

    The vectorised twin of :func:`scaleforecast.decision.decide_stop` with no grace period, for the
    cross-validation report; ``early_stop.py`` measures with ``decide_stop`` itself.
    """
    k = model.threshold(confidence)
    rows = S.rows(runs)
    sc = model.scales(
        S.fraction[rows], S.phase[rows], S.backtest[rows], S.noise[rows], total=S.totals[S.run[rows]]
    )
    # confidence(z) >= c exactly when z > threshold; a forecast the law check has not judged, or whose own
    # band reaches below zero at c (``rel_std > 1 / z_c``), never stops
    z_c = NormalDist().inv_cdf(confidence)
    stop = ((S.error[rows] - math.log(ratio)) / sc > k) & S.judged[rows] & (S.rel_std[rows] * z_c <= 1.0)
    out = np.full(len(runs), -1, dtype=np.int64)
    pos = {r: i for i, r in enumerate(runs.tolist())}
    for r, s in zip(S.run[rows][stop], S.flush_step[rows][stop], strict=True):
        i = pos[int(r)]
        if out[i] < 0 or s < out[i]:
            out[i] = s
    return out


def cross_validate(
    S: Samples, folds: list[np.ndarray]
) -> dict[tuple[float, float], tuple[int, int, list[float]]]:
    """For every (confidence, ratio): (runs stopped, runs, fractions at stop), each fold's runs judged by the
    model learned without them."""
    allruns = np.unique(S.run)
    out: dict[tuple[float, float], tuple[int, int, list[float]]] = {}
    for held in folds:
        model = learn(S, np.setdiff1d(allruns, held))
        for c in CONFIDENCES:
            for ratio in RATIOS:
                st = stop_steps(S, model, held, ratio, c)
                n, tot, fr = out.get((c, ratio), (0, 0, []))
                stopped = st >= 0
                fr = fr + (st[stopped] / S.totals[held][stopped]).tolist()
                out[(c, ratio)] = (n + int(stopped.sum()), tot + len(held), fr)
    return out


def group_folds(S: Samples, k: int = 5) -> list[np.ndarray]:
    """``k`` folds of whole groups, assigned by a hash of the group name (deterministic)."""
    import hashlib

    runs = np.unique(S.run)
    fold = np.array([int(hashlib.sha1(S.groups[r].encode()).hexdigest()[:8], 16) % k for r in runs])
    return [runs[fold == i] for i in range(k) if (fold == i).any()]


def source_folds(S: Samples) -> list[np.ndarray]:
    """One fold per source (leave one source out); the tiny runs of ``tiny_runs.py`` form one source."""
    runs = np.unique(S.run)
    src = np.array([_family(S.sources[r]) for r in runs])
    return [runs[src == s] for s in sorted(set(src))]


def _family(source: str) -> str:
    # the Lightning and HF runs of tiny_runs.py are one codebase; every other folder is its own source
    return "tiny_runs" if source in ("tiny_lightning", "tiny_hf") else source


def cv_table(title: str, res: dict[tuple[float, float], tuple[int, int, list[float]]]) -> str:
    """Markdown: per confidence, the share of runs stopped (median fraction at stop) per target ratio."""
    head = "| confidence | " + " | ".join(f"x{r:g}" for r in RATIOS) + " |"
    lines = [f"#### {title}", "", head, "|---" * (len(RATIOS) + 1) + "|"]
    for c in CONFIDENCES:
        cells = []
        for r in RATIOS:
            n, tot, fr = res[(c, r)]
            med = f" @{np.median(fr):.2f}" if fr else ""
            cells.append(f"{100 * n / max(tot, 1):.1f} %{med}")
        lines.append(f"| {c:g} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Share of runs stopped (median fraction of the run at the stop); x1.01 and above are reachable"
    )
    lines.append("targets (false stops), below 1 unreachable ones.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(S: Samples, fingerprint: str, cv: dict) -> dict:
    """Where the numbers come from: data, code, settings, the out-of-sample check, and how to re-learn."""
    by_source: dict[str, int] = {}
    for s in S.sources:
        by_source[s] = by_source.get(s, 0) + 1
    return {
        "learned_by": COMMAND,
        "date": _dt.date.today().isoformat(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "scaleforecast")),
        "forecaster_fingerprint": fingerprint,
        "runs": len(S.keys),
        "groups": len(set(S.groups)),
        "runs_by_source": by_source,
        "forecasts": int(S.run.size),
        "replay": "RunMonitor.flush every 50 optimizer steps (the adapters' default), refit policy as shipped",
        "settings": {
            "quantile": QUANTILE,
            "two_sided_share": TWO_SIDED_SHARE,
            "backtest_weight": BACKTEST_WEIGHT,
            "backtest": BACKTEST,
            "noise_split": NOISE_SPLIT,
            "split_margin": SPLIT_MARGIN,
            "length_split": LENGTH_SPLIT,
            "min_groups": MIN_GROUPS,
            "fraction_edges": list(FRACTION_EDGES),
        },
        "cross_validation": cv,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="curves folder (default: ../shared/curves)")
    ap.add_argument(
        "--out", default=str(OUT), help=f"where to write the model (default {OUT.relative_to(REPO)})"
    )
    ap.add_argument("--check", action="store_true", help="learn and report, do not write")
    ap.add_argument(
        "--cache", default=None, help="folder to cache the replayed traces in (keyed by data + code)"
    )
    ap.add_argument("--no-tiny", action="store_true", help="leave the tiny runs out")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("scaleforecast").setLevel(logging.ERROR)
    runs = all_runs(args.root, tiny=None if args.no_tiny else TINY_DIR)
    if not runs:
        print("no runs found (../shared/curves missing and no tiny runs)", file=sys.stderr)
        return 1
    from stop_replay import code_fingerprint

    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    traces = replay_all(runs, cache=args.cache, progress=say)
    S = samples(traces)
    cv5 = cross_validate(S, group_folds(S))
    loso = cross_validate(S, source_folds(S))
    print(cv_table("grouped 5-fold cross-validation (out of sample)", cv5) + "\n")
    print(cv_table("leave one source out (out of sample)", loso) + "\n")

    def summary(res: dict) -> dict:
        return {
            f"c={c:g}": {f"x{r:g}": round(res[(c, r)][0] / max(res[(c, r)][1], 1), 4) for r in RATIOS}
            for c in CONFIDENCES
        }

    cv = {"grouped_5_fold_stop_rate": summary(cv5), "leave_one_source_out_stop_rate": summary(loso)}
    model = learn(S, provenance=provenance(S, code_fingerprint(), cv))
    print("thresholds z(c):", ", ".join(f"{c:g}: {model.threshold(c):.2f}" for c in CONFIDENCES))
    print("table (scale u by fraction bin, %):")
    for p, values in model.table.items():
        print(f"  {p:17s}", " ".join(f"{100 * v:5.2f}" for v in values))
    print(f"  {'fallback':17s}", " ".join(f"{100 * v:5.2f}" for v in model.fallback))
    if model.fallback_short is not None:
        print(f"  {'fallback short':17s}", " ".join(f"{100 * v:5.2f}" for v in model.fallback_short))
    if model.fallback_noisy is not None and model.rel_std_split is not None:
        print(f"  {'fallback noisy':17s}", " ".join(f"{100 * v:5.2f}" for v in model.fallback_noisy))
        print(f"  {'rel. std split':17s}", " ".join(f"{100 * v:5.2f}" for v in model.rel_std_split))
    if not args.check:
        Path(args.out).write_text(json.dumps(model.model_dump(mode="json"), indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
