"""``tridim bench compare``: its full and ``--quick`` settings, its options, its run."""

from __future__ import annotations

import argparse
from pathlib import Path

from tridim.cli.options import add_model_data_args, criteria, data_options, write_json

__all__ = ["add_bench_compare", "COMPARE_DEFAULTS", "QUICK_COMPARE_DEFAULTS", "QUICK_SUBSET"]

#: ``bench compare``'s settings: the full benchmark's, and ``--quick``'s (digits-sized,
#: minutes). An option given on the command line wins over either.
COMPARE_DEFAULTS = {
    "targets": [0.5, 0.3],
    "seeds": 2,
    "final_epochs": 8,
    "base_epochs": "plateau",
    "base_patience": 3,
    "max_base_epochs": 60,
    "rounds": 2,
    "design": 4,
    "refine": 3,
    "epochs_per_step": 2,
    "sparse_epochs": 2,
    "latency_batch": 64,
}
QUICK_COMPARE_DEFAULTS = {
    "targets": [0.5],
    "seeds": 1,
    "final_epochs": 2,
    "base_epochs": "plateau",  # at most 8 epochs, as the fixed 8 it replaced
    "base_patience": 1,
    "max_base_epochs": 8,
    "rounds": 1,
    "design": 2,
    "refine": 1,
    "epochs_per_step": 1,
    "sparse_epochs": 1,
    "latency_batch": 16,
}
QUICK_SUBSET = {"train": 384, "val": 128, "test": 256}


def add_bench_compare(benches) -> None:
    parser = benches.add_parser(
        "compare",
        help="tridim against one dimension, Torch-Pruning, scratch and a grid, at equal MACs",
        description="From one base model (trained once, cached), fill one cell per method, "
        "target and seed, each stored in --out as it finishes (a re-run skips finished "
        "cells); then print the table, write JSON, summary.md and two plots. --quick "
        "changes the defaults below to minutes-sized ones (digits slices of "
        f"{QUICK_SUBSET['train']}/{QUICK_SUBSET['val']}/{QUICK_SUBSET['test']} images); "
        "options given with it still win.",
    )
    add_model_data_args(parser)

    def option(flag: str, help: str, **kwargs) -> None:
        key = flag[2:].replace("-", "_")
        full, quick = COMPARE_DEFAULTS[key], QUICK_COMPARE_DEFAULTS[key]
        shown = " ".join(map(str, full)) if isinstance(full, list) else full
        quick_shown = " ".join(map(str, quick)) if isinstance(quick, list) else quick
        help = f"{help} (default {shown}; --quick: {quick_shown})".lstrip()
        parser.add_argument(flag, default=None, help=help, **kwargs)

    option("--targets", "MACs ratios", type=float, nargs="+")
    option("--seeds", "seeds per target", type=int)
    option("--final-epochs", "", type=int)
    option(
        "--base-epochs",
        "base training: 'plateau' (SGD at lr 0.05, divided by 10 when val accuracy "
        "plateaus, stopped at the plateau after two divisions) or a number of epochs under "
        "a cosine schedule",
        type=_epochs_or_plateau,
    )
    option(
        "--base-patience",
        "plateau: epochs without a val accuracy gain above 0.001 before the lr is divided",
        type=int,
    )
    option("--max-base-epochs", "plateau: at most this many", type=int)
    option("--rounds", "tridim axis samples", type=int)
    option("--design", "tridim mixed samples", type=int)
    option("--refine", "tridim refine, at most", type=int)
    parser.add_argument(
        "--criterion",
        default="auto",
        choices=criteria(),
        help="width criterion of tridim, width-only and the grid (default auto)",
    )
    option("--epochs-per-step", "", type=int)
    option("--sparse-epochs", "Torch-Pruning BN-scale sparse training", type=int)
    option("--latency-batch", "", type=int)
    parser.add_argument("--methods", nargs="+", default=None, help="a subset of the methods")
    parser.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help=f"train on this many (default all; --quick: {QUICK_SUBSET['train']})",
    )
    parser.add_argument("--quick", action="store_true", help="minutes-sized defaults (see above)")
    parser.add_argument("--out", default="runs/bench-compare", help="cells and run folders")
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.add_argument("--json-out", help="write the full result as JSON here")
    parser.set_defaults(handler=_run_bench_compare)


def _epochs_or_plateau(text: str) -> int | str:
    """``--base-epochs``: a non-negative integer or ``plateau``."""
    if text == "plateau":
        return text
    try:
        epochs = int(text)
    except ValueError:
        epochs = -1
    if epochs < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'plateau', got {text!r}")
    return epochs


def _run_bench_compare(args: argparse.Namespace) -> int:
    from tridim.bench.compare import METHODS, run_compare_bench
    from tridim.bench.compare_summary import plot, render_markdown

    defaults = QUICK_COMPARE_DEFAULTS if args.quick else COMPARE_DEFAULTS
    options = {
        key: default if getattr(args, key) is None else getattr(args, key)
        for key, default in defaults.items()
    }
    options.update(
        targets=tuple(options["targets"]),
        criterion=args.criterion,
        methods=tuple(args.methods or METHODS),
        train_subset=args.train_subset,
    )
    data = args.data
    if args.quick:
        train = QUICK_SUBSET["train"] if args.train_subset is None else args.train_subset
        options.update(latency_repeats=3, subset={**QUICK_SUBSET, "train": train})
        options["train_subset"] = None
    result = run_compare_bench(
        data,
        args.model,
        out=args.out,
        quiet=args.quiet,
        data_options=data_options(args) or None,
        **options,
    )
    markdown = render_markdown(result)
    print(markdown)
    out = Path(args.out)
    (out / "summary.md").write_text(markdown)
    write_json(args.json_out or out / "result.json", result)
    try:
        paths = plot(result, out / "plots")
        print("plots: " + ", ".join(str(p) for p in paths))
    except ImportError:
        print("plots skipped: pip install -e '.[notebooks]' for matplotlib")
    return 0
