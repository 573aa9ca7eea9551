"""Filter importance criteria that score coupled channel groups.

A *channel group* (:class:`~tridim.prune.groups.ChannelGroup`, from
:func:`~tridim.prune.groups.channel_groups`) is a set of channels that must be removed
together: the output channel ``c`` of a convolution, of the BatchNorm after it, of every
convolution added to it by a residual connection, and the matching input channel of
every consumer. Each criterion returns one score per channel of each group (higher =
more important), so a channel shared by a residual add is scored once for its group.

Criteria (``get_criterion(name)``, names in :data:`CRITERIA`):

``bn_scale``
    |gamma| of the group's BatchNorms, averaged over them (Network Slimming). Default.
``taylor``
    Molchanov et al. (2017): per example, the mean over the feature map of activation x
    gradient of the loss, summed over the group's members, in absolute value, averaged
    over examples. Layer-wise L2 normalisation on by default; optional FLOPs regulariser.
``l1``, ``l2``
    Norm of the output filters of the group's convolutions / linear layers, averaged.
``bn_filter``
    ``bn_scale`` x ``l2`` (BN scale times filter Frobenius norm).
``group_norm``
    L2 norm of every parameter of the group touching the channel: the producers' output
    filters (and biases), the consumers' input slices and the BatchNorms' scales and
    shifts, divided by the group's mean so that groups are comparable (data-free, with or
    without BatchNorm).
``activation_mean``, ``activation_std``
    Mean of |activation| and standard deviation of the activation, over examples and
    positions, averaged over the group's members.
``random``
    Seeded uniform scores (the baseline every criterion must beat).

Activations are taken where the group's channels leave their BatchNorms (or the
convolution / linear layer itself for a group without BatchNorm); data-driven criteria
run the model in eval mode, so BatchNorm statistics are never updated. How well each
criterion predicts the loss change of removing a channel (Molchanov's oracle) is
studied in :mod:`tridim.bench.oracle`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tridim.cost.macs import layer_channels, layer_macs
from tridim.prune.groups import ChannelGroup, GroupMember, layer_geometry
from tridim.training.device import eval_mode, model_device

__all__ = [
    "CRITERIA",
    "Criterion",
    "get_criterion",
    "score_groups",
    "l2_normalize",
    "take_batches",
    "ChannelGates",
    "CriterionError",
]

DEFAULT_N_BATCHES = 8
DEFAULT_BATCH_SIZE = 64


class CriterionError(ValueError):
    """A criterion cannot be used on this model or without data."""


# ----------------------------------------------------------------------------------------
# data handling


def take_batches(data, n_batches: int, batch_size: int, seed: int, device=None) -> list[tuple]:
    """Take ``n_batches`` (images, labels) batches from a DataBundle or an iterable.

    Parameters
    ----------
    data : DataBundle or iterable of (images, labels)
        A bundle's shuffled training split (seeded by ``seed``), or any batches.
    n_batches, batch_size : int
        How many batches, and their size when ``data`` is a bundle.
    seed : int
        Seeds the bundle's shuffling.
    device : torch.device, optional
        Where the batches are moved (the scored model's device).

    Returns
    -------
    list of (torch.Tensor, torch.Tensor)
        At most ``n_batches`` batches; ValueError when ``data`` yields none.
    """
    if hasattr(data, "loader"):
        source: Iterable = data.loader("train", batch_size, shuffle=True, seed=seed)
    else:
        source = data
    batches = []
    for batch in source:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("data must yield (images, labels) batches")
        batches.append((batch[0].to(device), batch[1].to(device)))
        if len(batches) >= n_batches:
            break
    if not batches:
        raise ValueError("data yielded no batches")
    return batches


# ----------------------------------------------------------------------------------------
# gates: multiply the group's feature maps by per-example channel gates


class ChannelGates:
    """Forward hooks that multiply chosen modules' outputs by channel gates.

    With ``requires_grad=True`` the gradient of the loss w.r.t. a gate is, per example and
    channel, the sum over the feature map of activation x gradient (Molchanov's Taylor
    term). ``masks`` (module name -> float tensor of channels) zero channels instead.
    ``record`` accumulates activation statistics per channel.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        *,
        requires_grad: bool = False,
        record: bool = False,
    ):
        self.model = model
        self.names = sorted(set(names))
        self.requires_grad = requires_grad
        self.record = record
        self.masks: dict[str, torch.Tensor] = {}
        self.gates: dict[str, list[torch.Tensor]] = {}
        self.positions: dict[str, int] = {}
        self.stats: dict[str, list[torch.Tensor | int]] = {}
        self._handles: list = []

    def __enter__(self) -> ChannelGates:
        for name in self.names:
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def reset(self) -> None:
        self.gates = {}

    def _hook(self, name: str) -> Callable:
        def hook(module, inputs, output):
            shape = (output.shape[0], output.shape[1]) + (1,) * (output.dim() - 2)
            self.positions[name] = int(math.prod(output.shape[2:]))
            if self.record:
                self._record(name, output.detach())
            gate = torch.ones(
                shape, dtype=output.dtype, device=output.device, requires_grad=self.requires_grad
            )
            if self.requires_grad:
                self.gates.setdefault(name, []).append(gate)
            if name in self.masks:
                gate = gate * self.masks[name].view((1, -1) + (1,) * (output.dim() - 2))
            return output * gate

        return hook

    def _record(self, name: str, output: torch.Tensor) -> None:
        dims = [0] + list(range(2, output.dim()))
        count = output.numel() // output.shape[1]
        values = [output.abs().sum(dims), output.sum(dims), (output**2).sum(dims), count]
        if name not in self.stats:
            self.stats[name] = values
        else:
            old = self.stats[name]
            self.stats[name] = [old[i] + values[i] for i in range(4)]

    def per_example_grad(self, name: str) -> torch.Tensor:
        """Per-example, per-channel d loss / d gate divided by the feature map size."""
        grads = [g.grad for g in self.gates[name] if g.grad is not None]
        if not grads:
            return torch.zeros(self.gates[name][0].shape[:2])
        total = sum(g.reshape(g.shape[0], g.shape[1]) for g in grads)
        return total / self.positions[name]


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def _scatter(group: ChannelGroup, member: GroupMember, values: torch.Tensor) -> torch.Tensor:
    """Map a member's per-channel values (last dim) to the group's channels (on CPU)."""
    values = values.cpu()
    out = torch.zeros(values.shape[:-1] + (group.size,), dtype=values.dtype)
    idxs = torch.as_tensor(member.idxs, dtype=torch.long)
    roots = torch.as_tensor(member.root_idxs, dtype=torch.long)
    out.index_add_(-1, roots, values.index_select(-1, idxs))
    return out


