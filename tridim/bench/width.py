"""Width benchmark: every criterion from one trained base model, plus the oracle table.

:func:`run_width_bench` returns plain data (JSON-ready) and prints nothing; the command
line (``tridim bench width``) formats it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch

from tridim.bench.oracle import MOLCHANOV_REFERENCE, criterion_oracle_correlation
from tridim.cost.macs import count_macs, count_params
from tridim.prune.criteria import CRITERIA
from tridim.prune.groups import channel_groups
from tridim.prune.slimming import prune_iteratively
from tridim.prune.width import prune_width_to_macs
from tridim.run.report import markdown_table
from tridim.search.space import check_ratio
from tridim.training.data import load
from tridim.training.models import CIFAR_RESNET_DEPTHS, build
from tridim.training.train import evaluate, train

__all__ = ["format_table", "run_width_bench", "REFERENCE"]

#: Published figures quoted next to the results.
REFERENCE = {
    "molchanov_oracle_spearman": MOLCHANOV_REFERENCE,
    "network_slimming": "VGG / CIFAR-10: 93.77% -> 93.78% at -51% FLOPs",
}


def _accuracy(model, data) -> float:
    return evaluate(model, data.loader("test", 256))


def _row(name, pruned, data, reference_macs, size, epochs, lr, seed, start) -> dict:
    before = _accuracy(pruned, data)
    train(pruned, data, epochs, lr=lr, seed=seed, quiet=True, evaluate_each_epoch=False)
    return {
        "criterion": name,
        "macs_ratio": count_macs(pruned, size) / reference_macs,
        "params": count_params(pruned),
        "acc_before_finetune": before,
        "acc_after": _accuracy(pruned, data),
        "seconds": time.perf_counter() - start,
    }


def _scratch_width(model_name, data, target, reference_macs) -> float:
    """Width multiplier of a thinner CIFAR ResNet with ``target`` x the MACs (bisection)."""
    size = data.input_shape
    lo, hi = 0.05, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        macs = count_macs(build(model_name, data.num_classes, size[0], width=mid), size)
        lo, hi = (mid, hi) if macs < target * reference_macs else (lo, mid)
    return (lo + hi) / 2


def _spread_layers(model, data, count: int = 4) -> list[str]:
    """Roots of ``count`` channel groups spread evenly from the first to the last."""
    example = torch.zeros(1, *data.input_shape)
    roots = [g.root for g in channel_groups(model, example)]
    picks = sorted({round(i * (len(roots) - 1) / max(1, count - 1)) for i in range(count)})
    return [roots[i] for i in picks]


def _check_epochs(epochs, base_epochs) -> None:
    """Both epoch counts must be non-negative integers."""
    if (
        not isinstance(epochs, int)
        or epochs < 0
        or not isinstance(base_epochs, int)
        or base_epochs < 0
    ):
        raise ValueError("epochs and base_epochs must be non-negative integers")


def _config(data_name, model_name, target, epochs, base_epochs, seed, size) -> dict:
    """The ``config`` entry of the result."""
    return {
        "data": data_name,
        "model": model_name,
        "target": target,
        "epochs": epochs,
        "base_epochs": base_epochs,
        "seed": seed,
        "input_size": list(size),
        "macs": "conv + linear MACs (FlopCounterMode FLOPs / 2)",
    }


def _train_base(model_name, data, base_epochs, lr, seed, quiet):
    """Build and train the base model; return it, its MACs and its summary."""
    size = data.input_shape
    start = time.perf_counter()
    base = build(model_name, data.num_classes, size[0])
    train(base, data, base_epochs, lr=lr, seed=seed, quiet=quiet, evaluate_each_epoch=False)
    reference_macs = count_macs(base, size)
    summary = {
        "accuracy": _accuracy(base, data),
        "macs": reference_macs,
        "params": count_params(base),
        "seconds": time.perf_counter() - start,
    }
    return base, reference_macs, summary


def _criterion_row(name, base, data, target, reference_macs, epochs, lr, seed) -> dict:
    """One-shot pruning to the MACs target by one criterion, then finetuning."""
    size = data.input_shape
    start = time.perf_counter()
    pruned = prune_width_to_macs(
        base, target, input_size=size, criterion=name, data=data, seed=seed
    )
    return _row(name, pruned, data, reference_macs, size, epochs, lr, seed, start)


def _iterative_row(base, data, target, reference_macs, epochs, lr, seed, quiet) -> dict:
    """Molchanov's iterative Taylor loop on a copy of the base, then finetuning."""
    size = data.input_shape
    start = time.perf_counter()
    pruned = prune_iteratively(
        copy.deepcopy(base), data, target, input_size=size, seed=seed, quiet=quiet
    )
    return _row("taylor (iterative)", pruned, data, reference_macs, size, epochs, lr, seed, start)


def _scratch_row(model_name, data, target, reference_macs, epochs, lr, seed, quiet) -> dict:
    """A thinner network of the same MACs trained from scratch for ``epochs``."""
    size = data.input_shape
    start = time.perf_counter()
    width = _scratch_width(model_name, data, target, reference_macs)
    thin = build(model_name, data.num_classes, size[0], width=width)
    train(thin, data, epochs, lr=lr, seed=seed, quiet=quiet, evaluate_each_epoch=False)
    acc = _accuracy(thin, data)
    return {
        "criterion": f"scratch (width x{width:.2f})",
        "macs_ratio": count_macs(thin, size) / reference_macs,
        "params": count_params(thin),
        "acc_before_finetune": None,
        "acc_after": acc,
        "seconds": time.perf_counter() - start,
    }


