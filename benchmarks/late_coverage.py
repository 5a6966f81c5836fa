"""Forecasts made late in a run, against the last loss it logged: the law's band and the band of a logged loss.

For each public run (``../shared/curves``) the law is fitted with the shipped prior to the losses up to 75, 90
and 97 % of the run and asked for the loss at the last logged step. The table gives the median |error| and how
often the 80 % band holds the logged loss: the law's band (what the callbacks and the stop rule read) and the
band widened by the noise of one logged value (``OnlineForecaster.forecast(observed=True)``, what
``scaleforecast forecast`` prints). Near the end the law's band is narrower than that noise.

    python benchmarks/late_coverage.py [--jobs 2]
"""

from __future__ import annotations

import argparse
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from curves import Curve, load_curves

from scaleforecast import FitConfig, fit
from scaleforecast.fitting import Observations, predict

FRACTIONS = (0.75, 0.9, 0.97)
Z80 = 1.2816


def _rows(c: Curve) -> list[tuple[float, float, bool, bool]]:
    """(fraction, error %, law band holds the last logged loss, logged-loss band holds it) per fraction."""
    steps, y = c.column()
    target, final = int(min(steps[-1], c.lrs.size)), float(y[-1])
    out = []
    for f in FRACTIONS:
        seen = steps <= f * c.lrs.size
        r = fit(Observations.from_steps(steps[seen], y[seen]), c.lrs, FitConfig())
        if r.params is None:
            continue
        mu, sd = (float(v[0]) for v in predict(r, c.lrs, [target]))
        miss = abs(mu - final)
        out.append(
            (f, 100 * (mu - final) / final, miss <= Z80 * sd, miss <= Z80 * math.hypot(sd, r.sigma * mu))
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    curves = load_curves()
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = [r for rs in pool.map(_rows, curves) for r in rs]
    print(f"{len(curves)} public runs; 80 % bands against the last logged loss")
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
