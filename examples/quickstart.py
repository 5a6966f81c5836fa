"""Quickstart: watch the final loss of a small transformer being forecast while it trains (CPU, a few minutes).

A byte-level causal transformer learns to continue Python source code, taken from the Python standard library
on this machine (no downloads). It trains under a warm-up + cosine schedule (a real torch LR scheduler), with
the ``LossForecast`` callback and a TensorBoard logger. The forecast of the final loss is printed as it
converges, then compared with the loss actually reached.

    python examples/quickstart.py                 # ~3 minutes on 2 CPU cores
    python examples/quickstart.py --steps 300     # a quicker look
    tensorboard --logdir runs/quickstart          # the forecast, its band, the figures
"""

from __future__ import annotations

import argparse
import math
import sysconfig
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from scaleforecast.callbacks import LossForecast
from torch import nn
from torch.utils.data import DataLoader, Dataset


def stdlib_bytes(limit: int = 4_000_000) -> np.ndarray:
    """The Python standard library's ``.py`` files, concatenated in a fixed order, as bytes (up to ``limit``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        size += len(data)
        if size >= limit:
            break
    if size < 100_000:
        raise RuntimeError(f"found only {size} bytes of Python source under {root}")
    return np.frombuffer(b"\n".join(chunks)[:limit], dtype=np.uint8)


class Windows(Dataset):
    """Random ``context + 1``-byte windows of the text, one per index, reproducible from the seed."""

    def __init__(self, text: np.ndarray, context: int, length: int, seed: int = 0) -> None:
        self.text = torch.from_numpy(text.astype(np.int64))
        self.context, self.length = context, length
        self.offsets = torch.randint(
            0, len(text) - context - 1, (length,), generator=torch.Generator().manual_seed(seed)
        )

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        o = int(self.offsets[i])
        w = self.text[o : o + self.context + 1]
        return w[:-1], w[1:]


class TinyGPT(pl.LightningModule):
    """A byte-level causal transformer (pre-norm blocks, learned positions) with warm-up + cosine AdamW."""

    def __init__(
        self, steps: int, context: int = 64, dim: int = 64, layers: int = 2, heads: int = 4, lr: float = 3e-3
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 256)
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(context), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        h = self.blocks(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
        return self.head(self.norm(h))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x).reshape(-1, 256), y.reshape(-1))
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=0.01, betas=(0.9, 0.95))
        warmup = max(hp.steps // 20, 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(hp.steps - warmup, 1)
            return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def forecast_history(logdir: str) -> list[tuple[int, float, float, float]]:
    """(step, forecast, lower, upper) as written to TensorBoard, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    if "forecast/final_loss" not in acc.Tags()["scalars"]:
        return []
    lows = {e.step: e.value for e in acc.Scalars("forecast/lower")}
    ups = {e.step: e.value for e in acc.Scalars("forecast/upper")}
    return [(e.step, e.value, lows[e.step], ups[e.step]) for e in acc.Scalars("forecast/final_loss")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--context", type=int, default=64, help="bytes per sequence (default 64)")
    parser.add_argument("--target", type=float, default=None, help="stop early if this loss is out of reach")
    parser.add_argument(
        "--out", default="runs/quickstart", help="TensorBoard log folder (default runs/quickstart)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    text = stdlib_bytes()
    data = Windows(text, args.context, args.steps * args.batch, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    model = TinyGPT(args.steps, context=args.context)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{len(text) / 1e6:.1f} MB of stdlib source, {n_params / 1e3:.0f}k-parameter transformer, {args.steps} steps"
    )

    forecast = LossForecast(
        target_loss=args.target,
        flush_every=25,
        refit_every=max(args.steps // 15, 25),
        log_figures_every=2,
        min_fraction=0.3,
    )
    logger = TensorBoardLogger(args.out, name="tinygpt")
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[forecast],
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=25,
        default_root_dir=args.out,
    )
    t0 = time.perf_counter()
    trainer.fit(model, loader)
    elapsed = time.perf_counter() - t0
    logger.experiment.flush()

    print(f"\ntrained {trainer.global_step} steps in {elapsed:.0f} s")
    history = forecast_history(logger.log_dir)
    if history:
        print(f"\n{'step':>6}  {'forecast of the final loss':>28}")
        for step, mean, lo, hi in history:
            print(f"{step:>6}  {mean:>9.4f}  [{lo:.4f}, {hi:.4f}]")
    raw = forecast.monitor.forecaster.observations() if forecast.monitor else None
    final_fc = forecast.forecast.final if forecast.forecast is not None else None
    if raw is not None and len(raw.y):
        tail = max(trainer.global_step // 20, 10)
        keep = raw.end > trainer.global_step - tail
        actual = float(np.average(raw.y[keep], weights=raw.count[keep]))
        print(f"\nactual final loss (mean of the last {tail} steps): {actual:.4f}")
        if forecast.stopped_at is not None:
            print(f"stopped early at step {forecast.stopped_at}: {forecast.stop_reason}")
        elif history:
            # the forecast made with about half of the run seen, the honest test of the method
            half = min(history, key=lambda h: abs(h[0] - trainer.global_step // 2))
            print(
                f"forecast made at step {half[0]}: {half[1]:.4f} [{half[2]:.4f}, {half[3]:.4f}]"
                f"  (error {half[1] - actual:+.4f})"
            )
        if final_fc is not None:
            print(f"last forecast: {final_fc.loss:.4f} [{final_fc.lower:.4f}, {final_fc.upper:.4f}]")
    print(f"\nview it:  tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
