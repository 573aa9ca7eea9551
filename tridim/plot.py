"""Figures and tables for inspecting a predictor fit and reusing it for new budgets.

Every plotting function takes plain data or fitted objects and returns a
:class:`matplotlib.figure.Figure`; where it draws on one set of axes (or a fixed row of
them) it also accepts ``ax`` / ``axes`` to draw into an existing figure. The figures
are built without :mod:`matplotlib.pyplot`, so they need no interactive backend and
are not kept alive by pyplot; in a notebook with the inline backend (``%matplotlib
inline``) a figure returned as the last value of a cell is shown once.
:func:`save_report_plots` writes them all for a run directory as PNG files (the figures
behind ``tridim report RUN_DIR --plots``).

matplotlib is an optional dependency (``pip install tridim[notebooks]``): this module
imports without it, and only the plotting functions need it. The tables
(:func:`samples_table`, :func:`compare_models`, :func:`pareto_rows`) do not.

This module does not import torch.

Examples
--------
>>> from tridim import plot                                    # doctest: +SKIP
>>> run = plot.load_run("notebooks/run")                       # doctest: +SKIP
>>> fig = plot.plot_slices(run.predictor, run.samples)         # doctest: +SKIP
>>> plot.save_report_plots("notebooks/run")                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tridim.samples import Sample, read_samples, samples_to_xy
from tridim.space import Triple

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tridim.predictor import LowRankPolynomialRegressor

__all__ = [
    "Run",
    "load_run",
    "samples_table",
    "format_table",
    "plot_loo",
    "plot_slices",
    "plot_iso_flops",
    "plot_residuals",
    "compare_models",
    "plot_model_comparison",
    "pareto_rows",
    "plot_pareto",
    "save_report_plots",
    "DEFAULT_BUDGETS",
    "INSTALL_HINT",
]

#: What to install when matplotlib is missing.
INSTALL_HINT = "pip install tridim[notebooks]"

#: Budgets (FLOPs ratios) swept by :func:`save_report_plots` for the Pareto figure.
DEFAULT_BUDGETS: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)

_NAMES = ("d", "w", "r")
_DIMENSIONS = ("depth", "width", "resolution")
_COLOURS = {
    "base": "black",
    "depth": "tab:blue",
    "width": "tab:orange",
    "resolution": "tab:green",
    "off-axis": "tab:red",
}
_ON_AXIS_TOL = 1e-9


# ---------------------------------------------------------------------- matplotlib


def _matplotlib() -> None:
    """Raise a helpful ImportError if matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise ImportError(
            f"tridim.plot needs matplotlib for figures; install it with `{INSTALL_HINT}`"
        ) from None


