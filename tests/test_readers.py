"""Readers: TensorBoard round trips (Megatron, Lightning and HF tags), CSV/JSONL edge cases, LR rebuilding."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.readers import read_run, read_tensorboard
from scaleforecast.runs import ReadError
from scaleforecast.schedule_fit import fit_schedule, rebuild_lrs
from scaleforecast.schedules import parse_schedule
from scaleforecast.tables import read_table
from scaleforecast.tfevents import scan_records

SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter

SPEC = "cosine:peak=1e-3,warmup=20,total=400,final=1e-5"
LRS = parse_schedule(SPEC).lrs()


def _loss(step: np.ndarray | int) -> np.ndarray:
    return 2.0 + 3.0 * (np.asarray(step, dtype=float) * 1e-3) ** -0.2 / 10


def _write(
    logdir: Path, steps: range, loss_tag: str, lr_tag: str | None, lr_every: int = 1, flush_secs: int = 120
) -> None:
    w = SummaryWriter(str(logdir), flush_secs=flush_secs)
    for s in steps:
        w.add_scalar(loss_tag, float(_loss(s)), s)
        if lr_tag and s % lr_every == 0:
            w.add_scalar(lr_tag, float(LRS[s - 1]), s)
    w.close()


def test_megatron_tags_several_files_gap_windows(tmp_path: Path) -> None:
    run = tmp_path / "megatron"
    # Megatron logs every log_interval iterations; a restart opens a second event file.
    _write(run, range(10, 201, 10), "lm loss", "learning-rate", lr_every=10)
    time.sleep(1.1)
    _write(run, range(210, 401, 10), "lm loss", "learning-rate", lr_every=10)
    assert len(list(run.iterdir())) == 2
    data = read_run(run, warn=False)
    assert data.format == "tensorboard" and data.loss_name == "lm loss" and data.lr_name == "learning-rate"
    np.testing.assert_array_equal(data.steps, np.arange(10, 401, 10))
    np.testing.assert_allclose(data.losses, _loss(data.steps), rtol=1e-6)
    # Megatron's "lm loss" is the mean over the log interval.
    assert set(data.windows.tolist()) == {10}
    assert data.total_steps == 400
    assert data.lr is not None and data.lr.source.startswith("fit:cosine")
    assert data.lr.max_error is not None and data.lr.max_error < 0.01
    np.testing.assert_allclose(data.lrs[20:], LRS[20:], rtol=0, atol=0.01 * 1e-3)


def test_megatron_deepspeed_tags_are_found_by_their_last_component(tmp_path: Path) -> None:
    """Megatron-DeepSpeed files Megatron's ``lm loss`` under a folder of its own, beside the same loss against
    samples and the validation loss: no default name matched, ``--loss "lm loss"`` neither, and ``watch``
    waited for a tag that was there."""
    run = tmp_path / "megatron_ds"
    w = SummaryWriter(str(run))
    for s in range(10, 401, 10):
        w.add_scalar("lm-loss-training/lm loss", float(_loss(s)), s)
        w.add_scalar("lm-loss-training/lm loss vs samples", float(_loss(s)), 8 * s)
        w.add_scalar("learning-rate/learning-rate", float(LRS[s - 1]), s)
        if s % 100 == 0:
            w.add_scalar("lm-loss-validation/lm loss validation", float(_loss(s)) + 0.1, s)
    w.close()
    for wanted in (None, "lm loss", "LM loss"):
        data = read_run(run, loss=wanted, warn=False)
        assert data.loss_name == "lm-loss-training/lm loss" and data.lr_name == "learning-rate/learning-rate"
        assert set(data.windows.tolist()) == {10}  # the mean over the log interval, as Megatron's own
        np.testing.assert_array_equal(data.steps, np.arange(10, 401, 10))
    # a name at the end of two tags' paths names neither
    w = SummaryWriter(str(tmp_path / "two"))
    for s in range(10, 401, 10):
        w.add_scalar("a/lm loss", float(_loss(s)), s)
        w.add_scalar("b/lm loss", float(_loss(s)), s)
    w.close()
    with pytest.raises(ReadError, match="no loss tag matching 'lm loss'"):
        read_run(tmp_path / "two", loss="lm loss", warn=False)


def test_lightning_tags_dense_lr_and_nested_version_dir(tmp_path: Path) -> None:
    run = tmp_path / "lightning_logs" / "version_0"
    _write(run, range(1, 401), "train_loss", "lr-AdamW")
    data = read_run(tmp_path / "lightning_logs", warn=False)
    assert data.loss_name == "train_loss" and data.lr_name == "lr-AdamW"
    assert data.lr is not None and data.lr.source == "logged"
    np.testing.assert_allclose(data.lrs, LRS, rtol=1e-6)
    assert set(data.windows.tolist()) == {1}
    assert len(data.steps) == 400


def test_hf_tags_and_patterns(tmp_path: Path) -> None:
    run = tmp_path / "hf"
    _write(run, range(5, 401, 5), "train/loss", "train/learning_rate", lr_every=5)
    # "train/*" also matches the LR tag: a pattern never picks the LR as the loss.
    data = read_tensorboard(run, loss="train/*", lr="*learning_rate")
    assert data.loss_name == "train/loss" and data.lr_name == "train/learning_rate"
    np.testing.assert_allclose(data.losses, _loss(data.steps), rtol=1e-6)
    data = read_tensorboard(run, loss="train/lo*")
    assert data.loss_name == "train/loss" and data.lr_name == "train/learning_rate"
    assert set(data.windows.tolist()) == {5}
    with pytest.raises(ReadError, match=r"no loss tag matching 'nope'.*train/loss"):
        read_tensorboard(run, loss="nope")
    with pytest.raises(ReadError, match="no LR tag matching"):
        read_tensorboard(run, lr="momentum")


def test_truncated_event_file_reads_what_came_before(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write(run, range(1, 101), "lm loss", "learning-rate")
    (f,) = list(run.iterdir())
    data = f.read_bytes()
    f.write_bytes(data[:-7])
    scan = scan_records(data[:-7])
    assert scan.truncated and not scan.damage and 0 < scan.end < len(data) - 7
    with pytest.warns(UserWarning, match="truncated record"):
        out = read_run(run, schedule=SPEC)
    assert 95 <= len(out.steps) <= 100


def test_garbage_and_empty_event_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "events.out.tfevents.1.host").write_bytes(b"this is not a tfrecord at all" * 5)
    with pytest.raises(
        ReadError, match=r"not a TensorBoard event file \(no valid record in its first 145 bytes\)"
    ):
        read_tensorboard(bad)
    empty = tmp_path / "empty"
    SummaryWriter(str(empty)).close()
    with pytest.raises(ReadError, match="no scalars"):
        read_tensorboard(empty)
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(ReadError, match="no TensorBoard event files") as info:
        read_tensorboard(nothing)
    assert "trainer_state" not in str(info.value)
    (nothing / "trainer_state.json").write_text('{"log_history": []}')  # an HF checkpoint folder
    with pytest.raises(ReadError, match=r"found; it holds an HF trainer_state\.json: pass that file"):
        read_tensorboard(nothing)
    with pytest.raises(ReadError, match=r"cannot read .*missing: No such file or directory"):
        read_run(tmp_path / "missing")


def test_several_runs_below_a_dir_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "a", range(1, 5), "loss", None)
    _write(tmp_path / "b", range(1, 5), "loss", None)
    with pytest.raises(ReadError, match="holds 2 runs"):
        read_tensorboard(tmp_path)


def test_missing_lr_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path / "r", range(1, 50), "loss", None)
    with pytest.raises(
        ReadError, match=r"no LR for every step; pass --lr-file .* --schedule SPEC \(no LR logged"
    ):
        read_run(tmp_path / "r")
    data = read_run(tmp_path / "r", require_lr=False)
    assert data.lr is None
    data = read_run(tmp_path / "r", schedule="constant:peak=1e-3,total=60")
    assert data.total_steps == 60 and data.lr is not None and data.lr.source == "schedule"


def test_a_run_that_logs_no_loss_of_its_own_is_read_from_the_plugins_observed_loss(tmp_path: Path) -> None:
    """A Lightning module that logs nothing: the callback's own observed loss (the mean of each 10-step flush)
    is the run's loss, each value the mean over the updates since the previous one."""
    run = tmp_path / "quiet"
    _write(run, range(10, 401, 10), "forecast/observed_vs_forecast", "lr-SGD", lr_every=10)
    data = read_run(run, warn=False)
    assert data.loss_name == "forecast/observed_vs_forecast" and data.lr_name == "lr-SGD"
    assert set(data.windows.tolist()) == {10}


