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
