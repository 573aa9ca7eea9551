"""Finding a model's residual blocks, and removing them.

A *block* is a residual unit ``y = act(s(x) + f(x))``. It is *removable* when its
shortcut ``s`` is the identity, i.e. its output has the shape of its input, so it can be
replaced by :class:`torch.nn.Identity` (:func:`remove_blocks`); blocks that change shape
(a strided or projection shortcut) stay.

How blocks are found (:func:`find_blocks`), on one random example run in eval mode:

* **By structure**, for any model. Every module but the root that holds a convolution
  or linear layer (and is not one) is watched; its first input is recorded. A module is
  a *residual unit* when it keeps the shape of its input on every call and, **with all
  its parameters set to zero**, maps its recorded input to itself. Zeroing the
  parameters makes the last convolution, linear or normalisation layer of the branch
  output zero, so ``act(x + f(x))`` becomes ``act(x) = x`` (the post-addition ReLU of a
  ResNet block is the identity on its input, itself a ReLU output; MobileNet and
  EfficientNet blocks have no post-activation; stochastic depth is the identity in eval
  mode and passes zero through in any case). Nothing else passes: a plain stack of layers
  gives zero, a projection shortcut gives zero, a squeeze-excitation gate gives ``x/2``.
  The zeroed run uses :func:`torch.func.functional_call`, so the model is never touched.
  Residual units nest: a unit whose parameters all belong to the units directly inside it
  (a stage that is a ``Sequential`` of blocks, a parameter-free wrapper) is a chain, and
  its inner units are the blocks; otherwise the outermost unit is the block and the
  units inside it are its parts. Then every called instance of a block's class that is
  not already a block (the downsampling block of each stage, the MobileNet block without
  a residual connection) is a block too, not removable. Last, the model is run once with
  every removable block replaced by the identity; if that fails, the blocks whose
  removal breaks it are marked not removable.
* **By class**, the fast path taken when the model holds any instance of tridim's
  :class:`~tridim.models.BasicBlock`, torchvision's ResNet ``BasicBlock`` and
  ``Bottleneck`` or MobileNetV2/V3 ``InvertedResidual``: those instances are the blocks,
  removable when their shortcut attribute says identity (``downsample is None``,
  ``use_res_connect``) and the shapes match. The structural test finds the same blocks
  on these models (tested); it is 3 to 9 times slower.

The structural test covers torchvision's ResNet, ResNeXt, wide ResNet, MobileNetV2/V3,
EfficientNet (``MBConv``, ``FusedMBConv``), RegNet and ConvNeXt, timm's ResNets,
EfficientNets, ConvNeXts and ViTs, and users' own block classes. Its limits: a block
class none of whose instances keeps its shape is not recognised (name such modules with
``extra=``), and a branch ending in a layer that does not map zero to zero (a sigmoid,
a normalisation without affine parameters) hides its block.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from tridim.search.space import check_input_size
from tridim.training.device import eval_mode, model_device
from tridim.training.models import input_size_of

__all__ = ["Block", "find_blocks", "remove_blocks", "minimum_depth"]

DEFAULT_PROBE_SIDE = 32


@dataclass(frozen=True)
class Block:
    """One residual block of a model, as found by :func:`find_blocks`.

    Attributes
    ----------
    name : str
        Qualified module name (``"layer2.1"``).
    kind : str
        Class name of the module (``"BasicBlock"``, ``"InvertedResidual"``, ...).
    removable : bool
        True when the shortcut is the identity: the output has the input's shape and the
        block can be replaced by :class:`torch.nn.Identity`.
    input_shape, output_shape : tuple of int
        Shapes of one example (batch dimension dropped) seen on the probe forward pass.
    """

    name: str
    kind: str
    removable: bool
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]

    def to_dict(self) -> dict:
        """JSON-ready copy."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["output_shape"] = list(self.output_shape)
        return data


