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
:mod:`tridim.prune.groups`, the importance criteria from :mod:`tridim.prune.criteria`;
the ranking lives in :mod:`tridim.prune.ranking`, the removal in
:mod:`tridim.prune.removal` and the search for a MACs ratio in
:mod:`tridim.prune.macs_search`.

``w`` is the fraction of the prunable channels kept, counted once per coupled group and
ranked globally across layers (Network Slimming). Layers are never emptied (each group
keeps at least ``max(1, ceil(min_keep * size))`` channels) and the classifier's outputs
are never touched (groups that reach the model output are not prunable).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from tridim.cost.macs import count_macs
from tridim.prune.criteria import Criterion
from tridim.prune.groups import analyse
from tridim.prune.macs_search import choose_for_macs
from tridim.prune.ranking import keep_fraction, rank_channels
from tridim.prune.removal import Removal, apply_removal, compose_removals, remove_channels
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
# keeping a fraction of the channels


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
    return keep_fraction(ranking, w)


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
    return apply_removal(target, ranking.graph, ranking.groups, keep_fraction(ranking, w))


# ----------------------------------------------------------------------------------------
# reaching a MACs target


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
