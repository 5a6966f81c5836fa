"""The planned per-update LR of a training run, and when to re-plan it: one rule set for every adapter.

The forecaster needs the whole schedule, past and future. :class:`SchedulePlanner` builds it from the LRs the
run has used so far and a look-ahead with the run's own LR scheduler(s) (:func:`lookahead.lookahead_lrs`, on
copies), or takes a schedule the user gave. The rules, the same for Lightning, the HF Trainer and plain loops:

- **Zero LR.** An LR ``<= 0`` (a warm-up's first update, a decay to zero) or a non-finite one in the plan
  becomes ``1e-12 * max(plan)``: a vanishing positive LR, so that ``S1``/``S2`` stay defined, and nothing the
  law predicts changes.
- **Drift.** An LR actually used departs from the plan when ``|used - planned| > 1e-6 * |planned| +
  1e-9 * max(plan)``; used LRs that are unknown (``NaN``) or ``<= 0`` are not compared. A departure, a new set
  of schedulers or a new run length re-plans from the current step, keeping the LRs used so far.
- **Length.** The run's length is ``total_steps=`` when given, else the given schedule's length, else the
  trainer's. When a given length differs from the trainer's, one warning says so and the given one stands;
  steps past the planned end are not observed.
- **Resume without a record of the past.** The past LRs of a ``LambdaLR`` (what HF and most custom loops use)
  are recomputed exactly; for any other scheduler the current LR stands in, with a warning.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scaleforecast.integrations.lookahead import LookaheadError, lookahead_lrs, scheduler_epochs

from scaleforecast.advice import idle_tail
from scaleforecast.schedules import edge_zeros

__all__ = [
    "LRSource",
    "SchedulePlanner",
    "SchedulerPace",
    "floor_lrs",
    "lr_trouble",
    "step_counts",
    "unwrap_scheduler",
]

DRIFT_RTOL = 1e-6
DRIFT_ATOL = 1e-9  # times the plan's largest LR
ZERO_FLOOR = 1e-12  # times the plan's largest LR


def floor_lrs(lrs: np.ndarray) -> np.ndarray:
    """The zero-LR rule: every LR that is not a positive number becomes ``1e-12 * max(lrs)``."""
    lrs = np.asarray(lrs, dtype=np.float64).copy()
    ok = np.isfinite(lrs) & (lrs > 0)
    peak = float(lrs[ok].max()) if ok.any() else 1.0
    lrs[~ok] = ZERO_FLOOR * peak
    return lrs


def lr_trouble(lrs: np.ndarray) -> str | None:
    """What the zero-LR rule would hide in ``lrs``, in words: a negative or non-finite LR, no positive LR at all,
    or an LR of 0 between positive ones (a paused schedule). ``None`` when every LR is positive, or 0 only
    before the first positive one or after the last (a warm-up from 0, a decay to 0)."""
    a = np.asarray(lrs, dtype=np.float64)
    bad = ~np.isfinite(a) | (a < 0)
    if bad.any():
        k = int(np.argmax(bad))
        return (
            f"the LR of update {k + 1} is {a[k]:g}, and {int(bad.sum())} LR(s) in all are negative or not finite: "
            "the law needs positive LRs; they are read as 1e-12 of the peak, so do not trust the forecast"
        )
    if not (a > 0).any():
        return "every LR of the schedule is 0: the law needs a positive LR, so do not trust the forecast"
    inner = np.flatnonzero((a == 0) & ~edge_zeros(a))
    if inner.size:
        return (
            f"the LR is 0 at update {inner[0] + 1}, between positive LRs (a paused schedule?): "
            "it is read as 1e-12 of the peak"
        )
    return None


def unwrap_scheduler(scheduler: Any) -> tuple[Any, int]:
    """``(the torch scheduler, its steps per update)``. Accelerate's ``AcceleratedScheduler`` wraps the one it
    was given and, at each update that syncs the gradients, steps it once per process (its batches count as
    ``num_processes`` of the scheduler's), unless it splits batches or does not step with the optimizer; the
    look-ahead steps copies of the torch scheduler, at that pace. Any other scheduler: itself, once."""
    inner = getattr(scheduler, "scheduler", None)
    if inner is None or not hasattr(scheduler, "step_with_optimizer") or not hasattr(inner, "step"):
        return scheduler, 1
    if not scheduler.step_with_optimizer or getattr(scheduler, "split_batches", False):
        return inner, 1
    try:
        from accelerate.state import AcceleratorState

        return inner, max(int(AcceleratorState().num_processes), 1)
    except Exception:  # no Accelerate state: the world of torch.distributed, as Accelerate would count it
        import torch.distributed as dist

        ready = dist.is_available() and dist.is_initialized()
        return inner, dist.get_world_size() if ready else 1


@dataclass
class LRSource:
    """The run's optimizer, the LR scheduler(s) stepping it (every ``step_every`` updates, ``per_update``
    scheduler steps at a time) and which param group carries "the" LR. ``key`` changes when the schedulers
    are replaced."""

    optimizer: Any
    schedulers: Sequence[Any] = field(default_factory=list)
    group: int = 0
    step_every: int = 1
    epoch_pattern: tuple[bool, ...] | None = None  # see lookahead.scheduler_epochs
    per_update: int = 1

    @property
    def key(self) -> tuple[Any, ...]:
        return (tuple(id(s) for s in self.schedulers), self.step_every, self.epoch_pattern, self.per_update)

    def lookahead(self, total: int, steps_done: int) -> np.ndarray:
        """The LR of updates ``steps_done + 1 .. total`` (see :func:`lookahead.lookahead_lrs`)."""

        def at(optimizer: Any) -> np.ndarray:
            return lookahead_lrs(
                optimizer,
                list(self.schedulers),
                total,
                steps_done=steps_done,
                group=self.group,
                step_every=self.step_every,
                epoch_pattern=self.epoch_pattern,
                per_update=self.per_update,
            )

        try:
            return at(self.optimizer)
        except LookaheadError:
            # A wrapped optimizer (Accelerate, Lightning): the schedulers hold the one it wraps.
            inner = getattr(self.optimizer, "optimizer", None)
            if inner is None:
                raise
            return at(inner)

    def past(self, steps_done: int) -> np.ndarray | None:
        """The LRs of updates ``1 .. steps_done`` when a single ``LambdaLR`` makes them exact, else ``None``:
        update ``j`` ran at ``base_lr * lambda(k_j)``, ``k_j`` the scheduler's steps before it at this source's
        cadence (:func:`~scaleforecast.integrations.lookahead.scheduler_epochs`, counted from the run's start)."""
        if len(self.schedulers) != 1:
            return None
        sched = self.schedulers[0]
        lambdas = getattr(sched, "lr_lambdas", None)
        if lambdas is None or self.group >= len(lambdas) or getattr(sched, "_schedulers", None):
            return None
        base, fn = float(sched.base_lrs[self.group]), lambdas[self.group]
        counts = scheduler_epochs(0, steps_done, self.step_every, self.epoch_pattern, self.per_update)
        # a scheduler stepped every few updates repeats its count: the lambda runs once per distinct count
        distinct, where = np.unique(counts, return_inverse=True)
        return base * np.array([float(fn(int(k))) for k in distinct])[where]


def step_counts(schedulers: Sequence[Any]) -> tuple[int, ...]:
    """The steps each scheduler has taken (its ``last_epoch``; -1 when it keeps none)."""
    return tuple(int(getattr(s, "last_epoch", -1)) for s in schedulers)


class SchedulerPace:
    """How many updates one step of the LR scheduler(s) spans, as a loop shows it update by update: the updates
    at which the schedulers' step count moved, and whether the LR changed anywhere else.

    :meth:`see` returns the pace once two successive gaps between moves are equal (more than one update: a
    scheduler stepped once per epoch, whatever the order of ``scheduler.step()`` and the loop's call), with the
    LR changed only at the moves (or the update after one); ``None`` until then, and for good once the LR
    changed elsewhere (an LR set by hand, a scheduler that sets fractional epochs itself: :attr:`steady` turns
    False, and the watch can end). It holds three numbers whatever the run's length.
    """

    def __init__(self, start: int) -> None:
        self._moves = [int(start)]
        self._count: tuple[int, ...] | None = None
        self._lr = math.nan
        self.steady = True

    def see(self, update: int, count: tuple[int, ...], lr: float) -> int | None:
        """Take update ``update``: the schedulers' step counts after it (:func:`step_counts`) and the ``lr`` it
        used."""
        if self._count is not None and count != self._count:
            self._moves = [*self._moves[-2:], int(update)]
        self._count = count
        if math.isfinite(lr):
            if math.isfinite(self._lr) and lr != self._lr and update - self._moves[-1] > 1:
                self.steady = False
            self._lr = lr
        if not self.steady or len(self._moves) < 3:
            return None
        a, b = self._moves[1] - self._moves[0], self._moves[2] - self._moves[1]
        return a if a == b else None


class SchedulePlanner:
    """Build and revise the planned schedule under the rules of the module docstring.

    ``fixed``: a schedule the user gave (never re-planned); ``total_steps``: a length the user gave;
    ``say(message)`` reports a warning (the session prints it once, on rank 0). ``guessed_past``: the latest
    plan holds the current LR for the updates before a resume, having no record of theirs (said by the session
    at its next flush, so that a saved state restored in between, which re-plans, can answer it).
    """

    def __init__(self, fixed: np.ndarray | None, total_steps: int | None, say: Callable[[str], None]) -> None:
        self.total_steps = total_steps
        self.say = say
        self._told: set[str | None] = set()
        self.fixed = None if fixed is None else self._floored(fixed)
        self.key: tuple[Any, ...] | None = None
        self.guessed_past = False
        self._warned_length = False
        # (the plan they belong to, its largest LR, its idle tail): read once per plan, not per flush (O(length))
        self._read: tuple[np.ndarray, float, str | None] | None = None
        # (update, the schedulers' own counts) when the plan was read ahead, to tell schedulers nobody steps
        self._marks: tuple[int, tuple[int, ...]] | None = None
        self.stale: tuple[int, int] | None = None  # updates over which the schedulers were not stepped

    def length(self, run_length: int | None) -> int:
        """The planned length (see the module docstring); ``ValueError`` when nothing says it."""
        given = self.total_steps or (None if self.fixed is None else len(self.fixed))
        if given is not None and run_length is not None and given != run_length and not self._warned_length:
            self._warned_length = True
            self.say(
                f"the run is set to {run_length} steps but the schedule/total_steps given has {given}; "
                f"forecasting for {given} steps"
            )
        total = given or run_length
        if total is None:
            raise ValueError(
                "the run's length is unknown, so nothing is forecast: set the trainer's max_steps or pass total_steps="
            )
        return int(total)

    def plan(
        self,
        source: LRSource | None,
        run_length: int | None,
        steps_done: int,
        past: np.ndarray | None = None,
    ) -> np.ndarray:
        """The whole plan: ``past`` (the LRs of the first ``steps_done`` updates), then the look-ahead."""
        total = self.length(run_length)
        self.guessed_past = False
        if self.fixed is not None:
            return self.fixed
        if source is None:
            raise ValueError("no optimizer or LR scheduler to look ahead with: pass schedule=")
        self.key = (*source.key, total)
        self._marks = (steps_done, step_counts(source.schedulers))
        with warnings.catch_warnings(record=True) as said:
            # what the look-ahead says (a metric-driven scheduler held constant) is said once, as the plan's
            # other notes are, not again at every re-plan
            warnings.simplefilter("always")
            try:
                future = source.lookahead(total, min(steps_done, total))
                unread = None
            except LookaheadError as exc:
                # no look-ahead is no reason for no forecast: the current LR is held, as with no scheduler, and
                # the plan follows the LRs used as they change (said below, out of the recording of warnings)
                unread = exc
                future = LRSource(source.optimizer, group=source.group).lookahead(
                    total, min(steps_done, total)
                )
        if unread is not None:
            self.say(
                f"the LRs ahead cannot be read from the scheduler(s) given ({unread}): the current LR is held "
                "for the rest of the run, re-planned as the LRs used change; pass schedule= to forecast the "
                "decay still to come"
            )
        for note in said:
            self.say(str(note.message))
        if steps_done and (past is None or len(past) < steps_done):
            past = source.past(steps_done)
            if past is None:
                self.guessed_past = True
                past = np.full(steps_done, future[0] if future.size else np.nan)
        head = np.empty(0) if not steps_done or past is None else np.asarray(past, dtype=float)[:steps_done]
        return self._floored(np.concatenate([head, future])[:total])

    def _floored(self, lrs: np.ndarray) -> np.ndarray:
        """:func:`floor_lrs`, saying what it hides (:func:`lr_trouble`), once per kind of trouble: a plan that
        keeps failing (a scheduler read at the wrong pace) puts its zeros at another update at each re-plan."""
        self._tell(lr_trouble(lrs))
        return floor_lrs(lrs)

    def _tell(self, trouble: str | None) -> None:
        kind = None if trouble is None else re.sub(r"\d[\d.eE+-]*", "#", trouble)
        if trouble is not None and kind not in self._told:
            self._told.add(kind)
            self.say(trouble)

    def _reading(self, planned: np.ndarray) -> tuple[np.ndarray, float, str | None]:
        if self._read is None or self._read[0] is not planned:
            self._read = (planned, float(np.max(planned)), idle_tail(planned))
        return self._read

    def _tell_idle(self, planned: np.ndarray) -> None:
        """Say a tail of updates at LR 0 (:func:`scaleforecast.advice.idle_tail`) once the LRs used have held
        to the plan over a flush (or the user gave it): a scheduler read at the wrong pace, until its pace is
        known, plans zeros that the run will never use."""
        self._tell(self._reading(planned)[2])

    def _unstepped(self, source: LRSource | None, step_now: int) -> tuple[int, int] | None:
        """``(since, step_now)`` when the plan was read from schedulers whose own counts have not moved for two
        of their steps since it was made (``since``): nobody steps them any more (a new scheduler built
        mid-run); else ``None``."""
        if source is None or not source.schedulers or self._marks is None:
            return None
        since, counts = self._marks
        if step_now - since >= 2 * source.step_every and step_counts(source.schedulers) == counts:
            return since, step_now
        return None

    def revise(
        self,
        planned: np.ndarray | None,
        steps: np.ndarray,
        used: np.ndarray,
        source: LRSource | None,
        run_length: int | None,
        step_now: int,
    ) -> np.ndarray | None:
        """A new plan when the schedulers, the length or the LRs used left the plan; ``None`` when it holds."""
        if self.fixed is not None:
            self._tell_idle(self.fixed)
            return None
        if planned is None:
            return self.plan(source, run_length, step_now)
        idx = np.asarray(steps, dtype=np.int64) - 1
        used = np.asarray(used, dtype=float)
        # an LR of 0 used is one too (a pause set by hand): the plan holds the floor there, not its positive LR
        ok = (idx >= 0) & (idx < len(planned)) & np.isfinite(used) & (used >= 0)
        tol = DRIFT_RTOL * np.abs(planned[idx[ok]]) + DRIFT_ATOL * self._reading(planned)[1]
        drift = bool(np.any(np.abs(planned[idx[ok]] - used[ok]) > tol))
        key = None if source is None else (*source.key, self.length(run_length))
        if not drift and key == self.key:
            self._tell_idle(planned)
            return None
        if drift and key == self.key and self.stale is None:
            self.stale = self._unstepped(source, step_now)
        past = planned[:step_now].copy()
        inside = ok & (idx < step_now)
        past[idx[inside]] = used[inside]
        return self.plan(source, run_length, step_now, past)
