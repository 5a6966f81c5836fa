"""Infer a run's per-update LR from the points it logged: fit the known schedule families, or check a given one.

A log rarely holds the LR of every update: HF Trainer and Megatron log it every few steps, some logs not at all.
The forecast needs all of it (the law sees the schedule through its areas ``S1`` and ``S2``), so
:func:`rebuild_lrs` turns what is known into the per-update LR and says how far it can be trusted: an exact
schedule (spec or LR file) checked against the logged points; the logged LR itself when it covers every update;
else the best of the families in :mod:`scaleforecast.schedules` fitted to the logged points
(:func:`fit_schedule`), falling back to interpolation, loudly, when none fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from scaleforecast.runs import ReadError, stops_short
from scaleforecast.schedules import (
    ConstantSchedule,
    CosineSchedule,
    InvSqrtSchedule,
    LinearSchedule,
    Schedule,
    ScheduleError,
    StepSchedule,
    WSDSchedule,
    as_lrs,
    edge_zeros,
    parse_schedule,
    validate_lrs,
)

__all__ = [
    "LR_TRUST_BAD",
    "LR_TRUST_OK",
    "LRReconstruction",
    "fit_schedule",
    "rebuild_lrs",
    "warming_up",
]

# How far a reconstructed LR may stray from the logged points (max |error| / peak).
LR_TRUST_OK = 0.01
LR_TRUST_BAD = 0.05

CooldownShape = Literal["linear", "1-sqrt", "exp", "cosine"]


@dataclass
class LRReconstruction:
    """The per-update LR rebuilt from a run's logged LR points, with how well it matches them.

    ``source`` is ``logged`` (every update logged), ``schedule`` (exact spec or LR file), ``fit:<spec>`` (the best
    schedule family fitted to the logged points) or ``interpolated`` (no family fits; linear interpolation between
    logged points, held flat after the last one). ``max_error`` is ``max |lr - logged| / peak`` over the logged
    points (``None`` when nothing was logged to compare with). ``trusted`` is ``False`` when the LR is a guess.
    ``assumed_after``: the last logged step of a live log, after which the LR is not known but assumed (the
    fitted family continued, or the last value held); ``None`` when the LR is known to the end.
    """

    lrs: np.ndarray
    source: str
    schedule: Schedule | None = None
    max_error: float | None = None
    rms_error: float | None = None
    trusted: bool = True
    warnings: list[str] = field(default_factory=list)
    assumed_after: int | None = None


def warming_up(steps: np.ndarray, values: np.ndarray) -> bool:
    """Whether the logged LR is still rising at its last point: the peak, and so the schedule after the warm-up,
    is not known yet."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return True
    return bool(values[-1] >= values.max() and values[-1] > values[-2] * 1.001)


def _misfit(lrs: np.ndarray, steps: np.ndarray, logged: np.ndarray) -> np.ndarray:
    """Signed ``lr - logged`` at each logged step, the nearest of the updates ``step - 1 .. step + 1``: loggers
    differ by one step on which update's LR they record (before or after the scheduler steps), which alone would
    look like a large mismatch at a sharp drop."""
    at = np.asarray(steps, dtype=np.int64) - 1
    diffs = np.stack([lrs[np.clip(at + d, 0, len(lrs) - 1)] - logged for d in (-1, 0, 1)])
    return diffs[np.argmin(np.abs(diffs), axis=0), np.arange(diffs.shape[1])]


def _estimate_warmup(steps: np.ndarray, values: np.ndarray, peak: float) -> int:
    top = int(np.argmax(values >= 0.98 * peak))
    rising = (np.arange(len(values)) < top) & (values > 0) & (values < 0.98 * peak)
    if not rising.any():
        # Never logged below peak before reaching it: a warm-up, if any, ended before the first log, anywhere
        # from update 0 to it. Taken to end halfway (linear from 0), the LR area of the unlogged updates is right
        # on average and off by at most a quarter of them (the peak over all of them, as before, added up to half
        # of them to every later S1: the LR logs of Luo et al. start at step 2176, after a 2160-step warm-up).
        return 0 if steps[0] <= 1 else int(steps[0]) // 2
    return max(1, round(float(np.median(peak * steps[rising] / values[rising]))))


