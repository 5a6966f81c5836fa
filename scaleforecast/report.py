"""``scaleforecast report RUN``: one picture of a run, its fitted law, the forecast and what happened.

The PNG shows the observed loss (raw points and a binned median), the law fitted to the points up to the fit
step, the forecast from there to the end of the schedule with its band, the what-if curves of alternative
schedules (when the schedule-advice module is installed), the detected events, the LR schedule below, and a
small table of the numbers. ``--html`` also writes a self-contained page (the PNG inlined) with the same table.
matplotlib is imported inside the drawing functions only.
"""

from __future__ import annotations

import argparse
import base64
import html
import io as _io
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scaleforecast.advice import ScheduleAdvisor, candidate_schedules
from scaleforecast.detectors import HealthMonitor
from scaleforecast.events import SEVERITY_RANK, Event, event_level
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.observed import ObservedFinal, observed_final
from scaleforecast.results import Forecast
from scaleforecast.run_args import (
    SCHEDULE_HELP,
    add_run_arguments,
    emit_notes,
    level_arg,
    nonnegative_int,
    run_from_args,
)
from scaleforecast.runs import RunData
from scaleforecast.safe_write import write_bytes, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["ReportData", "build_report", "draw_report", "fit_run", "report_html"]

EPILOG = """\
examples:
  scaleforecast report run.csv --lr-file run.lr.npy -o run.png
  scaleforecast report lightning_logs/version_3 --html run.html
  scaleforecast report megatron/tensorboard --loss "lm loss" --schedule wsd:peak=3e-4,warmup=2000,total=100000,cooldown=0.2
  scaleforecast report run.csv --lr-file run.lr.npy --until-step 5000    # as it looked at step 5000
"""


@dataclass
class ReportData:
    """Everything the picture and the page show, computed once (no drawing here)."""

    run: RunData
    forecaster: OnlineForecaster
    forecast: Forecast
    curve: Forecast
    fit_step: int
    events: list[Event] = field(default_factory=list)
    what_if: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    observed: ObservedFinal | None = None

    @property
    def observed_final(self) -> float | None:
        """The observed loss at the final step (see :mod:`scaleforecast.observed`), when the run got there."""
        return None if self.observed is None else self.observed.value

    @property
    def total(self) -> int:
        return len(self.forecaster.schedule)  # type: ignore[arg-type]

    def table(self) -> list[tuple[str, str]]:
        """The numbers, as (label, value) rows."""
        run, fc = self.run, self.forecast
        pct = round(100 * fc.level)
        rows = [
            ("run", run.name),
            ("loss", f"{run.loss_name} ({len(run.steps)} points, {run.n_nonfinite} non-finite)"),
            ("LR", _lr_text(run)),
            (
                "fitted on",
                f"steps <= {self.fit_step} ({100 * self.fit_step / self.total:.0f}% of {self.total})",
            ),
        ]
        final = fc.final
        if final is not None:
            rows.append(
                (
                    f"final loss @ {fc.final_step}",
                    f"{final.loss:.4f}  [{final.lower:.4f}, {final.upper:.4f}] {pct}%",
                )
            )
        else:
            rows.append(("final loss", f"no forecast ({fc.status.value})"))
        obs = self.observed
        if obs is not None:
            rows.append((f"observed final @ {obs.step}", obs.text()))
            if final is not None:
                inside = "inside" if final.lower <= obs.value <= final.upper else "outside"
                err = (
                    f"{100 * (final.loss - obs.value) / abs(obs.value):+.2f}%"
                    if obs.value != 0
                    else f"{final.loss - obs.value:+.4g} (absolute: the observed loss is 0)"
                )
                # a noisy end is a caveat only for an error of the size of its uncertainty (its note says how big)
                if obs.note is not None and not abs(final.loss - obs.value) > 2.0 * obs.std:
                    err += ", within the observed value's own uncertainty"
                rows.append(("forecast error", f"{err} ({inside} the band)"))
        if fc.params is not None:
            p = fc.params
            rows.append(("law", f"L0={p.L0:.4g} A={p.A:.3g} alpha={p.alpha:.3g} C={p.C:.3g}"))
        rows.append(("fit status", f"{fc.status.value} ({fc.n_points} points, law {fc.law})"))
        for label, lrs, mean in self.what_if:
            rows.append((f"what-if: {label}"[:40], f"{mean[-1]:.4f} at step {len(lrs)}"))
        rows.append(("events", _events_text(self.events)))
        return rows

    def notes(self) -> list[str]:
        """Notes about the comparison itself (an observed final loss that the log cannot pin down)."""
        return [] if self.observed is None or self.observed.note is None else [self.observed.note]

    def to_json(self) -> dict[str, Any]:
        """The report's numbers as one JSON-safe object (``--json``)."""
        out = self.forecast.to_cli_json()
        out.update(
            run=self.run.source,
            loss_name=self.run.loss_name,
            lr_source=None if self.run.lr is None else self.run.lr.source,
            lr_max_error=None if self.run.lr is None else self.run.lr.max_error,
            lr_trusted=None if self.run.lr is None else self.run.lr.trusted,
            fit_step=self.fit_step,
            observed_final=self.observed_final,
            observed_final_std=None
            if self.observed is None or not math.isfinite(self.observed.std)
            else self.observed.std,
            observed_final_points=None if self.observed is None else self.observed.n_points,
            events=[e.model_dump(mode="json") for e in self.events],
            what_if=[
                {"label": lab, "final_step": len(lrs), "loss": float(m[-1])} for lab, lrs, m in self.what_if
            ],
            data_warnings=list(self.run.warnings) + self.notes(),
        )
        return out


