"""Read a run's loss curve and LR from TensorBoard event files, CSV or JSONL: :func:`read_run`, the one entry.

Every command reads through :func:`read_run`: ``forecast`` (and a reference run it is given) in ``strict`` mode,
``report``, ``backtest`` and ``watch`` without. The format comes from the path: a directory or an event file
(by name, or by its first record's checksum) is TensorBoard (:mod:`scaleforecast.tfevents`); anything else is a
table, CSV or JSON lines (:mod:`scaleforecast.tables`). The per-update LR is attached by
:func:`~scaleforecast.schedule_fit.rebuild_lrs`: from ``schedule`` (a spec, a ``.npy`` LR file, a config or an
array), else from the logged LR, rebuilt from the schedule families when it was not logged at every update.

``strict``: logged LRs that are not finite and > 0 (zeros before the first positive LR and after the last
excepted) are errors instead of notes. Corrupt event records and bad JSON lines are skipped with a note, and
steps that go back keep the newest value of each step, with a note, in every format and mode. Every error is a
one-line :class:`~scaleforecast.runs.ReadError`; notes about the data (resumes, truncation, damage, LR
reconstruction, a loss that rises) are in ``RunData.warnings``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scaleforecast.runs import (
    LOSS_NAMES,
    LR_NAMES,
    OBSERVED_TAG,
    ReadError,
    RunData,
    WindowSpec,
    clean_series,
    loss_windows,
    pick,
    pick_loss,
)
from scaleforecast.schedule_fit import rebuild_lrs
from scaleforecast.schedules import Schedule, ScheduleError, load_lr_file
from scaleforecast.tables import read_table
from scaleforecast.tfevents import (
    EVENT_FILE_PREFIX,
    SIDECAR_SUFFIX,
    NoEventFiles,
    find_event_files,
    is_event_file,
    read_event_scalars,
)

__all__ = ["LOUD_MARKERS", "detect_format", "read_run", "read_tensorboard", "rising_loss_note"]

# Notes that mean a number may be wrong, not just that the data were untidy.
LOUD_MARKERS = ("CANNOT BE TRUSTED", "differs from the logged LR", "corrupt data", "the loss rises")


def detect_format(path: str | os.PathLike[str]) -> str:
    """``tensorboard`` (a directory, or an event file by name or content) or ``table`` (CSV or JSON lines)."""
    p = Path(path)
    if p.is_dir() or p.name.startswith(EVENT_FILE_PREFIX):
        return "tensorboard"
    if not p.exists():
        raise ReadError(f"cannot read {p}: No such file or directory")
    return "tensorboard" if is_event_file(p) else "table"


def read_tensorboard(
    path: str | os.PathLike[str],
    loss: str | Sequence[str] | None = None,
    lr: str | Sequence[str] | None = None,
    window: WindowSpec | None = None,
    progress: bool | None = None,
) -> RunData:
    """Read one TensorBoard run (a directory of event files, or one file) into a :class:`RunData`.

    ``loss``/``lr`` pick the tags by name or glob pattern (default: :data:`LOSS_NAMES`, :data:`LR_NAMES`).
    ``window``: ``"gap"`` (each loss is the mean since the previous log, as HF Trainer and Megatron log),
    an int, or ``None``/``"auto"`` to choose from the tag name. The LR is not rebuilt here (see :func:`read_run`).
    """
    scalars, notes = read_event_scalars(path, progress=progress)
    tags = sorted(scalars)
    if not tags:
        raise ReadError(f"{path}: the event files hold no scalars (empty, or written by another tool)")
    loss_tag = pick_loss(tags, loss, str(path))
    if loss_tag is None and loss is None:
        loss_tag = _callback_loss(Path(path), scalars, notes, progress)
    if loss_tag is None:
        want = loss if loss is not None else "any of " + ", ".join(LOSS_NAMES[:6]) + ", ..."
        raise ReadError(
            f"{path}: no loss tag matching {want!r}; scalar tags: {', '.join(tags[:20])}{_subfolder_tags(Path(path))}"
        )
    lr_tag = pick([t for t in tags if t != loss_tag], lr, LR_NAMES)
    if lr is not None and lr_tag is None:
        raise ReadError(f"{path}: no LR tag matching {lr!r}; scalar tags: {', '.join(tags[:20])}")
    steps, losses = clean_series(*scalars[loss_tag], what=f"{Path(path).name}: {loss_tag}", notes=notes)
    keep = steps >= 1  # step 0 is the model before any update: the law has no value there
    steps, losses = steps[keep], losses[keep]
    if not len(steps):
        raise ReadError(f"{path}: {loss_tag!r} has no values at steps >= 1")
    lr_steps, lr_values = np.zeros(0, np.int64), np.zeros(0)
    if lr_tag is not None:
        lr_steps, lr_values = clean_series(*scalars[lr_tag], what=f"{Path(path).name}: {lr_tag}", notes=notes)
        lr_steps, lr_values = lr_steps[lr_steps >= 1], lr_values[lr_steps >= 1]
    return RunData(
        source=str(path),
        format="tensorboard",
        loss_name=loss_tag,
        steps=steps,
        losses=losses,
        windows=loss_windows(steps, loss_tag, window),
        lr_steps=lr_steps,
        lr_values=lr_values,
        lr_name=lr_tag,
        warnings=notes,
    )


def _callback_loss(
    path: Path, scalars: dict[str, Any], notes: list[str], progress: bool | None
) -> str | None:
    """A run whose only loss is the one the forecast callbacks logged (a plain loop that logs nothing else):
    the mean loss of each flush, in the ``scaleforecast/observed`` run beside it, is added to ``scalars`` under
    its tag, with a note; ``None`` when there is none."""
    observed = path / "scaleforecast" / "observed"
    if not path.is_dir() or not observed.is_dir():
        return None
    try:
        theirs, their_notes = read_event_scalars(observed, progress=progress)
    except ReadError:
        return None
    if OBSERVED_TAG not in theirs:
        return None
    scalars[OBSERVED_TAG] = theirs[OBSERVED_TAG]
    notes += their_notes
    notes.append(
        f"{path.name}: no loss of its own; read the one the forecast callback logged (the mean loss of each of "
        f"its flushes, {OBSERVED_TAG!r} in scaleforecast/observed)"
    )
    return OBSERVED_TAG


def lightning_csv(path: str | os.PathLike[str]) -> Path | None:
    """The ``metrics.csv`` a Lightning CSVLogger wrote: in the directory (a version folder, also when the
    forecast callback wrote its TensorBoard run beside it), or, for a directory that holds no event files, in the
    one ``version_*`` folder below it (several: an error naming them). ``None`` for anything else."""
    p = Path(path)
    if not p.is_dir():
        return None
    if (p / "metrics.csv").is_file():
        return p / "metrics.csv"
    try:
        find_event_files(p)
        return None
    except NoEventFiles:
        pass
    except ReadError:
        return None  # several runs of event files: said by the TensorBoard reader
    found = sorted(f for f in p.rglob("metrics.csv") if f.is_file())
    if len(found) > 1:
        names = ", ".join(str(f.parent.relative_to(p)) for f in found[:8])
        raise ReadError(f"{p}: holds {len(found)} CSVLogger runs ({names}); pass one run directory")
    return found[0] if found else None


def _subfolder_tags(path: Path) -> str:
    """The runs in ``path``'s subfolders and their tags (``SummaryWriter.add_scalars`` writes each series into
    ``<logdir>/<main tag>_<key>/``), as a hint for an error; empty when there are none."""
    if not path.is_dir():
        return ""
    found = []
    for sub in sorted(d for d in path.iterdir() if d.is_dir() and not d.name.endswith(SIDECAR_SUFFIX)):
        try:
            tags = sorted(read_event_scalars(sub)[0])
        except ReadError:
            continue
        if tags:
            found.append(f"{sub.name} (tags: {', '.join(tags[:4])})")
    if not found:
        return ""
    return (
        f"; its subfolders hold more runs (written by add_scalars?): {', '.join(found[:6])}: pass "
        f"{path / found[0].split(' ')[0]} as the run, with --lr-file or --schedule if its LR is not there"
    )


def rising_loss_note(run: RunData) -> str | None:
    """A note when the loss rises over the run (the median of its last quarter above that of its first quarter by
    more than 2%): the law describes a loss that falls with training, so a forecast of this run is not one."""
    y = run.losses[np.isfinite(run.losses)]
    if len(y) < 8:
        return None
    q = len(y) // 4
    first, last = float(np.median(y[:q])), float(np.median(y[-q:]))
    if last > first + 0.02 * abs(first) and last > first:
        return (
            f"{run.name}: the loss rises over the run (median {first:.4g} over its first quarter, {last:.4g} over "
            f"its last): the law assumes a loss that falls with training; the forecast does not describe this run"
        )
    return None


@contextlib.contextmanager
def _read_once(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``path``, or for a pipe (``<(cat run.csv)``, a FIFO, ``/dev/stdin``) a file holding what it gave: the
    readers open a run more than once (its format, then its rows), and a pipe gives its bytes once only (the
    second read found the header gone, or waited forever on a FIFO)."""
    p = Path(path)
    if not p.exists() or p.is_file() or p.is_dir():
        yield p
        return
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ReadError(f"cannot read {p}: {err.strerror or err}") from None
    with tempfile.TemporaryDirectory(prefix="scaleforecast-") as tmp:
        copy = Path(tmp) / (p.name or "stdin")
        copy.write_bytes(data)
        try:
            yield copy
        except ReadError as err:  # said of the pipe the user named, not of the copy
            raise ReadError(str(err).replace(str(copy), str(p))) from None


