"""C(d, w, r) from the real layer shapes of a model: measured MACs or predicted latency.

The analytic cost ``d * w**2 * r**2`` assumes every layer thins and shrinks alike. The
model really pruned does not: a width criterion takes channels unevenly, and latency is
far from proportional to MACs. A :class:`CostModel` evaluates the cost of any triple of
a base model without realising it:

- for each width of a grid, the base model is thinned by the run's width criterion and
  the shapes of its layers are read (once); for each resolution of a grid the layers see
  smaller feature maps (the shapes scale, no model is built);
- each layer's cost is its MACs (:attr:`~tridim.cost.latency.LayerShape.macs`) or its entry in a
  calibrated :class:`~tridim.cost.latency.LatencyTable`; the layers inside removable blocks
  and the others are summed apart, so depth counts as the kept share of the removable
  blocks (the average block: which blocks go is only known from the probes);
- between grid points the cost is interpolated in log coordinates, and made monotone
  (more of any dimension never costs less), as the solver needs.

``cost(d, w, r)`` is a ratio of the base model's cost and works on numpy arrays, so it
plugs into :func:`tridim.solve` as its ``cost``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from tridim.cost.latency import LatencyTable, LayerShape, layer_calls
from tridim.prune.depth import find_blocks
from tridim.prune.resolution import reduced_size
from tridim.search.space import check_input_size

__all__ = ["CostModel", "macs_cost", "latency_cost"]

DEFAULT_WIDTHS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.85, 1.0)
DEFAULT_RESOLUTIONS = (0.25, 0.4, 0.55, 0.7, 0.85, 1.0)

LayerCost = Callable[[LayerShape, nn.Module], float]


def _cell(axis: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For values inside a sorted grid axis: each one's cell (index of its lower end) and
    its position in that cell, from 0 to 1."""
    if len(axis) == 1:
        return np.zeros(values.shape, dtype=int), np.zeros(values.shape)
    index = np.clip(np.searchsorted(axis, values, side="right") - 1, 0, len(axis) - 2)
    return index, (values - axis[index]) / (axis[index + 1] - axis[index])


def _bilinear(grid: np.ndarray, i: np.ndarray, ti: np.ndarray, j: np.ndarray, tj: np.ndarray):
    """Bilinear interpolation of ``grid`` at cells (i, j) and positions (ti, tj)."""
    i1 = np.minimum(i + 1, grid.shape[0] - 1)
    j1 = np.minimum(j + 1, grid.shape[1] - 1)
    low = (1 - tj) * grid[i, j] + tj * grid[i, j1]
    high = (1 - tj) * grid[i1, j] + tj * grid[i1, j1]
    return (1 - ti) * low + ti * high


def macs_cost(shape: LayerShape, module: nn.Module | None = None) -> float:
    """A layer's MACs: the cost of a measured-MACs budget."""
    return float(shape.macs)


def latency_cost(table: LatencyTable) -> LayerCost:
    """A layer's calibrated time from ``table`` (measured on first use)."""
    return lambda shape, module: table.scale * table.layer_ms(shape, module)


