"""The sweep stopper: decisions against the other runs, registry I/O off the training thread, one run per job."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from forecasts import one_point

from scaleforecast.decision import SweepStopper
from scaleforecast.job import job_rank, job_run_id, job_world_size
from scaleforecast.registry import BackgroundRegistry, RunRecord, RunState, SQLiteRegistry, default_sweep

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_sweep_stopper_through_the_run_monitor(tmp_path: Path) -> None:
    """The stopper as a listener of a real RunMonitor: the bad run stops, the good one finishes. The forecasts
    the monitor hands the stopper carry the run's stop features, and the registry publishes them to the other
    runs."""
    from scaleforecast.monitor import FlushBatch, RunMonitor

    reg = SQLiteRegistry("m", tmp_path / "m.sqlite")
    total = 400
    lrs = np.full(total, 1e-3)
    steps = np.arange(1, total + 1)
    results = {}
    for run_id, offset in (("good", 0.0), ("bad", 6.0)):
        stopper = SweepStopper(reg, run_id, min_fraction=0.2)
        assert stopper.sync()  # the records of the runs before this one are read before it trains
        monitor = RunMonitor(lrs, listeners=[stopper], verbose=False)
        loss = 2.0 + offset + 3.0 * (1e-3 * steps) ** -0.3 * 0.1
        stopped_at = None
        for lo in range(0, total, 20):
            sl = slice(lo, lo + 20)
            result = monitor.flush(FlushBatch(steps=steps[sl], loss=loss[sl]))
            if result.stop:
                stopped_at = int(steps[sl][-1])
                break
        stopper.finish(float(loss[-1]) if stopped_at is None else None)
        results[run_id] = stopped_at
    assert results["good"] is None
    assert results["bad"] is not None and 80 <= results["bad"] < total
    recs = {r.run_id: r for r in reg.records()}
    assert recs["good"].state is RunState.FINISHED and recs["good"].final_loss is not None
    assert recs["bad"].state is RunState.STOPPED
    # the monitor's own evidence: the LR phase (constant LR: nothing left to anneal), which a bare forecast lacks
    assert recs["good"].features is not None and recs["good"].features.phase == "flat"


def _after_a_good_run(reg: SQLiteRegistry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 400-step constant-LR sweep whose run "good" finished: its LRs, steps and losses."""
    lrs = np.full(400, 1e-3)
    steps = np.arange(1, len(lrs) + 1)
    good = 2.0 + 3.0 * (1e-3 * steps) ** -0.3 * 0.1
    first = SweepStopper(reg, "good", min_fraction=0.2)
    first.sync()
    first.finish(float(good[-1]))
    return lrs, steps, good


@pytest.mark.slow
def test_a_sweep_stop_shows_the_loss_it_could_not_beat(tmp_path: Path) -> None:
    """TensorBoard's stop bar and the figure at a sweep's stop reach the best run's loss, which the run could
    not beat (they showed the band only: the loss to beat was in the text alone)."""
    from scaleforecast.integrations.tensorboard import COMPARE_TAG, TensorBoardSink
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from scaleforecast.monitor import FlushBatch, RunMonitor

    class Figures:
        """Keeps the figures' snapshots (beside the real TensorBoard sink)."""

        def __init__(self) -> None:
            self.snapshots: list = []

        def write_figure(self, snapshot: object) -> None:
            self.snapshots.append(snapshot)

    reg = SQLiteRegistry("m", tmp_path / "m.sqlite")
    lrs, steps, good = _after_a_good_run(reg)
    total = len(lrs)
    stopper = SweepStopper(reg, "bad", min_fraction=0.2)
    stopper.sync()
    figures = Figures()
    sink = TensorBoardSink(SummaryWriter(str(tmp_path / "bad")), close_writer=True, background_figures=False)
    monitor = RunMonitor(lrs, listeners=[stopper], sinks=[sink, figures], verbose=False, figure_every=1)
    stopped_at = None
    for lo in range(0, total, 20):
        if monitor.flush(FlushBatch(steps=steps[lo : lo + 20], loss=good[lo : lo + 20] + 6.0)).stop:
            stopped_at = lo + 20
            break
    monitor.close()
    assert stopped_at is not None
    last = figures.snapshots[-1]
    assert last.stop_step == stopped_at and last.target == pytest.approx(float(good[-1]))
    acc = EventAccumulator(
        str(tmp_path / "bad" / "scaleforecast" / "early_stop"), size_guidance={"scalars": 0}
    )
    acc.Reload()
    bar = sorted(e.value for e in acc.Scalars(COMPARE_TAG))
    assert bar[0] == pytest.approx(float(good[-1]), rel=1e-6) and bar[1] > 6.0
    # the stop names the sweep and the run that set the bar, and where and when it was recorded: a sweep that
    # names none is one per script and folder, and an earlier invocation's best stopped every run of another task
    (stop,) = [e for e in monitor.events if e.kind == "early_stop"]
    assert stop.message.startswith("cannot beat its sweep 'm': ")
    said = re.search(
        r"the bar, ([\d.]+), is the recorded final loss of run good \(recorded \d+ s ago in ([^;)]+)[;)]",
        stop.message,
    )
    assert said is not None and said.group(2) == str(tmp_path / "m.sqlite"), stop.message
    # the decision a script reads says it too (only the event did)
    assert stopper.decision is not None and said.group(0) in stopper.decision.reason
    assert stopper.decision.set_by == "good"
    assert "SweepStopper(sweep=...)" not in stop.message  # a sweep of its own: no hint to name one
    assert figures.snapshots[-1].target_label == "best run of its sweep"
    assert figures.snapshots[-1].stop_label == "early stop"


