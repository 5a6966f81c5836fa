"""The early-stopping rule: stop a run whose forecast final loss cannot beat a reference.

One pure function, shared by every adapter (Lightning, HF Trainer, sweep engines), so that every rank and
every framework takes the same decision from the same forecast.
"""

from __future__ import annotations

import abc
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from statistics import NormalDist
from typing import Any

from pydantic import BaseModel

from scaleforecast.calibration import ErrorModel, load_error_model
from scaleforecast.events import Event
from scaleforecast.evidence import StopFeatures, bare_features, features_from_forecast
from scaleforecast.job import job_rank, job_run_id, job_world_size
from scaleforecast.registry import BackgroundRegistry, RunRecord, RunRegistry, RunState, open_registry, where
from scaleforecast.results import USABLE_STATUSES, FitStatus, Forecast

_log = logging.getLogger(__name__)
# the statuses whose forecasts set a sweep's bar: the usable ones, less ``law_violated`` (a run off its law has a
# widened band around a curve it has left; it is published, but nobody is measured against it)
_USABLE = tuple(s.value for s in USABLE_STATUSES if s is not FitStatus.LAW_VIOLATED)

DEFAULT_CONFIDENCE = 0.98
"""The stop rule's default confidence. A false stop kills a run that would have made it, so the default errs on
that side: replayed out of sample (``benchmarks/early_stop.py``), the rule stops about 1 % of runs whose target
is 1 % above their final loss at 0.98, and 2-4 % at 0.95 (which stops unreachable runs a little earlier)."""


class StopDecision(BaseModel):
    """The outcome of :func:`decide_stop`: whether to stop, why, the measured confidence it was based on and the
    forecast's error scale (relative, log units).

    >>> from scaleforecast import decide_stop
    >>> decision = decide_stop(None, 2.0, step=600, total_steps=1000)
    >>> decision.stop, decision.reason
    (False, 'no forecast')
    """

    stop: bool
    reason: str
    probability: float | None = None
    reference: float | None = None
    step: int
    scale: float | None = None
    set_by: str | None = None  # the run whose loss is the bar of a sweep's stop