def _oracle(base, data, criteria, oracle_layers, oracle_batches, seed) -> dict | None:
    """Spearman correlation of each criterion with the oracle (None if 0 batches)."""
    if not oracle_batches:
        return None
    layers = list(oracle_layers) if oracle_layers is not None else _spread_layers(base, data)
    return criterion_oracle_correlation(
        base, data, criteria=criteria, layers=layers, n_batches=oracle_batches, seed=seed
    )


def run_width_bench(
    data_name: str = "digits",
    model_name: str = "resnet20",
    target: float = 0.5,
    epochs: int = 3,
    base_epochs: int = 15,
    seed: int = 0,
    quiet: bool = False,
    oracle_layers: Sequence[str] | None = None,
    *,
    criteria: Sequence[str] = CRITERIA,
    iterative: bool = True,
    scratch: bool = True,
    lr: float = 0.05,
    finetune_lr: float = 0.01,
    oracle_batches: int = 4,
    data_options: dict | None = None,
) -> dict:
    """Prune one trained model to a MACs target by every criterion and compare.

    Parameters
    ----------
    data_name : str
        Dataset for :func:`tridim.training.data.load` (``"digits"``, ``"fashion-mnist"``, ...).
    model_name : str
        Model for :func:`tridim.training.models.build`.
    target : float in (0, 1]
        MACs ratio to reach (:func:`prune_width_to_macs`, within 1%).
    epochs : int
        Finetuning epochs after pruning (cosine schedule from ``finetune_lr``).
    base_epochs : int
        Training epochs of the base model (from ``lr``).
    seed : int
        Seeds training, scoring batches and the ``random`` criterion.
    quiet : bool
        Hide progress bars.
    oracle_layers : sequence of str, optional
        Group roots for the oracle table (default: four groups spread from the first to
        the last; see :func:`tridim.bench.oracle.criterion_oracle_correlation` for the cost).
    criteria : sequence of str
        Criteria to compare (one row each).
    iterative : bool
        Add a row for :func:`prune_iteratively` with Taylor (Molchanov's loop).
    scratch : bool
        Add the honest baseline: a thinner network (CIFAR ResNets' ``width`` option) of
        the same MACs trained from scratch for ``base_epochs + epochs``.
    lr, finetune_lr : float
        Learning rates of base training and of finetuning.
    oracle_batches : int
        Batches for the oracle (set 0 to skip the table).
    data_options : dict, optional
        Options for :func:`tridim.training.data.load`.

    Returns
    -------
    dict
        ``{"config", "base", "rows", "oracle", "reference"}``. Each row holds
        ``criterion, macs_ratio, params, acc_before_finetune, acc_after, seconds``
        (seconds = pruning + finetuning). For the iterative row, ``acc_before_finetune``
        is measured after the SGD updates interleaved with pruning.
    """
    target = check_ratio(target, "target")
    _check_epochs(epochs, base_epochs)
    data = load(data_name, **(data_options or {}))
    config = _config(data_name, model_name, target, epochs, base_epochs, seed, data.input_shape)
    base, reference_macs, summary = _train_base(model_name, data, base_epochs, lr, seed, quiet)
    result = {"config": config, "base": summary, "rows": [], "reference": REFERENCE}
    for name in criteria:
        result["rows"].append(
            _criterion_row(name, base, data, target, reference_macs, epochs, finetune_lr, seed)
        )
    if iterative:
        result["rows"].append(
            _iterative_row(base, data, target, reference_macs, epochs, finetune_lr, seed, quiet)
        )
    if scratch and model_name.lower() in CIFAR_RESNET_DEPTHS:
        result["rows"].append(
            _scratch_row(
                model_name, data, target, reference_macs, base_epochs + epochs, lr, seed, quiet
            )
        )
    result["oracle"] = _oracle(base, data, criteria, oracle_layers, oracle_batches, seed)
    return result


def format_table(result: dict) -> str:
    """The result of :func:`run_width_bench` as the command line prints it."""
    base, config = result["base"], result["config"]
    columns = ["criterion", "macs_ratio", "params", "acc_before_finetune", "acc_after", "seconds"]
    lines = [
        f"base {config['model']} on {config['data']}: accuracy {base['accuracy']:.4f}, "
        f"{base['macs']:,} MACs (conv + linear), {base['params']:,} params; "
        f"target MACs ratio {config['target']}, finetune {config['epochs']} epochs",
        markdown_table(result["rows"], columns),
    ]
    oracle = result.get("oracle")
    if oracle:
        rows = [
            {
                "criterion": name,
                "mean_per_layer": oracle["mean_per_layer"][name],
                "all_layers_raw": values["raw"],
                "all_layers_l2": values["l2"],
            }
            for name, values in oracle["overall"].items()
        ]
        ref = result["reference"]["molchanov_oracle_spearman"]
        low, high = ref["others_range"]
        lines += [
            f"\nSpearman correlation with the oracle (|change in loss| when one channel is "
            f"zeroed; {oracle['channels']} channels in {len(oracle['layers'])} groups, "
            f"{oracle['n_batches']} batches, {oracle['seconds']:.0f} s)",
            markdown_table(rows),
            f"reference ({ref['source']}): taylor {ref['taylor']}, others {low}-{high}",
        ]
    return "\n".join(lines)
