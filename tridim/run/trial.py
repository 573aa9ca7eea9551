"""Trials: the one unit of work of a run — cut a model, finetune it, measure it.

Every model a run trains is a :class:`Trial`: each collection sample (``depth:2``,
``width:3``, ``design:1``, ...), each verify-and-refit step (``refine:1``) and the final
model (``final``). A trial is plain data; :func:`run_trial` executes it against a
:class:`TrialContext` and the run's :class:`~tridim.run.store.RunStore`:

1. if the store holds the finished trial, return it (a re-run skips it);
2. seed, then cut the model: a trial with a ``triple`` is realised from the base model
   (:func:`~tridim.realise.realise`, with the run's criterion and seed, the same for
   samples, refine and final trials; refine and final meet the run's budget exactly);
   a chain step (``collection="chain"``) shrinks one dimension of its parent's model;
3. finetune (resuming from the trial's epoch checkpoint if a crash left one), evaluate;
   the final trial goes on from the last refine trial's model instead when both cut the
   same network and train on the same data (its epochs then count);
4. store weights, plan and sample; append the sample to the journal (all but ``final``).

So whatever runs the trials — this process, an executor, later a cluster — needs to
know nothing about which kind a trial is.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from tridim.budget.latency import LatencyBudget, realise_to_latency
from tridim.prune.depth import (
    blocks_to_keep,
    find_blocks,
    minimum_depth,
    remove_blocks,
    select_blocks,
)
from tridim.prune.realise import apply_plan, count_channels, plan_of, realise
from tridim.prune.resolution import ResolutionWrapper, reduced_size
from tridim.run.store import RunStore, StepRecord
from tridim.search.plan import Plan
from tridim.search.samples import Sample
from tridim.search.space import Triple
from tridim.training.data import DataBundle
from tridim.training.device import Execution
from tridim.training.distributed import barrier, broadcast_module, broadcast_object, world
from tridim.training.recipe import OwnLoop, Recipe
from tridim.training.train import seed_everything

__all__ = [
    "Trial",
    "TrialContext",
    "TrialResult",
    "run_trial",
    "execute_trial",
    "stored_trial",
    "store_trial",
    "parent_of",
    "evaluate_split",
    "COLLECTION_KINDS",
]

#: Trial kinds of a collection (chain steps shrink one dimension of their parent's model).
COLLECTION_KINDS = ("depth", "width", "resolution")
#: Trial kinds realised at the run's budget (the others at their triple's own cost).
BUDGET_KINDS = ("refine", "final")


@dataclass(frozen=True)
class Trial:
    """One model to cut, finetune and measure; plain data.

    Attributes
    ----------
    key : str
        Unique within a run (``"width:2"``, ``"refine:1"``, ``"final"``).
    kind : str
        ``"depth"``, ``"width"`` or ``"resolution"`` (an axis sample or chain step),
        ``"design"`` (a mixed sample), ``"refine"`` or ``"final"``.
    epochs : int
        Finetuning epochs.
    seed : int
        Seeds torch's global generator before the cut.
    train_seed : int
        Seeds the finetuning.
    step : int
        Position in its sequence (1-based).
    value, previous : float
        Axis samples and chain steps: the coordinate of ``kind`` asked for, and (chain)
        the parent's, both relative to the base model.
    parent : str, optional
        Chain steps: the key of the trial whose model this one shrinks further. A trial
        with a ``triple`` (the final one): the trial whose finetuned model it goes on
        training when realise cuts the same network (its epochs then count towards
        ``epochs``).
    triple : Triple, optional
        The triple realised from the base model: as asked for by a one-shot sample, at
        the run's budget (MACs, or the context's latency budget, met as measured) by a
        refine or final trial. None for a chain step.
    distill : bool
        Distil from the base model while finetuning.
    split : str
        The data split the accuracy is measured on.
    label : str
        How progress bars name the trial (e.g. ``"width 3/4"``); the key if empty.
    """

    key: str
    kind: str
    epochs: int
    seed: int
    train_seed: int
    step: int = 0
    value: float = 1.0
    previous: float = 1.0
    parent: str | None = None
    triple: Triple | None = None
    distill: bool = False
    split: str = "val"
    label: str = ""

    @property
    def journaled(self) -> bool:
        """Whether the trial's sample goes into the journal (the predictor's data)."""
        return self.kind != "final"


@dataclass
class TrialContext:
    """What every trial of a run needs: the base model, data, store and settings."""

    base: nn.Module
    data: DataBundle
    store: RunStore | None
    input_size: tuple[int, int, int]
    base_macs: int
    base_blocks: list
    min_side: int
    target_flops_ratio: float
    criterion: str = "bn_scale"
    #: Pruned channel groups keep a multiple of this many channels.
    channel_multiple: int = 1
    #: The training subset samples and refine trials finetune on (None: ``data``'s).
    sample_data: DataBundle | None = None
    lr: float = 0.02
    batch_size: int = 128
    seed: int = 0
    quiet: bool = False
    execution: Execution = field(default_factory=Execution)
    latency: LatencyBudget | None = None
    #: The base model's latency measured when ``latency`` was prepared.
    latency_base_ms: float | None = None
    #: The base model's block gains (linear probes), once per run; None without
    #: removable blocks.
    gains: list | None = None
    #: How trials finetune and are scored (:mod:`tridim.training.recipe`); default: tridim's loop
    #: on ``data`` (samples on ``sample_data``) with ``lr`` and ``batch_size``.
    recipe: Recipe | None = None

    def __post_init__(self) -> None:
        if self.recipe is None:
            self.recipe = OwnLoop(self.data, self.sample_data, self.lr, self.batch_size)


@dataclass
class TrialResult:
    """A finished trial: its journal sample, its plan, and (if asked for) its model."""

    sample: Sample
    plan: Plan
    model: nn.Module | None = None
    seconds: dict = field(default_factory=dict)


def run_trial(trial: Trial, context: TrialContext, *, keep_model: bool = False) -> TrialResult:
    """Run ``trial`` (or read it back if the store holds it); see the module docstring.

    Parameters
    ----------
    trial : Trial
    context : TrialContext
    keep_model : bool
        Return the finetuned model in the result (rebuilt from the store on a re-run).

    Returns
    -------
    TrialResult
    """
    stored = stored_trial(trial, context, keep_model=keep_model)
    if stored is not None:
        return stored
    result = execute_trial(trial, context, parent_of(trial, context))
    store_trial(trial, result, context)
    barrier()  # under torchrun: rank 0 has written the trial before any rank reads it
    return result if keep_model else dataclasses.replace(result, model=None)


def stored_trial(trial: Trial, context: TrialContext, *, keep_model: bool) -> TrialResult | None:
    """The finished trial read back from the store (journal repaired), or None."""
    stored = context.store.load_step(trial.key)
    if stored is None:
        return None
    if trial.journaled:
        context.store.record(stored.sample)  # killed between step files and journal
    model = _restore(stored.plan, stored.state_dict, context) if keep_model else None
    return TrialResult(stored.sample, stored.plan, model)


def parent_of(trial: Trial, context: TrialContext) -> StepRecord | None:
    """The stored parent a collection step shrinks further (None: the base model)."""
    if trial.parent is None:
        return None
    stored = context.store.load_step(trial.parent)
    if stored is None:
        raise RuntimeError(f"trial {trial.key} needs {trial.parent}, which has not run yet")
    return stored


def store_trial(trial: Trial, result: TrialResult, context: TrialContext) -> None:
    """Write a finished trial: weights, plan and sample, then its journal line."""
    context.store.save_step(trial.key, result.model.state_dict(), result.plan, result.sample)
    if trial.journaled:
        context.store.record(result.sample)


def execute_trial(
    trial: Trial,
    context: TrialContext,
    parent: StepRecord | None = None,
    *,
    checkpoint_path: str | os.PathLike | None = None,
) -> TrialResult:
    """Cut, finetune and evaluate ``trial``; the store is not touched (a remote worker
    runs this with ``context.store`` None and the ``parent`` the driver read), except for
    the epoch checkpoint: at ``checkpoint_path``, by default the store's for the trial.

    Returns
    -------
    TrialResult
        With the finetuned model.
    """
    started = time.perf_counter()
    seed_everything(trial.seed)
    model, plan = _cut_once(trial, context, parent)
    if trial.triple is not None and parent is not None:
        trial = _continue(trial, model, plan, parent)
    cut_seconds = time.perf_counter() - started
    if checkpoint_path is None and context.store is not None:
        checkpoint_path = context.store.checkpoint_path(trial.key)
    _finetune(trial, model, context, checkpoint_path)
    accuracy = evaluate_split(model, trial.split, context)
    seconds = {"cut": cut_seconds, "train": time.perf_counter() - started - cut_seconds}
    sample = broadcast_object(_sample(trial, plan, accuracy, sum(seconds.values()), context))
    return TrialResult(sample, plan, model, seconds)


def _continue(trial: Trial, model: nn.Module, plan: Plan, parent: StepRecord) -> Trial:
    """A trial cut from the base to its parent's network goes on from the parent's
    finetuned model for the epochs the parent did not train; cut to another network (or
    asking fewer epochs than the parent trained), it starts afresh, without a parent."""
    done = int(parent.sample.extra.get("epochs", 0))
    if not plan.same_network(parent.plan) or done > trial.epochs:
        return dataclasses.replace(trial, parent=None)
    model.load_state_dict(parent.state_dict)
    return dataclasses.replace(trial, epochs=trial.epochs - done)


def _cut_once(
    trial: Trial, context: TrialContext, parent: StepRecord | None
) -> tuple[ResolutionWrapper, Plan]:
    """Cut on rank 0 only; the other ranks rebuild its plan and take its weights."""
    rank, size = world()
    if size == 1:
        return _cut(trial, context, parent)
    model, plan, error = None, None, None
    if rank == 0:
        try:
            model, plan = _cut(trial, context, parent)
        except Exception as failure:  # every rank raises, none waits for rank 0 forever
            error = failure
    plan, message = broadcast_object((plan, None if error is None else repr(error)))
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 failed to cut {trial.key}: {message}")
    if rank != 0:
        model = apply_plan(context.base, plan)
    return broadcast_module(model), plan


def evaluate_split(model: nn.Module, split: str, context: TrialContext) -> float:
    """The run's score of ``model`` on ``split``, oriented so that larger is better
    (:meth:`~tridim.training.recipe.Recipe.oriented`; tridim's own loop: accuracy)."""
    recipe = context.recipe
    return recipe.oriented(recipe.evaluate(model, split, context.execution))


def _restore(plan: Plan, state_dict: dict, context: TrialContext) -> ResolutionWrapper:
    model = apply_plan(context.base, plan)
    model.load_state_dict(state_dict)
    return model.eval()


def _finetune(trial: Trial, model: nn.Module, context: TrialContext, checkpoint_path) -> None:
    recipe = context.recipe
    recipe.finetune(
        model,
        trial,
        teacher=context.base if trial.distill else None,
        checkpoint_path=checkpoint_path if recipe.checkpoints_epochs else None,
        quiet=context.quiet,
        execution=context.execution,
    )


def _sample(
    trial: Trial, plan: Plan, accuracy: float, seconds: float, context: TrialContext
) -> Sample:
    realised = plan.realised
    extra = {"key": trial.key, "dimension": trial.kind, "step": trial.step}
    if trial.kind in COLLECTION_KINDS:
        extra["requested"] = trial.value
    if trial.triple is not None:
        extra["triple"] = trial.triple.to_dict()
        if trial.parent is not None:
            extra["continues"] = trial.parent
    extra.update(
        macs_ratio=plan.macs_ratio,
        epochs=trial.epochs,
        seconds=seconds,
        seed=context.seed,
        plan=plan.to_dict(),
    )
    return Sample(realised.d, realised.w, realised.r, accuracy, extra)


# ---------------------------------------------------------------------- cutting


def _cut(
    trial: Trial, context: TrialContext, parent: StepRecord | None
) -> tuple[ResolutionWrapper, Plan]:
    if trial.triple is None:
        return _cut_step(trial, context, parent)
    gains = context.gains if trial.triple.d < 1 else None
    common = dict(
        data=context.data,
        criterion=context.criterion,
        gains=gains,
        seed=context.seed,
        channel_multiple=context.channel_multiple,
    )
    # a private copy: trials on an executor's threads must not hook the same modules
    base = copy.deepcopy(context.base)
    if trial.kind in BUDGET_KINDS and context.latency is not None:
        model, plan, _ = realise_to_latency(
            base,
            trial.triple,
            context.latency,
            input_size=context.input_size,
            base_ms=context.latency_base_ms,
            **common,
        )
        return model, plan
    target = context.target_flops_ratio if trial.kind in BUDGET_KINDS else None
    return realise(
        base,
        trial.triple,
        input_size=context.input_size,
        target_flops_ratio=target,
        **common,
    )


def _parent_model(
    context: TrialContext, parent: StepRecord | None
) -> tuple[ResolutionWrapper, Plan | None]:
    """The parent trial's model and plan, or the base model at full size."""
    if parent is None:
        size = context.input_size
        return ResolutionWrapper(copy.deepcopy(context.base), size[1:], size), None
    return _restore(parent.plan, parent.state_dict, context), parent.plan


def _cut_step(
    trial: Trial, context: TrialContext, parent_record: StepRecord | None
) -> tuple[ResolutionWrapper, Plan]:
    """Shrink one dimension of the parent's model from ``previous`` to ``value``."""
    from tridim.prune.width import compose_removals, remove_channels, select_channels

    if (trial.parent is None) != (parent_record is None):
        raise ValueError(f"trial {trial.key} needs its parent {trial.parent!r}'s stored record")
    parent, parent_plan = _parent_model(context, parent_record)
    inner, size = parent.model, parent.size
    removal = dict(parent_plan.width_removal) if parent_plan is not None else {}
    if trial.kind == "depth":
        inner = _remove_more_blocks(inner, trial.value, context)
        present = dict(inner.named_modules())
        removal = {k: v for k, v in removal.items() if k in present}
    elif trial.kind == "width":
        example = torch.zeros(1, context.input_size[0], *size)
        new = select_channels(
            inner,
            trial.value / trial.previous,
            example_input=example,
            criterion=context.criterion,
            data=context.data,
            seed=context.seed,
            channel_multiple=context.channel_multiple,
        )
        removal = compose_removals(inner, removal, new)
        inner = remove_channels(inner, new, example_input=example, inplace=True)
    else:
        smallest = context.min_side / min(context.input_size[1:])
        size = reduced_size(max(trial.value, smallest), context.input_size)
    model = ResolutionWrapper(inner, size, context.input_size)
    return model, _step_plan(trial, model, removal, context)


def _remove_more_blocks(inner: nn.Module, d: float, context: TrialContext) -> nn.Module:
    """Remove blocks of least gain until ``d`` of the base model's blocks are kept."""
    keep = blocks_to_keep(max(d, minimum_depth(context.base_blocks)), context.base_blocks)
    current = find_blocks(inner, input_size=context.input_size)
    if keep >= len(current):
        return inner
    names = select_blocks(
        inner,
        keep / len(current),
        data=context.data,
        input_size=context.input_size,
        seed=context.seed,
    )
    return remove_blocks(inner, names)


def _step_plan(
    trial: Trial, model: ResolutionWrapper, removal: dict, context: TrialContext
) -> Plan:
    """The plan that rebuilds a collection step's ``model`` from the base model."""
    modules = dict(model.model.named_modules())
    removed = [b.name for b in context.base_blocks if isinstance(modules.get(b.name), nn.Identity)]
    small_size = (context.input_size[0], *model.size)
    channels_total = count_channels(remove_blocks(context.base, removed), small_size)
    asked = {"depth": 1.0, "width": 1.0, "resolution": 1.0, trial.kind: trial.value}
    return plan_of(
        context.base,
        model,
        requested=Triple(asked["depth"], asked["width"], asked["resolution"]),
        removed_blocks=removed,
        width_removal=removal,
        blocks_total=len(context.base_blocks),
        channels_total=channels_total,
        base_macs=context.base_macs,
        criterion=context.criterion,
    )
