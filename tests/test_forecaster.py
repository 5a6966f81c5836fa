import json
import math
import warnings

import numpy as np
import pytest

from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import LAWS
from scaleforecast.results import FitStatus, LawParams
from scaleforecast.schedules import parse_schedule

TRUE = LawParams(L0=2.0, A=1.5, alpha=0.5, C=0.3, lam=0.999)


def _curve(spec: str, noise: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lrs = parse_schedule(spec).lrs()
    steps = np.arange(1, len(lrs) + 1)
    clean = LAWS["tissue"].predict(TRUE, lrs, steps)
    rng = np.random.default_rng(seed)
    return lrs, steps, clean * (1.0 + noise * rng.standard_normal(len(steps)))


def _plain() -> ForecasterConfig:
    # No prior, so the fit is the run's own: what these tests check is the online machinery.
    cfg = ForecasterConfig()
    return cfg.model_copy(update={"fit": cfg.fit.model_copy(update={"prior": None})})


def test_forecasts_final_loss_of_synthetic_cosine_run():
    lrs, steps, y = _curve("cosine:peak=1e-3,warmup=100,total=4000,final=1e-5")
    fc = OnlineForecaster(lrs)
    forecasts = [f for i in range(0, 3000, 50) if (f := fc.update(steps[i : i + 50], y[i : i + 50]))]
    assert forecasts, "the refit policy never fired"
    final = fc.latest.final
    true_final = LAWS["tissue"].predict(TRUE, lrs, np.array([len(lrs)]))[0]
    assert final.step == 4000
    assert abs(final.loss - true_final) / true_final < 0.01
    assert final.lower <= final.loss <= final.upper
    assert fc.latest.status in (FitStatus.OK, FitStatus.ANNEALING_UNIDENTIFIED)


def test_refit_policy_is_bounded():
    lrs, steps, y = _curve("constant:peak=1e-3,warmup=10,total=20000")
    fc = OnlineForecaster(lrs, ForecasterConfig(refit_every=500))
    n_fits = sum(fc.update(steps[i : i + 10], y[i : i + 10]) is not None for i in range(0, 20000, 10))
    # Every 500 steps, plus the early geometric refits while the history is small.
    assert 40 <= n_fits <= 80


def test_too_few_points_is_a_status_not_an_exception():
    fc = OnlineForecaster("cosine:peak=1e-3,total=1000")
    fc.observe(1, 5.0)
    fc.observe(2, 4.9)
    forecast = fc.refit()
    assert forecast.status is FitStatus.INSUFFICIENT_DATA
    assert forecast.points == [] and forecast.final is None


def test_nonfinite_losses_are_counted_not_fitted():
    lrs, steps, y = _curve("cosine:peak=1e-3,warmup=50,total=2000")
    y = y.copy()
    y[[500, 700, 900]] = [np.nan, np.inf, -np.inf]
    fc = OnlineForecaster(lrs)
    fc.observe_many(steps[:1500], y[:1500])
    forecast = fc.refit()
    assert fc.n_nonfinite == 3
    assert any("non-finite" in w for w in forecast.warnings)
    assert math.isfinite(forecast.final.loss)


def test_what_if_schedule_and_arbitrary_steps():
    lrs, steps, y = _curve("constant:peak=1e-3,warmup=100,total=6000", noise=0.002)
    fc = OnlineForecaster(lrs)
    fc.observe_many(steps[:3000], y[:3000])
    fc.refit()
    # Annealing now to zero must be forecast below holding the LR constant.
    cooled = lrs.copy()
    cooled[3000:] = np.linspace(1e-3, 1e-6, 3000)
    what_if = fc.forecast(schedule=cooled)
    planned = fc.forecast()
    assert what_if.final.loss < planned.final.loss
    points = fc.forecast(steps=[1000, 2000, 6000])
    assert [p.step for p in points.points] == [1000, 2000, 6000]
    assert points.points[0].loss > points.points[1].loss
    np.testing.assert_allclose(fc.predict([1000, 2000, 6000]), [p.loss for p in points.points])


def test_stable_phase_without_prior_does_not_claim_to_know_the_annealing_term():
    lrs, steps, y = _curve("wsd:peak=1e-3,warmup=100,total=6000,cooldown=0.2", noise=0.002)
    fc = OnlineForecaster(lrs, _plain())
    fc.observe_many(steps[:3000], y[:3000])
    forecast = fc.refit()
    assert forecast.status is FitStatus.ANNEALING_UNIDENTIFIED
    assert any("annealing" in w for w in forecast.warnings)


def test_window_means_are_supported():
    lrs, _, y = _curve("cosine:peak=1e-3,warmup=100,total=4000")
    fc = OnlineForecaster(lrs, _plain())
    ends = np.arange(10, 3001, 10)
    means = y[:3000].reshape(-1, 10).mean(axis=1)
    fc.observe_many(ends, means, window=10)
    final = fc.refit().final
    true_final = LAWS["tissue"].predict(TRUE, lrs, np.array([4000]))[0]
    assert abs(final.loss - true_final) / true_final < 0.01


def test_state_dict_is_json_safe_and_round_trips():
    lrs, steps, y = _curve("wsd:peak=1e-3,warmup=100,total=3000,cooldown=0.2")
    fc = OnlineForecaster(lrs)
    fc.observe_many(steps[:2000], y[:2000])
    before = fc.refit()
    state = json.loads(json.dumps(fc.state_dict()))
    other = OnlineForecaster()
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.schedule, lrs)
    assert other.last_step == 2000
    assert other.latest == before
    assert other.forecast().final.loss == pytest.approx(before.final.loss)
    other.observe_many(steps[2000:2500], y[2000:2500])
    assert other.refit().n_points > before.n_points


