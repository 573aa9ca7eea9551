"""Latency budgets: the per-layer table, C(d, w, r) from real layer shapes, runtimes, and a
latency-budget optimize run. Timing accuracy is a benchmark's job (``tridim bench
latency``); these tests check structure, monotonicity and contracts."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import randomise_batchnorm

import tridim
from tridim.budget.cost_model import CostModel, macs_cost
from tridim.budget.latency import LatencyBudget, realise_to_latency
from tridim.cost.latency import LatencyTable, LayerShape, layer_calls, layer_shapes
from tridim.cost.macs import count_macs
from tridim.cost.runtimes import time_forward, time_ratio
from tridim.prune.realise import realise
from tridim.prune.resolution import with_resolution
from tridim.training import models

SIZE = (3, 16, 16)


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return randomise_batchnorm(models.build("resnet20", 10, 3)).eval()


def test_layer_shapes_follow_the_forward_pass(base):
    shapes = layer_shapes(base, SIZE)
    assert shapes[0] == LayerShape("conv", 3, 16, 16, 16, (3, 3), (1, 1), (1, 1), 1)
    assert shapes[1].kind == "BatchNorm2d" and shapes[1].cin == 16
    assert shapes[-1].kind == "linear" and shapes[-1].cout == 10
    assert layer_shapes(with_resolution(base, 0.5, SIZE), SIZE)[0].height == 8
    convs = [s for s in shapes if s.kind == "conv"]
    assert sum(s.macs for s in shapes) == count_macs(base, SIZE)
    assert len(convs) == 21  # ResNet-20: stem, 18 block convs, 2 projection shortcuts


def test_same_padding_and_dilation_are_keyed():
    conv = torch.nn.Conv2d(4, 4, 3, padding="same", dilation=2)
    [(_, _, shape)] = layer_calls(torch.nn.Sequential(conv), (4, 8, 8))
    assert shape.padding == (2, 2) and shape.dilation == (2, 2)
    assert LayerShape.from_key(shape.key) == shape
    assert shape.macs == count_macs(conv, (4, 8, 8))


def test_macs_cost_model_is_the_measured_macs_at_grid_points(base):
    cost = CostModel(base, SIZE, macs_cost, widths=(0.5, 1.0), resolutions=(0.5, 1.0))
    assert float(cost(1, 1, 1)) == pytest.approx(1.0)
    base_macs = count_macs(base, SIZE)
    for w, r in ((0.5, 1.0), (1.0, 0.5), (0.5, 0.5)):
        model, _ = realise(base, (1, w, r), input_size=SIZE)
        assert float(cost(1, w, r)) == pytest.approx(count_macs(model, SIZE) / base_macs)
    # depth: the removable blocks' share (ResNet-20 blocks all cost alike)
    blocks, fixed = cost.blocks_total, cost.blocks_fixed
    d = (fixed + (blocks - fixed) / 2) / blocks
    assert 0.4 < float(cost(d, 1, 1)) < 0.6
    grid = np.linspace(0.3, 1, 6)
    values = cost(grid, 1, grid)
    assert np.all(np.diff(values) > 0)  # more of a dimension never costs less


def test_cost_model_interpolates_bilinearly_in_log_width_and_resolution(base):
    """Between grid points the cost is the bilinear interpolation of the measured grid in
    (log w, log r), as scipy's RegularGridInterpolator computes it; outside, clamped."""
    from scipy.interpolate import RegularGridInterpolator

    cost = CostModel(base, SIZE, macs_cost, widths=(0.3, 0.6, 1.0), resolutions=(0.5, 0.8, 1.0))
    axes = (np.log(cost.widths), np.log(cost.resolutions))
    total = RegularGridInterpolator(axes, (cost.fixed + cost.movable) / cost.base_cost)
    w, r = np.random.default_rng(1).uniform([0.3, 0.5], [1.0, 1.0], size=(200, 2)).T
    expected = total(np.stack([np.log(w), np.log(r)], axis=1))
    np.testing.assert_allclose(cost(np.ones_like(w), w, r), expected, rtol=1e-12)
    assert float(cost(1, 0.1, 0.2)) == pytest.approx(float(cost(1, 0.3, 0.5)))


def test_cost_model_reads_back_from_its_description(base):
    cost = CostModel(base, SIZE, macs_cost, widths=(0.3, 0.6, 1.0), resolutions=(0.5, 1.0))
    again = CostModel.from_dict(json.loads(json.dumps(cost.describe())))
    points = np.random.default_rng(0).uniform(0.2, 1.0, size=(3, 50))
    assert np.allclose(again(*points), cost(*points), rtol=1e-12)
    broken = {**cost.describe(), "widths": [0.6, 0.3, 1.0]}
    with pytest.raises(ValueError, match="cost.json is not a tridim cost model"):
        CostModel.from_dict(broken, source="cost.json")
    with pytest.raises(ValueError, match="cost.json is not a tridim cost model"):
        CostModel.from_dict({"name": "macs"}, source="cost.json")


