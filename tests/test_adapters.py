"""One behaviour suite for the three adapters: Lightning (``LossForecast``), the HF ``Trainer``
(``HFLossForecast``) and plain loops (``LossForecastSession``), on the same tiny problem (``adapter_kit``).

Every scenario runs against every adapter with the same assertions. Where the adapters must differ, the test
says why: where the TensorBoard files go (each framework has its own run directory), and how the two-process
jobs are launched (Lightning's ``ddp_fork`` starts its own workers; HF and plain loops run under torchrun).
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tensorboard")

from adapter_kit import (
    ADAPTERS,
    Plan,
    Run,
    bad_step_state,
    future_state,
    garbled_state,
    no_forecaster_state,
    older_state,
    train,
)
from conftest import TwoRanks, framework_or_skip
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from scaleforecast.events import Event, TrainingHealthError

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]

COMMON: dict[str, Any] = {"flush_every": 5, "refit_every": 5, "verbose": False}
NAMES = {"lightning": "LossForecast", "hf": "HFLossForecast", "loop": "LossForecastSession"}


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    framework_or_skip(request.param)
    return request.param


def _fit(adapter: str, root: Path, plan: Plan) -> tuple[Run, list[str]]:
    """Train, and return the run with the messages of every warning the plugin raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(adapter, root, plan)
    return run, [str(w.message) for w in caught if "Forecast" in str(w.message)]


def test_a_trained_callback_copies_and_pickles_with_its_history(adapter: str, tmp_path: Path) -> None:
    """Lightning's ``ddp_spawn`` pickles the callbacks at each launch (a ``trainer.test`` after a fit too), and
    HF's and Lightning's copies of a trainer deep-copy them: once trained, a callback failed both (a lambda of
    the spike detector's fitted law, the TensorBoard sink's lock). The copy keeps the history."""
    import copy
    import pickle

    run, _ = _fit(adapter, tmp_path, Plan(steps=40, kwargs=dict(COMMON)))
    seen = run.cb.forecaster.n_observations
    assert seen > 0 and run.cb.forecast is not None
    for copied in (copy.deepcopy(run.cb), pickle.loads(pickle.dumps(run.cb))):
        assert copied.forecaster.n_observations == seen
        assert copied.forecast is not None and copied.forecast.final == run.cb.forecast.final


def _forecast_dir(root: Path) -> Path:
    """The one run directory holding the forecast (each framework has its own place for it)."""
    dirs = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
    found = [d for d in dirs if "forecast/final_loss" in _acc(d).Tags()["scalars"]]
    assert len(found) == 1, dirs
    return found[0]


