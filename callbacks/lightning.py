"""Lightning callback: forecast the run's final loss while it trains, and stop runs that cannot reach a target.

Usage::

    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from scaleforecast.callbacks import LossForecast

    trainer = L.Trainer(
        max_steps=20_000,
        callbacks=[LossForecast(target_loss=3.1)],
        logger=TensorBoardLogger("runs"),
    )
    trainer.fit(model)          # then: tensorboard --logdir runs

What it observes: one value per optimizer step, the mean training loss of that step (Lightning divides the
loss in ``outputs["loss"]`` by ``accumulate_grad_batches``; the callback undoes that and averages the micro-
batches of each step). ``training_step`` must return the loss tensor or a dict with ``"loss"``; under manual
optimisation, return the loss as well (one observation per batch that stepped the first optimizer).

Everything else (device buffer, flushes, the agreement across ranks through the trainer's strategy, the
planned schedule looked ahead from the LR scheduler(s) of the first optimizer, TensorBoard through the
trainer's ``TensorBoardLogger`` when there is one, checkpointed state) is the shared
:class:`~scaleforecast.integrations.session.TrainingSession`. Under ``ddp_spawn`` the callback object in the
launching process shows rank 0's result after ``fit``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from scaleforecast.integrations.arguments import ForecastArgs, check_arguments
from scaleforecast.integrations.distributed import TorchCollectives, dist_ready
from scaleforecast.integrations.planner import LRSource
from scaleforecast.integrations.session import SessionFace, TrainingSession, UpdateCounter
from typing_extensions import Unpack

from scaleforecast.sinks import MetricsSink

__all__ = ["LossForecast"]


def _loss_of(outputs: Any) -> torch.Tensor | float | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        value = outputs.get("loss")
        if isinstance(value, (torch.Tensor, float, int)):
            return value
    return None


class _StrategyCollectives(TorchCollectives):
    """The session's collectives: ``torch.distributed`` when the strategy runs on it (DDP, FSDP, DeepSpeed),
    else the strategy's own (XLA); the agreement always through the strategy."""

    def __init__(self, trainer: pl.Trainer) -> None:
        super().__init__()
        self.strategy = trainer.strategy
        self.rank, self.world_size = trainer.global_rank, trainer.world_size
        if not dist_ready():
            self.device = trainer.strategy.root_device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if dist_ready() or self.world_size == 1:
            return super().all_gather(tensor)
        return self.strategy.all_gather(tensor.to(self.device)).reshape(-1, *tensor.shape)

    def any(self, flag: bool) -> bool:
        return bool(self.strategy.reduce_boolean_decision(bool(flag), all=False))


def _lr_source(trainer: pl.Trainer, group: int) -> LRSource:
    """The first optimizer, its schedulers, and how many updates pass between their steps (under manual
    optimization Lightning steps no scheduler and ignores ``interval``: the module steps it, taken to be once
    per update; a plan that turns out wrong is re-planned from the LRs used)."""
    opt = trainer.optimizers[0]
    configs = [c for c in trainer.lr_scheduler_configs if getattr(c.scheduler, "optimizer", None) is opt]
    acc = max(int(trainer.accumulate_grad_batches), 1)
    every = 1
    manual = not trainer.lightning_module.automatic_optimization
    batches = trainer.num_training_batches
    for c in [] if manual else configs:
        if c.interval == "epoch":
            per_epoch = max(math.ceil(batches / acc), 1)
            every = max(every, per_epoch * c.frequency)
        else:
            every = max(every, c.frequency // math.gcd(c.frequency, acc))
    pattern = None
    steps = {c.frequency for c in configs}
    step_only = {c.interval for c in configs} == {"step"}
    if not manual and step_only and len(steps) == 1 and math.isfinite(batches) and batches > 0:
        # Lightning counts a step scheduler's frequency in batches from each epoch's start: the update ending
        # at batch m of an epoch steps it when m is a multiple of the frequency (an epoch's last update may
        # end early, at its last batch)
        (freq,) = steps
        ends = np.minimum(np.arange(1, math.ceil(batches / acc) + 1) * acc, int(batches))
        pattern = tuple(bool(m % freq == 0) for m in ends)
    return LRSource(opt, [c.scheduler for c in configs], group=group, step_every=every, epoch_pattern=pattern)


def _run_length(trainer: pl.Trainer) -> int | None:
    """The updates the run will make: ``max_steps`` or ``max_epochs``, whichever ends it first (Lightning's
    ``estimated_stepping_batches``); ``max_steps`` alone when the epochs' length is unknown (an iterable data
    set makes Lightning estimate -1 or inf); ``None`` when neither is known."""
    steps = int(trainer.max_steps) if trainer.max_steps is not None and trainer.max_steps > 0 else None
    est = trainer.estimated_stepping_batches
    if est is None or not math.isfinite(est) or est <= 0:
        return steps
    return int(est) if steps is None else min(steps, int(est))


def _own_run_dir(trainer: pl.Trainer) -> Path:
    """Where the callback writes when the trainer has no ``TensorBoardLogger``: beside another logger's files
    (a ``CSVLogger``'s version folder), else in the next free ``lightning_logs/version_N`` of
    ``default_root_dir``, where Lightning's own logger would have written: one folder per run (a folder named
    like the package in the working directory would also shadow it on import)."""
    if trainer.loggers and trainer.log_dir:
        return Path(trainer.log_dir) / "scaleforecast"
    root = Path(trainer.default_root_dir) / "lightning_logs"
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()] if root.is_dir() else []
    return root / f"version_{max(taken, default=-1) + 1}"


