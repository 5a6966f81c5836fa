"""Train tiny real language models on this CPU and record their curves, for the early-stopping benchmark.

These are the runs every new user tries first: a few thousand steps of a byte-level model on a laptop-sized
corpus (the Python standard library's own sources, read at run time: nothing is downloaded). Each run is a real
``lightning.Trainer`` or ``transformers.Trainer`` fit; a recording callback keeps, for every optimizer update,
the training loss of that update and the LR it used, exactly what the scaleforecast callbacks observe. The
curves are committed next to this script (``data/tiny_runs/<name>.csv`` with ``step,lr,train_loss`` and a
``<name>.json`` of provenance), so that ``benchmarks/early_stop.py`` replays them without training.

The true final loss of a run is measured, not read off one noisy step (a step's loss varies by ~9 % here):
after the last update, the model's mean training loss (in training mode, dropout included, as the callbacks
see it) over ``EVAL_BATCHES`` fresh batches of the training stream (``final_loss`` in the JSON).

    python benchmarks/tiny_runs.py --list             # the specs and which curves exist
    python benchmarks/tiny_runs.py                    # train every missing run (one at a time)
    python benchmarks/tiny_runs.py --run NAME --force # (re)train one
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import platform
import sysconfig
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).resolve().parent / "data" / "tiny_runs"
EVAL_BATCHES = 512


@dataclass(frozen=True)
class TinySpec:
    """One tiny run: framework, model size, optimizer, schedule and length.

    ``schedule``: ``wsd`` (warm-up, constant, linear cooldown to 0 over the last ``cooldown`` of the run),
    ``cosine`` (to ``floor`` of the peak), ``linear`` (to 0) or ``constant``; ``warmup`` is a fraction of the
    run.
    """

    name: str
    framework: str
    steps: int
    schedule: str
    lr: float
    warmup: float = 0.05
    cooldown: float = 0.2
    floor: float = 0.1
    optimizer: str = "adamw"
    dim: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 64
    batch: int = 16
    seed: int = 0


SPECS: tuple[TinySpec, ...] = (
    # the new-user scenario: a Lightning char model with WSD, and an HF tiny GPT-2 with cosine
    TinySpec("lightning_char_wsd_3000", "lightning", 3000, "wsd", 3e-3),
    TinySpec("hf_gpt2_cosine_3000", "hf", 3000, "cosine", 3e-3),
    # more of what users try: other schedules, lengths, LRs, seeds, optimizers
    TinySpec("lightning_char_cosine_2000", "lightning", 2000, "cosine", 2e-3, seed=1),
    TinySpec("lightning_char_linear_1500", "lightning", 1500, "linear", 3e-3, warmup=0.0, seed=2),
    TinySpec("lightning_char_wsd50_2000", "lightning", 2000, "wsd", 1e-3, cooldown=0.5, seed=3),
    TinySpec("lightning_char_constant_1000", "lightning", 1000, "constant", 2e-3, seed=4),
    TinySpec("lightning_char_sgd_cosine_2000", "lightning", 2000, "cosine", 0.3, optimizer="sgd", seed=5),
    TinySpec("lightning_char_wsd_hilr_1000", "lightning", 1000, "wsd", 1e-2, seed=6),
    TinySpec("hf_gpt2_linear_2000", "hf", 2000, "linear", 2e-3, warmup=0.0, dim=32, heads=2, batch=8, seed=1),
    TinySpec("hf_gpt2_wsd_1500", "hf", 1500, "wsd", 3e-3, cooldown=0.3, dim=32, heads=2, batch=8, seed=2),
    TinySpec("hf_gpt2_cosine_wide_1000", "hf", 1000, "cosine", 1e-3, dim=64, heads=4, batch=8, seed=3),
    TinySpec("hf_gpt2_constant_1500", "hf", 1500, "constant", 1e-3, dim=32, heads=2, batch=8, seed=4),
    # a sweep over the peak LR and one over the width: runs that differ in that alone
    TinySpec("sweep_char_lr1e-3_d64", "lightning", 1000, "cosine", 1e-3, seed=7),
    TinySpec("sweep_char_lr3e-3_d64", "lightning", 1000, "cosine", 3e-3, seed=7),
    TinySpec("sweep_char_lr1e-2_d64", "lightning", 1000, "cosine", 1e-2, seed=7),
    TinySpec("sweep_char_lr3e-3_d32", "lightning", 1000, "cosine", 3e-3, dim=32, seed=7),
    TinySpec("sweep_char_lr3e-3_d128", "lightning", 1000, "cosine", 3e-3, dim=128, seed=7),
)


def lr_factor(spec: TinySpec, step: int) -> float:
    """The schedule's multiplier of the peak LR for update ``step + 1`` (0-based, as torch's LambdaLR)."""
    warm = round(spec.warmup * spec.steps)
    if step < warm:
        return (step + 1) / warm
    if spec.schedule == "constant":
        return 1.0
    if spec.schedule == "wsd":
        start = spec.steps - round(spec.cooldown * spec.steps)
        return 1.0 if step < start else max(spec.steps - step, 0) / max(spec.steps - start, 1)
    progress = min((step - warm) / max(spec.steps - warm, 1), 1.0)
    if spec.schedule == "linear":
        return max(1.0 - progress, 0.0)
    if spec.schedule == "cosine":
        return spec.floor + (1.0 - spec.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {spec.schedule!r}")


def stdlib_bytes(limit: int = 4_000_000) -> np.ndarray:
    """The standard library's ``.py`` files (tests left out), concatenated in a fixed order, as bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "tests" in path.parts or "site-packages" in path.parts:
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


