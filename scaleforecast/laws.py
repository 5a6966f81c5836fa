"""Loss-curve laws driven by the LR schedule: the LR-annealing law (Tissue et al. 2024) and the Multi-Power
Law (Luo et al. 2025).

Conventions: ``lrs[k]`` is the LR of optimizer update ``k + 1``; a *step* ``s`` is the number of updates
completed, so the areas "after s updates" are element ``s - 1`` of the arrays returned here. Step 0 (no
update yet) has ``S1 = S2 = 0``.

The annealing area S2 remembers each LR decrease through an exponential memory (decay ``lam`` per update).
Tissue et al. use one memory (``lam = 0.999``, 1000 updates). Real cooldowns show two time scales: most of
the drop follows a decrease within a few hundred updates, and a slower part keeps building over a good part
of the run (which is what makes a long linear or cosine decay drop faster near its end than one memory
allows). :func:`run_memory` gives a two-timescale memory whose time constants are fractions of the run's
length (unchanged by the run's time units), and :func:`mixed_annealing_area` the S2 it makes.
"""

from __future__ import annotations

import hashlib
import math
import threading
import weakref
from collections import OrderedDict
from typing import Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike

from scaleforecast.results import LawParams

__all__ = [
    "LAWS",
    "Law",
    "MPLLaw",
    "Memory",
    "TissueLaw",
    "WarmupS2",
    "annealing_area",
    "annealing_prefix",
    "forward_area",
    "hold_warmup",
    "memory_of",
    "mixed_annealing_area",
    "mpl_drop",
    "register_plan",
    "run_memory",
    "schedule_areas",
]

WarmupS2 = Literal["raw", "hold"]
IDLE_LR = 1e-9
"""An LR at most this share of the schedule's largest is an update that trains nothing (S2 holds there)."""
Memory = tuple[tuple[float, float], ...]
"""An annealing memory: ``((lam_1, weight_1), (lam_2, weight_2), ...)``, weights summing to 1."""


def _as_lrs(lrs: ArrayLike) -> np.ndarray:
    a = np.asarray(lrs, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("empty LR schedule")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"non-finite LR at index {int(np.argmin(np.isfinite(a)))}")
    return a


def forward_area(lrs: ArrayLike) -> np.ndarray:
    """S1: ``S1[k] = lrs[0] + ... + lrs[k]``, the LR area after ``k + 1`` updates (length T, O(T))."""
    return np.cumsum(_as_lrs(lrs))


def hold_warmup(lrs: ArrayLike) -> np.ndarray:
    """The schedule as the annealing area sees it under ``warmup="hold"``: every LR before the first peak is
    raised to that peak, so the warm-up's rising LR adds nothing (instead of a negative area) to S2."""
    a = _as_lrs(lrs).copy()
    k = int(np.argmax(a))
    a[:k] = a[k]
    return a


def annealing_area(lrs: ArrayLike, lam: float = 0.999, warmup: WarmupS2 = "raw") -> np.ndarray:
    """S2 after each update (length T, vectorised O(T) through a first-order IIR filter).

    ``S2(s) = m_1 + ... + m_s`` with ``m_i = lam * m_{i-1} + (lr_{i-1} - lr_i)`` and ``m_1 = 0``. With
    ``warmup="raw"`` the formula is applied as written (the rising warm-up LR makes S2 negative);
    ``warmup="hold"`` applies it to :func:`hold_warmup` of the schedule.
    """
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam must be in [0, 1), got {lam}")
    a = hold_warmup(lrs) if warmup == "hold" else _as_lrs(lrs)
    # an update at LR 0 moves no weight (nor does AdamW's decoupled decay, which scales with the LR): it is no
    # time for the law, so S2 holds there and its memory resumes where it was when the LR is positive again;
    # otherwise a tail of zeros (a scheduler built for fewer updates than the run makes) keeps lowering the
    # forecast through updates that cannot change the loss
    live = a > IDLE_LR * float(np.abs(a).max())
    if not live.all():
        out = np.zeros_like(a)
        if live.any():
            held = np.cumsum(live) - 1
            s2 = annealing_area(a[live], lam, "raw")
            out[held >= 0] = s2[held[held >= 0]]
        return out
    d = np.zeros_like(a)
    d[1:] = a[:-1] - a[1:]
    return np.cumsum(_decaying_sum(d, lam))