def _acc(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _texts(acc: EventAccumulator, tag: str) -> list[bytes]:
    return [tensor_util.make_ndarray(t.tensor_proto).item() for t in acc.Tensors(f"{tag}/text_summary")]


# ------------------------------------------------------------------------------------ TensorBoard, stop
def test_forecast_in_tensorboard_printed_and_stop_recorded(
    adapter: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same tags, read back from the event files, the same console lines, and an unreachable target
    stops the run at a flush, recorded as an ``early_stop`` event. Where the files go differs by design: in
    Lightning's ``TensorBoardLogger`` run, in the run of HF's own TensorBoard callback (one run directory with
    the Trainer's curves), and in the plain loop's ``writer=``."""
    from scaleforecast.advice import ScheduleAdvisor

    kwargs = {
        **COMMON,
        "verbose": True,
        "min_fraction": 0.3,
        "log_figures_every": 1,
        "advisor": ScheduleAdvisor(),
    }
    run, warned = _fit(adapter, tmp_path, Plan(steps=60, shift=1.0, target_loss=0.5, kwargs=kwargs))
    cb = run.cb
    assert cb.errors == {} and warned == []
    assert cb.stopped_at is not None and cb.stopped_at % 5 == 0 and 18 <= cb.stopped_at < 60
    assert run.steps_run == cb.stopped_at  # stopped gracefully, at the flush that decided
    assert "cannot reach" in (cb.stop_reason or "")

    acc = _acc(_forecast_dir(tmp_path))
    scalars = set(acc.Tags()["scalars"])
    for tag in (
        "forecast/final_loss",
        "forecast/lower",
        "forecast/upper",
        "forecast/std",
    ):
        assert tag in scalars, tag
    for tag in ("forecast/p_miss_target", "law/L0", "law/C"):
        assert tag in scalars, tag
    assert "advice/planned_final" in scalars  # the advisor, after each refit
    if adapter == "hf":  # one run directory with the Trainer's own curves
        assert "train/loss" in scalars
    final = acc.Scalars("forecast/final_loss")
    assert all(e.step % 5 == 0 for e in final) and final[-1].step == cb.stopped_at
    assert math.isclose(final[-1].value, cb.forecast.final.loss, rel_tol=1e-6)
    assert acc.Scalars("forecast/lower")[-1].value < final[-1].value < acc.Scalars("forecast/upper")[-1].value
    assert "forecast/curve" in acc.Tags()["images"]
    # the observed, forecast, target and stop lines, and the chart layout, in runs beside the forecast's
    beside = _forecast_dir(tmp_path) / "scaleforecast"
    assert [e.step for e in _acc(beside / "observed").Scalars("forecast/observed_vs_forecast")] == list(
        range(5, cb.stopped_at + 1, 5)
    )
    assert "custom_scalars__config__" in _acc(beside / "forecast").Tags()["tensors"]
    assert {e.value for e in _acc(beside / "target").Scalars("forecast/observed_vs_forecast")} == {0.5}
    assert [e.step for e in _acc(beside / "early_stop").Scalars("forecast/observed_vs_forecast")] == [
        cb.stopped_at
    ] * 2
    assert b"cannot reach" in _texts(acc, "events/early_stop")[0]

    out = capsys.readouterr().out
    said = re.findall(
        rf"^{NAMES[adapter]}: step (\d+): (forecast final loss [\d.]+ \[[-\d.]+, [-\d.]+\] at step 60|"
        r"too early to forecast: the loss at step 60 could be anywhere in \[[-\d.]+, [-\d.]+\])",
        out,
        re.M,
    )
    # each forecast with a final loss printed, a vague one as too early; TensorBoard draws as numbers the ones
    # printed as forecasts (it drew the vague ones' means too)
    printed = [int(s) for s, _ in said]
    assert printed == sorted(set(printed)) and set(printed) <= {
        e.step for e in acc.Scalars("forecast/n_points")
    }
    assert [int(s) for s, what in said if what.startswith("forecast")] == [e.step for e in final]
    # the stop says its reason in the same stream: the logged event goes to stderr, maybe to another file, and
    # came after "the reason is above" under torchrun's --tee
    assert f"{NAMES[adapter]}: stopping at step {cb.stopped_at}: forecast final loss" in out
    assert "cannot reach" in out and "the reason is above" not in out


# --------------------------------------------------------------------------------------------- planning
def test_plan_follows_the_lrs_used_and_replans_on_a_change(adapter: str, tmp_path: Path) -> None:
    """The planned schedule is the run's own (looked ahead before training), and an LR change behind the
    scheduler's back (halved after update 12) re-plans it: in the end the plan is the LRs the updates used."""
    run, warned = _fit(adapter, tmp_path, Plan(steps=40, halve_lr_at=12, kwargs={**COMMON, "writer": False}))
    from adapter_kit import Regression, optimizer_and_scheduler
    from scaleforecast.integrations.lookahead import lookahead_lrs

    opt, sched = optimizer_and_scheduler(Regression(), 40)
    original = lookahead_lrs(opt, sched, 40)
    planned = run.cb.forecaster.schedule
    assert run.cb.errors == {} and warned == []
    np.testing.assert_allclose(planned, run.used_lrs, rtol=1e-9)
    np.testing.assert_allclose(planned[:12], original[:12], rtol=1e-9)
    assert math.isclose(planned[12], 0.5 * original[12], rel_tol=1e-9)
    assert np.all(planned[12:] < original[12:])


# ------------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def first_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Per adapter, one 40-step run with a checkpoint after update 20, trained once for the resume tests.
    ``flush_every=7``: at the checkpoint, updates 15..20 are still buffered and must travel in it."""
    cache: dict[str, Run] = {}

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, adapter: str) -> Run:
            root = tmp_path_factory.mktemp(f"first-{adapter}")
            plan = Plan(steps=40, ckpt_at=20, kwargs={**COMMON, "flush_every": 7, "writer": False})
            run, _ = _fit(adapter, root, plan)
            self[adapter] = run
            return run

    return Lazy(cache)


@pytest.mark.parametrize("saved", ["same", "older", "future", "garbled", "no forecaster", "bad step"])
def test_resume(adapter: str, tmp_path: Path, first_runs: dict[str, Run], saved: str) -> None:
    """Resuming from the checkpoint keeps the history (also from the format of the first release); a state of
    an unknown version or a garbled one costs the history, with one warning, never the run (a forecaster's
    state of ``None`` and a step that is no number raised out of the resume, and every restart failed)."""
    first = first_runs[adapter]
    assert first.checkpoint is not None and first.checkpoint.exists()
    doctor = {
        "same": lambda s: s,
        "older": older_state,
        "future": future_state,
        "garbled": garbled_state,
        "no forecaster": no_forecaster_state,
        "bad step": bad_step_state,
    }[saved]
    plan = Plan(
        steps=40, resume=first.checkpoint, doctor=doctor, kwargs={**COMMON, "flush_every": 7, "writer": False}
    )
    run, warned = _fit(adapter, tmp_path, plan)
    obs = run.cb.forecaster.observations()
    assert run.steps_run == 40 and run.cb.errors == {}
    about_state = [w for w in warned if "saved forecast state" in w]
    if saved in ("same", "older"):
        assert about_state == []
        np.testing.assert_array_equal(obs.end, np.arange(1, 41))
        np.testing.assert_allclose(obs.y[:20], first.cb.forecaster.observations().y[:20], rtol=1e-6)
        np.testing.assert_allclose(run.cb.forecaster.schedule[20:], run.used_lrs, rtol=1e-9)
    else:
        assert len(about_state) == 1, warned
        np.testing.assert_array_equal(obs.end, np.arange(21, 41))
    assert run.cb.forecast is not None


# ---------------------------------------------------------------------------------------------- faults
class _ExplodingWriter:
    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")


def test_injected_fitter_fault(adapter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fitter raises at every refit: reported once, switched off, training goes on to the end."""

    def explode(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("fitter exploded")

    monkeypatch.setattr("scaleforecast.forecaster.fit", explode)
    kwargs = {**COMMON, "min_fraction": 0.0, "writer": False}
    run, warned = _fit(adapter, tmp_path, Plan(steps=30, target_loss=1e-3, kwargs=kwargs))
    assert run.steps_run == 30 and run.cb.stopped_at is None
    assert len([w for w in warned if "fitter exploded" in w]) == 1, warned
    assert list(run.cb.errors) == ["forecaster"]


def test_injected_writer_fault(adapter: str, tmp_path: Path) -> None:
    """The TensorBoard writer raises: reported once, the forecast goes on without it."""
    run, warned = _fit(adapter, tmp_path, Plan(steps=30, kwargs={**COMMON, "writer": _ExplodingWriter()}))
    assert run.steps_run == 30
    assert len([w for w in warned if "disk full" in w]) == 1, warned
    assert run.cb.forecast is not None and run.cb.forecast.ok


def test_nan_storm(adapter: str, tmp_path: Path) -> None:
    """From update 25 on every loss is NaN (the weights too): every one is counted, none is fitted, the
    default health checks report it, the plugin itself keeps running."""
    seen: list[Event] = []
    kwargs = {
        **COMMON,
        "on_event": seen.append,
        "action": "warn",
        "writer": False,
    }
    run, _ = _fit(adapter, tmp_path, Plan(steps=40, nan_from=25, kwargs=kwargs))
    assert run.steps_run == 40 and run.cb.errors == {}
    assert run.cb.forecaster.n_nonfinite == 16 and run.cb.forecaster.last_step == 40
    assert run.cb.forecaster.observations().end.max() == 24
    assert any(e.kind == "nonfinite" and e.step == 25 for e in seen)


@pytest.mark.parametrize("detectors", [None, []])
def test_nan_storm_stops_by_default(adapter: str, tmp_path: Path, detectors: list | None) -> None:
    """With the defaults a run whose every loss is NaN from update 25 on is stopped once the NaNs persist (8
    observations), and says why; ``detectors=[]`` switches the health checks off and it trains on."""
    kwargs: dict[str, Any] = {**COMMON, "writer": False}
    if detectors is not None:
        kwargs["detectors"] = detectors
    run, _ = _fit(adapter, tmp_path, Plan(steps=60, nan_from=25, kwargs=kwargs))
    if detectors is None:
        assert run.cb.stopped_at == run.steps_run == 35, (run.cb.stopped_at, run.steps_run)
        assert "nonfinite" in (run.cb.stop_reason or ""), run.cb.stop_reason
    else:
        assert run.cb.stopped_at is None and run.steps_run == 60


class _CriticalAt:
    """A detector that raises one critical event at update 17."""

    def check(self, batch: Any, view: Any) -> list[Event]:
        if 17 in batch.steps:
            return [Event(kind="divergence", step=17, severity="critical", message="diverged")]
        return []


@pytest.mark.parametrize("action", ["stop", "warn", "raise"])
def test_action_policy(adapter: str, tmp_path: Path, action: str) -> None:
    """One policy for every critical event: ``stop`` ends training at the flush that saw it, ``warn`` only
    reports it, ``raise`` raises ``TrainingHealthError`` out of the training call."""
    seen: list[Event] = []
    kwargs = {
        **COMMON,
        "detectors": [_CriticalAt()],
        "action": action,
        "on_event": seen.append,
        "writer": False,
    }
    plan = Plan(steps=30, kwargs=kwargs)
    if action == "raise":
        with pytest.raises(TrainingHealthError, match="diverged"):
            _fit(adapter, tmp_path, plan)
        return
    run, _ = _fit(adapter, tmp_path, plan)
    assert [e.kind for e in seen] == ["divergence"]
    if action == "stop":
        assert run.cb.stopped_at == run.steps_run == 20
        assert "divergence @ step 17" in (run.cb.stop_reason or "")
    else:
        assert run.cb.stopped_at is None and run.steps_run == 30


# -------------------------------------------------------------------------------------------- arguments
def _make(adapter: str, **kwargs: Any) -> Any:
    if adapter == "lightning":
        from scaleforecast.callbacks import LossForecast

        return LossForecast(**kwargs)
    if adapter == "hf":
        from scaleforecast.callbacks import HFLossForecast

        return HFLossForecast(**kwargs)
    import torch
    from scaleforecast.callbacks import LossForecastSession

    sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    # a plain loop starts at construction: no TensorBoard files in the working directory
    fc = LossForecastSession(sgd, **{"total_steps": 100, "writer": False, **kwargs})
    _OPEN_LOOPS.append(fc)
    return fc


# plain-loop sessions made by _make: closed after each test, as a loop closes its session
_OPEN_LOOPS: list[Any] = []


@pytest.fixture(autouse=True)
def _close_loops() -> Any:
    yield
    while _OPEN_LOOPS:
        _OPEN_LOOPS.pop().close()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"target_loss": "3.1"}, r"target_loss: input should be a valid number, got '3.1' \(str\)"),
        ({"total_steps": "1000"}, r"total_steps: input should be a valid integer, got '1000' \(str\)"),
        ({"target_loss": float("inf")}, "target_loss: input should be a finite number"),
        ({"target_loss": 0.0}, "target_loss: input should be greater than 0"),
        ({"confidence": 1.5}, "confidence: input should be less than 1"),
        ({"flush_every": 0}, "flush_every: input should be greater than or equal to 1"),
        ({"level": 2}, "level"),
        ({"action": "explode"}, "action"),
        ({"law": "cubic"}, "law"),
        ({"track_grad_norm": "yes"}, "track_grad_norm"),
        ({"schedule": "cosine:peak=-1,total=10"}, "schedule"),
        ({"schedule": "constant:peak=1e-3,total=10", "total_steps": 20}, "schedule: has 10 steps"),
        ({"detectors": [object()]}, r"detectors\[0\]: object has no check"),
        ({"listeners": [object()]}, r"listeners\[0\]: object has no on_forecast"),
        ({"writer": object()}, "writer: object is not SummaryWriter-like"),
        ({"forecaster_config": {"refit_every": 0}}, "refit_every"),
        # each of these was ignored with no word, or came out as a TypeError of an internal class
        ({"law": "mpl", "forecaster_config": {}}, "forecaster_config: given with law, which it replaces"),
        ({"refit_every": 7, "forecaster_config": {}}, "forecaster_config: given with refit_every"),
        ({"flush_evry": 10}, r"flush_evry: \w+ takes no such argument \(did you mean flush_every\?\)"),
        ({"total_step": 200}, r"total_step: .*did you mean total_steps\?"),
        ({"detectors": object()}, r"detectors: expected a list, got object"),
    ],
)
def test_arguments_are_validated_up_front(adapter: str, kwargs: dict[str, Any], named: str) -> None:
    """Every argument is checked at construction, with a message that names it."""
    with pytest.raises(ValueError, match=named):
        _make(adapter, **kwargs)


