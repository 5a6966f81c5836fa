"""The health monitor inside real (tiny, CPU) Lightning and HF Trainer runs: a loss spike stops training."""

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

SPIKE_STEP = 40  # the optimizer update whose loss gets the injected spike
MAX_STEPS = 60


def _event_text(run_dir: Path, kind: str) -> list[bytes]:
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tag = f"events/{kind}/text_summary"
    if tag not in acc.Tags()["tensors"]:
        return []
    return [tensor_util.make_ndarray(t.tensor_proto).item() for t in acc.Tensors(tag)]


@pytest.mark.slow
def test_spike_stops_a_lightning_run_with_the_reason(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    import torch
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning_models import TinyRegressor
    from scaleforecast.callbacks import LossForecast

    class Spiky(TinyRegressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            # A constant has no gradient: the reported loss spikes, the weights do not move differently.
            return loss + 50.0 if self.global_step + 1 == SPIKE_STEP else loss

    seen: list[Event] = []
    health = HealthMonitor(HealthConfig(record_path=str(tmp_path / "skip.json")))
    cb = LossForecast(
        flush_every=5, refit_every=10, health=[health], advisor=ScheduleAdvisor(), on_event=seen.append
    )
    trainer = pl.Trainer(
        max_steps=MAX_STEPS,
        callbacks=[cb],
        logger=TensorBoardLogger(str(tmp_path / "tb"), name="run"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=str(tmp_path),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(Spiky(total=MAX_STEPS))
    assert cb.stopped_at is not None and SPIKE_STEP <= cb.stopped_at < MAX_STEPS
    assert trainer.global_step == cb.stopped_at
    assert f"spike @ step {SPIKE_STEP}" in (cb.stop_reason or "")
    assert [e.step for e in seen if e.kind == "spike"] == [SPIKE_STEP]
    assert json.loads((tmp_path / "skip.json").read_text()) == [SPIKE_STEP - 1, SPIKE_STEP]
    texts = _event_text(Path(trainer.logger.log_dir), "spike")
    assert texts and f"at step {SPIKE_STEP}".encode() in texts[0]
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    assert "events/spike_score" in acc.Tags()["scalars"]
    assert "advice/best_gain" in acc.Tags()["scalars"]  # the advisor's gain, written at each refit


@pytest.mark.slow
def test_spike_stops_an_hf_run_with_the_reason(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from hf_worker import make_trainer
    from scaleforecast.callbacks import HFLossForecast

    seen: list[Event] = []
    cb = HFLossForecast(
        flush_every=5,
        refit_every=10,
        health=[HealthMonitor()],
        advisor=ScheduleAdvisor(),
        on_event=seen.append,
        writer=None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer(tmp_path, [cb], max_steps=MAX_STEPS, report_to="none")
        calls = {"n": 0}

        def spike(module: Any, args: Any, output: Any) -> Any:
            if module.training:
                calls["n"] += 1
                if calls["n"] == SPIKE_STEP:  # one forward per update (no accumulation)
                    output.loss = output.loss + 50.0
            return output

        trainer.model.register_forward_hook(spike)
        trainer.train()
    assert cb.stopped and SPIKE_STEP <= cb.stopped_at < MAX_STEPS
    assert cb.stopped_at == trainer.state.global_step
    assert f"spike @ step {SPIKE_STEP}" in (cb.stop_reason or "")
    assert [e.step for e in seen if e.kind == "spike"] == [SPIKE_STEP]
    run_dirs = sorted({p.parent for p in tmp_path.rglob("events.out.tfevents.*")})
    assert any(_event_text(d, "spike") for d in run_dirs)
