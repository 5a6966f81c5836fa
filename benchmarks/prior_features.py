"""Does anything a run reveals before its LR decays predict its annealing drop? Candidate features for the centre of
the cold-start prior on ``kappa / L_ref``, measured on whole-curve fits (the ones ``forecast_accuracy.py`` learns
the prior from).

For each run whose LR decays below half its peak: ``log(kappa / L_ref)`` with the ``u^-q`` effect of the anneal
share taken out (``q`` from the within-codebase regression, as :func:`forecast_accuracy.learn_prior` does), and
candidate features, each in logs:

- ``share``: the power-law part's share of the loss, ``A * S1(T)^-alpha / L_ref``; ``slope``: ``alpha * share``,
  the drop per unit of log LR area; ``alpha``; ``noise``: the fit's relative noise ``sigma`` (all four from the
  whole-curve fit, and as ``*25`` / ``*50`` from the default fit to the first 25 / 50% of the run, which is what
  the fitter would have when the prior matters);
- ``steps``: the run's length; ``warmup``: the share of the run spent warming up (both known up front).

It prints the codebase means, the correlation of each feature with ``log(kappa / L_ref)`` within codebases and
between codebase means, and a leave-one-codebase-out proxy: the median ``|log error|`` of the prior's centre for
the held-out codebase's runs when the centre is ``kappa_mean * u^-q * feature^r``, with ``r`` learned within
codebases (jointly with ``q``) or from the codebase means (``r = 0``: today's prior). Last, the noise of the same
runs' training-loss column next to their validation-loss column: a noise feature would move the prior's centre
with what the user logs, not with how the run trains.

    SCALEFORECAST_EXTRA_CURVES=tiny python benchmarks/prior_features.py        # ~10 s
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import forecast_accuracy as fa
from curves import Curve

from scaleforecast.fitting import FitConfig, Observations, fit
from scaleforecast.laws import schedule_areas
from scaleforecast.results import FitStatus

FEATURES = (
    "share", "slope", "alpha", "noise", "share25", "slope25", "alpha25", "noise25",
    "share50", "slope50", "alpha50", "noise50", "steps", "warmup",
)  # fmt: skip


def _laws(p, s1_end: float) -> dict[str, float]:
    pw = p.A * s1_end ** (-p.alpha)
    ref = p.L0 + pw
    return {"share": pw / ref, "slope": p.alpha * pw / ref, "alpha": p.alpha}


def features(c: Curve, lam: float = 0.999) -> dict | None:
    """``log(kappa / L_ref)``, ``log(u)`` and the log of every candidate feature of one run (None when its
    whole-curve fit cannot tell its C, by the rules of :func:`forecast_accuracy._whole_fit`)."""
    st, y = c.column()
    keep = (st >= 1) & (st <= c.lrs.size)
    st, y = st[keep], y[keep]
    peak = float(c.lrs.max())
    if c.lrs[int(np.argmax(c.lrs)) :].min() > 0.5 * peak:
        return None
    cfg = FitConfig(prior=None, lam=lam, recency=0.0)
    r = fit(Observations.from_steps(st, y), c.lrs, cfg)
    lo, hi = cfg.alpha_bounds
    if (
        r.params is None
        or r.status != FitStatus.OK
        or r.params.C <= 0
        or not lo * 1.01 < r.params.alpha < hi * 0.99
    ):
        return None
    s1_end = float(c.lrs.sum())
    whole = _laws(r.params, s1_end)
    ref = r.params.L0 + r.params.A * s1_end ** (-r.params.alpha)
    u = float(schedule_areas(c.lrs, lam, "hold", cfg.memory_for(c.lrs.size))[1][-1]) * (1 - lam) / peak
    out = {
        "k": np.log(r.params.C * peak / (1 - lam) / ref),
        "lu": np.log(max(u, 0.05)),
        "noise": r.sigma,
        **whole,
    }
    for f in (0.25, 0.5):
        m = st <= f * c.lrs.size
        part = fit(Observations.from_steps(st[m], y[m]), c.lrs, FitConfig())
        if part.params is not None:
            tag = str(int(f * 100))
            out.update(
                {k + tag: v for k, v in _laws(part.params, s1_end).items()}, **{"noise" + tag: part.sigma}
            )
    out["steps"] = float(c.lrs.size)
    out["warmup"] = (int(np.argmax(c.lrs)) + 1) / c.lrs.size
    logs = {
        k: (v if k in ("k", "lu") else (float(np.log(v)) if v > 0 else float("nan"))) for k, v in out.items()
    }
    return {"codebase": fa.codebase(c), **logs}


def _demean(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = v.copy()
    for s in set(g.tolist()):
        out[g == s] -= v[g == s].mean()
    return out


def _centre_error(k: np.ndarray, lu: np.ndarray, x: np.ndarray, g: np.ndarray, mode: str) -> dict[str, float]:
    """Leave one codebase out: the median |log error| of the prior's centre ``mu - q log u + r (x - mean x)``
    for the held-out codebase's runs, ``r`` learned on the others by ``mode`` (none, within, between)."""
    errs = {}
    for held in sorted(set(g.tolist())):
        tr, te = g != held, g == held
        kc, uc, xc = _demean(k[tr], g[tr]), _demean(lu[tr], g[tr]), _demean(x[tr], g[tr])
        q, r = -float(uc @ kc / (uc @ uc)), 0.0
        if mode == "within":
            q, r = (float(v) for v in np.linalg.lstsq(np.column_stack([-uc, xc]), kc, rcond=None)[0])
        elif mode == "between":
            names = sorted(set(g[tr].tolist()))
            mk = [float((k + q * lu)[tr & (g == s)].mean()) for s in names]
            mx = [float(x[tr & (g == s)].mean()) for s in names]
            r = float(np.polyfit(mx, mk, 1)[0])
        x0 = float(x[tr].mean())
        mu = fa.random_effects(k[tr] + q * lu[tr] - r * (x[tr] - x0), g[tr])[0]
        errs[held] = float(np.median(np.abs(mu - q * lu[te] + r * (x[te] - x0) - k[te])))
    return errs


