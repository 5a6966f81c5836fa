"""Forecast accuracy of the final loss on the real curves in ``shared/curves``.

For each run and each fraction f (25/50/75% of its updates), fit on the observations at steps <= f*T of the
loss column the forecast CLI uses (``val_loss`` when the run has one, else ``train_loss``) and forecast the
last observed value of that column (at its own step). Methods, in one run:

- ``default``: ``FitConfig()``, this project's default;
- ``plain``: the plain variable-projection fit (no prior, S2 as written, L2, lam = 0.999);
- ``mpl``: the Multi-Power Law fit (``law="mpl"``);
- ``last``: the last observed value;
- ``steppow``: a power law in steps, ``a + b * s^-c``, that ignores the LR.

It prints the median and p90 |error| in % and the 80% interval coverage by fraction, by source and by schedule
shape, separately for the dev and holdout halves (:func:`curves.split_curves`). Options: ``--quick`` (fewer
methods), ``--methods``, ``--half``, ``--jobs``, ``--learn-prior`` (refit the shipped prior on the dev half).

    python benchmarks/forecast_accuracy.py [--quick] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import Curve, load_curves, split_curves

from scaleforecast.fitting import FitConfig, Observations, fit, predict
from scaleforecast.results import FitStatus

FRACTIONS = (0.25, 0.5, 0.75)
LEVEL = 0.8


def _cfg_plain() -> FitConfig:
    return FitConfig(prior=None, warmup="raw", loss="l2", use_alpha_prior=False, lam=0.999)


METHODS: dict[str, Callable[[], FitConfig | None]] = {
    "default": FitConfig,
    "plain": _cfg_plain,
    "mpl": lambda: FitConfig(law="mpl"),
    "last": lambda: None,
    "steppow": lambda: None,
}


def _forecast(c: Curve, f: float, method: str, cfg: FitConfig | None) -> tuple[float, float, str]:
    """(point forecast, predictive std, status) of the last observed loss from the first f of the run."""
    st, y = c.column()
    T = c.lrs.size
    target_step = int(min(st[-1], T))
    m = st <= f * T
    if method == "last":
        return (float(y[m][-1]) if m.any() else float("nan")), float("nan"), "ok"
    obs = Observations.from_steps(st[m], y[m])
    if method == "steppow":
        # the LR-blind baseline: the same machinery with a unit LR (S1 = steps, S2 = 0)
        ones = np.ones(T)
        warm = int(np.argmax(c.lrs)) + 1
        keep = obs.end > warm
        obs = Observations(obs.start[keep], obs.end[keep], obs.y[keep], obs.count[keep])
        cfg = FitConfig(prior=None, warmup="raw", skip_warmup=False, use_alpha_prior=False)
        r = fit(obs, ones, cfg)
        if r.params is None:
            return float("nan"), float("nan"), r.status.value
        mu, sd = predict(r, ones, [target_step])
        return float(mu[0]), float(sd[0]), r.status.value
    assert cfg is not None
    r = fit(obs, c.lrs, cfg)
    if r.params is None:
        return float("nan"), float("nan"), r.status.value
    mu, sd = predict(r, c.lrs, [target_step])
    return float(mu[0]), float(sd[0]), r.status.value


def _job(args: tuple[Curve, str, dict | None]) -> list[dict]:
    c, method, cfg_json = args
    cfg = FitConfig.model_validate(cfg_json) if cfg_json is not None else None
    _, y = c.column()
    final = float(y[-1])
    out = []
    for f in FRACTIONS:
        t0 = time.perf_counter()
        try:
            mu, sd, status = _forecast(c, f, method, cfg)
        except Exception as e:  # a benchmark row, not a crash: report it
            mu, sd, status = float("nan"), float("nan"), f"error: {e}"
        out.append(
            dict(
                run=c.key,
                source=c.folder,
                shape=c.shape,
                method=method,
                f=f,
                pred=mu,
                sd=sd,
                final=final,
                err=100.0 * (mu - final) / final,
                status=status,
                ms=1000 * (time.perf_counter() - t0),
            )
        )
    return out


def run_rows(curves: list[Curve], methods: dict[str, FitConfig | None], jobs: int) -> list[dict]:
    """Every (curve, method, fraction) row."""
    tasks = [
        (c, name, cfg.model_dump() if isinstance(cfg, FitConfig) else None)
        for name, cfg in methods.items()
        for c in curves
    ]
    rows: list[dict] = []
    if jobs <= 1:
        for t in tasks:
            rows += _job(t)
    else:
        with ProcessPoolExecutor(jobs) as ex:
            for r in ex.map(_job, tasks, chunksize=4):
                rows += r
    return rows


def _stats(rows: list[dict]) -> tuple[float, float, float, int]:
    e = np.array([abs(r["err"]) for r in rows], dtype=float)
    e = np.where(np.isfinite(e), e, 100.0)  # a missing forecast counts as a 100% miss
    from scipy.special import ndtri

    z = float(ndtri(0.5 + LEVEL / 2))
    cov = [
        abs(r["pred"] - r["final"]) <= z * r["sd"]
        for r in rows
        if np.isfinite(r["sd"]) and np.isfinite(r["pred"])
    ]
    return (
        float(np.median(e)) if e.size else float("nan"),
        float(np.percentile(e, 90)) if e.size else float("nan"),
        float(np.mean(cov)) * 100 if cov else float("nan"),
        len(rows),
    )


def table(rows: list[dict], by: str, title: str) -> str:
    """Median / p90 |error| % and coverage, one line per (group, method), columns per fraction."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    groups = sorted({r[by] for r in rows}) if by != "all" else ["all"]
    head = f"{title:<34}{'method':<9}{'n':>4}" + "".join(
        f"  {int(f * 100):>3}%: med   p90  cov" for f in FRACTIONS
    )
    lines = [head, "-" * len(head)]
    for g in groups:
        for mth in methods:
            sel = [r for r in rows if r["method"] == mth and (by == "all" or r[by] == g)]
            if not sel:
                continue
            cells = []
            n = 0
            for f in FRACTIONS:
                med, p90, cov, n = _stats([r for r in sel if r["f"] == f])
                cs = f"{cov:4.0f}" if np.isfinite(cov) else "   -"
                cells.append(f"  {med:6.2f} {p90:6.2f} {cs}")
            lines.append(f"{str(g)[:33]:<34}{mth:<9}{n:>4}" + "".join(cells))
    return "\n".join(lines)


