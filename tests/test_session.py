"""The training session's parts on one process: the planner's rules, the reduction over ranks, and the
guarantee that a fault never changes which collectives a rank joins."""

from __future__ import annotations

import copy
import io
import itertools
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scaleforecast.integrations.distributed import (  # noqa: E402
    DeviceBuffer,
    TorchCollectives,
    misaligned_ranks,
    reduce_ranks,
)
from scaleforecast.integrations.planner import (  # noqa: E402
    LRSource,
    SchedulePlanner,
    SchedulerPace,
    floor_lrs,
)
from scaleforecast.integrations.session import STATE_FORMAT, TrainingSession  # noqa: E402


def _sgd(lr: float = 0.1) -> Any:
    return torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=lr)


# ---------------------------------------------------------------------------------------------- planner
def test_the_zero_lr_rule() -> None:
    out = floor_lrs(np.array([0.0, 1e-3, -1.0, np.nan, 2e-3, 0.0]))
    np.testing.assert_array_equal(out, [2e-15, 1e-3, 2e-15, 2e-15, 2e-3, 2e-15])


def test_what_the_zero_lr_rule_hides_is_said() -> None:
    from scaleforecast.integrations.planner import lr_trouble

    assert lr_trouble(np.array([0.0, 0.0, 1e-3, 2e-3, 1e-3, 0.0, 0.0])) is None  # warm-up from 0, decay to 0
    assert "update 3 is -0.001, and 2 LR(s)" in (lr_trouble(np.array([1e-3, 1e-3, -1e-3, np.nan])) or "")
    assert "every LR of the schedule is 0" in (lr_trouble(np.zeros(5)) or "")
    assert "0 at update 3, between positive LRs" in (lr_trouble(np.array([1e-3, 1e-3, 0.0, 1e-3])) or "")
    said: list[str] = []
    SchedulePlanner(np.array([1e-3, -1e-3]), None, said.append)
    assert len(said) == 1 and "negative or not finite" in said[0]


def test_plan_then_drift_then_replan() -> None:
    opt = _sgd(1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (k + 1))
    said: list[str] = []
    planner = SchedulePlanner(None, None, said.append)
    source = LRSource(opt, [sched])
    plan = planner.plan(source, 10, 0)
    np.testing.assert_allclose(plan, 1.0 / np.arange(1, 11))
    steps = np.arange(1, 5)
    within = plan[:4] * (1 + 5e-7)  # inside the one drift tolerance (1e-6 relative)
    assert planner.revise(plan, steps, within, source, 10, 4) is None
    assert planner.revise(plan, steps, np.full(4, np.nan), source, 10, 4) is None  # unknown LRs: no evidence
    used = plan[:4].copy()
    used[3] *= 0.5  # update 4 ran at half its planned LR
    for _ in range(4):
        opt.step()
        sched.step()
    revised = planner.revise(plan, steps, used, source, 10, 4)
    assert revised is not None and revised[3] == pytest.approx(0.5 * plan[3])
    np.testing.assert_allclose(revised[4:], plan[4:])
    assert said == []


def test_resume_without_a_record_of_the_past() -> None:
    opt = _sgd(1.0)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.9**k)
    for _ in range(3):
        opt.step()
        lam.step()
    said: list[str] = []
    planner = SchedulePlanner(None, None, said.append)
    exact = planner.plan(LRSource(opt, [lam]), 6, 3)
    np.testing.assert_allclose(exact, 0.9 ** np.arange(6))  # a LambdaLR's past is recomputed exactly
    assert not planner.guessed_past
    opt2 = _sgd(1.0)
    step = torch.optim.lr_scheduler.StepLR(opt2, 2, 0.5)
    for _ in range(3):
        opt2.step()
        step.step()
    approx = planner.plan(LRSource(opt2, [step]), 6, 3)
    np.testing.assert_allclose(approx[:3], 0.5)  # the current LR stands in, marked (the session says it)
    assert planner.guessed_past and said == []


@pytest.mark.parametrize(("step_every", "pattern"), [(3, None), (1, (True, False, True, False, False))])
def test_a_lambda_schedulers_past_is_exact_at_any_cadence(step_every: int, pattern: Any) -> None:
    """A LambdaLR stepped every few updates, or at Lightning's per-epoch frequency pattern, is stepped for real
    and its LRs compared with the past the planner rebuilds (no guess, no warning on a resume)."""
    from scaleforecast.integrations.lookahead import scheduler_epochs

    opt = _sgd(1.0)
    lam = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.9**k)
    done = 13
    steps_after = scheduler_epochs(0, done, step_every, pattern)  # scheduler steps before each update
    used = []
    for j in range(done):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        if j + 1 < done and steps_after[j + 1] > steps_after[j]:
            lam.step()
    planner = SchedulePlanner(None, None, [].append)
    plan = planner.plan(LRSource(opt, [lam], step_every=step_every, epoch_pattern=pattern), 20, done)
    np.testing.assert_allclose(plan[:done], used, rtol=1e-12)
    assert not planner.guessed_past


def test_length_rules() -> None:
    said: list[str] = []
    fixed = SchedulePlanner(np.full(8, 1e-3), None, said.append)
    assert len(fixed.plan(None, 10, 0)) == 8 and len(fixed.plan(None, 10, 4)) == 8
    assert len(said) == 1 and "forecasting for 8 steps" in said[0]  # the given length stands, said once
    assert fixed.revise(fixed.plan(None, 10, 0), np.array([1]), np.array([5.0]), None, 10, 1) is None
    with pytest.raises(ValueError, match="length is unknown"):
        SchedulePlanner(None, None, said.append).plan(LRSource(_sgd()), None, 0)
    assert len(SchedulePlanner(None, 6, said.append).plan(LRSource(_sgd()), None, 0)) == 6


# ------------------------------------------------------------------------------------- reduction over ranks
def _message(values: list[float], seen: list[float], first_step: int = 1) -> torch.Tensor:
    buf = DeviceBuffer(4)
    for v, s in zip(values, seen, strict=True):
        buf.push(v, s if s else None)
    steps = list(range(first_step, first_step + len(values)))
    return buf.pack(steps, [1e-3] * len(values), torch.device("cpu"))


def test_reduce_over_the_ranks_that_had_data() -> None:
    a = _message([1.0, 2.0, math.nan], [1, 1, 1])
    b = _message([3.0, 0.0, 5.0], [1, 0, 1])
    red = reduce_ranks(torch.stack([a, b]).numpy(), channels=2)
    np.testing.assert_array_equal(red.steps, [1, 2, 3])
    np.testing.assert_allclose(red.loss[:2], [2.0, 2.0])  # step 2: rank 1 saw no loss
    np.testing.assert_allclose(red.loss_max[:2], [3.0, 2.0])
    assert math.isnan(red.loss[2]) and math.isnan(red.loss_max[2])  # a NaN on one rank is not hidden
    assert red.seen.all() and red.ranks == 2

    silent = DeviceBuffer(4).no_data(torch.device("cpu"))
    red = reduce_ranks(torch.stack([silent, b]).numpy(), channels=2)
    assert red.ranks == 1 and red.steps.tolist() == [1, 2, 3] and red.seen.tolist() == [True, False, True]
    assert reduce_ranks(torch.stack([silent, silent]).numpy(), channels=2).count == 0

    short = _message([1.0, 2.0], [1, 1])
    assert reduce_ranks(torch.stack([a, short]).numpy(), channels=2).count == 2  # the common prefix
    assert misaligned_ranks(torch.stack([a, short]).numpy(), channels=2) == "rank 0: 1..3, rank 1: 1..2"


