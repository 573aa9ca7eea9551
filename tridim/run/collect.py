"""Sample collection: the (d, w, r, accuracy) points the accuracy predictor learns from.

From the trained model at (1, 1, 1), each dimension is shrunk on its own in ``rounds``
steps from 1 down to the value that alone meets the FLOPs target (depth: T, width:
sqrt(T), resolution: sqrt(T)), and ``design`` mixed triples shrink several at once on
the budget's iso-cost surface (:mod:`tridim.search.design`). Each point is a
:class:`~tridim.run.trial.Trial`, made in one of two ways:

- ``collection="one-shot"`` (default): every sample is cut from the base model by
  :func:`~tridim.realise.realise` and finetuned ``epochs_per_step`` epochs — the recipe
  of the refine trials and of the final model, which differs only in its epochs (and
  may go on from the last refine trial's model); so the predictor learns what the final
  model will get;
- ``collection="chain"`` (the paper's Algorithm 1): each axis step is cut from the
  previous step's finetuned model of the same dimension, so step k has had k finetunes.

Everything lands in the run folder (:class:`~tridim.run.store.RunStore`): the manifest says
what is being collected, the journal gets one sample per finished step, and each step's
weights and plan are stored so that a re-run on the same folder resumes where it stopped:
nothing is lost and nothing is written twice.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import numbers
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from tridim.cost.macs import check_input_size, count_macs
from tridim.prune.depth import BlockGain, block_gains, find_blocks
from tridim.prune.width import check_channel_multiple
from tridim.run.cluster import RayTrials, check_cluster, ray_trials
from tridim.run.progress import Stage
from tridim.run.store import GAINS, RunStore
from tridim.run.trial import Trial, TrialContext, evaluate_split, run_trial
from tridim.search.design import DEFAULT_DESIGN, axis_values, mixed_triples
from tridim.search.samples import Sample
from tridim.search.space import Triple, check_ratio
from tridim.training.data import DataBundle
from tridim.training.device import Execution, eval_mode, model_device
from tridim.training.distributed import barrier, setup
from tridim.training.models import spec_of
from tridim.training.recipe import Recipe, check_picklable, probe_bundle, user_recipe
from tridim.training.train import check_model_fits_data, seed_everything

__all__ = [
    "collect",
    "CollectionSettings",
    "step_values",
    "collection_trials",
    "open_run",
    "DIMENSIONS",
    "auto_sample_fraction",
]

DIMENSIONS = ("depth", "width", "resolution")
#: How collection samples are made (see the module docstring).
COLLECTIONS = ("one-shot", "chain")
#: The smallest image side (pixels) the resolution dimension goes down to.
MIN_SIDE = 4
#: ``sample_fraction="auto"``: a proxy keeps at least this many training images...
PROXY_MIN_IMAGES = 2500
#: ... and at least this share of them (the smallest share measured faithful).
PROXY_MIN_FRACTION = 0.25


def auto_sample_fraction(train_examples: int) -> float:
    """The share of a training split of ``train_examples`` images samples finetune on by
    default: all of a small split, else ``PROXY_MIN_IMAGES`` of it, never under
    ``PROXY_MIN_FRACTION`` (``tridim bench proxy``; README "Samples on a proxy")."""
    if train_examples <= PROXY_MIN_IMAGES:
        return 1.0
    return max(PROXY_MIN_FRACTION, PROXY_MIN_IMAGES / train_examples)


@dataclass(frozen=True)
class CollectionSettings:
    """The settings a collection is defined by, validated; a run folder holds one.

    ``criterion="auto"`` stands for ``bn_scale`` on a model with BatchNorm and ``l1``
    (filter L1 norms, data-free) on one without; :meth:`for_model` resolves it.
    ``collection`` says how samples are made (:data:`COLLECTIONS`), ``design`` how many
    mixed triples join the axis points (one-shot only), and ``distill`` whether every
    trial's finetune distils from the base model.
    """

    target_flops_ratio: float
    rounds: int = 2
    epochs_per_step: int = 2
    criterion: str = "auto"
    seed: int = 0
    overshoot: float = 0.0
    lr: float = 0.02
    batch_size: int = 128
    ends: tuple[float, float, float] | None = None
    collection: str = "one-shot"
    design: int = DEFAULT_DESIGN
    distill: bool = True
    channel_multiple: int = 1
    sample_fraction: float | str = "auto"

    def __post_init__(self) -> None:
        from tridim.prune.criteria import CRITERIA

        if self.ends is not None:
            if len(self.ends) != 3:
                raise ValueError(f"ends must be (d, w, r), got {self.ends!r}")
            ends = tuple(check_ratio(x, name) for x, name in zip(self.ends, DIMENSIONS))
            object.__setattr__(self, "ends", ends)
        object.__setattr__(
            self, "target_flops_ratio", check_ratio(self.target_flops_ratio, "target_flops_ratio")
        )
        _check_count(self.rounds, "rounds", minimum=1)
        _check_count(self.epochs_per_step, "epochs_per_step", minimum=0)
        _check_count(self.seed, "seed", minimum=None)
        if self.criterion not in ("auto", *CRITERIA):
            raise ValueError(
                f"criterion must be auto or one of {', '.join(CRITERIA)}; got {self.criterion!r}"
            )
        if not 0.0 <= self.overshoot < 0.5:
            raise ValueError(f"overshoot must be in [0, 0.5), got {self.overshoot}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.collection not in COLLECTIONS:
            raise ValueError(
                f"collection must be one of {', '.join(COLLECTIONS)}; got {self.collection!r}"
            )
        _check_count(self.design, "design", minimum=0)
        if self.collection == "chain" and self.design:
            raise ValueError(
                "design points are one-shot cuts: use collection='one-shot', or design=0 "
                "with collection='chain'"
            )
        if not isinstance(self.distill, bool):
            raise ValueError(f"distill must be True or False, got {self.distill!r}")
        check_channel_multiple(self.channel_multiple)
        if self.sample_fraction != "auto":
            fraction = check_ratio(self.sample_fraction, "sample_fraction")
            object.__setattr__(self, "sample_fraction", fraction)

    def manifest(self) -> dict:
        """The settings as the run folder's manifest records them (``ends`` only if set)."""
        fields = asdict(self)
        for name, default in (("channel_multiple", 1), ("sample_fraction", 1.0)):
            if fields[name] == default:  # as run folders made before the option read
                del fields[name]
        if fields["ends"] is None:
            del fields["ends"]
        else:
            fields["ends"] = list(fields["ends"])
        return fields

    def for_data(self, train_examples: int) -> CollectionSettings:
        """These settings with ``sample_fraction="auto"`` resolved for a training split of
        ``train_examples`` (:func:`auto_sample_fraction`)."""
        if self.sample_fraction != "auto":
            return self
        fraction = auto_sample_fraction(train_examples)
        return dataclasses.replace(self, sample_fraction=fraction)

    def for_model(self, model: nn.Module) -> CollectionSettings:
        """These settings with ``criterion="auto"`` resolved for ``model``."""
        if self.criterion != "auto":
            return self
        return dataclasses.replace(self, criterion=auto_criterion(model))


