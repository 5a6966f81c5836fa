"""Ray Tune integration: forecast metrics, and a small local ASHA sweep that stops the bad trial early."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from scaleforecast.integrations.ray import RayTuneForecastReporter, forecast_metrics

from scaleforecast.results import FitStatus, Forecast, ForecastPoint

TOTAL = 1000


# here, not from tests/forecasts.py: Ray's workers unpickle the trainables without the tests folder on their path
def _forecast(loss: float, std: float, final_step: int = TOTAL, status: FitStatus = FitStatus.OK) -> Forecast:
    point = ForecastPoint(step=final_step, loss=loss, lower=loss - std, upper=loss + std, std=std)
    return Forecast(
        law="tissue",
        level=0.8,
        fitted_at_step=0,
        final_step=final_step,
        points=[point],
        params=None,
        n_points=10,
        status=status,
    )


def test_metrics_and_reporting_cadence() -> None:
    sent: list[dict] = []
    rep = RayTuneForecastReporter(every=2, report_fn=sent.append)
    assert not rep(10, None)
    assert not rep(10, _forecast(3.0, 0.1, status=FitStatus.INSUFFICIENT_DATA))
    for step in (100, 200, 300):
        assert not rep(step, _forecast(3.0, 0.1))
    assert [m["step"] for m in sent] == [100, 300]
    assert rep.on_forecast(400, _forecast(3.0, 0.1)) == []  # the listener face: reports, never stops
    assert [m["step"] for m in sent] == [100, 300]  # every second usable forecast
    assert rep.on_forecast(500, _forecast(3.0, 0.1)) == [] and sent[-1]["step"] == 500
    m = forecast_metrics(250, _forecast(3.2, 0.05), total_steps=2000)
    assert m == {
        "forecast_final_loss": 3.2,
        "forecast_lower": pytest.approx(3.15),
        "forecast_std": 0.05,
        "forecast_status": "ok",
        "step": 250,
        "progress": 125,
    }
    with pytest.raises(ValueError):
        RayTuneForecastReporter(every=0)


def test_a_forecast_too_vague_to_rank_is_not_reported() -> None:
    """ASHA compares the reported means: a first forecast of 0.87 +- 0.71 (a run that ended at 2.56) led its
    rung and ended the sweep's best runs. A forecast whose band at the stop's confidence reaches below zero
    is not reported; the run's first decisive one is."""
    sent: list[dict] = []
    rep = RayTuneForecastReporter(report_fn=sent.append)
    rep(80, _forecast(0.87, 0.707))
    rep(120, _forecast(2.40, 0.30))
    assert [m["step"] for m in sent] == [120]
    loose = RayTuneForecastReporter(report_fn=sent.append, confidence=0.6)
    loose(80, _forecast(0.87, 0.707))
    assert sent[-1]["step"] == 80
    with pytest.raises(ValueError, match="confidence"):
        RayTuneForecastReporter(confidence=1.0)


def test_reporter_disables_itself_on_errors(caplog: pytest.LogCaptureFixture) -> None:
    def boom(metrics: dict) -> None:
        raise RuntimeError("no session")

    rep = RayTuneForecastReporter(report_fn=boom)
    with caplog.at_level(logging.WARNING):
        rep(100, _forecast(3.0, 0.1))
        rep(200, _forecast(3.0, 0.1))
    assert sum("disabled" in r.message for r in caplog.records) == 1


