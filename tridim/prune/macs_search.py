"""Reaching a MACs ratio by width: which prefix of the channel ranking to remove.

:func:`choose_for_macs` searches the ranked candidates of :mod:`tridim.prune.ranking`
for the selection whose MACs ratio is nearest a target: by bisection on the prefix
length, then, if one more channel overshoots the tolerance band, by walking on past it
and adding only later (cheaper) channels. MACs are predicted analytically from the
layers' shapes with :func:`tridim.cost.macs.layer_macs` when the prediction matches
:func:`tridim.cost.macs.count_macs` on the unpruned model, and measured on pruned
copies otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from tridim.cost.macs import count_macs, layer_channels, layer_macs
from tridim.prune.groups import ChannelGroup, analyse, layer_geometry
from tridim.prune.ranking import as_removal, chosen_channels
from tridim.prune.removal import apply_removal

__all__ = ["choose_for_macs"]


class _MacsModel:
    """Predicts the conv + linear MACs after removing channels, without pruning.

    Each layer costs :func:`~tridim.cost.macs.layer_macs` of its shape; removing channels
    of a group lowers ``out`` of its producers and ``in`` of its consumers. The prediction is
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
        cout, cin, groups = layer_channels(layer)
        if groups > 1 and groups == cout == cin:  # depthwise: one input channel per output
            cin, groups, cut_in = 1, 1, 0
        return layer_macs(cout - cut_out, cin - cut_in, groups, geo["kernel"], geo["positions"])


def _removed_sets(groups: Sequence[ChannelGroup], chosen) -> dict[int, np.ndarray]:
    """{group index: removed channels} of the chosen ``(group index, slots)`` candidates."""
    return {gi: np.asarray(v) for gi, v in chosen_channels(groups, chosen).items()}


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
            apply_removal(trial, trial_graph, trial_groups, as_removal(groups, chosen))
            return count_macs(trial, input_size) / reference_macs

        trials = 30
    return _search(ratio_of, candidates, target, tolerance, trials)
