"""Results that leave the process: fits and forecasts, as pydantic models (JSON-safe)."""

from __future__ import annotations

import math
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FitStatus(str, Enum):
    """How far a fit can be trusted.

    >>> from scaleforecast import FitStatus
    >>> FitStatus("annealing_unidentified") is FitStatus.ANNEALING_UNIDENTIFIED
    True

    - ``ok``: every parameter is pinned by the run's own data.
    - ``annealing_unidentified``: the run's own data do not pin the annealing coefficient ``C`` yet (the LR
      has not decayed enough, or its decay is too short or noisy to read); the forecast leans on the prior (or,
      without one, on ``C = 0``) and says so.
    - ``law_violated``: the latest losses have left the fitted law (a posterior-predictive check failed, e.g.
      a loss that rises while the LR decays); the interval is widened to cover where the curve went, and the
      forecast says so until the curve is back on the law.
    - ``stale``: no usable loss arrived since the last fit (only NaN/Inf, or nothing); the forecast is empty
      (no band is current) and its warnings say since when.
    - ``insufficient_data``: too few usable points to fit at all; the forecast is empty.
    - ``failed``: the optimiser did not converge, or the law is not finite, or not above zero, at the asked
      steps.
    """

    OK = "ok"
    ANNEALING_UNIDENTIFIED = "annealing_unidentified"
    LAW_VIOLATED = "law_violated"
    STALE = "stale"
    INSUFFICIENT_DATA = "insufficient_data"
    FAILED = "failed"


#: statuses whose forecast holds numbers (``law_violated`` holds a widened band)
USABLE_STATUSES = (FitStatus.OK, FitStatus.ANNEALING_UNIDENTIFIED, FitStatus.LAW_VIOLATED)


class LawParams(BaseModel):
    """Fitted parameters of ``L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)``; MPL adds ``extra``.

    >>> from scaleforecast import LawParams
    >>> params = LawParams(L0=2.0, A=1.5, alpha=0.4, C=0.3)
    >>> params.lam
    0.999
    """

    model_config = ConfigDict(frozen=True)

    L0: float
    A: float
    alpha: float
    C: float
    lam: float = 0.999
    extra: dict[str, float] = Field(default_factory=dict)


class ForecastPoint(BaseModel):
    """The forecast loss at one step, with a central interval at the forecast's ``level``.

    >>> from scaleforecast import ForecastPoint
    >>> point = ForecastPoint(step=1000, loss=2.31, lower=2.25, upper=2.37, std=0.05)
    >>> point.lower <= point.loss <= point.upper
    True
    """

    model_config = ConfigDict(frozen=True)

    step: int
    loss: float
    lower: float
    upper: float
    std: float = Field(description="standard deviation of the predictive distribution (normal)")


Phase = Literal["stable", "early_decay", "decay", "flat"]
PHASES: tuple[Phase, ...] = ("stable", "early_decay", "decay", "flat")
_PHASE_EPS = 0.05
"""An LR within 5 % of the peak has not started decaying; less than 5 % of the peak still to lose is 'flat'."""


