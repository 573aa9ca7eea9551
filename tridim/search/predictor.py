"""The model accuracy predictor (MAP): a polynomial of low CP rank, as a scikit-learn regressor.

With ``p`` input columns (d, w, r for tridim) the model is

    F(x) = sum_{q=1..rank} prod_{j=1..p} P_qj(x_j),

each ``P_qj`` a univariate polynomial of degree ``degree``. This is the full tensor
polynomial ``sum L[i,j,k] d^i w^j r^k`` with its coefficient tensor ``L`` constrained to
CP rank ``rank``, which is what makes about a dozen samples enough to fit it.

Internally each column is mapped affinely onto [-1, 1] over the training range
(``z = (x - x_offset_) / x_scale_``) and the polynomials are written in powers of ``z``;
this is the same model space, better conditioned.

This module does not import torch.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from tridim.atomic import atomic_write_json
from tridim.search.samples import Sample, samples_to_xy

__all__ = [
    "LowRankPolynomialRegressor",
    "leave_one_out_residuals",
    "fit_on_samples",
    "select_on_samples",
    "choose_and_fit",
    "Selection",
    "TooFewSamples",
    "EXPECTED_FAILED_CHECKS",
    "SCHEMA_VERSION",
]

#: Version of the JSON layout written by :meth:`LowRankPolynomialRegressor.save`.
SCHEMA_VERSION = 1
_FORMAT = "tridim.LowRankPolynomialRegressor"
_MAX_FILE_BYTES = 50_000_000

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
        n_params = _count_params(n_features, self.degree, self.rank)
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
        y_scale = _scale_of(y)
        rng = check_random_state(self.random_state)
        starts = [_greedy_start(powers, y / y_scale, self.rank)]
        starts += [
            _random_start(rng, self.rank, n_features, self.degree) for _ in range(self.n_starts - 1)
        ]
        fits = [self._fit_from(start, powers, y / y_scale) for start in starts]
        coef, _, n_iter = min(fits, key=lambda fit: fit[1])
        coef[:, 0, :] *= y_scale
        self.coef_ = coef
        self.n_iter_ = n_iter
        self.train_rmse_ = rms(self.predict(X) - y)
        return self

    def _check_params(self) -> None:
        _check_int(self.degree, "degree", minimum=0)
        _check_int(self.rank, "rank", minimum=1)
        _check_int(self.n_starts, "n_starts", minimum=1)
        _check_int(self.max_iter, "max_iter", minimum=1)
        _check_int(self.n_bootstrap, "n_bootstrap", minimum=2)
        _check_nonnegative(self.alpha, "alpha")
        _check_nonnegative(self.tol, "tol")

    def _powers(self, X: np.ndarray) -> np.ndarray:
        """Return ``V`` of shape (n_features, n_samples, degree + 1), ``V[j, n, i] = z_nj**i``."""
        Z = (X - self.x_offset_) / self.x_scale_
        return np.moveaxis(Z[:, :, None] ** np.arange(self.degree + 1), 1, 0)

    def _fit_from(
        self, coef: np.ndarray, powers: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, float, int]:
        """Alternating least squares from ``coef``, then a joint polish; (coef, objective, sweeps)."""
        coef, n_iter = _als(coef, powers, y, self.alpha, self.max_iter, self.tol)
        coef = _polish(coef, powers, y, self.alpha)
        return coef, _objective(coef, powers, y, self.alpha), n_iter

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
        y_pred = _evaluate(self.coef_, self._powers(X))
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
        fitted = _evaluate(self.coef_, train_powers)
        query_powers = self._powers(X)
        rng = check_random_state(self.random_state)
        draws = np.empty((self.n_bootstrap, X.shape[0]))
        for b in range(self.n_bootstrap):
            y_b = fitted + rng.choice(residuals, size=fitted.shape)
            y_scale = _scale_of(y_b)
            start = self.coef_.copy()
            start[:, 0, :] /= y_scale
            coef, _, _ = self._fit_from(start, train_powers, y_b / y_scale)
            coef[:, 0, :] *= y_scale
            draws[b] = _evaluate(coef, query_powers)
        return draws, residuals

    # -------------------------------------------------------------- diagnostics

    def loo_residuals(self) -> np.ndarray:
        """Leave-one-out residuals ``y_i - F_{-i}(x_i)`` on the training data.

        Each ``F_{-i}`` is a full refit (same parameters, all starts) without sample
        ``i``.

        Returns
        -------
        ndarray of shape (n_samples,)

        Raises
        ------
        ValueError
            If a refit on ``n_samples - 1`` samples is not possible (too few samples
            and ``alpha == 0``).
        """
        check_is_fitted(self)
        return leave_one_out_residuals(self, self.X_train_, self.y_train_)

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
        summary = self.summary()
        payload = {
            "format": _FORMAT,
            "schema_version": SCHEMA_VERSION,
            "params": self._json_params(),
            "n_features": int(self.n_features_in_),
            "coef": self.coef_.tolist(),
            "x_offset": self.x_offset_.tolist(),
            "x_scale": self.x_scale_.tolist(),
            "bounds": {"lower": self.bounds_[0].tolist(), "upper": self.bounds_[1].tolist()},
            "train": {"X": self.X_train_.tolist(), "y": self.y_train_.tolist()},
            "fit": {"n_iter": int(self.n_iter_), "train_rmse": float(self.train_rmse_)},
            "summary": summary,
        }
        atomic_write_json(path, payload, indent=1)
        return summary

    def _json_params(self) -> dict[str, Any]:
        params = self.get_params()
        seed = params["random_state"]
        params["random_state"] = seed if isinstance(seed, numbers.Integral) else None
        return {
            key: value if isinstance(value, (type(None), bool)) else _plain(value)
            for key, value in params.items()
        }

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
        return _from_payload(cls, _read_json(Path(path)), str(path))


# ---------------------------------------------------------------------- model maths


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


def fit_on_samples(
    samples: Iterable[Sample],
    *,
    degree: int | str = 3,
    rank: int | str = 1,
    random_state: int = 0,
) -> LowRankPolynomialRegressor:
    """Fit the accuracy predictor to a run's samples.

    With fewer samples than the predictor has free parameters (e.g. depth cannot change,
    so its axis has no samples) a tiny ridge (``alpha=1e-6``) keeps the fit well posed;
    with barely more, a warning says that leave-one-out fits will interpolate.

    Parameters
    ----------
    samples : iterable of Sample
    degree, rank : int or "auto"
        The predictor's polynomial degree and CP rank; ``"auto"`` chooses by leave-one-out
        (:func:`select_on_samples`, which also says why).
    random_state : int
        Seeds the fit's starts.

    Returns
    -------
    LowRankPolynomialRegressor
        Fitted.
    """
    if degree == "auto" or rank == "auto":
        return choose_and_fit(samples, degree=degree, rank=rank, random_state=random_state)[0]
    X, y = samples_to_xy(samples)
    estimator = LowRankPolynomialRegressor(degree=degree, rank=rank, random_state=random_state)
    n_params = _count_params(X.shape[1], degree, rank)
    if len(y) < n_params:
        estimator.set_params(alpha=1e-6)
    elif len(y) <= n_params + 1:
        warnings.warn(
            f"{len(y)} samples for a predictor with {n_params} parameters: leave-one-out "
            "fits interpolate and the fit may swing between samples; use more samples "
            "(rounds, design)" + (" or a lower degree" if degree > 1 else ""),
            stacklevel=2,
        )
    return estimator.fit(X, y)


def choose_and_fit(
    samples: Sequence[Sample],
    *,
    degree: int | str = "auto",
    rank: int | str = "auto",
    random_state: int = 0,
) -> tuple[LowRankPolynomialRegressor, dict | None]:
    """Fit the predictor, choosing ``"auto"`` degree and rank by leave-one-out.

    With too few samples to compare candidates, the smallest (degree 1, rank 1, or the
    fixed one) is fitted and the choice says so.

    Returns
    -------
    predictor : LowRankPolynomialRegressor
        Fitted.
    choice : dict or None
        :meth:`Selection.to_dict`, or None when degree and rank were both fixed.
    """
    if "auto" not in (degree, rank):
        return fit_on_samples(samples, degree=degree, rank=rank, random_state=random_state), None
    try:
        selection = select_on_samples(
            samples, degrees=degree, ranks=rank, random_state=random_state
        )
    except TooFewSamples:
        degree = 1 if degree == "auto" else degree
        rank = 1 if rank == "auto" else rank
        choice = {
            "degree": degree,
            "rank": rank,
            "rule": f"{len(samples)} samples are too few for leave-one-out: the smallest candidate",
            "candidates": [],
        }
        predictor = fit_on_samples(samples, degree=degree, rank=rank, random_state=random_state)
        return predictor, choice
    return selection.predictor, selection.to_dict()


class TooFewSamples(ValueError):
    """Too few samples to compare predictors by leave-one-out."""


#: A candidate whose leave-one-out RMSE is within this factor of the best counts as as
#: good; the simplest of those is chosen (fewer parameters swing less between samples).
PARSIMONY = 1.25
#: Degrees and ranks :func:`select_on_samples` tries by default.
AUTO_DEGREES = (1, 2, 3)
AUTO_RANKS = (1, 2)


@dataclass
class Selection:
    """The predictor chosen by leave-one-out, and what every candidate scored.

    Attributes
    ----------
    predictor : LowRankPolynomialRegressor
        The chosen candidate (the simplest within :data:`PARSIMONY` of the lowest
        leave-one-out RMSE), fitted on every sample.
    candidates : list of dict
        ``{"degree", "rank", "n_params", "loo_rmse"}`` per candidate tried, lowest
        leave-one-out RMSE first;
        ``loo_rmse`` is None for a candidate with too few samples (at least
        ``n_params + 2`` are needed for its leave-one-out fits not to interpolate).
    """

    predictor: LowRankPolynomialRegressor
    candidates: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: the choice and the table."""
        return {
            "degree": self.predictor.degree,
            "rank": self.predictor.rank,
            "rule": "the fewest parameters among the candidates whose leave-one-out RMSE "
            f"is within {PARSIMONY - 1:.0%} of the lowest (candidates need n_params + 2 "
            "samples)",
            "candidates": self.candidates,
        }


