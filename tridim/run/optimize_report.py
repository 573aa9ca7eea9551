"""What optimize() reports about its final model, and how far to trust it.

The final model timed against the base in alternating rounds
(:func:`time_before_after`), the budget asked for beside the cost predicted and measured
(:func:`budget_record`), the report's figures (:func:`report_record`), what the run's
trials cost (:func:`compute_of_run`), and the sentences and settings that say what those
figures mean (:func:`samples_meaning`, :func:`context_record`,
:func:`prediction_note`, :func:`latency_warnings`). Each returns JSON-ready data;
:mod:`tridim.run.optimize` writes it to ``report.json``.
"""

from __future__ import annotations

import torch.nn as nn
from torch.utils.data import TensorDataset

from tridim.budget.latency import PreparedBudget
from tridim.cost.macs import count_params
from tridim.cost.timing import SPREAD_LIMIT, ratio_of, time_models
from tridim.run.collect import CollectionSettings, depth_can_change
from tridim.run.compute import compute_record, stage_cost, teacher_cost
from tridim.run.optimize_arguments import OptimizeSettings
from tridim.run.trial import TrialContext, TrialResult
from tridim.search.predictor import LowRankPolynomialRegressor
from tridim.search.samples import Sample
from tridim.search.solver import Solution
from tridim.search.space import Triple, flops_cost
from tridim.training.device import model_device
from tridim.training.distributed import world
from tridim.training.models import spec_of
from tridim.training.recipe import OwnLoop

__all__ = [
    "time_before_after",
    "budget_record",
    "report_record",
    "compute_of_run",
    "samples_meaning",
    "context_record",
    "latency_warnings",
    "prediction_note",
]


def time_before_after(context: TrialContext, pruned: nn.Module, settings: OptimizeSettings) -> dict:
    """The base and pruned models timed together in alternating rounds
    (:func:`tridim.cost.timing.time_models`) at batch 1 and the latency batch.

    Returns
    -------
    dict
        ``{"stages": {"before"|"after": {"batch_N": timing}}, "speedup": {"batch_N":
        float}, "states": {"batch_N": state}}``.
    """
    size, execution = context.input_size, context.execution
    results = {
        f"batch_{b}": time_models(
            {"before": context.base, "after": pruned},
            size,
            b,
            device=model_device(context.base),
            repeats=settings.latency_repeats,
            precision=execution.precision,
            channels_last=execution.channels_last,
        )
        for b in (1, settings.latency_batch)
    }
    return {
        "stages": {
            stage: {key: result["models"][stage] for key, result in results.items()}
            for stage in ("before", "after")
        },
        "speedup": {key: 1.0 / ratio_of(r, "after", "before") for key, r in results.items()},
        "states": {key: result["state"] for key, result in results.items()},
    }


def budget_record(
    context: TrialContext,
    settings: OptimizeSettings,
    prepared: PreparedBudget | None,
    target: float,
    pruned: nn.Module,
    latency: dict,
) -> dict:
    """The budget, and the cost predicted for and measured on the final model.

    ``measured_speedup`` is timed in alternating rounds against the base model, at
    the latency batch, on the budget's runtime (for a MACs budget, ``prepared`` None: the
    eager timing of the report's ``latency`` at that batch); ``predicted_speedup`` is the
    latency table's figure for the final architecture.
    """
    if prepared is None:
        key = f"batch_{settings.latency_batch}"
        return {
            "kind": "macs",
            "target_flops_ratio": target,
            "runtime": "eager",
            "latency_batch": settings.latency_batch,
            "predicted_speedup": None,
            "measured_speedup": latency["speedup"][key],
            "measured_ms": {s: latency["stages"][s][key]["median_ms"] for s in ("before", "after")},
            "timing": latency["states"][key],
        }
    budget, table, size = prepared.budget, prepared.table, context.input_size
    predicted = table.predict_ms(context.base, size) / table.predict_ms(pruned, size)
    timing = budget.compare(pruned, context.base, size)
    return {
        "kind": "latency",
        **prepared.to_dict(),
        "runtime": budget.runtime,
        "latency_batch": budget.batch_size,
        "predicted_speedup": predicted,
        "measured_speedup": 1.0 / timing["ratio"],
        "measured_ms": {"before": timing["base_ms"], "after": timing["model_ms"]},
        "timing": timing["state"],
    }


def report_record(
    context: TrialContext,
    final: TrialResult,
    solution: Solution,
    predictor: LowRankPolynomialRegressor,
    latency: dict,
    base_accuracy: float,
    *,
    budget: dict,
    target_flops_ratio: float | None,
    loo_rmse: float | None,
    seconds: dict[str, float],
) -> dict:
    """The report's figures of the final model: budget, MACs, accuracy (measured and
    predicted), parameters, latency and speed-up, and the seconds each stage took."""
    base_macs, plan = context.base_macs, final.plan
    realised = plan.realised
    medians = {
        stage: {key: timing["median_ms"] for key, timing in timings.items()}
        for stage, timings in latency["stages"].items()
    }
    recipe = context.recipe
    raw = recipe.plain(float(predictor.predict([list(realised.as_tuple())])[0]))
    accuracy = isinstance(recipe, OwnLoop)
    predicted = min(1.0, max(0.0, raw)) if accuracy else raw
    return {
        "target_flops_ratio": target_flops_ratio,
        "budget": budget,
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
        "params_before": count_params(context.base),
        "params_after": count_params(final.model),
        "latency_ms": medians,
        "speedup": latency["speedup"],
        "seconds": seconds,
        "latency_spread_ms": {
            stage: {key: [t["q1_ms"], t["q3_ms"]] for key, t in timings.items()}
            for stage, timings in latency["stages"].items()
        },
        "timing": latency["states"],
        "prediction": prediction_note(predictor, realised, raw, accuracy),
        "warnings": latency_warnings(latency),
    }


