"""The samples journal: format, crash-torn lines, and conversion to arrays."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tridim.search.samples import TORN_MARKER, Sample, append_sample, read_samples, samples_to_xy


def _record(d: float, accuracy: float) -> Sample:
    return Sample(d, 1.0, 1.0, accuracy, {"epochs": 2, "note": "x"})


def test_round_trip_keeps_unknown_keys(tmp_path):
    path = tmp_path / "samples.jsonl"
    written = [_record(1.0, 0.9), Sample(0.5, 0.7, 0.8, 0.85, {"nested": {"a": [1, 2]}})]
    for sample in written:
        append_sample(path, sample)
    assert read_samples(path) == written
    assert path.read_text().count("\n") == 2
    assert json.loads(path.read_text().splitlines()[1])["nested"] == {"a": [1, 2]}


def test_from_dict_collects_extra_keys():
    sample = Sample.from_dict({"d": 0.5, "w": 1, "r": 1, "accuracy": 0.8, "seed": 3})
    assert sample.extra == {"seed": 3}
    assert sample.to_dict() == {"d": 0.5, "w": 1.0, "r": 1.0, "accuracy": 0.8, "seed": 3}


@pytest.mark.parametrize(
    "record",
    [
        {"d": 1.5, "w": 1, "r": 1, "accuracy": 0.8},
        {"d": 0.5, "w": 1, "accuracy": 0.8},
        {"d": 0.5, "w": 1, "r": 1, "accuracy": float("nan")},
        {"d": 0.5, "w": 1, "r": 1, "accuracy": True},
        [0.5, 1, 1, 0.8],
    ],
)
def test_invalid_records_are_rejected(record):
    with pytest.raises(ValueError):
        Sample.from_dict(record)


def test_extra_may_not_shadow_core_keys():
    with pytest.raises(ValueError, match="core keys"):
        Sample(0.5, 1.0, 1.0, 0.9, {"accuracy": 1.0})


def test_torn_last_line_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "samples.jsonl"
    append_sample(path, _record(1.0, 0.9))
    with open(path, "a") as handle:
        handle.write('{"d": 0.75, "w": 1.0, "r"')
    with pytest.warns(UserWarning, match="last line 2"):
        assert read_samples(path) == [_record(1.0, 0.9)]


def test_append_after_a_torn_write_starts_a_fresh_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    append_sample(path, _record(1.0, 0.9))
    with open(path, "a") as handle:
        handle.write('{"d": 0.75, "w": 1.0, "r"')
    with pytest.warns(UserWarning, match="torn"):
        append_sample(path, _record(0.5, 0.8))
    append_sample(path, _record(0.25, 0.7))
    lines = path.read_text().split("\n")
    assert lines[1].endswith(TORN_MARKER)
    with pytest.warns(UserWarning, match="line 2 is a torn write"):
        samples = read_samples(path)
    assert [s.d for s in samples] == [1.0, 0.5, 0.25]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps(_record(1.0, 0.9).to_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_samples(path) == [_record(1.0, 0.9)]
        append_sample(path, _record(0.5, 0.8))
        assert [s.d for s in read_samples(path)] == [1.0, 0.5]


def test_corrupted_middle_line_names_the_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = json.dumps(_record(1.0, 0.9).to_dict())
    path.write_text(f"{good}\n\n{{not json}}\n{good}\n")
    with pytest.raises(ValueError, match="line 3"):
        read_samples(path)


def test_invalid_middle_record_names_the_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = json.dumps(_record(1.0, 0.9).to_dict())
    path.write_text(f'{good}\n{{"d": 0.5, "w": 1, "r": 1}}\n{good}\n')
    with pytest.raises(ValueError, match="line 2 .*missing"):
        read_samples(path)


def test_unserialisable_extra_is_rejected_before_writing(tmp_path):
    path = tmp_path / "samples.jsonl"
    with pytest.raises(ValueError, match="JSON"):
        append_sample(path, Sample(1.0, 1.0, 1.0, 0.9, {"bad": object()}))
    assert not path.exists()


def test_samples_to_xy():
    X, y = samples_to_xy([Sample(0.5, 0.6, 0.7, 0.8), Sample(1.0, 1.0, 1.0, 0.9)])
    np.testing.assert_array_equal(X, [[0.5, 0.6, 0.7], [1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(y, [0.8, 0.9])
    X, y = samples_to_xy([])
    assert X.shape == (0, 3) and y.shape == (0,)