def _family_candidates(
    steps: np.ndarray, values: np.ndarray, total: int
) -> tuple[
    int, list[tuple[str, Callable[[np.ndarray], Schedule], np.ndarray, tuple[np.ndarray, np.ndarray]]]
]:
    """Each schedule family as (name, params -> schedule, start, bounds), with peak and warm-up estimated."""
    peak0 = float(values.max())
    warm = min(_estimate_warmup(steps, values, peak0), total - 2)
    after = steps > warm
    at_peak = after & (values >= 0.995 * peak0)
    last_peak = int(steps[at_peak].max()) if at_peak.any() else warm
    cd0 = float(np.clip((total - last_peak) / total, 0.01, 1.0))
    lo_v = float(values[after].min()) if after.any() else peak0
    f0 = min(lo_v / peak0, 0.99)
    cands: list[tuple[str, Callable[[np.ndarray], Schedule], np.ndarray, tuple[np.ndarray, np.ndarray]]] = []
    pk = (0.8 * peak0, 1.25 * peak0)
    cands.append(
        (
            "constant",
            lambda x: ConstantSchedule(peak=x[0], total=total, warmup=warm),
            np.array([peak0]),
            (np.array([pk[0]]), np.array([pk[1]])),
        )
    )

    # Each builder binds its own loop value (a bare lambda would see the loop's last one).
    def decay(cls: type[CosineSchedule | LinearSchedule]) -> Callable[[np.ndarray], Schedule]:
        return lambda x: cls(peak=x[0], total=total, warmup=warm, final=x[0] * x[1])

    def wsd(shape: CooldownShape) -> Callable[[np.ndarray], Schedule]:
        return lambda x: WSDSchedule(
            peak=x[0], total=total, warmup=warm, cooldown=x[1], shape=shape, final=x[0] * x[2]
        )

    for cls in (CosineSchedule, LinearSchedule):
        cands.append(
            (
                cls.model_fields["kind"].default,
                decay(cls),
                np.array([peak0, max(f0 - 0.01, 0.0)]),
                (np.array([pk[0], 0.0]), np.array([pk[1], 0.999])),
            )
        )
    max_cd = (total - warm) / total
    shapes: tuple[CooldownShape, ...] = ("linear", "1-sqrt", "cosine", "exp")
    for shape in shapes:
        fmin = 1e-4 if shape == "exp" else 0.0
        cands.append(
            (
                f"wsd-{shape}",
                wsd(shape),
                np.array([peak0, min(cd0, max_cd), max(f0 - 0.005, fmin)]),
                (np.array([pk[0], 1.0 / total, fmin]), np.array([pk[1], max_cd, 0.999])),
            )
        )
    cands.append(
        (
            "inv_sqrt",
            lambda x: InvSqrtSchedule(
                peak=x[0], total=total, warmup=warm, timescale=max(1, round(math.exp(x[1])))
            ),
            np.array([peak0, math.log(max(warm, 1))]),
            (np.array([pk[0], 0.0]), np.array([pk[1], math.log(total)])),
        )
    )
    step = _step_candidate(steps, values, total, warm, peak0)
    if step is not None:
        cands.append(
            (
                "step",
                lambda x: step.model_copy(update={"peak": x[0]}),
                np.array([peak0]),
                (np.array([pk[0]]), np.array([pk[1]])),
            )
        )
    return warm, cands


def _step_candidate(
    steps: np.ndarray, values: np.ndarray, total: int, warm: int, peak: float
) -> StepSchedule | None:
    after = steps > warm
    s, v = steps[after], values[after]
    if len(s) < 3:
        return None
    ratio = v[1:] / np.maximum(v[:-1], 1e-300)
    drops = np.flatnonzero(ratio < 0.9)
    # Step decay is flat between drops; anything else is a smooth decay.
    if not len(drops) or len(drops) > 8:
        return None
    segments = np.split(v, drops + 1)
    if any(seg.max() > 1.01 * seg.min() for seg in segments):
        return None
    gamma = float(np.median(ratio[drops]))
    # The drop lies somewhere between the last step logged at the old LR and the first at the new one. Placed
    # as late as that allows (the update after the first step logged at the new LR: HF Trainer and others log
    # the LR the next update will use), no loss logged in between counts as after it. At the midpoint, the loss
    # logged with the new LR counted as tens of steps into the drop, showed none, and the fit took C = 0 as
    # identified (a forecast 1-5 % high at the drop of every two-stage run of the real curves).
    milestones = sorted({int(s[i + 1]) for i in drops if int(s[i + 1]) < total})
    try:
        return StepSchedule(
            peak=peak, total=total, warmup=warm, milestones=milestones, gamma=min(max(gamma, 1e-6), 1.0)
        )
    except ValueError:
        return None


