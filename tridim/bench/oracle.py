"""How well the width criteria predict a channel's importance: Molchanov's oracle study.

:func:`oracle_scores` measures, for every channel of chosen channel groups, the absolute
change of the mean loss when that one channel is zeroed everywhere it flows
(Oracle-abs, Molchanov et al. 2017); :func:`criterion_oracle_correlation` compares the
scores of each criterion of :mod:`tridim.prune.criteria` with it by Spearman rank
correlation, next to the paper's figures (:data:`MOLCHANOV_REFERENCE`). A benchmark,
not used by the pruner.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tridim.prune.criteria import (
    CRITERIA,
    DEFAULT_BATCH_SIZE,
    ChannelGates,
    CriterionError,
    get_criterion,
    l2_normalize,
    score_groups,
    take_batches,
)
from tridim.prune.groups import ChannelGroup, channel_groups
from tridim.training.device import eval_mode, model_device

__all__ = ["criterion_oracle_correlation", "oracle_scores", "MOLCHANOV_REFERENCE"]

#: Molchanov et al. (2017), table 1: Spearman correlation of each criterion with the
#: oracle (Oracle-abs), VGG-16 on Birds-200, all layers, with layer-wise L2 normalisation.
MOLCHANOV_REFERENCE = {
    "source": "Molchanov et al. 2017, VGG-16 / Birds-200, all layers, L2-normalised",
    "taylor": 0.73,
    "others_range": [0.33, 0.66],
}


def oracle_scores(
    model: nn.Module, groups: Sequence[ChannelGroup], batches: Sequence[tuple]
) -> list[np.ndarray]:
    """Molchanov's Oracle-abs: |change in mean loss| when one channel is zeroed.

    The channel is zeroed where it leaves its BatchNorms (everywhere it flows), in eval
    mode, over the given batches. Costs ``sum(group.size) x len(batches)`` forward passes.
    """
    points = {m.name for g in groups for m in g.activation_points}
    results = []
    with torch.no_grad(), eval_mode(model), ChannelGates(model, points) as gates:
        base = _mean_loss(model, batches)
        for group in groups:
            deltas = np.zeros(group.size)
            for channel in range(group.size):
                gates.masks = _channel_masks(model, group, channel)
                deltas[channel] = abs(_mean_loss(model, batches) - base)
                gates.masks = {}
            results.append(deltas)
    return results


def _mean_loss(model: nn.Module, batches: Sequence[tuple]) -> float:
    total, count = 0.0, 0
    for images, labels in batches:
        total += float(F.cross_entropy(model(images), labels, reduction="sum"))
        count += len(labels)
    return total / count


def _channel_masks(model: nn.Module, group: ChannelGroup, channel: int) -> dict:
    masks = {}
    for member in group.activation_points:
        positions = [i for i, r in zip(member.idxs, member.root_idxs) if r == channel]
        if not positions:
            continue
        module = model.get_submodule(member.name)
        width = _out_width(module)
        device = next(module.parameters(), torch.empty(0)).device
        mask = masks.get(member.name, torch.ones(width, device=device))
        mask[positions] = 0.0
        masks[member.name] = mask
    return masks


def _out_width(module: nn.Module) -> int:
    for attr in ("num_features", "out_channels", "out_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise ValueError(f"cannot tell the output width of {type(module).__name__}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = spearmanr(a, b).statistic
    return None if not np.isfinite(rho) else float(rho)


def criterion_oracle_correlation(
    model: nn.Module,
    data,
    criteria: Sequence[str] = CRITERIA,
    layers: Sequence[str] | None = None,
    n_batches: int = 4,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    example_input: torch.Tensor | None = None,
    seed: int = 0,
) -> dict:
    """Spearman rank correlation of each criterion with Molchanov's oracle.

    For every channel of the chosen layers the oracle is the absolute change of the mean
    loss on ``n_batches`` training batches when that one channel is zeroed everywhere it
    flows (Oracle-abs). Each criterion's scores are compared with it per layer and over
    all chosen layers, without and with layer-wise L2 normalisation of the criterion
    (per-layer correlations do not depend on normalisation).

    Parameters
    ----------
    model : torch.nn.Module
        A trained model (left unchanged; run in eval mode).
    data : DataBundle or iterable of (images, labels)
        Batches are taken from its training split.
    criteria : sequence of str
        Names from :data:`CRITERIA` (``bn_scale`` / ``bn_filter`` are skipped on a model
        without BatchNorm).
    layers : sequence of str, optional
        Root names of the channel groups to analyse (see
        :func:`tridim.prune.groups.channel_groups`); default all groups.
    n_batches : int
        Batches for the oracle (the data-driven criteria use the same number).
    batch_size : int
        Batch size when ``data`` is a DataBundle.
    example_input : torch.Tensor, optional
        Input for tracing the model; default the first batch.
    seed : int
        Seeds batch sampling and the ``random`` criterion.

    Returns
    -------
    dict
        ``{"layers": [...], "channels": int, "n_batches": int, "seconds": float,
        "per_layer": {criterion: {layer: rho}}, "mean_per_layer": {criterion: rho},
        "overall": {criterion: {"raw": rho, "l2": rho}}}``; a correlation is ``None``
        where undefined (constant scores).

    Notes
    -----
    Cost: one forward pass per channel of the chosen layers per batch, i.e.
    ``sum(channels) x n_batches`` forwards (ResNet-20, all 448 channels, 4 batches of 64
    at 16x16: about 1800 forwards, some tens of seconds on 2 CPU cores), plus a forward
    and backward per batch for ``taylor``. Pass a few ``layers`` on large models.
    """
    if int(n_batches) < 1:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}")
    names = [get_criterion(c).name for c in criteria]
    start = time.perf_counter()
    batches = take_batches(data, int(n_batches), batch_size, seed, model_device(model))
    if example_input is None:
        example_input = batches[0][0][:1]
    groups = _chosen_groups(model, example_input, layers)
    oracle = oracle_scores(model, groups, batches)
    report = {
        "layers": [g.root for g in groups],
        "channels": int(sum(g.size for g in groups)),
        "n_batches": len(batches),
        "per_layer": {},
        "mean_per_layer": {},
        "overall": {},
    }
    for name in names:
        raw = _unnormalised_scores(model, groups, name, batches, batch_size, seed)
        if raw is not None:
            _add_correlations(report, name, groups, raw, oracle)
    report["seconds"] = time.perf_counter() - start
    return report


def _chosen_groups(
    model: nn.Module, example_input: torch.Tensor, layers: Sequence[str] | None
) -> list[ChannelGroup]:
    """The model's channel groups, or those rooted at ``layers`` (in that order)."""
    groups = channel_groups(model, example_input)
    if layers is None:
        return groups
    by_root = {g.root: g for g in groups}
    unknown = [name for name in layers if name not in by_root]
    if unknown:
        raise ValueError(
            f"no channel group is rooted at {unknown}; group roots: {', '.join(by_root)}"
        )
    return [by_root[name] for name in layers]


