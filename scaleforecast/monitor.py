"""The framework-free run monitor: what every adapter (Lightning, HF Trainer, ``watch``) does at a flush.

An adapter buffers per-step losses on its side and, every few steps, hands the monitor host-side arrays:
the optimizer steps, the mean loss over ranks at each step, optionally the max over ranks, the gradient norms
and the LRs used. :meth:`RunMonitor.flush` then

1. runs the health checks on the batch (each ``check(batch, forecaster) -> list[Event]``),
2. feeds the forecaster and refits it on its policy,
3. applies the early-stopping rule (:func:`scaleforecast.decision.decide_stop`) to the latest forecast,
4. runs the schedule advisor after a refit (``advise(forecaster, step) -> list[Event]``),
5. pushes forecasts, scalars, events and (every ``figure_every`` refits) a figure to the sinks,

and returns a :class:`FlushResult` saying whether to stop and why. The state is plain data
(:meth:`state_dict`), identical on every rank when every rank is fed the same reduced arrays, and the
object pickles without its sinks (for spawn-based launchers).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from scaleforecast.decision import StopDecision, decide_stop
from scaleforecast.events import Event, TrainingHealthError, log_event
from scaleforecast.evidence import ForecastTrack
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster, ScheduleLike
from scaleforecast.results import Forecast
from scaleforecast.sinks import CurveSnapshot, FanoutSink, Sink

log = logging.getLogger(__name__)

__all__ = [
    "Action",
    "Advisor",
    "FlushBatch",
    "FlushResult",
    "HealthCheck",
    "RunMonitor",
    "guarded_call",
    "validate_adapter_args",
    "validate_stop_args",
]

Action = Literal["warn", "stop", "raise"]
_ACTIONS = ("warn", "stop", "raise")


def validate_stop_args(
    target_loss: float | None, confidence: float, min_steps: int, min_fraction: float, action: str
) -> None:
    """Raise ``ValueError`` naming the first bad argument of the early-stopping rule.

    The contract: ``target_loss`` is ``None`` or finite, ``0.5 <= confidence < 1``, ``min_steps >= 0``,
    ``0 <= min_fraction <= 1`` and ``action`` is ``"stop"``, ``"warn"`` or ``"raise"``. The monitor and both
    training callbacks take these arguments, and the callbacks check them at construction so that a bad value
    fails before training starts rather than at the first flush.
    """
    if target_loss is not None and not math.isfinite(target_loss):
        raise ValueError(f"target_loss must be a finite number, got {target_loss}")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if min_steps < 0:
        raise ValueError(f"min_steps must be >= 0, got {min_steps}")
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if action not in _ACTIONS:
        raise ValueError(f"action must be 'stop', 'warn' or 'raise', got {action!r}")


def guarded_call(
    disabled: Mapping[str, str],
    part: str,
    fn: Callable[..., Any],
    args: Sequence[Any],
    report: Callable[[str, str], None],
) -> Any:
    """Return ``fn(*args)``, or ``None`` when ``part`` is in ``disabled`` or ``fn`` raised.

    The contract that keeps a plugin from killing training: an exception other than
    :class:`scaleforecast.events.TrainingHealthError` (the user's ``action="raise"``) is handed to
    ``report(part, "<ExceptionType>: <message>")`` from inside the ``except`` block (so ``exc_info`` works),
    and ``report`` is expected to add ``part`` to ``disabled`` so that the part stays off for the run.
    """
    if part in disabled:
        return None
    try:
        return fn(*args)
    except TrainingHealthError:
        raise
    except Exception as exc:
        report(part, f"{type(exc).__name__}: {exc}")
        return None


def validate_adapter_args(
    total_steps: int | None,
    param_group: int,
    flush_every: int,
    refit_every: int,
    level: float,
    log_figures_every: int,
) -> None:
    """Raise ``ValueError`` naming the first bad argument shared by the training callbacks.

    The contract: ``total_steps`` is ``None`` or ``>= 1``, ``param_group >= 0``, ``flush_every >= 1``,
    ``refit_every >= 1``, ``0 < level < 1`` and ``log_figures_every >= 0``.
    """
    if total_steps is not None and total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if param_group < 0:
        raise ValueError(f"param_group must be >= 0, got {param_group}")
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    if refit_every < 1:
        raise ValueError(f"refit_every must be >= 1, got {refit_every}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if log_figures_every < 0:
        raise ValueError(f"log_figures_every must be >= 0, got {log_figures_every}")


@dataclass(frozen=True)
class FlushBatch:
    """One flush worth of host-side values, aligned by position.

    ``steps``: optimizer updates completed (1-based, strictly increasing); ``loss``: the mean loss of each
    step over ranks; ``loss_max``: the max over ranks (``None`` on one process); ``grad_norm``: the gradient norm
    of each update when the adapter measures it; ``lrs``: the LR each update used; ``window``: how many updates
    each ``loss`` averages (1 for per-step losses, ``logging_steps`` for logged window means).
    """

    steps: np.ndarray
    loss: np.ndarray
    loss_max: np.ndarray | None = None
    grad_norm: np.ndarray | None = None
    lrs: np.ndarray | None = None
    window: int = 1


@runtime_checkable
class HealthCheck(Protocol):
    """A run-health detector: events raised by one flush, judged against the forecaster's latest fit."""

    def check(self, batch: FlushBatch, forecaster: OnlineForecaster) -> list[Event]: ...


@runtime_checkable
class Advisor(Protocol):
    """Schedule advice after a refit: events proposing a better remaining schedule."""

    def advise(self, forecaster: OnlineForecaster, step: int) -> list[Event]: ...


@dataclass
class FlushResult:
    """What a flush asks of the adapter: ``stop`` (with ``reason``), and what it produced."""

    stop: bool = False
    reason: str | None = None
    forecast: Forecast | None = None
    decision: StopDecision | None = None
    events: list[Event] = field(default_factory=list)


class RunMonitor:
    """Forecaster + stop rule + health checks + sinks, driven at each flush (see the module docstring).

    ``target_loss``/``confidence``/``min_steps``/``min_fraction``: the early-stopping rule (no target, no stop).
    ``action``: what a stop decision or a critical health event does: ``warn`` (report only), ``stop`` (the
    flush returns ``stop=True``; the adapter stops the trainer gracefully) or ``raise`` (raise
    :class:`scaleforecast.events.TrainingHealthError`). ``figure_every``: draw a figure every this many refits
    (0 = never). ``on_event``: a user hook called with every event. ``verbose``: log forecasts and events
    (adapters pass ``False`` on every rank but 0).
    A failure inside the forecaster or a health check is reported once and that part is switched off; the
    monitor itself never raises, except for ``action="raise"``.
    """

    def __init__(
        self,
        schedule: ScheduleLike | None = None,
        *,
        config: ForecasterConfig | None = None,
        forecaster: OnlineForecaster | None = None,
        target_loss: float | None = None,
        confidence: float = 0.95,
        min_steps: int = 0,
        min_fraction: float = 0.0,
        action: Action = "stop",
        health: Sequence[HealthCheck] = (),
        advisor: Advisor | None = None,
        sinks: Sequence[Sink] = (),
        figure_every: int = 5,
        on_event: Callable[[Event], None] | None = None,
        verbose: bool = True,
    ) -> None:
        validate_stop_args(target_loss, confidence, min_steps, min_fraction, action)
        if figure_every < 0:
            raise ValueError(f"figure_every must be >= 0, got {figure_every}")
        if forecaster is not None and (schedule is not None or config is not None):
            raise ValueError("pass either a forecaster or schedule/config, not both")
        self.forecaster = forecaster or OnlineForecaster(schedule, config)
        self.target_loss = target_loss
        self.confidence = confidence
        self.min_steps = min_steps
        self.min_fraction = min_fraction
        self.action: Action = action
        self.health = list(health)
        self.advisor = advisor
        self.sinks = FanoutSink(sinks)
        self.figure_every = figure_every
        self.on_event = on_event
        self.verbose = verbose
        self.refits = 0
        self.usable_refits = 0
        self.decision: StopDecision | None = None
        self.track = ForecastTrack()
        self.stopped_at: int | None = None
        self.stop_reason: str | None = None
        self.stop_reported = False
        self.events: list[Event] = []
        self.disabled: dict[str, str] = {}

    # ---------------------------------------------------------------- plumbing
    def add_sink(self, sink: Sink) -> None:
        self.sinks.add(sink)

    def set_schedule(self, schedule: ScheduleLike) -> None:
        """Re-plan: the planned per-update LR changed (its past part must be the LRs already used)."""
        self._guard("schedule", self.forecaster.set_schedule, schedule)

    @property
    def total_steps(self) -> int | None:
        return self.forecaster.total_steps

    def _guard(self, part: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; on an exception report it once and switch ``part`` off (returns ``None``)."""
        return guarded_call(self.disabled, part, fn, args, self._report)

    def _report(self, part: str, detail: str) -> None:
        msg = f"scaleforecast: {part} failed ({detail}); it is switched off for this run"
        self.disabled[part] = msg
        if self.verbose:
            log.warning(msg, exc_info=True)
            # Blame the code that called _guard, three frames up through guarded_call.
            warnings.warn(msg, RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------------- flush
    def flush(self, batch: FlushBatch) -> FlushResult:
        """Process one batch of observations (see the module docstring) and say whether to stop."""
        result = FlushResult()
        steps = np.asarray(batch.steps, dtype=np.int64).ravel()
        if steps.size == 0:
            return result
        step = int(steps[-1])
        for i, check in enumerate(self.health):
            found = self._guard(
                f"health check {type(check).__name__}#{i}", check.check, batch, self.forecaster
            )
            result.events.extend(found or [])
        forecast = self._guard("forecaster", self._update, batch)
        if forecast is not None:
            result.forecast = forecast
            self.refits += 1
            self._guard("stop rule", self.track.update, self.forecaster)
        decision = self._guard("stop rule", self._decide, step)
        if decision is not None:
            result.decision = self.decision = decision
        if forecast is not None and self.advisor is not None:
            result.events.extend(self._guard("advisor", self.advisor.advise, self.forecaster, step) or [])
        self._guard("sinks", self._write, step, batch, result)
        self._act(step, result)
        return result

    def _update(self, batch: FlushBatch) -> Forecast | None:
        return self.forecaster.update(batch.steps, batch.loss, window=batch.window)

    def _decide(self, step: int) -> StopDecision | None:
        total = self.forecaster.total_steps
        if self.target_loss is None or total is None:
            return None
        return decide_stop(
            self.forecaster.latest,
            self.target_loss,
            step=step,
            total_steps=total,
            confidence=self.confidence,
            min_fraction=self.min_fraction,
            min_steps=self.min_steps,
            features=self.track.features,
        )

    def _write(self, step: int, batch: FlushBatch, result: FlushResult) -> None:
        if len(self.sinks) == 0:
            return
        loss = np.asarray(batch.loss, dtype=float)
        finite = loss[np.isfinite(loss)]
        scalars: dict[str, float] = {}
        if finite.size:
            scalars["forecast/observed"] = float(finite.mean())
        if result.decision is not None and result.decision.probability is not None:
            scalars["forecast/p_miss_target"] = result.decision.probability
        if scalars:
            self.sinks.write_scalars(step, scalars)
        forecast = result.forecast
        if forecast is not None:
            extras: dict[str, float] = {}
            if self.target_loss is not None:
                extras["forecast/target"] = self.target_loss
            advice = getattr(self.advisor, "scalars", None)
            if callable(advice):
                extras.update(self._guard("advisor", advice) or {})
            self.sinks.write_forecast(step, forecast, extras)
            if self.verbose and forecast.final is not None:
                f = forecast.final
                log.info(
                    "step %d: forecast final loss %.4f [%.4f, %.4f] at step %d (%s)",
                    step, f.loss, f.lower, f.upper, forecast.final_step, forecast.status.value,
                )  # fmt: skip
            if self.figure_every and forecast.ok:
                self.usable_refits += 1
            if self.figure_every and forecast.ok and (self.usable_refits - 1) % self.figure_every == 0:
                snapshot = self.snapshot(step)
                if snapshot is not None:
                    self.sinks.write_figure(snapshot)
        self.sinks.flush()

    def _act(self, step: int, result: FlushResult) -> None:
        """Route events, then turn a stop decision or a critical event into ``result.stop`` per ``action``."""
        stop_reason: str | None = None
        decided = result.decision is not None and result.decision.stop
        if decided and self.stopped_at is None and not self.stop_reported:
            self.stop_reported = True
            stop_reason = result.decision.reason  # type: ignore[union-attr]
            result.events.append(
                Event(
                    kind="early_stop",
                    step=step,
                    severity="critical",
                    score=result.decision.probability,
                    message=stop_reason,
                    data={
                        "target_loss": self.target_loss,
                        "confidence": self.confidence,
                        "action": self.action,
                    },
                )
            )
        for event in result.events:
            self._emit(event)
        critical = next((e for e in result.events if e.is_critical), None)
        if critical is None or self.stopped_at is not None:
            return
        if self.action == "raise":
            self.stopped_at, self.stop_reason = step, critical.text()
            raise TrainingHealthError(critical)
        if self.action == "stop":
            result.stop = True
            result.reason = stop_reason or critical.text()
            self.stopped_at, self.stop_reason = step, result.reason

    def _emit(self, event: Event) -> None:
        self.events = [*self.events[-63:], event]
        if self.verbose:
            log_event(event)
        self._guard("sinks", self.sinks.write_event, event)
        if self.on_event is not None:
            self._guard("on_event hook", self.on_event, event)

    # ----------------------------------------------------------------- figures
    def snapshot(self, step: int, points: int = 200) -> CurveSnapshot | None:
        """The observed (binned) curve and the forecast curve with its band from now to the final step."""
        fc = self.forecaster
        lrs = fc.schedule
        if lrs is None or fc.latest is None or not fc.latest.ok:
            return None
        total = len(lrs)
        obs = fc.observations()
        grid = np.unique(np.linspace(max(step, 1), total, points).round().astype(np.int64))
        curve = fc.forecast(steps=grid)
        pts = curve.points
        final = curve.final
        past = np.unique(np.linspace(1, max(step, 1), points).round().astype(np.int64))
        title = f"step {step}/{total}: forecast final loss"
        if final is not None:
            title += f" {final.loss:.4f} [{final.lower:.4f}, {final.upper:.4f}] ({round(100 * curve.level)}%)"
        return CurveSnapshot(
            step=step,
            final_step=total,
            observed_steps=np.asarray(obs.end, dtype=float),
            observed_loss=np.asarray(obs.y, dtype=float),
            steps=np.array([p.step for p in pts], dtype=float),
            mean=np.array([p.loss for p in pts]),
            lower=np.array([p.lower for p in pts]),
            upper=np.array([p.upper for p in pts]),
            level=curve.level,
            target=self.target_loss,
            lrs=lrs,
            title=title,
            fit_steps=past.astype(float),
            fit_mean=fc.predict(past),
            notes=[f"fit status: {curve.status.value}"],
        )

    def close(self) -> None:
        """Flush and close the sinks (the adapter calls this at the end of training)."""
        self.sinks.flush()
        self.sinks.close()

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: the forecaster, the stop record, recent events and the health checks' state."""
        return {
            "version": 1,
            "forecaster": self.forecaster.state_dict(),
            "refits": self.refits,
            "usable_refits": self.usable_refits,
            "decision": None if self.decision is None else self.decision.model_dump(mode="json"),
            "track": self.track.state_dict(),
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "stop_reported": self.stop_reported,
            "events": [e.model_dump(mode="json") for e in self.events],
            "health": [_state_of(h) for h in self.health],
            "advisor": None if self.advisor is None else _state_of(self.advisor),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (on resume); health checks are restored when their count matches."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported monitor state version {state.get('version')!r}")
        self.forecaster.load_state_dict(state["forecaster"])
        self.refits = int(state["refits"])
        self.usable_refits = int(state.get("usable_refits", 0))
        self.decision = None if state["decision"] is None else StopDecision.model_validate(state["decision"])
        if state.get("track") is not None:
            self.track.load_state_dict(state["track"])
        self.stopped_at = state["stopped_at"]
        self.stop_reason = state["stop_reason"]
        self.stop_reported = bool(state.get("stop_reported", self.stopped_at is not None))
        self.events = [Event.model_validate(e) for e in state["events"]]
        if len(state.get("health", [])) == len(self.health):
            for h, s in zip(self.health, state["health"], strict=True):
                if s is not None and hasattr(h, "load_state_dict"):
                    h.load_state_dict(s)
        if (
            self.advisor is not None
            and state.get("advisor") is not None
            and hasattr(self.advisor, "load_state_dict")
        ):
            self.advisor.load_state_dict(state["advisor"])

    def __getstate__(self) -> dict[str, Any]:
        # Sinks hold open files and writers: they stay with the process that made them.
        state = self.__dict__.copy()
        state["sinks"] = FanoutSink()
        return state


def _state_of(obj: Any) -> Any:
    fn = getattr(obj, "state_dict", None)
    return fn() if callable(fn) else None
