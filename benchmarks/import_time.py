"""What ``import scaleforecast`` costs: wall and CPU time of the import in a fresh interpreter, and the heavy
modules it pulls in. Target: under 0.5 s on an idle machine (CPU time is the steadier figure on a busy one).

    python benchmarks/import_time.py [--runs 7]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys

TARGETS = {
    "import scaleforecast": "import scaleforecast",
    "import scaleforecast.cli": "import scaleforecast.cli",
    "numpy + pydantic (floor)": "import numpy, pydantic",
    "numpy + pydantic + scipy.special": "import numpy, pydantic, scipy.special",
}
HEAVY = ("scipy.stats", "scipy.signal", "scipy.optimize", "torch", "tensorboard", "matplotlib")


def _run(code: str, startup: frozenset[str] = frozenset()) -> tuple[float, float, set[str]]:
    """(wall seconds of the imports ``-X importtime`` reports for ``code``, CPU seconds of the interpreter, the
    top-level modules imported)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    wall, names = 0.0, set()
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2]
        # Top-level imports have one space before the name, nested ones more; what the interpreter loads before
        # running any code is not the import's cost.
        if name.startswith("  ") or name.strip() in startup:
            continue
        names.add(name.strip())
        wall += int(parts[1]) / 1e6
    return wall, cpu, names


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    base = [_run("pass") for _ in range(args.runs)]
    base_cpu = min(c for _, c, _ in base)
    startup = frozenset(base[0][2])
    print(f"{'what':<36} {'wall (median)':>14} {'wall (best)':>12} {'CPU (median)':>13}")
    for label, code in TARGETS.items():
        runs = [_run(code, startup) for _ in range(args.runs)]
        walls = [w for w, _, _ in runs]
        cpus = [c - base_cpu for _, c, _ in runs]
        print(
            f"{label:<36} {statistics.median(walls):>13.3f}s {min(walls):>11.3f}s {statistics.median(cpus):>12.3f}s"
        )
    probe = f"import sys, scaleforecast; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"heavy modules loaded by `import scaleforecast`: {loaded or 'none'}")


if __name__ == "__main__":
    main()
