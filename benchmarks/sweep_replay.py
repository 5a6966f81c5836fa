"""Replay the real curves as hyper-parameter sweeps and compare early-stopping policies, without training.

A *sweep* is a group of runs with the same model and data that differ in schedule, length or LR (e.g. the
epfml runs of one model size and dataset). Replicates (same config, another seed) are kept once. Every run of
a sweep is replayed as if live, on a simulated clock measured in optimizer steps: ``--workers`` runs train at
once (``0`` = all at once), taken in a random order (``--orders`` orders per sweep); at each checkpoint (every
``1 / --checkpoints`` of the run) the policy sees what a live run would have seen so far and decides to stop
the run or not. A stopped run frees its worker for the next one.

The forecast at each checkpoint comes from :class:`scaleforecast.forecaster.OnlineForecaster` fed the curve up
to that step (computed once per run and checkpoint; policies only read it), so the whole replay takes a few
minutes on two cores.

Policies compared in one run:

- ``forecast rule``: this project's rule, :func:`scaleforecast.decision.decide_stop` against
  :func:`scaleforecast.decision.sweep_reference` (best finished run, or best confident running forecast);
- ``optuna ForecastPruner``: the same rule through Optuna (the study as registry; a consistency check);
- ``median (raw)``, ``hyperband (raw)``: Optuna's MedianPruner and HyperbandPruner on the raw logged loss,
  reported at the optimizer step (how they are used today);
- ``median (forecast)``, ``hyperband (forecast)``: the same pruners on the forecast final loss, reported on the
  per-mille progress grid of :class:`scaleforecast.integrations.optuna.OptunaForecastReporter`;
- ``nni curvefit``: an NNI-style, schedule-blind assessor: fit ``a + b * t^-c`` to the curve so far, keep the
  run while ``predicted final < threshold * best completed final``.

Reported per policy: the fraction of all steps saved, how often the sweep's true best run survives to the end,
and the regret (final loss of the best surviving run minus the true best). Target: >= 50 % steps saved while
keeping the true best in >= 95 % of the sweeps.

Run: ``python benchmarks/sweep_replay.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import Curve, load_curves

from scaleforecast.decision import decide_stop, sweep_reference, widen_forecast
from scaleforecast.forecaster import OnlineForecaster
from scaleforecast.registry import RunRecord, RunState
from scaleforecast.results import FitStatus, Forecast, ForecastPoint

log = logging.getLogger("sweep_replay")

USABLE = (FitStatus.OK.value, FitStatus.ANNEALING_UNIDENTIFIED.value)
NEAR = 0.001
"""A surviving run within this fraction of the true best final loss counts as "near best" (2.5x the
seed-to-seed spread of the final loss between replicate runs, 0.04 %)."""


# --------------------------------------------------------------------------------------------- traces
@dataclass
class RunTrace:
    """What a live run would have shown at each checkpoint, computed once.

    ``steps[k]``: checkpoint step; ``raw[k]``: last logged loss at or before it; ``fc_loss/fc_std/fc_status``:
    the forecast made there of the loss at the last logged step (the run's end, or up to 200 steps before it
    where the source stopped logging earlier); ``nni[k]``: the schedule-blind curve-fit extrapolation to the
    same step. ``final``: the run's true final loss (last logged value of the column).
    """

    key: str
    total_steps: int
    final: float
    steps: np.ndarray
    raw: np.ndarray
    fc_loss: np.ndarray
    fc_std: np.ndarray
    fc_status: list[str]
    nni: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def forecast(self, k: int) -> Forecast | None:
        """The forecast at checkpoint ``k`` as a one-point :class:`Forecast` (None when it holds no number)."""
        loss, std = float(self.fc_loss[k]), float(self.fc_std[k])
        if not (math.isfinite(loss) and math.isfinite(std)):
            return None
        point = ForecastPoint(step=self.total_steps, loss=loss, lower=loss - std, upper=loss + std, std=std)
        return Forecast(
            law="tissue",
            level=0.8,
            fitted_at_step=int(self.steps[k]),
            final_step=self.total_steps,
            points=[point],
            params=None,
            n_points=0,
            status=FitStatus(self.fc_status[k]),
        )


def _powerlaw_extrapolate(t: np.ndarray, y: np.ndarray, t_final: float) -> float:
    """NNI-style schedule-blind curve fit: least squares ``y = a + b * t^-c`` (c > 0), value at ``t_final``."""
    from scipy.optimize import curve_fit

    if len(t) < 6:
        return math.nan
    scale = float(t[-1])
    x = t / scale

    def f(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
        return a + b * np.power(x, -c)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(
                f, x, y, p0=(float(y[-1]) * 0.95, float(y[-1]) * 0.05, 0.5),
                bounds=([0.0, 0.0, 1e-3], [np.inf, np.inf, 5.0]), maxfev=2000,
            )  # fmt: skip
    except (RuntimeError, ValueError):
        return math.nan
    return float(f(np.array([t_final / scale]), *p)[0])


def trace_run(curve: Curve, n_checkpoints: int, column: str | None = None) -> RunTrace | None:
    """Replay one curve through the online forecaster and the curve-fit assessor at each checkpoint."""
    steps, y = curve.column(column)
    keep = (steps >= 1) & (steps <= len(curve.lrs))
    steps, y = steps[keep], y[keep]
    total = min(int(curve.total_steps), len(curve.lrs))
    if len(steps) < 10:
        return None
    ckpts = np.unique(np.clip((np.arange(1, n_checkpoints + 1) * total) // n_checkpoints, 1, total))
    last = int(steps[-1])
    fc = OnlineForecaster(curve.lrs[:total])
    raw = np.full(len(ckpts), np.nan)
    fl, fs = np.full(len(ckpts), np.nan), np.full(len(ckpts), np.nan)
    status: list[str] = []
    nni = np.full(len(ckpts), np.nan)
    seen = 0
    for k, c in enumerate(ckpts):
        upto = int(np.searchsorted(steps, c, side="right"))
        if upto > seen:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fc.observe_many(steps[seen:upto], y[seen:upto])
            seen = upto
        if seen == 0:
            status.append(FitStatus.INSUFFICIENT_DATA.value)
            continue
        raw[k] = y[seen - 1]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                f = fc.refit()
        except Exception as exc:  # a failing fit is a forecast that holds no number, as in a live run
            log.debug("fit failed on %s at %d: %s", curve.key, c, exc)
            status.append(FitStatus.FAILED.value)
            continue
        status.append(f.status.value)
        # The truth is the last *logged* loss (epfml logs val 200 steps before the end), so the forecast is
        # read at that step: comparing a forecast at the final step with it would be off by the last
        # stretch of the cooldown.
        at_last = fc.forecast(steps=[last]) if f.ok else None
        if at_last is not None and at_last.points:
            fl[k], fs[k] = at_last.points[0].loss, at_last.points[0].std
        nni[k] = _powerlaw_extrapolate(steps[:seen].astype(float), y[:seen], float(last))
    return RunTrace(
        key=curve.key,
        total_steps=total,
        final=float(y[-1]),
        steps=ckpts,
        raw=raw,
        fc_loss=fl,
        fc_std=fs,
        fc_status=status,
        nni=nni,
        meta={"shape": curve.shape, "peak_lr": curve.peak_lr},
    )


# --------------------------------------------------------------------------------------------- sweeps
@dataclass
class Sweep:
    """Runs of one model and data set that differ in schedule, length or LR."""

    name: str
    runs: list[RunTrace]

    @property
    def best(self) -> int:
        return int(np.argmin([r.final for r in self.runs]))


def sweep_key(curve: Curve, by_length: bool = False) -> str | None:
    """The sweep a curve belongs to: source, model and data set (and length with ``by_length``)."""
    if curve.folder == "mpl_luo2025":
        base = f"mpl/{curve.run_id.split('_', 1)[0]}"
    elif curve.folder == "epfml_schaipp_haegele":
        data = (curve.replicate_group or "?").split("|")[0]
        base = f"epfml/{curve.meta.get('model', '?')}/{data}"
    else:
        return None
    return f"{base}/T={curve.total_steps}" if by_length else base


def make_sweeps(
    curves: Sequence[Curve], traces: dict[str, RunTrace], *, by_length: bool = False, min_runs: int = 3
) -> list[Sweep]:
    """Group the traced curves into sweeps, one run per replicate group, keeping sweeps of >= ``min_runs``."""
    groups: dict[str, list[RunTrace]] = {}
    seen_rep: set[tuple[str, str]] = set()
    for c in sorted(curves, key=lambda c: c.key):
        key = sweep_key(c, by_length)
        if key is None or c.key not in traces:
            continue
        rep = c.replicate_group or c.key
        if (key, rep) in seen_rep:
            continue
        seen_rep.add((key, rep))
        groups.setdefault(key, []).append(traces[c.key])
    return [Sweep(k, v) for k, v in sorted(groups.items()) if len(v) >= min_runs]


# -------------------------------------------------------------------------------------------- policies
class SweepView:
    """What a policy may look at: each run's state, latest checkpoint index and (when finished) final loss."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        n = len(sweep.runs)
        self.state = ["pending"] * n
        self.latest = [-1] * n

    def records(self, exclude: int) -> list[RunRecord]:
        """The other runs as registry records (what a run would read from the shared registry)."""
        out = []
        for i, r in enumerate(self.sweep.runs):
            if i == exclude or self.state[i] == "pending":
                continue
            k = self.latest[i]
            if self.state[i] == "finished":
                out.append(RunRecord(sweep="", run_id=str(i), state=RunState.FINISHED, final_loss=r.final))
            elif self.state[i] == "stopped":
                out.append(RunRecord(sweep="", run_id=str(i), state=RunState.STOPPED))
            elif k >= 0 and math.isfinite(r.fc_loss[k]):
                out.append(
                    RunRecord(
                        sweep="",
                        run_id=str(i),
                        loss=float(r.fc_loss[k]),
                        std=float(r.fc_std[k]),
                        status=r.fc_status[k],
                        updated=time.time(),
                    )
                )
        return out

    def best_finished(self) -> float | None:
        done = [r.final for i, r in enumerate(self.sweep.runs) if self.state[i] == "finished"]
        return min(done) if done else None


