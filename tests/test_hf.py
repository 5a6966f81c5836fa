"""What only the HF Trainer callback does, in real ``transformers.Trainer`` fits of a tiny GPT-2 on CPU: the
per-step losses read off the model's output and the logged window means, the fallback between them, the NaN
that HF's logs hide, its own writer, and HF's own restore of callbacks. Everything the three adapters share is
in ``test_adapters.py``."""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("tensorboard")

from hf_worker import ByteChunks, make_trainer, optuna_search, stdlib_text
from scaleforecast.callbacks import HFLossForecast
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import TrainerCallback

from scaleforecast.decision import SweepStopper
from scaleforecast.detectors import HealthMonitor
from scaleforecast.registry import RunState, SQLiteRegistry

MAX_STEPS = 60
LOGGING_STEPS = 5


class LogRecorder(TrainerCallback):
    """Keeps HF's logged ``loss`` window means and the LR each update used, read from the Trainer's optimizer
    before the update (``logs["learning_rate"]`` is the next update's LR in transformers 4.x)."""

    def __init__(self) -> None:
        self.logs: list[tuple[int, float]] = []
        self.used_lrs: list[float] = []
        self.trainer: Any = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.used_lrs.append(float(self.trainer.optimizer.param_groups[0]["lr"]))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self.logs.append((state.global_step, float(logs["loss"])))


