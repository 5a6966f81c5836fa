"""``scaleforecast watch LOGDIR``: a sidecar that forecasts a live run from its TensorBoard event files.

For jobs without a callback (Megatron, NeMo, torchtitan, custom loops). Every ``--interval`` seconds it reads
what the job appended to its event files (incrementally, with TensorBoard's own reader), feeds the new losses to
a :class:`~scaleforecast.monitor.RunMonitor` (online forecaster, refit policy, health checks, stop rule) and writes
the forecast scalars, the Margin chart, figures and alerts through the TensorBoard sink into a *sibling* run
directory, ``<run dir>-scaleforecast``, so TensorBoard pointed at the parent shows both side by side. It only
ever reads the job's files.

Lag: a point reaches the forecast after the job's writer flushes it (``flush_secs``: 120 s by default for
PyTorch/Lightning writers) plus up to one polling interval, plus the refit (well under a second). Forecasts are
stamped with the job's optimizer step, not the wall clock, so the lag never shifts the curves.

Robustness: files that appear (rotation, restarts) are picked up; a file that shrinks or is replaced is re-read
from the start; a step that goes back (resume from an older checkpoint) rewinds the forecaster's history; a
partly written last record is retried on the next poll. SIGINT/SIGTERM stop it cleanly after a last pass.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaleforecast.advice import ScheduleAdvisor
from scaleforecast.detectors import HealthMonitor
from scaleforecast.events import Event
from scaleforecast.forecaster import ForecasterConfig
from scaleforecast.io import (
    LOSS_NAMES,
    LR_NAMES,
    SIDECAR_SUFFIX,
    LRReconstruction,
    ReadError,
    _clean_series,
    _pick,
    _windows,
    add_run_arguments,
    find_event_files,
    rebuild_lrs,
)
from scaleforecast.monitor import FlushBatch, RunMonitor, StopConfig, checked

__all__ = ["EventTailer", "Watcher", "sidecar_dir"]

EPILOG = """\
examples:
  scaleforecast watch runs/gpt-350m --schedule cosine:peak=3e-4,warmup=2000,total=100000
  scaleforecast watch megatron/tensorboard --loss "lm loss" --total-steps 50000 --interval 60
  scaleforecast watch lightning_logs/version_0 --lr-file plan.lr.npy --target-loss 2.9
  tensorboard --logdir runs/    # shows runs/gpt-350m and runs/gpt-350m-scaleforecast side by side

Polling interval: --interval seconds (default 30). Lag from a logged loss to its forecast: the job's writer
flush interval (120 s by default for PyTorch/Lightning SummaryWriter) + up to one interval + the refit (< 1 s).
Without --schedule/--lr-file the LR is rebuilt from the logged LR tag and --total-steps, and re-fitted as more
of it arrives. Ctrl-C (SIGINT) or SIGTERM stops after a last pass; it also stops when the run reaches its last
step, or after --max-idle seconds without new points.
"""


MAX_FAILED_POLLS = 5


def sidecar_dir(run_dir: Path) -> Path:
    """Where the sidecar writes: a sibling of the job's run directory, never inside it."""
    run_dir = run_dir.resolve()
    return run_dir.parent / f"{run_dir.name}{SIDECAR_SUFFIX}"


@dataclass
class _FileState:
    inode: int
    size: int
    acc: Any


