"""Pruning interleaved with training: Molchanov's iterative loop and sparsity training.

:func:`prune_iteratively` is Molchanov et al.'s (2017) loop: score the channels, remove a
few, run a few SGD updates, score again, until a MACs target is reached.
:func:`bn_l1_penalty` is Network Slimming's (Liu et al. 2017) L1 penalty on BatchNorm
scales, to train a model whose unimportant channels ``bn_scale`` can then find.

Channel selection and removal come from :mod:`tridim.prune.width`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from tridim.cost.macs import count_macs
from tridim.prune.criteria import Criterion
from tridim.prune.macs_search import choose_for_macs
from tridim.prune.ranking import Ranking, rank_channels
from tridim.prune.removal import apply_removal
from tridim.prune.width import DEFAULT_MIN_KEEP, check_min_keep, check_tolerance, example_for
from tridim.search.space import check_ratio
from tridim.training.models import spec_of

__all__ = ["prune_iteratively", "bn_l1_penalty", "sparsity_strength"]


# ----------------------------------------------------------------------------------------
# Molchanov's iterative pruning


@dataclass(frozen=True)
class _Loop:
    """The fixed settings of one :func:`prune_iteratively` run."""

    target_ratio: float
    tolerance: float
    input_size: Sequence[int]
    example: torch.Tensor
    reference_macs: int
    criterion: str | Criterion
    ignored_layers: Iterable[str | nn.Module] | None
    channels_per_step: int | None
    min_keep: float
    seed: int


def _check_loop_options(data, updates_between, channels_per_step) -> None:
    if not hasattr(data, "loader"):
        raise TypeError("prune_iteratively needs a DataBundle (from tridim.data.load)")
    if not isinstance(updates_between, int) or updates_between < 0:
        raise ValueError(f"updates_between must be a non-negative integer, got {updates_between!r}")
    if channels_per_step is not None and (
        not isinstance(channels_per_step, int) or channels_per_step < 1
    ):
        raise ValueError(f"channels_per_step must be a positive integer, got {channels_per_step!r}")


def _choose_step(model: nn.Module, ranking: Ranking, ratio: float, loop: _Loop) -> list:
    """The channels one step removes: a few of the least important, fewer near the target."""
    if not ranking.candidates:
        raise ValueError(
            f"no channel left to remove at MACs ratio {ratio:.4f} "
            f"(target {loop.target_ratio:g}); lower min_keep"
        )
    per_step = loop.channels_per_step or max(1, round(0.02 * ranking.scored_total))
    for candidates in (ranking.candidates[:per_step], ranking.candidates):
        chosen, _ = choose_for_macs(
            model,
            ranking.groups,
            loop.example,
            candidates,
            loop.target_ratio,
            loop.tolerance,
            loop.reference_macs,
            loop.input_size,
        )
        if chosen:
            return chosen
    raise ValueError(
        f"cannot get closer to MACs ratio {loop.target_ratio:g} "
        f"than {ratio:.4f} by removing channels"
    )


def _prune_step(model: nn.Module, data, step: int, ratio: float, loop: _Loop) -> float:
    """Re-score ``model``, remove one step's channels in place; return the new MACs ratio."""
    ranking = rank_channels(
        model,
        loop.example,
        loop.criterion,
        data,
        loop.ignored_layers,
        loop.seed + step,
        loop.min_keep,
    )
    chosen = _choose_step(model, ranking, ratio, loop)
    apply_removal(model, ranking.graph, ranking.groups, ranking.removal(chosen))
    return count_macs(model, loop.input_size) / loop.reference_macs


def _progress_bar(criterion, quiet: bool):
    from tqdm import tqdm

    return tqdm(
        total=100,
        desc=f"prune ({getattr(criterion, 'name', criterion)})",
        unit="%",
        disable=quiet,
        leave=False,
    )


def _show_progress(bar, ratio: float, target_ratio: float, step: int) -> None:
    done = round(100 * min(1.0, (1 - ratio) / max(1e-9, 1 - target_ratio)))
    bar.update(done - bar.n)
    bar.set_postfix(macs=f"{ratio:.3f}", step=step)


def _finetune_briefly(
    model, data, updates: int, steps_per_epoch: int, lr: float, batch_size: int, seed: int
) -> None:
    """``updates`` SGD steps at a constant learning rate."""
    from tridim.training.train import train

    train(
        model,
        data,
        max(1, math.ceil(updates / steps_per_epoch)),
        lr=lr,
        batch_size=batch_size,
        schedule="constant",
        max_steps=updates,
        evaluate_each_epoch=False,
        quiet=True,
        seed=seed,
    )


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
        As in :func:`tridim.prune.width.prune_width_to_macs`.
    inplace : bool
        Modify ``model`` itself.
    quiet : bool
        Hide the progress bar.

    Returns
    -------
    torch.nn.Module
        The pruned (and briefly trained) model, in eval mode. Its MACs ratio is
        ``count_macs(pruned, input_size) / count_macs(model, input_size)``.
    """
    target_ratio = check_ratio(target_ratio, "target_ratio")
    tolerance = check_tolerance(tolerance)
    min_keep = check_min_keep(min_keep)
    _check_loop_options(data, updates_between, channels_per_step)
    example = example_for(input_size, seed)
    loop = _Loop(
        target_ratio,
        tolerance,
        input_size,
        example,
        count_macs(model, input_size),
        criterion,
        ignored_layers,
        channels_per_step,
        min_keep,
        seed,
    )
    current = model if inplace else copy.deepcopy(model)
    steps_per_epoch = len(data.loader("train", batch_size))
    ratio, step = 1.0, 0
    bar = _progress_bar(criterion, quiet)
    try:
        while ratio > target_ratio * (1 + tolerance):
            ratio = _prune_step(current, data, step, ratio, loop)
            if updates_between:
                _finetune_briefly(
                    current, data, updates_between, steps_per_epoch, lr, batch_size, seed + step
                )
            step += 1
            _show_progress(bar, ratio, target_ratio, step)
    finally:
        bar.close()
    return current.eval()


# ----------------------------------------------------------------------------------------
# sparsity training (Network Slimming)


def sparsity_strength(model: nn.Module) -> float:
    """Default L1 strength on BN scales: 1e-4 for VGG, 1e-5 otherwise (ResNets, ...).

    These are Network Slimming's values (Liu et al. 2017). The family is read from the
    model's spec (:func:`tridim.training.models.spec_of`), else from its class name.
    """
    spec = spec_of(model)
    name = (spec.name if spec is not None else "") or type(model).__name__
    return 1e-4 if name.lower().startswith("vgg") else 1e-5


def _is_affine_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None


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
    >>> from tridim.training.models import build
    >>> model = build("resnet20", 10, 1)
    >>> penalty = bn_l1_penalty(model)
    >>> round(float(penalty(model)), 5)  # 1e-5 x 784 BN scales, all 1 in a fresh model
    0.00784
    """
    if not any(_is_affine_bn(m) for m in model.modules()):
        raise ValueError("bn_l1_penalty needs a model with affine BatchNorm layers")
    value = sparsity_strength(model) if strength is None else float(strength)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"strength must be a non-negative number, got {strength!r}")

    def penalty(net: nn.Module) -> torch.Tensor:
        scales = [m.weight.abs().sum() for m in net.modules() if _is_affine_bn(m)]
        return value * torch.stack(scales).sum()

    return penalty
