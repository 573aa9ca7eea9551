"""Benchmark of the accuracy predictor against generic regressors.

:func:`compare_models` compares them on the samples of a run (notebooks, ``tridim report
--plots``); :func:`run_predictor_bench` is ``tridim bench predictor``.

Compares, by leave-one-out RMSE, the rank-1 and rank-2 low-rank polynomial (MAP) with a
full cubic polynomial (``PolynomialFeatures(3)`` + ``RidgeCV``) and a Gaussian process,
on (a) 13 axis-aligned samples, as data collection produces them, from synthetic ground
truths with noise, and (b) optionally a real samples file. On the synthetic surfaces,
where the truth is known, it also reports the error away from the axes (what the solver
actually relies on) and the true accuracy lost by solving on the model instead of the
truth. Fit and solve times are wall-clock seconds on this machine.

This module does not import torch.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler

from tridim.run.report import as_sample, markdown_table
from tridim.search.lowrank import rms
from tridim.search.predictor import LowRankPolynomialRegressor, leave_one_out_residuals
from tridim.search.samples import Sample, read_samples, samples_to_xy
from tridim.search.solver import solve
from tridim.search.space import Bounds

__all__ = [
    "format_table",
    "compare_models",
    "run_predictor_bench",
    "baseline_models",
    "SURFACES",
    "axis_aligned_points",
]

Surface = Callable[[np.ndarray], np.ndarray]

#: Synthetic ground-truth accuracy surfaces, functions of X with columns d, w, r.
SURFACES: dict[str, Surface] = {
    "separable": lambda X: (
        0.93
        * (1 - 0.3 * (1 - X[:, 0]) ** 2)
        * (1 - 0.5 * np.clip(1 - X[:, 1], 0, None) ** 1.5)
        * (1 - 0.4 * (1 - X[:, 2]) ** 2)
    ),
    "interaction": lambda X: (
        0.92
        - 0.15 * (1 - X[:, 0]) ** 2
        - 0.3 * (1 - X[:, 1]) ** 2
        - 0.25 * (1 - X[:, 2]) ** 2
        - 0.4 * (1 - X[:, 1]) * (1 - X[:, 2])
    ),
    "saturating": lambda X: (
        0.1 + 0.85 * (1 - np.exp(-5 * X[:, 0] ** 0.5 * X[:, 1] * X[:, 2] ** 0.8)) / (1 - np.exp(-5))
    ),
}


def baseline_models(seed: int = 0) -> dict[str, Any]:
    """The regressors compared, by label (unfitted scikit-learn estimators)."""
    kernel = ConstantKernel(1.0) * RBF([0.5, 0.5, 0.5], (1e-2, 1e2)) + WhiteKernel(
        1e-4, (1e-8, 1e-1)
    )
    return {
        "MAP rank-1": LowRankPolynomialRegressor(rank=1, random_state=seed),
        "MAP rank-2 (alpha=1e-3)": LowRankPolynomialRegressor(
            rank=2, alpha=1e-3, random_state=seed
        ),
        "poly3 + RidgeCV": make_pipeline(
            PolynomialFeatures(3), StandardScaler(), RidgeCV(alphas=np.logspace(-6, 2, 17))
        ),
        "Gaussian process": GaussianProcessRegressor(
            kernel, normalize_y=True, n_restarts_optimizer=3, random_state=seed
        ),
    }


def compare_models(
    samples: Iterable[Sample | Mapping[str, Any]],
    *,
    models: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Leave-one-out RMSE of the rank-1 MAP against other regressors on the same samples.

    The models are those of :func:`baseline_models`: the rank-1 MAP, a rank-2 MAP with a
    small ridge penalty, a full cubic polynomial with RidgeCV and a Gaussian process. A
    model that cannot be fitted on this many samples gets its error message instead of
    numbers.

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
        ``error`` (None unless the model failed); draw them with
        :func:`tridim.run.plot.plot_model_comparison`.
    """
    X, y = samples_to_xy(as_sample(s) for s in samples)
    rows = []
    with warnings.catch_warnings():
        # A Gaussian process's hyperparameters often sit at a bound on a dozen points.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for label, model in (baseline_models(seed) if models is None else models).items():
            row: dict[str, Any] = {"model": label, "n_samples": len(y)}
            try:
                loo = leave_one_out_residuals(model, X, y)
                fitted = clone(model).fit(X, y).predict(X)
            except ValueError as error:
                row.update(loo_rmse=None, train_rmse=None, error=str(error))
            else:
                row.update(loo_rmse=rms(loo), train_rmse=rms(y - fitted), error=None)
            rows.append(row)
    return rows


