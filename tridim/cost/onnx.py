"""ONNX export: the file the ``onnxruntime`` runtime times and users deploy."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from tridim.search.space import check_input_size
from tridim.training.device import eval_mode, model_device

__all__ = ["write_onnx"]


def write_onnx(
    model: nn.Module, path: str | os.PathLike, input_size, *, batch_size: int = 1, opset: int = 17
) -> Path:
    """Export a (pruned) model to ONNX with a dynamic batch dimension.

    The model's input resize, if any, is exported as two fixed matrix products, which
    reproduce PyTorch's antialiased bilinear resize exactly (ONNX's own Resize operator
    has no antialiasing before opset 18).

    Parameters
    ----------
    model : torch.nn.Module
        The model to export (eval mode is used). A model with an ``exportable()`` method
        (:class:`tridim.prune.resolution.ResolutionWrapper`) is exported as what it returns.
    path : path
        The ``.onnx`` file to write.
    input_size : (C, H, W)
        Size of one input image (full size: the model carries its own resize).
    batch_size : int
        Batch size of the example input used for tracing.
    opset : int
        ONNX opset version.
    """
    size = check_input_size(input_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(batch_size, *size, device=model_device(model))
    with eval_mode(model):
        torch.onnx.export(
            model.exportable() if callable(getattr(model, "exportable", None)) else model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=opset,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path
