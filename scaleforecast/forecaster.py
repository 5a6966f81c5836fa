"""The online forecaster: observations in, forecasts of the loss at any step under any schedule out.

This is the one stateful object of the core. It keeps a bounded, binned history of the run's losses, the
planned LR schedule (replaceable mid-run), and the latest fit; it refits on a policy and answers forecasts from
the latest fit. Every adapter (Lightning, HF Trainer, the ``watch`` sidecar, the CLI) drives one of these.
"""

from __future__ import annotations

import base64
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtri

from scaleforecast.fitting import FitConfig, FitResult, Observations, fit, predict
from scaleforecast.history import BinnedHistory
from scaleforecast.results import FitStatus, Forecast, ForecastPoint
from scaleforecast.schedules import Schedule, as_lrs

log = logging.getLogger(__name__)

ScheduleLike = str | Schedule | Sequence[float] | np.ndarray


class ForecasterConfig(BaseModel):
    """How the online forecaster fits and when it refits.

    ``refit_every``: refit once this many optimizer steps have passed since the last fit. ``refit_growth``:
    also refit early when the number of observations has grown by this fraction since the last fit (so sparse
    logs, and the first few hundred steps, are not starved). ``max_bins`` bounds memory and refit time.
    """

    model_config = ConfigDict(extra="forbid")

    fit: FitConfig = Field(default_factory=FitConfig)
    level: float = Field(0.8, gt=0.0, lt=1.0, description="coverage of the reported interval")
    refit_every: int = Field(100, ge=1)
    refit_growth: float = Field(0.25, gt=0.0)
    max_bins: int = Field(1024, ge=16)


def _encode_lrs(lrs: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(lrs, dtype="<f8").tobytes()).decode("ascii")


