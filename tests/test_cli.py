import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.cli import main

EPFML = "epfml_schaipp_haegele/ann0.2_openwebtext2_llama_norm_nlayers12_nhead10_lr0.001_sched_wsd_warmup300_iter25000"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_forecast_json_contract_on_real_curve(curves_dir: Path, capsys):
    base = curves_dir / EPFML
    code, out, _ = _run(
        [
            "forecast",
            f"{base}.csv",
            "--lr-file",
            f"{base}.lr.npy",
            "--until-step",
            "12500",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert {"forecasts", "level", "law", "params", "n_points", "status", "warnings"} <= set(result)
    (point,) = result["forecasts"]
    total = len(np.load(f"{base}.lr.npy"))
    assert point["step"] == total
    assert point["lower"] <= point["loss"] <= point["upper"]
    assert result["level"] == 0.8
    assert result["loss_column"] == "val_loss"
    assert result["fitted_at_step"] <= 12500
    # The real final validation loss of this run is within a few percent of the forecast.
    assert abs(point["loss"] - 3.1119) / 3.1119 < 0.03


def test_forecast_at_steps_level_and_loss_column(curves_dir: Path, capsys):
    base = curves_dir / EPFML
    code, out, _ = _run(
        [
            "forecast",
            f"{base}.csv",
            "--lr-file",
            f"{base}.lr.npy",
            "--loss-column",
            "train_loss",
            "--at",
            "5000",
            "20000",
            "--level",
            "0.95",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert [p["step"] for p in result["forecasts"]] == [5000, 20000]
    assert result["level"] == 0.95


def test_lr_column_and_schedule_spec(tmp_path: Path, capsys):
    steps = np.arange(1, 2001)
    lr = np.full(2000, 1e-3)
    lr[:100] = np.linspace(1e-5, 1e-3, 100)
    loss = 2.0 + 1.5 * np.cumsum(lr) ** -0.5
    csv = tmp_path / "run.csv"
    csv.write_text(
        "step,lr,loss\n" + "".join(f"{s},{r},{v}\n" for s, r, v in zip(steps, lr, loss, strict=True))
    )
    code, out, _ = _run(["forecast", str(csv), "--until-step", "1000", "--json"], capsys)
    assert code == 0 and json.loads(out)["forecasts"][0]["step"] == 2000
    code, out, _ = _run(
        ["forecast", str(csv), "--schedule", "cosine:peak=1e-3,warmup=100,total=4000", "--json"], capsys
    )
    assert code == 0 and json.loads(out)["forecasts"][0]["step"] == 4000
    code, out, _ = _run(["forecast", str(csv)], capsys)
    assert code == 0 and "80% interval" in out
    # the fitted law's line says the memory it used: the default two, tied to the run's length (2000 steps)
    assert "S2 memory 10 and 2000 steps (mixed 0.5/0.5)" in out, out


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", [], "empty CSV"),
        ("step,loss\n", [], "no values"),
        ("epoch,loss\n1,2.0\n", [], "no 'step' column"),
        ("step,acc\n1,0.5\n", [], "no loss column"),
        ("step,loss\n1,abc\n", [], "not a number"),
        ("step,loss\n1,3.0\n2,2.9\n", [], "no LR for every step"),
        (
            "step,loss\n1,3.0\n500,2.9\n",
            ["--schedule", "constant:peak=1e-3,total=100"],
            "losses up to step 500",
        ),
        ("step,loss\n1,3.0\n", ["--schedule", "cosine:peak=-1,total=100"], "peak"),
        ("step,loss\n1,3.0\n", ["--loss-column", "nope"], "no column 'nope'"),
    ],
)
def test_unusable_input_is_one_line_error(
    tmp_path: Path, capsys, content: str, extra: list[str], message: str
):
    csv = tmp_path / "run.csv"
    csv.write_text(content)
    code, out, err = _run(["forecast", str(csv), *extra], capsys)
    assert code == 2
    assert out == ""
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_bad_lr_file_and_missing_file(tmp_path: Path, capsys):
    csv = tmp_path / "run.csv"
    csv.write_text("step,loss\n1,3.0\n2,2.9\n")
    np.save(tmp_path / "bad.npy", np.array([1e-3, np.nan, 1e-3]))
    code, _, err = _run(["forecast", str(csv), "--lr-file", str(tmp_path / "bad.npy")], capsys)
    assert code == 2 and "index 1" in err
    code, _, err = _run(["forecast", str(tmp_path / "missing.csv")], capsys)
    assert code == 2 and "cannot read" in err


def test_too_few_points_reports_status(tmp_path: Path, capsys):
    csv = tmp_path / "run.csv"
    csv.write_text("step,loss\n10,3.0\n20,2.9\n")
    code, out, _ = _run(
        ["forecast", str(csv), "--schedule", "constant:peak=1e-3,total=100", "--json"], capsys
    )
    assert code == 0
    result = json.loads(out)
    assert result["status"] == "insufficient_data" and result["forecasts"] == []


@pytest.mark.slow
def test_console_script_on_every_real_curve(curves_dir: Path):
    """The CLI contract holds on every run in the shared folder (one process, many runs)."""
    runs = sorted(curves_dir.glob("*/*.lr.npy"))
    assert len(runs) >= 100
    code = "\n".join(
        [
            "import json, sys",
            "from scaleforecast.cli import main",
            "bad = []",
            "for lr in sys.argv[1:]:",
            "    csv = lr[: -len('.lr.npy')] + '.csv'",
            "    if main(['forecast', csv, '--lr-file', lr, '--until-step', '1000000', '--json']) != 0:",
            "        bad.append(csv)",
            "print(json.dumps(bad), file=sys.stderr)",
        ]
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, runs)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(objects) == len(runs)
    assert all(o["forecasts"] for o in objects)
    # every run follows the law but one: a 124M run at 10x its siblings' LR whose loss climbed from 5.6 to 7.5
    off = [
        str(r)
        for r, o in zip(runs, objects, strict=True)
        if o["status"] not in ("ok", "annealing_unidentified")
    ]
    assert [Path(r).name.split("_lr0.005_")[0] for r in off] == [
        "cos-zero-124m_slimpajama_llama_norm_nlayers12_nhead12"
    ]
    assert all(objects[i]["status"] == "law_violated" for i, r in enumerate(runs) if str(r) in off)


LLMC = "llmc_gpt2_124m/llmc_gpt2_124m_10B_cosine_20241013"


def test_a_log_that_starts_partway_through_the_run_is_forecast_right(
    curves_dir: Path, tmp_path: Path, capsys
):
    """An HF job resumed from checkpoint-10000 logs into a fresh folder: its first ``train/loss`` (step 10010) is
    the mean of the ten updates before it, as every later one is, not of everything since step 0."""
    tb = pytest.importorskip("torch.utils.tensorboard")
    import pandas as pd

    base = curves_dir / LLMC
    table = pd.read_csv(f"{base}.csv").dropna(subset=["train_loss"])
    loss = dict(zip(table.step.astype(int), table.train_loss, strict=True))
    lrs = np.load(f"{base}.lr.npy")
    run = tmp_path / "runs" / "Nov30_21-30-00_host"
    w = tb.SummaryWriter(str(run))
    for s in range(10010, 16001, 10):
        w.add_scalar("train/loss", float(np.mean([loss[k] for k in range(s - 9, s + 1)])), s)
        w.add_scalar("train/learning_rate", float(lrs[s]), s)
    w.close()
    code, out, _ = _run(["forecast", str(run), "--lr-file", f"{base}.lr.npy", "--json"], capsys)
    assert code == 0
    (point,) = json.loads(out)["forecasts"]
    truth = float(np.mean(table.train_loss.to_numpy()[-100:]))  # the final loss, its noise averaged out
    assert point["lower"] <= truth <= point["upper"]
    assert abs(point["loss"] - truth) / truth < 0.005


FAMILY = (
    "epfml_schaipp_haegele/ann124-0.2_slimpajama_llama_norm_nlayers12_nhead12_lr0.0005_sched_wsd_warmup300"
)


def test_a_references_data_notes_are_said_and_a_wrong_length_lr_file_is_named(curves_dir: Path, capsys):
    """A reference is read as RUN is, and what is said of RUN's data is said of it: an LR file that is not its
    own (a 50k-step plan for a 25k-step run) differs from its logged LR, and is named as the reason it is left
    out (not "never annealed", which is what the 50k plan looks like up to step 25000)."""
    run, ref = (
        curves_dir / f"{FAMILY}_decay_linear_0.2_iter50000",
        curves_dir / f"{FAMILY}_decay_linear_0.2_iter25000",
    )
    base = ["forecast", f"{run}.csv", "--lr-file", f"{run}.lr.npy", "--until-step", "30000", "--json"]
    code, out, err = _run(
        [*base, "--reference", f"{ref}.csv", "--reference-lr-file", f"{run}.lr.npy"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    ((path, why),) = [(r["reference"], r["reason"]) for r in result["references_ignored"]]
    assert path == f"{ref}.csv"
    assert why.startswith(f"its LR file {run}.lr.npy has 50000 updates but its losses stop at step ")
    assert "never annealed" not in why
    (note,) = [n for n in result["data_warnings"] if n.startswith("--reference ")]
    assert note.startswith(
        f"--reference {ref.name}.csv: the given schedule differs from the logged LR by up to"
    )
    assert f"scaleforecast: WARNING: {note}" in err
    # its own LR file: used, nothing to say
    code, out, err = _run(
        [*base, "--reference", f"{ref}.csv", "--reference-lr-file", f"{ref}.lr.npy"], capsys
    )
    result = json.loads(out)
    assert code == 0 and result["references_ignored"] == [] and result["borrowed_from"] == [f"{ref}.csv"]
    assert not any(n.startswith("--reference") for n in result["data_warnings"])


def test_a_reference_cut_mid_decay_is_said_to_look_unfinished(curves_dir: Path, tmp_path: Path, capsys):
    """A reference whose LR comes from its own log, cut halfway down its cooldown: its log ends where its LR
    does, so it looked finished and was used without a word."""
    run, ref = (
        curves_dir / f"{FAMILY}_decay_linear_0.2_iter50000",
        curves_dir / f"{FAMILY}_decay_linear_0.2_iter25000",
    )
    rows = [line for line in Path(f"{ref}.csv").read_text().splitlines() if line.split(",")[0].isdigit()]
    cut = tmp_path / "ref_cut.csv"
    cut.write_text(
        "step,lr,train_loss,val_loss\n" + "\n".join(r for r in rows if int(r.split(",")[0]) <= 22500)
    )
    base = ["forecast", f"{run}.csv", "--lr-file", f"{run}.lr.npy", "--until-step", "30000", "--json"]
    code, out, err = _run([*base, "--reference", str(cut)], capsys)
    assert code == 0, err
    (note,) = [n for n in json.loads(out)["data_warnings"] if "still training" in n]
    assert note.startswith(
        "--reference ref_cut.csv: its LR at its last logged step (22400) is still 52% of its peak"
    ), note
    # the whole run, or its own LR file: nothing to say
    code, out, err = _run([*base, "--reference", f"{ref}.csv"], capsys)
    assert code == 0 and not [n for n in json.loads(out)["data_warnings"] if "still training" in n]


def test_a_forecast_past_a_live_lr_log_says_the_lr_is_assumed(curves_dir: Path, capsys, tmp_path: Path):
    """A real WSD run's CSV cut at 60 %, before its cooldown, with its LR column and --total-steps: the LR after
    the log is the constant continued, which the forecast row says (it printed an ``ok`` forecast, the note
    coming only after it), and the JSON carries the step; with the LR file nothing is assumed."""
    base = curves_dir / EPFML
    rows = np.genfromtxt(f"{base}.csv", delimiter=",", names=True)
    lrs = np.load(f"{base}.lr.npy")
    cut = rows[(rows["step"] >= 1) & (rows["step"] <= 15000) & np.isfinite(rows["val_loss"])]
    live = tmp_path / "live.csv"
    steps = cut["step"].astype(int)
    live.write_text(
        "step,loss,lr\n"
        + "".join(f"{s},{v},{lrs[s - 1]}\n" for s, v in zip(steps, cut["val_loss"], strict=True))
    )
    code, out, _ = _run(["forecast", str(live), "--total-steps", str(lrs.size)], capsys)
    assert code == 0
    assert f"the LR after step {steps[-1]} is assumed, not logged" in out, out
    code, out, _ = _run(["forecast", str(live), "--total-steps", str(lrs.size), "--json"], capsys)
    assert json.loads(out)["lr_assumed_after"] == steps[-1]
    code, out, _ = _run(["forecast", str(live), "--lr-file", f"{base}.lr.npy", "--json"], capsys)
    assert json.loads(out)["lr_assumed_after"] is None
    # without its planned length the log is a finished run: said, as its "forecast" is the loss just shown
    told = f"the run is taken to end at its last logged step ({steps[-1]}); its LR there is still 100% of its peak"
    code, out, err = _run(["forecast", str(live)], capsys)
    assert told in err and "for a run still training, pass --total-steps" in err, err
    for given in (
        ["--total-steps", str(lrs.size)],
        ["--lr-file", f"{base}.lr.npy"],
        ["--until-step", "9000"],
    ):
        code, out, err = _run(["forecast", str(live), *given], capsys)
        assert "taken to end" not in err, (given, err)


def test_a_finished_run_is_not_said_to_lack_its_annealing_coefficient(curves_dir: Path, capsys):
    """llm.c's GPT-2 run, cosine to 0, fitted to its last step: its status was ``annealing_unidentified`` and
    its forecast of the step it had reached "the last 0.0086% of its annealing ... with C from the prior". The
    last percent of a run's annealing area is no reason to doubt C."""
    csv, lr = curves_dir / f"{LLMC}.csv", curves_dir / f"{LLMC}.lr.npy"
    for until in ("19500", "19560"):
        assert (
            main(["forecast", str(csv), "--lr-file", str(lr), "--loss", "train_loss", "--until-step", until])
            == 0
        )
        out = capsys.readouterr()
        assert "fit status ok" in out.out.splitlines()[0], out.out
        assert "with C from the prior" not in out.out + out.err


def test_a_reference_with_another_runs_lr_file_is_ignored_and_its_column_is_said(
    curves_dir: Path, tmp_path: Path, capsys
):
    """A reference given the LR file of another run (a cosine plan for a WSD run of the same length): the tool said
    the file "differs from the logged LR by up to 81% of peak" and used it anyway, its prior misplacing the
    annealing (the sibling's band missed its final). It is ignored, with that reason. A reference fitted to
    another loss column than RUN's (RUN logs ``loss``, the reference only ``val_loss``) is said to be."""
    run = (
        curves_dir
        / "epfml_schaipp_haegele/ann0.2_openwebtext2_llama_norm_nlayers12_nhead10_lr0.001_sched_wsd_warmup300_iter17500"
    )
    ref = curves_dir / EPFML
    other = (
        curves_dir
        / "epfml_schaipp_haegele/openwebtext2_llama_norm_nlayers12_nhead14_lr0.001_sched_cos_warmup300_iter25000"
    )
    argv = ["forecast", f"{run}.csv", "--lr-file", f"{run}.lr.npy", "--until-step", "8750", "--json"]
    code, out, err = _run(
        [*argv, "--reference", f"{ref}.csv", "--reference-lr-file", f"{other}.lr.npy"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    ((path, why),) = [(r["reference"], r["reason"]) for r in result["references_ignored"]]
    assert path == f"{ref}.csv" and why.startswith("its LR file differs from its logged LR by up to "), why
    assert result["borrowed_from"] == []
    code, out, err = _run(
        [*argv, "--reference", f"{ref}.csv", "--reference-lr-file", f"{ref}.lr.npy"], capsys
    )
    assert code == 0 and json.loads(out)["references_ignored"] == [], err
    # RUN read in its training loss: the reference logs train_loss too, so no note; asked for a column the
    # reference lacks, the reference falls back to its own loss, and says so
    code, out, err = _run([*argv, "--loss-column", "train_loss", "--reference", f"{ref}.csv"], capsys)
    assert code == 0 and "fitted to its" not in json.dumps(json.loads(out)["data_warnings"]), out
    renamed = tmp_path / "run.csv"
    renamed.write_text((run.parent / f"{run.name}.csv").read_text().replace("train_loss", "loss", 1))
    argv[1] = str(renamed)
    code, out, err = _run([*argv, "--reference", f"{ref}.csv"], capsys)
    assert code == 0, err
    said = json.loads(out)["data_warnings"]
    assert any("fitted to its 'val_loss': it logs no 'loss', this run's loss" in n for n in said), said


def test_a_log_cut_while_training_is_said_to_be_taken_as_ended(curves_dir: Path, tmp_path: Path, capsys):
    """Half of a WSD run's log, read with no planned length: it was forecast as a finished run ending at its last
    logged step, a band 0.1 % wide around the loss just shown (7 % above the real final), with no note: the note
    was skipped whenever the LR column ran a log past the loss column (a validation loss logged less often). It
    is said, with the LR there (still at its peak)."""
    lines = (curves_dir / f"{EPFML}.csv").read_text().splitlines()
    cut = tmp_path / "half.csv"
    cut.write_text("\n".join(lines[:251]) + "\n")
    code, _, err = _run(["forecast", str(cut)], capsys)
    assert code == 0, err
    assert (
        "the run is taken to end at its last logged step (12450); its LR there is still 100% of its peak"
        in err
    )