class Policy(Protocol):
    """A stopping policy driven by the replay engine."""

    name: str

    def begin(self, view: SweepView) -> None: ...
    def start(self, i: int) -> None: ...
    def check(self, i: int, k: int) -> bool: ...
    def end(self, i: int, finished: bool) -> None: ...


class NoStop:
    """The baseline: every run trains to the end."""

    name = "no stopping"

    def begin(self, view: SweepView) -> None:
        self.view = view

    def start(self, i: int) -> None:
        pass

    def check(self, i: int, k: int) -> bool:
        return False

    def end(self, i: int, finished: bool) -> None:
        pass


class ForecastRule(NoStop):
    """This project's rule: ``decide_stop`` against ``sweep_reference`` of the other runs."""

    def __init__(
        self,
        confidence: float = 0.95,
        min_fraction: float = 0.1,
        quantile: float = 0.8,
        rel_std_floor: float = 0.0,
    ) -> None:
        self.confidence, self.min_fraction, self.quantile = confidence, min_fraction, quantile
        self.rel_std_floor = rel_std_floor
        self.name = f"forecast rule (conf {confidence:g}, floor {100 * rel_std_floor:g} %)"

    def check(self, i: int, k: int) -> bool:
        run = self.view.sweep.runs[i]
        reference = sweep_reference(
            self.view.records(i), quantile=self.quantile, rel_std_floor=self.rel_std_floor
        )
        d = decide_stop(
            widen_forecast(run.forecast(k), self.rel_std_floor),
            reference,
            step=int(run.steps[k]),
            total_steps=run.total_steps,
            confidence=self.confidence,
            min_fraction=self.min_fraction,
        )
        return d.stop


