"""The model accuracy predictor (MAP): a polynomial of low CP rank, as a scikit-learn regressor.

With ``p`` input columns (d, w, r for tridim) the model is

    F(x) = sum_{q=1..rank} prod_{j=1..p} P_qj(x_j),

each ``P_qj`` a univariate polynomial of degree ``degree``. This is the full tensor
polynomial ``sum L[i,j,k] d^i w^j r^k`` with its coefficient tensor ``L`` constrained to
CP rank ``rank``, which is what makes about a dozen samples enough to fit it.

Internally each column is mapped affinely onto [-1, 1] over the training range
(``z = (x - x_offset_) / x_scale_``) and the polynomials are written in powers of ``z``;
this is the same model space, better conditioned.

The maths is in :mod:`tridim.search.lowrank`, the JSON file in
:mod:`tridim.search.predictor_json`, and choosing degree and rank by leave-one-out (and
fitting on samples) in :mod:`tridim.search.selection`.

This module does not import torch.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from tridim.search.lowrank import (
    check_int,
    check_nonnegative,
    count_params,
    evaluate,
    fit_from,
    greedy_start,
    random_start,
    rms,
    scale_of,
)
from tridim.search.predictor_json import SCHEMA_VERSION, read_predictor, write_predictor

__all__ = [
    "LowRankPolynomialRegressor",
    "leave_one_out_residuals",
    "EXPECTED_FAILED_CHECKS",
    "SCHEMA_VERSION",
]


#: scikit-learn estimator checks this regressor is known not to pass, with the reason.
#: Passed to ``expected_failed_checks`` in the tests.
EXPECTED_FAILED_CHECKS: dict[str, str] = {
    "check_regressors_no_decision_function": (
        "fits 10 samples with 4 features; a rank-1 cubic in 4 columns has 13 free "
        "parameters, so fit refuses on purpose with a 'needs at least 13 samples' error"
    ),
}


class LowRankPolynomialRegressor(RegressorMixin, BaseEstimator):
    """Polynomial regressor whose coefficient tensor has low CP rank.

    Fitted by alternating least squares (each step an exact, optionally ridge-penalised,
    linear solve for one column's polynomials) from ``n_starts`` seeded starts; every
    start is then polished by :func:`scipy.optimize.least_squares` on all coefficients
    together, and the start with the lowest objective is kept.

    Parameters
    ----------
    degree : int, default=3
        Degree of each univariate polynomial.
    rank : int, default=1
        Number of product terms (CP rank of the coefficient tensor).
    alpha : float, default=0.0
        Ridge penalty on the coefficients, applied to the standardised problem
        (inputs on [-1, 1], target divided by its root mean square). With
        ``alpha > 0`` fewer samples than free parameters are allowed.
    n_starts : int, default=8
        Number of starts: one greedy start (each term begins as the best one-column
        polynomial fit) and ``n_starts - 1`` seeded random ones.
    max_iter : int, default=30
        Maximum number of alternating least-squares sweeps per start. The sweeps only
        bring a start near a minimum; the joint polish converges it.
    tol : float, default=1e-6
        Stop the sweeps early when a sweep lowers the objective by less than ``tol``
        relative.
    n_bootstrap : int, default=200
        Number of bootstrap refits behind ``predict(..., return_std=True)`` and
        :meth:`predict_interval`.
    random_state : int, RandomState instance or None, default=0
        Seeds the starts and the bootstrap.

    Attributes
    ----------
    coef_ : ndarray of shape (rank, n_features_in_, degree + 1)
        ``coef_[q, j, i]`` multiplies ``z_j**i`` in the polynomial ``P_qj``.
    x_offset_, x_scale_ : ndarray of shape (n_features_in_,)
        The affine map of the inputs: ``z = (x - x_offset_) / x_scale_``.
    bounds_ : ndarray of shape (2, n_features_in_)
        Smallest and largest training value of each column (the solver's default box).
    X_train_ : ndarray of shape (n_samples, n_features_in_)
        Training inputs, kept for leave-one-out and bootstrap diagnostics.
    y_train_ : ndarray of shape (n_samples,)
        Training targets.
    n_params_ : int
        Number of free parameters of the model.
    train_rmse_ : float
        Root mean squared training error.
    n_iter_ : int
        Alternating least-squares sweeps of the kept start.
    n_features_in_ : int
        Number of input columns.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0.3, 1.0, size=(20, 3))
    >>> y = (1 + X[:, 0]) * (2 - X[:, 1] ** 2) * X[:, 2]
    >>> est = LowRankPolynomialRegressor().fit(X, y)
    >>> bool(np.allclose(est.predict(X), y))
    True
    """

    def __init__(
        self,
        degree: int = 3,
        rank: int = 1,
        alpha: float = 0.0,
        n_starts: int = 8,
        max_iter: int = 30,
        tol: float = 1e-6,
        n_bootstrap: int = 200,
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.degree = degree
        self.rank = rank
        self.alpha = alpha
        self.n_starts = n_starts
        self.max_iter = max_iter
        self.tol = tol
        self.n_bootstrap = n_bootstrap
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any) -> LowRankPolynomialRegressor:
        """Fit the model to training data.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs, e.g. columns d, w, r.
        y : array-like of shape (n_samples,)
            Targets, e.g. accuracy.

        Returns
        -------
        self : LowRankPolynomialRegressor

        Raises
        ------
        ValueError
            On invalid parameters or input, or if ``alpha == 0`` and there are fewer
            samples than free parameters.
        """
        self._check_params()
        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        n_samples, n_features = X.shape
        n_params = count_params(n_features, self.degree, self.rank)
        if n_samples < n_params and self.alpha == 0:
            raise ValueError(
                f"{type(self).__name__}(degree={self.degree}, rank={self.rank}) on "
                f"{n_features} input column(s) has {n_params} free parameters, so it needs "
                f"at least {n_params} samples; got {n_samples} sample(s). Collect more "
                "samples, lower degree or rank, or set alpha > 0 to fit with a ridge penalty."
            )
        lower, upper = X.min(axis=0), X.max(axis=0)
        self.x_offset_ = (lower + upper) / 2
        half_range = (upper - lower) / 2
        self.x_scale_ = np.where(half_range > 0, half_range, 1.0)
        self.bounds_ = np.vstack([lower, upper])
        self.X_train_ = X.copy()
        self.y_train_ = y.copy()
        self.n_params_ = n_params

        powers = self._powers(X)
        y_scale = scale_of(y)
        rng = check_random_state(self.random_state)
        starts = [greedy_start(powers, y / y_scale, self.rank)]
        starts += [
            random_start(rng, self.rank, n_features, self.degree) for _ in range(self.n_starts - 1)
        ]
        fits = [self._fit_from(start, powers, y / y_scale) for start in starts]
        coef, _, n_iter = min(fits, key=lambda fit: fit[1])
        coef[:, 0, :] *= y_scale
        self.coef_ = coef
        self.n_iter_ = n_iter
        self.train_rmse_ = rms(self.predict(X) - y)
        self._loo = None  # leave-one-out residuals, computed on first use
        return self

    def _check_params(self) -> None:
        check_int(self.degree, "degree", minimum=0)
        check_int(self.rank, "rank", minimum=1)
        check_int(self.n_starts, "n_starts", minimum=1)
        check_int(self.max_iter, "max_iter", minimum=1)
        check_int(self.n_bootstrap, "n_bootstrap", minimum=2)
        check_nonnegative(self.alpha, "alpha")
        check_nonnegative(self.tol, "tol")

    def _powers(self, X: np.ndarray) -> np.ndarray:
        """Return ``V`` of shape (n_features, n_samples, degree + 1), ``V[j, n, i] = z_nj**i``."""
        Z = (X - self.x_offset_) / self.x_scale_
        return np.moveaxis(Z[:, :, None] ** np.arange(self.degree + 1), 1, 0)

    def _fit_from(
        self, coef: np.ndarray, powers: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, float, int]:
        """Alternating least squares from ``coef``, then a joint polish; (coef, objective, sweeps)."""
        return fit_from(coef, powers, y, alpha=self.alpha, max_iter=self.max_iter, tol=self.tol)

    # --------------------------------------------------------------- prediction

    def predict(
        self, X: Any, return_std: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Predict targets, optionally with a bootstrap standard deviation.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Inputs.
        return_std : bool, default=False
            Also return the standard deviation of the fitted surface at ``X`` across
            ``n_bootstrap`` residual-bootstrap refits (the uncertainty of the model,
            not of a new measurement; see :meth:`predict_interval` for the latter).

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
        y_std : ndarray of shape (n_samples,)
            Only if ``return_std``.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        y_pred = evaluate(self.coef_, self._powers(X))
        if not return_std:
            return y_pred
        return y_pred, self.bootstrap_predictions(X).std(axis=0, ddof=1)

    def predict_interval(self, X: Any, coverage: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap prediction interval for a new measurement at ``X``.

        Each bootstrap refit's prediction is perturbed by a resampled leave-one-out
        residual, and the central ``coverage`` fraction of the result is returned.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
        coverage : float, default=0.9
            Nominal coverage, in (0, 1).

        Returns
        -------
        lower, upper : ndarray of shape (n_samples,)
        """
        if not 0 < coverage < 1:
            raise ValueError(f"coverage must be in (0, 1), got {coverage!r}")
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        draws, residuals = self._bootstrap(X)
        rng = check_random_state(self.random_state)
        draws = draws + rng.choice(residuals, size=draws.shape)
        tail = (1 - coverage) / 2
        return np.quantile(draws, tail, axis=0), np.quantile(draws, 1 - tail, axis=0)

    def bootstrap_predictions(self, X: Any) -> np.ndarray:
        """Predictions at ``X`` of ``n_bootstrap`` residual-bootstrap refits.

        Each refit is trained on the fitted values plus leave-one-out residuals drawn
        with replacement (centred), warm-started from ``coef_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)

        Returns
        -------
        ndarray of shape (n_bootstrap, n_samples)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._bootstrap(X)[0]

    def _bootstrap(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residuals = self.loo_residuals()
        residuals = residuals - residuals.mean()
        train_powers = self._powers(self.X_train_)
        fitted = evaluate(self.coef_, train_powers)
        query_powers = self._powers(X)
        rng = check_random_state(self.random_state)
        draws = np.empty((self.n_bootstrap, X.shape[0]))
        for b in range(self.n_bootstrap):
            y_b = fitted + rng.choice(residuals, size=fitted.shape)
            y_scale = scale_of(y_b)
            start = self.coef_.copy()
            start[:, 0, :] /= y_scale
            coef, _, _ = self._fit_from(start, train_powers, y_b / y_scale)
            coef[:, 0, :] *= y_scale
            draws[b] = evaluate(coef, query_powers)
        return draws, residuals

    # -------------------------------------------------------------- diagnostics

    def loo_residuals(self) -> np.ndarray:
        """Leave-one-out residuals ``y_i - F_{-i}(x_i)`` on the training data.

        Each ``F_{-i}`` is a full refit (same parameters, all starts) without sample
        ``i``: :func:`leave_one_out_residuals` on ``X_train_`` and ``y_train_`` (computed
        once per fit, then remembered), which raises ValueError when a refit on
        ``n_samples - 1`` samples is not possible (too few samples and ``alpha == 0``).

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        if getattr(self, "_loo", None) is None:
            self._loo = leave_one_out_residuals(self, self.X_train_, self.y_train_)
        return self._loo.copy()

    def _remember_loo(self, residuals: np.ndarray) -> None:
        """Keep leave-one-out residuals already computed with this estimator's parameters
        on its training data (a selection's), so :meth:`loo_residuals` need not refit."""
        self._loo = np.array(residuals, dtype=float)

    def loo_rmse(self) -> float:
        """Root mean squared leave-one-out error on the training data."""
        return rms(self.loo_residuals())

    def summary(self) -> dict[str, Any]:
        """Fit diagnostics as a JSON-ready dict.

        Returns
        -------
        dict
            ``n_samples``, ``n_params``, ``train_rmse``, ``r2`` (on the training data)
            and ``loo_rmse`` (None when leave-one-out refits are impossible).
        """
        check_is_fitted(self)
        try:
            loo = self.loo_rmse()
        except ValueError:
            loo = None
        return {
            "n_samples": int(len(self.y_train_)),
            "n_params": int(self.n_params_),
            "train_rmse": float(self.train_rmse_),
            "r2": float(self.score(self.X_train_, self.y_train_)),
            "loo_rmse": loo,
        }

    # -------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> dict[str, Any]:
        """Write the fitted model to a JSON file (atomically).

        The file holds a schema version, the parameters, the coefficients, the input
        map and bounds, the training data and a :meth:`summary` (so saving runs the
        leave-one-out refits).

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        dict
            The summary that was written.
        """
        check_is_fitted(self)
        return write_predictor(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LowRankPolynomialRegressor:
        """Read a model written by :meth:`save`, validating every field.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        LowRankPolynomialRegressor
            A fitted estimator giving the same predictions as the saved one; its
            ``saved_summary_`` holds the summary stored in the file.

        Raises
        ------
        ValueError
            If the file is not a valid, complete model file of a known schema version.
        """
        return read_predictor(cls, path)


def leave_one_out_residuals(estimator: Any, X: Any, y: Any) -> np.ndarray:
    """Leave-one-out residuals ``y_i - F_{-i}(x_i)`` of any scikit-learn regressor.

    Each ``F_{-i}`` is ``clone(estimator)`` fitted on every sample but ``i``.

    Parameters
    ----------
    estimator : scikit-learn regressor
        Its parameters are used; it need not be fitted.
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)

    Returns
    -------
    ndarray of shape (n_samples,)

    Raises
    ------
    ValueError
        With fewer than 2 samples, or when a refit fails (the message says why).
    """
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    if len(y) < 2:
        raise ValueError("leave-one-out needs at least 2 samples")
    residuals = np.empty(len(y))
    keep = np.ones(len(y), dtype=bool)
    for i in range(len(y)):
        keep[i] = False
        try:
            refit = clone(estimator).fit(X[keep], y[keep])
        except ValueError as error:
            raise ValueError(f"leave-one-out refit failed: {error}") from None
        residuals[i] = y[i] - refit.predict(X[i : i + 1])[0]
        keep[i] = True
    return residuals
