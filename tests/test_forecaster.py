import json
import math
import pickle
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

from scaleforecast import laws
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
    # a what-if that ends before the steps already trained is refused, as set_schedule refuses it (it gave a
    # forecast at its own last step, 1000, with status ok)
    with pytest.raises(
        ValueError, match="the what-if schedule has 1000 updates, fewer than the 3000 already"
    ):
        fc.forecast(schedule=lrs[:1000])


def test_steps_are_whole_numbers():
    """Steps count optimizer updates: fractional ones were truncated without a word (1.5 and 1.7 became one
    step, and the call said they were not increasing)."""
    lrs, _, _ = _curve("constant:peak=1e-3,warmup=100,total=6000", noise=0.002)
    fc = OnlineForecaster(lrs)
    with pytest.raises(ValueError, match=r"steps are optimizer updates, whole numbers; got 1\.5"):
        fc.observe_many([1.0, 1.5, 2.7], [3.0, 2.9, 2.8])
    with pytest.raises(ValueError, match=r"whole numbers; got 5004\.9"):
        fc.observe(5004.9, 2.5)  # type: ignore[arg-type]
    fc.observe_many(np.array([1.0, 2.0, 3.0]), [3.0, 2.9, 2.8])  # whole floats are steps
    assert fc.last_step == 3


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
    # the schedule travels in compact form: exact to 1e-10 of each LR
    np.testing.assert_allclose(other.schedule, lrs, rtol=1e-10, atol=0)
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
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for i in range(0, 1_000_000, 100_000):
            fc.observe_many(steps[i : i + 100_000], y[i : i + 100_000])
    assert not said
    assert len(fc.observations()) <= 512
    assert fc.n_observations == 1_000_000
    assert fc.refit().final is not None


# ------------------------------------------------------------------------------ background refits and cadence
def _background(**kw: object) -> ForecasterConfig:
    return ForecasterConfig(background=True, **kw)


def _flushes(
    y: np.ndarray, steps: np.ndarray, upto: int, every: int = 50
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(steps[i : i + every], y[i : i + every]) for i in range(0, upto, every)]


def test_background_refit_takes_effect_one_update_later_with_the_same_forecast():
    lrs, steps, y = _curve("wsd:peak=1e-3,warmup=100,total=6000,cooldown=0.2")
    sync = OnlineForecaster(lrs, ForecasterConfig(min_refit_gap=200))
    bg = OnlineForecaster(lrs, _background(min_refit_gap=200))
    made: dict[int, object] = {}
    took_effect: dict[int, object] = {}
    flushes = _flushes(y, steps, 5000)
    for k, (s, loss) in enumerate(flushes):
        if (f := sync.update(s, loss)) is not None:
            made[k] = f
        if (g := bg.update(s, loss)) is not None:
            took_effect[k] = g
    assert len(made) >= 10
    # every refit made at update k takes effect at update k + 1, with exactly the same forecast
    assert {k + 1: f for k, f in made.items() if k + 1 < len(flushes)} == took_effect
    tail = bg.wait()  # the refit made at the last update, if any
    assert tail == made.get(len(flushes) - 1)
    assert bg.latest == sync.latest and not bg.refit_pending


def test_background_refit_is_waited_for_when_it_is_late(monkeypatch: pytest.MonkeyPatch):
    import scaleforecast.forecaster as module

    lrs, steps, y = _curve("cosine:peak=1e-3,warmup=100,total=4000")
    real_fit = module.fit
    entered, gate = threading.Event(), threading.Event()

    def slow_fit(*args: object, **kwargs: object) -> object:
        entered.set()
        assert gate.wait(60)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(module, "fit", slow_fit)
    fc = OnlineForecaster(lrs, _background())
    assert fc.update(steps[:2000], y[:2000]) is None  # submitted, running on the worker
    assert entered.wait(60) and fc.refit_pending
    job = fc._pending.job  # type: ignore[union-attr]
    assert not job.done() and fc.latest is None
    real_result = job.result

    def open_then_wait(timeout: float | None = None) -> object:
        gate.set()  # the refit is still blocked when the next update asks for it
        return real_result(timeout)

    job.result = open_then_wait  # type: ignore[method-assign]
    installed = fc.update(steps[2000:2050], y[2000:2050])
    assert installed is not None and installed.fitted_at_step == 2000 and fc.latest == installed
    monkeypatch.setattr(module, "fit", real_fit)
    reference = OnlineForecaster(lrs)
    reference.observe_many(steps[:2000], y[:2000])
    assert reference.refit().final == installed.final


