"""Where and how tensors are computed: device, numeric precision and memory format.

:class:`Execution` is the one description every loop takes (training, evaluation,
probing, timing). Build it with :meth:`Execution.of`, which validates the user's strings:

- ``device``: ``"auto"`` (CUDA if available, else Apple MPS, else CPU), ``"cpu"``,
  ``"cuda"``, ``"cuda:N"``, ``"mps"``, a :class:`torch.device`, or None (wherever the
  model already is);
- ``precision``: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (autocast; fp16 also
  scales the loss so small gradients do not underflow);
- ``channels_last``: store images and convolution weights NHWC, faster on tensor cores.

Functions that build a synthetic input for a model (tracing, MACs counting) place it
with :func:`model_device`, so surgery works on a model wherever it lives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["Execution", "resolve_device", "model_device", "eval_mode", "PRECISIONS"]

#: Accepted ``precision`` values and their autocast dtypes (None: no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The :class:`torch.device` a user's device string names, checked to exist.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a device.

    Raises
    ------
    ValueError
        For an unknown name, or a device this machine does not have (the message says
        which devices it has).
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from None
    _check_available(resolved)
    return resolved


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _available() -> str:
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return ", ".join(names)


def _check_available(device: torch.device) -> None:
    if device.type == "cpu":
        return
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) < count:
            return
    elif device.type == "mps" and _mps_available():
        return
    elif device.type not in ("cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device}")
    raise ValueError(f"device {device} is not available here (this machine has: {_available()})")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for an empty model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class Execution:
    """Device, precision and memory format of a loop.

    Attributes
    ----------
    device : torch.device or None
        Where models and batches go; None keeps the model where it is.
    precision : {"fp32", "bf16", "fp16"}
        Autocast dtype of forward passes.
    channels_last : bool
        NHWC memory format for models and image batches.
    """

    device: torch.device | None = None
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def of(
        cls,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> Execution:
        """Validate user options: ``device`` as in :func:`resolve_device` (None: stay)."""
        if isinstance(device, Execution):
            return device
        resolved = None if device is None else resolve_device(device)
        return cls(resolved, check_precision(precision), bool(channels_last))

    def place(self, model: nn.Module) -> torch.device:
        """Move ``model`` (in place) to the device and memory format; return its device."""
        if self.device is not None:
            model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model_device(model)

    def batch(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``tensor`` on ``device`` (asynchronously from pinned memory), NHWC if asked."""
        if tensor.device != device:
            tensor = tensor.to(device, non_blocking=device.type == "cuda")
        if self.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def autocast(self, device: torch.device):
        """The autocast context of the precision (a no-op for fp32)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """A loss scaler, enabled for fp16 only (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")

    def describe(self, device: torch.device) -> dict:
        """JSON-ready: device, precision and memory format as used."""
        return {
            "device": str(device),
            "precision": self.precision,
            "channels_last": self.channels_last,
        }


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (BatchNorm statistics frozen), then restore the mode of
    every submodule, so a model given half in eval mode comes back exactly so."""
    was_training = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in was_training:
            module.training = training
