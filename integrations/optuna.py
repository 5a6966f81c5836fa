"""Optuna: report the forecast final loss of each trial, and prune trials whose forecast cannot win.

Two pieces, usable separately:

- :class:`OptunaForecastReporter` is a listener of the training adapters (``LossForecast``,
  ``HFLossForecast``, ``LossForecastSession``). At each refit it stores the trial's latest forecast (mean, std, fit status)
  in the trial's user attributes and, each time the run crosses a point of a progress grid, calls
  ``trial.report(forecast_final_loss, step=progress_per_mille)``. The grid is in per mille of the trial's own
  total steps, so it is the same across trials even when their lengths differ, and any Optuna pruner can
  compare trials rung by rung. It returns True when the trial should stop; the adapter then stops training
  gracefully and the objective calls :meth:`OptunaForecastReporter.raise_if_pruned` after ``fit``.
- :class:`ForecastPruner` is a pruner that applies :func:`scaleforecast.decision.decide_stop` to the trial's
  latest forecast against the best of the study's *other* trials (completed values, and running trials'
  confident forecasts): the study, wherever its storage lives (in memory, SQLite, any RDB URL shared by many
  machines), is the sweep registry. :class:`OptunaRegistry` exposes the study as a
  :class:`scaleforecast.registry.RunRegistry`.

With the training adapters, pass the reporter as a listener: ``LossForecast(listeners=[reporter])`` (it
implements :class:`scaleforecast.monitor.Listener` and is called right after each refit); a pruning decision
becomes a critical ``early_stop`` event, which stops training gracefully on every rank. The objective should
return the same quantity that is forecast (the final training loss, e.g. ``reporter.final_loss``), so that
completed trials and forecasts are comparable. Under DDP the reporter talks
to Optuna on global rank 0 only and runs no collective of its own: the adapters agree on its decision.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from scaleforecast.decision import (
    DEFAULT_CONFIDENCE,
    ForecastStopCheck,
    check_probability,
    decide_stop_among,
    too_vague,
)
from scaleforecast.events import Event
from scaleforecast.registry import RunRecord, RunRegistry, RunState
from scaleforecast.results import FitStatus, Forecast, ForecastPoint, StopFeatures

__all__ = [
    "FORECAST_ATTR",
    "PRUNED_ATTR",
    "ForecastPruner",
    "OptunaForecastReporter",
    "OptunaRegistry",
    "forecast_from_attrs",
]

log = logging.getLogger(__name__)

FORECAST_ATTR = "scaleforecast.forecast"
"""User-attribute key holding a trial's latest forecast: ``{step, total_steps, loss, std, status, time}``, and
``features`` (its :class:`scaleforecast.results.StopFeatures`) when the forecast carries them."""
PRUNED_ATTR = "scaleforecast.pruned"
"""User-attribute key saying why a pruned trial was pruned (its pruner's decision)."""

GRID_SCALE = 1000
"""Reported steps are in per mille of the trial's total steps."""


def forecast_from_attrs(attrs: dict[str, Any]) -> Forecast | None:
    """Rebuild a one-point :class:`Forecast` (the final step) from a trial's :data:`FORECAST_ATTR` entry, with
    the run's stop features when the entry carries them."""
    try:
        loss, std = float(attrs["loss"]), float(attrs["std"])
        final_step = int(attrs["total_steps"])
        status = FitStatus(attrs["status"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(loss) and math.isfinite(std)):
        return None
    point = ForecastPoint(step=final_step, loss=loss, lower=loss - std, upper=loss + std, std=max(std, 0.0))
    return Forecast(
        law=str(attrs.get("law", "tissue")),
        level=0.8,
        fitted_at_step=int(attrs.get("step", 0)),
        final_step=final_step,
        points=[point],
        params=None,
        n_points=int(attrs.get("n_points", 0)),
        status=status,
        stop_features=_features(attrs),
    )


def _trial_record(t: FrozenTrial, sweep: str) -> RunRecord:
    attrs = t.user_attrs.get(FORECAST_ATTR) or {}
    base: dict[str, Any] = {
        "sweep": sweep,
        "run_id": str(t.number),
        "step": int(attrs.get("step", 0)),
        "total_steps": attrs.get("total_steps"),
        "loss": attrs.get("loss"),
        "std": attrs.get("std"),
        "status": attrs.get("status"),
        "features": _features(attrs),
        "updated": float(attrs.get("time", 0.0)),
    }
    if t.state == TrialState.COMPLETE:
        value = t.value if t.values is not None and len(t.values) == 1 else None
        final = float(value) if value is not None and math.isfinite(value) else None
        return RunRecord(**base, state=RunState.FINISHED, final_loss=final)
    if t.state in (TrialState.RUNNING, TrialState.WAITING):
        return RunRecord(**base, state=RunState.RUNNING)
    return RunRecord(**base, state=RunState.STOPPED)


class OptunaRegistry(RunRegistry):
    """A study seen as a :class:`RunRegistry`: one run per trial (``run_id`` = trial number as a string).

    Completed trials are ``finished`` with their objective value as final loss; running trials carry their
    latest forecast from the :data:`FORECAST_ATTR` user attribute; pruned and failed trials are ``stopped``.
    Writes go through the study's storage, so an RDB storage makes this a multi-machine registry. Only
    single-objective, minimising studies are supported.
    """

    def __init__(self, study: optuna.Study) -> None:
        if len(study.directions) != 1 or study.direction != optuna.study.StudyDirection.MINIMIZE:
            raise ValueError("OptunaRegistry needs a single-objective study with direction='minimize'")
        self.study = study
        self.sweep = study.study_name

    def _trial_id(self, run_id: str) -> int:
        number = int(run_id)
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return t._trial_id
        raise KeyError(f"no trial number {number} in study {self.sweep!r}")

    def report_forecast(
        self,
        run_id: str,
        *,
        step: int,
        loss: float,
        std: float,
        status: str,
        total_steps: int | None = None,
        features: StopFeatures | None = None,
    ) -> None:
        """Store the forecast in the trial's :data:`FORECAST_ATTR` user attribute."""
        attrs = _attrs(step, total_steps, loss, std, str(getattr(status, "value", status)), features=features)
        self.study._storage.set_trial_user_attr(self._trial_id(run_id), FORECAST_ATTR, attrs)

    def report_final(
        self, run_id: str, final_loss: float | None, *, state: RunState = RunState.FINISHED
    ) -> None:
        """Not supported: a trial's end state and value are set by Optuna when the objective returns."""
        raise NotImplementedError("Optuna records a trial's final value when its objective returns")

    def records(self) -> list[RunRecord]:
        """One record per trial of the study."""
        return [_trial_record(t, self.sweep) for t in self.study.get_trials(deepcopy=False)]


def _features(attrs: dict[str, Any]) -> StopFeatures | None:
    try:
        return StopFeatures.model_validate(attrs["features"]) if attrs.get("features") else None
    except ValidationError:  # written by another version: the forecast alone still counts
        return None


def _attrs(
    step: int,
    total_steps: int | None,
    loss: float,
    std: float,
    status: str,
    *,
    features: StopFeatures | None = None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "step": int(step),
        "total_steps": int(total_steps) if total_steps is not None else None,
        "loss": float(loss),
        "std": float(std),
        "status": status,
        "time": time.time(),
    }
    if features is not None:
        attrs["features"] = features.model_dump(mode="json")
    return attrs


class ForecastPruner(BasePruner):
    """Prune a trial whose latest forecast is above ``reference`` by more than its measured error allows at
    ``confidence`` (default 0.98; see :func:`scaleforecast.decision.decide_stop`).

    >>> import optuna
    >>> from scaleforecast.integrations.optuna import ForecastPruner
    >>> study = optuna.create_study(pruner=ForecastPruner())
    >>> study.optimize(objective, n_trials=20)  # doctest: +SKIP

    ``reference`` is :func:`scaleforecast.decision.sweep_reference` over the study's other trials: the best
    completed value, or a running trial's forecast at its upper ``quantile`` (a confident forecast), or
    ``target`` if lower. Grace: no pruning before ``max(min_steps, min_fraction * total_steps)`` of the trial's
    own steps, nor before ``n_startup_trials`` trials have completed. Trials without a forecast attribute are
    never pruned by this pruner. ``max_age_s`` (default a day, as :class:`~scaleforecast.decision.SweepStopper`;
    ``None``: never) ignores running trials whose forecast is older: a worker that crashed or was preempted
    leaves its trial RUNNING in the study for good. ``rel_std_floor`` is the smallest error scale (relative to
    the loss) assumed for any forecast, this trial's and the others'
    (:func:`scaleforecast.decision.decide_stop_among`).
    ``reasons`` keeps why each pruned trial was pruned (trial number -> the decision's reason, in this process):
    the reporter shows it in the trial's ``scaleforecast.pruned`` attribute, its stop event and its
    ``TrialPruned``.
    """

    def __init__(
        self,
        confidence: float = DEFAULT_CONFIDENCE,
        *,
        min_fraction: float = 0.0,
        min_steps: int = 0,
        quantile: float = 0.8,
        target: float | None = None,
        n_startup_trials: int = 0,
        max_age_s: float | None = 86_400.0,
        rel_std_floor: float = 0.0,
    ) -> None:
        if rel_std_floor < 0:
            raise ValueError(f"rel_std_floor must be >= 0, got {rel_std_floor}")
        check_probability("confidence", confidence)
        check_probability("quantile", quantile)
        if n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be >= 0, got {n_startup_trials}")
        self.confidence = confidence
        self.min_fraction = min_fraction
        self.min_steps = min_steps
        self.quantile = quantile
        self.target = target
        self.n_startup_trials = n_startup_trials
        self.max_age_s = max_age_s
        self.rel_std_floor = rel_std_floor
        self.reasons: dict[int, str] = {}
        # the loss each pruned trial could not beat (trial number -> reference), for its stop event's bar
        self.references: dict[int, float] = {}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        """The Optuna pruner entry point (called by ``trial.should_prune()``)."""
        attrs = trial.user_attrs.get(FORECAST_ATTR)
        forecast = forecast_from_attrs(attrs) if attrs else None
        if forecast is None or attrs is None:
            return False
        trials = study.get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE for t in trials) < self.n_startup_trials:
            return False
        records = [_trial_record(t, study.study_name) for t in trials if t.number != trial.number]
        decision = decide_stop_among(
            forecast,
            records,
            step=int(attrs["step"]),
            total_steps=forecast.final_step,
            target=self.target,
            confidence=self.confidence,
            min_fraction=self.min_fraction,
            min_steps=self.min_steps,
            quantile=self.quantile,
            max_age_s=self.max_age_s,
            rel_std_floor=self.rel_std_floor,
        )
        if decision.stop:
            self.reasons[trial.number] = decision.reason
            if decision.reference is not None:
                self.references[trial.number] = decision.reference
            log.info("trial %d pruned: %s", trial.number, decision.reason)
        return decision.stop


def _dist_world() -> tuple[int, int]:
    """(rank, world size) when torch.distributed is initialised, else (0, 1); torch is imported lazily."""
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class OptunaForecastReporter(ForecastStopCheck):
    """The listener that connects a training adapter to an Optuna trial: ``LossForecast(listeners=[reporter])``.

    >>> from scaleforecast.callbacks import LossForecast
    >>> from scaleforecast.integrations.optuna import OptunaForecastReporter
    >>> def objective(trial):  # doctest: +SKIP
    ...     reporter = OptunaForecastReporter(trial)
    ...     trainer = L.Trainer(max_steps=20_000, callbacks=[LossForecast(listeners=[reporter])])
    ...     trainer.fit(model, datamodule)
    ...     return reporter.final_loss

    The run monitor calls it right after each refit with the optimizer step and the new forecast
    (``reporter(step, forecast) -> bool``). It records the forecast in the trial (user attribute
    :data:`FORECAST_ATTR`), reports the forecast final loss at ``trial.report(value, step=k * 1000 // n_grid)``
    when the run passes ``k / n_grid`` of its ``total_steps`` (default: the forecast's final step), asks
    ``trial.should_prune()`` after each report, and returns True when the trial is to stop (as a listener: a
    critical ``early_stop`` event, which stops training gracefully). Unusable forecasts (no fit yet) are
    ignored, and a forecast too vague to rank (its band at ``confidence`` reaching below zero:
    :func:`scaleforecast.decision.too_vague`) is recorded but not reported: a median pruner compares the
    values alone (``confidence=0.5`` reports every forecast). Errors inside Optuna are logged once and disable
    the reporter, so that training goes on.

    Under DDP only global rank 0 talks to Optuna (the other ranks may pass ``trial=None``; a
    ``TorchDistributedTrial`` is unwrapped to its rank-0 trial): the reporter itself runs no collective, and
    the adapters agree on rank 0's stop so that every rank stops at the same step.
    """

    def __init__(
        self,
        trial: optuna.trial.Trial | Any | None,
        *,
        total_steps: int | None = None,
        n_grid: int = 20,
        prune: bool = True,
        confidence: float = DEFAULT_CONFIDENCE,
    ) -> None:
        if not 1 <= n_grid <= GRID_SCALE:
            raise ValueError(f"n_grid must be in [1, {GRID_SCALE}], got {n_grid}")
        check_probability("confidence", confidence)
        self.confidence = confidence
        if total_steps is not None and total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        # A TorchDistributedTrial broadcasts inside each call; the adapters' own agreement replaces that.
        self.trial = (
            getattr(trial, "_delegate", trial) if type(trial).__name__ == "TorchDistributedTrial" else trial
        )
        self.total_steps = total_steps
        self.n_grid = n_grid
        self.prune = prune
        self.pruned = False
        self.pruned_at: int | None = None
        self.reason: str | None = None
        self.reference: float | None = None
        self.ended_at: int | None = None
        self.stopped = False
        self.last_forecast: Forecast | None = None
        self._last_k = 0
        self._disabled = False

    @property
    def final_loss(self) -> float | None:
        """The latest forecast of the final loss (mean), or None before the first usable fit."""
        f = self.last_forecast
        return f.final.loss if f is not None and f.final is not None else None

    def __call__(self, step: int, forecast: Forecast | None) -> bool:
        """Record, report and decide; True means: stop this trial now (rank 0 only; see the class doc)."""
        rank, _ = _dist_world()
        if rank != 0:
            if forecast is not None and forecast.ok and forecast.final is not None:
                self.last_forecast = forecast
            return False
        stop = self._local(step, forecast)
        if stop and not self.pruned:
            self.pruned, self.pruned_at = True, int(step)
        return stop

    def _local(self, step: int, forecast: Forecast | None) -> bool:
        if self._disabled or self.pruned or forecast is None or not forecast.ok or forecast.final is None:
            return self.pruned
        self.last_forecast = forecast
        total = self.total_steps or forecast.final_step
        final = forecast.final
        if self.trial is None:
            return False
        try:
            attrs = _attrs(
                step,
                total,
                final.loss,
                final.std,
                forecast.status.value,
                features=forecast.stop_features,
            )
            self.trial.set_user_attr(FORECAST_ATTR, attrs)
            k = min(self.n_grid, (int(step) * self.n_grid) // int(total))
            if k <= self._last_k or too_vague(final.loss, final.std, self.confidence):
                return False  # not due, or too vague for any pruner to rank (reported once it is not)
            self._last_k = k
            self.trial.report(float(final.loss), step=k * GRID_SCALE // self.n_grid)
            pruned = bool(self.prune and self.trial.should_prune())
            if pruned:
                # why, where users look: the trial's attributes, the stop event, the TrialPruned message
                pruner = getattr(getattr(self.trial, "study", None), "pruner", None)
                number = getattr(self.trial, "number", -1)
                self.reason = getattr(pruner, "reasons", {}).get(number)
                self.reference = getattr(pruner, "references", {}).get(number)
                if self.reason:
                    self.trial.set_user_attr(PRUNED_ATTR, self.reason)
            return pruned
        except Exception as exc:  # Optuna/storage errors must not stop training
            self._disable(f"{type(exc).__name__}: {exc}")
            return False

    def _disable(self, why: str) -> None:
        if not self._disabled:
            log.warning("scaleforecast Optuna reporter disabled: %s", why)
        self._disabled = True

    def _has_stopped(self) -> bool:
        return self.pruned

    def _stop_event(self, step: int, latest: Forecast) -> Event:
        final = latest.final
        return Event(
            kind="early_stop",
            step=step,
            severity="critical",
            score=None if final is None else final.loss,
            message=f"trial pruned by the Optuna pruner on its loss forecast at step {self.pruned_at}"
            + (f": {self.reason}" if self.reason else ""),
            data={"source": "optuna", "forecast_step": self.pruned_at, "reference": self.reference},
        )

    def on_run_end(self, step: int, stopped: bool) -> None:
        """The training adapters call it where the run ends: ``stopped`` before its last step by any rule (the
        health checks' stop of a run whose loss went NaN, a target, a sweep stopper), not only by the pruner."""
        self.ended_at, self.stopped = int(step), bool(stopped)

    def raise_if_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` when the trial was stopped early (call after ``fit``): by its pruner, or
        before its last step by another rule, e.g. the health checks' stop of a run whose loss went NaN (its last
        forecast, made before the NaNs, is no value for a completed trial, one the other trials must beat)."""
        if self.pruned:
            raise optuna.TrialPruned(
                f"pruned on its loss forecast at step {self.pruned_at}"
                + (f": {self.reason}" if self.reason else "")
            )
        if self.stopped:
            raise optuna.TrialPruned(
                f"stopped at step {self.ended_at}, before its last step (the stop's reason is in the training log)"
            )
