"""Fit one, predict the rest: finished runs of a family become the prior of its next runs.

Runs of one *family* (a sweep, an ablation, a longer rerun: the same model and data under another schedule or
length) share their law up to the schedule. Once a run of the family has annealed (its LR fell to at most
``min_decay`` of its peak), its whole-curve fit pins the annealing drop that a new run cannot see in its own
data until its own LR decays. This module holds the pure parts:

- :func:`reference_from_fit` / :func:`fit_reference`: a finished run's fit as a :class:`ReferenceFit`, with the
  prior it implies (:func:`scaleforecast.priors.prior_from`, computed while the run's schedule is at hand) -
  or :class:`NotAnnealed` when its LR never decayed enough to say anything about the drop;
- :func:`family_prior`: several references -> one prior (their drops and exponents pooled, the spread between
  them added to each one's own), and the names of the runs it borrowed from;
- :func:`record_reference` / :func:`load_references`: the family store, a table of the run registry
  (:meth:`scaleforecast.registry.SQLiteRegistry.record_family_fit`).

A forecaster takes references through ``ForecasterConfig(references=...)``; its forecasts then name the runs
they borrowed from (``Forecast.borrowed_from``). A training integration needs two calls::

    config, _ = with_family(config, registry, family, run_id)        # at start: borrow
    record_reference(registry, reference_of(forecaster, run_id, family))   # at the end (NotAnnealed: skip)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scaleforecast.fitting import FitConfig, FitResult, Observations, fit
from scaleforecast.priors import AnnealingPrior, prior_from

if TYPE_CHECKING:
    from scaleforecast.registry import RunRegistry

__all__ = [
    "NotAnnealed",
    "ReferenceFit",
    "family_prior",
    "fit_reference",
    "load_references",
    "record_reference",
    "reference_from_fit",
    "reference_of",
    "same_peak_lr",
    "with_family",
]

#: a reference must have seen its LR fall to at most this share of its peak
MIN_DECAY = 0.5
#: peak LRs that differ by more than this share belong to different points of an LR sweep
PEAK_LR_RTOL = 0.05


class NotAnnealed(ValueError):
    """The run cannot serve as a reference: its LR never decayed enough (or its fit has no drop)."""


class ReferenceFit(BaseModel):
    """A finished (or well-annealed) run's whole-curve fit, kept as a prior for its family.

    ``prior`` is what :func:`scaleforecast.priors.prior_from` made of the fit and the run's schedule (JSON), so
    the schedule itself need not be stored. ``decayed_to``: the lowest LR seen after the peak over the fitted
    steps, as a share of the peak. ``final_loss``: the run's last observed loss.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    family: str = ""
    fit: FitResult
    prior: dict[str, Any]
    total_steps: int
    fitted_until: int
    peak_lr: float
    decayed_to: float
    final_loss: float | None = None
    recorded_at: float = Field(default_factory=time.time)

    def annealing_prior(self) -> AnnealingPrior:
        """The stored prior as an :class:`AnnealingPrior` (``ValueError`` when it cannot be read back)."""
        try:
            return AnnealingPrior.model_validate(self.prior)
        except ValidationError as exc:
            raise ValueError(
                f"reference {self.run_id!r}: unreadable prior ({exc.error_count()} errors)"
            ) from None


def _reference_config(config: FitConfig | None) -> FitConfig:
    # a reference describes its whole curve: no recency weighting toward its end, and always the annealing law
    # (prior_from speaks the tissue law's parameters); it forecasts nothing, so no band to backtest
    base = config or FitConfig()
    return base.model_copy(update={"recency": 0.0, "law": "tissue", "own_backtest": False})


