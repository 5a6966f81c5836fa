"""RunMonitor: the framework-free flush path shared by the adapters and ``watch``, and the one action policy."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pytest

from scaleforecast.detectors import HealthMonitor
from scaleforecast.events import Event, TrainingHealthError
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import LAWS
from scaleforecast.monitor import (
    Detector,
    FitView,
    FlushBatch,
    Guard,
    Listener,
    RunMonitor,
    StopConfig,
    checked,
)
from scaleforecast.results import LawParams
from scaleforecast.schedules import as_lrs

TOTAL = 2000
LRS = as_lrs(f"cosine:peak=1e-3,warmup=0,total={TOTAL}")
PARAMS = LawParams(L0=2.0, A=0.5, alpha=0.5, C=1.0)


def _curve(seed: int = 0, noise: float = 0.01) -> np.ndarray:
    steps = np.arange(1, TOTAL + 1)
    clean = LAWS["tissue"].predict(PARAMS, LRS, steps)
    return clean + noise * np.random.default_rng(seed).standard_normal(TOTAL)


def _batches(y: np.ndarray, upto: int, every: int = 50) -> list[FlushBatch]:
    return [
        FlushBatch(steps=np.arange(s + 1, s + every + 1), loss=y[s : s + every], lrs=LRS[s : s + every])
        for s in range(0, upto, every)
    ]


class _Recorder:
    """A sink that keeps what it was sent."""

    def __init__(self) -> None:
        self.forecasts: list[int] = []
        self.usable: list[int] = []
        self.events: list[Event] = []
        self.figures: list[int] = []
        self.stop_steps: list[int] = []
        self.scalars: dict[str, list[float]] = {}
        self.closed = False

    def write_forecast(self, step: int, forecast: Any, extras: dict[str, float]) -> None:
        self.forecasts.append(step)
        if forecast.ok:
            self.usable.append(step)
        for k, v in extras.items():
            self.scalars.setdefault(k, []).append(v)

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self.scalars.setdefault(k, []).append(v)

    def write_event(self, event: Event) -> None:
        self.events.append(event)

    def write_figure(self, snapshot: Any) -> None:
        self.figures.append(snapshot.step)
        self.last_figure = snapshot
        if snapshot.stop_step is not None:
            self.stop_steps.append(snapshot.stop_step)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _SpikeAt:
    """A detector that reports a critical spike at one step."""

    def __init__(self, step: int, severity: str = "critical") -> None:
        self.step, self.severity = step, severity
        self.seen: list[int] = []

    def check(self, batch: FlushBatch, view: FitView) -> list[Event]:
        self.seen.extend(int(s) for s in batch.steps)
        if self.step in batch.steps:
            return [Event(kind="spike", step=self.step, severity=self.severity, score=9.0, message="spike")]  # type: ignore[arg-type]
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"seen": len(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = state


def test_forecasts_and_stops_when_target_is_out_of_reach() -> None:
    y = _curve()
    sink = _Recorder()
    mon = RunMonitor(
        LRS,
        config=ForecasterConfig(refit_every=200),
        stop=StopConfig(target_loss=float(y[-50:].mean()) - 0.3, min_fraction=0.25),
        sinks=[sink],
        figure_every=2,
    )
    stopped = None
    for batch in _batches(y, TOTAL):
        result = mon.flush(batch)
        if result.stop:
            stopped = int(batch.steps[-1])
            assert result.reason and "cannot reach" in result.reason
            break
    assert stopped is not None and stopped >= 0.25 * TOTAL
    assert mon.stopped_at == stopped and mon.stop_reason
    assert [e.kind for e in sink.events] == ["early_stop"]
    # a figure for the first usable forecast, then every second one, and one at the stop that marks it
    assert sink.usable and sink.figures == sorted({*sink.usable[::2], stopped})
    assert sink.stop_steps == [stopped]
    assert sink.scalars["forecast/p_miss_target"][-1] >= 0.95
    # beside each probability, the level it stops at
    probability, level = sink.scalars["forecast/p_miss_target"], sink.scalars["forecast/stop_confidence"]
    assert len(level) == len(probability) and set(level) == {mon.stop.confidence}
    assert len(sink.scalars["forecast/observed"]) == stopped // 50


def test_the_final_flush_of_a_training_that_ended_stops_nothing() -> None:
    """The last flush, made when training has ended (another callback stopped it, or it reached its end): the
    stop rule is written as always but stops nothing, so the run is not recorded as stopped by the rule (it
    was, with a "stopped early" mark, when Lightning's EarlyStopping ended the run between two flushes)."""
    y = _curve()

    def monitor() -> tuple[RunMonitor, _Recorder]:
        sink = _Recorder()
        stop = StopConfig(target_loss=float(y[-50:].mean()) - 0.3, min_fraction=0.25)
        return RunMonitor(LRS, config=ForecasterConfig(refit_every=200), stop=stop, sinks=[sink]), sink

    reference, _ = monitor()
    batches = list(_batches(y, TOTAL))
    first = next(i for i, b in enumerate(batches) if reference.flush(b).stop)
    mon, sink = monitor()
    for b in batches[:first]:
        assert not mon.flush(b).stop
    result = mon.flush(batches[first], final=True)
    assert not result.stop and result.decision is not None and not result.decision.stop
    assert mon.stopped_at is None and sink.events == [] and sink.stop_steps == []
    assert "forecast/p_miss_target" in sink.scalars


def test_reachable_target_never_stops_and_forecast_is_close() -> None:
    y = _curve(seed=1)
    mon = RunMonitor(LRS, stop=StopConfig(target_loss=float(y[-50:].mean()) + 0.5, min_fraction=0.5))
    for batch in _batches(y, TOTAL):
        assert not mon.flush(batch).stop
    final = mon.forecaster.latest.final
    assert final is not None
    # a sanity bound only: the fitter's accuracy is tested with the fitter
    assert abs(final.loss - LAWS["tissue"].predict(PARAMS, LRS, [TOTAL])[0]) < 0.15


def test_warn_action_reports_once_and_never_stops() -> None:
    y = _curve()
    sink = _Recorder()
    mon = RunMonitor(LRS, stop=StopConfig(target_loss=1e-3, min_fraction=0.2, action="warn"), sinks=[sink])
    for batch in _batches(y, TOTAL):
        assert not mon.flush(batch).stop
    assert [e.kind for e in sink.events] == ["early_stop"]
    assert mon.stopped_at is None and sink.figures and sink.stop_steps == []
    # what the console and TensorBoard say of it is a report, not a stop
    assert sink.events[0].text().endswith("(action='warn': the run goes on)")


def test_detector_events_go_through_the_action_policy() -> None:
    y = _curve()
    sink, seen = _Recorder(), []
    check = _SpikeAt(120)
    assert isinstance(check, Detector)
    mon = RunMonitor(
        LRS, detectors=[check], sinks=[sink], on_event=seen.append, stop=StopConfig(action="stop")
    )
    results = [mon.flush(b) for b in _batches(y, 200)]
    assert [r.stop for r in results] == [False, False, True, False]
    assert results[2].reason and "spike" in results[2].reason
    assert [e.kind for e in sink.events] == ["spike"] and seen == sink.events
    assert check.seen == list(range(1, 201))

    raising = RunMonitor(LRS, detectors=[_SpikeAt(60)], stop=StopConfig(action="raise"))
    raising.flush(_batches(y, 50)[0])
    with pytest.raises(TrainingHealthError, match="spike"):
        raising.flush(_batches(y, 100)[1])
    deferred = RunMonitor(LRS, detectors=[_SpikeAt(60)], stop=StopConfig(action="raise"))
    deferred.flush(_batches(y, 50)[0])
    result = deferred.flush(_batches(y, 100)[1], raise_now=False)  # adapters agree across ranks first
    assert isinstance(result.error, TrainingHealthError) and not result.stop

    warn_only = RunMonitor(LRS, detectors=[_SpikeAt(60, severity="warning")], stop=StopConfig(action="stop"))
    assert not any(warn_only.flush(b).stop for b in _batches(y, 200))


def test_failing_parts_are_switched_off_and_the_rest_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def check(self, batch: FlushBatch, view: FitView) -> list[Event]:
            raise ZeroDivisionError("bad detector")

    y = _curve()
    sink = _Recorder()
    mon = RunMonitor(LRS, detectors=[Broken()], sinks=[sink])
    with pytest.warns(RuntimeWarning, match="bad detector"):
        mon.flush(_batches(y, 50)[0])
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        for b in _batches(y, 400)[1:]:
            mon.flush(b)
    assert not [w for w in again if issubclass(w.category, RuntimeWarning)]
    assert mon.forecaster.latest is not None and sink.forecasts

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("fitter exploded")

    monkeypatch.setattr("scaleforecast.forecaster.fit", explode)
    broken = RunMonitor(LRS, stop=StopConfig(target_loss=1e-3, min_fraction=0.0))
    with pytest.warns(RuntimeWarning, match="fitter exploded"):
        result = broken.flush(_batches(y, 50)[0])
    assert not result.stop and "forecaster" in broken.disabled
    assert not any(broken.flush(b).stop for b in _batches(y, 400)[1:])


def test_state_dict_round_trip_and_pickle() -> None:
    y = _curve()
    check = _SpikeAt(10_000)
    mon = RunMonitor(LRS, stop=StopConfig(target_loss=1.0), detectors=[check], sinks=[_Recorder()])
    for b in _batches(y, 600):
        mon.flush(b)
    state = mon.state_dict()
    import json

    json.dumps(state)  # JSON-safe

    other = RunMonitor(stop=StopConfig(target_loss=1.0), detectors=[_SpikeAt(10_000)])
    other.load_state_dict(state)
    assert other.forecaster.last_step == 600 and other.refits == mon.refits
    assert other.detectors[0].loaded == {"seen": 600}  # type: ignore[attr-defined]
    # the first release's format (version 1, detectors under "health") still loads
    old = {k: v for k, v in state.items() if k not in ("detectors", "listeners")}
    older = RunMonitor(detectors=[_SpikeAt(10_000)])
    older.load_state_dict({**old, "version": 1, "health": state["detectors"]})
    assert older.forecaster.last_step == 600 and older.detectors[0].loaded == {"seen": 600}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="version"):
        older.load_state_dict({**state, "version": 99})
    np.testing.assert_allclose(other.forecaster.schedule, LRS, rtol=1e-9)  # the state's compact schedule
    assert other.forecaster.latest == mon.forecaster.latest

    clone = pickle.loads(pickle.dumps(mon))
    assert len(clone.sinks) == 0 and len(mon.sinks) == 1
    for b in _batches(y, 800)[12:]:
        r1, r2 = mon.flush(b), clone.flush(b)
        assert (r1.forecast is None) == (r2.forecast is None)
    assert clone.forecaster.latest == mon.forecaster.latest


