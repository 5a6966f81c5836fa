"""An Accelerate training loop with the plain-loop adapter, given the scheduler Accelerate prepared: run alone or
under ``torchrun`` (gloo). Run by ``test_adapters.py``.

Accelerate wraps the scheduler and, at each update that syncs the gradients, steps it once per process (the
HF examples size it as ``updates * num_processes``). The look-ahead must read the wrapped scheduler at that pace:
it failed on the wrapper (no plan, no forecast, no stop) and, given the inner scheduler, planned half the decay
on two processes. Prints ``plan ok`` when the planned LR of every update matches the LR it used, and a forecast.
``--cut`` saves Accelerate's checkpoint halfway and ends; ``--resume`` goes on from it, and from its history.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from scaleforecast.callbacks import LossForecastSession
from torch.utils.data import DataLoader, TensorDataset

TOTAL, WARMUP, ACC = 60, 6, 2


def build(acc: Accelerator) -> tuple[torch.nn.Module, object, object, DataLoader]:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    n = TOTAL * acc.num_processes  # the scheduler counts every process's batches, as Accelerate steps it

    def lam(i: int) -> float:
        w = WARMUP * acc.num_processes
        return (i + 1) / w if i < w else 0.5 * (1 + math.cos(math.pi * (i - w) / (n - w)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    x = torch.randn(TOTAL * ACC * 4 * acc.num_processes, 8)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=4)
    return (*acc.prepare(model, opt, sched, data),)  # type: ignore[return-value]


def main() -> None:
    out, mode = Path(sys.argv[1]), (sys.argv[2:] or ["full"])[0]
    acc = Accelerator(cpu=True, gradient_accumulation_steps=ACC)
    model, opt, sched, data = build(acc)
    fc = LossForecastSession(opt, sched, total_steps=TOTAL, writer=False)
    acc.register_for_checkpointing(fc)
    done = 0
    if mode == "--resume":
        acc.load_state(str(out / "ckpt"))
        done = fc.steps
        data = acc.skip_first_batches(data, done * ACC)
    used = list(np.load(out / "used.npy")) if done else []
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for x, y in data:
            with acc.accumulate(model):
                loss = torch.nn.functional.mse_loss(model(x), y)
                acc.backward(loss)
                lr = opt.param_groups[0]["lr"]  # the LR of this update, before the scheduler moves it
                opt.step()
                sched.step()
                opt.zero_grad()
            if acc.sync_gradients:
                used.append(lr)
                fc.step(loss.detach())
                if mode == "--cut" and fc.steps == TOTAL // 2:
                    break
        plan = fc.session.monitor.forecaster.schedule
        if mode == "--cut":
            acc.save_state(str(out / "ckpt"))
            np.save(out / "used.npy", np.asarray(used))
        fc.close()
    for w in said:
        print(f"rank {acc.process_index} warning: {w.message}", flush=True)
    assert plan is not None, "no plan"
    gap = float(np.max(np.abs(np.asarray(used) - plan[: len(used)]) / np.max(plan)))
    ok = "ok" if gap < 1e-9 else f"off by {gap:.3g} of the peak"
    print(
        f"rank {acc.process_index} of {acc.num_processes}: {fc.steps} updates from {done}, plan {ok}",
        flush=True,
    )
    if fc.forecast is not None and fc.forecast.final is not None:
        print(f"rank {acc.process_index}: forecast {fc.forecast.final.loss:.4g}", flush=True)


if __name__ == "__main__":
    main()
