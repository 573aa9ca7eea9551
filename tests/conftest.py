"""Shared fixtures: small, fast data and models so the suite runs in minutes on 2 cores."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset at 16x16 (1797 images)."""
    from tridim.training import data

    return data.load("digits")


@pytest.fixture(scope="session")
def tiny(digits):
    """A small slice of digits, so a whole collection or optimize run takes seconds."""
    return digits.subset(train=256, val=128, test=128)


@pytest.fixture(scope="session")
def base_model(tiny):
    """A ResNet-20 trained 3 epochs on ``tiny`` (seeded): the base of the engine tests.

    Tests must not modify it (tridim's entry points copy the model they are given).
    """
    from tridim.training import models
    from tridim.training.train import train

    torch.manual_seed(0)
    model = models.build("resnet20", 10, 1)
    train(model, tiny, 3, quiet=True)
    return model


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm varied scales, shifts and running statistics (in place).

    A freshly built model has every BN scale equal to 1, which leaves a BN-scale
    pruner nothing to rank and hides masking bugs.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.05)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
    return model


def bare_context(model, data, **fields):
    """A TrialContext with no store, for tests that need one without opening a run."""
    from tridim.run.trial import TrialContext

    return TrialContext(
        base=model,
        data=data,
        store=None,
        input_size=data.input_shape,
        base_macs=1,
        base_blocks=[],
        min_side=4,
        target_flops_ratio=0.5,
        **fields,
    )