class CostModel:
    """The cost of any (d, w, r) of ``base`` as a ratio of the base's; see the module doc.

    Parameters
    ----------
    base : torch.nn.Module
        The trained base model (not modified).
    input_size : (C, H, W)
        Its full input size.
    layer_cost : callable
        ``(LayerShape, module) -> float``: :func:`macs_cost` or :func:`latency_cost`.
    overhead : float
        A fixed cost added to every model (a latency table's ``overhead_ms``).
    criterion : str
        The width criterion the run prunes with (it decides which layers thin).
    widths, resolutions : sequence of float
        The grid; values beyond it are clamped to its ends.
    name : str
        What the cost measures (``"macs"``, ``"latency"``), for reports.
    """

    def __init__(
        self,
        base: nn.Module,
        input_size: Sequence[int],
        layer_cost: LayerCost,
        *,
        overhead: float = 0.0,
        criterion: str = "bn_scale",
        data=None,
        widths: Sequence[float] = DEFAULT_WIDTHS,
        resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
        name: str = "macs",
        seed: int = 0,
    ) -> None:
        self.input_size = check_input_size(input_size)
        self.name = name
        self.widths = np.array(sorted(set(float(w) for w in widths)))
        self.resolutions = np.array(sorted(set(float(r) for r in resolutions)))
        if self.widths[-1] != 1.0 or self.resolutions[-1] != 1.0 or len(self.widths) < 2:
            raise ValueError("the grid must hold at least two widths and end at w = r = 1")
        blocks = find_blocks(base, input_size=self.input_size)
        self.blocks_total = len(blocks)
        self.blocks_fixed = sum(not b.removable for b in blocks)
        removable = tuple(b.name + "." for b in blocks if b.removable)
        fixed = np.zeros((len(self.widths), len(self.resolutions)))
        movable = np.zeros_like(fixed)
        for i, w in enumerate(self.widths):
            thin = _thinned(base, w, self.input_size, criterion, data, seed)
            for j, r in enumerate(self.resolutions):
                size = (self.input_size[0], *reduced_size(r, self.input_size))
                for name_, module, shape in layer_calls(thin, size):
                    cost = layer_cost(shape, module)
                    if (name_ + ".").startswith(removable) and removable:
                        movable[i, j] += cost
                    else:
                        fixed[i, j] += cost
        fixed += overhead
        self._set_grid(_monotone(fixed), _monotone(movable))

    def _set_grid(self, fixed: np.ndarray, movable: np.ndarray) -> None:
        self.fixed, self.movable = fixed, movable
        self.base_cost = float(self.fixed[-1, -1] + self.movable[-1, -1])
        self._log_widths, self._log_resolutions = np.log(self.widths), np.log(self.resolutions)

    @classmethod
    def from_dict(cls, description: dict, source: str = "cost model") -> CostModel:
        """The cost model :meth:`describe` wrote (a run folder's ``cost.json``), measured
        on the base model once and now read without it.

        Raises
        ------
        ValueError
            If ``description`` is not a valid grid; the message names ``source``.
        """
        try:
            model = cls.__new__(cls)
            model.input_size = None
            model.name = str(description["name"])
            model.widths = np.array(description["widths"], dtype=float)
            model.resolutions = np.array(description["resolutions"], dtype=float)
            fixed = np.array(description["fixed"], dtype=float)
            movable = np.array(description["removable_blocks"], dtype=float)
            model.blocks_total = int(description["blocks_total"])
            model.blocks_fixed = int(description["blocks_fixed"])
            shape = (len(model.widths), len(model.resolutions))
            valid = (
                fixed.shape == movable.shape == shape
                and min(shape) >= 2
                and model.widths[-1] == model.resolutions[-1] == 1.0
                and np.all(np.diff(model.widths) > 0)
                and np.all(np.diff(model.resolutions) > 0)
                and model.widths[0] > 0
                and model.resolutions[0] > 0
                and np.all(np.isfinite(fixed))
                and np.all(np.isfinite(movable))
                and np.all(fixed >= 0)
                and np.all(movable >= 0)
                and fixed[-1, -1] + movable[-1, -1] > 0
                and 0 <= model.blocks_fixed <= model.blocks_total
            )
        except (KeyError, TypeError, ValueError, OverflowError) as error:
            raise ValueError(f"{source} is not a tridim cost model: {error!r}") from None
        if not valid:
            raise ValueError(
                f"{source} is not a tridim cost model: its grid must be increasing widths "
                "and resolutions ending at 1, with finite non-negative costs of that shape"
            )
        model._set_grid(_monotone(fixed), _monotone(movable))
        return model

    def __call__(self, d, w, r) -> np.ndarray:
        """The cost ratio of the triples (arrays broadcast), relative to the base model."""
        d, w, r = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (d, w, r)))
        logw = np.log(np.clip(w, self.widths[0], 1.0))
        logr = np.log(np.clip(r, self.resolutions[0], 1.0))
        (i, tw), (j, tr) = _cell(self._log_widths, logw), _cell(self._log_resolutions, logr)
        fixed, movable = (_bilinear(grid, i, tw, j, tr) for grid in (self.fixed, self.movable))
        return (fixed + self._kept_share(d) * movable) / self.base_cost

    def _kept_share(self, d: np.ndarray) -> np.ndarray:
        """The share of removable blocks kept at depth ratio ``d``."""
        removable = self.blocks_total - self.blocks_fixed
        if removable == 0:
            return np.ones_like(d)
        kept = d * self.blocks_total - self.blocks_fixed
        return np.clip(kept / removable, 0.0, 1.0)

    def alone(self, target: float, lowest: Sequence[float]) -> tuple[float, float, float]:
        """For each dimension alone, the value at which the cost meets ``target``.

        ``lowest`` is the smallest (d, w, r) each may go to; a dimension that cannot meet
        the target alone stops there.
        """
        from scipy.optimize import brentq

        values = []
        for axis, low in enumerate(lowest):

            def excess(x, axis=axis):
                point = [1.0, 1.0, 1.0]
                point[axis] = x
                return float(self(*point)) - target

            values.append(low if excess(low) >= 0 else brentq(excess, low, 1.0, xtol=1e-4))
        return tuple(values)

    def describe(self) -> dict:
        """The grid and its values, JSON-ready (for reports and notebooks)."""
        return {
            "name": self.name,
            "widths": self.widths.tolist(),
            "resolutions": self.resolutions.tolist(),
            "fixed": self.fixed.tolist(),
            "removable_blocks": self.movable.tolist(),
            "blocks_total": self.blocks_total,
            "blocks_fixed": self.blocks_fixed,
        }


def _thinned(base: nn.Module, w: float, size, criterion, data, seed: int) -> nn.Module:
    """A copy of ``base`` keeping a fraction ``w`` of its channels by ``criterion``."""
    from tridim.prune.width import prune_width

    if w >= 1.0:
        return copy.deepcopy(base)
    example = torch.zeros(1, *size)
    return prune_width(base, w, example_input=example, criterion=criterion, data=data, seed=seed)


def _monotone(values: np.ndarray) -> np.ndarray:
    """Running maxima along both axes: timing noise must not make more cheaper."""
    return np.maximum.accumulate(np.maximum.accumulate(values, axis=0), axis=1)