def test_an_argument_of_another_adapter_is_named_as_such() -> None:
    """``LossForecast(name=...)`` (an argument of HFLossForecast's) was a TypeError about TrainingSession."""
    from scaleforecast.callbacks import HFLossForecast, LossForecast

    with pytest.raises(ValueError, match="name: an argument of HFLossForecast, not of LossForecast"):
        LossForecast(name="x")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="scheduler_every: an argument of LossForecastSession, not of HF"):
        HFLossForecast(scheduler_every=2)  # type: ignore[call-arg]


def test_a_plain_loops_optimizer_scheduler_and_param_group_are_checked_up_front() -> None:
    """A param group the optimizer lacks passed construction with a warning, and the first optimizer.step()
    raised "OrderedDict mutated during iteration" out of torch (the plugin's hook removed itself while torch
    went through its hooks); a schedule spec in the scheduler's place ran on with the LR held."""
    import torch
    from scaleforecast.callbacks import LossForecastSession

    sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"param_group: 3, but the optimizer has 1 param group\(s\)"):
        LossForecastSession(sgd, total_steps=100, param_group=3, writer=False)
    with pytest.raises(
        ValueError, match=r"scheduler: got the string 'cosine:.*'; a schedule spec goes in schedule="
    ):
        LossForecastSession(sgd, "cosine:peak=0.1,total=100", total_steps=100, writer=False)  # type: ignore[arg-type]


