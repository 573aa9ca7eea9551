"""Realise a (d, w, r) triple as a real, smaller model, and record how as a Plan.

:func:`realise` applies the three dimensions in the order depth -> width -> resolution:
it removes whole blocks (:mod:`tridim.dims.depth`), removes channels physically
(:mod:`tridim.dims.width`) and wraps the result so it runs at a reduced input size
(:mod:`tridim.dims.resolution`). Depth is rounded to whole blocks and resolution to
whole pixels; when a FLOPs target is given, width absorbs the rounding: the number of
channels removed is found by bisection so that the *measured* MACs ratio is within 1%
of the target.

The returned :class:`Plan` is plain data (JSON). :func:`apply_plan` replays it on a fresh
copy of the same base model and rebuilds the same architecture, so a pruned model can be
stored as "base model spec + plan + weights".
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from .dims.depth import find_blocks, remove_blocks, select_blocks
from .dims.resolution import ResolutionWrapper, reduced_size
from .measure import check_input_size, count_macs
from .space import Triple, check_ratio

__all__ = ["Plan", "realise", "apply_plan", "plan_of"]

PLAN_FORMAT = 1
DEFAULT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Plan:
    """How a base model was cut down to a triple: plain data, JSON-ready.

    Attributes
    ----------
    requested : Triple
        The triple asked for.
    realised : Triple
        What was built: ``d`` = blocks kept / blocks, ``w`` = prunable channels kept /
        prunable channels (over all coupled channel groups of the depth-pruned model),
        ``r`` = geometric mean of the kept side ratios.
    input_size : tuple of int
        ``(C, H, W)`` of the full-size input.
    removed_blocks : list of str
        Qualified names of the blocks replaced by identity.
    blocks_total : int
        Blocks in the base model.
    width_removal : dict
        ``{root layer name: sorted output-channel indices}`` removed from the
        depth-pruned model (:func:`tridim.dims.width.select_channels` format).
    channels_kept, channels_total : int
        Prunable channels kept and in total, counted once per coupled group.
    resolution : tuple of int
        ``(height, width)`` in pixels the pruned model runs at.
    macs, base_macs : int
        Conv + linear MACs of the pruned model (with its resize) and of the base model,
        both at the full input size.
    macs_ratio : float
        ``macs / base_macs``.
    target_flops_ratio : float or None
        The MACs ratio asked for, if any.
    criterion : str
        Width criterion name.
    base_spec : dict or None
        ``model.tridim_spec.to_dict()`` of the base model, if it has one.
    """

    requested: Triple
    realised: Triple
    input_size: tuple[int, int, int]
    removed_blocks: list[str]
    blocks_total: int
    width_removal: dict[str, list[int]]
    channels_kept: int
    channels_total: int
    resolution: tuple[int, int]
    macs: int
    base_macs: int
    macs_ratio: float
    target_flops_ratio: float | None = None
    criterion: str = "bn_scale"
    base_spec: dict | None = None
    format: int = field(default=PLAN_FORMAT)

    @property
    def r(self) -> float:
        """Realised resolution ratio (same as ``realised.r``)."""
        return self.realised.r

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists for tuples, dicts for triples)."""
        return {
            "format": self.format,
            "requested": self.requested.to_dict(),
            "realised": self.realised.to_dict(),
            "input_size": list(self.input_size),
            "removed_blocks": list(self.removed_blocks),
            "blocks_total": self.blocks_total,
            "width_removal": {k: list(v) for k, v in sorted(self.width_removal.items())},
            "channels_kept": self.channels_kept,
            "channels_total": self.channels_total,
            "resolution": list(self.resolution),
            "macs": self.macs,
            "base_macs": self.base_macs,
            "macs_ratio": self.macs_ratio,
            "target_flops_ratio": self.target_flops_ratio,
            "criterion": self.criterion,
            "base_spec": copy.deepcopy(self.base_spec),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Plan:
        """Rebuild a plan from :meth:`to_dict` output, validating it.

        Raises
        ------
        ValueError
            On missing or unknown keys, wrong types, or a newer format.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"invalid plan: missing keys {missing}, unknown keys {unknown}")
        if int(data.get("format", PLAN_FORMAT)) > PLAN_FORMAT:
            raise ValueError(
                f"plan format {data['format']} is newer than this tridim reads "
                f"({PLAN_FORMAT}): upgrade tridim"
            )
        try:
            removal = {
                str(k): sorted(int(i) for i in v) for k, v in dict(data["width_removal"]).items()
            }
            target = data.get("target_flops_ratio")
            spec = data.get("base_spec")
            if spec is not None and not isinstance(spec, Mapping):
                raise TypeError("base_spec must be an object or null")
            return cls(
                requested=Triple.from_dict(data["requested"]),
                realised=Triple.from_dict(data["realised"]),
                input_size=check_input_size(data["input_size"]),
                removed_blocks=[_as_name(n) for n in data["removed_blocks"]],
                blocks_total=int(data["blocks_total"]),
                width_removal=removal,
                channels_kept=int(data["channels_kept"]),
                channels_total=int(data["channels_total"]),
                resolution=_as_pixels(data["resolution"]),
                macs=int(data["macs"]),
                base_macs=int(data["base_macs"]),
                macs_ratio=float(data["macs_ratio"]),
                target_flops_ratio=None if target is None else float(target),
                criterion=str(data.get("criterion", "bn_scale")),
                base_spec=None if spec is None else dict(spec),
                format=int(data.get("format", PLAN_FORMAT)),
            )
        except (TypeError, ValueError, KeyError) as error:
            raise ValueError(f"invalid plan: {error}") from None

    def to_json(self, indent: int | None = 2) -> str:
        """The plan as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"a plan must be JSON text: {error}") from None
        return cls.from_dict(data)


