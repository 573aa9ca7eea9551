"""The samples file: an append-only JSON-lines journal of (d, w, r, accuracy) records.

One JSON object per line, with at least the keys ``d``, ``w``, ``r`` and
``accuracy``; any other keys (epochs, seed, measured MACs, ...) are kept verbatim in
:attr:`Sample.extra`. The collection engine appends to this file as it goes, so a
crash may leave the last line half-written; reading skips such a line with a
warning, and the next append starts on a fresh line.

This module does not import torch.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tridim.search.space import check_ratio

__all__ = ["Sample", "read_samples", "append_sample", "samples_to_xy", "TORN_MARKER"]

_CORE_KEYS = ("d", "w", "r", "accuracy")

#: Appended to an incomplete (torn) last line before a new record is written after it,
#: so that :func:`read_samples` can recognise and skip it anywhere in the file.
#: The marker can never complete a JSON document: ``#`` is not valid JSON outside a
#: string, and a raw tab is not valid inside one.
TORN_MARKER = "\t# tridim: torn write, skipped on read"


@dataclass(frozen=True)
class Sample:
    """One measured point: the kept fractions (d, w, r) and the accuracy reached.

    Parameters
    ----------
    d, w, r : float
        Fractions of depth, width and resolution kept, each in (0, 1].
    accuracy : float
        The accuracy measured for the compressed model (any finite number; tridim uses
        fractions in [0, 1]).
    extra : dict, optional
        Any further JSON-serialisable fields; kept when the sample is written back.

    Examples
    --------
    >>> Sample(0.5, 1.0, 1.0, 0.91, {"epochs": 3}).to_dict()
    {'d': 0.5, 'w': 1.0, 'r': 1.0, 'accuracy': 0.91, 'epochs': 3}
    """

    d: float
    w: float
    r: float
    accuracy: float
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("d", "w", "r"):
            object.__setattr__(self, name, check_ratio(getattr(self, name), name))
        object.__setattr__(self, "accuracy", _finite_float(self.accuracy, "accuracy"))
        if not isinstance(self.extra, dict):
            raise ValueError(f"extra must be a dict, got {type(self.extra).__name__}")
        clashing = sorted(set(self.extra) & set(_CORE_KEYS))
        if clashing:
            raise ValueError(f"extra must not repeat the core keys {clashing}")
        object.__setattr__(self, "extra", dict(self.extra))

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready record: the core keys first, then the extra keys."""
        return {"d": self.d, "w": self.w, "r": self.r, "accuracy": self.accuracy, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        """Build a sample from a record; keys other than d, w, r, accuracy go to ``extra``.

        Raises
        ------
        ValueError
            If ``data`` is not a mapping, lacks a core key, or holds an invalid value.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a sample must be a JSON object, got {type(data).__name__}")
        missing = [key for key in _CORE_KEYS if key not in data]
        if missing:
            raise ValueError(f"a sample needs the keys d, w, r, accuracy; missing {missing}")
        extra = {key: value for key, value in data.items() if key not in _CORE_KEYS}
        return cls(data["d"], data["w"], data["r"], data["accuracy"], extra)


def _finite_float(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _parse_line(text: str) -> Sample:
    return Sample.from_dict(json.loads(text, parse_constant=_reject_constant))


def read_samples(path: str | os.PathLike) -> list[Sample]:
    """Read every sample of a JSON-lines samples file.

    Blank lines are ignored. A last line that cannot be read (a write torn by a crash)
    and any line ending in :data:`TORN_MARKER` are skipped with a warning.

    Parameters
    ----------
    path : str or path-like
        The samples file.

    Returns
    -------
    list of Sample
        The samples in file order.

    Raises
    ------
    ValueError
        If a line other than the last is not a valid sample; the message names the line.
    """
    try:
        with open(path, encoding="utf-8", errors="strict") as handle:
            lines = handle.read().split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a samples file (not UTF-8 text: {error})") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    samples = []
    for position, (number, line) in enumerate(numbered):
        if line.endswith(TORN_MARKER):
            warnings.warn(f"{path}: line {number} is a torn write; skipped", stacklevel=2)
            continue
        try:
            samples.append(_parse_line(line))
        except (ValueError, RecursionError) as error:
            if position == len(numbered) - 1:
                warnings.warn(
                    f"{path}: last line {number} is incomplete or corrupted ({error}); "
                    "skipped (a torn write?)",
                    stacklevel=2,
                )
                continue
            raise ValueError(f"{path}: line {number} is not a valid sample: {error}") from None
    return samples


def _tail_after_last_newline(handle) -> bytes:
    """Return the bytes after the file's last newline (empty if it ends with one)."""
    end = handle.seek(0, os.SEEK_END)
    tail = b""
    position = end
    while position > 0:
        step = min(65536, position)
        position -= step
        handle.seek(position)
        tail = handle.read(step) + tail
        cut = tail.rfind(b"\n")
        if cut >= 0:
            return tail[cut + 1 :]
    return tail


def _repair_prefix(path: Path) -> str:
    """What to write before a new record so that it starts on a line of its own."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        tail = _tail_after_last_newline(handle)
    if not tail.strip():
        return "" if not tail else "\n"
    try:
        _parse_line(tail.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        warnings.warn(
            f"{path}: ends with an incomplete line (a torn write?); it is marked and will be "
            "skipped on read",
            stacklevel=3,
        )
        return TORN_MARKER + "\n"
    return "\n"


def append_sample(path: str | os.PathLike, sample: Sample) -> None:
    """Append one sample to a samples file as a single whole line, durably.

    The line is written with one ``write`` call, then flushed and ``fsync``-ed, so a
    crash leaves either the complete record or a torn last line that
    :func:`read_samples` skips. If the file does not end with a newline (a previous
    write was torn), the new record starts on a fresh line and the torn line is
    marked with :data:`TORN_MARKER`.

    Parameters
    ----------
    path : str or path-like
        The samples file; created if absent.
    sample : Sample
        The record to append.

    Raises
    ------
    ValueError
        If the sample's extra fields are not JSON-serialisable.
    """
    path = Path(path)
    try:
        line = json.dumps(sample.to_dict(), allow_nan=False, separators=(", ", ": "))
    except (TypeError, ValueError) as error:
        raise ValueError(f"sample is not JSON-serialisable: {error}") from None
    created = not path.exists()
    payload = (_repair_prefix(path) + line + "\n").encode("utf-8")
    with open(path, "ab") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    if created:
        _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable (POSIX only)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def samples_to_xy(samples: Iterable[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """Stack samples into a design matrix and a target vector.

    Parameters
    ----------
    samples : iterable of Sample

    Returns
    -------
    X : ndarray of shape (n_samples, 3)
        Columns d, w, r.
    y : ndarray of shape (n_samples,)
        Accuracies.
    """
    rows = list(samples)
    X = np.array([[s.d, s.w, s.r] for s in rows], dtype=float).reshape(len(rows), 3)
    y = np.array([s.accuracy for s in rows], dtype=float)
    return X, y
