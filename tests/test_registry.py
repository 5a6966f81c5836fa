"""The SQLite run registry: records round-trip, and several processes writing at once lose nothing."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import sqlite3
from pathlib import Path

import pytest

from scaleforecast.registry import (
    RegistryError,
    RunRecord,
    RunRegistry,
    RunState,
    SQLiteRegistry,
    default_registry_path,
    open_registry,
)

N_WRITERS = 4
N_WRITES = 60


def _writer(path: str, sweep: str, worker: int, n: int) -> None:
    reg = SQLiteRegistry(sweep, path, busy_timeout_s=30.0)
    run_id = f"run-{worker}"
    for k in range(1, n + 1):
        reg.report_forecast(run_id, step=k, loss=3.0 + worker + 1.0 / k, std=0.01, status="ok", total_steps=n)
        # every writer also reads while the others write: a reader must never see a torn record
        recs = reg.records()
        assert all(isinstance(r, RunRecord) for r in recs)
    reg.report_final(run_id, 3.0 + worker)
    reg.close()


def test_roundtrip_and_states(tmp_path: Path) -> None:
    reg = SQLiteRegistry("s1", tmp_path / "s1.sqlite")
    assert reg.records() == []
    reg.report_forecast("a", step=10, loss=3.5, std=0.1, status="ok", total_steps=100)
    reg.report_forecast("a", step=20, loss=3.4, std=0.05, status="annealing_unidentified")
    reg.report_forecast("b", step=20, loss=float("nan"), std=float("inf"), status="failed", total_steps=100)
    reg.report_final("c", 2.9)
    reg.report_final("d", None, state=RunState.STOPPED)
    got = {r.run_id: r for r in reg.records()}
    assert set(got) == {"a", "b", "c", "d"}
    a = got["a"]
    assert (a.step, a.loss, a.std, a.status, a.total_steps) == (20, 3.4, 0.05, "annealing_unidentified", 100)
    assert a.state is RunState.RUNNING and a.final_loss is None
    assert got["b"].loss is None and got["b"].std is None  # non-finite stored as unknown, never as a number
    assert got["c"].state is RunState.FINISHED and got["c"].final_loss == 2.9
    assert got["d"].state is RunState.STOPPED and got["d"].final_loss is None
    assert {r.run_id for r in reg.others("a")} == {"b", "c", "d"}
    assert reg.get("zzz") is None
    assert [h[1] for h in reg.history("a")] == [10, 20]
    # a finished run keeps its last forecast; a second sweep in the same file is kept apart
    reg.report_final("a", 3.3)
    assert reg.get("a") is not None and reg.get("a").loss == 3.4  # type: ignore[union-attr]
    other = SQLiteRegistry("s2", tmp_path / "s1.sqlite")
    assert other.records() == []
    with pytest.raises(ValueError, match="end state"):
        reg.report_final("a", 1.0, state=RunState.RUNNING)


def test_wal_mode_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALEFORECAST_REGISTRY_DIR", str(tmp_path / "cache"))
    assert default_registry_path("my sweep/1") == tmp_path / "cache" / "my_sweep_1.sqlite"
    reg = open_registry(None, "my sweep/1")
    assert isinstance(reg, SQLiteRegistry)
    reg.report_forecast("r", step=1, loss=1.0, std=0.0, status="ok")
    mode = sqlite3.connect(reg.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert open_registry(reg) is reg
    assert isinstance(open_registry(tmp_path / "x.sqlite", "x"), SQLiteRegistry)
    with pytest.raises(TypeError):
        open_registry(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        default_registry_path("  ")


def test_pickles_without_connection(tmp_path: Path) -> None:
    reg = SQLiteRegistry("p", tmp_path / "p.sqlite")
    reg.report_forecast("r", step=1, loss=1.0, std=0.0, status="ok")
    clone = pickle.loads(pickle.dumps(reg))
    assert [r.run_id for r in clone.records()] == ["r"]


def test_locked_database_raises_registry_error_after_retries(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    reg = SQLiteRegistry("l", path, busy_timeout_s=0.05, retries=1)
    reg.report_forecast("r", step=1, loss=1.0, std=0.0, status="ok")
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RegistryError, match="locked"):
            reg.report_forecast("r", step=2, loss=1.0, std=0.0, status="ok")
    finally:
        blocker.execute("ROLLBACK")
    reg.report_forecast("r", step=3, loss=1.0, std=0.0, status="ok")
    assert reg.get("r").step == 3  # type: ignore[union-attr]


def test_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        RunRegistry()  # type: ignore[abstract]


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_writers_lose_nothing(tmp_path: Path, method: str) -> None:
    path = str(tmp_path / "sweep.sqlite")
    ctx = mp.get_context(method)
    procs = [ctx.Process(target=_writer, args=(path, "sw", w, N_WRITES)) for w in range(N_WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=100)
    assert [p.exitcode for p in procs] == [0] * N_WRITERS
    reg = SQLiteRegistry("sw", path)
    recs = {r.run_id: r for r in reg.records()}
    assert set(recs) == {f"run-{w}" for w in range(N_WRITERS)}
    for w in range(N_WRITERS):
        r = recs[f"run-{w}"]
        assert r.step == N_WRITES and r.state is RunState.FINISHED and r.final_loss == 3.0 + w
        steps = [h[1] for h in reg.history(f"run-{w}")]
        assert steps == list(range(1, N_WRITES + 1))  # every write landed, in order
    assert len(reg.history()) == N_WRITERS * N_WRITES


@pytest.mark.trainer
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_lightning_runs_share_the_default_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two real Lightning runs of one sweep, no set-up: the second (hopeless) run stops against the first."""
    pytest.importorskip("lightning")
    from lightning_models import TinyRegressor, cpu_trainer
    from scaleforecast.callbacks import LossForecast

    from scaleforecast.decision import SweepStopper

    monkeypatch.setenv("SCALEFORECAST_REGISTRY_DIR", str(tmp_path / "cache"))
    steps_run = {}
    for run_id, lr in (("good", 0.05), ("tiny-lr", 1e-6)):
        stopper = SweepStopper(run_id=run_id, sweep="lightning-sweep", min_fraction=0.2)
        assert stopper.sync()  # the earlier runs' records are read before this one trains
        callback = LossForecast(
            refit_every=6, flush_every=3, writer=False, verbose=False, listeners=[stopper]
        )
        model = TinyRegressor(lr=lr, total=60, warmup=5)
        trainer = cpu_trainer(60, [callback], tmp_path)
        trainer.fit(model)
        stopper.finish(float(sum(model.raw_losses[-5:]) / 5) if stopper.stopped_at is None else None)
        steps_run[run_id] = trainer.global_step
    assert steps_run["good"] == 60 and 12 <= steps_run["tiny-lr"] < 60
    reg = SQLiteRegistry("lightning-sweep", tmp_path / "cache" / "lightning-sweep.sqlite")
    recs = {r.run_id: r for r in reg.records()}
    assert recs["good"].state is RunState.FINISHED and recs["good"].final_loss is not None
    assert recs["tiny-lr"].state is RunState.STOPPED and recs["tiny-lr"].loss is not None
    assert len(reg.history("good")) >= 5  # every refit was published