def test_a_failing_background_refit_raises_on_the_training_thread(monkeypatch: pytest.MonkeyPatch):
    lrs, steps, y = _curve("cosine:peak=1e-3,warmup=100,total=4000")

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("fitter exploded")

    monkeypatch.setattr("scaleforecast.forecaster.fit", explode)
    fc = OnlineForecaster(lrs, _background())
    assert fc.update(steps[:1000], y[:1000]) is None
    with pytest.raises(RuntimeError, match="fitter exploded"):
        fc.update(steps[1000:1050], y[1000:1050])
    assert not fc.refit_pending


def test_state_saved_during_a_refit_resumes_exactly():
    lrs, steps, y = _curve("wsd:peak=1e-3,warmup=100,total=6000,cooldown=0.2")
    fc = OnlineForecaster(lrs, _background())
    for s, loss in _flushes(y, steps, 3000):
        fc.update(s, loss)
    fc.update(steps[3000:3150], y[3000:3150])
    fc._stale = True  # force a refit to be in flight at the save
    fc.update(steps[3150:3200], y[3150:3200])
    assert fc.refit_pending
    state = json.loads(json.dumps(fc.state_dict()))
    assert state["pending"] is not None
    resumed = OnlineForecaster()
    resumed.load_state_dict(state)
    assert resumed.refit_pending

    def same(a: object, b: object) -> bool:
        # the state's schedule is exact to 1e-10 of each LR, so later fits agree to about that much
        if a is None or b is None:
            return a is b
        return (a.fitted_at_step, a.status, a.n_points) == (b.fitted_at_step, b.status, b.n_points) and (
            a.final.loss == pytest.approx(b.final.loss, rel=1e-8)
        )

    assert resumed.update(steps[3200:3250], y[3200:3250]) == fc.update(steps[3200:3250], y[3200:3250])
    for s, loss in _flushes(y, steps, 5000)[65:]:
        assert same(resumed.update(s, loss), fc.update(s, loss))
    assert same(resumed.wait(), fc.wait())
    # and a pickled forecaster carries its refit in flight the same way (with either pickle protocol)
    fc._stale = True
    fc.update(steps[5000:5050], y[5000:5050])
    assert fc.refit_pending
    assert pickle.loads(pickle.dumps(fc, protocol=5)).wait() == fc._pending.job.result().forecast  # type: ignore[union-attr]
    clone = pickle.loads(pickle.dumps(fc, protocol=4))
    assert clone._pending.lrs is clone._lrs  # type: ignore[union-attr]  # still the plan it refits against
    assert laws._frozen_key(clone._lrs) is not None  # and registered again: memoised by identity
    assert clone.wait() == fc.wait()


def test_schedule_replanned_during_a_refit_forecasts_under_the_new_plan():
    lrs, steps, y = _curve("constant:peak=1e-3,warmup=100,total=6000")
    fc = OnlineForecaster(lrs, _background())
    fc.update(steps[:3000], y[:3000])
    assert fc.refit_pending
    longer = np.concatenate([lrs, np.linspace(1e-3, 1e-5, 2000)])
    fc.set_schedule(longer)
    installed = fc.update(steps[3000:3050], y[3000:3050])
    assert installed is not None and installed.final_step == 8000
    assert fc.refit_pending  # the fit itself was made under the old plan: refitted at once


def test_refit_supersedes_a_refit_in_flight():
    lrs, steps, y = _curve("cosine:peak=1e-3,warmup=100,total=4000")
    fc = OnlineForecaster(lrs, _background())
    fc.update(steps[:1000], y[:1000])
    assert fc.refit_pending
    fc.observe_many(steps[1000:2000], y[1000:2000])
    direct = fc.refit()
    assert not fc.refit_pending and direct.fitted_at_step == 2000 and fc.latest == direct
    assert fc.update(steps[2000:2010], y[2000:2010]) is None


def _count_refits(total: int, every: int = 50, **kw: object) -> int:
    lrs = parse_schedule(f"cosine:peak=1e-3,warmup={max(total // 100, 1)},total={total}").lrs()
    fc = OnlineForecaster(lrs, ForecasterConfig(**kw))
    fc._submit = lambda inline=False: setattr(fc, "_step_at_fit", fc.last_step)  # type: ignore[method-assign]
    fc._fit = object()  # type: ignore[assignment]  # a policy-only run: no fitting
    fc._history.add(np.array([1]), np.array([1]), np.array([1.0]))
    n = 0
    for s in range(every, total + 1, every):
        fc._last_step = s
        if fc.should_refit():
            fc._submit()
            n += 1
    return n


