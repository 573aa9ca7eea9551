"""Coupled channel groups: which channels of a model must be removed together.

Torch-Pruning's dependency graph is traced once on an example input and converted to
plain :class:`ChannelGroup` records. A group is the output channel ``c`` of a
convolution, of the BatchNorm after it, of every convolution added to it by a residual
connection, and the matching input channel of every consumer. The width criteria
(:mod:`tridim.prune.criteria`) score groups; the width pruner (:mod:`tridim.prune.width`)
removes channels of groups. This module depends on neither.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from tridim.training.device import eval_mode, model_device

__all__ = ["GroupMember", "ChannelGroup", "channel_groups"]

_LAYER_KINDS = (
    (nn.modules.conv._ConvNd, "conv"),
    (nn.Linear, "linear"),
    (nn.modules.batchnorm._BatchNorm, "bn"),
)


@dataclass(frozen=True)
class GroupMember:
    """One layer touched by a channel group.

    Attributes
    ----------
    name : str
        Qualified module name (``model.get_submodule(name)``).
    kind : {"conv", "linear", "bn", "other"}
        Layer kind.
    out : bool
        True if the layer's output channels are removed, False for its input channels.
    idxs : tuple of int
        The affected channel indices in that layer.
    root_idxs : tuple of int
        For each entry of ``idxs``, the matching channel of the group (0..size-1).
    depthwise : bool
        True for a depthwise convolution (its in and out channels are the same).
    """

    name: str
    kind: str
    out: bool
    idxs: tuple[int, ...]
    root_idxs: tuple[int, ...]
    depthwise: bool = False


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together; ``root`` names the convolution whose outputs they are.

    Attributes
    ----------
    root : str
        Qualified name of the group's root layer (the first layer, in
        ``model.named_modules()`` order, whose output channels are the group's).
    size : int
        Number of channels of the group.
    members : tuple of GroupMember
        Every layer the group's channels flow through.
    blocks : int
        The channels form this many equal, contiguous blocks that must stay equal (the
        groups of a grouped convolution or of a GroupNorm the channels flow through);
        channels are removed a *slot* at a time: the same position in every block.
    """

    root: str
    size: int
    members: tuple[GroupMember, ...]
    blocks: int = 1

    @property
    def slots(self) -> int:
        """Number of removable units: ``size // blocks``."""
        return self.size // self.blocks

    def slot_channels(self, slot: int) -> tuple[int, ...]:
        """The channels removed together as one unit: position ``slot`` of every block."""
        return tuple(range(slot, self.size, self.slots))

    @property
    def batchnorms(self) -> list[GroupMember]:
        """Members that are BatchNorm layers normalising the group's channels."""
        return [m for m in self.members if m.kind == "bn" and m.out]

    @property
    def producers(self) -> list[GroupMember]:
        """Convolutions and linear layers whose output channels belong to the group."""
        return [m for m in self.members if m.kind in ("conv", "linear") and m.out]

    @property
    def activation_points(self) -> list[GroupMember]:
        """Where the group's feature maps are observed: its BNs, else its producers."""
        return self.batchnorms or self.producers


def _tp():
    import torch_pruning as tp

    return tp


def layer_kind(module: nn.Module) -> str:
    """``"conv"``, ``"linear"``, ``"bn"`` or ``"other"``."""
    for cls, kind in _LAYER_KINDS:
        if isinstance(module, cls):
            return kind
    return "other"


def _ignored_names(model: nn.Module, ignored_layers) -> set[str]:
    """Qualified names of the ignored layers and of every module inside them."""
    if ignored_layers is None:
        return set()
    if isinstance(ignored_layers, (str, nn.Module)):
        ignored_layers = [ignored_layers]
    by_module = {module: name for name, module in model.named_modules()}
    names = {_ignored_name(model, by_module, layer) for layer in ignored_layers}
    # ignoring a container ignores everything inside it
    return (
        {n for n, _ in model.named_modules() if any(n == i or n.startswith(i + ".") for i in names)}
        if names
        else names
    )


def _ignored_name(model: nn.Module, by_module: dict, layer) -> str:
    if isinstance(layer, nn.Module):
        if layer not in by_module:
            raise ValueError(f"ignored layer {type(layer).__name__} is not part of the model")
        return by_module[layer]
    if isinstance(layer, str):
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"ignored layer {layer!r} is not a module of the model") from None
        return layer
    raise TypeError(f"ignored_layers must hold module names or modules, got {layer!r}")


