"""What a run cost: the formula, the stages, and optimize's report."""

import pytest
import torch

from tridim.run.compute import TEACHER_SHARE, compute_record, stage_cost
from tridim.search.samples import Sample


def sample(epochs, macs_ratio, seconds=1.0):
    return Sample(
        1.0, 1.0, 1.0, 0.9, {"epochs": epochs, "macs_ratio": macs_ratio, "seconds": seconds}
    )


def test_a_trial_costs_its_epochs_times_its_macs_plus_the_teachers_forward_pass():
    cost = stage_cost(
        [sample(2, 0.5), sample(0, 1.0), sample(4, 0.25)], train_images=100, distill=True
    )
    assert cost["trials"] == 2  # the base sample trains nothing
    assert (cost["epochs"], cost["images"], cost["seconds"]) == (6, 600, 3.0)
    assert cost["base_epochs"] == pytest.approx(
        2 * (0.5 + TEACHER_SHARE) + 4 * (0.25 + TEACHER_SHARE)
    )
    plain = stage_cost([sample(2, 0.5)], train_images=100, distill=False)
    assert plain["base_epochs"] == pytest.approx(1.0)


def test_the_search_is_every_stage_but_the_final_finetune():
    stages = {
        "collection": stage_cost([sample(2, 0.5)] * 3, train_images=10, distill=False),
        "refine": stage_cost([sample(2, 0.5)], train_images=10, distill=False),
        "final": stage_cost([sample(8, 0.5)], train_images=10, distill=False),
    }
    record = compute_record(stages, base_training_epochs=16)
    assert record["search"]["base_epochs"] == pytest.approx(4.0)
    assert record["search"]["base_trainings"] == pytest.approx(0.25)
    assert record["total"]["base_trainings"] == pytest.approx(0.5)
    assert record["stages"]["final"]["epochs"] == 8
    unknown = compute_record(stages, base_training_epochs=None)
    assert unknown["search"]["base_trainings"] is None and "base epochs" in unknown["formula"]


def test_samples_finetune_on_one_seeded_subset_and_the_final_model_on_all(tiny, base_model):
    from conftest import bare_context

    from tridim.run.collect import CollectionSettings, _sample_data
    from tridim.run.trial import Trial

    settings = CollectionSettings(0.5, sample_fraction=0.25, seed=3)
    subset = _sample_data(tiny, settings)
    assert len(subset.train) == round(0.25 * len(tiny.train))
    again = _sample_data(tiny, settings)
    assert all(
        torch.equal(a[0], b[0]) for a, b in zip(subset.train, again.train)
    )  # the same images for every sample of the run
    assert len(subset.val) == len(tiny.val)  # scored on the whole validation split
    context = bare_context(base_model, tiny, sample_data=subset)

    def trial(kind):
        return Trial(key=kind, kind=kind, epochs=1, seed=0, train_seed=0)

    finetune_data = context.recipe.training_data
    assert finetune_data(trial("width")) is subset
    assert finetune_data(trial("refine")) is subset
    assert finetune_data(trial("final")) is tiny
    with pytest.raises(ValueError, match="sample_fraction must be in"):
        CollectionSettings(0.5, sample_fraction=1.5)


@pytest.mark.parametrize(
    "train_examples, fraction",
    [(1_168, 1.0), (2_500, 1.0), (5_000, 0.5), (10_000, 0.25), (55_000, 0.25)],
)
def test_the_default_proxy_keeps_2500_images_and_at_least_a_quarter(train_examples, fraction):
    from tridim.run.collect import CollectionSettings

    settings = CollectionSettings(0.5).for_data(train_examples)
    assert settings.sample_fraction == fraction
    manifest = settings.manifest()
    if fraction == 1.0:  # run folders made before the option resume unchanged
        assert "sample_fraction" not in manifest
    else:  # a resume on other data cannot silently change the proxy
        assert manifest["sample_fraction"] == fraction
    chosen = CollectionSettings(0.5, sample_fraction=0.5).for_data(train_examples)
    assert chosen.sample_fraction == 0.5  # a number given is kept


def test_the_cli_takes_auto_or_a_number_for_the_sample_fraction(capsys):
    from tridim.cli import main

    with pytest.raises(SystemExit):
        main(["optimize", "--sample-fraction", "most"])
    assert "expected a number in (0, 1] or auto, got 'most'" in capsys.readouterr().err


def test_a_proxy_collection_costs_its_share(tiny, base_model, tmp_path):
    import tridim

    result = tridim.optimize(
        base_model,
        tiny,
        0.5,
        workdir=tmp_path,
        rounds=1,
        epochs_per_step=1,
        final_epochs=1,
        refine=0,
        quiet=True,
        latency_repeats=1,
        latency_batch=4,
        sample_fraction=0.5,
        base_training_epochs=3,
    )
    compute = result.report["compute"]
    collection = compute["stages"]["collection"]
    assert collection["images"] == collection["epochs"] * round(0.5 * len(tiny.train))
    assert compute["stages"]["final"]["images"] == len(tiny.train)
    assert result.report["settings"]["sample_fraction"] == 0.5
