"""Read a run's loss curve and LR from TensorBoard event files, CSV or JSONL into one :class:`RunData`.

Steps are optimizer updates completed (1-based); a loss at step ``s`` with window ``w`` is the mean loss over
updates ``s - w + 1 .. s``. A logged LR at step ``s`` is taken as the LR of update ``s``. When the LR was logged
only every few steps (or not at all), :func:`rebuild_lrs` turns an exact schedule spec, or a fit of the known
schedule families to the logged points, into the per-update LR and says how far it can be trusted.

Every reader raises :class:`ReadError` (a ``ValueError``) with a one-line message on unusable input.
TensorBoard is imported lazily, inside the TensorBoard reader only.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from scaleforecast.schedules import (
    ConstantSchedule,
    CosineSchedule,
    InvSqrtSchedule,
    LinearSchedule,
    Schedule,
    ScheduleError,
    StepSchedule,
    WSDSchedule,
    as_lrs,
    parse_schedule,
    validate_lrs,
)

__all__ = [
    "LOSS_NAMES",
    "LR_NAMES",
    "LRReconstruction",
    "ReadError",
    "RunData",
    "find_event_files",
    "read_csv",
    "read_jsonl",
    "read_run",
    "read_tensorboard",
    "rebuild_lrs",
]

# Defaults cover the Lightning logger, HF Trainer, Megatron-LM, NeMo and torchtitan, in that order of preference.
LOSS_NAMES: tuple[str, ...] = (
    "loss",
    "val_loss",
    "train_loss",
    "train/loss",
    "lm loss",
    "train_loss_step",
    "reduced_train_loss",
    "loss_metrics/global_avg_loss",
    "train/lm_loss",
    "lm_loss",
    "training_loss",
)
LR_NAMES: tuple[str, ...] = (
    "lr",
    "train/learning_rate",
    "learning-rate",
    "learning_rate",
    "train/lr",
    "lr-*",
    "*learning_rate*",
    "*learning-rate*",
)
# Loggers that write the mean over the updates since the previous log (HF Trainer, Megatron).
_GAP_WINDOW_NAMES = ("train/loss", "lm loss", "reduced_train_loss", "loss_metrics/global_avg_loss")
STEP_COLUMNS = ("step", "global_step", "iteration", "iter", "_step", "trainer/global_step")

WindowSpec = int | Literal["gap", "auto"]

# How far a reconstructed LR may stray from the logged points (max |error| / peak).
LR_TRUST_OK = 0.01
LR_TRUST_BAD = 0.05


class ReadError(ValueError):
    """A run that cannot be read or used; the message is one line and names the file and the problem."""


# --------------------------------------------------------------------------------------------- progress
class _Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._last_pct = -1

    def advance(self, amount: int) -> None:
        self.done += amount
        if not self.enabled:
            return
        pct = min(100, int(100 * self.done / self.total))
        if pct != self._last_pct:
            self._last_pct = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._last_pct >= 0:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ------------------------------------------------------------------------------------------- run data
@dataclass
class LRReconstruction:
    """The per-update LR rebuilt from a run's logged LR points, with how well it matches them.

    ``source`` is ``logged`` (every update logged), ``schedule`` (exact spec or LR file), ``fit:<spec>`` (the best
    schedule family fitted to the logged points) or ``interpolated`` (no family fits; linear interpolation between
    logged points, held flat after the last one). ``max_error`` is ``max |lr - logged| / peak`` over the logged
    points (``None`` when nothing was logged to compare with). ``trusted`` is ``False`` when the LR is a guess.
    """

    lrs: np.ndarray
    source: str
    schedule: Schedule | None = None
    max_error: float | None = None
    rms_error: float | None = None
    trusted: bool = True
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunData:
    """One run: the loss observations and, when known, the per-update LR.

    ``steps`` (int64, strictly increasing, >= 1), ``losses`` (float64; NaN/Inf kept so the forecaster can count
    them), ``windows`` (int64 >= 1: the number of updates each loss averages). ``lrs[k]`` is the LR of update
    ``k + 1``; its length is the run's planned total. ``lr_steps``/``lr_values`` are the LR points as logged.
    """

    source: str
    format: str
    loss_name: str
    steps: np.ndarray
    losses: np.ndarray
    windows: np.ndarray
    lr_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lr_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lr: LRReconstruction | None = None
    lr_name: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def lrs(self) -> np.ndarray | None:
        return None if self.lr is None else self.lr.lrs

    @property
    def total_steps(self) -> int | None:
        return None if self.lr is None else len(self.lr.lrs)

    @property
    def last_step(self) -> int:
        return int(self.steps[-1]) if len(self.steps) else 0

    @property
    def n_nonfinite(self) -> int:
        return int((~np.isfinite(self.losses)).sum())

    @property
    def name(self) -> str:
        p = Path(self.source)
        return p.stem if p.suffix else p.name

    def until(self, step: int) -> RunData:
        """The run as it looked after ``step`` updates (observations at steps <= ``step``; same LR)."""
        keep = self.steps <= step
        return replace(self, steps=self.steps[keep], losses=self.losses[keep], windows=self.windows[keep])

    def feed(self, forecaster: Any, after: int = 0) -> int:
        """Pass the observations after step ``after`` to ``forecaster.observe_many``; returns how many."""
        keep = self.steps > after
        steps, losses, windows = self.steps[keep], self.losses[keep], self.windows[keep]
        if not len(steps):
            return 0
        # observe_many takes one window per call: send runs of equal windows together.
        cuts = np.flatnonzero(np.diff(windows)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(steps)], strict=True):
            forecaster.observe_many(steps[lo:hi], losses[lo:hi], window=int(windows[lo]))
        return len(steps)


def _clean_series(
    steps: np.ndarray, values: np.ndarray, what: str, notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Sort out resumes: when a step goes back, later points replace the earlier ones from that step on."""
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if len(steps) and np.any(np.diff(steps) <= 0):
        # Walk backwards keeping the newest value of each step and dropping stale points after a restart.
        keep = np.zeros(len(steps), dtype=bool)
        floor = np.iinfo(np.int64).max
        for i in range(len(steps) - 1, -1, -1):
            if steps[i] < floor:
                keep[i] = True
                floor = steps[i]
        dropped = int((~keep).sum())
        notes.append(
            f"{what}: steps go back (a resumed run?): kept the newest of each step, dropped {dropped} point(s)"
        )
        steps, values = steps[keep], values[keep]
    return steps, values