def _new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs):
    """A pyplot-free figure and its axes (``squeeze`` like ``plt.subplots``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _figure_and_ax(ax: Axes | None, figsize: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    return _new_figure(figsize=figsize)


def _figure_and_axes(axes: Sequence[Axes] | None, n: int, figsize: tuple[float, float], **kwargs):
    if axes is not None:
        axes = list(np.ravel(axes))
        if len(axes) != n:
            raise ValueError(f"expected {n} axes, got {len(axes)}")
        return axes[0].figure, axes
    fig, created = _new_figure(1, n, figsize=figsize, squeeze=False, **kwargs)
    return fig, list(created[0])


# ---------------------------------------------------------------------- run directory


@dataclass
class Run:
    """What :func:`load_run` reads from a run directory written by ``tridim optimize``.

    Attributes
    ----------
    path : Path
        The run directory.
    predictor : LowRankPolynomialRegressor
        The fitted predictor (``predictor.json``).
    samples : list of Sample
        The collected samples (``samples.jsonl``, plus ``refine.jsonl`` if present);
        rebuilt from the predictor's training data if neither file exists.
    report : dict
        ``report.json``, or an empty dict if absent.
    """

    path: Path
    predictor: LowRankPolynomialRegressor
    samples: list[Sample]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> float | None:
        """The run's FLOPs budget (``report["target_flops_ratio"]``), if known."""
        value = self.report.get("target_flops_ratio")
        return None if value is None else float(value)

    @property
    def solved_triple(self) -> Triple | None:
        """The solver's continuous optimum for the run's budget, if reported."""
        return _optional_triple(self.report.get("solved_triple"))

    @property
    def realised_triple(self) -> Triple | None:
        """The triple of the model actually built, if reported."""
        return _optional_triple(self.report.get("triple"))


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read the predictor, samples and report of a run directory.

    Parameters
    ----------
    run_dir : str or path-like
        A directory holding at least ``predictor.json``.

    Returns
    -------
    Run

    Raises
    ------
    FileNotFoundError
        If ``run_dir/predictor.json`` does not exist.
    """
    from tridim.predictor import LowRankPolynomialRegressor

    path = Path(run_dir)
    predictor_path = path / "predictor.json"
    if not predictor_path.is_file():
        raise FileNotFoundError(
            f"{predictor_path} not found: is {path} a run directory written by `tridim optimize`?"
        )
    predictor = LowRankPolynomialRegressor.load(predictor_path)
    samples: list[Sample] = []
    for name in ("samples.jsonl", "refine.jsonl"):
        if (path / name).is_file():
            samples += read_samples(path / name)
    if not samples:
        samples = [
            Sample(*x, accuracy=float(y))
            for x, y in zip(predictor.X_train_.tolist(), predictor.y_train_)
        ]
    report_path = path / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return Run(path, predictor, samples, report)


def _optional_triple(value: Any) -> Triple | None:
    return None if value is None else _as_triple(value)


def _as_triple(value: Any) -> Triple:
    """A Triple from a Triple, a Solution, a {d, w, r} mapping or a (d, w, r) sequence."""
    if isinstance(value, Triple):
        return value
    if hasattr(value, "triple"):
        return _as_triple(value.triple)
    if isinstance(value, Mapping):
        return Triple.from_dict(value)
    d, w, r = (float(v) for v in value)
    return Triple(d, w, r)


# ---------------------------------------------------------------------- tables


def _as_sample(item: Sample | Mapping[str, Any]) -> Sample:
    if isinstance(item, Sample):
        return item
    if isinstance(item, Mapping):
        return Sample.from_dict(dict(item))
    raise TypeError(f"expected a Sample or a mapping, got {type(item).__name__}")


def _dimension_of(x: Sequence[float]) -> str:
    """``base``, the one dimension reduced (``depth`` / ``width`` / ``resolution``), or
    ``off-axis`` when more than one is."""
    reduced = [i for i, v in enumerate(x) if v < 1 - _ON_AXIS_TOL]
    if not reduced:
        return "base"
    return _DIMENSIONS[reduced[0]] if len(reduced) == 1 else "off-axis"


def samples_table(samples: Iterable[Sample | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The samples as table rows (plain dicts, one per sample, in file order).

    Parameters
    ----------
    samples : iterable of Sample or mappings with keys d, w, r, accuracy

    Returns
    -------
    list of dict
        Keys ``key``, ``dimension``, ``step``, ``d``, ``w``, ``r``, ``cost``
        (the analytic ``d * w**2 * r**2``), ``macs_ratio`` (measured, if recorded, else
        None) and ``accuracy``. ``dimension`` is taken from the sample's record, else
        inferred from which coordinates are below 1.
    """
    rows = []
    for item in samples:
        sample = _as_sample(item)
        x = (sample.d, sample.w, sample.r)
        extra = sample.extra
        rows.append(
            {
                "key": extra.get("key"),
                "dimension": extra.get("dimension", _dimension_of(x)),
                "step": extra.get("step"),
                "d": sample.d,
                "w": sample.w,
                "r": sample.r,
                "cost": sample.d * sample.w**2 * sample.r**2,
                "macs_ratio": extra.get("macs_ratio"),
                "accuracy": sample.accuracy,
            }
        )
    return rows


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    *,
    digits: int = 4,
) -> str:
    """Render table rows as a Markdown table (for notebooks and reports).

    Parameters
    ----------
    rows : sequence of mappings
        E.g. from :func:`samples_table`, :func:`compare_models` or :func:`pareto_rows`.
    columns : sequence of str, optional
        Columns to show, in order. Default: the keys of the first row.
    digits : int, default=4
        Decimal places for floats.

    Returns
    -------
    str
        The table; an empty string if there are no rows.
    """
    rows = list(rows)
    if not rows:
        return ""
    columns = list(columns) if columns is not None else list(rows[0])

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- fit diagnostics


def _training_dimensions(predictor: LowRankPolynomialRegressor) -> list[str]:
    return [_dimension_of(x) for x in predictor.X_train_]