def test_latency_table_is_monotone_and_reloads(base, tmp_path):
    table = LatencyTable("cpu", 2, threads=1, repeats=3)
    fit = table.calibrate([base, with_resolution(base, 0.5, SIZE)], SIZE)
    assert set(fit) == {"scale", "overhead_ms", "relative_errors", "timing"} and table.scale > 0
    assert fit["timing"]["process"] == "subprocess"
    # fewer blocks: the same layer keys minus some, so strictly less whatever the timings
    # (a lower resolution is not checked: at 16x16 and batch 2 the per-call overhead
    # dominates, and its resize layer can make it cost more)
    shallow = copy.deepcopy(base)
    shallow.layer1 = shallow.layer1[:1]
    assert table.predict_ms(shallow, SIZE) < table.predict_ms(base, SIZE)
    path = table.save(table.cache_path(tmp_path))
    assert path.name == "latency-eager-cpu-t1-b2.json"
    again = LatencyTable.load(path)
    count = len(again.entries)
    assert again.predict_ms(base, SIZE) == pytest.approx(table.predict_ms(base, SIZE))
    assert len(again.entries) == count  # nothing timed again
    # a table measured on a GPU reads back on a machine without one
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "device": "cuda:0"}))
    assert LatencyTable.load(path).device == "cuda:0"


def test_timing_leaves_the_callers_model_alone(base):
    """A model handed over in training mode, one block in eval, comes back so, with its
    BatchNorm statistics untouched (a pass in training mode would move them)."""
    model = copy.deepcopy(base).train()
    model.layer1.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    time_forward(model, SIZE, 2, repeats=3, threads=1)
    time_ratio(with_resolution(model, 0.25, SIZE), model, SIZE, 2, repeats=4, rounds=2)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_onnxruntime_tables_time_layers_with_onnxruntime(base):
    pytest.importorskip("onnxruntime")
    table = LatencyTable(batch_size=2, threads=1, repeats=3, runtime="onnxruntime")
    assert table.layers_ms(with_resolution(base, 0.25, SIZE), SIZE) > 0
    assert table.to_dict()["runtime"] == "onnxruntime"


def test_realise_to_latency_keeps_a_candidate_that_measured_within_budget(base):
    budget = LatencyBudget(target_speedup=1.25, batch_size=16, threads=1, repeats=6)
    model, plan, measured = realise_to_latency(base, (1, 1, 0.75), budget, input_size=SIZE)
    assert measured["ratio"] <= measured["target_ratio"] * (1 + budget.tolerance)
    assert measured["target_ratio"] == pytest.approx(1 / 1.25)
    assert plan.realised.r >= 0.75  # raised again when 0.75 alone was faster than asked
    assert measured["attempts"] and plan.target_flops_ratio is None
    assert model(torch.zeros(1, *SIZE)).shape == (1, 10)
    beyond = LatencyBudget(target_speedup=1000, batch_size=2, threads=1, repeats=3)
    with pytest.raises(ValueError, match="no width meets the latency budget at d=1.000"):
        realise_to_latency(base, (1, 1, 0.75), beyond, input_size=SIZE)


def test_an_absolute_budget_aims_at_the_base_latency_measured_once(base, monkeypatch):
    """Each trial of a run aims at target_ms / the base's latency measured when the budget
    was prepared; re-timing the base per trial would move the target with the clock."""

    def no_retiming(*args, **kwargs):
        raise AssertionError("the base model was timed again")

    monkeypatch.setattr(LatencyBudget, "time_ms", no_retiming)
    budget = LatencyBudget(target_latency_ms=2.0, batch_size=8, threads=1, repeats=4)
    _, _, measured = realise_to_latency(base, (1, 1, 0.75), budget, input_size=SIZE, base_ms=2.5)
    assert measured["target_ratio"] == pytest.approx(2.0 / 2.5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"target_speedup": 1.0}, "target_speedup must be a number above 1"),
        ({"target_speedup": 0.5}, "target_speedup must be a number above 1"),
        ({"target_latency_ms": -3}, "target_latency_ms must be a positive number"),
        ({"target_speedup": 2, "runtime": "tensorrt"}, "runtime must be one of eager"),
        ({"target_speedup": 2, "batch_size": 0}, "latency_batch must be a positive integer"),
        ({"target_speedup": 2, "target_latency_ms": 5}, "exactly one of"),
        ({}, "exactly one of"),
    ],
)
def test_bad_latency_budgets_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        LatencyBudget(**options)


