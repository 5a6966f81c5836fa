"""Detectors and the health monitor: synthetic curves, real curves with injected events, debouncing, severity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.detectors import (
    DriftDetector,
    GradNormDetector,
    HealthConfig,
    HealthMonitor,
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
    assert ev[0].step == 11 and ev[0].severity == "critical" and ev[0].data["n_bad"] == 2
    ev = det.update(steps, np.ones(3), grad_norm=np.array([1.0, 1.0, math.nan]))
    assert ev[0].step == 12 and ev[0].data["what"] == "gradient norm"


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
    y[2000] = math.nan
    y[2500] += 20 * SIGMA
    events = feed(HealthMonitor(HealthConfig(act_on=["nonfinite"])), steps, y)
    assert [(e.kind, e.severity) for e in events] == [("nonfinite", "critical"), ("spike", "warning")]
    assert "nonfinite @ step 2001" in events[0].text()


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
