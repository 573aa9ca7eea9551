"""The one timer: statistics, spread check, alternating rounds, the timing subprocess."""

import contextlib
import sys
import types

import pytest
import torch
import torch.nn as nn

from tridim.cost import timing, timing_process
from tridim.cost.runtimes import time_forward, time_ratio
from tridim.prune.resolution import with_resolution
from tridim.run.report import describe_timing
from tridim.training.models import build

SIZE = (1, 8, 8)
REQUEST = {
    "threads": 1,
    "rounds": 2,
    "per_round": 4,
    "runtime": "eager",
    "device": "cpu",
    "precision": "fp32",
    "channels_last": False,
}


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return build("resnet20", 10, 1).eval()


def scripted(times):
    """A runner whose passes take ``times`` in turn (warm-up passes read 1.0)."""
    values = iter(times)
    warming = [True]

    @contextlib.contextmanager
    def runner():
        def run():
            return 1.0 if warming[0] else next(values)

        yield run

    return runner(), warming


def measure(runners, attempts=timing.MAX_ATTEMPTS, **request):
    """``timing._measure`` with warm-up passes separated from timed ones."""
    contexts = {name: r for name, (r, _) in runners.items()}
    original = timing._warm_up

    def warm_up(run):
        original(run)
        for _, warming in runners.values():
            warming[0] = False

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timing, "_warm_up", warm_up)
        patch.setattr(timing, "MAX_ATTEMPTS", attempts)
        return timing._measure(contexts, {**REQUEST, **request})


def test_statistics_are_those_of_the_timed_passes():
    result = measure({"m": scripted([5.0, 1.0, 4.0, 2.0, 3.0, 8.0, 7.0, 6.0])}, attempts=1)
    stats = result["models"]["m"]
    assert (stats["min_ms"], stats["median_ms"], stats["max_ms"]) == (1.0, 4.5, 8.0)
    assert (stats["q1_ms"], stats["q3_ms"], stats["repeats"]) == (2.75, 6.25, 8)
    assert stats["round_ms"] == [3.0, 6.5]  # medians of each round of 4 passes
    assert stats["spread"] == pytest.approx(3.5 / 4.75)


def test_rounds_alternate_and_the_ratio_is_the_median_of_round_ratios():
    order = []

    def runner(name, ms):
        @contextlib.contextmanager
        def make():
            def run():
                order.append(name)
                return ms[len([o for o in order if o == name]) - 1]

            yield run

        return make()

    base_ms = [2.0] * 3 + [3.0] * 3 + [2.0] * 3
    model_ms = [4.0] * 3 + [9.0] * 3 + [4.0] * 3
    request = {**REQUEST, "rounds": 3, "per_round": 3}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timing, "_warm_up", lambda run: None)
        patch.setattr(timing, "MAX_ATTEMPTS", 1)
        result = timing._measure(
            {"base": runner("base", base_ms), "model": runner("model", model_ms)}, request
        )
    # round 1: base then model; round 2: model then base; round 3: base then model
    groups = [order[i] for i in range(0, len(order), 3)]  # one name per block of 3 passes
    assert groups == ["base", "model", "model", "base", "base", "model"]
    assert timing.ratio_of(result, "model", "base") == pytest.approx(2.0)  # of 2, 3, 2
    assert not result["state"]["stable"]  # the model's rounds spread 4 -> 9


def test_a_spread_out_set_of_rounds_is_repeated_until_stable():
    noisy = [1.0] * 4 + [2.0] * 4  # first attempt: rounds 1.0 and 2.0
    steady = [1.0] * 8
    result = measure({"m": scripted(noisy + steady)})
    assert result["state"]["attempts"] == 2
    assert result["state"]["stable"] and result["models"]["m"]["spread"] == 0.0


