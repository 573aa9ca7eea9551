"""Measured cost of real models: MACs, parameters and latency.

MACs count convolution and linear layers only (the FLOPs that
:class:`torch.utils.flop_counter.FlopCounterMode` reports for them, divided by two);
BatchNorm, activations and pooling are not counted. Other counters (fvcore, thop,
Torch-Pruning) agree to within 1-2% because they add BatchNorm.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .device import Execution, eval_mode, model_device, synchronize
from .space import check_input_size

__all__ = ["count_macs", "count_params", "measure_latency", "check_input_size", "input_size_of"]

_MAC_OPS = frozenset({"convolution", "_convolution", "mm", "addmm", "bmm", "baddbmm"})


def input_size_of(model: nn.Module) -> int | None:
    """The number of input channels the model's first convolution expects, if any."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def _run_once(model: nn.Module, input_size: tuple[int, int, int]) -> None:
    expected = input_size_of(model)
    if expected is not None and expected != input_size[0]:
        raise ValueError(
            f"the model expects {expected} input channels but input_size has {input_size[0]}: "
            f"pass input_size=({expected}, H, W) or build the model with in_channels={input_size[0]}"
        )
    with torch.no_grad(), eval_mode(model):
        model(torch.zeros(1, *input_size, device=model_device(model)))


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of convolution and linear layers for one image.

    Parameters
    ----------
    model : torch.nn.Module
        The model; it is run once in eval mode on a zero image (its mode is restored).
    input_size : (C, H, W)
        Size of one input image.

    Returns
    -------
    int
        The MACs (FLOPs / 2 as counted by ``FlopCounterMode`` for conv and matmul ops).

    Examples
    --------
    >>> import torch.nn as nn
    >>> count_macs(nn.Conv2d(1, 2, 3, padding=1, bias=False), (1, 4, 4))
    288
    """
    size = check_input_size(input_size)
    counter = FlopCounterMode(display=False)
    with counter:
        _run_once(model, size)
    total = 0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        name = str(op).split(".")[1] if "." in str(op) else str(op)
        if name in _MAC_OPS:
            total += int(flops)
    return total // 2


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int],
    batch_size: int = 1,
    *,
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict:
    """Median wall time of a forward pass in eval mode, on the model's device.

    Parameters
    ----------
    model : torch.nn.Module
        The model to time.
    input_size : (C, H, W)
        Size of one input image.
    batch_size : int
        Images per forward pass.
    repeats, warmup : int
        Timed and untimed passes.
    threads : int, optional
        ``torch.set_num_threads`` during timing (restored afterwards).
    device : str or torch.device, optional
        Move the model there first (in place); None times it where it is. On a GPU each
        pass is timed with CUDA events after the queue is drained.
    precision, channels_last
        As in :func:`tridim.train.train`.

    Returns
    -------
    dict
        ``{"batch_size", "median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats",
        "device", "precision", "channels_last"}``: the median, the range and the
        quartiles of the timed passes.
    """
    size = check_input_size(input_size)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    execution = Execution.of(device, precision, channels_last)
    placed = execution.place(model)
    x = execution.batch(torch.randn(batch_size, *size), placed)
    try:
        with torch.inference_mode(), execution.autocast(placed), eval_mode(model):
            for _ in range(warmup):
                model(x)
            times = [_timed(model, x, placed) for _ in range(repeats)]
    finally:
        torch.set_num_threads(previous_threads)
    times.sort()
    return {
        "batch_size": batch_size,
        "median_ms": times[len(times) // 2],
        "min_ms": times[0],
        "max_ms": times[-1],
        "q1_ms": times[len(times) // 4],
        "q3_ms": times[(3 * len(times)) // 4],
        "repeats": repeats,
        **execution.describe(placed),
    }


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
