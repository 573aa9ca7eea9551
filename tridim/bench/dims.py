"""Benchmark: reach one MACs budget along depth, width, resolution, or all three.

From one trained base model, :func:`run_dims_bench` builds four models of (about) the
same MACs: depth only, width only, resolution only, and a balanced triple where each
dimension contributes the same factor ``target ** (1/3)`` of the cost; each is finetuned
for the same number of epochs. Optionally it adds the honest baseline: a uniformly
thinner network of about the same MACs trained from scratch for the base model's epochs
plus the finetuning epochs.

Depth and resolution alone move in whole blocks and whole pixels, so those rows take the
achievable ratio nearest the target (their measured ratio is reported); width and the
balanced triple hit the target within 1%. MACs count convolution and linear layers only.
Latency is the median CPU wall time of a forward pass on this machine, every model timed
together in alternating rounds by :func:`tridim.cost.timing.time_models`, so that other load
on the machine spreads evenly. The result is plain data; nothing is
printed.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
import torch.nn as nn

from tridim.cost.macs import count_macs, count_params
from tridim.cost.timing import time_models
from tridim.prune.depth import block_gains, blocks_to_keep, find_blocks
from tridim.prune.realise import realise
from tridim.run.report import markdown_table
from tridim.search.space import check_ratio
from tridim.training.data import DataBundle, load
from tridim.training.models import CIFAR_RESNET_DEPTHS, build
from tridim.training.train import evaluate, train

__all__ = ["format_table", "run_dims_bench", "DEFAULT_BASE_EPOCHS"]

#: Epochs of base-model training per dataset when ``base_epochs`` is not given.
DEFAULT_BASE_EPOCHS = {"digits": 15, "fashion-mnist": 10}
FINETUNE_LR = 0.01


def _static_metrics(model: nn.Module, data: DataBundle, base_macs: int) -> dict:
    macs = count_macs(model, data.input_shape)
    return {
        "accuracy": evaluate(model, data.loader("test", 256)),
        "macs": macs,
        "macs_ratio": macs / base_macs,
        "params": count_params(model),
    }


def _interleaved_latency(
    models: list[nn.Module], size, batch_size: int, rounds: int, repeats: int
) -> list[dict]:
    """Median and minimum forward time per model, all timed together in alternating
    rounds (:func:`tridim.cost.timing.time_models`), so whatever else the machine is doing
    spreads evenly over the models instead of onto one of them."""
    timed = time_models(
        {str(i): model for i, model in enumerate(models)},
        size,
        batch_size,
        repeats=rounds * repeats,
        rounds=rounds,
    )
    return [
        {
            "median_ms": timed["models"][str(i)]["median_ms"],
            "min_ms": timed["models"][str(i)]["min_ms"],
        }
        for i in range(len(models))
    ]


def _closest(candidates: list[tuple[float, Any]], target: float):
    """The candidate whose measured ratio is nearest the target (ties: the larger one)."""
    return min(candidates, key=lambda item: (abs(item[0] - target), -item[0]))[1]


def _depth_only(base, data, target, gains):
    """Whole blocks: try the block counts around ``target`` and keep the nearest ratio."""
    size = data.input_shape
    blocks = find_blocks(base, input_size=size)
    total = len(blocks)
    minimum = total - sum(b.removable for b in blocks)
    tried = []
    for kept in {max(minimum, math.floor(target * total)), max(minimum, math.ceil(target * total))}:
        d = kept / total
        if blocks_to_keep(d, blocks) != kept:
            continue
        model, plan = realise(base, (d, 1.0, 1.0), input_size=size, gains=gains)
        tried.append((plan.macs_ratio, (model, plan)))
    return _closest(tried, target)


def _resolution_only(base, data, target):
    """Whole pixels: try the sides around ``sqrt(target) * H`` and keep the nearest ratio."""
    size = data.input_shape
    side = size[1]
    tried = []
    for pixels in {
        max(1, math.floor(math.sqrt(target) * side)),
        math.ceil(math.sqrt(target) * side),
    }:
        r = min(1.0, pixels / side)
        model, plan = realise(base, (1.0, 1.0, r), input_size=size)
        tried.append((plan.macs_ratio, (model, plan)))
    return _closest(tried, target)


def _scratch_baseline(model_name, data, target, epochs, seed, quiet):
    """A uniformly thinner CIFAR ResNet of about the target MACs, trained from scratch."""
    size = data.input_shape
    reference = count_macs(build(model_name, data.num_classes, size[0]), size)
    best = None
    for step in range(40, 101):
        width = step / 100
        model = build(model_name, data.num_classes, size[0], width=width)
        ratio = count_macs(model, size) / reference
        if best is None or abs(ratio - target) < abs(best[0] - target):
            best = (ratio, width)
    torch.manual_seed(seed)
    model = build(model_name, data.num_classes, size[0], width=best[1])
    started = time.perf_counter()
    train(model, data, epochs, seed=seed, quiet=quiet, evaluate_each_epoch=False)
    return model, best[1], time.perf_counter() - started


def _train_base(model_name, data, base_epochs, seed, quiet):
    """Build and train the base model; return it with its row and its MACs."""
    size = data.input_shape
    torch.manual_seed(seed)
    base = build(model_name, data.num_classes, size[0])
    base_started = time.perf_counter()
    train(base, data, base_epochs, seed=seed, quiet=quiet, evaluate_each_epoch=False)
    base_seconds = time.perf_counter() - base_started
    base.eval()
    base_macs = count_macs(base, size)
    base_row = {
        "name": "base",
        **_static_metrics(base, data, base_macs),
        "train_seconds": base_seconds,
    }
    return base, base_row, base_macs


def _variants(base, data, target, seed) -> dict:
    """The four pruned (model, plan) pairs: depth, width, resolution, balanced."""
    size = data.input_shape
    gains = block_gains(base, data, seed=seed)
    third = target ** (1 / 3)
    return {
        "depth": _depth_only(base, data, target, gains),
        "width": realise(
            base, (1.0, 1.0, 1.0), input_size=size, target_flops_ratio=target, seed=seed
        ),
        "resolution": _resolution_only(base, data, target),
        "balanced": realise(
            base,
            (third, 1.0, math.sqrt(third)),
            input_size=size,
            target_flops_ratio=target,
            gains=gains,
            seed=seed,
        ),
    }


def _finetuned_row(name, model, plan, data, epochs, seed, quiet, base_macs) -> dict:
    """Finetune one pruned model and describe it (accuracy before and after, plan)."""
    before = evaluate(model, data.loader("test", 256))
    tuned_started = time.perf_counter()
    train(model, data, epochs, lr=FINETUNE_LR, seed=seed, quiet=quiet, evaluate_each_epoch=False)
    return {
        "name": name,
        "requested": plan.requested.to_dict(),
        "realised": plan.realised.to_dict(),
        "accuracy_before_finetune": before,
        "finetune_seconds": time.perf_counter() - tuned_started,
        **_static_metrics(model.eval(), data, base_macs),
        "plan": plan.to_dict(),
    }


def _scratch_row(model_name, data, target, epochs, seed, quiet, base_macs):
    """The scratch baseline's model and row."""
    model, width, seconds = _scratch_baseline(model_name, data, target, epochs, seed, quiet)
    row = {
        "name": f"scratch (width x{width:.2f})",
        "accuracy_before_finetune": None,
        "finetune_seconds": seconds,
        **_static_metrics(model.eval(), data, base_macs),
    }
    return model, row


