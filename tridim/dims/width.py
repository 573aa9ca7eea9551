"""Width: dependency-aware filter (channel) pruning.

tridim decides *which* channels go; Torch-Pruning's dependency graph removes them
physically, handling residual adds, concatenations, depthwise convolutions and SE blocks.
Pruning is split in two so that it can be replayed on a fresh copy of the architecture:

- :func:`select_channels` ranks the channels and returns a *removal*: a plain dict
  ``{root layer name: sorted output-channel indices to remove}``, one entry per coupled
  channel group, keyed by the group's root (the first layer, in ``named_modules`` order,
  whose output channels are the group's).
- :func:`remove_channels` applies a removal. The same removal applied to a fresh model of
  the same (possibly depth-pruned) architecture gives the same architecture, so a pruned
  model is saved as "base model + removal + weights".

Every pruned model carries ``model.tridim_width_removal``: the cumulative removal
relative to the full-width architecture (successive prunings are composed), ready to be
replayed in one call on a fresh model.

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

import numpy as np
import torch
import torch.nn as nn

from ..criteria import ChannelGroup, Criterion, GroupMember, _layer_geometry, get_criterion
from ..measure import check_input_size, count_macs
from ..space import check_ratio

__all__ = [
    "channel_groups",
    "select_channels",
    "remove_channels",
    "prune_width",
    "prune_width_to_macs",
    "prune_iteratively",
    "bn_l1_penalty",
    "sparsity_strength",
    "compose_removals",
    "DEFAULT_MIN_KEEP",
]

#: Each group keeps at least this fraction of its channels (and at least one).
DEFAULT_MIN_KEEP = 0.05

_LAYER_KINDS = (
    (nn.modules.conv._ConvNd, "conv"),
    (nn.Linear, "linear"),
    (nn.modules.batchnorm._BatchNorm, "bn"),
)


# ----------------------------------------------------------------------------------------
# dependency graph -> channel groups


def _tp():
    import torch_pruning as tp

    return tp


def _kind(module) -> str:
    for cls, kind in _LAYER_KINDS:
        if isinstance(module, cls):
            return kind
    return "other"


def _ignored_names(model: nn.Module, ignored_layers) -> set[str]:
    if ignored_layers is None:
        return set()
    if isinstance(ignored_layers, (str, nn.Module)):
        ignored_layers = [ignored_layers]
    by_module = {module: name for name, module in model.named_modules()}
    names = set()
    for layer in ignored_layers:
        if isinstance(layer, nn.Module):
            if layer not in by_module:
                raise ValueError(f"ignored layer {type(layer).__name__} is not part of the model")
            names.add(by_module[layer])
        elif isinstance(layer, str):
            try:
                model.get_submodule(layer)
            except AttributeError:
                raise ValueError(f"ignored layer {layer!r} is not a module of the model") from None
            names.add(layer)
        else:
            raise TypeError(f"ignored_layers must hold module names or modules, got {layer!r}")
    # ignoring a container ignores everything inside it
    return (
        {n for n, _ in model.named_modules() if any(n == i or n.startswith(i + ".") for i in names)}
        if names
        else names
    )


def _check_supported(model: nn.Module, ignored: set[str]) -> None:
    tp = _tp()
    handled = set(tp.pruner.function.PrunerBox) - {tp.ops.OPTYPE.PARAMETER}
    for name, module in model.named_modules():
        if name in ignored or not list(module.parameters(recurse=False)):
            continue
        if tp.ops.module2type(module) not in handled:
            raise ValueError(
                f"layer {name!r} ({type(module).__name__}) holds parameters that the "
                "dependency graph cannot prune; pass ignored_layers=[{name!r}] to leave the "
                "channels around it untouched".replace("{name!r}", repr(name))
            )


def _build_graph(model: nn.Module, example_input: torch.Tensor):
    tp = _tp()
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input must be a tensor batch, e.g. torch.randn(1, C, H, W)")
    was_training = model.training
    model.eval()  # tracing runs a forward pass: never update BN statistics
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
    finally:
        model.train(was_training)


def _analyse(model: nn.Module, example_input: torch.Tensor, ignored_layers=None):
    """Build the dependency graph and the prunable channel groups, in module order."""
    tp = _tp()
    ignored = _ignored_names(model, ignored_layers)
    _check_supported(model, ignored)
    graph = _build_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    owners = {
        p: name.rsplit(".", 1)[0] if "." in name else "" for name, p in model.named_parameters()
    }
    order = {name: i for i, name in enumerate(names.values())}
    groups = []
    root_types = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw_groups = list(graph.get_all_groups(root_module_types=root_types))
    for raw in raw_groups:
        group = _convert_group(graph, raw, names, owners, order)
        if group is not None and not any(m.name in ignored for m in group.members):
            groups.append(group)
    groups.sort(key=lambda g: order[g.root])
    return graph, groups


def _convert_group(graph, raw, names, owners, order) -> ChannelGroup | None:
    tp = _tp()
    merged: dict[tuple[str, bool], dict[int, int]] = {}
    kinds: dict[str, tuple[str, bool]] = {}
    for item in raw:
        node = item.dep.target
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        if out and not node.outputs and node.type != tp.ops.OPTYPE.PARAMETER:
            return None  # reaches the model output: the classifier's outputs stay
        module = node.module
        if isinstance(module, nn.Parameter):
            name = owners.get(module)
        else:
            name = names.get(module)
        if name is None:
            continue  # functional ops (add, cat, reshape) have no weights
        depthwise = node.type == tp.ops.OPTYPE.DEPTHWISE_CONV
        if depthwise:
            out = True
        kinds[name] = (_kind(module), depthwise)
        mapping = merged.setdefault((name, out), {})
        for idx, root in zip(item.idxs, item.root_idxs):
            mapping.setdefault(int(idx), int(root))
    size = len(raw[0].idxs)
    members = tuple(
        GroupMember(
            name, kinds[name][0], out, tuple(mapping), tuple(mapping.values()), kinds[name][1]
        )
        for (name, out), mapping in merged.items()
    )
    producers = [
        m for m in members if m.out and m.kind in ("conv", "linear") and m.idxs == m.root_idxs
    ]
    if not producers:
        return None
    root = min(producers, key=lambda m: order[m.name]).name
    return ChannelGroup(root, size, members)


def channel_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    ignored_layers: Iterable[str | nn.Module] | None = None,
) -> list[ChannelGroup]:
    """The prunable coupled channel groups of a model, in module order.

    Parameters
    ----------
    model : torch.nn.Module
        The model (traced once in eval mode; its mode is restored).
    example_input : torch.Tensor
        A batch the model accepts, e.g. ``torch.randn(1, C, H, W)``.
    ignored_layers : iterable of str or nn.Module, optional
        Layers whose channels must stay: every group touching them is left out.

    Returns
    -------
    list of ChannelGroup
        Groups reaching the model output (the classifier's outputs) are not included.

    Raises
    ------
    ValueError
        If a layer holds parameters the dependency graph cannot prune (the message names
        it); pass it in ``ignored_layers`` to prune around it.
    """
    return _analyse(model, example_input, ignored_layers)[1]


# ----------------------------------------------------------------------------------------
# selection


def _check_min_keep(min_keep: float) -> float:
    return check_ratio(min_keep, "min_keep")


def _ranked_candidates(groups: Sequence[ChannelGroup], scores, min_keep: float):
    """Removable (group, channel) pairs, least important first; floors protected."""
    entries = []
    for gi, (group, values) in enumerate(zip(groups, scores)):
        if values is None:
            continue
        floor = max(1, math.ceil(min_keep * group.size))
        order = np.argsort(-values, kind="stable")  # most important first
        for channel in order[floor:]:
            entries.append((float(values[channel]), gi, int(channel)))
    entries.sort()
    return [(gi, channel) for _, gi, channel in entries]


def _scored_total(groups: Sequence[ChannelGroup], scores) -> int:
    return sum(g.size for g, s in zip(groups, scores) if s is not None)


def _as_removal(groups: Sequence[ChannelGroup], chosen) -> dict[str, list[int]]:
    removal: dict[str, list[int]] = {}
    for gi, channel in chosen:
        removal.setdefault(groups[gi].root, []).append(channel)
    return {root: sorted(idxs) for root, idxs in removal.items()}


def _score(model, groups, criterion, data, seed):
    scorer = get_criterion(criterion)
    scores = scorer(model, groups, data=data, seed=seed)
    if all(s is None for s in scores):
        raise ValueError(f"criterion {scorer.name!r} cannot score any channel group of this model")
    return scores


def _select(model, groups, w, criterion, data, seed, min_keep):
    scores = _score(model, groups, criterion, data, seed)
    candidates = _ranked_candidates(groups, scores, min_keep)
    total = _scored_total(groups, scores)
    count = min(total - int(round(w * total)), len(candidates))
    return _as_removal(groups, candidates[:count])


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
) -> dict[str, list[int]]:
    """Choose the channels to remove so that a fraction ``w`` of them is kept.

    Parameters
    ----------
    model : torch.nn.Module
        The model (unchanged).
    w : float in (0, 1]
        Fraction of the prunable channels to keep, counted once per coupled group over
        the groups the criterion can score, ranked globally across layers.
    example_input : torch.Tensor
        A batch the model accepts, used to trace it.
    criterion : str or Criterion
        A name from :data:`tridim.criteria.CRITERIA` (default ``"bn_scale"``) or an
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

    Returns
    -------
    dict
        ``{root layer name: sorted output-channel indices to remove}``; groups losing no
        channel are absent.
    """
    w = check_ratio(w, "w")
    min_keep = _check_min_keep(min_keep)
    _, groups = _analyse(model, example_input, ignored_layers)
    return _select(model, groups, w, criterion, data, seed, min_keep)


# ----------------------------------------------------------------------------------------
# removal


def _validate_removal(model, groups, removal) -> list[tuple[int, list[int]]]:
    """Check names and indices; return (group index, root indices) per entry."""
    if not isinstance(removal, dict):
        raise TypeError("removal must be a dict {layer name: [channel indices]}")
    producer_of: dict[str, tuple[int, GroupMember]] = {}
    for gi, group in enumerate(groups):
        for member in group.producers:
            producer_of.setdefault(member.name, (gi, member))
    plan, seen = [], {}
    for name, idxs in removal.items():
        if name not in producer_of:
            known = ", ".join(g.root for g in groups)
            raise ValueError(
                f"cannot remove channels of {name!r}: it is not the root of a prunable "
                f"channel group of this model (group roots: {known})"
            )
        gi, member = producer_of[name]
        group = groups[gi]
        if gi in seen:
            raise ValueError(f"{name!r} and {seen[gi]!r} are the same channel group")
        seen[gi] = name
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
        if idxs:
            mapping = dict(zip(member.idxs, member.root_idxs))
            plan.append((gi, sorted(mapping[i] for i in idxs)))
    return plan


def _apply(model, graph, groups, plan) -> dict[str, list[int]]:
    for gi, root_idxs in plan:
        module = model.get_submodule(groups[gi].root)
        pruner = graph.get_pruner_of_module(module)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph.get_pruning_group(module, pruner.prune_out_channels, root_idxs).prune()
    return {groups[gi].root: idxs for gi, idxs in plan}


def compose_removals(
    model: nn.Module, previous: dict[str, list[int]] | None, new: dict[str, list[int]]
) -> dict[str, list[int]]:
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
    present = {name for name, m in model.named_modules() if _kind(m) in ("conv", "linear")}
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


def _remove(model, graph, groups, removal) -> nn.Module:
    plan = _validate_removal(model, groups, removal)
    previous = getattr(model, "tridim_width_removal", None)
    applied = {groups[gi].root: idxs for gi, idxs in plan}
    composed = compose_removals(model, previous, applied)
    _apply(model, graph, groups, plan)
    model.tridim_width_removal = composed
    return model


def remove_channels(
    model: nn.Module,
    removal: dict[str, list[int]],
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
        ``{layer name: output-channel indices}`` as returned by :func:`select_channels`
        (or a previous model's ``tridim_width_removal``, to replay it on a fresh model).
    example_input : torch.Tensor
        A batch the model accepts, used to trace it.
    inplace : bool
        Modify ``model`` itself.

    Returns
    -------
    torch.nn.Module
        The pruned model, with ``tridim_width_removal`` holding the cumulative removal
        relative to the full-width architecture.

    Raises
    ------
    ValueError
        For an unknown layer name, a name that is not a prunable group's producer (e.g.
        the classifier), two names of the same group, an out-of-range index, or a
        removal that would empty a layer.
    """
    target = model if inplace else copy.deepcopy(model)
    graph, groups = _analyse(target, example_input)
    return _remove(target, graph, groups, removal)


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
) -> nn.Module:
    """Keep a fraction ``w`` of the prunable channels: :func:`select_channels` + removal.

    Parameters are those of :func:`select_channels`, plus ``inplace`` (modify ``model``
    itself instead of a copy).

    Returns
    -------
    torch.nn.Module
        The physically smaller model. ``model.tridim_width_removal`` holds the removal
        (cumulative, relative to the full-width architecture) for replay with
        :func:`remove_channels`.

    Examples
    --------
    >>> import torch
    >>> from tridim.models import build
    >>> model = build("resnet20", num_classes=10, in_channels=1)
    >>> pruned = prune_width(model, 0.5, example_input=torch.randn(1, 1, 16, 16),
    ...                      criterion="l1")
    >>> fresh = remove_channels(build("resnet20", 10, 1), pruned.tridim_width_removal,
    ...                         example_input=torch.randn(1, 1, 16, 16))
    >>> [p.shape for p in fresh.parameters()] == [p.shape for p in pruned.parameters()]
    True
    """
    w = check_ratio(w, "w")
    min_keep = _check_min_keep(min_keep)
    target = model if inplace else copy.deepcopy(model)
    graph, groups = _analyse(target, example_input, ignored_layers)
    removal = _select(target, groups, w, criterion, data, seed, min_keep)
    return _remove(target, graph, groups, removal)


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
        self.geometry = _layer_geometry(model, example_input)
        self.layers = {name: model.get_submodule(name) for name in self.geometry}
        self.touches: dict[str, list[tuple[int, bool, np.ndarray]]] = {}
        for gi, group in enumerate(groups):
            for m in group.members:
                if m.name in self.layers:
                    self.touches.setdefault(m.name, []).append((gi, m.out, np.asarray(m.root_idxs)))

    def macs(self, removed: dict[int, np.ndarray] | None = None) -> int:
        removed = removed or {}
        total = 0
        for name, layer in self.layers.items():
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
                total += (cout - cut_out) * geo["kernel"] * geo["positions"]
            else:
                total += (
                    (cout - cut_out) * ((cin - cut_in) // groups) * geo["kernel"] * geo["positions"]
                )
        return total


def _removed_sets(chosen) -> dict[int, np.ndarray]:
    sets: dict[int, list[int]] = {}
    for gi, channel in chosen:
        sets.setdefault(gi, []).append(channel)
    return {gi: np.asarray(v) for gi, v in sets.items()}


def _search(
    ratio_of: Callable[[list], float],
    candidates: list,
    target: float,
    tolerance: float,
    max_trials: int,
) -> tuple[list, float]:
    """Choose a prefix of the ranked candidates (skipping a few at the end if needed)."""
    high, low = target * (1 + tolerance), target * (1 - tolerance)
    if ratio_of(candidates) > high:
        return candidates, ratio_of(candidates)
    lo, hi = 0, len(candidates)
    while lo < hi:  # smallest prefix with ratio <= target
        mid = (lo + hi) // 2
        if ratio_of(candidates[:mid]) <= target:
            hi = mid
        else:
            lo = mid + 1
    options = [candidates[:k] for k in (lo, lo - 1) if 0 <= k <= len(candidates)]
    best = min(((abs(ratio_of(o) - target), o) for o in options), key=lambda t: t[0])
    if best[0] <= tolerance * target:
        return best[1], ratio_of(best[1])
    # one channel too many overshoots the band: walk on past it, adding only cheap channels
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
    return best[1], ratio_of(best[1])


def _example_for(input_size, seed: int = 0) -> torch.Tensor:
    size = check_input_size(input_size)
    return torch.randn(1, *size, generator=torch.Generator().manual_seed(seed))


def _choose_for_macs(
    model, groups, graph_input, candidates, target, tolerance, reference_macs, input_size
):
    """Pick candidates reaching ``target`` x reference MACs; analytic, else measured."""
    predictor = _MacsModel(model, groups, graph_input)
    current = count_macs(model, input_size)
    if abs(predictor.macs() - current) <= 1e-3 * current:

        def ratio_of(chosen):
            return predictor.macs(_removed_sets(chosen)) / reference_macs

        trials = 2000
    else:

        def ratio_of(chosen):
            trial = copy.deepcopy(model)
            trial_graph, trial_groups = _analyse(trial, graph_input)
            removal = _as_removal(groups, chosen)
            _remove(trial, trial_graph, trial_groups, removal)
            return count_macs(trial, input_size) / reference_macs

        trials = 30
    return _search(ratio_of, candidates, target, tolerance, trials)


def _check_tolerance(tolerance: float) -> float:
    tolerance = float(tolerance)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    return tolerance


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
) -> nn.Module:
    """Prune width until the measured MACs ratio is within ``tolerance`` of the target.

    The channels are ranked once; the number removed (equivalently ``w``) is found by
    bisection on the MACs of the pruned architecture, and if one more channel would
    overshoot the band, later (cheaper) channels of the ranking are tried instead.

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
        The pruned model, with ``tridim_width_removal`` (see :func:`prune_width`) and
        ``tridim_macs_ratio`` (the measured ratio).

    Raises
    ------
    ValueError
        If the target cannot be reached within the tolerance (for instance below the
        smallest ratio the ``min_keep`` floors allow; the message gives the reachable
        range).
    """
    target_ratio = check_ratio(target_ratio, "target_ratio")
    tolerance = _check_tolerance(tolerance)
    min_keep = _check_min_keep(min_keep)
    example = _example_for(input_size, seed)
    reference = count_macs(model, input_size)
    target = model if inplace else copy.deepcopy(model)
    graph, groups = _analyse(target, example, ignored_layers)
    scores = _score(target, groups, criterion, data, seed)
    candidates = _ranked_candidates(groups, scores, min_keep)
    chosen, _ = _choose_for_macs(
        target, groups, example, candidates, target_ratio, tolerance, reference, input_size
    )
    _remove(target, graph, groups, _as_removal(groups, chosen))
    ratio = count_macs(target, input_size) / reference
    if abs(ratio - target_ratio) > tolerance * target_ratio:
        raise ValueError(
            f"could not reach MACs ratio {target_ratio:g} within {tolerance:.0%} by width "
            f"(got {ratio:.4f}); with min_keep={min_keep:g} the smallest reachable ratio "
            "is limited by the channels every layer keeps"
        )
    target.tridim_macs_ratio = ratio
    return target