def test_a_sweep_stop_of_a_run_with_a_target_is_drawn_as_a_stop_not_a_lost_run(tmp_path: Path) -> None:
    """A run with a target it can reach, stopped by its sweep: its figure said "stopped as lost" (only the stop
    rule's own stop was told apart from a lost run's)."""
    from scaleforecast.monitor import FlushBatch, RunMonitor, StopConfig

    reg = SQLiteRegistry("m", tmp_path / "m.sqlite")
    lrs, steps, good = _after_a_good_run(reg)
    total = len(lrs)
    snapshots: list = []

    class Figures:
        def write_figure(self, snapshot: object) -> None:
            snapshots.append(snapshot)

    monitor = RunMonitor(
        lrs,
        listeners=[SweepStopper(reg, "bad", min_fraction=0.2)],
        sinks=[Figures()],
        stop=StopConfig(target_loss=50.0),
        verbose=False,
        figure_every=1,
    )
    for lo in range(0, total, 20):
        if monitor.flush(FlushBatch(steps=steps[lo : lo + 20], loss=good[lo : lo + 20] + 6.0)).stop:
            break
    assert snapshots[-1].stop_step is not None and snapshots[-1].stop_label == "early stop"


def test_sweep_stopper_defaults_need_no_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALEFORECAST_REGISTRY_DIR", str(tmp_path))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    a, b = (
        SweepStopper(sweep="zero-setup", min_fraction=0.0),
        SweepStopper(sweep="zero-setup", min_fraction=0.0),
    )
    assert a.run_id != b.run_id and isinstance(a.registry, SQLiteRegistry)
    assert a.registry.path == tmp_path / "zero-setup.sqlite"  # type: ignore[attr-defined]
    assert not a(500, one_point(3.0, 0.01))
    a.finish()
    assert b.sync()
    assert b(500, one_point(9.0, 0.01))
    b.finish()
    recs = {r.run_id: r for r in b.registry.records()}
    assert recs[a.run_id].state is RunState.FINISHED and recs[a.run_id].final_loss == 3.0
    assert recs[b.run_id].state is RunState.STOPPED
    # a stop in the default sweep (one per script and folder, earlier invocations included) says how to name one
    c = SweepStopper(min_fraction=0.0)
    d = SweepStopper(min_fraction=0.0)
    assert not c(500, one_point(3.0, 0.01))
    c.finish()
    assert d.sync()
    assert d(500, one_point(9.0, 0.01))
    said = d._stop_event(500, one_point(9.0, 0.01)).message
    assert f"of run {c.run_id}" in said and "SweepStopper(sweep=...) keeps sweeps apart" in said, said
    d.finish()


