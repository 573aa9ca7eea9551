"""Benchmark: why tridim times in a controlled state.

Each case runs in a fresh Python process (``python -m tridim.bench.allocator CASE``) and
times the same untrained ResNet-20 (28x28 grey images, batch 64) in the caller's process,
the way a user's script would:

- ``eager``: PyTorch eager in a fresh process, then again after five training steps;
  once with glibc as it starts (``system``) and once with the heap pinned as
  :mod:`tridim.cost.timing` pins it (``fixed-heap``);
- ``onnxruntime``: one ONNX Runtime session alone, then two sessions taking turns (as a
  model and its base do in a ratio), with and without their threads spinning between runs.

The figures are medians of 15 passes after warm-up (milliseconds).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

__all__ = ["format_table", "run_allocator_bench", "CASES"]

CASES = ("eager-system", "eager-fixed-heap", "onnxruntime-spinning", "onnxruntime-no-spinning")
SIZE = (1, 28, 28)
BATCH = 64


def run_allocator_bench(repeats: int = 3) -> dict:
    """Run every case ``repeats`` times, each in a fresh process; plain data."""
    rows = []
    for case in CASES:
        runs = []
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, "-m", "tridim.bench.allocator", case],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        rows.append(
            {
                "case": case,
                **{key: statistics.median(r[key] for r in runs) for key in runs[0]},
                "runs": runs,
            }
        )
    return {"config": {"input_size": list(SIZE), "batch": BATCH, "repeats": repeats}, "rows": rows}


def _median_ms(run, passes: int = 15, warmup: int = 5) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(passes):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000.0)
    return statistics.median(times)


def _eager(fixed_heap: bool) -> dict:
    import torch

    from tridim.cost.timing import _fix_heap
    from tridim.training.models import build

    if fixed_heap:
        _fix_heap()
    torch.manual_seed(0)
    model = build("resnet20", 10, SIZE[0])
    x = torch.randn(BATCH, *SIZE)

    def forward():
        with torch.inference_mode():
            model.eval()(x)

    fresh = _median_ms(forward)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(5):
        model.train()
        loss = model(torch.randn(128, *SIZE)).logsumexp(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return {"fresh_ms": fresh, "after_training_ms": _median_ms(forward)}


def _onnxruntime(spinning: bool) -> dict:
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnxruntime as ort
    import torch

    from tridim.run.io import export_onnx
    from tridim.training.models import build

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        export_onnx(build("resnet20", 10, SIZE[0]), path, SIZE)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        spin = "1" if spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        sessions = [ort.InferenceSession(str(path), options) for _ in range(2)]
    feed = {"input": np.random.default_rng(0).standard_normal((BATCH, *SIZE), "float32")}
    alone = _median_ms(lambda: sessions[0].run(None, feed))
    turn = [0]

    def in_turns():
        sessions[turn[0] % 2].run(None, feed)
        turn[0] += 1

    return {"fresh_ms": alone, "two_sessions_ms": _median_ms(in_turns, passes=30)}


def format_table(result: dict) -> str:
    """The result of :func:`run_allocator_bench` as the command line prints it."""
    from tridim.run.report import markdown_table  # a case's process stays a plain script's

    keys = ("case", "fresh_ms", "after_training_ms", "two_sessions_ms")
    config = result["config"]
    note = (
        f"milliseconds per batch of {config['batch']}, median of 15 passes, "
        f"median over {config['repeats']} fresh processes."
    )
    return "\n".join(
        [markdown_table([{k: row.get(k) for k in keys} for row in result["rows"]]), note]
    )


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    case = sys.argv[1]
    if case.startswith("eager"):
        result = _eager(case == "eager-fixed-heap")
    else:
        result = _onnxruntime(case == "onnxruntime-spinning")
    print(json.dumps(result))