def select_on_samples(
    samples: Iterable[Sample],
    *,
    degrees: int | str | Sequence[int] = "auto",
    ranks: int | str | Sequence[int] = "auto",
    random_state: int = 0,
) -> Selection:
    """Choose the predictor's degree and rank by leave-one-out RMSE, and fit it.

    Parameters
    ----------
    samples : iterable of Sample
    degrees, ranks : int, sequence of int, or "auto"
        The candidates (``"auto"``: :data:`AUTO_DEGREES`, :data:`AUTO_RANKS`); an int
        fixes that one.
    random_state : int
        Seeds every fit.

    Returns
    -------
    Selection

    Raises
    ------
    TooFewSamples
        A ValueError: no candidate has enough samples (fewer than 6).
    """
    X, y = samples_to_xy(samples)
    degrees = AUTO_DEGREES if degrees == "auto" else np.atleast_1d(degrees).tolist()
    ranks = AUTO_RANKS if ranks == "auto" else np.atleast_1d(ranks).tolist()
    for value in (*degrees, *ranks):
        _check_int(value, "degree and rank", minimum=1)
    rows = []
    for degree in degrees:
        for rank in ranks:
            n_params = _count_params(X.shape[1], degree, rank)
            row = {"degree": degree, "rank": rank, "n_params": n_params, "loo_rmse": None}
            if len(y) >= n_params + 2:
                estimator = LowRankPolynomialRegressor(
                    degree=degree, rank=rank, random_state=random_state
                )
                residuals = leave_one_out_residuals(estimator, X, y)
                row["loo_rmse"] = rms(residuals)
            rows.append(row)
    scored = [r for r in rows if r["loo_rmse"] is not None]
    if not scored:
        raise TooFewSamples(
            f"{len(y)} samples are too few to choose a predictor by leave-one-out: the "
            "smallest candidate needs "
            f"{min(r['n_params'] for r in rows) + 2}; collect more samples or fix degree "
            "and rank"
        )
    scored.sort(key=lambda r: (r["loo_rmse"], r["n_params"]))
    near = [r for r in scored if r["loo_rmse"] <= PARSIMONY * scored[0]["loo_rmse"]]
    best = min(near, key=lambda r: (r["n_params"], r["loo_rmse"]))
    chosen = LowRankPolynomialRegressor(
        degree=best["degree"], rank=best["rank"], random_state=random_state
    ).fit(X, y)
    unscored = [r for r in rows if r["loo_rmse"] is None]
    return Selection(chosen, scored + unscored)