def test_registry_errors_cost_one_warning_and_decisions_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An injected storage fault: the stopper warns once, decides against its target meanwhile, and
    writes everything that was queued once the storage answers again."""

    class Flaky(SQLiteRegistry):
        broken = True

        def records(self) -> list[RunRecord]:
            if Flaky.broken:
                raise RuntimeError("disk gone")
            return super().records()

        def report_forecast(self, run_id: str, **kw: object) -> None:  # type: ignore[override]
            if Flaky.broken:
                raise RuntimeError("disk gone")
            super().report_forecast(run_id, **kw)  # type: ignore[arg-type]

    caplog.set_level(logging.INFO, logger="scaleforecast.registry")
    stopper = SweepStopper(Flaky("f", tmp_path / "f.sqlite"), "r", min_fraction=0.0, target=5.0)
    assert not stopper(400, one_point(4.0, 0.01))
    assert stopper._worker.failed.wait(30)
    assert stopper(500, one_point(9.0, 0.01))  # the target alone still stops a hopeless run
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "scaleforecast.registry"
    ]
    assert len(warnings) == 1 and "disk gone" in warnings[0].getMessage()
    assert stopper.registry_failure is not None
    Flaky.broken = False
    assert stopper.sync(30)
    assert stopper.registry_failure is None
    steps = [h[1] for h in SQLiteRegistry("f", tmp_path / "f.sqlite").history("r")]
    assert steps == [400, 500]  # both queued forecasts landed, in order
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_background_registry_drops_the_oldest_forecasts_when_the_queue_is_full(tmp_path: Path) -> None:
    class Stuck(SQLiteRegistry):
        def report_forecast(self, run_id: str, **kw: object) -> None:  # type: ignore[override]
            raise RuntimeError("locked")

        def report_final(self, run_id: str, final_loss: float | None, **kw: object) -> None:  # type: ignore[override]
            raise RuntimeError("locked")

    bg = BackgroundRegistry(Stuck("s", tmp_path / "s.sqlite"), max_pending=4)
    for i in range(10):
        bg.post_forecast("r", step=i, loss=1.0, std=0.1, status="ok")
    bg.post_final("r", 1.0)
    assert bg.failed.wait(30)
    assert bg.pending <= 5 and bg.dropped >= 6
    assert not bg.drain(0.01)
    bg.close()


# ------------------------------------------------------------------------------------------- locked database
_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
if sys.argv[2] == "rollback":
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("CREATE TABLE IF NOT EXISTS filler (x)")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


def _start_locker(path: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["wal", "rollback"])
def test_a_locked_database_never_stalls_the_training_loop(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds ``BEGIN EXCLUSIVE`` on the registry file. The training loop's calls to the
    stopper never wait on it (each returns well inside the worker's busy timeout, so none waited for the
    lock), the stopper warns once and keeps deciding, and once the lock goes everything queued lands.

    ``wal``: the sweep's file (WAL journal) is locked mid-run: writes are refused, reads still answer.
    ``rollback``: a file in rollback-journal mode is locked before the run starts: nothing answers."""
    caplog.set_level(logging.INFO, logger="scaleforecast.registry")
    path = tmp_path / "sweep.sqlite"
    timeout_s = 5.0
    if mode == "wal":
        other = SQLiteRegistry("s", path)
        other.report_final("other", 3.0)
        other.close()
    locker = None if mode == "wal" else _start_locker(path, mode)
    try:
        stopper = SweepStopper(path, "job", sweep="s", min_fraction=0.0, target=10.0, timeout_s=timeout_s)
        if mode == "wal":
            assert stopper.sync(30)  # the other run's record is read before the lock
            locker = _start_locker(path, mode)
        lost: list[float] = []
        decisions: list[bool] = []
        step = 100
        # Flush until the worker has met the lock, then a few more: the loop must not notice either way.
        while not stopper._worker.failed.is_set() or len(lost) < 20:
            step += 10
            t0 = time.perf_counter()
            decisions.append(stopper(step, one_point(2.0, 0.01)))
            lost.append(time.perf_counter() - t0)
            if len(lost) > 5000:
                pytest.fail("the worker never met the lock")
            stopper._worker.failed.wait(0.05)
        t0 = time.perf_counter()
        # a bare forecast (no run record) reads the error model's widest scale: "hopeless" is twice the loss to beat
        # (at a step inside the forecast's run: the loop above may have counted past its last step, 1000)
        hopeless = stopper(500, one_point(6.0, 0.01))
        lost.append(time.perf_counter() - t0)
        print(
            f"\n{mode}: {len(lost)} flushes while locked, time lost per flush: median "
            f"{1e3 * np.median(lost):.3f} ms, max {1e3 * max(lost):.3f} ms"
        )
        assert max(lost) < timeout_s / 2  # no call waited for the lock
        assert not any(decisions)
        # The other run's final loss (read before the lock in WAL mode) still stops a run that cannot beat it.
        assert hopeless is (mode == "wal")
        warnings = [
            r for r in caplog.records if r.levelno == logging.WARNING and r.name == "scaleforecast.registry"
        ]
        assert len(warnings) == 1
        assert locker.stdin is not None
        locker.stdin.write("go\n")
        locker.stdin.flush()
        assert locker.stdout is not None and locker.stdout.readline().strip() == "released"
        locker.wait(30)
        assert stopper.sync(60), stopper.registry_failure
        stopper.finish()
    finally:
        if locker is not None:
            _kill_group(locker)
    reg = SQLiteRegistry("s", path)
    recs = {r.run_id: r for r in reg.records()}
    assert recs["job"].state is (RunState.STOPPED if mode == "wal" else RunState.FINISHED)
    assert len(reg.history("job")) == len(lost)  # every forecast queued while locked landed
    assert any("reachable again" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------------------------- one run per job
def test_job_identity_from_the_launchers_environment() -> None:
    assert job_rank({}) == 0 and job_world_size({}) == 1 and job_run_id({}) is None
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "abc"}
    assert job_rank(torchrun) == 3 and job_world_size(torchrun) == 4
    assert job_run_id(torchrun) == "torchrun-abc"
    assert job_run_id({"TORCHELASTIC_RUN_ID": "none"}) is None  # static rendezvous: no id
    assert job_run_id({"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "2"}) == "slurm-77.2"
    assert job_run_id({"SCALEFORECAST_RUN_ID": "mine", "SLURM_JOB_ID": "77"}) == "mine"
    assert job_rank({"SLURM_PROCID": "5"}) == 5
    assert job_rank({"LOCAL_RANK": "0", "NODE_RANK": "1"}) != 0  # local rank 0 of node 1 is not rank 0
    assert job_rank({"LOCAL_RANK": "1"}) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_ranks(tmp_path: Path, mode: str, extra_env: dict[str, str]) -> list[dict]:
    """Two real processes of one job (RANK 0 and 1), each with a sweep stopper on the same registry."""
    port = _free_port()
    procs = []
    env_base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")}
    for rank in (0, 1):
        env = {
            **env_base,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            **extra_env,
        }
        out = tmp_path / f"rank{rank}.json"
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE / "registry_rank_worker.py"),
                    str(tmp_path / "sweep.sqlite"),
                    mode,
                    str(out),
                ],
                env=env,
                start_new_session=True,
            )
        )
    try:
        for p in procs:
            assert p.wait(timeout=120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    "mode, env",
    [
        ("env", {"TORCHELASTIC_RUN_ID": "job-42"}),  # torchrun's id in the environment
        ("gloo", {}),  # no id in the environment: rank 0's id is broadcast over a real gloo group
        ("none", {}),  # no id anywhere: rank 1 leaves the decision to rank 0
    ],
)
def test_one_registry_run_per_job_not_per_rank(tmp_path: Path, mode: str, env: dict[str, str]) -> None:
    if mode == "gloo":
        pytest.importorskip("torch.distributed")
    reg = SQLiteRegistry("s", tmp_path / "sweep.sqlite")
    reg.report_final("other", 3.0)  # the run to beat
    ranks = _run_ranks(tmp_path, mode, env)
    recs = {r.run_id: r for r in reg.records()}
    assert set(recs) == {"other", ranks[0]["run_id"]}  # one record for the job, written by rank 0
    job = recs[ranks[0]["run_id"]]
    assert job.state is RunState.STOPPED and job.step == ranks[0]["stopped_at"]
    assert len(reg.history(job.run_id)) == ranks[0]["calls"]  # rank 1 wrote nothing
    if mode == "env":
        assert ranks[0]["run_id"] == ranks[1]["run_id"] == "torchrun-job-42"
    if mode in ("env", "gloo"):
        assert ranks[0]["run_id"] == ranks[1]["run_id"]
        assert ranks[0]["decisions"] == ranks[1]["decisions"]  # both ranks decide alike
    else:
        assert not any(ranks[1]["decisions"]) and ranks[0]["stopped_at"] is not None


