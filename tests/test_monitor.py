"""RunMonitor: the framework-free flush path shared by the callbacks and ``watch``."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pytest

from scaleforecast.events import Event, TrainingHealthError
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import LAWS
from scaleforecast.monitor import FlushBatch, HealthCheck, RunMonitor
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

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class _SpikeAt:
    """A health check that reports a critical spike at one step."""

    def __init__(self, step: int, severity: str = "critical") -> None:
        self.step, self.severity = step, severity
        self.seen: list[int] = []

    def check(self, batch: FlushBatch, forecaster: OnlineForecaster) -> list[Event]:
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
        target_loss=float(y[-50:].mean()) - 0.3,
        min_fraction=0.25,
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
    # a figure for the first usable forecast, then every second one
    assert sink.usable and sink.figures == sink.usable[::2]
    assert sink.scalars["forecast/p_miss_target"][-1] >= 0.95
    assert len(sink.scalars["forecast/observed"]) == stopped // 50


def test_reachable_target_never_stops_and_forecast_is_close() -> None:
    y = _curve(seed=1)
    mon = RunMonitor(LRS, target_loss=float(y[-50:].mean()) + 0.5, min_fraction=0.5)
    for batch in _batches(y, TOTAL):
        assert not mon.flush(batch).stop
    final = mon.forecaster.latest.final
    assert final is not None
    # a sanity bound only: the fitter's accuracy is tested with the fitter
    assert abs(final.loss - LAWS["tissue"].predict(PARAMS, LRS, [TOTAL])[0]) < 0.15


def test_warn_action_reports_once_and_never_stops() -> None:
    y = _curve()
    sink = _Recorder()
    mon = RunMonitor(LRS, target_loss=0.0, min_fraction=0.2, action="warn", sinks=[sink])
    for batch in _batches(y, TOTAL):
        assert not mon.flush(batch).stop
    assert [e.kind for e in sink.events] == ["early_stop"]
    assert mon.stopped_at is None


def test_health_hook_routes_events_and_actions() -> None:
    y = _curve()
    sink, seen = _Recorder(), []
    check = _SpikeAt(120)
    assert isinstance(check, HealthCheck)
    mon = RunMonitor(LRS, health=[check], sinks=[sink], on_event=seen.append, action="stop")
    results = [mon.flush(b) for b in _batches(y, 200)]
    assert [r.stop for r in results] == [False, False, True, False]
    assert results[2].reason and "spike" in results[2].reason
    assert [e.kind for e in sink.events] == ["spike"] and seen == sink.events
    assert check.seen == list(range(1, 201))

    raising = RunMonitor(LRS, health=[_SpikeAt(60)], action="raise")
    raising.flush(_batches(y, 50)[0])
    with pytest.raises(TrainingHealthError, match="spike"):
        raising.flush(_batches(y, 100)[1])

    warn_only = RunMonitor(LRS, health=[_SpikeAt(60, severity="warning")], action="stop")
    assert not any(warn_only.flush(b).stop for b in _batches(y, 200))


def test_failing_parts_are_switched_off_and_the_rest_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def check(self, batch: FlushBatch, forecaster: OnlineForecaster) -> list[Event]:
            raise ZeroDivisionError("bad detector")

    y = _curve()
    sink = _Recorder()
    mon = RunMonitor(LRS, health=[Broken()], sinks=[sink])
    with pytest.warns(RuntimeWarning, match="bad detector"):
        mon.flush(_batches(y, 50)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for b in _batches(y, 400)[1:]:
            mon.flush(b)
    assert mon.forecaster.latest is not None and sink.forecasts

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("fitter exploded")

    monkeypatch.setattr("scaleforecast.forecaster.fit", explode)
    broken = RunMonitor(LRS, target_loss=0.0, min_fraction=0.0)
    with pytest.warns(RuntimeWarning, match="fitter exploded"):
        result = broken.flush(_batches(y, 50)[0])
    assert not result.stop and "forecaster" in broken.disabled
    assert not any(broken.flush(b).stop for b in _batches(y, 400)[1:])


def test_state_dict_round_trip_and_pickle() -> None:
    y = _curve()
    check = _SpikeAt(10_000)
    mon = RunMonitor(LRS, target_loss=1.0, health=[check], sinks=[_Recorder()])
    for b in _batches(y, 600):
        mon.flush(b)
    state = mon.state_dict()
    import json

    json.dumps(state)  # JSON-safe

    other = RunMonitor(target_loss=1.0, health=[_SpikeAt(10_000)])
    other.load_state_dict(state)
    assert other.forecaster.last_step == 600 and other.refits == mon.refits
    assert other.health[0].loaded == {"seen": 600}  # type: ignore[attr-defined]
    np.testing.assert_allclose(other.forecaster.schedule, LRS, rtol=1e-9)  # the state's compact schedule
    assert other.forecaster.latest == mon.forecaster.latest

    clone = pickle.loads(pickle.dumps(mon))
    assert len(clone.sinks) == 0 and len(mon.sinks) == 1
    for b in _batches(y, 800)[12:]:
        r1, r2 = mon.flush(b), clone.flush(b)
        assert (r1.forecast is None) == (r2.forecast is None)
    assert clone.forecaster.latest == mon.forecaster.latest


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="confidence"):
        RunMonitor(LRS, confidence=0.3)
    with pytest.raises(ValueError, match="action"):
        RunMonitor(LRS, action="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_loss"):
        RunMonitor(LRS, target_loss=float("nan"))
    with pytest.raises(ValueError, match="either"):
        RunMonitor(LRS, forecaster=OnlineForecaster(LRS))


def test_real_detectors_and_advisor_plug_into_the_hooks() -> None:
    from scaleforecast.advice import ScheduleAdvisor
    from scaleforecast.detectors import HealthMonitor

    y = _curve()
    y[733] = np.nan
    sink = _Recorder()
    mon = RunMonitor(LRS, health=[HealthMonitor()], advisor=ScheduleAdvisor(), sinks=[sink], action="stop")
    stop_at = None
    for b in _batches(y, TOTAL):
        result = mon.flush(b)
        if result.stop:
            stop_at = int(b.steps[-1])
            break
    assert stop_at == 750
    assert any(e.kind == "nonfinite" and e.step == 734 for e in sink.events)
    assert "advice/planned_final" in sink.scalars
    assert mon.disabled == {}
