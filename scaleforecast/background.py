"""One daemon worker thread per purpose, so that slow work (refits, figures) leaves the training thread.

A :class:`Worker` runs submitted callables one at a time, in submission order, on its own daemon thread,
started on first use. Each call returns a :class:`Job`: poll it with :meth:`Job.done` or block on
:meth:`Job.result`, which returns the callable's value or re-raises its exception on the waiting thread. The
queue is bounded: :meth:`Worker.submit` refuses (returns ``None``) when ``max_pending`` jobs are already
waiting, so a producer faster than the worker can never pile work up. After a ``fork`` the child gets a fresh
thread on its first submit (the parent's thread does not exist there). At the interpreter's exit every worker
finishes what it was given (up to ``EXIT_WAIT_S``) before Python shuts down: a daemon thread still inside
matplotlib or LAPACK while the interpreter finalises can abort the process.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

EXIT_WAIT_S = 30.0  # the longest the interpreter's exit waits for the workers' jobs

__all__ = ["Job", "Worker", "refit_worker"]


class Job(Generic[T]):
    """The future result of a callable run by a :class:`Worker` (or run inline by :meth:`Job.run_now`)."""

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._fn = fn
        self._args = args
        self._event = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # handed to whoever waits on the job
            self._error = exc
        finally:
            self._fn, self._args = None, ()  # type: ignore[assignment]
            self._event.set()

    @classmethod
    def run_now(cls, fn: Callable[..., T], *args: Any) -> Job[T]:
        """A job already run on the calling thread (the synchronous mode)."""
        job = cls(fn, args)
        job._run()
        return job

    @classmethod
    def finished(cls, value: T) -> Job[T]:
        """A job that already produced ``value`` (e.g. one restored from a checkpoint)."""
        job: Job[T] = cls(lambda: value, ())
        job._run()
        return job

    def __getstate__(self) -> dict[str, Any]:
        # a job travels (pickled with its forecaster) as its outcome: wait for it, like a checkpoint does
        self._event.wait()
        return {"value": self._value, "error": self._error}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._fn, self._args = None, ()  # type: ignore[assignment]
        self._value, self._error = state["value"], state["error"]
        self._event = threading.Event()
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> T:
        """Block until the job finished; return its value or raise its exception (``TimeoutError`` on time)."""
        if not self._event.wait(timeout):
            raise TimeoutError("the background job did not finish in time")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


class Worker:
    """A lazily started daemon thread running jobs in order, with at most ``max_pending`` waiting."""

    def __init__(self, name: str, max_pending: int = 8) -> None:
        self.name = name
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job[Any]] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        _WORKERS.append(self)

    def submit(self, fn: Callable[..., T], *args: Any) -> Job[T] | None:
        """Queue ``fn(*args)``; ``None`` when the queue is full (the caller decides what to drop)."""
        job: Job[T] = Job(fn, args)
        with self._lock:
            self._ensure_thread()
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                return None
        return job

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's thread and queued jobs are not ours
            self._pid = os.getpid()
            self._queue = queue.Queue(maxsize=self.max_pending)
            self._thread = None
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop, args=(self._queue,), name=self.name, daemon=True
            )
            self._thread.start()

    @staticmethod
    def _loop(jobs: queue.Queue[Job[Any]]) -> None:
        while True:
            job = jobs.get()
            job._run()
            del job
            jobs.task_done()

    def drain(self, timeout: float) -> bool:
        """Wait until every job submitted so far has run, at most ``timeout`` seconds; True when it did."""
        jobs, deadline = self._queue, time.monotonic() + timeout
        with jobs.all_tasks_done:
            while jobs.unfinished_tasks and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                jobs.all_tasks_done.wait(left)
        return True


_WORKERS: list[Worker] = []


def _drain_at_exit() -> None:
    for worker in _WORKERS:
        worker.drain(EXIT_WAIT_S)


atexit.register(_drain_at_exit)
_REFITS = Worker("scaleforecast-refit")


def refit_worker() -> Worker:
    """The process-wide worker that runs the forecasters' background refits (one at a time)."""
    return _REFITS
