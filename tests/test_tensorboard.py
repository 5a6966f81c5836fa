"""TensorBoardSink: real event files written with torch's SummaryWriter, read back with TensorBoard's reader."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorboard")
torch = pytest.importorskip("torch")

from scaleforecast.integrations.tensorboard import (  # noqa: E402
    COMPARE_TAG,
    TensorBoardSink,
    draw_snapshot,
    forecast_layout,
)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer  # noqa: E402
from tensorboard.plugins.custom_scalar import layout_pb2  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from scaleforecast.events import Event  # noqa: E402
from scaleforecast.results import FitStatus, Forecast, ForecastPoint, LawParams  # noqa: E402
from scaleforecast.sinks import CurveSnapshot, FanoutSink, Sink  # noqa: E402
from scaleforecast.tfevents import find_event_files  # noqa: E402


def _forecast(step: int, loss: float, status: FitStatus = FitStatus.OK) -> Forecast:
    return Forecast(
        law="tissue",
        level=0.8,
        fitted_at_step=step,
        final_step=1000,
        points=[ForecastPoint(step=1000, loss=loss, lower=loss - 0.1, upper=loss + 0.1, std=0.078)],
        params=LawParams(L0=2.0, A=0.5, alpha=0.4, C=3.0, extra={"lam_fast": 0.995, "warmup_hold": 1.0}),
        n_points=step,
        status=status,
        warnings=["[prior] C leans on the prior"] if status is FitStatus.ANNEALING_UNIDENTIFIED else [],
    )


def _snapshot(step: int = 400, stop_step: int | None = None) -> CurveSnapshot:
    total = 1000
    lrs = np.concatenate(
        [np.linspace(1e-4, 1e-3, 50), 1e-3 * (1 + np.cos(np.linspace(0, np.pi, total - 50))) / 2]
    )
    s = np.arange(1, step + 1)
    obs = 2.0 + 3.0 / np.sqrt(s) + 0.02 * np.random.default_rng(0).standard_normal(step)
    fut = np.arange(step, total + 1, 10).astype(float)
    mean = 2.0 + 3.0 / np.sqrt(fut) - 0.05 * (fut / total) ** 2
    width = 0.01 + 0.05 * (fut - step) / total
    return CurveSnapshot(
        step=step,
        final_step=total,
        observed_steps=s.astype(float),
        observed_loss=obs,
        steps=fut,
        mean=mean,
        lower=mean - width,
        upper=mean + width,
        level=0.8,
        target=2.05,
        lrs=np.maximum(lrs, 1e-9),
        fit_steps=s.astype(float),
        fit_mean=2.0 + 3.0 / np.sqrt(s),
        stop_step=stop_step,
    )


def _read(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [
        (e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
        for e in acc.Tensors(f"{tag}/text_summary")
    ]


def _layout(acc: EventAccumulator) -> layout_pb2.Layout:
    event = acc.Tensors("custom_scalars__config__")[0]
    return layout_pb2.Layout.FromString(tensor_util.make_ndarray(event.tensor_proto).item())


def _run_a_stopped_job(logdir: Path) -> None:
    """Three refits toward a target of 2.2, then the stop rule's early stop at step 300."""
    sink = TensorBoardSink(
        SummaryWriter(str(logdir)),
        layout_extra={"advice gain": ["Multiline", ["advice/gain"]]},
        close_writer=True,
    )
    assert isinstance(sink, Sink)
    sink.write_scalars(100, {"forecast/observed": 2.9})
    sink.write_forecast(100, _forecast(100, 2.5, FitStatus.ANNEALING_UNIDENTIFIED), {"forecast/target": 2.2})
    sink.write_scalars(200, {"forecast/observed": 2.7})
    sink.write_forecast(
        200,
        _forecast(200, 2.4),
        {
            "forecast/target": 2.2,
            "forecast/p_miss_target": 0.97,
            "forecast/stop_confidence": 0.98,
            "advice/gain": 0.03,
        },
    )
    sink.write_scalars(300, {"forecast/observed": 2.6, "nan_is_skipped": float("nan")})
    sink.write_forecast(300, _forecast(300, 2.35), {"forecast/target": 2.2})
    sink.write_event(
        Event(
            kind="spike",
            step=250,
            severity="warning",
            score=7.5,
            message="loss spike at step 250: 3.1 vs 2.5",
        )
    )
    sink.write_event(
        Event(
            kind="early_stop",
            step=300,
            severity="critical",
            score=0.99,
            message="forecast final loss 2.35 cannot reach 2.2",
            data={"target_loss": 2.2, "confidence": 0.95, "action": "stop", "reference": 2.2000000000000024},
        )
    )
    sink.write_figure(_snapshot(300, stop_step=300))
    sink.close()