def _windows(text: Any, context: int, n: int, seed: int) -> Any:
    """``n`` random ``context + 1``-byte windows of ``text`` (a torch tensor), reproducible from ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, len(text) - context - 1, (n,), generator=g)
    return torch.stack([text[o : o + context + 1] for o in offsets.tolist()])


# ------------------------------------------------------------------------------------------------ lightning
def _train_lightning(spec: TinySpec, text: Any) -> tuple[list[int], list[float], list[float], float]:
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class CharModel(pl.LightningModule):
        """A byte-level causal transformer (pre-norm blocks, learned positions)."""

        def __init__(self) -> None:
            super().__init__()
            d = spec.dim
            self.embed = nn.Embedding(256, d)
            self.pos = nn.Parameter(torch.zeros(spec.context, d))
            block = nn.TransformerEncoderLayer(
                d, spec.heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(block, spec.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, 256)
            mask = nn.Transformer.generate_square_subsequent_mask(spec.context)
            self.register_buffer("mask", mask, persistent=False)

        def loss(self, w: torch.Tensor) -> torch.Tensor:
            x, y = w[:, :-1], w[:, 1:]
            h = self.embed(x) + self.pos[: x.shape[1]]
            h = self.blocks(h, mask=self.mask, is_causal=True)
            return nn.functional.cross_entropy(self.head(self.norm(h)).reshape(-1, 256), y.reshape(-1))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.loss(batch[0])

        def configure_optimizers(self) -> Any:
            if spec.optimizer == "sgd":
                opt = torch.optim.SGD(self.parameters(), lr=spec.lr, momentum=0.9)
            else:
                opt = torch.optim.AdamW(self.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.95))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(spec, s))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.lrs: list[float] = []
            self.losses: list[float] = []
            self._lr = math.nan

        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            self._lr = float(optimizer.param_groups[0]["lr"])

        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, i: int) -> None:
            self.steps.append(int(trainer.global_step))
            self.lrs.append(self._lr)
            self.losses.append(float(outputs["loss"].detach()))

    pl.seed_everything(spec.seed, verbose=False)
    data = TensorDataset(_windows(text, spec.context, spec.steps * spec.batch, spec.seed))
    model = CharModel()
    rec = Record()
    trainer = pl.Trainer(
        max_steps=spec.steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[rec],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=spec.batch, shuffle=False))
    held = _windows(text, spec.context, EVAL_BATCHES * spec.batch, 10_000 + spec.seed)
    model.train()  # no dropout in this model: the training loss is the loss in training mode
    with torch.no_grad():
        final = float(np.mean([float(model.loss(b)) for b in held.split(spec.batch)]))
    return rec.steps, rec.lrs, rec.losses, final


# ------------------------------------------------------------------------------------------------------- hf
def _train_hf(spec: TinySpec, text: Any, workdir: Path) -> tuple[list[int], list[float], list[float], float]:
    import torch
    from torch.utils.data import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    rows = _windows(text, spec.context - 1, spec.steps * spec.batch, spec.seed)

    class Rows(Dataset):
        def __len__(self) -> int:
            return rows.shape[0]

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": rows[i], "labels": rows[i].clone()}

    class Record(TrainerCallback):
        """LR in ``on_step_begin`` (before the scheduler steps); the step's loss from ``logging_steps=1``."""

        def __init__(self) -> None:
            self.steps: list[int] = []
            self.lrs: list[float] = []
            self.losses: list[float] = []
            self._lr = math.nan

        def on_step_begin(
            self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any
        ) -> None:
            self._lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else math.nan

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs and state.global_step > (self.steps[-1] if self.steps else 0):
                self.steps.append(int(state.global_step))
                self.lrs.append(self._lr)
                self.losses.append(float(logs["loss"]))

    torch.manual_seed(spec.seed)
    config = GPT2Config(
        vocab_size=256,
        n_positions=spec.context,
        n_embd=spec.dim,
        n_layer=spec.layers,
        n_head=spec.heads,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    if spec.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(spec, s))
    args = TrainingArguments(
        output_dir=str(workdir),
        max_steps=spec.steps,
        per_device_train_batch_size=spec.batch,
        learning_rate=spec.lr,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=spec.seed,
        disable_tqdm=True,
    )
    rec = Record()
    trainer = Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[rec], optimizers=(opt, sched))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    held = _windows(text, spec.context - 1, EVAL_BATCHES * spec.batch, 10_000 + spec.seed)
    model.train()  # the loss the callbacks see is the training loss, with GPT-2's dropout

    def step_loss(b: torch.Tensor) -> float:
        # the Trainer's own loss of a step, normalised as in training (its count of label tokens included)
        inputs = {"input_ids": b, "labels": b.clone()}
        n = trainer._get_num_items_in_batch([inputs], b.device)
        return float(trainer.compute_loss(model, inputs, num_items_in_batch=n))

    with torch.no_grad():
        final = float(np.mean([step_loss(b) for b in held.split(spec.batch)]))
    return rec.steps, rec.lrs, rec.losses, final


