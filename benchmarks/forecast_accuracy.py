"""Forecast accuracy of the final loss on real curves: cold start on unseen codebases, and the dev/holdout halves.

For each run and each fraction f (25/50/75% of its updates), fit on the observations at steps <= f*T of the
loss column the forecast CLI uses (``val_loss`` when the run has one, else ``train_loss``) and forecast the
last observed value of that column (at its own step). It prints the median and p90 |error| in % and the 80%
interval coverage, by fraction, in one run:

1. **Cold start, leave one source out.** For each source (a folder of curves), the annealing prior is learned
   from the whole-curve fits of every *other* codebase (:func:`learn_prior`; the tiny-model folders made by
   ``make_curves.py`` are one codebase and leave together) and the source's runs are forecast with it: the
   honest proxy for a codebase nobody has seen. Tables by source and by schedule shape, for the fitter
   (``default``) and for the online forecaster as the ``forecast`` CLI runs it (``online``: the same fit, then
   the law check, whose ``law_violated`` band is wider, on runs whose loss has left the law).
2. **The dev / holdout halves** (:func:`curves.split_curves`) with the prior learned on the dev half of every
   source, as the shipped one is. Every default of ``FitConfig`` was chosen on the dev half only.
3. **Warm start** (``--no-warm`` skips it): one finished sibling of the run's family (another length or
   schedule) fitted whole as the prior, as ``forecast --reference`` does (:mod:`warm_accuracy`).
4. **LR units** (``--units``): the shipped-prior forecasts again with every run's LR divided by its peak (a
   multiplier, as speedrun codebases log it) and multiplied by 1e3; the largest change of any forecast.

Methods (``--methods``; ``default`` always runs): ``default`` (``FitConfig()``), ``cli`` (the same fit, forecast
at the schedule's last update as the CLI does), ``plain`` (the law as Tissue et al. write it: one memory
``lam = 0.999``, S2 as written, no prior, L2, no recency), ``mpl`` (Multi-Power Law, same prior), ``auto``,
``last`` (last observed value), ``steppow`` (a power law in steps).

Curves: ``shared/curves`` plus the tiny-model curves the repo ships (``benchmarks/curves_tiny``), or the roots
given with ``--root`` (repeatable). Options: ``--quick`` (default and cli only), ``--jobs``, ``--config`` (JSON
FitConfig for ``default``), ``--learn-prior`` (write the shipped prior, learned on the dev half of every
source), ``--calibrate`` (fit the interval calibration on the leave-one-source-out rows: cold start on an unseen
codebase is what it is for), ``--normal-prior`` (priors without Student-t tails, to compare), ``--dump`` (rows as
JSON lines).

    python benchmarks/forecast_accuracy.py [--quick] [--jobs 2]      # ~1.5 min on 2 cores
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
from scipy.special import ndtri

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import TINY_ROOT, Curve, default_root, load_curves, split_curves

from scaleforecast.fitting import FitConfig, Observations, fit, predict
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import schedule_areas
from scaleforecast.priors import AnnealingPrior
from scaleforecast.results import FitStatus

FRACTIONS = (0.25, 0.5, 0.75)
LEVEL = 0.8
_Z = float(ndtri(0.5 + LEVEL / 2))
_CALIBRATE = False
PRIOR_OUT = Path(__file__).resolve().parent.parent / "scaleforecast" / "data" / "prior_default.json"


def _cfg_plain() -> FitConfig:
    return FitConfig(prior=None, warmup="raw", loss="l2", use_alpha_prior=False, lam=0.999, memory="single")


METHODS: dict[str, Callable[[], FitConfig | None]] = {
    "default": FitConfig,
    "online": FitConfig,
    "cli": FitConfig,
    "plain": _cfg_plain,
    "mpl": lambda: FitConfig(law="mpl"),
    "auto": lambda: FitConfig(law="auto"),
    "last": lambda: None,
    "steppow": lambda: None,
}


# --------------------------------------------------------------------------------------------------------
# forecasts


def _forecast(c: Curve, f: float, method: str, cfg: FitConfig | None, lr_factor: float | str = 1.0):
    """(point forecast, predictive std, status) of the last observed loss from the first f of the run.
    ``lr_factor`` rescales the run's LR ("peak": divide by its peak) to check that nothing depends on units."""
    st, y = c.column()
    lrs = c.lrs / c.lrs.max() if lr_factor == "peak" else c.lrs * float(lr_factor)
    T = lrs.size
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
        warm = int(np.argmax(lrs)) + 1
        keep = obs.end > warm
        obs = Observations(obs.start[keep], obs.end[keep], obs.y[keep], obs.count[keep])
        cfg = FitConfig(prior=None, warmup="raw", skip_warmup=False, use_alpha_prior=False)
        r = fit(obs, ones, cfg)
        if r.params is None:
            return float("nan"), float("nan"), r.status.value
        mu, sd = predict(r, ones, [target_step])
        return float(mu[0]), float(sd[0]), r.status.value
    assert cfg is not None
    if method == "online":
        fc = OnlineForecaster(lrs, ForecasterConfig(fit=cfg))
        seen = m & (st >= 1)  # as the CLI reads a run: step 0 is the model before any update
        fc.observe_many(st[seen], y[seen])
        fc.refit()
        out = fc.forecast(steps=[target_step])
        if not out.points:
            return float("nan"), float("nan"), out.status.value
        return out.points[0].loss, out.points[0].std, out.status.value
    r = fit(obs, lrs, cfg)
    if r.params is None:
        return float("nan"), float("nan"), r.status.value
    mu, sd = predict(r, lrs, [target_step])
    if _CALIBRATE:
        # the two parts of the predictive std, for calibrate(): parameter std and the model-error lever
        raw = r.model_copy(update={"interval_scale": 1.0, "model_sd": 0.0})
        _, sd_p = predict(raw, lrs, [target_step])
        lever = predict(raw.model_copy(update={"model_sd": 1.0}), lrs, [target_step])[1]
        lever = np.sqrt(np.maximum(lever**2 - sd_p**2, 0.0))
        return float(mu[0]), float(sd[0]), f"{r.status.value}|{sd_p[0]}|{lever[0]}"
    return float(mu[0]), float(sd[0]), r.status.value