def test_resume_in_event_files_keeps_newest(tmp_path: Path) -> None:
    run = tmp_path / "resumed"
    _write(run, range(1, 61), "loss", None)
    time.sleep(1.1)
    w = SummaryWriter(str(run))
    for s in range(41, 81):
        w.add_scalar("loss", 1.0, s)
    w.close()
    with pytest.warns(UserWarning, match="steps go back"):
        data = read_run(run, schedule="constant:peak=1e-3,total=100")
    np.testing.assert_array_equal(data.steps, np.arange(1, 81))
    assert np.all(data.losses[40:] == 1.0) and np.all(data.losses[:40] > 1.0)


# ------------------------------------------------------------------------------------------------ CSV
def test_csv_basic_sparse_lr_and_nan(tmp_path: Path) -> None:
    p = tmp_path / "run.csv"
    lines = ["step,lr,train_loss,val_loss", "0,,,11.0"]
    for s in range(10, 401, 10):
        loss = "nan" if s == 200 else f"{_loss(s):.6f}"
        lines.append(f"{s},{float(LRS[s - 1])!r},{loss},")
    p.write_text("\n".join(lines) + "\n")
    # val_loss exists but holds only the step-0 point (the law has no value there): train_loss is the column.
    data = read_run(p, warn=False)
    assert data.loss_name == "train_loss"
    assert data.steps[0] == 10 and data.n_nonfinite == 1
    assert data.lr is not None and data.lr.source.startswith("fit:cosine")
    assert data.lr.max_error < 0.01


