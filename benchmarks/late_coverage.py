"""Forecasts made late in a run, against the last loss it logged: the law's band and the band of a logged loss.

For each public run (``../shared/curves``) the online forecaster (as ``scaleforecast forecast`` runs it, with the
shipped prior) is fitted to the losses up to 75, 90 and 97 % of the run and asked for the loss at the last
logged step. The table gives the median |error| and how
often the 80 % band holds the logged loss: the law's band (what the callbacks and the stop rule read) and the
band widened by the noise of one logged value (``OnlineForecaster.forecast(observed=True)``, what
``scaleforecast forecast`` prints). Near the end the law's band is narrower than that noise.

    python benchmarks/late_coverage.py [--jobs 2] [--column train_loss]
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import Curve, load_curves

from scaleforecast import ForecasterConfig, OnlineForecaster

FRACTIONS = (0.75, 0.9, 0.97)
Z80 = 1.2816


def _rows(c: Curve, column: str | None = None) -> list[tuple[float, float, bool, bool]]:
    """(fraction, error %, law band holds the last logged loss, logged-loss band holds it) per fraction."""
    steps, y = c.column(column)
    if not steps.size:  # a run without that column
        return []
    target, final = int(min(steps[-1], c.lrs.size)), float(y[-1])
    out = []
    for f in FRACTIONS:
        seen = (steps >= 1) & (steps <= f * c.lrs.size)
        # the path `scaleforecast forecast` takes: the online forecaster, its law check and backtest included
        fc = OnlineForecaster(c.lrs, ForecasterConfig())
        fc.observe_many(steps[seen], y[seen])
        fc.refit()
        law, logged = (fc.forecast(steps=[target], observed=o).points for o in (False, True))
        if not law or not logged:
            continue
        law, logged = law[0], logged[0]
        miss = abs(law.loss - final)
        out.append((f, 100 * (law.loss - final) / final, miss <= Z80 * law.std, miss <= Z80 * logged.std))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--column",
        choices=["val_loss", "train_loss"],
        help="the loss column (default: the one the CLI picks, val_loss where a run has one)",
    )
    args = ap.parse_args()
    curves = load_curves()
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [r for rs in pool.map(partial(_rows, column=args.column), curves) for r in rs]
    which = "" if args.column is None else f", column {args.column}"
    print(f"{len(curves)} public runs{which}; 80 % bands against the last logged loss")
    print(
        f"{'fitted to':>10} {'runs':>5} {'median |err| %':>15} {'law band cov %':>15} {'logged-loss band cov %':>23}"
    )
    for f in FRACTIONS:
        at = [r for r in rows if r[0] == f]
        err = np.median([abs(r[1]) for r in at])
        law, logged = 100 * np.mean([r[2] for r in at]), 100 * np.mean([r[3] for r in at])
        print(f"{f:>9.0%} {len(at):>5d} {err:>15.3f} {law:>15.0f} {logged:>23.0f}")


if __name__ == "__main__":
    main()
