"""What only the Lightning callback does: undo Lightning's loss scaling under gradient accumulation, and
observe manual optimisation. Everything the three adapters share is in ``test_adapters.py``."""

from __future__ import annotations

import csv
import inspect
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pl = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402
from lightning_models import TinyRegressor, cpu_trainer, regression_data  # noqa: E402
from scaleforecast.callbacks import LossForecast  # noqa: E402

from scaleforecast.events import Event  # noqa: E402
from scaleforecast.monitor import FlushBatch  # noqa: E402
from scaleforecast.readers import read_run  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning"
)


class Recorder:
    """A detector that records every flushed batch (what the forecaster is fed)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.lrs: list[float] = []
        self.sizes: list[int] = []  # steps per flush

    def check(self, batch: FlushBatch, view: Any) -> list[Event]:
        self.sizes.append(len(batch.steps))
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
@pytest.mark.parametrize("accumulate", [1, 4])
def test_observed_losses_are_per_optimizer_step_means_with_the_lr_used(
    tmp_path: Path, accumulate: int
) -> None:
    # 10 batches per epoch: with accumulate=4 each epoch has steps of 4, 4 and 2 micro-batches
    data = regression_data(n=320)
    steps = 24
    model = TinyRegressor(total=steps, dataset=data, warmup=3)
    rec = Recorder()
    cb = LossForecast(flush_every=5, refit_every=5, detectors=[rec], writer=False)
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


class EveryThirdBatch(TinyRegressor):
    """A scheduler stepped every 3 batches (``"frequency": 3``), counted by Lightning from each epoch's start."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 3}}


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_step_frequency_counted_from_each_epoch_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], accumulate: int
) -> None:
    """10 batches per epoch and a scheduler stepped every 3 batches: Lightning steps it after batches 3, 6 and 9
    of each epoch, so it does not step every third update across epochs. The plan follows that from the start
    (it assumed every third update, and re-planned at every flush from the second epoch on)."""
    model = EveryThirdBatch(dataset=regression_data(n=320))
    steps = 40 // accumulate
    cb = LossForecast(flush_every=5, writer=False, verbose=True)
    _trainer(tmp_path, [cb], steps, logger=False, accumulate_grad_batches=accumulate).fit(model)
    assert cb.errors == {}
    assert "re-planning" not in capsys.readouterr().out
    np.testing.assert_allclose(cb.monitor.forecaster.schedule, model.used_lrs, rtol=1e-12)


class ManualRegressor(TinyRegressor):
    """The same model under manual optimisation: the step and the scheduler are driven by training_step."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.update(self.optimizers(), self.lr_schedulers(), batch)

    def update(self, opt: Any, sched: Any, batch: Any) -> torch.Tensor:
        """One step of ``opt`` (and ``sched``) on the layer's loss, recorded for the tests."""
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.raw_losses.append(float(loss.detach()))
        opt.zero_grad()
        self.manual_backward(loss)
        self.used_lrs.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
        return loss

    def configure_optimizers(self) -> Any:
        # as manual loops often return them: no interval, so Lightning's default ("epoch") is on the config,
        # which it ignores under manual optimisation (the module steps the scheduler, here once per update)
        config = super().configure_optimizers()
        return [config["optimizer"]], [config["lr_scheduler"]["scheduler"]]


@pytest.mark.slow
def test_manual_optimisation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = 20
    model = ManualRegressor(total=steps)
    rec = Recorder()
    cb = LossForecast(flush_every=5, writer=False, detectors=[rec], verbose=True)
    _trainer(tmp_path, [cb], steps, logger=False).fit(model)
    assert cb.errors == {}
    assert "re-planning" not in capsys.readouterr().out  # planned right from the start
    assert rec.steps == list(range(1, steps + 1))
    np.testing.assert_allclose(rec.loss, model.raw_losses, rtol=1e-6)
    np.testing.assert_array_equal(rec.lrs, model.used_lrs)
    np.testing.assert_allclose(cb.monitor.forecaster.schedule, model.used_lrs, rtol=1e-9)


