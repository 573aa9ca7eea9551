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

Submodules: ``tridim.data`` (datasets), ``tridim.models`` (reference models),
``tridim.train`` (finetuning), ``tridim.report`` (tables and the report),
``tridim.plot`` (figures of a run; needs matplotlib). Names are imported lazily, so the
torch-free parts (space, samples, predictor, solver, plan) load without importing torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata as _metadata
import sys
import types

try:
    __version__ = _metadata.version("tridim")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "Triple": "space",
    "Bounds": "space",
    "flops_cost": "space",
    "count_macs": "measure",
    "count_params": "measure",
    "measure_latency": "measure",
    "LowRankPolynomialRegressor": "predictor",
    "solve": "solver",
    "pareto": "solver",
    "Solution": "solver",
    "Sample": "samples",
    "read_samples": "samples",
    "prune_width": "dims.width",
    "prune_width_to_macs": "dims.width",
    "prune_iteratively": "dims.slimming",
    "bn_l1_penalty": "dims.slimming",
    "criterion_oracle_correlation": "dims.criteria",
    "block_gains": "dims.depth",
    "prune_depth": "dims.depth",
    "find_blocks": "dims.depth",
    "with_resolution": "dims.resolution",
    "realise": "realise",
    "apply_plan": "realise",
    "Plan": "plan",
    "RunStore": "store",
    "load_run": "store",
    "collect": "collect",
    "optimize": "optimize",
    "CompressionResult": "optimize",
    "save": "io",
    "load": "io",
    "describe": "io",
    "export_onnx": "io",
}

_SUBMODULES = ("data", "models", "train", "report", "plot")
# Functions that share their module's name: the package attribute stays the function
# even after the submodule is imported (the module remains in sys.modules).
_FUNCTIONS_NAMED_LIKE_MODULES = frozenset({"collect", "optimize", "realise"})

__all__ = sorted(_EXPORTS) + list(_SUBMODULES) + ["__version__"]


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _FUNCTIONS_NAMED_LIKE_MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tridim' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
