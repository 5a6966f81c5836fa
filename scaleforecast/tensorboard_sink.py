"""TensorBoard output for the forecast: scalars, a Margin chart of the band, figures and text events.

:class:`TensorBoardSink` implements :class:`scaleforecast.sinks.Sink` over any ``SummaryWriter``-like object
(``torch.utils.tensorboard.SummaryWriter``, ``tensorboardX``, or Lightning's ``TensorBoardLogger.experiment``),
so the forecast lands in the same run directory as the user's own curves. Tags:

- ``forecast/final_loss``, ``forecast/lower``, ``forecast/upper``, ``forecast/std``: the forecast of the loss
  at the schedule's last step and its central band (Margin chart "scaleforecast / final loss forecast");
- ``law/L0``, ``law/A``, ``law/alpha``, ``law/C``: the fitted law;
- ``forecast/fit_status`` (0 ok, 1 annealing_unidentified, 2 insufficient_data, 3 failed) and text
  ``forecast/status`` whenever the status changes;
- ``forecast/curve``: an image of the observed curve, the forecast curve and its band to the end of the
  schedule;
- ``events/<kind>``: text for alerts and decisions, with ``events/<kind>_score`` when the event has a score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from scaleforecast.results import FitStatus, Forecast
from scaleforecast.sinks import CurveSnapshot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from scaleforecast.events import Event

__all__ = [
    "ADVICE_CHARTS",
    "STATUS_CODES",
    "TensorBoardSink",
    "draw_snapshot",
    "forecast_layout",
    "render_rgb",
]

STATUS_CODES: dict[FitStatus, int] = {
    FitStatus.OK: 0,
    FitStatus.ANNEALING_UNIDENTIFIED: 1,
    FitStatus.INSUFFICIENT_DATA: 2,
    FitStatus.FAILED: 3,
}
CATEGORY = "scaleforecast"
ADVICE_CHARTS: dict[str, list[Any]] = {
    "schedule advice: final loss, planned vs best": [
        "Multiline",
        ["advice/planned_final", "advice/best_final"],
    ],
}


def forecast_layout(extra: Mapping[str, list[Any]] | None = None) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: ``{category: {chart title: [chart kind, tags]}}`` as ``add_custom_scalars``
    takes it. The Margin chart draws ``forecast/final_loss`` with the band ``[lower, upper]``; ``extra`` adds
    charts (e.g. ``{"schedule advice gain": ["Multiline", ["advice/gain"]]}``) to the same category.
    """
    charts: dict[str, list[Any]] = {
        "final loss forecast (band)": ["Margin", ["forecast/final_loss", "forecast/lower", "forecast/upper"]],
        "observed loss vs forecast": ["Multiline", ["forecast/observed", "forecast/final_loss"]],
    }
    charts.update(extra or {})
    return {CATEGORY: charts}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class TensorBoardSink:
    """Write forecasts, events and figures to a ``SummaryWriter``-like ``writer`` (see the module docstring).

    The writer needs ``add_scalar`` and ``add_text``; ``add_image`` and ``add_custom_scalars`` are used when
    present. ``layout_extra`` adds charts to the custom-scalars layout, which is written once, on the first
    forecast. ``close_writer``: close the writer in :meth:`close` (only for writers the sink's owner created).
    """

    def __init__(
        self,
        writer: Any,
        *,
        layout_extra: Mapping[str, list[Any]] | None = None,
        close_writer: bool = False,
        figure_tag: str = "forecast/curve",
    ) -> None:
        for method in ("add_scalar", "add_text"):
            if not callable(getattr(writer, method, None)):
                raise TypeError(f"{type(writer).__name__} is not SummaryWriter-like: it has no {method}()")
        self.writer = writer
        self.layout_extra = dict(layout_extra or {})
        self.close_writer = close_writer
        self.figure_tag = figure_tag
        self._layout_written = False
        self._last_status: FitStatus | None = None

    def _write_layout(self) -> None:
        if self._layout_written:
            return
        self._layout_written = True
        add = getattr(self.writer, "add_custom_scalars", None)
        if callable(add):
            add(forecast_layout(self.layout_extra))

    def write_forecast(self, step: int, forecast: Forecast, extras: Mapping[str, float]) -> None:
        """Scalars of the final-step forecast, the law, the status code and ``extras`` at ``step``."""
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
        if forecast.params is not None:
            p = forecast.params
            for name, value in (("L0", p.L0), ("A", p.A), ("alpha", p.alpha), ("C", p.C), *p.extra.items()):
                if _finite(value):
                    w.add_scalar(f"law/{name}", value, step)
        w.add_scalar("forecast/fit_status", STATUS_CODES.get(forecast.status, 3), step)
        w.add_scalar("forecast/n_points", forecast.n_points, step)
        if forecast.status != self._last_status:
            self._last_status = forecast.status
            text = f"fit status **{forecast.status.value}** at step {step} ({forecast.n_points} points)"
            if forecast.warnings:
                text += "  \n" + "  \n".join(f"- {msg}" for msg in forecast.warnings)
            w.add_text("forecast/status", text, step)
        self.write_scalars(step, extras)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Each finite value under its tag (a bare name goes under ``forecast/``)."""
        for tag, value in scalars.items():
            if value is not None and _finite(float(value)):
                self.writer.add_scalar(tag if "/" in tag else f"forecast/{tag}", float(value), step)

    def write_event(self, event: Event) -> None:
        """Text ``events/<kind>`` (severity, message and details) and its score as a scalar."""
        lines = [f"**{event.severity.upper()}** {event.kind} at step {event.step}: {event.message}"]
        lines += [f"- {key}: {value}" for key, value in event.data.items()]
        self.writer.add_text(f"events/{event.kind}", "  \n".join(lines), event.step)
        if isinstance(event.score, (int, float)) and math.isfinite(event.score):
            self.writer.add_scalar(f"events/{event.kind}_score", float(event.score), event.step)

    def write_figure(self, snapshot: CurveSnapshot) -> None:
        """The observed curve with the forecast and its band, as image ``forecast/curve``."""
        add = getattr(self.writer, "add_image", None)
        if not callable(add):
            return
        add(self.figure_tag, render_rgb(draw_snapshot(snapshot)), snapshot.step, dataformats="HWC")

    def flush(self) -> None:
        fn = getattr(self.writer, "flush", None)
        if callable(fn):
            fn()

    def close(self) -> None:
        self.flush()
        if self.close_writer:
            self.writer.close()


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


def render_rgb(fig: Figure) -> np.ndarray:
    """Rasterise ``fig`` on an Agg canvas to a ``uint8`` array of shape (height, width, 3), without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def draw_snapshot(snapshot: CurveSnapshot) -> Figure:
    """A matplotlib figure: observed loss (dots), forecast mean (line) and band to ``final_step``, the target and
    the current step, with the planned LR on a faint second axis. Uses the non-interactive Agg canvas.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.6), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    if snapshot.lrs is not None and len(snapshot.lrs):
        ax_lr = ax.twinx()
        ax_lr.plot(np.arange(1, len(snapshot.lrs) + 1), snapshot.lrs, color="0.65", lw=1.0, ls="--")
        ax_lr.set_ylabel("learning rate (dashed)", color="0.45")
        ax_lr.tick_params(axis="y", colors="0.45")
        ax_lr.set_ylim(bottom=0.0)
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_zorder(ax_lr.get_zorder() + 1)
        ax.patch.set_visible(False)
    ax.scatter(
        snapshot.observed_steps, snapshot.observed_loss, s=6, color="tab:blue", alpha=0.6, label="observed"
    )
    if snapshot.fit_steps is not None and snapshot.fit_mean is not None:
        ok = np.isfinite(snapshot.fit_mean)
        ax.plot(snapshot.fit_steps[ok], snapshot.fit_mean[ok], color="tab:orange", lw=1.2, ls="-", alpha=0.7)
    pct = round(100 * snapshot.level)
    if snapshot.steps.size:
        ax.fill_between(
            snapshot.steps,
            snapshot.lower,
            snapshot.upper,
            color="tab:orange",
            alpha=0.25,
            label=f"{pct}% band",
        )
        ax.plot(snapshot.steps, snapshot.mean, color="tab:orange", lw=2.0, label="forecast")
        ax.errorbar(
            [snapshot.steps[-1]],
            [snapshot.mean[-1]],
            yerr=[[snapshot.mean[-1] - snapshot.lower[-1]], [snapshot.upper[-1] - snapshot.mean[-1]]],
            fmt="o",
            color="tab:red",
            capsize=4,
            label=f"final {snapshot.mean[-1]:.4f}",
        )
    if snapshot.target is not None:
        ax.axhline(snapshot.target, color="tab:green", ls="--", lw=1.2, label=f"target {snapshot.target:g}")
    ax.axvline(snapshot.step, color="0.3", ls=":", lw=1.0)
    ax.set_xlim(0, snapshot.final_step * 1.02)
    ax.set_ylim(*_y_limits(snapshot))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.set_title(snapshot.title or f"step {snapshot.step} of {snapshot.final_step}", fontsize=11)
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