def test_the_job_identity_is_read_when_first_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launcher may set the ranks after the stopper was built (Lightning's DDP launches from the
    user's process): the rank and the job's id are read at the first call, not at construction."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    stopper = SweepStopper(tmp_path / "s.sqlite", sweep="s", min_fraction=0.0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "late")
    assert not stopper(500, one_point(2.0, 0.01))
    assert stopper.rank == 1 and not stopper.writes and stopper.run_id.startswith("torchrun-late")
    stopper.finish()
    assert stopper.sync()
    assert SQLiteRegistry("s", tmp_path / "s.sqlite").records() == []  # a non-zero rank never writes


def test_the_adapters_record_each_runs_end_in_the_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three plain-loop runs of one sweep, with the stopper as the README shows it (no ``finish()`` of one's
    own): the first is recorded finished with its final forecast, a later worse one is stopped against it and
    recorded stopped (its console line says the reason once: it repeated the event's own prefix, "stopping at
    step 40: [critical] early_stop @ step 40: ..."), and one stopped by its own target is recorded stopped too
    (not a reference)."""
    torch = pytest.importorskip("torch")
    from scaleforecast.callbacks import LossForecastSession

    total = 400
    path = tmp_path / "sweep.sqlite"
    reasons: dict[str, str | None] = {}

    def train(run_id: str, offset: float, target: float | None = None, until: int = total) -> int | None:
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        stopper = SweepStopper(path, run_id)
        assert stopper.sync()  # the records of the runs before this one are read before it trains
        fc = LossForecastSession(
            opt, total_steps=total, target_loss=target, listeners=[stopper], writer=False, flush_every=20
        )
        for n in range(1, until + 1):
            opt.step()
            fc.step(torch.tensor(2.0 + offset + 0.3 * n**-0.3))
            if fc.should_stop:
                break
        fc.close()
        reasons[run_id] = fc.stop_reason
        return fc.stopped_at

    assert train("first", 0.0) is None
    capsys.readouterr()
    stopped = train("worse", 3.0)
    assert stopped is not None
    line = next(x for x in capsys.readouterr().out.splitlines() if "stopping at step" in x)
    assert line.startswith(f"LossForecastSession: stopping at step {stopped}: cannot beat its sweep"), line
    # the reason a script reads has the shape of a target's stop: the reason alone, not the event's prefix
    assert (reasons["worse"] or "").startswith("cannot beat its sweep"), reasons["worse"]
    assert train("own-target", 0.0, target=1.0) is not None
    assert train("cut-short", -1.0, until=120) is None
    recs = {r.run_id: r for r in SQLiteRegistry(default_sweep(), path).records()}
    assert recs["first"].state is RunState.FINISHED
    assert recs["first"].final_loss == pytest.approx(2.0 + 0.3 * total**-0.3, rel=0.01)
    assert recs["worse"].state is RunState.STOPPED and recs["own-target"].state is RunState.STOPPED
    # a run that ends before its last step (a failure, a time budget) is no finished result to beat: its
    # forecast at that point was recorded as its final loss, and stopped the next runs against it
    assert recs["cut-short"].state is RunState.STOPPED


def test_a_reused_stopper_records_each_run_under_its_own_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stopper reused for another run (a sweep loop, HF's ``hyperparameter_search``): the run kept the last
    one's id, overwriting its record, and its stop. After ``finish`` a run start draws a new id and forgets the
    stop; before any finish (the first run) it changes nothing; an id the user gave is kept, with a warning."""
    stopper = SweepStopper(tmp_path / "s.sqlite", sweep="s")
    first = stopper.run_id
    stopper.on_run_start()
    assert stopper.run_id == first
    stopper.stopped_at = 40
    stopper.finish(stopped=True)
    stopper.on_run_start()
    assert stopper.run_id != first and stopper.stopped_at is None and stopper.decision is None
    stopper.finish(final_loss=2.0)
    states = {r.run_id: r.state for r in SQLiteRegistry("s", tmp_path / "s.sqlite").records()}
    assert states == {first: RunState.STOPPED, stopper.run_id: RunState.FINISHED}

    named = SweepStopper(tmp_path / "s.sqlite", "mine", sweep="s")
    named.finish(final_loss=2.0)
    with caplog.at_level(logging.WARNING):
        named.on_run_start()
    assert named.run_id == "mine" and "reuses the run id 'mine'" in caplog.text


def test_a_reused_stopper_forgets_what_it_read_before_its_last_run_ended(tmp_path: Path) -> None:
    """The records a reused stopper read while its last run trained hold that run as running, at its last
    forecast: the next run's bar was "the confident forecast of run X" (0.68) after X had recorded a lower final
    loss (0.53), a looser bar under a wrong label. A new run reads the registry afresh."""
    stopper = SweepStopper(tmp_path / "s.sqlite", sweep="s", rank=0, min_fraction=0.0)
    first = stopper.run_id
    stopper(500, one_point(0.68, 0.01, heard_at=500))
    assert stopper.sync()
    stopper.finish(final_loss=0.53)
    stopper.on_run_start()
    seen = stopper._others()
    assert not [r for r in seen if r.run_id == first and r.state is RunState.RUNNING], seen
    assert stopper.sync()
    (record,) = stopper._others()
    assert record.run_id == first and record.state is RunState.FINISHED and record.final_loss == 0.53
    stopper.finish(final_loss=0.6)


def test_runs_that_name_no_sweep_share_one_per_script_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unnamed sweeps of two projects never meet: the default sweep is the training script's in its directory."""
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "train.py")])
    monkeypatch.chdir(tmp_path)
    here = default_sweep()
    assert here.startswith("train-") and default_sweep() == here
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert default_sweep() != here
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "finetune.py")])
    assert default_sweep().startswith("finetune-")
    monkeypatch.setenv("SCALEFORECAST_REGISTRY_DIR", str(tmp_path))
    stopper = SweepStopper(rank=0)
    assert stopper.registry.sweep == default_sweep()  # type: ignore[attr-defined]
    assert stopper.registry.path == tmp_path / f"{default_sweep()}.sqlite"  # type: ignore[attr-defined]
    stopper.finish()


