"""A latency cost model: per-layer timings on the target, composed into a model's latency.

A :class:`LatencyTable` holds, for one runtime (PyTorch eager on a device, or ONNX
Runtime on CPU), thread count and batch size, the measured forward time of single
convolution and linear layers keyed by their shape (operator, input and output channels,
input height and width, kernel, stride, padding, dilation, groups). The
predicted latency of any model is ``scale * sum(layer times) + overhead_ms``: the layers'
entries (measured on first use, then cached) summed over the model's convolutions and
linear layers, with ``scale`` and ``overhead_ms`` fitted by :meth:`LatencyTable.calibrate`
to whole-model timings, so what the table does not key (BatchNorm, activations, pooling,
adds, Python overhead) is absorbed in proportion. Tables are JSON and can be cached per
(runtime, device, threads, batch) with :meth:`LatencyTable.cache_path`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from tridim.atomic import atomic_write_json
from tridim.cost.macs import layer_macs
from tridim.cost.runtimes import time_forward
from tridim.cost.timing import check_runtime, time_models
from tridim.search.space import check_input_size
from tridim.training.device import eval_mode, model_device, resolve_device

__all__ = ["LayerShape", "LatencyTable", "layer_calls", "layer_shapes", "named_layer_shapes"]

FORMAT = 2


@dataclass(frozen=True)
class LayerShape:
    """What a layer's latency depends on (one key of the table)."""

    kind: str  # "conv", "linear", or the class name of an element-wise or pooling layer
    cin: int
    cout: int
    height: int
    width: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)

    @property
    def key(self) -> str:
        """A compact string form, the JSON key."""
        return json.dumps(list(asdict(self).values()), separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> LayerShape:
        kind, cin, cout, h, w, kernel, stride, padding, groups, dilation = json.loads(key)
        return cls(
            kind, cin, cout, h, w, tuple(kernel), tuple(stride), tuple(padding), groups,
            tuple(dilation),
        )  # fmt: skip

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one image through this layer (0 but for conv and linear)."""
        if self.kind not in ("conv", "linear"):
            return 0
        if self.kind == "linear":
            return layer_macs(self.cout, self.cin)
        out_h, out_w = (
            (size + 2 * pad - dil * (k - 1) - 1) // s + 1
            for size, pad, dil, k, s in zip(
                (self.height, self.width), self.padding, self.dilation, self.kernel, self.stride
            )
        )
        kernel = self.kernel[0] * self.kernel[1]
        return layer_macs(self.cout, self.cin, self.groups, kernel, out_h * out_w)

    def build(self, module: nn.Module | None = None) -> tuple[nn.Module, tuple[int, ...]]:
        """A lone layer of this shape and the size ``(C, H, W)`` of one input for it.

        Conv and linear layers are built from the shape; any other kind is a copy of
        ``module``, the layer met in the model.
        """
        if self.kind not in ("conv", "linear"):
            if module is None:
                raise ValueError(f"a {self.kind} entry is timed from the layer itself")
            return copy.deepcopy(module).cpu(), (self.cin, self.height, self.width)
        if self.kind == "linear":  # timed on (C, 1, 1) inputs, flattened first
            return nn.Sequential(nn.Flatten(), nn.Linear(self.cin, self.cout)), (self.cin, 1, 1)
        layer = nn.Conv2d(
            self.cin,
            self.cout,
            self.kernel,
            self.stride,
            self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )
        return layer, (self.cin, self.height, self.width)


def layer_shapes(model: nn.Module, input_size: Sequence[int]) -> list[LayerShape]:
    """The shapes of every layer call a forward pass at ``input_size`` runs (see
    :func:`layer_calls`)."""
    return [shape for _, _, shape in layer_calls(model, input_size)]


def named_layer_shapes(model: nn.Module, input_size: Sequence[int]) -> list[tuple[str, LayerShape]]:
    """``(module name, shape)`` of every layer call, in forward order."""
    return [(name, shape) for name, _, shape in layer_calls(model, input_size)]


def layer_calls(
    model: nn.Module, input_size: Sequence[int]
) -> list[tuple[str, nn.Module, LayerShape]]:
    """``(name, module, shape)`` of every timed layer call of a forward pass.

    Timed: Conv2d and Linear layers, and every other leaf module fed a 4-D feature map
    (BatchNorm, activations, pooling), keyed by class name and input size. Identity and
    dropout cost nothing; what is not a module (residual adds, flatten) is left to the
    calibration.
    """
    size = check_input_size(input_size)
    calls: list[tuple[str, nn.Module, LayerShape]] = []
    names = {module: name for name, module in model.named_modules()}

    def hook(module, inputs, _output):
        shape = _shape_of(module, inputs[0]) if inputs else None
        if shape is not None:
            calls.append((names[module], module, shape))

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves if not isinstance(m, _FREE)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(1, *size, device=model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return calls


_FREE = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)


def _shape_of(module: nn.Module, x) -> LayerShape | None:
    if isinstance(module, nn.Linear):
        return LayerShape("linear", module.in_features, module.out_features, 1, 1)
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    height, width = int(x.shape[-2]), int(x.shape[-1])
    if isinstance(module, nn.Conv2d):
        return LayerShape(
            "conv",
            module.in_channels,
            module.out_channels,
            height,
            width,
            tuple(module.kernel_size),
            tuple(module.stride),
            _padding(module),
            module.groups,
            tuple(module.dilation),
        )
    channels = int(x.shape[1])
    return LayerShape(
        type(module).__name__,
        channels,
        channels,
        height,
        width,
        _pair(getattr(module, "kernel_size", 1)),
        _pair(getattr(module, "stride", 1) or 1),
        _pair(getattr(module, "padding", 0)),
    )


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def _padding(conv: nn.Conv2d) -> tuple[int, int]:
    """Explicit padding, also for ``padding="same"`` / ``"valid"``."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return tuple(d * (k - 1) // 2 for d, k in zip(conv.dilation, conv.kernel_size))
    return tuple(conv.padding)


class LatencyTable:
    """Per-layer latencies on one runtime, thread count and batch size; see the module doc.

    Parameters
    ----------
    device : str
        Where layers are timed (as in :func:`tridim.training.device.resolve_device`); ONNX Runtime
        times on the CPU.
    batch_size : int
        Images per forward pass.
    threads : int, optional
        PyTorch threads while timing (default: the current count).
    repeats : int
        Timed passes per layer (the median is kept).
    runtime : {"eager", "onnxruntime"}
        What runs the layers (see :mod:`tridim.cost.runtimes`).
    """

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = 1,
        *,
        threads: int | None = None,
        repeats: int = 15,
        runtime: str = "eager",
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.runtime = check_runtime(runtime)
        self.device = "cpu" if runtime == "onnxruntime" else str(resolve_device(device))
        self.batch_size = batch_size
        self.threads = int(threads or torch.get_num_threads())
        self.repeats = int(repeats)
        self.entries: dict[str, float] = {}
        self.scale, self.overhead_ms = 1.0, 0.0

    def layer_ms(self, shape: LayerShape, module: nn.Module | None = None) -> float:
        """The median time of one layer of ``shape`` (measured once, then read back);
        ``module`` is the layer itself, needed to time a kind other than conv or linear."""
        if shape.key not in self.entries:
            layer, size = shape.build(module)
            self.entries[shape.key] = self.time_ms(layer, size)
        return self.entries[shape.key]

    def layers_ms(self, model: nn.Module, input_size: Sequence[int]) -> float:
        """The uncalibrated sum of the model's layer times."""
        calls = layer_calls(model, input_size)
        return sum(self.layer_ms(shape, module) for _, module, shape in calls)

    def predict_ms(self, model: nn.Module, input_size: Sequence[int]) -> float:
        """Predicted forward latency of ``model`` at ``input_size`` (calibrated)."""
        return self.scale * self.layers_ms(model, input_size) + self.overhead_ms

    def calibrate(self, models: Sequence[nn.Module], input_size: Sequence[int]) -> dict:
        """Fit ``scale`` and ``overhead_ms`` to whole-model timings; return the fit's errors.

        Parameters
        ----------
        models : sequence of nn.Module
            At least two models of different cost (e.g. the base and realised variants).
        input_size : (C, H, W)
            The input size the models take.

        Returns
        -------
        dict
            ``{"scale", "overhead_ms", "relative_errors", "timing"}``: per model,
            predicted / measured - 1 after the fit, and the state the models were timed in
            (together, in alternating rounds: :func:`tridim.cost.timing.time_models`).
        """
        if len(models) < 2:
            raise ValueError("calibrate needs at least two models of different cost")
        sums = np.array([self.layers_ms(m, input_size) for m in models])
        models_by_name = {str(i): m for i, m in enumerate(models)}
        timed = time_models(models_by_name, input_size, self.batch_size, **self._timing())
        measured = np.array([timed["models"][str(i)]["median_ms"] for i in range(len(models))])
        design = np.stack([sums, np.ones_like(sums)], axis=1)
        (scale, overhead), *_ = np.linalg.lstsq(design, measured, rcond=None)
        if scale <= 0 or overhead < 0:  # no fixed cost to fit: a scale through the origin
            scale, overhead = float(sums @ measured / (sums @ sums)), 0.0
        self.scale, self.overhead_ms = float(scale), float(overhead)
        predicted = self.scale * sums + self.overhead_ms
        return {
            "scale": self.scale,
            "overhead_ms": self.overhead_ms,
            "relative_errors": (predicted / measured - 1.0).tolist(),
            "timing": timed["state"],
        }

    def time_ms(self, model: nn.Module, input_size: Sequence[int]) -> float:
        """The median measured time of ``model`` on this table's runtime (not moved)."""
        timing = time_forward(model, input_size, self.batch_size, **self._timing())
        return float(timing["median_ms"])

    def _timing(self) -> dict:
        """How this table times: runtime, device, threads and repeats, as keywords."""
        return {
            "runtime": self.runtime,
            "device": self.device,
            "threads": self.threads,
            "repeats": self.repeats,
        }

    # ------------------------------------------------------------------ files

    def cache_path(self, folder: str | os.PathLike) -> Path:
        """Where this table's runtime, device, threads and batch are cached in ``folder``."""
        device = self.device.replace(":", "")
        name = f"latency-{self.runtime}-{device}-t{self.threads}-b{self.batch_size}.json"
        return Path(folder) / name

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "runtime": self.runtime,
            "device": self.device,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "repeats": self.repeats,
            "scale": self.scale,
            "overhead_ms": self.overhead_ms,
            "entries": dict(self.entries),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON (atomically)."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Read a table written by :meth:`save` (on any machine: timing new layers needs
        the table's device, reading it back does not)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError(f"not format {FORMAT}")
            return cls.from_dict(data)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
            raise ValueError(f"{path} is not a valid tridim latency table: {error}") from None

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        """The table of :meth:`to_dict`'s output."""
        table = cls("cpu", data["batch_size"], threads=data["threads"], runtime=data["runtime"])
        table.device = data["device"]
        table.repeats = data["repeats"]
        table.scale, table.overhead_ms = data["scale"], data["overhead_ms"]
        table.entries = {k: float(v) for k, v in data["entries"].items()}
        for key in table.entries:
            LayerShape.from_key(key)  # every key must parse
        return table
