"""The model zoo sweep: every classifier through every dimension, ok or refused with a reason.

For each model (no weights, a small input, varied BatchNorm scales so that a BN-scale
ranking has something to rank) the sweep runs, each step on its own:

- ``width``: :func:`tridim.prune_width_to_macs` to half the MACs; ok if the measured ratio
  is within 1% and the output shape is right;
- ``depth``: half the removable blocks gone (:func:`tridim.prune_depth`); ``n/a`` when no
  block has an identity shortcut;
- ``resolution``: :func:`tridim.with_resolution` at r = 0.75;
- ``realise``: a mixed triple at 40% of the MACs;
- ``reload``: the realised model through :func:`tridim.save` / :func:`tridim.load`, same
  outputs within 1e-4.

A step ends ``ok``, ``n/a``, ``refused: <why>`` (tridim said no, with a message naming the
layer or pattern and what to do) or ``error: <type>: <message>`` (an exception tridim did
not explain: a bug to fix). Nothing here is imported by the library.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tridim.run.collect import auto_criterion
from tridim.run.report import markdown_table

STEPS = ("width", "depth", "resolution", "realise", "reload")
TOLERANCE = 0.01


def torchvision_models() -> list[str]:
    """Every classification model torchvision lists, sorted."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.05)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def _outcome(step: Callable[[], str]) -> str:
    """Run one step; turn tridim's refusals and unexplained failures into a status."""
    try:
        return step()
    except ValueError as error:
        return f"refused: {_one_line(error)}"
    except Exception as error:  # the sweep's purpose is to list these
        return f"error: {type(error).__name__}: {_one_line(error)}"


