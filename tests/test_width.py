"""Width pruning: physical removal equals masking, replay, MACs targets, bad input."""

from __future__ import annotations

import ast
import copy
import io
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tridim.cost.macs import count_macs, count_params
from tridim.prune.groups import channel_groups, layer_geometry
from tridim.prune.slimming import bn_l1_penalty, sparsity_strength
from tridim.prune.width import (
    compose_removals,
    prune_width,
    prune_width_to_macs,
    remove_channels,
    select_channels,
    select_channels_for_macs,
)
from tridim.training.models import build

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


def _shapes(model):
    return [(name, tuple(t.shape)) for name, t in model.state_dict().items()]


def _same_model(a: nn.Module, b: nn.Module) -> bool:
    """Same state-dict keys, shapes and values."""
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def _tridim_attributes(model: nn.Module) -> set[str]:
    return {
        name for module in model.modules() for name in vars(module) if name.startswith("tridim_")
    }


MODELS = [
    "resnet20",
    "resnet18",
    "resnet50",
    "vgg11_bn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "densenet121",
    "resnext50_32x4d",  # grouped 3x3 convolutions (32 groups)
    "regnet_x_400mf",  # grouped convolutions, groups of 16 channels
    "regnet_y_400mf",  # grouped convolutions and squeeze-excitation
]


@pytest.mark.parametrize("name", MODELS)
def test_pruned_equals_masked(name):
    torch.manual_seed(0)
    model = randomise_batchnorms(build(name, num_classes=10, in_channels=3))
    example = torch.randn(1, *SIZE)
    x = torch.randn(2, *SIZE)
    removal = select_channels(model, 0.6, example_input=example, criterion="random", seed=1)
    assert removal, "nothing was removed"
    pruned = remove_channels(model, removal, example_input=example)
    # prune_width is select_channels + remove_channels
    direct = prune_width(model, 0.6, example_input=example, criterion="random", seed=1)
    assert _same_model(direct, pruned)
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
    example = torch.randn(1, *SIZE)
    removal = select_channels(model, 0.5, example_input=example)
    pruned = remove_channels(model, removal, example_input=example)
    # pruning passes data back: the model carries nothing but the spec build gave it
    assert _tridim_attributes(pruned) == _tridim_attributes(model) == {"tridim_spec"}
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
    buffer = io.BytesIO()
    torch.save(pruned.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    replayed = remove_channels(build("resnet20", 10, 3), removal, example_input=example)
    replayed.load_state_dict(state)
    assert torch.equal(replayed.eval()(x), pruned(x))


def test_replay_after_depth_pruning_and_composition():
    model = randomise_batchnorms(build("resnet20", 10, 3))
    model.layer2[2] = nn.Identity()  # depth pruning keeps the other names
    example = torch.randn(1, *SIZE)
    first = select_channels(model, 0.8, example_input=example, criterion="l1")
    once = remove_channels(model, first, example_input=example)
    second = select_channels(once, 0.7, example_input=example, criterion="l2")
    twice = remove_channels(once, second, example_input=example)
    direct = prune_width(
        prune_width(model, 0.8, example_input=example, criterion="l1"),
        0.7,
        example_input=example,
        criterion="l2",
    )
    assert _same_model(direct, twice)
    # the composed removal replays both prunings in one call
    removal = compose_removals(once, first, second)
    fresh = build("resnet20", 10, 3)
    fresh.layer2[2] = nn.Identity()
    replayed = remove_channels(fresh, removal, example_input=example)
    assert _shapes(replayed) == _shapes(twice)
    replayed.load_state_dict(twice.state_dict())
    x = torch.randn(2, *SIZE)
    assert torch.equal(replayed.eval()(x), twice.eval()(x))
    # the composed removal names channels of the full-width model
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
    before = copy.deepcopy(model)
    for target in (0.7, 0.5, 0.3):
        pruned = prune_width_to_macs(model, target, input_size=SIZE)
        ratio = count_macs(pruned, SIZE) / base
        assert abs(ratio - target) <= 0.01 * target, (target, ratio)
    # prune_width_to_macs is select_channels_for_macs + remove_channels
    removal = select_channels_for_macs(model, 0.3, input_size=SIZE)
    assert _same_model(model, before)  # selecting leaves the model alone
    replayed = remove_channels(model, removal, example_input=torch.zeros(1, *SIZE))
    assert _same_model(replayed, pruned)


def test_prune_width_to_macs_unreachable():
    model = randomise_batchnorms(build("resnet20", 10, 3))
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="could not reach"):
        prune_width_to_macs(model, 0.001, input_size=SIZE)
    with pytest.raises(ValueError, match="could not reach"):
        select_channels_for_macs(model, 0.001, input_size=SIZE)
    with pytest.raises(ValueError, match="could not reach"):
        prune_width_to_macs(model, 0.001, input_size=SIZE, inplace=True)
    assert _same_model(model, before)