def _trainable(config: dict) -> None:
    reporter = RayTuneForecastReporter()
    for step in range(100, TOTAL + 1, 100):
        std = 0.3 * (1.0 - step / TOTAL) + 0.01
        reporter(step, _forecast(config["final"], std))


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_asha_sweep_stops_bad_trials_on_forecast(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from ray import cloudpickle, tune
    from ray.tune.schedulers import ASHAScheduler

    # the workers cannot import this test module: ship the trainable and its helpers by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        scheduler = ASHAScheduler(time_attr="step", max_t=TOTAL, grace_period=100, reduction_factor=2)
        tuner = tune.Tuner(
            _trainable,
            param_space={"final": tune.grid_search([3.0, 4.0, 4.5])},
            tune_config=tune.TuneConfig(
                metric="forecast_final_loss", mode="min", scheduler=scheduler, max_concurrent_trials=1
            ),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    last = {r.config["final"]: r.metrics["step"] for r in grid}
    assert last[3.0] == TOTAL  # the best trial survives to the end
    assert last[4.5] < TOTAL and last[4.0] < TOTAL  # the hopeless ones are stopped at a rung
    best = grid.get_best_result()
    assert best.config["final"] == 3.0


@pytest.mark.parametrize("ended_at", [300, 400])
def test_a_trial_ended_from_inside_report_records_its_end(tmp_path: Path, ended_at: int) -> None:
    """Tune ends a trial (ASHA at a rung, or at max_t) by raising SystemExit out of tune.report, which the
    reporter calls inside the adapter's step. The run used to be left open: its registry record "running" for a
    day, its last forecast missing from TensorBoard, its fit never kept for its family. Now the flush is written,
    the end recorded (stopped before the last step, finished at it), the listeners after the reporter hear the
    forecast first, and the exit goes on."""
    torch = pytest.importorskip("torch")
    from scaleforecast.callbacks import LossForecastSession
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from scaleforecast.decision import SweepStopper
    from scaleforecast.registry import SQLiteRegistry

    def tune_report(metrics: dict) -> None:  # what ray.tune.report does when the scheduler stops the trial
        if metrics["step"] >= ended_at:
            raise SystemExit(0)

    total = 400
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1.0 - i / total, 0.01))
    stopper = SweepStopper(tmp_path / "sweep.sqlite", sweep="s", run_id="trial", rank=0)
    writer = SummaryWriter(str(tmp_path / "tb"))
    fc = LossForecastSession(
        opt,
        sched,
        total_steps=total,
        flush_every=50,
        refit_every=50,
        writer=writer,
        verbose=False,
        listeners=[RayTuneForecastReporter(report_fn=tune_report), stopper],
    )
    with pytest.raises(SystemExit):
        for n in range(1, total + 1):
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * (n + 10) ** -0.4))
        fc.close()
    assert stopper.sync(10.0)
    record = SQLiteRegistry("s", tmp_path / "sweep.sqlite").get("trial")
    assert record is not None
    assert record.state.value == ("stopped" if ended_at < total else "finished"), record
    # the stopper, after the reporter in the list, heard the forecast the trial ended on (it recorded the one
    # before it, whose loss was the bar the other trials had to beat)
    assert record.step == ended_at, record
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert max(e.step for e in acc.Scalars("forecast/final_loss")) == ended_at


