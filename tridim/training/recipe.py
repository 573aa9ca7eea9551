"""How every trial of a run trains and is scored: tridim's own loop, or the user's.

A *recipe* finetunes a cut model and scores it. Every trial of a run (collection samples,
refine trials, the final model) goes through the run's one recipe, so the samples the
predictor learns from are made the way the final model is, whoever wrote the loop.

- :class:`OwnLoop` is tridim's loop (:func:`tridim.training.train.train`: SGD, cosine, optional
  distillation) on a :class:`~tridim.data.DataBundle`, scored by top-1 accuracy on a split.
- :class:`UserLoop` wraps the user's two functions::

      def finetune(model, epochs, *, teacher=None, trial=None) -> None: ...
      def evaluate(model) -> float: ...

  ``finetune`` trains ``model`` in place for ``epochs`` epochs (``teacher`` is the base
  model when the run distils, else None; ``trial`` says which trial this is, for
  logging: its ``key``, ``kind``, ``epochs`` and ``triple``); ``evaluate`` returns the
  score, higher is better unless ``higher_is_better=False`` (a loss). Every model the
  functions get takes the base model's full-size inputs (a cut resolution resizes
  inside the model), so the user's data pipeline does not change.

  A run resumes at the trial it was in. A ``finetune`` *object* that also has
  ``state_dict()`` and ``load_state_dict()`` resumes at the epoch: it is called one
  epoch at a time (``epochs=1``; ``trial.epochs`` is the trial's total, and a new
  ``trial.key`` starts a new trial), and after every epoch the model and its state go
  into the trial's checkpoint (read with ``weights_only=True``: the state must hold
  tensors, numbers, strings, lists and dicts, as an optimiser's state dict does).

Inside a run, scores are *oriented* (:meth:`Recipe.oriented`): the journal, predictor and
solver always maximise, and a lower-is-better score is stored negated; reports turn it
back (:meth:`Recipe.plain`).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from tridim.training.data import DataBundle
from tridim.training.device import Execution, eval_mode, model_device
from tridim.training.train import evaluate, load_checkpoint, save_checkpoint, teacher_outputs, train

__all__ = [
    "Recipe",
    "OwnLoop",
    "UserLoop",
    "check_score",
    "check_picklable",
    "probe_bundle",
    "user_recipe",
]

#: Probe examples kept from ``probe_data`` (what the depth probes use by default).
PROBE_EXAMPLES = 512


class Recipe:
    """The interface trials use: finetune a model, score it (see the module docstring)."""

    #: What the score is called in reports ("accuracy" for tridim's own loop).
    score_name: str = "accuracy"
    #: Whether a larger score is better.
    higher_is_better: bool = True
    #: Whether a trial's finetune resumes from an epoch checkpoint (else from its start).
    checkpoints_epochs: bool = False

    def finetune(
        self,
        model: nn.Module,
        trial,
        *,
        teacher: nn.Module | None,
        checkpoint_path: str | os.PathLike | None,
        quiet: bool,
        execution: Execution,
    ) -> None:
        """Train ``model`` in place for ``trial.epochs`` epochs."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, split: str, execution: Execution) -> float:
        """The plain score of ``model`` on ``split`` ("val" or "test")."""
        raise NotImplementedError

    def same_training(self, trial, other) -> bool:
        """Whether ``trial`` and ``other`` finetune on the same data the same way, so
        that one may go on from the other's model (the final model continues the last
        refine trial's then). A user's loop may train trials differently: False."""
        return False

    def oriented(self, score: float) -> float:
        """``score`` turned so that larger is better (what runs store and maximise)."""
        return score if self.higher_is_better else -score

    def plain(self, oriented: float) -> float:
        """The inverse of :meth:`oriented`."""
        return self.oriented(oriented)

    def describe(self) -> dict:
        """JSON-ready: which loop, and what its score means."""
        return {
            "loop": type(self).__name__,
            "score": self.score_name,
            "higher_is_better": self.higher_is_better,
        }


