"""The law's areas against brute-force loops, the O(1) accumulator, and the two laws' predictions."""

from __future__ import annotations

import numpy as np
import pytest

from scaleforecast.laws import (
    LAWS,
    AreaAccumulator,
    annealing_area,
    annealing_term,
    forward_area,
    hold_warmup,
    mpl_drop,
)
from scaleforecast.results import LawParams
from scaleforecast.schedules import as_lrs


def _brute(lrs: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    s1, s2, m, out1, out2 = 0.0, 0.0, 0.0, [], []
    for i, lr in enumerate(lrs):
        m = 0.0 if i == 0 else lam * m + (lrs[i - 1] - lr)
        s1 += lr
        s2 += m
        out1.append(s1)
        out2.append(s2)
    return np.array(out1), np.array(out2)


SPECS = [
    "constant:peak=1e-3,warmup=50,total=600",
    "cosine:peak=1e-3,warmup=50,total=600,final=1e-5",
    "linear:peak=2e-3,warmup=0,total=600",
    "wsd:peak=1e-3,warmup=30,total=600,cooldown=0.3,shape=1-sqrt",
    "step:peak=1e-3,warmup=20,total=600,milestones=300/450,gamma=0.3",
    "inv_sqrt:peak=1e-3,warmup=40,total=600",
]


def _lrs(spec: str) -> np.ndarray:
    return as_lrs(spec)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("lam", [0.0, 0.99, 0.999])
def test_areas_match_brute_force(spec: str, lam: float) -> None:
    lrs = _lrs(spec)
    b1, b2 = _brute(lrs, lam)
    np.testing.assert_allclose(forward_area(lrs), b1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(annealing_area(lrs, lam), b2, rtol=1e-9, atol=1e-12)
    _, h2 = _brute(hold_warmup(lrs), lam)
    np.testing.assert_allclose(annealing_area(lrs, lam, "hold"), h2, rtol=1e-9, atol=1e-12)
    # holding the warm-up at the peak removes the negative area the rising LR makes
    assert annealing_area(lrs, lam, "hold").min() >= -1e-15


def test_raw_warmup_makes_s2_negative() -> None:
    lrs = as_lrs("constant:peak=1e-3,warmup=100,total=500")
    assert annealing_area(lrs, 0.999)[-1] < 0
    assert annealing_area(lrs, 0.999, "hold")[-1] == 0.0


def test_accumulator_matches_vectorised_and_resumes() -> None:
    lrs = _lrs(SPECS[3])
    acc = AreaAccumulator(0.995)
    out = [acc.push(lr) for lr in lrs[:250]]
    state = acc.state_dict()
    acc2 = AreaAccumulator()
    acc2.load_state_dict(state)
    out += [acc2.push(lr) for lr in lrs[250:]]
    s1, s2 = np.array(out).T
    np.testing.assert_allclose(s1, forward_area(lrs), rtol=1e-12)
    np.testing.assert_allclose(s2, annealing_area(lrs, 0.995), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError):
        acc2.push(float("nan"))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        annealing_area([1e-3, 1e-3], lam=1.0)
    with pytest.raises(ValueError):
        forward_area([])
    with pytest.raises(ValueError):
        forward_area([1e-3, float("inf")])


def test_tissue_predict_is_the_formula() -> None:
    lrs = _lrs(SPECS[1])
    p = LawParams(L0=2.0, A=0.5, alpha=0.4, C=3.0, lam=0.99)
    steps = np.array([1, 10, 300, 600])
    got = LAWS["tissue"].predict(p, lrs, steps)
    s1 = np.cumsum(lrs)[steps - 1]
    s2 = _brute(lrs, 0.99)[1][steps - 1]
    np.testing.assert_allclose(got, 2.0 + 0.5 * s1**-0.4 - 3.0 * s2, rtol=1e-10)
    assert np.isinf(LAWS["tissue"].predict(p, lrs, [0])[0])
    with pytest.raises(ValueError):
        LAWS["tissue"].predict(p, lrs, [601])


def test_annealing_term_power() -> None:
    lrs = as_lrs("linear:peak=1e-3,warmup=0,total=20000")
    lam = 0.99
    s2 = annealing_area(lrs, lam)
    np.testing.assert_array_equal(annealing_term(lrs, lam, power=1.0), s2)
    t2 = annealing_term(lrs, lam, power=2.0)
    full = lrs.max() / (1 - lam)
    # same full-anneal drop, smaller midway: the drop accelerates towards the end
    assert abs(t2[-1] - s2[-1]) / full < 0.02
    assert t2[10000] < s2[10000]


def _mpl_brute(lrs, t, B, C, beta, gamma, start):
    total = 0.0
    for k in range(start + 1, t + 1):  # update k (1-based) uses lrs[k-1]
        d = lrs[k - 2] - lrs[k - 1]
        if d == 0:
            continue
        sk = lrs[k - 1 : t].sum()
        total += d * (1 - (C * lrs[k - 1] ** -gamma * sk + 1) ** -beta)
    return B * total


def test_mpl_drop_matches_brute_force() -> None:
    lrs = _lrs(SPECS[1])[:300].copy()
    start = int(np.argmax(lrs)) + 1
    steps = np.array([60, 150, 299, 300])
    got = mpl_drop(lrs, steps, B=400.0, C=2.0, beta=0.6, gamma=0.5, start=start, max_blocks=10_000)
    want = [_mpl_brute(lrs, int(t), 400.0, 2.0, 0.6, 0.5, start) for t in steps]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # merged blocks approximate it closely
    approx = mpl_drop(lrs, steps[1:], B=400.0, C=2.0, beta=0.6, gamma=0.5, start=start, max_blocks=32)
    np.testing.assert_allclose(approx, want[1:], rtol=0.02)


def test_mpl_predict_constant_lr_is_power_law() -> None:
    lrs = as_lrs("constant:peak=1e-3,warmup=0,total=500")
    p = LawParams(L0=2.0, A=0.5, alpha=0.5, C=0.0, extra={"B": 300.0, "Cm": 2.0, "beta": 0.5, "gamma": 0.5})
    y = LAWS["mpl"].predict(p, lrs, [100, 500])
    np.testing.assert_allclose(y, 2.0 + 0.5 * (np.array([100, 500]) * 1e-3) ** -0.5)
    assert set(LAWS) == {"tissue", "mpl"}


def test_area_memo_key_is_the_whole_schedule() -> None:
    """Two schedules of equal length and sum that differ only off any strided sample get their own areas."""
    from scaleforecast.laws import schedule_areas

    a = as_lrs("cosine:peak=1e-3,warmup=100,total=200000")
    b = a.copy()
    b[12_345] += 1e-4
    b[12_346] -= 1e-4
    assert a.sum() == pytest.approx(b.sum(), rel=0, abs=1e-15)
    s1a, s2a = schedule_areas(a, 0.999, "hold")
    s1b, s2b = schedule_areas(b, 0.999, "hold")
    assert s1b[12_344] == s1a[12_344] and s1b[12_345] != s1a[12_345]
    np.testing.assert_array_equal(s2b, annealing_term(b, 0.999, "hold"))
    # the same schedule again (another array) is served from the memo
    assert schedule_areas(a.copy(), 0.999, "hold")[1] is s2a
