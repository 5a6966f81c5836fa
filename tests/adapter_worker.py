"""The two-process adapter scenarios: one rank each (HF Trainer, plain loop: under ``torchrun``), or the launching
process (Lightning, whose ``ddp_fork`` starts its own two workers). Run by the ``two_ranks`` fixture::

    torchrun --nproc_per_node 2 tests/adapter_worker.py --adapter loop --out DIR
    python tests/adapter_worker.py --adapter lightning --out DIR

Two scenarios run one after the other:

- ``stop``: rank ``r``'s loss is offset by ``r`` (rank 1 sees +1.0), so the mean over ranks cannot reach the
  target while rank 0 alone could; both ranks must stop at the same step, from identical state.
- ``fault``: the session's per-step part fails on rank 1 from step 7, and a listener that only rank 0 hears
  (an Optuna reporter whose trial lives on rank 0) prunes the trial at half the run; both ranks must finish,
  stop at the same step, and rank 1 must report its own failure.
- ``window-fault`` (HF only): the same with the logged window means as the source of losses.

Every rank writes ``DIR/<scenario>-rank<r>.json``; for Lightning the launching process also writes
``DIR/<scenario>-parent.json`` (what the callback object it holds shows after ``fit``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from adapter_kit import Plan, finite_mean, train
from optuna.pruners import BasePruner
from scaleforecast.integrations.optuna import OptunaForecastReporter

FAULT_FROM = 7


class SpreadRecorder:
    """A detector that records the gap between the max and the mean over ranks it is fed."""

    def __init__(self) -> None:
        self.gaps: list[float] = []

    def check(self, batch: Any, view: Any) -> list[Any]:
        if batch.loss_max is not None:
            self.gaps += [float(v) for v in batch.loss_max - batch.loss]
        return []


class HalfwayPruner(BasePruner):
    """Prunes a trial once it has reported at half of its run (per mille 500)."""

    def prune(self, study: optuna.Study, trial: Any) -> bool:
        return trial.last_step is not None and trial.last_step >= 500


def break_recording(session: Any) -> None:
    """The session's per-step part (and its window-mean part) raise from update ``FAULT_FROM`` on: an injected
    fault on this rank only."""
    record, window = session._record, session._window

    def flaky_record(step: int, loss: Any) -> None:
        if step >= FAULT_FROM:
            raise RuntimeError("injected fault")
        record(step, loss)

    def flaky_window(step: int, size: int, loss: float) -> Any:
        if step >= FAULT_FROM:
            raise RuntimeError("injected fault")
        return window(step, size, loss)

    session._record, session._window = flaky_record, flaky_window


class Heard:
    """A listener that keeps every forecast it hears: (step, fitted_at_step, final loss)."""

    def __init__(self) -> None:
        self.heard: list[tuple[int, int, float | None]] = []

    def on_forecast(self, step: int, forecast: Any) -> list[Any]:
        final = forecast.final
        self.heard.append((step, forecast.fitted_at_step, None if final is None else final.loss))
        return []


def slow_refits_here() -> None:
    """Every refit on this rank takes 30 ms longer (an injected fault): its background refits come late, so
    this rank waits where the other does not, and must still act on the same forecast at the same step."""
    import time

    import scaleforecast.forecaster as module

    fit = module.fit

    def slow_fit(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.03)
        return fit(*args, **kwargs)

    module.fit = slow_fit


def _slow_classes() -> dict[str, Any]:
    from scaleforecast.callbacks import LossForecastSession

    class SlowLoop(LossForecastSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if int(os.environ.get("RANK", "0")) == 1:
                slow_refits_here()
            super().__init__(*args, **kwargs)

    classes = {"loop": SlowLoop}
    try:
        from scaleforecast.callbacks import HFLossForecast

        class SlowHF(HFLossForecast):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if int(os.environ.get("RANK", "0")) == 1:
                    slow_refits_here()
                super().on_train_begin(args, state, control, **kwargs)

        classes["hf"] = SlowHF
    except ImportError:
        pass
    return classes


def _adapter_classes() -> dict[str, Any]:
    from scaleforecast.callbacks import LossForecastSession

    class FlakyLoop(LossForecastSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if int(os.environ.get("RANK", "0")) == 1:
                break_recording(self.session)

    classes = {"loop": FlakyLoop}
    try:
        from scaleforecast.callbacks import HFLossForecast

        class FlakyHF(HFLossForecast):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                super().on_train_begin(args, state, control, **kwargs)
                if int(os.environ.get("RANK", "0")) == 1:
                    break_recording(self.session)

        classes["hf"] = FlakyHF
    except ImportError:  # transformers not installed: the HF variant is skipped by the fixture
        pass
    return classes


try:  # module level, so that ddp_spawn can pickle it by reference
    from lightning.pytorch.callbacks import Callback
    from scaleforecast.callbacks import LossForecast

    class FlakyLightning(LossForecast):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            super().on_train_start(trainer, pl_module)
            if trainer.global_rank == 1:
                break_recording(self.session)

    class SlowLightning(LossForecast):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.global_rank == 1:
                slow_refits_here()
            super().on_train_start(trainer, pl_module)

    class Report(Callback):
        """Each Lightning worker writes what it decided, after the forecast callback's own end."""

        def __init__(self, out: str, scenario: str) -> None:
            self.out, self.scenario = out, scenario

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            cb = next(c for c in trainer.callbacks if isinstance(c, LossForecast))
            write(
                Path(self.out),
                self.scenario,
                trainer.global_rank,
                cb,
                int(trainer.global_step),
                pl_module.net.raw,
            )

