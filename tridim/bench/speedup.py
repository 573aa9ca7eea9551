"""Benchmark: is a latency budget met as measured, and does every timer agree?

From one trained base model (cached in the output folder), :func:`run_speedup_bench` runs
:func:`tridim.run.optimize` ``runs`` times at ``target_speedup`` on each runtime asked for
(each run in a fresh run folder), then times each final model against the base three
ways:

1. ``optimize``: the ``measured_speedup`` in the run's report;
2. ``bench compare``: :func:`tridim.cost.runtimes.time_ratio`, as ``tridim bench compare``
   times its cells, in this process;
3. ``fresh process``: a new Python process that loads the saved model with
   :func:`tridim.load` and the base weights from disk and times them the same way.

A row per run says how far each is from the target and how far the three disagree.
Cells (one per runtime and run) are stored in ``out`` as they finish: a re-run skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import tridim
from tridim.atomic import atomic_write_json
from tridim.bench.latency import bench_setup
from tridim.cost.runtimes import time_ratio
from tridim.run.report import markdown_table
from tridim.training.models import build
from tridim.training.train import load_checkpoint

__all__ = ["format_table", "run_speedup_bench"]


def run_speedup_bench(
    data_name: str = "digits",
    model_name: str = "resnet20",
    *,
    out: str | os.PathLike,
    target_speedup: float = 1.5,
    runtimes: tuple[str, ...] = ("eager", "onnxruntime"),
    runs: int = 3,
    base_epochs: int = 10,
    latency_batch: int = 64,
    repeats: int = 15,
    seed: int = 0,
    quiet: bool = False,
    optimize_options: dict | None = None,
    data_options: dict | None = None,
) -> dict:
    """Run the benchmark; returns plain data (see the module docstring)."""
    data, out, base, base_record = bench_setup(
        data_name, model_name, out, base_epochs, seed, quiet, data_options=data_options
    )
    cells = []
    for runtime in runtimes:
        for run in range(1, runs + 1):
            path = out / "cells" / f"{runtime}-{run}.json"
            if path.is_file():
                cells.append(json.loads(path.read_text()))
                continue
            workdir = out / "runs" / f"{runtime}-{run}"
            result = tridim.optimize(
                base,
                data,
                target_speedup=target_speedup,
                runtime=runtime,
                latency_batch=latency_batch,
                latency_repeats=repeats,
                workdir=workdir,
                seed=seed,
                quiet=quiet,
                device="cpu",
                **(optimize_options or {}),
            )
            budget = result.report["budget"]
            compare = time_ratio(
                result.model,
                base,
                data.input_shape,
                latency_batch,
                runtime=runtime,
                repeats=repeats,
            )
            fresh = _fresh_process_ratio(
                workdir / "model",
                out / base_record["weights"],
                model_name,
                data,
                runtime,
                latency_batch,
                repeats,
            )
            cell = {
                "runtime": runtime,
                "run": run,
                "triple": result.report["triple"],
                "accuracy": result.report["accuracy"],
                "optimize": budget["measured_speedup"],
                "bench_compare": 1.0 / compare["ratio"],
                "fresh_process": 1.0 / fresh["ratio"],
                "base_ms": {
                    "optimize": budget["measured_ms"]["before"],
                    "bench_compare": compare["base_ms"],
                    "fresh_process": fresh["base_ms"],
                },
                "timing": {
                    "optimize": budget["timing"],
                    "bench_compare": compare["state"],
                    "fresh_process": fresh["state"],
                },
            }
            atomic_write_json(path, cell)
            cells.append(cell)
    for cell in cells:
        speedups = [cell[k] for k in ("optimize", "bench_compare", "fresh_process")]
        cell["off_target"] = max(abs(s / target_speedup - 1.0) for s in speedups)
        cell["disagreement"] = max(speedups) / min(speedups) - 1.0
    return {
        "config": {
            "data": data.name,
            "model": model_name,
            "input_size": list(data.input_shape),
            "target_speedup": target_speedup,
            "runs": runs,
            "latency_batch": latency_batch,
            "repeats": repeats,
            "seed": seed,
            "optimize_options": optimize_options or {},
        },
        "base": base_record,
        "cells": cells,
        "max_off_target": max(c["off_target"] for c in cells),
        "max_disagreement": max(c["disagreement"] for c in cells),
    }


def _fresh_process_ratio(model_folder, base_weights, model_name, data, runtime, batch, repeats):
    """The final model against the base, both loaded from disk by a new process."""
    request = {
        "model": str(model_folder),
        "base_weights": str(base_weights),
        "base": model_name,
        "num_classes": data.num_classes,
        "input_size": list(data.input_shape),
        "runtime": runtime,
        "batch": batch,
        "repeats": repeats,
    }
    answer = subprocess.run(
        [sys.executable, "-m", "tridim.bench.speedup", json.dumps(request)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(answer.stdout.strip().splitlines()[-1])


def _time_in_this_process(request: dict) -> dict:
    model = tridim.load(request["model"])
    base = build(request["base"], request["num_classes"], request["input_size"][0])
    load_checkpoint(request["base_weights"], base)
    return time_ratio(
        model,
        base.eval(),
        tuple(request["input_size"]),
        request["batch"],
        runtime=request["runtime"],
        repeats=request["repeats"],
    )


def format_table(result: dict) -> str:
    """The result of :func:`run_speedup_bench` as the command line prints it."""
    config = result["config"]
    rows = [
        {
            "runtime": cell["runtime"],
            "run": cell["run"],
            "d": cell["triple"]["d"],
            "w": cell["triple"]["w"],
            "r": cell["triple"]["r"],
            "accuracy": cell["accuracy"],
            "optimize": cell["optimize"],
            "bench_compare": cell["bench_compare"],
            "fresh_process": cell["fresh_process"],
            "off_target": cell["off_target"],
            "disagreement": cell["disagreement"],
            "base_ms_fresh": cell["base_ms"]["fresh_process"],
        }
        for cell in result["cells"]
    ]
    head = (
        f"tridim bench speedup: {config['model']} on {config['data']}, base "
        f"{result['base']['epochs']} epochs (test accuracy {result['base']['accuracy']:.4f}), "
        f"target {config['target_speedup']:g}x at batch {config['latency_batch']}"
    )
    note = (
        f"speed-ups: base / final latency at batch {config['latency_batch']}, timed in "
        "alternating rounds by tridim.cost.timing; off_target: the largest |speed-up / target - 1| "
        "of the three; disagreement: largest / smallest of the three - 1. "
        f"Largest off_target {result['max_off_target']:.1%}, "
        f"largest disagreement {result['max_disagreement']:.1%}."
    )
    return "\n".join([head, markdown_table(rows), note])


if __name__ == "__main__":
    print(json.dumps(_time_in_this_process(json.loads(sys.argv[1]))))