def test_optimize_refuses_two_budgets_and_bad_ones(tiny, base_model, tmp_path):
    with pytest.raises(ValueError, match="give exactly one budget"):
        tridim.optimize(base_model, tiny, 0.5, target_speedup=2, workdir=tmp_path)
    with pytest.raises(ValueError, match="give exactly one budget"):
        tridim.optimize(base_model, tiny, workdir=tmp_path)
    with pytest.raises(ValueError, match="target_speedup must be a number above 1"):
        tridim.optimize(base_model, tiny, target_speedup=0.9, workdir=tmp_path)
    with pytest.raises(ValueError, match="latency_batch must be a positive integer"):
        tridim.optimize(base_model, tiny, target_speedup=2, latency_batch=0, workdir=tmp_path)
    with pytest.raises(ValueError, match="runtime must be one of"):
        tridim.optimize(base_model, tiny, target_speedup=2, runtime="tvm", workdir=tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_optimize_to_a_latency_budget_reports_predicted_and_measured(tiny, base_model, tmp_path):
    result = tridim.optimize(
        base_model,
        tiny,
        target_speedup=2,  # a wide margin: a 1.25x target measured 0.99x once on a busy CI machine
        latency_batch=32,
        workdir=tmp_path,
        rounds=2,
        epochs_per_step=1,
        final_epochs=1,
        refine=0,
        quiet=True,
        latency_repeats=6,
    )
    budget = result.report["budget"]
    assert budget["kind"] == "latency" and budget["runtime"] == "eager"
    assert budget["target_ratio"] == pytest.approx(1 / 2)
    assert budget["predicted_speedup"] > 1 and budget["measured_speedup"] > 1  # really faster
    assert result.report["target_flops_ratio"] is None
    assert (tmp_path / "latency.json").is_file()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    ends = manifest["settings"]["ends"]
    assert len(ends) == 3 and all(0 < x < 1 for x in ends[1:])
    assert "latency budget" in (tmp_path / "report.md").read_text()
    assert result.model(torch.zeros(1, *tiny.input_shape)).shape == (1, 10)


def test_cli_refuses_bad_latency_budgets_before_training(tmp_path, capsys):
    from tridim.cli import main

    for arguments, message in (
        (["--target-speedup", "0.8"], "target_speedup must be a number above 1"),
        (["--target-speedup", "2", "--latency-batch", "0"], "latency_batch must be a positive"),
        (["--target", "0.5", "--target-speedup", "2"], "give one budget"),
    ):
        status = main(["optimize", "--workdir", str(tmp_path / "w"), *arguments])
        error = capsys.readouterr().err
        assert status == 2 and message in error and "Traceback" not in error
    assert not (tmp_path / "w").exists()


def _fake_attempt(cost):
    """An attempt(w, r) whose measured ratio is ``cost(w, side)`` on a 16-pixel input."""
    calls = []

    def attempt(w, r):
        calls.append((w, round(r * 16)))
        return ("model", (w, r), cost(w, round(r * 16)))

    return attempt, calls


def test_a_too_fast_full_width_candidate_gets_resolution_back():
    from tridim.budget.latency import _give_resolution_back

    attempt, calls = _fake_attempt(lambda w, side: w**2 * (side / 16) ** 2)
    start = attempt(1.0, 7 / 16)  # the table's triple: 0.19, far faster than 0.667
    _, (w, r), ratio = _give_resolution_back(attempt, start, 7 / 16, (1, 16, 16), 2 / 3, 0.05)
    assert (w, round(r * 16)) == (1.0, 13) and ratio == pytest.approx(169 / 256)
    assert len(calls) <= 5  # bisection over sides, not every side


def test_between_two_sides_width_meets_the_budget_at_the_larger_one():
    from tridim.budget.latency import _give_resolution_back

    # side 11 full width: 0.61 (meets, too fast); side 12: 0.73 (misses): width at 12
    attempt, _ = _fake_attempt(lambda w, side: 1.3 * w**2 * (side / 16) ** 2)
    start = attempt(1.0, 7 / 16)
    _, (w, r), ratio = _give_resolution_back(attempt, start, 7 / 16, (1, 16, 16), 2 / 3, 0.05)
    assert round(r * 16) == 12 and w < 1.0
    assert 2 / 3 * 0.95 <= ratio <= 2 / 3 * 1.05
