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
