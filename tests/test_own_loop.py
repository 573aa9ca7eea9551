"""A user's training loop and metric drive every trial (tridim.training.recipe)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

import tridim
from tridim.training.train import evaluate, train

RUN = dict(rounds=1, epochs_per_step=1, final_epochs=1, refine=1, quiet=True)
LATENCY = dict(latency_repeats=1, latency_batch=4)


def _same_recipe(data, calls=None, fail_on=None):
    """A user's loop that is tridim's own recipe, written against the public API."""

    def finetune(model, epochs, *, teacher=None, trial=None):
        if calls is not None:
            calls.append(trial.key)
            if len(calls) == fail_on:
                raise RuntimeError("the user's loop crashed")
        train(
            model,
            data,
            epochs,
            lr=0.02,
            seed=trial.train_seed,
            teacher=teacher,
            evaluate_each_epoch=False,
            quiet=True,
        )

    def score(model):
        return evaluate(model, data.loader("val", 256))

    return finetune, score


def test_a_users_loop_with_tridims_recipe_finds_the_same_model(tiny, base_model, tmp_path):
    own = tridim.optimize(base_model, tiny, 0.5, workdir=tmp_path / "own", **RUN, **LATENCY)
    finetune, score = _same_recipe(tiny)
    users = tridim.optimize(
        base_model,
        tiny,
        0.5,
        workdir=tmp_path / "user",
        finetune=finetune,
        evaluate=score,
        **RUN,
        **LATENCY,
    )
    assert users.triple == own.triple
    assert [s.accuracy for s in users.samples] == [s.accuracy for s in own.samples]
    test = tiny.loader("test", 256)
    assert abs(evaluate(users.model, test) - evaluate(own.model, test)) <= 0.003
    assert users.report["score"] == {"loop": "UserLoop", "score": "score", "higher_is_better": True}
    assert "base score (evaluate())" in (tmp_path / "user" / "report.md").read_text()
    assert users.report["compute"]["search"]["images"] is None  # a user's loop: unknown


def test_a_users_loop_that_crashes_in_its_third_trial_resumes(tiny, base_model, tmp_path):
    calls: list[str] = []
    finetune, score = _same_recipe(tiny, calls, fail_on=3)
    options = dict(workdir=tmp_path, finetune=finetune, evaluate=score, **RUN, **LATENCY)
    with pytest.raises(RuntimeError, match="the user's loop crashed"):
        tridim.optimize(base_model, tiny, 0.5, **options)
    first_two, crashed = calls[:2], calls[2]
    calls.clear()
    finetune, score = _same_recipe(tiny, calls)
    options.update(finetune=finetune, evaluate=score)
    result = tridim.optimize(base_model, tiny, 0.5, **options)
    assert not set(first_two) & set(calls)  # the finished trials were not trained again
    assert calls[0] == crashed  # the crashed one runs first, from its start
    assert result.macs_ratio <= 0.51


def _loss(loader):
    def val_loss(model):
        with torch.no_grad():
            losses = [F.cross_entropy(model(x), y, reduction="sum") for x, y in loader]
        return float(sum(losses)) / sum(len(y) for _, y in loader)

    return val_loss


def test_a_loss_is_minimised_with_no_data_bundle(tiny, base_model, tmp_path):
    """No DataBundle: example_input gives the size, unlabelled batches feed the probes."""
    loader = list(tiny.loader("val", 64))
    val_loss = _loss(loader)

    def finetune(model, epochs, *, teacher=None, trial=None):
        optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(epochs):
            for images, labels in tiny.loader("train", 64, seed=trial.train_seed):
                optimiser.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                optimiser.step()

    result = tridim.optimize(
        base_model,
        target_flops_ratio=0.5,
        workdir=tmp_path,
        finetune=finetune,
        evaluate=val_loss,
        higher_is_better=False,
        example_input=tiny.train[0][0],
        probe_data=(images for images, _ in tiny.loader("train", 64)),
        **RUN,
        **LATENCY,
    )
    report = result.report
    assert report["base_accuracy"] == pytest.approx(val_loss(base_model), rel=1e-4)
    assert report["accuracy"] == pytest.approx(val_loss(result.model), rel=1e-4)
    journal = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert journal[0]["accuracy"] == pytest.approx(-val_loss(base_model), rel=1e-4)
    # the refine trial went where the predictor saw the lowest loss
    record = report["refinements"][0]
    assert record["predicted_accuracy"] > 0 and record["measured_accuracy"] > 0
    full = torch.zeros(2, *tiny.input_shape)
    assert result.model(full).shape == (2, 10)  # still takes full-size inputs
    assert result.macs_ratio <= 0.51
    markdown = (tmp_path / "report.md").read_text()
    assert "pruned val_loss (evaluate(), lower is better)" in markdown


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(finetune=lambda m, e, **k: None), "evaluate= is missing"),
        (dict(evaluate=lambda m: 1.0, finetune=lambda m, e, **k: None), "example_input is missing"),
        (dict(higher_is_better=False), "higher_is_better applies to a user's evaluate"),
        ({}, "data is missing"),
        (
            dict(evaluate=lambda m: 1.0, finetune=lambda m, e, **k: None, sample_fraction=0.5),
            "sample_fraction=0.5 needs tridim's own loop",
        ),
        (
            dict(
                evaluate=lambda m: 1.0,
                finetune=lambda m, e, **k: None,
                example_input=torch.zeros(1, 16, 16),
            ),
            "probe_data is missing: this model has removable blocks",
        ),
        (
            dict(
                evaluate=lambda m: 1.0,
                finetune=lambda m, e, **k: None,
                example_input=torch.zeros(1, 16, 16),
                cluster="processes",
            ),
            "cannot be pickled",
        ),
    ],
)
def test_bad_loop_arguments_are_refused_before_any_work(base_model, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        tridim.optimize(base_model, target_flops_ratio=0.5, workdir=tmp_path, **options)
    assert not (tmp_path / "samples.jsonl").exists()


def test_a_score_that_is_not_a_number_names_the_problem(tiny, base_model, tmp_path):
    finetune, _ = _same_recipe(tiny)
    with pytest.raises(TypeError, match=r"evaluate\(model\) must return a number"):
        tridim.optimize(
            base_model, tiny, 0.5, workdir=tmp_path, finetune=finetune, evaluate=lambda m: "good"
        )
    with pytest.raises(ValueError, match="returned nan"):
        tridim.optimize(
            base_model,
            tiny,
            0.5,
            workdir=tmp_path / "nan",
            finetune=finetune,
            evaluate=lambda m: float("nan"),
        )


def test_collect_takes_a_users_loop_too(tiny, base_model, tmp_path):
    finetune, score = _same_recipe(tiny)
    samples = tridim.collect(
        base_model,
        target_flops_ratio=0.5,
        workdir=tmp_path,
        finetune=finetune,
        evaluate=score,
        example_input=tiny.train[0][0],
        probe_data=tiny.loader("train", 64),
        rounds=1,
        epochs_per_step=1,
        quiet=True,
    )
    assert samples[0].accuracy == score(base_model)  # the base sample, scored by the user
    assert len(samples) == 4
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["recipe"]["loop"] == "UserLoop"


class _StatefulLoop:
    """A user's loop object with its optimiser's state: tridim resumes it at the epoch."""

    def __init__(self, data, crash_at=None):
        self.data, self.crash_at = data, crash_at
        self.key, self.optimiser, self.pending = None, None, None
        self.epochs_run, self.loaded = [], []

    def __call__(self, model, epochs, *, teacher=None, trial=None):
        if trial.key != self.key:  # a new trial: a new optimiser (or the resumed one's)
            self.key = trial.key
            self.optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            if self.pending is not None and self.pending["key"] == trial.key:
                self.optimiser.load_state_dict(self.pending["optimiser"])
            self.pending = None
        for _ in range(epochs):
            if (trial.key, len(self.epochs_run)) == self.crash_at:
                raise RuntimeError("killed mid-trial")
            for images, labels in self.data.loader("train", 64):
                self.optimiser.zero_grad()
                F.cross_entropy(model(images), labels).backward()
                self.optimiser.step()
            self.epochs_run.append(trial.key)

    def state_dict(self):
        return {"key": self.key, "optimiser": self.optimiser.state_dict()}

    def load_state_dict(self, state):
        self.loaded.append(state["key"])
        self.key, self.pending = None, state


def test_a_users_loop_with_state_is_not_shared_by_trials_in_threads(tiny, base_model, tmp_path):
    with ThreadPoolExecutor(2) as executor, pytest.raises(ValueError, match="one object"):
        tridim.collect(
            base_model,
            target_flops_ratio=0.5,
            finetune=_StatefulLoop(tiny),
            evaluate=lambda model: 1.0,
            example_input=torch.zeros(1, *tiny.input_shape),
            probe_data=[tiny.train.tensors[0][:64]],
            executor=executor,
            workdir=tmp_path,
            quiet=True,
        )
    assert not (tmp_path / "samples.jsonl").exists()


def test_a_users_loop_with_state_resumes_at_the_epoch(tiny, base_model, tmp_path):
    first_keys = [t.key for chain in _chains() for t in chain]
    crashed = first_keys[0]
    loop = _StatefulLoop(tiny, crash_at=(crashed, 2))  # in the third epoch of the first trial
    options = dict(
        target_flops_ratio=0.5,
        workdir=tmp_path,
        evaluate=lambda model: evaluate(model, tiny.loader("val", 256)),
        example_input=tiny.train[0][0],
        probe_data=tiny.loader("train", 64),
        rounds=1,
        epochs_per_step=3,
        quiet=True,
    )
    with pytest.raises(RuntimeError, match="killed mid-trial"):
        tridim.collect(base_model, finetune=loop, **options)
    assert loop.epochs_run == [crashed, crashed]
    again = _StatefulLoop(tiny)
    tridim.collect(base_model, finetune=again, **options)
    assert again.loaded == [crashed]  # its state came back from the checkpoint
    assert again.epochs_run.count(crashed) == 1  # only the epoch the kill interrupted
    assert all(again.epochs_run.count(k) == 3 for k in first_keys[1:])


def _chains():
    from tridim.run.collect import CollectionSettings, collection_trials

    return collection_trials(CollectionSettings(0.5, rounds=1, epochs_per_step=3))