except ImportError:
    pass


class LoggedLoss:
    """Keeps the HF Trainer's logged ``loss`` window means (gathered over ranks by the Trainer)."""

    def __init__(self) -> None:
        self.logs: list[tuple[int, float]] = []

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            self.logs.append((int(state.global_step), float(logs["loss"])))


def write(
    out: Path,
    scenario: str,
    rank: int,
    cb: Any,
    steps_run: int,
    raw: list[float],
    logs: list[Any] | None = None,
) -> None:
    state = cb.forecaster.state_dict()
    gaps = next((d.gaps for d in cb.monitor.detectors if isinstance(d, SpreadRecorder)), [])
    heard = next((h.heard for h in cb.monitor.listeners if isinstance(h, Heard)), [])
    record = {
        "rank": rank,
        "steps_run": steps_run,
        "stopped_at": cb.stopped_at,
        "reason": cb.stop_reason,
        # The data every rank fitted: the history, the plan and the fit (the listener's events may differ).
        "digest": hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest(),
        "gaps": gaps,
        "errors": cb.errors,
        "own_mean": finite_mean(raw[-10:]),
        "observed": cb.forecaster.n_observations,
        "observations": [cb.forecaster.observations().end.tolist(), cb.forecaster.observations().y.tolist()],
        "logs": logs or [],
        "heard": heard,
        "background": cb.forecaster.config.background,
    }
    (out / f"{scenario}-rank{rank}.json").write_text(json.dumps(record))


def scenarios(adapter: str, out: Path) -> list[tuple[str, Plan]]:
    rank = int(os.environ.get("RANK", "0"))
    common: dict[str, Any] = {"flush_every": 5, "refit_every": 5, "writer": False, "verbose": False}
    stop = Plan(
        steps=100,
        batch=256,
        offset=1.0,
        target_loss=0.45,
        kwargs={**common, "min_fraction": 0.3, "detectors": [SpreadRecorder()]},
        distributed=True,
        # Forked workers: under ``ddp_spawn`` a gloo job whose callbacks run collectives through the strategy
        # aborts now and then at interpreter exit, after training ended (torch's gloo teardown, with or without
        # this package: a callback that only calls ``strategy.all_gather`` does it too). Spawn pickling of the
        # callback is covered in test_lightning.py.
        launcher="ddp_fork",
        tensorboard=False,
    )

    def reporter() -> OptunaForecastReporter:
        # Only rank 0 holds a trial; the other ranks learn of the pruning through the adapter's agreement.
        trial = optuna.create_study(pruner=HalfwayPruner()).ask() if rank == 0 else None
        # every forecast reported, vague ones too: the scenario is who hears the pruning, not which forecasts
        return OptunaForecastReporter(trial, n_grid=10, confidence=0.5)

    fault = Plan(
        steps=40,
        kwargs={**common, "listeners": [reporter()]},
        distributed=True,
        launcher="ddp_fork",
        tensorboard=False,
        adapter_class=FlakyLightning if adapter == "lightning" else _adapter_classes()[adapter],
    )
    late = Plan(
        steps=60,
        kwargs={
            **common,
            "refit_every": None,
            "forecaster_config": {"min_refit_gap": 5},
            "listeners": [Heard()],
        },
        distributed=True,
        launcher="ddp_fork",
        tensorboard=False,
        adapter_class=SlowLightning if adapter == "lightning" else _slow_classes()[adapter],
    )
    out = [("stop", stop), ("fault", fault), ("late-refits", late)]
    if adapter == "hf":  # the HF Trainer's second source of losses: logged window means (no gather)
        window = Plan(
            # logged windows come every 5 updates and a refit takes effect at the next one: a longer run
            steps=60,
            kwargs={**common, "listeners": [reporter()], "resolution": "window"},
            distributed=True,
            tensorboard=False,
            adapter_class=fault.adapter_class,
        )
        out.append(("window-fault", window))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", required=True)
    ns = parser.parse_args(argv)
    out = Path(ns.out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, plan in scenarios(ns.adapter, out):
        if ns.adapter == "lightning":
            plan.extra_callbacks = [Report(str(out), name)]
            run = train("lightning", out / name, plan)
            parent = {"stopped_at": run.cb.stopped_at, "reason": run.cb.stop_reason, "errors": run.cb.errors}
            parent["final"] = None if run.cb.forecast is None else run.cb.forecast.final.loss
            (out / f"{name}-parent.json").write_text(json.dumps(parent))
        else:
            logged = None
            if ns.adapter == "hf":
                from transformers import TrainerCallback

                logged = type("LoggedLossCallback", (LoggedLoss, TrainerCallback), {})()
                plan.extra_callbacks = [logged]
            run = train(ns.adapter, out / f"{name}-{os.environ['RANK']}", plan)
            logs = None if logged is None else logged.logs
            write(out, name, int(os.environ["RANK"]), run.cb, run.steps_run, run.model.raw, logs)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
