"""Benchmark: tridim against one dimension, Torch-Pruning, training from scratch and the
best of a grid, at equal MACs, from one base model.

:func:`run_compare_bench` trains the base model once (cached in ``out``): by default with
SGD at a constant lr 0.05, divided by 10 whenever validation accuracy plateaus, until the
plateau after the second division (:func:`plateau_schedule`), one epoch at a time from a
checkpoint in ``out``, so a kill loses at most one epoch; or, given a number of epochs,
with a cosine schedule over them. Then it fills one *cell* per (method, target, seed),
each stored as JSON in ``out/cells`` the moment it finishes; a re-run skips finished
cells, so a kill loses at most one cell (``tridim`` cells resume inside their own run
folder too). Methods:

- ``tridim``: :func:`tridim.run.optimize` at the target, with ``design`` mixed samples; the
  variants change one thing (``TRIDIM_VARIANTS``): ``tridim-axis`` no mixed samples,
  ``tridim-proxy`` no mixed samples and samples on the default proxy share of the
  training set (``sample_fraction="auto"``; every other variant samples on all of it),
  ``tridim-default`` the same with optimize's default 2 epochs per sample,
  ``tridim-chain`` chained samples, ``tridim-bn-scale``/``tridim-group-norm`` a criterion;
- ``tridim-latency``: :func:`tridim.run.optimize` with a latency budget equal to the speed-up
  the ``tridim`` cell measured (at the latency batch, PyTorch eager on this CPU);
- ``depth-only``, ``width-only`` (BN scale), ``resolution-only``: one dimension to the
  same MACs (whole blocks and pixels: the nearest achievable ratio);
- ``tp-bn-scale``: Torch-Pruning's BN-scale pruner after sparse training with its L1
  regulariser on BN scales; ``tp-group-norm``: Torch-Pruning's global group-norm
  (L2 magnitude) importance; both pruned to the measured MACs target within 1%;
- ``scratch``: a uniformly thinner model of the same family at the same MACs, trained from
  scratch (cosine) for the epochs the base trained plus every epoch the ``tridim`` cell
  spent plus the final epochs it trained;
- ``best-grid``: triples on the iso-MACs surface (depth and resolution on a grid, width
  taking the rest), each realised and finetuned like the others: the oracle the
  predictor tries to find.

Every pruned model gets the same final finetuning: ``final_epochs`` epochs of SGD with
the cosine schedule at lr 0.02, distilling from the base model (as tridim's final trial
does; when its last refine trial cut the same network, tridim's final model goes on from
that trial's model and trains only the epochs the refine trial did not, and its cell
records those). What a method spent before it (collection, refinement, sparse training)
is recorded apart, in epochs and seconds. Each finished model is timed against the base
model in alternating rounds at batch 1 and the latency batch, in the same process.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

import tridim
from tridim.atomic import atomic_write_json
from tridim.bench.compare_summary import METHODS, TRIDIM_VARIANTS, summarise
from tridim.bench.dims import _depth_only, _resolution_only
from tridim.cost.macs import count_macs, count_params
from tridim.cost.runtimes import time_ratio
from tridim.prune.depth import block_gains, find_blocks
from tridim.prune.realise import realise
from tridim.run.collect import auto_criterion
from tridim.training.data import DataBundle, load
from tridim.training.models import CIFAR_RESNET_DEPTHS, build
from tridim.training.train import evaluate, load_checkpoint, save_checkpoint, seed_everything, train

__all__ = ["run_compare_bench", "METHODS", "plateau_schedule"]

FINAL_LR = 0.02
#: The base model's (initial) learning rate.
BASE_LR = 0.05
#: How often the plateau schedule divides the base lr (by 10) before it stops at a plateau.
BASE_DECAYS = 2
#: Torch-Pruning's default strength of the BN-scale L1 regulariser.
TP_REG = 1e-5


class _Setup:
    """What every cell shares: data, base model, settings."""

    def __init__(self, data: DataBundle, base: nn.Module, base_record: dict, options: dict):
        self.data, self.base, self.base_record, self.options = data, base, base_record, options
        self.size = tuple(data.input_shape)
        self.base_macs = count_macs(base, self.size)
        criterion = options["criterion"]
        self.criterion = auto_criterion(base) if criterion == "auto" else criterion


def run_compare_bench(
    data_name: str = "fashion-mnist",
    model_name: str = "resnet20",
    *,
    out: str | os.PathLike,
    targets: tuple[float, ...] = (0.5, 0.3),
    seeds: int = 2,
    final_epochs: int = 8,
    base_epochs: int | str = "plateau",
    base_patience: int = 3,
    max_base_epochs: int = 60,
    base_min_delta: float = 0.001,
    rounds: int = 2,
    design: int = 4,
    refine: int = 3,
    criterion: str = "auto",
    epochs_per_step: int = 2,
    sparse_epochs: int = 2,
    latency_batch: int = 64,
    latency_repeats: int = 15,
    methods: tuple[str, ...] = METHODS,
    train_subset: int | None = None,
    subset: dict | None = None,
    quiet: bool = False,
    data_options: dict | None = None,
) -> dict:
    """Fill every missing cell, then summarise all of them; see the module docstring.

    ``base_epochs`` is ``"plateau"`` (train the base until validation accuracy plateaus,
    see :func:`plateau_schedule` for ``base_patience``, ``base_min_delta`` and
    ``max_base_epochs``) or a number of epochs under a cosine schedule (the plateau
    settings are then unused).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    base_settings = _base_settings(base_epochs, base_patience, max_base_epochs, base_min_delta)
    data = load(data_name, **(data_options or {}))
    if subset or train_subset:
        data = data.subset(**(subset or {"train": train_subset}))
    out = Path(out)
    options = dict(
        model=model_name,
        final_epochs=final_epochs,
        **base_settings,
        rounds=rounds,
        design=design,
        refine=refine,
        criterion=criterion,
        epochs_per_step=epochs_per_step,
        sparse_epochs=sparse_epochs,
        latency_batch=latency_batch,
        latency_repeats=latency_repeats,
    )
    _check_settings(out, {"data": data.name, "train_examples": len(data.train), **options})
    base, base_record = _base_model(model_name, data, base_settings, out, quiet)
    options.update(quiet=quiet, out=out)
    setup = _Setup(data, base, base_record, options)
    ordered = [m for m in METHODS if m in methods]  # tridim first: others read its cell
    for target in targets:
        for seed in range(seeds):
            for method in ordered:
                _cell(setup, method, target, seed)
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    cells = [c for c in cells if c["target"] in targets and c["seed"] < seeds]
    return {
        "config": {
            "data": data.name,
            "input_size": list(data.input_shape),
            "train_examples": len(data.train),
            "targets": list(targets),
            "seeds": seeds,
            "threads": torch.get_num_threads(),
            "final_finetune": f"{final_epochs} epochs, SGD cosine lr {FINAL_LR}, distilled "
            "from the base model",
            **{k: v for k, v in options.items() if k not in ("out", "quiet")},
        },
        "base": base_record,
        "cells": cells,
        "summary": summarise(cells),
    }


