"""Lightning callback: forecast the run's final loss while it trains, and stop runs that cannot reach a target.

Usage::

    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from scaleforecast.callbacks import LossForecast

    trainer = L.Trainer(
        max_steps=20_000,
        callbacks=[LossForecast(target_loss=3.1, confidence=0.95)],
        logger=TensorBoardLogger("runs"),
    )
    trainer.fit(model)          # then: tensorboard --logdir runs

What it observes: one value per optimizer step, the mean training loss of that step (Lightning divides the
loss in ``outputs["loss"]`` by ``accumulate_grad_batches``; the callback undoes that and averages the micro-
batches of each step), and the LR that update actually used, read in ``on_before_optimizer_step`` (the
scheduler steps before ``on_train_batch_end``). ``training_step`` must return the loss tensor or a dict with
``"loss"``; under manual optimisation, return the loss as well (one observation per batch that stepped the
first optimizer).

How: losses stay on the device in a small buffer (no ``.item()``, no host sync per step). Every
``flush_every`` steps one collective moves the buffer to the host with the mean and the max over ranks; the
forecaster refits on its policy; the stop rule is agreed with ``trainer.strategy.reduce_boolean_decision`` so
that every rank stops at the same step. The planned schedule comes from looking ahead with the run's own LR
scheduler(s) (on copies) for ``max_steps`` or ``estimated_stepping_batches`` and is re-planned when the
scheduler or the LR in use departs from the plan. TensorBoard output goes through the trainer's
``TensorBoardLogger`` when there is one, else its own writer, on global rank 0 only. Any failure inside the
callback is reported once and the failing part switches itself off; training goes on.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from scaleforecast.integrations.distributed import DeviceBuffer
from scaleforecast.integrations.lookahead import lookahead_lrs

from scaleforecast.events import Event, TrainingHealthError
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
    validate_stop_args,
)
from scaleforecast.results import Forecast
from scaleforecast.schedules import as_lrs

log = logging.getLogger(__name__)

__all__ = ["LossForecast"]

_REPLAN_RTOL = 1e-6


def _loss_of(outputs: Any) -> torch.Tensor | float | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        value = outputs.get("loss")
        if isinstance(value, (torch.Tensor, float, int)):
            return value
    return None


def _grad_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])
    )


class LossForecast(Callback):
    """Forecast the final training loss with the LR-annealing law; optionally stop when a target is out of reach.

    Args:
        target_loss: stop when ``P(final loss >= target_loss) >= confidence`` (``None``: forecast only).
        confidence: probability required to stop, in [0.5, 1).
        min_steps: never stop before this optimizer step.
        min_fraction: never stop before this fraction of the total steps.
        schedule: the planned per-update LR (a spec such as ``"cosine:peak=3e-4,warmup=200,total=20000"``, a
            schedule model, or an array); default: looked ahead from the trainer's LR scheduler(s).
        total_steps: the run's length in optimizer steps; default ``max_steps`` or ``estimated_stepping_batches``.
        param_group: which param group of the first optimizer carries "the" LR.
        flush_every: move buffered losses to the host (one collective) every this many optimizer steps.
        refit_every: refit the law every this many steps (it also refits early while data grow fast).
        level: coverage of the reported band, in (0, 1).
        log_figures_every: draw a forecast figure every this many refits (0: never).
        action: what a stop decision or a critical health event does: ``"stop"``, ``"warn"`` or ``"raise"``.
        dirpath: folder for the callback's own TensorBoard writer when the trainer has no TensorBoardLogger.
        writer: a ``SummaryWriter``-like object to write to, or ``False`` to write no TensorBoard output.
        track_grad_norm: also buffer the gradient norm of each update (for health checks).
        health: health checks run at each flush (see :class:`scaleforecast.monitor.HealthCheck`).
        advisor: schedule advice after each refit (see :class:`scaleforecast.monitor.Advisor`).
        on_event: a hook called with every event (alerts, advice, the stop decision).
        forecaster_config: full forecaster configuration (overrides ``refit_every``/``level``/``law``/``lam``).
        law: the law to fit (``"tissue"`` or ``"mpl"``); lam: the annealing-momentum decay.
        verbose: print each new forecast on rank 0.
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
        forecaster_config: ForecasterConfig | None = None,
        law: str = "tissue",
        lam: float = 0.999,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        validate_stop_args(target_loss, confidence, min_steps, min_fraction, action)
        validate_adapter_args(total_steps, param_group, flush_every, refit_every, level, log_figures_every)
        self.target_loss = target_loss
        self.confidence = confidence
        self.min_steps = min_steps
        self.min_fraction = min_fraction
        self.schedule = None if schedule is None else as_lrs(schedule)
        self.total_steps = total_steps
        self.param_group = param_group
        self.flush_every = flush_every
        self.log_figures_every = log_figures_every
        self.action: Action = action
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.writer = writer
        self.track_grad_norm = track_grad_norm
        self.health = list(health)
        self.advisor = advisor
        self.on_event = on_event
        self.config = forecaster_config or ForecasterConfig(
            fit=FitConfig(law=law, lam=lam), level=level, refit_every=refit_every
        )
        self.verbose = verbose

        self.monitor: RunMonitor | None = None
        self.stopped_at: int | None = None
        self.stop_reason: str | None = None
        self.errors: dict[str, str] = {}
        self._pending_state: dict[str, Any] | None = None
        self._pending_obs: dict[str, list[float]] | None = None
        self._buffer: DeviceBuffer | None = None
        self._step = 0
        self._acc: torch.Tensor | float | None = None
        self._micro = 0
        self._lr: float = math.nan
        self._gnorm: torch.Tensor | None = None
        self._steps: list[int] = []
        self._lrs: list[float] = []
        self._present: list[bool] = []
        self._plan_key: tuple[Any, ...] | None = None
        self._is_zero = True
        self._warned_no_loss = False
        self._seen_global = 0
        self._flushed_global = 0

    @property
    def state_key(self) -> str:
        # The target may change between a run and its resume; the history still belongs to the same run.
        return self._generate_state_key(param_group=self.param_group)

    @property
    def forecast(self) -> Forecast | None:
        """The latest forecast (``None`` before the first refit)."""
        return None if self.monitor is None else self.monitor.forecaster.latest

    # ------------------------------------------------------------- guarding
    def _guard(self, part: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn``; report an exception once, switch ``part`` off, and let training go on."""
        return guarded_call(self.errors, part, fn, args, self._report)

    def _report(self, part: str, detail: str) -> None:
        msg = f"LossForecast: {part} failed ({detail}); it is switched off for this run"
        self.errors[part] = msg
        if self._is_zero:
            log.warning(msg, exc_info=True)
            # Blame the code that called _guard, three frames up through guarded_call.
            warnings.warn(msg, RuntimeWarning, stacklevel=4)

    # ------------------------------------------------------------- planning
    def _total_steps(self, trainer: pl.Trainer) -> int | None:
        if self.total_steps is not None:
            return self.total_steps
        if self.schedule is not None:
            return len(self.schedule)
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        est = trainer.estimated_stepping_batches
        return int(est) if est is not None and math.isfinite(est) else None

    def _scheduler_plan(self, trainer: pl.Trainer) -> tuple[list[Any], int]:
        """The schedulers driving the first optimizer and how many updates pass between their steps."""
        opt = trainer.optimizers[0]
        configs = [c for c in trainer.lr_scheduler_configs if getattr(c.scheduler, "optimizer", None) is opt]
        acc = max(int(trainer.accumulate_grad_batches), 1)
        every = 1
        for c in configs:
            if c.interval == "epoch":
                per_epoch = max(math.ceil(trainer.num_training_batches / acc), 1)
                every = max(every, per_epoch * c.frequency)
            else:
                every = max(every, c.frequency // math.gcd(c.frequency, acc))
        return [c.scheduler for c in configs], every

    def _plan(self, trainer: pl.Trainer, steps_done: int) -> None:
        """Set the planned schedule: the LRs used so far, then the look-ahead from the scheduler(s)."""
        assert self.monitor is not None
        total = self._total_steps(trainer)
        if total is None:
            raise ValueError("the run's length is unknown: set max_steps or pass total_steps=")
        if self.schedule is not None:
            if len(self.schedule) != total and self._is_zero:
                warnings.warn(
                    f"LossForecast: schedule= has {len(self.schedule)} steps but the trainer runs {total}; "
                    "forecasting for the schedule's length",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.monitor.set_schedule(self.schedule)
            self._plan_key = ("override", total)
            return
        schedulers, every = self._scheduler_plan(trainer)
        opt = trainer.optimizers[0]
        future = lookahead_lrs(
            opt, schedulers, total, steps_done=steps_done, group=self.param_group, step_every=every
        )
        past = np.empty(steps_done)
        old = self.monitor.forecaster.schedule
        if steps_done:
            if old is not None and len(old) >= steps_done:
                past[:] = old[:steps_done]
            else:
                # Resumed without this callback's state: the past LRs are unknown; the current one stands in.
                past[:] = future[0] if future.size else opt.param_groups[self.param_group]["lr"]
                if self._is_zero:
                    warnings.warn(
                        "LossForecast: no record of the LRs before this resume; assuming the current LR",
                        RuntimeWarning,
                        stacklevel=2,
                    )
        lrs = np.concatenate([past, future])
        # Schedulers may hit an LR of exactly 0 (a warm-up's first update, a decay to zero); the law is
        # defined on positive LRs, and a vanishing one changes nothing it predicts.
        floor = 1e-12 * float(np.max(lrs, initial=0.0)) or 1e-12
        lrs = np.maximum(lrs, floor)
        self.monitor.set_schedule(lrs)
        self._plan_key = (tuple(id(s) for s in schedulers), every, total)

    def _replan_if_needed(self, trainer: pl.Trainer) -> None:
        """Re-plan when the schedulers or run length changed, or the LRs used left the plan."""
        assert self.monitor is not None
        if self.schedule is not None:
            return
        schedulers, every = self._scheduler_plan(trainer)
        key = (tuple(id(s) for s in schedulers), every, self._total_steps(trainer))
        planned = self.monitor.forecaster.schedule
        drift = False
        if planned is not None and self._steps:
            idx = np.asarray(self._steps) - 1
            used = np.asarray(self._lrs)
            # An LR of exactly 0 (a warm-up's first update) is stored as a tiny positive value: skip it.
            ok = (idx < len(planned)) & np.isfinite(used) & (used > 0)
            atol = 1e-9 * float(np.max(planned))
            drift = bool(np.any(~np.isclose(planned[idx[ok]], used[ok], rtol=_REPLAN_RTOL, atol=atol)))
            if drift:
                fixed = planned.copy()
                fixed[idx[ok]] = used[ok]
                fixed = np.maximum(fixed, 1e-12 * float(np.max(fixed)))
                self.monitor.set_schedule(fixed)
        if drift or key != self._plan_key:
            if self._is_zero and self.verbose:
                rank_zero_info(f"LossForecast: schedule changed at step {self._step}; re-planning")
            self._plan(trainer, self._step)

    # ------------------------------------------------------------- lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._is_zero = trainer.is_global_zero

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._is_zero = trainer.is_global_zero
        self._guard("setup", self._start, trainer)

    def _new_monitor(self) -> RunMonitor:
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
            verbose=self._is_zero and self.verbose,
        )

    def _start(self, trainer: pl.Trainer) -> None:
        self.monitor = self._new_monitor()
        if self._pending_state is not None:
            # A checkpoint from an incompatible version costs the history, not the run.
            self._guard("resume", self.monitor.load_state_dict, self._pending_state)
            self._pending_state = None
            if "resume" in self.errors:
                self.monitor = self._new_monitor()
        self._step = int(trainer.global_step)
        self._seen_global = int(trainer.global_step)
        self._flushed_global = int(trainer.global_step)
        self._buffer = DeviceBuffer(self.flush_every, channels=2 if self.track_grad_norm else 1)
        self._steps, self._lrs, self._present = [], [], []
        self._acc, self._micro = None, 0
        self._guard("schedule look-ahead", self._plan, trainer, self._step)
        if self._pending_obs:
            # Steps buffered but not yet flushed when the checkpoint was taken (rank 0's values).
            obs = self._pending_obs
            self._pending_obs = None
            keep = np.asarray(obs["steps"]) <= self._step
            if keep.any():
                self._guard(
                    "forecaster",
                    self.monitor.flush,
                    FlushBatch(steps=np.asarray(obs["steps"])[keep], loss=np.asarray(obs["loss"])[keep]),
                )
        if self._is_zero and self.writer is not False:
            self._guard("TensorBoard", self._attach_tensorboard, trainer)

    def _attach_tensorboard(self, trainer: pl.Trainer) -> None:
        from scaleforecast.integrations.tensorboard import ADVICE_CHARTS, TensorBoardSink

        assert self.monitor is not None
        extra = ADVICE_CHARTS if self.advisor is not None else None
        if self.writer is not None:
            self.monitor.add_sink(TensorBoardSink(self.writer, layout_extra=extra))
            return
        from lightning.pytorch.loggers import TensorBoardLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                self.monitor.add_sink(TensorBoardSink(logger.experiment, layout_extra=extra))
                return
        from torch.utils.tensorboard import SummaryWriter

        logdir = self.dirpath or Path(trainer.default_root_dir) / "scaleforecast"
        self.monitor.add_sink(
            TensorBoardSink(SummaryWriter(str(logdir)), layout_extra=extra, close_writer=True)
        )
        if self.verbose:
            rank_zero_info(f"LossForecast: TensorBoard logs in {logdir}  (tensorboard --logdir {logdir})")

    # ------------------------------------------------------------- per step
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if "capture" in self.errors:
            return
        self._guard("capture", self._capture, trainer, optimizer)

    def _capture(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> None:
        raw = getattr(optimizer, "_optimizer", optimizer)
        if raw is not trainer.optimizers[0] and optimizer is not trainer.optimizers[0]:
            return
        lr = raw.param_groups[self.param_group]["lr"]
        self._lr = float(lr) if not isinstance(lr, torch.Tensor) or lr.device.type == "cpu" else math.nan
        if self.track_grad_norm:
            self._gnorm = _grad_norm(raw)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._buffer is None:
            return
        if "step" not in self.errors:
            self._guard("step", self._on_batch_end, trainer, pl_module, outputs)
        # The flush cadence follows trainer.global_step, which is the same on every rank, and not this rank's
        # own buffer: a rank whose per-step part failed still joins every collective.
        if trainer.global_step - self._flushed_global >= self.flush_every:
            self._flush_all(trainer)

    def _on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any) -> None:
        assert self._buffer is not None
        loss = _loss_of(outputs)
        if loss is None:
            if not self._warned_no_loss and self._is_zero:
                self._warned_no_loss = True
                warnings.warn(
                    "LossForecast: training_step returned no loss (return the loss tensor or a dict with 'loss'); "
                    "those steps are not observed",
                    RuntimeWarning,
                    stacklevel=2,
                )
        else:
            loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
            self._acc = loss if self._acc is None else self._acc + loss
            self._micro += 1
        if trainer.global_step <= self._step and pl_module.automatic_optimization:
            return  # accumulating: no optimizer step yet
        if not pl_module.automatic_optimization and trainer.global_step == self._seen_global:
            return
        self._seen_global = trainer.global_step
        self._step += 1
        value: torch.Tensor | float | None = None
        if self._acc is not None and self._micro:
            # Automatic optimisation divides each micro-batch loss by accumulate_grad_batches.
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            factor = scale / self._micro
            value = self._acc if factor == 1.0 else self._acc * factor
        if self.track_grad_norm:
            self._buffer.push(value, self._gnorm)
        else:
            self._buffer.push(value)
        self._steps.append(self._step)
        self._lrs.append(self._lr)
        self._present.append(value is not None)
        self._acc, self._micro, self._lr, self._gnorm = None, 0, math.nan, None

    # ------------------------------------------------------------- flush
    def _flush_all(self, trainer: pl.Trainer) -> None:
        """Flush on every rank. Errors are reported once but never switch the flush off, since the other
        ranks would then wait alone in the next collective."""
        self._flushed_global = trainer.global_step
        try:
            self._flush(trainer)
        except Exception as exc:
            if isinstance(exc, TrainingHealthError):
                raise
            if "flush" not in self.errors:
                msg = f"LossForecast: a flush failed ({type(exc).__name__}: {exc}); training goes on"
                self.errors["flush"] = msg
                if self._is_zero:
                    log.warning(msg, exc_info=True)
                    warnings.warn(msg, RuntimeWarning, stacklevel=2)

    def _flush(self, trainer: pl.Trainer) -> None:
        """One collective for the buffered steps, then the monitor (identical on every rank), then agreement."""
        assert self._buffer is not None
        flushed = self._buffer.flush()
        n = min(flushed.count, len(self._steps))
        steps = np.asarray(self._steps[:n], dtype=np.int64)
        lrs = np.asarray(self._lrs[:n], dtype=float)
        # Steps whose training_step returned no loss were pushed as NaN placeholders (so every rank flushes
        # the same count); they are not observations.
        seen = np.asarray(self._present[:n], dtype=bool)
        self._guard("schedule look-ahead", self._replan_if_needed, trainer)
        self._steps, self._lrs, self._present = [], [], []
        stop = False
        if self.monitor is not None and seen.any():
            batch = FlushBatch(
                steps=steps[seen],
                loss=flushed.mean[0][seen],
                loss_max=flushed.max[0][seen] if trainer.world_size > 1 else None,
                grad_norm=flushed.mean[1][seen] if self.track_grad_norm else None,
                lrs=lrs[seen],
            )
            result = self._guard("forecaster", self.monitor.flush, batch)
            if result is not None:
                stop = result.stop
                if result.forecast is not None and self.verbose and self._is_zero:
                    self._print(result.forecast, int(steps[-1]))
        # Every rank takes part, whatever happened above, so that nobody waits on a collective alone.
        stop = trainer.strategy.reduce_boolean_decision(bool(stop), all=False)
        if stop and self.stopped_at is None:
            self.stopped_at = int(trainer.global_step)
            reason = self.monitor.stop_reason if self.monitor is not None else None
            self.stop_reason = reason or "another rank decided to stop"
            trainer.should_stop = True
            if self._is_zero:
                rank_zero_info(f"LossForecast: stopping at step {self.stopped_at}: {self.stop_reason}")

    def _print(self, forecast: Forecast, step: int) -> None:
        final = forecast.final
        if final is None:
            return
        rank_zero_info(
            f"LossForecast step {step}: final loss {final.loss:.4f} "
            f"[{final.lower:.4f}, {final.upper:.4f}] at step {forecast.final_step} ({forecast.status.value})"
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._buffer is not None and trainer.global_step > self._flushed_global:
            self._flush_all(trainer)
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self.monitor is not None:
            self._guard("TensorBoard", self.monitor.close)

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Monitor state (history, fit, schedule, stop record) plus rank 0's not-yet-flushed steps."""
        pending: dict[str, list[float]] | None = None
        if self._buffer is not None and len(self._buffer):
            loss = self._buffer.peek()[0].tolist()
            keep = [i for i in range(min(len(loss), len(self._steps))) if self._present[i]]
            pending = {"steps": [self._steps[i] for i in keep], "loss": [loss[i] for i in keep]}
        monitor = self.monitor.state_dict() if self.monitor is not None else self._pending_state
        return {
            "version": 1,
            "monitor": monitor,
            "pending": pending,
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "target_loss": self.target_loss,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != 1:
            raise ValueError(f"unsupported LossForecast state version {state_dict.get('version')!r}")
        self._pending_state = state_dict.get("monitor")
        self._pending_obs = state_dict.get("pending")
        self.stopped_at = state_dict.get("stopped_at")
        self.stop_reason = state_dict.get("stop_reason")
