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
the predictor learns from are made the way the final model is. When the last refine
trial cut the final network and trained on the same data, it *is* the final model's
first ``epochs_per_step`` epochs: the final trial goes on from its model for the rest
(a new cosine schedule over the remaining epochs, a warm restart).

Every trial is stored as it finishes, and the final finetune keeps an epoch checkpoint,
so a re-run on the same workdir resumes where the last one stopped.

The arguments are checked before any training by :mod:`tridim.run.optimize_arguments`,
and the report's figures built by :mod:`tridim.run.optimize_report`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from tridim.budget.cost_model import CostModel, macs_cost
from tridim.budget.latency import PreparedBudget, prepare_budget
from tridim.cost.macs import check_input_size
from tridim.cost.timing_process import start_worker
from tridim.run.cluster import RayTrials, ray_trials
from tridim.run.collect import CollectionSettings, for_run_data, open_run, run_collection, run_data
from tridim.run.optimize_arguments import (
    OptimizeSettings,
    check_predictor_covers,
    check_reachable,
    ends_alone,
    latency_budget_from,
)
from tridim.run.optimize_report import (
    budget_record,
    compute_of_run,
    context_record,
    report_record,
    samples_meaning,
    time_before_after,
)
from tridim.run.progress import Stage
from tridim.run.report import render_report_markdown
from tridim.run.store import COST, LATENCY, MODEL, PLAN, REPORT, REPORT_MARKDOWN, RunStore
from tridim.run.trial import Trial, TrialContext, TrialResult, evaluate_split, run_trial
from tridim.search.design import DEFAULT_DESIGN
from tridim.search.plan import Plan
from tridim.search.predictor import LowRankPolynomialRegressor
from tridim.search.samples import Sample
from tridim.search.selection import choose_and_fit
from tridim.search.solver import Solution, solve
from tridim.search.space import Triple
from tridim.training.data import DataBundle
from tridim.training.device import Execution, model_device
from tridim.training.distributed import barrier, is_writer, setup
from tridim.training.recipe import user_recipe
from tridim.training.train import seed_everything

