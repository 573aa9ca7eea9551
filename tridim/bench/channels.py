"""Benchmark: channel counts rounded to multiples of 8 against any count, at equal MACs.

Latency depends on layer shapes, not on weights, so no training is needed: each model is
built, given seeded random BatchNorm scales (a fresh model's are all 1, with nothing to
rank), pruned by width to each MACs target twice (``channel_multiple=1`` and ``8``), and
the base and both pruned models are timed together in alternating rounds
(:func:`tridim.cost.timing.time_models`) on each runtime and batch size. A row per model,
target, runtime and batch gives both speed-ups over the base and their ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tridim.cost.macs import count_macs
from tridim.cost.timing import ratio_of, time_models
from tridim.prune.width import prune_width_to_macs
from tridim.run.report import markdown_table
from tridim.training.models import build

__all__ = ["format_table", "run_channels_bench", "DEFAULT_MODELS"]

#: (name, build options, input size): ResNet-20 on 28x28 grey images, the same at twice
#: the width, and ResNet-56 on 32x32 colour images.
DEFAULT_MODELS = (
    ("resnet20", {}, (1, 28, 28)),
    ("resnet20", {"width": 2.0}, (1, 28, 28)),
    ("resnet56", {}, (3, 32, 32)),
)


def _varied_scales(model: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.05)
    return model.eval()


def _channel_counts(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def run_channels_bench(
    *,
    models: Sequence[tuple[str, dict, tuple[int, int, int]]] = DEFAULT_MODELS,
    targets: Sequence[float] = (0.7, 0.5, 0.3),
    runtimes: Sequence[str] = ("eager", "onnxruntime"),
    batches: Sequence[int] = (1, 64),
    repeats: int = 20,
    seed: int = 0,
) -> dict:
    """Run the benchmark; returns plain data (see the module docstring)."""
    rows = []
    for name, options, size in models:
        base = _varied_scales(build(name, 10, size[0], **options), seed)
        base_macs = count_macs(base, size)
        label = name + "".join(f" {k}={v:g}" for k, v in options.items())
        for target in targets:
            pruned = {
                multiple: prune_width_to_macs(
                    base, target, input_size=size, channel_multiple=multiple, tolerance=0.03
                ).eval()
                for multiple in (1, 8)
            }
            for runtime in runtimes:
                for batch in batches:
                    timed = time_models(
                        {"base": base, "any": pruned[1], "x8": pruned[8]},
                        size,
                        batch,
                        runtime=runtime,
                        repeats=repeats,
                    )
                    speedup_any = 1.0 / ratio_of(timed, "any", "base")
                    speedup_x8 = 1.0 / ratio_of(timed, "x8", "base")
                    rows.append(
                        {
                            "model": label,
                            "input_size": list(size),
                            "target": target,
                            "runtime": runtime,
                            "batch": batch,
                            "macs_ratio_any": count_macs(pruned[1], size) / base_macs,
                            "macs_ratio_x8": count_macs(pruned[8], size) / base_macs,
                            "speedup_any": speedup_any,
                            "speedup_x8": speedup_x8,
                            "x8_over_any": speedup_x8 / speedup_any,
                            "channels_any": _channel_counts(pruned[1]),
                            "channels_x8": _channel_counts(pruned[8]),
                            "stable": timed["state"]["stable"],
                            "timing": timed["state"],
                        }
                    )
    return {
        "config": {
            "models": [[n, o, list(s)] for n, o, s in models],
            "targets": list(targets),
            "runtimes": list(runtimes),
            "batches": list(batches),
            "repeats": repeats,
            "seed": seed,
            "threads": torch.get_num_threads(),
        },
        "rows": rows,
    }


def format_table(result: dict) -> str:
    """The result of :func:`run_channels_bench` as the command line prints it."""
    keys = ("model", "target", "runtime", "batch", "macs_ratio_any", "macs_ratio_x8")
    keys += ("speedup_any", "speedup_x8", "x8_over_any", "stable")
    note = (
        "speedup: base / pruned latency, timed together in alternating rounds by "
        "tridim.cost.timing; x8_over_any: the multiples-of-8 model's speed-up / the any-count "
        f"model's; {result['config']['threads']} threads."
    )
    return "\n".join([markdown_table([{k: row[k] for k in keys} for row in result["rows"]]), note])
