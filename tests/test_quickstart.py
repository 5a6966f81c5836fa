"""``examples/quickstart.py`` (what ``make demo`` runs), shortened: real training, a real stop, real files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning.pytorch")
pytest.importorskip("tensorboard")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


@pytest.mark.trainer
@pytest.mark.slow
def test_the_demo_forecasts_live_stops_the_hopeless_run_and_checks_itself(tmp_path: Path) -> None:
    from procs import run_group

    proc = run_group([sys.executable, str(EXAMPLE), "--steps", "160", "--out", str(tmp_path)], timeout=400)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    # a live forecast with its band at each refit, as steps out of the run's length (never "Epoch 0/-2")
    live = re.findall(r"^\s+(\d+)/160\s+[\d.]+\s+([\d.]+)\s+\[([\d.]+), ([\d.]+)\]$", out, re.M)
    assert len(live) >= 8, out
    assert all(float(lo) <= float(mid) <= float(hi) for _, mid, lo, hi in live)
    assert "Epoch" not in out + proc.stderr
    # run 1 is stopped by the stop rule, after its grace period, and the verdict is checked on run 2
    stop = re.search(r"stopped at step (\d+) of 160, \d+% of its steps saved:\n  (.+)\n", out)
    assert stop and 40 <= int(stop.group(1)) < 160 and "cannot reach 1.5" in stop.group(2), out
    assert "run 1's target 1.5 was indeed out of reach" in out
    made = re.findall(r"made at step\s+(\d+) \(\s*\d+% of the run\): [\d.]+ \[[\d.]+, [\d.]+\]  error", out)
    assert [int(s) for s in made] == [40, 80, 120], out
    # what to look at next: the TensorBoard line and the pictures it wrote
    assert f"tensorboard --logdir {tmp_path}" in out
    for png in ("forecast_band.png", "early_stop.png"):
        assert f"wrote     {tmp_path / png}" in out
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in ("1-target", "2-to-the-end"):
        assert list((tmp_path / run).glob("version_*/events.out.tfevents.*")), run
    assert list((tmp_path / "1-target").glob("version_*/scaleforecast/early_stop/events.out.tfevents.*"))