def test_forecast_scalars_law_and_figure_land_in_the_users_run(tmp_path: Path) -> None:
    _run_a_stopped_job(tmp_path)
    acc = _read(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {
        "forecast/final_loss",
        "forecast/lower",
        "forecast/upper",
        "forecast/std",
        "forecast/n_points",
        "forecast/p_miss_target",
        "law/L0",
        "law/A",
        "law/alpha",
        "law/C",
        "advice/gain",
        "events/spike_score",
    } <= scalars
    # the stop's probability is forecast/p_miss_target's; a single-point chart of it would say nothing
    assert not any("nan_is_skipped" in t or "early_stop" in t for t in scalars)
    # the S2 memory and warm-up convention are fixed for a run: no flat card each
    assert {t for t in scalars if t.startswith("law/")} == {"law/L0", "law/A", "law/alpha", "law/C"}
    final = acc.Scalars("forecast/final_loss")
    assert [e.step for e in final] == [100, 200, 300]
    np.testing.assert_allclose([e.value for e in final], [2.5, 2.4, 2.35], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in acc.Scalars("forecast/upper")], [2.6, 2.5, 2.45], rtol=1e-6)
    # the observed loss is a line of its own beside the band (in this run it took the band's colour)
    assert COMPARE_TAG not in scalars
    assert [e.value for e in acc.Scalars("events/spike_score")] == [7.5]
    # the details are a markdown list (after a blank line, one item a line), numbers to 6 digits
    ((_, stop_text),) = _texts(acc, "events/early_stop")
    assert stop_text.endswith(
        "2.2\n\n- target_loss: 2.2\n- confidence: 0.95\n- action: stop\n- reference: 2.2"
    )
    images = acc.Images("forecast/curve")
    assert [i.step for i in images] == [300]
    assert images[0].width >= 600 and images[0].height >= 300


def test_the_comparison_lines_are_runs_named_for_the_legend(tmp_path: Path) -> None:
    # TensorBoard colours and names lines by run: the observed loss, the forecast, the target and the stop each
    # get one; the band keeps the user's run's colour
    _run_a_stopped_job(tmp_path)
    # what TensorBoard's scalar dashboards list: run -> tags
    mux = EventMultiplexer(tensor_size_guidance={"scalars": 0})
    mux.AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    runs = {run: set(tags) for run, tags in mux.PluginRunToTagToContent("scalars").items()}
    beside = {
        "scaleforecast/observed",
        "scaleforecast/forecast",
        "scaleforecast/target",
        "scaleforecast/early_stop",
    }
    assert set(runs) == {".", *beside}
    for run in beside - {"scaleforecast/target"}:
        assert runs[run] == {COMPARE_TAG}, run
    # the level the stop rule stops at is a flat line on its probability's card (alone, the card's axis left
    # the value that stopped the run off the chart), drawn by the target's run: a run of its own held no tag of
    # the Margin chart, whose card then showed TensorBoard's "Missing Tags" error (a run lacking both series)
    assert runs["scaleforecast/target"] == {COMPARE_TAG, "forecast/p_miss_target"}
    assert "forecast/stop_confidence" not in runs["."]
    margin = [t for _, chart in forecast_layout().items() for kind, t in chart.values() if kind == "Margin"]
    assert len(margin) == 1
    series = {tuple(margin[0][i : i + 3]) for i in range(0, len(margin[0]), 3)}
    for run, tags in runs.items():
        # TensorBoard's Margin chart flags a run that holds no series of it (it allows one series missing)
        assert any(set(s) <= tags for s in series), run

    def line(run: str) -> list[tuple[int, float]]:
        return [
            (e.step, round(float(tensor_util.make_ndarray(e.tensor_proto)), 6))
            for e in mux.Tensors(run, COMPARE_TAG)
        ]

    assert line("scaleforecast/observed") == [(100, 2.9), (200, 2.7), (300, 2.6)]
    assert line("scaleforecast/forecast") == [(100, 2.5), (200, 2.4), (300, 2.35)]
    assert line("scaleforecast/target") == [(100, 2.2), (200, 2.2), (300, 2.2)]
    # the stop: a vertical bar at its step, from the target up to the top of the last band
    assert line("scaleforecast/early_stop") == [(300, 2.2), (300, 2.45)]
    # the target moved to its own run: no flat copy of it in the user's run
    assert "forecast/target" not in runs["."]


