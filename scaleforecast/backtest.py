"""``scaleforecast backtest RUN``: how far to trust the forecast on this kind of run.

For each fraction ``f`` of a finished run, fit on the observations at steps ``<= f * T`` (as if the run had been
stopped there), forecast the final loss, and compare with the loss the run actually reached at its last step
(estimated from the end of its log, with its own uncertainty: :mod:`scaleforecast.observed`). Prints a table (or
JSON) and draws a picture: the forecast with its band against the fraction of the run seen, and the error.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel

from scaleforecast.forecaster import ForecasterConfig
from scaleforecast.observed import observed_final
from scaleforecast.progress import Progress
from scaleforecast.report import fit_run, png_bytes
from scaleforecast.run_args import SCHEDULE_HELP, add_run_arguments, level_arg, run_from_args
from scaleforecast.runs import RunData
from scaleforecast.safe_write import write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["BacktestResult", "BacktestRow", "backtest", "draw_backtest"]

DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

EPILOG = """\
examples:
  scaleforecast backtest run.csv --lr-file run.lr.npy
  scaleforecast backtest lightning_logs/version_3 --fractions 0.25 0.5 0.75 -o backtest.png
  scaleforecast backtest megatron/tensorboard --loss "lm loss" --json

The run must be finished (its last logged step at the end of its schedule): the reference is its loss at the
last step, read from a line through its last points (at least 8, over at most the last 10% of the run).
"""


class BacktestRow(BaseModel):
    """The forecast made from the first ``fraction`` of the run, against the observed final loss."""

    fraction: float
    step: int
    n_points: int
    status: str
    forecast: float | None
    lower: float | None
    upper: float | None
    actual: float
    error: float | None = None
    error_pct: float | None
    inside: bool | None
    reason: str | None = None  # why there is no forecast, when there is none


class BacktestResult(BaseModel):
    """All rows, with the summary: median and worst |error| in % and the band's coverage."""

    run: str
    loss_name: str
    final_step: int
    level: float
    actual: float
    actual_std: float | None = None
    actual_points: int = 0
    notes: list[str] = []
    rows: list[BacktestRow]
    median_abs_error_pct: float | None
    max_abs_error_pct: float | None
    coverage: float | None


def backtest(
    run: RunData,
    fractions: tuple[float, ...] | list[float] = DEFAULT_FRACTIONS,
    level: float = 0.8,
    progress: bool | None = None,
) -> BacktestResult:
    """Fit on each prefix ``steps <= fraction * T`` and score the final-loss forecast (see the module docstring)."""
    if run.lrs is None:
        raise ValueError(f"{run.source}: no LR for this run; pass --schedule SPEC or --lr-file")
    total = len(run.lrs)
    obs = observed_final(run)
    if obs is None:
        finite = run.steps[np.isfinite(run.losses)]
        last_finite = int(finite[-1]) if len(finite) else None
        if last_finite is not None and last_finite < run.last_step:
            raise ValueError(
                f"{run.source}: its losses are not finite after step {last_finite} (logged to step "
                f"{run.last_step} of {total}): there is no final loss to score the forecasts against"
            )
        raise ValueError(
            f"{run.source}: the run is not finished (last loss at step {run.last_step} of {total}); "
            "a backtest needs the loss at the schedule's last step (when the run's length was read off a logged "
            "LR column, --total-steps N sets it)"
        )
    for f in fractions:
        if not 0.0 < f < 1.0:
            raise ValueError(f"fractions must lie in (0, 1), got {f}")
    actual = obs.value
    rows: list[BacktestRow] = []
    bar = Progress(len(fractions), f"backtest {run.name[:30]}", progress)
    try:
        for f in sorted(fractions):
            until = round(f * total)
            if not (run.steps <= until).any():
                continue
            fc = fit_run(run, until, ForecasterConfig(level=level)).forecast()
            final = fc.final
            if final is None:
                rows.append(
                    BacktestRow(
                        fraction=f,
                        step=until,
                        n_points=fc.n_points,
                        status=fc.status.value,
                        forecast=None,
                        lower=None,
                        upper=None,
                        actual=actual,
                        error_pct=None,
                        inside=None,
                        reason=fc.warnings[0] if fc.warnings else None,
                    )
                )
            else:
                rows.append(
                    BacktestRow(
                        fraction=f,
                        step=until,
                        n_points=fc.n_points,
                        status=fc.status.value,
                        forecast=final.loss,
                        lower=final.lower,
                        upper=final.upper,
                        actual=actual,
                        error=final.loss - actual,
                        # A loss that reaches 0 has no relative error; the absolute one is still there.
                        error_pct=100.0 * (final.loss - actual) / abs(actual) if actual != 0 else None,
                        inside=bool(final.lower <= actual <= final.upper),
                    )
                )
            bar.advance(1)
    finally:
        bar.close()
    errs = [abs(r.error_pct) for r in rows if r.error_pct is not None and math.isfinite(r.error_pct)]
    inside = [r.inside for r in rows if r.inside is not None]
    return BacktestResult(
        run=run.source,
        loss_name=run.loss_name,
        final_step=total,
        level=level,
        actual=actual,
        actual_std=obs.std if math.isfinite(obs.std) else None,
        actual_points=obs.n_points,
        notes=[obs.note] if obs.note else [],
        rows=rows,
        median_abs_error_pct=float(np.median(errs)) if errs else None,
        max_abs_error_pct=float(np.max(errs)) if errs else None,
        coverage=float(np.mean(inside)) if inside else None,
    )