def _add_latency(models, rows, size, latency_repeats, latency_rounds) -> list[float]:
    """Time all models round-robin at batch 1 and 64 and add latency and speed-up to rows.

    ``rows[0]`` is the base row. Returns the 1-minute load average before and after.
    """
    load_before = os.getloadavg()[0]
    for batch_size, repeats in ((1, latency_repeats), (64, max(1, latency_repeats // 5))):
        timings = _interleaved_latency(models, size, batch_size, latency_rounds, repeats)
        for row, timing in zip(rows, timings):
            row[f"latency_ms_b{batch_size}"] = timing["median_ms"]
            row[f"latency_min_ms_b{batch_size}"] = timing["min_ms"]
    base_row = rows[0]
    for row in rows:
        row["speedup_b1"] = base_row["latency_ms_b1"] / row["latency_ms_b1"]
        row["speedup_b64"] = base_row["latency_ms_b64"] / row["latency_ms_b64"]
    return [load_before, os.getloadavg()[0]]


def _config(data, model_name, target, epochs, base_epochs, seed, latency_rounds, load) -> dict:
    """The ``config`` entry of the result."""
    return {
        "data": data.name,
        "model": model_name,
        "target": target,
        "epochs": epochs,
        "base_epochs": base_epochs,
        "seed": seed,
        "input_size": list(data.input_shape),
        "finetune_lr": FINETUNE_LR,
        "threads": torch.get_num_threads(),
        "macs": "conv + linear multiply-accumulates per image",
        "latency": f"median over {latency_rounds} interleaved rounds of per-round medians",
        "load_average": load,
    }


def run_dims_bench(
    data_name: str = "digits",
    model_name: str = "resnet20",
    target: float = 0.5,
    epochs: int = 3,
    base_epochs: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    *,
    include_scratch: bool = True,
    latency_repeats: int = 20,
    latency_rounds: int = 5,
    data_options: dict | None = None,
) -> dict:
    """Compare depth-only, width-only, resolution-only and balanced pruning at one budget.

    Parameters
    ----------
    data_name : str
        Dataset for :func:`tridim.training.data.load` (``"digits"``, ``"fashion-mnist"``, ...).
    model_name : str
        Model for :func:`tridim.training.models.build` (``"resnet20"``, ...).
    target : float in (0, 1]
        MACs budget as a fraction of the base model's MACs.
    epochs : int
        Finetuning epochs for every pruned model.
    base_epochs : int, optional
        Training epochs of the base model (default from :data:`DEFAULT_BASE_EPOCHS`,
        else 10).
    seed : int
        Seeds training, probes and channel ranking.
    quiet : bool
        Hide progress bars.
    include_scratch : bool
        Add a thinner CIFAR ResNet (``width`` option) of about the target MACs trained
        from scratch for ``base_epochs + epochs`` epochs (skipped for other models).
    latency_repeats : int
        Timed passes per model and round at batch 1 (a fifth as many at batch 64).
    latency_rounds : int
        Rounds of round-robin timing over all models (see the notes).
    data_options : dict, optional
        Passed to :func:`tridim.training.data.load`.

    Returns
    -------
    dict
        ``{"config", "base", "rows", "seconds"}``: ``rows`` hold one dict per variant with
        ``name``, ``accuracy`` (test), ``accuracy_before_finetune``, ``macs``,
        ``macs_ratio``, ``params``, ``latency_ms_b1``, ``latency_ms_b64``, ``speedup_b1``,
        ``speedup_b64``, ``finetune_seconds`` and, for pruned rows, ``requested``,
        ``realised`` and ``plan`` (plain dicts). ``config["load_average"]`` holds the
        1-minute load average before and after timing.

    Notes
    -----
    Latency is measured after all models are built, all together in alternating rounds
    (:func:`tridim.cost.timing.time_models`: a dedicated timing process, warm-up until stable,
    a spread check). On a shared machine this spreads interference over all rows instead
    of onto one.
    """
    target = check_ratio(target, "target")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    started = time.perf_counter()
    data = load(data_name, **(data_options or {}))
    if base_epochs is None:
        base_epochs = DEFAULT_BASE_EPOCHS.get(data.name, 10)
    base, base_row, base_macs = _train_base(model_name, data, base_epochs, seed, quiet)
    rows, models = [], [base]
    for name, (model, plan) in _variants(base, data, target, seed).items():
        rows.append(_finetuned_row(name, model, plan, data, epochs, seed, quiet, base_macs))
        models.append(model)
    if include_scratch and model_name.lower() in CIFAR_RESNET_DEPTHS:
        model, row = _scratch_row(
            model_name, data, target, base_epochs + epochs, seed, quiet, base_macs
        )
        rows.append(row)
        models.append(model)
    load_average = _add_latency(
        models, [base_row, *rows], data.input_shape, latency_repeats, latency_rounds
    )
    return {
        "config": _config(
            data, model_name, target, epochs, base_epochs, seed, latency_rounds, load_average
        ),
        "base": base_row,
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }


def format_table(result: dict) -> str:
    """The result of :func:`run_dims_bench` as the command line prints it."""
    config = result["config"]
    rows = []
    for row in [result["base"], *result["rows"]]:
        realised = row.get("realised") or {}
        rows.append(
            {
                "variant": row["name"],
                "d": realised.get("d"),
                "w": realised.get("w"),
                "r": realised.get("r"),
                "accuracy": row["accuracy"],
                "acc_before_ft": row.get("accuracy_before_finetune"),
                "macs_ratio": row["macs_ratio"],
                "params": row["params"],
                "ms_b1": row["latency_ms_b1"],
                "ms_b64": row["latency_ms_b64"],
                "speedup_b1": row["speedup_b1"],
                "speedup_b64": row["speedup_b64"],
            }
        )
    head = (
        f"tridim bench dims: {config['model']} on {config['data']} "
        f"{'x'.join(map(str, config['input_size']))}, target MACs ratio {config['target']:g}, "
        f"base {config['base_epochs']} epochs, finetune {config['epochs']} epochs"
    )
    note = (
        "MACs: conv + linear, ratio to the base; accuracy: test, after finetuning; "
        "latency: median CPU forward time; speed-up over the base."
    )
    return "\n".join([head, markdown_table(rows), note])