def test_a_run_that_died_stops_counting_as_a_reference(tmp_path: Path) -> None:
    """A running run whose record was not updated for a day (it crashed and never finished) no longer sets the
    bar; a fresh one does."""
    reg = SQLiteRegistry("s", tmp_path / "s.sqlite")
    reg.report_forecast("dead", step=500, loss=2.0, std=0.001, status="ok", total_steps=1000)
    stopper = SweepStopper(reg, "me", min_fraction=0.0)
    assert stopper.sync()
    assert stopper(500, one_point(9.0, 0.01))  # far worse than a running run's confident forecast
    old = SweepStopper(reg, "me-later", min_fraction=0.0, max_run_age_s=1e-9)  # any record is older than that
    assert old.sync()
    assert not old(500, one_point(9.0, 0.01))
    stopper.finish()
    old.finish()


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_a_registry_that_cannot_be_used_is_said_once_and_never_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """``SCALEFORECAST_REGISTRY_DIR`` under a regular file, or a database path that is a folder: the worker
    retried forever (one thread per run of a sweep loop) and each run's end waited its whole
    ``finish_timeout_s`` for a write that could never land. It is said once, the worker ends, and the target
    alone still decides."""
    if where == "under a file":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a file")
        path, error = blocker / "reg" / "s.sqlite", "NotADirectoryError"
    else:
        path, error = tmp_path / "s.sqlite", "unable to open database file"
        path.mkdir()
    caplog.set_level(logging.INFO, logger="scaleforecast")
    stopper = SweepStopper(SQLiteRegistry("s", path), "r", target=5.0, finish_timeout_s=60)
    assert not stopper(400, one_point(4.0, 0.01))
    assert stopper._worker.failed.wait(30)
    thread = stopper._worker._thread
    if thread is not None:
        thread.join(30)
        assert not thread.is_alive()
    assert stopper(500, one_point(9.0, 0.01))  # the target alone still stops a hopeless run
    stopper.finish(stopped=True)
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "cannot be used" in said[0] and error in said[0], said
    assert stopper._worker._thread is None or not stopper._worker._thread.is_alive()


