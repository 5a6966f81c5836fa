"""Detectors and the health monitor: synthetic curves, real curves with injected events, debouncing, severity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.detectors import (
    DriftConfig,
    DriftDetector,
    GradNormDetector,
    HealthConfig,
    HealthMonitor,
    NonFiniteConfig,
    NonFiniteDetector,
    SpikeConfig,
    SpikeDetector,
    StagnationDetector,
    robust_scale,
)
from scaleforecast.events import Event

SIGMA = 0.02


def law_curve(steps: np.ndarray) -> np.ndarray:
    return 2.5 + 4.0 * (steps / 10.0) ** -0.35


def noisy_curve(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    steps = np.arange(1, n + 1)
    return steps, law_curve(steps) + SIGMA * rng.standard_normal(n)


def feed(
    mon: HealthMonitor, steps: np.ndarray, loss: np.ndarray, flush: int = 25, **kw: object
) -> list[Event]:
    out: list[Event] = []
    for i in range(0, len(steps), flush):
        sl = slice(i, i + flush)
        extra = {k: (v[sl] if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        out += mon.update(steps[sl], loss[sl], **extra)  # type: ignore[arg-type]
    return out


def test_robust_scale_matches_normal_sigma_and_ignores_outliers() -> None:
    x = np.random.default_rng(1).standard_normal(20000)
    x[:200] = 50.0
    assert robust_scale(x) == pytest.approx(1.0, rel=0.05)


def test_clean_synthetic_curve_raises_nothing() -> None:
    steps, y = noisy_curve()
    assert feed(HealthMonitor(), steps, y) == []


@pytest.mark.parametrize("use_law", [False, True])
def test_spike_is_found_at_its_step(use_law: bool) -> None:
    steps, y = noisy_curve()
    y[1999] += 10 * SIGMA
    det = SpikeDetector()
    law = law_curve if use_law else None
    events = [e for i in range(0, 3000, 50) for e in det.update(steps[i : i + 50], y[i : i + 50], law)]
    assert [e.step for e in events] == [2000]
    assert events[0].score > 6
    assert events[0].data["law"] is use_law


@pytest.mark.parametrize("seed", range(3))
def test_a_spike_soon_after_a_steep_start_is_found_and_the_start_raises_nothing(seed: int) -> None:
    """A minibatch loss's noise shrinks with the loss: after a fall from 10 to 0.3 in the first 100 steps (a
    tiny model's MSE), the early blocks' noise is several times the current one, and a x8 spike at step 150
    stood at z ~ 3 against it."""
    rng = np.random.default_rng(seed)
    steps = np.arange(1, 601)
    clean = 0.3 + 10.0 / (1.0 + np.exp((steps - 60.0) / 10.0))
    y = clean * (1.0 + 0.15 * rng.standard_normal(len(steps)))
    assert feed(HealthMonitor(), steps, y, flush=10) == []
    y[149] *= 8
    det = SpikeDetector()
    events = [e for i in range(0, 600, 10) for e in det.update(steps[i : i + 10], y[i : i + 10])]
    assert [e.step for e in events] == [150]
    assert events[0].score > 4.5


def test_law_flattens_the_local_trends_overshoot_after_a_sudden_lr_drop() -> None:
    """A step schedule drops the loss fast; a local trend then overshoots the flattening curve (positive
    residuals), the law expects the drop. Logged every 50 steps, as sparse logs are where it matters."""
    steps = np.arange(50, 50001, 50)
    every = np.arange(1, 50001)
    after = (steps > 25000) & (steps < 32000)
    for seed in range(5):
        full = law_curve(every) - 0.6 * (every > 25000) * (1 - np.exp(-(every - 25000) / 500.0))
        y = full[steps - 1] + SIGMA * np.random.default_rng(seed).standard_normal(len(steps))
        z_local = SpikeDetector().score(steps, y)[0]
        z_law = SpikeDetector().score(steps, y, lambda s, f=full: f[np.asarray(s) - 1])[0]
        assert np.nanmax(z_law[after]) < np.nanmax(z_local[after]) - 0.5
        assert np.nanmax(z_law) < SpikeConfig().threshold


def test_spike_on_one_rank_counts_through_the_max_over_ranks() -> None:
    steps, y = noisy_curve()
    y_max = y + 0.03 + 0.01 * np.random.default_rng(2).standard_normal(len(y))
    y_max[1500] += 0.5  # one rank saw a bad batch; the mean over ranks barely moves
    events = feed(HealthMonitor(), steps, y, loss_max=y_max)
    assert [(e.kind, e.step) for e in events] == [("spike", 1501)]


def test_nonfinite_loss_and_grad_norm() -> None:
    det = NonFiniteDetector()
    steps = np.array([10, 11, 12])
    assert det.update(steps, np.array([1.0, 2.0, 3.0])) == []
    ev = det.update(steps, np.array([1.0, math.nan, math.inf]))
    assert ev[0].step == 11 and ev[0].severity == "warning" and ev[0].data["n_bad"] == 2
    ev = det.update(steps + 3, np.ones(3), grad_norm=np.array([1.0, 1.0, math.nan]))
    assert ev[0].step == 15 and ev[0].data["what"] == "gradient norm" and ev[0].severity == "warning"


def test_nonfinite_loss_is_critical_only_when_it_persists() -> None:
    """A few NaN losses are warnings; ``patience`` in a row (across flushes) is one critical event."""
    det = NonFiniteDetector(NonFiniteConfig(patience=8))
    steps = np.arange(1, 101)
    y = np.ones(100)
    y[[10, 11, 30]] = math.nan  # transient
    y[60:] = math.nan  # the weights went non-finite: every later loss is NaN
    events = [e for i in range(0, 100, 5) for e in det.update(steps[i : i + 5], y[i : i + 5])]
    critical = [e for e in events if e.severity == "critical"]
    assert [e.step for e in critical] == [68]  # the 8th non-finite loss in a row, found across two flushes
    assert {e.severity for e in events if e.step < 61} == {"warning"}
    # Non-finite gradient norms (loss scaling skips those steps) need far longer to count.
    g = np.full(100, math.inf)
    ev = NonFiniteDetector().update(steps, np.ones(100), grad_norm=g)
    assert [e.step for e in ev if e.severity == "critical"] == [64]


def test_a_run_resumed_past_its_nonfinite_limit_is_lost_again_at_its_next_nan() -> None:
    """A checkpoint written when the run was stopped as lost (10 NaN losses in a row) and resumed: the count was
    restored past the limit, never equalled it again, and the resumed run trained to its end on NaN."""
    det = NonFiniteDetector(NonFiniteConfig(patience=8))
    det.update(np.arange(1, 11), np.full(10, math.nan))
    resumed = NonFiniteDetector()
    resumed.load_state_dict(det.state_dict())
    events = resumed.update(np.arange(11, 16), np.full(5, math.nan))
    assert [e.step for e in events if e.severity == "critical"] == [11]
    # a finite loss ends the run of NaN as before
    healthy = NonFiniteDetector()
    healthy.load_state_dict(det.state_dict())
    assert healthy.update(np.arange(11, 13), np.array([1.0, math.nan]))[0].severity == "warning"


def test_single_spikes_are_shown_but_never_critical() -> None:
    """However large, a spike the run recovers from is a warning: counted, recorded, never a stop."""
    steps, y = noisy_curve(4000)
    for s, k in ((1000, 20), (2000, 1e4), (3000, 1e6)):
        y[s - 1] += k * SIGMA
    y[3500:3504] += 50 * SIGMA  # a short burst
    mon = HealthMonitor(HealthConfig(debounce_steps=0))
    events = feed(mon, steps, y)
    assert {e.step for e in events if e.kind == "spike"} >= {1000, 2000, 3000, 3501}
    assert all(e.severity != "critical" for e in events)
    assert mon.counts["spike"] >= 6


def test_a_condition_that_lasts_is_reported_ever_more_rarely_and_counted_in_full() -> None:
    """A spike every 50 steps for 20k steps (a spike storm): reported at 200 steps, then 400, 800, ... apart,
    not 100 times; every one is counted, the next report says how many it stands for, and after the storm a
    lone spike is reported again at once."""
    steps, y = noisy_curve(30000)
    storm = np.arange(1000, 21000, 50)
    y[storm - 1] += 30 * SIGMA
    y[28000 - 1] += 30 * SIGMA
    mon = HealthMonitor()
    events = [e for e in feed(mon, steps, y, flush=100) if e.kind == "spike"]
    in_storm = [e.step for e in events if e.step < 21000]
    assert 5 <= len(in_storm) <= 10, in_storm
    gaps = np.diff(in_storm)
    assert np.all(gaps[1:] >= gaps[:-1]) and gaps[-1] >= 3200, gaps
    assert mon.counts["spike"] >= len(storm)
    assert sum(e.data.get("suppressed_before", 0) for e in events) + len(events) >= len(storm)
    assert 28000 in [e.step for e in events]


def test_divergence_is_critical_once_it_persists_and_a_recovered_spike_is_not() -> None:
    steps, y = noisy_curve(6000)
    level = float(np.median(y[2400:2500]))
    # A spike to twice the loss that decays with a 100-step time constant: the run recovers.
    recovered = y.copy()
    recovered[2500:] += level * np.exp(-np.arange(3500) / 100.0)
    events = feed(HealthMonitor(), steps, recovered)
    assert all(e.severity != "critical" for e in events)
    # The loss runs away and stays up (capped where an untrained model is): lost.
    diverged = y.copy()
    diverged[2500:] = np.minimum(y[2500:] + SIGMA * np.expm1(np.arange(3500) / 30.0), 6.5)
    events = feed(HealthMonitor(), steps, diverged)
    crit = [e for e in events if e.severity == "critical"]
    assert [e.kind for e in crit] == ["divergence"]
    warn = [e for e in events if e.kind == "divergence" and e.severity == "warning"]
    assert warn and warn[0].step < crit[0].step
    # It needs the rise to last ``persist_steps`` past the point where the level first stood far above.
    assert crit[0].step - crit[0].data["since"] >= DriftConfig().persist_steps
    assert crit[0].step - 2500 < 1500


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spikes_that_decay_over_a_few_dozen_steps_are_spikes_not_divergence(seed: int) -> None:
    """A per-step log with loss spikes of +30 to +100% that decay with a 4-step time constant (back in the
    noise within ~25 steps): each is a spike; none is a divergence warning (each used to be one too, lifting
    both EW means while it lasted). A level that jumps and stays up still is one."""
    steps, y = noisy_curve(12000, seed)
    for at, amp in zip((2000, 4000, 6000, 8000, 10000), (0.3, 0.5, 0.8, 0.6, 1.0), strict=True):
        k = np.arange(40)
        y[at + k] *= 1.0 + amp * np.exp(-k / 4.0)
    events = feed(HealthMonitor(HealthConfig(debounce_steps=0)), steps, y)  # every event shows
    spikes = [e.step for e in events if e.kind == "spike"]
    assert all(any(at < st <= at + 10 for st in spikes) for at in (2000, 4000, 6000, 8000, 10000)), spikes
    assert [e for e in events if e.kind == "divergence"] == []
    jumped = y.copy()
    jumped[9000:] += 10 * SIGMA
    div = [e for e in feed(HealthMonitor(), steps, jumped) if e.kind == "divergence"]
    assert div and 9000 < div[0].step < 9300 and div[0].severity == "warning"
    assert div[0].data["since"] <= div[0].step - DriftConfig().confirm_steps


def test_slow_exponential_divergence_is_caught_early_and_only_once() -> None:
    steps, y = noisy_curve(4000)
    start = 2500
    y[start:] += SIGMA * (np.exp((steps[start:] - start) / 150.0) - 1.0)
    events = feed(HealthMonitor(), steps, y)
    div = [e for e in events if e.kind == "divergence"]
    assert div, "divergence missed"
    delay = div[0].step - start
    assert 0 < delay < 700
    assert len(div) <= 3  # debounced


def test_rising_loss_while_the_lr_rises_is_not_divergence() -> None:
    steps, _ = noisy_curve(1000)
    rng = np.random.default_rng(5)
    y = 3.0 + 0.002 * steps + SIGMA * rng.standard_normal(len(steps))  # rising, but so is the LR
    lrs = 1e-3 * steps / 1000.0
    det = DriftDetector()
    assert det.update(steps, y, lr_of=lambda s: lrs[np.asarray(s) - 1]) == []
    assert DriftDetector().update(steps, y, lr_of=lambda s: np.full(len(s), 1e-3))


def test_stagnation_needs_the_law_and_fires_when_progress_stops() -> None:
    steps = np.arange(1, 2001)
    rng = np.random.default_rng(7)
    flat = 3.0 + 0.005 * rng.standard_normal(len(steps))

    def falling(s: np.ndarray) -> np.ndarray:
        return 3.0 - 0.0005 * np.asarray(s, dtype=float) + 0.5

    assert StagnationDetector().update(steps, flat) == []
    ev = StagnationDetector().update(steps, flat, falling)
    assert ev and ev[0].kind == "stagnation" and ev[0].severity == "warning"
    following = falling(steps) + 0.005 * rng.standard_normal(len(steps))
    assert StagnationDetector().update(steps, following, falling) == []


def test_a_refit_between_two_blocks_is_no_stagnation() -> None:
    """A run that follows its law, flushed in blocks, with a refit between two of them (the early fit read the
    loss a few percent high): the progress the law expects is measured on both blocks under the fit made now,
    not the older block under the older fit (that read the refit's shift as 0.27 of expected progress and said
    "stalled" on a healthy run)."""
    steps = np.arange(1, 4001)
    rng = np.random.default_rng(3)

    def law(s: np.ndarray) -> np.ndarray:
        return 2.0 + 3.0 * (np.asarray(s, dtype=float) * 1e-3) ** -0.5

    def early_fit(s: np.ndarray) -> np.ndarray:
        return law(s) + 0.27

    y = law(steps) + 0.01 * rng.standard_normal(len(steps))
    det = StagnationDetector()
    cut = 2240
    assert det.update(steps[:cut], y[:cut], early_fit) == []
    assert det.update(steps[cut:], y[cut:], law) == []


def test_no_stagnation_is_read_into_the_warm_up() -> None:
    """A loss that falls fast through a 40-step warm-up (2.19 to 1.17 by step 30), judged against a law fitted
    without the warm-up, which expects a drop of 2.38 there: "loss stalled at step 64" on a healthy run. A block
    that reaches into the warm-up is not judged."""
    from scaleforecast.detectors import FitLaw

    steps = np.arange(1, 201)
    y = np.where(steps <= 40, 2.2 - 0.03 * steps, 1.0 - 0.0005 * (steps - 40))
    # the law's values inside the warm-up are no expectation of the loss (here: far above it)
    law = FitLaw(lambda s: np.where(s <= 40, 8.0 - 0.06 * s, 1.0 - 0.0005 * (s - 40)), 200, peak=40)
    assert StagnationDetector().update(steps, y, law) == []
    blind = FitLaw(law._mean, 200)  # the same law, not told where the warm-up ends: the false alarm
    assert [e.kind for e in StagnationDetector().update(steps, y, blind)] == ["stagnation"]


def test_grad_norm_spike_and_growth() -> None:
    rng = np.random.default_rng(11)
    steps = np.arange(1, 801)
    g = np.exp(0.05 * rng.standard_normal(len(steps)))
    g[400] = 50.0
    ev = GradNormDetector().update(steps, g)
    assert [(e.step, e.data["kind"]) for e in ev] == [(401, "spike")]
    growing = np.exp(np.linspace(0, 2.5, len(steps)) + 0.05 * rng.standard_normal(len(steps)))
    ev = GradNormDetector().update(steps, growing)
    assert any(e.data["kind"] == "growth" for e in ev)
    # norms that barely move (as clipped ones do): a 1 against a typical 0.988 is a z of 12, but no spike
    pinned = 0.988 * (1 + 1e-5 * rng.standard_normal(len(steps)))
    pinned[600] = 1.0
    assert GradNormDetector().update(steps, pinned) == []


def test_debouncing_reports_once_per_window_and_counts_the_rest() -> None:
    steps, y = noisy_curve(4000)
    for s in (1500, 1550, 1600, 2600):
        y[s - 1] += 20 * SIGMA
    mon = HealthMonitor(HealthConfig(debounce_steps=200))
    events = feed(mon, steps, y)
    spikes = [e for e in events if e.kind == "spike"]
    assert [e.step for e in spikes] == [1500, 2600]
    assert spikes[1].data["suppressed_before"] == 2
    assert mon.counts["spike"] == 4


def test_critical_only_for_kinds_in_act_on() -> None:
    """What a critical event does is the run monitor's action (tested there); the health monitor only decides
    which kinds may be critical."""
    steps, y = noisy_curve()
    y[2000:2100] = math.nan  # a NaN storm from step 2001 on: critical at the 8th in a row
    y[2500] += 20 * SIGMA
    events = feed(HealthMonitor(HealthConfig(act_on=["nonfinite"], debounce_steps=0)), steps[:3000], y[:3000])
    crit = [e for e in events if e.severity == "critical"]
    assert [e.kind for e in crit] == ["nonfinite"] and "nonfinite @ step 2008" in crit[0].text()
    assert ("spike", "warning") in [(e.kind, e.severity) for e in events]
    narrowed = feed(HealthMonitor(HealthConfig(act_on=[], debounce_steps=0)), steps[:3000], y[:3000])
    assert all(e.severity != "critical" for e in narrowed)


def test_spike_record_is_written_like_lightning(tmp_path: Path) -> None:
    steps, y = noisy_curve()
    y[999] += 20 * SIGMA
    y[2499] += 20 * SIGMA
    path = tmp_path / "out" / "skip.json"
    feed(HealthMonitor(HealthConfig(record_path=str(path))), steps, y)
    assert json.loads(path.read_text()) == [999, 1000, 2499, 2500]
    feed(HealthMonitor(HealthConfig(record_path=str(tmp_path))), steps, y)
    assert json.loads((tmp_path / "skip_steps.json").read_text()) == [999, 1000, 2499, 2500]


def test_unwritable_record_path_warns_and_training_goes_on(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    steps, y = noisy_curve()
    y[999] += 20 * SIGMA
    mon = HealthMonitor(HealthConfig(record_path=str(blocker / "sub" / "skip.json")))
    assert [e.step for e in feed(mon, steps, y)] == [1000]
    assert mon.skip_steps == {999, 1000}


def test_state_dict_is_json_and_resumes_identically() -> None:
    steps, y = noisy_curve(4000)
    y[[1200, 3100]] += 20 * SIGMA
    y[3500:] += np.linspace(0, 1.0, 500)
    grad = np.exp(0.05 * np.random.default_rng(4).standard_normal(len(steps)))
    full = HealthMonitor()
    ref = feed(full, steps, y, grad_norm=grad)
    first = HealthMonitor()
    part = feed(first, steps[:2000], y[:2000], grad_norm=grad[:2000])
    state = json.loads(json.dumps(first.state_dict()))
    resumed = HealthMonitor()
    resumed.load_state_dict(state)
    part += feed(resumed, steps[2000:], y[2000:], grad_norm=grad[2000:])
    assert [(e.kind, e.step) for e in part] == [(e.kind, e.step) for e in ref]
    assert {e.kind for e in ref} >= {"spike", "divergence"}


def test_state_of_another_version_costs_the_statistics_not_the_run(caplog: pytest.LogCaptureFixture) -> None:
    mon = HealthMonitor()
    steps, y = noisy_curve(500)
    feed(mon, steps, y)
    old = {"version": 1, "config": {}, "spike": {"window": {"steps": [1]}}}
    fresh = HealthMonitor()
    fresh.load_state_dict(old)
    assert "start afresh" in caplog.text
    assert feed(fresh, steps, y) == []  # it simply learns again


def test_spike_config_validation() -> None:
    with pytest.raises(ValueError):
        SpikeConfig(threshold=-1)
    with pytest.raises(ValueError):
        HealthMonitor().update([1, 2], [1.0])


# ------------------------------------------------------------------------------------------- real curves
def _real_runs(curves_dir: Path, every: int) -> list:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.curves import load_curves, split_curves

    _, holdout = split_curves(load_curves(curves_dir))
    return holdout[::every]


def _monitor_run(curve, y: np.ndarray) -> list[Event]:  # type: ignore[no-untyped-def]
    from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster

    steps, _ = curve.column("train_loss")
    keep = steps > 0
    steps = steps[keep]
    fc = OnlineForecaster(curve.lrs, ForecasterConfig(refit_every=max(200, curve.total_steps // 20)))
    warm = curve.warmup_steps
    cfg = HealthConfig()
    cfg.spike.min_step = cfg.drift.min_step = warm
    mon = HealthMonitor(cfg)
    events: list[Event] = []
    flush = max(1, 100 // max(1, int(np.median(np.diff(steps)))))
    for i in range(0, len(steps), flush):
        st, ys = steps[i : i + flush], y[i : i + flush]
        events += mon.update(st, ys, view=fc)
        fc.update(st[np.isfinite(ys)], ys[np.isfinite(ys)])
    return events


@pytest.mark.slow
def test_no_event_on_clean_real_curves(curves_dir: Path) -> None:
    bad = {}
    for c in _real_runs(curves_dir, every=4):
        if c.folder == "llmc_gpt2_124m":
            continue
        _, y = c.column("train_loss")
        y = y[c.column("train_loss")[0] > 0]
        events = [e for e in _monitor_run(c, y) if e.kind != "stagnation"]
        if events:
            bad[c.run_id] = [e.text() for e in events]
    assert not bad


@pytest.mark.slow
def test_injected_events_on_a_real_curve_are_found(curves_dir: Path) -> None:
    curve = next(
        c
        for c in _real_runs(curves_dir, every=1)
        if c.folder == "epfml_schaipp_haegele" and len(c.column("train_loss")[0]) > 400
    )
    steps, y = curve.column("train_loss")
    keep = steps > 0
    steps, y = steps[keep], y[keep].copy()
    sigma = robust_scale(np.diff(y[len(y) // 2 :])) / math.sqrt(2)
    i_spike, i_nan, i_div = len(y) // 3, len(y) // 2, (3 * len(y)) // 4
    y[i_spike] += 10 * sigma
    y[i_nan] = math.nan
    y[i_div:] += sigma * (np.exp(np.arange(len(y) - i_div) / 15.0) - 1.0)
    found = {(e.kind, e.step) for e in _monitor_run(curve, y)}
    assert ("spike", int(steps[i_spike])) in found
    assert ("nonfinite", int(steps[i_nan])) in found
    div = [s for k, s in found if k == "divergence"]
    assert div and 0 < min(div) - steps[i_div] < 60 * np.median(np.diff(steps))


def test_the_law_is_evaluated_in_forward_blocks_not_over_the_whole_schedule() -> None:
    from scaleforecast.detectors import FitLaw

    calls: list[int] = []

    def mean(steps: np.ndarray) -> np.ndarray:
        calls.append(len(steps))
        return law_curve(steps)

    law = FitLaw(mean, total=1_000_000)
    det = HealthMonitor()
    steps, y = noisy_curve(6000)
    for i in range(0, 6000, 50):
        det.update(steps[i : i + 50], y[i : i + 50], law=law)
    # A handful of evaluations for 120 flushes, none of them over the million planned steps.
    assert len(calls) <= 6 and max(calls) <= 2048
    np.testing.assert_allclose(law(np.array([5, 70_000])), law_curve(np.array([5, 70_000])))
    assert np.isnan(law(np.array([0, 1_000_001]))).all()
