"""Run-health detectors: non-finite values, loss spikes, divergence, stagnation and gradient-norm growth.

Every detector is fed host-side arrays at each flush (no per-step collective): the optimizer ``steps``
(updates completed, strictly increasing), the loss (mean over ranks; the spike rule scores the max over
ranks when given, so a spike on any rank counts) and, where available, the law's expected loss at any step
(``law(steps)``, from the online forecaster's latest fit) and the LR of each update.

The spike rule scores robust residuals. Let ``b(s)`` be the law's prediction. Over the last ``window``
accepted observations the detector fits ``y - b(s) ≈ c0 + c1 * log(s)`` by least squares (the law supplies
the curvature, the local line absorbs the law's local misfit) and, separately, ``y ≈ c0' + c1' * log(s)``
(a local trend alone). The noise scale is ``1.4826 * MAD`` of past one-step prediction errors, and a new
point scores ``z = min(z_law, z_local)`` with ``z = (y - prediction) / noise``: it must stand out against
both (before the first fit, against the local trend only). Points flagged as anomalous never enter the
window, so one spike cannot hide the next. :class:`HealthMonitor` bundles the detectors with debouncing
and the spike record; it plugs into :class:`scaleforecast.monitor.RunMonitor` as a detector
(``detectors=[HealthMonitor()]``), and the monitor's ``action`` decides what its critical events do.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scaleforecast.events import SEVERITY_RANK, Event

log = logging.getLogger("scaleforecast.health")

_MAD_TO_SIGMA = 1.4826


def robust_scale(residuals: np.ndarray) -> float:
    """``1.4826 * median(|r - median(r)|)``: the standard deviation of normal noise, robust to outliers."""
    r = np.asarray(residuals, dtype=float)
    if r.size == 0:
        return math.nan
    return float(_MAD_TO_SIGMA * np.median(np.abs(r - np.median(r))))


def _local_fit(x: np.ndarray, r: np.ndarray, degree: int) -> np.ndarray:
    """Least-squares polynomial coefficients (highest power first) of ``r`` in ``x``."""
    if degree == 1 or (degree > 1 and len(x) < 4):
        xm = float(x.mean())
        dx = x - xm
        sxx = float(dx @ dx)
        if sxx <= 1e-18:
            return np.array([float(r.mean())])
        c1 = float(dx @ (r - r.mean())) / sxx
        return np.array([c1, float(r.mean()) - c1 * xm])
    if degree <= 0:
        return np.array([float(np.mean(r))])
    return np.polyfit(x, r, degree)


class LocalModel:
    """A fitted local polynomial in ``log s - x0`` and the noise scale of one observation around it."""

    def __init__(self, coef: np.ndarray, x0: float, sigma: float, x: np.ndarray) -> None:
        self.coef, self.x0, self.sigma = coef, x0, sigma
        # Leverage of a new point: the fit's own prediction error adds to the noise off the window's centre.
        self._n = len(x)
        self._xm = float(x.mean()) if len(x) else 0.0
        self._sxx = float(((x - self._xm) ** 2).sum())
        self._inv: np.ndarray | None = None
        if len(coef) > 2:
            v = np.vander(x, len(coef))
            self._inv = np.linalg.pinv(v.T @ v)

    def predict(self, log_step: float) -> tuple[float, float]:
        """(trend, scale) at ``log s``: scale = sigma * sqrt(1 + leverage)."""
        u = log_step - self.x0
        if self._inv is not None:
            v = np.vander(np.array([u]), len(self.coef))[0]
            h = float(v @ self._inv @ v)
        elif len(self.coef) == 2 and self._sxx > 0:
            h = 1.0 / self._n + (u - self._xm) ** 2 / self._sxx
        else:
            h = 1.0 / max(self._n, 1)
        return float(np.polyval(self.coef, u)), self.sigma * math.sqrt(1.0 + max(h, 0.0))


class ResidualWindow:
    """The last ``size`` accepted observations ``(step, loss)`` and the local residual model over them.

    :meth:`model` fits residuals ``y - b(s)`` against ``log s``; the caller passes the law's prediction ``b``
    at the window's steps (zeros for the local trend alone). JSON-safe via ``state_dict``.
    """

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.steps: deque[int] = deque(maxlen=self.size)
        self.values: deque[float] = deque(maxlen=self.size)

    def __len__(self) -> int:
        return len(self.steps)

    def push(self, step: int, value: float) -> None:
        self.steps.append(int(step))
        self.values.append(float(value))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.steps, dtype=np.int64), np.asarray(self.values, dtype=float)

    def model(self, base: np.ndarray, rel_floor: float, degree: int) -> LocalModel:
        """The local polynomial (in ``log s``) through ``y - base`` over the window, and its noise scale."""
        steps, y = self.arrays()
        x = np.log(steps.astype(float))
        x0 = float(x[-1])
        coef = _local_fit(x - x0, y - base, degree)
        res = y - base - np.polyval(coef, x - x0)
        sigma = robust_scale(res)
        # Fit residuals are narrower than the noise by the parameters used up.
        sigma *= math.sqrt(len(res) / max(len(res) - len(coef), 1))
        floor = rel_floor * abs(float(np.median(y))) + 1e-12
        return LocalModel(coef=coef, x0=x0, sigma=max(sigma, floor), x=x - x0)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "steps": list(self.steps), "values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.size = int(state["size"])
        self.steps = deque((int(s) for s in state["steps"]), maxlen=self.size)
        self.values = deque((float(v) for v in state["values"]), maxlen=self.size)


LawFn = Callable[[np.ndarray], np.ndarray]


def _law_at(law: LawFn | None, steps: np.ndarray) -> np.ndarray | None:
    """The law's expected loss at ``steps``, or ``None`` when there is no law or it is not finite there."""
    if law is None or len(steps) == 0:
        return None
    e = np.asarray(law(steps), dtype=float).ravel()
    if e.shape != (len(steps),) or not np.all(np.isfinite(e)):
        return None
    return e


