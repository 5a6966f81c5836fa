"""The keyword arguments every training adapter takes, validated once at construction.

:class:`ForecastArgs` documents them (the adapters take ``**kwargs: Unpack[ForecastArgs]``, so editors and type
checkers see every name); :class:`SessionConfig` (pydantic, strict, unknown keys forbidden) and
:func:`check_arguments` and :func:`check_plugins` validate them, with messages that name the argument.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from scaleforecast.events import Event
from scaleforecast.forecaster import ForecasterConfig, ScheduleLike
from scaleforecast.monitor import Action, Advisor, Count, Detector, Listener, Real

__all__ = ["ForecastArgs", "SessionConfig", "check_arguments", "check_optimizer", "check_plugins"]


def _as_path_text(value: Any) -> Any:
    return str(value) if isinstance(value, os.PathLike) else value


class SessionConfig(BaseModel):
    """The adapters' plain arguments, validated once (see :class:`ForecastArgs`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    total_steps: Count | None = Field(None, ge=1)
    param_group: Count = Field(0, ge=0)
    flush_every: Count = Field(50, ge=1)
    refit_every: Count | None = Field(None, ge=1)
    level: Real = Field(0.8, gt=0.0, lt=1.0)
    log_figures_every: Count = Field(5, ge=0)
    track_grad_norm: bool = False
    law: Literal["tissue", "mpl", "auto"] = "tissue"
    lam: Real = Field(0.999, ge=0.0, lt=1.0)
    verbose: bool = True
    dirpath: Annotated[str, BeforeValidator(_as_path_text)] | None = None


class ForecastArgs(TypedDict, total=False):
    """The keyword arguments every adapter takes (``LossForecast``, ``HFLossForecast``, ``LossForecastSession``).

    - ``confidence``: probability required to stop, in [0.5, 1); ``min_steps`` / ``min_fraction``: never stop
      before this optimizer step / this fraction of the run; ``action``: what a stop decision or a critical
      event does, ``"stop"`` (default), ``"warn"`` or ``"raise"`` (see :class:`scaleforecast.monitor.StopConfig`).
    - ``schedule``: the planned per-update LR (a spec such as ``"cosine:peak=3e-4,warmup=200,total=20000"``, a
      schedule model or an array); default: looked ahead from the run's LR scheduler(s).
    - ``total_steps``: the run's length in optimizer steps; default: the trainer's (``max_steps``).
    - ``param_group``: which param group of the (first) optimizer carries "the" LR.
    - ``flush_every``: move the buffered losses to the host (one collective) every this many steps.
    - ``refit_every``: refit the law every this many steps (it also refits early while data grow fast); default:
      a cadence that scales with the run (denser early, about 150 refits on a 1M-step run). Refits run on a
      worker thread and take effect at the next flush, on every rank the same;
      ``level``: coverage of the reported band, in (0, 1); ``law`` (``"tissue"``, ``"mpl"``, ``"auto"``) and
      ``lam`` (the decay of the law's annealing memory under ``memory="single"``; with the default two-timescale
      memory, tied to the run's length, it only sets the units of ``C``: see
      :class:`~scaleforecast.fitting.FitConfig`); ``forecaster_config``: a full
      :class:`~scaleforecast.forecaster.ForecasterConfig` instead of those four.
    - ``log_figures_every``: draw a forecast figure every this many usable refits (0: never).
    - ``writer``: a ``SummaryWriter``-like object, or ``False`` for no TensorBoard output; default: the
      trainer's own TensorBoard writer, else one under ``dirpath``.
    - ``track_grad_norm``: also buffer the gradient norm of each update (for the detectors).
    - ``detectors``: run on each flush before the refit; default ``[HealthMonitor()]`` (NaN/Inf losses, spikes,
      divergence from the law: :mod:`scaleforecast.detectors`), ``[]`` for none; ``listeners``: called with
      each new forecast (sweep reporters and stoppers); ``advisor``: schedule advice after each refit;
      ``on_event``: a hook called with every event.
    - ``verbose``: print each new forecast, re-plans and the stop on rank 0 (the events go to the Python logger
      ``scaleforecast.health`` either way: your logging configuration decides what shows).
    - ``family``: runs of one family (a sweep, an ablation, a longer rerun of one model on one data set) share
      their law: a new run borrows the fits of the family's finished runs as its prior, and at its end keeps its
      own fit for the next ones ("fit one, predict the rest"; :mod:`scaleforecast.family`). Default: the sweep
      of a ``SweepStopper`` listener, else none. ``family_store``: the registry that keeps the fits (a
      :class:`~scaleforecast.registry.RunRegistry` or a ``.sqlite`` path); default: the sweep's registry, else
      the default registry file named after the family.
    """

    confidence: float
    min_steps: int
    min_fraction: float
    action: Action
    schedule: ScheduleLike | None
    total_steps: int | None
    param_group: int
    flush_every: int
    refit_every: int | None
    level: float
    log_figures_every: int
    dirpath: str | os.PathLike[str] | None
    writer: Any
    track_grad_norm: bool
    detectors: Sequence[Detector] | None
    listeners: Sequence[Listener]
    advisor: Advisor | None
    on_event: Callable[[Event], None] | None
    forecaster_config: ForecasterConfig | dict[str, Any] | None
    law: str
    lam: float
    verbose: bool
    family: str | None
    family_store: Any


