"""Schedule advice: is the rest of the planned LR schedule leaving loss on the table?

At each refit the advisor asks the fitted law ``L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)`` a what-if: the
predicted final loss of the remaining planned schedule, against candidates that keep the past and, from the
current step on, start at the current LR and

* decay linearly to 0, or follow a cosine to 0, over the remaining updates;
* hold the LR, then cool down to 0 over the last 10 / 20 / 30% of the run (WSD), with a linear or a
  1-sqrt cooldown (a cooldown that would start in the past starts now).

It reports the best candidate and its predicted gain (a scalar every refit, an event when the gain exceeds
the forecast's own uncertainty, the predictive std of the final loss) and flags plans that decay too early
(the LR falls below 10% of its peak with more than a quarter of the run to go: most of the forward area
``S1`` is given up), end at too high an LR (above 10% of the peak: the annealing term ``C * S2`` is left
unused) or end with updates at LR 0 (which train nothing).

What the law can judge, and what it cannot
------------------------------------------
The law sees the schedule only through ``S1`` (the summed LR, progress) and ``S2`` (the annealing area,
how much of the LR was taken away and how recently), with parameters fitted on *this* run at *its* LR
scale. It can therefore rank schedule **shapes** that stay at or below the LRs the run has used: when to
cool down, how fast, and to what final LR. It cannot tell whether the **peak LR** itself is too high or too
low: an LR above what the run has seen is an extrapolation the fitted law knows nothing about (no
instability, no divergence, no different optimum), so no candidate here ever raises the LR. When the
annealing coefficient ``C`` is not yet pinned by the run's own data (the LR has not decayed yet; fit
status ``annealing_unidentified``) the cooldown gains rest on the prior for ``C``; the advice says so.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scaleforecast.events import Event
from scaleforecast.laws import IDLE_LR
from scaleforecast.results import FitStatus

log = logging.getLogger("scaleforecast.health")


class AdviceConfig(BaseModel):
    """Candidates and thresholds of :class:`ScheduleAdvisor`.

    >>> from scaleforecast import AdviceConfig, ScheduleAdvisor
    >>> advisor = ScheduleAdvisor(AdviceConfig(cooldowns=[0.1, 0.2], min_remaining=0.1))
    >>> advisor.config.cooldowns
    [0.1, 0.2]

    An event is raised when ``gain > max(min_sigma * std_final, min_rel_gain * planned_final)``: above the
    forecast's own uncertainty and above a small practical floor. ``min_remaining``: no advice once less than
    this fraction of the run is left (nothing worth changing). ``low_lr`` / ``early_fraction`` /
    ``high_final`` set the flags.
    """

    model_config = ConfigDict(extra="forbid")

    cooldowns: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3])
    shapes: list[str] = Field(default_factory=lambda: ["linear", "1-sqrt"])
    min_sigma: float = Field(1.0, ge=0)
    min_rel_gain: float = Field(0.001, ge=0)
    min_remaining: float = Field(0.05, ge=0, lt=1)
    low_lr: float = Field(0.1, gt=0, lt=1)
    early_fraction: float = Field(0.25, gt=0, lt=1)
    high_final: float = Field(0.1, gt=0, lt=1)


class Candidate(BaseModel):
    """One what-if schedule: its name, predicted final loss and gain over the plan (positive = better)."""

    name: str
    final_loss: float
    gain: float


class ScheduleAdvice(BaseModel):
    """The advice at ``step``: the plan's predicted final loss and std, every candidate, the best one, the
    flags on the plan, and whether the best gain is significant (beyond the forecast's uncertainty).

    >>> import numpy as np
    >>> from scaleforecast import OnlineForecaster
    >>> fc = OnlineForecaster("cosine:peak=1e-3,warmup=50,total=1000")
    >>> fc.observe_many(np.arange(1, 601), 2.0 + 0.1 * np.cumsum(fc.schedule[:600]) ** -0.5)

    >>> from scaleforecast import ScheduleAdvisor
    >>> _ = fc.refit()
    >>> advice = ScheduleAdvisor().evaluate(fc)
    >>> [c.name for c in advice.candidates][:2]
    ['linear decay to 0', 'cosine to 0']
    """

    step: int
    final_step: int
    planned_final: float
    planned_std: float
    candidates: list[Candidate]
    best: Candidate | None
    significant: bool
    flags: list[str] = Field(default_factory=list)
    c_from_prior: bool = False
    out_of_shape: bool = False

    @property
    def gain(self) -> float:
        """Predicted gain of the best candidate (0 when none beats the plan)."""
        return max(self.best.gain, 0.0) if self.best is not None else 0.0

    def scalars(self) -> dict[str, float]:
        """Scalars for the sinks: ``advice/best_gain``, ``advice/planned_final``, ``advice/best_final``."""
        out = {"advice/best_gain": self.gain, "advice/planned_final": self.planned_final}
        if self.best is not None:
            out["advice/best_final"] = self.best.final_loss
        return out


def _tail(
    kind: str, lr_now: float, n: int, total: int, cooldown: float = 0.0, shape: str = "linear"
) -> np.ndarray:
    """``n`` updates starting at ``lr_now`` and ending just above 0, built with :mod:`scaleforecast.schedules`.

    ``cooldown`` is a fraction of the whole run (``total`` updates); the WSD tail holds ``lr_now`` until its
    cooldown starts (at once when the cooldown is longer than what is left).
    """
    from scaleforecast.schedules import CosineSchedule, LinearSchedule, WSDSchedule

    if kind == "linear":
        return LinearSchedule(peak=lr_now, total=n).lrs()
    if kind == "cosine":
        return CosineSchedule(peak=lr_now, total=n).lrs()
    frac = min(1.0, max(cooldown * total, 1.0) / n)
    return WSDSchedule(peak=lr_now, total=n, cooldown=frac, shape=shape).lrs()  # type: ignore[arg-type]


def candidate_schedules(
    planned: np.ndarray, step: int, config: AdviceConfig | None = None
) -> dict[str, np.ndarray]:
    """The candidates at ``step`` (updates completed): the first ``step`` LRs of ``planned``, then each tail.

    The tails start at the LR of the next planned update (never above it: the law cannot judge a higher
    LR) and end just above 0 at the planned final step.
    """
    cfg = config or AdviceConfig()
    planned = np.asarray(planned, dtype=float)
    total = len(planned)
    n = total - step
    if n < 2:
        return {}
    lr_now = float(planned[min(step, total - 1)])
    if not lr_now > 0:
        return {}
    tails = {
        "linear decay to 0": _tail("linear", lr_now, n, total),
        "cosine to 0": _tail("cosine", lr_now, n, total),
    }
    for c in cfg.cooldowns:
        for shape in cfg.shapes:
            # a cooldown longer than what is left starts now: a decay over the rest, named for what it is (two
            # such cooldowns were shown as two schedules, with one forecast)
            whole = c * total >= n
            name = f"{shape} decay to 0" if whole else f"WSD {round(100 * c)}% {shape} cooldown"
            if name not in tails:
                tails[name] = _tail("wsd", lr_now, n, total, c, shape)
    return {name: np.concatenate([planned[:step], tail]) for name, tail in tails.items()}


IDLE_TAIL = "trains nothing at the end"


def idle_tail(planned: np.ndarray) -> str | None:
    """The plan's last updates at LR 0 (:data:`scaleforecast.laws.IDLE_LR`), in words, when they are over 1 % of
    the run (and more than one: a decay that ends at 0 has one): updates that cannot lower the loss, most
    often a scheduler set up for fewer updates than the run makes. ``None`` otherwise."""
    lrs = np.asarray(planned, dtype=float)
    total = lrs.size
    live = np.flatnonzero(lrs > IDLE_LR * float(lrs.max())) if total else np.empty(0, dtype=int)
    idle = total - (int(live[-1]) + 1 if live.size else 0)
    if idle < max(2, 0.01 * total):
        return None
    return (
        f"{IDLE_TAIL}: the LR is 0 from update {total - idle + 1} to {total}, {100 * idle / total:.0f}% of the "
        "run: those updates cannot lower the loss (a scheduler set up for fewer updates than the run makes?)"
    )


def schedule_flags(planned: np.ndarray, config: AdviceConfig | None = None) -> list[str]:
    """Plain-language flags on a whole planned schedule: decays too early, ends at too high an LR, or ends with
    updates at LR 0 (over 1 % of the run: updates that cannot lower the loss, a warning)."""
    cfg = config or AdviceConfig()
    lrs = np.asarray(planned, dtype=float)
    total = len(lrs)
    peak = float(lrs.max())
    ipeak = int(np.argmax(lrs))
    flags: list[str] = []
    low = np.nonzero(lrs[ipeak:] <= cfg.low_lr * peak)[0]
    if len(low):
        first_low = ipeak + int(low[0])
        left = (total - first_low) / total
        if left > cfg.early_fraction:
            s1_kept = float(lrs.sum() / (peak * (total - ipeak) + lrs[:ipeak].sum()))
            flags.append(
                f"decays too early: the LR is below {round(100 * cfg.low_lr)}% of its peak from update "
                f"{first_low + 1}, with {100 * left:.0f}% of the run to go (the plan keeps {100 * s1_kept:.0f}% of "
                "the forward area S1 of holding the peak)"
            )
    idle = idle_tail(lrs)
    if idle is not None:
        flags.append(idle)
    if lrs[-1] > cfg.high_final * peak:
        flags.append(
            f"ends at a high LR: the last update runs at {100 * lrs[-1] / peak:.0f}% of the peak; decaying further "
            "would bank more of the annealing gain"
        )
    return flags


def _decayed(planned: np.ndarray, step: int) -> bool:
    """Whether the LR decayed after its peak within the first ``step`` updates: until it has, the run's own data
    hold nothing on the annealing coefficient C, whatever the fit's status says (a constant-LR plan anneals
    nowhere, so its status never asks)."""
    seen = np.asarray(planned[: max(step, 1)], dtype=np.float64)
    after = seen[int(np.argmax(seen)) :]
    return bool(after.min() < (1.0 - 1e-3) * after.max())


class ScheduleAdvisor:
    """Compare the plan with the candidates at each refit and report the best one (see the module doc).

    >>> import numpy as np
    >>> from scaleforecast import OnlineForecaster
    >>> fc = OnlineForecaster("cosine:peak=1e-3,warmup=50,total=1000")
    >>> fc.observe_many(np.arange(1, 601), 2.0 + 0.1 * np.cumsum(fc.schedule[:600]) ** -0.5)

    >>> from scaleforecast import ScheduleAdvisor
    >>> _ = fc.refit()
    >>> advice = ScheduleAdvisor().evaluate(fc)
    >>> advice.step, advice.final_step, advice.best.name
    (600, 1000, 'WSD 10% linear cooldown')

    ``evaluate(view)`` reads the fit through a read-only :class:`scaleforecast.monitor.FitView` (an
    :class:`~scaleforecast.forecaster.OnlineForecaster` offers the same ``latest``, ``last_step``,
    ``schedule`` and ``predict``) and returns a :class:`ScheduleAdvice` (or ``None`` when there is no usable
    fit or nothing is left to change; no candidates while the run has left its law, status ``law_violated``,
    whose what-ifs would be the law's), kept as :attr:`latest`; ``events(advice)`` turns it into events: one
    ``schedule_advice`` event when the gain is significant, and each plan flag once.
    ``advise(view, step)`` does both and never raises: it is the hook
    :class:`~scaleforecast.monitor.RunMonitor` calls after each refit; :meth:`scalars` gives the latest
    advice as scalars for the sinks.
    """

    def __init__(self, config: AdviceConfig | None = None) -> None:
        self.config = config or AdviceConfig()
        self.latest: ScheduleAdvice | None = None
        # whether the latest refit gave advice (none once too little of the run is left)
        self._current = False
        self._flagged: set[str] = set()
        self._advised: str | None = None  # the candidate the last advice event recommended

    def evaluate(self, view: Any) -> ScheduleAdvice | None:
        """Compare the remaining plan with every candidate under the latest fit (see the class doc)."""
        cfg = self.config
        self._current = False
        planned = getattr(view, "schedule", None)
        plan = getattr(view, "latest", None)
        if planned is None or plan is None or plan.params is None or not plan.ok or plan.final is None:
            return None
        step = int(view.last_step)
        total = len(planned)
        if plan.final_step != total or total - step < max(2, cfg.min_remaining * total):
            return None
        cands: list[Candidate] = []
        # a what-if is the law's answer: for a run that has left its law, there is none to give
        schedules = {} if plan.status is FitStatus.LAW_VIOLATED else candidate_schedules(planned, step, cfg)
        for name, lrs in schedules.items():
            try:
                final = float(view.predict([total], schedule=lrs)[0])
            except Exception as err:  # one bad candidate must not lose the others
                log.debug("candidate %s failed: %r", name, err)
                continue
            if math.isfinite(final):
                cands.append(Candidate(name=name, final_loss=final, gain=plan.final.loss - final))
        best = max(cands, key=lambda c: c.gain) if cands else None
        bar = max(cfg.min_sigma * plan.final.std, cfg.min_rel_gain * abs(plan.final.loss))
        advice = ScheduleAdvice(
            step=step,
            final_step=total,
            planned_final=plan.final.loss,
            planned_std=plan.final.std,
            candidates=cands,
            best=best,
            significant=best is not None and best.gain > bar,
            flags=schedule_flags(planned, cfg),
            c_from_prior=plan.status.value == "annealing_unidentified" or not _decayed(planned, step),
            out_of_shape=any(w.startswith("[out_of_shape]") for w in plan.warnings),
        )
        self.latest, self._current = advice, True
        return advice

    def events(self, advice: ScheduleAdvice | None) -> list[Event]:
        """The advice event and the plan's flags (each once). Advice is re-evaluated at every refit; its event (a
        warning) comes when the advice is significant and new: the first, or a candidate that beats the one said
        last by more than the forecast's std (candidates of near-equal gain trade places from one refit to the
        next, and each refit said its own again)."""
        if advice is None:
            return []
        out: list[Event] = []
        said = next((c for c in advice.candidates if c.name == self._advised), None)
        new = advice.best is not None and (
            said is None
            or (advice.best.name != said.name and advice.best.gain - said.gain > advice.planned_std)
        )
        if advice.significant and advice.best is not None and new:
            self._advised = advice.best.name
            caveat = (
                " (the annealing coefficient C is not pinned down by this run's data yet: it comes from the prior)"
                if advice.c_from_prior
                else ""
            )
            if advice.out_of_shape or advice.best.final_loss <= 0:
                # a fit that is not of the law's shape (a loss falling toward zero) ranks the schedules right and
                # overstates the gains, down to losses below zero
                why = "[out_of_shape]" if advice.out_of_shape else "a loss below zero ahead"
                caveat += f"; the fit is out of the law's shape ({why}): the direction holds, not the size of the gain"

            out.append(
                Event(
                    kind="schedule_advice",
                    step=advice.step,
                    severity="warning",
                    score=advice.best.gain,
                    message=(
                        f"switching to '{advice.best.name}' from step {advice.step} is predicted to lower the final "
                        f"loss by {advice.best.gain:.4g} ({advice.planned_final:.4g} -> {advice.best.final_loss:.4g}, "
                        f"forecast std {advice.planned_std:.2g}){caveat}"
                    ),
                    data={
                        "best": advice.best.name,
                        "gain": advice.best.gain,
                        "planned_final": advice.planned_final,
                        "planned_std": advice.planned_std,
                        "candidates": {c.name: c.final_loss for c in advice.candidates},
                    },
                )
            )
        for flag in advice.flags:
            key = flag.split(":", 1)[0]
            if key in self._flagged:
                continue
            self._flagged.add(key)
            out.append(
                Event(
                    kind="schedule_advice",
                    step=advice.step,
                    severity="warning" if key == IDLE_TAIL else "info",
                    message=flag,
                    data={"flag": key},
                )
            )
        return out

    def advise(self, view: Any, step: int | None = None) -> list[Event]:
        """``events(evaluate(view))``; never raises (a failure is logged and yields no events).

        ``step`` is accepted for the monitor's hook signature; the view's last step is used.
        """
        try:
            return self.events(self.evaluate(view))
        except Exception as err:
            log.warning("schedule advice failed at this refit: %r", err)
            return []

    def scalars(self) -> dict[str, float]:
        """The latest refit's advice as sink scalars (empty when it gave none: a plan from an earlier refit would
        show a stale planned final loss beside the current forecast)."""
        return self.latest.scalars() if self.latest is not None and self._current else {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "flagged": sorted(self._flagged),
            "advised": self._advised,
            "latest": None if self.latest is None else self.latest.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = AdviceConfig.model_validate(state["config"])
        self._flagged = set(state.get("flagged", []))
        self._advised = state.get("advised")
        latest = state.get("latest")
        self.latest = None if latest is None else ScheduleAdvice.model_validate(latest)
