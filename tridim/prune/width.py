"""Width: dependency-aware filter (channel) pruning.

tridim decides *which* channels go; Torch-Pruning's dependency graph removes them
physically, handling residual adds, concatenations, depthwise convolutions and SE blocks.
Pruning is split into selection and removal so that it can be replayed on a fresh copy of
the architecture:

- :func:`select_channels` (keep a fraction ``w`` of the channels) and
  :func:`select_channels_for_macs` (reach a MACs ratio) rank the channels and return a
  *removal*: a plain dict ``{root layer name: sorted output-channel indices to remove}``,
  one entry per coupled channel group, keyed by the group's root (the first layer, in
  ``named_modules`` order, whose output channels are the group's). A removal refers to
  the channels of the model it was selected on.
- :func:`remove_channels` applies a removal. The same removal applied to a fresh model of
  the same (possibly depth-pruned) architecture gives the same architecture, so a pruned
  model is saved as "base model + removal + weights".
- :func:`compose_removals` expresses a removal selected on an already thinner model
  relative to its full-width architecture, so successive prunings replay in one call.

:func:`prune_width` and :func:`prune_width_to_macs` select and remove in one call and
return only the model; call the ``select_*`` function and :func:`remove_channels` instead
when the removal is needed. The channel groups themselves come from
:mod:`tridim.prune.groups`, the importance criteria from :mod:`tridim.prune.criteria`.

``w`` is the fraction of the prunable channels kept, counted once per coupled group and
ranked globally across layers (Network Slimming). Layers are never emptied (each group
keeps at least ``max(1, ceil(min_keep * size))`` channels) and the classifier's outputs
are never touched (groups that reach the model output are not prunable).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from tridim.cost.macs import count_macs
from tridim.prune.criteria import Criterion, get_criterion
from tridim.prune.groups import ChannelGroup, GroupMember, analyse, layer_geometry, layer_kind
from tridim.search.space import check_input_size, check_ratio

__all__ = [
    "select_channels",
    "select_channels_for_macs",
    "prune_width_to_macs_with_removal",
    "remove_channels",
    "compose_removals",
    "prune_width",
    "prune_width_to_macs",
    "DEFAULT_MIN_KEEP",
]

#: Each group keeps at least this fraction of its channels (and at least one).
DEFAULT_MIN_KEEP = 0.05

#: A removal: ``{root layer name: sorted output-channel indices}``.
Removal = dict[str, list[int]]


# ----------------------------------------------------------------------------------------
# validation (shared with tridim.prune.slimming)


def check_min_keep(min_keep: float) -> float:
    """``min_keep`` as a float in (0, 1], or ValueError."""
    return check_ratio(min_keep, "min_keep")


def check_channel_multiple(channel_multiple: int) -> int:
    """``channel_multiple`` as a positive int, or ValueError."""
    if (
        isinstance(channel_multiple, bool)
        or not isinstance(channel_multiple, int)
        or channel_multiple < 1
    ):
        raise ValueError(
            f"channel_multiple must be a positive integer (1: any count, 8: multiples of 8), "
            f"got {channel_multiple!r}"
        )
    return channel_multiple


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` as a float in (0, 1), or ValueError."""
    tolerance = float(tolerance)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return tolerance


