"""The running statistics behind the detectors: each equals its definition, whatever the chunking."""

from __future__ import annotations

import numpy as np
import pytest

from scaleforecast.streaming import EWLine, Ring, chunks, ew_last, ew_path, ew_paths, run_lengths


def _recursion(x: np.ndarray, alpha: float, m0: float) -> np.ndarray:
    out, m = [], m0
    for v in x:
        m = (1 - alpha) * m + alpha * v
        out.append(m)
    return np.array(out)


@pytest.mark.parametrize("alpha", [0.9, 0.25, 2 / 65, 2 / 257])
def test_ew_path_equals_the_recursion_in_any_chunking(alpha: float) -> None:
    x = np.random.default_rng(0).standard_normal(300) * 5 + 100
    ref = _recursion(x, alpha, 3.0)
    np.testing.assert_allclose(ew_path(x, alpha, 3.0), ref, rtol=1e-12)
    m, parts = 3.0, []
    for sl in (slice(0, 7), slice(7, 64), slice(64, 65), slice(65, 300)):
        parts.append(ew_path(x[sl], alpha, m))
        m = float(parts[-1][-1])
    np.testing.assert_allclose(np.concatenate(parts), ref, rtol=1e-12)
    assert ew_last(x[:50], alpha, 3.0) == pytest.approx(ref[49], rel=1e-12)
    rows = ew_paths(np.vstack([x[:64], x[:64]]), np.array([alpha, 0.5]), np.array([3.0, 0.0]))
    np.testing.assert_allclose(rows[0], ref[:64], rtol=1e-12)
    np.testing.assert_allclose(rows[1], _recursion(x[:64], 0.5, 0.0), rtol=1e-12)


def test_run_lengths_continue_across_chunks() -> None:
    flag = np.array([1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=bool)
    assert run_lengths(flag, 0).tolist() == [1, 2, 0, 1, 2, 3, 0, 0, 1]
    assert run_lengths(flag, 5).tolist() == [6, 7, 0, 1, 2, 3, 0, 0, 1]
    assert run_lengths(np.zeros(0, dtype=bool), 3).tolist() == []


def test_ew_line_is_the_weighted_least_squares_line_and_survives_recentring() -> None:
    rng = np.random.default_rng(1)
    x = np.log(np.arange(1000, 1300, dtype=float))
    v = 3.0 - 0.4 * x + 0.01 * rng.standard_normal(len(x))
    lam = 0.97
    line = EWLine(lam, 1)
    line.recentre(float(x[0]))
    for i in range(0, len(x), 37):
        line.recentre(float(x[i]))  # the reference follows the data
        line.add(x[i : i + 37], v[None, i : i + 37])
    c0, c1, _, _, n_eff, _ = line.fit(1)
    w = lam ** np.arange(len(x) - 1, -1, -1)
    slope, icpt = np.polyfit(x, v, 1, w=np.sqrt(w))
    assert c1[0] == pytest.approx(slope, rel=1e-6)
    assert c0[0] + c1[0] * (x[-1] - line.x_ref) == pytest.approx(icpt + slope * x[-1], rel=1e-9)
    assert n_eff == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-9)


def test_ring_keeps_the_last_points_in_order() -> None:
    ring = Ring(5)
    ring.extend(np.arange(1, 4), np.arange(1, 4) * 1.0)
    ring.extend(np.arange(4, 12), np.arange(4, 12) * 1.0)
    s, v = ring.arrays()
    assert s.tolist() == [7, 8, 9, 10, 11] and v.tolist() == [7, 8, 9, 10, 11]
    other = Ring(1)
    other.load_state_dict(ring.state_dict())
    assert other.arrays()[0].tolist() == s.tolist()


def test_chunks_are_short_early_and_long_late() -> None:
    steps = np.arange(1, 20001)
    sizes = [sl.stop - sl.start for sl in chunks(steps)]
    assert sum(sizes) == len(steps) and max(sizes) == 64 and sizes[0] == 1
