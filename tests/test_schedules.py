"""Schedules: values at known points, warm-up composition, the string form, and clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from scaleforecast.schedules import (
    MAX_TOTAL_STEPS,
    ConstantSchedule,
    CosineSchedule,
    InvSqrtSchedule,
    LinearSchedule,
    ScheduleError,
    StepSchedule,
    WSDSchedule,
    as_lrs,
    load_lr_file,
    parse_schedule,
    schedule_from_dict,
    validate_lrs,
)

PEAK = 1e-3

ALL = [
    ConstantSchedule(peak=PEAK, total=50, warmup=5),
    CosineSchedule(peak=PEAK, total=50, warmup=5, final=1e-5),
    LinearSchedule(peak=PEAK, total=50, warmup=5),
    WSDSchedule(peak=PEAK, total=50, warmup=5, cooldown=0.2, shape="linear"),
    WSDSchedule(peak=PEAK, total=50, warmup=5, cooldown=0.2, shape="1-sqrt"),
    WSDSchedule(peak=PEAK, total=50, warmup=5, cooldown=0.2, shape="cosine"),
    WSDSchedule(peak=PEAK, total=50, warmup=5, cooldown=0.2, shape="exp", final=1e-5),
    StepSchedule(peak=PEAK, total=50, warmup=5, milestones=[20, 40], gamma=0.5),
    InvSqrtSchedule(peak=PEAK, total=50, warmup=5),
    InvSqrtSchedule(peak=PEAK, total=50, timescale=7),
]


def test_constant_values() -> None:
    lrs = ConstantSchedule(peak=PEAK, total=10).lrs()
    assert lrs.dtype == np.float64 and lrs.shape == (10,)
    np.testing.assert_array_equal(lrs, np.full(10, PEAK))


@pytest.mark.parametrize("sched", ALL, ids=lambda s: s.spec())
def test_warmup_is_linear_and_reaches_peak(sched) -> None:
    lrs = sched.lrs()
    assert lrs.shape == (sched.total,)
    w = sched.warmup
    if w:
        np.testing.assert_allclose(lrs[:w], PEAK * np.arange(1, w + 1) / w)
        assert lrs[w - 1] == pytest.approx(PEAK)
    # The first post-warm-up update runs at peak for every shape.
    assert lrs[w] == pytest.approx(PEAK)
    assert np.all(lrs > 0) and np.all(np.isfinite(lrs))
    validate_lrs(lrs)


def test_cosine_values() -> None:
    s = CosineSchedule(peak=1.0, total=110, warmup=10, final=0.1)
    lrs = s.lrs()
    n = 100
    j = np.array([0, 25, 50, 75, 99])
    expected = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * j / n))
    np.testing.assert_allclose(lrs[10 + j], expected)
    assert lrs[10 + 50] == pytest.approx(0.55)
    assert np.all(np.diff(lrs[10:]) <= 0)


def test_linear_values() -> None:
    lrs = LinearSchedule(peak=1.0, total=100, final=0.0).lrs()
    np.testing.assert_allclose(lrs[[0, 50, 99]], [1.0, 0.5, 0.01])


def test_wsd_cooldown_shapes() -> None:
    total, ncd = 100, 20
    q = np.arange(ncd) / ncd
    lin = WSDSchedule(peak=1.0, total=total, cooldown=0.2, shape="linear").lrs()
    np.testing.assert_array_equal(lin[:80], 1.0)
    np.testing.assert_allclose(lin[80:], 1 - q)
    sq = WSDSchedule(peak=1.0, total=total, cooldown=0.2, shape="1-sqrt", final=0.1).lrs()
    np.testing.assert_allclose(sq[80:], 0.1 + 0.9 * (1 - np.sqrt(q)))
    ex = WSDSchedule(peak=1.0, total=total, cooldown=0.2, shape="exp", final=0.01).lrs()
    np.testing.assert_allclose(ex[80:], 0.01**q)
    assert ex[90] == pytest.approx(0.1)
    co = WSDSchedule(peak=1.0, total=total, cooldown=0.2, shape="cosine").lrs()
    assert co[90] == pytest.approx(0.5)


def test_wsd_with_warmup_keeps_cooldown_at_the_end() -> None:
    s = WSDSchedule(peak=1.0, total=1000, warmup=100, cooldown=0.1)
    lrs = s.lrs()
    assert s.cooldown_steps == 100
    np.testing.assert_array_equal(lrs[100:900], 1.0)
    assert lrs[899] == 1.0 and lrs[900] == 1.0 and lrs[901] < 1.0


def test_step_milestones_follow_multisteplr() -> None:
    lrs = StepSchedule(peak=1.0, total=10, milestones=[3, 7], gamma=0.1).lrs()
    # Updates 1..3 at 1.0, 4..7 at 0.1, 8..10 at 0.01.
    np.testing.assert_allclose(lrs, [1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01])


def test_inv_sqrt_values() -> None:
    s = InvSqrtSchedule(peak=1.0, total=30, warmup=4)
    lrs = s.lrs()
    assert s.tau == 4
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[4 + 12] == pytest.approx(math.sqrt(4 / 16))
    s2 = InvSqrtSchedule(peak=1.0, total=10, timescale=3)
    assert s2.lrs()[3] == pytest.approx(math.sqrt(3 / 6))


@pytest.mark.parametrize("sched", ALL, ids=lambda s: s.spec())
def test_spec_round_trip(sched) -> None:
    back = parse_schedule(sched.spec())
    assert back == sched
    np.testing.assert_array_equal(back.lrs(), sched.lrs())
    assert sched.describe() and "\n" not in sched.describe()


_LR = st.floats(min_value=1e-12, max_value=10.0, allow_nan=False, allow_infinity=False)
_FRACTION = st.floats(min_value=1e-6, max_value=1.0, exclude_min=False)


@st.composite
def _schedules(draw: st.DrawFn) -> object:
    total = draw(st.integers(min_value=2, max_value=10**6))
    warmup = draw(st.integers(min_value=0, max_value=min(total - 1, 5000)))
    peak = draw(_LR)
    final = draw(st.floats(min_value=0.0, max_value=1.0)) * peak
    kind = draw(st.sampled_from(["constant", "cosine", "linear", "wsd", "step", "inv_sqrt"]))
    if kind == "constant":
        return ConstantSchedule(peak=peak, total=total, warmup=warmup)
    if kind == "cosine":
        return CosineSchedule(peak=peak, total=total, warmup=warmup, final=final)
    if kind == "linear":
        return LinearSchedule(peak=peak, total=total, warmup=warmup, final=final)
    if kind == "inv_sqrt":
        return InvSqrtSchedule(
            peak=peak, total=total, warmup=warmup, timescale=draw(st.none() | st.integers(1, 10**6))
        )
    if kind == "step":
        ms = sorted(set(draw(st.lists(st.integers(warmup, total - 1), min_size=1, max_size=5))))
        return StepSchedule(peak=peak, total=total, warmup=warmup, milestones=ms, gamma=draw(_FRACTION))
    room = (total - warmup) / total
    cooldown = draw(st.floats(min_value=min(1.0 / total, room), max_value=room))
    shape = draw(st.sampled_from(["linear", "1-sqrt", "cosine", "exp"]))
    final = max(final, peak * 1e-6) if shape == "exp" else final
    return WSDSchedule(peak=peak, total=total, warmup=warmup, cooldown=cooldown, shape=shape, final=final)


@settings(max_examples=300, deadline=None)
@given(_schedules())
def test_spec_round_trips_exactly(sched) -> None:
    """Every float goes through the string form bit for bit: a fitted schedule read back is the same schedule."""
    assert parse_schedule(sched.spec()) == sched


def test_spec_keeps_full_precision() -> None:
    s = CosineSchedule(peak=0.000312345678901234, total=1000, final=1.0000001e-5)
    assert parse_schedule(s.spec()) == s
    assert "peak=0.000312345678901234" in s.spec()
    assert ConstantSchedule(peak=1e-3, total=10).spec() == "constant:peak=0.001,total=10"
    assert (
        "e-" in CosineSchedule(peak=3e-7, total=10).spec()
        and "e-07" not in CosineSchedule(peak=3e-7, total=10).spec()
    )


def test_total_is_bounded_with_a_clear_message() -> None:
    with pytest.raises(
        ScheduleError, match=r"total: 1000000000000 updates is more than this tool holds in memory"
    ):
        parse_schedule("cosine:peak=1e-3,total=1e12")
    assert ConstantSchedule(peak=1.0, total=MAX_TOTAL_STEPS).total == MAX_TOTAL_STEPS


def test_lr_files_that_are_not_one_lr_per_update(tmp_path) -> None:
    two_d = tmp_path / "2d.npy"
    np.save(two_d, np.full((2, 50), 1e-3))
    with pytest.raises(
        ScheduleError, match=r"LR array must be one-dimensional, got shape \(2, 50\) \(LR file .*2d\.npy\)"
    ):
        load_lr_file(two_d)
    rec = tmp_path / "rec.npy"
    np.save(rec, np.zeros(3, dtype=[("step", "i8"), ("lr", "f8")]))
    with pytest.raises(ScheduleError, match=r"structured array \(fields step, lr\)"):
        load_lr_file(rec)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ScheduleError, match=r"obj\.npy: not a \.npy array"):
        load_lr_file(obj)
    text = tmp_path / "text.npy"
    text.write_text("0.001\n0.001\n")
    with pytest.raises(
        ScheduleError, match=r"text\.npy: not a \.npy array \(no \.npy header: a text or CSV"
    ) as info:
        load_lr_file(text)
    assert str(info.value).count("not a .npy array") == 1  # said once, not wrapped in itself
    strings = tmp_path / "s.npy"
    np.save(strings, np.array(["1e-3", "2e-3"]))
    with pytest.raises(ScheduleError, match="holds <U4 values"):
        load_lr_file(strings)


def test_lr_errors_show_plain_numbers() -> None:
    with pytest.raises(ScheduleError) as info:
        validate_lrs(np.array([1e-3, -1e-3, 1e-3]))
    assert "is -0.001:" in str(info.value) and "np.float64" not in str(info.value)


def test_parse_issue_example_and_aliases() -> None:
    s = parse_schedule("wsd:peak=1e-3,warmup=300,total=25000,cooldown=0.2,shape=linear")
    assert isinstance(s, WSDSchedule)
    assert (s.peak, s.warmup, s.total, s.cooldown, s.shape) == (1e-3, 300, 25000, 0.2, "linear")
    assert isinstance(parse_schedule("cos:peak=1e-3,total=2.5e4"), CosineSchedule)
    assert parse_schedule("cos:peak=1e-3,total=2.5e4").total == 25000
    assert isinstance(parse_schedule("invsqrt:peak=1e-3,total=100"), InvSqrtSchedule)
    assert parse_schedule("multistep:peak=1,total=100,milestones=50").milestones == [50]
    assert parse_schedule("wsd:peak=1,total=100,cooldown=0.1,shape=1-sqrt").shape == "1-sqrt"
    assert parse_schedule(" Constant : peak = 2e-4 , total = 7 ".replace(" ", "")).total == 7


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("cosine", "kind:key=value"),
        ("banana:peak=1,total=3", "unknown schedule kind 'banana'"),
        ("wsd:peak=1e-3,total=100", "cooldown: Field required"),
        ("cosine:peak=-1,total=10", "peak: Input should be greater than 0"),
        ("cosine:peak=nan,total=10", "peak: Input should be a finite number"),
        ("cosine:peak=1e-3,total=10.5", "total"),
        ("cosine:peak=1e-3,total=10,warmup=10", "warmup (10) must be smaller than total (10)"),
        ("cosine:peak=1e-3,total=10,bogus=3", "unknown key 'bogus'"),
        ("cosine:peak=1e-3,total=10,final=1", "must not exceed peak"),
        ("cosine:peak=1e-3,total=10,peak=2", "given twice"),
        ("cosine:peak=1e-3,total", "not key=value"),
        ("step:peak=1,total=10,milestones=5/3", "strictly increasing"),
        ("step:peak=1,total=10,milestones=10", "milestones must lie in"),
        ("step:peak=1,total=10,milestones=5,gamma=0", "gamma"),
        ("wsd:peak=1e-3,total=100,cooldown=0.2,shape=exp", "needs final > 0"),
        ("wsd:peak=1e-3,total=100,cooldown=1.5", "cooldown"),
        ("wsd:peak=1e-3,total=100,cooldown=0.2,shape=square", "shape"),
        ("wsd:peak=1e-3,total=100,warmup=90,cooldown=0.2", "does not fit"),
    ],
)
def test_bad_specs_give_clear_errors(spec: str, needle: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(spec)
    text = str(info.value)
    assert needle in text
    assert "\n" not in text


def test_direct_construction_rejects_nonsense() -> None:
    with pytest.raises(ValidationError, match="warmup"):
        CosineSchedule(peak=1e-3, total=5, warmup=7)
    with pytest.raises(ValidationError):
        ConstantSchedule(peak=0.0, total=5)
    with pytest.raises(ValidationError):
        StepSchedule(peak=1.0, total=5, milestones=[])


def test_schedule_from_dict() -> None:
    s = schedule_from_dict({"kind": "linear", "peak": 1.0, "total": 4})
    assert isinstance(s, LinearSchedule)
    with pytest.raises(ScheduleError, match="unknown schedule kind"):
        schedule_from_dict({"peak": 1.0, "total": 4})


def test_validate_lrs_rules() -> None:
    np.testing.assert_array_equal(validate_lrs([0.0, 1e-4, 2e-4]), [0.0, 1e-4, 2e-4])
    # zeros before the first positive LR (a warm-up from 0) and after the last (a decay that reaches 0 early)
    np.testing.assert_array_equal(
        validate_lrs([0, 0, 1e-4, 2e-4, 1e-4, 0, 0, 0]), [0, 0, 1e-4, 2e-4, 1e-4, 0, 0, 0]
    )
    with pytest.raises(ScheduleError, match=r"index 0"):
        validate_lrs([0.0, 0.0])
    with pytest.raises(ScheduleError, match="empty"):
        validate_lrs([])
    with pytest.raises(ScheduleError, match=r"index 2 \(update 3\)"):
        validate_lrs([1e-3, 1e-3, 0.0, 1e-3])
    with pytest.raises(ScheduleError, match=r"index 1 \(update 2\).*finite"):
        validate_lrs([1e-3, np.nan, -1.0])
    with pytest.raises(ScheduleError, match=r"index 0"):
        validate_lrs([-1e-3, 1e-3])
    with pytest.raises(ScheduleError, match="index 1"):
        validate_lrs([0.0, np.inf])
    with pytest.raises(ScheduleError, match="one-dimensional"):
        validate_lrs(np.ones((2, 2)))
    with pytest.raises(ScheduleError, match="not numeric"):
        validate_lrs(["a", "b"])


def test_validate_lrs_returns_a_copy() -> None:
    src = np.array([1e-3, 2e-3])
    out = validate_lrs(src)
    out[0] = 5.0
    assert src[0] == 1e-3


def test_as_lrs_entry_points(tmp_path) -> None:
    spec = "cosine:peak=1e-3,warmup=3,total=20"
    ref = parse_schedule(spec).lrs()
    np.testing.assert_array_equal(as_lrs(spec), ref)
    np.testing.assert_array_equal(as_lrs(parse_schedule(spec)), ref)
    np.testing.assert_array_equal(as_lrs({"kind": "cosine", "peak": 1e-3, "warmup": 3, "total": 20}), ref)
    np.testing.assert_array_equal(as_lrs(list(ref)), ref)
    path = tmp_path / "run.lr.npy"
    np.save(path, ref)
    np.testing.assert_array_equal(as_lrs(str(path)), ref)
    with pytest.raises(ScheduleError, match="cannot read LR file"):
        as_lrs(str(tmp_path / "missing.npy"))
    with pytest.raises(ScheduleError):
        as_lrs([1e-3, -1.0])


def test_large_schedule_is_vectorised_and_exact_length() -> None:
    s = WSDSchedule(peak=3e-4, total=1_000_000, warmup=2000, cooldown=0.2, shape="1-sqrt")
    lrs = s.lrs()
    assert lrs.shape == (1_000_000,)
    assert lrs[-1] > 0 and lrs[-1] < 3e-4 * 0.01