class NNICurveFit(NoStop):
    """NNI CurvefittingAssessor-style: keep while ``predicted final < threshold * best completed final``."""

    def __init__(self, threshold: float = 1.0, min_fraction: float = 0.1) -> None:
        self.threshold, self.min_fraction = threshold, min_fraction
        self.name = f"nni curvefit (x{threshold:g})"

    def check(self, i: int, k: int) -> bool:
        run = self.view.sweep.runs[i]
        best = self.view.best_finished()
        pred = run.nni[k]
        if best is None or not math.isfinite(pred) or run.steps[k] < self.min_fraction * run.total_steps:
            return False
        return not pred < self.threshold * best


class OptunaPolicy(NoStop):
    """An Optuna pruner driving an in-memory study with the ask-and-tell interface, one trial per run.

    ``value="raw"`` reports the latest logged loss at the optimizer step; ``value="forecast"`` goes through
    :class:`scaleforecast.integrations.optuna.OptunaForecastReporter` (forecast final loss on the per-mille
    grid, forecast attributes for :class:`~scaleforecast.integrations.optuna.ForecastPruner`).
    """

    def __init__(self, name: str, make_pruner: Callable[[Sweep], Any], value: str, n_grid: int) -> None:
        self.name, self.make_pruner, self.value, self.n_grid = name, make_pruner, value, n_grid

    def begin(self, view: SweepView) -> None:
        import optuna

        self.view = view
        self.study = optuna.create_study(pruner=self.make_pruner(view.sweep))
        self.trials: dict[int, Any] = {}
        self.reporters: dict[int, Any] = {}

    def start(self, i: int) -> None:
        from scaleforecast.integrations.optuna import OptunaForecastReporter

        trial = self.study.ask()
        self.trials[i] = trial
        self.reporters[i] = OptunaForecastReporter(trial, n_grid=self.n_grid)

    def check(self, i: int, k: int) -> bool:
        run, trial = self.view.sweep.runs[i], self.trials[i]
        if self.value == "forecast":
            return self.reporters[i](int(run.steps[k]), run.forecast(k))
        if not math.isfinite(run.raw[k]):
            return False
        trial.report(float(run.raw[k]), int(run.steps[k]))
        return trial.should_prune()

    def end(self, i: int, finished: bool) -> None:
        import optuna

        if finished:
            self.study.tell(self.trials[i], self.view.sweep.runs[i].final)
        else:
            self.study.tell(self.trials[i], state=optuna.trial.TrialState.PRUNED)


