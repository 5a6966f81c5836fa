"""Thin adapters from training frameworks to the shared training session
(:mod:`scaleforecast.integrations.session`): ``LossForecast`` (Lightning), ``HFLossForecast`` (HF ``Trainer``)
and ``LossForecastSession`` (plain PyTorch loops).

Each is imported on first access, so that using one framework never imports another.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scaleforecast.callbacks.hf import HFLossForecast
    from scaleforecast.callbacks.lightning import LossForecast
    from scaleforecast.callbacks.loop import LossForecastSession

__all__ = ["HFLossForecast", "LossForecast", "LossForecastSession"]

_LAZY = {
    "LossForecast": "scaleforecast.callbacks.lightning",
    "HFLossForecast": "scaleforecast.callbacks.hf",
    "LossForecastSession": "scaleforecast.callbacks.loop",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