# ----------------------------------------------------------------------------------------------------- main
def train(spec: TinySpec, out: Path = OUT) -> Path:
    """Train ``spec`` and write ``out/<name>.csv`` and ``out/<name>.json``; returns the CSV path."""
    import tempfile

    import torch

    torch.set_num_threads(1)
    text = torch.from_numpy(stdlib_bytes().astype(np.int64))
    t0 = time.time()
    if spec.framework == "lightning":
        steps, lrs, losses, final = _train_lightning(spec, text)
    elif spec.framework == "hf":
        with tempfile.TemporaryDirectory() as tmp:
            steps, lrs, losses, final = _train_hf(spec, text, Path(tmp))
    else:
        raise ValueError(f"unknown framework {spec.framework!r}")
    wall = time.time() - t0
    if len(steps) != spec.steps or steps != list(range(1, spec.steps + 1)):
        raise RuntimeError(f"{spec.name}: recorded {len(steps)} steps, expected 1..{spec.steps}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{spec.name}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "lr", "train_loss"])
        for s, lr, loss in zip(steps, lrs, losses, strict=True):
            w.writerow([s, f"{lr:.6g}", f"{loss:.5f}"])
    import lightning
    import transformers

    meta = {
        "spec": asdict(spec),
        "final_loss": final,
        "final_loss_definition": (
            f"mean training-mode loss of the final model over {EVAL_BATCHES} fresh batches of the training stream"
        ),
        "corpus": "Python standard library .py sources (tests excluded), byte level, first 4 MB",
        "wall_s": round(wall, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "lightning": lightning.__version__,
            "transformers": transformers.__version__,
        },
        "generator": "benchmarks/tiny_runs.py",
    }
    (out / f"{spec.name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--run", action="append", default=[], help="train this spec (repeatable); default: missing"
    )
    ap.add_argument("--force", action="store_true", help="retrain even when the curve exists")
    ap.add_argument("--list", action="store_true", help="list the specs and exit")
    args = ap.parse_args(argv)
    names = {s.name: s for s in SPECS}
    if args.list:
        for s in SPECS:
            have = (OUT / f"{s.name}.csv").exists()
            print(f"{s.name:36s} {s.framework:9s} {s.steps:5d} {s.schedule:8s} {'done' if have else '-'}")
        return 0
    unknown = [n for n in args.run if n not in names]
    if unknown:
        ap.error(f"unknown run(s): {', '.join(unknown)}")
    todo = [names[n] for n in args.run] if args.run else list(SPECS)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    for spec in todo:
        if (OUT / f"{spec.name}.csv").exists() and not args.force:
            continue
        t0 = time.time()
        path = train(spec)
        final = json.loads(path.with_suffix(".json").read_text())["final_loss"]
        print(f"{spec.name}: final loss {final:.4f} ({time.time() - t0:.0f} s) -> {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
