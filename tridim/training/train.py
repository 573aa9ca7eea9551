"""Training and evaluation loops: seeded, with progress bars and safe checkpoints.

:func:`train` runs SGD with Nesterov momentum under a cosine or one-cycle schedule,
with optional label smoothing, distillation from a teacher, an extra loss term (the
width dimension adds an L1 penalty on BatchNorm scales) and training at a reduced
input resolution. Checkpoints hold tensors and numbers only and are loaded with
``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm import tqdm

from tridim.atomic import atomic_write
from tridim.training.data import DataBundle, resize_batch
from tridim.training.device import Execution, eval_mode, model_device
from tridim.training.distributed import (
    all_reduce_mean,
    all_true,
    barrier,
    broadcast_module,
    is_writer,
    world,
)

__all__ = [
    "train",
    "evaluate",
    "TrainHistory",
    "TrainingDiverged",
    "save_checkpoint",
    "load_checkpoint",
    "distillation_loss",
    "seed_everything",
    "check_model_fits_data",
]

SCHEDULES = ("cosine", "onecycle", "constant")


class TrainingDiverged(FloatingPointError):
    """A loss or a gradient became NaN or infinite; see :func:`train` for what the model holds."""


@dataclass
class TrainHistory:
    """What happened during :func:`train`: one record per epoch."""

    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall seconds per epoch."""
        return self.seconds / max(1, len(self.epochs))


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


def check_model_fits_data(model: nn.Module, data: DataBundle) -> None:
    """Raise a clear error if ``model`` cannot take ``data``'s images or classes.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier (its first convolution and last linear layer are checked).
    data : DataBundle
        The dataset.

    Raises
    ------
    ValueError
        If the input channels or the number of classes differ.
    """
    from tridim.training.models import input_size_of

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


class _BufferGuard:
    """The model's buffers (BatchNorm running statistics) as they were before a step.

    A forward pass in train mode updates the running statistics, so a step that fails
    must put them back. Only buffers are copied (into storage allocated once); the
    parameters are never copied.
    """

    def __init__(self, model: nn.Module) -> None:
        self.buffers = list(model.buffers())
        self.saved = [b.detach().clone() for b in self.buffers]

    def save(self) -> None:
        with torch.no_grad():
            for saved, buffer in zip(self.saved, self.buffers):
                saved.copy_(buffer)

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self.buffers, self.saved):
                buffer.copy_(saved)


@dataclass
class _Loop:
    """One training run's fixed settings and state shared by its steps and epochs."""

    model: nn.Module
    data: DataBundle
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    schedule: str
    lr: float
    epochs: int
    total_steps: int
    batch_size: int
    seed: int
    teacher: nn.Module | None
    distill_weight: float
    temperature: float
    extra_loss: Callable[[nn.Module], torch.Tensor] | None
    resolution: int | tuple[int, int] | None
    checkpoint_path: str | os.PathLike | None
    evaluate_each_epoch: bool
    quiet: bool
    buffers: _BufferGuard
    execution: Execution
    device: torch.device
    scaler: torch.amp.GradScaler
    forward: nn.Module
    shard: tuple[int, int] = (0, 1)
    label: str = ""


def _check_arguments(epochs: int, schedule: str, lr: float, label_smoothing: float) -> None:
    """Validate :func:`train`'s numeric and schedule arguments."""
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")


def _make_optimizer(
    model: nn.Module, lr: float, momentum: float, weight_decay: float
) -> torch.optim.SGD:
    """SGD with Nesterov momentum; no weight decay on BatchNorm weights and biases."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.dim() <= 1 else decay).append(param)
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=momentum,
        nesterov=momentum > 0,
    )


def _resume(
    checkpoint_path: str | os.PathLike | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: TrainHistory,
) -> tuple[int, int]:
    """Load the checkpoint if the file exists; return (first epoch, step) to start from."""
    if checkpoint_path is None or not Path(checkpoint_path).is_file():
        return 0, 0
    state = load_checkpoint(checkpoint_path, model, optimizer)
    history.epochs = state.get("history", [])
    return state["epoch"], state["step"]


def _step_loss(
    loop: _Loop, images: torch.Tensor, labels: torch.Tensor, teacher_logits=None
) -> torch.Tensor:
    """Forward pass and loss of one batch (cross-entropy, distillation, extra term);
    ``teacher_logits``: the teacher's outputs for the batch, if precomputed."""
    inputs = resize_batch(images, loop.resolution) if loop.resolution is not None else images
    logits = loop.forward(inputs)
    loss = loop.criterion(logits, labels)
    if loop.teacher is not None or teacher_logits is not None:
        if teacher_logits is None:
            with torch.no_grad():
                teacher_logits = loop.teacher(images)
        loss = (1.0 - loop.distill_weight) * loss + loop.distill_weight * distillation_loss(
            logits, teacher_logits, loop.temperature
        )
    if loop.extra_loss is not None:
        loss = loss + loop.extra_loss(loop.model)
    return loss