def _sweep_trainable(config: dict) -> None:
    from ray import tune

    from scaleforecast.decision import SweepStopper

    inside = SweepStopper()  # no sweep named: the trials of one experiment must still share one
    passed = config["stopper"]  # one built in the driver, sent to every trial
    tune.report({"sweep": inside.registry.sweep, "run_id": passed.run_id, "step": 1})


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sweep_stoppers_in_ray_trials_share_the_experiment_and_keep_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``SweepStopper()`` built in each trial took its sweep from the script and folder, and Tune runs every
    trial in its own folder from Ray's ``default_worker.py``: each trial was a sweep alone, nothing was ever
    compared. One built in the driver and sent to the trials kept the run id drawn in the driver: every trial
    wrote one record and took the others' for its own. The trials of one experiment share a sweep, and each
    trial is a run of its own."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle, tune

    from scaleforecast.decision import SweepStopper

    monkeypatch.setenv("SCALEFORECAST_REGISTRY_DIR", str(tmp_path / "registry"))
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    driver_stopper = SweepStopper(sweep="ray-passed")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            _sweep_trainable,
            param_space={"stopper": driver_stopper, "trial": tune.grid_search([0, 1, 2])},
            tune_config=tune.TuneConfig(max_concurrent_trials=1),
            run_config=tune.RunConfig(name="lr_sweep", storage_path=str(tmp_path / "ray"), verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert not grid.errors, grid.errors
    sweeps = {r.metrics["sweep"] for r in grid}
    assert sweeps == {"ray-lr_sweep"}, sweeps
    ids = {r.metrics["run_id"] for r in grid}
    assert len(ids) == 3 and driver_stopper.run_id not in ids, (ids, driver_stopper.run_id)


def test_a_trial_that_tune_ends_is_not_told_it_never_closed(recwarn: pytest.WarningsRecorder) -> None:
    """Tune's scheduler ends the trials it stops where no ``close()`` after the loop can follow (Ray 2.60 ends
    them at the process's exit): every ASHA-stopped trial was told it "was never closed (call close() after
    the loop ...)". Its end is still recorded; the note is not said."""
    torch = pytest.importorskip("torch")
    from scaleforecast.callbacks import LossForecastSession

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    fc = LossForecastSession(
        opt,
        total_steps=100,
        writer=False,
        verbose=False,
        listeners=[RayTuneForecastReporter(report_fn=lambda m: None)],
    )
    for n in range(1, 31):
        opt.step()
        fc.step(torch.tensor(2.0 + n**-0.3))
    fc.session.end_unfinished()  # what the interpreter's exit does with a run left open
    assert fc.session.comm is None
    assert not [w for w in recwarn if "never closed" in str(w.message)], [str(w.message) for w in recwarn]


def test_a_stopped_run_says_so_where_it_ends() -> None:
    """A run the plugin stops ended in Tune's results like one that finished: its last report, the forecast
    before the stop. A stop rule's stop reports that forecast once more as ``stopped``; a lost run reports a
    NaN forecast, ``lost``, with the reason; after Tune ended the trial itself nothing more is reported."""
    sent: list[dict] = []
    rep = RayTuneForecastReporter(report_fn=sent.append)
    rep(100, _forecast(3.0, 0.1))
    rep.on_run_end(120, stopped=True)
    assert sent[-1] == {
        **sent[0],
        "forecast_status": "stopped",
        "step": 120,
        "progress": 120,
        "stop_reason": "",
    }
    finished = RayTuneForecastReporter(report_fn=sent.append)
    finished(1000, _forecast(3.0, 0.1))
    finished.on_run_end(1000, stopped=False)
    assert len(sent) == 3 and sent[-1]["forecast_status"] == "ok"
    lost = RayTuneForecastReporter(report_fn=sent.append)
    lost(100, _forecast(2.5, 0.1))
    lost.on_run_lost(108, "nonfinite @ step 108: the run is lost")
    lost.on_run_end(120, stopped=True)
    last = sent[-1]
    assert len(sent) == 5 and last["forecast_status"] == "lost" and last["step"] == 108
    assert last["forecast_final_loss"] != last["forecast_final_loss"] and "nonfinite" in last["stop_reason"]

    def ended(metrics: dict) -> None:  # ASHA's stop: SystemExit out of tune.report
        raise SystemExit(0)

    by_tune = RayTuneForecastReporter(report_fn=ended)
    with pytest.raises(SystemExit):
        by_tune(100, _forecast(3.0, 0.1))
    by_tune.on_run_end(100, stopped=True)  # no second SystemExit out of the adapter's end of run


def _lost_trainable(config: dict) -> None:
    import torch
    from ray import tune
    from scaleforecast.callbacks import LossForecastSession

    total = 300
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1.0 - i / total, 0.01))
    # the trial's own folder, kept with the results (Tune runs the trial in a working folder it does not keep)
    fc = LossForecastSession(
        opt, sched, total_steps=total, flush_every=25, dirpath=tune.get_context().get_trial_dir(),
        verbose=False, log_figures_every=0, listeners=[RayTuneForecastReporter()],
    )  # fmt: skip
    for n in range(1, total + 1):
        opt.step()
        sched.step()
        loss = config["case"]["level"] + 3.0 * (n + 10) ** -0.4
        lost = config["case"]["nan_at"] and n >= config["case"]["nan_at"]
        fc.step(torch.tensor(float("nan") if lost else loss))
        if fc.should_stop:
            break
    fc.close()


@pytest.mark.multiprocess
@pytest.mark.slow
@pytest.mark.timeout(600)  # Ray's start and two trials with TensorBoard: 2.5 min on a loaded 2-core machine
def test_a_trial_lost_to_nans_is_not_tunes_best(tmp_path: Path) -> None:
    """Two trials, the one whose losses were lower going NaN at update 150: the health check stopped it as lost,
    but its last report was the forecast made before the NaNs, and Tune named it the best trial. It now ends
    with a NaN forecast, ``lost``, and the healthy trial is the best."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            _lost_trainable,
            param_space={
                "case": tune.grid_search([{"level": 1.0, "nan_at": 150}, {"level": 2.0, "nan_at": 0}])
            },
            tune_config=tune.TuneConfig(metric="forecast_final_loss", mode="min", max_concurrent_trials=1),
            run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert not grid.errors, grid.errors
    ends = {r.config["case"]["level"]: r.metrics for r in grid}
    assert ends[1.0]["forecast_status"] == "lost" and ends[1.0]["step"] < 300, ends[1.0]
    assert ends[2.0]["forecast_status"] == "ok" and ends[2.0]["step"] == 300, ends[2.0]
    assert grid.get_best_result().config["case"]["level"] == 2.0
    # each trial's TensorBoard run is in its trial folder, under the experiment's storage path
    assert {r.path for r in grid} == {str(f.parent) for f in tmp_path.rglob("scaleforecast")}
