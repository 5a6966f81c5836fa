"""A two-rank HF Trainer run (under ``torchrun``) that its forecast stops, and which exits right after
``train()`` returns. Run by ``test_hf.py`` (with ``--destroy``: the process group destroyed at the end, as a
clean script does) and ``benchmarks/exit_race.py`` (without it, and with ``--no-plugin``: a callback that stops
the run at the same step instead); exit status 0 on every rank is the check.

    torchrun --nproc_per_node 2 tests/hf_stop_exit_worker.py OUT_DIR [--destroy] [--no-plugin]
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist
from scaleforecast.callbacks import HFLossForecast
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments


class Patterns(torch.utils.data.Dataset):
    """Token sequences that follow a rule most of the time: a tiny GPT-2 learns them within a few steps."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 64, (2000, 17), generator=g)
        for j in range(1, 17):
            keep = torch.rand(2000, generator=g) < 0.7
            x[:, j] = torch.where(keep, (x[:, j - 1] * 3 + 1) % 64, x[:, j])
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i, :16], "labels": self.x[i, :16]}


class StopAt(TrainerCallback):
    """Stops the run at ``step``, as the forecast does (the baseline without the plugin)."""

    def __init__(self, step: int) -> None:
        self.step, self.stopped_at = step, None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            control.should_training_stop = True
            self.stopped_at = self.step


def ddp_args(output_dir: str, max_steps: int) -> TrainingArguments:
    """CPU arguments for a gloo job under ``torchrun``: a short cosine run, no checkpoints, no loggers."""
    return TrainingArguments(
        output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        warmup_steps=10,
        lr_scheduler_type="cosine",
        logging_steps=10,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        ddp_backend="gloo",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def main() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    args = ddp_args(sys.argv[1], max_steps=200)
    fc: Any = (
        StopAt(40)
        if "--no-plugin" in sys.argv
        else HFLossForecast(target_loss=0.5, flush_every=10, writer=False)
    )
    out = Trainer(model=model, args=args, train_dataset=Patterns(), callbacks=[fc]).train()
    assert fc.stopped_at is not None and out.global_step == fc.stopped_at < 200, (
        fc.stopped_at,
        out.global_step,
    )
    print(f"rank stopped at {fc.stopped_at}", flush=True)
    if "--destroy" in sys.argv:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
