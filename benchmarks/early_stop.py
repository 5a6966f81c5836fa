"""Early stopping on finished real runs: does the rule stop runs that would have made their target, and does it
stop the ones that cannot, early enough to save compute?

Every finished run available (``../shared/curves``, the tiny-model curves of ``curves_tiny`` and the tiny real
Lightning / HF runs of ``data/tiny_runs``) is replayed through ``RunMonitor.flush`` at the adapters' cadence (``stop_replay.py``). For
each confidence in {0.9, 0.95, 0.98, 0.99} and each target at the run's true final loss times {0.97, 0.98, 0.99,
1.01, 1.02, 1.05}, the stop rule is asked at every flush, as the monitor asks it, and the benchmark prints:

- for reachable targets (x1.01 and above): the false-stop rate (runs stopped);
- for unreachable targets (below x1): the stop rate, the median fraction of the run at which it stopped, and the
  compute saved (steps not trained over all steps of those runs).

Rules compared:

- ``before``: the rule as it was: ``P(final >= target) >= confidence`` under the forecast's own normal
  predictive distribution, after a grace period of 10 % of the run;
- ``after``: :func:`scaleforecast.decision.decide_stop` with the shipped error model and the monitor's own
  features, no grace period (in sample: the shipped model has seen these runs);
- ``after, cross-fitted``: the same rule, each run judged by the error model learned without its fold of
  groups (grouped 5-fold): the out-of-sample number, the one that says what a new run can expect;
- ``after, forecast only``: the cross-fitted rule fed only what a forecast carries (a sweep engine's record).

Under each rule, the default confidence by when the run's LR starts to decay (first below 99.9 % of its peak):
before the decay the annealing drop is unseen, so where the decay starts bounds how early a run can be stopped.

Then the runs that have a finished sibling of their family (``stop_replay.warm_pairs``), replayed again with
the sibling's fit as their prior, as a sweep's later runs borrow from its finished ones: the same rules on the
same runs, cold and warm.

Then the new-user scenario: the 3,000-step Lightning char model (WSD) and the HF tiny GPT-2 (cosine), with their
targets at the same ratios to the final loss as in the report that found the problem.

    python benchmarks/early_stop.py                    # ~10 minutes on two busy cores
    python benchmarks/early_stop.py --cache .cache     # reuse the replay while code and data are unchanged
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stop_calibration import group_folds, learn, samples
from stop_replay import TINY_DIR, Trace, all_runs, first_stop, replay_all, warm_pairs

from scaleforecast.calibration import ErrorModel, load_error_model
from scaleforecast.decision import DEFAULT_CONFIDENCE, decide_stop
from scaleforecast.evidence import StopFeatures
from scaleforecast.results import FitStatus, Forecast

RATIOS = (0.97, 0.98, 0.99, 1.01, 1.02, 1.05)
CONFIDENCES = (0.9, 0.95, 0.98, 0.99)

# The new-user scenario as reported: final loss reached, and the targets tried (absolute). The replay keeps
# their ratios to the final loss, since the tiny runs here reach other losses.
SCENARIO = {
    "tiny/lightning_char_wsd_3000": (1.131, (1.15, 1.2)),
    "tiny/hf_gpt2_cosine_3000": (1.28, (1.3, 1.4, 1.5)),
}

DECAY_BANDS = (
    (0.0, 0.1, "from the start (by 10 %)"),
    (0.1, 0.6, "at 10-60 %"),
    (0.6, 1.0, "after 60 %"),
    (1.0, math.inf, "never"),
)
"""Where the LR starts to decay, as a fraction of the run: ``[lo, hi)`` and a name."""

Decide = Callable[[Forecast, StopFeatures | None, int, float, float], bool]
"""``decide(forecast, features, step, target, confidence) -> stop?``"""


# ------------------------------------------------------------------------------------------------- rules
@dataclass
class Rule:
    """A stopping rule as the benchmark drives it: ``decide`` per flush, a grace period in fractions of the run,
    and optionally a per-run ``decide`` (cross-fitting)."""

    name: str
    decide: Callable[[Trace], Decide]
    grace: float = 0.0


def before_rule(min_fraction: float = 0.1) -> Rule:
    """The rule as it was before the error model: a normal tail probability after a 10 % grace period."""

    def decide(trace: Trace) -> Decide:
        def d(forecast: Forecast, features: StopFeatures | None, step: int, target: float, c: float) -> bool:
            if step < int(min_fraction * trace.total) or forecast.status not in (
                FitStatus.OK,
                FitStatus.ANNEALING_UNIDENTIFIED,
            ):
                return False
            return forecast.final is not None and forecast.prob_at_least(target) >= c

        return d

    return Rule(f"before (normal P, {100 * min_fraction:g} % grace)", decide, grace=min_fraction)


def after_rule(name: str, model_of: Callable[[Trace], ErrorModel], use_features: bool = True) -> Rule:
    """:func:`decide_stop` with the error model ``model_of(trace)`` (features as the monitor computed them)."""

    def decide(trace: Trace) -> Decide:
        model = model_of(trace)

        def d(forecast: Forecast, features: StopFeatures | None, step: int, target: float, c: float) -> bool:
            return decide_stop(
                forecast,
                target,
                step=step,
                total_steps=trace.total,
                confidence=c,
                features=features if use_features else None,
                model=model,
            ).stop

        return d

    return Rule(name, decide)


def cross_fitted_models(traces: Sequence[Trace]) -> dict[str, ErrorModel]:
    """For every run, the error model learned without its fold (grouped 5-fold, as ``stop_calibration.py``)."""
    S = samples(traces)
    allruns = np.unique(S.run)
    out: dict[str, ErrorModel] = {}
    for held in group_folds(S):
        model = learn(S, np.setdiff1d(allruns, held))
        for i in held:
            out[S.keys[i]] = model
    fallback = learn(S)
    for t in traces:
        out.setdefault(t.key, fallback)  # a run without any usable forecast: never judged anyway
    return out


# ---------------------------------------------------------------------------------------------- measure
@dataclass
class Cell:
    """One (rule, confidence, target ratio) over a set of runs."""

    runs: int
    stopped: int
    fractions: list[float]
    saved: float

    @property
    def rate(self) -> float:
        return self.stopped / self.runs if self.runs else 0.0


def measure(traces: Sequence[Trace], rule: Rule) -> dict[tuple[float, float], dict[str, tuple[int, float]]]:
    """Per (confidence, ratio): run key -> (stop step or -1, total steps)."""
    out: dict[tuple[float, float], dict[str, tuple[int, float]]] = {}
    for t in traces:
        d = rule.decide(t)
        grace = int(rule.grace * t.total)
        for c in CONFIDENCES:
            for r in RATIOS:
                target = r * t.final
                step = first_stop(
                    t, lambda f, x, s, d=d, target=target, c=c: d(f, x, s, target, c), grace=grace
                )
                out.setdefault((c, r), {})[t.key] = (-1 if step is None else step, t.total)
    return out


def cells(result: dict, keys: set[str]) -> dict[tuple[float, float], Cell]:
    """Aggregate :func:`measure` over the runs in ``keys``."""
    out = {}
    for (c, r), per in result.items():
        sel = [(s, tot) for k, (s, tot) in per.items() if k in keys]
        stopped = [(s, tot) for s, tot in sel if s >= 0]
        total = sum(tot for _, tot in sel)
        saved = sum(tot - s for s, tot in stopped) / total if total else 0.0
        out[(c, r)] = Cell(len(sel), len(stopped), [s / tot for s, tot in stopped], saved)
    return out


REACHABLE = [r for r in RATIOS if r > 1]
UNREACHABLE = [r for r in RATIOS if r < 1]


def _head(*first: str) -> list[str]:
    """A markdown table's header and rule: ``first`` columns, then one per target ratio."""
    names = [
        *first,
        *(f"false stops x{r:g}" for r in REACHABLE),
        *(f"x{r:g}: stopped / median at / saved" for r in UNREACHABLE),
    ]
    return ["| " + " | ".join(names) + " |", "|---" * len(names) + "|"]


