"""One tiny training problem, trained by each adapter's framework: Lightning, the HF ``Trainer`` and a plain loop.

The same model (a linear regression whose MSE loss falls along a smooth, law-like curve), data, optimizer (SGD)
and schedule (linear warm-up, then cosine) in all three, so that one scenario can be run against every adapter
and compared. :func:`train` runs one fit (on one process, or as one rank of a two-process job) and returns what
the tests look at. No download: the data are generated.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

ADAPTERS = ("lightning", "hf", "loop")
DIM, LR, WARMUP = 16, 0.05, 5


class Pairs(Dataset):
    """``y = x @ w + noise``, as ``{"x", "labels"}`` rows (the HF ``Trainer`` passes them as keyword arguments)."""

    def __init__(self, n: int = 4096, noise: float = 0.5, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, DIM, generator=g)
        w = torch.randn(DIM, 1, generator=g)
        self.y = self.x @ w + noise * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class Regression(torch.nn.Module):
    """A linear layer with an MSE loss. ``offset`` is added to the loss (to make ranks disagree; a constant has
    no gradient); from the ``nan_from``-th training forward on the loss is NaN (an injected NaN storm).
    ``raw`` keeps every training loss as a host float (a test probe: it syncs, which the adapters never do)."""

    def __init__(self, offset: float = 0.0, nan_from: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(DIM, 1)
        self.offset, self.nan_from = offset, nan_from
        self.raw: list[float] = []

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        loss = torch.nn.functional.mse_loss(self.layer(x), labels) + self.offset
        if self.training and torch.is_grad_enabled():
            if self.nan_from is not None and len(self.raw) + 1 >= self.nan_from:
                loss = loss * float("nan")
            self.raw.append(float(loss.detach()))
        return {"loss": loss}


def optimizer_and_scheduler(model: torch.nn.Module, total: int) -> tuple[Any, Any]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    warm = torch.optim.lr_scheduler.LinearLR(opt, 0.1, 1.0, total_iters=WARMUP)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - WARMUP, eta_min=LR * 0.01)
    return opt, torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[WARMUP])


def _halve_lr(optimizer: Any) -> None:
    """An LR change behind the scheduler's back (a manual intervention mid-run)."""
    for group in optimizer.param_groups:
        group["lr"] *= 0.5


@dataclass
class Run:
    """What a fit left: the adapter object, the steps trained, the LR each update used, the checkpoint."""

    cb: Any
    model: Regression
    steps_run: int
    root: Path
    used_lrs: list[float] = field(default_factory=list)
    checkpoint: Path | None = None


@dataclass
class Plan:
    """One fit: ``steps`` updates of batch ``batch``, the adapter's keyword arguments, and the faults.

    ``shift``: added to every loss; ``offset``: added to rank ``r``'s loss ``r`` times. ``ckpt_at``: save a checkpoint after this update; ``resume``: the checkpoint to resume from, its session
    state passed through ``doctor`` first; ``halve_lr_at``: halve the LR after this update; ``distributed``:
    this is one rank of a two-process job (the loop and the HF Trainer under torchrun; Lightning launches its
    own two processes with ``launcher``, ``ddp_spawn`` or ``ddp_fork``); ``extra_callbacks``: more callbacks of
    the framework (Lightning, HF).
    """

    steps: int = 40
    batch: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)
    target_loss: float | None = None
    shift: float = 0.0
    offset: float = 0.0
    nan_from: int | None = None
    ckpt_at: int | None = None
    resume: Path | None = None
    doctor: Callable[[dict[str, Any]], Any] = lambda state: state
    halve_lr_at: int | None = None
    distributed: bool = False
    launcher: str = "ddp_spawn"
    tensorboard: bool = True
    extra_callbacks: list[Any] = field(default_factory=list)
    adapter_class: Any = None


def train(adapter: str, root: Path, plan: Plan) -> Run:
    """Fit the regression with ``adapter`` (``"lightning"``, ``"hf"`` or ``"loop"``) under ``plan``."""
    root.mkdir(parents=True, exist_ok=True)
    return {"lightning": _lightning, "hf": _hf, "loop": _loop}[adapter](root, plan)


def rank_offset(plan: Plan) -> float:
    return plan.shift + plan.offset * int(os.environ.get("RANK", "0"))


