"""The ``tridim`` command line: the only module that parses arguments or prints tables."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tridim import __version__
from tridim.search.design import DEFAULT_DESIGN

__all__ = ["main", "build_parser"]


def _table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """The command line's tables: Markdown, floats to 4 significant digits."""
    from tridim.run.report import format_table

    return format_table(rows, columns, float_format=".4g") or "(no rows)"


def _write_json(path: str | Path | None, payload, *, quiet: bool = False) -> None:
    if path is None:
        return
    from tridim.atomic import atomic_write_json

    atomic_write_json(path, payload)
    if not quiet:
        print(f"wrote {path}", file=sys.stderr)


def _data_options(args: argparse.Namespace) -> dict:
    """``data.load`` options from ``--data-root`` and ``--size``, checked against ``--data``."""
    options = {}
    digits = str(args.data).lower() == "digits"
    if getattr(args, "data_root", None):
        if digits:
            raise ValueError("digits takes no option root: it ships inside scikit-learn")
        options["root"] = args.data_root
    if getattr(args, "size", None):
        if not digits:
            raise ValueError(f"--size is for digits only, not {args.data}")
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
    parser.add_argument(
        "--size", type=int, help="image side for digits, 8 to 64 pixels (default: 16)"
    )


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
    from tridim.cost.macs import count_macs, count_params
    from tridim.training import data as datasets
    from tridim.training import models

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


# -- where to compute -------------------------------------------------------------------


def _add_execution_args(parser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="autocast precision of training and evaluation (default: fp32)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="NHWC memory format (faster on GPUs)"
    )


def _execution_options(args: argparse.Namespace) -> dict:
    """``device``, ``precision`` and ``channels_last``, checked before any work.

    Under torchrun this joins the process group (the device becomes this rank's).
    """
    from tridim.training.device import Execution
    from tridim.training.distributed import setup

    execution = Execution.of(args.device, args.precision, args.channels_last)
    return {
        "device": setup(execution.device),
        "precision": execution.precision,
        "channels_last": execution.channels_last,
    }


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
    _add_execution_args(parser)
    parser.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import torch

    from tridim.cost.macs import count_macs, count_params
    from tridim.training import data as datasets
    from tridim.training import models
    from tridim.training.distributed import is_writer
    from tridim.training.train import evaluate, seed_everything, train

    execution = _execution_options(args)
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


# -- optimize / collect / report / export-onnx ------------------------------------------


def _criteria() -> tuple[str, ...]:
    from tridim.prune.criteria import CRITERIA

    return ("auto", *CRITERIA)


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
        type=_fraction_or_auto,
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
    _add_model_data_args(parser)
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
        choices=_criteria(),
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
    _add_execution_args(parser)
    parser.add_argument(
        "--cluster",
        choices=["processes", "ray"],
        default=None,
        help="run independent trials side by side: 'processes' (worker processes on this "
        "machine, an even share of its cores each) or 'ray' (Ray tasks; RAY_ADDRESS, else a "
        "local Ray); default: one after another in this process",
    )


def _add_optimize(sub) -> None:
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


def _budget_args(args: argparse.Namespace) -> dict:
    """The latency budget options of ``optimize``; ``--target`` 0.5 if none is given."""
    latency = {
        "target_speedup": getattr(args, "target_speedup", None),
        "target_latency_ms": getattr(args, "target_latency_ms", None),
    }
    given = [name for name, value in latency.items() if value is not None]
    if len(given) > 1 or (given and args.target is not None):
        raise ValueError("give one budget: --target, --target-speedup or --target-latency-ms")
    if not given:
        args.target = 0.5 if args.target is None else args.target
        return {}
    from tridim.budget.latency import LatencyBudget

    LatencyBudget(**latency, batch_size=args.latency_batch, runtime=args.runtime)  # checks
    return {**latency, "runtime": args.runtime}


def _workdir(args: argparse.Namespace) -> Path:
    if args.workdir:
        return Path(args.workdir)
    data = Path(str(args.data)).name or "data"
    if args.target is None:
        speedup, ms = (
            getattr(args, "target_speedup", None),
            getattr(args, "target_latency_ms", None),
        )
        budget = f"x{speedup:g}" if speedup is not None else f"ms{ms:g}"
        return Path("runs") / f"{args.model}-{data}-{budget}-{args.runtime}"
    return Path("runs") / f"{args.model}-{data}-t{args.target:g}"


