"""The law's areas against brute-force loops, their memo, and the two laws' predictions."""

from __future__ import annotations

import numpy as np
import pytest

from scaleforecast.laws import (
    LAWS,
    annealing_area,
    annealing_prefix,
    forward_area,
    hold_warmup,
    memory_of,
    mixed_annealing_area,
    mpl_drop,
    run_memory,
    schedule_areas,
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


def test_annealing_memory_is_exact_on_long_runs_and_extreme_decays() -> None:
    """The memory ``m_i = lam * m_{i-1} + d_i`` is summed in blocks (``lam^-k`` rescaled per block): against the
    recurrence stepped one update at a time, on a 300k-step schedule with a noisy LR, for decays from none to
    almost none (blocks of one update to one block)."""
    from scaleforecast.laws import _decaying_sum

    rng = np.random.default_rng(0)
    d = rng.normal(size=300_000) * 1e-3
    d[::5] = 0.0
    for lam in (0.0, 1e-9, 0.3, 0.9, 0.98, 0.9999, 1 - 1e-12):
        want = np.empty_like(d)
        m = 0.0
        for i, v in enumerate(d.tolist()):
            m = lam * m + v
            want[i] = m
        np.testing.assert_allclose(
            _decaying_sum(d, lam), want, rtol=0, atol=1e-12 * np.abs(want).max() + 1e-18
        )
    assert _decaying_sum(np.zeros(0), 0.5).size == 0


def test_the_fitter_loads_on_the_worker_and_never_imports_scipy_signal() -> None:
    """The first refit of a process imported scipy.signal (for one filter) and scipy.optimize inside the fit, 0.5 s
    (0.8 s on a loaded machine) that the training thread waited out at its second flush. S2 needs no scipy.signal,
    and a background forecaster loads the optimizers on its worker when its schedule is set
    (``benchmarks/refit_latency.py first``)."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster\n"
        "from scaleforecast.background import refit_worker\n"
        "fc = OnlineForecaster('cosine:peak=1e-3,warmup=20,total=400', ForecasterConfig(background=True))\n"
        "refit_worker().submit(lambda: None).result()\n"
        "loaded = 'scipy.optimize' in sys.modules\n"
        "s = np.arange(1, 101)\n"
        "fc.observe_many(s, 2.0 + 3.0 * s**-0.3)\n"
        "fc.refit()\n"
        "print(loaded, 'scipy.signal' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr


def test_raw_warmup_makes_s2_negative() -> None:
    lrs = as_lrs("constant:peak=1e-3,warmup=100,total=500")
    assert annealing_area(lrs, 0.999)[-1] < 0
    assert annealing_area(lrs, 0.999, "hold")[-1] == 0.0


def test_memo_is_keyed_on_the_whole_schedule() -> None:
    """Two schedules of equal length and equal sum that differ on a few steps only (none of them at a stride
    of a sample, none in the tail) get their own areas, not each other's."""
    lrs = as_lrs("cosine:peak=1e-3,warmup=100,total=100000,final=1e-5")
    other = lrs.copy()
    other[40_001] += 2e-4  # a move of LR between two neighbouring steps keeps the sum
    other[40_002] -= 2e-4
    s1, s2 = schedule_areas(lrs, 0.999, "hold")
    o1, o2 = schedule_areas(other, 0.999, "hold")
    np.testing.assert_array_equal(o1, forward_area(other))
    np.testing.assert_array_equal(o2, annealing_area(other, 0.999, "hold"))
    assert o1[40_001] != s1[40_001] and o2[-1] != s2[-1]
    # the memo hands back the same read-only arrays for the same schedule, and the prefix sums match them
    again = schedule_areas(lrs.copy(), 0.999, "hold")
    assert again[0] is s1 and not s1.flags.writeable
    np.testing.assert_allclose(annealing_prefix(lrs, 0.999, "hold")[1:], np.cumsum(s2))


def test_two_timescale_memory() -> None:
    """The run's memory has time constants that are fractions of its length; the mixed S2 is the weighted sum
    of single memories, each scaled to the full-anneal value of the nominal lam."""
    (lf, wf), (ls, ws) = run_memory(20000)
    assert lf == pytest.approx(1 - 1 / 100) and ls == pytest.approx(1 - 1 / 20000) and wf == ws == 0.5
    assert run_memory(50)[0][0] == 0.0  # a time constant under one update: no memory at all
    lrs = _lrs(SPECS[3])
    mem = ((0.9, 0.3), (0.995, 0.7))
    want = (
        0.3 * 0.1 / 1e-3 * _brute(hold_warmup(lrs), 0.9)[1]
        + 0.7 * 0.005 / 1e-3 * _brute(hold_warmup(lrs), 0.995)[1]
    )
    np.testing.assert_allclose(mixed_annealing_area(lrs, mem, 0.999, "hold"), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(
        schedule_areas(lrs, 0.999, "hold", mem)[1], mixed_annealing_area(lrs, mem, 0.999, "hold")
    )
    # a settled decay to (almost) zero reaches the full-anneal value lr_peak / (1 - lam) whatever the memory
    down = as_lrs("wsd:peak=1e-3,warmup=0,total=4000,cooldown=0.5,shape=linear,final=0")
    down = np.concatenate([down, np.full(20000, 1e-11)])
    full = mixed_annealing_area(down, ((0.99, 0.5), (0.999, 0.5)), 0.999)[-1]
    assert full == pytest.approx(1e-3 / (1 - 0.999), rel=1e-6)
    # the law carries its memory in its parameters
    p = LawParams(
        L0=2.0, A=0.5, alpha=0.4, C=3.0, extra={"lam_fast": 0.9, "lam_slow": 0.995, "mix_fast": 0.3}
    )
    assert memory_of(p) == mem and memory_of(p.model_copy(update={"extra": {}})) is None
    steps = np.array([10, 300, 600])
    got = LAWS["tissue"].predict(p, lrs, steps)
    s2 = mixed_annealing_area(lrs, mem, 0.999)[steps - 1]
    np.testing.assert_allclose(got, 2.0 + 0.5 * np.cumsum(lrs)[steps - 1] ** -0.4 - 3.0 * s2, rtol=1e-10)


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


def test_registered_plan_is_memoised_by_identity_and_others_by_content():
    from scaleforecast import laws

    lrs = np.linspace(1e-3, 1e-5, 5000)
    plan = lrs.copy()
    laws.register_plan(plan)
    view = plan.view()
    view.flags.writeable = False
    assert laws._frozen_key(plan) is not None and laws._frozen_key(view) == laws._frozen_key(plan)
    assert laws._frozen_key(lrs) is None  # anyone may write it: fingerprinted instead
    s1, s2 = laws.schedule_areas(plan, 0.999, "hold")
    assert laws.schedule_areas(view, 0.999, "hold")[0] is s1  # the same memo entry
    np.testing.assert_allclose(s1, laws.forward_area(lrs))
    np.testing.assert_allclose(s2, laws.annealing_area(lrs, 0.999, "hold"))
    with pytest.raises(ValueError, match="owns its memory"):
        laws.register_plan(view)


def test_areas_memo_is_safe_across_threads():
    import threading

    from scaleforecast import laws

    schedules = [np.linspace(1e-3, 1e-5 * (k + 1), 3000) for k in range(12)]  # more than the memo holds
    expected = [laws.forward_area(s)[-1] for s in schedules]
    errors: list[BaseException] = []

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for k in rng.integers(0, len(schedules), 300):
                s1, _ = laws.schedule_areas(schedules[k], 0.999, "hold")
                assert s1[-1] == pytest.approx(expected[k])
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_an_update_at_lr_zero_is_no_time_for_the_annealing_area() -> None:
    """An update at LR 0 moves no weight, so the law's areas hold through it: a tail of zeros (a scheduler built
    for fewer updates than the run makes) does not keep lowering the loss, and a paused schedule's memory
    resumes where it stopped. Without the rule S2 went on growing through the zeros (by 24 % of the full-anneal
    value over 20000 zeros after a linear cooldown)."""
    mem = ((0.99, 0.5), (0.999, 0.5))
    down = as_lrs("wsd:peak=1e-3,warmup=0,total=4000,cooldown=0.5,shape=linear,final=0")
    s2 = mixed_annealing_area(down, mem, 0.999)
    tail = mixed_annealing_area(np.concatenate([down, np.zeros(20000)]), mem, 0.999)
    np.testing.assert_array_equal(tail[:4000], s2)
    assert np.all(tail[4000:] == s2[-1])
    assert np.all(forward_area(np.concatenate([down, np.zeros(5)]))[-6:] == forward_area(down)[-1])
    # a pause in the middle: the areas after it are those of the schedule without the pause
    lrs = as_lrs("cosine:peak=1e-3,warmup=50,total=600,final=1e-5")
    paused = np.concatenate([lrs[:300], np.zeros(100), lrs[300:]])
    for warm in ("raw", "hold"):
        got = annealing_area(paused, 0.99, warm)  # type: ignore[arg-type]
        want = annealing_area(lrs, 0.99, warm)  # type: ignore[arg-type]
        np.testing.assert_allclose(got[:300], want[:300], rtol=1e-12)
        assert np.all(got[300:400] == want[299])
        np.testing.assert_allclose(got[400:], want[300:], rtol=1e-9)
    # the idle rule is relative to the schedule's peak: LRs a trillion times smaller are the same schedule (an
    # absolute threshold would call every update idle)
    np.testing.assert_allclose(
        annealing_area(paused * 1e-12, 0.99) / 1e-12, annealing_area(paused, 0.99), rtol=1e-9
    )
    assert np.all(annealing_area(np.zeros(10), 0.99) == 0.0)
