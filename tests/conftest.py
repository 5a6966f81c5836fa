"""Shared fixtures: the real curves folder (skips when it is absent), and the two-process adapter runs."""

from __future__ import annotations

import json
import sys
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


def framework_or_skip(adapter: str) -> None:
    """Skip when the framework an adapter needs is not installed."""
    need = {"lightning": "lightning.pytorch", "hf": "transformers", "loop": "torch"}[adapter]
    pytest.importorskip(need)
    pytest.importorskip("torch")


class TwoRanks:
    """What one two-process run of ``adapter_worker.py`` left: each rank's record per scenario, and the output."""

    def __init__(self, adapter: str, out: Path, stdout: str, stderr: str) -> None:
        self.adapter, self.out, self.stdout, self.stderr = adapter, out, stdout, stderr

    def ranks(self, scenario: str) -> tuple[dict, dict]:
        return tuple(json.loads((self.out / f"{scenario}-rank{r}.json").read_text()) for r in (0, 1))  # type: ignore[return-value]

    def parent(self, scenario: str) -> dict | None:
        path = self.out / f"{scenario}-parent.json"
        return json.loads(path.read_text()) if path.is_file() else None


@pytest.fixture(scope="session", params=["lightning", "hf", "loop"])
def two_ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TwoRanks:
    """The two-process scenarios of ``adapter_worker.py`` for one adapter, run once and shared by the tests.

    Lightning launches its own two workers (``ddp_fork``, so the launching process is checked too); the HF
    Trainer and the plain loop run under ``torchrun``. Real processes, gloo on CPU, in their own process group,
    killed together on timeout.
    """
    from procs import TESTS, run_group, torchrun

    adapter = request.param
    framework_or_skip(adapter)
    pytest.importorskip("optuna")
    out = tmp_path_factory.mktemp(f"two-ranks-{adapter}")
    worker = TESTS / "adapter_worker.py"
    args = ("--adapter", adapter, "--out", str(out))
    cmd = [sys.executable, str(worker), *args] if adapter == "lightning" else torchrun(worker, *args)
    proc = run_group(cmd, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return TwoRanks(adapter, out, proc.stdout, proc.stderr)


# ------------------------------------------------------------------------------------------------ test tiers
# `make test` runs every test; `make test-fast` leaves out two kinds (markers declared in pyproject.toml):
#   trainer       training through an adapter: a real Lightning or Hugging Face Trainer fit, a plain loop;
#   multiprocess  processes working together: torch.distributed, torchrun, Ray, multiprocessing workers, the
#                 watch sidecar beside a live writer.
# The adapter suites (every test fits a Trainer or a training loop) and the fixtures that start processes are
# marked here; a test of another module carries its marker itself.
TRAINER_MODULES = frozenset({"test_adapters", "test_lightning", "test_hf"})
MULTIPROCESS_FIXTURES = frozenset({"two_ranks"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "").rpartition(".")[2]
        if module in TRAINER_MODULES:
            item.add_marker(pytest.mark.trainer)
        if MULTIPROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.multiprocess)
