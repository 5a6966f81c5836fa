"""The stop rule's error model: the run's own backtest, the scale table, the measured tails, the shipped file."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from scaleforecast.calibration import COLUMNS, ErrorModel, ErrorTail, load_error_model
from scaleforecast.decision import DEFAULT_CONFIDENCE
from scaleforecast.evidence import PHASES, ForecastTrack, StopFeatures, features_from_forecast
from scaleforecast.forecaster import OnlineForecaster
from scaleforecast.results import FitStatus, Forecast, ForecastPoint

TOTAL = 4000
LRS = np.concatenate([np.linspace(1e-4, 1e-3, 100), np.full(3100, 1e-3), np.linspace(1e-3, 0.0, 800)])


def _law_curve(steps: np.ndarray, seed: int = 0) -> np.ndarray:
    """A loss that follows a power law in the LR area, with 0.3 % noise."""
    s1 = np.cumsum(LRS)[steps - 1]
    rng = np.random.default_rng(seed)
    return (2.0 + 1.5 * s1**-0.4) * (1.0 + 0.003 * rng.standard_normal(steps.size))


def _drive(curve: np.ndarray, upto: int, every: int = 100) -> tuple[OnlineForecaster, ForecastTrack, list]:
    fc = OnlineForecaster(LRS)
    track = ForecastTrack()
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for end in range(every, upto + 1, every):
            steps = np.arange(end - every + 1, end + 1)
            fc.observe_many(steps, curve[steps - 1])
            fc.refit()
            seen.append(track.update(fc))
    return fc, track, seen


def test_track_backtests_the_run_against_itself() -> None:
    steps = np.arange(1, TOTAL + 1)
    good = _law_curve(steps)
    _, track, seen = _drive(good, 1600)
    first = next(x for x in seen if x is not None)
    assert first.backtest is None  # nothing to compare yet
    f = track.features
    assert f is not None and f.law_checked
    assert f is not None and f.backtest is not None and abs(f.backtest) < 0.01
    assert f.fraction == pytest.approx(1600 / TOTAL) and f.phase == "stable"
    assert f.decay_seen == pytest.approx(0.0) and f.decay_ahead == pytest.approx(1.0)
    # a run that leaves the law (its loss stalls at step 800): the forecasts made before fail their backtest
    bad = good.copy()
    bad[800:] = bad[799] + 0.002 * np.arange(TOTAL - 800) / 100
    _, track_bad, _ = _drive(bad, 1600)
    fb = track_bad.features
    assert fb is not None and fb.backtest is not None and fb.backtest < -0.02  # forecast was too low
    # in the cooldown the phase says so: 62 % of the drop is behind at step 3700
    _, track_late, _ = _drive(good, 3700)
    assert track_late.features is not None and track_late.features.phase == "decay"


def test_track_state_round_trip_and_resume() -> None:
    steps = np.arange(1, TOTAL + 1)
    _fc, track, _ = _drive(_law_curve(steps), 1200)
    state = json.loads(json.dumps(track.state_dict()))
    again = ForecastTrack()
    again.load_state_dict(state)
    assert again.state_dict() == track.state_dict() and again.features == track.features
    # resumed from step 600: forecasts noted for steps beyond 2 * 600 belong to a dropped future
    fc2, _, _ = _drive(_law_curve(steps), 600)
    again.update(fc2)
    assert all(p <= 1200 for p, _ in again.state_dict()["pending"])
    assert all(p <= 600 for p, _ in again.state_dict()["checks"])
    with pytest.raises(ValueError):
        again.load_state_dict({"version": 99})


def test_track_ignores_forecasts_without_numbers() -> None:
    fc = OnlineForecaster(LRS)
    track = ForecastTrack()
    assert track.update(fc) is None  # no forecast yet
    fc.observe_many([1, 2, 3], [5.0, 4.9, 4.8])
    fc.refit()  # too few points: insufficient_data
    assert fc.latest is not None and not fc.latest.ok
    assert track.update(fc) is None and track.state_dict()["pending"] == []
    # a first forecast from a handful of points: the law check cannot judge it yet, and the features say so
    curve = _law_curve(np.arange(1, TOTAL + 1))
    fc.observe_many(np.arange(101, 111), curve[100:110])
    fc.refit()
    first = track.update(fc)
    assert fc.latest is not None and fc.latest.ok and first is not None and not first.law_checked
    fc.observe_many(np.arange(111, 400), curve[110:399])
    fc.refit()
    later = track.update(fc)
    assert later is not None and later.law_checked


def _model(**kw: object) -> ErrorModel:
    edges = [0.0, 0.5, 1.0]
    base = dict(
        fraction_edges=edges,
        table={**{p: [0.02, 0.01] for p in PHASES}, "unproven": [0.08, 0.05]},
        fallback=[0.1, 0.06],
        backtest_weight=1.0,
        floor=1e-4,
        upper=ErrorTail(values=[-1.0, 0.5, 1.0, 2.0, 3.0], weights=[1.0, 1.0, 1.0, 1.0, 1.0]),
        lower=ErrorTail(values=[0.2, 0.4, 1.0, 1.5], weights=[1.0, 1.0, 1.0, 1.0]),
    )
    base.update(kw)
    return ErrorModel(**base)  # type: ignore[arg-type]


def test_scale_by_column_fallback_and_backtest() -> None:
    m = _model()
    tested = StopFeatures(fraction=0.25, decay_seen=0.0, decay_ahead=1.0, backtest=0.0)
    assert tested.phase == "stable" and m.scale(tested) == pytest.approx(0.02)
    # halfway between the bin centres (0.25, 0.75) the table is interpolated
    assert m.scale(tested.model_copy(update={"fraction": 0.5})) == pytest.approx(0.015)
    # a run that has not tested itself yet: the unproven column
    untested = tested.model_copy(update={"backtest": None})
    assert m.scale(untested) == pytest.approx(0.08)
    # only a forecast known: the wider fallback column, and no backtest term
    bare = StopFeatures(fraction=0.25, backtest=0.5)
    assert bare.phase is None and m.scale(bare) == pytest.approx(0.1)
    # a failed backtest compounds over the doublings still ahead: |b| * log2(1 / fraction)
    bt = tested.model_copy(update={"backtest": -0.01})
    assert m.scale(bt) == pytest.approx(math.hypot(0.02, 0.01 * 2.0))
    # the model reads the worst backtest of the last doubling, not the latest
    worst = tested.model_copy(update={"backtest_worst": -0.01})
    assert m.scale(worst) == pytest.approx(math.hypot(0.02, 0.01 * 2.0))
    # a noisy run of a model without noisy columns reads the long runs' column
    assert _model(noise_split=0.01).scale(tested.model_copy(update={"noise": 0.05})) == pytest.approx(0.02)
    flat = StopFeatures(fraction=0.9, decay_seen=0.95, decay_ahead=0.01)
    decay = StopFeatures(fraction=0.9, decay_seen=0.5, decay_ahead=0.5, backtest=0.001)
    early = decay.model_copy(update={"decay_seen": 0.2, "decay_ahead": 0.7})
    assert (flat.phase, decay.phase, early.phase) == ("flat", "decay", "early_decay")
    # a model learned before early_decay was told apart reads the decay column for it
    old = _model(
        table={"stable": [0.02, 0.01], "decay": [0.03, 0.04], "flat": [0.01, 0.01], "unproven": [0.08, 0.05]}
    )
    assert old.scale(early) == pytest.approx(old.scale(decay))
    many = m.scales(
        np.array([0.25, 0.25, 0.25, 0.9, 0.25]),
        np.array([0, -1, 0, PHASES.index("decay"), 0]),
        np.array([0.0, 0.5, -0.01, 0.001, np.nan]),
    )
    expected = [m.scale(tested), m.scale(bare), m.scale(bt), m.scale(decay), m.scale(untested)]
    assert many.tolist() == pytest.approx(expected)


def test_confidence_is_the_measured_share_of_runs() -> None:
    m = _model()  # five groups: Z = -1, 0.5, 1, 2, 3
    assert m.confidence(0.0) == 0.0 and m.confidence(-1.0) == 0.0
    assert m.confidence(0.75) == pytest.approx(2 / 6)  # two of five below, and a new run is the sixth
    assert m.confidence(10.0) == pytest.approx(5 / 6) == m.max_confidence
    zs = np.linspace(0.01, 4, 50)
    assert np.all(np.diff([m.confidence(z) for z in zs]) >= 0)
    for c in (0.3, 0.5, 0.6, 0.8):
        k = m.threshold(c)
        assert m.confidence(k + 1e-9) >= c and m.confidence(k - 1e-9) < c
    # five groups cannot certify 0.9: no threshold
    assert m.threshold(0.9) == math.inf
    assert m.optimistic_margin(0.5) == pytest.approx(1.0)  # lower tail: 0.2, 0.4, 1.0, 1.5 -> 3 / 5 >= 0.5
    empty = _model(upper=ErrorTail(values=[], weights=[]))
    assert empty.confidence(5.0) == 0.0 and empty.threshold(0.6) == math.inf


def test_features_from_forecast() -> None:
    point = ForecastPoint(step=1000, loss=3.0, lower=2.9, upper=3.1, std=0.06)
    f = Forecast(
        law="tissue", level=0.8, fitted_at_step=250, final_step=1000, points=[point], params=None,
        n_points=10, status=FitStatus.OK,
    )  # fmt: skip
    x = features_from_forecast(f)
    assert x is not None and x.fraction == 0.25 and x.rel_std == pytest.approx(0.02) and x.phase is None
    assert features_from_forecast(f.model_copy(update={"points": []})) is None


def test_shipped_model() -> None:
    m = load_error_model()
    assert m.provenance["learned_by"] == "python benchmarks/stop_calibration.py"
    assert m.provenance["runs"] >= 100 and m.provenance["groups"] >= 50
    assert len(m.upper.values) == m.provenance["runs"] and m.upper.values == sorted(m.upper.values)
    assert set(COLUMNS) <= set(m.table) <= set(COLUMNS) | {f"noisy:{c}" for c in COLUMNS}
    assert all(v > 0 for values in m.table.values() for v in values) and all(v > 0 for v in m.fallback)
    ks = [m.threshold(c) for c in (0.5, 0.9, 0.95)]
    assert all(math.isfinite(k) for k in ks) and ks == sorted(ks)
    # 0.99 needs 99 groups or more; below that the rule never claims it
    assert m.threshold(0.99) >= ks[-1] and (m.upper.groups >= 99) == math.isfinite(m.threshold(0.99))
    # the drop ahead of a stable phase is unseen however late it is: its scale never narrows
    for name in ("stable", "noisy:stable"):
        assert m.table[name] == sorted(m.table[name])
    # the default confidence is one the calibration runs certify, with a finite margin
    assert m.max_confidence > DEFAULT_CONFIDENCE and math.isfinite(m.threshold(DEFAULT_CONFIDENCE))
    # the fallbacks are never narrower than a column of their regime
    for name, values in m.table.items():
        wide = m.fallback_noisy if name.startswith("noisy:") else m.fallback
        assert wide is not None and all(fb >= v for fb, v in zip(wide, values, strict=True))
    with pytest.raises(FileNotFoundError):
        load_error_model("no-such-model")


def test_monitor_keeps_the_track_in_its_state() -> None:
    from scaleforecast.monitor import FlushBatch, RunMonitor

    steps = np.arange(1, TOTAL + 1)
    loss = _law_curve(steps)
    mon = RunMonitor(LRS, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lo in range(0, 1600, 50):
            mon.flush(FlushBatch(steps=steps[lo : lo + 50], loss=loss[lo : lo + 50]))
    f = mon.track.features
    assert f is not None and f.backtest is not None and f.fraction == pytest.approx(1600 / TOTAL, abs=0.03)
    again = RunMonitor(LRS, verbose=False)
    again.load_state_dict(json.loads(json.dumps(mon.state_dict())))
    assert again.track.features == f and again.track.state_dict() == mon.track.state_dict()


def test_features_travel_with_the_forecast() -> None:
    """The features the run monitor attached are the ones read; a bare forecast gets the fallback's."""
    point = ForecastPoint(step=1000, loss=3.0, lower=2.9, upper=3.1, std=0.06)
    bare = Forecast(
        law="tissue", level=0.8, fitted_at_step=900, final_step=1000, points=[point], params=None,
        n_points=10, status=FitStatus.OK,
    )  # fmt: skip
    own = StopFeatures(fraction=0.9, decay_seen=0.9, decay_ahead=0.1, backtest_worst=0.004, total_steps=1000)
    carried = bare.model_copy(update={"stop_features": own})
    assert features_from_forecast(carried) == own
    assert Forecast.model_validate_json(carried.model_dump_json()).stop_features == own
    m = load_error_model()
    assert m.scale(own) < m.scale(features_from_forecast(bare))  # type: ignore[arg-type]
