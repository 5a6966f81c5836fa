"""``scaleforecast watch RUN``: a sidecar that forecasts a live run from its TensorBoard event files, or from the
CSV or JSON-lines file it appends to.

For jobs without a callback (Megatron, NeMo, torchtitan, custom loops). Every ``--interval`` seconds it reads
what the job appended to its event files (:class:`~scaleforecast.tfevents.EventTailer`, every record's
checksums verified) or to its table (:class:`~scaleforecast.tables.TableTailer`, whole lines only), feeds the
new losses to a :class:`~scaleforecast.monitor.RunMonitor` (online forecaster, refit policy, health checks,
schedule advice) and writes the forecast scalars, the Margin chart, figures and alerts through the
:class:`~scaleforecast.tensorboard_sink.TensorBoardSink` into a *sibling* run directory, ``<run
dir>-scaleforecast``, so TensorBoard pointed at the parent shows both side by side. It only ever reads the
job's files, and never writes through a symbolic link.

The run's length is what the user says (``--total-steps``, or the schedule's length): a logged point past it is
reported as an anomaly and left out, never taken as a longer run. Without ``--schedule``/``--lr-file`` the LR
after the last logged point is a guess, rebuilt from the logged LR tag (:func:`~scaleforecast.schedule_fit.rebuild_lrs`)
once the warm-up is over, re-fitted as more of it arrives, and every revision of that guess is announced.

Lag: a point reaches the forecast after the job's writer flushes it (``flush_secs``: 120 s by default for
PyTorch/Lightning writers) plus up to one polling interval, plus the refit (well under a second). Forecasts are
stamped with the job's optimizer step, not the wall clock, so the lag never shifts the curves.

Robustness: files that appear (rotation, restarts) are picked up; a file that shrinks or is replaced is re-read
from the start; a step that goes back (resume from an older checkpoint) rewinds the forecaster's history; a
partly written last record is retried on the next poll; a missing path, a file that is not an event file and
corrupt records are each reported once. SIGINT/SIGTERM stop it cleanly after a last pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from scaleforecast.advice import ScheduleAdvisor
from scaleforecast.detectors import HealthMonitor
from scaleforecast.events import Event, event_level
from scaleforecast.forecaster import ForecasterConfig
from scaleforecast.monitor import FlushBatch, RunMonitor, StopConfig, checked
from scaleforecast.readers import detect_format, lightning_csv
from scaleforecast.run_args import (
    SCHEDULE_HELP,
    add_run_arguments,
    finite_float,
    level_arg,
    note_text,
    positive_float,
    positive_int,
)
from scaleforecast.runs import (
    LR_NAMES,
    ReadError,
    averages_gap,
    clean_series,
    loss_windows,
    pick,
    pick_loss,
)
from scaleforecast.safe_write import make_output_dir
from scaleforecast.schedule_fit import LR_TRUST_OK, LRReconstruction, rebuild_lrs, warming_up
from scaleforecast.tables import JSONL_SUFFIXES, TableTailer
from scaleforecast.tensorboard_sink import ADVICE_CHARTS, TensorBoardSink
from scaleforecast.tfevents import SIDECAR_SUFFIX, EventTailer

__all__ = ["Watcher", "sidecar_dir"]

EPILOG = """\
examples:
  scaleforecast watch runs/gpt-350m --schedule cosine:peak=3e-4,warmup=2000,total=100000
  scaleforecast watch megatron/tensorboard --loss "lm loss" --total-steps 50000 --interval 60
  scaleforecast watch lightning_logs/version_0 --lr-file plan.lr.npy --target-loss 2.9
  scaleforecast watch train_log.jsonl --schedule wsd:peak=1e-3,warmup=300,total=25000,cooldown=0.2
  tensorboard --logdir runs/    # shows runs/gpt-350m and runs/gpt-350m-scaleforecast side by side

Polling interval: --interval seconds (default 30). Lag from a logged loss to its forecast: the job's writer
flush interval (120 s by default for PyTorch/Lightning SummaryWriter) + up to one interval + the refit (< 1 s).
Without --schedule/--lr-file the LR is rebuilt from the logged LR tag once the warm-up is over (the rest of the
schedule is a guess until it is logged; each revision is announced). Points past --total-steps are reported and
left out. Ctrl-C (SIGINT) or SIGTERM stops after a last pass; it also stops when the run reaches its last step,
or after --max-idle seconds without new points.
"""

MAX_FAILED_POLLS = 5


TABLE_SUFFIXES = (".csv", ".tsv", *JSONL_SUFFIXES)


def is_table(path: Path) -> bool:
    """Whether ``path`` is a CSV or JSON-lines run (by its name, so that a file not written yet is followed as
    what it will be; an existing file by its first bytes too)."""
    if path.suffix.lower() in TABLE_SUFFIXES:
        return True
    return path.is_file() and detect_format(path) == "table"


def sidecar_dir(run_dir: Path) -> Path:
    """Where the sidecar writes: a sibling of the job's run directory, never inside it."""
    run_dir = run_dir.resolve()
    return run_dir.parent / f"{run_dir.name}{SIDECAR_SUFFIX}"


