"""What a run cost: trials, epochs, images, seconds and base-training equivalents.

A trial that finetunes a model of MACs ratio ``m`` for ``e`` epochs costs about
``e * m`` epochs of the base model's training (a training step is one forward and one
backward pass, both proportional to MACs), times the share of the training set it
finetunes on (``sample_fraction``). Distilling from the base model adds its forward
pass, a third of a base training step (a backward pass costs about two forward passes):
at every step, ``e * (m + 1/3)`` base epochs, when the teacher runs beside the student;
once per training set and run, a third of a base epoch times that set's share, when
tridim's loop computed the teacher's outputs once (in-memory data, trials in this
process; the ``teacher`` stage). Divided by the epochs the base model was trained for,
that is the cost in **base-training equivalents**: 1.0 is what training the base model
once cost.

This module does not import torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tridim.search.samples import Sample

__all__ = ["FORMULA", "TEACHER_SHARE", "stage_cost", "teacher_cost", "compute_record"]

#: A teacher's forward pass, as a share of one base training step (forward + backward).
TEACHER_SHARE = 1.0 / 3.0
FORMULA = (
    "base epochs = epochs x (MACs ratio + 1/3 if the base model's forward pass ran at "
    "every distilled step) x the share of the training set a trial sees, plus 1/3 x the "
    "share of each training set whose teacher outputs were computed once (stage "
    "'teacher'); base-training equivalents = base epochs / the epochs the base model "
    "was trained for"
)


def stage_cost(
    samples: Iterable[Sample], *, train_images: int | None, distill: bool, data_share: float = 1.0
) -> dict:
    """Trials, epochs, images seen, seconds and base epochs of one stage's samples, each
    finetuned on ``train_images`` images (None: unknown, a user's loop),
    ``data_share`` of the base model's training set."""
    samples = list(samples)
    teacher = TEACHER_SHARE if distill else 0.0
    epochs = [int(s.extra.get("epochs", 0)) for s in samples]
    return {
        "trials": sum(e > 0 for e in epochs),
        "epochs": sum(epochs),
        "images": None if train_images is None else sum(epochs) * train_images,
        "seconds": sum(float(s.extra.get("seconds", 0.0)) for s in samples),
        "base_epochs": data_share
        * sum(
            e * (float(s.extra.get("macs_ratio", 1.0)) + teacher)
            for e, s in zip(epochs, samples)
            if e > 0
        ),
    }


def teacher_cost(passes: Iterable[int], train_images: int) -> dict:
    """The ``teacher`` stage: one forward pass of the base model over each training set
    of ``passes`` (their sizes), as shares of the base model's ``train_images``."""
    passes = list(passes)
    return {
        "trials": 0,
        "epochs": 0,
        "images": sum(passes),
        "seconds": 0.0,  # inside the trials' seconds
        "base_epochs": TEACHER_SHARE * sum(passes) / train_images,
    }


def compute_record(stages: Mapping[str, dict], base_training_epochs: int | None) -> dict:
    """``report["compute"]``: each stage's cost, the search's (every stage but the final
    finetune and the base) and the total, in base-training equivalents when the base
    model's training epochs are known (else None)."""

    def equivalents(cost: dict) -> dict:
        share = None
        if base_training_epochs:
            share = cost["base_epochs"] / base_training_epochs
        return {**cost, "base_trainings": share}

    search = [name for name in stages if name not in ("base", "final")]
    totals = {
        name: {key: _total(stages[s][key] for s in members) for key in _KEYS}
        for name, members in (("search", search), ("total", list(stages)))
    }
    return {
        "formula": FORMULA,
        "base_training_epochs": base_training_epochs,
        "stages": {name: equivalents(cost) for name, cost in stages.items()},
        "search": equivalents(totals["search"]),
        "total": equivalents(totals["total"]),
    }


_KEYS = ("trials", "epochs", "images", "seconds", "base_epochs")


def _total(values: Iterable) -> float | None:
    """The sum, or None when any value is unknown."""
    values = list(values)
    return None if any(v is None for v in values) else sum(values)
