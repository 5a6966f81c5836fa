"""Replay finished runs through :class:`scaleforecast.monitor.RunMonitor`, as the training callbacks drive it.

Shared by the early-stopping benchmark (``early_stop.py``), the sweep replay (``sweep_replay.py``) and the
learning of the stop rule's error model (``stop_calibration.py``). A replay feeds a run's logged losses to
``RunMonitor.flush`` in batches of ``flush_every`` optimizer steps (the Lightning and HF adapters' default
cadence, 50), with the run's exact per-update LR as the planned schedule, and records every forecast the
monitor makes together with the stop rule's features from the monitor's own :class:`ForecastTrack`. The error
model is not involved: any rule can then be evaluated on the trace, at the flushes where the callbacks would
have evaluated it.

Runs come from ``../shared/curves`` and the tiny-model curves of ``curves_tiny`` (``make_curves.py``), both in the
loss column the ``forecast`` CLI uses (``val_loss`` where logged, else ``train_loss``; the run ends at its last
logged step, whose loss is the truth), and from the tiny Lightning and HF runs recorded by ``tiny_runs.py``
(per-step training loss, as a callback sees it; the truth is the final model's loss on fresh batches).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaleforecast.evidence import StopFeatures
from scaleforecast.family import NotAnnealed, fit_reference
from scaleforecast.fitting import Observations
from scaleforecast.forecaster import ForecasterConfig
from scaleforecast.monitor import FlushBatch, RunMonitor
from scaleforecast.results import FitStatus, Forecast, ForecastPoint

log = logging.getLogger("stop_replay")

TINY_DIR = Path(__file__).resolve().parent / "data" / "tiny_runs"
FLUSH_EVERY = 50
"""The adapters' default ``flush_every``: the stop rule is evaluated once per flush."""

USABLE = (FitStatus.OK.value, FitStatus.ANNEALING_UNIDENTIFIED.value)


@dataclass(frozen=True)
class Run:
    """A finished run: logged ``(steps, loss)``, the LR of every update (``lrs[k]`` for update ``k + 1``), its
    true final loss, and the keys the benchmarks group it by (``source``: where it comes from, ``group``: runs
    that share a prefix or a configuration, which must stay together in cross-validation)."""

    key: str
    source: str
    group: str
    steps: np.ndarray
    loss: np.ndarray
    lrs: np.ndarray
    final: float
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def total(self) -> int:
        return len(self.lrs)


def shared_runs(root: str | Path | None = None, *, generated: bool = True) -> list[Run]:
    """Every finished run of ``../shared/curves`` and, with ``generated``, of the tiny-model curves committed
    under ``benchmarks/curves_tiny`` (see the module docstring); [] when neither folder is there."""
    from curves import TINY_ROOT, default_root, load_curves

    base = Path(root) if root is not None else default_root()
    roots = [
        r for r in (base, TINY_ROOT if generated else None) if r is not None and (r / "index.csv").is_file()
    ]
    if not roots:
        return []
    out = []
    for c in load_curves(roots):
        steps, y = c.column(None)
        keep = (steps >= 1) & (steps <= len(c.lrs))
        steps, y = steps[keep], y[keep]
        if len(steps) < 10:
            continue
        last = int(steps[-1])
        origin = "curves_tiny" if c.folder.startswith("tiny_") else "shared"
        out.append(
            Run(
                key=c.key,
                source=c.folder,
                group=c.group,
                steps=steps,
                loss=y,
                lrs=c.lrs[:last].copy(),
                final=float(y[-1]),
                meta={
                    "shape": c.shape,
                    "peak_lr": c.peak_lr,
                    "run_id": c.run_id,
                    "replicate": c.replicate_group,
                    "model": c.meta.get("model"),
                    "column": c.default_column(),
                    "origin": origin,
                },
            )
        )
    return out


def tiny_runs(folder: str | Path = TINY_DIR) -> list[Run]:
    """The tiny real runs recorded by ``tiny_runs.py`` (each its own group; source ``tiny_<framework>``)."""
    out = []
    for path in sorted(Path(folder).glob("*.csv")):
        meta = json.loads(path.with_suffix(".json").read_text())
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        steps = np.array([int(r["step"]) for r in rows], dtype=np.int64)
        lrs = np.array([float(r["lr"]) for r in rows])
        loss = np.array([float(r["train_loss"]) for r in rows])
        spec = meta["spec"]
        out.append(
            Run(
                key=f"tiny/{path.stem}",
                source=f"tiny_{spec['framework']}",
                group=f"tiny/{path.stem}",
                steps=steps,
                loss=loss,
                lrs=lrs,
                final=float(meta["final_loss"]),
                meta={"shape": spec["schedule"], "peak_lr": spec["lr"], "spec": spec, "origin": "tiny_runs"},
            )
        )
    return out