def _writer_like(obj: Any) -> bool:
    return obj is not None and all(callable(getattr(obj, m, None)) for m in ("add_scalar", "add_text"))


def _experiment(logger: Any) -> Any:
    try:  # a logger's experiment is a property that may create its writer (or fail to)
        return getattr(logger, "experiment", None)
    except Exception:
        return None


# the arguments of one adapter only, to say where a misplaced one belongs
_ADAPTER_ONLY = {
    "scheduler_every": "LossForecastSession",
    "process_group": "LossForecastSession",
    "resolution": "HFLossForecast",
    "name": "HFLossForecast",
}


def check_arguments(adapter: str, given: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming a keyword argument that is not one of :class:`ForecastArgs` (a misspelt
    name, or one that only another adapter takes), with the nearest name: unchecked, it came out as a
    ``TypeError`` of an internal class, or (``total_step=``) as the complaint that ``total_steps`` is missing."""
    for key in given:
        if key in ForecastArgs.__annotations__:
            continue
        owner = _ADAPTER_ONLY.get(key)
        if owner is not None and owner != adapter:
            raise ValueError(f"{key}: an argument of {owner}, not of {adapter}")
        near = difflib.get_close_matches(key, ForecastArgs.__annotations__, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ValueError(f"{key}: {adapter} takes no such argument{hint}")


def check_optimizer(optimizer: Any, schedulers: Sequence[Any], param_group: Any) -> None:
    """Raise ``ValueError`` for an optimizer, the list of its LR schedulers or a ``param_group`` a plain loop
    cannot use: not a torch optimizer, a schedule spec or other object in a scheduler's place, a param group the
    optimizer does not have (it made the plugin's hook fail inside the first ``optimizer.step()``)."""
    if not callable(getattr(optimizer, "step", None)) or not hasattr(optimizer, "param_groups"):
        raise ValueError(f"optimizer: expected a torch optimizer, got {type(optimizer).__name__}")
    for sched in schedulers:
        if isinstance(sched, str):
            raise ValueError(f"scheduler: got the string {sched!r}; a schedule spec goes in schedule=")
        if not callable(getattr(sched, "step", None)):
            raise ValueError(f"scheduler: expected a torch LR scheduler, got {type(sched).__name__}")
    groups = len(optimizer.param_groups)
    if isinstance(param_group, int) and not isinstance(param_group, bool) and not 0 <= param_group < groups:
        raise ValueError(f"param_group: {param_group}, but the optimizer has {groups} param group(s)")


def check_plugins(
    detectors: Sequence[Any], listeners: Sequence[Any], advisor: Any, on_event: Any, writer: Any
) -> None:
    """Raise ``ValueError`` naming the first plug-in that lacks its method, or a writer that is not
    ``SummaryWriter``-like."""
    for name, items, method in (("detectors", detectors, "check"), ("listeners", listeners, "on_forecast")):
        if not isinstance(items, Sequence) or isinstance(items, str):
            raise ValueError(
                f"{name}: expected a list, got {type(items).__name__} (pass [{type(items).__name__}(...)])"
            )
        for i, item in enumerate(items):
            if not callable(getattr(item, method, None)):
                raise ValueError(f"{name}[{i}]: {type(item).__name__} has no {method}() method")
    if advisor is not None and not callable(getattr(advisor, "advise", None)):
        raise ValueError(f"advisor: {type(advisor).__name__} has no advise() method")
    if on_event is not None and not callable(on_event):
        raise ValueError(f"on_event: must be callable, got {type(on_event).__name__}")
    if writer not in (None, False) and not _writer_like(writer):
        # a logger (Fabric's, Lightning's) wraps its SummaryWriter as .experiment
        inner = (
            " (pass its .experiment, the SummaryWriter it wraps)" if _writer_like(_experiment(writer)) else ""
        )
        raise ValueError(
            f"writer: {type(writer).__name__} is not SummaryWriter-like (add_scalar, add_text){inner}"
        )