# ----------------------------------------------------------------------------------------
# Molchanov's iterative pruning


def prune_iteratively(
    model: nn.Module,
    data,
    target_ratio: float,
    *,
    input_size: Sequence[int],
    criterion: str | Criterion = "taylor",
    channels_per_step: int | None = None,
    updates_between: int = 30,
    lr: float = 0.01,
    batch_size: int = 64,
    tolerance: float = 0.01,
    ignored_layers: Iterable[str | nn.Module] | None = None,
    inplace: bool = False,
    seed: int = 0,
    min_keep: float = DEFAULT_MIN_KEEP,
    quiet: bool = False,
) -> nn.Module:
    """Molchanov et al.'s loop: remove a few channels, a few SGD updates, re-score.

    Parameters
    ----------
    model : torch.nn.Module
        A trained model; copied first unless ``inplace``.
    data : DataBundle
        Training data (criterion batches and the SGD updates).
    target_ratio : float in (0, 1]
        Stop when ``count_macs(pruned) / count_macs(model)`` is within ``tolerance``
        (relative) of it; the last step removes fewer channels if needed.
    input_size : (C, H, W)
        Input size at which MACs are counted.
    criterion : str or Criterion
        Default ``"taylor"`` (layer-wise L2-normalised).
    channels_per_step : int, optional
        Channels removed per step; default 2% of the prunable channels (at least 1).
        Molchanov remove one per step, which is closest to the paper but slowest.
    updates_between : int
        SGD updates (constant ``lr``, batch ``batch_size``) after each removal.
    lr, batch_size : float, int
        Of the updates.
    tolerance, ignored_layers, seed, min_keep
        As in :func:`prune_width_to_macs`.
    inplace : bool
        Modify ``model`` itself.
    quiet : bool
        Hide the progress bar.

    Returns
    -------
    torch.nn.Module
        The pruned (and briefly trained) model, with ``tridim_width_removal`` and
        ``tridim_macs_ratio``.
    """
    from tqdm import tqdm

    from ..train import train

    target_ratio = check_ratio(target_ratio, "target_ratio")
    tolerance = _check_tolerance(tolerance)
    min_keep = _check_min_keep(min_keep)
    if not hasattr(data, "loader"):
        raise TypeError("prune_iteratively needs a DataBundle (from tridim.data.load)")
    if not isinstance(updates_between, int) or updates_between < 0:
        raise ValueError(f"updates_between must be a non-negative integer, got {updates_between!r}")
    if channels_per_step is not None and (
        not isinstance(channels_per_step, int) or channels_per_step < 1
    ):
        raise ValueError(f"channels_per_step must be a positive integer, got {channels_per_step!r}")
    example = _example_for(input_size, seed)
    reference = count_macs(model, input_size)
    current = model if inplace else copy.deepcopy(model)
    steps_per_epoch = len(data.loader("train", batch_size))
    ratio, step = 1.0, 0
    bar = tqdm(
        total=100,
        desc=f"prune ({getattr(criterion, 'name', criterion)})",
        unit="%",
        disable=quiet,
        leave=False,
    )
    while ratio > target_ratio * (1 + tolerance):
        graph, groups = _analyse(current, example, ignored_layers)
        scores = _score(current, groups, criterion, data, seed + step)
        candidates = _ranked_candidates(groups, scores, min_keep)
        if not candidates:
            bar.close()
            raise ValueError(
                f"no channel left to remove at MACs ratio {ratio:.4f} "
                f"(target {target_ratio:g}); lower min_keep"
            )
        per_step = channels_per_step or max(1, round(0.02 * _scored_total(groups, scores)))
        chosen, _ = _choose_for_macs(
            current,
            groups,
            example,
            candidates[:per_step],
            target_ratio,
            tolerance,
            reference,
            input_size,
        )
        if not chosen:
            chosen, _ = _choose_for_macs(
                current, groups, example, candidates, target_ratio, tolerance, reference, input_size
            )
        if not chosen:
            bar.close()
            raise ValueError(
                f"cannot get closer to MACs ratio {target_ratio:g} "
                f"than {ratio:.4f} by removing channels"
            )
        _remove(current, graph, groups, _as_removal(groups, chosen))
        ratio = count_macs(current, input_size) / reference
        if updates_between:
            epochs = max(1, math.ceil(updates_between / steps_per_epoch))
            train(
                current,
                data,
                epochs,
                lr=lr,
                batch_size=batch_size,
                schedule="constant",
                max_steps=updates_between,
                evaluate_each_epoch=False,
                quiet=True,
                seed=seed + step,
            )
        step += 1
        done = round(100 * min(1.0, (1 - ratio) / max(1e-9, 1 - target_ratio)))
        bar.update(done - bar.n)
        bar.set_postfix(macs=f"{ratio:.3f}", step=step)
    bar.close()
    current.eval()
    current.tridim_macs_ratio = ratio
    return current


