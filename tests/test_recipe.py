"""One recipe for every trial: samples are cut from the base like the final model, the
design mixes dimensions on the budget's surface, and refinement stops once it settles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tridim
from tridim.run.collect import collect
from tridim.run.optimize import WIDTH_STEP, settled
from tridim.run.store import RunStore
from tridim.search.design import mixed_triples, simplex_splits
from tridim.search.predictor import leave_one_out_residuals
from tridim.search.samples import Sample, samples_to_xy
from tridim.search.selection import TooFewSamples, select_on_samples
from tridim.search.space import Triple


def test_mixed_triples_lie_on_the_budget_and_mix_dimensions():
    triples = mixed_triples(0.3, 7)
    assert len({t.as_tuple() for t in triples}) == 7
    for t in triples:
        assert t.cost == pytest.approx(0.3)
        assert sum(x < 1 for x in t.as_tuple()) >= 2
    flat = mixed_triples(0.3, 3, depth=False)
    assert all(t.d == 1 and t.cost == pytest.approx(0.3) for t in flat)
    floored = mixed_triples(0.3, 4, lowest=(0.5, 0.05, 0.9))
    assert all(t.d >= 0.5 and t.r >= 0.9 for t in floored)


def test_design_splits_are_inside_the_simplex_and_refuse_too_many():
    for split in simplex_splits(10):
        assert sum(split) == pytest.approx(1) and min(split) >= 0 and max(split) < 1
    with pytest.raises(ValueError, match="at most 10 mixed points"):
        simplex_splits(11)
    with pytest.raises(ValueError, match="design must be a non-negative integer"):
        mixed_triples(0.5, -1)


def test_one_shot_sample_is_the_base_realised_with_the_runs_seed(tiny, base_model, tmp_path):
    """A sample's model is exactly what realise() makes of the base at that triple, with
    the run's seed (the seeded random criterion makes the seed show in the channels)."""
    collect(
        base_model,
        tiny,
        0.5,
        workdir=tmp_path,
        rounds=2,
        design=1,
        epochs_per_step=0,
        criterion="random",
        seed=3,
        quiet=True,
    )
    store = RunStore(tmp_path)
    for key in ("width:2", "depth:2", "design:1"):
        record = store.load_step(key)
        triple = Triple.from_dict(record.sample.extra["triple"])
        _, plan = tridim.realise(
            base_model, triple, input_size=(1, 16, 16), data=tiny, criterion="random", seed=3
        )
        assert record.plan.to_dict() == plan.to_dict(), key
        assert record.plan.width_removal == plan.width_removal


def test_chain_collection_cuts_each_step_from_the_previous(tiny, base_model, tmp_path):
    samples = collect(
        base_model,
        tiny,
        0.5,
        workdir=tmp_path,
        rounds=2,
        collection="chain",
        design=0,
        epochs_per_step=0,
        quiet=True,
    )
    assert len(samples) == 1 + 3 * 2
    store = RunStore(tmp_path)
    first, second = store.load_step("width:1").plan, store.load_step("width:2").plan
    for name, removed in first.width_removal.items():  # step 2 keeps removing step 1's
        assert set(removed) <= set(second.width_removal[name])
    with pytest.raises(ValueError, match="design points are one-shot"):
        collect(base_model, tiny, 0.5, workdir=tmp_path / "x", collection="chain", design=2)
    with pytest.raises(ValueError, match="collection must be one of one-shot, chain"):
        collect(base_model, tiny, 0.5, workdir=tmp_path / "y", collection="gradual")


def _synthetic(function, n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.3, 1.0, size=(n, 3))
    y = function(X) + rng.normal(0, 1e-3, n)
    return [Sample(*x, accuracy=float(v)) for x, v in zip(X, y)]


def test_selection_picks_the_degree_the_data_needs():
    linear = select_on_samples(
        _synthetic(lambda X: (0.5 + 0.5 * X[:, 0]) * (0.6 + 0.4 * X[:, 1]) * (0.7 + 0.3 * X[:, 2]))
    )
    curved_samples = _synthetic(lambda X: (1 - (1 - X[:, 0]) ** 2) * (1 - 0.8 * (1 - X[:, 1]) ** 2))
    curved = select_on_samples(curved_samples)
    assert (linear.predictor.degree, linear.predictor.rank) == (1, 1)
    assert curved.predictor.degree >= 2
    table = curved.to_dict()
    scored = [c["loo_rmse"] for c in table["candidates"] if c["loo_rmse"] is not None]
    assert scored == sorted(scored)
    assert table["degree"] == 2 and table["rank"] == 1  # as good as degree 3, and simpler
    # the chosen candidate's leave-one-out residuals are remembered, not refitted, and
    # are its own (not another candidate's)
    fresh = leave_one_out_residuals(curved.predictor, *samples_to_xy(curved_samples))
    np.testing.assert_allclose(curved.predictor.loo_residuals(), fresh)
    chosen = next(c for c in table["candidates"] if (c["degree"], c["rank"]) == (2, 1))
    assert curved.predictor.summary()["loo_rmse"] == pytest.approx(chosen["loo_rmse"])
    with pytest.raises(TooFewSamples, match="too few to choose a predictor"):
        select_on_samples(_synthetic(lambda X: X[:, 0], n=4))


