"""The LR look-ahead against real torch schedulers stepped for real."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from scaleforecast.integrations.lookahead import LookaheadError, lookahead_lrs  # noqa: E402
from torch.optim import lr_scheduler as ls  # noqa: E402

TOTAL = 60


def _optimizer(lr: float = 0.1, groups: int = 1) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr * (i + 1)} for i in range(groups)]
    return torch.optim.SGD(params, lr=lr, momentum=0.9)


def _warmup_cosine(opt: torch.optim.Optimizer) -> ls.LRScheduler:
    return ls.SequentialLR(
        opt,
        [ls.LinearLR(opt, 0.1, 1.0, total_iters=10), ls.CosineAnnealingLR(opt, T_max=TOTAL - 10)],
        milestones=[10],
    )


FACTORIES: dict[str, Callable[[torch.optim.Optimizer], object]] = {
    "step": lambda o: ls.StepLR(o, step_size=7, gamma=0.5),
    "multistep": lambda o: ls.MultiStepLR(o, milestones=[10, 20, 20, 45], gamma=0.3),
    "exponential": lambda o: ls.ExponentialLR(o, gamma=0.97),
    "constant": lambda o: ls.ConstantLR(o, factor=0.25, total_iters=12),
    "linear": lambda o: ls.LinearLR(o, start_factor=1.0, end_factor=0.01, total_iters=TOTAL),
    "poly": lambda o: ls.PolynomialLR(o, total_iters=TOTAL, power=2.0),
    "cosine": lambda o: ls.CosineAnnealingLR(o, T_max=TOTAL, eta_min=1e-3),
    "cosine_past_tmax": lambda o: ls.CosineAnnealingLR(o, T_max=25),
    "lambda": lambda o: ls.LambdaLR(o, lambda e: 1.0 / math.sqrt(1 + e)),
    "onecycle": lambda o: ls.OneCycleLR(o, max_lr=0.5, total_steps=TOTAL + 1),
    "warm_restarts": lambda o: ls.CosineAnnealingWarmRestarts(o, T_0=13),
    "sequential": _warmup_cosine,
    "chained": lambda o: ls.ChainedScheduler(
        [ls.ConstantLR(o, factor=0.5, total_iters=5), ls.ExponentialLR(o, gamma=0.98)]
    ),
}


def _plain_state(sched: object) -> dict:
    return {k: v for k, v in sched.state_dict().items() if not callable(v) and k != "lr_lambdas"}


def _real_lrs(opt: torch.optim.Optimizer, scheds: list, n: int, group: int = 0, every: int = 1) -> np.ndarray:
    """Step the real optimizer and schedulers, recording the LR each update uses."""
    used = []
    for j in range(1, n + 1):
        used.append(opt.param_groups[group]["lr"])
        opt.step()
        if j % every == 0:
            for s in scheds:
                s.step()
    return np.array(used)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("closed_form", [True, False])
def test_lookahead_matches_real_stepping(name: str, closed_form: bool) -> None:
    opt = _optimizer()
    sched = FACTORIES[name](opt)
    before = repr(_plain_state(sched)), repr(opt.state_dict())
    predicted = lookahead_lrs(opt, sched, TOTAL, closed_form=closed_form)
    # the look-ahead must leave the real objects untouched
    assert (repr(_plain_state(sched)), repr(opt.state_dict())) == before
    actual = _real_lrs(opt, [sched], TOTAL)
    assert predicted.shape == (TOTAL,)
    np.testing.assert_allclose(predicted, actual, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", ["cosine", "sequential", "multistep", "onecycle"])
def test_lookahead_mid_run_starts_at_the_lr_in_use(name: str) -> None:
    opt = _optimizer()
    sched = FACTORIES[name](opt)
    done = 23
    _real_lrs(opt, [sched], done)
    predicted = lookahead_lrs(opt, sched, TOTAL, steps_done=done)
    assert predicted[0] == opt.param_groups[0]["lr"]
    actual = _real_lrs(opt, [sched], TOTAL - done)
    np.testing.assert_allclose(predicted, actual, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize(("done", "every"), [(TOTAL - 1, 1), (TOTAL - 5, 100)])
def test_no_scheduler_step_left_is_the_lr_in_use(name: str, done: int, every: int) -> None:
    """The last update of a run, or the rest of a last epoch (a per-epoch scheduler resumed inside it): no
    scheduler step comes before the end, so every LR left is the one in use."""
    opt = _optimizer()
    sched = FACTORIES[name](opt)
    _real_lrs(opt, [sched], done, every=every)
    predicted = lookahead_lrs(opt, sched, TOTAL, steps_done=done, step_every=every)
    np.testing.assert_array_equal(predicted, np.full(TOTAL - done, opt.param_groups[0]["lr"]))


def test_lookahead_group_and_epoch_interval() -> None:
    opt = _optimizer(groups=2)
    sched = ls.LambdaLR(opt, [lambda e: 0.9**e, lambda e: 1.0 / (1 + e)])
    every = 8
    done = 5
    _real_lrs(opt, [sched], done, every=every)
    predicted = lookahead_lrs(opt, sched, TOTAL, steps_done=done, group=1, step_every=every)
    # the real loop's phase: the scheduler steps after updates 8, 16, ...
    used = []
    for j in range(done + 1, TOTAL + 1):
        used.append(opt.param_groups[1]["lr"])
        opt.step()
        if j % every == 0:
            sched.step()
    np.testing.assert_allclose(predicted, used, rtol=1e-12)


def test_lookahead_does_not_copy_parameters() -> None:
    class Holder:
        def __init__(self) -> None:
            self.big = torch.zeros(10)
            self.copies = 0

        def factor(self, e: int) -> float:
            return 0.5 ** (e // 10)

        def __deepcopy__(self, memo: dict) -> Holder:
            self.copies += 1
            return self

    holder = Holder()
    opt = _optimizer()
    sched = ls.LambdaLR(opt, holder.factor)
    lookahead_lrs(opt, sched, TOTAL)
    assert holder.copies == 0
    assert opt.param_groups[0]["params"][0].grad is None


def test_lookahead_without_scheduler_and_errors() -> None:
    opt = _optimizer(lr=0.02)
    np.testing.assert_array_equal(lookahead_lrs(opt, None, 5), np.full(5, 0.02))
    assert lookahead_lrs(opt, [], 5, steps_done=5).size == 0
    with pytest.raises(LookaheadError, match="total_steps"):
        lookahead_lrs(opt, None, 0)
    with pytest.raises(LookaheadError, match="param group"):
        lookahead_lrs(opt, None, 5, group=3)
    other = _optimizer()
    with pytest.raises(LookaheadError, match="different optimizer"):
        lookahead_lrs(opt, ls.StepLR(other, 3), 5)


def test_lookahead_plateau_is_constant_with_warning() -> None:
    opt = _optimizer(lr=0.05)
    sched = ls.ReduceLROnPlateau(opt)
    with pytest.warns(UserWarning, match="ReduceLROnPlateau"):
        lrs = lookahead_lrs(opt, sched, 10)
    np.testing.assert_array_equal(lrs, np.full(10, 0.05))


def test_a_scheduler_that_is_no_torch_lr_scheduler_is_stepped_on_copies() -> None:
    """A plain class with ``optimizer``, ``step`` and ``state_dict`` (Lightning takes one through
    ``lr_scheduler_step``): read by stepping copies (its missing ``last_epoch`` switched the look-ahead off)."""

    _halving_is_read_on_copies(_Halving)


def test_a_scheduler_whose_step_needs_a_metric_is_held_like_plateau() -> None:
    """transformers' ``GreedyLR`` (no torch LRScheduler) steps on the eval loss: stepping copies of it without
    one raised, and the look-ahead was switched off for the run. It is read as ReduceLROnPlateau is."""
    from scaleforecast.integrations.lookahead import metric_driven

    GreedyLR = pytest.importorskip("transformers.optimization").GreedyLR
    opt = _optimizer(lr=0.05)
    sched = GreedyLR(opt, patience=1, min_lr=1e-5)
    assert metric_driven(sched) and metric_driven(ls.ReduceLROnPlateau(_optimizer()))
    assert not metric_driven(ls.StepLR(_optimizer(), 3))
    with pytest.warns(UserWarning, match="GreedyLR changes the LR from future metrics"):
        lrs = lookahead_lrs(opt, [sched], 10)
    np.testing.assert_array_equal(lrs, np.full(10, 0.05))


# Composite and long-horizon cases: the vectorised reading must hold over many steps, from mid-run, through
# milestones and restarts, and for nestings of SequentialLR and ChainedScheduler.
LONG = 2500
LONG_FACTORIES: dict[str, Callable[[torch.optim.Optimizer], object]] = {
    **{k: v for k, v in FACTORIES.items() if k != "onecycle"},
    "onecycle": lambda o: ls.OneCycleLR(o, max_lr=0.5, total_steps=LONG + 100),
    "onecycle_3phase_linear": lambda o: ls.OneCycleLR(
        o, max_lr=0.5, total_steps=LONG + 100, three_phase=True, anneal_strategy="linear"
    ),
    "cosine_eta_min": lambda o: ls.CosineAnnealingLR(o, T_max=77, eta_min=1e-3),
    "multiplicative": lambda o: ls.MultiplicativeLR(o, lambda e: 0.999),
    "cyclic_triangular2": lambda o: ls.CyclicLR(o, 0.01, 0.1, step_size_up=13, mode="triangular2"),
    "cyclic_exp_range": lambda o: ls.CyclicLR(
        o, 0.01, 0.1, step_size_up=13, step_size_down=7, mode="exp_range", gamma=0.999
    ),
    "cyclic_custom": lambda o: ls.CyclicLR(
        o, 0.01, 0.1, step_size_up=13, scale_fn=lambda x: 1 / (1 + x), scale_mode="iterations"
    ),
    "warm_restarts_mult": lambda o: ls.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=3, eta_min=1e-4),
    "sequential_three": lambda o: ls.SequentialLR(
        o,
        [
            ls.LinearLR(o, 0.1, 1.0, total_iters=10),
            ls.ConstantLR(o, factor=0.5, total_iters=20),
            ls.CosineAnnealingLR(o, T_max=100, eta_min=1e-3),
        ],
        milestones=[10, 40],
    ),
    "sequential_lambda_restarts": lambda o: ls.SequentialLR(
        o,
        [ls.LambdaLR(o, lambda e: (e + 1) / 10), ls.CosineAnnealingWarmRestarts(o, T_0=7, T_mult=2)],
        milestones=[10],
    ),
    "sequential_onecycle": lambda o: ls.SequentialLR(
        o, [ls.ConstantLR(o, 0.1, 5), ls.OneCycleLR(o, max_lr=0.5, total_steps=LONG + 100)], milestones=[5]
    ),
    "chained_over_sequential": lambda o: ls.ChainedScheduler(
        [_warmup_cosine(o), ls.MultiplicativeLR(o, lambda e: 0.9999)]
    ),
}


@pytest.mark.parametrize("name", sorted(LONG_FACTORIES))
@pytest.mark.parametrize("done", [0, 37])
def test_vectorised_reading_matches_stepping_over_long_runs(name: str, done: int) -> None:
    from scaleforecast.integrations import lookahead as la

    opt = _optimizer()
    sched = LONG_FACTORIES[name](opt)
    _real_lrs(opt, [sched], done)
    # the vectorised reading itself, not the stepping fallback
    assert la._read_ahead([sched], opt, 0, LONG - done) is not None
    predicted = lookahead_lrs(opt, sched, LONG, steps_done=done)
    actual = _real_lrs(opt, [sched], LONG - done)
    np.testing.assert_allclose(predicted, actual, rtol=1e-12, atol=1e-15)


def test_two_schedulers_stepped_in_turn() -> None:
    opt = _optimizer()
    scheds = [ls.LinearLR(opt, 0.1, 1.0, total_iters=10), ls.ExponentialLR(opt, 0.999)]
    predicted = lookahead_lrs(opt, scheds, LONG)
    np.testing.assert_allclose(predicted, _real_lrs(opt, scheds, LONG), rtol=1e-12)


HF_SCHEDULES = {
    "linear": {},
    "cosine": {},
    "cosine_with_restarts": {"scheduler_specific_kwargs": {"num_cycles": 3}},
    "polynomial": {"scheduler_specific_kwargs": {"lr_end": 1e-5, "power": 2.0}},
    "constant_with_warmup": {},
    "inverse_sqrt": {},
    "cosine_with_min_lr": {"scheduler_specific_kwargs": {"min_lr_rate": 0.1}},
    "warmup_stable_decay": {"scheduler_specific_kwargs": {"num_decay_steps": 500, "num_stable_steps": 1500}},
}


@pytest.mark.filterwarnings("ignore:Both num_training_steps and num_stable_steps")
@pytest.mark.parametrize("kind", sorted(HF_SCHEDULES))
def test_hugging_face_schedules_are_read_in_vectorised_form(kind: str) -> None:
    transformers = pytest.importorskip("transformers")
    from scaleforecast.integrations import lookahead as la

    opt = _optimizer()
    sched = transformers.get_scheduler(
        kind, opt, num_warmup_steps=100, num_training_steps=LONG, **HF_SCHEDULES[kind]
    )
    assert la._hf_twin(sched.lr_lambdas[0]) is not None
    predicted = lookahead_lrs(opt, sched, LONG)
    np.testing.assert_allclose(predicted, _real_lrs(opt, [sched], LONG), rtol=1e-12, atol=1e-15)


def test_array_friendly_lambda_is_checked_before_it_is_trusted() -> None:
    from scaleforecast.integrations import lookahead as la

    calls: list[object] = []

    def overflows(e: object) -> float:
        calls.append(e)
        # fine on Python ints, silently wrong on int64 arrays past ~2e6
        return 1.0 / (1.0 + (e * 1000) ** 3)

    xs = np.arange(0, 3000)
    out = la._call_many(overflows, xs)
    np.testing.assert_allclose(out, [1.0 / (1.0 + (int(e) * 1000) ** 3) for e in xs], rtol=1e-15)
    assert len(calls) > xs.size  # the array call was rejected, every element was called alone
    fast = la._call_many(lambda e: 0.99**e, xs)
    np.testing.assert_allclose(fast, [0.99 ** int(e) for e in xs], rtol=1e-12)


def test_one_cycle_too_short_for_the_run_is_a_clear_error() -> None:
    opt = _optimizer()
    sched = ls.OneCycleLR(opt, max_lr=0.5, total_steps=50)
    with pytest.raises(LookaheadError, match="OneCycleLR was built for 50 steps"):
        lookahead_lrs(opt, sched, 200)


def test_custom_scheduler_falls_back_to_stepping() -> None:
    from scaleforecast.integrations import lookahead as la

    class Halving(ls.LRScheduler):
        def get_lr(self) -> list[float]:
            return [g["lr"] * (0.5 if self.last_epoch % 9 == 0 else 1.0) for g in self.optimizer.param_groups]

    opt = _optimizer()
    sched = Halving(opt)
    assert la._read_ahead([sched], opt, 0, 100) is None
    predicted = lookahead_lrs(opt, sched, 100)
    np.testing.assert_allclose(predicted, _real_lrs(opt, [sched], 100), rtol=1e-12)


def test_a_lambda_that_is_the_schedulers_own_method_never_steps_the_real_one() -> None:
    """The pytorch-transformers ``WarmupLinearSchedule`` pattern: a ``LambdaLR`` subclass passing its own
    method. The look-ahead shared the method's owner with its copy, so the "copy" was the real scheduler,
    stepped hundreds of times: the run trained at another LR."""

    class WarmupCosine(ls.LambdaLR):
        def __init__(self, opt: torch.optim.Optimizer, total: int) -> None:
            self.total = total
            super().__init__(opt, self.factor)

        def factor(self, e: int) -> float:
            return min(1.0, (e + 1) / 10) * 0.5 * (1 + math.cos(math.pi * min(e, self.total) / self.total))

    opt = _optimizer()
    sched = WarmupCosine(opt, 100)
    for _ in range(30):
        opt.step()
        sched.step()
    lr_now = opt.param_groups[0]["lr"]
    predicted = lookahead_lrs(opt, sched, 100, steps_done=30)
    assert sched.last_epoch == 30 and opt.param_groups[0]["lr"] == lr_now
    np.testing.assert_allclose(predicted, _real_lrs(opt, [sched], 70), rtol=1e-12)


class _Halving:
    """A plain scheduler class (no torch LRScheduler): halves the LR every ``every`` steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int) -> None:
        self.optimizer, self.every, self.count = optimizer, every, 0

    def step(self) -> None:
        self.count += 1
        if self.count % self.every == 0:
            for g in self.optimizer.param_groups:
                g["lr"] *= 0.5

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


