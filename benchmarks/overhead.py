"""What the monitor costs the training it watches, measured four ways (each prints a table).

``stream``: the monitor's CPU per training step, amortised over whole runs fed step by step (flushes of 50
steps, as the callbacks do), with and without the health checks: synthetic runs of 10k / 100k / 1M steps, the
real per-step curve in ``shared/curves/llmc_gpt2_124m`` and a 1M-step stream built from that run's own
step-to-step noise. Columns: CPU of the training thread per step (what training pays), CPU of the whole
process per step (including the background refit worker), and the longest and 99th-percentile wall time one
flush held the training thread. Target: <= 20 us per step on the training thread, with the health checks on.

``contention``: a CPU-bound training loop of ~5 ms steps (a torch MLP, and a pure-Python/numpy loop that holds
the GIL) run alone and beside a refit running back to back in a worker thread; prints what the loop loses per
refit. This is the price of a thread (the GIL) against a process.

``lookahead``: the time to read a 1M-step schedule off each kind of torch LR scheduler, and the largest
relative difference from stepping the real scheduler over the first ``--verify`` steps.

``ab``: the wall-clock A/B ratio of a real Lightning fit with and without the callback, interleaved in one run
(A B, B A, ...) on a CPU model of ~5 ms steps, and the time inside each of the callback's hooks. Target:
ratio <= 1.01. ``ab --sync-check`` (CUDA only) runs the callback under ``torch.cuda.set_sync_debug_mode``
off the flush steps, so any host-device sync on the per-step path raises.

    python benchmarks/overhead.py stream [--lengths 10000 100000 1000000] [--flush 50] [--health off on]
    python benchmarks/overhead.py stream --sources llmc --pace-ms 5      # blocking per flush, paced
    python benchmarks/overhead.py contention [--refits 40]
    python benchmarks/overhead.py lookahead [--steps 1000000] [--verify 20000]
    python benchmarks/overhead.py ab [--steps 2000 --repeats 3]   |   ab --sync-check
"""

from __future__ import annotations

import argparse
import csv
import inspect
import logging
import math
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scaleforecast.detectors import HealthMonitor
from scaleforecast.forecaster import ForecasterConfig, OnlineForecaster
from scaleforecast.laws import LAWS
from scaleforecast.monitor import FlushBatch, RunMonitor
from scaleforecast.results import LawParams
from scaleforecast.schedules import parse_schedule

LLMC = "llmc_gpt2_124m/llmc_gpt2_124m_10B_cosine_20241013"