def test_a_short_run_refits_at_least_ten_times():
    """A 300-step run: its first refit falls in the warm-up (too few points to fit), and the next comes a tenth
    of the run later, not a whole minimum gap (100 steps, a third of this run) later."""
    lrs, steps, y = _curve("cosine:peak=1e-3,warmup=20,total=300")
    fc = OnlineForecaster(lrs)
    statuses = {}
    for i in range(0, 300, 10):
        out = fc.update(steps[i : i + 10], y[i : i + 10])
        if out is not None:
            statuses[i] = out.status
    first = min(i for i, st in statuses.items() if st is not FitStatus.INSUFFICIENT_DATA)
    assert statuses[0] is FitStatus.INSUFFICIENT_DATA and first <= 40, statuses
    assert len(statuses) >= 9, statuses


def test_refit_cadence_scales_with_the_run():
    short, medium, long = _count_refits(10_000), _count_refits(100_000), _count_refits(1_000_000, every=100)
    assert 80 <= short <= 130 and 100 <= medium <= 180 and 110 <= long <= 200
    # a fixed period (the old policy) refits ten thousand times on a 1M-step run
    assert _count_refits(1_000_000, every=100, refit_every=100) == 10_000


def test_state_size_does_not_grow_with_the_run():
    sizes = {}
    for total in (100_000, 1_000_000):
        lrs = parse_schedule(f"cosine:peak=1e-3,warmup={total // 100},total={total}").lrs()
        fc = OnlineForecaster(lrs)
        steps = np.arange(1, total + 1)
        fc.observe_many(steps, 2.0 + 1.5 * np.cumsum(lrs) ** -0.5)
        sizes[total] = len(json.dumps(fc.state_dict()))
        restored = OnlineForecaster()
        restored.load_state_dict(json.loads(json.dumps(fc.state_dict())))
        np.testing.assert_allclose(restored.schedule, lrs, rtol=1e-10, atol=1e-3 * 1e-10 * lrs.max())
    # bounded by max_bins (512..1024 bins) and a few schedule segments; 1M float64 LRs alone are 8 MB
    assert sizes[1_000_000] < 2 * sizes[100_000] and sizes[1_000_000] < 128 * 1024