def _gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient the optimiser would apply is finite (one sync)."""
    checks = [
        torch.isfinite(param.grad).all()
        for group in optimizer.param_groups
        for param in group["params"]
        if param.grad is not None
    ]
    return bool(torch.stack(checks).all()) if checks else True


def _diverged(loop: _Loop, what: str, step: int, epoch: int) -> TrainingDiverged:
    """Undo the failing step's side effects (gradients, buffers) and describe the failure."""
    loop.optimizer.zero_grad(set_to_none=True)
    loop.buffers.restore()
    return TrainingDiverged(
        f"{what} at step {step} (epoch {epoch + 1}); the model keeps the weights of the last "
        "step taken. Lower the learning rate (lr) or check the data."
    )


#: fp16: a loss scale below this means gradients overflow whatever the scale.
MIN_LOSS_SCALE = 2.0**-16


def _train_step(loop: _Loop, batch: tuple, step: int, epoch: int) -> float:
    """One optimiser step; returns the batch loss. On divergence, raise without stepping."""
    for group in loop.optimizer.param_groups:
        group["lr"] = _learning_rate(loop.schedule, loop.lr, step, loop.total_steps)
    loop.buffers.save()
    images, labels, *teacher_logits = batch  # a third: precomputed teacher outputs
    images = loop.execution.batch(images, loop.device)
    labels = labels.to(loop.device, non_blocking=True)
    teacher_logits = teacher_logits[0].to(loop.device) if teacher_logits else None
    with loop.execution.autocast(loop.device):
        loss = _step_loss(loop, images, labels, teacher_logits)
    if not all_true(torch.isfinite(loss), loop.device):  # every rank takes the same branch
        raise _diverged(loop, f"loss became {loss.item()}", step, epoch)
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(loss).backward()
    if loop.scaler.is_enabled():
        # fp16: the scaler skips a step with overflowing gradients and lowers its scale
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        if loop.scaler.get_scale() < MIN_LOSS_SCALE:  # it halves at every skipped step
            raise _diverged(loop, "fp16 gradients overflowed at every loss scale", step, epoch)
        return loss.item()
    if not _gradients_finite(loop.optimizer):
        raise _diverged(loop, "a gradient became NaN or infinite", step, epoch)
    loop.optimizer.step()
    return loss.item()


def _train_epoch(loop: _Loop, loader, epoch: int, step: int) -> tuple[int, float]:
    """One pass over ``loader`` (or until the step budget); returns (step, mean loss)."""
    loop.model.train()
    running, seen = 0.0, 0
    bar = tqdm(
        loader,
        desc=f"{loop.label}{', ' if loop.label else ''}epoch {epoch + 1}/{loop.epochs}",
        leave=False,
        disable=loop.quiet,
        unit="batch",
    )
    for batch in bar:
        if step >= loop.total_steps:
            break
        loss = _train_step(loop, batch, step, epoch)
        step += 1
        running += loss * len(batch[1])
        seen += len(batch[1])
        bar.set_postfix(loss=f"{running / seen:.4f}")
    return step, running / max(1, seen)


def _epoch_record(loop: _Loop, epoch: int, step: int, loss: float, seconds: float) -> dict:
    """The history entry of one finished epoch (with validation accuracy if asked)."""
    record = {"epoch": epoch + 1, "loss": loss, "seconds": seconds, "steps": step}
    if loop.evaluate_each_epoch:
        record["val_accuracy"] = evaluate(
            loop.model,
            loop.data.loader("val", 256, device=loop.device),
            resolution=loop.resolution,
            device=loop.device,
            precision=loop.execution.precision,
        )
    return record


