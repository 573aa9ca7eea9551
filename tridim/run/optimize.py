"""optimize(): the whole pipeline, from a trained model to a pruned one under a budget.

A short ask-and-tell loop over :class:`~tridim.run.trial.Trial`\\ s, all recorded by the run's
:class:`~tridim.run.store.RunStore`::

    collect samples (trials)  ->  fit the accuracy predictor  ->  solve for (d, w, r)
    up to `refine` times:     the solver proposes a triple, a refine trial realises and
                              finetunes it, its sample joins the fit, the solver re-solves;
                              stop when the optimum moves less than a block, a pixel and
                              a width step
    final trial:              realise the triple at the exact budget, finetune it,
                              evaluate on the validation and test splits

Every trial is made by one recipe (:mod:`tridim.run.trial`): cut from the base model by
``realise`` with the run's criterion and seed, finetuned with the same optimiser,
schedule and distillation; the final trial differs only in its epochs. So the samples
the predictor learns from are made the way the final model is.

Every trial is stored as it finishes, and the final finetune keeps an epoch checkpoint,
so a re-run on the same workdir resumes where the last one stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from tridim.budget.cost_model import CostModel, macs_cost
from tridim.budget.latency import LatencyBudget, PreparedBudget, prepare_budget
from tridim.cost.macs import check_input_size, count_macs, count_params
from tridim.cost.runtimes import check_runtime
from tridim.cost.timing import SPREAD_LIMIT, ratio_of, start_worker, time_models
from tridim.run.cluster import RayTrials, ray_trials
from tridim.run.collect import (
    CollectionSettings,
    _check_count,
    depth_can_change,
    floors,
    for_run_data,
    minimum_side,
    open_run,
    run_collection,
    run_data,
)
from tridim.run.compute import compute_record, stage_cost, teacher_cost
from tridim.run.progress import Stage
from tridim.run.report import render_report_markdown
from tridim.run.store import COST, LATENCY, MODEL, PLAN, REPORT, REPORT_MARKDOWN, RunStore
from tridim.run.trial import Trial, TrialContext, TrialResult, evaluate_split, run_trial
from tridim.search.design import DEFAULT_DESIGN
from tridim.search.plan import Plan
from tridim.search.predictor import LowRankPolynomialRegressor, choose_and_fit
from tridim.search.samples import Sample
from tridim.search.solver import CostFunction, Solution, solve
from tridim.search.space import Triple, flops_cost
from tridim.training.data import DataBundle
from tridim.training.device import Execution, model_device
from tridim.training.distributed import barrier, is_writer, setup, world
from tridim.training.models import spec_of
from tridim.training.recipe import OwnLoop, user_recipe
from tridim.training.train import seed_everything

__all__ = [
    "optimize",
    "CompressionResult",
    "OptimizeSettings",
    "cheapest_ratio",
    "check_predictor_covers",
    "run_cost",
]


@dataclass
class CompressionResult:
    """What :func:`optimize` produced.

    Attributes
    ----------
    model : torch.nn.Module
        The pruned, finetuned model. It takes full-size inputs (it carries its resize).
    triple : Triple
        The realised (d, w, r).
    plan : Plan
        How the model was cut from the base model (JSON-ready; rebuilds the architecture).
    solution : Solution
        The solver's answer for the budget (the predicted optimum).
    predictor : LowRankPolynomialRegressor
        The fitted accuracy predictor; reuse it for other budgets.
    samples : list of Sample
        The samples the predictor was fitted on.
    report : dict
        Everything measured (also written to ``report.json``).
    """

    model: nn.Module
    triple: Triple
    plan: Plan
    solution: Solution
    predictor: LowRankPolynomialRegressor
    samples: list[Sample]
    report: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Test accuracy of the pruned model."""
        return self.report["accuracy"]

    @property
    def predicted_accuracy(self) -> float:
        """The predictor's accuracy for the realised triple."""
        return self.report["predicted_accuracy"]

    @property
    def macs_ratio(self) -> float:
        """Measured MACs of the pruned model over the base model's."""
        return self.report["macs_ratio"]