def test_csv_empty_column_falls_through(tmp_path: Path) -> None:
    p = tmp_path / "run.csv"
    p.write_text("step,lr,train_loss,val_loss\n1,1e-3,3.0,\n2,1e-3,2.9,\n3,1e-3,2.8,\n")
    data = read_table(p)
    assert data.loss_name == "train_loss"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty CSV"),
        ("step,loss\n", "has no values"),
        ("iteration_count,loss\n1,2.0\n", r"no 'step' column \(columns: iteration_count, loss\)"),
        ("step,accuracy\n1,0.5\n", "no loss column"),
        ("step,loss\n1,abc\n", r"run.csv:2: not a number: 'abc' \(column loss\)"),
        ("step,loss\n1.5,2.0\n", "non-negative integer"),
        ("step,loss\n1e300,2.0\n", "non-negative integer"),
        ("step,loss\n1,2.0,7\n", "3 cells but the header has 2"),
        ("step,loss,loss\n1,2,3\n", "duplicate column names in header: loss"),
        ("step,loss\n0,2.0\n", "no values at steps >= 1"),
        ("step,loss,window\n1,2.0,0\n", "window must be a positive integer"),
        ("step,loss\n1,2.0\n\x00\n", r"run.csv:3: not a number: .\\x00. \(column step\)"),
    ],
)
def test_csv_errors_are_one_line(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "run.csv"
    p.write_text(text)
    with pytest.raises(ReadError, match=needle) as info:
        read_table(p)
    assert "\n" not in str(info.value)


def test_csv_last_line_without_line_end_bom_and_binary(tmp_path: Path) -> None:
    p = tmp_path / "run.csv"
    p.write_text("step,loss,lr\n1,3.0,4.5e-06\n2,2.9,4.4e-06\n3,2.8,4.3")
    # a job's log read while it writes a line: the cut left a number (4.3e-06 read as 4.3)
    data = read_table(p)
    assert data.steps.tolist() == [1, 2] and data.lr_values.tolist() == [4.5e-06, 4.4e-06]
    assert any("last line has no line end" in w for w in data.warnings)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfstep,loss\r\n1,3.0\r\n2,2.9\r\n")
    data = read_table(bom)
    assert data.loss_name == "loss" and data.steps.tolist() == [1, 2]
    b = tmp_path / "bin.csv"
    b.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ReadError, match="not a text file"):
        read_table(b)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("step,loss,run\n1,3.0,größer\n".encode("latin-1"))
    with pytest.raises(
        ReadError, match=r"not UTF-8 text \(save it as UTF-8\) \(invalid start byte at byte 22\)"
    ):
        read_table(latin)


def test_jsonl_given_as_csv_is_read_as_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "run.csv"
    p.write_text("".join(json.dumps({"step": s, "loss": 3.0 - s / 100}) + "\n" for s in range(1, 11)))
    data = read_table(p)
    assert data.format == "jsonl" and data.steps.tolist() == list(range(1, 11))
    assert any("holds JSON lines, not CSV" in w for w in data.warnings)