def _as_name(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"block names must be non-empty strings, got {value!r}")
    return value


def _as_pixels(value) -> tuple[int, int]:
    height, width = (int(v) for v in value)
    if height < 1 or width < 1:
        raise ValueError(f"resolution must be two positive integers, got {value!r}")
    return (height, width)


def _as_triple(triple) -> Triple:
    if isinstance(triple, Triple):
        return triple
    if isinstance(triple, Mapping):
        return Triple.from_dict(triple)
    try:
        d, w, r = triple
    except (TypeError, ValueError):
        raise ValueError(f"triple must be a Triple, (d, w, r) or a dict, got {triple!r}") from None
    return Triple(d, w, r)


def _criterion_name(criterion) -> str:
    return (
        criterion
        if isinstance(criterion, str)
        else getattr(criterion, "name", type(criterion).__name__)
    )


def _resized_data(data, criterion, size: tuple[int, int]):
    """The data at the reduced size, if the width criterion reads data (in-memory only)."""
    from .criteria import get_criterion
    from .data import DataBundle, resize_batch

    if data is None or not getattr(get_criterion(criterion), "needs_data", False):
        return data
    if not isinstance(data, DataBundle) or tuple(data.input_shape[1:]) == size:
        return data
    splits = {}
    for split in ("train", "val", "test"):
        dataset = getattr(data, split)
        if not isinstance(dataset, TensorDataset):
            return data
        images, *rest = dataset.tensors
        splits[split] = TensorDataset(resize_batch(images, size), *rest)
    return dataclasses.replace(data, **splits, input_shape=(data.input_shape[0], size[0], size[1]))


def _prune_width(
    model: nn.Module,
    w: float,
    target_macs: int | None,
    *,
    base_macs: int,
    small_size: tuple[int, int, int],
    criterion,
    data,
    seed: int,
    tolerance: float,
) -> nn.Module:
    """Width step of :func:`realise` on the depth-pruned ``model`` (modified in place)."""
    from .dims.width import prune_width_to_macs, remove_channels, select_channels

    example = torch.zeros(1, *small_size)
    if target_macs is None:
        if w >= 1.0:
            return model
        removal = select_channels(
            model, w, example_input=example, criterion=criterion, data=data, seed=seed
        )
        return remove_channels(model, removal, example_input=example, inplace=True)
    current = count_macs(model, small_size)
    target = target_macs / base_macs
    if abs(current / base_macs - target) <= tolerance * target:
        return model
    if current < target_macs:
        raise ValueError(
            f"depth and resolution alone already give a MACs ratio of {current / base_macs:.4f}, "
            f"below the target {target:g}; width can only lower it: raise d or r"
        )
    return prune_width_to_macs(
        model,
        target_macs / current,
        input_size=small_size,
        criterion=criterion,
        data=data,
        tolerance=tolerance,
        inplace=True,
        seed=seed,
    )