def _accumulator(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _event_dirs(root: Path) -> list[Path]:
    """Run directories, without the runs the TensorBoard sink writes inside a run (its comparison lines)."""
    dirs = {p.parent for p in root.rglob("events.out.tfevents.*")}
    return sorted(d for d in dirs if dirs.isdisjoint(d.parents))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One real run (gradient accumulation 2, an evaluation every 20 steps) watched per step and by windows."""
    out = tmp_path_factory.mktemp("hf_run")
    step_cb = HFLossForecast(refit_every=10, flush_every=5, log_figures_every=1)
    window_cb = HFLossForecast(
        refit_every=10, resolution="window", writer=False, name="window", verbose=False
    )
    recorder = LogRecorder()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer(
            out,
            [step_cb, window_cb, recorder],
            max_steps=MAX_STEPS,
            logging_steps=LOGGING_STEPS,
            gradient_accumulation_steps=2,
            eval_strategy="steps",
            eval_steps=20,
            per_device_eval_batch_size=8,
            eval_dataset=ByteChunks(stdlib_text(4_000)),
        )
        recorder.trainer = trainer
        trainer.train()
    return {"out": out, "trainer": trainer, "step": step_cb, "window": window_cb, "recorder": recorder}


@pytest.mark.slow
def test_per_step_losses_match_logged_window_means(run: dict[str, Any]) -> None:
    """One observation per optimizer step (accumulation and evaluation calls accounted for): their mean over
    each logging window equals HF's own logged ``loss``, and the planned LRs are the LRs the updates used."""
    step_obs = run["step"].forecaster.observations()
    assert run["step"].mode == "step"
    np.testing.assert_array_equal(step_obs.start, np.arange(1, MAX_STEPS + 1))
    np.testing.assert_array_equal(step_obs.end, step_obs.start)
    per_step = dict(zip(step_obs.end.tolist(), step_obs.y.tolist(), strict=True))
    logs = run["recorder"].logs
    assert len(logs) == MAX_STEPS // LOGGING_STEPS
    plan = run["step"].forecaster.schedule
    assert len(plan) == MAX_STEPS
    for step, loss in logs:
        mean = np.mean([per_step[s] for s in range(step - LOGGING_STEPS + 1, step + 1)])
        assert mean == pytest.approx(loss, rel=1e-5), step
    used = np.array(run["recorder"].used_lrs)
    assert len(used) == MAX_STEPS
    # The first update of a warm-up from 0 uses LR 0, which the plan lifts to a positive value for S1.
    np.testing.assert_allclose(plan[1:], used[1:], rtol=1e-9)
    # The window-mean path planned the same schedule.
    np.testing.assert_allclose(run["window"].forecaster.schedule, plan, rtol=1e-12)


@pytest.mark.slow
def test_window_mean_path_forecast_close_to_per_step(run: dict[str, Any]) -> None:
    win_obs = run["window"].forecaster.observations()
    np.testing.assert_array_equal(win_obs.end - win_obs.start + 1, LOGGING_STEPS)
    per_step, window = run["step"].forecast, run["window"].forecast
    assert per_step is not None and window is not None and per_step.ok and window.ok
    a, b = per_step.final, window.final
    assert a is not None and b is not None
    assert abs(a.loss - b.loss) <= 0.03 * a.loss, (a, b)
    # Same run, so the band of one must cover the other's point forecast.
    assert b.lower - 0.01 <= a.loss <= b.upper + 0.01


@pytest.mark.slow
def test_stop_when_target_unreachable_with_own_writer(tmp_path: Path) -> None:
    """No HF TensorBoard callback: the callback's own writer under output_dir; the stop is recorded there."""
    cb = HFLossForecast(target_loss=0.5, confidence=0.9, min_fraction=0.2, refit_every=5, flush_every=5)
    # report_to="none": HF has no TensorBoard callback to share a run directory with
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer(tmp_path, [cb], max_steps=MAX_STEPS, report_to="none")
        trainer.train()
    assert cb.stopped_at is not None and cb.stopped_at == trainer.state.global_step < MAX_STEPS
    assert cb.stop_reason and "0.5" in cb.stop_reason
    dirs = _event_dirs(tmp_path)
    assert dirs == [Path(cb.log_dir)] and dirs[0].parent == tmp_path / "runs", dirs  # where HF's would be
    acc = _accumulator(dirs[0])
    assert "forecast/final_loss" in acc.Tags()["scalars"]
    assert "events/early_stop/text_summary" in acc.Tags()["tensors"]
    # the next run of the process (a sweep loop) writes a run of its own: they shared one, and their lines mixed
    again = HFLossForecast(refit_every=5, flush_every=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, [again], max_steps=20, report_to="none").train()
    assert _event_dirs(tmp_path) == sorted([dirs[0], Path(again.log_dir)]) and again.log_dir != cb.log_dir


@pytest.mark.slow
def test_a_stop_saves_a_checkpoint_that_a_resume_knows_was_stopped(tmp_path: Path) -> None:
    """A run that saves checkpoints is stopped between two of them: the stop saves one at its step (the weights
    it stopped with; a resume from the last periodic one retrained past it and stopped again, silently). A
    resume from it says the run was stopped there. A run that saves none still saves none."""
    kwargs: dict[str, Any] = dict(
        target_loss=0.5, confidence=0.9, min_fraction=0.2, refit_every=5, flush_every=5
    )
    cb = HFLossForecast(writer=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, [cb], save_strategy="steps", save_steps=1000, report_to="none").train()
    assert cb.stopped_at is not None and (tmp_path / f"checkpoint-{cb.stopped_at}").is_dir()
    again = HFLossForecast(writer=False, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path / "again", [again], report_to="none").train(
            resume_from_checkpoint=str(tmp_path / f"checkpoint-{cb.stopped_at}")
        )
    told = f"this run was stopped at step {cb.stopped_at}"
    assert any(told in str(w.message) for w in caught), [str(w.message) for w in caught]
    unsaved = HFLossForecast(writer=False, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path / "unsaved", [unsaved], report_to="none").train()
    assert unsaved.stopped_at is not None and not list((tmp_path / "unsaved").glob("checkpoint-*"))


@pytest.mark.slow
def test_two_instances_write_a_run_each_and_say_their_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two instances in one Trainer with HF's TensorBoard on: both wrote the same tags into HF's run (two values
    of ``forecast/final_loss`` at one step) and printed the same name. The first writes into HF's run, the
    second into a run of its own named after it, and each line it prints carries its name."""
    a, b = (HFLossForecast(name=n, flush_every=5, refit_every=10) for n in ("a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, [a, b], max_steps=MAX_STEPS).train()
    assert a.log_dir != b.log_dir and Path(b.log_dir).name == "HFLossForecast[b]"
    assert Path(b.log_dir).parent.parent == tmp_path / "runs"
    for cb in (a, b):
        steps = [e.step for e in _accumulator(Path(cb.log_dir)).Scalars("forecast/final_loss")]
        assert steps and len(steps) == len(set(steps)), (cb.name, steps)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("HFLossForecast")]
    assert {line.split(":")[0] for line in said} == {"HFLossForecast[a]", "HFLossForecast[b]"}, said
    # a refit takes effect at the flush after it was made: the line says what it saw
    seen = [re.search(r"step (\d+): forecast final loss .*fitted to step (\d+)", line) for line in said]
    assert any(seen) and all(int(m[2]) < int(m[1]) for m in seen if m), said


@pytest.mark.slow
def test_a_callback_reused_for_a_new_run_starts_afresh(tmp_path: Path) -> None:
    """``hyperparameter_search`` trains every trial with the same callback objects, each from step 0 with a new
    model: each trial is a run of its own (it was taken for a resume of the last one, "step went back to 1",
    with the last one's stop and the health detectors' state carried over)."""
    stopper = SweepStopper(tmp_path / "sweep.sqlite", sweep="trials")
    cb = HFLossForecast(
        target_loss=0.5, confidence=0.9, min_fraction=0.2, refit_every=5, flush_every=5, listeners=[stopper]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = make_trainer(tmp_path / "a", [cb], max_steps=MAX_STEPS, report_to="none")
        first.train()
        assert cb.stopped_at is not None and cb.stopped_at < MAX_STEPS  # the target is out of reach
        second = make_trainer(tmp_path / "b", [cb], max_steps=20, report_to="none")
        second.train()
    assert not [w for w in caught if "went back" in str(w.message) or "is resumed" in str(w.message)]
    assert cb.forecaster.last_step == second.state.global_step <= 20
    assert cb.forecaster.observations().end.min() >= 1 and cb.forecaster.n_observations <= 20
    assert cb.stopped_at is None or cb.stopped_at <= 20  # not the first run's stop
    # each trial is a run of the sweep: the second overwrote the first's record, under the same run id
    records = SQLiteRegistry("trials", tmp_path / "sweep.sqlite").records()
    assert sorted(r.state for r in records) == sorted([RunState.STOPPED, RunState.FINISHED]), records


@pytest.mark.slow
def test_the_health_checks_of_a_reused_callback_start_afresh(tmp_path: Path) -> None:
    """The same callback object trains a second model from step 0 (a sweep loop, ``hyperparameter_search``):
    its health checks forget the first run (whose late loss level made a new model's first loss a spike):
    when the second run begins they hold what a new callback's hold."""
    cb = HFLossForecast(writer=False, flush_every=5)
    fresh = json.dumps(HealthMonitor().state_dict())

    class AtBegin(TrainerCallback):
        """Runs after ``cb`` in the Trainer's list: reads its health checks once it has begun."""

        def __init__(self) -> None:
            self.seen: list[str] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.seen.append(json.dumps(cb.session.detectors[0].state_dict()))

    at_begin = AtBegin()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path / "a", [cb, at_begin], max_steps=40, report_to="none").train()
        assert json.dumps(cb.session.detectors[0].state_dict()) != fresh
        make_trainer(tmp_path / "b", [cb, at_begin], max_steps=10, report_to="none").train()
    assert at_begin.seen == [fresh, fresh]


@pytest.mark.slow
def test_window_means_too_sparse_for_a_forecast_are_said_at_once(tmp_path: Path) -> None:
    """``resolution="window"`` with ``logging_steps=25`` over 60 updates: one window mean by half the run,
    where the fit needs six. Said when training begins (there was only a status text in TensorBoard)."""
    cb = HFLossForecast(resolution="window", flush_every=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, [cb], max_steps=MAX_STEPS, logging_steps=25, report_to="none").train()
    told = [str(w.message) for w in caught if "HF logs the loss every 25 updates" in str(w.message)]
    assert len(told) == 1 and "1 window means by half of this 60-update run (2 by its end)" in told[0], told
    dense = HFLossForecast(resolution="window", flush_every=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(
            tmp_path / "dense", [dense], max_steps=MAX_STEPS, logging_steps=2, report_to="none"
        ).train()
    assert not [w for w in caught if "HF logs the loss every" in str(w.message)]


@pytest.mark.slow
def test_hf_restore_rebuilds_the_callback_with_its_history(tmp_path: Path) -> None:
    """With ``restore_callback_states_from_checkpoint=True`` the Trainer swaps in a new instance built from the
    saved arguments; it keeps the history, and health checks switched off stay off. It dropped the listeners
    and ``on_event`` of the object passed (a resumed sweep run lost its sweep stopper), in silence, and that
    object stopped updating: the new one takes it over."""
    hf_restore = True
    first = HFLossForecast(refit_every=10, flush_every=7, writer=False, detectors=[])
    common: dict[str, Any] = dict(
        max_steps=40, save_strategy="steps", save_steps=20, report_to="none", logging_steps=10
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, [first], **common).train()
    before = first.forecaster.observations()

    heard: list[int] = []

    class Listener:
        def on_forecast(self, step: int, forecast: Any) -> list[Any]:
            heard.append(step)
            return []

    second = HFLossForecast(refit_every=10, flush_every=7, writer=False, detectors=[], listeners=[Listener()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer(
            tmp_path, [second], restore_callback_states_from_checkpoint=hf_restore, **common
        )
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    # With HF's own restore the Trainer swaps in a new instance built from the saved arguments.
    resumed = next(c for c in trainer.callback_handler.callbacks if isinstance(c, HFLossForecast))
    assert resumed is not second and resumed.session.detectors == []
    assert resumed.session is second.session and heard and max(heard) == 40 and second.forecast is not None
    after = resumed.forecaster.observations()
    np.testing.assert_array_equal(after.end, np.arange(1, 41))
    np.testing.assert_allclose(after.y[:20], before.y[:20], rtol=1e-6)
    np.testing.assert_allclose(after.y[20:], before.y[20:], rtol=1e-3)
    assert resumed.forecast is not None and resumed.forecast.ok


@pytest.mark.slow
def test_a_callback_added_on_resuming_a_checkpoint_saved_without_it(tmp_path: Path) -> None:
    """A job checkpointed without the callback, resumed with it: the Trainer's next save looked up the
    callback's entry in the resumed state and failed (``KeyError``, the checkpoint lost). Now each save keeps
    it, and a later resume from one of them picks the history up where it was saved."""
    common: dict[str, Any] = dict(save_strategy="steps", save_steps=10, report_to="none", logging_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(tmp_path, [], max_steps=20, **common).train()
        added = HFLossForecast(refit_every=10, flush_every=5, writer=False)
        make_trainer(tmp_path, [added], max_steps=40, **common).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-20")
        )
        assert (tmp_path / "checkpoint-40").is_dir()
        again = HFLossForecast(refit_every=10, flush_every=5, writer=False)
        make_trainer(tmp_path / "again", [again], max_steps=40, **common).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-30")
        )
    np.testing.assert_array_equal(added.forecaster.observations().end, np.arange(21, 41))
    np.testing.assert_array_equal(again.forecaster.observations().end, np.arange(21, 41))
    np.testing.assert_allclose(
        again.forecaster.observations().y[:10], added.forecaster.observations().y[:10], rtol=1e-6
    )


@pytest.mark.slow
def test_two_instances_resume_from_their_latest_saved_states(tmp_path: Path) -> None:
    """Two instances of the callback: the Trainer keeps their states in one list and appends both at every
    save, so the first entries are the ones from the start of training (the resumed callbacks took those, and
    lost the history up to the checkpoint)."""
    common: dict[str, Any] = dict(save_strategy="steps", save_steps=10, report_to="none", logging_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = [HFLossForecast(flush_every=5, writer=False, name=n) for n in ("a", "b")]
        make_trainer(tmp_path, first, max_steps=30, **common).train()
        second = [HFLossForecast(flush_every=5, writer=False, name=n) for n in ("a", "b")]
        make_trainer(tmp_path / "again", second, max_steps=30, **common).train(
            resume_from_checkpoint=str(tmp_path / "checkpoint-20")
        )
    for cb in second:
        np.testing.assert_array_equal(cb.forecaster.observations().end, np.arange(1, 31))


def _hook_raises(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected hook failure")


@pytest.mark.slow
def test_a_failing_loss_hook_falls_back_to_window_means(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scaleforecast.callbacks.hf as hf_mod

    monkeypatch.setattr(hf_mod, "_output_loss", _hook_raises)
    cb = HFLossForecast(refit_every=5, flush_every=5, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [cb], max_steps=30, logging_steps=2)
        trainer.train()
    assert trainer.state.global_step == 30  # the fault neither stopped nor broke training
    reports = [w for w in caught if "injected" in str(w.message)]
    assert len(reports) == 1, [str(w.message) for w in reports]
    # The per-step source died; the logged window means took over and still forecast.
    assert cb.mode == "window"
    assert cb.forecast is not None and cb.forecast.ok


def test_resolution_is_validated() -> None:
    with pytest.raises(ValueError, match="resolution"):
        HFLossForecast(resolution="token")  # type: ignore[arg-type]


@pytest.mark.slow
def test_example_runs(tmp_path: Path) -> None:
    """``examples/hf_trainer.py`` end to end, shortened: it prints the forecasts against the actual final loss."""
    import sys

    from procs import run_group

    example = Path(__file__).resolve().parent.parent / "examples" / "hf_trainer.py"
    proc = run_group([sys.executable, str(example), "--steps", "60", "--out", str(tmp_path)], timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "actual final loss" in proc.stdout
    assert "fitted up to step" in proc.stdout
    assert _event_dirs(tmp_path / "runs")


@pytest.mark.slow
def test_loss_outside_the_model_falls_back_to_window_means(tmp_path: Path) -> None:
    """With label smoothing the Trainer computes the loss itself, so the model returns none: the per-step
    source sees nothing and the logged window means take over (with a warning when ``"step"`` was asked)."""
    cb = HFLossForecast(refit_every=5, flush_every=5, writer=False, resolution="step")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [cb], max_steps=40, logging_steps=2, label_smoothing_factor=0.1)
        trainer.train()
    assert trainer.state.global_step == 40
    assert cb.mode == "window"
    assert any("using the logged window means" in str(w.message) for w in caught)
    obs = cb.forecaster.observations()
    np.testing.assert_array_equal(obs.end - obs.start + 1, 2)
    assert cb.forecast is not None and cb.forecast.ok


@pytest.mark.slow
def test_a_compute_loss_that_adds_to_the_models_loss_is_followed_as_logged(tmp_path: Path) -> None:
    """A ``compute_loss`` that adds a term to the model's own loss (an auxiliary loss, distillation): the
    forward hook read the model's loss, 1.0 below the loss the Trainer trains and logs, and forecast it in
    silence (a target picked from the logs judged against another number). The first logged window shows
    it: the window means take over, on a history started again, with a warning."""
    from transformers import Trainer

    class PlusOne(Trainer):
        def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kw: Any) -> Any:
            outputs = model(**inputs)
            loss = outputs.loss + 1.0
            return (loss, outputs) if return_outputs else loss

    cb = HFLossForecast(refit_every=5, flush_every=5, writer=False)
    recorder = LogRecorder()
    # logged every 10 updates, flushed every 5: the flush that finds the mismatch holds model losses too
    plain = make_trainer(tmp_path, [cb, recorder], max_steps=60, logging_steps=10, report_to="none")
    trainer = PlusOne(
        model=plain.model, args=plain.args, train_dataset=plain.train_dataset, callbacks=[cb, recorder]
    )
    recorder.trainer = trainer
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    said = [str(w.message) for w in caught if "the loss the Trainer logs" in str(w.message)]
    assert len(said) == 1 and "a compute_loss that adds to it" in said[0], [str(w.message) for w in caught]
    assert cb.mode == "window"
    obs = cb.forecaster.observations()
    logged = dict(recorder.logs)
    np.testing.assert_array_equal(obs.end - obs.start + 1, 10)  # window means only, none of the model's
    assert len(obs.y) >= 4 and all(
        logged[int(e)] == pytest.approx(y, rel=1e-6) for e, y in zip(obs.end, obs.y, strict=True)
    )


@pytest.mark.slow
def test_norms_the_trainer_clipped_are_said_in_the_trainers_terms(tmp_path: Path) -> None:
    """``track_grad_norm=True`` under the Trainer's clipping: the warning told an HF user to call
    ``step(loss, grad_norm=norm)``, which only a plain loop has. It speaks of ``max_grad_norm``."""
    cb = HFLossForecast(refit_every=10, flush_every=10, writer=False, track_grad_norm=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(
            tmp_path, [cb], max_steps=30, logging_steps=5, report_to="none", max_grad_norm=0.5
        ).train()
    said = [str(w.message) for w in caught if "gradient norms read after" in str(w.message)]
    assert len(said) == 1 and "max_grad_norm=0" in said[0] and "grad_norm=norm" not in said[0], said


@pytest.mark.slow
def test_a_model_returning_a_tuple_keeps_per_step_losses(tmp_path: Path) -> None:
    """With ``return_dict=False`` the model returns ``(loss, logits, ...)`` and the Trainer reads ``outputs[0]``:
    the hook reads it there too (it fell back to the logged window means)."""
    cb = HFLossForecast(refit_every=5, flush_every=5, writer=False, resolution="step")
    recorder = LogRecorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = make_trainer(tmp_path, [cb, recorder], max_steps=20, logging_steps=5, report_to="none")
        recorder.trainer = trainer
        model, plain = trainer.model, trainer.model.forward

        @functools.wraps(plain)
        def as_tuple(*args: Any, **kwargs: Any) -> Any:
            return plain(*args, **{**kwargs, "return_dict": False})

        model.forward = as_tuple
        trainer.train()
    assert cb.mode == "step", [str(w.message) for w in caught]
    obs = cb.forecaster.observations()
    np.testing.assert_array_equal(obs.end, np.arange(1, 21))
    np.testing.assert_array_equal(obs.start, obs.end)
    # the logged window means are the means of the per-step losses seen
    logged = dict(recorder.logs)
    np.testing.assert_allclose(obs.y[:5].mean(), logged[5], rtol=1e-4)


@pytest.mark.slow
def test_per_step_path_sees_nan_that_hf_logs_hide(tmp_path: Path) -> None:
    """HF's ``logging_nan_inf_filter`` keeps NaN out of ``logs``; the per-step source still counts them, and
    the default health checks stop the run once they persist (8 observations, seen at the next flush). That
    stop saves no checkpoint of the lost weights: one did, and ``save_total_limit=1`` rotated the last good one
    out (a resume then loaded NaN weights)."""
    cb = HFLossForecast(refit_every=5, flush_every=5, writer=False)
    recorder = LogRecorder()
    nan_from = 25

    def poison(module: Any, args: Any, output: Any) -> Any:  # injected fault: the loss turns NaN
        if module.training and recorder.trainer.state.global_step >= nan_from - 1:
            output.loss = output.loss * float("nan")
        return output

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = make_trainer(
            tmp_path,
            [cb, recorder],
            max_steps=40,
            logging_steps=5,
            report_to="none",
            save_strategy="steps",
            save_steps=5,  # the stop at 35 falls on a save step: HF's own save there is called off too
            save_total_limit=1,
        )
        recorder.trainer = trainer
        trainer.model.register_forward_hook(poison)
        trainer.train()
    assert trainer.state.global_step == cb.stopped_at == 35
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-30"]
    assert "nonfinite" in (cb.stop_reason or "")
    assert all(math.isfinite(loss) for _, loss in recorder.logs)
    assert cb.forecaster.n_nonfinite == 35 - nan_from + 1
    assert cb.forecaster.last_step == 35


@pytest.mark.multiprocess
def test_a_stopped_job_under_torchrun_exits_cleanly(tmp_path: Path) -> None:
    """Two ranks stop on the forecast and end as a clean script does (the process group destroyed): the
    plugin's last collective and the work handles it keeps leave nothing behind that hangs or aborts the
    exit. (A script that exits with its process group alive races the backend's worker thread at exit, with
    or without the plugin: ``benchmarks/exit_race.py`` measures how often.)"""
    from procs import TESTS, run_group, torchrun

    for i in range(2):
        cmd = torchrun(TESTS / "hf_stop_exit_worker.py", str(tmp_path / str(i)), "--destroy")
        proc = run_group(cmd, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "terminate called" not in proc.stderr
        assert proc.stdout.count("rank stopped at") == 2


@pytest.mark.slow
def test_each_trial_of_an_optuna_search_has_a_tensorboard_run_of_its_own(tmp_path: Path) -> None:
    """HF names a search's trials for Ray only: with ``report_to=["tensorboard"]`` every trial of an Optuna search
    went into HF's one run, and the forecast lines of the trials ran back and forth over each other there (the
    custom-scalar chart zigzagged from the last step back to the first at each trial). Each trial's forecasts
    now go to a run of their own."""
    pytest.importorskip("optuna")
    from hf_worker import tiny_gpt2, training_args
    from transformers import Trainer

    cb = HFLossForecast(refit_every=5, flush_every=5, verbose=False)
    text = ByteChunks(stdlib_text(100_000))
    trainer = Trainer(
        model_init=lambda trial=None: tiny_gpt2(),
        args=training_args(tmp_path, max_steps=30),
        train_dataset=text,
        eval_dataset=text,
        callbacks=[cb],
    )
    optuna_search(trainer, lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 3e-3)})
    runs: dict[Path, list[int]] = {}
    for events in tmp_path.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events.parent))
        acc.Reload()
        if "forecast/final_loss" in acc.Tags()["scalars"]:
            runs[events.parent] = [e.step for e in acc.Scalars("forecast/final_loss")]
    assert len(runs) == 2, runs
    for steps in runs.values():
        assert steps == sorted(steps) and steps[-1] == 30, runs


@pytest.mark.multiprocess
def test_an_optuna_search_under_torchrun_prunes_on_rank_zero_and_goes_on(tmp_path: Path) -> None:
    """Under ``torchrun`` HF runs the Optuna study on rank 0 and each trial in a plain loop on the others, which
    ask ``compute_objective`` too: a pruned trial raised ``TrialPruned`` there, uncaught, rank 1 died and rank 0
    failed the next trial in its broadcast. The other ranks get the objective; rank 0 prunes."""
    pytest.importorskip("optuna")
    from procs import TESTS, run_group, torchrun

    proc = run_group(torchrun(TESTS / "hf_search_worker.py", str(tmp_path)), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "states: PRUNED COMPLETE" in proc.stdout and proc.stdout.count("rank done") == 2, proc.stdout[
        -3000:
    ]


@pytest.mark.slow
def test_a_run_interrupted_out_of_train_is_recorded_as_ended_early(tmp_path: Path) -> None:
    """Ctrl-C (or any exception) out of ``trainer.train()``: HF calls no callback event on an exception, so the
    run stayed "running" in its sweep (a reference for a day) and its TensorBoard run unclosed. At the
    interpreter's exit its end is recorded where it got to."""
    from procs import run_group

    script = f"""
import warnings
warnings.simplefilter("ignore")
from transformers import TrainerCallback
from hf_worker import make_trainer
from scaleforecast.callbacks import HFLossForecast
from scaleforecast.decision import SweepStopper

class Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 30:
            raise KeyboardInterrupt

stopper = SweepStopper({str(tmp_path / "s.sqlite")!r}, "run", sweep="s")
cb = HFLossForecast(listeners=[stopper], flush_every=5, writer=False)
make_trainer({str(tmp_path)!r}, [cb, Interrupt()], max_steps=60, report_to="none").train()
"""
    proc = run_group([sys.executable, "-c", script], timeout=300)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr, proc.stderr[-3000:]
    records = SQLiteRegistry("s", tmp_path / "s.sqlite").records()
    assert [(r.run_id, r.state) for r in records] == [("run", RunState.STOPPED)], records


@pytest.mark.slow
def test_training_again_after_an_interrupted_train_starts_a_new_run(tmp_path: Path) -> None:
    """In a notebook: ``trainer.train()`` interrupted (an exception, Ctrl-C: HF tells its callbacks nothing),
    then trained again with the same callback. The interrupted run is ended where it got to (a sweep records
    it), and the new one starts afresh, not on the old one's history."""
    stopper = SweepStopper(tmp_path / "s.sqlite", sweep="s", finish_timeout_s=30)
    cb = HFLossForecast(listeners=[stopper], flush_every=5, writer=False, verbose=False)

    class Interrupt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 30:
                raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            make_trainer(tmp_path / "a", [cb, Interrupt()], max_steps=60, report_to="none").train()
        interrupted = stopper.run_id
        make_trainer(tmp_path / "b", [cb], max_steps=20, report_to="none").train()
    assert cb.forecaster.n_observations <= 20 and cb.forecaster.last_step == 20
    records = sorted((r.state.value, r.run_id) for r in SQLiteRegistry("s", tmp_path / "s.sqlite").records())
    assert (
        records == [("finished", stopper.run_id), ("stopped", interrupted)] and stopper.run_id != interrupted
    )


@pytest.mark.slow
def test_a_stopped_trial_of_an_optuna_search_ends_pruned(tmp_path: Path) -> None:
    """``hyperparameter_search(backend="optuna")``: a trial the callback stopped was recorded COMPLETE, its value
    the eval loss of a part-trained model, which the sampler learns from. With ``compute_objective=
    cb.pruning_objective()`` it ends PRUNED, with the stop's reason; a trial that ran to its end is complete."""
    optuna = pytest.importorskip("optuna")
    from hf_worker import tiny_gpt2, training_args
    from transformers import Trainer

    cb = HFLossForecast(
        target_loss=0.5, confidence=0.9, refit_every=5, flush_every=5, writer=False, verbose=False
    )
    text = ByteChunks(stdlib_text(200_000))
    trainer = Trainer(
        model_init=lambda trial=None: tiny_gpt2(),
        args=training_args(tmp_path, max_steps=MAX_STEPS, report_to="none"),
        train_dataset=text,
        eval_dataset=text,
        callbacks=[cb],
    )
    targets = iter([0.5, None])

    def space(trial: Any) -> dict[str, Any]:
        # the first trial cannot reach 0.5, the second has no target
        cb.session.stop = cb.session.stop.model_copy(update={"target_loss": next(targets)})
        return {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-3)}

    trials = optuna_search(trainer, space, tmp_path / "study.db", cb.pruning_objective())
    states = [t.state for t in trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE], trials