def test_csv_window_column_and_option(tmp_path: Path) -> None:
    p = tmp_path / "run.csv"
    p.write_text("step,loss,window\n10,3.0,10\n20,2.9,10\n25,2.8,5\n")
    data = read_table(p)
    assert data.windows.tolist() == [10, 10, 5]
    data = read_table(p, window="gap")
    assert data.windows.tolist() == [10, 10, 5]
    q = tmp_path / "r2.csv"
    q.write_text("step,loss\n10,3.0\n20,2.9\n")
    assert read_table(q, window=4).windows.tolist() == [4, 4]
    # A resumed log with a window column keeps each point's own window.
    r = tmp_path / "r3.csv"
    r.write_text("step,loss,window\n10,3.0,10\n20,2.9,10\n15,2.95,5\n25,2.8,10\n")
    data = read_table(r)
    assert data.steps.tolist() == [10, 15, 25] and data.windows.tolist() == [10, 5, 10]


# ---------------------------------------------------------------------------------------------- JSONL
def test_jsonl_nested_eval_lines_and_cut_tail(tmp_path: Path) -> None:
    p = tmp_path / "run.jsonl"
    recs = []
    for s in range(1, 401):
        recs.append(json.dumps({"step": s, "train": {"loss": float(_loss(s))}, "lr": float(LRS[s - 1])}))
        if s % 100 == 0:
            recs.append(json.dumps({"step": s, "eval": {"loss": 3.0}}))
    p.write_text("\n".join(recs) + '\n{"step": 401, "train": {"lo')
    data = read_run(p, warn=False)
    assert data.format == "jsonl" and data.loss_name == "train/loss"
    assert len(data.steps) == 400
    assert data.lr is not None and data.lr.source == "logged"
    assert any("cut off" in w for w in data.warnings)


