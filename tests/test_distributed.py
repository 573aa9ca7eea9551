"""torchrun: two CPU processes (gloo) collect the same samples as one, write them once, and resume.

Each run is a real ``torchrun --nproc_per_node 2 -m tridim collect`` on digits, one thread
per rank so the two ranks share the machine's cores without oversubscribing them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: A short collection from one trained base model: one step per dimension, two epochs each.
ARGS = [
    "collect",
    "--data",
    "digits",
    "--model",
    "resnet20",
    "--rounds",
    "1",
    "--epochs-per-step",
    "2",
    "--device",
    "cpu",
    "--quiet",
]

#: Accuracy difference allowed between 2 ranks and 1 process: the same base, global batch
#: and steps, but each rank's BatchNorm normalises half of every batch.
TOLERANCE = 0.04

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find a rank")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A ResNet-20 trained 6 epochs on digits: the base every run starts from."""
    path = tmp_path_factory.mktemp("base") / "resnet20.pt"
    subprocess.run(
        [sys.executable, "-m", "tridim", "train", "--epochs", "6", "--quiet", "--out", str(path)],
        check=True,
        env={**_env(), "OMP_NUM_THREADS": "2"},
        capture_output=True,
        timeout=600,
    )
    return str(path)


def _torchrun(workdir: Path, weights: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "tridim",
        *ARGS,
        "--weights",
        weights,
        "--workdir",
        str(workdir),
    ]


def _journal(workdir: Path) -> list[dict]:
    path = workdir / "samples.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _by_key(rows: list[dict]) -> dict[str, dict]:
    return {row["key"]: row for row in rows}


@pytest.fixture(scope="module")
def single(tmp_path_factory, weights) -> dict[str, dict]:
    workdir = tmp_path_factory.mktemp("single")
    subprocess.run(
        [sys.executable, "-m", "tridim", *ARGS, "--weights", weights, "--workdir", str(workdir)],
        check=True,
        env={**_env(), "OMP_NUM_THREADS": "2"},
        capture_output=True,
        timeout=600,
    )
    return _by_key(_journal(workdir))


def test_two_ranks_write_each_sample_once_and_match_one_process(single, weights, tmp_path):
    done = subprocess.run(
        _torchrun(tmp_path, weights), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _journal(tmp_path)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == len(single), keys  # each sample once
    assert done.stdout.count("journal:") == 1  # rank 0 alone reports
    for key, row in _by_key(rows).items():
        assert (row["d"], row["w"], row["r"]) == pytest.approx(
            (single[key]["d"], single[key]["w"], single[key]["r"]), abs=0.02
        ), key
        assert abs(row["accuracy"] - single[key]["accuracy"]) <= TOLERANCE, key


def _rank_pid(rank: int) -> int | None:
    """The process id of the tridim worker with this RANK (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"tridim" in cmdline and b"torch.distributed.run" not in cmdline:
            if f"RANK={rank}".encode() in environ and b"TORCHELASTIC_RUN_ID" in b" ".join(environ):
                return int(entry.name)
    return None


def test_killing_one_rank_loses_nothing_and_the_run_resumes(single, weights, tmp_path):
    runner = subprocess.Popen(
        _torchrun(tmp_path, weights), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 400
    while len(_journal(tmp_path)) < 2 and time.monotonic() < deadline:
        assert runner.poll() is None, runner.stderr.read().decode()[-3000:]
        time.sleep(0.5)
    before = _journal(tmp_path)
    assert len(before) >= 2, "the run did not get far enough to be killed"
    pid = _rank_pid(1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    runner.wait(timeout=120)
    assert runner.returncode != 0
    survived = _journal(tmp_path)
    assert survived[: len(before)] == before  # what was written stays as it was
    resumed = subprocess.run(
        _torchrun(tmp_path, weights), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _journal(tmp_path)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == len(single)
    assert rows[: len(survived)] == survived
