"""Plain PyTorch training loops (nanoGPT-style scripts, torchtitan, Fabric, Accelerate): the same forecast, stop
rule, agreement across ranks and TensorBoard output as the Lightning and HF callbacks, in three lines.

Usage::

    from scaleforecast.callbacks import LossForecastSession

    fc = LossForecastSession(optimizer, scheduler, total_steps=max_iters, target_loss=3.1, writer=writer)
    for it in range(max_iters):
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        fc.step(loss)               # no host sync: the loss stays on the device
        if fc.should_stop:          # the same answer on every rank, at the same step
            break
    fc.close()                      # every rank: the last flush, then TensorBoard is closed

or ``with LossForecastSession(...) as fc:`` around the loop, which closes it at the end and, when the loop raises
(on one rank, while the others wait in a collective), without the last flush's collective; ``close()`` in a
``finally`` block does the same.

Under ``torchrun`` with DDP or FSDP every rank calls :meth:`~LossForecastSession.step` and
:meth:`~LossForecastSession.close`; ``process_group`` selects the group (default: the world). The LR each
update used (and, with ``track_grad_norm=True``, its gradient norm) is read by a post-step hook on
``optimizer``, whatever the order of ``scheduler.step()`` and ``fc.step()``; a loop that clips its gradients
passes the norm before clipping, ``fc.step(loss, grad_norm=clip_grad_norm_(...))``. Resume with ``state_dict()`` /
``load_state_dict()`` saved beside the model's checkpoint: restore the optimizer and scheduler first, then
call ``load_state_dict`` before the first ``step`` after the restart. Construct it after
``init_process_group``. A scheduler built mid-run (a cooldown started early) is handed over with
:meth:`~LossForecastSession.set_scheduler`.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import torch
from scaleforecast.integrations.arguments import ForecastArgs, check_arguments, check_optimizer
from scaleforecast.integrations.distributed import TorchCollectives
from scaleforecast.integrations.planner import LRSource, SchedulerPace, step_counts, unwrap_scheduler
from scaleforecast.integrations.session import SessionFace, TrainingSession, UpdateCounter, raw_optimizer
from typing_extensions import Unpack

__all__ = ["LossForecastSession"]

_CHECK_CALLS = 64  # step() calls before the cadence check: past a gradient scaler's first skipped updates


def _given(scheduler: Any | Sequence[Any] | None) -> list[Any]:
    """The scheduler(s) passed, as a list (a string is one thing passed, not a sequence of them)."""
    if scheduler is None:
        return []
    return (
        list(scheduler) if isinstance(scheduler, Sequence) and not isinstance(scheduler, str) else [scheduler]
    )


def _unwrapped(given: list[Any]) -> tuple[list[Any], int]:
    """The torch schedulers and their steps per update (Accelerate's wrapper steps its own once per process)."""
    pairs = [unwrap_scheduler(s) for s in given]
    paces = {k for _, k in pairs}
    if len(paces) > 1:
        raise ValueError(f"scheduler: the schedulers step at different paces per update ({sorted(paces)})")
    return [s for s, _ in pairs], paces.pop() if paces else 1


def _optimizer_updates(optimizer: Any) -> int | None:
    """The updates ``optimizer`` has made as its own state counts them (the largest per-parameter ``step`` of
    Adam-type optimizers), ``None`` for one that keeps no count (SGD). Read once, on resume: a count kept on
    the device is a host sync."""
    counts = [state["step"] for state in raw_optimizer(optimizer).state.values() if "step" in state]
    return int(max(float(c) for c in counts)) if counts else None


def _replan_hint(every: int) -> str:
    """What the plan assumes of the scheduler's cadence, said when the plans keep failing."""
    cadence = ", stepped once per update" if every == 1 else f", stepped once every {every} updates"
    return cadence + " (a scheduler stepped once per epoch: scheduler_every=<updates per epoch>)"


_NEVER_CLOSED = (
    "was never closed (call close() after the loop, on every rank, or use `with`): the updates since its last "
    "flush are not forecast, and its TensorBoard run was closed without them"
)


def _check_every(every: object) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"scheduler_every: expected an integer >= 1, got {every!r}")


