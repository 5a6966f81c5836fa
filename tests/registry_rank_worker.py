"""One rank of a two-process job with a sweep stopper (run by tests/test_sweep_stopper.py).

``argv``: registry path, mode (``env``: the job id comes from the environment; ``gloo``: rank 0's run id is
broadcast over a real gloo process group and bound; ``none``: no id at all) and the JSON file to write.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from forecasts import one_point

from scaleforecast.decision import SweepStopper
from scaleforecast.results import Forecast


def forecast(loss: float, std: float, step: int) -> Forecast:
    """The forecast fitted at ``step`` as the run monitor hands it to its listeners."""
    return one_point(loss, std, heard_at=step)


def main() -> None:
    path, mode, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    stopper = SweepStopper(path, sweep="s", min_fraction=0.3)
    if mode == "gloo":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        shared = [stopper.run_id]
        dist.broadcast_object_list(shared, src=0)
        stopper.bind(rank=dist.get_rank(), run_id=shared[0])
    decisions = []
    calls = 0
    # The forecast worsens: 2.8 (can beat the other run's 3.0) to 3.4 (cannot); stops once past the grace.
    for i, step in enumerate(range(100, 1001, 100)):
        assert stopper.sync(60)  # both ranks decide on the same records
        decisions.append(stopper(step, forecast(2.8 + 0.1 * i, 0.02, step)))
        calls += 1
        if decisions[-1]:
            break
    if mode == "gloo":
        dist.barrier()
    stopper.finish()
    assert stopper.sync(60)
    if mode == "gloo":
        dist.destroy_process_group()
    out.write_text(
        json.dumps(
            {
                "run_id": stopper.run_id,
                "rank": stopper.rank,
                "decisions": decisions,
                "stopped_at": stopper.stopped_at,
                "calls": calls,
            }
        )
    )


if __name__ == "__main__":
    main()
