"""What ``optimize`` and ``collect`` start from: the budget, the collection settings, the
run folder and the trained base model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tridim.cli.options import execution_options

__all__ = ["base_model", "budget_args", "collection_settings", "fraction_or_auto", "open_workdir"]


def budget_args(args: argparse.Namespace) -> dict:
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


def fraction_or_auto(text: str) -> float | str:
    """``--sample-fraction``: a number, or ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number in (0, 1] or auto, got {text!r}"
        ) from None


def collection_settings(args: argparse.Namespace, bundle=None):
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


def open_workdir(args: argparse.Namespace, bundle, sections: dict):
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


def base_model(args: argparse.Namespace, bundle, workdir: Path):
    from tridim.training import models
    from tridim.training.distributed import barrier, is_writer
    from tridim.training.train import (
        load_checkpoint,
        save_checkpoint,
        seed_everything,
        train,
    )

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
        **execution_options(args),
    )
    if is_writer():
        save_checkpoint(cache, model, data=_data_identity(bundle))
        partial.unlink(missing_ok=True)
    barrier()
    return model
