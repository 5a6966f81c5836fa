"""Posterior-predictive check of the fitted law against the run's latest losses, and the band when it fails.

The LR-annealing law can only fall while the LR does not rise: ``dL/ds = -alpha A S1^(-alpha-1) lr_s - C m_s``
with ``m_s >= 0`` once the warm-up is over. Real runs sometimes leave it: a small model that saturates or
overfits (its loss turns and rises while the LR decays), a data-pipeline fault, a resume from the wrong
checkpoint. A forecast that keeps the law's tight band around such a curve is confidently wrong.

:func:`check_law` compares the latest stretch of the run (the last ``window_fraction`` of the observed steps,
at least ``min_window`` windows) with the fit on two counts:

- *departure*: the mean relative residual of the stretch, in units of its predictive spread ``sd_dep``
  (noise of the stretch's mean, the fit's own parameter spread there, and the misfit the law shows on the rest
  of the run, ``misfit``: the law's shape is imperfect, and a cooldown that it follows with a lag is not a
  violation);
- *departure ahead*: with the fit made before the latest windows arrived, their mean relative residual
  against that fit's predictive band (the PPC proper: a jump the new fit partly absorbs is still seen);
- *rise*: the loss climbs across the stretch (least-squares slope, relative) by more than ``rise_z`` of its
  standard error (from the stretch's own scatter, allowing for correlated residuals), while the LR over the
  stretch does not rise;
- *rise since the best*: the stretch sits above the lowest level the run showed earlier after its warm-up (the
  earlier losses pooled into blocks as large as the stretch, each read at its mean plus two of its noise sds,
  so that a lucky stretch cannot set the bar) by more than ``z`` of the noise of the two, while the LR has not
  risen since (or to more than twice that level, which no LR rise explains): a climb slower than the stretch,
  or one the fit has followed, which neither test above sees.

The law is violated when the departure exceeds ``z``, the loss rises, or it has climbed above its best.
:func:`widen` then turns the law's forecast into an honest one: the band spans both outcomes, the curve returning
to the law (the law's own lower bound) and the departure persisting, growing at its current rate until the last
step when it rises.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scaleforecast.fitting import _noise_from_differences as _point_noise
from scaleforecast.fitting import _robust_sigma as _robust_scale
from scaleforecast.laws import LAWS

__all__ = ["LawCheck", "LawCheckConfig", "check_law", "widen"]


class LawCheckConfig(BaseModel):
    """Thresholds of :func:`check_law`. ``z``: departure of the latest stretch in units of its predictive
    spread. ``rise_z``: significance of a rising loss (t-statistic of the slope, from the stretch's own
    scatter). ``max_new_decay``: the out-of-sample check skips a new stretch over which the LR fell by more
    than this share of its peak. ``window_fraction``/``min_window``: the stretch checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    z: float = Field(5.0, gt=0)
    rise_z: float = Field(4.0, gt=0)
    max_new_decay: float = Field(0.1, gt=0, le=1)
    window_fraction: float = Field(0.1, gt=0, le=0.5)
    min_window: int = Field(6, ge=3)


class LawCheck(BaseModel):
    """The outcome of :func:`check_law` for the stretch ``from_step..to_step``.

    ``departure``: mean relative residual of the stretch (``(loss - law) / law``); ``z_departure`` the same in
    units of its predictive spread; ``rise``: relative change of the loss across the stretch from its fitted
    slope, ``z_rise`` its t-statistic; ``misfit``: the law's usual relative misfit on the rest of the run;
    ``level``: the loss level at the end of the stretch (from the slope), ``slope`` its change per step;
    ``rising``: the violation is a rising loss (else an offset from the law); ``climb``: the stretch's rise
    above the lowest level the run reached earlier, when that is the violation (0 otherwise); ``judged``: False
    when the check could not judge the run yet (too few windows after the LR peak, or a law without a positive
    loss there), so that it passed for want of evidence, not on it.
    """

    model_config = ConfigDict(frozen=True)

    violated: bool
    judged: bool = True
    rising: bool = False
    from_step: int
    to_step: int
    departure: float = 0.0
    z_departure: float = 0.0
    rise: float = 0.0
    z_rise: float = 0.0
    climb: float = 0.0
    z_ahead: float = 0.0
    misfit: float = 0.0
    level: float | None = None
    slope: float = 0.0
    message: str = ""


def _misfit(rel: np.ndarray, sigma: float, count: np.ndarray) -> float:
    """The relative misfit of windows beyond their own noise: ``sqrt(median(max(rel^2 - sigma^2 / count, 0)))``
    (0 for no windows)."""
    if rel.size == 0:
        return 0.0
    return math.sqrt(float(np.median(np.maximum(rel**2 - sigma**2 / count, 0.0))))