def default_policies(n_grid: int) -> list[Policy]:
    """The policies of the report, the project's rule first."""
    import optuna
    from scaleforecast.integrations.optuna import ForecastPruner

    def max_total(s: Sweep) -> int:
        return max(r.total_steps for r in s.runs)

    return [
        NoStop(),
        ForecastRule(confidence=0.95),
        ForecastRule(confidence=0.95, rel_std_floor=0.01),
        ForecastRule(confidence=0.95, rel_std_floor=0.015),
        OptunaPolicy(
            "optuna ForecastPruner (floor 1.5 %)",
            lambda s: ForecastPruner(confidence=0.95, rel_std_floor=0.015),
            "forecast",
            n_grid,
        ),
        OptunaPolicy(
            "median (raw)",
            lambda s: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=max_total(s) // 10),
            "raw",
            n_grid,
        ),
        OptunaPolicy(
            "hyperband (raw)",
            lambda s: optuna.pruners.HyperbandPruner(
                min_resource=max(1, max_total(s) // 10), max_resource=max_total(s), reduction_factor=3
            ),
            "raw",
            n_grid,
        ),
        OptunaPolicy(
            "median (forecast)",
            lambda s: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=100),
            "forecast",
            n_grid,
        ),
        OptunaPolicy(
            "hyperband (forecast)",
            lambda s: optuna.pruners.HyperbandPruner(min_resource=100, max_resource=1000, reduction_factor=3),
            "forecast",
            n_grid,
        ),
        NNICurveFit(threshold=1.0),
        NNICurveFit(threshold=1.02),
    ]


