"""A nanoGPT-style training loop, forecast while it trains: a tiny character-level GPT on Python's own
standard library source (data that ships with Python), AdamW, warm-up + cosine, watched by
``LossForecastSession``. One process, or DDP on CPU:

    python examples/plain_loop.py --steps 400
    torchrun --nproc_per_node 2 examples/plain_loop.py --steps 400

Then ``tensorboard --logdir runs/plain_loop``.
"""

import argparse
import math
import os
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from scaleforecast.callbacks import LossForecastSession
from torch import nn

BLOCK, BATCH = 64, 8


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 256, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(BLOCK, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks, self.head = (
            nn.TransformerEncoder(layer, layers, enable_nested_tensor=False),
            nn.Linear(dim, vocab),
        )

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(idx.shape[1])
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        logits = self.head(self.blocks(x, mask=mask, is_causal=True))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--target", type=float, default=None, help="stop early when this loss is out of reach")
    ap.add_argument("--out", default="runs/plain_loop")
    args = ap.parse_args()
    ddp = "RANK" in os.environ
    if ddp:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if ddp else 0
    torch.manual_seed(1337 + rank)
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    data = torch.frombuffer(
        bytearray(b"".join(p.read_bytes() for p in stdlib[:60])), dtype=torch.uint8
    ).long()
    model = TinyGPT()
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(args.steps // 10, 1)

    def lr_factor(it: int) -> float:  # nanoGPT's schedule: linear warm-up, cosine down to 10% of the peak
        if it < warmup:
            return (it + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (it - warmup) / max(args.steps - warmup, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    fc = LossForecastSession(
        opt,
        sched,
        total_steps=args.steps,
        target_loss=args.target,
        dirpath=args.out,
        flush_every=20,
        refit_every=40,
    )
    for _ in range(args.steps):
        ix = torch.randint(len(data) - BLOCK - 1, (BATCH,))
        x = torch.stack([data[i : i + BLOCK] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + BLOCK] for i in ix])
        loss = net(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        fc.step(loss)  # the loss stays on the device: no sync here
        if fc.should_stop:  # the same answer on every rank
            break
    fc.close()
    if rank == 0 and fc.forecast is not None and fc.forecast.final is not None:
        print(
            f"trained {fc.steps} steps; last loss {loss.item():.4f}; final-loss forecast {fc.forecast.final.loss:.4f}"
        )
    if ddp:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
