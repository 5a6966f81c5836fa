"""The compact schedule form a checkpoint carries: small for piecewise-smooth schedules, exact enough always."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaleforecast.schedule_codec import decode_lrs, encode_lrs
from scaleforecast.schedules import parse_schedule

SPECS = [
    "cosine:peak=6e-4,warmup=2000,total=1000000",
    "cosine:peak=6e-4,warmup=700,total=19560,final=6e-5",
    "wsd:peak=1e-3,warmup=1000,total=1000000,cooldown=0.2",
    "constant:peak=1e-3,warmup=100,total=300000",
    "linear:peak=1e-3,warmup=100,total=500000",
    "invsqrt:peak=1e-3,warmup=1000,total=1000000",
    "step:peak=1e-3,total=200000,milestones=50000/120000,gamma=0.3",
]


def _within(decoded: np.ndarray, lrs: np.ndarray, rtol: float = 1e-10) -> None:
    floor = 1e-3 * np.max(np.abs(lrs))
    assert np.all(np.abs(decoded - lrs) <= rtol * np.maximum(np.abs(lrs), floor) + 1e-300)


@pytest.mark.parametrize("spec", SPECS)
def test_piecewise_smooth_schedules_take_a_few_kilobytes(spec: str) -> None:
    lrs = parse_schedule(spec).lrs()
    code = json.loads(json.dumps(encode_lrs(lrs)))
    assert "segments" in code and len(json.dumps(code)) < 8 * 1024
    decoded = decode_lrs(code)
    assert decoded.shape == lrs.shape and decoded.dtype == np.float64
    _within(decoded, lrs)
    assert decoded.min() >= lrs.min() and decoded.max() <= lrs.max()  # never a negative or larger LR


def test_constant_runs_are_bit_exact() -> None:
    lrs = parse_schedule("step:peak=1e-3,total=200000,milestones=50000/120000,gamma=0.3").lrs()
    code = encode_lrs(lrs)
    assert {seg[0] for seg in code["segments"]} == {"const"}
    np.testing.assert_array_equal(decode_lrs(code), lrs)


@pytest.mark.parametrize("seed", [0, 1])
def test_values_without_structure_are_kept_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    noisy = 1e-3 * (1 + 0.1 * rng.random(50_000))
    rounded = parse_schedule("cosine:peak=6e-4,warmup=700,total=20000").lrs().astype(np.float32).astype(float)
    for lrs in (noisy, rounded):
        decoded = decode_lrs(json.loads(json.dumps(encode_lrs(lrs))))
        np.testing.assert_array_equal(decoded, lrs)


def test_mixed_schedule_with_a_noisy_stretch() -> None:
    lrs = parse_schedule("wsd:peak=1e-3,warmup=500,total=20000,cooldown=0.3").lrs().copy()
    lrs[5000:5100] *= 1 + 0.01 * np.random.default_rng(3).standard_normal(100)
    code = encode_lrs(lrs)
    kinds = [seg[0] for seg in code.get("segments", [])]
    assert "raw" in kinds and "cheb" in kinds
    decoded = decode_lrs(code)
    np.testing.assert_array_equal(decoded[5000:5100], lrs[5000:5100])
    _within(decoded, lrs)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 65])
def test_short_schedules(n: int) -> None:
    lrs = np.linspace(1e-3, 1e-4, n)
    _within(decode_lrs(encode_lrs(lrs)), lrs)


def test_bad_code_is_an_error() -> None:
    with pytest.raises(ValueError, match="segment kind"):
        decode_lrs({"n": 3, "lo": 0.0, "hi": 1.0, "segments": [["spline", 0, 3, []]]})
    with pytest.raises(ValueError, match="expected 5"):
        decode_lrs({"n": 5, "deflated": encode_lrs(np.ones(80) + np.arange(80) % 3)["deflated"]})