def test_refinement_settles_within_a_block_a_pixel_and_a_width_step():
    old = Triple(7 / 9, 0.80, 14 / 16)
    assert settled(old, Triple(7 / 9, 0.80 + WIDTH_STEP / 2, 14 / 16), 9, 16)
    assert not settled(old, Triple(6 / 9, 0.80, 14 / 16), 9, 16)
    assert not settled(old, Triple(7 / 9, 0.80, 13 / 16), 9, 16)
    assert not settled(old, Triple(7 / 9, 0.80 + 2 * WIDTH_STEP, 14 / 16), 9, 16)


def _quick_optimize(model, data, workdir, **options):
    """optimize() at 0.5 on small settings, with no finetuning unless ``options`` ask for
    it: the pipeline's bookkeeping, in seconds."""
    settings = dict(rounds=1, epochs_per_step=0, final_epochs=0, quiet=True)
    settings.update(latency_repeats=1, latency_batch=4)
    return tridim.optimize(model, data, 0.5, workdir=workdir, **{**settings, **options})


def test_optimize_reports_its_recipe_and_its_predictor_choice(tiny, base_model, tmp_path):
    result = _quick_optimize(base_model, tiny, tmp_path, design=3, refine=2)
    report = result.report
    assert "cut in one shot" in report["samples_meaning"]
    assert report["predictor"]["degree"] == result.predictor.degree
    assert report["settings"]["collection"] == "one-shot" and report["settings"]["design"] == 3
    refinements = report["refinements"]
    assert 1 <= len(refinements) <= 2
    assert all(not r["settled"] for r in refinements[:-1])
    if len(refinements) < 2:
        assert refinements[-1]["settled"]
    errors = [abs(r["measured_accuracy"] - r["predicted_accuracy"]) for r in refinements]
    assert report["prediction"]["mean_abs_error_at_refine"] == pytest.approx(np.mean(errors))
    assert 0 <= report["val_accuracy"] <= 1 and not math.isnan(report["val_accuracy"])
    assert torch.is_tensor(result.model(torch.zeros(1, 1, 16, 16)))


def test_too_few_samples_for_leave_one_out_fall_back_to_the_smallest_predictor(
    tiny, base_model, tmp_path
):
    result = _quick_optimize(base_model, tiny, tmp_path, design=0, refine=1)
    choice = result.report["predictor"]
    assert (choice["degree"], choice["rank"]) == (1, 1) and "too few" in choice["rule"]
    assert (result.predictor.degree, result.predictor.rank) == (1, 1)
    assert abs(result.macs_ratio - 0.5) <= 0.005


class _StartRecorder(tridim.training.recipe.OwnLoop):
    """tridim's loop, noting the weights and epochs each finetune starts from."""

    def finetune(self, model, trial, **options):
        self.started = {k: v.clone() for k, v in model.state_dict().items()}
        self.epochs = trial.epochs
        super().finetune(model, trial, **options)


def test_the_final_model_goes_on_from_the_refine_model_of_the_same_network(tiny, base_model):
    """Its epochs count: the final trial trains only those the refine trial did not; a
    final cut to another network starts afresh from the base with all its epochs."""
    from tests.conftest import bare_context
    from tridim.run.store import StepRecord
    from tridim.run.trial import Trial, execute_trial

    recorder = _StartRecorder(tiny)
    context = bare_context(base_model, tiny, recipe=recorder)
    triple = Triple(1.0, 0.9, 0.75)
    refine = Trial("refine:1", "refine", epochs=1, seed=0, train_seed=0, triple=triple)
    refined = execute_trial(refine, context)
    parent = StepRecord(refined.model.state_dict(), refined.plan, refined.sample)

    final = Trial("final", "final", 3, 0, 0, triple=triple, split="test", parent="refine:1")
    result = execute_trial(final, context, parent)
    assert recorder.epochs == 2
    assert all(torch.equal(recorder.started[k], v) for k, v in parent.state_dict.items())
    assert result.sample.extra["continues"] == "refine:1" and result.sample.extra["epochs"] == 2
    assert result.plan.to_dict() == refined.plan.to_dict()

    elsewhere = Triple(1.0, 0.9, 0.875)
    other = Trial("final", "final", 3, 0, 0, triple=elsewhere, split="test", parent="refine:1")
    result = execute_trial(other, context, parent)
    assert result.plan.resolution != refined.plan.resolution
    assert recorder.epochs == 3 and "continues" not in result.sample.extra
    fresh = tridim.prune.realise.apply_plan(base_model, result.plan).state_dict()
    assert all(torch.equal(recorder.started[k], v) for k, v in fresh.items())


@pytest.mark.parametrize("sample_fraction", [1.0, 0.5])
def test_only_a_final_model_trained_on_the_refine_trials_data_continues_it(
    tiny, base_model, tmp_path, sample_fraction
):
    options = dict(epochs_per_step=1, final_epochs=2, refine=1, sample_fraction=sample_fraction)
    result = _quick_optimize(base_model, tiny, tmp_path, **options)
    final = RunStore(tmp_path).load_step("final").sample.extra
    proxy = sample_fraction < 1
    assert final.get("continues") == (None if proxy else "refine:1")
    assert result.report["compute"]["stages"]["final"]["epochs"] == (2 if proxy else 1)
    assert ("the first 1 of them refine:1's" in result.report["samples_meaning"]) is not proxy