def test_one_margin_chart_draws_band_observed_target_and_stop(tmp_path: Path) -> None:
    _run_a_stopped_job(tmp_path)
    # the layout is written once, with the runs beside the user's, and TensorBoard merges it across runs
    assert "custom_scalars__config__" not in _read(tmp_path).Tags()["tensors"]
    layout = _layout(_read(tmp_path / "scaleforecast" / "forecast"))
    charts = {c.title: c for cat in layout.category if cat.title == "scaleforecast" for c in cat.chart}
    band = charts["final loss forecast: band, observed, target, early stop"]
    series = [(s.value, s.lower, s.upper) for s in band.margin.series]
    assert series == [
        ("forecast/final_loss", "forecast/lower", "forecast/upper"),
        (COMPARE_TAG, COMPARE_TAG, COMPARE_TAG),
    ]
    assert list(charts["advice gain"].multiline.tag) == ["advice/gain"]


def test_fit_status_is_text_in_words_and_never_a_number(tmp_path: Path) -> None:
    _run_a_stopped_job(tmp_path)
    acc = _read(tmp_path)
    assert not [t for t in acc.Tags()["scalars"] if "status" in t]
    texts = _texts(acc, "forecast/status")
    # written when it changes (unidentified at 100, ok at 200, not again at 300), then at the stop
    assert [step for step, _ in texts] == [100, 200, 300]
    assert "**annealing_unidentified**" in texts[0][1] and "C leans on the prior" in texts[0][1]
    assert "[prior] C leans on the prior" in texts[0][1]
    assert "**ok**" in texts[1][1] and "pinned by the run's own losses" in texts[1][1]
    assert "**stopped early**" in texts[2][1] and "cannot reach 2.2" in texts[2][1]
    stop = _texts(acc, "events/early_stop")
    assert len(stop) == 1 and stop[0][0] == 300 and "target_loss: 2.2" in stop[0][1]
    # the stop rule at work, not a failure of the run (it read CRITICAL, the level of a lost run)
    assert stop[0][1].startswith("**STOP** early_stop at step 300: forecast final loss 2.35")
    # a single spike is information, as the console says it (the text said WARNING); its step is said once
    (spike,) = _texts(acc, "events/spike")
    assert spike[1].startswith("**INFO** spike: loss spike at step 250"), spike


def test_the_status_card_drops_a_note_that_no_longer_holds(tmp_path: Path) -> None:
    """The card was written when the status changed only: a first fit's ``[out_of_shape]`` note stood on it
    for the rest of the run though every later fit (same status) was in shape. A note that comes or goes is
    written; a note whose numbers move is not (a card per refit)."""
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)), close_writer=True)
    odd = _forecast(100, 2.5)
    for step, notes in (
        (100, ["[out_of_shape] alpha at its bound (0.05)"]),
        (200, ["[out_of_shape] alpha at its bound (0.051)"]),
        (300, []),
        (400, []),
    ):
        sink.write_forecast(step, odd.model_copy(update={"fitted_at_step": step, "warnings": notes}), {})
    sink.close()
    texts = _texts(_read(tmp_path), "forecast/status")
    assert [step for step, _ in texts] == [100, 300], texts
    assert "[out_of_shape]" in texts[0][1] and "[out_of_shape]" not in texts[1][1]


