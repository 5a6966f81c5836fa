"""Shared fixtures: the real curves folder (skips when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _find_curves() -> Path | None:
    for c in (REPO.parent / "shared" / "curves", Path("/work/shared/curves")):
        if (c / "index.csv").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def curves_dir() -> Path:
    """The folder of real curves (``../shared/curves`` from the repo root, else ``/work/shared/curves``)."""
    found = _find_curves()
    if found is None:
        pytest.skip("real curves folder (../shared/curves) not found")
    return found


# ------------------------------------------------------------------------------------------------ test tiers
# `make test` runs every test; `make test-fast` leaves out two kinds (markers declared in pyproject.toml):
#   trainer       a real Lightning or Hugging Face Trainer fit;
#   multiprocess  a test that starts other processes (torch.distributed, torchrun, Ray, multiprocessing, a CLI).
# Modules that hold nothing else, and fixtures that start processes, are marked here; a test of another module
# carries its marker itself.
TRAINER_MODULES = frozenset({"test_lightning", "test_hf", "test_health_callbacks", "test_adapters"})
MULTIPROCESS_MODULES = frozenset({"test_lightning_ddp", "test_hf_torchrun"})
MULTIPROCESS_FIXTURES = frozenset({"two_ranks"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "").rpartition(".")[2]
        if module in TRAINER_MODULES:
            item.add_marker(pytest.mark.trainer)
        if module in MULTIPROCESS_MODULES or MULTIPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.multiprocess)