def _scatter_by_dimension(ax: Axes, x: np.ndarray, y: np.ndarray, dims: list[str], **kwargs):
    for dim, colour in _COLOURS.items():
        mask = np.array([d == dim for d in dims])
        if mask.any():
            ax.scatter(x[mask], y[mask], color=colour, label=dim, zorder=3, **kwargs)


def plot_loo(
    predictor: LowRankPolynomialRegressor,
    *,
    ax: Axes | None = None,
    loo_residuals: np.ndarray | None = None,
) -> Figure:
    """Measured accuracy against the leave-one-out prediction of each sample.

    Each point is predicted by the model refitted without it (see
    :meth:`~tridim.predictor.LowRankPolynomialRegressor.loo_residuals`); hollow markers
    show the in-sample fit for comparison. Points on the diagonal are predicted exactly.

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        A fitted predictor (it keeps its training data).
    ax : matplotlib Axes, optional
        Draw here instead of on a new figure.
    loo_residuals : ndarray of shape (n_samples,), optional
        Precomputed ``predictor.loo_residuals()`` (saves the refits).

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    fig, ax = _figure_and_ax(ax, (5.2, 4.6))
    y = predictor.y_train_
    residuals = predictor.loo_residuals() if loo_residuals is None else np.asarray(loo_residuals)
    loo_pred = y - residuals
    fitted = predictor.predict(predictor.X_train_)
    dims = _training_dimensions(predictor)
    ax.scatter(fitted, y, facecolors="none", edgecolors="grey", s=46, label="in-sample fit")
    _scatter_by_dimension(ax, loo_pred, y, dims, s=30)
    lo = min(y.min(), loo_pred.min(), fitted.min())
    hi = max(y.max(), loo_pred.max(), fitted.max())
    pad = 0.05 * (hi - lo or 1e-3)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", zorder=1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    rmse = float(np.sqrt(np.mean(residuals**2)))
    ax.set_title(f"Leave-one-out predictions (LOO RMSE {rmse:.4f})")
    ax.set_xlabel("predicted accuracy (model refitted without the sample)")
    ax.set_ylabel("measured accuracy")
    ax.legend(title="sample", fontsize="small", loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def plot_residuals(
    predictor: LowRankPolynomialRegressor,
    *,
    axes: Sequence[Axes] | None = None,
    loo_residuals: np.ndarray | None = None,
) -> Figure:
    """Residuals of the fit: against the fitted value, and sample by sample.

    Left: in-sample residual (measured - fitted) against the fitted accuracy. Right:
    in-sample and leave-one-out residual of each sample, labelled by its (d, w, r).

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        A fitted predictor.
    axes : two matplotlib Axes, optional
        Draw here instead of on a new figure.
    loo_residuals : ndarray of shape (n_samples,), optional
        Precomputed ``predictor.loo_residuals()``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    fig, (left, right) = _figure_and_axes(axes, 2, (11, 4.2), width_ratios=(1, 1.6))
    X, y = predictor.X_train_, predictor.y_train_
    fitted = predictor.predict(X)
    train_res = y - fitted
    loo_res = predictor.loo_residuals() if loo_residuals is None else np.asarray(loo_residuals)
    dims = _training_dimensions(predictor)

    _scatter_by_dimension(left, fitted, train_res, dims, s=30)
    left.axhline(0, color="grey", lw=1, ls="--")
    left.set_title("In-sample residuals")
    left.set_xlabel("fitted accuracy")
    left.set_ylabel("measured - fitted")
    left.legend(title="sample", fontsize="small")
    left.grid(alpha=0.3)

    index = np.arange(len(y))
    width = 0.4
    right.bar(index - width / 2, train_res, width, color="grey", label="in-sample")
    right.bar(
        index + width / 2,
        loo_res,
        width,
        color=[_COLOURS[d] for d in dims],
        label="leave-one-out",
    )
    right.axhline(0, color="black", lw=0.8)
    from matplotlib.patches import Patch

    handles = [Patch(color="grey", label="in-sample")]
    handles += [
        Patch(color=_COLOURS[dim], label=f"leave-one-out: {dim}") for dim in _COLOURS if dim in dims
    ]
    right.legend(handles=handles, fontsize="small")
    right.set_xticks(index)
    right.set_xticklabels([_short_label(x) for x in X], rotation=60, ha="right", fontsize=8)
    right.set_title(
        f"Residual per sample (train RMSE {_rms(train_res):.4f}, LOO RMSE {_rms(loo_res):.4f})"
    )
    right.set_ylabel("measured - predicted")
    right.grid(alpha=0.3, axis="y")
    return fig


