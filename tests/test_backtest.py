"""``scaleforecast backtest``: rows per fraction, errors against a known law, JSON, picture, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.backtest import backtest, format_table
from scaleforecast.cli import main
from scaleforecast.fitting import FitConfig
from scaleforecast.laws import schedule_areas
from scaleforecast.readers import read_run
from scaleforecast.schedules import as_lrs

SPEC = "wsd:peak=1e-3,warmup=50,total=3000,cooldown=0.2,shape=linear"


def write_csv(path: Path, noise: float = 0.01, upto: int | None = None) -> None:
    """A run that follows the law the fitter uses (L0=2.5, A=0.6, alpha=0.5, C=0.4) under SPEC, logged every 10
    steps."""
    lrs = as_lrs(SPEC)
    steps = np.arange(10, (upto or len(lrs)) + 1, 10)
    s1, s2 = schedule_areas(lrs, 0.999, "raw", FitConfig().memory_for(len(lrs)))
    s1, s2 = s1[steps - 1], s2[steps - 1]
    y = 2.5 + 0.6 * s1**-0.5 - 0.4 * s2 + np.random.default_rng(0).normal(0, noise, len(steps))
    lines = ["step,lr,loss"] + [
        f"{s},{float(lrs[s - 1])!r},{float(v)!r}" for s, v in zip(steps, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_backtest_on_a_law_curve(tmp_path: Path) -> None:
    csv = tmp_path / "run.csv"
    write_csv(csv, noise=0.003)
    run = read_run(csv, schedule=SPEC, warn=False)
    result = backtest(run, (0.25, 0.5, 0.9))
    assert [r.step for r in result.rows] == [750, 1500, 2700]
    assert all(r.forecast is not None for r in result.rows)
    # The data follow the law exactly (plus small noise): late forecasts must be close.
    assert abs(result.rows[-1].error_pct) < 1.0
    assert result.median_abs_error_pct is not None and result.median_abs_error_pct < 3.0
    assert 0.0 <= (result.coverage or 0.0) <= 1.0
    text = format_table(result)
    assert "median |error|" in text and "90%" in text


def test_a_row_without_a_forecast_says_why(tmp_path: Path) -> None:
    """A prefix too short to fit printed its status and nothing else ("failed" said no more): the row gives the
    fit's reason, in the table and the JSON."""
    csv = tmp_path / "run.csv"
    write_csv(csv, noise=0.003)
    result = backtest(read_run(csv, schedule=SPEC, warn=False), (0.01, 0.5))
    empty, full = result.rows
    assert empty.forecast is None and empty.reason is not None and "usable points" in empty.reason
    assert full.forecast is not None and full.reason is None
    assert f"{empty.status} ({empty.reason})" in format_table(result)


def test_backtest_cli_json_and_picture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "run.csv"
    write_csv(csv)
    png = tmp_path / "bt.png"
    assert main(["backtest", str(csv), "--fractions", "0.3", "0.6", "-o", str(png), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["fraction"] for r in out["rows"]] == [0.3, 0.6]
    assert out["final_step"] == 3000 and out["png"] == str(png)
    assert png_size(png) == (1300, 520)


def test_backtest_needs_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "run.csv"
    write_csv(csv, upto=1500)
    assert main(["backtest", str(csv), "--schedule", SPEC, "--no-picture"]) == 2
    err = capsys.readouterr().err
    assert "not finished" in err and err.strip().count("\n") == 0
    assert main(["backtest", str(csv), "--schedule", SPEC, "--fractions", "1.5"]) == 2


def test_a_run_whose_loss_went_nan_is_not_called_unfinished(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run logged to its last step whose losses are NaN from step 2000 on: the error said "the run is not
    finished (last loss at step 3000 of 3000)". It says the losses stopped being finite."""
    csv = tmp_path / "run.csv"
    write_csv(csv)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:201] + [f"{ln.rsplit(',', 1)[0]},nan" for ln in lines[201:]]) + "\n")
    assert main(["backtest", str(csv), "--schedule", SPEC, "--no-picture"]) == 2
    err = capsys.readouterr().err
    assert "its losses are not finite after step 2000 (logged to step 3000 of 3000)" in err, err
    assert "not finished" not in err


def test_backtest_on_a_real_curve(
    tmp_path: Path, curves_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = next(iter(sorted((curves_dir / "epfml_schaipp_haegele").glob("*wsd*iter10000.csv"))))
    png = tmp_path / "real.png"
    rc = main(
        [
            "backtest",
            str(src),
            "--loss",
            "val_loss",
            "--lr-file",
            str(src)[:-4] + ".lr.npy",
            "--fractions",
            "0.5",
            "0.8",
            "-o",
            str(png),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "median |error|" in out
    assert png.stat().st_size > 10_000