def _check_supported(model: nn.Module, ignored: set[str]) -> None:
    """Raise if a layer outside ``ignored`` holds parameters the graph cannot prune."""
    tp = _tp()
    attention = _attention_layer(model, ignored)
    if attention is not None:
        raise ValueError(
            f"{type(model).__name__} is a transformer (attention in {attention!r}): its "
            "channels cannot be pruned channel-wise. Width pruning supports convolutional "
            "networks; compress this model by depth and resolution only"
        )
    handled = set(tp.pruner.function.PrunerBox) - {tp.ops.OPTYPE.PARAMETER}
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if name in ignored or not own:
            continue
        if tp.ops.module2type(module) in handled:
            _check_standard_parameters(name, module)
            continue
        if all(_per_channel(p) for p in own):
            continue  # e.g. a layer scale: pruned along its one channel axis
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) holds parameters that the "
            "dependency graph cannot prune; pass ignored_layers=[{name!r}] to leave the "
            "channels around it untouched".replace("{name!r}", repr(name))
        )


def _check_standard_parameters(name: str, module: nn.Module) -> None:
    """A known layer type whose subclass adds parameters its pruning rule would leave whole."""
    extra = [n for n, _ in module.named_parameters(recurse=False) if n not in ("weight", "bias")]
    if extra and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        raise ValueError(
            f"layer {name!r} ({type(module).__name__}) adds parameters {extra} to a "
            f"{type(module).__mro__[1].__name__} that the dependency graph would not prune "
            f"with its channels; pass ignored_layers=[{name!r}] to leave the channels "
            "around it untouched"
        )


def _attention_layer(model: nn.Module, ignored: set[str]) -> str | None:
    """Name of the model's first attention layer outside ``ignored``, if any."""
    for name, module in model.named_modules():
        attention = (
            isinstance(module, nn.MultiheadAttention) or "Attention" in type(module).__name__
        )
        if attention and name not in ignored:
            return name
    return None


def _per_channel(parameter: torch.Tensor) -> bool:
    """One value per channel (a single axis longer than 1): the graph prunes that axis."""
    return sum(size > 1 for size in parameter.shape) == 1


def _build_graph(model: nn.Module, example_input: torch.Tensor):
    tp = _tp()
    if not isinstance(example_input, torch.Tensor):
        raise TypeError("example_input must be a tensor batch, e.g. torch.randn(1, C, H, W)")
    example_input = example_input.to(model_device(model))
    # tracing runs a forward pass: never update BN statistics
    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, verbose=False
            )
        except (ZeroDivisionError, IndexError, KeyError, AssertionError) as error:
            # the graph traced the forward pass but cannot map channels through an op
            raise ValueError(
                f"cannot trace the channels of {type(model).__name__} for width pruning: "
                "Torch-Pruning's dependency graph fails on one of its operations "
                f"({type(error).__name__}: {error}), typically a reshape that interleaves "
                "channels (a channel shuffle); depth and resolution still apply"
            ) from error


def analyse(
    model: nn.Module,
    example_input: torch.Tensor,
    ignored_layers: Iterable[str | nn.Module] | None = None,
):
    """Build the dependency graph and the prunable channel groups, in module order.

    Returns
    -------
    (torch_pruning.DependencyGraph, list of ChannelGroup)
        The graph (needed to remove channels of ``model``) and :func:`channel_groups`.
    """
    tp = _tp()
    ignored = _ignored_names(model, ignored_layers)
    _check_supported(model, ignored)
    graph = _build_graph(model, example_input)
    names = {module: name for name, module in model.named_modules()}
    owners = {
        p: name.rsplit(".", 1)[0] if "." in name else "" for name, p in model.named_parameters()
    }
    order = {name: i for i, name in enumerate(names.values())}
    root_types = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw_groups = list(graph.get_all_groups(root_module_types=root_types))
    groups = []
    for raw in raw_groups:
        group = _convert_group(graph, raw, names, owners, order)
        if group is not None and not any(m.name in ignored for m in group.members):
            groups.append(group)
    groups.sort(key=lambda g: order[g.root])
    return graph, groups


def _channel_blocks(graph, module, out: bool, depthwise: bool) -> int:
    """How many equal blocks ``module``'s in or out channels form (grouped conv, GroupNorm)."""
    if depthwise or isinstance(module, nn.Parameter):
        return 1
    pruner = graph.get_pruner_of_module(module)
    if pruner is None:
        return 1
    blocks = pruner.get_out_channel_groups(module) if out else pruner.get_in_channel_groups(module)
    return max(1, int(blocks))