def calibration(traces: Sequence[RunTrace], fractions: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 0.9)) -> str:
    """How far the forecasts are from the truth, against the std they report, by progress (markdown).

    Columns: median and 80th percentile of ``|forecast - final| / final``; median reported ``std / final``;
    the share of finals inside the forecast's central 80 % band (``|z| < 1.2816``; 80 % if calibrated).
    """
    lines = [
        "| progress | median rel. error | p80 rel. error | median rel. std | inside 80 % band |",
        "|---|---|---|---|---|",
    ]
    for f in fractions:
        err, std, inside = [], [], []
        for t in traces:
            k = int(np.searchsorted(t.steps, f * t.total_steps))
            if k >= len(t.steps) or not (math.isfinite(t.fc_loss[k]) and math.isfinite(t.fc_std[k])):
                continue
            e = abs(t.fc_loss[k] - t.final)
            err.append(e / t.final)
            std.append(t.fc_std[k] / t.final)
            inside.append(e < 1.2816 * t.fc_std[k])
        if err:
            lines.append(
                f"| {100 * f:.0f} % | {100 * np.median(err):.2f} % | {100 * np.quantile(err, 0.8):.2f} % | "
                f"{100 * np.median(std):.3f} % | {100 * np.mean(inside):.0f} % |"
            )
    return "\n".join(lines)