def learn_prior(curves: list[Curve], out: Path, warmup: str = "hold", lam: float = 0.999) -> dict:
    """Whole-curve fits of the plain law (no prior) on ``curves``: the normal prior of ``kappa / L_final``
    (over runs whose LR anneals) and of ``alpha``, written to ``out`` with provenance."""
    kap: list[float] = []
    alp: list[float] = []
    used: list[str] = []
    for c in curves:
        st, y = c.column()
        if c.lrs[int(np.argmax(c.lrs)) :].min() > 0.5 * c.lrs.max():  # too little annealing to measure C
            continue
        r = fit(Observations.from_steps(st, y), c.lrs, FitConfig(prior=None, warmup=warmup, lam=lam))
        if r.params is None or r.status != FitStatus.OK:
            continue
        p = r.params
        kap.append(p.C * c.lrs.max() / (1 - lam) / float(y[-1]))
        alp.append(p.alpha)
        used.append(c.key)
    k = np.array(kap)
    a = np.array(alp)
    by_source: dict[str, list[float]] = {}
    for key, v in zip(used, kap):
        by_source.setdefault(key.split("/")[0], []).append(v)
    # the spread across sources matters more than the spread within one: weight sources equally
    src_means = np.array([np.mean(v) for v in by_source.values()])
    prior = {
        "kappa_mean": float(np.mean(src_means)),
        "kappa_sd": float(np.sqrt(np.var(k) + np.var(src_means))),
        "alpha_mean": float(np.median(a)),
        "alpha_sd": float(max(np.std(a), 0.05)),
        "lam": lam,
        "warmup": warmup,
        "provenance": {
            "what": "normal prior on kappa/L_final (kappa = C*lr_peak/(1-lam), the full-anneal drop) and on "
            "alpha, from whole-curve fits of the annealing law (no prior, Huber) on the dev half of "
            "shared/curves (benchmarks/curves.py split_curves), runs whose LR decays below half its peak",
            "script": "benchmarks/forecast_accuracy.py --learn-prior",
            "sources": {s: {"n": len(v), "kappa_mean": float(np.mean(v))} for s, v in by_source.items()},
            "n_runs": len(used),
            "kappa_pooled_mean": float(k.mean()),
            "kappa_pooled_sd": float(k.std()),
            "curves": "146 runs from thu-yao-01-luo/MultiPowerLaw (8da9f19), fabian-sp/lr-scheduling "
            "(8ace3a3), llm.c GPT-2 124M (KellerJordan/modded-nanogpt f411b3d); all MIT",
        },
    }
    out.write_text(json.dumps(prior, indent=1) + "\n")
    return prior


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None)
    ap.add_argument("--quick", action="store_true", help="default, plain and the baselines only")
    ap.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--half", choices=["dev", "holdout", "both"], default="both")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--by", default="all,source,shape")
    ap.add_argument("--config", default=None, help="JSON of FitConfig fields for the 'default' method")
    ap.add_argument("--learn-prior", action="store_true")
    ap.add_argument("--dump", default=None, help="write every row as JSON lines here")
    args = ap.parse_args(argv)

    curves = load_curves(args.root)
    dev, hold = split_curves(curves)
    if args.learn_prior:
        out = Path(__file__).resolve().parent.parent / "scaleforecast" / "data" / "prior_default.json"
        print(json.dumps(learn_prior(dev, out), indent=1))
        return
    names = (
        args.methods.split(",")
        if args.methods
        else (["default", "plain", "last", "steppow"] if args.quick else list(METHODS))
    )
    methods: dict[str, FitConfig | None] = {}
    for n in names:
        cfg = METHODS[n]()
        if n == "default" and args.config:
            cfg = FitConfig.model_validate(json.loads(args.config))
        methods[n] = cfg
    halves = {"dev": dev, "holdout": hold}
    if args.half != "both":
        halves = {args.half: halves[args.half]}
    t0 = time.perf_counter()
    for hname, hc in halves.items():
        rows = run_rows(hc, methods, args.jobs)
        if args.dump:
            with open(f"{args.dump}.{hname}.jsonl", "w") as fh:
                for r in rows:
                    fh.write(json.dumps(r) + "\n")
        print(
            f"\n=== {hname} half: {len(hc)} runs; |error| of the final loss in %, 80% interval coverage in %"
        )
        for by in args.by.split(","):
            print()
            print(table(rows, by, {"all": "overall", "source": "source", "shape": "shape"}[by]))
        ms = [r["ms"] / 1 for r in rows if r["method"] == "default"]
        if ms:
            print(f"\ndefault: median {np.median(ms):.0f} ms per forecast (fit + predict)")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