def test_prune_width_to_macs_inplace_equals_copy():
    model = randomise_batchnorms(build("resnet20", 10, 3))
    copied = prune_width_to_macs(model, 0.5, input_size=SIZE, criterion="l1")
    same = prune_width_to_macs(model, 0.5, input_size=SIZE, criterion="l1", inplace=True)
    assert same is model and _same_model(model, copied)


def _grouped_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels
    }


@pytest.mark.parametrize("name", ["resnext50_32x4d", "regnet_x_400mf"])
def test_grouped_convolutions_lose_the_same_channels_in_every_group(name):
    model = randomise_batchnorms(build(name, 10, 3))
    base = count_macs(model, SIZE)
    removal = select_channels_for_macs(model, 0.5, input_size=SIZE)
    pruned = remove_channels(model, removal, example_input=torch.zeros(1, *SIZE))
    ratio = count_macs(pruned, SIZE) / base
    assert abs(ratio - 0.5) <= 0.005, ratio
    before, after = _grouped_convs(model), _grouped_convs(pruned)
    assert before.keys() == after.keys()
    thinner = 0
    for layer, conv in after.items():
        assert conv.groups == before[layer].groups  # groups survive, equally sized
        assert conv.weight.shape[1] * conv.groups == conv.in_channels
        assert conv.out_channels % conv.groups == 0
        thinner += conv.out_channels < before[layer].out_channels
    assert thinner > 0, "no grouped convolution was pruned"
    # a removal that empties one position of one group only is refused, naming the fix
    groups = {g.root: g for g in channel_groups(model, torch.zeros(1, *SIZE)) if g.blocks > 1}
    root, group = next(iter(groups.items()))
    with pytest.raises(ValueError, match="same positions from every group"):
        remove_channels(model, {root: [0]}, example_input=torch.zeros(1, *SIZE))
    whole = remove_channels(
        model, {root: list(group.slot_channels(0))}, example_input=torch.zeros(1, *SIZE)
    )
    assert whole(torch.zeros(2, *SIZE)).shape == (2, 10)


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
    """A per-channel scale held directly by a module (like ConvNeXt's layer scale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class Mix(nn.Module):
    """A layer type the dependency graph has no rule for: it mixes channels."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(channels))

    def forward(self, x):
        return torch.einsum("oc,nchw->nohw", self.weight, x)


def _net_with(layer: nn.Module) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        layer,
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    return randomise_batchnorms(model)


def test_unsupported_layer_is_named_and_can_be_ignored():
    model = _net_with(Mix(8))
    example = torch.randn(1, *SIZE)
    with pytest.raises(ValueError, match=r"layer '2' \(Mix\)"):
        prune_width(model, 0.5, example_input=example)
    pruned = prune_width(model, 0.5, example_input=example, ignored_layers=["2"])
    assert pruned[0].out_channels == 8 and pruned[4].out_channels < 8
    assert pruned(example).shape == (1, 2)


class GainConv(nn.Conv2d):
    """A convolution subclass with one more parameter (like timm's ScaledStdConv2d)."""

    def __init__(self):
        super().__init__(8, 8, 3)
        self.gain = nn.Parameter(torch.ones(8, 1, 1, 1))

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.gain, self.bias)


def test_a_known_layer_with_extra_parameters_is_refused():
    model = _net_with(GainConv())
    example = torch.randn(1, *SIZE)
    with pytest.raises(ValueError, match=r"layer '2' \(GainConv\) adds parameters \['gain'\]"):
        prune_width(model, 0.5, example_input=example)
    pruned = prune_width(model, 0.5, example_input=example, ignored_layers=["2"])
    assert pruned[0].out_channels == 8 and pruned[4].out_channels < 8
    assert pruned(example).shape == (1, 2)


def test_per_channel_parameters_are_pruned_with_their_channels():
    model = _net_with(Scale(8))
    example = torch.randn(1, *SIZE)
    removal = select_channels(model, 0.5, example_input=example, criterion="l1")
    assert "0" in removal
    pruned = remove_channels(model, removal, example_input=example)
    kept = [c for c in range(8) if c not in removal["0"]]
    assert torch.equal(pruned[2].weight, model[2].weight[kept])
    masked = masked_copy(model, removal, example)
    with torch.no_grad():
        assert torch.allclose(pruned(example), masked(example), atol=1e-5)


def test_transformers_are_refused_for_width():
    from torchvision.models import vit_b_32

    model = vit_b_32(num_classes=10)
    with pytest.raises(ValueError, match="is a transformer.*depth and resolution only"):
        prune_width(model, 0.5, example_input=torch.randn(1, 3, 224, 224))


