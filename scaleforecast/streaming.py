"""Running statistics for the health detectors: O(1) per observation, vectorised per chunk of a flush.

The detectors see a flush (tens of observations) at a time and must not re-scan a window per flush. Every
statistic here is an exponentially weighted (EW) recursion ``m_i = (1 - a) * m_{i-1} + a * x_i`` whose whole
path over a chunk is computed in closed form with a handful of numpy operations, and whose state is a few
floats. A chunk is at most :data:`MAX_CHUNK` observations long, so the closed form stays well conditioned.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

MAX_CHUNK = 64


def alpha_for(span: float) -> float:
    """The EW weight whose effective sample size ``(2 - a) / a`` is ``span`` observations: ``2 / (span + 1)``."""
    return 2.0 / (float(span) + 1.0)


def ew_path(x: np.ndarray, alpha: float, m0: float) -> np.ndarray:
    """The path ``m_1..m_n`` of ``m_i = (1 - alpha) * m_{i-1} + alpha * x_i`` from ``m_0 = m0``.

    Closed form ``m_i = d^i * (m0 + alpha * sum_{j<=i} d^(-j) x_j)`` with ``d = 1 - alpha``; the powers stay
    within ``d^(-MAX_CHUNK)``, so chunks longer than :data:`MAX_CHUNK` are done in pieces.
    """
    n = len(x)
    if n == 0:
        return np.empty(0)
    if n > MAX_CHUNK:
        out = np.empty(n)
        m = m0
        for i in range(0, n, MAX_CHUNK):
            out[i : i + MAX_CHUNK] = ew_path(x[i : i + MAX_CHUNK], alpha, m)
            m = float(out[min(i + MAX_CHUNK, n) - 1])
        return out
    d = 1.0 - alpha
    if d <= 0.0:
        return np.asarray(x, dtype=float).copy()
    j = np.arange(1, n + 1, dtype=float)
    p = d**j
    return p * (m0 + alpha * np.cumsum(x / p))


def ew_paths(x: np.ndarray, alphas: np.ndarray, m0: np.ndarray) -> np.ndarray:
    """:func:`ew_path` for several rows at once: row ``r`` of ``x`` (shape ``(k, n)``, ``n <= MAX_CHUNK``)
    filtered with ``alphas[r]`` from ``m0[r]``; one set of array operations for all rows."""
    k, n = x.shape
    if n == 0:
        return np.empty((k, 0))
    if n > MAX_CHUNK:
        raise ValueError(f"at most {MAX_CHUNK} points per call, got {n}")
    d = (1.0 - np.asarray(alphas, dtype=float))[:, None]
    p = d ** np.arange(1, n + 1, dtype=float)[None, :]
    return p * (np.asarray(m0, dtype=float)[:, None] + (1.0 - d) * np.cumsum(x / p, axis=1))


def ew_last(x: np.ndarray, alpha: float, m0: float) -> float:
    """The last value of :func:`ew_path` (one dot product, no path)."""
    n = len(x)
    if n == 0:
        return m0
    d = 1.0 - alpha
    w = d ** np.arange(n - 1, -1, -1, dtype=float)
    return float(d**n * m0 + alpha * (w @ x))


def run_lengths(flag: np.ndarray, carry: int) -> np.ndarray:
    """Length of the run of consecutive ``True`` ending at each position; ``carry`` continues a run from the
    previous chunk. 0 where ``flag`` is ``False``."""
    n = len(flag)
    if n == 0 or not flag.any():
        return np.zeros(n, dtype=np.int64)
    idx = np.arange(n)
    last_false = np.maximum.accumulate(np.where(~flag, idx, -1))
    out = idx - last_false
    # Positions still in the run that started before this chunk continue its count.
    open_run = last_false < 0
    out[open_run] += carry
    return np.where(flag, out, 0)


def chunks(steps: np.ndarray, max_len: int = MAX_CHUNK, max_log_span: float = 0.05) -> Iterator[slice]:
    """Consecutive slices of ``steps`` of at most ``max_len`` observations spanning at most ``max_log_span``
    in ``log(step)``: within a chunk the detectors' local models are held fixed, so early in a run (where the
    curve bends fast) chunks are short and later they are long."""
    n = len(steps)
    i = 0
    factor = math.exp(max_log_span)
    while i < n:
        hi = int(np.searchsorted(steps, max(float(steps[i]), 1.0) * factor, side="right"))
        j = min(n, i + max_len, max(hi, i + 1))
        yield slice(i, j)
        i = j


class EWLine:
    """An exponentially weighted least-squares line ``v ≈ c0 + c1 * x`` for ``k`` targets at once.

    Sums are kept relative to a reference ``x_ref`` that moves with the data (:meth:`recentre`), so they stay
    well conditioned however large ``x`` grows. ``lam`` is the weight kept per new observation; the effective
    number of points is ``S0^2 / S2``.
    """

    def __init__(self, lam: float, k: int) -> None:
        self.lam = float(lam)
        self.k = int(k)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.x_ref = 0.0
        self.s0 = self.s2 = self.sx = self.sxx = 0.0
        self.sv = np.zeros(self.k)
        self.sxv = np.zeros(self.k)
        self.svv = np.zeros(self.k)

    def recentre(self, x_ref: float) -> None:
        """Move the reference to ``x_ref`` (exact shift of the sums)."""
        d = x_ref - self.x_ref
        if d == 0.0:
            return
        self.sxx = self.sxx - 2.0 * d * self.sx + d * d * self.s0
        self.sx = self.sx - d * self.s0
        self.sxv = self.sxv - d * self.sv
        self.x_ref = x_ref

    def add(self, x: np.ndarray, v: np.ndarray) -> None:
        """Add points ``x`` (length m) with targets ``v`` (shape ``(k, m)``), oldest first."""
        m = len(x)
        if m == 0:
            return
        w = self.lam ** np.arange(m - 1, -1, -1, dtype=float)
        decay = self.lam**m
        dx = x - self.x_ref
        wdx = w * dx
        self.s0 = decay * self.s0 + float(w.sum())
        self.s2 = decay * decay * self.s2 + float(w @ w)
        self.sx = decay * self.sx + float(wdx.sum())
        self.sxx = decay * self.sxx + float(wdx @ dx)
        self.sv = decay * self.sv + v @ w
        self.sxv = decay * self.sxv + v @ wdx
        self.svv = decay * self.svv + (v * v) @ w
        self.n += m

    def fit(self, degree: int) -> tuple[np.ndarray, np.ndarray, float, float, float, np.ndarray]:
        """``(c0, c1, xm, sxx, n_eff, resid_sd)``: per-target intercept at ``x_ref`` and slope, the weighted
        mean and spread of ``x``, the effective number of points and the residual sd of each target."""
        s0 = max(self.s0, 1e-300)
        xm = self.sx / s0
        sxx = max(self.sxx / s0 - xm * xm, 0.0)
        vm = self.sv / s0
        flat = degree < 1 or sxx <= 1e-18
        c1 = np.zeros(self.k) if flat else (self.sxv / s0 - xm * vm) / sxx
        c0 = vm - c1 * xm
        n_eff = s0 * s0 / max(self.s2, 1e-300)
        var = self.svv / s0 - vm * vm - c1 * c1 * sxx
        used = 2.0 if degree >= 1 else 1.0
        var = np.maximum(var, 0.0) * n_eff / max(n_eff - used, 1.0)
        return c0, c1, xm, sxx, n_eff, np.sqrt(var)

    def state_dict(self) -> dict:
        return {
            "n": self.n,
            "x_ref": self.x_ref,
            "s": [self.s0, self.s2, self.sx, self.sxx],
            "sv": self.sv.tolist(),
            "sxv": self.sxv.tolist(),
            "svv": self.svv.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        self.x_ref = float(state["x_ref"])
        self.s0, self.s2, self.sx, self.sxx = (float(v) for v in state["s"])
        self.sv = np.asarray(state["sv"], dtype=float)
        self.sxv = np.asarray(state["sxv"], dtype=float)
        self.svv = np.asarray(state["svv"], dtype=float)


class Ring:
    """The last ``size`` ``(step, value)`` pairs in two preallocated arrays (O(1) per insert, no re-scan)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.steps = np.zeros(self.size, dtype=np.int64)
        self.values = np.zeros(self.size)
        self.count = 0  # total pushed

    def __len__(self) -> int:
        return min(self.count, self.size)

    def extend(self, steps: np.ndarray, values: np.ndarray) -> None:
        m = len(steps)
        if m == 0:
            return
        if m >= self.size:
            steps, values = steps[-self.size :], values[-self.size :]
            self.count += m - self.size
            m = self.size
        pos = (self.count + np.arange(m)) % self.size
        self.steps[pos] = steps
        self.values[pos] = values
        self.count += m

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Oldest first."""
        n = len(self)
        idx = (self.count - n + np.arange(n)) % self.size
        return self.steps[idx], self.values[idx]

    def state_dict(self) -> dict:
        s, v = self.arrays()
        return {"size": self.size, "steps": s.tolist(), "values": v.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(int(state["size"]))  # type: ignore[misc]
        self.extend(np.asarray(state["steps"], dtype=np.int64), np.asarray(state["values"], dtype=float))
