"""The observed final loss that report and backtest judge the forecast against: read at the schedule's last
step like the forecast, with its uncertainty, and a warning when the log is too sparse to know it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.cli import main
from scaleforecast.laws import annealing_area, forward_area
from scaleforecast.observed import observed_final
from scaleforecast.readers import read_run
from scaleforecast.report import build_report
from scaleforecast.runs import RunData
from scaleforecast.schedule_fit import rebuild_lrs
from scaleforecast.schedules import as_lrs

SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter


def law(lrs: np.ndarray, steps: np.ndarray) -> np.ndarray:
    s1, s2 = forward_area(lrs), annealing_area(lrs)
    return 2.5 + 0.6 * s1[steps - 1] ** -0.5 - 0.4 * s2[steps - 1]


def per_step_run(losses: np.ndarray, spec: str) -> RunData:
    """A run logged at every update ``1..len(losses)`` under the schedule ``spec``."""
    return RunData(
        source="run.csv",
        format="csv",
        loss_name="loss",
        steps=np.arange(1, len(losses) + 1),
        losses=losses,
        windows=np.ones(len(losses), dtype=np.int64),
        lr=rebuild_lrs(np.zeros(0, np.int64), np.zeros(0), None, spec),
    )


def test_sparse_lightning_style_log_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One batch logged every 10 steps (Lightning's ``log_every_n_steps=10`` with ``LearningRateMonitor``):
    three noisy batches in the last 2% of the run cannot pin its final loss down, and the report says so."""
    spec = "cosine:peak=1e-3,warmup=50,total=1000"
    lrs = as_lrs(spec)
    steps = np.arange(10, 1001, 10)
    rng = np.random.default_rng(3)
    y = law(lrs, steps) + rng.normal(0.0, 0.08, len(steps))  # single-batch noise
    run_dir = tmp_path / "lightning_logs" / "version_0"
    w = SummaryWriter(str(run_dir))
    for s, v in zip(steps, y, strict=True):
        w.add_scalar("train_loss", float(v), int(s))
        w.add_scalar("lr-AdamW", float(lrs[s - 1]), int(s))
    w.close()
    run = read_run(tmp_path / "lightning_logs", warn=False)
    assert run.loss_name == "train_loss" and run.total_steps == 1000
    obs = observed_final(run)
    # (the last 8 points, then widened to the last 10% of the run: its end is a line under this noise)
    assert obs is not None and obs.step == 1000 and obs.n_points == 11
    truth = float(law(lrs, np.array([1000]))[0])
    assert abs(obs.value - truth) <= 3 * obs.std
    assert obs.note is not None
    assert "the loss is too noisy for the 11 points logged over the last 10% of the run" in obs.note
    assert f"the observed final loss ({obs.value:.4f} at step 1000) is known only to ±" in obs.note
    png = tmp_path / "r.png"
    assert main(["report", str(tmp_path / "lightning_logs"), "-o", str(png), "--dpi", "20", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["observed_final"] == pytest.approx(obs.value)
    assert result["observed_final_std"] == pytest.approx(obs.std)
    assert obs.note in result["data_warnings"]
    assert f"scaleforecast: {obs.note}" in err.splitlines()
    assert main(["backtest", str(tmp_path / "lightning_logs"), "--no-picture", "--fractions", "0.5"]) == 0
    out = capsys.readouterr().out
    assert f"observed final loss {obs.value:.4f} ± {obs.std:.2g} at step 1000" in out and "note: " in out
    # the report's error row calls the observed value's uncertainty a caveat only for an error of its size (it
    # said "observed value uncertain" beside a 130 % miss of a final known to 3 %)
    data = build_report(run)
    final = data.forecast.final
    assert final is not None
    for miss, caveat in ((0.5 * obs.std, True), (10 * obs.std, False)):
        data.observed = replace(obs, value=final.loss - miss)
        (row,) = [value for label, value in data.table() if label == "forecast error"]
        assert ("within the observed value's own uncertainty" in row) is caveat, row


def test_a_dense_log_is_read_at_the_last_step_not_over_the_tail() -> None:
    """A WSD run that cools down to a small LR, logged every step: the loss still falls fast at the end, so a
    median over the last 2% sits half that stretch too early; the estimate at the last step does not."""
    spec = "wsd:peak=1e-3,warmup=100,total=5000,cooldown=0.2,shape=linear"
    lrs = as_lrs(spec)
    steps = np.arange(1, 5001)
    y = law(lrs, steps) + np.random.default_rng(0).normal(0.0, 0.002, len(steps))
    obs = observed_final(per_step_run(y, spec))
    truth = float(law(lrs, np.array([5000]))[0])
    tail_median = float(np.median(y[steps >= 0.98 * 5000]))
    assert obs is not None and obs.note is None and obs.n_points == 101
    assert abs(obs.value - truth) < 3 * obs.std < 0.002
    assert abs(tail_median - truth) > 5 * abs(obs.value - truth)


def test_a_noisy_per_step_log_is_read_over_as_much_of_its_end_as_is_a_line() -> None:
    """One batch a step, 10 % noise, at the end of a long linear cooldown: the last 2 % of the run (20
    points) knew the final loss to about +-5 %, and backtest marked good forecasts "NO" against it. A line over
    more of the end, while the end is still a line, knows it about twice as well; a curved end keeps its 2 %."""
    from scaleforecast.observed import _line_at

    spec = "wsd:peak=1e-3,warmup=20,total=1000,cooldown=0.3,shape=linear"
    lrs = as_lrs(spec)
    steps = np.arange(1, 1001)
    clean = law(lrs, steps)
    truth = float(clean[-1])
    wide, tail = [], []
    for seed in range(20):
        y = clean * (1 + np.random.default_rng(seed).normal(0.0, 0.10, len(steps)))
        obs = observed_final(per_step_run(y, spec))
        assert obs is not None and obs.n_points > 20
        wide.append(abs(obs.value - truth) / truth)
        last = steps >= 980
        tail.append(abs(_line_at(steps[last].astype(float), y[last], 1000)[0] - truth) / truth)
    assert np.median(wide) < 0.6 * np.median(tail), (np.median(wide), np.median(tail))
    # never across a bend: a short cooldown (the last 5 %) after a stable phase
    short = "wsd:peak=1e-3,warmup=20,total=1000,cooldown=0.05,shape=linear"
    bent = law(as_lrs(short), steps)
    for seed in range(5):
        noisy = bent * (1 + np.random.default_rng(seed).normal(0.0, 0.01, len(steps)))
        obs = observed_final(per_step_run(noisy, short))
        assert obs is not None and obs.span <= 50 and abs(obs.value - bent[-1]) < 3 * obs.std, obs


def test_unfinished_run_has_no_observed_final(tmp_path: Path) -> None:
    p = tmp_path / "run.csv"
    p.write_text("step,loss\n" + "".join(f"{s},{3.0 - s / 1000}\n" for s in range(10, 501, 10)))
    run = read_run(p, schedule="constant:peak=1e-3,total=1000", warn=False)
    assert observed_final(run) is None