def _known_block_types() -> dict[type, str]:
    """Block classes of the fast path and the attribute test for an identity shortcut.

    The structural test of :func:`find_blocks` finds the same blocks (tested).
    """
    from torchvision.models import mobilenetv2, mobilenetv3, resnet

    from tridim.training.models import BasicBlock

    return {
        BasicBlock: "downsample",
        resnet.BasicBlock: "downsample",
        resnet.Bottleneck: "downsample",
        mobilenetv2.InvertedResidual: "use_res_connect",
        mobilenetv3.InvertedResidual: "use_res_connect",
    }


def _has_identity_shortcut(module: nn.Module, test: str | None) -> bool:
    if test == "downsample":
        return getattr(module, "downsample", None) is None
    if test == "use_res_connect":
        return bool(getattr(module, "use_res_connect", False))
    return True


def _default_input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    if input_size is not None:
        return check_input_size(input_size)
    channels = input_size_of(model) or 3
    return (channels, DEFAULT_PROBE_SIDE, DEFAULT_PROBE_SIDE)


def _extra_names(modules: Mapping[str, nn.Module], extra: Iterable[str] | None) -> list[str]:
    """The caller's block names, checked."""
    named = [] if extra is None else [extra] if isinstance(extra, str) else list(extra)
    for name in named:
        if not isinstance(name, str) or not name:
            raise ValueError(f"extra block names must be non-empty strings, got {name!r}")
        if name not in modules:
            raise ValueError(f"extra block {name!r} is not a module of this model")
    return named


def _inside(name: str, other: str) -> bool:
    """True when module ``name`` is strictly inside module ``other``."""
    return name != other and name.startswith(other + ".")