def _cells(cs: dict[tuple[float, float], Cell], c: float) -> list[str]:
    """At confidence ``c``: false stops on reachable targets; stops, median stop fraction and compute saved on
    the others."""
    out = [f"{100 * cs[(c, r)].rate:.1f} % ({cs[(c, r)].stopped})" for r in REACHABLE]
    for r in UNREACHABLE:
        x = cs[(c, r)]
        med = f"{100 * np.median(x.fractions):.0f} %" if x.fractions else "-"
        out.append(f"{100 * x.rate:.0f} % / {med} / {100 * x.saved:.0f} %")
    return out


def table(title: str, cs: dict[tuple[float, float], Cell]) -> str:
    """Markdown: false stops on reachable targets; stops, median stop fraction and compute saved on the others."""
    n = next(iter(cs.values())).runs if cs else 0
    lines = [f"#### {title} ({n} runs)", "", *_head("confidence")]
    lines += ["| " + " | ".join([f"{c:g}", *_cells(cs, c)]) + " |" for c in CONFIDENCES]
    return "\n".join(lines)


def decay_start(lrs: np.ndarray) -> float:
    """The fraction of the run at which the LR first falls below 99.9 % of its peak after reaching it (1.0: never)."""
    a = np.asarray(lrs, dtype=float)
    top = int(np.argmax(a))
    below = np.flatnonzero(a[top:] < 0.999 * a[top])
    return (top + int(below[0])) / a.size if below.size else 1.0


