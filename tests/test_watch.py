"""``scaleforecast watch``: the sibling output directory (never through a link), resume, the run's length kept
against stray points, a missing path, the LR guess and its revisions, and the sidecar against a live writer
process, stopped by a signal once the writer has reached a point the test chose (no timing involved)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scaleforecast.cli import main
from scaleforecast.fitting import FitConfig
from scaleforecast.laws import schedule_areas
from scaleforecast.schedules import as_lrs
from scaleforecast.watch import Watcher, sidecar_dir

tb = pytest.importorskip("torch.utils.tensorboard")
from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: E402

SPEC = "cosine:peak=1e-3,warmup=20,total=2000"


def scalars_of(path: Path) -> dict[str, list[tuple[int, float]]]:
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_watcher_writes_a_sibling_run_and_rewinds_on_resume(tmp_path: Path) -> None:
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    for s in range(10, 1001, 10):
        w.add_scalar("lm loss", 2.5 + 1.0 / np.sqrt(s), s)
    w.close()
    before = sorted(p.name for p in run.iterdir())
    records: list[dict] = []
    logs: list[str] = []
    watcher = Watcher(run, schedule=SPEC, interval=0.1, refit_every=100, emit=records.append, log=logs.append)
    assert watcher.poll_once() == 100
    assert watcher.monitor.forecaster.last_step == 1000
    # A restart from the checkpoint at step 800 rewrites steps 810.. in a new file, read in two polls (the
    # first forecast after the resume lands before the last one of before it).
    time.sleep(1.1)
    w = tb.SummaryWriter(str(run))
    for s in range(810, 901, 10):
        w.add_scalar("lm loss", 2.4 + 1.0 / np.sqrt(s), s)
    w.flush()
    assert watcher.poll_once() == 10
    assert any(m.startswith("steps went back to 810 after 1000 (a resume") for m in logs)
    for s in range(910, 1201, 10):
        w.add_scalar("lm loss", 2.4 + 1.0 / np.sqrt(s), s)
    w.close()
    assert watcher.poll_once() == 30
    assert watcher.monitor.forecaster.last_step == 1200
    watcher.stop_event.set()
    assert watcher.run() == 0
    out = sidecar_dir(run)
    assert out.name == "job-scaleforecast" and out.parent == run.parent
    tags = scalars_of(out)
    assert {"forecast/final_loss", "forecast/lower", "forecast/upper", "law/L0"} <= set(tags)
    assert tags["forecast/final_loss"][-1][0] == 1200
    # what the sidecar wrote past step 800 before the resume is hidden: the lines read in step order, once
    for tag in ("forecast/final_loss", "forecast/n_points"):
        steps = [s for s, _ in tags[tag]]
        assert steps == sorted(set(steps)), (tag, steps)
    assert any(r["type"] == "forecast" for r in records)
    # The job's own directory is untouched: same files, nothing added.
    assert len(sorted(p.name for p in run.iterdir())) == len(before) + 1


def test_watch_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", str(tmp_path)]) == 2
    assert "planned length" in capsys.readouterr().err
    # an HF trainer_state.json is rewritten whole at each checkpoint: said, not "no loss read ... giving up"
    state = tmp_path / "ckpt" / "trainer_state.json"
    state.parent.mkdir()
    state.write_text('{"log_history": [{"step": 10, "loss": 3.0}], "max_steps": 100}')
    assert main(["watch", str(state), "--total-steps", "100", "--max-idle", "1"]) == 2
    assert "watch cannot follow an HF trainer_state.json" in capsys.readouterr().err
    for args, message in [
        (["--level", "5"], "argument --level: must be a number in (0, 1), got '5'"),
        (["--level", "abc"], "argument --level: must be a number in (0, 1), got 'abc'"),
        (["--interval", "0"], "argument --interval: must be a number > 0, got '0'"),
        (["--total-steps", "-3"], "argument --total-steps: must be an integer in 1..100000000, got '-3'"),
    ]:
        with pytest.raises(SystemExit) as info:
            main(["watch", str(tmp_path), "--total-steps", "100", *args])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"scaleforecast watch: error: {message}" in err
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    w.add_scalar("loss", 3.0, 1)
    w.close()
    rc = main(["watch", str(run), "--schedule", SPEC, "--out", str(run / "inside"), "--interval", "0.1"])
    assert rc == 2
    assert "inside the job's run directory" in capsys.readouterr().err


WRITER = textwrap.dedent(
    """
    import sys
    from torch.utils.tensorboard import SummaryWriter
    from scaleforecast.fitting import FitConfig
    from scaleforecast.laws import schedule_areas
    from scaleforecast.schedules import as_lrs

    lrs = as_lrs(sys.argv[2])
    s1, s2 = schedule_areas(lrs, 0.999, "raw", FitConfig().memory_for(len(lrs)))  # the law the fitter uses
    w = SummaryWriter(sys.argv[1], flush_secs=3600)
    step = 0
    # Each line on stdin says up to which step to write; the writer flushes, answers, and waits for the next one.
    for line in sys.stdin:
        until = int(line)
        while step < until:
            step += 1
            if step % 10 == 0:
                w.add_scalar("lm loss", 2.5 + 0.6 * s1[step - 1] ** -0.5 - 0.4 * s2[step - 1], step)
                w.add_scalar("learning-rate", lrs[step - 1], step)
        w.flush()
        print(f"wrote {step}", flush=True)
    """
)


def _forecast_after(lines: Any, step: int) -> dict:
    """Read the sidecar's JSON lines until a forecast made at or after ``step`` (blocking; no clock)."""
    for line in lines:
        record = json.loads(line)
        if record["type"] == "forecast" and record["step"] >= step:
            return record
    raise AssertionError(f"the sidecar ended before forecasting step {step}")


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_watch_live_writer_and_signal(tmp_path: Path, sig: signal.Signals) -> None:
    run = tmp_path / "job"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    writer = subprocess.Popen(
        [sys.executable, str(script), str(run), SPEC],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    watch = None
    try:
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write("600\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "wrote 600"
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
                "0.2",
                "--refit-every",
                "100",
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert watch.stdout is not None
        lines = iter(watch.stdout.readline, "")
        _forecast_after(lines, 600)
        # The writer moves on only once the sidecar has forecast what it wrote, and stops well before the end of
        # the run, so the sidecar can only end by the signal.
        writer.stdin.write("1500\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "wrote 1500"
        latest = _forecast_after(lines, 1500)
        watch.send_signal(sig)
        stdout, stderr = watch.communicate(timeout=120)
        assert watch.returncode == 0, stderr
        assert "a last pass" in stderr and "reached its last step" not in stderr
        # no warning about the data; the schedule advice may speak (a cosine plan this short is beaten by a
        # short WSD cooldown under the law)
        warned = [ln for ln in stderr.splitlines() if "WARNING" in ln and "schedule_advice" not in ln]
        assert not warned and "past the run's last step" not in stderr
        seen = scalars_of(sidecar_dir(run))
        assert len(seen["forecast/final_loss"]) >= 2 and seen["forecast/final_loss"][-1][0] >= 1500
        records = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        last = ([latest] + [r for r in records if r["type"] == "forecast"])[-1]
        assert last["final_step"] == 2000
        lrs = as_lrs(SPEC)
        s1, s2 = schedule_areas(lrs, 0.999, "raw", FitConfig().memory_for(len(lrs)))
        truth = 2.5 + 0.6 * s1[-1] ** -0.5 - 0.4 * s2[-1]
        assert last["forecasts"][0]["loss"] == pytest.approx(truth, rel=0.05)
        assert not any(p.name.endswith("scaleforecast") for p in run.iterdir())
    finally:
        for proc in (watch, writer):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.mark.slow
def test_watch_a_finished_real_curve_converted_to_event_files(
    tmp_path: Path, curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = curves_dir / "llmc_gpt2_124m" / "llmc_gpt2_124m_10B_cosine_20241013.csv"
    from scaleforecast.readers import read_run

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


def _write(
    run: Path, steps: range, spec: str = SPEC, lr: bool = True, falling: bool = False, **extra: float
) -> None:
    lrs = as_lrs(spec)
    s1, s2 = schedule_areas(lrs, 0.999, "raw", FitConfig().memory_for(len(lrs)))  # the law the fitter uses
    w = tb.SummaryWriter(str(run))
    for s in steps:
        # The law's S2 is negative during a long warm-up; ``falling`` keeps the loss falling there.
        loss = 2.5 + 1.0 / np.sqrt(s) if falling else 2.5 + 0.6 * s1[s - 1] ** -0.5 - 0.4 * s2[s - 1]
        w.add_scalar("lm loss", loss, s)
        if lr:
            w.add_scalar("learning-rate", lrs[s - 1], s)
    for step, value in extra.items():
        w.add_scalar("lm loss", value, int(step.removeprefix("at")))
    w.close()


def test_a_stray_point_never_overrides_total_steps(tmp_path: Path) -> None:
    run = tmp_path / "job"
    _write(run, range(10, 1001, 10), at10000000=2.9)
    logs: list[str] = []
    records: list[dict] = []
    watcher = Watcher(run, total_steps=2000, interval=0.01, log=logs.append, emit=records.append)
    assert watcher.poll_once() == 100
    assert watcher.monitor.forecaster.total_steps == 2000 and not watcher.finished()
    (anomaly,) = [r for r in records if r["type"] == "anomaly"]
    assert anomaly["step"] == 10_000_000 and anomaly["data"]["last_step"] == 2000
    expected = (
        "WARNING: 1 logged point(s) past the run's last step 2000 (the furthest at step 10000000): left out; the "
        "run's length stays 2000 (a stray point, or a wrong --total-steps?)"
    )
    assert logs.count(expected) == 1
    assert watcher.poll_once() == 0 and logs.count(expected) == 1  # said once
    forecast = watcher.monitor.forecaster.forecast()
    assert forecast.final_step == 2000 and forecast.final is not None
    assert forecast.final.upper - forecast.final.lower < 1.0
    watcher.stop_event.set()
    assert watcher.run() == 0
    tags = ea.EventAccumulator(str(sidecar_dir(run)), size_guidance={ea.TENSORS: 0})
    tags.Reload()
    assert any(t.startswith("events/data_anomaly") for t in tags.Tags()["tensors"])


def test_missing_path_is_said_once_then_found(tmp_path: Path) -> None:
    run = tmp_path / "job"
    logs: list[str] = []
    watcher = Watcher(run, schedule=SPEC, interval=0.01, log=logs.append)
    assert watcher.poll_once() == 0 and watcher.poll_once() == 0
    waiting = [m for m in logs if "waiting for it" in m]
    assert waiting == [f"cannot read {run}: No such file or directory; waiting for it"]
    run.mkdir()
    garbage = run / "events.out.tfevents.1.host"
    garbage.write_bytes(b"not an event file" * 8)
    _write(run, range(10, 501, 10))
    assert watcher.poll_once() == 50
    assert f"found event files in {run}" in logs
    assert f"{garbage}: not a TensorBoard event file (no valid record in its first 136 bytes)" in logs
    watcher.poll_once()
    assert sum("not a TensorBoard event file" in m for m in logs) == 1


def test_output_never_goes_through_a_planted_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "job"
    _write(run, range(10, 501, 10))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, sidecar_dir(run))
    rc = main(["watch", str(run), "--schedule", SPEC, "--interval", "0.01", "--max-idle", "0.05"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"scaleforecast watch: error: {sidecar_dir(run)} is a symbolic link; refusing to write through it "
        "(remove it or pick another path)"
    )
    assert list(elsewhere.iterdir()) == []


def test_lr_guess_waits_for_the_warmup_and_announces_its_revisions(tmp_path: Path) -> None:
    """Watched as they grow: no schedule is announced while the LR still rises, the announced peak is the real
    one, and a change of the guess (a WSD run that starts its cooldown) is said."""
    cases = {
        "cosine": ("cosine:peak=3e-3,warmup=500,total=5000,final=3e-5", (300, 1200, 2600)),
        "wsd": ("wsd:peak=3e-3,warmup=200,total=5000,cooldown=0.2,shape=linear", (2000, 4600)),
    }
    seen: dict[str, list[str]] = {}
    for name, (spec, stages) in cases.items():
        run = tmp_path / name
        logs: list[str] = []
        watcher = Watcher(run, total_steps=5000, interval=0.01, log=logs.append, refit_every=200)
        start = 10
        for until in stages:
            _write(run, range(start, until + 1, 10), spec=spec, falling=True)
            start = until + 10
            watcher.poll_once()
            if until == 300:
                assert watcher.lr_rec is None and watcher.forecasts == 0
                assert "the LR is still warming up (0.0018 at step 300, rising)" in logs[-1]
        assert watcher.lr_rec is not None and watcher.lr_rec.schedule is not None
        assert watcher.lr_rec.schedule.kind == name
        assert not any("has not decayed yet" in m for m in logs)
        seen[name] = [m for m in logs if m.startswith(("LR rebuilt", "LR schedule revised"))]
    (cosine,) = seen["cosine"]
    assert cosine.startswith(
        "LR rebuilt from 120 points logged up to step 1200: cosine to 3e-05, peak 0.003, 500"
    )
    first, revised = seen["wsd"]
    assert first.startswith(
        "LR rebuilt from 200 points logged up to step 2000: constant, peak 0.003, 200 warm-up"
    )
    assert revised.startswith("LR schedule revised at step 4600: now WSD, linear cooldown over the last 20%")
    assert "(was constant, peak 0.003, 200 warm-up, 5000 updates;" in revised


def test_a_cooldown_that_starts_between_two_rebuilds_is_followed_at_once(tmp_path: Path) -> None:
    """The schedule rebuilt during the stable phase of a WSD run is revised as soon as logged LRs leave it (its
    cooldown started), not after a fifth more LR points: the forecast must not hold the stale plan, with status
    ``ok``, through most of the cooldown."""
    spec = "wsd:peak=3e-3,warmup=200,total=5000,cooldown=0.2,shape=linear"
    run = tmp_path / "wsd"
    logs: list[str] = []
    watcher = Watcher(run, total_steps=5000, interval=0.01, log=logs.append, refit_every=200)
    _write(run, range(10, 3801, 10), spec=spec, falling=True)
    watcher.poll_once()
    assert watcher.lr_rec is not None and watcher.lr_rec.schedule.kind == "constant"
    _write(run, range(3810, 4201, 10), spec=spec, falling=True)  # 10% more points, 200 updates into the decay
    watcher.poll_once()
    assert watcher.lr_rec.schedule.kind == "wsd"
    assert any(m.startswith("LR schedule revised at step 4200: now WSD") for m in logs), logs
    assert watcher.monitor.forecaster.schedule[-1] < 0.01 * 3e-3


def test_a_log_resumed_into_a_new_folder_gets_one_interval_for_its_first_point(tmp_path: Path) -> None:
    """Megatron resumed into a fresh folder logs ``lm loss`` (the mean since the previous log) from step 1010:
    the first point is fed as the mean of one log interval once the next point shows the interval."""
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    w.add_scalar("lm loss", 2.6, 1010)
    w.flush()
    watcher = Watcher(run, schedule=SPEC, interval=0.01, log=lambda m: None)
    assert watcher.poll_once() == 0  # one point: its interval is not known yet
    for s in range(1020, 1201, 10):
        w.add_scalar("lm loss", 2.5 + 1.0 / np.sqrt(s), s)
    w.close()
    assert watcher.poll_once() == 20
    obs = watcher.monitor.forecaster.observations()
    assert obs.start[0] == 1001 and obs.end[0] == 1010


def _law(s: int) -> float:
    return 2.5 + 1.0 / np.sqrt(s)


@pytest.mark.parametrize("name", ["train_log.csv", "train_log.jsonl", "tab_separated.csv"])
def test_watch_follows_a_growing_table(tmp_path: Path, name: str) -> None:
    """A job appending to a CSV or JSONL log: each poll reads the whole lines appended since the last; a last
    line still being written waits for the next poll, never reported. A ``.csv`` that separates by tabs is
    read as a whole-file read reads it."""
    import csv

    path = tmp_path / name
    logs: list[str] = []
    watcher = Watcher(path, schedule=SPEC, interval=0.01, log=logs.append, refit_every=100)
    assert watcher.poll_once() == 0 and logs == [
        f"cannot read {path}: No such file or directory; waiting for it"
    ]

    def line(s: int) -> str:
        if path.suffix == ".jsonl":
            return (
                json.dumps({"step": s, "train": {"loss": _law(s)}, "lr": float(as_lrs(SPEC)[s - 1])}) + "\n"
            )
        buf = io.StringIO()
        csv.writer(buf, delimiter=sep).writerow([s, _law(s), float(as_lrs(SPEC)[s - 1])])
        return buf.getvalue()

    sep = "\t" if name.startswith("tab") else ","
    with open(path, "w", newline="") as fh:
        if path.suffix == ".csv":
            fh.write(sep.join(["step", "train/loss", "lr"]) + "\n")
        fh.write("".join(line(s) for s in range(10, 501, 10)))
        partial = line(510)
        fh.write(partial[:7])  # the writer is mid-line
        fh.flush()
        assert watcher.poll_once() == 50
        assert watcher.monitor.forecaster.last_step == 500
        fh.write(partial[7:] + "".join(line(s) for s in range(520, 1001, 10)))
        fh.flush()
        assert watcher.poll_once() == 50
    fc = watcher.monitor.forecaster
    assert fc.last_step == 1000 and fc.n_observations == 100
    obs = fc.observations()
    assert float((obs.y * obs.count).sum()) == pytest.approx(sum(_law(s) for s in range(10, 1001, 10)))
    assert watcher.loss_tag == "train/loss"
    assert not any("not valid" in m or "cut off" in m or "no line end" in m for m in logs), logs
    assert f"found {path}" in logs
    forecast = fc.refit()
    assert forecast.final is not None and forecast.final.loss == pytest.approx(_law(2000), abs=0.05)


def test_watch_a_table_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI reads a JSONL run to its last step, skipping a bad line with a note naming it."""
    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": _law(s)}) for s in range(10, 2001, 10)]
    lines[50] = '{"step": 510, "loss'
    path.write_text("\n".join(lines) + "\n")
    assert (
        main(["watch", str(path), "--schedule", SPEC, "--interval", "0.01", "--max-idle", "5", "--json"]) == 0
    )
    captured = capsys.readouterr()
    assert (
        "log.jsonl:51: not valid JSON (Unterminated string" in captured.err
        and "skipped the line" in captured.err
    )
    assert "reached its last step (2000)" in captured.err
    assert "not a TensorBoard event file" not in captured.err
    last = [json.loads(x) for x in captured.out.splitlines() if '"forecast"' in x][-1]
    assert last["forecasts"][0]["loss"] == pytest.approx(_law(2000), abs=0.05)
    # what it read, as `forecast --json` says it
    assert last["loss_column"] == "loss" and last["lr_source"] == "schedule"
    assert scalars_of(tmp_path / "log.jsonl-scaleforecast")["forecast/final_loss"][-1][0] == 2000


def test_watch_ends_at_the_last_step_of_a_log_that_counts_from_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Lightning and NeMo log a step's loss at the count of updates before it: a 2000-update run's last logged
    step is 1999, and the sidecar polled it forever (``--max-idle`` has no default). It ends after a poll with
    nothing new."""
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n" + "".join(f"{s},{float(_law(s + 1))!r}\n" for s in range(0, 2000)))
    assert main(["watch", str(path), "--schedule", SPEC, "--interval", "0.01", "--json"]) == 0
    err = capsys.readouterr().err
    assert "the run reached its last step (1999, in a log that counts steps from 0); done" in err, err


def test_a_rewind_keeps_exactly_the_steps_before_it_and_says_so_in_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A per-step log that goes back from step 3000 to 2346 (a resume from the step-2345 checkpoint): the
    forecast's history keeps every point up to step 2345 (the history bin that straddles the rewind included) and
    the new ones after it, and the rewind is one line of the sidecar's own, not a Python warning."""
    import warnings

    rng = np.random.default_rng(0)
    run = tmp_path / "job"
    w = tb.SummaryWriter(str(run))
    first = {s: _law(s) + rng.normal(0, 0.01) for s in range(1, 3001)}
    for s, y in first.items():
        w.add_scalar("loss", y, s)
    w.flush()
    logs: list[str] = []
    watcher = Watcher(run, schedule="cosine:peak=1e-3,warmup=20,total=4000", interval=0.01, log=logs.append)
    assert watcher.poll_once() == 3000
    second = {s: _law(s) + 0.02 + rng.normal(0, 0.01) for s in range(2346, 2846)}
    for s, y in second.items():
        w.add_scalar("loss", y, s)
    w.close()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert watcher.poll_once() == 500
    # nothing of it escapes as a Python warning or a log record of the forecaster's (with its own count)
    assert [str(x.message) for x in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("scaleforecast")] == []
    fc = watcher.monitor.forecaster
    obs = fc.observations()
    logged = [*(first[s] for s in range(1, 2346)), *second.values()]
    kept = [float(np.float32(y)) for y in logged]  # event files hold float32
    assert fc.n_observations == 2845 and int(obs.count.sum()) == 2845
    assert float((obs.y * obs.count).sum()) == pytest.approx(sum(kept), rel=1e-12)
    assert obs.end[-1] == 2845
    rewinds = [m for m in logs if "went back" in m]
    assert rewinds == [
        "steps went back to 2346 after 3000 (a resume from an older checkpoint?): the forecast now "
        "holds the points up to step 2345 and those logged since"
    ]


def test_watch_follows_a_lightning_csv_logger_folder(tmp_path: Path) -> None:
    """A real Lightning fit logging to a CSVLogger (with LearningRateMonitor): ``watch lightning_logs`` follows
    its ``metrics.csv``, as forecast and report read that folder (it waited for event files that never came)."""
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger
    from lightning_models import TinyRegressor

    logger = CSVLogger(str(tmp_path), name="lightning_logs")
    trainer = pl.Trainer(
        max_steps=60,
        logger=logger,
        callbacks=[LearningRateMonitor(logging_interval="step")],
        log_every_n_steps=2,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
    )

    class Logged(TinyRegressor):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    trainer.fit(Logged(total=60))
    logs: list[str] = []
    watcher = Watcher(
        tmp_path / "lightning_logs", total_steps=60, interval=0.01, log=logs.append, refit_every=10
    )
    assert watcher.poll_once() >= 25, logs
    assert watcher.loss_tag == "train_loss"
    assert watcher.monitor.forecaster.last_step >= 58


def test_a_guessed_lr_is_said_in_the_json_and_its_note_once(tmp_path: Path) -> None:
    """A WSD run watched in its stable phase with no schedule given: each forecast record says from which step
    the LR is a guess (as ``forecast --json`` does; the record said ``ok`` with no warning, and its band missed
    the cooldown's final), and the rebuild's note is said once, not again at every rebuild."""
    spec = "wsd:peak=3e-3,warmup=200,total=5000,cooldown=0.2,shape=linear"
    run = tmp_path / "wsd"
    logs: list[str] = []
    records: list[dict] = []
    watcher = Watcher(
        run, total_steps=5000, interval=0.01, log=logs.append, emit=records.append, refit_every=200
    )
    start = 10
    for until in (1500, 2000, 2500, 3000):
        _write(run, range(start, until + 1, 10), spec=spec, falling=True)
        start = until + 10
        watcher.poll_once()
    forecasts = [r for r in records if r["type"] == "forecast"]
    assert forecasts and forecasts[-1]["lr_assumed_after"] == 3000
    assert all(r["lr_assumed_after"] == r["step"] for r in forecasts), forecasts
    notes = [m for m in logs if "LR logged up to step" in m]
    assert len(notes) == 1, logs
    # logged a little at a time, the schedule is rebuilt only when a fifth more LRs arrived: the LRs logged in
    # between agree with it and are known, not assumed (it said "assumed after 1500" at step 1700)
    few = Watcher(
        tmp_path / "few",
        total_steps=5000,
        interval=0.01,
        log=lambda _: None,
        emit=records.append,
        refit_every=100,
    )
    records.clear()
    start = 10
    for until in range(1500, 2001, 100):
        _write(tmp_path / "few", range(start, until + 1, 10), spec=spec, falling=True)
        start = until + 10
        few.poll_once()
    forecasts = [r for r in records if r["type"] == "forecast"]
    assert len({r["step"] for r in forecasts}) >= 4, forecasts
    assert all(r["lr_assumed_after"] == r["step"] for r in forecasts), forecasts
    assert "the LR after step 3000 is assumed" in [m for m in logs if m.startswith("step ")][-1]
    # no advice on the guess: the constant continuation "ends at a high LR" and "gains from a cooldown" the plan
    # has anyway
    assert not [r for r in records if r.get("kind") == "schedule_advice"], records
    assert not [m for m in logs if "schedule_advice" in m], logs


def test_a_single_spike_is_said_at_info_as_the_logger_says_it(tmp_path: Path) -> None:
    """One step at three times the loss in a healthy run: the sidecar's line gives it the level the Python
    logger gives it (INFO; the line said WARNING), and the JSON record keeps the event's own severity."""
    run = tmp_path / "job"
    noise = 1 + 0.01 * np.random.default_rng(0).standard_normal(2000)
    lrs = as_lrs(SPEC)
    w = tb.SummaryWriter(str(run))
    for s in range(1, 1501):
        w.add_scalar("lm loss", (2.5 + 1.0 / np.sqrt(s)) * noise[s - 1] * (3.0 if s == 1200 else 1.0), s)
        w.add_scalar("learning-rate", lrs[s - 1], s)
    w.close()
    logs: list[str] = []
    records: list[dict] = []
    watcher = Watcher(run, total_steps=2000, interval=0.01, log=logs.append, emit=records.append)
    watcher.poll_once()
    spikes = [r for r in records if r["type"] == "event" and r["kind"] == "spike"]
    assert [r["step"] for r in spikes] == [1200] and spikes[0]["severity"] == "warning"
    assert any(m.startswith("INFO spike at step 1200") for m in logs), logs
    assert not any(m.startswith("WARNING spike") for m in logs)


def test_a_path_that_never_shows_a_loss_is_no_success(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped path waited for until ``--max-idle``, then the sidecar exited 0 as if the run had been
    followed: it says it read nothing and exits 1. A run that logged and then went quiet still exits 0."""
    missing = tmp_path / "typo" / "train.csv"
    argv = ["watch", str(missing), "--schedule", SPEC, "--interval", "0.01", "--max-idle", "0.05"]
    assert main(argv) == 1
    assert f"no loss read from {missing} in 0.05 s; giving up" in capsys.readouterr().err
    quiet = tmp_path / "quiet.jsonl"
    quiet.write_text("".join(json.dumps({"step": s, "loss": _law(s)}) + "\n" for s in range(10, 501, 10)))
    assert main(["watch", str(quiet), "--schedule", SPEC, "--interval", "0.01", "--max-idle", "0.05"]) == 0
    assert "no new points for 0.05 s; stopping" in capsys.readouterr().err


def test_a_table_without_a_number_in_it_is_said_not_followed_in_silence(tmp_path: Path) -> None:
    """A CSV whose cells are no numbers (a value written as ``np.float64(2.7)``): the sidecar read nothing and
    said nothing, forever. It says so once."""
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n" + "".join(f"{s},np.float64({_law(s)})\n" for s in range(1, 50)))
    logs: list[str] = []
    watcher = Watcher(path, schedule=SPEC, interval=0.01, log=logs.append)
    assert watcher.poll_once() == 0 and watcher.poll_once() == 0
    said = [m for m in logs if "no number read" in m]
    assert said == [
        f"{path}: no number read in its columns (step, loss) yet: is it written with numbers in another form?"
    ]


def test_a_torchtitan_restart_in_a_new_folder_is_the_same_run(tmp_path: Path) -> None:
    """torchtitan starts each (re)start of a job in a TensorBoard folder named for its start time: the sidecar,
    following the job's ``tb`` folder, died ("holds 2 runs ...; pass one run directory") when the restart's
    folder appeared. The folders are one run, read in order; the restart's points replace those it logs again."""
    from scaleforecast.readers import read_run

    tb_dir = tmp_path / "tb"

    def write(folder: str, steps: range, shift: float = 0.0) -> None:
        w = tb.SummaryWriter(str(tb_dir / folder))
        for s in steps:
            w.add_scalar("loss_metrics/global_avg_loss", _law(s) + shift, s)
            w.add_scalar("lr", float(as_lrs(SPEC)[s - 1]), s)
        w.close()

    write("20250101-0900", range(1, 1201))
    logs: list[str] = []
    watcher = Watcher(tb_dir, schedule=SPEC, interval=0.01, log=logs.append, refit_every=200)
    assert watcher.poll_once() == 1200
    write("20250102-1130", range(1001, 1601), shift=0.01)  # resumed from the step-1000 checkpoint
    assert watcher.poll_once() > 0
    assert watcher.monitor.forecaster.last_step == 1600
    assert any("read 2 folders as restarts of one job (20250101-0900, 20250102-1130)" in m for m in logs), (
        logs
    )
    run = read_run(tb_dir, schedule=SPEC, warn=False)
    assert run.steps[-1] == 1600 and len(run.steps) == 1600
    assert run.losses[1099] == pytest.approx(_law(1100) + 0.01, rel=1e-6)  # the restart's value of step 1100


@pytest.mark.parametrize("given", [False, True])
def test_the_advice_charts_are_laid_out_only_where_advice_is_given(tmp_path: Path, given: bool) -> None:
    """Without ``--schedule`` or ``--lr-file`` the sidecar gives no schedule advice, but its layout still held
    the advice chart, empty for good ("Matches (0)")."""
    from tensorboard.plugins.custom_scalar import layout_pb2
    from tensorboard.util import tensor_util

    run = tmp_path / "job"
    _write(run, range(10, 2001, 10), spec=SPEC)
    kwargs: dict[str, Any] = {"schedule": SPEC} if given else {"total_steps": 2000}
    watcher = Watcher(run, interval=0.01, log=lambda m: None, refit_every=200, **kwargs)
    watcher.poll_once()
    watcher.monitor.close()
    acc = ea.EventAccumulator(
        str(sidecar_dir(run) / "scaleforecast" / "forecast"), size_guidance={ea.TENSORS: 0}
    )
    acc.Reload()
    event = acc.Tensors("custom_scalars__config__")[0]
    layout = layout_pb2.Layout.FromString(tensor_util.make_ndarray(event.tensor_proto).item())
    titles = [c.title for cat in layout.category for c in cat.chart]
    assert any("schedule advice" in t for t in titles) == given, titles


def test_the_sidecars_last_figure_is_drawn_at_the_end_of_the_log(tmp_path: Path) -> None:
    """Figures come every few refits: the last one was drawn thousands of steps before the end of the log, while
    the scalars went on to its last point. The sidecar draws one at the end."""
    run = tmp_path / "job"
    _write(run, range(10, 1501, 10), spec=SPEC)
    watcher = Watcher(run, schedule=SPEC, interval=0.01, max_idle=0.05, log=lambda m: None, refit_every=1000)
    assert watcher.poll_once() > 0
    _write(run, range(1510, 1991, 10), spec=SPEC)  # fewer steps than a refit waits for
    assert watcher.run() == 0
    acc = ea.EventAccumulator(str(sidecar_dir(run)), size_guidance={ea.IMAGES: 0})
    acc.Reload()
    assert max(e.step for e in acc.Images("forecast/curve")) == 1990


def test_a_step_logged_again_is_said_as_such(tmp_path: Path) -> None:
    """A line of a step logged twice (a NaN, then the value of a resume from that step's checkpoint) was said
    as "steps went back to 700 after 700"."""
    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": _law(s)}) for s in range(10, 701, 10)]
    path.write_text("\n".join(lines) + "\n")
    logs: list[str] = []
    watcher = Watcher(
        path, schedule=SPEC, interval=0.1, refit_every=100, emit=lambda r: None, log=logs.append
    )
    assert watcher.poll_once() == 70
    with path.open("a") as f:
        f.write(json.dumps({"step": 700, "loss": _law(700) + 0.01}) + "\n")
    assert watcher.poll_once() == 1
    (said,) = [m for m in logs if "logged again" in m or "went back" in m]
    assert said.startswith(
        "step 700 was logged again (a resume from an older checkpoint?): the forecast now "
    )