def test_a_warn_only_stop_says_the_run_goes_on(tmp_path: Path) -> None:
    """The stop rule met under ``action="warn"`` (the monitor's message says the run goes on): a status line,
    no "stopped early" and no stop bar (it drew one at a step the run went on past); a real stop draws one."""
    for action in ("warn", "stop"):
        logdir = tmp_path / action
        sink = TensorBoardSink(SummaryWriter(str(logdir)), close_writer=True)
        sink.write_forecast(100, _forecast(100, 2.5), {})
        message = "out of reach" + (" (action='warn': the run goes on)" if action == "warn" else "")
        sink.write_event(
            Event(kind="early_stop", step=100, severity="critical", message=message, data={"action": action})
        )
        sink.close()
        texts = _texts(_read(logdir), "forecast/status")
        bar = logdir / "scaleforecast" / "early_stop"
        if action == "warn":
            assert "stop rule met" in texts[-1][1] and "the run goes on" in texts[-1][1]
            assert "stopped early" not in texts[-1][1]
            assert not bar.exists()
        else:
            assert "stopped early" in texts[-1][1]
            # no target known: the bar spans the last band
            values = [e.value for e in _read(bar).Scalars(COMPARE_TAG)]
            np.testing.assert_allclose(values, [2.4, 2.6], rtol=1e-6)


class _BareWriter:
    """A SummaryWriter-like object that does not say where it writes."""

    def __init__(self, writer: SummaryWriter) -> None:
        self.inner = writer

    def add_scalar(self, *args: object, **kwargs: object) -> None:
        self.inner.add_scalar(*args, **kwargs)

    def add_text(self, *args: object, **kwargs: object) -> None:
        self.inner.add_text(*args, **kwargs)

    def add_custom_scalars(self, layout: dict) -> None:
        self.inner.add_custom_scalars(layout)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("how", ["folder unknown", "series_runs=False"])
def test_without_runs_beside_everything_stays_in_one_run(tmp_path: Path, how: str) -> None:
    writer = SummaryWriter(str(tmp_path))
    if how == "folder unknown":
        sink = TensorBoardSink(_BareWriter(writer), close_writer=True)
    else:
        sink = TensorBoardSink(writer, close_writer=True, series_runs=False)
    sink.write_scalars(100, {"forecast/observed": 2.9, "forecast/stop_confidence": 0.98})
    sink.write_forecast(100, _forecast(100, 2.5), {"forecast/target": 2.2})
    sink.write_event(
        Event(kind="early_stop", step=100, severity="critical", message="x", data={"target_loss": 2.2})
    )
    sink.close()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []
    acc = _read(tmp_path)
    assert [e.value for e in acc.Scalars("forecast/stop_confidence")] == [pytest.approx(0.98)]
    assert [e.value for e in acc.Scalars("forecast/target")] == [pytest.approx(2.2)]
    assert [e.value for e in acc.Scalars("forecast/early_stop")] == [pytest.approx(2.2), pytest.approx(2.6)]
    charts = {c.title: c for cat in _layout(acc).category for c in cat.chart}
    assert len(charts["final loss forecast (band)"].margin.series) == 1
    assert list(charts["observed loss vs forecast"].multiline.tag) == [
        COMPARE_TAG,
        "forecast/final_loss",
        "forecast/target",
        "forecast/early_stop",
    ]


def test_the_layout_for_add_custom_scalars_keeps_its_margin_charts_to_one_series() -> None:
    layout = forecast_layout(series_runs=False)
    for kind, tags in layout["scaleforecast"].values():
        assert kind != "Margin" or len(tags) == 3


