"""CSV and JSON-lines runs: one path from the file's bytes to a :class:`~scaleforecast.runs.RunData`.

Both formats become the same thing, a list of rows keyed by column name (JSON objects flattened with ``/``:
``{"train": {"loss": 1}}`` gives ``train/loss``), and from there one code chooses the columns and parses the
cells. A UTF-8 byte-order mark is dropped; a ``.csv`` that holds JSON lines is read as JSON lines (with a note).
Empty cells, ``null`` and ``none`` mean "not logged"; ``nan``/``inf`` losses are kept (the forecaster counts
them). Every problem is a one-line :class:`~scaleforecast.runs.ReadError` naming the file and, where there is
one, the line.

Steps that go back (a resumed run re-logging the steps after its checkpoint) keep the newest value of each step,
with a note, as in event files. ``strict`` is the mode of the ``forecast`` command: the loss column may hold only
step-0 values (the forecast then says there is too little data).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaleforecast.progress import Progress
from scaleforecast.runs import (
    LOSS_NAMES,
    LR_NAMES,
    MAX_STEP,
    STEP_COLUMNS,
    ReadError,
    RunData,
    WindowSpec,
    clean_series,
    keep_newest,
    loss_windows,
    pick,
    pick_loss,
    steps_going_back,
)
from scaleforecast.tfevents import TailResult

__all__ = ["JSONL_SUFFIXES", "TableTailer", "read_table"]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_MISSING = ("", "none", "null")

Row = tuple[int, dict[str, Any]]


def read_text(path: Path) -> str:
    """The file as text (UTF-8, a byte-order mark dropped); a one-line :class:`ReadError` when it cannot be."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ReadError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        what = "not a text file" if b"\x00" in data[:4096] else "not UTF-8 text (save it as UTF-8)"
        raise ReadError(f"{path}: {what} ({err.reason} at byte {err.start})") from None


def _delimiter(path: Path, text: str) -> str:
    """A tab for a ``.tsv``, or for a ``.csv`` whose first line holds tabs and no comma; a semicolon for one whose
    first line holds semicolons and neither (a spreadsheet's export in a locale with decimal commas); else a
    comma."""
    first = text.lstrip("\r\n").split("\n", 1)[0]
    if path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first):
        return "\t"
    return ";" if ";" in first and "," not in first else ","