def all_runs(root: str | Path | None = None, tiny: str | Path | None = TINY_DIR) -> list[Run]:
    """The shared curves and the tiny runs (see :func:`shared_runs`, :func:`tiny_runs`)."""
    return shared_runs(root) + (tiny_runs(tiny) if tiny is not None else [])


# ------------------------------------------------------------------------------------------------- replay
@dataclass
class Trace:
    """What the monitor showed at each flush of one replayed run.

    ``flush_steps[i]``: the step of flush ``i``; ``latest[i]``: the index of the monitor's latest forecast then
    (-1: none yet). Per forecast ``j``: ``fit_step``, the final-step ``mean``/``std``, ``status`` and the stop
    rule's ``features`` (the monitor's :class:`ForecastTrack`).
    """

    key: str
    source: str
    group: str
    total: int
    final: float
    flush_steps: np.ndarray
    latest: np.ndarray
    fit_step: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    status: list[str]
    features: list[StopFeatures | None]
    meta: dict = field(default_factory=dict)

    def forecast(self, j: int) -> Forecast:
        """Forecast ``j`` as the one-point :class:`Forecast` a stop rule reads (built once, then reused)."""
        cache = self.__dict__.setdefault("_forecasts", {})
        if j not in cache:
            cache[j] = self._build(j)
        return cache[j]

    def _build(self, j: int) -> Forecast:
        loss, std = float(self.mean[j]), float(self.std[j])
        status = FitStatus(self.status[j])
        points = []
        if math.isfinite(loss) and math.isfinite(std):
            points = [ForecastPoint(step=self.total, loss=loss, lower=loss - std, upper=loss + std, std=std)]
        return Forecast(
            law="tissue",
            level=0.8,
            fitted_at_step=int(self.fit_step[j]),
            final_step=self.total,
            points=points,
            params=None,
            n_points=0,
            status=status,
        )

    @property
    def usable(self) -> np.ndarray:
        """Which forecasts hold numbers a rule may act on."""
        return np.array([s in USABLE for s in self.status], dtype=bool) & np.isfinite(self.mean)


def replay(run: Run, flush_every: int = FLUSH_EVERY, sibling: Run | None = None) -> Trace:
    """Feed ``run`` to a fresh :class:`RunMonitor` (no target: nothing stops) flush by flush and record it.

    With ``sibling``, a finished run of ``run``'s family, the forecaster borrows its prior from the sibling's
    whole fit (as a sweep's later runs borrow from its finished ones): a *warm* trace, ``meta["sibling"]``."""
    config = None
    if sibling is not None:
        obs = Observations.from_steps(sibling.steps, sibling.loss)
        config = ForecasterConfig(references=[fit_reference(sibling.key, obs, sibling.lrs)])
    mon = RunMonitor(run.lrs, config=config, verbose=False)
    flush_steps: list[int] = []
    latest: list[int] = []
    fit_step: list[int] = []
    mean: list[float] = []
    std: list[float] = []
    status: list[str] = []
    feats: list[StopFeatures | None] = []
    j = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for end in range(flush_every, run.total + flush_every, flush_every):
            k = int(np.searchsorted(run.steps, min(end, run.total), side="right"))
            if k == j:
                continue  # nothing was logged in this window: a callback would flush the same forecast
            lr_used = run.lrs[run.steps[j:k] - 1]
            res = mon.flush(FlushBatch(steps=run.steps[j:k], loss=run.loss[j:k], lrs=lr_used))
            j = k
            if res.forecast is not None:
                f = res.forecast
                fin = f.final
                fit_step.append(int(f.fitted_at_step))
                mean.append(fin.loss if fin is not None else math.nan)
                std.append(fin.std if fin is not None else math.nan)
                status.append(f.status.value)
                feats.append(mon.track.features if f.ok else None)
            flush_steps.append(int(run.steps[k - 1]))
            latest.append(len(mean) - 1)
    if mon.disabled:
        log.warning("%s: monitor parts switched off: %s", run.key, mon.disabled)
    meta = dict(run.meta) | ({} if sibling is None else {"sibling": sibling.key})
    return Trace(
        key=run.key,
        source=run.source,
        group=run.group,
        total=run.total,
        final=run.final,
        flush_steps=np.asarray(flush_steps, dtype=np.int64),
        latest=np.asarray(latest, dtype=np.int64),
        fit_step=np.asarray(fit_step, dtype=np.int64),
        mean=np.asarray(mean, dtype=float),
        std=np.asarray(std, dtype=float),
        status=status,
        features=feats,
        meta=meta,
    )