class StopFeatures(BaseModel):
    """What the run shows when a forecast is made, as the error model (:mod:`scaleforecast.calibration`) reads
    it; made by :class:`scaleforecast.evidence.ForecastTrack`.

    ``fraction``: steps fitted / final step. ``decay_seen``: ``1 - lr(t) / peak`` at the fitted step ``t``;
    ``decay_ahead``: ``(lr(t) - lr(T)) / peak``, the LR still to lose (both ``None`` without the schedule).
    ``backtest``: ``log(forecast made at s of the loss at 2s / the loss the run showed at 2s)``, the latest
    ``s <= t / 2`` (``None`` before the run has doubled since its first fit); ``backtest_worst``: the largest
    in size over the last doubling. ``rel_std``: the forecast's
    own std over its mean at the final step. ``noise``: the fit's relative noise of one observation;
    ``points``: observations fitted; ``total_steps``: the run's length (``None`` where unknown);
    ``law_checked``: whether the law check could judge the fit against the run's latest losses (False while
    too few of them follow the LR peak: a run diverging right after its warm-up looks like one still falling).
    """

    model_config = ConfigDict(frozen=True)

    fraction: float = Field(ge=0.0, le=1.0)
    decay_seen: float | None = None
    decay_ahead: float | None = None
    backtest: float | None = None
    backtest_worst: float | None = None
    rel_std: float = 0.0
    noise: float | None = None
    points: int | None = None
    total_steps: int | None = None
    law_checked: bool = True

    @property
    def phase(self) -> Phase | None:
        """``stable`` (the LR is within 5 % of its peak), ``early_decay`` (it has decayed, but more of its drop is
        still ahead than behind: most of the annealing drop is yet unseen), ``decay``, or ``flat`` (less than 5 %
        of the peak is still to lose); ``None`` without the schedule."""
        if self.decay_seen is None or self.decay_ahead is None:
            return None
        if self.decay_ahead < _PHASE_EPS:
            return "flat"
        if self.decay_seen < _PHASE_EPS:
            return "stable"
        return "early_decay" if self.decay_ahead > self.decay_seen else "decay"


class Forecast(BaseModel):
    """A forecast of the loss at one or more steps, from the fit on ``n_points`` observations.

    >>> from scaleforecast import FitStatus, Forecast, ForecastPoint
    >>> point = ForecastPoint(step=1000, loss=2.31, lower=2.25, upper=2.37, std=0.05)
    >>> forecast = Forecast(law="tissue", level=0.8, fitted_at_step=600, final_step=1000, points=[point],
    ...                     params=None, n_points=600, status=FitStatus.OK)
    >>> forecast.final.loss, round(forecast.prob_at_least(2.4), 3)
    (2.31, 0.036)

    ``points`` are ordered as asked; ``final`` is the point at the schedule's last step (or ``None`` when
    that step was not asked for). ``status`` is the fit's :class:`FitStatus`. ``borrowed_from`` names the
    finished runs of the same family whose fits served as the prior (empty for a cold start).
    ``stop_features``: what the run showed the stopping rule when the forecast was made (its LR phase, its own
    backtest; see :mod:`scaleforecast.evidence`), attached by the run monitor; ``None`` on a forecast made or
    rebuilt without the run's record.
    """

    law: str
    level: float
    fitted_at_step: int
    final_step: int
    points: list[ForecastPoint]
    params: LawParams | None
    n_points: int
    status: FitStatus
    warnings: list[str] = Field(default_factory=list)
    borrowed_from: list[str] = Field(default_factory=list)
    stop_features: StopFeatures | None = None

    @property
    def final(self) -> ForecastPoint | None:
        for p in self.points:
            if p.step == self.final_step:
                return p
        return None

    @property
    def ok(self) -> bool:
        """True when the forecast holds numbers: status ``ok``, ``annealing_unidentified`` or ``law_violated``
        (a widened band), and at least one point."""
        return self.status in USABLE_STATUSES and bool(self.points)

    def prob_at_least(self, reference: float, step: int | None = None) -> float:
        """P(loss at ``step`` >= ``reference``) under the forecast's normal predictive distribution."""
        point = self.final if step is None else next((p for p in self.points if p.step == step), None)
        if point is None:
            raise ValueError(f"no forecast point at step {step if step is not None else self.final_step}")
        if point.std <= 0:
            return 1.0 if point.loss >= reference else 0.0
        z = (point.loss - reference) / point.std
        return 0.5 * math.erfc(-z / math.sqrt(2.0))

    def to_cli_json(self) -> dict:
        """The object printed by ``scaleforecast forecast --json`` (a stable contract)."""
        return {
            "forecasts": [
                {"step": p.step, "loss": p.loss, "lower": p.lower, "upper": p.upper, "std": p.std}
                for p in self.points
            ],
            "level": self.level,
            "law": self.law,
            "params": self.params.model_dump() if self.params else {},
            "n_points": self.n_points,
            "status": self.status.value,
            "fitted_at_step": self.fitted_at_step,
            "final_step": self.final_step,
            "warnings": list(self.warnings),
            "borrowed_from": list(self.borrowed_from),
        }