def test_device_buffer_bounds() -> None:
    buf = DeviceBuffer(2, channels=2)
    buf.push(torch.tensor(1.0), 1.0)
    buf.push(None)
    with pytest.raises(BufferError):
        buf.push(1.0)
    with pytest.raises(ValueError, match="2 buffered steps"):
        buf.pack([1], [0.1], torch.device("cpu"))
    msg = buf.pack([1, 2], [0.1, 0.2], torch.device("cpu"))
    assert msg.shape == (5, 2) and msg[4, 0] == 2 and len(buf) == 0
    assert TorchCollectives().world_size == 1
    with pytest.raises(
        ValueError, match=r"one number, got a tensor of shape \(4,\) \(pass .*loss.mean\(\)\)"
    ):
        buf.push(torch.ones(4))  # per-sample losses
    buf.push(torch.ones(1, 1))  # one number, in any shape


# ------------------------------------------------------------------- collectives are never skipped
class CountingCollectives(TorchCollectives):
    """One process, but every collective is recorded: a fault must not change the sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls.append(f"gather{tuple(tensor.shape)}")
        return super().all_gather(tensor)

    def any(self, flag: bool) -> bool:
        self.calls.append("any")
        return super().any(flag)


def _run(fault: str | None) -> tuple[list[str], TrainingSession]:
    opt = _sgd()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 40)
    session = TrainingSession(
        "probe", writer=False, verbose=False, flush_every=5, refit_every=5, total_steps=40
    )
    comm = CountingCollectives()
    session.start(comm, step=0, run_length=None, source=LRSource(opt, [sched]))

    def boom(*args: Any) -> Any:
        raise RuntimeError("injected")

    if fault is not None:
        setattr(session, fault, boom)
    for step in range(1, 41):
        opt.step()
        sched.step()
        session.record(step, torch.tensor(1.0 / step))
        session.tick(step)
    session.finish(40)
    return comm.calls, session


@pytest.mark.parametrize("fault", ["_record", "_pack", "_digest", "_revise"])
def test_a_failing_part_still_joins_every_collective(fault: str) -> None:
    healthy, _ = _run(None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        faulty, session = _run(fault)
    assert faulty == healthy == ["gather(5, 5)", "any"] * 8
    assert len([w for w in caught if "injected" in str(w.message)]) == 1
    assert len(session.errors) == 1


def test_the_gradient_norm_is_taken_per_step_and_not_while_window_means_are_read() -> None:
    from scaleforecast.callbacks import LossForecastSession

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fc = LossForecastSession(opt, total_steps=20, track_grad_norm=True, writer=False, verbose=False)

    def update() -> torch.Tensor:
        opt.zero_grad()
        loss = model(torch.ones(4, 2)).pow(2).mean()
        loss.backward()
        expected = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        opt.step()
        return expected

    expected = update()
    gnorm = fc.session._gnorm
    assert gnorm is not None and float(gnorm) == pytest.approx(float(expected))
    fc.step(torch.tensor(1.0))
    assert fc.session._gnorm is None  # taken by the record of its step
    fc.session.per_step = False  # an adapter reading window means records no step
    update()
    assert fc.session._gnorm is None
    fc.close()


def test_a_step_count_that_goes_back_rewinds_the_history() -> None:
    """A loop that numbers its updates itself and resumes from an older checkpoint: the count goes back from
    150 to 51 in the middle of a flush interval. What came before is flushed, the forecaster drops the losses
    after step 50 with a warning, and recording goes on (it used to overflow the device buffer and switch
    itself off for the rest of the run, with its forecast frozen)."""
    from scaleforecast.callbacks import LossForecastSession

    total = 300
    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1 - i / total, 0.01))
    fc = LossForecastSession(opt, sched, total_steps=total, flush_every=20, writer=False, verbose=False)
    numbers = [*range(1, 151), *range(51, 201)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in numbers:
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3), step=n)
        fc.close()
    # said by the session (once, on rank 0 of a multi-process job), not by the forecaster on every rank
    told = [str(w.message) for w in caught if "went back" in str(w.message)]
    assert told == [
        "LossForecastSession: step went back to 51 after 150 (resumed from an older checkpoint?): dropped 100 "
        "observation(s) after step 50"
    ], told
    assert fc.errors == {}
    assert fc.forecaster.last_step == 200
    assert fc.forecaster.n_observations == 200  # steps 1-200 once each: 51-150 of before were dropped
    assert fc.forecast is not None and fc.forecast.fitted_at_step > 150


def test_an_lr_set_to_zero_by_hand_is_the_lr_of_the_plan() -> None:
    """A pause set by hand (the LR 0 for updates 101-120, on top of a scheduler): the plan kept the scheduler's
    positive LRs there (a used LR of 0 was no evidence of drift), so the LR area counted updates that never
    moved the weights. The plan holds the zero-LR floor there, said once."""
    from scaleforecast.callbacks import LossForecastSession

    total = 300
    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1 - i / total, 0.01))
    fc = LossForecastSession(opt, sched, total_steps=total, flush_every=20, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 201):
            if 101 <= n <= 120:
                opt.param_groups[0]["lr"] = 0.0
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    plan = fc.forecaster.schedule
    assert plan is not None and np.all(plan[100:120] < 1e-9) and plan[99] > 0.05 and plan[120] > 0.05
    told = [str(w.message) for w in caught if "LR is 0" in str(w.message)]
    assert len(told) == 1 and "update 101" in told[0], told


def test_a_scheduler_built_for_fewer_updates_than_the_run_is_said_and_its_zeros_train_nothing() -> None:
    """A linear decay set up for 300 updates in a 400-update run (``get_linear_schedule_with_warmup`` given the
    wrong length): its LR is 0 for the last 100 updates and the loss stays where it was. The law's areas went
    on growing through the zeros, so the forecast of the final loss was below the loss the run holds (by 0.9 %
    here) and no one said the last quarter trains nothing. The forecast now holds the loss there, and the
    idle tail is said once (and flagged by the schedule advisor)."""
    from scaleforecast.callbacks import LossForecastSession

    from scaleforecast.advice import ScheduleAdvisor

    total, built_for = 400, 300
    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1 - i / built_for))
    events: list[Any] = []
    rng = np.random.default_rng(0)
    area, losses = 0.0, []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = LossForecastSession(
            opt, sched, total_steps=total, flush_every=25, writer=False, verbose=False,
            advisor=ScheduleAdvisor(), on_event=events.append,
        )  # fmt: skip
        for n in range(1, total + 1):
            lr = opt.param_groups[0]["lr"]
            area += lr
            # the law's shape while the LR is positive; an update at LR 0 leaves the weights (and loss) alone
            loss = 2.0 + 0.3 * (area / 0.1) ** -0.4 - 0.2 * (1 - lr / 0.1) if lr > 0 else losses[-1]
            losses.append(loss)
            opt.step()
            sched.step()
            fc.step(torch.tensor(loss + 0.002 * rng.standard_normal()))
            if n == 350:
                mid = fc.forecast
        fc.close()
    told = [str(w.message) for w in caught if "trains nothing at the end" in str(w.message)]
    assert len(told) == 1 and "from update 301 to 400, 25% of the run" in told[0], told
    flagged = [e for e in events if e.kind == "schedule_advice" and "trains nothing" in e.message]
    assert len(flagged) == 1 and flagged[0].severity == "warning"
    assert mid is not None and mid.final is not None
    assert abs(mid.final.loss / losses[-1] - 1) < 0.003, (mid.final.loss, losses[-1])


def test_an_idle_tail_is_said_only_of_a_plan_the_lrs_used_hold_to() -> None:
    """A linear decay to 0 over 8 epochs of 40 updates, stepped per epoch with no ``scheduler_every``: read at
    first as stepped per update, the plan is at LR 0 from update 9, which the run never uses. The idle tail is
    said once, of the plan read at the scheduler's pace (LR 0 from update 321), not of that first misreading."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: max(0.0, 1 - e / 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = LossForecastSession(opt, sched, total_steps=400, flush_every=10, writer=False, verbose=False)
        for n in range(1, 401):
            opt.step()
            fc.step(torch.tensor(2.0 + n**-0.3))
            if n % 40 == 0:
                sched.step()
        fc.close()
    told = [str(w.message) for w in caught if "trains nothing at the end" in str(w.message)]
    assert len(told) == 1 and "from update 321 to 400" in told[0], told


