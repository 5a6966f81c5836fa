"""The loss a finished run reached, estimated from its log at the step the forecast is made for.

The forecast is the expected loss *at* the schedule's last step. The observed value it is judged against must be
the same quantity: a straight line fitted to the run's last points (each placed at the middle of the updates its
loss averages, with far outliers dropped once) and read at the last step. A median over the tail would sit
half a tail too early, and on a log of one batch every few steps it rests on two or three noisy batches; the
line uses at least :data:`MIN_POINTS` points (reaching back at most :data:`MAX_SPAN` of the run) and comes with
its standard error, so the comparison says how far the observed value itself can be trusted. A log too noisy
for its last 2% (one batch a step) is read over more of its end (:data:`WIDER`), as long as a parabola through
those points does not bend away from the line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from scaleforecast.runs import RunData

__all__ = ["MAX_SPAN", "MIN_POINTS", "ObservedFinal", "observed_final"]

TAIL = 0.02  # the part of the run the estimate normally rests on
MIN_POINTS = 8
MAX_SPAN = 0.10
# Above this relative standard error, errors of the forecast smaller than it cannot be told apart.
NOISY = 0.005
# The spans (shares of the run) a noisy log's estimate may widen to, while its end is still a line.
WIDER = (0.04, 0.06, MAX_SPAN)


@dataclass(frozen=True)
class ObservedFinal:
    """The observed loss at ``step`` (the schedule's last step): ``value`` with standard error ``std``, from
    ``n_points`` points over the last ``span`` steps; ``note`` says why it is uncertain (``None`` if it is not)."""

    value: float
    std: float
    step: int
    n_points: int
    span: int
    note: str | None = None

    def text(self) -> str:
        """``1.1310 ± 0.021 (8 points over the last 7% of 1000 steps)``."""
        pm = f" ± {self.std:.2g}" if math.isfinite(self.std) else " (uncertainty unknown)"
        pct = 100 * self.span / self.step
        return f"{self.value:.4f}{pm} ({self.n_points} points over the last {pct:.2g}% of {self.step} steps)"


def _line_at(x: np.ndarray, y: np.ndarray, at: float) -> tuple[float, float, np.ndarray]:
    """Least-squares line through ``(x, y)`` read at ``at``: value, its standard error, residuals."""
    u = x - at
    A = np.column_stack([np.ones_like(u), u])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    res = y - A @ coef
    n = len(y)
    if n <= 2:
        return float(coef[0]), math.nan, res
    s2 = float(res @ res) / (n - 2)
    sxx = float(((u - u.mean()) ** 2).sum())
    se = math.sqrt(s2 * (1.0 / n + u.mean() ** 2 / sxx)) if sxx > 0 else math.nan
    return float(coef[0]), se, res


def _trimmed_line(x: np.ndarray, y: np.ndarray, at: float) -> tuple[float, float]:
    """:func:`_line_at` with the points more than 5 robust deviations off it dropped once (the mean of the
    points, with no standard error, below 3 points)."""
    n = len(y)
    if n < 3:
        return float(np.mean(y)), math.nan
    value, se, res = _line_at(x, y, at)
    mad = float(np.median(np.abs(res - np.median(res))))
    keep = np.abs(res) <= 5.0 * 1.4826 * mad if mad > 0 else np.ones(n, dtype=bool)
    if 3 <= keep.sum() < n:
        value, se, _ = _line_at(x[keep], y[keep], at)
    return value, se


def _curved(x: np.ndarray, y: np.ndarray, at: float) -> bool:
    """Whether the points bend away from a line: the quadratic term of a parabola through them is more than
    two of its standard errors from zero."""
    if len(y) < 6:
        return True
    u = (x - at) / max(float(np.ptp(x)), 1.0)
    A = np.column_stack([np.ones_like(u), u, u**2])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    res = y - A @ coef
    s2 = float(res @ res) / (len(y) - 3)
    cov = s2 * np.linalg.pinv(A.T @ A)
    return bool(abs(coef[2]) > 2.0 * math.sqrt(max(float(cov[2, 2]), 0.0)))


def observed_final(run: RunData) -> ObservedFinal | None:
    """The run's observed loss at its last scheduled step (see the module doc), or ``None`` when the run has not
    reached 98% of its schedule or has no finite loss near its end."""
    total = run.total_steps
    if total is None or run.last_step < (1 - TAIL) * total:
        return None
    ok = np.isfinite(run.losses)
    steps, y = run.steps[ok], run.losses[ok]
    x = steps - (run.windows[ok] - 1) / 2.0
    recent = steps >= (1 - MAX_SPAN) * total
    if not recent.any():
        return None
    in_tail = steps >= (1 - TAIL) * total
    take = (
        in_tail
        if in_tail.sum() >= MIN_POINTS
        else recent & (np.arange(len(steps)) >= len(steps) - MIN_POINTS)
    )
    value, se = _trimmed_line(x[take], y[take], total)
    scale = float(np.max(np.abs(y))) if len(y) else 1.0
    for wider in WIDER:
        # A noisy log (one batch a step): the last 2% pin the end down to a few %, when a line through more of
        # the run's end would know it better, as long as the curve is still a line over it.
        if not se > NOISY * max(abs(value), 1e-12 * scale):
            break
        more = recent & (steps >= (1 - wider) * total)
        if more.sum() <= take.sum():
            continue
        if _curved(x[more], y[more], total):
            break
        v, e = _trimmed_line(x[more], y[more], total)
        if e < se:
            take, value, se = more, v, e
    n = int(take.sum())
    span = int(total - int(steps[take].min()) + 1)
    # A loss that reaches 0 (a regression fitted exactly) leaves rounding dust, not a value to divide by.
    if abs(value) <= 1e-9 * scale:
        value = 0.0
    note = None
    rel = se / (abs(value) if value != 0 else scale) if math.isfinite(se) else math.inf
    if n < MIN_POINTS or rel > NOISY:
        why = (
            f"the log has only {n} finite point(s) in the last {100 * MAX_SPAN:.0f}% of the run"
            if n < MIN_POINTS
            else f"the loss is too noisy for the {n} points logged over the last {100 * span / total:.2g}% of the run"
        )
        known = (
            "an unknown margin"
            if not math.isfinite(rel)
            else f"±{100 * rel:.1f}%"
            if value != 0
            else f"±{se:.2g}"
        )
        note = (
            f"{run.name}: {why}: the observed final loss ({value:.4f} at step {total}) is known only to "
            f"{known}; forecast errors smaller than that cannot be judged"
        )
    return ObservedFinal(value=value, std=se, step=total, n_points=n, span=span, note=note)