def _decaying_sum(d: np.ndarray, lam: float) -> np.ndarray:
    """``m_i = lam * m_{i-1} + d_i`` (``m_0 = d_0``), vectorised by blocks: inside a block of length ``B``
    starting after ``m_prev``, ``m_{k} = lam^k * (lam * m_prev + sum_{j <= k} lam^-j * d_j)``, with ``B`` short
    enough that ``lam^-B`` stays finite. Each ``m_k`` is exact to rounding relative to ``max |d|``. (scipy's
    ``lfilter`` does the same, but importing ``scipy.signal`` took 0.3-0.7 s on the refit thread of every
    process, which the training thread waited out at its first forecast.)"""
    if lam == 0.0:
        return d.copy()
    n = d.size
    block = int(min(max(300.0 / -math.log(lam), 1.0), max(n, 1)))
    down = np.exp(np.arange(block, dtype=np.float64) * math.log(lam))
    up = 1.0 / down
    out = np.empty_like(d)
    prev = 0.0
    for start in range(0, n, block):
        stop = min(start + block, n)
        b = stop - start
        out[start:stop] = down[:b] * (lam * prev + np.cumsum(d[start:stop] * up[:b]))
        prev = float(out[stop - 1])
    return out


def run_memory(total_steps: int, fast: float = 1 / 200, slow: float = 1.0, mix: float = 0.5) -> Memory:
    """The two-timescale memory of a run of ``total_steps`` updates: a fast memory with time constant
    ``fast * total_steps`` updates (weight ``mix``) and a slow one with ``slow * total_steps`` (weight
    ``1 - mix``); ``lam = 1 - 1 / time constant``, clipped to ``[0, 1)``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")

    def lam(tc: float) -> float:
        return min(max(1.0 - 1.0 / (tc * total_steps), 0.0), 1.0 - 1e-12)

    return ((lam(fast), float(mix)), (lam(slow), 1.0 - float(mix)))


def mixed_annealing_area(
    lrs: ArrayLike, memory: Memory, lam: float = 0.999, warmup: WarmupS2 = "raw"
) -> np.ndarray:
    """S2 under a mixed memory: ``sum_j w_j * (1 - lam_j) / (1 - lam) * annealing_area(lrs, lam_j)``.

    Each memory is scaled to the same full-anneal value as one memory of decay ``lam`` (``lr_peak / (1 - lam)``
    after a settled decay to zero), so ``lam`` only sets the units of ``C``: ``C * lr_peak / (1 - lam)`` is the
    full-anneal drop whatever the memory."""
    if not 0.0 <= lam < 1.0:
        raise ValueError(f"lam must be in [0, 1), got {lam}")
    out = np.zeros(_as_lrs(lrs).size)
    for lam_j, w in memory:
        if w:
            out += w * (1.0 - lam_j) / (1.0 - lam) * annealing_area(lrs, lam_j, warmup)
    return out


def memory_of(params: LawParams) -> Memory | None:
    """The mixed memory a tissue-law fit carries in ``params.extra`` (``lam_fast``, ``lam_slow``,
    ``mix_fast``), or None for the single memory ``params.lam``."""
    ex = params.extra
    if "lam_fast" not in ex:
        return None
    w = float(ex.get("mix_fast", 0.5))
    return ((float(ex["lam_fast"]), w), (float(ex["lam_slow"]), 1.0 - w))


# (S1, S2, prefix sums of S2, the frozen schedule the entry pins or None)
_AREA_CACHE: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray, object]] = OrderedDict()
_AREA_LOCK = threading.Lock()  # refits run on a worker thread while the training thread predicts


_PLANS: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def register_plan(lrs: np.ndarray) -> None:
    """Declare ``lrs`` (a 1-D float64 array that owns its memory) a schedule nobody will write again, so that
    :func:`schedule_areas` keys it by identity in O(1) instead of fingerprinting it in O(T). The online
    forecaster registers its private copy of the plan (a read-only array would do too, but numpy copies a
    read-only array for ``argmax``)."""
    if not isinstance(lrs, np.ndarray) or isinstance(lrs.base, np.ndarray):
        raise ValueError("register_plan takes an array that owns its memory")
    _PLANS[id(lrs)] = lrs


def _frozen_key(lrs: ArrayLike) -> tuple | None:
    """An O(1) identity key for a 1-D float64 array whose memory nobody writes (a registered plan, a read-only
    array that owns its data, or a view of either), else ``None``. The memo keeps that array alive, so its
    address cannot be reused while the entry exists."""
    if not isinstance(lrs, np.ndarray) or lrs.dtype != np.float64 or lrs.ndim != 1:
        return None
    root = lrs
    while isinstance(root.base, np.ndarray):
        root = root.base
    if _PLANS.get(id(root)) is not root and (
        root.base is not None or root.flags.writeable or lrs.flags.writeable
    ):
        return None
    offset = lrs.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    return ("frozen", id(root), offset, lrs.size, lrs.strides)


def _areas_entry(
    lrs: ArrayLike, lam: float, warmup: WarmupS2, memory: Memory | None
) -> tuple[np.ndarray, ...]:
    mem = None if memory is None else tuple((float(lj), float(w)) for lj, w in memory)
    frozen = _frozen_key(lrs)
    if frozen is not None:  # a plan nobody writes: known by its identity, no pass over it
        with _AREA_LOCK:
            hit = _AREA_CACHE.get((frozen, float(lam), warmup, mem))
            if hit is not None:
                _AREA_CACHE.move_to_end((frozen, float(lam), warmup, mem))
                return hit[:3]
    a = np.ascontiguousarray(_as_lrs(lrs))
    # otherwise the key is a digest of the whole schedule: any change anywhere (a re-plan, a what-if that
    # differs from the plan on a few steps only) is a new entry; one SHA-1 pass costs about what recomputing
    # S1 does
    fp = frozen if frozen is not None else (a.size, hashlib.sha1(a.data).digest())
    key = (fp, float(lam), warmup, mem)
    with _AREA_LOCK:
        hit = _AREA_CACHE.get(key)
        if hit is not None:
            _AREA_CACHE.move_to_end(key)
            return hit[:3]
    s1 = forward_area(a)
    s2 = annealing_area(a, lam, warmup) if mem is None else mixed_annealing_area(a, mem, lam, warmup)
    cs2 = np.concatenate([[0.0], np.cumsum(s2)])
    for arr in (s1, s2, cs2):
        arr.flags.writeable = False
    with _AREA_LOCK:
        # the last item pins a frozen schedule's memory (its root) while the entry lives
        _AREA_CACHE[key] = (s1, s2, cs2, lrs if frozen is not None else None)
        while len(_AREA_CACHE) > 8:
            _AREA_CACHE.popitem(last=False)
    return s1, s2, cs2


def schedule_areas(
    lrs: ArrayLike, lam: float = 0.999, warmup: WarmupS2 = "raw", memory: Memory | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(forward_area(lrs), S2)`` with S2 the :func:`annealing_area` (or, given ``memory``, the
    :func:`mixed_annealing_area`), memoised on a digest of the whole schedule, or in O(1) on the identity of
    a schedule nobody writes (:func:`register_plan`, or a read-only array that owns its memory). Thread-safe.

    The online forecaster refits and predicts many times under one planned schedule (registered: no pass);
    for other schedules the digest costs one pass, recomputing costs two plus a recursive filter per memory.
    The arrays returned are read-only.
    """
    s1, s2, _ = _areas_entry(lrs, lam, warmup, memory)
    return s1, s2


