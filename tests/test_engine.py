"""The engine: collection journal and resume, optimize(), saving, loading and ONNX."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import tridim
from tridim.run.collect import collect, step_values
from tridim.run.store import JOURNAL as JOURNAL_NAME
from tridim.run.store import RunStore
from tridim.search.samples import read_samples
from tridim.training import models

EPOCHS = 1


def _values(samples):
    return {s.extra["key"]: (s.d, s.w, s.r, s.accuracy) for s in samples}


def test_step_values_end_where_each_dimension_meets_the_target():
    values = step_values(0.25, 4)
    assert values["depth"][-1] == pytest.approx(0.25)
    assert values["width"][-1] == pytest.approx(0.5)
    assert values["resolution"][-1] == pytest.approx(0.5)
    assert all(np.diff(v).max() < 0 for v in values.values())


def test_collect_writes_one_sample_per_step_and_resume_skips_them(tiny, base_model, tmp_path):
    settings = dict(workdir=tmp_path, rounds=2, design=4, epochs_per_step=EPOCHS, quiet=True)
    samples = collect(base_model, tiny, 0.5, **settings)
    assert len(samples) == 1 + 3 * 2 + 4  # base, two axis points per dimension, 4 mixed
    keys = [s.extra["key"] for s in samples]
    assert len(set(keys)) == len(keys)
    by_dim = {
        d: [s for s in samples if s.extra["dimension"] == d]
        for d in ("depth", "width", "resolution", "design")
    }
    assert all(s.w == 1 and s.r == 1 for s in by_dim["depth"])
    assert all(s.d == 1 and s.r == 1 for s in by_dim["width"])
    assert all(s.d == 1 and s.w == 1 for s in by_dim["resolution"])
    for dim in ("depth", "width", "resolution"):
        ratios = [s.extra["macs_ratio"] for s in by_dim[dim]]
        assert ratios == sorted(ratios, reverse=True) and ratios[-1] < 1
    for s in by_dim["design"]:  # mixed points shrink several dimensions, near the budget
        assert sum(x < 1 for x in (s.d, s.w, s.r)) >= 2, s
        assert 0.3 < s.extra["macs_ratio"] < 0.75, s
    started = time.perf_counter()
    again = collect(base_model, tiny, 0.5, **settings)
    assert time.perf_counter() - started < 10  # nothing is retrained
    assert _values(again) == _values(samples)


def test_collect_refuses_a_workdir_of_another_collection(tiny, base_model, tmp_path):
    collect(base_model, tiny, 0.5, workdir=tmp_path, rounds=1, epochs_per_step=0, quiet=True)
    with pytest.raises(ValueError, match="refusing to mix journals"):
        collect(base_model, tiny, 0.3, workdir=tmp_path, rounds=1, epochs_per_step=0, quiet=True)
    other = models.build("resnet20", 10, 1)
    with pytest.raises(ValueError, match="weights_fingerprint"):
        collect(other, tiny, 0.5, workdir=tmp_path, rounds=1, epochs_per_step=0, quiet=True)


def test_collect_ignores_a_torn_last_line(tiny, base_model, tmp_path):
    collect(base_model, tiny, 0.5, workdir=tmp_path, rounds=1, epochs_per_step=0, quiet=True)
    journal = tmp_path / JOURNAL_NAME
    with open(journal, "a") as handle:
        handle.write('{"d": 0.5, "w": 1.0, "r"')
    with pytest.warns(UserWarning):
        samples = collect(
            base_model, tiny, 0.5, workdir=tmp_path, rounds=1, epochs_per_step=0, quiet=True
        )
    assert len(samples) == 1 + 3  # base and one axis point per dimension (no mixed ones)


def test_collect_with_an_executor_gives_the_same_samples(tiny, base_model, tmp_path):
    serial = collect(
        base_model, tiny, 0.5, workdir=tmp_path / "a", rounds=1, epochs_per_step=EPOCHS, quiet=True
    )
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = collect(
            base_model,
            tiny,
            0.5,
            workdir=tmp_path / "b",
            rounds=1,
            epochs_per_step=EPOCHS,
            executor=pool,
            quiet=True,
        )
    assert _values(serial) == _values(threaded)


_CHILD = textwrap.dedent("""
    import sys, torch
    from tridim.training import data, models
    from tridim.run.collect import collect
    from tridim.training.train import load_checkpoint
    torch.set_num_threads(1)
    bundle = data.load("digits").subset(train=256, val=128, test=128)
    model = models.build("resnet20", 10, 1)
    load_checkpoint(sys.argv[2], model)
    collect(model, bundle, 0.5, workdir=sys.argv[1], rounds=2, design=1, epochs_per_step=1,
            quiet=True)
