"""RunStore: the one owner of a run folder.

A run folder holds everything one compression run produced, so that a re-run on the
same folder resumes where the last one stopped and every stage's output can be read
back alone::

    manifest.json     what the run is (model, weights fingerprint, data, settings);
                      a folder never mixes two runs
    samples.jsonl     the journal: one line per finished trial (base, depth:k,
                      width:k, resolution:k, refine:k, ...), each key once
    steps/<key>.pt    weights of each finished trial's model, and
    steps/<key>.json  its Plan and Sample, so a resumed run continues from it
    steps/<key>.ckpt  per-epoch checkpoint of a trial still training
    predictor.json    the fitted accuracy predictor
    plan.json         the final model's Plan
    model/            the final model (see :func:`tridim.run.io.save`)
    report.json, report.md

Every file is written atomically (:mod:`tridim.atomic`) and the journal is append-only
(:mod:`tridim.search.samples`), so a crash loses at most the trial that was running.

:class:`Run` and :func:`load_run` are the read-only view used by notebooks, figures and
``tridim report``. This module imports torch only to read and write weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tridim.atomic import atomic_write, atomic_write_json
from tridim.search.plan import Plan
from tridim.search.predictor import LowRankPolynomialRegressor
from tridim.search.samples import Sample, append_sample, read_samples
from tridim.search.space import Triple, as_triple

__all__ = ["RunStore", "RunMismatch", "StepRecord", "Run", "load_run"]

MANIFEST = "manifest.json"
JOURNAL = "samples.jsonl"
#: Journals of runs written before every trial shared one journal; still read.
LEGACY_JOURNALS = ("refine.jsonl",)
PREDICTOR = "predictor.json"
PLAN = "plan.json"
MODEL = "model"
REPORT = "report.json"
REPORT_MARKDOWN = "report.md"
STEPS = "steps"
LATENCY = "latency.json"
#: The cost model the run solved with (:meth:`tridim.budget.cost_model.CostModel.describe`).
COST = "cost.json"
#: The base model's block gains (linear probes), measured once per run folder.
GAINS = "gains.json"
#: The base model the command line trains for a run, and the default figures folder.
BASE = "base"
PLOTS = "plots"
#: What a manifest says it is; manifests written before it are known by their sections.
FORMAT = "tridim run"
#: Everything a run writes into its folder: :meth:`RunStore.clear` deletes these alone.
RUN_FILES = (
    MANIFEST,
    JOURNAL,
    *LEGACY_JOURNALS,
    PREDICTOR,
    COST,
    PLAN,
    REPORT,
    REPORT_MARKDOWN,
    LATENCY,
    GAINS,
)
RUN_FOLDERS = (MODEL, STEPS, BASE, PLOTS)


class RunMismatch(ValueError):
    """The run folder holds a different run (the message names the differing fields)."""


@dataclass(frozen=True)
class StepRecord:
    """A finished trial read back from the store: its weights, plan and sample."""

    state_dict: dict
    plan: Plan
    sample: Sample


class RunStore:
    """Reads and writes one run folder; see the module docstring for its layout.

    Parameters
    ----------
    path : str or path-like
        The run folder; created by :meth:`open`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"workdir {self.path} is a file, not a folder: pick another path")

    def __repr__(self) -> str:
        return f"RunStore({str(self.path)!r})"

    @property
    def writes(self) -> bool:
        """Whether this process writes the folder: under torchrun only rank 0 does; the
        other ranks' writes are no-ops (they read what rank 0 wrote)."""
        from tridim.training.distributed import is_writer

        return is_writer()

    # ------------------------------------------------------------------ manifest

    def open(self, manifest: Mapping[str, Any]) -> None:
        """Create the folder for ``manifest``, or check that it already holds that run.

        Sections the folder's manifest lacks are added (a run started by ``tridim
        collect`` and continued by ``optimize`` gains the ``optimize`` settings).

        Raises
        ------
        RunMismatch
            If the folder holds a run with a different manifest; the message names every
            differing field (``settings.criterion``, ``weights_fingerprint``, ...).
        """
        path = self.path / MANIFEST
        manifest = json.loads(json.dumps({"format": FORMAT, **manifest}))  # as it is stored
        existing = self.check(manifest)
        if not self.writes:
            return
        if existing is None:
            atomic_write_json(path, manifest)
        elif any(key not in existing for key in manifest):
            atomic_write_json(path, {**existing, **manifest})

    def check(self, manifest: Mapping[str, Any]) -> dict | None:
        """Raise :class:`RunMismatch` if the folder holds a run that differs from
        ``manifest`` in a field both have; return the folder's manifest (None if new).

        Cheap: call it with what is known before training (data, settings) to fail fast.
        """
        path = self.path / MANIFEST
        if not path.is_file():
            return None
        try:
            existing = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunMismatch(f"{path} is corrupted; delete the workdir or pick another") from None
        different = _differing_fields(existing, json.loads(json.dumps(manifest)))
        if different:
            raise RunMismatch(
                f"workdir {self.path} holds another run (its {MANIFEST} differs in "
                f"{', '.join(different)}); "
                "refusing to mix journals. Use a new workdir, or delete this one to start "
                "over (on the command line: --force)."
            )
        return existing

    def clear(self) -> None:
        """Delete this folder's run, and only what a run writes, to start a new one.

        Files that are not a run's (a project the folder also holds) stay; the folder
        itself goes only if nothing else is left in it.

        Raises
        ------
        ValueError
            If the folder's ``manifest.json`` is not a tridim run's (or is unreadable):
            nothing is deleted.
        """
        path = self.path / MANIFEST
        if not self.writes or not path.is_file():
            return
        try:
            existing = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = None
        if not is_run_manifest(existing):
            raise ValueError(
                f"{path} is not a tridim run's manifest: refusing to delete anything in "
                f"{self.path}; pick another workdir"
            )
        for name in RUN_FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
            for unfinished in self.path.glob(f".{name}.*"):  # left by a crashed atomic write
                unfinished.unlink(missing_ok=True)
        if not any(self.path.iterdir()):
            self.path.rmdir()

    # ------------------------------------------------------------------ journal

    def samples(self) -> list[Sample]:
        """Every sample of the journal (and of legacy journals), in file order."""
        samples = []
        for name in (JOURNAL, *LEGACY_JOURNALS):
            if (self.path / name).is_file():
                samples += read_samples(self.path / name)
        return samples

    def sample(self, key: str) -> Sample | None:
        """The journal's sample with this key, if the trial has finished."""
        return next((s for s in self.samples() if s.extra.get("key") == key), None)

    def record(self, sample: Sample) -> None:
        """Append ``sample`` to the journal unless its key is already there."""
        key = sample.extra.get("key")
        if key is None:
            raise ValueError("a journal sample needs a 'key' in its extra fields")
        if self.writes and self.sample(key) is None:
            append_sample(self.path / JOURNAL, sample)

    # ------------------------------------------------------------------ trial steps

    def _step_file(self, key: str, suffix: str) -> Path:
        return self.path / STEPS / (key.replace(":", "-") + suffix)

    def checkpoint_path(self, key: str) -> Path:
        """Where the trial ``key`` keeps its per-epoch training checkpoint."""
        return self._step_file(key, ".ckpt")

    def save_step(self, key: str, state_dict: dict, plan: Plan, sample: Sample) -> None:
        """Store a finished trial: weights first, then the plan and sample that name it."""
        import torch

        if not self.writes:
            return
        atomic_write(self._step_file(key, ".pt"), lambda handle: torch.save(state_dict, handle))
        record = {"plan": plan.to_dict(), "sample": sample.to_dict()}
        atomic_write_json(self._step_file(key, ".json"), record, indent=None)
        self.checkpoint_path(key).unlink(missing_ok=True)

    def load_step(self, key: str) -> StepRecord | None:
        """The stored trial ``key`` (weights on the CPU), or None if it has not finished."""
        import torch

        weights, meta = self._step_file(key, ".pt"), self._step_file(key, ".json")
        if not (weights.is_file() and meta.is_file()):
            return None
        info = json.loads(meta.read_text())
        state = torch.load(weights, map_location="cpu", weights_only=True)
        return StepRecord(state, Plan.from_dict(info["plan"]), Sample.from_dict(info["sample"]))

    # ------------------------------------------------------------------ artifacts

    def file(self, name: str) -> Path:
        """The path of an artifact of this run (e.g. ``store.file("report.md")``)."""
        return self.path / name

    def write_json(self, name: str, value: Any) -> Path:
        """Write an artifact as JSON, atomically."""
        if not self.writes:
            return self.path / name
        return atomic_write_json(self.path / name, value)

    def read_json(self, name: str) -> Any | None:
        """An artifact read as JSON, or None if absent; ValueError naming it if unreadable."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None

    def write_text(self, name: str, text: str) -> Path:
        """Write a text artifact atomically."""
        if not self.writes:
            return self.path / name
        return atomic_write(self.path / name, text)

    def save_predictor(self, predictor: LowRankPolynomialRegressor) -> dict:
        """Write the fitted predictor to ``predictor.json``; return its summary."""
        if not self.writes:
            return predictor.summary()
        return predictor.save(self.path / PREDICTOR)

    def load_predictor(self) -> LowRankPolynomialRegressor | None:
        """The run's fitted predictor, or None if it has not been written."""
        path = self.path / PREDICTOR
        return LowRankPolynomialRegressor.load(path) if path.is_file() else None