def _csv_rows(path: Path, text: str, notes: list[str]) -> tuple[list[str], list[Row]]:
    delimiter = _delimiter(path, text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    rows: list[Row] = []
    repeated: list[int] = []
    comments = 0
    try:
        for cells in reader:
            if not cells or all(not c.strip() for c in cells):
                continue
            if cells[0].lstrip().startswith("#"):
                comments += 1  # a comment line (a run's config written above its log)
                continue
            if header is not None and [c.strip() for c in cells] == header:
                repeated.append(reader.line_num)  # a job resumed into the same file writes its header again
                continue
            if header is None:
                header = [c.strip() or f"(column {i + 1})" for i, c in enumerate(cells)]
                dups = sorted({h for h in header if header.count(h) > 1})
                if dups:
                    raise ReadError(
                        f"{path}: duplicate column names in header: {', '.join(dups)} (columns: {', '.join(header)})"
                    )
                continue
            if len(cells) > len(header):
                raise ReadError(
                    f"{path}:{reader.line_num}: {len(cells)} cells but the header has {len(header)} columns"
                )
            rows.append((reader.line_num, dict(zip(header, cells, strict=False))))
    except csv.Error as err:
        raise ReadError(f"{path}: not a readable CSV: {err}") from None
    if header is None:
        raise ReadError(f"{path}: empty CSV (no header)")
    if comments:
        notes.append(f"{path.name}: skipped {comments} comment line(s) (starting with '#')")
    if repeated:
        notes.append(
            f"{path.name}:{repeated[0]}: the header again (a job resumed into the same file?); skipped "
            + (f"it and {len(repeated) - 1} more" if len(repeated) > 1 else "it")
        )
    # a job appends its log line by line: a last line without its line end may be cut anywhere, and a cut that
    # leaves a number (an LR of 4.39e-06 read as 4.39) is a wrong value no parse can catch
    if rows and not text.endswith(("\n", "\r")):
        notes.append(f"{path.name}: last line has no line end (still being written?); skipped it")
        rows.pop()
    return header, rows


def _flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _json_error(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON ({err.msg} at column {err.colno})"
    return "not valid JSON (nested too deeply)"


@dataclass
class _TrainerState:
    """What an HF ``trainer_state.json`` says beyond its records: the run's planned length (``max_steps``)."""

    max_steps: int | None


def _json_document(path: Path, text: str, notes: list[str]) -> tuple[list[Row], _TrainerState | None] | None:
    """The records of a file that is one JSON document rather than JSON lines: an HF ``trainer_state.json``
    (its ``log_history``, and the state) or a list of objects; ``None`` when the file is not one document."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    is_state = isinstance(doc, dict) and isinstance(doc.get("log_history"), list)
    if "\n" not in text.strip() and not is_state:
        return None  # one line is JSON lines of one record, unless it is a trainer state written compactly
    state = None
    if is_state:
        records = doc["log_history"]
        notes.append(f"{path.name}: an HF Trainer state: read its log_history ({len(records)} records)")
        planned = doc.get("max_steps")
        state = _TrainerState(planned if isinstance(planned, int) and planned > 0 else None)
    elif isinstance(doc, list):
        records = doc
    else:
        raise ReadError(
            f"{path}: one JSON {type(doc).__name__}, not JSON lines (one object per line) or an HF "
            "trainer_state.json (with a log_history)"
        )
    bad = next((k for k, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ReadError(
            f"{path}: record {bad + 1} is a {type(records[bad]).__name__}, expected a JSON object"
        )
    return [(k + 1, _flatten(r)) for k, r in enumerate(records)], state


def _jsonl_rows(path: Path, text: str, notes: list[str]) -> tuple[list[str], list[Row], _TrainerState | None]:
    doc = _json_document(path, text, notes)
    rows, state = doc if doc is not None else (_json_lines(path, text, notes), None)
    if not rows:
        raise ReadError(f"{path}: no JSON records")
    columns: dict[str, None] = {}
    for _, flat in rows:
        for k in flat:
            columns.setdefault(k, None)
    return list(columns), rows, state


def _json_object(line: str) -> tuple[dict[str, Any] | None, str, bool]:
    """One JSON line as ``(object, "", True)``, or ``(None, why not, whether it parsed at all)``."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as err:
        return None, _json_error(err), False
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", True
    return obj, "", True


def _json_lines(path: Path, text: str, notes: list[str]) -> list[Row]:
    """One record per line. A line that is not a JSON object is skipped with a note (one for them all), unless
    no line is one; a cut-off last line is being written."""
    lines = text.splitlines()
    rows: list[Row] = []
    skipped: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        obj, why, parsed = _json_object(line)
        if obj is None:
            if not parsed and i == len(lines) - 1 and not text.endswith(("\n", "\r")):
                notes.append(f"{path.name}: last line is cut off (still being written?); skipped it")
            else:
                skipped.append((i + 1, why))
            continue
        rows.append((i + 1, _flatten(obj)))
    if skipped and not rows:
        raise ReadError(f"{path}:{skipped[0][0]}: {skipped[0][1]}")
    if skipped:
        (lineno, why), more = skipped[0], len(skipped) - 1
        notes.append(
            f"{path.name}:{lineno}: {why}: skipped the line"
            + (f" (and {more} more such line(s))" if more else "")
        )
    return rows


def _num(cell: Any, where: str, column: str) -> float | None:
    """A cell as a float; ``None`` for "not logged"."""
    if cell is None:
        return None
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        try:
            return float(cell)
        except OverflowError:
            raise ReadError(
                f"{where}: not a number: {str(cell)[:24]}... (too large; column {column})"
            ) from None
    if isinstance(cell, str):
        text = cell.strip()
        if text.lower() in _MISSING:
            return None
        try:
            return float(text)
        except ValueError:
            pass
    shown = repr(cell if isinstance(cell, str) else json.dumps(cell))
    raise ReadError(f"{where}: not a number: {shown[:60]} (column {column})")


def _column(rows: Sequence[Row], col: str | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(present, values)`` of a column over the rows (values NaN where not logged)."""
    present = np.zeros(len(rows), dtype=bool)
    values = np.full(len(rows), np.nan)
    if col is None:
        return present, values
    for i, (lineno, row) in enumerate(rows):
        v = _num(row.get(col), f"{where}:{lineno}", col)
        if v is not None:
            present[i] = True
            values[i] = v
    return present, values


def _steps(rows: Sequence[Row], col: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    present, values = _column(rows, col, where)
    bad = present & (
        (values < 0) | (values >= MAX_STEP) | (values != np.floor(values)) | ~np.isfinite(values)
    )
    if bad.any():
        i = int(np.argmax(bad))
        raise ReadError(f"{where}:{rows[i][0]}: step must be a non-negative integer, got {values[i]:g}")
    return present, np.where(present, values, 0).astype(np.int64)


def read_table(
    path: str | os.PathLike[str],
    *,
    loss: str | Sequence[str] | None = None,
    lr: str | Sequence[str] | None = None,
    window: WindowSpec | None = None,
    strict: bool = False,
    progress: bool | None = None,
    step: str | None = None,
) -> RunData:
    """Read a CSV or JSON-lines run (see the module doc): a step column (``step`` by name, else the first of
    :data:`STEP_COLUMNS`), a loss column
    (``loss`` by name or glob, else the first of :data:`LOSS_NAMES` that holds a value after step 0), the LR
    column when there is one (``lr``, else :data:`LR_NAMES`) and a ``window`` column if present. A last line
    without a line end is still being written (a cut JSON line does not parse, a cut CSV line may) and is skipped
    with a note. The LR is not rebuilt here."""
    p = Path(path)
    text = read_text(p)
    notes: list[str] = []
    is_json = text.lstrip()[:1] == "{" or p.suffix.lower() in JSONL_SUFFIXES
    if is_json and p.suffix.lower() not in JSONL_SUFFIXES:
        notes.append(f"{p.name}: holds JSON lines, not CSV: read it as JSON lines")
    bar = Progress(len(text), f"reading {p.name}", progress)
    try:
        state = None
        if is_json:
            columns, rows, state = _jsonl_rows(p, text, notes)
        else:
            columns, rows = _csv_rows(p, text, notes)
        bar.advance(len(text) // 2)
        if state is not None and window is None and pick_loss(columns, loss, str(p)) == "loss":
            window = "gap"  # the Trainer logs the mean loss since its previous log
        run = _rows_to_run(
            p, "jsonl" if is_json else "csv", columns, rows, loss, lr, window, strict, notes, step
        )
        run.planned_steps = None if state is None else state.max_steps
        bar.advance(len(text))
        return run
    finally:
        bar.close()


def _note_loss_ends_early(
    path: Path,
    rows: list[Row],
    present_step: np.ndarray,
    steps: np.ndarray,
    last_loss: int,
    used: tuple[str | None, ...],
    notes: list[str],
) -> None:
    """Say so when the log goes on well past the last value of its loss column (a logger that renamed its loss
    key mid-run): the run is read only as far as that column goes, and the columns logged after it are named."""
    later = [r for (_, r), ok, s in zip(rows, present_step, steps, strict=True) if ok and s > last_loss]
    last = int(steps[present_step].max()) if present_step.any() else last_loss
    if len(later) < 10 or last - last_loss < 0.05 * last:
        return
    others = sorted(
        {
            c
            for r in later
            for c, v in r.items()
            if c not in used and str(v).strip().lower() not in ("", "none", "null")
        }
    )
    shown = f" (logged after it: {', '.join(others[:6])})" if others else ""
    notes.append(
        f"{path.name}: its loss column {used[1]!r} ends at step {last_loss}, but the log goes on to step {last} "
        f"in {len(later)} more rows{shown}: the run is read to step {last_loss}; if another column holds the loss "
        "after it, name it with --loss"
    )


def _rows_to_run(
    path: Path,
    fmt: str,
    columns: list[str],
    rows: list[Row],
    loss: str | Sequence[str] | None,
    lr: str | Sequence[str] | None,
    window: WindowSpec | None,
    strict: bool,
    notes: list[str],
    step: str | None = None,
) -> RunData:
    cols = ", ".join(columns)
    step_col = pick(columns, step, () if step else STEP_COLUMNS)
    if step_col is None:
        wanted = f"no step column {step!r}" if step else "no 'step' column"
        raise ReadError(f"{path}: {wanted} (columns: {cols})")
    present_step, steps = _steps(rows, step_col, str(path))
    back = steps_going_back(steps[present_step])
    if back:
        # stable: of the rows of one step, the last one in the file stays last and wins as in a resume
        order = np.argsort(np.where(present_step, steps, np.iinfo(np.int64).max), kind="stable")
        rows, present_step, steps = [rows[i] for i in order], present_step[order], steps[order]
        notes.append(
            f"{path.name}: its rows are not in step order (the step goes back {back} times, more than resumes "
            "do): read in step order"
        )
    if loss is None or not isinstance(loss, str):
        # A default column, or one of a list of preferences, that exists but holds nothing after step 0 (e.g.
        # no eval ran) does not count.
        later = [r for (_, r), ok, s in zip(rows, present_step, steps, strict=True) if ok and s >= 1]
        filled = [
            c
            for c in columns
            if any(str(r.get(c)).strip().lower() not in ("", "none", "null") for r in later)
        ]
        loss_col = pick_loss(filled, loss, str(path)) or pick_loss(columns, loss, str(path))
        if loss_col is None and loss is not None:
            raise ReadError(f"{path}: no column {list(loss)!r} (columns: {cols})")
        if loss_col is None:
            raise ReadError(
                f"{path}: no loss column; expected one of {', '.join(LOSS_NAMES[:3])} or --loss-column "
                f"(columns: {cols})"
            )
    else:
        loss_col = pick_loss(columns, loss, str(path))
        if loss_col is None:
            raise ReadError(
                f"{path}: no column {loss if isinstance(loss, str) else list(loss)!r} (columns: {cols})"
            )
    lr_cols = [c for c in columns if c not in (loss_col, step_col)]
    lr_col = pick(lr_cols, lr, LR_NAMES)
    if lr is not None and lr_col is None:
        raise ReadError(f"{path}: no LR column matching {lr!r} (columns: {cols})")
    win_col = "window" if "window" in columns and window is None else None

    has_loss, losses = _column(rows, loss_col, str(path))
    has_lr, lr_values = _column(rows, lr_col, str(path))
    has_win, wins = _column(rows, win_col, str(path))
    use = present_step & has_loss
    if not use.any():
        raise ReadError(f"{path}: column {loss_col!r} has no values")
    steps_l, losses_l = steps[use], losses[use]
    win_l = None
    if win_col is not None:
        w = np.where(has_win[use], wins[use], 1.0)
        bad = (w < 1) | (w >= MAX_STEP) | (w != np.floor(w)) | ~np.isfinite(w)
        if bad.any():
            line = np.array([r[0] for r in rows])[use][int(np.argmax(bad))]
            raise ReadError(
                f"{path}:{line}: window must be a positive integer, got {w[int(np.argmax(bad))]:g}"
            )
        win_l = w.astype(np.int64)
    lr_use = present_step & has_lr
    # A resume re-logs the steps after its checkpoint: the newest value of each step wins, as in event files.
    keep = keep_newest(steps_l)
    if not keep.all():
        win_l = None if win_l is None else win_l[keep]
    steps_l, losses_l = clean_series(steps_l, losses_l, what=f"{path.name}: {loss_col}", notes=notes)
    lr_steps, lr_vals = clean_series(
        steps[lr_use], lr_values[lr_use], what=f"{path.name}: {lr_col}", notes=notes
    )
    # Step 0 is the model before any update: the law has no value there (S1 = 0).
    after = steps_l >= 1
    if steps_l[:3].tolist() == [0, 1, 2]:
        # every update logged from 0: a loop's own count (update k + 1 logged as step k) or the model before
        # training then every update; only the user knows which
        notes.append(
            f"{path.name}: the loss at step 0 is read as the model's before any update and left out (the run "
            f"is {int(steps_l[after][-1])} updates long as logged); if step k logs update k + 1, add 1 to the steps"
        )
    steps_l, losses_l = steps_l[after], losses_l[after]
    win_l = None if win_l is None else win_l[after]
    if not len(steps_l) and not strict:
        raise ReadError(f"{path}: {loss_col!r} has no values at steps >= 1")
    if len(steps_l):
        _note_loss_ends_early(
            path, rows, present_step, steps, int(steps_l[-1]), (step_col, loss_col, lr_col), notes
        )
    windows = loss_windows(steps_l, loss_col, window) if win_l is None else win_l
    pos = lr_steps >= 1
    return RunData(
        source=str(path),
        format=fmt,
        loss_name=loss_col,
        steps=steps_l,
        losses=losses_l,
        windows=windows,
        lr_steps=lr_steps[pos],
        lr_values=lr_vals[pos],
        lr_name=lr_col,
        warnings=notes,
    )


# ------------------------------------------------------------------------------------------------ live
def _loose_number(cell: Any) -> float | None:
    """A cell as a float, or ``None`` when it is not logged or not a number (a live table's text columns)."""
    try:
        return _num(cell, "", "")
    except ReadError:
        return None


class TableTailer:
    """Follow a growing CSV or JSON-lines run: each :meth:`poll` reads the whole lines appended since the last and
    returns every numeric column as a scalar series keyed by the step column, as
    :class:`~scaleforecast.tfevents.EventTailer` returns tags.

    A last line without its line end is still being written: it is read on a later poll, never reported. A file
    that shrinks or is replaced is read again from its start (``reset``); a missing file is waited for. A JSON
    line that is not an object is skipped with a note naming it. A CSV without a step column raises
    :class:`ReadError`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._restart(None)

    def _restart(self, inode: int | None) -> None:
        self.inode = inode
        self.pos = 0
        self.lineno = 0
        self.header: list[str] | None = None
        self._delim: str | None = None
        self.is_json: bool | None = None
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def poll(self) -> TailResult:
        """Read what is new (see the class doc)."""
        result = TailResult(scalars={})
        try:
            st = self.path.stat()
        except OSError as err:
            result.waiting = f"cannot read {self.path}: {err.strerror or err}"
            result.reset = self.inode is not None
            self._restart(None)
            return result
        if self.inode is not None and (st.st_ino != self.inode or st.st_size < self.pos):
            result.reset = True
            self._restart(st.st_ino)
        self.inode = st.st_ino
        result.run_dir = self.path
        if st.st_size > self.pos:
            with open(self.path, "rb") as fh:
                fh.seek(self.pos)
                data = fh.read(st.st_size - self.pos)
            whole = data.rfind(b"\n") + 1  # what follows the last line end is still being written
            if whole:
                self._consume(
                    data[:whole].decode("utf-8-sig" if self.pos == 0 else "utf-8", "replace"), result
                )
                self.pos += whole
        result.scalars = {
            col: (np.asarray(s, dtype=np.int64), np.asarray(v, dtype=np.float64))
            for col, (s, v) in self.series.items()
        }
        return result

    def _consume(self, text: str, result: TailResult) -> None:
        if self.is_json is None:
            first = text.lstrip()[:1]
            if not first:
                return
            self.is_json = first == "{" or self.path.suffix.lower() in JSONL_SUFFIXES
        lines = text.splitlines()
        start = self.lineno
        self.lineno += len(lines)
        records = self._json_records(lines, start, result) if self.is_json else self._csv_records(lines)
        for row in records:
            self._add(row)

    def _json_records(self, lines: list[str], start: int, result: TailResult) -> list[dict[str, Any]]:
        out = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            obj, why, _ = _json_object(line)
            if obj is None:
                result.notes.append(f"{self.path.name}:{start + i + 1}: {why}: skipped the line")
                continue
            out.append(_flatten(obj))
        return out

    def _csv_records(self, lines: list[str]) -> list[dict[str, Any]]:
        # the delimiter is the first line's, as a whole-file read decides it (the header comes in the first read)
        if self._delim is None:
            self._delim = _delimiter(self.path, "\n".join(lines))
        cells_of = list(csv.reader(lines, delimiter=self._delim))
        out = []
        for cells in cells_of:
            if not cells or all(not c.strip() for c in cells):
                continue
            if self.header is None:
                self.header = [c.strip() or f"(column {i + 1})" for i, c in enumerate(cells)]
                if pick(self.header, None, STEP_COLUMNS) is None:
                    raise ReadError(f"{self.path}: no 'step' column (columns: {', '.join(self.header)})")
                continue
            out.append(dict(zip(self.header, cells, strict=False)))
        return out

    def _add(self, row: dict[str, Any]) -> None:
        step_col = pick(list(row), None, STEP_COLUMNS)
        step = None if step_col is None else _loose_number(row[step_col])
        if step is None or not (0 <= step < MAX_STEP) or step != int(step):
            return
        for col, cell in row.items():
            value = None if col == step_col else _loose_number(cell)
            if value is not None:
                steps, values = self.series.setdefault(col, ([], []))
                steps.append(int(step))
                values.append(value)