def _lr_text(run: RunData) -> str:
    if run.lr is None:
        return "none"
    text = {"fit": "rebuilt", "schedule": "given"}.get(run.lr.source.split(":", 1)[0], run.lr.source)
    if run.lr.schedule is not None:
        text = f"{text}: {run.lr.schedule.describe()}"
    if run.lr.max_error is not None and run.lr.source != "logged" and len(run.lr_steps):
        text += f" (max err {100 * run.lr.max_error:.1f}% of peak)"
    if not run.lr.trusted:
        text += " UNTRUSTED"
    return text


def _events_text(events: list[Event]) -> str:
    if not events:
        return "none"
    kinds: dict[str, int] = {}
    for e in events:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items())


def fit_run(
    run: RunData, until: int | None = None, config: ForecasterConfig | None = None
) -> OnlineForecaster:
    """An :class:`OnlineForecaster` on the run's LR, fed the observations at steps <= ``until`` and fitted."""
    if run.lrs is None:
        raise ValueError(f"{run.source}: no LR for this run; pass --schedule SPEC or --lr-file")
    fc = OnlineForecaster(run.lrs, config or ForecasterConfig())
    part = run if until is None else run.until(until)
    if not len(part.steps):
        raise ValueError(f"{run.source}: no observations at steps <= {until}")
    part.feed(fc)
    fc.refit()
    return fc


def _by_importance(events: list[Event]) -> list[Event]:
    """Critical events first, then warnings, then the rest, each by step: the panel shows only the first few, and
    a run that went NaN must not have it hidden behind its spikes."""
    return sorted(events, key=lambda e: (-SEVERITY_RANK[e.severity], e.step))


def detect_events(run: RunData, fc: OnlineForecaster) -> list[Event]:
    """Health events over the whole run from the detectors (non-finite, spikes, drift, stagnation), judged
    against the law fitted here, debounced as in a live run. A failing detector is skipped: a report is still
    useful without it."""
    usable = fc.latest is not None and fc.latest.ok
    # The detectors ask for the law at every refit of their window: tabulate it once.
    table = fc.predict(np.arange(1, (fc.total_steps or run.last_step) + 1)) if usable else None
    lrs = fc.schedule

    def law(s: np.ndarray) -> np.ndarray:
        return table[np.asarray(s, dtype=np.int64) - 1]  # type: ignore[index]

    def lr_of(s: np.ndarray) -> np.ndarray | None:
        return None if lrs is None else lrs[np.asarray(s, dtype=np.int64) - 1]

    try:
        monitor = HealthMonitor()
        return sorted(
            monitor.update(run.steps, run.losses, law=law if usable else None, lr_of=lr_of),
            key=lambda e: e.step,
        )
    except Exception as err:
        print(f"scaleforecast report: health checks skipped ({type(err).__name__}: {err})", file=sys.stderr)
        return []


