"""Fit one, predict the rest, in real training: a second Lightning run of a family borrows from the first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning.pytorch")
pytest.importorskip("torch")

from lightning_models import TinyRegressor, cpu_trainer
from scaleforecast.callbacks import LossForecast

from scaleforecast.family import load_references
from scaleforecast.registry import SQLiteRegistry


def _fit(tmp_path: Path, total: int, callback: LossForecast, lr: float = 0.2) -> None:
    trainer = cpu_trainer(total, [callback], tmp_path)
    # small batches and a large SGD step: the loss sits well above its floor until the LR anneals, so the run
    # has a real annealing drop to pass on
    trainer.fit(TinyRegressor(total=total, warmup=10, lr=lr, batch_size=4))


def _callback(store: Path, **kwargs: Any) -> LossForecast:
    return LossForecast(
        family="tiny-regression", family_store=store, writer=False, flush_every=10, refit_every=20, **kwargs
    )


@pytest.mark.slow
def test_a_second_run_of_the_family_borrows_from_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = tmp_path / "family.sqlite"
    first = _callback(store)
    _fit(tmp_path / "a", 300, first)
    assert first.forecast is not None and first.forecast.borrowed_from == []
    refs, _ = load_references(SQLiteRegistry("tiny-regression", store), "tiny-regression")
    assert len(refs) == 1
    first_id = refs[0].run_id
    assert refs[0].total_steps == 300 and refs[0].fit.params is not None
    assert (
        f"kept this run's fit ({first_id}) as a reference of family 'tiny-regression'"
        in capsys.readouterr().out
    )
    # another length: its prior comes from the first run, and every forecast says so
    second = _callback(store)
    _fit(tmp_path / "b", 200, second)
    assert second.forecast is not None and second.forecast.borrowed_from == [first_id]
    assert second.forecaster.config.references[0].run_id == first_id
    out = capsys.readouterr().out
    assert f"1 finished run(s) of family 'tiny-regression': {first_id}\n" in out
    assert f"its prior is borrowed from 1 run(s) at its peak LR: {first_id}" in out
    refs, _ = load_references(SQLiteRegistry("tiny-regression", store), "tiny-regression")
    assert len(refs) == 2
    # another peak LR: another point of an LR sweep, nothing to borrow
    third = _callback(store)
    _fit(tmp_path / "c", 200, third, lr=0.1)
    assert third.forecast is not None and third.forecast.borrowed_from == []
    assert any("peaked at another LR" in w for w in third.forecast.warnings)
    out = capsys.readouterr().out  # said on the console too, once, with the runs it did borrow from: none
    assert out.count("peaked at another LR") == 1
    assert "no run of its family peaked at its peak LR: no prior is borrowed (a cold start)" in out


@pytest.mark.slow
def test_an_unreadable_family_store_costs_the_prior_not_the_run(tmp_path: Path) -> None:
    store = tmp_path / "not-a-database.sqlite"
    store.write_bytes(b"this is not an SQLite file" * 100)
    cb = _callback(store)
    with pytest.warns(RuntimeWarning, match="family store failed"):
        _fit(tmp_path, 120, cb)
    assert cb.forecast is not None and cb.forecast.borrowed_from == []
    assert "family store" in cb.errors


def test_family_must_be_a_name() -> None:
    with pytest.raises(ValueError, match="family"):
        LossForecast(family="  ")


def test_a_run_that_ends_before_its_last_step_lends_no_prior(tmp_path: Path) -> None:
    """A sweep stopper or a target ends a run early, deep in its cooldown: its fit has not seen the
    cooldown's end, and borrowed, it pulled a sibling's forecast 10 % low, outside its band. Only a run that
    reached its last step is kept for its family (what the docs always said)."""
    import math

    import torch
    from scaleforecast.callbacks import LossForecastSession

    store = tmp_path / "family.sqlite"

    def run(until: int, total: int = 400) -> None:
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / total)))
        fc = LossForecastSession(
            opt, sched, total_steps=total, family="cosine", family_store=store, flush_every=10, writer=False
        )
        area = 0.0
        for _ in range(until):
            area += opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            fc.step(torch.tensor(2.0 + 0.5 * area**-0.4 - 0.02 * (1 - opt.param_groups[0]["lr"] / 0.1)))
        fc.close()

    run(360)  # the LR is down to 2 % of its peak, the run is not over
    assert load_references(SQLiteRegistry("cosine", store), "cosine")[0] == []
    run(400)
    assert len(load_references(SQLiteRegistry("cosine", store), "cosine")[0]) == 1
