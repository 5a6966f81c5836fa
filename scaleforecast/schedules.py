"""Learning-rate schedules as per-update LR arrays, their string form, and LR validation.

Every schedule is a pydantic config with ``peak`` (LR at the end of warm-up), ``total`` (number of optimizer
updates) and ``warmup`` (linear warm-up length). ``.lrs()`` returns a float64 array of length ``total`` whose
element ``k`` is the LR used by update ``k + 1``:

* warm-up, updates ``i = 1..warmup``: ``lr_i = peak * i / warmup`` (so update ``warmup`` runs at ``peak``);
* then the shape, over the remaining ``n = total - warmup`` updates, with local index ``j = 0..n-1`` and
  progress ``p = j / n`` (the first post-warm-up update runs at ``peak``; the last one stays just above
  ``final``, never at an LR of exactly zero).

The string form used on the command line is ``kind:key=value,...``, e.g.
``wsd:peak=1e-3,warmup=300,total=25000,cooldown=0.2,shape=linear``; list values (step milestones) are
separated by ``/``.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "MAX_TOTAL_STEPS",
    "ConstantSchedule",
    "CosineSchedule",
    "InvSqrtSchedule",
    "LinearSchedule",
    "Schedule",
    "ScheduleError",
    "StepSchedule",
    "WSDSchedule",
    "as_lrs",
    "load_lr_file",
    "parse_schedule",
    "schedule_from_dict",
    "validate_lrs",
]


class ScheduleError(ValueError):
    """A schedule spec or an LR array that cannot be used; the message says what and where."""


# Longer schedules would not fit in memory as per-update arrays (8 bytes an update, several arrays per fit).
MAX_TOTAL_STEPS = 100_000_000


def _fmt(value: float) -> str:
    """A short number for people (``0.001``, ``0.2``, ``25000``); not exact (see :func:`_exact`)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.3g}"


def _exact(value: float) -> str:
    """The shortest text that reads back to exactly ``value`` (``0.001``, ``3e-4``, ``0.00031234567890123``)."""
    v = float(value)
    if v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    mantissa, e, exponent = repr(v).partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


