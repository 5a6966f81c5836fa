"""The ``law_violated`` check: alarms on healthy real runs, and coverage on runs whose loss leaves the law.

1. False alarms: every healthy run of ``shared/curves`` and of the tiny-model set ``benchmarks/curves_tiny``
   (train and val loss columns; tiny runs marked law-breaking go to 2.) streamed through the online
   forecaster (about 40 refits a run, plus the policy's early ones); the share of its forecasts whose status
   is ``law_violated``, and the runs that raised any (target 0, but for the one epfml run at LR 0.005 whose
   loss diverged from 5.6 to 7.5 and stayed there: its alarms are right).
2. Law-breaking runs (``benchmarks/data/law_break``, made by ``law_break_curves.py``: overfitting, a data
   switch, a resume from the wrong checkpoint, and healthy controls; and the tiny-model runs marked
   law-breaking: late rises, a curriculum switch, a diverging SGD run), streamed the same way: the latest
   forecast by 25/50/60/75/90% of the steps, its status and whether its 80% interval covers the run's last
   loss, with the check (the default) and without it (``LawCheckConfig(enabled=False)``: the law's band).

    python benchmarks/law_check.py [--quick]      # about a minute (--quick: every 4th shared run)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import TINY_ROOT, default_root, load_curves

from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.lawcheck import LawCheckConfig
from scaleforecast.results import FitStatus

LAW_BREAK = Path(__file__).resolve().parent / "data" / "law_break"
FRACTIONS = (0.25, 0.5, 0.6, 0.75, 0.9)


def _forecast(
    steps: np.ndarray, y: np.ndarray, lrs: np.ndarray, upto: float, check: bool = True
) -> tuple[FitStatus, float, float, float]:
    m = (steps >= 1) & (steps <= upto)
    cfg = ForecasterConfig(law_check=LawCheckConfig(enabled=check))
    fc = OnlineForecaster(lrs, cfg)
    fc.observe_many(steps[m], y[m])
    fc.refit()
    out = fc.forecast(steps=[int(steps[-1])])
    if not out.points:
        return out.status, float("nan"), float("nan"), float("nan")
    p = out.points[0]
    return out.status, p.loss, p.lower, p.upper


def online(
    steps: np.ndarray, y: np.ndarray, lrs: np.ndarray, refits: int = 40, window: int = 1, check: bool = True
) -> list[dict]:
    """Stream a run through the online forecaster (refit about ``refits`` times, plus the policy's early
    refits) and return, per forecast, its step, status, final-step interval and the check's statistics."""
    every = max(1, lrs.size // refits)
    cfg = ForecasterConfig(refit_every=every, law_check=LawCheckConfig(enabled=check))
    fc = OnlineForecaster(lrs, cfg)
    out = []
    chunk = max(1, int(np.searchsorted(steps, every)) // 4)
    for lo in range(0, steps.size, chunk):
        f = fc.update(steps[lo : lo + chunk], y[lo : lo + chunk], window=window)
        if f is None:
            continue
        c = fc.law_check
        final = fc.forecast(steps=[int(steps[-1])])
        pt = final.points[0] if final.points else None
        out.append(
            dict(
                step=int(steps[min(lo + chunk, steps.size) - 1]),
                status=f.status.value,
                z_dep=0.0 if c is None else c.z_departure,
                z_rise=0.0 if c is None else c.z_rise,
                z_ahead=0.0 if c is None else c.z_ahead,
                lower=pt.lower if pt else float("nan"),
                upper=pt.upper if pt else float("nan"),
            )
        )
    return out


def false_alarms(every: int = 1) -> list[dict]:
    """Every forecast of every healthy run (train and val columns) streamed through the forecaster: the
    runs of ``shared/curves`` and the tiny-model runs not marked law-breaking."""
    rows = []
    for c in [c for c in load_curves([default_root(), TINY_ROOT]) if not c.law_breaking][::every]:
        for col in ("train_loss", "val_loss"):
            st, y = c.column(col)
            keep = st >= 1
            st, y = st[keep], y[keep]
            if st.size < 20:
                continue
            for r in online(st, y, c.lrs):
                rows.append(dict(source=c.folder, column=col, run=c.key, **r))
    return rows


def read_law_break(root: Path = LAW_BREAK) -> list[dict]:
    """The law-breaking runs: ``name, fault, fault_step, steps, y, lrs`` (the column that breaks the law)."""
    index = json.loads((root / "index.json").read_text())
    runs = []
    for name, meta in sorted(index.items()):
        steps, y = [], []
        with open(root / f"{name}.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                if row[meta["column"]]:
                    steps.append(int(row["step"]))
                    y.append(float(row[meta["column"]]))
        runs.append(
            dict(
                name=name,
                fault=meta["fault"],
                fault_step=meta.get("fault_step") or meta.get("min_val_step"),
                steps=np.array(steps),
                y=np.array(y),
                lrs=np.load(root / f"{name}.lr.npy"),
            )
        )
    return runs


def law_breaking_runs(root: Path = LAW_BREAK) -> list[dict]:
    """This benchmark's own law-breaking runs (with the step where each leaves the law) and the tiny-model
    runs marked law-breaking (``benchmarks/curves_tiny``; the step is not recorded there)."""
    runs = [dict(r, window=1 if r["fault"] == "overfit" else 10) for r in read_law_break(root)]
    for c in load_curves(TINY_ROOT):
        if c.law_breaking:
            st, y = c.column()
            keep = st >= 1
            runs.append(
                dict(
                    name=c.run_id,
                    fault="tiny",
                    fault_step=None,
                    steps=st[keep],
                    y=y[keep],
                    lrs=c.lrs,
                    window=1,
                )
            )
    return runs


def law_break_rows(root: Path = LAW_BREAK) -> list[dict]:
    """Each law-breaking run streamed through the forecaster, with and without the check; at each fraction
    the latest forecast made by then: its status and whether its 80% interval covers the run's last loss."""
    rows = []
    for r in law_breaking_runs(root):
        final = float(r["y"][-1])
        for check in (True, False):
            stream = online(r["steps"], r["y"], r["lrs"], window=r["window"], check=check)
            for f in FRACTIONS:
                made = [x for x in stream if x["step"] <= f * r["lrs"].size]
                if not made:
                    continue
                x = made[-1]
                rows.append(
                    dict(
                        run=r["name"],
                        fault=r["fault"],
                        after_fault=bool(r["fault_step"] is not None and x["step"] > r["fault_step"]),
                        f=f,
                        check=check,
                        status=x["status"],
                        covered=bool(x["lower"] <= final <= x["upper"]),
                        width=100 * (x["upper"] - x["lower"]) / final,
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="every 4th run of shared/curves")
    ap.add_argument("--law-break", type=Path, default=LAW_BREAK)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = false_alarms(4 if args.quick else 1)
    print(
        "1. law_violated on healthy runs (shared/curves, curves_tiny): every forecast of each run streamed online"
    )
    print(f"{'source':<26}{'column':<12}{'forecasts':>10}{'law_violated':>14}")
    for key in sorted({(r["source"], r["column"]) for r in rows}):
        sel = [r for r in rows if (r["source"], r["column"]) == key]
        bad = sum(r["status"] == "law_violated" for r in sel)
        print(f"{key[0]:<26}{key[1]:<12}{len(sel):>10}{bad:>8} ({100 * bad / len(sel):.1f}%)")
    bad = sum(r["status"] == "law_violated" for r in rows)
    print(f"{'all':<38}{len(rows):>10}{bad:>8} ({100 * bad / len(rows):.1f}%)")
    alarmed = sorted({(r["run"], r["column"]) for r in rows if r["status"] == "law_violated"})
    for run, col in alarmed:
        sel = [r for r in rows if (r["run"], r["column"]) == (run, col)]
        n = sum(r["status"] == "law_violated" for r in sel)
        print(f"  {n:>4} of {len(sel):>4}  {col:<11} {run}")

    lb = law_break_rows(args.law_break)
    print(
        "\n2. law-breaking runs streamed online: the latest forecast by f of the steps, its status and whether"
    )
    print("   its 80% interval covers the run's last loss")
    print(f"{'run':<20}{'f':>5}  {'status (check on)':<24}{'covered':>8}{'width%':>8}   law's own band:")
    for r in [x for x in lb if x["check"]]:
        off = next(x for x in lb if not x["check"] and x["run"] == r["run"] and x["f"] == r["f"])
        mark = "*" if r["after_fault"] else " "
        print(
            f"{r['run']:<20}{r['f']:>5}{mark} {r['status']:<24}{r['covered']!s:>8}"
            f"{r['width']:>8.2f}   {off['status']:<24}{off['covered']!s:>6}{off['width']:>7.2f}"
        )
    print(
        "  (* = forecast made after the run left the law; tiny-model runs: where it leaves is not recorded)"
    )
    for check in (True, False):
        sel = [r for r in lb if r["check"] == check and r["after_fault"]]
        tiny = [r for r in lb if r["check"] == check and r["fault"] == "tiny"]
        ctl = [r for r in lb if r["check"] == check and r["fault"] == "none"]
        name = "with the check" if check else "law's own band"
        print(
            f"  {name:<15}: after the fault coverage {100 * np.mean([r['covered'] for r in sel]):.0f}% "
            f"({len(sel)} forecasts, law_violated {sum(r['status'] == 'law_violated' for r in sel)}); "
            f"tiny law-breaking runs {100 * np.mean([r['covered'] for r in tiny]):.0f}% ({len(tiny)}, "
            f"law_violated {sum(r['status'] == 'law_violated' for r in tiny)}); healthy controls "
            f"{100 * np.mean([r['covered'] for r in ctl]):.0f}% (law_violated "
            f"{sum(r['status'] == 'law_violated' for r in ctl)} of {len(ctl)})"
        )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
