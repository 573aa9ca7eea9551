import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

import tridim
from tridim.training import models


def test_count_macs_matches_hand_computation():
    # conv 3->8, 3x3, stride 1, pad 1 on 10x10: 10*10*8 outputs * 3*3*3 MACs each
    # conv 8->4, 1x1, stride 2 on 10x10: 5*5*4 outputs * 8 MACs each
    # linear 4*5*5 -> 6: 100 * 6 MACs
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1, stride=2),
        nn.Flatten(),
        nn.Linear(100, 6),
    )
    expected = 10 * 10 * 8 * 27 + 5 * 5 * 4 * 8 + 100 * 6
    assert tridim.count_macs(net, (3, 10, 10)) == expected


def test_count_params():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.Linear(8, 2))
    assert tridim.count_params(net) == 3 * 8 * 9 + 8 * 2 + 2


@pytest.mark.parametrize("name,size", [("resnet20", (1, 28, 28)), ("resnet18", (3, 32, 32))])
def test_count_macs_agrees_with_torch_pruning(name, size):
    model = models.build(name, 10, size[0]).eval()
    ours = tridim.count_macs(model, size)
    theirs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *size))
    assert abs(ours - theirs) / theirs < 0.03


def test_count_macs_restores_training_mode():
    model = models.build("resnet20", 10, 1)
    model.train()
    tridim.count_macs(model, (1, 16, 16))
    assert model.training


def test_bad_input_size():
    model = models.build("resnet20", 10, 1)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        tridim.count_macs(model, (16, 16))


def test_latency_reports_a_median():
    model = models.build("resnet20", 10, 1)
    result = tridim.measure_latency(model, (1, 16, 16), batch_size=2, repeats=3, warmup=1)
    assert result["median_ms"] > 0 and result["batch_size"] == 2


def test_triple_validation_and_cost():
    assert tridim.Triple(0.5, 0.5, 1.0).cost == pytest.approx(0.125)
    for bad in (0.0, 1.5, float("nan"), "x"):
        with pytest.raises(ValueError, match="must be"):
            tridim.Triple(bad, 1.0, 1.0)
    assert tridim.Triple.from_dict({"d": 1, "w": 0.5, "r": 1}).to_dict() == {
        "d": 1.0,
        "w": 0.5,
        "r": 1.0,
    }