def test_runs_beside_a_run_never_make_its_parent_ambiguous(tmp_path: Path) -> None:
    job = tmp_path / "job" / "version_0"
    writer = SummaryWriter(str(job))
    writer.add_scalar("train/loss", 3.0, 1)
    sink = TensorBoardSink(writer, close_writer=True)
    sink.write_forecast(100, _forecast(100, 2.5), {"forecast/target": 2.2})
    sink.close()
    assert (job / "scaleforecast" / "target").is_dir()
    assert [f.parent for f in find_event_files(tmp_path / "job")] == [job]


def test_figure_has_a_legend_the_target_and_the_stop() -> None:
    fig = draw_snapshot(_snapshot())
    ax = fig.axes[0]
    ymin, ymax = ax.get_ylim()
    # the frame follows the later curve and the band, not the first steps' huge loss
    assert ymin < 2.0 and ymax < 3.0
    assert ax.get_xlim()[1] >= 1000
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    fitted = "law fitted so far (the latest losses weigh most)"
    assert {"observed loss", fitted, "80% band", "forecast", "target 2.05"} <= set(labels)
    assert "forecast made at step 400" in labels and not any("early stop" in lbl for lbl in labels)

    stopped = draw_snapshot(_snapshot(300, stop_step=300)).axes[0]
    labels = [t.get_text() for t in stopped.get_legend().get_texts()]
    assert "early stop at step 300" in labels and "forecast made at step 300" not in labels
    assert stopped.get_title().startswith("EARLY STOP")
    # a run stopped as lost says so; a long title is wrapped, not cut at the figure's edges
    title = "step 300/1000: its last fit's final loss 2.1234 [2.1000, 2.1500] (80%), fitted to the losses up to step 288"
    long = replace(_snapshot(300, stop_step=300), stop_label="stopped as lost", title=title)
    lost = draw_snapshot(long).axes[0]
    assert "stopped as lost at step 300" in {t.get_text() for t in lost.get_legend().get_texts()}
    head, *rest = lost.get_title().split("\n")
    assert head.startswith("STOPPED AS LOST · ") and rest and max(len(line) for line in [head, *rest]) <= 96
    # at the last step nothing is ahead: the legend names no band and no forecast curve it does not draw
    last = draw_snapshot(_snapshot(1000)).axes[0]
    labels = [t.get_text() for t in last.get_legend().get_texts()]
    assert "80% band" not in labels and "forecast" not in labels
    assert any(lbl.startswith("final loss ") for lbl in labels)


class _Exploding:
    def __init__(self) -> None:
        self.calls = 0

    def write_forecast(self, step: int, forecast: Forecast, extras: dict) -> None:
        self.calls += 1
        raise OSError("disk full")


class _Recording:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def write_forecast(self, step: int, forecast: Forecast, extras: dict) -> None:
        self.steps.append(step)

    def close(self) -> None:
        raise RuntimeError("already closed")


def test_fanout_isolates_a_failing_sink() -> None:
    bad, good = _Exploding(), _Recording()
    fan = FanoutSink([bad, good])
    with pytest.warns(RuntimeWarning, match="disk full"):
        fan.write_forecast(1, _forecast(1, 2.0), {})
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        fan.write_forecast(2, _forecast(2, 2.0), {})
        fan.write_event(Event(kind="spike", step=2, message="x"))  # missing methods are skipped
    assert not again  # reported once only
    assert bad.calls == 1 and good.steps == [1, 2]
    assert len(fan) == 1
    with pytest.warns(RuntimeWarning, match="already closed"):
        fan.close()
    assert fan.disabled
    assert len(fan) == 0


def test_sink_rejects_objects_that_are_not_writers() -> None:
    with pytest.raises(TypeError, match="add_scalar"):
        TensorBoardSink(object())