def test_a_step_counted_from_zero_is_refused_at_once() -> None:
    """nanoGPT counts ``iter_num`` from 0: passed as ``step=``, the first update's 0 let 51 steps into a 50-step
    flush buffer, and the plugin switched itself off for the run with a message about a full buffer."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=100, flush_every=10, writer=False, verbose=False)
    opt.step()
    with pytest.raises(ValueError, match="from 1"):
        fc.step(torch.tensor(3.0), step=0)
    for n in range(1, 101):  # counted right, the same session trains on
        opt.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3), step=n)
    fc.close()
    assert fc.errors == {} and fc.forecaster.n_observations == 100


def test_a_saved_state_from_another_checkpoint_than_the_scheduler_is_said_and_follows_the_scheduler() -> None:
    """The forecast state saved at update 190, the optimizer and scheduler restored from update 110: the
    scheduler's count is the run's, with a warning; the plan ahead is the scheduler's from there (not the old
    plan shifted by the 80 updates between the two); the losses after 110 are dropped at the next flush."""
    from scaleforecast.callbacks import LossForecastSession

    total = 300

    def session() -> tuple[Any, Any, Any]:
        opt = _sgd(0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1 - i / total, 0.01))
        return opt, sched, LossForecastSession(opt, sched, total_steps=total, flush_every=20, writer=False)

    opt, sched, fc = session()
    saved: dict[int, Any] = {}
    for n in range(1, 191):
        opt.step()
        sched.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        if n in (110, 190):
            saved[n] = (opt.state_dict(), sched.state_dict()) if n == 110 else fc.state_dict()
    fc.close()
    opt, sched, fc = session()
    opt.load_state_dict(saved[110][0])
    sched.load_state_dict(saved[110][1])
    with pytest.warns(RuntimeWarning, match="counts 190 updates but the LR scheduler 110"):
        fc.load_state_dict(saved[190])
    assert fc.steps == 110
    np.testing.assert_allclose(fc.forecaster.schedule, [0.1 * max(1 - i / total, 0.01) for i in range(total)])
    with pytest.warns(RuntimeWarning, match="step went back to 111 after 190"):
        for n in range(111, 151):
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    fc.close()
    assert fc.errors == {} and fc.forecaster.last_step == 150 and fc.forecaster.n_observations == 150
    assert fc.session.replans == 0  # the plan held: the LRs used were the planned ones


def test_a_hand_set_lr_resumed_from_an_older_optimizer_counts_from_the_optimizer() -> None:
    """No scheduler (the LR set by hand, the schedule given): the forecast state saved at update 250, the
    model and optimizer at 100. It said "resumed after update 250" and counted the updates 101.. as 251..,
    every forecast labelled 150 updates late; told only at the end that the run went past its length. Adam's
    own step count says the update: counted from it, with a warning."""
    from scaleforecast.callbacks import LossForecastSession

    total = 300
    lrs = [1e-2 * min(1.0, 2 - 2 * i / total) for i in range(total)]

    def session() -> tuple[Any, Any]:
        opt = torch.optim.AdamW(torch.nn.Linear(2, 1).parameters(), lr=lrs[0])
        return opt, LossForecastSession(opt, schedule=lrs, flush_every=20, writer=False, verbose=False)

    def update(opt: Any, fc: Any, n: int) -> None:
        opt.param_groups[0]["lr"] = lrs[n - 1]
        opt.zero_grad()
        opt.param_groups[0]["params"][0].sum().backward()
        opt.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))

    opt, fc = session()
    saved: dict[int, Any] = {}
    for n in range(1, 251):
        update(opt, fc, n)
        if n in (100, 250):
            # (a copy, as a checkpoint on disk is: the state dict holds the live step tensors)
            saved[n] = copy.deepcopy(opt.state_dict()) if n == 100 else fc.state_dict()
    fc.close()
    opt, fc = session()
    opt.load_state_dict(saved[100])
    with pytest.warns(RuntimeWarning, match="counts 250 updates but the optimizer's state 100"):
        fc.load_state_dict(saved[250])
    assert fc.steps == 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the step that went back, said once
        for n in range(101, total + 1):
            update(opt, fc, n)
    fc.close()
    assert fc.errors == {} and fc.forecaster.last_step == total and fc.forecaster.n_observations == total


def test_training_that_goes_on_past_the_stop_to_its_end_is_recorded_as_finished(tmp_path: Path) -> None:
    """The stop agreed, but a loop that never breaks on ``should_stop`` trains to its last step: said once, in
    the warnings and the TensorBoard status; ``should_stop`` stays set, and the run, which reached its end, is
    not recorded as stopped at a step it trained past."""
    from scaleforecast.callbacks import LossForecastSession
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = 400
    opt = _sgd(0.1)
    fc = LossForecastSession(
        opt, total_steps=total, target_loss=1.0, flush_every=10, dirpath=str(tmp_path), verbose=False
    )
    stops = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, total + 1):
            opt.step()
            fc.step(torch.tensor(2.0 + 0.3 * n**-0.3))
            if fc.should_stop:
                stops.append(fc.stopped_at)
        fc.close()
    assert len(set(stops)) == 1 and stops[0] < total
    assert len(stops) == total - stops[0] + 1  # set from the stop to the end
    told = [str(w.message) for w in caught if "went on past the stop" in str(w.message)]
    assert len(told) == 1 and f"at step {stops[0]}" in told[0]
    assert fc.stopped_at is None and fc.forecaster.last_step == total
    acc = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("forecast/status/text_summary")]
    assert any("went on past the stop" in t for t in texts)
    assert "recorded as finished" in texts[-1]
    assert len(acc.Tensors("events/early_stop/text_summary")) == 1


def test_a_loop_that_checks_should_stop_now_and_then_still_stops(tmp_path: Path) -> None:
    """nanoGPT's pattern: ``should_stop`` read at each evaluation, every 50 updates. The flag was cleared at
    the update after the stop ("training went on past the stop"), so the loop never saw it and trained to the
    end. It stays set: the loop breaks at its next check, and the run is recorded as stopped there, with the
    stop's reason."""
    from scaleforecast.callbacks import LossForecastSession

    class Ends:
        def __init__(self) -> None:
            self.ends: list[tuple[int, bool]] = []

        def on_forecast(self, step: int, forecast: Any) -> list[Any]:
            return []

        def on_run_end(self, step: int, stopped: bool) -> None:
            self.ends.append((step, stopped))

    total, ends = 400, Ends()
    opt = _sgd(0.1)
    fc = LossForecastSession(
        opt, total_steps=total, target_loss=1.0, flush_every=10, writer=False, verbose=False, listeners=[ends]
    )
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        for n in range(1, total + 1):
            opt.step()
            fc.step(torch.tensor(2.0 + 0.3 * n**-0.3))
            if n % 50 == 0 and fc.should_stop:
                break
        fc.close()
    assert fc.stopped_at is not None and n < total and n == 50 * math.ceil(fc.stopped_at / 50)
    assert "cannot reach" in (fc.stop_reason or "")
    assert ends.ends == [(n, True)]


