"""Realise a (d, w, r) triple as a real, smaller model, and record how as a Plan.

:func:`realise` applies the three dimensions in the order depth -> width -> resolution:
it removes whole blocks (:mod:`tridim.prune.depth`), removes channels physically
(:mod:`tridim.prune.width`) and wraps the result so it runs at a reduced input size
(:mod:`tridim.prune.resolution`). Depth is rounded to whole blocks and resolution to
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
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from tridim.cost.macs import check_input_size, count_macs
from tridim.prune.depth import (
    block_gains,
    blocks_to_keep,
    find_blocks,
    remove_blocks,
    select_blocks,
)
from tridim.prune.resolution import ResolutionWrapper, check_runs_at, reduced_size
from tridim.prune.width import WidthUnreachable, check_channel_multiple
from tridim.search.plan import Plan
from tridim.search.space import Triple, as_triple, check_ratio
from tridim.training.models import spec_of

__all__ = ["realise", "apply_plan", "plan_of", "count_channels"]

DEFAULT_TOLERANCE = 0.01
#: The MACs tolerance when channels go several at a time (``channel_multiple`` > 1).
COARSE_TOLERANCE = 0.03


def _criterion_name(criterion) -> str:
    return (
        criterion
        if isinstance(criterion, str)
        else getattr(criterion, "name", type(criterion).__name__)
    )


def _resized_data(data, criterion, size: tuple[int, int]):
    """The data at the reduced size, if the width criterion reads data (in-memory only)."""
    from tridim.prune.criteria import get_criterion
    from tridim.training.data import DataBundle, resize_batch

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


def count_channels(model: nn.Module, input_size: Sequence[int]) -> int:
    """Prunable channels of ``model`` at ``input_size``, counted once per coupled group."""
    from tridim.prune.groups import channel_groups

    return sum(g.size for g in channel_groups(model, torch.zeros(1, *input_size)))


def _cut_depth(model: nn.Module, d: float, *, gains, data, input_size, seed: int):
    """Remove the blocks of least gain: ``(shallower copy, removed names, blocks in base)``."""
    if d >= 1:
        return remove_blocks(model, []), [], len(find_blocks(model, input_size=input_size))
    blocks_total = len(find_blocks(model, input_size=input_size))
    removed = select_blocks(model, d, gains=gains, data=data, input_size=input_size, seed=seed)
    return remove_blocks(model, removed), removed, blocks_total


def _round_for_budget(model, requested: Triple, size, target_macs, gains, tolerance: float):
    """Depth (as a ratio of whole blocks) and input side (pixels) to cut the model to.

    Both round to the nearest whole block and pixel. With a MACs budget, width must then
    remove what is left above it, so depth and resolution must not undercut the budget on
    their own: if the nearest rounding does, the next block and the next pixel up are
    tried, and the cheapest combination still at or above the budget is taken.
    """
    pixels = reduced_size(requested.r, size)
    if target_macs is None:
        return requested.d, pixels
    blocks = find_blocks(model, input_size=size)
    keep = blocks_to_keep(requested.d, blocks) if blocks and requested.d < 1 else len(blocks)
    options = []
    for more_blocks, more_pixels in ((0, 0), (0, 1), (1, 0), (1, 1)):
        kept = min(len(blocks), keep + more_blocks)
        d = kept / len(blocks) if blocks else 1.0
        side = (min(size[1], pixels[0] + more_pixels), min(size[2], pixels[1] + more_pixels))
        names = select_blocks(model, d, gains=gains, input_size=size) if d < 1 else []
        macs = count_macs(remove_blocks(model, names), (size[0], *side))
        if (more_blocks, more_pixels) == (0, 0) and macs >= target_macs * (1 - tolerance):
            return requested.d, pixels
        if macs >= target_macs * (1 - tolerance):
            options.append((macs, d, side))
    if not options:  # width cannot help: _cut_width says so
        return requested.d, pixels
    _, d, side = min(options)
    return d, side


def _sides_to_try(pixels, size, budget: bool):
    """The input size to realise at, then (with a MACs budget) the next pixels up and
    down, for when width alone cannot land within the tolerance at the first."""
    yield pixels
    if not budget:
        return
    for offset in (1, -1, 2, -2):
        side = tuple(min(full, max(1, p + offset)) for p, full in zip(pixels, size[1:]))
        if side != pixels:
            yield side


def _cut_width(
    model: nn.Module,
    w: float,
    target_macs: float | None,
    *,
    base_macs: int,
    small_size: tuple[int, int, int],
    criterion,
    data,
    seed: int,
    tolerance: float,
    channel_multiple: int = 1,
) -> tuple[nn.Module, dict[str, list[int]]]:
    """Width step of :func:`realise` on the depth-pruned ``model`` (a copy it may modify).

    Without ``target_macs`` a fraction ``w`` of the channels is kept; with it (absolute
    MACs, counted at the full input size), channels go until the measured MACs are within
    ``tolerance`` of it. Returns the thinner model and the removal applied.
    """
    from tridim.prune.width import (
        prune_width_to_macs_with_removal,
        remove_channels,
        select_channels,
    )

    example = torch.zeros(1, *small_size)
    if target_macs is None:
        if w >= 1.0:
            return model, {}
        removal = select_channels(
            model,
            w,
            example_input=example,
            criterion=criterion,
            data=data,
            seed=seed,
            channel_multiple=channel_multiple,
        )
    else:
        current_macs = count_macs(model, small_size)
        if abs(current_macs - target_macs) <= tolerance * target_macs:
            return model, {}
        if current_macs < target_macs:
            raise ValueError(
                f"depth and resolution alone already give a MACs ratio of "
                f"{current_macs / base_macs:.4f}, below the target "
                f"{target_macs / base_macs:g}; width can only lower it: raise d or r"
            )
        return prune_width_to_macs_with_removal(
            model,
            target_macs / current_macs,
            input_size=small_size,
            criterion=criterion,
            data=data,
            tolerance=tolerance,
            seed=seed,
            channel_multiple=channel_multiple,
        )
    return remove_channels(model, removal, example_input=example, inplace=True), removal


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
    tolerance: float | None = None,
    channel_multiple: int = 1,
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
        measured MACs ratio (of ``model``'s MACs) is within ``tolerance`` (relative) of it.
    criterion : str or Criterion
        Width criterion (see :data:`tridim.prune.criteria.CRITERIA`).
    gains : block gains, optional
        From :func:`tridim.block_gains` (records, their dicts or ``{name: gain}``).
    seed : int
        Seeds the probes and the width criterion.
    tolerance : float, optional
        Relative tolerance on the MACs target (default 1%, or 3% with a
        ``channel_multiple`` above 1: channels then go several at a time).
    channel_multiple : int
        Every pruned channel group keeps a multiple of this many channels (8: the counts
        vectorised kernels prefer; see :func:`tridim.prune.width.select_channels`).

    Returns
    -------
    pruned : ResolutionWrapper
        The pruned network (``pruned.model``) behind its resize (``pruned.size``), always
        wrapped (the wrapper does nothing when ``r`` rounds to the full size); weights are
        those of ``model``, not finetuned.
    plan : Plan
        How ``pruned`` was cut from ``model``: save it with the weights
        (:func:`tridim.save`) to rebuild the architecture later (:func:`apply_plan`).

    Raises
    ------
    ValueError
        For a bad triple, target or input size; a depth below the model's minimum or a
        model whose depth cannot change; missing gains and data when blocks must go; a
        target that depth and resolution already undercut, or that width cannot reach.

    Notes
    -----
    Depth is rounded to the nearest whole number of blocks (halves up, see
    :func:`tridim.prune.depth.blocks_to_keep`), resolution to the nearest whole pixel
    (:func:`tridim.prune.resolution.reduced_size`). Without a target the measured ratio
    differs from ``triple.cost`` by that rounding and by how the channels removed are
    spread over cheap and expensive layers.
    """
    requested, size, target, tolerance = _checked_arguments(
        model, triple, input_size, target_flops_ratio, tolerance, channel_multiple
    )
    base_macs = count_macs(model, size)
    target_macs = None if target is None else target * base_macs
    if requested.d < 1 and gains is None and data is not None:
        gains = block_gains(model, data, seed=seed)  # once, for every rounding tried
    nearest = reduced_size(requested.r, size)
    if nearest != size[1:]:
        check_runs_at(model, (size[0], *nearest))
    d, pixels = _round_for_budget(model, requested, size, target_macs, gains, tolerance)
    shallow, removed, blocks_total = _cut_depth(
        model, d, gains=gains, data=data, input_size=size, seed=seed
    )
    tried = []
    for side in _sides_to_try(pixels, size, target_macs is not None):
        tried.append("x".join(map(str, side)))
        try:  # a small model's channels may be too coarse for the budget at one size
            thin, removal = _cut_width(
                copy.deepcopy(shallow),
                requested.w,
                target_macs,
                base_macs=base_macs,
                small_size=(size[0], *side),
                criterion=criterion,
                data=_resized_data(data, criterion, side),
                seed=seed,
                tolerance=tolerance,
                channel_multiple=channel_multiple,
            )
            pixels = side
            break
        except WidthUnreachable as error:
            unreachable = error
    else:
        raise WidthUnreachable(
            f"{unreachable} at every input size tried ({', '.join(tried)}): the model's "
            "channels are too coarse for this target; loosen tolerance or change the target"
        ) from unreachable
    channels_total = count_channels(shallow, (size[0], *pixels))
    wrapped = ResolutionWrapper(thin, pixels, size)
    plan = plan_of(
        model,
        wrapped,
        requested=requested,
        removed_blocks=removed,
        width_removal=removal,
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
    return wrapped, plan


def _checked_arguments(model, triple, input_size, target_flops_ratio, tolerance, multiple):
    coarse = check_channel_multiple(multiple) > 1  # channels go several at a time
    if tolerance is None:
        tolerance = COARSE_TOLERANCE if coarse else DEFAULT_TOLERANCE
    if isinstance(model, ResolutionWrapper):
        raise TypeError("model is already resolution-wrapped: pass its .model")
    target = None
    if target_flops_ratio is not None:
        target = check_ratio(target_flops_ratio, "target_flops_ratio")
    tolerance = float(tolerance)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return as_triple(triple), check_input_size(input_size), target, tolerance


def plan_of(
    base_model: nn.Module,
    wrapped: ResolutionWrapper,
    *,
    requested: Triple,
    removed_blocks: Sequence[str],
    width_removal: Mapping[str, Sequence[int]],
    blocks_total: int,
    channels_total: int,
    base_macs: int,
    target_flops_ratio: float | None = None,
    criterion: str = "bn_scale",
) -> Plan:
    """The :class:`Plan` of a model cut from ``base_model``, measured on the cut model.

    ``width_removal`` is the removal relative to the depth-pruned base (cumulative, see
    :func:`tridim.prune.width.compose_removals`); ``channels_total`` counts the prunable
    channels of the depth-pruned base, so ``realised.w`` is the fraction of them kept.
    """
    removal = {k: sorted(int(i) for i in v) for k, v in width_removal.items()}
    channels_kept = channels_total - sum(len(v) for v in removal.values())
    macs = count_macs(wrapped, wrapped.input_size)
    spec = spec_of(base_model)
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
        base_spec=spec.to_dict() if spec is not None else None,
    )


