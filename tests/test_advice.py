"""Schedule advice: candidates, flags, and the advisor on real constant-LR and WSD runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.advice import AdviceConfig, ScheduleAdvisor, candidate_schedules, schedule_flags
from scaleforecast.forecaster import OnlineForecaster
from scaleforecast.schedules import ConstantSchedule, CosineSchedule, LinearSchedule, WSDSchedule


def test_candidates_keep_the_past_and_decay_from_the_current_lr() -> None:
    planned = ConstantSchedule(peak=1e-3, total=1000, warmup=100).lrs()
    cands = candidate_schedules(planned, 600)
    assert len(cands) == 2 + 3 * 2
    for name, lrs in cands.items():
        assert len(lrs) == 1000, name
        np.testing.assert_array_equal(lrs[:600], planned[:600])
        assert lrs[600] == pytest.approx(1e-3)
        assert lrs[-1] < 1e-4 and np.all(lrs > 0), name
        assert np.all(np.diff(lrs[600:]) <= 1e-18), name
    wsd10 = cands["WSD 10% linear cooldown"]
    assert np.all(wsd10[600:900] == pytest.approx(1e-3)) and wsd10[901] < 1e-3
    # at update 800 a 30% cooldown would have started at update 700: it starts now, a decay over what is left,
    # shown once per shape under its own name (20% and 30% were two names of one schedule), linear's is linear's
    late = candidate_schedules(planned, 800)
    assert list(late) == [
        "linear decay to 0",
        "cosine to 0",
        "WSD 10% linear cooldown",
        "WSD 10% 1-sqrt cooldown",
        "1-sqrt decay to 0",
    ]
    assert late["1-sqrt decay to 0"][801] < late["1-sqrt decay to 0"][800]


def test_no_candidates_at_the_end() -> None:
    assert candidate_schedules(np.full(100, 1e-3), 99) == {}


def test_flags() -> None:
    assert schedule_flags(WSDSchedule(peak=1e-3, total=1000, warmup=50, cooldown=0.2).lrs()) == []
    assert schedule_flags(CosineSchedule(peak=1e-3, total=1000, warmup=50).lrs()) == []
    high = schedule_flags(CosineSchedule(peak=1e-3, total=1000, warmup=50, final=2e-4).lrs())
    assert len(high) == 1 and high[0].startswith("ends at a high LR")
    early = np.concatenate([LinearSchedule(peak=1e-3, total=500, final=1e-5).lrs(), np.full(500, 1e-5)])
    flags = schedule_flags(early)
    assert len(flags) == 1 and flags[0].startswith("decays too early")
    assert "forward area S1" in flags[0]
    assert schedule_flags(ConstantSchedule(peak=1e-3, total=1000).lrs())[0].startswith("ends at a high LR")
    # a decay that ends at 0 has one update at LR 0; a scheduler built for 750 of 1000 updates leaves 250
    assert schedule_flags(LinearSchedule(peak=1e-3, total=1000, final=0.0).lrs()) == []
    short = np.concatenate([LinearSchedule(peak=1e-3, total=750, final=0.0).lrs(), np.zeros(250)])
    idle = [f for f in schedule_flags(short) if f.startswith("trains nothing at the end")]
    assert len(idle) == 1 and "from update 751 to 1000, 25% of the run" in idle[0], idle


def test_advisor_without_a_fit_is_silent() -> None:
    adv = ScheduleAdvisor()
    fc = OnlineForecaster(ConstantSchedule(peak=1e-3, total=1000).lrs())
    assert adv.evaluate(fc) is None
    assert adv.advise(fc, 0) == []
    assert adv.scalars() == {}

    class Broken:
        schedule = np.full(10, 1.0)

        @property
        def fit_result(self) -> None:
            raise RuntimeError("boom")

    assert adv.advise(Broken(), 5) == []


# ------------------------------------------------------------------------------------------- real curves
def _real(curves_dir: Path, run_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = curves_dir / "epfml_schaipp_haegele" / run_id
    import csv

    with open(f"{base}.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["train_loss"] and int(r["step"]) > 0]
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["train_loss"]) for r in rows])
    return steps, loss, np.load(f"{base}.lr.npy")


def _advisor_at(curves_dir: Path, run_id: str, fraction: float) -> tuple[ScheduleAdvisor, list]:
    steps, loss, lrs = _real(curves_dir, run_id)
    fc = OnlineForecaster(lrs)
    seen = steps <= fraction * len(lrs)
    fc.observe_many(steps[seen], loss[seen])
    fc.refit()
    adv = ScheduleAdvisor()
    return adv, adv.advise(fc, int(steps[seen][-1]))


CONSTANT = "stable-124m_slimpajama_llama_norm_nlayers12_nhead12_lr0.002_sched_wsd_warmup300_decay_linear_0.0_iter50000"
WSD20 = "ann0.2_openwebtext2_llama_norm_nlayers12_nhead10_lr0.001_sched_wsd_warmup300_iter25000"


@pytest.mark.parametrize("fraction", [0.5, 0.75])
def test_constant_lr_to_the_end_gets_a_cooldown_with_a_predicted_gain(
    curves_dir: Path, fraction: float
) -> None:
    adv, events = _advisor_at(curves_dir, CONSTANT, fraction)
    advice = adv.latest
    assert advice is not None and advice.significant
    assert advice.best is not None and advice.best.gain > 0.05  # nats: a cooldown is worth a lot here
    assert advice.gain > advice.planned_std
    warn = [e for e in events if e.kind == "schedule_advice" and e.severity == "warning"]
    assert len(warn) == 1 and warn[0].data["gain"] == pytest.approx(advice.best.gain)
    assert "lower the final loss" in warn[0].message
    assert any(e.data.get("flag") == "ends at a high LR" for e in events)
    assert adv.scalars()["advice/best_gain"] == pytest.approx(advice.best.gain)
    # the LR never decayed: the run's data hold nothing on C, and the gain is the prior's (the plan's status
    # is "ok", as nothing ahead anneals; the advice said nothing of the prior)
    assert advice.c_from_prior and "it comes from the prior" in warn[0].message


def test_no_advice_near_the_end_shows_no_stale_plan(curves_dir: Path) -> None:
    """Once too little of the run is left to change, a refit gives no advice, and the sinks get no advice
    scalars (the plan of an earlier refit would show a stale planned final loss beside the forecast)."""
    steps, loss, lrs = _real(curves_dir, CONSTANT)
    fc = OnlineForecaster(lrs)
    adv = ScheduleAdvisor()
    for fraction in (0.5, 0.999):
        seen = steps <= fraction * len(lrs)
        fc.observe_many(steps[seen & (steps > fc.last_step)], loss[seen & (steps > fc.last_step)])
        fc.refit()
        adv.advise(fc, int(steps[seen][-1]))
        assert (adv.scalars() != {}) is (fraction == 0.5)
    assert adv.latest is not None and adv.latest.step < 0.6 * len(lrs)  # kept, for the record


@pytest.mark.parametrize("fraction", [0.5, 0.75])
def test_a_sensible_wsd_cooldown_gets_no_advice(curves_dir: Path, fraction: float) -> None:
    adv, events = _advisor_at(curves_dir, WSD20, fraction)
    assert adv.latest is not None and not adv.latest.significant
    assert events == []


def test_flags_are_reported_once_and_state_round_trips(curves_dir: Path) -> None:
    steps, loss, lrs = _real(curves_dir, CONSTANT)
    fc = OnlineForecaster(lrs)
    adv = ScheduleAdvisor(AdviceConfig(min_sigma=1e9))  # only the flags can fire
    fc.observe_many(steps[steps <= 20000], loss[steps <= 20000])
    fc.refit()
    first = adv.advise(fc, 20000)
    assert [e.severity for e in first] == ["info"]
    state = json.loads(json.dumps(adv.state_dict()))
    again = ScheduleAdvisor()
    again.load_state_dict(state)
    assert again.advise(fc, 20000) == []
    assert again.latest is not None and again.latest.planned_final == pytest.approx(adv.latest.planned_final)


DIVERGED = "cos-zero-124m_slimpajama_llama_norm_nlayers12_nhead12_lr0.005_sched_cos_warmup300_decay_sqrt_0.0_iter50000"


def test_no_what_if_for_a_run_that_has_left_its_law(curves_dir: Path) -> None:
    """A real 124M run at 10x LR diverged (5.6 -> 7.5) and its forecast is law_violated: a schedule's what-if is
    the law's answer, so the advisor offers none (the plan's flags, which need no law, still come)."""
    adv, events = _advisor_at(curves_dir, DIVERGED, 0.5)
    advice = adv.latest
    assert advice is not None and advice.candidates == [] and advice.best is None and not advice.significant
    assert not [e for e in events if e.severity == "warning"]


def test_the_same_advice_is_said_once_and_a_resumed_run_remembers_it(curves_dir: Path) -> None:
    """Advice is re-evaluated at every refit: the same recommendation was a warning at each of them (six in a
    2000-step run). It is said again only when the recommended schedule changes; the scalars follow every
    refit."""
    steps, loss, lrs = _real(curves_dir, CONSTANT)
    fc = OnlineForecaster(lrs)
    adv = ScheduleAdvisor()
    said = []
    for fraction in (0.5, 0.6, 0.7):
        seen = steps <= fraction * len(lrs)
        fc.observe_many(steps[seen & (steps > fc.last_step)], loss[seen & (steps > fc.last_step)])
        fc.refit()
        said.append([e for e in adv.advise(fc, fc.last_step) if e.severity == "warning"])
        assert adv.latest is not None and adv.latest.significant
        assert adv.scalars()["advice/best_gain"] == pytest.approx(adv.latest.best.gain)
    # (by 70 % another candidate leads the one said, by less than the forecast's std: nothing new to say)
    assert [len(s) for s in said] == [1, 0, 0]
    again = ScheduleAdvisor()
    again.load_state_dict(json.loads(json.dumps(adv.state_dict())))
    assert [e for e in again.advise(fc, fc.last_step) if e.severity == "warning"] == []


def test_advice_on_a_fit_out_of_the_laws_shape_says_its_gain_is_not_to_be_trusted() -> None:
    """A tiny MLP's loss falling toward its noise floor, fitted only out of the law's shape (a floor below zero):
    the advice's direction was right in every retrained case, its gains three to seven times too large, and its
    alternative's final MSE below zero, with no word of the fit's shape."""
    from scaleforecast.advice import Candidate

    # a real fit out of the law's shape: a loss falling exponentially to a floor of 0.05 under a constant LR
    total = 8000
    steps = np.arange(1, total + 1)
    loss = (2.0 * np.exp(-steps / 1000.0) + 0.05) * (
        1 + 0.02 * np.random.default_rng(0).standard_normal(total)
    )
    fc = OnlineForecaster(ConstantSchedule(peak=1e-3, total=total, warmup=100).lrs())
    fc.observe_many(steps[:4000], loss[:4000])
    fc.refit()
    evaluated = ScheduleAdvisor().evaluate(fc)
    assert evaluated is not None and evaluated.out_of_shape
    # its gains as the MLP's were (this curve's are within its noise, so no advice is due on it)
    best = Candidate(name="WSD 10% linear cooldown", final_loss=-0.0535, gain=0.1816)
    update = {
        "planned_final": 0.1282,
        "planned_std": 0.093,
        "candidates": [best],
        "best": best,
        "significant": True,
        "flags": [],
    }
    advice = evaluated.model_copy(update=update)
    (event,) = ScheduleAdvisor().events(advice)
    assert event.message.endswith(
        "; the fit is out of the law's shape ([out_of_shape]): the direction holds, not the size of the gain"
    )
    shaped = ScheduleAdvisor().events(advice.model_copy(update={"out_of_shape": False}))
    assert "out of the law's shape" in shaped[0].message  # a loss below zero says the same of the fit
    fine = advice.model_copy(
        update={"out_of_shape": False, "best": best.model_copy(update={"final_loss": 0.05})}
    )
    assert "shape" not in ScheduleAdvisor().events(fine)[0].message


def test_advice_is_said_again_only_for_a_candidate_better_by_more_than_the_std() -> None:
    """A recommendation is said once; another is said when it beats the one said by more than the forecast's
    std (near-equal candidates trade places from one refit to the next), and not when it beats it by less."""
    from scaleforecast.advice import Candidate, ScheduleAdvice

    def advice(gains: dict[str, float]) -> ScheduleAdvice:
        cands = [Candidate(name=n, final_loss=3.0 - g, gain=g) for n, g in gains.items()]
        best = max(cands, key=lambda c: c.gain)
        return ScheduleAdvice(
            step=500, final_step=1000, planned_final=3.0, planned_std=0.01, candidates=cands, best=best,
            significant=True,
        )  # fmt: skip

    adv = ScheduleAdvisor()
    said = [
        [e.data["best"] for e in adv.events(advice(gains)) if e.kind == "schedule_advice"]
        for gains in (
            {"cosine": 0.05, "wsd": 0.04},  # said
            {"cosine": 0.05, "wsd": 0.055},  # wsd leads by 0.005 < std: not said
            {"cosine": 0.05, "wsd": 0.07},  # wsd leads by 0.02 > std: said
            {"cosine": 0.05, "wsd": 0.07},  # the same again: not said
        )
    ]
    assert said == [["cosine"], [], ["wsd"], []]