def _lexical(path: Path) -> Path:
    """``path`` made absolute with its parent resolved but its last part kept as it is (a link is not followed)."""
    path = Path(os.path.abspath(path))
    return path.parent.resolve() / path.name


def _lr_text(rec: LRReconstruction) -> str:
    return rec.schedule.describe() if rec.schedule is not None else rec.source


class Watcher:
    """The sidecar loop: tail the run, feed a :class:`RunMonitor`, write to a sibling TensorBoard run.

    ``schedule`` (spec, ``.npy`` path or array) or ``total_steps`` (the LR is then rebuilt from the logged LR tag)
    must be given; schedule advice is given only with ``schedule`` (a rebuilt LR is a guess past its last logged
    point, and advice on a guessed plan would judge the guess). ``writer`` is any SummaryWriter-like object
    (default: one on :func:`sidecar_dir`, or ``out``).
    ``emit(record)`` receives one JSON-safe dict per new forecast, event and data anomaly; ``log(line)`` the
    human-readable lines (default: stderr).
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
        if not interval > 0:
            raise ValueError(f"--interval must be > 0, got {interval}")
        if not 0.0 < level < 1.0:
            raise ValueError(f"--level must be in (0, 1), got {level}")
        if Path(logdir).name == "trainer_state.json":
            raise ValueError(
                f"{logdir}: watch cannot follow an HF trainer_state.json (the Trainer rewrites it whole at each "
                "checkpoint): watch the run's TensorBoard folder (<output_dir>/runs/...), or forecast the file with "
                "scaleforecast forecast"
            )
        self.logdir = Path(logdir)
        self.schedule = schedule
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
            # advice judges the planned schedule: a rebuilt one is a guess past its last logged LR (a WSD run
            # before its cooldown is rebuilt as constant, and "ends at a high LR" would be said of the guess)
            advisor=ScheduleAdvisor() if schedule is not None else None,
            sinks=[],
            verbose=False,
            on_event=self._on_event,
        )
        # a Lightning CSVLogger folder (no event files, a metrics.csv in it or in its one version folder) is
        # followed through its table, as the other commands read it
        table = self.logdir if is_table(self.logdir) else lightning_csv(self.logdir)
        self.tailer: EventTailer | TableTailer = (
            TableTailer(table) if table is not None else EventTailer(self.logdir, live=True)
        )
        self.stop_event = threading.Event()
        self.fed_steps = np.zeros(0, dtype=np.int64)
        self.fed_losses = np.zeros(0)
        self.lr_rec: LRReconstruction | None = None
        self._lr_points = 0
        self._lr_logged = 0  # the last step whose LR was logged and agrees with the schedule in use
        self._lr_notes: set[str] = set()
        self.loss_tag: str | None = None
        self.polls = 0
        self.forecasts = 0
        self.anomalies = 0
        self._sink: TensorBoardSink | None = None
        self._waiting: str | None = None
        self._said: set[str] = set()
        self._past_max = 0
        if schedule is not None:
            self.lr_rec = rebuild_lrs(
                np.zeros(0, np.int64), np.zeros(0), total_steps, schedule, what="--schedule"
            )
            self.monitor.set_schedule(self.lr_rec.lrs)
        self.total = int(total_steps) if total_steps is not None else len(self.lr_rec.lrs)  # type: ignore[union-attr]

    def _once(self, key: str, msg: str) -> None:
        if key not in self._said:
            self._said.add(key)
            self.log(msg)

    # ------------------------------------------------------------------ output
    def _ensure_sink(self, run_dir: Path) -> None:
        if self._sink is not None:
            return
        close = False
        if self.writer is None:
            out = _lexical(self.out or sidecar_dir(run_dir))
            run_r = run_dir.resolve()
            if out == run_r or run_r in out.parents:
                raise ValueError(f"--out {out} is inside the job's run directory {run_dir}; pick a sibling")
            self.writer = _make_writer(make_output_dir(out))
            self.out = out
            close = True
        # the advice charts only where advice is given (a schedule passed): else they stay empty
        extra = ADVICE_CHARTS if self.monitor.advisor is not None else None
        self._sink = TensorBoardSink(self.writer, layout_extra=extra, close_writer=close)
        self.monitor.add_sink(self._sink)
        self.log(f"reading {run_dir}, writing forecasts to {self.out or 'the given writer'}")

    def _on_event(self, event: Event) -> None:
        self.emit({"type": "event", **event.model_dump(mode="json")})
        self.log(
            f"{logging.getLevelName(event_level(event))} {event.kind} at step {event.step}: {event.message}"
        )

    def _anomaly(self, run_dir: Path, step: int, message: str, **data: Any) -> None:
        self._ensure_sink(run_dir)
        self.anomalies += 1
        event = Event(kind="data_anomaly", step=step, severity="warning", message=message, data=data)
        self.log(f"WARNING: {message}")
        self.emit({"type": "anomaly", **event.model_dump(mode="json")})
        self.monitor.sinks.write_event(event)

    # -------------------------------------------------------------------- loop
    def _update_lr(self, scalars: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        if self.schedule is not None:
            return
        tag = pick([t for t in scalars if t != self.loss_tag], self.lr_name, LR_NAMES)
        if tag is None:
            self._once("no-lr", f"no LR tag yet (looked for {', '.join(LR_NAMES[:4])}, ...); waiting")
            return
        steps, values = clean_series(*scalars[tag], what=tag, notes=[])
        keep = (steps >= 1) & (steps <= self.total)
        steps, values = steps[keep], values[keep]
        # Refit the schedule family when a fifth more LR points arrived (cheap and stable), or at once when the
        # new ones leave it (a cooldown starts: a late WSD decay is a few percent of the points)
        if len(steps) < 3:
            return
        if (
            self.lr_rec is not None
            and len(steps) < 1.2 * self._lr_points
            and not self._lr_left(steps[self._lr_points :], values[self._lr_points :])
        ):
            # the schedule stands, and is now logged (known, not assumed) up to here
            self._lr_logged = int(steps[-1])
            return
        if self.lr_rec is None and warming_up(steps, values):
            self._once(
                "warmup",
                f"the LR is still warming up ({values[-1]:.3g} at step {steps[-1]}, rising): the schedule after the "
                "warm-up is unknown until it is logged; forecasts start when it stops rising (or pass --schedule SPEC)",
            )
            return
        try:
            rec = rebuild_lrs(steps, values, self.total, what=tag)
        except ReadError as err:
            self._once(str(err), str(err))
            return
        old = self.lr_rec
        self._lr_points = len(steps)
        self.lr_rec = rec
        self.monitor.set_schedule(rec.lrs)
        last = int(steps[-1])
        if old is None:
            self.log(
                f"LR rebuilt from {len(steps)} points logged up to step {last}: {_lr_text(rec)} (misses them by "
                f"{100 * (rec.max_error or 0):.2f}% of peak at most)"
            )
        for note in rec.warnings:
            # a rebuild's note names the last step logged: said once, not again at every rebuild; what the
            # rebuild made is said above, in words
            key = re.sub(r"\d+", "N", note)
            if key not in self._lr_notes and "LR rebuilt as" not in note:
                self._lr_notes.add(key)
                self.log(note_text(note))
        if old is None:
            return
        peak = max(float(old.lrs.max()), float(rec.lrs.max()))
        change = float(np.max(np.abs(rec.lrs - old.lrs))) / peak
        if change > LR_TRUST_OK:
            self.log(
                f"LR schedule revised at step {last}: now {_lr_text(rec)} (was {_lr_text(old)}; they differ by up "
                f"to {100 * change:.0f}% of peak); forecasts from here on use it"
            )

    def _lr_left(self, steps: np.ndarray, values: np.ndarray) -> bool:
        """Whether LRs logged since the schedule was rebuilt differ from it by more than ``LR_TRUST_OK`` of
        its peak."""
        assert self.lr_rec is not None
        if not len(steps):
            return False
        lrs = self.lr_rec.lrs
        return bool(np.max(np.abs(values - lrs[steps - 1])) > LR_TRUST_OK * float(lrs.max()))

    def poll_once(self) -> int:
        """One pass: read, feed new points, refit on policy, write. Returns the number of new points."""
        self.polls += 1
        res = self.tailer.poll()
        for note in res.notes:
            self.log(note_text(note))
        if res.waiting is not None:
            if res.waiting != self._waiting:
                self._waiting = res.waiting
                self.log(f"{res.waiting}; waiting for it")
            return 0
        if self._waiting is not None:
            self._waiting = None
            found = "event files in " if isinstance(self.tailer, EventTailer) else ""
            self.log(f"found {found}{res.run_dir}")
        scalars = res.scalars
        if not scalars:
            header = getattr(self.tailer, "header", None)
            if header and getattr(self.tailer, "lineno", 0) > 1:  # rows came, and not one number in them
                self._once(
                    "no numbers",
                    f"{self.logdir}: no number read in its columns ({', '.join(header)}) yet: is it written with "
                    "numbers in another form?",
                )
            return 0
        run_dir = res.run_dir or self.logdir
        tag = pick_loss(sorted(scalars), self.loss, str(self.logdir))
        if tag is None:
            if self.polls == 1 or self.polls % 20 == 0:
                self.log(
                    f"no loss tag matching {self.loss or 'the defaults'} yet; tags: {', '.join(sorted(scalars))}"
                )
            return 0
        if self.loss_tag != tag:
            self.loss_tag = tag
            self.log(f"loss tag {tag!r}")
        steps, losses = clean_series(*scalars[tag], what=tag, notes=[])
        keep = steps >= 1
        steps, losses = steps[keep], losses[keep]
        past = steps > self.total
        if past.any():
            far = int(steps[past].max())
            if far > self._past_max:
                self._past_max = far
                self._anomaly(
                    run_dir,
                    far,
                    f"{int(past.sum())} logged point(s) past the run's last step {self.total} (the furthest at step "
                    f"{far}): left out; the run's length stays {self.total} (a stray point, or a wrong --total-steps?)",
                    last_step=self.total,
                    furthest=far,
                    points=int(past.sum()),
                )
            steps, losses = steps[~past], losses[~past]
        if not len(steps) or (len(steps) < 2 and averages_gap(tag, self.window)):
            # A lone mean-since-the-last-log point has no interval yet (a log that starts partway through a
            # run): its window is known once the next point comes.
            return 0
        self._update_lr(scalars)
        if self.monitor.forecaster.schedule is None:
            return 0
        start = self._first_new(steps, losses)
        if res.reset and start < len(self.fed_steps):
            self.log(
                f"event files changed under us; re-reading from step {steps[start] if start < len(steps) else '-'}"
            )
        self.fed_steps, self.fed_losses = steps, losses
        if start >= len(steps):
            return 0
        self._ensure_sink(run_dir)
        windows = loss_windows(steps, tag, self.window)
        feed_from = self._rewind_point(steps, windows, start)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._feed(steps[feed_from:], losses[feed_from:], windows[feed_from:])
        for w in caught:
            self.log(note_text(" ".join(str(w.message).split())))
        return len(steps) - start

    def _rewind_point(self, steps: np.ndarray, windows: np.ndarray, start: int) -> int:
        """Where to feed from when the points from ``start`` on go back before the forecaster's last step (a
        resume), the forecaster rewound to just before it: the point after the last history bin that survives.
        The forecaster drops every bin that ends after the rewind (a bin cannot be split), so the points of
        the bin that straddles it are fed again; the history then holds exactly the points up to the rewind
        and the new ones."""
        fc = self.monitor.forecaster
        if fc.n_observations == 0 or steps[start] > fc.last_step:
            return start
        back_to = int(steps[start] - windows[start])
        went = (
            f"step {steps[start]} was logged again"
            if steps[start] == fc.last_step
            else f"steps went back to {steps[start]} after {fc.last_step}"
        )
        self.log(
            f"{went} (a resume from an older checkpoint?): the forecast now holds the points up to step "
            f"{back_to} and those logged since"
        )
        ends = fc.observations().end
        kept = ends[ends <= back_to]
        feed_from = min(start, int(np.searchsorted(steps, kept[-1] if len(kept) else 0, side="right")))
        # rewound here, quietly: the line above says it (the forecaster's own warning counts re-read points)
        fc.rewind(int(steps[feed_from] - windows[feed_from]))
        if self._sink is not None:  # the lines written past the resume are hidden in TensorBoard
            self._sink.restart(int(steps[start] - windows[start]) + 1)
        return feed_from

    def _feed(self, steps: np.ndarray, losses: np.ndarray, windows: np.ndarray) -> None:
        cuts = np.flatnonzero(np.diff(windows)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(steps)], strict=True):
            result = self.monitor.flush(
                FlushBatch(steps=steps[lo:hi], loss=losses[lo:hi], window=int(windows[lo]))
            )
            if result.forecast is not None:
                self.forecasts += 1
                self._report(int(steps[hi - 1]), result.forecast)

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
        # as `forecast --json` says it: the step after which the LR is a guess (None: known to the end)
        assumed = None if self.schedule is not None or self.lr_rec is None else self.lr_rec.assumed_after
        if assumed is not None and self._lr_logged > assumed:
            # the schedule is rebuilt only when a fifth more LRs arrived or they leave it: the LRs logged since
            # agree with it, so it is assumed only after them
            assumed = self._lr_logged if self._lr_logged < self.total else None
        if final is not None:
            guess = f"; the LR after step {assumed} is assumed" if assumed is not None else ""
            self.log(
                f"step {step}: final loss {final.loss:.4f} [{final.lower:.4f}, {final.upper:.4f}] at step "
                f"{forecast.final_step} ({forecast.status.value}, {forecast.n_points} points{guess})"
            )
        # what it read, as `forecast --json` says it (the notes on the data are said as they come, on stderr)
        lr_source = None if self.lr_rec is None else self.lr_rec.source
        self.emit(
            {
                "type": "forecast",
                "step": step,
                **forecast.to_cli_json(),
                "lr_assumed_after": assumed,
                "loss_column": self.loss_tag,
                "lr_source": lr_source,
            }
        )

    def finished(self) -> bool:
        """Whether the run has reached its last step (the user's, never one the data suggest)."""
        return self._last_step() >= self.total

    def _last_step(self) -> int:
        return int(self.fed_steps[-1]) if len(self.fed_steps) else 0

    def run(self) -> int:
        """Poll until a signal, the end of the run or ``max_idle``; a last pass and a clean close.

        Returns 0, or 1 after ``MAX_FAILED_POLLS`` polls in a row failed with an unexpected error (each is
        reported; a passing glitch such as a file caught mid-rotation only costs one poll) or when ``max_idle``
        passed without a single loss read.
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
                        self.log(f"the run reached its last step ({self.total}); done")
                        break
                elif self._last_step() == self.total - 1:
                    # Lightning and NeMo log a step's loss at the count of updates before it: their last is
                    # total - 1, and nothing came after it in a whole poll
                    self.log(
                        f"the run reached its last step ({self.total - 1}, in a log that counts steps from 0); done"
                    )
                    break
                elif self.max_idle is not None and time.monotonic() - idle_since > self.max_idle:
                    if not len(self.fed_steps):  # a mistyped path, a job that never logged: not a success
                        self.log(f"no loss read from {self.logdir} in {self.max_idle:g} s; giving up")
                        status = 1
                    else:
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

        Usage errors (an output inside the job's directory or behind a link, an ambiguous tag) still raise."""
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
        if fc.schedule is None or fc.n_observations == 0 or self._sink is None:
            return
        if fc.latest is None or fc.latest.fitted_at_step < fc.last_step:
            try:
                forecast = fc.refit()
                self.monitor.sinks.write_forecast(fc.last_step, forecast, {})
            except Exception as err:  # the sidecar must still close its output cleanly
                self.log(f"last refit failed: {err}")
                return
            self.forecasts += 1
            self._report(fc.last_step, forecast)
        self.monitor.draw_figure(fc.last_step)
        self.monitor.sinks.flush()

    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()


def _make_writer(out: Path) -> Any:
    """A SummaryWriter on ``out``: tensorboardX's (light, no torch), else PyTorch's."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "watch writes TensorBoard files with tensorboardX or torch: install one"
            ) from None
    return SummaryWriter(str(out), flush_secs=5)


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers: Any) -> None:
    """Register ``scaleforecast watch``."""
    p = subparsers.add_parser(
        "watch",
        help="sidecar: forecast a live run from its TensorBoard event files (or a growing CSV/JSONL)",
        description="Follow a live run's TensorBoard event files (or the CSV/JSONL file it appends to) and write the forecast, its band (Margin chart), "
        "figures and alerts into a sibling run directory. Never writes into the job's files.",
        epilog=EPILOG + "\n" + SCHEDULE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument(
        "--interval",
        type=positive_float,
        default=30.0,
        metavar="SECONDS",
        help="polling interval (default 30)",
    )
    p.add_argument("--out", metavar="DIR", help="output run directory (default: <run dir>-scaleforecast)")
    p.add_argument(
        "--target-loss", type=finite_float, metavar="L", help="alert when the run will likely miss this loss"
    )
    p.add_argument("--level", type=level_arg, default=0.8, help="band coverage (default 0.8)")
    p.add_argument(
        "--refit-every",
        type=positive_int,
        metavar="STEPS",
        help="refit every this many steps (default: a cadence that grows with the run, about 100 refits a run)",
    )
    p.add_argument(
        "--max-idle", type=positive_float, metavar="SECONDS", help="stop after this long without new points"
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per forecast, event and anomaly on stdout"
    )
    p.set_defaults(func=run, live_output=True)


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
