"""Bad input to the command line: each case gives its exact one-line message (exit 2), never a traceback, and
whatever bytes the CSV holds, ``forecast`` either prints valid JSON (exit 0) or one line (exit != 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scaleforecast.cli import main
from scaleforecast.forecaster import OnlineForecaster

SCHED = "constant:peak=1e-3,total=100"
CONTRACT = "scaleforecast forecast"


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    rc, out, err = _cli(argv, capsys)
    assert rc == code, err
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.rstrip("\n")


def _csv(tmp_path: Path, text: str | bytes, name: str = "run.csv") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", [], "{p}: empty CSV (no header)"),
        ("step,loss\n", [], "{p}: column 'loss' has no values"),
        ("epoch,loss\n1,2.0\n", [], "{p}: no 'step' column (columns: epoch, loss)"),
        (
            "step,acc\n1,0.5\n",
            [],
            "{p}: no loss column; expected one of loss, val_loss, train_loss or --loss-column (columns: step, acc)",
        ),
        ("step,loss\n1,abc\n", [], "{p}:2: not a number: 'abc' (column loss)"),
        ("step,loss\n1.5,2.0\n", [], "{p}:2: step must be a non-negative integer, got 1.5"),
        ("step,loss\n-1,2.0\n", [], "{p}:2: step must be a non-negative integer, got -1"),
        ("step,loss\n1,2.0,7\n", [], "{p}:2: 3 cells but the header has 2 columns"),
        (
            "step,loss,loss\n1,2,3\n",
            [],
            "{p}: duplicate column names in header: loss (columns: step, loss, loss)",
        ),
        (
            "step,loss\n1,3.0\n2,2.9\n",
            [],
            "{p}: no LR for every step; pass --lr-file RUN.lr.npy or --schedule SPEC (no LR logged: looked for "
            "lr, train/learning_rate, learning-rate, learning_rate, ...)",
        ),
        (
            "step,lr,loss\n1,1e-3,3.0\n2,nan,2.9\n3,1e-3,2.8\n",
            [],
            "run.csv: logged LR at step 2 is nan: every LR must be finite and > 0 (pass --schedule SPEC or "
            "--lr-file RUN.lr.npy)",
        ),
        (
            "step,loss\n1,3.0\n500,2.9\n",
            ["--schedule", SCHED],
            "the schedule has 100 steps but {p} has losses up to step 500",
        ),
        (
            "step,loss\n1,3.0\n",
            ["--schedule", "cosine:peak=-1,total=100"],
            "bad cosine schedule: peak: Input should be greater than 0 (spec 'cosine:peak=-1,total=100')",
        ),
        (
            "step,loss\n1,3.0\n",
            ["--schedule", "cosine:peak=1e-3,total=1e12"],
            "bad cosine schedule: total: 1000000000000 updates is more than this tool holds in memory (at most "
            "100000000) (spec 'cosine:peak=1e-3,total=1e12')",
        ),
        ("step,loss\n1,3.0\n", ["--loss-column", "nope"], "{p}: no column 'nope' (columns: step, loss)"),
        ("step,loss\n1,3.0\n", ["--schedule", SCHED, "--at", "0"], "--at steps must lie in 1..100"),
        ("step,loss\n1,3.0\n", ["--schedule", SCHED, "--at", "101"], "--at steps must lie in 1..100"),
        (b"\xff\xfe\x00garbage", [], "{p}: not a text file (invalid start byte at byte 0)"),
    ],
)
def test_each_unusable_input_is_one_exact_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | bytes, extra: list[str], message: str
) -> None:
    p = _csv(tmp_path, content)
    err = _error(["forecast", str(p), *extra], capsys)
    assert err == f"{CONTRACT}: error: " + message.format(p=p)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until-step", "-5"], "argument --until-step: must be an integer >= 0, got '-5'"),
        (["--level", "abc"], "argument --level: must be a number in (0, 1), got 'abc'"),
        (["--level", "1.5"], "argument --level: must be a number in (0, 1), got '1.5'"),
        (["--total-steps", "0"], "argument --total-steps: must be an integer in 1..100000000, got '0'"),
        (["--window", "x"], "argument --window: must be auto, gap or an integer >= 1, got 'x'"),
        (
            ["--lr-file", "a.npy", "--schedule", SCHED],
            "argument --schedule: not allowed with argument --lr-file",
        ),
    ],
)
def test_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    p = _csv(tmp_path, "step,loss\n1,3.0\n")
    err = _error(["forecast", str(p), *args], capsys)
    assert err == f"{CONTRACT}: error: {message} (see {CONTRACT} --help)"


def test_lr_files_that_are_not_one_lr_per_update(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _csv(tmp_path, "step,loss\n1,3.0\n2,2.9\n")
    cases = {
        "2d.npy": (np.full((2, 50), 1e-3), "LR array must be one-dimensional, got shape (2, 50)"),
        "rec.npy": (
            np.zeros(3, dtype=[("step", "i8"), ("lr", "f8")]),
            "LR array is a structured array (fields step, lr); expected one number per update",
        ),
        "nan.npy": (
            np.array([1e-3, np.nan, 1e-3]),
            "LR at index 1 (update 2) is nan: every LR must be finite",
        ),
        "neg.npy": (
            np.array([1e-3, -1e-3, 1e-3]),
            "LR at index 1 (update 2) is -0.001: every LR must be > 0 (exact zeros are allowed only before the "
            "first positive LR and after the last)",
        ),
    }
    for name, (arr, message) in cases.items():
        f = tmp_path / name
        np.save(f, arr)
        err = _error(["forecast", str(p), "--lr-file", str(f)], capsys)
        assert err == f"{CONTRACT}: error: {message} (LR file {f})", err
    err = _error(["forecast", str(p), "--lr-file", str(tmp_path / "missing.npy")], capsys)
    assert (
        err == f"{CONTRACT}: error: cannot read LR file {tmp_path / 'missing.npy'}: No such file or directory"
    )
    err = _error(["forecast", str(tmp_path / "missing.csv")], capsys)
    assert err == f"{CONTRACT}: error: cannot read {tmp_path / 'missing.csv'}: No such file or directory"


def test_bom_jsonl_sparse_lr_and_tensorboard_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = np.arange(1, 1001)
    lrs = np.full(1000, 1e-3)
    lrs[:50] = np.linspace(2e-5, 1e-3, 50)
    loss = 2.0 + 1.5 * np.cumsum(lrs) ** -0.5
    rows = [f"{s},{float(loss[s - 1])!r}" for s in steps]
    bom = _csv(tmp_path, ("\ufeffstep,loss\n" + "\n".join(rows) + "\n").encode("utf-8"), "bom.csv")
    rc, out, _ = _cli(
        ["forecast", str(bom), "--schedule", "constant:peak=1e-3,warmup=50,total=2000", "--json"], capsys
    )
    assert rc == 0 and json.loads(out)["loss_column"] == "loss"
    records = "".join(json.dumps({"step": int(s), "loss": float(loss[s - 1])}) + "\n" for s in steps)
    for name in ("run.jsonl", "jsonl_as.csv"):
        p = _csv(tmp_path, records, name)
        rc, out, err = _cli(
            ["forecast", str(p), "--schedule", "constant:peak=1e-3,warmup=50,total=2000", "--json"], capsys
        )
        assert rc == 0, err
        assert json.loads(out)["forecasts"][0]["step"] == 2000
    assert "jsonl_as.csv: holds JSON lines, not CSV: read it as JSON lines" in err
    # An LR column logged every 10 steps is rebuilt from the schedule families, as report does.
    sparse = ["step,lr,loss"] + [
        f"{s},{float(lrs[s - 1])!r},{float(loss[s - 1])!r}" if s % 10 == 0 else f"{s},,{float(loss[s - 1])!r}"
        for s in steps
    ]
    p = _csv(tmp_path, "\n".join(sparse) + "\n", "sparse.csv")
    rc, out, err = _cli(["forecast", str(p), "--total-steps", "2000", "--json"], capsys)
    assert rc == 0, err
    result = json.loads(out)
    assert result["lr_source"].startswith("fit:constant:") and result["forecasts"][0]["step"] == 2000
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    w = SummaryWriter(str(tmp_path / "tb"))
    for s in steps[::5]:
        w.add_scalar("train/loss", float(loss[s - 1]), int(s))
        w.add_scalar("train/learning_rate", float(lrs[s - 1]), int(s))
    w.close()
    rc, out, err = _cli(
        ["forecast", str(tmp_path / "tb"), "--total-steps", "2000", "--window", "1", "--json"], capsys
    )
    assert rc == 0, err
    result = json.loads(out)
    assert result["loss_column"] == "train/loss" and result["forecasts"][0]["step"] == 2000


def test_a_rising_loss_is_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _csv(tmp_path, "step,loss\n" + "".join(f"{s},{2.0 + s / 100}\n" for s in range(1, 101)))
    rc, out, err = _cli(["forecast", str(p), "--schedule", SCHED, "--json"], capsys)
    assert rc == 0
    note = "the loss rises over the run (median 2.13 over its first quarter, 2.88 over its last)"
    assert any(note in w for w in json.loads(out)["data_warnings"])
    assert f"scaleforecast: WARNING: run: {note}" in err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = _csv(tmp_path, "step,loss\n" + "".join(f"{s},{3.0 - s / 1000}\n" for s in range(1, 51)))

    def broken(self: OnlineForecaster) -> None:  # injected fault
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(OnlineForecaster, "refit", broken)
    err = _error(["forecast", str(p), "--schedule", SCHED], capsys, code=1)
    assert err == (
        f"{CONTRACT}: internal error: ZeroDivisionError: division by zero (run with --debug for the traceback)"
    )
    rc, out, err = _cli(["forecast", str(p), "--schedule", SCHED, "--debug"], capsys)
    assert rc == 1 and out == ""
    assert err.startswith("Traceback") and "in broken" in err
    assert (
        err.rstrip("\n").splitlines()[-1]
        == f"{CONTRACT}: internal error: ZeroDivisionError: division by zero"
    )
    rc, _, err = _cli(["--debug", "forecast", str(p), "--schedule", SCHED], capsys)
    assert rc == 1 and err.startswith("Traceback")


def test_report_and_backtest_arguments_and_a_loss_that_reaches_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _csv(
        tmp_path, "step,loss\n" + "".join(f"{s},{max(0.0, 1.0 - s / 1000)!r}\n" for s in range(10, 1001, 10))
    )
    err = _error(["report", str(p), "--schedule", "constant:peak=1e-3,total=1000", "--dpi", "100000"], capsys)
    assert (
        err
        == "scaleforecast report: error: argument --dpi: must be an integer from 10 to 600, got '100000' (see scaleforecast report --help)"
    )
    err = _error(["report", str(p), "--schedule", SCHED, "--size", "90", "90", "--dpi", "300"], capsys)
    assert err == "scaleforecast report: error: --size 90 90 at --dpi 300 is more than 20000 pixels a side"
    out_png = tmp_path / "new" / "folder" / "r.png"  # a folder that does not exist yet is made
    rc, out, err = _cli(
        ["report", str(p), "--schedule", "constant:peak=1e-3,total=1000", "-o", str(out_png), "--dpi", "20"],
        capsys,
    )
    assert rc == 0, err
    assert out_png.read_bytes().startswith(b"\x89PNG")
    assert "(absolute: the observed loss is 0)" in out
    rc, out, err = _cli(
        ["backtest", str(p), "--schedule", "constant:peak=1e-3,total=1000", "--no-picture", "--json"], capsys
    )
    assert rc == 0, err
    result = json.loads(out)
    assert result["actual"] == pytest.approx(0.0, abs=1e-9)
    assert all(
        r["error_pct"] is None and r["error"] is not None for r in result["rows"] if r["forecast"] is not None
    )


# ------------------------------------------------------------------------------------------ property test
_NAMES = st.sampled_from(["step", "loss", "lr", "val_loss", "train_loss", "window", "x", "", "step ", "Loss"])
_CELLS = st.one_of(
    st.integers(-5, 200).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.sampled_from(
        ["", " ", "nan", "inf", "-inf", "null", "1e400", "1e-400", "0", "abc", '"1"', '"', "1,2"]
    ),
    st.text(max_size=4),
)


@st.composite
def _csv_bytes(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=200))
    header = draw(st.lists(_NAMES, min_size=1, max_size=5, unique=draw(st.booleans())))
    core = draw(st.booleans())
    if core:  # a well-formed core (increasing steps, a falling loss) under the random columns
        header = ["step", "loss", *(h for h in header if h.strip() not in ("step", "loss"))]
    clean = core and draw(st.booleans())  # extra columns of plain numbers, one cell per column
    ncol = max(len(header) - (2 if core else 0) + (0 if clean else draw(st.integers(-1, 1))), 0)
    cells = st.floats(1e-6, 10.0).map(repr) | st.just("") if clean else _CELLS
    rows = draw(st.lists(st.lists(cells, min_size=ncol, max_size=ncol), max_size=25))
    if core:
        rows = [[str(i + 1), repr(3.0 - i / 50), *r] for i, r in enumerate(rows)]
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = end.join(",".join(r) for r in [header, *rows]) + draw(st.sampled_from(["", end]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + text).encode(draw(st.sampled_from(["utf-8", "latin-1"])), errors="replace")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_csv_bytes(), lr_args=st.sampled_from([[], ["--schedule", "cosine:peak=1e-3,warmup=5,total=60"]]))
def test_any_bytes_give_json_or_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, lr_args: list[str]
) -> None:
    p = tmp_path / "run.csv"
    p.write_bytes(data)
    rc, out, err = _cli(["forecast", str(p), *lr_args, "--json"], capsys)
    assert "Traceback" not in err
    if rc == 0:
        result = json.loads(out)
        assert out.count("\n") == 1 and "NaN" not in out and "Infinity" not in out
        assert {"forecasts", "status", "warnings", "loss_column"} <= set(result)
    else:
        assert rc == 2, err  # bad input is a usage error, never an internal one
        assert out == "" and err.count("\n") == 1 and err.startswith(f"{CONTRACT}: error: ")


def test_report_never_writes_through_a_planted_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _csv(tmp_path, "step,loss\n" + "".join(f"{s},{3.0 - s / 1000}\n" for s in range(10, 501, 10)))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "r.png"
    link.symlink_to(victim)
    err = _error(["report", str(p), "--schedule", "constant:peak=1e-3,total=500", "-o", str(link)], capsys)
    assert err == (
        f"scaleforecast report: error: {link} is a symbolic link; refusing to write through it (remove it or pick "
        "another path)"
    )
    assert victim.read_text() == "keep me"


# ------------------------------------------------------------------------ the same rules for every format
def _law_rows(steps: range, lrs: np.ndarray, shift: float = 0.0) -> list[dict[str, float]]:
    s1 = np.cumsum(lrs) / lrs.max()
    return [
        {"step": s, "loss": 2.5 + 3.0 * max(s1[s - 1], 1.0) ** -0.4 + shift, "lr": float(lrs[s - 1])}
        for s in steps
    ]


def _write_rows(path: Path, rows: list[dict[str, float]]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return
    import csv

    with open(path, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=["step", "loss", "lr"])
        out.writeheader()
        out.writerows(rows)


@pytest.mark.parametrize("name", ["run.csv", "run.jsonl"])
def test_a_resumed_table_keeps_the_newest_of_each_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """A job resumed from its step-1000 checkpoint re-logs steps 1001..: forecast takes it as event files are
    taken (the newest value of each step, with a note), as report and backtest already did."""
    lrs = np.r_[np.linspace(1e-4, 1e-3, 100), np.linspace(1e-3, 1e-5, 1900)]
    resumed = tmp_path / name
    _write_rows(resumed, _law_rows(range(1, 1201), lrs, shift=0.05) + _law_rows(range(1001, 2001), lrs))
    clean = tmp_path / f"clean{resumed.suffix}"
    _write_rows(clean, _law_rows(range(1, 1001), lrs, shift=0.05) + _law_rows(range(1001, 2001), lrs))
    rc, out, err = _cli(["forecast", str(resumed), "--until-step", "1500", "--json"], capsys)
    assert rc == 0, err
    got = json.loads(out)
    assert got["forecasts"]
    note = f"{name}: loss: steps go back (a resumed run?): kept the newest of each step, dropped 200 point(s)"
    assert note in got["data_warnings"] and f"scaleforecast: {note}" in err
    rc, out, _ = _cli(["forecast", str(clean), "--until-step", "1500", "--json"], capsys)
    assert rc == 0 and json.loads(out)["forecasts"] == got["forecasts"]


@pytest.mark.parametrize("order", ["shuffled", "descending"])
def test_a_table_out_of_step_order_is_read_in_step_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], order: str
) -> None:
    """Rows shuffled or written last step first: the steps go back hundreds of times, which no run of resumes
    does. Read as resumes, all but a handful of points were dropped and the forecast still said ``ok``; they are
    read in step order, with a note, and forecast as the same table in order."""
    lrs = np.r_[np.linspace(1e-4, 1e-3, 100), np.linspace(1e-3, 1e-5, 1900)]
    rows = _law_rows(range(1, 2001), lrs)
    clean, messy = tmp_path / "clean.csv", tmp_path / "messy.csv"
    _write_rows(clean, rows)
    if order == "shuffled":
        rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    _write_rows(messy, rows if order == "shuffled" else rows[::-1])
    rc, out, err = _cli(["forecast", str(messy), "--until-step", "1500", "--json"], capsys)
    assert rc == 0, err
    got = json.loads(out)
    notes = [n for n in got["data_warnings"] if "not in step order" in n]
    assert len(notes) == 1 and notes[0].startswith("messy.csv: its rows are not in step order"), got[
        "data_warnings"
    ]
    assert not [n for n in got["data_warnings"] if "steps go back" in n]
    rc, out, _ = _cli(["forecast", str(clean), "--until-step", "1500", "--json"], capsys)
    assert rc == 0 and json.loads(out)["forecasts"] == got["forecasts"]


def test_a_bad_jsonl_line_is_skipped_with_a_note_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lrs = np.r_[np.linspace(1e-4, 1e-3, 100), np.linspace(1e-3, 1e-5, 1900)]
    lines = [json.dumps(r) for r in _law_rows(range(1, 2001), lrs)]
    lines[700] = lines[700][:25]  # a line cut short by a crash mid-write, the run logging on after a restart
    p = tmp_path / "run.jsonl"
    p.write_text("\n".join(lines) + "\n")
    for command in (
        ["forecast", "--json"],
        ["backtest", "--no-picture"],
        ["report", "--json", "-o", str(tmp_path / "r.png")],
    ):
        rc, _, err = _cli([command[0], str(p), *command[1:]], capsys)
        assert rc == 0, err
        assert "scaleforecast: run.jsonl:701: not valid JSON (" in err and "skipped the line" in err


def test_an_lr_column_that_is_zero_through_the_warmup_is_taken_like_an_lr_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Zeros before the first positive LR and after the last are real LRs in a column as in an .npy
    (``schedules.edge_zeros``); a zero between positive LRs is still refused."""
    lrs = np.r_[np.zeros(5), np.linspace(1e-4, 1e-3, 95), np.linspace(1e-3, 1e-5, 1899), 0.0]
    p = tmp_path / "run.csv"
    _write_rows(p, _law_rows(range(1, 2001), lrs))
    np.save(tmp_path / "run.lr.npy", lrs)
    rc, out, err = _cli(["forecast", str(p), "--until-step", "1500", "--json"], capsys)
    assert rc == 0, err
    from_column = json.loads(out)
    assert from_column["status"] == "ok" and from_column["forecasts"]
    assert from_column["lr_source"] == "logged" and from_column["data_warnings"] == []
    rc, out, _ = _cli(
        ["forecast", str(p), "--until-step", "1500", "--lr-file", str(tmp_path / "run.lr.npy"), "--json"],
        capsys,
    )
    assert rc == 0 and json.loads(out)["forecasts"] == from_column["forecasts"]
    lrs[1000] = 0.0
    _write_rows(p, _law_rows(range(1, 2001), lrs))
    assert _error(["forecast", str(p)], capsys) == (
        f"{CONTRACT}: error: run.csv: logged LR at step 1001 is 0: every LR must be finite and > 0 (pass --schedule "
        "SPEC or --lr-file RUN.lr.npy)"
    )