def annealing_prefix(
    lrs: ArrayLike, lam: float = 0.999, warmup: WarmupS2 = "raw", memory: Memory | None = None
) -> np.ndarray:
    """Prefix sums of the S2 of :func:`schedule_areas` (length T + 1, element 0 is 0), memoised with it: the
    exact window mean of S2 over updates ``a..b`` is ``(P[b] - P[a - 1]) / (b - a + 1)``."""
    return _areas_entry(lrs, lam, warmup, memory)[2]


def _at_steps(arr: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Values after ``steps`` updates (step 0 -> 0)."""
    steps = np.asarray(steps, dtype=np.int64)
    if np.any(steps < 0) or np.any(steps > arr.size):
        raise ValueError(f"steps must lie in 0..{arr.size} (the schedule's length)")
    out = np.zeros(steps.shape, dtype=np.float64)
    pos = steps > 0
    out[pos] = arr[steps[pos] - 1]
    return out


class Law(Protocol):
    """A loss law: ``predict(params, lrs, steps)`` gives the loss after ``steps`` updates under ``lrs``."""

    name: str

    def predict(self, params: LawParams, lrs: ArrayLike, steps: ArrayLike) -> np.ndarray: ...


class TissueLaw:
    """The LR-annealing law (Tissue et al. 2024): ``L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)``.

    S1 is the forward area (:func:`forward_area`), S2 the annealing area (:func:`annealing_area`) with decay
    ``params.lam``, or the :func:`mixed_annealing_area` of the memory in ``params.extra`` (:func:`memory_of`);
    ``params.extra["warmup_hold"] == 1`` selects ``warmup="hold"`` for S2.
    """

    name = "tissue"

    def predict(self, params: LawParams, lrs: ArrayLike, steps: ArrayLike) -> np.ndarray:
        """Loss after ``steps`` updates (step 0 is undefined: S1 = 0; it returns +inf there)."""
        a = _as_lrs(lrs)
        st = np.asarray(steps, dtype=np.int64)
        warm: WarmupS2 = "hold" if params.extra.get("warmup_hold", 0.0) >= 0.5 else "raw"
        full1, full2 = schedule_areas(a, params.lam, warm, memory_of(params))
        s1 = _at_steps(full1, st)
        s2 = _at_steps(full2, st)
        with np.errstate(divide="ignore"):
            p = np.where(s1 > 0, np.power(np.maximum(s1, 1e-300), -params.alpha), np.inf)
        return params.L0 + params.A * p - params.C * s2


def _blocks(lrs: np.ndarray, start: int, max_blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LR decreases ``d_k = lr_{k-1} - lr_k`` for updates ``k > start`` (1-based), merged into at most
    ``max_blocks`` consecutive blocks: (block's update k, summed d, LR at k)."""
    d = np.zeros_like(lrs)
    d[1:] = lrs[:-1] - lrs[1:]
    d[: max(start, 1)] = 0.0
    ks = np.nonzero(d != 0.0)[0]
    if ks.size == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    if ks.size > max_blocks:
        # each block stands at its decrease-weighted centre, which keeps S_k(t) unbiased to first order
        edges = np.linspace(0, ks.size, max_blocks + 1).astype(np.int64)
        csum = np.concatenate([[0.0], np.cumsum(d[ks])])
        cpos = np.concatenate([[0.0], np.cumsum(d[ks] * ks)])
        dsum = csum[edges[1:]] - csum[edges[:-1]]
        centre = np.where(
            dsum != 0,
            (cpos[edges[1:]] - cpos[edges[:-1]]) / np.where(dsum != 0, dsum, 1.0),
            ks[edges[1:] - 1],
        )
        centre = np.clip(np.rint(centre).astype(np.int64), ks[edges[:-1]], ks[edges[1:] - 1])
        return centre + 1, dsum, lrs[centre]
    return ks + 1, d[ks], lrs[ks]


