"""The timing subprocess's life, without torch: its setup, start, requests and end.

Apart from :mod:`tridim.cost.timing` (which measures, and is what the subprocess runs) so
that a caller can start the subprocess before it imports torch itself: the command line
starts it first thing for ``tridim optimize``, while both processes import torch side by
side on two cores, instead of later beside training that already uses every core. The
protocol: length-prefixed frames, a pickled request in (from this process's own pipe,
never from a file), a JSON answer out.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALLOCATORS",
    "PROCESSES",
    "TimingSetup",
    "configure",
    "current_setup",
    "start_worker",
]

#: Named allocator states (anything else must be a shared library to preload).
ALLOCATORS = ("fixed-heap", "system")
PROCESSES = ("subprocess", "in-process")


@dataclass(frozen=True)
class TimingSetup:
    """The controlled state CPU timings run in.

    Attributes
    ----------
    allocator : str
        ``"fixed-heap"``, ``"system"`` or the path of an allocator library to preload.
    process : {"subprocess", "in-process"}
        Time in the dedicated subprocess (the default), or in the caller's process.
    """

    allocator: str = "fixed-heap"
    process: str = "subprocess"

    def __post_init__(self) -> None:
        if self.allocator not in ALLOCATORS and not Path(self.allocator).is_file():
            raise ValueError(
                f"allocator must be one of {', '.join(ALLOCATORS)} or the path of a shared "
                f"library to preload (e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4); "
                f"got {self.allocator!r}, which is neither"
            )
        if self.process not in PROCESSES:
            raise ValueError(f"process must be one of {', '.join(PROCESSES)}, got {self.process!r}")


#: Held while a request is under way or the subprocess changes.
lock = threading.Lock()
_setup: TimingSetup | None = None
_worker: _Worker | None = None


def current_setup() -> TimingSetup:
    """The setup in force: the last :func:`configure`, else the environment's
    ``TRIDIM_TIMING_ALLOCATOR`` and ``TRIDIM_TIMING_PROCESS``, else the defaults."""
    global _setup
    if _setup is None:
        _setup = TimingSetup(
            allocator=os.environ.get("TRIDIM_TIMING_ALLOCATOR", "fixed-heap"),
            process=os.environ.get("TRIDIM_TIMING_PROCESS", "subprocess"),
        )
    return _setup


def configure(*, allocator: str | None = None, process: str | None = None) -> TimingSetup:
    """Set the timing state for this process's later timings; returns it.

    Examples
    --------
    >>> configure(allocator="system").allocator
    'system'
    >>> configure(allocator="fixed-heap").allocator
    'fixed-heap'
    """
    global _setup
    now = current_setup()
    chosen = TimingSetup(
        allocator=now.allocator if allocator is None else allocator,
        process=now.process if process is None else process,
    )
    with lock:
        if chosen != _setup:
            close_worker()
        _setup = chosen
    return chosen


class _Worker:
    """The timing subprocess: length-prefixed requests in, JSON answers out."""

    def __init__(self, setup: TimingSetup) -> None:
        self.setup = setup
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["TRIDIM_TIMING_ALLOCATOR"] = setup.allocator
        if setup.allocator not in ALLOCATORS:
            env["LD_PRELOAD"] = setup.allocator
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tridim.cost.timing"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
        )

    def ask(self, payload: bytes) -> dict:
        try:
            write_frame(self.process.stdin, payload)
            return json.loads(read_frame(self.process.stdout))
        except (OSError, EOFError, ValueError) as error:
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip().splitlines()[-3:]
            self.close()
            return {"error": f"the timing process failed ({error}): {' / '.join(tail)}"}

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        # It holds nothing to save: killed, it ends at once, where closing its input would
        # wait about half a second for its interpreter (with torch) to tear down.
        self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        self.log.close()


def worker_for(setup: TimingSetup) -> _Worker:
    """The running subprocess for ``setup``: the one running, or a new one (call under
    :data:`lock`)."""
    global _worker
    if _worker is None or _worker.setup != setup or not _worker.alive():
        close_worker()
        _worker = _Worker(setup)
    return _worker


def start_worker() -> None:
    """Start the timing subprocess now, so that its start (a fresh interpreter importing
    torch, about 1.5 s) overlaps the caller's work instead of delaying the first timing.

    Does nothing when timings run in-process (:func:`configure`) or the worker runs.
    """
    setup = current_setup()
    if setup.process == "subprocess":
        with lock:
            worker_for(setup)


def close_worker() -> None:
    """End the subprocess, if one runs (at exit too)."""
    global _worker
    if _worker is not None:
        _worker.close()
        _worker = None


atexit.register(close_worker)


def write_frame(stream, data: bytes) -> None:
    """Write ``data`` to ``stream`` behind its length."""
    stream.write(struct.pack("<Q", len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream) -> bytes:
    """Read one frame :func:`write_frame` wrote; EOFError if the stream ends first."""
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("the timing process closed its output")
    (length,) = struct.unpack("<Q", header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("the timing process stopped mid-answer")
    return data
