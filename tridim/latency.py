"""A latency cost model: per-layer timings on the target, composed into a model's latency.

A :class:`LatencyTable` holds, for one device, thread count and batch size, the measured
forward time of single convolution and linear layers keyed by their shape (operator,
input and output channels, input height and width, kernel, stride, padding, groups). The
predicted latency of any model is ``scale * sum(layer times) + overhead_ms``: the layers'
entries (measured on first use, then cached) summed over the model's convolutions and
linear layers, with ``scale`` and ``overhead_ms`` fitted by :meth:`LatencyTable.calibrate`
to whole-model timings, so what the table does not key (BatchNorm, activations, pooling,
adds, Python overhead) is absorbed in proportion. Tables are JSON and can be cached per
(device, threads, batch) with :meth:`LatencyTable.cache_path`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .atomic import atomic_write_json
from .device import model_device, resolve_device
from .measure import measure_latency
from .space import check_input_size

__all__ = ["LayerShape", "LatencyTable", "layer_shapes"]

FORMAT = 1


@dataclass(frozen=True)
class LayerShape:
    """What a layer's latency depends on (one key of the table)."""

    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    height: int
    width: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1

    @property
    def key(self) -> str:
        """A compact string form, the JSON key."""
        return json.dumps(list(asdict(self).values()), separators=(",", ":"))

    @classmethod
    def from_key(cls, key: str) -> LayerShape:
        kind, cin, cout, h, w, kernel, stride, padding, groups = json.loads(key)
        return cls(kind, cin, cout, h, w, tuple(kernel), tuple(stride), tuple(padding), groups)

    def build(self) -> tuple[nn.Module, tuple[int, ...]]:
        """A lone layer of this shape and the size ``(C, H, W)`` of one input for it."""
        if self.kind == "linear":  # timed on (C, 1, 1) inputs, flattened first
            return nn.Sequential(nn.Flatten(), nn.Linear(self.cin, self.cout)), (self.cin, 1, 1)
        layer = nn.Conv2d(
            self.cin, self.cout, self.kernel, self.stride, self.padding, groups=self.groups
        )
        return layer, (self.cin, self.height, self.width)


def layer_shapes(model: nn.Module, input_size: Sequence[int]) -> list[LayerShape]:
    """The shapes of every Conv2d and Linear layer a forward pass at ``input_size`` runs."""
    size = check_input_size(input_size)
    shapes: list[LayerShape] = []

    def hook(module, inputs, _output):
        x = inputs[0]
        if isinstance(module, nn.Linear):
            shapes.append(LayerShape("linear", module.in_features, module.out_features, 1, 1))
        else:
            shapes.append(
                LayerShape(
                    "conv",
                    module.in_channels,
                    module.out_channels,
                    int(x.shape[-2]),
                    int(x.shape[-1]),
                    tuple(module.kernel_size),
                    tuple(module.stride),
                    tuple(module.padding) if not isinstance(module.padding, str) else (0, 0),
                    module.groups,
                )
            )

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *size, device=model_device(model)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


class LatencyTable:
    """Per-layer latencies on one device, thread count and batch size; see the module doc.

    Parameters
    ----------
    device : str
        Where layers are timed (as in :func:`tridim.device.resolve_device`).
    batch_size : int
        Images per forward pass.
    threads : int, optional
        PyTorch threads while timing (default: the current count).
    repeats : int
        Timed passes per layer (the median is kept).
    """

    def __init__(
        self,
        device: str = "cpu",
        batch_size: int = 1,
        *,
        threads: int | None = None,
        repeats: int = 15,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = str(resolve_device(device))
        self.batch_size = batch_size
        self.threads = int(threads or torch.get_num_threads())
        self.repeats = int(repeats)
        self.entries: dict[str, float] = {}
        self.scale, self.overhead_ms = 1.0, 0.0

    def layer_ms(self, shape: LayerShape) -> float:
        """The median time of one layer of ``shape`` (measured once, then read back)."""
        if shape.key not in self.entries:
            layer, size = shape.build()
            timing = measure_latency(
                layer,
                size,
                self.batch_size,
                repeats=self.repeats,
                warmup=2,
                threads=self.threads,
                device=self.device,
            )
            self.entries[shape.key] = float(timing["median_ms"])
        return self.entries[shape.key]

    def layers_ms(self, model: nn.Module, input_size: Sequence[int]) -> float:
        """The uncalibrated sum of the model's layer times."""
        return sum(self.layer_ms(shape) for shape in layer_shapes(model, input_size))

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
            ``{"scale", "overhead_ms", "relative_errors"}`` (per model, predicted /
            measured - 1, after the fit).
        """
        if len(models) < 2:
            raise ValueError("calibrate needs at least two models of different cost")
        sums = np.array([self.layers_ms(m, input_size) for m in models])
        measured = np.array([self._whole_ms(m, input_size) for m in models])
        design = np.stack([sums, np.ones_like(sums)], axis=1)
        (scale, overhead), *_ = np.linalg.lstsq(design, measured, rcond=None)
        if scale <= 0:  # degenerate timings: fall back to a pure ratio
            scale, overhead = float(measured.sum() / sums.sum()), 0.0
        self.scale, self.overhead_ms = float(scale), max(0.0, float(overhead))
        predicted = self.scale * sums + self.overhead_ms
        return {
            "scale": self.scale,
            "overhead_ms": self.overhead_ms,
            "relative_errors": (predicted / measured - 1.0).tolist(),
        }

    def _whole_ms(self, model: nn.Module, input_size: Sequence[int]) -> float:
        timing = measure_latency(
            model,
            input_size,
            self.batch_size,
            repeats=self.repeats,
            warmup=2,
            threads=self.threads,
            device=self.device,
        )
        return float(timing["median_ms"])

    # ------------------------------------------------------------------ files

    def cache_path(self, folder: str | os.PathLike) -> Path:
        """Where this table's device, threads and batch are cached inside ``folder``."""
        name = (
            f"latency-eager-{self.device.replace(':', '')}-t{self.threads}-b{self.batch_size}.json"
        )
        return Path(folder) / name

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "runtime": "eager",
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
        """Read a table written by :meth:`save`."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tridim latency table (format {FORMAT})")
        table = cls(data["device"], data["batch_size"], threads=data["threads"])
        table.repeats = data["repeats"]
        table.scale, table.overhead_ms = data["scale"], data["overhead_ms"]
        table.entries = {k: float(v) for k, v in data["entries"].items()}
        for key in table.entries:
            LayerShape.from_key(key)  # every key must parse
        return table
