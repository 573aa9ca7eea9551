"""Latency budgets: what "twice as fast" means, and a model cut to meet it as measured.

A :class:`LatencyBudget` names the target (a speed-up over the base model, or an absolute
latency), the runtime and batch size it is measured at. :func:`latency_cost_model`
measures and calibrates the per-layer table for it and returns the solver's C_lat(d, w, r)
(:class:`~tridim.budget.cost_model.CostModel`). :func:`realise_to_latency` cuts a triple's depth and
resolution, then searches width until the *measured* latency ratio against the base
model, timed in the same call, is within the budget's tolerance.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from tridim.atomic import atomic_write_json
from tridim.budget.cost_model import CostModel, latency_cost
from tridim.cost.latency import LatencyTable
from tridim.cost.runtimes import time_ratio
from tridim.cost.timing import check_runtime
from tridim.prune.resolution import ResolutionWrapper, reduced_size
from tridim.search.plan import Plan
from tridim.search.space import Triple, as_triple, check_input_size

__all__ = [
    "LatencyBudget",
    "PreparedBudget",
    "latency_cost_model",
    "prepare_budget",
    "realise_to_latency",
]

#: Width candidates tried by :func:`realise_to_latency` before it keeps the best.
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class LatencyBudget:
    """A latency budget, validated.

    Attributes
    ----------
    target_speedup : float, optional
        Base latency / pruned latency to reach (> 1).
    target_latency_ms : float, optional
        Or an absolute latency per batch, in milliseconds (exactly one of the two).
    batch_size : int
        Images per forward pass the budget is measured at.
    runtime : {"eager", "onnxruntime"}
        What runs the model (see :mod:`tridim.cost.runtimes`).
    device : str
        Eager runtime: where it runs.
    threads : int, optional
        Intra-op threads (default: PyTorch's count when timing).
    repeats : int
        Timed passes per measurement (the median is kept).
    tolerance : float
        How far above the budget a measured latency may be (relative).
    """

    target_speedup: float | None = None
    target_latency_ms: float | None = None
    batch_size: int = 64
    runtime: str = "eager"
    device: str = "cpu"
    threads: int | None = None
    repeats: int = 15
    tolerance: float = 0.05

    def __post_init__(self) -> None:
        if (self.target_speedup is None) == (self.target_latency_ms is None):
            raise ValueError("give exactly one of target_speedup and target_latency_ms")
        if self.target_speedup is not None and not _number_above(self.target_speedup, 1.0):
            raise ValueError(
                f"target_speedup must be a number above 1 (2.0 = twice as fast), "
                f"got {self.target_speedup!r}"
            )
        if self.target_latency_ms is not None and not _number_above(self.target_latency_ms, 0):
            raise ValueError(
                f"target_latency_ms must be a positive number, got {self.target_latency_ms!r}"
            )
        batch = self.batch_size
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"latency_batch must be a positive integer, got {batch!r}")
        check_runtime(self.runtime)
        if not 0 < self.tolerance < 0.5:
            raise ValueError(f"tolerance must be in (0, 0.5), got {self.tolerance!r}")

    def ratio(self, base_ms: float) -> float:
        """The latency ratio (pruned / base) to reach, given the base model's latency."""
        if self.target_speedup is not None:
            return 1.0 / float(self.target_speedup)
        ratio = float(self.target_latency_ms) / base_ms
        if ratio >= 1.0:
            raise ValueError(
                f"target_latency_ms {self.target_latency_ms:g} is not below the base model's "
                f"{base_ms:.3f} ms at batch {self.batch_size} on {self.runtime}: nothing to prune"
            )
        return ratio

    def time_ms(self, model: nn.Module, input_size: Sequence[int]) -> float:
        """The median measured latency of ``model`` on this budget's runtime and batch."""
        return self.table().time_ms(model, input_size)

    def compare(self, model: nn.Module, base: nn.Module, input_size: Sequence[int]) -> dict:
        """``model``'s latency as a ratio of ``base``'s, timed in alternating rounds
        (:func:`tridim.cost.runtimes.time_ratio`)."""
        return time_ratio(model, base, input_size, self.batch_size, **self._timing_options())

    def table(self) -> LatencyTable:
        """An empty per-layer table for this runtime, device, threads and batch."""
        return LatencyTable(batch_size=self.batch_size, **self._timing_options())

    def _timing_options(self) -> dict:
        """How this budget's models are timed (runtime, device, threads, repeats), as
        :func:`tridim.cost.timing.time_models` and :class:`LatencyTable` take them."""
        return {
            "runtime": self.runtime,
            "device": self.device,
            "threads": self.threads,
            "repeats": self.repeats,
        }

    def to_dict(self) -> dict:
        """The budget's fields (JSON-ready; a run folder's manifest records them)."""
        return asdict(self)


def _number_above(value, bound: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > bound
    )


def latency_cost_model(
    base: nn.Module,
    input_size: Sequence[int],
    table: LatencyTable,
    *,
    criterion: str = "bn_scale",
    data=None,
    seed: int = 0,
    **grid,
) -> CostModel:
    """C_lat(d, w, r) of ``base`` from ``table``, calibrated on a few realised variants.

    When the table has not been calibrated yet (``scale`` 1, no overhead), it is fitted to
    whole-model timings of the base model and three cheaper variants (half the removable
    blocks, half the channels, 0.6 of the resolution), realised without finetuning.
    """
    size = check_input_size(input_size)
    if (table.scale, table.overhead_ms) == (1.0, 0.0):
        variants = _calibration_variants(base, size, criterion, data, seed)
        table.calibrate([base, *variants], size)
    return CostModel(
        base,
        size,
        latency_cost(table),
        overhead=table.overhead_ms,
        criterion=criterion,
        data=data,
        name="latency",
        seed=seed,
        **grid,
    )


@dataclass
class PreparedBudget:
    """A latency budget ready to solve: its cost model and the ratio it asks for.

    Attributes
    ----------
    budget : LatencyBudget
    cost : CostModel
        C_lat(d, w, r) as a ratio of the base model's predicted latency.
    table : LatencyTable
        The calibrated per-layer table behind ``cost``.
    base_ms : float
        The base model's measured latency at the budget's batch.
    target_ratio : float
        Pruned / base latency to reach.
    calibration : dict
        The table's fit (``scale``, ``overhead_ms``, ``relative_errors``).
    """

    budget: LatencyBudget
    cost: CostModel
    table: LatencyTable
    base_ms: float
    target_ratio: float
    calibration: dict

    def to_dict(self) -> dict:
        """What a report says about the budget (JSON-ready)."""
        return {
            **self.budget.to_dict(),
            "base_ms": self.base_ms,
            "target_ratio": self.target_ratio,
            "table_entries": len(self.table.entries),
            "calibration": self.calibration,
        }


def prepare_budget(
    base: nn.Module,
    input_size: Sequence[int],
    budget: LatencyBudget,
    *,
    criterion: str = "bn_scale",
    data=None,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
) -> PreparedBudget:
    """Measure (or read back from ``cache``) the table, base latency and target of a run.

    The first run writes ``cache`` (JSON: the calibrated table, the base latency and the
    target ratio), so a resumed run solves against the same figures instead of new,
    noisy timings.
    """
    size = check_input_size(input_size)
    path = None if cache is None else Path(cache)
    if path is not None and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("budget") != budget.to_dict():
            raise ValueError(
                f"{path} holds the latency table of another budget ({saved.get('budget')}): "
                "use another workdir for this one"
            )
        table = LatencyTable.from_dict(saved["table"])
        base_ms, target, calibration = saved["base_ms"], saved["target_ratio"], saved["fit"]
    else:
        table = budget.table()
        calibration = table.calibrate(
            [base, *_calibration_variants(base, size, criterion, data, seed)], size
        )
        base_ms = budget.time_ms(base, size)
        target = budget.ratio(base_ms)
    cost = latency_cost_model(base, size, table, criterion=criterion, data=data, seed=seed)
    if path is not None and not path.is_file():
        record = {"budget": budget.to_dict(), "table": table.to_dict(), "base_ms": base_ms}
        record["target_ratio"] = target
        atomic_write_json(path, {**record, "fit": calibration})
    return PreparedBudget(budget, cost, table, base_ms, target, calibration)


def _calibration_variants(base, size, criterion, data, seed) -> list[nn.Module]:
    from tridim.prune.depth import find_blocks, remove_blocks
    from tridim.prune.resolution import with_resolution
    from tridim.prune.width import prune_width

    example = torch.zeros(1, *size)
    thin = prune_width(base, 0.5, example_input=example, criterion=criterion, data=data, seed=seed)
    variants = [thin, with_resolution(base, 0.6, size)]
    removable = [b.name for b in find_blocks(base, input_size=size) if b.removable]
    if removable:
        variants.append(remove_blocks(base, removable[::2]))
    return variants


def realise_to_latency(
    model: nn.Module,
    triple,
    budget: LatencyBudget,
    *,
    input_size: Sequence[int],
    data=None,
    criterion: str = "bn_scale",
    gains=None,
    seed: int = 0,
    base_ms: float | None = None,
    channel_multiple: int = 1,
) -> tuple[ResolutionWrapper, Plan, dict]:
    """Realise ``triple``'s depth and resolution, then the width that meets ``budget``.

    Each candidate width is realised (:func:`tridim.prune.realise`) and timed against the base
    model in alternating rounds on the budget's runtime (:meth:`LatencyBudget.compare`),
    bisecting in ``log w`` from the triple's own ``w``, until the measured latency ratio
    is within the budget's tolerance (at most :data:`MAX_ATTEMPTS` candidates). The widest
    candidate that meets the budget is kept. When depth and resolution alone are faster
    than the tolerance allows (the latency table misjudged the triple), the resolution is
    raised again by bisection over whole pixels, and width searched at the first side that
    misses the budget: the slowest candidate that meets it is kept.

    ``base_ms`` is the base model's latency measured when the budget was prepared
    (:attr:`PreparedBudget.base_ms`): an absolute budget's ratio is taken from it, so every
    trial aims at the same ratio. Without it the base model is timed here.
    ``channel_multiple`` is passed on to :func:`tridim.prune.realise`.

    Returns
    -------
    pruned, plan
        As from :func:`tridim.prune.realise`.
    measured : dict
        ``{"base_ms", "pruned_ms", "target_ratio", "ratio", "attempts", "timing"}``:
        every candidate's ``w``, ``r`` and measured ratio, and the state it was timed in.

    Raises
    ------
    ValueError
        If even the thinnest width tried does not meet the budget.
    """
    from tridim.prune.depth import block_gains
    from tridim.prune.realise import realise

    size = check_input_size(input_size)
    requested = as_triple(triple)
    if requested.d < 1 and gains is None and data is not None:
        gains = block_gains(model, data, seed=seed)
    absolute = budget.target_latency_ms is not None
    if absolute and base_ms is None:
        base_ms = budget.time_ms(model, size)
    target = budget.ratio(base_ms if absolute else math.nan)

    def attempt(w: float, r: float):
        wrapped, plan = realise(
            model,
            Triple(requested.d, w, r),
            input_size=size,
            data=data,
            criterion=criterion,
            gains=gains,
            seed=seed,
            channel_multiple=channel_multiple,
        )
        timing = budget.compare(wrapped, model, size)
        timings.append({**timing, "w": w, "r": r})
        return wrapped, plan, timing["ratio"]

    timings: list[dict] = []
    best, tried = _search_width(
        lambda w: attempt(w, requested.r), requested.w, target, budget.tolerance
    )
    if best is None:
        w, ratio = min(tried)
        raise ValueError(
            f"no width meets the latency budget at d={requested.d:.3f}, r={requested.r:.3f}: "
            f"the thinnest tried (w={w:.3f}) measured a latency ratio of {ratio:.3f} "
            f"against the target {target:.3f}; lower d or r, or ask for less speed-up"
        )
    if best[2] < target * (1 - budget.tolerance) and best[1].realised.w >= 1.0:
        best = _give_resolution_back(attempt, best, requested.r, size, target, budget.tolerance)
    wrapped, plan, ratio = best
    chosen = next(t for t in timings if t["ratio"] == ratio)
    measured = {
        "base_ms": chosen["base_ms"],
        "pruned_ms": chosen["model_ms"],
        "target_ratio": target,
        "ratio": ratio,
        "attempts": [{k: t[k] for k in ("w", "r", "ratio")} for t in timings],
        "timing": chosen["state"],
    }
    return wrapped, plan, measured


def _give_resolution_back(attempt, best, r: float, size, target: float, tolerance: float):
    """Depth and resolution alone are faster than asked (the latency table misjudged small
    inputs): raise the resolution by bisection over whole pixels while the full-width
    model meets the budget; at the first side that misses it, search width there too.
    Returns the candidate nearest the target among those meeting the budget."""
    side = reduced_size(r, size)[0]
    low, high = side, size[1]  # low meets the budget at full width, high (the base) does not
    candidates = [best]
    while high - low > 1:
        middle = (low + high) // 2
        found = attempt(1.0, middle / size[1])
        if found[2] <= target * (1 + tolerance):
            low, candidates = middle, candidates + [found]
            if found[2] >= target * (1 - tolerance):
                return found
        else:
            high = middle
    if high < size[1]:
        thinner, _ = _search_width(lambda w: attempt(w, high / size[1]), 1.0, target, tolerance)
        if thinner is not None:
            candidates.append(thinner)
    return max(candidates, key=lambda c: c[2])  # the slowest that meets: the most kept


def _search_width(attempt, start: float, target: float, tolerance: float):
    """Bisection in log w for the target ratio, from ``start``.

    Returns the widest candidate meeting the budget ``(model, plan, ratio)`` (or None)
    and every ``(w, ratio)`` tried.
    """
    low, high = 0.05, 1.0
    w = min(max(start, low), high)
    best, best_w, tried = None, -1.0, []
    for _ in range(MAX_ATTEMPTS):
        wrapped, plan, ratio = attempt(w)
        tried.append((w, ratio))
        if ratio <= target * (1 + tolerance) and w > best_w:
            best, best_w = (wrapped, plan, ratio), w
        if target * (1 - tolerance) <= ratio <= target * (1 + tolerance):
            break
        if ratio > target:
            high = w
        else:
            low = w
            if w >= 1.0:
                break  # depth and resolution alone meet it
        w = math.sqrt(low * high)
    return best, tried
