"""Training and evaluation loops: seeded, with progress bars and safe checkpoints.

:func:`train` runs SGD with Nesterov momentum under a cosine or one-cycle schedule,
with optional label smoothing, distillation from a teacher, an extra loss term (the
width dimension adds an L1 penalty on BatchNorm scales) and training at a reduced
input resolution. Checkpoints hold tensors and numbers only and are loaded with
``weights_only=True``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .data import DataBundle, resize_batch

__all__ = [
    "train",
    "evaluate",
    "TrainHistory",
    "TrainingDiverged",
    "save_checkpoint",
    "load_checkpoint",
    "distillation_loss",
    "seed_everything",
]

SCHEDULES = ("cosine", "onecycle", "constant")


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the model holds its last good weights."""


@dataclass
class TrainHistory:
    """What happened during :func:`train`: one record per epoch."""

    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall seconds per epoch."""
        return self.seconds / max(1, len(self.epochs))

    def to_dict(self) -> dict:
        """JSON-ready copy."""
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (Python and numpy randomness is not used here)."""
    torch.manual_seed(int(seed))


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Hinton's soft-target loss: KL(teacher || student) at a temperature, times T^2."""
    t = float(temperature)
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, dim=1),
            F.softmax(teacher_logits / t, dim=1),
            reduction="batchmean",
        )
        * t
        * t
    )


def _learning_rate(
    schedule: str, base_lr: float, step: int, total: int, warmup_fraction: float = 0.3
) -> float:
    progress = step / max(1, total)
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))
    # one-cycle: linear warm-up from base/25 then cosine annealing to base/1e4
    if progress < warmup_fraction:
        start = base_lr / 25.0
        return start + (base_lr - start) * progress / warmup_fraction
    tail = (progress - warmup_fraction) / (1.0 - warmup_fraction)
    end = base_lr / 1e4
    return end + 0.5 * (base_lr - end) * (1.0 + math.cos(math.pi * tail))


def _check_model_fits_data(model: nn.Module, data: DataBundle) -> None:
    from .measure import input_size_of

    expected = input_size_of(model)
    if expected is not None and expected != data.input_shape[0]:
        raise ValueError(
            f"the model expects {expected} input channels but the data has "
            f"{data.input_shape[0]}: build the model with in_channels={data.input_shape[0]}"
        )
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if classifier and classifier[-1].out_features != data.num_classes:
        raise ValueError(
            f"the model outputs {classifier[-1].out_features} classes but the data has "
            f"{data.num_classes}: build the model with num_classes={data.num_classes}"
        )


def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in model.state_dict().values()]


