"""The ``scaleforecast`` command line: forecast a run from its logs, and the subcommands that read logs.

``scaleforecast forecast RUN.csv [--lr-file RUN.lr.npy | --schedule SPEC | lr column] [--until-step N] [--json]``
is a stable contract used by external evaluation: its arguments and its ``--json`` object must not change shape
(fields may be added). It reads through the one reader in strict mode (:func:`~scaleforecast.readers.read_run`),
so it takes what ``report`` takes (TensorBoard log dirs, JSONL, an LR logged every few steps) and refuses what it
cannot use with one line on stderr and exit status 2. A run read but with too few points to fit is not an
error: it exits 0 with no forecast (``"forecasts": []``) and says why in ``status`` and ``warnings``. Every
error of every command is one line (``--debug`` shows the traceback); notes about the data go to stderr when the
command succeeds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from scaleforecast.family import NotAnnealed, ReferenceFit, fit_reference, same_peak_lr
from scaleforecast.fitting import Observations
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import memory_of
from scaleforecast.readers import read_run
from scaleforecast.results import Forecast
from scaleforecast.run_args import (
    SCHEDULE_HELP,
    DataNote,
    emit_notes,
    level_arg,
    nonnegative_int,
    note_text,
    steps_arg,
    window_arg,
)
from scaleforecast.runs import LOSS_NAMES, ReadError, stops_short

# Each module exposes ``add_parser(subparsers)`` (registering ``func=run``) and ``run(args) -> int``.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "scaleforecast.report",
    "scaleforecast.watch",
    "scaleforecast.backtest",
)

FORECAST_EPILOG = """\
examples:
  scaleforecast forecast run.csv --lr-file run.lr.npy
  scaleforecast forecast run.csv --schedule wsd:peak=1e-3,warmup=300,total=25000,cooldown=0.2 --json
  scaleforecast forecast run.csv --lr-file run.lr.npy --until-step 5000 --at 10000 25000 --level 0.9
  scaleforecast forecast lightning_logs/version_0 --total-steps 20000
  scaleforecast forecast run.csv --lr-file run.lr.npy --reference done.csv --reference-lr-file done.lr.npy

RUN.csv has a `step` column (optimizer updates completed) and a loss column (default: `loss`, else
`val_loss`, else `train_loss`, ...). Empty cells are "not logged"; NaN/Inf cells are counted and left out.
RUN may also be a .jsonl file or a TensorBoard log dir. Without --lr-file/--schedule the LR comes from the run's
LR column/tag, rebuilt from the known schedule families when it was not logged at every step (a note says how
well it fits); --total-steps then sets the run's planned length.
A --reference is a finished run of the same family (same model and data, another schedule or length): it is
fitted whole and its fit becomes the prior of RUN ("fit one, predict the rest"). The i-th --reference-lr-file
goes with the i-th --reference; a reference without one uses its own LR column. A reference whose LR never
fell to half its peak, or whose whole fit finds no annealing drop (C = 0), says nothing about the drop: it is
reported ("reference ignored: ...", in --json its references_ignored) and ignored.
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``scaleforecast forecast: error: ... (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps a subcommand's default from overwriting a --debug given before the subcommand.
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, show the full traceback"
    )


