"""The accuracy predictor's JSON file: writing a fitted predictor, and reading one back.

:func:`write_predictor` is behind :meth:`LowRankPolynomialRegressor.save` and
:func:`read_predictor` behind :meth:`LowRankPolynomialRegressor.load`. A file holds a
format tag and :data:`SCHEMA_VERSION`, the parameters, the coefficients, the input map
and bounds, the training data and the fit's summary; reading checks every field (keys,
types, shapes, finiteness) before anything is built from it.

This module does not import torch.
"""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tridim.atomic import atomic_write_json
from tridim.search.lowrank import count_params

if TYPE_CHECKING:  # pragma: no cover
    from tridim.search.predictor import LowRankPolynomialRegressor

__all__ = ["SCHEMA_VERSION", "predictor_payload", "write_predictor", "read_predictor"]

#: Version of the JSON layout written by :meth:`LowRankPolynomialRegressor.save`.
SCHEMA_VERSION = 1
_FORMAT = "tridim.LowRankPolynomialRegressor"
_MAX_FILE_BYTES = 50_000_000


def predictor_payload(
    estimator: LowRankPolynomialRegressor, summary: dict[str, Any]
) -> dict[str, Any]:
    """The JSON document of a fitted predictor.

    Parameters
    ----------
    estimator : LowRankPolynomialRegressor
        Fitted.
    summary : dict
        Its :meth:`~LowRankPolynomialRegressor.summary`, stored with it.

    Returns
    -------
    dict
        JSON-ready.
    """
    return {
        "format": _FORMAT,
        "schema_version": SCHEMA_VERSION,
        "params": _json_params(estimator),
        "n_features": int(estimator.n_features_in_),
        "coef": estimator.coef_.tolist(),
        "x_offset": estimator.x_offset_.tolist(),
        "x_scale": estimator.x_scale_.tolist(),
        "bounds": {"lower": estimator.bounds_[0].tolist(), "upper": estimator.bounds_[1].tolist()},
        "train": {"X": estimator.X_train_.tolist(), "y": estimator.y_train_.tolist()},
        "fit": {"n_iter": int(estimator.n_iter_), "train_rmse": float(estimator.train_rmse_)},
        "summary": summary,
    }


def write_predictor(estimator: LowRankPolynomialRegressor, path: str | os.PathLike) -> dict:
    """Write a fitted predictor to a JSON file, atomically.

    Parameters
    ----------
    estimator : LowRankPolynomialRegressor
        Fitted; its summary is computed (which runs the leave-one-out refits).
    path : str or path-like

    Returns
    -------
    dict
        The summary that was written.
    """
    summary = estimator.summary()
    atomic_write_json(path, predictor_payload(estimator, summary), indent=1)
    return summary


def read_predictor(cls: type, path: str | os.PathLike) -> LowRankPolynomialRegressor:
    """Read a predictor written by :func:`write_predictor`, validating every field.

    Parameters
    ----------
    cls : type
        The estimator class to build (:class:`LowRankPolynomialRegressor` or a subclass).
    path : str or path-like

    Returns
    -------
    LowRankPolynomialRegressor
        Fitted; its ``saved_summary_`` holds the summary stored in the file.

    Raises
    ------
    ValueError
        If the file is not a valid, complete model file of a known schema version.
    """
    data = _read_json(Path(path))
    try:
        return _build(cls, data)
    except _Invalid as error:
        raise ValueError(f"{path}: not a valid predictor file: {error}") from None


def _json_params(estimator: LowRankPolynomialRegressor) -> dict[str, Any]:
    """``get_params()`` as JSON: numpy scalars as Python numbers, a RandomState as null."""
    params = estimator.get_params()
    seed = params["random_state"]
    params["random_state"] = seed if isinstance(seed, numbers.Integral) else None
    return {
        key: value if isinstance(value, (type(None), bool)) else _plain(value)
        for key, value in params.items()
    }


def _plain(value: Any) -> Any:
    """numpy scalars to Python numbers, for JSON."""
    return value.item() if isinstance(value, np.generic) else value


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
            _require(_is_number(item), f"{where} must hold numbers only")
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
    _require(value is None or _is_number(value), f"{where} must be a number or null")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A JSON number: an int or a float, not a boolean."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    estimator.n_params_ = count_params(p, estimator.degree, estimator.rank)
    estimator.n_iter_ = fit["n_iter"]
    estimator.train_rmse_ = float(fit["train_rmse"])
    estimator.saved_summary_ = dict(summary)
    return estimator
