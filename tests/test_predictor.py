"""The low-rank polynomial accuracy predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from tridim.search.predictor import EXPECTED_FAILED_CHECKS, LowRankPolynomialRegressor


def _cubic(coefficients, x):
    return sum(c * x**i for i, c in enumerate(coefficients))


def _rank1(X):
    return (
        _cubic([0.2, 1.0, -0.4, 0.1], X[:, 0])
        * _cubic([1.5, -0.3, 0.8, -0.6], X[:, 1])
        * _cubic([0.4, 0.5, 0.2, 0.3], X[:, 2])
    )


def _rank2(X):
    second = (
        _cubic([0.0, 0.0, 1.0, 0.0], X[:, 0])
        * _cubic([0.5, 1.0, 0.0, 0.0], X[:, 1])
        * _cubic([1.0, 0.0, 0.0, -1.0], X[:, 2])
    )
    return _rank1(X) + second


def _uniform(n, seed, columns=3):
    return np.random.default_rng(seed).uniform(0.2, 1.0, size=(n, columns))


def _axis_aligned(target=0.3, rounds=4):
    """The base point and ``rounds`` points along each axis, as data collection makes."""
    lows = (target, np.sqrt(target), np.sqrt(target))
    rows = [(1.0, 1.0, 1.0)]
    for axis, low in enumerate(lows):
        for k in range(1, rounds + 1):
            row = [1.0, 1.0, 1.0]
            row[axis] = 1 - k * (1 - low) / rounds
            rows.append(tuple(row))
    return np.array(rows)


@pytest.fixture(scope="module")
def noisy_fit():
    X = _axis_aligned()
    truth = 0.93 * (1 - 0.3 * (1 - X[:, 0]) ** 2) * (1 - 0.5 * (1 - X[:, 1]) ** 1.5)
    y = truth + np.random.default_rng(1).normal(0, 0.002, len(X))
    return LowRankPolynomialRegressor(n_bootstrap=20).fit(X, y)


@pytest.mark.parametrize(("truth", "rank", "n"), [(_rank1, 1, 25), (_rank2, 2, 40)])
def test_exact_recovery_from_noiseless_samples(truth, rank, n):
    X = _uniform(n, seed=rank)
    est = LowRankPolynomialRegressor(rank=rank).fit(X, truth(X))
    X_new = _uniform(200, seed=10)
    np.testing.assert_allclose(est.predict(X_new), truth(X_new), atol=1e-8)
    assert est.train_rmse_ < 1e-10


def test_rank1_cannot_represent_a_rank2_polynomial():
    X = _uniform(40, seed=2)
    est = LowRankPolynomialRegressor(rank=1).fit(X, _rank2(X))
    assert est.train_rmse_ > 1e-3


def test_any_number_of_columns():
    X = _uniform(30, seed=3, columns=4)
    y = (1 + X[:, 0]) * (2 - X[:, 1]) * X[:, 2] ** 2 * (0.5 + X[:, 3] ** 3)
    est = LowRankPolynomialRegressor().fit(X, y)
    assert est.n_features_in_ == 4 and est.coef_.shape == (1, 4, 4)
    np.testing.assert_allclose(est.predict(X), y, atol=1e-8)


def test_too_few_samples_says_how_many_are_needed():
    X = _uniform(9, seed=4)
    with pytest.raises(ValueError, match="needs at least 10 samples; got 9"):
        LowRankPolynomialRegressor().fit(X, _rank1(X))
    with pytest.raises(ValueError, match="needs at least 20 samples"):
        LowRankPolynomialRegressor(rank=2).fit(_uniform(19, seed=4), np.ones(19))
    est = LowRankPolynomialRegressor(alpha=1e-3).fit(X, _rank1(X))
    assert est.predict(X).shape == (9,)


def test_thirteen_axis_aligned_samples_fit_rank1():
    X = _axis_aligned()
    est = LowRankPolynomialRegressor().fit(X, _rank1(X))
    assert est.n_params_ == 10
    np.testing.assert_allclose(est.predict(X), _rank1(X), atol=1e-8)
    # a separable surface is fixed by its axes: the fit must hold off them too
    mixed = _uniform(100, seed=5)
    np.testing.assert_allclose(est.predict(mixed), _rank1(mixed), atol=1e-7)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.ones((5, 2)), "features"),
        (np.array([[0.5, np.nan, 1.0]]), "NaN"),
        (np.array([0.5, 1.0, 1.0]), "2D array"),
    ],
)
def test_bad_input_to_predict(noisy_fit, X, message):
    with pytest.raises(ValueError, match=message):
        noisy_fit.predict(X)


@pytest.mark.parametrize(
    "params", [{"degree": -1}, {"rank": 0}, {"alpha": -1.0}, {"n_starts": 1.5}, {"rank": True}]
)
def test_bad_parameters(params):
    X = _uniform(30, seed=5)
    with pytest.raises(ValueError, match=next(iter(params))):
        LowRankPolynomialRegressor(**params).fit(X, _rank1(X))


def test_bad_training_input():
    X = _uniform(30, seed=6)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        LowRankPolynomialRegressor().fit(X, np.ones(29))
    y = _rank1(X)
    y[3] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        LowRankPolynomialRegressor().fit(X, y)


def test_diagnostics(noisy_fit):
    summary = noisy_fit.summary()
    assert summary["n_samples"] == 13 and summary["n_params"] == 10
    assert 0 < summary["train_rmse"] < summary["loo_rmse"] < 0.05
    assert 0.9 < summary["r2"] <= 1.0
    X = np.array([[0.6, 0.7, 0.8], [1.0, 1.0, 1.0]])
    mean, std = noisy_fit.predict(X, return_std=True)
    np.testing.assert_array_equal(mean, noisy_fit.predict(X))
    assert np.all(std > 0)
    assert std[0] > std[1], "off-axis points are less certain than the base point"
    lower, upper = noisy_fit.predict_interval(X, coverage=0.9)
    assert np.all(lower < mean) and np.all(mean < upper)


def test_save_load_round_trip(tmp_path, noisy_fit):
    path = tmp_path / "predictor.json"
    summary = noisy_fit.save(path)
    loaded = LowRankPolynomialRegressor.load(path)
    X = _uniform(50, seed=7)
    np.testing.assert_array_equal(loaded.predict(X), noisy_fit.predict(X))
    np.testing.assert_array_equal(loaded.bounds_, noisy_fit.bounds_)
    assert loaded.get_params() == noisy_fit.get_params()
    assert loaded.saved_summary_ == summary
    assert json.loads(path.read_text())["schema_version"] == 1


def _corrupt(data, change):
    data = json.loads(json.dumps(data))
    change(data)
    return json.dumps(data)


_CORRUPTIONS = {
    "truncated": lambda text, data: text[: len(text) // 2],
    "not json": lambda text, data: "\x00\x01binary",
    "not an object": lambda text, data: "[1, 2, 3]",
    "NaN literal": lambda text, data: text.replace('"alpha": 0.0', '"alpha": NaN'),
    "future schema": lambda text, data: _corrupt(data, lambda d: d.update(schema_version=2)),
    "wrong format": lambda text, data: _corrupt(data, lambda d: d.update(format="pickle")),
    "unknown key": lambda text, data: _corrupt(data, lambda d: d.update(__reduce__="os.system")),
    "missing coef": lambda text, data: _corrupt(data, lambda d: d.pop("coef")),
    "coef shape": lambda text, data: _corrupt(data, lambda d: d["coef"][0].pop()),
    "string number": lambda text, data: _corrupt(data, lambda d: d["x_scale"].__setitem__(0, "1")),
    "bool number": lambda text, data: _corrupt(data, lambda d: d["x_offset"].__setitem__(0, True)),
    "zero scale": lambda text, data: _corrupt(data, lambda d: d["x_scale"].__setitem__(0, 0)),
    "bad param": lambda text, data: _corrupt(data, lambda d: d["params"].update(rank=-1)),
    "extra param": lambda text, data: _corrupt(data, lambda d: d["params"].update(evil="x")),
    "deep nesting": lambda text, data: "[" * 100_000 + "]" * 100_000,
}


@pytest.fixture(scope="module")
def saved_text(tmp_path_factory, noisy_fit):
    path = tmp_path_factory.mktemp("saved") / "predictor.json"
    noisy_fit.save(path)
    return path.read_text()


@pytest.mark.parametrize("name", sorted(_CORRUPTIONS))
def test_load_rejects_corrupted_files(tmp_path, saved_text, name):
    text = saved_text
    bad = tmp_path / "bad.json"
    bad.write_text(_CORRUPTIONS[name](text, json.loads(text)))
    with pytest.raises(ValueError, match="not a valid predictor file|unsupported"):
        LowRankPolynomialRegressor.load(bad)


@parametrize_with_checks(
    # Fewer starts than the default keep the checks fast; they exercise the API.
    [LowRankPolynomialRegressor(n_starts=3)],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
