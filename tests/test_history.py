import numpy as np
import pytest

from scaleforecast.history import BinnedHistory


def _fill(h: BinnedHistory, steps: np.ndarray, y: np.ndarray, chunk: int = 37) -> None:
    for i in range(0, len(steps), chunk):
        h.add(steps[i : i + chunk], steps[i : i + chunk], y[i : i + chunk])


def test_bins_stay_bounded_and_keep_every_point():
    steps = np.arange(1, 100_001)
    y = np.sin(steps / 5000.0) + 3.0
    h = BinnedHistory(max_bins=256)
    _fill(h, steps, y, chunk=997)
    assert len(h) <= 256
    assert h.n_raw == len(steps)
    start, end, mean, count = h.arrays()
    assert start[0] == 1 and end[-1] == 100_000
    # Every point keeps its weight: the count-weighted mean equals the raw mean.
    assert np.isclose((mean * count).sum() / count.sum(), y.mean())
    assert np.all(np.diff(start) > 0)


def test_bin_means_match_raw_means_over_their_span():
    rng = np.random.default_rng(0)
    steps = np.arange(1, 5001)
    y = rng.normal(size=len(steps))
    h = BinnedHistory(max_bins=64)
    _fill(h, steps, y)
    start, end, mean, _ = h.arrays()
    for s, e, m in zip(start, end, mean, strict=True):
        assert np.isclose(m, y[s - 1 : e].mean())


def test_window_observations_keep_their_window_start():
    h = BinnedHistory(max_bins=16)
    ends = np.arange(10, 1001, 10)
    h.add(ends - 9, ends, np.ones(len(ends)))
    start, end, _, _ = h.arrays()
    assert start[0] == 1
    assert np.all(start[1:] == end[:-1] + 1)


def test_truncate_drops_bins_after_step():
    h = BinnedHistory(max_bins=32)
    steps = np.arange(1, 1001)
    _fill(h, steps, steps.astype(float))
    dropped = h.truncate(500)
    assert h.last_end <= 500
    assert dropped == 1000 - h.n_raw
    assert dropped >= 500


def test_within_bin_std_estimates_noise():
    rng = np.random.default_rng(1)
    steps = np.arange(1, 20_001)
    y = 3.0 + rng.normal(scale=0.05, size=len(steps))
    h = BinnedHistory(max_bins=128)
    _fill(h, steps, y, chunk=500)
    assert h.within_bin_std() == pytest.approx(0.05, rel=0.05)


def test_state_round_trip():
    h = BinnedHistory(max_bins=32)
    steps = np.arange(1, 301)
    _fill(h, steps, np.log(steps))
    g = BinnedHistory(max_bins=16)
    g.load_state_dict(h.state_dict())
    for a, b in zip(h.arrays(), g.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert g.width == h.width


def test_rejects_tiny_max_bins():
    with pytest.raises(ValueError, match="max_bins"):
        BinnedHistory(max_bins=4)


def test_appending_in_order_bins_like_the_general_merge():
    rng = np.random.default_rng(2)
    steps = np.arange(1, 30_001)
    y = 3.0 + rng.normal(size=len(steps))
    live = BinnedHistory(max_bins=64)
    _fill(live, steps, y, chunk=50)  # the live case: each flush after the last
    shuffled = BinnedHistory(max_bins=64)
    chunks = [slice(i, i + 50) for i in range(0, len(steps), 50)]
    for k in rng.permutation(len(chunks)):  # the general case: chunks in any order
        shuffled.add(steps[chunks[k]], steps[chunks[k]], y[chunks[k]])
    assert live.width == shuffled.width
    for a, b in zip(live.arrays(), shuffled.arrays(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert live.n_raw == shuffled.n_raw == len(steps)
