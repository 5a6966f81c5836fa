"""The ``scaleforecast`` command line: forecast a run from its logs, and the subcommands that read logs.

``scaleforecast forecast RUN.csv`` is a stable contract used by external evaluation: its arguments and its
``--json`` object must not change shape (fields may be added).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scaleforecast.family import NotAnnealed, ReferenceFit, fit_reference
from scaleforecast.fitting import Observations
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.results import Forecast
from scaleforecast.schedules import as_lrs

# Each module exposes ``add_parser(subparsers)`` (registering ``func=run``) and ``run(args) -> int``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "scaleforecast.report",
    "scaleforecast.watch",
    "scaleforecast.backtest",
)

LOSS_COLUMNS = ("loss", "val_loss", "train_loss")

FORECAST_EPILOG = """\
examples:
  scaleforecast forecast run.csv --lr-file run.lr.npy
  scaleforecast forecast run.csv --schedule wsd:peak=1e-3,warmup=300,total=25000,cooldown=0.2 --json
  scaleforecast forecast run.csv --lr-file run.lr.npy --until-step 5000 --at 10000 25000 --level 0.9
  scaleforecast forecast run.csv --lr-file run.lr.npy --reference done.csv --reference-lr-file done.lr.npy

RUN.csv has a `step` column (optimizer updates completed) and a loss column (default: `loss`, else
`val_loss`, else `train_loss`). Empty cells are "not logged"; NaN/Inf cells are counted and left out.
A --reference is a finished run of the same family (same model and data, another schedule or length): it is
fitted whole and its fit becomes the prior of RUN ("fit one, predict the rest"). The i-th --reference-lr-file
goes with the i-th --reference; a reference without one uses its CSV `lr` column. A reference whose LR never
fell to half its peak says nothing about the annealing drop: it is reported and ignored.
"""


class UsageError(ValueError):
    """Input the command cannot use; printed as one line, exit status 2."""


def _parse_float(cell: str) -> float | None:
    cell = cell.strip()
    if cell == "":
        return None
    try:
        return float(cell)
    except ValueError:
        raise UsageError(f"not a number: {cell!r}") from None


def load_csv_run(
    path: Path, loss_column: str | None
) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None]:
    """Read ``step``, the loss column and (if present) ``lr`` from a run CSV.

    Returns ``(steps, losses, column, lr_by_step)``; ``lr_by_step[k]`` is the LR of update ``k + 1`` when the
    CSV logs an ``lr`` for every step from 1 to its last step, else ``None``.
    """
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            if not header:
                raise UsageError(f"{path}: empty CSV (no header)")
            rows = list(reader)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a readable CSV: {exc}") from None
    header = [h.strip() for h in header]
    if "step" not in header:
        raise UsageError(f"{path}: no 'step' column (columns: {', '.join(header)})")
    if loss_column is None:
        # The first default column that holds any value: a `val_loss` header with empty cells does not count.
        present = [c for c in LOSS_COLUMNS if c in header]
        if not present:
            raise UsageError(
                f"{path}: no loss column; expected one of {', '.join(LOSS_COLUMNS)} or --loss-column"
            )
        loss_column = next((c for c in present if any((r.get(c) or "").strip() for r in rows)), present[0])
    elif loss_column not in header:
        raise UsageError(f"{path}: no column {loss_column!r} (columns: {', '.join(header)})")
    steps, losses, lr_steps, lr_values = [], [], [], []
    for lineno, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "") for k, v in row.items()}
        try:
            step = _parse_float(row["step"])
            loss = _parse_float(row[loss_column])
            lr = _parse_float(row["lr"]) if "lr" in row else None
        except UsageError as exc:
            raise UsageError(f"{path}:{lineno}: {exc}") from None
        if step is None:
            continue
        if not float(step).is_integer() or step < 0:
            raise UsageError(f"{path}:{lineno}: step must be a non-negative integer, got {step}")
        if loss is not None:
            steps.append(int(step))
            losses.append(loss)
        if lr is not None:
            lr_steps.append(int(step))
            lr_values.append(lr)
    steps_arr = np.asarray(steps, dtype=np.int64)
    if len(steps_arr) == 0:
        raise UsageError(f"{path}: column {loss_column!r} has no values")
    bad = np.flatnonzero(np.diff(steps_arr) <= 0)
    if len(bad):
        i = int(bad[0])
        raise UsageError(
            f"{path}: steps out of order in column {loss_column!r}: {steps_arr[i + 1]} after {steps_arr[i]}"
        )
    lr_by_step = None
    if lr_steps and lr_steps == list(range(1, len(lr_steps) + 1)):
        lr_by_step = np.asarray(lr_values, dtype=float)
    return steps_arr, np.asarray(losses, dtype=float), loss_column, lr_by_step


def _forecast_command(args: argparse.Namespace) -> int:
    path = Path(args.run)
    steps, losses, column, lr_from_csv = load_csv_run(path, args.loss_column)
    if args.lr_file and args.schedule:
        raise UsageError("give either --lr-file or --schedule, not both")
    if args.lr_file:
        try:
            lrs = np.load(args.lr_file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --lr-file {args.lr_file}: {exc}") from None
        lrs = as_lrs(np.asarray(lrs, dtype=float).ravel())
    elif args.schedule:
        lrs = as_lrs(args.schedule)
    elif lr_from_csv is not None:
        lrs = as_lrs(lr_from_csv)
    else:
        raise UsageError(f"{path}: no LR for every step; pass --lr-file RUN.lr.npy or --schedule SPEC")
    keep = steps >= 1
    if args.until_step is not None:
        keep &= steps <= args.until_step
    steps, losses = steps[keep], losses[keep]
    if len(steps) and steps[-1] > len(lrs):
        raise UsageError(f"the schedule has {len(lrs)} steps but {path} has losses up to step {steps[-1]}")
    at = args.at if args.at else [len(lrs)]
    if min(at) < 1 or max(at) > len(lrs):
        raise UsageError(f"--at steps must lie in 1..{len(lrs)}")
    references, ignored = _load_references(args, column)
    forecaster = OnlineForecaster(lrs, ForecasterConfig(level=args.level, references=references))
    forecaster.observe_many(steps, losses)
    forecaster.refit()
    forecast = forecaster.forecast(steps=at)
    if args.json:
        out = forecast.to_cli_json()
        out["loss_column"] = column
        out["references_ignored"] = [{"reference": ref, "reason": why} for ref, why in ignored]
        print(json.dumps(out, allow_nan=False, default=_json_default))
    else:
        print(_format_forecast(forecast, column, path))
        for ref, why in ignored:
            print(f"  reference ignored: {ref}: {why}")
    return 0


def _load_references(
    args: argparse.Namespace, column: str
) -> tuple[list[ReferenceFit], list[tuple[str, str]]]:
    """Fit each ``--reference`` run whole; ``(references, [(path, why it was ignored)])``."""
    refs: list[str] = args.reference or []
    lr_files: list[str] = args.reference_lr_file or []
    if len(lr_files) > len(refs):
        raise UsageError(f"{len(lr_files)} --reference-lr-file for {len(refs)} --reference")
    out: list[ReferenceFit] = []
    ignored: list[tuple[str, str]] = []
    for i, ref in enumerate(refs):
        ref_path = Path(ref)
        # the reference's loss in the run's own column when it logs one, else its default column
        try:
            steps, losses, _, lr_csv = load_csv_run(ref_path, column)
        except UsageError:
            steps, losses, _, lr_csv = load_csv_run(ref_path, None)
        if i < len(lr_files):
            try:
                ref_lrs = as_lrs(np.asarray(np.load(lr_files[i], allow_pickle=False), dtype=float).ravel())
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read --reference-lr-file {lr_files[i]}: {exc}") from None
        elif lr_csv is not None:
            ref_lrs = as_lrs(lr_csv)
        else:
            raise UsageError(f"{ref}: no LR for every step; pass --reference-lr-file after this --reference")
        keep = (steps >= 1) & (steps <= len(ref_lrs)) & np.isfinite(losses)
        if not keep.any():
            ignored.append((ref, "no finite loss within its schedule"))
            continue
        obs = Observations.from_steps(steps[keep], losses[keep])
        try:
            out.append(fit_reference(ref, obs, ref_lrs))
        except NotAnnealed as exc:
            ignored.append((ref, str(exc).removeprefix(f"{ref}: ")))
    return out, ignored


def _json_default(obj: object) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _format_forecast(forecast: Forecast, column: str, path: Path) -> str:
    lines = [
        f"{path.name}: {column}, {forecast.n_points} points up to step {forecast.fitted_at_step}, "
        f"law {forecast.law}, fit status {forecast.status.value}"
    ]
    if forecast.borrowed_from:
        lines.append("  prior from finished runs of the family: " + ", ".join(forecast.borrowed_from))
    if forecast.params is not None:
        p = forecast.params
        lines.append(f"  L0={p.L0:.4g}  A={p.A:.4g}  alpha={p.alpha:.3g}  C={p.C:.4g}  lambda={p.lam:g}")
    if forecast.points:
        pct = round(100 * forecast.level)
        lines.append(f"  {'step':>10}  {'forecast':>10}  {pct}% interval")
        for pt in forecast.points:
            lines.append(f"  {pt.step:>10}  {pt.loss:>10.4f}  [{pt.lower:.4f}, {pt.upper:.4f}]")
    else:
        lines.append("  no forecast: " + forecast.status.value)
    lines += [f"  warning: {w}" for w in forecast.warnings]
    return "\n".join(lines)


def _positive_level(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"level must be in (0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scaleforecast",
        description="Forecast a training run's final loss from its loss curve and LR schedule.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fc = sub.add_parser(
        "forecast",
        help="forecast the loss of a run logged as CSV",
        description="Fit the LR-annealing law to a run's losses and forecast the loss at the final step.",
        epilog=FORECAST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fc.add_argument("run", metavar="RUN.csv", help="CSV with a step column and a loss column")
    src = fc.add_mutually_exclusive_group()
    src.add_argument(
        "--lr-file", metavar="RUN.lr.npy", help=".npy of the LR of every update (its length = total)"
    )
    src.add_argument(
        "--schedule", metavar="SPEC", help="schedule spec, e.g. cosine:peak=3e-4,warmup=100,total=5000"
    )
    fc.add_argument(
        "--loss-column", metavar="NAME", help="loss column (default: loss, else val_loss, else train_loss)"
    )
    fc.add_argument("--until-step", type=int, metavar="N", help="use only observations at steps <= N")
    fc.add_argument(
        "--at", type=int, nargs="+", metavar="STEP", help="steps to forecast (default: the final step)"
    )
    fc.add_argument("--level", type=_positive_level, default=0.8, help="interval coverage (default 0.8)")
    fc.add_argument("--json", action="store_true", help="print one JSON object")
    fc.add_argument(
        "--reference",
        action="append",
        metavar="REF.csv",
        help="a finished run of the same family, fitted whole as RUN's prior (repeatable)",
    )
    fc.add_argument(
        "--reference-lr-file",
        action="append",
        metavar="REF.lr.npy",
        help="LR of every update of the i-th --reference (default: its CSV lr column)",
    )
    fc.set_defaults(func=_forecast_command)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scaleforecast`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:
        print(f"scaleforecast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
