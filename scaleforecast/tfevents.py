"""TensorBoard event files: find a run's files, read their scalars with every record checked, follow them live.

An event file is a sequence of records, each ``uint64 length | uint32 masked CRC32C of the length | payload |
uint32 masked CRC32C of the payload``, the payload an ``Event`` protobuf. Both checksums of every record are
verified (vectorised over records with numpy), so a flipped bit is found instead of being read as a wrong value,
or as the end of the file, which is what TensorBoard's own reader makes of it without a word. A record whose
payload fails its check is skipped; a bad length field breaks the framing, so reading resumes at the next byte
where a valid record header starts. Each problem is reported once, with the byte where it starts, where reading
went on and the steps on either side.

:class:`EventTailer` is the one reader: the ``watch`` sidecar polls it for what the job appended, and a whole
read (:func:`read_event_scalars`) is a single poll. The protobuf classes come from the ``tensorboard`` package,
imported on first use.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaleforecast.progress import Progress
from scaleforecast.runs import ReadError

__all__ = [
    "EVENT_FILE_PREFIX",
    "SIDECAR_SUFFIX",
    "Damage",
    "EventTailer",
    "NoEventFiles",
    "TailResult",
    "find_event_files",
    "is_event_file",
    "masked_crc32c",
    "read_event_scalars",
    "scan_records",
]

EVENT_FILE_PREFIX = "events.out.tfevents"
# The sidecar writes into "<run dir>-scaleforecast": never read it back as the job's run.
SIDECAR_SUFFIX = "-scaleforecast"
_HEADER = 12
_FOOTER = 4
_MAX_RECORD = 1 << 31
_MASK_DELTA = 0xA282EAD8
_U32 = np.uint32(0xFFFFFFFF)
_LEN = struct.Struct("<Q")
_CHUNK = 64 << 20

Series = dict[str, tuple[np.ndarray, np.ndarray]]


def _crc_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0x82F63B78), t >> 1).astype(np.uint32)
    return t


_TABLE = _crc_table()


def _crc_block(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Raw CRC32C of records no longer than ``width``, one column each, right-aligned in a zero-padded matrix."""
    n = len(starts)
    mat = np.zeros((width, n), dtype=np.uint8)
    total = int(lengths.sum())
    if total:
        col = np.repeat(np.arange(n), lengths)
        k = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        byte = buf[np.repeat(starts, lengths) + k]
        # Folding the initial register (all ones) into the first four bytes makes every record start from a zero
        # register, and leading zero bytes leave a zero register unchanged: the padding costs nothing.
        mat[np.repeat(width - lengths, lengths) + k, col] = np.where(k < 4, byte ^ 0xFF, byte)
    crc = np.zeros(n, dtype=np.uint32)
    for row in mat[width - int(lengths.max(initial=0)) :]:
        crc = _TABLE[(crc ^ row) & 0xFF] ^ (crc >> 8)
    short = lengths < 4
    if short.any():  # the part of the initial register that no byte absorbed
        crc[short] ^= _U32 >> (8 * lengths[short]).astype(np.uint32)
    return crc ^ _U32


def masked_crc32c(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The TFRecord checksum of each ``buf[start : start + length]``: CRC32C, rotated right by 15 bits, plus
    ``0xa282ead8`` (mod 2^32). Records are bucketed by length (powers of two) and each bucket is computed as one
    matrix, a table step per byte position for all its records at once."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros(len(starts), dtype=np.uint32)
    if not len(starts):
        return out
    width = np.maximum(8, 1 << np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64))
    for w in np.unique(width):
        sel = np.flatnonzero(width == w)
        per = max(1, (16 << 20) // int(w))  # about 16 MB of matrix at a time
        for lo in range(0, len(sel), per):
            idx = sel[lo : lo + per]
            out[idx] = _crc_block(buf, starts[idx], lengths[idx], int(w))
    return ((out >> 15) | (out << 17)) + np.uint32(_MASK_DELTA)


def _stored_u32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    b = [buf[at + i].astype(np.uint32) for i in range(4)]
    return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)


def _headers_ok(buf: np.ndarray, heads: np.ndarray) -> np.ndarray:
    return masked_crc32c(buf, heads, np.full(len(heads), 8)) == _stored_u32(buf, heads + 8)


