"""A plain loop run with warnings as errors (``python -W error``): the plugin's notices must not end it.

The loop hits what the plugin says something about: a scheduler that sets the LR from future metrics
(``ReduceLROnPlateau``: the look-ahead holds the LR), a TensorBoard folder that cannot be made (a file is in its
place), a NaN loss, and a session never closed (said at the interpreter's exit). Run by ``test_adapters.py``;
it prints how far the loop came and the forecast it made, and must exit with status 0.

    python -W error tests/werror_worker.py DIRPATH
"""

from __future__ import annotations

import math
import sys

import torch
from scaleforecast.callbacks import LossForecastSession

TOTAL = 400


def main() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    fc = LossForecastSession(
        opt, sched, total_steps=TOTAL, flush_every=20, dirpath=sys.argv[1], verbose=False
    )
    for n in range(1, TOTAL + 1):
        opt.step()
        loss = math.nan if n == 150 else 2.0 + 3.0 * (0.1 * n) ** -0.3
        fc.step(torch.tensor(loss))
    latest = fc.session.monitor.forecaster.latest
    print(f"trained to {n}; forecast status {None if latest is None else latest.status.value}", flush=True)
    # never closed: the notice at exit is logged, not raised out of the exit handler


if __name__ == "__main__":
    main()
