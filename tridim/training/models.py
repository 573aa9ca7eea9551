"""Reference models: CIFAR-style ResNets and torchvision classifiers.

Every model is a plain :class:`torch.nn.Module` built by a small function and never
downloads weights. :func:`build` is the entry point; each built model carries its
:class:`ModelSpec` (``model.tridim_spec``) so it can be rebuilt from JSON later.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ModelSpec",
    "build",
    "known_models",
    "cifar_resnet",
    "spec_of",
]

CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    The shortcut is the identity when the block keeps its shape, otherwise a 1x1
    convolution with BatchNorm (a projection shortcut).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet for small images (He et al. 2016, section 4.2): three stages of blocks.

    Parameters
    ----------
    blocks_per_stage : int
        Number of :class:`BasicBlock` per stage (3 for ResNet-20, 9 for ResNet-56).
    num_classes : int
        Number of output classes.
    in_channels : int
        Number of input image channels.
    width : float
        Multiplier on the stage widths 16/32/64.
    """

    def __init__(
        self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
    ):
        super().__init__()
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _make_stage(widths[0], widths[0], blocks_per_stage, stride=1)
        self.layer2 = _make_stage(widths[0], widths[1], blocks_per_stage, stride=2)
        self.layer3 = _make_stage(widths[1], widths[2], blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def input_size_of(model: nn.Module) -> int | None:
    """The number of input channels the model's first convolution expects, if any."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return None


def _make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def cifar_resnet(
    depth: int, num_classes: int = 10, in_channels: int = 3, width: float = 1.0
) -> CifarResNet:
    """A CIFAR-style ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, 110, ...)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 56, 110), got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes, in_channels, width)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model's architecture: JSON-ready.

    Parameters
    ----------
    name : str
        A name from :func:`known_models`.
    num_classes : int
        Number of output classes.
    in_channels : int
        Number of input image channels.
    options : dict
        Extra builder options (``width`` for CIFAR ResNets).
    """

    name: str
    num_classes: int = 10
    in_channels: int = 3
    options: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        """Build a freshly initialised model of this spec."""
        return build(self.name, self.num_classes, self.in_channels, **self.options)

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """Rebuild a spec from :meth:`to_dict` output, validating the keys."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("a model spec needs at least a string 'name'")
        unknown = set(data) - {"name", "num_classes", "in_channels", "options"}
        if unknown:
            raise ValueError(f"unknown keys in model spec: {sorted(unknown)}")
        options = data.get("options", {})
        if not isinstance(options, dict):
            raise ValueError("model spec 'options' must be a JSON object")
        return cls(
            data["name"],
            int(data.get("num_classes", 10)),
            int(data.get("in_channels", 3)),
            dict(options),
        )


def known_models() -> list[str]:
    """Names :func:`build` accepts: CIFAR ResNets, then torchvision classifiers."""
    import torchvision

    return list(CIFAR_RESNET_DEPTHS) + sorted(
        torchvision.models.list_models(module=torchvision.models)
    )


def build(name: str, num_classes: int = 10, in_channels: int = 3, **options) -> nn.Module:
    """Build a randomly initialised reference model.

    Parameters
    ----------
    name : str
        ``"resnet20"``, ``"resnet32"``, ``"resnet56"``, ``"resnet110"`` (CIFAR-style),
        any torchvision classification model name (``"resnet18"``, ``"mobilenet_v2"``,
        ``"vgg11_bn"``, ``"densenet121"``, ...), or ``"timm:<name>"`` for a timm model
        (``pip install 'tridim[timm]'``). Weights are never downloaded.
    num_classes : int
        Number of output classes.
    in_channels : int
        Number of input image channels; torchvision stems are adapted to it.
    **options
        ``width`` (CIFAR ResNets): multiplier on the 16/32/64 stage widths. Other
        options are passed to the torchvision builder.

    Returns
    -------
    torch.nn.Module
        The model, with its :class:`ModelSpec` in ``model.tridim_spec``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
    key = name.lower()
    if key in CIFAR_RESNET_DEPTHS:
        unknown = set(options) - {"width"}
        if unknown:
            raise TypeError(f"unexpected options for {name}: {sorted(unknown)}")
        width = float(options.get("width", 1.0))
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        model = cifar_resnet(CIFAR_RESNET_DEPTHS[key], num_classes, in_channels, width)
    elif key.startswith("timm:"):
        model = _build_timm(key[len("timm:") :], num_classes, in_channels, options)
    else:
        model = _build_torchvision(key, num_classes, in_channels, options)
    model.tridim_spec = ModelSpec(key, num_classes, in_channels, dict(options))
    return model


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The :class:`ModelSpec` that :func:`build` gave ``model``, or None for other models.

    The spec is the one piece of tridim data a model carries (``build`` sets it, and a
    deep copy keeps it); read it only through this function.
    """
    spec = getattr(model, "tridim_spec", None)
    return spec if isinstance(spec, ModelSpec) else None


def _build_torchvision(name: str, num_classes: int, in_channels: int, options: dict):
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ValueError(f"unknown model {name!r}. Known models: {', '.join(known_models())}")
    if "weights" in options:
        raise ValueError("tridim never downloads weights: load a local state dict instead")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    if in_channels != 3:
        _adapt_first_conv(model, in_channels)
    return model


def _build_timm(name: str, num_classes: int, in_channels: int, options: dict):
    try:
        import timm
    except ImportError:
        raise ImportError(f"timm:{name} needs timm: pip install 'tridim[timm]'") from None
    if options.get("pretrained") or "pretrained_cfg_overlay" in options:
        raise ValueError("tridim never downloads weights: load a local state dict instead")
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models()")
    options = {k: v for k, v in options.items() if k != "pretrained"}
    return timm.create_model(
        name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options
    )


def _adapt_first_conv(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution by one taking ``in_channels`` channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.groups != 1:
                    raise ValueError("cannot adapt a grouped first convolution to new channels")
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    1,
                    child.bias is not None,
                    child.padding_mode,
                )
                setattr(parent, child_name, new)
                return
    raise ValueError("model has no Conv2d to adapt to the input channels")