@dataclass(frozen=True)
class OptimizeSettings:
    """The settings of :func:`optimize` beyond the collection's, validated."""

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


def optimize(
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
    target_speedup: float | None = None,
    target_latency_ms: float | None = None,
    runtime: str = "eager",
    predictor: LowRankPolynomialRegressor | None = None,
    rounds: int = 2,
    epochs_per_step: int = 2,
    final_epochs: int = 8,
    refine: int = 3,
    distill: bool = True,
    criterion: str = "auto",
    degree: int | str = "auto",
    rank: int | str = "auto",
    collection: str = "one-shot",
    design: int = DEFAULT_DESIGN,
    channel_multiple: int = 1,
    sample_fraction: float | str = "auto",
    lr: float = 0.02,
    seed: int = 0,
    latency_batch: int = 64,
    latency_repeats: int = 15,
    quiet: bool = False,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    cluster: str | None = None,
    base_training_epochs: int | None = None,
) -> CompressionResult:
    """Compress ``model`` to a MACs or latency budget along depth, width and resolution.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (left unchanged).
    data : DataBundle, optional
        tridim's own loop finetunes on ``train``, scores samples on ``val`` and the
        result on ``test``. With a user's loop (``finetune`` and ``evaluate``) it is
        optional: the probes then read it, or ``probe_data``.
    target_flops_ratio : float
        A MACs budget: pruned MACs / original MACs, in (0, 1].
    workdir : path
        Run folder (:class:`~tridim.run.store.RunStore`): journal, trials, predictor, model
        and report go here; re-running with the same workdir resumes every stage.
    finetune, evaluate : callable, optional
        A user's training loop and metric instead of tridim's loop (both or neither;
        :mod:`tridim.training.recipe`): ``finetune(model, epochs, *, teacher=None, trial=None)``
        trains in place, ``evaluate(model) -> float`` scores. Every trial uses them.
    higher_is_better : bool
        Whether a larger ``evaluate`` score is better (False for a loss).
    example_input : torch.Tensor, optional
        With a user's loop and no ``data``: one input, ``(C, H, W)`` or a batch; gives
        the input size.
    probe_data : iterable, optional
        With a user's loop and no ``data``: input batches, or ``(inputs, labels)``
        batches, for the depth probes and data-driven width criteria (the base model's
        predictions stand in for missing labels). Needed when the model has removable
        blocks.
    target_speedup : float, optional
        Instead, a latency budget: base latency / pruned latency (> 1), measured on
        ``runtime`` at batch ``latency_batch``. The solver uses a per-layer latency table
        (:mod:`tridim.cost.latency`); the final model's width is searched until its *measured*
        latency meets the budget.
    target_latency_ms : float, optional
        Or an absolute latency budget per batch of ``latency_batch``, in milliseconds.
    runtime : {"eager", "onnxruntime"}
        Latency budgets: PyTorch eager on ``device``, or ONNX Runtime on CPU.
    predictor : LowRankPolynomialRegressor, optional
        A fitted predictor to reuse: collection is skipped, and refine trials refit on
        its training samples plus theirs.
    rounds, epochs_per_step : int
        Collection: axis points per dimension, and finetuning epochs of every sample
        and refine trial.
    final_epochs : int
        Finetuning epochs of the final model.
    refine : int
        At most this many verify-and-refit iterations: realise the predicted optimum,
        finetune it ``epochs_per_step`` epochs, add it as a sample, refit and re-solve;
        they stop early once the optimum moves by less than one block, one pixel and
        :data:`WIDTH_STEP` of width.
    distill : bool
        Distil from the original model while finetuning every trial (samples, refine
        and final alike).
    criterion : str
        Width criterion (see :mod:`tridim.prune.criteria`); ``"auto"`` (default) takes
        ``bn_scale`` on a model with BatchNorm, else ``l1`` (the report says which).
    degree, rank : int or "auto"
        The predictor's polynomial degree and CP rank; ``"auto"`` (default) chooses them
        by leave-one-out on every fit (the report shows the table).
    collection : {"one-shot", "chain"}
        How samples are made: cut from the base model by the final model's recipe
        (default), or the paper's chains of iterative prunes (:mod:`tridim.run.collect`).
    design : int
        Mixed samples on the budget's iso-cost surface besides the axis points
        (one-shot only; :mod:`tridim.search.design`; default none, see
        :data:`~tridim.search.design.DEFAULT_DESIGN`).
    channel_multiple : int
        Every pruned channel group keeps a multiple of this many channels (1, the
        default: any count; 8: the counts vectorised kernels prefer). A MACs budget is
        then met within 3% instead of 1%.
    sample_fraction : float in (0, 1] or "auto"
        Samples and refine trials finetune on this fraction of the training split (the
        same seeded subset for all); the final model trains on all of it. ``"auto"``
        (default): all of a split of up to 2,500 images, else 2,500 of them but at least
        a quarter (:func:`~tridim.collect.auto_sample_fraction`).
    lr : float
        Peak finetuning learning rate.
    seed : int
        Seeds everything; the same seed gives the same result on CPU.
    latency_batch, latency_repeats : int
        Latency is measured at batch 1 and ``latency_batch`` (median of repeats); a
        latency budget is met at ``latency_batch``.
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
    cluster : {None, "processes", "ray"}
        ``"processes"``: the collection's independent trials in worker processes on this
        machine, an even share of its cores each (refine and final trials run here with
        every thread); ``"ray"``: the collection's, refine and final trials as Ray tasks
        (see :mod:`tridim.run.cluster`). This process writes the run folder.
    base_training_epochs : int, optional
        The epochs the base model was trained for: ``report["compute"]`` then gives every
        stage's cost in base-training equivalents (:mod:`tridim.run.compute`).

    Returns
    -------
    CompressionResult

    Raises
    ------
    ValueError
        Before any training, for an invalid argument (or not exactly one budget), a model
        that does not fit the data, a budget below what the model can reach, or a workdir
        holding another run.
    """
    settings = OptimizeSettings(
        final_epochs,
        refine,
        distill,
        degree,
        rank,
        latency_batch,
        latency_repeats,
        base_training_epochs,
    )
    execution = Execution.of(device, precision, channels_last)
    budget = _latency_budget(
        target_flops_ratio, target_speedup, target_latency_ms, runtime, settings, execution
    )
    collection = CollectionSettings(
        target_flops_ratio if budget is None else 0.5,
        rounds,
        epochs_per_step,
        criterion,
        seed,
        0.0,
        lr,
        collection=collection,
        design=design,
        distill=distill,
        channel_multiple=channel_multiple,
        sample_fraction=sample_fraction,
    )
    if predictor is not None and budget is None:
        check_predictor_covers(predictor, collection.target_flops_ratio)
    recipe = user_recipe(finetune, evaluate, higher_is_better=higher_is_better)
    data = run_data(model, data, recipe, example_input, probe_data, sample_fraction, cluster)
    collection = for_run_data(collection.for_model(model), data, recipe)
    size = check_input_size(data.input_shape)
    manifest = _manifest(settings, predictor, recipe)
    if budget is None:
        _check_reachable(model, size, collection.target_flops_ratio)
    else:
        prepared = _prepare_latency(model, data, budget, collection, RunStore(workdir), execution)
        collection = dataclasses.replace(
            collection,
            target_flops_ratio=prepared.target_ratio,
            ends=_ends_alone(model, size, prepared.cost, prepared.target_ratio),
        )
        manifest["latency_budget"] = budget.to_dict()
    context = open_run(
        model,
        data,
        collection,
        RunStore(workdir),
        extra_manifest=manifest,
        quiet=quiet,
        execution=execution,
        recipe=recipe,
    )
    cost = None if budget is None else prepared
    if budget is not None:
        context.latency, context.latency_base_ms = budget, prepared.base_ms
    with ray_trials(context, cluster) as trials:
        return _Pipeline(context, collection, settings, trials, cost).run(predictor)