def _one_line(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _runs(model: nn.Module, size: tuple[int, int, int], classes: int) -> None:
    with torch.no_grad():
        out = model.eval()(torch.randn(2, *size))
    if tuple(out.shape) != (2, classes):
        raise RuntimeError(f"output shape {tuple(out.shape)}, expected (2, {classes})")


def _width(model, size, classes) -> str:
    from tridim import count_macs, prune_width_to_macs

    pruned = prune_width_to_macs(
        model, 0.5, input_size=size, tolerance=TOLERANCE, criterion=auto_criterion(model)
    )
    ratio = count_macs(pruned, size) / count_macs(model, size)
    _runs(pruned, size, classes)
    return "ok" if abs(ratio - 0.5) <= TOLERANCE * 0.5 else f"refused: ratio {ratio:.3f}"


def _made_up_gains(model, size) -> dict[str, float]:
    from tridim import find_blocks

    return {b.name: -float(i) for i, b in enumerate(find_blocks(model, input_size=size))}


def _removable(model, size) -> int:
    from tridim import find_blocks

    return sum(b.removable for b in find_blocks(model, input_size=size))


def _depth(model, size, classes) -> str:
    from tridim import find_blocks, prune_depth

    blocks = find_blocks(model, input_size=size)
    removable = sum(b.removable for b in blocks)
    if not removable:
        return "n/a"
    d = 1.0 - (removable // 2 or 1) / len(blocks)
    pruned = prune_depth(model, d, gains=_made_up_gains(model, size), input_size=size)
    _runs(pruned, size, classes)
    return "ok"


def _resolution(model, size, classes) -> str:
    from tridim import with_resolution

    _runs(with_resolution(model, 0.75, size), size, classes)
    return "ok"


def _realise(model, size, classes, keep: dict) -> str:
    from tridim import Triple, realise

    d = 0.8 if _removable(model, size) else 1.0
    pruned, plan = realise(
        model,
        Triple(d, 0.8, 0.8),
        input_size=size,
        gains=_made_up_gains(model, size) if d < 1 else None,
        target_flops_ratio=0.4,
        criterion=auto_criterion(model),
    )
    _runs(pruned, size, classes)
    keep["realised"] = (pruned, plan)
    return "ok"


def _reload(model, size, keep: dict) -> str:
    import tridim

    if "realised" not in keep:
        return "n/a"
    pruned, plan = keep["realised"]
    with tempfile.TemporaryDirectory() as folder:
        tridim.save(pruned, Path(folder) / "m", plan=plan)
        loaded = tridim.load(Path(folder) / "m")
    x = torch.randn(2, *size)
    with torch.no_grad():
        gap = (loaded(x) - pruned.eval()(x)).abs().max().item()
    return "ok" if gap <= 1e-4 else f"error: reloaded outputs differ by {gap:.2g}"


#: The side tried when a model does not run at the small one (ViT and Swin need 224).
FALLBACK_SIDE = 224


def _runnable_shape(model, channels: int, sides: Sequence[int], classes: int):
    """The first input shape the model runs at, or an error naming the sides tried."""
    for side in sides:
        try:
            _runs(model, (channels, side, side), classes)
            return (channels, side, side)
        except Exception as error:  # shape asserts raise AssertionError, not RuntimeError
            last = error
    raise ValueError(f"the model does not run at sides {list(sides)}: {_one_line(last)}")


def sweep_model(name: str, *, size: int = 64, channels: int = 3, classes: int = 10) -> dict:
    """One row of the sweep: the status of every step for model ``name``.

    Parameters
    ----------
    name : str
        A :func:`tridim.training.models.build` name (torchvision, ``timm:...``, CIFAR ResNets).
    size, channels, classes : int
        Input side, input channels and classes of the model built.

    Returns
    -------
    dict
        ``model``, ``params_m``, ``input`` (the side falls back to 224 for models that need
        it), ``criterion``, one status per step of :data:`STEPS`, ``seconds``.
    """
    from tridim.training import models

    started = time.perf_counter()
    torch.manual_seed(0)
    row: dict[str, Any] = {"model": name}
    try:
        model = _randomise_batchnorm(models.build(name, classes, channels))
        row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        shape = _runnable_shape(model, channels, (size, FALLBACK_SIDE), classes)
    except Exception as error:
        row.update({step: f"refused: {_one_line(error)}" for step in STEPS})
        row["seconds"] = round(time.perf_counter() - started, 1)
        return row
    row["input"] = "x".join(map(str, shape))
    row["criterion"] = auto_criterion(model)
    keep: dict = {}
    row["width"] = _outcome(lambda: _width(model, shape, classes))
    row["depth"] = _outcome(lambda: _depth(model, shape, classes))
    row["resolution"] = _outcome(lambda: _resolution(model, shape, classes))
    row["realise"] = _outcome(lambda: _realise(model, shape, classes, keep))
    row["reload"] = _outcome(lambda: _reload(model, shape, keep))
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def run_zoo_bench(
    names: Iterable[str] | None = None,
    *,
    size: int = 64,
    channels: int = 3,
    max_params_m: float = 150.0,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Sweep ``names`` (default: every torchvision classifier); see the module docstring.

    Models over ``max_params_m`` million parameters are listed as skipped, to keep the
    sweep within minutes on a CPU. ``on_row`` is called with each row as it finishes.
    """
    from tridim.training import models

    rows = []
    for name in list(names) if names is not None else torchvision_models():
        params = _parameter_count_m(models, name, channels)
        if params is not None and params > max_params_m:
            row = {"model": name, "params_m": round(params, 1), "seconds": 0.0}
            row.update({step: f"skipped: over {max_params_m:g} M parameters" for step in STEPS})
        else:
            row = sweep_model(name, size=size, channels=channels)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _parameter_count_m(models, name: str, channels: int) -> float | None:
    """Parameters (millions) of the model, counted on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            model = models.build(name, 10, channels)
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters()) / 1e6


def summary(rows: Sequence[dict]) -> dict[str, dict[str, int]]:
    """Per step: how many models ended ok, n/a, refused, skipped or in error."""
    counts: dict[str, dict[str, int]] = {}
    for step in STEPS:
        tally: dict[str, int] = {}
        for row in rows:
            kind = str(row.get(step, "")).split(":")[0]
            tally[kind] = tally.get(kind, 0) + 1
        counts[step] = tally
    return counts


#: The columns of the sweep's table.
COLUMNS = (
    "model",
    "params_m",
    "input",
    "criterion",
    "width",
    "depth",
    "resolution",
    "realise",
    "reload",
    "seconds",
)


def format_table(rows: Sequence[dict]) -> str:
    """The sweep's rows as the command line prints them: the table, then the summary as JSON."""
    return "\n".join([markdown_table(list(rows), list(COLUMNS)), json.dumps(summary(rows))])
