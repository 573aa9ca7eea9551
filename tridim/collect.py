"""Sample collection (Algorithm 1): prune each dimension alone, step by step.

From the trained model at (1, 1, 1), each dimension is shrunk on its own in
``rounds`` steps from 1 down to the value that alone meets the FLOPs target
(depth: T, width: sqrt(T), resolution: sqrt(T)); each step starts from the previous
step's model of the same dimension and is finetuned ``epochs_per_step`` epochs.

Everything lands in ``workdir``:

- ``collect.json`` — what is being collected (model, weights fingerprint, data, target,
  settings); a workdir never mixes two collections.
- ``samples.jsonl`` — the append-only journal, one sample per line, each written whole
  and flushed to disk before the next step starts.
- ``steps/<dimension>-<k>.pt`` and ``.json`` — the weights of each finished step's model
  and the :class:`~tridim.realise.Plan` that rebuilds its architecture from the base, so a resumed run continues where it stopped.

Resuming a killed run with the same workdir skips finished samples: nothing is lost
and nothing is written twice.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .data import DataBundle
from .dims.depth import find_blocks, minimum_depth
from .dims.resolution import ResolutionWrapper, reduced_size
from .measure import check_input_size, count_macs
from .realise import Plan
from .samples import Sample, append_sample, read_samples
from .space import Triple, check_ratio
from .train import evaluate, seed_everything, train

__all__ = ["collect", "CollectionSettings", "step_values", "DIMENSIONS", "JOURNAL_NAME"]

DIMENSIONS = ("depth", "width", "resolution")
#: The smallest image side (pixels) the resolution dimension goes down to.
MIN_SIDE = 4
JOURNAL_NAME = "samples.jsonl"
MANIFEST_NAME = "collect.json"


@dataclass(frozen=True)
class CollectionSettings:
    """The settings a collection is defined by; a workdir holds exactly one."""

    target_flops_ratio: float
    rounds: int = 4
    epochs_per_step: int = 2
    criterion: str = "bn_scale"
    seed: int = 0
    overshoot: float = 0.0
    lr: float = 0.02
    batch_size: int = 128

    def __post_init__(self) -> None:
        check_ratio(self.target_flops_ratio, "target_flops_ratio")
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds must be a positive integer, got {self.rounds!r}")
        if not isinstance(self.epochs_per_step, int) or self.epochs_per_step < 0:
            raise ValueError(
                f"epochs_per_step must be a non-negative integer, got {self.epochs_per_step!r}"
            )
        if not 0.0 <= self.overshoot < 0.5:
            raise ValueError(f"overshoot must be in [0, 0.5), got {self.overshoot}")


def step_values(target_flops_ratio: float, rounds: int, overshoot: float = 0.0) -> dict:
    """The coordinate each dimension is pruned to at every step.

    Depth alone meets a FLOPs target T at d = T, width and resolution at sqrt(T)
    (cost d * w^2 * r^2). ``overshoot`` goes that fraction further, so the fitted
    predictor also sees a little beyond the target.

    Returns
    -------
    dict
        ``{"depth": [d_1, ..., d_rounds], "width": [...], "resolution": [...]}``,
        each list decreasing from just below 1 to the end value.
    """
    target = check_ratio(target_flops_ratio, "target_flops_ratio")
    ends = {"depth": target, "width": math.sqrt(target), "resolution": math.sqrt(target)}
    values = {}
    for dim, end in ends.items():
        end = max(0.02, end * (1.0 - overshoot))
        values[dim] = [1.0 - (1.0 - end) * k / rounds for k in range(1, rounds + 1)]
    return values


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class _StepContext:
    """What every step of every dimension needs (picklable for process pools)."""

    base: nn.Module
    data: DataBundle
    input_size: tuple[int, int, int]
    base_macs: int
    settings: CollectionSettings
    workdir: str
    quiet: bool
    base_blocks: list = field(default_factory=list)
    min_side: int = MIN_SIDE


def collect(
    model: nn.Module,
    data: DataBundle,
    target_flops_ratio: float,
    *,
    workdir: str | os.PathLike,
    rounds: int = 4,
    epochs_per_step: int = 2,
    criterion: str = "bn_scale",
    seed: int = 0,
    overshoot: float = 0.0,
    lr: float = 0.02,
    executor: Executor | None = None,
    quiet: bool = False,
) -> list[Sample]:
    """Collect (d, w, r, accuracy) samples by iterative pruning and finetuning.

    Parameters
    ----------
    model : torch.nn.Module
        The trained base model (left unchanged).
    data : DataBundle
        Finetuning uses ``data.train``; accuracies are measured on ``data.val``.
    target_flops_ratio : float
        The FLOPs budget T in (0, 1]; each dimension alone is pruned down to meet it.
    workdir : path
        Folder of the journal, the manifest and the step checkpoints. Re-running with
        the same workdir resumes.
    rounds : int
        Steps per dimension; the collection has ``1 + 3 * rounds`` samples.
    epochs_per_step : int
        Finetuning epochs after each pruning step.
    criterion : str
        Width criterion (see :mod:`tridim.criteria`).
    seed : int
        Seeds every step; the same seed gives the same samples, with or without a resume.
    overshoot : float
        Prune this fraction past the value that meets the target.
    lr : float
        Peak finetuning learning rate.
    executor : concurrent.futures.Executor, optional
        Runs the three dimensions concurrently (e.g. a ThreadPoolExecutor); by default
        they run one after another in this process.
    quiet : bool
        Hide progress bars.

    Returns
    -------
    list of Sample
        Every sample of the collection, base first, in journal order.
    """
    settings = CollectionSettings(
        float(target_flops_ratio), rounds, epochs_per_step, criterion, seed, overshoot, lr
    )
    workdir = Path(workdir)
    input_size = check_input_size(data.input_shape)
    base = copy.deepcopy(model).eval()
    check_criterion_fits(base, criterion)
    _check_manifest(workdir, base, data, settings)
    journal = workdir / JOURNAL_NAME
    done = {s.extra.get("key") for s in _read_journal(journal)}

    context = _StepContext(
        base,
        data,
        input_size,
        count_macs(base, input_size),
        settings,
        str(workdir),
        quiet,
        base_blocks=find_blocks(base, input_size=input_size),
        min_side=minimum_side(base, input_size),
    )
    if "base" not in done:
        seed_everything(seed)
        accuracy = evaluate(base, data.loader("val", 256))
        append_sample(
            journal,
            Sample(
                1.0,
                1.0,
                1.0,
                accuracy,
                {
                    "key": "base",
                    "dimension": "base",
                    "step": 0,
                    "macs_ratio": 1.0,
                    "epochs": 0,
                    "seconds": 0.0,
                    "seed": seed,
                },
            ),
        )

    if executor is None:
        for dim in DIMENSIONS:
            _collect_dimension(dim, context)
    else:
        futures = [executor.submit(_collect_dimension, dim, context) for dim in DIMENSIONS]
        for future in futures:
            future.result()
    return _read_journal(journal)


def _read_journal(path: Path) -> list[Sample]:
    return read_samples(path) if path.is_file() else []


def _check_manifest(
    workdir: Path, base: nn.Module, data: DataBundle, settings: CollectionSettings
) -> None:
    spec = getattr(base, "tridim_spec", None)
    manifest = {
        "model": spec.to_dict() if spec is not None else type(base).__name__,
        "weights_fingerprint": fingerprint(base),
        "data": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
        },
        "settings": asdict(settings),
    }
    path = workdir / MANIFEST_NAME
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise ValueError(f"{path} is corrupted; delete the workdir or pick another") from None
        different = [k for k in manifest if existing.get(k) != manifest[k]]
        if different:
            raise ValueError(
                f"workdir {workdir} already holds a collection with a different "
                f"{', '.join(different)}; refusing to mix journals. Use a new workdir, or "
                "delete this one to start over."
            )
        return
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)


def _step_paths(context: _StepContext, dim: str, step: int) -> tuple[Path, Path]:
    folder = Path(context.workdir) / "steps"
    return folder / f"{dim}-{step}.pt", folder / f"{dim}-{step}.json"


def _load_step(context: _StepContext, dim: str, step: int) -> nn.Module | None:
    from .realise import Plan, apply_plan

    weights, meta = _step_paths(context, dim, step)
    if not (weights.is_file() and meta.is_file()):
        return None
    info = json.loads(meta.read_text())
    model = apply_plan(context.base, Plan.from_dict(info["plan"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model


def check_criterion_fits(model: nn.Module, criterion: str) -> None:
    """Refuse a BatchNorm-based criterion for a model without BatchNorm, naming the fix."""
    uses_bn = criterion in ("bn_scale", "bn_filter")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if uses_bn and not has_bn:
        raise ValueError(
            f"criterion {criterion!r} ranks channels by BatchNorm scales, but this model has "
            "no BatchNorm: pick a criterion that needs none, e.g. criterion='l1' (filter "
            "L1 norm, data-free) or 'taylor' (needs data)"
        )


def minimum_side(model: nn.Module, input_size, floor: int = None) -> int:
    """The smallest square input side (>= ``floor``, default :data:`MIN_SIDE`) the model runs at.

    Found by bisection on a forward pass of a zero image: pooling stages make small
    inputs fail (a VGG with five max-pools needs 32 pixels).
    """
    floor = MIN_SIDE if floor is None else floor
    channels, height, width = input_size
    high = min(height, width)

    def runs(side: int) -> bool:
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, channels, side, side))
        except RuntimeError:
            return False
        return True

    low = min(floor, high)
    if runs(low):
        return low
    while high - low > 1:  # runs(high) holds, runs(low) does not
        middle = (low + high) // 2
        if runs(middle):
            high = middle
        else:
            low = middle
    return high


def depth_can_change(model: nn.Module, input_size) -> bool:
    """Whether the model has at least one removable (identity-shortcut) block."""
    from .dims.depth import find_blocks

    return any(b.removable for b in find_blocks(model, input_size=input_size))


def _collect_dimension(dim: str, context: _StepContext) -> None:
    settings = context.settings
    journal = Path(context.workdir) / JOURNAL_NAME
    if dim == "depth" and not any(b.removable for b in context.base_blocks):
        return  # no block has an identity shortcut: depth stays at 1
    values = step_values(settings.target_flops_ratio, settings.rounds, settings.overshoot)[dim]
    done = {s.extra.get("key") for s in _read_journal(journal)}
    model = ResolutionWrapper(
        copy.deepcopy(context.base), context.input_size[1:], context.input_size
    )
    previous = 1.0
    for step, value in enumerate(values, start=1):
        key = f"{dim}:{step}"
        loaded = _load_step(context, dim, step)
        if loaded is not None:
            model, previous = loaded, value
            if key not in done:  # killed after the checkpoint, before the journal line
                info = json.loads(_step_paths(context, dim, step)[1].read_text())
                append_sample(journal, Sample.from_dict(info["sample"]))
            continue
        started = time.perf_counter()
        seed_everything(settings.seed + 1000 * DIMENSIONS.index(dim) + step)
        model = _prune_step(dim, model, value, previous, context)
        plan = step_plan(model, context, requested={dim: value})
        model.tridim_plan = plan
        train(
            model,
            context.data,
            settings.epochs_per_step,
            lr=settings.lr,
            batch_size=settings.batch_size,
            seed=settings.seed + step,
            evaluate_each_epoch=False,
            quiet=context.quiet,
        )
        accuracy = evaluate(model, context.data.loader("val", 256))
        realised = plan.realised
        sample = Sample(
            realised.d,
            realised.w,
            realised.r,
            accuracy,
            {
                "key": key,
                "dimension": dim,
                "step": step,
                "requested": value,
                "macs_ratio": plan.macs_ratio,
                "epochs": settings.epochs_per_step,
                "seconds": time.perf_counter() - started,
                "seed": settings.seed,
                "plan": plan.to_dict(),
            },
        )
        _save_step(context, dim, step, model, plan, sample)
        append_sample(journal, sample)
        previous = value


def _save_step(
    context: _StepContext, dim: str, step: int, model: nn.Module, plan, sample: Sample
) -> None:
    weights, meta = _step_paths(context, dim, step)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(weights.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps({"plan": plan.to_dict(), "sample": sample.to_dict()}))
    os.replace(tmp, meta)


def _prune_step(
    dim: str, model: ResolutionWrapper, value: float, previous: float, context: _StepContext
) -> ResolutionWrapper:
    """Shrink one dimension of ``model`` from ``previous`` to ``value`` (both vs the base)."""
    from .dims.depth import blocks_to_keep, find_blocks, remove_blocks, select_blocks
    from .dims.width import prune_width

    inner, size = model.model, model.size
    if dim == "depth":
        base_blocks = context.base_blocks
        keep = blocks_to_keep(max(value, minimum_depth(base_blocks)), base_blocks)
        current = find_blocks(inner, input_size=context.input_size)
        if keep < len(current):
            names = select_blocks(
                inner,
                keep / len(current),
                data=context.data,
                input_size=context.input_size,
                seed=context.settings.seed,
            )
            removal = getattr(inner, "tridim_width_removal", None)
            inner = remove_blocks(inner, names)
            if removal is not None:
                inner.tridim_width_removal = removal
    elif dim == "width":
        example = torch.zeros(1, context.input_size[0], *size)
        inner = prune_width(
            inner,
            value / previous,
            example_input=example,
            criterion=context.settings.criterion,
            data=context.data,
            seed=context.settings.seed,
        )
    else:
        size = reduced_size(
            max(value, context.min_side / min(context.input_size[1:])), context.input_size
        )
    return ResolutionWrapper(inner, size, context.input_size)


def step_plan(model: ResolutionWrapper, context: _StepContext, *, requested: dict) -> Plan:
    """The :class:`~tridim.realise.Plan` that rebuilds a step's ``model`` from the base.

    ``model`` was cut from the base by removing blocks (replaced by identity), removing
    channels (its inner model carries the cumulative ``tridim_width_removal``) and
    resizing its input; ``requested`` holds the coordinates asked for (others are 1).
    """
    from .dims.depth import remove_blocks
    from .dims.width import channel_groups
    from .realise import plan_of

    modules = dict(model.model.named_modules())
    removed = [b.name for b in context.base_blocks if isinstance(modules.get(b.name), nn.Identity)]
    small = torch.zeros(1, context.input_size[0], *model.size)
    channels_total = sum(
        g.size for g in channel_groups(remove_blocks(context.base, removed), small)
    )
    asked = Triple(
        requested.get("depth", 1.0), requested.get("width", 1.0), requested.get("resolution", 1.0)
    )
    return plan_of(
        context.base,
        model,
        requested=asked,
        removed_blocks=removed,
        blocks_total=len(context.base_blocks),
        channels_total=channels_total,
        base_macs=context.base_macs,
        criterion=context.settings.criterion,
    )