class LossForecastSession(SessionFace):
    """Forecast the final loss of a plain training loop; optionally stop it when a target is out of reach.

    >>> from scaleforecast.callbacks import LossForecastSession
    >>> fc = LossForecastSession(optimizer, scheduler, total_steps=max_iters, target_loss=3.1)  # doctest: +SKIP
    >>> for it in range(max_iters):  # doctest: +SKIP
    ...     loss = train_step()  # forward, backward, optimizer.step(), scheduler.step()
    ...     fc.step(loss)  # the loss stays on the device
    ...     if fc.should_stop:  # the same answer on every rank
    ...         break
    >>> fc.close()  # doctest: +SKIP

    ``optimizer``: the torch optimizer (a wrapper such as Accelerate's is fine); ``scheduler``: its LR
    scheduler(s), stepped once every ``scheduler_every`` updates (default 1; for a scheduler stepped once per
    epoch, the updates per epoch; ``None``: a constant LR, or pass ``schedule=``; one Accelerate prepared is
    read as Accelerate steps it, once per process at each update unless it splits batches);
    ``process_group``: the ``torch.distributed`` group the decision is agreed in. ``target_loss`` and the other
    keyword arguments are those of every adapter (:class:`~scaleforecast.integrations.arguments.ForecastArgs`);
    without a ``writer`` the TensorBoard files go under ``dirpath`` (default: a new ``runs/<time>_<host>``, where
    torch's ``SummaryWriter()`` writes).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | Any,
        scheduler: Any | Sequence[Any] | None = None,
        *,
        target_loss: float | None = None,
        process_group: Any = None,
        scheduler_every: int = 1,
        **kwargs: Unpack[ForecastArgs],
    ) -> None:
        check_arguments("LossForecastSession", kwargs)
        given = _given(scheduler)
        check_optimizer(optimizer, given, kwargs.get("param_group", 0))
        _check_every(scheduler_every)
        schedulers, per_update = _unwrapped(given)
        if kwargs.get("total_steps") is None and kwargs.get("schedule") is None:
            raise ValueError(
                "total_steps: a plain loop must say how many optimizer steps it runs (or pass schedule=)"
            )
        self.session = TrainingSession("LossForecastSession", target_loss, **kwargs)
        self._schedulers, self._per_update = schedulers, per_update
        # Start now, before the first optimizer.step(): the plan begins at the LR that update will use. A
        # scheduler restored from a checkpoint knows how many updates were done (a saved state says it too).
        self.session.replan_hint = _replan_hint(scheduler_every)
        self.session.replace_hint = "hand the new one over with set_scheduler(new_scheduler)"
        self._optimizer, self._scheduler_every = optimizer, scheduler_every
        done = self._updates_done() or 0
        self.session.start(TorchCollectives(process_group), step=done, run_length=None, source=self._source())
        # to tell a loop that calls step() per micro-batch: the optimizer's own count of its updates
        self._calls, self._updates, self._restored, self._closed = 0, UpdateCounter(), False, False
        self._first = (1, 0)  # (the step given and the optimizer's updates) at the first call
        self._pace = self._pace_watch(done)
        self.session.guard("step", self._updates.attach, optimizer)
        # a loop that never calls close(): said, and closed at exit (or when this object goes) without the
        # last flush's collective, so that TensorBoard keeps what was written
        self.session.unfinished_note = _NEVER_CLOSED
        weakref.finalize(self, self.session.end_unfinished)

    def set_scheduler(
        self, scheduler: Any | Sequence[Any] | None, *, scheduler_every: int | None = None
    ) -> None:
        """The LR scheduler(s) that step the optimizer from now on, on every rank: a scheduler built mid-run
        (a cooldown started early, a new schedule after a restart) replaces the one given at construction. The
        plan is read ahead from it at the next flush; the LRs used so far stay. ``scheduler_every`` as at
        construction (default: unchanged)."""
        every = self._scheduler_every if scheduler_every is None else scheduler_every
        _check_every(every)
        given = _given(scheduler)
        check_optimizer(self._optimizer, given, self.session.config.param_group)
        self._schedulers, self._per_update = _unwrapped(given)
        self._scheduler_every = every
        self.session.replan_hint = _replan_hint(every)
        self.session.set_source(self._source())
        self._pace = self._pace_watch(self.session.step)

    def _pace_watch(self, start: int) -> SchedulerPace | None:
        """A watch on the schedulers' pace, while they are read as stepped once per update."""
        return (
            SchedulerPace(start)
            if self._schedulers and self._scheduler_every == self._per_update == 1
            else None
        )

    def _check_pace(self, update: int) -> None:
        """A scheduler stepped once every few updates (once per epoch) with no ``scheduler_every``: the plan,
        read as one scheduler step per update, failed at every flush and the run had no forecast. Once the
        pace is plain, it is read at that pace from here on, and the loop is told."""
        assert self._pace is not None
        pace = self._pace.see(update, step_counts(self._schedulers), self.session.update_lr)
        if pace is not None or not self._pace.steady:
            self._pace = None  # known, or ruled out: watched no longer (it runs at every update till then)
        # step() called per micro-batch moves a scheduler stepped once per update every few "updates" too
        if pace is None or pace == 1 or self._check_cadence(update):
            return
        self.session.warn(
            f"the LR scheduler steps once every {pace} updates (once per epoch?), not once per update: the "
            f"plan reads it so from update {update}; pass scheduler_every={pace} to say so from the start"
        )
        self.set_scheduler(list(self._schedulers), scheduler_every=pace)

    def _source(self) -> LRSource:
        """The optimizer and the schedulers that step it, at their cadence, for the plan's look-ahead."""
        return LRSource(
            self._optimizer,
            self._schedulers,
            group=self.session.config.param_group,
            step_every=self._scheduler_every,
            per_update=self._per_update,
        )

    def _updates_done(self) -> int | None:
        """The updates done as the one LR scheduler counts them (``None``: no single scheduler to ask, or one
        stepped every few updates, whose count says the update only to within its cadence)."""
        if len(self._schedulers) != 1 or self._scheduler_every != 1:
            return None
        return max(int(getattr(self._schedulers[0], "last_epoch", 0)), 0) // self._per_update

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore on resume (after the optimizer and scheduler, or before them). A saved state that counts
        other updates than the restored scheduler comes from another checkpoint: the scheduler's count is the
        run's (it sets the LR), with a warning, and the history after it is dropped at the next flush. Without
        one scheduler to ask (an LR set by hand), an optimizer restored first that keeps a step count (Adam and
        its kin) is asked instead."""
        super().load_state_dict(state_dict)
        self._restored = True
        done, saved = self._updates_done(), self.session.step
        counter = "the LR scheduler"
        if done is None:
            done, counter = _optimizer_updates(self._optimizer), "the optimizer's state"
            # a gradient scaler's skipped updates are not in the optimizer's count (a dozen while its scale
            # settles, then one now and then): only a larger gap says another checkpoint
            if done is not None and abs(done - saved) <= max(64, saved // 50):
                done = None
        if done and done != saved:
            self.session.warn(
                f"the saved forecast state counts {saved} updates but {counter} {done}: they come from "
                f"different checkpoints; counting from update {done}"
            )
            self.session.recount(done)

    @property
    def should_stop(self) -> bool:
        """True on every rank once the ranks agreed to stop, and from then on: check it after each :meth:`step`,
        or now and then (at each evaluation); the run is recorded as stopped where the loop ends."""
        return self.session.should_stop

    @property
    def steps(self) -> int:
        """Optimizer updates counted so far (restored by :meth:`load_state_dict`)."""
        return self.session.step

    def step(
        self,
        loss: torch.Tensor | float | None,
        *,
        step: int | None = None,
        grad_norm: torch.Tensor | float | None = None,
    ) -> None:
        """Record one completed optimizer update and its loss (the mean over its micro-batches, as a tensor:
        it is never read back). ``step``: its number, when the loop counts updates itself (1-based).
        ``grad_norm`` (with ``track_grad_norm=True``): the update's gradient norm before clipping, the tensor
        ``torch.nn.utils.clip_grad_norm_`` returns; without it the norm is read after the optimizer step,
        where a clipped norm never exceeds the clip value. Raises ``ValueError`` for a ``step`` below 1."""
        n = self.session.step + 1 if step is None else int(step)
        if n < 1:
            # a counter from 0 (nanoGPT's iter_num) filled the flush buffer and switched the plugin off
            raise ValueError(
                f"step={step}: steps count the optimizer updates completed, from 1 (the update just made by "
                "the first optimizer.step() is step 1); pass a counter from 0 plus one, or no step at all"
            )
        if self._closed:
            self.session.warn("step() after close() is ignored: the run was closed", key="after close")
            return
        if self._calls == 0:
            self.session.guard("step", self._check_resume, n)
            self._first = (n, self._updates.count)
        self._calls += 1
        if self._pace is not None:
            self.session.guard("scheduler pace", self._check_pace, n)
        self.session.record(n, loss, grad_norm)
        self.session.tick(n)
        if self._calls == _CHECK_CALLS:
            self._check_cadence(n)

    def _check_resume(self, first: int) -> None:
        """At the first update after the start, when the restore is done whatever its order: a saved state with
        a scheduler that starts over (its state not restored), or a resumed run with no saved state to go on."""
        done = self._updates_done()
        if self._restored and done is not None and done <= 1 < first - 1:
            self.session.warn(
                f"the saved forecast state counts {first - 1} updates but the LR scheduler {done}: its state "
                "was not restored (scheduler.load_state_dict), so the LR starts its schedule over"
            )
        elif not self._restored and first > 1 and self._updates.count < first - 1:
            # (updates this process saw made before the first call: a loop that calls step() only every few
            # updates, step= counting them, trains from its start)
            self.session.warn(
                f"the run resumes at update {first} with no saved forecast state: the forecast starts from the "
                "losses after it; save state_dict() with each checkpoint and load_state_dict() it on resume to "
                "keep the history"
            )

    def _check_cadence(self, step: int) -> bool:
        """Early, and said once: step() called for micro-batches (gradient accumulation) counts k times too many
        updates, so the run reaches total_steps at 1/k of its length and the forecast stops there. A gradient
        scaler that skips a few updates keeps the ratio near one. Also asked when the scheduler's count seems to
        move every few updates (which a scheduler stepped once per update does under such a loop): whether it
        is this, not a scheduler stepped per epoch. ``step=`` values that run ahead of the optimizer's updates
        (micro-batches counted) are the same fault, said by their cause."""
        updates = self._updates.count
        if not (self._updates.attached and updates > 0):
            return False
        if updates <= self._calls // 2:
            self.session.warn(
                f"step() was called {self._calls} times for {updates} optimizer updates: call it once per "
                "update, after optimizer.step(), with the mean loss of the update's micro-batches (each call "
                "counts as an update, so the forecast now runs ahead of the training)",
                key="cadence",
            )
            return True
        # step= counting faster than the updates (micro-batches, or tokens): the same fault, told by its cause
        first, before = self._first
        counted, made = step - first + 1, updates - before
        if made > 0 and made <= counted // 2:
            self.session.warn(
                f"step= went from {first} to {step} over {made} optimizer updates: step= counts optimizer updates "
                "(from 1), and these run ahead of the training (micro-batches counted?), so the forecast does too",
                key="cadence",
            )
            return True
        return False

    def close(self) -> None:
        """The end of the loop, on every rank: the last flush and agreement, then TensorBoard is closed.

        Called while an exception propagates (``try: ... finally: fc.close()``, or in an ``except`` block) it
        closes without the last flush and its collective, as ``with fc:`` does: the other ranks may be in a
        collective of their own and never reach this one (the job hung until the process group's timeout)."""
        self._end(aborted=sys.exc_info()[1] is not None)

    def _end(self, aborted: bool) -> None:
        self._updates.detach()
        self._closed = True
        if aborted:
            self.session.abort()
        else:
            self.session.finish(self.session.step)

    def __enter__(self) -> LossForecastSession:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # on an exception the other ranks may never reach a collective: close without one
        self._end(aborted=exc is not None)
