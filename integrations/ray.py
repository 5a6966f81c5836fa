"""Ray Tune: report the forecast final loss so that ASHA (or any Tune scheduler) compares forecasts.

Use :class:`RayTuneForecastReporter` as a listener of the training adapters inside a Tune function trainable
(``LossForecast(listeners=[reporter])``, likewise ``HFLossForecast`` and ``LossForecastSession``), and
schedule on the forecast::

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(time_attr="step", metric="forecast_final_loss", mode="min",
                              max_t=total_steps, grace_period=total_steps // 10)

Each refit reports ``{"forecast_final_loss", "forecast_lower", "forecast_std", "forecast_status", "step",
"progress"}`` through ``ray.tune.report``, right after the refit that made the forecast. ASHA keeps a fixed
share of the trials at each rung whatever the spread of what it compares: two runs whose forecasts differ by
a hundredth of their spread are ranked by chance, and the better one can be stopped (on an 8-LR sweep of a
tiny model it stopped the eventual best trial, ranked on ``forecast_final_loss`` as on ``forecast_lower``).
Do not rank on ``forecast_lower``: a slow, poor run has the widest band, so the lowest lower end, and it
outranks the good runs whose bands are already tight. For stops with a stated confidence (a run is stopped
only when its forecast cannot beat the sweep's best as measured on real runs), put a
:class:`scaleforecast.decision.SweepStopper` among the trial's listeners instead of ASHA: built in the
trainable, the trials of one ``Tuner.fit`` share a sweep (``ray-<experiment name>``); built in the driver and
sent to the trials, each trial is still a run of its own.

ASHA stops a trial by ending its trainable (``SystemExit`` out of ``tune.report``, inside the adapter's step):
the adapter then records the run's end (a sweep's registry, a family's fit) and closes TensorBoard before the
exit goes on; the reporter itself never asks the adapter to stop. ``time_attr="step"`` compares runs at equal
optimizer steps; for a sweep whose runs differ in length use ``time_attr="progress"`` (per mille of each run's
own total steps). Ray is imported lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

from scaleforecast.decision import DEFAULT_CONFIDENCE, check_probability, too_vague
from scaleforecast.results import Forecast

__all__ = ["RayTuneForecastReporter", "forecast_metrics"]

log = logging.getLogger(__name__)

METRIC = "forecast_final_loss"


def forecast_metrics(step: int, forecast: Forecast, total_steps: int | None = None) -> dict[str, Any] | None:
    """The metrics dict reported for one forecast, or None when the forecast holds no final-step number.

    ``progress`` is ``1000 * step / total_steps`` rounded down (per mille of the run's own length);
    ``forecast_lower`` the lower end of the forecast's band (at the forecast's ``level``).
    """
    if forecast is None or not forecast.ok or forecast.final is None:
        return None
    total = int(total_steps or forecast.final_step)
    return {
        METRIC: float(forecast.final.loss),
        "forecast_lower": float(forecast.final.lower),
        "forecast_std": float(forecast.final.std),
        "forecast_status": forecast.status.value,
        "step": int(step),
        "progress": (1000 * int(step)) // max(total, 1),
    }


class RayTuneForecastReporter:
    """The listener that reports each usable forecast to Ray Tune (``ray.tune.report``).

    >>> from scaleforecast.callbacks import LossForecast
    >>> from scaleforecast.integrations.ray import RayTuneForecastReporter
    >>> def train_fn(config):  # doctest: +SKIP
    ...     callback = LossForecast(listeners=[RayTuneForecastReporter()])
    ...     L.Trainer(max_steps=20_000, callbacks=[callback]).fit(model, datamodule)

    The run monitor calls :meth:`on_forecast` with each new forecast, right after its refit;
    ``reporter(step, forecast) -> bool`` does the reporting and always returns False: Tune's scheduler ends the trial itself.
    A forecast too vague to rank (its band at ``confidence`` reaching below zero, as the stop rule refuses it:
    :func:`scaleforecast.decision.too_vague`) is not reported: ASHA compares means, and a first forecast of
    0.87 +- 0.71 for a run ending at 2.56 led its rung and ended the best runs.
    ``every`` reports only every n-th usable forecast (to bound Tune's result traffic). ``report_fn`` replaces
    ``ray.tune.report`` (e.g. ``ray.train.report`` under a Ray Train ``TorchTrainer``, where every worker
    must report). Errors are logged once and disable the reporter; training goes on.

    A run the plugin stops reports once more where it ends, so that Tune's results say so: a run stopped by a
    stop rule (a target, :class:`~scaleforecast.decision.SweepStopper`) reports its last forecast with
    ``forecast_status="stopped"``; a run lost to a health check (NaN losses, divergence) reports
    ``forecast_final_loss`` NaN with ``forecast_status="lost"`` and the reason in ``stop_reason``, so that
    ``ResultGrid.get_best_result()`` (which leaves NaN out) cannot name it the best trial on a forecast made
    before it was lost. Not after Tune ended the trial itself (ASHA's ``SystemExit`` out of ``tune.report``).
    """

    # Tune ends the trials its scheduler stops, where no close() after the loop can follow
    ends_trials: ClassVar[bool] = True

    def __init__(
        self,
        *,
        total_steps: int | None = None,
        every: int = 1,
        report_fn: Callable[[dict[str, Any]], None] | None = None,
        confidence: float = DEFAULT_CONFIDENCE,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        check_probability("confidence", confidence)
        self.confidence = confidence
        self.total_steps = total_steps
        self.every = every
        self._report_fn = report_fn
        self._n = 0
        self._disabled = False
        self._ended = False  # Tune ended the trial from inside a report: nothing more may be reported
        self._lost = False
        self._planned: int | None = None  # the run's length as the forecasts know it
        self.last_metrics: dict[str, Any] | None = None

    def _report(self, metrics: dict[str, Any]) -> None:
        try:
            if self._report_fn is not None:
                self._report_fn(metrics)
                return
            from ray import tune

            tune.report(metrics)
        except BaseException as exc:
            # Tune ends a trial it stops with SystemExit out of tune.report: the trial is over for Tune
            self._ended = not isinstance(exc, Exception)
            raise

    def __call__(self, step: int, forecast: Forecast | None) -> bool:
        """Report the forecast (when usable and due); never requests a stop."""
        if self._disabled or forecast is None:
            return False
        metrics = forecast_metrics(step, forecast, self.total_steps)
        if metrics is None or too_vague(metrics[METRIC], metrics["forecast_std"], self.confidence):
            return False
        self._planned = int(forecast.final_step)
        self._n += 1
        if (self._n - 1) % self.every:
            return False
        try:
            self._report(metrics)
            self.last_metrics = metrics
        except Exception as exc:
            if not self._disabled:
                log.warning("scaleforecast Ray Tune reporter disabled: %s: %s", type(exc).__name__, exc)
            self._disabled = True
        return False

    def on_forecast(self, step: int, forecast: Forecast) -> list[Any]:
        """The listener hook: report the new forecast; never raises an event."""
        self(step, forecast)
        return []

    def on_run_lost(self, step: int, reason: str) -> None:
        """The run monitor stopped the run as lost at ``step`` (``reason``): report a NaN forecast, status
        ``lost``."""
        self._lost = True
        nan = float("nan")
        self._final(
            {METRIC: nan, "forecast_lower": nan, "forecast_std": nan, "forecast_status": "lost"}, step, reason
        )

    def on_run_end(self, step: int, stopped: bool) -> None:
        """The run ended at ``step``: a run stopped by a stop rule reports its last forecast once more, status
        ``stopped`` (a finished run's last report stands as it is)."""
        if stopped and not self._lost and self.last_metrics is not None:
            self._final({**self.last_metrics, "forecast_status": "stopped"}, step, None)

    def _final(self, metrics: dict[str, Any], step: int, reason: str | None) -> None:
        if self._disabled or self._ended:
            return
        total = self.total_steps or self._planned
        progress = (1000 * int(step)) // max(total, 1) if total else None
        try:
            self._report({**metrics, "step": int(step), "progress": progress, "stop_reason": reason or ""})
        except Exception as exc:
            log.warning(
                "scaleforecast Ray Tune reporter could not report the run's end: %s: %s",
                type(exc).__name__,
                exc,
            )
            self._disabled = True
