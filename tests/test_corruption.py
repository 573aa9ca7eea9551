"""Corrupt anything: every file tridim reads back, mutated at random (truncated, bytes
flipped, values of the wrong type, huge numbers, NaN, keys lost), either still loads or
raises a ValueError that names the file. Never another exception, never a pickle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import tridim  # noqa: E402
from tridim import Plan, models, realise  # noqa: E402
from tridim.budget.cost_model import CostModel, macs_cost  # noqa: E402
from tridim.cost.latency import LatencyTable  # noqa: E402
from tridim.run.optimize import run_cost  # noqa: E402
from tridim.run.store import RunStore  # noqa: E402
from tridim.search.predictor import LowRankPolynomialRegressor  # noqa: E402
from tridim.search.samples import Sample, append_sample, read_samples  # noqa: E402
from tridim.training.train import load_checkpoint, save_checkpoint  # noqa: E402

SIZE = (1, 16, 16)
EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
#: What a mutated JSON value becomes.
ODD_VALUES = [None, "x", "", [], {}, -1, 0, 1e308, 10**400, True, [1, 2], {"a": 1}]


def _manifest() -> dict:
    return {
        "model": {"name": "resnet20", "num_classes": 10},
        "weights_fingerprint": "abc",
        "data": {"name": "digits", "input_shape": list(SIZE), "num_classes": 10},
        "settings": {"target_flops_ratio": 0.5, "seed": 0},
    }


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """One valid file of each kind tridim reads, and the function that reads it."""
    folder = tmp_path_factory.mktemp("originals")
    torch.manual_seed(0)
    base = randomise_batchnorm(models.build("resnet20", 10, 1)).eval()
    X = np.random.default_rng(0).uniform(0.3, 1.0, size=(14, 3))
    y = 0.9 * X[:, 0] ** 0.2 * X[:, 1] ** 0.3 * X[:, 2] ** 0.1
    LowRankPolynomialRegressor().fit(X, y).save(folder / "predictor.json")
    pruned, plan = realise(base, (1, 0.7, 0.75), input_size=SIZE)
    tridim.save(pruned, folder / "model", plan=plan)
    (folder / "plan.json").write_text(plan.to_json())
    RunStore(folder / "run").open(_manifest())
    table = LatencyTable("cpu", 2, threads=1, repeats=2)
    table.layers_ms(pruned.model, (1, 12, 12))
    table.save(folder / "latency.json")
    for i in range(3):
        append_sample(
            folder / "samples.jsonl", Sample(1.0, 1 - i / 10, 1.0, 0.9, {"key": f"w:{i}"})
        )
    save_checkpoint(folder / "trial.ckpt", pruned, epoch=2)
    cost = CostModel(base, SIZE, macs_cost, widths=(0.5, 1.0), resolutions=(0.5, 1.0))
    (folder / "cost.json").write_text(json.dumps(cost.describe()))
    readers = {
        "predictor.json": LowRankPolynomialRegressor.load,
        "model/model.json": lambda p: tridim.load(p.parent),
        "model/model.safetensors": lambda p: tridim.load(p.parent),
        "model/weights.pt": _load_from_weights_pt,
        "plan.json": Plan.load,
        "run/manifest.json": lambda p: RunStore(p.parent).check(_manifest()),
        "latency.json": LatencyTable.load,
        "samples.jsonl": read_samples,
        "trial.ckpt": lambda p: load_checkpoint(p, apply_to(plan, base)),
        "cost.json": lambda p: run_cost(p.parent / "predictor.json"),
    }
    for name in readers:
        assert (folder / name).is_file(), name
    return folder, readers


def _load_from_weights_pt(path: Path):
    """A saved model whose only weights file is ``weights.pt`` (as tridim before 0.4)."""
    (path.parent / "model.safetensors").unlink(missing_ok=True)
    return tridim.load(path.parent)


def apply_to(plan, base):
    from tridim.prune.realise import apply_plan

    return apply_plan(base, plan)


def _loads_or_names_the_file(read, path: Path) -> None:
    try:
        read(path)
    except ValueError as error:
        assert path.name in str(error), f"{type(error).__name__}: {error}"


def _leaves(value, path=()):
    """Every position in a JSON value, as key paths."""
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value[:8]):
            yield from _leaves(child, (*path, index))


def _replaced(value, path, new):
    if not path:
        return new
    head, *rest = path
    copy = dict(value) if isinstance(value, dict) else list(value)
    if new is _DELETE and not rest:
        del copy[head]
        return copy
    copy[head] = _replaced(value[head], rest, new)
    return copy


_DELETE = object()


def _copy_of(originals, name: str, tmp_path: Path) -> Path:
    """A private copy of the original's folder; returns the file's path in it."""
    import shutil

    folder, _ = originals
    source = folder / name
    target = tmp_path / source.relative_to(folder)
    shutil.copytree(source.parent, target.parent, dirs_exist_ok=True)
    return target


BYTE_NAMES = [
    "predictor.json",
    "model/model.json",
    "model/model.safetensors",
    "model/weights.pt",
    "plan.json",
    "run/manifest.json",
    "latency.json",
    "samples.jsonl",
    "trial.ckpt",
    "cost.json",
]
JSON_NAMES = [n for n in BYTE_NAMES if n.endswith(".json")]


@pytest.mark.parametrize("name", BYTE_NAMES)
@EXAMPLES
@given(data=st.data())
def test_truncated_or_flipped_bytes(originals, name, tmp_path_factory, data):
    path = _copy_of(originals, name, tmp_path_factory.mktemp("bytes"))
    content = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        content = content[: data.draw(st.integers(0, len(content) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            index = data.draw(st.integers(0, len(content) - 1), label="index")
            content[index] ^= data.draw(st.integers(1, 255), label="mask")
    path.write_bytes(bytes(content))
    _loads_or_names_the_file(originals[1][name], path)


@pytest.mark.parametrize("name", JSON_NAMES)
@EXAMPLES
@given(data=st.data())
def test_wrong_values_in_json(originals, name, tmp_path_factory, data):
    path = _copy_of(originals, name, tmp_path_factory.mktemp("json"))
    value = json.loads(path.read_text())
    where = data.draw(st.sampled_from(list(_leaves(value))), label="where")
    new = data.draw(st.sampled_from([*ODD_VALUES, math.nan, -math.inf, _DELETE]), label="new")
    if new is _DELETE and not where:
        new = None
    mutated = _replaced(value, where, new)
    path.write_text(json.dumps(mutated))  # NaN and Infinity written as JSON5 literals
    _loads_or_names_the_file(originals[1][name], path)
