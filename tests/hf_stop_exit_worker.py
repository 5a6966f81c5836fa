"""A two-rank HF Trainer run (under ``torchrun``) that its forecast stops, and which exits right after
``train()`` returns: the Trainer's own last collective (its FLOP count) comes after the plugin's. Run by
``test_hf.py``; exit status 0 on every rank is the check."""

from __future__ import annotations

import sys

import torch
from scaleforecast.callbacks import HFLossForecast
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments


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


def main() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    args = TrainingArguments(
        sys.argv[1],
        max_steps=200,
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
    fc = HFLossForecast(target_loss=0.5, flush_every=10, writer=False)
    out = Trainer(model=model, args=args, train_dataset=Patterns(), callbacks=[fc]).train()
    assert fc.stopped_at is not None and out.global_step == fc.stopped_at < 200, (
        fc.stopped_at,
        out.global_step,
    )
    print(f"rank stopped at {fc.stopped_at}", flush=True)


if __name__ == "__main__":
    main()