__all__ = [
    "optimize",
    "CompressionResult",
    "OptimizeSettings",
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
        Finetuning epochs of the final model in all. When the last refine trial cut the
        same network and trained on the same data (no sample proxy), the final model
        goes on from that trial's model and its ``epochs_per_step`` epochs count: it
        trains ``final_epochs - epochs_per_step`` more, on a new cosine schedule from
        ``lr`` (``report["samples_meaning"]`` says so). With ``final_epochs`` below
        ``epochs_per_step`` it trains afresh.
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
        a quarter (:func:`~tridim.run.collect.auto_sample_fraction`).
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
    budget = latency_budget_from(
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
        check_reachable(model, size, collection.target_flops_ratio)
    else:
        prepared = _prepare_latency(model, data, budget, collection, RunStore(workdir), execution)
        collection = dataclasses.replace(
            collection,
            target_flops_ratio=prepared.target_ratio,
            ends=ends_alone(model, size, prepared.cost, prepared.target_ratio),
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
        #: The last refine trial run (the final model may continue its model).
        self.last_refine: Trial | None = None

    def _timed(self, stage: str, function, *args):
        started = time.perf_counter()
        value = function(*args)
        self.seconds[stage] = time.perf_counter() - started
        return value

    def run(self, predictor: LowRankPolynomialRegressor | None) -> CompressionResult:
        context = self.context
        seed_everything(self.collection.seed)
        base_accuracy = evaluate_split(context.base, "test", context)
        if predictor is None:
            samples = self._timed("collect", self._collect)
            self._start_timing_worker()
            predictor = self._timed("fit", self._fit, samples)
        else:
            self._start_timing_worker()
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
                score = context.recipe.plain(sample.accuracy)
                stage.advance(f"refine:{iteration} {context.recipe.score_name} {score:.4f}")
                if record["settled"]:
                    break
        self.seconds["refine"] = time.perf_counter() - started
        with Stage("final", 1, quiet=context.quiet) as stage:
            final = self._run_trial(self._final_trial(solution), keep_model=True)
            score = context.recipe.plain(final.sample.accuracy)
            stage.advance(f"test {context.recipe.score_name} {score:.4f}")
        self.seconds["realise"] = final.seconds.get("cut", 0.0)
        self.seconds["finetune"] = final.seconds.get("train", 0.0)
        return self._finish(final, solution, predictor, samples, refinements, base_accuracy)

    def _start_timing_worker(self) -> None:
        """Start the report's timing process (a fresh interpreter importing torch) now: the
        fit and solve that follow use one core, so its start costs the search less than
        beside the collection's trials, which use all of them."""
        if model_device(self.context.base).type == "cpu":
            start_worker()

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
        self.last_refine = trial
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
        """The final model; it may continue the last refine trial's model (its parent)
        when both train on the same data (see ``final_epochs`` in :func:`optimize`)."""
        final = Trial(
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
        refine = self.last_refine
        if refine is None or not self.context.recipe.same_training(final, refine):
            return final
        return dataclasses.replace(final, parent=refine.key)

    def _finish(self, final: TrialResult, solution, predictor, samples, refinements, base_accuracy):
        """Measure the final model, then write predictor, plan, model and report."""
        from tridim.run.io import save

        store = self.context.store
        loo_rmse = store.save_predictor(predictor).get("loo_rmse")
        store.write_json(COST, self.cost.describe())  # what `tridim solve` solves with
        report = self._report(final, solution, predictor, loo_rmse, base_accuracy)
        report.update(refinements=refinements, n_samples=len(samples), **self._context_record())
        report["compute"] = self._compute(samples, len(refinements), final)
        plain = self.context.recipe.plain
        report["val_accuracy"] = plain(evaluate_split(final.model, "val", self.context))
        report["score"] = self.context.recipe.describe()
        report["predictor"] = self.selection
        report["samples_meaning"] = samples_meaning(
            self.context,
            self.collection,
            self.settings,
            self.reused_predictor,
            final=final.sample.extra,
        )
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

    def _report(self, final: TrialResult, solution, predictor, loo_rmse, base_accuracy) -> dict:
        """The final model timed against the base, and the report's figures of it
        (:mod:`tridim.run.optimize_report`)."""
        context = self.context
        latency = self._timed("latency", time_before_after, context, final.model, self.settings)
        budget = budget_record(
            context, self.settings, self.latency, self.target, final.model, latency
        )
        return report_record(
            context,
            final,
            solution,
            predictor,
            latency,
            base_accuracy,
            budget=budget,
            target_flops_ratio=self.target if self.latency is None else None,
            loo_rmse=loo_rmse,
            seconds=self.seconds,
        )

    def _compute(self, samples: list[Sample], refined: int, final: TrialResult) -> dict:
        """What this run's trials cost (:func:`tridim.run.optimize_report.compute_of_run`)."""
        return compute_of_run(
            self.context,
            samples,
            refined,
            final,
            distill=self.collection.distill,
            reused_predictor=self.reused_predictor,
            local=self.cluster is None,
            base_training_epochs=self.settings.base_training_epochs,
        )

    def _context_record(self) -> dict:
        """The report's closing fields: what was compressed, and how."""
        return context_record(self.context, self.collection, self.settings, self.reused_predictor)


def _training_samples(predictor: LowRankPolynomialRegressor) -> list[Sample]:
    """The samples a saved predictor was fitted on (its JSON file keeps them)."""
    return [
        Sample(*x, accuracy=float(y), extra={"key": f"reused:{i}", "dimension": "reused"})
        for i, (x, y) in enumerate(zip(predictor.X_train_.tolist(), predictor.y_train_))
    ]