def _check_settings(out: Path, settings: dict) -> None:
    """Cells are reused by name, so a folder holds the cells of one set of settings only."""
    path = out / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if changed:
            listed = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{out} holds cells run with other settings ({listed}); give a new --out, "
                "or the options those cells were run with"
            )
        return
    atomic_write_json(path, settings)  # creates the folder


def _base_settings(epochs: int | str, patience: int, max_epochs: int, min_delta: float) -> dict:
    """The base training's settings (the plateau's only under the plateau schedule, so a
    folder of a fixed-epoch base keeps the settings it was run with)."""
    if epochs == "plateau":
        if patience < 1 or max_epochs < 1 or min_delta < 0:
            raise ValueError(
                f"the base plateau needs patience >= 1, max epochs >= 1 and min delta >= 0, "
                f"got {patience}, {max_epochs} and {min_delta}"
            )
        return dict(
            base_epochs=epochs,
            base_patience=patience,
            max_base_epochs=max_epochs,
            base_min_delta=min_delta,
        )
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"base epochs must be 'plateau' or an integer >= 0, got {epochs!r}")
    return dict(base_epochs=epochs)


def plateau_schedule(
    val_accuracies: list[float],
    *,
    patience: int = 3,
    min_delta: float = 0.001,
    max_epochs: int = 60,
    lr: float = BASE_LR,
    decays: int = BASE_DECAYS,
) -> float | None:
    """The learning rate of the next base epoch, given the validation accuracies of the
    epochs so far (each trained at the lr this function gave before it); None to stop.

    An epoch improves if its accuracy exceeds the best so far (over every lr) by more
    than ``min_delta``. After ``patience`` epochs in a row without improvement the lr is
    divided by 10 and the count restarts; the plateau after the ``decays``-th division
    stops training (lr 0.05 -> 0.005 -> 0.0005 -> stop by default), and so does
    reaching ``max_epochs`` epochs.
    """
    if len(val_accuracies) >= max_epochs:
        return None
    divided, best, stale = 0, -math.inf, 0
    for accuracy in val_accuracies:
        if accuracy > best + min_delta:
            best, stale = accuracy, 0
        else:
            stale += 1
        if stale >= patience:
            if divided == decays:
                return None
            divided, stale = divided + 1, 0
    return lr / 10.0**divided


