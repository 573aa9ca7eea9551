"""The Lagrangian solve: the most accurate (d, w, r) for a FLOPs budget.

Maximise the predicted accuracy F(d, w, r) subject to C(d, w, r) = T and box bounds,
where C is the analytic cost ``d * w**2 * r**2`` (or a custom cost). The problem is
solved in log coordinates ``u = log x``, where the default constraint is linear
(``u_d + 2 u_w + 2 u_r = log T``): SLSQP from several spread starts, then a dense grid
over the constraint surface checks the answer.

The reported multiplier follows the convention *accuracy per unit of log-FLOPs*: at the
optimum ``x_i dF/dx_i = multiplier * x_i d(log C)/dx_i`` for every coordinate not held
at a bound, so ``multiplier = dF*/d(log T)``, the accuracy gained by raising the budget
by a factor e (multiply by ``log 2`` for accuracy per doubling).

This module does not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq, minimize

from tridim.search.space import Bounds, Triple, check_ratio, flops_cost

__all__ = ["Solution", "solve", "pareto", "GRID_TOLERANCE"]

#: The grid over the constraint surface may beat SLSQP's answer by at most this much
#: predicted accuracy before the solver switches to the grid's point.
GRID_TOLERANCE = 1e-4

_GRID_POINTS = 121
_ACTIVE = 1e-7
_FEASIBLE = 1e-8
_STEP = 1e-6

CostFunction = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]


@dataclass(frozen=True)
class Solution:
    """The chosen triple for one budget.

    Parameters
    ----------
    triple : Triple
        The optimal (d, w, r).
    predicted_accuracy : float
        The predictor's value at ``triple``.
    multiplier : float
        Lagrange multiplier of the budget, in accuracy per unit of log-FLOPs
        (``dF*/d log T``). Where every coordinate sits at a bound it is the one-sided
        derivative towards the feasible side.
    kkt_residual : float
        Largest violation of the KKT conditions in log coordinates (accuracy per unit
        of log-coordinate); near 0 at a true optimum.
    target_flops_ratio : float
        The budget ``T`` asked for.
    flops_ratio : float
        The cost of ``triple`` (equal to ``T`` up to rounding).
    """

    triple: Triple
    predicted_accuracy: float
    multiplier: float
    kkt_residual: float
    target_flops_ratio: float = math.nan
    flops_ratio: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "triple": self.triple.to_dict(),
            "predicted_accuracy": self.predicted_accuracy,
            "multiplier": self.multiplier,
            "kkt_residual": self.kkt_residual,
            "target_flops_ratio": self.target_flops_ratio,
            "flops_ratio": self.flops_ratio,
        }


def solve(
    predictor: Any,
    target_flops_ratio: float,
    *,
    bounds: Bounds | Sequence[tuple[float, float]] | None = None,
    cost: CostFunction | None = None,
) -> Solution:
    """Maximise predicted accuracy subject to a FLOPs budget.

    Parameters
    ----------
    predictor : object with ``predict(X)``
        Maps an array of shape (n, 3), columns d, w, r, to n accuracies; typically a
        fitted :class:`~tridim.search.predictor.LowRankPolynomialRegressor`.
    target_flops_ratio : float
        The budget ``T`` in (0, 1], relative to the original model.
    bounds : Bounds or sequence of three (low, high) pairs, optional
        The box to search. Default: the predictor's ``bounds_`` (the range its training
        samples cover), else :class:`~tridim.search.space.Bounds` ``()``.
    cost : callable, optional
        ``cost(d, w, r)`` for numpy arrays, increasing in each argument. Default:
        ``d * w**2 * r**2``.

    Returns
    -------
    Solution

    Raises
    ------
    ValueError
        If ``target_flops_ratio`` is not in (0, 1], or no point within the bounds meets
        it (the message states the cheapest, or dearest, reachable ratio).

    Examples
    --------
    >>> class Additive:
    ...     def predict(self, X):
    ...         return 1 - 0.1 / X[:, 0] - 0.1 / X[:, 1] - 0.1 / X[:, 2]
    >>> solution = solve(Additive(), 1.0, bounds=Bounds((0.2, 0.2, 0.2), (1, 1, 1)))
    >>> solution.triple.as_tuple()
    (1.0, 1.0, 1.0)
    """
    target = check_ratio(target_flops_ratio, "target_flops_ratio")
    problem = _Problem(predictor, _resolve_bounds(predictor, bounds), _vectorise(cost), target)
    cheapest, dearest = problem.cost_at(problem.lower), problem.cost_at(problem.upper)
    if target < cheapest * (1 - 1e-12):
        raise ValueError(
            f"target_flops_ratio {target:g} is below the cheapest point within the bounds: "
            f"{_triple(np.exp(problem.lower))} has flops ratio {cheapest:.6g}; "
            "widen the bounds (collect samples further down) or raise the target"
        )
    if target > dearest * (1 + 1e-12):
        raise ValueError(
            f"target_flops_ratio {target:g} is above the dearest point within the bounds: "
            f"{_triple(np.exp(problem.upper))} has flops ratio {dearest:.6g}"
        )
    if target >= dearest * (1 - 1e-12):
        return problem.solution(problem.upper)
    if target <= cheapest * (1 + 1e-12):
        return problem.solution(problem.lower)
    return problem.solution(_optimise(problem))


def pareto(
    predictor: Any,
    targets: Iterable[float],
    *,
    bounds: Bounds | Sequence[tuple[float, float]] | None = None,
    cost: CostFunction | None = None,
) -> list[Solution]:
    """Solve for each budget in ``targets`` with the same predictor.

    Parameters
    ----------
    predictor, bounds, cost
        As for :func:`solve`.
    targets : iterable of float
        Budgets in (0, 1].

    Returns
    -------
    list of Solution
        In the order of ``targets``.
    """
    return [solve(predictor, target, bounds=bounds, cost=cost) for target in targets]


# ---------------------------------------------------------------------- the problem


class _Problem:
    """Objective, constraint and their gradients in log coordinates ``u = log x``."""

    def __init__(self, predictor: Any, bounds: Bounds, cost: CostFunction, target: float):
        n_features = getattr(predictor, "n_features_in_", 3)
        if n_features != 3:
            raise ValueError(f"the solver needs a predictor of (d, w, r); it has {n_features}")
        self.predictor = predictor
        self.cost = cost
        self.target = target
        self.log_target = math.log(target)
        self.lower = np.log(np.array(bounds.lower, dtype=float))
        self.upper = np.log(np.array(bounds.upper, dtype=float))

    def accuracy(self, U: np.ndarray) -> np.ndarray:
        X = np.exp(np.atleast_2d(U))
        return np.asarray(self.predictor.predict(X), dtype=float).reshape(len(X))

    def log_cost(self, U: np.ndarray) -> np.ndarray:
        X = np.exp(np.atleast_2d(U))
        values = np.asarray(self.cost(X[:, 0], X[:, 1], X[:, 2]), dtype=float)
        return np.log(np.broadcast_to(values, (len(X),)))

    def gradient(self, function: Callable[[np.ndarray], np.ndarray], u: np.ndarray) -> np.ndarray:
        return _box_gradient(function, u, self.lower, self.upper)

    def cost_at(self, u: np.ndarray) -> float:
        return float(np.exp(self.log_cost(u)[0]))

    def gap(self, u: np.ndarray) -> float:
        """Constraint value ``log C(u) - log T``."""
        return float(self.log_cost(u)[0] - self.log_target)

    def solution(self, u: np.ndarray) -> Solution:
        u = np.clip(u, self.lower, self.upper)
        multiplier, residual = self.kkt(u)
        x = np.clip(np.exp(u), np.exp(self.lower), np.exp(self.upper))
        return Solution(
            triple=_triple(x),
            predicted_accuracy=float(self.accuracy(u)[0]),
            multiplier=multiplier,
            kkt_residual=residual,
            target_flops_ratio=self.target,
            flops_ratio=self.cost_at(u),
        )

    def kkt(self, u: np.ndarray) -> tuple[float, float]:
        """Multiplier and KKT residual at ``u`` (see :class:`Solution`)."""
        g = self.gradient(self.accuracy, u)
        c = self.gradient(self.log_cost, u)
        fixed = self.upper - self.lower <= _ACTIVE
        at_lower = (u - self.lower <= _ACTIVE) & ~fixed
        at_upper = (self.upper - u <= _ACTIVE) & ~fixed
        free = ~(fixed | at_lower | at_upper)
        if free.any():
            multiplier = float(g[free] @ c[free] / (c[free] @ c[free]))
        elif at_upper.any():
            multiplier = float(np.min(g[at_upper] / c[at_upper]))
        elif at_lower.any():
            multiplier = float(np.max(g[at_lower] / c[at_lower]))
        else:
            return 0.0, 0.0
        excess = g - multiplier * c
        violation = np.where(free, np.abs(excess), 0.0)
        violation = np.where(at_upper, np.maximum(0.0, -excess), violation)
        violation = np.where(at_lower, np.maximum(0.0, excess), violation)
        return multiplier, float(np.max(violation)) + 0.0  # no -0.0


def _optimise(problem: _Problem) -> np.ndarray:
    """SLSQP from spread starts; a grid over the constraint surface checks the answer."""
    candidates = [_slsqp(problem, start) for start in _spread_starts(problem)]
    feasible = [u for u in candidates if u is not None]
    best = max(feasible, key=lambda u: problem.accuracy(u)[0], default=None)
    best_value = -math.inf if best is None else problem.accuracy(best)[0]
    grid_u, grid_value = _grid_best(problem)
    if grid_value > best_value + GRID_TOLERANCE:
        polished = _slsqp(problem, grid_u)
        best = grid_u
        if polished is not None and problem.accuracy(polished)[0] >= grid_value:
            best = polished
    return best


def _slsqp(problem: _Problem, start: np.ndarray) -> np.ndarray | None:
    """A local maximum from ``start``, or None if SLSQP ends off the constraint."""
    result = minimize(
        lambda u: -problem.accuracy(u)[0],
        start,
        jac=lambda u: -problem.gradient(problem.accuracy, u),
        method="SLSQP",
        bounds=list(zip(problem.lower, problem.upper)),
        constraints=[
            {
                "type": "eq",
                "fun": problem.gap,
                "jac": lambda u: problem.gradient(problem.log_cost, u),
            }
        ],
        options={"ftol": 1e-12, "maxiter": 300},
    )
    u = np.clip(result.x, problem.lower, problem.upper)
    if not np.all(np.isfinite(u)) or abs(problem.gap(u)) > _FEASIBLE:
        return None
    return u


def _spread_starts(problem: _Problem) -> list[np.ndarray]:
    """Points on the constraint surface that share the cut among d, w, r differently.

    Along ``u(t) = upper + t * s * (lower - upper)`` the cost falls from the dearest
    point; each start is where it meets the target, for shares ``s``.
    """
    rng = np.random.default_rng(0)
    shares = [np.ones(3), *(np.where(np.arange(3) == i, 1.0, 0.25) for i in range(3))]
    shares += list(rng.uniform(0.1, 1.0, size=(2, 3)))
    starts = []
    for share in shares:
        step = (share / share.max()) * (problem.lower - problem.upper)
        along = lambda t, step=step: problem.gap(problem.upper + t * step)  # noqa: E731
        t = brentq(along, 0.0, 1.0, xtol=1e-14) if along(1.0) <= 0 else 1.0
        starts.append(problem.upper + t * step)
    return starts


def _grid_best(problem: _Problem) -> tuple[np.ndarray, float]:
    """Best point of a dense grid over the constraint surface.

    Two coordinates run over a grid in log space, the third is solved from the budget
    by bisection; this is done for each choice of the third coordinate.
    """
    points = []
    for solved in range(3):
        grid_axes = [axis for axis in range(3) if axis != solved]
        mesh = np.meshgrid(
            *(np.linspace(problem.lower[a], problem.upper[a], _GRID_POINTS) for a in grid_axes)
        )
        U = np.empty((mesh[0].size, 3))
        for axis, values in zip(grid_axes, mesh):
            U[:, axis] = values.ravel()
        points.append(_solve_axis(problem, U, solved))
    U = np.vstack(points)
    if len(U) == 0:
        return problem.upper, -math.inf
    values = problem.accuracy(U)
    best = int(np.argmax(values))
    return U[best], float(values[best])


def _solve_axis(problem: _Problem, U: np.ndarray, axis: int) -> np.ndarray:
    """Set coordinate ``axis`` of each row so that the budget is met; drop rows where
    it cannot be within the bounds."""
    low = np.full(len(U), problem.lower[axis])
    high = np.full(len(U), problem.upper[axis])
    U = U.copy()
    U[:, axis] = low
    reachable = problem.log_cost(U) <= problem.log_target
    U[:, axis] = high
    reachable &= problem.log_cost(U) >= problem.log_target
    U, low, high = U[reachable], low[reachable], high[reachable]
    for _ in range(60):
        middle = (low + high) / 2
        U[:, axis] = middle
        too_dear = problem.log_cost(U) > problem.log_target
        high = np.where(too_dear, middle, high)
        low = np.where(too_dear, low, middle)
    U[:, axis] = (low + high) / 2
    return U


def _box_gradient(
    function: Callable[[np.ndarray], np.ndarray],
    u: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> np.ndarray:
    """Finite differences of a batched scalar function, all six points in one call.

    Central inside the box, one-sided at a bound, so that the function is never
    evaluated outside the box (a predictor need not be defined there).
    """
    forward = np.minimum(u + _STEP, np.maximum(upper, u))
    backward = np.maximum(u - _STEP, np.minimum(lower, u))
    eye = np.eye(len(u))
    points = np.vstack([u + eye * (forward - u), u - eye * (u - backward)])
    values = function(points)
    span = forward - backward
    # A coordinate fixed by its bounds (lower == upper) gets a zero derivative.
    return (values[: len(u)] - values[len(u) :]) / np.where(span > 0, span, 1.0)


# ---------------------------------------------------------------------- arguments


def _vectorise(cost: CostFunction | None) -> CostFunction:
    """The default cost, or ``cost`` made to accept arrays if it only takes scalars."""
    if cost is None:
        return flops_cost
    if not callable(cost):
        raise TypeError(f"cost must be callable, got {type(cost).__name__}")
    probe = np.array([0.5, 1.0])
    try:
        values = np.asarray(cost(probe, probe, probe), dtype=float)
        if values.shape == probe.shape:
            return cost
    except (TypeError, ValueError):
        pass
    return np.vectorize(lambda d, w, r: float(cost(float(d), float(w), float(r))))


def _resolve_bounds(
    predictor: Any, bounds: Bounds | Sequence[tuple[float, float]] | None
) -> Bounds:
    if isinstance(bounds, Bounds):
        return bounds
    if bounds is not None:
        pairs = [tuple(pair) for pair in bounds]
        if len(pairs) != 3 or any(len(pair) != 2 for pair in pairs):
            raise ValueError("bounds must be a Bounds or three (low, high) pairs for d, w, r")
        return Bounds(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    fitted = getattr(predictor, "bounds_", None)
    if fitted is None:
        return Bounds()
    fitted = np.asarray(fitted, dtype=float)
    if fitted.shape != (2, 3):
        raise ValueError(f"predictor.bounds_ must have shape (2, 3), got {fitted.shape}")
    return Bounds(tuple(fitted[0]), tuple(fitted[1]))


def _triple(x: np.ndarray) -> Triple:
    return Triple(float(x[0]), float(x[1]), float(x[2]))