def what_if_schedules(
    fc: OnlineForecaster, step: int, top: int = 3
) -> tuple[list[tuple[str, np.ndarray]], list[Event]]:
    """The best alternative schedules from the schedule advisor.

    Returns up to ``top`` ``(label, lrs)`` pairs, best predicted gain first (they keep the run's past LR and
    change only what is left), and the advisor's events (significant advice, flags on the plan). A candidate that
    is the plan itself (a WSD run's own cooldown) is no alternative, and is left out.
    """
    try:
        advisor = ScheduleAdvisor()
        result = advisor.evaluate(fc)
        if result is None or fc.schedule is None:
            return [], []
        events = list(advisor.events(result))
        plan = np.asarray(fc.schedule, dtype=float)
        tails = {
            name: np.asarray(lrs, dtype=float)
            for name, lrs in candidate_schedules(plan, step).items()
            if not np.allclose(lrs, plan, rtol=1e-6, atol=0.0)
        }
        ranked = sorted((c for c in result.candidates if c.name in tails), key=lambda c: -c.gain)
        return [(c.name, tails[c.name]) for c in ranked[:top]], events
    except Exception as err:
        print(f"scaleforecast report: what-if schedules skipped ({err})", file=sys.stderr)
        return [], []


def build_report(
    run: RunData, until: int | None = None, level: float = 0.8, points: int = 400, advice: bool = True
) -> ReportData:
    """Fit the run (up to ``until``), forecast to the end of its schedule on a grid, and collect events."""
    fc = fit_run(run, until, ForecasterConfig(level=level))
    forecast = fc.forecast()
    total = fc.total_steps or run.last_step
    first = int(run.steps[0])
    grid = np.unique(
        np.r_[np.geomspace(max(first, 1), total, points // 2), np.linspace(first, total, points)]
    )
    grid = np.unique(np.clip(grid.round().astype(np.int64), 1, total))
    curve = fc.forecast(steps=grid)
    fit_step = fc.last_step
    what_if = []
    advice_events: list[Event] = []
    if advice and forecast.ok:
        schedules, advice_events = what_if_schedules(fc, fit_step)
        if run.lr is not None and run.lr.assumed_after is not None:
            # the plan past the last logged LR is a guess: the what-ifs stand on their own, advice on the guess
            # (a WSD run before its cooldown, rebuilt as constant, "ends at a high LR") would not
            advice_events = []
        for label, lrs in schedules:
            g = _what_if_grid(fit_step, len(lrs), points // 2)
            try:
                what_if.append((label, lrs, fc.predict(g, schedule=lrs)))
            except ValueError:
                continue
    return ReportData(
        run=run,
        forecaster=fc,
        forecast=forecast,
        curve=curve,
        fit_step=fit_step,
        events=_by_importance(detect_events(run, fc) + advice_events),
        what_if=what_if,
        observed=observed_final(run),
    )


def _what_if_grid(start: int, total: int, points: int) -> np.ndarray:
    """Where the what-if curves are drawn: from the fit step (they share the past) to their end."""
    return np.unique(np.linspace(max(start, 1), total, max(points, 2)).round().astype(np.int64))


def _binned_median(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    # About five points a bin, at most 200 bins: smooth enough to read through single-batch noise.
    bins = max(20, min(200, len(steps) // 5))
    if len(steps) <= bins:
        return steps.astype(float), values
    edges = np.linspace(steps[0], steps[-1] + 1, bins + 1)
    idx = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, bins - 1)
    xs, ys = [], []
    for b in np.unique(idx):
        sel = idx == b
        xs.append(float(np.median(steps[sel])))
        ys.append(float(np.median(values[sel])))
    return np.asarray(xs), np.asarray(ys)


def _y_limits(data: ReportData) -> tuple[float, float]:
    run = data.run
    ok = np.isfinite(run.losses)
    # the early loss is far above the rest, and the fitted curve says nothing in the warm-up (the law is fitted
    # after it): the frame is set by what comes after the first tenth of the run and after the warm-up
    lrs = data.forecaster.schedule
    start = max(0.1 * data.total, int(np.argmax(lrs)) + 1 if lrs is not None and len(lrs) else 0)
    later = run.losses[ok & (run.steps >= start)]
    if not later.size:
        later = run.losses[ok]
    tail = [p for p in data.curve.points if p.step >= start]
    hi = max([float(np.quantile(later, 0.99))] + [p.upper for p in tail]) if later.size else 1.0
    lo = min([float(later.min()) if later.size else hi] + [p.lower for p in tail])
    for _, _, m in data.what_if:
        lo = min(lo, float(np.nanmin(m)))
    pad = 0.06 * max(hi - lo, 1e-6)
    return lo - pad, hi + pad


_SEVERITY_COLOR = {"info": "tab:gray", "warning": "tab:orange", "critical": "tab:red"}


def draw_report(data: ReportData, width: float = 14.0, height: float = 8.0, dpi: int = 100) -> Figure:
    """The report figure (``width`` x ``height`` inches at ``dpi``): loss + forecast, LR, numbers and events."""
    from matplotlib.figure import Figure

    run, fc = data.run, data.forecast
    total = data.total
    fig = Figure(figsize=(width, height), dpi=dpi)
    gs = fig.add_gridspec(2, 2, width_ratios=[2.6, 1.0], height_ratios=[3.0, 1.0], hspace=0.08, wspace=0.04)
    ax = fig.add_subplot(gs[0, 0])
    ax_lr = fig.add_subplot(gs[1, 0], sharex=ax)
    ax_tab = fig.add_subplot(gs[:, 1])
    pct = round(100 * fc.level)

    seen = run.steps <= data.fit_step
    ok = np.isfinite(run.losses)
    many = len(run.steps) > 3000
    # Sparse logs (eval losses) need visible dots drawn over the law; dense noisy logs need faint ones.
    dot, alpha, z = (2, 0.25, 1) if many else (10 if len(run.steps) > 1000 else 16, 0.6, 3)
    ax.scatter(
        run.steps[seen & ok],
        run.losses[seen & ok],
        s=dot,
        color="tab:blue",
        alpha=alpha,
        lw=0,
        zorder=z,
        label="observed (fitted)",
        rasterized=True,
    )
    if (~seen & ok).any():
        ax.scatter(
            run.steps[~seen & ok],
            run.losses[~seen & ok],
            s=dot,
            color="0.45",
            alpha=alpha,
            lw=0,
            zorder=z,
            label="observed (held out)",
            rasterized=True,
        )
    if many or len(run.steps) > 300:
        bx, by = _binned_median(run.steps, run.losses)
        ax.plot(bx, by, color="navy", lw=1.0, alpha=0.8, label="observed (binned median)")

    pts = data.curve.points
    if pts:
        s = np.array([p.step for p in pts])
        m = np.array([p.loss for p in pts])
        lo = np.array([p.lower for p in pts])
        hi = np.array([p.upper for p in pts])
        past = s <= data.fit_step
        ax.plot(s[past], m[past], color="tab:orange", lw=2.2, label=f"fitted law ({fc.law})")
        fut = s >= data.fit_step
        if fut.any():
            ax.fill_between(
                s[fut], lo[fut], hi[fut], color="tab:orange", alpha=0.22, lw=0, label=f"{pct}% band"
            )
            ax.plot(s[fut], m[fut], color="tab:orange", lw=2.2, ls="--", label="forecast")
    final = fc.final
    if final is not None:
        ax.errorbar(
            [final.step],
            [final.loss],
            yerr=[[final.loss - final.lower], [final.upper - final.loss]],
            fmt="o",
            color="tab:red",
            capsize=5,
            zorder=5,
            label=f"final {final.loss:.4f} [{final.lower:.4f}, {final.upper:.4f}]",
        )
    if data.observed_final is not None:
        obs = data.observed
        assert obs is not None
        ax.errorbar(
            [obs.step],
            [obs.value],
            yerr=[[obs.std], [obs.std]] if math.isfinite(obs.std) else None,
            marker="*",
            ms=13,
            color="k",
            ls="none",
            capsize=4,
            zorder=6,
            label=f"observed final {obs.value:.4f}" + (f" ± {obs.std:.2g}" if math.isfinite(obs.std) else ""),
        )
    colors = ["tab:green", "tab:purple", "tab:brown", "tab:pink"]
    for (label, lrs, mean), color in zip(data.what_if, colors, strict=False):
        g = _what_if_grid(data.fit_step, len(lrs), len(mean))
        ax.plot(g, mean, color=color, lw=1.6, ls="-.", label=f"what-if: {label} -> {mean[-1]:.4f}")
        ax_lr.plot(np.arange(1, len(lrs) + 1), lrs, color=color, lw=1.0, ls="-.")
    if data.fit_step < total:
        ax.axvline(data.fit_step, color="0.3", ls=":", lw=1.2)
        ax.text(
            data.fit_step,
            0.01,
            f" fitted up to step {data.fit_step}",
            transform=ax.get_xaxis_transform(),
            va="bottom",
            ha="left",
            fontsize=9,
            color="0.3",
        )
    y0, y1 = _y_limits(data)
    few = len(data.events) <= 12
    for e in data.events:
        color = _SEVERITY_COLOR.get(e.severity, "tab:red")
        if few:
            ax.axvline(e.step, color=color, alpha=0.35, lw=0.8)
        y = e.data.get("loss") if isinstance(e.data.get("loss"), (int, float)) else None
        yy = min(float(y), y1) if y is not None and math.isfinite(float(y)) else y1
        ax.plot(
            [e.step],
            [yy],
            marker="v",
            color=color,
            ms=8 if few else 5,
            alpha=1 if few else 0.6,
            ls="none",
            zorder=7,
        )
    if data.events:
        ax.plot([], [], marker="v", color="tab:red", ls="none", label=f"events ({len(data.events)})")
    ax.set_ylim(y0, y1)
    ax.set_xlim(0, total * 1.01)
    ax.set_ylabel(run.loss_name)
    ax.grid(alpha=0.3)
    # Loss curves fall, so the lower left is usually free; "best" searches, affordable for a few thousand points.
    ax.legend(loc="best" if len(run.steps) <= 5000 else "lower left", fontsize=8.5, framealpha=0.9)
    name = run.name if len(run.name) <= 48 else run.name[:45] + "..."
    title = f"{name}: "
    title += (
        f"forecast final loss {final.loss:.4f} [{final.lower:.4f}, {final.upper:.4f}] at step {total}"
        if final is not None
        else f"no forecast ({fc.status.value})"
    )
    ax.set_title(title, fontsize=12, loc="left")
    ax.tick_params(labelbottom=False)

    if run.lrs is not None:
        ax_lr.plot(np.arange(1, len(run.lrs) + 1), run.lrs, color="0.25", lw=1.3, label="LR used for the fit")
    if 0 < len(run.lr_steps) <= 2000:
        ax_lr.plot(run.lr_steps, run.lr_values, ".", color="tab:blue", ms=3, alpha=0.6, label="LR as logged")
    ax_lr.axvline(data.fit_step, color="0.3", ls=":", lw=1.2)
    ax_lr.set_ylim(bottom=0)
    ax_lr.set_xlabel("optimizer step")
    ax_lr.set_ylabel("learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_lr.grid(alpha=0.3)
    ax_lr.legend(loc="upper right", fontsize=8)

    ax_tab.axis("off")
    rows = data.table()
    y = 0.98
    ax_tab.text(0.03, y, "numbers", fontsize=12, weight="bold", va="top", transform=ax_tab.transAxes)
    y -= 0.05
    for label, value in rows:
        ax_tab.text(0.03, y, label, fontsize=9, color="0.35", va="top", transform=ax_tab.transAxes)
        wrapped = _wrap(value, 38)
        ax_tab.text(
            0.03, y - 0.024, wrapped, fontsize=9.5, va="top", family="monospace", transform=ax_tab.transAxes
        )
        y -= 0.024 * (wrapped.count("\n") + 1) + 0.036
    notes = list(dict.fromkeys(fc.warnings + run.warnings + data.notes()))[:4]
    if (data.events or notes) and y > 0.1:
        ax_tab.text(
            0.03, y, "events and notes", fontsize=11, weight="bold", va="top", transform=ax_tab.transAxes
        )
        y -= 0.04
        for e in data.events[:6]:
            ax_tab.text(
                0.03,
                y,
                _wrap(f"{e.step}: {e.kind} ({_level(e)})", 44),
                fontsize=8.5,
                color=_SEVERITY_COLOR.get(e.severity, "k"),
                va="top",
                transform=ax_tab.transAxes,
            )
            y -= 0.028
        if len(data.events) > 6:
            ax_tab.text(
                0.03,
                y,
                f"... and {len(data.events) - 6} more",
                fontsize=8.5,
                va="top",
                transform=ax_tab.transAxes,
            )
            y -= 0.028
        for n in notes:
            if y < 0.04:
                break
            w = _wrap(n, 52)
            ax_tab.text(0.03, y, w, fontsize=7.5, color="0.3", va="top", transform=ax_tab.transAxes)
            y -= 0.021 * (w.count("\n") + 1) + 0.01
    fig.subplots_adjust(left=0.06, right=0.99, top=0.95, bottom=0.07)
    return fig


def _wrap(text: str, width: int) -> str:
    words: list[str] = []
    for w in text.split(" "):
        words += [w[i : i + width] for i in range(0, max(len(w), 1), width)]
    lines, cur = [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    return "\n".join(lines[:4])


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes on an Agg canvas (no pyplot, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = _io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _level(event: Event) -> str:
    """The event's severity, but information where the console and the logger say it so (a single spike)."""
    return "info" if event_level(event) == logging.INFO else event.severity


def report_html(data: ReportData, png: bytes) -> str:
    """A self-contained HTML page: the PNG inlined as a data URI, the numbers table, events and notes."""
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in data.table())
    events = "\n".join(
        f"<li class='{html.escape(e.severity)}'>step {e.step}: <b>{html.escape(e.kind)}</b> "
        f"({_level(e)}): {html.escape(e.message)}</li>"
        for e in data.events
    )
    notes = "\n".join(
        f"<li>{html.escape(n)}</li>"
        for n in dict.fromkeys(data.forecast.warnings + data.run.warnings + data.notes())
    )
    img = base64.b64encode(png).decode("ascii")
    title = html.escape(f"scaleforecast report: {data.run.name}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ text-align: left; padding: 0.25em 0.8em; border-bottom: 1px solid #eee; }}
th {{ color: #555; font-weight: normal; }} td {{ font-family: ui-monospace, monospace; }}
li.critical {{ color: #b00; }} li.warning {{ color: #a60; }}
</style></head><body>
<h1>{title}</h1>
<img alt="loss curve, fitted law and forecast" src="data:image/png;base64,{img}">
<h2>Numbers</h2><table>
{rows}
</table>
<h2>Events</h2><ul>{events or "<li>none</li>"}</ul>
<h2>Notes</h2><ul>{notes or "<li>none</li>"}</ul>
</body></html>
"""


# ------------------------------------------------------------------------------------------------ CLI
def add_parser(subparsers: Any) -> None:
    """Register ``scaleforecast report``."""
    p = subparsers.add_parser(
        "report",
        help="picture of a run: observed curve, fitted law, forecast with band, events, numbers",
        description="Draw a run's loss curve, the fitted law and its forecast to the end of the schedule (PNG, "
        "optionally a self-contained HTML page).",
        epilog=EPILOG + "\n" + SCHEDULE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(p)
    p.add_argument(
        "-o", "--output", metavar="PNG", help="where to write the PNG (default: <run name>.report.png)"
    )
    p.add_argument("--html", metavar="HTML", help="also write a self-contained HTML page here")
    p.add_argument(
        "--until-step",
        type=nonnegative_int,
        metavar="N",
        help="fit only the points at steps <= N (as at step N)",
    )
    p.add_argument("--level", type=level_arg, default=0.8, help="band coverage (default 0.8)")
    p.add_argument(
        "--size", type=_inches, nargs=2, default=(14.0, 8.0), metavar=("W", "H"), help="inches (14 8)"
    )
    p.add_argument(
        "--dpi", type=_dpi, default=100, help=f"pixels per inch, {DPI_RANGE[0]}..{DPI_RANGE[1]} (default 100)"
    )
    p.add_argument("--json", action="store_true", help="print the report's numbers as one JSON object")
    p.set_defaults(func=run)


DPI_RANGE = (10, 600)
MAX_PIXELS = 20_000  # per side


def _inches(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.5 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a size in inches from 0.5 to 100, got {text!r}")
    return value


def _dpi(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not DPI_RANGE[0] <= value <= DPI_RANGE[1]:
        raise argparse.ArgumentTypeError(
            f"must be an integer from {DPI_RANGE[0]} to {DPI_RANGE[1]}, got {text!r}"
        )
    return value


def run(args: argparse.Namespace) -> int:
    """``scaleforecast report``: read, fit, draw, write; prints the numbers (or JSON)."""
    width, height = args.size
    if max(width, height) * args.dpi > MAX_PIXELS:
        raise ValueError(
            f"--size {width:g} {height:g} at --dpi {args.dpi} is more than {MAX_PIXELS} pixels a side"
        )
    data_run = run_from_args(args, until_step=args.until_step)
    data = build_report(data_run, until=args.until_step, level=args.level)
    emit_notes(data.notes())
    fig = draw_report(data, width=width, height=height, dpi=args.dpi)
    png = png_bytes(fig)
    out = Path(args.output) if args.output else Path(f"{data_run.name}.report.png")
    write_bytes(out, png)
    if args.html:
        write_text(Path(args.html), report_html(data, png))
    if args.json:
        obj = data.to_json()
        obj["png"] = str(out)
        if args.html:
            obj["html"] = args.html
        print(json.dumps(obj, default=_json_default))
    else:
        width = max(len(k) for k, _ in data.table())
        for k, v in data.table():
            print(f"{k:>{width}}  {v}")
        print(f"{'picture':>{width}}  {out}" + (f" and {args.html}" if args.html else ""))
    return 0


def _json_default(obj: object) -> object:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