def test_figures_are_drawn_off_the_calling_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import scaleforecast.tensorboard_sink as tb

    drawn_on: list[str] = []
    entered, gate = threading.Event(), threading.Event()
    real_draw = tb.draw_snapshot

    def gated_draw(snapshot: CurveSnapshot) -> object:
        drawn_on.append(threading.current_thread().name)
        entered.set()
        assert gate.wait(60)
        return real_draw(snapshot)

    monkeypatch.setattr(tb, "draw_snapshot", gated_draw)
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)), close_writer=True)
    sink.write_figure(_snapshot(300))  # returns at once: the worker is drawing
    assert entered.wait(60)
    sink.write_figure(_snapshot(400))  # waits its turn
    sink.write_figure(_snapshot(500))  # replaces the one still waiting: the latest figure is never lost
    assert sink.skipped_figures == 1
    gate.set()
    sink.close()  # waits for the figures in progress and waiting
    assert set(drawn_on) == {"scaleforecast-figures"} and len(drawn_on) == 2
    assert [i.step for i in _read(tmp_path).Images("forecast/curve")] == [300, 500]


def test_a_failing_background_figure_is_reported_by_the_fanout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scaleforecast.tensorboard_sink as tb

    def broken(snapshot: CurveSnapshot) -> object:
        raise RuntimeError("no fonts")

    monkeypatch.setattr(tb, "draw_snapshot", broken)
    sink = TensorBoardSink(SummaryWriter(str(tmp_path)), close_writer=True)
    fan = FanoutSink([sink])
    fan.write_figure(_snapshot(300))  # fails later, on the worker
    assert not fan.disabled
    with pytest.warns(RuntimeWarning, match="no fonts"):
        fan.close()
    assert fan.disabled


