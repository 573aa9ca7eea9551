"""``tridim bench ...``: each benchmark's options, its run, and its own table printed."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from tridim.cli.bench_compare import add_bench_compare
from tridim.cli.options import (
    add_execution_args,
    add_model_data_args,
    add_seed_and_output_args,
    data_options,
    execution_options,
    split_list,
    write_json,
)

__all__ = ["add_bench"]

RUNTIMES = ["eager", "onnxruntime"]


def _bench_handler(
    module: str, names: tuple[str, ...], *, json_in_out: bool = False, **derived: Callable
) -> Callable[[argparse.Namespace], int]:
    """A handler that runs ``tridim.bench.<module>``'s benchmark, prints its table, writes JSON.

    Parameters
    ----------
    module : str
        The benchmark's module under ``tridim.bench``: it has ``run_<module>_bench`` and
        ``format_table``.
    names : tuple of str
        Options passed on by the same name (lists as tuples).
    json_in_out : bool
        Whether the JSON goes to ``OUT/result.json`` without ``--json-out``.
    **derived : callable
        Further keyword arguments, each computed from the parsed arguments.
    """

    def handle(args: argparse.Namespace) -> int:
        bench = importlib.import_module(f"tridim.bench.{module}")
        keywords = {name: getattr(args, name) for name in names}
        keywords = {k: tuple(v) if isinstance(v, list) else v for k, v in keywords.items()}
        keywords.update({name: compute(args) for name, compute in derived.items()})
        positional = []
        if hasattr(args, "model"):  # a benchmark of a model on a dataset
            positional = [args.data, args.model]
            keywords["data_options"] = data_options(args) or None
        result = getattr(bench, f"run_{module}_bench")(*positional, **keywords)
        default = Path(args.out) / "result.json" if json_in_out else None
        write_json(args.json_out or default, result)  # kept before anything can fail
        print(bench.format_table(result))
        return 0

    return handle


def _add_bench_predictor(benches) -> None:
    parser = benches.add_parser(
        "predictor",
        help="accuracy predictor vs full polynomial and Gaussian process",
        description="Leave-one-out RMSE of the rank-1/rank-2 MAP, PolynomialFeatures(3) + "
        "RidgeCV and a Gaussian process on 13 axis-aligned noisy samples of synthetic "
        "surfaces (plus off-axis RMSE and solve regret against the known truth), and on a "
        "real samples file if given; fit and solve times.",
    )
    parser.add_argument("--samples", help="a real samples file to include")
    parser.add_argument("--noise", type=float, default=0.002, help="synthetic noise std")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--target", type=float, default=0.3, help="FLOPs budget (default: 0.3)")
    parser.add_argument("--json-out", help="also write the rows to this JSON file")
    handler = _bench_handler(
        "predictor", ("noise", "seed", "target"), samples_path=lambda args: args.samples
    )
    parser.set_defaults(handler=handler)


def _add_bench_common_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by the benchmarks that train a base model and finetune variants."""
    add_model_data_args(parser)
    parser.add_argument("--target", type=float, default=0.5, help="MACs ratio (default 0.5)")
    parser.add_argument("--epochs", type=int, default=3, help="finetuning epochs (default 3)")
    parser.add_argument(
        "--base-epochs",
        type=int,
        default=None,
        help="base training epochs (default: 15 digits, 10 otherwise)",
    )
    add_seed_and_output_args(parser)


def _add_bench_dims(benches) -> None:
    parser = benches.add_parser(
        "dims",
        help="reach one MACs budget by depth, width, resolution or all three",
        description="From one trained base model, reach the MACs target along depth only, "
        "width only, resolution only and a balanced triple; finetune each and "
        "report test accuracy, measured MACs ratio, parameters and CPU latency "
        "(with a thinner network trained from scratch as the honest baseline).",
    )
    _add_bench_common_args(parser)
    parser.add_argument(
        "--no-scratch", action="store_true", help="skip the thinner-from-scratch baseline"
    )
    names = ("target", "epochs", "base_epochs", "seed", "quiet")
    handler = _bench_handler("dims", names, include_scratch=lambda args: not args.no_scratch)
    parser.set_defaults(handler=handler)