def format_table(result: BacktestResult) -> str:
    """The rows as a fixed-width text table with a summary line."""
    pct = round(100 * result.level)
    pm = f" ± {result.actual_std:.2g}" if result.actual_std is not None else ""
    lines = [
        f"{Path(result.run).name}: {result.loss_name}, observed final loss {result.actual:.4f}{pm} at step "
        f"{result.final_step} (from its last {result.actual_points} points)",
        f"{'seen':>5} {'step':>8} {'points':>7} {'forecast':>9} {f'{pct}% band':>19} {'error':>8}  in band  status",
    ]
    for r in result.rows:
        if r.forecast is None:
            lines.append(
                f"{r.fraction:>5.0%} {r.step:>8} {r.n_points:>7} {'-':>9} {'-':>19} {'-':>8}  {'-':>7}  {r.status}"
                + (f" ({r.reason})" if r.reason else "")
            )
            continue
        band = f"[{r.lower:.4f}, {r.upper:.4f}]"
        err = f"{r.error_pct:>+7.2f}%" if r.error_pct is not None else f"{r.error:>+8.3g}"
        lines.append(
            f"{r.fraction:>5.0%} {r.step:>8} {r.n_points:>7} {r.forecast:>9.4f} {band:>19} "
            f"{err}  {'yes' if r.inside else 'NO':>7}  {r.status}"
        )
    if result.median_abs_error_pct is not None:
        lines.append(
            f"median |error| {result.median_abs_error_pct:.2f}%, worst {result.max_abs_error_pct:.2f}%, "
            f"band coverage {100 * (result.coverage or 0):.0f}% (nominal {pct}%)"
        )
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def draw_backtest(result: BacktestResult, run: RunData, dpi: int = 100) -> Figure:
    """Left: the run's curve with each prefix forecast of the final loss (at the step it was made) and its band.
    Right: the error in % against the fraction of the run seen, filled where the band held the actual loss."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.0, 5.2), dpi=dpi)
    ax, ax_err = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1.0], "wspace": 0.22})
    ok = np.isfinite(run.losses)
    ax.scatter(
        run.steps[ok],
        run.losses[ok],
        s=3,
        color="tab:blue",
        alpha=0.25,
        lw=0,
        rasterized=True,
        label=run.loss_name,
    )
    rows = [r for r in result.rows if r.forecast is not None]
    relative = result.actual != 0
    if rows:
        s = np.array([r.step for r in rows])
        m = np.array([r.forecast for r in rows])
        lo = np.array([r.lower for r in rows])
        hi = np.array([r.upper for r in rows])
        ax.errorbar(
            s,
            m,
            yerr=[m - lo, hi - m],
            fmt="o-",
            color="tab:orange",
            capsize=4,
            lw=1.2,
            label=f"forecast of the final loss, made at that step ({round(100 * result.level)}% band)",
        )
    ax.axhline(result.actual, color="k", ls="--", lw=1.2, label=f"observed final {result.actual:.4f}")
    later = run.losses[ok & (run.steps >= 0.1 * result.final_step)]
    vals = [result.actual, *[v for r in rows for v in (r.lower, r.upper) if v is not None]]
    if later.size:
        vals += [float(np.quantile(later, 0.97)), float(np.quantile(later, 0.01))]
    lo_y, hi_y = min(vals), max(vals)
    pad = 0.08 * max(hi_y - lo_y, 1e-6)
    ax.set_ylim(lo_y - pad, hi_y + pad)
    ax.set_xlim(0, result.final_step * 1.01)
    ax.set_xlabel("optimizer step (where the forecast was made)")
    ax.set_ylabel(run.loss_name)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8.5)
    name = run.name if len(run.name) <= 60 else run.name[:57] + "..."
    ax.set_title(f"backtest: {name}", fontsize=11, loc="left")

    f = np.array([100 * r.fraction for r in rows])
    scale = 100 / abs(result.actual) if relative else 1.0
    e = np.array([r.error * scale if r.error is not None else np.nan for r in rows])
    inside = np.array([bool(r.inside) for r in rows])
    if rows:
        ax_err.plot(f, e, color="0.4", lw=1.0)
        ax_err.scatter(
            f[inside], e[inside], s=50, color="tab:green", zorder=3, label="actual inside the band"
        )
        ax_err.scatter(
            f[~inside],
            e[~inside],
            s=50,
            facecolor="white",
            edgecolor="tab:red",
            lw=1.5,
            zorder=3,
            label="actual outside the band",
        )
        band_lo = scale * (np.array([r.lower for r in rows]) - result.actual)
        band_hi = scale * (np.array([r.upper for r in rows]) - result.actual)
        ax_err.fill_between(f, band_lo, band_hi, color="tab:orange", alpha=0.2, lw=0, label="band, relative")
    ax_err.axhline(0, color="k", lw=0.8)
    ax_err.set_xlabel("% of the run seen")
    ax_err.set_ylabel("forecast error of the final loss" + (" (%)" if relative else ""))
    ax_err.set_xlim(0, 100)
    ax_err.grid(alpha=0.3)
    ax_err.legend(loc="upper right", fontsize=8.5)
    if result.median_abs_error_pct is not None:
        ax_err.set_title(
            f"median |error| {result.median_abs_error_pct:.2f}%, coverage {100 * (result.coverage or 0):.0f}% "
            f"(nominal {round(100 * result.level)}%)",
            fontsize=10,
        )
    fig.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.11)
    return fig


def add_parser(subparsers: Any) -> None:
    """Register ``scaleforecast backtest``."""
    p = subparsers.add_parser(
        "backtest",
        help="forecast error over fractions of a finished run (table + picture)",
        description="Refit a finished run on its first 10%, 20%, ... and compare each forecast of the final loss "
        "with the loss it reached.",
        epilog=EPILOG + "\n" + SCHEDULE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=list(DEFAULT_FRACTIONS),
        metavar="F",
        help="fractions of the run to fit on (default 0.1 ... 0.9)",
    )
    p.add_argument("--level", type=level_arg, default=0.8, help="band coverage (default 0.8)")
    p.add_argument("-o", "--output", metavar="PNG", help="picture (default: <run name>.backtest.png)")
    p.add_argument("--no-picture", action="store_true", help="print the table only")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``scaleforecast backtest``: read, refit on each prefix, print, draw."""
    data = run_from_args(args)
    result = backtest(data, tuple(args.fractions), level=args.level)
    out = None
    if not args.no_picture:
        out = Path(args.output) if args.output else Path(f"{data.name}.backtest.png")
        write_bytes(out, png_bytes(draw_backtest(result, data)))
    if args.json:
        obj = result.model_dump(mode="json")
        obj["png"] = None if out is None else str(out)
        print(json.dumps(obj))
    else:
        print(format_table(result))
        if out is not None:
            print(f"picture: {out}")
    return 0