def _channel_count(model: nn.Module, small_size: tuple[int, int, int]) -> int:
    from .dims.width import channel_groups

    return sum(g.size for g in channel_groups(model, torch.zeros(1, *small_size)))


def realise(
    model: nn.Module,
    triple,
    *,
    input_size: Sequence[int],
    data=None,
    target_flops_ratio: float | None = None,
    criterion="bn_scale",
    gains=None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[ResolutionWrapper, Plan]:
    """Build the model of a (d, w, r) triple: depth, then width, then resolution.

    Parameters
    ----------
    model : torch.nn.Module
        The trained base model (not modified).
    triple : Triple, (d, w, r) or dict
        The coordinates to realise, relative to ``model``.
    input_size : (C, H, W)
        Full-size input; MACs are counted at this size.
    data : DataBundle, optional
        Probe data for block gains (when ``gains`` is omitted and ``d < 1``) and data for
        data-driven width criteria (resized to the reduced resolution when in memory).
    target_flops_ratio : float in (0, 1], optional
        If given, ``w`` is not taken from ``triple``: channels are removed until the
        measured MACs ratio is within ``tolerance`` (relative) of this target.
    criterion : str or Criterion
        Width criterion (see :data:`tridim.criteria.CRITERIA`).
    gains : block gains, optional
        From :func:`tridim.block_gains` (records, their dicts or ``{name: gain}``).
    seed : int
        Seeds the probes and the width criterion.
    tolerance : float
        Relative tolerance on the MACs target (default 1%).

    Returns
    -------
    pruned : ResolutionWrapper
        The pruned network (``pruned.model``) behind its resize (``pruned.size``), always
        wrapped (the wrapper does nothing when ``r`` rounds to the full size); weights are
        those of ``model``, not finetuned. ``pruned.tridim_plan`` holds the plan.
    plan : Plan

    Raises
    ------
    ValueError
        For a bad triple, target or input size; a depth below the model's minimum or a
        model whose depth cannot change; missing gains and data when blocks must go; a
        target that depth and resolution already undercut, or that width cannot reach.

    Notes
    -----
    Depth is rounded to the nearest whole number of blocks (halves up, see
    :func:`tridim.dims.depth.blocks_to_keep`), resolution to the nearest whole pixel
    (:func:`tridim.dims.resolution.reduced_size`). Without a target the measured ratio
    differs from ``triple.cost`` by that rounding and by how the channels removed are
    spread over cheap and expensive layers.
    """
    if isinstance(model, ResolutionWrapper):
        raise TypeError("model is already resolution-wrapped: pass its .model")
    requested = _as_triple(triple)
    size = check_input_size(input_size)
    target = (
        None
        if target_flops_ratio is None
        else check_ratio(target_flops_ratio, "target_flops_ratio")
    )
    tolerance = float(tolerance)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    base_macs = count_macs(model, size)
    pixels = reduced_size(requested.r, size)
    small_size = (size[0], *pixels)

    blocks_total = len(find_blocks(model, input_size=size)) if requested.d < 1 else None
    removed = (
        select_blocks(model, requested.d, gains=gains, data=data, input_size=size, seed=seed)
        if requested.d < 1
        else []
    )
    pruned = remove_blocks(model, removed)
    if blocks_total is None:
        blocks_total = len(find_blocks(pruned, input_size=size))
    if hasattr(pruned, "tridim_width_removal"):
        del pruned.tridim_width_removal  # the plan's removal is relative to this model
    channels_total = _channel_count(pruned, small_size)

    width_data = _resized_data(data, criterion, pixels)
    target_macs = None if target is None else target * base_macs
    pruned = _prune_width(
        pruned,
        requested.w,
        target_macs,
        base_macs=base_macs,
        small_size=small_size,
        criterion=criterion,
        data=width_data,
        seed=seed,
        tolerance=tolerance,
    )
    wrapped = ResolutionWrapper(pruned, pixels, size)
    plan = plan_of(
        model,
        wrapped,
        requested=requested,
        removed_blocks=removed,
        blocks_total=blocks_total,
        channels_total=channels_total,
        base_macs=base_macs,
        target_flops_ratio=target,
        criterion=_criterion_name(criterion),
    )
    if target is not None and abs(plan.macs_ratio - target) > tolerance * target:
        raise ValueError(
            f"realised MACs ratio {plan.macs_ratio:.4f} misses the target "
            f"{target:g} by more than {tolerance:.0%}"
        )
    wrapped.tridim_plan = plan
    return wrapped, plan


def plan_of(
    base_model: nn.Module,
    wrapped: ResolutionWrapper,
    *,
    requested: Triple,
    removed_blocks: Sequence[str],
    blocks_total: int,
    channels_total: int,
    base_macs: int,
    target_flops_ratio: float | None = None,
    criterion: str = "bn_scale",
) -> Plan:
    """The :class:`Plan` of a model cut from ``base_model``, measured on the cut model.

    ``wrapped.model`` carries the cumulative ``tridim_width_removal`` of its width
    pruning (if any); ``channels_total`` counts the prunable channels of the
    depth-pruned base, so ``realised.w`` is the fraction of them kept.
    """
    removal = {k: list(v) for k, v in getattr(wrapped.model, "tridim_width_removal", {}).items()}
    channels_kept = channels_total - sum(len(v) for v in removal.values())
    macs = count_macs(wrapped, wrapped.input_size)
    spec = getattr(base_model, "tridim_spec", None)
    return Plan(
        requested=requested,
        realised=Triple(
            (blocks_total - len(removed_blocks)) / blocks_total if blocks_total else 1.0,
            channels_kept / channels_total if channels_total else 1.0,
            wrapped.r,
        ),
        input_size=tuple(wrapped.input_size),
        removed_blocks=list(removed_blocks),
        blocks_total=blocks_total,
        width_removal=removal,
        channels_kept=channels_kept,
        channels_total=channels_total,
        resolution=tuple(wrapped.size),
        macs=macs,
        base_macs=base_macs,
        macs_ratio=macs / base_macs,
        target_flops_ratio=target_flops_ratio,
        criterion=criterion,
        base_spec=spec.to_dict() if hasattr(spec, "to_dict") else None,
    )


def apply_plan(
    base_model: nn.Module, plan: Plan, *, input_size: Sequence[int] | None = None
) -> ResolutionWrapper:
    """Rebuild a plan's architecture from a fresh copy of its base model.

    Depth removal, then width removal (:func:`tridim.dims.width.remove_channels`), then
    the resolution wrapper. The weights are the base model's: load the pruned model's
    ``state_dict`` afterwards to restore finetuned weights.

    Parameters
    ----------
    base_model : torch.nn.Module
        A model of the same architecture as the one the plan was made from (not
        modified); its weights do not matter.
    plan : Plan
        From :func:`realise` (or :meth:`Plan.from_json`).
    input_size : (C, H, W), optional
        Must equal ``plan.input_size`` if given.

    Returns
    -------
    ResolutionWrapper
        Same architecture (state-dict keys and shapes) as the model :func:`realise`
        returned, with ``tridim_plan`` set.

    Raises
    ------
    ValueError
        If the base model's spec or input size differ from the plan's, or if the rebuilt
        model's MACs differ from the plan's (the plan does not fit this model).
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
    if isinstance(base_model, ResolutionWrapper):
        raise TypeError("base_model is resolution-wrapped: pass its .model")
    if input_size is not None and check_input_size(input_size) != plan.input_size:
        raise ValueError(
            f"input_size {tuple(input_size)} differs from the plan's {plan.input_size}"
        )
    spec = getattr(base_model, "tridim_spec", None)
    if plan.base_spec is not None and hasattr(spec, "to_dict") and spec.to_dict() != plan.base_spec:
        raise ValueError(f"the plan was made for {plan.base_spec}, not {spec.to_dict()}")
    model = remove_blocks(base_model, plan.removed_blocks)
    if hasattr(model, "tridim_width_removal"):
        del model.tridim_width_removal
    small_size = (plan.input_size[0], *plan.resolution)
    if plan.width_removal:
        from .dims.width import remove_channels

        model = remove_channels(
            model, plan.width_removal, example_input=torch.zeros(1, *small_size), inplace=True
        )
    wrapped = ResolutionWrapper(model, plan.resolution, plan.input_size)
    macs = count_macs(wrapped, plan.input_size)
    if macs != plan.macs:
        raise ValueError(
            f"the rebuilt model has {macs} MACs, the plan {plan.macs}: the plan "
            "does not fit this base model"
        )
    wrapped.tridim_plan = plan
    return wrapped