def _count_params(n_features: int, degree: int, rank: int) -> int:
    """Free parameters: each term has p*(degree+1) coefficients less p-1 scale gauges,
    and no model has more than the full tensor polynomial's (degree+1)**p."""
    per_term = n_features * (degree + 1) - (n_features - 1)
    return min(rank * per_term, (degree + 1) ** n_features)


def _random_start(
    rng: np.random.RandomState, rank: int, n_features: int, degree: int
) -> np.ndarray:
    coef = 0.5 * rng.standard_normal((rank, n_features, degree + 1))
    coef[:, :, 0] += 1.0
    return coef


def _greedy_start(powers: np.ndarray, y: np.ndarray, rank: int) -> np.ndarray:
    """Each term starts as the best one-column polynomial fit to what earlier terms leave;
    its other factors start constant."""
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


def _evaluate(coef: np.ndarray, powers: np.ndarray) -> np.ndarray:
    return _factor_values(coef, powers).prod(axis=1).sum(axis=0)


def _others_product(values: np.ndarray, j: int) -> np.ndarray:
    """Product over every column but ``j``: shape (rank, n_samples)."""
    return np.prod(np.delete(values, j, axis=1), axis=1)


def _objective(coef: np.ndarray, powers: np.ndarray, y: np.ndarray, alpha: float) -> float:
    residual = _evaluate(coef, powers) - y
    return float(residual @ residual + alpha * np.sum(coef**2))


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
        fit = _evaluate(unpack(theta), powers) - y
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
    """Root mean square of ``values``."""
    return float(np.sqrt(np.mean(np.square(values))))


