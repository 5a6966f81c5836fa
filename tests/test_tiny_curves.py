"""The committed tiny-model curves (benchmarks/curves_tiny) load, are sane, and their generator reproduces itself."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

from curves import TINY_ROOT, load_curves, split_curves  # noqa: E402

from scaleforecast.schedules import parse_schedule  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> list:
    return load_curves(TINY_ROOT)


def test_every_indexed_run_loads_with_its_files(tiny: list) -> None:
    with open(TINY_ROOT / "index.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    assert len(tiny) == len(index) >= 15
    on_disk = {p.with_suffix("").name for p in TINY_ROOT.glob("*/*.json")}
    assert on_disk == {c.run_id for c in tiny}, "every run folder entry is listed in index.csv"
    assert (TINY_ROOT / "README.md").is_file()
    size = sum(p.stat().st_size for p in TINY_ROOT.rglob("*") if p.is_file())
    assert size < 5_000_000, f"the committed curves take {size / 1e6:.1f} MB"


def test_lr_file_matches_schedule_spec_and_csv(tiny: list) -> None:
    for c in tiny:
        assert len(c.lrs) == c.total_steps == c.meta["total_steps"]
        rebuilt = parse_schedule(c.meta["schedule"]).lrs()
        np.testing.assert_allclose(c.lrs, rebuilt, rtol=1e-6, err_msg=c.key)
        assert np.all(c.lrs > 0), c.key
        assert c.lrs.max() == pytest.approx(c.meta["peak_lr"], rel=1e-6)
        with open(c.csv_path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["lr"]]
        logged = np.array([float(r["lr"]) for r in rows])
        at = np.array([int(r["step"]) for r in rows]) - 1
        np.testing.assert_allclose(logged, c.lrs[at], rtol=1e-6, err_msg=c.key)


def test_units_span_orders_of_magnitude(tiny: list) -> None:
    units = {c.lr_units for c in tiny}
    assert units == {"absolute", "multiplier"}
    for c in tiny:
        if c.lr_units == "multiplier":
            assert c.peak_lr == pytest.approx(1.0), c.key
            assert any(g["lr_scale"] != 1.0 for g in c.meta["param_groups"]), c.key
    peaks = [c.peak_lr for c in tiny if c.lr_units == "absolute"]
    assert max(peaks) / min(peaks) > 100
    assert len({c.optimizer for c in tiny}) >= 4


def test_losses_are_sane_and_binned_as_declared(tiny: list) -> None:
    for c in tiny:
        assert np.all(np.diff(c.steps) > 0), c.key
        assert c.steps[0] == 0 and c.steps[-1] == c.total_steps, c.key
        ts, tl = c.column("train_loss")
        vs, vl = c.column("val_loss")
        assert np.all(np.isfinite(tl)) and np.all(np.isfinite(vl)), c.key
        bin_updates = c.meta["binning"]["bin_updates"]
        assert np.all(np.diff(ts) <= bin_updates), c.key
        assert len(vs) == c.meta["n_val_points"] >= 20, c.key
        assert vs[0] == 0 and vs[-1] == c.total_steps, c.key
        # byte-level model: starts near ln(256) nats, ends well below it
        assert 5.0 < vl[0] < 6.0, c.key
        assert vl.min() < 3.0, c.key
        if not c.law_breaking:
            # the law's runs end within noise of their best validation loss (constant-LR runs fluctuate most)
            assert vl[-1] <= vl.min() + 0.02, c.key


def _late_rise(steps: np.ndarray, loss: np.ndarray, total: int) -> float:
    """Largest rise of the loss above its running minimum over the second half of the run."""
    best = np.minimum.accumulate(loss)
    late = steps >= total // 2
    return float(np.max(loss[late] - best[late]))


def test_law_breaking_runs_leave_the_law_and_say_so(tiny: list) -> None:
    broken = [c for c in tiny if c.law_breaking]
    assert len(broken) >= 3, "too few law-breaking runs"
    for c in broken:
        assert c.meta["note"], c.key
        vs, vl = c.column("val_loss")
        # the validation loss is above its best so far in the second half, beyond the noise of a good run
        assert _late_rise(vs, vl, c.total_steps) > 0.015, c.key


def test_runs_of_one_trunk_agree_until_their_schedules_part(tiny: list) -> None:
    trunks: dict[str, list] = {}
    for c in tiny:
        if c.trunk:
            trunks.setdefault(f"{c.source}/{c.trunk}", []).append(c)
    assert trunks
    for members in trunks.values():
        ref = max(members, key=lambda c: c.total_steps)
        for c in members:
            n = min(len(c.lrs), len(ref.lrs))
            differ = np.flatnonzero(c.lrs[:n] != ref.lrs[:n])
            part = int(differ[0]) if differ.size else n  # updates 1..part ran at the same LR
            mine = dict(zip(*c.column("val_loss"), strict=True))
            theirs = dict(zip(*ref.column("val_loss"), strict=True))
            shared = [s for s in mine if s in theirs and s <= part]
            assert len(shared) >= 3, c.key
            assert all(mine[s] == theirs[s] for s in shared), c.key
            after = [s for s in mine if s in theirs and s > part + 50]
            assert not after or any(mine[s] != theirs[s] for s in after), c.key


def test_sources_families_and_split(tiny: list) -> None:
    sources = {c.source for c in tiny}
    assert len(sources) >= 4
    dev, hold = split_curves(tiny)
    assert {c.key for c in dev}.isdisjoint({c.key for c in hold})
    where = {c.key: "dev" for c in dev} | {c.key: "hold" for c in hold}
    families: dict[str, set[str]] = {}
    for c in tiny:
        if c.meta.get("family"):
            families.setdefault(f"{c.source}/{c.meta['family']}", set()).add(where[c.key])
    assert families and all(len(h) == 1 for h in families.values()), "a family is split across halves"


def test_extra_roots_join_the_shared_curves(curves_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = load_curves(curves_dir)
    both = load_curves([curves_dir, TINY_ROOT])
    assert len(both) == len(shared) + len(load_curves(TINY_ROOT))
    monkeypatch.setenv("SCALEFORECAST_CURVES", str(curves_dir))
    monkeypatch.delenv("SCALEFORECAST_EXTRA_CURVES", raising=False)
    assert [c.key for c in load_curves()] == [c.key for c in shared]
    monkeypatch.setenv("SCALEFORECAST_EXTRA_CURVES", "tiny")
    assert [c.key for c in load_curves()] == [c.key for c in both]
    with pytest.raises(ValueError, match="more than one root"):
        load_curves([TINY_ROOT, TINY_ROOT])
    with pytest.raises(FileNotFoundError):
        load_curves(curves_dir / "no-such-folder")


def test_generator_table_matches_the_committed_runs(tiny: list) -> None:
    import make_curves as mc

    plan = {r.run_id: r for r in mc.RUNS}
    for c in tiny:
        r = plan[c.run_id]  # every committed run is still in the plan, under its source
        m = c.meta
        assert (r.source, r.optimizer, r.seed, r.batch, r.law_breaking) == (
            c.source, m["optimizer"], m["seed"], m["batch_size"], m["law_breaking"]
        ), c.key  # fmt: skip
        assert parse_schedule(r.schedule) == parse_schedule(m["schedule"]), c.key
        assert r.model.as_dict() == m["model_config"], c.key
        assert json.loads(json.dumps(r.options)) == m["optimizer_options"], c.key
        assert r.lr_units == m["lr_units"], c.key


def test_generator_is_deterministic_and_writes_the_layout(tmp_path: Path) -> None:
    import make_curves as mc
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    corpus = mc.load_corpus()
    run = mc.Run(
        "probe",
        "tiny_probe",
        "muon",
        mc.MUON_MULT,
        mc.wsd(1.0, 40, 0.5),
        "multiplier",
        model=mc.SMALL,
        batch=4,
    )
    try:
        first, second = mc.train(run, corpus), mc.train(run, corpus)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(first.losses, second.losses)
    assert first.val_losses == second.val_losses
    mc.write_run(run, first, corpus, tmp_path)
    assert mc.write_index(tmp_path) == 1
    (c,) = load_curves(tmp_path)
    assert c.key == "tiny_probe/probe" and c.lr_units == "multiplier" and c.total_steps == 40
    np.testing.assert_allclose(c.lrs, parse_schedule(run.schedule).lrs(), rtol=1e-6)
    _, tl = c.column("train_loss")
    assert tl[0] > tl[-1]
    meta = json.loads((tmp_path / "tiny_probe" / "probe.json").read_text())
    assert meta["param_groups"][0]["peak_lr"] == pytest.approx(0.02)


def test_generator_skips_runs_already_written(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import make_curves as mc

    first = mc.RUNS[0]
    (tmp_path / first.source).mkdir()
    (tmp_path / first.source / f"{first.run_id}.json").write_text("{}")
    mc.main(["--out", str(tmp_path), "--only", first.run_id, "--list"])
    out = capsys.readouterr().out
    assert out.startswith("done") and "1/1 done, 0 updates to go" in out
    mc.main(["--out", str(tmp_path), "--only", first.run_id])
    assert "nothing to train: 1/1 runs" in capsys.readouterr().out
