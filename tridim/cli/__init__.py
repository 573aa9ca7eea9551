"""The command line: parses arguments, calls the layers below, prints what they return.

The one layer that parses arguments or prints; ``main`` is the ``tridim`` console script.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tridim import __version__
from tridim.cli.bench import add_bench
from tridim.cli.models import add_export, add_info, add_train
from tridim.cli.optimize import add_collect, add_fit, add_optimize, add_report, add_solve

__all__ = ["main", "build_parser"]

_COMMANDS: list[Callable] = [
    add_optimize,
    add_collect,
    add_fit,
    add_solve,
    add_report,
    add_export,
    add_bench,
    add_info,
    add_train,
]
#: tridim's package folder: an error raised by code in it is a message for the user.
PACKAGE_FOLDER = Path(__file__).resolve().parents[1]


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


def _import_torch_pruning_without_timm() -> None:
    """Import torch_pruning without the timm import it makes for its own op counter.

    torch_pruning imports timm (0.6-1.4 s here, with timm's web clients) only to hook
    timm's attention layers in its operation counter, which tridim never calls: it counts
    MACs itself. This process runs nothing else that could call that counter, and timm
    still imports normally afterwards (``--model timm:...``).
    """
    if "torch_pruning" in sys.modules or "timm" in sys.modules:
        return
    sys.modules["timm"] = None  # makes ``import timm`` raise ImportError, which it catches
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        pass  # not installed: the commands that need it say so
    finally:
        del sys.modules["timm"]


def _start_timing_process_early(argv: Sequence[str]) -> None:
    """Start ``tridim optimize``'s timing subprocess before this process imports torch.

    Its report times the models in a subprocess whose start is a fresh interpreter
    importing torch (about 1.5 s of one core). Started now, both processes import side by
    side, each on a core; started later, it would take a core from training that uses
    every one. A CUDA or MPS device is timed in this process: no subprocess then (with
    ``--device auto`` on a GPU machine it starts and stays idle).
    """
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command != "optimize" or {"-h", "--help"} & set(argv):
        return
    devices = [a.split("=", 1)[1] for a in argv if a.startswith("--device=")]
    devices += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--device"]
    if devices and devices[-1] not in ("auto", "cpu"):
        return
    from tridim.cost.timing_process import start_worker

    start_worker()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tridim`` command; returns the exit status.

    A user error (bad argument, missing or malformed file, a run folder of another run)
    prints one line and returns 2; ``--debug`` shows the traceback instead. A
    ``ValueError`` or ``TypeError`` raised outside tridim's own code is a bug, not a user
    error: it is re-raised with its traceback. An interrupted run returns 130 and says how
    to resume.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    _start_timing_process_early(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    _import_torch_pruning_without_timm()
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
