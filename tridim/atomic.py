"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every file tridim writes into a run folder (manifests, plans, predictors, reports,
weights, checkpoints) goes through :func:`atomic_write`: the content is written to a
temporary file in the same folder, flushed to disk, then renamed over the target.

This module does not import torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "atomic_write_json"]


def atomic_write(path: str | os.PathLike, content: str | bytes | Callable[[BinaryIO], Any]) -> Path:
    """Replace ``path`` atomically with ``content``; create its folder if needed.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    content : str, bytes or callable
        Text (written as UTF-8), bytes, or a function that writes to a binary file
        handle (e.g. ``lambda f: torch.save(state, f)``).

    Returns
    -------
    pathlib.Path
        The file written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes the file private (0600): give it the mode open() would, so a run
        # folder on a shared filesystem is readable by whom the user's umask allows
        os.chmod(temporary, 0o666 & ~_umask())
        with os.fdopen(descriptor, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode("utf-8") if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def _umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(current)
    return current


def atomic_write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON (no NaN or infinity) atomically, with a final newline."""
    return atomic_write(path, json.dumps(value, indent=indent, allow_nan=False) + "\n")