def headroom(sweeps: Sequence[Sweep], gaps: Sequence[float] = (0.005, 0.01, 0.02, 0.05)) -> str:
    """What any policy could save at best: the share of all steps spent in runs whose final loss is more
    than ``gap`` above their sweep's best (an oracle that stops exactly those runs at step 0 saves that much;
    a run closer to the best than the forecast error cannot be stopped early with confidence)."""
    total = sum(r.total_steps for s in sweeps for r in s.runs)
    lines = [
        "| final loss above the sweep's best by more than | share of runs | share of steps |",
        "|---|---|---|",
    ]
    n = sum(len(s.runs) for s in sweeps)
    for g in gaps:
        worse = [r for s in sweeps for r in s.runs if r.final > (1.0 + g) * min(x.final for x in s.runs)]
        lines.append(
            f"| {100 * g:g} % | {100 * len(worse) / n:.0f} % | "
            f"{100 * sum(r.total_steps for r in worse) / total:.0f} % |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- engine
@dataclass
class Outcome:
    """One replayed sweep under one policy."""

    steps_used: int
    steps_total: int
    best_survived: bool
    regret: float
    stopped: int
    true_best: float = 0.0


def replay(sweep: Sweep, policy: Policy, order: Sequence[int], workers: int) -> Outcome:
    """Replay ``sweep`` under ``policy``: ``workers`` runs at once (0 = all), started in ``order``.

    The clock counts optimizer steps (all runs train at the same speed). Events at one instant are taken in
    start order. A run's last checkpoint is its end: it finishes there, so the policy cannot stop it then.
    """
    view = SweepView(sweep)
    policy.begin(view)
    pending = list(order)
    heap: list[tuple[int, int, int, int]] = []  # (time, seq, run, checkpoint)
    t0: dict[int, int] = {}
    used = [0] * len(sweep.runs)
    seq = 0
    slots = len(pending) if workers <= 0 else workers

    def launch(now: int) -> None:
        nonlocal seq
        while pending and sum(s == "running" for s in view.state) < slots:
            i = pending.pop(0)
            view.state[i] = "running"
            t0[i] = now
            policy.start(i)
            heapq.heappush(heap, (now + int(sweep.runs[i].steps[0]), seq, i, 0))
            seq += 1

    launch(0)
    while heap:
        now, _, i, k = heapq.heappop(heap)
        run = sweep.runs[i]
        view.latest[i] = k
        used[i] = int(run.steps[k])
        if k == len(run.steps) - 1:
            view.state[i] = "finished"
            policy.end(i, True)
            launch(now)
            continue
        if policy.check(i, k):
            view.state[i] = "stopped"
            policy.end(i, False)
            launch(now)
            continue
        heapq.heappush(heap, (t0[i] + int(run.steps[k + 1]), seq, i, k + 1))
        seq += 1
    survivors = [r.final for i, r in enumerate(sweep.runs) if view.state[i] == "finished"]
    true_best = min(r.final for r in sweep.runs)
    regret = (min(survivors) - true_best) if survivors else math.inf
    return Outcome(
        steps_used=sum(used),
        steps_total=sum(r.total_steps for r in sweep.runs),
        best_survived=view.state[sweep.best] == "finished",
        regret=regret,
        stopped=sum(s == "stopped" for s in view.state),
        true_best=true_best,
    )


@dataclass
class Summary:
    """A policy's results over all replayed sweeps."""

    policy: str
    n: int
    saved: float
    best_kept: float
    near_best_kept: float
    mean_regret: float
    max_regret: float

    def row(self) -> str:
        return (
            f"| {self.policy} | {100 * self.saved:.1f} % | {100 * self.best_kept:.1f} % | "
            f"{100 * self.near_best_kept:.1f} % | {self.mean_regret:.4f} | {self.max_regret:.4f} |"
        )


def summarise(name: str, outcomes: list[Outcome]) -> Summary:
    """Steps saved over all sweeps pooled; the best-run survival and the regret per replayed sweep."""
    used = sum(o.steps_used for o in outcomes)
    total = sum(o.steps_total for o in outcomes)
    regrets = [o.regret for o in outcomes]
    return Summary(
        policy=name,
        n=len(outcomes),
        saved=1.0 - used / total if total else 0.0,
        best_kept=float(np.mean([o.best_survived for o in outcomes])) if outcomes else 0.0,
        near_best_kept=float(np.mean([o.regret <= NEAR * o.true_best for o in outcomes]))
        if outcomes
        else 0.0,
        mean_regret=float(np.mean(regrets)) if regrets else 0.0,
        max_regret=float(np.max(regrets)) if regrets else 0.0,
    )


def run_benchmark(
    sweeps: Sequence[Sweep], policies: Sequence[Policy], *, workers: int, orders: int, seed: int = 0
) -> list[Summary]:
    """Every policy on every sweep in ``orders`` random start orders (the same orders for every policy)."""
    rng = np.random.default_rng(seed)
    plan = [(s, [list(rng.permutation(len(s.runs))) for _ in range(orders)]) for s in sweeps]
    out = []
    for policy in policies:
        outcomes = [replay(s, policy, order, workers) for s, ords in plan for order in ords]
        out.append(summarise(policy.name, outcomes))
    return out


def table(title: str, rows: Sequence[Summary]) -> str:
    """A markdown table of the summaries."""
    head = [
        f"### {title}",
        "",
        "| policy | steps saved | true best kept | best kept within 0.1 % | mean regret | max regret |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + [r.row() for r in rows])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="curves folder (default: ../shared/curves)")
    ap.add_argument("--checkpoints", type=int, default=20, help="decision points per run (default 20)")
    ap.add_argument("--orders", type=int, default=5, help="random start orders per sweep (default 5)")
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[0, 4], help="concurrent runs (0 = all at once)"
    )
    ap.add_argument("--column", default=None, help="loss column (default: val_loss when logged, else train)")
    ap.add_argument("--min-runs", type=int, default=3, help="smallest sweep replayed (default 3)")
    ap.add_argument("--by-length", action="store_true", help="also split sweeps by run length")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    logging.getLogger("scaleforecast").setLevel(logging.ERROR)

    t_start = time.time()
    curves = load_curves(args.root)
    traces = {}
    for c in curves:
        if sweep_key(c) is None:
            continue
        tr = trace_run(c, args.checkpoints, args.column)
        if tr is not None:
            traces[c.key] = tr
    t_traced = time.time()
    groupings = [("by model and data", False)] + (
        [("by model, data and length", True)] if args.by_length else []
    )
    policies = default_policies(args.checkpoints)
    print(f"traced {len(traces)} runs in {t_traced - t_start:.1f} s ({args.checkpoints} checkpoints each)\n")
    print("### Forecast error against the reported std, all traced runs\n")
    print(calibration(list(traces.values())) + "\n")
    for title, by_length in groupings:
        sweeps = make_sweeps(curves, traces, by_length=by_length, min_runs=args.min_runs)
        n_runs = sum(len(s.runs) for s in sweeps)
        print(f"### Headroom: {len(sweeps)} sweeps {title}\n\n{headroom(sweeps)}\n")
        for w in args.workers:
            t0 = time.time()
            rows = run_benchmark(sweeps, policies, workers=w, orders=args.orders, seed=args.seed)
            who = "all runs at once" if w <= 0 else f"{w} workers"
            print(table(f"{len(sweeps)} sweeps {title} ({n_runs} runs), {who}, {args.orders} orders", rows))
            print(f"({time.time() - t0:.1f} s)\n")
    print(f"total {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
