"""A registry that the runs of one sweep share: each run posts its latest forecast and its final loss.

A run reads back the other runs' records to learn what it has to beat (see
:func:`scaleforecast.decision.sweep_reference`). The interface is :class:`RunRegistry`; the embedded default
is :class:`SQLiteRegistry`, one SQLite file per sweep that needs no server and no set-up, safe under several
processes (and several machines on a shared file system with working POSIX locks) writing at once.

A training loop never calls the registry itself: :class:`BackgroundRegistry` runs its reads and writes on a
worker thread with short timeouts and retries with back-off, so a locked or slow database costs the training
thread a queue append and a snapshot read (microseconds), whatever the storage does.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import errno
import hashlib
import logging
import math
import os
import re
import sqlite3
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from scaleforecast.results import StopFeatures

__all__ = [
    "BackgroundRegistry",
    "RegistryError",
    "RunRecord",
    "RunRegistry",
    "RunState",
    "SQLiteRegistry",
    "Snapshot",
    "default_registry_path",
    "default_sweep",
    "open_registry",
]

T = TypeVar("T")
_log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """The registry could not be read or written (after its retries)."""


class RunState(str, Enum):
    """Where a run of the sweep stands: still ``running``, ``finished`` (its final loss is known) or
    ``stopped`` early (pruned; it will deliver no model, so it never sets the bar for others)."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"


class RunRecord(BaseModel):
    """One run's row: its latest forecast of the final loss (mean ``loss``, predictive ``std``, the fit
    ``status``, made at ``step`` of ``total_steps``; ``features``, what the run showed the stopping rule then,
    :class:`scaleforecast.results.StopFeatures`, ``None`` where unknown), its ``state`` and, once finished, its
    ``final_loss``. ``updated`` is the wall-clock time (``time.time()``) of the last write, to spot runs that
    died."""

    sweep: str
    run_id: str
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    std: float | None = None
    status: str | None = None
    features: StopFeatures | None = None
    state: RunState = RunState.RUNNING
    final_loss: float | None = None
    updated: float = 0.0


class RunRegistry(abc.ABC):
    """The storage a sweep shares. Implementations must make each call atomic with respect to other
    processes: a write is never lost, and a read sees whole records.

    ``report_forecast`` upserts the run's latest forecast (state ``running``); ``report_final`` records the
    run's final loss and marks it ``finished`` (or ``stopped``, with or without a loss); ``records`` returns
    every run of the sweep. :meth:`others` is ``records`` without the asking run.
    """

    sweep: str

    @abc.abstractmethod
    def report_forecast(
        self,
        run_id: str,
        *,
        step: int,
        loss: float,
        std: float,
        status: str,
        total_steps: int | None = None,
        features: StopFeatures | None = None,
    ) -> None:
        """Store the run's latest forecast of its final loss (replacing the previous one)."""

    @abc.abstractmethod
    def report_final(
        self, run_id: str, final_loss: float | None, *, state: RunState = RunState.FINISHED
    ) -> None:
        """Store the run's final loss and its end state (``finished`` or ``stopped``)."""

    @abc.abstractmethod
    def records(self) -> list[RunRecord]:
        """Every run of the sweep, in no particular order."""

    def others(self, run_id: str) -> list[RunRecord]:
        """Every run of the sweep except ``run_id``."""
        return [r for r in self.records() if r.run_id != run_id]

    def get(self, run_id: str) -> RunRecord | None:
        """The record of ``run_id``, or None when it never wrote."""
        return next((r for r in self.records() if r.run_id == run_id), None)

    def close(self) -> None:  # noqa: B027  (optional for implementations without resources)
        """Release connections; the registry may be used again afterwards (it reconnects)."""

    def with_timeout(self, timeout_s: float) -> RunRegistry:
        """The same registry, with each call giving up after about ``timeout_s`` when the storage is busy
        (for the background worker, which retries on its own schedule). Default: the registry itself."""
        return self

    # The family store ("fit one, predict the rest", see scaleforecast.family): optional for implementations.
    def record_family_fit(self, family: str, run_id: str, payload: str) -> None:
        """Keep a finished run's fit (JSON ``payload``) under ``family``, replacing the run's older one."""
        raise NotImplementedError(f"{type(self).__name__} keeps no family fits")

    def family_fits(self, family: str) -> list[tuple[str, str]]:
        """``(run_id, payload)`` of every fit kept under ``family``, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} keeps no family fits")


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_registry_path(sweep: str, directory: str | Path | None = None) -> Path:
    """``<directory>/<sweep>.sqlite``; the directory defaults to ``$SCALEFORECAST_REGISTRY_DIR``, else
    ``~/.cache/scaleforecast``. The sweep name is reduced to ``[A-Za-z0-9._-]`` so it is a safe file name."""
    if not sweep or not sweep.strip():
        raise ValueError("the sweep name must be a non-empty string")
    base = (
        directory or os.environ.get("SCALEFORECAST_REGISTRY_DIR") or Path.home() / ".cache" / "scaleforecast"
    )
    return Path(base) / f"{_SAFE.sub('_', sweep.strip())}.sqlite"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    sweep TEXT NOT NULL,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    loss REAL,
    std REAL,
    status TEXT,
    features TEXT,
    state TEXT NOT NULL DEFAULT 'running',
    final_loss REAL,
    updated REAL NOT NULL,
    PRIMARY KEY (sweep, run_id)
);
CREATE TABLE IF NOT EXISTS forecasts (
    sweep TEXT NOT NULL,
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    loss REAL,
    std REAL,
    status TEXT,
    written REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS family_fits (
    family TEXT NOT NULL,
    run_id TEXT NOT NULL,
    fit TEXT NOT NULL,
    written REAL NOT NULL,
    PRIMARY KEY (family, run_id)
);
"""


