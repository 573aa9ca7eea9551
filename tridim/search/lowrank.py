"""The numbers under the accuracy predictor: a polynomial whose coefficient tensor has low CP rank.

The parameter count, the starts (greedy and random), alternating least squares, the
joint polish by :func:`scipy.optimize.least_squares`, evaluation, and the checks of the
fit's parameters. Plain numpy and scipy on arrays; the scikit-learn estimator built on
them is :class:`tridim.search.predictor.LowRankPolynomialRegressor`.

Shapes: ``coef`` is (rank, n_features, degree + 1); ``powers`` is (n_features,
n_samples, degree + 1) with ``powers[j, n, i] = z_nj**i``.

This module does not import torch.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from scipy.optimize import least_squares

__all__ = [
    "count_params",
    "random_start",
    "greedy_start",
    "fit_from",
    "evaluate",
    "rms",
    "scale_of",
    "check_int",
    "check_nonnegative",
]


def count_params(n_features: int, degree: int, rank: int) -> int:
    """Free parameters of the model.

    Each term has ``p * (degree + 1)`` coefficients less ``p - 1`` scale gauges, and no
    model has more than the full tensor polynomial's ``(degree + 1)**p``.

    Parameters
    ----------
    n_features : int
        Number of input columns ``p``.
    degree, rank : int
        Degree of each univariate polynomial and number of product terms.

    Returns
    -------
    int
    """
    per_term = n_features * (degree + 1) - (n_features - 1)
    return min(rank * per_term, (degree + 1) ** n_features)


def random_start(rng: np.random.RandomState, rank: int, n_features: int, degree: int) -> np.ndarray:
    """A seeded random start: every polynomial near the constant 1.

    Parameters
    ----------
    rng : RandomState
    rank, n_features, degree : int

    Returns
    -------
    ndarray of shape (rank, n_features, degree + 1)
    """
    coef = 0.5 * rng.standard_normal((rank, n_features, degree + 1))
    coef[:, :, 0] += 1.0
    return coef


def greedy_start(powers: np.ndarray, y: np.ndarray, rank: int) -> np.ndarray:
    """The greedy start: each term the best one-column fit to what earlier terms leave.

    The term's other factors start constant.

    Parameters
    ----------
    powers : ndarray of shape (n_features, n_samples, degree + 1)
    y : ndarray of shape (n_samples,)
    rank : int

    Returns
    -------
    ndarray of shape (rank, n_features, degree + 1)
    """
    n_features, _, n_coef = powers.shape
    coef = np.zeros((rank, n_features, n_coef))
    coef[:, :, 0] = 1.0
    residual = y.copy()
    for q in range(rank):
        fits = [np.linalg.lstsq(powers[j], residual, rcond=None)[0] for j in range(n_features)]
        errors = [np.sum((residual - powers[j] @ fit) ** 2) for j, fit in enumerate(fits)]
        best = int(np.argmin(errors))
        coef[q, best] = fits[best]
        residual = residual - powers[best] @ fits[best]
    return coef


def _factor_values(coef: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """``G[q, j, n] = P_qj(z_nj)``."""
    return np.einsum("jni,qji->qjn", powers, coef)


def evaluate(coef: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """The model's values ``sum_q prod_j P_qj(z_nj)``.

    Parameters
    ----------
    coef : ndarray of shape (rank, n_features, degree + 1)
    powers : ndarray of shape (n_features, n_samples, degree + 1)

    Returns
    -------
    ndarray of shape (n_samples,)
    """
    return _factor_values(coef, powers).prod(axis=1).sum(axis=0)


def _others_product(values: np.ndarray, j: int) -> np.ndarray:
    """Product over every column but ``j``: shape (rank, n_samples)."""
    product = np.ones_like(values[:, 0])
    for k in range(values.shape[1]):
        if k != j:
            product = product * values[:, k]
    return product


def _objective(coef: np.ndarray, powers: np.ndarray, y: np.ndarray, alpha: float) -> float:
    residual = evaluate(coef, powers) - y
    return float(residual @ residual + alpha * np.sum(coef**2))


def fit_from(
    coef: np.ndarray,
    powers: np.ndarray,
    y: np.ndarray,
    *,
    alpha: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, float, int]:
    """Fit from one start: alternating least squares, then a joint polish.

    Parameters
    ----------
    coef : ndarray of shape (rank, n_features, degree + 1)
        The start (not changed).
    powers : ndarray of shape (n_features, n_samples, degree + 1)
    y : ndarray of shape (n_samples,)
    alpha : float
        Ridge penalty on the coefficients.
    max_iter : int
        Most alternating least-squares sweeps.
    tol : float
        Stop the sweeps when one lowers the objective by less than this, relative.

    Returns
    -------
    coef : ndarray of shape (rank, n_features, degree + 1)
    objective : float
        Squared error plus ``alpha`` times the squared coefficients.
    sweeps : int
        Alternating least-squares sweeps done.
    """
    coef, sweeps = _als(coef, powers, y, alpha, max_iter, tol)
    coef = _polish(coef, powers, y, alpha)
    return coef, _objective(coef, powers, y, alpha), sweeps


def _als(
    coef: np.ndarray, powers: np.ndarray, y: np.ndarray, alpha: float, max_iter: int, tol: float
) -> tuple[np.ndarray, int]:
    """Alternating least squares: solve exactly for one column's polynomials at a time."""
    coef = coef.copy()
    rank, n_features, n_coef = coef.shape
    previous = _objective(coef, powers, y, alpha)
    sweeps = 0
    while sweeps < max_iter:
        sweeps += 1
        for j in range(n_features):
            others = _others_product(_factor_values(coef, powers), j)
            design = (others[:, :, None] * powers[j][None]).transpose(1, 0, 2)
            coef[:, j, :] = _ridge_solve(design.reshape(len(y), -1), y, alpha).reshape(rank, n_coef)
        _balance(coef)
        current = _objective(coef, powers, y, alpha)
        if previous - current <= tol * previous or current < 1e-28:
            break
        previous = current
    return coef, sweeps