def _merge_items(graph, raw, names, owners):
    """Per (layer name, out): {channel index: root index}; per name (kind, depthwise);
    per (layer name, out) the number of channel blocks.

    Returns None if the group reaches the model output.
    """
    tp = _tp()
    merged: dict[tuple[str, bool], dict[int, int]] = {}
    kinds: dict[str, tuple[str, bool]] = {}
    blocks: dict[tuple[str, bool], int] = {}
    for item in raw:
        node = item.dep.target
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        if out and not node.outputs and node.type != tp.ops.OPTYPE.PARAMETER:
            return None  # reaches the model output: the classifier's outputs stay
        module = node.module
        name = owners.get(module) if isinstance(module, nn.Parameter) else names.get(module)
        if name is None:
            continue  # functional ops (add, cat, reshape) have no weights
        depthwise = node.type == tp.ops.OPTYPE.DEPTHWISE_CONV
        if depthwise:
            out = True
        kinds[name] = (layer_kind(module), depthwise)
        blocks[name, out] = _channel_blocks(graph, module, out, depthwise)
        mapping = merged.setdefault((name, out), {})
        for idx, root in zip(item.idxs, item.root_idxs):
            mapping.setdefault(int(idx), int(root))
    return merged, kinds, blocks


def _group_blocks(size: int, merged: dict, blocks: dict) -> int | None:
    """Blocks of the whole group (the lcm over its members); None if they cannot align.

    A member split in blocks must see all the group's channels in the group's own order,
    so that a slot of the group is a slot of the member.
    """
    result = 1
    for key, count in blocks.items():
        if count == 1:
            continue
        mapping = merged[key]
        if len(mapping) != size or any(idx != root for idx, root in mapping.items()):
            return None
        result = math.lcm(result, count)
    return result if size % result == 0 and result < size else None


def _convert_group(graph, raw, names, owners, order) -> ChannelGroup | None:
    """A Torch-Pruning group as a :class:`ChannelGroup` (None if it is not prunable)."""
    merged = _merge_items(graph, raw, names, owners)
    if merged is None:
        return None
    merged, kinds, blocks = merged
    size = len(raw[0].idxs)
    group_blocks = _group_blocks(size, merged, blocks)
    if group_blocks is None:
        return None  # the blocks of a grouped layer cannot stay equal
    members = tuple(
        GroupMember(
            name, kinds[name][0], out, tuple(mapping), tuple(mapping.values()), kinds[name][1]
        )
        for (name, out), mapping in merged.items()
    )
    producers = [
        m for m in members if m.out and m.kind in ("conv", "linear") and m.idxs == m.root_idxs
    ]
    if not producers:
        return None
    root = min(producers, key=lambda m: order[m.name]).name
    return ChannelGroup(root, size, members, group_blocks)


def channel_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    ignored_layers: Iterable[str | nn.Module] | None = None,
) -> list[ChannelGroup]:
    """The prunable coupled channel groups of a model, in module order.

    Parameters
    ----------
    model : torch.nn.Module
        The model (traced once in eval mode; its mode is restored).
    example_input : torch.Tensor
        A batch the model accepts, e.g. ``torch.randn(1, C, H, W)``.
    ignored_layers : iterable of str or nn.Module, optional
        Layers whose channels must stay: every group touching them is left out.

    Returns
    -------
    list of ChannelGroup
        Groups reaching the model output (the classifier's outputs) are not included.

    Raises
    ------
    ValueError
        If a layer holds parameters the dependency graph cannot prune (the message names
        it); pass it in ``ignored_layers`` to prune around it.
    """
    return analyse(model, example_input, ignored_layers)[1]


def layer_geometry(model: nn.Module, example_input: torch.Tensor) -> dict[str, dict]:
    """Per conv / linear layer: output positions per image, kernel size and groups.

    Parameters
    ----------
    model : torch.nn.Module
        Run once, in eval mode (mode restored), on the first example of ``example_input``.
    example_input : torch.Tensor
        A batch the model accepts.

    Returns
    -------
    dict
        ``{layer name: {"positions": int, "kernel": int, "groups": int}}``; a layer's
        MACs are ``out * in / groups * kernel * positions``.
    """
    geometry: dict[str, dict] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            handles.append(module.register_forward_hook(_geometry_hook(geometry, name)))
    try:
        with torch.no_grad(), eval_mode(model):
            model(example_input[:1].to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return geometry


def _geometry_hook(geometry: dict[str, dict], name: str):
    def hook(mod, inputs, output):
        if isinstance(mod, nn.Linear):
            positions = output.numel() // (output.shape[0] * output.shape[-1])
            kernel, groups = 1, 1
        else:
            positions = int(math.prod(output.shape[2:]))
            kernel, groups = int(math.prod(mod.kernel_size)), mod.groups
        geometry[name] = {"positions": positions, "kernel": kernel, "groups": groups}

    return hook
