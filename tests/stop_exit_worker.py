"""A two-rank plain loop (under ``torchrun``) that its forecast stops, and which exits right after: the clean
end of a stopped job. Run by ``test_adapters.py``; exit status 0 on every rank is the check.

With ``--raise``, rank 1's loop raises at update 25 inside ``try: ... finally: fc.close()`` while rank 0 goes
on into its next collective (DDP's gradient all-reduce): the job must end at once, with rank 1's error, not
hang until the process group's timeout.

With ``--uneven``, rank 1 calls ``step()`` once more than rank 0 (a bug of the loop's): the ranks are told
their flushes differ, and the job still ends, every rank joining the last flush. With ``--subgroup``, every
rank passes a group of rank 0 alone: rank 1 is told it is not in it, rank 0 that its group is a part of the job.
With ``--destroy-first``, the loop destroys the process group before ``close()``: the run still ends cleanly.
"""

from __future__ import annotations

import math
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from scaleforecast.callbacks import LossForecastSession


def subgroup() -> None:
    group = dist.new_group([0])
    w = torch.nn.Parameter(torch.zeros(1))
    try:
        fc = LossForecastSession(
            torch.optim.SGD([w], lr=0.1), total_steps=10, writer=False, process_group=group
        )
    except ValueError as err:
        print(f"rank {dist.get_rank()}: {err}", flush=True)
        return
    fc.close()
    print(f"rank {dist.get_rank()}: built", flush=True)


def destroy_first() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    fc = LossForecastSession(opt, total_steps=100, writer=False, flush_every=10)
    for n in range(1, 56):
        opt.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    dist.destroy_process_group()
    fc.close()
    print(f"closed, stopped_at={fc.stopped_at}", flush=True)


def main() -> None:
    failing = "--raise" in sys.argv[1:]
    uneven = "--uneven" in sys.argv[1:]
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    if "--subgroup" in sys.argv[1:]:
        subgroup()
        return
    if "--destroy-first" in sys.argv[1:]:
        destroy_first()
        return
    total, warmup = 400, 20
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda i: (i + 1) / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / total)),
    )
    target = None if failing or uneven else 1.0
    fc = LossForecastSession(opt, sched, total_steps=total, target_loss=target, writer=False, flush_every=10)
    gen = torch.Generator().manual_seed(dist.get_rank())
    area = 0.0
    try:
        for it in range(total):
            if failing:
                dist.all_reduce(torch.ones(1))  # the gradient all-reduce of DDP's backward
                if it == 25 and dist.get_rank() == 1:
                    raise RuntimeError("injected failure on rank 1")
            opt.step()
            area += opt.param_groups[0]["lr"] / 0.1
            sched.step()
            fc.step(2.0 + 0.8 * area**-0.4 + 0.01 * torch.randn(1, generator=gen)[0])
            if uneven and it == 50 and dist.get_rank() == 1:
                fc.step(2.0)  # the loop's bug: one step too many on one rank
            if fc.should_stop:
                break
    finally:
        fc.close()
    if uneven:
        print(f"rank {dist.get_rank()} done", flush=True)
        return
    assert fc.stopped_at is not None and fc.stopped_at < total, fc.stopped_at
    print(f"rank {dist.get_rank()} stopped at {fc.stopped_at}", flush=True)
    # no destroy_process_group and no pause: the process ends right after the plugin's last collective


if __name__ == "__main__":
    main()