def _add_bench_latency(benches) -> None:
    parser = benches.add_parser(
        "latency",
        help="a MACs budget against a latency budget at the same measured speed-up",
        description="From one trained base model, run optimize at a MACs target, then at a "
        "latency budget equal to the speed-up the MACs run measured (and at any "
        "--extra-speedups); time every final model against the base in the same run and "
        "report accuracy, MACs, speed-ups at batch 1 and --latency-batch, and the latency "
        "table's error on the final models.",
    )
    add_model_data_args(parser)
    parser.add_argument("--target", type=float, default=0.5, help="MACs ratio (default 0.5)")
    parser.add_argument("--base-epochs", type=int, default=10, help="default 10")
    parser.add_argument("--rounds", type=int, default=3, help="default 3")
    parser.add_argument("--epochs-per-step", type=int, default=1, help="default 1")
    parser.add_argument("--final-epochs", type=int, default=4, help="default 4")
    parser.add_argument("--refine", type=int, default=1, help="default 1")
    parser.add_argument("--latency-batch", type=int, default=64, help="default 64")
    parser.add_argument("--runtime", default="eager", choices=RUNTIMES)
    parser.add_argument(
        "--extra-speedups", type=float, nargs="*", default=[], help="more latency budgets"
    )
    parser.add_argument(
        "--train-subset", type=int, default=None, help="train on this many examples only"
    )
    parser.add_argument("--out", default="runs/bench-latency", help="run folders (resumable)")
    add_seed_and_output_args(parser)
    names = ("out", "target", "base_epochs", "rounds", "epochs_per_step", "final_epochs")
    names += ("refine", "latency_batch", "runtime", "extra_speedups", "train_subset")
    parser.set_defaults(handler=_bench_handler("latency", (*names, "seed", "quiet")))


def _add_bench_speedup(benches) -> None:
    parser = benches.add_parser(
        "speedup",
        help="a latency budget run several times: met as measured, and every timer agrees",
        description="From one trained base model, run optimize --target-speedup several "
        "times on each runtime (a fresh run folder each), then time each final model "
        "against the base as optimize's report did, as bench compare does, and in a fresh "
        "process that loads the saved model; print how far each is from the target and "
        "from each other. Cells are stored in --out as they finish (a re-run skips them).",
    )
    add_model_data_args(parser)
    parser.add_argument("--target-speedup", type=float, default=1.5, help="default 1.5")
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES, choices=RUNTIMES)
    parser.add_argument("--runs", type=int, default=3, help="runs per runtime (default 3)")
    parser.add_argument("--base-epochs", type=int, default=10, help="default 10")
    parser.add_argument("--latency-batch", type=int, default=64, help="default 64")
    parser.add_argument("--repeats", type=int, default=15, help="timed passes (default 15)")
    parser.add_argument("--out", default="runs/bench-speedup", help="cells and run folders")
    add_seed_and_output_args(parser)
    names = ("out", "target_speedup", "runtimes", "runs", "base_epochs", "latency_batch")
    handler = _bench_handler("speedup", (*names, "repeats", "seed", "quiet"), json_in_out=True)
    parser.set_defaults(handler=handler)


def _add_bench_channels(benches) -> None:
    parser = benches.add_parser(
        "channels",
        help="channel counts in multiples of 8 against any count, at equal MACs",
        description="Prune reference models by width to each MACs target with "
        "channel_multiple=1 and 8 (seeded random BatchNorm scales: latency depends on "
        "shapes, not weights, so nothing is trained), then time the base and both in "
        "alternating rounds on each runtime and batch size.",
    )
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5, 0.3])
    parser.add_argument("--runtimes", nargs="+", default=RUNTIMES, choices=RUNTIMES)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes (default 20)")
    add_seed_and_output_args(parser, quiet=False)
    names = ("targets", "runtimes", "batches", "repeats", "seed")
    parser.set_defaults(handler=_bench_handler("channels", names))