def _mean_over(
    group: ChannelGroup,
    members: Sequence[GroupMember],
    per_member: Callable[[GroupMember], torch.Tensor],
) -> np.ndarray:
    total = torch.zeros(group.size)
    count = torch.zeros(group.size)
    for member in members:
        values = per_member(member).detach().cpu().double().float()
        total += _scatter(group, member, values)
        count += _scatter(group, member, torch.ones_like(values))
    return (total / count.clamp(min=1)).numpy().astype(np.float64)


# ----------------------------------------------------------------------------------------
# criteria


class Criterion:
    """Base class: ``criterion(model, groups, data=..., seed=...)`` -> scores per group.

    Parameters
    ----------
    normalize : bool, optional
        Divide each group's scores by their L2 norm (Molchanov's layer-wise
        normalisation) so that scores are comparable across layers. ``None`` uses the
        criterion's default (on for ``taylor``, off for the others).

    Notes
    -----
    Scores are numpy arrays of length ``group.size``; a criterion returns ``None`` for a
    group it cannot score (``bn_scale`` on a group without BatchNorm): such groups are
    kept whole by the width pruner.
    """

    name: ClassVar[str] = ""
    needs_data: ClassVar[bool] = False
    default_normalize: ClassVar[bool] = False

    def __init__(self, normalize: bool | None = None):
        self.normalize = self.default_normalize if normalize is None else bool(normalize)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normalize={self.normalize})"

    def raw_scores(
        self, model: nn.Module, groups: Sequence[ChannelGroup], data, seed: int
    ) -> list[np.ndarray | None]:
        raise NotImplementedError

    def check(self, model: nn.Module, groups: Sequence[ChannelGroup], data) -> None:
        """Raise :class:`CriterionError` if the criterion cannot score this model."""
        if self.needs_data and data is None:
            raise CriterionError(
                f"criterion {self.name!r} is data-driven: pass data= (a DataBundle or an "
                "iterable of (images, labels) batches)"
            )

    def __call__(
        self, model: nn.Module, groups: Sequence[ChannelGroup], *, data=None, seed: int = 0
    ) -> list[np.ndarray | None]:
        self.check(model, groups, data)
        with contextlib.nullcontext() if self.needs_data else torch.no_grad():
            scores = self.raw_scores(model, groups, data, seed)
        return [None if s is None else self._post(s) for s in scores]

    def _post(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.normalize:
            scores = l2_normalize(scores)
        return scores


def l2_normalize(scores: np.ndarray) -> np.ndarray:
    """Divide by the L2 norm (unchanged if the norm is zero)."""
    norm = float(np.sqrt(np.sum(np.square(scores))))
    return scores / norm if norm > 0 else scores


class BNScale(Criterion):
    """|gamma| of the group's BatchNorms, averaged over them (Network Slimming)."""

    name = "bn_scale"

    def check(self, model, groups, data) -> None:
        super().check(model, groups, data)
        if not any(g.batchnorms for g in groups):
            raise CriterionError(
                "criterion 'bn_scale' needs BatchNorm layers, and this model has none on its "
                "prunable channels: use criterion='l1' (filter L1 norm) instead"
            )

    def raw_scores(self, model, groups, data, seed):
        def gamma(member: GroupMember) -> torch.Tensor:
            bn = model.get_submodule(member.name)
            if getattr(bn, "weight", None) is None:
                return torch.ones(bn.num_features)
            return bn.weight.detach().abs()

        return [_mean_over(g, g.batchnorms, gamma) if g.batchnorms else None for g in groups]


def _filter_norm(model: nn.Module, member: GroupMember, p: int) -> torch.Tensor:
    weight = model.get_submodule(member.name).weight.detach()
    flat = weight.reshape(weight.shape[0], -1)
    return flat.abs().sum(1) if p == 1 else flat.pow(2).sum(1).sqrt()


def _norm_members(group: ChannelGroup) -> list[GroupMember]:
    # a depthwise filter (k x k weights) is not comparable to a full filter
    full = [m for m in group.producers if not m.depthwise]
    return full or group.producers


class FilterNorm(Criterion):
    """Norm of the group's output filters (``p=1`` or ``p=2``), averaged over layers."""

    p: ClassVar[int] = 1

    def raw_scores(self, model, groups, data, seed):
        return [
            _mean_over(g, _norm_members(g), lambda m: _filter_norm(model, m, self.p))
            if g.producers
            else None
            for g in groups
        ]


class L1(FilterNorm):
    """L1 norm of the output filters."""

    name = "l1"
    p = 1


class L2(FilterNorm):
    """L2 (Frobenius) norm of the output filters."""

    name = "l2"
    p = 2


class BNFilter(Criterion):
    """|gamma| x filter Frobenius norm ("synaptic strength")."""

    name = "bn_filter"

    def check(self, model, groups, data) -> None:
        BNScale().check(model, groups, data)

    def raw_scores(self, model, groups, data, seed):
        gammas = BNScale().raw_scores(model, groups, data, seed)
        norms = L2().raw_scores(model, groups, data, seed)
        return [None if a is None or b is None else a * b for a, b in zip(gammas, norms)]


def _squares_per_channel(layer: nn.Module, member: GroupMember) -> torch.Tensor | None:
    """Sum of squares of ``layer``'s parameters touching each of its channels on ``member``'s side.

    One value per channel of the layer (output channels if ``member.out``, else input
    channels), or None for a layer holding none (a BatchNorm without affine parameters).
    """
    weight = getattr(layer, "weight", None)
    if weight is None:
        return None
    weight = weight.detach().cpu().double()
    bias = getattr(layer, "bias", None)
    if member.kind == "bn":
        squares = weight.pow(2)
    elif member.kind == "linear":  # weight [out, in]
        squares = weight.pow(2).sum(1 if member.out else 0)
    else:
        squares = _conv_squares(layer, weight, member)
    # a bias belongs to the output channels (a BN's shift to its channels)
    if bias is not None and (member.out or member.kind == "bn"):
        squares = squares + bias.detach().cpu().double().pow(2)
    return squares


def _conv_squares(layer: nn.Module, weight: torch.Tensor, member: GroupMember) -> torch.Tensor:
    """Per channel: the sum of squares of the convolution weights touching it.

    A convolution's weight is ``[out, in / groups, *kernel]`` (transposed:
    ``[in, out / groups, *kernel]``). A channel of the first axis owns a whole slice of
    it; channel ``c`` of the second side, in a convolution of ``g`` groups, meets only
    the first-axis rows of its own group ``c // (n / g)``, at column ``c % (n / g)``:
    reshaping to ``[g, rows per group, columns, -1]`` and summing rows and kernel gives
    one value per channel, in order (for ``g = 1`` the plain column sums). A depthwise
    convolution (its input channel is its output channel) is a member once, as a
    producer: its filter ``weight[c]`` is counted once.
    """
    first_axis = member.out or member.depthwise
    if getattr(layer, "transposed", False):
        first_axis = not first_axis
    if first_axis:
        return weight.pow(2).flatten(1).sum(1)
    groups = int(getattr(layer, "groups", 1))
    blocks = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
    return blocks.pow(2).sum((1, 3)).reshape(-1)


def _group_magnitude(model: nn.Module, group: ChannelGroup) -> np.ndarray:
    """Per channel: sqrt of the sum of squares over every member's parameters touching it."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for member in group.members:
        if member.kind not in ("conv", "linear", "bn"):
            continue  # other layers (norms, layer scales) are not scored
        squares = _squares_per_channel(model.get_submodule(member.name), member)
        if squares is None:
            continue
        idxs = torch.as_tensor(member.idxs, dtype=torch.long)
        roots = torch.as_tensor(member.root_idxs, dtype=torch.long)
        # every index is in range by construction; should the dependency graph ever map
        # a channel past the layer's width, that entry is left out rather than misread
        inside = idxs < squares.numel()
        total.index_add_(0, roots[inside], squares.index_select(0, idxs[inside]))
    return total.sqrt().numpy()


class GroupMagnitude(Criterion):
    """L2 norm over all parameters touching the channel, divided by the group's mean.

    For channel ``c`` of a group: the square root of the sum of squares of its
    producers' output filters ``weight[c]`` and biases ``bias[c]``, its consumers' input
    slices (``weight[:, c]``, or for a grouped convolution the rows of ``c``'s group at
    ``c``'s column), and the scale and shift of every BatchNorm of the group. A
    depthwise convolution, whose input channel is its output channel, counts once. Each
    group's scores are then divided by their mean, so that a global ranking compares
    channels with their own layer's typical magnitude. Data-free; works without
    BatchNorm. ``normalize=True`` additionally divides by the L2 norm.
    """

    name = "group_norm"

    def raw_scores(self, model, groups, data, seed):
        scores = []
        for group in groups:
            values = _group_magnitude(model, group)
            mean = float(values.mean()) if values.size else 0.0
            scores.append(values / mean if mean > 0 else values)
        return scores


class RandomScores(Criterion):
    """Seeded uniform scores."""

    name = "random"

    def raw_scores(self, model, groups, data, seed):
        rng = np.random.default_rng(seed)
        return [rng.random(g.size) for g in groups]


class _DataCriterion(Criterion):
    needs_data = True

    def __init__(
        self,
        normalize: bool | None = None,
        n_batches: int = DEFAULT_N_BATCHES,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        super().__init__(normalize)
        if int(n_batches) < 1 or int(batch_size) < 1:
            raise ValueError("n_batches and batch_size must be positive integers")
        self.n_batches = int(n_batches)
        self.batch_size = int(batch_size)


class Taylor(_DataCriterion):
    """Molchanov et al.'s first-order Taylor criterion.

    Parameters
    ----------
    normalize : bool, optional
        Layer-wise L2 normalisation (default on).
    flops_lambda : float
        FLOPs regulariser: ``score - flops_lambda * share``, where ``share`` is the MACs
        that removing the channel saves divided by the mean over all channels of the
        model's groups (so 1 for an average channel). Molchanov use 1e-3; default 0 (off).
    n_batches, batch_size : int
        Training batches used to average the criterion.
    """

    name = "taylor"
    default_normalize = True

    def __init__(
        self,
        normalize: bool | None = None,
        flops_lambda: float = 0.0,
        n_batches: int = DEFAULT_N_BATCHES,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        super().__init__(normalize, n_batches, batch_size)
        if not math.isfinite(float(flops_lambda)) or flops_lambda < 0:
            raise ValueError(f"flops_lambda must be a non-negative number, got {flops_lambda}")
        self.flops_lambda = float(flops_lambda)

    def raw_scores(self, model, groups, data, seed):
        batches = take_batches(data, self.n_batches, self.batch_size, seed, model_device(model))
        points = {m.name for g in groups for m in g.activation_points}
        totals = [torch.zeros(g.size, dtype=torch.float64) for g in groups]
        examples = 0
        with eval_mode(model), ChannelGates(model, points, requires_grad=True) as gates:
            for images, labels in batches:
                gates.reset()
                model.zero_grad(set_to_none=True)
                # the loss is a batch mean: scale back to per-example gradients
                (_loss(model, images, labels) * len(labels)).backward()
                grads = {name: gates.per_example_grad(name) for name in gates.gates}
                for i, group in enumerate(groups):
                    per_example = torch.zeros(len(labels), group.size, dtype=torch.float64)
                    for member in group.activation_points:
                        if member.name in grads:
                            per_example += _scatter(group, member, grads[member.name].double())
                    totals[i] += per_example.abs().sum(0)
                examples += len(labels)
            model.zero_grad(set_to_none=True)
        return [(t / examples).numpy() for t in totals]

    def __call__(self, model, groups, *, data=None, seed=0):
        scores = super().__call__(model, groups, data=data, seed=seed)
        if self.flops_lambda > 0:
            shares = _macs_shares(model, groups, data, self.batch_size, seed)
            scores = [s - self.flops_lambda * c for s, c in zip(scores, shares)]
        return scores


class ActivationMean(_DataCriterion):
    """Mean |activation| of the channel over examples and positions."""

    name = "activation_mean"
    _stat = 0

    def raw_scores(self, model, groups, data, seed):
        batches = take_batches(data, self.n_batches, self.batch_size, seed, model_device(model))
        points = {m.name for g in groups for m in g.activation_points}
        with torch.no_grad(), eval_mode(model), ChannelGates(model, points, record=True) as gates:
            for images, _ in batches:
                model(images)
        return [
            _mean_over(g, g.activation_points, lambda m: self._value(gates.stats[m.name]))
            for g in groups
        ]

    @staticmethod
    def _value(stats) -> torch.Tensor:
        abs_sum, _, _, count = stats
        return abs_sum / count


class ActivationStd(ActivationMean):
    """Standard deviation of the channel's activation over examples and positions."""

    name = "activation_std"

    @staticmethod
    def _value(stats) -> torch.Tensor:
        _, total, squares, count = stats
        mean = total / count
        return (squares / count - mean**2).clamp(min=0).sqrt()


_REGISTRY: dict[str, type[Criterion]] = {
    cls.name: cls
    for cls in (
        BNScale,
        Taylor,
        L1,
        L2,
        BNFilter,
        GroupMagnitude,
        ActivationMean,
        ActivationStd,
        RandomScores,
    )
}
#: Names accepted by :func:`get_criterion`, default first.
CRITERIA: tuple[str, ...] = tuple(_REGISTRY)


def get_criterion(criterion: str | Criterion, **options) -> Criterion:
    """Return a criterion instance from a name (with options) or an instance.

    Parameters
    ----------
    criterion : str or Criterion
        A name from :data:`CRITERIA` or a :class:`Criterion` instance (returned as is).
    **options
        Constructor options, e.g. ``normalize=False`` or, for ``taylor``,
        ``flops_lambda=1e-3``.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones).
    """
    if isinstance(criterion, Criterion):
        if options:
            raise TypeError("options are only accepted with a criterion name")
        return criterion
    if not isinstance(criterion, str) or criterion.lower() not in _REGISTRY:
        raise ValueError(f"unknown criterion {criterion!r}; known criteria: {', '.join(CRITERIA)}")
    return _REGISTRY[criterion.lower()](**options)


def score_groups(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    criterion: str | Criterion = "bn_scale",
    *,
    data=None,
    seed: int = 0,
) -> list[np.ndarray | None]:
    """Score every channel of every group (higher = more important).

    Parameters
    ----------
    model : torch.nn.Module
        The model the groups were built from.
    groups : sequence of ChannelGroup
        From :func:`tridim.prune.groups.channel_groups`.
    criterion : str or Criterion
        A name from :data:`CRITERIA` or an instance.
    data : DataBundle or iterable of (images, labels), optional
        Needed by ``taylor``, ``activation_mean`` and ``activation_std``.
    seed : int
        Seeds batch sampling and the ``random`` criterion.

    Returns
    -------
    list of numpy.ndarray or None
        One array of length ``group.size`` per group; ``None`` where the criterion
        cannot score the group (kept whole by the pruner).
    """
    scores = get_criterion(criterion)(model, groups, data=data, seed=seed)
    for group, values in zip(groups, scores):
        if values is not None and (
            values.shape != (group.size,) or not np.all(np.isfinite(values))
        ):
            raise FloatingPointError(f"criterion produced invalid scores for {group.root}")
    return scores


# ----------------------------------------------------------------------------------------
# FLOPs shares (for the Taylor regulariser)


def _macs_shares(model, groups, data, batch_size, seed) -> list[np.ndarray]:
    """MACs saved by removing each channel, relative to the mean over all channels.

    Removing one output (input) channel of a layer saves its
    :func:`~tridim.cost.macs.layer_macs` divided by its output (input) channels; a
    depthwise convolution counts once, as a producer.
    """
    images = take_batches(data, 1, batch_size, seed, model_device(model))[0][0]
    geometry = layer_geometry(model, images)
    costs = []
    for group in groups:
        cost = np.zeros(group.size)
        for member in group.members:
            if member.name not in geometry or (member.depthwise and not member.out):
                continue
            cout, cin, conv_groups = layer_channels(model.get_submodule(member.name))
            if member.depthwise:  # each filter reads its own input channel
                cin, conv_groups = 1, 1
            geo = geometry[member.name]
            macs = layer_macs(cout, cin, conv_groups, geo["kernel"], geo["positions"])
            unit = macs // (cout if member.out else cin)
            np.add.at(cost, np.asarray(member.root_idxs), unit)
        costs.append(cost)
    mean = np.mean(np.concatenate(costs)) if costs else 1.0
    return [c / mean if mean > 0 else c for c in costs]