def test_a_stopped_run_resumed_is_judged_again() -> None:
    """A run stopped on its target, then resumed from its last checkpoint: it says it had been stopped, trains
    on, and the stop rule decides again (it used to train to the end silently and report the old stop)."""
    from scaleforecast.callbacks import LossForecastSession

    total = 400

    def session() -> tuple[Any, Any]:
        opt = _sgd(0.1)
        fc = LossForecastSession(
            opt, total_steps=total, target_loss=1.0, flush_every=10, writer=False, verbose=False
        )
        return opt, fc

    opt, fc = session()
    for n in range(1, total + 1):
        opt.step()
        fc.step(torch.tensor(2.0 + 0.3 * n**-0.3))
        if fc.should_stop:
            break
    first = fc.stopped_at
    assert first is not None and first < total
    saved = fc.state_dict()
    fc.close()
    opt, fc = session()
    with pytest.warns(RuntimeWarning, match=f"this run was stopped at step {first} .*decides again"):
        fc.load_state_dict(saved)
    assert fc.stopped_at is None and not fc.should_stop
    for n in range(first + 1, total + 1):
        opt.step()
        fc.step(torch.tensor(2.0 + 0.3 * n**-0.3))
        if fc.should_stop:
            break
    fc.close()
    assert fc.stopped_at is not None and first < fc.stopped_at < total
    assert fc.stop_reason is not None and "cannot reach 1.0000" in fc.stop_reason
    # judged again on a forecast fitted after the resume: it stopped at the next flush on the very forecast it
    # had stopped on (the same numbers, fitted before the resume)
    latest = fc.forecaster.latest
    assert latest is not None and latest.fitted_at_step > first
    # resumed with no target: no stop rule is left to decide again, and the warning does not promise one
    opt = _sgd(0.1)
    untargeted = LossForecastSession(opt, total_steps=total, flush_every=10, writer=False, verbose=False)
    with pytest.warns(RuntimeWarning, match="no target loss now: only the health checks can stop it"):
        untargeted.load_state_dict(saved)
    untargeted.close()


class OtherRankDecides(TorchCollectives):
    """Rank 0 of two, in one process: the other rank asks to stop, with ``reason``; rank 0's own part failed."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.rank, self.world_size, self.reason = 0, 2, reason
        self.answers = [True, False, False]  # someone wants to stop; nobody raises; the run is not lost

    def any(self, flag: bool) -> bool:
        return self.answers.pop(0) or flag

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        other = torch.zeros_like(tensor)
        raw = self.reason.encode()
        other[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        return torch.stack([tensor, other])


def test_the_rank_that_prints_tells_the_stop_by_the_deciding_ranks_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rank 0 prints and writes TensorBoard, but rank 1 decided (rank 0's own part of the plugin had failed):
    rank 0 shows rank 1's reason, shared when the ranks agree to stop, not "another rank decided to stop"."""
    reason = "forecast final loss 0.5767 at step 100 cannot reach 0.0500: … confidence 0.99 >= 0.98"
    session = TrainingSession("probe", writer=False, verbose=True, flush_every=5, total_steps=100)
    session.start(OtherRankDecides(reason), step=0, run_length=None, source=LRSource(_sgd(), []))
    session._agree(None, 50)
    assert session.stopped_at == 50 and session.stop_reason == reason
    assert f"probe: stopping at step 50: {reason}" in capsys.readouterr().out


@pytest.mark.parametrize("micro", [1, 4])
def test_a_loop_that_calls_step_per_micro_batch_is_told(micro: int) -> None:
    """Gradient accumulation with step() called for every micro-batch: the session would count four updates
    for each, reach total_steps at a quarter of the run and forecast nothing after. The optimizer's own count
    of its updates tells it, once, early; a loop that calls step() once per update hears nothing."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=100, flush_every=10, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 101):
            if n % micro == 0:
                opt.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    told = [str(w.message) for w in caught if "optimizer updates" in str(w.message)]
    if micro == 1:
        assert told == []
    else:
        assert len(told) == 1 and "step() was called 64 times for 16 optimizer updates" in told[0], told


def test_a_loop_with_a_scheduler_that_calls_step_per_micro_batch_is_told_why() -> None:
    """The same loop with its LR scheduler stepped once per update: the scheduler's count moved every four of
    the session's "updates", so the loop was first told its scheduler steps once per epoch and to pass
    ``scheduler_every=4`` (which keeps the bug), and only at the 64th call why. It is told why, at the call that
    shows it, once, and the plan is not re-read at another pace."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / 200)
    fc = LossForecastSession(opt, sched, total_steps=200, flush_every=10, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 201):
            if n % 4 == 0:
                opt.step()
                sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "scheduler_every=4" in m], said
    told = [m for m in said if "optimizer updates" in m]
    assert (
        len(told) == 1
        and "call it once per update" in told[0]
        and "called 8 times for 2 optimizer updates" in told[0]
    ), told


def test_a_step_counter_that_runs_ahead_of_the_updates_is_told_by_its_cause() -> None:
    """``fc.step(loss, step=2 * n)`` (a counter of micro-batches) with a scheduler stepped per update: the
    scheduler's count moved every second "update", and the loop was told its scheduler steps once every 2
    updates, to pass scheduler_every=2 (which keeps the bug). It is told that step= runs ahead, once."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / 200)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = LossForecastSession(opt, sched, total_steps=200, flush_every=10, writer=False, verbose=False)
        for n in range(1, 101):
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3), step=2 * n)
        fc.close()
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "scheduler_every=2" in m], said
    told = [m for m in said if "run ahead of the training" in m]
    assert len(told) == 1 and "step= went from 2 to 8 over 3 optimizer updates" in told[0], said


def test_a_session_never_stepped_is_not_told_it_was_never_closed() -> None:
    """A session only constructed (a script that failed before its loop, a notebook cell run again) was told at
    garbage collection that it "was never closed ... the updates since its last flush are not forecast": it had
    none. A session that trained is told."""
    from scaleforecast.callbacks import LossForecastSession

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idle = LossForecastSession(_sgd(0.1), total_steps=100, writer=False, verbose=False)
        idle.session.end_unfinished()
        opt = _sgd(0.1)
        busy = LossForecastSession(opt, total_steps=100, flush_every=10, writer=False, verbose=False)
        for n in range(1, 16):
            opt.step()
            busy.step(torch.tensor(2.0 + n**-0.3))
        busy.session.end_unfinished()
    told = [w for w in caught if "was never closed" in str(w.message)]
    assert len(told) == 1, [str(w.message) for w in caught]


def test_a_step_after_close_is_said_and_ignored() -> None:
    """Steps given after ``close()`` were taken with no word (the count went on past the closed run)."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=100, flush_every=10, writer=False, verbose=False)
    for n in range(1, 61):
        opt.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    fc.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            opt.step()
            fc.step(torch.tensor(2.0))
    assert fc.steps == 60
    assert len([w for w in caught if "step() after close() is ignored" in str(w.message)]) == 1


def test_the_same_step_given_per_micro_batch_is_said_once() -> None:
    """Gradient accumulation with ``fc.step(loss, step=it)`` at every micro-batch: each repeat of a step was a
    "step went back to 17 after 17 (resumed from an older checkpoint?)" warning of its own, 150 of them. It is
    said once, as what it is; the later value of the step is the one kept."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=40, flush_every=10, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for it in range(1, 41):
            opt.step()
            for _ in range(4):
                fc.step(torch.tensor(2.0 + 3.0 * it**-0.3), step=it)
        fc.close()
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "went back" in m], said
    again = [m for m in said if "was given again" in m]
    assert len(again) == 1 and "step 1 was given again" in again[0], said
    assert fc.forecaster.last_step == 40 and fc.forecaster.n_observations == 40


def test_a_loop_that_runs_past_total_steps_is_told() -> None:
    """80 updates with total_steps=50: the updates after 50 are not forecast, and the loop is told so, once
    (they were dropped silently)."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=50, flush_every=10, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 81):
            opt.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    told = [str(w.message) for w in caught if "past its planned length" in str(w.message)]
    assert len(told) == 1 and "planned length of 50 updates" in told[0], told
    assert fc.forecaster.last_step == 50 and fc.errors == {}


