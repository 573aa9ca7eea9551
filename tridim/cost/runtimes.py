"""Time a model's forward pass on the runtime it ships on.

Two runtimes: ``"eager"`` (PyTorch on a device, :func:`tridim.cost.macs.measure_latency`)
and ``"onnxruntime"`` (the model exported as :func:`tridim.export_onnx` does, then run by
an ONNX Runtime CPU session with a fixed configuration). Both are timed by
:mod:`tridim.cost.timing` in one controlled state and return the same timing dict: median,
quartiles and range of repeated passes, in milliseconds, and the state they were measured
in. The caller's model is never moved: a copy goes to the device when it is elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from tridim.cost.timing import ratio_of, time_models, time_one

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
    warmup: int | None = None,
) -> dict:
    """Timings of ``model``'s forward pass on ``runtime``, in the state of
    :mod:`tridim.cost.timing` (a dedicated subprocess, fixed allocator and threads).

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
    repeats : int
        Timed passes, in 3 rounds checked for spread.
    warmup : None
        Ignored: passes are warmed up until stable (kept for old callers).

    Returns
    -------
    dict
        ``{"batch_size", "median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats",
        "spread", "runtime", "device", "threads", "state"}``.
    """
    timing = time_one(
        model,
        input_size,
        batch_size,
        runtime=runtime,
        device=device,
        threads=threads,
        repeats=repeats,
    )
    state = timing["state"]
    return {**timing, "runtime": runtime, "device": state["device"], "threads": state["threads"]}


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
    """``model``'s latency as a ratio of ``base``'s, both timed in alternating rounds
    (:func:`tridim.cost.timing.time_models`).

    A busy moment of the machine then slows both alike: the ratio is the median over
    rounds of (model median / base median), each round ``repeats // rounds`` passes
    (at least 3) of each model.

    Returns
    -------
    dict
        ``{"ratio", "model_ms", "base_ms", "stable", "state"}`` (medians over all passes).
    """
    result = time_models(
        {"base": base, "model": model},
        input_size,
        batch_size,
        runtime=runtime,
        device=device,
        threads=threads,
        repeats=repeats,
        rounds=rounds,
    )
    return {
        "ratio": ratio_of(result, "model", "base"),
        "model_ms": result["models"]["model"]["median_ms"],
        "base_ms": result["models"]["base"]["median_ms"],
        "stable": result["state"]["stable"],
        "state": result["state"],
    }
