"""Replay finished runs as hyper-parameter sweeps and compare early-stopping policies, without training.

A *sweep* is a group of runs that a user would compare: runs of one model and data set that differ in schedule,
length or LR ("by model and data"); runs that differ only in their peak LR ("LR sweeps"); runs that differ only in
model size ("size sweeps"). Replicates (same config, another seed) are kept once. Every run of a sweep is replayed
as if live, on a simulated clock measured in optimizer steps: ``--workers`` runs train at once (``0`` = all at
once), taken in a random order (``--orders`` orders per sweep); at each checkpoint the policy sees what a live run
would have seen so far and decides to stop the run or not. A stopped run frees its worker for the next one.

The forecasts come from the same replay as ``early_stop.py``: ``RunMonitor.flush`` at the adapters' cadence
(``stop_replay.py``), with the stop rule's features from the monitor. Checkpoints are the flushes that brought a
new forecast (at most ``--checkpoints`` per run, evenly spread), so that policies only read.

Policies compared in one run:

- ``before``: the rule as it was: ``P(final >= reference) >= 0.95`` under the forecast's normal distribution after
  a 10 % grace period, the reference being the best finished run or the best running forecast at its normal
  80 % quantile;
- ``calibrated``: :func:`scaleforecast.decision.decide_stop_among`, the measured-error rule against the measured-
  error reference, with the shipped error model (in sample) and cross-fitted (each run judged by the model
  learned without its fold of groups: out of sample); each run reads its own features, and the other runs'
  error scales as a registry whose records carry them would show them;
- ``optuna ForecastPruner``: the calibrated rule through Optuna: the reporter hears each forecast with the run's
  stop features, as the run monitor hands them, and stores both in the trial (the pruner and the other trials
  read them there); ``forecast only``: the same from bare forecasts (the error model's widest, fallback scale),
  as from a trial written without the run's record;
- ``median (raw)``, ``hyperband (raw)``: Optuna's MedianPruner and HyperbandPruner on the raw logged loss;
- ``nni curvefit``: an NNI-style, schedule-blind assessor (``a + b * t^-c`` fitted to the curve so far);
- ``oracle``: knows every run's final loss and stops each run that is not the sweep's best (or not within a gap
  of it) at its first checkpoint: the ceiling no policy can pass on these sweeps.

With workers, the calibrated rules are replayed again *warm*: a run that starts after a finished sibling of its
family (``stop_replay.warm_pairs``: same model, data and peak LR, another length or schedule) in its sweep
borrows that sibling's fit as its prior, as a sweep's later runs borrow from its finished ones (the live
forecaster pools every finished run of the family at the run's peak LR; the replay borrows from one fixed
sibling, and only once that sibling has finished in the replayed order).

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
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stop_replay import Run, Trace, all_runs, replay_all, warm_pairs

from scaleforecast.calibration import ErrorModel, load_error_model
from scaleforecast.decision import DEFAULT_CONFIDENCE, decide_stop_among, sweep_reference
from scaleforecast.evidence import StopFeatures
from scaleforecast.registry import RunRecord, RunState
from scaleforecast.results import FitStatus, Forecast, ForecastPoint

log = logging.getLogger("sweep_replay")

USABLE = (FitStatus.OK.value, FitStatus.ANNEALING_UNIDENTIFIED.value)
KINDS = {"model": "by model and data", "lr": "LR sweeps", "size": "size sweeps"}
NEAR = 0.001
"""A surviving run within this fraction of the true best final loss counts as "near best" (2.5x the
seed-to-seed spread of the final loss between replicate runs, 0.04 %)."""


# --------------------------------------------------------------------------------------------- traces
@dataclass
class RunTrace:
    """What a live run would have shown at each checkpoint, computed once.

    ``steps[k]``: checkpoint step (the last one is the run's end); ``raw[k]``: last logged loss at or before it;
    ``fc_loss/fc_std/fc_status``: the monitor's latest forecast of the final loss there; ``features[k]``: the
    stop rule's features of that forecast (the monitor's own); ``nni[k]``: the schedule-blind curve-fit
    extrapolation to the final step. ``final``: the run's true final loss.
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
    features: list[StopFeatures | None] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    warm: RunTrace | None = None
    """The same run replayed with the fit of ``meta["sibling"]``, a run of its family, as its prior."""

    def forecast(self, k: int, monitored: bool = False) -> Forecast | None:
        """The forecast at checkpoint ``k`` as a one-point :class:`Forecast` (None when it holds no number); with
        ``monitored``, carrying the run's stop features, as the run monitor hands it to its listeners."""
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
            stop_features=self.feature(k) if monitored else None,
        )

    def feature(self, k: int) -> StopFeatures | None:
        return None if self.features is None else self.features[k]


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


