"""LossForecast in real (tiny, CPU) Lightning fits."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pl = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning_models import TinyRegressor, regression_data  # noqa: E402
from scaleforecast.callbacks import LossForecast  # noqa: E402
from scaleforecast.integrations.lookahead import lookahead_lrs  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from scaleforecast.events import Event  # noqa: E402
from scaleforecast.monitor import FlushBatch  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"
)


class Recorder:
    """A health check that records every flushed batch (what the forecaster is fed)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.lrs: list[float] = []

    def check(self, batch: FlushBatch, forecaster: Any) -> list[Event]:
        self.steps += [int(s) for s in batch.steps]
        self.loss += [float(v) for v in batch.loss]
        self.lrs += [float(v) for v in batch.lrs] if batch.lrs is not None else []
        return []


def _trainer(tmp_path: Path, callbacks: list[Callback], max_steps: int, **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "max_steps": max_steps,
        "callbacks": callbacks,
        "logger": TensorBoardLogger(str(tmp_path / "tb"), name="run"),
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        "default_root_dir": str(tmp_path),
    }
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def _step_means(raw: list[float], batches_per_epoch: int, accumulate: int) -> list[float]:
    """The true mean loss of each optimizer step: groups of ``accumulate`` micro-batches, cut at epoch ends."""
    means, i = [], 0
    while i < len(raw):
        in_epoch = i % batches_per_epoch
        size = min(accumulate, batches_per_epoch - in_epoch)
        group = raw[i : i + size]
        if len(group) < size:
            break
        means.append(sum(group) / size)
        i += size
    return means


@pytest.mark.slow
def test_event_files_hold_the_forecast(tmp_path: Path) -> None:
    model = TinyRegressor(total=60)
    cb = LossForecast(flush_every=10, refit_every=10, log_figures_every=1)
    trainer = _trainer(tmp_path, [cb], 60)
    trainer.fit(model)
    assert cb.errors == {}
    assert cb.forecast is not None and cb.forecast.ok

    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in (
        "forecast/final_loss",
        "forecast/lower",
        "forecast/upper",
        "forecast/observed_vs_forecast",
        "law/L0",
        "law/C",
    ):
        assert tag in scalars, tag
    final = acc.Scalars("forecast/final_loss")
    assert all(e.step % 10 == 0 and 0 < e.step <= 60 for e in final)
    assert final[-1].step == cb.forecast.fitted_at_step
    assert math.isclose(final[-1].value, cb.forecast.final.loss, rel_tol=1e-6)
    lower, upper = acc.Scalars("forecast/lower")[-1].value, acc.Scalars("forecast/upper")[-1].value
    assert lower < final[-1].value < upper
    observed = acc.Scalars("forecast/observed_vs_forecast")
    assert [e.step for e in observed] == list(range(10, 61, 10))
    np.testing.assert_allclose(observed[-1].value, np.mean(model.raw_losses[-10:]), rtol=1e-5)
    beside = EventAccumulator(str(Path(trainer.logger.log_dir) / "scaleforecast" / "forecast"))
    beside.Reload()
    assert "custom_scalars__config__" in beside.Tags()["tensors"]
    assert acc.Tags()["images"] == ["forecast/curve"]


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 4])
def test_observed_losses_are_per_optimizer_step_means_with_the_lr_used(
    tmp_path: Path, accumulate: int
) -> None:
    # 10 batches per epoch: with accumulate=4 each epoch has steps of 4, 4 and 2 micro-batches
    data = regression_data(n=320)
    steps = 24
    model = TinyRegressor(total=steps, dataset=data, warmup=3)
    rec = Recorder()
    cb = LossForecast(flush_every=5, refit_every=5, health=[rec], writer=False)
    trainer = _trainer(tmp_path, [cb], steps, accumulate_grad_batches=accumulate, logger=False)
    trainer.fit(model)
    assert trainer.global_step == steps and cb.errors == {}
    assert rec.steps == list(range(1, steps + 1))
    expected = _step_means(model.raw_losses, 10, accumulate)
    np.testing.assert_allclose(rec.loss, expected[:steps], rtol=1e-5)
    # the LR recorded for each step is the one the optimizer used for that update ...
    np.testing.assert_array_equal(rec.lrs, model.used_lrs)
    # ... and the look-ahead planned exactly that schedule before training started
    np.testing.assert_allclose(cb.monitor.forecaster.schedule, model.used_lrs, rtol=1e-9)


