"""How the shipped annealing prior is learned: random effects over codebases, and the file it ships."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.priors import load_prior

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import forecast_accuracy as fa  # noqa: E402


def test_random_effects_separates_codebases_from_runs() -> None:
    """Eight codebases whose means spread with sd 0.4, runs within each with sd 0.1; one codebase has ten
    times the runs of the others and an offset of its own, and must not pull the mean to itself."""
    rng = np.random.default_rng(0)
    offsets = rng.normal(0.0, 0.4, 8)
    offsets[0] = 1.5
    v, g = [], []
    for i, off in enumerate(offsets):
        n = 300 if i == 0 else 30
        v += list(-2.5 + off + rng.normal(0.0, 0.1, n))
        g += [f"cb{i}"] * n
    mu, tau, sigma, means = fa.random_effects(np.array(v), np.array(g))
    assert sigma == pytest.approx(0.1, rel=0.1)
    assert 0.2 < tau < 1.0
    assert set(means) == {f"cb{i}" for i in range(8)}
    # the mean weighs codebases, not runs: the pooled run mean sits near the big codebase, mu does not
    pooled = float(np.mean(v))
    assert abs(mu - (-2.5 + offsets.mean())) < abs(pooled - (-2.5 + offsets.mean()))
    assert abs(mu - (-2.5 + offsets.mean())) < 0.1


def test_one_codebase_has_no_between_spread() -> None:
    mu, tau, sigma, _ = fa.random_effects(np.array([1.0, 1.2, 0.8, 1.1]), np.array(["a"] * 4))
    assert tau == 0.0 and mu == pytest.approx(1.025) and sigma > 0


def test_shipped_prior_is_what_the_script_learns(curves_dir: Path) -> None:
    """The numbers in scaleforecast/data/prior_default.json are those `forecast_accuracy.py --learn-prior`
    learns from the curves it names (the dev half of every source), and no run from outside them enters."""
    shipped = load_prior("default")
    roots = [curves_dir] + (
        [BENCH / "curves_tiny"] if (BENCH / "curves_tiny" / "index.csv").is_file() else []
    )
    curves = fa._load([str(r) for r in roots])
    dev, _ = fa.split_curves(curves)
    folders = sorted({c.folder for c in dev})
    if folders != shipped.provenance["curve_folders"]:
        pytest.skip("the shipped prior was learned from other curve folders than the ones present here")
    learned = fa.learn_prior(
        fa.whole_fits(dev, jobs=1), what="Dev half (benchmarks/curves.py split_curves).", folders=folders
    )
    assert learned.kappa_mean == pytest.approx(shipped.kappa_mean, rel=1e-6)
    assert learned.kappa_sd == pytest.approx(shipped.kappa_sd, rel=1e-6)
    assert learned.kappa_u_power == pytest.approx(shipped.kappa_u_power, rel=1e-6, abs=1e-9)
    assert learned.alpha_mean == pytest.approx(shipped.alpha_mean, rel=1e-6)
    assert learned.provenance["n_runs"] == shipped.provenance["n_runs"]
