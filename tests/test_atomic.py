"""Atomic writes: the mode a user's umask asks for, and a failed write loses nothing."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tridim.atomic import atomic_write, atomic_write_json


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_allows(tmp_path, umask, mask, mode):
    """A run folder on a shared filesystem is readable by teammates when the umask says so."""
    umask(mask)
    path = atomic_write_json(tmp_path / "report.json", {"accuracy": 0.9})
    assert stat.S_IMODE(path.stat().st_mode) == mode
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what open() itself does under the same umask
    assert stat.S_IMODE(plain.stat().st_mode) == mode


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_debris(tmp_path):
    path = atomic_write(tmp_path / "weights.pt", b"old weights")

    def disk_full(handle):
        handle.write(b"half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, disk_full)
    assert path.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files via /proc")
def test_a_collection_stopped_by_a_full_disk_resumes_to_the_same_samples(
    tiny, base_model, tmp_path, monkeypatch
):
    """The disk fills while a collection writes its first trial's weights: the run
    stops with the OSError, and once there is space again a re-run finishes with the
    samples of a run that never saw the error, each once."""
    from tridim.run.collect import collect

    settings = dict(rounds=1, epochs_per_step=1, quiet=True)
    reference = collect(base_model, tiny, 0.5, workdir=tmp_path / "reference", **settings)
    writes = []
    real_fsync = os.fsync

    def fills_up(fd):
        if not writes and f"{os.sep}steps{os.sep}" in os.readlink(f"/proc/self/fd/{fd}"):
            writes.append(fd)  # the first file of a trial: its weights
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("tridim.atomic.os.fsync", fills_up)
    with pytest.raises(OSError, match="No space left"):
        collect(base_model, tiny, 0.5, workdir=tmp_path / "full", **settings)
    monkeypatch.undo()
    leftovers = [p for p in (tmp_path / "full").rglob(".*") if p.is_file()]
    assert not leftovers  # no half-written temporary file
    resumed = collect(base_model, tiny, 0.5, workdir=tmp_path / "full", **settings)
    keys = [s.extra["key"] for s in resumed]
    assert len(keys) == len(set(keys)) == len(reference)
    assert [(s.d, s.w, s.r, s.accuracy) for s in resumed] == [
        (s.d, s.w, s.r, s.accuracy) for s in reference
    ]