def test_a_loss_key_renamed_mid_log_is_said_not_cut_silently(tmp_path: Path) -> None:
    """A logger that renamed its loss key halfway: the run was fitted to the first half with no word of the
    steps, LR and loss logged after it."""
    p = tmp_path / "run.jsonl"
    key = lambda s: "loss" if s <= 200 else "lm loss"  # noqa: E731
    p.write_text(
        "".join(
            json.dumps({"step": s, key(s): float(_loss(s)), "lr": float(LRS[s - 1])}) + "\n"
            for s in range(1, 401)
        )
    )
    data = read_run(p, warn=False)
    assert data.loss_name == "loss" and int(data.steps[-1]) == 200
    (note,) = [w for w in data.warnings if "ends at step" in w]
    assert note == (
        "run.jsonl: its loss column 'loss' ends at step 200, but the log goes on to step 400 in 200 more rows "
        "(logged after it: lm loss): the run is read to step 200; if another column holds the loss after it, "
        "name it with --loss"
    )
    # a loss column that goes on to the end of its log says nothing
    q = tmp_path / "fine.jsonl"
    q.write_text(
        "".join(
            json.dumps({"step": s, "loss": float(_loss(s)), "lr": float(LRS[s - 1])}) + "\n"
            for s in range(1, 401)
        )
    )
    assert not [w for w in read_run(q, warn=False).warnings if "ends at step" in w]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "no JSON records"),
        ("not json\n[1]\n", r"run.jsonl:1: not valid JSON \(Expecting value at column 1\)"),
        ("[1, 2]\n", "expected a JSON object, got list"),
        ('{"step": 1, "loss": "x"}\n', r"run.jsonl:1: not a number: 'x' \(column loss\)"),
        ('{"step": 1, "loss": true}\n', "not a number"),
        ('{"step": 1, "loss": [1, 2]}\n', r"not a number: '\[1, 2\]'"),
        ('{"step": 1, "acc": 0.5}\n', "no loss column"),
    ],
)
def test_jsonl_errors(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "run.jsonl"
    p.write_text(text)
    with pytest.raises(ReadError, match=needle):
        read_table(p)


# ------------------------------------------------------------------------------------------ LR rebuild
@pytest.mark.parametrize(
    "spec",
    [
        "constant:peak=3e-4,warmup=100,total=5000",
        "cosine:peak=6e-4,warmup=200,total=5000,final=6e-5",
        "linear:peak=1e-3,warmup=100,total=5000",
        "wsd:peak=1e-3,warmup=100,total=5000,cooldown=0.2,shape=linear",
        "wsd:peak=1e-3,warmup=100,total=5000,cooldown=0.3,shape=1-sqrt",
        "wsd:peak=1e-3,total=5000,cooldown=0.2,shape=exp,final=1e-5",
        "step:peak=1e-3,warmup=100,total=5000,milestones=2500/4000,gamma=0.3",
        "inv_sqrt:peak=1e-3,warmup=200,total=5000",
    ],
)
def test_rebuild_every_family_from_sparse_points(spec: str) -> None:
    true = parse_schedule(spec).lrs()
    steps = np.arange(50, 5001, 50)
    rec = rebuild_lrs(steps, true[steps - 1], total=5000)
    assert rec.trusted and rec.source.startswith("fit:")
    assert rec.max_error is not None and rec.max_error < 0.01
    # What the forecast depends on: the LR area. A step milestone is only known to within the logging gap (and
    # is placed at its end: two milestones, 50 steps each, at 70 % of the peak, are 1.5 % of this run's area).
    tol = 0.02 if spec.startswith("step") else 0.005
    assert abs(rec.lrs.sum() - true.sum()) / true.sum() < tol
    best = fit_schedule(steps, true[steps - 1], 5000)[0][2]
    assert best.kind == parse_schedule(spec).kind
    # the rebuilt schedule is said, with how it was rebuilt (its warm-up before the first point is a guess)
    assert any("LR rebuilt as" in w and "logged every ~50 steps" in w for w in rec.warnings), rec.warnings


def test_a_rebuilt_step_drop_comes_as_late_as_the_logged_points_allow() -> None:
    """A two-stage run (Luo et al.'s data): the LR logged every 128 steps, 3e-4 at step 7936 and 9e-5 at 8000
    (the LR of the next update). The drop is placed after update 8000, so that the loss logged at 8000, where
    nothing has dropped yet, does not count as steps into the drop (which pinned C at 0 and forecast the run
    1-5 % high)."""
    steps = np.union1d(np.arange(128, 16001, 128), [8000])
    vals = np.where(steps < 8000, 3e-4, 9e-5)
    rec = rebuild_lrs(steps, vals, total=16000)
    assert rec.trusted and rec.source.startswith("fit:step")
    drop = 1001 + int(np.flatnonzero(rec.lrs[1000:] < 1e-4)[0])  # the first update at the new LR
    assert drop == 8001
    assert rec.max_error is not None and rec.max_error < 1e-9  # a logger one step off is no mismatch


def test_rebuild_unknown_shape_warns_loudly() -> None:
    steps = np.arange(10, 1001, 10)
    vals = 1e-3 * (1.0 + 0.5 * np.sin(steps / 60.0))  # cyclic: no family fits
    rec = rebuild_lrs(steps, vals, total=1200)
    assert not rec.trusted and rec.source == "interpolated"
    assert any("CANNOT BE TRUSTED" in w for w in rec.warnings)
    assert len(rec.lrs) == 1200 and rec.lrs[-1] == vals[-1]


def test_rebuild_with_given_schedule_checks_logged_points() -> None:
    steps = np.arange(10, 401, 10)
    rec = rebuild_lrs(steps, LRS[steps - 1], schedule=SPEC)
    assert rec.source == "schedule" and rec.max_error < 1e-9 and not rec.warnings
    # the same schedule in other units (a multiplier against absolute LRs): said, and no mismatch (it was a
    # loud one, "differs by 99.9 % of peak", for a forecast units do not change)
    units = rebuild_lrs(steps, LRS[steps - 1] * 1e3, schedule=SPEC)
    assert units.trusted and units.warnings == [
        "run: the given schedule is the logged LR in other units (times 0.001); the forecast does not depend on the "
        "LR's units"
    ]
    shape = LRS[steps - 1].copy()
    shape[steps > 200] *= 0.5  # a step decay the schedule does not have
    wrong = rebuild_lrs(steps, shape * 1e3, schedule=SPEC)
    assert any("differs from the logged LR" in w and "times 0.001" in w for w in wrong.warnings)
    assert not wrong.trusted
    with pytest.raises(ReadError, match="has 400 updates but the run's total is 500"):
        rebuild_lrs(steps, LRS[steps - 1], total=500, schedule=SPEC)
    with pytest.raises(ReadError, match="only 2 step"):
        rebuild_lrs(np.array([1, 2]), np.array([1e-3, 1e-3]), total=10)


def test_core_imports_neither_tensorboard_torch_nor_integrations() -> None:
    """The readers load TensorBoard on first use; the command line (watch included) is core: no integrations."""
    code = (
        "import sys, scaleforecast.readers, scaleforecast.cli as c; c.build_parser(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorboard', 'torch', 'tensorboardX'}), "
        "[m for m in sys.modules if m.startswith('scaleforecast.integrations')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"


def test_import_loads_no_heavy_scipy_module() -> None:
    """``import scaleforecast`` stays cheap (benchmarks/import_time.py has the times): scipy.stats, .signal and
    .optimize load on first use only."""
    code = "import sys, scaleforecast; print([m for m in ('scipy.stats', 'scipy.signal', 'scipy.optimize') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_feed_sends_windows(tmp_path: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[list[int], int]] = []

        def observe_many(self, steps: np.ndarray, losses: np.ndarray, window: int = 1) -> None:
            self.calls.append((steps.tolist(), window))

    p = tmp_path / "run.csv"
    p.write_text("step,loss,window\n10,3.0,10\n20,2.9,10\n25,2.8,5\n30,2.7,5\n")
    rec = Recorder()
    assert read_table(p).feed(rec, after=10) == 3
    assert rec.calls == [([20], 10), ([25, 30], 5)]


def test_real_curve_converted_to_event_files(tmp_path: Path, curves_dir: Path) -> None:
    csv_path = next(iter(sorted((curves_dir / "epfml_schaipp_haegele").glob("*wsd*.csv"))))
    true = np.load(str(csv_path)[:-4] + ".lr.npy")
    src = read_table(csv_path, loss="train_loss")
    w = SummaryWriter(str(tmp_path / "tb"))
    for s, y in zip(src.steps, src.losses, strict=True):
        w.add_scalar("lm loss", float(y), int(s))
        w.add_scalar("learning-rate", float(true[s - 1]), int(s))
    w.close()
    data = read_run(tmp_path / "tb", window=1, warn=False)
    np.testing.assert_array_equal(data.steps, src.steps)
    np.testing.assert_allclose(data.losses, src.losses, rtol=1e-6)
    assert data.lr is not None and data.lr.trusted
    assert abs(data.lrs.sum() - true.sum()) / true.sum() < 0.005


def test_progress_bar_only_when_asked_or_on_a_tty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "run.csv"
    p.write_text("step,loss\n" + "".join(f"{s},{3.0 - s * 1e-4}\n" for s in range(1, 2001)))
    read_table(p, progress=True)
    err = capsys.readouterr().err
    assert "reading run.csv" in err and "100%" in err
    read_table(p)  # stderr is not a terminal under pytest: no bar
    assert capsys.readouterr().err == ""


def test_zero_lr_at_the_edges_is_a_real_lr(tmp_path: Path) -> None:
    lrs = np.r_[0.0, np.full(98, 1e-3), 0.0]
    p = tmp_path / "run.csv"
    p.write_text("step,lr,loss\n" + "".join(f"{s},{float(lrs[s - 1])!r},3.0\n" for s in range(1, 101)))
    data = read_run(p)
    assert data.lr is not None and data.lr.source == "logged" and not data.warnings


def test_dense_logs_of_a_shape_no_family_knows_are_interpolated_quietly() -> None:
    """A two-stage cooldown logged every 25 steps: no family fits, but consecutive logged LRs differ by little,
    so the interpolation is close and trusted (it used to say the LR cannot be trusted); the warm-up before
    the first log is rebuilt as for a family, not held at the first logged LR."""
    total = 5000
    t = np.arange(1, total + 1)
    true = np.interp(t, [0, 100, 3000, 3500, 4500, 5000], [0, 1e-3, 1e-3, 5e-4, 5e-4, 1e-5])
    steps = np.arange(200, total + 1, 25)
    rec = rebuild_lrs(steps, true[steps - 1], total=total)
    assert rec.source == "interpolated" and rec.trusted
    assert not any("CANNOT BE TRUSTED" in w for w in rec.warnings)
    assert any("interpolated between the" in w for w in rec.warnings)
    assert abs(rec.lrs.sum() - true.sum()) / true.sum() < 0.01
    assert rec.lrs[0] < 0.05 * 1e-3  # a warm-up from 0, not the peak from update 1


def test_a_live_log_says_what_comes_after_its_last_lr_is_a_continuation() -> None:
    """A WSD run watched before its cooldown: its LR log is constant so far, and the rebuild says that what
    follows is the constant continued (a decay still to come needs the schedule)."""
    true = parse_schedule("wsd:peak=1e-3,warmup=100,total=5000,cooldown=0.2").lrs()
    steps = np.arange(10, 2001, 10)
    rec = rebuild_lrs(steps, true[steps - 1], total=5000)
    assert rec.source.startswith("fit:constant") and rec.assumed_after == 2000
    assert any(
        "LR logged up to step 2000 of 5000: after it, the rebuilt constant schedule" in w
        for w in rec.warnings
    )
    done = rebuild_lrs(np.arange(10, 5001, 10), true[np.arange(10, 5001, 10) - 1], total=5000)
    assert not any("LR logged up to step" in w for w in done.warnings) and done.assumed_after is None


def test_a_gap_log_that_starts_partway_gives_its_first_point_one_interval(tmp_path: Path) -> None:
    """A Megatron log resumed into a new folder starts at step 210: its first ``lm loss`` averages one log
    interval (10 updates), not the 210 since step 0; a log from the start keeps the gap to step 0."""
    _write(tmp_path / "resumed", range(210, 401, 10), "lm loss", "learning-rate", lr_every=10)
    data = read_run(tmp_path / "resumed", warn=False)
    assert data.windows.tolist() == [10] * len(data.steps)
    _write(tmp_path / "fresh", range(5, 401, 10), "lm loss", "learning-rate", lr_every=5)
    assert read_run(tmp_path / "fresh", warn=False).windows.tolist() == [5] + [10] * 39


# ------------------------------------------------------------------------------------------ column names
def test_a_wandb_export_is_read_by_its_keys(tmp_path: Path) -> None:
    """W&B's CSV export: a ``Step`` column, ``<run> - <key>`` columns and their ``__MIN``/``__MAX`` companions."""
    import csv

    p = tmp_path / "wandb_export.csv"
    with open(p, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(
            [
                "Step",
                "gpt2 - run 3 - train/loss",
                "gpt2 - run 3 - train/loss__MIN",
                "gpt2 - run 3 - train/loss__MAX",
            ]
        )
        for s in range(10, 401, 10):
            loss = float(_loss(s))
            out.writerow([s, loss, loss - 0.1, loss + 0.1])
    data = read_run(p, schedule=SPEC, warn=False)
    assert data.loss_name == "gpt2 - run 3 - train/loss"
    np.testing.assert_array_equal(data.steps, np.arange(10, 401, 10))
    np.testing.assert_allclose(data.losses, _loss(data.steps), rtol=1e-9)
    assert set(data.windows.tolist()) == {10}  # HF's train/loss is the mean since the previous log
    assert read_run(p, loss="TRAIN/LOSS", schedule=SPEC, warn=False).loss_name == "gpt2 - run 3 - train/loss"
    # An export of two runs: which one is meant is for the user to say.
    two = tmp_path / "two.csv"
    two.write_text("Step,a - train/loss,b - train/loss\n1,3.0,3.1\n2,2.9,3.0\n")
    with pytest.raises(ReadError, match=r"matches several columns/tags \(a - train/loss, b - train/loss\)"):
        read_run(two, schedule=SPEC, warn=False)
    assert read_run(two, loss="b - train/loss", schedule=SPEC, warn=False).losses.tolist() == [3.1, 3.0]


def test_tags_are_found_whatever_their_case(tmp_path: Path) -> None:
    """``Loss/train`` is the tag of PyTorch's SummaryWriter tutorial; names match regardless of case."""
    _write(tmp_path / "tut", range(1, 401), "Loss/train", "LR")
    data = read_run(tmp_path / "tut", warn=False)
    assert (data.loss_name, data.lr_name) == ("Loss/train", "LR")
    assert read_run(tmp_path / "tut", loss="loss/TRAIN", warn=False).loss_name == "Loss/train"
    with pytest.raises(ReadError, match=r"no loss tag matching 'val/loss'; scalar tags: LR, Loss/train"):
        read_run(tmp_path / "tut", loss="val/loss", warn=False)
    csv_run = tmp_path / "run.csv"
    csv_run.write_text("Iteration,Train_Loss,Learning_Rate\n1,3.0,1e-3\n2,2.9,1e-3\n")
    data = read_run(csv_run, total_steps=2, warn=False)
    assert (data.loss_name, data.lr_name, data.steps.tolist()) == ("Train_Loss", "Learning_Rate", [1, 2])
    with pytest.raises(
        ReadError, match=r"no column 'val_loss' \(columns: Iteration, Train_Loss, Learning_Rate\)"
    ):
        read_run(csv_run, loss="val_loss", warn=False)


# ------------------------------------------------------------------------------ other frameworks' files
def test_an_hf_trainer_state_is_read_from_its_log_history(tmp_path: Path) -> None:
    """``trainer_state.json`` as the HF Trainer saves it with a checkpoint: its ``log_history`` holds the
    training records (the mean loss since the previous log, the LR), eval records and a summary; ``max_steps``
    is the run's planned length, which a run in progress has not reached."""
    transformers = pytest.importorskip("transformers")
    history: list[dict] = [
        {
            "epoch": s / 400,
            "grad_norm": 1.0,
            "learning_rate": float(LRS[s]),
            "loss": float(_loss(s)),
            "step": s,
        }
        for s in range(10, 301, 10)
    ]
    history.insert(10, {"epoch": 0.25, "eval_loss": 3.0, "eval_runtime": 1.2, "step": 100})
    state = transformers.TrainerState(global_step=300, max_steps=400, log_history=history)
    path = tmp_path / "checkpoint-300" / "trainer_state.json"
    path.parent.mkdir()
    state.save_to_json(str(path))
    data = read_run(path, warn=False)
    assert data.loss_name == "loss" and data.lr_name == "learning_rate"
    np.testing.assert_array_equal(data.steps, np.arange(10, 301, 10))
    assert set(data.windows.tolist()) == {10}  # the mean over logging_steps
    assert data.total_steps == 400
    assert data.warnings[0] == "trainer_state.json: an HF Trainer state: read its log_history (31 records)"
    # the same state written on one line (json.dump without indent) is no single JSON-lines record
    compact = tmp_path / "compact" / "trainer_state.json"
    compact.parent.mkdir()
    compact.write_text(json.dumps(json.loads(path.read_text())))
    np.testing.assert_array_equal(read_run(compact, warn=False).steps, data.steps)


def test_a_lightning_csvlogger_folder_is_read_from_its_metrics_csv(tmp_path: Path) -> None:
    loggers = pytest.importorskip("lightning.pytorch.loggers")
    logger = loggers.CSVLogger(str(tmp_path), name="lightning_logs")
    for s in range(1, 401):
        logger.log_metrics({"train_loss": float(_loss(s)), "lr-AdamW": float(LRS[s - 1])}, step=s)
    logger.save()
    for run in (tmp_path / "lightning_logs", tmp_path / "lightning_logs" / "version_0"):
        data = read_run(run, warn=False)
        assert data.format == "csv" and (data.loss_name, data.lr_name) == ("train_loss", "lr-AdamW")
        np.testing.assert_array_equal(data.steps, np.arange(1, 401))
        assert data.warnings[0].endswith(
            f"read the CSVLogger file {tmp_path}/lightning_logs/version_0/metrics.csv"
        )
    # A second run (version_1): which one is meant is for the user to say.
    second = loggers.CSVLogger(str(tmp_path), name="lightning_logs")
    second.log_metrics({"train_loss": 1.0}, step=1)
    second.save()
    with pytest.raises(
        ReadError, match=r"holds 2 CSVLogger runs \(version_0, version_1\); pass one run directory"
    ):
        read_run(tmp_path / "lightning_logs", warn=False)


def test_add_scalars_subfolders_are_named_in_the_error(tmp_path: Path) -> None:
    """``add_scalars("loss", {"train": ...})`` writes the loss into ``<logdir>/loss_train/``: the error says so."""
    w = SummaryWriter(str(tmp_path / "run"))
    for s in range(1, 401):
        w.add_scalars("loss", {"train": float(_loss(s))}, s)
        w.add_scalar("lr", float(LRS[s - 1]), s)
    w.close()
    with pytest.raises(ReadError) as err:
        read_run(tmp_path / "run", warn=False)
    assert str(err.value).endswith(
        "scalar tags: lr; its subfolders hold more runs (written by add_scalars?): loss_train (tags: loss): pass "
        f"{tmp_path}/run/loss_train as the run, with --lr-file or --schedule if its LR is not there"
    )
    assert read_run(tmp_path / "run" / "loss_train", schedule=LRS, warn=False).loss_name == "loss"


def test_a_stray_file_among_the_event_files_is_skipped_with_a_note(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write(run, range(1, 401), "loss", "lr")
    stray = run / "events.out.tfevents.9999999999.host.1.0"
    stray.write_bytes(b"not an event file" * 40)
    data = read_run(run, strict=True, warn=False)
    np.testing.assert_array_equal(data.steps, np.arange(1, 401))
    assert data.warnings == [
        f"{stray}: not a TensorBoard event file (no valid record in its first 680 bytes); skipped it, read the "
        "other event files"
    ]


def test_a_header_written_again_by_a_resumed_job_is_skipped_with_a_note(tmp_path: Path) -> None:
    """A job resumed from its step-2 checkpoint appends to its CSV with its header again: the header line is
    skipped with a note (it failed the read: "not a number: 'step'"), and the steps it repeats are the resume's."""
    p = tmp_path / "run.csv"
    p.write_text("step,loss,lr\n1,3.0,1e-3\n2,2.9,1e-3\n3,2.8,1e-3\nstep,loss,lr\n3,2.75,1e-3\n4,2.7,1e-3\n")
    data = read_table(p)
    assert data.steps.tolist() == [1, 2, 3, 4] and data.losses.tolist() == [3.0, 2.9, 2.75, 2.7]
    assert any(
        "run.csv:5: the header again (a job resumed into the same file?); skipped it" in w
        for w in data.warnings
    )
