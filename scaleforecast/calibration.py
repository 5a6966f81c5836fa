"""The forecast's measured error, for the stopping rule: how far a forecast of the final loss can be from the
loss the run actually reaches, learned by replaying finished real runs, and shipped as data.

A forecast ``m`` of the final loss made at some point of a run is off by ``e = log(m / final)``: ``e > 0`` is a
pessimistic forecast (the one that kills runs that would have made it), ``e < 0`` an optimistic one. The size of
``e`` depends on where the run is, so the error model gives a *scale* for it from what the run shows when the
forecast is made (:class:`scaleforecast.evidence.StopFeatures`):

    scale = sqrt(u(column, fraction)^2 + (w * |b| * log2(1 / fraction))^2)

``u`` is a table learned from real runs, by the fraction of the run seen and by column: the LR phase
(``stable``: the LR has not decayed yet; ``early_decay``: it is decaying, with most of its drop still ahead;
``decay``: it is decaying, most of its drop behind; ``flat``: nothing is left to anneal) once the
run has a backtest, ``unproven`` before (the run has not yet doubled its length since its first fit, so it has
not been able to test its own forecasts: the early part of every short run). ``b`` is that backtest
(:class:`scaleforecast.evidence.ForecastTrack`): how far the run's forecasts made at step ``s`` of the loss at
step ``2s`` were from what the run did there (the worst of the last doubling). A run whose power law is poorly
determined (a tiny, short run; a run that leaves the law) fails its own backtest, and every doubling still ahead
compounds that error. Each cell of ``u`` is a high quantile of the *pessimistic* errors of its forecasts (never
less than a share of the two-sided error, so that a cell of optimistic forecasts still has a scale).

The scale alone says nothing about how often a stop is wrong. That is measured on the same replayed runs, the
way the rule uses it: a run is stopped at the *first* forecast whose ``z = log(m / target) / scale`` crosses a
threshold, so what matters is each run's largest ``z`` against its own final loss, ``Z = max_j e_j / scale_j``
(the pessimistic tail; the optimistic tail likewise for the sweep reference). The shipped ``upper`` tail holds
the ``Z`` of every calibration run, computed *out of fold* (with the table learned without the run's group of
related runs), weighted so that each group counts once. ``confidence(z)`` is the share of groups whose ``Z``
stayed below ``z``, times ``n / (n + 1)`` for ``n`` groups: a stop at ``confidence(z) >= c`` would have
stopped at most ``1 - c`` of those runs with a target equal to their own final loss (fewer with any target
above it), and ``n`` groups cannot certify more than ``n / (n + 1)``.

Learned by ``benchmarks/stop_calibration.py`` (one command, re-run whenever the forecaster changes).
"""

from __future__ import annotations

import bisect
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from scaleforecast.evidence import PHASES, StopFeatures

__all__ = ["COLUMNS", "REGIMES", "ErrorModel", "ErrorTail", "load_error_model"]

_DATA = Path(__file__).resolve().parent / "data"
COLUMNS: tuple[str, ...] = (*PHASES, "unproven")
"""The table's columns: the LR phases of a run with a backtest, and ``unproven`` for one without."""
REGIMES: tuple[str, ...] = ("", "short:", "noisy:")
"""The prefixes of the table's regimes: long smooth runs, short runs, noisy runs."""


class ErrorTail(BaseModel):
    """A weighted sample of per-run maxima ``Z`` (sorted; weights sum to the number of independent groups of
    runs), and the confidence it supports.

    With ``n`` groups, a new run's ``Z`` falls below the ``j``-th smallest with probability ``j / (n + 1)`` (the
    conformal rank argument): :meth:`confidence` is the weighted share of the sample below ``z`` times
    ``n / (n + 1)``, so ``n`` groups can certify at most ``n / (n + 1)``, and :meth:`quantile` is infinite
    beyond that.
    """

    model_config = ConfigDict(frozen=True)

    values: list[float]
    weights: list[float]

    @property
    def groups(self) -> float:
        """The number of independent groups the sample stands for (the sum of the weights)."""
        return float(sum(self.weights))

    def confidence(self, z: float) -> float:
        """P(a new run's ``Z < z``), as the sample supports it (0 for an empty sample)."""
        n = self.groups
        if n <= 0 or math.isnan(z):
            return 0.0
        below = sum(self.weights[: bisect.bisect_left(self.values, z)]) if z != math.inf else n
        return float(below / (n + 1.0))

    def quantile(self, c: float) -> float:
        """The smallest sampled ``Z`` at which :meth:`confidence` just above it reaches ``c``; ``inf`` when the
        sample cannot support ``c``."""
        n = self.groups
        acc = 0.0
        for v, w in zip(self.values, self.weights, strict=True):
            acc += w
            if acc / (n + 1.0) >= c - 1e-12:
                return v
        return math.inf


