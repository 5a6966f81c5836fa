"""Hugging Face ``Trainer`` callback: forecast the run's final loss while it trains, and stop runs that cannot
reach a target.

Usage::

    from transformers import Trainer, TrainingArguments
    from scaleforecast.callbacks import HFLossForecast

    args = TrainingArguments("out", max_steps=20_000, report_to=["tensorboard"])
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[HFLossForecast(target_loss=3.1)])
    trainer.train()             # then: tensorboard --logdir out/runs

Loss resolution, and the trade-off. HF callbacks receive no per-step loss. Two sources exist:

- **per step** (preferred, ``resolution="auto"`` or ``"step"``): a forward hook on the model reads the
  ``loss`` its output carries (HF models return one whenever ``labels`` are passed), only in training mode
  with gradients on, so evaluation calls are not counted. The micro-batch losses of one optimizer step are
  summed on the device and normalised as the Trainer normalises them (by the micro-batch count, or, when
  the model got ``num_items_in_batch``, already per token of the whole step), so one observation equals what
  ``logs["loss"]`` would show at ``logging_steps=1``. Values stay on the device in a buffer that moves to
  the host every ``flush_every`` steps with one collective (mean and max over ranks): no host sync per step.
  It sees NaN/Inf (which ``logging_nan_inf_filter`` hides from the logs), gives ``logging_steps`` times more
  points, so the band tightens earlier. It costs one device add per micro-batch and one collective per flush,
  and it only sees losses the model itself returns: a ``compute_loss`` override, a ``compute_loss_func`` or
  label smoothing that computes the loss outside the model leaves it blind.
- **window means** (the floor, ``resolution="window"``, and the automatic fallback when a whole flush saw no
  loss): ``logs["loss"]`` from ``on_log``, the mean over the logging window, already gathered across ranks,
  fitted as a window mean by the core. Free and always available, but one point per ``logging_steps``, and
  NaN/Inf never reach it.

The planned schedule comes from looking ahead with the Trainer's ``lr_scheduler`` (on copies) to
``state.max_steps``; the LR each update used is read in ``on_step_begin`` (the scheduler steps before
``on_step_end``; ``logs["learning_rate"]`` is that LR in transformers 5.x but the next update's in 4.x), and a
departure from the plan triggers a re-plan. transformers 4.x hands callbacks the optimizer and scheduler only
when they were given to ``Trainer(optimizers=...)``; otherwise the callback reads them off the ``Trainer``
found on the call stack at ``on_train_begin`` (as it finds HF's ``TensorBoardCallback``: callbacks get no
reference to the Trainer or its callback handler). TensorBoard output goes, on the world
process zero only, into the writer of HF's own ``TensorBoardCallback`` when it is active (one run directory),
else into the callback's own writer under ``output_dir``. The stop decision is taken from values that are
identical on every rank and agreed with one ``torch.distributed`` all-reduce, so ``should_training_stop`` is
set at the same step everywhere. State survives resume through ``ExportableState`` (``trainer_state.json``
of the checkpoint, read back in ``on_train_begin``) or, on transformers without it, a file in the checkpoint
folder. Keep ``restore_callback_states_from_checkpoint`` at its default (``False``): when it is ``True`` the
Trainer replaces this object by one rebuilt from its JSON-safe arguments, which drops ``writer=``, ``health=``,
``advisor=`` and ``on_event=``. Any failure inside the callback is reported once and the failing part switches itself off.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scaleforecast.integrations.distributed import DeviceBuffer, agree, world_size
from scaleforecast.integrations.lookahead import LookaheadError, lookahead_lrs
from transformers import TrainerCallback

from scaleforecast.events import Event
from scaleforecast.fitting import FitConfig
from scaleforecast.forecaster import ForecasterConfig, ScheduleLike
from scaleforecast.monitor import (
    Action,
    Advisor,
    FlushBatch,
    HealthCheck,
    RunMonitor,
    guarded_call,
    validate_adapter_args,
)
from scaleforecast.results import Forecast
from scaleforecast.schedules import as_lrs

try:  # transformers >= 4.41
    from transformers.trainer_callback import ExportableState
except ImportError:  # pragma: no cover - older transformers: the checkpoint-folder file is used instead

    class ExportableState:  # type: ignore[no-redef]
        """Stand-in so the class definition works on transformers without ``ExportableState``."""


HAS_EXPORTABLE_STATE = hasattr(ExportableState, "from_state")

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "HFLossForecast"]

Resolution = Literal["auto", "step", "window"]
STATE_FILE = "scaleforecast_state.json"
_REPLAN_RTOL = 1e-6


def _output_loss(output: Any) -> torch.Tensor | None:
    """The ``loss`` a model output carries (``ModelOutput``/dict ``"loss"``), else ``None``."""
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


class _LossTap:
    """A forward hook summing the training losses of one optimizer step on the device, never reading them.

    ``take()`` returns the step's loss as the Trainer defines it: the mean of the micro-batch losses, or, when
    the model normalised by ``num_items_in_batch`` (then each micro-batch loss is a share of the whole step's
    per-token mean), their sum times ``scale`` (the world size when tokens are averaged across devices, as the
    Trainer rescales the loss it logs).
    """

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.total: torch.Tensor | None = None
        self.micro = 0
        self.shared = False
        self.error: str | None = None
        self._handle: Any = None

    def attach(self, model: torch.nn.Module) -> None:
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        try:
            loss = _output_loss(output)
            if loss is None:
                return
            # A copy: the Trainer rescales the returned loss in place (``loss *= num_processes``) afterwards.
            value = loss.detach().float()
            value = value.mean() if value.ndim else value.clone()
            self.total = value if self.total is None else self.total + value
            self.micro += 1
            self.shared = kwargs.get("num_items_in_batch") is not None
        except Exception as exc:  # the hook runs inside the model's forward: it must never raise
            self.error = f"{type(exc).__name__}: {exc}"
            self.detach()

    def take(self) -> torch.Tensor | None:
        total, micro = self.total, self.micro
        self.total, self.micro = None, 0
        if total is None or micro == 0:
            return None
        return total * self.scale if self.shared else total / micro


def _find_on_stack(kind: str, attribute: str, max_depth: int = 16) -> Any | None:
    """The ``self`` of the nearest caller frame whose class (or a base) is named ``kind`` and has ``attribute``.

    Callbacks get no reference to the ``Trainer`` nor to its ``CallbackHandler``, but both are on the stack
    while an event runs (``Trainer._inner_training_loop`` calls ``CallbackHandler.call_event``).
    """
    frame = inspect.currentframe()
    try:
        for _ in range(max_depth):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if (
                owner is not None
                and hasattr(owner, attribute)
                and any(c.__name__ == kind for c in type(owner).__mro__)
            ):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


def _find_handler_callbacks() -> list[Any]:
    """The callbacks of the ``CallbackHandler`` that is calling us."""
    handler = _find_on_stack("CallbackHandler", "callbacks")
    callbacks = getattr(handler, "callbacks", None)
    return list(callbacks) if isinstance(callbacks, list) else []


def _hf_tensorboard_callback() -> Any | None:
    """HF's own ``TensorBoardCallback`` among the running callbacks, when its writer exists."""
    for cb in _find_handler_callbacks():
        names = {c.__name__ for c in type(cb).__mro__}
        if "TensorBoardCallback" in names and getattr(cb, "tb_writer", None) is not None:
            return cb
    return None


