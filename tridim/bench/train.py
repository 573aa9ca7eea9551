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

from tridim.run.report import markdown_table
from tridim.training import data as datasets
from tridim.training import models
from tridim.training.device import Execution
from tridim.training.train import seed_everything, train


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
    """Train with :func:`tridim.training.train.train` (no per-epoch evaluation); wall seconds."""
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
    times: dict[str, list[float]] = {"bare PyTorch": [], "tridim.training.train": []}
    for _ in range(repeats):
        for name, loop in (("bare PyTorch", bare_loop), ("tridim.training.train", tridim_loop)):
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
        "overhead": medians["tridim.training.train"] / medians["bare PyTorch"] - 1.0,
    }


#: The training options ``tridim bench train --sweep`` compares (name -> Execution options).
TRAIN_OPTIONS = {
    "fp32": {"precision": "fp32", "channels_last": False},
    "bf16 autocast": {"precision": "bf16", "channels_last": False},
    "channels_last": {"precision": "fp32", "channels_last": True},
    "bf16 + channels_last": {"precision": "bf16", "channels_last": True},
}
#: Evaluation settings compared: (batch size, grad mode).
EVAL_OPTIONS = ((256, "no_grad"), (256, "inference_mode"), (1024, "no_grad"))


def run_train_options_bench(
    data: str = "digits",
    model: str = "resnet20",
    *,
    epochs: int = 2,
    repeats: int = 3,
    batch_size: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    data_options: dict | None = None,
) -> dict:
    """Each training option of :data:`TRAIN_OPTIONS` on the CPU with ``tridim.training.train``,
    runs alternating, with the test accuracy each reaches; then evaluation settings.

    Returns
    -------
    dict
        ``{"config", "train": [{"option", "median_s", "runs_s", "accuracy",
        "speedup"}], "evaluate": [{"batch_size", "grad_mode", "median_s", "speedup"}]}``:
        speed-ups against the first row of each table.
    """
    if repeats < 1 or epochs < 1:
        raise ValueError(f"repeats and epochs must be >= 1, got {repeats} and {epochs}")
    bundle = datasets.load(data, **(data_options or {}))
    times: dict[str, list[float]] = {name: [] for name in TRAIN_OPTIONS}
    accuracy: dict[str, float] = {}
    trained = None
    for _ in range(repeats):
        for name, options in TRAIN_OPTIONS.items():
            seed_everything(seed)
            net = models.build(model, bundle.num_classes, bundle.input_shape[0])
            execution = Execution.of("cpu", **options)
            times[name].append(
                tridim_loop(net, bundle, epochs, execution, lr=lr, batch_size=batch_size)
            )
            accuracy[name] = _test_accuracy(net.to(memory_format=torch.contiguous_format), bundle)
            trained = trained or net
    first = statistics.median(times["fp32"])
    rows = [
        {
            "option": name,
            "median_s": statistics.median(runs),
            "runs_s": runs,
            "accuracy": accuracy[name],
            "speedup": first / statistics.median(runs),
        }
        for name, runs in times.items()
    ]
    return {
        "config": {
            "data": data,
            "model": model,
            "epochs": epochs,
            "repeats": repeats,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "device": "cpu",
        },
        "train": rows,
        "evaluate": _evaluation_rows(trained, bundle, repeats),
    }


def _test_accuracy(model: nn.Module, bundle) -> float:
    from tridim.training.train import evaluate

    return evaluate(model, bundle.loader("test", 256))


def _evaluation_rows(model: nn.Module, bundle, repeats: int) -> list[dict]:
    """Seconds of one pass over the test split per (batch size, grad mode), alternating."""
    times: dict[tuple, list[float]] = {option: [] for option in EVAL_OPTIONS}
    model.eval()
    for _ in range(repeats):
        for size, mode in EVAL_OPTIONS:
            context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
            started = time.perf_counter()
            with context():
                for images, _labels in bundle.loader("test", size):
                    model(images)
            times[(size, mode)].append(time.perf_counter() - started)
    first = statistics.median(times[EVAL_OPTIONS[0]])
    return [
        {
            "batch_size": size,
            "grad_mode": mode,
            "median_s": statistics.median(times[(size, mode)]),
            "speedup": first / statistics.median(times[(size, mode)]),
        }
        for size, mode in EVAL_OPTIONS
    ]


def format_table(result: dict) -> str:
    """The result of :func:`run_train_bench` as the command line prints it."""
    config = result["config"]
    rows = [
        {
            "loop": r["loop"],
            "median_s": r["median_s"],
            "runs_s": ", ".join(f"{t:.2f}" for t in r["runs_s"]),
        }
        for r in result["rows"]
    ]
    head = (
        f"tridim bench train: {config['model']} on {config['data']}, {config['epochs']} "
        f"epochs x {config['repeats']} runs per loop, batch {config['batch_size']}, "
        f"{config['device']} {config['precision']}, {config['threads']} threads"
    )
    note = f"overhead of tridim.train: {result['overhead']:+.1%}"
    return "\n".join([head, markdown_table(rows), note])


def format_options_table(result: dict) -> str:
    """The result of :func:`run_train_options_bench` as the command line prints it."""
    config = result["config"]
    keys = ("option", "median_s", "speedup", "accuracy")
    head = (
        f"tridim bench train --sweep: {config['model']} on {config['data']}, "
        f"{config['epochs']} epochs x {config['repeats']} runs per option, "
        f"batch {config['batch_size']}, cpu, {config['threads']} threads"
    )
    return "\n".join(
        [
            head,
            markdown_table([{k: row[k] for k in keys} for row in result["train"]]),
            markdown_table(result["evaluate"]),
            "speedup: against the first row; evaluation: one pass over the test split.",
        ]
    )
