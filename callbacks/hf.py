"""Hugging Face ``Trainer`` callback: forecast the run's final loss while it trains, and stop runs that cannot
reach a target.

Usage::

    from transformers import Trainer, TrainingArguments
    from scaleforecast.callbacks import HFLossForecast

    args = TrainingArguments("out", max_steps=20_000, report_to=["tensorboard"])
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[HFLossForecast(target_loss=3.1)])
    trainer.train()             # then: tensorboard --logdir out/runs

Loss resolution, and the trade-off. HF callbacks receive no per-step loss. Two sources exist:

- **per step** (preferred, ``resolution="auto"`` or ``"step"``): a forward hook on the model reads the
  ``loss`` its output carries (HF models return one whenever ``labels`` are passed), only in training mode
  with gradients on, so evaluation calls are not counted. The micro-batch losses of one optimizer step are
  summed on the device and normalised as the Trainer normalises them (by the micro-batch count, or, when
  the model got ``num_items_in_batch``, already per token of the whole step), so one observation equals what
  ``logs["loss"]`` would show at ``logging_steps=1``. It sees NaN/Inf (which ``logging_nan_inf_filter`` hides
  from the logs) and gives ``logging_steps`` times more points, so the band tightens earlier; it costs one
  device add per micro-batch. It only sees losses the model itself returns: a ``compute_loss`` override, a
  ``compute_loss_func`` or label smoothing that computes the loss outside the model leaves it blind.
- **window means** (the floor, ``resolution="window"``, and the automatic fallback when a whole flush saw no
  loss on any rank): ``logs["loss"]`` from ``on_log``, the mean over the logging window, already gathered
  across ranks, fitted as a window mean. Free and always available, but one point per ``logging_steps``, and
  NaN/Inf never reach it.

Everything else (device buffer, flushes and agreement across ranks through ``torch.distributed``, the planned
schedule looked ahead from the Trainer's ``lr_scheduler``, the saved state) is the shared
:class:`~scaleforecast.integrations.session.TrainingSession`. TensorBoard output goes, on the world process
zero only, into the writer of HF's own ``TensorBoardCallback`` when it is active (one run directory), else under
``dirpath`` (default: where HF's would write, ``output_dir/runs/<time>_<host>``, a new folder for each run).

The state travels in the checkpoint through ``ExportableState``; with
``restore_callback_states_from_checkpoint=True`` the Trainer swaps in a new object built from the saved JSON-safe
arguments, which would drop ``writer=``, ``listeners=``, ``advisor=``, ``on_event=`` and custom ``detectors=``:
the new object takes over the one you passed (of the same ``name``), its arguments and session, so both show
the run as it goes on, with the history from the checkpoint, as without that flag.
"""

from __future__ import annotations

import inspect
import math
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from scaleforecast.integrations.arguments import ForecastArgs, check_arguments
from scaleforecast.integrations.distributed import TorchCollectives
from scaleforecast.integrations.planner import LRSource
from scaleforecast.integrations.session import SessionFace, TrainingSession, new_run_dir
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from typing_extensions import Unpack

__all__ = ["HFLossForecast"]

Resolution = Literal["auto", "step", "window"]


def _output_loss(output: Any) -> torch.Tensor | None:
    """The ``loss`` a model output carries (``ModelOutput``/dict ``"loss"``; a tuple's first element when it is
    one number, as the Trainer reads ``return_dict=False`` outputs), else ``None``."""
    if isinstance(output, (tuple, list)):
        first = output[0] if output else None
        return first if isinstance(first, torch.Tensor) and first.ndim == 0 else None
    loss = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


