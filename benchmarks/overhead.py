"""Step-time overhead of the LossForecast callback in a real Lightning fit (CPU), side by side in one run.

Runs the same small model and data with and without the callback, interleaved (A B, B A, ...) so that load on
the machine hits both alike, and prints the median time per optimizer step of each, their ratio, and the time
spent inside the callback's own hooks (a direct measure that machine noise does not blur). Target: ratio <= 1.01.

    python benchmarks/overhead.py                      # defaults: 400 steps x 3 repeats
    python benchmarks/overhead.py --sync-check         # on a CUDA machine
    python benchmarks/overhead.py --steps 1000 --width 768
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from scaleforecast.callbacks import LossForecast
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class MLP(pl.LightningModule):
    """A 3-layer MLP regressor under AdamW with a warm-up + cosine schedule."""

    def __init__(self, width: int, steps: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1)
        )
        self.steps = steps

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
        warm = torch.optim.lr_scheduler.LinearLR(opt, 0.01, 1.0, total_iters=max(self.steps // 20, 1))
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.steps)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[max(self.steps // 20, 1)])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class StepClock(Callback):
    """Wall time from the start of step ``skip`` to the end of training (warm-up steps excluded)."""

    def __init__(self, skip: int = 20) -> None:
        self.skip, self.t0, self.t1, self.n = skip, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.skip and self.t0 == 0.0:
            self.t0 = time.perf_counter()
            self.n = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.t1 = time.perf_counter()
        self.n = trainer.global_step - self.n

    @property
    def per_step(self) -> float:
        return (self.t1 - self.t0) / max(self.n, 1)


class TimedLossForecast(LossForecast):
    """LossForecast with a stopwatch around each of its per-step hooks.

    With ``sync_check`` (CUDA only) the hooks run under ``torch.cuda.set_sync_debug_mode("error")`` on every
    step that is not a flush step: a host-device sync there raises, the callback reports it and switches the
    failing part off, so ``errors`` stays empty only if the per-step path never syncs.
    """

    spent = 0.0
    sync_check = False

    def _timed(self, hook: Any, trainer: pl.Trainer, *args: Any) -> None:
        flushing = (
            trainer.global_step % self.session.config.flush_every == 0
        ) and hook.__name__ == "on_train_batch_end"
        strict = self.sync_check and not flushing
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        t = time.perf_counter()
        try:
            hook(trainer, *args)
        finally:
            self.spent += time.perf_counter() - t
            if strict:
                torch.cuda.set_sync_debug_mode("default")

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._timed(super().on_before_optimizer_step, trainer, *args)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._timed(super().on_train_batch_end, trainer, *args)


def run(
    steps: int, width: int, batch: int, with_callback: bool, device: str = "cpu", sync_check: bool = False
) -> tuple[float, float, int, dict[str, str]]:
    """One fit; returns (seconds per step, seconds inside the callback per step, refits, callback errors)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 64, 64, generator=g)
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(batch * 64, 1, generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    forecast = TimedLossForecast(writer=False, verbose=False) if with_callback else None
    if forecast is not None:
        forecast.sync_check = sync_check
        callbacks.append(forecast)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator=device,
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(MLP(width, steps), loader)
    if forecast is None:
        return clock.per_step, 0.0, 0, {}
    refits = forecast.monitor.refits if forecast.monitor else 0
    return clock.per_step, forecast.spent / steps, refits, forecast.errors


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sync-check", action="store_true", help="on CUDA: show the per-step path makes no host-device sync"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    if args.sync_check:
        if not torch.cuda.is_available():
            raise SystemExit("--sync-check needs a CUDA device")
        *_, errors = run(args.steps, args.width, args.batch, True, device="cuda", sync_check=True)
        verdict = "no host-device sync outside flush steps" if not errors else f"SYNC FOUND: {errors}"
        print(f"sync check over {args.steps} CUDA steps (sync_debug_mode='error' off flush steps): {verdict}")
        return

    base, with_cb, inside, refits = [], [], [], 0
    run(60, args.width, args.batch, True)  # warm caches and imports once
    for i in range(args.repeats):
        # A B, then B A: cancels drift in the machine's load and any cost of running first
        order = (False, True) if i % 2 == 0 else (True, False)
        for with_callback in order:
            t, spent, n_refits, _ = run(args.steps, args.width, args.batch, with_callback)
            if with_callback:
                with_cb.append(t)
                inside.append(spent)
                refits = n_refits
            else:
                base.append(t)
    b, w, s = statistics.median(base), statistics.median(with_cb), statistics.median(inside)
    print(
        f"\nMLP width {args.width}, batch {args.batch}, {args.steps} steps x {args.repeats} repeats (interleaved A B / B A), "
        f"{args.threads} threads; {refits} refits per run"
    )
    print(f"{'variant':<26}{'ms / step':>12}")
    print(f"{'without callback':<26}{1e3 * b:>12.3f}")
    print(f"{'with LossForecast':<26}{1e3 * w:>12.3f}")
    print(f"{'  of which in its hooks':<26}{1e3 * s:>12.3f}")
    pairs = statistics.median(wi / bi for wi, bi in zip(with_cb, base, strict=True))
    print(f"\nratio with / without (median of the interleaved pairs): {pairs:.4f}")
    print(f"ratio from the time inside the hooks:                  {(b + s) / b:.4f}   (target <= 1.01)")


if __name__ == "__main__":
    main()