def test_bad_arguments_are_rejected_with_their_name() -> None:
    with pytest.raises(
        ValueError, match=r"confidence: input should be greater than or equal to 0.5, got 0.3"
    ):
        checked(StopConfig, confidence=0.3)
    with pytest.raises(ValueError, match=r"action: input should be 'warn', 'stop' or 'raise', got 'explode'"):
        checked(StopConfig, action="explode")
    with pytest.raises(ValueError, match="target_loss: input should be greater than 0, got nan"):
        checked(StopConfig, target_loss=float("nan"))
    with pytest.raises(ValueError, match=r"target_loss: input should be greater than 0, got -1\.0"):
        checked(StopConfig, target_loss=-1.0)  # an argparse default of 0 or -1 meaning "no target" is not one
    with pytest.raises(ValueError, match=r"target_loss: input should be a valid number, got '3.1' \(str\)"):
        checked(StopConfig, target_loss="3.1")
    with pytest.raises(ValueError, match="min_step: extra inputs are not permitted"):
        checked(StopConfig, min_step=3)
    assert checked(StopConfig, target_loss=np.float32(2.5), min_steps=np.int64(7)).min_steps == 7
    with pytest.raises(ValueError, match="either"):
        RunMonitor(LRS, forecaster=OnlineForecaster(LRS))