def test_records_carry_the_runs_stop_features_and_older_files_gain_the_column(tmp_path: Path) -> None:
    """A run publishes its stop features beside its forecast (the others read its forecast with its measured
    error); a file an older version made, without that column, is upgraded in place and its rows still read."""
    from scaleforecast.results import StopFeatures

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the runs table as an older version made it
        conn.execute(
            "CREATE TABLE runs (sweep TEXT NOT NULL, run_id TEXT NOT NULL, step INTEGER NOT NULL DEFAULT 0, "
            "total_steps INTEGER, loss REAL, std REAL, status TEXT, state TEXT NOT NULL DEFAULT 'running', "
            "final_loss REAL, updated REAL NOT NULL, PRIMARY KEY (sweep, run_id))"
        )
        conn.execute("INSERT INTO runs (sweep, run_id, step, loss, updated) VALUES ('s', 'old', 5, 3.0, 1.0)")
    features = StopFeatures(
        fraction=0.4, decay_seen=0.2, decay_ahead=0.8, backtest_worst=0.01, total_steps=100
    )
    reg = SQLiteRegistry("s", path)
    reg.report_forecast("new", step=40, loss=3.1, std=0.02, status="ok", total_steps=100, features=features)
    got = {r.run_id: r for r in reg.records()}
    assert got["old"].loss == 3.0 and got["old"].features is None
    assert got["new"].features == features
    reg.report_forecast("new", step=50, loss=3.0, std=0.02, status="ok", total_steps=100)
    assert reg.get("new").features is None  # type: ignore[union-attr]  # the latest forecast's, not a stale one
    # two processes upgrading the same file at once: the second finds the column there
    assert SQLiteRegistry("s", path).records() and SQLiteRegistry("s", path).get("old") is not None
