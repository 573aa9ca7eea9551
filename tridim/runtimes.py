"""Time a model's forward pass on the runtime it ships on.

Two runtimes: ``"eager"`` (PyTorch on a device, :func:`tridim.measure.measure_latency`)
and ``"onnxruntime"`` (the model exported as :func:`tridim.export_onnx` does, then run by
an ONNX Runtime CPU session with a fixed thread count). Both return the same timing dict:
median, quartiles and range of repeated passes, in milliseconds. The caller's model is
never moved: a copy goes to the device when it is elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .device import eval_mode, model_device, resolve_device, synchronize
from .space import check_input_size

__all__ = ["RUNTIMES", "check_runtime", "time_forward", "time_ratio"]

#: The runtimes a latency budget can target.
RUNTIMES = ("eager", "onnxruntime")


def check_runtime(runtime: str) -> str:
    """``runtime`` if known and usable here, else a ValueError saying what to do."""
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


def time_forward(
    model: nn.Module,
    input_size: Sequence[int],
    batch_size: int = 1,
    *,
    runtime: str = "eager",
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 15,
    warmup: int = 2,
) -> dict:
    """Timings of ``model``'s forward pass on ``runtime``.

    Parameters
    ----------
    model : torch.nn.Module
        The model (not moved or modified).
    input_size : (C, H, W)
        Size of one input image.
    batch_size : int
        Images per pass.
    runtime : {"eager", "onnxruntime"}
        PyTorch eager on ``device``, or an ONNX Runtime CPU session.
    device : str
        Eager only: where to time (a copy of the model goes there).
    threads : int, optional
        Intra-op threads while timing (default: PyTorch's current count).
    repeats, warmup : int
        Timed and untimed passes.

    Returns
    -------
    dict
        ``{"batch_size", "median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats",
        "runtime", "device", "threads"}``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    threads = int(threads or torch.get_num_threads())
    with _runner(model, input_size, batch_size, runtime, device, threads, warmup) as run:
        times = sorted(_passes(run, repeats))
    return {
        "batch_size": batch_size,
        "median_ms": times[len(times) // 2],
        "min_ms": times[0],
        "max_ms": times[-1],
        "q1_ms": times[len(times) // 4],
        "q3_ms": times[(3 * len(times)) // 4],
        "repeats": repeats,
        "runtime": runtime,
        "device": "cpu" if runtime == "onnxruntime" else str(resolve_device(device)),
        "threads": threads,
    }


def time_ratio(
    model: nn.Module,
    base: nn.Module,
    input_size: Sequence[int],
    batch_size: int = 1,
    *,
    runtime: str = "eager",
    device: str = "cpu",
    threads: int | None = None,
    repeats: int = 15,
    rounds: int = 5,
) -> dict:
    """``model``'s latency as a ratio of ``base``'s, both timed in alternating rounds.

    A busy moment of the machine then slows both alike: the ratio is the median over
    rounds of (model median / base median), each round ``repeats // rounds`` passes
    (at least 3) of each model.

    Returns
    -------
    dict
        ``{"ratio", "model_ms", "base_ms"}`` (medians over all passes).
    """
    threads = int(threads or torch.get_num_threads())
    per_round = max(3, repeats // rounds)
    ratios, model_times, base_times = [], [], []
    with (
        _runner(model, input_size, batch_size, runtime, device, threads, 2) as run_model,
        _runner(base, input_size, batch_size, runtime, device, threads, 2) as run_base,
    ):
        for _ in range(rounds):
            base_round = _passes(run_base, per_round)
            model_round = _passes(run_model, per_round)
            ratios.append(float(np.median(model_round) / np.median(base_round)))
            base_times += base_round
            model_times += model_round
    return {
        "ratio": float(np.median(ratios)),
        "model_ms": float(np.median(model_times)),
        "base_ms": float(np.median(base_times)),
    }


def _passes(run, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        run()
        times.append((time.perf_counter() - begin) * 1000.0)
    return times


@contextlib.contextmanager
def _runner(model, input_size, batch_size, runtime, device, threads, warmup):
    """A callable running one forward pass (warmed up), under the runtime's settings."""
    check_runtime(runtime)
    size = check_input_size(input_size)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if runtime == "onnxruntime":
        run = _onnxruntime_runner(model, size, batch_size, threads)
        for _ in range(warmup):
            run()
        yield run
        return
    previous = torch.get_num_threads()
    target = resolve_device(device)
    torch.set_num_threads(threads)
    try:
        if model_device(model) != target:
            model = copy.deepcopy(model).to(target)
        x = torch.randn(batch_size, *size, device=target)

        def run():
            model(x)
            synchronize(target)

        with torch.inference_mode(), eval_mode(model):
            for _ in range(warmup):
                run()
            yield run
    finally:
        torch.set_num_threads(previous)


def _onnxruntime_runner(model: nn.Module, size: tuple, batch_size: int, threads: int):
    import onnxruntime as ort

    from .io import export_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="tridim-ort-") as folder:
        path = Path(folder) / "model.onnx"
        with warnings.catch_warnings():  # the exporter's notes on in-place ops
            warnings.simplefilter("ignore")
            export_onnx(copy.deepcopy(model).cpu(), path, size, batch_size=1)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"input": np.random.default_rng(0).standard_normal((batch_size, *size), "float32")}
    return lambda: session.run(None, feed)
