"""The model zoo: a fast representative subset of `tridim bench zoo` (the full sweep is a benchmark)."""

from __future__ import annotations

import subprocess
import sys

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


def test_the_command_line_skips_timm_until_a_timm_model_needs_it():
    """torch_pruning's own timm import (its op counter, unused) is skipped by the command
    line, and a timm model still builds and prunes afterwards."""
    pytest.importorskip("timm")
    script = (
        "import sys\n"
        "from tridim.cli import _import_torch_pruning_without_timm\n"
        "_import_torch_pruning_without_timm()\n"
        "assert 'torch_pruning' in sys.modules and 'timm' not in sys.modules, 'timm imported'\n"
        "from tridim.bench.zoo import sweep_model\n"
        "row = sweep_model('timm:mobilenetv3_small_100', size=64)\n"
        "assert row['width'] == 'ok', row\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