def _decode_lrs(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").copy()


class OnlineForecaster:
    """Fit the LR-annealing law online and forecast the loss at any step, under the planned or any schedule.

    Usage::

        fc = OnlineForecaster("cosine:peak=3e-4,warmup=200,total=10000")
        for step, loss in stream:          # step = optimizer updates completed (1-based)
            fc.observe(step, loss)
            if fc.should_refit():
                print(fc.refit().final)    # ForecastPoint(step=10000, loss=..., lower=..., upper=...)

    Observations are single steps (``window=1``) or means over the last ``window`` updates, as HF Trainer logs
    them. NaN/Inf losses are counted and never fitted. A step at or before the last one seen means the run
    resumed from an older checkpoint: history after it is dropped, with a warning.
    """

    def __init__(self, schedule: ScheduleLike | None = None, config: ForecasterConfig | None = None) -> None:
        self.config = config or ForecasterConfig()
        self._history = BinnedHistory(self.config.max_bins)
        self._lrs: np.ndarray | None = None
        self._last_step = 0
        self._n_nonfinite = 0
        self._fit: FitResult | None = None
        self._latest: Forecast | None = None
        self._raw_at_fit = 0
        self._step_at_fit = 0
        self._warnings: list[str] = []
        self._stale = False
        if schedule is not None:
            self.set_schedule(schedule)

    # ------------------------------------------------------------------ schedule
    @property
    def schedule(self) -> np.ndarray | None:
        """The planned per-update LR (element k = LR of update k+1), or ``None`` before one is set."""
        return self._lrs

    @property
    def total_steps(self) -> int | None:
        return None if self._lrs is None else len(self._lrs)

    def set_schedule(self, schedule: ScheduleLike) -> None:
        """Replace the planned schedule (e.g. the user changed the scheduler mid-run); the next refit uses it.

        The schedule must cover every step observed so far; its past part should be the LR actually used.
        """
        lrs = as_lrs(schedule)
        if self._last_step > len(lrs):
            raise ValueError(f"schedule has {len(lrs)} steps but step {self._last_step} was already observed")
        changed = self._lrs is None or len(lrs) != len(self._lrs) or not np.array_equal(lrs, self._lrs)
        self._lrs = lrs
        # A fit made against the old schedule must not outlive it: the next policy check refits.
        self._stale = self._stale or (changed and self._fit is not None)

    # -------------------------------------------------------------- observations
    @property
    def last_step(self) -> int:
        return self._last_step

    @property
    def n_nonfinite(self) -> int:
        """How many NaN/Inf losses were seen (and left out of the fit)."""
        return self._n_nonfinite

    @property
    def n_observations(self) -> int:
        return self._history.n_raw

    def observe(self, step: int, loss: float, window: int = 1) -> None:
        """Record the mean loss over updates ``step - window + 1 .. step``."""
        self.observe_many([step], [loss], window)

    def observe_many(
        self, steps: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray, window: int = 1
    ) -> None:
        """Record many observations at once (vectorised; ``steps`` strictly increasing)."""
        steps = np.asarray(steps, dtype=np.int64).ravel()
        losses = np.asarray(losses, dtype=float).ravel()
        if steps.shape != losses.shape:
            raise ValueError(f"steps and losses differ in length: {len(steps)} != {len(losses)}")
        if len(steps) == 0:
            return
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if steps.min() < 1:
            raise ValueError(f"steps are optimizer updates completed and start at 1, got {int(steps.min())}")
        if np.any(np.diff(steps) <= 0):
            raise ValueError("steps within one call must be strictly increasing")
        if self._lrs is not None and steps[-1] > len(self._lrs):
            raise ValueError(
                f"step {int(steps[-1])} is past the end of the planned schedule ({len(self._lrs)} steps); "
                "set a longer schedule first"
            )
        if steps[0] <= self._last_step:
            self._rewind(int(steps[0]) - window)
        finite = np.isfinite(losses)
        if not finite.all():
            bad = int((~finite).sum())
            self._n_nonfinite += bad
            self._warn_once(
                "nonfinite", f"{self._n_nonfinite} non-finite loss value(s) seen and left out of the fit"
            )
        start = np.maximum(steps - window + 1, 1)
        self._history.add(start[finite], steps[finite], losses[finite])
        self._last_step = int(steps[-1])

    def _rewind(self, step: int) -> None:
        step = max(step, 0)
        dropped = self._history.truncate(step)
        msg = (
            f"step went back to {step + 1} after {self._last_step} (resumed from an older checkpoint?): "
            f"dropped {dropped} observation(s) after step {step}"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)
        self._last_step = step
        self._raw_at_fit = min(self._raw_at_fit, self._history.n_raw)
        self._step_at_fit = min(self._step_at_fit, step)

    def observations(self) -> Observations:
        """The binned history as the fitter's :class:`Observations` (window means with weights)."""
        start, end, y, count = self._history.arrays()
        return Observations(start=start, end=end, y=y, count=count)

    # ------------------------------------------------------------------- fitting
    def should_refit(self) -> bool:
        """The refit policy: every ``refit_every`` steps, or when observations grew by ``refit_growth``."""
        if self._lrs is None or self._history.n_raw == 0:
            return False
        if self._fit is None or self._stale:
            return True
        if self._last_step - self._step_at_fit >= self.config.refit_every:
            return True
        return self._history.n_raw >= (1.0 + self.config.refit_growth) * max(self._raw_at_fit, 1)

    def refit(self) -> Forecast:
        """Fit the law to the history now and return the forecast at the final step of the schedule."""
        if self._lrs is None:
            raise ValueError("no LR schedule set: call set_schedule() before refit()")
        result = fit(self.observations(), self._lrs, self.config.fit, init=self._fit)
        if result.status is not FitStatus.FAILED or self._fit is None:
            self._fit = result
        else:
            self._warn_once("failed", "a refit failed to converge; keeping the previous fit")
        self._raw_at_fit = self._history.n_raw
        self._step_at_fit = self._last_step
        self._stale = False
        self._latest = self.forecast()
        return self._latest

    def update(
        self, steps: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray, window: int = 1
    ) -> Forecast | None:
        """Observe, then refit if the policy says so; returns the new forecast, or ``None`` if none was made."""
        self.observe_many(steps, losses, window)
        return self.refit() if self.should_refit() else None

    @property
    def fit_result(self) -> FitResult | None:
        return self._fit

    @property
    def latest(self) -> Forecast | None:
        """The forecast made at the last refit."""
        return self._latest

    # ----------------------------------------------------------------- forecasts
    def forecast(
        self,
        steps: Sequence[int] | np.ndarray | None = None,
        schedule: ScheduleLike | None = None,
        level: float | None = None,
    ) -> Forecast:
        """Forecast the loss at ``steps`` (default: the final step) from the latest fit.

        With ``schedule`` the forecast is a what-if: the same fitted law under another per-update LR schedule
        (its length sets the final step). The interval is central at ``level`` (default: the config's), from
        the fit's normal predictive distribution ``mean ± z * std``.
        """
        level = self.config.level if level is None else level
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        lrs = self._lrs if schedule is None else as_lrs(schedule)
        if lrs is None:
            raise ValueError("no LR schedule set")
        total = len(lrs)
        steps_arr = np.array([total] if steps is None else steps, dtype=np.int64).ravel()
        if len(steps_arr) and (steps_arr.min() < 1 or steps_arr.max() > total):
            raise ValueError(f"forecast steps must lie in 1..{total}")
        fit_result = self._fit
        warns = list(self._warnings)
        if fit_result is None or fit_result.params is None:
            status = FitStatus.INSUFFICIENT_DATA if fit_result is None else fit_result.status
            if fit_result is not None:
                warns += fit_result.warnings
            return Forecast(
                law=self.config.fit.law,
                level=level,
                fitted_at_step=self._step_at_fit,
                final_step=total,
                points=[],
                params=None,
                n_points=self._raw_at_fit,
                status=status,
                warnings=warns,
            )
        mean, std = predict(fit_result, lrs, steps_arr, level=level)
        z = float(ndtri(0.5 + level / 2.0))
        points = [
            ForecastPoint(
                step=int(s), loss=float(m), lower=float(m - z * d), upper=float(m + z * d), std=float(d)
            )
            for s, m, d in zip(steps_arr, mean, std, strict=True)
            if math.isfinite(m) and math.isfinite(d)
        ]
        return Forecast(
            law=fit_result.law,
            level=level,
            fitted_at_step=self._step_at_fit,
            final_step=total,
            points=points,
            params=fit_result.params,
            n_points=self._raw_at_fit,
            status=fit_result.status,
            warnings=warns + list(fit_result.warnings),
        )

    def predict(self, steps: Sequence[int] | np.ndarray, schedule: ScheduleLike | None = None) -> np.ndarray:
        """Point predictions of the latest fit at ``steps`` (NaN everywhere before the first usable fit)."""
        steps_arr = np.asarray(steps, dtype=np.int64).ravel()
        if self._fit is None or self._fit.params is None:
            return np.full(len(steps_arr), np.nan)
        lrs = self._lrs if schedule is None else as_lrs(schedule)
        if lrs is None:
            raise ValueError("no LR schedule set")
        mean, _ = predict(self._fit, lrs, steps_arr, level=self.config.level)
        return np.asarray(mean, dtype=float)

    def _warn_once(self, key: str, message: str) -> None:
        prefix = f"[{key}] "
        self._warnings = [w for w in self._warnings if not w.startswith(prefix)] + [prefix + message]

    # --------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: config, schedule, binned history, latest fit and forecast."""
        return {
            "version": 1,
            "config": self.config.model_dump(mode="json"),
            "schedule": None if self._lrs is None else _encode_lrs(self._lrs),
            "history": self._history.state_dict(),
            "last_step": self._last_step,
            "n_nonfinite": self._n_nonfinite,
            "fit": None if self._fit is None else self._fit.model_dump(mode="json"),
            "latest": None if self._latest is None else self._latest.model_dump(mode="json"),
            "raw_at_fit": self._raw_at_fit,
            "step_at_fit": self._step_at_fit,
            "warnings": list(self._warnings),
            "stale": self._stale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (e.g. from a checkpoint, on resume)."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported forecaster state version {state.get('version')!r}")
        self.config = ForecasterConfig.model_validate(state["config"])
        self._lrs = None if state["schedule"] is None else _decode_lrs(state["schedule"])
        self._history = BinnedHistory(self.config.max_bins)
        self._history.load_state_dict(state["history"])
        self._last_step = int(state["last_step"])
        self._n_nonfinite = int(state["n_nonfinite"])
        self._fit = None if state["fit"] is None else FitResult.model_validate(state["fit"])
        self._latest = None if state["latest"] is None else Forecast.model_validate(state["latest"])
        self._raw_at_fit = int(state["raw_at_fit"])
        self._step_at_fit = int(state["step_at_fit"])
        self._warnings = list(state["warnings"])
        self._stale = bool(state.get("stale", False))
