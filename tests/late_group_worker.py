"""A two-rank plain loop (under ``torchrun``) that builds its session before ``init_process_group``: every
process then takes itself for rank 0 of 1. Run by ``test_adapters.py``; each rank prints the plugin's warnings
about it."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from scaleforecast.callbacks import LossForecastSession


def main() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    fc = LossForecastSession(opt, total_steps=40, writer=False, verbose=False, flush_every=10)
    dist.init_process_group("gloo")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 41):
            opt.step()
            fc.step(torch.tensor(2.0 + n**-0.5))
        fc.close()
    for warning in caught:
        if "init_process_group" in str(warning.message):
            print(f"rank {dist.get_rank()}: {warning.message}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
