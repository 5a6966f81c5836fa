"""Warm-start accuracy: forecast a run from its first 25/50/75% with one finished sibling of its family as prior.

A *family* is runs of one model on one data set at one peak LR that differ in length or schedule (WSD with
another cooldown, cosine vs WSD, a longer rerun): in ``shared/curves``, the epfml runs that share data, model
shape, batch size and peak LR, and the MultiPowerLaw runs of one model size; in ``benchmarks/curves_tiny``,
the declared families (AdamW and Muon WSD runs of several lengths and cooldowns) at one model and peak LR. For
every run with such a sibling (a different length or schedule; a sibling whose LR never annealed cannot serve
and is counted apart), the sibling is fitted whole (:func:`scaleforecast.family.fit_reference`, as ``forecast
--reference`` does) and the run is forecast from its first f of steps through the online forecaster (as the
CLI does), cold and warm.

Printed: median and p90 |error| of the final loss in %, and 80% interval coverage, by fraction, overall and by
source, schedule relation (same shape / other shape) and length relation (sibling shorter / longer / equal).
Two diagnostic rows bound what a sibling can give under the law (the same in every column): ``transfer``, the
sibling's fitted law applied to the run's schedule with none of the run's data, and ``own fit``, the run's own
fit on all of its data (how well the law fits the run's end at all).

``--across lr`` pairs each run instead with runs of its model and data at another peak LR (the points of an LR
sweep), ``--across size`` with runs of another model size at its LR: what borrowing across such a sweep gives.
Measured: across peak LRs the borrowed prior forecast worse than none (median 1.73 / 1.29 / 0.84 % against
cold 1.04 / 0.82 / 0.47 %, its 80 % bands covering 70 % at 75 %), so a forecaster borrowing from a sweep's
registry takes only the runs at its own peak LR; across model sizes it helped (0.93 / 0.62 / 0.26 % against
1.24 / 0.82 / 0.47 %).

    python benchmarks/warm_accuracy.py [--siblings 2] [--jobs 1] [--across none|lr|size]   # ~2 min, one core
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import TINY_ROOT, Curve, default_root, load_curves

from scaleforecast.family import NotAnnealed, ReferenceFit, fit_reference
from scaleforecast.fitting import Observations
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import LAWS

FRACTIONS = (0.25, 0.5, 0.75)
LEVEL = 0.8
TARGETS = {0.25: 0.3, 0.5: 0.2, 0.75: 0.15}


ACROSS = ("none", "lr", "size")


def _model(c: Curve) -> str:
    """The model of a run: its shape (epfml: layers, heads, width), size (MultiPowerLaw) or declared model."""
    if c.folder == "epfml_schaipp_haegele":
        return "|".join(c.replicate_group.split("|")[1:4])
    if c.folder == "mpl_luo2025":
        return c.run_id.split("_")[0]
    return str(c.meta.get("model"))


def family_key(c: Curve, across: str = "none") -> str | None:
    """Same model, data, batch and peak LR (epfml: from ``replicate_group``); one model size (MultiPowerLaw);
    the declared family of a tiny-model run, with its model and peak LR (an LR or width sweep is not one).

    ``across="lr"`` groups runs that differ only in peak LR (the points of an LR sweep), ``"size"`` runs that
    differ only in model size: what borrowing across such a sweep would give."""
    if c.law_breaking or (c.folder == "epfml_schaipp_haegele" and not c.replicate_group):
        return None
    if c.folder == "epfml_schaipp_haegele":
        g = c.replicate_group.split("|")
        key = {"none": [*g[:5], g[6]], "lr": g[:5], "size": [g[0], g[4], g[6]]}[across]
        return f"{c.folder}|{'|'.join(key)}"
    if c.folder == "mpl_luo2025":
        rest = "_".join(c.run_id.split("_")[1:])
        return {"none": f"{c.folder}|{_model(c)}", "lr": None, "size": f"{c.folder}|{rest}"}[across]
    if not c.meta.get("family"):
        return None
    key = {
        "none": [c.meta["family"], _model(c), f"{c.peak_lr:.6g}"],
        "lr": [_model(c)],
        "size": [f"{c.peak_lr:.6g}"],
    }
    return f"{c.folder}|{'|'.join(key[across])}"


def _differs(a: Curve, b: Curve, across: str = "none") -> bool:
    if across == "lr" and abs(a.peak_lr / b.peak_lr - 1) <= 0.01:
        return False
    if across == "size" and _model(a) == _model(b):
        return False
    return (
        a.total_steps != b.total_steps
        or a.replicate_group != b.replicate_group
        or a.shape != b.shape
        or not np.array_equal(a.lrs, b.lrs)
    )


def pairs(curves: list[Curve], per_run: int, across: str = "none") -> list[tuple[Curve, Curve]]:
    """(run, sibling) pairs: up to ``per_run`` siblings per run, in a fixed hash order."""
    fams: dict[str, list[Curve]] = {}
    for c in curves:
        k = family_key(c, across)
        if k is not None:
            fams.setdefault(k, []).append(c)
    out = []
    for members in fams.values():
        for c in members:
            sibs = [s for s in members if s.key != c.key and _differs(c, s, across)]
            sibs.sort(key=lambda s: hashlib.sha1(f"{c.key}|{s.key}".encode()).hexdigest())
            out += [(c, s) for s in sibs[:per_run]]
    return out


def reference(c: Curve) -> ReferenceFit | str:
    st, y = c.column()
    keep = (st >= 1) & (st <= c.lrs.size)
    try:
        return fit_reference(c.run_id, Observations.from_steps(st[keep], y[keep]), c.lrs)
    except NotAnnealed as exc:
        return str(exc)


def forecast(c: Curve, f: float, refs: list[ReferenceFit]) -> tuple[float, float, str]:
    st, y = c.column()
    m = (st >= 1) & (st <= f * c.lrs.size)
    fc = OnlineForecaster(c.lrs, ForecasterConfig(level=LEVEL, references=refs))
    fc.observe_many(st[m], y[m])
    fc.refit()
    out = fc.forecast(steps=[int(st[-1])])
    if not out.points:
        return float("nan"), float("nan"), out.status.value
    p = out.points[0]
    return p.loss, p.std, out.status.value


def _job(pair: tuple[Curve, Curve]) -> list[dict]:
    c, s = pair
    ref = reference(s)
    if isinstance(ref, str):
        return [dict(run=c.key, sibling=s.key, skipped=ref)]
    st, y = c.column()
    final = float(y[-1])
    # two diagnostics that bound what a sibling can give under the law: the sibling's law applied to this
    # run's schedule (no data of this run), and this run's own fit on all of its data (in-sample)
    assert ref.fit.params is not None
    transfer = float(LAWS[ref.fit.law].predict(ref.fit.params, c.lrs, np.array([int(st[-1])]))[0])
    own = forecast(c, 1.0, [])
    rows = []
    for f in FRACTIONS:
        for method, refs in (("cold", []), ("warm", [ref]), ("transfer", None), ("own fit", None)):
            if method == "transfer":
                mu, sd, status = transfer, float("nan"), "-"
            elif method == "own fit":
                mu, sd, status = own
            else:
                mu, sd, status = forecast(c, f, refs)
            rows.append(
                dict(
                    run=c.key,
                    sibling=s.key,
                    source=c.folder,
                    shape="same shape" if c.shape == s.shape else "other shape",
                    length=(
                        "sibling shorter"
                        if s.total_steps < c.total_steps
                        else "sibling longer"
                        if s.total_steps > c.total_steps
                        else "same length"
                    ),
                    method=method,
                    f=f,
                    err=100.0 * (mu - final) / final,
                    z=(mu - final) / sd if sd > 0 else float("nan"),
                    status=status,
                )
            )
    return rows


def run_rows(
    curves: list[Curve], per_run: int, jobs: int, across: str = "none"
) -> tuple[list[dict], list[dict]]:
    """Every (pair, method, fraction) row, and the pairs skipped because the sibling never annealed."""
    todo = pairs(curves, per_run, across)
    rows: list[dict] = []
    if jobs <= 1:
        for p in todo:
            rows += _job(p)
    else:
        with ProcessPoolExecutor(jobs) as ex:
            for r in ex.map(_job, todo, chunksize=2):
                rows += r
    return [r for r in rows if "skipped" not in r], [r for r in rows if "skipped" in r]


def _cell(sel: list[dict]) -> str:
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
    e = np.array([abs(r["err"]) if np.isfinite(r["err"]) else 100.0 for r in sel])
    cov = [abs(r["z"]) <= z for r in sel if np.isfinite(r["z"])]
    if not e.size:
        return f"{'-':>6} {'-':>6} {'-':>4}"
    c = f"{100 * np.mean(cov):4.0f}" if cov else f"{'-':>4}"
    return f"{np.median(e):6.2f} {np.percentile(e, 90):6.2f} {c}"


def table(rows: list[dict], by: str) -> str:
    """Median / p90 |error| % and 80% coverage per (group, method), one column block per fraction."""
    groups = ["all"] if by == "all" else sorted({r[by] for r in rows})
    head = f"{by:<24}{'method':<9}{'pairs':>6}" + "".join(
        f"  {int(f * 100):>3}%: med    p90  cov" for f in FRACTIONS
    )
    lines = [head, "-" * len(head)]
    for g in groups:
        for m in ("cold", "warm", "transfer", "own fit"):
            sel = [r for r in rows if r["method"] == m and (by == "all" or r[by] == g)]
            if not sel:
                continue
            n = len({(r["run"], r["sibling"]) for r in sel})
            cells = "".join("  " + _cell([r for r in sel if r["f"] == f]) for f in FRACTIONS)
            lines.append(f"{str(g)[:23]:<24}{m:<9}{n:>6}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--siblings", type=int, default=2, help="siblings tried per run")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--by", default="all,source,shape,length")
    ap.add_argument(
        "--across",
        choices=ACROSS,
        default="none",
        help="pair runs across an LR sweep or a model-size sweep instead of within a family",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    roots = [args.root] if args.root else [default_root(), TINY_ROOT]
    rows, skipped = run_rows(load_curves(roots), args.siblings, args.jobs, args.across)
    what = {"none": "of the family", "lr": "at another peak LR", "size": "of another model size"}[args.across]
    print(f"warm start: one finished sibling {what} as prior; |error| of the final loss in %, 80% coverage")
    print("targets (warm, median): " + ", ".join(f"{int(100 * f)}%: {t}" for f, t in TARGETS.items()))
    for by in args.by.split(","):
        print()
        print(table(rows, by))
    print(f"\n{len(skipped)} pairs skipped: the sibling never annealed (e.g. a constant-LR run)")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
