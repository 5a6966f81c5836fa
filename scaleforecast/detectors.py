"""Run-health detectors: non-finite values, loss spikes, divergence, stagnation and gradient-norm growth.

Every detector is fed host-side arrays at each flush (no per-step collective): the optimizer ``steps``
(updates completed, strictly increasing), the loss (mean over ranks; the spike rule scores the max over
ranks when given, so a spike on any rank counts), the LR of each update when known and, once the online
forecaster has a usable fit, the law's expected loss at any step (``law(steps)``).

**Stop policy: a detector calls an event critical (and the run monitor's default ``action="stop"`` stops the
run) only on evidence that the run is lost.** Two kinds of evidence count:

* a non-finite loss that persists: ``NonFiniteConfig.patience`` consecutive observations (8) with a NaN/Inf
  loss (mean or max over ranks). A single NaN, or a few, is a warning; so is a non-finite gradient norm
  (mixed-precision loss scaling skips such steps by design) unless it persists for ``grad_patience`` (64)
  observations;
* a divergence from the law that persists: after the divergence rule saw the loss rise beyond the noise and
  beyond what the law and the LR explain (a warning), the loss level stays at least ``DriftConfig.lost_rise``
  (10%) and ``lost_sigma`` noise units above its level before the rise (less any rise that the fit in force
  at the warning predicts, e.g. for a re-warmed LR) for ``persist_steps`` (1,000) steps and ``persist_obs``
  (8) observations without a break.

Single spikes are never critical: each is a warning event, counted and shown (TensorBoard, log, hook) and
written to the spike record, and training goes on. Stagnation and gradient-norm precursors are warnings too.

The detectors cost O(1) per observation: each keeps exponentially weighted running statistics
(:mod:`scaleforecast.streaming`) and block summaries, updated once per chunk of a flush, never a re-scan of a
window. The spike rule scores robust residuals: it keeps an EW least-squares line ``y ≈ c0 + c1 * log(s)`` (the local trend)
and, once there is a law, an EW line through ``y - law(s)`` (the law supplies the curvature, the line absorbs
its local misfit); the noise scale is the median of the robust scales of the last blocks of one-step
prediction errors (so neither spikes nor an early misfit inflate it), each relative to its block's loss level and
taken at the current level (a minibatch loss's noise shrinks with the loss, so after a steep start the early
blocks would hold it several times too wide: a x8 spike soon after one stood at z ~ 3); a point scores
``z = min(z_law, z_local)``, so it must stand out against both. Points flagged as spikes never enter the
statistics, so one spike cannot hide the next; ``max_run`` flagged points in a row
mean the level itself moved and the statistics take them in. :class:`HealthMonitor` bundles the detectors
with debouncing and the spike record; it plugs into :class:`scaleforecast.monitor.RunMonitor` as a detector
(``detectors=[HealthMonitor()]``), and the monitor's ``action`` decides what its critical events do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scaleforecast.events import SEVERITY_RANK, Event
from scaleforecast.streaming import (
    EWLine,
    Ring,
    alpha_for,
    chunks,
    ew_last,
    ew_path,
    ew_paths,
    run_lengths,
)

log = logging.getLogger("scaleforecast.health")

_MAD_TO_SIGMA = 1.4826
_STATE_VERSION = 2


def robust_scale(residuals: np.ndarray) -> float:
    """``1.4826 * median(|r - median(r)|)``: the standard deviation of normal noise, robust to outliers."""
    r = np.asarray(residuals, dtype=float)
    if r.size == 0:
        return math.nan
    return float(_MAD_TO_SIGMA * np.median(np.abs(r - np.median(r))))


LawFn = Callable[[np.ndarray], np.ndarray]
LrFn = Callable[[np.ndarray], "np.ndarray | None"]


def _law_at(law: LawFn | None, steps: np.ndarray) -> np.ndarray | None:
    """The law's expected loss at ``steps``, or ``None`` when there is no law or it is not finite there."""
    if law is None or len(steps) == 0:
        return None
    e = np.asarray(law(steps), dtype=float).ravel()
    if e.shape != (len(steps),) or not np.all(np.isfinite(e)):
        return None
    return e


def _tame(resid: np.ndarray, k: float = 8.0) -> np.ndarray:
    """``resid`` with values more than ``k`` robust scales from the median replaced by the median."""
    if len(resid) < 4:
        return resid
    med = float(np.median(resid))
    scale = robust_scale(resid)
    if not scale > 0:
        return resid
    return np.where(np.abs(resid - med) > k * scale, med, resid)


def _finite_mask(steps: np.ndarray, values: np.ndarray, min_step: int) -> np.ndarray:
    return np.isfinite(values) & (steps >= min_step)


# 1.4826 * MAD of 32 normal values is 2.3% low on average (measured): each block's scale is divided by this.
_BLOCK_MAD_BIAS = 0.977


