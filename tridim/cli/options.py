"""Options several commands share, and what they turn into: data, model, execution, output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = [
    "add_execution_args",
    "add_model_data_args",
    "add_seed_and_output_args",
    "criteria",
    "data_options",
    "execution_options",
    "split_list",
    "write_json",
]


def write_json(path: str | Path | None, payload, *, quiet: bool = False) -> None:
    """Write ``payload`` as JSON to ``path`` (atomically) and say so on stderr; no path, no-op.

    Parameters
    ----------
    path : str or Path, optional
        The file to write.
    payload : object
        JSON-serialisable data.
    quiet : bool
        Whether to skip the ``wrote PATH`` line.
    """
    if path is None:
        return
    from tridim.atomic import atomic_write_json

    atomic_write_json(path, payload)
    if not quiet:
        print(f"wrote {path}", file=sys.stderr)


def data_options(args: argparse.Namespace) -> dict:
    """``data.load`` options from ``--data-root`` and ``--size``, checked against ``--data``.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments with ``data`` (and optionally ``data_root``, ``size``).

    Returns
    -------
    dict
        Keyword arguments of :func:`tridim.training.data.load`.
    """
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


def add_model_data_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--data``, ``--data-root`` and ``--size``."""
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


def add_execution_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--device``, ``--precision`` and ``--channels-last``."""
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


def execution_options(args: argparse.Namespace) -> dict:
    """``device``, ``precision`` and ``channels_last``, checked before any work.

    Under torchrun this joins the process group (the device becomes this rank's).

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments of :func:`add_execution_args`.

    Returns
    -------
    dict
        ``{"device", "precision", "channels_last"}``.
    """
    from tridim.training.device import Execution
    from tridim.training.distributed import setup

    execution = Execution.of(args.device, args.precision, args.channels_last)
    return {
        "device": setup(execution.device),
        "precision": execution.precision,
        "channels_last": execution.channels_last,
    }


def add_seed_and_output_args(
    parser: argparse.ArgumentParser, *, quiet: bool = True, json_help: str | None = None
) -> None:
    """Add ``--seed``, ``--quiet`` (unless ``quiet`` is False) and ``--json-out``."""
    parser.add_argument("--seed", type=int, default=0)
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="hide progress bars")
    parser.add_argument("--json-out", help=json_help or "write the full result as JSON here")


def criteria() -> tuple[str, ...]:
    """The width criteria ``--criterion`` accepts: ``auto`` and every ranking criterion."""
    from tridim.prune.criteria import CRITERIA

    return ("auto", *CRITERIA)


def split_list(text: str | None) -> list[str] | None:
    """A comma-separated option as a list of its non-empty items (None stays None)."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]