_FORECASTING = {
    "evidence",
    "family",
    "fitting",
    "forecaster",
    "history",
    "lawcheck",
    "laws",
    "monitor",
    "priors",
    "results",
    "schedules",
}


def code_fingerprint(flush_every: int = FLUSH_EVERY) -> str:
    """A key of the code that makes forecasts and their features (and the cadence): traces made under another
    key are stale."""
    h = hashlib.sha1(str(flush_every).encode())
    pkg = Path(__file__).resolve().parent.parent / "scaleforecast"
    code = [p for p in sorted(pkg.glob("*.py")) if p.stem in _FORECASTING]
    for p in code + sorted((pkg / "data").glob("prior_*.json")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _run_fingerprint(run: Run) -> str:
    h = hashlib.sha1(run.key.encode())
    for a in (run.steps, run.loss, run.lrs):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(repr(run.final).encode())
    return h.hexdigest()[:16]


def replay_all(
    runs: Sequence[Run],
    *,
    flush_every: int = FLUSH_EVERY,
    cache: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    siblings: Sequence[Run | None] | None = None,
) -> list[Trace]:
    """:func:`replay` every run (one process), warm from ``siblings[i]`` where given. With ``cache`` (a
    folder), each trace is stored under a key of its run's (and sibling's) data and of the forecasting code,
    and reused while neither changes."""
    folder = None if cache is None else Path(cache) / code_fingerprint(flush_every)
    sibs = list(siblings) if siblings is not None else [None] * len(runs)
    out = []
    t0 = time.time()
    for i, (r, sib) in enumerate(zip(runs, sibs, strict=True)):
        name = _run_fingerprint(r) + ("" if sib is None else "-" + _run_fingerprint(sib))
        path = None if folder is None else folder / f"{name}.pkl"
        if path is not None and path.is_file():
            with open(path, "rb") as fh:
                out.append(pickle.load(fh))
            continue
        out.append(replay(r, flush_every, sib))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                pickle.dump(out[-1], fh)
        if progress is not None:
            progress(f"[{i + 1}/{len(runs)}] {r.key} ({time.time() - t0:.0f} s)")
    return out


def warm_pairs(runs: Sequence[Run], root: str | Path | None = None) -> list[tuple[Run, Run]]:
    """``(run, sibling)``: each run of ``runs`` that has a finished run of its family which annealed (another
    length or schedule: ``warm_accuracy.py``'s families), with the first such sibling in a fixed hash order."""
    from curves import TINY_ROOT, default_root, load_curves
    from warm_accuracy import pairs

    base = Path(root) if root is not None else default_root()
    roots = [r for r in (base, TINY_ROOT) if r is not None and (r / "index.csv").is_file()]
    by_key = {r.key: r for r in runs}
    out, seen = [], set()
    for c, s in pairs(load_curves(roots), per_run=3):
        if c.key in seen or c.key not in by_key or s.key not in by_key:
            continue
        sib = by_key[s.key]
        try:
            fit_reference(sib.key, Observations.from_steps(sib.steps, sib.loss), sib.lrs)
        except NotAnnealed:
            continue
        seen.add(c.key)
        out.append((by_key[c.key], sib))
    return out


# ---------------------------------------------------------------------------------------------- decisions
def first_stop(
    trace: Trace,
    decide: Callable[[Forecast, StopFeatures | None, int], bool],
    *,
    grace: int = 0,
) -> int | None:
    """The first flush step at which ``decide(forecast, features, step)`` says stop, or None.

    ``decide`` is asked at every flush with the monitor's latest forecast, as the monitor asks the stop rule;
    since a rule's answer changes only with the forecast or when the step passes ``grace``, it is asked again
    only then. A run's last flush is its end: a stop there saves nothing and is not counted.
    """
    asked: tuple[int, bool] | None = None
    n = len(trace.flush_steps)
    for i in range(n - 1):
        j = int(trace.latest[i])
        if j < 0:
            continue
        step = int(trace.flush_steps[i])
        key = (j, step >= grace)
        if key == asked:
            continue
        asked = key
        if decide(trace.forecast(j), trace.features[j], step):
            return step
    return None


def groups_of(traces: Iterable[Trace]) -> dict[str, list[Trace]]:
    """Traces by group."""
    out: dict[str, list[Trace]] = {}
    for t in traces:
        out.setdefault(t.group, []).append(t)
    return out
