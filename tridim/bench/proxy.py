"""Benchmark: do samples finetuned on part of the training set rank triples as the full
recipe does?

From one base model (cached in the output folder), the same collection runs once per
``sample_fraction`` (each in its own run folder, resumable): the same triples, each
finetuned on that seeded fraction of the training split and scored on the whole
validation split. For each fraction the table gives what the collection cost (seconds,
base-training equivalents, :mod:`tridim.run.compute`), the Spearman correlation of its
sample accuracies with the full recipe's over the same triples, and the triple the
predictor fitted on it solves for (with optimize's measured-MACs cost).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from scipy.stats import spearmanr

import tridim
from tridim.bench.latency import bench_setup
from tridim.budget.cost_model import CostModel, macs_cost
from tridim.run.compute import stage_cost
from tridim.run.report import markdown_table
from tridim.search.selection import choose_and_fit
from tridim.search.solver import solve

__all__ = ["format_table", "run_proxy_bench"]


def run_proxy_bench(
    data_name: str = "digits",
    model_name: str = "resnet20",
    *,
    out: str | os.PathLike,
    target: float = 0.5,
    fractions: Sequence[float] = (1.0, 0.5, 0.25),
    rounds: int = 2,
    epochs_per_step: int = 2,
    base_epochs: int = 15,
    train_subset: int | None = None,
    seed: int = 0,
    quiet: bool = True,
    data_options: dict | None = None,
) -> dict:
    """Run the benchmark; returns plain data (see the module docstring)."""
    if 1.0 not in fractions:
        fractions = (1.0, *fractions)  # the full recipe is the reference
    data, out, base, base_record = bench_setup(
        data_name, model_name, out, base_epochs, seed, quiet, train_subset, data_options
    )
    cost = CostModel(base, data.input_shape, macs_cost, criterion="bn_scale", seed=seed)
    runs = {}
    for fraction in fractions:
        began = time.perf_counter()
        samples = tridim.collect(
            base,
            data,
            target,
            workdir=out / f"fraction-{fraction:g}",
            rounds=rounds,
            epochs_per_step=epochs_per_step,
            sample_fraction=fraction,
            seed=seed,
            quiet=quiet,
            device="cpu",
        )
        predictor, _ = choose_and_fit(samples, random_state=seed)
        solution = solve(predictor, target, cost=cost)
        images = max(1, round(fraction * len(data.train)))
        share = images / len(data.train)
        spent = stage_cost(samples, train_images=images, distill=True, data_share=share)
        runs[fraction] = {
            "fraction": fraction,
            "seconds": time.perf_counter() - began,
            "base_trainings": spent["base_epochs"] / base_epochs,
            "accuracies": {s.extra["key"]: s.accuracy for s in samples},
            "solved_triple": solution.triple.to_dict(),
        }
    reference = runs[1.0]["accuracies"]
    for run in runs.values():
        keys = [k for k in reference if k != "base" and k in run["accuracies"]]
        rho = spearmanr([reference[k] for k in keys], [run["accuracies"][k] for k in keys])
        run["spearman_vs_full"] = float(rho.statistic)
        run["same_triple_as_full"] = all(
            abs(run["solved_triple"][x] - runs[1.0]["solved_triple"][x]) < 0.02 for x in "dwr"
        )
    return {
        "config": {
            "data": data.name,
            "model": model_name,
            "train_examples": len(data.train),
            "target": target,
            "rounds": rounds,
            "epochs_per_step": epochs_per_step,
            "seed": seed,
        },
        "base": base_record,
        "runs": list(runs.values()),
    }


def format_table(result: dict) -> str:
    """The result of :func:`run_proxy_bench` as the command line prints it."""
    config = result["config"]
    rows = [
        {
            "fraction": run["fraction"],
            "seconds": run["seconds"],
            "base_trainings": run["base_trainings"],
            "spearman_vs_full": run["spearman_vs_full"],
            "d": run["solved_triple"]["d"],
            "w": run["solved_triple"]["w"],
            "r": run["solved_triple"]["r"],
            "same_triple": run["same_triple_as_full"],
        }
        for run in result["runs"]
    ]
    head = (
        f"tridim bench proxy: {config['model']} on {config['data']} "
        f"({config['train_examples']} training images), target {config['target']:g}, "
        f"base {result['base']['epochs']} epochs (test accuracy {result['base']['accuracy']:.4f})"
    )
    note = (
        "base_trainings: the collection's cost (tridim.run.compute); spearman_vs_full: over the "
        "same triples' sample accuracies; d, w, r: the triple its predictor solves for."
    )
    return "\n".join([head, markdown_table(rows), note])