@dataclass
class OwnLoop(Recipe):
    """tridim's loop (:func:`tridim.training.train.train`) on ``data``; top-1 accuracy.

    ``sample_data`` is the training subset samples and refine trials finetune on (None:
    ``data``); the final trial always trains on ``data``.
    """

    data: DataBundle
    sample_data: DataBundle | None = None
    lr: float = 0.02
    batch_size: int = 128
    checkpoints_epochs = True

    def __post_init__(self) -> None:
        self._teacher_outputs: dict = {}
        self._lock = threading.Lock()  # trials in threads (collect's executor) share it

    def __getstate__(self) -> dict:  # worker processes compute their own
        return {key: value for key, value in self.__dict__.items() if key != "_lock"} | {
            "_teacher_outputs": {}
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def finetune(self, model, trial, *, teacher, checkpoint_path, quiet, execution) -> None:
        data = self.training_data(trial)
        train(
            model,
            data,
            trial.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=trial.train_seed,
            teacher=teacher,
            teacher_outputs=self._outputs_of(teacher, data.train, execution),
            evaluate_each_epoch=False,
            checkpoint_path=checkpoint_path,
            quiet=quiet,
            label=trial.label or trial.key,
            precision=execution.precision,
            channels_last=execution.channels_last,
        )

    def _outputs_of(self, teacher, dataset, execution: Execution):
        """The teacher's outputs on an in-memory training set, computed once per run and
        precision (every distilled trial then saves the teacher's forward pass per step);
        None when it cannot be cached (no teacher, or a dataset that may augment)."""
        if teacher is None or not isinstance(dataset, TensorDataset):
            return None
        key = (id(teacher), id(dataset), execution.precision)
        with self._lock:
            if key not in self._teacher_outputs:  # teacher and dataset kept alive with it
                outputs = teacher_outputs(teacher, dataset, precision=execution.precision)
                self._teacher_outputs[key] = (teacher, dataset, outputs)
            return self._teacher_outputs[key][2]

    def training_data(self, trial) -> DataBundle:
        """What ``trial`` finetunes on: the sample subset, except for the final model."""
        if trial.kind == "final" or self.sample_data is None:
            return self.data
        return self.sample_data

    def same_training(self, trial, other) -> bool:
        return self.training_data(trial) is self.training_data(other)

    def evaluate(self, model, split, execution) -> float:
        loader = self.data.loader(split, 256, device=model_device(model))
        return evaluate(model, loader, precision=execution.precision)


@dataclass
class UserLoop(Recipe):
    """The user's ``finetune`` and ``evaluate`` functions (module docstring).

    ``evaluate`` is called for every split the run scores ("val" for samples and refine
    trials, "test" for the base and final models): a user's loop has one score.
    """

    finetune_function: Callable
    evaluate_function: Callable
    score_name: str = "score"
    higher_is_better: bool = True

    def __post_init__(self) -> None:
        for name in ("finetune_function", "evaluate_function"):
            if not callable(getattr(self, name)):
                given = getattr(self, name)
                raise TypeError(
                    f"{name.split('_')[0]} must be a function, got {type(given).__name__}: "
                    "pass finetune(model, epochs, *, teacher=None, trial=None) and "
                    "evaluate(model) -> float"
                )
        if not isinstance(self.higher_is_better, bool):
            raise ValueError(
                f"higher_is_better must be True or False, got {self.higher_is_better!r}"
            )

    @property
    def checkpoints_epochs(self) -> bool:
        """A ``finetune`` object with ``state_dict()`` and ``load_state_dict()`` (its
        optimiser and schedule) resumes inside a trial, from its last epoch."""
        function = self.finetune_function
        return callable(getattr(function, "state_dict", None)) and callable(
            getattr(function, "load_state_dict", None)
        )

    def finetune(self, model, trial, *, teacher, checkpoint_path, quiet, execution) -> None:
        if not (self.checkpoints_epochs and checkpoint_path is not None):
            model.train()
            self.finetune_function(model, trial.epochs, teacher=teacher, trial=trial)
            model.eval()
            return
        function = self.finetune_function
        first = 0
        if os.path.isfile(checkpoint_path):
            state = load_checkpoint(checkpoint_path, model)
            function.load_state_dict(state["loop"])
            first = state["epoch"]
        for epoch in range(first, trial.epochs):  # one epoch per call, then a checkpoint
            model.train()
            function(model, 1, teacher=teacher, trial=trial)
            save_checkpoint(checkpoint_path, model, epoch=epoch + 1, loop=function.state_dict())
        model.eval()

    def evaluate(self, model, split, execution) -> float:
        model.eval()
        return check_score(self.evaluate_function(model), self.score_name)


def check_score(value, name: str = "score") -> float:
    """A user's score as a finite float, or a clear error."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"evaluate(model) must return a number ({name}), got {type(value).__name__}"
        ) from None
    if not math.isfinite(score):
        raise ValueError(f"evaluate(model) returned {score} for the {name}: it must be finite")
    return score


def user_recipe(
    finetune: Callable | None,
    evaluate: Callable | None,
    *,
    higher_is_better: bool = True,
    score_name: str = "score",
) -> UserLoop | None:
    """The user's loop, or None (tridim's own) when neither function is given. The score
    takes the name of the ``evaluate`` function (``macro_f1``), unless it is plain
    ``evaluate``, ``score`` or a lambda (then "score")."""
    if finetune is None and evaluate is None:
        if higher_is_better is not True:
            raise ValueError("higher_is_better applies to a user's evaluate(): pass evaluate=")
        return None
    if finetune is None or evaluate is None:
        missing = "finetune" if finetune is None else "evaluate"
        raise ValueError(
            f"a user's loop needs both functions: {missing}= is missing (finetune(model, "
            "epochs, *, teacher=None, trial=None) trains in place; evaluate(model) -> float)"
        )
    if score_name == "score":  # a metric named by its function: macro_f1, val_loss, ...
        named = getattr(evaluate, "__name__", "")
        if named.isidentifier() and named not in ("evaluate", "score"):
            score_name = named
    return UserLoop(finetune, evaluate, score_name, higher_is_better)


def check_picklable(recipe: Recipe, cluster: str) -> None:
    """Trials on worker processes or Ray receive the recipe pickled: refuse, before any
    work, a user's loop that cannot travel (a lambda, a function defined in a notebook
    cell that workers cannot import, an object holding an open file)."""
    import pickle

    try:
        pickle.dumps(recipe)
    except Exception as error:
        raise ValueError(
            f"cluster={cluster!r} sends your finetune and evaluate to worker processes, "
            f"but they cannot be pickled ({error}): define them at module level in an "
            "importable file, or run without cluster"
        ) from error


def probe_bundle(
    model: nn.Module, example_input, probe_data: Iterable | None, *, name: str = "probe data"
) -> DataBundle:
    """A small in-memory :class:`~tridim.data.DataBundle` for what tridim reads data for
    besides training (the depth probes, data-driven width criteria), from a user's loop.

    ``example_input`` is one input batch or example, ``(C, H, W)`` or ``(N, C, H, W)``;
    ``probe_data`` any iterable of input batches, or of ``(inputs, labels, ...)`` tuples:
    up to :data:`PROBE_EXAMPLES` examples are kept. Where labels are missing or are not
    one class index per example (multi-label targets, boxes), the base model's
    predicted class stands in for them. Without ``probe_data`` the bundle holds the
    example input alone (enough when nothing needs data).
    """
    example = _as_batch(example_input, "example_input")
    inputs, labels = (
        _gather(probe_data, example.shape[1:])
        if probe_data is not None
        else (
            example,
            None,
        )
    )
    with torch.no_grad(), eval_mode(model):
        outputs = model(inputs[:2].to(model_device(model)))
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
        raise ValueError(
            "tridim reads the model's output as (batch, classes) scores; this model returned "
            f"{type(outputs).__name__} {tuple(getattr(outputs, 'shape', ()))}: wrap it so that "
            "forward returns one score tensor per example"
        )
    classes = outputs.shape[1]
    if labels is None:
        labels = _predicted(model, inputs)
    dataset = TensorDataset(inputs, labels)
    return DataBundle(name, dataset, dataset, dataset, tuple(inputs.shape[1:]), classes)


def _as_batch(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.dim() == 3:
        value = value.unsqueeze(0)
    if value.dim() != 4 or value.shape[0] == 0:
        raise ValueError(
            f"{name} must be one image (C, H, W) or a batch (N, C, H, W), got shape "
            f"{tuple(value.shape)}"
        )
    return value.detach().float().cpu()


def _gather(probe_data: Iterable, shape) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to PROBE_EXAMPLES inputs (and class labels, when every batch has them)."""
    inputs, labels, kept = [], [], 0
    for batch in probe_data:
        images, targets = (
            (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        )
        images = _as_batch(images, "a probe_data batch")
        if tuple(images.shape[1:]) != tuple(shape):
            raise ValueError(
                f"probe_data batches must match example_input's shape {tuple(shape)}, got "
                f"{tuple(images.shape[1:])}"
            )
        inputs.append(images)
        class_labels = isinstance(targets, torch.Tensor) and targets.dim() == 1
        labels.append(
            targets.long().cpu() if class_labels and len(targets) == len(images) else None
        )
        kept += len(images)
        if kept >= PROBE_EXAMPLES:
            break
    if not inputs:
        raise ValueError("probe_data gave no batch: pass an iterable of input batches")
    images = torch.cat(inputs)[:PROBE_EXAMPLES]
    if any(label is None for label in labels):
        return images, None
    return images, torch.cat(labels)[:PROBE_EXAMPLES]


def _predicted(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The model's predicted class of every input (labels for the probes)."""
    device = model_device(model)
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(c.to(device)).argmax(dim=1).cpu() for c in inputs.split(128)])
