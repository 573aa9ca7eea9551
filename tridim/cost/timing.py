"""The one timer behind every latency tridim reports, in one controlled, stated state.

A whole-model CPU timing depends on the process's history, not just on the model: in a
fresh process glibc hands each large activation buffer back to the OS after every pass
(until its mmap threshold adapts), which made the Fashion-MNIST ResNet-20 take 26 ms at
batch 64 in a fresh process and 13 ms after a few training steps; and two ONNX Runtime
sessions whose thread pools spin between runs slow each other 2.5x. So CPU timings run in
a dedicated **timing subprocess** (``python -m tridim.cost.timing``), started once and reused,
in a fixed state:

- **allocator** (:func:`configure` or ``TRIDIM_TIMING_ALLOCATOR``): ``"fixed-heap"`` (the
  default) pins glibc's mmap and trim thresholds with ``mallopt``, so buffers stay on the
  heap (the state a long-running server reaches); ``"system"`` leaves glibc as it is; a
  path to a shared library (``libtcmalloc.so``, ``libjemalloc.so``) preloads it;
- **threads**: the intra-op thread count asked for (default: PyTorch's current count);
  ONNX Runtime sessions get ``intra_op_num_threads`` = threads, one inter-op thread,
  sequential execution and no spinning between runs;
- **warm-up until stable**: groups of passes until two consecutive group medians agree
  within 5% (at most 10 groups or 3 seconds);
- **alternating rounds**: models timed together take turns, round after round, so a busy
  moment of the machine slows them alike; a ratio is the median of per-round ratios;
- **spread check**: a model whose round medians spread by more than 15% of their median
  has all rounds repeated (at most 3 attempts); the result says when they still do.

Every result carries ``state``: what process, allocator, threads and runtime settings it
was measured in, and whether it was stable. CUDA and MPS timings run in the caller's
process (their allocators cache memory; CUDA passes are timed with events). A model the
subprocess cannot receive (its class is defined in a notebook or script's ``__main__``,
or it does not pickle) is timed in the caller's process, and ``state`` says why.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tridim.cost.onnx import write_onnx
from tridim.cost.timing_process import (
    TimingSetup,
    configure,
    current_setup,
    lock,
    read_frame,
    worker_for,
    write_frame,
)
from tridim.search.space import check_input_size
from tridim.training.device import Execution, eval_mode, model_device, synchronize

__all__ = [
    "TimingSetup",
    "configure",
    "current_setup",
    "time_models",
    "time_one",
    "ratio_of",
    "check_runtime",
    "RUNTIMES",
    "SPREAD_LIMIT",
]

#: The runtimes a model can be timed on (and a latency budget can target).
RUNTIMES = ("eager", "onnxruntime")

#: Round medians of one model may differ by at most this share of their median.
SPREAD_LIMIT = 0.15
#: Attempts at a set of rounds before a result is returned unstable.
MAX_ATTEMPTS = 3
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def check_runtime(runtime: str) -> str:
    """``runtime`` if known and usable here, else a ValueError saying what to do.

    Parameters
    ----------
    runtime : str
        One of :data:`RUNTIMES`.

    Returns
    -------
    str
        ``runtime``, unchanged.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    if runtime == "onnxruntime":
        try:
            import onnx  # noqa: F401  (the exporter needs it)
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ValueError(
                "runtime='onnxruntime' needs ONNX Runtime: pip install 'tridim[onnxruntime]'"
            ) from None
    return runtime