@pytest.mark.trainer
@pytest.mark.slow
def test_a_real_lightning_stop_is_marked_in_every_view(tmp_path: Path) -> None:
    """A Lightning fit stopped by the stop rule: the figure at the stop step (drawn though none was due), the
    stop bar beside the run, the status text, all read back from the files TensorBoard reads."""
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning_models import cpu_trainer
    from scaleforecast.callbacks import LossForecast
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.5 * torch.randn(2048, 1, generator=g)

    class Regressor(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

        def configure_optimizers(self) -> dict:
            opt = torch.optim.SGD(self.parameters(), lr=0.05)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=80)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # the loss cannot fall below the noise (0.25): a target of 0.01 is out of reach
    cb = LossForecast(
        target_loss=0.01,
        min_fraction=0.3,
        flush_every=5,  # a refit takes effect at the next flush: short flushes for a short run
        refit_every=5,
        log_figures_every=100,
        verbose=False,
    )
    trainer = cpu_trainer(80, [cb], logger=TensorBoardLogger(str(tmp_path), name="run"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the weights and the shuffle draw from seeded generators: the run is the same whatever ran before it
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = Regressor()
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=g)
        trainer.fit(model, loader)
    stopped = cb.stopped_at
    assert stopped is not None and 24 <= stopped < 80

    run = Path(trainer.logger.log_dir)
    acc = _read(run)
    images = [i.step for i in acc.Images("forecast/curve")]
    assert len(images) == 2 and images[-1] == stopped  # the first usable forecast's, then the stop's
    assert "**stopped early**" in _texts(acc, "forecast/status")[-1][1]
    bar = [(e.step, e.value) for e in _read(run / "scaleforecast" / "early_stop").Scalars(COMPARE_TAG)]
    lower, upper = acc.Scalars("forecast/lower")[-1].value, acc.Scalars("forecast/upper")[-1].value
    assert [s for s, _ in bar] == [stopped, stopped]
    # from the target, or from the band's lower end where that lies below it, to the band's upper end
    np.testing.assert_allclose([v for _, v in bar], [min(0.01, lower), upper], rtol=1e-6)
    target = _read(run / "scaleforecast" / "target").Scalars(COMPARE_TAG)
    assert target and all(e.value == pytest.approx(0.01) for e in target)


def test_every_fit_status_is_said_in_words() -> None:
    from scaleforecast.results import FitStatus
    from scaleforecast.tensorboard_sink import status_text

    for status in FitStatus:
        assert status_text(status) != status.value and status_text(status.value) == status_text(status)


def test_figures_are_drawn_on_the_worker_and_written_on_the_callers_thread(tmp_path: Path) -> None:
    """HF's TensorBoard callback closes its writer on the training thread at the end of training: a figure
    written from the worker thread at that moment raced it ("Writer is closed"). The worker only draws; every
    write is the caller's, at its next call."""
    import threading

    threads: list[str] = []

    class Recording(SummaryWriter):
        def add_image(self, *args: object, **kwargs: object) -> None:
            threads.append(threading.current_thread().name)
            super().add_image(*args, **kwargs)  # type: ignore[arg-type]

    writer = Recording(str(tmp_path))
    sink = TensorBoardSink(writer, close_writer=True)
    for step in (100, 200, 300):
        sink.write_figure(_snapshot(step))
        sink.wait()
    sink.write_figure(_snapshot(400))
    sink.write_forecast(400, _forecast(400, 2.3), {})  # writes what the worker has drawn by now, if anything
    sink.close()
    main = threading.current_thread().name
    assert threads == [main] * 4
    assert [i.step for i in _read(tmp_path).Images("forecast/curve")] == [100, 200, 300, 400]


def test_a_torch_writers_figures_are_encoded_on_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's SummaryWriter encodes a figure's PNG inside ``add_image`` (about 12 ms a figure, on the training
    thread): for that writer the worker encodes it as well, and the caller's thread only appends the summary."""
    import threading

    from torch.utils.tensorboard import summary

    encoded: list[str] = []
    appended: list[str] = []
    real_image = summary.image

    def image(*args: Any, **kwargs: Any) -> Any:
        encoded.append(threading.current_thread().name)
        return real_image(*args, **kwargs)

    monkeypatch.setattr(summary, "image", image)
    writer = SummaryWriter(str(tmp_path))
    file_writer = writer._get_file_writer()
    real_add = file_writer.add_summary

    def add_summary(*args: Any, **kwargs: Any) -> None:
        appended.append(threading.current_thread().name)
        real_add(*args, **kwargs)

    monkeypatch.setattr(file_writer, "add_summary", add_summary)
    sink = TensorBoardSink(writer, close_writer=True)
    for step in (100, 200):
        sink.write_figure(_snapshot(step))
        sink.wait()
    sink.close()
    main = threading.current_thread().name
    assert len(encoded) == 2 and main not in encoded
    assert appended == [main, main]
    images = _read(tmp_path).Images("forecast/curve")
    assert [i.step for i in images] == [100, 200] and images[0].width >= 600


@pytest.mark.trainer
def test_a_run_that_ends_draws_its_last_figure(tmp_path: Path) -> None:
    """Figures are drawn every few refits; the run's end is one more, whenever the last one due was drawn
    (the last picture of a 1000-step run was from step 650, and showed none of what came after)."""
    from scaleforecast.callbacks import LossForecastSession

    total = 120
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / total)
    fc = LossForecastSession(
        opt,
        sched,
        total_steps=total,
        flush_every=10,
        refit_every=10,
        log_figures_every=4,
        dirpath=str(tmp_path),
        verbose=False,
    )
    for n in range(1, total + 1):
        opt.step()
        sched.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.4))
    fc.close()
    steps = [e.step for e in _read(tmp_path).Images("forecast/curve")]
    assert steps and steps[-1] == total, steps


