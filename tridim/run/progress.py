"""Progress of a run's stages: one bar per stage, or one line per stage when quiet.

A stage (``collect``, ``refine``, ``final``) counts its trials; each trial's training
shows its own epoch bar beneath, labelled with the trial (``width 3/4, epoch 1/2``).
With ``quiet`` the bars are hidden and each stage prints one line when it starts and one
when it ends, so a long quiet run still says what it is doing.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["Stage"]


class Stage:
    """A stage of ``total`` trials; use as a context manager and call :meth:`advance`.

    Parameters
    ----------
    name : str
        Shown in front of the bar (and in the quiet lines).
    total : int
        Trials in the stage, including those a resumed run will skip.
    quiet : bool
        Print a line at the start and at the end instead of drawing a bar.
    """

    def __init__(self, name: str, total: int, *, quiet: bool = False) -> None:
        from tridim.training.distributed import is_writer

        self.silent = not is_writer()  # under torchrun rank 0 alone shows progress
        self.name, self.total, self.quiet = name, total, quiet or self.silent
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, desc=name, unit="trial", disable=self.quiet, leave=True)

    def __enter__(self) -> Stage:
        if self.quiet and not self.silent:
            print(f"tridim: {self.name}: {self.total} trial(s)", file=sys.stderr, flush=True)
        return self

    def advance(self, note: str = "") -> None:
        """One more trial finished; ``note`` (e.g. its accuracy) is shown beside the bar."""
        self.bar.update(1)
        if note:
            self.bar.set_postfix_str(note)

    def __exit__(self, *exc) -> None:
        self.bar.close()
        if self.quiet and not self.silent and exc[0] is None:
            seconds = time.perf_counter() - self.started
            print(f"tridim: {self.name}: done in {seconds:.1f} s", file=sys.stderr, flush=True)
