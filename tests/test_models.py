import pytest
import torch

from tridim.cost.macs import count_macs
from tridim.training import models

TORCHVISION_NAMES = [
    "resnet18",
    "mobilenet_v2",
    "vgg11_bn",
    "densenet121",
    "mobilenet_v3_small",
    "resnet50",
]


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet56", "resnet110"])
@pytest.mark.parametrize("channels", [1, 3])
def test_cifar_resnets_forward(name, channels):
    model = models.build(name, num_classes=7, in_channels=channels).eval()
    assert model(torch.randn(2, channels, 16, 16)).shape == (2, 7)


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_models_forward(name, channels):
    model = models.build(name, num_classes=5, in_channels=channels).eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, 32, 32)).shape == (1, 5)


def test_cifar_resnet_block_counts_and_width_option():
    model = models.build("resnet56", 10, 3)
    blocks = [m for m in model.modules() if isinstance(m, models.BasicBlock)]
    assert len(blocks) == 27
    wide = models.build("resnet20", 10, 3, width=2.0)
    assert wide.conv1.out_channels == 32 and wide.fc.in_features == 128


def test_spec_rebuilds_same_architecture():
    model = models.build("resnet20", 4, 1, width=0.5)
    spec = models.ModelSpec.from_dict(model.tridim_spec.to_dict())
    rebuilt = spec.build()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }


def test_unknown_model_lists_known_ones():
    with pytest.raises(ValueError, match="resnet20.*resnet18"):
        models.build("resnet21", 10, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        models.build("resnet20", 0, 3)
    with pytest.raises(ValueError, match="never downloads"):
        models.build("resnet18", 10, 3, weights="DEFAULT")
    with pytest.raises(ValueError, match="spec"):
        models.ModelSpec.from_dict({"nome": "resnet20"})


def test_wrong_input_channels_is_clear():
    model = models.build("resnet20", 10, 3)
    with pytest.raises(ValueError, match="expects 3 input channels"):
        count_macs(model, (1, 16, 16))
