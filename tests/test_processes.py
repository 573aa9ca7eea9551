"""Trials in worker processes: an even share of the cores each, the same samples."""

from __future__ import annotations

import pytest
import torch

import tridim
from tridim.run import cluster
from tridim.run.store import RunStore

SETTINGS = {"rounds": 1, "epochs_per_step": 1, "quiet": True, "device": "cpu"}


def _rows(samples):
    return {s.extra["key"]: (s.d, s.w, s.r, s.accuracy) for s in samples}


def test_a_collection_in_processes_equals_one_in_this_process(tiny, base_model, tmp_path):
    here = tridim.collect(base_model, tiny, 0.5, workdir=tmp_path / "here", **SETTINGS)
    apart = tridim.collect(
        base_model, tiny, 0.5, workdir=tmp_path / "apart", cluster="processes", **SETTINGS
    )
    expected, got = _rows(here), _rows(apart)
    assert expected.keys() == got.keys()
    for key, (d, w, r, accuracy) in expected.items():
        assert got[key][:3] == pytest.approx((d, w, r)), key
        assert got[key][3] == pytest.approx(accuracy, abs=0.02), key  # 1 thread vs 2
    keys = [s.extra["key"] for s in RunStore(tmp_path / "apart").samples()]
    assert len(keys) == len(set(keys)) == len(expected)  # the driver wrote each once


@pytest.mark.parametrize("cores, workers, threads", [(2, 2, 1), (8, 3, 2), (1, 1, 1)])
def test_workers_share_the_cores_without_oversubscribing(
    tiny, base_model, monkeypatch, cores, workers, threads
):
    monkeypatch.setattr(cluster, "available_cores", lambda: cores)
    from conftest import bare_context  # here: workers import this module, not conftest

    context = bare_context(base_model, tiny)
    trials = cluster.ProcessTrials(context)
    try:
        assert (trials.workers, trials.threads) == (workers, threads)
        assert trials.workers * trials.threads <= cores
        # what each worker process really set, asked of every worker at once
        futures = [trials.pool.submit(_threads_after_a_pause) for _ in range(workers)]
        assert {f.result(timeout=120) for f in futures} == {threads}
    finally:
        trials.close()


def _threads_after_a_pause() -> int:
    import time

    time.sleep(0.5)  # keep this worker busy so the next probe lands on another one
    return torch.get_num_threads()
