"""Users' own models: blocks found by structure, and optimize end to end on a hand-written ResNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import tridim
from tridim.prune.depth import find_blocks, remove_blocks
from tridim.training.train import train


class ShortcutBlock(nn.Module):
    """A user's residual block: an empty ``Sequential`` shortcut, or conv + BN to downsample."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn_a(self.conv_a(x)))
        out = self.bn_b(self.conv_b(out))
        return F.relu(out + self.shortcut(x))


class HandResNet(nn.Module):
    """A user's three-stage ResNet, no tridim spec."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        stages, cin = [], 8
        for cout, stride in ((8, 1), (16, 2), (32, 2)):
            stage = [ShortcutBlock(cin, cout, stride)]
            stage += [ShortcutBlock(cout, cout) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


HAND_BLOCKS = [f"stages.{s}.{i}" for s in range(3) for i in range(2)]


def test_hand_written_resnet_blocks_are_found_by_structure():
    model = HandResNet()
    blocks = find_blocks(model, input_size=(1, 16, 16))
    assert [b.name for b in blocks] == HAND_BLOCKS
    assert {b.kind for b in blocks} == {"ShortcutBlock"}
    assert [b.removable for b in blocks] == [True, True, False, True, False, True]
    assert tridim.models.spec_of(model) is None
    smaller = remove_blocks(model, [b.name for b in blocks if b.removable])
    assert smaller(torch.randn(2, 1, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "total", "removable", "kind"),
    [
        ("mobilenet_v2", 17, 10, "InvertedResidual"),
        ("efficientnet_b0", 16, 9, "MBConv"),
        ("regnet_x_400mf", 22, 18, "ResBottleneckBlock"),
    ],
)
def test_torchvision_families_have_removable_blocks(name, total, removable, kind):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    size = (3, 64, 64)
    blocks = find_blocks(model, input_size=size)
    assert (len(blocks), sum(b.removable for b in blocks)) == (total, removable)
    assert {b.kind for b in blocks} == {kind}
    assert all(b.removable == (b.input_shape == b.output_shape) for b in blocks)
    last = [b.name for b in blocks if b.removable][-1]
    smaller = remove_blocks(model, [last]).eval()
    with torch.no_grad():
        assert smaller(torch.randn(2, *size)).shape == (2, 10)
    assert len(find_blocks(smaller, input_size=size)) == total - 1


def test_optimize_changes_the_depth_of_a_hand_written_resnet(digits, tmp_path):
    data = digits.subset(train=256, val=128, test=128)
    torch.manual_seed(0)
    model = HandResNet()
    train(model, data, 3, quiet=True)
    result = tridim.optimize(
        model,
        data,
        0.5,
        workdir=tmp_path / "run",
        rounds=1,
        epochs_per_step=1,
        final_epochs=1,
        refine=0,
        quiet=True,
        latency_repeats=2,
        latency_batch=8,
    )
    assert result.report["depth_fixed"] is None
    assert any(sample.d < 1 for sample in result.samples)
    path = tridim.save(result, tmp_path / "saved")
    loaded = tridim.load(path, base_model=HandResNet())
    x = torch.randn(4, 1, 16, 16)
    result.model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.model(x), atol=1e-5)


def test_a_shallower_hand_written_resnet_saves_and_reloads(digits, tmp_path):
    data = digits.subset(train=256, val=128, test=128)
    torch.manual_seed(1)
    model = HandResNet()
    pruned, plan = tridim.realise(
        model, tridim.Triple(0.5, 0.75, 1.0), input_size=(1, 16, 16), data=data
    )
    assert sorted(plan.removed_blocks) and set(plan.removed_blocks) <= set(HAND_BLOCKS)
    assert len(find_blocks(pruned.model, input_size=(1, 16, 16))) == 6 - len(plan.removed_blocks)
    path = tridim.save(pruned, tmp_path / "saved", plan=plan)
    loaded = tridim.load(path, base_model=HandResNet())
    x = torch.randn(4, 1, 16, 16)
    pruned.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), pruned(x), atol=1e-5)