# ------------------------------------------------------------------------------------------ Lightning
def _lightning(root: Path, plan: Plan) -> Run:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning_models import HalveLRAt, LitRegression, cpu_trainer
    from scaleforecast.callbacks import LossForecast

    cb = (plan.adapter_class or LossForecast)(plan.target_loss, **plan.kwargs)
    callbacks: list[Any] = [cb, HalveLRAt(plan.halve_lr_at), *plan.extra_callbacks]
    if plan.ckpt_at:
        callbacks.append(
            ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_train_steps=plan.ckpt_at, save_top_k=-1)
        )
    ckpt_path = None
    if plan.resume is not None:
        ckpt = torch.load(plan.resume, weights_only=False)
        key = next(k for k in ckpt["callbacks"] if k.startswith("LossForecast"))
        ckpt["callbacks"][key] = plan.doctor(ckpt["callbacks"][key])
        ckpt_path = root / "resumed.ckpt"
        torch.save(ckpt, ckpt_path)
    trainer = cpu_trainer(
        plan.steps,
        callbacks,
        root,
        logger=TensorBoardLogger(str(root / "tb"), name="run") if plan.tensorboard else False,
        enable_checkpointing=bool(plan.ckpt_at),
        devices=2 if plan.distributed else 1,
        strategy=plan.launcher if plan.distributed else "auto",
    )
    model = LitRegression(plan.steps, plan.batch, plan.shift, plan.offset, plan.nan_from)
    trainer.fit(model, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    checkpoint = next((root / "ckpt").glob(f"*step={plan.ckpt_at}*.ckpt"), None) if plan.ckpt_at else None
    return Run(cb, model.net, int(trainer.global_step), root, model.used, checkpoint)


# ------------------------------------------------------------------------------------------------- HF
def _hf(root: Path, plan: Plan) -> Run:
    from scaleforecast.callbacks import HFLossForecast
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = Regression(offset=rank_offset(plan), nan_from=plan.nan_from)
    opt, sched = optimizer_and_scheduler(model, plan.steps)
    used: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: used.append(float(o.param_groups[0]["lr"])))

    class Halve(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == plan.halve_lr_at:
                _halve_lr(opt)

    cb = (plan.adapter_class or HFLossForecast)(plan.target_loss, **plan.kwargs)
    resume = None
    if plan.resume is not None:
        resume = root / plan.resume.name
        shutil.copytree(plan.resume, resume, dirs_exist_ok=True)
        state_file = resume / "trainer_state.json"
        state = json.loads(state_file.read_text())
        entries = state["stateful_callbacks"]["HFLossForecast"]
        for entry in entries if isinstance(entries, list) else [entries]:
            entry["attributes"]["_saved_state"] = plan.doctor(entry["attributes"]["_saved_state"])
        state_file.write_text(json.dumps(state))
    args = TrainingArguments(
        output_dir=str(root),
        max_steps=plan.steps,
        per_device_train_batch_size=plan.batch,
        logging_steps=5,
        report_to=["tensorboard"] if plan.tensorboard else "none",
        save_strategy="steps" if plan.ckpt_at else "no",
        save_steps=plan.ckpt_at or 500,
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        max_grad_norm=0.0,  # no clipping, as in the other two
        ddp_backend="gloo" if plan.distributed else None,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Pairs(),
        optimizers=(opt, sched),
        callbacks=[cb, Halve(), *plan.extra_callbacks],
    )
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    checkpoint = root / f"checkpoint-{plan.ckpt_at}" if plan.ckpt_at else None
    return Run(cb, model, int(trainer.state.global_step), root, used, checkpoint)


# --------------------------------------------------------------------------------------------- loop
def _loop(root: Path, plan: Plan) -> Run:
    from scaleforecast.callbacks import LossForecastSession

    model = Regression(offset=rank_offset(plan), nan_from=plan.nan_from)
    opt, sched = optimizer_and_scheduler(model, plan.steps)
    used: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: used.append(float(o.param_groups[0]["lr"])))
    ddp: torch.nn.Module = model
    sampler = None
    if plan.distributed:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        from torch.utils.data.distributed import DistributedSampler

        ddp = DistributedDataParallel(model)
        sampler = DistributedSampler(Pairs(), seed=1)
    kwargs = dict(plan.kwargs)
    writer = None
    if plan.tensorboard and "writer" not in kwargs:
        from torch.utils.tensorboard import SummaryWriter

        writer = kwargs["writer"] = SummaryWriter(str(root / "tb"))
    start = 0
    saved: dict[str, Any] | None = None
    if plan.resume is not None:
        saved = torch.load(plan.resume, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        start = int(saved["step"])
    fc = (plan.adapter_class or LossForecastSession)(
        opt, sched, target_loss=plan.target_loss, total_steps=plan.steps, **kwargs
    )
    if saved is not None:
        fc.load_state_dict(plan.doctor(saved["fc"]))
    gen = torch.Generator().manual_seed(1 + start)
    loader = DataLoader(
        Pairs(), batch_size=plan.batch, shuffle=sampler is None, sampler=sampler, generator=gen
    )
    batches = iter(loader)
    checkpoint, step = None, start
    for step in range(start + 1, plan.steps + 1):
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            batch = next(batches)
        loss = ddp(**batch)["loss"]
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        fc.step(loss)
        if step == plan.halve_lr_at:
            _halve_lr(opt)
        if step == plan.ckpt_at:
            checkpoint = root / "ckpt.pt"
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
            torch.save({**state, "fc": fc.state_dict(), "step": step}, checkpoint)
        if fc.should_stop:
            break
    fc.close()
    if writer is not None:
        writer.close()
    return Run(fc, model, step, root, used, checkpoint)


# ------------------------------------------------------------------------------------------- helpers
def step_along_the_law(opt: Any, sched: Any, fc: Any, total: int) -> None:
    """``total`` updates of ``opt`` and ``sched``, each observed by ``fc`` at a loss that follows the law's
    power term in the LR area so far, ``2 + 0.5 * S1^-0.4``: a plain loop with no model to train."""
    area = 0.0
    for _ in range(total):
        area += opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        fc.step(torch.tensor(2.0 + 0.5 * area**-0.4))


def older_state(state: dict[str, Any]) -> dict[str, Any]:
    """The same state in the format the first release wrote (version 1, detectors called ``health``)."""
    monitor = {k: v for k, v in state["monitor"].items() if k not in ("detectors", "listeners")}
    monitor.update(version=1, health=state["monitor"]["detectors"])
    out = {"version": 1, "monitor": monitor, "pending": state["pending"], "stopped_at": state["stopped_at"]}
    out["stop_reason"] = state["stop_reason"]
    if state.get("adapter"):
        out.update(state["adapter"])  # the HF callback kept its name and mode at the top
    return out


def future_state(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "version": 99}


def garbled_state(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "monitor": {"version": 2, "forecaster": {"version": 1, "schedule": "%%not base64%%"}}}


def no_forecaster_state(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "monitor": {**state["monitor"], "forecaster": None}}


def bad_step_state(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "step": "abc"}


def finite_mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / max(len(finite), 1)
