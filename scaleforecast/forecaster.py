"""The online forecaster: observations in, forecasts of the loss at any step under any schedule out.

This is the one stateful object of the core. It keeps a bounded, binned history of the run's losses, the
planned LR schedule (replaceable mid-run), and the latest fit; it refits on a policy and answers forecasts from
the latest fit. Every adapter (Lightning, HF Trainer, the ``watch`` sidecar, the CLI) drives one of these.

With :attr:`ForecasterConfig.background` (what the training adapters use) refits run off the caller's thread:
:meth:`OnlineForecaster.update` hands a snapshot of the binned history to a worker thread and installs the
finished fit at the *next* ``update`` call, so that the training thread pays for bookkeeping only, and every
rank of a job, fed the same flushes, acts on the same forecast at the same step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import ndtri

from scaleforecast.background import Job, refit_worker
from scaleforecast.caller import warn_user
from scaleforecast.events import Event
from scaleforecast.family import ReferenceFit, family_prior
from scaleforecast.fitting import FitConfig, FitResult, Observations, fit, predict
from scaleforecast.history import BinnedHistory
from scaleforecast.lawcheck import LawCheck, LawCheckConfig, check_law, widen
from scaleforecast.laws import LAWS, register_plan
from scaleforecast.priors import AnnealingPrior
from scaleforecast.results import FitStatus, Forecast, ForecastPoint
from scaleforecast.schedule_codec import decode_lrs, encode_lrs
from scaleforecast.schedules import Schedule, as_lrs

ScheduleLike = str | Schedule | Sequence[float] | np.ndarray


class ForecasterConfig(BaseModel):
    """How the online forecaster fits and when it refits.

    >>> from scaleforecast import FitConfig, ForecasterConfig, OnlineForecaster
    >>> config = ForecasterConfig(level=0.9, fit=FitConfig(law="auto"))
    >>> OnlineForecaster("wsd:peak=3e-4,total=5000,cooldown=0.2", config).config.level
    0.9

    The refit cadence scales with the run. After a refit at step ``s`` the next one is due once
    ``gap(s) = max(min(min_refit_gap, total / 10), min(refit_growth * s, total / refits_per_run))`` more steps
    were seen: every ``min_refit_gap`` steps at first (a tenth of a run shorter than ten of them), then
    geometric (every 10% of the steps so far: early steps change the fit most), then ``refits_per_run`` evenly
    over the rest. A 1M-step run refits about 150 times, a 10k-step run
    about 100, where a fixed 100-step period gives 10,000 and 100. ``refit_every`` (when set) restores a
    fixed period, plus an early refit whenever the observations grew by ``refit_growth``. A schedule that
    changed is refitted at the next update. ``max_bins`` bounds memory and refit time.

    ``background``: refits run on a worker thread and take effect at the next update (see
    :meth:`OnlineForecaster.update`): what the training adapters use. ``False`` (the default, for the CLI, the
    ``watch`` sidecar, notebooks and tests) runs them on the caller's thread, taking effect at once.

    ``references``: fits of finished runs of the same family (:mod:`scaleforecast.family`); they replace the
    fit's prior, and every forecast names them in ``borrowed_from``. ``match_peak_lr``: borrow only from the
    references that peaked at this run's peak LR (:func:`scaleforecast.family.family_prior`; set where the
    references come from the same training script, whose LRs share one unit; references given by hand may log
    their LR in other units and are all used). ``law_check``: the posterior-predictive check of the latest
    losses against the law (:mod:`scaleforecast.lawcheck`).
    """

    model_config = ConfigDict(extra="forbid")

    fit: FitConfig = Field(default_factory=FitConfig)
    level: float = Field(0.8, gt=0.0, lt=1.0, description="coverage of the reported interval")
    background: bool = False
    refit_every: int | None = Field(None, ge=1, description="a fixed refit period in steps (None: scale)")
    refits_per_run: int = Field(100, ge=1)
    refit_growth: float = Field(0.1, gt=0.0)
    min_refit_gap: int = Field(100, ge=1)
    max_bins: int = Field(1024, ge=16)
    references: list[ReferenceFit] = Field(default_factory=list)
    match_peak_lr: bool = False
    law_check: LawCheckConfig = Field(default_factory=LawCheckConfig)


def _frozen(lrs: np.ndarray) -> np.ndarray:
    """A private copy of the plan that nothing writes: it cannot change under a running refit, and the areas
    memo (:func:`scaleforecast.laws.schedule_areas`) keys it by identity in O(1). It stays writeable in
    name only (numpy copies read-only arrays for ``argmax``); users see a read-only view."""
    out = np.array(lrs, dtype=np.float64, copy=True)
    register_plan(out)
    return out


@dataclass
class _Refit:
    """What a refit produced: the fit, the law check against the history it saw, and its final forecast."""

    result: FitResult
    check: LawCheck | None
    check_error: str | None
    forecast: Forecast | None


@dataclass
class _Pending:
    """A refit submitted at one update, to take effect at the next: its job and the history it saw."""

    job: Job[_Refit]
    step: int
    n_raw: int
    lrs: np.ndarray | None  # the schedule it fitted against (None: not the current one any more)


Family = tuple[AnnealingPrior | None, list[str], list[str]]


def _fit_config(config: ForecasterConfig, family: Family) -> FitConfig:
    prior = family[0]
    return config.fit if prior is None else config.fit.model_copy(update={"prior": prior})


_FAR_ABOVE = 10.0  # a loss this many times its neighbours' median is damage, not training
_NEIGHBOURS = 10  # on each side


def _far_above(y: np.ndarray, level: float | None) -> np.ndarray:
    """Mask of the losses ``y`` (finite, in step order) above ``_FAR_ABOVE`` times the median of their
    neighbours: the ``_NEIGHBOURS`` on each side, and before the first ones ``level``, the history's latest (a
    flush of one value is judged against the run so far). A loss far *below* its neighbours is left alone, as are
    losses whose neighbours' median is not positive."""
    if y.size == 0:
        return np.zeros(0, dtype=bool)
    h = _NEIGHBOURS
    left = np.full(h, np.nan if level is None else level)
    padded = np.concatenate([left, y, np.full(h, np.nan)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * h + 1)
    # only a loss far above its window's smallest can be far above its median: the medians of those alone (a
    # million-step log in a tenth of the time)
    far = np.zeros(y.size, dtype=bool)
    maybe = np.flatnonzero(~(y <= _FAR_ABOVE * np.fmin.reduce(windows, axis=1)))
    if maybe.size:
        ref = np.nanmedian(windows[maybe], axis=1)
        far[maybe] = (ref > 0) & (y[maybe] > _FAR_ABOVE * ref)
    return far


def _load_fitter() -> None:
    """Import what the first refit needs, on the refit worker, while training goes on: scipy's optimizers took
    0.15 s (up to 0.5 s on a loaded machine) to import inside the first refit, which the training thread then
    waited out at the next flush."""
    import scipy.optimize  # noqa: F401


def _refit_job(
    obs: Observations,
    lrs: np.ndarray,
    config: ForecasterConfig,
    family: Family,
    init: FitResult | None,
    step: int,
    n_raw: int,
    warns: list[str],
) -> _Refit:
    """Fit, check the law against the same history, and forecast the final step: a pure function of its
    arguments, run on the worker thread."""
    result = fit(obs, lrs, _fit_config(config, family), init=init)
    if result.status is FitStatus.FAILED and init is not None:
        return _Refit(result, None, None, None)  # the forecaster keeps ``init``; it redoes the forecast
    check, error = None, None
    if result.params is not None:
        try:
            check = check_law(result, lrs, obs.start, obs.end, obs.y, obs.count, config.law_check, init)
        except (ValueError, FloatingPointError, IndexError) as exc:
            error = f"the check of the law against the latest losses failed: {exc}"
    forecast = _make_forecast(
        result, lrs, None, config.level, config.fit.law, step, n_raw, warns, check, family, None
    )
    return _Refit(result, check, error, forecast)


def _make_forecast(
    fit_result: FitResult | None,
    lrs: np.ndarray,
    steps: Sequence[int] | np.ndarray | None,
    level: float,
    law: str,
    fitted_at_step: int,
    n_points: int,
    warns: list[str],
    check: LawCheck | None,
    family: Family,
    stale: str | None,
    observed: float | None = None,
) -> Forecast:
    """The :class:`Forecast` of ``fit_result`` at ``steps`` (default: the final step) under ``lrs``.

    ``check``: a failed law check widens the band (status ``law_violated``); ``stale``: the reason the fit
    is not current (status ``stale``, no points); ``family``: the borrowed prior's sources and warnings;
    ``observed``: the relative noise of one logged loss, for the band of a logged loss
    (:meth:`OnlineForecaster.forecast`)."""
    total = len(lrs)
    steps_arr = np.array([total] if steps is None else steps, dtype=np.int64).ravel()
    if len(steps_arr) and (steps_arr.min() < 1 or steps_arr.max() > total):
        raise ValueError(f"forecast steps must lie in 1..{total}")
    warns = list(warns) + family[2]
    borrowed = list(family[1])
    common: dict[str, Any] = {
        "level": level,
        "fitted_at_step": fitted_at_step,
        "final_step": total,
        "n_points": n_points,
    }
    if fit_result is not None and fit_result.params is not None and stale is not None:
        return Forecast(
            law=fit_result.law,
            points=[],
            params=fit_result.params,
            status=FitStatus.STALE,
            warnings=[*warns, stale],
            borrowed_from=borrowed,
            **common,
        )
    if fit_result is None or fit_result.params is None:
        status = FitStatus.INSUFFICIENT_DATA if fit_result is None else fit_result.status
        if fit_result is not None:
            warns += fit_result.warnings
        return Forecast(
            law=law, points=[], params=None, status=status, warnings=warns, borrowed_from=borrowed, **common
        )
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # non-finite points are reported below, not warned about by numpy
        mean, std = predict(fit_result, lrs, steps_arr)
    status = fit_result.status
    if check is not None and check.violated:
        mean, std = widen(mean, std, steps_arr, check, level)
        status = FitStatus.LAW_VIOLATED
        warns.append(f"[law_violated] {check.message}; the interval is widened to cover both outcomes")
    if observed is not None:
        std = np.hypot(std, observed * np.abs(mean))
    z = float(ndtri(0.5 + level / 2.0))
    finite = np.isfinite(mean) & np.isfinite(std)
    # the fit models positive losses only (its residuals are relative): a law extrapolated to or below zero
    # has left what it can say, and a negative "forecast" would be a silent wrong answer; for the same reason
    # a band wider than its centre stops at zero
    positive = finite & (mean > 0)
    points = [
        ForecastPoint(
            step=int(s), loss=float(m), lower=max(float(m - z * d), 0.0), upper=float(m + z * d), std=float(d)
        )
        for s, m, d in zip(steps_arr[positive], mean[positive], std[positive], strict=True)
    ]
    for tag, bad, what in (
        ("nonfinite_forecast", ~finite, "is not finite"),
        ("nonpositive_forecast", finite & ~positive, "falls to or below zero, a loss it cannot model,"),
    ):
        if bad.any():
            at = steps_arr[bad]
            shown = ", ".join(str(int(b)) for b in at[:5]) + (", ..." if at.size > 5 else "")
            warns.append(f"[{tag}] the law {what} at step(s) {shown}: no forecast there")
    if not points and steps_arr.size:
        status = FitStatus.FAILED
    return Forecast(
        law=fit_result.law,
        points=points,
        params=fit_result.params,
        status=status,
        warnings=warns + list(fit_result.warnings),
        borrowed_from=borrowed,
        **common,
    )


class OnlineForecaster:
    """Fit the LR-annealing law online and forecast the loss at any step, under the planned or any schedule.

    >>> import numpy as np
    >>> from scaleforecast import OnlineForecaster
    >>> fc = OnlineForecaster("cosine:peak=1e-3,warmup=50,total=1000")
    >>> fc.observe_many(np.arange(1, 601), 2.0 + 0.1 * np.cumsum(fc.schedule[:600]) ** -0.5)

    >>> forecast = fc.refit()
    >>> forecast.status.value, forecast.final.step, round(forecast.final.loss, 2)
    ('ok', 1000, 2.14)

    Usage::

        fc = OnlineForecaster("cosine:peak=3e-4,warmup=200,total=10000")
        for steps, losses in flushes:      # steps = optimizer updates completed (1-based)
            forecast = fc.update(steps, losses)
            if forecast is not None:       # a refit took effect
                print(forecast.final)      # ForecastPoint(step=10000, loss=..., lower=..., upper=...)
        fc.wait()                          # take in the refit still running, if any

    or, on the caller's thread: ``fc.observe_many(steps, losses); fc.refit()``.

    Observations are single steps (``window=1``) or means over the last ``window`` updates, as HF Trainer logs
    them. NaN/Inf losses are counted and never fitted. A step at or before the last one seen means the run
    resumed from an older checkpoint: history after it is dropped, with a warning.

    The status of a forecast says how far it holds (:class:`scaleforecast.results.FitStatus`): ``stale`` (no
    band) while the latest losses are NaN/Inf, ``law_violated`` (a widened band) while the latest losses are
    off the law, else the fit's own status.
    """

    def __init__(self, schedule: ScheduleLike | None = None, config: ForecasterConfig | None = None) -> None:
        # arguments swapped, or a FitConfig where a ForecasterConfig goes: an AttributeError from inside before
        if isinstance(schedule, (ForecasterConfig, FitConfig)):
            raise TypeError(f"schedule: got a {type(schedule).__name__}: OnlineForecaster(schedule, config)")
        if config is not None and not isinstance(config, ForecasterConfig):
            fit_hint = (
                " (a FitConfig goes in ForecasterConfig(fit=...))" if isinstance(config, FitConfig) else ""
            )
            raise TypeError(f"config: expected a ForecasterConfig, got {type(config).__name__}{fit_hint}")
        self.config = config or ForecasterConfig()
        self._history = BinnedHistory(self.config.max_bins)
        self._lrs: np.ndarray | None = None
        self._last_step = 0
        self._n_nonfinite = 0
        self._fit: FitResult | None = None
        self._latest: Forecast | None = None
        self._raw_at_fit = 0
        self._step_at_fit = 0
        self._warnings: list[str] = []
        self._stale = False
        self._pending: _Pending | None = None
        self._schedule_code: Job[dict[str, Any]] | None = None
        self._view: np.ndarray | None = None
        self._check: LawCheck | None = None
        self._nonfinite_tail = 0
        self._last_finite_step = 0
        self._family: Family | None = None
        if schedule is not None:
            self.set_schedule(schedule)

    # ------------------------------------------------------------------ schedule
    @property
    def schedule(self) -> np.ndarray | None:
        """The planned per-update LR (element k = LR of update k+1; a read-only view, the same object until
        the plan changes), or ``None``."""
        if self._lrs is None:
            return None
        if self._view is None or self._view.base is not self._lrs:
            self._view = self._lrs.view()
            self._view.flags.writeable = False
        return self._view

    @property
    def total_steps(self) -> int | None:
        return None if self._lrs is None else len(self._lrs)

    def set_schedule(self, schedule: ScheduleLike) -> None:
        """Replace the planned schedule (e.g. the user changed the scheduler mid-run); the next refit uses it.

        The schedule must cover every step observed so far; its past part should be the LR actually used. The
        forecaster keeps a private read-only copy.
        """
        lrs = as_lrs(schedule)
        if self._last_step > len(lrs):
            raise ValueError(f"schedule has {len(lrs)} steps but step {self._last_step} was already observed")
        changed = self._lrs is None or len(lrs) != len(self._lrs) or not np.array_equal(lrs, self._lrs)
        if not changed:
            return
        self._lrs = _frozen(lrs)
        if self.config.match_peak_lr:
            self._family = None  # which references share the run's peak LR is decided again
        # the compact form a checkpoint carries costs a pass or two over the plan: prepared off-thread
        self._schedule_code = refit_worker().submit(encode_lrs, self._lrs) if self.config.background else None
        if self.config.background:
            refit_worker().submit(_load_fitter)
        # A fit made against the old schedule must not outlive it: the next policy check refits.
        self._stale = self._stale or self._fit is not None or self._pending is not None

    # -------------------------------------------------------------- observations
    @property
    def last_step(self) -> int:
        return self._last_step

    @property
    def n_nonfinite(self) -> int:
        """How many NaN/Inf losses were seen (and left out of the fit)."""
        return self._n_nonfinite

    @property
    def n_observations(self) -> int:
        return self._history.n_raw

    def observe(self, step: int, loss: float, window: int = 1) -> None:
        """Record the mean loss over updates ``step - window + 1 .. step``."""
        self.observe_many([step], [loss], window)

    def observe_many(
        self, steps: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray, window: int = 1
    ) -> None:
        """Record many observations at once (vectorised; ``steps`` strictly increasing whole numbers)."""
        raw = np.asarray(steps).ravel()
        steps = raw.astype(np.int64, copy=False)
        if raw.dtype.kind not in "iu" and not np.array_equal(steps, raw):
            # truncated, 1.5 and 1.7 were one step and 5004.9 was 5004: a step counts optimizer updates
            raise ValueError(f"steps are optimizer updates, whole numbers; got {raw[steps != raw][0]}")
        losses = np.asarray(losses, dtype=float).ravel()
        if steps.shape != losses.shape:
            raise ValueError(f"steps and losses differ in length: {len(steps)} != {len(losses)}")
        if len(steps) == 0:
            return
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if steps.min() < 1:
            raise ValueError(f"steps are optimizer updates completed and start at 1, got {int(steps.min())}")
        if np.any(np.diff(steps) <= 0):
            raise ValueError("steps within one call must be strictly increasing")
        if self._lrs is not None and steps[-1] > len(self._lrs):
            raise ValueError(
                f"step {int(steps[-1])} is past the end of the planned schedule ({len(self._lrs)} steps); "
                "set a longer schedule first"
            )
        if steps[0] <= self._last_step:
            self._rewind(int(steps[0]) - window)
        finite = np.isfinite(losses)
        if not finite.all():
            bad = int((~finite).sum())
            self._n_nonfinite += bad
            self._warn_once(
                "nonfinite", f"{self._n_nonfinite} non-finite loss value(s) seen and left out of the fit"
            )
        keep = finite.copy()
        far = _far_above(losses[finite], self._history.recent_level())
        if far.any():
            # one such value moved a forecast by 2 % (a loss of 1e3 in a run at 3) and 1e10 left none: it is no
            # loss of the law's curve but damage (an overflow, a bad batch, a logging error), which the health
            # checks see and report; the fit does not take it
            at = np.flatnonzero(finite)[far]
            keep[at] = False
            self._warn_once(
                "far_above",
                f"loss value(s) more than {_FAR_ABOVE:g}x the median of their neighbours left out of the fit "
                f"(the latest: {losses[at[-1]]:.4g} at step {int(steps[at[-1]])})",
            )
        start = np.maximum(steps - window + 1, 1)
        self._history.add(start[keep], steps[keep], losses[keep])
        self._last_step = int(steps[-1])
        # the run of NaN/Inf at the end of the stream: while it lasts, no forecast is current
        if finite.any():
            self._last_finite_step = int(steps[finite][-1])
            self._nonfinite_tail = int(len(finite) - 1 - np.flatnonzero(finite)[-1])
        else:
            self._nonfinite_tail += len(finite)

    def _rewind(self, step: int) -> None:
        last = self._last_step
        warn_user(self.rewind_note(step, last, self.rewind(step)))

    @staticmethod
    def rewind_note(step: int, last: int, dropped: int) -> str:
        """What a rewind to ``step`` from the last observed step ``last``, dropping ``dropped``, tells a user."""
        return (
            f"step went back to {max(step, 0) + 1} after {last} (resumed from an older checkpoint?): "
            f"dropped {dropped} observation(s) after step {max(step, 0)}"
        )

    def rewind(self, step: int) -> int:
        """Forget every observation after ``step`` (whole history bins: one that straddles ``step`` goes too),
        quietly, and return how many were dropped. :meth:`observe_many` does it, with a warning, when the steps
        it is given go back; a caller that knows of the resume (a log reader, a training session that says it
        once for all its ranks) rewinds first and says it in its own words (:meth:`rewind_note`)."""
        step = max(step, 0)
        dropped = self._history.truncate(step)
        self._last_step = step
        self._nonfinite_tail = 0
        self._last_finite_step = min(self._last_finite_step, step)
        self._raw_at_fit = min(self._raw_at_fit, self._history.n_raw)
        self._step_at_fit = min(self._step_at_fit, step)
        return dropped

    def observations(self) -> Observations:
        """The binned history as the fitter's :class:`Observations` (window means with weights)."""
        start, end, y, count = self._history.arrays()
        return Observations(start=start, end=end, y=y, count=count)

    # ------------------------------------------------------------------- fitting
    def refit_gap(self, step: int) -> int:
        """Steps from a refit at ``step`` to the next one due (see :class:`ForecasterConfig`)."""
        cfg = self.config
        if cfg.refit_every is not None:
            return cfg.refit_every
        total = len(self._lrs) if self._lrs is not None else 0
        # a run shorter than ten minimum gaps refits at least ten times (a 200-step run's first usable fit came
        # at 60 % of it, its warm-up fit having started a 100-step gap)
        floor = min(cfg.min_refit_gap, max(total // 10, 1))
        return max(floor, math.ceil(min(cfg.refit_growth * step, total / cfg.refits_per_run)))

    def should_refit(self) -> bool:
        """The refit policy (see :class:`ForecasterConfig`); ``False`` while a refit is in flight."""
        if self._lrs is None or self._pending is not None or self._history.n_raw == 0:
            return False
        if self._fit is None or self._stale:
            return True
        if self._last_step - self._step_at_fit >= self.refit_gap(self._step_at_fit):
            return True
        growth = self.config.refit_growth
        return self.config.refit_every is not None and self._history.n_raw >= (1.0 + growth) * max(
            self._raw_at_fit, 1
        )

    @property
    def refit_pending(self) -> bool:
        """Whether a background refit was submitted and has not taken effect yet."""
        return self._pending is not None

    def refit(self) -> Forecast:
        """Fit the law to the history now, on this thread, and return the forecast at the final step.

        A background refit still in flight is superseded (its result is dropped)."""
        if self._lrs is None:
            raise ValueError("no LR schedule set: call set_schedule() before refit()")
        self._pending = None
        self._submit(inline=True)
        forecast = self._install()
        assert forecast is not None
        return forecast

    def update(
        self, steps: Sequence[int] | np.ndarray, losses: Sequence[float] | np.ndarray, window: int = 1
    ) -> Forecast | None:
        """Observe, refit on the policy, and return the forecast that took effect at this call (else ``None``).

        **When a refit takes effect.** With ``config.background`` a refit due at the ``k``-th
        call is fitted on a snapshot of the history as of that call, on a worker thread, and takes effect at
        the start of call ``k + 1``, before that call's observations are recorded: the call installs it and
        returns its forecast. If the refit has not finished by then, call ``k + 1`` waits for it. So the
        forecast in force after call ``k + 1`` was always fitted on exactly the observations up to call ``k``,
        whatever the timing: every rank of a job fed the same flushes acts on the same forecast at the same
        step. The training thread pays the bookkeeping (binning, a snapshot of at most ``max_bins`` bins) and
        a wait only when a refit takes longer than one call interval. The call that reaches the last step of
        the schedule refits there, on all the losses; :meth:`wait` takes in the last refit at the end of a run
        that stops before it. Without ``background`` the refit runs inside call ``k`` and takes effect there.
        When the latest two losses or more are NaN/Inf the call returns a ``stale`` forecast at once, whatever
        the refits.
        """
        installed = self._install()
        self.observe_many(steps, losses, window)
        # At the last step of the schedule the run's own last forecast is fitted now, on all of its losses: no
        # later update would take a background refit in, and the run's end shows one forecast (not the last
        # flush's and then the one the end of training takes in).
        last = self._lrs is not None and self._last_step >= len(self._lrs)
        new_data = self._pending is None and self._history.n_raw > self._raw_at_fit
        if self.should_refit() or (last and new_data):
            self._submit(inline=last)
            if not self.config.background or last:
                return self._install()
        if self._off_track and self._latest is not None and self._latest.status is not FitStatus.STALE:
            # the latest losses are NaN/Inf: the last forecast is no longer current, say so now
            self._latest = self.forecast()
            return self._latest
        return installed

    def wait(self) -> Forecast | None:
        """Install a refit still in flight (waiting for it to finish) and return its forecast, else ``None``.

        Call it where every rank calls it (the end of training), like :meth:`update`."""
        return self._install()

    def _submit(self, inline: bool = False) -> None:
        """Start a refit on a snapshot of the history (on the worker, or on this thread when ``inline``)."""
        assert self._lrs is not None
        args = (
            self.observations(),
            self._lrs,
            self.config,
            self._family_prior(),
            self._fit,
            self._last_step,
            self._history.n_raw,
            list(self._warnings),
        )
        job = refit_worker().submit(_refit_job, *args) if self.config.background and not inline else None
        if job is None:  # synchronous, or the worker's queue is full: the same fit, on this thread
            job = Job.run_now(_refit_job, *args)
        self._pending = _Pending(job, self._last_step, self._history.n_raw, self._lrs)
        self._stale = False

    def _install(self) -> Forecast | None:
        """Make the pending refit the current fit (waiting for it if needed); its forecast, or ``None``."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        done = pending.job.result()  # re-raises a failure of the fit on this thread
        forecast = done.forecast
        if done.result.status is not FitStatus.FAILED or self._fit is None:
            self._fit, self._check = done.result, done.check
            if done.check_error is not None:
                self._warn_once("law_check", done.check_error)
        else:
            self._warn_once("failed", "a refit failed to converge; keeping the previous fit")
            forecast = None
        self._raw_at_fit = pending.n_raw
        self._step_at_fit = pending.step
        if forecast is None or pending.lrs is not self._lrs or self._off_track:
            # the fit was kept from before, or the schedule was re-planned while it ran: forecast under the
            # current plan (the next update refits against it, as it is stale)
            forecast = self.forecast()
        self._latest = forecast
        return forecast

    @property
    def fit_result(self) -> FitResult | None:
        return self._fit

    @property
    def law_check(self) -> LawCheck | None:
        """The posterior-predictive check of the last refit (``None`` before the first usable fit)."""
        return self._check

    @property
    def borrowed_from(self) -> list[str]:
        """The runs of the family whose fits serve as the prior (``config.references``)."""
        return list(self._family_prior()[1])

    @property
    def family_notes(self) -> list[str]:
        """What pooling the family's fits left out, and why (a run at another peak LR, a prior unreadable)."""
        return list(self._family_prior()[2])

    def _family_prior(self) -> Family:
        if self._family is None:
            match = self.config.match_peak_lr and self._lrs is not None and self._lrs.size > 0
            peak = float(np.max(self._lrs)) if match and self._lrs is not None else None
            self._family = family_prior(self.config.references, peak)
        return self._family

    def fit_config(self) -> FitConfig:
        """The fit configuration used at a refit: ``config.fit``, with the family's prior when the config
        holds references."""
        return _fit_config(self.config, self._family_prior())

    @property
    def _off_track(self) -> bool:
        """Whether the latest losses are NaN/Inf, two or more in a row: the fit is no longer current. One is
        left out as any other (a loss scaler's skipped update), wherever it falls in a flush."""
        return self._nonfinite_tail >= 2

    def _stale_note(self) -> str | None:
        if not self._off_track:
            return None
        return (
            f"[stale] no usable loss since step {self._last_finite_step} ({self._nonfinite_tail} "
            f"non-finite value(s) since): the fit to the losses up to step "
            f"{min(self._step_at_fit, self._last_finite_step)} is not current"
        )

    @property
    def latest(self) -> Forecast | None:
        """The forecast made at the last refit."""
        return self._latest

    # ----------------------------------------------------------------- forecasts
    def forecast(
        self,
        steps: Sequence[int] | np.ndarray | None = None,
        schedule: ScheduleLike | None = None,
        level: float | None = None,
        observed: bool = False,
        stale_ok: bool = False,
    ) -> Forecast:
        """Forecast the loss at ``steps`` (default: the final step) from the latest fit.

        With ``schedule`` the forecast is a what-if: the same fitted law under another per-update LR schedule
        (its length sets the final step). The interval is central at ``level`` (default: the config's), from
        the fit's normal predictive distribution ``mean ± z * std``. That is the band of the law's loss; with
        ``observed`` it is the band of the loss as one log line will show it, ``std`` widened by how far one
        logged value strays from the law (:meth:`logged_noise`): what a forecast made near the end is held to
        (there the law's band is narrower than the noise, and held 71 % of the public runs' last logged losses
        at 97 % of the run, 82 % with the noise). A fit that is no longer current (the latest losses are
        NaN/Inf) forecasts nothing (status ``stale``), unless ``stale_ok``: then it forecasts as of the losses it
        was fitted to (what the run looked set to reach before it was lost).
        """
        level = self.config.level if level is None else level
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        lrs = self._lrs if schedule is None else as_lrs(schedule)
        if lrs is None:
            raise ValueError("no LR schedule set")
        if schedule is not None and len(lrs) < self.last_step:
            # as set_schedule() refuses it: a what-if of a run that ended before the steps already trained
            raise ValueError(
                f"the what-if schedule has {len(lrs)} updates, fewer than the {self.last_step} already observed"
            )
        return _make_forecast(
            self._fit,
            lrs,
            steps,
            level,
            self.config.fit.law,
            self._step_at_fit,
            self._raw_at_fit,
            self._warnings,
            self._check,
            self._family_prior(),
            None if stale_ok else self._stale_note(),
            self.logged_noise() if observed else None,
        )

    def logged_noise(self) -> float | None:
        """How far one logged loss strays from the fitted law, relative to the loss (``None`` before a fit).

        The fit's ``sigma`` is the spread of its windows' residuals scaled to one observation (times the root of
        their counts), which is right for noise but multiplies the law's own misfit, alike for every loss of a
        window, by that root: a 100k-step per-step log binned a hundred to a window got a band ten times the
        misfit. Where bins hold several losses their own spread measures the noise of one, ``n``, and
        ``sigma^2 = c * m^2 + n^2`` (``c`` losses a bin) gives the misfit ``m``: one logged loss strays by
        ``sqrt(m^2 + n^2)``. Without repeats (a log of fewer points than bins) that is ``sigma`` itself."""
        fit = self._fit
        if fit is None or fit.params is None:
            return None
        sigma = float(fit.sigma)
        lrs = self._lrs
        peak = int(np.argmax(lrs)) + 1 if lrs is not None and len(lrs) else 0
        got = self._history.spread(after=peak, until=self._step_at_fit)
        if got is None:
            return sigma
        noise, count = got
        # never wider than sigma: with no misfit the two measure the same noise
        return min(math.sqrt(max(sigma * sigma - noise * noise, 0.0) / count + noise * noise), sigma)

    def predict(self, steps: Sequence[int] | np.ndarray, schedule: ScheduleLike | None = None) -> np.ndarray:
        """Point predictions of the latest fit at ``steps`` (NaN everywhere before the first usable fit).

        The mean of :meth:`forecast` without its interval: O(len(steps)) under the planned schedule."""
        steps_arr = np.asarray(steps, dtype=np.int64).ravel()
        if self._fit is None or self._fit.params is None:
            return np.full(len(steps_arr), np.nan)
        lrs = self._lrs if schedule is None else as_lrs(schedule)
        if lrs is None:
            raise ValueError("no LR schedule set")
        if len(steps_arr) and (steps_arr.min() < 1 or steps_arr.max() > len(lrs)):
            raise ValueError(f"steps must lie in 1..{len(lrs)} (the schedule's length)")
        return np.asarray(LAWS[self._fit.law].predict(self._fit.params, lrs, steps_arr), dtype=float)

    def _warn_once(self, key: str, message: str) -> None:
        prefix = f"[{key}] "
        self._warnings = [w for w in self._warnings if not w.startswith(prefix)] + [prefix + message]

    # --------------------------------------------------------------------- state
    def schedule_code(self) -> dict[str, Any] | None:
        """The planned schedule in the compact form the state carries (:mod:`scaleforecast.schedule_codec`),
        computed once per schedule."""
        if self._lrs is None:
            return None
        if self._schedule_code is None:
            self._schedule_code = Job.run_now(encode_lrs, self._lrs)
        return self._schedule_code.result()

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state: config, schedule (compact), binned history, latest fit and forecast.

        A refit in flight is waited for and saved as pending, so that a run resumed from this state installs
        it at its next :meth:`update`, exactly as the uninterrupted run does. The size does not grow with the
        run: the history is binned and the schedule is stored piecewise (a few KB for 1M steps of cosine)."""
        pending = None
        if self._pending is not None:
            try:
                done = self._pending.job.result()
            except Exception:  # the failure surfaces at the next update, on this run; a resumed one refits
                pending = None
            else:
                pending = {
                    "fit": done.result.model_dump(mode="json"),
                    "check": None if done.check is None else done.check.model_dump(mode="json"),
                    "check_error": done.check_error,
                    "forecast": None if done.forecast is None else done.forecast.model_dump(mode="json"),
                    "step": self._pending.step,
                    "n_raw": self._pending.n_raw,
                    "same_schedule": self._pending.lrs is self._lrs,
                }
        return {
            "version": 2,
            "config": self.config.model_dump(mode="json"),
            "schedule": self.schedule_code(),
            "history": self._history.state_dict(),
            "last_step": self._last_step,
            "n_nonfinite": self._n_nonfinite,
            "fit": None if self._fit is None else self._fit.model_dump(mode="json"),
            "latest": None if self._latest is None else self._latest.model_dump(mode="json"),
            "raw_at_fit": self._raw_at_fit,
            "step_at_fit": self._step_at_fit,
            "warnings": list(self._warnings),
            "stale": self._stale,
            "pending": pending,
            "law_check": None if self._check is None else self._check.model_dump(mode="json"),
            "nonfinite_tail": self._nonfinite_tail,
            "last_finite_step": self._last_finite_step,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickled (e.g. by a spawn-based launcher): the plan is a new array, registered again, and still the
        # one a pending refit fitted against
        self.__dict__.update(state)
        old = self._lrs
        if old is None:
            return
        if isinstance(old.base, np.ndarray):  # a view into the pickle's buffer
            self._lrs = _frozen(old)
        else:
            register_plan(old)
        if self._pending is not None and self._pending.lrs is old:
            self._pending.lrs = self._lrs

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (e.g. from a checkpoint, on resume); a refit in flight here
        is dropped."""
        version = state.get("version")
        if version not in (1, 2):
            raise ValueError(f"unsupported forecaster state version {version!r}")
        self.config = ForecasterConfig.model_validate(state["config"])
        code = state["schedule"]
        if code is None:
            self._lrs, self._schedule_code = None, None
        elif version == 1:
            self._lrs, self._schedule_code = _frozen(decode_lrs(code)), None
        else:
            self._lrs, self._schedule_code = _frozen(decode_lrs(code)), Job.finished(code)
        self._history = BinnedHistory(self.config.max_bins)
        self._history.load_state_dict(state["history"])
        self._last_step = int(state["last_step"])
        self._n_nonfinite = int(state["n_nonfinite"])
        self._fit = None if state["fit"] is None else FitResult.model_validate(state["fit"])
        self._latest = None if state["latest"] is None else Forecast.model_validate(state["latest"])
        self._raw_at_fit = int(state["raw_at_fit"])
        self._step_at_fit = int(state["step_at_fit"])
        self._warnings = list(state["warnings"])
        self._stale = bool(state.get("stale", False))
        self._pending = None
        saved = state.get("pending")
        if saved is not None:
            check = saved.get("check")
            done = _Refit(
                FitResult.model_validate(saved["fit"]),
                None if check is None else LawCheck.model_validate(check),
                saved.get("check_error"),
                None if saved["forecast"] is None else Forecast.model_validate(saved["forecast"]),
            )
            self._pending = _Pending(
                Job.finished(done),
                int(saved["step"]),
                int(saved["n_raw"]),
                self._lrs if saved["same_schedule"] else None,
            )
        check = state.get("law_check")
        self._check = None if check is None else LawCheck.model_validate(check)
        self._nonfinite_tail = int(state.get("nonfinite_tail", 0))
        self._last_finite_step = int(state.get("last_finite_step", self._last_step))
        self._family = None


def status_event(previous: FitStatus | None, forecast: Forecast, step: int) -> Event | None:
    """The event that a change of the forecast's status deserves, once per change: ``drift`` (a warning)
    when it turns ``law_violated``, ``stale`` when it turns ``stale``; ``None`` otherwise."""
    status = forecast.status
    if status == previous or status not in (FitStatus.LAW_VIOLATED, FitStatus.STALE):
        return None
    tag = f"[{status.value}] "
    detail = next((w[len(tag) :] for w in forecast.warnings if w.startswith(tag)), status.value)
    if status is FitStatus.LAW_VIOLATED:
        final = forecast.final
        data = {} if final is None else {"final_loss": final.loss, "lower": final.lower, "upper": final.upper}
        return Event(kind="drift", step=step, severity="warning", message=detail, data=data)
    return Event(
        kind="stale",
        step=step,
        severity="warning",
        message=f"{detail}; no forecast is published until a finite loss arrives",
        data={"fitted_at_step": forecast.fitted_at_step},
    )
