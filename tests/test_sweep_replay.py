"""The sweep-replay benchmark's own logic: the event clock, the metrics, the policies, and real curves."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import sweep_replay as sr
from forecasts import one_point

from scaleforecast.calibration import ErrorModel, ErrorTail
from scaleforecast.decision import DEFAULT_CONFIDENCE
from scaleforecast.evidence import PHASES, StopFeatures

N_CK = 10


def _trace(key: str, total: int, final: float, start: float = 4.0, std: float = 0.01) -> sr.RunTrace:
    """A synthetic run whose forecast is exact (``final``) and whose raw loss falls from ``start``."""
    steps = (np.arange(1, N_CK + 1) * total) // N_CK
    raw = final + (start - final) * (1.0 - steps / total) ** 2
    return sr.RunTrace(
        key=key,
        total_steps=total,
        final=final,
        steps=steps,
        raw=raw,
        fc_loss=np.full(N_CK, final),
        fc_std=np.full(N_CK, std),
        fc_status=["ok"] * N_CK,
        nni=np.full(N_CK, final),
    )


class StopAt(sr.NoStop):
    """Stops run ``victim`` at checkpoint ``k``; records the order in which runs were started."""

    name = "stop-at"

    def __init__(self, victim: int, k: int) -> None:
        self.victim, self.k = victim, k
        self.started: list[int] = []

    def start(self, i: int) -> None:
        self.started.append(i)

    def check(self, i: int, k: int) -> bool:
        return i == self.victim and k == self.k


def test_no_stop_and_accounting() -> None:
    sweep = sr.Sweep("s", [_trace("a", 1000, 3.0), _trace("b", 2000, 3.5), _trace("c", 1000, 3.2)])
    out = sr.replay(sweep, sr.NoStop(), [0, 1, 2], workers=0)
    assert (out.steps_used, out.steps_total, out.best_survived, out.regret, out.stopped) == (
        4000,
        4000,
        True,
        0.0,
        0,
    )
    pol = StopAt(victim=1, k=2)  # run b stops at its 3rd checkpoint: 600 of 2000 steps
    out = sr.replay(sweep, pol, [2, 1, 0], workers=1)
    assert out.steps_used == 1000 + 600 + 1000 and out.stopped == 1 and out.best_survived
    assert pol.started == [2, 1, 0]
    # stopping the true best gives a regret equal to the gap to the best survivor
    out = sr.replay(sweep, StopAt(victim=0, k=0), [0, 1, 2], workers=0)
    assert not out.best_survived and out.regret == pytest.approx(0.2)
    s = sr.summarise("x", [out, sr.replay(sweep, sr.NoStop(), [0, 1, 2], workers=0)])
    assert (
        s.best_kept == 0.5
        and s.near_best_kept == 0.5
        and s.saved == pytest.approx(1 - (3100 + 4000) / 8000)
        and s.max_regret == pytest.approx(0.2)
    )


def test_workers_share_a_clock() -> None:
    """With 2 workers the third run starts when the first one ends (or is stopped)."""
    sweep = sr.Sweep("s", [_trace("a", 1000, 3.0), _trace("b", 3000, 3.1), _trace("c", 1000, 3.3)])
    view_states: list[list[str]] = []

    class Spy(sr.NoStop):
        def check(self, i: int, k: int) -> bool:
            if i == 2 and k == 0:
                view_states.append(list(self.view.state))
            return False

    sr.replay(sweep, Spy(), [0, 1, 2], workers=2)
    # when c reaches its first checkpoint (t = 1000 + 100), a has finished and b is still running
    assert view_states == [["finished", "running", "running"]]


def test_a_run_borrows_only_after_its_sibling_finished() -> None:
    """A warm trace is followed by a run that starts after its sibling ran to its end in the sweep."""
    a, b = _trace("a", 1000, 3.0), _trace("b", 1000, 3.8)
    b.warm = _trace("b", 1000, 3.8, std=0.001)
    b.warm.steps = b.warm.steps - 50  # tells the traces apart by the steps trained
    b.warm.meta["sibling"] = "a"
    sweep = sr.Sweep("s", [a, b])
    assert sr.replay(sweep, sr.NoStop(), [0, 1], workers=1, warm=True).steps_used == 1000 + 950
    # started before its sibling finished, or replayed cold: the cold trace
    assert sr.replay(sweep, sr.NoStop(), [0, 1], workers=2, warm=True).steps_used == 2000
    assert sr.replay(sweep, sr.NoStop(), [0, 1], workers=1).steps_used == 2000
    # a sibling stopped early is no finished run to borrow from
    assert sr.replay(sweep, StopAt(victim=0, k=3), [0, 1], workers=1, warm=True).steps_used == 400 + 1000


def test_forecast_rule_stops_the_hopeless_run_only() -> None:
    sweep = sr.Sweep("s", [_trace("good", 1000, 3.0), _trace("close", 1000, 3.005), _trace("bad", 1000, 3.8)])
    rule = sr.ForecastRule(confidence=0.95, min_fraction=0.2)
    out = sr.replay(sweep, rule, [0, 1, 2], workers=0)
    assert out.best_survived and out.stopped == 1 and out.regret == 0.0
    # the bad run stops at its 2nd checkpoint (20 % = the grace period): 200 of 1000 steps
    assert out.steps_used == 1000 + 1000 + 200
    # a relative std floor makes the close call undecidable but keeps the hopeless one stoppable
    out = sr.replay(sweep, sr.ForecastRule(rel_std_floor=0.02, min_fraction=0.2), [0, 1, 2], workers=0)
    assert out.stopped == 1


def _features(trace: sr.RunTrace) -> sr.RunTrace:
    """The trace with features of a run that has tested itself (its LR decaying linearly to zero, a perfect
    backtest)."""
    fractions = [s / trace.total_steps for s in trace.steps]
    trace.features = [
        StopFeatures(fraction=f, decay_seen=f, decay_ahead=1.0 - f, backtest=0.0) for f in fractions
    ]
    return trace


MODEL = ErrorModel(
    fraction_edges=[0.0, 1.0],
    table={**{c: [0.01] for c in PHASES}, "unproven": [0.1]},
    fallback=[0.2],
    upper=ErrorTail(values=[0.5, 1.0, 2.0], weights=[40.0, 40.0, 40.0]),
    lower=ErrorTail(values=[0.5, 1.0, 2.0], weights=[40.0, 40.0, 40.0]),
)


def test_calibrated_rule_and_oracle() -> None:
    runs = [_features(_trace(k, 1000, f)) for k, f in (("good", 3.0), ("close", 3.005), ("bad", 3.8))]
    sweep = sr.Sweep("s", runs)
    rule = sr.CalibratedRule("calibrated", lambda key: MODEL, confidence=0.9)
    out = sr.replay(sweep, rule, [0, 1, 2], workers=1)
    # run by run: the bad one is stopped at its first checkpoint once the good one has finished
    assert out.best_survived and out.stopped == 1 and out.steps_used == 1000 + 1000 + 100
    # fed only what a forecast carries, the scale is 20 %: the hopeless run is not hopeless enough
    blind = sr.CalibratedRule("blind", lambda key: MODEL, confidence=0.9, forecast_only=True)
    assert sr.replay(sweep, blind, [0, 1, 2], workers=1).stopped == 0
    oracle = sr.replay(sweep, sr.Oracle(0.0), [0, 1, 2], workers=0)
    assert oracle.best_survived and oracle.stopped == 2 and oracle.steps_used == 1000 + 100 + 100
    assert sr.replay(sweep, sr.Oracle(0.01), [0, 1, 2], workers=0).stopped == 1


@pytest.mark.slow
def test_optuna_and_nni_policies_run() -> None:
    pytest.importorskip("optuna")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sweep = sr.Sweep(
        "s",
        [_features(_trace(k, 1000, f)) for k, f in (("a", 3.0), ("b", 3.6), ("c", 3.9), ("d", 3.1))],
    )
    rows = sr.run_benchmark([sweep], sr.default_policies(N_CK, shipped=MODEL), workers=1, orders=2)
    by = {r.policy: r for r in rows}
    assert by["no stopping"].saved == 0.0 and by["no stopping"].best_kept == 1.0
    # with exact forecasts the calibrated rule saves steps without losing the best, as the rule before did
    rule = by[f"calibrated (conf {DEFAULT_CONFIDENCE:g}, shipped model)"]
    assert rule.saved > 0.2 and rule.best_kept == 1.0
    assert by["before: normal rule (conf 0.95, floor 0 %)"].best_kept == 1.0
    assert by["oracle (ceiling)"].saved == pytest.approx(1 - (1000 + 3 * 100) / 4000)
    # through Optuna the trials carry their stop features: the pruner saves what bare forecasts cannot
    pruner, bare = (
        by["optuna ForecastPruner (calibrated)"],
        by["optuna ForecastPruner (calibrated, forecast only)"],
    )
    assert pruner.saved > bare.saved and pruner.best_kept == 1.0
    nni = by["nni curvefit (x1)"]
    assert nni.saved > 0 and nni.best_kept == 1.0
    assert "inside 80 % band" in sr.calibration(sweep.runs)
    # b and c are > 5 % above the best, d is 3.3 % above: 3 of 4 runs beyond 2 %, 2 of 4 beyond 5 %
    assert "| 2 % | 75 % | 75 % |" in sr.headroom([sweep]) and "| 5 % | 50 % | 50 % |" in sr.headroom([sweep])
    text = sr.table("t", rows)
    assert text.count("\n|") == len(rows) + 2  # header, rule, one line per policy


def test_powerlaw_extrapolation() -> None:
    t = np.arange(100, 2001, 100, dtype=float)
    y = 2.0 + 3.0 * (t / 100) ** -0.5
    assert sr._powerlaw_extrapolate(t, y, 8000.0) == pytest.approx(2.0 + 3.0 * 80**-0.5, rel=1e-3)
    assert math.isnan(sr._powerlaw_extrapolate(t[:3], y[:3], 8000.0))


def test_sweep_keys_group_runs_that_differ_in_one_thing(curves_dir: Path) -> None:
    from stop_replay import shared_runs

    runs = shared_runs(curves_dir)
    lr = {}
    size = {}
    for r in runs:
        for kind, into in (("lr", lr), ("size", size)):
            k = sr.sweep_key(r, kind)
            if k is not None:
                into.setdefault(k, []).append(r)
    # the 25M / 100M / 400M runs of one schedule form a size sweep; an LR sweep holds one config at several LRs
    assert {r.meta["run_id"] for r in size["mpl/*_cosine_24000"]} == {
        "25M_cosine_24000", "100M_cosine_24000", "400M_cosine_24000",
    }  # fmt: skip
    for members in lr.values():
        if len(members) > 1 and members[0].source == "epfml_schaipp_haegele":
            ids = {sr._LR.sub("_lr*_", r.meta["run_id"].removeprefix("grad_norm__")) for r in members}
            assert len(ids) == 1
    assert any(len({r.meta["peak_lr"] for r in m}) >= 3 for m in lr.values())
    # the committed tiny-model curves hold an LR sweep of one AdamW config
    tiny = lr.get("tiny_adamw/adamw_cos10_2k")
    assert tiny is not None
    assert {r.meta["run_id"] for r in tiny} >= {"adamw_cos10_2k_lr1e-3", "adamw_cos10_2k_lr1e-2"}


@pytest.mark.slow
def test_real_curves_trace_and_group(curves_dir: Path) -> None:
    from stop_replay import replay, shared_runs

    runs = [
        r
        for r in shared_runs(curves_dir)
        if r.source == "mpl_luo2025" and r.key.split("/")[1].startswith("25M_")
    ]
    runs = runs[:3]
    assert len(runs) == 3
    traces = {}
    for r in runs:
        tr = sr.run_trace(r, replay(r), N_CK)
        assert tr is not None
        traces[r.key] = tr
        assert tr.final == r.loss[-1] and tr.total_steps == r.total
        assert list(tr.steps) == sorted(tr.steps) and tr.steps[-1] == r.total and len(tr.steps) <= N_CK + 1
        assert len(tr.fc_status) == len(tr.steps) and tr.features is not None
        # by 90 % of the run the forecast is within a few per cent of the truth
        assert abs(tr.fc_loss[-2] - tr.final) / tr.final < 0.05
        assert np.isfinite(tr.raw).all()
    sweeps = sr.make_sweeps(runs, traces, min_runs=3)
    assert [s.name for s in sweeps] == ["mpl/25M"] and len(sweeps[0].runs) == 3
    out = sr.replay(sweeps[0], sr.NoStop(), [0, 1, 2], workers=0)
    assert out.steps_used == sum(r.total for r in runs)
    # a run replayed warm from a sibling of the sweep follows that trace once the sibling has finished
    from stop_replay import warm_pairs

    run, sibling = warm_pairs(runs, curves_dir)[0]
    warm = sr.run_trace(run, replay(run, sibling=sibling), N_CK)
    assert warm is not None and warm.meta["sibling"] == sibling.key
    traces[run.key].warm = warm
    keys = [r.key for r in sweeps[0].runs]
    i, j = keys.index(run.key), keys.index(sibling.key)
    followed: list[bool] = []

    class Spy(sr.NoStop):
        def check(self, n: int, k: int) -> bool:
            if n == i:
                followed.append(self.view.runs[n] is warm)
            return False

    sr.replay(sweeps[0], Spy(), [j, i, *(set(range(3)) - {i, j})], workers=1, warm=True)
    assert followed and all(followed)


def test_widen_forecast_of_the_before_rule() -> None:
    f = one_point(3.0, 0.003)
    assert sr.widen_forecast(f, 0.0) is f and sr.widen_forecast(None, 0.1) is None
    w = sr.widen_forecast(f, 0.01)
    assert w is not None and w.final is not None
    assert w.final.std == pytest.approx((0.003**2 + 0.03**2) ** 0.5)
    # the band widens by the same factor around the same mean
    assert w.final.loss == 3.0 and w.final.upper - 3.0 == pytest.approx(0.003 * w.final.std / 0.003)
    assert f.final is not None and f.final.std == 0.003  # the original is untouched
    zero = sr.widen_forecast(one_point(2.0, 0.0), 0.01)
    assert zero is not None and zero.final is not None and zero.final.std == pytest.approx(0.02)
    assert zero.final.lower < 2.0 < zero.final.upper
