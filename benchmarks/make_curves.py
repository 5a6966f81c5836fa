"""Train tiny byte-level transformers on this CPU and write their loss curves, with the exact LR of every update.

The runs (the ``RUNS`` table below) cover what the forecaster meets in other people's code: AdamW, SGD with
momentum, Adafactor, Lion and Muon (for the 2-D weights, AdamW for the rest); LRs in units that differ by
orders of magnitude (AdamW 1e-3 to 3e-2, SGD 0.15-1.5, Adafactor 1e-2, Lion 1e-3, Muon 0.01-0.05) and runs whose
logged "LR" is the schedule's multiplier (peak 1.0) as speedrun codebases log it; WSD with 10-70% cooldowns
(linear, 1-sqrt, exponential), linear to zero, cosine to 10%, step (8-1-1 and 50/75), constant; warm-ups of
0-10%; 1k-12k updates. Families of runs share a config and differ only in length, schedule, peak LR or width.
Some runs leave the annealing law (``law_breaking``): models that overfit a small training text (their
validation loss turns up while the LR decays), runs whose data changes late, an SGD LR too high to stay stable.

Output, one folder per source under ``--out`` (default ``benchmarks/curves_tiny``), in the layout of
``shared/curves`` (``benchmarks/curves.py`` loads both):

- ``<run>.csv``: ``step,lr,train_loss,val_loss`` (empty cell = not logged). ``step`` = updates completed;
  ``train_loss`` is the mean of the per-update losses of the bin ending at ``step`` (bin width in the JSON);
  ``val_loss`` is measured on the model after ``step`` updates; ``lr`` is the logged LR of update ``step``.
- ``<run>.lr.npy``: float32 logged LR of every update, element ``k`` = update ``k + 1``.
- ``<run>.json``: provenance: generator, seed, model, optimizer and param groups, schedule spec (rebuilt by
  ``scaleforecast.schedules.parse_schedule(spec).lrs()``), LR units, binning, ``law_breaking``, timings.
- ``index.csv`` (one row per run, the shared columns plus optimizer, LR units, family) and ``README.md``.

The generator is deterministic (seeded, one thread) and resumable: a run whose JSON exists is skipped. It never
downloads anything: the text is the Python standard library that ships with the interpreter.

    nice -n 15 python benchmarks/make_curves.py            # every missing run, one after the other
    python benchmarks/make_curves.py --list                # the plan: runs, steps, done or not
    python benchmarks/make_curves.py --only 'muon_*' --max-runs 3
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_lm import GPT, Corpus, ModelConfig, build_optimizer, load_corpus

from scaleforecast.schedules import (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    StepSchedule,
    WSDSchedule,
    parse_schedule,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "curves_tiny"
VAL_WINDOWS = 128
VAL_SEED = 12345
GRAD_CLIP = 1.0

SHAPES = {
    "constant": "constant",
    "cosine": "cosine",
    "linear": "linear_decay",
    "step": "two_stage_step",
    ("wsd", "linear"): "wsd_linear",
    ("wsd", "1-sqrt"): "wsd_sqrt",
    ("wsd", "exp"): "wsd_exponential",
}


@dataclass(frozen=True)
class Run:
    """One training run: where its curve goes, what trains, with which optimizer and LR schedule.

    ``schedule`` is the spec of the *logged* LR; every param group runs at ``scale * logged LR`` (see
    :func:`tiny_lm.build_optimizer`). ``train_bytes`` limits the training text (overfitting runs); ``shift``
    = (fraction of the run, share of prose) changes the data late in the run: at once, or with ``shift_ramp``
    linearly from no prose at that fraction to the given share at the end.
    """

    run_id: str
    source: str
    optimizer: str
    options: dict
    schedule: str
    lr_units: str = "absolute"
    model: ModelConfig = field(default_factory=ModelConfig)
    batch: int = 8
    seed: int = 0
    family: str = ""
    trunk: str | None = None
    replicate_group: str | None = None
    train_bytes: int | None = None
    shift: tuple[float, float] | None = None
    shift_ramp: bool = False
    law_breaking: bool = False
    note: str = ""

    @property
    def total(self) -> int:
        return parse_schedule(self.schedule).total


def wsd(
    peak: float, total: int, cooldown: float, shape: str = "linear", warmup: int = 0, final: float = 0.0
) -> str:
    return WSDSchedule(
        peak=peak, total=total, warmup=warmup, cooldown=cooldown, shape=shape, final=final
    ).spec()


def cosine(peak: float, total: int, warmup: int = 0, final_frac: float = 0.1) -> str:
    # six significant digits, so that the spec (which is what trains) reads the same in any spec writer
    return CosineSchedule(
        peak=peak, total=total, warmup=warmup, final=float(f"{peak * final_frac:.6g}")
    ).spec()


def linear(peak: float, total: int, warmup: int = 0) -> str:
    return LinearSchedule(peak=peak, total=total, warmup=warmup).spec()


def constant(peak: float, total: int, warmup: int = 0) -> str:
    return ConstantSchedule(peak=peak, total=total, warmup=warmup).spec()


def step811(peak: float, total: int, warmup: int = 0) -> str:
    """DeepSeek's 8-1-1 multi-step schedule: 80% at peak, 10% at 31.6% of it, 10% at 10.0% of it."""
    return StepSchedule(
        peak=peak, total=total, warmup=warmup, milestones=[8 * total // 10, 9 * total // 10], gamma=0.316228
    ).spec()


def step(peak: float, total: int, milestones: tuple[float, ...], gamma: float, warmup: int = 0) -> str:
    return StepSchedule(
        peak=peak, total=total, warmup=warmup, milestones=[int(m * total) for m in milestones], gamma=gamma
    ).spec()


ADAMW = {"betas": (0.9, 0.95), "weight_decay": 0.1}
SGD = {"momentum": 0.9, "nesterov": True, "weight_decay": 0.0}
ADAFACTOR: dict = {}
LION = {"betas": (0.9, 0.99), "weight_decay": 0.3}
# Speedrun-style pairing: Muon on the block matrices, AdamW on embeddings, positions, head and norms. With LR
# units "multiplier" the logged LR is the schedule factor and the scales are the groups' peak LRs.
MUON_ABS = {
    "momentum": 0.95,
    "nesterov": True,
    "weight_decay": 0.0,
    "adam_scale": 0.2,
    "adam": {"betas": (0.8, 0.95)},
}
MUON_MULT = {**MUON_ABS, "muon_scale": 0.02, "adam_scale": 0.004}
HIGH_LR_ADAMW = {"betas": (0.9, 0.999), "weight_decay": 0.0}

SMALL = ModelConfig(dim=32)
NARROW = ModelConfig(dim=48)
WIDE = ModelConfig(dim=96)


def _runs() -> list[Run]:
    """The plan, ordered so that an early prefix already covers every optimizer and LR unit."""
    a, s, m = "tiny_adamw", "tiny_sgd", "tiny_muon_speedrun"
    f, li, br = "tiny_adafactor", "tiny_lion", "tiny_late_rise"
    mult = "multiplier"
    aw = dict(family="adamw_wsd", trunk="adamw_wsd")  # one config, WSD, different lengths and cooldowns
    mw = dict(family="muon_wsd", trunk="muon_wsd")
    # fmt: off
    runs = [
        # a first batch with every optimizer and LR unit
        Run("adamw_wsd_lin20_2k", a, "adamw", ADAMW, wsd(4e-3, 2000, 0.2, warmup=100), **aw),
        Run("muon_wsd_lin40_2k", m, "muon", MUON_MULT, wsd(1.0, 2000, 0.4), mult, **mw),
        Run("sgd_cos10_2k", s, "sgd", SGD, cosine(0.5, 2000, warmup=100), family="sgd_cos2k"),
        Run("adafactor_cos10_2k", f, "adafactor", ADAFACTOR, cosine(1e-2, 2000, warmup=100)),
        Run("lion_wsd_sqrt30_2k", li, "lion", LION, wsd(1e-3, 2000, 0.3, "1-sqrt", warmup=100)),
        Run("overfit_cos10_3k", br, "adamw", ADAMW, cosine(4e-3, 3000, warmup=150), model=WIDE, train_bytes=40_000,
            law_breaking=True, note="40 kB of training text: the model memorises it and its validation loss turns up"),
        Run("overfit_cos10_3k_120kb", br, "adamw", ADAMW, cosine(4e-3, 3000, warmup=150), model=WIDE,
            train_bytes=120_000, law_breaking=True,
            note="120 kB of training text: the validation loss bottoms out late and rises while the LR decays"),
        Run("muon_abs_cos10_2k", m, "muon", MUON_ABS, cosine(0.02, 2000, warmup=50)),
        Run("adamw_cos10_4k", a, "adamw", ADAMW, cosine(4e-3, 4000, warmup=200)),
        Run("muon_wsd_lin70_2k", m, "muon", MUON_MULT, wsd(1.0, 2000, 0.7), mult, **mw),
        Run("sgd_wsd_lin30_3k", s, "sgd", SGD, wsd(0.5, 3000, 0.3, warmup=150)),
        Run("adamw_b999_wsd_lin20_3k_lr2e-2", a, "adamw", HIGH_LR_ADAMW, wsd(2e-2, 3000, 0.2),
            note="AdamW at 5x the LR of the other runs, no warm-up, beta2=0.999, no weight decay: a plateau at the "
            "peak LR and a large drop in the cooldown"),
        Run("adamw_linear0_3k", a, "adamw", ADAMW, linear(4e-3, 3000, warmup=300)),
        Run("adafactor_wsd_lin20_3k", f, "adafactor", ADAFACTOR, wsd(1e-2, 3000, 0.2, warmup=150)),
        Run("lion_cos10_3k", li, "lion", LION, cosine(1e-3, 3000, warmup=150)),
        Run("muon_wsd_lin30_4k", m, "muon", MUON_MULT, wsd(1.0, 4000, 0.3), mult, **mw),
        Run("sgd_step_50_75_3k", s, "sgd", SGD, step(0.5, 3000, (0.5, 0.75), 0.1, warmup=150)),
        Run("datashift_wsd_lin30_3k", br, "adamw", ADAMW, wsd(4e-3, 3000, 0.3, warmup=100), shift=(0.6, 0.75),
            law_breaking=True, note="from 60% of the run on, 75% of every training batch is English prose, not code"),
        Run("adamw_const_3k", a, "adamw", ADAMW, constant(4e-3, 3000, warmup=60)),
        Run("curriculum_cos10_4k", br, "adamw", ADAMW, cosine(4e-3, 4000, warmup=200), shift=(0.5, 0.9),
            shift_ramp=True, law_breaking=True, note="from 50% of the run on, the share of English prose in the "
            "training batches grows linearly to 90%: the model forgets code while the LR decays"),
        Run("overfit_lion_wsd_sqrt30_3k", br, "lion", LION, wsd(1e-3, 3000, 0.3, "1-sqrt", warmup=100), model=WIDE,
            train_bytes=120_000, law_breaking=True, note="120 kB of training text: the validation loss turns up"),
        # long runs with per-update loss, schedule and length families, LR and width sweeps
        Run("adamw_cos10_10k", a, "adamw", ADAMW, cosine(4e-3, 10000, warmup=200)),
        Run("adamw_wsd_exp20_10k", a, "adamw", ADAMW, wsd(4e-3, 10000, 0.2, "exp", warmup=200, final=4e-5)),
        Run("adamw_step811_10k", a, "adamw", ADAMW, step811(4e-3, 10000, warmup=200)),
        Run("overfit_wsd_lin50_3k", br, "muon", MUON_MULT, wsd(1.0, 3000, 0.5), mult, model=WIDE, train_bytes=160_000,
            law_breaking=True, note="160 kB of training text: the validation loss turns up while the LR decays"),
        Run("muon_wsd_lin60_8k", m, "muon", MUON_MULT, wsd(1.0, 8000, 0.6, warmup=80), mult),
        Run("adamw_wsd_lin20_1k", a, "adamw", ADAMW, wsd(4e-3, 1000, 0.2, warmup=100), **aw),
        Run("adamw_wsd_lin20_4k", a, "adamw", ADAMW, wsd(4e-3, 4000, 0.2, warmup=100), **aw),
        Run("adamw_wsd_sqrt20_4k", a, "adamw", ADAMW, wsd(4e-3, 4000, 0.2, "1-sqrt", warmup=100), **aw),
        Run("adamw_wsd_lin50_4k", a, "adamw", ADAMW, wsd(4e-3, 4000, 0.5, warmup=100), **aw),
        Run("adamw_wsd_lin10_4k", a, "adamw", ADAMW, wsd(4e-3, 4000, 0.1, warmup=100), **aw),
        Run("muon_wsd_lin50_6k", m, "muon", MUON_MULT, wsd(1.0, 6000, 0.5), mult, **mw),
        Run("muon_wsd_lin40_2k_lr01", m, "muon", {**MUON_MULT, "muon_scale": 0.01}, wsd(1.0, 2000, 0.4), mult,
            family="muon_wsd_lr"),
        Run("muon_wsd_lin40_2k_lr05", m, "muon", {**MUON_MULT, "muon_scale": 0.05}, wsd(1.0, 2000, 0.4), mult,
            family="muon_wsd_lr"),
        Run("muon_wsd_lin40_2k_d96", m, "muon", MUON_MULT, wsd(1.0, 2000, 0.4), mult, model=WIDE,
            family="muon_wsd_width"),
        Run("muon_wsd_lin40_2k_d32", m, "muon", MUON_MULT, wsd(1.0, 2000, 0.4), mult, model=SMALL,
            family="muon_wsd_width"),
        Run("adamw_cos10_2k_lr1e-3", a, "adamw", ADAMW, cosine(1e-3, 2000, warmup=100), family="adamw_cos2k_lr"),
        Run("adamw_cos10_2k_lr3e-3", a, "adamw", ADAMW, cosine(3e-3, 2000, warmup=100), family="adamw_cos2k_lr"),
        Run("adamw_cos10_2k_lr1e-2", a, "adamw", ADAMW, cosine(1e-2, 2000, warmup=100), family="adamw_cos2k_lr"),
        Run("adamw_cos10_2k_lr3e-2", a, "adamw", ADAMW, cosine(3e-2, 2000, warmup=100), family="adamw_cos2k_lr"),
        Run("adamw_cos10_2k_d32", a, "adamw", ADAMW, cosine(3e-3, 2000, warmup=100), model=SMALL,
            family="adamw_cos2k_width"),
        Run("adamw_cos10_2k_d96", a, "adamw", ADAMW, cosine(3e-3, 2000, warmup=100), model=WIDE,
            family="adamw_cos2k_width"),
        Run("adamw_cos10_2k_lr3e-3_seed1", a, "adamw", ADAMW, cosine(3e-3, 2000, warmup=100), seed=1,
            family="adamw_cos2k_lr", replicate_group="adamw_cos10_2k_lr3e-3"),
        Run("sgd_cos10_2k_lr0.15", s, "sgd", SGD, cosine(0.15, 2000, warmup=100), family="sgd_cos2k"),
        Run("sgd_cos10_2k_lr1.5", s, "sgd", SGD, cosine(1.5, 2000, warmup=100), family="sgd_cos2k", law_breaking=True,
            note="the LR is too high: the loss blows up at the end of the warm-up and recovers only part of the way"),
        Run("sgd_const_2k", s, "sgd", SGD, constant(0.5, 2000, warmup=100)),
        Run("adafactor_linear0_4k", f, "adafactor", ADAFACTOR, linear(1e-2, 4000, warmup=400)),
        Run("lion_const_2k", li, "lion", LION, constant(1e-3, 2000, warmup=40)),
        Run("lion_wsd_exp30_4k", li, "lion", LION, wsd(1e-3, 4000, 0.3, "exp", warmup=200, final=1e-5)),
        Run("adamw_cos10_12k_d48", a, "adamw", ADAMW, cosine(4e-3, 12000, warmup=240), model=NARROW),
    ]
    # fmt: on
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids)), "duplicate run ids"
    return runs