class _ScheduleBase(BaseModel):
    """Fields and behaviour shared by every schedule: warm-up, total, peak, the string form."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    peak: float = Field(gt=0, allow_inf_nan=False, description="LR at the end of warm-up")
    total: int = Field(gt=0, description="number of optimizer updates in the run")
    warmup: int = Field(default=0, ge=0, description="linear warm-up length in updates")

    _label: ClassVar[str] = "schedule"

    @field_validator("total")
    @classmethod
    def _check_total(cls, v: int) -> int:
        if v > MAX_TOTAL_STEPS:
            raise ValueError(
                f"{v} updates is more than this tool holds in memory (at most {MAX_TOTAL_STEPS})"
            )
        return v

    @model_validator(mode="after")
    def _check_warmup(self) -> _ScheduleBase:
        if self.warmup >= self.total:
            raise ValueError(f"warmup ({self.warmup}) must be smaller than total ({self.total})")
        return self

    def lrs(self) -> np.ndarray:
        """Per-update LR: float64, length ``total``, element ``k`` = LR of update ``k + 1``."""
        w = self.warmup
        out = np.empty(self.total, dtype=np.float64)
        if w:
            out[:w] = self.peak * np.arange(1, w + 1, dtype=np.float64) / w
        n = self.total - w
        out[w:] = self._shape(n)
        return out

    def _shape(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def _extra_spec(self) -> list[tuple[str, str]]:
        return []

    def spec(self) -> str:
        """The string form, ``kind:key=value,...``, that :func:`parse_schedule` reads back to an equal config
        (numbers are written exactly: ``parse_schedule(s.spec()) == s``)."""
        items = [("peak", _exact(self.peak)), ("total", str(self.total))]
        if self.warmup:
            items.append(("warmup", str(self.warmup)))
        items += self._extra_spec()
        kind = self.kind  # type: ignore[attr-defined]
        return f"{kind}:" + ",".join(f"{k}={v}" for k, v in items)

    def _shape_text(self) -> str:
        return self._label

    def describe(self) -> str:
        """One line for humans: shape, peak, warm-up and length."""
        warm = f", {self.warmup} warm-up" if self.warmup else ""
        return f"{self._shape_text()}, peak {_fmt(self.peak)}{warm}, {self.total} updates"


class _DecayToFinal(_ScheduleBase):
    final: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="absolute LR the decay heads to")

    @model_validator(mode="after")
    def _check_final(self) -> _DecayToFinal:
        if self.final > self.peak:
            raise ValueError(f"final ({_fmt(self.final)}) must not exceed peak ({_fmt(self.peak)})")
        return self

    def _extra_spec(self) -> list[tuple[str, str]]:
        return [("final", _exact(self.final))] if self.final else []


class ConstantSchedule(_ScheduleBase):
    """Warm-up, then ``peak`` for every remaining update."""

    kind: Literal["constant"] = "constant"
    _label: ClassVar[str] = "constant"

    def _shape(self, n: int) -> np.ndarray:
        return np.full(n, self.peak, dtype=np.float64)


class CosineSchedule(_DecayToFinal):
    """Warm-up, then ``lr = final + (peak - final) * (1 + cos(pi * p)) / 2`` with ``p = j / n``."""

    kind: Literal["cosine"] = "cosine"

    def _shape(self, n: int) -> np.ndarray:
        p = np.arange(n, dtype=np.float64) / n
        return self.final + (self.peak - self.final) * 0.5 * (1.0 + np.cos(np.pi * p))

    def _shape_text(self) -> str:
        return f"cosine to {_fmt(self.final)}"


class LinearSchedule(_DecayToFinal):
    """Warm-up, then ``lr = peak + (final - peak) * p`` with ``p = j / n``."""

    kind: Literal["linear"] = "linear"

    def _shape(self, n: int) -> np.ndarray:
        p = np.arange(n, dtype=np.float64) / n
        return self.peak + (self.final - self.peak) * p

    def _shape_text(self) -> str:
        return f"linear decay to {_fmt(self.final)}"


class WSDSchedule(_DecayToFinal):
    """Warm-up, stable at ``peak``, then a cooldown over the last ``round(cooldown * total)`` updates.

    With cooldown progress ``q = j / n_cd`` (``j = 0..n_cd-1``) the cooldown LR is ``final + (peak - final) * f(q)``
    with ``f = 1 - q`` (linear), ``1 - sqrt(q)`` (1-sqrt) or ``(1 + cos(pi q)) / 2`` (cosine); the ``exp`` shape
    decays geometrically, ``peak * (final / peak) ** q``, and needs ``final > 0``.
    """

    kind: Literal["wsd"] = "wsd"
    cooldown: float = Field(
        gt=0, le=1, allow_inf_nan=False, description="fraction of total spent cooling down"
    )
    shape: Literal["linear", "1-sqrt", "exp", "cosine"] = "linear"

    @field_validator("shape", mode="before")
    @classmethod
    def _alias_shape(cls, v: Any) -> Any:
        aliases = {"1_sqrt": "1-sqrt", "sqrt": "1-sqrt", "exponential": "exp", "cos": "cosine"}
        return aliases.get(v, v) if isinstance(v, str) else v

    @property
    def cooldown_steps(self) -> int:
        """Number of updates in the cooldown (at least 1)."""
        return max(1, round(self.cooldown * self.total))

    @model_validator(mode="after")
    def _check_cooldown(self) -> WSDSchedule:
        if self.cooldown_steps > self.total - self.warmup:
            raise ValueError(
                f"cooldown of {self.cooldown_steps} updates does not fit after a {self.warmup}-update warm-up "
                f"in {self.total} updates"
            )
        if self.shape == "exp" and self.final <= 0:
            raise ValueError("shape=exp decays geometrically and needs final > 0")
        return self

    def _shape(self, n: int) -> np.ndarray:
        ncd = self.cooldown_steps
        out = np.full(n, self.peak, dtype=np.float64)
        q = np.arange(ncd, dtype=np.float64) / ncd
        if self.shape == "linear":
            f = 1.0 - q
        elif self.shape == "1-sqrt":
            f = 1.0 - np.sqrt(q)
        elif self.shape == "cosine":
            f = 0.5 * (1.0 + np.cos(np.pi * q))
        else:
            out[n - ncd :] = self.peak * (self.final / self.peak) ** q
            return out
        out[n - ncd :] = self.final + (self.peak - self.final) * f
        return out

    def _extra_spec(self) -> list[tuple[str, str]]:
        return [("cooldown", _exact(self.cooldown)), ("shape", self.shape), *super()._extra_spec()]

    def _shape_text(self) -> str:
        return f"WSD, {self.shape} cooldown over the last {_fmt(100 * self.cooldown)}% to {_fmt(self.final)}"


class StepSchedule(_ScheduleBase):
    """Warm-up, then ``peak * gamma ** (number of milestones m with m < i)`` for update ``i``.

    A milestone ``m`` is an update count: updates ``1..m`` run at the old LR, update ``m + 1`` at the new one
    (PyTorch ``MultiStepLR`` stepped once per update).
    """

    kind: Literal["step"] = "step"
    milestones: list[int] = Field(min_length=1)
    gamma: float = Field(default=0.1, gt=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check_milestones(self) -> StepSchedule:
        ms = self.milestones
        if np.any(np.diff(ms) <= 0):
            raise ValueError(f"milestones must be strictly increasing, got {ms}")
        if ms[0] < self.warmup or ms[-1] >= self.total:
            raise ValueError(f"milestones must lie in [warmup={self.warmup}, total={self.total}), got {ms}")
        return self

    def _shape(self, n: int) -> np.ndarray:
        i = np.arange(self.warmup + 1, self.total + 1)
        drops = np.searchsorted(np.asarray(self.milestones), i, side="left")
        return self.peak * self.gamma ** drops.astype(np.float64)

    def _extra_spec(self) -> list[tuple[str, str]]:
        return [("milestones", "/".join(str(m) for m in self.milestones)), ("gamma", _exact(self.gamma))]

    def _shape_text(self) -> str:
        ms = ", ".join(str(m) for m in self.milestones)
        return f"step decay x{_fmt(self.gamma)} after updates {ms}"


class InvSqrtSchedule(_ScheduleBase):
    """Warm-up, then ``lr = peak * sqrt(tau / (tau + j))``; ``tau`` = ``timescale``, by default ``max(warmup, 1)``."""

    kind: Literal["inv_sqrt"] = "inv_sqrt"
    timescale: int | None = Field(default=None, gt=0)

    @property
    def tau(self) -> int:
        """The timescale actually used."""
        return self.timescale if self.timescale is not None else max(self.warmup, 1)

    def _shape(self, n: int) -> np.ndarray:
        j = np.arange(n, dtype=np.float64)
        return self.peak * np.sqrt(self.tau / (self.tau + j))

    def _extra_spec(self) -> list[tuple[str, str]]:
        return [("timescale", str(self.timescale))] if self.timescale is not None else []

    def _shape_text(self) -> str:
        return f"inverse-sqrt decay (timescale {self.tau})"


Schedule = Annotated[
    ConstantSchedule | CosineSchedule | LinearSchedule | WSDSchedule | StepSchedule | InvSqrtSchedule,
    Field(discriminator="kind"),
]
"""Any schedule config, discriminated by ``kind``."""

SCHEDULE_TYPES: tuple[type[_ScheduleBase], ...] = (
    ConstantSchedule,
    CosineSchedule,
    LinearSchedule,
    WSDSchedule,
    StepSchedule,
    InvSqrtSchedule,
)
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Schedule)
_TYPES_BY_KIND = {t.model_fields["kind"].default: t for t in SCHEDULE_TYPES}

_KIND_ALIASES = {
    "const": "constant",
    "cos": "cosine",
    "invsqrt": "inv_sqrt",
    "inv-sqrt": "inv_sqrt",
    "rsqrt": "inv_sqrt",
    "multistep": "step",
    "multi_step": "step",
    "linear_decay": "linear",
    "trapezoidal": "wsd",
}
_KINDS = tuple(_TYPES_BY_KIND)


def _error_text(err: ValidationError, kind: str) -> str:
    allowed = ", ".join(f for f in _TYPES_BY_KIND[kind].model_fields if f != "kind")
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        if loc and loc[0] == kind:
            loc = loc[1:]
        where = ".".join(loc)
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r} (allowed: {allowed})")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def schedule_from_dict(data: dict[str, Any]) -> Schedule:
    """Build a schedule from a mapping with a ``kind`` key; raises :class:`ScheduleError` with a readable message."""
    data = dict(data)
    kind = str(data.get("kind", "")).strip().lower()
    data["kind"] = _KIND_ALIASES.get(kind, kind)
    if data["kind"] not in _KINDS:
        raise ScheduleError(f"unknown schedule kind {kind!r}; expected one of {', '.join(_KINDS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ScheduleError(f"bad {data['kind']} schedule: {_error_text(err, data['kind'])}") from None


def _value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("none", "null", ""):
        return None
    if "/" in t or ";" in t:
        return [_value(x) for x in t.replace(";", "/").split("/") if x.strip()]
    try:
        v = float(t)
    except ValueError:
        return t
    # Keep integers integral so that "25000" and "2.5e4" both reach int fields exactly.
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


def parse_schedule(spec: str) -> Schedule:
    """Parse ``kind:key=value,...`` (e.g. ``cosine:peak=6e-4,warmup=700,total=19560``) into a schedule config.

    Kinds: constant, cosine, linear, wsd, step, inv_sqrt (aliases: cos, invsqrt, multistep, ...). List values
    use ``/``: ``step:peak=1e-3,total=1000,milestones=500/800,gamma=0.1``. Raises :class:`ScheduleError` with a
    one-line message naming the bad key on any malformed spec.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ScheduleError(
            f"bad schedule spec {spec!r}: expected 'kind:key=value,...', "
            "e.g. 'cosine:peak=1e-3,warmup=100,total=10000'"
        )
    kind, _, body = spec.partition(":")
    data: dict[str, Any] = {"kind": kind}
    for item in body.split(","):
        if not item.strip():
            continue
        key, eq, val = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not eq or not key:
            raise ScheduleError(f"bad schedule spec {spec!r}: item {item.strip()!r} is not key=value")
        if key in data:
            raise ScheduleError(f"bad schedule spec {spec!r}: key {key!r} given twice")
        data[key] = _value(val)
    if "milestones" in data and not isinstance(data["milestones"], list) and data["milestones"] is not None:
        data["milestones"] = [data["milestones"]]
    try:
        return schedule_from_dict(data)
    except ScheduleError as err:
        raise ScheduleError(f"{err} (spec {spec!r})") from None