def axis_aligned_points(target: float = 0.3, rounds: int = 4) -> np.ndarray:
    """The base point (1, 1, 1) and ``rounds`` points along each axis from 1 down to the
    value that alone meets ``target`` (d: target, w and r: sqrt(target))."""
    lows = (target, np.sqrt(target), np.sqrt(target))
    rows = [np.ones(3)]
    for axis, low in enumerate(lows):
        for k in range(1, rounds + 1):
            row = np.ones(3)
            row[axis] = 1 - k * (1 - low) / rounds
            rows.append(row)
    return np.array(rows)


def run_predictor_bench(
    samples_path: str | os.PathLike | None = None,
    noise: float = 0.002,
    seed: int = 0,
    target: float = 0.3,
) -> list[dict[str, Any]]:
    """Run the predictor benchmark.

    Parameters
    ----------
    samples_path : str or path-like, optional
        A real samples file (JSON lines) to benchmark on as well.
    noise : float, default=0.002
        Standard deviation of the Gaussian noise added to the synthetic accuracies.
    seed : int, default=0
        Seeds the noise, the off-axis test points and the models.
    target : float, default=0.3
        The FLOPs budget the synthetic samples are collected for and solved at.

    Returns
    -------
    list of dict
        One row per (data, model): ``data``, ``model``, ``n_samples``, ``loo_rmse``,
        ``offaxis_rmse`` and ``regret`` (synthetic data only, else None),
        ``fit_seconds``, ``solve_seconds`` and ``error`` (None unless the model failed).
    """
    with warnings.catch_warnings():
        # The Gaussian process's hyperparameters often sit at a bound on 13 points.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _run(samples_path, noise, seed, target)


def _run(
    samples_path: str | os.PathLike | None, noise: float, seed: int, target: float
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    X = axis_aligned_points(target)
    box = Bounds.from_points(X)
    test_points = rng.uniform(box.lower, box.upper, size=(2000, 3))
    rows = []
    for name, surface in SURFACES.items():
        y = surface(X) + rng.normal(0.0, noise, len(X))
        truth = _Truth(surface)
        best_true = surface(np.array([solve(truth, target, bounds=box).triple.as_tuple()]))[0]
        for label, model in baseline_models(seed).items():
            row = _evaluate(model, X, y, target, box)
            row.update(data=f"synthetic:{name}", model=label)
            if row["error"] is None:
                fitted, chosen = row.pop("_fitted"), row.pop("_chosen")
                row["offaxis_rmse"] = rms(fitted.predict(test_points) - surface(test_points))
                row["regret"] = float(best_true - surface(np.array([chosen]))[0])
            rows.append(_ordered(row))
    if samples_path is not None:
        X_real, y_real = samples_to_xy(read_samples(samples_path))
        box_real = Bounds.from_points(X_real)
        for label, model in baseline_models(seed).items():
            row = _evaluate(model, X_real, y_real, target, box_real)
            row.update(data=f"file:{Path(samples_path).name}", model=label)
            rows.append(_ordered(row))
    return rows


class _Truth:
    """A ground-truth surface wearing the predictor interface, for the solver."""

    def __init__(self, surface: Surface) -> None:
        self.surface = surface

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.surface(np.asarray(X, dtype=float))


def _evaluate(model: Any, X: np.ndarray, y: np.ndarray, target: float, box: Bounds) -> dict:
    row: dict[str, Any] = {"n_samples": len(y), "error": None}
    try:
        row["loo_rmse"] = rms(leave_one_out_residuals(model, X, y))
        start = time.perf_counter()
        fitted = clone(model).fit(X, y)
        row["fit_seconds"] = time.perf_counter() - start
    except ValueError as error:
        row["error"] = str(error)
        return row
    row["_fitted"] = fitted
    try:
        start = time.perf_counter()
        solution = solve(fitted, target, bounds=box)
        row["solve_seconds"] = time.perf_counter() - start
        row["_chosen"] = solution.triple.as_tuple()
    except ValueError as error:
        row["error"] = f"solve: {error}"
    return row


_COLUMNS = (
    "data",
    "model",
    "n_samples",
    "loo_rmse",
    "offaxis_rmse",
    "regret",
    "fit_seconds",
    "solve_seconds",
    "error",
)


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    return {column: row.get(column) for column in _COLUMNS}


def format_table(rows: list[dict]) -> str:
    """The rows of :func:`run_predictor_bench` as the command line prints them."""
    return markdown_table(rows)