def _short_label(x: Sequence[float]) -> str:
    dim = _dimension_of(x)
    if dim == "base":
        return "base"
    if dim == "off-axis":
        return "({:.2f},{:.2f},{:.2f})".format(*x)
    axis = _DIMENSIONS.index(dim)
    return f"{_NAMES[axis]}={x[axis]:.2f}"


def _cap_accuracy_axis(ax: Axes, values: np.ndarray) -> None:
    """Keep the y axis below 1 + a margin when the data are fractions: a bootstrap band
    may extend past an accuracy of 1, which no model can reach."""
    values = np.asarray(values, dtype=float)
    if values.size and np.nanmax(values) <= 1.0:
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, 1.0 + 0.05 * (1.0 - np.nanmin(values)) + 1e-3))


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def plot_slices(
    predictor: LowRankPolynomialRegressor,
    samples: Iterable[Sample | Mapping[str, Any]] | None = None,
    *,
    axes: Sequence[Axes] | None = None,
    coverage: float = 0.9,
    n_points: int = 60,
) -> Figure:
    """One panel per dimension: the fitted surface along that axis, the others at 1.

    Each panel shows the predictor along one coordinate (from its smallest training
    value to 1) with the other two held at 1, the central ``coverage`` band of the
    predictor's bootstrap refits (uncertainty of the fitted surface), and the samples
    lying on that axis (including the base model at (1, 1, 1)). Samples off the axes
    (e.g. refinement samples) are not on any slice and are not drawn.

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        A fitted predictor.
    samples : iterable of Sample or mappings, optional
        The samples to draw. Default: the predictor's training data.
    axes : three matplotlib Axes, optional
        Draw here instead of on a new figure.
    coverage : float, default=0.9
        Width of the bootstrap band, in (0, 1).
    n_points : int, default=60
        Points per slice.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    fig, axes = _figure_and_axes(axes, 3, (13, 4.2), sharey=True)
    if samples is None:
        X, y = predictor.X_train_, predictor.y_train_
    else:
        X, y = samples_to_xy(_as_sample(s) for s in samples)
    lower = np.asarray(predictor.bounds_[0], dtype=float)
    grids = []
    for axis in range(3):
        grid = np.ones((n_points, 3))
        grid[:, axis] = np.linspace(lower[axis], 1.0, n_points)
        grids.append(grid)
    stacked = np.vstack(grids)
    mean = predictor.predict(stacked).reshape(3, n_points)
    draws = predictor.bootstrap_predictions(stacked)
    tail = (1 - coverage) / 2
    band_lo = np.quantile(draws, tail, axis=0).reshape(3, n_points)
    band_hi = np.quantile(draws, 1 - tail, axis=0).reshape(3, n_points)

    for axis, ax in enumerate(axes):
        name, dim = _NAMES[axis], _DIMENSIONS[axis]
        colour = _COLOURS[dim]
        t = grids[axis][:, axis]
        ax.fill_between(
            t,
            band_lo[axis],
            band_hi[axis],
            color=colour,
            alpha=0.2,
            label=f"{coverage:.0%} bootstrap band",
        )
        ax.plot(t, mean[axis], color=colour, lw=2, label="fitted surface")
        others = [j for j in range(3) if j != axis]
        on_axis = np.all(np.abs(X[:, others] - 1) <= _ON_AXIS_TOL, axis=1)
        ax.scatter(
            X[on_axis, axis],
            y[on_axis],
            color="black",
            s=28,
            zorder=3,
            label="samples",
        )
        other_names = " = ".join(_NAMES[j] for j in others)
        ax.set_title(f"{dim} slice ({other_names} = 1)")
        ax.set_xlabel(f"{name} ({dim} kept)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize="small", loc="lower right")
    _cap_accuracy_axis(axes[0], np.concatenate([y, mean.ravel()]))
    return fig


# ---------------------------------------------------------------------- budgets


def plot_iso_flops(
    predictor: LowRankPolynomialRegressor,
    target: float,
    chosen: Any = None,
    *,
    realised: Any = None,
    ax: Axes | None = None,
    n_grid: int = 161,
) -> Figure:
    """Predicted accuracy on the constraint surface ``d * w**2 * r**2 = target``.

    The surface is drawn as a heat map over (w, r), each point's depth implied by the
    budget (``d = target / (w**2 r**2)``; dashed contours). Where the implied depth
    falls outside the predictor's box (below its smallest sampled depth or above 1) the
    budget cannot be met and the map is left blank.

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        A fitted predictor (its ``bounds_`` set the box).
    target : float
        The FLOPs budget ``T`` in (0, 1].
    chosen : Triple, Solution, mapping or (d, w, r), optional
        The triple to mark (star). Default: :func:`tridim.solver.solve` at ``target``.
    realised : Triple, mapping or (d, w, r), optional
        The triple of the model actually built (rounded to whole blocks and pixels),
        marked with a cross; its analytic cost is usually slightly off the surface.
    ax : matplotlib Axes, optional
        Draw here instead of on a new figure.
    n_grid : int, default=161
        Grid points per axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    from tridim.solver import solve

    target = float(target)
    if chosen is None:
        chosen = solve(predictor, target)
    chosen = _as_triple(chosen)
    fig, ax = _figure_and_ax(ax, (6.4, 5.2))
    lower = np.asarray(predictor.bounds_[0], dtype=float)
    upper = np.asarray(predictor.bounds_[1], dtype=float)
    w = np.linspace(lower[1], upper[1], n_grid)
    r = np.linspace(lower[2], upper[2], n_grid)
    W, R = np.meshgrid(w, r)
    D = target / (W**2 * R**2)
    feasible = (D >= lower[0] - 1e-12) & (D <= upper[0] + 1e-12)
    Z = np.full(D.shape, np.nan)
    if feasible.any():
        points = np.column_stack([D[feasible], W[feasible], R[feasible]])
        Z[feasible] = predictor.predict(points)
    masked = np.ma.masked_invalid(Z)
    ax.set_facecolor("#eeeeee")
    mesh = ax.pcolormesh(W, R, masked, shading="auto", cmap="viridis")
    colourbar = fig.colorbar(mesh, ax=ax)
    colourbar.set_label("predicted accuracy")
    d_levels = [v for v in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0) if lower[0] <= v <= 1]
    if feasible.any() and d_levels:
        contours = ax.contour(
            W,
            R,
            np.where(feasible, D, np.nan),
            levels=d_levels,
            colors="white",
            linewidths=0.8,
            linestyles="--",
        )
        ax.clabel(contours, fmt=lambda v: f"d={v:.1f}", fontsize=8)
    ax.plot(
        chosen.w,
        chosen.r,
        marker="*",
        color="red",
        markersize=16,
        markeredgecolor="white",
        ls="none",
        label=f"chosen {chosen}",
    )
    if realised is not None:
        realised = _as_triple(realised)
        ax.plot(
            realised.w,
            realised.r,
            marker="X",
            color="white",
            markersize=10,
            markeredgecolor="black",
            ls="none",
            label=f"realised {realised}",
        )
    ax.set_xlim(w[0], w[-1])
    ax.set_ylim(r[0], r[-1])
    ax.set_xlabel("w (width kept)")
    ax.set_ylabel("r (resolution kept)")
    ax.set_title(
        f"Predicted accuracy at FLOPs ratio {target:g}\n"
        "(d implied by the budget; grey: implied d outside the sampled range)"
    )
    ax.legend(fontsize="small", loc="lower left", framealpha=0.9)
    return fig


