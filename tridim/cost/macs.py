"""Measured cost of real models: MACs, parameters and latency.

MACs count convolution and linear layers only (the FLOPs that
:class:`torch.utils.flop_counter.FlopCounterMode` reports for them, divided by two);
BatchNorm, activations and pooling are not counted. Other counters (fvcore, thop,
Torch-Pruning) agree to within 1-2% because they add BatchNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from tridim.cost.timing import time_one
from tridim.search.space import check_input_size
from tridim.training.device import eval_mode, model_device
from tridim.training.models import input_size_of

__all__ = [
    "count_macs",
    "count_params",
    "measure_latency",
    "check_input_size",
    "layer_macs",
    "layer_channels",
]

_MAC_OPS = frozenset({"convolution", "_convolution", "mm", "addmm", "bmm", "baddbmm"})


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


def layer_macs(
    out_channels: int, in_channels: int, groups: int = 1, kernel: int = 1, positions: int = 1
) -> int:
    """Multiply-accumulates of one convolution or linear layer for one image.

    The one per-layer MACs formula of tridim: every output channel at every output
    position reads ``in_channels / groups`` input channels over the kernel. The analytic
    cost models (:attr:`tridim.cost.latency.LayerShape.macs`, the width pruner's MACs
    prediction and the Taylor criterion's FLOPs regulariser) all use it; it agrees with
    :func:`count_macs` on convolution and linear layers.

    Parameters
    ----------
    out_channels, in_channels : int
        Output and input channels (features of a linear layer).
    groups : int
        Convolution groups (1 for a linear layer).
    kernel : int
        Kernel elements, e.g. ``kh * kw`` (1 for a linear layer).
    positions : int
        Output positions per image, e.g. ``out_h * out_w`` (1 for a linear layer on a vector).

    Returns
    -------
    int
        ``out_channels * (in_channels // groups) * kernel * positions``.

    Examples
    --------
    >>> layer_macs(2, 1, kernel=9, positions=16)
    288
    """
    return out_channels * (in_channels // groups) * kernel * positions


def layer_channels(layer: nn.Module) -> tuple[int, int, int]:
    """The channels of a convolution or linear layer, as :func:`layer_macs` takes them.

    Parameters
    ----------
    layer : torch.nn.Module
        A convolution (``out_channels``, ``in_channels``, ``groups``) or
        :class:`torch.nn.Linear` (features, one group).

    Returns
    -------
    tuple of int
        ``(out channels, in channels, groups)``.
    """
    if isinstance(layer, nn.Linear):
        return layer.out_features, layer.in_features, 1
    return layer.out_channels, layer.in_channels, layer.groups


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int],
    batch_size: int = 1,
    *,
    repeats: int = 20,
    warmup: int | None = None,
    threads: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict:
    """Median wall time of a forward pass in eval mode, timed by :mod:`tridim.cost.timing`.

    Parameters
    ----------
    model : torch.nn.Module
        The model to time (not moved or modified).
    input_size : (C, H, W)
        Size of one input image.
    batch_size : int
        Images per forward pass.
    repeats : int
        Timed passes, in 3 rounds checked for spread.
    warmup : None
        Ignored: passes are warmed up until stable (kept for old callers).
    threads : int, optional
        Intra-op threads while timing (default: PyTorch's current count).
    device : str or torch.device, optional
        Where to time; None: where the model is. On a GPU each pass is timed with CUDA
        events after the queue is drained.
    precision, channels_last
        As in :func:`tridim.training.train.train`.

    Returns
    -------
    dict
        ``{"batch_size", "median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats",
        "spread", "device", "precision", "channels_last", "state"}``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    timing = time_one(
        model,
        input_size,
        batch_size,
        device=model_device(model) if device is None else device,
        threads=threads,
        repeats=repeats,
        precision=precision,
        channels_last=channels_last,
    )
    state = timing["state"]
    return {**timing, **{k: state[k] for k in ("device", "precision", "channels_last")}}