class EventTailer:
    """Incremental reader of one run's event files (TensorBoard's ``EventAccumulator`` per file, all points).

    :meth:`poll` reloads each file from where it stopped, opens new files, and re-reads from the start any file
    that shrank or was replaced (a different inode). It returns every scalar series merged over files (later file
    wins on a repeated step) and whether anything was re-read from scratch.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.files: dict[Path, _FileState] = {}

    def _open(self, f: Path, st: os.stat_result) -> _FileState:
        from tensorboard.backend.event_processing import event_accumulator as ea

        acc = ea.EventAccumulator(str(f), size_guidance={ea.SCALARS: 0})
        return _FileState(inode=st.st_ino, size=0, acc=acc)

    def poll(self) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], bool]:
        """Read what is new: ``({tag: (steps, values)}, reset)``; no files yet gives ``({}, False)``."""
        try:
            files = find_event_files(self.path)
        except ReadError:
            files = []
        reset = False
        current = set(files)
        for gone in set(self.files) - current:
            del self.files[gone]
            reset = True
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:
                self.files.pop(f, None)
                reset = True
                continue
            state = self.files.get(f)
            if state is None or st.st_ino != state.inode or st.st_size < state.size:
                reset = reset or state is not None
                state = self.files[f] = self._open(f, st)
            if st.st_size != state.size:
                try:
                    state.acc.Reload()
                except Exception:
                    # A damaged file: drop it and try again from scratch next time.
                    self.files.pop(f, None)
                    continue
                state.size = st.st_size
        merged: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for f in files:
            state = self.files.get(f)
            if state is None:
                continue
            for tag in state.acc.Tags().get("scalars", []):
                events = state.acc.Scalars(tag)
                merged.setdefault(tag, []).append(
                    (
                        np.fromiter((e.step for e in events), dtype=np.int64, count=len(events)),
                        np.fromiter((e.value for e in events), dtype=np.float64, count=len(events)),
                    )
                )
        out = {
            tag: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            for tag, parts in merged.items()
        }
        return out, reset


class Watcher:
    """The sidecar loop: tail the run, feed a :class:`RunMonitor`, write to a sibling TensorBoard run.

    ``schedule`` (spec, ``.npy`` path or array) or ``total_steps`` (the LR is then rebuilt from the logged LR tag)
    must be given. ``writer`` is any SummaryWriter-like object (default: one on :func:`sidecar_dir`).
    ``emit(record)`` receives one JSON-safe dict per new forecast and per event.
    """

    def __init__(
        self,
        logdir: str | os.PathLike[str],
        *,
        schedule: Any = None,
        total_steps: int | None = None,
        loss: str | None = None,
        lr: str | None = None,
        window: Any = None,
        interval: float = 30.0,
        out: str | os.PathLike[str] | None = None,
        writer: Any = None,
        target_loss: float | None = None,
        level: float = 0.8,
        max_idle: float | None = None,
        refit_every: int | None = None,
        emit: Any = None,
        log: Any = None,
    ) -> None:
        if schedule is None and total_steps is None:
            raise ValueError(
                "watch needs the planned length of the run: pass --schedule SPEC, --lr-file or --total-steps N"
            )
        if interval <= 0:
            raise ValueError(f"--interval must be > 0, got {interval}")
        self.logdir = Path(logdir)
        self.schedule = schedule
        self.total_steps = total_steps
        self.loss, self.lr_name, self.window = loss, lr, window
        self.interval = interval
        self.max_idle = max_idle
        self.out = None if out is None else Path(out)
        self.writer = writer
        self.emit = emit or (lambda record: None)
        self.log = log or (lambda msg: print(f"scaleforecast watch: {msg}", file=sys.stderr, flush=True))
        cfg = (
            ForecasterConfig(level=level)
            if refit_every is None
            else ForecasterConfig(level=level, refit_every=refit_every)
        )
        self.monitor = RunMonitor(
            config=cfg,
            # Alerts only: a sidecar cannot stop the job.
            stop=checked(StopConfig, target_loss=target_loss, action="warn"),
            detectors=[HealthMonitor()],
            advisor=ScheduleAdvisor(),
            sinks=[],
            verbose=False,
            on_event=self._on_event,
        )
        self.tailer = EventTailer(self.logdir)
        self.stop_event = threading.Event()
        self.fed_steps = np.zeros(0, dtype=np.int64)
        self.fed_losses = np.zeros(0)
        self.lr_rec: LRReconstruction | None = None
        self._lr_points = 0
        self.loss_tag: str | None = None
        self.polls = 0
        self.forecasts = 0
        self._sink_ready = False
        if schedule is not None:
            self.lr_rec = rebuild_lrs(
                np.zeros(0, np.int64), np.zeros(0), total_steps, schedule, what="--schedule"
            )
            self.monitor.set_schedule(self.lr_rec.lrs)

    # ------------------------------------------------------------------ output
    def _ensure_sink(self, run_dir: Path) -> None:
        if self._sink_ready:
            return
        from scaleforecast.integrations.tensorboard import TensorBoardSink

        close = False
        if self.writer is None:
            out = self.out or sidecar_dir(run_dir)
            out_r, run_r = out.resolve(), run_dir.resolve()
            if out_r == run_r or run_r in out_r.parents:
                raise ValueError(f"--out {out} is inside the job's run directory {run_dir}; pick a sibling")
            self.writer = _make_writer(out)
            self.out = out
            close = True
        self.monitor.add_sink(TensorBoardSink(self.writer, close_writer=close))
        self._sink_ready = True
        self.log(f"reading {run_dir}, writing forecasts to {self.out or 'the given writer'}")

    def _on_event(self, event: Event) -> None:
        self.log(f"{event.severity.upper()} {event.kind} at step {event.step}: {event.message}")
        self.emit({"type": "event", **event.model_dump(mode="json")})

    # -------------------------------------------------------------------- loop
    def _update_lr(self, scalars: dict[str, tuple[np.ndarray, np.ndarray]], last_step: int) -> None:
        if self.schedule is not None:
            return
        tag = _pick(sorted(scalars), self.lr_name, LR_NAMES)
        if tag is None:
            if self.polls == 1:
                self.log(f"no LR tag yet (looked for {', '.join(LR_NAMES[:4])}, ...); waiting")
            return
        notes: list[str] = []
        steps, values = _clean_series(*scalars[tag], what=tag, notes=notes)
        pos = steps >= 1
        steps, values = steps[pos], values[pos]
        # Refit the schedule family only when a fifth more LR points arrived: cheap and stable.
        if len(steps) < 3 or (self.lr_rec is not None and len(steps) < 1.2 * self._lr_points):
            return
        total = max(int(self.total_steps or 0), int(steps[-1]), last_step)
        try:
            rec = rebuild_lrs(steps, values, total, what=tag)
        except ReadError as err:
            self.log(str(err))
            return
        self._lr_points = len(steps)
        first = self.lr_rec is None
        self.lr_rec = rec
        self.monitor.set_schedule(rec.lrs)
        for note in rec.warnings:
            self.log(("WARNING: " if not rec.trusted else "") + note)
        if first:
            self.log(f"LR: {rec.source} (max error {100 * (rec.max_error or 0):.2f}% of peak)")

    def poll_once(self) -> int:
        """One pass: read, feed new points, refit on policy, write. Returns the number of new points."""
        self.polls += 1
        scalars, reset = self.tailer.poll()
        if not scalars:
            return 0
        files = self.tailer.files
        run_dir = next(iter(files)).parent if files else self.logdir
        tag = _pick(sorted(scalars), self.loss, LOSS_NAMES)
        if tag is None:
            if self.polls == 1 or self.polls % 20 == 0:
                self.log(
                    f"no loss tag matching {self.loss or 'the defaults'} yet; tags: {', '.join(sorted(scalars))}"
                )
            return 0
        if self.loss_tag != tag:
            self.loss_tag = tag
            self.log(f"loss tag {tag!r}")
        notes: list[str] = []
        steps, losses = _clean_series(*scalars[tag], what=tag, notes=notes)
        keep = steps >= 1
        steps, losses = steps[keep], losses[keep]
        if not len(steps):
            return 0
        self._update_lr(scalars, int(steps[-1]))
        lrs = self.monitor.forecaster.schedule
        if lrs is None:
            return 0
        if steps[-1] > len(lrs):
            if self.schedule is not None:
                raise ValueError(
                    f"the run is at step {steps[-1]}, past the end of the schedule ({len(lrs)} steps)"
                )
            steps, losses = steps[steps <= len(lrs)], losses[: int((steps <= len(lrs)).sum())]
        start = self._first_new(steps, losses)
        if reset and start < len(self.fed_steps):
            self.log(
                f"event files changed under us; re-reading from step {steps[start] if start < len(steps) else '-'}"
            )
        new_steps, new_losses = steps[start:], losses[start:]
        self.fed_steps, self.fed_losses = steps, losses
        if not len(new_steps):
            return 0
        self._ensure_sink(run_dir)
        windows = _windows(steps, tag, self.window)[start:]
        cuts = np.flatnonzero(np.diff(windows)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(new_steps)], strict=True):
            result = self.monitor.flush(
                FlushBatch(steps=new_steps[lo:hi], loss=new_losses[lo:hi], window=int(windows[lo]))
            )
            if result.forecast is not None:
                self.forecasts += 1
                self._report(int(new_steps[hi - 1]), result.forecast)
        return len(new_steps)

    def _first_new(self, steps: np.ndarray, losses: np.ndarray) -> int:
        """Index of the first point not already fed unchanged (a resume or a rewrite makes it earlier)."""
        n = min(len(steps), len(self.fed_steps))
        same = (steps[:n] == self.fed_steps[:n]) & (
            (losses[:n] == self.fed_losses[:n]) | (np.isnan(losses[:n]) & np.isnan(self.fed_losses[:n]))
        )
        diff = np.flatnonzero(~same)
        return int(diff[0]) if len(diff) else n

    def _report(self, step: int, forecast: Any) -> None:
        final = forecast.final
        if final is not None:
            self.log(
                f"step {step}: final loss {final.loss:.4f} [{final.lower:.4f}, {final.upper:.4f}] at step "
                f"{forecast.final_step} ({forecast.status.value}, {forecast.n_points} points)"
            )
        self.emit({"type": "forecast", "step": step, **forecast.to_cli_json()})

    def finished(self) -> bool:
        total = self.monitor.forecaster.total_steps
        return total is not None and len(self.fed_steps) > 0 and int(self.fed_steps[-1]) >= total

    def run(self) -> int:
        """Poll until a signal, the end of the run or ``max_idle``; a last pass and a clean close.

        Returns 0, or 1 after ``MAX_FAILED_POLLS`` polls in a row failed with an unexpected error (each is
        reported; a passing glitch such as a file caught mid-rotation only costs one poll).
        """
        idle_since = time.monotonic()
        failures = 0
        status = 0
        self.log(f"watching {self.logdir} every {self.interval:g} s (Ctrl-C to stop)")
        try:
            while not self.stop_event.is_set():
                new = self._safe_poll()
                failures = 0 if new is not None else failures + 1
                if failures >= MAX_FAILED_POLLS:
                    self.log(f"{failures} polls in a row failed; giving up")
                    status = 1
                    break
                if new:
                    idle_since = time.monotonic()
                    if self.finished():
                        total = self.monitor.forecaster.total_steps
                        self.log(f"the run reached its last step ({total}); done")
                        break
                elif self.max_idle is not None and time.monotonic() - idle_since > self.max_idle:
                    self.log(f"no new points for {self.max_idle:g} s; stopping")
                    break
                self.stop_event.wait(self.interval)
            else:
                self.log("stopping: a last pass, then closing the output")
                self._safe_poll()
        finally:
            self._final_refit()
            self.monitor.close()
            for msg in self.monitor.disabled.values():
                self.log(msg)
        return status

    def _safe_poll(self) -> int | None:
        """:meth:`poll_once`, with unexpected errors reported instead of raised (``None`` then).

        Usage errors (a schedule shorter than the run, an output inside the job's directory) still raise."""
        try:
            return self.poll_once()
        except ValueError:
            raise
        except Exception as err:
            self.log(f"poll failed ({type(err).__name__}: {err}); retrying in {self.interval:g} s")
            return None

    def _final_refit(self) -> None:
        """Fit once more on everything read, so the last forecast written covers the last point seen."""
        fc = self.monitor.forecaster
        if fc.schedule is None or fc.n_observations == 0 or not self._sink_ready:
            return
        if fc.latest is not None and fc.latest.fitted_at_step >= fc.last_step:
            return
        try:
            forecast = fc.refit()
            self.monitor.sinks.write_forecast(fc.last_step, forecast, {})
            self.monitor.sinks.flush()
        except Exception as err:  # the sidecar must still close its output cleanly
            self.log(f"last refit failed: {err}")
            return
        self.forecasts += 1
        self._report(fc.last_step, forecast)

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()


def _make_writer(out: Path) -> Any:
    """A SummaryWriter on ``out`` (PyTorch's, else tensorboardX's)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter  # type: ignore[no-redef]
        except ImportError:
            raise ValueError(
                "watch writes TensorBoard files with torch or tensorboardX: install one"
            ) from None
    return SummaryWriter(str(out), flush_secs=5)


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers: Any) -> None:
    """Register ``scaleforecast watch``."""
    p = subparsers.add_parser(
        "watch",
        help="sidecar: forecast a live run from its TensorBoard event files",
        description="Follow a live run's TensorBoard event files and write the forecast, its band (Margin chart), "
        "figures and alerts into a sibling run directory. Never writes into the job's files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument(
        "--interval", type=float, default=30.0, metavar="SECONDS", help="polling interval (default 30)"
    )
    p.add_argument("--out", metavar="DIR", help="output run directory (default: <run dir>-scaleforecast)")
    p.add_argument(
        "--target-loss", type=float, metavar="L", help="alert when the run will likely miss this loss"
    )
    p.add_argument("--level", type=float, default=0.8, help="band coverage (default 0.8)")
    p.add_argument(
        "--refit-every", type=int, metavar="STEPS", help="refit every this many steps (default 100)"
    )
    p.add_argument(
        "--max-idle", type=float, metavar="SECONDS", help="stop after this long without new points"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per forecast and event on stdout"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``scaleforecast watch``: run the sidecar until a signal, the end of the run or ``--max-idle``."""

    def emit(record: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(record, default=str), flush=True)

    watcher = Watcher(
        args.run,
        schedule=args.schedule or args.lr_file,
        total_steps=args.total_steps,
        loss=args.loss,
        lr=args.lr,
        window=args.window,
        interval=args.interval,
        out=args.out,
        target_loss=args.target_loss,
        level=args.level,
        max_idle=args.max_idle,
        refit_every=args.refit_every,
        emit=emit,
    )
    previous = {sig: signal.signal(sig, watcher.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return watcher.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
