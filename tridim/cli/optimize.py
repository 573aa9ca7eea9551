"""``tridim optimize``, ``collect``, ``fit``, ``solve`` and ``report``: the search and its
results."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tridim.cli.options import (
    add_execution_args,
    add_model_data_args,
    criteria,
    data_options,
    execution_options,
)
from tridim.cli.run_folder import (
    base_model,
    budget_args,
    collection_settings,
    fraction_or_auto,
    open_workdir,
)
from tridim.search.design import DEFAULT_DESIGN

__all__ = ["add_collect", "add_fit", "add_optimize", "add_report", "add_solve"]


def _add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """How the collection's samples are placed, made and finetuned."""
    parser.add_argument(
        "--rounds", type=int, default=2, help="axis samples per dimension (default: 2)"
    )
    parser.add_argument(
        "--design",
        type=int,
        default=DEFAULT_DESIGN,
        help="mixed samples on the budget's iso-cost surface (default: "
        f"{DEFAULT_DESIGN}; one-shot only)",
    )
    parser.add_argument(
        "--sample-fraction",
        type=fraction_or_auto,
        default="auto",
        help="samples finetune on this fraction of the training split, the same subset "
        "for all (default auto: all of up to 2,500 images, else 2,500 of them but at least "
        "a quarter; the final model always trains on all)",
    )
    parser.add_argument(
        "--channel-multiple",
        type=int,
        default=1,
        help="pruned layers keep a multiple of this many channels (default 1: any; 8: "
        "what vectorised kernels prefer)",
    )
    parser.add_argument(
        "--collection",
        choices=["one-shot", "chain"],
        default="one-shot",
        help="how samples are made: cut from the base like the final model (default), or "
        "the paper's chains of iterative prunes",
    )
    parser.add_argument(
        "--epochs-per-step",
        type=int,
        default=2,
        help="finetuning epochs of each sample and refine trial (default: 2)",
    )
    parser.add_argument(
        "--no-distill",
        action="store_true",
        help="finetune every trial without distilling from the original model",
    )


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    add_model_data_args(parser)
    parser.add_argument(
        "--weights",
        help="trained weights of the model (a weights-only state "
        "dict); if omitted, the model is trained first and cached in the workdir",
    )
    parser.add_argument(
        "--base-epochs",
        type=int,
        default=15,
        help="epochs to train the base model when no --weights (default: 15)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="FLOPs budget: pruned MACs / original MACs, in (0, 1] (default: 0.5)",
    )
    _add_recipe_args(parser)
    parser.add_argument(
        "--criterion",
        default="auto",
        choices=criteria(),
        help="width criterion (default: auto = bn_scale with BatchNorm, else l1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds everything (default: 0)")
    parser.add_argument(
        "--workdir",
        default=None,
        help="run folder (default: runs/<model>-<data>-t<target>); re-running on it resumes",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="if the workdir holds another tridim run, delete it and start over",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars: one line per stage")
    add_execution_args(parser)
    parser.add_argument(
        "--cluster",
        choices=["processes", "ray"],
        default=None,
        help="run independent trials side by side: 'processes' (worker processes on this "
        "machine, an even share of its cores each) or 'ray' (Ray tasks; RAY_ADDRESS, else a "
        "local Ray); default: one after another in this process",
    )


def add_optimize(sub) -> None:
    parser = sub.add_parser(
        "optimize",
        help="compress a model to a FLOPs budget (the whole pipeline)",
        description="Collect samples, fit the accuracy predictor, solve for the best "
        "(depth, width, resolution) under the budget, prune, finetune and report. "
        "With no arguments: ResNet-20 on the embedded digits data, target 0.5.",
    )
    _add_engine_args(parser)
    parser.add_argument(
        "--final-epochs",
        type=int,
        default=8,
        help="finetuning epochs of the final model (default: 8)",
    )
    parser.add_argument(
        "--refine",
        type=int,
        default=3,
        help="at most this many verify-and-refit iterations; they stop once the optimum "
        "stays put (default: 3)",
    )
    parser.add_argument(
        "--predictor",
        help="reuse a fitted predictor.json: skip collection (the base model cached beside "
        "it is reused too; refine refits on its samples plus the new ones)",
    )
    parser.add_argument(
        "--target-speedup",
        type=float,
        default=None,
        help="latency budget instead of --target: base latency / pruned latency (> 1), "
        "measured on --runtime at --latency-batch",
    )
    parser.add_argument(
        "--target-latency-ms",
        type=float,
        default=None,
        help="latency budget instead of --target: milliseconds per batch of --latency-batch",
    )
    parser.add_argument(
        "--runtime",
        default="eager",
        choices=["eager", "onnxruntime"],
        help="what a latency budget is measured on: PyTorch eager on --device, or ONNX "
        "Runtime on CPU (default: eager)",
    )
    parser.add_argument(
        "--latency-batch",
        type=int,
        default=64,
        help="batch size of latency budgets and of the report's second timing (default: 64)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_run_optimize)


def _run_optimize(args: argparse.Namespace) -> int:

    from tridim.run.cluster import check_cluster
    from tridim.run.optimize import (
        OptimizeSettings,
        check_predictor_covers,
        optimize,
        run_cost,
    )
    from tridim.run.report import render_report_markdown
    from tridim.search.predictor import LowRankPolynomialRegressor
    from tridim.training import data as datasets

    budget = budget_args(args)
    collection = collection_settings(args)
    execution = execution_options(args)
    check_cluster(args.cluster)
    settings = OptimizeSettings(
        args.final_epochs, args.refine, not args.no_distill, latency_batch=args.latency_batch
    )
    predictor = LowRankPolynomialRegressor.load(args.predictor) if args.predictor else None
    if predictor is not None and args.target is not None:
        check_predictor_covers(predictor, collection.target_flops_ratio, run_cost(args.predictor))
    bundle = datasets.load(args.data, **data_options(args))
    collection = collection_settings(args, bundle)
    sections = {"optimize": settings.manifest()}
    if args.target is not None:  # a latency run's settings hold its measured target
        sections["settings"] = collection.manifest()
    store = open_workdir(args, bundle, sections)
    model = base_model(args, bundle, store.path)
    result = optimize(
        model,
        bundle,
        args.target,
        **budget,
        latency_batch=args.latency_batch,
        workdir=store.path,
        predictor=predictor,
        rounds=args.rounds,
        design=args.design,
        channel_multiple=args.channel_multiple,
        sample_fraction=args.sample_fraction,
        collection=args.collection,
        epochs_per_step=args.epochs_per_step,
        final_epochs=args.final_epochs,
        refine=args.refine,
        distill=not args.no_distill,
        criterion=args.criterion,
        seed=args.seed,
        quiet=args.quiet,
        cluster=args.cluster,
        base_training_epochs=None if args.weights else args.base_epochs,
        **execution,
    )
    if not store.writes:
        return 0  # under torchrun rank 0 reports
    if args.json:
        print(json.dumps(result.report))
    else:
        print(render_report_markdown(result.report))
        print(f"run folder: {store.path}")
    return 0


def add_collect(sub) -> None:
    parser = sub.add_parser(
        "collect",
        help="collect (d, w, r, accuracy) samples only",
        description="Run the sample collection (Algorithm 1) alone; "
        "re-running with the same workdir resumes.",
    )
    _add_engine_args(parser)
    parser.set_defaults(handler=_run_collect)


def _run_collect(args: argparse.Namespace) -> int:

    from tridim.run.cluster import check_cluster
    from tridim.run.collect import collect
    from tridim.run.store import JOURNAL
    from tridim.training import data as datasets

    args.target = 0.5 if args.target is None else args.target
    collection_settings(args)
    execution = execution_options(args)
    check_cluster(args.cluster)
    bundle = datasets.load(args.data, **data_options(args))
    collection = collection_settings(args, bundle)
    store = open_workdir(args, bundle, {"settings": collection.manifest()})
    workdir = store.path
    model = base_model(args, bundle, workdir)
    samples = collect(
        model,
        bundle,
        args.target,
        workdir=workdir,
        rounds=args.rounds,
        design=args.design,
        channel_multiple=args.channel_multiple,
        sample_fraction=args.sample_fraction,
        collection=args.collection,
        distill=not args.no_distill,
        epochs_per_step=args.epochs_per_step,
        criterion=args.criterion,
        seed=args.seed,
        quiet=args.quiet,
        cluster=args.cluster,
        **execution,
    )
    if not store.writes:
        return 0  # under torchrun rank 0 reports
    rows = [
        {
            "key": s.extra.get("key"),
            "d": s.d,
            "w": s.w,
            "r": s.r,
            "macs_ratio": s.extra.get("macs_ratio"),
            "accuracy": s.accuracy,
        }
        for s in samples
    ]
    from tridim.run.report import markdown_table

    print(markdown_table(rows))
    print(f"journal: {workdir / JOURNAL}")
    return 0


def add_report(sub) -> None:
    parser = sub.add_parser(
        "report",
        help="print a run folder's report",
        description="Print the report of a run folder written by `tridim optimize`.",
    )
    parser.add_argument("run_dir", help="the run folder")
    parser.add_argument("--json", action="store_true", help="print report.json as it is")
    parser.add_argument(
        "--plots",
        nargs="?",
        const="",
        default=None,
        metavar="OUT_DIR",
        help="also write the figures as PNG files into OUT_DIR (default: RUN_DIR/plots); "
        "needs matplotlib (pip install tridim[notebooks])",
    )
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from tridim.run.report import render_report_markdown
    from tridim.run.store import REPORT

    path = Path(args.run_dir) / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {args.run_dir} a tridim run folder?")
    report = json.loads(path.read_text())
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise ValueError(f"--plots {args.plots} is a file: give a folder for the figures")
    print(json.dumps(report, indent=2) if args.json else render_report_markdown(report))
    if args.plots is not None:
        from tridim.bench.predictor import compare_models
        from tridim.run.plot import save_report_plots
        from tridim.run.store import load_run

        run = load_run(args.run_dir)
        rows = compare_models(run.samples)
        for written in save_report_plots(run, args.plots or None, model_rows=rows):
            print(f"wrote {written}", file=sys.stderr)
    return 0


def add_fit(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit",
        help="fit the accuracy predictor to a samples file",
        description="Fit the low-rank polynomial accuracy predictor (MAP) to a JSON-lines "
        "samples file and save it as JSON; prints leave-one-out RMSE and R^2.",
    )
    parser.add_argument("samples", help="samples file, one JSON object per line")
    parser.add_argument("-o", "--output", required=True, help="predictor JSON to write")
    parser.add_argument("--degree", type=int, default=3, help="polynomial degree (default: 3)")
    parser.add_argument("--rank", type=int, default=1, help="CP rank (default: 1)")
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.0,
        help="ridge penalty (default: 0; > 0 allows fewer samples than parameters)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=_run_fit)


def _run_fit(args: argparse.Namespace) -> int:
    from tridim.search.predictor import LowRankPolynomialRegressor
    from tridim.search.samples import read_samples, samples_to_xy

    X, y = samples_to_xy(read_samples(args.samples))
    if len(y) == 0:
        raise ValueError(f"{args.samples} holds no samples")
    estimator = LowRankPolynomialRegressor(degree=args.degree, rank=args.rank, alpha=args.alpha)
    summary = estimator.fit(X, y).save(args.output)
    if args.json:
        print(json.dumps({"predictor": str(args.output), **summary}))
        return 0
    loo = summary["loo_rmse"]
    print(f"samples      {summary['n_samples']}  (parameters: {summary['n_params']})")
    print(f"train RMSE   {summary['train_rmse']:.4g}")
    print(f"LOO RMSE     {'-' if loo is None else f'{loo:.4g}'}")
    print(f"R^2          {summary['r2']:.4f}")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


# -- solve ------------------------------------------------------------------------------


def add_solve(subparsers) -> None:
    parser = subparsers.add_parser(
        "solve",
        help="best (d, w, r) for FLOPs budgets",
        description="Maximise the predicted accuracy subject to cost(d, w, r) = target, "
        "within the range the predictor's samples cover. The cost is the one `tridim "
        "optimize` solved with (the run folder's cost.json: measured MACs, or predicted "
        "latency for a latency budget), else d * w^2 * r^2. The multiplier is accuracy per "
        "unit of log-cost (dF*/d ln T).",
    )
    parser.add_argument("predictor", help="predictor JSON written by `tridim fit`")
    parser.add_argument(
        "--target", type=float, nargs="+", required=True, help="FLOPs ratios in (0, 1]"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per budget")
    parser.set_defaults(handler=_run_solve)


def _run_solve(args: argparse.Namespace) -> int:
    from tridim.run.optimize import run_cost
    from tridim.search.predictor import LowRankPolynomialRegressor
    from tridim.search.solver import pareto

    predictor = LowRankPolynomialRegressor.load(args.predictor)
    cost = run_cost(args.predictor)
    solutions = pareto(predictor, args.target, cost=cost)
    cost_name = "d*w^2*r^2" if cost is None else f"the run's measured {cost.name} (cost.json)"
    if args.json:
        for solution in solutions:
            print(json.dumps({**solution.to_dict(), "cost": cost_name}))
        return 0
    print(f"cost: {cost_name}")
    rows = [
        {
            "target": s.target_flops_ratio,
            "d": s.triple.d,
            "w": s.triple.w,
            "r": s.triple.r,
            "accuracy": s.predicted_accuracy,
            "multiplier": s.multiplier,
            "kkt_residual": s.kkt_residual,
        }
        for s in solutions
    ]
    from tridim.run.report import markdown_table

    print(markdown_table(rows))
    return 0