@dataclass
class Scan:
    """What :func:`scan_records` found in a buffer (offsets relative to it).

    ``starts``/``lengths``: payloads of the records whose two checksums hold, in order. ``damage``: ``(start,
    resume, kind)`` for each stretch skipped, ``kind`` being ``payload`` (a record's payload fails its checksum)
    or ``header`` (a length field fails its checksum; ``resume`` is the next valid record, or the end).
    ``end``: where whole records stop; ``truncated``: bytes follow ``end`` that are not yet a whole record.
    ``searching``: the buffer ends inside a damaged stretch (the next read searches on from ``end``).
    ``found``: where a search that started at the buffer's first byte found a valid record (``None``: it did
    not, or there was none to do).
    """

    starts: np.ndarray
    lengths: np.ndarray
    damage: list[tuple[int, int, str]]
    end: int
    truncated: bool
    searching: bool
    found: int | None = None


def _walk(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    """Header offsets of the whole records from ``pos``, trusting their length fields; where the walk stopped."""
    heads: list[int] = []
    unpack = _LEN.unpack_from
    while end - pos >= _HEADER:
        (length,) = unpack(data, pos)
        nxt = pos + _HEADER + length + _FOOTER
        if length > _MAX_RECORD or nxt > end:
            break
        heads.append(pos)
        pos = nxt
    return heads, pos


def _resync(buf: np.ndarray, lo: int, end: int) -> int | None:
    """The first offset >= ``lo`` where a record header with a valid checksum starts, if any."""
    chunk = 1 << 20
    while lo + _HEADER <= end:
        hi = min(lo + chunk, end - _HEADER + 1)
        cand = np.arange(lo, hi, dtype=np.int64)
        hit = np.flatnonzero(_headers_ok(buf, cand))
        if len(hit):
            return int(cand[hit[0]])
        lo = hi
    return None


def scan_records(data: bytes, searching: bool = False) -> Scan:
    """Check the framing and both checksums of every record in ``data`` (the bytes of an event file, or what
    was appended to one); see :class:`Scan`. ``searching``: ``data`` starts inside a damaged stretch."""
    buf = np.frombuffer(data, dtype=np.uint8)
    n = len(data)
    heads_all: list[np.ndarray] = []
    damage: list[tuple[int, int, str]] = []
    pos = 0
    found = None
    if searching:
        found = _resync(buf, 0, n)
        if found is None:
            return Scan(
                np.zeros(0, np.int64), np.zeros(0, np.int64), [], max(0, n - _HEADER + 1), False, True
            )
        pos = found
    while True:
        heads, stop = _walk(data, pos, n)
        check = np.asarray(heads + ([stop] if n - stop >= _HEADER else []), dtype=np.int64)
        bad = np.flatnonzero(~_headers_ok(buf, check))
        if not len(bad):
            heads_all.append(np.asarray(heads, dtype=np.int64))
            break
        first = int(bad[0])
        heads_all.append(np.asarray(heads[:first], dtype=np.int64))
        at = int(check[first])
        nxt = _resync(buf, at + 1, n)
        if nxt is None:
            damage.append((at, n, "header"))
            return _finish(
                buf, np.concatenate(heads_all), damage, max(at + 1, n - _HEADER + 1), False, True, found
            )
        damage.append((at, nxt, "header"))
        pos = nxt
    return _finish(buf, np.concatenate(heads_all), damage, stop, stop < n, False, found)


def _finish(
    buf: np.ndarray,
    heads: np.ndarray,
    damage: list[tuple[int, int, str]],
    end: int,
    trunc: bool,
    search: bool,
    found: int | None,
) -> Scan:
    lengths = np.zeros(len(heads), dtype=np.int64)
    if len(heads):
        b = [buf[heads + i].astype(np.int64) for i in range(8)]
        lengths = sum((b[i] << (8 * i) for i in range(8)), np.zeros(len(heads), dtype=np.int64))
    starts = heads + _HEADER
    ok = masked_crc32c(buf, starts, lengths) == _stored_u32(buf, starts + lengths)
    for h, ln in zip(heads[~ok], lengths[~ok], strict=True):
        damage.append((int(h), int(h + _HEADER + ln + _FOOTER), "payload"))
    damage.sort()
    return Scan(starts[ok], lengths[ok], damage, end, trunc, search, found)


def is_event_file(path: Path) -> bool:
    """Whether ``path`` starts with a record header whose checksum holds (whatever its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEADER)
    except OSError:
        return False
    if len(head) < _HEADER:
        return False
    return bool(_headers_ok(np.frombuffer(head, dtype=np.uint8), np.zeros(1, dtype=np.int64))[0])


# ------------------------------------------------------------------------------------------------ files
class NoEventFiles(ReadError):
    """The path does not exist, or holds no event files (yet)."""


def _natural_key(path: Path) -> list[Any]:
    # File names start with the creation time and end with a counter: compare the numbers as numbers.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


# a folder named for the time a job (re)started, as torchtitan names its TensorBoard folders (20250101-0900)
_RESTART_FOLDER = re.compile(r"^\d{8}-\d{4}(\d{2})?$")


def find_event_files(path: str | os.PathLike[str]) -> list[Path]:
    """Event files of one run: ``path`` itself, or the ``events.out.tfevents.*`` files directly in it.

    A directory with no event files of its own but exactly one run below it is followed down (the sidecar's
    ``*-scaleforecast`` output and the runs nested inside a run are never runs); folders directly in it named
    for a start time (``YYYYMMDD-HHMM``: torchtitan's restarts of one job) are one run, in name order; other
    runs below it are an error that lists them.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise NoEventFiles(f"cannot read {p}: No such file or directory")
    own = sorted(
        (f for f in p.iterdir() if f.name.startswith(EVENT_FILE_PREFIX) and f.is_file()), key=_natural_key
    )
    if own:
        return own
    below = sorted({f.parent for f in p.rglob(f"{EVENT_FILE_PREFIX}*") if f.is_file()})
    # A run inside another run holds lines the TensorBoard sink draws beside it, never the loss.
    runs = set(below)
    below = [d for d in below if not d.name.endswith(SIDECAR_SUFFIX) and runs.isdisjoint(d.parents)]
    if len(below) == 1:
        return find_event_files(below[0])
    if len(below) > 1 and all(d.parent == p and _RESTART_FOLDER.match(d.name) for d in below):
        # torchtitan starts each (re)start of a job in a folder named for its start time: one run, read in
        # the order the job wrote them (a step logged again is the later folder's)
        return [f for d in below for f in find_event_files(d)]
    if not below:
        state = p / "trainer_state.json"  # an HF checkpoint folder: its log history is that file
        hint = f"; it holds an HF {state.name}: pass that file" if state.is_file() else ""
        raise NoEventFiles(f"{p}: no TensorBoard event files ({EVENT_FILE_PREFIX}.*) found{hint}")
    names = ", ".join(str(d.relative_to(p)) for d in below[:8])
    raise ReadError(f"{p}: holds {len(below)} runs ({names}); pass one run directory")


# ---------------------------------------------------------------------------------------------- parsing
_EVENT: Any = None


def _event_class() -> Any:
    global _EVENT
    if _EVENT is None:
        from tensorboard.compat.proto import event_pb2

        _EVENT = event_pb2.Event
    return _EVENT


def _tensor_scalar(tensor: Any) -> float | None:
    """The value of a TF2-style scalar summary (a one-element numeric tensor), else ``None``."""
    from tensorboard.util import tensor_util

    try:
        arr = tensor_util.make_ndarray(tensor)
    except Exception:
        return None
    if arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    return float(arr.reshape(()))


@dataclass
class Damage:
    """Bytes ``start``..``resume`` of ``file`` that could not be read (see :func:`scan_records` for ``kind``),
    with the last step read before them and the first step read after them (``None``: none yet)."""

    file: Path
    start: int
    resume: int
    kind: str
    size: int
    after_step: int | None = None
    before_step: int | None = None

    def message(self) -> str:
        what = "record payload fails its checksum" if self.kind == "payload" else "bad record header"
        head = f"{self.file.name}: corrupt data at byte {self.start} ({what})"
        if self.resume >= self.size:
            tail = f"reading stopped there, {self.size - self.start} bytes before the end"
            return f"{head}: {tail}" + (
                f", after step {self.after_step}" if self.after_step is not None else ""
            )
        a, b = self.after_step, self.before_step
        if a is not None and b is not None:
            lost = (
                f" (a point logged at step {a} is lost)"
                if a == b
                else f" (points between step {a} and {b} lost)"
            )
        elif a is not None or b is not None:
            lost = f" (points logged {'after' if b is None else 'up to'} step {a if b is None else b} lost)"
        else:
            lost = ""
        return f"{head}: skipped {self.resume - self.start} bytes and read on from byte {self.resume}{lost}"


@dataclass
class _FileState:
    inode: int
    pos: int = 0
    searching: bool = False
    size: int = 0
    steps: dict[str, list[np.ndarray]] = field(default_factory=dict)
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)
    last_step: int | None = None
    pending: list[Damage] = field(default_factory=list)
    open: Damage | None = None
    need: int = 0
    unusable: str | None = None
    truncated_noted: bool = False


@dataclass
class TailResult:
    """One poll: every scalar series of the run so far (``{tag: (steps, values)}``, merged over its files in
    name order), ``reset`` (a file was replaced, shrank or vanished: read again from its start), the problems
    first seen in this poll (``notes``, one line each; ``damage`` for corrupt stretches), ``waiting`` (why there
    is nothing to read yet) and the run directory the files are in."""

    scalars: Series
    reset: bool = False
    notes: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    waiting: str | None = None
    run_dir: Path | None = None


class EventTailer:
    """Incremental reader of one run's event files: each :meth:`poll` reads what was appended since the last.

    A file that shrinks or is replaced (another inode) is read again from its start; files that appear are
    picked up. ``live``: a partly written last record is waited for (a whole read notes it and reads what came
    before), and a missing path, no event files yet or an unreadable file are reported in the result instead of
    raised. Damage (see :class:`Damage`) is skipped and reported once.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, live: bool = True, progress: bool | None = False
    ) -> None:
        self.path = Path(path)
        self.live = live
        self.progress = progress
        self.files: dict[Path, _FileState] = {}
        self._noted: set[str] = set()

    def poll(self) -> TailResult:
        """Read what is new (see the class doc)."""
        result = TailResult(scalars={})
        try:
            files = find_event_files(self.path)
        except NoEventFiles as err:
            if not self.live:
                raise
            result.waiting = str(err)
            result.reset = bool(self.files)
            self.files.clear()
            return result
        result.run_dir = files[0].parent
        folders = sorted({f.parent.name for f in files})
        if len(folders) > 1:
            self._note(
                result,
                f"{self.path}: read {len(folders)} folders as restarts of one job ({', '.join(folders)}); a step "
                "logged again is the later folder's",
            )
        for gone in set(self.files) - set(files):
            del self.files[gone]
            result.reset = True
        sizes = {}
        for f in files:
            try:
                sizes[f] = f.stat()
            except OSError:
                continue
        bar = Progress(sum(st.st_size for st in sizes.values()), f"reading {self.path.name}", self.progress)
        try:
            for f in files:
                st = sizes.get(f)
                if st is None:
                    if self.files.pop(f, None) is not None:
                        result.reset = True
                    continue
                self._poll_file(f, st, result)
                bar.advance(st.st_size)
        finally:
            bar.close()
        merged: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for f in files:
            state = self.files.get(f)
            if state is None:
                continue
            for tag, parts in state.steps.items():
                if len(parts) > 1:  # one array per tag and file, however many polls added to it
                    state.steps[tag] = parts = [np.concatenate(parts)]
                    state.values[tag] = [np.concatenate(state.values[tag])]
                m = merged.setdefault(tag, ([], []))
                m[0].extend(parts)
                m[1].extend(state.values[tag])
        result.scalars = {
            tag: (np.concatenate(s) if s else np.zeros(0, np.int64), np.concatenate(v) if v else np.zeros(0))
            for tag, (s, v) in merged.items()
        }
        return result

    def _note(self, result: TailResult, msg: str) -> None:
        if msg not in self._noted:
            self._noted.add(msg)
            result.notes.append(msg)

    def _poll_file(self, f: Path, st: os.stat_result, result: TailResult) -> None:
        state = self.files.get(f)
        if state is None or st.st_ino != state.inode or st.st_size < state.size:
            if state is not None:
                result.reset = True
            state = self.files[f] = _FileState(inode=st.st_ino)
        state.size = st.st_size
        if state.unusable is not None or st.st_size <= state.pos:
            return
        try:
            with open(f, "rb") as fh:
                # In chunks of whole records: memory stays bounded on files of images and histograms.
                while state.pos < st.st_size:
                    fh.seek(state.pos)
                    data = fh.read(min(st.st_size - state.pos, max(_CHUNK, state.need)))
                    if not self._consume(f, state, data, state.pos + len(data) >= st.st_size, result):
                        break
        except OSError as err:
            msg = f"cannot read {f}: {err.strerror or err}"
            if not self.live:
                raise ReadError(msg) from None
            self._note(result, msg)

    def _consume(self, f: Path, state: _FileState, data: bytes, last: bool, result: TailResult) -> bool:
        """Read the records in ``data`` (the file from ``state.pos``); whether reading moved on."""
        base = state.pos
        scan = scan_records(data, searching=state.searching)
        if base == 0 and not len(scan.starts) and (scan.damage or scan.searching) and len(data) >= _HEADER:
            msg = f"{f}: not a TensorBoard event file (no valid record in its first {len(data)} bytes)"
            state.unusable = msg
            self._note(result, msg)
            return False
        damages: list[Damage] = []
        if state.open is not None and scan.found is not None:
            state.open.resume = base + scan.found
            damages.append(state.open)
            state.open = None
        for a, b, kind in scan.damage:
            d = Damage(f, base + a, base + b, kind, size=state.size)
            if scan.searching and b == len(data) and not last:
                state.open = d  # where reading resumes is in a later chunk
            else:
                damages.append(d)
        if last and state.open is not None:
            state.open.resume = state.size
            damages.append(state.open)
            state.open = None
        self._read_events(f, state, data, scan, base, damages, state.size)
        for d in damages:
            result.damage.append(d)
            self._note(result, d.message())
        state.pos = base + scan.end
        state.searching = scan.searching
        state.need = 0
        if scan.truncated and scan.end == 0 and not last and len(data) >= 8:
            # One record longer than a chunk: read it whole next time.
            (length,) = _LEN.unpack_from(data, 0)
            state.need = _HEADER + int(length) + _FOOTER
            return True
        if scan.truncated and last and not self.live and not state.truncated_noted:
            state.truncated_noted = True
            self._note(
                result, f"{f.name}: ends in a truncated record after byte {state.pos}; read what came before"
            )
        return state.pos > base

    def _read_events(
        self, f: Path, state: _FileState, data: bytes, scan: Scan, base: int, damages: list[Damage], size: int
    ) -> None:
        from google.protobuf.message import DecodeError

        event_cls = _event_class()
        steps: dict[str, list[int]] = {}
        values: dict[str, list[float]] = {}
        record_steps: list[int | None] = []
        parse = event_cls.FromString
        for s, ln in zip(scan.starts.tolist(), scan.lengths.tolist(), strict=True):
            try:
                ev = parse(data[s : s + ln])
            except DecodeError:
                damages.append(Damage(f, base + s - _HEADER, base + s + ln + _FOOTER, "payload", size))
                record_steps.append(None)
                continue
            summary_values = ev.summary.value
            if not summary_values:
                record_steps.append(None)
                continue
            step = ev.step
            record_steps.append(step)
            for v in summary_values:
                kind = v.WhichOneof("value")
                if kind == "simple_value":
                    x = float(v.simple_value)
                elif kind == "tensor" and v.metadata.plugin_data.plugin_name in ("", "scalars"):
                    scalar = _tensor_scalar(v.tensor)
                    if scalar is None:
                        continue
                    x = scalar
                else:
                    continue
                tag = v.tag
                if tag in steps:
                    steps[tag].append(step)
                    values[tag].append(x)
                else:
                    steps[tag] = [step]
                    values[tag] = [x]
        # The steps on either side of each damaged stretch, for its message.
        damages.sort(key=lambda d: d.start)
        offsets = (scan.starts + base).tolist()
        for d in state.pending:
            d.before_step = next((st for st in record_steps if st is not None), None)
        state.pending = [d for d in state.pending if d.before_step is None]
        for d in damages:
            before = [
                st for o, st in zip(offsets, record_steps, strict=True) if o < d.start and st is not None
            ]
            after = [
                st for o, st in zip(offsets, record_steps, strict=True) if o > d.start and st is not None
            ]
            d.after_step = before[-1] if before else state.last_step
            d.before_step = after[0] if after else None
            if d.before_step is None:
                state.pending.append(d)
        last = [st for st in record_steps if st is not None]
        if last:
            state.last_step = last[-1]
        for tag, s in steps.items():
            state.steps.setdefault(tag, []).append(np.asarray(s, dtype=np.int64))
            state.values.setdefault(tag, []).append(np.asarray(values[tag], dtype=np.float64))


def read_event_scalars(
    path: str | os.PathLike[str], progress: bool | None = None
) -> tuple[Series, list[str]]:
    """All scalar series of one run, merged over its event files: ``({tag: (steps, values)}, notes)``.

    Files are read in name order (their names start with the creation time); steps that go back across or
    within files are left to :func:`~scaleforecast.runs.clean_series`. Damage is skipped and noted (the points
    in it are lost, the rest is read), in every mode, as a bad line of a JSON-lines log is; a file that is not
    an event file at all is skipped with a note, or is an error when no file of the run is one.
    """
    tailer = EventTailer(path, live=False, progress=progress)
    result = tailer.poll()
    unusable = [st.unusable for st in tailer.files.values() if st.unusable is not None]
    if unusable and len(unusable) == len(tailer.files):
        raise ReadError(unusable[0])
    # A stray file among the run's event files (a copy cut short, another tool's output) costs only itself.
    notes = [f"{n}; skipped it, read the other event files" if n in unusable else n for n in result.notes]
    return result.scalars, notes
