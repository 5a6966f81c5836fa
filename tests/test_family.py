"""Fit one, predict the rest: references from finished runs, the family store, the forecaster and the CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.cli import main
from scaleforecast.family import (
    NotAnnealed,
    ReferenceFit,
    family_prior,
    fit_reference,
    load_references,
    record_reference,
    with_family,
)
from scaleforecast.fitting import Observations
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.registry import SQLiteRegistry

EPFML = "epfml_schaipp_haegele"
WSD = "ann124-{cd}_slimpajama_llama_norm_nlayers12_nhead12_lr0.0005_sched_wsd_warmup300_decay_linear_{cd}_iter{T}"
CONSTANT = "sl_slimpajama_llama_norm_nlayers12_nhead12_lr0.0005_sched_wsd_warmup300_iter30000"


def _run(curves_dir: Path, name: str, folder: str = EPFML) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, val or train loss, lrs) of a real run."""
    base = curves_dir / folder / name
    steps, val, train = [], [], []
    with open(f"{base}.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            steps.append(int(row["step"]))
            val.append(float(row["val_loss"]) if row.get("val_loss") else math.nan)
            train.append(float(row["train_loss"]) if row.get("train_loss") else math.nan)
    s, v, t = np.array(steps), np.array(val), np.array(train)
    y = v if np.isfinite(v).any() else t
    ok = np.isfinite(y) & (s >= 1)
    return s[ok], y[ok], np.load(f"{base}.lr.npy")


def _reference(curves_dir: Path, name: str, family: str = "") -> ReferenceFit:
    st, y, lrs = _run(curves_dir, name)
    return fit_reference(name, Observations.from_steps(st, y), lrs, family=family)


def test_a_finished_wsd_run_becomes_a_reference_and_a_constant_one_does_not(curves_dir: Path) -> None:
    ref = _reference(curves_dir, WSD.format(cd="0.2", T=25000), family="124m")
    assert ref.fit.params is not None and ref.fit.params.C > 0
    assert ref.decayed_to < 0.05 and ref.total_steps == 25000 and ref.family == "124m"
    prior = ref.annealing_prior()
    assert prior.kappa_mean > 0 and prior.alpha_mean == pytest.approx(ref.fit.params.alpha)
    with pytest.raises(NotAnnealed, match="never annealed"):
        _reference(curves_dir, CONSTANT)


def test_a_run_cut_before_its_cooldown_is_not_a_reference(curves_dir: Path) -> None:
    st, y, lrs = _run(curves_dir, WSD.format(cd="0.2", T=25000))
    keep = st <= 19000  # the cooldown starts at 20000
    with pytest.raises(NotAnnealed, match="fell only to 100%"):
        fit_reference("cut", Observations.from_steps(st[keep], y[keep]), lrs)


def test_pooled_prior_sits_between_the_references_and_is_wider(curves_dir: Path) -> None:
    a = _reference(curves_dir, WSD.format(cd="0.2", T=15000))
    b = _reference(curves_dir, WSD.format(cd="0.2", T=50000))
    pa, pb = a.annealing_prior(), b.annealing_prior()
    pooled, names, warns = family_prior([a, b])
    assert pooled is not None and names == [a.run_id, b.run_id] and not warns
    lo, hi = sorted([pa.kappa_mean, pb.kappa_mean])
    assert lo < pooled.kappa_mean < hi
    assert pooled.kappa_sd / pooled.kappa_mean >= min(
        pa.kappa_sd / pa.kappa_mean, pb.kappa_sd / pb.kappa_mean
    )
    one, names1, _ = family_prior([a])
    assert one == pa and names1 == [a.run_id]
    assert family_prior([]) == (None, [], [])


def test_unreadable_stored_prior_is_left_out_with_a_warning(curves_dir: Path) -> None:
    ref = _reference(curves_dir, WSD.format(cd="0.2", T=15000))
    broken = ref.model_copy(update={"prior": {"kappa_mean": -1.0}})
    prior, names, warns = family_prior([broken, ref])
    assert names == [ref.run_id] and prior == ref.annealing_prior()
    assert len(warns) == 1 and "unreadable prior" in warns[0]


def test_an_lr_sweep_of_more_than_eight_runs_keeps_the_older_run_at_each_peak(
    tmp_path: Path, curves_dir: Path
) -> None:
    """The store kept the eight newest fits of the family, then the run kept those at its own peak LR: after
    nine other points of an LR sweep, a rerun at the first point borrowed nothing and said no run of the family
    had peaked there. The cap is per peak LR."""
    reg = SQLiteRegistry("sweep", tmp_path / "reg.sqlite")
    ref = _reference(curves_dir, WSD.format(cd="0.2", T=15000), family="f")
    peak = ref.peak_lr
    record_reference(reg, ref)
    for i in range(1, 10):  # nine newer runs, each at another peak LR
        other = ref.model_copy(
            update={"run_id": f"lr{i}", "peak_lr": peak * 2.0**i, "recorded_at": ref.recorded_at + i}
        )
        record_reference(reg, other)
    refs, _ = load_references(reg, "f")
    assert ref.run_id in [r.run_id for r in refs] and len(refs) == 10
    prior, names, _ = family_prior(refs, peak_lr=peak)
    assert names == [ref.run_id] and prior is not None
    for i in range(1, 10):  # nine more at the first peak: the eight newest of them are kept
        record_reference(
            reg, ref.model_copy(update={"run_id": f"same{i}", "recorded_at": ref.recorded_at + 10 + i})
        )
    at_peak = [r.run_id for r in load_references(reg, "f")[0] if r.peak_lr == peak]
    assert at_peak == [f"same{i}" for i in range(9, 1, -1)]


def test_family_store_round_trips_newest_first_and_skips_garbage(tmp_path: Path, curves_dir: Path) -> None:
    reg = SQLiteRegistry("sweep", tmp_path / "reg.sqlite")
    first = _reference(curves_dir, WSD.format(cd="0.2", T=15000), family="f")
    second = _reference(curves_dir, WSD.format(cd="0.4", T=15000), family="f").model_copy(
        update={"recorded_at": first.recorded_at + 1}
    )
    record_reference(reg, first)
    record_reference(reg, second)
    record_reference(reg, first, family="other")
    reg.record_family_fit("f", "garbled", "{not json")
    refs, warns = load_references(SQLiteRegistry("sweep", tmp_path / "reg.sqlite"), "f")
    assert [r.run_id for r in refs] == [second.run_id, first.run_id]
    assert refs[1] == first
    assert len(warns) == 1 and "garbled" in warns[0]
    refs, _ = load_references(reg, "f", exclude=second.run_id)
    assert [r.run_id for r in refs] == [first.run_id]
    # re-recording a run replaces its fit
    record_reference(reg, first.model_copy(update={"final_loss": 1.0}))
    refs, _ = load_references(reg, "f", exclude=second.run_id)
    assert refs[0].final_loss == 1.0
    with pytest.raises(ValueError, match="family name"):
        record_reference(reg, first.model_copy(update={"family": ""}))


def test_forecaster_uses_references_as_prior_and_names_them(curves_dir: Path) -> None:
    ref = _reference(curves_dir, WSD.format(cd="0.2", T=25000))
    st, y, lrs = _run(curves_dir, WSD.format(cd="0.2", T=50000))
    keep = st <= 12500
    cold = OnlineForecaster(lrs)
    warm = OnlineForecaster(lrs, ForecasterConfig(references=[ref]))
    for fc in (cold, warm):
        fc.observe_many(st[keep], y[keep])
        fc.refit()
    assert warm.fit_config().prior == ref.annealing_prior()
    assert warm.borrowed_from == [ref.run_id] and warm.latest.borrowed_from == [ref.run_id]
    assert cold.latest.borrowed_from == []
    assert warm.latest.to_cli_json()["borrowed_from"] == [ref.run_id]
    # the reference's drop takes over from the shipped prior: another C prior, another forecast
    assert warm.fit_result.c_prior != cold.fit_result.c_prior
    assert warm.latest.final.loss != pytest.approx(cold.latest.final.loss, rel=1e-6)
    # the references survive a checkpoint
    again = OnlineForecaster()
    again.load_state_dict(json.loads(json.dumps(warm.state_dict())))
    assert again.borrowed_from == [ref.run_id]
    assert again.forecast().final.loss == pytest.approx(warm.latest.final.loss)


def test_a_sweep_borrows_only_from_its_runs_at_the_same_peak_lr(tmp_path: Path, curves_dir: Path) -> None:
    # an LR sweep is no family: a prior borrowed across its peak LRs forecast worse than none
    same = _reference(curves_dir, WSD.format(cd="0.2", T=25000), family="sweep")
    other = same.model_copy(update={"run_id": "lr-x2", "peak_lr": 2 * same.peak_lr})
    reg = SQLiteRegistry("sweep", tmp_path / "reg.sqlite")
    record_reference(reg, same)
    record_reference(reg, other.model_copy(update={"recorded_at": same.recorded_at + 1}))
    config, notes = with_family(ForecasterConfig(), reg, "sweep")
    assert config.match_peak_lr and not notes and len(config.references) == 2
    st, y, lrs = _run(curves_dir, WSD.format(cd="0.2", T=50000))
    keep = st <= 12500
    fc = OnlineForecaster(lrs, config)
    fc.observe_many(st[keep], y[keep])
    fc.refit()
    assert fc.borrowed_from == [same.run_id] and fc.latest.borrowed_from == [same.run_id]
    assert fc.fit_config().prior == same.annealing_prior()
    said = [w for w in fc.latest.warnings if "peaked at another LR" in w]
    assert len(said) == 1 and "lr-x2" in said[0] and "not borrowed" in said[0]
    # a new plan at the other peak LR: the choice is made again
    fc.set_schedule(lrs * 2)
    assert fc.borrowed_from == ["lr-x2"]
    # references given by hand may log their LR in other units: all of them are used
    by_hand = OnlineForecaster(lrs, ForecasterConfig(references=[other, same]))
    assert by_hand.borrowed_from == ["lr-x2", same.run_id]


# ---------------------------------------------------------------------------------------------------- CLI


def _cli_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict | None, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if rc == 0 and "--json" in argv else None), err if rc else out