def test_a_plateau_schedulers_cuts_are_followed_without_advice_to_pass_a_schedule() -> None:
    """ReduceLROnPlateau cuts the LR when the metric stalls: each cut re-plans, as it must, and the loop is not
    told to pass ``schedule=`` (which it cannot know). No schedule advice is given on the plan's guess of its
    future (the LR held constant: "ends at a high LR"), with one warning that says why."""
    from scaleforecast.callbacks import LossForecastSession

    from scaleforecast.advice import ScheduleAdvisor

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    events: list[Any] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = LossForecastSession(
            opt,
            sched,
            total_steps=100,
            flush_every=10,
            writer=False,
            verbose=False,
            advisor=ScheduleAdvisor(),
            on_event=events.append,
        )
        for n in range(1, 101):
            opt.step()
            if n % 20 == 0:
                sched.step(1.0)  # a metric that never improves: a cut at every check
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    assert fc.session.replans >= 3 and fc.errors == {}
    assert not [w for w in caught if "left the planned schedule" in str(w.message)]
    held = [w for w in caught if "ReduceLROnPlateau changes the LR from future metrics" in str(w.message)]
    assert len(held) == 1  # said once, not again at each re-plan
    assert not [e for e in events if e.kind == "schedule_advice"], [e.message for e in events]
    assert len([w for w in caught if "no schedule advice" in str(w.message)]) == 1


