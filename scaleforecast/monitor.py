"""The framework-free run monitor: what every adapter (Lightning, HF Trainer, plain loops, ``watch``) does at a
flush, and the one owner of the action policy.

An adapter buffers per-step losses on its side and, every few steps, hands the monitor host-side arrays:
the optimizer steps, the mean loss over ranks at each step, optionally the max over ranks, the gradient norms
and the LRs used. :meth:`RunMonitor.flush` then

1. runs the **detectors** on the batch (``check(batch, view) -> list[Event]``), before the refit, judged
   against the fit as it stood (``view`` is a read-only :class:`FitView`);
2. feeds the forecaster and refits it on its policy;
3. applies the early-stopping rule (:func:`scaleforecast.decision.decide_stop`, configured by a
   :class:`StopConfig`) to the latest forecast;
4. after a refit, runs the schedule **advisor** (``advise(view, step) -> list[Event]``) and the **listeners**
   (``on_forecast(step, forecast) -> list[Event]``: sweep reporters and stoppers, called with the new forecast,
   so they never lag a flush behind; the forecast carries the run's stop features in ``stop_features``, so a
   listener's stop rule reads the same measured error as the monitor's own);
5. pushes forecasts, scalars, events and (every ``figure_every`` usable refits) a figure to the sinks;
6. acts: the stop decision and every critical event (a detector's, or a listener's ``early_stop``) go through
   the one ``action`` policy: ``warn``, ``stop`` or ``raise``.

The state is plain data (:meth:`RunMonitor.state_dict`), identical on every rank when every rank is fed the
same reduced arrays, and the object pickles without its sinks (for spawn-based launchers).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from scaleforecast.caller import warn_user
from scaleforecast.decision import DEFAULT_CONFIDENCE, StopDecision, decide_stop, too_early
from scaleforecast.detectors import forecaster_lr
from scaleforecast.events import HEALTH_KINDS, Event, TrainingHealthError, log_event
from scaleforecast.evidence import ForecastTrack
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster, ScheduleLike, status_event
from scaleforecast.results import FitStatus, Forecast
from scaleforecast.sinks import CurveSnapshot, FanoutSink, Sink

log = logging.getLogger(__name__)

__all__ = [
    "Action",
    "Advisor",
    "Count",
    "Detector",
    "FitView",
    "FlushBatch",
    "FlushResult",
    "Guard",
    "Listener",
    "Real",
    "RunMonitor",
    "StopConfig",
    "checked",
]

Action = Literal["warn", "stop", "raise"]


def _as_real(value: Any) -> Any:
    # numpy scalars are numbers; strings and booleans are not (a "3.1" must fail, not be parsed).
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _as_count(value: Any) -> Any:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Real = Annotated[float, BeforeValidator(_as_real)]
"""A float argument: any real number (numpy scalars included), never a string or a boolean."""
Count = Annotated[int, BeforeValidator(_as_count)]
"""An integer argument: any integral number (``1e4`` included), never a string or a boolean."""

M = TypeVar("M", bound=BaseModel)


def checked(model: type[M], **values: Any) -> M:
    """``model(**values)``, with a validation failure turned into one ``ValueError`` that names the argument.

    ``checked(StopConfig, target_loss="3.1")`` raises ``ValueError("target_loss: input should be a valid
    number, got '3.1' (str)")``: every adapter validates its arguments this way at construction, so that a bad
    value fails before training starts, with the name the user typed.
    """
    try:
        return model(**values)
    except ValidationError as err:
        first = err.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or model.__name__
        msg = first["msg"][:1].lower() + first["msg"][1:]
        got = first.get("input")
        shown = "" if first["type"] == "missing" else f", got {got!r} ({type(got).__name__})"
        raise ValueError(f"{name}: {msg}{shown}") from None


class StopConfig(BaseModel):
    """The early-stopping rule and the action policy, in one place for the monitor and every adapter.

    >>> from scaleforecast import StopConfig
    >>> StopConfig(target_loss=3.1, action="warn").confidence
    0.98
    >>> StopConfig(target_loss=3.1, action="warn").action
    'warn'

    Stop when the forecast final loss is above ``target_loss`` by more than its measured error allows, at
    ``confidence`` (:func:`scaleforecast.decision.decide_stop`: a stop at ``confidence`` would have been wrong in
    at most ``1 - confidence`` of the replayed real runs); no target: never. ``min_steps``/``min_fraction`` add
    an explicit grace period, ``step >= max(min_steps, min_fraction * total_steps)``; the rule needs none of its
    own. ``action`` is what a stop decision or any critical event does:
    ``"warn"`` (report only), ``"stop"`` (stop training gracefully, on every rank at the same step) or
    ``"raise"`` (raise :class:`scaleforecast.events.TrainingHealthError`).
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # the stop rule reads the forecast's error relative to the target: a loss the law forecasts is positive
    target_loss: Real | None = Field(None, gt=0, allow_inf_nan=False)
    confidence: Real = Field(DEFAULT_CONFIDENCE, ge=0.5, lt=1.0)
    min_steps: Count = Field(0, ge=0)
    min_fraction: Real = Field(0.0, ge=0.0, le=1.0)
    action: Action = "stop"


class Guard:
    """Run the plugin's parts so that a failure is reported once, by the process it happened in, and switches
    off only that part; training goes on.

    ``guard(part, fn, *args)`` returns ``fn(*args)``, or ``None`` when ``part`` is off or ``fn`` raised. An
    exception other than :class:`scaleforecast.events.TrainingHealthError` (the user's ``action="raise"``) is
    reported as a ``RuntimeWarning`` starting with ``label`` (which names the rank on a multi-process job) and
    ``part`` is recorded in :attr:`disabled` (part -> message) for the rest of the run. Nothing that every rank
    must call (a collective) may run inside a guard: the part could be off on one rank only.
    """

    def __init__(self, label: str = "scaleforecast") -> None:
        self.label = label
        self.disabled: dict[str, str] = {}

    def __call__(self, part: str, fn: Callable[..., Any], *args: Any) -> Any:
        if part in self.disabled:
            return None
        try:
            return fn(*args)
        except TrainingHealthError:
            raise
        except Exception as exc:
            self.report(part, f"{type(exc).__name__}: {exc}")
            return None

    def report(self, part: str, detail: str) -> None:
        """Record ``part`` as off and warn once (with the traceback in the debug log)."""
        if part in self.disabled:
            return
        msg = f"{self.label}: {part} failed ({detail}); it is switched off for this run"
        self.disabled[part] = msg
        log.debug(msg, exc_info=True)
        warn_user(msg)


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


class FitView:
    """What detectors and advisors may read of the fit: the latest forecast, predictions and the plan.

    ``latest`` (the forecast of the last refit, or ``None``), ``last_step`` (the last step observed),
    ``total_steps`` and ``schedule`` (the planned per-update LR, a read-only array) describe the run;
    ``predict(steps, schedule=None)`` gives the latest fit's point predictions (NaN before a usable fit, a
    what-if under ``schedule``) and ``lr_at(steps)`` the planned LR of those updates (``None`` when a step lies
    outside the plan). Nothing here can change the forecaster.
    """

    def __init__(self, forecaster: OnlineForecaster) -> None:
        self._fc = forecaster

    @property
    def latest(self) -> Forecast | None:
        return self._fc.latest

    @property
    def last_step(self) -> int:
        return self._fc.last_step

    @property
    def total_steps(self) -> int | None:
        return self._fc.total_steps

    @property
    def schedule(self) -> np.ndarray | None:
        return self._fc.schedule  # already a read-only view, the same object until the plan changes

    def predict(self, steps: Sequence[int] | np.ndarray, schedule: ScheduleLike | None = None) -> np.ndarray:
        return self._fc.predict(steps, schedule=schedule)

    def lr_at(self, steps: Sequence[int] | np.ndarray) -> np.ndarray | None:
        return forecaster_lr(self._fc)(np.asarray(steps, dtype=np.int64).ravel())


@runtime_checkable
class Detector(Protocol):
    """A run-health detector, run on each flush before the refit: the events it raises."""

    def check(self, batch: FlushBatch, view: FitView) -> list[Event]: ...


@runtime_checkable
class Listener(Protocol):
    """Called with each new forecast, right after the refit that made it (sweep reporters and stoppers).

    Returns events; a critical ``early_stop`` event asks the monitor to stop the run (per its ``action``).
    """

    def on_forecast(self, step: int, forecast: Forecast) -> list[Event]: ...

    # optional: ``on_run_end(step, stopped)``, told once where the run ends (:meth:`RunMonitor.end_run`);
    # ``on_run_lost(step, reason)``, told when the monitor stops (or raises out of) a run lost to a health check


@runtime_checkable
class Advisor(Protocol):
    """Schedule advice after a refit: events proposing a better remaining schedule."""

    def advise(self, view: FitView, step: int) -> list[Event]: ...


@dataclass
class FlushResult:
    """What a flush asks of the adapter: ``stop`` (with ``reason``), and what it produced.

    ``error`` holds the :class:`TrainingHealthError` of ``action="raise"`` when the flush was asked not to
    raise it itself (an adapter first agrees with the other ranks, then raises on every rank). ``lost``: the
    stop is the health checks' (the run is lost), not a stop rule's.
    """

    stop: bool = False
    reason: str | None = None
    lost: bool = False
    forecast: Forecast | None = None
    decision: StopDecision | None = None
    events: list[Event] = field(default_factory=list)
    error: TrainingHealthError | None = None


def _name(obj: Any, i: int) -> str:
    return f"{type(obj).__name__}#{i}"


class RunMonitor:
    """Forecaster + stop rule + detectors + listeners + sinks, driven at each flush (see the module docstring).

    >>> import numpy as np
    >>> from scaleforecast import RunMonitor, StopConfig, as_lrs
    >>> from scaleforecast.monitor import FlushBatch
    >>> mon = RunMonitor("cosine:peak=1e-3,warmup=50,total=1000", stop=StopConfig(target_loss=1.5), verbose=False)
    >>> loss = 2.0 + 0.1 * np.cumsum(as_lrs("cosine:peak=1e-3,warmup=50,total=1000")) ** -0.5
    >>> for end in range(100, 1001, 100):  # a flush every 100 steps
    ...     if mon.flush(FlushBatch(steps=np.arange(end - 99, end + 1), loss=loss[end - 100 : end])).stop:
    ...         break
    >>> end  # 1.5 is out of reach: stopped at the first flush
    100
    >>> mon.close()

    Usage::

        mon = RunMonitor("cosine:peak=3e-4,total=2000", stop=StopConfig(target_loss=3.1))
        result = mon.flush(FlushBatch(steps=np.arange(1, 51), loss=losses))
        if result.stop: ...

    ``stop``: the stop rule and the action policy (:class:`StopConfig`); ``figure_every``: draw a figure every
    this many usable refits (0 = never); ``on_event``: a user hook called with every event; ``verbose``: log
    events (adapters pass ``False`` on every rank but 0); ``stop_log_level``: the logging level of the early
    stop's event (an adapter that prints the stop itself passes ``logging.INFO``: said once, where it printed
    the forecast it stops on, not also by Python's fallback handler, first); ``guard``: the :class:`Guard` that reports failures
    (adapters share theirs, so that every failure lands in one record). A failure inside the forecaster, a
    detector, a listener, the advisor or a sink is reported once and that part is switched off; the monitor
    itself never raises, except for ``action="raise"``.
    """

    def __init__(
        self,
        schedule: ScheduleLike | None = None,
        *,
        config: ForecasterConfig | None = None,
        forecaster: OnlineForecaster | None = None,
        stop: StopConfig | None = None,
        detectors: Sequence[Detector] = (),
        listeners: Sequence[Listener] = (),
        advisor: Advisor | None = None,
        sinks: Sequence[Sink] = (),
        figure_every: int = 5,
        on_event: Callable[[Event], None] | None = None,
        verbose: bool = True,
        stop_log_level: int = logging.WARNING,
        guard: Guard | None = None,
    ) -> None:
        if figure_every < 0:
            raise ValueError(f"figure_every: must be >= 0, got {figure_every}")
        if forecaster is not None and (schedule is not None or config is not None):
            raise ValueError("pass either a forecaster or schedule/config, not both")
        self.forecaster = forecaster or OnlineForecaster(schedule, config)
        self.view = FitView(self.forecaster)
        self.stop = stop or StopConfig()
        self.detectors = list(detectors)
        self.listeners = list(listeners)
        self.advisor = advisor
        self.guard = guard or Guard()
        self.sinks = FanoutSink(sinks, report=self.guard.report)
        self.figure_every = figure_every
        self.on_event = on_event
        self.verbose = verbose
        self.stop_log_level = stop_log_level
        self.refits = 0
        self.usable_refits = 0
        self._figure_at: int | None = None  # the step of the last figure drawn
        self.decision: StopDecision | None = None
        self.track = ForecastTrack()
        self.stopped_at: int | None = None
        self.stop_reason: str | None = None
        self.stop_reported = False
        # a stopped run resumed is judged again on forecasts fitted after this step only
        self.judge_after: int | None = None
        self.events: list[Event] = []
        self._status: FitStatus | None = None

    # ---------------------------------------------------------------- plumbing
    @property
    def disabled(self) -> dict[str, str]:
        """The parts switched off by a failure (part -> message)."""
        return self.guard.disabled

    @property
    def target_loss(self) -> float | None:
        return self.stop.target_loss

    def add_sink(self, sink: Sink) -> None:
        self.sinks.add(sink)

    def set_schedule(self, schedule: ScheduleLike) -> None:
        """Re-plan: the planned per-update LR changed (its past part must be the LRs already used)."""
        self.guard("schedule", self.forecaster.set_schedule, schedule)

    @property
    def total_steps(self) -> int | None:
        return self.forecaster.total_steps

    # ------------------------------------------------------------------- flush
    def flush(self, batch: FlushBatch, *, raise_now: bool = True, final: bool = False) -> FlushResult:
        """Process one batch of observations (see the module docstring) and say whether to stop.

        With ``raise_now=False`` an ``action="raise"`` error is returned in :attr:`FlushResult.error` instead of
        raised (for adapters that agree with the other ranks first). ``final``: the last flush of a training
        that has ended (at its last step, or stopped by something else): the stop rule is still evaluated and
        written, but there is no run left to stop, so it decides no stop.
        """
        result = FlushResult()
        steps = np.asarray(batch.steps, dtype=np.int64).ravel()
        if steps.size == 0:
            return result
        step = int(steps[-1])
        for i, detector in enumerate(self.detectors):
            found = self.guard(f"detector {_name(detector, i)}", detector.check, batch, self.view)
            result.events.extend(found or [])
        forecast = self.guard("forecaster", self._update, batch)
        if forecast is not None:
            result.forecast = forecast
            self.refits += 1
            # a forecast that turns law_violated or stale is said once, as an event (console, TensorBoard)
            changed = status_event(self._status, forecast, step)
            if (
                changed is not None
                and changed.kind == "stale"
                and any(e.kind == "nonfinite" for e in result.events)
            ):
                changed = None  # the non-finite losses that make the fit stale are said just before
            result.events.extend([changed] if changed is not None else [])
            self._status = forecast.status
            self.guard("stop rule", self._track, forecast)
        decision = self.guard("stop rule", self._decide, step)
        if decision is not None and final:
            decision = decision.model_copy(update={"stop": False})
        if decision is not None:
            result.decision = self.decision = decision
        ended: BaseException | None = None
        if forecast is not None:
            if self.advisor is not None:
                result.events.extend(self.guard("advisor", self.advisor.advise, self.view, step) or [])
            try:
                result.events.extend(self._tell_listeners(step, forecast))
            except BaseException as exc:
                # a listener that ends the run from inside the flush (Ray Tune ends a trial by raising
                # SystemExit out of tune.report): the flush is written first, then the exit goes on
                ended = exc
        self.guard("sinks", self._write, step, batch, result)
        self._act(step, result, final)
        if ended is not None:
            raise ended
        if result.error is not None and raise_now:
            raise result.error
        return result

    def _update(self, batch: FlushBatch) -> Forecast | None:
        return self.forecaster.update(batch.steps, batch.loss, window=batch.window)

    def end_run(self, step: int, stopped: bool) -> None:
        """Tell the listeners that have ``on_run_end`` that the run ended at ``step`` (``stopped``: by any rule,
        as agreed across ranks, or before its planned last step: a failure, a time budget), e.g. a sweep stopper
        recording the run as finished or stopped for the runs after it. Each failure is reported once."""
        self._tell("on_run_end", step, self.ended_early(step, stopped))

    def start_run(self) -> None:
        """Tell the listeners that have ``on_run_start`` that a run starts from its first step (after another,
        when a sweep loop or a hyperparameter search reuses one callback: a sweep stopper then records it under
        a new run id). Each failure is reported once."""
        self._tell("on_run_start")

    def resume_run(self, run_id: str) -> None:
        """Tell the listeners that have ``on_run_resume`` that the run resumes from a checkpoint whose saved
        state named it ``run_id`` (a sweep stopper goes on under that id: one record per run across restarts).
        Each failure is reported once."""
        self._tell("on_run_resume", run_id)

    def _tell(self, hook: str, *args: Any) -> None:
        for i, listener in enumerate(self.listeners):
            fn = getattr(listener, hook, None)
            if callable(fn):
                self.guard(f"listener {_name(listener, i)}", fn, *args)

    def ended_early(self, step: int, stopped: bool) -> bool:
        """Whether a run that ended at ``step`` ended before it finished: ``stopped`` (by any rule), or short
        of its planned last step (a failure, a time budget). A run of unknown length ends where it ends."""
        total = self.forecaster.total_steps
        return stopped or (total is not None and step < total)

    def clear_stop(self, judge_again: bool = True) -> None:
        """Forget a stop: a run that was stopped and is resumed from a checkpoint trains on, and the stop rule
        decides again from its next forecast (which says whether the run still cannot reach its target).
        ``judge_again=False``: training went on past the stop while it ran (a trainer's ``min_steps``): the
        rule has said its piece and does not stop the run again."""
        self.stopped_at = self.stop_reason = None
        self.stop_reported = not judge_again
        if judge_again:
            # the forecast the run stopped on must not stop it again: it was made before the resume
            self.judge_after = self.forecaster.last_step

    def settle(self, step: int) -> Forecast | None:
        """The end of a run: take in a background refit still in flight (waiting for it) and hand its forecast
        to the listeners and sinks as a flush would; no stop decision, the run is over. Call it where every
        rank ends, like :meth:`flush`. A run that was stopped keeps the forecast that stopped it as its last."""
        if self.stopped_at is not None:
            return None
        forecast = self.guard("forecaster", self.forecaster.wait)
        if forecast is not None:
            self.refits += 1
            self.guard("stop rule", self._track, forecast)
            result = FlushResult(forecast=forecast, events=self._tell_listeners(step, forecast))
            none = FlushBatch(steps=np.array([step]), loss=np.array([np.nan]))
            self.guard("sinks", self._write, step, none, result)
            for event in result.events:
                self._emit(event)
        end = min(step, self.forecaster.total_steps or step)  # a run may go on past its planned length
        if self.figure_every and self._figure_at != end:
            # the run's last picture, whenever the last one due was drawn
            self.guard("sinks", self._figure, end)
            self.guard("sinks", self.sinks.flush)
        return forecast

    def draw_figure(self, step: int) -> None:
        """The figure at ``step`` now, unless the last one was drawn there (a sidecar's last, at the end of the
        log: the figures are drawn every few refits, and the last one came thousands of steps before the end)."""
        if self._figure_at != step:
            self.guard("sinks", self._figure, step)

    def _figure(
        self,
        step: int,
        stopping: bool = False,
        bar: float | None = None,
        lost: bool = False,
        pending: Sequence[Event] = (),
    ) -> None:
        """The figure at ``step`` (with the stop marked when ``stopping``, and ``bar``, the loss a sweep's stop
        could not beat, drawn as the target when there is none), when there is a forecast to draw; ``lost``: a
        run stopped as lost is drawn with its last fit, whose forecast the NaNs left stale; ``pending``: the
        flush's events, marked on it before they are emitted."""
        snapshot = self.snapshot(step, lost=lost, pending=pending)
        if snapshot is not None:
            if stopping and snapshot.target is None and bar is not None:
                snapshot = replace(snapshot, stop_step=step, target=bar, target_label="best run of its sweep")
            elif stopping:
                snapshot = replace(
                    snapshot, stop_step=step, stop_label="stopped as lost" if lost else "early stop"
                )
            self.sinks.write_figure(snapshot)
            self._figure_at = step

    def _tell_listeners(self, step: int, forecast: Forecast) -> list[Event]:
        events: list[Event] = []
        ending: BaseException | None = None
        for i, listener in enumerate(self.listeners):
            try:
                heard = self.guard(f"listener {_name(listener, i)}", listener.on_forecast, step, forecast)
            except BaseException as exc:  # re-raised below, once every listener has heard
                # a listener ends the run (Ray Tune raises SystemExit out of tune.report): the others hear this
                # forecast first (a sweep stopper records the run's end from the last forecast it heard)
                ending = ending or exc
                continue
            events.extend(heard or [])
        if ending is not None:
            raise ending
        return events

    def _track(self, forecast: Forecast) -> None:
        # The listeners' stop rules (sweep stoppers, pruners) see the forecast only: it carries the features
        # the monitor's own rule reads, so that every rule measures the same error.
        features = self.track.update(self.forecaster)
        fresh = forecast.ok and forecast is self.forecaster.latest and self.forecaster.schedule is not None
        if features is not None and fresh:
            forecast.stop_features = features

    def _decide(self, step: int) -> StopDecision | None:
        total = self.forecaster.total_steps
        cfg = self.stop
        if cfg.target_loss is None or total is None:
            return None
        latest = self.forecaster.latest
        if self.judge_after is not None and (latest is None or latest.fitted_at_step <= self.judge_after):
            return None
        return decide_stop(
            latest,
            cfg.target_loss,
            step=step,
            total_steps=total,
            confidence=cfg.confidence,
            min_fraction=cfg.min_fraction,
            min_steps=cfg.min_steps,
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
        if batch.lrs is not None and len(batch.lrs):
            # the LR beside the loss: the run's own TensorBoard folder then holds all the CLI needs to read it
            scalars["forecast/lr"] = float(batch.lrs[-1])
        if result.decision is not None and result.decision.probability is not None:
            scalars["forecast/p_miss_target"] = result.decision.probability
            # the level it stops at, beside it: a card of the probability alone scales its axis to the values
            # before the stop and leaves the one that stopped the run off the chart
            scalars["forecast/stop_confidence"] = self.stop.confidence
        if scalars:
            self.sinks.write_scalars(step, scalars)
        forecast = result.forecast
        due = False
        if forecast is not None:
            extras: dict[str, float] = {}
            if self.stop.target_loss is not None:
                extras["forecast/target"] = self.stop.target_loss
            advice = getattr(self.advisor, "scalars", None)
            if callable(advice):
                extras.update(self.guard("advisor", advice) or {})
            self.sinks.write_forecast(step, self._shown(forecast), extras)
            if self.figure_every and forecast.ok:
                self.usable_refits += 1
                due = (self.usable_refits - 1) % self.figure_every == 0
        # A flush that stops the run (see _act) draws the figure with the stop marked, due or not.
        decided = result.decision is not None and result.decision.stop and not self.stop_reported
        stopping = self.stopped_at is None and self.stop.action != "warn"
        stopping = stopping and (decided or any(e.is_critical for e in result.events))
        if self.figure_every and (due or stopping):
            # a sweep's stop: the loss the run could not beat is the best run's, drawn where a target would be
            bar = next((e.data.get("reference") for e in result.events if e.kind == "early_stop"), None)
            bar = bar if isinstance(bar, (int, float)) else None
            # a stop the stop rule did not decide: a sweep's (an early_stop event of a listener), else a lost run
            swept = any(e.kind == "early_stop" and e.is_critical for e in result.events)
            self._figure(step, stopping, bar, lost=stopping and not (decided or swept), pending=result.events)
        self.sinks.flush()

    def _shown(self, forecast: Forecast) -> Forecast:
        """The forecast as the sinks show it: one too vague to tell the final loss (:func:`too_early` at the
        stop's confidence: its band reaches below zero) keeps its fit but loses its points, with a note, as the
        console says "too early to forecast" (TensorBoard's cards drew 0.03 for a run heading to 0.14)."""
        early = too_early(forecast, float(self.stop.confidence))
        if early is None:
            return forecast
        return forecast.model_copy(
            update={"points": [], "warnings": [*forecast.warnings, f"[too_early] {early}"]}
        )

    def _act(self, step: int, result: FlushResult, final: bool = False) -> None:
        """Route events, then turn a stop decision or a critical event into ``result.stop`` per ``action`` (not
        at the ``final`` flush: the events are said, but the training they would stop has ended)."""
        stop_reason: str | None = None
        decision = result.decision
        if decision is not None and decision.stop and self.stopped_at is None and not self.stop_reported:
            self.stop_reported = True
            stop_reason = decision.reason
            result.events.append(
                Event(
                    kind="early_stop",
                    step=step,
                    severity="critical",
                    score=decision.probability,
                    message=stop_reason,
                    data={
                        "target_loss": self.stop.target_loss,
                        "confidence": self.stop.confidence,
                        "action": self.stop.action,
                    },
                )
            )
        if self.stop.action == "warn":
            # said as what it is: a report, not a stop
            result.events = [
                e.model_copy(update={"message": f"{e.message} (action='warn': the run goes on)"})
                if e.is_critical
                else e
                for e in result.events
            ]
        first = next((i for i, e in enumerate(result.events) if e.is_critical), None)
        acts = self.stopped_at is None and not final
        if (
            acts
            and first is not None
            and self.stop.action != "warn"
            and result.events[first].kind != "early_stop"
        ):
            # the sinks say a lost run was stopped as they say a target's stop (the status card ended at "stale")
            lost = result.events[first]
            result.events[first] = lost.model_copy(update={"data": {**lost.data, "action": self.stop.action}})
        for event in result.events:
            self._emit(event)
        if not acts or first is None:
            return
        critical = result.events[first]
        if critical.kind != "early_stop" and self.stop.action in ("raise", "stop"):
            self._tell("on_run_lost", step, critical.text())
        if self.stop.action == "raise":
            self.stopped_at, self.stop_reason = step, critical.text()
            result.error = TrainingHealthError(critical)
        elif self.stop.action == "stop":
            result.stop = True
            result.lost = critical.kind != "early_stop"
            # a sweep's stop (a listener's event) reads as the stop rule's own, the reason alone; a lost run's
            # keeps its kind and step, what it was lost to
            own = critical.message if critical.kind == "early_stop" else critical.text()
            result.reason = stop_reason or own
            self.stopped_at, self.stop_reason = step, result.reason

    def note(self, event: Event) -> None:
        """An event an adapter noticed outside the detectors (the LR schedule re-planned mid-run): logged,
        written to the sinks and handed to ``on_event`` like any other; it is no ground for a stop."""
        self._emit(event)

    def _emit(self, event: Event) -> None:
        self.events = [*self.events[-63:], event]
        if self.verbose:
            log_event(event, level=self.stop_log_level if event.kind == "early_stop" else None)
        self.guard("sinks", self.sinks.write_event, event)
        if self.on_event is not None:
            self.guard("on_event hook", self.on_event, event)

    # ----------------------------------------------------------------- figures
    def snapshot(
        self, step: int, points: int = 200, lost: bool = False, pending: Sequence[Event] = ()
    ) -> CurveSnapshot | None:
        """The observed (binned) curve and the forecast curve with its band from now to the final step;
        ``lost``: the run is being stopped as lost, and a fit the NaNs left stale is drawn as of its losses;
        ``pending``: this flush's events, not emitted yet, to mark beside the earlier ones."""
        fc = self.forecaster
        lrs = fc.schedule
        if lrs is None or fc.latest is None:
            return None
        stale = fc.latest.status is FitStatus.STALE
        if not (fc.latest.ok or (lost and stale)):
            return None
        total = len(lrs)
        obs = fc.observations()
        grid = np.unique(np.linspace(max(step, 1), total, points).round().astype(np.int64))
        curve = fc.forecast(steps=grid, stale_ok=lost)
        if not curve.ok:
            return None
        pts = curve.points
        final = curve.final
        past = np.unique(np.linspace(1, max(step, 1), points).round().astype(np.int64))
        title = f"step {step}/{total}: " + ("its last fit's final loss" if stale else "forecast final loss")
        if final is not None:
            title += f" {final.loss:.4f} [{final.lower:.4f}, {final.upper:.4f}] ({round(100 * curve.level)}%)"
        if stale and len(obs.end):
            title += f", fitted to the losses up to step {min(curve.fitted_at_step, int(obs.end[-1]))}"
        elif curve.fitted_at_step < step:  # a refit takes effect at the flush after the one it was made at
            title += f", fitted to step {curve.fitted_at_step}"
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
            target=self.stop.target_loss,
            lrs=lrs,
            title=title,
            fit_steps=past.astype(float),
            fit_mean=fc.predict(past),
            notes=[f"fit status: {'stale (the latest losses are NaN/Inf)' if stale else curve.status.value}"],
            events=[
                (e.step, e.kind, e.severity)
                for e in [*self.events, *pending]
                if e.kind in HEALTH_KINDS and e.step <= step
            ],
        )

    def close(self) -> None:
        """Flush and close the sinks (the adapter calls this at the end of training)."""
        self.sinks.flush()
        self.sinks.close()

    # ------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: the forecaster, the stop record, recent events and the plug-ins' state."""
        return {
            "version": 2,
            "forecaster": self.forecaster.state_dict(),
            "refits": self.refits,
            "usable_refits": self.usable_refits,
            "decision": None if self.decision is None else self.decision.model_dump(mode="json"),
            "track": self.track.state_dict(),
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "stop_reported": self.stop_reported,
            "judge_after": self.judge_after,
            "events": [e.model_dump(mode="json") for e in self.events],
            "detectors": [_state_of(d) for d in self.detectors],
            "listeners": [_state_of(x) for x in self.listeners],
            "advisor": None if self.advisor is None else _state_of(self.advisor),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (on resume), also from version 1 (whose detectors were ``health``).

        Plug-ins are restored when their count matches. Raises ``ValueError`` on an unknown version and lets
        a garbled state raise: an adapter catches both and starts a fresh history.
        """
        version = state.get("version")
        if version not in (1, 2):
            raise ValueError(f"unsupported monitor state version {version!r}")
        self.forecaster.load_state_dict(state["forecaster"])
        self.refits = int(state["refits"])
        self.usable_refits = int(state.get("usable_refits", 0))
        self.decision = None if state["decision"] is None else StopDecision.model_validate(state["decision"])
        if state.get("track") is not None:
            self.track.load_state_dict(state["track"])
        self.stopped_at = state["stopped_at"]
        self.stop_reason = state["stop_reason"]
        self.stop_reported = bool(state.get("stop_reported", self.stopped_at is not None))
        self.judge_after = state.get("judge_after")
        self.events = [Event.model_validate(e) for e in state["events"]]
        detectors = state.get("detectors", state.get("health", []))
        for plugins, saved in ((self.detectors, detectors), (self.listeners, state.get("listeners", []))):
            if len(saved) == len(plugins):
                for plugin, s in zip(plugins, saved, strict=True):
                    if s is not None and hasattr(plugin, "load_state_dict"):
                        plugin.load_state_dict(s)
        if state.get("advisor") is not None and hasattr(self.advisor, "load_state_dict"):
            self.advisor.load_state_dict(state["advisor"])  # type: ignore[union-attr]

    def __getstate__(self) -> dict[str, Any]:
        # Sinks hold open files and writers: they stay with the process that made them.
        state = self.__dict__.copy()
        state["sinks"] = FanoutSink(report=self.guard.report)
        return state


def _state_of(obj: Any) -> Any:
    fn = getattr(obj, "state_dict", None)
    return fn() if callable(fn) else None
