"""The framework-neutral training session behind every adapter (Lightning, the HF Trainer, plain loops).

An adapter only translates its framework's hooks into four calls on a :class:`TrainingSession`:

- :meth:`~TrainingSession.start` (the collectives, the step reached, the run's length, the LR scheduler(s) and
  where TensorBoard output goes), at the start of training;
- :meth:`~TrainingSession.record` (one optimizer update completed: its loss, a device tensor that is never
  read back) and :meth:`~TrainingSession.tick` (on every rank at every update: flushes at the cadence), or
  :meth:`~TrainingSession.observe_window` for logged window means;
- :meth:`~TrainingSession.finish`, at the end;

and reads :attr:`~TrainingSession.should_stop`. The session owns everything else, once for all adapters: the
:class:`~scaleforecast.monitor.RunMonitor`, the device buffer and the flush cadence, the schedule planner
(:mod:`planner`), the LR and gradient norm of each update (read by a post-step hook on the optimizer, so they
are exactly those the update used), the agreement across ranks, the error guard, the saved state and
TensorBoard.

**Ranks.** Every ``flush_every`` updates each rank packs its buffer and the session all-gathers it (one
collective, the one host sync), reduces it over ranks, feeds the monitor the same values on every rank and
agrees on the stop with one reduce-boolean, so every rank stops at the same step. Collectives never run inside
a guarded part: a rank whose own part failed keeps joining every collective with a "no data" message, and the
ranks with data carry on; the failing rank reports its failure itself, with its rank number.

**State.** :meth:`~TrainingSession.state_dict` is one versioned, JSON-safe format (history, fit, plan, stop
record, and the steps not yet flushed). A state of an unknown version or a garbled one costs the history, with
one warning, never the run. A session whose training ran in child processes (Lightning's ``ddp_spawn``)
shows the result of rank 0 in the parent after training.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import logging
import math
import os
import socket
import sys
import tempfile
import uuid
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scaleforecast.integrations.arguments import SessionConfig, check_plugins
from scaleforecast.integrations.distributed import (
    GRAD,
    LOSS,
    SEEN,
    Collectives,
    DeviceBuffer,
    misaligned_ranks,
    nonfinite_ranks,
    reduce_ranks,
)
from scaleforecast.integrations.lookahead import metric_driven
from scaleforecast.integrations.planner import LRSource, SchedulePlanner

from scaleforecast.caller import warn_user
from scaleforecast.decision import DEFAULT_CONFIDENCE, StopDecision, too_early
from scaleforecast.detectors import HealthMonitor
from scaleforecast.events import Event, TrainingHealthError
from scaleforecast.family import NotAnnealed, record_reference, reference_of, with_family
from scaleforecast.fitting import FitConfig
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster, ScheduleLike
from scaleforecast.monitor import (
    Action,
    Advisor,
    Detector,
    FlushBatch,
    FlushResult,
    Guard,
    Listener,
    RunMonitor,
    StopConfig,
    checked,
)
from scaleforecast.registry import RunRegistry, SQLiteRegistry, default_registry_path
from scaleforecast.results import FitStatus, Forecast
from scaleforecast.schedules import as_lrs
from scaleforecast.tfevents import EVENT_FILE_PREFIX

__all__ = ["STATE_FORMAT", "SessionFace", "TrainingSession", "new_run_dir"]

# the trainers' own TensorBoard writers, each with the session that writes into it
_TRAINER_WRITERS: weakref.WeakKeyDictionary[Any, weakref.ref[TrainingSession]] = weakref.WeakKeyDictionary()
# the sessions of this process that have started, until they are collected
_STARTED: weakref.WeakSet[TrainingSession] = weakref.WeakSet()


@atexit.register
def _end_unfinished() -> None:
    """At the interpreter's exit, the runs whose training ended without the adapter's end: an exception or
    Ctrl-C out of HF's ``trainer.train()``, which has no exception event for its callbacks (the run stayed
    "running" in its sweep, a reference for a day). Their end is recorded where they got to, with no collective,
    and their TensorBoard runs are closed."""
    for session in list(_STARTED):
        session.end_unfinished()


_REASON_BYTES = 1024
"""The longest stop reason shared between ranks, in UTF-8 bytes."""

STATE_FORMAT = "scaleforecast.session"
STATE_VERSION = 2


def raw_optimizer(optimizer: Any) -> Any:
    """The torch optimizer under the wrappers (Accelerate, Lightning), where step hooks fire."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


# a logged window mean further than this from the mean of its steps' losses is another loss (HF rounds the
# logged loss to four decimals; a model's loss read per step averages to it exactly otherwise)
_LOGGED_RTOL, _LOGGED_ATOL = 5e-3, 1e-4
_RECENT_STEPS = 4096  # per-step losses kept to check the logged means against (a few logging windows)
_REPLANS_TOLD = 3  # re-plans before the user is told: one is a schedule changed on purpose, three a pattern