""")


def test_killed_collection_resumes_without_loss_or_duplicates(tiny, base_model, tmp_path):
    from tridim.training.train import save_checkpoint

    weights = tmp_path / "base.pt"
    save_checkpoint(weights, base_model)
    reference = tmp_path / "reference"
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(reference), str(weights)],
        check=True,
        env=env,
        timeout=600,
    )
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(killed), str(weights)], env=env)
    journal = killed / JOURNAL_NAME
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a few samples are in, mid-collection
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = len(read_samples(journal))
    assert 1 <= partial < 8
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(killed), str(weights)], check=True, env=env, timeout=600
    )
    resumed = read_samples(journal)
    keys = [s.extra["key"] for s in resumed]
    assert len(keys) == len(set(keys)) == 8
    expected = _values(read_samples(reference / JOURNAL_NAME))
    got = _values(resumed)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def _as_given(model: torch.nn.Module) -> tuple:
    """Everything about a caller's model that tridim must leave as it found it."""
    modes = {name: module.training for name, module in model.named_modules()}
    tensors = {name: value.detach().clone() for name, value in model.state_dict().items()}
    return modes, tensors, {value.device for value in tensors.values()}


def _assert_unchanged(model: torch.nn.Module, given: tuple) -> None:
    modes, tensors, devices = _as_given(model)
    assert modes == given[0]
    assert devices == given[2]
    assert tensors.keys() == given[1].keys()
    for name, value in tensors.items():
        assert torch.equal(value, given[1][name]), name


def test_optimize_end_to_end_and_reuse(tiny, base_model, tmp_path):
    modes = {module: module.training for module in base_model.modules()}
    base_model.train()
    base_model.layer1.eval()  # a caller's model half in eval mode must come back so
    given = _as_given(base_model)
    result = tridim.optimize(
        base_model,
        tiny,
        0.5,
        workdir=tmp_path / "run",
        rounds=2,
        epochs_per_step=EPOCHS,
        final_epochs=1,
        refine=1,
        quiet=True,
        latency_repeats=2,
        latency_batch=8,
    )
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    for key in (
        "target_flops_ratio",
        "macs_ratio",
        "triple",
        "base_accuracy",
        "accuracy",
        "predicted_accuracy",
        "macs_before",
        "macs_after",
        "params_before",
        "params_after",
        "latency_ms",
        "seconds",
        "settings",
    ):
        assert key in report, key
    assert abs(report["macs_ratio"] - 0.5) <= 0.01 * 0.5 + 1e-9
    assert tridim.count_macs(result.model, (1, 16, 16)) == report["macs_after"]
    assert len(report["refinements"]) == 1
    for name in ("samples.jsonl", "predictor.json", "plan.json", "report.md", "model"):
        assert (tmp_path / "run" / name).exists(), name
    # the saved model reloads to the same outputs, with no pickle
    loaded = tridim.load(tmp_path / "run" / "model")
    x = torch.randn(4, 1, 16, 16)
    result.model.eval()
    assert torch.allclose(loaded(x), result.model(x), atol=1e-5)
    # reuse the predictor for a new budget: no collection
    predictor = tridim.LowRankPolynomialRegressor.load(tmp_path / "run" / "predictor.json")
    again = tridim.optimize(
        base_model,
        tiny,
        0.3,
        workdir=tmp_path / "reuse",
        predictor=predictor,
        final_epochs=0,
        refine=0,
        quiet=True,
        latency_repeats=2,
        latency_batch=8,
    )
    assert again.report["seconds"]["collect"] == 0.0
    assert not (tmp_path / "reuse" / JOURNAL_NAME).exists()
    assert abs(again.macs_ratio - 0.3) <= 0.01 * 0.3 + 1e-9
    _assert_unchanged(base_model, given)
    for module, training in modes.items():
        module.training = training


