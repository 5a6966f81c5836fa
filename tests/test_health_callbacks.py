"""The health monitor inside real (tiny, CPU) Lightning and HF Trainer runs: a loss spike is shown and the run
goes on; a NaN storm (the weights gone non-finite) stops it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from scaleforecast.advice import ScheduleAdvisor
from scaleforecast.detectors import HealthConfig, HealthMonitor
from scaleforecast.events import Event

SPIKE_STEP = 32  # the optimizer update whose loss gets an injected spike: shown, never a stop
NAN_FROM = 44  # from this update on every loss is NaN (the weights went non-finite): the run is lost
MAX_STEPS = 60


def _texts(run_dir: Path, tag: str) -> list[bytes]:
    """The texts written under ``tag`` in the run."""
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tag = f"{tag}/text_summary"
    if tag not in acc.Tags()["tensors"]:
        return []
    return [tensor_util.make_ndarray(t.tensor_proto).item() for t in acc.Tensors(tag)]


@pytest.mark.slow
def test_lightning_run_survives_a_spike_and_stops_on_a_nan_storm(tmp_path: Path) -> None:
    pytest.importorskip("lightning.pytorch")
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning_models import TinyRegressor, cpu_trainer
    from scaleforecast.callbacks import LossForecast

    class Faulty(TinyRegressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            step = self.global_step + 1
            if step == SPIKE_STEP:
                # A constant has no gradient: the reported loss spikes, the weights do not move differently.
                return loss + 50.0
            return loss * float("nan") if step >= NAN_FROM else loss  # NaN gradients poison the weights

    seen: list[Event] = []
    health = HealthMonitor(HealthConfig(record_path=str(tmp_path / "skip.json")))
    cb = LossForecast(
        flush_every=5, refit_every=10, detectors=[health], advisor=ScheduleAdvisor(), on_event=seen.append
    )
    trainer = cpu_trainer(
        MAX_STEPS, [cb], tmp_path, logger=TensorBoardLogger(str(tmp_path / "tb"), name="run")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Faulty(total=MAX_STEPS))
    spikes = [e for e in seen if e.kind == "spike"]
    assert [e.step for e in spikes] == [SPIKE_STEP] and spikes[0].severity == "warning"
    # The spike did not stop the run; the 8th NaN loss in a row did, at the next flush.
    lost = NAN_FROM + HealthConfig().nonfinite.patience - 1
    assert cb.stopped_at is not None and lost <= cb.stopped_at < MAX_STEPS
    assert trainer.global_step == cb.stopped_at
    assert f"nonfinite @ step {lost}" in (cb.stop_reason or "") and "the run is lost" in (
        cb.stop_reason or ""
    )
    assert json.loads((tmp_path / "skip.json").read_text()) == [SPIKE_STEP - 1, SPIKE_STEP]
    texts = _texts(Path(trainer.logger.log_dir), "events/spike")
    assert texts and f"at step {SPIKE_STEP}".encode() in texts[0]
    assert _texts(Path(trainer.logger.log_dir), "events/nonfinite")
    # the status card says the run was stopped as lost (it ended at "stale", as if the run had gone on)
    status = _texts(Path(trainer.logger.log_dir), "forecast/status")
    said = status[-1].decode()
    assert said.startswith(f"step {lost}: **stopped** (nonfinite): ") and said.endswith("the run is lost"), (
        said
    )
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert "events/spike_score" in acc.Tags()["scalars"]
    assert "advice/best_gain" in acc.Tags()["scalars"]  # the advisor's gain, written at each refit
    # the custom-scalars chart of the advice draws what the advisor writes
    from scaleforecast.integrations.tensorboard import ADVICE_CHARTS

    assert {t for _, tags in ADVICE_CHARTS.values() for t in tags} <= set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_hf_run_survives_a_spike_and_stops_on_a_nan_storm(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from hf_worker import make_trainer
    from scaleforecast.callbacks import HFLossForecast

    seen: list[Event] = []
    cb = HFLossForecast(
        flush_every=5,
        refit_every=10,
        detectors=[HealthMonitor()],
        advisor=ScheduleAdvisor(),
        on_event=seen.append,
        writer=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer(tmp_path, [cb], max_steps=MAX_STEPS, report_to="none")
        calls = {"n": 0}

        def fault(module: Any, args: Any, output: Any) -> Any:
            if module.training:
                calls["n"] += 1  # one forward per update (no accumulation)
                if calls["n"] == SPIKE_STEP:
                    output.loss = output.loss + 50.0
                elif calls["n"] >= NAN_FROM:
                    output.loss = output.loss * float("nan")
            return output

        trainer.model.register_forward_hook(fault)
        trainer.train()
    spikes = [e for e in seen if e.kind == "spike"]
    assert [e.step for e in spikes] == [SPIKE_STEP] and spikes[0].severity == "warning"
    lost = NAN_FROM + HealthConfig().nonfinite.patience - 1
    assert cb.stopped_at is not None and lost <= cb.stopped_at < MAX_STEPS
    assert cb.stopped_at == trainer.state.global_step
    assert f"nonfinite @ step {lost}" in (cb.stop_reason or "")
    run_dirs = sorted({p.parent for p in tmp_path.rglob("events.out.tfevents.*")})
    assert any(_texts(d, "events/spike") for d in run_dirs)
