"""Depth: block discovery, linear-probe gains and block removal."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torchvision.models import mobilenetv2, resnet
from torchvision.ops import StochasticDepth

from tridim.cost.macs import count_macs
from tridim.prune import blocks
from tridim.prune.depth import (
    block_gains,
    find_blocks,
    minimum_depth,
    prune_depth,
    remove_blocks,
    select_blocks,
)
from tridim.training.models import build


def _zero_last_bn(block: nn.Module) -> None:
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()


@pytest.mark.parametrize(
    ("name", "total", "removable"),
    [
        ("resnet20", 9, 7),
        ("resnet56", 27, 25),
        ("resnet18", 8, 5),  # layer2.0, layer3.0 and layer4.0 project their shortcut
        ("resnet50", 16, 12),  # every stage's first Bottleneck projects, layer1.0 included
        ("mobilenet_v2", 17, 10),
        ("mobilenet_v3_small", 11, 6),
    ],
)
def test_block_counts(name, total, removable):
    model = build(name, 10, 3)
    blocks = find_blocks(model, input_size=(3, 32, 32))
    assert len(blocks) == total
    assert sum(b.removable for b in blocks) == removable
    modules = dict(model.named_modules())
    for block in blocks:
        module = modules[block.name]
        if isinstance(module, (resnet.BasicBlock, resnet.Bottleneck)):
            assert block.removable == (module.downsample is None)
        if isinstance(module, mobilenetv2.InvertedResidual):
            assert block.removable == module.use_res_connect
        assert block.removable == (block.input_shape == block.output_shape)


def test_blocks_come_in_forward_order():
    names = [b.name for b in find_blocks(build("resnet20", 10, 1), input_size=(1, 16, 16))]
    assert names == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.keep = nn.Conv2d(4, 4, 3, padding=1)
        self.grow = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.grow(self.keep(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_user_named_blocks_removable_by_shape():
    blocks = find_blocks(_Toy(), extra=["keep", "grow"], input_size=(1, 8, 8))
    assert [(b.name, b.removable) for b in blocks] == [("keep", True), ("grow", False)]
    with pytest.raises(ValueError, match="not a module"):
        find_blocks(_Toy(), extra=["missing"], input_size=(1, 8, 8))


def test_no_removable_block_means_depth_cannot_change():
    with pytest.raises(ValueError, match="depth cannot change"):
        prune_depth(_Toy(), 0.5, gains={}, extra=["grow"], input_size=(1, 8, 8))
    with pytest.raises(ValueError, match="depth cannot change"):
        prune_depth(build("vgg11_bn", 10, 1), 0.5, gains={}, input_size=(1, 32, 32))


def test_zero_block_is_removed_first_and_changes_nothing(digits):
    torch.manual_seed(0)
    model = build("resnet20", 10, 1)
    _zero_last_bn(model.layer2[1])
    gains = block_gains(model, digits, n_samples=256, seed=0)
    by_name = {g.name: g for g in gains}
    assert by_name["layer2.1"].gain == 0.0 and by_name["layer2.1"].relative_change == 0.0
    assert by_name["layer2.1"].lossless
    assert sum(g.lossless for g in gains) == 1
    assert select_blocks(model, 8 / 9, gains=gains, input_size=(1, 16, 16)) == ["layer2.1"]

    pruned = prune_depth(model, 8 / 9, gains=gains, input_size=(1, 16, 16))
    assert isinstance(pruned.layer2[1], nn.Identity)
    assert isinstance(model.layer2[1], nn.Module) and not isinstance(model.layer2[1], nn.Identity)
    x = digits.test.tensors[0][:32]
    model.eval(), pruned.eval()
    with torch.no_grad():
        assert torch.equal(model(x), pruned(x))
    kept = set(pruned.state_dict())
    assert kept == {k for k in model.state_dict() if not k.startswith("layer2.1.")}


def test_gains_are_deterministic_and_plain_data(digits):
    model = build("resnet20", 10, 1)
    first = block_gains(model, digits, n_samples=128, seed=3)
    second = block_gains(model, digits, n_samples=128, seed=3)
    assert first == second
    assert [g.name for g in first] == [b.name for b in find_blocks(model, input_size=(1, 16, 16))]
    for previous, gain in zip(first, first[1:]):  # each block's input is the last's output
        assert gain.input_accuracy == pytest.approx(previous.probe_accuracy)
    assert all(g.gain == pytest.approx(g.probe_accuracy - g.input_accuracy) for g in first)
    record = first[0].to_dict()
    assert set(record) >= {"name", "removable", "probe_accuracy", "gain"}
    # dict records (e.g. reloaded from JSON) select the same blocks
    assert select_blocks(
        model, 0.5, gains=[g.to_dict() for g in first], input_size=(1, 16, 16)
    ) == select_blocks(model, 0.5, gains=first, input_size=(1, 16, 16))


def test_macs_drop_by_the_removed_blocks():
    model = build("resnet56", 10, 1)
    size = (1, 16, 16)
    blocks = {b.name: b for b in find_blocks(model, input_size=size)}
    names = ["layer1.3", "layer2.8", "layer3.1", "layer3.5"]
    modules = dict(model.named_modules())
    block_macs = sum(count_macs(modules[n], blocks[n].input_shape) for n in names)
    pruned = remove_blocks(model, names)
    assert count_macs(pruned, size) == count_macs(model, size) - block_macs


def test_depth_rounds_to_nearest_whole_block_and_states_minimum():
    model = build("resnet20", 10, 1)
    gains = {f"layer{s}.{i}": float(3 * s + i) for s in (1, 2, 3) for i in range(3)}
    size = (1, 16, 16)

    def kept(d):
        pruned = prune_depth(model, d, gains=gains, input_size=size)
        return len(find_blocks(pruned, input_size=size))

    assert kept(1.0) == 9
    assert kept(0.5) == 5  # 4.5 blocks rounds up
    assert kept(0.6) == 5
    assert kept(2 / 9) == 2
    assert minimum_depth(find_blocks(model, input_size=size)) == pytest.approx(2 / 9)
    with pytest.raises(ValueError, match=r"minimum depth 0\.2222"):
        prune_depth(model, 0.2, gains=gains, input_size=size)
    removed = select_blocks(model, 7 / 9, gains=gains, input_size=size)
    assert removed == ["layer1.0", "layer1.1"]


def test_bad_inputs():
    model = build("resnet20", 10, 1)
    size = (1, 16, 16)
    for d in (0, 1.5, "half", float("nan")):
        with pytest.raises(ValueError):
            prune_depth(model, d, gains={}, input_size=size)
    with pytest.raises(ValueError, match="gains= .* or data="):
        prune_depth(model, 0.5, input_size=size)
    with pytest.raises(ValueError, match="lack the removable blocks"):
        prune_depth(model, 0.5, gains={"layer1.0": 0.0}, input_size=size)
    with pytest.raises(ValueError, match="not a module"):
        remove_blocks(model, ["layer9.0"])
    pruned = remove_blocks(model, ["layer1.1"])
    with pytest.raises(ValueError, match="already removed"):
        remove_blocks(pruned, ["layer1.1"])
    with pytest.raises(ValueError, match="input_size"):
        find_blocks(model, input_size=(3, 16, 16))


# ---------------------------------------------------------------- blocks found by structure


@pytest.mark.parametrize(
    "name", ["resnet20", "resnet56", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small"]
)
def test_structure_finds_the_blocks_of_the_known_classes(name):
    model = build(name, 10, 3)
    size = (3, 32, 32)
    by_class = find_blocks(model, input_size=size)
    assert by_class == blocks._blocks_by_class(model, [], size)  # the fast path is taken
    assert blocks._structural_blocks(model, [], size) == by_class


class _PreAct(nn.Module):
    """Pre-activation block, no activation after the sum: its input may be negative."""

    def __init__(self, channels: int, shortcut: nn.Module | None = None, drop: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.drop = StochasticDepth(drop, "row")

    def forward(self, x):
        return self.shortcut(x) + self.drop(self.conv(torch.relu(self.bn(x))))


class _Group(nn.Module):
    """A residual group: a convolution after two residual blocks, around them a shortcut."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_PreAct(channels), _PreAct(channels))
        self.tail = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x + self.tail(self.body(x))