def test_cli_reference_with_lr_file_and_a_reference_that_never_annealed(
    curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = curves_dir / EPFML
    run, ref = WSD.format(cd="0.2", T=50000), WSD.format(cd="0.2", T=25000)
    argv = [str(d / f"{run}.csv"), "--lr-file", str(d / f"{run}.lr.npy"), "--until-step", "12500", "--json"]
    rc, cold, _ = _cli_json(capsys, ["forecast", *argv])
    assert rc == 0 and cold["borrowed_from"] == [] and cold["references_ignored"] == []
    refs = ["--reference", str(d / f"{ref}.csv"), "--reference-lr-file", str(d / f"{ref}.lr.npy")]
    refs += ["--reference", str(d / f"{CONSTANT}.csv"), "--reference-lr-file", str(d / f"{CONSTANT}.lr.npy")]
    rc, warm, _ = _cli_json(capsys, ["forecast", *argv, *refs])
    assert rc == 0
    assert warm["borrowed_from"] == [str(d / f"{ref}.csv")]
    assert [r["reference"] for r in warm["references_ignored"]] == [str(d / f"{CONSTANT}.csv")]
    assert "never annealed" in warm["references_ignored"][0]["reason"]
    assert warm["forecasts"][0]["loss"] != pytest.approx(cold["forecasts"][0]["loss"], rel=1e-6)
    # the text output says the same
    rc, _, text = _cli_json(capsys, ["forecast", *argv[:-1], *refs])
    assert rc == 0
    assert f"prior from finished runs of the family: {d / f'{ref}.csv'}" in text
    assert f"reference ignored: {d / f'{CONSTANT}.csv'}: never annealed" in text
    assert "peaked at LR" not in text  # the same peak LR: nothing to say


def test_cli_reference_whose_copy_of_runs_column_is_empty_reads_its_other_loss(
    tmp_path: Path, curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RUN logs ``val_loss``; a reference from another codebase has that column but never filled it (no eval),
    and logs ``train_loss``: it is read in the column it filled (it was an error, "column 'val_loss' has no
    values"), as RUN itself would be."""
    d = curves_dir / EPFML
    ref = WSD.format(cd="0.2", T=15000)
    st, y, lrs = _run(curves_dir, ref)
    path = tmp_path / "ref.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "lr", "val_loss", "train_loss"])
        for s, v in zip(st.tolist(), y.tolist(), strict=True):
            w.writerow([s, repr(float(lrs[s - 1])), "", v])
    run = WSD.format(cd="0.2", T=25000)
    argv = ["forecast", str(d / f"{run}.csv"), "--lr-file", str(d / f"{run}.lr.npy"), "--until-step", "8000"]
    rc, got, err = _cli_json(capsys, [*argv, "--reference", str(path), "--json"])
    assert rc == 0, err
    assert got["borrowed_from"] == [str(path)] and got["references_ignored"] == []


def test_cli_reference_at_another_peak_lr_is_used_with_a_note(
    tmp_path: Path, curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = curves_dir / EPFML
    run, ref = WSD.format(cd="0.2", T=50000), WSD.format(cd="0.2", T=25000)
    lr_file = tmp_path / "ref.lr.npy"
    np.save(lr_file, np.load(d / f"{ref}.lr.npy") * 4)  # the same run, its LR in other units
    argv = [str(d / f"{run}.csv"), "--lr-file", str(d / f"{run}.lr.npy"), "--until-step", "12500", "--json"]
    rc, warm, _err = _cli_json(
        capsys, ["forecast", *argv, "--reference", str(d / f"{ref}.csv"), "--reference-lr-file", str(lr_file)]
    )
    assert rc == 0 and warm["borrowed_from"] == [str(d / f"{ref}.csv")]
    notes = [n for n in warm["data_warnings"] if "peaked at LR 0.002" in n]
    assert len(notes) == 1 and "this run at 0.0005" in notes[0] and "LR sweep" in notes[0]


def test_cli_reference_without_lr_file_uses_its_csv_lr_column(
    tmp_path: Path, curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = curves_dir / EPFML
    ref = WSD.format(cd="0.2", T=15000)
    st, y, lrs = _run(curves_dir, ref)
    # the reference as a CSV that logs the LR of every step (and its loss at the logged steps)
    path = tmp_path / "ref.csv"
    by_step = dict(zip(st.tolist(), y.tolist(), strict=True))
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "lr", "val_loss"])
        for s in range(1, lrs.size + 1):
            w.writerow([s, repr(float(lrs[s - 1])), by_step.get(s, "")])
    run = WSD.format(cd="0.2", T=25000)
    base = ["forecast", str(d / f"{run}.csv"), "--lr-file", str(d / f"{run}.lr.npy"), "--until-step", "8000"]
    rc, by_csv, _ = _cli_json(capsys, [*base, "--reference", str(path), "--json"])
    rc2, by_file, _ = _cli_json(
        capsys,
        [
            *base,
            "--reference",
            str(d / f"{ref}.csv"),
            "--reference-lr-file",
            str(d / f"{ref}.lr.npy"),
            "--json",
        ],
    )
    assert rc == rc2 == 0 and by_csv["borrowed_from"] == [str(path)]
    assert by_csv["forecasts"][0]["loss"] == pytest.approx(by_file["forecasts"][0]["loss"], rel=1e-9)


def test_cli_reference_errors_are_one_line(
    tmp_path: Path, curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = curves_dir / EPFML
    run = WSD.format(cd="0.2", T=25000)
    base = ["forecast", str(d / f"{run}.csv"), "--lr-file", str(d / f"{run}.lr.npy")]
    rc, _, err = _cli_json(capsys, [*base, "--reference-lr-file", str(d / f"{run}.lr.npy")])
    assert rc == 2 and "1 --reference-lr-file for 0 --reference" in err and err.count("\n") == 1
    missing = tmp_path / "nope.csv"
    rc, _, err = _cli_json(capsys, [*base, "--reference", str(missing)])
    assert rc == 2 and f"--reference {missing}" in err and err.count("\n") == 1
    no_lr = tmp_path / "no_lr.csv"
    no_lr.write_text("step,loss\n" + "".join(f"{s},{3 - s / 1000}\n" for s in range(1, 100)))
    rc, _, err = _cli_json(capsys, [*base, "--reference", str(no_lr)])
    assert rc == 2 and f"--reference {no_lr}" in err and err.count("\n") == 1
    # the flag that gives a reference its LR, not RUN's (--lr-file / --schedule were already given, for RUN)
    assert "pass --reference-lr-file" in err and "--schedule" not in err, err


def test_cli_reference_with_a_sparse_lr_column_has_it_rebuilt(
    curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """epfml logs its LR every 50 steps: without an LR file the reference's schedule is rebuilt from it."""
    d = curves_dir / EPFML
    run, ref = WSD.format(cd="0.2", T=50000), WSD.format(cd="0.2", T=25000)
    base = ["forecast", str(d / f"{run}.csv"), "--lr-file", str(d / f"{run}.lr.npy"), "--until-step", "12500"]
    rc, rebuilt, _ = _cli_json(capsys, [*base, "--reference", str(d / f"{ref}.csv"), "--json"])
    rc2, exact, _ = _cli_json(
        capsys,
        [
            *base,
            "--reference",
            str(d / f"{ref}.csv"),
            "--reference-lr-file",
            str(d / f"{ref}.lr.npy"),
            "--json",
        ],
    )
    assert rc == rc2 == 0 and rebuilt["borrowed_from"] == [str(d / f"{ref}.csv")]
    assert rebuilt["forecasts"][0]["loss"] == pytest.approx(exact["forecasts"][0]["loss"], rel=2e-3)


def _families(curves_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """``{family: [(folder, run_id), ...]}`` from index.csv (same data, model, batch and peak LR)."""
    out: dict[str, list[tuple[str, str]]] = {}
    with open(curves_dir / "index.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            folder, run = row["folder"], row["run_id"]
            if row.get("replicate_group"):
                g = row["replicate_group"].split("|")
                key = f"{folder}|{'|'.join(g[:5])}|{g[6]}"
            elif folder == "mpl_luo2025":
                key = f"{folder}|{run.split('_')[0]}"
            else:
                key = f"{folder}|{run}"
            out.setdefault(key, []).append((folder, run))
    return out


@pytest.mark.slow
def test_cli_reference_works_on_every_run_in_shared_curves(
    curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every run, forecast from half its steps with another run of its family (itself when alone) as
    reference: exit 0, a forecast, and the reference either borrowed from or reported as never annealed."""
    n = 0
    for members in _families(curves_dir).values():
        for i, (folder, run) in enumerate(members):
            rfolder, ref = members[(i + 1) % len(members)]
            d, rd = curves_dir / folder, curves_dir / rfolder
            total = np.load(d / f"{run}.lr.npy", mmap_mode="r").size
            argv = ["forecast", str(d / f"{run}.csv"), "--lr-file", str(d / f"{run}.lr.npy")]
            argv += ["--until-step", str(total // 2), "--json"]
            argv += ["--reference", str(rd / f"{ref}.csv"), "--reference-lr-file", str(rd / f"{ref}.lr.npy")]
            rc, out, err = _cli_json(capsys, argv)
            assert rc == 0, (run, err)
            assert out["forecasts"] and math.isfinite(out["forecasts"][0]["loss"]), run
            ignored = [r["reference"] for r in out["references_ignored"]]
            assert (out["borrowed_from"] + ignored) == [str(rd / f"{ref}.csv")], run
            n += 1
    assert n == 146


def test_a_finished_online_run_is_recorded_and_the_next_run_borrows_it(
    tmp_path: Path, curves_dir: Path
) -> None:
    from scaleforecast.family import reference_of, with_family

    reg = SQLiteRegistry("sweep", tmp_path / "reg.sqlite")
    st, y, lrs = _run(curves_dir, WSD.format(cd="0.2", T=15000))
    first = OnlineForecaster(lrs)
    first.update(st, y)
    ref = reference_of(first, "run-1", family="124m")
    record_reference(reg, ref)
    # a run that is cut before its cooldown leaves nothing
    cut = OnlineForecaster(lrs)
    cut.update(st[st <= 11000], y[st <= 11000])
    with pytest.raises(NotAnnealed):
        reference_of(cut, "run-cut", family="124m")
    st2, y2, lrs2 = _run(curves_dir, WSD.format(cd="0.2", T=25000))
    config, warns = with_family(ForecasterConfig(), reg, "124m", run_id="run-2")
    second = OnlineForecaster(lrs2, config)
    out = second.update(st2[st2 <= 6000], y2[st2 <= 6000])
    assert not warns and out is not None and out.borrowed_from == ["run-1"]
    # a resumed run does not borrow from its own record
    own, _ = with_family(ForecasterConfig(), reg, "124m", run_id="run-1")
    assert own.references == []