RUNS = _runs()


def _windows(text: torch.Tensor, offsets: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = offsets[:, None] + torch.arange(context + 1)[None, :]
    w = text[idx]
    return w[:, :-1], w[:, 1:]


@dataclass
class Trace:
    """What one run produced: per-update losses and LRs, validation points, timing."""

    losses: np.ndarray
    lrs: np.ndarray
    val_steps: list[int]
    val_losses: list[float]
    n_params: int
    seconds: float
    group_scales: list[float]


def train(run: Run, corpus: Corpus) -> Trace:
    """Train one run on one CPU thread. The data order and the initial weights depend only on the seed, so
    runs that share a seed and a prefix of their schedule have identical curves over that prefix."""
    torch.manual_seed(run.seed)
    model = GPT(run.model)
    opts, scales = build_optimizer(run.optimizer, model, run.options)
    lrs = parse_schedule(run.schedule).lrs()
    total, ctx = len(lrs), run.model.context
    code = torch.from_numpy(corpus.train[: run.train_bytes].astype(np.int64))
    prose = torch.from_numpy(corpus.prose.astype(np.int64))
    val_text = torch.from_numpy(corpus.val.astype(np.int64))
    vgen = torch.Generator().manual_seed(VAL_SEED)
    val_x, val_y = _windows(
        val_text, torch.randint(0, len(val_text) - ctx - 1, (VAL_WINDOWS,), generator=vgen), ctx
    )
    gen = torch.Generator().manual_seed(run.seed)
    shift_at = int(run.shift[0] * total) if run.shift else total + 1
    every = eval_every(total)

    @torch.no_grad()
    def evaluate() -> float:
        return float(
            np.mean(
                [model.loss(val_x[i : i + 64], val_y[i : i + 64]).item() for i in range(0, VAL_WINDOWS, 64)]
            )
        )

    losses = np.empty(total, dtype=np.float64)
    val_steps, val_losses = [0], [evaluate()]
    params = list(model.parameters())
    t0 = time.perf_counter()
    for k in range(total):
        for group, scale in scales:
            group["lr"] = scale * float(lrs[k])
        offsets = torch.randint(0, len(code) - ctx - 1, (run.batch,), generator=gen)
        x, y = _windows(code, offsets, ctx)
        if k >= shift_at:
            share = run.shift[1]  # type: ignore[index]
            if run.shift_ramp:
                share *= (k + 1 - shift_at) / (total - shift_at)
            n_prose = round(share * run.batch)
            po = torch.randint(0, len(prose) - ctx - 1, (n_prose,), generator=gen)
            px, py = _windows(prose, po, ctx)
            x, y = torch.cat([px, x[n_prose:]]), torch.cat([py, y[n_prose:]])
        loss = model.loss(x, y)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        for opt in opts:
            opt.step()
        losses[k] = loss.item()
        if not math.isfinite(losses[k]):
            raise FloatingPointError(f"{run.run_id}: loss is {losses[k]} at update {k + 1}")
        if (k + 1) % every == 0 or k + 1 == total:
            val_steps.append(k + 1)
            val_losses.append(evaluate())
    return Trace(
        losses,
        lrs,
        val_steps,
        val_losses,
        model.n_params(),
        time.perf_counter() - t0,
        [sc for _, sc in scales],
    )


def eval_every(total: int) -> int:
    """Validation cadence: 50 points per run (plus step 0)."""
    return max(total // 50, 1)


def bin_width(total: int) -> int:
    """Train-loss bin: per update up to 1000 updates, then ~1000 bins per run, dividing the val cadence."""
    b = max(total // 1000, 1)
    every = eval_every(total)
    while every % b:
        b -= 1
    return b


def _fmt(v: float, digits: int = 5) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else ""


def _step_noise(losses: np.ndarray) -> float:
    """Per-update noise of the training loss: std of first differences over the last 20%, / sqrt(2)."""
    tail = losses[-max(len(losses) // 5, 10) :]
    return float(np.std(np.diff(tail)) / math.sqrt(2.0))


def _code_hash() -> str:
    """SHA-1 of the generator's own source (this file and ``tiny_lm.py``) as imported: which code made a curve."""
    h = hashlib.sha1()
    for name in ("make_curves.py", "tiny_lm.py"):
        h.update((Path(__file__).resolve().parent / name).read_bytes())
    return h.hexdigest()


CODE_SHA1 = _code_hash()


def write_run(run: Run, trace: Trace, corpus: Corpus, out: Path) -> None:
    """Write ``<run>.csv``, ``<run>.lr.npy`` and, last (it marks the run done), ``<run>.json``."""
    folder = out / run.source
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / run.run_id
    total = len(trace.lrs)
    b = bin_width(total)
    ends = list(range(b, total + 1, b))
    if ends[-1] != total:
        ends.append(total)
    train = {e: float(trace.losses[max(e - b, 0) : e].mean()) for e in ends}
    val = dict(zip(trace.val_steps, trace.val_losses, strict=True))
    lr32 = trace.lrs.astype(np.float32)
    with open(f"{stem}.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["step", "lr", "train_loss", "val_loss"])
        for s in sorted(set(train) | set(val)):
            lr = f"{float(lr32[s - 1]):.7g}" if s >= 1 else ""
            w.writerow([s, lr, _fmt(train.get(s, math.nan)), _fmt(val.get(s, math.nan))])
    np.save(f"{stem}.lr.npy", lr32)
    sched = parse_schedule(run.schedule)
    shape_key = (sched.kind, sched.shape) if sched.kind == "wsd" else sched.kind
    groups = []
    names = (
        {0: "all parameters"}
        if run.optimizer != "muon"
        else {0: "block matrices (Muon)", 1: "embeddings, positions, head, norms (AdamW)"}
    )
    for i, scale in enumerate(trace.group_scales):
        groups.append(
            {"params": names.get(i, f"group {i}"), "lr_scale": scale, "peak_lr": scale * sched.peak}
        )
    meta = {
        "run_id": run.run_id,
        "source": run.source,
        "generator": "benchmarks/make_curves.py",
        "generator_sha1": CODE_SHA1,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "data": {
            "text": f"Python {platform.python_version()} standard library .py files ({corpus.stdlib}), split by file",
            "train_bytes": int(run.train_bytes or len(corpus.train)),
            "val_bytes": len(corpus.val),
            "shift": None
            if run.shift is None
            else {
                "at_fraction": run.shift[0],
                "prose_share": run.shift[1],
                "ramp": run.shift_ramp,
                "prose": "pydoc_data topics (English documentation)",
            },
        },
        "seed": run.seed,
        "model": f"byte-level GPT {run.model.describe()}",
        "model_config": run.model.as_dict(),
        "n_params": trace.n_params,
        "batch_size": run.batch,
        "tokens_per_step": run.batch * run.model.context,
        "optimizer": run.optimizer,
        "optimizer_options": run.options,
        "grad_clip": GRAD_CLIP,
        "param_groups": groups,
        "schedule": run.schedule,
        "schedule_shape": SHAPES[shape_key],
        "schedule_description": sched.describe(),
        "total_steps": total,
        "warmup_steps": sched.warmup,
        "peak_lr": sched.peak,
        "lr_units": run.lr_units,
        "lr_units_note": (
            "logged LR is the schedule multiplier (peak 1.0); each param group runs at lr_scale * multiplier"
            if run.lr_units == "multiplier"
            else "logged LR is the absolute LR of the first param group; others run at lr_scale * logged LR"
        ),
        "binning": {
            "train_loss": f"mean of the per-update losses over bins of {b} updates, stored at the bin's last update",
            "bin_updates": b,
            "val_loss": f"every {eval_every(total)} updates and at step 0, mean over {VAL_WINDOWS} fixed held-out windows",
        },
        "train_loss_step_noise": _step_noise(trace.losses),
        "step_convention": "step s = updates completed; train_loss at s = mean loss of the updates in the bin "
        "ending at s; val_loss at s = model after s updates; lr at s = LR of update s",
        "lr_file": f"{run.run_id}.lr.npy",
        "lr_file_convention": "float32, length total_steps; element k is the logged LR of update k+1; "
        "S1 after s updates = lr[:s].sum()",
        "lr_exact": True,
        "law_breaking": run.law_breaking,
        "note": run.note,
        "family": run.family or None,
        "trunk": run.trunk,
        "replicate_group": run.replicate_group,
        "n_train_points": len(train),
        "n_val_points": len(val),
        "last_step": total,
        "last_val": [total, val[total]],
        "last_train": [total, train[total]],
        "min_val": [int(trace.val_steps[int(np.argmin(trace.val_losses))]), float(np.min(trace.val_losses))],
        "train_seconds": round(trace.seconds, 1),
    }
    Path(f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")


INDEX_COLUMNS = [
    "folder", "run_id", "source_repo", "source_path", "schedule_shape", "total_steps", "warmup_steps", "n_params",
    "model", "n_train_points", "n_val_points", "last_step", "last_val", "last_train", "lr_exact", "replicate_group",
    "trunk", "optimizer", "lr_units", "peak_lr", "family", "law_breaking",
]  # fmt: skip


def write_index(out: Path) -> int:
    """Rebuild ``index.csv`` from every run JSON under ``out``; returns the number of runs."""
    rows = []
    for path in sorted(out.glob("*/*.json")):
        m = json.loads(path.read_text())
        rows.append({
            "folder": path.parent.name, "run_id": m["run_id"], "source_repo": "scaleforecast",
            "source_path": m["generator"], "schedule_shape": m["schedule_shape"], "total_steps": m["total_steps"],
            "warmup_steps": m["warmup_steps"], "n_params": m["n_params"], "model": m["model"],
            "n_train_points": m["n_train_points"], "n_val_points": m["n_val_points"], "last_step": m["last_step"],
            "last_val": m["last_val"][1], "last_train": m["last_train"][1], "lr_exact": True,
            "replicate_group": m["replicate_group"] or "", "trunk": m["trunk"] or "", "optimizer": m["optimizer"],
            "lr_units": m["lr_units"], "peak_lr": m["peak_lr"], "family": m["family"] or "",
            "law_breaking": m["law_breaking"],
        })  # fmt: skip
    with open(out / "index.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, INDEX_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", action="append", help="fnmatch pattern(s) of run ids")
    ap.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    args = ap.parse_args(argv)
    runs = [r for r in RUNS if not args.only or any(fnmatch.fnmatch(r.run_id, p) for p in args.only)]
    done = {r.run_id for r in runs if (args.out / r.source / f"{r.run_id}.json").is_file()}
    todo = [r for r in runs if r.run_id not in done][: args.max_runs]
    if args.list:
        for r in runs:
            print(
                f"{'done' if r.run_id in done else '    '}  {r.source:20s} {r.run_id:32s} {r.total:6d}  {r.schedule}"
            )
        print(
            f"{len(done)}/{len(runs)} done, {sum(r.total for r in runs if r.run_id not in done)} updates to go"
        )
        return
    if not todo:
        print(f"nothing to train: {len(done)}/{len(runs)} runs are in {args.out}")
        return
    # one thread and deterministic kernels: the same seed gives the same curve, bit for bit
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    corpus = load_corpus()
    for r in todo:
        print(f"{time.strftime('%H:%M:%S')} {r.source}/{r.run_id}: {r.total} updates", flush=True)
        try:
            trace = train(r, corpus)
        except FloatingPointError as err:
            # a diverged run is not a complete curve; say so and go on with the next one
            print(f"{time.strftime('%H:%M:%S')}   skipped: {err}", flush=True)
            continue
        write_run(r, trace, corpus, args.out)
        n = write_index(args.out)
        print(
            f"{time.strftime('%H:%M:%S')}   done in {trace.seconds:.0f} s, {trace.n_params} params, "
            f"val {trace.val_losses[0]:.3f} -> min {min(trace.val_losses):.3f} -> last {trace.val_losses[-1]:.3f}; "
            f"{n} runs in the index",
            flush=True,
        )


if __name__ == "__main__":
    main()
