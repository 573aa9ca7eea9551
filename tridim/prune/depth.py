"""Depth: remove the residual blocks that help least, to keep a fraction ``d`` of them.

The depth coordinate is ``d = blocks kept / blocks in the model``. The blocks come from
:func:`~tridim.prune.blocks.find_blocks` (removable when their shortcut is the
identity; blocks that change shape stay but count in the total), their scores from
:func:`~tridim.prune.gains.block_gains` (DBP-style linear probes): the blocks of least
gain are removed first, replaced by :class:`torch.nn.Identity`
(:func:`~tridim.prune.blocks.remove_blocks`). Those names are importable from here too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch.nn as nn

from tridim.prune.blocks import Block, find_blocks, minimum_depth, remove_blocks
from tridim.prune.gains import BlockGain, block_gains, gain_sort_keys
from tridim.search.space import check_ratio

__all__ = [
    "Block",
    "BlockGain",
    "find_blocks",
    "block_gains",
    "select_blocks",
    "remove_blocks",
    "prune_depth",
    "minimum_depth",
    "blocks_to_keep",
]


def blocks_to_keep(d: float, blocks: Sequence[Block]) -> int:
    """Whole blocks kept for a depth ratio ``d``: the nearest count (halves round up).

    Raises
    ------
    ValueError
        If the model has no removable block and ``d < 1``, or if ``d`` is below
        :func:`minimum_depth`.
    """
    d = check_ratio(d, "d")
    if not blocks:
        raise ValueError("the model has no residual blocks: depth cannot change for it")
    total = len(blocks)
    removable = sum(b.removable for b in blocks)
    if d < 1.0 and removable == 0:
        raise ValueError(
            f"none of the model's {total} blocks has an identity shortcut: depth cannot "
            "change for this model (use d=1)"
        )
    minimum = total - removable
    if d < minimum / total - 1e-9:
        raise ValueError(
            f"d={d:g} is below this model's minimum depth {minimum / total:.4f} "
            f"({minimum} of {total} blocks change shape and cannot be removed)"
        )
    return max(minimum, min(total, math.floor(d * total + 0.5)))


def select_blocks(
    model: nn.Module,
    d: float,
    *,
    gains=None,
    data=None,
    input_size: Sequence[int] | None = None,
    extra: Iterable[str] | None = None,
    seed: int = 0,
) -> list[str]:
    """Names of the removable blocks to drop so that ``d`` of the blocks remain.

    Parameters
    ----------
    model : torch.nn.Module
        The network; not modified.
    d : float in (0, 1]
        Fraction of the model's blocks to keep. Rounded to the nearest whole number of
        blocks (halves round up), never below the blocks that cannot be removed.
    gains : sequence of BlockGain, list of dicts or mapping name -> gain, optional
        Block scores; computed with :func:`block_gains` on ``data`` when omitted.
    data : DataBundle, optional
        Needed when ``gains`` is omitted and a block has to go.
    input_size : (C, H, W), optional
        Example input size for :func:`find_blocks`.
    extra : iterable of str, optional
        Further block names, as in :func:`find_blocks`.
    seed : int
        Seed of :func:`block_gains` when it is called here.

    Returns
    -------
    list of str
        Block names in forward order. Chosen first are removable blocks that computed
        the identity on the probe set (removing them is lossless), then those of least
        accuracy gain (ties: lower log-loss gain, then the later block). Note that a
        trained block can have a negative gain (it makes the pooled features less
        linearly separable); DBP removes such blocks before zero-gain ones.
    """
    blocks = find_blocks(model, extra, input_size=input_size)
    n_remove = len(blocks) - blocks_to_keep(d, blocks)
    if n_remove == 0:
        return []
    if gains is None:
        if data is None:
            raise ValueError("prune_depth needs gains= (from block_gains) or data= to compute them")
        gains = block_gains(model, data, seed=seed, extra=extra)
    keys = gain_sort_keys(gains)
    removable = [(i, b.name) for i, b in enumerate(blocks) if b.removable]
    missing = [name for _, name in removable if name not in keys]
    if missing:
        raise ValueError(f"gains lack the removable blocks {missing}: recompute block_gains")
    ranked = sorted(removable, key=lambda item: (*keys[item[1]], -item[0]))
    chosen = {name for _, name in ranked[:n_remove]}
    return [b.name for b in blocks if b.name in chosen]


def prune_depth(
    model: nn.Module,
    d: float,
    *,
    gains=None,
    data=None,
    inplace: bool = False,
    input_size: Sequence[int] | None = None,
    extra: Iterable[str] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Remove the least useful removable blocks until ``d`` of the blocks remain.

    Parameters
    ----------
    model : torch.nn.Module
        The trained network.
    d : float in (0, 1]
        Fraction of blocks to keep, relative to the blocks ``model`` has now. Rounded to
        the nearest whole number of blocks (halves round up); blocks that change shape
        always stay and count in the total.
    gains : sequence of BlockGain, list of dicts or mapping name -> gain, optional
        Scores from :func:`block_gains`; computed from ``data`` when omitted.
    data : DataBundle, optional
        Probe data, needed when ``gains`` is omitted.
    inplace : bool
        Modify ``model`` instead of a deep copy.
    input_size : (C, H, W), optional
        Example input size for :func:`find_blocks` (default ``(C, 32, 32)``).
    extra : iterable of str, optional
        Further block names, as in :func:`find_blocks`.
    seed : int
        Seed of the probes when gains are computed here.

    Returns
    -------
    torch.nn.Module
        The model with the chosen blocks replaced by :class:`torch.nn.Identity`.

    Raises
    ------
    ValueError
        If no block has an identity shortcut (depth cannot change for this model), if
        ``d`` is below the minimum depth (the message states it), or if neither gains
        nor data are given.

    Examples
    --------
    >>> from tridim.training.models import build
    >>> model = build("resnet20", 10, 1)
    >>> gains = {f"layer{s}.{i}": s - i / 10 for s in (1, 2, 3) for i in range(3)}
    >>> smaller = prune_depth(model, 7 / 9, gains=gains, input_size=(1, 16, 16))
    >>> [type(b).__name__ for b in smaller.layer1]
    ['BasicBlock', 'Identity', 'Identity']
    """
    names = select_blocks(
        model, d, gains=gains, data=data, input_size=input_size, extra=extra, seed=seed
    )
    return remove_blocks(model, names, inplace=inplace)
