"""Saving and loading pruned models without pickled code, and ONNX export.

A saved model is a folder with three files:

- ``model.json`` — schema version, the base model's :class:`~tridim.models.ModelSpec`,
  the :class:`~tridim.search.plan.Plan` that cuts the pruned architecture from it (or none),
  and the input size;
- ``model.safetensors`` — the state dict as safetensors (the format model hubs use:
  tensors and a JSON header, nothing executable);
- ``weights.pt`` — the same state dict for ``torch.load(..., weights_only=True)``.

:func:`load` rebuilds the base architecture from the spec, re-applies the plan, and
loads the weights from whichever of the two weight files the folder has (safetensors
first): no code is ever unpickled.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import safetensors.torch
import torch
import torch.nn as nn

from tridim.atomic import atomic_write, atomic_write_json
from tridim.cost.onnx import write_onnx
from tridim.prune.realise import apply_plan
from tridim.prune.resolution import ResolutionWrapper
from tridim.search.plan import Plan
from tridim.training.models import ModelSpec, spec_of

__all__ = ["save", "load", "describe", "export_onnx", "state_dict_mismatch", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
_DESCRIPTION = "model.json"
_WEIGHTS = "weights.pt"
_SAFETENSORS = "model.safetensors"


def _unwrap(result_or_model, plan: Plan | None) -> tuple[nn.Module, Plan | None]:
    if isinstance(result_or_model, nn.Module):
        return result_or_model, plan
    model = getattr(result_or_model, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"expected a model or a CompressionResult, got {type(result_or_model).__name__}"
        )
    return model, plan if plan is not None else getattr(result_or_model, "plan", None)


def _spec_for(model: nn.Module, plan: Plan | None) -> ModelSpec | None:
    inner = model.model if isinstance(model, ResolutionWrapper) else model
    spec = spec_of(model) or spec_of(inner)
    if spec is None and plan is not None and plan.base_spec is not None:
        spec = ModelSpec.from_dict(plan.base_spec)
    return spec


def _check_rebuildable(model: nn.Module, spec: ModelSpec | None, plan: Plan | None) -> None:
    """Refuse to save a model that :func:`load` could not rebuild."""
    if spec is None and plan is None:
        raise ValueError(
            "this model has no ModelSpec and no plan, so it cannot be rebuilt without "
            "pickling code: build it with tridim.models.build(...), pass plan= for a "
            "pruned model, or save its state_dict yourself"
        )
    if plan is None and (
        isinstance(model, ResolutionWrapper) or _shapes(spec.build()) != _shapes(model)
    ):
        raise ValueError(
            "this model was pruned: its architecture differs from its ModelSpec. Pass the "
            "Plan that realise() returned: save(model, path, plan=plan)"
        )


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def save(result_or_model, path: str | os.PathLike, *, plan: Plan | None = None) -> Path:
    """Save a model (or a :class:`CompressionResult`'s model) to a folder.

    Parameters
    ----------
    result_or_model : torch.nn.Module or CompressionResult
        A model built by :func:`tridim.training.models.build`, possibly pruned by tridim, or the
        result of :func:`tridim.run.optimize` (its plan is used).
    path : path
        Folder to write; created if needed.
    plan : Plan, optional
        How a pruned model was cut from its base (from :func:`tridim.prune.realise`); required
        for a pruned model.

    Returns
    -------
    pathlib.Path
        The folder written.

    Raises
    ------
    ValueError
        If the model could not be rebuilt from what would be saved (no spec and no plan,
        or a pruned model without its plan).
    """
    model, plan = _unwrap(result_or_model, plan)
    spec = _spec_for(model, plan)
    _check_rebuildable(model, spec, plan)
    input_size = plan.input_size if plan is not None else getattr(model, "input_size", None)
    description = {
        "format": "tridim-model",
        "schema_version": SCHEMA_VERSION,
        "base_model": spec.to_dict() if spec is not None else None,
        "plan": plan.to_dict() if plan is not None else None,
        "input_size": list(input_size or []),
    }
    folder = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(folder / _SAFETENSORS, safetensors.torch.save(state))
    atomic_write(folder / _WEIGHTS, lambda handle: torch.save(state, handle))
    atomic_write_json(folder / _DESCRIPTION, description)
    return folder


def describe(path: str | os.PathLike) -> dict:
    """The validated ``model.json`` of a saved model: ``base_model``, ``plan``, ``input_size``.

    Raises
    ------
    FileNotFoundError
        If the folder has no ``model.json``.
    ValueError
        If it is not a tridim model description of a version this tridim reads.
    """
    folder = Path(path)
    path = folder / _DESCRIPTION
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a saved tridim model (no {_DESCRIPTION})")
    try:
        description = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(description, dict) or description.get("format") != "tridim-model":
        raise ValueError(f"{path} is not a tridim model description")
    version = description.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema version {version!r}; this tridim reads {SCHEMA_VERSION}"
        )
    return description


def load(path: str | os.PathLike, base_model: nn.Module | None = None) -> nn.Module:
    """Load a model saved by :func:`save`: rebuild the architecture, then load weights.

    Parameters
    ----------
    path : path
        The folder :func:`save` wrote.
    base_model : torch.nn.Module, optional
        The unpruned model the saved one was cut from. Needed only for models that
        :func:`tridim.training.models.build` did not make (their architecture cannot be rebuilt
        from a name); its weights do not matter.

    Returns
    -------
    torch.nn.Module
        In eval mode. :func:`describe` gives its plan and input size.

    Raises
    ------
    FileNotFoundError
        If the folder lacks ``model.json``, or both ``model.safetensors`` and ``weights.pt``.
    ValueError
        If the description or weights are malformed or do not fit together.
    """
    folder = Path(path)
    description = describe(folder)
    try:
        model = _base_architecture(folder, description, base_model)
        input_size = description.get("input_size") or None
        if description.get("plan") is not None:
            plan = Plan.from_dict(description["plan"])
            model = apply_plan(model, plan, input_size=input_size or plan.input_size)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        raise ValueError(f"{folder / _DESCRIPTION}: {error}") from None
    model.load_state_dict(_read_weights(folder, model))
    return model.eval()


def _base_architecture(folder: Path, description: dict, base_model: nn.Module | None):
    if description.get("base_model") is not None:
        return ModelSpec.from_dict(description["base_model"]).build()
    if base_model is not None:
        return copy.deepcopy(base_model)
    raise ValueError(
        f"{folder} holds a model that tridim.models.build did not make: pass the "
        "unpruned model it was cut from as load(path, base_model=...)"
    )


def _read_weights(folder: Path, model: nn.Module) -> dict:
    """The state dict from ``model.safetensors``, else ``weights.pt`` (weights only)."""
    tensors, weights = folder / _SAFETENSORS, folder / _WEIGHTS
    if tensors.is_file():
        try:
            state, source = safetensors.torch.load_file(tensors), tensors
        except Exception as error:  # a truncated or foreign file
            raise ValueError(f"{tensors} is not a readable safetensors file: {error}") from None
    elif weights.is_file():
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as error:  # never fall back to unpickling arbitrary objects
            raise ValueError(f"{weights} is not a weights-only tensor file: {error}") from None
        source = weights
    else:
        raise FileNotFoundError(f"{folder} has neither {_SAFETENSORS} nor {_WEIGHTS}")
    problem = state_dict_mismatch(state, model)
    if problem:
        raise ValueError(f"{source} does not fit the architecture in {_DESCRIPTION}: {problem}")
    return state


def state_dict_mismatch(state, model: nn.Module) -> str:
    """What keeps ``state`` from loading into ``model`` ("" if it fits).

    Names missing and unexpected keys and the first tensor whose shape differs.
    """
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state dict"
    found = {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
    return _shape_difference(found, _shapes(model))


def _shape_difference(found: dict, expected: dict) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    parts = []
    if missing:
        parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    if wrong:
        key = wrong[0]
        parts.append(f"{key} is {found[key]} in the file, {expected[key]} in the model")
    return "; ".join(parts)


def export_onnx(
    result_or_model, path: str | os.PathLike, input_size, *, batch_size: int = 1, opset: int = 17
) -> Path:
    """Export a (pruned) model, or a :class:`CompressionResult`'s, to ONNX.

    See :func:`tridim.cost.onnx.write_onnx` (a dynamic batch dimension; the input resize
    exported as two fixed matrix products).
    """
    model, _ = _unwrap(result_or_model, None)
    return write_onnx(model, path, input_size, batch_size=batch_size, opset=opset)