def _scale_of(y: np.ndarray) -> float:
    """Root mean square of ``y``, or 1 for an all-zero ``y``."""
    scale = rms(y)
    return scale if scale > 0 else 1.0


# ---------------------------------------------------------------------- validation


def _check_int(value: Any, name: str, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_nonnegative(value: Any, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers, for JSON."""
    return value.item() if isinstance(value, np.generic) else value


# ---------------------------------------------------------------------- file format


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _read_json(path: Path) -> Any:
    size = path.stat().st_size
    if size > _MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is too large for a predictor file")
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ValueError(f"{path}: not a valid predictor file ({error})") from None


class _Invalid(ValueError):
    pass


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Invalid(message)


def _exact_keys(data: Any, keys: set[str], where: str) -> dict:
    _require(isinstance(data, dict), f"{where} must be a JSON object")
    missing, unknown = sorted(keys - data.keys()), sorted(data.keys() - keys)
    _require(not missing, f"{where} is missing {missing}")
    _require(not unknown, f"{where} has unknown keys {unknown}")
    return data


def _number_array(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A nested list of finite numbers (not booleans) of exactly ``shape``."""

    def check(item: Any, depth: int) -> None:
        if depth == len(shape):
            _require(
                isinstance(item, (int, float)) and not isinstance(item, bool),
                f"{where} must hold numbers only",
            )
            return
        _require(
            isinstance(item, list) and len(item) == shape[depth],
            f"{where} must have shape {shape}",
        )
        for element in item:
            check(element, depth + 1)

    check(value, 0)
    array = np.array(value, dtype=np.float64).reshape(shape)
    _require(bool(np.all(np.isfinite(array))), f"{where} must be finite")
    return array


def _optional_number(value: Any, where: str) -> None:
    _require(
        value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)),
        f"{where} must be a number or null",
    )


