"""Criteria: shapes, finiteness, Taylor on a toy case, the oracle report, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from tridim.dims.criteria import (
    CRITERIA,
    criterion_oracle_correlation,
    get_criterion,
    oracle_scores,
    score_groups,
)
from tridim.dims.groups import channel_groups
from tridim.dims.slimming import prune_iteratively
from tridim.measure import count_macs, count_params
from tridim.models import build


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
    from tridim.data import load

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