def read_run(
    path: str | os.PathLike[str],
    *,
    loss: str | Sequence[str] | None = None,
    lr: str | Sequence[str] | None = None,
    schedule: str | Schedule | np.ndarray | None = None,
    lr_file: str | os.PathLike[str] | None = None,
    total_steps: int | None = None,
    window: WindowSpec | None = None,
    require_lr: bool = True,
    strict: bool = False,
    until_step: int | None = None,
    progress: bool | None = None,
    warn: bool = True,
    step: str | None = None,
    lr_hint: str = "--lr-file RUN.lr.npy or --schedule SPEC",
) -> RunData:
    """Read a run from a TensorBoard log dir, a CSV or a JSONL file, and attach its per-update LR.

    ``schedule`` (spec, ``.npy`` path, config or array) or ``lr_file`` (a ``.npy`` of the LR of every update,
    checked by :func:`~scaleforecast.schedules.load_lr_file`) overrides the logged LR; without it the LR is rebuilt from
    the logged points (see :func:`~scaleforecast.schedule_fit.rebuild_lrs`). ``total_steps`` sets the planned
    length when the LR is rebuilt (default: the last logged step). With ``require_lr=False`` a run without LR comes
    back with ``lr=None``. ``until_step``: only the losses up to it must fit in the schedule (the run as it looked
    then; all points are returned). ``strict``: see the module doc. ``step``: the step column of a CSV or JSONL
    (default: the first of :data:`STEP_COLUMNS`; TensorBoard logs carry their own); ``lr_hint``: what the error
    of a run without an LR tells to pass (the options of the command reading it). Notes about the data are in
    ``.warnings`` and, with ``warn``, also issued as ``UserWarning``. A pipe (``<(...)``, a FIFO) is read once.
    """
    if lr_file is not None:
        if schedule is not None:
            raise ReadError("give either an LR file or a schedule, not both")
        try:
            schedule = load_lr_file(lr_file)
        except ScheduleError as err:
            raise ReadError(str(err)) from None
    with _read_once(path) as once:
        table = lightning_csv(once)
        if table is None and detect_format(once) == "tensorboard":
            run = read_tensorboard(once, loss=loss, lr=lr, window=window, progress=progress)
        else:
            run = read_table(
                table or once, loss=loss, lr=lr, window=window, strict=strict, progress=progress, step=step
            )
        if once != Path(path):
            run.source = str(path)
    if table is not None:
        run.warnings.insert(0, f"{Path(path).name}: read the CSVLogger file {table}")
    total = total_steps
    if total is None and schedule is None and len(run.lr_steps):
        total = max(int(run.lr_steps[-1]), run.last_step, run.planned_steps or 0)
    if schedule is not None or len(run.lr_steps):
        run.lr = rebuild_lrs(
            run.lr_steps, run.lr_values, total, schedule, what=Path(path).name, strict=strict
        )
        run.warnings.extend(run.lr.warnings)
        last = run.last_step if until_step is None else run.until(until_step).last_step
        if last > len(run.lr.lrs):
            raise ReadError(
                f"the schedule has {len(run.lr.lrs)} steps but {path} has losses up to step {last}"
            )
        if run.last_step > len(run.lr.lrs):
            # the losses up to until_step fit, but the log says the run went on past the schedule's end
            run.warnings.append(
                f"{Path(path).name} has losses up to step {run.last_step}, past the schedule's "
                f"{len(run.lr.lrs)} updates: the forecast is of step {len(run.lr.lrs)}, not of the log's end"
            )
    elif require_lr:
        raise ReadError(
            f"{path}: no LR for every step; pass {lr_hint} (no LR logged: looked "
            f"for {', '.join(LR_NAMES[:4])}, ...)"
        )
    if until_step is not None and until_step > run.last_step:
        run.warnings.append(
            f"{Path(path).name}: --until-step {until_step} is past its last logged step ({run.last_step}): "
            "every logged loss is used"
        )
    rising = rising_loss_note(run if until_step is None else run.until(until_step))
    if rising is not None:
        run.warnings.append(rising)
    if warn:
        for note in run.warnings:
            warnings.warn(note, UserWarning, stacklevel=2)
    return run