def apply_plan(
    base_model: nn.Module, plan: Plan, *, input_size: Sequence[int] | None = None
) -> ResolutionWrapper:
    """Rebuild a plan's architecture from a fresh copy of its base model.

    Depth removal, then width removal (:func:`tridim.prune.width.remove_channels`), then
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
        returned.

    Raises
    ------
    ValueError
        If the base model's spec or input size differ from the plan's, or if the rebuilt
        model's MACs differ from the plan's (the plan does not fit this model).
    """
    _check_plan_fits(base_model, plan, input_size)
    model = remove_blocks(base_model, plan.removed_blocks)
    if plan.width_removal:
        from tridim.prune.width import remove_channels

        example = torch.zeros(1, plan.input_size[0], *plan.resolution)
        model = remove_channels(model, plan.width_removal, example_input=example, inplace=True)
    wrapped = ResolutionWrapper(model, plan.resolution, plan.input_size)
    macs = count_macs(wrapped, plan.input_size)
    if macs != plan.macs:
        raise ValueError(
            f"the rebuilt model has {macs} MACs, the plan {plan.macs}: the plan "
            "does not fit this base model"
        )
    return wrapped


def _check_plan_fits(base_model: nn.Module, plan: Plan, input_size) -> None:
    if not isinstance(plan, Plan):
        raise TypeError(f"plan must be a Plan, got {type(plan).__name__}")
    if isinstance(base_model, ResolutionWrapper):
        raise TypeError("base_model is resolution-wrapped: pass its .model")
    if input_size is not None and check_input_size(input_size) != plan.input_size:
        raise ValueError(
            f"input_size {tuple(input_size)} differs from the plan's {plan.input_size}"
        )
    spec = spec_of(base_model)
    if plan.base_spec is not None and spec is not None and spec.to_dict() != plan.base_spec:
        raise ValueError(f"the plan was made for {plan.base_spec}, not {spec.to_dict()}")
