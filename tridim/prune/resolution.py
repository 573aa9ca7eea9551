"""Resolution: run a model on inputs shrunk to a fraction of their side length.

:func:`with_resolution` wraps a model in a :class:`ResolutionWrapper` that resizes
each input batch bilinearly to ``round(r * H) x round(r * W)`` before the model, so the
deployed model still takes full-size images while computing at the reduced size. The
resize has no convolution or linear MACs, so :func:`tridim.count_macs` of the wrapper at
the full input size counts the reduced-size cost.

ONNX: PyTorch's TorchScript-based ONNX exporter cannot export antialiased bilinear
resizing (``aten::_upsample_bilinear2d_aa``). Build the wrapper with
``antialias=False`` (or set ``wrapper.antialias = False`` before exporting) to export
with the plain bilinear ``Resize`` operator; outputs then differ slightly from the
antialiased model the accuracy was measured with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tridim.cost.macs import check_input_size
from tridim.search.space import check_ratio
from tridim.training.device import eval_mode, model_device

__all__ = ["ResolutionWrapper", "with_resolution", "reduced_size", "check_runs_at"]


def reduced_size(r: float, input_size: Sequence[int]) -> tuple[int, int]:
    """The reduced ``(height, width)`` in whole pixels: ``round(r * H)``, ``round(r * W)``.

    Halves round up, and each side is at least one pixel.

    Examples
    --------
    >>> reduced_size(0.75, (1, 28, 28))
    (21, 21)
    """
    r = check_ratio(r, "r")
    _, height, width = check_input_size(input_size)
    return (max(1, math.floor(r * height + 0.5)), max(1, math.floor(r * width + 0.5)))


class ResolutionWrapper(nn.Module):
    """A model that first resizes its input to a fixed size.

    Parameters
    ----------
    model : torch.nn.Module
        The network to run on the resized input (kept as ``self.model``).
    size : (int, int)
        Target ``(height, width)`` in pixels.
    input_size : (C, H, W)
        The full input size callers pass.
    expect_small_inputs : bool
        If True, never resize: callers already pass inputs of ``size``.
    antialias : bool
        Antialiased bilinear resizing (as used for training). Set False to export to
        ONNX with the TorchScript exporter.

    Attributes
    ----------
    model : torch.nn.Module
    size : tuple of int
        ``(height, width)`` the model runs at.
    input_size : tuple of int
        ``(C, H, W)`` of the inputs the wrapper expects.
    """

    def __init__(
        self,
        model: nn.Module,
        size: tuple[int, int],
        input_size: Sequence[int],
        *,
        expect_small_inputs: bool = False,
        antialias: bool = True,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.size = (int(size[0]), int(size[1]))
        self.input_size = check_input_size(input_size)
        self.expect_small_inputs = bool(expect_small_inputs)
        self.antialias = bool(antialias)
        self.training = model.training  # the wrapper's own flag: the model's modules stay as given

    @property
    def r(self) -> float:
        """Realised side ratio: the geometric mean of the two sides' ratios."""
        _, height, width = self.input_size
        return math.sqrt(self.size[0] * self.size[1] / (height * width))

    @property
    def resizes(self) -> bool:
        """Whether :meth:`forward` resizes its input."""
        return not self.expect_small_inputs and self.size != tuple(self.input_size[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Resize ``x`` (N, C, H, W) to :attr:`size` unless told not to, then run the model."""
        if self.resizes:
            x = F.interpolate(
                x, size=self.size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
        return self.model(x)

    def exportable(self) -> nn.Module:
        """The same model with its resize as two fixed matrix products (:class:`MatrixResize`):
        exportable to any ONNX opset, where ONNX's Resize has no antialiasing before opset 18."""
        if not self.resizes:
            return self
        resize = MatrixResize(tuple(self.input_size[1:]), self.size, self.antialias)
        return nn.Sequential(resize.to(model_device(self)), self.model)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, input_size={self.input_size}, "
            f"expect_small_inputs={self.expect_small_inputs}, antialias={self.antialias}"
        )


class MatrixResize(nn.Module):
    """A fixed resize written as ``A_h @ x @ A_w.T``: exportable to any ONNX opset.

    Bilinear resizing, antialiased or not, is linear and separable, so its effect on an
    ``H x W`` image is captured exactly by two matrices, found by resizing unit vectors.
    """

    def __init__(self, input_hw: tuple[int, int], size: tuple[int, int], antialias: bool):
        super().__init__()
        height, width = input_hw
        self.register_buffer("rows", self._matrix(height, size[0], width, antialias, dim=0))
        self.register_buffer("cols", self._matrix(width, size[1], height, antialias, dim=1))

    @staticmethod
    def _matrix(n_in: int, n_out: int, other: int, antialias: bool, dim: int) -> torch.Tensor:
        # Resize full-size images whose rows (or columns) are unit vectors; a 1-pixel-wide
        # image would take a different code path in PyTorch's antialiased kernel.
        eye = torch.eye(n_in)
        if dim == 0:
            basis = eye.reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, other)
            target = (n_out, other)
        else:
            basis = eye.reshape(n_in, 1, 1, n_in).expand(n_in, 1, other, n_in)
            target = (other, n_out)
        resized = torch.nn.functional.interpolate(
            basis.contiguous(),
            size=target,
            mode="bilinear",
            align_corners=False,
            antialias=antialias,
        )
        response = resized[:, 0, :, 0] if dim == 0 else resized[:, 0, 0, :]
        return response.T.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.cols.T)