class _Listener:
    """Hears every new forecast; asks to stop at the first one fitted on at least ``stop_from`` steps."""

    def __init__(self, stop_from: int | None = None) -> None:
        self.heard: list[tuple[int, int]] = []
        self.stop_from = stop_from

    def on_forecast(self, step: int, forecast: Any) -> list[Event]:
        self.heard.append((step, forecast.fitted_at_step))
        if self.stop_from is not None and step >= self.stop_from:
            return [Event(kind="early_stop", step=step, severity="critical", message="cannot beat the sweep")]
        return []


def test_listeners_hear_each_new_forecast_in_the_flush_that_made_it() -> None:
    """No one-flush lag: a listener is called right after the refit, with that refit's forecast."""
    y = _curve()
    listener = _Listener()
    assert isinstance(listener, Listener)
    mon = RunMonitor(LRS, config=ForecasterConfig(refit_every=100), listeners=[listener])
    made = []
    for b in _batches(y, 600):
        result = mon.flush(b)
        if result.forecast is not None:
            made.append((int(b.steps[-1]), result.forecast.fitted_at_step))
    assert made and listener.heard == made
    assert all(step == fitted for step, fitted in listener.heard)


@pytest.mark.parametrize("action", ["stop", "warn", "raise"])
def test_a_listener_stop_is_a_critical_event_under_the_one_policy(action: str) -> None:
    y = _curve()
    sink = _Recorder()
    mon = RunMonitor(
        LRS,
        config=ForecasterConfig(refit_every=50),
        listeners=[_Listener(stop_from=300)],
        sinks=[sink],
        stop=StopConfig(action=action),  # type: ignore[arg-type]
    )
    outcome = None
    try:
        for b in _batches(y, 600):
            if mon.flush(b).stop:
                outcome = ("stop", int(b.steps[-1]))
                break
    except TrainingHealthError as err:
        outcome = ("raise", err.event.step)
    expected = {"stop": ("stop", 300), "raise": ("raise", 300), "warn": None}[action]
    assert outcome == expected
    assert any(e.kind == "early_stop" and e.step == 300 for e in sink.events)