def fit_schedule(steps: np.ndarray, values: np.ndarray, total: int) -> list[tuple[float, float, Schedule]]:
    """Fit every known schedule family to logged LR points; ``[(max_err, rms_err, schedule)]``, best first.

    Errors are ``|lr - logged| / peak`` at the logged steps after the warm-up: warm-up shapes vary (linear from
    zero, from peak/100, cosine-shaped) and the fitter leaves the warm-up out anyway. Peak and warm-up length come
    from the data; each family's other parameters (final LR, cooldown fraction and shape, timescale, milestones)
    are fitted by bounded least squares. Simpler families win ties.
    """
    from scipy.optimize import least_squares

    all_steps = np.asarray(steps, dtype=np.int64)
    all_values = np.asarray(values, dtype=np.float64)
    if len(all_steps) == 0 or all_steps.max() > total or all_steps.min() < 1:
        raise ValueError(f"LR steps must lie in 1..{total}")
    peak0 = float(all_values.max())
    warm, cands = _family_candidates(all_steps, all_values, total)
    keep = all_steps > warm
    if keep.sum() < 2:
        keep[:] = True
    steps, values = all_steps[keep], all_values[keep]
    if len(steps) > 600:
        # A dense log (every step) pins the shape as well with a few hundred points; errors use all of them.
        pick = np.unique(np.linspace(0, len(steps) - 1, 600).round().astype(np.int64))
        steps, values = steps[pick], values[pick]
    eval_steps, eval_values = all_steps[keep], all_values[keep]
    results: list[tuple[float, float, int, Schedule]] = []
    for order, (name, make, x0, bounds) in enumerate(cands):
        # the smooth families are fitted on plain differences (the nearest-of-three misfit is not smooth in
        # their parameters); the step family's drops, placed from the log, are known to one update only
        nearest = name == "step"

        def resid(
            x: np.ndarray, make: Callable[[np.ndarray], Schedule] = make, nearest: bool = nearest
        ) -> np.ndarray:
            try:
                lrs = make(x).lrs()
                return (_misfit(lrs, steps, values) if nearest else lrs[steps - 1] - values) / peak0
            except ValueError:
                return np.full(len(values), 10.0)

        x0 = np.clip(x0, bounds[0], bounds[1])
        try:
            sol = least_squares(resid, x0, bounds=bounds, diff_step=1e-3, max_nfev=200)
            x = sol.x
        except ValueError:
            x = x0
        try:
            sched = make(x)
        except ValueError:
            continue
        r = _misfit(sched.lrs(), eval_steps, eval_values) / peak0
        results.append((float(np.abs(r).max()), float(np.sqrt(np.mean(r**2))), order, sched))
    tol = min(r[1] for r in results) * 1.1 + 1e-5
    # Prefer the simplest family whose error is within a hair of the best one; the rest by error.
    results.sort(key=lambda r: (0, r[2]) if r[1] <= tol else (1, r[1]))
    return [(m, rms, s) for m, rms, _, s in results]


def _cooldown_hint(message: str, spec: object) -> str:
    """For a WSD ``cooldown`` refused as out of range: that it is a fraction of the run, with the fraction a
    number of updates given as ``cooldown`` would be (a common slip: ``cooldown=3912`` for 20% of 19560)."""
    if "cooldown:" not in message or not isinstance(spec, str):
        return ""
    keys = dict(kv.split("=", 1) for kv in spec.partition(":")[2].split(",") if "=" in kv)
    hint = "; cooldown is the fraction of the run spent cooling down, in (0, 1], not a number of updates"
    try:
        cooldown, total = float(keys["cooldown"]), float(keys["total"])
    except (KeyError, ValueError):
        return hint
    if 1 < cooldown < total:
        hint += f" (cooldown={cooldown:g} updates of total={total:g} is cooldown={cooldown / total:.4g})"
    return hint