# ----------------------------------------------------------------------------------------
# sparsity training (Network Slimming)


def sparsity_strength(model: nn.Module) -> float:
    """Default L1 strength on BN scales: 1e-4 for VGG, 1e-5 otherwise (ResNets, ...).

    These are Network Slimming's values (Liu et al. 2017).
    """
    spec = getattr(model, "tridim_spec", None)
    name = getattr(spec, "name", "") or type(model).__name__
    return 1e-4 if name.lower().startswith("vgg") else 1e-5


def bn_l1_penalty(
    model: nn.Module, strength: float | None = None
) -> Callable[[nn.Module], torch.Tensor]:
    """An L1 penalty on BatchNorm scales for sparsity training (Network Slimming).

    Parameters
    ----------
    model : torch.nn.Module
        The model to be trained (checked for BatchNorm layers; picks the default).
    strength : float, optional
        Multiplier of ``sum |gamma|``; default :func:`sparsity_strength` (1e-5 for
        ResNets and other families, 1e-4 for VGG).

    Returns
    -------
    callable
        ``penalty(model) -> scalar tensor``, to pass as ``train(..., extra_loss=...)``.

    Examples
    --------
    >>> from tridim.models import build
    >>> model = build("resnet20", 10, 1)
    >>> penalty = bn_l1_penalty(model)
    >>> round(float(penalty(model)), 5)  # 1e-5 x 784 BN scales, all 1 in a fresh model
    0.00784
    """
    if not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
        for m in model.modules()
    ):
        raise ValueError("bn_l1_penalty needs a model with affine BatchNorm layers")
    value = sparsity_strength(model) if strength is None else float(strength)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"strength must be a non-negative number, got {strength!r}")

    def penalty(net: nn.Module) -> torch.Tensor:
        scales = [
            m.weight.abs().sum()
            for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
        ]
        return value * torch.stack(scales).sum()

    return penalty