def _add_column(conn: sqlite3.Connection, table: str, column: str) -> None:
    """Add ``column`` (``"name TYPE"``) to ``table`` of a file an older version made; a no-op when it is
    there (another process may add it at the same time)."""
    name = column.split()[0]
    if any(row[1] == name for row in conn.execute(f"PRAGMA table_info({table})")):
        return
    try:
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    except sqlite3.OperationalError as exc:
        if "duplicate column" not in str(exc):
            raise


def _record(row: dict) -> RunRecord:
    """A record from a row; features another version wrote in a form this one cannot read count as unknown."""
    text = row.pop("features")
    try:
        features = None if text is None else StopFeatures.model_validate_json(text)
    except ValueError:
        features = None
    return RunRecord(**row, features=features)


def _finite_or_none(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class SQLiteRegistry(RunRegistry):
    """The embedded registry: one SQLite file (WAL journal) shared by the runs of a sweep.

    Every call is one short transaction (``BEGIN IMMEDIATE`` for writes, so writers queue on the database
    lock instead of failing mid-transaction), with SQLite's busy timeout plus a few retries with back-off on
    ``database is locked``. Connections are opened lazily and per process and thread, so an instance can be
    handed to forked or spawned workers. Besides the latest record per run (table ``runs``) every forecast is
    appended to ``forecasts``, the audit trail of the sweep.

    ``path=None`` uses :func:`default_registry_path` for ``sweep``; no set-up is needed.
    """

    def __init__(
        self,
        sweep: str = "default",
        path: str | Path | None = None,
        *,
        busy_timeout_s: float = 30.0,
        retries: int = 5,
    ) -> None:
        if busy_timeout_s <= 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.sweep = sweep
        self.path = Path(path) if path is not None else default_registry_path(sweep)
        self.busy_timeout_s = float(busy_timeout_s)
        self.retries = int(retries)
        self._local = threading.local()
        self._initialised = False

    # Pickling (spawned workers) carries the settings only; each process opens its own connection.
    def __getstate__(self) -> dict:
        return {
            "sweep": self.sweep,
            "path": self.path,
            "busy_timeout_s": self.busy_timeout_s,
            "retries": self.retries,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._initialised = False

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        # WAL lets readers run beside the single writer; NORMAL sync is durable across process crashes.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        if not self._initialised:
            self._retry(lambda: conn.executescript(_SCHEMA))
            self._retry(lambda: _add_column(conn, "runs", "features TEXT"))
            self._initialised = True
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _retry(self, op: Callable[[], T]) -> T:
        delay = 0.05
        for attempt in range(self.retries + 1):
            try:
                return op()
            except sqlite3.OperationalError as exc:
                transient = "locked" in str(exc) or "busy" in str(exc)
                if not transient or attempt == self.retries:
                    raise RegistryError(f"sqlite registry {self.path}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    def _write(self, statements: list[tuple[str, tuple]]) -> None:
        def op() -> None:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    conn.execute(sql, args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        self._retry(op)

    def report_forecast(
        self,
        run_id: str,
        *,
        step: int,
        loss: float,
        std: float,
        status: str,
        total_steps: int | None = None,
        features: StopFeatures | None = None,
    ) -> None:
        """Upsert the run's latest forecast and append it to the audit trail (one transaction)."""
        now = time.time()
        loss_v, std_v = _finite_or_none(loss), _finite_or_none(std)
        features_v = None if features is None else features.model_dump_json()
        status = str(getattr(status, "value", status))
        self._write(
            [
                (
                    "INSERT INTO runs (sweep, run_id, step, total_steps, loss, std, status, features, state, "
                    "updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'running', ?) "
                    "ON CONFLICT(sweep, run_id) DO UPDATE SET step=excluded.step, "
                    "total_steps=COALESCE(excluded.total_steps, runs.total_steps), loss=excluded.loss, "
                    "std=excluded.std, status=excluded.status, features=excluded.features, updated=excluded.updated",
                    (self.sweep, run_id, int(step), total_steps, loss_v, std_v, status, features_v, now),
                ),
                (
                    "INSERT INTO forecasts (sweep, run_id, step, loss, std, status, written) VALUES (?,?,?,?,?,?,?)",
                    (self.sweep, run_id, int(step), loss_v, std_v, status, now),
                ),
            ]
        )

    def report_final(
        self, run_id: str, final_loss: float | None, *, state: RunState = RunState.FINISHED
    ) -> None:
        """Record the run's final loss and end state; a non-finite loss is stored as unknown."""
        state = RunState(state)
        if state is RunState.RUNNING:
            raise ValueError("report_final needs an end state: finished or stopped")
        self._write(
            [
                (
                    "INSERT INTO runs (sweep, run_id, state, final_loss, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(sweep, run_id) DO UPDATE SET state=excluded.state, "
                    "final_loss=excluded.final_loss, updated=excluded.updated",
                    (self.sweep, run_id, state.value, _finite_or_none(final_loss), time.time()),
                )
            ]
        )

    def records(self) -> list[RunRecord]:
        """Every run of this sweep (one consistent snapshot)."""

        def op() -> list[tuple]:
            cur = self._conn().execute(
                "SELECT sweep, run_id, step, total_steps, loss, std, status, features, state, final_loss, "
                "updated FROM runs WHERE sweep = ?",
                (self.sweep,),
            )
            return cur.fetchall()

        keys = (
            "sweep",
            "run_id",
            "step",
            "total_steps",
            "loss",
            "std",
            "status",
            "features",
            "state",
            "final_loss",
            "updated",
        )
        return [_record(dict(zip(keys, row, strict=True))) for row in self._retry(op)]

    def history(
        self, run_id: str | None = None
    ) -> list[tuple[str, int, float | None, float | None, str | None]]:
        """The audit trail: ``(run_id, step, loss, std, status)`` of every forecast written, oldest first."""

        def op() -> list[tuple]:
            sql = "SELECT run_id, step, loss, std, status FROM forecasts WHERE sweep = ?"
            args: tuple = (self.sweep,)
            if run_id is not None:
                sql += " AND run_id = ?"
                args += (run_id,)
            return self._conn().execute(sql + " ORDER BY rowid", args).fetchall()

        return [tuple(r) for r in self._retry(op)]

    def record_family_fit(self, family: str, run_id: str, payload: str) -> None:
        """Upsert ``run_id``'s fit in the ``family_fits`` table (one transaction)."""
        self._write(
            [
                (
                    "INSERT INTO family_fits (family, run_id, fit, written) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(family, run_id) DO UPDATE SET fit=excluded.fit, written=excluded.written",
                    (family, run_id, payload, time.time()),
                )
            ]
        )

    def family_fits(self, family: str) -> list[tuple[str, str]]:
        """``(run_id, payload)`` of every fit kept under ``family``, oldest first."""

        def op() -> list[tuple]:
            sql = "SELECT run_id, fit FROM family_fits WHERE family = ? ORDER BY written"
            return self._conn().execute(sql, (family,)).fetchall()

        return [(str(r), str(f)) for r, f in self._retry(op)]

    def close(self) -> None:
        """Close this thread's connection (the next call reconnects)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()
        self._local.conn = None

    def with_timeout(self, timeout_s: float) -> SQLiteRegistry:
        """A registry on the same file whose calls wait at most ``timeout_s`` for a lock, without retries."""
        clone = copy.copy(self)  # a subclass stays itself; the copy opens its own connections
        clone.busy_timeout_s, clone.retries = float(timeout_s), 0
        return clone


def _ray_tune_experiment() -> str | None:
    """The Ray Tune experiment whose trial this process runs, else None. Tune runs each trial in a worker of Ray's
    (``default_worker.py``) and a folder of its own, so neither the script nor the folder names the sweep: each
    trial was a sweep alone. Ray is never imported here."""
    tune = sys.modules.get("ray.tune")
    if tune is None or not sys.argv or Path(sys.argv[0]).name != "default_worker.py":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray warns when asked outside a trial
            name = tune.get_context().get_experiment_name()
    except Exception:
        return None
    return name if isinstance(name, str) and name else None


def default_sweep() -> str:
    """The sweep of runs that name none: their training script and the directory it runs in
    (``<script>-<8 hex digits>``), so that the runs of one script share a sweep and unrelated projects never meet
    in one (a run of another project, stopped against this one's best, would be lost); in a Ray Tune trial, the
    experiment (``ray-<experiment name>``), the trials of one ``Tuner.fit``."""
    experiment = _ray_tune_experiment()
    if experiment is not None:
        return _SAFE.sub("_", f"ray-{experiment}")
    main = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    script = Path(main).resolve() if main else Path("python")
    digest = hashlib.sha1(f"{Path.cwd().resolve()}|{script}".encode()).hexdigest()[:8]
    return f"{_SAFE.sub('_', script.stem) or 'python'}-{digest}"


def open_registry(registry: RunRegistry | str | Path | None, sweep: str | None = None) -> RunRegistry:
    """One entry point: a :class:`RunRegistry` is returned as is; a path (``.sqlite`` file) opens a
    :class:`SQLiteRegistry` there; ``None`` opens the default file for ``sweep`` (default:
    :func:`default_sweep`)."""
    if isinstance(registry, RunRegistry):
        return registry
    sweep = sweep or default_sweep()
    if registry is None:
        return SQLiteRegistry(sweep)
    if isinstance(registry, (str, Path)):
        return SQLiteRegistry(sweep, registry)
    raise TypeError(f"expected a RunRegistry, a path or None, got {type(registry).__name__}")


@dataclass(frozen=True)
class Snapshot:
    """The sweep's records as read at ``taken_at`` (``time.time()``)."""

    records: tuple[RunRecord, ...]
    taken_at: float

    @property
    def age_s(self) -> float:
        return max(time.time() - self.taken_at, 0.0)


class BackgroundRegistry:
    """A :class:`RunRegistry` driven from a worker thread: writes are queued, reads are snapshots.

    The caller (the training thread) only appends to a queue (:meth:`post_forecast`, :meth:`post_final`),
    asks for a fresh read (:meth:`refresh`) and reads the latest :meth:`snapshot`; none of these touches the
    storage or waits for it. The worker thread does the calls on :meth:`RunRegistry.with_timeout` (each call
    gives up after ``timeout_s``), in order, and on a failure keeps the call at the head of the queue and
    retries with back-off (``0.1 s`` doubling to ``max_backoff_s``). The first failure of an outage is logged
    once as a warning, the recovery once as info. At most ``max_pending`` forecast writes wait in the queue
    (the oldest are dropped and counted: the latest forecast is what the sweep reads); final records are never
    dropped. :meth:`drain` and :meth:`sync` wait, with a bound, for the queue; they are for the end of a run
    and for tests, never for a training step. The thread is a daemon started on first use (again in a forked
    child); the object pickles without it.
    """

    def __init__(
        self,
        registry: RunRegistry,
        *,
        timeout_s: float = 2.0,
        max_backoff_s: float = 30.0,
        max_pending: int = 256,
        min_read_interval_s: float = 1.0,
        batch_s: float = 0.5,
    ) -> None:
        if timeout_s <= 0 or max_backoff_s <= 0 or max_pending < 1 or min(min_read_interval_s, batch_s) < 0:
            raise ValueError(
                "timeout_s and max_backoff_s must be > 0, max_pending >= 1, min_read_interval_s and batch_s >= 0"
            )
        self.batch_s = float(batch_s)
        self.registry = registry
        self.min_read_interval_s = float(min_read_interval_s)
        self.timeout_s = float(timeout_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_pending = int(max_pending)
        self._setup()

    def _setup(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[tuple[str, Callable[[RunRegistry], object], float]] = deque()
        self._urgent = False  # write everything queued now (the end of a run, a sync)
        self._batch_left = 0
        self._want_read = False
        self._read_now = False
        self._last_read = -math.inf
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._backend: RunRegistry | None = None
        self._snapshot: Snapshot | None = None
        self.failure: str | None = None
        self.failing_since: float | None = None
        # why the storage cannot be used at all (a path that is no directory, no permission): no retry mends it
        self.unusable: str | None = None
        self.dropped = 0
        self.done = 0
        self.recovered = threading.Event()
        self.failed = threading.Event()

    def __getstate__(self) -> dict:
        keys = ("registry", "timeout_s", "max_backoff_s", "max_pending", "min_read_interval_s", "batch_s")
        return {k: getattr(self, k) for k in keys}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup()

    # ----------------------------------------------------------------- caller side (never blocks)
    def post_forecast(
        self,
        run_id: str,
        *,
        step: int,
        loss: float,
        std: float,
        status: str,
        total_steps: int | None = None,
        features: StopFeatures | None = None,
    ) -> None:
        """Queue :meth:`RunRegistry.report_forecast`."""
        self._post(
            "forecast",
            lambda reg: reg.report_forecast(
                run_id,
                step=step,
                loss=loss,
                std=std,
                status=status,
                total_steps=total_steps,
                features=features,
            ),
        )

    def post_final(
        self, run_id: str, final_loss: float | None, *, state: RunState = RunState.FINISHED
    ) -> None:
        """Queue :meth:`RunRegistry.report_final` (never dropped)."""
        self._post("final", lambda reg: reg.report_final(run_id, final_loss, state=state))

    def refresh(self, now: bool = False) -> None:
        """Ask for a fresh read of the records: at most one per ``min_read_interval_s`` (records change
        slowly, and each read costs the worker, and through the interpreter lock the caller, a little), or
        at once with ``now``."""
        if self.unusable is not None:
            return
        with self._started():
            if self.unusable is not None:  # given up while this call waited for the lock
                return
            # Wake the worker only when there was nothing to do: a wake-up per call would make the two
            # threads trade the interpreter lock at every flush.
            if not self._want_read or now:
                self._cond.notify_all()
            self._want_read = True
            self._read_now = self._read_now or now

    def forget(self) -> None:
        """Drop the records read so far and ask for a read at once: what was read before a write of this process
        (a run's end) must not be taken for the registry after it."""
        with self._cond:
            self._snapshot = None
        self.refresh(now=True)

    def snapshot(self) -> Snapshot | None:
        """The latest records read, or ``None`` before the first read succeeded."""
        return self._snapshot

    @property
    def pending(self) -> int:
        return len(self._queue) + int(self._busy)

    def _post(self, kind: str, op: Callable[[RunRegistry], object]) -> None:
        if self.unusable is not None:
            return
        with self._started():
            if self.unusable is not None:
                return
            if len(self._queue) >= self.max_pending:
                # The head may be in the worker's hands right now: it is never the one dropped.
                first = 1 if (self._busy and self._current != "read") else 0
                oldest = next(
                    (i for i in range(first, len(self._queue)) if self._queue[i][0] == "forecast"), None
                )
                if oldest is not None:
                    del self._queue[oldest]
                    self.dropped += 1
            if not self._queue or kind == "final":
                self._cond.notify_all()
            self._urgent = self._urgent or kind == "final"
            self._queue.append((kind, op, time.monotonic()))

    def _started(self) -> threading.Condition:
        if self._pid != os.getpid():  # a forked child: the parent's thread and lock are not ours
            state = self.__getstate__()
            self.__setstate__(state)
        with self._cond:
            # A worker told to close and not yet gone simply carries on; one that gave up stays closed.
            self._closing = self.unusable is not None
            if self.unusable is None and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._work, name="scaleforecast-registry", daemon=True)
                self._thread.start()
        return self._cond

    # ------------------------------------------------------------------ bounded waits (not per step)
    def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every queued write to land; True when they all did."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._queue or (self._busy and self._current != "read"):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return self.unusable is None

    def sync(self, timeout_s: float) -> bool:
        """Queue a read and wait up to ``timeout_s`` until it and every write before it are done."""
        self.refresh(now=True)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._queue or self._want_read or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return self.failure is None

    def close(self, timeout_s: float = 0.0) -> None:
        """Stop the worker after at most ``timeout_s`` more of draining (the queue left is dropped)."""
        if timeout_s > 0:
            self.drain(timeout_s)
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    # ------------------------------------------------------------------------------- worker side
    _current: str | None = None

    def _next(self, retry_at: dict[str, float]) -> tuple[str, Callable[[RunRegistry], object]] | None:
        """The next call to make (under the lock): the oldest write, else a read. Writes go in batches: the
        first waits ``batch_s`` for others to join it, then all queued are written back to back (at once when
        urgent). Each kind waits out its own back-off, so reads go on while a write is refused (a WAL
        database still reads under a write lock)."""
        while not self._closing:
            now = time.monotonic()
            write_at = retry_at["write"]
            if self._queue and not (self._urgent or self._batch_left):
                write_at = max(write_at, self._queue[0][2] + self.batch_s)
            if self._queue and now >= write_at:
                self._batch_left = self._batch_left or len(self._queue)
                kind, op, _ = self._queue[0]
                return kind, op
            read_at = retry_at["read"]
            if not self._read_now:
                read_at = max(read_at, self._last_read + self.min_read_interval_s)
            if self._want_read and now >= read_at:
                self._want_read = self._read_now = False
                return "read", self._read
            due = [t for t, want in ((write_at, bool(self._queue)), (read_at, self._want_read)) if want]
            self._cond.wait(max(min(due) - now, 0.0) if due else None)
        return None

    def _work(self) -> None:
        backoff = {"write": 0.1, "read": 0.1}
        retry_at = {"write": 0.0, "read": 0.0}
        failing: dict[str, str] = {}
        while True:
            with self._cond:
                nxt = self._next(retry_at)
                if nxt is None:
                    self._busy = False
                    self._thread = None
                    self._cond.notify_all()
                    backend, self._backend = self._backend, None
                    break

                kind, op = nxt
                self._busy, self._current = True, kind
            group = "read" if kind == "read" else "write"
            try:
                if self._backend is None:
                    self._backend = self.registry.with_timeout(self.timeout_s)
                op(self._backend)
            except Exception as exc:  # the storage failed: keep the call, retry it after a back-off
                if _beyond_retry(exc):
                    self._give_up(exc)
                    continue
                with self._cond:
                    if kind == "read":
                        self._want_read = True
                    retry_at[group] = time.monotonic() + backoff[group]
                    backoff[group] = min(backoff[group] * 2.0, self.max_backoff_s)
                    failing[group] = f"{type(exc).__name__}: {exc}"
                    self._busy, self._current = False, None
                    self._note(failing, exc)
                    self._cond.notify_all()
                continue
            with self._cond:
                if kind != "read":
                    self._queue.popleft()
                    self._batch_left = max(self._batch_left - 1, 0)
                    self._urgent = self._urgent and bool(self._queue)
                self.done += 1
                backoff[group], retry_at[group] = 0.1, 0.0
                failing.pop(group, None)
                self._busy, self._current = False, None
                self._note(failing, None)
                self._cond.notify_all()

        if backend is not None:
            with contextlib.suppress(Exception):
                backend.close()  # this thread's connection

    def _give_up(self, exc: Exception) -> None:
        """The storage cannot be used by this process: say so once, drop what is queued, end the worker (it
        retried forever, one thread per run, and each run's end waited its full bound for it)."""
        with self._cond:
            said = self.unusable is not None
            self.unusable = self.failure = f"{type(exc).__name__}: {exc}"
            self._queue.clear()
            self._want_read = self._busy = False
            self._current = None
            self._closing = True
            self.failing_since = time.time()
            self.recovered.clear()
            self.failed.set()
            self._cond.notify_all()
        if said:
            return
        _log.warning(
            "scaleforecast registry %s cannot be used (%s): nothing is recorded or read in this process; set "
            "SCALEFORECAST_REGISTRY_DIR to a writable folder or pass registry=",
            where(self.registry),
            self.unusable,
        )

    def _read(self, backend: RunRegistry) -> None:
        self._last_read = time.monotonic()
        self._snapshot = Snapshot(tuple(backend.records()), time.time())

    def _note(self, failing: dict[str, str], exc: Exception | None) -> None:
        """One warning when an outage starts (reads or writes refused), one info line when all is well again."""
        if failing and self.failure is None:
            self.failing_since = time.time()
            _log.warning(
                "scaleforecast registry %s unavailable (%s: %s); %d write(s) queued, retrying in the background; "
                "stop decisions use the records last read",
                where(self.registry),
                type(exc).__name__,
                exc,
                len(self._queue),
            )
            self.recovered.clear()
            self.failed.set()
        if failing:
            self.failure = "; ".join(f"{k}: {v}" for k, v in sorted(failing.items()))
        elif self.failure is not None:
            lasted = time.time() - (self.failing_since or time.time())
            _log.info("scaleforecast registry %s reachable again after %.1f s", where(self.registry), lasted)
            self.failure, self.failing_since = None, None
            self.failed.clear()
            self.recovered.set()


def _beyond_retry(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or the error it wraps) says the storage cannot be used at all, rather than not now (a
    lock, a busy disk)."""
    if exc is None:
        return False
    if isinstance(exc, (NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.ENOTDIR, errno.EACCES):
        return True
    # a database that cannot be opened (its path is a folder) or written
    permanent = ("readonly database", "unable to open database file")
    if isinstance(exc, sqlite3.OperationalError) and any(m in str(exc) for m in permanent):
        return True
    return isinstance(exc, RegistryError) and _beyond_retry(exc.__cause__)


def where(registry: RunRegistry) -> str:
    """Where ``registry`` keeps its records, for messages (its file, else its kind)."""
    return str(getattr(registry, "path", None) or type(registry).__name__)