def test_resume_from_older_checkpoint_truncates_history():
    lrs, steps, y = _curve("cosine:peak=1e-3,warmup=100,total=3000")
    fc = OnlineForecaster(lrs)
    fc.observe_many(steps[:2000], y[:2000])
    with pytest.warns(RuntimeWarning, match="went back"):
        fc.observe_many(steps[1500:1600], y[1500:1600])
    assert fc.last_step == 1600
    assert fc.n_observations <= 1600


def test_schedule_change_forces_refit_and_is_validated():
    lrs, steps, y = _curve("constant:peak=1e-3,warmup=10,total=2000")
    fc = OnlineForecaster(lrs, ForecasterConfig(refit_every=10_000))
    fc.observe_many(steps[:1000], y[:1000])
    fc.refit()
    assert not fc.should_refit()
    fc.set_schedule("cosine:peak=1e-3,warmup=10,total=2000")
    assert fc.should_refit()
    with pytest.raises(ValueError, match="already observed"):
        fc.set_schedule("cosine:peak=1e-3,total=500")


def test_bad_input_gets_clear_errors():
    fc = OnlineForecaster("cosine:peak=1e-3,total=100")
    with pytest.raises(ValueError, match="past the end"):
        fc.observe(101, 3.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        fc.observe_many([5, 4], [1.0, 1.0])
    with pytest.raises(ValueError, match="start at 1"):
        fc.observe(0, 1.0)
    with pytest.raises(ValueError, match="no LR schedule"):
        OnlineForecaster().refit()


def test_refit_cost_does_not_grow_with_history():
    lrs = parse_schedule("cosine:peak=1e-3,warmup=1000,total=1000000").lrs()
    fc = OnlineForecaster(lrs, ForecasterConfig(max_bins=512))
    steps = np.arange(1, 1_000_001)
    y = 2.0 + 1.5 * (np.cumsum(lrs) ** -0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(0, 1_000_000, 100_000):
            fc.observe_many(steps[i : i + 100_000], y[i : i + 100_000])
    assert len(fc.observations()) <= 512
    assert fc.n_observations == 1_000_000
    assert fc.refit().final is not None
