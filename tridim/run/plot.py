"""Figures for inspecting a predictor fit and reusing it for new budgets.

Every plotting function takes data (a fitted predictor, samples, table rows) and returns
a :class:`matplotlib.figure.Figure`; where it draws on one set of axes (or a fixed row
of them) it also accepts ``ax`` / ``axes`` to draw into an existing figure. The figures
are built without :mod:`matplotlib.pyplot`, so they need no interactive backend and
are not kept alive by pyplot; in a notebook with the inline backend (``%matplotlib
inline``) a figure returned as the last value of a cell is shown once.
:func:`save_report_plots` writes them all for a run folder as PNG files (the figures
behind ``tridim report RUN_DIR --plots``).

The tables live in :mod:`tridim.run.report`, reading a run folder in :mod:`tridim.run.store`;
the comparison of regressors drawn by :func:`plot_model_comparison` is
:func:`tridim.bench.predictor.compare_models`.

The figures share their scaffolding and styling, in :mod:`tridim.run.figures`.

matplotlib is an optional dependency (``pip install tridim[notebooks]``): this module
imports without it, and only the plotting functions need it. It does not import torch.

Examples
--------
>>> from tridim import plot                                    # doctest: +SKIP
>>> from tridim.run.store import load_run                          # doctest: +SKIP
>>> run = load_run("notebooks/run")                            # doctest: +SKIP
>>> fig = plot.plot_slices(run.predictor, run.samples)         # doctest: +SKIP
>>> plot.save_report_plots("notebooks/run")                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tridim.run.figures import (
    COLOURS,
    DIMENSIONS,
    INSTALL_HINT,
    NAMES,
    bootstrap_band,
    cap_accuracy_axis,
    figure_and_ax,
    figure_and_axes,
    loo_or_compute,
    require_matplotlib,
    scatter_by_dimension,
    short_label,
    training_dimensions,
)
from tridim.run.report import ON_AXIS_TOL, as_sample, pareto_rows
from tridim.search.lowrank import rms
from tridim.search.samples import Sample, samples_to_xy
from tridim.search.space import Triple, as_triple

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tridim.run.store import Run
    from tridim.search.predictor import LowRankPolynomialRegressor

__all__ = [
    "plot_loo",
    "plot_slices",
    "plot_iso_flops",
    "plot_residuals",
    "plot_model_comparison",
    "plot_pareto",
    "save_report_plots",
    "DEFAULT_BUDGETS",
    "INSTALL_HINT",
]


#: Budgets (FLOPs ratios) swept by :func:`save_report_plots` for the Pareto figure.
DEFAULT_BUDGETS: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)

#: Depths labelled by the dashed contours of :func:`plot_iso_flops`.
_DEPTH_LEVELS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# ---------------------------------------------------------------------- fit diagnostics


def plot_loo(
    predictor: LowRankPolynomialRegressor,
    *,
    ax: Axes | None = None,
    loo_residuals: np.ndarray | None = None,
) -> Figure:
    """Measured accuracy against the leave-one-out prediction of each sample.

    Each point is predicted by the model refitted without it (see
    :meth:`~tridim.search.predictor.LowRankPolynomialRegressor.loo_residuals`); hollow markers
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
    require_matplotlib()
    fig, ax = figure_and_ax(ax, (5.2, 4.6))
    y = predictor.y_train_
    residuals = loo_or_compute(predictor, loo_residuals)
    loo_pred = y - residuals
    fitted = predictor.predict(predictor.X_train_)
    dims = training_dimensions(predictor)
    ax.scatter(fitted, y, facecolors="none", edgecolors="grey", s=46, label="in-sample fit")
    scatter_by_dimension(ax, loo_pred, y, dims, s=30)
    lo = min(y.min(), loo_pred.min(), fitted.min())
    hi = max(y.max(), loo_pred.max(), fitted.max())
    pad = 0.05 * (hi - lo or 1e-3)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", zorder=1)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal", adjustable="box")
    rmse = rms(residuals)
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
    require_matplotlib()
    fig, (left, right) = figure_and_axes(axes, 2, (11, 4.2), width_ratios=(1, 1.6))
    X, y = predictor.X_train_, predictor.y_train_
    fitted = predictor.predict(X)
    train_res = y - fitted
    loo_res = loo_or_compute(predictor, loo_residuals)
    dims = training_dimensions(predictor)
    _draw_in_sample_residuals(left, fitted, train_res, dims)
    _draw_residual_bars(right, X, train_res, loo_res, dims)
    return fig