def test_the_fit_view_is_read_only() -> None:
    y = _curve()
    mon = RunMonitor(LRS)
    for b in _batches(y, 400):
        mon.flush(b)
    view = mon.view
    assert view.latest is mon.forecaster.latest and view.last_step == 400 and view.total_steps == TOTAL
    with pytest.raises(ValueError, match="read-only"):
        view.schedule[0] = 1.0  # type: ignore[index]
    np.testing.assert_array_equal(view.lr_at([1, 2]), LRS[:2])
    assert view.lr_at([TOTAL + 1]) is None
    np.testing.assert_allclose(view.predict([TOTAL]), mon.forecaster.predict([TOTAL]))
    assert not hasattr(view, "set_schedule") and not hasattr(view, "observe")


def test_guard_reports_once_with_its_label_and_a_broken_hook_is_switched_off() -> None:
    calls = []

    def hook(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("user bug")

    y = _curve()
    guard = Guard("LossForecast (rank 1 of 2)")
    mon = RunMonitor(
        LRS,
        detectors=[_SpikeAt(60), _SpikeAt(160)],
        on_event=hook,
        guard=guard,
        stop=StopConfig(action="warn"),
    )
    with pytest.warns(
        RuntimeWarning, match=r"LossForecast \(rank 1 of 2\): on_event hook failed \(RuntimeError: user bug\)"
    ):
        for b in _batches(y, 200):
            mon.flush(b)
    assert len(calls) == 1 and list(mon.disabled) == ["on_event hook"]


def test_real_detectors_and_advisor_plug_into_the_hooks() -> None:
    from scaleforecast.advice import ScheduleAdvisor

    y = _curve()
    y[733:] = np.nan  # the weights went non-finite at step 734: a single NaN would only be a warning
    sink = _Recorder()
    mon = RunMonitor(
        LRS,
        detectors=[HealthMonitor()],
        advisor=ScheduleAdvisor(),
        sinks=[sink],
        stop=StopConfig(action="stop"),
    )
    stop_at = None
    for b in _batches(y, TOTAL):
        result = mon.flush(b)
        if result.stop:
            stop_at = int(b.steps[-1])
            break
    assert stop_at == 750
    assert any(e.kind == "nonfinite" and e.step == 734 and e.severity == "warning" for e in sink.events)
    assert any(e.kind == "nonfinite" and e.step == 741 and e.severity == "critical" for e in sink.events)
    assert "advice/planned_final" in sink.scalars
    assert mon.disabled == {}
    # the stop is drawn, with the last fit's forecast (the NaNs made it stale) and the NaNs marked on it
    assert sink.stop_steps == [750]
    lost = sink.last_figure
    assert lost.step == 750 and lost.title.startswith("step 750/2000: its last fit's final loss")
    assert lost.stop_label == "stopped as lost"
    assert (
        "fitted to the losses up to step 733" in lost.title
        and len(lost.mean) > 0
        and np.all(np.isfinite(lost.mean))
    )
    assert (734, "nonfinite", "warning") in lost.events and (741, "nonfinite", "critical") in lost.events
    assert lost.notes == ["fit status: stale (the latest losses are NaN/Inf)"]


def test_settle_takes_in_the_last_background_refit_unless_the_run_stopped() -> None:
    y = _curve()
    sink = _Recorder()
    mon = RunMonitor(LRS, config=ForecasterConfig(background=True, refit_every=50), sinks=[sink])
    results = [mon.flush(b) for b in _batches(y, 1000)]
    assert results[0].forecast is None  # the first refit takes effect at the next flush
    assert mon.forecaster.refit_pending  # the one the last flush started
    refits = mon.refits
    settled = mon.settle(1000)
    assert settled is not None and settled.fitted_at_step == 1000 and mon.forecaster.latest == settled
    assert mon.refits == refits + 1 and sink.forecasts[-1] == 1000
    assert mon.settle(1000) is None  # nothing left in flight

    stopped = RunMonitor(
        LRS,
        config=ForecasterConfig(background=True, refit_every=100),
        stop=StopConfig(target_loss=1e-3, min_fraction=0.2),
    )
    for b in _batches(y, 1000):
        if stopped.flush(b).stop:
            break
    assert stopped.stopped_at is not None
    last = stopped.forecaster.latest
    assert stopped.settle(stopped.stopped_at) is None and stopped.forecaster.latest == last


def test_listeners_get_the_stop_features_the_monitor_rule_reads() -> None:
    """A listener's stop rule (a sweep stopper, a pruner) sees only the forecast: it carries the run's stop
    features, so that the listener's rule and the monitor's own measure the same error."""
    from scaleforecast.decision import decide_stop

    class Keeper:
        def on_forecast(self, step: int, forecast: Any) -> list[Event]:
            heard.append(forecast)
            return []

    y = _curve()
    listener = Keeper()
    heard: list[Any] = []
    target = float(y[-50:].mean()) - 0.05
    mon = RunMonitor(LRS, config=ForecasterConfig(refit_every=100), listeners=[listener])
    for b in _batches(y, 1200):
        mon.flush(b)
        if heard and heard[-1].fitted_at_step == int(b.steps[-1]):
            f = heard[-1]
            assert f.stop_features is not None and f.stop_features == mon.track.features
            assert f.stop_features.fraction == f.fitted_at_step / TOTAL
            step = int(b.steps[-1])
            own = decide_stop(
                mon.forecaster.latest, target, step=step, total_steps=TOTAL, features=mon.track.features
            )
            theirs = decide_stop(f, target, step=step, total_steps=TOTAL)
            assert (theirs.stop, theirs.probability, theirs.scale) == (own.stop, own.probability, own.scale)
    assert heard and heard[-1].stop_features is not None and heard[-1].stop_features.phase == "decay"
    assert heard[-1].stop_features.backtest_worst is not None  # the run's own backtest travels too


def test_the_end_of_a_run_shows_one_forecast_at_its_last_step() -> None:
    """Background refits take effect at the next flush; at the last step there is none, so a refit due there
    is fitted at once: one forecast written at the last step, and nothing left for the end of training."""
    y = _curve()
    sink = _Recorder()
    config = ForecasterConfig(background=True, refit_every=200)
    mon = RunMonitor(LRS, config=config, sinks=[sink], verbose=False)
    for batch in _batches(y, TOTAL, every=100):
        mon.flush(batch)
    assert sink.forecasts.count(TOTAL) == 1 and sink.forecasts[-1] == TOTAL
    assert mon.settle(TOTAL) is None
    assert mon.forecaster.latest is not None and mon.forecaster.latest.fitted_at_step == TOTAL


def test_a_loss_that_explodes_is_said_for_what_it_is() -> None:
    """A 300-step fine-tune whose loss goes a thousandfold up at step 100 and stays there: the divergence warning
    gives the rise of the loss itself, not of the clipped means that detect it (which said +3.5 %), a spike
    never shows a negative expected loss, and the forecast says the run has left its law."""
    total = 300
    lrs = as_lrs(f"cosine:peak=1e-3,warmup=10,total={total}")
    steps = np.arange(1, total + 1)
    y = LAWS["tissue"].predict(PARAMS, lrs, steps) * (
        1 + 0.01 * np.random.default_rng(1).standard_normal(total)
    )
    y[100:] *= 1000.0 * np.linspace(1.0, 5.0, total - 100)
    mon = RunMonitor(lrs, detectors=[HealthMonitor()])
    for s in range(0, total, 10):
        mon.flush(FlushBatch(steps=steps[s : s + 10], loss=y[s : s + 10]), raise_now=False)
    (warning,) = [e for e in mon.events if e.kind == "divergence" and e.severity == "warning"]
    assert warning.data["rise"] > 100 * PARAMS.L0 and "level up" in warning.message, warning.message
    spikes = [e for e in mon.events if e.kind == "spike"]
    assert spikes and all(e.data["expected"] > 0 for e in spikes), [e.message for e in spikes]
    assert mon.forecaster.latest is not None and mon.forecaster.latest.status.value == "law_violated"


def test_a_figure_says_the_step_its_fit_saw_when_that_is_earlier() -> None:
    """Refits on a worker take effect at the next flush: the figure drawn then showed "step 100" over a fit of
    the losses up to step 50 (its forecast looked detached from the latest loss); its title says so."""
    y = _curve()
    mon = RunMonitor(LRS, config=ForecasterConfig(background=True, refit_every=100))
    for batch in _batches(y, 1000):
        mon.flush(batch)
    mon.forecaster.wait()
    fitted = mon.forecaster.latest.fitted_at_step
    snap = mon.snapshot(1000)
    assert snap is not None
    assert (f", fitted to step {fitted}" in snap.title) == (fitted < 1000), (fitted, snap.title)
    mon.flush(_batches(y, 1050)[-1])
    later = mon.snapshot(1050)
    assert later is not None and f"fitted to step {mon.forecaster.latest.fitted_at_step}" in later.title


def test_the_figure_marks_the_health_events_at_their_steps() -> None:
    """A spike is mostly above the figure's frame (the frame follows the curve): nothing on the figure said one
    happened. Health events are marked along the top edge at their steps, named in the legend; what the
    plugin itself decided (an early stop, advice) is not a health event."""
    pytest.importorskip("matplotlib")
    from scaleforecast.tensorboard_sink import draw_snapshot

    y = _curve(noise=0.005)
    y[420] *= 3.0  # the loss of update 421
    mon = RunMonitor(LRS, detectors=[HealthMonitor()])
    for batch in _batches(y, 600):
        mon.flush(batch)
    mon._emit(Event(kind="schedule_advice", step=550, message="a shorter cooldown"))
    snap = mon.snapshot(600)
    assert snap is not None
    assert snap.events == [(421, "spike", "warning")], [e.text() for e in mon.events]
    ax = draw_snapshot(snap).axes[0]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert "warning events: spike x1" in legend
    (marks,) = [line for line in ax.get_lines() if line.get_label() == "warning events: spike x1"]
    assert list(marks.get_xdata()) == [421]
    # an event after the step drawn (a figure of an earlier step, redrawn) is not on it
    earlier = mon.snapshot(400)
    assert earlier is not None and earlier.events == []


def test_a_forecast_too_vague_to_tell_the_final_loss_is_not_drawn_as_one() -> None:
    """The console says "too early to forecast" of a forecast whose band at the stop's confidence reaches below
    zero, while the sinks drew its mean (TensorBoard's card showed 0.03 for a run heading to 0.14). The sinks
    get the fit without its points, with a note that says why; a forecast that can tell is written whole."""
    from scaleforecast.decision import too_vague

    class Keeper(_Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.kept: list[Any] = []

        def write_forecast(self, step: int, forecast: Any, extras: dict[str, float]) -> None:
            super().write_forecast(step, forecast, extras)
            self.kept.append(forecast)

    sink = Keeper()
    mon = RunMonitor(LRS, config=ForecasterConfig(refit_every=50), sinks=[sink])
    made = []
    for batch in _batches(_curve(noise=0.6), TOTAL):
        made.append(mon.flush(batch).forecast)
    made = [f for f in made if f is not None]
    vague = [f for f in made if f.final is not None and too_vague(f.final.loss, f.final.std)]
    assert vague and len(vague) < len(made)
    assert len(sink.kept) == len(made)
    for shown, f in zip(sink.kept, made, strict=True):
        if f in vague:
            assert shown.final is None and shown.params == f.params
            assert any(w.startswith("[too_early] too early to forecast") for w in shown.warnings)
        else:
            assert shown == f