def _add_bench_allocator(benches) -> None:
    parser = benches.add_parser(
        "allocator",
        help="why tridim times in a controlled state: allocator and ONNX Runtime threads",
        description="Time an untrained ResNet-20 (28x28, batch 64) in fresh processes: "
        "eager in a fresh process and after five training steps, with glibc as it starts "
        "and with the heap pinned; ONNX Runtime alone and as two sessions taking turns, "
        "with and without spinning threads.",
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--json-out", help="write the full result as JSON here")
    parser.set_defaults(handler=_bench_handler("allocator", ("repeats",)))


def _add_bench_parallel(benches) -> None:
    parser = benches.add_parser(
        "parallel",
        help="a collection in worker processes against one process using every thread",
        description="Run the same one-shot collection alone in this process and in worker "
        "processes (an even share of the cores each), alternating, each in a fresh run "
        "folder; print the wall times, their ratio and the largest accuracy difference.",
    )
    add_model_data_args(parser)
    parser.add_argument("--train-subset", type=int, default=10000, help="default 10000")
    parser.add_argument("--rounds", type=int, default=1, help="default 1")
    parser.add_argument("--epochs-per-step", type=int, default=1, help="default 1")
    parser.add_argument("--base-epochs", type=int, default=2, help="default 2")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (default 2)")
    parser.add_argument("--out", default="runs/bench-parallel", help="base model and runs")
    add_seed_and_output_args(parser, quiet=False)
    names = ("out", "train_subset", "rounds", "epochs_per_step", "base_epochs", "repeats")
    parser.set_defaults(handler=_bench_handler("parallel", (*names, "seed")))


def _add_bench_proxy(benches) -> None:
    parser = benches.add_parser(
        "proxy",
        help="samples finetuned on part of the training set against the full recipe",
        description="Run the same collection once per --fractions of the training set "
        "(each in its own run folder, resumable); print each one's cost, the Spearman "
        "correlation of its sample accuracies with the full recipe's, and the triple its "
        "predictor solves for.",
    )
    add_model_data_args(parser)
    parser.add_argument("--target", type=float, default=0.5, help="MACs ratio (default 0.5)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--rounds", type=int, default=2, help="default 2")
    parser.add_argument("--epochs-per-step", type=int, default=2, help="default 2")
    parser.add_argument("--base-epochs", type=int, default=15, help="default 15")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many")
    parser.add_argument("--out", default="runs/bench-proxy", help="base model and run folders")
    add_seed_and_output_args(parser, quiet=False)
    names = ("out", "target", "fractions", "rounds", "epochs_per_step", "base_epochs")
    parser.set_defaults(handler=_bench_handler("proxy", (*names, "train_subset", "seed")))


def _add_bench_width(benches) -> None:
    parser = benches.add_parser(
        "width",
        help="compare filter-pruning criteria at one MACs target",
        description="From one trained base model, prune width to the MACs target by each "
        "criterion (plus Molchanov's iterative Taylor loop and a thinner net "
        "trained from scratch), finetune each, and report MACs ratio, parameters "
        "and accuracy before and after finetuning; then the Spearman correlation "
        "of each criterion with the oracle, next to Molchanov's figures.",
    )
    _add_bench_common_args(parser)
    parser.add_argument("--criteria", help="comma-separated criteria (default: all)")
    parser.add_argument(
        "--oracle-layers",
        help="comma-separated group roots for the oracle (default: 4 groups from first to last)",
    )
    parser.add_argument(
        "--oracle-batches",
        type=int,
        default=4,
        help="batches for the oracle; 0 skips it (default 4)",
    )
    parser.set_defaults(handler=_run_bench_width)


def _run_bench_width(args: argparse.Namespace) -> int:
    from tridim.bench.width import format_table, run_width_bench
    from tridim.prune.criteria import CRITERIA

    base_epochs = args.base_epochs
    if base_epochs is None:
        base_epochs = 15 if args.data == "digits" else 10
    result = run_width_bench(
        args.data,
        args.model,
        args.target,
        args.epochs,
        base_epochs,
        args.seed,
        args.quiet,
        split_list(args.oracle_layers),
        criteria=split_list(args.criteria) or CRITERIA,
        oracle_batches=args.oracle_batches,
        data_options=data_options(args),
    )
    print(format_table(result))
    write_json(args.json_out, result)
    return 0


def _add_bench_zoo(benches) -> None:
    parser = benches.add_parser(
        "zoo",
        help="every torchvision classifier through width, depth, resolution, realise, reload",
        description="Sweep model families: each step ends ok, n/a, refused (with the "
        "reason and what to do) or error (unexplained: a bug). Rows are written to "
        "--json-out as they finish.",
    )
    parser.add_argument(
        "--models",
        help="comma-separated names (default: every torchvision classifier; "
        "timm:<name> for timm models)",
    )
    parser.add_argument("--size", type=int, default=64, help="input side (default: 64)")
    parser.add_argument("--channels", type=int, default=3, help="input channels (default: 3)")
    parser.add_argument(
        "--max-params",
        type=float,
        default=150.0,
        help="skip models over this many million parameters (default: 150)",
    )
    parser.add_argument("--json-out", help="write the rows to this JSON file")
    parser.set_defaults(handler=_run_bench_zoo)


def _run_bench_zoo(args: argparse.Namespace) -> int:
    from tridim.bench.zoo import format_table, run_zoo_bench

    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        print(
            " | ".join(str(row.get(k, "")) for k in ("model", "width", "depth", "seconds")),
            file=sys.stderr,
            flush=True,
        )
        if args.json_out:
            write_json(args.json_out, rows, quiet=True)

    names = split_list(args.models) if args.models else None
    run_zoo_bench(
        names, size=args.size, channels=args.channels, max_params_m=args.max_params, on_row=keep
    )
    print(format_table(rows))
    write_json(args.json_out, rows)
    return 0


def _add_bench_train(benches) -> None:
    parser = benches.add_parser(
        "train",
        help="tridim's training loop against a bare PyTorch loop",
        description="Train the same seeded model on the same batches with tridim.train "
        "and with a bare PyTorch loop (same optimiser, batch size, device, precision), "
        "alternating runs; report the median wall times and the overhead.",
    )
    add_model_data_args(parser)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loop (default: 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    add_seed_and_output_args(parser, quiet=False, json_help="write the result as JSON here")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="instead: tridim.train on the CPU in fp32, bf16 autocast, channels_last and "
        "both, with the test accuracy each reaches, then evaluation batch sizes and grad modes",
    )
    add_execution_args(parser)
    parser.set_defaults(handler=_run_bench_train)


def _run_bench_train(args: argparse.Namespace) -> int:
    from tridim.bench import train

    options = dict(
        epochs=args.epochs,
        repeats=args.repeats,
        batch_size=args.batch_size,
        seed=args.seed,
        data_options=data_options(args),
    )
    if args.sweep:
        result = train.run_train_options_bench(args.data, args.model, **options)
        print(train.format_options_table(result))
    else:
        execution = execution_options(args)
        result = train.run_train_bench(args.data, args.model, **options, **execution)
        print(train.format_table(result))
    write_json(args.json_out, result)
    return 0


_BENCHES: list[Callable] = [
    _add_bench_predictor,
    _add_bench_width,
    _add_bench_dims,
    _add_bench_latency,
    _add_bench_speedup,
    _add_bench_channels,
    _add_bench_allocator,
    _add_bench_parallel,
    _add_bench_proxy,
    add_bench_compare,
    _add_bench_zoo,
    _add_bench_train,
]


def add_bench(sub) -> None:
    """Add ``tridim bench`` and every benchmark under it."""
    parser = sub.add_parser(
        "bench",
        help="benchmarks (print a table, write JSON)",
        description="Run a benchmark, print its table and optionally write its rows as JSON.",
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for add in _BENCHES:
        add(benches)