def test_work_given_to_a_worker_finishes_before_the_interpreter_exits(tmp_path: Path) -> None:
    """A script that ends while a worker still has a job (a figure of a loop that never called close()): the
    exit waits for it, rather than finalising the interpreter under a daemon thread still inside matplotlib or
    LAPACK, which can abort the process. The job here writes a file after a short wait; it must be there."""
    import subprocess
    import sys

    done = tmp_path / "done"
    script = f"""
import threading
from scaleforecast.background import Worker
started = threading.Event()
def job():
    started.set()
    threading.Event().wait(0.5)
    open({str(done)!r}, "w").write("ok")
Worker("exit-test").submit(job)
started.wait()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert done.read_text() == "ok"


def test_a_loss_far_above_its_neighbours_is_left_out_of_the_fit() -> None:
    """One logged loss of 1e3 in a run at 3 moved the forecast by 2 %; 1e10 left no forecast ("fit status
    failed", L0 = -5e22). A loss more than ten times the median of its neighbours is damage, not training: left
    out, with a warning naming it, whether it comes in a long log or alone in a flush; a loss that rises and stays
    up (a divergence, for the health checks) is kept."""
    spec = "cosine:peak=1e-3,warmup=100,total=20000"
    s = np.arange(1, 10001)
    y = 2.0 + 3.0 * (s * 1e-3) ** -0.4 + 0.01 * np.random.default_rng(0).normal(size=s.size)
    clean = OnlineForecaster(spec)
    clean.observe_many(s, y)
    want = clean.refit().final
    for big in (1e3, 1e10):
        damaged = y.copy()
        damaged[6000] = big
        fc = OnlineForecaster(spec)
        fc.observe_many(s, damaged)
        got = fc.refit()
        assert got.final.loss == pytest.approx(want.loss, rel=1e-3)
        assert any(w.startswith("[far_above]") and "at step 6001" in w for w in got.warnings), got.warnings
    flushed = OnlineForecaster(spec)  # flush by flush, the spike alone in its flush
    for lo in range(0, 10000, 50):
        chunk = y[lo : lo + 50].copy()
        if lo == 6000:
            chunk = np.array([1e4])
            flushed.observe_many(s[lo : lo + 1], chunk)
            flushed.observe_many(s[lo + 1 : lo + 50], y[lo + 1 : lo + 50])
            continue
        flushed.observe_many(s[lo : lo + 50], chunk)
    assert any(w.startswith("[far_above]") for w in flushed.refit().warnings)
    risen = y.copy()
    risen[8000:] *= 12.0  # sustained: its neighbours rise with it
    fc = OnlineForecaster(spec)
    fc.observe_many(s, risen)
    assert not any(w.startswith("[far_above]") for w in fc.refit().warnings)


def test_the_band_of_a_logged_loss_holds_its_noise() -> None:
    """Near the end of a run the law's band is narrower than the noise of one logged loss: the public runs' 80 %
    bands at 97 % of the run held 71 % of their last logged losses. ``observed=True`` (what ``scaleforecast
    forecast`` prints) widens the band by the noise of one logged value, the fit's ``sigma``; the law's band is
    what the callbacks and the stop rule read."""
    rng = np.random.default_rng(1)
    s = np.arange(1, 1001)
    fc = OnlineForecaster("constant:peak=1e-3,total=1000")  # the law exactly: its residuals are the noise
    fc.observe_many(s, (2.0 + 3.0 * (s * 1e-3) ** -0.4) * (1 + 0.01 * rng.normal(size=s.size)))
    law = fc.refit().final
    logged = fc.forecast(observed=True).final
    sigma = fc.fit_result.sigma
    assert 0.008 < sigma < 0.015
    assert logged.loss == law.loss
    # one loss a bin (fewer losses than bins): sigma is the noise of one
    assert fc.logged_noise() == sigma
    assert logged.std == pytest.approx(math.hypot(law.std, sigma * law.loss), rel=1e-9)
    assert logged.std > 3 * law.std  # at the last step the noise is most of it


def test_the_band_of_a_logged_loss_does_not_grow_with_the_rows_a_bin_holds() -> None:
    """A per-step log of a loss the law misfits a little (a slow wave of 1 %, plus 1 % noise a step) is binned
    20 losses a bin; the fit's ``sigma`` scales each bin's residual by the root of its count, which is right for
    noise and multiplies the misfit by sqrt(20): the band of one logged loss was 3.7 times the width the same run
    logged every 20th step got. It is now the same, and holds the spread of the logged losses."""
    rng = np.random.default_rng(3)
    total = 20_000
    s = np.arange(1, total + 1)
    law = 2.0 + 3.0 * (s * 1e-3) ** -0.4
    y = law * (1 + 0.01 * np.sin(s / 900.0) + 0.01 * rng.normal(size=s.size))
    width = {}
    for every in (1, 20):
        fc = OnlineForecaster(f"constant:peak=1e-3,total={total}")
        fc.observe_many(s[::every], y[::every])
        fc.refit()
        width[every] = fc.logged_noise()
    assert width[20] == fc.fit_result.sigma  # one loss a bin
    assert width[1] == pytest.approx(width[20], rel=0.2)
    assert 0.01 < width[1] < 0.02  # about sqrt(misfit^2 + noise^2): 1 % noise and a 0.7 % wave


def test_the_noise_of_a_logged_loss_is_relative_over_a_falling_loss() -> None:
    """1 % noise on a loss that falls from about 30 to 3 (no warm-up: every bin after the first counts): its
    spread pooled in the loss's own units and divided by the latest level came out twice the noise."""
    rng = np.random.default_rng(5)
    total = 20_000
    s = np.arange(1, total + 1)
    y = (2.0 + 3.0 * (s * 1e-3) ** -0.8) * (1 + 0.01 * rng.normal(size=s.size))
    fc = OnlineForecaster(f"constant:peak=1e-3,total={total}")
    seen = s <= 6000
    fc.observe_many(s[seen], y[seen])
    fc.refit()
    assert fc.logged_noise() == pytest.approx(0.01, rel=0.25)


def test_a_config_in_the_wrong_place_is_named() -> None:
    """``OnlineForecaster(ForecasterConfig(), spec)``, ``OnlineForecaster(spec, FitConfig())`` and a dict for the
    config failed with ``AttributeError: ... has no attribute 'max_bins'`` from inside the constructor."""
    from scaleforecast.fitting import FitConfig

    spec = "cosine:peak=1e-3,total=100"
    with pytest.raises(TypeError, match="schedule: got a ForecasterConfig"):
        OnlineForecaster(ForecasterConfig(), spec)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"config: expected a ForecasterConfig, got FitConfig \(a FitConfig goes in"
    ):
        OnlineForecaster(spec, FitConfig())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config: expected a ForecasterConfig, got dict"):
        OnlineForecaster(spec, {"level": 0.9})  # type: ignore[arg-type]
    assert OnlineForecaster(spec, ForecasterConfig(level=0.9)).config.level == 0.9