def test_rounds_that_never_agree_are_reported_unstable():
    result = measure(
        {"m": scripted([1.0] * 4 + [2.0] * 4 + [1.0] * 4 + [3.0] * 4 + [1.0] * 4 + [1.5] * 4)}
    )
    state = result["state"]
    assert state["attempts"] == timing.MAX_ATTEMPTS and not state["stable"]
    assert state["max_spread"] == pytest.approx(0.5 / 1.25)  # the least spread attempt kept
    assert "unstable: rounds spread 40%" in describe_timing(state)


def test_the_subprocess_times_in_the_fixed_heap_state(base):
    timing.configure(allocator="fixed-heap", process="subprocess")
    state = time_forward(base, SIZE, 2, repeats=3, threads=1)["state"]
    assert state["process"] == "subprocess" and state["allocator"] == "fixed-heap"
    assert state["mmap_threshold"] and state["threads"] == 1
    worker = timing_process._worker
    assert worker is not None and worker.alive()
    time_ratio(with_resolution(base, 0.5, SIZE), base, SIZE, 2, repeats=4, rounds=2)
    assert timing_process._worker is worker  # one process, reused


def test_a_dead_timing_process_is_replaced(base):
    time_forward(base, SIZE, 2, repeats=3, threads=1)
    timing_process._worker.process.kill()
    timing_process._worker.process.wait()
    assert time_forward(base, SIZE, 2, repeats=3, threads=1)["state"]["process"] == "subprocess"


class NotImportable(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_a_model_the_subprocess_cannot_import_is_timed_here_and_says_why(base, monkeypatch):
    # A class the worker cannot find by its module path, as for a notebook's own model.
    monkeypatch.setattr(NotImportable, "__module__", "__main__")
    state = time_forward(NotImportable(), SIZE, 2, repeats=3, threads=1)["state"]
    assert state["process"] == "in-process" and "__main__" in state["why_in_process"]
    # A module this process has in memory only: pickled here, not found by the worker.
    in_memory = types.ModuleType("tridim_in_memory_only")
    in_memory.NotImportable = NotImportable
    monkeypatch.setitem(sys.modules, "tridim_in_memory_only", in_memory)
    monkeypatch.setattr(NotImportable, "__module__", "tridim_in_memory_only")
    state = time_forward(NotImportable(), SIZE, 2, repeats=3, threads=1)["state"]
    assert state["process"] == "in-process" and "cannot load" in state["why_in_process"]


def test_onnxruntime_sessions_do_not_spin(base):
    pytest.importorskip("onnxruntime")
    state = time_ratio(base, base, SIZE, 2, runtime="onnxruntime", repeats=4, rounds=2)["state"]
    assert state["ort_allow_spinning"] is False and state["ort_inter_op_threads"] == 1
    assert state["process"] == "subprocess"


def test_configure_rejects_an_unknown_allocator_and_process():
    with pytest.raises(ValueError, match="allocator must be one of fixed-heap, system or the path"):
        timing.configure(allocator="tcmalloc")
    with pytest.raises(ValueError, match="process must be one of subprocess, in-process"):
        timing.configure(process="thread")
    assert timing.current_setup().allocator == "fixed-heap"


def test_in_process_timing_when_configured(base):
    try:
        timing.configure(process="in-process", allocator="system")
        state = time_forward(base, SIZE, 2, repeats=3, threads=1)["state"]
        assert state["process"] == "in-process" and state["why_in_process"] == "configured"
    finally:
        timing.configure(process="subprocess", allocator="fixed-heap")


def test_the_command_line_starts_the_timing_process_only_for_an_optimize_run_on_the_cpu():
    """`tridim optimize` starts its timing subprocess before importing torch; other
    commands, help and GPU runs do not start one, and closing it ends it at once."""
    from tridim.cli import _start_timing_process_early

    timing_process.close_worker()
    for argv in (["train"], ["optimize", "--help"], ["optimize", "--device", "cuda"]):
        _start_timing_process_early(argv)
        assert timing_process._worker is None, argv
    _start_timing_process_early(["--debug", "optimize", "--device=cpu", "--target", "0.4"])
    worker = timing_process._worker
    assert worker is not None and worker.alive()
    timing_process.close_worker()
    assert worker.process.poll() is not None and timing_process._worker is None