def edge_zeros(lrs: np.ndarray) -> np.ndarray:
    """Mask of the exact zeros before the first positive LR and after the last (a warm-up that starts from zero,
    a decay that ends at zero): the only non-positive LRs a schedule may hold."""
    a = np.asarray(lrs, dtype=np.float64)
    positive = np.flatnonzero(a > 0)
    if not positive.size:
        return np.zeros(a.shape, dtype=bool)
    idx = np.arange(a.size)
    return (a == 0) & ((idx < positive[0]) | (idx > positive[-1]))


def validate_lrs(lrs: ArrayLike) -> np.ndarray:
    """Check a per-update LR array and return it as a 1-D float64 copy.

    Rules: non-empty, one-dimensional, every value finite and ``> 0``; exact ``0`` is allowed before the first
    positive LR (a warm-up that starts from zero) and after the last one (a decay that ends at zero, as torch's
    cosine and linear schedulers do, or that reaches it before the run ends and stays there), never between
    positive LRs. Raises :class:`ScheduleError` naming the first bad index (0-based; update = index + 1).
    """
    raw = np.asarray(lrs) if isinstance(lrs, np.ndarray) else None
    if raw is not None and raw.dtype.names:
        raise ScheduleError(
            f"LR array is a structured array (fields {', '.join(raw.dtype.names)}); expected one number per update"
        )
    if raw is not None and raw.dtype.kind not in "biuf":
        raise ScheduleError(f"LR array holds {raw.dtype} values; expected one number per update")
    try:
        arr = np.array(lrs, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ScheduleError("LR array is not numeric: expected one number per update") from None
    if arr.ndim != 1:
        raise ScheduleError(f"LR array must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ScheduleError("LR array is empty")
    bad_finite = ~np.isfinite(arr)
    if bad_finite.any():
        i = int(np.argmax(bad_finite))
        raise ScheduleError(f"LR at index {i} (update {i + 1}) is {float(arr[i])!r}: every LR must be finite")
    bad = (arr <= 0) & ~edge_zeros(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise ScheduleError(
            f"LR at index {i} (update {i + 1}) is {float(arr[i])!r}: every LR must be > 0 "
            "(exact zeros are allowed only before the first positive LR and after the last)"
        )
    return arr


def as_lrs(schedule: str | _ScheduleBase | dict[str, Any] | ArrayLike) -> np.ndarray:
    """One entry point from any schedule description to a validated per-update LR array.

    Accepts a spec string (``kind:key=value,...``), a path to a ``.npy`` file, a schedule config, a mapping
    with ``kind``, or an array of per-update LRs.
    """
    if isinstance(schedule, str):
        if schedule.endswith(".npy") and ":" not in schedule.split(os.sep)[-1]:
            return load_lr_file(schedule)
        return validate_lrs(parse_schedule(schedule).lrs())
    if isinstance(schedule, _ScheduleBase):
        return validate_lrs(schedule.lrs())
    if isinstance(schedule, dict):
        return validate_lrs(schedule_from_dict(schedule).lrs())
    return validate_lrs(schedule)


def load_lr_file(path: str | os.PathLike[str]) -> np.ndarray:
    """The per-update LR stored in a ``.npy`` file (one-dimensional, numeric, no pickles), validated by
    :func:`validate_lrs`; every problem is a one-line :class:`ScheduleError` that names the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
        if head[:2] != b"PK" and head != b"\x93NUMPY":
            # np.load reads any other file as a pickle, and refuses it as "pickled (object) data"
            raise ScheduleError(
                f"LR file {path}: not a .npy array (no .npy header: a text or CSV file? write the LRs with "
                "numpy.save)"
            )
        arr = np.load(path, allow_pickle=False)
    except ScheduleError:
        raise
    except OSError as err:
        raise ScheduleError(f"cannot read LR file {path}: {err.strerror or err}") from None
    except (ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ScheduleError(f"LR file {path}: not a .npy array ({reason})") from None
    if not isinstance(arr, np.ndarray):
        raise ScheduleError(f"LR file {path}: not a .npy array (an .npz archive?)")
    try:
        return validate_lrs(arr)
    except ScheduleError as err:
        raise ScheduleError(f"{err} (LR file {path})") from None
