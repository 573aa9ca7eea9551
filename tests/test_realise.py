"""Realising a triple: MACs targets, plans as JSON, and replaying plans."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomise_batchnorm

from tridim import Plan, Triple, realise
from tridim.cost.macs import count_macs
from tridim.prune.depth import find_blocks
from tridim.prune.realise import apply_plan
from tridim.prune.resolution import ResolutionWrapper
from tridim.training.models import build

SIZES = {"resnet20": (1, 32, 32), "resnet18": (3, 32, 32)}


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return randomise_batchnorm(build(name, 10, SIZES[name][0]), seed).eval()


def _ranked_gains(model, size):
    """Deterministic made-up gains: later blocks of a stage look less useful."""
    blocks = find_blocks(model, input_size=size)
    return {b.name: -float(i) for i, b in enumerate(blocks)}


@pytest.fixture(scope="module")
def models():
    return {name: _model(name) for name in SIZES}


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_realise_hits_the_macs_target(models, name, target):
    model, size = models[name], SIZES[name]
    gains = _ranked_gains(model, size)
    third = target ** (1 / 3)
    triples = [(1.0, 1.0, 1.0), (third, 1.0, third**0.5), (1.0, 1.0, (target + 1) / 2)]
    base = count_macs(model, size)
    for triple in triples:
        pruned, plan = realise(
            model, triple, input_size=size, target_flops_ratio=target, gains=gains
        )
        measured = count_macs(pruned, size) / base
        assert measured == pytest.approx(target, rel=0.01), triple
        assert plan.macs_ratio == pytest.approx(measured)
        assert plan.target_flops_ratio == target
        assert plan.requested == Triple(*triple)
        kept = plan.blocks_total - len(plan.removed_blocks)
        assert plan.realised.d == pytest.approx(kept / plan.blocks_total)
        assert plan.resolution == pruned.size
        assert plan.realised.r == pytest.approx(pruned.size[0] / size[1])


def test_realise_without_target_rounds_each_dimension(models):
    model, size = models["resnet20"], SIZES["resnet20"]
    pruned, plan = realise(
        model, (0.7, 0.6, 0.7), input_size=size, gains=_ranked_gains(model, size)
    )
    assert plan.blocks_total == 9 and len(plan.removed_blocks) == 3  # 6.3 -> 6 blocks kept
    assert plan.resolution == (22, 22)  # 22.4 pixels
    assert plan.realised.w == pytest.approx(0.6, abs=1 / plan.channels_total)
    # counted after depth: 448 channels in ResNet-20 (16 + 32 + 64 shared per stage, plus
    # each block's internal ones) minus the internal channels of the removed blocks
    assert plan.removed_blocks == ["layer2.2", "layer3.1", "layer3.2"]
    assert plan.channels_total == 448 - 32 - 64 - 64
    assert plan.target_flops_ratio is None
    assert isinstance(pruned, ResolutionWrapper)
    # the plan is returned, not attached to the model
    assert not [k for k in vars(pruned) if k.startswith("tridim_")]
    # depth first: no channel is removed from a block that is gone
    assert not any(k.startswith(b + ".") for k in plan.width_removal for b in plan.removed_blocks)
    with torch.no_grad():
        assert pruned(torch.randn(2, *size)).shape == (2, 10)
    # the base model is untouched
    assert len(find_blocks(model, input_size=size)) == 9
    assert model.layer1[0].conv1.out_channels == 16


def test_full_triple_without_target_is_the_base_model(models):
    model, size = models["resnet20"], SIZES["resnet20"]
    pruned, plan = realise(model, Triple(1, 1, 1), input_size=size)
    assert plan.macs_ratio == 1.0 and not pruned.resizes
    assert plan.removed_blocks == [] and plan.width_removal == {}
    x = torch.randn(2, *size)
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))


def test_plan_round_trips_and_replays(models):
    model, size = models["resnet20"], SIZES["resnet20"]
    pruned, plan = realise(
        model,
        (0.75, 1.0, 0.8),
        input_size=size,
        target_flops_ratio=0.4,
        gains=_ranked_gains(model, size),
    )
    assert plan.removed_blocks and plan.width_removal and plan.resolution == (26, 26)
    text = plan.to_json()
    json.loads(text)
    again = Plan.from_json(text)
    assert again == plan
    assert Plan.from_dict(plan.to_dict()) == plan
    assert again.base_spec == {
        "name": "resnet20",
        "num_classes": 10,
        "in_channels": 1,
        "options": {},
    }

    # finetuning changes weights, not the architecture: perturb, then replay on a fresh model
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rebuilt = apply_plan(build("resnet20", 10, 1), again, input_size=size)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(pruned.state_dict())
    pruned.eval(), rebuilt.eval()
    x = torch.randn(4, *size)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))
    assert count_macs(rebuilt, size) == plan.macs


def test_realise_with_data_driven_gains_and_criterion(digits):
    model = randomise_batchnorm(build("resnet20", 10, 1)).eval()
    size = digits.input_shape
    small = digits.subset(train=128, val=64, test=64)
    pruned, plan = realise(
        model,
        (7 / 9, 1.0, 0.75),
        input_size=size,
        data=small,
        target_flops_ratio=0.4,
        criterion="taylor",
    )
    assert len(plan.removed_blocks) == 2 and plan.criterion == "taylor"
    assert plan.resolution == (12, 12)
    assert plan.macs_ratio == pytest.approx(0.4, rel=0.01)


def test_bad_inputs(models):
    model, size = models["resnet20"], SIZES["resnet20"]
    gains = _ranked_gains(model, size)
    for triple in [(0, 1, 1), (1, 1.5, 1), (1, 1), "abc", {"d": 1, "w": 1}]:
        with pytest.raises(ValueError):
            realise(model, triple, input_size=size, gains=gains)
    for target in (0, 1.5, "half"):
        with pytest.raises(ValueError, match="target_flops_ratio"):
            realise(model, (1, 1, 1), input_size=size, target_flops_ratio=target)
    with pytest.raises(ValueError, match="input channels"):
        realise(model, (1, 1, 1), input_size=(3, 32, 32))
    with pytest.raises(ValueError, match="raise d or r"):
        realise(model, (1, 1, 0.5), input_size=size, target_flops_ratio=0.5)
    with pytest.raises(ValueError, match="minimum depth"):
        realise(model, (0.1, 1, 1), input_size=size, gains=gains)
    with pytest.raises(ValueError, match="gains="):
        realise(model, (0.5, 1, 1), input_size=size)
    with pytest.raises(TypeError, match="resolution-wrapped"):
        realise(ResolutionWrapper(model, (16, 16), size), (1, 1, 1), input_size=size)


def test_bad_plans(models):
    model, size = models["resnet20"], SIZES["resnet20"]
    _, plan = realise(model, (1, 1, 0.9), input_size=size, target_flops_ratio=0.6)
    data = plan.to_dict()
    with pytest.raises(ValueError, match="missing keys"):
        Plan.from_dict({k: v for k, v in data.items() if k != "resolution"})
    with pytest.raises(ValueError, match="unknown keys"):
        Plan.from_dict({**data, "colour": "blue"})
    with pytest.raises(ValueError, match="invalid plan"):
        Plan.from_dict({**data, "resolution": [0, 28]})
    with pytest.raises(ValueError, match="JSON"):
        Plan.from_json("{not json")
    with pytest.raises(ValueError, match="made for"):
        apply_plan(build("resnet32", 10, 1), plan)
    with pytest.raises(ValueError, match="input_size"):
        apply_plan(build("resnet20", 10, 1), plan, input_size=(1, 28, 28))
    with pytest.raises(ValueError, match="does not fit"):
        apply_plan(build("resnet20", 10, 1), Plan.from_dict({**data, "macs": 1}))
    with pytest.raises(TypeError):
        apply_plan(build("resnet20", 10, 1), data)


def test_width_too_coarse_at_every_size_is_a_clear_error():
    """Two channels cannot land within 1% of 0.8 at 32, 31 or 30 pixels: say so (this
    used to end in an UnboundLocalError once the full-resolution sizes ran out)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3, padding=1),
        torch.nn.BatchNorm2d(2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2, 3),
    ).eval()
    net[1].weight.data = torch.tensor([1.0, 0.2])
    with pytest.raises(ValueError, match=r"every input size tried \(32x32, 31x31, 30x30\)"):
        realise(net, (1, 1, 1), input_size=(1, 32, 32), target_flops_ratio=0.8)