def test_figures_are_drawn_with_the_collector_paused_and_it_is_left_as_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A figure's draw with the garbage collector running promoted its objects until a full collection of
    the whole process ran on the figure worker, holding the GIL 150-200 ms (a training-thread stall, about every
    fifth figure: ``benchmarks/figure_stall.py``). The collector is paused for the draw, then left as found: on
    again, or off when the program had switched it off."""
    import gc

    from scaleforecast import tensorboard_sink as tbs

    seen: list[bool] = []
    real = tbs.draw_snapshot

    def spy(snapshot: Any) -> Any:
        seen.append(gc.isenabled())
        return real(snapshot)

    steps = np.arange(1, 101)
    snap = tbs.CurveSnapshot(
        step=100,
        final_step=200,
        observed_steps=steps,
        observed_loss=3.0 - 0.001 * steps,
        steps=np.arange(100, 201),
        mean=np.full(101, 2.8),
        lower=np.full(101, 2.7),
        upper=np.full(101, 2.9),
        level=0.8,
    )
    monkeypatch.setattr(tbs, "draw_snapshot", spy)
    assert gc.isenabled()
    assert tbs._picture(snap).ndim == 3 and gc.isenabled()
    gc.disable()
    try:
        tbs._picture(snap)
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert seen == [False, False]


def test_the_full_collection_a_process_owes_is_made_before_training(tmp_path: Path) -> None:
    """A process that imported its framework has made no full garbage collection since; the figures' survivors
    brought it mid-run, on the figure worker, holding the GIL 200-600 ms (the longest step of a 10k-step loop:
    255 ms; after this, 39 ms, and no full collection in 50k steps). The sink makes it once per process when it
    is built, before training; never in a program that switched the collector off."""
    code = (
        "import gc, sys\n"
        "from torch.utils.tensorboard import SummaryWriter\n"
        "from scaleforecast.tensorboard_sink import TensorBoardSink\n"
        "if sys.argv[2] == 'off':\n"
        "    gc.disable()\n"
        "before = gc.get_stats()[2]['collections']\n"
        "for name in ('a', 'b'):\n"
        "    TensorBoardSink(SummaryWriter(sys.argv[1] + '/' + name))\n"
        "print(gc.get_stats()[2]['collections'] - before)\n"
    )
    for collector, made in (("on", "1"), ("off", "0")):
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / collector), collector],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.split() == [made], out.stdout + out.stderr


def test_a_new_run_in_a_folder_that_holds_one_replaces_its_lines(tmp_path: Path) -> None:
    """A script run twice with the same ``dirpath`` wrote both runs into one TensorBoard run: every card drew
    steps 50..300 and then 50..300 again, one zigzag, and nothing was said. The second run is told once, and
    its lines replace the first's (TensorBoard hides what was written there before it started); a run that
    resumes there from its saved state hears nothing of it."""
    from scaleforecast.callbacks import LossForecastSession

    def run(level: float, upto: int, state: dict | None = None) -> tuple[LossForecastSession, list[str]]:
        total = 120
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / total)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fc = LossForecastSession(
                opt, sched, total_steps=total, flush_every=10, dirpath=str(tmp_path), verbose=False
            )
            start = 0
            if state is not None:
                for _ in range(state["steps"]):
                    opt.step()
                    sched.step()
                fc.load_state_dict(state["fc"])
                start = state["steps"]
            for n in range(start + 1, upto + 1):
                opt.step()
                sched.step()
                fc.step(torch.tensor(level + 3.0 * n**-0.4))
            fc.close()
        return fc, [str(w.message) for w in caught]

    _, said = run(2.0, 120)
    assert not [m for m in said if "already holds" in m], said
    _, said = run(5.0, 120)
    told = [m for m in said if "already holds a TensorBoard run" in m]
    assert len(told) == 1 and str(tmp_path) in told[0], said
    acc = EventAccumulator(str(tmp_path / "scaleforecast" / "observed"))
    acc.Reload()
    seen = acc.Scalars(COMPARE_TAG)
    assert [e.step for e in seen] == list(range(10, 121, 10))  # one line, not two folded together
    assert all(e.value > 5.0 for e in seen)  # the second run's
    # a resume into the same folder with its saved state is no new run
    half, _ = run(5.0, 60)
    _, said = run(5.0, 120, {"steps": 60, "fc": half.state_dict()})
    assert not [m for m in said if "already holds" in m], said