def _base_model(model_name: str, data: DataBundle, settings: dict, out: Path, quiet: bool):
    seed_everything(0)
    model = build(model_name, data.num_classes, data.input_shape[0])
    epochs = settings["base_epochs"]
    tag = "plateau" if epochs == "plateau" else f"e{epochs}"
    cache, record_path = out / f"base-{model_name}-{tag}.pt", out / "base.json"
    if cache.is_file() and record_path.is_file():
        load_checkpoint(cache, model)
        return model.eval(), json.loads(record_path.read_text())
    if epochs == "plateau":
        checkpoint = out / f"base-{model_name}-plateau-training.pt"
        record = _train_to_plateau(model, data, settings, checkpoint, out, quiet)
    else:
        started = time.perf_counter()
        train(model, data, epochs, lr=BASE_LR, seed=0, quiet=quiet, evaluate_each_epoch=False)
        record = {
            "epochs": epochs,
            "schedule": f"SGD, cosine from lr {BASE_LR:g} over {epochs} epochs",
            "seconds": time.perf_counter() - started,
        }
    save_checkpoint(cache, model)
    record.update(
        accuracy=evaluate(model.eval(), data.loader("test", 256)),
        params=count_params(model),
        macs=count_macs(model, data.input_shape),
    )
    atomic_write_json(record_path, record)
    return model, record


def _train_to_plateau(
    model: nn.Module, data: DataBundle, settings: dict, checkpoint: Path, out: Path, quiet: bool
) -> dict:
    """Train the base epoch by epoch at the lr :func:`plateau_schedule` gives.

    Each :func:`train` call runs one more epoch from the checkpoint the last one saved
    (weights, optimiser state with its momentum, epoch count) at that epoch's lr: the
    same run as one continuous run whose lr drops at the plateaus (the shuffling seeds
    follow the epoch number), and a kill loses at most the epoch under way. The
    checkpoint's history (one val accuracy per epoch) is what resumes; every lr follows
    from it, so ``base-curve.json`` is only a view of the run so far.
    """
    plateau = {
        "patience": settings["base_patience"],
        "min_delta": settings["base_min_delta"],
        "max_epochs": settings["max_base_epochs"],
    }
    history = load_checkpoint(checkpoint, model)["history"] if checkpoint.is_file() else []
    accuracies = [epoch["val_accuracy"] for epoch in history]
    while (lr := plateau_schedule(accuracies, **plateau)) is not None:
        history = train(
            model,
            data,
            len(history) + 1,
            lr=lr,
            schedule="constant",
            seed=0,
            checkpoint_path=checkpoint,
            evaluate_each_epoch=True,
            quiet=quiet,
            label=f"base model, lr {lr:g}",
        ).epochs
        accuracies = [epoch["val_accuracy"] for epoch in history]
        atomic_write_json(out / "base-curve.json", _curve(accuracies, plateau))
    unbounded = {**plateau, "max_epochs": math.inf}
    stopped = "plateau" if plateau_schedule(accuracies, **unbounded) is None else "max_base_epochs"
    return {
        "epochs": len(history),
        "schedule": (
            f"SGD, constant lr {BASE_LR:g} divided by 10 after {plateau['patience']} "
            f"epoch{'s' if plateau['patience'] != 1 else ''} without a val accuracy gain "
            f"above {plateau['min_delta']:g}, stopped at the "
            f"plateau after {BASE_DECAYS} divisions or at {plateau['max_epochs']} epochs"
        ),
        "stopped": stopped,
        "curve": _curve(accuracies, plateau),
        "seconds": sum(epoch["seconds"] for epoch in history),
    }