def check_runs_at(model: nn.Module, input_size: Sequence[int]) -> None:
    """Raise a ValueError naming the size if ``model`` cannot run on ``(C, H, W)`` inputs."""
    size = check_input_size(input_size)
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *size, device=model_device(model)))
    except Exception as error:  # shape checks raise RuntimeError or AssertionError
        message = " ".join(str(error).split())[:200]
        raise ValueError(
            f"the model does not run at {size[1]}x{size[2]} pixels ({type(error).__name__}: "
            f"{message}); its input size is fixed or too small for its pooling: keep r "
            "higher, or r = 1 for a fixed-size model"
        ) from None


def with_resolution(
    model: nn.Module,
    r: float,
    input_size: Sequence[int],
    *,
    expect_small_inputs: bool = False,
    antialias: bool = True,
) -> ResolutionWrapper:
    """Wrap ``model`` so that it runs at ``r`` times the input side length.

    Parameters
    ----------
    model : torch.nn.Module
        The network (not copied). If it is already a :class:`ResolutionWrapper`, its
        inner model is re-wrapped, so ``r`` is always relative to ``input_size``.
    r : float in (0, 1]
        Fraction of the side length kept; the size is rounded to whole pixels with
        :func:`reduced_size`.
    input_size : (C, H, W)
        The full-size input.
    expect_small_inputs : bool
        If True the wrapper does not resize: callers pass inputs already at the reduced
        size (count MACs at that size then).
    antialias : bool
        Antialiased bilinear resizing, matching :func:`tridim.training.data.resize_batch`. False
        is needed for ONNX export with the TorchScript exporter.

    Returns
    -------
    ResolutionWrapper

    Raises
    ------
    ValueError
        If the model does not run at the reduced size (a fixed-size model such as a
        ViT, or too many pooling stages for so small an image).

    Examples
    --------
    >>> import torch.nn as nn
    >>> from tridim.cost.macs import count_macs
    >>> conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    >>> count_macs(with_resolution(conv, 0.5, (1, 8, 8)), (1, 8, 8))
    144
    """
    size = reduced_size(r, input_size)
    inner = model.model if isinstance(model, ResolutionWrapper) else model
    check_runs_at(inner, (check_input_size(input_size)[0], *size))
    return ResolutionWrapper(
        inner, size, input_size, expect_small_inputs=expect_small_inputs, antialias=antialias
    )
