"""Where forecasts, health events and figures go: the :class:`Sink` protocol and a failure-isolating fan-out.

A sink receives host-side values only (floats, pydantic results, numpy arrays) and never touches the training
framework. Every adapter writes through a :class:`FanoutSink`, so one broken sink (a full disk, a closed
writer) is reported once and switched off while the others, and the training run, carry on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from scaleforecast.caller import warn_user
from scaleforecast.results import Forecast

if TYPE_CHECKING:
    from scaleforecast.events import Event

log = logging.getLogger(__name__)

__all__ = ["CurveSnapshot", "FanoutSink", "MetricsSink", "Sink"]


@dataclass(frozen=True)
class CurveSnapshot:
    """Everything a figure of the run needs, as plain arrays (so sinks stay free of the forecaster).

    ``observed_steps``/``observed_loss``: the (binned) losses seen so far; ``steps``/``mean``/``lower``/``upper``:
    the forecast curve and its central band at ``level`` from the current step to ``final_step``;
    ``lrs``: the planned per-update LR (element k = update k+1), drawn on a second axis when given;
    ``fit_steps``/``fit_mean``: the fitted law over the steps already seen (to judge the fit by eye);
    ``stop_step``: the step at which the run is being stopped early (the figure marks it), else ``None``;
    ``stop_label``: what that stop is (a stop rule's early stop, or a run stopped as lost);
    ``target_label``: what ``target`` is (a sweep's stop draws the best run's loss there);
    ``events``: the health events so far (the monitor keeps the latest 64) as (step, kind, severity), marked on
    the figure (a spike is often above its frame, and a drift is easier to believe beside the curve that
    drifted).
    """

    step: int
    final_step: int
    observed_steps: np.ndarray
    observed_loss: np.ndarray
    steps: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    level: float
    target: float | None = None
    lrs: np.ndarray | None = None
    title: str = ""
    fit_steps: np.ndarray | None = None
    fit_mean: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    stop_step: int | None = None
    stop_label: str = "early stop"
    target_label: str = "target"
    events: list[tuple[int, str, str]] = field(default_factory=list)


@runtime_checkable
class Sink(Protocol):
    """A destination for the monitor's output. Implementations may ignore what they cannot show.

    - ``write_forecast(step, forecast, extras)``: a new forecast made at optimizer step ``step``; ``extras`` are
      further scalars (tag -> value) such as the stop probability or an advice gain.
    - ``write_scalars(step, scalars)``: scalars outside a refit (observed loss, detector scores).
    - ``write_event(event)``: a health/advice/decision event (``scaleforecast.events.Event``).
    - ``write_figure(snapshot)``: a picture of the run and its forecast.
    - ``flush()`` / ``close()``.
    """

    def write_forecast(self, step: int, forecast: Forecast, extras: Mapping[str, float]) -> None: ...

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def write_event(self, event: Event) -> None: ...

    def write_figure(self, snapshot: CurveSnapshot) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class MetricsSink:
    """Each forecast as scalars for a metrics logger of another kind than TensorBoard (Lightning's ``CSVLogger``,
    W&B, MLflow): ``log(metrics, step)`` with TensorBoard's tags, ``forecast/final_loss``, ``forecast/lower``,
    ``forecast/upper``, ``forecast/std`` and the forecast's extras (``forecast/target``, ``forecast/p_miss_target``,
    the advice's scalars), finite values only. Events and figures stay in TensorBoard."""

    def __init__(self, log: Callable[[dict[str, float], int], Any]) -> None:
        self.log = log

    def write_forecast(self, step: int, forecast: Forecast, extras: Mapping[str, float]) -> None:
        final = forecast.final
        metrics: dict[str, float] = {}
        if final is not None:
            metrics.update(
                {
                    "forecast/final_loss": final.loss,
                    "forecast/lower": final.lower,
                    "forecast/upper": final.upper,
                    "forecast/std": final.std,
                }
            )
        metrics.update(extras)
        metrics = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
        if metrics:
            self.log(metrics, step)


class FanoutSink:
    """Forward every call to each of ``sinks``; a sink that raises is reported once and disabled.

    The error goes to ``report(part, detail)`` when given (the run monitor's guard, which names the adapter and
    the rank), else to ``warnings`` (category ``RuntimeWarning``) and the ``scaleforecast.sinks`` logger, with
    the sink's class name and the failing method; later calls skip that sink. Nothing ever propagates to the
    caller, because a sink must not take a training run down with it.
    """

    def __init__(self, sinks: Iterable[Any] = (), report: Callable[[str, str], None] | None = None) -> None:
        self.sinks: list[Any] = list(sinks)
        self.disabled: dict[int, str] = {}
        self.report = report

    def add(self, sink: Any) -> None:
        self.sinks.append(sink)

    @property
    def active(self) -> list[Any]:
        return [s for s in self.sinks if id(s) not in self.disabled]

    def __len__(self) -> int:
        return len(self.active)

    def _call(self, method: str, *args: Any) -> None:
        for sink in self.active:
            fn = getattr(sink, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as exc:  # a sink must never take the run down
                part, detail = f"{type(sink).__name__}.{method}", f"{type(exc).__name__}: {exc}"
                self.disabled[id(sink)] = f"{part} failed ({detail}); sink disabled"
                if self.report is not None:
                    self.report(part, detail)
                    continue
                log.warning(self.disabled[id(sink)], exc_info=True)
                warn_user(self.disabled[id(sink)])

    def write_forecast(self, step: int, forecast: Forecast, extras: Mapping[str, float]) -> None:
        self._call("write_forecast", step, forecast, extras)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._call("write_scalars", step, scalars)

    def write_event(self, event: Event) -> None:
        self._call("write_event", event)

    def write_figure(self, snapshot: CurveSnapshot) -> None:
        self._call("write_figure", snapshot)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")
