"""The ``tridim`` command line: the only module that parses arguments or prints tables."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main", "build_parser"]


def _format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of dict rows (floats shown with 4 significant digits)."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if value is None:
            return "-"
        return str(value)

    body = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _write_json(path: str | Path | None, payload) -> None:
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def _data_options(args: argparse.Namespace) -> dict:
    options = {}
    if getattr(args, "data_root", None):
        options["root"] = args.data_root
    if getattr(args, "size", None):
        options["size"] = args.size
    return options


def _add_model_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="resnet20",
        help="model name: resnet20/32/56/110 or a torchvision classifier (default: resnet20)",
    )
    parser.add_argument(
        "--data",
        default="digits",
        help="digits (default), fashion-mnist, cifar10, cifar100, or an "
        "ImageFolder folder with train/ and val/",
    )
    parser.add_argument("--data-root", help="folder holding the dataset files")
    parser.add_argument("--size", type=int, help="image side for digits (16 or 32)")


# -- info -------------------------------------------------------------------------------


def _add_info(sub) -> None:
    parser = sub.add_parser(
        "info",
        help="MACs, parameters, input shape and classes",
        description="Show a model's cost on a dataset's input shape.",
    )
    _add_model_data_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from . import data as datasets
    from . import models
    from .measure import count_macs, count_params

    bundle = datasets.load(args.data, **_data_options(args))
    model = models.build(args.model, bundle.num_classes, bundle.input_shape[0])
    info = {
        "model": args.model,
        "data": bundle.name,
        "input_shape": list(bundle.input_shape),
        "num_classes": bundle.num_classes,
        "macs": count_macs(model, bundle.input_shape),
        "params": count_params(model),
        "sizes": bundle.describe()["sizes"],
    }
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            print(f"{key:12s} {value:,}" if isinstance(value, int) else f"{key:12s} {value}")
    return 0


# -- train ------------------------------------------------------------------------------


def _add_train(sub) -> None:
    parser = sub.add_parser(
        "train",
        help="train a reference model from scratch",
        description="Train a model on a dataset and save its weights "
        "(weights-only file) with a JSON description.",
    )
    _add_model_data_args(parser)
    parser.add_argument("--epochs", type=int, default=15, help="epochs (default: 15)")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--schedule", default="cosine", choices=["cosine", "onecycle", "constant"])
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default="runs/train/model.pt",
        help="weights file to write; a .json description is written beside it",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from . import data as datasets
    from . import models
    from .measure import count_macs, count_params
    from .train import evaluate, seed_everything, train

    bundle = datasets.load(args.data, **_data_options(args))
    seed_everything(args.seed)
    model = models.build(args.model, bundle.num_classes, bundle.input_shape[0])
    history = train(
        model,
        bundle,
        args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        schedule=args.schedule,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        quiet=args.quiet,
    )
    accuracy = evaluate(model, bundle.loader("test", 256))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    description = {
        "model": model.tridim_spec.to_dict(),
        "data": bundle.describe(),
        "weights": out.name,
        "test_accuracy": accuracy,
        "epochs": args.epochs,
        "seconds_per_epoch": history.seconds_per_epoch,
        "seed": args.seed,
        "macs": count_macs(model, bundle.input_shape),
        "params": count_params(model),
    }
    out.with_suffix(".json").write_text(json.dumps(description, indent=2) + "\n")
    if args.json:
        print(json.dumps(description))
    else:
        print(
            f"test accuracy {accuracy:.4f}  ({args.epochs} epochs, "
            f"{history.seconds_per_epoch:.2f} s/epoch)  -> {out}"
        )
    return 0


# -- entry point ------------------------------------------------------------------------

_COMMANDS: list[Callable] = [_add_info, _add_train]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tridim`` command, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tridim",
        description="Compress a trained CNN to a FLOPs budget along depth, width and "
        "input resolution.",
    )
    parser.add_argument("--version", action="version", version="tridim 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tridim`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"tridim {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