class _Locked(_Halving):
    """One holding a lock (as one holding a logger's stream or a writer does): it cannot be deep-copied."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int) -> None:
        import threading

        super().__init__(optimizer, every)
        self.lock = threading.Lock()


def _halving_is_read_on_copies(kind: type[_Halving]) -> None:
    opt = _optimizer(lr=0.08)
    sched = kind(opt, 4)
    lrs = lookahead_lrs(opt, [sched], 12)
    np.testing.assert_allclose(lrs, 0.08 * 0.5 ** (np.arange(12) // 4))
    assert opt.param_groups[0]["lr"] == 0.08 and sched.count == 0  # nothing real was stepped


def test_a_scheduler_that_cannot_be_deep_copied_is_copied_sharing_what_cannot_be() -> None:
    """``copy.deepcopy`` of a scheduler holding a lock raised, and the look-ahead was switched off for the run:
    no forecast at all. Its copy shares the lock; its counters and LR are its own."""
    _halving_is_read_on_copies(_Locked)


def test_a_nested_scheduler_that_cannot_be_copied_is_a_clear_error_not_a_real_step() -> None:
    """Shared, a nested scheduler that cannot be copied would be the real one, stepped by the look-ahead: that
    is refused with a reason (the session then holds the current LR, see test_session)."""
    opt = _optimizer(lr=0.08)
    inner = _Locked(opt, 4)

    class Outer:
        def __init__(self) -> None:
            self.optimizer, self._schedulers = opt, [inner]

        def step(self) -> None:
            for s in self._schedulers:
                s.step()

    with pytest.raises(LookaheadError, match="_Locked cannot be copied"):
        lookahead_lrs(opt, [Outer()], 12)
    assert inner.count == 0 and opt.param_groups[0]["lr"] == 0.08
