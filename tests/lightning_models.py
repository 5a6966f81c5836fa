"""Tiny Lightning modules and data for the callback tests (CPU, a few hundred parameters)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


def cpu_trainer(max_steps: int, callbacks: list[Any], root: Any = None, **kw: Any) -> pl.Trainer:
    """A quiet single-process CPU trainer for the callback tests: no logger, checkpoints, progress bar or model
    summary unless ``kw`` says otherwise."""
    kw = {"logger": False, "enable_checkpointing": False, "devices": 1, **kw}
    root_dir = None if root is None else str(root)
    return pl.Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=root_dir,
        **kw,
    )


def regression_data(n: int = 4096, dim: int = 16, noise: float = 0.5, seed: int = 0) -> TensorDataset:
    """``y = x @ w + noise``: the loss falls towards ``noise**2`` along a smooth, law-like curve."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.randn(dim, 1, generator=g)
    y = x @ w + noise * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class TinyRegressor(pl.LightningModule):
    """A linear layer under SGD with a warm-up + cosine schedule; records what the tests compare against.

    ``raw_losses``: every micro-batch loss (host floats, for the tests only); ``used_lrs``: the LR in the
    optimizer at each ``optimizer.step()``; ``loss_offset`` shifts the reported loss (to make ranks differ).
    """

    def __init__(
        self,
        dim: int = 16,
        lr: float = 0.05,
        total: int = 60,
        warmup: int = 5,
        scheduler: str = "cosine",
        loss_offset: float = 0.0,
        rank_offset: float = 0.0,
        batch_size: int = 32,
        dataset: TensorDataset | None = None,
    ) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(dim, 1)
        self.lr, self.total, self.warmup, self.scheduler_kind = lr, total, warmup, scheduler
        self.loss_offset = loss_offset
        self.rank_offset = rank_offset
        self.batch_size = batch_size
        self.dataset = dataset or regression_data(dim=dim)
        self.raw_losses: list[float] = []
        self.used_lrs: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        offset = self.loss_offset + self.rank_offset * self.global_rank
        loss = torch.nn.functional.mse_loss(self.layer(x), y) + offset
        self.raw_losses.append(float(loss.detach()))
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        self.used_lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step(closure=optimizer_closure)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.scheduler_kind == "none":
            return opt
        if (
            self.scheduler_kind == "lambda"
        ):  # warm-up, then linear decay, as one LambdaLR (transformers' kind)
            w, t = self.warmup, self.total
            lam = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda k: (k + 1) / w if k < w else max(0.01, (t - k) / max(t - w, 1))
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": lam, "interval": "step"}}
        warm = torch.optim.lr_scheduler.LinearLR(opt, 0.1, 1.0, total_iters=self.warmup)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=self.total - self.warmup, eta_min=self.lr * 0.01
        )
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[self.warmup])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(1)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, generator=gen)


class LitRegression(pl.LightningModule):
    """The shared regression of ``adapter_kit`` as a LightningModule (module level: ``ddp_spawn`` pickles it).

    ``shift`` is added to every loss and ``offset`` times its rank number to each rank's; ``used`` records the
    LR of each update.
    """

    def __init__(
        self, steps: int, batch: int, shift: float = 0.0, offset: float = 0.0, nan_from: int | None = None
    ) -> None:
        from adapter_kit import Regression

        super().__init__()
        self.net = Regression(nan_from=nan_from)
        self.steps, self.batch, self.shift, self.offset = steps, batch, shift, offset
        self.used: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.net.offset = self.shift + self.offset * self.global_rank
        return self.net(**batch)["loss"]

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        self.used.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step(closure=optimizer_closure)

    def configure_optimizers(self) -> Any:
        from adapter_kit import optimizer_and_scheduler

        opt, sched = optimizer_and_scheduler(self, self.steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        from adapter_kit import Pairs

        gen = torch.Generator().manual_seed(1)
        return DataLoader(Pairs(), batch_size=self.batch, shuffle=True, generator=gen)


class HalveLRAt(pl.Callback):
    """Halves the LR behind the scheduler's back after update ``at`` (a manual intervention mid-run)."""

    def __init__(self, at: int | None) -> None:
        self.at = at

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= 0.5