class TwoOptimizers(ManualRegressor):
    """A GAN-style module: two optimizers, each stepped once per batch (Lightning's global_step counts both)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.other = torch.nn.Linear(self.layer.in_features, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (first, second), (sched, _) = self.optimizers(), self.lr_schedulers()
        loss = self.update(first, sched, batch)
        self.critic(second, batch)
        return loss

    def critic(self, second: Any, batch: Any) -> None:
        """One step of the second optimizer on its own loss."""
        x, y = batch
        other = torch.nn.functional.mse_loss(self.other(x), y) + 1.0
        second.zero_grad()
        self.manual_backward(other)
        second.step()

    def configure_optimizers(self) -> Any:
        (first,), (sched,) = super().configure_optimizers()
        second = torch.optim.SGD(self.other.parameters(), lr=0.02)
        return [first, second], [sched, torch.optim.lr_scheduler.StepLR(second, step_size=7)]


@pytest.mark.slow
def test_manual_optimisation_with_two_optimizers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Lightning's global_step counts every optimizer's steps (40 for 20 batches here): the run is counted in
    updates of the first optimizer, its length is max_steps over the steps per update, and the flushes keep
    their cadence (they came at every other batch, and the forecast was for a step that never came)."""
    steps = 20
    model = TwoOptimizers(total=steps)
    rec = Recorder()
    cb = LossForecast(flush_every=5, writer=False, detectors=[rec], verbose=True)
    first_plan: list[int | None] = []

    class Probe(Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            first_plan.append(cb.forecaster.total_steps)

    trainer = _trainer(tmp_path, [cb, Probe()], 2 * steps, logger=False)
    trainer.fit(model)
    assert trainer.global_step == 2 * steps and cb.errors == {}
    # the first plan is already one of 20 updates (one of 40 ran a schedule past its end: "the LR is 0 ...")
    assert first_plan == [steps]
    assert "re-planning" not in capsys.readouterr().out
    assert rec.steps == list(range(1, steps + 1)) and rec.sizes == [5] * 4
    np.testing.assert_allclose(rec.loss, model.raw_losses, rtol=1e-6)
    np.testing.assert_allclose(cb.monitor.forecaster.schedule, model.used_lrs, rtol=1e-9)
    assert cb.forecast is not None and cb.forecast.final_step == steps


class NCritic(TwoOptimizers):
    """A WGAN-style module: the critic (second optimizer) steps every batch, the generator (first) every third,
    and training_step returns the generator's loss only from the batches that step it."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        (first, second), (sched, _) = self.optimizers(), self.lr_schedulers()
        loss = self.update(first, sched, batch) if batch_idx % 3 == 0 else None
        self.critic(second, batch)
        return loss


@pytest.mark.slow
def test_an_n_critic_loop_is_measured_past_its_first_update(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """max_steps=80 counts both optimizers' steps: 4 a generator update (its batch and two critic-only ones), so
    20 updates. Measured at the first update alone (whose batch steps both: 2), the plan was 40 updates, every
    forecast was of update 40, and the run "ended at update 20 of 40"; the critic-only batches, which owe no
    loss, were warned about as returning none."""
    updates = 20
    model = NCritic(total=updates)
    cb = LossForecast(flush_every=5, writer=False, verbose=True)
    plans: list[int | None] = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            plans.append(cb.forecaster.total_steps)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer(tmp_path, [cb, Probe()], 4 * updates, logger=False)
        trainer.fit(model)
    assert trainer.global_step == 4 * updates and cb.errors == {}
    assert len(model.raw_losses) == updates
    # measured from the second update on: within one update of the truth for the rest of the run
    assert all(abs(p - updates) <= 1 for p in plans[6:]), plans
    assert cb.forecast is not None and cb.forecast.final_step == updates
    out = capsys.readouterr().out
    assert "before its last" not in out
    said = [str(w.message) for w in caught if "LossForecast" in str(w.message)]
    assert not [m for m in said if "no loss" in m or "past its planned length" in m], said


class Uneven(TwoOptimizers):
    """The generator steps on two batches of every five, the critic on every batch: its updates are 2 and 5
    steps of ``global_step`` apart in turn, 3.5 on average."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        (first, second), (sched, _) = self.optimizers(), self.lr_schedulers()
        loss = self.update(first, sched, batch) if self.batches % 5 < 2 else None
        self.batches += 1
        self.critic(second, batch)
        return loss

    batches = 0


@pytest.mark.slow
def test_a_run_resumed_past_update_512_keeps_measuring_its_length(tmp_path: Path) -> None:
    """The measure of a multi-optimizer run's length stopped at update 513 counted from the run's start: a run
    resumed later measured one update (2 or 5 steps, not 3.5) and kept that plan to its end."""
    updates, resume_at = 600, 540
    max_steps = 7 * updates // 2

    class Pause(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            trainer.should_stop = trainer.should_stop or len(pl_module.raw_losses) >= resume_at

    first = Uneven(total=updates)
    trainer = _trainer(
        tmp_path, [LossForecast(flush_every=10, writer=False, verbose=False), Pause()], max_steps
    )
    trainer.fit(first)
    assert len(first.raw_losses) == resume_at
    ckpt = tmp_path / "paused.ckpt"
    trainer.save_checkpoint(ckpt)

    cb = LossForecast(flush_every=10, writer=False, verbose=False)
    plans: list[int | None] = []

    class Probe(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            plans.append(cb.forecaster.total_steps)

    model = Uneven(total=updates)
    model.batches = first.batches
    trainer = _trainer(tmp_path, [cb, Probe()], max_steps, logger=False)
    trainer.fit(model, ckpt_path=str(ckpt))
    done = resume_at + len(model.raw_losses)
    assert trainer.global_step == max_steps and cb.errors == {} and abs(done - updates) <= 1
    # a dozen updates past the resume, the plan is the run's length to within an update
    assert all(abs(p - done) <= 1 for p in plans[40:]), plans


@pytest.mark.slow
def test_lr_find_before_fit_is_no_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``Tuner.lr_find`` checkpoints the trainer before its trial and restores it after, handing the callback
    the state it had before training: the fit then said "resumed after update 0" and never told its listeners
    a run started (a sweep stopper reused by the next trial recorded both trials under one run id)."""
    from lightning.pytorch.tuner import Tuner

    class Listener:
        def __init__(self) -> None:
            self.starts = 0

        def on_run_start(self) -> None:
            self.starts += 1

        def on_forecast(self, *args: Any) -> list[Event]:
            return []

    listener = Listener()
    cb = LossForecast(flush_every=5, writer=False, verbose=True, listeners=[listener])
    trainer = _trainer(tmp_path, [cb], 40, logger=False)
    Tuner(trainer).lr_find(TinyRegressor(total=40), num_training=10, update_attr=False)
    trainer.fit(TinyRegressor(total=40))
    assert cb.errors == {}
    assert "resumed" not in capsys.readouterr().out
    assert listener.starts == 1
    assert cb.forecaster.last_step == 40


@pytest.mark.slow
def test_fit_called_again_goes_on_from_the_history(tmp_path: Path) -> None:
    """``trainer.fit`` a second time on the same trainer, with more epochs: the forecast goes on from the first
    fit's history (it dropped it, guessed the LRs before and said "no record of the LRs before this resume")."""

    model = TinyRegressor(total=40, scheduler="none", dataset=regression_data(n=320))
    rec = Recorder()
    cb = LossForecast(flush_every=5, writer=False, detectors=[rec])
    trainer = _trainer(tmp_path, [cb], -1, max_epochs=2, logger=False)
    trainer.fit(model)
    assert cb.forecaster.last_step == 20
    trainer.fit_loop.max_epochs = 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model)
    assert not [w for w in caught if "no record of the LRs" in str(w.message)]
    obs = cb.forecaster.observations()
    np.testing.assert_array_equal(obs.end, np.arange(1, 41))
    np.testing.assert_allclose(obs.y, model.raw_losses, rtol=1e-6)
    assert cb.errors == {}


@pytest.mark.slow
def test_with_a_csv_logger_each_run_writes_tensorboard_into_its_version_folder(tmp_path: Path) -> None:
    """No TensorBoardLogger, a CSVLogger: two runs wrote into one unversioned folder, which TensorBoard reads as
    one run; each now writes beside its CSVLogger version."""
    from lightning.pytorch.loggers import CSVLogger

    class Logged(TinyRegressor):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("train_loss", loss)
            return loss

    for _ in range(2):
        cb = LossForecast(flush_every=5, refit_every=5, verbose=False)
        logger = CSVLogger(str(tmp_path), name="csv")
        _trainer(tmp_path, [cb], 30, logger=logger, log_every_n_steps=5).fit(Logged(total=30))
        assert cb.log_dir == str(Path(logger.log_dir) / "scaleforecast")
        # the forecasts reach the CSV too (they went to TensorBoard alone, which this user does not watch)
        with open(Path(logger.log_dir) / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r.get("forecast/final_loss")]
        assert cb.forecast is not None and cb.forecast.final is not None and rows
        assert float(rows[-1]["forecast/final_loss"]) == pytest.approx(cb.forecast.final.loss, rel=1e-6)
        assert float(rows[-1]["forecast/lower"]) < float(rows[-1]["forecast/upper"])
        # at Lightning's step numbers (the updates before the one logged), in the rows of its own metrics
        assert int(rows[-1]["step"]) == 29
        # and the folder is still a CSVLogger folder to the readers: its event files (the forecast's) held no
        # loss, and the reader took them over metrics.csv
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            run = read_run(logger.log_dir, loss="train_loss", require_lr=False)
        assert run.last_step == 29 and not [w for w in said if "not in step order" in str(w.message)]
    assert sorted(
        p.parent.parent.name for p in tmp_path.glob("csv/*/scaleforecast/events.out.tfevents.*")
    ) == [
        "version_0",
        "version_1",
    ]


@pytest.mark.slow
def test_with_no_logger_each_run_writes_tensorboard_into_a_version_folder_of_its_own(tmp_path: Path) -> None:
    """``logger=False``: every run of a process wrote into ``default_root_dir/scaleforecast``, one TensorBoard run
    for all (their lines zig-zagged), and that folder, in the working directory by default, shadowed the package
    itself on import for a script started there. Each run now writes where Lightning's own logger would have."""
    for k in range(2):
        cb = LossForecast(flush_every=5, refit_every=5, verbose=False)
        _trainer(tmp_path, [cb], 30, logger=False).fit(TinyRegressor(total=30))
        assert cb.log_dir == str(tmp_path / "lightning_logs" / f"version_{k}")
    assert not (tmp_path / "scaleforecast").exists()
    for k in range(2):
        acc = EventAccumulator(
            str(tmp_path / "lightning_logs" / f"version_{k}"), size_guidance={"scalars": 0}
        )
        acc.Reload()
        steps = [e.step for e in acc.Scalars("forecast/final_loss")]
        assert steps == sorted(set(steps)), steps


@pytest.mark.slow
def test_max_epochs_ending_the_run_before_max_steps_sets_its_length(tmp_path: Path) -> None:
    """``max_steps=1000`` and ``max_epochs=3`` of 10 updates: the run makes 30 updates, and the forecast is of
    the loss at update 30 (it was planned, and forecast, for update 1000)."""
    model = TinyRegressor(total=30, scheduler="lambda", warmup=3, dataset=regression_data(n=320))
    cb = LossForecast(flush_every=5, refit_every=5, writer=False, verbose=False)
    trainer = _trainer(tmp_path, [cb], 1000, max_epochs=3, logger=False)
    trainer.fit(model)
    assert trainer.global_step == 30
    assert cb.forecaster.total_steps == 30
    assert cb.forecast is not None and cb.forecast.final_step == 30 and cb.errors == {}


@pytest.mark.slow
def test_a_checkpoint_saved_without_the_callback_resumes_with_the_lrs_it_used(tmp_path: Path) -> None:
    """The callback added on a resume from a checkpoint that holds no state of it: a LambdaLR stepped per
    update (Lightning's per-epoch step pattern) gives back the LRs of the updates before the resume exactly,
    instead of the current LR held for all of them."""

    first = TinyRegressor(total=60, warmup=10, scheduler="lambda", dataset=regression_data(n=320))
    trainer = _trainer(tmp_path, [], 25, logger=False)
    trainer.fit(first)
    ckpt = tmp_path / "no-callback.ckpt"
    trainer.save_checkpoint(ckpt)
    model = TinyRegressor(total=60, warmup=10, scheduler="lambda", dataset=regression_data(n=320))
    cb = LossForecast(flush_every=5, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, [cb], 60, logger=False).fit(model, ckpt_path=str(ckpt))
    assert not [w for w in caught if "no record of the LRs" in str(w.message)]
    used = first.used_lrs + model.used_lrs
    assert len(used) == 60
    np.testing.assert_allclose(cb.forecaster.schedule, used, rtol=1e-6)
    assert cb.errors == {}


@pytest.mark.slow
def test_a_pickled_callback_trains_as_under_ddp_spawn(tmp_path: Path) -> None:
    """``ddp_spawn`` pickles the trainer's callbacks into each worker: the copy, with its detectors, must
    forecast as the original would."""
    import pickle

    from adapter_kit import Plan, train

    def pickled(*args: Any, **kwargs: Any) -> LossForecast:
        return pickle.loads(pickle.dumps(LossForecast(*args, **kwargs)))

    recorder = Recorder()
    kwargs = {"flush_every": 5, "refit_every": 5, "writer": False, "verbose": False, "detectors": [recorder]}
    run = train("lightning", tmp_path, Plan(steps=40, kwargs=kwargs, adapter_class=pickled))
    assert run.cb.errors == {} and run.cb.forecast is not None and run.cb.forecast.final is not None
    copy = next(d for d in run.cb.monitor.detectors if isinstance(d, Recorder))
    assert copy is not recorder and copy.steps == list(range(1, 41))


@pytest.mark.slow
def test_a_run_of_unknown_length_says_how_to_give_it(tmp_path: Path) -> None:
    """An endless iterable data set and no ``max_steps``: Lightning estimates the run's length as -1. The
    callback says what it needs (not a look-ahead error about a length of -1), and training goes on."""
    from torch.utils.data import DataLoader, IterableDataset

    class Endless(IterableDataset):
        def __iter__(self) -> Any:
            gen = torch.Generator().manual_seed(0)
            while True:
                x = torch.randn(8, 16, generator=gen)
                yield x, x.sum(1, keepdim=True)

    class Halt(Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            trainer.should_stop = trainer.global_step >= 12

    model = TinyRegressor(total=12)
    model.train_dataloader = lambda: DataLoader(Endless(), batch_size=None)  # type: ignore[method-assign]
    cb = LossForecast(flush_every=4, writer=False)
    trainer = _trainer(tmp_path, [cb, Halt()], -1, max_epochs=1, logger=False)
    with pytest.warns(
        RuntimeWarning,
        match="the run's length is unknown, so nothing is forecast: set the trainer's max_steps",
    ) as caught:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        trainer.fit(model)
    assert trainer.global_step == 12
    # the warning points at the user's trainer.fit line, past Lightning's frames that ran the callback
    told = [w for w in caught if "length is unknown" in str(w.message)]
    assert (told[0].filename, told[0].lineno) == (__file__, line)
    assert "length is unknown" in cb.errors["schedule look-ahead"]


def test_the_gradient_norm_is_read_before_lightning_clips_it(tmp_path: Path) -> None:
    """``gradient_clip_val`` clips before the optimizer steps: read after the step, every norm sat at the clip
    value. The callback reads it in on_before_optimizer_step, before the clip, and says nothing of clipping."""

    class Norms:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def check(self, batch: FlushBatch, view: Any) -> list[Event]:
            if batch.grad_norm is not None:
                self.seen.extend(float(g) for g in batch.grad_norm)
            return []

    norms = Norms()
    cb = LossForecast(track_grad_norm=True, detectors=[norms], flush_every=5, writer=False, verbose=False)
    trainer = cpu_trainer(40, [cb], tmp_path, gradient_clip_val=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyRegressor(total=40))
    assert len(norms.seen) == 40
    assert min(norms.seen) > 1e-2  # the norms before the clip, not the clip value
    assert not [w for w in caught if "clipped" in str(w.message)]


def test_a_fast_dev_run_writes_nothing(tmp_path: Path) -> None:
    """``fast_dev_run``: Lightning logs and checkpoints nothing, but the callback wrote a TensorBoard run of its
    own into the working folder. It writes nothing, and the run goes on as ever."""
    cb = LossForecast(flush_every=2, verbose=False)
    trainer = _trainer(tmp_path, [cb], 20, fast_dev_run=5, logger=False)
    trainer.fit(TinyRegressor(total=20))
    assert trainer.global_step == 5 and cb.errors == {}
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