def decay_table(cs_by_band: dict[str, dict[tuple[float, float], Cell]], confidence: float) -> str:
    """Markdown: :func:`table`'s cells at ``confidence``, one row per band of :data:`DECAY_BANDS`."""
    lines = [
        f"#### by when the LR starts to decay (confidence {confidence:g})",
        "",
        *_head("LR starts to decay", "runs"),
    ]
    for band, cs in cs_by_band.items():
        runs = str(cs[(confidence, RATIOS[0])].runs)
        lines.append("| " + " | ".join([band, runs, *_cells(cs, confidence)]) + " |")
    return "\n".join(lines)


def scenario(traces: Sequence[Trace], rules: Sequence[Rule]) -> str:
    """The new-user scenario: stop or not, and at which step, for each reported target (ratio kept)."""
    by_key = {t.key: t for t in traces}
    lines = [
        "| run (final loss) | target as reported (here) | " + " | ".join(r.name for r in rules) + " |",
        "|---" * (2 + len(rules)) + "|",
    ]
    for key, (reported, targets) in SCENARIO.items():
        t = by_key.get(key)
        if t is None:
            lines.append(f"| {key}: not recorded | | " + " | ".join("" for _ in rules) + " |")
            continue
        for target in targets:
            mine = t.final * target / reported
            row = [f"{key.split('/', 1)[1]} ({t.final:.3f})", f"{target:g} ({mine:.3f})"]
            for rule in rules:
                d = rule.decide(t)
                step = first_stop(
                    t,
                    lambda f, x, s, d=d, mine=mine: d(f, x, s, mine, DEFAULT_CONFIDENCE),
                    grace=int(rule.grace * t.total),
                )
                row.append("runs to the end" if step is None else f"**stopped at step {step}**")
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Default confidence {DEFAULT_CONFIDENCE}; every target above is reachable.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="curves folder (default: ../shared/curves)")
    ap.add_argument(
        "--cache", default=None, help="folder to cache the replayed traces in (keyed by data + code)"
    )
    ap.add_argument("--model", default="default", help="error model to judge (name or JSON path)")
    ap.add_argument("--no-tiny", action="store_true", help="leave the tiny runs out")
    ap.add_argument("-v", "--verbose", action="store_true", help="print replay progress")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("scaleforecast").setLevel(logging.ERROR)

    t0 = time.time()
    runs = all_runs(args.root, tiny=None if args.no_tiny else TINY_DIR)
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if args.verbose else None
    traces = replay_all(runs, cache=args.cache, progress=say)
    pairs = warm_pairs(runs, args.root)
    warm = replay_all([r for r, _ in pairs], cache=args.cache, progress=say, siblings=[s for _, s in pairs])
    print(f"replayed {len(traces)} runs, {len(warm)} of them warm too, in {time.time() - t0:.0f} s\n")
    shipped = load_error_model(args.model)
    folds = cross_fitted_models(traces)
    rules = [
        before_rule(),
        after_rule("after (shipped model, in sample)", lambda t: shipped),
        after_rule("after, cross-fitted (out of sample)", lambda t: folds[t.key]),
        after_rule("after, cross-fitted, forecast only", lambda t: folds[t.key], use_features=False),
    ]
    origin = {t.key: t.meta.get("origin", "shared") for t in traces}
    populations = {
        "all runs": set(origin),
        "shared curves": {k for k, o in origin.items() if o == "shared"},
        "tiny-model curves (curves_tiny)": {k for k, o in origin.items() if o == "curves_tiny"},
        "tiny Lightning / HF runs (tiny_runs.py)": {k for k, o in origin.items() if o == "tiny_runs"},
    }
    start = {r.key: decay_start(r.lrs) for r in runs}
    bands = {name: {k for k in origin if lo <= start[k] < hi} for lo, hi, name in DECAY_BANDS}
    paired = {t.key for t in warm}
    results = {}
    for rule in rules:
        t1 = time.time()
        res = results[rule.name] = measure(traces, rule)
        print(f"### {rule.name}\n")
        for name, keys in populations.items():
            if keys:
                print(table(name, cells(res, keys)) + "\n")
        if rule.grace == 0.0:
            by_band = {name: cells(res, keys) for name, keys in bands.items() if keys}
            print(decay_table(by_band, DEFAULT_CONFIDENCE) + "\n")
        print(f"({time.time() - t1:.0f} s)\n")
    print(f"### Runs with a finished sibling ({len(paired)}): cold, and warm from the sibling's prior\n")
    for rule in rules[1:3]:
        print(table(f"{rule.name}, cold", cells(results[rule.name], paired)) + "\n")
        print(table(f"{rule.name}, warm", cells(measure(warm, rule), paired)) + "\n")
    print("### New-user scenario\n")
    print(scenario(traces, [rules[0], before_rule(0.25), *rules[1:3]]) + "\n")
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
