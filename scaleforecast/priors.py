"""Scale-free priors for the annealing law, shipped as data with their provenance.

The annealing coefficient ``C`` is invisible in a run's own data until its LR decays (S2 = 0 before). The prior
states it in quantities the run itself reveals, so that it transfers across LR units, optimizers and codebases:

    kappa / L_ref ~ t_nu(kappa_mean * u^-q, kappa_sd * u^-q),   kappa = C * lr_peak / (1 - lam)

- ``kappa`` is the loss drop of a full anneal (the LR going from its peak to zero, given time to settle);
- ``L_ref`` is the run's final loss without annealing, ``L0 + A * S1(T)^-alpha`` (the fitter takes it from a
  first pass);
- ``u = S2(T) (1 - lam) / lr_peak`` is the share of a full anneal that the planned schedule completes by its
  last step (known up front): the law with a fixed ``lam`` lags short cooldowns, and the fitted ``kappa`` of
  real runs grows as ``u^-q`` to make up for it (``q = kappa_u_power``);
- ``t_nu`` is a Student-t with ``nu = kappa_dof`` degrees of freedom (the shipped prior: the number of codebases
  it was learned from, less one; ``None``: a normal). A handful of codebases cannot pin the spread between
  codebases, and a new codebase can lie further out than any of them: with heavy tails, a run whose own data
  put its drop far from the prior's centre overrules the prior instead of being pulled back to it.

No absolute LR enters: multiplying every LR of a run by the same factor leaves ``C * lr_peak``,
``S2 / lr_peak`` and ``L0 + A * S1^-alpha`` unchanged (``A`` absorbs the factor), so a run whose LR is logged as
a multiplier (peak 1.0), an SGD run and an Adam run with the same curve get the same prior and the same
forecast. ``alpha`` (also unit-free) gets a prior of the same kind (``alpha_mean``, ``alpha_sd``,
``alpha_dof``).

``kappa_sd`` is the spread a run of an unseen codebase has around ``kappa_mean``: learned by a random-effects
fit of ``log(kappa / L_ref)`` over runs grouped by their source codebase, it adds the spread between codebases
(``provenance["source_sd"]``) to the spread between the runs of one codebase (``provenance["run_sd"]``).
At fit time the prior becomes a prior on ``C`` (:meth:`AnnealingPrior.c_prior`), one more row of the fitter's
least squares (reweighted for the t's tails): the posterior moves from the prior to the data as S2 grows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AnnealingPrior", "load_prior", "prior_from"]

_DATA = Path(__file__).resolve().parent / "data"


class AnnealingPrior(BaseModel):
    """Priors on the scale-free annealing drop ``kappa / L_ref`` (at a full anneal, ``u = 1``) and on
    ``alpha``: Student-t with ``kappa_dof`` / ``alpha_dof`` degrees of freedom, ``None`` dof = normal,
    ``None`` sd = flat.

    >>> from scaleforecast import AnnealingPrior, FitConfig
    >>> prior = AnnealingPrior(kappa_mean=0.05, kappa_sd=0.02)
    >>> FitConfig(prior=prior).prior == prior
    True

    ``warmup`` and ``lam`` record the S2 convention the prior was learned under (``C`` depends on both);
    ``provenance`` says where the numbers come from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kappa_mean: float = Field(gt=0)
    kappa_sd: float = Field(gt=0)
    kappa_u_power: float = 0.0
    kappa_dof: float | None = Field(None, gt=0)
    alpha_mean: float | None = None
    alpha_sd: float | None = None
    alpha_dof: float | None = Field(None, gt=0)
    lam: float = 0.999
    warmup: str = "hold"
    provenance: dict = Field(default_factory=dict)

    def c_prior(self, peak_lr: float, lam: float, l_ref: float, u_end: float = 1.0) -> tuple[float, float]:
        """(centre, scale) of the prior on ``C`` (a t with ``kappa_dof`` degrees of freedom) for a run with peak
        LR ``peak_lr``, decay ``lam``, loss level ``l_ref`` and anneal share ``u_end``:
        ``C = (kappa / L_ref) * L_ref * (1 - lam) / lr_peak``."""
        scale = l_ref * (1.0 - lam) / peak_lr * max(u_end, 0.05) ** (-self.kappa_u_power)
        return self.kappa_mean * scale, self.kappa_sd * scale