def _fraction_or_auto(text: str) -> float | str:
    """``--sample-fraction``: a number, or ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in (0, 1] or auto, got {text!r}"
        ) from None


def _collection_settings(args: argparse.Namespace, bundle=None):
    """The collection settings, validated; with the data, ``auto`` criterion resolved."""
    from tridim.run.collect import CollectionSettings
    from tridim.training import models

    target = 0.5 if args.target is None else args.target  # a latency run measures its own
    settings = CollectionSettings(
        target,
        args.rounds,
        args.epochs_per_step,
        args.criterion,
        args.seed,
        collection=args.collection,
        design=args.design,
        distill=not args.no_distill,
        channel_multiple=args.channel_multiple,
        sample_fraction=args.sample_fraction,
    )
    if bundle is None:
        return settings
    settings = settings.for_data(len(bundle.train))
    if settings.criterion != "auto":
        return settings
    return settings.for_model(models.build(args.model, bundle.num_classes, bundle.input_shape[0]))


def _open_workdir(args: argparse.Namespace, bundle, sections: dict):
    """The run folder, checked against the run's settings before any training.

    ``--force`` deletes the tridim run a folder holds first (and nothing else).
    """
    from tridim.run.store import RunStore
    from tridim.training.distributed import barrier

    workdir = _workdir(args)
    store = RunStore(workdir)  # refuses a file
    if getattr(args, "force", False):
        store.clear()
    barrier()  # under torchrun the other ranks check the folder rank 0 has emptied
    store.check({"data": _data_identity(bundle), **sections})
    return store


def _data_identity(bundle) -> dict:
    """What a run folder and a cached base model record of the data they were made on."""
    return {
        "name": bundle.name,
        "input_shape": list(bundle.input_shape),
        "num_classes": bundle.num_classes,
    }


def _read_weights(path: Path, model, name: str) -> None:
    """Load a weights-only state dict (or a tridim checkpoint) into ``model``."""
    import torch

    from tridim.run.io import state_dict_mismatch

    if not path.is_file():
        raise FileNotFoundError(f"--weights {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a text file, a pickle of code, a truncated file ...
        raise ValueError(
            f"--weights {path} is not a weights-only PyTorch state dict "
            f"({type(error).__name__}): save one with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    problem = state_dict_mismatch(state, model)
    if problem:
        raise ValueError(f"--weights {path} does not fit {name}: {problem}")
    model.load_state_dict(state)


def _base_cache(args: argparse.Namespace, workdir: Path) -> Path:
    """Where the trained base model is cached: the workdir's, or that of the run whose
    predictor is reused (so reusing a predictor never trains the base model again)."""
    from tridim.run.store import BASE

    name = f"{args.model}-e{args.base_epochs}-s{args.seed}.pt"
    cache = workdir / BASE / name
    predictor = getattr(args, "predictor", None)
    if not cache.is_file() and predictor:
        beside = Path(predictor).parent / BASE / name
        if beside.is_file():
            return beside
    return cache


def _base_model(args: argparse.Namespace, bundle, workdir: Path):
    from tridim.training import models
    from tridim.training.distributed import barrier, is_writer
    from tridim.training.train import load_checkpoint, save_checkpoint, seed_everything, train

    seed_everything(args.seed)  # the initial weights, too, come from the seed
    model = models.build(args.model, bundle.num_classes, bundle.input_shape[0])
    if args.weights:
        _read_weights(Path(args.weights), model, args.model)
        return model
    cache = _base_cache(args, workdir)
    barrier()  # under torchrun every rank sees the same cache
    if cache.is_file():
        trained_on = load_checkpoint(cache, model).get("data")
        if trained_on == _data_identity(bundle):
            return model
        if trained_on is not None:
            raise ValueError(
                f"the cached base model {cache} was trained on {trained_on['name']} "
                f"{tuple(trained_on['input_shape'])}, not on this run's {bundle.name} "
                f"{tuple(bundle.input_shape)}: reuse a predictor fitted on {bundle.name}, "
                "or give --weights"
            )
        cache = workdir / cache.relative_to(cache.parent.parent)  # unknown data: train anew
        seed_everything(args.seed)
        model = models.build(args.model, bundle.num_classes, bundle.input_shape[0])
    if is_writer():
        print(
            f"training the base {args.model} for {args.base_epochs} epochs (cached in {cache})",
            file=sys.stderr,
        )
    partial = cache.with_suffix(".partial.pt")
    train(
        model,
        bundle,
        args.base_epochs,
        lr=0.05,
        seed=args.seed,
        quiet=args.quiet,
        evaluate_each_epoch=False,
        checkpoint_path=partial,
        label="base model",
        **_execution_options(args),
    )
    if is_writer():
        save_checkpoint(cache, model, data=_data_identity(bundle))
        partial.unlink(missing_ok=True)
    barrier()
    return model


def _run_optimize(args: argparse.Namespace) -> int:

    from tridim.run.cluster import check_cluster
    from tridim.run.optimize import OptimizeSettings, check_predictor_covers, optimize, run_cost
    from tridim.run.report import render_report_markdown
    from tridim.search.predictor import LowRankPolynomialRegressor
    from tridim.training import data as datasets

    budget = _budget_args(args)
    collection = _collection_settings(args)
    execution = _execution_options(args)
    check_cluster(args.cluster)
    settings = OptimizeSettings(
        args.final_epochs, args.refine, not args.no_distill, latency_batch=args.latency_batch
    )
    predictor = LowRankPolynomialRegressor.load(args.predictor) if args.predictor else None
    if predictor is not None and args.target is not None:
        check_predictor_covers(predictor, collection.target_flops_ratio, run_cost(args.predictor))
    bundle = datasets.load(args.data, **_data_options(args))
    collection = _collection_settings(args, bundle)
    sections = {"optimize": settings.manifest()}
    if args.target is not None:  # a latency run's settings hold its measured target
        sections["settings"] = collection.manifest()
    store = _open_workdir(args, bundle, sections)
    model = _base_model(args, bundle, store.path)
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


def _add_collect(sub) -> None:
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
    _collection_settings(args)
    execution = _execution_options(args)
    check_cluster(args.cluster)
    bundle = datasets.load(args.data, **_data_options(args))
    collection = _collection_settings(args, bundle)
    store = _open_workdir(args, bundle, {"settings": collection.manifest()})
    workdir = store.path
    model = _base_model(args, bundle, workdir)
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
    print(_table(rows))
    print(f"journal: {workdir / JOURNAL}")
    return 0


def _add_report(sub) -> None:
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


def _add_export(sub) -> None:
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


# -- fit --------------------------------------------------------------------------------


def _add_fit(subparsers) -> None:
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


def _add_solve(subparsers) -> None:
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
    print(_table(rows))
    return 0


# -- bench predictor --------------------------------------------------------------------


def _add_bench_predictor(bench_subparsers) -> None:
    parser = bench_subparsers.add_parser(
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
    parser.set_defaults(handler=_run_bench_predictor)


def _run_bench_predictor(args: argparse.Namespace) -> int:
    from tridim.bench.predictor import run_predictor_bench

    rows = run_predictor_bench(
        samples_path=args.samples, noise=args.noise, seed=args.seed, target=args.target
    )
    print(_table(rows))
    _write_json(args.json_out, rows)
    return 0


def _add_bench_common_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by the benchmarks that train a base model and finetune variants."""
    _add_model_data_args(parser)
    parser.add_argument("--target", type=float, default=0.5, help="MACs ratio (default 0.5)")
    parser.add_argument("--epochs", type=int, default=3, help="finetuning epochs (default 3)")
    parser.add_argument(
        "--base-epochs",
        type=int,
        default=None,
        help="base training epochs (default: 15 digits, 10 otherwise)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.add_argument("--json-out", help="write the full result as JSON here")


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
    parser.set_defaults(handler=_run_bench_dims)


def _run_bench_dims(args: argparse.Namespace) -> int:
    from tridim.bench.dims import run_dims_bench

    result = run_dims_bench(
        args.data,
        args.model,
        target=args.target,
        epochs=args.epochs,
        base_epochs=args.base_epochs,
        seed=args.seed,
        quiet=args.quiet,
        include_scratch=not args.no_scratch,
        data_options=_data_options(args) or None,
    )
    config = result["config"]
    print(
        f"tridim bench dims: {config['model']} on {config['data']} "
        f"{'x'.join(map(str, config['input_size']))}, target MACs ratio {config['target']:g}, "
        f"base {config['base_epochs']} epochs, finetune {config['epochs']} epochs"
    )
    rows = []
    for row in [result["base"], *result["rows"]]:
        realised = row.get("realised") or {}
        rows.append(
            {
                "variant": row["name"],
                "d": realised.get("d"),
                "w": realised.get("w"),
                "r": realised.get("r"),
                "accuracy": row["accuracy"],
                "acc_before_ft": row.get("accuracy_before_finetune"),
                "macs_ratio": row["macs_ratio"],
                "params": row["params"],
                "ms_b1": row["latency_ms_b1"],
                "ms_b64": row["latency_ms_b64"],
                "speedup_b1": row["speedup_b1"],
                "speedup_b64": row["speedup_b64"],
            }
        )
    print(_table(rows))
    print(
        "MACs: conv + linear, ratio to the base; accuracy: test, after finetuning; "
        "latency: median CPU forward time; speed-up over the base."
    )
    _write_json(args.json_out, result)
    return 0


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
    _add_model_data_args(parser)
    parser.add_argument("--target", type=float, default=0.5, help="MACs ratio (default 0.5)")
    parser.add_argument("--base-epochs", type=int, default=10, help="default 10")
    parser.add_argument("--rounds", type=int, default=3, help="default 3")
    parser.add_argument("--epochs-per-step", type=int, default=1, help="default 1")
    parser.add_argument("--final-epochs", type=int, default=4, help="default 4")
    parser.add_argument("--refine", type=int, default=1, help="default 1")
    parser.add_argument("--latency-batch", type=int, default=64, help="default 64")
    parser.add_argument("--runtime", default="eager", choices=["eager", "onnxruntime"])
    parser.add_argument(
        "--extra-speedups", type=float, nargs="*", default=[], help="more latency budgets"
    )
    parser.add_argument(
        "--train-subset", type=int, default=None, help="train on this many examples only"
    )
    parser.add_argument("--out", default="runs/bench-latency", help="run folders (resumable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.add_argument("--json-out", help="write the full result as JSON here")
    parser.set_defaults(handler=_run_bench_latency)


def _run_bench_latency(args: argparse.Namespace) -> int:
    from tridim.bench.latency import run_latency_bench

    result = run_latency_bench(
        args.data,
        args.model,
        out=args.out,
        target=args.target,
        base_epochs=args.base_epochs,
        rounds=args.rounds,
        epochs_per_step=args.epochs_per_step,
        final_epochs=args.final_epochs,
        refine=args.refine,
        latency_batch=args.latency_batch,
        runtime=args.runtime,
        extra_speedups=tuple(args.extra_speedups),
        train_subset=args.train_subset,
        seed=args.seed,
        quiet=args.quiet,
        data_options=_data_options(args) or None,
    )
    config, batch = result["config"], f"batch_{args.latency_batch}"
    print(
        f"tridim bench latency: {config['model']} on {config['data']} "
        f"({config['train_examples']} training images), base {result['base']['epochs']} epochs "
        f"(test accuracy {result['base']['accuracy']:.4f}), runtime {config['runtime']}, "
        f"{config['threads']} threads"
    )
    rows = [
        {
            "run": row["name"],
            "d": row["triple"]["d"],
            "w": row["triple"]["w"],
            "r": row["triple"]["r"],
            "accuracy": row["accuracy"],
            "macs_ratio": row["macs_ratio"],
            "analytic": row["analytic_flops_ratio"],
            "speedup_b1": row["speedup"]["batch_1"],
            f"speedup_b{args.latency_batch}": row["speedup"][batch],
            "predicted": row["budget"].get("predicted_speedup"),
            "table_error": row["table_error"],
        }
        for row in result["rows"]
    ]
    print(_table(rows))
    print(
        "accuracy: test, after the final finetune; speed-up: base / final latency, timed "
        "against the base in alternating rounds; predicted: the latency table's speed-up; "
        "table_error: table-predicted / measured latency of the final model - 1."
    )
    _write_json(args.json_out, result)
    return 0


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
    _add_model_data_args(parser)
    parser.add_argument("--target-speedup", type=float, default=1.5, help="default 1.5")
    parser.add_argument(
        "--runtimes", nargs="+", default=["eager", "onnxruntime"], choices=["eager", "onnxruntime"]
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per runtime (default 3)")
    parser.add_argument("--base-epochs", type=int, default=10, help="default 10")
    parser.add_argument("--latency-batch", type=int, default=64, help="default 64")
    parser.add_argument("--repeats", type=int, default=15, help="timed passes (default 15)")
    parser.add_argument("--out", default="runs/bench-speedup", help="cells and run folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.add_argument("--json-out", help="write the full result as JSON here")
    parser.set_defaults(handler=_run_bench_speedup)


def _run_bench_speedup(args: argparse.Namespace) -> int:
    from tridim.bench.speedup import run_speedup_bench

    result = run_speedup_bench(
        args.data,
        args.model,
        out=args.out,
        target_speedup=args.target_speedup,
        runtimes=tuple(args.runtimes),
        runs=args.runs,
        base_epochs=args.base_epochs,
        latency_batch=args.latency_batch,
        repeats=args.repeats,
        seed=args.seed,
        quiet=args.quiet,
        data_options=_data_options(args) or None,
    )
    config = result["config"]
    print(
        f"tridim bench speedup: {config['model']} on {config['data']}, base "
        f"{result['base']['epochs']} epochs (test accuracy {result['base']['accuracy']:.4f}), "
        f"target {config['target_speedup']:g}x at batch {config['latency_batch']}"
    )
    rows = [
        {
            "runtime": cell["runtime"],
            "run": cell["run"],
            "d": cell["triple"]["d"],
            "w": cell["triple"]["w"],
            "r": cell["triple"]["r"],
            "accuracy": cell["accuracy"],
            "optimize": cell["optimize"],
            "bench_compare": cell["bench_compare"],
            "fresh_process": cell["fresh_process"],
            "off_target": cell["off_target"],
            "disagreement": cell["disagreement"],
            "base_ms_fresh": cell["base_ms"]["fresh_process"],
        }
        for cell in result["cells"]
    ]
    print(_table(rows))
    print(
        f"speed-ups: base / final latency at batch {config['latency_batch']}, timed in "
        "alternating rounds by tridim.cost.timing; off_target: the largest |speed-up / target - 1| "
        "of the three; disagreement: largest / smallest of the three - 1. "
        f"Largest off_target {result['max_off_target']:.1%}, "
        f"largest disagreement {result['max_disagreement']:.1%}."
    )
    _write_json(args.json_out or Path(args.out) / "result.json", result)
    return 0


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
    parser.add_argument(
        "--runtimes", nargs="+", default=["eager", "onnxruntime"], choices=["eager", "onnxruntime"]
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=20, help="timed passes (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the full result as JSON here")
    parser.set_defaults(handler=_run_bench_channels)


def _run_bench_channels(args: argparse.Namespace) -> int:
    from tridim.bench.channels import run_channels_bench

    result = run_channels_bench(
        targets=tuple(args.targets),
        runtimes=tuple(args.runtimes),
        batches=tuple(args.batches),
        repeats=args.repeats,
        seed=args.seed,
    )
    keys = ("model", "target", "runtime", "batch", "macs_ratio_any", "macs_ratio_x8")
    keys += ("speedup_any", "speedup_x8", "x8_over_any", "stable")
    print(_table([{k: row[k] for k in keys} for row in result["rows"]]))
    print(
        "speedup: base / pruned latency, timed together in alternating rounds by "
        "tridim.cost.timing; x8_over_any: the multiples-of-8 model's speed-up / the any-count "
        f"model's; {result['config']['threads']} threads."
    )
    _write_json(args.json_out, result)
    return 0


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
    parser.set_defaults(handler=_run_bench_allocator)


def _run_bench_allocator(args: argparse.Namespace) -> int:
    from tridim.bench.allocator import run_allocator_bench

    result = run_allocator_bench(args.repeats)
    keys = ("case", "fresh_ms", "after_training_ms", "two_sessions_ms")
    print(_table([{k: row.get(k) for k in keys} for row in result["rows"]]))
    print(
        f"milliseconds per batch of {result['config']['batch']}, median of 15 passes, "
        f"median over {args.repeats} fresh processes."
    )
    _write_json(args.json_out, result)
    return 0


def _add_bench_parallel(benches) -> None:
    parser = benches.add_parser(
        "parallel",
        help="a collection in worker processes against one process using every thread",
        description="Run the same one-shot collection alone in this process and in worker "
        "processes (an even share of the cores each), alternating, each in a fresh run "
        "folder; print the wall times, their ratio and the largest accuracy difference.",
    )
    _add_model_data_args(parser)
    parser.add_argument("--train-subset", type=int, default=10000, help="default 10000")
    parser.add_argument("--rounds", type=int, default=1, help="default 1")
    parser.add_argument("--epochs-per-step", type=int, default=1, help="default 1")
    parser.add_argument("--base-epochs", type=int, default=2, help="default 2")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (default 2)")
    parser.add_argument("--out", default="runs/bench-parallel", help="base model and runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the full result as JSON here")
    parser.set_defaults(handler=_run_bench_parallel)


def _run_bench_parallel(args: argparse.Namespace) -> int:
    from tridim.bench.parallel import run_parallel_bench

    result = run_parallel_bench(
        args.data,
        args.model,
        out=args.out,
        train_subset=args.train_subset,
        rounds=args.rounds,
        epochs_per_step=args.epochs_per_step,
        base_epochs=args.base_epochs,
        repeats=args.repeats,
        seed=args.seed,
        data_options=_data_options(args) or None,
    )
    config = result["config"]
    rows = [
        {"run": name, "median_s": result["median_seconds"][name], "runs_s": result["seconds"][name]}
        for name in result["seconds"]
    ]
    print(
        f"tridim bench parallel: {config['trials']} trials of {config['epochs_per_step']} "
        f"epoch(s) on {config['train_examples']} {config['data']} images, {config['cores']} cores"
    )
    print(_table(rows))
    print(
        f"processes are {result['processes_speedup']:.2f}x as fast; largest sample accuracy "
        f"difference {result['max_accuracy_difference']:.4f}"
    )
    _write_json(args.json_out, result)
    return 0


def _add_bench_proxy(benches) -> None:
    parser = benches.add_parser(
        "proxy",
        help="samples finetuned on part of the training set against the full recipe",
        description="Run the same collection once per --fractions of the training set "
        "(each in its own run folder, resumable); print each one's cost, the Spearman "
        "correlation of its sample accuracies with the full recipe's, and the triple its "
        "predictor solves for.",
    )
    _add_model_data_args(parser)
    parser.add_argument("--target", type=float, default=0.5, help="MACs ratio (default 0.5)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--rounds", type=int, default=2, help="default 2")
    parser.add_argument("--epochs-per-step", type=int, default=2, help="default 2")
    parser.add_argument("--base-epochs", type=int, default=15, help="default 15")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many")
    parser.add_argument("--out", default="runs/bench-proxy", help="base model and run folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the full result as JSON here")
    parser.set_defaults(handler=_run_bench_proxy)


def _run_bench_proxy(args: argparse.Namespace) -> int:
    from tridim.bench.proxy import run_proxy_bench

    result = run_proxy_bench(
        args.data,
        args.model,
        out=args.out,
        target=args.target,
        fractions=tuple(args.fractions),
        rounds=args.rounds,
        epochs_per_step=args.epochs_per_step,
        base_epochs=args.base_epochs,
        train_subset=args.train_subset,
        seed=args.seed,
        data_options=_data_options(args) or None,
    )
    config = result["config"]
    print(
        f"tridim bench proxy: {config['model']} on {config['data']} "
        f"({config['train_examples']} training images), target {config['target']:g}, "
        f"base {result['base']['epochs']} epochs (test accuracy {result['base']['accuracy']:.4f})"
    )
    rows = [
        {
            "fraction": run["fraction"],
            "seconds": run["seconds"],
            "base_trainings": run["base_trainings"],
            "spearman_vs_full": run["spearman_vs_full"],
            "d": run["solved_triple"]["d"],
            "w": run["solved_triple"]["w"],
            "r": run["solved_triple"]["r"],
            "same_triple": run["same_triple_as_full"],
        }
        for run in result["runs"]
    ]
    print(_table(rows))
    print(
        "base_trainings: the collection's cost (tridim.run.compute); spearman_vs_full: over the "
        "same triples' sample accuracies; d, w, r: the triple its predictor solves for."
    )
    _write_json(args.json_out, result)
    return 0


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


def _add_bench_compare(benches) -> None:
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
    _add_model_data_args(parser)

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
        choices=_criteria(),
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
    from tridim.bench.compare import METHODS, plot, render_markdown, run_compare_bench

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
        data_options=_data_options(args) or None,
        **options,
    )
    markdown = render_markdown(result)
    print(markdown)
    out = Path(args.out)
    (out / "summary.md").write_text(markdown)
    _write_json(args.json_out or out / "result.json", result)
    try:
        paths = plot(result, out / "plots")
        print("plots: " + ", ".join(str(p) for p in paths))
    except ImportError:
        print("plots skipped: pip install -e '.[notebooks]' for matplotlib")
    return 0


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


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _run_bench_width(args: argparse.Namespace) -> int:
    from tridim.bench.width import run_width_bench
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
        _split_list(args.oracle_layers),
        criteria=_split_list(args.criteria) or CRITERIA,
        oracle_batches=args.oracle_batches,
        data_options=_data_options(args),
    )
    base = result["base"]
    print(
        f"base {args.model} on {args.data}: accuracy {base['accuracy']:.4f}, "
        f"{base['macs']:,} MACs (conv + linear), {base['params']:,} params; "
        f"target MACs ratio {args.target}, finetune {args.epochs} epochs"
    )
    print(
        _table(
            result["rows"],
            ["criterion", "macs_ratio", "params", "acc_before_finetune", "acc_after", "seconds"],
        )
    )
    oracle = result.get("oracle")
    if oracle:
        rows = [
            {
                "criterion": name,
                "mean_per_layer": oracle["mean_per_layer"][name],
                "all_layers_raw": values["raw"],
                "all_layers_l2": values["l2"],
            }
            for name, values in oracle["overall"].items()
        ]
        print(
            f"\nSpearman correlation with the oracle (|change in loss| when one channel is "
            f"zeroed; {oracle['channels']} channels in {len(oracle['layers'])} groups, "
            f"{oracle['n_batches']} batches, {oracle['seconds']:.0f} s)"
        )
        print(_table(rows))
        ref = result["reference"]["molchanov_oracle_spearman"]
        low, high = ref["others_range"]
        print(f"reference ({ref['source']}): taylor {ref['taylor']}, others {low}-{high}")
    _write_json(args.json_out, result)
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
    from tridim.bench.zoo import run_zoo_bench, summary

    rows: list[dict] = []

    def keep(row: dict) -> None:
        rows.append(row)
        print(
            " | ".join(str(row.get(k, "")) for k in ("model", "width", "depth", "seconds")),
            file=sys.stderr,
            flush=True,
        )
        if args.json_out:
            _write_json(args.json_out, rows, quiet=True)

    names = _split_list(args.models) if args.models else None
    run_zoo_bench(
        names, size=args.size, channels=args.channels, max_params_m=args.max_params, on_row=keep
    )
    columns = [
        "model",
        "params_m",
        "input",
        "criterion",
        "width",
        "depth",
        "resolution",
        "realise",
        "reload",
        "seconds",
    ]
    print(_table(rows, columns))
    print(json.dumps(summary(rows)))
    _write_json(args.json_out, rows)
    return 0


def _add_bench_train(benches) -> None:
    parser = benches.add_parser(
        "train",
        help="tridim's training loop against a bare PyTorch loop",
        description="Train the same seeded model on the same batches with tridim.train "
        "and with a bare PyTorch loop (same optimiser, batch size, device, precision), "
        "alternating runs; report the median wall times and the overhead.",
    )
    _add_model_data_args(parser)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (default: 2)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per loop (default: 3)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", help="write the result as JSON here")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="instead: tridim.train on the CPU in fp32, bf16 autocast, channels_last and "
        "both, with the test accuracy each reaches, then evaluation batch sizes and grad modes",
    )
    _add_execution_args(parser)
    parser.set_defaults(handler=_run_bench_train)


def _run_bench_train(args: argparse.Namespace) -> int:
    from tridim.bench.train import run_train_bench, run_train_options_bench

    if args.sweep:
        result = run_train_options_bench(
            args.data,
            args.model,
            epochs=args.epochs,
            repeats=args.repeats,
            batch_size=args.batch_size,
            seed=args.seed,
            data_options=_data_options(args),
        )
        config = result["config"]
        print(
            f"tridim bench train --sweep: {config['model']} on {config['data']}, "
            f"{config['epochs']} epochs x {config['repeats']} runs per option, "
            f"batch {config['batch_size']}, cpu, {config['threads']} threads"
        )
        keys = ("option", "median_s", "speedup", "accuracy")
        print(_table([{k: row[k] for k in keys} for row in result["train"]]))
        print(_table(result["evaluate"]))
        print("speedup: against the first row; evaluation: one pass over the test split.")
        _write_json(args.json_out, result)
        return 0
    execution = _execution_options(args)
    result = run_train_bench(
        args.data,
        args.model,
        epochs=args.epochs,
        repeats=args.repeats,
        batch_size=args.batch_size,
        seed=args.seed,
        data_options=_data_options(args),
        **execution,
    )
    config = result["config"]
    print(
        f"tridim bench train: {config['model']} on {config['data']}, {config['epochs']} "
        f"epochs x {config['repeats']} runs per loop, batch {config['batch_size']}, "
        f"{config['device']} {config['precision']}, {config['threads']} threads"
    )
    rows = [
        {
            "loop": r["loop"],
            "median_s": r["median_s"],
            "runs_s": ", ".join(f"{t:.2f}" for t in r["runs_s"]),
        }
        for r in result["rows"]
    ]
    print(_table(rows))
    print(f"overhead of tridim.train: {result['overhead']:+.1%}")
    _write_json(args.json_out, result)
    return 0


def _add_bench(sub) -> None:
    parser = sub.add_parser(
        "bench",
        help="benchmarks (print a table, write JSON)",
        description="Run a benchmark, print its table and optionally write its rows as JSON.",
    )
    benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for add in _BENCHES:
        add(benches)


# -- entry point ------------------------------------------------------------------------

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
    _add_bench_compare,
    _add_bench_zoo,
    _add_bench_train,
]
_COMMANDS: list[Callable] = [
    _add_optimize,
    _add_collect,
    _add_fit,
    _add_solve,
    _add_report,
    _add_export,
    _add_bench,
    _add_info,
    _add_train,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tridim`` command, with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tridim",
        description="Compress a trained CNN to a FLOPs budget along depth, width and "
        "input resolution.",
    )
    parser.add_argument("--version", action="version", version=f"tridim {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def _raised_by_tridim(error: BaseException) -> bool:
    """Whether tridim's own code raised ``error`` (a message written for the user), not a
    library deep inside a call (torch, numpy: a case tridim failed to check)."""
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    if frame is None:
        return False
    return Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_FOLDER)


PACKAGE_FOLDER = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tridim`` command; returns the exit status.

    A user error (bad argument, missing or malformed file, a run folder of another run)
    prints one line and returns 2; ``--debug`` shows the traceback instead. A
    ``ValueError`` or ``TypeError`` raised outside tridim's own code is a bug, not a user
    error: it is re-raised with its traceback. An interrupted run returns 130 and says how
    to resume.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, OSError, ImportError) as error:
        if args.debug:
            raise
        if isinstance(error, (ValueError, TypeError)) and not _raised_by_tridim(error):
            print(
                f"tridim {args.command}: internal error (a bug in tridim, or an input it "
                "should have checked): please report it with this traceback",
                file=sys.stderr,
            )
            raise
        print(f"tridim {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"tridim {args.command}: interrupted; finished trials are kept: run the same "
            "command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
