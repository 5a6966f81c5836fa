"""Look ahead at the LR a torch optimizer will use for every remaining update, without touching it.

The forecaster needs the whole planned schedule, but a torch LR scheduler only knows the next value. This
module reads the future off the user's scheduler(s) without stepping them. Every step of every scheduler in
``torch.optim.lr_scheduler`` is a map ``lr <- a * lr + b`` of the param group's LR whose coefficients depend on
the scheduler's epoch only; they are computed for all future epochs at once with torch's own formulas (also
through SequentialLR milestones and ChainedScheduler compositions) and applied by a cumulative product, so a
1M-step schedule takes a fraction of a second and agrees with real stepping to the last bits. Schedulers this
does not cover (subclasses, custom ones) are stepped on a deep copy that drives a shadow optimizer (a stand-in
holding only the param-group hyper-parameters). The real scheduler, optimizer and parameters are never
stepped, written or copied.

Alignment: element ``k`` of the result is the LR of update ``steps_done + k + 1``. Element 0 is the LR sitting
in the real optimizer's param group right now, i.e. the one the next ``optimizer.step()`` will use, so the
look-ahead agrees exactly with the LRs observed so far.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import functools
import inspect
import math
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ChainedScheduler,
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    CyclicLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiplicativeLR,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from scaleforecast.caller import warn_user

__all__ = ["LookaheadError", "lookahead_lrs", "metric_driven", "scheduler_epochs"]


class LookaheadError(ValueError):
    """The future LRs cannot be read off the given optimizer/scheduler(s)."""


class _ShadowOptimizer:
    """A stand-in for an optimizer: param groups without parameters, and a ``step`` that does nothing.

    Schedulers only read and write ``param_groups[i]["lr"]`` (and momentum/betas for the cyclic ones), so this
    is all a copied scheduler needs; it keeps the copy from holding (or deep-copying) the model's tensors.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.defaults = dict(getattr(optimizer, "defaults", {}))
        self.param_groups: list[dict[str, Any]] = [
            {k: copy.deepcopy(v) for k, v in group.items() if k != "params"} | {"params": []}
            for group in optimizer.param_groups
        ]
        self.state: dict[Any, Any] = {}
        self._opt_called = True

    def step(self, *args: Any, **kwargs: Any) -> None:
        return None

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]  # silences torch's order check


