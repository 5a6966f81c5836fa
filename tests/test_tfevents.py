"""Event files: record checksums (against TensorBoard's own implementation), corruption found and reported with
where reading stopped, and the tailer the sidecar polls (growth, partial records, truncation, rotation)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from scaleforecast.cli import main
from scaleforecast.readers import read_run
from scaleforecast.tfevents import EventTailer, masked_crc32c, read_event_scalars, scan_records

SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference_crc  # noqa: E402

SPEC = "cosine:peak=1e-3,warmup=20,total=1000"
N = 1000


def _write_run(run: Path, steps: range = range(1, N + 1)) -> Path:
    before = set(run.iterdir()) if run.exists() else set()
    w = SummaryWriter(str(run))
    for s in steps:
        w.add_scalar("loss", 3.0 - s * 1e-3, s)
        w.add_scalar("grad_norm", 1.0, s)
    w.close()
    (f,) = set(run.iterdir()) - before
    return f


def _record_offsets(data: bytes) -> list[int]:
    scan = scan_records(data)
    return [int(s) - 12 for s in scan.starts]


def test_checksums_match_tensorboard_for_every_length() -> None:
    rng = np.random.default_rng(0)
    msgs = [
        bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in [*range(0, 70), 127, 128, 129, 1000, 70_000]
    ]
    buf = b"".join(msgs)
    starts = np.cumsum([0] + [len(m) for m in msgs[:-1]])
    got = masked_crc32c(np.frombuffer(buf, np.uint8), starts, [len(m) for m in msgs])
    assert got.tolist() == [reference_crc(m) for m in msgs]


def test_a_flipped_bit_in_a_payload_costs_one_point_and_is_reported(tmp_path: Path) -> None:
    f = _write_run(tmp_path / "run")
    data = bytearray(f.read_bytes())
    offsets = _record_offsets(bytes(data))
    at = offsets[len(offsets) // 4]  # a quarter in: TensorBoard's own reader stops here without a word
    data[at + 20] ^= 0x04
    f.write_bytes(bytes(data))
    scalars, notes = read_event_scalars(tmp_path / "run")
    assert len(scalars["loss"][0]) + len(scalars["grad_norm"][0]) == 2 * N - 1
    (note,) = notes
    assert f"corrupt data at byte {at} (record payload fails its checksum)" in note
    assert f"read on from byte {offsets[len(offsets) // 4 + 1]}" in note
    with pytest.warns(UserWarning, match="corrupt data"):
        run = read_run(tmp_path / "run", schedule=SPEC)
    assert run.last_step == N and len(run.steps) >= N - 1
    strict = read_run(tmp_path / "run", schedule=SPEC, strict=True, warn=False)  # forecast's mode: the same
    assert strict.warnings == run.warnings and np.array_equal(strict.steps, run.steps)


def test_a_broken_length_field_is_skipped_to_the_next_valid_record(tmp_path: Path) -> None:
    f = _write_run(tmp_path / "run")
    data = bytearray(f.read_bytes())
    offsets = _record_offsets(bytes(data))
    k = len(offsets) // 2
    data[offsets[k] + 1] ^= 0x80  # the record now claims to be 32 KiB longer
    f.write_bytes(bytes(data))
    scalars, notes = read_event_scalars(f)
    assert len(scalars["loss"][0]) + len(scalars["grad_norm"][0]) == 2 * N - 1
    (note,) = notes
    assert f"corrupt data at byte {offsets[k]} (bad record header)" in note
    assert f"read on from byte {offsets[k + 1]}" in note
    assert "(a point logged at step" in note or "(points between step" in note


def test_garbage_at_the_end_says_where_reading_stopped(tmp_path: Path) -> None:
    f = _write_run(tmp_path / "run")
    size = f.stat().st_size
    with open(f, "ab") as fh:
        fh.write(os.urandom(300))
    scalars, notes = read_event_scalars(f)
    assert len(scalars["loss"][0]) == N
    (note,) = notes
    assert (
        f"corrupt data at byte {size}" in note and "reading stopped there, 300 bytes before the end" in note
    )
    assert f"after step {N}" in note


def test_cli_reports_damage_in_one_line_and_forecast_reads_around_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One flipped bit halfway through a 200-point event file: every command reads on past it, loses one point
    and says so in one line (``forecast`` refused the whole file, though its message said it read on)."""
    f = _write_run(tmp_path / "run")
    data = bytearray(f.read_bytes())
    offsets = _record_offsets(bytes(data))
    data[offsets[len(offsets) // 2] + 18] ^= 0x01
    f.write_bytes(bytes(data))
    png = tmp_path / "r.png"
    assert main(["report", str(tmp_path / "run"), "--schedule", SPEC, "-o", str(png), "--dpi", "20"]) == 0
    err = capsys.readouterr().err
    assert any(
        line.startswith("scaleforecast: WARNING: ") and "corrupt data at byte" in line
        for line in err.splitlines()
    )
    assert main(["forecast", str(tmp_path / "run"), "--schedule", SPEC, "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["forecasts"] and [n for n in got["data_warnings"] if "corrupt data at byte" in n]
    assert err.count("\n") == 1 and "corrupt data at byte" in err


def test_tailer_follows_growth_partial_records_truncation_and_rotation(tmp_path: Path) -> None:
    run = tmp_path / "job"
    w = SummaryWriter(str(run))
    for s in range(1, 51):
        w.add_scalar("loss", 3.0 - s * 1e-3, s)
    w.flush()
    tailer = EventTailer(run)
    res = tailer.poll()
    assert len(res.scalars["loss"][0]) == 50 and not res.reset and not res.notes
    for s in range(51, 101):
        w.add_scalar("loss", 3.0 - s * 1e-3, s)
    w.flush()
    res = tailer.poll()
    np.testing.assert_array_equal(res.scalars["loss"][0], np.arange(1, 101))
    assert not res.reset
    w.close()
    (f,) = list(run.iterdir())
    whole = f.read_bytes()
    # A writer caught mid-record: the live tailer waits for the rest and reports nothing.
    f.write_bytes(whole[:-9])
    res = tailer.poll()
    assert res.reset and len(res.scalars["loss"][0]) == 99 and not res.notes
    f.write_bytes(whole)
    res = tailer.poll()
    assert len(res.scalars["loss"][0]) == 100 and not res.notes
    f.write_bytes(whole[: len(whole) // 2])
    res = tailer.poll()
    assert res.reset and 0 < len(res.scalars["loss"][0]) < 100
    w2 = SummaryWriter(str(run), filename_suffix=".restart")
    for s in range(101, 121):
        w2.add_scalar("loss", 2.0, s)
    w2.close()
    res = tailer.poll()
    assert res.scalars["loss"][0][-1] == 120 and len(list(run.iterdir())) == 2


def test_live_tailer_reports_missing_path_and_garbage_once(tmp_path: Path) -> None:
    run = tmp_path / "later"
    tailer = EventTailer(run)
    res = tailer.poll()
    assert res.waiting is not None and "No such file or directory" in res.waiting and not res.scalars
    run.mkdir()
    assert "no TensorBoard event files" in (tailer.poll().waiting or "")
    (run / "events.out.tfevents.1.host").write_bytes(b"not an event file at all" * 4)
    _write_run(run, range(1, 11))
    res = tailer.poll()
    assert res.waiting is None and len(res.scalars["loss"][0]) == 10
    (note,) = res.notes
    assert "events.out.tfevents.1.host: not a TensorBoard event file" in note
    assert tailer.poll().notes == []  # said once
    # A whole read skips it too, with a note, since the run's other file is readable.
    scalars, notes = read_event_scalars(run)
    assert len(scalars["loss"][0]) == 10
    assert notes == [f"{note}; skipped it, read the other event files"]


def test_reading_in_small_chunks_gives_the_same_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files are read in bounded chunks of whole records: damage that spans a chunk boundary, and a record
    longer than a chunk (an image), come out as in one read."""
    import scaleforecast.tfevents as tfevents

    run = tmp_path / "run"
    w = SummaryWriter(str(run))
    for s in range(1, 401):
        w.add_scalar("loss", 3.0 - s * 1e-3, s)
        if s == 200:
            w.add_image("sample", np.random.default_rng(0).random((3, 64, 64)), s)  # about 12 KB
    w.close()
    (f,) = list(run.iterdir())
    data = bytearray(f.read_bytes())
    offsets = _record_offsets(bytes(data))
    data[offsets[300] + 1] ^= 0x80  # a length field: reading resumes at the next record
    data[offsets[360] + 30] ^= 0x01  # a payload
    data[offsets[20] + 3 : offsets[20] + 6003] = bytes(6000)  # a stretch longer than a chunk
    f.write_bytes(bytes(data))
    whole, whole_notes = read_event_scalars(f)
    monkeypatch.setattr(tfevents, "_CHUNK", 4096)
    chunked, chunked_notes = read_event_scalars(f)
    np.testing.assert_array_equal(chunked["loss"][0], whole["loss"][0])
    np.testing.assert_array_equal(chunked["loss"][1], whole["loss"][1])
    assert chunked_notes == whole_notes and len(whole_notes) == 3
    assert f"corrupt data at byte {offsets[20]} (bad record header): skipped 60" in whole_notes[0]