def run_trace(run: Run, trace: Trace, n_checkpoints: int) -> RunTrace | None:
    """The checkpoints of one replayed run: the flushes that brought a new forecast (at most ``n_checkpoints``,
    evenly spread), then the run's end."""
    first: dict[int, int] = {}
    for i, j in enumerate(trace.latest.tolist()):
        if j >= 0 and j not in first:
            first[j] = i
    flushes = sorted(first.values())
    last = len(trace.flush_steps) - 1
    flushes = [i for i in flushes if i < last]
    if not flushes:
        return None
    if len(flushes) > n_checkpoints:
        flushes = [flushes[int(k)] for k in np.linspace(0, len(flushes) - 1, n_checkpoints).round()]
    flushes = [*sorted(set(flushes)), last]
    n = len(flushes)
    steps = trace.flush_steps[flushes].astype(np.int64)
    raw, nni = np.full(n, np.nan), np.full(n, np.nan)
    fl, fs = np.full(n, np.nan), np.full(n, np.nan)
    status: list[str] = []
    feats: list[StopFeatures | None] = []
    for k, i in enumerate(flushes):
        j = int(trace.latest[i])
        upto = int(np.searchsorted(run.steps, steps[k], side="right"))
        raw[k] = run.loss[upto - 1]
        fl[k], fs[k] = trace.mean[j], trace.std[j]
        status.append(trace.status[j])
        feats.append(trace.features[j])
        nni[k] = _powerlaw_extrapolate(run.steps[:upto].astype(float), run.loss[:upto], float(run.total))
    return RunTrace(
        key=run.key,
        total_steps=run.total,
        final=run.final,
        steps=steps,
        raw=raw,
        fc_loss=fl,
        fc_std=fs,
        fc_status=status,
        nni=nni,
        features=feats,
        meta=dict(trace.meta),
    )


# --------------------------------------------------------------------------------------------- sweeps
@dataclass
class Sweep:
    """Runs a user would compare (see the module docstring)."""

    name: str
    runs: list[RunTrace]

    @property
    def best(self) -> int:
        return int(np.argmin([r.final for r in self.runs]))


_LR = re.compile(r"_lr[0-9.e-]+_")
_DIMS = re.compile(r"nlayers\d+_nhead\d+_?")
_TINY_DIMS = re.compile(r"_d\d+(?=_|$)")
_TINY_LR = re.compile(r"_lr[0-9.e+-]+(?=_|$)")


