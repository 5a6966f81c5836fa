"""The ``law_violated`` check: alarms on healthy real runs, and coverage on runs whose loss leaves the law.

1. False alarms: every run of ``shared/curves`` (train and val loss columns), fed to the online forecaster up
   to 20%, 30%, ..., 100% of its steps and refitted; the share of forecasts whose status is ``law_violated``
   (target 0: all of these runs finished healthy).
2. Law-breaking runs (``benchmarks/data/law_break``, made by ``law_break_curves.py``: overfitting, a data
   switch, a resume from the wrong checkpoint, and healthy controls): forecast from the first 25/50/75/90% of
   steps, the status and whether the 80% interval covers the run's last loss, with the check (the default)
   and without it (``LawCheckConfig(enabled=False)``: the law's own band).

    python benchmarks/law_check.py [--quick]      # ~4 min on one core (--quick: every 4th shared run)
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

from curves import load_curves

from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.lawcheck import LawCheckConfig
from scaleforecast.results import FitStatus

LAW_BREAK = Path(__file__).resolve().parent / "data" / "law_break"


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


def false_alarms(every: int = 1) -> list[dict]:
    rows = []
    for c in load_curves()[::every]:
        for col in ("train_loss", "val_loss"):
            st, y = c.column(col)
            if st.size < 20:
                continue
            for f in np.arange(0.2, 1.01, 0.1):
                status, *_ = _forecast(st, y, c.lrs, f * c.lrs.size)
                rows.append(dict(source=c.folder, column=col, f=round(float(f), 1), status=status.value))
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


def law_break_rows(root: Path = LAW_BREAK) -> list[dict]:
    rows = []
    for r in read_law_break(root):
        final = float(r["y"][-1])
        for f in (0.25, 0.5, 0.75, 0.9):
            upto = f * r["lrs"].size
            for check in (True, False):
                status, mu, lo, hi = _forecast(r["steps"], r["y"], r["lrs"], upto, check)
                rows.append(
                    dict(
                        run=r["name"],
                        fault=r["fault"],
                        after_fault=bool(r["fault"] != "none" and upto > (r["fault_step"] or 0)),
                        f=f,
                        check=check,
                        status=status.value,
                        err=100 * (mu - final) / final,
                        covered=bool(lo <= final <= hi),
                        width=100 * (hi - lo) / final,
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
    print("1. law_violated on healthy runs (shared/curves), share of forecasts at 20%..100% of each run")
    print(f"{'source':<26}{'column':<12}{'forecasts':>10}{'law_violated':>14}")
    for key in sorted({(r["source"], r["column"]) for r in rows}):
        sel = [r for r in rows if (r["source"], r["column"]) == key]
        bad = sum(r["status"] == "law_violated" for r in sel)
        print(f"{key[0]:<26}{key[1]:<12}{len(sel):>10}{bad:>8} ({100 * bad / len(sel):.1f}%)")
    bad = sum(r["status"] == "law_violated" for r in rows)
    print(f"{'all':<38}{len(rows):>10}{bad:>8} ({100 * bad / len(rows):.1f}%)")

    lb = law_break_rows(args.law_break)
    print("\n2. law-breaking runs: status and 80% coverage of the last loss, forecast from the first f of steps")
    print(f"{'run':<20}{'f':>5}  {'status (check on)':<24}{'err%':>7}{'covered':>9}{'width%':>8}   law only:")
    for r in [x for x in lb if x["check"]]:
        off = next(x for x in lb if not x["check"] and x["run"] == r["run"] and x["f"] == r["f"])
        mark = "*" if r["after_fault"] else " "
        print(
            f"{r['run']:<20}{r['f']:>5}{mark} {r['status']:<24}{r['err']:>7.2f}{str(r['covered']):>9}"
            f"{r['width']:>8.2f}   {off['status']:<24}{str(off['covered']):>6}{off['width']:>7.2f}"
        )
    print("  (* = forecast made after the run left the law)")
    for check in (True, False):
        sel = [r for r in lb if r["check"] == check and r["after_fault"]]
        ctl = [r for r in lb if r["check"] == check and r["fault"] == "none"]
        name = "with the check" if check else "law's own band"
        print(
            f"  {name:<15}: after the fault coverage {100 * np.mean([r['covered'] for r in sel]):.0f}% "
            f"({len(sel)} forecasts), law_violated {sum(r['status'] == 'law_violated' for r in sel)}; "
            f"healthy controls coverage {100 * np.mean([r['covered'] for r in ctl]):.0f}%, "
            f"law_violated {sum(r['status'] == 'law_violated' for r in ctl)} of {len(ctl)}"
        )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
