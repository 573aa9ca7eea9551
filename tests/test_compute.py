"""What a run cost: the formula, the stages, and optimize's report."""

import pytest

from tridim.compute import TEACHER_SHARE, compute_record, stage_cost
from tridim.samples import Sample


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