def mpl_drop(
    lrs: np.ndarray,
    steps: np.ndarray,
    B: float,
    C: float,
    beta: float,
    gamma: float,
    start: int = 0,
    max_blocks: int = 1024,
) -> np.ndarray:
    """The Multi-Power Law's loss drop ``LD(t) = B * sum_k (lr_{k-1} - lr_k) * G(lr_k^-gamma * S_k(t))`` with
    ``G(x) = 1 - (C x + 1)^-beta`` and ``S_k(t) = lr_k + ... + lr_t``, over decreases after update ``start``.
    Decreases are merged into at most ``max_blocks`` blocks, so the cost is O(len(steps) * max_blocks)."""
    s1 = np.concatenate([[0.0], np.cumsum(lrs)])
    kk, dd, lk = _blocks(lrs, start, max_blocks)
    t = np.asarray(steps, dtype=np.int64)
    if kk.size == 0:
        return np.zeros(t.shape)
    # S_k(t) = S1(t) - S1(k - 1); only k <= t counts.
    sk = s1[t][:, None] - s1[kk - 1][None, :]
    mask = kk[None, :] <= t[:, None]
    x = np.where(mask, np.maximum(lk, 1e-300)[None, :] ** (-gamma) * np.maximum(sk, 0.0), 0.0)
    g = 1.0 - np.power(C * x + 1.0, -beta)
    return B * np.sum(np.where(mask, dd[None, :] * g, 0.0), axis=1)


class MPLLaw:
    """The Multi-Power Law (Luo et al. 2025):
    ``L(t) = L0 + A * S1(t)^(-alpha) - LD(t)``,
    ``LD(t) = B * sum_{k<=t} (lr_{k-1} - lr_k) * (1 - (C * lr_k^(-gamma) * S_k(t) + 1)^(-beta))``,
    ``S_k(t) = lr_k + ... + lr_t`` (S1 includes the warm-up area, the paper's ``S1 + S_W``). Parameters
    ``L0, A, alpha`` are the LawParams fields; ``B, C, beta, gamma`` live in ``params.extra`` as
    ``B, Cm, beta, gamma`` (``params.C`` is unused, kept 0), fitted on the LR divided by ``extra["lr_unit"]``
    (the fit's peak LR; 1 when absent). Decreases count from the LR peak on."""

    name = "mpl"

    def predict(self, params: LawParams, lrs: ArrayLike, steps: ArrayLike) -> np.ndarray:
        """Loss after ``steps`` updates."""
        ex = params.extra
        a = _as_lrs(lrs) / ex.get("lr_unit", 1.0)
        st = np.asarray(steps, dtype=np.int64)
        s1 = _at_steps(forward_area(a), st)
        with np.errstate(divide="ignore"):
            p = np.where(s1 > 0, np.power(np.maximum(s1, 1e-300), -params.alpha), np.inf)
        ld = mpl_drop(
            a,
            np.clip(st, 0, a.size),
            ex.get("B", 0.0),
            ex.get("Cm", 1.0),
            ex.get("beta", 0.5),
            ex.get("gamma", 0.5),
            start=int(np.argmax(a)) + 1,
        )
        return params.L0 + params.A * p - ld


LAWS: dict[str, Law] = {"tissue": TissueLaw(), "mpl": MPLLaw()}
