"""Command-line arguments shared by the commands that read a run, and the checks on their values.

Each value check is an argparse ``type`` whose error names what was expected, so a bad value is one line such as
``argument --level: must be a number in (0, 1), got 'abc'``.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable

from scaleforecast.readers import LOUD_MARKERS, read_run
from scaleforecast.runs import RunData, WindowSpec
from scaleforecast.schedules import MAX_TOTAL_STEPS

__all__ = [
    "RUN_HELP",
    "SCHEDULE_HELP",
    "DataNote",
    "add_run_arguments",
    "emit_notes",
    "level_arg",
    "nonnegative_int",
    "note_text",
    "positive_float",
    "positive_int",
    "run_from_args",
    "steps_arg",
    "window_arg",
]

RUN_HELP = "a TensorBoard log dir (or event file), a .csv or a .jsonl run"

SCHEDULE_HELP = """\
schedule spec (--schedule KIND:KEY=VALUE,...), one LR per optimizer update:
  every kind:  peak=LR (required: the LR at the end of warm-up), total=N (required: updates in the run),
               warmup=N (linear warm-up from 0, in updates; default 0)
  constant     peak after the warm-up
  cosine       cosine decay from peak to final over the updates after the warm-up
  linear       linear decay from peak to final
  wsd          warm-up, stable at peak, then a cooldown over the last cooldown*total updates:
               cooldown=F is a FRACTION of the run in (0, 1] (0.2 = the last 20%), not a number of
               updates; shape=linear|1-sqrt|cosine|exp (default linear)
  step         peak times gamma at each milestone: milestones=M1/M2/... (update counts, separated by
               '/'), gamma=G (default 0.1)
  inv_sqrt     peak * sqrt(T / (T + j)), j updates after the warm-up: timescale=T (default: warmup)
  final=LR     (cosine, linear, wsd) the ABSOLUTE LR the decay ends at, not a fraction of peak (default 0)
  e.g.  cosine:peak=6e-4,warmup=700,total=19560,final=6e-5
        wsd:peak=1e-3,warmup=300,total=25000,cooldown=0.2,shape=1-sqrt
        step:peak=1e-3,total=1000,milestones=500/800,gamma=0.1
"""


class DataNote(UserWarning):
    """A note about a run's data (a resume, damage, a rebuilt LR), shown on stderr when the command succeeds."""


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def _integer(text: str, what: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def level_arg(text: str) -> float:
    """A band coverage in (0, 1)."""
    value = _number(text, "a number in (0, 1)")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (seconds, a loss)."""
    value = _number(text, "a number > 0")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """Any finite number."""
    return _number(text, "a finite number")


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer(text, "an integer >= 1", 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0 (a step)."""
    return _integer(text, "an integer >= 0", 0)


def steps_arg(text: str) -> int:
    """A run length in updates: 1 .. :data:`~scaleforecast.schedules.MAX_TOTAL_STEPS`."""
    return _integer(text, f"an integer in 1..{MAX_TOTAL_STEPS}", 1, MAX_TOTAL_STEPS)


def window_arg(text: str) -> WindowSpec:
    """``auto``, ``gap`` or an integer >= 1: how many updates each logged loss averages."""
    if text in ("auto", "gap"):
        return text  # type: ignore[return-value]
    return _integer(text, "auto, gap or an integer >= 1", 1)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command that reads a run shares: RUN, tag/column choice and the LR source."""
    parser.add_argument("run", metavar="RUN", help=RUN_HELP)
    parser.add_argument(
        "--loss",
        "--loss-column",
        dest="loss",
        metavar="NAME",
        help="loss tag/column, name or glob (default: loss, val_loss, train_loss, train/loss, lm loss, ...)",
    )
    parser.add_argument(
        "--lr",
        "--lr-column",
        dest="lr",
        metavar="NAME",
        help="LR tag/column, name or glob (default: lr, learning-rate, ...)",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--schedule",
        metavar="SPEC",
        help="exact schedule, e.g. cosine:peak=3e-4,warmup=100,total=5000 (see the spec below)",
    )
    src.add_argument("--lr-file", metavar="RUN.lr.npy", help=".npy of the LR of every update")
    parser.add_argument(
        "--total-steps",
        type=steps_arg,
        metavar="N",
        help="planned length when the LR is rebuilt (default: last step)",
    )
    parser.add_argument(
        "--window",
        type=window_arg,
        default=None,
        metavar="auto|gap|N",
        help="updates each logged loss averages: gap = since the previous log (HF, Megatron); default auto",
    )


def run_from_args(
    args: argparse.Namespace, *, require_lr: bool = True, until_step: int | None = None
) -> RunData:
    """Read the run named by :func:`add_run_arguments`' arguments; its notes are issued as :class:`DataNote`."""
    run = read_run(
        args.run,
        loss=args.loss,
        lr=args.lr,
        schedule=args.schedule,
        lr_file=args.lr_file,
        total_steps=args.total_steps,
        window=args.window,
        require_lr=require_lr,
        until_step=until_step,
        warn=False,
    )
    emit_notes(run.warnings)
    return run


def note_text(note: str) -> str:
    """A note as printed: ``WARNING:`` in front when it means a number may be wrong."""
    return f"WARNING: {note}" if any(m in note for m in LOUD_MARKERS) else note


def emit_notes(notes: list[str], warn: Callable[..., None] = warnings.warn) -> None:
    """Issue each note as a :class:`DataNote` (the command line prints them when the command succeeds)."""
    for note in notes:
        warn(note, DataNote, stacklevel=2)