def _curve(accuracies: list[float], plateau: dict) -> list[dict]:
    """One entry per epoch: its number, the lr it was trained at, its val accuracy."""
    return [
        {"epoch": i + 1, "lr": plateau_schedule(accuracies[:i], **plateau), "val_accuracy": a}
        for i, a in enumerate(accuracies)
    ]


def _cell(setup: _Setup, method: str, target: float, seed: int) -> dict | None:
    """Run one cell unless stored; store it as it finishes."""
    path = setup.options["out"] / "cells" / f"{method}-t{target:g}-s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    seed_everything(seed)
    started = time.perf_counter()
    produced = _RUNNERS[method](setup, target, seed)
    if produced is None:
        return None
    model, record = produced
    record.update(
        method=method,
        target=target,
        seed=seed,
        seconds_total=time.perf_counter() - started,
        **_measure(setup, model),
    )
    atomic_write_json(path, record)
    return record


def _measure(setup: _Setup, model: nn.Module) -> dict:
    """Accuracy, MACs, params, and latency against the base in alternating rounds."""
    model.eval()
    measured = {
        "accuracy": evaluate(model, setup.data.loader("test", 256)),
        "macs_ratio": count_macs(model, setup.size) / setup.base_macs,
        "params": count_params(model),
    }
    for batch in (1, setup.options["latency_batch"]):
        timing = time_ratio(
            model, setup.base, setup.size, batch, repeats=setup.options["latency_repeats"]
        )
        measured[f"latency_ms_b{batch}"] = timing["model_ms"]
        measured[f"speedup_b{batch}"] = 1.0 / timing["ratio"]
    return measured