def test_realise_with_a_channel_multiple_meets_the_budget_in_multiples(models):
    model, size = models["resnet20"], SIZES["resnet20"]
    base = {n: m.out_channels for n, m in model.named_modules() if hasattr(m, "out_channels")}
    pruned, plan = realise(
        model,
        (0.8, 1.0, 0.9),
        input_size=size,
        target_flops_ratio=0.4,
        channel_multiple=8,
        gains=_ranked_gains(model, size),
    )
    assert plan.macs_ratio == pytest.approx(0.4, rel=0.03)  # the coarse tolerance
    changed = [
        m.out_channels
        for n, m in pruned.model.named_modules()
        if hasattr(m, "out_channels") and m.out_channels != base.get(n)
    ]
    assert changed and all(c % 8 == 0 for c in changed)
    rebuilt = apply_plan(build("resnet20", 10, 1), plan, input_size=size)
    assert count_macs(rebuilt, size) == count_macs(pruned, size)


def test_the_manifest_of_a_run_without_channel_multiple_is_unchanged():
    from tridim.run.collect import CollectionSettings

    assert "channel_multiple" not in CollectionSettings(0.5).manifest()
    assert CollectionSettings(0.5, channel_multiple=8).manifest()["channel_multiple"] == 8
    with pytest.raises(ValueError, match="channel_multiple must be a positive integer"):
        CollectionSettings(0.5, channel_multiple=0)
