"""``scaleforecast watch``: incremental tailing (growth, truncation, rotation, resume), the sibling output
directory, and the sidecar against a live writer process, stopped by a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.cli import main
from scaleforecast.laws import annealing_area, forward_area
from scaleforecast.schedules import as_lrs
from scaleforecast.watch import EventTailer, Watcher, sidecar_dir

tb = pytest.importorskip("torch.utils.tensorboard")
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402

SPEC = "cosine:peak=1e-3,warmup=20,total=2000"


def scalars_of(path: Path) -> dict[str, list[tuple[int, float]]]:
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tailer_follows_growth_truncation_and_rotation(tmp_path: Path) -> None:
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    for s in range(1, 51):
        w.add_scalar("loss", 3.0 - s * 1e-3, s)
    w.flush()
    tailer = EventTailer(run)
    scalars, reset = tailer.poll()
    assert len(scalars["loss"][0]) == 50 and not reset
    for s in range(51, 101):
        w.add_scalar("loss", 3.0 - s * 1e-3, s)
    w.flush()
    scalars, reset = tailer.poll()
    np.testing.assert_array_equal(scalars["loss"][0], np.arange(1, 101))
    assert not reset
    w.close()
    (f,) = [p for p in run.iterdir()]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    scalars, reset = tailer.poll()
    assert reset and 0 < len(scalars["loss"][0]) < 100
    time.sleep(1.1)
    w2 = tb.SummaryWriter(str(run))
    for s in range(101, 121):
        w2.add_scalar("loss", 2.0, s)
    w2.close()
    scalars, _ = tailer.poll()
    assert scalars["loss"][0][-1] == 120 and len(list(run.iterdir())) == 2


def test_watcher_writes_a_sibling_run_and_rewinds_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    for s in range(10, 1001, 10):
        w.add_scalar("lm loss", 2.5 + 1.0 / np.sqrt(s), s)
    w.close()
    before = sorted(p.name for p in run.iterdir())
    records: list[dict] = []
    watcher = Watcher(
        run, schedule=SPEC, interval=0.1, refit_every=100, emit=records.append, log=lambda m: None
    )
    assert watcher.poll_once() == 100
    assert watcher.monitor.forecaster.last_step == 1000
    # A restart from the checkpoint at step 800 rewrites steps 810.. in a new file.
    time.sleep(1.1)
    w = tb.SummaryWriter(str(run))
    for s in range(810, 1201, 10):
        w.add_scalar("lm loss", 2.4 + 1.0 / np.sqrt(s), s)
    w.close()
    with pytest.warns(RuntimeWarning, match="resumed"):
        assert watcher.poll_once() == 40
    assert watcher.monitor.forecaster.last_step == 1200
    watcher.stop_event.set()
    assert watcher.run() == 0
    out = sidecar_dir(run)
    assert out.name == "job-scaleforecast" and out.parent == run.parent
    tags = scalars_of(out)
    assert {"forecast/final_loss", "forecast/lower", "forecast/upper", "law/L0"} <= set(tags)
    assert tags["forecast/final_loss"][-1][0] == 1200
    assert any(r["type"] == "forecast" for r in records)
    # The job's own directory is untouched: same files, nothing added.
    assert len(sorted(p.name for p in run.iterdir())) == len(before) + 1


def test_watch_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", str(tmp_path)]) == 2
    assert "planned length" in capsys.readouterr().err
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    w.add_scalar("loss", 3.0, 1)
    w.close()
    rc = main(["watch", str(run), "--schedule", SPEC, "--out", str(run / "inside"), "--interval", "0.1"])
    assert rc == 2
    assert "inside the job's run directory" in capsys.readouterr().err


WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter
    from scaleforecast.laws import annealing_area, forward_area
    from scaleforecast.schedules import as_lrs

    lrs = as_lrs(sys.argv[2])
    s1, s2 = forward_area(lrs), annealing_area(lrs)
    w = SummaryWriter(sys.argv[1], flush_secs=1)
    print("writing", flush=True)
    for s in range(1, len(lrs) + 1):
        if s % 10 == 0:
            w.add_scalar("lm loss", 2.5 + 0.6 * s1[s - 1] ** -0.5 - 0.4 * s2[s - 1], s)
            w.add_scalar("learning-rate", lrs[s - 1], s)
        if s % 100 == 0:
            w.flush()
            time.sleep(0.5)
    w.close()
    time.sleep(600)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_watch_live_writer_and_signal(tmp_path: Path, sig: signal.Signals) -> None:
    run = tmp_path / "job"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    writer = subprocess.Popen([sys.executable, str(script), str(run), SPEC], env=env, stdout=subprocess.PIPE)
    watch = None
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == b"writing"
        watch = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scaleforecast.cli",
                "watch",
                str(run),
                "--total-steps",
                "2000",
                "--interval",
                "0.3",
                "--refit-every",
                "100",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out = sidecar_dir(run)
        deadline = time.monotonic() + 150
        seen: dict[str, list[tuple[int, float]]] = {}
        while time.monotonic() < deadline:
            if out.is_dir() and any(out.iterdir()):
                seen = scalars_of(out)
                if len(seen.get("forecast/final_loss", [])) >= 2:
                    break
            assert watch.poll() is None, watch.stderr.read() if watch.stderr else ""
            time.sleep(0.5)
        assert len(seen.get("forecast/final_loss", [])) >= 2, "no forecast tags appeared in time"
        watch.send_signal(sig)
        stdout, stderr = watch.communicate(timeout=60)
        assert watch.returncode == 0, stderr
        assert "a last pass" in stderr
        records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        forecasts = [r for r in records if r["type"] == "forecast"]
        assert forecasts and forecasts[-1]["final_step"] == 2000
        lrs = as_lrs(SPEC)
        truth = 2.5 + 0.6 * forward_area(lrs)[-1] ** -0.5 - 0.4 * annealing_area(lrs)[-1]
        assert forecasts[-1]["forecasts"][0]["loss"] == pytest.approx(truth, rel=0.05)
        assert not any(p.name.endswith("scaleforecast") for p in run.iterdir())
    finally:
        for proc in (watch, writer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)


@pytest.mark.slow
def test_watch_a_finished_real_curve_converted_to_event_files(
    tmp_path: Path, curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = curves_dir / "llmc_gpt2_124m" / "llmc_gpt2_124m_10B_cosine_20241013.csv"
    from scaleforecast.io import read_run

    real = read_run(src, loss="train_loss", warn=False)
    run = tmp_path / "gpt2"
    w = tb.SummaryWriter(str(run))
    for s in range(10, real.total_steps + 1, 10):
        w.add_scalar("train/loss", float(real.losses[s - 10 : s].mean()), s)  # HF: mean over logging_steps
        w.add_scalar("train/learning_rate", float(real.lrs[s - 1]), s)
    w.close()
    rc = main(["watch", str(tmp_path), "--total-steps", str(real.total_steps), "--interval", "0.1", "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    assert "reached its last step (19560)" in captured.err
    last = [json.loads(x) for x in captured.out.splitlines() if '"forecast"' in x][-1]
    observed = float(np.median(real.losses[-390:]))
    assert last["forecasts"][0]["loss"] == pytest.approx(observed, rel=0.01)
    tags = scalars_of(tmp_path / "gpt2-scaleforecast")
    assert tags["forecast/final_loss"][-1][0] == 19560


def test_watch_survives_transient_poll_failures(tmp_path: Path) -> None:
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    for s in range(10, 501, 10):
        w.add_scalar("loss", 2.5 + 1.0 / np.sqrt(s), s)
    w.close()
    logs: list[str] = []
    watcher = Watcher(run, schedule=SPEC, interval=0.01, log=logs.append, max_idle=0.2)
    real_poll = watcher.tailer.poll
    calls = {"n": 0}

    def flaky() -> tuple[dict, bool]:
        calls["n"] += 1
        if calls["n"] <= 2:  # injected fault: the file system hiccups twice
            raise OSError("stale file handle")
        return real_poll()

    watcher.tailer.poll = flaky  # type: ignore[method-assign]
    assert watcher.run() == 0
    assert sum("poll failed (OSError" in m for m in logs) == 2
    assert watcher.monitor.forecaster.last_step == 500

    broken = Watcher(run, schedule=SPEC, interval=0.01, log=logs.append, out=tmp_path / "o2")

    def always_fails() -> tuple[dict, bool]:
        raise OSError("gone")

    broken.tailer.poll = always_fails  # type: ignore[method-assign]
    assert broken.run() == 1
    assert any("polls in a row failed" in m for m in logs)
