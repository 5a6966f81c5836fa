"""The stopping rule and the sweep reference it is compared with."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from forecasts import one_point

from scaleforecast.calibration import ErrorModel, ErrorTail, load_error_model
from scaleforecast.decision import (
    DEFAULT_CONFIDENCE,
    SweepStopper,
    decide_stop,
    decide_stop_in_sweep,
    sweep_reference,
)
from scaleforecast.evidence import PHASES, StopFeatures, features_from_forecast
from scaleforecast.registry import RunRecord, RunState, SQLiteRegistry
from scaleforecast.results import FitStatus


def _rec(run_id: str, **kw: object) -> RunRecord:
    return RunRecord(sweep="s", run_id=run_id, updated=1000.0, **kw)  # type: ignore[arg-type]


# a small error model: 2 % scale everywhere (8 % before the run has tested itself), run maxima 0.5..3 measured
# on 100 groups (20 each), so that confidences up to 100 / 101 can be certified
MODEL = ErrorModel(
    fraction_edges=[0.0, 1.0],
    table={**{c: [0.02] for c in PHASES}, "unproven": [0.08]},
    fallback=[0.1],
    upper=ErrorTail(values=[0.5, 1.0, 1.5, 2.0, 3.0], weights=[20.0] * 5),
    lower=ErrorTail(values=[0.5, 1.0, 1.5, 2.0, 3.0], weights=[20.0] * 5),
)
TESTED = StopFeatures(fraction=0.5, decay_seen=0.0, decay_ahead=1.0, backtest=0.0)


def test_stop_when_the_measured_error_cannot_explain_the_gap() -> None:
    # 3.5 vs 3.0 is 7.7 scales of 2 %: more than any calibration run was ever off
    d = decide_stop(one_point(3.5, 0.1), 3.0, step=500, total_steps=1000, features=TESTED, model=MODEL)
    assert d.stop and d.probability == pytest.approx(100 / 101) and d.reference == 3.0
    assert d.scale == pytest.approx(0.02)
    # 3.05 vs 3.0 is 0.83 scales: 4 groups in 5 had a larger excursion
    d = decide_stop(one_point(3.05, 0.1), 3.0, step=500, total_steps=1000, features=TESTED, model=MODEL)
    assert not d.stop and d.probability == pytest.approx(20 / 101)
    # the same gap before the run has tested itself is 1.93 scales of 8 %: weak evidence
    untested = TESTED.model_copy(update={"backtest": None})
    d = decide_stop(
        one_point(3.5, 0.1), 3.0, step=500, total_steps=1000, features=untested, model=MODEL, confidence=0.5
    )
    assert d.stop  # 1.93 scales: 3 groups in 5 stayed below, enough at confidence 0.5 only
    d = decide_stop(
        one_point(3.5, 0.1), 3.0, step=500, total_steps=1000, features=untested, model=MODEL, confidence=0.9
    )
    assert not d.stop and d.probability == pytest.approx(60 / 101)
    assert "band" not in d.reason  # the fit's own band, [3.4, 3.6], does not hold 3.0
    # a band wider than the measured error, holding the target, beside a stop: the reason says which it trusts
    d = decide_stop(one_point(3.5, 0.5), 3.0, step=500, total_steps=1000, features=TESTED, model=MODEL)
    assert d.stop and "the fit's own band [3.0000, 4.0000] holds 3.0000" in d.reason, d.reason
    # a forecast below the reference never stops, however confident
    d = decide_stop(one_point(2.9, 1e-6), 3.0, step=500, total_steps=1000, features=TESTED, model=MODEL)
    assert not d.stop and d.probability == 0.0


def test_speaks_early_on_overwhelming_evidence_and_honours_an_explicit_grace() -> None:
    bad = one_point(9.0, 0.01)
    early = StopFeatures(fraction=0.01, decay_seen=0.0, decay_ahead=1.0)
    assert decide_stop(bad, 3.0, step=10, total_steps=1000, features=early, model=MODEL).stop
    assert decide_stop(bad, 0.0, step=10, total_steps=1000, model=MODEL).stop  # an impossible target
    kw = dict(total_steps=1000, features=early, model=MODEL)
    assert not decide_stop(bad, 3.0, step=99, min_fraction=0.1, **kw).stop  # type: ignore[arg-type]
    assert decide_stop(bad, 3.0, step=100, min_fraction=0.1, **kw).stop  # type: ignore[arg-type]
    assert not decide_stop(bad, 3.0, step=300, min_steps=400, **kw).stop  # type: ignore[arg-type]
    # at the last step there is nothing left to save, and a stop would throw a finished result away
    last = decide_stop(bad, 3.0, step=1000, **kw)  # type: ignore[arg-type]
    assert not last.stop and last.reason == "the run has reached its last step (1000)"


def test_status_reference_and_forecast_only() -> None:
    bad = one_point(9.0, 0.01)
    assert not decide_stop(bad, None, step=900, total_steps=1000, model=MODEL).stop
    assert not decide_stop(None, 3.0, step=900, total_steps=1000, model=MODEL).stop
    for status in (FitStatus.INSUFFICIENT_DATA, FitStatus.FAILED):
        assert not decide_stop(
            one_point(9.0, 0.01, status), 3.0, step=900, total_steps=1000, model=MODEL
        ).stop
    unid = one_point(9.0, 0.01, FitStatus.ANNEALING_UNIDENTIFIED)
    assert decide_stop(unid, 3.0, step=900, total_steps=1000, model=MODEL).stop
    # a run off its law: its widened band is no forecast the error was measured on, however far off it is
    off = one_point(9.0, 0.01, FitStatus.LAW_VIOLATED).model_copy(update={"stop_features": TESTED})
    d = decide_stop(off, 3.0, step=900, total_steps=1000, model=MODEL)
    assert not d.stop and "left the fitted law" in d.reason
    # a forecast the law check could not judge yet (too few losses after the LR peak): no stop, however far
    unjudged = TESTED.model_copy(update={"law_checked": False})
    d = decide_stop(bad, 3.0, step=900, total_steps=1000, features=unjudged, model=MODEL)
    assert not d.stop and "check the law" in d.reason
    assert decide_stop(bad, 3.0, step=900, total_steps=1000, features=TESTED, model=MODEL).stop
    # a forecast whose own band reaches below zero at the confidence asked (9 +- 5: z_0.98 * 5 = 10.3 > 9)
    # cannot tell the final loss, whatever its mean; at 0.9 (z = 1.28) the same band stays above zero
    wide = one_point(9.0, 5.0)
    d = decide_stop(wide, 3.0, step=900, total_steps=1000, features=TESTED, model=MODEL)
    assert not d.stop and "reaches below zero" in d.reason
    assert decide_stop(
        wide, 3.0, step=900, total_steps=1000, features=TESTED, model=MODEL, confidence=0.9
    ).stop
    assert decide_stop(wide, 0.0, step=900, total_steps=1000, features=TESTED, model=MODEL).stop  # impossible
    # without features the rule reads the forecast alone, at the wider fallback scale
    d = decide_stop(one_point(3.5, 0.1), 3.0, step=500, total_steps=1000, model=MODEL)
    assert d.scale == pytest.approx(0.1) and not d.stop
    # more confidence than 100 groups can certify: never a stop, and the reason says why
    d = decide_stop(one_point(9.0, 0.01), 3.0, step=900, total_steps=1000, model=MODEL, confidence=0.995)
    assert not d.stop and "can certify" in d.reason
    with pytest.raises(ValueError):
        decide_stop(bad, 3.0, step=900, total_steps=1000, confidence=1.0)


def test_one_default_confidence() -> None:
    import inspect

    from scaleforecast.integrations.optuna import ForecastPruner
    from scaleforecast.integrations.session import TrainingSession

    from scaleforecast import StopConfig

    assert StopConfig().confidence == DEFAULT_CONFIDENCE
    for f in (
        decide_stop,
        decide_stop_in_sweep,
        SweepStopper.__init__,
        TrainingSession.__init__,
        ForecastPruner.__init__,
    ):
        assert inspect.signature(f).parameters["confidence"].default == DEFAULT_CONFIDENCE


def test_shipped_model_is_the_default() -> None:
    # a forecast alone reads the model's widest scale: only a target far out of reach is stopped
    only = features_from_forecast(one_point(3.0, 0.01))
    assert only is not None
    d = decide_stop(one_point(3.0, 0.01), 0.5, step=500, total_steps=1000)
    assert d.stop and d.scale == pytest.approx(load_error_model().scale(only))
    assert not decide_stop(one_point(3.0, 0.01), 3.1, step=500, total_steps=1000).stop
    # a bare forecast is read where its fit was made, and the reason says the scale is the fallback's
    late = decide_stop(one_point(4.0, 0.02), 3.0, step=900, total_steps=1000)
    assert late.scale == pytest.approx(load_error_model().scale(only))
    assert "it is 33.33 % above it, >= " in late.reason
    assert "error measured for forecasts made at 10 % of a run (without the run's record" in late.reason
    carried = one_point(4.0, 0.02).model_copy(update={"stop_features": TESTED})
    assert decide_stop(carried, 3.0, step=900, total_steps=1000, model=MODEL).scale == pytest.approx(0.02)


def test_sweep_reference_rules() -> None:
    z80 = 0.8416212335729143
    recs = [
        _rec("self", loss=1.0, std=0.0, status="ok"),  # excluded: the asking run
        _rec("fin", state=RunState.FINISHED, final_loss=3.2),
        _rec("stopped", state=RunState.STOPPED, final_loss=1.5, loss=1.5, std=0.0, status="ok"),
        _rec("run", loss=3.0, std=0.1, status="ok"),
        _rec("nofit", loss=2.0, std=0.0, status="insufficient_data"),
        _rec("fin_nan", state=RunState.FINISHED, final_loss=None),
    ]
    ref = sweep_reference(recs, exclude="self", now=1000.0)
    assert ref == pytest.approx(3.0 + z80 * 0.1)
    # a run off its law publishes its widened band, but nobody is measured against it
    assert sweep_reference([_rec("off", loss=1.0, std=0.0, status="law_violated")]) is None
    assert sweep_reference(recs, exclude="self", quantile=0.5) == pytest.approx(3.0)
    assert sweep_reference(recs, exclude="self", target=2.5) == 2.5
    assert sweep_reference(recs, exclude="self", target=3.9) == pytest.approx(3.0 + z80 * 0.1)
    # a stale running record (run died) stops counting; the finished one remains
    assert sweep_reference(recs, exclude="self", max_age_s=10, now=2000.0) == 3.2
    assert sweep_reference([], exclude="self") is None
    assert sweep_reference(recs[:1], exclude="self") is None
    # a first forecast too vague to stop its own run (its band reaches below zero at the stop's confidence)
    # sets no bar: 0.87 +- 0.71, for a run that ended at 2.56, stopped a sweep's best run at 2.30
    vague = _rec("vague", loss=0.87, std=0.707, status="annealing_unidentified")
    assert sweep_reference([vague]) is None
    assert sweep_reference([vague], confidence=0.8) == pytest.approx(0.87 + z80 * 0.707)
    assert sweep_reference([*recs, vague], exclude="self") == pytest.approx(3.0 + z80 * 0.1)
    with pytest.raises(ValueError):
        sweep_reference(recs, quantile=1.0)


def test_sweep_reference_with_the_error_model() -> None:
    recs = [
        _rec("run", step=500, total_steps=1000, loss=3.0, std=0.01, status="ok"),
        _rec("fin", state=RunState.FINISHED, final_loss=3.5),
    ]
    k = MODEL.optimistic_margin(0.8)
    assert k == pytest.approx(3.0)
    # without the run's published features: the model's conservative fallback (10 %)
    assert sweep_reference(recs, model=MODEL) == pytest.approx(3.5)  # 3 * exp(0.3) = 4.05 > 3.5
    # the features the run published with its forecast: the model's scale of them (a tested run: 2 %)
    published = [recs[0].model_copy(update={"features": TESTED}), recs[1]]
    assert sweep_reference(published, model=MODEL) == pytest.approx(3.0 * math.exp(0.06))
    # the floor widens every scale
    assert sweep_reference(published[:1], model=MODEL, rel_std_floor=0.05) == pytest.approx(
        3.0 * math.exp(0.15)
    )


def test_decide_stop_in_sweep_publishes_and_compares(tmp_path: Path) -> None:
    reg = SQLiteRegistry("sweep", tmp_path / "r.sqlite")
    # the first run alone has nothing to beat, but its forecast becomes visible to the others
    d = decide_stop_in_sweep(one_point(3.0, 0.02), reg, "good", step=500, total_steps=1000)
    assert not d.stop and reg.get("good").loss == 3.0  # type: ignore[union-attr]
    d = decide_stop_in_sweep(
        one_point(5.0, 0.05), reg, "bad", step=500, total_steps=1000, model=MODEL, features=TESTED
    )
    # the running run counts at its measured optimistic margin (quantile 0.8 of 100 groups: the 81st of 101, 3
    # scales) of its fallback scale (10 %)
    assert d.stop and d.reference == pytest.approx(3.0 * math.exp(3.0 * 0.1), abs=1e-4)
    # the good run is not stopped by the worse one
    d = decide_stop_in_sweep(one_point(3.0, 0.02), reg, "good", step=600, total_steps=1000, model=MODEL)
    assert not d.stop
    # an unusable forecast is not published and never stops the run
    d = decide_stop_in_sweep(one_point(9.0, 0.0, FitStatus.FAILED), reg, "nofit", step=600, total_steps=1000)
    assert not d.stop and reg.get("nofit") is None