def _manifest(settings: OptimizeSettings, predictor, recipe) -> dict:
    """What the run folder records of optimize's own settings (resume checks them)."""
    manifest = {"optimize": settings.manifest()}
    if predictor is not None:
        manifest["reused_predictor"] = _predictor_fingerprint(predictor)
    if recipe is not None:
        manifest["recipe"] = recipe.describe()
    return manifest


#: Refinement stops once width moves less than this (and depth, resolution less than a
#: block and a pixel).
WIDTH_STEP = 0.02


def settled(old: Triple, new: Triple, blocks: int, side: int) -> bool:
    """Whether the optimum moved from ``old`` to ``new`` by less than one of ``blocks``
    blocks, one pixel of ``side`` and :data:`WIDTH_STEP` of width (refinement stops)."""
    return (
        abs(new.d - old.d) < 1.0 / max(1, blocks)
        and abs(new.r - old.r) < 1.0 / side
        and abs(new.w - old.w) < WIDTH_STEP
    )


def _latency_budget(
    target_flops_ratio, target_speedup, target_latency_ms, runtime, settings, execution
) -> LatencyBudget | None:
    """The run's latency budget (None for a MACs budget); exactly one budget is given."""
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


def _prepare_latency(model, data, budget, collection, store: RunStore, execution):
    """The latency table and cost model, measured once per run folder (then read back;
    under torchrun rank 0 measures and the other ranks read what it wrote)."""
    setup(execution.device)
    cache = store.file(LATENCY)
    base = copy.deepcopy(model).eval()

    def prepare() -> PreparedBudget:
        return prepare_budget(
            base,
            data.input_shape,
            budget,
            criterion=collection.criterion,
            data=data,
            seed=collection.seed,
            cache=cache,
        )

    prepared = prepare() if is_writer() else None
    barrier()
    return prepared if prepared is not None else prepare()