def test_a_call_racing_the_give_up_neither_revives_the_worker_nor_says_it_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A write posted while the worker was giving up passed the "unusable" check, then reopened the worker
    (``_closing`` reset), which tried the storage again and said "cannot be used" a second time. Replayed
    here step by step: the give-up, then the racing call's start."""
    caplog.set_level(logging.INFO, logger="scaleforecast")
    bg = BackgroundRegistry(SQLiteRegistry("s", tmp_path / "s.sqlite"))
    bg._give_up(NotADirectoryError("not a folder"))
    with bg._started():  # what the racing call does once it holds the lock
        assert bg._closing
    bg._give_up(NotADirectoryError("not a folder"))  # a second failure of an op already in the worker's hands
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "cannot be used" in said[0], said
    bg._post("forecast", lambda reg: None)
    assert bg.pending == 0 and bg._thread is None


@pytest.mark.slow
def test_a_locked_sweep_database_does_not_stall_the_end_of_a_run(tmp_path: Path) -> None:
    """Another process holds the sweep's database: the run's fit, kept for its family in that database at the
    end of the run, waited the sweep's own 30 s a try, five tries, on the training thread (``close()`` took
    minutes). The family store's short waits bound it to seconds."""
    torch = pytest.importorskip("torch")
    import sqlite3

    from scaleforecast.callbacks import LossForecastSession

    path = tmp_path / "s.sqlite"
    SQLiteRegistry("s", path).records()  # the schema exists
    total = 300
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / total)
    stopper = SweepStopper(path, "run", sweep="s", finish_timeout_s=0.5)
    from adapter_kit import step_along_the_law

    fc = LossForecastSession(opt, sched, total_steps=total, listeners=[stopper], writer=False, flush_every=20)
    step_along_the_law(opt, sched, fc, total)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        fc.close()
        took = time.monotonic() - start
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert took < 25, took  # two 2 s waits and the stopper's 0.5 s, against at least one 30 s wait before