def _restore(model: nn.Module, snapshot: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for target, saved in zip(model.state_dict().values(), snapshot):
            target.copy_(saved)


def train(
    model: nn.Module,
    data: DataBundle,
    epochs: int,
    *,
    lr: float = 0.05,
    batch_size: int = 128,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    schedule: str = "cosine",
    label_smoothing: float = 0.0,
    teacher: nn.Module | None = None,
    distill_weight: float = 0.5,
    temperature: float = 4.0,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    resolution: int | tuple[int, int] | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    evaluate_each_epoch: bool = True,
    quiet: bool = False,
) -> TrainHistory:
    """Train ``model`` in place on ``data.train`` and return the history.

    Parameters
    ----------
    model : torch.nn.Module
        The model; trained in place.
    data : DataBundle
        The dataset (from :func:`tridim.data.load`).
    epochs : int
        Passes over the training split (0 does nothing).
    lr, batch_size, momentum, weight_decay : float, int, float, float
        SGD with Nesterov momentum; weight decay is not applied to BatchNorm and biases.
    schedule : {"cosine", "onecycle", "constant"}
        Learning-rate schedule over all steps.
    label_smoothing : float
        Label smoothing of the cross-entropy.
    teacher : torch.nn.Module, optional
        If given, the loss mixes cross-entropy with distillation from this model's
        outputs (``distill_weight`` on the distillation term, at ``temperature``). The
        teacher sees full-resolution inputs.
    extra_loss : callable, optional
        ``extra_loss(model) -> scalar tensor`` added to every step's loss (e.g. the L1
        penalty on BN scales for network slimming).
    resolution : int or (int, int), optional
        Train on inputs resized to this size (bilinear, antialiased).
    max_steps : int, optional
        Stop after this many optimiser steps (the schedule still spans ``epochs``).
    seed : int
        Seeds initial shuffling and dropout; the same seed gives the same result on CPU.
    checkpoint_path : path, optional
        Save a checkpoint after every epoch; if the file exists, training resumes
        from it.
    evaluate_each_epoch : bool
        Record validation accuracy after each epoch.
    quiet : bool
        Hide progress bars.

    Returns
    -------
    TrainHistory

    Raises
    ------
    TrainingDiverged
        If a loss is NaN or infinite; the model is left with the last weights that gave
        a finite loss.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    _check_model_fits_data(model, data)
    history = TrainHistory()
    if epochs == 0:
        return history

    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() <= 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=momentum,
        nesterov=momentum > 0,
    )
    loader = data.loader("train", batch_size, seed=seed)
    steps_per_epoch = len(loader)
    total_steps = epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    first_epoch, step = 0, 0
    if checkpoint_path is not None and Path(checkpoint_path).is_file():
        state = load_checkpoint(checkpoint_path, model, optimizer)
        first_epoch, step = state["epoch"], state["step"]
        history.epochs = state.get("history", [])
        loader = data.loader("train", batch_size, seed=seed + first_epoch)

    if teacher is not None:
        teacher.eval()
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    torch.manual_seed(seed + first_epoch)
    last_good = _snapshot(model)
    start_time = time.perf_counter()
    for epoch in range(first_epoch, epochs):
        if step >= total_steps:
            break
        model.train()
        epoch_start = time.perf_counter()
        running, seen = 0.0, 0
        bar = tqdm(
            loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, disable=quiet, unit="batch"
        )
        for images, labels in bar:
            if step >= total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(schedule, lr, step, total_steps)
            inputs = resize_batch(images, resolution) if resolution is not None else images
            logits = model(inputs)
            loss = criterion(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(images)
                loss = (1.0 - distill_weight) * loss + distill_weight * distillation_loss(
                    logits, teacher_logits, temperature
                )
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            if not torch.isfinite(loss):
                _restore(model, last_good)
                raise TrainingDiverged(
                    f"loss became {loss.item()} at step {step} (epoch {epoch + 1}); the model "
                    "keeps its last good weights. Lower the learning rate (lr) or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            last_good = _snapshot(model)
            optimizer.step()
            step += 1
            running += loss.item() * len(labels)
            seen += len(labels)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        record = {
            "epoch": epoch + 1,
            "loss": running / max(1, seen),
            "seconds": time.perf_counter() - epoch_start,
            "steps": step,
        }
        if evaluate_each_epoch:
            record["val_accuracy"] = evaluate(model, data.loader("val", 256), resolution=resolution)
        history.epochs.append(record)
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                model,
                optimizer,
                epoch=epoch + 1,
                step=step,
                history=history.epochs,
            )
        loader = data.loader("train", batch_size, seed=seed + epoch + 1)
    history.seconds = time.perf_counter() - start_time
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, resolution: int | tuple[int, int] | None = None) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (eval mode; the mode is restored).

    Parameters
    ----------
    model : torch.nn.Module
        The classifier.
    loader : iterable of (images, labels)
        For instance ``data.loader("test")``.
    resolution : int or (int, int), optional
        Resize inputs to this size before the forward pass.

    Returns
    -------
    float
        Fraction of correctly classified examples, in [0, 1].
    """
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    try:
        for images, labels in loader:
            if resolution is not None:
                images = resize_batch(images, resolution)
            correct += (model(images).argmax(dim=1) == labels).sum().item()
            total += len(labels)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("cannot evaluate on an empty loader")
    return correct / total


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    **meta,
) -> None:
    """Save weights (and optimiser state, epoch, ...) atomically, with no pickled code.

    The file holds only tensors, numbers, strings, lists and dicts, so
    :func:`load_checkpoint` reads it with ``torch.load(..., weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": model.state_dict(), **meta}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and optimiser).

    Returns the checkpoint's other entries (epoch, step, history, ...).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # a corrupted or hostile file must not get further
        raise ValueError(f"{path} is not a valid tridim checkpoint: {error}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a tridim checkpoint (no 'model' entry)")
    try:
        model.load_state_dict(state.pop("model"))
    except RuntimeError as error:
        raise ValueError(
            f"{path} does not fit this model's architecture: {str(error).splitlines()[0]}"
        ) from None
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(state.pop("optimizer"))
    state.pop("optimizer", None)
    state.setdefault("epoch", 0)
    state.setdefault("step", 0)
    return state