def compute_of_run(
    context: TrialContext,
    samples: list[Sample],
    refined: int,
    final: TrialResult,
    *,
    distill: bool,
    reused_predictor: bool,
    local: bool,
    base_training_epochs: int | None,
) -> dict:
    """What this run's trials cost (a reused predictor's collection cost nothing here).

    ``local``: every trial ran in this process (no cluster), so tridim's loop computed the
    teacher's outputs once per in-memory training set it distilled on, instead of at
    every step (counted from these facts, not from what this process happened to run:
    a resumed run reports what the first attempt did).
    """
    collected = [] if reused_predictor else samples[: len(samples) - refined]
    stages = {
        "collection": collected,
        "refine": samples[len(samples) - refined :],
        "final": [final.sample],
    }
    full = context.data.train
    sampled = (context.sample_data or context.data).train
    own = isinstance(context.recipe, OwnLoop)  # a user's loop: images unknown

    def outputs_cached(dataset) -> bool:  # OwnLoop's rule: in memory, trials in this process
        return distill and own and local and isinstance(dataset, TensorDataset)

    record, passes = {}, {}
    for name, members in stages.items():
        dataset = full if name == "final" else sampled
        if members and outputs_cached(dataset):
            passes[id(dataset)] = len(dataset)  # one teacher pass per training set
        record[name] = stage_cost(
            members,
            train_images=len(dataset) if own else None,
            distill=distill and not outputs_cached(dataset),
            data_share=len(dataset) / len(full),
        )
    if passes:
        record["teacher"] = teacher_cost(list(passes.values()), len(full))
    return compute_record(record, base_training_epochs)


def samples_meaning(
    context: TrialContext,
    collection: CollectionSettings,
    settings: OptimizeSettings,
    reused_predictor: bool,
    final: dict | None = None,
) -> str:
    """One sentence: what the accuracies the predictor learnt from are, and how the final
    model was trained (``final``: its sample's extra, saying whether it went on from a
    refine trial's model and how many epochs it trained then)."""
    c, s = collection, settings
    final_epochs = f"{s.final_epochs} epochs"
    if final is not None and final.get("continues"):
        before = s.final_epochs - int(final["epochs"])
        final_epochs += (
            f", the first {before} of them {final['continues']}'s (the same network), "
            f"then {final['epochs']} more on a new cosine schedule"
        )
    distilled = ", distilled from the base model" if c.distill else ""
    share = "" if c.sample_fraction >= 1 else f" on {c.sample_fraction:g} of the training set"
    recipe = (
        f"finetuned {c.epochs_per_step} epochs{share} (SGD, cosine, lr {c.lr:g}{distilled}) "
        f"and scored on the validation split"
    )
    if not isinstance(context.recipe, OwnLoop):
        recipe = (
            f"finetuned {c.epochs_per_step} epochs by your finetune(){distilled} and "
            f"scored by your evaluate()"
        )
    if reused_predictor:
        return (
            f"samples of the reused predictor's run; refine trials here were {recipe}; the "
            f"final model is cut from the base at the budget, with {final_epochs}"
        )
    if c.collection == "chain":
        return (
            f"each axis sample is the previous step's finetuned model pruned further "
            f"(k steps: k finetunes), {recipe}; refine and final trials are cut from the "
            f"base in one shot, the final one finetuned {final_epochs}"
        )
    return (
        f"each sample is the base model cut in one shot to its (d, w, r) by realise "
        f"(criterion {c.criterion}, seed {c.seed}), {recipe}; the final model is made "
        f"the same way at the budget, with {final_epochs}"
    )


def context_record(
    context: TrialContext,
    collection: CollectionSettings,
    settings: OptimizeSettings,
    reused_predictor: bool,
) -> dict:
    """The report's closing fields: what was compressed, and how."""
    c, s = collection, settings
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
            "reused_predictor": reused_predictor,
        },
        "execution": {
            **context.execution.describe(model_device(context.base)),
            "world_size": world()[1],
        },
        "data": context.data.describe(),
        "model": spec.to_dict() if spec is not None else None,
    }


def latency_warnings(latency: dict) -> list[str]:
    """A warning for each timing whose rounds still disagreed after every attempt."""
    return [
        f"latency at {key.replace('_', ' ')} was unstable: its rounds disagreed by "
        f"{state['max_spread']:.0%} (more than {SPREAD_LIMIT:.0%}) after {state['attempts']} "
        "attempts; the machine was busy, time the saved model again on a quiet machine"
        for key, state in latency["states"].items()
        if not state["stable"]
    ]


def prediction_note(
    predictor: LowRankPolynomialRegressor, realised: Triple, predicted: float, accuracy: bool
) -> dict:
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