def decide_stop(
    forecast: Forecast | None,
    reference: float | None,
    *,
    step: int,
    total_steps: int,
    confidence: float = DEFAULT_CONFIDENCE,
    min_fraction: float = 0.0,
    min_steps: int = 0,
    features: StopFeatures | None = None,
    model: ErrorModel | None = None,
) -> StopDecision:
    """Stop when the forecast final loss ``m`` is above ``reference`` by more than its *measured* error allows.

    The margin is read in units of the forecast's error scale ``s`` (:meth:`ErrorModel.scale` of ``features``:
    the fraction of the run seen, the LR phase, the run's own backtest), ``z = log(m / reference) / s``, and
    ``probability`` is :meth:`ErrorModel.confidence` of it: the share of replayed real runs whose forecasts were
    never ``z`` scales too pessimistic about their own final loss. It stops when ``probability >= confidence``,
    so a stop at confidence ``c`` would have been wrong (the run would have reached ``reference``) in at most
    ``1 - c`` of those runs. Without ``features`` it uses what the forecast carries (``features_from_forecast``:
    a wider, conservative scale); ``model`` defaults to the shipped :func:`load_error_model`.

    The rule speaks from the first usable forecast: the error model, not a grace period, keeps it silent while
    the forecast is poorly determined. ``min_steps``/``min_fraction`` add an explicit grace,
    ``step >= max(min_steps, min_fraction * total_steps)``, for users who want one. It never stops without a
    reference, on a forecast without numbers (status ``insufficient_data`` or ``failed``), on one of a run
    that has left its law (status ``law_violated``: the error was measured on runs that follow theirs), on
    one the law check could not judge yet (``features.law_checked`` False: a loss climbing right after the
    warm-up is not yet told from one still falling), nor on one whose own band puts more than
    ``1 - confidence`` of its mass below zero (``loss < z_c * std``: the fit cannot tell the final loss yet).
    """
    check_probability("confidence", confidence)

    def no_stop(reason: str) -> StopDecision:
        return StopDecision(stop=False, reason=reason, reference=reference, step=step)

    if reference is None:
        return no_stop("no reference loss to beat")
    grace = max(min_steps, int(min_fraction * total_steps))
    if step < grace:
        return no_stop(f"grace period: step {step} < {grace}")
    if step >= total_steps:  # a stop would throw away a finished result and save nothing
        return no_stop(f"the run has reached its last step ({total_steps})")
    if forecast is None or forecast.status in (FitStatus.INSUFFICIENT_DATA, FitStatus.FAILED):
        return no_stop("no forecast" if forecast is None else f"fit status {forecast.status.value}")
    if forecast.status is FitStatus.LAW_VIOLATED:
        # the error model was measured on forecasts of runs that follow their law; this one's band is a guess
        # at where a departure goes, and a run off its law is the health detectors' to judge
        return no_stop("the loss has left the fitted law: its forecast is no ground for a stop")
    final = forecast.final
    if final is None:
        return no_stop("forecast has no final-step point")
    features = features or features_from_forecast(forecast)
    if features is None or not math.isfinite(reference) or not (math.isfinite(final.loss) and final.loss > 0):
        return no_stop("forecast holds no usable number")
    if not features.law_checked:
        return no_stop(
            "too few losses after the LR peak to check the law yet: the forecast is no ground for a stop"
        )
    if reference > 0 and too_vague(final.loss, final.std, confidence):
        # the fit's own band puts more than 1 - confidence of its mass below zero, where no loss can be: it
        # cannot tell the final loss yet (a run in a transient, a law extrapolated far), whatever its mean says
        return no_stop(
            f"the forecast's own band ({final.loss:.4f} +- {final.std:.4f}) reaches below zero: the fit cannot "
            "tell the final loss yet"
        )
    model = model or load_error_model()
    scale = model.scale(features)
    if reference <= 0:  # a loss cannot go below zero: out of reach whatever the error
        z, p = math.inf, 1.0
    else:
        z = math.log(final.loss / reference) / scale
        p = model.confidence(z)
    k = model.threshold(confidence)
    made = f"forecasts made at {100 * features.fraction:.0f} % of a run"
    if features.phase is None:  # only the forecast is known: say why the scale is wide
        made += " (without the run's record: the conservative fallback scale)"
    margin = 100 * (math.exp(k * scale) - 1) if math.isfinite(k) else None  # the gap a stop needs, in %
    if p >= confidence:
        above = 100 * (final.loss / reference - 1) if reference > 0 else math.inf
        # ">=": a forecast that just crossed the margin is the margin to the digits shown ("more than" it read)
        shown = "more than the error" if margin is None else f">= {margin:.2f} %, the error"
        reason = (
            f"forecast final loss {final.loss:.4f} at step {forecast.final_step} cannot reach {reference:.4f}: "
            f"it is {above:.2f} % above it, {shown} measured for {made}; "
            f"confidence {p:.3f} >= {confidence:.2f}"
        )
        if final.lower <= reference <= final.upper:
            # the band printed beside the stop holds the target: say which of the two the stop trusts, and why
            reason += (
                f" (the fit's own band [{final.lower:.4f}, {final.upper:.4f}] holds {reference:.4f}, but the "
                "forecasts of real runs made this far erred less than that band)"
            )
        return StopDecision(
            stop=True, reason=reason, probability=p, reference=reference, step=step, scale=scale
        )
    if margin is None:
        reason = (
            f"confidence {confidence:.3f} is more than the error model's calibration runs can certify "
            f"(at most {model.max_confidence:.3f}): no stop"
        )
    else:
        reason = (
            f"forecast {final.loss:.4f} vs {reference:.4f} (a stop needs it above by {margin:.2f} %, the "
            f"error measured for {made}): confidence {p:.3f} < {confidence:.2f}"
        )
    return StopDecision(stop=False, reason=reason, probability=p, reference=reference, step=step, scale=scale)