def pareto_rows(predictor: Any, targets: Iterable[float]) -> list[dict[str, Any]]:
    """Solve for each budget and return one table row per budget.

    Budgets that cannot be met inside the predictor's box (below its cheapest sampled
    corner) are kept as rows with the solver's message in ``error`` instead of raising.

    Parameters
    ----------
    predictor : object with ``predict(X)`` and ``bounds_``
        Typically a fitted :class:`~tridim.predictor.LowRankPolynomialRegressor`.
    targets : iterable of float
        FLOPs budgets in (0, 1].

    Returns
    -------
    list of dict
        Keys ``target``, ``d``, ``w``, ``r``, ``predicted_accuracy``, ``multiplier``
        and ``error`` (None when solved; the other values are None when not).
    """
    from tridim.solver import solve

    rows = []
    for target in targets:
        row: dict[str, Any] = {"target": float(target)}
        try:
            solution = solve(predictor, float(target))
        except ValueError as error:
            row.update(d=None, w=None, r=None, predicted_accuracy=None, multiplier=None)
            row["error"] = str(error)
        else:
            row.update(solution.triple.to_dict())
            row["predicted_accuracy"] = solution.predicted_accuracy
            row["multiplier"] = solution.multiplier
            row["error"] = None
        rows.append(row)
    return rows


