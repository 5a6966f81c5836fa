"""Generate real training curves whose loss leaves the LR-annealing law, for the ``law_violated`` check.

Tiny character-level transformers train on CPU on text that ships with Python (the standard library's own
source files), under warm-up + cosine or WSD schedules. Each run breaks the law in a way real runs do:

- ``overfit``: a small training set seen for many epochs; the *validation* loss turns and rises while the LR
  decays (the train loss keeps falling: the law holds for it);
- ``datashift``: the training data switches to another corpus part-way (a data-pipeline fault); the train loss
  jumps up and stays above the law's curve;
- ``badrestart``: at a restart the weights are reloaded from a much older checkpoint while the step counter and
  the schedule go on (a resume from the wrong checkpoint); the loss jumps back up.
- ``healthy``: the same set-up without a fault (a control: the law holds, no alarm may fire).

Each run is written as ``<name>.csv`` (``step,lr,train_loss,val_loss``; train loss as the mean over each
10-update window, val loss every 50 updates) and ``<name>.lr.npy`` (the LR of every update) under
``benchmarks/data/law_break/``, with ``index.json`` saying where each run leaves the law. About ten CPU-minutes
on one core::

    nice -n 10 python benchmarks/law_break_curves.py [--out DIR] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

OUT = Path(__file__).resolve().parent / "data" / "law_break"


def corpus(names: tuple[str, ...]) -> bytes:
    """The bytes of some standard-library modules (text that ships with every Python)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    return b"".join((lib / n).read_bytes() for n in names)


class TinyLM(nn.Module):
    """A byte-level transformer: ``layers`` pre-norm blocks of width ``dim``, context ``ctx``."""

    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4, ctx: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(256, dim)
        self.pos = nn.Parameter(torch.zeros(ctx, dim))
        block = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.body = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 256)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        return self.head(self.body(h, mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True))


