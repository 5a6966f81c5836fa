"""Two-process DDP on CPU (gloo): ranks see different losses, agree on the data and stop at the same step."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pl = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning_models import TinyRegressor  # noqa: E402
from scaleforecast.callbacks import LossForecast  # noqa: E402

from scaleforecast.events import Event  # noqa: E402
from scaleforecast.monitor import FlushBatch  # noqa: E402


class SpreadRecorder:
    """Records the gap between the max and the mean over ranks that the monitor is fed."""

    def __init__(self) -> None:
        self.gaps: list[float] = []

    def check(self, batch: FlushBatch, forecaster: Any) -> list[Event]:
        if batch.loss_max is not None:
            self.gaps += [float(v) for v in batch.loss_max - batch.loss]
        return []


class Report(Callback):
    """Each rank writes what it decided to ``outdir/rank<N>.json``."""

    def __init__(self, outdir: str, forecast: LossForecast, recorder: SpreadRecorder) -> None:
        self.outdir, self.forecast, self.recorder = outdir, forecast, recorder

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state = self.forecast.state_dict()
        digest = hashlib.sha256(json.dumps(state["monitor"], sort_keys=True).encode()).hexdigest()
        report = {
            "global_step": trainer.global_step,
            "stopped_at": self.forecast.stopped_at,
            "reason": self.forecast.stop_reason,
            "state_digest": digest,
            "gaps": self.recorder.gaps,
            "errors": self.forecast.errors,
            "own_mean": float(np.mean(pl_module.raw_losses[-10:])),
        }
        Path(self.outdir, f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


def _fit_two_ranks(
    tmp_path: Path, model: pl.LightningModule, total: int, cb: LossForecast, rec: SpreadRecorder
) -> tuple[dict, dict]:
    """A real 2-process ddp_spawn (gloo, CPU) fit; returns what each rank reported at the end."""
    trainer = pl.Trainer(
        max_steps=total,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        callbacks=[cb, Report(str(tmp_path), cb, rec)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model)
    return tuple(json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))  # type: ignore[return-value]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ranks_stop_together_on_the_mean_over_ranks(tmp_path: Path) -> None:
    total = 100
    # rank 0 sees losses near 0.3, rank 1 the same plus 1.0: the mean over ranks cannot reach 0.45, rank 0
    # alone would think it can.
    model = TinyRegressor(total=total, rank_offset=1.0, batch_size=256)
    rec = SpreadRecorder()
    cb = LossForecast(
        target_loss=0.45, min_fraction=0.3, flush_every=5, refit_every=5, health=[rec], writer=False
    )
    r0, r1 = _fit_two_ranks(tmp_path, model, total, cb, rec)
    assert r0["errors"] == {} and r1["errors"] == {}
    assert r0["own_mean"] < 0.45 < r1["own_mean"]  # the ranks really disagree
    assert r0["stopped_at"] is not None and r0["stopped_at"] == r1["stopped_at"]
    assert r0["global_step"] == r1["global_step"] == r0["stopped_at"] < total
    assert r0["stopped_at"] >= 0.3 * total
    assert r0["reason"] == r1["reason"] and "cannot reach" in r0["reason"]
    assert r0["state_digest"] == r1["state_digest"]  # identical callback state on every rank
    assert np.mean(r0["gaps"]) > 0.3  # the max over ranks carries rank 1's higher loss


def _buffer_worker(rank: int, world: int, port: int, outdir: str) -> None:
    import torch.distributed as dist
    from scaleforecast.integrations.distributed import DeviceBuffer, agree

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        buf = DeviceBuffer(capacity=4, channels=2)
        for i in range(3):  # rank r pushes loss 10*r + i and grad norm r
            buf.push(torch.tensor(10.0 * rank + i), torch.tensor(float(rank)))
        flushed = buf.flush()
        buf.push(torch.tensor(float("nan")) if rank == 1 else torch.tensor(1.0))
        with_nan = buf.flush()
        report = {
            "count": flushed.count,
            "mean": flushed.mean.tolist(),
            "max": flushed.max.tolist(),
            "nan_mean": with_nan.mean.tolist(),
            "any": agree(rank == 1, mode="any"),
            "all": agree(rank == 1, mode="all"),
        }
        Path(outdir, f"buf{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_device_buffer_gives_mean_and_max_over_ranks(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_buffer_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "buf0.json").read_text())
    r1 = json.loads((tmp_path / "buf1.json").read_text())
    assert r0 == {**r1, "nan_mean": r0["nan_mean"]}
    assert r0["count"] == 3
    np.testing.assert_allclose(r0["mean"][0], [5.0, 6.0, 7.0])
    np.testing.assert_allclose(r0["max"][0], [10.0, 11.0, 12.0])
    np.testing.assert_allclose(r0["mean"][1], [0.5, 0.5, 0.5])
    assert math.isnan(r0["nan_mean"][0][0]) and math.isnan(r1["nan_mean"][0][0])
    assert r0["any"] is True and r0["all"] is False


def test_device_buffer_without_a_process_group() -> None:
    from scaleforecast.integrations.distributed import DeviceBuffer, agree, dist_ready

    assert not dist_ready()
    buf = DeviceBuffer(capacity=3)
    buf.push(torch.tensor(2.0))
    buf.push(0.5)
    buf.push(None)
    with pytest.raises(BufferError):
        buf.push(1.0)
    out = buf.flush()
    assert out.count == 3 and out.mean[0][:2].tolist() == [2.0, 0.5] and math.isnan(out.mean[0][2])
    assert len(buf) == 0 and buf.flush().count == 0
    assert agree(True) and not agree(False, mode="all")
    with pytest.raises(ValueError, match="mode"):
        agree(True, mode="most")


class FlakyLossForecast(LossForecast):
    """Its per-step part breaks on rank 1 from step 7 on (an injected fault on one rank only)."""

    def _on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any) -> None:
        if trainer.global_rank == 1 and trainer.global_step >= 7:
            raise RuntimeError("injected fault on rank 1")
        super()._on_batch_end(trainer, pl_module, outputs)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_fault_on_one_rank_neither_hangs_nor_stops_training(tmp_path: Path) -> None:
    total = 30
    rec = SpreadRecorder()
    cb = FlakyLossForecast(
        target_loss=0.0, min_fraction=0.0, flush_every=5, refit_every=5, health=[rec], writer=False
    )
    r0, r1 = _fit_two_ranks(tmp_path, TinyRegressor(total=total), total, cb, rec)
    assert r0["global_step"] == r1["global_step"] == total
    assert "step" in r1["errors"] and "step" not in r0["errors"]
    assert r0["state_digest"] == r1["state_digest"]
