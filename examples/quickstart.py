"""Quickstart: the final loss of a real training run, forecast while it trains (CPU, about 30 seconds).

A byte-level causal transformer learns to continue Python source code, taken from the Python standard library
on this machine (no downloads), under a warm-up + cosine schedule (a real torch LR scheduler), with the
``LossForecast`` Lightning callback and a TensorBoard logger. It trains twice, from the same seed:

1. with a target loss the model cannot reach in its budget: the callback's stop rule stops it early;
2. without a target, to the end: the forecasts it made along the way are compared with the loss it reached.

    python examples/quickstart.py                  # both runs, then the comparison
    python examples/quickstart.py --steps 1000     # a longer run
    tensorboard --logdir runs/quickstart           # the forecast, its band, the target, the stop, the figures
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from scaleforecast.callbacks import LossForecast
from torch import nn
from torch.utils.data import DataLoader, Dataset

from scaleforecast.results import Forecast
from scaleforecast.sinks import CurveSnapshot
from scaleforecast.tensorboard_sink import draw_snapshot

LEVEL = 0.8  # coverage of the printed and drawn band


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
        return nn.functional.cross_entropy(self(x).reshape(-1, 256), y.reshape(-1))

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


@dataclass
class Seen:
    """What one run showed: each step's loss, and each new forecast of the final loss with its band."""

    losses: list[float] = field(default_factory=list)
    forecasts: list[tuple[int, float, float, float]] = field(default_factory=list)
    halfway: CurveSnapshot | None = None  # the forecaster's picture when the forecast made halfway was new


