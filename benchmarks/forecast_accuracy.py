"""Forecast accuracy of the final loss on the real curves in ``shared/curves``.

For each run and each fraction f (25/50/75% of its updates), fit on the observations at steps <= f*T of the
loss column the forecast CLI uses (``val_loss`` when the run has one, else ``train_loss``) and forecast the
last observed value of that column (at its own step). Methods, in one run:

- ``default``: ``FitConfig()``, this project's default (annealing law, shipped prior, Huber, recency weights);
- ``cli``: the same fit, forecast at the schedule's last update as the CLI does, scored against the last
  logged loss (epfml logs its last val loss 200 updates before the end);
- ``plain``: the plain variable-projection fit (no prior, S2 as written, L2, lam = 0.999, no recency);
- ``mpl``: the Multi-Power Law fit (``law="mpl"``, same prior); ``auto`` (on request): the better of the two;
- ``last``: the last observed value;
- ``steppow``: a power law in steps, ``a + b * s^-c``, that ignores the LR.

It prints the median and p90 |error| in % and the 80% interval coverage by fraction, by source and by schedule
shape, separately for the dev and holdout halves (:func:`curves.split_curves`). Every default of ``FitConfig``
was chosen on the dev half only. Options: ``--quick`` (no MPL), ``--methods``, ``--half``, ``--jobs``,
``--config`` (JSON FitConfig for ``default``), ``--learn-prior`` (refit the shipped prior on the dev half),
``--calibrate`` (fit the interval calibration on the dev half), ``--dump`` (rows as JSON lines).

    python benchmarks/forecast_accuracy.py [--quick] [--jobs 2]      # ~2.5 min on 2 cores, ~1 min --quick
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
_CALIBRATE = False
LEVEL = 0.8


def _cfg_plain() -> FitConfig:
    return FitConfig(prior=None, warmup="raw", loss="l2", use_alpha_prior=False, lam=0.999)


METHODS: dict[str, Callable[[], FitConfig | None]] = {
    "default": FitConfig,
    "cli": FitConfig,
    "plain": _cfg_plain,
    "mpl": lambda: FitConfig(law="mpl"),
    "auto": lambda: FitConfig(law="auto"),
    "last": lambda: None,
    "steppow": lambda: None,
}


def _forecast(c: Curve, f: float, method: str, cfg: FitConfig | None) -> tuple[float, float, str]:
    """(point forecast, predictive std, status) of the last observed loss from the first f of the run."""
    st, y = c.column()
    T = c.lrs.size
    # "cli": what `scaleforecast forecast` prints by default, the forecast at the schedule's last update,
    # scored against the last logged loss (for epfml val that one is 200 updates earlier)
    target_step = T if method == "cli" else int(min(st[-1], T))
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
    if _CALIBRATE:
        # the two parts of the predictive std, for calibrate(): parameter std and the model-error lever
        raw = r.model_copy(update={"interval_scale": 1.0, "model_sd": 0.0})
        _, sd_p = predict(raw, c.lrs, [target_step])
        lever = predict(raw.model_copy(update={"model_sd": 1.0}), c.lrs, [target_step])[1]
        lever = np.sqrt(np.maximum(lever**2 - sd_p**2, 0.0))
        return float(mu[0]), float(sd[0]), f"{r.status.value}|{sd_p[0]}|{lever[0]}"
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


def calibrate(rows: list[dict]) -> tuple[float, float, float]:
    """(interval_scale, model_sd, model_h_power) whose 80% intervals cover closest to 80% at every fraction
    (least squares over the fractions), from rows made with ``_CALIBRATE``."""
    from scipy.special import ndtri

    z = float(ndtri(0.5 + LEVEL / 2))
    parts = []
    for r in rows:
        st = r["status"].split("|")
        if len(st) != 3 or not np.isfinite(r["pred"]):
            continue
        h = float(st[2]) / max(abs(r["pred"]), 1e-12)
        parts.append((r["f"], abs(r["pred"] - r["final"]), float(st[1]), h, abs(r["pred"])))
    P = np.array(parts)
    best = (1.0, 0.0, 1.0, np.inf)
    for pw in (1.0,):  # predict() scales the model error by h (power 1); other powers measured no better
        lever = P[:, 4] * P[:, 3] ** pw
        for s in np.geomspace(0.3, 20, 50):
            for m in np.concatenate([[0.0], np.geomspace(1e-3, 0.2, 50)]):
                sd = np.sqrt((s * P[:, 2]) ** 2 + (m * lever) ** 2)
                cov = [np.mean(P[P[:, 0] == f, 1] <= z * sd[P[:, 0] == f]) for f in FRACTIONS]
                loss = float(np.sum((np.array(cov) - LEVEL) ** 2))
                if loss < best[3] - 1e-12:
                    best = (float(s), float(m), pw, loss)
    lever = P[:, 4] * P[:, 3] ** best[2]
    sd = np.sqrt((best[0] * P[:, 2]) ** 2 + (best[1] * lever) ** 2)
    cov = [float(np.mean(P[P[:, 0] == f, 1] <= z * sd[P[:, 0] == f])) for f in FRACTIONS]
    print(
        "coverage at "
        + ", ".join(f"{int(f * 100)}%: {100 * c:.0f}%" for f, c in zip(FRACTIONS, cov, strict=True))
    )
    return best[0], best[1], best[2]


def learn_prior(
    curves: list[Curve],
    out: Path,
    warmup: str = "hold",
    lam: float = 0.999,
    sd_widen: float = 2.5,
    lr_ref: float = 1e-3,
) -> dict:
    """Whole-curve fits of the plain law (no prior) on ``curves``, over runs whose LR anneals below half its
    peak (unweighted in time): ``log(kappa / L_final) = log(kappa_mean) - q * log(u) + b * log(lr_peak / lr_ref)``
    by least squares (``u`` = the share of a full anneal the schedule completes, see
    :mod:`scaleforecast.priors`), the residual spread as ``kappa_sd``, and
    the normal prior of ``alpha``; written to ``out`` with provenance. ``kappa_sd`` is widened by ``sd_widen``
    (chosen on the dev half by the partial-curve forecast error: a tighter prior over-rules the data)."""
    from scaleforecast.laws import annealing_area

    kap: list[float] = []
    us: list[float] = []
    peaks: list[float] = []
    alp: list[float] = []
    used: list[str] = []
    for c in curves:
        st, y = c.column()
        peak = float(c.lrs.max())
        if c.lrs[int(np.argmax(c.lrs)) :].min() > 0.5 * peak:  # too little annealing to measure C
            continue
        cfg = FitConfig(prior=None, warmup=warmup, lam=lam, recency=0.0)
        r = fit(Observations.from_steps(st, y), c.lrs, cfg)
        if r.params is None or r.status != FitStatus.OK or r.params.C <= 0:
            continue
        p = r.params
        # relative to the final loss before annealing, as the fitter's prior_ref="final" uses it
        ref = p.L0 + p.A * float(c.lrs.sum()) ** (-p.alpha)
        kap.append(p.C * peak / (1 - lam) / ref)
        us.append(float(annealing_area(c.lrs, lam, warmup)[-1]) * (1 - lam) / peak)
        peaks.append(peak)
        alp.append(p.alpha)
        used.append(c.key)
    k = np.log(np.array(kap))
    u = np.log(np.maximum(np.array(us), 0.05))
    lp = np.log(np.array(peaks) / lr_ref)
    X = np.column_stack([np.ones_like(u), -u, lp])
    coef, *_ = np.linalg.lstsq(X, k, rcond=None)
    resid = k - X @ coef
    k1 = float(np.exp(coef[0]))
    a = np.array(alp)
    by_source: dict[str, list[float]] = {}
    for key, v in zip(used, resid, strict=True):
        by_source.setdefault(key.split("/")[0], []).append(float(v))
    prior = {
        "kappa_mean": k1,
        "kappa_sd": float(sd_widen * k1 * np.std(resid)),
        "kappa_u_power": float(coef[1]),
        "lr_power": float(coef[2]),
        "lr_ref": lr_ref,
        "lr_range": [float(min(peaks)), float(max(peaks))],
        "alpha_mean": float(np.median(a)),
        "alpha_sd": float(max(np.std(a), 0.05)),
        "lam": lam,
        "warmup": warmup,
        "provenance": {
            "what": "normal prior on kappa/L (kappa = C*lr_peak/(1-lam), the full-anneal drop; L = L0 + "
            "A*S1(T)^-alpha, the final loss without annealing), its mean "
            "kappa_mean * u^-kappa_u_power * (lr_peak/lr_ref)^lr_power with u the anneal share the schedule "
            "completes, and on alpha; from "
            "whole-curve fits of the annealing law (no prior, Huber, S2 warm-up held at peak) on the dev half "
            "of shared/curves (benchmarks/curves.py split_curves), runs whose LR decays below half its peak",
            "script": "benchmarks/forecast_accuracy.py --learn-prior",
            "n_runs": len(used),
            "log_residual_sd": float(np.std(resid)),
            "kappa_sd_widened_by": sd_widen,
            "mean_log_residual_by_source": {s: float(np.mean(v)) for s, v in by_source.items()},
            "runs_by_source": {s: len(v) for s, v in by_source.items()},
            "curves": "shared/curves: thu-yao-01-luo/MultiPowerLaw (8da9f19), fabian-sp/lr-scheduling (8ace3a3), "
            "llm.c GPT-2 124M (KellerJordan/modded-nanogpt f411b3d); all MIT",
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
    ap.add_argument("--sd-widen", type=float, default=2.5, help="--learn-prior: widen kappa_sd by this")
    ap.add_argument(
        "--calibrate", action="store_true", help="fit interval_scale and model_sd on the dev half"
    )
    ap.add_argument("--dump", default=None, help="write every row as JSON lines here")
    args = ap.parse_args(argv)

    curves = load_curves(args.root)
    dev, hold = split_curves(curves)
    if args.calibrate:
        global _CALIBRATE
        _CALIBRATE = True
        cfg = FitConfig.model_validate(json.loads(args.config)) if args.config else FitConfig()
        rows = run_rows(dev, {"default": cfg}, args.jobs)
        s, m, pw = calibrate(rows)
        print(f"interval_scale={s:.3g} model_sd={m:.3g} model_h_power={pw:g} (dev half)")
        return
    if args.learn_prior:
        out = Path(__file__).resolve().parent.parent / "scaleforecast" / "data" / "prior_default.json"
        print(json.dumps(learn_prior(dev, out, sd_widen=args.sd_widen), indent=1))
        return
    names = (
        args.methods.split(",")
        if args.methods
        else (
            ["default", "cli", "plain", "last", "steppow"]
            if args.quick
            else ["default", "cli", "plain", "mpl", "last", "steppow"]
        )
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
