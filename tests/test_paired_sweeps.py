"""The paired-sweeps measurement: the gap errors it learns from, its scales, its threshold and its rule."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import paired_sweeps as ps
import sweep_replay as sr
from test_sweep_replay import _trace

from scaleforecast.calibration import ErrorModel, ErrorTail
from scaleforecast.evidence import PHASES


def test_gap_errors_are_taken_while_both_runs_run() -> None:
    # a's forecasts 2 % too high throughout, b's exact; b is twice as long
    a, b = _trace("a", 1000, 3.0), _trace("b", 2000, 3.3)
    a.fc_loss = a.fc_loss * math.exp(0.02)
    pairs = ps.pair_errors(sr.Sweep("s", [a, b]))
    ab = [p for p in pairs if p[:2] == (0, 1)]
    ba = [p for p in pairs if p[:2] == (1, 0)]
    # a against b from b's first forecast (step 200) to a's last checkpoint before its end; b against a only
    # while a still runs (to step 800)
    assert len(ab) == 8 and all(abs(e - 0.02) < 1e-12 for *_, e in ab)
    assert len(ba) == 4 and all(abs(e + 0.02) < 1e-12 for *_, e in ba)
    assert [round(f, 1) for _, _, f, _ in ab] == [round(0.1 * k, 1) for k in range(2, 10)]


def test_scales_and_threshold() -> None:
    # ten sweeps of one pair each, gap errors 1..10 % in the first tenth of the run, nothing later
    pairs = {f"s{n}": [(0, 1, 0.05, 0.01 * (n + 1))] for n in range(10)}
    scale = ps.learn_scales(pairs)
    # the 0.9 quantile of 1..10 %, and the empty bins take the widest
    assert np.allclose(scale, 0.09)
    # run-pair maxima Z = 1/9 .. 10/9; with 10 sweeps the k-th smallest holds at confidence k / 11
    assert ps.threshold(pairs, scale, 0.5) == pytest.approx(6 / 9)
    assert ps.threshold(pairs, scale, 0.9) == pytest.approx(10 / 9)
    assert math.isinf(ps.threshold(pairs, scale, 0.95))  # 10 sweeps certify at most 10 / 11


def test_paired_rule_stops_a_run_its_running_sibling_beats() -> None:
    model = ErrorModel(
        fraction_edges=[0.0, 1.0],
        table={**{c: [1.0] for c in PHASES}, "unproven": [1.0]},  # the lone rule never stops here
        fallback=[1.0],
        upper=ErrorTail(values=[1.0], weights=[1.0]),
        lower=ErrorTail(values=[1.0], weights=[1.0]),
    )
    sweep = sr.Sweep("s", [_trace("good", 1000, 3.0), _trace("bad", 1000, 3.3)])
    rule = ps.PairedRule("paired", lambda key: model, {"s": (np.full(10, 0.01), 2.0)}, 0.5)
    out = sr.replay(sweep, rule, [0, 1], workers=0)
    assert out.stopped == 1 and out.best_survived  # log(3.3 / 3.0) = 0.095 > 2 * 1 %
    silent = ps.PairedRule("paired", lambda key: model, {"s": (np.full(10, 0.01), math.inf)}, 0.5)
    assert sr.replay(sweep, silent, [0, 1], workers=0).stopped == 0