def sweep_key(run: Run, kind: str = "model") -> str | None:
    """The sweep ``run`` belongs to: ``model`` (same model and data), ``lr`` (everything but the peak LR equal)
    or ``size`` (everything but the model size equal); None when the run has no such sweep."""
    m = run.meta
    rid = m.get("run_id", run.key.split("/", 1)[-1])
    if run.source == "mpl_luo2025":
        size, rest = rid.split("_", 1)
        return {"model": f"mpl/{size}", "lr": None, "size": f"mpl/*_{rest}"}[kind]
    if run.source == "epfml_schaipp_haegele":
        data = (m.get("replicate") or "?").split("|")[0]
        rid = rid.removeprefix("grad_norm__")
        if kind == "model":
            return f"epfml/{m.get('model', '?')}/{data}"
        if kind == "lr":
            return f"epfml/{_LR.sub('_lr*_', rid)}"
        # the experiment prefix names the model size; what follows the architecture is the configuration
        tail = rid.split("llama_norm_", 1)[-1] if "llama_norm_" in rid else rid.split("llama_", 1)[-1]
        return f"epfml/{data}/{_DIMS.sub('', tail)}"
    if m.get("origin") == "curves_tiny":
        dims = _TINY_DIMS.search(rid)
        plain = _TINY_LR.sub("", _TINY_DIMS.sub("", rid))
        if kind == "model":
            return f"{run.source}/{dims.group(0) if dims else 'd64'}"
        if kind == "lr":
            return None if dims else f"{run.source}/{plain}"
        return f"{run.source}/{_TINY_DIMS.sub('', rid)}"
    if run.source.startswith("tiny") and "spec" in m:
        spec = dict(m["spec"])
        if not spec["name"].startswith("sweep_"):
            return None
        drop = {"model": ("name", "lr", "schedule", "steps"), "lr": ("name", "lr"), "size": ("name", "dim")}[
            kind
        ]
        return "tiny/" + "|".join(f"{k}={v}" for k, v in sorted(spec.items()) if k not in drop)
    return None


def make_sweeps(
    runs: Sequence[Run], traces: dict[str, RunTrace], *, kind: str = "model", min_runs: int = 3
) -> list[Sweep]:
    """Group the traced runs into sweeps of ``kind``, one run per replicate group, keeping >= ``min_runs``."""
    groups: dict[str, list[RunTrace]] = {}
    seen_rep: set[tuple[str, str]] = set()
    for r in sorted(runs, key=lambda r: r.key):
        key = sweep_key(r, kind)
        if key is None or r.key not in traces:
            continue
        rep = r.meta.get("replicate") or r.key
        if (key, rep) in seen_rep:
            continue
        seen_rep.add((key, rep))
        groups.setdefault(key, []).append(traces[r.key])
    return [Sweep(k, v) for k, v in sorted(groups.items()) if len(v) >= min_runs]


