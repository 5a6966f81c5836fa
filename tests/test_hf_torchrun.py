"""Two-process ``torchrun`` (gloo, CPU) run of a real HF Trainer: every rank stops at the same step."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

WORKER = Path(__file__).resolve().parent / "hf_worker.py"
MAX_STEPS = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("resolution", ["step", "window"])
def test_both_ranks_stop_at_the_same_step(tmp_path: Path, resolution: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        "--out",
        str(tmp_path),
        "--target",
        "0.5",
        "--max-steps",
        str(MAX_STEPS),
        "--resolution",
        resolution,
    ]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=360)
    except subprocess.TimeoutExpired as exc:  # a hang is the failure this test exists to catch
        pytest.fail(f"torchrun did not finish in time (deadlock?):\n{exc.stdout}\n{exc.stderr}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in records] == [2, 2]
    steps = {r["global_step"] for r in records}
    assert len(steps) == 1, records
    (step,) = steps
    assert step < MAX_STEPS, "the unreachable target should have stopped the run early"
    assert all(r["stopped"] and r["stop_step"] == step for r in records), records
    # Both ranks fitted the same reduced losses, so they hold the same forecast.
    assert records[0]["final"] == pytest.approx(records[1]["final"], rel=1e-9)
    assert records[0]["mode"] == records[1]["mode"] == resolution
    # The ranks really saw different data (only the reduced values agree).
    assert records[0]["local_first_loss"] != records[1]["local_first_loss"]
    if resolution == "step":
        # Per-step losses reduced over ranks average, window by window, to HF's own gathered logs.
        obs = records[0]["observations"]
        assert obs["start"] == obs["end"] == list(range(1, step + 1))
        for end, loss in records[0]["logs"]:
            window = obs["y"][end - 5 : end]
            assert sum(window) / len(window) == pytest.approx(loss, rel=1e-5)