def is_run_manifest(manifest: Any) -> bool:
    """Whether ``manifest`` (parsed JSON) is a tridim run folder's manifest."""
    if not isinstance(manifest, dict):
        return False
    if "format" in manifest:
        return manifest["format"] == FORMAT
    return {"model", "weights_fingerprint", "data", "settings"} <= manifest.keys()


def _differing_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields two manifests hold with different values.

    A top-level section only one of them has is not a difference (a collection run
    later continued by ``optimize`` adds its own settings).
    """
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix or "manifest"]
    names = []
    for key in sorted(set(old) | set(new)):
        name = f"{prefix}.{key}" if prefix else key
        if key in old and key in new:
            names += _differing_fields(old[key], new[key], name)
        elif prefix:
            names.append(name)
    return names


# ---------------------------------------------------------------------- read-only view


@dataclass
class Run:
    """What :func:`load_run` reads from a run folder written by ``tridim optimize``.

    Attributes
    ----------
    path : Path
        The run folder.
    predictor : LowRankPolynomialRegressor
        The fitted predictor (``predictor.json``).
    samples : list of Sample
        The journal's samples (collection and refine trials); rebuilt from the
        predictor's training data if the folder has no journal.
    report : dict
        ``report.json``, or an empty dict if absent.
    """

    path: Path
    predictor: LowRankPolynomialRegressor
    samples: list[Sample]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> float | None:
        """The run's FLOPs budget (``report["target_flops_ratio"]``), if known."""
        value = self.report.get("target_flops_ratio")
        return None if value is None else float(value)

    @property
    def solved_triple(self) -> Triple | None:
        """The solver's continuous optimum for the run's budget, if reported."""
        value = self.report.get("solved_triple")
        return None if value is None else as_triple(value)

    @property
    def realised_triple(self) -> Triple | None:
        """The triple of the model actually built, if reported."""
        value = self.report.get("triple")
        return None if value is None else as_triple(value)


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read the predictor, samples and report of a run folder.

    Parameters
    ----------
    run_dir : str or path-like
        A folder holding at least ``predictor.json``.

    Returns
    -------
    Run

    Raises
    ------
    FileNotFoundError
        If ``run_dir/predictor.json`` does not exist.
    """
    store = RunStore(run_dir)
    predictor = store.load_predictor()
    if predictor is None:
        raise FileNotFoundError(
            f"{store.file(PREDICTOR)} not found: is {store.path} a run folder written by "
            "`tridim optimize`?"
        )
    samples = store.samples() or [
        Sample(*x, accuracy=float(y))
        for x, y in zip(predictor.X_train_.tolist(), predictor.y_train_)
    ]
    return Run(store.path, predictor, samples, store.read_json(REPORT) or {})