def _logger_writer(trainer: pl.Trainer) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    return next((lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _other_loggers(trainer: pl.Trainer) -> list[MetricsSink]:
    """The trainer's loggers of other kinds (CSV, W&B, MLflow), each fed the forecast's scalars at Lightning's
    step numbers: the updates before the one logged (its own ``train_loss`` of update 100 is at step 99), so
    that a forecast made after an update shares that update's row."""
    from lightning.pytorch.loggers import TensorBoardLogger

    def at_lightnings_step(
        log: Callable[[dict[str, float], int], Any],
    ) -> Callable[[dict[str, float], int], Any]:
        return lambda metrics, step: log(metrics, step - 1)

    return [
        MetricsSink(at_lightnings_step(lg.log_metrics))
        for lg in trainer.loggers
        if not isinstance(lg, TensorBoardLogger)
    ]


class LossForecast(SessionFace, Callback):
    """Forecast the final training loss with the LR-annealing law; optionally stop when a target is out of reach.

    >>> import lightning as L
    >>> from scaleforecast.callbacks import LossForecast
    >>> forecast = LossForecast(target_loss=3.1)
    >>> trainer = L.Trainer(max_steps=20_000, callbacks=[forecast])
    >>> trainer.fit(model, datamodule)  # doctest: +SKIP

    ``target_loss``: stop once the forecast final loss is above it by more than the forecast's measured error
    allows at ``confidence`` (default 0.98; :func:`scaleforecast.decision.decide_stop`); ``None``: forecast only.
    The other keyword arguments are those of every adapter (:class:`~scaleforecast.integrations.arguments.ForecastArgs`),
    e.g. ``listeners=[SweepStopper()]``, ``writer=False``, ``detectors=[]`` (no health checks). Without a
    ``TensorBoardLogger`` the callback writes under ``dirpath`` (default: ``scaleforecast`` in the other logger's
    version folder, e.g. a ``CSVLogger``'s, else the next free ``lightning_logs/version_N`` in ``default_root_dir``).
    The trainer's other loggers (CSV, W&B, MLflow) get each forecast's scalars (``forecast/final_loss``,
    ``forecast/lower``, ``forecast/upper``, ...) at the step it was made.
    """

    def __init__(self, target_loss: float | None = None, **kwargs: Unpack[ForecastArgs]) -> None:
        super().__init__()
        check_arguments("LossForecast", kwargs)
        self.session = TrainingSession("LossForecast", target_loss, **kwargs)
        self._acc: torch.Tensor | float | None = None
        self._micro = 0
        self._step = 0
        # Under manual optimisation Lightning's global_step counts the steps of every optimizer (two per batch
        # for a GAN): the run is counted in steps of the first optimizer instead, by a hook that cannot fail,
        # so that every rank keeps the same cadence.
        self._manual = False
        self._updates = UpdateCounter()
        # (global_step, updates) at the first update and the update of the next measure, while the steps an update
        # takes are measured (several optimizers under manual optimisation)
        self._length_from: tuple[int, int, int] | None = None
        self._measured = False  # whether the run's length is such a measure

    @property
    def state_key(self) -> str:
        # The target may change between a run and its resume; the history still belongs to the same run.
        return self._generate_state_key(param_group=self.session.config.param_group)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(trainer.global_step)
        self._manual = not pl_module.automatic_optimization
        if self._manual:
            resumed = self.session.resumed_step
            step = step if resumed is None else resumed
            self.session.guard("step", self._updates.attach, trainer.optimizers[0], step)
            # an optimizer without step hooks: count Lightning's global_step (right for one optimizer)
            self._manual = self._updates.attached
        self._step = step
        self._acc, self._micro = None, 0
        group = self.session.config.param_group
        length = self.session.guard("schedule look-ahead", _run_length, trainer)
        n_opt = len(trainer.optimizers)
        self._length_from, self._measured = None, False
        if self._manual and length and n_opt > 1 and trainer.max_steps and length >= trainer.max_steps > 0:
            # max_steps counts every optimizer's steps: first taken as one step of each per update (a GAN's),
            # then measured as the run goes (_measure_length)
            length = math.ceil(trainer.max_steps / n_opt)
            self._length_from = (0, 0, 1)
        self.session.start(
            _StrategyCollectives(trainer),
            step=step,
            run_length=length,
            source=self.session.guard("schedule look-ahead", _lr_source, trainer, group),
            find_writer=lambda: _logger_writer(trainer),
            default_logdir=_own_run_dir(trainer),
            sinks=self.session.guard("loggers", _other_loggers, trainer) or [],
            # fast_dev_run: Lightning logs and checkpoints nothing, and neither does the forecast
            tensorboard=not getattr(trainer, "fast_dev_run", False),
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.session.guard("step", self._on_batch_end, trainer, pl_module, outputs)
        # The cadence follows trainer.global_step (under manual optimisation, the first optimizer's step count),
        # the same on every rank: a rank whose own part failed still joins every collective.
        self.session.tick(self._updates.count if self._manual else int(trainer.global_step))
        if self.session.should_stop:
            trainer.should_stop = True

    def _measure_length(self, trainer: pl.Trainer) -> None:
        """Under manual optimisation with several optimizers ``max_steps`` counts every optimizer's steps, so the
        run's length in updates of the first optimizer is ``max_steps`` over the steps an update takes. Measured
        from the first update to the 2nd, 3rd, 5th, 9th, ... (up to the 513th), not at the first alone: the
        batch of a GAN's first update steps both optimizers, the next four its critic only."""
        assert self._length_from is not None
        global1, update1, due = self._length_from
        step, updates = int(trainer.global_step), self._updates.count
        if update1 == 0:  # the first update: the base of the measure
            self._length_from = (step, updates, updates + 1)
            return
        if updates < due:
            return
        self._length_from = (
            (global1, update1, update1 + 2 * (updates - update1)) if updates - update1 < 512 else None
        )
        ratio = (step - global1) / (updates - update1)
        if ratio > 0 and trainer.max_steps is not None and trainer.max_steps > 0:
            self._measured = True
            self.session.set_run_length(updates + math.ceil((trainer.max_steps - step) / ratio), self._step)

    def _on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any) -> None:
        loss = _loss_of(outputs)
        # under manual optimisation a batch that did not step the first optimizer (a GAN's critic-only batch)
        # owes no loss
        if loss is None:
            if not (self._manual and self._updates.count == self._step):
                self.session.warn(
                    "training_step returned no loss (return the loss tensor or a dict with 'loss'); "
                    "those steps are not observed"
                )
        else:
            loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
            self._acc = loss if self._acc is None else self._acc + loss
            self._micro += 1
        automatic = pl_module.automatic_optimization
        if not self._manual:
            if trainer.global_step <= self._step:
                return  # no optimizer step yet (accumulating, or a manual step that did not step)
            self._step = int(trainer.global_step)
        else:
            if self._updates.count == self._step:
                return  # the first optimizer did not step in this batch
            self._step = self._updates.count
            if self._length_from is not None:
                self._measure_length(trainer)
        value: torch.Tensor | float | None = None
        if self._acc is not None and self._micro:
            # Automatic optimisation divides each micro-batch loss by accumulate_grad_batches.
            factor = (trainer.accumulate_grad_batches if automatic else 1) / self._micro
            value = self._acc if factor == 1.0 else self._acc * factor
        self.session.record(self._step, value)
        self._acc, self._micro = None, 0

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # before Lightning clips the gradients (gradient_clip_val): a clipped norm never exceeds the clip
        self.session.guard("gradient norm", self.session.grad_norm_before_step, optimizer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._updates.detach()
        if self._measured and trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            # the run reached max_steps: it finished, at however many updates that made (the measure is good to
            # an update: the optimizers' steps after the last update depend on where the run's cycle ends)
            self.session.guard("step", self.session.set_run_length, self._updates.count, self._updates.count)
        self.session.finish(self._updates.count if self._manual else int(trainer.global_step))

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._updates.detach()
        self.session.abort()
