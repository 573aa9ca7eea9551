"""Choosing the accuracy predictor's degree and rank by leave-one-out, and fitting it on samples.

:func:`fit_on_samples` fits a predictor of a given (or ``"auto"``) degree and rank to a
run's samples; :func:`select_on_samples` tries candidate degrees and ranks and keeps the
simplest whose leave-one-out RMSE is within :data:`PARSIMONY` of the lowest
(:class:`Selection`); :func:`choose_and_fit` does either and says what it chose.

This module does not import torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tridim.search.lowrank import check_int, count_params, rms
from tridim.search.predictor import LowRankPolynomialRegressor, leave_one_out_residuals
from tridim.search.samples import Sample, samples_to_xy

__all__ = [
    "fit_on_samples",
    "select_on_samples",
    "choose_and_fit",
    "Selection",
    "TooFewSamples",
    "PARSIMONY",
    "AUTO_DEGREES",
    "AUTO_RANKS",
]


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
    n_params = count_params(X.shape[1], degree, rank)
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
        check_int(value, "degree and rank", minimum=1)
    rows, residuals = [], {}
    for degree in degrees:
        for rank in ranks:
            n_params = count_params(X.shape[1], degree, rank)
            row = {"degree": degree, "rank": rank, "n_params": n_params, "loo_rmse": None}
            if len(y) >= n_params + 2:
                estimator = LowRankPolynomialRegressor(
                    degree=degree, rank=rank, random_state=random_state
                )
                residuals[degree, rank] = leave_one_out_residuals(estimator, X, y)
                row["loo_rmse"] = rms(residuals[degree, rank])
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
    chosen._remember_loo(residuals[best["degree"], best["rank"]])  # same parameters, data
    unscored = [r for r in rows if r["loo_rmse"] is None]
    return Selection(chosen, scored + unscored)
