"""Criteria: every group scored, a dead channel ranked last, Taylor on a toy case, the oracle
report, errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from tridim.bench.oracle import criterion_oracle_correlation, oracle_scores
from tridim.cost.macs import count_macs, count_params
from tridim.prune.criteria import CRITERIA, get_criterion, score_groups
from tridim.prune.groups import channel_groups
from tridim.prune.realise import realise
from tridim.prune.slimming import prune_iteratively
from tridim.prune.width import prune_width
from tridim.training.models import build


def _batches(n=2, size=16, channels=1, classes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, channels, size, size, generator=generator),
            torch.randint(0, classes, (16,), generator=generator),
        )
        for _ in range(n)
    ]


def _randomise(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.1)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def resnet():
    model = _randomise(build("resnet20", 10, 1))
    return model, channel_groups(model, torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize("name", CRITERIA)
def test_every_criterion_scores_every_group(resnet, name):
    model, groups = resnet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = score_groups(model, groups, name, data=_batches(), seed=3)
    assert len(scores) == len(groups)
    for group, values in zip(groups, scores):
        assert values.shape == (group.size,)
        assert np.all(np.isfinite(values))
    # scoring never changes the model (BN statistics included)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _dead_channel_model():
    """The toy model with channel 2 of the first block dead: no filter, no BN scale or
    shift, no consumer. Every criterion that reads the model or its activations must
    rank it last."""
    model = _toy_model()
    with torch.no_grad():
        model[0].weight[2] = 0.0
        model[0].bias[2] = 0.0
        model[1].weight[2] = 0.0
        model[1].bias[2] = 0.0
    return model


@pytest.mark.parametrize("name", [c for c in CRITERIA if c != "random"])  # random: by chance
def test_every_criterion_ranks_a_dead_channel_last(name):
    model = _dead_channel_model()
    groups = channel_groups(model, torch.randn(1, 1, 8, 8))
    first = next(i for i, g in enumerate(groups) if g.root == "0")
    scores = score_groups(model, groups, name, data=_batches(3, size=8, classes=3), seed=1)
    values = scores[first]
    assert np.argmin(values) == 2, values
    assert np.all(np.delete(values, 2) > values[2]), values


def test_random_criterion_follows_its_seed(resnet):
    model, groups = resnet
    first = score_groups(model, groups, "random", seed=1)
    assert all(
        np.array_equal(a, b) for a, b in zip(first, score_groups(model, groups, "random", seed=1))
    )
    assert not all(
        np.array_equal(a, b) for a, b in zip(first, score_groups(model, groups, "random", seed=2))
    )


def test_residual_channels_are_scored_once_per_group(resnet):
    model, groups = resnet
    stem = next(g for g in groups if g.root == "conv1")
    assert {m.name for m in stem.batchnorms} == {
        "bn1",
        "layer1.0.bn2",
        "layer1.1.bn2",
        "layer1.2.bn2",
    }
    gammas = np.mean(
        [model.get_submodule(m.name).weight.detach().abs().numpy() for m in stem.batchnorms], axis=0
    )
    bn_scale = score_groups(model, [stem], "bn_scale")[0]
    assert np.allclose(bn_scale, gammas)


def _toy_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    _randomise(model)
    with torch.no_grad():
        model[3].weight[:, 2] = 0.0  # channel 2 of the first block feeds nothing
    return model


def test_taylor_ranks_an_irrelevant_channel_last():
    model = _toy_model()
    groups = channel_groups(model, torch.randn(1, 1, 8, 8))
    first = next(i for i, g in enumerate(groups) if g.root == "0")
    data = _batches(3, size=8, classes=3)
    for normalize in (True, False):
        taylor = get_criterion("taylor", normalize=normalize)
        scores = score_groups(model, groups, taylor, data=data)[first]
        assert np.argmin(scores) == 2 and scores[2] == 0.0
        assert np.all(np.delete(scores, 2) > 0)
    oracle = oracle_scores(model, [groups[first]], data)[0]
    assert oracle[2] == pytest.approx(0.0, abs=1e-7)
    # the normalised scores of a layer have unit L2 norm
    normalised = score_groups(model, groups, "taylor", data=data)[first]
    assert np.linalg.norm(normalised) == pytest.approx(1.0)


def test_taylor_flops_regulariser_penalises_costly_channels(resnet):
    model, groups = resnet
    data = _batches()
    plain = score_groups(model, groups, "taylor", data=data)
    penalised = score_groups(model, groups, get_criterion("taylor", flops_lambda=1e-3), data=data)
    for a, b in zip(plain, penalised):
        assert np.all(b < a) and np.all(np.isfinite(b))


def test_oracle_correlation_report_is_plain_data(resnet):
    model, groups = resnet
    report = criterion_oracle_correlation(
        model,
        _batches(),
        criteria=("taylor", "l1", "random"),
        layers=["layer1.0.conv1", "layer3.2.conv1"],
        n_batches=1,
    )
    assert report["layers"] == ["layer1.0.conv1", "layer3.2.conv1"]
    assert report["channels"] == 16 + 64
    assert set(report["overall"]) == {"taylor", "l1", "random"}
    for name in report["overall"]:
        assert set(report["per_layer"][name]) == set(report["layers"])
        for value in report["overall"][name].values():
            assert value is None or -1.0 <= value <= 1.0
    json.dumps(report)
    with pytest.raises(ValueError, match="no channel group is rooted"):
        criterion_oracle_correlation(model, _batches(), layers=["fc"], n_batches=1)


def test_criterion_errors():
    with pytest.raises(ValueError, match="unknown criterion 'magic'; known criteria: bn_scale"):
        get_criterion("magic")
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    groups = channel_groups(model, torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="use criterion='l1'"):
        score_groups(model, groups, "bn_scale")
    for name in ("taylor", "activation_mean", "activation_std"):
        with pytest.raises(ValueError, match="data-driven: pass data="):
            score_groups(model, groups, name)
    with pytest.raises(ValueError, match="flops_lambda"):
        get_criterion("taylor", flops_lambda=-1)


def test_prune_iteratively_reaches_target():
    from tridim.training.data import load

    data = load("digits").subset(train=256, val=64, test=64)
    model = _randomise(build("resnet20", 10, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    size = data.input_shape
    taylor = get_criterion("taylor", n_batches=1, batch_size=32)
    pruned = prune_iteratively(
        model,
        data,
        0.6,
        input_size=size,
        criterion=taylor,
        channels_per_step=40,
        updates_between=2,
        batch_size=32,
        quiet=True,
    )
    ratio = count_macs(pruned, size) / count_macs(model, size)
    assert abs(ratio - 0.6) <= 0.006
    # channels were physically removed from a copy; the model itself is untouched
    assert count_params(pruned) < count_params(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not pruned.training


# ----------------------------------------------------------------------------------------
# group_norm: the L2 norm of every parameter touching a channel, per group


def _conv_bn_net(middle: nn.Module, batchnorm: bool = True) -> nn.Sequential:
    """conv(1->8) [-> bn] -> relu -> middle(8->8) [-> bn] -> relu -> pool -> linear(8->3)."""
    torch.manual_seed(0)

    def norm():
        return nn.BatchNorm2d(8) if batchnorm else nn.Identity()

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        norm(),
        nn.ReLU(),
        middle,
        norm(),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    return _randomise(model)


def _squares(*tensors: torch.Tensor) -> torch.Tensor:
    """Per channel (first axis), the sum of squares over the remaining axes of each tensor."""
    return sum(t.detach().double().pow(2).reshape(t.shape[0], -1).sum(1) for t in tensors)


def _bn_squares(model: nn.Sequential, i: int) -> torch.Tensor:
    layer = model[i]
    if isinstance(layer, nn.Identity):
        return torch.zeros(8, dtype=torch.float64)
    return _squares(layer.weight, layer.bias)


def _by_mean(squares: torch.Tensor) -> np.ndarray:
    values = squares.sqrt().numpy()
    return values / values.mean()


def _scores_by_root(model: nn.Module) -> dict[str, np.ndarray]:
    groups = channel_groups(model, torch.randn(1, 1, 8, 8))
    return {g.root: s for g, s in zip(groups, score_groups(model, groups, "group_norm"))}


@pytest.mark.parametrize("batchnorm", [True, False])
def test_group_norm_is_the_l2_norm_over_producers_consumers_and_batchnorms(batchnorm):
    model = _conv_bn_net(nn.Conv2d(8, 8, 3, padding=1), batchnorm)
    first, middle, fc = model[0], model[3], model[8]
    # channel c of the first group: conv 0's filter c and bias c, BN 1's scale and shift,
    # conv 3's input slice weight[:, c] over all its filters and kernel positions
    producer = _squares(first.weight, first.bias)
    consumer = _squares(middle.weight.transpose(0, 1))
    expected = producer + _bn_squares(model, 1) + consumer
    # the second group: conv 3's filters and biases, BN 4, the classifier's columns
    second = _squares(middle.weight, middle.bias) + _bn_squares(model, 4) + _squares(fc.weight.T)
    scores = _scores_by_root(model)
    assert set(scores) == {"0", "3"}
    assert np.allclose(scores["0"], _by_mean(expected))
    assert np.allclose(scores["3"], _by_mean(second))
    # every part matters: leaving one out gives other scores
    partial = [producer + _bn_squares(model, 1), expected - _squares(first.bias)]
    if batchnorm:
        partial.append(expected - _squares(model[1].bias))
    for wrong in partial:
        assert not np.allclose(scores["0"], _by_mean(wrong))


def test_group_norm_reads_a_grouped_consumer_within_its_group():
    # conv 3 has 2 groups: weight [8, 4, 3, 3]; input channel c meets only the 4 filters
    # of its group c // 4, at column c % 4
    model = _conv_bn_net(nn.Conv2d(8, 8, 3, padding=1, groups=2))
    first, grouped = model[0], model[3]
    groups = channel_groups(model, torch.randn(1, 1, 8, 8))
    assert {g.root: g.blocks for g in groups} == {"0": 2, "3": 2}
    rows = [grouped.weight[(c // 4) * 4 : (c // 4 + 1) * 4, c % 4] for c in range(8)]
    consumer = torch.stack([r.detach().double().pow(2).sum() for r in rows])
    expected = _squares(first.weight, first.bias) + _bn_squares(model, 1) + consumer
    scores = _scores_by_root(model)
    assert np.allclose(scores["0"], _by_mean(expected))
    # the output side of the grouped conv is its plain filters
    second = _squares(grouped.weight, grouped.bias) + _bn_squares(model, 4)
    second = second + _squares(model[8].weight.T)
    assert np.allclose(scores["3"], _by_mean(second))
    # pruning by it keeps the groups equal and the model running
    pruned = prune_width(model, 0.5, example_input=torch.randn(1, 1, 8, 8), criterion="group_norm")
    assert pruned[3].groups == 2 and pruned[3].in_channels == pruned[0].out_channels < 8
    assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_group_norm_counts_a_depthwise_filter_once():
    depthwise = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
    )
    model = _conv_bn_net(depthwise)
    first, dw, pw = model[0], depthwise[0], depthwise[3]
    expected = (
        _squares(first.weight, first.bias)
        + _bn_squares(model, 1)
        + _squares(dw.weight, dw.bias)
        + _squares(depthwise[1].weight, depthwise[1].bias)
        + _squares(pw.weight.transpose(0, 1))
    )
    assert np.allclose(_scores_by_root(model)["0"], _by_mean(expected))


def test_group_norm_scores_have_mean_one_per_group(resnet):
    model, groups = resnet
    scores = score_groups(model, groups, "group_norm")
    for values in scores:
        assert values.mean() == pytest.approx(1.0)
        assert np.ptp(values) > 0
    # groups of very different magnitudes are put on the same scale
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in scaled.layer3.parameters():
            parameter.mul_(10.0)
    again = score_groups(scaled, groups, "group_norm")
    assert all(v.mean() == pytest.approx(1.0) for v in again)


def test_realise_with_group_norm_reaches_a_macs_target():
    size = (1, 16, 16)
    model = _randomise(build("resnet20", 10, 1))
    base = count_macs(model, size)
    pruned, plan = realise(
        model, (1.0, 1.0, 1.0), input_size=size, target_flops_ratio=0.5, criterion="group_norm"
    )
    assert count_macs(pruned, size) / base == pytest.approx(0.5, rel=0.01)
    assert plan.criterion == "group_norm" and plan.width_removal
    with torch.no_grad():
        assert pruned(torch.randn(2, *size)).shape == (2, 10)


def test_group_norm_works_without_batchnorm():
    model = _conv_bn_net(nn.Conv2d(8, 8, 3, padding=1), batchnorm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    scores = _scores_by_root(model)
    assert all(np.all(np.isfinite(v)) and v.mean() == pytest.approx(1.0) for v in scores.values())
    pruned = prune_width(model, 0.5, example_input=torch.randn(1, 1, 8, 8), criterion="group_norm")
    assert pruned[0].out_channels < 8 and pruned(torch.randn(2, 1, 8, 8)).shape == (2, 3)