def _ends_alone(model, size, cost, target: float) -> tuple[float, float, float]:
    """Each dimension's value that alone meets the latency target (within what it can reach)."""
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


def check_predictor_covers(
    predictor: LowRankPolynomialRegressor, target: float, cost: CostFunction | None = None
) -> None:
    """Refuse, before any training, a predictor that cannot answer for this budget.

    ``cost`` is the run's cost model (:func:`run_cost` reads it from a run folder);
    without it the analytic ``d * w**2 * r**2`` is used, and :func:`optimize` checks again
    with its measured cost before training anything.
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


def run_cost(predictor_path: str | os.PathLike) -> CostModel | None:
    """The cost model the run beside ``predictor_path`` solved with (its ``cost.json``),
    or None when there is none (a predictor fitted by ``tridim fit``, or an older run)."""
    store = RunStore(Path(predictor_path).parent)
    description = store.read_json(COST)
    if description is None:
        return None
    return CostModel.from_dict(description, source=str(store.file(COST)))


def _predictor_fingerprint(predictor: LowRankPolynomialRegressor) -> str:
    payload = json.dumps([predictor.coef_.tolist(), predictor.X_train_.tolist()])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _check_reachable(model: nn.Module, input_size, target: float) -> None:
    floor = cheapest_ratio(model, input_size)
    if target < floor * 1.05:
        raise ValueError(
            f"target_flops_ratio {target:g} is below what this model can reach (about "
            f"{floor:.4f} of its MACs with every removable block gone, 5% of the channels "
            "and the smallest input it runs at): raise the target or start from a larger model"
        )


class _Pipeline:
    """One optimize run: the stages in order, sharing the trial context."""

    def __init__(
        self,
        context: TrialContext,
        collection: CollectionSettings,
        settings: OptimizeSettings,
        cluster: RayTrials | None = None,
        latency: PreparedBudget | None = None,
    ):
        self.context = context
        self.cluster = cluster
        self.collection = collection
        self.settings = settings
        self.latency = latency
        self.target = collection.target_flops_ratio
        self.cost = latency.cost if latency is not None else self._macs_model()
        self.seconds: dict[str, float] = {}
        self.reused_predictor = False
        self.selection: dict | None = None

    def _timed(self, stage: str, function, *args):
        started = time.perf_counter()
        value = function(*args)
        self.seconds[stage] = time.perf_counter() - started
        return value

    def run(self, predictor: LowRankPolynomialRegressor | None) -> CompressionResult:
        context = self.context
        if model_device(context.base).type == "cpu":
            start_worker()  # the report's timings need it; it starts while the search runs
        seed_everything(self.collection.seed)
        base_accuracy = evaluate_split(context.base, "test", context)
        if predictor is None:
            samples = self._timed("collect", self._collect)
            predictor = self._timed("fit", self._fit, samples)
        else:
            check_predictor_covers(predictor, self.target, self.cost)
            samples = _training_samples(predictor)
            self.seconds.update(collect=0.0, fit=0.0)
            self.reused_predictor = True
        solution = self._timed("solve", self._solve, predictor)
        started = time.perf_counter()
        refinements = []
        with Stage("refine", self.settings.refine, quiet=context.quiet) as stage:
            for iteration in range(1, self.settings.refine + 1):
                predictor, solution, sample, record = self._refine(
                    iteration, predictor, solution, samples
                )
                samples = samples + [sample]
                refinements.append(record)
                stage.advance(f"refine:{iteration} accuracy {sample.accuracy:.4f}")
                if record["settled"]:
                    break
        self.seconds["refine"] = time.perf_counter() - started
        with Stage("final", 1, quiet=context.quiet) as stage:
            final = self._run_trial(self._final_trial(solution), keep_model=True)
            stage.advance(f"test accuracy {final.sample.accuracy:.4f}")
        self.seconds["realise"] = final.seconds.get("cut", 0.0)
        self.seconds["finetune"] = final.seconds.get("train", 0.0)
        return self._finish(final, solution, predictor, samples, refinements, base_accuracy)

    def _macs_model(self) -> CostModel:
        """The MACs of any triple from the real layer shapes (see :mod:`tridim.budget.cost_model`)."""
        context = self.context
        return CostModel(
            context.base,
            context.input_size,
            macs_cost,
            criterion=context.criterion,
            data=context.data,
            seed=self.collection.seed,
        )

    def _solve(self, predictor) -> Solution:
        """The predicted optimum under the run's cost: measured MACs or predicted latency."""
        return solve(predictor, self.target, cost=self.cost)

    def _fit(self, samples: list[Sample]) -> LowRankPolynomialRegressor:
        predictor, self.selection = choose_and_fit(
            samples,
            degree=self.settings.degree,
            rank=self.settings.rank,
            random_state=self.collection.seed,
        )
        return predictor

    def _collect(self) -> list[Sample]:
        return run_collection(self.context, self.collection, cluster=self.cluster)

    def _run_trial(self, trial: Trial, *, keep_model: bool = False) -> TrialResult:
        """Here, or as a Ray task when the run has a cluster."""
        if self.cluster is not None:
            return self.cluster.run(trial, keep_model=keep_model)
        return run_trial(trial, self.context, keep_model=keep_model)

    def _refine(self, iteration: int, predictor, solution: Solution, samples: list[Sample]):
        """Ask: realise the proposed triple as a trial. Tell: refit on its sample, re-solve."""
        trial = Trial(
            key=f"refine:{iteration}",
            kind="refine",
            epochs=self.collection.epochs_per_step,
            seed=self.collection.seed,
            train_seed=self.collection.seed,
            step=iteration,
            triple=solution.triple,
            distill=self.collection.distill,
            label=f"refine {iteration}/{self.settings.refine}",
        )
        sample = self._run_trial(trial).sample
        realised = [sample.d, sample.w, sample.r]
        predicted_there = float(predictor.predict([realised])[0])
        predictor = self._fit(samples + [sample])
        new_solution = self._solve(predictor)
        record = {
            "iteration": iteration,
            "triple": Triple(*realised).to_dict(),
            "predicted_accuracy": predicted_there,
            "measured_accuracy": sample.accuracy,
            "new_triple": new_solution.triple.to_dict(),
            "new_predicted_accuracy": new_solution.predicted_accuracy,
            "settled": self._settled(solution.triple, new_solution.triple),
        }
        return predictor, new_solution, sample, record

    def _settled(self, old: Triple, new: Triple) -> bool:
        context = self.context
        return settled(old, new, len(context.base_blocks), min(context.input_size[1:]))

    def _final_trial(self, solution: Solution) -> Trial:
        return Trial(
            key="final",
            kind="final",
            epochs=self.settings.final_epochs,
            seed=self.collection.seed,
            train_seed=self.collection.seed,
            triple=solution.triple,
            distill=self.collection.distill,
            split="test",
            label="final",
        )

    def _finish(self, final: TrialResult, solution, predictor, samples, refinements, base_accuracy):
        """Measure the final model, then write predictor, plan, model and report."""
        from tridim.run.io import save

        store = self.context.store
        loo_rmse = store.save_predictor(predictor).get("loo_rmse")
        store.write_json(COST, self.cost.describe())  # what `tridim solve` solves with
        latency = self._timed("latency", self._latency, final.model)
        report = self._report(final, solution, predictor, loo_rmse, latency, base_accuracy)
        report.update(refinements=refinements, n_samples=len(samples), **self._context_record())
        report["compute"] = self._compute(samples, len(refinements), final)
        plain = self.context.recipe.plain
        report["val_accuracy"] = plain(evaluate_split(final.model, "val", self.context))
        report["score"] = self.context.recipe.describe()
        report["predictor"] = self.selection
        report["samples_meaning"] = self._samples_meaning()
        for record in refinements:
            for key in ("predicted_accuracy", "measured_accuracy", "new_predicted_accuracy"):
                record[key] = plain(record[key])
        if refinements:
            last = refinements[-1]
            offset = last["measured_accuracy"] - last["predicted_accuracy"]
            report["prediction"]["offset_at_refine"] = offset
            report["prediction"]["mean_abs_error_at_refine"] = sum(
                abs(r["measured_accuracy"] - r["predicted_accuracy"]) for r in refinements
            ) / len(refinements)
        store.write_json(PLAN, final.plan.to_dict())
        if store.writes:
            save(final.model, store.file(MODEL), plan=final.plan)
        store.write_json(REPORT, report)
        store.write_text(REPORT_MARKDOWN, render_report_markdown(report))
        return CompressionResult(
            final.model, final.plan.realised, final.plan, solution, predictor, samples, report
        )

    def _latency(self, pruned: nn.Module) -> dict:
        """The base and pruned models timed together in alternating rounds
        (:func:`tridim.cost.timing.time_models`) at batch 1 and the latency batch."""
        size, batch = self.context.input_size, self.settings.latency_batch
        execution = self.context.execution
        results = {
            f"batch_{b}": time_models(
                {"before": self.context.base, "after": pruned},
                size,
                b,
                device=model_device(self.context.base),
                repeats=self.settings.latency_repeats,
                precision=execution.precision,
                channels_last=execution.channels_last,
            )
            for b in (1, batch)
        }
        return {
            "stages": {
                stage: {key: result["models"][stage] for key, result in results.items()}
                for stage in ("before", "after")
            },
            "speedup": {key: 1.0 / ratio_of(r, "after", "before") for key, r in results.items()},
            "states": {key: result["state"] for key, result in results.items()},
        }

    def _report(self, final, solution, predictor, loo_rmse, latency, base_accuracy) -> dict:
        base_macs, plan = self.context.base_macs, final.plan
        realised = plan.realised
        medians = {
            stage: {key: timing["median_ms"] for key, timing in timings.items()}
            for stage, timings in latency["stages"].items()
        }
        recipe = self.context.recipe
        raw = recipe.plain(float(predictor.predict([list(realised.as_tuple())])[0]))
        accuracy = isinstance(recipe, OwnLoop)
        predicted = min(1.0, max(0.0, raw)) if accuracy else raw
        return {
            "target_flops_ratio": self.target if self.latency is None else None,
            "budget": self._budget_record(final.model, latency),
            "macs_ratio": plan.macs / base_macs,
            "analytic_flops_ratio": float(flops_cost(*realised.as_tuple())),
            "triple": realised.to_dict(),
            "solved_triple": solution.triple.to_dict(),
            "multiplier": solution.multiplier,
            "base_accuracy": recipe.plain(base_accuracy),
            "accuracy": recipe.plain(final.sample.accuracy),
            "predicted_accuracy": predicted,
            "predictor_loo_rmse": loo_rmse,
            "macs_before": base_macs,
            "macs_after": plan.macs,
            "params_before": count_params(self.context.base),
            "params_after": count_params(final.model),
            "latency_ms": medians,
            "speedup": latency["speedup"],
            "seconds": self.seconds,
            "latency_spread_ms": {
                stage: {key: [t["q1_ms"], t["q3_ms"]] for key, t in timings.items()}
                for stage, timings in latency["stages"].items()
            },
            "timing": latency["states"],
            "prediction": _prediction_note(predictor, realised, raw, accuracy),
            "warnings": _latency_warnings(latency),
        }

    def _budget_record(self, pruned: nn.Module, latency: dict) -> dict:
        """The budget, and the cost predicted for and measured on the final model.

        ``measured_speedup`` is timed in alternating rounds against the base model, at
        the latency batch, on the budget's runtime (for a MACs budget: the eager timing
        of the report's latency at that batch); ``predicted_speedup`` is the latency
        table's figure for the final architecture.
        """
        context, settings = self.context, self.settings
        if self.latency is None:
            key = f"batch_{settings.latency_batch}"
            return {
                "kind": "macs",
                "target_flops_ratio": self.target,
                "runtime": "eager",
                "latency_batch": settings.latency_batch,
                "predicted_speedup": None,
                "measured_speedup": latency["speedup"][key],
                "measured_ms": {
                    s: latency["stages"][s][key]["median_ms"] for s in ("before", "after")
                },
                "timing": latency["states"][key],
            }
        else:
            budget, table = self.latency.budget, self.latency.table
            record = {"kind": "latency", **self.latency.to_dict()}
            size = context.input_size
            predicted = table.predict_ms(context.base, size) / table.predict_ms(pruned, size)
        timing = budget.compare(pruned, context.base, context.input_size)
        return {
            **record,
            "runtime": budget.runtime,
            "latency_batch": budget.batch_size,
            "predicted_speedup": predicted,
            "measured_speedup": 1.0 / timing["ratio"],
            "measured_ms": {"before": timing["base_ms"], "after": timing["model_ms"]},
            "timing": timing["state"],
        }

    def _compute(self, samples: list[Sample], refined: int, final: TrialResult) -> dict:
        """What this run's trials cost (a reused predictor's collection cost nothing here)."""
        collected = [] if self.reused_predictor else samples[: len(samples) - refined]
        stages = {
            "collection": collected,
            "refine": samples[len(samples) - refined :],
            "final": [final.sample],
        }
        full = len(self.context.data.train)
        sampled = len((self.context.sample_data or self.context.data).train)
        recipe = self.context.recipe
        own = isinstance(recipe, OwnLoop)  # a user's loop: images unknown
        # teacher outputs computed once per training set here, not at every step
        passes = recipe.teacher_passes() if own and self.cluster is None else []
        record = {}
        for name, members in stages.items():
            images = full if name == "final" else sampled
            record[name] = stage_cost(
                members,
                train_images=images if own else None,
                distill=self.collection.distill and not passes,
                data_share=images / full,
            )
        if passes:
            record["teacher"] = teacher_cost(passes, full)
        return compute_record(record, self.settings.base_training_epochs)

    def _samples_meaning(self) -> str:
        """One sentence: what the accuracies the predictor learnt from are."""
        c, s = self.collection, self.settings
        distilled = ", distilled from the base model" if c.distill else ""
        share = "" if c.sample_fraction >= 1 else f" on {c.sample_fraction:g} of the training set"
        recipe = (
            f"finetuned {c.epochs_per_step} epochs{share} (SGD, cosine, lr {c.lr:g}{distilled}) "
            f"and scored on the validation split"
        )
        if not isinstance(self.context.recipe, OwnLoop):
            recipe = (
                f"finetuned {c.epochs_per_step} epochs by your finetune(){distilled} and "
                f"scored by your evaluate()"
            )
        if self.reused_predictor:
            return f"samples of the reused predictor's run; refine trials here were {recipe}"
        if c.collection == "chain":
            return (
                f"each axis sample is the previous step's finetuned model pruned further "
                f"(k steps: k finetunes), {recipe}; refine and final trials are cut from the "
                f"base in one shot, the final one finetuned {s.final_epochs} epochs"
            )
        return (
            f"each sample is the base model cut in one shot to its (d, w, r) by realise "
            f"(criterion {c.criterion}, seed {c.seed}), {recipe}; the final model is made "
            f"the same way at the budget, with {s.final_epochs} epochs"
        )

    def _context_record(self) -> dict:
        """The report's closing fields: what was compressed, and how."""
        context, c, s = self.context, self.collection, self.settings
        spec = spec_of(context.base)
        depth_fixed = not depth_can_change(context.base, context.input_size)
        return {
            "depth_fixed": "no block has an identity shortcut: depth stays at 1"
            if depth_fixed
            else None,
            "settings": {
                "collection": c.collection,
                "rounds": c.rounds,
                "design": c.design,
                "epochs_per_step": c.epochs_per_step,
                "final_epochs": s.final_epochs,
                "refine": s.refine,
                "distill": s.distill,
                "criterion": c.criterion,
                "degree": s.degree,
                "rank": s.rank,
                "lr": c.lr,
                "seed": c.seed,
                "sample_fraction": c.sample_fraction,
                "channel_multiple": c.channel_multiple,
                "latency_batch": s.latency_batch,
                "reused_predictor": self.reused_predictor,
            },
            "execution": {
                **context.execution.describe(model_device(context.base)),
                "world_size": world()[1],
            },
            "data": context.data.describe(),
            "model": spec.to_dict() if spec is not None else None,
        }


