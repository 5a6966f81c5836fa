"""Fit the LR-annealing law to a (partial) loss curve by variable projection, and predict with intervals.

For a fixed exponent ``alpha`` the law ``L0 + A * S1^-alpha - C * S2`` is linear in ``(L0, A, C)``: those are
solved exactly as a bounded weighted least-squares problem (``A >= 0``, ``C >= 0``, by enumerating the active
sets), and only ``alpha`` is searched (a coarse grid, then bounded Brent), optionally over a grid of ``lam``.
No random restarts, no local minima in the linear part.

Observations are window means (``start..end`` updates): the model of a window is the mean of the law over
it. The S2 part is exact through prefix sums; the S1^-alpha part uses four Gauss-Legendre nodes on the
window (in log steps), so one evaluation costs O(n_obs) whatever the run length. Residuals are relative
(~log-loss), weighted by the number of raw points per window and by recency, and robust (Huber by IRLS).

Before the LR decays, S2 = 0 and the run says nothing about ``C``: a scale-free prior on the full-anneal drop
(:mod:`scaleforecast.priors`, learned from real curves and shipped as data) enters the least squares as one
more row, so the posterior moves from the prior to the data as S2 grows. The status says which one rules.

The fitter is stateless: the online forecaster bins its history into :class:`Observations` and calls
:func:`fit`, passing the previous result as ``init`` for a warm start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field, model_validator

from scaleforecast.laws import (
    LAWS,
    Memory,
    WarmupS2,
    annealing_prefix,
    forward_area,
    memory_of,
    mpl_drop,
    run_memory,
    schedule_areas,
)
from scaleforecast.priors import AnnealingPrior, load_prior
from scaleforecast.results import FitStatus, LawParams
from scaleforecast.schedules import as_lrs

__all__ = ["FitConfig", "FitResult", "Observations", "fit", "predict"]

_GL_X, _GL_W = np.polynomial.legendre.leggauss(4)


@dataclass(frozen=True)
class Observations:
    """Binned observations: window ``j`` covers updates ``start[j]..end[j]`` (1-based, inclusive) and ``y[j]``
    is the mean loss over it, from ``count[j]`` raw points (its weight). A single step ``s`` has
    ``start == end == s``.

    >>> from scaleforecast import Observations
    >>> obs = Observations.from_steps([100, 200, 300], [3.1, 2.9, 2.8])  # one loss at each of these steps
    >>> len(obs), obs.start.tolist()
    (3, [100, 200, 300])
    >>> logged = Observations.from_steps([100, 200], [3.0, 2.9], window=100)  # means of the last 100 updates
    >>> logged.start.tolist()
    [1, 101]
    """

    start: np.ndarray
    end: np.ndarray
    y: np.ndarray
    count: np.ndarray

    def __post_init__(self) -> None:
        start = np.asarray(self.start, dtype=np.int64).reshape(-1)
        end = np.asarray(self.end, dtype=np.int64).reshape(-1)
        y = np.asarray(self.y, dtype=np.float64).reshape(-1)
        count = np.asarray(self.count, dtype=np.float64).reshape(-1)
        if not (start.size == end.size == y.size == count.size):
            raise ValueError("Observations: start, end, y and count must have the same length")
        if np.any(end < start):
            raise ValueError("Observations: end < start in some window")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "count", count)

    def __len__(self) -> int:
        return int(self.y.size)

    @classmethod
    def from_steps(cls, steps: ArrayLike, losses: ArrayLike, window: int = 1) -> Observations:
        """Observations at ``steps``, each the mean over the ``window`` updates ending there."""
        end = np.asarray(steps, dtype=np.int64).reshape(-1)
        y = np.asarray(losses, dtype=np.float64).reshape(-1)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        return cls(np.maximum(end - window + 1, 0), end, y, np.ones(end.size))


class FitConfig(BaseModel):
    """How to fit; the defaults are the best configuration measured on the dev half of the real curves, and the
    interval calibration is fitted to cold starts on codebases the prior never saw (leave one source out;
    ``benchmarks/forecast_accuracy.py``).

    >>> from scaleforecast import FitConfig
    >>> FitConfig(lam=0.99, law="auto").lam
    0.99

    A misspelt setting is an error, not a silent default:

    >>> FitConfig(lamda=0.99)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    pydantic_core._pydantic_core.ValidationError: 1 validation error for FitConfig

    - ``law``: "tissue" (the annealing law), "mpl" (Multi-Power Law) or "auto" (whichever of the two predicts
      the latest 20% of the windows better from the rest).
    - ``memory``: how S2 remembers LR decreases. "two_timescale" (default): a fast and a slow exponential
      memory whose time constants are ``memory_fast`` and ``memory_slow`` of the run's length, weighted
      ``memory_mix`` and ``1 - memory_mix`` (:func:`scaleforecast.laws.run_memory`); ``lam`` then only sets the
      units of ``C`` (``C * lr_peak / (1 - lam)`` is the full-anneal drop). "single": one memory of decay
      ``lam``, the law as Tissue et al. write it; ``fit_lam`` searches ``lam_grid`` for it.
    - ``loss``: "huber" (IRLS on standardised relative residuals, threshold ``huber_k`` noise scales, or a fixed
      ``huber_delta`` on the log-loss residual as in Tissue et al., who use 1e-3) or "l2".
    - ``warmup``: S2 during warm-up, "raw" (the formula as written: negative S2) or "hold" (LR held at peak).
    - ``recency``: window weights ``(end / last end) ** recency``, so the law's imperfect shape is fitted where
      the forecast starts. ``autocorr``: inflate the noise by the residuals' AR(1) factor.
    - ``prior``: a shipped :class:`AnnealingPrior` by name, an AnnealingPrior, or None for the plain law;
      ``use_alpha_prior`` and ``prior_ref`` ("final": the prior is relative to ``L0 + A * S1(T)^-alpha`` from a
      first pass; "tail": to the latest losses) refine it.
    - ``prior_fit_scale`` widens the C prior inside the point estimate only: the prior sets C while the run
      says nothing about it, and the run's own data take over as soon as its LR decays (the prior's spread
      between codebases is large; a fit that leans on it longer than it must pays for it on other codebases).
    - ``interval_scale`` and ``model_sd`` calibrate the predictive std (see :func:`predict`);
      ``prior_interval_scale`` scales the C prior's sd inside the posterior covariance. ``anneal_sd``: the
      relative error of the annealing drop still ahead of the fit, ``C * (S2(s) - S2(fitted_until))``: the law's
      memory gets a cooldown's shape right to about 15 %. Chosen on the public runs' forecasts made deep into
      a cooldown (under 5 % of the LR area ahead, leave one source out): their 80 % bands covered 66 % of
      epfml's finals and 60 % of Luo et al.'s without it, 84 % and 87 % with it (the tiny runs' were 100 %
      either way; forecasts made before a cooldown barely change).
    - ``own_backtest``: widen the band by the run's own extrapolation error: the law fitted to the first half of
      the fitted range forecasts the level at its end, and the relative miss ``b`` (``backtest_sd`` of the
      result) is taken as the error of each further doubling of the steps (:func:`predict`). A run the law
      extrapolates well keeps its band; one it does not (a foreign codebase, a tiny model whose early descent
      is no power law of the LR area) says so in its own units, with no constant learned from other runs.
    - ``identified_ratio``: the status is ``ok`` once the run's own data know C, relative to its size, at least
      this many times as precisely as the prior does (data-only sd of C against the prior's relative sd times
      the larger of the prior's C and the fitted one).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    law: Literal["tissue", "mpl", "auto"] = "tissue"
    lam: float = Field(0.999, ge=0.0, lt=1.0)
    memory: Literal["two_timescale", "single"] = "two_timescale"
    memory_fast: float = Field(1 / 200, gt=0)
    memory_slow: float = Field(1.0, gt=0)
    memory_mix: float = Field(0.5, ge=0.0, le=1.0)
    fit_lam: bool = False
    lam_grid: tuple[float, ...] = (0.99, 0.995, 0.998, 0.999, 0.9995)
    loss: Literal["huber", "l2"] = "huber"
    huber_k: float = Field(1.345, gt=0)
    huber_delta: float | None = Field(None, gt=0)
    irls_iters: int = Field(3, ge=1)
    skip_warmup: bool = True
    warmup: Literal["raw", "hold"] = "hold"
    autocorr: bool = True
    recency: float = Field(5.0, ge=0)
    alpha_bounds: tuple[float, float] = (0.05, 2.0)
    prior: str | AnnealingPrior | None = "default"
    use_alpha_prior: bool = True
    prior_ref: Literal["tail", "final"] = "final"
    min_points: int = Field(6, ge=3)
    prior_fit_scale: float = Field(5.0, ge=1.0)
    identified_ratio: float = Field(1.0, gt=0)
    interval_scale: float = Field(1.25, gt=0)
    prior_interval_scale: float = Field(1.0, gt=0)
    model_sd: float = Field(0.0194, ge=0)
    anneal_sd: float = Field(0.15, ge=0)
    own_backtest: bool = True

    @model_validator(mode="after")
    def _lam_search_needs_one_memory(self) -> FitConfig:
        if self.fit_lam and self.memory != "single":
            raise ValueError("fit_lam searches the decay of a single memory: set memory='single'")
        return self

    def memory_for(self, total_steps: int) -> Memory | None:
        """The annealing memory of a run of ``total_steps`` updates (None: the single memory ``lam``)."""
        if self.memory == "single":
            return None
        return run_memory(total_steps, self.memory_fast, self.memory_slow, self.memory_mix)


class FitResult(BaseModel):
    """A fit. ``params`` is None unless a law was fitted. ``sigma``: noise scale of one raw observation,
    relative to the loss. ``cov``: posterior covariance of ``param_names`` (L0, A, alpha, C) in absolute
    units. ``warmup``/``lam`` fix the S2 convention for :func:`predict`. ``backtest_sd``: the relative miss of
    the fit on the first half of the fitted range at its end (``FitConfig.own_backtest``; 0 when not made).

    >>> import numpy as np
    >>> from scaleforecast import OnlineForecaster
    >>> fc = OnlineForecaster("cosine:peak=1e-3,warmup=50,total=1000")
    >>> fc.observe_many(np.arange(1, 601), 2.0 + 0.1 * np.cumsum(fc.schedule[:600]) ** -0.5)

    >>> from scaleforecast import fit
    >>> result = fit(fc.observations(), fc.schedule)
    >>> result.status.value, result.param_names
    ('ok', ['L0', 'A', 'alpha', 'C'])
    """

    model_config = ConfigDict(frozen=True)

    law: str
    params: LawParams | None
    status: FitStatus
    n_points: int
    sigma: float = 0.0
    warnings: list[str] = Field(default_factory=list)
    cov: list[list[float]] | None = None
    param_names: list[str] = Field(default_factory=lambda: ["L0", "A", "alpha", "C"])
    warmup: str = "hold"
    fitted_until: int = 0
    interval_scale: float = 1.0
    model_sd: float = 0.0
    anneal_sd: float = 0.0
    backtest_sd: float = 0.0
    l_ref: float = 0.0
    c_prior: tuple[float, float] | None = None


# --------------------------------------------------------------------------------------------------------
# design


class _Design:
    """Everything an alpha evaluation needs, precomputed once per (observations, lrs, lam)."""

    def __init__(
        self, obs: Observations, lrs: np.ndarray, lam: float, warmup: str, memory: Memory | None
    ) -> None:
        T = lrs.size
        warm: WarmupS2 = "hold" if warmup == "hold" else "raw"
        s1, s2 = schedule_areas(lrs, lam, warm, memory)
        cs2 = annealing_prefix(lrs, lam, warm, memory)
        a, b = obs.start, obs.end
        n = (b - a + 1).astype(np.float64)
        self.s2m = (cs2[b] - cs2[a - 1]) / n
        # The discrete window mean of S1^-alpha is the integral over [a - 0.5, b + 0.5] divided by its length
        # (midpoint view). Gauss-Legendre nodes are placed in log(t), where S1^-alpha ~ t^-alpha is smooth even
        # for a window that starts at the first update.
        lo = np.maximum(a - 0.5, 0.5)
        hi = np.minimum(b + 0.5, T + 0.5)
        single = a == b
        ulo, uhi = np.log(lo), np.log(hi)
        u = 0.5 * (ulo + uhi)[:, None] + 0.5 * (uhi - ulo)[:, None] * _GL_X[None, :]
        t = np.exp(u)
        wts = _GL_W[None, :] * t
        wts = wts / wts.sum(axis=1, keepdims=True)
        t[single] = b[single, None].astype(np.float64)
        wts[single] = 1.0 / _GL_X.size
        self.wts = wts
        # S1 at fractional step t, linear between whole steps (S1(0) = 0); O(n_obs), no length-T temporaries
        i = np.clip(np.floor(t).astype(np.int64), 0, T - 1)
        frac = t - i
        s_lo = np.where(i > 0, s1[np.maximum(i - 1, 0)], 0.0)
        s_hi = s1[i]
        self.s1n = np.maximum(s_lo + frac * (s_hi - s_lo), 1e-300)
        self.log_s1n = np.log(self.s1n)
        self.lam = lam
        self.memory = memory
        self.s2_all = s2
        self.s1_all = s1

    def f1(self, alpha: float) -> np.ndarray:
        return np.sum(np.exp(-alpha * self.log_s1n) * self.wts, axis=1)

    def df1(self, alpha: float) -> np.ndarray:
        return -np.sum(np.exp(-alpha * self.log_s1n) * self.log_s1n * self.wts, axis=1)


@dataclass
class _Lin:
    beta: np.ndarray
    cost: float


def _solve_linear(X: np.ndarray, y: np.ndarray, w: np.ndarray, c_prior: tuple[float, float] | None) -> _Lin:
    """min sum w (y - X b)^2 + ((b_C - mu)/sd)^2 with b_A >= 0, b_C >= 0 (columns L0, A, -S2 -> C)."""
    sw = np.sqrt(w)
    Xw = X * sw[:, None]
    yw = y * sw
    if c_prior is not None:
        mu, sd = c_prior
        Xw = np.vstack([Xw, [0.0, 0.0, 1.0 / sd]])
        yw = np.concatenate([yw, [mu / sd]])
    scale = np.sqrt(np.sum(Xw**2, axis=0))
    scale[scale == 0] = 1.0
    Xs = Xw / scale
    best: _Lin | None = None
    for free in ((0, 1, 2), (0, 2), (0, 1), (0,)):
        idx = list(free)
        b = np.zeros(3)
        sol, *_ = np.linalg.lstsq(Xs[:, idx], yw, rcond=None)
        b[idx] = sol / scale[idx]
        if b[1] < 0 or b[2] < 0:
            continue
        r = yw - Xw @ b
        cost = float(r @ r)
        if best is None or cost < best.cost:
            best = _Lin(b, cost)
        if len(idx) == 3:
            break
    if best is None:
        b = np.zeros(3)
        b[0] = float(np.sum(w * y) / np.sum(w))
        r = yw - Xw @ b
        best = _Lin(b, float(r @ r))
    return best


def _inverse(H: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric information matrix, computed on its unit-diagonal form so that the units of
    the parameters (the LR's, through A and C) do not change it; a tiny relative ridge keeps a vanished column
    (S2 = 0, A = 0) invertible (a parameter with no information at all gets a variance of 1e12)."""
    d = np.sqrt(np.maximum(np.diag(H), 0.0))
    d = np.where(d > 0, d, 1.0)
    Hs = H / np.outer(d, d)
    Hs[np.diag_indices_from(Hs)] += 1e-12
    try:
        inv = np.linalg.inv(Hs)
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(Hs)
    cov = inv / np.outer(d, d)
    return 0.5 * (cov + cov.T)


def _robust_sigma(r: np.ndarray) -> float:
    if r.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def _level(sub: Observations, half: int = 10) -> np.ndarray:
    """A smooth level of the loss at each window, the denominator of its relative residual: the running median
    of the ``2 * half + 1`` windows around it in step order (shorter near the ends, so a monotone curve keeps
    its own value there). Dividing by the observed loss instead weighs each window by ``1 / y^2``, which
    favours the windows that fell low by chance and pulls the fit below a noisy curve: by about the relative
    variance of one window, -8 % on a flat per-step loss with 25 % noise."""
    n = sub.y.size
    h = min(half, (n - 1) // 4)
    if h < 1:
        return sub.y.copy()
    order = np.argsort(sub.end, kind="stable")
    y = sub.y[order]
    from numpy.lib.stride_tricks import sliding_window_view

    med = np.median(sliding_window_view(np.pad(y, h, mode="edge"), 2 * h + 1), axis=1)
    out = np.empty(n)
    out[order] = med
    return out


def _noise_from_differences(y: np.ndarray, count: np.ndarray) -> float:
    """Relative noise of one raw point from second differences of neighbouring windows (trend-free)."""
    if y.size < 5:
        return 0.0
    z = y / np.median(y)
    d2 = z[2:] - 2 * z[1:-1] + z[:-2]
    v = 1.0 / count[2:] + 4.0 / count[1:-1] + 1.0 / count[:-2]
    return _robust_sigma(d2 / np.sqrt(v))


# --------------------------------------------------------------------------------------------------------
# fit


# relative to the peak: an LR below it is the zero-LR rule's floor (1e-12 of the peak), not an LR
_ZERO_LR = 1e-9
# the share of the run's annealing area its fit must have seen for C to stop mattering to the forecast
_C_MATTERS = 0.99


def _usable(obs: Observations, lrs: np.ndarray, skip_warmup: bool) -> np.ndarray:
    T = lrs.size
    # losses are positive and of ordinary size; residuals are relative, so a loss of ~0 cannot be weighed
    ok = np.isfinite(obs.y) & (obs.start >= 1) & (obs.end <= T) & (obs.count > 0) & (obs.y > 1e-12)
    # a window that reaches back before the first positive LR averages S1 = 0 (S1^-alpha infinite): a run
    # logged from step 1 under an LR held at 0 for its first updates, binned across the start of training
    peak_lr = float(np.max(lrs)) if T else 0.0
    ok &= obs.start > int(np.argmax(lrs > _ZERO_LR * peak_lr))
    if skip_warmup:
        peak = int(np.argmax(lrs)) + 1
        ok &= obs.end > peak
    return ok


def _too_few(obs: Observations, lrs: np.ndarray, cfg: FitConfig, n: int, need: int) -> str:
    """Why only ``n`` of the observations can be fitted, in words (the ``insufficient_data`` warning)."""
    peak = int(np.argmax(lrs)) + 1
    finite = np.isfinite(obs.y)
    left = [
        (int((~finite).sum()), "not finite"),
        (int((finite & (obs.y <= 1e-12)).sum()), "at or below 0 (the law fits positive losses)"),
        (
            int((obs.end <= peak).sum()) if cfg.skip_warmup else 0,
            f"in the warm-up (up to the LR peak, step {peak})",
        ),
    ]
    why = "; ".join(f"{k} {what}" for k, what in left if k)
    return f"only {n} usable points (need {need})" + (f": of {len(obs)}, {why}" if why else "")


def _insufficient(law: str, n: int, msg: str) -> FitResult:
    return FitResult(law=law, params=None, status=FitStatus.INSUFFICIENT_DATA, n_points=n, warnings=[msg])


def _resolve_prior(prior: str | AnnealingPrior | None) -> AnnealingPrior | None:
    if prior is None or isinstance(prior, AnnealingPrior):
        return prior
    return load_prior(prior)


def fit(
    obs: Observations, lrs: ArrayLike, config: FitConfig | None = None, init: FitResult | None = None
) -> FitResult:
    """Fit the configured law to ``obs`` (:class:`Observations`, e.g. ``Observations.from_steps(steps,
    losses)``) under the schedule ``lrs`` (the whole planned schedule, an array or a spec string; only the
    observed part enters the fit, the rest decides whether ``C`` matters). Never raises on finite input:
    too few usable points give ``insufficient_data``; an annealing coefficient the data cannot pin gives
    ``annealing_unidentified`` (the prior carries it, or without a prior it is a guess of 0)."""
    if not isinstance(obs, Observations):
        raise TypeError(
            f"obs must be Observations, e.g. Observations.from_steps(steps, losses); got {type(obs).__name__}"
        )
    cfg = config or FitConfig()
    a = (as_lrs(lrs) if isinstance(lrs, str) else np.asarray(lrs, dtype=np.float64)).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("lrs must be a non-empty array of finite, non-negative learning rates")
    res = _said_out_of_shape(_fit(obs, a, cfg, init), cfg)
    return _with_own_backtest(res, obs, a, cfg) if cfg.own_backtest else res


def _said_out_of_shape(res: FitResult, cfg: FitConfig) -> FitResult:
    """``res`` with a warning when its law is out of the shape of a loss curve the law describes: a floor below
    zero, an exponent at its bound (a loss falling toward zero on a separable task, a transient) or a power
    law's term of zero: its forecast and band are extrapolations of a curve it does not model."""
    p = res.params
    if p is None:
        return res
    said = []
    if res.law == "tissue" and p.L0 < 0:
        said.append(f"the fitted loss floor L0 = {p.L0:.4g} is below zero")
    lo, hi = cfg.alpha_bounds
    if res.law == "tissue" and not lo * (1 + 1e-3) < p.alpha < hi * (1 - 1e-3):
        said.append(f"the power law's exponent sits at its bound ({p.alpha:.3g})")
    elif res.law == "tissue" and p.A <= 0:
        # a loss that fell fast and then held: the fit keeps its level and the annealing drop, and alpha,
        # multiplying nothing, is no measurement (the status said every parameter was pinned)
        said.append("the power law's term is zero (A = 0: its exponent is not measured)")
    if not said:
        return res
    note = (
        f"[out_of_shape] {' and '.join(said)}: the loss does not follow the law's shape here (a loss falling "
        "toward zero, a transient), so its forecast and band are an extrapolation to be read with care"
    )
    return res.model_copy(update={"warnings": [*res.warnings, note]})


def _fit(obs: Observations, a: np.ndarray, cfg: FitConfig, init: FitResult | None) -> FitResult:
    """:func:`fit` on a checked schedule, without what it adds to the law's own fit."""
    try:
        with np.errstate(all="ignore"):
            if cfg.law == "mpl":
                res = _fit_mpl(obs, a, cfg, init)
            elif cfg.law == "auto":
                res = _fit_auto(obs, a, cfg, init)
            else:
                res = _fit_tissue(obs, a, cfg, init)
    except (np.linalg.LinAlgError, ValueError, FloatingPointError, OverflowError, ZeroDivisionError) as exc:
        return FitResult(
            law=cfg.law,
            params=None,
            status=FitStatus.FAILED,
            n_points=len(obs),
            warnings=[f"fit failed: {exc}"],
        )
    if res.params is not None and not all(
        math.isfinite(v) for v in (res.params.L0, res.params.A, res.params.alpha, res.params.C)
    ):
        return FitResult(
            law=res.law,
            params=None,
            status=FitStatus.FAILED,
            n_points=res.n_points,
            warnings=["non-finite fit"],
        )
    return res


def _with_own_backtest(res: FitResult, obs: Observations, lrs: np.ndarray, cfg: FitConfig) -> FitResult:
    """``res`` with ``backtest_sd = min(|log(m_half(t) / m(t))|, |log(m(t / 2) / m(t))|)``: ``m`` the law of
    ``res`` and ``m_half`` the same law fitted (``cfg``, from no earlier fit) to the windows ending by ``t / 2``,
    ``t = res.fitted_until``. The miss is held to what the loss moved over the same span: a half-range fit that
    misses by more than that was led astray by a transient early in the run (a loss falling tenfold in its
    first steps onto a plateau), which says nothing of how the law extrapolates from here. The half-range fit
    needs three points, not ``cfg.min_points``. Left at 0 when either fit has no law or a level that is not
    positive."""
    if res.params is None:
        return res
    t = res.fitted_until
    early = obs.end <= t // 2
    if not early.any():
        return res
    # a run evaluated every few hundred steps has a handful of points in its first half early on, which is when
    # the law is most often the wrong shape (a tiny model's learning phase); the priors pin what three cannot
    sparse = cfg.model_copy(update={"min_points": 3})
    half = _fit(
        Observations(obs.start[early], obs.end[early], obs.y[early], obs.count[early]), lrs, sparse, None
    )
    if half.params is None:
        return res
    at = np.array([max(t // 2, 1), t], dtype=np.int64)
    with np.errstate(all="ignore"):
        m_half = float(LAWS[half.law].predict(half.params, lrs, at[1:])[0])
        m_mid, m = (float(v) for v in LAWS[res.law].predict(res.params, lrs, at))
    if not all(math.isfinite(v) and v > 0 for v in (m_half, m_mid, m)):
        return res
    return res.model_copy(update={"backtest_sd": min(abs(math.log(m_half / m)), abs(math.log(m_mid / m)))})


def _fit_tissue(obs: Observations, lrs: np.ndarray, cfg: FitConfig, init: FitResult | None) -> FitResult:
    ok = _usable(obs, lrs, cfg.skip_warmup)
    n = int(ok.sum())
    if n < cfg.min_points:
        return _insufficient("tissue", n, _too_few(obs, lrs, cfg, n, cfg.min_points))
    sub = Observations(obs.start[ok], obs.end[ok], obs.y[ok], obs.count[ok])
    prior = _resolve_prior(cfg.prior)
    lams = cfg.lam_grid if cfg.fit_lam else (cfg.lam,)
    peak = float(lrs.max())
    # the loss level the run has reached: mean of the latest windows (robust to a single spike)
    tail = sub.y[np.argsort(sub.end)[-max(3, n // 10) :]]
    l_ref = float(np.median(tail))
    sigma0 = max(_noise_from_differences(sub.y, sub.count), 1e-6)
    level = _level(sub)  # the same for every pass and every lam

    def best_over_lam(l_ref: float, init: FitResult | None) -> dict:
        best: tuple[float, dict] | None = None
        for lam in lams:
            res = _fit_one_lam(sub, level, lrs, lam, cfg, prior, peak, l_ref, sigma0, init)
            if best is None or res["obj"] < best[0]:
                best = (res["obj"], res)
        assert best is not None
        return best[1]

    r = best_over_lam(l_ref, init)
    if prior is not None and cfg.prior_ref == "final":
        # the prior is learned relative to the run's final loss before annealing, L0 + A * S1(T)^-alpha;
        # the latest observed level overstates it early in the run, so a second pass uses the first fit's value
        L0, A, _ = r["beta"]
        ref = float(L0 + A * float(r["D"].s1_all[-1]) ** (-r["alpha"]))
        if math.isfinite(ref) and 0.2 * l_ref < ref < 2.0 * l_ref:
            l_ref = ref
            warm = FitResult(
                law="tissue",
                params=LawParams(L0=L0, A=A, alpha=r["alpha"], C=float(r["beta"][2])),
                status=FitStatus.OK,
                n_points=n,
            )
            r = best_over_lam(l_ref, warm)
    return _finish(sub, lrs, cfg, prior, r, l_ref, peak)


def _fit_one_lam(
    sub: Observations,
    ref: np.ndarray,
    lrs: np.ndarray,
    lam: float,
    cfg: FitConfig,
    prior: AnnealingPrior | None,
    peak: float,
    l_ref: float,
    sigma0: float,
    init: FitResult | None,
) -> dict:
    sigma = sigma0
    D = _Design(sub, lrs, lam, cfg.warmup, cfg.memory_for(lrs.size))
    y = sub.y
    base_w = sub.count / (ref * ref)  # relative residuals, against the smooth level ``ref`` (see _level)
    if cfg.recency > 0:
        # the law's shape is imperfect: let the latest part of the curve, nearest the forecast, count more
        base_w = base_w * np.power(sub.end / float(sub.end.max()), cfg.recency)
    u_end = float(D.s2_all[-1]) * (1.0 - lam) / peak
    # the honest prior (kept for the posterior covariance) and the one the point estimate sees: wider, so that
    # the run's own data rule C as soon as they say anything about it
    c_prior = prior.c_prior(peak, lam, l_ref, u_end) if prior is not None else None
    c_fit = (c_prior[0], c_prior[1] * cfg.prior_fit_scale) if c_prior is not None else None
    a_prior = (
        (prior.alpha_mean, prior.alpha_sd)
        if prior is not None and cfg.use_alpha_prior and prior.alpha_mean is not None and prior.alpha_sd
        else None
    )
    nu_c = prior.kappa_dof if c_prior is not None and prior is not None else None
    nu_a = prior.alpha_dof if a_prior is not None and prior is not None else None
    lo, hi = cfg.alpha_bounds
    rob = np.ones_like(y)
    X = np.empty((y.size, 3))
    X[:, 0] = 1.0
    X[:, 2] = -D.s2m
    wc = 1.0  # the C prior's IRLS weight: below 1 where the run's data put C far out in a t prior's tails

    def evaluate(alpha: float, w: np.ndarray) -> tuple[float, _Lin]:
        X[:, 1] = D.f1(alpha)
        lin = _solve_linear(X, y, w, None if c_fit is None else (c_fit[0], c_fit[1] / math.sqrt(wc)))
        obj = lin.cost
        if a_prior is not None:
            obj += _prior_cost((alpha - a_prior[0]) / a_prior[1], nu_a)
        return obj, lin

    from scipy.optimize import minimize_scalar  # here, not at import: keeps `import scaleforecast` fast

    alpha0 = init.params.alpha if init is not None and init.params is not None else None
    alpha = alpha0 if alpha0 is not None and lo <= alpha0 <= hi else None
    lin: _Lin | None = None
    for _ in range(cfg.irls_iters if cfg.loss == "huber" else 1):
        w = base_w * rob / (sigma * sigma)
        if alpha is None:
            grid = np.geomspace(lo, hi, 25)
            vals = [evaluate(float(g), w)[0] for g in grid]
            k = int(np.argmin(vals))
            bl, bh = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
        else:
            bl, bh = max(lo, alpha * 0.7), min(hi, alpha * 1.3)
        opt = minimize_scalar(
            lambda t, w=w: evaluate(float(t), w)[0],
            bounds=(bl, bh),
            method="bounded",
            options={"xatol": 1e-4},
        )
        alpha = float(opt.x)
        _, lin = evaluate(alpha, w)
        if nu_c is not None and c_fit is not None:
            wc = _t_weight((lin.beta[2] - c_fit[0]) / c_fit[1], nu_c)
        X[:, 1] = D.f1(alpha)
        rel = (y - X @ lin.beta) / ref * np.sqrt(sub.count)
        s_new = _robust_sigma(rel) if rel.size > 3 else sigma
        sigma = max(s_new, 1e-6)
        if cfg.loss == "huber" and cfg.huber_delta is not None:
            # the paper's form: a fixed threshold on the log-loss residual of each window
            u = np.abs(rel) / np.sqrt(sub.count)
            rob = np.where(u <= cfg.huber_delta, 1.0, cfg.huber_delta / np.maximum(u, 1e-300))
        elif cfg.loss == "huber":
            u = np.abs(rel) / sigma
            rob = np.where(u <= cfg.huber_k, 1.0, cfg.huber_k / np.maximum(u, 1e-12))
    assert lin is not None and alpha is not None
    infl = 1.0
    if cfg.autocorr and y.size > 8:
        # residuals that move together (model error, not noise) carry less information than their count:
        # inflate the noise by the AR(1) factor so the prior keeps its say and the intervals widen
        X[:, 1] = D.f1(alpha)
        rr = ((y - X @ lin.beta) / ref * np.sqrt(sub.count))[np.argsort(sub.end)]
        rr = rr - rr.mean()
        den = float(rr @ rr)
        rho = float(rr[:-1] @ rr[1:]) / den if den > 0 else 0.0
        rho = min(max(rho, 0.0), 0.98)
        infl = math.sqrt((1.0 + rho) / (1.0 - rho))
    w = base_w * rob / (sigma * sigma * infl * infl)
    _, lin = evaluate(alpha, w)
    # a score comparable across lam values: the same noise scale and robust weights for every lam
    X[:, 1] = D.f1(alpha)
    r_rel = (y - X @ lin.beta) / ref
    score = float(np.sum(sub.count * rob * r_rel**2)) / sigma0**2
    if c_fit is not None:
        score += _prior_cost((lin.beta[2] - c_fit[0]) / c_fit[1], nu_c)
    return {
        "obj": score,
        "alpha": alpha,
        "beta": lin.beta,
        "lam": lam,
        "sigma": sigma,
        "w": w,
        "D": D,
        "c_prior": c_prior,
        "a_prior": a_prior,
        "nu_c": nu_c,
        "nu_a": nu_a,
    }


def _prior_cost(z: float, nu: float | None) -> float:
    """The cost a prior adds at ``z`` scales from its centre: ``z^2`` for a normal (``nu=None``), the
    Student-t's ``(nu + 1) * log(1 + z^2 / nu)`` otherwise (quadratic near the centre, logarithmic in the
    tails: a run far from the prior pays little more for being further)."""
    z2 = float(z) ** 2
    return z2 if nu is None else (nu + 1.0) * math.log1p(z2 / nu)


def _t_weight(z: float, nu: float) -> float:
    """The IRLS weight ``(nu + 1) / (nu + z^2)`` of a Student-t prior ``z`` scales from its centre: the
    weighted quadratic row has the t's gradient there."""
    return (nu + 1.0) / (nu + float(z) ** 2)


def _prior_resid(z: float, nu: float | None) -> float:
    """A residual whose square is :func:`_prior_cost` (for least-squares solvers), with the sign of ``z``."""
    return math.copysign(math.sqrt(_prior_cost(z, nu)), z)


def _prior_precision(x: float, centre: float, scale: float, nu: float | None) -> float:
    """The precision a prior ``(centre, scale)`` adds to the posterior at ``x``: ``1 / scale^2`` for a normal;
    for a Student-t, the normal with the t's 80% interval (sd ``scale * t_0.9(nu) / z_0.9``), weakened as
    ``nu / (nu + z^2)`` where ``x`` lies ``z`` scales out (the run's data have overruled the prior there)."""
    if nu is None:
        return 1.0 / scale**2
    from scipy.special import stdtrit  # here, not at import: keeps `import scaleforecast` fast

    widen = float(stdtrit(nu, 0.9)) / 1.2815515655446004
    z2 = ((x - centre) / scale) ** 2
    return nu / (nu + z2) / (scale * widen) ** 2


def _finish(
    sub: Observations,
    lrs: np.ndarray,
    cfg: FitConfig,
    prior: AnnealingPrior | None,
    r: dict,
    l_ref: float,
    peak: float,
) -> FitResult:
    D: _Design = r["D"]
    L0, A, C = (float(v) for v in r["beta"])
    alpha = float(r["alpha"])
    w = r["w"]
    # Laplace: J of the window-mean model wrt (L0, A, alpha, C)
    J = np.column_stack([np.ones_like(sub.y), D.f1(alpha), A * D.df1(alpha), -D.s2m])
    H = (J * w[:, None]).T @ J
    if r["a_prior"] is not None:
        mu_a, sd_a = r["a_prior"]
        H[2, 2] += _prior_precision(alpha, mu_a, sd_a, r["nu_a"])
    H_data_c = H.copy()
    if r["c_prior"] is not None:
        # the honest prior (its spread between codebases included) enters the uncertainty, not the wider one the
        # point estimate used; its share of the interval is calibrated by prior_interval_scale
        mu_c, sd_c = r["c_prior"]
        H[3, 3] += _prior_precision(C, mu_c, sd_c * cfg.prior_interval_scale, r["nu_c"])
    cov = _inverse(H)

    warns: list[str] = []
    status = FitStatus.OK
    # does the rest of the schedule anneal beyond what was seen (in units of a full anneal, so that the test
    # does not depend on the LR's units)? then C matters
    s2_seen = float(np.max(D.s2m)) if D.s2m.size else 0.0
    s2_future = float(np.max(D.s2_all))
    mu_prior, sd_prior = (
        r["c_prior"] if r["c_prior"] is not None else load_prior("default").c_prior(peak, r["lam"], l_ref)
    )
    # (at the end of a run the last percent of its annealing area, which C's error cannot move the forecast by
    # more than a percent of the drop, is no reason to say C is unknown: a finished cosine run ended
    # "annealing_unidentified", its last forecast "with C from the prior")
    ahead = (s2_future - s2_seen) * (1.0 - r["lam"]) / peak > 1e-9 and s2_seen < _C_MATTERS * s2_future
    if ahead and mu_prior > 0 and sd_prior > 0:
        # the run's own information on C after profiling out the other parameters (Schur complement): C is
        # identified once the data know it as precisely, relative to its size, as the prior does (a run whose
        # drop is far from the prior's is judged against its own C)
        sd_c_data = math.sqrt(max(_inverse(H_data_c)[3, 3], 0.0))
        if not sd_c_data * cfg.identified_ratio <= sd_prior / mu_prior * max(mu_prior, C):
            status = FitStatus.ANNEALING_UNIDENTIFIED
            if prior is None:
                warns.append(
                    "the LR has not decayed enough to learn the annealing coefficient C from this run, and no "
                    f"prior is set: C = {C:.3g} is a guess, the forecast ignores most of the coming drop"
                )
            elif s2_seen > 0.9 * s2_future:
                # most of the annealing is behind: the data follow it, but cannot tell C from the power law
                warns.append(
                    "annealing coefficient C not told apart from the power law by the run; the last "
                    f"{100 * (1 - s2_seen / s2_future):.2g}% of its annealing is forecast with C from the prior"
                )
            else:
                warns.append("annealing coefficient C not yet identified by the run; it comes from the prior")
    extra = {"warmup_hold": 1.0 if cfg.warmup == "hold" else 0.0}
    if D.memory is not None:
        (lam_fast, mix), (lam_slow, _) = D.memory
        extra.update(lam_fast=lam_fast, lam_slow=lam_slow, mix_fast=mix)
    params = LawParams(
        L0=L0,
        A=A,
        alpha=alpha,
        C=C,
        lam=float(r["lam"]),
        extra=extra,
    )
    return FitResult(
        law="tissue",
        params=params,
        status=status,
        n_points=int(sub.y.size),
        sigma=float(r["sigma"]),
        warnings=warns,
        cov=cov.tolist(),
        warmup=cfg.warmup,
        fitted_until=int(sub.end.max()),
        interval_scale=cfg.interval_scale,
        model_sd=cfg.model_sd,
        anneal_sd=cfg.anneal_sd,
        l_ref=l_ref,
        c_prior=r["c_prior"],
    )


# --------------------------------------------------------------------------------------------------------
# the Multi-Power Law (Luo et al. 2025), also by variable projection: L0, A, B linear; alpha, C, beta, gamma
# searched by bounded least squares from the paper's typical values

_MPL_NAMES = ["L0", "A", "B", "alpha", "logCm", "beta", "gamma"]
_MPL_LO = np.array([0.05, math.log(1e-4), 0.05, 0.0])
_MPL_HI = np.array([2.0, math.log(1e4), 3.0, 1.5])


def _mpl_features(
    theta: np.ndarray, lrs: np.ndarray, steps: np.ndarray, s1: np.ndarray, start: int
) -> np.ndarray:
    alpha, logc, beta, gamma = theta
    f1 = np.power(np.maximum(s1, 1e-300), -alpha)
    ld = mpl_drop(lrs, steps, 1.0, math.exp(logc), beta, gamma, start=start, max_blocks=256)
    return np.column_stack([np.ones_like(f1), f1, -ld])


def _fit_mpl(obs: Observations, lrs: np.ndarray, cfg: FitConfig, init: FitResult | None) -> FitResult:
    from scipy.optimize import least_squares

    ok = _usable(obs, lrs, True)
    n = int(ok.sum())
    if n < max(cfg.min_points, 8):
        return _insufficient("mpl", n, _too_few(obs, lrs, cfg, n, max(cfg.min_points, 8)))
    sub = Observations(obs.start[ok], obs.end[ok], obs.y[ok], obs.count[ok])
    prior = _resolve_prior(cfg.prior)
    peak = float(lrs.max())
    s2_end = float(schedule_areas(lrs, cfg.lam, "hold", cfg.memory_for(lrs.size))[1][-1])
    # the fit runs on the LR relative to its peak (kept as extra["lr_unit"]): B is then the full-anneal drop
    # and the bounds on C do not depend on the LR's units
    lrs = lrs / peak
    # a window is represented by its midpoint (MPL windows are short against the curve's scale)
    steps = np.clip((sub.start + sub.end) // 2, 1, lrs.size)
    s1 = forward_area(lrs)[steps - 1]
    start = int(np.argmax(lrs)) + 1
    y = sub.y
    tail = y[np.argsort(sub.end)[-max(3, n // 10) :]]
    l_ref = float(np.median(tail))
    sigma = max(_noise_from_differences(y, sub.count), 1e-6)
    # B (LR in units of its peak) is MPL's full-anneal drop: the same scale-free prior as kappa
    b_prior: tuple[float, float] | None = None
    b_fit: tuple[float, float] | None = None
    if prior is not None:
        u_end = s2_end * (1.0 - cfg.lam) / peak
        mu_c, sd_c = prior.c_prior(peak, cfg.lam, l_ref, u_end)
        to_b = peak / (1.0 - cfg.lam)
        b_prior = (mu_c * to_b, sd_c * to_b)
        b_fit = (b_prior[0], b_prior[1] * cfg.prior_fit_scale)
    a_prior = (
        (prior.alpha_mean, prior.alpha_sd)
        if prior is not None and cfg.use_alpha_prior and prior.alpha_mean is not None and prior.alpha_sd
        else None
    )
    nu_b = prior.kappa_dof if prior is not None else None
    nu_a = prior.alpha_dof if prior is not None else None
    ref = _level(sub)
    w = sub.count / (ref * ref) / sigma**2

    def resid(theta: np.ndarray) -> np.ndarray:
        X = _mpl_features(theta, lrs, steps, s1, start)
        lin = _solve_linear(X, y, w, b_fit)
        r = np.sqrt(w) * (y - X @ lin.beta)
        extra = []
        if b_fit is not None:
            extra.append(_prior_resid((lin.beta[2] - b_fit[0]) / b_fit[1], nu_b))
        if a_prior is not None:
            extra.append(_prior_resid((theta[0] - a_prior[0]) / a_prior[1], nu_a))
        return np.concatenate([r, extra]) if extra else r

    if init is not None and init.law == "mpl" and init.params is not None:
        e = init.params.extra
        x0 = np.array(
            [init.params.alpha, math.log(e.get("Cm", 1.0)), e.get("beta", 0.5), e.get("gamma", 0.5)]
        )
    else:
        x0 = np.array([0.5, math.log(1.0), 0.5, 0.5])
    x0 = np.clip(x0, _MPL_LO + 1e-6, _MPL_HI - 1e-6)
    try:
        sol = least_squares(resid, x0, bounds=(_MPL_LO, _MPL_HI), x_scale=[0.1, 1.0, 0.2, 0.2], max_nfev=200)
    except (ValueError, np.linalg.LinAlgError) as exc:  # non-finite residuals from a wild step
        return FitResult(law="mpl", params=None, status=FitStatus.FAILED, n_points=n, warnings=[str(exc)])
    theta = sol.x
    X = _mpl_features(theta, lrs, steps, s1, start)
    lin = _solve_linear(X, y, w, b_fit)
    L0, A, B = (float(v) for v in lin.beta)
    rel = (y - X @ lin.beta) / ref * np.sqrt(sub.count)
    sigma = max(_robust_sigma(rel), 1e-6)
    # Laplace on all seven parameters (numerical Jacobian of the model)
    full = np.array([L0, A, B, *theta])

    def model(v: np.ndarray) -> np.ndarray:
        Xv = _mpl_features(v[3:], lrs, steps, s1, start)
        return Xv @ v[:3]

    J = np.empty((n, 7))
    f0 = model(full)
    for i in range(7):
        h = 1e-5 * max(abs(full[i]), 1e-3)
        v = full.copy()
        v[i] += h
        J[:, i] = (model(v) - f0) / h
    wn = sub.count / (ref * ref) / sigma**2
    H = (J * wn[:, None]).T @ J
    if b_prior is not None:
        H[2, 2] += _prior_precision(B, *b_prior, nu_b)
    if a_prior is not None:
        H[3, 3] += _prior_precision(float(theta[0]), *a_prior, nu_a)
    cov = _inverse(H)
    params = LawParams(
        L0=L0,
        A=A,
        alpha=float(theta[0]),
        C=0.0,
        lam=cfg.lam,
        extra={
            "B": B,
            "Cm": math.exp(theta[1]),
            "beta": float(theta[2]),
            "gamma": float(theta[3]),
            "lr_unit": peak,
        },
    )
    # the annealing drop is pinned once the LR has decayed by a fair share of its peak
    decayed = 1.0 - float(lrs[min(int(sub.end.max()), lrs.size) - 1])
    future = 1.0 - float(lrs.min())
    status = FitStatus.OK
    warns: list[str] = []
    if future > decayed + 1e-9 and decayed < 0.1:
        status = FitStatus.ANNEALING_UNIDENTIFIED
        warns.append("annealing drop not yet identified by the run; it comes from the prior")
    return FitResult(
        law="mpl",
        params=params,
        status=status,
        n_points=n,
        sigma=sigma,
        warnings=warns,
        cov=cov.tolist(),
        param_names=list(_MPL_NAMES),
        warmup="hold",
        fitted_until=int(sub.end.max()),
        interval_scale=cfg.interval_scale,
        model_sd=cfg.model_sd,
        anneal_sd=cfg.anneal_sd,
        l_ref=l_ref,
        c_prior=b_prior,
    )


def _fit_auto(obs: Observations, lrs: np.ndarray, cfg: FitConfig, init: FitResult | None) -> FitResult:
    """Both laws fitted on the first 80% of the usable windows and scored on the last 20%; the better one
    (relative squared error) is refitted on everything."""
    ok = _usable(obs, lrs, cfg.skip_warmup)
    idx = np.nonzero(ok)[0]
    if idx.size < 2 * cfg.min_points:
        return _fit_tissue(obs, lrs, cfg, init)
    order = idx[np.argsort(obs.end[idx])]
    cut = order[: int(0.8 * order.size)]
    held = order[int(0.8 * order.size) :]
    train = Observations(obs.start[cut], obs.end[cut], obs.y[cut], obs.count[cut])
    score: dict[str, float] = {}
    for law in ("tissue", "mpl"):
        r = _fit(train, lrs, cfg.model_copy(update={"law": law}), None)
        if r.params is None:
            continue
        mu = LAWS[law].predict(r.params, lrs, obs.end[held])
        score[law] = float(np.mean(((mu - obs.y[held]) / obs.y[held]) ** 2))
    best = min(score, key=score.__getitem__) if score else "tissue"
    res = _fit(obs, lrs, cfg.model_copy(update={"law": best}), init if init and init.law == best else None)
    return res.model_copy(update={"warnings": [*res.warnings, f"law auto-selected: {best}"]})


# --------------------------------------------------------------------------------------------------------
# predict


def _tissue_grad(p: LawParams, areas: tuple[np.ndarray, np.ndarray], steps: np.ndarray) -> np.ndarray:
    full1, full2 = areas
    s1 = full1[steps - 1]
    s2 = full2[steps - 1]
    s1 = np.maximum(s1, 1e-300)
    pw = np.power(s1, -p.alpha)
    return np.column_stack([np.ones_like(s1), pw, -p.A * pw * np.log(s1), -s2])


def _mpl_vec(p: LawParams) -> np.ndarray:
    e = p.extra
    return np.array([p.L0, p.A, e["B"], p.alpha, math.log(e["Cm"]), e["beta"], e["gamma"]])


def _mpl_grad(p: LawParams, lrs: np.ndarray, steps: np.ndarray) -> np.ndarray:
    v = _mpl_vec(p)
    lrs = lrs / p.extra.get("lr_unit", 1.0)
    s1 = forward_area(lrs)[steps - 1]
    start = int(np.argmax(lrs)) + 1

    def model(u: np.ndarray) -> np.ndarray:
        return _mpl_features(u[3:], lrs, steps, s1, start) @ u[:3]

    f0 = model(v)
    g = np.empty((steps.size, 7))
    for i in range(7):
        h = 1e-5 * max(abs(v[i]), 1e-3)
        u = v.copy()
        u[i] += h
        g[:, i] = (model(u) - f0) / h
    return g


def predict(result: FitResult, lrs: ArrayLike, steps: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mean and std of the loss after ``steps`` updates (1..len(lrs)) under the schedule ``lrs``
    (any schedule: the what-if). The std combines the parameter uncertainty (posterior covariance, scaled by
    ``interval_scale``) with two model-error terms: ``model_sd * mean * h``, where ``h`` is the fraction of the
    LR area still ahead of the fit (``(S1(s) - S1(fitted_until)) / S1(s)``, 0 inside the fitted range), and,
    for the annealing law, ``anneal_sd * C * (S2(s) - S2(fitted_until))``, the annealing drop still ahead
    (large late in a long cooldown, where little LR area is left). The std is the same at every interval
    level: a central interval is ``mean +- z * std``. With the run's own backtest (``backtest_sd``, the relative
    miss of its half-range fit) a third term, ``backtest_sd * mean * log2(s / fitted_until)`` beyond the fitted
    range, carries that miss forward once per doubling of the steps."""
    if result.params is None:
        raise ValueError(f"no fitted law to predict with (status {result.status.value})")
    a = np.asarray(lrs, dtype=np.float64).reshape(-1)
    st = np.asarray(steps, dtype=np.int64).reshape(-1)
    if st.size and (st.min() < 1 or st.max() > a.size):
        raise ValueError(f"steps must lie in 1..{a.size} (the schedule's length)")
    law = LAWS[result.law]
    mean = law.predict(result.params, a, st)
    var = np.zeros_like(mean)
    p = result.params
    # the areas the gradient and the model-error term read, looked up once (a what-if schedule is hashed whole)
    areas = None
    if (result.cov is not None and result.law == "tissue") or result.model_sd > 0 or result.anneal_sd > 0:
        areas = schedule_areas(a, p.lam, "hold" if result.warmup == "hold" else "raw", memory_of(p))
    if result.cov is not None and result.law == "tissue":
        assert areas is not None
        g = _tissue_grad(p, areas, st)
        cov = np.asarray(result.cov)
        var = np.einsum("ij,jk,ik->i", g, cov, g) * result.interval_scale**2
    elif result.cov is not None and result.law == "mpl":
        g = _mpl_grad(result.params, a, st)
        cov = np.asarray(result.cov)
        var = np.einsum("ij,jk,ik->i", g, cov, g) * result.interval_scale**2
    if areas is not None and result.model_sd > 0:
        s1 = areas[0]
        s_fit = s1[min(max(result.fitted_until, 1), a.size) - 1]
        h = np.clip((s1[st - 1] - s_fit) / np.maximum(s1[st - 1], 1e-300), 0.0, 1.0)
        with np.errstate(invalid="ignore"):  # an infinite mean (S1 = 0) stays where nothing is ahead (h = 0)
            var = var + np.where(h > 0, (result.model_sd * np.abs(mean) * h) ** 2, 0.0)
    if areas is not None and result.anneal_sd > 0 and result.law == "tissue":
        s2 = areas[1]
        ahead = np.maximum(s2[st - 1] - s2[min(max(result.fitted_until, 1), a.size) - 1], 0.0)
        var = var + (result.anneal_sd * p.C * ahead) ** 2
    if result.backtest_sd > 0:
        doublings = np.log2(np.maximum(st / max(result.fitted_until, 1), 1.0))
        with np.errstate(invalid="ignore"):
            var = var + (result.backtest_sd * np.abs(mean) * doublings) ** 2
    return mean, np.sqrt(np.maximum(var, 0.0))