def test_forecasts_under_a_metric_driven_scheduler_say_the_lr_is_held(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``ReduceLROnPlateau`` cuts the LR on metrics the run has not produced: the plan holds the LR, and each
    printed forecast says it is of the LR held (it read as a plain forecast, under an ``ok`` status)."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fc = LossForecastSession(opt, sched, total_steps=200, flush_every=20, writer=False)
        for n in range(1, 201):
            opt.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    lines = [line for line in capsys.readouterr().out.splitlines() if "forecast final loss" in line]
    assert lines and all("the LR held as it is" in line for line in lines), lines


def test_the_scheduler_pace_is_read_off_its_count() -> None:
    """Two equal gaps between the updates at which the count moved give the pace; an LR that changed between
    them (set by hand) rules it out for good."""
    pace = SchedulerPace(0)
    lrs = [0.1] * 100 + [0.09] * 100 + [0.07] * 100
    seen = [pace.see(n, (n // 100,), lr) for n, lr in enumerate(lrs, start=1)]
    # stepped after updates 100 and 200, whose next updates use the new LRs
    assert seen[:199] == [None] * 199 and seen[199] == 100
    every = SchedulerPace(0)
    assert [every.see(n, (n,), 0.1 / n) for n in range(1, 5)] == [None, None, None, 1]  # stepped every update
    by_hand = SchedulerPace(0)
    lrs[150] = 0.05
    assert all(by_hand.see(n, (n // 100,), lr) is None for n, lr in enumerate(lrs, start=1))
    assert not by_hand.steady  # ruled out: the watch can end


def _per_epoch_run(
    epoch: int, t_max: int, total: int, after: bool = False, **kwargs: Any
) -> tuple[Any, list[float], list[str]]:
    """A loop whose cosine scheduler steps once every ``epoch`` updates (``after`` the loop's call, or
    before it): the session, the LRs used and what it warned."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
    fc = LossForecastSession(
        opt, sched, total_steps=total, flush_every=10, writer=False, verbose=False, **kwargs
    )
    used = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, total + 1):
            used.append(opt.param_groups[0]["lr"])
            opt.step()
            if n % epoch == 0 and not after:
                sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
            if n % epoch == 0 and after:
                sched.step()
        fc.close()
    return fc, used, [str(w.message) for w in caught]


@pytest.mark.parametrize("every", [None, 10])
def test_a_scheduler_stepped_per_epoch(every: int | None) -> None:
    """A loop that steps its scheduler once per epoch of 10 updates: with ``scheduler_every=10`` the plan is
    the LRs used from the start; without it the plan (read as one scheduler step per update) kept failing, was
    re-planned at every flush, and the run had no usable forecast: the pace is read off the scheduler's own
    count once two epochs have shown it, said once, and the plan is the LRs used from there."""
    from scaleforecast.callbacks import LossForecastSession

    fc, used, said = _per_epoch_run(10, 12, 120, **({} if every is None else {"scheduler_every": every}))
    assert [m for m in said if "left the planned schedule" in m] == []
    paced = [m for m in said if "steps once every" in m]
    if every is None:
        # told the pace once, at the second epoch's end; read at that pace from there, the plan is the LRs used
        assert len(paced) == 1 and "scheduler_every=10" in paced[0] and "from update 20" in paced[0], paced
    else:
        assert paced == []
    np.testing.assert_allclose(fc.forecaster.schedule, used, rtol=1e-12)
    with pytest.raises(ValueError, match="scheduler_every"):
        LossForecastSession(_sgd(0.1), scheduler_every=0, total_steps=10)


def test_a_scheduler_stepped_per_epoch_longer_than_a_flush_is_told_once() -> None:
    """Epochs of 40 updates, flushes every 10, no ``scheduler_every``: the plan (a cosine of 8 steps read as 8
    updates, then up again) put its zeros at another update at each re-plan, each said as a new warning (16 in
    an 800-update run), and the loop was told its scheduler "was not stepped while the LR went on changing",
    with no word of ``scheduler_every``: the LR had not changed. One notice of the zeros, and the hint."""
    fc, used, said = _per_epoch_run(
        40, 8, 320, after=True
    )  # stepped after the loop's call: read all the same
    assert len([m for m in said if "scheduler_every=40" in m]) == 1, said
    np.testing.assert_allclose(fc.forecaster.schedule, used, rtol=1e-12)
    assert fc.forecast is not None and fc.forecast.ok
    assert len([m for m in said if "the LR is 0 at update" in m]) <= 1, said
    assert not [m for m in said if "went on changing" in m], said
    hints = [m for m in said if "scheduler_every=<updates per epoch>" in m]
    assert len(hints) == 1, said


def test_events_reach_the_python_logger_when_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """``verbose=False`` quiets what the session prints, not the Python logger: a run lost to NaN logs its
    critical event on ``scaleforecast.health`` (it logged nothing at all)."""
    import logging

    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=200, flush_every=10, writer=False, verbose=False)
    with caplog.at_level(logging.WARNING, logger="scaleforecast.health"):
        for n in range(1, 201):
            opt.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3 if n < 100 else math.nan))
            if fc.should_stop:
                break
        fc.close()
    assert fc.stopped_at is not None
    assert any(r.levelno == logging.ERROR and "nonfinite" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_a_forecast_too_vague_to_act_on_is_printed_as_too_early(capsys: pytest.CaptureFixture[str]) -> None:
    """A first fit on ten losses printed "forecast final loss 1.0861 [0.0000, 2.5124]" for a run ending at 2.4,
    like any forecast. One whose band puts more than 2 % of its mass below zero (the stop rule, the sweeps and
    Tune ignore it) is printed as too early to forecast; a decisive one as a forecast. With a target, the line
    says how sure the stop rule is: a band that left the target out for half a run did not stop it, and nothing
    said why."""
    from forecasts import one_point
    from scaleforecast.callbacks import LossForecastSession

    from scaleforecast.decision import StopDecision

    fc = LossForecastSession(_sgd(0.1), total_steps=400, writer=False)
    fc.session._say_forecast(100, one_point(1.0861, 0.7, final_step=400, fitted_at_step=50))
    fc.session._say_forecast(150, one_point(2.41, 0.05, final_step=400, fitted_at_step=100))
    # with a target, how far the stop rule is (it reads the error measured on real runs, not the band)
    judged = StopDecision(stop=False, reason="", probability=0.8512, reference=2.2, step=200)
    fc.session._say_forecast(200, one_point(2.41, 0.05, final_step=400, fitted_at_step=150), judged)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "LossForecastSession: step 100: too early to forecast: the loss at step 400 could be anywhere in "
        "[0.3861, 1.7861] (fitted to step 50, ok)",
        "LossForecastSession: step 150: forecast final loss 2.4100 [2.3600, 2.4600] at step 400 (fitted to step "
        "100, ok)",
        "LossForecastSession: step 200: forecast final loss 2.4100 [2.3600, 2.4600] at step 400 (fitted to step "
        "150, ok); target 2.2 out of reach with confidence 0.85, stops at 0.98",
    ], lines
    fc.close()


@pytest.mark.parametrize("verbose", [True, False])
def test_a_stop_is_said_once(
    verbose: bool, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A stop's reason came out twice (three times under Optuna): Python's fallback handler printed the
    early-stop event at WARNING, before the forecast it stopped on, then the session printed "stopping at step
    N: <the same reason>". A session that prints says it once (the event is logged at INFO); a quiet one leaves
    it to the logger, at WARNING."""
    import logging

    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / 400)
    fc = LossForecastSession(
        opt, sched, total_steps=400, flush_every=20, writer=False, verbose=verbose, target_loss=1.0
    )
    with caplog.at_level(logging.INFO, logger="scaleforecast.health"):
        for n in range(1, 401):
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
            if fc.should_stop:
                break
        fc.close()
    assert fc.stopped_at is not None
    (record,) = [r for r in caplog.records if "early_stop" in r.getMessage()]
    assert record.levelno == (logging.INFO if verbose else logging.WARNING)
    printed = capsys.readouterr().out
    assert printed.count("cannot reach") == (1 if verbose else 0), printed


@pytest.mark.parametrize("restore_state", [True, False])
def test_a_resume_in_the_documented_order_is_not_told_the_lrs_are_unknown(restore_state: bool) -> None:
    """Optimizer and scheduler restored, the session built, then its state loaded (the order the docs give):
    the state holds the LRs before the resume, so "no record of the LRs" (said at construction) was wrong.
    Without a state to load it is still said, at the first step."""
    from scaleforecast.callbacks import LossForecastSession

    total = 200

    def make() -> tuple[Any, Any]:
        opt = _sgd(0.1)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)

    opt, sched = make()
    fc = LossForecastSession(opt, sched, total_steps=total, flush_every=10, writer=False, verbose=False)
    for n in range(1, 101):
        opt.step()
        sched.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    saved, sched_state = fc.state_dict(), sched.state_dict()
    fc.close()
    opt, sched = make()
    sched.load_state_dict(sched_state)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = LossForecastSession(opt, sched, total_steps=total, flush_every=10, writer=False, verbose=False)
        if restore_state:
            fc.load_state_dict(saved)
        for n in range(101, total + 1):
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    told = [str(w.message) for w in caught if "no record of the LRs" in str(w.message)]
    assert len(told) == (0 if restore_state else 1), told
    hint = [str(w.message) for w in caught if "with no saved forecast state" in str(w.message)]
    assert hint == ([] if restore_state else [hint[0]]) and (restore_state or "update 101" in hint[0])
    assert fc.errors == {} and fc.forecaster.last_step == total


def test_a_loop_that_calls_step_every_few_updates_is_no_resume() -> None:
    """A fresh loop that hands over every tenth update's loss, ``fc.step(loss, step=n)``, was told "the run
    resumes at update 10 with no saved forecast state": the updates before its first call were made in this
    process, seen by the optimizer's hook. A run resumed in a new process is still told."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=200, flush_every=5, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 201):
            opt.step()
            if n % 10 == 0:
                fc.step(torch.tensor(2.0 + 3.0 * n**-0.3), step=n)
        fc.close()
    assert not [w for w in caught if "no saved forecast state" in str(w.message)], [
        str(w.message) for w in caught
    ]
    assert fc.forecaster.last_step == 200 and fc.errors == {}


def test_a_saved_state_restored_without_its_scheduler_is_told() -> None:
    """The forecast state restored, the scheduler's not (a common slip): its schedule starts over, which the
    first update shows whatever the order of the restores."""
    from scaleforecast.callbacks import LossForecastSession

    def make() -> tuple[Any, Any]:
        opt = _sgd(0.1)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)

    opt, sched = make()
    fc = LossForecastSession(opt, sched, total_steps=200, flush_every=10, writer=False, verbose=False)
    for n in range(1, 101):
        opt.step()
        sched.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    saved = fc.state_dict()
    fc.close()
    opt, sched = make()
    fc = LossForecastSession(opt, sched, total_steps=200, flush_every=10, writer=False, verbose=False)
    fc.load_state_dict(saved)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(101, 121):
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    fc.close()
    told = [str(w.message) for w in caught if "was not restored" in str(w.message)]
    assert len(told) == 1 and "counts 100 updates but the LR scheduler 1" in told[0], told


def test_tensorboard_lines_restart_where_the_run_went_back(tmp_path: Path) -> None:
    """A run resumed from older checkpoints, once in this process (its count goes back from 100 to 61) and once
    in a new one (a new session from the state saved at update 80, after the first went on to 120): TensorBoard
    hides what was written after each resume point, so the run's lines and the forecast line beside them read in
    step order, each step once, and the status says where the run resumed."""
    from scaleforecast.callbacks import LossForecastSession
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total, logdir = 200, tmp_path / "tb"

    def session() -> tuple[Any, Any, Any]:
        opt = _sgd(0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1 - i / total, 0.01))
        fc = LossForecastSession(
            opt, sched, total_steps=total, flush_every=10, refit_every=10, dirpath=str(logdir), verbose=False
        )
        return opt, sched, fc

    def train(numbers: list[int], opt: Any, sched: Any, fc: Any) -> dict[int, Any]:
        states = {}
        for n in numbers:
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3), step=n)
            states[n] = (fc.state_dict(), sched.state_dict())
        return states

    opt, sched, fc = session()
    with pytest.warns(RuntimeWarning, match="step went back to 61 after 100"):
        states = train([*range(1, 101), *range(61, 121)], opt, sched, fc)
    fc.close()
    # TensorBoard reads a folder's event files in name order, the creation second first: the files of the
    # process that resumes sort after the earlier one's, as they do when it starts later (not within a second)
    for f in logdir.rglob("events.out.tfevents.*"):
        f.rename(f.with_name(re.sub(r"tfevents\.\d+\.", "tfevents.0000000001.", f.name)))
    opt, sched, fc = session()
    fc.load_state_dict(states[80][0])
    sched.load_state_dict(states[80][1])
    train(list(range(81, total + 1)), opt, sched, fc)
    fc.close()

    def read(run: Path) -> EventAccumulator:
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        return acc

    run = read(logdir)
    for tag in ("forecast/final_loss", "forecast/n_points"):
        steps = [e.step for e in run.Scalars(tag)]
        assert steps == sorted(set(steps)) and steps[-1] == total, (tag, steps)
    line = [
        e.step for e in read(logdir / "scaleforecast" / "forecast").Scalars("forecast/observed_vs_forecast")
    ]
    assert line == sorted(set(line)) and line[-1] == total
    texts = [t.tensor_proto.string_val[0].decode() for t in run.Tensors("forecast/status/text_summary")]
    assert any("step 61: **resumed** after update 60" in t for t in texts), texts
    assert any("step 81: **resumed** after update 80" in t for t in texts), texts


def test_a_sessions_warning_points_at_the_users_line() -> None:
    """A warning from deep inside the plugin (here: the resume hint, said by the session) points at the line
    of the loop that called ``fc.step``, not at the plugin's own code."""
    import inspect

    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    for _ in range(30):  # a resumed run: its scheduler has counted 30 updates, no saved forecast state
        opt.step()
        sched.step()
    fc = LossForecastSession(opt, sched, total_steps=200, flush_every=10, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()
        sched.step()
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        fc.step(torch.tensor(2.0))
    fc.close()
    told = [w for w in caught if "no saved forecast state" in str(w.message)]
    assert len(told) == 1 and (told[0].filename, told[0].lineno) == (__file__, line)


@pytest.mark.parametrize("hand_over", [False, True])
def test_a_scheduler_replaced_mid_run(hand_over: bool, capsys: pytest.CaptureFixture[str]) -> None:
    """A loop that builds a new LambdaLR at update 500 to start its cooldown there. Not handed over, the old
    scheduler (no longer stepped) kept the plan at the peak for the rest of the run and the re-plan was said at
    every flush: now the re-plan is said at most three times, with one warning that names the old scheduler as
    unstepped and set_scheduler(). Handed over with set_scheduler(), the plan is the new scheduler's from the
    next flush on, said once, with no warning."""
    from scaleforecast.callbacks import LossForecastSession

    total, swap = 1000, 500
    opt = _sgd(1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    events: list = []
    fc = LossForecastSession(
        opt, sched, total_steps=total, flush_every=25, writer=False, on_event=events.append
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, total + 1):
            if n == swap + 1:
                for g in opt.param_groups:
                    g["initial_lr"] = g["lr"]
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(1 - i / (total - swap), 0.01))
                if hand_over:
                    fc.set_scheduler(sched)
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
            if n == 700:
                planned = fc.forecaster.schedule[[799, 899, 999]].copy()
        fc.close()
    said = capsys.readouterr().out.count("re-planning")
    stale = [str(w.message) for w in caught if "were not stepped" in str(w.message)]
    ahead = np.array([max(1 - i / (total - swap), 0.01) for i in (299, 399, 499)])
    replanned = [e for e in events if e.kind == "schedule"]  # an event too (TensorBoard, on_event)
    assert len(replanned) == said and all(e.severity == "info" for e in replanned)
    if hand_over:
        assert said == 1 and stale == []
        np.testing.assert_allclose(planned, ahead, rtol=1e-6)
    else:
        assert 1 <= said <= 3 and len(stale) == 1, (said, stale)
        assert re.search(r"over updates 5\d\d\.\.5\d\d", stale[0]), stale[0]
        assert "set_scheduler(new_scheduler)" in stale[0]


@pytest.mark.parametrize("given", [False, True])
def test_gradient_norms_of_a_loop_that_clips(given: bool) -> None:
    """A loop that clips its gradients at 1.0 (most updates are clipped) and meets a real gradient spike at
    update 300 (targets x100: a pre-clip norm about a thousand times the typical). Read after the optimizer
    step, the norms sat at the clip value: the spike was invisible and a norm of 1 against a typical 0.99 was
    called a spike. Now those norms are said to be clipped, once, and not checked; the norm clip_grad_norm_
    returns, handed to step(), shows the spike and nothing else."""
    from scaleforecast.callbacks import LossForecastSession

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    total = 400
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / total)))
    events: list = []
    fc = LossForecastSession(
        opt,
        sched,
        total_steps=total,
        writer=False,
        verbose=False,
        track_grad_norm=True,
        flush_every=25,
        on_event=events.append,
    )
    w = torch.randn(32, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, total + 1):
            x = torch.randn(64, 32)
            y = (x @ w + 0.1 * torch.randn(64, 1)) * (100.0 if n == 300 else 1.0)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            # the loss of update 300 is kept ordinary: the gradient norm alone tells the spike
            fc.step(torch.tensor(1.0) if n == 300 else loss.detach(), grad_norm=norm if given else None)
        fc.close()
    clipped = [str(w.message) for w in caught if "were clipped" in str(w.message)]
    spikes = [e.step for e in events if e.kind == "grad_norm"]
    if given:
        assert clipped == [] and spikes == [300], (clipped, spikes)
    else:
        assert len(clipped) == 1 and "grad_norm=norm" in clipped[0], clipped
        assert spikes == [], spikes


def test_a_resume_says_on_the_console_what_history_it_restored(capsys: pytest.CaptureFixture[str]) -> None:
    """A loop resumed from its checkpoint heard nothing of its forecast's history on the console (only the
    resumes that lost something were said): it says what it goes on from."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=200, flush_every=10, writer=False)
    for n in range(1, 106):  # saved with five steps not flushed yet: they count too
        opt.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    saved = fc.state_dict()
    fc.close()
    capsys.readouterr()
    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=200, flush_every=10, writer=False)
    fc.load_state_dict(saved)
    opt.step()
    fc.step(torch.tensor(2.2))
    fc.close()
    out = capsys.readouterr().out
    assert (
        "resumed after update 105: the forecast goes on from the 105 losses it held, up to step 105" in out
    ), out


def test_steps_saved_unflushed_and_flushed_at_close_are_drawn_once_after_the_resume(tmp_path: Path) -> None:
    """A loop saves its state at update 130, between two flushes of 20, then closes (its last flush draws step
    130); resumed, the saved steps 121..130 are fed again: TensorBoard drew step 130 twice. The resumed
    process's first flush hides what the earlier one drew from there on."""
    from scaleforecast.callbacks import LossForecastSession
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def run(first: int, last: int, saved: dict | None = None) -> dict:
        opt = _sgd(0.1)
        fc = LossForecastSession(opt, total_steps=300, flush_every=20, dirpath=str(tmp_path), verbose=False)
        if saved is not None:
            fc.load_state_dict(saved)
        for n in range(first, last + 1):
            opt.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        state = fc.state_dict()
        fc.close()
        return state

    run(131, 300, run(1, 130))
    acc = EventAccumulator(str(tmp_path / "scaleforecast" / "observed"), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("forecast/observed_vs_forecast")]
    assert steps == sorted(set(steps)) and 130 in steps and steps[-1] == 300, steps


class RankOneGoesNaN(TorchCollectives):
    """Rank 0 of two, in one process: rank 1 sends the same losses, NaN from update 28 on."""

    def __init__(self) -> None:
        super().__init__()
        self.rank, self.world_size = 0, 2

    def any(self, flag: bool) -> bool:
        return flag

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        other = tensor.clone()
        if other.dim() == 2:  # a flush's message: (channels + 3, capacity), steps in row `channels`
            from scaleforecast.integrations.distributed import LOSS

            steps = other[other.shape[0] - 3]
            other[LOSS] = torch.where(steps >= 28, torch.full_like(steps, float("nan")), other[LOSS])
        return torch.stack([tensor, other])


def test_the_rank_whose_losses_are_not_finite_is_named() -> None:
    """A NaN on one host of a multi-GPU job: the mean over ranks said the loss went NaN, not where. The rank is
    named, once."""
    session = TrainingSession("probe", writer=False, verbose=False, flush_every=5, total_steps=100)
    session.start(RankOneGoesNaN(), step=0, run_length=None, source=LRSource(_sgd(), []))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 51):
            # rank 0 follows an update later, as DDP's averaged gradients carry rank 1's NaN over to it
            session.record(n, torch.tensor(math.nan if n >= 29 else 2.0 + 3.0 * n**-0.3))
            if n % 5 == 0:
                session.flush(n)
        session.finish(50)
    named = [str(w.message) for w in caught if "non-finite losses come from" in str(w.message)]
    assert named == [
        "probe: non-finite losses come from rank(s) 1 of 2 (first at update 28); later from rank(s) 0 too"
    ], named


def test_lines_go_above_a_progress_bar(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HF's and Lightning's progress bars are tqdm bars: a forecast line printed plainly landed in the middle of
    the bar's line. While a bar is drawn, lines go through ``tqdm.write``."""
    tqdm = pytest.importorskip("tqdm")
    session = TrainingSession("probe", writer=False, verbose=True, total_steps=100)
    written: list[str] = []
    with tqdm.tqdm(total=10, file=io.StringIO()) as bar:
        with monkeypatch.context() as m:
            m.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, **kw: written.append(s)))
            session.say("step 10: a forecast")
        bar.update(1)
    session.say("after the bar")
    assert written == ["probe: step 10: a forecast"]
    assert capsys.readouterr().out == "probe: after the bar\n"


def test_a_run_ended_early_by_something_else_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """A loop (or the trainer's own early stopping) ends the run at update 60 of 100: the last line printed
    forecast update 100, and nothing said the run would not get there."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=100, flush_every=10, refit_every=10, writer=False)
    for n in range(1, 61):
        opt.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    fc.close()
    out = capsys.readouterr().out
    assert (
        "training ended at update 60 of 100, before its last: the forecasts printed are of update 100" in out
    )
    assert fc.stopped_at is None


def test_a_forecast_out_of_the_laws_shape_says_why_once(capsys: pytest.CaptureFixture[str]) -> None:
    """A loss falling toward zero (a separable task) fits a floor below zero: its forecasts stay usable, and
    the console line said "(ok)" while the forecast held the note that its band is an extrapolation. The note is
    printed once, not at every refit."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=200, flush_every=10, refit_every=10, writer=False)
    for n in range(1, 201):
        opt.step()
        fc.step(torch.tensor(3.0 * n**-0.9))
    fc.close()
    out = capsys.readouterr().out
    assert fc.forecast is not None and any("[out_of_shape]" in w for w in fc.forecast.warnings)
    assert out.count("[out_of_shape]") == 1, out


def test_plain_loop_runs_of_one_process_write_a_tensorboard_run_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two plain-loop runs in a row with the default ``dirpath``: both wrote into ``runs/scaleforecast``, one
    TensorBoard run whose lines zig-zag between them. Each writes a new ``runs/<time>_<host>``, where torch's
    ``SummaryWriter()`` would."""
    from scaleforecast.callbacks import LossForecastSession

    monkeypatch.chdir(tmp_path)
    dirs = []
    for _ in range(2):
        opt = _sgd(0.1)
        fc = LossForecastSession(opt, total_steps=40, flush_every=10, verbose=False)
        for n in range(1, 41):
            opt.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
        dirs.append(Path(fc.log_dir))
    assert dirs[0] != dirs[1] and {d.parent.resolve() for d in dirs} == {(tmp_path / "runs").resolve()}
    assert all(list(d.glob("events.out.tfevents.*")) for d in dirs)


def test_a_loss_of_many_values_is_read_as_its_mean_and_said_once() -> None:
    """A loop passes a per-sample loss (shape ``[8]``) once at step 100: the recording was switched off for the
    rest of the run (health checks included, and the steps buffered before it lost). Its mean is taken, with one
    warning, and every step is observed."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=200, flush_every=10, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 201):
            opt.step()
            loss = torch.tensor(2.0 + 3.0 * n**-0.3)
            fc.step(loss.repeat(8) if n in (100, 150) else loss)
        fc.close()
    said = [str(w.message) for w in caught if "has shape (8,)" in str(w.message)]
    assert len(said) == 1 and "its mean is taken" in said[0], said
    assert fc.errors == {} and fc.forecaster.n_observations == 200
    np.testing.assert_allclose(fc.forecaster.observations().y[99], 2.0 + 3.0 * 100**-0.3, rtol=1e-6)


def test_a_garbled_state_restored_after_the_start_keeps_tensorboard(tmp_path: Path) -> None:
    """A plain loop restores its state after its TensorBoard run exists: a garbled state replaced the monitor
    with one without sinks, and nothing more reached TensorBoard. The fresh history keeps the run's sinks."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=100, flush_every=10, dirpath=str(tmp_path), verbose=False)
    with pytest.warns(RuntimeWarning, match="could not be used"):
        fc.load_state_dict({"format": STATE_FORMAT, "version": 2, "monitor": {"forecaster": {}}, "step": 10})
    for n in range(11, 101):
        opt.step()
        fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
    fc.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("forecast/final_loss")][-1] == 100


def test_an_out_of_shape_note_is_withdrawn_when_the_fits_are_back_in_shape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A transient at the start (a loss falling toward zero, then a law curve) made the first fits out of
    shape; the note printed then stood unanswered while every later forecast was in shape. It is withdrawn,
    once each time, and what was said last matches the last forecast."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=400, flush_every=10, refit_every=10, writer=False)
    for n in range(1, 401):
        opt.step()
        fc.step(torch.tensor(3.0 * n**-0.9 if n <= 60 else 3.0 * 60**-0.9 - 0.02 + 0.02 * (n - 59) ** -0.5))
    fc.close()
    said = [
        "note" if "[out_of_shape] the" in line else "back"
        for line in capsys.readouterr().out.splitlines()
        if "[out_of_shape]" in line
    ]
    assert said[:2] == ["note", "back"], said
    assert all(a != b for a, b in itertools.pairwise(said)), said  # each note answered once
    assert fc.forecast is not None
    assert (said[-1] == "note") == any(w.startswith("[out_of_shape]") for w in fc.forecast.warnings)


def test_a_scheduler_whose_lrs_cannot_be_read_ahead_still_gets_a_forecast() -> None:
    """The look-ahead failed (a scheduler that cannot be copied) and was switched off for the run: no forecast
    at any step, one warning at the start that did not say what to do. The current LR is held for the rest of
    the run, re-planned as the LRs used change, and the warning says to pass ``schedule=``."""
    import threading

    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)

    class Locked:
        def __init__(self) -> None:
            self.optimizer, self.count, self.lock = opt, 0, threading.Lock()

        def step(self) -> None:
            self.count += 1

    class Outer:  # a scheduler nesting one that cannot be copied: reading it ahead would step the real one
        def __init__(self) -> None:
            self.optimizer, self._schedulers = opt, [Locked()]

        def step(self) -> None:
            self._schedulers[0].step()

    sched = Outer()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fc = LossForecastSession(opt, sched, total_steps=200, flush_every=10, refit_every=20, writer=False)
        for n in range(1, 201):
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 3.0 * (0.1 * n) ** -0.4))
        fc.close()
    said = [str(w.message) for w in caught if "LossForecastSession" in str(w.message)]
    # said once, under the session's name once (said inside the look-ahead's recording of warnings, it came
    # back through it prefixed twice)
    (told,) = [m for m in said if "cannot be read from the scheduler" in m]
    assert told.startswith("LossForecastSession: the LRs ahead") and "schedule=" in told, told
    assert not [m for m in said if "switched off" in m], said
    assert sched._schedulers[0].count == 200  # only the loop stepped it
    assert fc.forecast is not None and fc.forecast.final is not None and fc.errors == {}


def test_a_hand_set_lr_that_keeps_changing_is_told_to_pass_the_schedule() -> None:
    """No scheduler given and an LR set by hand each update: the warning after the re-plans said "the plan is
    read ahead from the LR scheduler(s) ... scheduler_every=", of a scheduler that does not exist."""
    from scaleforecast.callbacks import LossForecastSession

    opt = _sgd(0.1)
    fc = LossForecastSession(opt, total_steps=200, flush_every=10, writer=False, verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 201):
            opt.param_groups[0]["lr"] = 0.1 * (1 - n / 201)
            opt.step()
            fc.step(torch.tensor(2.0 + 3.0 * n**-0.3))
        fc.close()
    (told,) = [str(w.message) for w in caught if "left the planned schedule" in str(w.message)]
    assert "no LR scheduler was given" in told and "schedule=" in told and "scheduler_every" not in told, told


def test_the_cli_reads_the_tensorboard_folder_a_plain_loop_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain loop that logs nothing else: its folder held the forecast's tags and, beside it, the loss the
    callback saw, but no loss tag of its own and no LR, so ``forecast``, ``report`` and ``backtest`` refused it.
    The LR of each flush is written beside the loss, and the reader falls back on the callback's loss."""
    from scaleforecast.callbacks import LossForecastSession

    from scaleforecast.cli import main

    total = 400
    opt = _sgd(0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / 20) * (1.0 if i < 280 else (total - i) / (total - 280))
    )
    from adapter_kit import step_along_the_law

    fc = LossForecastSession(opt, sched, total_steps=total, dirpath=str(tmp_path / "run"), flush_every=10)
    step_along_the_law(opt, sched, fc, total)
    fc.close()
    capsys.readouterr()
    assert main(["forecast", str(tmp_path / "run"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss_column"] == "forecast/observed_vs_forecast" and result["forecasts"], result
    assert result["lr_source"].startswith("fit:wsd:"), result["lr_source"]
    assert any("no loss of its own" in w for w in result["data_warnings"]), result["data_warnings"]
    assert result["final_step"] == total