def has_batchnorm(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is a BatchNorm."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def auto_criterion(model: nn.Module) -> str:
    """``bn_scale`` if the model has BatchNorm layers, else ``l1`` (needs no BatchNorm)."""
    return "bn_scale" if has_batchnorm(model) else "l1"


def _check_count(value, name: str, *, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer, got {value!r}")


#: The coordinate each dimension alone is pruned to at every step (kept under this name).
step_values = axis_values


def collection_trials(
    settings: CollectionSettings,
    *,
    depth: bool = True,
    lowest: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> list[list[Trial]]:
    """The collection's trials, as lists that must each run in order.

    One-shot: one list per trial (every trial is independent), axis points first, then
    the mixed design. Chain: one list per dimension, each step the next one's parent.

    Parameters
    ----------
    settings : CollectionSettings
    depth : bool
        Whether the model has removable blocks; without, no depth trial is made.
    lowest : (d, w, r)
        The model's floors; one-shot triples below them are raised to them.
    """
    values = axis_values(
        settings.target_flops_ratio, settings.rounds, settings.overshoot, settings.ends
    )
    if settings.collection == "chain":
        return _chains(settings, values, depth)
    runs = []
    for dim in DIMENSIONS:
        if dim == "depth" and not depth:
            continue
        for step, value in enumerate(values[dim], start=1):
            point = [1.0, 1.0, 1.0]
            point[DIMENSIONS.index(dim)] = value
            triple = Triple(*(max(x, floor) for x, floor in zip(point, lowest)))
            runs.append(
                _one_shot(settings, f"{dim}:{step}", dim, step, triple, value, len(values[dim]))
            )
    design = mixed_triples(settings.target_flops_ratio, settings.design, depth=depth, lowest=lowest)
    for step, triple in enumerate(design, start=1):
        runs.append(_one_shot(settings, f"design:{step}", "design", step, triple, 1.0, len(design)))
    return [[trial] for trial in runs]


def _one_shot(settings, key, kind, step, triple, value, count) -> Trial:
    return Trial(
        key=key,
        kind=kind,
        epochs=settings.epochs_per_step,
        seed=settings.seed,
        train_seed=settings.seed,
        step=step,
        value=value,
        triple=triple,
        distill=settings.distill,
        label=f"{kind} {step}/{count}",
    )


def _chains(settings: CollectionSettings, values: dict, depth: bool) -> list[list[Trial]]:
    chains = []
    for index, dim in enumerate(DIMENSIONS):
        chain, parent, previous = [], None, 1.0
        for step, value in enumerate(values[dim] if depth or dim != "depth" else [], start=1):
            key = f"{dim}:{step}"
            chain.append(
                Trial(
                    key=key,
                    kind=dim,
                    epochs=settings.epochs_per_step,
                    seed=settings.seed + 1000 * index + step,
                    train_seed=settings.seed + step,
                    step=step,
                    value=value,
                    previous=previous,
                    parent=parent,
                    distill=settings.distill,
                    label=f"{dim} {step}/{len(values[dim])}",
                )
            )
            parent, previous = key, value
        chains.append(chain)
    return chains


def fingerprint(model: nn.Module) -> str:
    """A short hash of a model's state dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def collect(
    model: nn.Module,
    data: DataBundle | None = None,
    target_flops_ratio: float | None = None,
    *,
    workdir: str | os.PathLike,
    finetune: Callable | None = None,
    evaluate: Callable | None = None,
    higher_is_better: bool = True,
    example_input: torch.Tensor | None = None,
    probe_data: Iterable | None = None,
    rounds: int = 2,
    epochs_per_step: int = 2,
    criterion: str = "auto",
    seed: int = 0,
    overshoot: float = 0.0,
    lr: float = 0.02,
    collection: str = "one-shot",
    design: int = DEFAULT_DESIGN,
    distill: bool = True,
    channel_multiple: int = 1,
    sample_fraction: float | str = "auto",
    executor: Executor | None = None,
    cluster: str | None = None,
    quiet: bool = False,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
) -> list[Sample]:
    """Collect (d, w, r, accuracy) samples: prune, finetune and measure.

    Parameters
    ----------
    model : torch.nn.Module
        The trained base model (left unchanged).
    data : DataBundle, optional
        tridim's own loop finetunes on ``data.train`` and measures accuracies on
        ``data.val``; optional with a user's loop (see :func:`tridim.run.optimize`).
    target_flops_ratio : float
        The FLOPs budget T in (0, 1]; each dimension alone is pruned down to meet it.
    workdir : path
        The run folder (journal, manifest, step checkpoints). Re-running with the same
        folder resumes.
    finetune, evaluate, higher_is_better, example_input, probe_data
        A user's training loop and metric, as in :func:`tridim.run.optimize`.
    rounds : int
        Axis points per dimension.
    epochs_per_step : int
        Finetuning epochs of each sample.
    criterion : str
        Width criterion (see :mod:`tridim.prune.criteria`); ``"auto"`` (default) takes
        ``bn_scale`` on a model with BatchNorm, else ``l1``.
    seed : int
        Seeds every step; the same seed gives the same samples, with or without a resume.
    overshoot : float
        Prune this fraction past the value that meets the target.
    lr : float
        Peak finetuning learning rate.
    collection : {"one-shot", "chain"}
        How samples are made (module docstring): cut from the base model like the final
        model (default), or the paper's chains of iterative prunes.
    design : int
        Mixed triples on the budget's iso-cost surface besides the axis points
        (one-shot only; :mod:`tridim.search.design`; default none, see
        :data:`~tridim.search.design.DEFAULT_DESIGN`). The collection has
        ``1 + 3 * rounds + design`` samples (fewer when depth cannot change).
    distill : bool
        Distil from the base model while finetuning every sample.
    channel_multiple : int
        Every pruned channel group keeps a multiple of this many channels (1: any
        count; 8: what vectorised kernels prefer, see README "Latency you can rely on").
    sample_fraction : float in (0, 1] or "auto"
        Samples finetune on this fraction of the training split, the same seeded subset
        for every sample of the run (a proxy: cheaper samples; accuracy is still
        measured on the whole validation split). ``"auto"`` (default):
        :func:`auto_sample_fraction` of the split's size.
    executor : concurrent.futures.Executor, optional
        Runs independent trials (one-shot samples, or the three chains) concurrently (e.g. a ThreadPoolExecutor); by default
        they run one after another in this process.
    cluster : {None, "processes", "ray"}
        Run independent trials side by side: ``"processes"``, worker processes on this
        machine with an even share of its cores each; ``"ray"``, Ray tasks (connecting
        to ``RAY_ADDRESS``, else starting a local Ray), each on its share of the CPUs.
        This process writes the run folder (:mod:`tridim.run.cluster`).
    quiet : bool
        Hide progress bars.
    device : str or torch.device
        ``"auto"`` (default: CUDA if available, else MPS, else CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` or ``"mps"``: where every trial trains and is measured
        (the given model stays where it is; a copy moves).
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of training and evaluation.
    channels_last : bool
        NHWC memory format for models and batches.

    Returns
    -------
    list of Sample
        Every sample of the journal, base first, in journal order.
    """
    execution = Execution.of(device, precision, channels_last)
    settings = CollectionSettings(
        target_flops_ratio,
        rounds,
        epochs_per_step,
        criterion,
        seed,
        overshoot,
        lr,
        collection=collection,
        design=design,
        distill=distill,
        channel_multiple=channel_multiple,
        sample_fraction=sample_fraction,
    )
    recipe = user_recipe(finetune, evaluate, higher_is_better=higher_is_better)
    if executor is not None and recipe is not None and recipe.checkpoints_epochs:
        raise ValueError(
            "executor runs trials side by side, but a finetune object with state_dict() is "
            "one object for every trial: drop executor, or pass a plain finetune function"
        )
    data = run_data(model, data, recipe, example_input, probe_data, sample_fraction, cluster)
    settings = for_run_data(settings.for_model(model), data, recipe)
    extra = None if recipe is None else {"recipe": recipe.describe()}
    context = open_run(
        model,
        data,
        settings,
        RunStore(workdir),
        extra_manifest=extra,
        quiet=quiet,
        execution=execution,
        recipe=recipe,
    )
    with ray_trials(context, cluster) as trials:
        return run_collection(context, settings, executor=executor, cluster=trials)


def for_run_data(settings: CollectionSettings, data: DataBundle, recipe) -> CollectionSettings:
    """``settings`` with ``sample_fraction="auto"`` resolved for the run's training split;
    with a user's loop (``recipe``), which picks its own data, the proxy share is 1."""
    if recipe is not None:
        return dataclasses.replace(settings, sample_fraction=1.0)
    return settings.for_data(len(data.train))


def run_data(model, data, recipe, example_input, probe_data, sample_fraction, cluster):
    """The run's data, checked before any work: ``data``, or with a user's loop and no
    data the probe bundle of ``example_input`` and ``probe_data``; also checks that the
    model fits it and that the cluster is known (and usable)."""
    check_cluster(cluster)
    if recipe is None:
        if data is None:
            raise ValueError(
                "data is missing: pass a DataBundle (tridim.data.load) for tridim's own "
                "training loop, or your own loop with finetune= and evaluate="
            )
    else:
        if sample_fraction not in ("auto", 1, 1.0):
            raise ValueError(
                f"sample_fraction={sample_fraction!r} needs tridim's own loop: a user's "
                "finetune() chooses its own data (leave sample_fraction at auto)"
            )
        if cluster is not None:
            check_picklable(recipe, cluster)
        if data is None:
            if example_input is None:
                raise ValueError(
                    "example_input is missing: with your own loop and no data, pass one "
                    "input (C, H, W) so tridim knows the input size"
                )
            data = probe_bundle(model, example_input, probe_data)
            if probe_data is None and depth_can_change(model, data.input_shape):
                raise ValueError(
                    "probe_data is missing: this model has removable blocks, and their "
                    "linear probes need inputs (about 512): pass an iterable of batches"
                )
    check_model_fits_data(model, data)
    return data


def open_run(
    model: nn.Module,
    data: DataBundle,
    settings: CollectionSettings,
    store: RunStore,
    *,
    extra_manifest: dict | None = None,
    quiet: bool = False,
    execution: Execution | None = None,
    recipe: Recipe | None = None,
) -> TrialContext:
    """Check the model against the data and settings (``sample_fraction`` resolved:
    :func:`for_run_data`), open the run folder, and return the context every trial of
    the run shares.

    Raises
    ------
    ValueError
        If the model does not fit the data, the criterion does not fit the model, or the
        folder holds a different run (:class:`~tridim.run.store.RunMismatch`).
    """
    check_model_fits_data(model, data)
    if settings.sample_fraction == "auto":
        raise ValueError("settings.sample_fraction is 'auto': resolve it with for_run_data first")
    input_size = check_input_size(data.input_shape)
    base = copy.deepcopy(model).eval()
    execution = execution or Execution()
    # under torchrun: join the process group, one device per rank
    execution = dataclasses.replace(execution, device=setup(execution.device))
    execution.place(base)  # the copy: the caller's model stays where it is
    check_criterion_fits(base, settings.criterion)
    store.open({**run_manifest(base, data, settings), **(extra_manifest or {})})
    blocks = find_blocks(base, input_size=input_size)
    removable = any(b.removable for b in blocks)
    return TrialContext(
        base=base,
        data=data,
        store=store,
        input_size=input_size,
        base_macs=count_macs(base, input_size),
        base_blocks=blocks,
        # once, here: trials on threads share them and Ray tasks get them with the context
        gains=_run_gains(store, base, data, settings.seed) if removable else None,
        min_side=minimum_side(base, input_size),
        target_flops_ratio=settings.target_flops_ratio,
        criterion=settings.criterion,
        channel_multiple=settings.channel_multiple,
        sample_data=_sample_data(data, settings),
        lr=settings.lr,
        batch_size=settings.batch_size,
        seed=settings.seed,
        quiet=quiet,
        execution=execution,
        recipe=recipe,
    )


def _run_gains(store: RunStore, base: nn.Module, data: DataBundle, seed: int) -> list:
    """The base model's block gains, measured once per run folder and then read back,
    so a resumed run cuts the blocks it cut before (even if a user's probe loader
    shuffles)."""
    recorded = store.read_json(GAINS)
    if recorded is None:
        gains = block_gains(base, data, seed=seed)
        store.write_json(GAINS, [gain.to_dict() for gain in gains])
        return gains
    try:
        return [BlockGain(**gain) for gain in recorded]
    except TypeError as error:
        raise ValueError(f"{store.file(GAINS)} is not a list of block gains: {error}") from None


def run_collection(
    context: TrialContext,
    settings: CollectionSettings,
    *,
    executor: Executor | None = None,
    cluster: RayTrials | None = None,
) -> list[Sample]:
    """Record the base sample, then run every collection trial not yet in the store.

    The three dimension chains run one after another, or side by side on ``executor``
    (threads of this process) or on ``cluster`` (Ray tasks; :mod:`tridim.run.cluster`).
    Returns the collection's samples (base first), without the journal's other trials.
    """
    store = context.store
    if store.sample("base") is None:
        seed_everything(settings.seed)
        accuracy = evaluate_split(context.base, "val", context)
        store.record(Sample(1.0, 1.0, 1.0, accuracy, _base_extra(settings.seed)))
    barrier()
    depth = any(b.removable for b in context.base_blocks)
    lowest = floors(context.base_blocks, context.min_side, context.input_size)
    chains = collection_trials(settings, depth=depth, lowest=lowest)
    with Stage("collect", sum(map(len, chains)), quiet=context.quiet) as stage:
        if cluster is not None:
            cluster.run_chains(chains, stage)
        elif executor is None:
            for chain in chains:
                _run_chain(chain, context, stage)
        else:
            futures = [executor.submit(_run_chain, chain, context, stage) for chain in chains]
            for future in futures:
                future.result()
    kinds = ("base", *DIMENSIONS, "design")
    return [s for s in store.samples() if s.extra.get("dimension") in kinds]


def _sample_data(data: DataBundle, settings: CollectionSettings) -> DataBundle | None:
    """The training subset every sample of the run finetunes on (None: all of it)."""
    if settings.sample_fraction >= 1.0:
        return None
    kept = max(1, round(settings.sample_fraction * len(data.train)))
    return data.subset(train=kept, seed=settings.seed)


def floors(blocks, min_side: int, input_size) -> tuple[float, float, float]:
    """The lowest (d, w, r) a model can be cut to, from its blocks
    (:func:`~tridim.prune.depth.find_blocks`) and the smallest side it runs at
    (:func:`minimum_side`)."""
    from tridim.prune.depth import minimum_depth
    from tridim.prune.width import DEFAULT_MIN_KEEP

    lowest_d = minimum_depth(blocks) if any(b.removable for b in blocks) else 1.0
    lowest_r = min(1.0, min_side / min(input_size[1:]))
    return (lowest_d, DEFAULT_MIN_KEEP, lowest_r)


def _base_extra(seed: int) -> dict:
    return {
        "key": "base",
        "dimension": "base",
        "step": 0,
        "macs_ratio": 1.0,
        "epochs": 0,
        "seconds": 0.0,
        "seed": seed,
    }


def _run_chain(chain: list[Trial], context: TrialContext, stage: Stage) -> None:
    for trial in chain:
        sample = run_trial(trial, context).sample
        stage.advance(f"{trial.key} accuracy {sample.accuracy:.4f}")


def run_manifest(base: nn.Module, data: DataBundle, settings: CollectionSettings) -> dict:
    """What a run folder is for: model, weights fingerprint, data and settings."""
    spec = spec_of(base)
    return {
        "model": spec.to_dict() if spec is not None else type(base).__name__,
        "weights_fingerprint": fingerprint(base),
        "data": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
        },
        "settings": settings.manifest(),
    }


def check_criterion_fits(model: nn.Module, criterion: str) -> None:
    """Refuse a BatchNorm-based criterion for a model without BatchNorm, naming the fix."""
    if criterion in ("bn_scale", "bn_filter") and not has_batchnorm(model):
        raise ValueError(
            f"criterion {criterion!r} ranks channels by BatchNorm scales, but this model has "
            "no BatchNorm: pick a criterion that needs none, e.g. criterion='l1' (filter "
            "L1 norm, data-free) or 'taylor' (needs data)"
        )


def minimum_side(model: nn.Module, input_size, floor: int | None = None) -> int:
    """The smallest square input side (>= ``floor``, default :data:`MIN_SIDE`) the model runs at.

    Found by bisection on a forward pass of a zero image: pooling stages make small
    inputs fail (a VGG with five max-pools needs 32 pixels).
    """
    floor = MIN_SIDE if floor is None else floor
    channels, height, width = input_size
    high = min(height, width)

    def runs(side: int) -> bool:
        try:
            with torch.no_grad(), eval_mode(model):
                model(torch.zeros(1, channels, side, side, device=model_device(model)))
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
    return any(b.removable for b in find_blocks(model, input_size=input_size))