def plot_pareto(
    predictor: LowRankPolynomialRegressor,
    targets: Iterable[float] = DEFAULT_BUDGETS,
    *,
    mark: float | None = None,
    mark_label: str = "budget",
    rows: Sequence[Mapping[str, Any]] | None = None,
    axes: Sequence[Axes] | None = None,
    coverage: float = 0.9,
) -> Figure:
    """The predicted Pareto front over budgets, and how the optimal d, w, r move.

    Left: the best predicted accuracy at each FLOPs (MACs) ratio, with the bootstrap
    band of the predictor at each optimum. Right: the optimal d, w and r per budget.
    Budgets the predictor's box cannot reach are skipped and listed under the plot.

    Parameters
    ----------
    predictor : LowRankPolynomialRegressor
        A fitted predictor.
    targets : iterable of float, default=DEFAULT_BUDGETS
        Budgets to solve for.
    mark : float, optional
        A budget to highlight (e.g. the run's target) with a vertical line.
    mark_label : str, default="budget"
        Legend text of that line (followed by its value).
    rows : sequence of dict, optional
        Precomputed :func:`pareto_rows` (then ``targets`` is ignored).
    axes : two matplotlib Axes, optional
        Draw here instead of on a new figure.
    coverage : float, default=0.9
        Width of the bootstrap band, in (0, 1).

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    rows = list(rows) if rows is not None else pareto_rows(predictor, targets)
    solved = sorted((row for row in rows if row.get("error") is None), key=lambda r: r["target"])
    skipped = sorted(row["target"] for row in rows if row.get("error") is not None)
    fig, (left, right) = _figure_and_axes(axes, 2, (12, 4.4))
    if solved:
        x = np.array([row["target"] for row in solved])
        triples = np.array([[row["d"], row["w"], row["r"]] for row in solved])
        accuracy = np.array([row["predicted_accuracy"] for row in solved])
        draws = predictor.bootstrap_predictions(triples)
        tail = (1 - coverage) / 2
        left.fill_between(
            x,
            np.quantile(draws, tail, axis=0),
            np.quantile(draws, 1 - tail, axis=0),
            color="tab:purple",
            alpha=0.2,
            label=f"{coverage:.0%} bootstrap band",
        )
        left.plot(x, accuracy, "o-", color="tab:purple", label="best predicted accuracy")
        for axis, name in enumerate(_NAMES):
            right.plot(
                x,
                triples[:, axis],
                "o-",
                color=_COLOURS[_DIMENSIONS[axis]],
                label=f"{name} ({_DIMENSIONS[axis]})",
            )
        _cap_accuracy_axis(left, accuracy)
    if mark is not None:
        for ax in (left, right):
            ax.axvline(mark, color="grey", ls=":", lw=1.2, label=f"{mark_label} {mark:g}")
    left.set_title("Predicted Pareto front")
    left.set_xlabel("FLOPs (MACs) ratio of the budget")
    left.set_ylabel("predicted accuracy")
    right.set_title("Optimal triple per budget")
    right.set_xlabel("FLOPs (MACs) ratio of the budget")
    right.set_ylabel("fraction kept")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    if skipped:
        fig.suptitle(
            "not reachable inside the sampled box (skipped): "
            + ", ".join(f"{t:g}" for t in skipped),
            fontsize="small",
            color="dimgrey",
        )
    return fig


# ---------------------------------------------------------------------- model comparison


def compare_models(
    samples: Iterable[Sample | Mapping[str, Any]],
    *,
    models: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Leave-one-out RMSE of the rank-1 MAP against other regressors on the same samples.

    The models are those of :func:`tridim.bench.predictor.baseline_models`: the rank-1
    MAP, a rank-2 MAP with a small ridge penalty, a full cubic polynomial with RidgeCV
    and a Gaussian process. A model that cannot be fitted on this many samples gets its
    error message instead of numbers.

    Parameters
    ----------
    samples : iterable of Sample or mappings with keys d, w, r, accuracy
    models : mapping of label to unfitted scikit-learn regressor, optional
        The models to compare. Default: ``baseline_models(seed)``.
    seed : int, default=0
        Seeds the default models.

    Returns
    -------
    list of dict
        One row per model: ``model``, ``n_samples``, ``loo_rmse``, ``train_rmse`` and
        ``error`` (None unless the model failed).
    """
    from sklearn.base import clone
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import LeaveOneOut, cross_val_predict

    from tridim.bench.predictor import baseline_models

    X, y = samples_to_xy(_as_sample(s) for s in samples)
    rows = []
    with warnings.catch_warnings():
        # A Gaussian process's hyperparameters often sit at a bound on a dozen points.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for label, model in (baseline_models(seed) if models is None else models).items():
            row: dict[str, Any] = {"model": label, "n_samples": len(y)}
            try:
                loo = cross_val_predict(model, X, y, cv=LeaveOneOut())
                fitted = clone(model).fit(X, y).predict(X)
            except ValueError as error:
                row.update(loo_rmse=None, train_rmse=None, error=str(error))
            else:
                row.update(loo_rmse=_rms(y - loo), train_rmse=_rms(y - fitted), error=None)
            rows.append(row)
    return rows


