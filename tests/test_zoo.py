"""The model zoo: a fast representative subset of `tridim bench zoo` (the full sweep is a benchmark)."""

from __future__ import annotations

import pytest

from tridim.bench.zoo import STEPS, summary, sweep_model

#: One of each kind: a ResNet, an inverted-residual net with SE blocks, grouped
#: convolutions, a net without BatchNorm (l1 criterion, no residual block), a channel
#: shuffle and a transformer (both refused for width, with reasons).
SUBSET = [
    "resnet18",
    "mobilenet_v3_small",
    "regnet_x_400mf",
    "squeezenet1_0",
    "shufflenet_v2_x0_5",
    "swin_t",
]


@pytest.fixture(scope="module")
def rows():
    return [sweep_model(name, size=64) for name in SUBSET]


def test_no_model_ends_in_an_unexplained_exception(rows):
    errors = {row["model"]: row[step] for row in rows for step in STEPS if "error" in row[step]}
    assert not errors, errors
    assert all(summary(rows)[step].get("error", 0) == 0 for step in STEPS)


def test_convolutional_families_pass_every_dimension(rows):
    by_name = {row["model"]: row for row in rows}
    for name in ("resnet18", "mobilenet_v3_small", "regnet_x_400mf"):
        assert all(by_name[name][step] == "ok" for step in STEPS), by_name[name]
    squeeze = by_name["squeezenet1_0"]
    assert squeeze["criterion"] == "l1" and squeeze["width"] == "ok"
    assert squeeze["depth"] == "n/a"  # no identity shortcut anywhere


def test_refusals_name_the_layer_and_the_way_out(rows):
    by_name = {row["model"]: row for row in rows}
    swin = by_name["swin_t"]
    assert swin["width"].startswith("refused: SwinTransformer is a transformer")
    assert "features.1.0.attn" in swin["width"] and swin["depth"] == "ok"
    shuffle = by_name["shufflenet_v2_x0_5"]
    assert shuffle["width"].startswith("refused: cannot trace the channels of ShuffleNetV2")
    assert shuffle["resolution"] == "ok"


def test_timm_models_build_without_weights_and_prune():
    pytest.importorskip("timm")
    row = sweep_model("timm:mobilenetv3_small_100", size=64)
    assert row["width"] == "ok" and row["reload"] == "ok", row
