"""Benchmark: a MACs budget against a latency budget, from one base model, in one run.

From one trained base model (cached in the output folder), :func:`run_latency_bench`
runs the whole pipeline twice with the same settings:

1. ``tridim (MACs)``: :func:`tridim.run.optimize` at ``target_flops_ratio=target``;
2. ``tridim (latency)``: :func:`tridim.run.optimize` at ``target_speedup`` equal to the
   speed-up the MACs run measured (on the same runtime and batch), so both land at the
   same measured speed-up and their accuracies compare directly;
3. optionally more latency runs at the ``extra_speedups`` asked for.

Every final model is then timed against the base model in alternating rounds at batch 1
and the latency batch, on the chosen runtime, and the latency table of the latency run
predicts each final model, so the table's error on realised models is reported too.
Runs live in sub-folders of ``out`` and resume: a killed benchmark loses at most the
trial in progress.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

import tridim
from tridim.budget.latency import LatencyBudget
from tridim.cost.latency import LatencyTable
from tridim.run.report import markdown_table
from tridim.training.data import DataBundle, load
from tridim.training.models import build
from tridim.training.train import evaluate, load_checkpoint, save_checkpoint, seed_everything, train

__all__ = ["format_table", "run_latency_bench", "bench_setup"]


def run_latency_bench(
    data_name: str,
    model_name: str,
    *,
    out: str | os.PathLike,
    target: float = 0.5,
    base_epochs: int = 10,
    rounds: int = 3,
    epochs_per_step: int = 1,
    final_epochs: int = 4,
    refine: int = 1,
    latency_batch: int = 64,
    runtime: str = "eager",
    extra_speedups: tuple[float, ...] = (),
    train_subset: int | None = None,
    repeats: int = 15,
    seed: int = 0,
    quiet: bool = False,
    data_options: dict | None = None,
) -> dict:
    """Run the comparison; returns plain data (see the module docstring)."""
    data, out, base, base_record = bench_setup(
        data_name, model_name, out, base_epochs, seed, quiet, train_subset, data_options
    )
    common = dict(
        rounds=rounds,
        epochs_per_step=epochs_per_step,
        final_epochs=final_epochs,
        refine=refine,
        seed=seed,
        quiet=quiet,
        latency_batch=latency_batch,
        latency_repeats=repeats,
        device="cpu",
    )
    runs = {"tridim (MACs)": tridim.optimize(base, data, target, workdir=out / "macs", **common)}
    reached = _speedup(runs["tridim (MACs)"].model, base, data, latency_batch, runtime, repeats)
    for speedup in (reached, *extra_speedups):
        name = f"tridim (latency {speedup:.2f}x)"
        runs[name] = tridim.optimize(
            base,
            data,
            target_speedup=speedup,
            runtime=runtime,
            workdir=out / f"latency-{speedup:.2f}",
            **common,
        )
    table = _latency_table(out / f"latency-{reached:.2f}" / "latency.json")
    rows = [
        _row(name, result, base, data, table, runtime, repeats) for name, result in runs.items()
    ]
    return {
        "config": {
            "data": data.name,
            "model": model_name,
            "input_size": list(data.input_shape),
            "train_examples": len(data.train),
            "target": target,
            "rounds": rounds,
            "epochs_per_step": epochs_per_step,
            "final_epochs": final_epochs,
            "refine": refine,
            "latency_batch": latency_batch,
            "runtime": runtime,
            "threads": torch.get_num_threads(),
            "seed": seed,
        },
        "base": base_record,
        "macs_run_speedup": reached,
        "table_calibration": json.loads(
            (out / f"latency-{reached:.2f}" / "latency.json").read_text()
        )["fit"],
        "rows": rows,
    }


def bench_setup(
    data_name, model_name, out, base_epochs, seed, quiet, train_subset=None, data_options=None
):
    """What the benchmarks that start from one trained base model share: the data (a
    seeded training subset if asked), the output folder, the base model and its record."""
    data = load(data_name, **(data_options or {}))
    if train_subset:
        data = data.subset(train=train_subset, seed=seed)
    out = Path(out)
    base, base_record = _base_model(model_name, data, base_epochs, seed, out, quiet)
    return data, out, base, base_record


def _base_model(model_name, data: DataBundle, epochs: int, seed: int, out: Path, quiet: bool):
    """The trained base model, cached in ``out`` (trained once)."""
    seed_everything(seed)
    model = build(model_name, data.num_classes, data.input_shape[0])
    cache = out / f"base-{model_name}-e{epochs}-s{seed}.pt"
    if cache.is_file():
        load_checkpoint(cache, model)
    else:
        train(model, data, epochs, lr=0.05, seed=seed, quiet=quiet, label="base model")
        save_checkpoint(cache, model)
    model.eval()
    accuracy = evaluate(model, data.loader("test", 256))
    return model, {"epochs": epochs, "accuracy": accuracy, "weights": cache.name}


def _speedup(model, base, data, batch: int, runtime: str, repeats: int) -> float:
    budget = LatencyBudget(target_speedup=2.0, batch_size=batch, runtime=runtime, repeats=repeats)
    return 1.0 / budget.compare(model, base, data.input_shape)["ratio"]


def _latency_table(path: Path) -> LatencyTable:
    return LatencyTable.from_dict(json.loads(path.read_text())["table"])


def _row(name, result, base: nn.Module, data, table: LatencyTable, runtime, repeats) -> dict:
    size = data.input_shape
    report = result.report
    timings = {}
    for batch in (1, table.batch_size):
        budget = LatencyBudget(
            target_speedup=2.0, batch_size=batch, runtime=runtime, repeats=repeats
        )
        timings[f"batch_{batch}"] = budget.compare(result.model, base, size)
    at_batch = timings[f"batch_{table.batch_size}"]
    predicted_ms = table.predict_ms(result.model, size)
    return {
        "name": name,
        "budget": report["budget"],
        "triple": report["triple"],
        "accuracy": report["accuracy"],
        "base_accuracy": report["base_accuracy"],
        "macs_ratio": report["macs_ratio"],
        "analytic_flops_ratio": report["analytic_flops_ratio"],
        "params": report["params_after"],
        "speedup": {key: 1.0 / t["ratio"] for key, t in timings.items()},
        "latency_ms": {key: t["model_ms"] for key, t in timings.items()},
        "table_predicted_ms": predicted_ms,
        "table_error": predicted_ms / at_batch["model_ms"] - 1.0,
        "seconds": report["seconds"],
    }


def format_table(result: dict) -> str:
    """The result of :func:`run_latency_bench` as the command line prints it."""
    config = result["config"]
    batch = config["latency_batch"]
    rows = [
        {
            "run": row["name"],
            "d": row["triple"]["d"],
            "w": row["triple"]["w"],
            "r": row["triple"]["r"],
            "accuracy": row["accuracy"],
            "macs_ratio": row["macs_ratio"],
            "analytic": row["analytic_flops_ratio"],
            "speedup_b1": row["speedup"]["batch_1"],
            f"speedup_b{batch}": row["speedup"][f"batch_{batch}"],
            "predicted": row["budget"].get("predicted_speedup"),
            "table_error": row["table_error"],
        }
        for row in result["rows"]
    ]
    head = (
        f"tridim bench latency: {config['model']} on {config['data']} "
        f"({config['train_examples']} training images), base {result['base']['epochs']} epochs "
        f"(test accuracy {result['base']['accuracy']:.4f}), runtime {config['runtime']}, "
        f"{config['threads']} threads"
    )
    note = (
        "accuracy: test, after the final finetune; speed-up: base / final latency, timed "
        "against the base in alternating rounds; predicted: the latency table's speed-up; "
        "table_error: table-predicted / measured latency of the final model - 1."
    )
    return "\n".join([head, markdown_table(rows), note])