def _draw_in_sample_residuals(
    ax: Axes, fitted: np.ndarray, train_res: np.ndarray, dims: list[str]
) -> None:
    scatter_by_dimension(ax, fitted, train_res, dims, s=30)
    ax.axhline(0, color="grey", lw=1, ls="--")
    ax.set_title("In-sample residuals")
    ax.set_xlabel("fitted accuracy")
    ax.set_ylabel("measured - fitted")
    ax.legend(title="sample", fontsize="small")
    ax.grid(alpha=0.3)


def _draw_residual_bars(
    ax: Axes, X: np.ndarray, train_res: np.ndarray, loo_res: np.ndarray, dims: list[str]
) -> None:
    """In-sample (grey) and leave-one-out (by dimension) residual bars, one pair per sample."""
    from matplotlib.patches import Patch

    index = np.arange(len(train_res))
    width = 0.4
    ax.bar(index - width / 2, train_res, width, color="grey", label="in-sample")
    ax.bar(
        index + width / 2,
        loo_res,
        width,
        color=[COLOURS[d] for d in dims],
        label="leave-one-out",
    )
    ax.axhline(0, color="black", lw=0.8)
    handles = [Patch(color="grey", label="in-sample")]
    handles += [
        Patch(color=COLOURS[dim], label=f"leave-one-out: {dim}") for dim in COLOURS if dim in dims
    ]
    ax.legend(handles=handles, fontsize="small")
    ax.set_xticks(index)
    ax.set_xticklabels([short_label(x) for x in X], rotation=60, ha="right", fontsize=8)
    ax.set_title(
        f"Residual per sample (train RMSE {rms(train_res):.4f}, LOO RMSE {rms(loo_res):.4f})"
    )
    ax.set_ylabel("measured - predicted")
    ax.grid(alpha=0.3, axis="y")


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
    require_matplotlib()
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
    fig, axes = figure_and_axes(axes, 3, (13, 4.2), sharey=True)
    if samples is None:
        X, y = predictor.X_train_, predictor.y_train_
    else:
        X, y = samples_to_xy(as_sample(s) for s in samples)
    grids = _slice_grids(np.asarray(predictor.bounds_[0], dtype=float), n_points)
    stacked = np.vstack(grids)
    mean = predictor.predict(stacked).reshape(3, n_points)
    band_lo, band_hi = (
        b.reshape(3, n_points) for b in bootstrap_band(predictor, stacked, coverage)
    )
    for axis, ax in enumerate(axes):
        t = grids[axis][:, axis]
        ax.fill_between(
            t,
            band_lo[axis],
            band_hi[axis],
            color=COLOURS[DIMENSIONS[axis]],
            alpha=0.2,
            label=f"{coverage:.0%} bootstrap band",
        )
        _draw_slice(ax, axis, t, mean[axis], X, y)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize="small", loc="lower right")
    cap_accuracy_axis(axes[0], np.concatenate([y, mean.ravel()]))
    return fig


def _slice_grids(lower: np.ndarray, n_points: int) -> list[np.ndarray]:
    """Per axis, ``n_points`` points from ``lower[axis]`` to 1 with the other two at 1."""
    grids = []
    for axis in range(3):
        grid = np.ones((n_points, 3))
        grid[:, axis] = np.linspace(lower[axis], 1.0, n_points)
        grids.append(grid)
    return grids


def _draw_slice(
    ax: Axes, axis: int, t: np.ndarray, mean: np.ndarray, X: np.ndarray, y: np.ndarray
) -> None:
    """The fitted slice along ``axis`` and the samples lying on that axis."""
    name, dim = NAMES[axis], DIMENSIONS[axis]
    ax.plot(t, mean, color=COLOURS[dim], lw=2, label="fitted surface")
    others = [j for j in range(3) if j != axis]
    on_axis = np.all(np.abs(X[:, others] - 1) <= ON_AXIS_TOL, axis=1)
    ax.scatter(X[on_axis, axis], y[on_axis], color="black", s=28, zorder=3, label="samples")
    other_names = " = ".join(NAMES[j] for j in others)
    ax.set_title(f"{dim} slice ({other_names} = 1)")
    ax.set_xlabel(f"{name} ({dim} kept)")
    ax.grid(alpha=0.3)


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
        The triple to mark (star). Default: :func:`tridim.search.solver.solve` at ``target``.
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
    require_matplotlib()
    from tridim.search.solver import solve

    target = float(target)
    if chosen is None:
        chosen = solve(predictor, target)
    chosen = as_triple(chosen)
    fig, ax = figure_and_ax(ax, (6.4, 5.2))
    lower = np.asarray(predictor.bounds_[0], dtype=float)
    upper = np.asarray(predictor.bounds_[1], dtype=float)
    w = np.linspace(lower[1], upper[1], n_grid)
    r = np.linspace(lower[2], upper[2], n_grid)
    W, R = np.meshgrid(w, r)
    D = target / (W**2 * R**2)
    feasible = (D >= lower[0] - 1e-12) & (D <= upper[0] + 1e-12)
    _draw_iso_flops_surface(fig, ax, predictor, W, R, D, feasible)
    if feasible.any():
        _draw_depth_contours(ax, W, R, np.where(feasible, D, np.nan), lower[0])
    _mark_triple(ax, chosen, "chosen", marker="*", color="red", size=16, edge="white")
    if realised is not None:
        realised = as_triple(realised)
        _mark_triple(ax, realised, "realised", marker="X", color="white", size=10, edge="black")
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