#: A timing whose interquartile range exceeds this fraction of its median is flagged.


def _latency_warnings(latency: dict) -> list[str]:
    """A warning for each timing whose rounds still disagreed after every attempt."""
    return [
        f"latency at {key.replace('_', ' ')} was unstable: its rounds disagreed by "
        f"{state['max_spread']:.0%} (more than {SPREAD_LIMIT:.0%}) after {state['attempts']} "
        "attempts; the machine was busy, time the saved model again on a quiet machine"
        for key, state in latency["states"].items()
        if not state["stable"]
    ]


def _prediction_note(predictor, realised: Triple, predicted: float, accuracy: bool) -> dict:
    """How far to trust the predicted score: where it comes from, and if it extrapolates.
    ``accuracy``: the score is tridim's accuracy (clipped to [0, 1] in the report)."""
    lower, upper = predictor.bounds_
    point = realised.as_tuple()
    inside = all(lo - 1e-9 <= x <= hi + 1e-9 for x, lo, hi in zip(point, lower, upper))
    measured = "validation accuracy" if accuracy else "the score of your evaluate()"
    return {
        "raw": predicted,
        "clipped": accuracy and not 0.0 <= predicted <= 1.0,
        "inside_sampled_box": inside,
        "meaning": f"{measured} after a short finetune (epochs_per_step), as the samples "
        "were measured; the pruned model's is after the final finetune"
        + (" on the test split, so it is usually higher" if accuracy else ""),
    }


def _training_samples(predictor: LowRankPolynomialRegressor) -> list[Sample]:
    """The samples a saved predictor was fitted on (its JSON file keeps them)."""
    return [
        Sample(*x, accuracy=float(y), extra={"key": f"reused:{i}", "dimension": "reused"})
        for i, (x, y) in enumerate(zip(predictor.X_train_.tolist(), predictor.y_train_))
    ]


def cheapest_ratio(model: nn.Module, input_size) -> float:
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