def _windows(steps: np.ndarray, name: str, window: WindowSpec | None) -> np.ndarray:
    if window is None or window == "auto":
        window = "gap" if name in _GAP_WINDOW_NAMES else 1
    if window == "gap":
        prev = np.r_[0, steps[:-1]]
        return np.maximum(steps - prev, 1).astype(np.int64)
    w = int(window)
    if w < 1:
        raise ReadError(f"window must be >= 1, got {w}")
    return np.full(len(steps), w, dtype=np.int64)


def _assemble(
    source: str,
    fmt: str,
    loss_name: str,
    steps: np.ndarray,
    losses: np.ndarray,
    lr_name: str | None,
    lr_steps: np.ndarray,
    lr_values: np.ndarray,
    window: WindowSpec | None,
    notes: list[str],
    windows: np.ndarray | None = None,
) -> RunData:
    steps = np.asarray(steps, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    if windows is not None:
        order_ok = not np.any(np.diff(steps) <= 0)
        if not order_ok:
            raise ReadError(f"{source}: steps must increase when a window column is given")
    else:
        steps, losses = _clean_series(steps, losses, f"{source}: {loss_name}", notes)
    early = steps < 1
    if early.any():
        # Step 0 is the model before any update: the law has no value there (S1 = 0).
        steps, losses = steps[~early], losses[~early]
        if windows is not None:
            windows = windows[~early]
    if not len(steps):
        raise ReadError(f"{source}: {loss_name!r} has no values at steps >= 1")
    win = _windows(steps, loss_name, window) if windows is None else np.asarray(windows, dtype=np.int64)
    lr_steps, lr_values = _clean_series(lr_steps, lr_values, f"{source}: {lr_name}", notes)
    pos = lr_steps >= 1
    return RunData(
        source=source,
        format=fmt,
        loss_name=loss_name,
        steps=steps,
        losses=losses,
        windows=win,
        lr_steps=lr_steps[pos],
        lr_values=lr_values[pos],
        lr_name=lr_name,
        warnings=notes,
    )


def _pick(
    available: Sequence[str], wanted: str | Sequence[str] | None, defaults: Sequence[str]
) -> str | None:
    """The first name in ``wanted`` (or ``defaults``) present in ``available``; names may be glob patterns."""
    if wanted is None:
        candidates: Sequence[str] = defaults
    elif isinstance(wanted, str):
        candidates = [wanted]
    else:
        candidates = wanted
    for cand in candidates:
        if cand in available:
            return cand
        if any(ch in cand for ch in "*?["):
            hits = sorted(a for a in available if fnmatch.fnmatchcase(a, cand))
            if hits:
                return hits[0]
    return None


# ----------------------------------------------------------------------------------------- TensorBoard
def find_event_files(path: str | os.PathLike[str]) -> list[Path]:
    """Event files of one run: ``path`` itself, or the ``events.out.tfevents.*`` files directly in it.

    A directory with no event files of its own but exactly one run below it is followed down; several runs below
    it is an error that lists them.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ReadError(f"{p}: no such file or directory")
    own = sorted(
        (f for f in p.iterdir() if f.is_file() and f.name.startswith("events.out.tfevents")), key=_natural_key
    )
    if own:
        return own
    below = sorted({f.parent for f in p.rglob("events.out.tfevents*") if f.is_file()})
    below = [d for d in below if not d.name.endswith(SIDECAR_SUFFIX)]
    if len(below) == 1:
        return find_event_files(below[0])
    if not below:
        raise ReadError(f"{p}: no TensorBoard event files (events.out.tfevents.*) found")
    names = ", ".join(str(d.relative_to(p)) for d in below[:8])
    raise ReadError(f"{p}: holds {len(below)} runs ({names}); pass one run directory")


SIDECAR_SUFFIX = "-scaleforecast"


def _natural_key(path: Path) -> list[Any]:
    # File names start with the creation time and end with a counter: compare the numbers as numbers.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def check_event_file(path: Path) -> tuple[int, str | None]:
    """Walk the TFRecord framing of an event file: ``(bytes of whole records, problem or None)``.

    Only the 8-byte length headers are read, so this is cheap. It tells a truncated last record from a file that
    is not an event file at all, which TensorBoard's reader silently treats alike (as an empty tail).
    """
    size = path.stat().st_size
    pos = 0
    with open(path, "rb") as fh:
        while pos < size:
            if size - pos < 12:
                return pos, "truncated"
            fh.seek(pos)
            length = int.from_bytes(fh.read(8), "little")
            end = pos + 12 + length + 4
            if length > 1 << 31:
                return pos, "corrupt"
            if end > size:
                return pos, "truncated"
            pos = end
    return pos, None


def _scalars_of_file(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from tensorboard.backend.event_processing import event_accumulator as ea

    # size_guidance 0 keeps every point: no reservoir sampling.
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    try:
        acc.Reload()
    except Exception as err:  # the reader raises assorted errors on damaged files
        raise ReadError(f"{path}: not a readable event file ({type(err).__name__}: {err})") from None
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    tags = acc.Tags()
    for tag in tags.get("scalars", []):
        events = acc.Scalars(tag)
        out[tag] = (
            np.fromiter((e.step for e in events), dtype=np.int64, count=len(events)),
            np.fromiter((e.value for e in events), dtype=np.float64, count=len(events)),
        )
    # TF2-style summaries store scalars as rank-0 tensors.
    for tag in tags.get("tensors", []):
        if tag in out:
            continue
        events = acc.Tensors(tag)
        steps, vals = [], []
        for e in events:
            try:
                from tensorboard.util import tensor_util

                arr = tensor_util.make_ndarray(e.tensor_proto)
            except Exception:
                break
            if arr.size != 1 or arr.dtype.kind not in "fiu":
                break
            steps.append(e.step)
            vals.append(float(arr.reshape(())))
        else:
            if steps:
                out[tag] = (np.asarray(steps, dtype=np.int64), np.asarray(vals, dtype=np.float64))
    return out


def read_event_scalars(
    path: str | os.PathLike[str], progress: bool | None = None, live: bool = False
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """All scalar series of one run, merged over its event files: ``({tag: (steps, values)}, notes)``.

    Files are read in name order (their names start with the creation time); for a step logged in several files
    the later file wins, as after a restart. A truncated last record is reported (unless ``live``: a writer
    may be mid-record); a file that is not an event file is an error.
    """
    files = find_event_files(path)
    notes: list[str] = []
    merged: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    bar = _Progress(sum(f.stat().st_size for f in files), f"reading {Path(path).name}", progress)
    try:
        for f in files:
            good, problem = check_event_file(f)
            if problem == "corrupt" or (problem == "truncated" and good == 0 and f.stat().st_size >= 12):
                raise ReadError(f"{f}: not a TensorBoard event file (bad record framing at byte {good})")
            if problem == "truncated" and not live and good > 0:
                notes.append(f"{f.name}: ends in a truncated record after byte {good}; read what came before")
            for tag, series in _scalars_of_file(f).items():
                merged.setdefault(tag, []).append(series)
            bar.advance(f.stat().st_size)
    finally:
        bar.close()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for tag, parts in merged.items():
        steps = np.concatenate([p[0] for p in parts])
        vals = np.concatenate([p[1] for p in parts])
        out[tag] = (steps, vals)
    return out, notes


def read_tensorboard(
    path: str | os.PathLike[str],
    loss: str | Sequence[str] | None = None,
    lr: str | Sequence[str] | None = None,
    window: WindowSpec | None = None,
    progress: bool | None = None,
    live: bool = False,
) -> RunData:
    """Read one TensorBoard run (a directory of event files, or one file) into a :class:`RunData`.

    ``loss``/``lr`` pick the tags by name or glob pattern (default: :data:`LOSS_NAMES`, :data:`LR_NAMES`).
    ``window``: ``"gap"`` (each loss is the mean since the previous log, as HF Trainer and Megatron log),
    an int, or ``None``/``"auto"`` to choose from the tag name. The LR is not rebuilt here (see :func:`read_run`).
    """
    scalars, notes = read_event_scalars(path, progress=progress, live=live)
    tags = sorted(scalars)
    if not tags:
        raise ReadError(f"{path}: the event files hold no scalars (empty, or written by another tool)")
    loss_tag = _pick(tags, loss, LOSS_NAMES)
    if loss_tag is None:
        want = loss if loss is not None else "any of " + ", ".join(LOSS_NAMES[:6]) + ", ..."
        raise ReadError(f"{path}: no loss tag matching {want!r}; scalar tags: {', '.join(tags[:20])}")
    lr_tag = _pick(tags, lr, LR_NAMES)
    if lr is not None and lr_tag is None:
        raise ReadError(f"{path}: no LR tag matching {lr!r}; scalar tags: {', '.join(tags[:20])}")
    steps, losses = scalars[loss_tag]
    if not len(steps):
        raise ReadError(f"{path}: tag {loss_tag!r} is empty")
    lr_steps, lr_values = scalars[lr_tag] if lr_tag else (np.zeros(0, np.int64), np.zeros(0))
    return _assemble(
        str(path), "tensorboard", loss_tag, steps, losses, lr_tag, lr_steps, lr_values, window, notes
    )


# ---------------------------------------------------------------------------------------- CSV / JSONL
def _num(text: Any, where: str) -> float | None:
    if text is None:
        return None
    if isinstance(text, bool):
        raise ReadError(f"{where}: expected a number, got {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    t = str(text).strip()
    if t == "" or t.lower() in ("none", "null"):
        return None
    try:
        return float(t)
    except ValueError:
        raise ReadError(f"{where}: expected a number, got {t!r}") from None


def _filled(cell: Any) -> bool:
    return cell is not None and str(cell).strip() not in ("", "none", "null", "None")


def _after_start(cell: Any) -> bool:
    try:
        return float(cell) >= 1
    except (TypeError, ValueError):
        return False


def _rows_to_run(
    source: str,
    fmt: str,
    columns: Sequence[str],
    rows: Iterable[tuple[int, dict[str, Any]]],
    loss: str | Sequence[str] | None,
    lr: str | Sequence[str] | None,
    window: WindowSpec | None,
    notes: list[str],
) -> RunData:
    step_col = _pick(columns, None, STEP_COLUMNS)
    if step_col is None:
        raise ReadError(
            f"{source}: no step column ({', '.join(STEP_COLUMNS[:4])}); columns: {', '.join(columns)}"
        )
    rows = list(rows)
    if loss is None:
        # A default column that exists but was never filled in (e.g. no eval) does not count.
        later = [r for _, r in rows if _after_start(r.get(step_col))]
        filled = [c for c in columns if any(_filled(r.get(c)) for r in later)]
        loss_col = _pick(filled, None, LOSS_NAMES) or _pick(columns, None, LOSS_NAMES)
    else:
        loss_col = _pick(columns, loss, LOSS_NAMES)
    if loss_col is None:
        want = loss if loss is not None else "any of " + ", ".join(LOSS_NAMES[:4])
        raise ReadError(f"{source}: no loss column matching {want!r}; columns: {', '.join(columns)}")
    lr_col = _pick(columns, lr, LR_NAMES)
    if lr is not None and lr_col is None:
        raise ReadError(f"{source}: no LR column matching {lr!r}; columns: {', '.join(columns)}")
    win_col = "window" if "window" in columns and window is None else None
    steps: list[int] = []
    losses: list[float] = []
    wins: list[int] = []
    lr_steps: list[int] = []
    lr_values: list[float] = []
    for lineno, row in rows:
        where = f"{source}:{lineno}"
        s = _num(row.get(step_col), f"{where}: {step_col}")
        if s is None:
            continue
        if not float(s).is_integer() or s < 0:
            raise ReadError(f"{where}: step must be a non-negative integer, got {s:g}")
        y = _num(row.get(loss_col), f"{where}: {loss_col}")
        if y is not None:
            steps.append(int(s))
            losses.append(y)
            if win_col:
                w = _num(row.get(win_col), f"{where}: window")
                wins.append(int(w) if w else 1)
        if lr_col:
            v = _num(row.get(lr_col), f"{where}: {lr_col}")
            if v is not None:
                lr_steps.append(int(s))
                lr_values.append(v)
    if not steps:
        raise ReadError(f"{source}: column {loss_col!r} has no values")
    return _assemble(
        source,
        fmt,
        loss_col,
        np.asarray(steps),
        np.asarray(losses),
        lr_col,
        np.asarray(lr_steps, dtype=np.int64),
        np.asarray(lr_values, dtype=np.float64),
        window,
        notes,
        windows=np.asarray(wins, dtype=np.int64) if win_col else None,
    )


def _open_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ReadError(f"{path}: cannot read: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ReadError(f"{path}: not a text file ({err.reason} at byte {err.start})") from None


def read_csv(
    path: str | os.PathLike[str],
    loss: str | Sequence[str] | None = None,
    lr: str | Sequence[str] | None = None,
    window: WindowSpec | None = None,
    progress: bool | None = None,
) -> RunData:
    """Read a CSV run: a step column, a loss column (default from :data:`LOSS_NAMES`), optionally ``lr`` and
    ``window``. Empty cells mean "not logged"; NaN/Inf are kept (and counted later). A last line cut off by a
    writer that is still running is skipped with a note."""
    p = Path(path)
    text = _open_text(p)
    notes: list[str] = []
    lines = text.splitlines(keepends=True)
    if not lines or not lines[0].strip():
        raise ReadError(f"{p}: empty CSV (no header)")
    if len(lines) > 1 and not lines[-1].endswith(("\n", "\r")):
        notes.append(f"{p.name}: last line has no line end (still being written?); skipped it")
        lines = lines[:-1]
    try:
        reader = csv.reader(lines)
        header = [h.strip() for h in next(reader)]
        parsed = list(reader)
    except csv.Error as err:
        raise ReadError(f"{p}: not a readable CSV: {err}") from None
    if len(set(header)) != len(header):
        raise ReadError(f"{p}: duplicate column names in header: {', '.join(header)}")
    bar = _Progress(len(parsed), f"reading {p.name}", progress)

    def rows() -> Iterable[tuple[int, dict[str, Any]]]:
        for i, cells in enumerate(parsed):
            if i % 10000 == 0:
                bar.advance(min(10000, len(parsed) - i))
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) > len(header):
                raise ReadError(f"{p}:{i + 2}: {len(cells)} cells but the header has {len(header)} columns")
            yield i + 2, dict(zip(header, cells, strict=False))

    try:
        return _rows_to_run(str(p), "csv", header, rows(), loss, lr, window, notes)
    finally:
        bar.close()


def read_jsonl(
    path: str | os.PathLike[str],
    loss: str | Sequence[str] | None = None,
    lr: str | Sequence[str] | None = None,
    window: WindowSpec | None = None,
    progress: bool | None = None,
) -> RunData:
    """Read a JSON-lines run: one object per line with a step key and a loss key (lines without the loss, e.g.
    eval records, are skipped). Nested objects are flattened with ``/`` (``{"train": {"loss": 1}}`` gives
    ``train/loss``). A bad line is an error naming it, except a cut-off last line, which is skipped with a note."""
    p = Path(path)
    text = _open_text(p)
    notes: list[str] = []
    lines = text.splitlines()
    records: list[tuple[int, dict[str, Any]]] = []
    columns: dict[str, None] = {}
    bar = _Progress(len(lines), f"reading {p.name}", progress)
    try:
        for i, line in enumerate(lines):
            if i % 10000 == 0:
                bar.advance(min(10000, len(lines) - i))
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                if i == len(lines) - 1 and not text.endswith("\n"):
                    notes.append(f"{p.name}: last line is cut off (still being written?); skipped it")
                    continue
                raise ReadError(f"{p}:{i + 1}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise ReadError(f"{p}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
            flat = _flatten(obj)
            for k in flat:
                columns.setdefault(k, None)
            records.append((i + 1, flat))
    finally:
        bar.close()
    if not records:
        raise ReadError(f"{p}: no JSON records")
    return _rows_to_run(str(p), "jsonl", list(columns), records, loss, lr, window, notes)


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------- LR rebuilding
def _eval_at(sched: Schedule, steps: np.ndarray) -> np.ndarray:
    return sched.lrs()[steps - 1]


def _estimate_warmup(steps: np.ndarray, values: np.ndarray, peak: float) -> int:
    top = int(np.argmax(values >= 0.98 * peak))
    rising = (np.arange(len(values)) < top) & (values > 0) & (values < 0.98 * peak)
    if not rising.any():
        # Never logged below peak before reaching it: the warm-up (if any) ended before the first log.
        return 0 if steps[0] <= 1 or values[0] >= 0.98 * peak else int(steps[0])
    return max(1, round(float(np.median(peak * steps[rising] / values[rising]))))


def _family_candidates(
    steps: np.ndarray, values: np.ndarray, total: int
) -> tuple[
    int, list[tuple[str, Callable[[np.ndarray], Schedule], np.ndarray, tuple[np.ndarray, np.ndarray]]]
]:
    """Each schedule family as (name, params -> schedule, start, bounds), with peak and warm-up estimated."""
    peak0 = float(values.max())
    warm = min(_estimate_warmup(steps, values, peak0), total - 2)
    after = steps > warm
    at_peak = after & (values >= 0.995 * peak0)
    last_peak = int(steps[at_peak].max()) if at_peak.any() else warm
    cd0 = float(np.clip((total - last_peak) / total, 0.01, 1.0))
    lo_v = float(values[after].min()) if after.any() else peak0
    f0 = min(lo_v / peak0, 0.99)
    cands: list[tuple[str, Callable[[np.ndarray], Schedule], np.ndarray, tuple[np.ndarray, np.ndarray]]] = []
    pk = (0.8 * peak0, 1.25 * peak0)
    cands.append(
        (
            "constant",
            lambda x: ConstantSchedule(peak=x[0], total=total, warmup=warm),
            np.array([peak0]),
            (np.array([pk[0]]), np.array([pk[1]])),
        )
    )
    for cls in (CosineSchedule, LinearSchedule):
        cands.append(
            (
                cls.model_fields["kind"].default,
                lambda x, cls=cls: cls(peak=x[0], total=total, warmup=warm, final=x[0] * x[1]),
                np.array([peak0, max(f0 - 0.01, 0.0)]),
                (np.array([pk[0], 0.0]), np.array([pk[1], 0.999])),
            )
        )
    max_cd = (total - warm) / total
    for shape in ("linear", "1-sqrt", "cosine", "exp"):
        fmin = 1e-4 if shape == "exp" else 0.0
        cands.append(
            (
                f"wsd-{shape}",
                lambda x, shape=shape: WSDSchedule(
                    peak=x[0], total=total, warmup=warm, cooldown=x[1], shape=shape, final=x[0] * x[2]
                ),
                np.array([peak0, min(cd0, max_cd), max(f0 - 0.005, fmin)]),
                (np.array([pk[0], 1.0 / total, fmin]), np.array([pk[1], max_cd, 0.999])),
            )
        )
    cands.append(
        (
            "inv_sqrt",
            lambda x: InvSqrtSchedule(
                peak=x[0], total=total, warmup=warm, timescale=max(1, round(math.exp(x[1])))
            ),
            np.array([peak0, math.log(max(warm, 1))]),
            (np.array([pk[0], 0.0]), np.array([pk[1], math.log(total)])),
        )
    )
    step = _step_candidate(steps, values, total, warm, peak0)
    if step is not None:
        cands.append(
            (
                "step",
                lambda x, s=step: s.model_copy(update={"peak": x[0]}),
                np.array([peak0]),
                (np.array([pk[0]]), np.array([pk[1]])),
            )
        )
    return warm, cands


def _step_candidate(
    steps: np.ndarray, values: np.ndarray, total: int, warm: int, peak: float
) -> StepSchedule | None:
    after = steps > warm
    s, v = steps[after], values[after]
    if len(s) < 3:
        return None
    ratio = v[1:] / np.maximum(v[:-1], 1e-300)
    drops = np.flatnonzero(ratio < 0.9)
    # Step decay is flat between drops; anything else is a smooth decay.
    if not len(drops) or len(drops) > 8:
        return None
    segments = np.split(v, drops + 1)
    if any(seg.max() > 1.01 * seg.min() for seg in segments):
        return None
    gamma = float(np.median(ratio[drops]))
    milestones = sorted({int((s[i] + s[i + 1]) // 2) for i in drops})
    try:
        return StepSchedule(
            peak=peak, total=total, warmup=warm, milestones=milestones, gamma=min(max(gamma, 1e-6), 1.0)
        )
    except ValueError:
        return None


def fit_schedule(steps: np.ndarray, values: np.ndarray, total: int) -> list[tuple[float, float, Schedule]]:
    """Fit every known schedule family to logged LR points; ``[(max_err, rms_err, schedule)]``, best first.

    Errors are ``|lr - logged| / peak`` at the logged steps after the warm-up: warm-up shapes vary (linear from
    zero, from peak/100, cosine-shaped) and the fitter leaves the warm-up out anyway. Peak and warm-up length come
    from the data; each family's other parameters (final LR, cooldown fraction and shape, timescale, milestones)
    are fitted by bounded least squares. Simpler families win ties.
    """
    from scipy.optimize import least_squares

    all_steps = np.asarray(steps, dtype=np.int64)
    all_values = np.asarray(values, dtype=np.float64)
    if len(all_steps) == 0 or all_steps.max() > total or all_steps.min() < 1:
        raise ValueError(f"LR steps must lie in 1..{total}")
    peak0 = float(all_values.max())
    warm, cands = _family_candidates(all_steps, all_values, total)
    keep = all_steps > warm
    if keep.sum() < 2:
        keep[:] = True
    steps, values = all_steps[keep], all_values[keep]
    if len(steps) > 600:
        # A dense log (every step) pins the shape as well with a few hundred points; errors use all of them.
        pick = np.unique(np.linspace(0, len(steps) - 1, 600).round().astype(np.int64))
        steps, values = steps[pick], values[pick]
    eval_steps, eval_values = all_steps[keep], all_values[keep]
    results: list[tuple[float, float, int, Schedule]] = []
    for order, (_name, make, x0, bounds) in enumerate(cands):

        def resid(x: np.ndarray, make: Callable[[np.ndarray], Schedule] = make) -> np.ndarray:
            try:
                return (_eval_at(make(x), steps) - values) / peak0
            except ValueError:
                return np.full(len(values), 10.0)

        x0 = np.clip(x0, bounds[0], bounds[1])
        try:
            sol = least_squares(resid, x0, bounds=bounds, diff_step=1e-3, max_nfev=200)
            x = sol.x
        except ValueError:
            x = x0
        try:
            sched = make(x)
        except ValueError:
            continue
        r = (_eval_at(sched, eval_steps) - eval_values) / peak0
        results.append((float(np.abs(r).max()), float(np.sqrt(np.mean(r**2))), order, sched))
    tol = min(r[1] for r in results) * 1.1 + 1e-5
    # Prefer the simplest family whose error is within a hair of the best one; the rest by error.
    results.sort(key=lambda r: (0, r[2]) if r[1] <= tol else (1, r[1]))
    return [(m, rms, s) for m, rms, _, s in results]


def rebuild_lrs(
    lr_steps: np.ndarray,
    lr_values: np.ndarray,
    total: int | None = None,
    schedule: str | Schedule | np.ndarray | None = None,
    what: str = "run",
) -> LRReconstruction:
    """The per-update LR of a run from what is known about it.

    In order: an exact ``schedule`` (spec, config, ``.npy`` path or array; checked against any logged points);
    the logged LR itself when it covers every update ``1..total``; else the best fit of the schedule families
    (:func:`fit_schedule`) to the logged points, falling back to interpolation between them when no family comes
    within :data:`LR_TRUST_BAD` of peak. ``total`` defaults to the last logged step.
    """
    lr_steps = np.asarray(lr_steps, dtype=np.int64)
    lr_values = np.asarray(lr_values, dtype=np.float64)
    notes: list[str] = []
    # An exact 0 is a real LR at the first update (warm-up from zero) and at the last (decay to zero).
    edge = (lr_steps == 1) | ((lr_steps == lr_steps.max()) if len(lr_steps) else False)
    finite = np.isfinite(lr_values) & ((lr_values > 0) | ((lr_values == 0) & edge))
    if not finite.all():
        i = int(np.argmax(~finite))
        notes.append(
            f"{what}: logged LR has {int((~finite).sum())} non-finite or <= 0 value(s) (first at step "
            f"{lr_steps[i]}); ignored them"
        )
        lr_steps, lr_values = lr_steps[finite], lr_values[finite]
    if schedule is not None:
        try:
            if isinstance(schedule, str) and ":" in schedule:
                sched: Schedule | None = parse_schedule(schedule)
                lrs = sched.lrs()
            else:
                sched = schedule if hasattr(schedule, "lrs") else None  # type: ignore[assignment]
                lrs = as_lrs(schedule)  # type: ignore[arg-type]
        except ScheduleError as err:
            raise ReadError(str(err)) from None
        if total is not None and total != len(lrs):
            raise ReadError(f"{what}: the schedule has {len(lrs)} updates but the run's total is {total}")
        rec = LRReconstruction(lrs=lrs, source="schedule", schedule=sched, warnings=notes)
        inside = lr_steps <= len(lrs)
        if inside.any():
            peak = float(lrs.max())
            err = np.abs(lrs[lr_steps[inside] - 1] - lr_values[inside]) / peak
            rec.max_error, rec.rms_error = float(err.max()), float(np.sqrt(np.mean(err**2)))
            if rec.max_error > LR_TRUST_OK:
                i = int(np.argmax(err))
                rec.trusted = rec.max_error <= LR_TRUST_BAD
                notes.append(
                    f"{what}: the given schedule differs from the logged LR by up to {100 * rec.max_error:.1f}% of "
                    f"peak (at step {lr_steps[inside][i]}: schedule {lrs[lr_steps[inside][i] - 1]:.3g}, logged "
                    f"{lr_values[inside][i]:.3g}); check the schedule"
                )
        return rec
    if not len(lr_steps):
        raise ReadError(f"{what}: no LR logged; pass the schedule (--schedule SPEC or --lr-file RUN.lr.npy)")
    last = int(lr_steps[-1])
    total = last if total is None else int(total)
    if total < last:
        raise ReadError(f"{what}: LR logged up to step {last}, past the total of {total} updates")
    if len(lr_steps) == total and lr_steps[0] == 1 and np.all(np.diff(lr_steps) == 1):
        try:
            return LRReconstruction(
                lrs=validate_lrs(lr_values), source="logged", max_error=0.0, rms_error=0.0, warnings=notes
            )
        except ScheduleError as err:
            raise ReadError(f"{what}: logged LR unusable: {err}") from None
    if len(lr_steps) < 3:
        raise ReadError(
            f"{what}: LR logged at only {len(lr_steps)} step(s), too few to rebuild the schedule; pass --schedule SPEC"
        )
    fits = fit_schedule(lr_steps, lr_values, total)
    max_err, rms, sched = fits[0]
    if lr_steps[0] > max(1, 0.01 * total):
        notes.append(
            f"{what}: LR not logged before step {lr_steps[0]}: the LR of the first updates (warm-up) is a guess"
        )
    if max_err <= LR_TRUST_BAD:
        rec = LRReconstruction(
            lrs=sched.lrs(),
            source=f"fit:{sched.spec()}",
            schedule=sched,
            max_error=max_err,
            rms_error=rms,
            trusted=True,
            warnings=notes,
        )
        gap = int(np.median(np.diff(lr_steps))) if len(lr_steps) > 1 else 0
        if max_err > LR_TRUST_OK:
            notes.append(
                f"{what}: LR rebuilt as {sched.spec()} from {len(lr_steps)} points logged every ~{gap} steps; it "
                f"misses them by up to {100 * max_err:.1f}% of peak: pass --schedule SPEC for an exact forecast"
            )
        return rec
    # No family fits: interpolate what was logged, and say loudly that the LR is a guess.
    grid = np.arange(1, total + 1)
    lrs = np.interp(grid, lr_steps, lr_values)
    notes.append(
        f"{what}: LR CANNOT BE TRUSTED: no known schedule family fits the {len(lr_steps)} logged LR points (best, "
        f"{sched.spec()}, misses by {100 * max_err:.0f}% of peak); using linear interpolation between them"
        + (f" and holding the last value from step {last} to {total}" if total > last else "")
        + ": pass --schedule SPEC or --lr-file"
    )
    return LRReconstruction(
        lrs=validate_lrs(lrs),
        source="interpolated",
        schedule=None,
        max_error=0.0,
        rms_error=0.0,
        trusted=False,
        warnings=notes,
    )


# ------------------------------------------------------------------------------------------ one entry
def detect_format(path: str | os.PathLike[str]) -> str:
    """``tensorboard``, ``csv`` or ``jsonl`` from the path (directories and event files are TensorBoard)."""
    p = Path(path)
    if p.is_dir() or p.name.startswith("events.out.tfevents"):
        return "tensorboard"
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if not p.exists():
        raise ReadError(f"{p}: no such file or directory")
    raise ReadError(f"{p}: unknown run format; expected a TensorBoard log dir, .csv or .jsonl")


def read_run(
    path: str | os.PathLike[str],
    *,
    loss: str | Sequence[str] | None = None,
    lr: str | Sequence[str] | None = None,
    schedule: str | Schedule | np.ndarray | None = None,
    total_steps: int | None = None,
    window: WindowSpec | None = None,
    require_lr: bool = True,
    progress: bool | None = None,
    live: bool = False,
    warn: bool = True,
) -> RunData:
    """Read a run from a TensorBoard log dir, a CSV or a JSONL file, and attach its per-update LR.

    ``schedule`` (spec, ``.npy`` path, config or array) overrides the logged LR; without it the LR is rebuilt from
    the logged points (see :func:`rebuild_lrs`). ``total_steps`` sets the planned length when the LR is rebuilt
    (default: the last logged step). With ``require_lr=False`` a run without LR comes back with ``lr=None``.
    Notes about the data (resumes, truncation, LR reconstruction) are in ``.warnings`` and, with ``warn``, also
    issued as ``UserWarning``.
    """
    fmt = detect_format(path)
    if fmt == "tensorboard":
        run = read_tensorboard(path, loss=loss, lr=lr, window=window, progress=progress, live=live)
    elif fmt == "csv":
        run = read_csv(path, loss=loss, lr=lr, window=window, progress=progress)
    else:
        run = read_jsonl(path, loss=loss, lr=lr, window=window, progress=progress)
    total = total_steps
    if total is None and schedule is None and len(run.lr_steps):
        total = max(int(run.lr_steps[-1]), run.last_step)
    if schedule is not None or len(run.lr_steps):
        run.lr = rebuild_lrs(run.lr_steps, run.lr_values, total, schedule, what=Path(path).name)
        run.warnings.extend(run.lr.warnings)
        if run.last_step > len(run.lr.lrs):
            raise ReadError(
                f"{path}: losses go up to step {run.last_step} but the schedule has only {len(run.lr.lrs)} updates"
            )
    elif require_lr:
        raise ReadError(
            f"{path}: no LR logged (looked for {', '.join(LR_NAMES[:5])}, ...); pass --schedule SPEC or --lr-file"
        )
    if warn:
        for note in run.warnings:
            warnings.warn(note, UserWarning, stacklevel=2)
    return run


# ---------------------------------------------------------------------------------------- CLI helpers
RUN_HELP = "a TensorBoard log dir (or event file), a .csv or a .jsonl run"


def _window_arg(text: str) -> WindowSpec:
    if text in ("auto", "gap"):
        return text  # type: ignore[return-value]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"window must be auto, gap or an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"window must be >= 1, got {value}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command that reads a run shares: RUN, tag/column choice and the LR source."""
    parser.add_argument("run", metavar="RUN", help=RUN_HELP)
    parser.add_argument(
        "--loss",
        metavar="NAME",
        help="loss tag/column, name or glob (default: train/loss, lm loss, train_loss, ...)",
    )
    parser.add_argument(
        "--lr", metavar="NAME", help="LR tag/column, name or glob (default: lr, learning-rate, ...)"
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument(
        "--schedule", metavar="SPEC", help="exact schedule, e.g. cosine:peak=3e-4,warmup=100,total=5000"
    )
    src.add_argument("--lr-file", metavar="RUN.lr.npy", help=".npy of the LR of every update")
    parser.add_argument(
        "--total-steps",
        type=int,
        metavar="N",
        help="planned length when the LR is rebuilt (default: last step)",
    )
    parser.add_argument(
        "--window",
        type=_window_arg,
        default=None,
        metavar="auto|gap|N",
        help="updates each logged loss averages: gap = since the previous log (HF, Megatron); default auto",
    )


def run_from_args(args: argparse.Namespace, *, live: bool = False, require_lr: bool = True) -> RunData:
    """Read the run named by :func:`add_run_arguments`' arguments; notes go to stderr, one line each."""
    schedule = args.schedule or args.lr_file
    if args.lr_file and not Path(args.lr_file).is_file():
        raise ReadError(f"--lr-file {args.lr_file}: no such file")
    run = read_run(
        args.run,
        loss=args.loss,
        lr=args.lr,
        schedule=schedule,
        total_steps=args.total_steps,
        window=args.window,
        require_lr=require_lr,
        live=live,
        warn=False,
    )
    for note in run.warnings:
        loud = "CANNOT BE TRUSTED" in note or "differs from the logged LR" in note
        print(f"scaleforecast: {'WARNING: ' if loud else ''}{note}", file=sys.stderr)
    return run