def _total_norm(optimizer: Any) -> torch.Tensor | None:
    """The total 2-norm of the gradients ``optimizer`` holds, on their device (no read-back)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def _print_line(line: str) -> None:
    """Print ``line`` above a progress bar the trainer draws (HF's and Lightning's are tqdm bars: a plain print
    lands in the middle of the bar's line)."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    if tqdm is not None and getattr(tqdm, "_instances", None):
        tqdm.write(line)
    else:
        print(line, flush=True)


def _clipped(norms: np.ndarray) -> bool:
    """Whether gradient norms read after the optimizer step sit at a ceiling: at least half of ten or more sit
    within 1e-4 of their largest (a clip value), where unclipped norms of real updates all differ."""
    g = norms[np.isfinite(norms)]
    return g.size >= 10 and float(np.mean(g >= np.max(g) * (1 - 1e-4))) >= 0.5


class UpdateCounter:
    """Counts the steps of one optimizer through a post-step hook that cannot fail, so that a count that sets
    the flush cadence stays the same on every rank."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: Any = None

    def attach(self, optimizer: Any, start: int = 0) -> None:
        self.detach()
        self.count = int(start)
        self._handle = raw_optimizer(optimizer).register_step_post_hook(self._tick)

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def _tick(self, *_: Any) -> None:
        self.count += 1

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def new_run_dir(root: str | os.PathLike[str]) -> Path:
    """A folder for a new TensorBoard run in ``root``, named as torch's ``SummaryWriter()`` and HF's Trainer name
    theirs, ``<Mon DD_HH-MM-SS>_<host>`` (``_1``, ``_2``, ... after it when a run began there in the same second):
    one per run, so that the runs of one process (a sweep loop) never mix their lines."""
    run = Path(root) / f"{datetime.now():%b%d_%H-%M-%S}_{socket.gethostname()}"
    fresh, k = run, 1
    while fresh.exists():
        fresh, k = run.with_name(f"{run.name}_{k}"), k + 1
    return fresh


class TrainingSession:
    """One run watched by one adapter: see the module docstring. ``name`` prefixes everything it prints.

    Construction validates every argument (:class:`~scaleforecast.integrations.arguments.ForecastArgs`) and
    raises ``ValueError`` naming the first bad one, so a mistake fails before training starts.
    """

    def __init__(
        self,
        name: str,
        target_loss: float | None = None,
        *,
        confidence: float = DEFAULT_CONFIDENCE,
        min_steps: int = 0,
        min_fraction: float = 0.0,
        action: Action = "stop",
        schedule: ScheduleLike | None = None,
        total_steps: int | None = None,
        param_group: int = 0,
        flush_every: int = 50,
        refit_every: int | None = None,
        level: float = 0.8,
        log_figures_every: int = 5,
        dirpath: str | os.PathLike[str] | None = None,
        writer: Any = None,
        track_grad_norm: bool = False,
        detectors: Sequence[Detector] | None = None,
        listeners: Sequence[Listener] = (),
        advisor: Advisor | None = None,
        on_event: Callable[[Event], None] | None = None,
        forecaster_config: ForecasterConfig | dict[str, Any] | None = None,
        law: str = "tissue",
        lam: float = 0.999,
        verbose: bool = True,
        family: str | None = None,
        family_store: Any = None,
    ) -> None:
        self.name = name
        if family is not None and (not isinstance(family, str) or not family.strip()):
            raise ValueError(f"family: expected a non-empty name, got {family!r}")
        self.family, self.family_store = family, family_store
        self.stop = checked(
            StopConfig,
            target_loss=target_loss,
            confidence=confidence,
            min_steps=min_steps,
            min_fraction=min_fraction,
            action=action,
        )
        self.config = checked(
            SessionConfig,
            total_steps=total_steps,
            param_group=param_group,
            flush_every=flush_every,
            refit_every=refit_every,
            level=level,
            log_figures_every=log_figures_every,
            track_grad_norm=track_grad_norm,
            law=law,
            lam=lam,
            verbose=verbose,
            dirpath=dirpath,
        )
        check_plugins(detectors or (), listeners, advisor, on_event, writer)
        try:
            self.schedule = None if schedule is None else as_lrs(schedule)
        except ValueError as err:
            raise ValueError(f"schedule: {err}") from None
        if self.schedule is not None and total_steps is not None and len(self.schedule) != total_steps:
            raise ValueError(f"schedule: has {len(self.schedule)} steps but total_steps is {total_steps}")
        given = {
            "law": law != "tissue",
            "lam": lam != 0.999,
            "level": level != 0.8,
            "refit_every": refit_every is not None,
        }
        overridden = [name for name, set_ in given.items() if set_]
        if forecaster_config is not None and overridden:
            # a ForecasterConfig holds all four: the ones given beside it were ignored with no word
            raise ValueError(
                f"forecaster_config: given with {', '.join(overridden)}, which it replaces: set them in the "
                "ForecasterConfig (fit=FitConfig(law=..., lam=...), level=..., refit_every=...)"
            )
        if isinstance(forecaster_config, dict):
            forecaster_config = checked(ForecasterConfig, **forecaster_config)
        elif forecaster_config is not None and not isinstance(forecaster_config, ForecasterConfig):
            raise ValueError(
                f"forecaster_config: expected a ForecasterConfig, got {type(forecaster_config).__name__}"
            )
        self.forecaster_config = forecaster_config or ForecasterConfig(
            fit=FitConfig(law=self.config.law, lam=self.config.lam),
            level=self.config.level,
            refit_every=self.config.refit_every,
        )
        if "background" not in self.forecaster_config.model_fields_set:
            # refits run off the training thread: each takes effect at the next flush, on every rank (that flush
            # waits only for a refit that outlasts a flush interval)
            self.forecaster_config = self.forecaster_config.model_copy(update={"background": True})
        # health checks are on unless switched off with detectors=[]: NaN/Inf, spikes and divergence are what a
        # user adding one callback expects caught, and replayed on healthy real runs they stop none
        self.detectors = [HealthMonitor()] if detectors is None else list(detectors)
        # what they hold before any run: a new run in this process (a sweep loop, HF's hyperparameter_search)
        # starts from it, not from the last run's loss level
        self._detectors_fresh = [
            d.state_dict() if hasattr(d, "state_dict") and hasattr(d, "load_state_dict") else None
            for d in self.detectors
        ]
        self.listeners = list(listeners)
        self.advisor, self.on_event, self.writer = advisor, on_event, writer
        self._steered = False  # a metric-driven scheduler sets the LR: no schedule advice (see _advise_on)
        self.guard = Guard(name)
        self.monitor = self._new_monitor(log_events=False)
        self.stopped_at: int | None = None
        self.stop_reason: str | None = None
        self.stop_lost = False  # the agreed stop is the health checks' (the run is lost)
        self.extra: dict[str, Any] = {}  # adapter-specific state that travels with the session's
        self.step = 0
        self.log_dir: str | None = None
        self.on_no_loss: Callable[[int], None] | None = None
        # (step, the per-step mean, the trainer's logged mean): the losses read are not the loss it logs
        self.on_loss_differs: Callable[[int, float, float], None] | None = None
        # what the adapter assumes of the scheduler's cadence, said when the plans keep failing, and how a
        # scheduler replaced mid-run is handed over
        self.replan_hint = ""
        self.replace_hint = "pass schedule= with the LRs the run will use"
        # how a trainer that clips before its optimizer step can hand over the norms before clipping
        self.clip_hint = "pass the norm clip_grad_norm_ returns instead: step(loss, grad_norm=norm)"
        self._saved: dict[str, Any] | None = None
        # what the adapter's user is told when the process exits with the run not ended (a loop with no close())
        self.unfinished_note: str | None = None
        self._owner = (os.getpid(), uuid.uuid4().hex)
        self._ran_here = False
        self._stopping = self._went_past = False
        self._reset_process_state()

    def _reset_process_state(self) -> None:
        """What belongs to one process's training, never pickled nor saved."""
        self.comm: Collectives | None = None
        self.is_zero = True
        self.buffer: DeviceBuffer | None = None
        self.source: LRSource | None = None
        self.run_length: int | None = None
        self.flushed_at = 0
        self._steps: list[int] = []
        self._lrs: list[float] = []
        self._lr = math.nan
        self._gnorm: torch.Tensor | float | None = None
        self._gnorm_given = False  # a norm read before clipping was handed in (else: read after the step)
        self._gnorm_off = False  # the norms read after the step were found clipped: not checked
        # False while the adapter reads window means instead of per-step losses: no gradient norm is recorded
        self.per_step = True
        self._hook: Any = None
        self._hook_failed = False
        self._tb_sink: Any = None  # the TensorBoardSink this session attached
        self._first_flush = True  # of this process: a resumed run restarts its TensorBoard lines there
        self._reused_dir: str | None = None  # a dirpath given that held a TensorBoard run before this one
        self._started_at = 0  # the step this process started watching at
        self.replans = 0
        self._warned: set[str] = set()
        self._told_borrowed = False
        self._world_checked = False
        # the trainer's logged window means waiting to be checked against the per-step losses flushed, and the
        # latest of those (reduced over ranks: what every rank holds alike)
        self._logged: list[tuple[int, int, float]] = []
        self._recent: dict[int, float] = {}
        self.planner = SchedulePlanner(self.schedule, self.config.total_steps, self.warn)

    def _new_monitor(self, log_events: bool) -> RunMonitor:
        # events go to the Python logger on rank 0 whatever ``verbose`` says: it is for what this session prints
        return RunMonitor(
            config=self.forecaster_config,
            stop=self.stop,
            detectors=self.detectors,
            listeners=self.listeners,
            advisor=None if self._steered else self.advisor,
            figure_every=self.config.log_figures_every,
            on_event=self.on_event,
            verbose=log_events,
            # the stop line this session prints holds the event's reason
            stop_log_level=logging.INFO if self.config.verbose else logging.WARNING,
            guard=self.guard,
        )

    # ------------------------------------------------------------------ reading
    @property
    def forecaster(self) -> OnlineForecaster:
        self._adopt()
        return self.monitor.forecaster

    @property
    def forecast(self) -> Forecast | None:
        """The latest forecast (``None`` before the first refit)."""
        return self.forecaster.latest

    @property
    def errors(self) -> dict[str, str]:
        """The parts switched off by a failure on this process (part -> message)."""
        return self.guard.disabled

    @property
    def should_stop(self) -> bool:
        """True on every rank from the step at which the ranks agreed to stop this training."""
        return self._stopping

    def say(self, message: str) -> None:
        """Print ``message`` on rank 0 when verbose (forecasts, re-plans, the stop)."""
        if self.is_zero and self.config.verbose:
            _print_line(f"{self.name}: {message}")

    @property
    def update_lr(self) -> float:
        """The LR the latest optimizer update used, until that update is recorded (NaN otherwise)."""
        return self._lr

    def warn(self, message: str, key: str | None = None) -> None:
        """A ``RuntimeWarning`` on rank 0, once per message (or per ``key``, for a message that names a step)."""
        if self.is_zero and (key or message) not in self._warned:
            self._warned.add(key or message)
            warn_user(f"{self.name}: {message}")

    # ---------------------------------------------------------------- lifecycle
    def start(
        self,
        comm: Collectives,
        *,
        step: int,
        run_length: int | None,
        source: LRSource | None,
        find_writer: Callable[[], Any] | None = None,
        default_logdir: str | os.PathLike[str] | None = None,
        tensorboard: bool = True,
        sinks: Sequence[Any] = (),
    ) -> None:
        """Begin watching at optimizer step ``step`` (> 0 on resume). ``find_writer()`` returns the trainer's
        own TensorBoard writer, if it has one; else the session writes under ``dirpath`` or
        ``default_logdir`` (default: a new run folder in ``runs``, :func:`new_run_dir`); ``tensorboard=False``: nothing is written for this run (a trainer's smoke test, which
        writes nothing of its own). ``sinks``: more sinks on rank 0 (the trainer's other metrics loggers), unless
        ``writer=False`` or ``tensorboard=False``. Never raises: a failing part is reported and switched off.

        Started again in the same process without a state to restore, it goes on from the history it holds
        when training goes on (``step > 0``: Lightning's ``fit()`` called again on the same trainer), and starts
        a new run from step 0 (HF's ``hyperparameter_search`` runs every trial with the same callbacks)."""
        # the last run never ended (an exception out of HF's train(), in a notebook that trains again): it ends
        # here, where it got to, as at the interpreter's exit
        self.end_unfinished()
        if self._ran_here and self._saved is None:
            if step > 0:
                self._saved = self.guard("checkpoint state", self.state_dict)
            else:  # another run: nothing of the last one (its stop, its id in a sweep or a family) carries over
                self.stopped_at = self.stop_reason = None
                self.extra = {}
                for detector, fresh in zip(self.detectors, self._detectors_fresh, strict=True):
                    if fresh is not None:
                        detector.load_state_dict(copy.deepcopy(fresh))  # type: ignore[attr-defined]
        if step == 0 and self._saved is None:
            # a run from its first step: a listener used by a run before (a sweep stopper reused by a sweep loop
            # or a hyperparameter search) starts another; before the family is read, which names the run by it
            self.monitor.start_run()
        self._reset_process_state()
        _STARTED.add(self)
        self.comm, self.is_zero = comm, comm.rank == 0
        ranked = f" (rank {comm.rank} of {comm.world_size})" if comm.world_size > 1 else ""
        self.guard.label = self.name + ranked
        self._ran_here, self._stopping, self._went_past, self.stop_lost = True, False, False, False
        # every rank reads the family's finished fits, so that every rank fits under the same prior
        self.guard("family store", self._borrow)
        self.monitor = self._new_monitor(log_events=self.is_zero)
        self.step = self.flushed_at = self._started_at = int(step)
        self.run_length, self.source = run_length, source
        self._advise_on(source)
        self.buffer = DeviceBuffer(self.config.flush_every, channels=3 if self.config.track_grad_norm else 2)
        self._resume()
        if self.is_zero and self.writer is not False and tensorboard:
            self.guard("TensorBoard", self._attach_tensorboard, find_writer, default_logdir)
            for sink in sinks:
                self.monitor.add_sink(sink)
        if source is not None:
            self.guard("LR capture", self._watch, source.optimizer)

    # ------------------------------------------------------------------- family
    def _family(self) -> tuple[str, RunRegistry, str] | None:
        """(family, store, this run's id): from ``family=``, else from a sweep listener's registry."""
        sweep = next(
            (x for x in self.listeners if isinstance(getattr(x, "registry", None), RunRegistry)), None
        )
        registry: RunRegistry | None = None if sweep is None else getattr(sweep, "registry", None)
        family = self.family or (None if registry is None else getattr(registry, "sweep", None))
        if not family:
            return None
        if self.family_store is None and isinstance(registry, SQLiteRegistry):
            # the sweep's database, with the family store's short waits: it is read at the start and written at
            # the end, on the training thread (the sweep's own waits, 30 s a try, stalled the end of a run for
            # as long as another process held the database)
            store: RunRegistry = SQLiteRegistry(family, registry.path, busy_timeout_s=2.0, retries=1)
        elif self.family_store is None and registry is not None:
            store = registry
        elif isinstance(self.family_store, RunRegistry):
            store = self.family_store
        else:
            # a read at start and a write at the end, off the per-step path; a locked store costs seconds, not
            # minutes, and then the run goes on cold
            path = self.family_store or default_registry_path(family)
            store = SQLiteRegistry(family, path, busy_timeout_s=2.0, retries=1)
        saved = (self._saved or {}).get("adapter") or {}
        run_id = self.extra.get("run_id") or saved.get("run_id") or getattr(sweep, "run_id", None)
        self.extra["run_id"] = run_id = run_id or f"{self.name}-{uuid.uuid4().hex[:12]}"
        return family, store, str(run_id)

    def _borrow(self) -> None:
        found = self._family()
        if found is None:
            return
        family, store, run_id = found
        self.forecaster_config, notes = with_family(self.forecaster_config, store, family, run_id)
        for note in notes:
            self.warn(note)
        names = [r.run_id for r in self.forecaster_config.references]
        if names:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            self.say(f"{len(names)} finished run(s) of family {family!r}: {shown}")

    def _say_borrowed(self) -> None:
        """Once the run's schedule (its peak LR) is known: which of its family's runs it borrows its prior from."""
        forecaster = self.monitor.forecaster
        if self._told_borrowed or not self.forecaster_config.references or forecaster.schedule is None:
            return
        self._told_borrowed = True
        names = forecaster.borrowed_from
        for note in forecaster.family_notes:
            self.say(note)
        if names:
            self.say(f"its prior is borrowed from {len(names)} run(s) at its peak LR: {', '.join(names)}")
        else:
            self.say("no run of its family peaked at its peak LR: no prior is borrowed (a cold start)")

    def _keep_reference(self, step: int) -> None:
        """At the end (update ``step``), on rank 0: this run's fit joins its family's store, if the run finished
        (one stopped early, by a sweep or its target, has not seen its cooldown's end: borrowed, its fit pulled
        a sibling's forecast 10 % low, outside its band) and it neither left the law nor never annealed."""
        found = self._family()
        forecaster = self.monitor.forecaster
        latest = forecaster.latest
        if found is None or latest is None:
            return
        family, store, run_id = found
        total = forecaster.total_steps
        if self.monitor.ended_early(step, self.stopped_at is not None):
            self.say(
                f"not kept as a reference of family {family!r}: it ended at step {step}, before its last step"
                + (f" {total}" if total is not None else "")
            )
            return
        if latest.status in (FitStatus.LAW_VIOLATED, FitStatus.STALE, FitStatus.FAILED):
            self.say(
                f"not kept as a reference of family {family!r}: its last forecast is {latest.status.value}"
            )
            return
        try:
            ref = reference_of(forecaster, run_id, family)
        except NotAnnealed as exc:
            self.say(f"not kept as a reference of family {family!r}: {exc}")
            return
        record_reference(store, ref)
        self.say(f"kept this run's fit ({run_id}) as a reference of family {family!r}")

    def _resume(self) -> None:
        """Restore the saved state (if any), plan the schedule, then feed the steps the checkpoint held."""
        saved, self._saved = self._saved, None
        pending = None if saved is None else self._restore(saved)
        self.guard("schedule look-ahead", self._plan)
        if pending:
            self.guard("resume", self._feed_pending, pending)

    @property
    def resumed_step(self) -> int | None:
        """The last step of the saved state about to be restored (``None`` without one): an adapter whose
        trainer counts steps otherwise resumes its own count from it."""
        return None if self._saved is None else self.step

    def set_run_length(self, run_length: int, step: int) -> None:
        """The run's length in updates turned out other than given at :meth:`start` (measured by the adapter
        once training runs, after update ``step``): re-plan the schedule to it."""
        if self.comm is not None and run_length != self.run_length:
            self.run_length = int(run_length)
            self.guard("schedule look-ahead", self._plan, step)

    def recount(self, step: int) -> None:
        """The run has done ``step`` updates after all (its LR scheduler, restored from another checkpoint than
        the saved state, says so): count from there and plan the schedule from there; the history after it is
        dropped at the next flush."""
        self.step = self.flushed_at = int(step)
        if self.comm is not None:
            self.guard("schedule look-ahead", self._plan)

    def set_source(self, source: LRSource) -> None:
        """The optimizer and LR scheduler(s) to read the plan ahead from from now on (a scheduler replaced
        mid-run): the plan is read ahead from them at the next flush, keeping the LRs used so far."""
        self.source = source
        self.planner.stale = None
        self._advise_on(source)

    def _advise_on(self, source: LRSource | None) -> None:
        """Schedule advice judges the rest of a planned schedule: none while a metric-driven scheduler
        (ReduceLROnPlateau) sets the LR, whose future the plan can only guess (it holds the LR constant, which
        the advice would call a schedule that ends at a high LR)."""
        self._steered = source is not None and any(metric_driven(s) for s in source.schedulers)
        self.monitor.advisor = None if self._steered else self.advisor
        if self._steered and self.advisor is not None:
            self.warn(
                "no schedule advice: a metric-driven LR scheduler sets the rest of the schedule, which the plan "
                "can only guess",
                key="advice off",
            )

    def _plan(self, step: int | None = None) -> None:
        known = self.monitor.forecaster.schedule
        done = self.step if step is None else step
        self.monitor.set_schedule(self.planner.plan(self.source, self.run_length, done, known))

    def _restore(self, saved: dict[str, Any]) -> dict[str, Any] | None:
        """Load a saved state; a garbled or foreign one costs the history, with one warning."""
        try:
            self.monitor.load_state_dict(saved["monitor"])
            self.stopped_at, self.stop_reason = saved.get("stopped_at"), saved.get("stop_reason")
            self.extra = dict(saved.get("adapter") or {})
            if self.extra.get("run_id"):
                # the run goes on under the id it had before the restart: a sweep holds one record of it
                self.monitor.resume_run(str(self.extra["run_id"]))
            fc = self.monitor.forecaster
            # with the steps the checkpoint held unflushed, fed right after this
            held = [int(s) for s in (saved.get("pending") or {}).get("steps") or [] if int(s) <= self.step]
            self.say(
                f"resumed after update {self.step}: the forecast goes on from the {fc.n_observations + len(held)} "
                f"losses it held, up to step {max([fc.last_step, *held])}"
            )
            if self.stopped_at is not None:
                # a stopped run resumed (on purpose or from its last checkpoint by accident): it trains on, and
                # the rule decides again, rather than training to the end silently and reporting the old stop
                judged = self.stop.target_loss is not None or bool(self.listeners)
                self.warn(
                    f"this run was stopped at step {self.stopped_at} ({self.stop_reason}); it is resumed, so the "
                    + (
                        "stop rule decides again from its next forecast"
                        if judged
                        else "run trains on (no target loss now: only the health checks can stop it)"
                    )
                )
                self.stopped_at = self.stop_reason = None
                self.monitor.clear_stop()
            return saved.get("pending")
        except Exception as exc:
            self.warn(
                f"the saved forecast state could not be used ({type(exc).__name__}: {exc}); starting a fresh history"
            )
            fresh = self._new_monitor(log_events=self.is_zero)
            for sink in self.monitor.sinks.active:  # a plain loop restores after its TensorBoard run exists
                fresh.add_sink(sink)
            self.monitor = fresh
            return None

    def _feed_pending(self, pending: dict[str, Any]) -> None:
        # Steps buffered but not yet flushed when the checkpoint was taken (rank 0's own values).
        steps = np.asarray(pending["steps"], dtype=np.int64)
        keep = steps <= self.step
        if keep.any():
            loss = np.asarray(pending["loss"], dtype=float)[keep]
            # as a first flush: what an earlier process wrote from here on is hidden in TensorBoard (a process
            # that closed after saving flushed these steps itself, and they were drawn twice)
            self._monitor_flush(FlushBatch(steps=steps[keep], loss=loss), int(steps[keep][-1]))

    def _attach_tensorboard(self, find_writer: Callable[[], Any] | None, default_logdir: Any) -> None:
        from scaleforecast.integrations.tensorboard import ADVICE_CHARTS, TensorBoardSink

        extra = ADVICE_CHARTS if self.monitor.advisor is not None else None
        writer, own = self.writer, False
        logdir = Path(self.config.dirpath or default_logdir or new_run_dir("runs"))
        if writer is None and find_writer is not None:
            writer = find_writer()
            other = _TRAINER_WRITERS.get(writer) if writer is not None else None
            if other is not None and other() not in (None, self):
                # two sessions in one trainer (two callbacks): one run directory each, or their lines mix
                writer, logdir = None, logdir / self.name
            elif writer is not None:
                _TRAINER_WRITERS[writer] = weakref.ref(self)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            if self.config.dirpath and logdir.is_dir() and any(logdir.glob(f"{EVENT_FILE_PREFIX}*")):
                self._reused_dir = str(logdir)
            writer, own = SummaryWriter(str(logdir)), True
        self._tb_sink = TensorBoardSink(writer, layout_extra=extra, close_writer=own)
        self.monitor.add_sink(self._tb_sink)
        self.log_dir = str(getattr(writer, "log_dir", None) or getattr(writer, "logdir", ""))
        if own:
            self.say(f"TensorBoard logs in {self.log_dir}  (tensorboard --logdir {self.log_dir})")

    def _watch(self, optimizer: Any) -> None:
        self._hook = raw_optimizer(optimizer).register_step_post_hook(self._after_optimizer_step)

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # Runs inside the user's optimizer.step(): it must never raise, nor read a device value back.
        if self._hook_failed:
            return
        try:
            group = optimizer.param_groups[self.config.param_group]
            lr = group["lr"]
            self._lr = float(lr) if not isinstance(lr, torch.Tensor) or lr.device.type == "cpu" else math.nan
            if self.config.track_grad_norm and self.per_step and self._gnorm is None and not self._gnorm_off:
                self._gnorm = _total_norm(optimizer)
        except Exception as exc:
            self.guard.report("LR capture", f"{type(exc).__name__}: {exc}")
            # not removed here: torch is going through its hooks, and removing one from inside it raised
            # "OrderedDict mutated during iteration" out of the user's optimizer.step(); it goes at the run's end
            self._hook_failed = True

    def _hook_off(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._hook_failed = False

    # ----------------------------------------------------------------- per step
    def grad_norm_before_step(self, optimizer: Any) -> None:
        """Read the gradient norm of the coming update now, before the trainer clips it (``track_grad_norm``):
        read after the optimizer step, a clipped norm never exceeds the clip value. On the device, no sync."""
        if self.config.track_grad_norm and self.per_step:
            self._gnorm, self._gnorm_given = _total_norm(raw_optimizer(optimizer)), True

    def record(
        self, step: int, loss: torch.Tensor | float | None, grad_norm: torch.Tensor | float | None = None
    ) -> None:
        """Optimizer update ``step`` completed on this rank, with its loss (``None``: not observed). Local:
        no collective, no host sync. A failure switches this rank's recording off (it then sends "no data").
        ``grad_norm``: the update's gradient norm before clipping (what ``clip_grad_norm_`` returns), in place
        of the one read after the optimizer step (``track_grad_norm``).

        A step at or before the last one (a loop resumed from an older checkpoint, a counter that restarts)
        first flushes what came before, on every rank (the numbering is the same on every rank): the forecaster
        then sees the count go back between two flushes, drops the history after it and says so, and the
        flush cadence starts again from there."""
        if step <= self.step and self.comm is not None:
            if self.step > self.flushed_at:
                self.flush(self.step)
            self.step = self.flushed_at = max(int(step) - 1, 0)
        if self._stopping and self.stopped_at is not None and step > self.stopped_at and not self._went_past:
            self._went_on(step)
        if grad_norm is not None and self.config.track_grad_norm:
            self._gnorm, self._gnorm_given = grad_norm, True
        self.guard("step", self._record, step, loss)

    def _went_on(self, step: int) -> None:
        """Training went on after the agreed stop (the same on every rank: the step numbering is): a loop that
        checks ``should_stop`` only now and then (at each evaluation), or the trainer's ``min_steps``. The stop
        stands: ``should_stop`` stays set until the loop ends, and the run is recorded as stopped where it ends,
        unless it reaches its last step (see :meth:`finish`)."""
        self._went_past = True
        note = (
            f"training went on past the stop at step {self.stopped_at} (a loop that checks should_stop only now "
            "and then, or the trainer's min_steps): should_stop stays set; the run is recorded as stopped where it "
            "ends, unless it trains to its last step"
        )
        self.warn(note)
        if self._tb_sink is not None:
            self.guard("TensorBoard", self._tb_sink.note, step, f"step {step}: {note}")

    def _record(self, step: int, loss: torch.Tensor | float | None) -> None:
        assert self.buffer is not None
        if isinstance(loss, torch.Tensor) and loss.numel() != 1:
            # a per-sample or per-token loss: one bad value switched the recording off for the rest of the run,
            # health checks included; its mean is what the update trained on
            self.warn(
                f"the loss given at step {step} has shape {tuple(loss.shape)}: its mean is taken (pass the "
                "update's mean loss, one number, e.g. loss.mean())",
                key="loss shape",
            )
            loss = loss.detach().float().mean() if loss.numel() else None
        seen = None if loss is None else 1.0
        values = (loss, seen, self._gnorm) if self.config.track_grad_norm else (loss, seen)
        self.buffer.push(*values)
        self._steps.append(int(step))
        self._lrs.append(self._lr)
        self._lr, self._gnorm = math.nan, None

    def tick(self, step: int) -> None:
        """Call on every rank after every update (``step``: the same on every rank): flushes at the cadence."""
        self.step = int(step)
        if self.comm is not None and step - self.flushed_at >= self.config.flush_every:
            self.flush(step)

    def flush(self, step: int, final: bool = False) -> None:
        """One collective for the buffered steps, the monitor on the reduced values, then the agreement.

        Every rank calls this at the same step; whatever failed before, each takes part in both collectives.
        ``final``: training has ended, there is nothing left to stop (:meth:`RunMonitor.flush`).
        """
        assert self.comm is not None and self.buffer is not None
        self.flushed_at = int(step)
        if not self._world_checked:
            self._world_checked = True
            late = getattr(self.comm, "late_world", lambda: None)()
            if late:
                # every process believes it is rank 0 of 1: each prints, writes TensorBoard and decides alone
                warn_user(
                    f"{self.name}: torch.distributed was initialised ({late} processes) after it was built: "
                    "each process prints, writes TensorBoard and decides to stop on its own losses, and a "
                    "process that stops alone leaves the others waiting; build it after init_process_group"
                )
        msg = None if "step" in self.guard.disabled else self.guard("step", self._pack)
        if msg is None:
            msg = self.buffer.no_data(self.comm.device)
            self.buffer.clear()
            self._steps, self._lrs = [], []
        gathered = self.comm.all_gather(msg)
        result = self.guard("flush", self._digest, gathered, int(step), final)
        self._agree(result, int(step))

    def _pack(self) -> torch.Tensor:
        assert self.comm is not None and self.buffer is not None
        steps, lrs = self._steps, self._lrs
        self._steps, self._lrs = [], []
        return self.buffer.pack(steps, lrs, self.comm.device)

    def _digest(self, gathered: torch.Tensor, step: int, final: bool) -> FlushResult | None:
        assert self.comm is not None
        assert self.buffer is not None
        channels = self.buffer.channels
        arr = gathered.cpu().numpy()
        if self.comm.world_size > 1 and self.is_zero and "misaligned ranks" not in self._warned:
            apart = misaligned_ranks(arr, channels)
            if apart is not None:
                self.warn(
                    f"the ranks flushed other updates ({apart}): every rank must call step() once per optimizer "
                    "update, the same number of times; their losses are averaged as if they were the same updates, "
                    "and a rank that flushes alone waits for the others",
                    key="misaligned ranks",
                )
        red = reduce_ranks(arr, channels)
        if red.count == 0:
            return None
        if self.comm.world_size > 1 and self.is_zero and "nonfinite ranks" not in self._warned:
            found = nonfinite_ranks(arr, channels)
            if found is not None:
                first_ranks, first, ranks = found
                later = [r for r in ranks if r not in first_ranks]
                note = (
                    f"non-finite losses come from rank(s) {', '.join(map(str, first_ranks))} of "
                    f"{self.comm.world_size} (first at update {first})"
                    + (f"; later from rank(s) {', '.join(map(str, later))} too" if later else "")
                )
                self.warn(note, key="nonfinite ranks")
                if self._tb_sink is not None:
                    self.guard("TensorBoard", self._tb_sink.note, step, f"step {step}: {note}")
        if self.on_loss_differs is not None and self.per_step and red.ranks == self.comm.world_size:
            # (the logged means are over every rank: a rank whose losses are missing makes another mean)
            self._compare_logged(red.steps[red.seen], red.loss[red.seen])
            if not self.per_step:
                return None  # these per-step losses are of the other loss: the logged means take over
        self.guard("schedule look-ahead", self._revise, red.steps, red.lrs, step)
        if self.planner.guessed_past:
            self.warn("no record of the LRs before this resume; assuming the current LR for them")
        if not red.seen.any():
            if self.on_no_loss is not None:
                self.on_no_loss(step)
            return None
        total = self.monitor.forecaster.total_steps or step
        keep = red.seen & (red.steps <= total)  # steps past the planned end are not observed
        if not keep[red.seen].all():
            self.warn(
                f"the run went on past its planned length of {total} updates; the updates after it are not "
                "forecast: pass the real total_steps (or schedule=), counted in optimizer updates"
            )
        grad_norm = red.grad_norm[keep] if channels > GRAD else None
        if grad_norm is not None and not (self._gnorm_given or self._gnorm_off) and _clipped(grad_norm):
            self.warn(
                f"the gradient norms read after optimizer.step() sit at {np.nanmax(grad_norm):.4g} in most "
                "updates: they were clipped before the optimizer saw them, so a spike above the clip cannot be "
                f"seen, and the gradient-norm checks are off; {self.clip_hint}"
            )
            self._gnorm_off = True
        if self._gnorm_off:
            grad_norm = None
        batch = FlushBatch(
            steps=red.steps[keep],
            loss=red.loss[keep],
            loss_max=red.loss_max[keep] if self.comm.world_size > 1 else None,
            grad_norm=grad_norm,
            lrs=red.lrs[keep],
        )
        return self._monitor_flush(batch, step, final)

    def _revise(self, steps: np.ndarray, used: np.ndarray, step: int) -> None:
        plan = self.planner.revise(
            self.monitor.forecaster.schedule, steps, used, self.source, self.run_length, step
        )
        if plan is not None:
            if self.monitor.forecaster.schedule is not None:
                self.replans += 1
                # a metric-driven scheduler (ReduceLROnPlateau) re-plans at each of its cuts, as it should
                if self.replans <= _REPLANS_TOLD or self._steered:
                    self.say(f"the LR schedule changed at step {step}; re-planning")
                    changed = Event(
                        kind="schedule",
                        step=step,
                        severity="info",
                        message=f"the LRs used left the planned schedule by step {step}: re-planned from there",
                        data={"replans": self.replans},
                    )
                    self.monitor.note(changed)
                if self.planner.stale is not None:
                    self.warn(
                        "the LRs used left the plan read from the LR scheduler(s){}, which were not stepped over "
                        "updates {}..{}: if the scheduler was replaced, {}; until then the plan is read from the "
                        "old one".format(self.replan_hint, *self.planner.stale, self.replace_hint)
                    )
                elif self.replans == _REPLANS_TOLD and not self._steered:
                    read = (
                        f"read ahead from the LR scheduler(s){self.replan_hint}"
                        if self.source is not None and self.source.schedulers
                        else "the latest LR held to the end (no LR scheduler was given)"
                    )
                    self.warn(
                        f"the LRs used have left the planned schedule {self.replans} times: the plan is {read}; "
                        "pass schedule= to give it (later re-plans are not said)"
                    )
            self.monitor.set_schedule(plan)

    def _monitor_flush(self, batch: FlushBatch, step: int, final: bool = False) -> FlushResult | None:
        if batch.steps.size == 0:
            return None
        forecaster = self.monitor.forecaster
        start = int(batch.steps[0]) - batch.window + 1  # the first update this batch covers
        went_back = int(batch.steps[0]) <= forecaster.last_step
        if went_back:
            # a resume from an older checkpoint: said once, on rank 0 (the forecaster would warn on every rank)
            last = forecaster.last_step
            dropped = forecaster.rewind(start - 1)
            if int(batch.steps[0]) == last:
                # the same step again, at every micro-batch of a loop that steps per micro-batch: said once
                self.warn(
                    f"step {last} was given again (step() called more than once per optimizer update, e.g. per "
                    "micro-batch?): the later value replaces the earlier; call step() once per update, with the "
                    "mean loss of its micro-batches (repeats are not said again)",
                    key="step given again",
                )
            else:
                self.warn(forecaster.rewind_note(start - 1, last, dropped))
        if self._tb_sink is not None and (went_back or (self._first_flush and start > 1)):
            # what an earlier process (or this one, before the rewind) wrote from here on is hidden
            self.guard("TensorBoard", self._tb_sink.restart, start)
        elif self._tb_sink is not None and self._first_flush and self._reused_dir is not None:
            # a new run from update 1 in a folder that holds one: their lines drew one zigzag in every card
            self.warn(
                f"{self._reused_dir} already holds a TensorBoard run: this run's lines replace its lines there (the "
                "old event files stay on disk); pass another dirpath to keep both"
            )
            self.guard("TensorBoard", self._tb_sink.restart, start, "a new run in this folder")
        # the first flush that TensorBoard hears (a resumed run's steps fed before its writer exists are not)
        self._first_flush = self._first_flush and self._tb_sink is None
        self.guard("family store", self._say_borrowed)
        try:
            result = self.monitor.flush(batch, raise_now=False, final=final)
        except BaseException:
            # the run ends from inside the flush (a listener: Ray Tune ends a trial by raising SystemExit out of
            # tune.report; an interrupt): its end is recorded and the sinks closed before the exit goes on
            self.abort()
            raise
        self._say_forecast(step, result.forecast, result.decision)
        return result

    def _settle(self, step: int) -> None:
        self._say_forecast(step, self.monitor.settle(step))

    def _say_forecast(
        self, step: int, forecast: Forecast | None, decision: StopDecision | None = None
    ) -> None:
        final = None if forecast is None else forecast.final
        if forecast is not None and final is not None:
            # a refit runs off the training thread and takes effect at the next flush: say what it saw
            seen = f"fitted to step {forecast.fitted_at_step}, " if forecast.fitted_at_step < step else ""
            early = too_early(forecast, float(self.stop.confidence))
            if early is not None:
                # a first fit on a handful of losses (1.09 [0.00, 2.51] for a run ending at 2.4) read as a forecast;
                # the stop rule and the sweeps ignore it, and so should the eye
                self.say(f"step {step}: {early} ({seen}{forecast.status.value})")
            else:
                # the stop rule reads the error measured at this point of real runs, not this band: a band that
                # leaves the target out does not stop the run by itself, and the line says how far the rule is
                rule = ""
                if decision is not None and decision.probability is not None and not decision.stop:
                    rule = (
                        f"; target {decision.reference:g} out of reach with confidence {decision.probability:.2f}, "
                        f"stops at {float(self.stop.confidence):g}"
                    )
                # a metric-driven scheduler's cuts are not in the plan: the forecast is of the LR held from here
                held = ", the LR held as it is" if self._steered else ""
                self.say(
                    f"step {step}: forecast final loss {final.loss:.4f} [{final.lower:.4f}, {final.upper:.4f}] "
                    f"at step {forecast.final_step} ({seen}{forecast.status.value}{held}){rule}"
                )
            shape = next((w for w in forecast.warnings if w.startswith("[out_of_shape]")), None)
            if shape is not None and "out of shape" not in self._warned:
                # its status stays usable, and the fit says why it is less sure: once, not at every refit
                self._warned.add("out of shape")
                self.say(f"  {shape}")
            elif shape is None and "out of shape" in self._warned:
                self._warned.discard("out of shape")
                self.say(
                    "  the fit is back in the law's shape: the [out_of_shape] note above no longer holds"
                )

    def observe_window(self, step: int, window: int, loss: float) -> None:
        """A logged mean loss over updates ``step - window + 1 .. step``, the same on every rank (e.g. HF's
        ``logs["loss"]``, already gathered over ranks); then the agreement, as after a flush."""
        self.step = int(step)
        result = self.guard("window", self._window, int(step), int(window), float(loss))
        self._agree(result, int(step))

    def _window(self, step: int, window: int, loss: float) -> FlushResult | None:
        lr, self._lr = self._lr, math.nan
        self.guard("schedule look-ahead", self._revise, np.array([step]), np.array([lr]), step)
        total = self.monitor.forecaster.total_steps or step
        if step > total:
            return None
        batch = FlushBatch(steps=np.array([step]), loss=np.array([loss]), lrs=np.array([lr]), window=window)
        return self._monitor_flush(batch, step)

    def check_logged(self, step: int, window: int, loss: float) -> None:
        """The trainer logged ``loss``, the mean loss of updates ``step - window + 1 .. step`` (the same on every
        rank): once those updates are flushed, their per-step losses must average to it. When they do not (a
        ``compute_loss`` that adds a term to the model's own loss: the model's loss is not the one trained and
        logged), ``on_loss_differs`` is told, on every rank alike."""
        if self.per_step and window >= 1 and math.isfinite(loss):
            self._logged.append((int(step), int(window), float(loss)))

    def _compare_logged(self, steps: np.ndarray, losses: np.ndarray) -> None:
        self._recent.update(zip(steps.tolist(), losses.tolist(), strict=True))
        while len(self._recent) > _RECENT_STEPS:  # steps come in order: the oldest is the first inserted
            del self._recent[next(iter(self._recent))]
        waiting = []
        for step, window, logged in self._logged:
            if step > self.flushed_at:
                waiting.append((step, window, logged))
                continue
            span = range(step - window + 1, step + 1)
            if not all(s in self._recent for s in span):
                continue  # steps of the window not seen here (before a resume): nothing to compare
            mean = float(np.mean([self._recent[s] for s in span]))
            if math.isfinite(mean) and abs(mean - logged) > _LOGGED_RTOL * abs(logged) + _LOGGED_ATOL:
                self._logged = []
                assert self.on_loss_differs is not None
                self.on_loss_differs(step, mean, logged)
                return
        self._logged = waiting

    def forget_history(self, step: int) -> None:
        """Start the forecast's history again after update ``step`` (what came before was another loss than the
        one the run is judged on); TensorBoard hides the lines drawn so far."""
        self.monitor.forecaster.rewind(0)
        if self._tb_sink is not None:
            self.guard("TensorBoard", self._tb_sink.restart, 1)

    def _agree(self, result: FlushResult | None, step: int) -> None:
        """Every rank takes part, whatever happened before, so that nobody waits in a collective alone."""
        assert self.comm is not None
        wants = result is not None and (result.stop or result.error is not None)
        if not self.comm.any(wants):
            return
        raising = self.comm.any(result is not None and result.error is not None)
        own = (
            None if result is None else result.reason or (None if result.error is None else str(result.error))
        )
        shared = self._agreed_reason(own if wants else None)
        # whether the health checks stopped it (on any rank), the same answer on every rank: an adapter saves
        # no checkpoint of a lost run's weights (one more would rotate the last good one out)
        self.stop_lost = self.comm.any(result is not None and result.lost)
        self._stopping = True
        if self.stopped_at is None:
            self.stopped_at = step
            self.stop_reason = self.monitor.stop_reason or shared or "another rank decided to stop"
            # this rank's monitor has logged the event that stopped the run, reason and all, just before
            # the reason in the same stream (the logger's event may go to another file, or come after it);
            # a reason that is that event's line is said by its message (this line says the step already)
            event = next((e for e in (result.events if result is not None else []) if e.is_critical), None)
            said = (
                event.message if event is not None and self.stop_reason == event.text() else self.stop_reason
            )
            self.say(f"stopping at step {step}: {said}")
        if raising:
            if result is not None and result.error is not None:
                raise result.error
            raise TrainingHealthError(
                Event(kind="early_stop", step=step, severity="critical", message="another rank raised")
            )

    def _agreed_reason(self, mine: str | None) -> str | None:
        """The reason of the lowest rank that decided to stop, on every rank: one all-gather of fixed-size text,
        made only once the ranks agreed to stop (rank 0, which prints and writes TensorBoard, may not be the one
        that decided: a listener of one rank, or a part of the plugin failed on rank 0)."""
        assert self.comm is not None
        text = torch.zeros(_REASON_BYTES, dtype=torch.uint8)
        raw = (mine or "").encode("utf-8", "replace")[:_REASON_BYTES]
        if raw:
            text[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        rows = self.comm.all_gather(text.to(self.comm.device)).cpu().numpy()
        said = (bytes(row).rstrip(b"\0").decode("utf-8", "replace") for row in rows)
        return next((t for t in said if t), None)

    def finish(self, step: int, close_writer: bool = False) -> None:
        """The end of training: the last flush (every rank), then the sinks are closed. ``close_writer``: close
        the TensorBoard writer even when the framework owns it (one it closed already, that writing reopened)."""
        if self.comm is None:
            return
        if getattr(self.comm, "group_gone", lambda: False)():
            # the loop destroyed the process group first: the last flush's collective would raise out of the
            # end of a run that trained well
            self.warn(
                "the end came after torch.distributed.destroy_process_group(): the updates since the last flush "
                "are not forecast (end it before destroying the process group: close() first)"
            )
            self.abort()
            return
        if self.buffer is not None and (step > self.flushed_at or self.comm.world_size > 1):
            # training has ended: there is nothing left to stop; every rank of a job joins it, whatever it
            # buffered (a rank that counted one more update than the others went into it alone and hung)
            self.flush(step, final=True)
        total = self.monitor.forecaster.total_steps
        if self.stopped_at is not None and total is not None and step >= total:
            # it trained past its stop to its last step: a finished run, not a stopped one
            if self._tb_sink is not None:
                note = f"step {step}: the run trained past its stop to its last step: recorded as finished"
                self.guard("TensorBoard", self._tb_sink.note, step, note)
            self.stopped_at = self.stop_reason = None
            self.monitor.clear_stop(judge_again=False)
        # the refit the last flush started takes effect now, where every rank ends; a stopped run keeps the
        # forecast it stopped on, on every rank (the agreed stop, not each rank's monitor, decides: a listener
        # that only rank 0 holds stops rank 0's monitor alone)
        if self.stopped_at is None:
            self.guard("forecaster", self._settle, step)
            if self.monitor.ended_early(step, stopped=False):
                # ended by something else (the loop, the trainer's own early stopping, a time budget): the last
                # line printed forecast a step the run will not reach
                self.say(
                    f"training ended at update {step} of {total}, before its last: the forecasts printed are of "
                    f"update {total}"
                )
        self.monitor.end_run(step, self.stopped_at is not None)
        self._hook_off()
        if self.is_zero:
            self.guard("family store", self._keep_reference, step)
        if close_writer and self._tb_sink is not None:
            self._tb_sink.close_writer = True
        self.guard("TensorBoard", self.monitor.close)
        if self.is_zero and os.getpid() != self._owner[0]:
            self.guard("result hand-off", self._hand_off)
        if self.comm.world_size > 1:
            # The job's last collective may be the framework's own (the HF Trainer gathers its FLOP count after
            # its loop), its tensors still held by the backend's worker thread, which needs the GIL to free
            # them: freed while the interpreter exits, they abort the process. Waiting in one more collective,
            # with the GIL released, lets it finish first (a stopped run, with nothing else left to do, exited
            # too soon in about half of its jobs).
            with contextlib.suppress(Exception):
                self.comm.any(False)
        self.comm = None

    def end_unfinished(self) -> None:
        """The run's training ended without the adapter's end (an exception no callback hears, a loop that never
        called ``close()``, the process exiting): say ``unfinished_note`` when the adapter set one, then
        :meth:`abort`. Nothing when the run has ended."""
        if self.comm is None:
            return
        ended_by_engine = any(getattr(x, "ends_trials", False) for x in self.listeners)
        # a session only constructed (a script that failed before its loop) ran nothing it could lose
        stepped = self.step > self._started_at
        if (
            self.unfinished_note
            and stepped
            and getattr(sys, "last_value", None) is None
            and not ended_by_engine
        ):
            # after an uncaught exception (Python keeps it in sys.last_value for the exit) the traceback says
            # why the run ended, and a sweep engine (Ray Tune's ASHA) ends the trials it stops where no close()
            # can follow: a note on the close() they skipped would only blame the loop
            self.warn(self.unfinished_note)
        self.abort()

    def abort(self) -> None:
        """Training ended with an exception: record the run's end where it got to (a sweep's registry: stopped
        before its last step, else finished; a family keeps an annealed fit), close the sinks; no collective."""
        if self.comm is None:
            return
        self._hook_off()
        self.monitor.end_run(self.step, self.stopped_at is not None)
        if self.is_zero:
            self.guard("family store", self._keep_reference, self.step)
        self.guard("TensorBoard", self.monitor.close)
        self.comm = None

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The one saved format: monitor state, stop record, this rank's steps not yet flushed, adapter state."""
        if not self._ran_here and self._saved is not None:
            return self._saved
        pending = None
        if self.buffer is not None and len(self.buffer) and "step" not in self.guard.disabled:
            values = self.buffer.peek()
            keep = [i for i in range(min(values.shape[1], len(self._steps))) if values[SEEN, i] == 1.0]
            pending = {
                "steps": [self._steps[i] for i in keep],
                "loss": [float(values[LOSS, i]) for i in keep],
            }
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "monitor": self.monitor.state_dict(),
            "pending": pending,
            "step": self.step,
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "adapter": self.extra,
        }

    def load_state_dict(self, state: Any) -> None:
        """Keep ``state`` to restore at :meth:`start`. Never raises: a state this version cannot read costs the
        history, with one warning (versions 1 and 2 are read)."""
        ok = isinstance(state, dict) and state.get("format", STATE_FORMAT) == STATE_FORMAT
        version = state.get("version") if isinstance(state, dict) else None
        if not ok or version not in (1, STATE_VERSION) or not isinstance(state.get("monitor"), dict):
            self.warn(
                f"the saved forecast state is of another version ({version!r}) or garbled; starting a fresh history"
            )
            self._saved = None
            return
        if version == 1 and "mode" in state:
            state = {**state, "adapter": {"mode": state["mode"]}}
        try:
            pending_steps = (state.get("pending") or {}).get("steps") or [0]
            last = (state["monitor"].get("forecaster") or {}).get("last_step", 0)
            step = int(state.get("step") or max(int(last or 0), *map(int, pending_steps)))
        except Exception as exc:  # a resume must never fail because of this state
            self.warn(
                f"the saved forecast state is garbled ({type(exc).__name__}: {exc}); starting a fresh history"
            )
            self._saved = None
            return
        if step == 0:
            # saved before the first update (Lightning's lr_find checkpoints the trainer before its trial and
            # restores it after): nothing to resume; the run starts from its first step, as a new run
            self._saved = None
            return
        self._saved, self.step = state, step
        if self.comm is not None:  # already started (a plain loop, restored after its construction)
            self.flushed_at = self.step
            self._resume()

    def json_args(self) -> dict[str, Any]:
        """The JSON-safe constructor arguments (HF rebuilds a callback from them on restore)."""
        out: dict[str, Any] = {**self.stop.model_dump(), **self.config.model_dump()}
        out["forecaster_config"] = self.forecaster_config.model_dump(mode="json")
        if self.schedule is not None:
            out["schedule"] = self.schedule.tolist()
        if not self.detectors:
            out["detectors"] = []  # switched off: a rebuilt callback must not switch the default back on
        return out

    # ---------------------------------------------------- spawn-based launchers
    def _handoff_path(self) -> Path:
        pid, token = self._owner
        return Path(tempfile.gettempdir()) / f"scaleforecast-{pid}-{token}.json"

    def _hand_off(self) -> None:
        """Training ran in a child process (``ddp_spawn``): leave rank 0's result for the parent's object."""
        path = self._handoff_path()
        data = {**self.state_dict(), "errors": self.errors, "log_dir": self.log_dir}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)

    def _adopt(self) -> None:
        """In the process that made this object, take over the result its child processes left."""
        if self.comm is not None or os.getpid() != self._owner[0]:
            return  # training runs in this process, or this is not the process that made the object
        path = self._handoff_path()
        if not path.is_file():
            return
        try:
            data = json.loads(path.read_text())
            path.unlink()
            self._ran_here = True
            monitor = self._new_monitor(log_events=False)
            monitor.load_state_dict(data["monitor"])
            self.monitor = monitor
            self.stopped_at, self.stop_reason = data.get("stopped_at"), data.get("stop_reason")
            self.guard.disabled.update(data.get("errors") or {})
            self.log_dir = data.get("log_dir")
        except Exception as exc:
            self.warn(f"could not read the result of the training processes ({type(exc).__name__}: {exc})")

    def __getstate__(self) -> dict[str, Any]:
        # what is bound to this process (its collectives, hooks, device buffers, TensorBoard files) stays here;
        # a copy (``ddp_spawn`` pickles the callbacks, even after a fit) sets up its own
        state = self.__dict__.copy()
        for key in ("comm", "buffer", "_hook", "_gnorm", "source", "_tb_sink"):
            state[key] = None
        return state


class SessionFace:
    """What every adapter shows of its session: ``forecast``, ``forecaster``, ``monitor``, the stop record,
    the errors, and the saved state (``state_dict``/``load_state_dict``, the names Lightning and plain loops
    use)."""

    session: TrainingSession

    @property
    def forecast(self) -> Forecast | None:
        """The latest forecast (``None`` before the first refit)."""
        return self.session.forecast

    @property
    def forecaster(self) -> OnlineForecaster:
        return self.session.forecaster

    @property
    def monitor(self) -> RunMonitor:
        self.session._adopt()
        return self.session.monitor

    @property
    def stopped_at(self) -> int | None:
        """The optimizer step at which the run was stopped (the same on every rank), else ``None``."""
        self.session._adopt()
        return self.session.stopped_at

    @property
    def stop_reason(self) -> str | None:
        self.session._adopt()
        return self.session.stop_reason

    @property
    def errors(self) -> dict[str, str]:
        """The parts of the plugin switched off by a failure on this process (part -> message)."""
        self.session._adopt()
        return self.session.errors

    @property
    def log_dir(self) -> str | None:
        """Where the TensorBoard files go (on rank 0, once training started), else ``None``."""
        self.session._adopt()
        return self.session.log_dir

    def state_dict(self) -> dict[str, Any]:
        """The session's saved state (JSON-safe; see :meth:`TrainingSession.state_dict`). Never raises: a
        checkpoint must not fail because of the plugin (a failure saves an empty state, reported once)."""
        return self.session.guard("checkpoint state", self.session.state_dict) or {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore on resume; an unreadable state costs the history, with one warning, never the run."""
        self.session.load_state_dict(state_dict)