def batches(
    data: torch.Tensor, ctx: int, batch: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.randint(0, data.numel() - ctx - 1, (batch,), generator=gen)
    x = torch.stack([data[j : j + ctx] for j in i.tolist()])
    y = torch.stack([data[j + 1 : j + ctx + 1] for j in i.tolist()])
    return x.long(), y.long()


def wsd(total: int, peak: float, warmup: int, cooldown: float) -> np.ndarray:
    s = np.arange(1, total + 1, dtype=np.float64)
    lr = np.full(total, peak)
    lr[:warmup] = peak * s[:warmup] / warmup
    start = int(total * (1 - cooldown))
    lr[start:] = peak * (total - s[start:]) / (total - start)
    return lr


def cosine(total: int, peak: float, warmup: int, floor: float = 0.0) -> np.ndarray:
    s = np.arange(1, total + 1, dtype=np.float64)
    lr = peak * (
        floor + (1 - floor) * 0.5 * (1 + np.cos(np.pi * np.clip((s - warmup) / (total - warmup), 0, 1)))
    )
    lr[:warmup] = peak * s[:warmup] / warmup
    return lr


@dataclass
class Spec:
    name: str
    lrs: np.ndarray
    train: bytes
    val: bytes
    fault: str
    fault_step: int | None = None
    shift_to: bytes | None = None
    dim: int = 64
    seed: int = 0


def run(spec: Spec, ctx: int = 64, batch: int = 16) -> dict[str, np.ndarray]:
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    model = TinyLM(dim=spec.dim, ctx=ctx)
    opt = torch.optim.AdamW(model.parameters(), lr=float(spec.lrs[0]), weight_decay=0.0)
    train = torch.frombuffer(bytearray(spec.train), dtype=torch.uint8)
    val = torch.frombuffer(bytearray(spec.val), dtype=torch.uint8)
    vgen = torch.Generator().manual_seed(1234)
    vx, vy = batches(val, ctx, 64, vgen)
    loss_fn = nn.CrossEntropyLoss()
    saved: dict | None = None
    out: dict[str, list[float]] = {"step": [], "lr": [], "train_loss": [], "val_loss": []}
    window: list[float] = []
    for k, lr in enumerate(spec.lrs):
        step = k + 1
        if spec.fault == "datashift" and step == spec.fault_step:
            assert spec.shift_to is not None
            train = torch.frombuffer(bytearray(spec.shift_to), dtype=torch.uint8)
        if spec.fault == "badrestart":
            if step == max(1, (spec.fault_step or 0) // 5):
                saved = {n: t.detach().clone() for n, t in model.state_dict().items()}
            if step == spec.fault_step and saved is not None:
                model.load_state_dict(saved)
        for g in opt.param_groups:
            g["lr"] = float(lr)
        x, y = batches(train, ctx, batch, gen)
        loss = loss_fn(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window.append(float(loss.detach()))
        val_loss = math.nan
        if step % 50 == 0 or step == len(spec.lrs):
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(vx).reshape(-1, 256), vy.reshape(-1)))
            model.train()
        if step % 10 == 0 or step == len(spec.lrs):
            out["step"].append(step)
            out["lr"].append(float(lr))
            out["train_loss"].append(float(np.mean(window)))
            out["val_loss"].append(val_loss)
            window = []
    return {k: np.asarray(v) for k, v in out.items()}


def specs() -> list[Spec]:
    code = corpus(("argparse.py", "typing.py", "inspect.py", "dataclasses.py"))
    prose = corpus(("this.py", "turtle.py", "pydoc.py"))
    held = code[200_000:260_000]
    total = 1500
    return [
        Spec("overfit_cosine", cosine(total, 3e-3, 50), code[:50_000], held, "overfit"),
        Spec("overfit_wsd", wsd(total, 3e-3, 50, 0.3), code[:30_000], held, "overfit", seed=1),
        Spec("datashift_cosine", cosine(total, 2e-3, 50, 0.1), code, held, "datashift", 900, prose, seed=2),
        Spec("datashift_wsd", wsd(total, 2e-3, 50, 0.2), code, held, "datashift", 1000, prose[::-1], seed=3),
        Spec("badrestart_cosine", cosine(total, 2e-3, 50), code, held, "badrestart", 1000, seed=4),
        Spec("badrestart_wsd", wsd(total, 2e-3, 50, 0.3), code, held, "badrestart", 1100, seed=5),
        Spec("healthy_cosine", cosine(total, 2e-3, 50), code, held, "none", seed=6),
        Spec("healthy_wsd", wsd(total, 2e-3, 50, 0.2), code, held, "none", seed=7),
    ]


def write(spec: Spec, rows: dict[str, np.ndarray], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = ["step,lr,train_loss,val_loss"]
    for s, lr, tr, va in zip(rows["step"], rows["lr"], rows["train_loss"], rows["val_loss"], strict=True):
        lines.append(f"{int(s)},{lr:.6g},{tr:.6f}," + ("" if math.isnan(va) else f"{va:.6f}"))
    (out / f"{spec.name}.csv").write_text("\n".join(lines) + "\n")
    np.save(out / f"{spec.name}.lr.npy", spec.lrs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    index_path = args.out / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    picked: list[Spec] = [s for s in specs() if args.only in (None, s.name)]
    for spec in picked:
        t0 = time.perf_counter()
        rows = run(spec)
        write(spec, rows, args.out)
        column = "val_loss" if spec.fault == "overfit" else "train_loss"
        y = rows[column]
        ok = np.isfinite(y)
        index[spec.name] = {
            "fault": spec.fault,
            "fault_step": spec.fault_step,
            "column": column,
            "total_steps": int(spec.lrs.size),
            "peak_lr": float(spec.lrs.max()),
            "min_val_step": int(rows["step"][ok][np.argmin(y[ok])]) if spec.fault == "overfit" else None,
            "final": float(y[ok][-1]),
            "model": f"byte-level transformer, 2 layers, width {spec.dim}, context 64, AdamW",
        }
        print(
            f"{spec.name}: {time.perf_counter() - t0:.0f} s, final {column} {index[spec.name]['final']:.4f}"
        )
        index_path.parent.mkdir(parents=True, exist_ok=True)
        index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
