"""Scale-free priors for the annealing law, shipped as data with their provenance.

The annealing coefficient ``C`` is invisible in a run's own data until its LR decays (S2 = 0 before). The prior
states it in units the run itself reveals, so that it transfers across LR units, model sizes and codebases:

    kappa / L_ref ~ Normal(kappa_mean * u^-q, kappa_sd * u^-q),   kappa = C * lr_peak / (1 - lam)

``kappa`` is the loss drop of a full anneal (the LR going from its peak to zero, given time to settle), and
``L_ref`` the run's final loss without annealing, ``L0 + A * S1(T)^-alpha`` (the fitter takes it from a first
pass; ``FitConfig(prior_ref="tail")`` uses the latest observed losses instead). ``u = S2(T) (1 - lam) / lr_peak`` is
the share of a full anneal that the planned schedule completes by its last step (known up front): the law
with a fixed ``lam`` lags short cooldowns, and the fitted ``kappa`` of real runs grows as ``u^-q`` to make
up for it (``q = kappa_u_power``). ``alpha`` gets a normal prior too.

The one covariate the run cannot reveal is the size of its LR: across the real curves ``kappa / L`` grows as
``lr_peak^0.3`` (Adam-style LR units). ``lr_power`` adds that factor, ``(lr_peak / lr_ref)^lr_power`` with
``lr_peak`` clipped to ``lr_range`` (the peaks the prior was learned on), so that an LR in other units (SGD)
does not extrapolate wildly; ``FitConfig(prior_lr_scaling=False)`` drops it (the prior is then scale-free, at
the ``lr_ref`` value).
At fit time the prior on ``kappa / L_ref`` becomes a normal prior on ``C`` (:meth:`AnnealingPrior.c_prior`),
which the fitter adds to its least-squares objective: the posterior moves from the prior to the data as S2
grows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AnnealingPrior", "load_prior", "prior_from"]

_DATA = Path(__file__).resolve().parent / "data"


class AnnealingPrior(BaseModel):
    """Normal priors on the scale-free annealing drop ``kappa / L_ref`` and on ``alpha``; ``None`` sd = flat.

    ``warmup`` and ``lam`` record the S2 convention the prior was learned under (``C`` depends on both);
    ``provenance`` says where the numbers come from.
    """

    model_config = ConfigDict(frozen=True)

    kappa_mean: float = Field(gt=0)
    kappa_sd: float = Field(gt=0)
    kappa_u_power: float = 0.0
    lr_power: float = 0.0
    lr_ref: float = Field(1e-3, gt=0)
    lr_range: tuple[float, float] = (1e-6, 1.0)
    alpha_mean: float | None = None
    alpha_sd: float | None = None
    lam: float = 0.999
    warmup: str = "hold"
    provenance: dict = Field(default_factory=dict)

    def c_prior(
        self, peak_lr: float, lam: float, l_ref: float, u_end: float = 1.0, use_lr: bool = True
    ) -> tuple[float, float]:
        """(mean, sd) of the normal prior on ``C`` for a run with peak LR ``peak_lr``, decay ``lam``, loss
        level ``l_ref`` and anneal share ``u_end``: ``C = (kappa / L_ref) * L_ref * (1 - lam) / lr_peak``.
        With ``use_lr`` the mean and sd scale by ``(clip(lr_peak, *lr_range) / lr_ref) ** lr_power``."""
        scale = l_ref * (1.0 - lam) / peak_lr * max(u_end, 0.05) ** (-self.kappa_u_power)
        if use_lr and self.lr_power:
            lo, hi = self.lr_range
            scale *= (min(max(peak_lr, lo), hi) / self.lr_ref) ** self.lr_power
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
    schedule. Its full-anneal drop is brought to the base prior's reference (``u = 1``, ``lr_peak = lr_ref``)
    with the base prior's ``kappa_u_power`` and ``lr_power``, so it transfers to other schedules and peaks of
    the family; its sd is ``kappa_rel_sd`` of the mean, and ``alpha`` is pinned to the fitted one."""
    import numpy as np

    from scaleforecast.laws import schedule_areas

    params = getattr(result, "params", None)
    if params is None or getattr(result, "law", "tissue") != "tissue":
        raise ValueError("prior_from needs a tissue-law fit with parameters")
    a = np.asarray(lrs, dtype=np.float64).reshape(-1)
    b = load_prior(base) if isinstance(base, str) else base
    warm = "hold" if getattr(result, "warmup", "hold") == "hold" else "raw"
    s1, s2 = schedule_areas(a, params.lam, warm)
    peak = float(a.max())
    ref = params.L0 + params.A * float(s1[-1]) ** (-params.alpha)
    kappa = params.C * peak / (1.0 - params.lam) / ref
    u = max(float(s2[-1]) * (1.0 - params.lam) / peak, 0.05)
    lo, hi = b.lr_range
    k0 = kappa * u**b.kappa_u_power / (min(max(peak, lo), hi) / b.lr_ref) ** b.lr_power
    if not k0 > 0:
        raise ValueError("the source fit has no annealing drop (C = 0): it cannot serve as a prior")
    return b.model_copy(
        update={
            "kappa_mean": k0,
            "kappa_sd": k0 * kappa_rel_sd,
            "alpha_mean": params.alpha,
            "alpha_sd": alpha_sd,
            "provenance": {"source": "prior_from: fit of another run of the family", "base": b.provenance},
        }
    )