def _as_float(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _children(scheduler: Any) -> list[Any]:
    return list(getattr(scheduler, "_schedulers", []) or [])


def _shadow_copy(schedulers: Sequence[Any], optimizer: Optimizer) -> tuple[list[Any], _ShadowOptimizer]:
    """Deep-copy ``schedulers`` with every reference to ``optimizer`` redirected to one shadow optimizer."""
    shadow = _ShadowOptimizer(optimizer)
    memo: dict[int, Any] = {id(optimizer): shadow}

    copied = {id(s) for top in schedulers for s in _tree(top)}
    # A bound method used as an LR lambda would drag its owner (often the model) into the deep copy;
    # lambdas are read-only functions of the epoch, so sharing their owner is safe. Not when the owner is a
    # scheduler being copied (a LambdaLR subclass passing its own method): shared, the "copy" would be the
    # real scheduler, stepped by the look-ahead.
    for sched in (s for top in schedulers for s in _tree(top)):
        for fn in getattr(sched, "lr_lambdas", []) or []:
            owner = getattr(fn, "__self__", None)
            if isinstance(fn, types.MethodType) and owner is not None and id(owner) not in copied:
                memo[id(owner)] = owner
    base = dict(memo)
    try:
        copies = copy.deepcopy(list(schedulers), memo)
    except Exception as exc:  # a hand-written scheduler holding a lock, a logger's stream, a writer
        # (a fresh memo: a failed deep copy leaves half-built objects in the old one)
        copies = [_copy_sharing(sched, base) for sched in schedulers]
        shared = [c for top in copies for c in _tree(top) if id(c) in copied]
        if shared:
            raise LookaheadError(
                f"{type(shared[0]).__name__} cannot be copied to read its LRs ahead ({type(exc).__name__}: "
                f"{exc}), and stepping it would move the real one"
            ) from None
    return copies, shadow


def _copy_sharing(obj: Any, memo: dict[int, Any]) -> Any:
    """``obj`` with each attribute deep-copied, but the ones that cannot be (a lock, a stream, a writer) shared
    with the original: a scheduler's step reads and writes its counters and its optimizer's LR, not those."""
    new = copy.copy(obj)
    memo[id(obj)] = new
    state = getattr(new, "__dict__", None)
    for key, value in list((state or {}).items()):
        with contextlib.suppress(Exception):
            state[key] = copy.deepcopy(value, memo)  # type: ignore[index]
    return new


def _tree(scheduler: Any) -> list[Any]:
    """``scheduler`` and every scheduler nested in it."""
    return [scheduler, *(s for child in _children(scheduler) for s in _tree(child))]


def scheduler_epochs(
    steps_done: int,
    total_steps: int,
    step_every: int = 1,
    epoch_pattern: Sequence[bool] | None = None,
    per_update: int = 1,
) -> np.ndarray:
    """How many scheduler steps have happened before each remaining update, relative to now.

    For update ``j`` in ``steps_done+1 .. total_steps`` with the scheduler stepped after every ``step_every``-th
    update: ``floor((j-1)/step_every) - floor(steps_done/step_every)``. Element 0 is always 0. With
    ``epoch_pattern`` (one flag per update of an epoch: whether the scheduler steps after it; Lightning counts
    its ``frequency`` in batches from each epoch's start) the count restarts its pattern every epoch instead.
    ``per_update``: the scheduler steps taken each time it steps (Accelerate steps it once per process).
    """
    j = np.arange(steps_done + 1, total_steps + 1, dtype=np.int64)
    if epoch_pattern is None:
        return per_update * ((j - 1) // step_every - steps_done // step_every)
    per_epoch = len(epoch_pattern)
    done_by = np.concatenate([[0], np.cumsum(np.asarray(epoch_pattern, dtype=np.int64))])

    def count(u: np.ndarray | int) -> np.ndarray:
        return (np.asarray(u) // per_epoch) * done_by[-1] + done_by[np.asarray(u) % per_epoch]

    return per_update * (count(j - 1) - count(steps_done))


class _Unsupported(Exception):
    """The vectorised reading does not cover this scheduler (or this state of it): simulate instead."""


def _hf_twin(fn: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """A vectorised twin of a Hugging Face ``transformers`` schedule lambda (``functools.partial`` of one of
    ``transformers.optimization``'s ``_get_*_lambda`` functions: what ``Trainer`` builds for every
    ``lr_scheduler_type``), or ``None``. The twins repeat the originals' arithmetic on arrays; like any
    array call they are trusted only after agreeing with the original on spread points."""
    if (
        not isinstance(fn, functools.partial)
        or getattr(fn.func, "__module__", "") != "transformers.optimization"
    ):
        return None
    func = fn.func
    kw = dict(fn.keywords)
    if fn.args:
        return None

    def warm(e: np.ndarray, w: float) -> np.ndarray:
        return e / float(max(1, w))

    def cos_factor(progress: np.ndarray, cycles: float) -> np.ndarray:
        return 0.5 * (1.0 + np.cos(math.pi * float(cycles) * 2.0 * progress))

    name = func.__name__
    if name == "_get_constant_lambda":
        return lambda e: np.ones(e.shape)
    if name == "_get_constant_schedule_with_warmup_lr_lambda":
        w = kw["num_warmup_steps"]
        return lambda e: np.where(e < w, e / float(max(1.0, w)), 1.0)
    if name == "_get_linear_schedule_with_warmup_lr_lambda":
        w, n = kw["num_warmup_steps"], kw["num_training_steps"]
        return lambda e: np.where(e < w, warm(e, w), np.maximum(0.0, (n - e) / float(max(1, n - w))))
    if name == "_get_cosine_schedule_with_warmup_lr_lambda":
        w, n, c, m = (
            kw["num_warmup_steps"],
            kw["num_training_steps"],
            kw["num_cycles"],
            kw.get("min_lr_rate", 0.0),
        )

        def cosine(e: np.ndarray) -> np.ndarray:
            progress = (e - w) / float(max(1, n - w))
            return np.where(e < w, warm(e, w), np.maximum(0, cos_factor(progress, c) * (1 - m) + m))

        return cosine
    if name == "_get_cosine_with_hard_restarts_schedule_with_warmup_lr_lambda":
        w, n, c = kw["num_warmup_steps"], kw["num_training_steps"], kw["num_cycles"]

        def restarts(e: np.ndarray) -> np.ndarray:
            progress = (e - w) / float(max(1, n - w))
            late = np.maximum(0.0, 0.5 * (1.0 + np.cos(math.pi * ((float(c) * progress) % 1.0))))
            return np.where(e < w, warm(e, w), np.where(progress >= 1.0, 0.0, late))

        return restarts
    if name == "_get_polynomial_decay_schedule_with_warmup_lr_lambda":
        w, n, end, power, init = (
            kw[k] for k in ("num_warmup_steps", "num_training_steps", "lr_end", "power", "lr_init")
        )

        def poly(e: np.ndarray) -> np.ndarray:
            mid = ((init - end) * (1 - (e - w) / (n - w)) ** power + end) / init
            return np.where(e < w, warm(e, w), np.where(e > n, end / init, mid))

        return poly
    if name == "_get_inverse_sqrt_schedule_lr_lambda":
        w, scale = kw["num_warmup_steps"], kw["timescale"]
        return lambda e: np.where(e < w, warm(e, w), 1.0 / np.sqrt((e + (scale - w)) / scale))
    if name == "_get_wsd_scheduler_lambda":
        w, s, d = kw["num_warmup_steps"], kw["num_stable_steps"], kw["num_decay_steps"]
        low, c = kw["min_lr_ratio"], kw["num_cycles"]
        shapes = {
            "linear": (lambda p: p, lambda p: 1.0 - p),
            "cosine": (lambda p: 0.5 * (1.0 - np.cos(math.pi * p)), lambda p: cos_factor(p, c)),
            "1-sqrt": (lambda p: 1.0 - np.sqrt(1.0 - p), lambda p: 1.0 - np.sqrt(p)),
        }
        if kw["warmup_type"] not in shapes or kw["decay_type"] not in shapes:
            return None
        up, down = shapes[kw["warmup_type"]][0], shapes[kw["decay_type"]][1]

        def wsd(e: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore"):
                rise = np.maximum(0.0, up(np.clip(e / float(max(1, w)), 0.0, 1.0)) * (1.0 - low) + low)
                fall = np.maximum(
                    0.0, down(np.clip((e - w - s) / float(max(1, d)), 0.0, 1.0)) * (1.0 - low) + low
                )
            return np.where(e < w, rise, np.where(e < w + s, 1.0, np.where(e < w + s + d, fall, low)))

        return wsd
    return None


def _call_many(fn: Callable[[Any], Any], xs: np.ndarray) -> np.ndarray:
    """``[fn(x) for x in xs]`` as float64, computed on the whole array at once when that gives the same values.

    ``fn`` is tried on the array itself (a function written for one number may still accept one:
    ``lambda e: 0.95 ** e``), or its vectorised twin when it is a Hugging Face schedule lambda; the result is
    trusted only if it has one finite value per element and agrees with one-by-one calls (to 1e-12) on 33
    spread points, both ends included. Anything else (branches, ``math`` functions, ``min``/``max``) is
    called once per element: about 0.5 us each, the one cost of the look-ahead that grows with the user's
    code.
    """
    n = xs.size
    if n == 0:
        return np.empty(0)
    twin = _hf_twin(fn)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            out = np.asarray((twin or fn)(xs), dtype=np.float64)
            if out.shape == ():
                out = np.full(n, float(out))
            if out.shape == (n,) and np.all(np.isfinite(out)):
                probe = np.unique(np.linspace(0, n - 1, 33).astype(np.int64))
                one = np.array([float(fn(int(xs[i]))) for i in probe])
                if np.allclose(out[probe], one, rtol=1e-12, atol=0.0):
                    return out
        except Exception:  # the function takes one number only
            pass
    return np.fromiter(map(fn, xs.tolist()), dtype=np.float64, count=n)


def _mul(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return a, np.zeros_like(a)


def _absolute(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros_like(v), v


def _leaf_maps(
    sched: Any, optimizer: Optimizer, group: int, count: int, restart: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The next ``count`` steps of one torch scheduler as maps ``lr <- a * lr + b`` of the group's LR.

    Each step of every built-in scheduler is such a map, whose coefficients depend only on the scheduler's
    epoch (not on the LR): chainable schedulers multiply (``b = 0``), the others set the LR outright
    (``a = 0``), the cosine moves it relative to ``eta_min``. With ``restart`` the first step is the
    ``_update_lr(0)`` that SequentialLR makes at a milestone (the closed form at epoch 0 where the scheduler
    has one), and the epoch counts on from 0. Mirrors torch's own formulas, operation for operation.
    """
    kind = type(sched)
    base = _as_float(sched.base_lrs[group]) if hasattr(sched, "base_lrs") else math.nan
    if restart:
        e = np.arange(0, count, dtype=np.int64)
    else:
        e = int(sched.last_epoch) + np.arange(1, count + 1, dtype=np.int64)
    ef = e.astype(np.float64)
    if kind is LambdaLR:
        fn = sched.lr_lambdas[group]
        return _absolute(base * _call_many(fn, e))
    if kind is MultiplicativeLR:
        fn = sched.lr_lambdas[group]
        return _mul(_call_many(fn, e))
    if kind is StepLR:
        if restart:
            first = base * sched.gamma ** (0 // sched.step_size)
        a = np.where((e != 0) & (e % sched.step_size == 0), sched.gamma, 1.0)
    elif kind is MultiStepLR:
        counts: Counter[int] = sched.milestones
        marks = np.array(sorted(counts), dtype=np.int64)
        a = np.ones(count)
        if marks.size:
            pos = np.minimum(np.searchsorted(marks, e), marks.size - 1)
            hit = marks[pos] == e
            a[hit] = [sched.gamma ** counts[m] for m in marks[pos[hit]].tolist()]
        if restart:
            first = base * sched.gamma ** bisect.bisect_right(sorted(counts.elements()), 0)
    elif kind is ConstantLR:
        a = np.where(e == 0, sched.factor, np.where(e != sched.total_iters, 1.0, 1.0 / sched.factor))
        if restart:
            first = base * (sched.factor + (sched.total_iters <= 0) * (1 - sched.factor))
    elif kind is LinearLR:
        s, f, t = sched.start_factor, sched.end_factor, sched.total_iters
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = 1.0 + (f - s) / (t * s + (ef - 1) * (f - s))
        a = np.where(e == 0, s, np.where(e > t, 1.0, ratio))
        if restart:
            first = base * (s + (f - s) * min(t, 0) / t)
    elif kind is ExponentialLR:
        a = np.full(count, float(sched.gamma))
        if restart:
            first = base * sched.gamma**0
    elif kind is PolynomialLR:
        t, p = sched.total_iters, sched.power
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = ((1.0 - ef / t) / (1.0 - (ef - 1) / t)) ** p
        a = np.where(e > t, 1.0, ratio)
        if restart:
            first = base * (1.0 - min(t, 0) / t) ** p
    elif kind is CosineAnnealingLR:
        return _cosine_maps(sched, base, e, restart)
    elif kind is CyclicLR:
        return _absolute(_cyclic(sched, group, e))
    elif kind is CosineAnnealingWarmRestarts:
        return _absolute(_warm_restarts(sched, base, count, restart))
    elif kind is OneCycleLR:
        return _absolute(_one_cycle(sched, optimizer.param_groups[group], e))
    else:
        raise _Unsupported(f"{kind.__name__} has no vectorised form")
    a = np.asarray(a, dtype=np.float64)
    b = np.zeros_like(a)
    if restart:
        a[0], b[0] = 0.0, first
    return a, b


def _cosine_maps(sched: Any, base: float, e: np.ndarray, restart: bool) -> tuple[np.ndarray, np.ndarray]:
    if getattr(sched, "_step_count", 1) < 1:  # its first step would take torch's closed-form branch
        raise _Unsupported("a CosineAnnealingLR that never took its initial step")
    T, eta = sched.T_max, sched.eta_min
    # 1 + cos(pi * k / T) for k = e[0] - 1 .. e[-1] (the epochs are consecutive): each cosine once
    one_plus = 1 + np.cos(math.pi * np.arange(e[0] - 1, e[-1] + 1, dtype=np.float64) / T)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = one_plus[1:] / one_plus[:-1]
    bump = (e - 1 - T) % (2 * T) == 0  # torch's step back up past T_max
    a = np.where(bump, 1.0, r)
    b = np.where(bump, (base - eta) * (1 - math.cos(math.pi / T)) / 2, eta * (1.0 - r) if eta else 0.0)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if restart:
        a[0], b[0] = 0.0, eta + (base - eta) * (1 + math.cos(math.pi * 0 / T)) / 2
    return a, b


def _cyclic(sched: Any, group: int, e: np.ndarray) -> np.ndarray:
    base = _as_float(sched.base_lrs[group])
    top = _as_float(sched.max_lrs[group])
    ef = e.astype(np.float64)
    cycle = np.floor(1 + ef / sched.total_size)
    x = 1.0 + ef / sched.total_size - cycle
    scale = np.where(x <= sched.step_ratio, x / sched.step_ratio, (x - 1) / (sched.step_ratio - 1))
    height = (top - base) * scale
    arg = cycle if sched.scale_mode == "cycle" else ef
    if sched._scale_fn_custom is not None:
        factor = _call_many(sched._scale_fn_custom, arg)
    elif sched.mode == "triangular":
        factor = np.ones_like(arg)
    elif sched.mode == "triangular2":
        factor = 1 / (2.0 ** (arg - 1))
    else:
        factor = sched.gamma**arg
    return base + height * factor


def _warm_restarts(sched: Any, base: float, count: int, restart: bool) -> np.ndarray:
    """CosineAnnealingWarmRestarts: ``T_cur`` counts up and wraps at ``T_i``, which grows by ``T_mult``."""
    t_cur, t_i, mult, eta = sched.T_cur, sched.T_i, sched.T_mult, sched.eta_min
    cur = np.empty(count, dtype=np.float64)
    per = np.empty(count, dtype=np.float64)
    k = 0
    if restart:  # _update_lr(0): get_lr() with T_cur and T_i as they stand
        cur[0], per[0] = t_cur, t_i
        k = 1
    if k < count and int(sched.last_epoch) < 0 and not restart:
        t_cur, t_i = 0, sched.T_0  # the first step of a fresh scheduler: step(epoch=0)
        cur[k], per[k] = t_cur, t_i
        k += 1
    while k < count:
        # steps until T_cur reaches T_i, then the wrapping step
        run = max(math.ceil(t_i - t_cur) - 1, 0)
        m = min(run, count - k)
        cur[k : k + m] = t_cur + np.arange(1, m + 1)
        per[k : k + m] = t_i
        k += m
        t_cur += m
        if k >= count:
            break
        t_cur = t_cur + 1
        if t_cur >= t_i:
            t_cur = t_cur % t_i
            t_i = t_i * mult
        cur[k], per[k] = t_cur, t_i
        k += 1
    return eta + (base - eta) * (1 + np.cos(math.pi * cur / per)) / 2


def _one_cycle(sched: Any, group: dict[str, Any], e: np.ndarray) -> np.ndarray:
    if e.size and int(e.max()) > sched.total_steps:
        raise LookaheadError(
            f"OneCycleLR was built for {sched.total_steps} steps and cannot step {int(e.max())} times: "
            "make its total_steps cover the run"
        )
    phases = sched._schedule_phases
    ef = e.astype(np.float64)
    out = np.full(e.shape, np.nan)
    done = np.zeros(e.shape, dtype=bool)
    start_step = 0.0
    for i, phase in enumerate(phases):
        end_step = phase["end_step"]
        here = ~done & ((ef <= end_step) | (i == len(phases) - 1))
        pct = (ef[here] - start_step) / (end_step - start_step)
        lo, hi = _as_float(group[phase["start_lr"]]), _as_float(group[phase["end_lr"]])
        if sched._anneal_func_type == "cos":
            out[here] = hi + (lo - hi) / 2.0 * (np.cos(math.pi * pct) + 1)
        else:
            out[here] = (hi - lo) * pct + lo
        done |= here
        start_step = phase["end_step"]
    return out


def _node_maps(
    sched: Any, optimizer: Optimizer, group: int, count: int, restart: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Maps of the next ``count`` steps of a scheduler, composite ones included."""
    if type(sched) is ChainedScheduler:
        if restart:
            raise _Unsupported("a ChainedScheduler restarted by SequentialLR")
        return _chain([_node_maps(s, optimizer, group, count, False) for s in sched._schedulers], count)
    if type(sched) is SequentialLR:
        if restart:
            raise _Unsupported("a SequentialLR restarted by SequentialLR")
        return _sequential_maps(sched, optimizer, group, count)
    return _leaf_maps(sched, optimizer, group, count, restart)


def _chain(maps: list[tuple[np.ndarray, np.ndarray]], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Schedulers stepped one after the other in every step: their maps composed in that order."""
    a, b = np.ones(count), np.zeros(count)
    for a2, b2 in maps:
        a, b = a2 * a, a2 * b + b2
    return a, b


def _sequential_maps(seq: Any, optimizer: Optimizer, group: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """SequentialLR: at each step one child steps; the child whose milestone is reached restarts at epoch 0."""
    marks = np.asarray(seq._milestones, dtype=np.int64)
    if marks.size and np.any(np.diff(marks) < 0):
        raise _Unsupported("unsorted SequentialLR milestones")
    epoch = int(seq.last_epoch) + np.arange(1, count + 1, dtype=np.int64)
    which = np.searchsorted(marks, epoch, side="right")
    now = int(np.searchsorted(marks, int(seq.last_epoch), side="right"))
    a, b = np.ones(count), np.zeros(count)
    for i in np.unique(which).tolist():
        where = np.flatnonzero(which == i)
        # a later child starts with the restart at its milestone; the active one steps on
        ca, cb = _node_maps(seq._schedulers[i], optimizer, group, where.size, restart=i != now)
        a[where], b[where] = ca, cb
    return a, b


def _fixed_point(a: np.ndarray, b: np.ndarray) -> float:
    """The ``c`` with ``b = c * (1 - a)`` on most steps (the maps then contract towards ``c``: the cosine's
    ``eta_min``), or 0. Around it, those steps are plain products: ``lr - c <- a * (lr - c)``."""
    moving = (a != 1.0) & (b != 0.0)
    if 2 * int(moving.sum()) < a.size:  # mostly plain products already
        return 0.0
    c = float(np.median(b[moving] / (1.0 - a[moving])))
    return c if np.isfinite(c) else 0.0


def _apply(lr0: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out[0] = lr0``, ``out[k] = a[k-1] * out[k-1] + b[k-1]``.

    Outright values (``a = 0``) are assigned; between them, the LR relative to the maps' fixed point evolves by
    products, computed by ``cumprod`` (for pure products: the very roundings of stepping); the few steps that
    also shift it (the cosine's step back up past ``T_max``) are applied one by one in between."""
    n = a.size
    out = np.empty(n + 1)
    out[0] = lr0
    reset = a == 0.0
    out[1:][reset] = b[reset]
    free = np.flatnonzero(~reset)
    if free.size == 0:
        return out
    cuts = np.flatnonzero(np.diff(free) != 1) + 1
    for run in np.split(free, cuts):
        i, j = int(run[0]), int(run[-1]) + 1  # maps a[i:j] take out[i] to out[i+1 : j+1]
        ra, rb = a[i:j], b[i:j]
        c = _fixed_point(ra, rb)
        shift = rb - c * (1.0 - ra)  # in z = lr - c: z <- a * z + shift
        shift[np.abs(shift) <= 1e-15 * max(abs(c), 1e-300)] = 0.0
        shifts = np.flatnonzero(shift != 0.0)
        z = np.empty(ra.size)
        if shifts.size * 8 > ra.size:
            v = float(out[i]) - c
            for k, (ak, bk) in enumerate(zip(ra.tolist(), shift.tolist(), strict=True)):
                v = ak * v + bk
                z[k] = v
        else:
            v, pos = float(out[i]) - c, 0
            for s in [*shifts.tolist(), ra.size]:
                if s > pos:
                    z[pos:s] = np.multiply.accumulate(np.r_[v, ra[pos:s]])[1:]
                    v = float(z[s - 1])
                if s < ra.size:
                    v = float(ra[s]) * v + float(shift[s])
                    z[s] = v
                pos = s + 1
        out[i + 1 : j + 1] = z + c if c else z
    return out


def _vectorised(schedulers: Sequence[Any], optimizer: Optimizer, group: int, n_steps: int) -> np.ndarray:
    """LR of ``group`` now and after each of ``n_steps`` scheduler steps, without stepping anything."""
    maps = [_node_maps(s, optimizer, group, n_steps, False) for s in schedulers]
    a, b = _chain(maps, n_steps)
    return _apply(_as_float(optimizer.param_groups[group]["lr"]), a, b)


def _simulate(schedulers: Sequence[Any], optimizer: Optimizer, group: int, n_steps: int) -> np.ndarray:
    """LR of ``group`` after each of ``n_steps`` scheduler steps, on copies driving a shadow optimizer."""
    copies, shadow = _shadow_copy(schedulers, optimizer)
    out = np.empty(n_steps + 1, dtype=np.float64)
    out[0] = _as_float(shadow.param_groups[group]["lr"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(1, n_steps + 1):
            for sched in copies:
                sched.step()
            out[i] = _as_float(shadow.param_groups[group]["lr"])
    return out


def lookahead_lrs(
    optimizer: Optimizer,
    schedulers: LRScheduler | Iterable[LRScheduler] | None,
    total_steps: int,
    *,
    steps_done: int = 0,
    group: int = 0,
    step_every: int = 1,
    epoch_pattern: Sequence[bool] | None = None,
    per_update: int = 1,
    closed_form: bool = True,
) -> np.ndarray:
    """The LR of every remaining update ``steps_done+1 .. total_steps`` of ``optimizer``'s param group ``group``.

    ``schedulers`` are the torch LR schedulers attached to ``optimizer`` (stepped in this order after every
    ``step_every``-th update, as a training loop does; ``None`` or empty = constant LR). Update ``j`` uses the
    LR reached after ``floor((j-1)/step_every) - floor(steps_done/step_every)`` more scheduler steps; element
    0 is the LR in the optimizer now (``epoch_pattern``, ``per_update``: see :func:`scheduler_epochs`). Every scheduler of
    ``torch.optim.lr_scheduler`` (and any nesting of them in SequentialLR / ChainedScheduler) is read in
    vectorised form, as a sequence of maps ``lr <- a * lr + b`` mirroring torch's own step formulas: about 0.1
    s for 1M steps, plus the user's lambdas (LambdaLR, MultiplicativeLR) called once per step unless they
    accept an array. The first steps are checked against stepping copies; other schedulers (subclasses, custom
    ones), ``closed_form=False`` or a mismatch fall back to stepping deep copies that drive a shadow optimizer
    (~10 us per step). ``ReduceLROnPlateau`` depends on future metrics (as does any scheduler whose ``step``
    needs a metric: :func:`metric_driven`): its LR is held constant, with a warning. Returns float64, length
    ``total_steps - steps_done``. Raises :class:`LookaheadError` on bad input.
    """
    if total_steps <= 0:
        raise LookaheadError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= steps_done <= total_steps:
        raise LookaheadError(f"steps_done must be in [0, total_steps={total_steps}], got {steps_done}")
    if step_every < 1 or per_update < 1:
        raise LookaheadError(f"step_every and per_update must be >= 1, got {step_every} and {per_update}")
    if epoch_pattern is not None and len(epoch_pattern) == 0:
        raise LookaheadError("epoch_pattern must hold one flag per update of an epoch")
    if not 0 <= group < len(optimizer.param_groups):
        raise LookaheadError(
            f"param group {group} does not exist (optimizer has {len(optimizer.param_groups)})"
        )
    if schedulers is None:
        scheds: list[Any] = []
    elif isinstance(schedulers, (LRScheduler, ReduceLROnPlateau)):
        scheds = [schedulers]
    else:
        scheds = list(schedulers)
    for sched in scheds:
        if getattr(sched, "optimizer", optimizer) is not optimizer:
            raise LookaheadError(f"{type(sched).__name__} is attached to a different optimizer")
    plateau = [s for s in scheds if metric_driven(s)]
    if plateau:
        warn_user(
            f"{type(plateau[0]).__name__} changes the LR from future metrics; the look-ahead holds its LR constant",
            UserWarning,
        )
        scheds = [s for s in scheds if not metric_driven(s)]

    current = _as_float(optimizer.param_groups[group]["lr"])
    epochs = scheduler_epochs(steps_done, total_steps, step_every, epoch_pattern, per_update)
    if epochs.size == 0:
        return np.empty(0, dtype=np.float64)
    n_steps = int(epochs[-1])
    if not scheds or n_steps == 0:  # no scheduler, or no scheduler step left before the run ends
        return np.full(epochs.size, current, dtype=np.float64)
    lrs = _read_ahead(scheds, optimizer, group, n_steps) if closed_form else None
    if lrs is None:
        lrs = _simulate(scheds, optimizer, group, n_steps)
    lrs = np.asarray(lrs[epochs], dtype=np.float64)
    lrs[epochs == 0] = current
    return lrs


_CHECK_STEPS = 16


def metric_driven(scheduler: Any) -> bool:
    """Whether ``scheduler`` sets the LR from metrics the run has not produced yet: ``ReduceLROnPlateau``, or
    any scheduler whose ``step()`` needs an argument (transformers' ``GreedyLR`` takes the eval loss)."""
    if isinstance(scheduler, ReduceLROnPlateau):
        return True
    try:
        params = inspect.signature(scheduler.step).parameters.values()
    except (AttributeError, TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(p.default is inspect.Parameter.empty and p.kind in positional for p in params)


def _read_ahead(
    schedulers: Sequence[Any], optimizer: Optimizer, group: int, n_steps: int
) -> np.ndarray | None:
    """The vectorised reading, or ``None`` where it does not apply or its first steps disagree with stepping."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lrs = _vectorised(schedulers, optimizer, group, n_steps)
    except (_Unsupported, AttributeError):  # AttributeError: a scheduler that is no torch LRScheduler at all
        return None
    check = _simulate(schedulers, optimizer, group, min(n_steps, _CHECK_STEPS))
    if not np.allclose(lrs[: check.size], check, rtol=1e-9, atol=0.0):
        warn_user(
            "the LR look-ahead's vectorised reading disagrees with stepping the scheduler; stepping instead"
        )
        return None
    return lrs