# --------------------------------------------------------------------------------------------- non-finite
class NonFiniteDetector:
    """A NaN/Inf loss (mean or max over ranks) or gradient norm: one critical ``nonfinite`` event per flush."""

    def update(
        self,
        steps: np.ndarray,
        loss: np.ndarray,
        loss_max: np.ndarray | None = None,
        grad_norm: np.ndarray | None = None,
    ) -> list[Event]:
        bad_loss = ~np.isfinite(loss)
        if loss_max is not None:
            bad_loss |= ~np.isfinite(loss_max)
        bad_grad = np.zeros_like(bad_loss) if grad_norm is None else ~np.isfinite(grad_norm)
        bad = bad_loss | bad_grad
        if not bad.any():
            return []
        first = int(np.argmax(bad))
        what = "loss" if bad_loss[first] else "gradient norm"
        value = loss[first] if bad_loss[first] else grad_norm[first]  # type: ignore[index]
        return [
            Event(
                kind="nonfinite",
                step=int(steps[first]),
                severity="critical",
                score=float(value),
                message=f"non-finite {what} ({value}) at step {int(steps[first])}"
                + (f"; {int(bad.sum())} non-finite value(s) in this flush" if bad.sum() > 1 else ""),
                data={"what": what, "n_bad": int(bad.sum()), "steps": steps[bad][:16]},
            )
        ]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