def _unnormalised_scores(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    name: str,
    batches: list[tuple],
    batch_size: int,
    seed: int,
) -> list[np.ndarray] | None:
    """Scores of criterion ``name`` without normalisation; None if it cannot score all."""
    options: dict = {"normalize": False}
    if name in ("taylor", "activation_mean", "activation_std"):
        options.update(n_batches=len(batches), batch_size=batch_size)
    try:
        raw = score_groups(model, groups, get_criterion(name, **options), data=batches, seed=seed)
    except CriterionError:
        return None
    return None if any(s is None for s in raw) else raw


def _add_correlations(
    report: dict,
    name: str,
    groups: Sequence[ChannelGroup],
    raw: list[np.ndarray],
    oracle: list[np.ndarray],
) -> None:
    """Record criterion ``name``'s per-layer and overall correlations with the oracle."""
    per_layer = {g.root: _spearman(s, o) for g, s, o in zip(groups, raw, oracle)}
    defined = [v for v in per_layer.values() if v is not None]
    report["per_layer"][name] = per_layer
    report["mean_per_layer"][name] = float(np.mean(defined)) if defined else None
    all_oracle = np.concatenate(oracle)
    report["overall"][name] = {
        "raw": _spearman(np.concatenate(raw), all_oracle),
        "l2": _spearman(np.concatenate([l2_normalize(s) for s in raw]), all_oracle),
    }
