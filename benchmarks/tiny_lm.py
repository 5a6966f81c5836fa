"""A tiny byte-level GPT, its text and its optimizers, for making real training curves on a CPU.

The text is the Python standard library that ships with the interpreter (no downloads): its ``.py`` files are
split by file into a training and a held-out validation part (a file goes to validation when a hash of its
relative path says so), and the English documentation topics of ``pydoc_data`` serve as a second domain for
runs whose data changes during training. Everything here is deterministic given a seed on one CPU thread.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GPT",
    "Corpus",
    "Lion",
    "ModelConfig",
    "build_optimizer",
    "load_corpus",
]

VOCAB = 256


@dataclass(frozen=True)
class Corpus:
    """Byte arrays of the training code, the held-out code and the prose domain."""

    train: np.ndarray
    val: np.ndarray
    prose: np.ndarray
    stdlib: str


def _stdlib_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "site-packages", "idle_test", "pydoc_data") for p in rel):
            continue
        out.append(path)
    return out


@cache
def load_corpus(train_limit: int = 8_000_000, val_limit: int = 600_000) -> Corpus:
    """The standard library's code split 19:1 by file (a SHA-1 of the relative path picks the held-out
    files), each part cut at its limit, and the ``pydoc_data`` topics as plain English text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train: list[bytes] = []
    val: list[bytes] = []
    n_train = n_val = 0
    for path in _stdlib_files(root):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        rel = path.relative_to(root).as_posix()
        if int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) % 20 == 0:
            if n_val < val_limit:
                val.append(data)
                n_val += len(data)
        elif n_train < train_limit:
            train.append(data)
            n_train += len(data)
    topics_file = root / "pydoc_data" / "topics.py"
    topics = ast.literal_eval(topics_file.read_text().split("=", 1)[1].strip())
    prose = "\n\n".join(topics[k] for k in sorted(topics)).encode()
    if n_train < 1_000_000 or n_val < 100_000:
        raise RuntimeError(f"only {n_train} + {n_val} bytes of Python source under {root}")

    def arr(chunks: Iterable[bytes], limit: int) -> np.ndarray:
        return np.frombuffer(b"\n".join(chunks)[:limit], dtype=np.uint8).copy()

    return Corpus(arr(train, train_limit), arr(val, val_limit), arr([prose], len(prose)), str(root))


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder: width, depth, heads, context (bytes)."""

    dim: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 64

    def describe(self) -> str:
        """``d=64 L=2 h=4 ctx=64``."""
        return f"d={self.dim} L={self.layers} h={self.heads} ctx={self.context}"

    def as_dict(self) -> dict:
        """Plain dict for the provenance file."""
        return asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4x GELU MLP, no biases."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.out = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.norm2(x))))


class GPT(nn.Module):
    """Byte-level causal decoder with learned positions and an untied output head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(VOCAB, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.context, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, VOCAB, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats per byte."""
        return F.cross_entropy(self(x).reshape(-1, VOCAB), y.reshape(-1))

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): ``p -= lr * (sign(b1*m + (1-b1)*g) + wd*p)``, then ``m = b2*m + (1-b2)*g``."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1.0 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1.0 - b2)


def _split_matrices(model: GPT) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(2-D weights inside the blocks, everything else: embeddings, positions, head, norms)."""
    hidden = [p for p in model.blocks.parameters() if p.ndim == 2]
    ids = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return hidden, rest


def build_optimizer(
    name: str, model: GPT, options: dict
) -> tuple[list[torch.optim.Optimizer], list[tuple[dict, float]]]:
    """The optimizers of one run and, for every param group, its LR scale: the group's LR at an update is
    ``scale * logged_lr``. ``options`` holds the optimizer's keyword arguments; for ``muon`` the keys
    ``adam_scale`` (AdamW LR of the non-matrix parameters relative to the logged LR) and ``adam`` (its
    AdamW arguments) configure the AdamW half, as the speedrun codebases pair them.
    """
    opts = dict(options)
    scales: list[tuple[dict, float]] = []
    if name == "muon":
        hidden, rest = _split_matrices(model)
        muon_scale = opts.pop("muon_scale", 1.0)
        adam_scale = opts.pop("adam_scale")
        adam_kw = opts.pop("adam", {})
        muon = torch.optim.Muon(hidden, lr=1.0, **opts)
        adam = torch.optim.AdamW(rest, lr=1.0, **adam_kw)
        scales += [(g, muon_scale) for g in muon.param_groups]
        scales += [(g, adam_scale) for g in adam.param_groups]
        return [muon, adam], scales
    params = list(model.parameters())
    if name == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=1.0, **opts)
    elif name == "sgd":
        opt = torch.optim.SGD(params, lr=1.0, **opts)
    elif name == "adafactor":
        opt = torch.optim.Adafactor(params, lr=1.0, **opts)
    elif name == "lion":
        opt = Lion(params, lr=1.0, **opts)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return [opt], [(g, 1.0) for g in opt.param_groups]
