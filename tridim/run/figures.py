"""The drawing kit behind :mod:`tridim.run.plot`: pyplot-free figures and shared styling.

Making a figure without :mod:`matplotlib.pyplot` (or drawing into given axes), the
helpful ImportError when matplotlib is missing, one colour per dimension, the short
label of a sample, and the bootstrap band and leave-one-out residuals of a predictor
that several figures draw.

matplotlib is imported only inside the functions that draw; this module imports
without it, and does not import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tridim.run.report import dimension_of

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tridim.search.predictor import LowRankPolynomialRegressor

__all__ = [
    "INSTALL_HINT",
    "NAMES",
    "DIMENSIONS",
    "COLOURS",
    "require_matplotlib",
    "new_figure",
    "figure_and_ax",
    "figure_and_axes",
    "training_dimensions",
    "loo_or_compute",
    "scatter_by_dimension",
    "short_label",
    "cap_accuracy_axis",
    "bootstrap_band",
]

#: What to install when matplotlib is missing.
INSTALL_HINT = "pip install tridim[notebooks]"

#: The coordinates' letters and the dimensions they keep, in (d, w, r) order.
NAMES = ("d", "w", "r")
DIMENSIONS = ("depth", "width", "resolution")
#: The colour of each kind of sample (:func:`tridim.run.report.dimension_of`).
COLOURS = {
    "base": "black",
    "depth": "tab:blue",
    "width": "tab:orange",
    "resolution": "tab:green",
    "off-axis": "tab:red",
}


def require_matplotlib() -> None:
    """Raise a helpful ImportError if matplotlib is not installed.

    Raises
    ------
    ImportError
        Saying what to install (:data:`INSTALL_HINT`).
    """
    try:
        import matplotlib  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ImportError(
            f"tridim.plot needs matplotlib for figures; install it with `{INSTALL_HINT}`"
        ) from None


def new_figure(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any
) -> tuple[Figure, Any]:
    """A pyplot-free figure and its axes (``squeeze`` like ``plt.subplots``).

    Parameters
    ----------
    nrows, ncols : int, default=1
    figsize : (float, float)
        In inches.
    **kwargs
        Passed to :meth:`matplotlib.figure.Figure.subplots`.

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : Axes or array of Axes
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kwargs)


def figure_and_ax(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """The given axes and their figure, or a new figure with one set of axes.

    Parameters
    ----------
    ax : matplotlib Axes or None
    figsize : (float, float)
        Size of a new figure, in inches.

    Returns
    -------
    fig : matplotlib.figure.Figure
    ax : matplotlib Axes
    """
    if ax is not None:
        return ax.figure, ax
    return new_figure(figsize=figsize)


def figure_and_axes(
    axes: Sequence[Axes] | None, n: int, figsize: tuple[float, float], **kwargs: Any
) -> tuple[Figure, list[Axes]]:
    """The given ``n`` axes and their figure, or a new figure with a row of ``n``.

    Parameters
    ----------
    axes : sequence of matplotlib Axes or None
    n : int
        How many axes the figure draws on.
    figsize : (float, float)
        Size of a new figure, in inches.
    **kwargs
        Passed to :func:`new_figure` for a new figure.

    Returns
    -------
    fig : matplotlib.figure.Figure
    axes : list of matplotlib Axes

    Raises
    ------
    ValueError
        If ``axes`` are given but not ``n`` of them.
    """
    if axes is not None:
        axes = list(np.ravel(axes))
        if len(axes) != n:
            raise ValueError(f"expected {n} axes, got {len(axes)}")
        return axes[0].figure, axes
    fig, created = new_figure(1, n, figsize=figsize, squeeze=False, **kwargs)
    return fig, list(created[0])


def training_dimensions(predictor: LowRankPolynomialRegressor) -> list[str]:
    """The kind of each training sample of ``predictor`` (``"depth"``, ``"base"``, ...).

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        Fitted.

    Returns
    -------
    list of str
    """
    return [dimension_of(x) for x in predictor.X_train_]


def loo_or_compute(
    predictor: LowRankPolynomialRegressor, loo_residuals: np.ndarray | None
) -> np.ndarray:
    """The given leave-one-out residuals, else the predictor's own.

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        Fitted.
    loo_residuals : ndarray of shape (n_samples,) or None

    Returns
    -------
    ndarray of shape (n_samples,)
    """
    return predictor.loo_residuals() if loo_residuals is None else np.asarray(loo_residuals)


def scatter_by_dimension(
    ax: Axes, x: np.ndarray, y: np.ndarray, dims: list[str], **kwargs: Any
) -> None:
    """Scatter points coloured and labelled by the kind of sample each is.

    Parameters
    ----------
    ax : matplotlib Axes
    x, y : ndarray of shape (n,)
    dims : list of str
        The kind of each point (keys of :data:`COLOURS`).
    **kwargs
        Passed to :meth:`~matplotlib.axes.Axes.scatter`.
    """
    for dim, colour in COLOURS.items():
        mask = np.array([d == dim for d in dims])
        if mask.any():
            ax.scatter(x[mask], y[mask], color=colour, label=dim, zorder=3, **kwargs)


def short_label(x: Sequence[float]) -> str:
    """A sample's tick label: ``"base"``, ``"w=0.50"`` on an axis, else its (d, w, r).

    Parameters
    ----------
    x : sequence of three floats

    Returns
    -------
    str
    """
    dim = dimension_of(x)
    if dim == "base":
        return "base"
    if dim == "off-axis":
        return "({:.2f},{:.2f},{:.2f})".format(*x)
    axis = DIMENSIONS.index(dim)
    return f"{NAMES[axis]}={x[axis]:.2f}"


def cap_accuracy_axis(ax: Axes, values: np.ndarray) -> None:
    """Keep the y axis below 1 plus a margin when the data are fractions.

    A bootstrap band may extend past an accuracy of 1, which no model can reach.

    Parameters
    ----------
    ax : matplotlib Axes
    values : array-like
        The values drawn.
    """
    values = np.asarray(values, dtype=float)
    if values.size and np.nanmax(values) <= 1.0:
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, 1.0 + 0.05 * (1.0 - np.nanmin(values)) + 1e-3))


def bootstrap_band(
    predictor: LowRankPolynomialRegressor, X: np.ndarray, coverage: float
) -> tuple[np.ndarray, np.ndarray]:
    """The central ``coverage`` quantiles of the predictor's bootstrap refits at ``X``.

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        Fitted.
    X : ndarray of shape (n_points, n_features)
    coverage : float
        In (0, 1).

    Returns
    -------
    lower, upper : ndarray of shape (n_points,)
    """
    draws = predictor.bootstrap_predictions(X)
    tail = (1 - coverage) / 2
    return np.quantile(draws, tail, axis=0), np.quantile(draws, 1 - tail, axis=0)