@lru_cache(maxsize=8)
def load_prior(name: str = "default") -> AnnealingPrior:
    """The shipped prior ``scaleforecast/data/prior_<name>.json`` (or a path to such a JSON file)."""
    p = Path(name)
    if not p.suffix:
        p = _DATA / f"prior_{name}.json"
    if not p.is_file():
        raise FileNotFoundError(f"no prior named {name!r} (looked for {p})")
    return AnnealingPrior.model_validate(json.loads(p.read_text()))


def prior_from(
    result: object,
    lrs: object,
    base: str | AnnealingPrior = "default",
    kappa_rel_sd: float = 0.1,
    alpha_sd: float = 0.03,
) -> AnnealingPrior:
    """A prior centred on a finished (or well-annealed) fit of another run of the same family: "fit one curve,
    predict the rest" (Tissue et al.). ``result`` is that run's ``FitResult`` (tissue law) and ``lrs`` its
    schedule, in any LR units (they need not match the new run's).

    The reference's full-anneal drop relative to its own loss level, ``kappa / L_ref`` with
    ``kappa = C * lr_peak / (1 - lam)`` and ``L_ref = L0 + A * S1(T)^-alpha``, is brought to a full anneal
    (``u = 1``) with the base prior's ``kappa_u_power``: ``kappa_mean = (kappa / L_ref) * u^q``, so it transfers
    to other lengths and schedules of the family. Its sd is ``kappa_rel_sd`` of the mean and both priors are
    normal (a family shares its codebase: no between-source spread, no unseen codebase to allow for), and
    ``alpha`` is pinned to the fitted one with sd ``alpha_sd``. Fit the reference whole and without recency
    weighting (``FitConfig(recency=0)``, as :func:`scaleforecast.family.fit_reference` does, which also checks that
    the run annealed): a fit weighted to its latest points extrapolates them, and its parameters need not
    describe the run."""
    import numpy as np

    from scaleforecast.laws import WarmupS2, memory_of, schedule_areas

    params = getattr(result, "params", None)
    if params is None or getattr(result, "law", "tissue") != "tissue":
        raise ValueError("prior_from needs a tissue-law fit with parameters")
    a = np.asarray(lrs, dtype=np.float64).reshape(-1)
    if a.size == 0 or not np.all(np.isfinite(a)) or not a.max() > 0:
        raise ValueError("prior_from needs the reference run's schedule (finite LRs, a positive peak)")
    fitted = int(getattr(result, "fitted_until", 0) or 0)
    if a.size < fitted:
        raise ValueError(
            f"prior_from needs the reference run's whole schedule: its fit reaches update {fitted}, the schedule "
            f"given has {a.size}"
        )
    b = load_prior(base) if isinstance(base, str) else base
    warm: WarmupS2 = "hold" if getattr(result, "warmup", "hold") == "hold" else "raw"
    s1, s2 = schedule_areas(a, params.lam, warm, memory_of(params))
    peak = float(a.max())
    ref = params.L0 + params.A * float(s1[-1]) ** (-params.alpha)
    kappa = params.C * peak / (1.0 - params.lam) / ref
    u = max(float(s2[-1]) * (1.0 - params.lam) / peak, 0.05)
    k0 = kappa * u**b.kappa_u_power
    if not k0 > 0:
        raise ValueError("the source fit has no annealing drop (C = 0): it cannot serve as a prior")
    return b.model_copy(
        update={
            "kappa_mean": k0,
            "kappa_sd": k0 * kappa_rel_sd,
            "alpha_mean": params.alpha,
            "alpha_sd": alpha_sd,
            "kappa_dof": None,
            "alpha_dof": None,
            "lam": params.lam,
            "warmup": warm,
            "provenance": {"source": "prior_from: fit of another run of the family", "base": b.provenance},
        }
    )