def test_a_resumed_run_keeps_its_record_in_the_sweep(tmp_path: Path) -> None:
    """A run preempted at update 100 and resumed in a new process (a new stopper, a new id): the sweep held its
    old record, still "running" (a reference for a day), and a second one for the rest of the run. It goes on
    under the id its saved state recorded: one record, finished."""
    torch = pytest.importorskip("torch")
    from scaleforecast.callbacks import LossForecastSession

    path, total = tmp_path / "s.sqlite", 300

    def session() -> tuple[Any, Any, SweepStopper]:
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        stopper = SweepStopper(path, sweep="s", finish_timeout_s=30)
        fc = LossForecastSession(opt, total_steps=total, listeners=[stopper], writer=False, flush_every=20)
        return opt, fc, stopper

    opt, fc, first = session()
    for n in range(1, 101):
        opt.step()
        fc.step(torch.tensor(2.0 + 0.3 * n**-0.3))
    saved = fc.state_dict()
    assert first.sync()  # its forecasts are recorded; then the process dies (no close)
    fc.session.comm = None
    opt, fc, second = session()
    assert second.run_id != first.run_id
    fc.load_state_dict(saved)
    assert second.run_id == first.run_id
    for n in range(101, total + 1):
        opt.step()
        fc.step(torch.tensor(2.0 + 0.3 * n**-0.3))
    fc.close()
    records = SQLiteRegistry("s", path).records()
    assert [(r.run_id, r.state) for r in records] == [(first.run_id, RunState.FINISHED)], records


def test_a_sweep_stoppers_arguments_are_checked_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SweepStopper(target="3.1")`` was taken, and the stopper switched itself off at the first forecast;
    ``min_fraction=50`` never let it stop; ``SweepStopper("lr-sweep")`` opened a database file named lr-sweep in
    the working directory, where the README names a sweep with ``sweep=``. Each is refused at construction,
    named as the adapters name theirs."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"target: input should be a valid number, got '3.1' \(str\)"):
        SweepStopper(target="3.1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_fraction: input should be less than or equal to 1"):
        SweepStopper(target=1.5, min_fraction=50)
    with pytest.raises(ValueError, match=r"registry: 'lr-sweep' reads as a sweep's name.*sweep='lr-sweep'"):
        SweepStopper("lr-sweep")
    assert not list(tmp_path.iterdir())
    SweepStopper(tmp_path / "lr-sweep.sqlite", sweep="s").finish(stopped=True)
