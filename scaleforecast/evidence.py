"""What a run shows the stopping rule when a forecast is made: where the run is, and how well its own earlier
forecasts did.

:class:`StopFeatures` are read by the error model (:mod:`scaleforecast.calibration`); :class:`ForecastTrack` makes
them at every refit, from the forecaster alone, and keeps the run's backtest record (a few numbers per doubling of
the run) in its JSON-safe state. The run monitor attaches them to the forecast they describe
(:attr:`Forecast.stop_features`), so that every stop rule downstream of it (sweep stoppers, sweep-engine
pruners) reads the same evidence as the monitor's own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scaleforecast.results import PHASES, Forecast, Phase, StopFeatures

__all__ = ["PHASES", "ForecastTrack", "Phase", "StopFeatures", "bare_features", "features_from_forecast"]


def features_from_forecast(forecast: Forecast) -> StopFeatures | None:
    """The features of ``forecast`` for the stopping rule; ``None`` when it holds no number.

    The ones the run monitor attached (:attr:`Forecast.stop_features`: the LR phase and the run's own backtest)
    when it carries them; else what the forecast alone tells (a forecast rebuilt elsewhere, or written by an
    older version): the fraction of the run its fit had seen (``fitted_at_step / final_step``), its relative
    std and the run's length, for which the error model answers with its conservative ``fallback`` scale.
    """
    final = forecast.final
    if final is None or forecast.final_step <= 0 or not math.isfinite(final.loss) or final.loss <= 0:
        return None
    if forecast.stop_features is not None:
        return forecast.stop_features
    return bare_features(
        forecast.fitted_at_step, forecast.final_step, final.loss, final.std, points=forecast.n_points
    )


def bare_features(
    step: int, total_steps: int | None, loss: float, std: float, points: int | None = None
) -> StopFeatures:
    """What a forecast of ``loss`` +- ``std`` made at ``step`` tells the error model without the run's record: the
    fraction of the run seen, the relative std and the run's length (an unknown length counts as the very
    start of a run, where the scale is widest)."""
    fraction = min(max(step / total_steps, 0.0), 1.0) if total_steps else 0.0
    return StopFeatures(
        fraction=fraction,
        rel_std=max(std, 0.0) / loss if loss > 0 else 0.0,
        points=points,
        total_steps=total_steps,
    )


class ForecastTrack:
    """The run's own record for the stopping rule: its backtest, and the features of its latest forecast.

    Call :meth:`update` with the forecaster after every refit (the monitor does, on every rank in lockstep: the
    record depends on the forecaster's state only). At a refit at step ``t`` it notes the new fit's forecast of
    the loss at ``2t``; once the run is past ``2t``, a later fit compares that forecast with the level the run
    showed there (the newest fit's value at ``2t``, which has the data around it): ``b = log(forecast / level)``.
    A forecast's ``backtest`` is the latest such ``b``; its ``backtest_worst`` the one of largest size among the
    comparisons of the last doubling (probes at ``t / 2`` or later), so that one lucky comparison cannot vouch
    for a run. The record holds a few numbers per doubling of the run (forecasts are noted at most every 5 % of
    steps), and :meth:`state_dict` is JSON-safe.
    """

    _SPACING = 1.05

    def __init__(self) -> None:
        self._pending: list[tuple[int, float]] = []  # (probe step 2s, forecast of the loss there)
        self._checks: list[tuple[int, float]] = []  # (probe step, b) of the comparisons made
        self._features: StopFeatures | None = None
        self._fit_step = -1

    @property
    def features(self) -> StopFeatures | None:
        """The features of the latest usable forecast (``None`` before one)."""
        return self._features

    def update(self, forecaster: Any) -> StopFeatures | None:
        """Take the forecaster's latest forecast into the record and return its features (see the class
        docstring); forecasts without numbers leave the record as it was."""
        latest = getattr(forecaster, "latest", None)
        lrs = getattr(forecaster, "schedule", None)
        if latest is None or lrs is None or not latest.ok or latest.final is None:
            return self._features
        t, total = int(latest.fitted_at_step), len(lrs)
        if t < self._fit_step:  # resumed from an older checkpoint: what the dropped future showed is void
            self._pending = [(p, v) for p, v in self._pending if p <= 2 * t]
            self._checks = [(p, b) for p, b in self._checks if p <= t]
        self._fit_step = t
        due = [(p, v) for p, v in self._pending if p <= t]
        if due:
            levels = forecaster.predict([p for p, _ in due])
            for (probe, predicted), level in zip(due, levels, strict=True):
                if level > 0 and predicted > 0 and math.isfinite(level) and math.isfinite(predicted):
                    self._checks.append((probe, math.log(predicted / float(level))))
            self._pending = [(p, v) for p, v in self._pending if p > t]
        # the latest comparison is kept whatever its age; the others only for one doubling
        self._checks = [c for i, c in enumerate(self._checks) if 2 * c[0] >= t or i == len(self._checks) - 1]
        probe = 2 * t
        if 1 <= probe <= total and (not self._pending or probe >= self._SPACING * self._pending[-1][0]):
            value = float(forecaster.predict([probe])[0])
            if math.isfinite(value):
                self._pending.append((probe, value))
        peak = float(np.max(lrs))
        final = latest.final
        lr_t = float(lrs[min(max(t, 1), total) - 1])
        check = getattr(forecaster, "law_check", None)
        self._features = StopFeatures(
            fraction=min(max(t / total, 0.0), 1.0),
            decay_seen=(1.0 - lr_t / peak) if peak > 0 else 0.0,
            decay_ahead=((lr_t - float(lrs[-1])) / peak) if peak > 0 else 0.0,
            backtest=self._checks[-1][1] if self._checks else None,
            # the checks left are those of the last doubling (or the newest one): the worst of them
            backtest_worst=max((b for _, b in self._checks), key=abs, default=None),
            rel_std=max(final.std, 0.0) / final.loss if final.loss > 0 else 0.0,
            noise=getattr(getattr(forecaster, "fit_result", None), "sigma", None),
            points=int(latest.n_points),
            total_steps=total,
            law_checked=check is not None and check.judged,
        )
        return self._features

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state (a few numbers per doubling of the run)."""
        return {
            "version": 1,
            "pending": [[p, v] for p, v in self._pending],
            "checks": [[p, b] for p, b in self._checks],
            "features": None if self._features is None else self._features.model_dump(),
            "fit_step": self._fit_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (on resume)."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported forecast-track state version {state.get('version')!r}")
        self._pending = [(int(p), float(v)) for p, v in state["pending"]]
        self._checks = [(int(p), float(b)) for p, b in state.get("checks", [])]
        f = state.get("features")
        self._features = None if f is None else StopFeatures.model_validate(f)
        self._fit_step = int(state.get("fit_step", -1))
