"""Where to sample: the triples a collection finetunes and measures (no torch).

Two kinds of point:

- *axis* points shrink one dimension alone, in ``rounds`` even steps from 1 down to the
  value that alone meets the budget (depth: T, width and resolution: sqrt(T));
- *mixed* points shrink several dimensions at once and sit on the budget's iso-cost
  surface d * w^2 * r^2 = T. A point is a split of the budget's log-cost between the
  dimensions, ``(f_d, f_w, f_r)`` with the fractions summing to 1, realised as
  ``d = T**f_d``, ``w = T**(f_w / 2)``, ``r = T**(f_r / 2)``; the axis ends are the
  corners of that simplex, and mixed points fill its inside (centre first, then the
  middles of its edges, then nearer the corners), so a handful covers it evenly.

Axis points alone make a rank-1 predictor separable by construction: it can only learn
how the dimensions interact from points that mix them.
"""

from __future__ import annotations

import math

from tridim.search.space import Triple, check_ratio

__all__ = ["axis_values", "mixed_triples", "simplex_splits", "DEFAULT_DESIGN"]

#: Mixed samples a collection takes by default: none. On Fashion-MNIST ResNet-20 (3 seeds,
#: MACs targets 0.5 and 0.3; README, "tridim against the field") four mixed samples never
#: found a better model than the axis points alone, cost 0.6 points once, and left the
#: predictor 1.0-1.2 points off at its refine trials at 0.3 where axis points alone were
#: within 0.3. ``design=4`` stays available.
DEFAULT_DESIGN = 0


def axis_values(
    target_flops_ratio: float,
    rounds: int,
    overshoot: float = 0.0,
    ends: tuple[float, float, float] | None = None,
) -> dict[str, list[float]]:
    """The coordinate each dimension alone is shrunk to, step by step.

    Parameters
    ----------
    target_flops_ratio : float
        The budget T in (0, 1].
    rounds : int
        Steps per dimension.
    overshoot : float
        Go this fraction past the value that alone meets the target, so the fitted
        predictor also sees a little beyond it.
    ends : (d, w, r), optional
        The values that alone meet the budget, replacing T, sqrt(T), sqrt(T) (a latency
        budget's, found from its latency table).

    Returns
    -------
    dict
        ``{"depth": [...], "width": [...], "resolution": [...]}``, each list decreasing
        in even steps from just below 1 to its end value.
    """
    target = check_ratio(target_flops_ratio, "target_flops_ratio")
    if ends is None:
        ends = (target, math.sqrt(target), math.sqrt(target))
    values = {}
    for dim, end in zip(("depth", "width", "resolution"), ends):
        end = max(0.02, end * (1.0 - overshoot))
        values[dim] = [1.0 - (1.0 - end) * k / rounds for k in range(1, rounds + 1)]
    return values


def simplex_splits(n: int, *, depth: bool = True) -> list[tuple[float, float, float]]:
    """``n`` splits ``(f_d, f_w, f_r)`` of the log-cost inside the simplex, spread evenly.

    With ``depth=False`` (a model whose depth cannot change) the splits lie on the
    width-resolution edge, ``f_d = 0``.
    """
    if n <= 0:
        return []
    if depth:
        candidates = [(1 / 3, 1 / 3, 1 / 3)]
        candidates += [(0.0, 0.5, 0.5), (0.5, 0.5, 0.0), (0.5, 0.0, 0.5)]
        candidates += _permutations((2 / 3, 1 / 6, 1 / 6))
        candidates += _permutations((1 / 6, 5 / 12, 5 / 12))
    else:
        fractions = [0.5, 0.25, 0.75, 0.125, 0.875, 0.375, 0.625]
        candidates = [(0.0, f, 1.0 - f) for f in fractions]
    if n > len(candidates):
        raise ValueError(f"at most {len(candidates)} mixed points, got design={n}")
    return candidates[:n]


def _permutations(split: tuple[float, float, float]) -> list[tuple[float, float, float]]:
    a, b, c = split
    return [(a, b, c), (b, a, c), (b, c, a)]


def mixed_triples(
    target_flops_ratio: float,
    n: int,
    *,
    depth: bool = True,
    lowest: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> list[Triple]:
    """``n`` triples that shrink several dimensions at once, on d * w^2 * r^2 = T.

    Parameters
    ----------
    target_flops_ratio : float
        The budget T in (0, 1].
    n : int
        How many (0 for none).
    depth : bool
        Whether depth can change; without, the points mix width and resolution only.
    lowest : (d, w, r)
        Floors of the model (fewest blocks, fewest channels, smallest side): a
        coordinate below its floor is raised to it.

    Returns
    -------
    list of Triple
    """
    target = check_ratio(target_flops_ratio, "target_flops_ratio")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"design must be a non-negative integer, got {n!r}")
    triples = []
    for f_d, f_w, f_r in simplex_splits(n, depth=depth):
        point = (target**f_d, target ** (f_w / 2), target ** (f_r / 2))
        triples.append(Triple(*(max(x, floor) for x, floor in zip(point, lowest))))
    return triples