def _draw_iso_flops_surface(
    fig: Figure,
    ax: Axes,
    predictor: LowRankPolynomialRegressor,
    W: np.ndarray,
    R: np.ndarray,
    D: np.ndarray,
    feasible: np.ndarray,
) -> None:
    """The predicted accuracy as a heat map (blank where infeasible) and its colour bar."""
    Z = np.full(D.shape, np.nan)
    if feasible.any():
        points = np.column_stack([D[feasible], W[feasible], R[feasible]])
        Z[feasible] = predictor.predict(points)
    ax.set_facecolor("#eeeeee")
    mesh = ax.pcolormesh(W, R, np.ma.masked_invalid(Z), shading="auto", cmap="viridis")
    colourbar = fig.colorbar(mesh, ax=ax)
    colourbar.set_label("predicted accuracy")


def _draw_depth_contours(
    ax: Axes, W: np.ndarray, R: np.ndarray, D: np.ndarray, lowest_depth: float
) -> None:
    """Dashed, labelled contours of the implied depth (``D`` is NaN where infeasible)."""
    levels = [v for v in _DEPTH_LEVELS if lowest_depth <= v <= 1]
    if not levels:
        return
    contours = ax.contour(W, R, D, levels=levels, colors="white", linewidths=0.8, linestyles="--")
    ax.clabel(contours, fmt=lambda v: f"d={v:.1f}", fontsize=8)