def check_probability(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` (a confidence or a quantile) lies in [0.5, 1)."""
    if not 0.5 <= value < 1.0:
        raise ValueError(f"{name} must be in [0.5, 1), got {value}")


def too_vague(loss: float, std: float, confidence: float = DEFAULT_CONFIDENCE) -> bool:
    """Whether a forecast ``loss +- std`` puts more than ``1 - confidence`` of its mass below zero, where no loss
    can be (``loss < z_c * std``): it cannot tell the final loss yet, whatever its mean says, so it neither
    stops its own run, nor sets another run's bar, nor is reported for a sweep engine to rank."""
    return loss < NormalDist().inv_cdf(confidence) * std


def too_early(forecast: Forecast, confidence: float = DEFAULT_CONFIDENCE) -> str | None:
    """ "too early to forecast: ..." for a forecast :func:`too_vague` at ``confidence`` (its band reaching below
    zero), else ``None``: what the console prints instead of the forecast, and the note the sinks draw instead of
    its numbers."""
    final = forecast.final
    if final is None or not too_vague(final.loss, final.std, confidence):
        return None
    return (
        f"too early to forecast: the loss at step {forecast.final_step} could be anywhere in "
        f"[{final.lower:.4f}, {final.upper:.4f}]"
    )


def sweep_reference(
    records: Iterable[RunRecord],
    *,
    exclude: str | None = None,
    target: float | None = None,
    quantile: float = 0.8,
    max_age_s: float | None = None,
    now: float | None = None,
    rel_std_floor: float = 0.0,
    model: ErrorModel | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> float | None:
    """The loss a run has to beat in its sweep: the smallest of ``target``, the other runs' final losses and
    the other running runs' *confident* forecasts.

    A running run's forecast counts at the loss it stays below with probability ``quantile``: with an error
    ``model`` (:mod:`scaleforecast.calibration`), ``loss * exp(k_q * scale)``, where ``k_q`` is the measured
    optimistic margin of forecasts (:meth:`ErrorModel.optimistic_margin`) and ``scale`` the run's error scale,
    at least ``rel_std_floor``: the model's scale of the record's own ``features`` (the run's stop features,
    published with its forecast), else its conservative ``fallback`` at ``step / total_steps``;
    without a model, the normal quantile ``loss + z_q * std`` with the std widened to
    ``sqrt(std^2 + (rel_std_floor * loss)^2)``. Only forecasts whose fit status holds numbers count, so one
    lucky, uncertain forecast cannot set the bar, nor can one too vague to stop its own run: a band that puts
    more than ``1 - confidence`` of its mass below zero (``loss < z_c * std``, as :func:`decide_stop` refuses
    it; a first forecast of 0.87 +- 0.71 for a run ending at 2.56 set a bar that stopped a sweep's best run).
    Stopped runs deliver no model and never count. ``exclude`` is the asking run; ``max_age_s`` drops running
    records not updated for that long (a run that died). None when nothing counts.
    """
    values = _reference_values(records, exclude, quantile, max_age_s, now, rel_std_floor, model, confidence)
    return _lowest(values, target)[0]


def _lowest(
    values: Iterable[tuple[RunRecord, float]], target: float | None
) -> tuple[float | None, RunRecord | None]:
    """The smallest of ``target`` and the records' values, and the record that has it (``None`` when the target
    does, or nothing counts)."""
    best = target if target is not None and math.isfinite(target) else None
    setter: RunRecord | None = None
    for record, value in values:
        if best is None or value < best:
            best, setter = value, record
    return best, setter


def _reference_values(
    records: Iterable[RunRecord],
    exclude: str | None,
    quantile: float,
    max_age_s: float | None,
    now: float | None,
    rel_std_floor: float,
    model: ErrorModel | None,
    confidence: float,
) -> Iterator[tuple[RunRecord, float]]:
    """Each record that counts in :func:`sweep_reference`, with the loss it counts at."""
    check_probability("quantile", quantile)
    if rel_std_floor < 0:
        raise ValueError(f"rel_std_floor must be >= 0, got {rel_std_floor}")
    z = NormalDist().inv_cdf(quantile)
    k = model.optimistic_margin(quantile) if model is not None else 0.0
    now = time.time() if now is None else now
    for r in records:
        if r.run_id == exclude or r.state == RunState.STOPPED:
            continue
        if r.state == RunState.FINISHED:
            value = r.final_loss
        else:
            if max_age_s is not None and now - r.updated > max_age_s:
                continue
            if r.loss is None or r.status not in _USABLE or too_vague(r.loss, r.std or 0.0, confidence):
                continue
            if model is not None:
                scale = model.scale(r.features or bare_features(r.step, r.total_steps, r.loss, r.std or 0.0))
                value = r.loss * math.exp(k * max(scale, rel_std_floor))
            else:
                value = r.loss + z * math.hypot(r.std or 0.0, rel_std_floor * r.loss)
        if value is not None and math.isfinite(value):
            yield r, value


def _sweep_model(rel_std_floor: float, model: ErrorModel | None = None) -> ErrorModel:
    """The error model a sweep decision reads: ``model`` (default: the shipped one), its floor at least
    ``rel_std_floor``."""
    model = model or load_error_model()
    if rel_std_floor > 0:
        model = model.model_copy(update={"floor": max(model.floor, rel_std_floor)})
    return model


def decide_stop_in_sweep(
    forecast: Forecast | None,
    registry: RunRegistry,
    run_id: str,
    *,
    step: int,
    total_steps: int,
    target: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    min_fraction: float = 0.0,
    min_steps: int = 0,
    quantile: float = 0.8,
    rel_std_floor: float = 0.0,
    publish: bool = True,
    features: StopFeatures | None = None,
    model: ErrorModel | None = None,
) -> StopDecision:
    """:func:`decide_stop` against :func:`sweep_reference` read from ``registry``.

    With ``publish`` the run's own forecast is written to the registry first (when it holds numbers), so that
    the other runs see it (its own std, unwidened, and its stop features, so that they read its forecast with
    its measured error).
    ``rel_std_floor``, ``features`` and ``model``: see :func:`decide_stop_among`. Registry errors propagate:
    callers inside a training loop catch them.
    """
    if publish and forecast is not None and forecast.ok and forecast.final is not None:
        final = forecast.final
        registry.report_forecast(
            run_id,
            step=step,
            loss=final.loss,
            std=final.std,
            status=forecast.status.value,
            total_steps=total_steps,
            features=features or forecast.stop_features,
        )
    return decide_stop_among(
        forecast,
        registry.others(run_id),
        step=step,
        total_steps=total_steps,
        target=target,
        confidence=confidence,
        min_fraction=min_fraction,
        min_steps=min_steps,
        quantile=quantile,
        rel_std_floor=rel_std_floor,
        features=features,
        model=model,
    )


def decide_stop_among(
    forecast: Forecast | None,
    records: Iterable[RunRecord],
    *,
    step: int,
    total_steps: int,
    target: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    min_fraction: float = 0.0,
    min_steps: int = 0,
    quantile: float = 0.8,
    max_age_s: float | None = None,
    rel_std_floor: float = 0.0,
    features: StopFeatures | None = None,
    model: ErrorModel | None = None,
) -> StopDecision:
    """:func:`decide_stop` against :func:`sweep_reference` of the other runs' ``records``, both with the same
    measured error ``model`` (default: the shipped one).

    The rule every sweep engine applies, whether its records come from a :class:`RunRegistry` or from an
    Optuna study; ``records`` must not hold the deciding run itself. ``features`` are the deciding run's own
    (:class:`scaleforecast.evidence.ForecastTrack`); without them, those the forecast carries (the run
    monitor attaches them), else what the forecast alone tells, with a wider scale.
    ``rel_std_floor`` is the smallest error scale assumed for any forecast, this run's and the others'.
    """
    model = _sweep_model(rel_std_floor, model)
    values = _reference_values(records, None, quantile, max_age_s, None, rel_std_floor, model, confidence)
    reference, setter = _lowest(values, target)
    decision = decide_stop(
        forecast,
        reference,
        step=step,
        total_steps=total_steps,
        confidence=confidence,
        min_fraction=min_fraction,
        min_steps=min_steps,
        features=features,
        model=model,
    )
    if decision.stop and setter is not None:
        # which run set the bar, in the reason every engine shows (an Optuna trial's named none); a finished
        # run's final loss as recorded: its last forecast's, a denoised estimate of its end
        what = "recorded final loss" if setter.state == RunState.FINISHED else "confident forecast"
        said = f"; the bar, {reference:.4g}, is the {what} of run {setter.run_id}"
        decision = decision.model_copy(update={"reason": decision.reason + said, "set_by": setter.run_id})
    return decision


class ForecastStopCheck(abc.ABC):
    """The listener face of a forecast stopper ``stopper(step, forecast) -> bool``.

    The run monitor (and so every training adapter: ``LossForecast(listeners=[stopper])``) calls
    :meth:`on_forecast` with each new forecast right after the refit that made it. When the stopper says stop,
    it returns one critical ``early_stop`` event, and the monitor's ``action`` (``"stop"`` by default) stops
    training; the adapters agree on it across ranks, so every rank stops at the same step. Once the stopper has
    stopped, it is not asked again.
    """

    @abc.abstractmethod
    def __call__(self, step: int, forecast: Forecast | None) -> bool:
        """Decide on ``forecast`` made at ``step``; True means: stop this run now."""

    @abc.abstractmethod
    def _has_stopped(self) -> bool: ...

    @abc.abstractmethod
    def _stop_event(self, step: int, latest: Forecast) -> Event: ...

    def on_run_end(self, step: int, stopped: bool) -> None:  # noqa: B027  (a stopper may keep no record)
        """The training adapters call it once, where the run ends normally (at ``step``; ``stopped``: by any
        rule), on every rank."""

    def on_forecast(self, step: int, forecast: Forecast) -> list[Event]:
        """Ask the stopper about the new ``forecast`` at ``step``: one critical ``early_stop`` event, or none."""
        if self._has_stopped() or not self(step, forecast):
            return []
        return [self._stop_event(step, forecast)]


class SweepStopper(ForecastStopCheck):
    """Stop a run that cannot beat the rest of its sweep, through a shared :class:`RunRegistry`.

    >>> import os, tempfile
    >>> from scaleforecast import SweepStopper
    >>> stopper = SweepStopper(os.path.join(tempfile.mkdtemp(), "sweep.sqlite"), run_id="lr-3e-4", rank=0)
    >>> stopper(600, None)  # (step, forecast) -> stop now?
    False
    >>> stopper.finish(final_loss=2.9)

    ``stopper(step, forecast) -> bool`` publishes the run's forecast (with its stop features) and applies
    :func:`decide_stop_among` against the other runs' records; the forecasts the run monitor hands its listeners
    carry the run's stop features, so the stopper reads the same measured error as the monitor's own rule. It is
    also a listener of the run monitor, so the training adapters take it
    as ``LossForecast(listeners=[stopper])``: a stop becomes a critical ``early_stop`` event.
    The training adapters call :meth:`finish` where the run ends (call it yourself in a loop of your own), so
    the others learn its final loss (or that it stopped). A run that died never says so: a running run's
    record not updated for ``max_run_age_s`` (default a day; a run refits at least every hundredth of its
    length) no longer counts as a reference.

    The training thread never waits on the registry: writes are queued to a :class:`BackgroundRegistry`
    worker and each decision uses the records the worker last read (a read is asked for at every call and
    made at most once a second). When the storage is locked or gone, the worker logs one warning and
    retries in the background; decisions go on from the last records read while they are younger than
    ``max_records_age_s`` and against ``target`` alone after that; everything queued lands when the storage
    comes back. :meth:`sync` waits (bounded) for the worker, for tests and set-up.

    One multi-process job is one run: global rank 0 (from ``rank=``, else the launcher's environment, see
    :mod:`scaleforecast.job`) writes; every rank reads and decides against the same records, excluding the
    job's own. ``run_id`` defaults to the job's id from the environment for a multi-process job (the ``k``-th
    stopper of a process gets ``-k`` appended, the same on every rank), else a unique ``host-pid-random``
    name drawn at construction (so copies pickled to spawned ranks share it). A non-zero rank that cannot
    learn the job's id (no id in the environment and none passed to :meth:`bind`) leaves the decision to
    rank 0, whose stop every adapter applies on all ranks. Adapters that know the rank (``trainer.global_rank``)
    should pass it to :meth:`bind`: a spawned rank may find no rank in its environment.

    ``registry`` is a :class:`RunRegistry`, a SQLite path, or ``None`` for the default SQLite file of ``sweep``
    (``~/.cache/scaleforecast/<sweep>.sqlite``): no set-up needed. ``sweep`` defaults to one per training
    script and working directory (:func:`scaleforecast.registry.default_sweep`): name it to share a sweep
    between scripts, or to keep apart the sweeps one script runs. ``timeout_s``: how long one registry call
    of the worker may wait for a lock before it is retried later.
    """

    _made_in_process = 0

    def __init__(
        self,
        registry: RunRegistry | str | Path | None = None,
        run_id: str | None = None,
        *,
        sweep: str | None = None,
        target: float | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
        min_fraction: float = 0.0,
        min_steps: int = 0,
        quantile: float = 0.8,
        rel_std_floor: float = 0.0,
        rank: int | None = None,
        timeout_s: float = 2.0,
        max_records_age_s: float = 600.0,
        finish_timeout_s: float = 10.0,
        max_run_age_s: float | None = 86_400.0,
    ) -> None:
        from scaleforecast.monitor import StopConfig, checked  # here: the monitor imports this module

        try:  # the stop's arguments as the adapters check theirs (a target of "3.1" switched the stopper off)
            checked(
                StopConfig,
                target_loss=target,
                confidence=confidence,
                min_steps=min_steps,
                min_fraction=min_fraction,
            )
        except ValueError as err:
            raise ValueError(str(err).replace("target_loss:", "target:", 1)) from None
        if isinstance(registry, str) and not Path(registry).suffix and os.sep not in registry:
            # SweepStopper("lr-sweep") opened a database file named lr-sweep in the working directory
            raise ValueError(
                f"registry: {registry!r} reads as a sweep's name, not a database file (no suffix): name the sweep "
                f"with sweep={registry!r}, or give the file with its suffix ({registry}.sqlite)"
            )
        if (
            max_records_age_s <= 0
            or finish_timeout_s < 0
            or (max_run_age_s is not None and max_run_age_s <= 0)
        ):
            raise ValueError("max_records_age_s and max_run_age_s must be > 0 and finish_timeout_s >= 0")
        self.registry = open_registry(registry, sweep)
        # the default sweep (one per script and folder) holds the runs of earlier invocations too: said at a stop
        self._default_sweep = registry is None and sweep is None
        self.target = target
        self.confidence = confidence
        self.min_fraction = min_fraction
        self.min_steps = min_steps
        self.quantile = quantile
        self.rel_std_floor = rel_std_floor
        self.max_records_age_s = float(max_records_age_s)
        self.max_run_age_s = max_run_age_s
        self.finish_timeout_s = float(finish_timeout_s)
        self.decision: StopDecision | None = None
        self.stopped_at: int | None = None
        self.last_forecast: Forecast | None = None
        self._worker = BackgroundRegistry(self.registry, timeout_s=timeout_s)
        self._ordinal = SweepStopper._made_in_process
        SweepStopper._made_in_process += 1
        self._rank: int | None = None if rank is None else int(rank)
        self._run_id: str | None = run_id
        self._knows_job: bool | None = True if run_id is not None else None
        self._given_id = run_id is not None
        self._runs = 0  # runs before this one with this stopper (a reused one: a sweep loop, HF's search)
        self._finished = False
        self._own_id = _own_run_id()
        self._worker.refresh()  # the first read starts now, off this thread

    # The job's identity is read from the environment when first needed, not at construction: a launcher
    # (Lightning's DDP, torchrun's agent) may set the ranks after the user built the stopper.
    @property
    def rank(self) -> int:
        """This process's global rank (``rank=``, :meth:`bind`, else the launcher's environment)."""
        if self._rank is None:
            self._rank = job_rank()
        return self._rank

    @property
    def run_id(self) -> str:
        """The job's run id in the registry (see the class docstring)."""
        if self._run_id is None:
            shared = job_run_id()
            explicit = bool(os.environ.get("SCALEFORECAST_RUN_ID", "").strip())
            if shared is not None and (explicit or job_world_size() > 1 or self.rank != 0):
                self._run_id = (
                    shared
                    + (f"-{self._ordinal}" if self._ordinal else "")
                    + (f"-r{self._runs}" if self._runs else "")
                )
                self._knows_job = True
            else:
                self._run_id = self._own_id
                self._knows_job = self.rank == 0
        return self._run_id

    @property
    def knows_job(self) -> bool:
        """Whether this process can tell its job's own record among the sweep's (rank 0 always can)."""
        _ = self.run_id
        return bool(self._knows_job)

    def bind(self, *, rank: int | None = None, run_id: str | None = None) -> None:
        """Tell the stopper its global rank and the job's run id (the same on every rank), e.g. from an
        adapter that owns a process group: ``trainer.global_rank`` and rank 0's ``run_id`` broadcast."""
        if rank is not None:
            self._rank = int(rank)
        if run_id is not None:
            self._run_id, self._knows_job, self._given_id = run_id, True, True

    def on_run_resume(self, run_id: str) -> None:
        """The run resumes from a checkpoint whose saved state recorded ``run_id`` (the training adapters call
        it): it goes on under that id, so that the sweep holds one record of it, not the one it left running
        before the restart (a reference for a day) and another. An id given as ``run_id=`` stands."""
        if not self._given_id:
            self._run_id, self._knows_job = run_id, True

    def on_run_start(self) -> None:
        """A run starts (the training adapters call it where a run starts from its first step). After a
        :meth:`finish`, another run reuses this stopper: a sweep loop, or HF's ``hyperparameter_search``, which
        runs every trial with the same callbacks. It is judged afresh and recorded under a run id of its own
        (it overwrote the last run's record and inherited its stop); an id given as ``run_id=`` or to
        :meth:`bind` is kept, with a warning (the new run replaces the last one's record)."""
        if not self._finished:
            return
        self._finished = False
        self.stopped_at = self.decision = self.last_forecast = None
        self._runs += 1
        # the records read before the last run's end hold it as running, at its last forecast: the next run's
        # bar named it "the confident forecast of run X" after X had recorded a lower final loss
        self._worker.forget()
        if self._given_id:
            _log.warning(
                "scaleforecast sweep stopper: a new run reuses the run id %r given to this stopper: its record "
                "replaces the last run's (give each run its own stopper or run_id)",
                self._run_id,
            )
            return
        self._draw_run_id()

    @property
    def writes(self) -> bool:
        """Whether this process writes the job's record (global rank 0)."""
        return self.rank == 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_worker"] = self._worker.__getstate__()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        worker = BackgroundRegistry.__new__(BackgroundRegistry)
        worker.__setstate__(state.pop("_worker"))
        self.__dict__.update(state)
        self._worker = worker
        if not self._given_id:
            # a copy sent to another process (a Ray Tune trial, a multiprocessing worker) is another run: with the
            # id drawn where it was built, every trial wrote one record and took the others' for its own
            self._draw_run_id()

    def _draw_run_id(self) -> None:
        """This stopper's next run gets an id of its own (read from the job, or drawn, when first needed)."""
        self._run_id, self._knows_job, self._own_id = None, None, _own_run_id()

    def __call__(self, step: int, forecast: Forecast | None) -> bool:
        """Publish and decide; True means: stop this run now. Never waits on the registry."""
        if self.stopped_at is not None:
            return True
        if forecast is not None and forecast.ok:
            self.last_forecast = forecast
        total = forecast.final_step if forecast is not None else None
        if total is None:
            return False
        if self.writes and forecast is not None and forecast.ok and forecast.final is not None:
            self._worker.post_forecast(
                self.run_id,
                step=step,
                loss=forecast.final.loss,
                std=forecast.final.std,
                status=forecast.status.value,
                total_steps=total,
                features=forecast.stop_features,
            )
        self._worker.refresh()
        if not self.knows_job:
            self.decision = StopDecision(
                stop=False, reason=f"rank {self.rank} cannot tell its job's record: rank 0 decides", step=step
            )
            return False
        self.decision = decide_stop_among(
            forecast,
            self._others(),
            step=step,
            total_steps=total,
            target=self.target,
            confidence=self.confidence,
            min_fraction=self.min_fraction,
            min_steps=self.min_steps,
            quantile=self.quantile,
            max_age_s=self.max_run_age_s,
            rel_std_floor=self.rel_std_floor,
        )
        if self.decision.stop:
            self.stopped_at = step
            when = self._bar_where(self.decision)
            self.decision = self.decision.model_copy(update={"reason": self.decision.reason + when})
        return self.decision.stop

    def _others(self) -> list[RunRecord]:
        """The other runs' records from the worker's last read, or none when that read is too old."""
        snap = self._worker.snapshot()
        if snap is None or snap.age_s > self.max_records_age_s:
            return []
        return [r for r in snap.records if r.run_id != self.run_id]

    @property
    def registry_failure(self) -> str | None:
        """The registry's current error (``None`` while it answers)."""
        return self._worker.failure

    def sync(self, timeout_s: float = 30.0) -> bool:
        """Wait up to ``timeout_s`` until every queued write landed and a fresh read of the records is in;
        True when it was. For set-up and tests: the training loop never needs it."""
        return self._worker.sync(timeout_s)

    def _has_stopped(self) -> bool:
        return self.stopped_at is not None

    def _stop_event(self, step: int, latest: Forecast) -> Event:
        d = self.decision
        return Event(
            kind="early_stop",
            step=step,
            severity="critical",
            score=None if d is None else d.probability,
            message=f"cannot beat its sweep {self.registry.sweep!r}: {d.reason if d is not None else ''}",
            data={"source": "sweep", "reference": None if d is None else d.reference},
        )

    def _bar_where(self, decision: StopDecision) -> str:
        """When and where the run that set the bar recorded it: a sweep that names none is one per script and
        folder, so an earlier invocation's runs (another task, other data) may be the ones a run is judged
        against."""
        setter = next((r for r in self._others() if r.run_id == decision.set_by), None)
        if setter is None:
            return ""
        hint = (
            "; runs that name no sweep share one per script and folder: SweepStopper(sweep=...) keeps sweeps apart"
            if self._default_sweep
            else ""
        )
        return f" (recorded {_age_text(time.time() - setter.updated)} ago in {where(self.registry)}{hint})"

    def on_run_end(self, step: int, stopped: bool) -> None:
        """:meth:`finish`, called by the training adapters where the run ends (``stopped`` also for a run that
        ended before its last step: its forecast then is not a final loss the other runs must beat)."""
        self.finish(stopped=stopped)

    def finish(self, final_loss: float | None = None, *, stopped: bool = False) -> None:
        """Record the run's end (rank 0 only): ``stopped`` if this stopper or another rule (``stopped``) stopped
        it, else ``finished`` with ``final_loss`` (default: the mean of the latest forecast, a denoised estimate
        of the final loss). The training adapters call it (:meth:`on_run_end`); a second call changes nothing.

        Waits at most ``finish_timeout_s`` for the record to land (the run is over; a locked registry costs
        that bound, with a warning, and the write keeps being retried while the process lives)."""
        self._finished = True
        if not self.writes:
            self._worker.close()
            return
        if final_loss is None and self.last_forecast is not None and self.last_forecast.final is not None:
            final_loss = self.last_forecast.final.loss
        state = RunState.STOPPED if self.stopped_at is not None or stopped else RunState.FINISHED
        self._worker.post_final(self.run_id, final_loss, state=state)
        if self._worker.drain(self.finish_timeout_s) or self._worker.unusable is not None:
            self._worker.close()  # its thread ends; a later call would start another (an unusable one: said)
        else:
            _log.warning(
                "scaleforecast sweep stopper: the end of run %s is not recorded yet (%s); still retrying",
                self.run_id,
                self._worker.failure or "registry busy",
            )


def _own_run_id() -> str:
    """A run id no other process or run draws: ``host-pid-random``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _age_text(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it above one: ``"40 s"``, ``"12 min"``, ``"3.2 h"``, ``"2.0 d"``."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"
