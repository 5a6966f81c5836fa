"""Events: JSON safety, text form, the raise action's exception and the logger."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from scaleforecast.events import Event, TrainingHealthError, log_event


def test_event_is_json_safe_with_numpy_and_nonfinite_values() -> None:
    ev = Event(
        kind="spike",
        step=12,
        severity="critical",
        score=float("inf"),
        message="m",
        data={"arr": np.arange(3), "x": np.float64(np.nan), "nested": {"y": (1, 2.5)}},
    )
    dumped = json.dumps(ev.model_dump(mode="json"))
    back = Event.model_validate(json.loads(dumped))
    assert back.data["arr"] == [0, 1, 2]
    assert back.data["x"] == "nan"
    assert back.score == "inf"
    assert back.text() == "[critical] spike @ step 12: m"


def test_severity_is_validated() -> None:
    with pytest.raises(ValueError):
        Event(kind="spike", step=1, severity="fatal", message="m")  # type: ignore[arg-type]


def test_training_health_error_carries_the_event() -> None:
    ev = Event(kind="divergence", step=7, severity="critical", message="loss rising")
    err = TrainingHealthError(ev)
    assert err.event is ev
    assert "divergence @ step 7" in str(err)


def test_log_event_uses_the_severity_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="scaleforecast.health"):
        log_event(Event(kind="spike", step=3, severity="critical", message="big"))
        log_event(Event(kind="schedule_advice", step=4, severity="info", message="fyi"))
        log_event(Event(kind="early_stop", step=5, severity="critical", message="cannot reach 3.1"))
        log_event(Event(kind="spike", step=6, severity="warning", message="4.2 sigma"))
        log_event(Event(kind="drift", step=7, severity="warning", message="off the law"))
    levels = [r.levelno for r in caplog.records]
    # a stop is the rule at work, not a failure of the run; a single spike is not a warning on the console
    assert levels == [logging.ERROR, logging.INFO, logging.WARNING, logging.INFO, logging.WARNING]
