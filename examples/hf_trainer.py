"""Forecast a Hugging Face Trainer run's final loss while it trains (CPU, no downloads, ~1-2 minutes).

A tiny GPT-2, built from a config, learns byte-level Python source (the standard library's own files, read
at run time) with a warm-up + cosine schedule. ``HFLossForecast`` watches the run; HF's TensorBoard callback
and the forecast share one run directory. At the end the forecasts made along the way are printed against
the actual final loss.

    python examples/hf_trainer.py                 # then: tensorboard --logdir runs/hf_trainer
    python examples/hf_trainer.py --steps 200     # shorter
"""

from __future__ import annotations

import argparse
import logging
import sysconfig
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from scaleforecast.callbacks import HFLossForecast
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

SEQ_LEN = 64


class StdlibBytes(Dataset):
    """Non-overlapping byte windows of the standard library's ``.py`` sources; labels = inputs (GPT-2 shifts)."""

    def __init__(self, n_bytes: int, seq_len: int = SEQ_LEN) -> None:
        root = Path(sysconfig.get_paths()["stdlib"])
        data = bytearray()
        for path in sorted(root.glob("*.py")):
            data += path.read_bytes()
            if len(data) >= n_bytes:
                break
        ids = torch.frombuffer(data[:n_bytes], dtype=torch.uint8).long()
        n = ids.numel() // seq_len
        self.rows = ids[: n * seq_len].view(n, seq_len)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i], "labels": self.rows[i].clone()}


class ForecastLog(TrainerCallback):
    """Remembers each new final-loss forecast of ``watch`` and every logged window mean of the training loss."""

    def __init__(self, watch: HFLossForecast) -> None:
        self.watch = watch
        self.forecasts: list[tuple[int, float, float, float]] = []
        self.logged: list[tuple[int, float]] = []

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self.logged.append((state.global_step, float(logs["loss"])))
        fc = self.watch.forecast
        if (
            fc is not None
            and fc.final is not None
            and (not self.forecasts or self.forecasts[-1][0] != fc.fitted_at_step)
        ):
            self.forecasts.append((fc.fitted_at_step, fc.final.loss, fc.final.lower, fc.final.upper))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps (default 400)")
    parser.add_argument(
        "--out", default="runs/hf_trainer", help="Trainer output_dir (TensorBoard under runs/)"
    )
    parser.add_argument("--target", type=float, default=None, help="stop early if this loss is out of reach")
    ns = parser.parse_args()

    # warnings and alerts of the health checks; the forecast lines and the stop are the callback's own output
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.manual_seed(0)
    torch.set_num_threads(2)

    config = GPT2Config(
        vocab_size=256, n_positions=SEQ_LEN, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=ns.out,
        max_steps=ns.steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=max(ns.steps // 20, 1),
        weight_decay=0.0,
        logging_steps=10,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    watch = HFLossForecast(target_loss=ns.target, refit_every=max(ns.steps // 12, 10), flush_every=10)
    record = ForecastLog(watch)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=StdlibBytes(n_bytes=ns.steps * 8 * SEQ_LEN + SEQ_LEN),
        callbacks=[watch, record],
    )
    # HF would print every log dict; the forecast lines are the ones to watch here.
    trainer.remove_callback(PrinterCallback)
    start = time.time()
    trainer.train()
    elapsed = time.time() - start

    steps = trainer.state.global_step
    # The actual final loss, as a mean of HF's logged window means over the last 10% of the run: a single
    # window of a tiny-batch run is too noisy to judge a forecast by (the cosine tail is flat anyway).
    tail = [loss for step, loss in record.logged if step > steps - max(steps // 10, args.logging_steps)]
    actual = sum(tail) / len(tail)
    print(f"\ntrained {steps} steps in {elapsed:.0f} s; loss resolution: {watch.mode}")
    print(f"actual final loss (mean over the last {len(tail) * args.logging_steps} steps): {actual:.4f}")
    # a forecast is fitted on the steps up to one flush and published at the next (the step the console shows)
    print(f"{'fitted up to step':>22} {'forecast':>9} {'band (80%)':>19} {'error':>8}")
    for at, loss, lower, upper in record.forecasts:
        inside = "in band" if lower <= actual <= upper else "outside"
        print(f"{at:>22} {loss:9.4f} [{lower:7.4f}, {upper:7.4f}] {loss - actual:+8.4f} {inside}")
    if watch.stopped_at is not None:
        print(f"stopped at step {watch.stopped_at}: {watch.stop_reason}")
    mid = [f for f in record.forecasts if f[0] <= steps // 2]
    if mid:
        rel = abs(mid[-1][1] - actual) / actual
        print(
            f"forecast from the first half of the run (step {mid[-1][0]}): {100 * rel:.1f}% off the actual final loss"
        )
    logdir = watch.log_dir or ns.out
    print(f"\nTensorBoard: tensorboard --logdir {Path(logdir).parent if watch.log_dir else logdir}")


if __name__ == "__main__":
    main()