# -------------------------------------------------------------------------------------------- policies
class SweepView:
    """What a policy may look at: each run's state, latest checkpoint index and (when finished) final loss."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.runs = list(sweep.runs)  # the trace each run follows: cold, or warm once it borrowed
        n = len(sweep.runs)
        self.state = ["pending"] * n
        self.latest = [-1] * n

    def records(self, exclude: int, features: bool = True) -> list[RunRecord]:
        """The other runs as registry records (what a run would read from the shared registry: with
        ``features``, the stop features each running run published with its forecast)."""
        out = []
        for i, r in enumerate(self.runs):
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
                        step=int(r.steps[k]),
                        total_steps=r.total_steps,
                        loss=float(r.fc_loss[k]),
                        std=float(r.fc_std[k]),
                        status=r.fc_status[k],
                        updated=time.time(),
                        features=r.feature(k) if features else None,
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


def widen_forecast(forecast: Forecast | None, rel_std_floor: float) -> Forecast | None:
    """The forecast with every point's std widened to ``sqrt(std^2 + (rel_std_floor * loss)^2)``.

    The fit's own std measures the noise and the parameter uncertainty under the law; it does not measure the
    law's misfit to a given run, which on real curves is of the order of 1-3 % of the final loss mid-run. A
    relative floor stands for that model error in stopping decisions, where a false stop is costly. Intervals
    are widened by the same factor; ``rel_std_floor = 0`` returns the forecast unchanged.
    """
    if forecast is None or rel_std_floor <= 0:
        return forecast
    points = []
    for p in forecast.points:
        std = math.hypot(p.std, rel_std_floor * abs(p.loss))
        scale = std / p.std if p.std > 0 else None
        half_lo = (
            (p.loss - p.lower) * scale if scale else NormalDist().inv_cdf(0.5 + forecast.level / 2) * std
        )
        half_hi = (p.upper - p.loss) * scale if scale else half_lo
        points.append(p.model_copy(update={"std": std, "lower": p.loss - half_lo, "upper": p.loss + half_hi}))
    return forecast.model_copy(update={"points": points})


class ForecastRule(NoStop):
    """The rule as it was: ``P(final >= reference) >= confidence`` under the forecast's normal distribution after
    a grace period, against :func:`sweep_reference` at the normal ``quantile`` (std widened by ``rel_std_floor``)."""

    def __init__(
        self,
        confidence: float = 0.95,
        min_fraction: float = 0.1,
        quantile: float = 0.8,
        rel_std_floor: float = 0.0,
    ) -> None:
        self.confidence, self.min_fraction, self.quantile = confidence, min_fraction, quantile
        self.rel_std_floor = rel_std_floor
        self.name = f"before: normal rule (conf {confidence:g}, floor {100 * rel_std_floor:g} %)"

    def check(self, i: int, k: int) -> bool:
        run = self.view.runs[i]
        if run.steps[k] < int(self.min_fraction * run.total_steps) or run.fc_status[k] not in USABLE:
            return False
        reference = sweep_reference(
            self.view.records(i), quantile=self.quantile, rel_std_floor=self.rel_std_floor
        )
        forecast = widen_forecast(run.forecast(k), self.rel_std_floor)
        if reference is None or forecast is None or forecast.final is None:
            return False
        return forecast.prob_at_least(reference) >= self.confidence


class CalibratedRule(NoStop):
    """:func:`decide_stop_among` with the measured error model: ``model_of(run key)`` (the shipped one, or the
    one learned without the run's fold), fed the run's own features and the other runs' error scales, as a
    registry whose records carry them would (with ``forecast_only``: neither, only what a forecast carries)."""

    def __init__(
        self,
        name: str,
        model_of: Callable[[str], ErrorModel],
        confidence: float = DEFAULT_CONFIDENCE,
        quantile: float = 0.8,
        forecast_only: bool = False,
    ) -> None:
        self.name, self.model_of, self.confidence, self.quantile = name, model_of, confidence, quantile
        self.forecast_only = forecast_only

    def check(self, i: int, k: int) -> bool:
        run = self.view.runs[i]
        d = decide_stop_among(
            run.forecast(k),
            self.view.records(i, features=not self.forecast_only),
            step=int(run.steps[k]),
            total_steps=run.total_steps,
            confidence=self.confidence,
            quantile=self.quantile,
            features=None if self.forecast_only else run.feature(k),
            model=self.model_of(run.key),
        )
        return d.stop


class Oracle(NoStop):
    """Knows every final loss: stops, at its first checkpoint, each run more than ``gap`` above the sweep's best."""

    def __init__(self, gap: float = 0.0) -> None:
        self.gap = gap
        self.name = (
            "oracle (ceiling)" if gap == 0 else f"oracle, runs within {100 * gap:g} % of the best kept"
        )

    def check(self, i: int, k: int) -> bool:
        best = min(r.final for r in self.view.sweep.runs)
        return k == 0 and self.view.runs[i].final > (1.0 + self.gap) * best


class NNICurveFit(NoStop):
    """NNI CurvefittingAssessor-style: keep while ``predicted final < threshold * best completed final``."""

    def __init__(self, threshold: float = 1.0, min_fraction: float = 0.1) -> None:
        self.threshold, self.min_fraction = threshold, min_fraction
        self.name = f"nni curvefit (x{threshold:g})"

    def check(self, i: int, k: int) -> bool:
        run = self.view.runs[i]
        best = self.view.best_finished()
        pred = run.nni[k]
        if best is None or not math.isfinite(pred) or run.steps[k] < self.min_fraction * run.total_steps:
            return False
        return not pred < self.threshold * best


class OptunaPolicy(NoStop):
    """An Optuna pruner driving an in-memory study with the ask-and-tell interface, one trial per run.

    ``value="raw"`` reports the latest logged loss at the optimizer step; ``value="forecast"`` goes through
    :class:`scaleforecast.integrations.optuna.OptunaForecastReporter` (forecast final loss on the per-mille
    grid, forecast attributes for :class:`~scaleforecast.integrations.optuna.ForecastPruner`), with the run's
    stop features unless ``bare``.
    """

    def __init__(
        self, name: str, make_pruner: Callable[[Sweep], Any], value: str, n_grid: int, bare: bool = False
    ) -> None:
        self.name, self.make_pruner, self.value, self.n_grid = name, make_pruner, value, n_grid
        self.bare = bare

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
        run, trial = self.view.runs[i], self.trials[i]
        if self.value == "forecast":
            return self.reporters[i](int(run.steps[k]), run.forecast(k, monitored=not self.bare))
        if not math.isfinite(run.raw[k]):
            return False
        trial.report(float(run.raw[k]), int(run.steps[k]))
        return trial.should_prune()

    def end(self, i: int, finished: bool) -> None:
        import optuna

        if finished:
            self.study.tell(self.trials[i], self.view.runs[i].final)
        else:
            self.study.tell(self.trials[i], state=optuna.trial.TrialState.PRUNED)


def default_policies(
    n_grid: int, shipped: ErrorModel | None = None, cross_fitted: dict[str, ErrorModel] | None = None
) -> list[Policy]:
    """The policies of the report: the rule before, the calibrated rule, the others, the oracle."""
    import optuna
    from scaleforecast.integrations.optuna import ForecastPruner

    def max_total(s: Sweep) -> int:
        return max(r.total_steps for r in s.runs)

    shipped = shipped or load_error_model()
    folds = cross_fitted or {}
    policies: list[Policy] = [
        NoStop(),
        ForecastRule(confidence=0.95),
        CalibratedRule(f"calibrated (conf {DEFAULT_CONFIDENCE:g}, shipped model)", lambda key: shipped),
    ]
    if folds:
        policies += [
            CalibratedRule(
                f"calibrated (conf {DEFAULT_CONFIDENCE:g}, cross-fitted)", lambda key: folds.get(key, shipped)
            ),
            CalibratedRule("calibrated (conf 0.95, cross-fitted)", lambda key: folds.get(key, shipped), 0.95),
            CalibratedRule("calibrated (conf 0.9, cross-fitted)", lambda key: folds.get(key, shipped), 0.9),
        ]
    policies += [
        OptunaPolicy(
            "optuna ForecastPruner (calibrated)",
            lambda s: ForecastPruner(min_fraction=0.0),
            "forecast",
            n_grid,
        ),
        OptunaPolicy(
            "optuna ForecastPruner (calibrated, forecast only)",
            lambda s: ForecastPruner(min_fraction=0.0),
            "forecast",
            n_grid,
            bare=True,
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
        NNICurveFit(threshold=1.0),
        Oracle(0.0),
        Oracle(0.01),
    ]
    return policies


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


def replay(sweep: Sweep, policy: Policy, order: Sequence[int], workers: int, warm: bool = False) -> Outcome:
    """Replay ``sweep`` under ``policy``: ``workers`` runs at once (0 = all), started in ``order``.

    The clock counts optimizer steps (all runs train at the same speed). Events at one instant are taken in
    start order. A run's last checkpoint is its end: it finishes there, so the policy cannot stop it then.
    With ``warm``, a run that starts after the sibling of its warm trace finished (ran to its end) in this
    sweep follows that trace: it borrows the sibling's fit as its prior, as a sweep's later runs do.
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
            w = sweep.runs[i].warm if warm else None
            if w is not None and any(
                r.key == w.meta["sibling"] and view.state[j] == "finished" for j, r in enumerate(sweep.runs)
            ):
                view.runs[i] = w
            t0[i] = now
            policy.start(i)
            heapq.heappush(heap, (now + int(view.runs[i].steps[0]), seq, i, 0))
            seq += 1

    launch(0)
    while heap:
        now, _, i, k = heapq.heappop(heap)
        run = view.runs[i]
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
    sweeps: Sequence[Sweep],
    policies: Sequence[Policy],
    *,
    workers: int,
    orders: int,
    seed: int = 0,
    warm: bool = False,
) -> list[Summary]:
    """Every policy on every sweep in ``orders`` random start orders (the same orders for every policy)."""
    rng = np.random.default_rng(seed)
    plan = [(s, [list(rng.permutation(len(s.runs))) for _ in range(orders)]) for s in sweeps]
    out = []
    for policy in policies:
        outcomes = [replay(s, policy, order, workers, warm) for s, ords in plan for order in ords]
        out.append(summarise(policy.name + (", warm" if warm else ""), outcomes))
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
    ap.add_argument("--checkpoints", type=int, default=40, help="decision points per run (default 40)")
    ap.add_argument("--orders", type=int, default=5, help="random start orders per sweep (default 5)")
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[0, 4], help="concurrent runs (0 = all at once)"
    )
    ap.add_argument("--min-runs", type=int, default=2, help="smallest sweep replayed (default 2)")
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS), help="sweep groupings")
    ap.add_argument(
        "--cache", default=None, help="folder to cache the replayed traces in (keyed by data + code)"
    )
    ap.add_argument("--no-cross-fit", action="store_true", help="judge with the shipped error model only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore")
    logging.getLogger("scaleforecast").setLevel(logging.ERROR)

    t_start = time.time()
    runs = all_runs(args.root)
    replayed = replay_all(runs, cache=args.cache)
    pairs = warm_pairs(runs, args.root)
    replayed_warm = replay_all([r for r, _ in pairs], cache=args.cache, siblings=[s for _, s in pairs])
    by_key = {r.key: r for r in runs}
    traces = {}
    for t in replayed:
        rt = run_trace(by_key[t.key], t, args.checkpoints)
        if rt is not None:
            traces[t.key] = rt
    for t in replayed_warm:
        if t.key in traces:
            traces[t.key].warm = run_trace(by_key[t.key], t, args.checkpoints)
    folds = {}
    if not args.no_cross_fit:
        from early_stop import cross_fitted_models

        folds = cross_fitted_models(replayed)
    t_traced = time.time()
    policies = default_policies(args.checkpoints, cross_fitted=folds)
    print(
        f"replayed {len(traces)} runs in {t_traced - t_start:.1f} s (<= {args.checkpoints} checkpoints each)\n"
    )
    print("### Forecast error against the reported std, all replayed runs\n")
    print(calibration(list(traces.values())) + "\n")
    for kind in args.kinds:
        title = KINDS[kind]
        sweeps = make_sweeps(runs, traces, kind=kind, min_runs=args.min_runs)
        if not sweeps:
            continue
        n_runs = sum(len(s.runs) for s in sweeps)
        print(f"### Headroom: {len(sweeps)} {title}\n\n{headroom(sweeps)}\n")
        for w in args.workers:
            t0 = time.time()
            rows = run_benchmark(sweeps, policies, workers=w, orders=args.orders, seed=args.seed)
            who = "all runs at once" if w <= 0 else f"{w} workers"
            if w > 0:
                calibrated = [p for p in policies if isinstance(p, CalibratedRule)]
                rows += run_benchmark(
                    sweeps, calibrated, workers=w, orders=args.orders, seed=args.seed, warm=True
                )
            print(table(f"{len(sweeps)} {title} ({n_runs} runs), {who}, {args.orders} orders", rows))
            print(f"({time.time() - t0:.1f} s)\n")
    print(f"total {time.time() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
