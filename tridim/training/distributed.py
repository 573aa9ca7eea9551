"""Data parallelism under ``torchrun``: one process per device, rank 0 decides and writes.

When a script (or ``python -m tridim``) is launched by ``torchrun --nproc_per_node N``,
:func:`setup` joins the process group (gloo on CPU, NCCL on CUDA, each rank on
``cuda:LOCAL_RANK``). From then on:

- :func:`tridim.training.train.train` wraps the model in DistributedDataParallel, gives each rank
  its share of every epoch's batches and averages the recorded loss over ranks;
- pruning decisions are taken on rank 0 and broadcast (:func:`broadcast_object`), and
  the other ranks receive rank 0's weights (:func:`broadcast_module`);
- only rank 0 writes the run folder (:func:`is_writer`); the others wait for it
  (:func:`barrier`) before reading what it wrote.

Outside torchrun every function here is a no-op, so single-process code pays nothing.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "setup",
    "world",
    "is_writer",
    "barrier",
    "broadcast_object",
    "broadcast_module",
    "all_reduce_mean",
    "all_true",
]


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device | None) -> torch.device | None:
    """Join the process group if launched by torchrun; return this rank's device.

    ``device`` is the device asked for (None: the model's); under torchrun a CUDA
    device becomes ``cuda:LOCAL_RANK``.
    """
    if not _launched():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return device


def world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_writer() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if world()[1] > 1:
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (picklable plain data: plans, samples)."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(model: nn.Module) -> nn.Module:
    """Overwrite every rank's parameters and buffers with rank 0's (same architecture)."""
    if world()[1] == 1:
        return model
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
    return model


def all_reduce_mean(value: float, device: torch.device) -> float:
    """The mean of ``value`` over ranks."""
    _, size = world()
    if size == 1:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / size


def all_true(flag: torch.Tensor | bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (so every rank takes the same branch)."""
    if world()[1] == 1:
        return bool(flag)
    tensor = torch.as_tensor(flag, dtype=torch.float32, device=device).reshape(1).clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item() > 0)