def _from_payload(cls: type, data: Any, source: str) -> LowRankPolynomialRegressor:
    try:
        return _build(cls, data)
    except _Invalid as error:
        raise ValueError(f"{source}: not a valid predictor file: {error}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _checked_header(cls: type, data: Any) -> tuple[LowRankPolynomialRegressor, int]:
    """Validate the format, version, keys and params; return the estimator and n_features."""
    top = {"format", "schema_version", "params", "n_features", "coef", "x_offset", "x_scale"}
    top |= {"bounds", "train", "fit", "summary"}
    _require(isinstance(data, dict), "the top level must be a JSON object")
    _require(data.get("format") == _FORMAT, f"format must be {_FORMAT!r}")
    version = data.get("schema_version")
    _require(
        _is_int(version) and version == SCHEMA_VERSION,
        f"unsupported schema_version {version!r} (this tridim reads {SCHEMA_VERSION})",
    )
    _exact_keys(data, top, "the file")
    params = _exact_keys(data["params"], set(cls().get_params()), "params")
    estimator = cls(**params)
    try:
        estimator._check_params()
    except ValueError as error:
        raise _Invalid(f"params: {error}") from None
    _require(
        params["random_state"] is None or _is_int(params["random_state"]),
        "params.random_state must be an integer or null",
    )
    n_features = data["n_features"]
    _require(_is_int(n_features) and n_features >= 1, "n_features must be a positive integer")
    return estimator, n_features


def _build(cls: type, data: Any) -> LowRankPolynomialRegressor:
    estimator, p = _checked_header(cls, data)
    coef = _number_array(data["coef"], (estimator.rank, p, estimator.degree + 1), "coef")
    x_offset = _number_array(data["x_offset"], (p,), "x_offset")
    x_scale = _number_array(data["x_scale"], (p,), "x_scale")
    _require(bool(np.all(x_scale > 0)), "x_scale must be positive")
    bounds = _exact_keys(data["bounds"], {"lower", "upper"}, "bounds")
    lower = _number_array(bounds["lower"], (p,), "bounds.lower")
    upper = _number_array(bounds["upper"], (p,), "bounds.upper")
    _require(bool(np.all(lower <= upper)), "bounds.lower must not exceed bounds.upper")
    train = _exact_keys(data["train"], {"X", "y"}, "train")
    _require(isinstance(train["y"], list) and len(train["y"]) >= 1, "train.y must be a list")
    n_samples = len(train["y"])
    X = _number_array(train["X"], (n_samples, p), "train.X")
    y = _number_array(train["y"], (n_samples,), "train.y")
    fit = _exact_keys(data["fit"], {"n_iter", "train_rmse"}, "fit")
    _require(isinstance(fit["n_iter"], int) and fit["n_iter"] >= 0, "fit.n_iter must be an int")
    _optional_number(fit["train_rmse"], "fit.train_rmse")
    keys = {"n_samples", "n_params", "train_rmse", "r2", "loo_rmse"}
    summary = _exact_keys(data["summary"], keys, "summary")
    for key in keys:
        _optional_number(summary[key], f"summary.{key}")

    estimator.coef_ = coef
    estimator.x_offset_ = x_offset
    estimator.x_scale_ = x_scale
    estimator.bounds_ = np.vstack([lower, upper])
    estimator.X_train_ = X
    estimator.y_train_ = y
    estimator.n_features_in_ = p
    estimator.n_params_ = _count_params(p, estimator.degree, estimator.rank)
    estimator.n_iter_ = fit["n_iter"]
    estimator.train_rmse_ = float(fit["train_rmse"])
    estimator.saved_summary_ = dict(summary)
    return estimator