# the variance of a median of normal noise against that of the mean, for the same points
_MEDIAN_VAR = math.pi / 2

# the largest rise above its best level that a rising LR can explain (a warm restart, a re-warm-up lifts the loss
# by a few percent to some tens): a loss that more than doubled has left the law, whatever the LR did
_LR_RISE_LIFTS_AT_MOST = 1.0


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of ``values`` with ``weights`` (raw points per window): a departure of the curve's level,
    which a few spiked points the run recovers from cannot make (their mean could: three steps at 3x the
    loss among a hundred moved it 6 %, and called a healthy run off its law)."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    return float(values[order][int(np.searchsorted(cum, 0.5 * cum[-1]))])


def _check_ahead(
    previous: object | None,
    lrs: np.ndarray,
    end: np.ndarray,
    mid: np.ndarray,
    y: np.ndarray,
    count: np.ndarray,
    sigma: float,
    max_new_decay: float,
) -> tuple[float, float] | None:
    """(departure, z) of the windows that arrived after ``previous`` was fitted, against its predictive band
    (its parameter spread, the noise of their mean and the misfit it showed on its own windows)."""
    from scaleforecast.fitting import predict

    params = getattr(previous, "params", None)
    until = int(getattr(previous, "fitted_until", 0) or 0)
    new = end > until
    if params is None or not new.any() or new.all() or (~new).sum() < 3:
        return None
    with np.errstate(all="ignore"):
        mu, sd = predict(previous, lrs, mid)  # type: ignore[arg-type]
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sd))) or np.any(mu <= 0):
        return None
    old = ~new
    # the previous fit's band holds where the schedule does what it did in the fitted range: a fresh LR drop
    # is the law's weakest part (the loss follows it with a lag of about 1 / (1 - lam) steps), so a stretch
    # within that lag of a drop is left to the rise test
    peak = float(lrs.max())
    lag = int(1.0 / max(1.0 - float(getattr(params, "lam", 0.999)), 1e-6))
    lr_before = float(lrs[min(max(until - lag, 1), lrs.size) - 1])
    lr_now = float(lrs[int(end[new][-1]) - 1])
    if lr_before - lr_now > max_new_decay * peak:
        return None
    rel = (y - mu) / mu
    misfit = _misfit(rel[old], sigma, count[old])
    w = count[new]
    n = float(w.sum())
    dep = _weighted_median(rel[new], w)
    param = float(np.sum(w * sd[new] / mu[new]) / n)
    spread = math.sqrt(_MEDIAN_VAR * sigma**2 / n + misfit**2 + param**2)
    return dep, (dep / spread if spread > 0 else 0.0)


def _rise_since_best(
    lrs: np.ndarray,
    end: np.ndarray,
    y: np.ndarray,
    count: np.ndarray,
    win: np.ndarray,
    rest: np.ndarray,
    sigma: float,
    z: float,
) -> tuple[float, float, int] | None:
    """(relative rise, its z, the best block's last step) of the stretch ``win`` over the lowest earlier level,
    when it is significant and the LR has not risen since (or the loss more than doubled); else ``None``. The
    earlier windows are pooled, in
    order, into blocks of at least as many raw points as the stretch, so that a block's mean is as noisy as the
    stretch's and neither a lucky small window nor a skewed per-batch noise sets the bar (``rest``: the windows
    before the stretch; ``sigma``: the relative noise of one raw point)."""
    if not rest.any() or sigma <= 0:
        return None
    w = count[win]
    n = float(w.sum())
    # the stretch's mean with each window held within 4 of its noise units of the stretch's median: a few
    # spiked steps the run recovers from (three at 4x among a hundred: +4.7 %) are no climb
    mid_level = _weighted_median(y[win], w)
    cap = 4.0 * sigma / np.sqrt(w)
    level = float(np.sum(w * np.clip(y[win], mid_level * (1 - cap), mid_level * (1 + cap))) / n)
    means, counts, ends = [], [], []
    acc_y = acc_n = 0.0
    for e_, y_, c_ in zip(end[rest].tolist(), y[rest].tolist(), count[rest].tolist(), strict=True):
        acc_y, acc_n = acc_y + y_ * c_, acc_n + c_
        if acc_n >= n:
            means.append(acc_y / acc_n)
            counts.append(acc_n)
            ends.append(int(e_))
            acc_y = acc_n = 0.0
    if not means:
        return None
    noise = sigma / np.sqrt(np.asarray(counts))
    upper = np.asarray(means) * (1.0 + 2.0 * noise)
    i = int(np.argmin(upper))
    best = float(upper[i])
    rise = level / best - 1.0
    spread = math.sqrt(sigma**2 / n + float(noise[i]) ** 2)
    best_end = ends[i]
    since = lrs[best_end - 1 : int(end[win][-1])]
    # a higher LR may lift the loss (the law's annealing area shrinks), by a few percent: not to twice its best
    lr_rose = float(since.max()) > float(lrs[best_end - 1]) * (1 + 1e-9)
    if rise <= 0 or rise / spread <= z or (lr_rose and rise <= _LR_RISE_LIFTS_AT_MOST):
        return None
    return rise, rise / spread, best_end


