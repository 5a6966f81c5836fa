"""The package's public surface: what ``import scaleforecast`` offers and costs, strict configuration models,
and the usage examples in the docstrings, run as doctests."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import subprocess
import sys

import pydantic
import pytest
from scaleforecast.integrations.arguments import SessionConfig

import scaleforecast
from scaleforecast.advice import AdviceConfig
from scaleforecast.detectors import (
    DriftConfig,
    GradNormConfig,
    HealthConfig,
    NonFiniteConfig,
    SpikeConfig,
    StagnationConfig,
)
from scaleforecast.fitting import FitConfig
from scaleforecast.forecaster import ForecasterConfig
from scaleforecast.lawcheck import LawCheckConfig
from scaleforecast.monitor import StopConfig
from scaleforecast.priors import AnnealingPrior

CORE_MODULES = sorted(
    f"scaleforecast.{m.name}" for m in pkgutil.iter_modules(scaleforecast.__path__) if not m.ispkg
)
# installed from callbacks/ and integrations/, not found under scaleforecast.__path__: listed with the framework
# each one needs
ADAPTER_MODULES = {
    "scaleforecast.callbacks.loop": "torch",
    "scaleforecast.callbacks.lightning": "lightning",
    "scaleforecast.callbacks.hf": "transformers",
    "scaleforecast.integrations.optuna": "optuna",
    "scaleforecast.integrations.ray": "ray",
}
DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.IGNORE_EXCEPTION_DETAIL


def test_exports_resolve() -> None:
    for name in scaleforecast.__all__:
        assert getattr(scaleforecast, name) is not None, name


def test_import_stays_light() -> None:
    code = (
        "import sys, scaleforecast\n"
        "heavy = [m for m in ('torch', 'scipy.stats', 'scipy.optimize', 'matplotlib', 'tensorboard')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("model", "misspelt"),
    [
        (FitConfig, {"lamda": 0.99}),
        (ForecasterConfig, {"levle": 0.9}),
        (StopConfig, {"target": 3.1}),
        (AdviceConfig, {"cooldown": [0.1]}),
        (HealthConfig, {"debounce": 10}),
        (NonFiniteConfig, {"patiance": 3}),
        (SpikeConfig, {"treshold": 5.0}),
        (DriftConfig, {"treshold": 5.0}),
        (StagnationConfig, {"window_steps": 10}),
        (GradNormConfig, {"growth_factor": 2.0}),
        (LawCheckConfig, {"levels": 0.9}),
        (SessionConfig, {"flush_evry": 10}),
    ],
)
def test_config_rejects_misspelt_key(model: type[pydantic.BaseModel], misspelt: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        model(**misspelt)


def test_prior_rejects_misspelt_key() -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        AnnealingPrior(kappa_mean=0.05, kappa_sd=0.02, kappa_std=0.01)


def _public_classes() -> list[type]:
    return [obj for name in scaleforecast.__all__ if inspect.isclass(obj := getattr(scaleforecast, name))]


@pytest.mark.parametrize("cls", _public_classes(), ids=lambda c: c.__name__)
def test_public_class_opens_with_an_example(cls: type) -> None:
    doc = inspect.getdoc(cls) or ""
    paragraphs = doc.split("\n\n")
    assert len(paragraphs) > 1 and paragraphs[1].startswith(">>>"), (
        f"{cls.__name__}: the docstring's summary should be followed by a usage example"
    )


@pytest.mark.parametrize("module", ["scaleforecast", *CORE_MODULES, *ADAPTER_MODULES])
def test_docstring_examples_run(module: str) -> None:
    if module in ADAPTER_MODULES:
        pytest.importorskip(ADAPTER_MODULES[module])
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=DOCTEST_FLAGS, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {module}"
    # a module that shows examples must have them collected and run, not silently pass with none
    assert result.attempted > 0 or ">>>" not in inspect.getsource(mod), f"no example of {module} was run"