def _collection(c: Curve) -> str:
    """Which set of curves a run belongs to: the public ``shared/curves`` or the tiny-model curves made here."""
    return "tiny-model curves" if Path(c.csv_path).resolve().is_relative_to(TINY_ROOT) else "shared/curves"


def _job(args: tuple[Curve, str, str, dict | None, float | str]) -> list[dict]:
    c, method, view, cfg_json, lr_factor = args
    cfg = FitConfig.model_validate(cfg_json) if cfg_json is not None else None
    _, y = c.column()
    final = float(y[-1])
    out = []
    for f in FRACTIONS:
        t0 = time.perf_counter()
        try:
            mu, sd, status = _forecast(c, f, method, cfg, lr_factor)
        except Exception as e:  # a benchmark row, not a crash: report it
            mu, sd, status = float("nan"), float("nan"), f"error: {e}"
        out.append(
            dict(
                run=c.key,
                source=c.folder,
                collection=_collection(c),
                shape=c.shape,
                method=method,
                view=view,
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


def _map(fn: Callable, tasks: list, jobs: int) -> list:
    if jobs <= 1:
        return [fn(t) for t in tasks]
    with ProcessPoolExecutor(jobs) as ex:
        return list(ex.map(fn, tasks, chunksize=2))


def run_rows(
    curves: list[Curve],
    methods: dict[str, FitConfig | None],
    jobs: int,
    view: str = "",
    lr_factor: float | str = 1.0,
) -> list[dict]:
    """Every (curve, method, fraction) row. A method's config may be a dict ``source -> FitConfig`` (the
    leave-one-source-out priors)."""
    tasks = []
    for name, cfg in methods.items():
        for c in curves:
            cc = cfg.get(c.folder) if isinstance(cfg, dict) else cfg
            tasks.append((c, name, view, cc.model_dump() if isinstance(cc, FitConfig) else None, lr_factor))
    return [row for rows in _map(_job, tasks, jobs) for row in rows]


# --------------------------------------------------------------------------------------------------------
# tables


def _stats(rows: list[dict]) -> tuple[float, float, float, int]:
    e = np.array([abs(r["err"]) for r in rows], dtype=float)
    e = np.where(np.isfinite(e), e, 100.0)  # a missing forecast counts as a 100% miss
    cov = [
        abs(r["pred"] - r["final"]) <= _Z * r["sd"]
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
    if by == "all" and len({r["collection"] for r in rows}) > 1:  # then each collection of curves on its own
        groups += sorted({r["collection"] for r in rows})
    head = f"{title:<34}{'method':<9}{'n':>4}" + "".join(
        f"  {int(f * 100):>3}%: med   p90  cov" for f in FRACTIONS
    )
    lines = [head, "-" * len(head)]
    for g in groups:
        for mth in methods:
            sel = [
                r
                for r in rows
                if r["method"] == mth and (g == "all" or r["collection" if by == "all" else by] == g)
            ]
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


# --------------------------------------------------------------------------------------------------------
# the prior


def _whole_fit(args: tuple[Curve, float, str]) -> dict | None:
    """The plain law (no prior, Huber, no recency) fitted to a whole run that anneals below half its peak:
    its ``kappa / L_ref``, anneal share ``u`` and ``alpha``; None when the run cannot tell its C, or when its
    ``alpha`` ends on a bound of the search (then neither alpha nor C is a measurement of the law: the run is in
    a regime the law does not describe, as the tiny-model curves' early training is)."""
    c, lam, warmup = args
    st, y = c.column()
    keep = (st >= 1) & (st <= c.lrs.size)
    st, y = st[keep], y[keep]
    peak = float(c.lrs.max())
    if c.lrs[int(np.argmax(c.lrs)) :].min() > 0.5 * peak:  # too little annealing to measure C
        return None
    cfg = FitConfig(prior=None, warmup=warmup, lam=lam, recency=0.0)  # type: ignore[arg-type]
    r = fit(Observations.from_steps(st, y), c.lrs, cfg)
    if r.params is None or r.status != FitStatus.OK or r.params.C <= 0:
        return None
    lo, hi = cfg.alpha_bounds
    if not lo * 1.01 < r.params.alpha < hi * 0.99:  # alpha on its bound: the fit did not find the law
        return None
    p = r.params
    # relative to the final loss before annealing, as the fitter's prior_ref="final" uses it
    ref = p.L0 + p.A * float(c.lrs.sum()) ** (-p.alpha)
    return dict(
        key=c.key,
        source=c.folder,
        codebase=codebase(c),
        kappa_l=p.C * peak / (1 - lam) / ref,
        u=float(schedule_areas(c.lrs, lam, warmup, cfg.memory_for(c.lrs.size))[1][-1]) * (1 - lam) / peak,  # type: ignore[arg-type]
        alpha=p.alpha,
    )


def whole_fits(curves: list[Curve], jobs: int, lam: float = 0.999, warmup: str = "hold") -> list[dict]:
    """:func:`_whole_fit` of every curve (those that cannot tell their C left out)."""
    return [w for w in _map(_whole_fit, [(c, lam, warmup) for c in curves], jobs) if w is not None]


def random_effects(v: np.ndarray, groups: np.ndarray) -> tuple[float, float, float, dict[str, float]]:
    """One-way random effects by the method of moments (DerSimonian-Laird): ``v = mu + b_group + e`` with
    ``b ~ N(0, tau^2)``, ``e ~ N(0, sigma^2)``. Returns ``(mu, tau, sigma, group means)``; ``mu`` weighs every
    group by ``1 / (tau^2 + sigma^2 / n_group)``, so one large codebase does not make the mean its own."""
    names = sorted(set(groups.tolist()))
    means = np.array([v[groups == g].mean() for g in names])
    n = np.array([(groups == g).sum() for g in names], dtype=float)
    resid = np.concatenate([v[groups == g] - v[groups == g].mean() for g in names])
    sig2 = float(resid @ resid) / max(v.size - len(names), 1)
    w = n / max(sig2, 1e-12)
    mu_fixed = float((w * means).sum() / w.sum())
    q = float((w * (means - mu_fixed) ** 2).sum())
    tau2 = 0.0
    if len(names) > 1:
        tau2 = max(0.0, (q - (len(names) - 1)) / (w.sum() - (w**2).sum() / w.sum()))
    ws = 1.0 / (tau2 + sig2 / n)
    mu = float((ws * means).sum() / ws.sum())
    return mu, float(np.sqrt(tau2)), float(np.sqrt(sig2)), dict(zip(names, means.tolist(), strict=True))


def codebase(c: Curve) -> str:
    """The codebase that made a run: its source repository (shared/curves), or the generator that trained it
    (the tiny-model curves: one codebase whose folders differ by optimizer), else its folder."""
    return str(c.meta.get("source_repo") or c.meta.get("generator") or c.folder)


def learn_prior(
    fits: list[dict],
    tails: bool = True,
    source_sd_min: float = 0.3,
    alpha_sd_min: float = 0.05,
    lam: float = 0.999,
    warmup: str = "hold",
    what: str = "",
    folders: list[str] | None = None,
) -> AnnealingPrior:
    """The annealing prior from whole-curve fits (:func:`whole_fits`) grouped by codebase.

    ``log(kappa / L_ref) = log(kappa_mean) - q * log(u) + codebase effect + run effect``: ``q`` from the
    within-codebase regression on ``log(u)`` (``u`` clipped at 0.05), the rest by :func:`random_effects`.
    ``kappa_sd = kappa_mean * hypot(source_sd, run_sd)``, the spread a run of an unseen codebase has;
    ``source_sd`` is at least ``source_sd_min`` (a handful of codebases cannot measure it well; 0.3 is what the
    four codebases here give together, while leaving one out can give 0). ``alpha`` gets the same treatment on its own scale:
    mean and ``hypot(between, within)`` spread (at least ``alpha_sd_min``). With ``tails`` both priors are
    Student-t with one degree of freedom less than there are codebases: the spread between a handful of
    codebases is itself uncertain, and an unseen codebase can lie further out than any of them."""
    k = np.log([w["kappa_l"] for w in fits])
    lu = np.log(np.maximum([w["u"] for w in fits], 0.05))
    src = np.array([w["codebase"] for w in fits])
    kc, uc = k.copy(), lu.copy()
    for s in set(src.tolist()):
        kc[src == s] -= kc[src == s].mean()
        uc[src == s] -= uc[src == s].mean()
    q = -float(uc @ kc / (uc @ uc)) if float(uc @ uc) > 0 else 0.0
    mu, tau, sig, means = random_effects(k + q * lu, src)
    source_sd = max(tau, source_sd_min)
    k0 = float(np.exp(mu))
    a_mu, a_tau, a_sig, a_means = random_effects(np.array([w["alpha"] for w in fits]), src)
    runs_by_source = {s: int((src == s).sum()) for s in sorted(set(src.tolist()))}
    dof = float(max(len(runs_by_source) - 1, 1)) if tails else None
    return AnnealingPrior(
        kappa_mean=k0,
        kappa_sd=k0 * float(np.hypot(source_sd, sig)),
        kappa_u_power=q,
        kappa_dof=dof,
        alpha_mean=a_mu,
        alpha_sd=float(max(np.hypot(a_tau, a_sig), alpha_sd_min)),
        alpha_dof=dof,
        lam=lam,
        warmup=warmup,
        provenance={
            "what": ("Student-t" if tails else "normal")
            + " prior on kappa/L_ref at a full anneal (kappa = C*lr_peak/(1-lam), the full-anneal "
            "drop; L_ref = L0 + A*S1(T)^-alpha, the final loss without annealing), its mean "
            "kappa_mean * u^-kappa_u_power with u the anneal share the schedule completes (two-timescale "
            "memory of FitConfig()), no LR anywhere; kappa_sd = kappa_mean * hypot(source_sd, run_sd) from a "
            "random-effects fit of log(kappa/L_ref) over codebases (DerSimonian-Laird, source_sd floored at "
            "source_sd_min), "
            + ("degrees of freedom kappa_dof = codebases - 1; " if tails else "")
            + "alpha's the same way. From whole-curve fits of the annealing law (no prior, "
            "Huber, S2 warm-up held at peak) of runs whose LR decays below half its peak. " + what,
            "script": "benchmarks/forecast_accuracy.py --learn-prior",
            "n_runs": len(fits),
            "curve_folders": sorted(folders) if folders is not None else sorted({w["source"] for w in fits}),
            "runs_by_source": runs_by_source,
            "runs_by_folder": {
                f: sum(1 for w in fits if w["source"] == f) for f in sorted({w["source"] for w in fits})
            },
            "source_sd": tau,
            "source_sd_min": source_sd_min,
            "run_sd": sig,
            "mean_log_kappa_by_source": {s: float(v) for s, v in means.items()},
            "alpha_by_source": {s: float(v) for s, v in a_means.items()},
            "alpha_source_sd": a_tau,
            "alpha_run_sd": a_sig,
        },
    )


def loso_priors(fits: list[dict], curves: list[Curve], tails: bool = True) -> dict[str, AnnealingPrior]:
    """For each source folder, the prior learned without any run of its codebase (for the tiny-model curves,
    without any of them: their folders share one codebase)."""
    out = {}
    for folder in sorted({c.folder for c in curves}):
        cb = {codebase(c) for c in curves if c.folder == folder}
        rest = [w for w in fits if w["codebase"] not in cb]
        out[folder] = learn_prior(rest, tails, what=f"Learned without {', '.join(sorted(cb))}.")
    return out


# --------------------------------------------------------------------------------------------------------
# calibration


def calibrate(rows: list[dict], source_weight: float = 0.25, min_rows: int = 30) -> tuple[float, float]:
    """(interval_scale, model_sd) whose 80% intervals cover closest to 80% at every fraction, with a penalty
    (weight ``source_weight``) for any source of at least ``min_rows`` rows covered under 70%, from rows made
    with ``_CALIBRATE``. A heavier penalty buys the sources the law fits worst their 70% with intervals that
    cover 90-95% of everything else; the weight keeps the overall calibration first."""
    parts = []
    for r in rows:
        st = r["status"].split("|")
        if len(st) != 3 or not np.isfinite(r["pred"]):
            continue
        h = float(st[2]) / max(abs(r["pred"]), 1e-12)
        parts.append((r["f"], abs(r["pred"] - r["final"]), float(st[1]), h * abs(r["pred"]), r["source"]))
    f = np.array([p[0] for p in parts])
    err = np.array([p[1] for p in parts])
    sd_p = np.array([p[2] for p in parts])
    lever = np.array([p[3] for p in parts])
    src = np.array([p[4] for p in parts])
    big = [g for g in sorted(set(src.tolist())) if (src == g).sum() >= min_rows]
    best = (1.0, 0.0, np.inf)
    for s in np.geomspace(0.3, 20, 60):
        for m in np.concatenate([[0.0], np.geomspace(1e-3, 0.2, 60)]):
            sd = np.sqrt((s * sd_p) ** 2 + (m * lever) ** 2)
            inside = err <= _Z * sd
            cov = np.array([inside[f == fr].mean() for fr in FRACTIONS])
            by_src = np.array([inside[src == g].mean() for g in big])
            loss = float(
                np.sum((cov - LEVEL) ** 2) + source_weight * np.sum(np.maximum(0.7 - by_src, 0.0) ** 2)
            )
            if loss < best[2] - 1e-12:
                best = (float(s), float(m), loss)
    sd = np.sqrt((best[0] * sd_p) ** 2 + (best[1] * lever) ** 2)
    inside = err <= _Z * sd
    print(
        "coverage at "
        + ", ".join(f"{int(fr * 100)}%: {100 * inside[f == fr].mean():.0f}%" for fr in FRACTIONS)
        + "; by source "
        + ", ".join(f"{g}: {100 * inside[src == g].mean():.0f}%" for g in sorted(set(src.tolist())))
    )
    return best[0], best[1]


# --------------------------------------------------------------------------------------------------------


def _load(roots: list[str] | None) -> list[Curve]:
    """The curves of every root (default: ``shared/curves`` plus the tiny-model curves the repo ships)."""
    if not roots:
        tiny = Path(__file__).resolve().parent / "curves_tiny"
        roots = [
            str(r) for r in (default_root(), tiny) if r is not None and (Path(r) / "index.csv").is_file()
        ]
    curves = [c for r in roots for c in load_curves(r)]
    keys = [c.key for c in curves]
    if len(set(keys)) != len(keys):
        raise ValueError("two roots hold the same folder/run")
    return sorted(curves, key=lambda c: c.key)


def _print_tables(rows: list[dict], bys: list[str]) -> None:
    for by in bys:
        print()
        print(table(rows, by, {"all": "overall", "source": "source", "shape": "shape"}[by]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", action="append", default=None, help="a curves root (repeatable)")
    ap.add_argument("--quick", action="store_true", help="default and cli only, no dev/holdout baselines")
    ap.add_argument("--methods", default=None, help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--config", default=None, help="JSON of FitConfig fields for the 'default' method")
    ap.add_argument("--no-loso", action="store_true", help="skip the leave-one-source-out cold start")
    ap.add_argument("--no-halves", action="store_true", help="skip the dev/holdout view")
    ap.add_argument("--units", action="store_true", help="check that LR units do not change any forecast")
    ap.add_argument("--learn-prior", action="store_true", help="write the shipped prior (dev half)")
    ap.add_argument("--calibrate", action="store_true", help="fit interval_scale, model_sd on LOSO rows")
    ap.add_argument("--dump", default=None, help="write every row as JSON lines here")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm start (one finished sibling)")
    ap.add_argument("--normal-prior", action="store_true", help="priors without Student-t tails (to compare)")
    args = ap.parse_args(argv)

    curves = _load(args.root)
    dev, hold = split_curves(curves)
    sources = sorted({c.folder for c in curves})
    base = FitConfig.model_validate(json.loads(args.config)) if args.config else FitConfig()
    t0 = time.perf_counter()
    fits = whole_fits(curves, args.jobs)
    dev_keys = {c.key for c in dev}
    shipped = learn_prior(
        [w for w in fits if w["key"] in dev_keys],
        not args.normal_prior,
        what="Dev half (benchmarks/curves.py split_curves).",
        folders=sorted({c.folder for c in dev}),
    )
    if args.learn_prior:
        PRIOR_OUT.write_text(json.dumps(shipped.model_dump(mode="json"), indent=1) + "\n")
        print(json.dumps(shipped.model_dump(mode="json"), indent=1))
        return
    loso = {
        s: base.model_copy(update={"prior": p})
        for s, p in loso_priors(fits, curves, not args.normal_prior).items()
    }
    if args.calibrate:
        global _CALIBRATE
        _CALIBRATE = True
        rows = run_rows(curves, {"default": loso}, args.jobs, "loso")
        s, m = calibrate(rows)
        print(f"interval_scale={s:.3g} model_sd={m:.3g} (leave-one-source-out rows)")
        return

    n_cb = len({codebase(c) for c in curves})
    print(
        f"{len(curves)} runs from {len(sources)} sources ({n_cb} codebases); {len(fits)} whole-curve fits tell their C"
    )
    for s in sources:
        p = loso[s].prior
        assert isinstance(p, AnnealingPrior)
        print(
            f"  prior for {s:<26} kappa/L = {p.kappa_mean:.4f} * u^{-p.kappa_u_power:+.2f}, sd {p.kappa_sd / p.kappa_mean:.2f} "
            f"relative (between codebases {p.provenance['source_sd']:.2f}, runs {p.provenance['run_sd']:.2f}"
            + (f"), t{p.kappa_dof:.0f}; " if p.kappa_dof else "), normal; ")
            + f"alpha {p.alpha_mean:.2f} +- {p.alpha_sd:.2f}"
        )
    all_rows: list[dict] = []
    if not args.no_loso:
        rows = run_rows(curves, {"default": loso, "online": loso}, args.jobs, "loso")
        all_rows += rows
        print(
            "\n=== cold start, leave one source out: the prior learned without the run's source; "
            "|error| of the final loss in %, 80% interval coverage in %"
        )
        _print_tables(rows, ["all", "source", "shape"])
    if not args.no_halves:
        names = (
            args.methods.split(",")
            if args.methods
            else (["default", "cli"] if args.quick else ["default", "cli", "plain", "last", "steppow"])
        )
        methods: dict[str, FitConfig | None] = {}
        for n in dict.fromkeys(["default", *names]):
            cfg = METHODS[n]()
            if isinstance(cfg, FitConfig) and cfg.prior is not None:
                cfg = (base if n in ("default", "cli") else cfg).model_copy(update={"prior": shipped})
            methods[n] = cfg
        for hname, hc in (("dev", dev), ("holdout", hold)):
            rows = run_rows(hc, methods, args.jobs, hname)
            all_rows += rows
            print(
                f"\n=== {hname} half: {len(hc)} runs, prior learned on the dev half; |error| of the final loss "
                "in %, 80% interval coverage in %"
            )
            _print_tables(rows, ["all", "source", "shape"])
    if args.units:
        ref = run_rows(curves, {"default": base.model_copy(update={"prior": shipped})}, args.jobs, "units")
        worst = 0.0
        for factor in ("peak", 1e3):
            other = run_rows(
                curves, {"default": base.model_copy(update={"prior": shipped})}, args.jobs, "units", factor
            )
            for a, b in zip(ref, other, strict=True):
                if np.isfinite(a["pred"]) or np.isfinite(b["pred"]):
                    worst = max(worst, abs(a["pred"] - b["pred"]) / abs(a["final"]))
        print(
            f"\nLR units: largest change of a forecast (LR / peak, LR * 1e3) = {100 * worst:.2g}% of the loss"
        )
    if not args.no_warm:
        import warm_accuracy

        warm, skipped = warm_accuracy.run_rows(curves, 2, args.jobs)
        print(
            "\n=== warm start: one finished sibling of the run's family as prior (benchmarks/warm_accuracy.py); "
            f"|error| of the final loss in %, 80% interval coverage in % ({len(skipped)} siblings never annealed)"
        )
        for by in ("all", "source", "length"):
            print()
            print(warm_accuracy.table(warm, by))
    ms = [r["ms"] for r in all_rows if r["method"] == "default"]
    if ms:
        print(f"\ndefault: median {np.median(ms):.0f} ms per forecast (fit + predict)")
    if args.dump:
        with open(args.dump, "w") as fh:
            for r in all_rows:
                fh.write(json.dumps(r) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