class _Gate(nn.Module):
    """Squeeze-excitation: keeps the shape, is not residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))


class _Stage(nn.Module):
    """A stage holding its blocks in a ModuleList, with an unused block."""

    def __init__(self, channels: int, n: int):
        super().__init__()
        self.blocks = nn.ModuleList(_PreAct(channels, drop=0.5) for _ in range(n))
        self.unused = _PreAct(channels)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class _SkipWrapper(nn.Module):
    """Stochastic depth around a whole block: skips it at random while training."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        if self.training and torch.rand(()) < 0.5:
            return x
        return self.block(x)


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)  # no activation: negative block inputs
        self.stage = _Stage(4, 2)
        self.plain = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.gate = _Gate(4)
        self.group = _Group(4)
        self.projected = _PreAct(4, shortcut=nn.Conv2d(4, 4, 1))  # same shape, projection
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.group(self.gate(self.plain(self.stage(self.stem(x)))))
        return self.head(self.projected(x).mean(dim=(2, 3)))


def test_structure_finds_residual_units_of_any_class():
    model = _Mixed().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = find_blocks(model, input_size=(1, 8, 8))
    assert [(b.name, b.kind, b.removable) for b in blocks] == [
        ("stage.blocks.0", "_PreAct", True),
        ("stage.blocks.1", "_PreAct", True),
        ("group", "_Group", True),  # the outermost unit, not the blocks inside it
        ("projected", "_PreAct", False),  # a block of the class, its shortcut is no identity
    ]
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    smaller = remove_blocks(model, [b.name for b in blocks if b.removable]).eval()
    assert smaller(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_structure_skips_chains_and_keeps_blocks_the_model_needs():
    class Needy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.chain = nn.Sequential(_PreAct(4), nn.Sequential(_PreAct(4), _PreAct(4)))
            self.wrapped = _SkipWrapper(_PreAct(4))
            self.needed = _PreAct(4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = self.needed(self.wrapped(self.chain(self.stem(x))))
            x = x * self.needed.bn.weight.view(1, -1, 1, 1)  # breaks without the block
            return self.head(x.mean(dim=(2, 3)))

    blocks = find_blocks(Needy(), input_size=(1, 8, 8))
    assert [(b.name, b.removable) for b in blocks] == [
        ("chain.0", True),
        ("chain.1.0", True),
        ("chain.1.1", True),
        ("wrapped.block", True),
        ("needed", False),
    ]


def test_identity_at_zero_refuses_a_zero_example():
    block = _PreAct(4).eval()
    assert blocks._is_identity_at_zero(block, torch.randn(1, 4, 5, 5))
    assert not blocks._is_identity_at_zero(block, torch.zeros(1, 4, 5, 5))
    assert not blocks._is_identity_at_zero(_Gate(4), torch.randn(1, 4, 5, 5))