class _LossTap:
    """A forward hook summing the training losses of one optimizer step on the device, never reading them.

    ``take()`` returns the step's loss as the Trainer defines it: the mean of the micro-batch losses, or, when
    the model normalised by ``num_items_in_batch`` (then each micro-batch loss is a share of the whole step's
    per-token mean), their sum times ``scale`` (the world size when tokens are averaged across devices, as the
    Trainer rescales the loss it logs).
    """

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.total: torch.Tensor | None = None
        self.micro = 0
        self.shared = False
        self.error: str | None = None
        self._handle: Any = None

    def attach(self, model: torch.nn.Module) -> None:
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if not module.training or not torch.is_grad_enabled():
            return
        try:
            loss = _output_loss(output)
            if loss is None:
                return
            # A copy: the Trainer rescales the returned loss in place (``loss *= num_processes``) afterwards.
            value = loss.detach().float()
            value = value.mean() if value.ndim else value.clone()
            self.total = value if self.total is None else self.total + value
            self.micro += 1
            self.shared = kwargs.get("num_items_in_batch") is not None
        except Exception as exc:  # the hook runs inside the model's forward: it must never raise
            self.error = f"{type(exc).__name__}: {exc}"
            self.detach()

    def take(self) -> torch.Tensor | None:
        total, micro = self.total, self.micro
        self.total, self.micro = None, 0
        if total is None or micro == 0:
            return None
        return total * self.scale if self.shared else total / micro


def _updates_per_log(args: Any, state: Any) -> int:
    """HF's ``logging_steps`` in updates (a value below 1 is a share of ``max_steps``)."""
    every = float(getattr(args, "logging_steps", 0) or 0)
    if 0 < every < 1:
        every = math.ceil(every * float(state.max_steps or 0))
    return max(int(every), 0)


def _find_on_stack(kind: str, attribute: str, max_depth: int = 16) -> Any | None:
    """The ``self`` of the nearest caller frame whose class (or a base) is named ``kind`` and has ``attribute``.

    Callbacks get no reference to the ``Trainer`` nor to its ``CallbackHandler``, but both are on the stack
    while an event runs (``Trainer._inner_training_loop`` calls ``CallbackHandler.call_event``).
    """
    frame = inspect.currentframe()
    try:
        for _ in range(max_depth):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            names = {c.__name__ for c in type(owner).__mro__}
            if owner is not None and kind in names and hasattr(owner, attribute):
                return owner
            frame = frame.f_back
    finally:
        del frame
    return None


def _stop(args: Any, control: Any, lost: bool) -> None:
    """End training here, with a checkpoint of this step when the run saves any: the weights it stopped with,
    and the stop itself, which a resume from it keeps (the last periodic checkpoint predates both). Not when
    the run is ``lost`` (its health checks stopped it: NaN weights, a divergence): those weights are worth
    nothing, and with ``save_total_limit`` the save rotated the last good checkpoint out."""
    control.should_training_stop = True
    strategy = getattr(args, "save_strategy", "no")
    if getattr(strategy, "value", strategy) != "no":
        # lost: also not the periodic save HF asked for at this step (the stop falls on a logging step, which
        # HF's defaults make a save step too)
        control.should_save = not lost


def _hf_tensorboard_callback() -> Any | None:
    """HF's own ``TensorBoardCallback`` among the running callbacks, when its writer exists."""
    handler = _find_on_stack("CallbackHandler", "callbacks")
    for cb in getattr(handler, "callbacks", None) or []:
        names = {c.__name__ for c in type(cb).__mro__}
        if "TensorBoardCallback" in names and getattr(cb, "tb_writer", None) is not None:
            return cb
    return None


def _own_run_dir(args: Any, state: Any) -> Path:
    """Where HF's own ``TensorBoardCallback`` would write this run, for when it is off (or writes the trials of
    an Optuna search into one run): its ``TENSORBOARD_LOGGING_DIR``, else a new ``output_dir/runs/<time>_<host>``
    (a trial of a hyperparameter search in a folder named after it below that), so that the runs of one process
    (a sweep loop) never share one."""
    given = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if given:
        return Path(os.path.expanduser(given))
    run = new_run_dir(Path(args.output_dir) / "runs")
    trial = getattr(state, "trial_name", None) if getattr(state, "is_hyper_param_search", False) else None
    return run / str(trial) if trial else run