# ------------------------------------------------------------------------------------------------ streams
def _synthetic(total: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(lrs, per-step loss): the annealing law under warm-up + cosine, with 1% relative noise."""
    lrs = parse_schedule(f"cosine:peak=6e-4,warmup={max(total // 100, 1)},total={total},final=6e-6").lrs()
    clean = LAWS["tissue"].predict(LawParams(L0=2.8, A=3.0, alpha=0.45, C=0.5), lrs, np.arange(1, total + 1))
    return lrs, clean * (1.0 + 0.01 * np.random.default_rng(seed).standard_normal(total))


def _curves_root() -> Path | None:
    from curves import default_root

    return default_root()


def _llmc() -> tuple[np.ndarray, np.ndarray] | None:
    """The llm.c GPT-2 124M run: per-step train loss and its exact LR (None when the curves are absent)."""
    root = _curves_root()
    if root is None or not (root / f"{LLMC}.csv").is_file():
        return None
    with open(root / f"{LLMC}.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["train_loss"].strip()]
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["train_loss"]) for r in rows])
    lrs = np.load(root / f"{LLMC}.lr.npy").astype(np.float64)
    full = np.full(len(lrs), np.nan)
    full[steps - 1] = loss
    return np.maximum(lrs, 1e-12 * lrs.max()), full


def _llmc_noise_stream(total: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """A ``total``-step stream carrying the llm.c run's real step-to-step noise: its loss divided by a running
    median (spikes and autocorrelation kept) is block-resampled onto the law under a 1M-step cosine."""
    run = _llmc()
    if run is None:
        return None
    _, loss = run
    y = loss[2000:]
    y = y[np.isfinite(y)]
    k = 501
    pad = np.pad(np.log(y), k // 2, mode="edge")
    trend = np.median(np.lib.stride_tricks.sliding_window_view(pad, k), axis=1)
    ratio = y / np.exp(trend)
    lrs, clean = _synthetic(total, seed)
    rng = np.random.default_rng(seed)
    block = 2000
    starts = rng.integers(0, len(ratio) - block, size=math.ceil(total / block))
    noise = np.concatenate([ratio[s : s + block] for s in starts])[:total]
    law = clean / (1.0 + 0.01 * np.random.default_rng(seed).standard_normal(total))
    return lrs, law * noise


def _feed(
    monitor: RunMonitor, lrs: np.ndarray, loss: np.ndarray, flush: int, pace_ms: float, pace_from: int
) -> tuple[float, float, list[float]]:
    """Stream ``loss`` through ``monitor.flush`` in chunks of ``flush`` steps; from step ``pace_from`` on, sleep
    ``pace_ms`` per step between flushes (a training step that leaves the CPU to others, as a GPU step does).

    Returns (training-thread CPU s, process CPU s, and for every paced flush: its wall seconds, its CPU seconds
    on the training thread, and the seconds it blocked on an unfinished background refit)."""
    n = len(loss)
    steps = np.arange(1, n + 1)
    paced: list[float] = []
    paced_cpu: list[float] = []
    waited: list[float] = []
    _watch_waits(waited)
    cpu0, proc0 = time.thread_time(), time.process_time()
    slept = 0.0
    for i in range(0, n, flush):
        j = min(i + flush, n)
        ok = np.isfinite(loss[i:j])
        batch = FlushBatch(steps=steps[i:j][ok], loss=loss[i:j][ok], lrs=lrs[i:j][ok])
        pace = pace_ms > 0 and i >= pace_from
        if pace:
            t = time.perf_counter()
            time.sleep(pace_ms * 1e-3 * (j - i))
            slept += time.perf_counter() - t
        t, c = time.perf_counter(), time.thread_time()
        waited.append(0.0)
        monitor.flush(batch)
        if pace:
            paced.append(time.perf_counter() - t)
            paced_cpu.append(time.thread_time() - c)
        else:
            waited.pop()
    cpu = time.thread_time() - cpu0
    _drain(monitor)
    _watch_waits(None)
    return cpu, time.process_time() - proc0, paced, paced_cpu, waited[: len(paced)]


def _watch_waits(sink: list[float] | None) -> None:
    """Add the time the training thread blocks on an unfinished background refit to ``sink[-1]``."""
    try:
        from scaleforecast.background import Job
    except ImportError:  # the code before background refits
        return
    original = Job.__dict__.get("_unwatched_result", Job.result)
    if sink is None:
        Job.result = original  # type: ignore[method-assign]
        return
    Job._unwatched_result = original  # type: ignore[attr-defined]

    def result(self: Any, timeout: float | None = None) -> Any:
        if self.done() or threading.current_thread() is not threading.main_thread() or not sink:
            return original(self, timeout)
        t = time.perf_counter()
        try:
            return original(self, timeout)
        finally:
            sink[-1] += time.perf_counter() - t

    Job.result = result  # type: ignore[method-assign]


def _drain(monitor: RunMonitor) -> None:
    """Let a background refit still running finish, so that its CPU is counted."""
    wait = getattr(monitor.forecaster, "wait", None)
    if callable(wait):
        wait()
    monitor.close()


def _monitor(lrs: np.ndarray, health: bool, background: bool) -> RunMonitor:
    fields = ForecasterConfig.model_fields
    # the same script measures the code before background refits existed (no such field there)
    config = ForecasterConfig(background=background) if "background" in fields else ForecasterConfig()
    checks = [HealthMonitor()] if health else []
    # the health checks are "detectors" since the monitor has one policy owner ("health" before)
    name = "detectors" if "detectors" in inspect.signature(RunMonitor).parameters else "health"
    return RunMonitor(lrs, config=config, verbose=False, **{name: checks})


def stream(args: argparse.Namespace) -> None:
    sources: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray] | None]]] = []
    if "synthetic" in args.sources:
        sources += [(f"synthetic {n // 1000}k", (lambda n=n: _synthetic(n))) for n in args.lengths]
    if "llmc" in args.sources:
        sources.append(("llm.c 124M (real)", _llmc))
    if "llmc-noise" in args.sources:
        sources.append(("llm.c noise, 1M", lambda: _llmc_noise_stream(1_000_000)))
    mode = "background refits" if args.background else "refits on the training thread"
    print(f"flush every {args.flush} steps, {mode}; CPU in microseconds per training step over the whole run")
    if args.pace_ms:
        print(
            f"from step {args.pace_from} on, {args.pace_ms} ms of (sleeping) training per step between flushes; "
            "per paced flush: wall ms (includes the OS scheduler on a loaded machine), the training thread's CPU "
            "ms, flushes over 2 ms of CPU, and the longest wait for an unfinished background refit"
        )
    print()
    head = f"{'stream':<20}{'steps':>9}{'health':>8}{'refits':>8}{'train us/step':>15}{'total us/step':>15}"
    if args.pace_ms:
        head += (
            f"{'wall ms p50':>13}{'p99':>7}{'max':>7}{'CPU ms p50':>12}{'p99':>7}{'max':>7}{'> 2 ms':>8}"
            f"{'refit wait ms':>15}"
        )
    print(head)
    print("-" * len(head))
    for name, make in sources:
        data = make()
        if data is None:
            print(f"{name:<20}  (curves not found)")
            continue
        lrs, loss = data
        for health in args.health:
            monitor = _monitor(lrs, health == "on", args.background)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cpu, proc, paced, paced_cpu, waited = _feed(
                    monitor, lrs, loss, args.flush, args.pace_ms, args.pace_from
                )
            n = len(loss)
            line = (
                f"{name:<20}{n:>9}{health:>8}{monitor.refits:>8}{1e6 * cpu / n:>15.2f}{1e6 * proc / n:>15.2f}"
            )
            if paced:
                ms = 1e3 * np.asarray(paced)
                cms = 1e3 * np.asarray(paced_cpu)
                line += f"{np.median(ms):>13.2f}{np.percentile(ms, 99):>7.2f}{ms.max():>7.2f}"
                line += f"{np.median(cms):>12.2f}{np.percentile(cms, 99):>7.2f}{cms.max():>7.2f}"
                line += f"{int((cms > 2).sum()):>8}{1e3 * max(waited, default=0.0):>15.2f}"
            print(line, flush=True)


# --------------------------------------------------------------------------------------------- contention
def _torch_step_fn(target_ms: float) -> Callable[[], None]:
    import torch

    torch.set_num_threads(1)
    width = 256
    net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.GELU(), torch.nn.Linear(width, 1))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    x, y = torch.randn(256, 64), torch.randn(256, 1)

    def step() -> None:
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()

    return _calibrate(step, target_ms)


def _python_step_fn(target_ms: float) -> Callable[[], None]:
    a = np.random.default_rng(0).standard_normal(64)

    def step() -> None:
        s = 0.0
        for _ in range(200):
            s += float(np.dot(a, a)) * 1e-9
            s += sum(i * 0.5 for i in range(20))

    return _calibrate(step, target_ms)


def _calibrate(step: Callable[[], None], target_ms: float) -> Callable[[], None]:
    """Repeat ``step`` so that one call costs about ``target_ms`` of CPU (thread time: load-proof)."""
    for _ in range(5):
        step()
    t = time.thread_time()
    for _ in range(20):
        step()
    per = (time.thread_time() - t) / 20
    reps = max(1, round(target_ms / 1e3 / per))

    def run() -> None:
        for _ in range(reps):
            step()

    return run


def _refit_forecaster(history: int) -> OnlineForecaster:
    lrs, loss = _synthetic(history * 10 // 9)
    fc = OnlineForecaster(lrs)
    fc.observe_many(np.arange(1, history + 1), loss[:history])
    fc.refit()
    return fc


def _time_steps(step: Callable[[], None], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n


def contention(args: argparse.Namespace) -> None:
    fc = _refit_forecaster(args.history)
    t = time.thread_time()
    for _ in range(5):
        fc.refit()
    refit_s = (time.thread_time() - t) / 5
    print(f"one refit at {args.history} steps of history: {1e3 * refit_s:.1f} ms of CPU (alone)")
    print(
        f"each cell: median over {args.repeats} interleaved rounds of {args.steps} training steps; the worker "
        "refits back to back (a 100% duty cycle; a run refits ~150 times in all)\n"
    )
    head = (
        f"{'training loop':<22}{'alone ms/step':>15}{'thread':>10}{'process':>10}"
        f"{'lost ms per refit: thread':>28}{'process':>10}"
    )
    print(head)
    print("-" * len(head))
    for loop, make in (("torch MLP (GIL free)", _torch_step_fn), ("python+numpy (GIL)", _python_step_fn)):
        step = make(args.step_ms)
        times: dict[str, list[float]] = {"alone": [], "thread": [], "process": []}
        counts: dict[str, list[int]] = {"thread": [], "process": []}
        for _ in range(args.repeats):
            times["alone"].append(_time_steps(step, args.steps))
            for kind in ("thread", "process"):
                r, b = _beside(kind, step, args.steps, args.history)
                times[kind].append(b)
                counts[kind].append(r)
        med = {k: statistics.median(v) for k, v in times.items()}
        lost = {
            k: (med[k] - med["alone"]) * args.steps / max(statistics.median(counts[k]), 1)
            for k in ("thread", "process")
        }
        print(
            f"{loop:<22}{1e3 * med['alone']:>15.2f}{1e3 * med['thread']:>10.2f}{1e3 * med['process']:>10.2f}"
            f"{1e3 * lost['thread']:>28.2f}{1e3 * lost['process']:>10.2f}",
            flush=True,
        )


def _refit_loop(history: int, stop: Any, count: Any) -> None:
    fc = _refit_forecaster(history)
    while not stop.is_set():
        fc.refit()
        with count.get_lock():
            count.value += 1


def _beside(kind: str, step: Callable[[], None], n: int, history: int) -> tuple[int, float]:
    """Time ``n`` steps while refits run back to back in a worker thread or process."""
    import multiprocessing as mp

    if kind == "thread":
        stop, count = threading.Event(), mp.Value("i", 0)
        ready = _refit_forecaster(history)
        worker: Any = threading.Thread(target=_thread_refits, args=(ready, stop, count), daemon=True)
    else:
        ctx = mp.get_context("spawn")
        stop, count = ctx.Event(), ctx.Value("i", 0)
        worker = ctx.Process(target=_refit_loop, args=(history, stop, count), daemon=True)
    worker.start()
    while count.value == 0:  # the worker is up and refitting
        time.sleep(0.01)
    start = count.value
    per = _time_steps(step, n)
    done = count.value - start
    stop.set()
    worker.join()
    return done, per


def _thread_refits(fc: OnlineForecaster, stop: threading.Event, count: Any) -> None:
    while not stop.is_set():
        fc.refit()
        with count.get_lock():
            count.value += 1


# ---------------------------------------------------------------------------------------------- lookahead
def _schedulers(total: int) -> Iterator[tuple[str, Callable[[Any], Any]]]:
    from torch.optim import lr_scheduler as ls

    warm = max(total // 500, 1)
    yield "StepLR", lambda o: ls.StepLR(o, step_size=total // 10, gamma=0.5)
    yield "MultiStepLR", lambda o: ls.MultiStepLR(o, milestones=[3 * total // 10, 6 * total // 10], gamma=0.3)
    yield "ExponentialLR", lambda o: ls.ExponentialLR(o, gamma=1.0 - 5.0 / total)
    yield "ConstantLR", lambda o: ls.ConstantLR(o, factor=0.25, total_iters=warm)
    yield "LinearLR", lambda o: ls.LinearLR(o, 1.0, 0.01, total_iters=total)
    yield "PolynomialLR", lambda o: ls.PolynomialLR(o, total_iters=total, power=2.0)
    yield "CosineAnnealingLR", lambda o: ls.CosineAnnealingLR(o, T_max=total, eta_min=1e-5)
    yield "Cosine past T_max", lambda o: ls.CosineAnnealingLR(o, T_max=total // 3)
    yield "LambdaLR (1/sqrt)", lambda o: ls.LambdaLR(o, lambda e: 1.0 / math.sqrt(1.0 + e / warm))
    yield "LambdaLR (HF cosine)", _hf_cosine(warm, total)
    yield "MultiplicativeLR", lambda o: ls.MultiplicativeLR(o, lambda e: 1.0 - 1.0 / total)
    yield "OneCycleLR", lambda o: ls.OneCycleLR(o, max_lr=1e-3, total_steps=total + 1)
    yield "CyclicLR", lambda o: ls.CyclicLR(o, 1e-4, 1e-3, step_size_up=total // 200)
    yield "WarmRestarts", lambda o: ls.CosineAnnealingWarmRestarts(o, T_0=total // 20, T_mult=2)
    yield (
        "SequentialLR",
        lambda o: ls.SequentialLR(
            o,
            [ls.LinearLR(o, 0.01, 1.0, total_iters=warm), ls.CosineAnnealingLR(o, T_max=total - warm)],
            milestones=[warm],
        ),
    )
    yield (
        "ChainedScheduler",
        lambda o: ls.ChainedScheduler(
            [ls.ConstantLR(o, factor=0.5, total_iters=warm), ls.ExponentialLR(o, gamma=1.0 - 1.0 / total)]
        ),
    )


def _hf_cosine(warm: int, total: int) -> Callable[[Any], Any]:
    def make(o: Any) -> Any:
        try:
            from transformers import get_cosine_schedule_with_warmup
        except ImportError:  # the HF extra is not installed: the same lambda, written out
            from torch.optim.lr_scheduler import LambdaLR

            def f(e: int) -> float:
                if e < warm:
                    return e / max(1, warm)
                p = (e - warm) / max(1, total - warm)
                return max(0.0, 0.5 * (1.0 + math.cos(math.pi * p)))

            return LambdaLR(o, f)
        return get_cosine_schedule_with_warmup(o, warm, total)

    return make


def lookahead(args: argparse.Namespace) -> None:
    import torch
    from scaleforecast.integrations.lookahead import lookahead_lrs

    print(f"look-ahead of {args.steps} steps; error = max relative difference over the first {args.verify}")
    head = f"{'scheduler':<22}{'seconds':>10}{'max rel err':>14}"
    print(head)
    print("-" * len(head))
    for name, make in _schedulers(args.steps):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, momentum=0.9)
        sched = make(opt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            lrs = lookahead_lrs(opt, sched, args.steps)
            dt = time.perf_counter() - t
            err = float("nan")
            if args.verify:
                real = np.empty(args.verify)
                for j in range(args.verify):
                    real[j] = opt.param_groups[0]["lr"]
                    opt.step()
                    sched.step()
                err = float(np.max(np.abs(lrs[: args.verify] - real) / np.maximum(np.abs(real), 1e-300)))
        print(f"{name:<22}{dt:>10.3f}{err:>14.2e}", flush=True)


# ------------------------------------------------------------------------------------------------------ ab
PER_STEP = {  # the plugin's entry points on the per-step path: no host-device sync allowed there
    "TrainingSession.record",
    "TrainingSession.tick",
    "TrainingSession._after_optimizer_step",
    "_LossTap._hook",
    "LossForecast.on_train_batch_end",
    "LossForecast.on_before_optimizer_step",
    "HFLossForecast.on_step_end",
    "LossForecastSession.step",
}
FLUSHING = {"TrainingSession.flush", "TrainingSession.finish"}  # a host copy is the point there


class Stopwatch:
    """Class-level stopwatches around the plugin's entry points (the adapters' hooks and the shared training
    session's methods), summed by name. With ``sync_check`` (CUDA) the per-step entry points run under
    ``torch.cuda.set_sync_debug_mode("error")`` and the flush under ``"default"``: a host-device sync on the
    per-step path raises inside the plugin, which reports it in its ``errors``."""

    def __init__(self, sync_check: bool = False) -> None:
        self.spent: dict[str, float] = {}  # wall seconds (on a loaded machine: also the OS scheduler's)
        self.cpu: dict[str, float] = {}  # CPU seconds of the calling (training) thread
        self.sync_check = sync_check
        self._undo: list[tuple[type, str, Any]] = []

    def wrap(self, cls: type, names: list[str]) -> None:
        for name in names:
            original = cls.__dict__.get(name)
            if original is None:
                continue
            self._undo.append((cls, name, original))
            setattr(cls, name, self._timed(f"{cls.__name__}.{name}", original))

    def _timed(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        mode = "error" if label in PER_STEP else "default" if label in FLUSHING else None

        def timed(*args: Any, **kwargs: Any) -> Any:
            prev = None
            if self.sync_check and mode is not None:
                prev = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode(mode)
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - t
                self.cpu[label] = self.cpu.get(label, 0.0) + time.thread_time() - c
                if prev is not None:
                    torch.cuda.set_sync_debug_mode(prev)

        return timed

    def undo(self) -> None:
        for cls, name, original in reversed(self._undo):
            setattr(cls, name, original)
        self._undo.clear()


def _instrument(sync_check: bool) -> Stopwatch:
    import importlib

    watch = Stopwatch(sync_check)
    targets = [
        (
            "scaleforecast.integrations.session",
            "TrainingSession",
            ["record", "tick", "flush", "_after_optimizer_step", "finish", "start"],
        ),
        ("scaleforecast.callbacks.hf", "_LossTap", ["_hook"]),
        (
            "scaleforecast.callbacks",
            "LossForecast",
            ["on_train_start", "on_train_batch_end", "on_before_optimizer_step", "on_train_end"],
        ),
        (
            "scaleforecast.callbacks",
            "HFLossForecast",
            ["on_train_begin", "on_step_end", "on_log", "on_train_end"],
        ),
        ("scaleforecast.callbacks", "LossForecastSession", ["step", "close"]),
    ]
    for module, name, methods in targets:
        try:  # the code before the shared session (measured with the same script) lacks some of these
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        watch.wrap(cls, methods)
    return watch


def _mlp(width: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Linear(64, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1)
    )


def _data(batch: int, device: str = "cpu") -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch * 64, 64, generator=g)
    y = torch.sin(x[:, :1]) + 0.1 * torch.randn(batch * 64, 1, generator=g)
    return x.to(device), y.to(device)


def _schedule(opt: Any, steps: int) -> Any:
    from torch.optim import lr_scheduler as ls

    warm = max(steps // 20, 1)
    return ls.SequentialLR(
        opt, [ls.LinearLR(opt, 0.01, 1.0, total_iters=warm), ls.CosineAnnealingLR(opt, T_max=steps)], [warm]
    )


def _kwargs(sync_check: bool) -> dict[str, Any]:
    # what a user gets by default, without TensorBoard files (the machine's disk is not what is measured)
    return {"writer": False, "verbose": False}


class _Clock:
    """Wall and CPU time from the ``skip``-th step to the end."""

    def __init__(self, skip: int = 20) -> None:
        self.skip, self.n = skip, 0
        self.t0 = self.c0 = self.t1 = self.c1 = 0.0

    def tick(self) -> None:
        self.n += 1
        if self.n == self.skip:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.t1, self.c1 = time.perf_counter(), time.process_time()

    def per_step(self) -> tuple[float, float]:
        n = max(self.n - self.skip, 1)
        return (self.t1 - self.t0) / n, (self.c1 - self.c0) / n


def _run_lightning(args: argparse.Namespace, plugin: bool, device: str) -> tuple[_Clock, Any]:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback
    from scaleforecast.callbacks import LossForecast
    from torch.utils.data import DataLoader, TensorDataset

    clock = _Clock()

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp(args.width)

        def training_step(self, b: Any, i: int) -> Any:
            return torch.nn.functional.mse_loss(self.net(b[0]), b[1])

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=1e-3)
            return {
                "optimizer": opt,
                "lr_scheduler": {"scheduler": _schedule(opt, args.steps), "interval": "step"},
            }

    class Tick(Callback):
        def on_train_batch_end(self, *a: Any) -> None:
            clock.tick()

        def on_train_end(self, *a: Any) -> None:
            clock.stop()

    cb = LossForecast(**_kwargs(args.sync_check)) if plugin else None
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator=device,
        devices=1,
        logger=False,
        callbacks=[Tick(), *([cb] if cb else [])],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    x, y = _data(args.batch)
    trainer.fit(Model(), DataLoader(TensorDataset(x, y), batch_size=args.batch, shuffle=True))
    return clock, cb


def _run_hf(args: argparse.Namespace, plugin: bool, device: str) -> tuple[_Clock, Any]:
    import tempfile

    import torch
    from scaleforecast.callbacks import HFLossForecast
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    clock = _Clock()
    x, y = _data(args.batch)

    class Pairs(Dataset):
        def __len__(self) -> int:
            return x.shape[0]

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": x[i], "labels": y[i]}

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp(args.width)

        def forward(self, x: Any, labels: Any) -> dict[str, Any]:
            return {"loss": torch.nn.functional.mse_loss(self.net(x), labels)}

    class Tick(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.tick()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            clock.stop()

    model = Model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cb = HFLossForecast(**_kwargs(args.sync_check)) if plugin else None
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            logging_steps=10**9,
            report_to="none",
            save_strategy="no",
            use_cpu=device == "cpu",
            dataloader_num_workers=0,
            disable_tqdm=True,
            seed=0,
        )
        trainer = Trainer(
            model=model,
            args=targs,
            train_dataset=Pairs(),
            optimizers=(opt, _schedule(opt, args.steps)),
            callbacks=[Tick(), *([cb] if cb else [])],
        )
        trainer.train()
    return clock, cb


def _run_loop(args: argparse.Namespace, plugin: bool, device: str) -> tuple[_Clock, Any]:
    import torch
    from scaleforecast.callbacks import LossForecastSession

    clock = _Clock()
    net = _mlp(args.width).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = _schedule(opt, args.steps)
    x, y = _data(args.batch, device)
    fc = (
        LossForecastSession(opt, sched, total_steps=args.steps, **_kwargs(args.sync_check))
        if plugin
        else None
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(args.steps):
        idx = torch.randint(0, x.shape[0], (args.batch,), generator=g).to(device)
        loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx])
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if fc is not None:
            fc.step(loss)
        clock.tick()
    if fc is not None:
        fc.close()
    clock.stop()
    return clock, fc


RUNNERS = {"lightning": _run_lightning, "hf": _run_hf, "loop": _run_loop}
NAMES = {
    "lightning": "Lightning LossForecast",
    "hf": "HF Trainer HFLossForecast",
    "loop": "plain loop session",
}


def ab(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    adapters = list(RUNNERS) if args.adapter == "all" else [args.adapter]
    if args.sync_check:
        if not torch.cuda.is_available():
            raise SystemExit("--sync-check needs a CUDA device (none here)")
        for name in adapters:
            watch = _instrument(sync_check=True)
            try:
                _, cb = RUNNERS[name](args, True, "cuda")
            finally:
                watch.undo()
            errors = dict(cb.errors)
            verdict = "no host-device sync outside the flushes" if not errors else f"SYNC FOUND: {errors}"
            print(f"{NAMES[name]}: {args.steps} CUDA steps under sync_debug_mode='error' per step: {verdict}")
        return
    for name in adapters:
        run = RUNNERS[name]
        bare, inst, cpu_b, cpu_i, spent, spent_cpu = [], [], [], [], [], []
        run(argparse.Namespace(**{**vars(args), "steps": 60}), True, "cpu")  # warm caches and imports
        for i in range(args.repeats):
            # A B, then B A: cancels drift in the machine's load and any cost of running first
            for plugin in (False, True) if i % 2 == 0 else (True, False):
                watch = _instrument(False) if plugin else None
                try:
                    clock, cb = run(args, plugin, "cpu")
                finally:
                    if watch is not None:
                        watch.undo()
                wall, cpu = clock.per_step()
                (inst if plugin else bare).append(wall)
                (cpu_i if plugin else cpu_b).append(cpu)
                if watch is not None:
                    spent.append({k: v / args.steps for k, v in watch.spent.items()})
                    spent_cpu.append({k: v / args.steps for k, v in watch.cpu.items()})
                    refits = cb.monitor.refits
        b, w = statistics.median(bare), statistics.median(inst)
        print(
            f"\n{NAMES[name]}: MLP width {args.width}, batch {args.batch}, {args.steps} steps x {args.repeats} "
            f"repeats (interleaved A B / B A), {args.threads} torch thread(s); {refits} refits per run"
        )
        print(f"{'per step':<44}{'wall ms':>11}{'CPU ms':>11}")
        print(f"{'without the plugin':<44}{1e3 * b:>11.3f}{1e3 * statistics.median(cpu_b):>11.3f}")
        print(f"{'with the plugin':<44}{1e3 * w:>11.3f}{1e3 * statistics.median(cpu_i):>11.3f}")

        def med(rows: list[dict[str, float]], label: str) -> float:
            return statistics.median(r.get(label, 0.0) for r in rows)

        labels = sorted({k for s in spent for k in s}, key=lambda k: -med(spent_cpu, k))
        for label in labels:
            print(
                f"{'  in ' + label:<44}{1e3 * med(spent, label):>11.4f}{1e3 * med(spent_cpu, label):>11.4f}"
            )
        entry = [
            label
            for label in labels
            if label.split(".")[0] in ("LossForecast", "HFLossForecast", "LossForecastSession", "_LossTap")
            or label == "TrainingSession._after_optimizer_step"
        ]
        top, top_cpu = sum(med(spent, k) for k in entry), sum(med(spent_cpu, k) for k in entry)
        pairs = statistics.median(wi / bi for wi, bi in zip(inst, bare, strict=True))
        print(f"{'  in all entry points (not nested)':<44}{1e3 * top:>11.4f}{1e3 * top_cpu:>11.4f}")
        print(
            f"wall-clock ratio with / without (median of the interleaved pairs): {pairs:.4f}   (target <= 1.01)"
        )
        print(f"ratio from the wall time inside the plugin:                      {(b + top) / b:.4f}")
        print(f"ratio from the training thread's CPU inside the plugin:          {(b + top_cpu) / b:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("stream", help="amortised monitor CPU per step")
    p.add_argument("--lengths", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--flush", type=int, default=50)
    p.add_argument("--health", nargs="+", choices=["off", "on"], default=["off", "on"])
    p.add_argument("--sync", dest="background", action="store_false", help="refit on the training thread")
    p.add_argument(
        "--sources",
        nargs="+",
        choices=["synthetic", "llmc", "llmc-noise"],
        default=["synthetic", "llmc", "llmc-noise"],
    )
    p.add_argument("--pace-ms", type=float, default=0.0, help="sleep this long per step between flushes")
    p.add_argument("--pace-from", type=int, default=0, help="pace only from this step on")
    p = sub.add_parser("contention", help="what a refit beside a CPU-bound loop costs the loop")
    p.add_argument("--step-ms", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--history", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("lookahead", help="look-ahead time per scheduler type")
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--verify", type=int, default=20_000)
    p = sub.add_parser("ab", help="A/B wall-clock ratio of a real fit with and without the callback")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training")
    p.add_argument("--adapter", choices=["all", *RUNNERS], default="all")
    p.add_argument("--sync-check", action="store_true", help="on CUDA: the per-step path makes no sync")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    {"stream": stream, "contention": contention, "lookahead": lookahead, "ab": ab}[args.part](args)


if __name__ == "__main__":
    main()
