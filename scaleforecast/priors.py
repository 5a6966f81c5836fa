"""Scale-free priors for the annealing law, shipped as data with their provenance.

The annealing coefficient ``C`` is invisible in a run's own data until its LR decays (S2 = 0 before). The prior
states it in units the run itself reveals, so that it transfers across LR units, model sizes and codebases:

    kappa / L_ref ~ Normal(kappa_mean, kappa_sd),   kappa = C * lr_peak / (1 - lam)

``kappa`` is the loss drop of a full anneal (the LR going from its peak to zero, given time to settle), and
``L_ref`` the loss level the run has reached (its latest observations). ``alpha`` gets a normal prior too.
At fit time the prior on ``kappa / L_ref`` becomes a normal prior on ``C`` (:meth:`AnnealingPrior.c_prior`),
which the fitter adds to its least-squares objective: the posterior moves from the prior to the data as S2
grows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AnnealingPrior", "load_prior", "prior_from_fit"]

_DATA = Path(__file__).resolve().parent / "data"


class AnnealingPrior(BaseModel):
    """Normal priors on the scale-free annealing drop ``kappa / L_ref`` and on ``alpha``; ``None`` sd = flat.

    ``warmup`` and ``lam`` record the S2 convention the prior was learned under (``C`` depends on both);
    ``provenance`` says where the numbers come from.
    """

    model_config = ConfigDict(frozen=True)

    kappa_mean: float = Field(gt=0)
    kappa_sd: float = Field(gt=0)
    alpha_mean: float | None = None
    alpha_sd: float | None = None
    lam: float = 0.999
    warmup: str = "hold"
    provenance: dict = Field(default_factory=dict)

    def c_prior(self, peak_lr: float, lam: float, l_ref: float) -> tuple[float, float]:
        """(mean, sd) of the normal prior on ``C`` for a run with peak LR ``peak_lr``, decay ``lam`` and loss
        level ``l_ref``: ``C = (kappa / L_ref) * L_ref * (1 - lam) / lr_peak``."""
        scale = l_ref * (1.0 - lam) / peak_lr
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


def prior_from_fit(
    kappa_rel: float, alpha: float, kappa_sd: float = 0.2, alpha_sd: float = 0.05, **kw: object
) -> AnnealingPrior:
    """A prior centred on another run of the same family (its fitted ``kappa / L_ref`` and ``alpha``):
    "fit one curve, predict the rest". ``kappa_sd`` is relative to ``kappa_rel``."""
    return AnnealingPrior(
        kappa_mean=kappa_rel,
        kappa_sd=max(abs(kappa_rel) * kappa_sd, 1e-6),
        alpha_mean=alpha,
        alpha_sd=alpha_sd,
        provenance={"source": "prior_from fit of another run"},
        **kw,  # type: ignore[arg-type]
    )