class HFLossForecast(SessionFace, TrainerCallback, ExportableState):
    """Forecast the final training loss with the LR-annealing law; optionally stop when a target is out of reach.

    >>> from transformers import Trainer
    >>> from scaleforecast.callbacks import HFLossForecast
    >>> trainer = Trainer(model, args, train_dataset=ds, callbacks=[HFLossForecast(target_loss=3.1)])  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP

    The HF Trainer counterpart of :class:`scaleforecast.callbacks.LossForecast`, with the same arguments
    (``target_loss`` and :class:`~scaleforecast.integrations.arguments.ForecastArgs`), TensorBoard tags, figures,
    events and stop rule, plus ``resolution``: ``"auto"`` (per step, falling back to window means),
    ``"step"`` (per step, warning on fallback) or ``"window"`` (window means from ``on_log`` only); and
    ``name``, which tells several instances apart: in a checkpoint, in what they print and in TensorBoard (the
    first writes into HF's run, the others into runs of their own under ``dirpath``). A stop ends training
    with a checkpoint of its step when the run saves checkpoints (``save_strategy`` other than ``"no"``).
    """

    # the object last made under each name, while it lives: the Trainer's restore rebuilds it from the checkpoint
    # (it holds it until the new one is built)
    _passed: ClassVar[weakref.WeakValueDictionary[str, HFLossForecast]] = weakref.WeakValueDictionary()

    def __init__(
        self,
        target_loss: float | None = None,
        *,
        resolution: Resolution = "auto",
        name: str = "scaleforecast",
        _rebuilt: bool = False,
        **kwargs: Unpack[ForecastArgs],
    ) -> None:
        original = HFLossForecast._passed.get(name) if _rebuilt else None
        if original is not None:
            # built by the Trainer's restore from the saved arguments: the object passed goes on, in this one
            self.__dict__.update(original.__dict__)
            return
        check_arguments("HFLossForecast", kwargs)
        if resolution not in ("auto", "step", "window"):
            raise ValueError(f"resolution: must be 'auto', 'step' or 'window', got {resolution!r}")
        if not isinstance(name, str):
            raise ValueError(f"name: must be a string, got {name!r}")
        # instances told apart by name say so in every line they print (and write TensorBoard runs of their own)
        label = "HFLossForecast" if name == "scaleforecast" else f"HFLossForecast[{name}]"
        self.session = TrainingSession(label, target_loss, **kwargs)
        self.session.on_no_loss = self._no_step_losses
        self.session.on_loss_differs = self._other_loss
        self.session.clip_hint = (
            "the Trainer clips them at max_grad_norm before its optimizer step (max_grad_norm=0 leaves them "
            "unclipped and checked; its logs keep the norm before clipping at each logging step)"
        )
        self.resolution: Resolution = resolution
        self._log_every = 0  # HF's logging_steps, in updates (set when training begins)
        self.name = name
        self.mode: Literal["step", "window"] = "window" if resolution == "window" else "step"
        self.session.per_step = self.mode == "step"
        self._saved_state: dict[str, Any] | None = None
        self._tap: _LossTap | None = None
        self._hf_tb: Any = None
        self._started = False
        self._last_log_step = 0
        if not _rebuilt:
            HFLossForecast._passed[name] = self

    def _set_mode(self, mode: Literal["step", "window"]) -> None:
        self.mode = mode
        self.session.per_step = mode == "step"
        self.session.extra.update(mode=mode, name=self.name)

    # -------------------------------------------------------------- lifecycle
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.guard("checkpoint entry", self._claim_checkpoint_entry, state)
        saved = self._saved_state
        if saved is None:
            saved = self.session.guard("resume", self._find_saved, state)
        self._saved_state = None
        if saved is not None and int(state.global_step) > 0:
            self.session.load_state_dict(saved)
        optimizer, scheduler = kwargs.get("optimizer"), kwargs.get("lr_scheduler")
        if optimizer is None:  # transformers 4.x passes callbacks only an optimizer given to Trainer()
            trainer = _find_on_stack("Trainer", "callback_handler")
            optimizer = getattr(trainer, "optimizer", None)
            scheduler = scheduler or getattr(trainer, "lr_scheduler", None)
        group = self.session.config.param_group
        source = None if optimizer is None else LRSource(optimizer, [scheduler] if scheduler else [], group)
        comm = TorchCollectives()
        # HF names a search's trials for Ray only: an Optuna search writes every trial into one TensorBoard run,
        # where the trials' forecast lines would run back and forth over each other; each gets a run of its own
        search = bool(getattr(state, "is_hyper_param_search", False))
        shared = search and not getattr(state, "trial_name", None)
        self._hf_tb = None
        self.session.start(
            comm,
            step=int(state.global_step),
            run_length=int(state.max_steps) if state.max_steps else None,
            source=source,
            find_writer=None if shared else self._hf_writer,
            default_logdir=_own_run_dir(args, state),
        )
        self._set_mode("window" if self.session.extra.get("mode") == "window" else self.mode)
        self._log_every = _updates_per_log(args, state)
        if self.mode == "window":
            self._check_log_density(int(state.max_steps or 0))
        if self.mode == "step":
            average = bool(getattr(args, "average_tokens_across_devices", False))
            self._tap = _LossTap(scale=float(comm.world_size) if average and comm.world_size > 1 else 1.0)
            self.session.guard("loss hook", self._tap.attach, kwargs.get("model"))
        self._last_log_step = int(state.global_step)
        self._started = True

    def _hf_writer(self) -> Any:
        # One run directory with HF's own curves; HF owns (and closes) that writer.
        self._hf_tb = _hf_tensorboard_callback()
        return None if self._hf_tb is None else self._hf_tb.tb_writer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started or self.mode != "step":
            return
        self.session.guard("step", self._on_step_end, int(state.global_step))
        self.session.tick(int(state.global_step))
        if self.session.should_stop:
            _stop(args, control, self.session.stop_lost)

    def _on_step_end(self, step: int) -> None:
        # Without a working tap this rank records no loss, and still joins every flush.
        if self._tap is not None and self._tap.error is not None:
            self.session.guard.report("loss hook", self._tap.error)
        self.session.record(step, None if self._tap is None else self._tap.take())

    def _check_log_density(self, run_length: int) -> None:
        """Window means come every ``logging_steps`` updates: too few of them by half the run, and the forecast
        comes late or not at all (the fit needs ``min_points`` of them after the warm-up): said at once."""
        need = self.session.forecaster_config.fit.min_points
        every = self._log_every
        if every and run_length and run_length / 2 / every < need:
            self.session.warn(
                f"HF logs the loss every {every} updates: {run_length // 2 // every} window means by half of this "
                f"{run_length}-update run ({run_length // every} by its end), while the fit needs {need} after "
                "the warm-up: a forecast comes late, or not at all; lower logging_steps for one before the end"
                + (" (or resolution='auto')" if self.resolution == "window" else "")
            )

    def _no_step_losses(self, step: int) -> None:
        """A whole flush without a loss from the model on any rank: window means from now (every rank)."""
        self._set_mode("window")
        self._check_log_density(int(self.session.run_length or 0))
        if self._tap is not None:
            self._tap.detach()
        if self.resolution == "step" or self.session.config.verbose:
            self.session.warn(
                "the model returned no training loss (a custom compute_loss, compute_loss_func or label "
                f"smoothing computes it outside the model); using the logged window means from step {step}"
            )

    def _other_loss(self, step: int, model_mean: float, logged: float) -> None:
        """The model's own loss does not average to the loss the Trainer logs (every rank alike): the window
        means from now, on a history started again."""
        self._set_mode("window")
        self._check_log_density(int(self.session.run_length or 0))
        if self._tap is not None:
            self._tap.detach()
        self.session.forget_history(step)
        self.session.warn(
            f"the model's own loss averages {model_mean:.4g} over the updates up to step {step}, the loss the "
            f"Trainer logs {logged:.4g}: a compute_loss that adds to it (an auxiliary term, distillation) trains "
            "and logs another loss; the forecast follows the logged one, from its window means, from here on"
        )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not self._started or not logs or "loss" not in logs:
            return
        step = int(state.global_step)
        window, self._last_log_step = step - self._last_log_step, step
        if self.mode == "window" and window >= 1:
            # ``logs`` were gathered over ranks, so every rank decides from the same value.
            self.session.observe_window(step, window, float(logs["loss"]))
            if self.session.should_stop:
                _stop(args, control, self.session.stop_lost)
        elif self.mode == "step":
            self.session.check_logged(step, window, float(logs["loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._started:
            return
        # HF's TensorBoardCallback closes its writer before this runs; writing reopened it, so close it again.
        reopened = self._hf_tb is not None and getattr(self._hf_tb, "tb_writer", None) is None
        self.session.finish(int(state.global_step), close_writer=reopened)
        if self._tap is not None:
            self._tap.detach()
        self._hf_tb, self._started = None, False

    def pruning_objective(
        self, objective: Callable[[dict[str, float]], float] | None = None
    ) -> Callable[[dict[str, float]], float]:
        """A ``compute_objective`` for ``Trainer.hyperparameter_search(backend="optuna")`` that ends a trial this
        callback stopped as pruned (``optuna.TrialPruned``), not as complete with the loss of a model trained part
        of the way, which Optuna's sampler would learn from as a result; the other trials get ``objective(metrics)``
        (default: HF's ``default_compute_objective``).

        >>> cb = HFLossForecast(target_loss=3.1)
        >>> trainer = Trainer(model_init=build, args=args, train_dataset=ds, eval_dataset=val, callbacks=[cb])  # doctest: +SKIP
        >>> trainer.hyperparameter_search(backend="optuna", n_trials=20, compute_objective=cb.pruning_objective())  # doctest: +SKIP

        HF asks for the objective after training when the trial evaluated nothing during it (``eval_strategy="no"``,
        its default), after an evaluation of its own: the Trainer needs an ``eval_dataset``. With evaluations
        during training it keeps the last one's objective, and a stopped trial ends as complete. Under
        ``torchrun`` the trial is pruned on rank 0, where the study runs. A search whose every trial is pruned
        (a target no trial can reach) ends in Optuna's ``ValueError: No trials are completed yet``."""
        if objective is None:
            from transformers.trainer_utils import default_compute_objective

            objective = default_compute_objective

        def compute(metrics: dict[str, float]) -> float:
            # Under torchrun the study runs on rank 0; the other ranks run each trial in a loop of HF's own, outside
            # it, and ask this too: a raise there ends the process, and rank 0 fails at its next broadcast.
            if self.stopped_at is not None and not self._started and self.session.is_zero:
                import optuna

                raise optuna.TrialPruned(f"stopped at update {self.stopped_at}: {self.session.stop_reason}")
            return objective(metrics)

        return compute

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """``ExportableState``: JSON-safe constructor arguments and the session's saved state."""
        self.session.extra.update(mode=self.mode, name=self.name)
        args = {
            **self.session.json_args(),
            "resolution": self.resolution,
            "name": self.name,
            "_rebuilt": True,
        }
        saved = self.state_dict()  # never raises: a checkpoint must not fail because of this callback
        return {"args": args, "attributes": {"_saved_state": saved} if saved else {}}

    def _claim_checkpoint_entry(self, state: Any) -> None:
        """Make room for this callback's state in the Trainer's: a run resumed from a checkpoint saved without
        this callback has no entry for it, and the Trainer's next save looks one up and fails (``KeyError``),
        losing the checkpoint. An empty one is what the Trainer makes for a new run: a list when several
        instances of this class run (each save appends their states to it), else one state."""
        entries = getattr(state, "stateful_callbacks", None)
        name = type(self).__name__
        if isinstance(entries, dict) and name not in entries:
            handler = _find_on_stack("CallbackHandler", "callbacks")
            peers = [cb for cb in getattr(handler, "callbacks", None) or [] if type(cb).__name__ == name]
            entries[name] = [] if len(peers) > 1 else {}

    def _find_saved(self, state: Any) -> dict[str, Any] | None:
        """This callback's entry in the resumed ``trainer_state.json``: the last one of its name, as the Trainer
        appends the states of several instances of one class to a list at each save."""
        stored = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        for entry in reversed(stored) if isinstance(stored, list) else [stored] if stored else []:
            saved = (entry.get("attributes") or {}).get("_saved_state")
            if isinstance(saved, dict) and (saved.get("adapter") or saved).get("name") == self.name:
                return saved
        return None
