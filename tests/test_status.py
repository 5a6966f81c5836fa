"""Stale is not valid: after NaN/Inf losses no band is current, and the status, console and TensorBoard say so
once; a forecast with non-finite points never keeps status ``ok`` in silence."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.forecaster import OnlineForecaster
from scaleforecast.monitor import FlushBatch, RunMonitor, StopConfig
from scaleforecast.results import FitStatus

RUN = "epfml_schaipp_haegele/ann124-0.2_slimpajama_llama_norm_nlayers12_nhead12_lr0.0005_sched_wsd_warmup300_decay_linear_0.2_iter15000"


def _train_curve(curves_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import csv

    steps, loss = [], []
    with open(curves_dir / f"{RUN}.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["train_loss"]:
                steps.append(int(row["step"]))
                loss.append(float(row["train_loss"]))
    return np.array(steps), np.array(loss), np.load(curves_dir / f"{RUN}.lr.npy")


def test_nonfinite_tail_makes_the_forecast_stale_at_once_and_a_finite_loss_ends_it(curves_dir: Path) -> None:
    st, y, lrs = _train_curve(curves_dir)
    fc = OnlineForecaster(lrs)
    first = st <= 6000
    fc.observe_many(st[first], y[first])
    assert fc.refit().status is FitStatus.ANNEALING_UNIDENTIFIED
    # the weights went to NaN: the very next update says the forecast is stale, without waiting for a refit
    out = fc.update([6050, 6100], [float("nan"), float("inf")])
    assert out is not None and out.status is FitStatus.STALE and out.points == [] and not out.ok
    assert fc.latest is out
    assert any(w.startswith("[stale] no usable loss since step 6000 (2 non-finite") for w in out.warnings)
    # said once: more NaN produce no new forecast until the policy refits, and then it is still stale
    assert fc.update([6120], [float("nan")]) is None  # the next refit is due 150 steps after 6000
    later = fc.update(np.arange(6200, 7000, 50), np.full(16, np.nan))
    assert later is not None and later.status is FitStatus.STALE
    # the refit made among the NaN saw no loss after step 6000 (it said "the fit made at step 6950")
    assert any("the fit to the losses up to step 6000 is not current" in w for w in later.warnings), later
    assert fc.forecast(steps=[7000, 15000]).status is FitStatus.STALE
    # a what-if on another schedule is not current either
    assert fc.forecast(schedule=np.full(15000, 1e-4)).status is FitStatus.STALE
    # a finite loss again: the next refit is current
    fc.observe_many(st[(st > 7000) & (st <= 8000)], y[(st > 7000) & (st <= 8000)])
    assert fc.forecast().status is not FitStatus.STALE
    assert fc.refit().ok


def test_a_nan_inside_the_batch_followed_by_finite_losses_is_not_stale(curves_dir: Path) -> None:
    st, y, lrs = _train_curve(curves_dir)
    fc = OnlineForecaster(lrs)
    fc.observe_many(st[st <= 6000], y[st <= 6000])
    fc.refit()
    fc.observe_many([6050, 6100, 6150], [float("nan"), 3.3, 3.3])
    out = fc.refit()
    assert out.status is not FitStatus.STALE and out.ok
    assert any("1 non-finite loss value(s) seen and left out" in w for w in out.warnings)


def test_one_nan_is_left_out_wherever_it_falls_in_a_flush(curves_dir: Path) -> None:
    """A NaN on the last step of a flush made the forecast stale (no forecast printed or written at that
    flush), one a step earlier was left out: one bad batch (a loss scaler's skipped update) is left out
    wherever it falls; two in a row at the end are a run that lost its loss."""
    st, y, lrs = _train_curve(curves_dir)
    fc = OnlineForecaster(lrs)
    fc.observe_many(st[st <= 6000], y[st <= 6000])
    fc.refit()
    out = fc.update([6050, 6100], [3.3, float("nan")])
    assert fc.latest is not None and fc.latest.status is not FitStatus.STALE and fc.latest.ok
    assert out is None or out.status is not FitStatus.STALE
    out = fc.update([6150], [float("nan")])
    assert out is not None and out.status is FitStatus.STALE


def test_stale_state_survives_a_checkpoint(curves_dir: Path) -> None:
    st, y, lrs = _train_curve(curves_dir)
    fc = OnlineForecaster(lrs)
    fc.observe_many(st[st <= 6000], y[st <= 6000])
    fc.refit()
    fc.update([6050, 6100], [float("nan"), float("nan")])
    again = OnlineForecaster()
    again.load_state_dict(fc.state_dict())
    assert again.forecast().status is FitStatus.STALE


def test_nonfinite_forecast_points_are_reported_never_silently_dropped(curves_dir: Path) -> None:
    st, y, lrs = _train_curve(curves_dir)
    fc = OnlineForecaster(lrs)
    fc.observe_many(st[st <= 6000], y[st <= 6000])
    fc.refit()
    # a what-if that starts with LR 0: no LR area after step 1, the law is infinite there
    whatif = lrs.copy()
    whatif[0] = 0.0
    out = fc.forecast(steps=[1, 15000], schedule=whatif)
    assert [p.step for p in out.points] == [15000]
    assert out.status is not FitStatus.OK or any(w.startswith("[nonfinite_forecast]") for w in out.warnings)
    assert any(w.startswith("[nonfinite_forecast]") for w in out.warnings)
    assert any("not finite at step(s) 1" in w for w in out.warnings)
    only = fc.forecast(steps=[1], schedule=whatif)
    assert only.status is FitStatus.FAILED and only.points == [] and not only.ok
    # a fit whose own status is ok keeps it for the finite points, and says which ones are missing
    whole = OnlineForecaster(lrs)
    whole.observe_many(st, y)
    assert whole.refit().status is FitStatus.OK
    ok_out = whole.forecast(steps=[1, 15000], schedule=whatif)
    assert ok_out.status is FitStatus.OK and [p.step for p in ok_out.points] == [15000]
    assert any(w.startswith("[nonfinite_forecast]") for w in ok_out.warnings)


@pytest.mark.parametrize("window", [1, 50])
def test_nan_storm_through_the_monitor_is_said_once_on_console_and_tensorboard(
    curves_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, window: int
) -> None:
    """A NaN storm with no health check: the monitor stops publishing a band, logs one ``stale`` event and
    TensorBoard holds one status text and one event for it, and no final-loss scalar after it began."""
    pytest.importorskip("tensorboard")
    torch = pytest.importorskip("torch")
    from scaleforecast.integrations.tensorboard import TensorBoardSink
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    del torch
    st, y, lrs = _train_curve(curves_dir)
    writer = SummaryWriter(str(tmp_path))
    mon = RunMonitor(lrs, sinks=[TensorBoardSink(writer)], stop=StopConfig(action="warn"))
    mon.forecaster.config = mon.forecaster.config.model_copy(update={"refit_every": 200})
    storm = 9000
    y = y.copy()
    y[st > storm] = np.nan
    caplog.set_level(logging.INFO, logger="scaleforecast")
    events = []
    for lo in range(0, len(st), 4):
        res = mon.flush(FlushBatch(steps=st[lo : lo + 4], loss=y[lo : lo + 4], window=window))
        events += res.events
        if res.forecast is not None and int(st[lo : lo + 4][-1]) > storm:
            assert res.forecast.final is None
    mon.close()
    stale = [e for e in events if e.kind == "stale"]
    assert len(stale) == 1 and storm < stale[0].step <= storm + 200
    assert "no usable loss since step 9000" in stale[0].message
    assert sum("stale" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING) == 1
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    finals = [e.step for e in acc.Scalars("forecast/final_loss")]
    assert finals and max(finals) <= storm
    texts = [
        e for tag in acc.Tags()["tensors"] for e in acc.Tensors(tag) if "stale" in tag or "status" in tag
    ]
    status_texts = [t for t in texts if b"stale" in t.tensor_proto.string_val[0]]
    assert len(status_texts) == 2  # the status change and the event, once each


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ["lightning", "hf", "loop"])
def test_nan_storm_in_real_training_without_a_health_check(
    adapter: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A NaN storm (the weights go to NaN) under each adapter with no detector: the console prints no band
    after it began, the ``stale`` event comes once, and the adapter's forecast is stale, with no points."""
    pytest.importorskip("torch")
    from adapter_kit import Plan, train
    from conftest import framework_or_skip

    framework_or_skip(adapter)
    seen: list = []
    kwargs = {"flush_every": 5, "refit_every": 5, "verbose": True, "writer": False, "action": "warn"}
    kwargs |= {"detectors": [], "on_event": seen.append}
    run = train(adapter, tmp_path, Plan(steps=60, nan_from=36, kwargs=kwargs))
    assert run.steps_run == 60 and run.cb.errors == {}
    stale = [e for e in seen if e.kind == "stale"]
    assert len(stale) == 1 and 35 <= stale[0].step <= 45, seen
    out = run.cb.forecast
    assert out is not None and out.status is FitStatus.STALE and out.points == [] and not out.ok
    said = ("forecast final loss", "too early to forecast")  # a first fit too vague to act on says so
    printed = [line for line in capsys.readouterr().out.splitlines() if any(s in line for s in said)]
    assert printed, "no forecast was printed before the storm"
    steps = [int(line.split("step ")[1].split(":")[0]) for line in printed]
    assert max(steps) < 40


def test_a_law_extrapolated_below_zero_is_no_forecast() -> None:
    """A real tiny SGD run at LR 1.5 diverged after its warm-up and recovers: fitted at 40 % of the run, the
    law (its C taken from the prior, its power law from the climb) falls below zero by the last step. No
    negative loss is ever shown as a forecast: the points are dropped with a warning, and with none left the
    status is ``failed``."""
    folder = Path(__file__).resolve().parent.parent / "benchmarks" / "curves_tiny" / "tiny_sgd"
    rows = np.genfromtxt(folder / "sgd_cos10_2k_lr1.5.csv", delimiter=",", names=True)
    rows = rows[np.isfinite(rows["val_loss"]) & (rows["step"] >= 1)]
    steps, loss = rows["step"].astype(np.int64), rows["val_loss"]
    lrs = np.load(folder / "sgd_cos10_2k_lr1.5.lr.npy")
    fc = OnlineForecaster(lrs)
    fc.observe_many(steps[steps <= 800], loss[steps <= 800])
    out = fc.refit()
    assert out.status is FitStatus.FAILED and out.final is None and not out.ok
    assert any(w.startswith("[nonpositive_forecast]") and "2000" in w for w in out.warnings)
    # near the run, the same law is still positive: those points stand, the others are named
    part = fc.forecast(steps=[900, 2000])
    assert [p.step for p in part.points] == [900] and part.points[0].loss > 0
    # a band wider than its centre stops at zero: no negative loss is shown as a bound either
    wide = fc.forecast(steps=[900], level=0.999).points[0]
    assert wide.loss - 3.29 * wide.std < 0 and wide.lower == 0.0 < wide.loss < wide.upper
    assert any("at step(s) 2000" in w for w in part.warnings)


def test_one_nan_at_the_end_of_a_flush_is_said_once(curves_dir: Path) -> None:
    """One NaN on the last step of a flush, with the health checks on: the fit is stale until the next finite
    loss, which the non-finite event just said; a second warning ("no usable loss since ...") said it again."""
    from scaleforecast.detectors import HealthMonitor

    st, y, lrs = _train_curve(curves_dir)
    mon = RunMonitor(lrs, detectors=[HealthMonitor()], stop=StopConfig(action="warn"))
    mon.forecaster.config = mon.forecaster.config.model_copy(update={"refit_every": 1})
    y = y.copy()
    y[len(st) // 2 // 4 * 4 - 1] = np.nan  # the last of a flush of four
    events = []
    for lo in range(0, len(st), 4):
        events += mon.flush(FlushBatch(steps=st[lo : lo + 4], loss=y[lo : lo + 4])).events
    assert [e.kind for e in events if e.kind in ("nonfinite", "stale")] == ["nonfinite"], events
