"""A tiny GPT-2 on byte-level Python source text, trained by a real ``transformers.Trainer`` on CPU.

Used by the HF-specific tests. No download: the model is built from a config and the text is the standard
library's own source, read at run time.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

SEQ_LEN = 32


def stdlib_text(n_bytes: int = 400_000) -> bytes:
    """The first ``n_bytes`` of the standard library's ``.py`` sources, in sorted file order (deterministic)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[bytes] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= n_bytes:
            break
    return b"".join(chunks)[:n_bytes]


class ByteChunks(Dataset):
    """Non-overlapping byte windows of length ``seq_len``; ``labels`` equal ``input_ids`` (the model shifts)."""

    def __init__(self, data: bytes, seq_len: int = SEQ_LEN) -> None:
        ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        n = ids.numel() // seq_len
        self.rows = ids[: n * seq_len].view(n, seq_len)

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        return {"input_ids": row, "labels": row.clone()}


def tiny_gpt2(seed: int = 0, n_embd: int = 16, n_layer: int = 1) -> torch.nn.Module:
    """A GPT-2 language model built from a config (byte vocabulary, a few thousand parameters)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=256,
        n_positions=SEQ_LEN,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def training_args(output_dir: str | Path, **overrides: Any) -> Any:
    """CPU ``TrainingArguments`` for a short cosine run with TensorBoard logging (works on 4.4x and 5.x)."""
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=60,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        lr_scheduler_type="cosine",
        warmup_steps=5,
        weight_decay=0.0,
        logging_steps=5,
        report_to=["tensorboard"],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def make_trainer(
    output_dir: str | Path,
    callbacks: list[Any],
    n_bytes: int = 200_000,
    eval_dataset: Dataset | None = None,
    **overrides: Any,
) -> Any:
    """A real ``transformers.Trainer`` over the tiny model and the byte dataset."""
    from transformers import Trainer

    args = training_args(output_dir, **overrides)
    return Trainer(
        model=tiny_gpt2(),
        args=args,
        train_dataset=ByteChunks(stdlib_text(n_bytes)),
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )


def optuna_search(trainer: Any, space: Any, storage: Path | None = None, objective: Any = None) -> list[Any]:
    """``trainer.hyperparameter_search(backend="optuna")`` of two trials (HF's and Optuna's warnings silenced);
    with ``storage`` (an SQLite file) the study is kept there and its trials are returned (on the process that
    ran the study)."""
    import warnings

    kept = {} if storage is None else {"storage": f"sqlite:///{storage}", "study_name": "search"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.hyperparameter_search(
            direction="minimize",
            backend="optuna",
            n_trials=2,
            hp_space=space,
            compute_objective=objective,
            **kept,
        )
    if storage is None or getattr(trainer.args, "process_index", 0) != 0:
        return []
    import optuna

    return list(optuna.load_study(study_name="search", storage=kept["storage"]).trials)