def plot_model_comparison(rows: Sequence[Mapping[str, Any]], *, ax: Axes | None = None) -> Figure:
    """Bar chart of the leave-one-out RMSE in :func:`compare_models` rows.

    Parameters
    ----------
    rows : sequence of dict
        From :func:`compare_models`; failed models are shown as "failed".
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    _matplotlib()
    fig, ax = _figure_and_ax(ax, (7, 3.6))
    labels = [row["model"] for row in rows]
    values = [row.get("loo_rmse") for row in rows]
    heights = [0.0 if v is None else v for v in values]
    index = np.arange(len(rows))
    colours = ["tab:purple" if "MAP rank-1" in label else "tab:grey" for label in labels]
    bars = ax.barh(index, heights, color=colours)
    ax.bar_label(bars, labels=["failed" if v is None else f"{v:.4f}" for v in values], padding=3)
    ax.set_yticks(index)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlabel("leave-one-out RMSE (accuracy)")
    ax.set_title("Accuracy predictors compared (lower is better)")
    ax.set_xlim(0, 1.25 * max(heights + [1e-6]))
    ax.grid(alpha=0.3, axis="x")
    return fig


# ---------------------------------------------------------------------- report


def save_report_plots(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    budgets: Iterable[float] = DEFAULT_BUDGETS,
    dpi: int = 110,
) -> list[Path]:
    """Write every figure of a run directory as a PNG file.

    Files: ``loo.png``, ``slices.png``, ``residuals.png``, ``models.png``,
    ``pareto.png`` and, if ``report.json`` gives the run's target, ``iso_flops.png``.

    Parameters
    ----------
    run_dir : str or path-like
        A run directory written by ``tridim optimize`` (``predictor.json`` required;
        ``samples.jsonl`` and ``report.json`` used when present).
    out_dir : str or path-like, optional
        Where to write. Default: ``run_dir/plots`` (created if needed).
    budgets : iterable of float, default=DEFAULT_BUDGETS
        Budgets of the Pareto figure.
    dpi : int, default=110
        Resolution of the PNG files.

    Returns
    -------
    list of Path
        The files written, in the order above.

    Raises
    ------
    FileNotFoundError
        If ``run_dir/predictor.json`` does not exist.
    ImportError
        If matplotlib is not installed.
    """
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    loo = run.predictor.loo_residuals()
    figures: list[tuple[str, Any]] = [
        ("loo.png", lambda: plot_loo(run.predictor, loo_residuals=loo)),
        ("slices.png", lambda: plot_slices(run.predictor, run.samples)),
        ("residuals.png", lambda: plot_residuals(run.predictor, loo_residuals=loo)),
        ("models.png", lambda: plot_model_comparison(compare_models(run.samples))),
        (
            "pareto.png",
            lambda: plot_pareto(run.predictor, budgets, mark=run.target, mark_label="run target"),
        ),
    ]
    if run.target is not None:
        figures.append(
            (
                "iso_flops.png",
                lambda: plot_iso_flops(
                    run.predictor,
                    run.target,
                    run.solved_triple,
                    realised=run.realised_triple,
                ),
            )
        )
    written = []
    for name, make in figures:
        fig = make()
        FigureCanvasAgg(fig)
        path = out / name
        fig.savefig(path, dpi=dpi)
        written.append(path)
    return written