def time_models(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int],
    batch_size: int = 1,
    *,
    runtime: str = "eager",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    repeats: int = 15,
    rounds: int = 5,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict:
    """Time models together in alternating rounds, in the controlled state.

    Parameters
    ----------
    models : mapping of name to nn.Module
        The models (never moved or modified: copies are timed).
    input_size : (C, H, W)
        Size of one input image.
    batch_size : int
        Images per pass.
    runtime : {"eager", "onnxruntime"}
        PyTorch eager on ``device``, or an ONNX Runtime CPU session.
    device : str or torch.device
        Eager only: where to time.
    threads : int, optional
        Intra-op threads (default: PyTorch's current count).
    repeats : int
        Timed passes per model, split over ``rounds`` (at least 3 per round).
    rounds : int
        Rounds of the spread check (at least 2 for a ratio to be checked).
    precision, channels_last
        Eager only, as in :class:`tridim.training.device.Execution`.

    Returns
    -------
    dict
        ``{"models": {name: {"median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms",
        "repeats", "round_ms", "spread"}}, "state": {...}}``; ``state`` holds the
        process, allocator, threads, runtime settings, ``attempts``, ``max_spread`` and
        ``stable`` (every model's spread within :data:`SPREAD_LIMIT`).
    """
    check_runtime(runtime)
    size = check_input_size(input_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for name, value in (("repeats", repeats), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not models:
        raise ValueError("time_models needs at least one model")
    execution = Execution.of(device, precision, channels_last)
    on_cpu = runtime == "onnxruntime" or execution.device.type == "cpu"
    request = {
        "runtime": runtime,
        "device": "cpu" if runtime == "onnxruntime" else str(execution.device),
        "input_size": list(size),
        "batch_size": batch_size,
        "threads": int(threads or torch.get_num_threads()),
        "rounds": rounds,
        "per_round": max(3, -(-repeats // rounds)),
        "precision": execution.precision,
        "channels_last": execution.channels_last,
    }
    setup = current_setup()
    why_in_process = None
    if not on_cpu:
        why_in_process = f"{execution.device.type} timings run in the caller's process"
    elif setup.process == "in-process":
        why_in_process = "configured"
    if why_in_process is None:
        payload = _payload(models, request)
        if isinstance(payload, str):
            why_in_process = payload
        else:
            with lock:
                answer = worker_for(setup).ask(payload)
            if "error" not in answer:
                return answer
            why_in_process = answer["error"]
    runners = {name: _runner(model, request) for name, model in models.items()}
    result = _measure(runners, request)
    result["state"].update(
        process="in-process", allocator="the caller's", why_in_process=why_in_process
    )
    return result


# ---------------------------------------------------------------- measuring


def _measure(runners: Mapping[str, contextlib.AbstractContextManager], request: dict) -> dict:
    """Warm up each runner, then alternating rounds with the spread check."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request["threads"])
    try:
        with contextlib.ExitStack() as stack:
            runs = {name: stack.enter_context(runner) for name, runner in runners.items()}
            for run in runs.values():
                _warm_up(run)
            best, attempts = None, 0
            while attempts < MAX_ATTEMPTS:
                attempts += 1
                passes = _rounds(runs, request["rounds"], request["per_round"])
                spreads = {name: _spread(rounds) for name, rounds in passes.items()}
                if best is None or max(spreads.values()) < max(best[1].values()):
                    best = (passes, spreads)
                if max(spreads.values()) <= SPREAD_LIMIT:
                    break
    finally:
        torch.set_num_threads(previous)
    passes, spreads = best
    max_spread = max(spreads.values())
    return {
        "models": {name: _summary(rounds, spreads[name]) for name, rounds in passes.items()},
        "state": {
            "runtime": request["runtime"],
            "device": request["device"],
            "threads": request["threads"],
            "precision": request["precision"],
            "channels_last": request["channels_last"],
            **(_ORT_SETTINGS if request["runtime"] == "onnxruntime" else {}),
            "attempts": attempts,
            "max_spread": max_spread,
            "stable": max_spread <= SPREAD_LIMIT,
        },
    }


def _warm_up(run: Callable[[], float], group: int = 3, most: int = 10, seconds: float = 3.0):
    """Groups of passes until two consecutive group medians agree within 5%."""
    began, last = time.perf_counter(), None
    for _ in range(most):
        median = statistics.median(run() for _ in range(group))
        if last is not None and abs(median - last) <= 0.05 * last:
            return
        if time.perf_counter() - began > seconds:
            return
        last = median


def _rounds(runs: Mapping[str, Callable[[], float]], rounds: int, per_round: int) -> dict:
    names = list(runs)
    passes = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else reversed(names):
            passes[name].append([runs[name]() for _ in range(per_round)])
    return passes


def _spread(rounds: list[list[float]]) -> float:
    medians = [statistics.median(r) for r in rounds]
    return (max(medians) - min(medians)) / statistics.median(medians)


def _summary(rounds: list[list[float]], spread: float) -> dict:
    times = sorted(t for r in rounds for t in r)
    return {
        "median_ms": float(np.median(times)),
        "min_ms": times[0],
        "max_ms": times[-1],
        "q1_ms": float(np.percentile(times, 25)),
        "q3_ms": float(np.percentile(times, 75)),
        "repeats": len(times),
        "round_ms": [statistics.median(r) for r in rounds],
        "spread": spread,
    }


def time_one(model: nn.Module, input_size: Sequence[int], batch_size: int = 1, **options) -> dict:
    """One model timed by :func:`time_models` (3 rounds), flattened: ``{"batch_size",
    "median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats", "spread", "state"}``."""
    result = time_models({"model": model}, input_size, batch_size, rounds=3, **options)
    timing = result["models"]["model"]
    keys = ("median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats", "spread")
    return {"batch_size": batch_size, **{k: timing[k] for k in keys}, "state": result["state"]}


def ratio_of(result: dict, model: str, base: str) -> float:
    """The median over rounds of ``model``'s round median / ``base``'s."""
    ours = result["models"][model]["round_ms"]
    theirs = result["models"][base]["round_ms"]
    return float(np.median([a / b for a, b in zip(ours, theirs)]))


# ----------------------------------------------------------------- runners

_ORT_SETTINGS = {
    "ort_inter_op_threads": 1,
    "ort_execution_mode": "sequential",
    "ort_allow_spinning": False,
}


@contextlib.contextmanager
def _runner(model, request: dict):
    """A callable running one pass and returning its milliseconds."""
    if request["runtime"] == "onnxruntime":
        onnx = model if isinstance(model, bytes) else _onnx_bytes(model, request)
        yield _onnxruntime_run(onnx, request)
        return
    execution = Execution.of(request["device"], request["precision"], request["channels_last"])
    if model_device(model) != execution.device or execution.channels_last:
        model = copy.deepcopy(model)
    device = execution.place(model)
    x = execution.batch(torch.randn(request["batch_size"], *request["input_size"]), device)
    with torch.inference_mode(), execution.autocast(device), eval_mode(model):
        yield lambda: _timed(model, x, device)


def _timed(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """Milliseconds of one forward pass, the device's queue drained before and after."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # events record on the current device's stream
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            model(x)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))
    synchronize(device)
    begin = time.perf_counter()
    model(x)
    synchronize(device)
    return (time.perf_counter() - begin) * 1000.0


def _onnx_bytes(model: nn.Module, request: dict) -> bytes:
    with tempfile.TemporaryDirectory(prefix="tridim-ort-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings():  # the exporter's notes on in-place ops
            warnings.simplefilter("ignore")
            write_onnx(copy.deepcopy(model).cpu(), path, tuple(request["input_size"]))
        return path.read_bytes()


def _onnxruntime_run(onnx: bytes, request: dict) -> Callable[[], float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = request["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Spinning threads of one session steal the cores of the next (2.5x slower on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    shape = (request["batch_size"], *request["input_size"])
    feed = {"input": np.random.default_rng(0).standard_normal(shape, "float32")}

    def run() -> float:
        begin = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - begin) * 1000.0

    return run


# ------------------------------------------------------ the timing subprocess


def _payload(models: Mapping[str, nn.Module], request: dict) -> bytes | str:
    """The request as bytes for the worker, or why it cannot be sent."""
    if request["runtime"] == "onnxruntime":
        sent = {name: _onnx_bytes(model, request) for name, model in models.items()}
    else:
        sent = {name: copy.deepcopy(model).cpu() for name, model in models.items()}
        for name, model in sent.items():
            module = type(model).__module__
            if module == "__main__" or any(
                type(m).__module__ == "__main__" for m in model.modules()
            ):
                return f"model {name!r} has a class defined in __main__"
    buffer = io.BytesIO()
    try:
        torch.save({"request": request, "models": sent}, buffer)
    except Exception as error:  # noqa: BLE001  (any pickling failure: time in-process)
        return f"the models cannot be sent to the timing process: {error}"
    return buffer.getvalue()


def _fix_heap() -> dict:
    """Pin glibc's mmap and trim thresholds; returns what glibc accepted."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return {"allocator": "fixed-heap (not glibc: left as it is)"}
    accepted = {}
    for name, option, values in (
        ("mmap_threshold", _M_MMAP_THRESHOLD, (1 << 30, 1 << 25)),
        ("trim_threshold", _M_TRIM_THRESHOLD, (1 << 31, 1 << 30)),
    ):
        accepted[name] = next((v for v in values if libc.mallopt(option, v) == 1), None)
    return {"allocator": "fixed-heap", **accepted}


def serve(stdin=None, stdout=None) -> None:
    """The timing subprocess's loop: answer requests until the input closes."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    allocator = os.environ.get("TRIDIM_TIMING_ALLOCATOR", "system")
    if allocator == "fixed-heap":
        state = _fix_heap()
    else:
        state = {"allocator": allocator}
    state["process"] = "subprocess"
    warnings.simplefilter("ignore")
    while True:
        try:
            frame = read_frame(stdin)
        except EOFError:
            return
        try:
            # The payload comes from the parent process over its own pipe, never from a file.
            message = torch.load(io.BytesIO(frame), weights_only=False)
        except Exception as error:  # noqa: BLE001  (e.g. a class this process cannot import)
            write_frame(stdout, json.dumps({"error": f"cannot load the models: {error}"}).encode())
            continue
        request = message["request"]
        runners = {name: _runner(m, request) for name, m in message["models"].items()}
        result = _measure(runners, request)
        result["state"].update(state)
        write_frame(stdout, json.dumps(result).encode())


if __name__ == "__main__":
    serve()
