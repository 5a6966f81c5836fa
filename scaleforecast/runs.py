"""A run as the readers hand it over (:class:`RunData`), and the conventions every reader shares.

Steps are optimizer updates completed (1-based); a loss at step ``s`` with window ``w`` is the mean loss over
updates ``s - w + 1 .. s``. A logged LR at step ``s`` is taken as the LR of update ``s``. The names the readers
look for (:data:`LOSS_NAMES`, :data:`LR_NAMES`, :data:`STEP_COLUMNS`), how a name or glob picks a column or tag
(:func:`pick`), how a resumed log is sorted out (:func:`clean_series`) and how many updates a logged loss
averages (:func:`loss_windows`) live here, so that the TensorBoard, CSV and JSONL readers and the live sidecar
agree on them. Unusable input raises :class:`ReadError`, whose message is one line.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from scaleforecast.schedule_fit import LRReconstruction

__all__ = [
    "LOSS_NAMES",
    "LR_NAMES",
    "STEP_COLUMNS",
    "ReadError",
    "RunData",
    "WindowSpec",
    "averages_gap",
    "clean_series",
    "keep_newest",
    "loss_windows",
    "pick",
    "pick_loss",
]

# Defaults cover the Lightning logger, HF Trainer, Megatron-LM, NeMo and torchtitan, in that order of preference.
LOSS_NAMES: tuple[str, ...] = (
    "loss",
    "val_loss",
    "train_loss",
    "train/loss",
    "val/loss",
    "eval/loss",
    "lm loss",
    "train_loss_step",
    "reduced_train_loss",
    "loss_metrics/global_avg_loss",
    "train/lm_loss",
    "lm_loss",
    "training_loss",
    # PyTorch's SummaryWriter tutorial
    "loss/train",
    # the observed loss this plugin's callbacks write (the mean of each flush), for a run that logs none itself
    "forecast/observed_vs_forecast",
)
LR_NAMES: tuple[str, ...] = (
    "lr",
    "train/learning_rate",
    "learning-rate",
    "learning_rate",
    "train/lr",
    "lr-*",
    "*learning_rate*",
    "*learning-rate*",
    "forecast/lr",  # the LR the forecast callbacks write beside the loss they saw
)
# W&B's own row counter, ``_step``, comes last: an export of an HF or Lightning run also holds the trainer's step.
STEP_COLUMNS: tuple[str, ...] = (
    "step",
    "global_step",
    "trainer/global_step",
    "train/global_step",
    "iteration",
    "iter",
    "num_updates",
    "optimizer_step",
    "trainer/step",
    "_step",
)
# The forecast callbacks' own record of the loss: the mean of each flush, in <run>/scaleforecast/observed.
OBSERVED_TAG = "forecast/observed_vs_forecast"
# Loggers that write the mean over the updates since the previous log (HF Trainer, Megatron, the callbacks).
GAP_WINDOW_NAMES: tuple[str, ...] = (
    "train/loss",
    "lm loss",
    "reduced_train_loss",
    "loss_metrics/global_avg_loss",
    OBSERVED_TAG,
)
# Steps are kept exact in float64 and int64 below this.
MAX_STEP = 2**53

WindowSpec = int | Literal["gap", "auto"]


class ReadError(ValueError):
    """A run that cannot be read or used; the message is one line and names the file and the problem."""


@dataclass
class RunData:
    """One run: the loss observations and, when known, the per-update LR.

    ``steps`` (int64, strictly increasing, >= 1), ``losses`` (float64; NaN/Inf kept so the forecaster can count
    them), ``windows`` (int64 >= 1: the number of updates each loss averages). ``lrs[k]`` is the LR of update
    ``k + 1``; its length is the run's planned total. ``lr_steps``/``lr_values`` are the LR points as logged.
    ``warnings`` are notes about the data (resumes, damage, LR reconstruction), one line each. ``planned_steps``:
    the run's planned length when the log itself says it (an HF ``trainer_state.json``'s ``max_steps``).
    """

    source: str
    format: str
    loss_name: str
    steps: np.ndarray
    losses: np.ndarray
    windows: np.ndarray
    lr_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lr_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    lr: LRReconstruction | None = None
    lr_name: str | None = None
    warnings: list[str] = field(default_factory=list)
    planned_steps: int | None = None

    @property
    def lrs(self) -> np.ndarray | None:
        return None if self.lr is None else self.lr.lrs

    @property
    def total_steps(self) -> int | None:
        return None if self.lr is None else len(self.lr.lrs)

    @property
    def last_step(self) -> int:
        return int(self.steps[-1]) if len(self.steps) else 0

    @property
    def n_nonfinite(self) -> int:
        return int((~np.isfinite(self.losses)).sum())

    @property
    def name(self) -> str:
        p = Path(self.source)
        return p.stem if p.suffix else p.name

    def until(self, step: int) -> RunData:
        """The run as it looked after ``step`` updates (observations at steps <= ``step``; same LR)."""
        keep = self.steps <= step
        return replace(self, steps=self.steps[keep], losses=self.losses[keep], windows=self.windows[keep])

    def feed(self, forecaster: Any, after: int = 0) -> int:
        """Pass the observations after step ``after`` to ``forecaster.observe_many``; returns how many."""
        keep = self.steps > after
        steps, losses, windows = self.steps[keep], self.losses[keep], self.windows[keep]
        if not len(steps):
            return 0
        # observe_many takes one window per call: send runs of equal windows together.
        cuts = np.flatnonzero(np.diff(windows)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(steps)], strict=True):
            forecaster.observe_many(steps[lo:hi], losses[lo:hi], window=int(windows[lo]))
        return len(steps)


def clean_series(
    steps: np.ndarray, values: np.ndarray, what: str, notes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Sort out resumes: when a step goes back, later points replace the earlier ones from that step on.

    Appends one note to ``notes`` saying how many stale points were dropped.
    """
    steps = np.asarray(steps, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    keep = keep_newest(steps)
    if not keep.all():
        notes.append(
            f"{what}: steps go back (a resumed run?): kept the newest of each step, dropped "
            f"{int((~keep).sum())} point(s)"
        )
        steps, values = steps[keep], values[keep]
    return steps, values


def steps_going_back(steps: np.ndarray) -> int:
    """How many times a log's steps go back; more than restarts make (3, and 1 % of its points) is a log out of
    step order: rows shuffled or sorted the wrong way, or several processes' logs run together, where
    :func:`keep_newest` would read each step back as a resume and drop nearly everything."""
    back = int(np.sum(np.diff(np.asarray(steps, dtype=np.int64)) < 0))
    return back if back > max(3, 0.01 * len(steps)) else 0


def keep_newest(steps: np.ndarray) -> np.ndarray:
    """Mask of the points to keep in a log whose steps may go back (a restart from a checkpoint): a point is
    kept only if every later point has a larger step, so the newest value of each step wins and the stale points
    logged after the checkpoint, before the restart, are dropped."""
    steps = np.asarray(steps, dtype=np.int64)
    if len(steps) < 2:
        return np.ones(len(steps), dtype=bool)
    suffix_min = np.minimum.accumulate(steps[::-1])[::-1]
    return np.r_[steps[:-1] < suffix_min[1:], True]


def stops_short(steps: np.ndarray, total: int) -> bool:
    """Whether a log whose points are at ``steps`` ends before the run's ``total`` updates: more than one log
    interval (the median gap) and 1 % of the run before it (a live log, or a file for another run)."""
    gaps = np.diff(steps)
    interval = int(np.median(gaps)) if len(gaps) else 1
    return total - int(steps[-1]) > max(interval, 0.01 * total)


def averages_gap(name: str, window: WindowSpec | None) -> bool:
    """Whether a loss named ``name`` read with ``window`` is the mean since the previous log (see
    :func:`loss_windows`)."""
    # a name at the end of the tag's path counts as the loss picked it (Megatron-DeepSpeed's lm-loss-training/lm loss)
    gap = pick([name], None, GAP_WINDOW_NAMES) is not None or any(
        _tail_matches([name], n) for n in GAP_WINDOW_NAMES
    )
    return window == "gap" or (window in (None, "auto") and gap)


def _usual_gap(gaps: np.ndarray) -> int:
    """The most common gap (a tie goes to the longest: no interval is usual then, and a longer first window is
    closer to what the log itself says, the updates since step 0)."""
    values, counts = np.unique(gaps, return_counts=True)
    return int(values[counts == counts.max()].max())


def loss_windows(steps: np.ndarray, name: str, window: WindowSpec | None) -> np.ndarray:
    """How many updates each logged loss averages: ``window`` (an int), ``"gap"`` (since the previous log, as
    HF Trainer and Megatron log) or ``None``/``"auto"`` (gap for the tags in :data:`GAP_WINDOW_NAMES`, else 1).

    With ``"gap"`` the first point averages the log's usual interval (its most common gap), never
    more than the updates since step 0: a log that starts partway through a run (a job resumed into a fresh log
    folder) has no previous point, and its first loss is the mean of one interval, not of everything before it.
    A log of one point has no interval: its window is its step."""
    if averages_gap(name, window):
        steps = np.asarray(steps, dtype=np.int64)
        if not len(steps):
            return np.zeros(0, dtype=np.int64)
        gaps = np.diff(steps)
        first = int(steps[0]) if not len(gaps) else min(int(steps[0]), _usual_gap(gaps))
        return np.maximum(np.r_[first, gaps], 1).astype(np.int64)
    w = int(window) if isinstance(window, int) else 1
    if w < 1:
        raise ReadError(f"window must be >= 1, got {w}")
    return np.full(len(steps), w, dtype=np.int64)


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


# W&B's CSV export names a column "<run name> - <key>" and adds "<run name> - <key>__MIN" / "__MAX" beside it.
_WANDB_SEP = " - "
_COMPANIONS = ("__min", "__max")


def _is_companion(name: str) -> bool:
    return name.lower().endswith(_COMPANIONS)


def _loose_names(name: str) -> tuple[str, ...]:
    """What a column or tag answers to besides its exact name: its name in lower case and, for a W&B export
    column ``<run> - <key>``, its key in lower case. A W&B ``__MIN``/``__MAX`` companion answers to nothing."""
    if _is_companion(name):
        return ()
    low = name.lower()
    if _WANDB_SEP in name:
        return (low, low.rsplit(_WANDB_SEP, 1)[1].strip())
    return (low,)


def _matches(available: Sequence[str], cand: str) -> list[str]:
    """The names in ``available`` that ``cand`` names: exactly (a glob: case and all), else loosely (see
    :func:`_loose_names`); sorted, exact matches only when there are any."""
    if cand in available:
        return [cand]
    if _is_pattern(cand):
        hits = sorted(a for a in available if fnmatch.fnmatchcase(a, cand) and not _is_companion(a))
        if hits:
            return hits
        low = cand.lower()
        return sorted(a for a in available if any(fnmatch.fnmatchcase(n, low) for n in _loose_names(a)))
    low = cand.lower()
    return sorted(a for a in available if low in _loose_names(a))


def _tail(name: str) -> str:
    """A tag's last path component in lower case (``lm-loss-training/lm loss`` -> ``lm loss``)."""
    return name.rsplit("/", 1)[-1].strip().lower()


def _tail_matches(available: Sequence[str], cand: str) -> list[str]:
    """The tags whose last path component is ``cand`` (a plain name without a ``/``): Megatron-DeepSpeed files
    Megatron's ``lm loss`` as ``lm-loss-training/lm loss``."""
    if _is_pattern(cand) or "/" in cand:
        return []
    return sorted(a for a in available if "/" in a and _tail(a) == cand.lower() and not _is_companion(a))


def _candidates(wanted: str | Sequence[str] | None, defaults: Sequence[str]) -> Sequence[str]:
    if wanted is None:
        return defaults
    return [wanted] if isinstance(wanted, str) else wanted


def pick(available: Sequence[str], wanted: str | Sequence[str] | None, defaults: Sequence[str]) -> str | None:
    """The first name in ``wanted`` (or ``defaults``) present in ``available``; names may be glob patterns
    (several matches of one pattern: the first in sorted order). A name that is not present exactly matches
    regardless of case, and matches the ``<run> - <name>`` columns of a W&B export (never their ``__MIN`` and
    ``__MAX`` companions)."""
    for cand in _candidates(wanted, defaults):
        hits = _matches(available, cand)
        if hits:
            return hits[0]
    return None


def pick_loss(available: Sequence[str], wanted: str | Sequence[str] | None, where: str) -> str | None:
    """The loss column or tag: like :func:`pick`, but a pattern never picks an LR or step column, and when it
    matches several names the known loss names win (``train/*`` on an HF log is ``train/loss``, not
    ``train/learning_rate``); a pattern or a name left ambiguous after that (a W&B export of several runs) is
    an error naming the matches. When no name matches so, a plain name also matches the one tag whose path
    ends in it (``lm loss`` is ``lm-loss-training/lm loss`` in a Megatron-DeepSpeed log)."""
    for cand in _candidates(wanted, LOSS_NAMES):
        hits = _matches(available, cand)
        if _is_pattern(cand):
            hits = [
                h for h in hits if pick([h], None, LR_NAMES) is None and pick([h], None, STEP_COLUMNS) is None
            ]
        if len(hits) > 1:
            known = [h for h in hits if pick([h], None, LOSS_NAMES) is not None] or [
                h for h in hits if "loss" in h.lower()
            ]
            if len(known) == 1:
                return known[0]
            raise ReadError(
                f"{where}: {cand!r} matches several columns/tags ({', '.join(hits[:6])}); name one exactly"
            )
        if hits:
            return hits[0]
    # then a name as the last component of a tag's path, where it names one tag only
    for cand in _candidates(wanted, LOSS_NAMES):
        hits = _tail_matches(available, cand)
        if len(hits) == 1:
            return hits[0]
    return None
