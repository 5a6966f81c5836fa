"""``scaleforecast report``: a PNG of the expected size (checked from its header), HTML, JSON, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.cli import main
from scaleforecast.laws import annealing_area, forward_area
from scaleforecast.readers import read_run
from scaleforecast.report import build_report, draw_report, png_bytes, what_if_schedules

SPEC = "wsd:peak=1e-3,warmup=50,total=3000,cooldown=0.2,shape=linear"


def law_curve(lrs: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """The LR-annealing law with fixed parameters (L0=2.5, A=0.6, alpha=0.5, C=0.4)."""
    s1, s2 = forward_area(lrs), annealing_area(lrs)
    return 2.5 + 0.6 * s1[steps - 1] ** -0.5 - 0.4 * s2[steps - 1]


def write_csv(
    path: Path, spec: str = SPEC, every: int = 10, noise: float = 0.01, upto: int | None = None
) -> None:
    from scaleforecast.schedules import as_lrs

    lrs = as_lrs(spec)
    steps = np.arange(every, (upto or len(lrs)) + 1, every)
    y = law_curve(lrs, steps) + np.random.default_rng(0).normal(0, noise, len(steps))
    lines = ["step,lr,loss"] + [
        f"{s},{float(lrs[s - 1])!r},{float(v)!r}" for s, v in zip(steps, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_png_html_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "run.csv"
    write_csv(csv)
    png, page = tmp_path / "r.png", tmp_path / "r.html"
    rc = main(
        [
            "report",
            str(csv),
            "--schedule",
            SPEC,
            "--until-step",
            "1500",
            "-o",
            str(png),
            "--html",
            str(page),
            "--size",
            "10",
            "6",
            "--dpi",
            "60",
            "--json",
        ]
    )
    assert rc == 0
    assert png_size(png) == (600, 360)
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text and "final loss" in text
    out = json.loads(capsys.readouterr().out)
    assert out["fit_step"] == 1500 and out["final_step"] == 3000
    assert out["forecasts"][0]["step"] == 3000
    assert out["observed_final"] == pytest.approx(
        law_curve(np.asarray(read_run(csv, warn=False).lrs), np.array([3000]))[0], abs=0.02
    )
    assert out["lr_source"].startswith("schedule")


def test_report_default_size_from_rebuilt_lr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "run.csv"
    write_csv(csv)
    png = tmp_path / "r.png"
    assert main(["report", str(csv), "-o", str(png)]) == 0
    assert png_size(png) == (1400, 800)
    out = capsys.readouterr().out
    assert "final loss @ 3000" in out and "rebuilt: WSD" in out


def test_report_marks_nonfinite_events(tmp_path: Path) -> None:
    csv = tmp_path / "run.csv"
    write_csv(csv)
    lines = csv.read_text().splitlines()
    lines[100] = lines[100].rsplit(",", 1)[0] + ",nan"
    csv.write_text("\n".join(lines) + "\n")
    data = build_report(read_run(csv, schedule=SPEC, warn=False))
    kinds = [e.kind for e in data.events]
    assert "nonfinite" in kinds
    assert dict(data.table())["loss"].endswith("1 non-finite)")
    assert png_bytes(draw_report(data, 6, 4, 50))[:4] == b"\x89PNG"


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No such file" in err
    csv = tmp_path / "nolr.csv"
    csv.write_text("step,loss\n1,3.0\n2,2.9\n3,2.8\n")
    assert main(["report", str(csv)]) == 2
    assert "no LR logged" in capsys.readouterr().err


@pytest.mark.slow
def test_report_on_a_real_curve_as_event_files(tmp_path: Path, curves_dir: Path) -> None:
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    src = curves_dir / "llmc_gpt2_124m" / "llmc_gpt2_124m_10B_cosine_20241013.csv"
    run = read_run(src, loss="train_loss", schedule=str(src)[:-4] + ".lr.npy", warn=False)
    w = SummaryWriter(str(tmp_path / "tb"))
    for s, y in zip(run.steps[::4], run.losses[::4], strict=True):
        w.add_scalar("train/loss", float(y), int(s))
        w.add_scalar("train/learning_rate", float(run.lrs[s - 1]), int(s))
    w.close()
    png = tmp_path / "real.png"
    assert (
        main(["report", str(tmp_path / "tb"), "--window", "1", "--until-step", "10000", "-o", str(png)]) == 0
    )
    assert png_size(png) == (1400, 800)


def test_critical_events_come_first_in_the_panel(tmp_path: Path) -> None:
    """A run with spikes early and NaN losses late: the panel shows the first six events, and the critical NaN
    events must be among them, not under "... and N more"."""
    csv = tmp_path / "run.csv"
    write_csv(csv)
    lines = csv.read_text().splitlines()
    for row in range(100, 250, 21):  # spikes from step 1000 on, each a debounce time after the last
        step, lr, loss = lines[row].split(",")
        lines[row] = f"{step},{lr},{float(loss) + 1.0}"
    for row in range(250, 300):  # the run goes NaN at step 2500 and stays so
        lines[row] = lines[row].rsplit(",", 1)[0] + ",nan"
    csv.write_text("\n".join(lines) + "\n")
    data = build_report(read_run(csv, schedule=SPEC, warn=False))
    severities = [e.severity for e in data.events]
    assert "critical" in severities and severities.count("warning") >= 6
    assert severities == sorted(severities, key=["critical", "warning", "info"].index)
    criticals = [e for e in data.events if e.severity == "critical"]
    assert [e.step for e in criticals] == sorted(e.step for e in criticals)
    fig = draw_report(data, 10, 7, 50)
    shown = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(f"{criticals[0].step}: {criticals[0].kind} (critical)" in t for t in shown)
    # a single spike is information, as the console and the logger say it
    assert any("spike (info)" in t for t in shown) and not any("spike (warning)" in t for t in shown)


def test_the_frame_is_set_after_the_warm_up(tmp_path: Path) -> None:
    """A warm-up longer than a tenth of the run: the fitted curve, which says nothing before the peak LR (S1 is
    small there, its power-law term huge), must not stretch the loss axis over the data."""
    from scaleforecast.report import _y_limits

    spec = "wsd:peak=1e-3,warmup=600,total=3000,cooldown=0.2,shape=linear"
    csv = tmp_path / "run.csv"
    write_csv(csv, spec=spec)
    data = build_report(read_run(csv, schedule=spec, warn=False))
    later = data.run.losses[data.run.steps >= 600]
    lo, hi = _y_limits(data)
    assert hi < later.max() + 0.5 * (later.max() - later.min()), (lo, hi, later.max())


def test_the_plan_itself_is_no_what_if(tmp_path: Path) -> None:
    """A WSD run with a 20 % cooldown: among the what-ifs was "WSD 20% linear cooldown", the plan itself."""
    spec = "wsd:peak=1e-3,warmup=50,total=3000,cooldown=0.2"
    csv = tmp_path / "run.csv"
    write_csv(csv, spec=spec, upto=1500)
    data = build_report(read_run(csv, schedule=spec, warn=False))
    schedules, _ = what_if_schedules(data.forecaster, data.fit_step, top=20)
    labels = [label for label, _ in schedules]
    assert "WSD 10% linear cooldown" in labels and "WSD 20% linear cooldown" not in labels, labels


def test_no_advice_on_a_plan_that_is_a_guess(tmp_path: Path) -> None:
    """A WSD run logged up to its stable phase, its LR rebuilt from its ``lr`` column: past the last logged LR
    the plan is a guess (constant to the end), so the report draws its what-ifs but says no advice on it (it
    said "ends at a high LR" and "switch to a cooldown" of a plan that has one)."""
    csv = tmp_path / "live.csv"
    write_csv(csv, upto=2000)
    run = read_run(csv, total_steps=3000, warn=False)
    assert run.lr is not None and run.lr.assumed_after == 2000
    data = build_report(run)
    assert data.what_if, "the what-ifs stand on their own"
    assert not [e for e in data.events if e.kind == "schedule_advice"], data.events
    # the same plan given: its advice is said
    given = build_report(read_run(csv, schedule="constant:peak=1e-3,warmup=50,total=3000", warn=False))
    assert [e for e in given.events if e.kind == "schedule_advice"]
