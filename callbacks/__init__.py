"""Thin adapters from training frameworks (Lightning, Hugging Face Trainer) to the core forecaster.

``LossForecast`` (Lightning) and ``HFLossForecast`` (transformers) are imported on first access, so that
using one framework never imports the other.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scaleforecast.callbacks.hf import HFLossForecast
    from scaleforecast.callbacks.lightning import LossForecast

__all__ = ["HFLossForecast", "LossForecast"]

_LAZY = {"LossForecast": "scaleforecast.callbacks.lightning", "HFLossForecast": "scaleforecast.callbacks.hf"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
