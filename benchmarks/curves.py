"""Load the real curves in ``shared/curves`` (and the tiny-model curves made here) and split them into halves.

Two roots share one layout (``index.csv`` plus ``<folder>/<run>.{csv,json,lr.npy}``): ``shared/curves`` (found by
:func:`default_root`) and ``benchmarks/curves_tiny`` (:data:`TINY_ROOT`, written by ``make_curves.py``: tiny
transformers trained on this CPU with other optimizers, LR units and schedules, some of them law-breaking).
``load_curves(root)`` takes one root or several; with no root it loads the default root plus any roots named in
``SCALEFORECAST_EXTRA_CURVES`` (``os.pathsep``-separated; ``tiny`` names :data:`TINY_ROOT`).

The split is grouped: runs that share a trunk (cooldown branches of one long run), a replicate group (same
config, another seed) or a declared shared prefix always land in the same half, so that no half can learn the
other's early curve. It is deterministic (no random state) and balanced per source folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["TINY_ROOT", "Curve", "default_root", "load_curves", "split_curves"]

TINY_ROOT = Path(__file__).resolve().parent / "curves_tiny"
"""The committed tiny-model curves (``benchmarks/make_curves.py``)."""


@dataclass(frozen=True)
class Curve:
    """One complete run: its logged losses (NaN where a column was not logged) and the LR of every update.

    ``steps`` are optimizer updates completed; ``lrs[k]`` is the LR of update ``k + 1`` (the file's own
    convention is kept for ``mpl_luo2025``, at most one step of shift). ``group`` is the split group key.
    """

    run_id: str
    folder: str
    shape: str
    steps: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray
    lrs: np.ndarray
    total_steps: int
    warmup_steps: int
    trunk: str | None
    replicate_group: str | None
    meta: dict = field(default_factory=dict, repr=False)
    group: str = ""
    csv_path: str = ""
    lr_path: str = ""

    @property
    def source(self) -> str:
        """The source folder (alias of ``folder``)."""
        return self.folder

    @property
    def key(self) -> str:
        """``folder/run_id``: unique across sources."""
        return f"{self.folder}/{self.run_id}"

    @property
    def peak_lr(self) -> float:
        """The largest LR of the schedule."""
        return float(np.max(self.lrs))

    def column(self, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(steps, losses) of one loss column with the missing rows dropped.

        ``name=None`` picks what the forecast CLI picks: ``val_loss`` when the run has any, else ``train_loss``.
        """
        if name is None:
            name = "val_loss" if np.isfinite(self.val_loss).any() else "train_loss"
        y = self.val_loss if name == "val_loss" else self.train_loss
        ok = np.isfinite(y)
        return self.steps[ok].astype(np.int64), y[ok].astype(np.float64)

    def default_column(self) -> str:
        """The loss column the forecast CLI uses on this run's CSV."""
        return "val_loss" if np.isfinite(self.val_loss).any() else "train_loss"

    @property
    def law_breaking(self) -> bool:
        """True for runs made to leave the annealing law (loss rising late); False where not declared."""
        return bool(self.meta.get("law_breaking", False))

    @property
    def lr_units(self) -> str:
        """``absolute`` or ``multiplier`` (the logged LR is the schedule factor, peak 1.0)."""
        return str(self.meta.get("lr_units", "absolute"))

    @property
    def optimizer(self) -> str | None:
        """The optimizer where the run's provenance names it (the tiny-model curves do), else None."""
        return self.meta.get("optimizer")


def default_root() -> Path | None:
    """``shared/curves`` next to the repository (``../shared/curves``), else ``/work/shared/curves``, else None."""
    env = os.environ.get("SCALEFORECAST_CURVES")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "curves", Path("/work/shared/curves")]
    for c in candidates:
        if (c / "index.csv").is_file():
            return c
    return None


def _num(x: str) -> float:
    try:
        return float(x) if x.strip() != "" else math.nan
    except ValueError:
        return math.nan


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps = np.array([int(float(r["step"])) for r in rows], dtype=np.int64)
    train = np.array([_num(r.get("train_loss", "")) for r in rows], dtype=np.float64)
    val = np.array([_num(r.get("val_loss", "")) for r in rows], dtype=np.float64)
    return steps, train, val


def _clean(v: object) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return None if s == "" or s.lower() == "nan" else s


def _extra_roots() -> list[Path]:
    env = os.environ.get("SCALEFORECAST_EXTRA_CURVES", "")
    return [TINY_ROOT if p.strip() == "tiny" else Path(p) for p in env.split(os.pathsep) if p.strip()]


