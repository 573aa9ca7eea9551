"""Benchmark: independent trials side by side against one process using every thread.

From one base model (trained briefly, cached in the output folder), the same collection
(:func:`tridim.run.collect`, one-shot samples) runs in this process alone (``cluster=None``,
every thread) and in worker processes (``cluster="processes"``, an even share of the
cores each), alternating, each in a fresh run folder. The table gives the wall times,
their ratio, and the largest accuracy difference between the two collections' samples
(threads change floating-point sums, so the samples may differ in the last digits).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time

import tridim
from tridim.bench.latency import bench_setup
from tridim.run.cluster import available_cores
from tridim.run.report import markdown_table

__all__ = ["format_table", "run_parallel_bench"]


def run_parallel_bench(
    data_name: str = "fashion-mnist",
    model_name: str = "resnet20",
    *,
    out: str | os.PathLike,
    train_subset: int | None = 10000,
    rounds: int = 1,
    epochs_per_step: int = 1,
    base_epochs: int = 2,
    repeats: int = 2,
    seed: int = 0,
    quiet: bool = True,
    data_options: dict | None = None,
) -> dict:
    """Run the benchmark; returns plain data (see the module docstring)."""
    data, out, base, base_record = bench_setup(
        data_name, model_name, out, base_epochs, seed, quiet, train_subset, data_options
    )
    times: dict[str, list[float]] = {"this process": [], "processes": []}
    samples: dict[str, list] = {}
    for repeat in range(repeats):
        for name, cluster in (("this process", None), ("processes", "processes")):
            workdir = out / "runs" / f"{cluster or 'none'}-{repeat}"
            shutil.rmtree(workdir, ignore_errors=True)
            began = time.perf_counter()
            samples[name] = tridim.collect(
                base,
                data,
                0.5,
                workdir=workdir,
                rounds=rounds,
                epochs_per_step=epochs_per_step,
                seed=seed,
                quiet=quiet,
                device="cpu",
                cluster=cluster,
            )
            times[name].append(time.perf_counter() - began)
    by_key = {
        name: {s.extra["key"]: s.accuracy for s in members} for name, members in samples.items()
    }
    difference = max(
        abs(by_key["this process"][key] - by_key["processes"][key]) for key in by_key["processes"]
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "config": {
            "data": data.name,
            "model": model_name,
            "train_examples": len(data.train),
            "rounds": rounds,
            "epochs_per_step": epochs_per_step,
            "trials": len(samples["processes"]) - 1,
            "cores": available_cores(),
            "repeats": repeats,
        },
        "base": base_record,
        "seconds": times,
        "median_seconds": medians,
        "processes_speedup": medians["this process"] / medians["processes"],
        "max_accuracy_difference": difference,
    }


def format_table(result: dict) -> str:
    """The result of :func:`run_parallel_bench` as the command line prints it."""
    config = result["config"]
    rows = [
        {"run": name, "median_s": result["median_seconds"][name], "runs_s": result["seconds"][name]}
        for name in result["seconds"]
    ]
    head = (
        f"tridim bench parallel: {config['trials']} trials of {config['epochs_per_step']} "
        f"epoch(s) on {config['train_examples']} {config['data']} images, {config['cores']} cores"
    )
    note = (
        f"processes are {result['processes_speedup']:.2f}x as fast; largest sample accuracy "
        f"difference {result['max_accuracy_difference']:.4f}"
    )
    return "\n".join([head, markdown_table(rows), note])
