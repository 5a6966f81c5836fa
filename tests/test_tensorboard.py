"""TensorBoardSink: real event files written with torch's SummaryWriter, read back with TensorBoard's reader."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboard")
torch = pytest.importorskip("torch")

from scaleforecast.integrations.tensorboard import STATUS_CODES, TensorBoardSink, draw_snapshot  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.custom_scalar import layout_pb2  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from scaleforecast.events import Event  # noqa: E402
from scaleforecast.results import FitStatus, Forecast, ForecastPoint, LawParams  # noqa: E402
from scaleforecast.sinks import CurveSnapshot, FanoutSink, Sink  # noqa: E402


def _forecast(step: int, loss: float, status: FitStatus = FitStatus.OK) -> Forecast:
    return Forecast(
        law="tissue",
        level=0.8,
        fitted_at_step=step,
        final_step=1000,
        points=[ForecastPoint(step=1000, loss=loss, lower=loss - 0.1, upper=loss + 0.1, std=0.078)],
        params=LawParams(L0=2.0, A=0.5, alpha=0.4, C=3.0),
        n_points=step,
        status=status,
        warnings=["[prior] C leans on the prior"] if status is FitStatus.ANNEALING_UNIDENTIFIED else [],
    )


def _snapshot(step: int = 400) -> CurveSnapshot:
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
    )


def _read(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_sink_writes_scalars_layout_text_and_figures(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(
        writer, layout_extra={"advice gain": ["Multiline", ["advice/gain"]]}, close_writer=True
    )
    assert isinstance(sink, Sink)
    sink.write_forecast(100, _forecast(100, 2.5, FitStatus.ANNEALING_UNIDENTIFIED), {"forecast/target": 2.2})
    sink.write_forecast(200, _forecast(200, 2.4), {"forecast/p_miss_target": 0.97, "advice/gain": 0.03})
    sink.write_forecast(300, _forecast(300, 2.35), {})
    sink.write_scalars(300, {"forecast/observed": 2.6, "nan_is_skipped": float("nan")})
    sink.write_event(Event(kind="spike", step=250, severity="warning", score=7.5, message="loss 3.1 vs 2.5"))
    sink.write_event(Event(kind="early_stop", step=300, severity="critical", message="target out of reach"))
    sink.write_figure(_snapshot(300))
    sink.close()

    acc = _read(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    expected = {
        "forecast/final_loss",
        "forecast/lower",
        "forecast/upper",
        "forecast/std",
        "forecast/fit_status",
        "law/L0",
        "law/A",
        "law/alpha",
        "law/C",
        "forecast/target",
        "forecast/p_miss_target",
        "advice/gain",
        "forecast/observed",
        "events/spike_score",
    }
    assert expected <= scalars
    assert "forecast/nan_is_skipped" not in scalars
    final = acc.Scalars("forecast/final_loss")
    assert [e.step for e in final] == [100, 200, 300]
    np.testing.assert_allclose([e.value for e in final], [2.5, 2.4, 2.35], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in acc.Scalars("forecast/upper")], [2.6, 2.5, 2.45], rtol=1e-6)
    status = acc.Scalars("forecast/fit_status")
    assert [e.value for e in status] == [
        STATUS_CODES[FitStatus.ANNEALING_UNIDENTIFIED],
        STATUS_CODES[FitStatus.OK],
        STATUS_CODES[FitStatus.OK],
    ]
    assert [e.value for e in acc.Scalars("events/spike_score")] == [7.5]

    tensors = set(acc.Tags()["tensors"])
    assert {
        "forecast/status/text_summary",
        "events/spike/text_summary",
        "events/early_stop/text_summary",
    } <= tensors
    status_text = [
        tensor_util.make_ndarray(e.tensor_proto).item().decode()
        for e in acc.Tensors("forecast/status/text_summary")
    ]
    # written on change only: unidentified at 100, ok at 200
    assert len(status_text) == 2 and "annealing_unidentified" in status_text[0] and "prior" in status_text[0]
    stop_text = tensor_util.make_ndarray(acc.Tensors("events/early_stop/text_summary")[0].tensor_proto).item()
    assert b"target out of reach" in stop_text

    layout = layout_pb2.Layout.FromString(
        tensor_util.make_ndarray(acc.Tensors("custom_scalars__config__")[0].tensor_proto).item()
    )
    charts = {c.title: c for cat in layout.category for c in cat.chart}
    margin = charts["final loss forecast (band)"].margin.series[0]
    assert (margin.value, margin.lower, margin.upper) == (
        "forecast/final_loss",
        "forecast/lower",
        "forecast/upper",
    )
    assert list(charts["advice gain"].multiline.tag) == ["advice/gain"]

    images = acc.Images("forecast/curve")
    assert [i.step for i in images] == [300]
    assert images[0].width >= 600 and images[0].height >= 300


def test_figure_is_drawn_without_pyplot_state() -> None:
    fig = draw_snapshot(_snapshot())
    ax = fig.axes[0]
    ymin, ymax = ax.get_ylim()
    # the frame follows the later curve and the band, not the first steps' huge loss
    assert ymin < 2.0 and ymax < 3.0
    assert ax.get_xlim()[1] >= 1000
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "forecast" in labels and any(lbl.startswith("target") for lbl in labels)


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
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reported once only
        fan.write_forecast(2, _forecast(2, 2.0), {})
        fan.write_event(Event(kind="spike", step=2, message="x"))  # missing methods are skipped
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
    sink.write_figure(_snapshot(400))  # the previous figure is still being drawn: skipped
    assert sink.skipped_figures == 1
    gate.set()
    sink.close()  # waits for the figure in progress
    assert drawn_on == ["scaleforecast-figures"]
    assert [i.step for i in _read(tmp_path).Images("forecast/curve")] == [300]


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
