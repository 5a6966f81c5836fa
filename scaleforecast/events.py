"""Health events: what the detectors, the schedule advisor, the sweep listeners and the stop rule report.

An :class:`Event` is a small pydantic record (JSON-safe) that leaves the process through the sinks
(TensorBoard text and scalars), the Python logger and an optional user ``on_event`` hook. What a *critical*
event does to the run is decided in one place, the ``action`` of :class:`scaleforecast.monitor.StopConfig`:
``warn`` (report only), ``stop`` (stop training gracefully) or ``raise`` (raise :class:`TrainingHealthError`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

Severity = Literal["info", "warning", "critical"]

SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}

# What went wrong with the run itself (the detectors' and the law check's kinds), as opposed to what the plugin
# decided or advises (early_stop, schedule_advice, schedule): the forecast figure marks these.
HEALTH_KINDS = frozenset(
    {"nonfinite", "spike", "divergence", "drift", "stagnation", "grad_norm", "stale", "data_anomaly"}
)


class Event(BaseModel):
    """One health or advice event at optimizer step ``step`` (updates completed, 1-based).

    >>> from scaleforecast import Event
    >>> event = Event(kind="spike", step=120, score=float("nan"), message="loss spike at step 120")
    >>> event.severity, event.score  # non-finite floats are kept as text: the record stays JSON-safe
    ('warning', 'nan')

    ``score`` is the detector's statistic in its own units (a robust z-score for spikes, a CUSUM sum for
    drift, a predicted loss gain for advice); ``data`` holds JSON-safe details (floats, ints, strings,
    lists). Non-finite floats in ``score``/``data`` are stored as strings so the record stays JSON-safe.
    """

    kind: str
    step: int
    severity: Severity = "warning"
    score: float | str | None = None
    message: str
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("score", mode="before")
    @classmethod
    def _finite_score(cls, value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value

    @field_validator("data", mode="before")
    @classmethod
    def _json_safe_data(cls, value: Any) -> Any:
        return _json_safe(value) if value is not None else {}

    @property
    def is_critical(self) -> bool:
        return self.severity == "critical"

    def text(self) -> str:
        """One line for logs and TensorBoard text: ``[severity] kind @ step: message``."""
        return f"[{self.severity}] {self.kind} @ step {self.step}: {self.message}"


class TrainingHealthError(RuntimeError):
    """Raised by the ``raise`` action when a critical health event fires; ``.event`` holds it.

    >>> from scaleforecast import Event, TrainingHealthError
    >>> error = TrainingHealthError(Event(kind="divergence", step=900, severity="critical", message="diverged"))
    >>> error.event.step
    900
    """

    def __init__(self, event: Event) -> None:
        super().__init__(event.text())
        self.event = event


def _json_safe(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and non-finite floats into JSON-safe Python values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}


def event_level(event: Event) -> int:
    """The logging level of ``event``: its severity's, but for an early stop, critical so that the run acts on
    it, which is the stop rule at work (a target out of reach, a sweep's pruning), not a failure of the run: a
    warning; and a single loss spike, which is information (the run recovers from most; a per-step loss of a
    real pre-training run shows one every few hundred steps): INFO, while TensorBoard shows and counts each."""
    if event.kind == "early_stop":
        return logging.WARNING
    if event.kind == "spike" and event.severity == "warning":
        return logging.INFO
    return _LEVELS[event.severity]


def log_event(event: Event, logger: logging.Logger | None = None, level: int | None = None) -> None:
    """Write ``event`` to the Python logger (``scaleforecast.health`` by default) at ``level``, default
    :func:`event_level`."""
    (logger or logging.getLogger("scaleforecast.health")).log(
        event_level(event) if level is None else level, event.text()
    )
