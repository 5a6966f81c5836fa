"""TensorBoard output for the forecast: scalars, a Margin chart of the band, figures and text events.

:class:`TensorBoardSink` implements :class:`scaleforecast.sinks.Sink` over any ``SummaryWriter``-like object
(``torch.utils.tensorboard.SummaryWriter``, ``tensorboardX``, or Lightning's ``TensorBoardLogger.experiment``),
so the forecast lands in the same run directory as the user's own curves.

TensorBoard colours a line by its run, never by its tag, and names it by its run (run table, tooltip, the
Time Series card's table). So the lines that belong on one chart share one tag,
``forecast/observed_vs_forecast``, each in a small run of its own beside the user's, named for what it holds:
``<run>/scaleforecast/observed`` (the mean observed loss of each flush), ``<run>/scaleforecast/forecast`` (the
forecast of the final loss at each refit), ``<run>/scaleforecast/target`` and ``<run>/scaleforecast/early_stop``
(a vertical bar at the step of the stop, from the target to the top of the last band: two values at one step).
The band stays in the user's run, in its colour: in the user's run, the observed loss took that colour too, and
could not be told from the forecast. A writer whose folder is unknown keeps everything in its own run instead
(``series_runs=False`` forces it): same tags, one colour.

Tags of the user's run:

- ``forecast/final_loss``, ``forecast/lower``, ``forecast/upper``, ``forecast/std``: the forecast of the loss
  at the schedule's last step and its central band;
- ``forecast/observed_vs_forecast``: the mean observed loss of each flush, without series runs only;
- ``forecast/lr``: the LR of each flush's last update (with the observed loss, all a reader of the folder needs);
- ``forecast/p_miss_target``, ``forecast/n_points``, ``law/L0``, ``law/A``, ``law/alpha``, ``law/C``: the stop
  rule's probability that the target is out of reach (from the measured error of forecasts at this point of
  real runs, not from the band), the points fitted and the fitted law; the confidence it stops at is a flat
  line on the probability's card, in run ``<run>/scaleforecast/target`` (without series runs, tag
  ``forecast/stop_confidence``);
- text ``forecast/status``: the fit's status in words whenever it changes, and the early stop;
- image ``forecast/curve``: the observed loss, the law fitted so far, the forecast and its band to the end of
  the schedule, the target, the step of an early stop and the health events so far (triangles along the top
  edge), with a legend; drawn on a worker thread (a figure is a tenth of a second of matplotlib: the training
  thread only hands over the snapshot; while one figure is being drawn, the latest one asked for waits its turn
  and replaces any older one waiting);
- text ``events/<kind>`` for alerts and decisions, with scalar ``events/<kind>_score`` when they have a score.

Custom scalars: one Margin chart, "scaleforecast / final loss forecast: band, observed, target, early stop",
draws the band and every run's ``forecast/observed_vs_forecast`` (its layout is written in the
``scaleforecast/forecast`` run; TensorBoard merges the layouts of all runs).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import numbers
import os
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from scaleforecast.background import Job, Worker
from scaleforecast.events import event_level
from scaleforecast.results import FitStatus, Forecast
from scaleforecast.runs import OBSERVED_TAG
from scaleforecast.sinks import CurveSnapshot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from scaleforecast.events import Event

log = logging.getLogger(__name__)

__all__ = [
    "ADVICE_CHARTS",
    "COMPARE_TAG",
    "SERIES_DIR",
    "STATUS_TEXT",
    "TensorBoardSink",
    "draw_snapshot",
    "forecast_layout",
    "layout_proto",
    "render_rgb",
    "status_text",
]

COMPARE_TAG = OBSERVED_TAG
SERIES_DIR = "scaleforecast"
STATUS_TEXT: dict[str, str] = {
    FitStatus.OK.value: "usable: every parameter of the law is pinned by the run's own losses",
    FitStatus.ANNEALING_UNIDENTIFIED.value: (
        "usable: the run's own losses do not pin the annealing term C yet, so C leans on the prior: the LR has "
        "not decayed yet, or its decay is too short or noisy to read, or (a cosine, a long linear decay) it "
        "decays so gradually that the drop it gives and the power law's own fall are hard to tell apart until "
        "near the end"
    ),
    FitStatus.INSUFFICIENT_DATA.value: "no forecast yet: too few losses to fit the law",
    FitStatus.FAILED.value: (
        "no new forecast: the last refit failed, or its law gives no finite loss above zero at the last step"
    ),
    FitStatus.LAW_VIOLATED.value: (
        "usable, widened: the latest losses have left the fitted law; the band covers both outcomes and the "
        "stop rule does not act on it"
    ),
    FitStatus.STALE.value: "not current: the latest losses are not finite; no forecast is published until one is",
}
P_MISS_TAG = "forecast/p_miss_target"
STOP_LEVEL_TAG = "forecast/stop_confidence"
CATEGORY = "scaleforecast"
BAND_CHART = "final loss forecast: band, observed, target, early stop"
# One line, the loss the best candidate cooldown would save: the planned and the best final loss, drawn
# together, were two lines of one colour (one run) a hundredth apart, which no one could tell apart.
ADVICE_CHARTS: dict[str, list[Any]] = {
    "schedule advice: final loss a better cooldown would save": ["Multiline", ["advice/best_gain"]],
}


def status_text(status: FitStatus | str) -> str:
    """The fit status in words (an unknown status is shown by its name)."""
    value = status.value if isinstance(status, FitStatus) else str(status)
    return STATUS_TEXT.get(value, value)


def forecast_layout(
    extra: Mapping[str, list[Any]] | None = None, *, series_runs: bool = True
) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: ``{category: {chart title: [chart kind, tags]}}``.

    With ``series_runs`` (the lines live in runs of their own, one colour each) one Margin chart draws
    ``forecast/final_loss`` within ``[forecast/lower, forecast/upper]`` and, as lines without a band, every
    run's ``forecast/observed_vs_forecast`` (a Margin chart's tags come in threes: value, lower, upper). Without,
    the band has its own Margin chart and the observed loss, the forecast and the target share a Multiline
    chart (one run: one colour; each line has its own marker, named in the chart's list of matches): this is
    the form ``add_custom_scalars`` takes. ``extra`` adds charts (e.g. ``{"schedule advice gain":
    ["Multiline", ["advice/gain"]]}``) to the same category.
    """
    band = ["forecast/final_loss", "forecast/lower", "forecast/upper"]
    charts: dict[str, list[Any]]
    if series_runs:
        charts = {BAND_CHART: ["Margin", [*band, COMPARE_TAG, COMPARE_TAG, COMPARE_TAG]]}
    else:
        charts = {
            "final loss forecast (band)": ["Margin", band],
            "observed loss vs forecast": [
                "Multiline",
                [COMPARE_TAG, "forecast/final_loss", "forecast/target", "forecast/early_stop"],
            ],
        }
    charts.update(extra or {})
    return {CATEGORY: charts}