def test_onnx_export_matches_pytorch(tiny, base_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pruned, plan = tridim.realise(
        base_model,
        tridim.Triple(0.8, 0.8, 0.75),
        input_size=(1, 16, 16),
        data=tiny,
        target_flops_ratio=0.4,
    )
    with pytest.raises(ValueError, match="plan=plan"):
        tridim.save(pruned, tmp_path / "m")  # a pruned model cannot be rebuilt without it
    tridim.save(pruned, tmp_path / "m", plan=plan)
    assert tridim.describe(tmp_path / "m")["plan"] == plan.to_dict()
    loaded = tridim.load(tmp_path / "m")
    path = tridim.export_onnx(loaded, tmp_path / "m.onnx", (1, 16, 16))
    session = ort.InferenceSession(str(path))
    x = torch.randn(3, 1, 16, 16)
    expected = loaded(x).detach().numpy()
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4


def test_bad_inputs_are_clear(tiny, base_model, tmp_path):
    for bad in (0.0, 1.5, -1, float("nan")):
        with pytest.raises(ValueError, match=r"target_flops_ratio must be in \(0, 1\]"):
            tridim.optimize(base_model, tiny, bad, workdir=tmp_path)
    with pytest.raises(ValueError, match="in_channels=1"):
        tridim.optimize(models.build("resnet20", 10, 3), tiny, 0.5, workdir=tmp_path)
    with pytest.raises(ValueError, match="num_classes=10"):
        tridim.optimize(models.build("resnet20", 7, 1), tiny, 0.5, workdir=tmp_path)
    with pytest.raises(FileNotFoundError, match="model.json"):
        tridim.load(tmp_path)
    (tmp_path / "model.json").write_text('{"format": "tridim-model", "schema_version": 99}')
    with pytest.raises(ValueError, match="schema version"):
        tridim.load(tmp_path)


def _plain_cnn(batchnorm: bool = True) -> torch.nn.Module:
    """A small CNN with no residual block (so depth cannot change)."""
    norm = (lambda c: torch.nn.BatchNorm2d(c)) if batchnorm else (lambda c: torch.nn.Identity())
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        norm(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        norm(32),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


def test_model_without_removable_blocks_keeps_depth_and_saves(tiny, tmp_path):
    from conftest import randomise_batchnorm

    model = randomise_batchnorm(_plain_cnn())
    result = tridim.optimize(
        model,
        tiny,
        0.5,
        workdir=tmp_path / "run",
        rounds=1,
        design=4,
        epochs_per_step=0,
        final_epochs=0,
        refine=0,
        quiet=True,
        latency_repeats=1,
        latency_batch=4,
    )
    assert result.triple.d == 1.0
    assert "depth stays at 1" in result.report["depth_fixed"]
    dimensions = {s.extra["dimension"] for s in result.samples}
    assert dimensions == {"base", "width", "resolution", "design"}
    assert all(s.d == 1 for s in result.samples)
    assert abs(result.macs_ratio - 0.5) <= 0.005
    with pytest.raises(ValueError, match="base_model"):
        tridim.load(tmp_path / "run" / "model")
    loaded = tridim.load(tmp_path / "run" / "model", base_model=_plain_cnn())
    x = torch.randn(2, 1, 16, 16)
    assert torch.allclose(loaded(x), result.model.eval()(x), atol=1e-5)


def test_model_without_batchnorm_gets_a_criterion_that_needs_none(tiny, tmp_path):
    with pytest.raises(ValueError, match="criterion='l1'"):
        tridim.optimize(
            _plain_cnn(batchnorm=False), tiny, 0.5, workdir=tmp_path / "a", criterion="bn_scale"
        )
    result = tridim.optimize(
        _plain_cnn(batchnorm=False),
        tiny,
        0.5,
        workdir=tmp_path / "b",
        rounds=1,
        epochs_per_step=0,
        final_epochs=0,
        refine=0,
        quiet=True,
        latency_repeats=1,
        latency_batch=4,
    )
    assert result.report["settings"]["criterion"] == "l1"  # "auto" resolved, and said so
    assert abs(result.macs_ratio - 0.5) <= 0.005


def test_target_below_reach_states_the_floor(tiny, base_model, tmp_path):
    with pytest.raises(ValueError, match="below what this model can reach"):
        tridim.optimize(base_model, tiny, 1e-6, workdir=tmp_path)


# ---------------------------------------------------------------------- resuming optimize

#: Report fields that do not depend on timing: a resumed run must reproduce them.
DETERMINISTIC_FIELDS = (
    "target_flops_ratio",
    "macs_ratio",
    "triple",
    "solved_triple",
    "multiplier",
    "base_accuracy",
    "accuracy",
    "predicted_accuracy",
    "predictor_loo_rmse",
    "macs_before",
    "macs_after",
    "params_before",
    "params_after",
    "refinements",
    "n_samples",
    "settings",
)


def assert_same_report(got: dict, expected: dict) -> None:
    assert {k: got[k] for k in DETERMINISTIC_FIELDS} == {
        k: expected[k] for k in DETERMINISTIC_FIELDS
    }


def _small_optimize(model, data, workdir):
    return tridim.optimize(
        model,
        data,
        0.5,
        workdir=workdir,
        rounds=2,
        epochs_per_step=1,
        final_epochs=3,  # 2 to train when it goes on from refine:1: a kill after 1 is mid-trial
        refine=1,
        quiet=True,
        latency_repeats=2,
        latency_batch=8,
    )


@pytest.fixture(scope="module")
def reference_run(tiny, base_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, _small_optimize(base_model, tiny, workdir).report


class _Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


@pytest.mark.parametrize("stage", ["refine-1", "final"])
def test_optimize_killed_mid_trial_resumes_to_the_same_report(
    stage, tiny, base_model, reference_run, tmp_path, monkeypatch
):
    import tridim.training.train as train_module

    save_checkpoint = train_module.save_checkpoint

    def die_after_first_epoch(path, *args, **kwargs):
        save_checkpoint(path, *args, **kwargs)
        if os.path.basename(path).startswith(stage):
            raise _Killed(path)

    monkeypatch.setattr(train_module, "save_checkpoint", die_after_first_epoch)
    with pytest.raises(_Killed):
        _small_optimize(base_model, tiny, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "steps" / f"{stage}.ckpt").is_file()  # the epoch checkpoint survived
    assert not (tmp_path / "report.json").exists()

    resumed = _small_optimize(base_model, tiny, tmp_path).report
    assert_same_report(resumed, reference_run[1])
    final = RunStore(tmp_path).load_step("final").sample.extra
    assert (final["continues"], final["epochs"]) == ("refine:1", 2)  # killed after 1 of 2
    keys = [s.extra["key"] for s in read_samples(tmp_path / JOURNAL_NAME)]
    assert len(keys) == len(set(keys)) and "refine:1" in keys
    assert not list((tmp_path / "steps").glob("*.ckpt"))  # finished trials drop them


def test_rerunning_a_finished_run_trains_nothing_and_repeats_no_sample(
    tiny, base_model, reference_run, monkeypatch
):
    import tridim.training.train as train_module

    workdir, expected = reference_run
    journal_before = (workdir / JOURNAL_NAME).read_text()

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(train_module, "train", no_training)
    monkeypatch.setattr("tridim.training.recipe.train", no_training)
    again = _small_optimize(base_model, tiny, workdir).report
    assert_same_report(again, expected)
    assert (workdir / JOURNAL_NAME).read_text() == journal_before


def test_a_workdir_of_another_run_names_the_differing_setting(tiny, base_model, reference_run):
    workdir, _ = reference_run
    with pytest.raises(ValueError, match="optimize.final_epochs"):
        tridim.optimize(
            base_model,
            tiny,
            0.5,
            workdir=workdir,
            rounds=2,
            epochs_per_step=1,
            final_epochs=5,
            refine=1,
            quiet=True,
        )


_OPTIMIZE_CHILD = textwrap.dedent("""
    import sys, torch
    import tridim
    from tridim.training import data, models
    from tridim.training.train import load_checkpoint
    torch.set_num_threads(1)
    bundle = data.load("digits").subset(train=256, val=128, test=128)
    model = models.build("resnet20", 10, 1)
    load_checkpoint(sys.argv[2], model)
    print("started", flush=True)
    tridim.optimize(model, bundle, 0.5, workdir=sys.argv[1], rounds=2, epochs_per_step=1,
                    final_epochs=2, refine=1, quiet=True, latency_repeats=2, latency_batch=8)
""")

#: How many times the kill-anywhere test kills a run (README's fault table quotes it).
KILLS = 20


def test_optimize_killed_at_20_random_moments_ends_as_an_uninterrupted_run(base_model, tmp_path):
    """SIGKILL a small optimize at seeded random moments, resume after each, and finish:
    every journal key once, and the report an uninterrupted run writes."""
    import random

    from tridim.training.train import save_checkpoint

    weights = tmp_path / "base.pt"
    save_checkpoint(weights, base_model)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start(workdir):
        child = subprocess.Popen(
            [sys.executable, "-c", _OPTIMIZE_CHILD, str(workdir), str(weights)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout.readline().strip() == "started"  # imports done, data loaded
        return child, time.perf_counter()

    reference = tmp_path / "reference"
    child, began = start(reference)
    assert child.wait(timeout=600) == 0
    work = time.perf_counter() - began
    expected = json.loads((reference / "report.json").read_text())

    rng = random.Random(0)
    killed = tmp_path / "killed"
    kills = finished_early = 0
    while kills + finished_early < KILLS:
        child, began = start(killed)
        try:
            child.wait(timeout=rng.uniform(0.0, work / 3))
            finished_early += 1  # it ended before its moment: the run is done
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.wait()
            kills += 1
        keys = (
            [s.extra["key"] for s in read_samples(killed / JOURNAL_NAME)]
            if (killed / JOURNAL_NAME).is_file()
            else []
        )
        assert len(keys) == len(set(keys)), keys
    print(f"kill anywhere: {kills} kills, {finished_early} starts ran to the end")
    assert kills >= 10  # most moments fell inside the run
    child, _ = start(killed)
    assert child.wait(timeout=600) == 0
    got = json.loads((killed / "report.json").read_text())
    assert_same_report(got, expected)
    keys = [s.extra["key"] for s in read_samples(killed / JOURNAL_NAME)]
    reference_keys = [s.extra["key"] for s in read_samples(reference / JOURNAL_NAME)]
    assert len(keys) == len(set(keys)) and sorted(keys) == sorted(reference_keys)


def test_a_saved_model_loads_from_safetensors_or_weights_pt_alone(base_model, tmp_path):
    from safetensors.torch import load_file

    pruned, plan = tridim.realise(
        base_model, tridim.Triple(1.0, 0.7, 0.75), input_size=(1, 16, 16), criterion="l1"
    )
    folder = tridim.save(pruned, tmp_path / "m", plan=plan)
    hub = load_file(folder / "model.safetensors")  # what a model hub's tooling reads
    assert hub.keys() == pruned.state_dict().keys()
    assert all(torch.equal(hub[k], v) for k, v in pruned.state_dict().items())
    x = torch.randn(2, 1, 16, 16)
    expected = pruned.eval()(x)
    assert torch.equal(tridim.load(folder)(x), expected)
    (folder / "model.safetensors").unlink()  # a model saved before safetensors
    assert torch.equal(tridim.load(folder)(x), expected)
    (folder / "weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor weights.pt"):
        tridim.load(folder)