def _column_noise(curves: list[Curve]) -> list[tuple[str, float, float]]:
    """(folder, median noise of the training-loss column, of the validation-loss column) over the runs that log
    both, each fitted on its first half with the default fit."""
    by: dict[str, list[tuple[float, float]]] = {}
    for c in curves:
        sig = []
        for y in (c.train_loss, c.val_loss):
            m = np.isfinite(y) & (c.steps >= 1) & (c.steps <= 0.5 * c.lrs.size)
            r = fit(Observations.from_steps(c.steps[m], y[m]), c.lrs, FitConfig()) if m.sum() >= 10 else None
            sig.append(r.sigma if r is not None and r.params is not None else float("nan"))
        if np.all(np.isfinite(sig)):
            by.setdefault(c.folder, []).append((sig[0], sig[1]))
    return [
        (f, float(np.median([a for a, _ in v])), float(np.median([b for _, b in v])))
        for f, v in sorted(by.items())
    ]


def main() -> None:
    curves = fa._load(None)
    rows = [w for w in map(features, curves) if w is not None]
    g = np.array([w["codebase"] for w in rows])
    k, lu = np.array([w["k"] for w in rows]), np.array([w["lu"] for w in rows])
    kc, uc = _demean(k, g), _demean(lu, g)
    ku = k + (-float(uc @ kc / (uc @ uc))) * lu
    names = sorted(set(g.tolist()))
    print(
        f"{len(rows)} whole-curve fits tell their C, {len(names)} codebases; log(kappa/L_ref) with u^-q taken out\n"
    )
    print(f"{'codebase':<30}{'n':>4}{'kappa/L':>8}" + "".join(f"{f:>9}" for f in FEATURES))
    for s in names:
        m = g == s
        cells = "".join(
            f"{np.nanmean([w.get(f, np.nan) for w, mm in zip(rows, m, strict=True) if mm]):9.2f}"
            for f in FEATURES
        )
        print(f"{s[:29]:<30}{m.sum():>4}{ku[m].mean():8.2f}" + cells)
    print(
        f"\n{'feature':<10}{'r within':>9}{'r between':>10}   LOSO |log error| of the prior's centre (mean over codebases)"
    )
    print(f"{'':<10}{'':>9}{'':>10}   {'r=0':>7}{'within':>8}{'between':>9}")
    for f in FEATURES:
        x = np.array([w.get(f, np.nan) for w in rows])
        ok = np.isfinite(x)
        xc, yc = _demean(x[ok], g[ok]), _demean(ku[ok], g[ok])
        mx = [x[ok & (g == s)].mean() for s in names]
        my = [ku[ok & (g == s)].mean() for s in names]
        errs = [
            np.mean(list(_centre_error(k[ok], lu[ok], x[ok], g[ok], m).values()))
            for m in ("none", "within", "between")
        ]
        print(
            f"{f:<10}{np.corrcoef(xc, yc)[0, 1]:9.2f}{np.corrcoef(mx, my)[0, 1]:10.2f}   "
            + "".join(f"{e:{w}.3f}" for e, w in zip(errs, (7, 8, 9), strict=True))
        )
    print("\nrelative noise of the fit (first half), training-loss column vs validation-loss column")
    for folder, tr, va in _column_noise(curves):
        print(f"  {folder:<26} train {tr:.4f}   val {va:.4f}   ratio {tr / va:5.1f}")


if __name__ == "__main__":
    main()
