"""tridim: compress a trained CNN to a FLOPs budget along depth, width and resolution.

The pipeline flows one way::

    model + data --collect--> samples --fit--> predictor --solve(budget)--> triple
        --realise--> plan --apply + finetune--> pruned model + report

Main entry points
-----------------
optimize
    The whole pipeline in one call.
count_macs, count_params, Triple
    Measured and analytic cost.
LowRankPolynomialRegressor, solve, pareto
    The accuracy predictor and the Lagrangian solver (no torch needed).
prune_width, prune_depth, with_resolution, realise
    The three dimensions, and realising a triple to an exact MACs budget.
collect
    Sample collection alone (Algorithm 1), with a crash-safe journal.
save, load, describe, export_onnx
    Pruned models to and from disk without pickled code; ONNX export.
RunStore, load_run
    A run folder: the journal of every trial, checkpoints, artifacts; read it back.

Layers, each importing only those below it: ``tridim.search`` (triples, samples, plans,
predictor, solver; no torch), ``tridim.training`` (datasets, models, the loop),
``tridim.cost`` (MACs, the timer, latency tables), ``tridim.prune`` (the three dimensions),
``tridim.budget`` (the cost model and latency budgets), ``tridim.run`` (run folders,
collection, optimize, saving, reports). ``tridim.data``, ``tridim.models``,
``tridim.train``, ``tridim.report`` and ``tridim.plot`` stay reachable as attributes.
Names are imported lazily, so the torch-free search layer loads without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata as _metadata

try:
    __version__ = _metadata.version("tridim")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Triple": "search.space",
    "Bounds": "search.space",
    "flops_cost": "search.space",
    "count_macs": "cost.macs",
    "count_params": "cost.macs",
    "measure_latency": "cost.macs",
    "LowRankPolynomialRegressor": "search.predictor",
    "solve": "search.solver",
    "pareto": "search.solver",
    "Solution": "search.solver",
    "Sample": "search.samples",
    "read_samples": "search.samples",
    "prune_width": "prune.width",
    "prune_width_to_macs": "prune.width",
    "prune_iteratively": "prune.slimming",
    "bn_l1_penalty": "prune.slimming",
    "block_gains": "prune.depth",
    "prune_depth": "prune.depth",
    "find_blocks": "prune.depth",
    "with_resolution": "prune.resolution",
    "realise": "prune.realise",
    "apply_plan": "prune.realise",
    "Plan": "search.plan",
    "RunStore": "run.store",
    "load_run": "run.store",
    "collect": "run.collect",
    "optimize": "run.optimize",
    "CompressionResult": "run.optimize",
    "save": "run.io",
    "load": "run.io",
    "describe": "run.io",
    "export_onnx": "run.io",
}

_SUBMODULES = {
    "data": "training.data",
    "models": "training.models",
    "train": "training.train",
    "report": "run.report",
    "plot": "run.plot",
}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES) + ["__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tridim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