def example_for(input_size: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A seeded random batch of one example of ``input_size`` (global RNG untouched)."""
    size = check_input_size(input_size)
    return torch.randn(1, *size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------
# ranking


@dataclass(frozen=True)
class Ranking:
    """A model's channel groups scored by a criterion, for one selection.

    Attributes
    ----------
    graph : torch_pruning.DependencyGraph
        The dependency graph of the model the ranking was made on.
    groups : list of ChannelGroup
        Its prunable groups.
    scores : list of numpy.ndarray or None
        Per group, one score per channel (None: the criterion cannot score the group).
    candidates : list of (int, tuple of int)
        Removable ``(group index, slots)`` pairs, least important first; each group's
        ``min_keep`` floor of most important slots is left out. A slot is one channel,
        or in a group split in blocks (grouped convolutions) the same position in every
        block, scored by its channels' mean. A candidate holds one slot, or with a
        ``channel_multiple`` above 1 as many as keep the group's slot count a multiple
        of it, scored by its most important slot.
    """

    graph: object
    groups: list[ChannelGroup]
    scores: list
    candidates: list[tuple[int, int]]

    @property
    def scored_total(self) -> int:
        """Channels of the groups the criterion scores."""
        return sum(g.size for g, s in zip(self.groups, self.scores) if s is not None)

    def removal(self, chosen: Iterable[tuple[int, tuple[int, ...]]]) -> Removal:
        """The removal of the chosen ``(group index, slots)`` candidates."""
        return _as_removal(self.groups, chosen)

    def channels_of(self, candidate: tuple[int, tuple[int, ...]]) -> int:
        """How many channels removing one candidate takes out."""
        return self.groups[candidate[0]].blocks * len(candidate[1])


def _as_removal(groups: Sequence[ChannelGroup], chosen) -> Removal:
    removal: Removal = {}
    for gi, slots in chosen:
        for slot in slots:
            removal.setdefault(groups[gi].root, []).extend(groups[gi].slot_channels(slot))
    return {root: sorted(idxs) for root, idxs in removal.items()}


def _score(model, groups, criterion, data, seed):
    scorer = get_criterion(criterion)
    scores = scorer(model, groups, data=data, seed=seed)
    if all(s is None for s in scores):
        raise ValueError(f"criterion {scorer.name!r} cannot score any channel group of this model")
    return scores


def _ranked_candidates(
    groups: Sequence[ChannelGroup], scores, min_keep: float, multiple: int = 1
) -> list[tuple[int, tuple[int, ...]]]:
    """Removable (group, slots) candidates, least important first; floors protected.

    With ``multiple`` above 1 a group's first candidate takes its slot count down to a
    multiple of ``multiple`` and each later one takes ``multiple`` slots, so any prefix
    leaves every group a multiple (a group smaller than ``multiple`` keeps all its slots).
    """
    entries = []
    for gi, (group, values) in enumerate(zip(groups, scores)):
        if values is None:
            continue
        # a slot's channels are values[slot::slots]: average over the blocks
        slot_values = np.asarray(values).reshape(group.blocks, group.slots).mean(axis=0)
        floor = max(1, math.ceil(min_keep * group.slots))
        if multiple > 1:
            floor = min(multiple * math.ceil(floor / multiple), group.slots)
        order = np.argsort(-slot_values, kind="stable")  # most important first
        removable = [int(slot) for slot in order[floor:]][::-1]  # least important first
        first = group.slots % multiple if multiple > 1 else 1
        start = 0
        while start < len(removable):
            size = first if start == 0 and first else (multiple if multiple > 1 else 1)
            chunk = tuple(removable[start : start + size])
            # a chunk goes when its most important slot would: later chunks stay later
            order_key = start if multiple > 1 else chunk[0]
            entries.append((float(slot_values[list(chunk)].max()), gi, order_key, chunk))
            start += size
    entries.sort()
    return [(gi, chunk) for _, gi, _, chunk in entries]


def rank_channels(
    model: nn.Module,
    example_input: torch.Tensor,
    criterion: str | Criterion,
    data,
    ignored_layers,
    seed: int,
    min_keep: float,
    channel_multiple: int = 1,
) -> Ranking:
    """Trace ``model``, score its channel groups and rank the removable channels."""
    graph, groups = analyse(model, example_input, ignored_layers)
    scores = _score(model, groups, criterion, data, seed)
    candidates = _ranked_candidates(groups, scores, min_keep, channel_multiple)
    return Ranking(graph, groups, scores, candidates)


def _keep_fraction(ranking: Ranking, w: float) -> Removal:
    """Remove the least important channels so that a fraction ``w`` stays."""
    total = ranking.scored_total
    wanted = total - int(round(w * total))
    removed = np.cumsum([0] + [ranking.channels_of(c) for c in ranking.candidates])
    count = int(np.argmin(np.abs(removed - wanted)))  # first of the closest prefixes
    return ranking.removal(ranking.candidates[:count])


def select_channels(
    model: nn.Module,
    w: float,
    *,
    example_input: torch.Tensor,
    criterion: str | Criterion = "bn_scale",
    data=None,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    seed: int = 0,
    min_keep: float = DEFAULT_MIN_KEEP,
    channel_multiple: int = 1,
) -> Removal:
    """Choose the channels to remove so that a fraction ``w`` of them is kept.

    Parameters
    ----------
    model : torch.nn.Module
        The model (its architecture and weights are not changed).
    w : float in (0, 1]
        Fraction of the prunable channels to keep, counted once per coupled group over
        the groups the criterion can score, ranked globally across layers.
    example_input : torch.Tensor
        A batch the model accepts, used to trace it.
    criterion : str or Criterion
        A name from :data:`tridim.prune.criteria.CRITERIA` (default ``"bn_scale"``) or an
        instance (e.g. ``get_criterion("taylor", flops_lambda=1e-3)``).
    data : DataBundle or iterable of (images, labels), optional
        Required by data-driven criteria (``taylor``, ``activation_mean``,
        ``activation_std``).
    ignored_layers : iterable of str or nn.Module, optional
        Layers whose channels (in and out) must stay.
    seed : int
        Seeds batch sampling and the ``random`` criterion.
    min_keep : float in (0, 1]
        Each group keeps at least ``max(1, ceil(min_keep * size))`` channels, so the
        kept fraction can exceed ``w`` when ``w`` is very small.
    channel_multiple : int
        Every pruned group keeps a multiple of this many channels (8: what vectorised CPU
        and tensor-core kernels prefer); a group smaller than it is not pruned. 1: any
        count.

    Returns
    -------
    dict
        ``{root layer name: sorted output-channel indices to remove}``, indices of
        ``model``'s channels; groups losing no channel are absent. Apply it with
        :func:`remove_channels`.
    """
    w = check_ratio(w, "w")
    min_keep = check_min_keep(min_keep)
    channel_multiple = check_channel_multiple(channel_multiple)
    ranking = rank_channels(
        model, example_input, criterion, data, ignored_layers, seed, min_keep, channel_multiple
    )
    return _keep_fraction(ranking, w)


# ----------------------------------------------------------------------------------------
# removal


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


def prune_width(
    model: nn.Module,
    w: float,
    *,
    example_input: torch.Tensor,
    criterion: str | Criterion = "bn_scale",
    data=None,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    inplace: bool = False,
    seed: int = 0,
    min_keep: float = DEFAULT_MIN_KEEP,
    channel_multiple: int = 1,
) -> nn.Module:
    """Keep a fraction ``w`` of the prunable channels: :func:`select_channels` + removal.

    Parameters are those of :func:`select_channels`, plus ``inplace`` (modify ``model``
    itself instead of a copy).

    Returns
    -------
    torch.nn.Module
        The physically smaller model. To also get the removal (e.g. to replay it on a
        fresh model), call :func:`select_channels` and then :func:`remove_channels`:
        the result is the same.

    Examples
    --------
    >>> import torch
    >>> from tridim.training.models import build
    >>> model = build("resnet20", num_classes=10, in_channels=1)
    >>> example = torch.randn(1, 1, 16, 16)
    >>> removal = select_channels(model, 0.5, example_input=example, criterion="l1")
    >>> pruned = remove_channels(model, removal, example_input=example)
    >>> direct = prune_width(model, 0.5, example_input=example, criterion="l1")
    >>> fresh = remove_channels(build("resnet20", 10, 1), removal, example_input=example)
    >>> [p.shape for p in fresh.parameters()] == [p.shape for p in direct.parameters()]
    True
    """
    w = check_ratio(w, "w")
    min_keep = check_min_keep(min_keep)
    channel_multiple = check_channel_multiple(channel_multiple)
    target = model if inplace else copy.deepcopy(model)
    ranking = rank_channels(
        target, example_input, criterion, data, ignored_layers, seed, min_keep, channel_multiple
    )
    return apply_removal(target, ranking.graph, ranking.groups, _keep_fraction(ranking, w))


# ----------------------------------------------------------------------------------------
# reaching a MACs target


class _MacsModel:
    """Predicts the conv + linear MACs after removing channels, without pruning.

    Each layer costs ``out * in / groups * kernel * positions``; removing channels of a
    group lowers ``out`` of its producers and ``in`` of its consumers. The prediction is
    checked against :func:`count_macs` on the unpruned model; if they disagree the caller
    measures real pruned copies instead.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], example_input):
        self.geometry = layer_geometry(model, example_input)
        self.layers = {name: model.get_submodule(name) for name in self.geometry}
        self.touches: dict[str, list[tuple[int, bool, np.ndarray]]] = {}
        for gi, group in enumerate(groups):
            for m in group.members:
                if m.name in self.layers:
                    self.touches.setdefault(m.name, []).append((gi, m.out, np.asarray(m.root_idxs)))

    def macs(self, removed: dict[int, np.ndarray] | None = None) -> int:
        """Predicted MACs with ``removed`` ({group index: channels}) taken out."""
        removed = removed or {}
        return sum(self._layer_macs(name, layer, removed) for name, layer in self.layers.items())

    def _layer_macs(self, name: str, layer: nn.Module, removed: dict[int, np.ndarray]) -> int:
        cut_out = cut_in = 0
        for gi, out, roots in self.touches.get(name, []):
            if gi in removed:
                count = int(np.isin(roots, removed[gi]).sum())
                if out:
                    cut_out += count
                else:
                    cut_in += count
        geo = self.geometry[name]
        if isinstance(layer, nn.Linear):
            cout, cin, groups = layer.out_features, layer.in_features, 1
        else:
            cout, cin, groups = layer.out_channels, layer.in_channels, layer.groups
        if groups > 1 and groups == cout == cin:  # depthwise: in follows out
            return (cout - cut_out) * geo["kernel"] * geo["positions"]
        return (cout - cut_out) * ((cin - cut_in) // groups) * geo["kernel"] * geo["positions"]


def _removed_sets(groups: Sequence[ChannelGroup], chosen) -> dict[int, np.ndarray]:
    """{group index: removed channels} of the chosen ``(group index, slots)`` candidates."""
    sets: dict[int, list[int]] = {}
    for gi, slots in chosen:
        for slot in slots:
            sets.setdefault(gi, []).extend(groups[gi].slot_channels(slot))
    return {gi: np.asarray(v) for gi, v in sets.items()}


def _smallest_prefix(ratio_of: Callable[[list], float], candidates: list, target: float) -> int:
    """Bisection: the length of the smallest prefix whose ratio is at most ``target``."""
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if ratio_of(candidates[:mid]) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _walk_past(ratio_of, candidates, lo, best, target, tolerance, max_trials):
    """From prefix ``lo - 1``, add only the later channels that keep the ratio in band."""
    low = target * (1 - tolerance)
    chosen = candidates[: max(lo - 1, 0)]
    for trial, candidate in enumerate(candidates[max(lo - 1, 0) :]):
        if trial >= max_trials:
            break
        trial_ratio = ratio_of(chosen + [candidate])
        if trial_ratio >= low:
            chosen = chosen + [candidate]
        if abs(trial_ratio - target) < best[0]:
            best = (
                abs(trial_ratio - target),
                chosen if trial_ratio >= low else chosen + [candidate],
            )
        if best[0] <= tolerance * target:
            break
    return best


def _search(
    ratio_of: Callable[[list], float],
    candidates: list,
    target: float,
    tolerance: float,
    max_trials: int,
) -> tuple[list, float]:
    """Choose a prefix of the ranked candidates (skipping a few at the end if needed)."""
    high = target * (1 + tolerance)
    if ratio_of(candidates) > high:
        return candidates, ratio_of(candidates)
    lo = _smallest_prefix(ratio_of, candidates, target)
    options = [candidates[:k] for k in (lo, lo - 1) if 0 <= k <= len(candidates)]
    best = min(((abs(ratio_of(o) - target), o) for o in options), key=lambda t: t[0])
    if best[0] <= tolerance * target:
        return best[1], ratio_of(best[1])
    # one channel too many overshoots the band: walk on past it, adding only cheap channels
    best = _walk_past(ratio_of, candidates, lo, best, target, tolerance, max_trials)
    return best[1], ratio_of(best[1])


def choose_for_macs(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    example_input: torch.Tensor,
    candidates: list,
    target: float,
    tolerance: float,
    reference_macs: int,
    input_size: Sequence[int],
) -> tuple[list, float]:
    """Pick candidates reaching ``target`` x reference MACs; analytic, else measured.

    Returns the chosen ``(group index, channel)`` pairs and their MACs ratio.
    """
    predictor = _MacsModel(model, groups, example_input)
    current = count_macs(model, input_size)
    if abs(predictor.macs() - current) <= 1e-3 * current:

        def ratio_of(chosen):
            return predictor.macs(_removed_sets(groups, chosen)) / reference_macs

        trials = 2000
    else:

        def ratio_of(chosen):
            trial = copy.deepcopy(model)
            trial_graph, trial_groups = analyse(trial, example_input)
            apply_removal(trial, trial_graph, trial_groups, _as_removal(groups, chosen))
            return count_macs(trial, input_size) / reference_macs

        trials = 30
    return _search(ratio_of, candidates, target, tolerance, trials)


class WidthUnreachable(ValueError):
    """Width alone cannot land within the tolerance of a MACs target (channels too coarse)."""


def _check_reached(
    ratio: float, target_ratio: float, tolerance: float, min_keep: float, multiple: int = 1
) -> None:
    if abs(ratio - target_ratio) > tolerance * target_ratio:
        steps = f" and channel_multiple={multiple} (channels go {multiple} at a time)"
        raise WidthUnreachable(
            f"could not reach MACs ratio {target_ratio:g} within {tolerance:.0%} by width "
            f"(got {ratio:.4f}); with min_keep={min_keep:g}{steps if multiple > 1 else ''} "
            "the reachable ratios are limited by the channels every layer keeps"
        )


def prune_width_to_macs_with_removal(
    model: nn.Module,
    target_ratio: float,
    *,
    input_size: Sequence[int],
    criterion: str | Criterion = "bn_scale",
    data=None,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    tolerance: float = 0.01,
    seed: int = 0,
    min_keep: float = DEFAULT_MIN_KEEP,
    channel_multiple: int = 1,
) -> tuple[nn.Module, Removal]:
    """Prune a copy of ``model`` to a MACs ratio and say which channels went.

    One ranking, one MACs search, one removal: what :func:`select_channels_for_macs` and
    :func:`prune_width_to_macs` each return half of. Parameters as in
    :func:`select_channels_for_macs`.

    Returns
    -------
    pruned : torch.nn.Module
        The pruned copy (``model`` is not modified).
    removal : dict
        The channels removed, relative to ``model``.

    Raises
    ------
    ValueError
        If the target cannot be reached within the tolerance.
    """
    target_ratio = check_ratio(target_ratio, "target_ratio")
    tolerance = check_tolerance(tolerance)
    min_keep = check_min_keep(min_keep)
    channel_multiple = check_channel_multiple(channel_multiple)
    example = example_for(input_size, seed)
    reference = count_macs(model, input_size)
    target = copy.deepcopy(model)
    ranking = rank_channels(
        target, example, criterion, data, ignored_layers, seed, min_keep, channel_multiple
    )
    chosen, _ = choose_for_macs(
        target,
        ranking.groups,
        example,
        ranking.candidates,
        target_ratio,
        tolerance,
        reference,
        input_size,
    )
    removal = ranking.removal(chosen)
    apply_removal(target, ranking.graph, ranking.groups, removal)
    ratio = count_macs(target, input_size) / reference
    _check_reached(ratio, target_ratio, tolerance, min_keep, channel_multiple)
    return target, removal


def select_channels_for_macs(
    model: nn.Module,
    target_ratio: float,
    *,
    input_size: Sequence[int],
    criterion: str | Criterion = "bn_scale",
    data=None,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    tolerance: float = 0.01,
    seed: int = 0,
    min_keep: float = DEFAULT_MIN_KEEP,
    channel_multiple: int = 1,
) -> Removal:
    """Choose the channels to remove so that the MACs ratio is within ``tolerance`` of a target.

    The channels are ranked once; the number removed (equivalently ``w``) is found by
    bisection on the MACs of the pruned architecture, and if one more channel would
    overshoot the band, later (cheaper) channels of the ranking are tried instead. The
    result is checked by pruning a copy of ``model`` and counting its MACs.

    Parameters
    ----------
    model : torch.nn.Module
        The model (not modified: ranking and the check run on a copy).
    target_ratio : float in (0, 1]
        ``count_macs(pruned) / count_macs(model)`` at ``input_size``.
    input_size : (C, H, W)
        Input size at which MACs are counted (a seeded random example of this size
        traces the model).
    criterion, data, ignored_layers, seed, min_keep
        As in :func:`select_channels`.
    tolerance : float
        Relative tolerance: ``|ratio - target| <= tolerance * target``.

    Returns
    -------
    dict
        The removal, ``{root layer name: sorted output-channel indices of model}``;
        :func:`remove_channels` applies it (the ratio of the result is then within the
        band).

    Raises
    ------
    ValueError
        If the target cannot be reached within the tolerance (for instance below the
        smallest ratio the ``min_keep`` floors allow; the message gives the reachable
        range).
    """
    _, removal = prune_width_to_macs_with_removal(
        model,
        target_ratio,
        input_size=input_size,
        criterion=criterion,
        data=data,
        ignored_layers=ignored_layers,
        tolerance=tolerance,
        seed=seed,
        min_keep=min_keep,
        channel_multiple=channel_multiple,
    )
    return removal


def prune_width_to_macs(
    model: nn.Module,
    target_ratio: float,
    *,
    input_size: Sequence[int],
    criterion: str | Criterion = "bn_scale",
    data=None,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    tolerance: float = 0.01,
    inplace: bool = False,
    seed: int = 0,
    min_keep: float = DEFAULT_MIN_KEEP,
    channel_multiple: int = 1,
) -> nn.Module:
    """Prune width until the measured MACs ratio is within ``tolerance`` of the target.

    Equivalent to :func:`select_channels_for_macs` followed by :func:`remove_channels`;
    call those two instead when the removal is needed.

    Parameters
    ----------
    model : torch.nn.Module
        The model; copied first unless ``inplace``.
    target_ratio : float in (0, 1]
        ``count_macs(pruned) / count_macs(model)`` at ``input_size``.
    input_size : (C, H, W)
        Input size at which MACs are counted.
    criterion, data, ignored_layers, seed, min_keep
        As in :func:`select_channels`.
    tolerance : float
        Relative tolerance: ``|ratio - target| <= tolerance * target``.
    inplace : bool
        Modify ``model`` itself.

    Returns
    -------
    torch.nn.Module
        The pruned model.

    Raises
    ------
    ValueError
        If the target cannot be reached within the tolerance (see
        :func:`select_channels_for_macs`); ``model`` is then unchanged.
    """
    pruned, removal = prune_width_to_macs_with_removal(
        model,
        target_ratio,
        input_size=input_size,
        criterion=criterion,
        data=data,
        ignored_layers=ignored_layers,
        tolerance=tolerance,
        seed=seed,
        min_keep=min_keep,
        channel_multiple=channel_multiple,
    )
    if not inplace:
        return pruned
    graph, groups = analyse(model, example_for(input_size, seed), ignored_layers)
    return apply_removal(model, graph, groups, removal)
