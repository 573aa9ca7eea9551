"""The Lagrangian solver: closed-form optima, the grid cross-check, and bad budgets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tridim.search import solver
from tridim.search.predictor import LowRankPolynomialRegressor
from tridim.search.solver import Solution, pareto, solve
from tridim.search.space import Bounds, Triple, flops_cost

UNIT = Bounds((0.05, 0.05, 0.05), (1.0, 1.0, 1.0))


class PowerLaw:
    """F = d^a * w^b * r^c."""

    def __init__(self, a, b, c):
        self.exponents = np.array([a, b, c])

    def predict(self, X):
        return np.prod(X**self.exponents, axis=1)


class AdditiveError:
    """F = 1 - sum_i alpha_i * x_i^(-e_i): error terms that each fall as a power law."""

    def __init__(self, alphas, exponents):
        self.alphas, self.exponents = np.array(alphas), np.array(exponents)

    def predict(self, X):
        return 1 - np.sum(self.alphas * X ** (-self.exponents), axis=1)


def test_separable_power_law_matches_closed_form():
    # With u = log x, maximising F = d^a w^b r^c under d w^2 r^2 = T is the linear
    # programme: max a u_d + b u_w + c u_r s.t. u_d + 2 u_w + 2 u_r = log T, log lo <= u <= 0.
    # Cutting u_i by one unit of log-cost loses a/1, b/2, c/2 of log F respectively, so
    # the optimum cuts the cheapest axis first down to its bound, then the next one.
    # With (a, b, c) = (0.1, 0.6, 0.3) the rates are 0.1, 0.3, 0.15: d goes to its bound
    # 0.5 (log-cost log 2), r takes the rest: 2 log r = log(T / 0.5), w stays at 1.
    # The multiplier dF*/dlog T is F* times the rate of the axis cut last, c / 2.
    a, b, c, target = 0.1, 0.6, 0.3, 0.3
    solution = solve(PowerLaw(a, b, c), target, bounds=Bounds((0.5, 0.5, 0.5), (1, 1, 1)))
    expected = np.array([0.5, 1.0, math.sqrt(target / 0.5)])
    np.testing.assert_allclose(solution.triple.as_tuple(), expected, atol=1e-3)
    optimum = 0.5**a * expected[2] ** c
    assert solution.predicted_accuracy == pytest.approx(optimum, abs=1e-6)
    assert solution.multiplier == pytest.approx(optimum * c / 2, rel=1e-4)
    assert solution.kkt_residual < 1e-6


def test_interior_optimum_matches_lagrange_closed_form():
    # F = 1 - sum alpha_i x_i^-e_i. In log coordinates dF/du_i = e_i alpha_i x_i^-e_i and
    # d(log C)/du = (1, 2, 2) =: k. Stationarity e_i alpha_i x_i^-e_i = lambda k_i gives
    # log x_i = (log(e_i alpha_i / k_i) - log lambda) / e_i, and the budget
    # sum_i k_i log x_i = log T is linear in log lambda:
    # log lambda = (sum_i k_i/e_i log(e_i alpha_i / k_i) - log T) / sum_i k_i / e_i.
    alphas, exponents, target = np.array([0.005, 0.02, 0.015]), np.array([1.0, 0.9, 1.1]), 0.3
    k = np.array([1.0, 2.0, 2.0])
    log_lambda = (np.sum(k / exponents * np.log(exponents * alphas / k)) - math.log(target)) / (
        np.sum(k / exponents)
    )
    expected = np.exp((np.log(exponents * alphas / k) - log_lambda) / exponents)
    assert np.all(expected < 1), "the closed form needs an interior optimum"

    solution = solve(AdditiveError(alphas, exponents), target, bounds=UNIT)
    np.testing.assert_allclose(solution.triple.as_tuple(), expected, atol=1e-3)
    assert solution.multiplier == pytest.approx(math.exp(log_lambda), rel=1e-4)
    assert solution.kkt_residual < 1e-6
    assert solution.flops_ratio == pytest.approx(target, rel=1e-8)


class Bumpy(AdditiveError):
    """A smooth surface plus a narrow bump on the constraint surface for T = 0.2."""

    centre = np.log([0.9, 0.3, 0.8])

    def predict(self, X):
        distance = np.sum((np.log(X) - self.centre) ** 2, axis=1)
        return super().predict(X) + 0.05 * np.exp(-distance / (2 * 0.05**2))


def test_grid_cross_check_catches_a_missed_maximum(monkeypatch):
    bumpy = Bumpy([0.005, 0.02, 0.02], [1.0, 1.0, 1.0])
    target = float(np.exp(Bumpy.centre @ [1, 2, 2]))
    grid_point, grid_value = solver._grid_best(solver._Problem(bumpy, UNIT, flops_cost, target))
    solution = solve(bumpy, target, bounds=UNIT)
    assert solution.predicted_accuracy >= grid_value - solver.GRID_TOLERANCE
    np.testing.assert_allclose(np.log(solution.triple.as_tuple()), Bumpy.centre, atol=0.02)

    monkeypatch.setattr(solver, "GRID_TOLERANCE", math.inf)
    without_check = solve(bumpy, target, bounds=UNIT)
    assert without_check.predicted_accuracy < grid_value - 0.01, "SLSQP alone misses the bump"


def test_grid_never_beats_the_answer_on_a_fitted_predictor():
    X = np.random.default_rng(0).uniform(0.2, 1.0, size=(40, 3))
    y = 0.95 - 0.2 * (1 - X[:, 0]) ** 2 - 0.3 * (1 - X[:, 1]) ** 2 - 0.25 * (1 - X[:, 2]) ** 3
    predictor = LowRankPolynomialRegressor(rank=2).fit(X, y)
    bounds = Bounds.from_points(predictor.X_train_)
    for target in (0.05, 0.2, 0.5):
        problem = solver._Problem(predictor, bounds, flops_cost, target)
        _, grid_value = solver._grid_best(problem)
        solution = solve(predictor, target)
        assert solution.predicted_accuracy >= grid_value - solver.GRID_TOLERANCE
        assert solution.flops_ratio == pytest.approx(target, rel=1e-7)


def test_default_bounds_are_the_sampled_range():
    X = np.random.default_rng(1).uniform(0.4, 1.0, size=(30, 3))
    predictor = LowRankPolynomialRegressor().fit(X, X[:, 0] * X[:, 1] ** 2 * X[:, 2])
    lower, upper = predictor.bounds_
    solution = solve(predictor, 0.3)
    assert np.all(np.array(solution.triple.as_tuple()) >= lower - 1e-12)
    assert np.all(np.array(solution.triple.as_tuple()) <= upper + 1e-12)
    cheapest = lower[0] * lower[1] ** 2 * lower[2] ** 2
    with pytest.raises(ValueError, match=f"flops ratio {cheapest:.6g}"):
        solve(predictor, cheapest / 2)


def test_full_budget_returns_the_original_model():
    solution = solve(PowerLaw(0.1, 0.2, 0.3), 1.0, bounds=UNIT)
    assert solution.triple == Triple(1.0, 1.0, 1.0)
    assert solution.predicted_accuracy == 1.0
    assert solution.multiplier == pytest.approx(0.1, rel=1e-6)  # the cheapest way down


@pytest.mark.parametrize("target", [1.5, 0.0, -0.2, float("nan"), "abc"])
def test_target_outside_unit_interval(target):
    with pytest.raises(ValueError, match=r"target_flops_ratio must be .*\(0, 1\]"):
        solve(PowerLaw(0.1, 0.2, 0.3), target, bounds=UNIT)


def test_out_of_range_message_is_exact():
    with pytest.raises(ValueError) as info:
        solve(PowerLaw(0.1, 0.2, 0.3), 1.5)
    assert str(info.value) == "target_flops_ratio must be in (0, 1], got 1.5"


def test_target_below_cheapest_reachable_point():
    bounds = Bounds((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="cheapest .* flops ratio 0.03125"):
        solve(PowerLaw(0.1, 0.2, 0.3), 0.01, bounds=bounds)
    solution = solve(PowerLaw(0.1, 0.2, 0.3), 0.03125, bounds=bounds)
    assert solution.triple == Triple(0.5, 0.5, 0.5)


def test_custom_scalar_cost():
    def latency(d, w, r):  # scalar-only on purpose
        return float(0.1 + 0.9 * d * w * r**2)

    solution = solve(PowerLaw(0.1, 0.6, 0.3), 0.4, bounds=UNIT, cost=latency)
    assert latency(*solution.triple) == pytest.approx(0.4, rel=1e-7)


def test_pareto_front_and_serialisation():
    front = pareto(
        AdditiveError([0.005, 0.02, 0.02], [1.0, 1.0, 1.0]), [0.1, 0.3, 1.0], bounds=UNIT
    )
    assert [s.target_flops_ratio for s in front] == [0.1, 0.3, 1.0]
    accuracies = [s.predicted_accuracy for s in front]
    assert accuracies == sorted(accuracies)
    assert all(isinstance(s, Solution) for s in front)
    record = json.loads(json.dumps(front[1].to_dict()))
    assert set(record["triple"]) == {"d", "w", "r"}


def test_predictor_with_wrong_width_is_rejected():
    X = np.random.default_rng(2).uniform(0.4, 1.0, size=(30, 2))
    predictor = LowRankPolynomialRegressor().fit(X, X[:, 0] * X[:, 1])
    with pytest.raises(ValueError, match="needs a predictor of \\(d, w, r\\)"):
        solve(predictor, 0.5, bounds=UNIT)
