"""Width pruning: physical removal equals masking, replay, MACs targets, bad input."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

from tridim.dims.width import (
    bn_l1_penalty,
    channel_groups,
    compose_removals,
    prune_width,
    prune_width_to_macs,
    remove_channels,
    select_channels,
    sparsity_strength,
)
from tridim.measure import count_macs, count_params
from tridim.models import build

SIZE = (3, 32, 32)


def randomise_batchnorms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN varied scales, shifts and statistics (a fresh model has gamma = 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.1)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return model.eval()


def masked_copy(model: nn.Module, removal: dict[str, list[int]], example: torch.Tensor):
    """The unpruned model with the removed channels zeroed right after their BN.

    Zeroing gamma and beta of a channel in *every* BN of its group makes that channel's
    BN output exactly 0. Each of these BNs is followed by an op mapping 0 to 0 (ReLU,
    ReLU6, Hardswish, max/avg pooling, a residual add whose other operand is the same
    zeroed channel, a concatenation, or an SE scale multiplying the zeroed map), so the
    channel is 0 everywhere it flows, residual stream included, and the layers reading it
    get exactly the contribution they lose when the channel is removed. Groups without BN
    (SE squeeze convs, VGG's hidden Linear layers) are masked by zeroing the producers'
    output rows and biases instead, followed by ReLU / Hardswish.
    """
    masked = copy.deepcopy(model)
    groups = {g.root: g for g in channel_groups(masked, example)}
    with torch.no_grad():
        for root, idxs in removal.items():
            group = groups[root]
            points = group.batchnorms or group.producers
            for member in points:
                positions = [i for i, r in zip(member.idxs, member.root_idxs) if r in idxs]
                layer = masked.get_submodule(member.name)
                layer.weight[positions] = 0.0
                if layer.bias is not None:
                    layer.bias[positions] = 0.0
    return masked


MODELS = [
    "resnet20",
    "resnet18",
    "resnet50",
    "vgg11_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
]


@pytest.mark.parametrize("name", MODELS)
def test_pruned_equals_masked(name):
    torch.manual_seed(0)
    model = randomise_batchnorms(build(name, num_classes=10, in_channels=3))
    example = torch.randn(1, *SIZE)
    x = torch.randn(2, *SIZE)
    pruned = prune_width(model, 0.6, example_input=example, criterion="random", seed=1)
    removal = pruned.tridim_width_removal
    assert removal, "nothing was removed"
    masked = masked_copy(model, removal, example)
    with torch.no_grad():
        expected, got = masked(x), pruned.eval()(x)
        assert not torch.allclose(model(x), expected, atol=1e-4)  # masking matters
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()
    assert count_macs(pruned, SIZE) < count_macs(model, SIZE)
    assert count_params(pruned) < count_params(model)
    # the classifier's outputs are never touched
    assert pruned(x).shape == (2, 10)


def test_pruned_model_trains_copies_and_saves():
    model = randomise_batchnorms(build("resnet20", 10, 3))
    pruned = prune_width(model, 0.5, example_input=torch.randn(1, *SIZE))
    pruned.train()
    optimiser = torch.optim.SGD(pruned.parameters(), lr=0.1)
    x, y = torch.randn(8, *SIZE), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(pruned(x), y)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss)
    clone = copy.deepcopy(pruned).eval()
    pruned.eval()
    assert torch.equal(clone(x), pruned(x))
    assert clone.tridim_width_removal == pruned.tridim_width_removal
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    replayed = remove_channels(
        build("resnet20", 10, 3), pruned.tridim_width_removal, example_input=torch.randn(1, *SIZE)
    )
    replayed.load_state_dict(state)
    assert torch.equal(replayed.eval()(x), pruned(x))


def _shapes(model):
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def test_replay_after_depth_pruning_and_composition():
    model = randomise_batchnorms(build("resnet20", 10, 3))
    model.layer2[2] = nn.Identity()  # depth pruning keeps the other names
    example = torch.randn(1, *SIZE)
    once = prune_width(model, 0.8, example_input=example, criterion="l1")
    twice = prune_width(once, 0.7, example_input=example, criterion="l2")
    fresh = build("resnet20", 10, 3)
    fresh.layer2[2] = nn.Identity()
    replayed = remove_channels(fresh, twice.tridim_width_removal, example_input=example)
    assert _shapes(replayed) == _shapes(twice)
    replayed.load_state_dict(twice.state_dict())
    x = torch.randn(2, *SIZE)
    assert torch.equal(replayed.eval()(x), twice.eval()(x))
    # the composed removal names channels of the full-width model
    removal = twice.tridim_width_removal
    full_conv = model.get_submodule("layer3.0.conv1")

    def kept(root, width):
        return [i for i in range(width) if i not in set(removal.get(root, []))]

    expected = full_conv.weight[kept("layer3.0.conv1", 64)][:, kept("layer2.0.conv2", 32)]
    assert torch.equal(twice.layer3[0].conv1.weight, expected)


def test_select_is_plain_data_and_respects_floors():
    model = randomise_batchnorms(build("resnet20", 10, 3))
    example = torch.randn(1, *SIZE)
    removal = select_channels(model, 0.05, example_input=example)
    groups = {g.root: g for g in channel_groups(model, example)}
    for root, idxs in removal.items():
        assert idxs == sorted(idxs) and all(isinstance(i, int) for i in idxs)
        assert len(idxs) < groups[root].size  # never empties a layer
    assert "fc" not in removal
    assert select_channels(model, 1.0, example_input=example) == {}
    assert compose_removals(model, None, removal) == removal


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_prune_width_to_macs_hits_targets(name):
    model = randomise_batchnorms(build(name, 10, 3))
    base = count_macs(model, SIZE)
    for target in (0.7, 0.5, 0.3):
        pruned = prune_width_to_macs(model, target, input_size=SIZE)
        ratio = count_macs(pruned, SIZE) / base
        assert abs(ratio - target) <= 0.01 * target, (target, ratio)


def test_prune_width_to_macs_unreachable():
    model = randomise_batchnorms(build("resnet20", 10, 3))
    with pytest.raises(ValueError, match="could not reach"):
        prune_width_to_macs(model, 0.001, input_size=SIZE)


def test_bad_inputs():
    model = build("resnet20", 10, 3)
    example = torch.randn(1, *SIZE)
    for w in (0.0, 1.5, -1, float("nan")):
        with pytest.raises(ValueError, match=r"w must be in \(0, 1\]"):
            prune_width(model, w, example_input=example)
    with pytest.raises(ValueError, match="known criteria: bn_scale, taylor"):
        prune_width(model, 0.5, example_input=example, criterion="nope")
    with pytest.raises(ValueError, match="data-driven"):
        prune_width(model, 0.5, example_input=example, criterion="taylor")
    no_bn = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    with pytest.raises(ValueError, match="criterion='l1'"):
        prune_width(no_bn, 0.5, example_input=example)
    assert prune_width(no_bn, 0.5, example_input=example, criterion="l1")[0].out_channels < 8
    with pytest.raises(ValueError, match="not the root of a prunable"):
        remove_channels(model, {"nope": [0]}, example_input=example)
    with pytest.raises(ValueError, match="not the root of a prunable"):
        remove_channels(model, {"fc": [0]}, example_input=example)
    with pytest.raises(ValueError, match="out of range"):
        remove_channels(model, {"layer1.0.conv1": [16]}, example_input=example)
    with pytest.raises(ValueError, match="all 16 channels"):
        remove_channels(model, {"layer1.0.conv1": list(range(16))}, example_input=example)
    with pytest.raises(ValueError, match="same channel group"):
        remove_channels(model, {"conv1": [0], "layer1.0.conv2": [1]}, example_input=example)


class Scale(nn.Module):
    """A layer type the dependency graph has no rule for."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


def test_unsupported_layer_is_named_and_can_be_ignored():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        Scale(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    randomise_batchnorms(model)
    example = torch.randn(1, *SIZE)
    with pytest.raises(ValueError, match=r"layer '2' \(Scale\)"):
        prune_width(model, 0.5, example_input=example)
    pruned = prune_width(model, 0.5, example_input=example, ignored_layers=["2"])
    assert pruned[0].out_channels == 8 and pruned[4].out_channels < 8
    assert pruned(example).shape == (1, 2)


def test_bn_l1_penalty():
    model = build("resnet20", 10, 3)
    penalty = bn_l1_penalty(model)
    assert sparsity_strength(model) == 1e-5
    assert sparsity_strength(build("vgg11_bn", 10, 3)) == 1e-4
    value = penalty(model)
    value.backward()
    assert value.item() == pytest.approx(1e-5 * 784)
    assert model.bn1.weight.grad is not None
    with pytest.raises(ValueError, match="BatchNorm"):
        bn_l1_penalty(nn.Sequential(nn.Conv2d(3, 4, 3)))
