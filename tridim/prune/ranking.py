"""Ranking channels for width pruning: score the channel groups, order what may go.

:func:`rank_channels` traces a model into its coupled channel groups
(:func:`tridim.prune.groups.analyse`), scores every channel with a criterion
(:mod:`tridim.prune.criteria`) and lists the removable channels, least important first,
each group's ``min_keep`` floor protected. A prefix of that list is a selection;
:func:`as_removal` turns it into a *removal* ``{root layer name: sorted channel
indices}``, which :mod:`tridim.prune.removal` applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from tridim.prune.criteria import Criterion, get_criterion
from tridim.prune.groups import ChannelGroup, analyse
from tridim.prune.removal import Removal

__all__ = ["Ranking", "rank_channels", "keep_fraction", "as_removal", "chosen_channels"]


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
        return as_removal(self.groups, chosen)

    def channels_of(self, candidate: tuple[int, tuple[int, ...]]) -> int:
        """How many channels removing one candidate takes out."""
        return self.groups[candidate[0]].blocks * len(candidate[1])


def chosen_channels(
    groups: Sequence[ChannelGroup], chosen: Iterable[tuple[int, tuple[int, ...]]]
) -> dict[int, list[int]]:
    """The channels of the chosen candidates, per group.

    Parameters
    ----------
    groups : sequence of ChannelGroup
        The groups the candidates index.
    chosen : iterable of (int, tuple of int)
        ``(group index, slots)`` candidates, e.g. a prefix of :attr:`Ranking.candidates`.

    Returns
    -------
    dict
        ``{group index: channels}``, groups in the order the candidates first name them;
        a slot stands for its channels in every block of the group.
    """
    channels: dict[int, list[int]] = {}
    for gi, slots in chosen:
        for slot in slots:
            channels.setdefault(gi, []).extend(groups[gi].slot_channels(slot))
    return channels


def as_removal(
    groups: Sequence[ChannelGroup], chosen: Iterable[tuple[int, tuple[int, ...]]]
) -> Removal:
    """The removal of the chosen candidates.

    Parameters
    ----------
    groups, chosen
        As in :func:`chosen_channels`.

    Returns
    -------
    dict
        ``{group root layer name: sorted channel indices}``.
    """
    removal: Removal = {}
    for gi, idxs in chosen_channels(groups, chosen).items():
        removal.setdefault(groups[gi].root, []).extend(idxs)
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


def keep_fraction(ranking: Ranking, w: float) -> Removal:
    """The removal of the least important channels that leaves a fraction ``w`` of them.

    Parameters
    ----------
    ranking : Ranking
        From :func:`rank_channels`.
    w : float in (0, 1]
        Fraction of the scored channels to keep.

    Returns
    -------
    dict
        The removal of the ranking's first candidates, as many as come closest to
        leaving ``w`` of the scored channels (the shortest such prefix on a tie).
    """
    total = ranking.scored_total
    wanted = total - int(round(w * total))
    removed = np.cumsum([0] + [ranking.channels_of(c) for c in ranking.candidates])
    count = int(np.argmin(np.abs(removed - wanted)))  # first of the closest prefixes
    return ranking.removal(ranking.candidates[:count])