class ErrorModel(BaseModel):
    """The learned error model (see the module docstring): the scale table, the run-maximum tails, and where
    they come from.

    ``table[column][k]`` is the scale ``u`` at the centre of fraction bin ``k`` (edges ``fraction_edges``),
    interpolated linearly in between, for the columns :data:`COLUMNS`. With ``noise_split``, runs whose fit
    reports a relative noise per observation at or above it (per-step losses of small batches) read their own
    columns ``noisy:<column>``, and with ``length_split`` runs shorter than that many steps read
    ``short:<column>``, when the table has them (:meth:`regimes`). ``fallback_short`` is the short runs'
    fallback. ``fallback[k]`` is the scale used when only a forecast
    is known (no phase, no backtest: a high quantile of the full scale over the calibration forecasts of that
    bin, never below any column of the regime, so that it errs wide); ``fallback_noisy[k]`` stands for the noisy
    regime, and is used for a forecast whose own relative std is at least ``rel_std_split[k]`` (below it, only
    smooth runs' forecasts were seen, with a margin). ``backtest`` names which backtest of the features is
    read (the latest, or the worst of the last doubling). ``upper``/``lower``: out-of-fold maxima of the
    pessimistic / optimistic ``z`` per run.
    """

    model_config = ConfigDict(frozen=True)

    version: int = 1
    fraction_edges: list[float]
    table: dict[str, list[float]]
    fallback: list[float]
    fallback_short: list[float] | None = None
    fallback_noisy: list[float] | None = None
    rel_std_split: list[float] | None = None
    backtest_weight: float = Field(1.0, ge=0.0)
    backtest: Literal["latest", "worst"] = "worst"
    noise_split: float | None = None
    length_split: int | None = None
    floor: float = Field(1e-4, gt=0.0)
    upper: ErrorTail
    lower: ErrorTail
    provenance: dict[str, Any] = Field(default_factory=dict)

    def _centres(self) -> np.ndarray:
        e = np.asarray(self.fraction_edges, dtype=float)
        return 0.5 * (e[:-1] + e[1:])

    def scale(self, features: StopFeatures) -> float:
        """The error scale of a forecast made with ``features``, in log-loss units (see the module docstring)."""
        phase = features.phase
        code = -1 if phase is None else PHASES.index(phase)
        noise = math.nan if features.noise is None else features.noise
        one = np.array([features.fraction]), np.array([code]), np.array([self.backtest_of(features)])
        total = math.nan if features.total_steps is None else float(features.total_steps)
        rs = np.array([features.rel_std])
        return float(self.scales(*one, noise=np.array([noise]), rel_std=rs, total=np.array([total]))[0])

    def backtest_of(self, features: StopFeatures) -> float:
        """The backtest the model reads (``backtest`` names which one; NaN when the run has none yet)."""
        b = features.backtest_worst if self.backtest == "worst" else features.backtest
        if b is None:
            b = features.backtest
        return math.nan if b is None else float(b)

    def noisy(self, noise: np.ndarray) -> np.ndarray:
        """Which forecasts read the ``noisy:`` columns (an unknown noise counts as noisy: the wider reading)."""
        n = np.asarray(noise, dtype=float)
        if self.noise_split is None:
            return np.zeros(n.shape, dtype=bool)
        return ~(n < self.noise_split)

    def regimes(self, noise: np.ndarray, total: np.ndarray) -> np.ndarray:
        """The regime of each forecast, an index into :data:`REGIMES`: noisy, else short (a run shorter than
        ``length_split`` steps, or of unknown length), else long."""
        short = np.zeros(np.shape(noise), dtype=bool)
        if self.length_split is not None:
            short = ~(np.asarray(total, dtype=float) >= self.length_split)
        return np.where(self.noisy(noise), 2, np.where(short, 1, 0))

    def scales(
        self,
        fraction: np.ndarray,
        phase: np.ndarray,
        backtest: np.ndarray,
        noise: np.ndarray | None = None,
        rel_std: np.ndarray | None = None,
        total: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`scale` of many forecasts at once: ``phase`` holds indices into :data:`PHASES` (-1: unknown,
        the fallback columns), ``backtest`` NaN where there is none (the ``unproven`` column), ``noise`` the
        fits' relative noise, ``rel_std`` the forecasts' own relative std, ``total`` the runs' lengths (each
        NaN or ``None`` where unknown: the wider reading)."""
        f = np.clip(np.asarray(fraction, dtype=float), 1e-3, 1.0)
        code = np.asarray(phase, dtype=np.int64)
        b = np.asarray(backtest, dtype=float)
        unknown = np.full(f.shape, math.nan)
        length = unknown if total is None else np.asarray(total, dtype=float)
        regime = self.regimes(unknown if noise is None else noise, length)
        tested = np.isfinite(b)
        column = np.where(tested, code, COLUMNS.index("unproven"))
        centres = self._centres()
        # only a forecast known: its own relative std tells a noisy run apart, its length a short one
        k = np.clip(np.searchsorted(self.fraction_edges, f, side="right") - 1, 0, len(centres) - 1)
        rs = np.full(f.shape, math.inf) if rel_std is None else np.asarray(rel_std, dtype=float)
        split = np.asarray(self.rel_std_split, dtype=float)[k] if self.rel_std_split is not None else np.inf
        guessed = np.where(~(rs < split), 2, self.regimes(np.zeros(f.shape), length))
        u = np.interp(f, centres, np.asarray(self.fallback, dtype=float))
        for r, wide in ((1, self.fallback_short), (2, self.fallback_noisy)):
            m = (code < 0) & (guessed == r)
            if wide is not None and m.any():
                u[m] = np.interp(f[m], centres, np.asarray(wide, dtype=float))
        for i, name in enumerate(COLUMNS):
            for r, prefix in enumerate(REGIMES):
                m = (code >= 0) & (column == i) & (regime == r)
                if m.any():
                    values = np.asarray(self._column(prefix, name), dtype=float)
                    u[m] = np.interp(f[m], centres, values)
        term = np.where(
            tested & (code >= 0), self.backtest_weight * np.abs(np.nan_to_num(b)) * np.log2(1.0 / f), 0.0
        )
        return np.maximum(np.hypot(u, term), self.floor)

    def _column(self, prefix: str, name: str) -> list[float]:
        # a regime's own column, else the long runs'; a model learned before ``early_decay`` was told apart
        # from ``decay`` reads the latter for it
        for n in (name, "decay") if name == "early_decay" else (name,):
            for key in (prefix + n, n):
                if key in self.table:
                    return self.table[key]
        raise KeyError(f"the error model has no column {name!r}")

    def confidence(self, z: float) -> float:
        """P(the run's final loss is above ``forecast * exp(-z * scale)``), as measured: the share of
        calibration runs whose forecasts never were ``z`` scales too pessimistic (see :class:`ErrorTail`)."""
        return 0.0 if z <= 0 else self.upper.confidence(z)

    def threshold(self, confidence: float) -> float:
        """The ``z`` above which :meth:`confidence` reaches ``confidence`` (``inf``: it never does)."""
        return self.upper.quantile(confidence)

    def optimistic_margin(self, quantile: float) -> float:
        """``z`` such that the final loss stays below ``forecast * exp(z * scale)`` in ``quantile`` of runs
        (``inf`` when the calibration runs cannot support ``quantile``)."""
        return max(self.lower.quantile(quantile), 0.0)

    @property
    def max_confidence(self) -> float:
        """The highest confidence the calibration runs can certify, ``n / (n + 1)`` for ``n`` groups."""
        n = self.upper.groups
        return n / (n + 1.0)


@lru_cache(maxsize=4)
def _load(path: str) -> ErrorModel:
    return ErrorModel.model_validate(json.loads(Path(path).read_text()))


def load_error_model(name_or_path: str | Path = "default") -> ErrorModel:
    """A shipped error model by name (``scaleforecast/data/stop_error_<name>.json``) or a JSON file path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = _DATA / f"stop_error_{name_or_path}.json"
    if not p.is_file():
        raise FileNotFoundError(f"no stop error model at {p}")
    return _load(str(p.resolve()))