def _outermost(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    return [n for n in names if not any(_inside(n, other) for other in names)]


def find_blocks(
    model: nn.Module, extra: Iterable[str] | None = None, *, input_size: Sequence[int] | None = None
) -> list[Block]:
    """The residual blocks of ``model`` in forward order.

    Parameters
    ----------
    model : torch.nn.Module
        The network. It is run in eval mode on one random example (mode restored; its
        weights are never modified).
    extra : iterable of str, optional
        Qualified names of further modules to treat as blocks (for residual units the
        structural test cannot see). A named block is removable when its output shape
        equals its input shape. Blocks nested inside another block are ignored.
    input_size : (C, H, W), optional
        Size of the example input; default ``(C, 32, 32)`` with C read from the first
        convolution.

    Returns
    -------
    list of Block
        In the order the forward pass calls them; blocks the forward pass never calls are
        left out. See the module docstring for how blocks are found: instances of the
        known block classes when the model has any (removable when their shortcut is the
        identity and the shapes match), otherwise residual units found by structure.
    """
    size = _default_input_size(model, input_size)
    named = _extra_names(dict(model.named_modules()), extra)
    known = _known_block_types()
    if any(type(m) in known for m in model.modules()):
        return _blocks_by_class(model, named, size)
    return _structural_blocks(model, named, size)


def _blocks_by_class(model: nn.Module, named: Sequence[str], size) -> list[Block]:
    """The fast path: instances of the known block classes, and the named modules."""
    known = _known_block_types()
    modules = dict(model.named_modules())
    by_class = [n for n, m in modules.items() if n and type(m) in known]
    names = _outermost(list(named) + by_class)
    calls = _trace_calls(model, {n: modules[n] for n in names}, size)
    tests = {n: known.get(type(modules[n])) if n not in named else None for n in names}
    return [
        _block(n, modules[n], calls[n], _has_identity_shortcut(modules[n], tests[n]))
        for n in sorted(calls, key=lambda n: calls[n].order)
    ]


def _block(name: str, module: nn.Module, call: _Call, identity: bool) -> Block:
    """The Block record of a called module; removable when every call kept the shape."""
    shapes_match = all(inp == out for inp, out in call.shapes)
    return Block(name, type(module).__name__, shapes_match and identity, *call.shapes[0])


_Shapes = tuple[tuple[int, ...], tuple[int, ...]]
_NOT_A_TENSOR_MAP: _Shapes = ((), (-1,))


@dataclass
class _Call:
    """What one forward pass saw of a module: its first input, every call's shapes."""

    order: int = -1
    args: torch.Tensor | None = None
    shapes: list = field(default_factory=list)


def _trace_calls(
    model: nn.Module,
    watched: Mapping[str, nn.Module],
    size: tuple[int, ...],
    *,
    inputs: Iterable[str] = (),
) -> dict[str, _Call]:
    """Run ``model`` once in eval mode on a random example and watch some modules.

    Returns, per watched module the pass called, its (input, output) shapes per call, the
    rank at which its first call returned (forward order of non-nested modules) and, when
    named in ``inputs``, a copy of its first input (None when not one positional tensor).
    """
    calls: dict[str, _Call] = {}
    handles, returned = [], itertools.count()
    inputs = set(inputs)
    for name, module in watched.items():
        pre_hook = _pre_hook(calls, name, name in inputs)
        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(module.register_forward_hook(_post_hook(calls, name, returned)))
    try:
        with torch.no_grad(), eval_mode(model):
            model(_example(model, size))
    except Exception as error:
        raise ValueError(
            f"could not run the model on an input of size {size} to find its blocks "
            f"({type(error).__name__}: {error}); pass input_size=(C, H, W)"
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _example(model: nn.Module, size: Sequence[int]) -> torch.Tensor:
    """One seeded random example on the model's device (a zero one would hide blocks)."""
    example = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    return example.to(model_device(model))


def _single_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
        return args[0]
    return None


def _pre_hook(calls: dict[str, _Call], name: str, keep_input: bool):
    def hook(_module, args, kwargs):
        call = calls.setdefault(name, _Call())
        tensor = _single_tensor(args, kwargs)
        call.shapes.append(None if tensor is None else tuple(tensor.shape[1:]))
        if keep_input and len(call.shapes) == 1 and tensor is not None:
            call.args = tensor.detach().clone()  # the module may change it in place

    return hook


def _post_hook(calls: dict[str, _Call], name: str, returned: Iterator[int]):
    def hook(_module, _args, output):
        call = calls[name]
        if call.order < 0:
            call.order = next(returned)
        shape_in = call.shapes[-1]
        if shape_in is None or not isinstance(output, torch.Tensor):
            call.shapes[-1] = _NOT_A_TENSOR_MAP
        else:
            call.shapes[-1] = (shape_in, tuple(output.shape[1:]))

    return hook


# ---------------------------------------------------------------- structural detection


_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _may_be_unit(name: str, module: nn.Module) -> bool:
    """Not the root, not a convolution or linear layer, but holding one."""
    if not name or isinstance(module, _LAYERS):
        return False
    return any(isinstance(m, _LAYERS) for m in module.modules())


def _is_identity_at_zero(module: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``module`` with every parameter set to zero maps ``example`` to itself.

    This is the identity-shortcut test: ``y = act(x + f(x))`` turns into ``act(x) = x``
    (``act`` is an identity on its own output, e.g. ReLU after ReLU) once the last
    convolution or normalisation of the branch ``f`` outputs zero; a projection shortcut,
    a plain layer stack or a gate does not. A zero example would pass trivially: refused.
    """
    scale = float(example.abs().max())
    if not math.isfinite(scale) or scale == 0.0:
        return False
    zeros = {name: torch.zeros_like(p) for name, p in module.named_parameters()}
    try:
        with torch.no_grad():
            output = torch.func.functional_call(module, zeros, (example.clone(),))
    except Exception:
        return False
    if not isinstance(output, torch.Tensor) or output.shape != example.shape:
        return False
    return bool(torch.allclose(output, example, rtol=1e-5, atol=1e-6 * scale))


def _residual_units(modules: Mapping[str, nn.Module], calls: Mapping[str, _Call]) -> list[str]:
    """Names of the modules that are residual units: shape kept, identity at zero."""
    units = []
    was_training = {name: m.training for name, m in modules.items()}
    for module in modules.values():
        module.eval()
    try:
        for name, call in calls.items():
            keeps_shape = all(inp == out for inp, out in call.shapes)
            if keeps_shape and call.args is not None:
                if _is_identity_at_zero(modules[name], call.args):
                    units.append(name)
    finally:
        for name, module in modules.items():
            module.training = was_training[name]
    return units


def _resolve_nesting(
    units: Sequence[str], modules: Mapping[str, nn.Module], called: Iterable[str]
) -> list[str]:
    """The blocks among nested residual units: the outermost, except chains of units.

    A unit whose parameters used in the forward pass (those of the modules it called)
    all belong to the units directly inside it (a stage that is a ``Sequential`` of
    blocks, or a wrapper around one block) is not itself a block: its inner units are.
    Any other unit is a block, and the units inside it are its parts.
    """
    called = set(called)
    pending, blocks = _outermost(units), []
    while pending:
        name = pending.pop(0)
        inner = _outermost(u for u in units if _inside(u, name))
        owned = {id(p) for u in inner for p in modules[u].parameters()}
        used = [
            p
            for n in called
            if n == name or _inside(n, name)
            for p in modules[n].parameters(recurse=False)
        ]
        if inner and all(id(p) in owned for p in used):
            pending = inner + pending
        else:
            blocks.append(name)
    return blocks


def _structural_blocks(model: nn.Module, named: Sequence[str], size) -> list[Block]:
    """Blocks found by structure: residual units, and their class's shape-changing kin."""
    modules = dict(model.named_modules())
    candidates = [n for n, m in modules.items() if _may_be_unit(n, m)]
    calls = _trace_calls(model, modules, size, inputs=candidates)
    units = _resolve_nesting(_residual_units(modules, calls), modules, calls)
    kinds = {type(modules[n]) for n in units} - set(_CONTAINERS)
    kin = [
        n
        for n in calls
        if n
        and type(modules[n]) in kinds
        and not any(_inside(n, u) or _inside(u, n) or n == u for u in units)
    ]
    names = [n for n in _outermost(list(named) + units + kin) if n in calls]
    blocks = [_block(n, modules[n], calls[n], n in named or n in units) for n in names]
    blocks.sort(key=lambda b: calls[b.name].order)
    return _check_removal(model, blocks, size)


def _check_removal(model: nn.Module, blocks: list[Block], size) -> list[Block]:
    """Mark not removable the blocks whose replacement by the identity breaks the model.

    One pass with every removable block replaced; block by block only if that fails.
    """
    removable = [b.name for b in blocks if b.removable]
    if not removable or _runs_without(model, removable, size):
        return blocks
    broken = {name for name in removable if not _runs_without(model, [name], size)}
    return [dataclasses.replace(b, removable=False) if b.name in broken else b for b in blocks]


def _runs_without(model: nn.Module, names: Sequence[str], size) -> bool:
    smaller = remove_blocks(model, names)
    smaller.eval()
    try:
        with torch.no_grad():
            smaller(_example(smaller, size))
    except Exception:
        return False
    return True


def minimum_depth(blocks: Sequence[Block]) -> float:
    """The smallest reachable ``d``: non-removable blocks / all blocks."""
    if not blocks:
        raise ValueError("the model has no residual blocks")
    return sum(not b.removable for b in blocks) / len(blocks)


def remove_blocks(model: nn.Module, names: Iterable[str], *, inplace: bool = False) -> nn.Module:
    """Replace the named blocks by :class:`torch.nn.Identity`.

    Only the named modules are swapped (``setattr`` on their parent), so every other
    module keeps its qualified name and its weights. Used to replay a :class:`Plan`.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    names : iterable of str
        Qualified names of the blocks to remove; they should be removable
        (see :func:`find_blocks`), which is not re-checked here.
    inplace : bool
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    torch.nn.Module
        The model with the blocks removed.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"block names repeat: {names}")
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"block names must be non-empty strings, got {name!r}")
        if name not in modules:
            raise ValueError(f"{name!r} is not a module of this model")
        if isinstance(modules[name], nn.Identity):
            raise ValueError(f"block {name!r} was already removed")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, child, nn.Identity())
    return target
