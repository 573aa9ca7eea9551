"""Plan: how a base model was cut down to a (d, w, r) triple, as plain data.

A plan names the blocks removed, the channels removed (per coupled channel group) and
the input side kept, plus the measured MACs; it turns into JSON and back. It is what a
pruned model is saved as ("base model spec + plan + weights") and what every trial of a
run records. :func:`tridim.prune.realise.apply_plan` rebuilds the architecture from it.

This module does not import torch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tridim.search.space import Triple, check_input_size

__all__ = ["Plan", "PLAN_FORMAT"]

PLAN_FORMAT = 1


@dataclass(frozen=True)
class Plan:
    """How a base model was cut down to a triple: plain data, JSON-ready.

    Attributes
    ----------
    requested : Triple
        The triple asked for.
    realised : Triple
        What was built: ``d`` = blocks kept / blocks, ``w`` = prunable channels kept /
        prunable channels (over all coupled channel groups of the depth-pruned model),
        ``r`` = geometric mean of the kept side ratios.
    input_size : tuple of int
        ``(C, H, W)`` of the full-size input.
    removed_blocks : list of str
        Qualified names of the blocks replaced by identity.
    blocks_total : int
        Blocks in the base model.
    width_removal : dict
        ``{root layer name: sorted output-channel indices}`` removed from the
        depth-pruned model (:func:`tridim.prune.width.select_channels` format).
    channels_kept, channels_total : int
        Prunable channels kept and in total, counted once per coupled group.
    resolution : tuple of int
        ``(height, width)`` in pixels the pruned model runs at.
    macs, base_macs : int
        Conv + linear MACs of the pruned model (with its resize) and of the base model,
        both at the full input size.
    macs_ratio : float
        ``macs / base_macs``.
    target_flops_ratio : float or None
        The MACs ratio asked for, if any.
    criterion : str
        Width criterion name.
    base_spec : dict or None
        ``model.tridim_spec.to_dict()`` of the base model, if it has one.
    """

    requested: Triple
    realised: Triple
    input_size: tuple[int, int, int]
    removed_blocks: list[str]
    blocks_total: int
    width_removal: dict[str, list[int]]
    channels_kept: int
    channels_total: int
    resolution: tuple[int, int]
    macs: int
    base_macs: int
    macs_ratio: float
    target_flops_ratio: float | None = None
    criterion: str = "bn_scale"
    base_spec: dict | None = None
    format: int = field(default=PLAN_FORMAT)

    def same_network(self, other: Plan) -> bool:
        """Whether ``other``, a plan of the same base model, cuts it to the same network
        and input size (what :func:`~tridim.prune.realise.apply_plan` rebuilds from)."""
        return (
            sorted(self.removed_blocks) == sorted(other.removed_blocks)
            and self.width_removal == other.width_removal
            and tuple(self.resolution) == tuple(other.resolution)
        )

    def to_dict(self) -> dict:
        """A JSON-ready dict (lists for tuples, dicts for triples)."""
        return {
            "format": self.format,
            "requested": self.requested.to_dict(),
            "realised": self.realised.to_dict(),
            "input_size": list(self.input_size),
            "removed_blocks": list(self.removed_blocks),
            "blocks_total": self.blocks_total,
            "width_removal": {k: list(v) for k, v in sorted(self.width_removal.items())},
            "channels_kept": self.channels_kept,
            "channels_total": self.channels_total,
            "resolution": list(self.resolution),
            "macs": self.macs,
            "base_macs": self.base_macs,
            "macs_ratio": self.macs_ratio,
            "target_flops_ratio": self.target_flops_ratio,
            "criterion": self.criterion,
            "base_spec": copy.deepcopy(self.base_spec),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Plan:
        """Rebuild a plan from :meth:`to_dict` output, validating it.

        Raises
        ------
        ValueError
            On missing or unknown keys, wrong types, or a newer format.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing, unknown = sorted(required - set(data)), sorted(set(data) - names)
        if missing or unknown:
            raise ValueError(f"invalid plan: missing keys {missing}, unknown keys {unknown}")
        version = data.get("format", PLAN_FORMAT)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"invalid plan: format must be an integer, got {version!r}")
        if version > PLAN_FORMAT:
            raise ValueError(
                f"plan format {data['format']} is newer than this tridim reads "
                f"({PLAN_FORMAT}): upgrade tridim"
            )
        try:
            removal = {
                str(k): sorted(int(i) for i in v) for k, v in dict(data["width_removal"]).items()
            }
            target = data.get("target_flops_ratio")
            spec = data.get("base_spec")
            if spec is not None and not isinstance(spec, Mapping):
                raise TypeError("base_spec must be an object or null")
            return cls(
                requested=Triple.from_dict(data["requested"]),
                realised=Triple.from_dict(data["realised"]),
                input_size=check_input_size(data["input_size"]),
                removed_blocks=[_as_name(n) for n in data["removed_blocks"]],
                blocks_total=int(data["blocks_total"]),
                width_removal=removal,
                channels_kept=int(data["channels_kept"]),
                channels_total=int(data["channels_total"]),
                resolution=_as_pixels(data["resolution"]),
                macs=int(data["macs"]),
                base_macs=int(data["base_macs"]),
                macs_ratio=float(data["macs_ratio"]),
                target_flops_ratio=None if target is None else float(target),
                criterion=str(data.get("criterion", "bn_scale")),
                base_spec=None if spec is None else dict(spec),
                format=int(data.get("format", PLAN_FORMAT)),
            )
        except (TypeError, ValueError, KeyError, OverflowError, AttributeError) as error:
            raise ValueError(f"invalid plan: {error}") from None

    def to_json(self, indent: int | None = 2) -> str:
        """The plan as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise ValueError(f"a plan must be JSON text: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        """Read a plan file (a run folder's ``plan.json``).

        Raises
        ------
        ValueError
            If the file is not a valid plan; the message names it.
        """
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: {error}") from None


def _as_name(value) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"block names must be non-empty strings, got {value!r}")
    return value


def _as_pixels(value) -> tuple[int, int]:
    height, width = (int(v) for v in value)
    if height < 1 or width < 1:
        raise ValueError(f"resolution must be two positive integers, got {value!r}")
    return (height, width)
