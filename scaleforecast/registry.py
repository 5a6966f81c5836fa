"""A registry that the runs of one sweep share: each run posts its latest forecast and its final loss.

A run reads back the other runs' records to learn what it has to beat (see
:func:`scaleforecast.decision.sweep_reference`). The interface is :class:`RunRegistry`; the embedded default
is :class:`SQLiteRegistry`, one SQLite file per sweep that needs no server and no set-up, safe under several
processes (and several machines on a shared file system with working POSIX locks) writing at once.
"""

from __future__ import annotations

import abc
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

__all__ = [
    "RegistryError",
    "RunRecord",
    "RunRegistry",
    "RunState",
    "SQLiteRegistry",
    "default_registry_path",
    "open_registry",
]

T = TypeVar("T")


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
    ``status``, made at ``step`` of ``total_steps``), its ``state`` and, once finished, its ``final_loss``.
    ``updated`` is the wall-clock time (``time.time()``) of the last write, to spot runs that died."""

    sweep: str
    run_id: str
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    std: float | None = None
    status: str | None = None
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
    ) -> None:
        """Upsert the run's latest forecast and append it to the audit trail (one transaction)."""
        now = time.time()
        loss_v, std_v = _finite_or_none(loss), _finite_or_none(std)
        status = str(getattr(status, "value", status))
        self._write(
            [
                (
                    "INSERT INTO runs (sweep, run_id, step, total_steps, loss, std, status, state, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?) "
                    "ON CONFLICT(sweep, run_id) DO UPDATE SET step=excluded.step, "
                    "total_steps=COALESCE(excluded.total_steps, runs.total_steps), loss=excluded.loss, "
                    "std=excluded.std, status=excluded.status, updated=excluded.updated",
                    (self.sweep, run_id, int(step), total_steps, loss_v, std_v, status, now),
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
                "SELECT sweep, run_id, step, total_steps, loss, std, status, state, final_loss, updated "
                "FROM runs WHERE sweep = ?",
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
            "state",
            "final_loss",
            "updated",
        )
        return [RunRecord(**dict(zip(keys, row, strict=True))) for row in self._retry(op)]

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


def open_registry(registry: RunRegistry | str | Path | None, sweep: str = "default") -> RunRegistry:
    """One entry point: a :class:`RunRegistry` is returned as is; a path (``.sqlite`` file) opens a
    :class:`SQLiteRegistry` there; ``None`` opens the default file for ``sweep``."""
    if isinstance(registry, RunRegistry):
        return registry
    if registry is None:
        return SQLiteRegistry(sweep)
    if isinstance(registry, (str, Path)):
        return SQLiteRegistry(sweep, registry)
    raise TypeError(f"expected a RunRegistry, a path or None, got {type(registry).__name__}")