def _run_epochs(loop: _Loop, history: TrainHistory, loader, first_epoch: int, step: int) -> None:
    """Train from ``first_epoch`` on, recording (and checkpointing) every epoch."""
    for epoch in range(first_epoch, loop.epochs):
        if step >= loop.total_steps:
            break
        epoch_start = time.perf_counter()
        step, loss = _train_epoch(loop, loader, epoch, step)
        seconds = time.perf_counter() - epoch_start
        loss = all_reduce_mean(loss, loop.device)
        history.epochs.append(_epoch_record(loop, epoch, step, loss, seconds))
        if loop.checkpoint_path is not None and is_writer():
            save_checkpoint(
                loop.checkpoint_path,
                loop.model,
                loop.optimizer,
                epoch=epoch + 1,
                step=step,
                history=history.epochs,
            )
        barrier()  # the checkpoint is whole before any rank may resume from it
        loader = loop.data.loader(
            "train",
            loop.batch_size,
            seed=loop.seed + epoch + 1,
            device=loop.device,
            shard=loop.shard,
        )


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
    teacher_outputs: torch.Tensor | None = None,
    distill_weight: float = 0.5,
    temperature: float = 4.0,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    resolution: int | tuple[int, int] | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    evaluate_each_epoch: bool = True,
    quiet: bool = False,
    label: str = "",
    device: str | torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
) -> TrainHistory:
    """Train ``model`` in place on ``data.train`` and return the history.

    Parameters
    ----------
    model : torch.nn.Module
        The model; trained in place.
    data : DataBundle
        The dataset (from :func:`tridim.training.data.load`).
    epochs : int
        Passes over the training split (0 does nothing).
    lr, batch_size, momentum, weight_decay : float, int, float, float
        SGD with Nesterov momentum; weight decay is not applied to BatchNorm and biases.
        Under ``torchrun`` the model is wrapped in DistributedDataParallel and
        ``batch_size`` is the global batch: each of the N ranks takes ``batch_size // N``
        examples of every step, so a step sees what one process would.
    schedule : {"cosine", "onecycle", "constant"}
        Learning-rate schedule over all steps.
    label_smoothing : float
        Label smoothing of the cross-entropy.
    teacher : torch.nn.Module, optional
        If given, the loss mixes cross-entropy with distillation from this model's
        outputs (``distill_weight`` on the distillation term, at ``temperature``). The
        teacher sees full-resolution inputs.
    teacher_outputs : torch.Tensor, optional
        The teacher's outputs for every training example, in order
        (:func:`teacher_outputs`), used instead of running the teacher at every step:
        a third less compute per distilled step. Only for an in-memory
        :class:`~torch.utils.data.TensorDataset` training split (no random
        augmentation, so an example's teacher output never changes).
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
    label : str
        Prefix of the progress bar (e.g. ``"width 3/4"`` gives ``width 3/4, epoch 1/2``).
    device : str or torch.device, optional
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``: the model (and the
        teacher) move there in place; None trains where the model is. In-memory data
        is copied to the device once.
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the forward pass; fp16 scales the loss.
    channels_last : bool
        NHWC memory format for the model and the batches.

    Returns
    -------
    TrainHistory

    Raises
    ------
    TrainingDiverged
        If a step's loss, or one of its gradients, is NaN or infinite. That step is not
        taken: the model's parameters are those left by the last optimiser step taken
        (every step taken had a finite loss and finite gradients), or the initial ones if
        the first step failed, and its buffers (BatchNorm running statistics) are
        restored to their values before the failing step's forward pass. Gradients are
        cleared; the optimiser state is that of the last step taken.
    """
    _check_arguments(epochs, schedule, lr, label_smoothing)
    check_model_fits_data(model, data)
    execution = Execution.of(device, precision, channels_last)
    history = TrainHistory()
    if epochs == 0:
        return history
    placed = execution.place(model)
    data = _with_teacher_outputs(data, teacher_outputs)
    shard = world()
    batch_size = max(1, batch_size // shard[1])  # the global batch is split over ranks
    optimizer = _make_optimizer(model, lr, momentum, weight_decay)
    steps = epochs * len(data.loader("train", batch_size, seed=seed, shard=shard))
    total_steps = steps if max_steps is None else min(steps, int(max_steps))
    first_epoch, step = _resume(checkpoint_path, model, optimizer, history)
    loader = data.loader("train", batch_size, seed=seed + first_epoch, device=placed, shard=shard)
    if teacher is not None and teacher_outputs is None:  # else the teacher never runs
        execution.place(teacher)
        teacher.eval()
    loop = _Loop(
        model=model,
        data=data,
        optimizer=optimizer,
        criterion=nn.CrossEntropyLoss(label_smoothing=label_smoothing),
        schedule=schedule,
        lr=lr,
        epochs=epochs,
        total_steps=total_steps,
        batch_size=batch_size,
        seed=seed,
        teacher=teacher,
        distill_weight=distill_weight,
        temperature=temperature,
        extra_loss=extra_loss,
        resolution=resolution,
        checkpoint_path=checkpoint_path,
        evaluate_each_epoch=evaluate_each_epoch,
        quiet=quiet,
        buffers=_BufferGuard(model),
        execution=execution,
        device=placed,
        scaler=execution.grad_scaler(placed),
        forward=_data_parallel(model, placed, shard),
        shard=shard,
        label=label,
    )
    torch.manual_seed(seed + first_epoch)
    start_time = time.perf_counter()
    _run_epochs(loop, history, loader, first_epoch, step)
    history.seconds = time.perf_counter() - start_time
    broadcast_module(model)  # BatchNorm statistics too: every rank ends with rank 0's model
    model.eval()
    return history


def _with_teacher_outputs(data: DataBundle, outputs: torch.Tensor | None) -> DataBundle:
    """``data`` whose training examples carry their teacher outputs as a third tensor."""
    if outputs is None:
        return data
    if not isinstance(data.train, TensorDataset):
        raise ValueError(
            "teacher_outputs needs an in-memory TensorDataset training split (a dataset "
            f"with per-example transforms may augment); got {type(data.train).__name__}: "
            "pass teacher= alone"
        )
    if len(outputs) != len(data.train):
        raise ValueError(
            f"teacher_outputs has {len(outputs)} rows for {len(data.train)} training examples"
        )
    return dataclasses.replace(data, train=TensorDataset(*data.train.tensors, outputs))


@torch.no_grad()
def teacher_outputs(
    teacher: nn.Module, dataset: TensorDataset, *, precision: str = "fp32", batch_size: int = 256
) -> torch.Tensor:
    """The outputs of ``teacher`` (in eval mode, where it is) for every example of an
    in-memory dataset, in order, as float32 on the CPU: what :func:`train` distils from
    with ``teacher_outputs=`` instead of running the teacher at every step."""
    execution = Execution.of(None, precision)
    device = model_device(teacher)
    outputs = []
    with eval_mode(teacher):
        for start in range(0, len(dataset), batch_size):
            images = dataset.tensors[0][start : start + batch_size]
            with execution.autocast(device):
                outputs.append(teacher(execution.batch(images, device)).float().cpu())
    return torch.cat(outputs)


def _data_parallel(model: nn.Module, device: torch.device, shard: tuple[int, int]) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun, else ``model``."""
    if shard[1] == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    *,
    resolution: int | tuple[int, int] | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """Top-1 accuracy of ``model`` over ``loader`` (eval mode; the mode is restored).

    Parameters
    ----------
    model : torch.nn.Module
        The classifier.
    loader : iterable of (images, labels)
        For instance ``data.loader("test")``.
    resolution : int or (int, int), optional
        Resize inputs to this size before the forward pass.
    device : str or torch.device, optional
        Move the model there first (in place); None evaluates where the model is.
    precision : {"fp32", "bf16", "fp16"}
        Autocast precision of the forward pass.

    Returns
    -------
    float
        Fraction of correctly classified examples, in [0, 1].
    """
    execution = Execution.of(device, precision)
    placed = execution.place(model)
    correct = torch.zeros((), dtype=torch.long, device=placed)
    total = 0
    with eval_mode(model):
        for images, labels in loader:
            images = execution.batch(images, placed)
            if resolution is not None:
                images = resize_batch(images, resolution)
            with execution.autocast(placed):
                logits = model(images)
            correct += (logits.argmax(dim=1) == labels.to(placed)).sum()
            total += len(labels)
    if total == 0:
        raise ValueError("cannot evaluate on an empty loader")
    return correct.item() / total


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
    state = {"model": model.state_dict(), **meta}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    atomic_write(path, lambda handle: torch.save(state, handle))


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
