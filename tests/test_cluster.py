"""Trials on a real local Ray: the same samples as a sequential collection, written by the driver."""

from __future__ import annotations

import pytest

import tridim
from tridim.run.store import RunStore

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
    with pytest.raises(ValueError, match="cluster must be None, 'processes' or 'ray'"):
        tridim.collect(base_model, tiny, 0.5, workdir=tmp_path, cluster="slurm")
    assert not any(tmp_path.iterdir())  # refused before anything was written


class _FailingRay:
    """Ray's driver API, enough for RayTrials, where the first task to finish failed."""

    def __init__(self):
        self.up, self.submitted, self.cancelled, self.shutdowns = False, [], [], 0
        self.checkpoints = []

    def is_initialized(self):
        return self.up

    def init(self, **options):
        self.up = True

    def shutdown(self):
        self.up, self.shutdowns = False, self.shutdowns + 1

    def cluster_resources(self):
        return {"CPU": 2}

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": 2}}]

    def put(self, value):
        return value

    def remote(self, **resources):
        ray = self

        class Task:
            def remote(self, trial, *args):
                ray.submitted.append(trial.key)
                ray.checkpoints.append(args[-1])
                return trial.key

        return lambda function: Task()

    def wait(self, references, num_returns):
        return references[:num_returns], references[num_returns:]

    def get(self, reference):
        raise RuntimeError(f"task {reference} died")

    def cancel(self, reference, force=False):
        self.cancelled.append(reference)


def test_a_failed_task_cancels_the_pending_ones_and_ray_is_shut_down(
    tiny, base_model, tmp_path, monkeypatch
):
    fake = _FailingRay()
    monkeypatch.setattr("tridim.run.cluster._ray", lambda: fake)
    with pytest.raises(RuntimeError, match="died"):
        tridim.collect(base_model, tiny, 0.5, workdir=tmp_path, cluster="ray", **SETTINGS)
    assert len(fake.submitted) >= 2
    assert sorted(fake.cancelled) == sorted(fake.submitted[1:])  # all but the failed one
    assert fake.shutdowns == 1 and not fake.up  # the Ray this run started is shut down
    # each task keeps its epoch checkpoint where a re-run of the trial looks for it
    store = RunStore(tmp_path)
    assert fake.checkpoints == [str(store.checkpoint_path(k)) for k in fake.submitted]


def test_a_ray_the_caller_started_stays_up(tiny, base_model, tmp_path, monkeypatch):
    fake = _FailingRay()
    fake.up = True
    monkeypatch.setattr("tridim.run.cluster._ray", lambda: fake)
    with pytest.raises(RuntimeError, match="died"):
        tridim.collect(base_model, tiny, 0.5, workdir=tmp_path, cluster="ray", **SETTINGS)
    assert fake.shutdowns == 0 and fake.up