def load_curves(
    root: str | Path | Sequence[str | Path] | None = None, folders: Iterable[str] | None = None
) -> list[Curve]:
    """Every run listed in the ``index.csv`` of ``root`` (one folder or several), sorted by ``folder/run_id``.

    ``root=None`` means :func:`default_root` plus the roots in ``SCALEFORECAST_EXTRA_CURVES``. ``folders``
    keeps only those source folders. Raises ``FileNotFoundError`` when a root has no ``index.csv`` (or no
    default root can be found) and ``ValueError`` when two roots hold the same ``folder/run_id``.
    """
    if root is None:
        base = default_root()
        if base is None:
            raise FileNotFoundError(
                "no curves folder with an index.csv (looked for ../shared/curves, /work/shared/curves)"
            )
        roots = [base, *_extra_roots()]
    elif isinstance(root, (str, Path)):
        roots = [Path(root)]
    else:
        roots = [Path(r) for r in root]
    keep = set(folders) if folders is not None else None
    raw: list[dict] = []
    for base in roots:
        raw += _read_root(base, keep)
    keys = [f"{r['folder']}/{r['run_id']}" for r in raw]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"runs listed under more than one root: {', '.join(dup[:5])}")
    groups = _groups(raw)
    curves = [Curve(**r, group=groups[f"{r['folder']}/{r['run_id']}"]) for r in raw]
    return sorted(curves, key=lambda c: c.key)


def _read_root(base: Path, keep: set[str] | None) -> list[dict]:
    if not (base / "index.csv").is_file():
        raise FileNotFoundError(f"no index.csv in the curves folder {base}")
    with open(base / "index.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    raw: list[dict] = []
    for row in index:
        folder, run_id = row["folder"], row["run_id"]
        if keep is not None and folder not in keep:
            continue
        stem = base / folder / run_id
        meta = json.loads(Path(f"{stem}.json").read_text())
        steps, train, val = _read_csv(Path(f"{stem}.csv"))
        lrs = np.load(f"{stem}.lr.npy").astype(np.float64)
        raw.append(
            dict(
                run_id=run_id,
                folder=folder,
                shape=row["schedule_shape"],
                steps=steps,
                train_loss=train,
                val_loss=val,
                lrs=lrs,
                total_steps=int(float(row["total_steps"])),
                warmup_steps=int(float(row["warmup_steps"] or 0)),
                trunk=_clean(row.get("trunk")),
                replicate_group=_clean(row.get("replicate_group")),
                meta=meta,
                csv_path=f"{stem}.csv",
                lr_path=f"{stem}.lr.npy",
            )
        )
    return raw


def _groups(raw: list[dict]) -> dict[str, str]:
    """Union-find over trunk, replicate group, declared shared prefixes and declared families (runs of one
    config that differ in length, schedule, peak LR or width stay together); the key of a group is its
    smallest member."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for r in raw:
        k = f"{r['folder']}/{r['run_id']}"
        find(k)
        if r["trunk"]:
            union(k, f"trunk:{r['folder']}/{r['trunk']}")
        if r["replicate_group"]:
            union(k, f"rep:{r['folder']}/{r['replicate_group']}")
        if r["meta"].get("family"):
            union(k, f"family:{r['folder']}/{r['meta']['family']}")
        # mpl runs name their prefix siblings without the model-size prefix ("wsdcon_3" for "100M_wsdcon_3").
        size = r["run_id"].split("_", 1)[0]
        for s in r["meta"].get("shares_prefix_with") or []:
            other = str(s).split(":", 1)[0].strip()
            cand = f"{size}_{other}" if r["folder"] == "mpl_luo2025" else other
            union(k, f"{r['folder']}/{cand}")
    runs = {f"{r['folder']}/{r['run_id']}" for r in raw}
    members: dict[str, list[str]] = {}
    for k in runs:
        members.setdefault(find(k), []).append(k)
    out: dict[str, str] = {}
    for ks in members.values():
        name = min(ks)
        for k in ks:
            out[k] = name
    return out


def _h(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()


def split_curves(curves: list[Curve]) -> tuple[list[Curve], list[Curve]]:
    """(dev, holdout): whole groups go to one half; within each source folder, groups are taken largest
    first (ties by a hash of the group key) and given to the half that has fewer runs of that folder (ties
    to the half named by the hash). Deterministic; the two halves share no group.
    """
    dev: list[Curve] = []
    hold: list[Curve] = []
    by_folder: dict[str, dict[str, list[Curve]]] = {}
    for c in curves:
        by_folder.setdefault(c.folder, {}).setdefault(c.group, []).append(c)
    for folder in sorted(by_folder):
        n_dev = n_hold = 0
        groups = sorted(by_folder[folder].items(), key=lambda kv: (-len(kv[1]), _h(kv[0])))
        for g, members in groups:
            if n_dev < n_hold or (n_dev == n_hold and int(_h(g)[:8], 16) % 2 == 0):
                dev += members
                n_dev += len(members)
            else:
                hold += members
                n_hold += len(members)
    return sorted(dev, key=lambda c: c.key), sorted(hold, key=lambda c: c.key)


if __name__ == "__main__":
    cs = load_curves()
    d, h = split_curves(cs)
    for name, half in (("dev", d), ("holdout", h)):
        counts: dict[tuple[str, str], int] = {}
        for c in half:
            counts[(c.folder, c.shape)] = counts.get((c.folder, c.shape), 0) + 1
        print(name, len(half), sorted(counts.items()))