def test_a_failure_inside_the_optimizer_hook_never_reaches_the_optimizer_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hook that reads each update's LR (and gradient norm) runs inside the user's optimizer.step(): when
    it failed, it removed itself while torch was going through the optimizer's hooks, and the loop's next hook
    made optimizer.step() raise "OrderedDict mutated during iteration". It is reported once and training goes
    on (a fault injected into the gradient-norm read)."""
    import torch
    from scaleforecast.callbacks import LossForecastSession
    from scaleforecast.integrations import session as session_module

    def broken(optimizer: Any) -> Any:
        raise RuntimeError("injected")

    monkeypatch.setattr(session_module, "_total_norm", broken)
    model = torch.nn.Linear(2, 1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = LossForecastSession(
            sgd, total_steps=60, flush_every=10, track_grad_norm=True, writer=False, verbose=False
        )
        for n in range(1, 61):
            model(torch.ones(1, 2)).sum().backward()
            sgd.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    assert fc.steps == 60 and list(fc.errors) == ["LR capture"], fc.errors
    assert len([w for w in caught if "injected" in str(w.message)]) == 1


def test_a_logger_passed_as_the_writer_is_told_to_pass_its_experiment(adapter: str, tmp_path: Path) -> None:
    """Fabric's (and Lightning's) TensorBoard logger wraps its SummaryWriter: passed as ``writer=``, it was
    refused as not SummaryWriter-like with no word of the writer inside it."""
    from lightning.fabric.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path))
    with pytest.raises(
        ValueError, match=r"TensorBoardLogger is not SummaryWriter-like .*pass its \.experiment"
    ):
        _make(adapter, writer=logger)
    _make(adapter, writer=logger.experiment)


def test_a_state_of_another_version_never_raises(adapter: str) -> None:
    """Loading a state this version cannot read costs the history, with one warning, never the run."""
    cb = _make(adapter)
    with pytest.warns(RuntimeWarning, match="saved forecast state is of another version"):
        cb.load_state_dict({"version": 99})
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        cb.load_state_dict({"version": 99})  # once: the same message is not repeated
        cb.load_state_dict({**cb.state_dict()})  # its own format loads
    assert not again


def test_saving_the_state_never_raises(adapter: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint must not fail because of the plugin: a failure saves an empty state, reported once."""
    cb = _make(adapter)

    def boom() -> None:
        raise OSError("unreadable buffer")

    monkeypatch.setattr(cb.session, "state_dict", boom)
    with pytest.warns(RuntimeWarning, match="checkpoint state failed"):
        assert cb.state_dict() == {}
    if adapter == "hf":  # HF saves it through ExportableState
        assert cb.state()["attributes"] == {}