def _final_finetune(setup: _Setup, model: nn.Module, seed: int) -> dict:
    """The finetuning every method gets: same epochs, optimiser, schedule, distillation."""
    epochs = setup.options["final_epochs"]
    started = time.perf_counter()
    train(
        model,
        setup.data,
        epochs,
        lr=FINAL_LR,
        seed=seed,
        teacher=setup.base,
        quiet=setup.options["quiet"],
        evaluate_each_epoch=False,
        label="final",
    )
    return {"final_epochs": epochs, "final_seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------- methods


def _tridim_variant(name: str):
    def run(setup: _Setup, target: float, seed: int):
        return _tridim(setup, target, seed, name=name, **TRIDIM_VARIANTS[name])

    return run


def _tridim(setup: _Setup, target: float, seed: int, *, name: str = "tridim", **options):
    """optimize() with the bench's settings; ``options`` are a variant's or a latency
    budget's."""
    o = setup.options
    options = {
        "criterion": o["criterion"],
        "design": o["design"],
        "sample_fraction": 1.0,
        "epochs_per_step": o["epochs_per_step"],
        **options,
    }
    workdir = o["out"] / "runs" / f"{name}-t{target:g}-s{seed}"
    latency = "target_speedup" in options
    result = tridim.optimize(
        setup.base,
        setup.data,
        None if latency else target,
        workdir=workdir,
        rounds=o["rounds"],
        final_epochs=o["final_epochs"],
        refine=o["refine"],
        lr=FINAL_LR,
        base_training_epochs=setup.base_record["epochs"] or None,
        seed=seed,
        quiet=o["quiet"],
        latency_batch=o["latency_batch"],
        latency_repeats=o["latency_repeats"],
        device="cpu",
        **options,
    )
    report = result.report
    seconds = report["seconds"]
    return result.model, {
        "triple": report["triple"],
        "solved_triple": report["solved_triple"],
        "before_final_epochs": (report["n_samples"] - 1) * options["epochs_per_step"],
        "before_final_seconds": seconds.get("collect", 0.0) + seconds.get("refine", 0.0),
        "before_final_base_trainings": report["compute"]["search"]["base_trainings"],
        "final_epochs": report["compute"]["stages"]["final"]["epochs"],
        "final_seconds": seconds.get("finetune", 0.0),
        "predicted_accuracy": report["predicted_accuracy"],
        "refine_abs_error": report["prediction"].get("mean_abs_error_at_refine"),
        "refinements": report["refinements"],
        "predictor_choice": report.get("predictor"),
        "settings": report["settings"],
        "budget": report["budget"],
        "predictor": str(workdir / "predictor.json"),
    }


def _tridim_latency(setup: _Setup, target: float, seed: int):
    reference = _stored(setup, "tridim", target, seed)
    if reference is None:
        return None
    speedup = reference[f"speedup_b{setup.options['latency_batch']}"]
    if speedup <= 1.0:
        return None  # the MACs run was not faster: no latency budget to match
    return _tridim(setup, target, seed, name="tridim-latency", target_speedup=round(speedup, 3))


def _one_dimension(kind: str):
    def run(setup: _Setup, target: float, seed: int):
        base, data = setup.base, setup.data
        if kind == "depth":
            if not any(b.removable for b in find_blocks(base, input_size=setup.size)):
                return None
            model, plan = _depth_only(base, data, target, block_gains(base, data, seed=seed))
        elif kind == "width":
            model, plan = realise(
                base,
                (1, 1, 1),
                input_size=setup.size,
                target_flops_ratio=target,
                criterion=setup.criterion,
                seed=seed,
            )
        else:
            model, plan = _resolution_only(base, data, target)
        record = {"triple": plan.realised.to_dict(), "before_final_epochs": 0}
        record["before_final_seconds"] = 0.0
        return model, {**record, **_final_finetune(setup, model, seed)}

    return run


def _torch_pruning(kind: str):
    def run(setup: _Setup, target: float, seed: int):
        model = copy.deepcopy(setup.base)
        started, sparse = time.perf_counter(), 0
        if kind == "bn-scale":
            sparse = setup.options["sparse_epochs"]
            train(
                model,
                setup.data,
                sparse,
                lr=FINAL_LR,
                seed=seed,
                extra_loss=_bn_l1,
                quiet=setup.options["quiet"],
                evaluate_each_epoch=False,
                label="sparse training",
            )
        pruned, ratio = _tp_prune_to_macs(model, setup, target, kind)
        record = {
            "pruning_ratio": ratio,
            "before_final_epochs": sparse,
            "before_final_seconds": time.perf_counter() - started,
            "regulariser": f"L1 on BN scales, {TP_REG:g} (TP's BNScalePruner.regularize)"
            if sparse
            else None,
        }
        return pruned, {**record, **_final_finetune(setup, pruned, seed)}

    return run


def _bn_l1(model: nn.Module) -> torch.Tensor:
    """TP's BN-scale regulariser (adds reg * sign(gamma) to the gradient) as a loss."""
    terms = [
        m.weight.abs().sum()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]
    return TP_REG * torch.stack(terms).sum()


def _tp_prune_to_macs(model: nn.Module, setup: _Setup, target: float, kind: str):
    """Bisect Torch-Pruning's global pruning ratio until measured MACs are within 1%."""
    import torch_pruning as tp

    example = torch.zeros(1, *setup.size)

    def pruned_at(ratio: float) -> nn.Module:
        candidate = copy.deepcopy(model).eval()
        head = [m for m in candidate.modules() if isinstance(m, nn.Linear)][-1:]
        if kind == "bn-scale":
            importance = tp.importance.BNScaleImportance()
            pruner_class = tp.pruner.BNScalePruner
        else:
            importance = tp.importance.GroupMagnitudeImportance(p=2)
            pruner_class = tp.pruner.MetaPruner
        pruner = pruner_class(
            candidate,
            example,
            importance=importance,
            global_pruning=True,
            pruning_ratio=ratio,
            ignored_layers=head,
        )
        pruner.step()
        return candidate

    low, high, best = 0.0, 0.95, None
    for _ in range(20):
        ratio = (low + high) / 2
        candidate = pruned_at(ratio)
        macs = count_macs(candidate, setup.size) / setup.base_macs
        if best is None or abs(macs - target) < abs(best[2] - target):
            best = (candidate, ratio, macs)
        if abs(macs - target) <= 0.01 * target:
            break
        low, high = (ratio, high) if macs > target else (low, ratio)
    return best[0], best[1]


def _scratch(setup: _Setup, target: float, seed: int):
    name = setup.options["model"]
    if name.lower() not in CIFAR_RESNET_DEPTHS:
        return None  # needs a family with a width option
    reference = _stored(setup, "tridim", target, seed)
    spent, final = 0, setup.options["final_epochs"]
    if reference is not None:  # what tridim trained (its final may go on from a refine trial)
        spent, final = reference["before_final_epochs"], reference["final_epochs"]
    epochs = setup.base_record["epochs"] + spent + final
    size, classes = setup.size, setup.data.num_classes
    widths = [step / 100 for step in range(20, 101)]
    ratios = [count_macs(build(name, classes, size[0], width=w), size) for w in widths]
    width = min(zip(widths, ratios), key=lambda p: abs(p[1] / setup.base_macs - target))[0]
    seed_everything(seed)
    model = build(name, classes, size[0], width=width)
    started = time.perf_counter()
    train(model, setup.data, epochs, seed=seed, quiet=setup.options["quiet"], label="scratch")
    return model, {
        "width_multiplier": width,
        "before_final_epochs": epochs,
        "before_final_seconds": time.perf_counter() - started,
        "final_epochs": 0,
        "final_seconds": 0.0,
        "note": "trained from scratch for base epochs + everything tridim spent + final epochs",
    }


def _best_grid(setup: _Setup, target: float, seed: int):
    """Realise and finetune every feasible grid triple; the cell is the best of them."""
    base, size = setup.base, setup.size
    gains = block_gains(base, setup.data, seed=seed)
    points, best = [], None
    for d in (1.0, target ** (1 / 4), target ** (1 / 2), target ** (3 / 4)):
        for r in (1.0, target ** (1 / 8), target ** (1 / 4)):
            try:
                model, plan = realise(
                    base,
                    (d, 1.0, r),
                    input_size=size,
                    target_flops_ratio=target,
                    gains=gains,
                    criterion=setup.criterion,
                    seed=seed,
                )
            except ValueError:
                continue  # depth and resolution alone undercut the budget
            finetune = _final_finetune(setup, model, seed)
            accuracy = evaluate(model.eval(), setup.data.loader("test", 256))
            points.append({"triple": plan.realised.to_dict(), "accuracy": accuracy, **finetune})
            if best is None or accuracy > best[1]:
                best = (model, accuracy, plan)
    if best is None:
        return None
    epochs = sum(p["final_epochs"] for p in points)
    return best[0], {
        "triple": best[2].realised.to_dict(),
        "grid": points,
        "before_final_epochs": epochs - setup.options["final_epochs"],
        "before_final_seconds": sum(p["final_seconds"] for p in points),
        "final_epochs": setup.options["final_epochs"],
        "final_seconds": 0.0,
    }


def _stored(setup: _Setup, method: str, target: float, seed: int) -> dict | None:
    path = setup.options["out"] / "cells" / f"{method}-t{target:g}-s{seed}.json"
    return json.loads(path.read_text()) if path.is_file() else None


_RUNNERS = {
    **{name: _tridim_variant(name) for name in TRIDIM_VARIANTS},
    "tridim-latency": _tridim_latency,
    "depth-only": _one_dimension("depth"),
    "width-only": _one_dimension("width"),
    "resolution-only": _one_dimension("resolution"),
    "tp-bn-scale": _torch_pruning("bn-scale"),
    "tp-group-norm": _torch_pruning("group-norm"),
    "scratch": _scratch,
    "best-grid": _best_grid,
}