def _mark_triple(
    ax: Axes, triple: Triple, label: str, *, marker: str, color: str, size: float, edge: str
) -> None:
    ax.plot(
        triple.w,
        triple.r,
        marker=marker,
        color=color,
        markersize=size,
        markeredgecolor=edge,
        ls="none",
        label=f"{label} {triple}",
    )


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
        Precomputed :func:`tridim.run.report.pareto_rows` (then ``targets`` is ignored).
    axes : two matplotlib Axes, optional
        Draw here instead of on a new figure.
    coverage : float, default=0.9
        Width of the bootstrap band, in (0, 1).

    Returns
    -------
    matplotlib.figure.Figure
    """
    require_matplotlib()
    rows = list(rows) if rows is not None else pareto_rows(predictor, targets)
    solved = sorted((row for row in rows if row.get("error") is None), key=lambda r: r["target"])
    skipped = sorted(row["target"] for row in rows if row.get("error") is not None)
    fig, (left, right) = figure_and_axes(axes, 2, (12, 4.4))
    if solved:
        _draw_pareto_front(left, right, predictor, solved, coverage)
    if mark is not None:
        for ax in (left, right):
            ax.axvline(mark, color="grey", ls=":", lw=1.2, label=f"{mark_label} {mark:g}")
    _label_pareto_axes(left, right)
    if skipped:
        fig.suptitle(
            "not reachable inside the sampled box (skipped): "
            + ", ".join(f"{t:g}" for t in skipped),
            fontsize="small",
            color="dimgrey",
        )
    return fig


def _draw_pareto_front(
    left: Axes,
    right: Axes,
    predictor: LowRankPolynomialRegressor,
    solved: list[Mapping[str, Any]],
    coverage: float,
) -> None:
    """Left: best predicted accuracy and its bootstrap band; right: d, w, r per budget."""
    x = np.array([row["target"] for row in solved])
    triples = np.array([[row["d"], row["w"], row["r"]] for row in solved])
    accuracy = np.array([row["predicted_accuracy"] for row in solved])
    band_lo, band_hi = bootstrap_band(predictor, triples, coverage)
    left.fill_between(
        x, band_lo, band_hi, color="tab:purple", alpha=0.2, label=f"{coverage:.0%} bootstrap band"
    )
    left.plot(x, accuracy, "o-", color="tab:purple", label="best predicted accuracy")
    for axis, name in enumerate(NAMES):
        dim = DIMENSIONS[axis]
        right.plot(x, triples[:, axis], "o-", color=COLOURS[dim], label=f"{name} ({dim})")
    cap_accuracy_axis(left, accuracy)


def _label_pareto_axes(left: Axes, right: Axes) -> None:
    left.set_title("Predicted Pareto front")
    left.set_xlabel("FLOPs (MACs) ratio of the budget")
    left.set_ylabel("predicted accuracy")
    right.set_title("Optimal triple per budget")
    right.set_xlabel("FLOPs (MACs) ratio of the budget")
    right.set_ylabel("fraction kept")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")


# ---------------------------------------------------------------------- model comparison


def plot_model_comparison(rows: Sequence[Mapping[str, Any]], *, ax: Axes | None = None) -> Figure:
    """Bar chart of the leave-one-out RMSE of each model in a comparison table.

    Parameters
    ----------
    rows : sequence of dict
        With keys ``model`` and ``loo_rmse`` (None for a model that failed, shown as
        "failed"), e.g. from :func:`tridim.bench.predictor.compare_models`.
    ax : matplotlib Axes, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    require_matplotlib()
    fig, ax = figure_and_ax(ax, (7, 3.6))
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
    run: Run | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    budgets: Iterable[float] = DEFAULT_BUDGETS,
    model_rows: Sequence[Mapping[str, Any]] | None = None,
    dpi: int = 110,
) -> list[Path]:
    """Write every figure of a run as a PNG file.

    Files: ``loo.png``, ``slices.png``, ``residuals.png``, ``models.png`` (only when
    ``model_rows`` are given), ``pareto.png`` and, if ``report.json`` gives the run's
    target, ``iso_flops.png``.

    Parameters
    ----------
    run : Run, str or path-like
        A run read by :func:`tridim.run.store.load_run`, or its folder (``predictor.json``
        required; ``samples.jsonl`` and ``report.json`` used when present).
    out_dir : str or path-like, optional
        Where to write. Default: ``<run folder>/plots`` (created if needed).
    budgets : iterable of float, default=DEFAULT_BUDGETS
        Budgets of the Pareto figure.
    model_rows : sequence of dict, optional
        A comparison of regressors to draw with :func:`plot_model_comparison`, e.g.
        ``tridim.bench.predictor.compare_models(run.samples)``.
    dpi : int, default=110
        Resolution of the PNG files.

    Returns
    -------
    list of Path
        The files written, in the order above.

    Raises
    ------
    FileNotFoundError
        If the run folder has no ``predictor.json``.
    ImportError
        If matplotlib is not installed.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tridim.run.store import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run)
    out = Path(out_dir) if out_dir is not None else run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in _report_figures(run, tuple(budgets), model_rows):
        fig = make()
        _name_the_score(fig, run.report.get("score"))
        FigureCanvasAgg(fig)
        fig.savefig(out / name, dpi=dpi)
        written.append(out / name)
    return written


def _name_the_score(fig: Figure, score: Mapping[str, Any] | None) -> None:
    """Relabel a figure of a run scored by a user's ``evaluate()``: its labels say the
    score's name where they say accuracy (a lower-is-better score is drawn negated, as
    the run maximised it)."""
    if not score or score.get("loop") == "OwnLoop":
        return
    name = score["score"] if score.get("higher_is_better", True) else f"-{score['score']}"
    suptitle = getattr(fig, "_suptitle", None)
    texts = [suptitle] if suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        legend = ax.get_legend()
        texts += list(legend.get_texts()) if legend is not None else []
    for text in texts:
        text.set_text(text.get_text().replace("accuracy", name))


def _report_figures(
    run: Run, budgets: tuple[float, ...], model_rows: Sequence[Mapping[str, Any]] | None
) -> list[tuple[str, Callable[[], Figure]]]:
    """File name and figure maker of each figure of :func:`save_report_plots`, in order."""
    loo = run.predictor.loo_residuals()
    figures: list[tuple[str, Callable[[], Figure]]] = [
        ("loo.png", lambda: plot_loo(run.predictor, loo_residuals=loo)),
        ("slices.png", lambda: plot_slices(run.predictor, run.samples)),
        ("residuals.png", lambda: plot_residuals(run.predictor, loo_residuals=loo)),
    ]
    if model_rows is not None:
        figures.append(("models.png", lambda: plot_model_comparison(model_rows)))
    figures.append(
        (
            "pareto.png",
            lambda: plot_pareto(run.predictor, budgets, mark=run.target, mark_label="run target"),
        )
    )
    if run.target is not None:
        figures.append(
            (
                "iso_flops.png",
                lambda: plot_iso_flops(
                    run.predictor, run.target, run.solved_triple, realised=run.realised_triple
                ),
            )
        )
    return figures
