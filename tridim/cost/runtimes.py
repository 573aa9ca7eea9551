"""Time a model's forward pass on the runtime it ships on.

Two runtimes (:data:`RUNTIMES`): ``"eager"`` (PyTorch on a device) and ``"onnxruntime"``
(the model exported as :func:`tridim.export_onnx` does, then run by an ONNX Runtime CPU
session with a fixed configuration). Nothing is timed here: both functions ask
:func:`tridim.cost.timing.time_models`, the one timer, and shape its answer, so every
latency tridim reports is measured the same way, in one controlled state. The caller's
model is never moved: a copy goes to the device when it is elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from tridim.cost.timing import ratio_of, time_models, time_one

__all__ = ["time_forward", "time_ratio"]


def time_forward(
    model: nn.Module,
    input_size: Sequence[int],
    batch_size: int = 1,
    **options: Any,
) -> dict:
    """Timings of ``model``'s forward pass (:func:`tridim.cost.timing.time_one`), with
    the runtime, device and threads they were measured on.

    Parameters
    ----------
    model : torch.nn.Module
        The model (not moved or modified).
    input_size : (C, H, W)
        Size of one input image.
    batch_size : int
        Images per pass.
    **options
        ``runtime``, ``device``, ``threads``, ``repeats``, ``precision``,
        ``channels_last``: as in :func:`tridim.cost.timing.time_models` (3 rounds).

    Returns
    -------
    dict
        ``{"batch_size", "median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "repeats",
        "spread", "state", "runtime", "device", "threads"}``.
    """
    timing = time_one(model, input_size, batch_size, **options)
    state = timing["state"]
    return {**timing, **{key: state[key] for key in ("runtime", "device", "threads")}}


def time_ratio(
    model: nn.Module,
    base: nn.Module,
    input_size: Sequence[int],
    batch_size: int = 1,
    **options: Any,
) -> dict:
    """``model``'s latency as a ratio of ``base``'s, both timed in alternating rounds
    (:func:`tridim.cost.timing.time_models`).

    A busy moment of the machine then slows both alike: the ratio is the median over
    rounds of (model median / base median), each round ``repeats // rounds`` passes
    (at least 3) of each model.

    Parameters
    ----------
    model, base : torch.nn.Module
        The model and the one it is compared with (neither moved nor modified).
    input_size : (C, H, W)
        Size of one input image.
    batch_size : int
        Images per pass.
    **options
        ``runtime``, ``device``, ``threads``, ``repeats``, ``rounds``, ``precision``,
        ``channels_last``: as in :func:`tridim.cost.timing.time_models`.

    Returns
    -------
    dict
        ``{"ratio", "model_ms", "base_ms", "stable", "state"}`` (medians over all passes).
    """
    result = time_models({"base": base, "model": model}, input_size, batch_size, **options)
    return {
        "ratio": ratio_of(result, "model", "base"),
        "model_ms": result["models"]["model"]["median_ms"],
        "base_ms": result["models"]["base"]["median_ms"],
        "stable": result["state"]["stable"],
        "state": result["state"],
    }