def check_law(
    fit: object,
    lrs: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    y: np.ndarray,
    count: np.ndarray,
    config: LawCheckConfig | None = None,
    previous: object | None = None,
) -> LawCheck:
    """Check the fitted law (``fit``, a :class:`scaleforecast.fitting.FitResult` with parameters) against the
    observed windows ``start..end`` (mean loss ``y`` of ``count`` raw points each) under the schedule ``lrs``.
    ``previous`` is the fit made before the latest windows arrived (the online forecaster's last one): the
    windows after its ``fitted_until`` are then also checked out of sample against its predictive band, so a
    jump that the new fit absorbs is still seen. Only windows after the LR peak count (the law does not model
    the warm-up). Never raises on finite input: with too few windows the check passes."""
    cfg = config or LawCheckConfig()
    params = getattr(fit, "params", None)
    end = np.asarray(end, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    y = np.asarray(y, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    peak = int(np.argmax(lrs)) + 1
    ok = np.isfinite(y) & (y > 0) & (end > peak) & (end <= lrs.size) & (count > 0)
    last = int(end[ok].max()) if ok.any() else 0
    if not cfg.enabled:
        return LawCheck(violated=False, from_step=last, to_step=last)
    passed = LawCheck(violated=False, judged=False, from_step=last, to_step=last)
    if params is None or ok.sum() < 2 * cfg.min_window:
        return passed
    start, end, y, count = start[ok], end[ok], y[ok], count[ok]
    order = np.argsort(end)
    start, end, y, count = start[order], end[order], y[order], count[order]
    mid = np.clip((start + end) // 2, 1, lrs.size)
    with np.errstate(all="ignore"):
        mu = np.asarray(LAWS[getattr(fit, "law", "tissue")].predict(params, lrs, mid), dtype=np.float64)
    if not np.all(np.isfinite(mu)) or np.any(mu <= 0):
        return passed
    rel = (y - mu) / mu
    first = peak + 1
    cut = last - cfg.window_fraction * (last - first)
    win = end > cut
    if win.sum() < cfg.min_window:
        win = np.zeros_like(win)
        win[-cfg.min_window :] = True
    rest = ~win
    if rest.sum() < cfg.min_window:
        return passed
    sigma = float(getattr(fit, "sigma", 0.0)) or _robust_scale(rel[rest] * np.sqrt(count[rest]))
    # the law's usual misfit on the rest of the run: what the residuals show beyond the noise of each window
    misfit = max(_misfit(rel[rest], sigma, count[rest]), _robust_scale(rel[rest]))
    w = count[win]
    n_eff = float(w.sum())
    dep = _weighted_median(rel[win], w)
    sd_dep = math.sqrt(_MEDIAN_VAR * sigma**2 / n_eff + misfit**2)
    z_dep = dep / sd_dep if sd_dep > 0 else 0.0
    # the latest quarter of the stretch on its own: a jump that covers less than half of the stretch does not
    # move its median (a few spiked steps must not), and would wait hundreds of steps to be seen
    latest = np.zeros_like(win)
    latest[np.flatnonzero(win)[-max(int(win.sum()) // 4, cfg.min_window) :]] = True
    if latest.sum() < win.sum():
        w_l = count[latest]
        dep_l = _weighted_median(rel[latest], w_l)
        sd_l = math.sqrt(_MEDIAN_VAR * sigma**2 / float(w_l.sum()) + misfit**2)
        if sd_l > 0 and abs(dep_l / sd_l) > max(cfg.z, abs(z_dep)):
            dep, z_dep = dep_l, dep_l / sd_l
    # a rising loss: least-squares slope of the relative loss over the stretch, weighted by raw points
    x = mid[win].astype(np.float64)
    med = float(np.median(y[win]))
    yr = y[win] / med
    xm = float(np.sum(w * x) / n_eff)
    ym = np.sum(w * yr) / n_eff
    sxx = float(np.sum(w * (x - xm) ** 2))
    slope_rel = float(np.sum(w * (x - xm) * (yr - ym)) / sxx) if sxx > 0 else 0.0
    resid = yr - (ym + slope_rel * (x - xm))
    # the slope's noise from the stretch's own scatter about its line (the fit's residual scale is no guide
    # here: a curve that left the law inflates it), inflated for residuals that move together, and never
    # below the run's point-to-point noise (a handful of smooth windows must not make any wiggle significant)
    u = resid * np.sqrt(w)
    s_res = max(float(np.sqrt(np.sum(u**2) / max(u.size - 2, 1))), _point_noise(y, count))
    rho = float(u[:-1] @ u[1:]) / float(u @ u) if u.size > 3 and float(u @ u) > 0 else 0.0
    rho = min(max(rho, 0.0), 0.9)
    se = s_res * math.sqrt((1 + rho) / (1 - rho)) / math.sqrt(sxx) if sxx > 0 else math.inf
    span = float(x[-1] - x[0])
    rise = slope_rel * span
    z_rise = slope_rel / se if se > 0 and math.isfinite(se) else 0.0
    lr_seg = lrs[int(start[win][0]) - 1 : int(end[win][-1])]
    lr_flat_or_falling = lr_seg.size < 2 or float(lr_seg[-1]) <= float(lr_seg[0]) * (1 + 1e-9)
    rising = lr_flat_or_falling and z_rise > cfg.rise_z
    departed = abs(z_dep) > cfg.z
    ahead = _check_ahead(previous, lrs, end, mid, y, count, sigma, cfg.max_new_decay)
    jumped = ahead is not None and abs(ahead[1]) > max(cfg.z, abs(z_dep))
    if jumped:
        dep, z_dep = ahead  # type: ignore[misc]
        departed = True
    climb = None
    if not (rising or departed):
        # two levels of the curve are compared: their noise is the point-to-point one, not the fit's sigma,
        # which a curve that left the law inflates with its misfit
        noise = _point_noise(y, count) or sigma
        climb = _rise_since_best(lrs, end, y, count, win, rest, noise, cfg.z)
    level = float(med * (ym + slope_rel * (x[-1] - xm)))
    slope_abs = slope_rel * med
    lo_step, hi_step = int(start[win][0]), int(end[win][-1])
    over = f"over steps {lo_step}..{hi_step}"
    msg = ""
    if rising:
        msg = (
            f"the loss rose by {100 * rise:.2f}% {over} while the LR did not rise: the annealing law cannot "
            "follow it"
        )
    elif climb is not None:
        msg = (
            f"the loss {over} is {100 * climb[0]:.2f}% above the lowest level it reached (by step {climb[2]}) "
            + (
                "while the LR did not rise: the annealing law cannot climb back"
                if climb[0] <= _LR_RISE_LIFTS_AT_MOST
                else "(more than twice it): no change of the LR explains that"
            )
        )
    elif departed:
        since = f"since step {int(getattr(previous, 'fitted_until', 0))}" if jumped else over
        msg = (
            f"the loss {since} is {100 * dep:+.2f}% off the fitted law "
            f"({z_dep:+.1f} of its predictive spread)"
        )
    return LawCheck(
        violated=rising or departed or climb is not None,
        rising=rising,
        climb=0.0 if climb is None else climb[0],
        from_step=lo_step,
        to_step=hi_step,
        departure=dep,
        z_departure=z_dep,
        rise=rise,
        z_rise=z_rise,
        z_ahead=0.0 if ahead is None else ahead[1],
        misfit=misfit,
        level=level,
        slope=slope_abs,
        message=msg,
    )


def widen(
    mean: np.ndarray, std: np.ndarray, steps: np.ndarray, check: LawCheck, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """The forecast after a failed check, at ``steps``, as a normal ``(mean, std)`` whose central ``level``
    interval is the union of two outcomes' intervals: the curve returns to the law (the law's own forecast),
    or the departure goes on. A rising loss goes on from its latest level at its current rate, a rate known
    only to within its own size (``sd = slope * steps ahead``); an offset persists along the law's shape,
    known only to within its own size (``sd = |departure| * law``). After a climb the fit has followed
    (``climb``), the law's forecast stands and the band reaches down to the curve back at the run's best level."""
    from scipy.special import ndtri  # the forecaster's own z for ``level``; loaded with it, not at import

    z = float(ndtri(0.5 + level / 2.0))
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    ahead = np.maximum(np.asarray(steps, dtype=np.float64) - check.to_step, 0.0)
    if check.climb > 0 and not check.rising:
        # the fit has followed the climb: its forecast stands, and the band reaches down to the curve back at
        # the run's best level (a run that diverged and recovers)
        back = mean * check.climb / (1.0 + check.climb)
        return mean, np.sqrt(std**2 + (back / z) ** 2)
    if check.rising and check.level is not None:
        m_b = check.level + check.slope * ahead
        s_b = check.slope * ahead
    else:
        m_b = mean * (1.0 + check.departure)
        s_b = np.abs(check.departure * mean)
    s_b = np.sqrt(s_b**2 + std**2)
    lo = np.minimum(mean - z * std, m_b - z * s_b)
    hi = np.maximum(mean + z * std, m_b + z * s_b)
    return 0.5 * (lo + hi), (hi - lo) / (2.0 * z)