def reference_from_fit(
    run_id: str,
    result: FitResult,
    lrs: np.ndarray | Sequence[float],
    *,
    family: str = "",
    final_loss: float | None = None,
    base_prior: str | AnnealingPrior = "default",
    min_decay: float = MIN_DECAY,
    kappa_rel_sd: float | None = None,
    alpha_sd: float | None = None,
) -> ReferenceFit:
    """A :class:`ReferenceFit` from a run's whole-curve fit ``result`` under its schedule ``lrs``.

    Raises :class:`NotAnnealed` when the LR over the fitted steps never fell to ``min_decay`` of its peak, or
    when the fit found no annealing drop (``C = 0``): such a run says nothing about the drop. ``kappa_rel_sd`` and
    ``alpha_sd`` override :func:`~scaleforecast.priors.prior_from`'s spread of one reference (by default it
    is about twice what separates the runs of one family in shared/curves: ~5% on the drop, ~0.026 on alpha,
    measured by ``benchmarks/warm_accuracy.py``'s family split; wider priors measured worse and over-covered).
    """
    a = np.asarray(lrs, dtype=np.float64).reshape(-1)
    if result.params is None:
        raise NotAnnealed(f"{run_id}: no fitted law ({result.status.value})")
    peak_at = int(np.argmax(a))
    peak = float(a[peak_at])
    seen = a[peak_at : max(result.fitted_until, peak_at + 1)]
    decayed_to = float(seen.min()) / peak if peak > 0 else 1.0
    if decayed_to > min_decay:
        raise NotAnnealed(
            f"{run_id}: never annealed (its LR fell only to {100 * decayed_to:.0f}% of its peak by step "
            f"{result.fitted_until}; a reference needs <= {100 * min_decay:.0f}%)"
        )
    try:
        spread = {k: v for k, v in (("kappa_rel_sd", kappa_rel_sd), ("alpha_sd", alpha_sd)) if v is not None}
        prior = prior_from(result, a, base=base_prior, **spread)
    except ValueError as exc:
        raise NotAnnealed(f"{run_id}: {exc}") from None
    if final_loss is not None and not math.isfinite(final_loss):
        final_loss = None
    return ReferenceFit(
        run_id=run_id,
        family=family,
        fit=result,
        prior=prior.model_dump(mode="json"),
        total_steps=int(a.size),
        fitted_until=int(result.fitted_until),
        peak_lr=peak,
        decayed_to=decayed_to,
        final_loss=final_loss,
    )


def fit_reference(
    run_id: str,
    obs: Observations,
    lrs: np.ndarray | Sequence[float],
    *,
    family: str = "",
    config: FitConfig | None = None,
    min_decay: float = MIN_DECAY,
) -> ReferenceFit:
    """Fit a finished run whole (``obs`` under ``lrs``; no recency weighting) and make it a reference.

    ``config`` is the fit configuration of the family (its prior is the base the reference's prior is
    expressed against). Raises :class:`NotAnnealed` as :func:`reference_from_fit` does.
    """
    a = np.asarray(lrs, dtype=np.float64).reshape(-1)
    cfg = _reference_config(config)
    result = fit(obs, a, cfg)
    order = np.argsort(obs.end)
    finite = np.isfinite(obs.y[order])
    final = float(obs.y[order][finite][-1]) if finite.any() else None
    base = cfg.prior if cfg.prior is not None else "default"
    return reference_from_fit(
        run_id, result, a, family=family, final_loss=final, base_prior=base, min_decay=min_decay
    )


def reference_of(forecaster: Any, run_id: str, family: str = "") -> ReferenceFit:
    """The reference a finished run leaves: its forecaster's whole binned history fitted under its schedule
    (the forecaster's own fit configuration, without recency weighting). Raises :class:`NotAnnealed` when the
    run never annealed, ``ValueError`` when the forecaster has no schedule."""
    lrs = forecaster.schedule
    if lrs is None:
        raise ValueError("the forecaster has no schedule")
    return fit_reference(run_id, forecaster.observations(), lrs, family=family, config=forecaster.config.fit)


def with_family(
    config: Any, registry: RunRegistry, family: str, run_id: str | None = None
) -> tuple[Any, list[str]]:
    """``config`` (a :class:`scaleforecast.forecaster.ForecasterConfig`) with the family's stored references
    (``run_id``'s own left out: a resumed run does not borrow from itself), and the warnings of the read. The
    family's runs come from one training script, their LRs in one unit, so the forecaster borrows only from
    those that peaked at its own peak LR (``match_peak_lr``): a sweep over the LR is not one family."""
    refs, warns = load_references(registry, family, exclude=run_id)
    return config.model_copy(update={"references": refs, "match_peak_lr": True}), warns


def same_peak_lr(ref: ReferenceFit, peak_lr: float) -> bool:
    """Whether ``ref`` peaked at ``peak_lr`` (within :data:`PEAK_LR_RTOL`, in the same LR units)."""
    return abs(ref.peak_lr - peak_lr) <= PEAK_LR_RTOL * max(abs(ref.peak_lr), abs(peak_lr))