class _HalveLR(Callback):
    """Changes the LR behind the scheduler's back at one step (a manual intervention mid-run)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at:
            for group in trainer.optimizers[0].param_groups:
                group["lr"] *= 0.5


@pytest.mark.slow
def test_replans_when_the_schedule_changes_mid_run(tmp_path: Path) -> None:
    model = TinyRegressor(total=40)
    cb = LossForecast(flush_every=5, refit_every=5, writer=False)
    trainer = _trainer(tmp_path, [cb, _HalveLR(12)], 40, logger=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model)
    planned = cb.monitor.forecaster.schedule
    fresh = TinyRegressor(total=40).configure_optimizers()
    original = lookahead_lrs(fresh["optimizer"], fresh["lr_scheduler"]["scheduler"], 40)
    np.testing.assert_allclose(planned[:12], original[:12], rtol=1e-9)
    assert math.isclose(planned[12], 0.5 * original[12], rel_tol=1e-9)
    assert np.all(planned[12:] < original[12:])
    np.testing.assert_allclose(planned, model.used_lrs, rtol=1e-9)


@pytest.mark.slow
def test_resume_keeps_history(tmp_path: Path) -> None:
    total = 40
    model = TinyRegressor(total=total)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=23, save_top_k=-1)
    # flush_every=7: at step 23 two steps are still buffered and must travel in the checkpoint
    cb = LossForecast(flush_every=7, refit_every=7, writer=False)
    trainer = _trainer(tmp_path, [cb, ckpt], total, enable_checkpointing=True, logger=False)
    trainer.fit(model)
    first = cb.monitor.forecaster.observations()
    path = next((tmp_path / "ckpt").glob("*step=23*.ckpt"))

    model2 = TinyRegressor(total=total)
    rec = Recorder()
    cb2 = LossForecast(flush_every=7, refit_every=7, writer=False, health=[rec])
    trainer2 = _trainer(tmp_path, [cb2], total, logger=False)
    trainer2.fit(model2, ckpt_path=str(path))
    assert cb2.errors == {}
    obs = cb2.monitor.forecaster.observations()
    np.testing.assert_array_equal(obs.end, np.arange(1, total + 1))
    np.testing.assert_allclose(obs.y[:23], first.y[:23], rtol=1e-6)
    assert rec.steps[0] == 22 and rec.steps[-1] == total  # the two buffered steps, then the new ones
    np.testing.assert_allclose(cb2.monitor.forecaster.schedule[23:], model2.used_lrs, rtol=1e-9)


@pytest.mark.slow
def test_stops_when_the_target_is_out_of_reach(tmp_path: Path) -> None:
    model = TinyRegressor(total=200, loss_offset=1.0)
    cb = LossForecast(target_loss=0.5, min_fraction=0.2, flush_every=10, refit_every=10)
    trainer = _trainer(tmp_path, [cb], 200)
    trainer.fit(model)
    assert cb.stopped_at is not None and 40 <= cb.stopped_at < 200
    assert trainer.global_step == cb.stopped_at
    assert "cannot reach" in (cb.stop_reason or "")
    assert cb.state_dict()["stop_reason"] == cb.stop_reason
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    text = tensor_util.make_ndarray(acc.Tensors("events/early_stop/text_summary")[0].tensor_proto).item()
    assert b"cannot reach" in text


class _ExplodingWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")


@pytest.mark.slow
def test_faults_never_stop_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("fitter exploded")

    monkeypatch.setattr("scaleforecast.forecaster.fit", explode)
    model = TinyRegressor(total=30)
    cb = LossForecast(target_loss=0.0, min_fraction=0.0, flush_every=5, refit_every=5)
    with pytest.warns(RuntimeWarning, match="fitter exploded"):
        _trainer(tmp_path, [cb], 30).fit(model)
    assert len(model.used_lrs) == 30 and cb.stopped_at is None
    monkeypatch.undo()

    model = TinyRegressor(total=30)
    cb = LossForecast(flush_every=5, refit_every=5, writer=_ExplodingWriter())
    with pytest.warns(RuntimeWarning, match="disk full"):
        _trainer(tmp_path, [cb], 30).fit(model)
    assert len(model.used_lrs) == 30 and cb.forecast is not None

    class NoLoss(TinyRegressor):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            super().training_step(batch, batch_idx)
            return None

    model = NoLoss(total=10)
    cb = LossForecast(flush_every=5, writer=False)
    with pytest.warns(RuntimeWarning, match="returned no loss"):
        _trainer(tmp_path, [cb], 10, logger=False).fit(model)
    assert cb.errors == {} and cb.monitor.forecaster.last_step == 0


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="confidence"):
        LossForecast(confidence=1.5)
    with pytest.raises(ValueError, match="flush_every"):
        LossForecast(flush_every=0)
    with pytest.raises(ValueError, match="action"):
        LossForecast(action="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_loss"):
        LossForecast(target_loss=float("inf"))
    with pytest.raises(ValueError):
        LossForecast(schedule="cosine:peak=-1,total=10")


def test_state_dict_round_trip() -> None:
    cb = LossForecast(target_loss=2.0)
    state = {"version": 1, "monitor": None, "pending": None, "stopped_at": 12, "stop_reason": "why"}
    cb.load_state_dict(state)
    assert cb.state_dict()["stopped_at"] == 12 and cb.state_dict()["stop_reason"] == "why"
    with pytest.raises(ValueError, match="version"):
        cb.load_state_dict({"version": 99})


class ManualRegressor(TinyRegressor):
    """The same model under manual optimisation: the step and the scheduler are driven by training_step."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.raw_losses.append(float(loss.detach()))
        opt.zero_grad()
        self.manual_backward(loss)
        self.used_lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        return loss


@pytest.mark.slow
def test_manual_optimisation(tmp_path: Path) -> None:
    steps = 20
    model = ManualRegressor(total=steps)
    rec = Recorder()
    cb = LossForecast(flush_every=5, writer=False, health=[rec])
    _trainer(tmp_path, [cb], steps, logger=False).fit(model)
    assert cb.errors == {}
    assert rec.steps == list(range(1, steps + 1))
    np.testing.assert_allclose(rec.loss, model.raw_losses, rtol=1e-6)
    np.testing.assert_array_equal(rec.lrs, model.used_lrs)
    np.testing.assert_allclose(cb.monitor.forecaster.schedule, model.used_lrs, rtol=1e-9)


def test_imports_stay_lazy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, scaleforecast.monitor, scaleforecast.sinks, scaleforecast.callbacks\n"
        "heavy = {'torch', 'lightning', 'transformers', 'tensorboard', 'matplotlib'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from scaleforecast.callbacks import LossForecast\n"
        # lightning itself may pull in transformers; this package must not load its HF adapter
        "assert 'scaleforecast.callbacks.hf' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
