"""``tridim info``, ``tridim train`` and ``tridim export-onnx``: one model, no search."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tridim.cli.options import (
    add_execution_args,
    add_model_data_args,
    data_options,
    execution_options,
)

__all__ = ["add_export", "add_info", "add_train"]


def add_info(sub) -> None:
    parser = sub.add_parser(
        "info",
        help="MACs, parameters, input shape and classes",
        description="Show a model's cost on a dataset's input shape.",
    )
    add_model_data_args(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from tridim.cost.macs import count_macs, count_params
    from tridim.training import data as datasets
    from tridim.training import models

    bundle = datasets.load(args.data, **data_options(args))
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


def add_train(sub) -> None:
    parser = sub.add_parser(
        "train",
        help="train a reference model from scratch",
        description="Train a model on a dataset and save its weights "
        "(weights-only file) with a JSON description.",
    )
    add_model_data_args(parser)
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
    add_execution_args(parser)
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from tridim.cost.macs import count_macs, count_params
    from tridim.training import data as datasets
    from tridim.training import models
    from tridim.training.distributed import is_writer
    from tridim.training.train import evaluate, seed_everything, train

    execution = execution_options(args)
    bundle = datasets.load(args.data, **data_options(args))
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
        **execution,
    )
    accuracy = evaluate(
        model, bundle.loader("test", 256, device=execution["device"]), precision=args.precision
    )
    if not is_writer():  # under torchrun rank 0 alone writes
        return 0
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


def add_export(sub) -> None:
    parser = sub.add_parser(
        "export-onnx",
        help="export a saved (pruned) model to ONNX",
        description="Export a model saved by tridim (e.g. RUN_DIR/model) "
        "to an ONNX file with a dynamic batch dimension.",
    )
    parser.add_argument("model_dir", help="folder written by tridim.save (RUN_DIR/model)")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        help="input size (default: the one saved with the model)",
    )
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from tridim.run.io import describe, export_onnx, load

    model = load(args.model_dir)
    size = args.input_size or describe(args.model_dir).get("input_size")
    if not size:
        raise ValueError("the saved model does not record its input size: pass --input-size C H W")
    print(export_onnx(model, args.output, size))
    return 0
