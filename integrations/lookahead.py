"""Look ahead at the LR a torch optimizer will use for every remaining update, without touching it.

The forecaster needs the whole planned schedule, but a torch LR scheduler only knows the next value. This
module reads the future off the user's scheduler(s): by an exact closed form for the common single schedulers,
and otherwise by stepping a deep copy that drives a shadow optimizer (a stand-in holding only the param-group
hyper-parameters). The real scheduler, optimizer and parameters are never stepped, written or copied.

Alignment: element ``k`` of the result is the LR of update ``steps_done + k + 1``. Element 0 is the LR sitting
in the real optimizer's param group right now, i.e. the one the next ``optimizer.step()`` will use, so the
look-ahead agrees exactly with the LRs observed so far.
"""

from __future__ import annotations

import copy
import math
import types
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    PolynomialLR,
    ReduceLROnPlateau,
    StepLR,
)

__all__ = ["LookaheadError", "lookahead_lrs", "scheduler_epochs"]


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

    # A bound method used as an LR lambda would drag its owner (often the model) into the deep copy;
    # lambdas are read-only functions of the epoch, so sharing their owner is safe.
    def share_owners(sched: Any) -> None:
        for fn in getattr(sched, "lr_lambdas", []) or []:
            owner = getattr(fn, "__self__", None)
            if isinstance(fn, types.MethodType) and owner is not None:
                memo[id(owner)] = owner
        for child in _children(sched):
            share_owners(child)

    for sched in schedulers:
        share_owners(sched)
    copies = copy.deepcopy(list(schedulers), memo)
    return copies, shadow


def scheduler_epochs(steps_done: int, total_steps: int, step_every: int = 1) -> np.ndarray:
    """How many scheduler steps have happened before each remaining update, relative to now.

    For update ``j`` in ``steps_done+1 .. total_steps`` with the scheduler stepped after every ``step_every``-th
    update: ``floor((j-1)/step_every) - floor(steps_done/step_every)``. Element 0 is always 0.
    """
    j = np.arange(steps_done + 1, total_steps + 1, dtype=np.int64)
    return (j - 1) // step_every - steps_done // step_every


def _closed_form(sched: Any, base: float, n: np.ndarray) -> np.ndarray | None:
    """The LR at scheduler epochs ``n`` for the torch schedulers with an exact formula, else ``None``."""
    if type(sched) is StepLR:
        return base * sched.gamma ** (n // sched.step_size)
    if type(sched) is MultiStepLR:
        milestones: Counter[int] = sched.milestones
        marks = np.array(sorted(milestones.elements()), dtype=np.int64)
        return base * sched.gamma ** np.searchsorted(marks, n, side="right")
    if type(sched) is ExponentialLR:
        return base * sched.gamma ** n.astype(np.float64)
    if type(sched) is ConstantLR:
        return base * np.where(n < sched.total_iters, sched.factor, 1.0)
    if type(sched) is LinearLR:
        frac = np.minimum(n, sched.total_iters) / sched.total_iters
        return base * (sched.start_factor + (sched.end_factor - sched.start_factor) * frac)
    if type(sched) is PolynomialLR:
        frac = np.minimum(n, sched.total_iters) / sched.total_iters
        return base * (1.0 - frac) ** sched.power
    if type(sched) is CosineAnnealingLR and int(n.max(initial=0)) <= sched.T_max:
        # torch steps the cosine by a recursive ratio that matches this form up to T_max only.
        return sched.eta_min + (base - sched.eta_min) * (1.0 + np.cos(math.pi * n / sched.T_max)) / 2.0
    return None


def _try_closed_form(
    schedulers: Sequence[Any], optimizer: Optimizer, group: int, n_future: np.ndarray
) -> np.ndarray | None:
    if len(schedulers) != 1:
        return None
    sched = schedulers[0]
    if _children(sched) or not hasattr(sched, "base_lrs"):
        return None
    base = _as_float(sched.base_lrs[group])
    epoch = int(sched.last_epoch)
    current = _as_float(optimizer.param_groups[group]["lr"])
    now = _closed_form(sched, base, np.array([epoch], dtype=np.int64))
    # The formula holds only while nothing else has moved the LR (warm restarts, manual edits, a second
    # scheduler): check it reproduces the LR in use now, else fall back to simulation.
    if now is None or not math.isclose(float(now[0]), current, rel_tol=1e-9, abs_tol=1e-15):
        return None
    return _closed_form(sched, base, epoch + n_future)


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
    closed_form: bool = True,
) -> np.ndarray:
    """The LR of every remaining update ``steps_done+1 .. total_steps`` of ``optimizer``'s param group ``group``.

    ``schedulers`` are the torch LR schedulers attached to ``optimizer`` (stepped in this order after every
    ``step_every``-th update, as a training loop does; ``None`` or empty = constant LR). Update ``j`` uses the
    LR reached after ``floor((j-1)/step_every) - floor(steps_done/step_every)`` more scheduler steps; element 0 is
    the LR in the optimizer now. Single StepLR/MultiStepLR/ExponentialLR/ConstantLR/LinearLR/PolynomialLR/
    CosineAnnealingLR (within ``T_max``) use an exact closed form when it reproduces the current LR; everything
    else (LambdaLR, OneCycleLR, SequentialLR, ChainedScheduler, warm restarts, ...) is simulated on deep copies
    that drive a shadow optimizer. ``ReduceLROnPlateau`` depends on future metrics: its LR is held constant, with
    a warning. Returns float64, length ``total_steps - steps_done``. Raises :class:`LookaheadError` on bad input.
    """
    if total_steps <= 0:
        raise LookaheadError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= steps_done <= total_steps:
        raise LookaheadError(f"steps_done must be in [0, total_steps={total_steps}], got {steps_done}")
    if step_every < 1:
        raise LookaheadError(f"step_every must be >= 1, got {step_every}")
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
    plateau = [s for s in scheds if isinstance(s, ReduceLROnPlateau)]
    if plateau:
        warnings.warn(
            "ReduceLROnPlateau changes the LR from future metrics; the look-ahead holds its LR constant",
            stacklevel=2,
        )
        scheds = [s for s in scheds if not isinstance(s, ReduceLROnPlateau)]

    current = _as_float(optimizer.param_groups[group]["lr"])
    epochs = scheduler_epochs(steps_done, total_steps, step_every)
    if epochs.size == 0:
        return np.empty(0, dtype=np.float64)
    if not scheds:
        return np.full(epochs.size, current, dtype=np.float64)
    lrs = _try_closed_form(scheds, optimizer, group, epochs) if closed_form else None
    if lrs is None:
        lrs = _simulate(scheds, optimizer, group, int(epochs[-1]))[epochs]
    lrs = np.asarray(lrs, dtype=np.float64)
    lrs[epochs == 0] = current
    return lrs