# -------------------------------------------------------------------------------------------- forecast
def add_forecast_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``scaleforecast forecast``: every argument of the contract, in this one place."""
    fc = subparsers.add_parser(
        "forecast",
        help="forecast the final loss of a run logged as CSV (or JSONL, or TensorBoard)",
        description="Fit the LR-annealing law to a run's losses and forecast the loss at the final step.",
        epilog=FORECAST_EPILOG + "\n" + SCHEDULE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fc.add_argument(
        "run", metavar="RUN.csv", help="CSV with a step column and a loss column (or JSONL, a TB dir)"
    )
    src = fc.add_mutually_exclusive_group()
    src.add_argument(
        "--lr-file", metavar="RUN.lr.npy", help=".npy of the LR of every update (its length = total)"
    )
    src.add_argument(
        "--schedule",
        metavar="SPEC",
        help="schedule spec, e.g. cosine:peak=3e-4,warmup=100,total=5000 (see the spec below)",
    )
    fc.add_argument(
        "--loss-column",
        "--loss",
        dest="loss_column",
        metavar="NAME",
        help="loss column or tag, name or glob (default: loss, else val_loss, else train_loss, ...)",
    )
    fc.add_argument(
        "--lr-column", "--lr", dest="lr_column", metavar="NAME", help="LR column or tag (default: lr, ...)"
    )
    fc.add_argument(
        "--step-column",
        metavar="NAME",
        help="step column of a CSV/JSONL, RUN's and each reference's (default: step, global_step, "
        "trainer/global_step, ..., W&B's _step last)",
    )
    fc.add_argument(
        "--until-step", type=nonnegative_int, metavar="N", help="use only observations at steps <= N"
    )
    fc.add_argument(
        "--at", type=int, nargs="+", metavar="STEP", help="steps to forecast (default: the final step)"
    )
    fc.add_argument("--level", type=level_arg, default=0.8, help="interval coverage (default 0.8)")
    fc.add_argument(
        "--total-steps",
        type=steps_arg,
        metavar="N",
        help="planned length of the run when its LR is rebuilt from a logged LR (default: its last step)",
    )
    fc.add_argument(
        "--window",
        type=window_arg,
        metavar="auto|gap|N",
        help="updates each logged loss averages (default auto: 1, or the gap between logs for HF/Megatron tags)",
    )
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
        help="LR of every update of the i-th --reference (default: its own LR column)",
    )
    fc.set_defaults(func=forecast_command)
    return fc


def forecast_command(args: argparse.Namespace) -> int:
    """``scaleforecast forecast``: read strictly, fit the observations up to ``--until-step``, forecast."""
    run = read_run(
        args.run,
        loss=args.loss_column,
        lr=args.lr_column,
        schedule=args.schedule,
        lr_file=args.lr_file,
        total_steps=args.total_steps,
        window=args.window,
        strict=True,
        until_step=args.until_step,
        warn=False,
        step=args.step_column,
    )
    lrs = run.lrs
    assert lrs is not None  # read_run raises when it has no LR
    part = run if args.until_step is None else run.until(args.until_step)
    at = args.at if args.at else [len(lrs)]
    if min(at) < 1 or max(at) > len(lrs):
        raise ReadError(f"--at steps must lie in 1..{len(lrs)}")
    references, ignored, ref_notes = _load_references(args, run.loss_name, float(np.max(lrs)))
    run.warnings.extend(ref_notes)
    told_length = args.total_steps or args.schedule or args.lr_file or run.planned_steps
    if not told_length and args.until_step is None:
        # a log still being written, read without its planned length, "forecasts" the loss it has just shown
        # (its LR column may run a little past its loss column: a validation loss logged less often)
        high = float(lrs[-1]) / float(np.max(lrs))
        still = f"; its LR there is still {100 * high:.0f}% of its peak" if high > 0.5 else ""
        run.warnings.append(
            f"{Path(args.run).name}: the run is taken to end at its last logged step ({len(lrs)}){still}; "
            "for a run still training, pass --total-steps N (or --schedule SPEC, --lr-file)"
        )
    forecaster = OnlineForecaster(lrs, ForecasterConfig(level=args.level, references=references))
    part.feed(forecaster)
    forecaster.refit()
    # the steps asked about are held to the losses logged there: the band is of a logged loss, noise and all
    forecast = forecaster.forecast(steps=at, observed=True)
    if args.json:
        out = forecast.to_cli_json()
        out["loss_column"] = run.loss_name
        out["lr_source"] = None if run.lr is None else run.lr.source
        out["data_warnings"] = list(run.warnings)
        out["lr_assumed_after"] = None if run.lr is None else run.lr.assumed_after
        out["references_ignored"] = [{"reference": ref, "reason": why} for ref, why in ignored]
        print(json.dumps(_json_safe(out), allow_nan=False))
    else:
        print(_format_forecast(forecast, run.loss_name, Path(args.run)))
        assumed = None if run.lr is None else run.lr.assumed_after
        if assumed is not None and max(at) > assumed:
            print(
                f"  the LR after step {assumed} is assumed, not logged: a decay still to come ends lower (see below)"
            )
        for ref, why in ignored:
            print(f"  reference ignored: {ref}: {why}")
    emit_notes(run.warnings)
    return 0


def _load_references(
    args: argparse.Namespace, column: str, peak_lr: float
) -> tuple[list[ReferenceFit], list[tuple[str, str]], list[str]]:
    """Fit each ``--reference`` run whole; ``(references, [(path, why it was ignored)], notes)``. A reference is
    read as strictly as RUN, in RUN's loss column when it logs one; its data notes come back prefixed with its
    name, as RUN's own would be said. A reference that peaked at another LR than RUN's (``peak_lr``) is used,
    with a note: it may log its LR in other units, or be a point of an LR sweep, a poor prior."""
    refs: list[str] = args.reference or []
    lr_files: list[str] = args.reference_lr_file or []
    if len(lr_files) > len(refs):
        raise ReadError(f"{len(lr_files)} --reference-lr-file for {len(refs)} --reference")
    out: list[ReferenceFit] = []
    ignored: list[tuple[str, str]] = []
    notes: list[str] = []
    for i, ref in enumerate(refs):
        lr_file = lr_files[i] if i < len(lr_files) else None
        try:
            data = read_run(
                ref,
                loss=[column, *LOSS_NAMES],
                lr_file=lr_file,
                strict=True,
                warn=False,
                step=args.step_column,
                lr_hint="--reference-lr-file REF.lr.npy (one per --reference, in their order)",
            )
        except ReadError as err:
            raise ReadError(f"--reference {ref}: {err}") from None
        named = Path(ref).name
        notes += [f"--reference {n if n.startswith(named) else f'{named}: {n}'}" for n in data.warnings]
        if data.loss_name != column:
            notes.append(
                f"--reference {named}: fitted to its {data.loss_name!r}: it logs no {column!r}, this run's loss "
                "(a training and a validation loss sit at different levels)"
            )
        lrs = data.lrs
        assert lrs is not None  # read_run raises when it has no LR
        keep = (data.steps >= 1) & (data.steps <= len(lrs)) & np.isfinite(data.losses)
        if not keep.any():
            ignored.append((ref, "no finite loss within its schedule"))
            continue
        unfinished = _unfinished(data.steps[keep], len(lrs), lr_file)
        if unfinished is not None:
            ignored.append((ref, unfinished))
            continue
        last = int(data.steps[keep][-1])
        high = float(lrs[last - 1]) / float(np.max(lrs))
        if lr_file is None and high > 0.3:
            # its LR read from its log ends where its log does: a run cut mid-decay looks finished
            notes.append(
                f"--reference {named}: its LR at its last logged step ({last}) is still {100 * high:.0f}% of its "
                "peak: a run still training? A reference should be a finished run (give its --reference-lr-file "
                "if it is one)"
            )
        if lr_file is not None and data.lr is not None and not data.lr.trusted:
            # the tool's own check says this LR file is not the reference's: a prior from it misplaces the
            # reference's annealing (the band of a sibling forecast from it missed)
            ignored.append(
                (
                    ref,
                    f"its LR file differs from its logged LR by up to {100 * (data.lr.max_error or 0):.0f}% of "
                    "peak (the wrong file?)",
                )
            )
            continue
        steps, windows = data.steps[keep], data.windows[keep]
        obs = Observations(np.maximum(steps - windows + 1, 1), steps, data.losses[keep], np.ones(len(steps)))
        try:
            out.append(fit_reference(ref, obs, lrs))
        except NotAnnealed as exc:
            ignored.append((ref, str(exc).removeprefix(f"{ref}: ")))
            continue
        if not same_peak_lr(out[-1], peak_lr):
            notes.append(
                f"--reference {named} peaked at LR {out[-1].peak_lr:.3g}, this run at {peak_lr:.3g}: used as a "
                "sibling; if it is another point of an LR sweep rather than the same LR in other units, leave it "
                "out (the annealing drop depends on the peak LR)"
            )
    return out, ignored, notes


def _unfinished(steps: np.ndarray, total: int, lr_file: str | None) -> str | None:
    """Why a reference whose losses stop short of the end of its LR is no finished run (``None`` if it is one):
    more than one log interval and 1% of the run before it. Its fit would judge the annealing by an LR it never
    reached (a 50k-step LR file given for a 25k-step run reads as a run that never annealed)."""
    if not stops_short(steps, total):
        return None
    last = int(steps[-1])
    whose = f"its LR file {lr_file} has" if lr_file is not None else "its LR covers"
    return (
        f"{whose} {total} updates but its losses stop at step {last}: a reference must be a finished run "
        "(is this the LR of this run?)"
    )


def _json_safe(obj: Any) -> Any:
    """Non-finite floats become ``null``: the object must be valid JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _format_forecast(forecast: Forecast, column: str, path: Path) -> str:
    lines = [
        f"{path.name}: {column}, {forecast.n_points} points up to step {forecast.fitted_at_step}, "
        f"law {forecast.law}, fit status {forecast.status.value}"
    ]
    if forecast.borrowed_from:
        lines.append("  prior from finished runs of the family: " + ", ".join(forecast.borrowed_from))
    if forecast.params is not None:
        p = forecast.params
        # the two-timescale memory (the default) says its time constants; lam then only sets C's units
        mixed = memory_of(p)
        memory = f"lambda={p.lam:g}"
        if mixed is not None:
            (fast, w), (slow, _) = mixed
            memory = f"S2 memory {1 / (1 - fast):.0f} and {1 / (1 - slow):.0f} steps (mixed {w:g}/{1 - w:g})"
        lines.append(f"  L0={p.L0:.4g}  A={p.A:.4g}  alpha={p.alpha:.3g}  C={p.C:.4g}  {memory}")
    if forecast.points:
        pct = f"{100 * forecast.level:.6g}"
        lines.append(f"  {'step':>10}  {'forecast':>10}  {pct}% interval")
        for pt in forecast.points:
            lines.append(f"  {pt.step:>10}  {pt.loss:>10.4f}  [{pt.lower:.4f}, {pt.upper:.4f}]")
    else:
        lines.append("  no forecast: " + forecast.status.value)
    lines += [f"  warning: {w}" for w in forecast.warnings]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scaleforecast",
        description="Forecast a training run's final loss from its loss curve and LR schedule.",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_forecast_parser(sub)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    for sp in sub.choices.values():
        _add_debug(sp)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scaleforecast`` console script; returns the exit status.

    Input and usage errors print ``scaleforecast COMMAND: error: <one line>`` and return 2; anything unexpected
    prints one line naming the exception and returns 1 (``--debug`` adds the traceback). Notes about the data
    (and Python warnings) are printed on stderr, one line each, when the command succeeds; a long-running command
    (``watch``) prints them as they come.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    live = bool(getattr(args, "live_output", False))
    prefix = f"scaleforecast {args.command}"
    with warnings.catch_warnings(record=not live) as caught:
        if not live:
            warnings.simplefilter("always")
        try:
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not in an unraisable error at exit
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return _stdout_closed()
        except (ValueError, OSError) as exc:
            _fail(debug, f"{prefix}: error: {_one_line(exc)}")
            return 2
        except MemoryError:
            _fail(
                debug,
                f"{prefix}: error: out of memory (is a length such as --total-steps or total= too large?)",
            )
            return 2
        except Exception as exc:
            hint = "" if debug else " (run with --debug for the traceback)"
            _fail(debug, f"{prefix}: internal error: {type(exc).__name__}: {_one_line(exc)}{hint}")
            return 1
    for w in caught or []:
        text = str(w.message)
        line = note_text(text) if issubclass(w.category, DataNote) else f"{w.category.__name__}: {text}"
        print(f"scaleforecast: {' '.join(line.split())}", file=sys.stderr)
    return status


def _stdout_closed() -> int:
    """Whoever read stdout stopped (``| head``): end quietly with the status of a process killed by SIGPIPE, as
    Unix tools do. What is still buffered goes nowhere, so that exiting cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


def _fail(debug: bool, line: str) -> None:
    if debug:
        traceback.print_exc()
    print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