class _Noise:
    """A robust running noise scale: the median of the robust scales (``1.4826 * MAD``, corrected for the
    block's size) of the last ``span / 32`` full blocks of 32 values, times ``to_sigma`` (1 for errors, ``1 / sqrt(2)`` for
    first differences of white noise).

    Each value is touched once (when its block fills), so the cost is O(1) per value; the median over blocks
    keeps a transient (a misfit early in the run, a burst of spikes) from setting the scale as long as it
    fills fewer than half of the blocks, as a window median would. Given the losses behind the values
    (``levels``), each block also keeps its median loss, and :meth:`sigma_at` scales the blocks' noise
    relative to their level to the current one: a minibatch loss's noise shrinks with the loss, so after a
    steep start the early blocks would otherwise hold the scale several times too wide.
    """

    def __init__(self, span: int, to_sigma: float = 1.0) -> None:
        self.block = 32
        self.keep = max(int(span) // self.block, 2)
        self.to_sigma = float(to_sigma)
        self.buf = np.empty(self.block)
        self.lbuf = np.full(self.block, math.nan)
        self.fill = 0
        self.scales: list[float] = []
        self.levels: list[float] = []
        self.n = 0
        self._sigma = math.nan

    @property
    def sigma(self) -> float:
        """The noise sd (NaN before ``block`` values; from the partial block before the first one fills)."""
        if self.scales:
            return self._sigma
        if self.fill >= 8:
            return self.to_sigma * robust_scale(self.buf[: self.fill])
        return math.nan

    def sigma_at(self, level: float) -> float:
        """The noise sd at loss ``level``: the median of the blocks' scales relative to their median loss,
        times ``level``, when that level and every block's are positive; else :attr:`sigma`."""
        levels = np.asarray(self.levels, dtype=float)
        if not (level > 0 and levels.size and np.all(levels > 0)):
            return self.sigma
        return self.to_sigma * float(np.median(np.asarray(self.scales) / levels)) * level

    def add(self, values: np.ndarray, levels: np.ndarray | None = None) -> None:
        v = np.asarray(values, dtype=float).ravel()
        lv = np.full(v.size, math.nan) if levels is None else np.asarray(levels, dtype=float).ravel()
        self.n += v.size
        i = 0
        while i < v.size:
            take = min(v.size - i, self.block - self.fill)
            self.buf[self.fill : self.fill + take] = v[i : i + take]
            self.lbuf[self.fill : self.fill + take] = lv[i : i + take]
            self.fill += take
            i += take
            if self.fill == self.block:
                self.scales = [*self.scales[-(self.keep - 1) :], _block_scale(self.buf)]
                self.levels = [*self.levels[-(self.keep - 1) :], _block_median(self.lbuf)]
                self._sigma = self.to_sigma * _median(self.scales)
                self.fill = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "buf": self.buf[: self.fill].tolist(),
            "lbuf": self.lbuf[: self.fill].tolist(),
            "scales": list(self.scales),
            "levels": list(self.levels),
            "n": self.n,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buf = np.asarray(state["buf"], dtype=float)
        self.fill = len(buf)
        self.buf[: self.fill] = buf
        # a state saved before levels were kept reads as levels unknown: the absolute scale
        self.lbuf[: self.fill] = np.asarray(state.get("lbuf", [math.nan] * self.fill), dtype=float)
        self.scales = [float(x) for x in state["scales"]]
        self.levels = [float(x) for x in state.get("levels", [math.nan] * len(self.scales))]
        self.n = int(state["n"])
        self._sigma = self.to_sigma * _median(self.scales) if self.scales else math.nan


def _block_scale(block: np.ndarray) -> float:
    """:func:`robust_scale` of one block of 32, by partial sorts (a block fills every 32 values; a full
    ``np.median`` costs several times more), corrected for the block's size."""
    half = len(block) // 2
    p = np.partition(block, (half - 1, half))
    med = 0.5 * (p[half - 1] + p[half])
    q = np.partition(np.abs(block - med), (half - 1, half))
    return _MAD_TO_SIGMA * 0.5 * float(q[half - 1] + q[half]) / _BLOCK_MAD_BIAS


def _block_median(block: np.ndarray) -> float:
    """The median of a block (NaN if it holds one), by a partial sort."""
    n = len(block)
    if np.isnan(block).any():
        return math.nan
    p = np.partition(block, (n - 1) // 2 if n % 2 else (n // 2 - 1, n // 2))
    return float(p[n // 2]) if n % 2 else 0.5 * float(p[n // 2 - 1] + p[n // 2])


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


# --------------------------------------------------------------------------------------------- non-finite
class NonFiniteConfig(BaseModel):
    """Non-finite values: every NaN/Inf loss or gradient norm is reported (a warning, once per flush); the
    event is critical when non-finite losses persist for ``patience`` consecutive observations, or non-finite
    gradient norms for ``grad_patience`` (loss scaling skips single non-finite gradient steps by design)."""

    model_config = ConfigDict(extra="forbid")

    patience: int = Field(8, ge=1)
    grad_patience: int = Field(64, ge=1)


class NonFiniteDetector:
    """NaN/Inf in the loss (mean or max over ranks) or the gradient norm; critical once it persists.

    >>> import numpy as np
    >>> from scaleforecast import NonFiniteDetector
    >>> events = NonFiniteDetector().update(np.arange(1, 21), np.full(20, np.nan))
    >>> [event.severity for event in events]
    ['warning', 'critical']
    """

    def __init__(self, config: NonFiniteConfig | None = None) -> None:
        self.config = config or NonFiniteConfig()
        self.run_loss = 0
        self.run_grad = 0

    def update(
        self,
        steps: np.ndarray,
        loss: np.ndarray,
        loss_max: np.ndarray | None = None,
        grad_norm: np.ndarray | None = None,
    ) -> list[Event]:
        cfg = self.config
        bad_loss = ~np.isfinite(loss)
        if loss_max is not None:
            bad_loss |= ~np.isfinite(loss_max)
        bad_grad = np.zeros_like(bad_loss) if grad_norm is None else ~np.isfinite(grad_norm)
        bad = bad_loss | bad_grad
        runs_loss = run_lengths(bad_loss, self.run_loss)
        runs_grad = run_lengths(bad_grad, self.run_grad)
        self.run_loss = int(runs_loss[-1]) if len(runs_loss) else self.run_loss
        self.run_grad = int(runs_grad[-1]) if len(runs_grad) else self.run_grad
        if not bad.any():
            return []
        events: list[Event] = []
        first = int(np.argmax(bad))
        what = "loss" if bad_loss[first] else "gradient norm"
        value = loss[first] if bad_loss[first] else grad_norm[first]  # type: ignore[index]
        lost = [
            (int(np.argmax(runs == limit)), name, limit)
            for runs, name, limit in (
                (runs_loss, "loss", cfg.patience),
                (runs_grad, "gradient norm", cfg.grad_patience),
            )
            if (runs == limit).any()
        ]
        events.append(
            Event(
                kind="nonfinite",
                step=int(steps[first]),
                severity="warning",
                score=float(value),
                message=f"non-finite {what} ({value}) at step {int(steps[first])}"
                + (f"; {int(bad.sum())} non-finite value(s) in this flush" if bad.sum() > 1 else ""),
                data={"what": what, "n_bad": int(bad.sum()), "steps": steps[bad][:16]},
            )
        )
        for i, name, limit in lost:
            events.append(
                Event(
                    kind="nonfinite",
                    step=int(steps[i]),
                    severity="critical",
                    score=float(limit),
                    message=(
                        f"non-finite {name} for {limit} observations in a row, up to step {int(steps[i])}: "
                        "the run is lost"
                    ),
                    data={"what": name, "consecutive": limit},
                )
            )
        return events

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(), "run_loss": self.run_loss, "run_grad": self.run_grad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(NonFiniteConfig.model_validate(state.get("config", {})))  # type: ignore[misc]
        # A run saved past its limit (stopped as lost, or warned only) and resumed: held one short of it, so
        # that its next non-finite value is said to be lost again (a run at the limit or past it never reaches
        # the limit again, and the resumed run trained to its end on NaN with no stop)
        cfg = self.config
        self.run_loss = min(int(state.get("run_loss", 0)), cfg.patience - 1)
        self.run_grad = min(int(state.get("run_grad", 0)), cfg.grad_patience - 1)


# -------------------------------------------------------------------------------------------------- spike
class SpikeConfig(BaseModel):
    """Robust residual spike rule: ``z > threshold`` once ``min_points`` observations were taken in.

    ``window``: the effective number of points (EW) behind the local lines; ``noise_window``: that of the
    noise scale. ``max_run`` flagged points in a row mean the level itself moved (a divergence, a data
    switch): the statistics then take them in so the detector re-anchors instead of flagging every later
    step. ``degree``: 1 for a local line in ``log(step)``, 0 for a local level. The threshold was chosen on
    the dev half of ``benchmarks/detection.py``: 4.1 keeps its false alarms under those of the previous
    detector (4.2 per 100k steps, mostly real spikes of the every-step llm.c curve) at equal or higher recall;
    with the noise scaled to the loss level it is still the knee of the dev half's sweep (``--quick``: recall
    of 5-sigma spikes 0.78, was 0.73, at the same 0.14 false alarms per 100k steps; holdout 0.75, was 0.72, at
    one false alarm, a point 3.6 local sigmas high).
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(4.1, gt=0)
    window: int = Field(64, ge=8)
    min_points: int = Field(24, ge=4)
    min_step: int = Field(0, ge=0, description="ignore steps before this one (e.g. the warm-up)")
    max_run: int = Field(4, ge=1)
    rel_floor: float = Field(2e-5, ge=0)
    noise_window: int = Field(
        256, ge=16, description="effective number of one-step errors in the noise scale"
    )
    degree: int = Field(1, ge=0, le=1, description="degree of the local polynomial in log(step)")


class SpikeDetector:
    """Loss spikes as robust residual outliers against the law (or the local trend before the first fit).

    >>> import numpy as np
    >>> from scaleforecast import SpikeDetector
    >>> loss = 3.0 + 0.01 * np.random.default_rng(0).standard_normal(300)
    >>> loss[250] = 4.0
    >>> [(event.kind, event.step) for event in SpikeDetector().update(np.arange(1, 301), loss)]
    [('spike', 251)]

    ``update`` scores every finite point of the flush and returns one warning ``spike`` event per flagged
    point (the monitor debounces). ``law(steps)`` returns the law's expected loss at any steps (NaN before a
    usable fit); the event's ``score`` is the robust z-score and ``data`` has the observed and expected loss
    and the noise scale. The lines are rebuilt from the last ``3 * window`` accepted points when the law
    changes (a refit), so a new fit never leaves residuals of the old one behind.
    """

    _MIN_ERRORS = 64

    def __init__(self, config: SpikeConfig | None = None) -> None:
        self.config = config or SpikeConfig()
        w = self.config.window
        self.lines = EWLine((w - 1.0) / (w + 1.0), 2)  # row 0: y (local trend), row 1: y - law
        self.ring = Ring(3 * w)
        self.noise = [_Noise(self.config.noise_window), _Noise(self.config.noise_window)]
        self.run = 0
        self._law: LawFn | None = None  # the law row 1 holds residuals of (None: row 1 unusable)

    def _sync_law(self, law: LawFn | None) -> bool:
        """Make row 1 hold residuals of ``law``; False when the law is unusable on the accepted points."""
        if law is None:
            self._law = None
            return False
        if law is self._law:
            return True
        steps, y = self.ring.arrays()
        base = _law_at(law, steps) if len(steps) else np.zeros(0)
        if base is None:
            self._law = None
            return False
        # A new fit: rebuild both lines from the ring, so that they are consistent with each other. Where the
        # law is far off (inside the warm-up its S1 is tiny and its prediction absurd) the residual is replaced
        # by the typical one, so that a few such points cannot bend the law's line.
        self.lines.reset()
        if len(steps):
            x = np.log(steps.astype(float))
            resid = _tame(y - base)
            self.lines.recentre(float(x[0]))
            self.lines.add(x, np.vstack([y, resid]))
        self._law = law
        return True

    def score(
        self, steps: np.ndarray, values: np.ndarray, law: LawFn | None = None
    ) -> tuple[np.ndarray, list[Event]]:
        """Robust z-scores of the points (NaN where not scored) and the events they raise.

        With a law, a point must stand out both against the law (plus its local correction) and against
        the local trend alone: ``z = min(z_law, z_local)``. The law removes the local trend's false alarms
        where the LR schedule bends the curve (a step drop, a cooldown's start); the local trend removes the
        law's where the fit is off (a cooldown that the prior for ``C`` misjudged). A real spike clears both.
        """
        steps = np.asarray(steps, dtype=np.int64).ravel()
        values = np.asarray(values, dtype=float).ravel()
        z_all = np.full(len(steps), np.nan)
        events: list[Event] = []
        keep = np.nonzero(_finite_mask(steps, values, self.config.min_step))[0]
        if keep.size == 0:
            return z_all, events
        st, y = steps[keep], values[keep]
        for sl in chunks(st):
            z, ev = self._chunk(st[sl], y[sl], law)
            z_all[keep[sl]] = z
            events += ev
        return z_all, events

    def _chunk(self, s: np.ndarray, y: np.ndarray, law: LawFn | None) -> tuple[np.ndarray, list[Event]]:
        cfg = self.config
        x = np.log(s.astype(float))
        # The points held are asked first, so that one block of the law covers them and this chunk.
        use_law = self._sync_law(law)
        base = _law_at(law, s) if use_law else None
        if base is None:
            use_law = self._sync_law(None)
        lines = self.lines
        if lines.n == 0:
            lines.recentre(float(x[0]))
        n_warm = max(0, min(len(s), cfg.min_points - lines.n))
        z = np.full(len(s), np.nan)
        events: list[Event] = []
        if n_warm:
            # Too few points for a model: take them in unscored.
            warm = None if base is None or self._law is None else _tame(y[:n_warm] - base[:n_warm])
            self._accept(s[:n_warm], x[:n_warm], y[:n_warm], warm)
            if n_warm == len(s):
                return z, events
            s, x, y = s[n_warm:], x[n_warm:], y[n_warm:]
            base = None if base is None else base[n_warm:]
        lines.recentre(float(x[0]))
        c0, c1, xm, sxx, n_eff, rsd = lines.fit(cfg.degree)
        u = x - lines.x_ref
        mean = float(c0[0] + c1[0] * xm)  # the EW mean of the losses taken in
        floor = cfg.rel_floor * abs(mean) + 1e-12
        lev = (1.0 + ((u - xm) ** 2 / sxx if sxx > 0 else 0.0)) / max(n_eff, 1.0)
        modes = [0, 1] if use_law else [0]
        preds, scales = [], []
        for k in modes:
            pred = c0[k] + c1[k] * u + (base if k == 1 else 0.0)
            model_sd = max(float(rsd[k]), floor)
            noise = self.noise[k]
            if noise.n >= self._MIN_ERRORS:
                scale = np.full(len(s), max(noise.sigma_at(mean), 0.5 * model_sd, floor))
            else:
                scale = np.maximum(model_sd * np.sqrt(1.0 + lev), floor)
            preds.append(pred)
            scales.append(scale)
        z = (y - preds[0]) / scales[0]
        # the message shows the expectation that scored the point lower (a law extrapolated far, or fitted to
        # a loss that left it, may expect less than nothing)
        by_law = np.zeros(len(s), dtype=bool)
        if use_law:
            z_law = (y - preds[1]) / scales[1]
            by_law = z_law < z
            z = np.where(by_law, z_law, z)
        flag = z > cfg.threshold
        runs = run_lengths(flag, self.run)
        self.run = int(runs[-1])
        report = flag & (runs <= cfg.max_run)
        accept = ~report
        for i in np.nonzero(report)[0]:
            shown = int(by_law[i])
            events.append(
                Event(
                    kind="spike",
                    step=int(s[i]),
                    severity="warning",
                    score=float(z[i]),
                    message=(
                        f"loss spike at step {int(s[i])}: {y[i]:.4g} vs expected {preds[shown][i]:.4g} "
                        f"({z[i]:.1f} sigma, sigma={scales[shown][i]:.3g}, "
                        f"{'law and local trend' if use_law else 'local trend'})"
                    ),
                    data={
                        "loss": float(y[i]),
                        "expected": float(preds[shown][i]),
                        "sigma": float(scales[shown][i]),
                        "law": use_law,
                    },
                )
            )
        if accept.any():
            self.noise[0].add((y - preds[0])[accept], y[accept])
            resid = None
            if use_law:
                # A point far off the law's line (where the law itself is off) must not bend that line.
                off = np.abs((y - preds[1]) / scales[1]) > 2.0 * cfg.threshold
                self.noise[1].add((y - preds[1])[accept & ~off], y[accept & ~off])
                resid = np.where(off, preds[1] - base, y - base)[accept]
            self._accept(s[accept], x[accept], y[accept], resid)
        out = np.full(n_warm + len(s), np.nan)
        out[n_warm:] = z
        return out, events

    def _accept(self, s: np.ndarray, x: np.ndarray, y: np.ndarray, resid: np.ndarray | None) -> None:
        """Take points in: row 0 gets the losses, row 1 the law residuals ``resid`` (the losses without a law)."""
        self.lines.add(x, np.array([y, y if resid is None or self._law is None else resid]))
        self.ring.extend(s, y)

    def update(self, steps: np.ndarray, values: np.ndarray, law: LawFn | None = None) -> list[Event]:
        """Score one flush and return its spike events."""
        return self.score(steps, values, law)[1]

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "lines": self.lines.state_dict(),
            "ring": self.ring.state_dict(),
            "noise": [n.state_dict() for n in self.noise],
            "run": self.run,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(SpikeConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.lines.load_state_dict(state["lines"])
        self.ring.load_state_dict(state["ring"])
        for n, s in zip(self.noise, state["noise"], strict=True):
            n.load_state_dict(s)
        self.run = int(state.get("run", 0))
        # The law is not saved: row 1 is rebuilt from the ring against the first law seen after resuming.
        self._law = None


# ----------------------------------------------------------------------------------------- divergence
class DriftConfig(BaseModel):
    """Divergence: the loss level rises (beyond what the law expects) and, to be critical, stays up.

    **Warning** (evidence of a rise): for each block length ``L`` in ``blocks`` the statistic is
    ``t = (Δ_obs - max(Δ_law, 0)) / se`` where ``Δ_obs = m_fast - m_slow`` is the difference of two EW means of
    the loss (effective lengths ``L`` and ``3 L``; values clipped at ``max(clip * sigma, 4 * min_rel * level)``
    around the level, so single spikes barely move them), ``Δ_law`` the same difference of the law's expected loss (0 without a
    law) and ``se`` its standard error under white noise of sd ``sigma`` (from first differences). A rise
    needs ``t > threshold`` on ``patience`` consecutive points and a rise of at least ``min_rel`` of the loss
    level; without a law it also needs the LR not to rise (a rising LR in warm-up may raise the loss). The
    warning is given at the first point ``confirm_steps`` or more steps later, if the loss level (an unclipped
    EW mean over ``min(blocks)`` points) then still stands above the level before the rise by half the rise
    (at least two standard errors of that level): a spike that decays over a few dozen steps of a per-step log
    lifts both means for as long, and the run has recovered from it by then (in a sparse log it is one point,
    which the clipping already tames).

    **Critical** (the run is lost): after a warning, the loss level (an unclipped EW mean over
    ``min(blocks)`` points) stays above the slow level before the rise by at least
    ``max(lost_rise * |level|, lost_sigma * sigma)`` for ``persist_steps`` steps and ``persist_obs``
    observations in a row, less any rise that the law of the fit in force at the warning predicts since
    (a fit made later follows the diverged curve, so it cannot be the reference). A spike the run recovers
    from falls back below that bar before the time is up.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(5.0, gt=0)
    blocks: list[int] = Field(default_factory=lambda: [8, 32])
    patience: int = Field(2, ge=1)
    min_rel: float = Field(0.002, ge=0)
    min_step: int = Field(0, ge=0)
    noise_window: int = Field(128, ge=16)
    clip: float = Field(4.0, gt=0)
    lost_rise: float = Field(0.1, ge=0)
    lost_sigma: float = Field(5.0, ge=0)
    persist_steps: int = Field(1000, ge=0)
    persist_obs: int = Field(8, ge=1)
    confirm_steps: int = Field(100, ge=0)


class DriftDetector:
    """Divergence: a loss that rises while the LR (and the law) say it should not; critical once it persists.

    >>> import numpy as np
    >>> from scaleforecast import DriftDetector
    >>> loss = 3.0 + 0.01 * np.random.default_rng(0).standard_normal(3000)
    >>> loss[1500:] += np.linspace(0.0, 1.0, 1500)  # rises at a constant LR
    >>> events = DriftDetector().update(np.arange(1, 3001), loss, lrs=np.full(3000, 1e-3))
    >>> [(event.kind, event.severity) for event in events]
    [('divergence', 'warning'), ('divergence', 'critical')]
    """

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        cfg = self.config
        self.blocks = sorted(int(b) for b in cfg.blocks)
        self.alphas = [(alpha_for(b), alpha_for(3 * b)) for b in self.blocks]
        self.se_unit = [math.sqrt(_diff_var(af, a_s)) for af, a_s in self.alphas]
        self.noise = _Noise(cfg.noise_window, to_sigma=1.0 / math.sqrt(2.0))
        self.n = 0
        self.last_y = math.nan
        self.m: list[list[float]] = []  # per block: [fast, slow] EW of the clipped loss
        self.c: list[list[float]] | None = None  # the same of the step: where each mean is centred
        self.lr: list[list[float]] | None = None  # the same of the LR
        self.raw = math.nan  # unclipped fast level
        self.calm_level = math.nan
        self.streak = 0
        # The critical tier: the level before the rise, and how long the loss has stayed far above it.
        self.anchor: dict[str, float] | None = None
        self.over_run = 0
        self.over_since: int | None = None
        self.lost_reported = False
        self._law_now: LawFn | None = None
        # The law of the fit in force at the warning; not saved (after a resume the rise is judged plainly).
        self._anchor_law: LawFn | None = None
        # A rise waiting to be confirmed: its warning, the step at which it is judged, its size and the level
        # before it.
        self.pending: dict[str, Any] | None = None

    def update(
        self,
        steps: np.ndarray,
        values: np.ndarray,
        law: LawFn | None = None,
        lr_of: LrFn | None = None,
        lrs: np.ndarray | None = None,
    ) -> list[Event]:
        """Run the rule over one flush; ``lrs`` (or ``lr_of(steps)``) are the LRs of the updates."""
        steps = np.asarray(steps, dtype=np.int64).ravel()
        values = np.asarray(values, dtype=float).ravel()
        keep = _finite_mask(steps, values, self.config.min_step)
        if not keep.any():
            return []
        st, y = steps[keep], values[keep]
        lr = None
        if lrs is not None:
            lr = np.asarray(lrs, dtype=float).ravel()[keep]
        events: list[Event] = []
        for sl in chunks(st):
            s = st[sl]
            lr_c = lr[sl] if lr is not None else (None if lr_of is None else lr_of(s))
            if lr_c is not None and (len(lr_c) != len(s) or not np.all(np.isfinite(lr_c))):
                lr_c = None
            base = _law_at(law, s)
            self._law_now = law if base is not None else None
            events += self._chunk(s, y[sl], base, lr_c)
        return events

    def _chunk(
        self, s: np.ndarray, y: np.ndarray, base: np.ndarray | None, lr: np.ndarray | None
    ) -> list[Event]:
        cfg = self.config
        n0 = self.n
        if n0 == 0:
            self.last_y = float(y[0])
            self.m = [[float(y[0])] * 2 for _ in self.blocks]
            self.raw = self.calm_level = float(y[0])
        diffs = np.diff(np.concatenate([[self.last_y], y]))
        if n0 == 0:
            diffs = diffs[1:]
        sigma_before = self.noise.sigma
        self.noise.add(diffs)
        sigma = self.noise.sigma if not math.isfinite(sigma_before) else sigma_before
        level = abs(self.m[-1][1])
        sigma = max(sigma if math.isfinite(sigma) else 0.0, 1e-6 * level + 1e-12)
        self.last_y = float(y[-1])
        self.n += len(y)
        idx = n0 + np.arange(len(y))  # points seen before each point
        centre = self.m[0][0]
        # Clipping keeps single spikes from moving the means; on a smooth curve (noise far below the
        # smallest rise counted) it must still let a real shift through within a few points.
        width = max(cfg.clip * sigma, 4.0 * cfg.min_rel * level)
        yc = np.clip(y, centre - width, centre + width) if n0 >= 16 else y
        raw = ew_path(y, self.alphas[0][0], self.raw)
        self.raw = float(raw[-1])
        if self.c is None:
            self.c = [[float(s[0])] * 2 for _ in self.blocks]
        use_lr = base is None and lr is not None
        if use_lr and self.lr is None:
            self.lr = [[float(lr[0])] * 2 for _ in self.blocks]  # type: ignore[index]
        if not use_lr:
            self.lr = None
        # Every EW path of this chunk in one pass: per block the fast and slow mean of the clipped loss, of the
        # step (where each mean is centred) and, without a law, of the LR.
        nb = len(self.blocks)
        alphas = [a for pair in self.alphas for a in pair]
        rows = [yc] * (2 * nb) + [s.astype(float)] * (2 * nb)
        starts = [v for pair in self.m for v in pair] + [v for pair in self.c for v in pair]
        if use_lr:
            rows += [lr] * (2 * nb)
            starts += [v for pair in self.lr for v in pair]  # type: ignore[union-attr]
        paths = ew_paths(np.vstack(rows), np.asarray(alphas * (len(rows) // (2 * nb))), np.asarray(starts))
        last = paths[:, -1].tolist()
        self.m = [last[2 * k : 2 * k + 2] for k in range(nb)]
        self.c = [last[2 * nb + 2 * k : 2 * nb + 2 * k + 2] for k in range(nb)]
        if use_lr:
            self.lr = [last[4 * nb + 2 * k : 4 * nb + 2 * k + 2] for k in range(nb)]
        # The law's expected change between the centres of the fast and the slow mean, from the one fit in
        # force now: a series of refits that follow a rise must not explain it away.
        law_at_centres = None
        if base is not None and self._law_now is not None:
            centres = np.rint(paths[2 * nb : 4 * nb]).astype(np.int64)
            law_at_centres = _law_at(self._law_now, centres.ravel())
            if law_at_centres is not None:
                law_at_centres = law_at_centres.reshape(centres.shape)
        best = np.full(len(y), -np.inf)
        best_k = np.zeros(len(y), dtype=np.int64)
        rises = np.zeros(len(y))
        slow_long = paths[2 * nb - 1]
        # The level before the current rise: the shortest block's slow mean at the last point where its fast
        # mean was not above it (carried across chunks). The longer means lag too far behind a falling loss.
        calm = (paths[0] - paths[1]) <= 0
        last_calm = np.maximum.accumulate(np.where(calm, np.arange(len(y)), -1))
        calm_level = np.where(last_calm >= 0, paths[1][np.maximum(last_calm, 0)], self.calm_level)
        self.calm_level = float(calm_level[-1])
        for k, L in enumerate(self.blocks):
            mf, ms = paths[2 * k], paths[2 * k + 1]
            rise = mf - ms
            expected: np.ndarray | float = 0.0
            blocked: np.ndarray | bool = False
            if law_at_centres is not None:
                expected = np.maximum(law_at_centres[2 * k] - law_at_centres[2 * k + 1], 0.0)
            elif use_lr:
                lf, ls = paths[4 * nb + 2 * k], paths[4 * nb + 2 * k + 1]
                blocked = lf > ls * 1.001  # the LR rose: a rising loss is no evidence of divergence
            t = (rise - expected) / (sigma * self.se_unit[k])
            ok = (idx + 1 >= 2 * L) & (rise > cfg.min_rel * np.abs(ms)) & ~np.asarray(blocked)
            t = np.where(ok, t, -np.inf)
            better = t > best
            best = np.where(better, t, best)
            best_k = np.where(better, k, best_k)
            rises = np.where(better, rise, rises)
        exceed = (best > cfg.threshold) & (idx + 1 >= 2 * min(self.blocks) + 2)
        streak = run_lengths(exceed, self.streak)
        self.streak = int(streak[-1])
        events: list[Event] = []
        warn_at = np.nonzero(streak == cfg.patience)[0]
        start = 0
        for i in [*warn_at.tolist(), len(y)]:
            events += self._confirm(s[:i], raw[:i])
            lost = self._lost(s[start:i], raw[start:i], sigma)
            if lost and self.pending is not None:  # lost before its warning was due: the rise is confirmed
                events.append(self._confirmed(int(lost[0].step), float(lost[0].data["level"])))
            events += lost
            if i == len(y):
                break
            L = self.blocks[int(best_k[i])]
            lvl = abs(float(slow_long[i]))
            if self.pending is None:
                # the level must stand out of the noise of its own estimate (an EW mean over min(blocks))
                a0 = self.alphas[0][0]
                self.pending = {
                    "due": int(s[i]) + cfg.confirm_steps,
                    "rise": max(float(rises[i]), 4.0 * sigma * math.sqrt(a0 / (2.0 - a0))),
                    "before": float(calm_level[i]),
                    "event": Event(
                        kind="divergence",
                        step=int(s[i]),
                        severity="warning",
                        score=float(best[i]),
                        # the rise is said when it is confirmed, from the unclipped level (_confirmed)
                        message=(
                            f"over about {L} points ({best[i]:.1f} sigma"
                            f"{' beyond the law' if base is not None else ''})"
                        ),
                        data={
                            "block": L,
                            "rise": float(rises[i]),
                            "level": lvl,
                            "statistic": float(best[i]),
                            "since": int(s[i]),
                        },
                    ).model_dump(mode="json"),
                }
            prev = float(calm_level[i])
            self.anchor = {
                "level": prev,
                "step": float(s[i]),
                "law": float(base[i]) if base is not None else math.nan,
                "lr": float(lr[i]) if lr is not None else math.nan,
                "sigma": sigma,
            }
            self._anchor_law = self._law_now if base is not None else None
            self.over_run, self.over_since, self.lost_reported = 0, None, False
            start = i
        return sorted(events, key=lambda e: e.step)

    def _confirm(self, s: np.ndarray, raw: np.ndarray) -> list[Event]:
        """The pending rise judged at its due step, if ``s`` (the chunk's points so far) reaches it: a warning
        when the level still stands above the level before the rise by half the rise, else nothing (the run
        recovered)."""
        p = self.pending
        if p is None or not len(s) or s[-1] < p["due"]:
            return []
        j = int(np.searchsorted(s, p["due"]))
        if raw[j] - p["before"] >= 0.5 * p["rise"]:
            return [self._confirmed(int(s[j]), float(raw[j]))]
        self.pending = None
        return []

    def _confirmed(self, step: int, level: float) -> Event:
        """The pending warning, given at ``step`` where the loss level (unclipped) is ``level``: its rise is
        read from that level (the clipped means that detect a rise tame a thousandfold one to a few %)."""
        p = self.pending
        assert p is not None
        event = Event.model_validate(p["event"])
        up = level - p["before"]
        message = (
            f"loss rising since step {event.data['since']}: level up {up:.4g} "
            f"({100 * up / max(abs(p['before']), 1e-300):.2g}%, {p['before']:.4g} -> {level:.4g}) {event.message}"
        )
        self.pending = None
        return event.model_copy(update={"step": step, "message": message, "data": {**event.data, "rise": up}})

    def _lost(self, s: np.ndarray, raw: np.ndarray, sigma: float) -> list[Event]:
        """The critical tier over points after the last warning: is the loss still far above its old level?"""
        a = self.anchor
        if a is None or len(s) == 0:
            return []
        cfg = self.config
        elev = raw - a["level"]
        # What the law fitted before the rise expects since (a fit made after it follows the diverged curve).
        expected = _law_at(self._anchor_law, s)
        if expected is not None and math.isfinite(a["law"]):
            elev = elev - np.maximum(expected - a["law"], 0.0)
        bar = max(cfg.lost_rise * abs(a["level"]), cfg.lost_sigma * a["sigma"])
        over = elev >= bar
        runs = run_lengths(over, self.over_run)
        self.over_run = int(runs[-1])
        # The step at which each point's run of "over" began (carried from the previous flush).
        pos = np.arange(len(s))
        began = pos - runs + 1
        since = np.where(began >= 0, s[np.clip(began, 0, len(s) - 1)], self.over_since or 0)
        if over[-1]:
            self.over_since = int(since[-1])
        else:
            self.over_since = None
            self.lost_reported = False
        lost = over & (runs >= cfg.persist_obs) & (s - since >= cfg.persist_steps)
        if self.lost_reported or not lost.any():
            if not over[-1]:
                self.lost_reported = False
            return []
        i = int(np.argmax(lost))
        self.lost_reported = True
        rel = elev[i] / max(abs(a["level"]), 1e-300)
        return [
            Event(
                kind="divergence",
                step=int(s[i]),
                severity="critical",
                score=float(elev[i] / max(a["sigma"], 1e-300)),
                message=(
                    f"loss diverged: level {raw[i]:.4g} has stayed at least {bar:.3g} above its level "
                    f"{a['level']:.4g} before the rise (step {int(a['step'])}) since step {int(since[i])}, "
                    f"{int(s[i] - since[i])} steps; now {100 * rel:.0f}% above: the run is lost"
                ),
                data={
                    "level": float(raw[i]),
                    "anchor": a["level"],
                    "anchor_step": int(a["step"]),
                    "since": int(since[i]),
                    "bar": bar,
                },
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "noise": self.noise.state_dict(),
            "n": self.n,
            "last_y": self.last_y,
            "m": self.m,
            "c": self.c,
            "lr": self.lr,
            "raw": self.raw,
            "calm_level": self.calm_level,
            "streak": self.streak,
            "anchor": self.anchor,
            "over_run": self.over_run,
            "over_since": self.over_since,
            "lost_reported": self.lost_reported,
            "pending": self.pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(DriftConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.noise.load_state_dict(state["noise"])
        self.n = int(state["n"])
        self.last_y = float(state["last_y"])
        self.m = [[float(v) for v in pair] for pair in state["m"]]
        self.c = None if state["c"] is None else [[float(v) for v in p] for p in state["c"]]
        self.lr = None if state["lr"] is None else [[float(v) for v in p] for p in state["lr"]]
        self.raw = float(state["raw"])
        self.calm_level = float(state.get("calm_level", math.nan))
        self.streak = int(state["streak"])
        self.anchor = state["anchor"]
        self.over_run = int(state["over_run"])
        self.over_since = state["over_since"]
        self.lost_reported = bool(state["lost_reported"])
        self.pending = state.get("pending")


def _diff_var(af: float, a_s: float) -> float:
    """Variance of ``m_fast - m_slow`` (two EW means of white noise of unit variance)."""
    vf = af / (2.0 - af)
    vs = a_s / (2.0 - a_s)
    cov = af * a_s / (1.0 - (1.0 - af) * (1.0 - a_s))
    return max(vf + vs - 2.0 * cov, 1e-12)


# ----------------------------------------------------------------------------------------- stagnation
class StagnationConfig(BaseModel):
    """Stagnation: over two consecutive blocks of ``window / 2`` points the law predicts a clear improvement
    ``Δ_law`` (more than ``threshold`` standard errors) but the loss improved by less than
    ``min_ratio * Δ_law``, and the shortfall is itself more than ``threshold`` standard errors. Needs a law:
    without one, no progress is expected. The blocks are compared by their medians when each one fills."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(64, ge=8)
    threshold: float = Field(5.0, gt=0)
    min_ratio: float = Field(0.25, ge=0, lt=1)
    min_step: int = Field(0, ge=0)


class StagnationDetector:
    """No progress that the law can explain: the fitted law says the loss should be falling, and it is not.

    >>> import numpy as np
    >>> from scaleforecast import StagnationDetector
    >>> StagnationDetector().update(np.arange(1, 3001), np.full(3000, 3.0))  # no fitted law yet: no verdict
    []
    """

    def __init__(self, config: StagnationConfig | None = None) -> None:
        self.config = config or StagnationConfig()
        self.half = max(self.config.window // 2, 4)
        self.noise = _Noise(128, to_sigma=1.0 / math.sqrt(2.0))
        self.last_y = math.nan
        self.fill = 0
        self.block = np.zeros((2, self.half))  # the filling block: loss, step
        self.prev: tuple[float, np.ndarray] | None = None  # (median loss, steps) of the last full block

    def update(self, steps: np.ndarray, values: np.ndarray, law: LawFn | None = None) -> list[Event]:
        steps = np.asarray(steps, dtype=np.int64).ravel()
        values = np.asarray(values, dtype=float).ravel()
        keep = _finite_mask(steps, values, self.config.min_step)
        if not keep.any():
            return []
        st, y = steps[keep], values[keep]
        diffs = np.diff(np.concatenate([[self.last_y], y]))
        self.noise.add(diffs[np.isfinite(diffs)])
        self.last_y = float(y[-1])
        events: list[Event] = []
        i = 0
        while i < len(y):
            take = min(len(y) - i, self.half - self.fill)
            self.block[0, self.fill : self.fill + take] = y[i : i + take]
            self.block[1, self.fill : self.fill + take] = st[i : i + take]
            self.fill += take
            i += take
            if self.fill == self.half:
                cur = (_block_median(self.block[0]), self.block[1].astype(np.int64))
                ev = self._compare(cur, int(st[i - 1]), law)
                if ev is not None:
                    events.append(ev)
                self.prev, self.fill = cur, 0
        return events

    def _compare(self, cur: tuple[float, np.ndarray], step: int, law: LawFn | None) -> Event | None:
        cfg = self.config
        sigma = self.noise.sigma
        if self.prev is None or not all(math.isfinite(v) for v in (cur[0], self.prev[0], sigma)):
            return None
        # both blocks under the law fitted now: a refit between them is no change of the loss; not a block
        # that reaches into the warm-up, where the law (fitted without it) expects nothing of the loss
        if int(self.prev[1].min()) <= getattr(law, "peak", 0):
            return None
        expected = [_law_at(law, b[1]) for b in (self.prev, cur)]
        if expected[0] is None or expected[1] is None:
            return None
        sigma = max(sigma, 1e-6 * abs(cur[0]) + 1e-12)
        se = 1.25 * sigma * math.sqrt(2.0 / self.half)
        gain_law = _block_median(expected[0]) - _block_median(expected[1])
        gain_obs = self.prev[0] - cur[0]
        if gain_law > cfg.threshold * se and gain_obs < cfg.min_ratio * gain_law:
            short = (gain_law - gain_obs) / se
            if short > cfg.threshold:
                return Event(
                    kind="stagnation",
                    step=step,
                    severity="warning",
                    score=short,
                    message=(
                        f"loss stalled at step {step}: improved {gain_obs:.4g} over the last "
                        f"{2 * self.half} points where the law expects {gain_law:.4g}"
                    ),
                    data={"gain_obs": gain_obs, "gain_law": gain_law, "se": se},
                )
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "noise": self.noise.state_dict(),
            "last_y": self.last_y,
            "block": self.block[:, : self.fill].tolist(),
            "prev": None if self.prev is None else [self.prev[0], self.prev[1].tolist()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(StagnationConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.noise.load_state_dict(state["noise"])
        self.last_y = float(state["last_y"])
        block = np.asarray(state["block"], dtype=float).reshape(2, -1)
        self.fill = block.shape[1]
        self.block[:, : self.fill] = block
        prev = state["prev"]
        # a block saved as (median loss, median law) by an earlier version holds no steps: it is not compared
        self.prev = (
            None
            if prev is None or not isinstance(prev[1], list)
            else (float(prev[0]), np.asarray(prev[1], np.int64))
        )


# ------------------------------------------------------------------------------------------ grad norm
class GradNormConfig(BaseModel):
    """Gradient-norm precursors, on ``log(grad_norm)``: a spike (robust z against an EW level and scale over
    about ``window`` points above ``spike_threshold``, and at least ``min_factor`` times the typical norm: norms
    that barely move, as clipped ones do, make any wiggle a large z) or sustained growth (the mean of a block of
    ``block`` points above ``growth`` times the lowest block mean seen so far)."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(64, ge=8)
    spike_threshold: float = Field(8.0, gt=0)
    min_factor: float = Field(2.0, ge=1)
    block: int = Field(32, ge=4)
    growth: float = Field(4.0, gt=1)
    min_step: int = Field(0, ge=0)


class GradNormDetector:
    """Instability precursors from the gradient norm (HF logs ``grad_norm``; Lightning can read it before the
    optimizer step): a sudden jump, or a norm that keeps growing.

    >>> import numpy as np
    >>> from scaleforecast import GradNormDetector
    >>> grad_norm = np.ones(200)
    >>> grad_norm[150] = 50.0
    >>> [(event.kind, event.step) for event in GradNormDetector().update(np.arange(1, 201), grad_norm)]
    [('grad_norm', 151)]
    """

    def __init__(self, config: GradNormConfig | None = None) -> None:
        self.config = config or GradNormConfig()
        self.alpha = alpha_for(self.config.window)
        self.level = math.nan
        self.scale = _Noise(self.config.window)
        self.n = 0
        self.block: list[float] = [0.0, 0.0]  # count, sum of log norms
        self.min_block: float | None = None

    def update(self, steps: np.ndarray, grad_norm: np.ndarray) -> list[Event]:
        cfg = self.config
        steps = np.asarray(steps, dtype=np.int64).ravel()
        g = np.asarray(grad_norm, dtype=float).ravel()
        keep = np.isfinite(g) & (g > 0) & (steps >= cfg.min_step)
        if not keep.any():
            return []
        st, lg = steps[keep], np.log(g[keep])
        events: list[Event] = []
        for sl in chunks(st):
            events += self._chunk(st[sl], lg[sl])
        return events

    def _chunk(self, s: np.ndarray, lg: np.ndarray) -> list[Event]:
        cfg = self.config
        events: list[Event] = []
        accept = np.ones(len(s), dtype=bool)
        if self.n >= min(cfg.window, 16) and math.isfinite(self.level):
            scale = max(self.scale.sigma, 1e-3)
            z = (lg - self.level) / scale
            spikes = (z > cfg.spike_threshold) & (lg - self.level > math.log(cfg.min_factor))
            accept = ~spikes
            for j in np.nonzero(spikes)[0]:
                g = math.exp(lg[j])
                typical = math.exp(self.level)
                events.append(
                    Event(
                        kind="grad_norm",
                        step=int(s[j]),
                        severity="warning",
                        score=float(z[j]),
                        message=f"gradient-norm spike at step {int(s[j])}: {g:.4g} vs typical {typical:.4g}",
                        data={"grad_norm": g, "typical": typical, "kind": "spike"},
                    )
                )
        v = lg[accept]
        if v.size == 0:
            return events
        if not math.isfinite(self.level):
            self.level = float(v[0])
        self.scale.add(v - self.level)
        alpha = max(self.alpha, 1.0 / (self.n + v.size)) if self.n * self.alpha < 1.0 else self.alpha
        self.level = ew_last(v, alpha, self.level)
        self.n += v.size
        sv = s[accept]
        i = 0
        while i < v.size:
            take = min(v.size - i, cfg.block - int(self.block[0]))
            self.block[0] += take
            self.block[1] += float(v[i : i + take].sum())
            i += take
            if self.block[0] >= cfg.block:
                cur = self.block[1] / cfg.block
                self.block = [0.0, 0.0]
                if self.min_block is None or cur < self.min_block:
                    self.min_block = cur
                elif math.exp(cur - self.min_block) > cfg.growth:
                    ratio = math.exp(cur - self.min_block)
                    step = int(sv[i - 1])
                    events.append(
                        Event(
                            kind="grad_norm",
                            step=step,
                            severity="warning",
                            score=ratio,
                            message=(
                                f"gradient norm growing at step {step}: typical {math.exp(cur):.4g}, "
                                f"{ratio:.1f}x its lowest level"
                            ),
                            data={
                                "typical": math.exp(cur),
                                "lowest": math.exp(self.min_block),
                                "kind": "growth",
                            },
                        )
                    )
        return events

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "level": self.level,
            "scale": self.scale.state_dict(),
            "n": self.n,
            "block": list(self.block),
            "min_block": self.min_block,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(GradNormConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.level = float(state["level"])
        self.scale.load_state_dict(state["scale"])
        self.n = int(state["n"])
        self.block = [float(v) for v in state["block"]]
        self.min_block = None if state["min_block"] is None else float(state["min_block"])


# ------------------------------------------------------------------------------------- health monitor
class HealthConfig(BaseModel):
    """The detectors and the debouncing of :class:`HealthMonitor`.

    >>> from scaleforecast import HealthConfig, HealthMonitor
    >>> monitor = HealthMonitor(HealthConfig(debounce_steps=50, act_on=["nonfinite"]))
    >>> monitor.config.debounce_steps
    50

    Which events are critical is the detectors' rule (see the module docstring: only persistent non-finite
    losses and persistent divergence); ``act_on`` can only narrow it (the other kinds are reported as
    warnings). What a critical event does is the run monitor's ``action``
    (:class:`scaleforecast.monitor.StopConfig`). An event of a kind
    already reported less than ``debounce_steps`` steps earlier, at the same or a lower severity, is
    counted but not reported again; a kind that keeps coming back as soon as that time is up (a condition that
    lasts: a loss that stopped improving, a storm of spikes) doubles its time each time, up to
    ``max_debounce_steps``, and falls back to ``debounce_steps`` once it stays away that long.
    ``skip_before``/``skip_after``: the steps around a spike written to ``record_path`` (a JSON list of optimizer
    steps to skip on a replay, like Lightning's ``SpikeDetection``).
    """

    model_config = ConfigDict(extra="forbid")

    act_on: list[str] = Field(default_factory=lambda: ["nonfinite", "spike", "divergence"])
    debounce_steps: int = Field(200, ge=0)
    max_debounce_steps: int = Field(100_000, ge=0)
    record_path: str | None = None
    skip_before: int = Field(1, ge=0)
    skip_after: int = Field(0, ge=0)
    use_loss_max: bool = Field(True, description="score spikes on the max over ranks when it is given")
    nonfinite: NonFiniteConfig = Field(default_factory=NonFiniteConfig)
    spike: SpikeConfig = Field(default_factory=SpikeConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    stagnation: StagnationConfig | None = Field(default_factory=StagnationConfig)
    grad_norm: GradNormConfig = Field(default_factory=GradNormConfig)


class HealthMonitor:
    """All detectors behind one call per flush, with debouncing and the spike record.

    >>> import numpy as np
    >>> from scaleforecast import HealthMonitor
    >>> loss = np.full(100, 3.0)
    >>> loss[-1] = np.nan
    >>> [event.kind for event in HealthMonitor().update(np.arange(1, 101), loss)]
    ['nonfinite']

    ``update(steps, loss, loss_max=None, grad_norm=None, view=None)`` takes host-side arrays (``loss``
    = mean over ranks, ``loss_max`` = max over ranks: a spike on any rank counts) and returns the events to
    report; the expected loss comes from ``view.predict`` (a :class:`scaleforecast.monitor.FitView`) once it
    has a usable fit. Never raises from ``update``.
    """

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self.nonfinite = NonFiniteDetector(self.config.nonfinite)
        self.spike = SpikeDetector(self.config.spike)
        self.drift = DriftDetector(self.config.drift)
        self.stagnation = StagnationDetector(self.config.stagnation) if self.config.stagnation else None
        self.grad = GradNormDetector(self.config.grad_norm)
        self.last_reported: dict[str, tuple[int, int]] = {}
        self.quiet_steps: dict[str, int] = {}  # per kind: the debounce time now (see HealthConfig)
        self.suppressed: dict[str, int] = {}
        self.skip_steps: set[int] = set()
        self.counts: dict[str, int] = {}
        self._record_failed = False
        self._law_cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ running
    def update(
        self,
        steps: np.ndarray | list[int],
        loss: np.ndarray | list[float],
        loss_max: np.ndarray | list[float] | None = None,
        grad_norm: np.ndarray | list[float] | None = None,
        view: Any = None,
        law: LawFn | None = None,
        lr_of: LrFn | None = None,
        lrs: np.ndarray | list[float] | None = None,
    ) -> list[Event]:
        """Run every detector on one flush and return the (debounced) events to report.

        ``law`` (``steps -> expected loss``) defaults to the latest usable fit of ``view`` (a
        :class:`scaleforecast.monitor.FitView`); the LR of each update is ``lrs`` when given, else
        ``lr_of(steps)``, else the planned schedule seen through ``view``."""
        st = np.asarray(steps, dtype=np.int64).ravel()
        y = np.asarray(loss, dtype=float).ravel()
        if st.shape != y.shape:
            raise ValueError(f"steps and loss differ in length: {len(st)} != {len(y)}")
        ymax = None if loss_max is None else np.asarray(loss_max, dtype=float).ravel()
        gn = None if grad_norm is None else np.asarray(grad_norm, dtype=float).ravel()
        lr = None if lrs is None else np.asarray(lrs, dtype=float).ravel()
        for name, arr in (("loss_max", ymax), ("grad_norm", gn), ("lrs", lr)):
            if arr is not None and arr.shape != st.shape:
                raise ValueError(f"{name} has {arr.size} values for {len(st)} steps")
        if len(st) == 0:
            return []
        if law is None and view is not None:
            law = forecaster_law(view, self._law_cache)
        if lr is None and lr_of is None and view is not None:
            lr_of = forecaster_lr(view)
        raw: list[Event] = []
        raw += self.nonfinite.update(st, y, ymax, gn)
        scored = ymax if (ymax is not None and self.config.use_loss_max) else y
        raw += self.spike.update(st, scored, law)
        raw += self.drift.update(st, y, law, lr_of, lr)
        if self.stagnation is not None:
            raw += self.stagnation.update(st, y, law)
        if gn is not None:
            raw += self.grad.update(st, gn)
        return self._report(raw)

    def check(self, batch: Any, view: Any) -> list[Event]:
        """The :class:`~scaleforecast.monitor.RunMonitor` hook: :meth:`update` on a ``FlushBatch``.

        Kinds outside ``act_on`` are reported as warnings, so they never stop the run; the monitor's
        ``action`` decides what the critical ones do.
        """
        return self.update(
            batch.steps,
            batch.loss,
            batch.loss_max,
            batch.grad_norm,
            view=view,
            lrs=getattr(batch, "lrs", None),
        )

    def _report(self, raw: list[Event]) -> list[Event]:
        out: list[Event] = []
        for ev in sorted(raw, key=lambda e: e.step):
            self.counts[ev.kind] = self.counts.get(ev.kind, 0) + 1
            if ev.kind == "spike":
                self._record_spike(ev.step)
            if ev.severity == "critical" and ev.kind not in self.config.act_on:
                ev = ev.model_copy(update={"severity": "warning"})
            last = self.last_reported.get(ev.kind)
            rank = SEVERITY_RANK[ev.severity]
            quiet = self.quiet_steps.get(ev.kind, self.config.debounce_steps)
            if last is not None and ev.step - last[0] < quiet and rank <= last[1]:
                self.suppressed[ev.kind] = self.suppressed.get(ev.kind, 0) + 1
                continue
            n_sup = self.suppressed.pop(ev.kind, 0)
            if n_sup:
                ev = ev.model_copy(update={"data": {**ev.data, "suppressed_before": n_sup}})
            back_soon = last is not None and n_sup > 0 and ev.step - last[0] < 2 * quiet and rank <= last[1]
            self.quiet_steps[ev.kind] = (
                min(2 * quiet, max(self.config.max_debounce_steps, self.config.debounce_steps))
                if back_soon
                else self.config.debounce_steps
            )
            self.last_reported[ev.kind] = (ev.step, rank)
            out.append(ev)
        return out

    # ------------------------------------------------------------- spike record
    def _record_spike(self, step: int) -> None:
        lo, hi = step - self.config.skip_before, step + self.config.skip_after
        self.skip_steps.update(s for s in range(max(lo, 1), hi + 1))
        path = self.config.record_path
        if path is None or self._record_failed:
            return
        try:
            target = Path(path)
            if target.suffix != ".json":
                target = target / "skip_steps.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(sorted(self.skip_steps), indent=1))
            os.replace(tmp, target)
        except OSError as err:
            self._record_failed = True
            log.warning("cannot write the spike record to %s (%r); recording is disabled", path, err)

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-safe state of every detector and of the debouncing, for checkpoints."""
        return {
            "version": _STATE_VERSION,
            "config": self.config.model_dump(mode="json"),
            "nonfinite": self.nonfinite.state_dict(),
            "spike": self.spike.state_dict(),
            "drift": self.drift.state_dict(),
            "stagnation": None if self.stagnation is None else self.stagnation.state_dict(),
            "grad_norm": self.grad.state_dict(),
            "last_reported": {k: list(v) for k, v in self.last_reported.items()},
            "suppressed": dict(self.suppressed),
            "quiet_steps": dict(self.quiet_steps),
            "skip_steps": sorted(self.skip_steps),
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved. The state of another version costs the detectors' running
        statistics (they start afresh, with one warning), never the run."""
        if state.get("version") != _STATE_VERSION:
            log.warning(
                "health-monitor state of version %r (this version reads %d): the detectors start afresh",
                state.get("version"),
                _STATE_VERSION,
            )
            return
        self.__init__(HealthConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.nonfinite.load_state_dict(state["nonfinite"])
        self.spike.load_state_dict(state["spike"])
        self.drift.load_state_dict(state["drift"])
        if self.stagnation is not None and state.get("stagnation") is not None:
            self.stagnation.load_state_dict(state["stagnation"])
        self.grad.load_state_dict(state["grad_norm"])
        self.last_reported = {k: (int(v[0]), int(v[1])) for k, v in state["last_reported"].items()}
        self.suppressed = {k: int(v) for k, v in state["suppressed"].items()}
        self.quiet_steps = {k: int(v) for k, v in state.get("quiet_steps", {}).items()}
        self.skip_steps = {int(s) for s in state["skip_steps"]}
        self.counts = {k: int(v) for k, v in state["counts"].items()}


_LAW_AHEAD = 2048


class FitLaw:
    """``steps -> expected loss`` of one fit under one schedule, evaluated lazily in blocks of steps.

    The detectors ask for the law at each new chunk (moving forward) and, after a refit, once at the points
    they hold: a chunk miss evaluates the block of :data:`_LAW_AHEAD` steps from its first step, which
    covers the next flushes; a request wider than that (the points held) is evaluated as asked. A fit thus
    costs a couple of evaluations of the law, never one over the whole planned schedule. Steps outside the
    schedule, or a law that cannot be evaluated, give NaN.
    """

    def __init__(self, mean: Callable[[np.ndarray], np.ndarray], total: int, peak: int = 0) -> None:
        self._mean = mean
        self.total = int(total)
        # the last warm-up step (the LR's peak): the fit leaves the steps up to it out, so the law's values
        # there are no expectation of the loss
        self.peak = int(peak)
        self._lo = 1
        self._vals = np.zeros(0)

    def _eval(self, steps: np.ndarray) -> np.ndarray:
        out = np.full(len(steps), np.nan)
        ok = (steps >= 1) & (steps <= self.total)
        if ok.any():
            # A law that cannot predict is no law: the detectors fall back to the local trend.
            with contextlib.suppress(Exception):
                out[ok] = np.asarray(self._mean(steps[ok]), dtype=float).ravel()
        return out

    def __call__(self, steps: np.ndarray) -> np.ndarray:
        st = np.asarray(steps, dtype=np.int64).ravel()
        if st.size == 0:
            return np.zeros(0)
        lo, hi = int(st.min()), int(st.max())
        if lo >= self._lo and hi < self._lo + len(self._vals):
            return self._vals[st - self._lo]
        if hi - lo >= _LAW_AHEAD:
            return self._eval(st)
        self._lo = lo
        self._vals = self._eval(np.arange(lo, min(lo + _LAW_AHEAD, self.total + 1), dtype=np.int64))
        if hi >= self._lo + len(self._vals):
            return self._eval(st)
        return self._vals[st - self._lo]


def forecaster_law(view: Any, cache: dict[str, Any] | None = None) -> LawFn | None:
    """``steps -> expected loss`` from the latest usable fit seen through ``view`` (a
    :class:`scaleforecast.monitor.FitView`, or anything with ``latest``, ``schedule`` and ``predict``), or
    ``None`` before one (or when the fit is not usable). The same :class:`FitLaw` object is returned (through
    ``cache``, a dict the caller owns) for as long as the fit and the schedule stay the same, so the detectors
    can tell a new fit by identity. Only the law's mean is evaluated (no predictive spread)."""
    latest = getattr(view, "latest", None)
    if latest is None or latest.params is None or not latest.ok:
        return None
    lrs = getattr(view, "schedule", None)
    if lrs is None:
        return None
    cache = {} if cache is None else cache
    if cache.get("fit") is not latest or cache.get("lrs") is not lrs:
        peak = int(np.argmax(lrs)) + 1
        cache.update(fit=latest, lrs=lrs, law=FitLaw(_law_mean(view, latest, lrs), len(lrs), peak))
    return cache["law"]


def _law_mean(view: Any, fit: Any, lrs: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The fitted law's mean at steps: straight from the law when the fit names one (no predictive spread
    to compute), else the view's point prediction."""
    from scaleforecast.laws import LAWS

    law = LAWS.get(getattr(fit, "law", None))  # type: ignore[arg-type]
    if law is None:
        return view.predict
    return functools.partial(law.predict, fit.params, lrs)  # not a lambda: a session must stay picklable


def forecaster_lr(view: Any) -> LrFn:
    """``steps -> LR of those updates`` from the planned schedule seen through ``view`` (``None`` when unknown)."""

    def lr_of(steps: np.ndarray) -> np.ndarray | None:
        lrs = getattr(view, "schedule", None)
        if lrs is None or len(steps) == 0 or int(np.max(steps)) > len(lrs) or int(np.min(steps)) < 1:
            return None
        return np.asarray(lrs)[np.asarray(steps, dtype=np.int64) - 1]

    return lr_of
