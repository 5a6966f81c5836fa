"""A compact, JSON-safe form of a per-update LR schedule, so that a checkpoint does not grow with the run.

A schedule of ``T`` updates is cut into segments, each stored in the cheapest form that reproduces it:

* ``const``: a run of one repeated value (bit-exact): the stable phase of WSD, every step of StepLR;
* ``cheb``: a Chebyshev polynomial (degree <= 16) on the segment, kept only if it reproduces *every* update of
  the segment to a relative ``rtol`` (checked when encoding): warm-ups, cosine and linear decays, inverse
  square roots, one-cycle phases;
* ``raw``: the float64 values themselves (bit-exact), for stretches no polynomial follows (noise, very short
  cycles).

A cosine, WSD or warm-up + decay schedule of 1M updates takes a few kilobytes instead of 8 MB. When the
segments would not be much smaller than the values (a schedule with thousands of restarts), the whole schedule
is stored raw and deflated instead. ``rtol = 1e-10`` is far below anything the law can resolve: S1 is a sum of
LRs and S2 a filtered sum of their differences, so their relative error stays of the order of ``rtol``; and
the LRs read back agree with the ones actually used well within any re-planning tolerance.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import numpy as np
from numpy.polynomial import chebyshev

__all__ = ["decode_lrs", "encode_lrs"]

_DEGREE = 16
_MIN_CONST = 8  # shorter runs of equal values are cheaper inside a polynomial or raw segment
_MIN_POLY = 4 * _DEGREE
_PROBE = 2048  # points checked while searching a segment's length; the chosen length is checked in full


def _b64(values: np.ndarray, deflate: bool = False) -> str:
    data = np.ascontiguousarray(values, dtype="<f8").tobytes()
    return base64.b64encode(zlib.compress(data, 6) if deflate else data).decode("ascii")


def _unb64(text: str, inflate: bool = False) -> np.ndarray:
    data = base64.b64decode(text)
    return np.frombuffer(zlib.decompress(data) if inflate else data, dtype="<f8").copy()


def _x(idx: np.ndarray, n: int) -> np.ndarray:
    """Positions ``0..n-1`` of a segment mapped onto the Chebyshev interval [-1, 1]."""
    return -1.0 + 2.0 * idx / (n - 1) if n > 1 else np.zeros(idx.size)


def _fit(y: np.ndarray, lo: int, n: int, tol: np.ndarray, full: bool) -> np.ndarray | None:
    """Chebyshev coefficients reproducing ``y[lo:lo+n]`` within ``tol`` (per point; on a probe or on every
    point)."""
    # Fit on points clustered towards the ends (where polynomial fits go wrong first), then check.
    nodes = np.unique(
        np.rint((1.0 - np.cos(np.linspace(0.0, np.pi, 8 * _DEGREE))) * 0.5 * (n - 1)).astype(np.int64)
    )
    coef = chebyshev.chebfit(_x(nodes, n), y[lo + nodes], _DEGREE)
    every = full or n <= _PROBE
    check = np.arange(n) if every else np.unique(np.linspace(0, n - 1, _PROBE).astype(np.int64))
    if not np.all(np.abs(chebyshev.chebval(_x(check, n), coef) - y[lo + check]) <= tol[lo + check]):
        return None
    return coef


def _poly_segment(
    y: np.ndarray, lo: int, limit: int, hint: int, tol: np.ndarray
) -> tuple[int, np.ndarray] | None:
    """A long ``n <= limit`` (maximal to within 1/16) whose segment a polynomial reproduces, and its
    coefficients; the search starts at ``hint`` and doubles or halves from there (O(log) trials)."""
    if limit < _MIN_POLY:
        return None
    n = min(limit, max(hint, _MIN_POLY))
    if _fit(y, lo, n, tol, full=False) is not None:
        good, bad = n, limit + 1
        while good < limit:
            nxt = min(2 * good, limit)
            if _fit(y, lo, nxt, tol, full=False) is None:
                bad = nxt
                break
            good = nxt
    else:
        bad = n
        good = n // 2
        while good >= _MIN_POLY and _fit(y, lo, good, tol, full=False) is None:
            bad, good = good, good // 2
        if good < _MIN_POLY:
            return None
    while bad - good > max(good // 16, 1):
        mid = (good + bad) // 2
        if _fit(y, lo, mid, tol, full=False) is not None:
            good = mid
        else:
            bad = mid
    while good >= _MIN_POLY:
        coef = _fit(y, lo, good, tol, full=True)
        if coef is not None:
            return good, coef
        good = good * 3 // 4
    return None


def encode_lrs(lrs: np.ndarray, rtol: float = 1e-10) -> dict[str, Any]:
    """The compact form of ``lrs`` (see the module docstring); :func:`decode_lrs` reverses it.

    A polynomial segment holds every update to ``|error| <= rtol * max(|lr|, 1e-3 * max |lr|)``: relative to
    the LR itself, except for LRs under 0.1% of the peak, where it is relative to that floor."""
    y = np.ascontiguousarray(lrs, dtype=np.float64).ravel()
    n = y.size
    if n == 0:
        return {"n": 0, "lo": 0.0, "hi": 0.0, "segments": []}
    tol = rtol * np.maximum(np.abs(y), 1e-3 * float(np.max(np.abs(y))))
    # where the run of equal values holding each index ends, and the next index inside a long run
    change = np.flatnonzero(np.r_[True, y[1:] != y[:-1], True])
    run_end = np.repeat(change[1:], np.diff(change))
    pos = np.arange(n)
    long_at = np.where(run_end - pos >= _MIN_CONST, pos, n)
    next_long = np.minimum.accumulate(long_at[::-1])[::-1]
    segments: list[list[Any]] = []
    raw_from: int | None = None
    raw_total = 0
    hint = n
    p = 0

    def close_raw(upto: int) -> None:
        nonlocal raw_from
        if raw_from is not None:
            segments.append(["raw", raw_from, upto - raw_from, _b64(y[raw_from:upto])])
            raw_from = None

    while p < n:
        run = int(run_end[p]) - p
        if run >= _MIN_CONST or run == n - p:
            close_raw(p)
            segments.append(["const", p, run, float(y[p])])
            p += run
            continue
        limit = int(next_long[p]) - p  # a polynomial stops where the next long constant run starts
        found = _poly_segment(y, p, limit, hint, tol)
        if found is None:
            step = max(1, min(limit, _MIN_POLY))
            raw_from = p if raw_from is None else raw_from
            raw_total += step
            p += step
            hint = _MIN_POLY
            if raw_total > max(n // 8, 4096):  # no piecewise-smooth structure: deflate the values instead
                return {"n": n, "deflated": _b64(y, deflate=True)}
            continue
        close_raw(p)
        length, coef = found
        segments.append(["cheb", p, length, [float(c) for c in coef]])
        p += length
        hint = length
    close_raw(n)
    code = {"n": n, "lo": float(np.min(y)), "hi": float(np.max(y)), "segments": segments}
    if _size(code) > max(n, 64):  # over ~1 byte of segments per update: deflating the values is as good
        return {"n": n, "deflated": _b64(y, deflate=True)}
    return code


def _size(code: dict[str, Any]) -> int:
    total = 0
    for seg in code["segments"]:
        total += 24 + (len(seg[3]) if seg[0] == "raw" else 8 * len(seg[3]) if seg[0] == "cheb" else 8)
    return total


def decode_lrs(code: dict[str, Any] | str) -> np.ndarray:
    """The schedule that :func:`encode_lrs` encoded (float64, length ``code["n"]``); a string is the plain
    base64 float64 array that states of version 1 carried."""
    if isinstance(code, str):
        return _unb64(code)
    n = int(code["n"])
    if "deflated" in code:
        out = _unb64(code["deflated"], inflate=True)
    else:
        out = np.empty(n, dtype=np.float64)
        for kind, start, length, data in code["segments"]:
            if kind == "const":
                out[start : start + length] = data
            elif kind == "raw":
                out[start : start + length] = _unb64(data)
            elif kind == "cheb":
                x = _x(np.arange(length), length)
                # stay within the schedule's range: a polynomial may not turn a tiny LR negative
                out[start : start + length] = np.clip(
                    chebyshev.chebval(x, np.asarray(data)), code["lo"], code["hi"]
                )
            else:
                raise ValueError(f"unknown schedule segment kind {kind!r}")
    if out.size != n:
        raise ValueError(f"schedule code holds {out.size} values, expected {n}")
    return out