def test_bn_l1_penalty():
    model = build("resnet20", 10, 3)
    penalty = bn_l1_penalty(model)
    assert sparsity_strength(model) == 1e-5
    assert sparsity_strength(build("vgg11_bn", 10, 3)) == 1e-4
    assert sparsity_strength(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))) == 1e-5
    value = penalty(model)
    value.backward()
    assert value.item() == pytest.approx(1e-5 * 784)
    assert model.bn1.weight.grad is not None
    with pytest.raises(ValueError, match="BatchNorm"):
        bn_l1_penalty(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_layer_geometry():
    model = build("resnet20", 10, 3)
    geometry = layer_geometry(model, torch.randn(2, *SIZE))
    assert geometry["conv1"] == {"positions": 32 * 32, "kernel": 9, "groups": 1}
    assert geometry["layer3.0.conv1"] == {"positions": 8 * 8, "kernel": 9, "groups": 1}
    assert geometry["fc"] == {"positions": 1, "kernel": 1, "groups": 1}
    # a layer's MACs: out * in / groups * kernel (its weight's size) per output position
    macs = sum(
        layer.weight.numel() * geometry[name]["positions"]
        for name, layer in model.named_modules()
        if name in geometry
    )
    assert macs == count_macs(model, SIZE)


DIMS = Path(__file__).resolve().parent.parent / "tridim" / "prune"


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = ["tridim", "prune"][: 3 - node.level] if node.level else []
            base = ".".join(package + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_groups_depend_on_neither_width_nor_criteria():
    imported = _imported_modules(DIMS / "groups.py")
    assert "torch" in imported and "tridim.prune.width" in _imported_modules(DIMS / "slimming.py")
    for module in ("tridim.prune.width", "tridim.prune.criteria", "tridim.prune.slimming"):
        assert module not in imported
    # the criteria use the groups, not the width pruner
    assert "tridim.prune.width" not in _imported_modules(DIMS / "criteria.py")


def _tridim_attribute_uses(path: Path) -> list[str]:
    """``x.tridim_*`` accesses and ``get/set/has/delattr(x, "tridim_*")`` calls."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("tridim_"):
            uses.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("tridim_")
        ):
            uses.append(f"{path.name}:{node.lineno} {node.func.id}({node.args[1].value!r})")
    return uses


def test_dims_modules_neither_set_nor_read_tridim_attributes():
    paths = sorted(DIMS.glob("*.py"))
    assert {"groups.py", "criteria.py", "width.py", "slimming.py", "depth.py"} <= {
        p.name for p in paths
    }
    assert [use for path in paths for use in _tridim_attribute_uses(path)] == []


@pytest.mark.parametrize("name", ["resnet20", "mobilenet_v2"])
def test_channel_multiple_keeps_every_pruned_layer_a_multiple(name):
    model = randomise_batchnorms(build(name, 10, 3)).eval()
    size = (3, 32, 32)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pruned = prune_width_to_macs(model, 0.5, input_size=size, channel_multiple=8, tolerance=0.05)
    ratio = count_macs(pruned, size) / count_macs(model, size)
    assert ratio == pytest.approx(0.5, rel=0.05)
    changed = 0
    for n, m in pruned.named_modules():
        if isinstance(m, nn.Conv2d) and m.out_channels != widths[n]:
            changed += 1
            assert m.out_channels % 8 == 0, (n, m.out_channels)
    assert changed > 5
    assert pruned(torch.zeros(2, *size)).shape == (2, 10)
    # the default prunes to counts that are not multiples (the option is what does it)
    free = prune_width_to_macs(model, 0.5, input_size=size, tolerance=0.05)
    assert any(m.out_channels % 8 for m in free.modules() if isinstance(m, nn.Conv2d))


def test_channel_multiple_keeps_the_most_important_channels():
    model = randomise_batchnorms(build("resnet20", 10, 3)).eval()
    removal = select_channels(model, 0.5, example_input=torch.zeros(1, *SIZE), channel_multiple=8)
    inner = [root for root in removal if root.endswith("conv1") and root != "conv1"]
    assert len(inner) > 3  # a block's first conv: its channels reach its own BN only
    for root in inner:
        removed = removal[root]
        scales = model.get_submodule(root.replace("conv1", "bn1")).weight.abs()
        kept = sorted(set(range(len(scales))) - set(removed))
        assert len(kept) % 8 == 0
        assert scales[kept].min() >= scales[removed].max() - 1e-6, root


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_channel_multiple_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="channel_multiple must be a positive integer"):
        prune_width(
            build("resnet20", 10, 3), 0.5, example_input=torch.zeros(1, *SIZE), channel_multiple=bad
        )
