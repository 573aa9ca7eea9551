import numpy as np
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

import tridim
from tridim.cost.macs import count_macs
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


def _grouped_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, groups=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


@pytest.mark.parametrize(
    "name, size",
    [("resnet20", (1, 16, 16)), ("mobilenet_v2", (3, 32, 32)), ("grouped", (3, 8, 8))],
)
def test_the_analytic_macs_models_agree_with_the_measured_count(name, size):
    """The one MACs formula (layer_macs) behind the latency table's layer shapes and the
    width search's MACs model gives what torch's counter measures, before and after
    channels go (plain, depthwise and grouped convolutions)."""
    from tridim.cost.latency import layer_shapes
    from tridim.prune.groups import channel_groups
    from tridim.prune.macs_search import _MacsModel
    from tridim.prune.width import remove_channels

    model = _grouped_net() if name == "grouped" else models.build(name, 10, size[0])
    example = torch.zeros(1, *size)
    groups = channel_groups(model.eval(), example)
    analytic = _MacsModel(model, groups, example)
    assert analytic.macs() == count_macs(model, size)
    assert sum(shape.macs for shape in layer_shapes(model, size)) == count_macs(model, size)
    # a grouped layer loses the same positions in every group
    first, last = groups[0], groups[-1]
    removed = {0: np.array([0, first.size // 2]), len(groups) - 1: np.array([0, last.size // 2])}
    removal = {groups[i].root: [int(c) for c in channels] for i, channels in removed.items()}
    pruned = remove_channels(model, removal, example_input=example)
    assert count_macs(pruned, size) < count_macs(model, size)
    assert analytic.macs(removed) == count_macs(pruned, size)