# -------------------------------------------------------------------------------------------------- spike
class SpikeConfig(BaseModel):
    """Robust residual spike rule: ``z > threshold`` once ``min_points`` observations are in the window.

    ``max_run`` consecutive flagged points mean the level itself moved (a divergence, a data switch): the
    window then takes them in so the detector re-anchors instead of flagging every later step.
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(4.0, gt=0)
    window: int = Field(64, ge=8)
    min_points: int = Field(24, ge=4)
    min_step: int = Field(0, ge=0, description="ignore steps before this one (e.g. the warm-up)")
    max_run: int = Field(4, ge=1)
    rel_floor: float = Field(2e-5, ge=0)
    chunk: int = Field(4, ge=1, description="refit the local model at least every this many points")
    noise_window: int = Field(256, ge=16, description="one-step prediction errors kept for the noise scale")
    degree: int = Field(1, ge=0, le=3, description="degree of the local polynomial in log(step)")


class SpikeDetector:
    """Loss spikes as robust residual outliers against the law (or a local trend before the first fit).

    ``update`` scores every finite point of the flush and returns one ``spike`` event per flagged point
    (the monitor debounces). ``law(steps)`` returns the law's expected loss at any steps (NaN before a
    usable fit); the event's ``score`` is the robust z-score and ``data`` has the observed and expected loss
    and the noise scale.
    """

    def __init__(self, config: SpikeConfig | None = None) -> None:
        self.config = config or SpikeConfig()
        self.window = ResidualWindow(self.config.window)
        self.run = 0
        self.errors: deque[float] = deque(maxlen=self.config.noise_window)
        self.errors_law: deque[float] = deque(maxlen=self.config.noise_window)

    def score(
        self, steps: np.ndarray, values: np.ndarray, law: LawFn | None = None
    ) -> tuple[np.ndarray, list[Event]]:
        """Robust z-scores of the points (NaN where not scored) and the events they raise.

        With a law, a point must stand out both against the law (plus its local correction) and against
        the local trend alone: ``z = min(z_law, z_local)``. The law removes the local trend's false alarms
        where the LR schedule bends the curve (a step drop, a cooldown's start); the local trend removes the
        law's where the fit is off (a cooldown that the prior for ``C`` misjudged). A real spike clears both.
        """
        cfg = self.config
        steps = np.asarray(steps, dtype=np.int64).ravel()
        values = np.asarray(values, dtype=float).ravel()
        base = _law_at(law, steps)
        z_all = np.full(len(steps), np.nan)
        events: list[Event] = []
        models: dict[str, tuple[LocalModel, float | None]] = {}
        since_fit = 0
        for i in range(len(steps)):
            s, y = int(steps[i]), float(values[i])
            if not math.isfinite(y) or s < cfg.min_step:
                continue
            if len(self.window) < cfg.min_points:
                self.window.push(s, y)
                continue
            if not models or since_fit >= cfg.chunk:
                models = self._models(law if base is not None else None)
                since_fit = 0
            since_fit += 1
            scored: dict[str, tuple[float, float, float]] = {}
            for mode, (model, noise) in models.items():
                trend, sigma = model.predict(math.log(s))
                sigma = noise if noise is not None else sigma
                pred = trend + (base[i] if mode == "law" else 0.0)
                scored[mode] = ((y - pred) / sigma, pred, sigma)
            mode = min(scored, key=lambda m: scored[m][0])
            z, pred, sigma = scored[mode]
            z_all[i] = z
            if z > cfg.threshold:
                self.run += 1
                if self.run <= cfg.max_run:
                    shown = scored.get("law", scored[mode])
                    events.append(
                        Event(
                            kind="spike",
                            step=s,
                            severity="critical",
                            score=z,
                            message=(
                                f"loss spike at step {s}: {y:.4g} vs expected {shown[1]:.4g} "
                                f"({z:.1f} sigma, sigma={shown[2]:.3g}, "
                                f"{'law and local trend' if 'law' in scored else 'local trend'})"
                            ),
                            data={"loss": y, "expected": shown[1], "sigma": shown[2], "law": "law" in scored},
                        )
                    )
                    continue
            self.run = 0
            self.window.push(s, y)
            self.errors.append(y - scored["local"][1])
            if "law" in scored:
                self.errors_law.append(y - scored["law"][1])
        return z_all, events

    def _models(self, law: LawFn | None) -> dict[str, tuple[LocalModel, float | None]]:
        """The local-trend model (always) and the law model (when the law is usable on the window)."""
        wsteps, _ = self.window.arrays()
        local = self.window.model(np.zeros(len(wsteps)), self.config.rel_floor, self.config.degree)
        out = {"local": (local, self._noise(self.errors, local))}
        if law is not None:
            wbase = _law_at(law, wsteps)
            if wbase is not None:
                model = self.window.model(wbase, self.config.rel_floor, self.config.degree)
                out["law"] = (model, self._noise(self.errors_law, model))
        return out

    @staticmethod
    def _noise(errors: deque[float], model: LocalModel) -> float | None:
        """The spread of past one-step prediction errors: a steadier noise scale than the window's own
        residuals (a 64-point MAD is off by 15% now and then, which a 4.5-sigma rule cannot afford)."""
        if len(errors) < 64:
            return None
        return max(robust_scale(np.asarray(errors)), model.sigma * 0.5)

    def update(self, steps: np.ndarray, values: np.ndarray, law: LawFn | None = None) -> list[Event]:
        """Score one flush and return its spike events."""
        return self.score(steps, values, law)[1]

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "window": self.window.state_dict(),
            "run": self.run,
            "errors": list(self.errors),
            "errors_law": list(self.errors_law),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(SpikeConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.window.load_state_dict(state["window"])
        self.run = int(state.get("run", 0))
        self.errors.extend(float(e) for e in state.get("errors", []))
        self.errors_law.extend(float(e) for e in state.get("errors_law", []))


# ----------------------------------------------------------------------------------------- divergence
class DriftConfig(BaseModel):
    """Divergence: the loss level rises (beyond what the law expects) over consecutive blocks.

    For each block length ``L`` in ``blocks`` the statistic is
    ``t = (Δ_obs - Δ_law) / (1.25 * sigma * sqrt(2 / L))`` with ``Δ_obs`` the change of the median loss
    between the last two blocks of ``L`` points, ``Δ_law`` the law's change over the same steps (0 without a
    law) and ``sigma`` the noise of one point from first differences. An alarm needs ``t > threshold`` on
    ``patience`` consecutive points and a rise of at least ``min_rel`` of the loss level; without a law it
    also needs the LR not to rise between the blocks (a rising LR in warm-up may raise the loss).
    """

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(5.0, gt=0)
    blocks: list[int] = Field(default_factory=lambda: [8, 32])
    patience: int = Field(2, ge=1)
    min_rel: float = Field(0.002, ge=0)
    min_step: int = Field(0, ge=0)
    noise_window: int = Field(128, ge=16)


class DriftDetector:
    """Divergence or drift: a loss that rises block over block while the LR (and the law) say it should not."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        size = max(2 * max(self.config.blocks), self.config.noise_window)
        self.steps: deque[int] = deque(maxlen=size)
        self.values: deque[float] = deque(maxlen=size)
        self.streak = 0

    def update(
        self,
        steps: np.ndarray,
        values: np.ndarray,
        law: LawFn | None = None,
        lr_of: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ) -> list[Event]:
        cfg = self.config
        events: list[Event] = []
        steps = np.asarray(steps, dtype=np.int64).ravel()
        values = np.asarray(values, dtype=float).ravel()
        for s, y in zip(steps.tolist(), values.tolist(), strict=True):
            if not math.isfinite(y) or s < cfg.min_step:
                continue
            self.steps.append(int(s))
            self.values.append(float(y))
            best = self._best_statistic(law, lr_of)
            if best is None or best[0] <= cfg.threshold:
                self.streak = 0
                continue
            self.streak += 1
            if self.streak == cfg.patience:
                t, L, rise, level = best
                events.append(
                    Event(
                        kind="divergence",
                        step=int(s),
                        severity="critical",
                        score=t,
                        message=(
                            f"loss rising at step {s}: median up {rise:.4g} ({100 * rise / level:.2g}%) over the "
                            f"last {L} points ({t:.1f} sigma{' beyond the law' if law is not None else ''})"
                        ),
                        data={"block": L, "rise": rise, "level": level, "statistic": t},
                    )
                )
        return events

    def _best_statistic(
        self, law: LawFn | None, lr_of: Callable[[np.ndarray], np.ndarray | None] | None
    ) -> tuple[float, int, float, float] | None:
        cfg = self.config
        y = np.asarray(self.values, dtype=float)
        st = np.asarray(self.steps, dtype=np.int64)
        if len(y) < 2 * min(cfg.blocks) + 2:
            return None
        noise_y = y[-cfg.noise_window :]
        sigma = robust_scale(np.diff(noise_y)) / math.sqrt(2.0)
        level = abs(float(np.median(noise_y)))
        sigma = max(sigma, 1e-6 * level + 1e-12)
        best: tuple[float, int, float, float] | None = None
        for L in cfg.blocks:
            if len(y) < 2 * L:
                continue
            prev, last = y[-2 * L : -L], y[-L:]
            rise = float(np.median(last) - np.median(prev))
            if rise <= cfg.min_rel * level:
                continue
            pst, lst = st[-2 * L : -L], st[-L:]
            expected_rise = 0.0
            base = _law_at(law, st[-2 * L :])
            if base is not None:
                expected_rise = float(np.median(base[L:]) - np.median(base[:L]))
            elif lr_of is not None:
                lr_prev, lr_last = lr_of(pst), lr_of(lst)
                if (
                    lr_prev is not None
                    and lr_last is not None
                    and np.mean(lr_last) > np.mean(lr_prev) * 1.001
                ):
                    continue  # the LR rose: a rising loss is no evidence of divergence
            t = (rise - max(expected_rise, 0.0)) / (1.25 * sigma * math.sqrt(2.0 / L))
            if best is None or t > best[0]:
                best = (t, L, rise, level)
        return best

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(),
            "steps": list(self.steps),
            "values": list(self.values),
            "streak": self.streak,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(DriftConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.steps.extend(int(s) for s in state["steps"])
        self.values.extend(float(v) for v in state["values"])
        self.streak = int(state.get("streak", 0))


# ----------------------------------------------------------------------------------------- stagnation
class StagnationConfig(BaseModel):
    """Stagnation: over the last ``window`` points the law predicts a clear improvement ``Δ_law`` (more than
    ``threshold`` standard errors) but the loss improved by less than ``min_ratio * Δ_law``, and the shortfall
    is itself more than ``threshold`` standard errors. Needs a law: without one, no progress is expected."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(64, ge=8)
    threshold: float = Field(5.0, gt=0)
    min_ratio: float = Field(0.25, ge=0, lt=1)
    min_step: int = Field(0, ge=0)


class StagnationDetector:
    """No progress that the law can explain: the fitted law says the loss should be falling, and it is not."""

    def __init__(self, config: StagnationConfig | None = None) -> None:
        self.config = config or StagnationConfig()
        self.steps: deque[int] = deque(maxlen=self.config.window)
        self.values: deque[float] = deque(maxlen=self.config.window)

    def update(self, steps: np.ndarray, values: np.ndarray, law: LawFn | None = None) -> list[Event]:
        cfg = self.config
        for s, y in zip(np.asarray(steps).tolist(), np.asarray(values, dtype=float).tolist(), strict=True):
            if math.isfinite(y) and s >= cfg.min_step:
                self.steps.append(int(s))
                self.values.append(float(y))
        if len(self.values) < cfg.window or law is None:
            return []
        st = np.asarray(self.steps, dtype=np.int64)
        y = np.asarray(self.values, dtype=float)
        base = _law_at(law, st)
        if base is None:
            return []
        h = len(y) // 2
        sigma = max(robust_scale(np.diff(y)) / math.sqrt(2.0), 1e-6 * abs(float(np.median(y))) + 1e-12)
        se = 1.25 * sigma * math.sqrt(2.0 / h)
        gain_law = float(np.median(base[:h]) - np.median(base[h:]))
        gain_obs = float(np.median(y[:h]) - np.median(y[h:]))
        if gain_law > cfg.threshold * se and gain_obs < cfg.min_ratio * gain_law:
            short = (gain_law - gain_obs) / se
            if short > cfg.threshold:
                return [
                    Event(
                        kind="stagnation",
                        step=int(st[-1]),
                        severity="warning",
                        score=short,
                        message=(
                            f"loss stalled at step {int(st[-1])}: improved {gain_obs:.4g} over the last "
                            f"{len(y)} points where the law expects {gain_law:.4g}"
                        ),
                        data={"gain_obs": gain_obs, "gain_law": gain_law, "se": se},
                    )
                ]
        return []

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.model_dump(), "steps": list(self.steps), "values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(StagnationConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.steps.extend(int(s) for s in state["steps"])
        self.values.extend(float(v) for v in state["values"])


# ------------------------------------------------------------------------------------------ grad norm
class GradNormConfig(BaseModel):
    """Gradient-norm precursors, on ``log(grad_norm)``: a spike (robust z over ``window`` points above
    ``spike_threshold``) or sustained growth (median of the last ``block`` points above ``growth`` times the
    lowest block median seen so far)."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(64, ge=8)
    spike_threshold: float = Field(8.0, gt=0)
    block: int = Field(32, ge=4)
    growth: float = Field(4.0, gt=1)
    min_step: int = Field(0, ge=0)


class GradNormDetector:
    """Instability precursors from the gradient norm (HF logs ``grad_norm``; Lightning can read it before the
    optimizer step): a sudden jump, or a norm that keeps growing."""

    def __init__(self, config: GradNormConfig | None = None) -> None:
        self.config = config or GradNormConfig()
        self.values: deque[float] = deque(maxlen=max(self.config.window, self.config.block))
        self.since_block = 0
        self.min_block: float | None = None

    def update(self, steps: np.ndarray, grad_norm: np.ndarray) -> list[Event]:
        cfg = self.config
        events: list[Event] = []
        for s, g in zip(np.asarray(steps).tolist(), np.asarray(grad_norm, dtype=float).tolist(), strict=True):
            if not math.isfinite(g) or g <= 0 or s < cfg.min_step:
                continue
            lg = math.log(g)
            w = np.asarray(self.values, dtype=float)[-cfg.window :]
            if len(w) >= min(cfg.window, 16):
                med = float(np.median(w))
                scale = max(robust_scale(w), 1e-3)
                z = (lg - med) / scale
                if z > cfg.spike_threshold:
                    events.append(
                        Event(
                            kind="grad_norm",
                            step=int(s),
                            severity="warning",
                            score=z,
                            message=f"gradient-norm spike at step {s}: {g:.4g} vs typical {math.exp(med):.4g}",
                            data={"grad_norm": g, "typical": math.exp(med), "kind": "spike"},
                        )
                    )
                    continue
            self.values.append(lg)
            self.since_block += 1
            if len(self.values) >= cfg.block and self.since_block >= cfg.block:
                self.since_block = 0
                cur = float(np.median(np.asarray(self.values)[-cfg.block :]))
                if self.min_block is None or cur < self.min_block:
                    self.min_block = cur
                elif math.exp(cur - self.min_block) > cfg.growth:
                    ratio = math.exp(cur - self.min_block)
                    events.append(
                        Event(
                            kind="grad_norm",
                            step=int(s),
                            severity="warning",
                            score=ratio,
                            message=(
                                f"gradient norm growing at step {s}: typical {math.exp(cur):.4g}, "
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
            "values": list(self.values),
            "since_block": self.since_block,
            "min_block": self.min_block,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(GradNormConfig.model_validate(state["config"]))  # type: ignore[misc]
        self.values.extend(float(v) for v in state["values"])
        self.since_block = int(state["since_block"])
        self.min_block = None if state["min_block"] is None else float(state["min_block"])


# ------------------------------------------------------------------------------------- health monitor
class HealthConfig(BaseModel):
    """The detectors and the debouncing of :class:`HealthMonitor`.

    Only kinds in ``act_on`` may be critical (the others are reported as warnings); what a critical event does
    is the run monitor's ``action`` (:class:`scaleforecast.monitor.StopConfig`). An event of a kind
    already reported less than ``debounce_steps`` steps earlier, at the same or a lower severity, is
    counted but not reported again. ``skip_before``/``skip_after``: the steps around a spike written to
    ``record_path`` (a JSON list of optimizer steps to skip on a replay, like Lightning's ``SpikeDetection``).
    """

    model_config = ConfigDict(extra="forbid")

    act_on: list[str] = Field(default_factory=lambda: ["nonfinite", "spike", "divergence"])
    debounce_steps: int = Field(200, ge=0)
    record_path: str | None = None
    skip_before: int = Field(1, ge=0)
    skip_after: int = Field(0, ge=0)
    use_loss_max: bool = Field(True, description="score spikes on the max over ranks when it is given")
    spike: SpikeConfig = Field(default_factory=SpikeConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    stagnation: StagnationConfig | None = Field(default_factory=StagnationConfig)
    grad_norm: GradNormConfig = Field(default_factory=GradNormConfig)


class HealthMonitor:
    """All detectors behind one call per flush, with debouncing and the spike record.

    ``update(steps, loss, loss_max=None, grad_norm=None, view=None)`` takes host-side arrays (``loss``
    = mean over ranks, ``loss_max`` = max over ranks: a spike on any rank counts) and returns the events to
    report; the expected loss comes from ``view.predict`` (a :class:`scaleforecast.monitor.FitView`) once it
    has a usable fit. Never raises from ``update``.
    """

    def __init__(self, config: HealthConfig | None = None) -> None:
        self.config = config or HealthConfig()
        self.nonfinite = NonFiniteDetector()
        self.spike = SpikeDetector(self.config.spike)
        self.drift = DriftDetector(self.config.drift)
        self.stagnation = StagnationDetector(self.config.stagnation) if self.config.stagnation else None
        self.grad = GradNormDetector(self.config.grad_norm)
        self.last_reported: dict[str, tuple[int, int]] = {}
        self.suppressed: dict[str, int] = {}
        self.skip_steps: set[int] = set()
        self.counts: dict[str, int] = {}
        self._record_failed = False
        self._lr_seen: dict[int, float] = {}
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
        lr_of: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ) -> list[Event]:
        """Run every detector on one flush and return the (debounced) events to report.

        ``law`` (``steps -> expected loss``) defaults to the latest usable fit of ``view`` (a
        :class:`scaleforecast.monitor.FitView`); ``lr_of`` (``steps -> LR``) to its planned schedule."""
        st = np.asarray(steps, dtype=np.int64).ravel()
        y = np.asarray(loss, dtype=float).ravel()
        if st.shape != y.shape:
            raise ValueError(f"steps and loss differ in length: {len(st)} != {len(y)}")
        ymax = None if loss_max is None else np.asarray(loss_max, dtype=float).ravel()
        gn = None if grad_norm is None else np.asarray(grad_norm, dtype=float).ravel()
        for name, arr in (("loss_max", ymax), ("grad_norm", gn)):
            if arr is not None and arr.shape != st.shape:
                raise ValueError(f"{name} has {arr.size} values for {len(st)} steps")
        if len(st) == 0:
            return []
        if law is None and view is not None:
            law = forecaster_law(view, self._law_cache)
        if lr_of is None and view is not None:
            lr_of = forecaster_lr(view)
        raw: list[Event] = []
        raw += self.nonfinite.update(st, y, ymax, gn)
        scored = ymax if (ymax is not None and self.config.use_loss_max) else y
        raw += self.spike.update(st, scored, law)
        raw += self.drift.update(st, y, law, lr_of)
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
        lr_of = None
        if getattr(batch, "lrs", None) is not None:
            steps = np.asarray(batch.steps).tolist()
            self._lr_seen.update(zip(steps, np.asarray(batch.lrs, dtype=float).tolist(), strict=True))
            if len(self._lr_seen) > 4096:  # the drift blocks look back a few hundred points at most
                keep = sorted(self._lr_seen)[-2048:]
                self._lr_seen = {k: self._lr_seen[k] for k in keep}
            lr_of = self._lr_lookup
        return self.update(batch.steps, batch.loss, batch.loss_max, batch.grad_norm, view=view, lr_of=lr_of)

    def _lr_lookup(self, steps: np.ndarray) -> np.ndarray | None:
        try:
            return np.array([self._lr_seen[int(s)] for s in steps], dtype=float)
        except KeyError:
            return None

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
            if last is not None and ev.step - last[0] < self.config.debounce_steps and rank <= last[1]:
                self.suppressed[ev.kind] = self.suppressed.get(ev.kind, 0) + 1
                continue
            n_sup = self.suppressed.pop(ev.kind, 0)
            if n_sup:
                ev = ev.model_copy(update={"data": {**ev.data, "suppressed_before": n_sup}})
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
            "version": 1,
            "config": self.config.model_dump(mode="json"),
            "spike": self.spike.state_dict(),
            "drift": self.drift.state_dict(),
            "stagnation": None if self.stagnation is None else self.stagnation.state_dict(),
            "grad_norm": self.grad.state_dict(),
            "last_reported": {k: list(v) for k, v in self.last_reported.items()},
            "suppressed": dict(self.suppressed),
            "skip_steps": sorted(self.skip_steps),
            "counts": dict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported health-monitor state version {state.get('version')!r}")
        config = {k: v for k, v in state["config"].items() if k != "action"}  # version 1 held the action
        self.__init__(HealthConfig.model_validate(config))  # type: ignore[misc]
        self.spike.load_state_dict(state["spike"])
        self.drift.load_state_dict(state["drift"])
        if self.stagnation is not None and state.get("stagnation") is not None:
            self.stagnation.load_state_dict(state["stagnation"])
        self.grad.load_state_dict(state["grad_norm"])
        self.last_reported = {k: (int(v[0]), int(v[1])) for k, v in state["last_reported"].items()}
        self.suppressed = {k: int(v) for k, v in state["suppressed"].items()}
        self.skip_steps = {int(s) for s in state["skip_steps"]}
        self.counts = {k: int(v) for k, v in state["counts"].items()}


def forecaster_law(view: Any, cache: dict[str, Any] | None = None) -> LawFn | None:
    """``steps -> expected loss`` from the latest usable fit seen through ``view`` (a
    :class:`scaleforecast.monitor.FitView`, or anything with ``latest``, ``schedule`` and ``predict``), or
    ``None`` before one (or when the fit is not usable). The curve is computed once per fit over the whole
    planned schedule (one pass over ``S1``/``S2``) and kept in ``cache`` (a dict the caller owns) for as long
    as the fit and the schedule stay the same; errors mean "no law"."""
    latest = getattr(view, "latest", None)
    if latest is None or latest.params is None or not latest.ok:
        return None
    lrs = getattr(view, "schedule", None)
    if lrs is None:
        return None
    cache = {} if cache is None else cache
    if cache.get("fit") is not latest or cache.get("lrs") is not lrs:
        try:
            curve = np.asarray(view.predict(np.arange(1, len(lrs) + 1)), dtype=float)
        except Exception:  # a law that cannot predict is no law: the detectors fall back to the local trend
            return None
        cache.update(fit=latest, lrs=lrs, curve=curve)
    curve = cache["curve"]

    def law(steps: np.ndarray) -> np.ndarray:
        idx = np.asarray(steps, dtype=np.int64) - 1
        out = np.full(len(idx), np.nan)
        ok = (idx >= 0) & (idx < len(curve))
        out[ok] = curve[idx[ok]]
        return out

    return law


def forecaster_lr(view: Any) -> Callable[[np.ndarray], np.ndarray | None]:
    """``steps -> LR of those updates`` from the planned schedule seen through ``view`` (``None`` when unknown)."""

    def lr_of(steps: np.ndarray) -> np.ndarray | None:
        lrs = getattr(view, "schedule", None)
        if lrs is None or len(steps) == 0 or int(np.max(steps)) > len(lrs) or int(np.min(steps)) < 1:
            return None
        return np.asarray(lrs)[np.asarray(steps, dtype=np.int64) - 1]

    return lr_of
