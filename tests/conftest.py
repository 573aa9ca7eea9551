"""Shared fixtures: small, fast data and models so the suite runs in minutes on 2 cores."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset at 16x16 (1797 images)."""
    from tridim import data

    return data.load("digits")


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