def family_prior(
    references: Sequence[ReferenceFit], peak_lr: float | None = None
) -> tuple[AnnealingPrior | None, list[str], list[str]]:
    """Pool the references' priors into one: ``(prior, borrowed_from, warnings)``.

    One reference gives its own prior. Several are pooled on the log scale of the drop ``kappa`` and on
    ``alpha``: the mean of each, with a spread that adds the spread between the references to each one's own
    (a family whose runs disagree gets a wider prior). A reference whose stored prior cannot be read is left
    out, with a warning. ``prior`` is None when no reference is usable.

    With ``peak_lr`` (the asking run's peak, in the references' LR units), a reference that peaked at another
    LR is left out, with a warning: the annealing drop grows with the peak LR, and a prior borrowed across the
    points of an LR sweep forecast worse than no prior at all (``benchmarks/warm_accuracy.py --across lr``).
    """
    priors: list[AnnealingPrior] = []
    names: list[str] = []
    warns: list[str] = []
    if peak_lr is not None:
        other = [r for r in references if not same_peak_lr(r, peak_lr)]
        if other:
            warns.append(
                f"{len(other)} run(s) of the family peaked at another LR than this run's {peak_lr:.3g} "
                f"({', '.join(f'{r.run_id}: {r.peak_lr:.3g}' for r in other[:4])}{', ...' if len(other) > 4 else ''})"
                ": not borrowed, the annealing drop depends on the peak LR"
            )
            references = [r for r in references if same_peak_lr(r, peak_lr)]
    for ref in references:
        try:
            priors.append(ref.annealing_prior())
            names.append(ref.run_id)
        except ValueError as exc:
            warns.append(f"{exc}; left out")
    if not priors:
        return None, [], warns
    if len(priors) == 1:
        return priors[0], names, warns
    logk = np.log([p.kappa_mean for p in priors])
    rel = np.array([p.kappa_sd / p.kappa_mean for p in priors])
    k_mean = float(np.exp(logk.mean()))
    k_rel = math.sqrt(float(np.mean(rel**2)) + float(logk.var()))
    update: dict[str, Any] = {"kappa_mean": k_mean, "kappa_sd": k_mean * k_rel}
    alphas = [p for p in priors if p.alpha_mean is not None and p.alpha_sd is not None]
    if alphas:
        am = np.array([p.alpha_mean for p in alphas], dtype=float)
        asd = np.array([p.alpha_sd for p in alphas], dtype=float)
        update["alpha_mean"] = float(am.mean())
        update["alpha_sd"] = math.sqrt(float(np.mean(asd**2)) + float(am.var()))
    update["provenance"] = {"source": "pooled fits of other runs of the family", "runs": names}
    return priors[0].model_copy(update=update), names, warns


# ------------------------------------------------------------------------------------------ family store


def record_reference(registry: RunRegistry, ref: ReferenceFit, family: str | None = None) -> None:
    """Keep ``ref`` in the registry's family store under ``family`` (default: ``ref.family``), replacing an
    older fit of the same run."""
    name = family or ref.family
    if not name:
        raise ValueError("a reference needs a family name to be stored")
    registry.record_family_fit(name, ref.run_id, ref.model_dump_json())


def load_references(
    registry: RunRegistry, family: str, *, exclude: str | None = None, limit: int = 8
) -> tuple[list[ReferenceFit], list[str]]:
    """The family's stored references, newest first (at most ``limit`` of each peak LR; ``exclude`` is the
    asking run), and warnings for records that could not be read (written by another version). The cap is per
    peak LR because a run borrows only from its own (:func:`family_prior`): cut across all, the eight newest
    points of an LR sweep hid an older run at the asking run's peak."""
    refs: list[ReferenceFit] = []
    warns: list[str] = []
    for run_id, payload in registry.family_fits(family):
        if run_id == exclude:
            continue
        try:
            refs.append(ReferenceFit.model_validate(json.loads(payload)))
        except (ValueError, ValidationError):
            warns.append(f"family {family!r}: the stored fit of run {run_id!r} is unreadable; left out")
    refs.sort(key=lambda r: r.recorded_at, reverse=True)
    kept: list[ReferenceFit] = []
    for ref in refs:
        if sum(same_peak_lr(k, ref.peak_lr) for k in kept) < limit:
            kept.append(ref)
    return kept, warns
