"""Removing channels: check a removal against a model's channel groups and apply it.

A *removal* is a plain dict ``{root layer name: sorted output-channel indices}``, one
entry per coupled channel group (see :mod:`tridim.prune.groups`). :func:`apply_removal`
checks it and has Torch-Pruning's dependency graph remove the channels and everything
coupled to them; :func:`remove_channels` does so on a freshly traced model (to replay a
pruning on a fresh copy of the architecture); :func:`compose_removals` expresses a
removal chosen on an already thinner model relative to its full-width architecture.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn

from tridim.prune.groups import ChannelGroup, GroupMember, analyse, layer_kind

__all__ = ["Removal", "apply_removal", "remove_channels", "compose_removals"]

#: A removal: ``{root layer name: sorted output-channel indices}``.
Removal = dict[str, list[int]]


def _producers(groups: Sequence[ChannelGroup]) -> dict[str, tuple[int, GroupMember]]:
    """Layer name -> (group index, member) for every producer of every group."""
    producer_of: dict[str, tuple[int, GroupMember]] = {}
    for gi, group in enumerate(groups):
        for member in group.producers:
            producer_of.setdefault(member.name, (gi, member))
    return producer_of


def _checked_indices(name: str, member: GroupMember, idxs) -> list[int]:
    """Sorted unique output-channel indices of ``name``; in range and not all of them."""
    try:
        idxs = sorted({int(i) for i in idxs})
    except (TypeError, ValueError):
        raise ValueError(f"channel indices for {name!r} must be integers") from None
    width = len(member.idxs)
    bad = [i for i in idxs if not 0 <= i < width]
    if bad:
        raise ValueError(
            f"channel indices {bad} out of range for {name!r} ({width} output channels)"
        )
    if len(idxs) >= width:
        raise ValueError(f"cannot remove all {width} channels of {name!r}")
    return idxs


def _validate_removal(groups: Sequence[ChannelGroup], removal) -> list[tuple[int, list[int]]]:
    """Check names and indices; return (group index, root indices) per entry."""
    if not isinstance(removal, dict):
        raise TypeError("removal must be a dict {layer name: [channel indices]}")
    producer_of = _producers(groups)
    plan, seen = [], {}
    for name, idxs in removal.items():
        if name not in producer_of:
            known = ", ".join(g.root for g in groups)
            raise ValueError(
                f"cannot remove channels of {name!r}: it is not the root of a prunable "
                f"channel group of this model (group roots: {known})"
            )
        gi, member = producer_of[name]
        if gi in seen:
            raise ValueError(f"{name!r} and {seen[gi]!r} are the same channel group")
        seen[gi] = name
        idxs = _checked_indices(name, member, idxs)
        if idxs:
            mapping = dict(zip(member.idxs, member.root_idxs))
            roots = sorted(mapping[i] for i in idxs)
            _check_whole_slots(name, groups[gi], roots)
            plan.append((gi, roots))
    return plan


def _check_whole_slots(name: str, group: ChannelGroup, roots: list[int]) -> None:
    """A group split in blocks loses the same positions from every block."""
    if group.blocks == 1:
        return
    whole = sorted({c for r in roots for c in group.slot_channels(r % group.slots)})
    if whole != roots:
        raise ValueError(
            f"channels of {name!r} feed a grouped layer ({group.blocks} groups of "
            f"{group.slots} channels): remove the same positions from every group, e.g. "
            f"{list(group.slot_channels(roots[0] % group.slots))}"
        )


def apply_removal(
    model: nn.Module, graph, groups: Sequence[ChannelGroup], removal: Removal
) -> nn.Module:
    """Validate ``removal`` against ``groups`` and remove the channels from ``model``.

    ``graph`` and ``groups`` are those :func:`~tridim.prune.groups.analyse` gave for
    ``model`` itself; ``model`` is modified in place and returned.
    """
    plan = _validate_removal(groups, removal)
    for gi, root_idxs in plan:
        module = model.get_submodule(groups[gi].root)
        pruner = graph.get_pruner_of_module(module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph.get_pruning_group(module, pruner.prune_out_channels, root_idxs).prune()
    return model


def remove_channels(
    model: nn.Module,
    removal: Removal,
    *,
    example_input: torch.Tensor,
    inplace: bool = False,
) -> nn.Module:
    """Physically remove output channels (and everything coupled to them).

    Parameters
    ----------
    model : torch.nn.Module
        The model; copied first unless ``inplace``.
    removal : dict
        ``{layer name: output-channel indices of model}``, as returned by
        :func:`select_channels` or :func:`select_channels_for_macs` on ``model`` (or on
        a model of the same architecture, to replay a pruning on a fresh model; see
        :func:`compose_removals` for successive prunings).
    example_input : torch.Tensor
        A batch the model accepts, used to trace it.
    inplace : bool
        Modify ``model`` itself.

    Returns
    -------
    torch.nn.Module
        The pruned model.

    Raises
    ------
    ValueError
        For an unknown layer name, a name that is not a prunable group's producer (e.g.
        the classifier), two names of the same group, an out-of-range index, or a
        removal that would empty a layer.
    """
    target = model if inplace else copy.deepcopy(model)
    graph, groups = analyse(target, example_input)
    return apply_removal(target, graph, groups, removal)


def compose_removals(model: nn.Module, previous: Removal | None, new: Removal) -> Removal:
    """Express ``new`` (indices of ``model``) relative to the full-width architecture.

    Parameters
    ----------
    model : torch.nn.Module
        The model ``new`` refers to, *before* ``new`` is applied; ``previous`` is the
        removal that produced it from its full-width version.
    previous, new : dict
        Removals as returned by :func:`select_channels`.

    Returns
    -------
    dict
        A removal that turns the full-width model into the result of both; keys of
        layers no longer in ``model`` (e.g. removed by depth pruning) are dropped.
    """
    present = {name for name, m in model.named_modules() if layer_kind(m) in ("conv", "linear")}
    result = {k: list(v) for k, v in (previous or {}).items() if k in present}
    for name, idxs in new.items():
        before = result.get(name, [])
        width = _out_channels(model.get_submodule(name)) + len(before)
        removed = set(before)
        kept = [i for i in range(width) if i not in removed]
        result[name] = sorted(removed | {kept[i] for i in idxs})
    return {k: v for k, v in result.items() if v}


def _out_channels(module: nn.Module) -> int:
    return int(module.out_channels if hasattr(module, "out_channels") else module.out_features)
