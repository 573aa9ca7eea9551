"""optimize()'s arguments, checked before any training.

:class:`OptimizeSettings` (optimize's own settings beyond the collection's), the one budget
a run is given (:func:`latency_budget_from`), and whether the model, or a reused
predictor, can reach that budget at all (:func:`check_reachable`,
:func:`check_predictor_covers`, :func:`ends_alone`, :func:`cheapest_ratio`): each says
what to change in a ValueError instead of failing hours into a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from tridim.budget.cost_model import CostModel
from tridim.budget.latency import LatencyBudget
from tridim.cost.macs import count_macs
from tridim.cost.timing import check_runtime
from tridim.run.collect import _check_count, floors, minimum_side
from tridim.search.predictor import LowRankPolynomialRegressor
from tridim.search.solver import CostFunction
from tridim.search.space import flops_cost
from tridim.training.device import Execution

__all__ = [
    "OptimizeSettings",
    "latency_budget_from",
    "check_predictor_covers",
    "check_reachable",
    "ends_alone",
    "cheapest_ratio",
]


@dataclass(frozen=True)
class OptimizeSettings:
    """The settings of :func:`tridim.run.optimize.optimize` beyond the collection's,
    validated."""

    final_epochs: int = 8
    refine: int = 3
    distill: bool = True
    degree: int | str = "auto"
    rank: int | str = "auto"
    latency_batch: int = 64
    latency_repeats: int = 15
    base_training_epochs: int | None = None

    def __post_init__(self) -> None:
        _check_count(self.final_epochs, "final_epochs", minimum=0)
        if self.base_training_epochs is not None:
            _check_count(self.base_training_epochs, "base_training_epochs", minimum=1)
        _check_count(self.refine, "refine", minimum=0)
        if self.degree != "auto":
            _check_count(self.degree, "degree", minimum=1)
        if self.rank != "auto":
            _check_count(self.rank, "rank", minimum=1)
        _check_count(self.latency_batch, "latency_batch", minimum=1)
        _check_count(self.latency_repeats, "latency_repeats", minimum=1)

    def manifest(self) -> dict:
        """The settings that change what a run's trials compute."""
        reported_only = ("latency_batch", "latency_repeats", "base_training_epochs")
        return {k: v for k, v in asdict(self).items() if k not in reported_only}


def latency_budget_from(
    target_flops_ratio: float | None,
    target_speedup: float | None,
    target_latency_ms: float | None,
    runtime: str,
    settings: OptimizeSettings,
    execution: Execution,
) -> LatencyBudget | None:
    """The run's latency budget (None for a MACs budget).

    Parameters
    ----------
    target_flops_ratio, target_speedup, target_latency_ms : float or None
        The budgets optimize was given: exactly one is not None.
    runtime : str
        What a latency budget is measured on (checked for a MACs budget too).
    settings : OptimizeSettings
        Gives the latency batch and repeats.
    execution : Execution
        Gives the device a latency budget is measured on.

    Returns
    -------
    LatencyBudget or None

    Raises
    ------
    ValueError
        For no budget or more than one, or an unknown or unusable runtime.
    """
    given = [target_flops_ratio, target_speedup, target_latency_ms]
    if sum(value is not None for value in given) != 1:
        raise ValueError(
            "give exactly one budget: target_flops_ratio (MACs), target_speedup or "
            "target_latency_ms (latency)"
        )
    if target_flops_ratio is not None:
        check_runtime(runtime)
        return None
    device = "cpu" if execution.device is None else str(execution.device)
    return LatencyBudget(
        target_speedup,
        target_latency_ms,
        settings.latency_batch,
        runtime,
        device,
        repeats=settings.latency_repeats,
    )


def check_reachable(model: nn.Module, input_size: Sequence[int], target: float) -> None:
    """Refuse a MACs budget below what ``model`` can reach (:func:`cheapest_ratio`,
    with a 5% margin), before any training."""
    floor = cheapest_ratio(model, input_size)
    if target < floor * 1.05:
        raise ValueError(
            f"target_flops_ratio {target:g} is below what this model can reach (about "
            f"{floor:.4f} of its MACs with every removable block gone, 5% of the channels "
            "and the smallest input it runs at): raise the target or start from a larger model"
        )


def check_predictor_covers(
    predictor: LowRankPolynomialRegressor, target: float, cost: CostFunction | None = None
) -> None:
    """Refuse, before any training, a predictor that cannot answer for this budget.

    ``cost`` is the run's cost model (:func:`tridim.run.optimize.run_cost` reads it from a
    run folder); without it the analytic ``d * w**2 * r**2`` is used, and
    :func:`tridim.run.optimize.optimize` checks again with its measured cost before
    training anything.
    """
    if not isinstance(predictor, LowRankPolynomialRegressor) or not hasattr(predictor, "coef_"):
        raise TypeError(f"predictor must be a fitted LowRankPolynomialRegressor, got {predictor!r}")
    cost = flops_cost if cost is None else cost
    lower, upper = predictor.bounds_
    reachable = (float(cost(*lower)), float(cost(*upper)))
    if not reachable[0] <= target <= reachable[1]:
        raise ValueError(
            f"target_flops_ratio {target:g} is outside what the reused predictor covers: it "
            f"was fitted on samples spanning FLOPs ratios {reachable[0]:.4f} to "
            f"{reachable[1]:.4f}. Pick a target in that range, or collect new samples "
            "(optimize without predictor=)"
        )


def ends_alone(
    model: nn.Module, size: Sequence[int], cost: CostModel, target: float
) -> tuple[float, float, float]:
    """Each dimension's value that alone meets the latency target (within what it can reach).

    Raises
    ------
    ValueError
        If the target is below the latency table's cost with every dimension at its floor.
    """
    from tridim.prune.depth import find_blocks

    blocks = find_blocks(model, input_size=size)
    lowest_d, lowest_w, lowest_r = floors(blocks, minimum_side(model, size), size)
    lowest = (lowest_d, max(lowest_w, cost.widths[0]), max(lowest_r, 0.05))
    ends = cost.alone(target, lowest)
    if float(cost(*lowest)) > target:
        raise ValueError(
            f"the latency budget (ratio {target:.3f} of the base model) is below what this "
            f"model can reach by the latency table (about {float(cost(*lowest)):.3f} with "
            "every dimension at its floor): ask for less speed-up"
        )
    return ends


def cheapest_ratio(model: nn.Module, input_size: Sequence[int]) -> float:
    """About the smallest MACs ratio tridim can reach for this model.

    All removable blocks gone, 5% of the prunable channels kept (the width module's
    floor) and the smallest image side the model runs at
    (:func:`tridim.run.collect.minimum_side`), each measured alone and multiplied.
    """
    from tridim.prune.depth import find_blocks, remove_blocks
    from tridim.prune.resolution import with_resolution
    from tridim.prune.width import DEFAULT_MIN_KEEP, prune_width

    base_macs = count_macs(model, input_size)
    ratio = 1.0
    names = [b.name for b in find_blocks(model, input_size=input_size) if b.removable]
    if names:
        ratio *= count_macs(remove_blocks(model, names), input_size) / base_macs
    example = torch.zeros(1, *input_size)
    thin = prune_width(model, DEFAULT_MIN_KEEP, example_input=example, criterion="l1")
    ratio *= count_macs(thin, input_size) / base_macs
    r = min(1.0, minimum_side(model, input_size) / min(input_size[1:]))
    ratio *= count_macs(with_resolution(model, r, input_size), input_size) / base_macs
    return ratio