class HFLossForecast(TrainerCallback, ExportableState):
    """Forecast the final training loss with the LR-annealing law; optionally stop when a target is out of reach.

    The HF Trainer counterpart of :class:`scaleforecast.callbacks.LossForecast`, with the same arguments,
    TensorBoard tags, Margin chart, figures, alerts and stop rule (see the module docstring for how the loss
    is observed and the trade-off between per-step and window-mean resolution).

    Args:
        target_loss: stop when ``P(final loss >= target_loss) >= confidence`` (``None``: forecast only).
        confidence: probability required to stop, in [0.5, 1).
        min_steps: never stop before this optimizer step.
        min_fraction: never stop before this fraction of the total steps.
        schedule: the planned per-update LR (spec, schedule model or array); default: looked ahead from the
            Trainer's ``lr_scheduler``.
        total_steps: the run's length in optimizer steps; default ``state.max_steps``.
        param_group: which param group carries "the" LR.
        flush_every: move buffered per-step losses to the host (one collective) every this many steps.
        refit_every: refit the law every this many steps (it also refits early while data grow fast).
        level: coverage of the reported band, in (0, 1).
        log_figures_every: draw a forecast figure every this many refits (0: never).
        action: what a stop decision or a critical health event does: ``"stop"``, ``"warn"`` or ``"raise"``.
        dirpath: folder for the callback's own TensorBoard writer when HF's TensorBoard callback is not active
            (default ``output_dir/runs/scaleforecast``).
        writer: a ``SummaryWriter``-like object to write to, or ``False`` for no TensorBoard output.
        track_grad_norm: also buffer the gradient norm of each update (after clipping; for health checks).
        health: health checks run at each flush (see :class:`scaleforecast.monitor.HealthCheck`).
        advisor: schedule advice run after each refit (see :class:`scaleforecast.monitor.Advisor`).
        on_event: a hook called with every event (alerts, advice, the stop decision).
        forecaster_config: full forecaster configuration (overrides ``refit_every``/``level``/``law``/``lam``).
        law: the law to fit (``"tissue"`` or ``"mpl"``); lam: the annealing-momentum decay.
        verbose: print each new forecast on the world process zero.
        resolution: ``"auto"`` (per step, falling back to window means), ``"step"`` (per step, warning on
            fallback) or ``"window"`` (window means from ``on_log`` only).
        name: tells several instances apart in a checkpoint.
    """

    def __init__(
        self,
        target_loss: float | None = None,
        *,
        confidence: float = 0.95,
        min_steps: int = 0,
        min_fraction: float = 0.1,
        schedule: ScheduleLike | None = None,
        total_steps: int | None = None,
        param_group: int = 0,
        flush_every: int = 50,
        refit_every: int = 100,
        level: float = 0.8,
        log_figures_every: int = 5,
        action: Action = "stop",
        dirpath: str | Path | None = None,
        writer: Any = None,
        track_grad_norm: bool = False,
        health: Sequence[HealthCheck] = (),
        advisor: Advisor | None = None,
        on_event: Callable[[Event], None] | None = None,
        forecaster_config: ForecasterConfig | dict[str, Any] | None = None,
        law: str = "tissue",
        lam: float = 0.999,
        verbose: bool = True,
        resolution: Resolution = "auto",
        name: str = "scaleforecast",
    ) -> None:
        validate_adapter_args(total_steps, param_group, flush_every, refit_every, level, log_figures_every)
        if resolution not in ("auto", "step", "window"):
            raise ValueError(f"resolution must be 'auto', 'step' or 'window', got {resolution!r}")
        if isinstance(forecaster_config, dict):
            forecaster_config = ForecasterConfig.model_validate(forecaster_config)
        self.target_loss = target_loss
        self.confidence = confidence
        self.min_steps = min_steps
        self.min_fraction = min_fraction
        self._schedule_arg = schedule
        self.schedule = None if schedule is None else as_lrs(schedule)
        self.total_steps = total_steps
        self.param_group = param_group
        self.flush_every = flush_every
        self.refit_every = refit_every
        self.level = level
        self.log_figures_every = log_figures_every
        self.action: Action = action
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.writer = writer
        self.track_grad_norm = track_grad_norm
        self.health = list(health)
        self.advisor = advisor
        self.on_event = on_event
        self.law = law
        self.lam = lam
        self.config = forecaster_config or ForecasterConfig(
            fit=FitConfig(law=law, lam=lam), level=level, refit_every=refit_every
        )
        self.verbose = verbose
        self.resolution: Resolution = resolution
        self.name = name
        # Validates target/confidence/grace/action now, not at the first step.
        self.monitor = self._new_monitor(verbose=False)

        self.mode: Literal["step", "window"] = "window" if resolution == "window" else "step"
        self.stopped_at: int | None = None
        self.stop_reason: str | None = None
        self.errors: dict[str, str] = {}
        self.log_dir: str | None = None
        self._saved_state: dict[str, Any] | None = None
        self._is_zero = True
        self._started = False
        self._tap: _LossTap | None = None
        self._buffer: DeviceBuffer | None = None
        self._steps: list[int] = []
        self._lrs: list[float] = []
        self._lr = math.nan
        self._gnorm: torch.Tensor | None = None
        self._last_log_step = 0
        self._optimizer: Any = None
        self._scheduler: Any = None
        self._max_steps = 0
        self._hf_tb: Any = None

    # ------------------------------------------------------------------ views
    @property
    def forecaster(self) -> Any:
        return self.monitor.forecaster

    @property
    def forecast(self) -> Forecast | None:
        """The latest forecast (``None`` before the first refit)."""
        return self.monitor.forecaster.latest

    latest = forecast

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    @property
    def stop_step(self) -> int | None:
        return self.stopped_at

    def _new_monitor(self, verbose: bool) -> RunMonitor:
        return RunMonitor(
            config=self.config,
            target_loss=self.target_loss,
            confidence=self.confidence,
            min_steps=self.min_steps,
            min_fraction=self.min_fraction,
            action=self.action,
            health=self.health,
            advisor=self.advisor,
            figure_every=self.log_figures_every,
            on_event=self.on_event,
            verbose=verbose,
        )

    # --------------------------------------------------------------- guarding
    def _guard(self, part: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; report an exception once, switch ``part`` off, and let training go on."""
        return guarded_call(self.errors, part, fn, args, self._report_guarded)

    def _report_guarded(self, part: str, detail: str) -> None:
        # Blame the code that called _guard, three frames up through guarded_call.
        self._report(part, detail, exc_info=True, stacklevel=4)

    def _report(self, part: str, detail: str, exc_info: bool = False, stacklevel: int = 3) -> None:
        msg = f"HFLossForecast: {part} failed ({detail}); it is switched off for this run"
        self.errors[part] = msg
        if self._is_zero:
            log.warning(msg, exc_info=exc_info)
            warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)

    # --------------------------------------------------------------- planning
    def _lookahead(self, total: int, steps_done: int) -> np.ndarray:
        if self._optimizer is None:
            raise ValueError("cannot find the Trainer's optimizer to look ahead at its LR; pass schedule=")
        try:
            return lookahead_lrs(
                self._optimizer, self._scheduler, total, steps_done=steps_done, group=self.param_group
            )
        except LookaheadError:
            # Accelerate wraps the optimizer; the scheduler may hold the raw one.
            inner = getattr(self._optimizer, "optimizer", None)
            if inner is None:
                raise
            return lookahead_lrs(inner, self._scheduler, total, steps_done=steps_done, group=self.param_group)

    def _total(self) -> int:
        if self.total_steps is not None:
            return self.total_steps
        if self.schedule is not None:
            return len(self.schedule)
        if self._max_steps < 1:
            raise ValueError("the run's length is unknown: set max_steps or pass total_steps=")
        return self._max_steps

    def _plan(self, steps_done: int, past: np.ndarray | None = None) -> None:
        """Set the planned schedule: the LRs used so far (``past``), then the look-ahead from the scheduler."""
        total = self._total()
        if self.schedule is not None:
            if len(self.schedule) != total:
                raise ValueError(f"schedule= has {len(self.schedule)} steps but the run has {total}")
            self.monitor.set_schedule(self.schedule)
            return
        future = self._lookahead(total, steps_done)
        if past is None:
            old = self.monitor.forecaster.schedule
            if not steps_done:
                past = np.empty(0)
            elif old is not None and len(old) >= steps_done:
                past = old[:steps_done]
            else:
                past = self._past_lrs(steps_done, future)
        lrs = np.concatenate([np.asarray(past, dtype=float)[:steps_done], future])
        if lrs.size and lrs[0] <= 0.0:
            # Warm-up schedules start at LR 0; the law needs a positive first LR for S1.
            lrs[0] = lrs[1] if lrs.size > 1 and lrs[1] > 0 else 1e-12
        lrs[~(lrs > 0)] = 1e-12
        self.monitor.set_schedule(lrs)

    def _past_lrs(self, steps_done: int, future: np.ndarray) -> np.ndarray:
        """LRs before a resume without saved state: exact for HF's ``LambdaLR`` schedules, else the current LR."""
        sched = self._scheduler
        lambdas = getattr(sched, "lr_lambdas", None)
        if lambdas is not None and self.param_group < len(lambdas):
            base = float(sched.base_lrs[self.param_group])
            fn = lambdas[self.param_group]
            return np.array([base * float(fn(k)) for k in range(steps_done)])
        if self._is_zero:
            warnings.warn(
                "HFLossForecast: no record of the LRs before this resume; assuming the current LR",
                RuntimeWarning,
                stacklevel=3,
            )
        return np.full(steps_done, future[0] if future.size else math.nan)

    def _replan_if_needed(self, steps: np.ndarray, used: np.ndarray, step_now: int) -> None:
        """Re-plan when the run length changed or the LRs actually used left the plan."""
        if self.schedule is not None:
            return
        planned = self.monitor.forecaster.schedule
        if planned is None:
            self._plan(step_now)
            return
        idx = steps - 1
        ok = (idx < len(planned)) & np.isfinite(used) & (used > 0)
        drift = bool(np.any(~np.isclose(planned[idx[ok]], used[ok], rtol=_REPLAN_RTOL, atol=0.0)))
        if not drift and len(planned) == self._total():
            return
        fixed = planned[:step_now].copy()
        if drift:
            inside = ok & (idx < step_now)
            fixed[idx[inside]] = used[inside]
        if self.verbose and self._is_zero:
            log.info("HFLossForecast: schedule changed at step %d; re-planning", step_now)
        self._plan(step_now, past=fixed)

    # -------------------------------------------------------------- lifecycle
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._is_zero = bool(state.is_world_process_zero)
        self._guard("setup", self._start, args, state, kwargs)

    def _start(self, args: Any, state: Any, kwargs: dict[str, Any]) -> None:
        self.monitor = self._new_monitor(verbose=self._is_zero and self.verbose)
        saved = self._saved_state if self._saved_state is not None else self._find_saved(args, state)
        self._saved_state = None
        if saved is not None and int(state.global_step) > 0:
            self._load(saved)
        self._optimizer = kwargs.get("optimizer")
        self._scheduler = kwargs.get("lr_scheduler")
        if self._optimizer is None:
            # transformers 4.x passes callbacks only the optimizer/scheduler given to ``Trainer(optimizers=)``.
            trainer = _find_on_stack("Trainer", "callback_handler")
            self._optimizer = getattr(trainer, "optimizer", None)
            self._scheduler = self._scheduler or getattr(trainer, "lr_scheduler", None)

        self._max_steps = int(state.max_steps or 0)
        self._last_log_step = int(state.global_step)
        self._steps, self._lrs = [], []
        self._guard("schedule look-ahead", self._plan, int(state.global_step))
        if self.mode == "step":
            ws = world_size()
            average = bool(getattr(args, "average_tokens_across_devices", False))
            self._tap = _LossTap(scale=float(ws) if average and ws > 1 else 1.0)
            self._buffer = DeviceBuffer(self.flush_every, channels=3 if self.track_grad_norm else 2)
            model = kwargs.get("model")
            if model is None:
                raise ValueError("the Trainer passed no model to the callback")
            self._tap.attach(model)
        if self._is_zero and self.writer is not False:
            self._guard("TensorBoard", self._attach_tensorboard, args)
        self._started = True

    def _attach_tensorboard(self, args: Any) -> None:
        from scaleforecast.integrations.tensorboard import ADVICE_CHARTS, TensorBoardSink

        extra = ADVICE_CHARTS if self.advisor is not None else None
        if self.writer is not None:
            self.monitor.add_sink(TensorBoardSink(self.writer, layout_extra=extra))
            self.log_dir = getattr(self.writer, "log_dir", None)
            return
        hf_tb = _hf_tensorboard_callback()
        if hf_tb is not None:
            # One run directory with HF's own curves; HF owns (and closes) that writer.
            self._hf_tb = hf_tb
            self.monitor.add_sink(TensorBoardSink(hf_tb.tb_writer, layout_extra=extra))
            self.log_dir = getattr(hf_tb.tb_writer, "log_dir", None) or getattr(hf_tb, "logging_dir", None)
            return
        from torch.utils.tensorboard import SummaryWriter

        logdir = self.dirpath or Path(args.output_dir) / "runs" / "scaleforecast"
        self.monitor.add_sink(
            TensorBoardSink(SummaryWriter(str(logdir)), layout_extra=extra, close_writer=True)
        )
        self.log_dir = str(logdir)
        if self.verbose:
            log.info("HFLossForecast: TensorBoard logs in %s  (tensorboard --logdir %s)", logdir, logdir)

    # ---------------------------------------------------------------- per step
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._started and "capture" not in self.errors:
            self._guard("capture", self._capture_lr, kwargs.get("optimizer") or self._optimizer)

    def _capture_lr(self, optimizer: Any) -> None:
        lr = optimizer.param_groups[self.param_group]["lr"]
        self._lr = float(lr) if not isinstance(lr, torch.Tensor) or lr.device.type == "cpu" else math.nan

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.track_grad_norm and self._started and "grad norm" not in self.errors:
            self._guard("grad norm", self._capture_grad_norm, kwargs.get("model"))

    def _capture_grad_norm(self, model: Any) -> None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self._gnorm = torch.nn.utils.get_total_norm(grads) if grads else None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started or self.mode != "step" or "step" in self.errors:
            return
        self._guard("step", self._on_step_end, state, control)

    def _on_step_end(self, state: Any, control: Any) -> None:
        assert self._tap is not None and self._buffer is not None
        if self._tap.error is not None and "loss hook" not in self.errors:
            self._report("loss hook", self._tap.error)
        value = self._tap.take()
        # Channel 1 marks a step whose loss was seen, so a missing loss is not taken for a NaN one.
        seen = None if value is None else 1.0
        if self.track_grad_norm:
            self._buffer.push(value, seen, self._gnorm)
        else:
            self._buffer.push(value, seen)
        self._gnorm = None
        step = int(state.global_step)
        self._steps.append(step)
        self._lrs.append(self._lr)
        self._lr = math.nan
        # Flush at a fixed cadence and whenever a checkpoint or the end comes (identical on all ranks), so a
        # checkpoint always holds every step before it.
        due = (
            len(self._buffer) >= self.flush_every
            or step % self.flush_every == 0
            or control.should_save
            or control.should_training_stop
            or step >= self._max_steps
        )
        if due:
            self._flush(state, control)

    def _flush(self, state: Any, control: Any) -> None:
        """One collective for the buffered steps, then the monitor (same inputs on every rank), then agreement."""
        assert self._buffer is not None
        if not self._steps:
            return
        flushed = self._buffer.flush()
        n = flushed.count
        steps = np.asarray(self._steps[:n], dtype=np.int64)
        lrs = np.asarray(self._lrs[:n], dtype=float)
        self._steps, self._lrs = [], []
        seen = np.isfinite(flushed.mean[1])
        stop = False
        if not seen.any():
            self._no_step_losses(int(steps[-1]) if steps.size else int(state.global_step))
        else:
            self._guard("schedule look-ahead", self._replan_if_needed, steps, lrs, int(state.global_step))
            batch = FlushBatch(
                steps=steps[seen],
                loss=flushed.mean[0][seen],
                loss_max=flushed.max[0][seen] if world_size() > 1 else None,
                grad_norm=flushed.mean[2][seen] if self.track_grad_norm else None,
                lrs=lrs[seen],
            )
            stop = self._monitor_flush(batch)
        self._agree_and_stop(stop, int(state.global_step), control)

    def _no_step_losses(self, step: int) -> None:
        """A whole flush without a loss from the model: fall back to window means (same on every rank)."""
        self.mode = "window"
        if self._tap is not None:
            self._tap.detach()
        msg = (
            "HFLossForecast: the model returned no training loss (a custom compute_loss, compute_loss_func or "
            "label smoothing computes it outside the model); using the logged window means instead"
        )
        if self._is_zero and (self.resolution == "step" or self.verbose):
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning("%s (from step %d)", msg, step)

    def _monitor_flush(self, batch: FlushBatch) -> bool:
        # The monitor logs each new forecast itself (verbose on the world process zero only).
        result = self._guard("forecaster", self.monitor.flush, batch)
        return False if result is None else bool(result.stop)

    def _agree_and_stop(self, stop: bool, step: int, control: Any) -> None:
        # Every rank takes part, whatever happened above, so that nobody waits on a collective alone.
        try:
            stop = agree(stop, mode="any")
        except Exception as exc:
            if "agreement" not in self.errors:
                self._report("agreement", f"{type(exc).__name__}: {exc}", exc_info=True)
            stop = False
        if stop and self.stopped_at is None:
            self.stopped_at = step
            self.stop_reason = self.monitor.stop_reason or "another rank decided to stop"
            if self._is_zero:
                log.warning("HFLossForecast: stopping at step %d: %s", step, self.stop_reason)
        if self.stopped_at is not None:
            control.should_training_stop = True

    # ------------------------------------------------------------ window means
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not self._started or not logs or "loss" not in logs:
            return
        step = int(state.global_step)
        window = step - self._last_log_step
        self._last_log_step = step
        if self.mode != "window" or window < 1 or "window" in self.errors:
            return
        self._guard("window", self._on_window, step, window, logs, control)

    def _on_window(self, step: int, window: int, logs: dict[str, float], control: Any) -> None:
        # The LR this update used, read in on_step_begin: ``logs["learning_rate"]`` is that LR in transformers
        # 5.x but the next update's in 4.x (read after the scheduler stepped).
        lr = self._lr
        self._guard("schedule look-ahead", self._replan_if_needed, np.array([step]), np.array([lr]), step)
        batch = FlushBatch(
            steps=np.array([step]), loss=np.array([float(logs["loss"])]), lrs=np.array([lr]), window=window
        )
        # ``logs`` were gathered over ranks, so every rank decides from the same value.
        self._agree_and_stop(self._monitor_flush(batch), step, control)

    # -------------------------------------------------------------------- end
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started:
            return
        if self.mode == "step" and self._steps and "step" not in self.errors:
            self._guard("step", self._flush, state, control)
        if self._tap is not None:
            self._tap.detach()
        self._guard("TensorBoard", self._close)
        self._started = False

    def _close(self) -> None:
        self.monitor.close()
        # HF's TensorBoardCallback closes its writer before this runs; writing reopened it, so close it again.
        if self._hf_tb is not None and getattr(self._hf_tb, "tb_writer", None) is None:
            for sink in self.monitor.sinks.sinks:
                writer = getattr(sink, "writer", None)
                if writer is not None:
                    writer.close()
        self._hf_tb = None

    # ------------------------------------------------------------------ state
    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "name": self.name,
            "monitor": self.monitor.state_dict(),
            "mode": self.mode,
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
        }

    def _load(self, saved: dict[str, Any]) -> None:
        if saved.get("version") != 1:
            raise ValueError(f"unsupported HFLossForecast state version {saved.get('version')!r}")
        self.monitor.load_state_dict(saved["monitor"])
        self.mode = "window" if saved.get("mode") == "window" else self.mode
        self.stopped_at = saved.get("stopped_at")
        self.stop_reason = saved.get("stop_reason")

    def _json_args(self) -> dict[str, Any]:
        """Constructor arguments that survive JSON (HF rebuilds the callback from them on restore)."""
        out: dict[str, Any] = {
            "target_loss": self.target_loss,
            "confidence": self.confidence,
            "min_steps": self.min_steps,
            "min_fraction": self.min_fraction,
            "total_steps": self.total_steps,
            "param_group": self.param_group,
            "flush_every": self.flush_every,
            "refit_every": self.refit_every,
            "level": self.level,
            "log_figures_every": self.log_figures_every,
            "action": self.action,
            "dirpath": None if self.dirpath is None else str(self.dirpath),
            "track_grad_norm": self.track_grad_norm,
            "forecaster_config": self.config.model_dump(mode="json"),
            "law": self.law,
            "lam": self.lam,
            "verbose": self.verbose,
            "resolution": self.resolution,
            "name": self.name,
        }
        if isinstance(self._schedule_arg, str):
            out["schedule"] = self._schedule_arg
        elif self.schedule is not None:
            out["schedule"] = self.schedule.tolist()
        return out

    def state(self) -> dict[str, Any]:
        """``ExportableState``: JSON-safe constructor arguments and the monitor's state (history, fit, stop)."""
        try:
            return {"args": self._json_args(), "attributes": {"_saved_state": self._snapshot()}}
        except Exception as exc:  # a checkpoint must never fail because of this callback
            if "state" not in self.errors:
                self._report("state", f"{type(exc).__name__}: {exc}", exc_info=True)
            return {"args": {"name": self.name}, "attributes": {}}

    def _find_saved(self, args: Any, state: Any) -> dict[str, Any] | None:
        """This callback's entry in the resumed ``trainer_state.json``, or the checkpoint-folder file."""
        if int(state.global_step) <= 0:
            return None
        stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        entries = stored if isinstance(stored, list) else [stored] if stored else []
        for entry in entries:
            saved = (entry.get("attributes") or {}).get("_saved_state")
            if saved and saved.get("name") == self.name:
                return saved
        path = Path(args.output_dir) / f"checkpoint-{int(state.global_step)}" / STATE_FILE
        if path.is_file():
            return json.loads(path.read_text()).get(self.name)
        return None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if HAS_EXPORTABLE_STATE or not state.is_world_process_zero or not self._started:
            return
        self._guard("checkpoint state", self._save_file, args, state)

    def _save_file(self, args: Any, state: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{int(state.global_step)}"
        if folder.is_dir():
            path = folder / STATE_FILE
            data = json.loads(path.read_text()) if path.is_file() else {}
            data[self.name] = self._snapshot()
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