def _ridge_solve(design: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    if alpha > 0:
        n_cols = design.shape[1]
        design = np.vstack([design, math.sqrt(alpha) * np.eye(n_cols)])
        y = np.concatenate([y, np.zeros(n_cols)])
    return np.linalg.lstsq(design, y, rcond=None)[0]


def _balance(coef: np.ndarray) -> None:
    """Rescale each term's polynomials to equal norms (same product, smallest penalty)."""
    norms = np.linalg.norm(coef, axis=2)
    for q in range(coef.shape[0]):
        if np.all(norms[q] > 0):
            target = np.exp(np.mean(np.log(norms[q])))
            coef[q] *= (target / norms[q])[:, None]


def _polish(coef: np.ndarray, powers: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Joint nonlinear least squares over all coefficients, from the ALS solution."""
    shape = coef.shape
    penalty = math.sqrt(alpha)
    free = _gauge_free_mask(coef) if alpha == 0 else np.ones(coef.size, dtype=bool)

    def unpack(theta: np.ndarray) -> np.ndarray:
        full = coef.ravel().copy()
        full[free] = theta
        return full.reshape(shape)

    def residuals(theta: np.ndarray) -> np.ndarray:
        fit = evaluate(unpack(theta), powers) - y
        return np.concatenate([fit, penalty * theta]) if alpha > 0 else fit

    def jacobian(theta: np.ndarray) -> np.ndarray:
        values = _factor_values(unpack(theta), powers)
        # blocks[j][q, n, i] = dF_n / dcoef[q, j, i]
        blocks = [_others_product(values, j)[:, :, None] * powers[j][None] for j in range(shape[1])]
        jac = np.stack(blocks, axis=1).transpose(2, 0, 1, 3).reshape(len(y), -1)[:, free]
        return np.vstack([jac, penalty * np.eye(theta.size)]) if alpha > 0 else jac

    start = coef.ravel()[free]
    initial = residuals(start)
    if initial @ initial < 1e-28:
        return coef
    # MINPACK's Levenberg-Marquardt is the fastest here but needs no fewer residuals
    # than unknowns.
    method = "lm" if initial.size >= start.size else "trf"
    result = least_squares(
        residuals,
        start,
        jac=jacobian,
        method=method,
        xtol=1e-13,
        ftol=1e-13,
        gtol=1e-13,
        max_nfev=200,
    )
    polished = unpack(result.x)
    if _objective(polished, powers, y, alpha) <= _objective(coef, powers, y, alpha):
        _balance(polished)
        return polished
    return coef


def _gauge_free_mask(coef: np.ndarray) -> np.ndarray:
    """Flat mask leaving out one coefficient of every factor but the first in each term.

    A term's product is unchanged when one factor is scaled by s and another by 1/s;
    holding the largest coefficient of factors 2..p fixed removes that freedom and
    keeps the Jacobian of full rank.
    """
    mask = np.ones(coef.shape, dtype=bool)
    for q in range(coef.shape[0]):
        for j in range(1, coef.shape[1]):
            mask[q, j, np.argmax(np.abs(coef[q, j]))] = False
    return mask.ravel()


def rms(values: np.ndarray) -> float:
    """Root mean square of ``values``.

    Parameters
    ----------
    values : array-like

    Returns
    -------
    float
    """
    return float(np.sqrt(np.mean(np.square(values))))


def scale_of(y: np.ndarray) -> float:
    """Root mean square of ``y``, or 1 for an all-zero ``y``.

    Parameters
    ----------
    y : ndarray

    Returns
    -------
    float
    """
    scale = rms(y)
    return scale if scale > 0 else 1.0


def check_int(value: Any, name: str, *, minimum: int) -> None:
    """Check that ``value`` is an integer (not a bool) of at least ``minimum``.

    Parameters
    ----------
    value : object
    name : str
        What the message calls it.
    minimum : int

    Raises
    ------
    ValueError
        If it is not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_nonnegative(value: Any, name: str) -> None:
    """Check that ``value`` is a finite real number (not a bool) of at least 0.

    Parameters
    ----------
    value : object
    name : str
        What the message calls it.

    Raises
    ------
    ValueError
        If it is not.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