def layout_proto(layout: Mapping[str, Mapping[str, list[Any]]]) -> Any:
    """:func:`forecast_layout` as TensorBoard's ``Layout`` proto (a Margin chart may hold several series)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    categories = []
    for title, charts in layout.items():
        built = []
        for name, (kind, tags) in charts.items():
            if kind == "Margin":
                series = [
                    layout_pb2.MarginChartContent.Series(value=v, lower=lo, upper=hi)
                    for v, lo, hi in zip(tags[0::3], tags[1::3], tags[2::3], strict=True)
                ]
                built.append(
                    layout_pb2.Chart(title=name, margin=layout_pb2.MarginChartContent(series=series))
                )
            else:
                built.append(
                    layout_pb2.Chart(title=name, multiline=layout_pb2.MultilineChartContent(tag=tags))
                )
        categories.append(layout_pb2.Category(title=title, chart=built))
    return layout_pb2.Layout(category=categories)


def _finite(value: Any) -> bool:
    """A finite number (numpy's too; not a bool, not None)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _log_dir(writer: Any) -> str | None:
    """The folder ``writer`` writes to (torch: ``log_dir``, tensorboardX: ``logdir``), else ``None``."""
    for attr in ("log_dir", "logdir"):
        value = getattr(writer, attr, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return os.fspath(value)
    return None


class _RunWriter:
    """Scalars and a custom-scalars layout for one run beside the user's, through TensorBoard's own event file
    writer (whatever class the user's writer is)."""

    def __init__(self, logdir: str) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._file = EventFileWriter(logdir)

    def _add(self, summary: Any, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event

        self._file.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._add(Summary(value=[Summary.Value(tag=tag, simple_value=float(value))]), step)

    def add_layout(self, layout: Any) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.custom_scalar import metadata

        tensor = TensorProto(
            dtype="DT_STRING", string_val=[layout.SerializeToString()], tensor_shape=TensorShapeProto()
        )
        value = Summary.Value(
            tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=metadata.create_summary_metadata()
        )
        self._add(Summary(value=[value]), 0)

    def restart(self, step: int) -> None:
        _restart_marker(self._file.add_event, step)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _writer_package(writer: Any) -> str | None:
    """``"torch"`` or ``"tensorboardX"`` for their ``SummaryWriter`` (whose event file writer and protos are
    known here), else ``None``."""
    module = type(writer).__module__
    if module.startswith("torch.utils.tensorboard"):
        return "torch"
    return "tensorboardX" if module.split(".")[0] == "tensorboardX" else None


def _restart_marker(add_event: Callable[[Any], None], step: int, package: str = "tensorboard") -> None:
    """A SessionLog START at ``step`` through an event file writer's ``add_event``: TensorBoard hides the
    events of that run at ``step`` and after that were written before it (what ``SummaryWriter(purge_step=)``
    writes when it opens). The event is built from the writer's own ``package``'s protos: tensorboardX
    pickles events to its writer process, which cannot take TensorBoard's."""
    if package == "tensorboardX":
        from tensorboardX.proto.event_pb2 import Event, SessionLog
    else:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    add_event(Event(wall_time=time.time(), step=int(step), session_log=SessionLog(status=SessionLog.START)))


class _Series:
    """The runs beside the user's run that carry the lines of ``forecast/observed_vs_forecast``: opened on
    first use under ``<root>/scaleforecast/``; none when ``root`` is ``None`` or TensorBoard is missing."""

    def __init__(self, root: str | None) -> None:
        self.root = root
        self.writers: dict[str, _RunWriter] = {}
        self.restart_at: int | None = None  # a run opened from now on starts with this restart marker

    def restart(self, step: int) -> None:
        """Hide what every line's run holds at ``step`` and after (runs not opened yet: when they are)."""
        self.restart_at = step if self.restart_at is None else min(self.restart_at, step)
        for w in self.writers.values():
            w.restart(step)

    def writer(self, name: str) -> _RunWriter | None:
        if self.root is None:
            return None
        if name not in self.writers:
            try:
                self.writers[name] = _RunWriter(os.path.join(self.root, SERIES_DIR, name))
                if self.restart_at is not None:
                    self.writers[name].restart(self.restart_at)
            except Exception as exc:  # no tensorboard package, or a folder that cannot be made: one run it is
                log.debug("scaleforecast: no series runs beside %s (%s)", self.root, exc)
                self.root = None
                return None
        return self.writers[name]


class TensorBoardSink:
    """Write forecasts, events and figures to a ``SummaryWriter``-like ``writer`` (see the module docstring).

    The writer needs ``add_scalar`` and ``add_text``; ``add_image`` and ``add_custom_scalars`` are used when
    present. ``layout_extra`` adds charts to the custom-scalars layout, which is written once, on the first
    forecast. ``close_writer``: close the writer in :meth:`close` (only for writers the sink's owner created;
    the runs the sink opens itself are always closed). ``series_runs``: write the forecast, target and
    early-stop lines to runs beside the writer's (when its folder is known), else all to the writer's run.
    ``background_figures``: draw figures on a worker thread, written by the next call on the caller's thread
    (a failure there surfaces at the next figure or at :meth:`close`, where the fan-out sink reports it).
    """

    def __init__(
        self,
        writer: Any,
        *,
        layout_extra: Mapping[str, list[Any]] | None = None,
        close_writer: bool = False,
        figure_tag: str = "forecast/curve",
        series_runs: bool = True,
        background_figures: bool = True,
    ) -> None:
        for method in ("add_scalar", "add_text"):
            if not callable(getattr(writer, method, None)):
                raise TypeError(f"{type(writer).__name__} is not SummaryWriter-like: it has no {method}()")
        self.writer = writer
        self.layout_extra = dict(layout_extra or {})
        self.close_writer = close_writer
        self.figure_tag = figure_tag
        self._series = _Series(_log_dir(writer) if series_runs else None)
        self._layout_written = False
        self._last_status: tuple[str, tuple[str, ...]] | None = None
        self._last_band: tuple[float, float] | None = None
        self._target: float | None = None
        self.background_figures = background_figures
        self.skipped_figures = 0
        self._figures: list[Job[tuple[int, Any] | None]] = []
        self._next: CurveSnapshot | None = None  # the snapshot a queued figure job will draw
        self._lock = threading.Lock()
        if background_figures:
            _settle_heap()

    def _write_layout(self) -> None:
        if self._layout_written:
            return
        self._layout_written = True
        beside = self._series.writer("forecast")
        if beside is not None:
            beside.add_layout(layout_proto(forecast_layout(self.layout_extra)))
            return
        add = getattr(self.writer, "add_custom_scalars", None)
        if callable(add):
            add(forecast_layout(self.layout_extra, series_runs=False))

    def _line(self, name: str, value: float, step: int) -> bool:
        """``value`` on the ``name`` line of ``forecast/observed_vs_forecast``; False without series runs."""
        w = self._series.writer(name)
        if w is None:
            return False
        w.add_scalar(COMPARE_TAG, value, step)
        return True

    def write_forecast(self, step: int, forecast: Forecast, extras: Mapping[str, float]) -> None:
        """Scalars of the final-step forecast, the law, the status text on change and ``extras`` at ``step``."""
        self._collect(wait=False)  # the figures drawn since the last call
        self._write_layout()
        w = self.writer
        final = forecast.final
        if final is not None:
            for tag, value in (
                ("forecast/final_loss", final.loss),
                ("forecast/lower", final.lower),
                ("forecast/upper", final.upper),
                ("forecast/std", final.std),
            ):
                if _finite(value):
                    w.add_scalar(tag, value, step)
            if _finite(final.loss):
                self._line("forecast", final.loss, step)
            if _finite(final.lower) and _finite(final.upper):
                self._last_band = (final.lower, final.upper)
        if forecast.params is not None:
            p = forecast.params
            # the fitted parameters; the S2 memory and warm-up convention (params.extra) are fixed for a run, and
            # a flat card each would bury them
            for name, value in (("L0", p.L0), ("A", p.A), ("alpha", p.alpha), ("C", p.C)):
                if _finite(value):
                    w.add_scalar(f"law/{name}", value, step)
        w.add_scalar("forecast/n_points", forecast.n_points, step)
        status = forecast.status.value
        # written again when a tagged note comes or goes (an [out_of_shape] of the first fits stood on the card
        # long after the fits were fine), not when only a note's numbers move
        said = (status, tuple(sorted({w.split("]")[0] for w in forecast.warnings if w.startswith("[")})))
        if said != self._last_status:
            self._last_status = said
            text = f"step {step}: **{status}**, {status_text(forecast.status)} ({forecast.n_points} points)"
            if forecast.warnings:
                text = _bullets(text, forecast.warnings)
            w.add_text("forecast/status", text, step)
        scalars = dict(extras)
        target = scalars.get("forecast/target")
        if target is not None and _finite(float(target)):
            self._target = float(target)
            if self._line("target", self._target, step):
                del scalars["forecast/target"]
        self.write_scalars(step, scalars)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Each finite value under its tag (a bare name goes under ``forecast/``); the observed loss
        (``forecast/observed``) goes under ``forecast/observed_vs_forecast``, in the ``observed`` run beside the
        user's when there is one."""
        for tag, value in scalars.items():
            if value is None or not _finite(float(value)):
                continue
            full = tag if "/" in tag else f"forecast/{tag}"
            if full == "forecast/observed":
                if not self._line("observed", float(value), step):
                    self.writer.add_scalar(COMPARE_TAG, float(value), step)
            elif full == STOP_LEVEL_TAG and (w := self._series.writer("target")) is not None:
                # a flat line on the probability's own card, in a colour of its own: the target run's, the bar
                # the run is held to (a run of its own held none of the Margin chart's tags, and TensorBoard
                # showed a "Missing Tags" error under the chart for every run with a target)
                w.add_scalar(P_MISS_TAG, float(value), step)
            else:
                self.writer.add_scalar(full, float(value), step)

    def write_event(self, event: Event) -> None:
        """Text ``events/<kind>`` (severity, message and details) and its score as scalar
        ``events/<kind>_score``. An ``early_stop`` marks its step instead of scoring it: a line of
        ``forecast/status``, and a vertical bar on the ``early_stop`` line from the target (or the band's lower
        end) to the band's upper end of the last forecast. A critical event that stopped the run (its
        ``data["action"]``) is a line of ``forecast/status`` too."""
        # a single spike is information, as the Python logger and the sidecar say it; a stop is the stop rule
        # at work (the run's own "critical" is what makes it act), not a failure of the run
        if event.kind == "early_stop":
            level = "WARNING" if event.data.get("action") == "warn" else "STOP"
        else:
            level = "INFO" if event_level(event) == logging.INFO else event.severity.upper()
        # most messages name their step already
        where = "" if f"step {event.step}" in event.message else f" at step {event.step}"
        head = f"**{level}** {event.kind}{where}: {event.message}"
        details = [f"{key}: {_shown(value)}" for key, value in event.data.items()]
        self.writer.add_text(f"events/{event.kind}", _bullets(head, details), event.step)
        if event.kind == "early_stop":
            # Its probability is already the forecast/p_miss_target curve; the stop gets its bar instead.
            self._mark_stop(event)
            return
        if event.is_critical and event.data.get("action") in ("stop", "raise"):
            # a lost run stopped by the health checks: the status card says so, as it says a target's stop
            how = "**stopped**" if event.data["action"] == "stop" else "**TrainingHealthError raised**"
            text = f"step {event.step}: {how} ({event.kind}): {event.message}"
            self.writer.add_text("forecast/status", text, event.step)
        if isinstance(event.score, (int, float)) and math.isfinite(event.score):
            self.writer.add_scalar(f"events/{event.kind}_score", float(event.score), event.step)

    def _mark_stop(self, event: Event) -> None:
        warn_only = event.data.get("action") == "warn"
        what = "stop rule met" if warn_only else "**stopped early**"
        self.writer.add_text("forecast/status", f"step {event.step}: {what}: {event.message}", event.step)
        if self._last_band is None or warn_only:  # the bar marks a stop; a run that goes on has none
            return
        lower, upper = self._last_band
        # the loss the run could not reach: its target, or the bar of its sweep (the best run's)
        target = next(
            (
                v
                for v in (event.data.get("target_loss"), self._target, event.data.get("reference"))
                if _finite(v)
            ),
            None,
        )
        low = lower if target is None else min(lower, float(target))
        # Two values at one step: TensorBoard draws them as a vertical bar, the one marker a line chart has.
        for value in (low, upper):
            if not self._line("early_stop", value, event.step):
                self.writer.add_scalar("forecast/early_stop", value, event.step)

    def write_figure(self, snapshot: CurveSnapshot) -> None:
        """The observed curve with the forecast and its band, as image ``forecast/curve`` (on the figure
        worker when ``background_figures``: at most one figure drawn and one waiting, the latest)."""
        if not callable(getattr(self.writer, "add_image", None)):
            return
        if not self.background_figures:
            self._draw(snapshot)
            return
        self._collect(wait=False)  # a failure of an earlier figure is reported here, on the caller's thread
        with self._lock:
            queued, self._next = self._next is not None, snapshot
        if queued:  # a job that has not started yet will draw this one instead
            self.skipped_figures += 1
            return
        job = _FIGURES.submit(self._render_next)
        if job is None:
            with self._lock:
                self._next = None
            self.skipped_figures += 1
            return
        self._figures.append(job)

    def _render_next(self) -> tuple[int, Any] | None:
        with self._lock:
            snapshot, self._next = self._next, None
        if snapshot is None:
            return None
        rgb = _picture(snapshot)
        if _writer_package(self.writer) == "torch":
            # torch's SummaryWriter encodes the PNG in add_image, on the caller's (training) thread: encoded
            # here instead, the caller only appends the summary
            from torch.utils.tensorboard.summary import image

            return snapshot.step, image(self.figure_tag, rgb, dataformats="HWC")
        return snapshot.step, rgb

    def _draw(self, snapshot: CurveSnapshot) -> None:
        self._add_image(snapshot.step, _picture(snapshot))

    def _add_image(self, step: int, image: Any) -> None:
        """``image``: the pixels (height, width, RGB), or an image summary already encoded for the writer."""
        if isinstance(image, np.ndarray):
            self.writer.add_image(self.figure_tag, image, step, dataformats="HWC")
        else:
            self.writer._get_file_writer().add_summary(image, step)

    def _collect(self, wait: bool) -> None:
        """Write the figures the worker has drawn (all of them, waiting, with ``wait``); re-raise a failure.

        The worker only draws: the writer is touched on the caller's thread alone, so that a writer its owner
        closes on that thread (HF's TensorBoard callback at the end of training) is never written to at the
        same time from another."""
        done = [job for job in self._figures if wait or job.done()]
        self._figures = [job for job in self._figures if job not in done]
        for job in done:
            drawn = job.result()
            if drawn is not None:
                self._add_image(*drawn)

    def wait(self) -> None:
        """Wait for the figures being drawn or waiting (re-raising a failure)."""
        self._collect(wait=True)

    def restart(self, step: int, why: str | None = None) -> None:
        """The run went back to ``step`` (a resume from an older checkpoint, in this process or a new one, or
        ``why``: a new run in a folder that held one): what the runs this sink owns hold at ``step`` and after,
        written before now, is hidden in TensorBoard, so that the lines do not fold back on themselves. The
        lines beside the user's run are the sink's; the writer's own run only when the sink's owner made it
        (``close_writer``): a framework's writer is its owner's to purge."""
        self._series.restart(step)
        package = _writer_package(self.writer)
        if self.close_writer and package is not None:
            _restart_marker(self.writer._get_file_writer().add_event, step, package)
        self._last_status = None  # the status is written again at the next forecast
        self.note(
            step,
            f"step {step}: **resumed** after update {step - 1}" if why is None else f"step {step}: **{why}**",
        )

    def note(self, step: int, text: str) -> None:
        """A line of ``forecast/status`` at ``step``: what happened to the run (a resume, a stop overridden)."""
        self.writer.add_text("forecast/status", text, step)

    def flush(self) -> None:
        self._collect(wait=False)
        for w in (self.writer, *self._series.writers.values()):
            fn = getattr(w, "flush", None)
            if callable(fn):
                fn()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.flush()
            for w in self._series.writers.values():
                w.close()
            self._series.writers.clear()
            if self.close_writer:
                self.writer.close()


_FIGURES = Worker("scaleforecast-figures")


def _mark_events(ax: Any, events: list[tuple[int, str, str]]) -> None:
    """Health events as triangles along the top edge at their steps (a spike is mostly above the frame, so
    its marker cannot sit at its loss), red for critical ones, with one legend entry naming the kinds."""
    for severity, color in (("warning", "tab:purple"), ("critical", "tab:red")):
        steps = [step for step, _, sev in events if sev == severity]
        if not steps:
            continue
        counts = Counter(kind for _, kind, sev in events if sev == severity)
        ax.plot(
            steps,
            [0.985] * len(steps),
            ls="",
            marker="v",
            ms=7,
            color=color,
            clip_on=False,
            transform=ax.get_xaxis_transform(),  # x in steps, y in the axes' height
            label=f"{severity} events: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(counts.items())),
        )


def _y_limits(snapshot: CurveSnapshot) -> tuple[float, float]:
    """Frame the part that matters: the early loss is far above the rest, so the top is set by the observed
    curve after its first 10% of steps and by the band; the bottom by the band, the observations and the target.
    """
    obs = snapshot.observed_loss[np.isfinite(snapshot.observed_loss)]
    later = obs[snapshot.observed_steps[np.isfinite(snapshot.observed_loss)] >= 0.1 * snapshot.step]
    tops = [np.max(snapshot.upper)] if snapshot.upper.size else []
    bottoms = [np.min(snapshot.lower)] if snapshot.lower.size else []
    if later.size:
        tops.append(float(np.quantile(later, 0.98)))
    if obs.size:
        bottoms.append(float(obs.min()))
    if snapshot.target is not None:
        bottoms.append(snapshot.target)
        tops.append(snapshot.target)
    if not tops or not bottoms:
        return 0.0, 1.0
    lo, hi = float(min(bottoms)), float(max(tops))
    pad = 0.08 * max(hi - lo, 1e-6 * max(abs(hi), 1.0))
    return lo - pad, hi + pad


def _bullets(head: str, items: list[str]) -> str:
    """``head`` and a markdown list of ``items`` (TensorBoard's text card renders a list only after a blank
    line, one item per line)."""
    return head if not items else head + "\n\n" + "\n".join(f"- {item}" for item in items)


def _shown(value: Any) -> Any:
    """An event's detail as a reader wants it: a float to 6 significant digits, anything else as it is."""
    return f"{value:.6g}" if isinstance(value, float) else value


_SETTLED = False


def _settle_heap() -> None:
    """One full collection per process, before training starts, where it stalls nothing. A process that has
    imported its framework has made no full collection since: the next one comes once the objects kept since
    then outnumber a quarter of those counted at the last one, and the figures' survivors (matplotlib's caches)
    brought it mid-run, on the figure worker, holding the GIL 200-600 ms (a stall of the training thread, once
    a run). After a full collection every object of the process counts, and the next is far off."""
    global _SETTLED
    if not _SETTLED and gc.isenabled():
        _SETTLED = True
        gc.collect()


@contextlib.contextmanager
def _young_garbage() -> Iterator[None]:
    """The cyclic garbage collector paused while a figure is drawn. The draw makes tens of thousands of objects
    that live as long as the figure: collections during it promote them toward the oldest generation, until a
    full collection walks every object of the process (150-200 ms holding the GIL, a stall of the training
    thread, about every fifth figure). Paused, they die young when the figure is closed, and the next
    collection is a young one (about 10 ms). A collector the program switched off stays off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _picture(snapshot: CurveSnapshot) -> np.ndarray:
    """:func:`draw_snapshot` rendered by :func:`render_rgb`, with the collector paused (:func:`_young_garbage`)."""
    with _young_garbage():
        return render_rgb(draw_snapshot(snapshot))


def render_rgb(fig: Figure) -> np.ndarray:
    """Rasterise ``fig`` on an Agg canvas to a ``uint8`` array of shape (height, width, 3), without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def draw_snapshot(snapshot: CurveSnapshot) -> Figure:
    """A matplotlib figure: observed loss (dots), the law fitted so far, the forecast mean and band to
    ``final_step``, the target, the step the forecast was made at (or of the early stop), with a legend and the
    planned LR on a faint second axis. Uses the non-interactive Agg canvas.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.6), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    if snapshot.lrs is not None and len(snapshot.lrs):
        ax_lr = ax.twinx()
        # a few thousand points draw the same line as a million, in a hundredth of the time
        at = np.unique(np.linspace(0, len(snapshot.lrs) - 1, 4000).astype(np.int64))
        ax_lr.plot(at + 1, np.asarray(snapshot.lrs)[at], color="0.65", lw=1.0, ls="--")
        ax_lr.set_ylabel("planned learning rate (dashed)", color="0.45")
        ax_lr.tick_params(axis="y", colors="0.45")
        ax_lr.set_ylim(bottom=0.0)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_zorder(ax_lr.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.scatter(
        snapshot.observed_steps,
        snapshot.observed_loss,
        s=6,
        color="tab:blue",
        alpha=0.6,
        label="observed loss",
    )
    if snapshot.fit_steps is not None and snapshot.fit_mean is not None:
        ok = np.isfinite(snapshot.fit_mean)
        ax.plot(
            snapshot.fit_steps[ok],
            snapshot.fit_mean[ok],
            color="tab:orange",
            lw=1.2,
            ls="-",
            alpha=0.7,
            label="law fitted so far (the latest losses weigh most)",
        )
    pct = round(100 * snapshot.level)
    if snapshot.steps.size > 1:  # at the last step there is no curve ahead: the final point says it all
        ax.fill_between(
            snapshot.steps,
            snapshot.lower,
            snapshot.upper,
            color="tab:orange",
            alpha=0.25,
            label=f"{pct}% band",
        )
        ax.plot(snapshot.steps, snapshot.mean, color="tab:orange", lw=2.0, label="forecast")
    if snapshot.steps.size:
        ax.errorbar(
            [snapshot.steps[-1]],
            [snapshot.mean[-1]],
            yerr=[[snapshot.mean[-1] - snapshot.lower[-1]], [snapshot.upper[-1] - snapshot.mean[-1]]],
            fmt="o",
            color="tab:red",
            capsize=4,
            label=f"final loss {snapshot.mean[-1]:.4f} [{snapshot.lower[-1]:.4f}, {snapshot.upper[-1]:.4f}]",
        )
    if snapshot.target is not None:
        ax.axhline(
            snapshot.target,
            color="tab:green",
            ls="--",
            lw=1.4,
            label=f"{snapshot.target_label} {snapshot.target:.4g}",
        )
    if snapshot.stop_step is not None:
        ax.axvline(
            snapshot.stop_step,
            color="tab:red",
            ls="-",
            lw=1.6,
            label=f"{snapshot.stop_label} at step {snapshot.stop_step}",
        )
    else:
        ax.axvline(snapshot.step, color="0.3", ls=":", lw=1.0, label=f"forecast made at step {snapshot.step}")
    _mark_events(ax, snapshot.events)
    ax.set_xlim(0, snapshot.final_step * 1.02)
    ax.set_ylim(*_y_limits(snapshot))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    title = snapshot.title or f"step {snapshot.step} of {snapshot.final_step}"
    if snapshot.stop_step is not None:
        title = f"{snapshot.stop_label.upper()} · {title}"
    # wrapped: a title with the fit's step ran past the figure's edges on both sides
    ax.set_title(textwrap.fill(title, 96), fontsize=11)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85)
    if snapshot.notes:
        ax.text(
            0.01,
            0.02,
            "\n".join(snapshot.notes),
            transform=ax.transAxes,
            fontsize=8,
            va="bottom",
            color="0.3",
        )
    return fig