def rebuild_lrs(
    lr_steps: np.ndarray,
    lr_values: np.ndarray,
    total: int | None = None,
    schedule: str | Schedule | np.ndarray | None = None,
    what: str = "run",
    strict: bool = False,
) -> LRReconstruction:
    """The per-update LR of a run from what is known about it.

    In order: an exact ``schedule`` (spec, config, ``.npy`` path or array; checked against any logged points);
    the logged LR itself when it covers every update ``1..total``; else the best fit of the schedule families
    (:func:`fit_schedule`) to the logged points, falling back to interpolation between them when no family comes
    within :data:`LR_TRUST_BAD` of peak. ``total`` defaults to the last logged step. Logged values that are not
    finite and > 0 are left out with a note, or, with ``strict`` and no ``schedule``, raise :class:`ReadError`.
    """
    lr_steps = np.asarray(lr_steps, dtype=np.int64)
    lr_values = np.asarray(lr_values, dtype=np.float64)
    notes: list[str] = []
    # Exact zeros before the first positive LR (a warm-up from zero) and after the last (a decay to zero) are
    # real LRs: the rule an LR file is held to (schedules.edge_zeros).
    finite = np.isfinite(lr_values) & ((lr_values > 0) | edge_zeros(lr_values))
    if not finite.all():
        i = int(np.argmax(~finite))
        if strict and schedule is None:
            raise ReadError(
                f"{what}: logged LR at step {lr_steps[i]} is {float(lr_values[i]):g}: every LR must be finite and > 0 "
                "(pass --schedule SPEC or --lr-file RUN.lr.npy)"
            )
        notes.append(
            f"{what}: logged LR has {int((~finite).sum())} non-finite or <= 0 value(s) (first at step "
            f"{lr_steps[i]}); ignored them"
        )
        lr_steps, lr_values = lr_steps[finite], lr_values[finite]
    if schedule is not None:
        try:
            if isinstance(schedule, str) and ":" in schedule:
                parsed = parse_schedule(schedule)
                sched: Schedule | None = parsed
                lrs = parsed.lrs()
            else:
                sched = schedule if hasattr(schedule, "lrs") else None  # type: ignore[assignment]
                lrs = as_lrs(schedule)
        except ScheduleError as err:
            raise ReadError(str(err) + _cooldown_hint(str(err), schedule)) from None
        if total is not None and total != len(lrs):
            raise ReadError(f"{what}: the schedule has {len(lrs)} updates but the run's total is {total}")
        rec = LRReconstruction(lrs=lrs, source="schedule", schedule=sched, warnings=notes)
        inside = lr_steps <= len(lrs)
        if inside.any():
            peak = float(lrs.max())
            # the same schedule in other units (a multiplier against absolute LRs): the forecast does not depend
            # on them, so the schedule is checked against the log brought to its units
            scale = float(lr_values[inside].max()) / peak if peak > 0 else 0.0
            units = ""
            if scale > 0 and abs(scale - 1.0) > LR_TRUST_OK:
                lr_values = lr_values / scale
                units = f" (the logged LR brought to the schedule's units, times {1 / scale:.3g})"
            miss = np.abs(_misfit(lrs, lr_steps[inside], lr_values[inside])) / peak
            if units and float(miss.max()) <= LR_TRUST_OK:
                notes.append(
                    f"{what}: the given schedule is the logged LR in other units (times {1 / scale:.3g}); "
                    "the forecast does not depend on the LR's units"
                )
            rec.max_error, rec.rms_error = float(miss.max()), float(np.sqrt(np.mean(miss**2)))
            if rec.max_error > LR_TRUST_OK:
                i = int(np.argmax(miss))
                rec.trusted = rec.max_error <= LR_TRUST_BAD
                notes.append(
                    f"{what}: the given schedule differs from the logged LR by up to {100 * rec.max_error:.1f}% of "
                    f"peak (at step {lr_steps[inside][i]}: schedule {lrs[lr_steps[inside][i] - 1]:.3g}, logged "
                    f"{lr_values[inside][i]:.3g}){units}; check the schedule"
                )
        return rec
    if not len(lr_steps):
        raise ReadError(f"{what}: no LR logged; pass the schedule (--schedule SPEC or --lr-file RUN.lr.npy)")
    last = int(lr_steps[-1])
    total = last if total is None else int(total)
    if total < last:
        raise ReadError(f"{what}: LR logged up to step {last}, past the total of {total} updates")
    if len(lr_steps) == total and lr_steps[0] == 1 and np.all(np.diff(lr_steps) == 1):
        try:
            return LRReconstruction(
                lrs=validate_lrs(lr_values), source="logged", max_error=0.0, rms_error=0.0, warnings=notes
            )
        except ScheduleError as err:
            raise ReadError(f"{what}: logged LR unusable: {err}") from None
    if len(lr_steps) < 3:
        raise ReadError(
            f"{what}: LR logged at only {len(lr_steps)} step(s), too few to rebuild the schedule; pass --schedule SPEC"
        )
    fits = fit_schedule(lr_steps, lr_values, total)
    max_err, rms, sched = fits[0]
    if lr_steps[0] > max(1, 0.01 * total):
        notes.append(
            f"{what}: LR not logged before step {lr_steps[0]}: the LR of the first updates (warm-up) is a guess"
        )
    if max_err <= LR_TRUST_BAD:
        rec = LRReconstruction(
            lrs=sched.lrs(),
            source=f"fit:{sched.spec()}",
            schedule=sched,
            max_error=max_err,
            rms_error=rms,
            trusted=True,
            warnings=notes,
        )
        gap = int(np.median(np.diff(lr_steps))) if len(lr_steps) > 1 else 0
        if max_err > LR_TRUST_OK:
            notes.append(
                f"{what}: LR rebuilt as {sched.spec()} from {len(lr_steps)} points logged every ~{gap} steps; it "
                f"misses them by up to {100 * max_err:.1f}% of peak: pass --schedule SPEC for an exact forecast"
            )
        elif gap > 1:
            # what the log does not show (a warm-up before its first point) is the family's guess: said
            notes.append(
                f"{what}: LR rebuilt as {sched.spec()} from {len(lr_steps)} points logged every ~{gap} steps "
                f"(each within {100 * max_err:.2g}% of peak)"
            )
        if stops_short(lr_steps, total):
            # a live log: what comes after its last LR is the fitted family's continuation, which cannot know of
            # a decay still to come (a WSD run before its cooldown is rebuilt as constant to the end)
            rec.assumed_after = int(last)
            notes.append(
                f"{what}: LR logged up to step {last} of {total}: after it, the rebuilt {sched.kind} schedule is "
                "continued; if the LR decays later than the log shows, pass --schedule SPEC or --lr-file"
            )
        return rec
    # No family fits: interpolate what was logged (from a warm-up before the first log, as for a family).
    peak = float(lr_values.max())
    warm = min(_estimate_warmup(lr_steps, lr_values, peak), int(lr_steps[0]))
    xp, fp = lr_steps.astype(np.float64), lr_values.astype(np.float64)
    if lr_steps[0] > 1:  # from 0 at update 0, reaching the first logged LR at the end of the warm-up
        at = [warm] if 0 < warm < lr_steps[0] else []
        xp = np.r_[0.0, at, xp]
        fp = np.r_[0.0, [lr_values[0]] * len(at), fp]
    grid = np.arange(1, total + 1)
    lrs = np.interp(grid, xp, fp)
    # Between two logged points the LR is off by at most their difference: dense logs of a shape no family
    # knows (a two-stage cooldown) are close; a sparse log across a sharp drop is a guess, and says so loudly
    # (the warm-up's rise is left out: a linear warm-up is interpolated exactly).
    after = lr_values[int(np.argmax(lr_values >= 0.98 * peak)) :]
    jump = float(np.max(np.abs(np.diff(after)))) / peak if len(after) > 1 else 1.0
    hold = f" and holding the last value from step {last} to {total}" if total > last else ""
    trusted = jump <= LR_TRUST_BAD and not hold
    if trusted:
        notes.append(
            f"{what}: LR interpolated between the {len(lr_steps)} logged points (no known schedule family fits "
            f"them; consecutive ones differ by at most {100 * jump:.1f}% of peak)"
        )
    else:
        notes.append(
            f"{what}: LR CANNOT BE TRUSTED: no known schedule family fits the {len(lr_steps)} logged LR points "
            f"(best, {sched.spec()}, misses by {100 * max_err:.0f}% of peak); using linear interpolation between "
            f"them{hold}: pass --schedule SPEC or --lr-file"
        )
    return LRReconstruction(
        lrs=validate_lrs(lrs),
        source="interpolated",
        schedule=None,
        max_error=0.0,
        rms_error=0.0,
        trusted=trusted,
        warnings=notes,
        assumed_after=int(last) if total > last else None,
    )