def test_a_plain_loop_must_say_its_length() -> None:
    """The trainers know their length (``max_steps``); a plain loop must say it."""
    import torch
    from scaleforecast.callbacks import LossForecastSession

    sgd = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps: a plain loop must say"):
        LossForecastSession(sgd)
    with pytest.raises(ValueError, match="optimizer: expected a torch optimizer"):
        LossForecastSession(object(), total_steps=10)  # type: ignore[arg-type]
    fc = LossForecastSession(sgd, schedule="constant:peak=0.1,total=10", writer=False)
    assert fc.session.planner.length(None) == 10
    fc.close()


def test_numbers_of_any_kind_are_accepted(adapter: str) -> None:
    cb = _make(adapter, target_loss=np.float32(3.1), total_steps=np.int64(1000), flush_every=1e1)
    assert cb.session.stop.target_loss == pytest.approx(3.1) and cb.session.config.total_steps == 1000
    with pytest.raises(ValueError, match=r"health: .* takes no such argument"):
        _make(adapter, health=[])


def test_imports_stay_lazy() -> None:
    """Importing the package imports no framework; importing one adapter never imports another."""
    code = (
        "import sys, scaleforecast.monitor, scaleforecast.callbacks\n"
        "heavy = {'torch', 'lightning', 'transformers', 'tensorboard', 'matplotlib'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from scaleforecast.callbacks import LossForecastSession\n"
        "assert not {'lightning', 'transformers'} & set(sys.modules), 'the plain loop pulled a framework'\n"
        "from scaleforecast.callbacks import LossForecast\n"
        # lightning itself may pull in transformers; this package must not load its HF adapter
        "assert 'scaleforecast.callbacks.hf' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------ two ranks
def test_ranks_stop_together_on_the_mean_over_ranks(two_ranks: TwoRanks) -> None:
    """Rank 1's losses are 1.0 higher: the mean over ranks cannot reach the target, rank 0 alone could. Both
    ranks fit the same reduced values and stop at the same step, with identical state."""
    r0, r1 = two_ranks.ranks("stop")
    assert r0["errors"] == {} and r1["errors"] == {}
    assert r0["own_mean"] < 0.45 < r1["own_mean"]  # the ranks really disagree
    assert r0["stopped_at"] is not None and r0["stopped_at"] == r1["stopped_at"]
    assert r0["steps_run"] == r1["steps_run"] == r0["stopped_at"] < 100
    assert r0["stopped_at"] >= 30
    assert r0["reason"] == r1["reason"] and "cannot reach" in r0["reason"]
    assert r0["digest"] == r1["digest"]
    assert np.mean(r0["gaps"]) > 0.3  # the max over ranks carries rank 1's higher loss
    if two_ranks.adapter == "hf":  # the per-step values reduced over ranks average to HF's own gathered logs
        (end, y), logs = r0["observations"], r0["logs"]
        assert end == list(range(1, r0["stopped_at"] + 1)) and logs
        for step, loss in logs:
            assert np.mean(y[step - 5 : step]) == pytest.approx(loss, rel=1e-5), step
    deprecated = [
        line for line in two_ranks.stderr.splitlines() if "all_gather" in line and "deprecated" in line
    ]
    assert deprecated == []  # one collective per flush, through a current API
    parent = two_ranks.parent("stop")
    if two_ranks.adapter == "lightning":  # the launching process's object shows rank 0's result
        assert parent is not None and parent["stopped_at"] == r0["stopped_at"]
        assert parent["reason"] == r0["reason"] and parent["final"] is not None


@pytest.mark.parametrize("scenario", ["fault", "window-fault"])
def test_a_fault_on_one_rank_neither_hangs_nor_splits_the_decision(
    two_ranks: TwoRanks, scenario: str
) -> None:
    """Rank 1's own part of the plugin fails from update 7 on; a listener that only rank 0 hears (an Optuna
    trial on rank 0) prunes at half the run. Rank 1 keeps joining every collective: the job finishes in
    bounded time, both ranks stop at the same step, and rank 1 reports its own failure with its rank number.
    (``window-fault`` is the HF Trainer's logged-window source, which the other adapters do not have.)"""
    if scenario == "window-fault" and two_ranks.adapter != "hf":
        pytest.skip("logged window means are the HF Trainer's second source of losses")
    r0, r1 = two_ranks.ranks(scenario)
    length = 60 if scenario == "window-fault" else 40
    assert r0["stopped_at"] is not None and r0["stopped_at"] == r1["stopped_at"] < length
    assert r0["steps_run"] == r1["steps_run"] == r0["stopped_at"]
    # rank 1 tells the stop by rank 0's own reason, shared when the ranks agree to stop
    assert "pruned" in r0["reason"] and r1["reason"] == r0["reason"]
    assert r0["errors"] == {}
    (part, message), *others = r1["errors"].items()
    assert others == [] and "injected fault" in message
    name = NAMES[two_ranks.adapter]
    assert f"{name} (rank 1 of 2): {part} failed" in two_ranks.stderr
    assert f"{name} (rank 0 of 2)" not in two_ranks.stderr
    parent = two_ranks.parent(scenario)
    if parent is not None:  # Lightning's ddp_fork: the launching process's object shows rank 0's result
        assert parent["stopped_at"] == r0["stopped_at"]
    if scenario == "fault":  # the failing rank still received every flush, so it fitted the same data
        assert r0["digest"] == r1["digest"] and r1["observed"] == r0["observed"] == r0["stopped_at"]


def test_refits_late_on_one_rank_take_effect_at_the_same_step_on_both(two_ranks: TwoRanks) -> None:
    """Refits run in the background and each takes effect at the next flush. Rank 1's refits are made 30 ms
    slower (an injected fault), so it waits for them where rank 0 does not: both ranks must still hear the same
    forecasts, fitted on the same data, at the same steps, and end in the same state."""
    r0, r1 = two_ranks.ranks("late-refits")
    assert r0["errors"] == {} and r1["errors"] == {}
    assert r0["background"] and r1["background"]
    assert len(r0["heard"]) >= 5
    assert r0["heard"] == r1["heard"]
    for step, fitted_at, _ in r0["heard"][:-1]:
        assert fitted_at < step  # each took effect at a later flush than the one that started it
    assert r0["digest"] == r1["digest"]


@pytest.mark.multiprocess
def test_a_stopped_job_exits_cleanly() -> None:
    """Both ranks stop on the forecast and their processes end right after the plugin's last collective. The
    backend's worker thread must not be left to free that collective's tensors while the interpreter finalises
    (that aborted the process, and ``torchrun`` reported the stopped job as failed, in about half of such
    exits): three jobs, each must exit with status 0."""
    pytest.importorskip("torch")
    from procs import TESTS, run_group, torchrun

    for _ in range(3):
        proc = run_group(torchrun(TESTS / "stop_exit_worker.py"), timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "terminate called" not in proc.stderr
        assert proc.stdout.count("stopped at") == 2


def test_a_loop_that_raises_on_one_rank_ends_at_once_with_close_in_finally() -> None:
    """Rank 1 raises while rank 0 waits in DDP's all-reduce; rank 1's ``finally: fc.close()`` went into the
    last flush's collective, which rank 0 never reaches: the job hung until the process group's timeout (30
    minutes by default, 60 s here). It must end with rank 1's own error."""
    pytest.importorskip("torch")
    from procs import TESTS, run_group, torchrun

    proc = run_group(torchrun(TESTS / "stop_exit_worker.py", "--raise"), timeout=300)
    assert proc.returncode != 0
    assert "injected failure on rank 1" in proc.stderr, proc.stderr[-3000:]
    assert "Timed out" not in proc.stderr and "timed out" not in proc.stderr.lower(), proc.stderr[-3000:]


@pytest.mark.multiprocess
def test_a_loop_that_destroys_the_process_group_before_close_ends_cleanly() -> None:
    """``dist.destroy_process_group()`` before ``fc.close()``: the last flush's collective raised "Default process
    group has not been initialized" out of every rank (exit status 1), then the exit said the session "was never
    closed". Each rank ends without the collective, and rank 0 says once what was lost and why."""
    pytest.importorskip("torch")
    from procs import TESTS, run_group, torchrun

    proc = run_group(torchrun(TESTS / "stop_exit_worker.py", "--destroy-first"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("closed, stopped_at=None") == 2, proc.stdout[-3000:]
    assert proc.stderr.count("came after torch.distributed.destroy_process_group()") == 1, proc.stderr[-3000:]
    assert "never closed" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_ranks_that_step_unevenly_are_told_and_the_job_ends() -> None:
    """Rank 1 calls ``step()`` once more than rank 0 (a bug of the loop's): the flushes paired up and averaged
    other updates in silence, and ``close()`` hung (rank 1 went into the last flush alone). The ranks are told,
    and every rank joins the last flush."""
    pytest.importorskip("torch")
    from procs import TESTS, run_group, torchrun

    proc = run_group(torchrun(TESTS / "stop_exit_worker.py", "--uneven"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(" done") == 2
    assert proc.stderr.count("the ranks flushed other updates (rank 0: ") == 1, proc.stderr[-3000:]


def test_a_process_group_without_this_rank_is_a_clear_error() -> None:
    """``process_group=new_group([0])`` on every rank: rank 1 failed with torch's bare "Invalid process group
    specified"; it is told it is not in the group, and rank 0 that its group is a part of the job."""
    pytest.importorskip("torch")
    from procs import TESTS, run_group, torchrun

    proc = run_group(torchrun(TESTS / "stop_exit_worker.py", "--subgroup"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rank 1: process_group: this process (global rank 1) is not in it" in proc.stdout, proc.stdout
    assert "rank 0: built" in proc.stdout
    assert "process_group: 1 of the job's 2 processes" in proc.stderr


def test_an_accelerate_loop_reads_the_scheduler_accelerate_prepared(tmp_path: Path) -> None:
    """Accelerate's ``AcceleratedScheduler`` given to the plain-loop adapter: the look-ahead failed on the
    wrapper (no forecast, no stop, in silence but for one warning), and the inner scheduler, which Accelerate
    steps once per process at each update, was planned at one step per update. The plan must match the LR of
    every update, alone and on two processes, and a run resumed from Accelerate's checkpoint goes on from its
    history without a warning."""
    pytest.importorskip("accelerate")
    from procs import TESTS, run_group, torchrun

    worker = TESTS / "accelerate_worker.py"
    for mode in ("full", "--cut", "--resume"):
        proc = run_group([sys.executable, str(worker), str(tmp_path), mode], timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "plan ok" in proc.stdout and "warning" not in proc.stdout, proc.stdout[-3000:]
    assert "60 updates from 30, plan ok" in proc.stdout
    proc = run_group(torchrun(worker, str(tmp_path / "two")), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("of 2: 60 updates from 0, plan ok") == 2, proc.stdout[-3000:]
    assert "warning" not in proc.stdout and proc.stdout.count("forecast ") >= 2, proc.stdout[-3000:]


def test_plain_loop_example_runs(tmp_path: Path) -> None:
    """``examples/plain_loop.py``, shortened: a nanoGPT-style loop that prints its forecasts and writes them
    to TensorBoard."""
    from procs import run_group

    example = Path(__file__).resolve().parent.parent / "examples" / "plain_loop.py"
    proc = run_group([sys.executable, str(example), "--steps", "60", "--out", str(tmp_path)], timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^LossForecastSession: step \d+: forecast final loss", proc.stdout, re.M), proc.stdout
    assert "trained 60 steps" in proc.stdout
    assert "forecast/final_loss" in _acc(_forecast_dir(tmp_path)).Tags()["scalars"]


@pytest.mark.multiprocess
def test_a_session_built_before_the_process_group_says_so() -> None:
    """Built before ``init_process_group``, every process took itself for rank 0 of 1 and said nothing: each
    printed, wrote TensorBoard and decided alone (a rank that stopped alone crashed the other in DDP). Each
    now warns at its first flush."""
    pytest.importorskip("torch")
    from procs import TESTS, run_group, torchrun

    proc = run_group(torchrun(TESTS / "late_group_worker.py"), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        said = [line for line in proc.stdout.splitlines() if line.startswith(f"rank {rank}: ")]
        assert len(said) == 1 and "initialised (2 processes) after it was built" in said[0], proc.stdout


@pytest.mark.parametrize("ending", ["no close", "exception"])
def test_a_loop_that_never_closes_is_told_and_its_tensorboard_run_is_kept(
    tmp_path: Path, ending: str
) -> None:
    """A loop without ``fc.close()`` exited in silence: no word of the updates never forecast. It is said at exit,
    and the session is closed without a collective, its TensorBoard run kept. An uncaught exception out of the
    loop (its own, or a collective's when a peer died) skips ``close()`` too: the exit blamed the loop ("was
    never closed (call close() ...)") under the traceback that says why the run ended. Its run is ended and kept
    the same way, without the note."""
    from procs import run_group

    script = tmp_path / "no_close.py"
    script.write_text(
        "import sys, torch\n"
        "from scaleforecast.callbacks import LossForecastSession\n"
        "w = torch.nn.Parameter(torch.zeros(1))\n"
        "opt = torch.optim.SGD([w], lr=0.1)\n"
        "fc = LossForecastSession(opt, total_steps=100, flush_every=20, dirpath=sys.argv[1], verbose=False)\n"
        "for n in range(1, 91):\n"
        "    opt.step()\n"
        "    fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))\n"
        + ("raise RuntimeError('the data loader died')\n" if ending == "exception" else "")
    )
    proc = run_group([sys.executable, str(script), str(tmp_path / "tb")], timeout=300)
    if ending == "exception":
        assert proc.returncode == 1 and "the data loader died" in proc.stderr, proc.stderr[-3000:]
        assert "never closed" not in proc.stderr, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr.count("was never closed (call close() after the loop") == 1, proc.stderr[-3000:]
    assert "forecast/final_loss" in _acc(tmp_path / "tb").Tags()["scalars"]


@pytest.mark.trainer
def test_warnings_as_errors_never_end_the_run(tmp_path: Path) -> None:
    """Under ``python -W error`` (or pytest's ``filterwarnings = error``) every notice of the plugin was raised:
    the guard's own report of a failure raised out of the callback, a metric-driven scheduler failed the
    session's constructor, and the exit handler of a session never closed raised before closing TensorBoard.
    The notices are logged instead, and the loop trains to its end with its forecast."""
    from procs import TESTS

    blocked = tmp_path / "file"
    blocked.write_text("")  # TensorBoard's folder cannot be made below a file
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(TESTS / "werror_worker.py"), str(blocked / "tb")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trained to 400; forecast status ok" in proc.stdout
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
    for notice in ("ReduceLROnPlateau changes the LR", "TensorBoard failed", "was never closed"):
        assert notice in proc.stderr
