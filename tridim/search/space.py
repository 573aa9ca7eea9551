"""The search space: the (depth, width, resolution) triple and its analytic cost.

This module is pure Python (no torch) so that the numbers side of tridim — the
predictor and the solver — can run on a machine without the model. Measured
costs of real models live in :mod:`tridim.cost.macs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

__all__ = ["Triple", "Bounds", "as_triple", "flops_cost", "check_ratio", "check_input_size"]


def check_ratio(value: float, name: str) -> float:
    """Validate that ``value`` is a real number in (0, 1] and return it as float.

    Parameters
    ----------
    value : float
        The number to check.
    name : str
        The argument's name, used in the error message.

    Raises
    ------
    ValueError
        If ``value`` is not a finite number in (0, 1].
    """
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not math.isfinite(number) or not 0.0 < number <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return number


def check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    """Validate an image size ``(C, H, W)`` and return it as a tuple of ints."""
    try:
        size = tuple(int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ValueError(f"input_size must be (C, H, W), got {input_size!r}") from None
    if len(size) != 3 or min(size) < 1:
        raise ValueError(
            f"input_size must be three positive integers (C, H, W), got {input_size!r}"
        )
    return size  # type: ignore[return-value]


def flops_cost(d, w, r):
    """Analytic relative cost ``d * w**2 * r**2`` of a triple (original model = 1).

    Depth scales the number of layers linearly, width scales both the input and
    output channels of every convolution (hence squared), and resolution scales
    both spatial sides of every feature map (hence squared). Works on numbers and,
    elementwise, on numpy arrays.
    """
    return d * w**2 * r**2


@dataclass(frozen=True)
class Triple:
    """A point (d, w, r) of the search space, each coordinate in (0, 1].

    Parameters
    ----------
    d : float
        Fraction of the model's residual blocks kept.
    w : float
        Fraction of the prunable channels kept.
    r : float
        Fraction of the input side length kept.

    Examples
    --------
    >>> Triple(0.5, 1.0, 1.0).cost
    0.5
    """

    d: float
    w: float
    r: float

    def __post_init__(self) -> None:
        for name in ("d", "w", "r"):
            object.__setattr__(self, name, check_ratio(getattr(self, name), name))

    @property
    def cost(self) -> float:
        """The analytic FLOPs ratio ``d * w**2 * r**2``."""
        return float(flops_cost(self.d, self.w, self.r))

    def as_tuple(self) -> tuple[float, float, float]:
        """Return ``(d, w, r)``."""
        return (self.d, self.w, self.r)

    def to_dict(self) -> dict[str, float]:
        """Return ``{"d": ..., "w": ..., "r": ...}`` (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Triple:
        """Build a triple from a mapping with keys ``d``, ``w`` and ``r``."""
        missing = [k for k in ("d", "w", "r") if k not in data]
        if missing:
            raise ValueError(f"a triple needs keys d, w, r; missing {missing}")
        return cls(data["d"], data["w"], data["r"])

    def __iter__(self):
        return iter(self.as_tuple())

    def __str__(self) -> str:
        return f"(d={self.d:.3f}, w={self.w:.3f}, r={self.r:.3f})"


def as_triple(value) -> Triple:
    """A :class:`Triple` from a Triple, an object with a ``.triple`` (a Solution or a
    Plan's ``realised``), a ``{d, w, r}`` mapping or a ``(d, w, r)`` sequence.

    Raises
    ------
    ValueError
        If ``value`` is none of these, or a coordinate is not in (0, 1].
    """
    if isinstance(value, Triple):
        return value
    if hasattr(value, "triple"):
        return as_triple(value.triple)
    if isinstance(value, Mapping):
        return Triple.from_dict(value)
    try:
        d, w, r = value
    except (TypeError, ValueError):
        raise ValueError(f"expected a Triple, (d, w, r) or a dict, got {value!r}") from None
    return Triple(d, w, r)


@dataclass(frozen=True)
class Bounds:
    """Box bounds on (d, w, r): ``lower[i] <= x[i] <= upper[i]``, all within (0, 1]."""

    lower: tuple[float, float, float] = (0.05, 0.05, 0.05)
    upper: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        lower = tuple(check_ratio(v, "lower bound") for v in self.lower)
        upper = tuple(check_ratio(v, "upper bound") for v in self.upper)
        if len(lower) != 3 or len(upper) != 3:
            raise ValueError("bounds need exactly three values each, for d, w and r")
        for name, lo, hi in zip("dwr", lower, upper):
            if lo > hi:
                raise ValueError(f"lower bound of {name} ({lo}) exceeds its upper bound ({hi})")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)

    @classmethod
    def from_points(cls, points: Iterable[Iterable[float]]) -> Bounds:
        """The smallest box containing the given (d, w, r) points."""
        rows = [tuple(float(v) for v in p) for p in points]
        if not rows:
            raise ValueError("cannot derive bounds from zero points")
        lower = tuple(min(row[i] for row in rows) for i in range(3))
        upper = tuple(max(row[i] for row in rows) for i in range(3))
        return cls(lower, upper)
