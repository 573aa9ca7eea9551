"""What tridim's training loop costs over a bare PyTorch loop.

Both loops train the same freshly seeded model on the same batches with the same
optimiser (SGD, Nesterov momentum, weight decay), batch size, device and precision; the
bare loop does nothing else (no schedule, no checks, no progress bar). Runs alternate
(bare, tridim, bare, tridim, ...) so drift on a shared machine hits both alike, and the
overhead is the ratio of the medians.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as datasets
from .. import models
from ..device import Execution
from ..train import seed_everything, train


def bare_loop(model: nn.Module, data, epochs: int, execution: Execution, **options) -> float:
    """Train with the plainest PyTorch loop; return wall seconds."""
    device = execution.place(model)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=options["lr"],
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    scaler = execution.grad_scaler(device)
    model.train()
    started = time.perf_counter()
    for epoch in range(epochs):
        loader = data.loader("train", options["batch_size"], seed=epoch, device=device)
        for images, labels in loader:
            images = execution.batch(images, device)
            labels = labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with execution.autocast(device):
                loss = F.cross_entropy(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    _drain(device)
    return time.perf_counter() - started


def _drain(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tridim_loop(model: nn.Module, data, epochs: int, execution: Execution, **options) -> float:
    """Train with :func:`tridim.train.train` (no per-epoch evaluation); wall seconds."""
    started = time.perf_counter()
    train(
        model,
        data,
        epochs,
        lr=options["lr"],
        batch_size=options["batch_size"],
        evaluate_each_epoch=False,
        quiet=True,
        device=execution.device,
        precision=execution.precision,
        channels_last=execution.channels_last,
    )
    _drain(execution.place(model))
    return time.perf_counter() - started


def run_train_bench(
    data: str = "digits",
    model: str = "resnet20",
    *,
    epochs: int = 2,
    repeats: int = 3,
    batch_size: int = 128,
    lr: float = 0.05,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool = False,
    seed: int = 0,
    data_options: dict | None = None,
) -> dict:
    """Time both loops ``repeats`` times each, alternating; return rows and the overhead.

    Returns
    -------
    dict
        ``{"config": ..., "rows": [{"loop", "median_s", "runs_s"}, ...],
        "overhead": tridim median / bare median - 1}``.
    """
    if repeats < 1 or epochs < 1:
        raise ValueError(f"repeats and epochs must be >= 1, got {repeats} and {epochs}")
    execution = Execution.of(device, precision, channels_last)
    bundle = datasets.load(data, **(data_options or {}))
    times: dict[str, list[float]] = {"bare PyTorch": [], "tridim.train": []}
    for _ in range(repeats):
        for name, loop in (("bare PyTorch", bare_loop), ("tridim.train", tridim_loop)):
            seed_everything(seed)
            net = models.build(model, bundle.num_classes, bundle.input_shape[0])
            times[name].append(loop(net, bundle, epochs, execution, lr=lr, batch_size=batch_size))
    medians = {name: statistics.median(runs) for name, runs in times.items()}
    return {
        "config": {
            "data": data,
            "model": model,
            "epochs": epochs,
            "repeats": repeats,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            **execution.describe(execution.device or torch.device("cpu")),
        },
        "rows": [
            {"loop": name, "median_s": medians[name], "runs_s": times[name]} for name in times
        ],
        "overhead": medians["tridim.train"] / medians["bare PyTorch"] - 1.0,
    }
