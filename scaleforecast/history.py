"""A bounded history of loss observations: fixed-width bins that coarsen as the run grows.

A refit must cost the same on a 1M-step run as on a 10k one, so the forecaster never keeps raw points. Each
observation covers the updates ``start..end`` (1-based, inclusive: one step, or a logging window) and lands
in the bin ``(end - 1) // width``. A bin keeps the sum and count of the losses it holds and the span of updates
they cover, which is all the fitter needs to model it as a window mean. When there are more than ``max_bins``
bins the width doubles and neighbours merge, so memory and refit time stay bounded while every observation
keeps its weight.
"""

from __future__ import annotations

import numpy as np


class BinnedHistory:
    """Observations merged into at most ``max_bins`` equal-width bins of update steps."""

    def __init__(self, max_bins: int = 1024) -> None:
        if max_bins < 16:
            raise ValueError(f"max_bins must be at least 16, got {max_bins}")
        self.max_bins = max_bins
        self.width = 1
        self._key = np.zeros(0, dtype=np.int64)
        self._start = np.zeros(0, dtype=np.int64)
        self._end = np.zeros(0, dtype=np.int64)
        self._sum = np.zeros(0)
        self._sumsq = np.zeros(0)
        self._count = np.zeros(0)

    def __len__(self) -> int:
        return len(self._key)

    @property
    def n_raw(self) -> int:
        """Number of raw observations merged into the bins."""
        return int(self._count.sum())

    @property
    def last_end(self) -> int:
        """The last update covered by any observation (0 when empty)."""
        return int(self._end.max()) if len(self._end) else 0

    def add(self, start: np.ndarray, end: np.ndarray, y: np.ndarray) -> None:
        """Merge observations (arrays of equal length, ``end`` non-decreasing) into the bins."""
        if len(y) == 0:
            return
        start = np.asarray(start, dtype=np.int64)
        end = np.asarray(end, dtype=np.int64)
        y = np.asarray(y, dtype=float)
        key = (end - 1) // self.width
        if len(self._key) and key[0] >= self._key[-1] and np.all(key[1:] >= key[:-1]):
            self._append(key, start, end, y)
        else:
            self._merge(key, start, end, y, y * y, np.ones_like(y), concat=True)
        while len(self._key) > self.max_bins:
            self.width *= 2
            self._merge(
                self._key // 2, self._start, self._end, self._sum, self._sumsq, self._count, concat=False
            )

    def _append(self, key: np.ndarray, start: np.ndarray, end: np.ndarray, y: np.ndarray) -> None:
        """The live case: observations in step order, at or after the last bin. Costs O(len(y)) besides
        one copy of the bins, instead of a sort of all of them."""
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        k = key[first]
        lo = np.minimum.reduceat(start, first)
        hi = np.maximum.reduceat(end, first)
        s = np.add.reduceat(y, first)
        s2 = np.add.reduceat(y * y, first)
        n = np.add.reduceat(np.ones_like(y), first)
        if k[0] == self._key[-1]:  # the first new group falls in the last bin
            self._start[-1] = min(self._start[-1], lo[0])
            self._end[-1] = max(self._end[-1], hi[0])
            self._sum[-1] += s[0]
            self._sumsq[-1] += s2[0]
            self._count[-1] += n[0]
            k, lo, hi, s, s2, n = k[1:], lo[1:], hi[1:], s[1:], s2[1:], n[1:]
        if len(k):
            self._key = np.concatenate([self._key, k])
            self._start = np.concatenate([self._start, lo])
            self._end = np.concatenate([self._end, hi])
            self._sum = np.concatenate([self._sum, s])
            self._sumsq = np.concatenate([self._sumsq, s2])
            self._count = np.concatenate([self._count, n])

    def _merge(
        self,
        key: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        s: np.ndarray,
        s2: np.ndarray,
        n: np.ndarray,
        *,
        concat: bool,
    ) -> None:
        if concat:
            key = np.concatenate([self._key, key])
            start = np.concatenate([self._start, start])
            end = np.concatenate([self._end, end])
            s = np.concatenate([self._sum, s])
            s2 = np.concatenate([self._sumsq, s2])
            n = np.concatenate([self._count, n])
        order = np.argsort(key, kind="stable")
        key, start, end, s, s2, n = (a[order] for a in (key, start, end, s, s2, n))
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        self._key = key[first]
        self._start = np.minimum.reduceat(start, first)
        self._end = np.maximum.reduceat(end, first)
        self._sum = np.add.reduceat(s, first)
        self._sumsq = np.add.reduceat(s2, first)
        self._count = np.add.reduceat(n, first)

    def truncate(self, step: int) -> int:
        """Drop every bin holding an observation that ends after ``step``; return how many raw points went.

        A bin cannot be split, so a resume can lose up to one bin's width of observations before ``step``.
        """
        keep = self._end <= step
        dropped = int(self._count[~keep].sum())
        for name in ("_key", "_start", "_end", "_sum", "_sumsq", "_count"):
            setattr(self, name, getattr(self, name)[keep])
        return dropped

    def recent_level(self, bins: int = 5) -> float | None:
        """The median of the last ``bins`` bins' mean losses (``None`` when empty)."""
        if not len(self._key):
            return None
        return float(np.median(self._sum[-bins:] / self._count[-bins:]))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(start, end, mean loss, count)`` of every bin, in step order."""
        return self._start.copy(), self._end.copy(), self._sum / self._count, self._count.copy()

    def within_bin_std(self) -> float | None:
        """Pooled standard deviation of single observations inside bins (``None`` with too few repeats)."""
        return _pooled_std(self._count, self._sumsq - self._sum**2 / self._count)

    def spread(self, after: int = 0, until: int | None = None) -> tuple[float, float] | None:
        """``(std, count)``: the standard deviation of one observation about its bin's mean relative to that
        mean, pooled over the bins that end in ``after < end <= until`` and hold two or more, and their median
        count; ``None`` with fewer than 5 degrees of freedom. Relative, as the fit's residuals are: a noise
        that scales with the loss is one number over a run whose loss fell tenfold. Bins whose own spread is
        more than five times the median bin's are left out: a bin across a steep stretch of the curve (early
        in a run) or a spike measures those, not noise."""
        ok = (self._count >= 2) & (self._end > after)
        if until is not None:
            ok &= self._end <= until
        count = self._count[ok]
        mean = self._sum[ok] / np.maximum(count, 1.0)
        var = np.maximum(self._sumsq[ok] - self._sum[ok] * mean, 0.0) / np.maximum(count - 1.0, 1.0)
        var = var / np.maximum(mean * mean, 1e-300)
        if count.size:
            keep = var <= 25.0 * float(np.median(var))
            count, var = count[keep], var[keep]
        std = _pooled_std(count, (count - 1.0) * var)
        return None if std is None else (std, float(np.median(count)))

    def state_dict(self) -> dict:
        return {
            "max_bins": self.max_bins,
            "width": self.width,
            "key": self._key.tolist(),
            "start": self._start.tolist(),
            "end": self._end.tolist(),
            "sum": self._sum.tolist(),
            "sumsq": self._sumsq.tolist(),
            "count": self._count.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.max_bins = int(state["max_bins"])
        self.width = int(state["width"])
        self._key = np.asarray(state["key"], dtype=np.int64)
        self._start = np.asarray(state["start"], dtype=np.int64)
        self._end = np.asarray(state["end"], dtype=np.int64)
        self._sum = np.asarray(state["sum"], dtype=float)
        self._sumsq = np.asarray(state["sumsq"], dtype=float)
        self._count = np.asarray(state["count"], dtype=float)


def _pooled_std(count: np.ndarray, ss: np.ndarray) -> float | None:
    """The pooled standard deviation of bins holding ``count`` observations with ``ss`` summed squared
    deviations from their means: ``sqrt(sum ss / sum (count - 1))``; ``None`` with fewer than 5 degrees of
    freedom."""
    dof = float((count - 1.0).sum())
    return None if dof < 5 else float(np.sqrt(max(float(ss.sum()), 0.0) / dof))
