"""Trials on a real local Ray: the same samples as a sequential collection, written by the driver."""

from __future__ import annotations

import pytest

import tridim
from tridim.store import RunStore

ray = pytest.importorskip("ray")

SETTINGS = {"rounds": 1, "epochs_per_step": 1, "quiet": True, "device": "cpu"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _rows(samples):
    return {s.extra["key"]: (s.d, s.w, s.r, s.accuracy) for s in samples}


def test_ray_collection_equals_a_sequential_one(local_ray, tiny, base_model, tmp_path):
    sequential = tridim.collect(base_model, tiny, 0.5, workdir=tmp_path / "seq", **SETTINGS)
    on_ray = tridim.collect(
        base_model, tiny, 0.5, workdir=tmp_path / "ray", cluster="ray", **SETTINGS
    )
    expected, got = _rows(sequential), _rows(on_ray)
    assert expected.keys() == got.keys()
    for key, (d, w, r, accuracy) in expected.items():
        assert got[key][:3] == pytest.approx((d, w, r)), key
        assert got[key][3] == pytest.approx(accuracy, abs=0.02), key  # 1 thread vs 2
    # the driver wrote every trial once; a re-run reads them back without any task
    keys = [s.extra["key"] for s in RunStore(tmp_path / "ray").samples()]
    assert len(keys) == len(set(keys)) == len(expected)
    again = tridim.collect(
        base_model, tiny, 0.5, workdir=tmp_path / "ray", cluster="ray", **SETTINGS
    )
    assert _rows(again) == got


def test_unknown_cluster_is_refused(tiny, base_model, tmp_path):
    with pytest.raises(ValueError, match="cluster must be None or 'ray'"):
        tridim.collect(base_model, tiny, 0.5, workdir=tmp_path, cluster="slurm")
    assert not any(tmp_path.iterdir())  # refused before anything was written