class ForecastBar(ProgressBar):
    """Lightning's progress bar for this demo: optimizer steps out of the run's length (Lightning's own bar
    counts epochs, and shows "Epoch 0/-2" for a run sized in steps), the loss, and the forecast of the final
    loss with its band each time the callback refits it. On a terminal the current step is redrawn in place."""

    def __init__(self, forecast: LossForecast, seen: Seen) -> None:
        super().__init__()
        self.forecast, self.seen = forecast, seen
        self.enabled = True
        self.live = sys.stdout.isatty()
        self._last: Forecast | None = None
        self._pending: list[torch.Tensor] = []

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled:
            band = f"{round(100 * LEVEL)}% band"
            print(f"  {'step':>9}  {'loss':>6}   forecast of the final loss [{band}]")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._pending.append(outputs["loss"].detach())
        step, total = trainer.global_step, trainer.max_steps
        fc = self.forecast.forecast
        new = fc is not None and fc is not self._last and fc.final is not None
        if new or step == total or step % 10 == 0:
            self.seen.losses.extend(torch.stack(self._pending).tolist())
            self._pending.clear()
        if not self.enabled:
            return
        recent = float(np.mean(self.seen.losses[-25:])) if self.seen.losses else math.nan
        if new:
            assert fc is not None and fc.final is not None
            self._last = fc
            f = fc.final
            self.seen.forecasts.append((step, f.loss, f.lower, f.upper))
            if self.seen.halfway is None and step >= total // 2:
                self.seen.halfway = self.forecast.monitor.snapshot(step)
            start = "\r" if self.live else ""
            print(
                f"{start}  {step:>4}/{total:<4}  {recent:6.3f}   {f.loss:.3f}  [{f.lower:.3f}, {f.upper:.3f}]"
            )
        elif self.live and step % 10 == 0:
            print(f"\r  {step:>4}/{total:<4}  {recent:6.3f}", end="", flush=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending:
            self.seen.losses.extend(torch.stack(self._pending).tolist())
            self._pending.clear()
        if self.enabled and self.live:
            print("\r" + " " * 40 + "\r", end="", flush=True)


def train(
    args: argparse.Namespace, text: np.ndarray, name: str, target: float | None
) -> tuple[LossForecast, Seen, float]:
    """One run from the seed: the callback (with ``target`` as its stop target), the demo's bar, TensorBoard."""
    pl.seed_everything(args.seed, verbose=False)
    data = Windows(text, args.context, args.steps * args.batch, seed=args.seed)
    loader = DataLoader(data, batch_size=args.batch, shuffle=False)
    model = TinyGPT(args.steps, context=args.context)
    every = max(args.steps // 16, 10)  # 16 looks at the run, each with a refit
    forecast = LossForecast(
        target_loss=target,
        min_fraction=0.25,
        level=LEVEL,
        flush_every=every,
        refit_every=every,
        log_figures_every=2,  # a figure at every second forecast, and one at a stop
        verbose=False,
    )
    seen = Seen()
    # a second demo replaces the first one's logs: TensorBoard shows one run of each kind, not a version per try
    shutil.rmtree(Path(args.out) / name, ignore_errors=True)
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(args.out, name=name),
        callbacks=[forecast, ForecastBar(forecast, seen)],
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=25,
        default_root_dir=args.out,
    )
    t0 = time.perf_counter()
    trainer.fit(model, loader)
    return forecast, seen, time.perf_counter() - t0


def save_png(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).print_png(str(path))


def picture(snapshot: CurveSnapshot, losses: list[float], title: str, actual: float | None = None) -> Any:
    """The forecaster's picture, with every step's observed loss; the actual final loss when known."""
    steps = np.arange(1, len(losses) + 1, dtype=float)
    fig = draw_snapshot(
        replace(snapshot, observed_steps=steps, observed_loss=np.asarray(losses), title=title)
    )
    if actual is not None:
        ax = fig.axes[0]  # the loss axes (a second one holds the LR)
        ax.plot(
            [len(losses)],
            [actual],
            marker="*",
            ms=14,
            color="black",
            ls="",
            label=f"actual final loss {actual:.4f}",
        )
        ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run (default 400)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (default 16)")
    parser.add_argument("--context", type=int, default=64, help="bytes per sequence (default 64)")
    parser.add_argument(
        "--target",
        type=float,
        default=1.5,
        help="run 1's target loss, out of this model's reach (default 1.5)",
    )
    parser.add_argument(
        "--out", default="runs/quickstart", help="TensorBoard log folder (default runs/quickstart)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Lightning's start-up notes and a known deprecation warning of its own are not what this demo is about.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # the demo prints the forecasts and the stop in its own table; the plugin's log says them again
    logging.getLogger("scaleforecast.health").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(does not have many workers|LeafSpec).*")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = stdlib_bytes()
    n_params = sum(p.numel() for p in TinyGPT(args.steps, context=args.context).parameters())
    print(
        f"A {n_params / 1e3:.0f}k-parameter byte-level transformer learns {len(text) / 1e6:.1f} MB of the Python "
        f"standard library's source:\n{args.steps} AdamW steps, warm-up then cosine decay, on CPU. "
        "The LossForecast callback watches it.\n"
    )

    print(f"Run 1: target loss {args.target:g}, which this model cannot reach in {args.steps} steps.")
    stopped, seen1, _ = train(args, text, "1-target", args.target)
    if stopped.stopped_at is not None:
        saved = 1 - stopped.stopped_at / args.steps
        print(f"  stopped at step {stopped.stopped_at} of {args.steps}, {saved:.0%} of its steps saved:")
        print(f"  {stopped.stop_reason}\n")
    else:
        print("  the stop rule did not stop it\n")

    print("Run 2: the same run with no target, trained to the end.")
    _, seen2, t2 = train(args, text, "2-to-the-end", None)
    losses = np.asarray(seen2.losses)
    tail = max(len(losses) // 20, 10)
    actual = float(losses[-tail:].mean())
    print(f"  trained {len(losses)} steps in {t2:.0f} s\n")

    print(f"Forecast against the actual final loss, {actual:.4f} (mean loss of the last {tail} steps):")
    for frac in (0.25, 0.5, 0.75):
        made = [f for f in seen2.forecasts if f[0] <= frac * args.steps]
        if not made:
            continue
        step, mean, lo, hi = made[-1]
        inside = "inside the band" if lo <= actual <= hi else "OUTSIDE the band"
        print(
            f"  made at step {step:>4} ({step / args.steps:4.0%} of the run): {mean:.4f} [{lo:.4f}, {hi:.4f}]"
            f"  error {mean - actual:+.4f}, {inside}"
        )
    if stopped.stopped_at is not None:
        verdict = "indeed out of reach" if actual > args.target else "within reach: that stop was wrong"
        print(f"  run 1's target {args.target:g} was {verdict}: the same run ends at {actual:.4f}.")

    written = []
    if seen2.halfway is not None:
        step = int(seen2.halfway.step)
        fig = picture(
            seen2.halfway,
            seen2.losses,
            f"forecast made at step {step} of {args.steps}, and what happened",
            actual,
        )
        save_png(fig, out / "forecast_band.png")
        written.append(out / "forecast_band.png")
    if stopped.stopped_at is not None and stopped.monitor is not None:
        snap = stopped.monitor.snapshot(stopped.stopped_at)
        if snap is not None:
            title = f"run 1 stopped at step {stopped.stopped_at}: target {args.target:g} out of reach"
            save_png(
                picture(replace(snap, stop_step=stopped.stopped_at), seen1.losses, title),
                out / "early_stop.png",
            )
            written.append(out / "early_stop.png")
    print()
    for path in written:
        print(f"wrote     {path}")
    print(f"view it:  tensorboard --logdir {args.out}")


if __name__ == "__main__":
    main()
