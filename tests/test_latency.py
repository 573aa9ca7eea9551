"""The latency table: per-layer timings composed into whole-model latency, saved as JSON."""

from __future__ import annotations

import pytest
import torch
from conftest import randomise_batchnorm

from tridim import models
from tridim.dims.depth import find_blocks, remove_blocks
from tridim.dims.resolution import with_resolution
from tridim.dims.width import prune_width_to_macs
from tridim.latency import LatencyTable, LayerShape, layer_shapes
from tridim.measure import measure_latency

SIZE = (3, 32, 32)
BATCH = 16

#: Held-out prediction error allowed here: the machine is shared and timings are noisy;
#: the benchmark reports the real figures.
TOLERANCE = 0.30


@pytest.fixture(scope="module")
def variants():
    torch.manual_seed(0)
    base = randomise_batchnorm(models.build("resnet20", 10, 3)).eval()
    names = [b.name for b in find_blocks(base, input_size=SIZE) if b.removable]
    shallow = remove_blocks(base, names[::2])
    thin = prune_width_to_macs(base, 0.5, input_size=SIZE)
    small = with_resolution(base, 0.625, SIZE)
    mixed = with_resolution(prune_width_to_macs(shallow, 0.6, input_size=SIZE), 0.75, SIZE)
    return {"base": base, "shallow": shallow, "thin": thin, "small": small, "mixed": mixed}


def test_layer_shapes_follow_the_forward_pass(variants):
    shapes = layer_shapes(variants["base"], SIZE)
    assert shapes[0] == LayerShape("conv", 3, 16, 32, 32, (3, 3), (1, 1), (1, 1), 1)
    assert shapes[-1].kind == "linear" and shapes[-1].cout == 10
    small = layer_shapes(variants["small"], SIZE)
    assert small[0].height == 20  # the layers see the reduced resolution
    assert len(layer_shapes(variants["shallow"], SIZE)) < len(shapes)


def test_calibrated_table_predicts_held_out_models(variants, tmp_path):
    table = LatencyTable("cpu", BATCH, threads=2, repeats=9)
    fit = table.calibrate([variants[k] for k in ("base", "shallow", "thin", "small")], SIZE)
    assert fit["scale"] > 0
    mixed = variants["mixed"]
    measured = measure_latency(mixed, SIZE, BATCH, repeats=9, warmup=2, threads=2)["median_ms"]
    predicted = table.predict_ms(mixed, SIZE)
    assert abs(predicted / measured - 1) < TOLERANCE, (predicted, measured)
    # cheaper models are predicted cheaper
    assert table.predict_ms(variants["thin"], SIZE) < table.predict_ms(variants["base"], SIZE)
    # saved and reloaded, the table predicts the same without timing anything again
    path = table.save(table.cache_path(tmp_path))
    again = LatencyTable.load(path)
    count = len(again.entries)
    assert again.predict_ms(mixed, SIZE) == pytest.approx(predicted)
    assert len(again.entries) == count


def test_bad_tables_are_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        LatencyTable("cpu", 0)
    (tmp_path / "x.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="not a tridim latency table"):
        LatencyTable.load(tmp_path / "x.json")
    with pytest.raises(ValueError, match="at least two models"):
        LatencyTable().calibrate([models.build("resnet20", 10, 3)], SIZE)
