"""A two-rank ``Trainer.hyperparameter_search(backend="optuna")`` (under ``torchrun``) whose first trial the
forecast stops: rank 0 runs the Optuna study, the other rank runs each trial in a loop of HF's own, outside the
study, and both ask ``compute_objective`` at a trial's end. Run by ``test_hf.py``; rank 0 prints the trials'
states.

    torchrun --nproc_per_node 2 tests/hf_search_worker.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist
from hf_stop_exit_worker import Patterns, ddp_args
from hf_worker import optuna_search
from scaleforecast.callbacks import HFLossForecast
from transformers import GPT2Config, GPT2LMHeadModel, Trainer


def main() -> None:
    out = Path(sys.argv[1])
    cb = HFLossForecast(target_loss=0.5, flush_every=10, writer=False, verbose=False)

    def space(trial: Any) -> dict[str, Any]:
        # asked on every rank, with the same trial number: the first trial cannot reach 0.5, the second has
        # no target
        cb.session.stop = cb.session.stop.model_copy(
            update={"target_loss": 0.5 if trial.number == 0 else None}
        )
        return {"learning_rate": trial.suggest_float("learning_rate", 3e-3, 3e-3)}

    args = ddp_args(str(out), max_steps=120)
    trainer = Trainer(
        model_init=lambda trial=None: GPT2LMHeadModel(
            GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
        ),
        args=args,
        train_dataset=Patterns(),
        eval_dataset=Patterns(),
        callbacks=[cb],
    )
    trials = optuna_search(trainer, space, out / "study.db", cb.pruning_objective())
    if dist.get_rank() == 0:
        print("states:", " ".join(t.state.name for t in trials), flush=True)
    print("rank done", flush=True)
    dist.destroy_process_group()
    # Such a search hangs at the interpreter's exit about one run in four, with or without this plugin (HF's
    # search with a callback that stops its first trial, 2 of 7 runs): the search is what is tested, not that.
    os._exit(0)


if __name__ == "__main__":
    main()