@pytest.mark.parametrize("command", [["forecast"], ["backtest", "--no-picture"]])
def test_a_closed_stdout_ends_quietly(tmp_path: Path, command: list[str]) -> None:
    """``scaleforecast backtest ... | head``: the reader has gone; the command ends as a Unix tool killed by
    SIGPIPE does (status 141, nothing on stderr), not with an error."""
    import os
    import subprocess
    import sys

    lrs = np.r_[np.linspace(1e-4, 1e-3, 100), np.linspace(1e-3, 1e-5, 1900)]
    p = tmp_path / "run.csv"
    _write_rows(p, _law_rows(range(1, 2001), lrs))
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before a byte is written: every write to stdout fails
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "scaleforecast.cli", command[0], str(p), *command[1:]],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141


@pytest.mark.parametrize("command", ["forecast", "report", "watch", "backtest"])
def test_help_documents_the_schedule_spec(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command that takes --schedule says, in its --help, the kinds, their keys, that cooldown is a
    fraction and final an absolute LR, and the '/' of milestones; its examples are specs that parse."""
    from scaleforecast.schedules import SCHEDULE_TYPES, parse_schedule

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for t in SCHEDULE_TYPES:
        assert f"\n  {t.model_fields['kind'].default} " in text
        for key in t.model_fields:
            if key != "kind":
                assert f"{key}=" in text, key
    assert "cooldown=F is a FRACTION of the run" in text and "the ABSOLUTE LR the decay ends at" in text
    assert "milestones=M1/M2/..." in text
    examples = [
        line.split()[-1]
        for line in text.split("schedule spec (")[1].splitlines()
        if "e.g." in line or ":peak=" in line
    ]
    assert len(examples) == 3
    for spec in examples:
        parse_schedule(spec)


def test_a_cooldown_given_in_updates_is_said_to_be_a_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = _csv(tmp_path, "step,loss\n1,3.0\n2,2.9\n")
    spec = "wsd:peak=6e-4,warmup=700,total=19560,cooldown=3912"
    assert _error(["forecast", str(p), "--schedule", spec], capsys) == (
        f"{CONTRACT}: error: bad wsd schedule: cooldown: Input should be less than or equal to 1 (spec '{spec}'); "
        "cooldown is the fraction of the run spent cooling down, in (0, 1], not a number of updates "
        "(cooldown=3912 updates of total=19560 is cooldown=0.2)"
    )


def test_a_table_that_logs_every_update_from_step_0_is_told_how_it_was_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every update logged from step 0 (a loop's own 0-based count, or the model before training and then
    every update): the step-0 row is read as the untrained model's and left out, which makes the run one update
    shorter than its rows; that was silent. A log that evaluates at step 0 and then every few steps is the
    usual case and says nothing."""
    lrs = np.r_[np.linspace(1e-4, 1e-3, 100), np.linspace(1e-3, 1e-5, 1900)]
    for name, steps in (("dense", range(0, 2000)), ("sparse", range(0, 2001, 10))):
        path = tmp_path / f"{name}.csv"
        _write_rows(path, _law_rows(steps, np.r_[lrs[0], lrs]))
        rc, out, err = _cli(["forecast", str(path), "--until-step", "1000", "--json"], capsys)
        assert rc == 0, err
        said = [n for n in json.loads(out)["data_warnings"] if "at step 0" in n]
        if name == "dense":
            assert len(said) == 1 and "add 1 to the steps" in said[0], said
        else:
            assert said == []


def _falling(steps: np.ndarray) -> np.ndarray:
    return 2.0 + 3.0 * (steps * 1e-3) ** -0.4


def test_a_wandb_export_is_read_on_the_trainers_step_not_wandbs_row_counter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A W&B export of an HF run holds ``_step`` (W&B's row counter: 0, 1, 2, ...) and ``train/global_step``
    (50, 100, ...): ``_step`` won, and the forecast was of "step 523" (with an LR file: 20 % low, its band
    missing). The trainer's step wins; ``--step-column`` names another."""
    steps = np.arange(50, 5001, 50)
    lines = ["_step,_runtime,train/global_step,train/loss,my_update"]
    lines += [
        f"{i},{0.1 * i:.1f},{s},{v:.6f},{s}"
        for i, (s, v) in enumerate(zip(steps, _falling(steps), strict=True))
    ]
    p = _csv(tmp_path, "\n".join(lines) + "\n")
    code, out, err = _cli(
        ["forecast", str(p), "--schedule", "constant:peak=1e-3,total=5000", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)["fitted_at_step"] == 5000
    code, out, err = _cli(
        [
            "forecast",
            str(p),
            "--schedule",
            "constant:peak=1e-3,total=5000",
            "--json",
            "--step-column",
            "my_update",
        ],
        capsys,
    )
    assert code == 0 and json.loads(out)["fitted_at_step"] == 5000, err
    assert _error(["forecast", str(p), "--schedule", SCHED, "--step-column", "epoch"], capsys) == (
        f"scaleforecast forecast: error: {p}: no step column 'epoch' (columns: _step, _runtime, train/global_step, train/loss, "
        "my_update)"
    )


def test_semicolons_comments_and_a_pipe_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A spreadsheet's semicolon CSV ("no 'step' column (columns: step;lr;loss)"), comment lines above the header
    ("3 cells but the header has 2 columns"), and a pipe: ``forecast <(cat run.csv)`` found the header gone (the
    file is opened twice), and a FIFO waited forever for a second writer."""
    import os
    import subprocess
    import sys

    steps = np.arange(10, 1001, 10)
    rows = [f"{s};{v:.6f}" for s, v in zip(steps, _falling(steps), strict=True)]
    semi = _csv(tmp_path, "step;loss\n" + "\n".join(rows) + "\n", "semi.csv")
    commented = _csv(tmp_path, "# lr=1e-3, seed=0\n# model: tiny\n" + semi.read_text().replace(";", ","))
    want = None
    for p in (semi, commented):
        code, out, err = _cli(
            ["forecast", str(p), "--schedule", "constant:peak=1e-3,total=1000", "--json"], capsys
        )
        assert code == 0, err
        got = json.loads(out)["forecasts"][0]["loss"]
        want = got if want is None else want
        assert got == pytest.approx(want)
    assert "skipped 2 comment line(s)" in err
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)
    cmd = [
        sys.executable,
        "-m",
        "scaleforecast.cli",
        "forecast",
        str(fifo),
        "--schedule",
        "constant:peak=1e-3,total=1000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(fifo, "w") as w:  # the one writer: the reader must take everything in one read
        w.write(commented.read_text())
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{want:.4f}" in out, out


def test_an_interval_level_is_named_to_its_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--level 0.995`` was printed as a "100% interval", 0.975 as "98%"."""
    steps = np.arange(10, 1001, 10)
    p = _csv(
        tmp_path,
        "step,loss\n" + "\n".join(f"{s},{v:.6f}" for s, v in zip(steps, _falling(steps), strict=True)) + "\n",
    )
    for level, label in (("0.995", "99.5% interval"), ("0.975", "97.5% interval"), ("0.8", "80% interval")):
        code, out, err = _cli(
            ["forecast", str(p), "--schedule", "constant:peak=1e-3,total=1000", "--level", level], capsys
        )
        assert code == 0 and label in out, out + err


def test_a_log_past_its_lr_file_or_an_until_step_past_the_log_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An LR file shorter than the log is an error when the fit would need the missing LRs; fitted only up to
    ``--until-step`` it forecast the LR file's last step with no word that the log went on past it. An
    ``--until-step`` past the log's end used every loss, silently."""
    s = np.arange(1, 601)
    p = _csv(tmp_path, "step,loss\n" + "".join(f"{i},{2 + 3 * (i * 1e-3) ** -0.4:.6f}\n" for i in s))
    lr = tmp_path / "run.lr.npy"
    np.save(lr, np.full(400, 1e-3))
    rc, out, err = _cli(["forecast", str(p), "--lr-file", str(lr), "--until-step", "300"], capsys)
    assert rc == 0 and " 400 " in out
    assert (
        "run.csv has losses up to step 600, past the schedule's 400 updates: the forecast is of step 400"
        in err
    )
    np.save(lr, np.full(600, 1e-3))
    rc, out, err = _cli(["forecast", str(p), "--lr-file", str(lr), "--until-step", "900"], capsys)
    assert rc == 0 and "--until-step 900 is past its last logged step (600): every logged loss is used" in err
    rc, out, err = _cli(["forecast", str(p), "--lr-file", str(lr), "--until-step", "500"], capsys)
    assert rc == 0 and "past" not in err
