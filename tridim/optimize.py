"""optimize(): the whole pipeline, from a trained model to a pruned one under a budget.

collect samples -> fit the accuracy predictor -> solve for the best (d, w, r) under the
budget -> [verify and refit] -> realise the triple to the exact MACs target -> finetune
at the reduced resolution (distilling from the original) -> evaluate and report.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .collect import JOURNAL_NAME, collect
from .data import DataBundle
from .measure import check_input_size, count_macs, count_params, measure_latency
from .predictor import LowRankPolynomialRegressor
from .samples import Sample, append_sample, read_samples, samples_to_xy
from .solver import Solution, solve
from .space import Triple, check_ratio
from .train import evaluate, seed_everything, train

__all__ = ["optimize", "CompressionResult", "REPORT_NAME"]

REPORT_NAME = "report.json"


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
    plan: object
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


def _latency(model: nn.Module, input_size, batch: int, repeats: int) -> dict:
    return {
        f"batch_{b}": measure_latency(model, input_size, b, repeats=repeats)["median_ms"]
        for b in (1, batch)
    }


def _check_model_and_data(model: nn.Module, data: DataBundle) -> tuple[int, int, int]:
    from .train import _check_model_fits_data

    _check_model_fits_data(model, data)
    return check_input_size(data.input_shape)


def optimize(
    model: nn.Module,
    data: DataBundle,
    target_flops_ratio: float,
    *,
    workdir: str | os.PathLike,
    predictor: LowRankPolynomialRegressor | None = None,
    rounds: int = 4,
    epochs_per_step: int = 2,
    final_epochs: int = 8,
    refine: int = 1,
    distill: bool = True,
    criterion: str = "bn_scale",
    degree: int = 3,
    rank: int = 1,
    lr: float = 0.02,
    seed: int = 0,
    latency_batch: int = 64,
    latency_repeats: int = 15,
    quiet: bool = False,
) -> CompressionResult:
    """Compress ``model`` to ``target_flops_ratio`` of its MACs along depth, width and resolution.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (left unchanged).
    data : DataBundle
        Finetuning uses ``train``, samples are scored on ``val``, the result on ``test``.
    target_flops_ratio : float
        The budget: pruned MACs / original MACs, in (0, 1].
    workdir : path
        Run folder: the journal, checkpoints, predictor and report go here; re-running
        with the same workdir resumes the collection.
    predictor : LowRankPolynomialRegressor, optional
        A fitted predictor to reuse: collection is skipped.
    rounds, epochs_per_step : int
        Collection: steps per dimension and finetuning epochs per step.
    final_epochs : int
        Finetuning epochs of the final model.
    refine : int
        Verify-and-refit iterations: realise the predicted optimum, finetune it
        ``epochs_per_step`` epochs, add it as a sample, refit and re-solve.
    distill : bool
        Distil from the original model while finetuning the final model.
    criterion : str
        Width criterion (see :mod:`tridim.criteria`).
    degree, rank : int
        The predictor's polynomial degree and CP rank.
    lr : float
        Peak finetuning learning rate.
    seed : int
        Seeds everything; the same seed gives the same result on CPU.
    latency_batch, latency_repeats : int
        Latency is measured at batch 1 and ``latency_batch`` (median of repeats).
    quiet : bool
        Hide progress bars.

    Returns
    -------
    CompressionResult
    """
    from .realise import realise

    target = check_ratio(target_flops_ratio, "target_flops_ratio")
    if not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be a non-negative integer, got {refine!r}")
    if not isinstance(final_epochs, int) or final_epochs < 0:
        raise ValueError(f"final_epochs must be a non-negative integer, got {final_epochs!r}")
    input_size = _check_model_and_data(model, data)
    from .collect import check_criterion_fits, depth_can_change

    check_criterion_fits(model, criterion)
    floor = cheapest_ratio(model, input_size)
    if target < floor * 1.05:
        raise ValueError(
            f"target_flops_ratio {target:g} is below what this model can reach (about "
            f"{floor:.4f} of its MACs with every removable block gone, 5% of the channels "
            "and the smallest input it runs at): raise the target or start from a larger model"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    base = copy.deepcopy(model).eval()
    seed_everything(seed)
    base_accuracy = evaluate(base, data.loader("test", 256))
    macs_before = count_macs(base, input_size)

    started = time.perf_counter()
    reused_predictor = predictor is not None
    if predictor is None:
        samples = collect(
            base,
            data,
            target,
            workdir=workdir,
            rounds=rounds,
            epochs_per_step=epochs_per_step,
            criterion=criterion,
            seed=seed,
            lr=lr,
            quiet=quiet,
        )
        seconds["collect"] = time.perf_counter() - started
        started = time.perf_counter()
        predictor = _fit(samples, degree, rank, seed)
        seconds["fit"] = time.perf_counter() - started
    else:
        samples = read_samples(workdir / JOURNAL_NAME) if (workdir / JOURNAL_NAME).is_file() else []
        seconds["collect"] = 0.0
        seconds["fit"] = 0.0

    started = time.perf_counter()
    solution = solve(predictor, target)
    seconds["solve"] = time.perf_counter() - started

    refinements = []
    started = time.perf_counter()
    for iteration in range(refine):
        pruned, plan = realise(
            base,
            solution.triple,
            input_size=input_size,
            data=data,
            target_flops_ratio=target,
            criterion=criterion,
        )
        train(
            pruned,
            data,
            epochs_per_step,
            lr=lr,
            seed=seed + 7919 + iteration,
            evaluate_each_epoch=False,
            quiet=quiet,
        )
        measured = evaluate(pruned, data.loader("val", 256))
        realised = plan.realised
        sample = Sample(
            realised.d,
            realised.w,
            realised.r,
            measured,
            {
                "key": f"refine:{iteration + 1}",
                "dimension": "refine",
                "step": iteration + 1,
                "macs_ratio": plan.macs_ratio,
                "epochs": epochs_per_step,
                "seed": seed,
            },
        )
        samples = samples + [sample]
        append_sample(workdir / "refine.jsonl", sample)
        predicted_there = float(predictor.predict([list(realised.as_tuple())])[0])
        predictor = _fit(samples, degree, rank, seed)
        new_solution = solve(predictor, target)
        refinements.append(
            {
                "iteration": iteration + 1,
                "triple": realised.to_dict(),
                "predicted_accuracy": predicted_there,
                "measured_accuracy": measured,
                "new_triple": new_solution.triple.to_dict(),
                "new_predicted_accuracy": new_solution.predicted_accuracy,
            }
        )
        solution = new_solution
    seconds["refine"] = time.perf_counter() - started

    started = time.perf_counter()
    pruned, plan = realise(
        base,
        solution.triple,
        input_size=input_size,
        data=data,
        target_flops_ratio=target,
        criterion=criterion,
    )
    seconds["realise"] = time.perf_counter() - started
    started = time.perf_counter()
    train(
        pruned,
        data,
        final_epochs,
        lr=lr,
        seed=seed + 104729,
        teacher=base if distill else None,
        evaluate_each_epoch=False,
        quiet=quiet,
    )
    seconds["finetune"] = time.perf_counter() - started
    accuracy = evaluate(pruned, data.loader("test", 256))
    realised = plan.realised
    predicted = float(predictor.predict([list(realised.as_tuple())])[0])

    started = time.perf_counter()
    latency = {
        "before": _latency(base, input_size, latency_batch, latency_repeats),
        "after": _latency(pruned, input_size, latency_batch, latency_repeats),
    }
    seconds["latency"] = time.perf_counter() - started
    macs_after = plan.macs
    loo = _loo_rmse(predictor)
    report = {
        "target_flops_ratio": target,
        "macs_ratio": macs_after / macs_before,
        "triple": realised.to_dict(),
        "solved_triple": solution.triple.to_dict(),
        "multiplier": solution.multiplier,
        "base_accuracy": base_accuracy,
        "accuracy": accuracy,
        "predicted_accuracy": predicted,
        "predictor_loo_rmse": loo,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "params_before": count_params(base),
        "params_after": count_params(pruned),
        "latency_ms": latency,
        "speedup": {k: latency["before"][k] / latency["after"][k] for k in latency["before"]},
        "seconds": seconds,
        "refinements": refinements,
        "n_samples": len(samples),
        "depth_fixed": (
            None
            if depth_can_change(base, input_size)
            else "no block has an identity shortcut: depth stays at 1"
        ),
        "settings": {
            "rounds": rounds,
            "epochs_per_step": epochs_per_step,
            "final_epochs": final_epochs,
            "refine": refine,
            "distill": distill,
            "criterion": criterion,
            "degree": degree,
            "rank": rank,
            "lr": lr,
            "seed": seed,
            "latency_batch": latency_batch,
            "reused_predictor": reused_predictor,
        },
        "data": data.describe(),
        "model": (base.tridim_spec.to_dict() if hasattr(base, "tridim_spec") else None),
    }
    result = CompressionResult(pruned, realised, plan, solution, predictor, samples, report)
    _write_artifacts(result, workdir)
    return result


def _fit(samples: list[Sample], degree: int, rank: int, seed: int) -> LowRankPolynomialRegressor:
    from .predictor import _count_params

    X, y = samples_to_xy(samples)
    estimator = LowRankPolynomialRegressor(degree=degree, rank=rank, random_state=seed)
    n_params = _count_params(X.shape[1], degree, rank)
    if len(y) < n_params:
        # e.g. depth cannot change, so its axis has no samples: a tiny ridge keeps the
        # fit well posed and the solver's bounds keep d at 1.
        estimator.set_params(alpha=1e-6)
    elif len(y) <= n_params + 1:
        warnings.warn(
            f"{len(y)} samples for a predictor with {n_params} parameters: leave-one-out "
            "fits interpolate and the fit may swing between samples; use rounds >= 4 or "
            "degree=2",
            stacklevel=3,
        )
    return estimator.fit(X, y)


def cheapest_ratio(model: nn.Module, input_size) -> float:
    """About the smallest MACs ratio tridim can reach for this model.

    All removable blocks gone, 5% of the prunable channels kept (the width module's
    floor) and the smallest image side the model runs at
    (:func:`tridim.collect.minimum_side`), each measured alone and multiplied.
    """
    from .collect import depth_can_change, minimum_side
    from .dims.depth import find_blocks, remove_blocks
    from .dims.resolution import with_resolution
    from .dims.width import DEFAULT_MIN_KEEP, prune_width

    base_macs = count_macs(model, input_size)
    ratio = 1.0
    if depth_can_change(model, input_size):
        names = [b.name for b in find_blocks(model, input_size=input_size) if b.removable]
        ratio *= count_macs(remove_blocks(model, names), input_size) / base_macs
    example = torch.zeros(1, *input_size)
    thin = prune_width(model, DEFAULT_MIN_KEEP, example_input=example, criterion="l1")
    ratio *= count_macs(thin, input_size) / base_macs
    r = min(1.0, minimum_side(model, input_size) / min(input_size[1:]))
    ratio *= count_macs(with_resolution(model, r, input_size), input_size) / base_macs
    return ratio


def _loo_rmse(predictor: LowRankPolynomialRegressor) -> float | None:
    try:
        return float(predictor.loo_rmse())
    except ValueError:  # too few samples to leave one out
        return None


def _write_artifacts(result: CompressionResult, workdir: Path) -> None:
    from .io import save

    result.predictor.save(workdir / "predictor.json")
    (workdir / "plan.json").write_text(json.dumps(result.plan.to_dict(), indent=2) + "\n")
    save(result.model, workdir / "model")
    tmp = workdir / (REPORT_NAME + ".tmp")
    tmp.write_text(json.dumps(result.report, indent=2) + "\n")
    os.replace(tmp, workdir / REPORT_NAME)
    (workdir / "report.md").write_text(render_report_markdown(result.report))


def render_report_markdown(report: dict) -> str:
    """A readable Markdown summary of a report dict."""
    t = report["triple"]
    lat = report["latency_ms"]
    batch_key = [k for k in lat["before"] if k != "batch_1"][0]
    rows = [
        ("target FLOPs ratio", f"{report['target_flops_ratio']:.3f}"),
        ("measured MACs ratio", f"{report['macs_ratio']:.3f}"),
        ("triple (d, w, r)", f"({t['d']:.3f}, {t['w']:.3f}, {t['r']:.3f})"),
        ("base accuracy (test)", f"{report['base_accuracy']:.4f}"),
        ("pruned accuracy (test)", f"{report['accuracy']:.4f}"),
        ("predicted accuracy", f"{report['predicted_accuracy']:.4f}"),
        ("MACs", f"{report['macs_before']:,} -> {report['macs_after']:,}"),
        ("params", f"{report['params_before']:,} -> {report['params_after']:,}"),
        (
            "latency batch 1 (ms)",
            f"{lat['before']['batch_1']:.2f} -> {lat['after']['batch_1']:.2f} "
            f"({report['speedup']['batch_1']:.2f}x)",
        ),
        (
            f"latency {batch_key.replace('_', ' ')} (ms)",
            f"{lat['before'][batch_key]:.2f} -> {lat['after'][batch_key]:.2f} "
            f"({report['speedup'][batch_key]:.2f}x)",
        ),
        ("samples", str(report["n_samples"])),
        ("seconds", ", ".join(f"{k} {v:.1f}" for k, v in report["seconds"].items())),
    ]
    lines = ["# tridim report", "", "| quantity | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines) + "\n"
