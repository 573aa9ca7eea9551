"""Trials side by side: as Ray tasks on a cluster, or as worker processes on this machine.

Two backends run independent trials at once while the driver (this process) keeps the
run folder: ``cluster="ray"`` (Ray tasks) and ``cluster="processes"`` (a pool of worker
processes on this machine, each with an even share of its cores; the driver runs lone
trials, refine and final, itself with every thread). Both ship the same shared context
and run the same task body; the rest of this docstring says how Ray does it.

A collection's three dimension chains, and each refine or final trial, are jobs. With
``cluster="ray"`` each trial becomes a Ray task that receives the shared context (base
model and data, put once in Ray's object store), the trial and its parent's stored
record, and returns the sample, the plan and the finetuned weights. The driver alone
writes the run folder, as each task finishes, so a crash of a worker or of the driver
loses no finished trial and a re-run resumes.

Each task asks for a share of the cluster's CPUs (and one GPU each when the run's device
is a GPU) and sets PyTorch's thread count to its CPU share, so tasks sharing a machine
never oversubscribe its cores. The driver connects to ``RAY_ADDRESS`` if set, else starts
a local Ray, and shuts down what it started when the run ends (:func:`ray_trials`). When a
task fails, the tasks still pending are cancelled before the error is raised.

Each task keeps its per-epoch checkpoint at the run folder's path for it, so a task that
is killed and re-run resumes from its last epoch. That needs the run folder on storage the
workers see (the driver's machine, or a shared filesystem); elsewhere a task restarts
from its first epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch

from tridim.run.progress import Stage
from tridim.run.trial import (
    Trial,
    TrialContext,
    TrialResult,
    execute_trial,
    parent_of,
    store_trial,
    stored_trial,
)

__all__ = [
    "RayTrials",
    "ProcessTrials",
    "CLUSTERS",
    "check_cluster",
    "ray_trials",
    "available_cores",
]

#: Accepted ``cluster`` values: None (this process), ``"processes"`` or ``"ray"``.
CLUSTERS = (None, "processes", "ray")


def check_cluster(cluster: str | None) -> str | None:
    """``cluster`` if known; a clear error if Ray is asked for and not installed."""
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be None, 'processes' or 'ray', got {cluster!r}")
    if cluster == "ray":
        _ray()
    return cluster


def _ray():
    try:
        import ray
    except ImportError:
        raise ValueError(
            "cluster='ray' needs Ray: pip install 'tridim[ray]' (or pip install ray)"
        ) from None
    return ray


@contextlib.contextmanager
def ray_trials(context: TrialContext, cluster: str | None) -> Iterator[_Trials | None]:
    """The run's trial backend for ``cluster`` (:class:`RayTrials`, :class:`ProcessTrials`,
    or None for this process alone), closed at the end."""
    backends = {"ray": RayTrials, "processes": ProcessTrials}
    trials = backends[cluster](context) if cluster in backends else None
    try:
        yield trials
    finally:
        if trials is not None:
            trials.close()


def _execute_remote(trial: Trial, context: TrialContext, parent, threads: int, checkpoint):
    """The task body: run the trial on this worker with its share of the CPU."""
    torch.set_num_threads(threads)
    context.execution.place(context.base)
    result = execute_trial(trial, context, parent, checkpoint_path=checkpoint)
    weights = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    return result.sample, result.plan, weights, result.seconds


class _Trials:
    """What both backends share: the driver stores each trial as it finishes."""

    context: TrialContext

    def submit(self, trial: Trial):  # pragma: no cover - each backend defines it
        raise NotImplementedError

    def _result(self, reference) -> tuple:  # the task body's return value
        raise NotImplementedError

    def _wait_one(self, references: list):  # the first of ``references`` to finish
        raise NotImplementedError

    def _cancel(self, reference) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def finish(self, trial: Trial, reference, *, keep_model: bool = False) -> TrialResult:
        """Wait for a task, store its trial, and return the result."""
        sample, plan, weights, seconds = self._result(reference)
        from tridim.prune.realise import apply_plan

        model = apply_plan(self.context.base, plan)
        model.load_state_dict(weights)
        result = TrialResult(sample, plan, model.eval(), seconds)
        store_trial(trial, result, self.context)
        return result if keep_model else dataclasses.replace(result, model=None)

    def run(self, trial: Trial, *, keep_model: bool = False) -> TrialResult:
        """One trial (read back instead if the store has it)."""
        stored = stored_trial(trial, self.context, keep_model=keep_model)
        if stored is not None:
            return stored
        return self.finish(trial, self.submit(trial), keep_model=keep_model)

    def run_chains(self, chains: list[list[Trial]], stage: Stage) -> None:
        """Run chains of dependent trials, the chains side by side; store as they end."""
        queues = [list(chain) for chain in chains]
        pending: dict = {}

        def start_next(queue: list[Trial]) -> None:
            while queue:
                trial = queue.pop(0)
                if stored_trial(trial, self.context, keep_model=False) is None:
                    pending[self.submit(trial)] = (trial, queue)
                    return
                stage.advance(f"{trial.key} (stored)")

        try:
            for queue in queues:
                start_next(queue)
            while pending:
                done = self._wait_one(list(pending))
                trial, queue = pending.pop(done)
                result = self.finish(trial, done)
                stage.advance(f"{trial.key} accuracy {result.sample.accuracy:.4f}")
                start_next(queue)
        except BaseException:  # a failed task, or Ctrl-C: no task may run on unwatched
            for reference in pending:
                self._cancel(reference)
            raise


class RayTrials(_Trials):
    """Runs a run's trials as Ray tasks; the driver (this object) writes the store.

    Parameters
    ----------
    context : TrialContext
        The run's context (its store is the driver's).
    concurrency : int
        How many trials are meant to run at once: each task asks for
        ``cluster CPUs // concurrency`` CPUs (at least 1).
    """

    def __init__(self, context: TrialContext, concurrency: int = 3) -> None:
        ray = _ray()
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=False)
        self.ray, self.context = ray, context
        self.threads = _task_cpus(ray, concurrency)
        execution = context.execution
        gpus = 1 if execution.device is not None and execution.device.type == "cuda" else 0
        if gpus:  # Ray shows each task its own GPU as cuda:0, whatever index the driver used
            execution = dataclasses.replace(execution, device=torch.device("cuda"))
        self.task = ray.remote(num_cpus=self.threads, num_gpus=gpus)(_execute_remote)
        remote_context = dataclasses.replace(
            context, base=_on_cpu(context.base), store=None, quiet=True, execution=execution
        )
        self.shared = ray.put(remote_context)

    def close(self) -> None:
        """Shut Ray down if this object started it (a Ray the caller started stays up)."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False

    def submit(self, trial: Trial):
        """Start ``trial`` as a task; returns its Ray object reference."""
        parent = parent_of(trial, self.context)
        checkpoint = str(self.context.store.checkpoint_path(trial.key))
        return self.task.remote(trial, self.shared, parent, self.threads, checkpoint)

    def _result(self, reference) -> tuple:
        return self.ray.get(reference)

    def _wait_one(self, references: list):
        done, _ = self.ray.wait(references, num_returns=1)
        return done[0]

    def _cancel(self, reference) -> None:
        self.ray.cancel(reference, force=True)


class ProcessTrials(_Trials):
    """Runs independent trials in worker processes on this machine, each with an even
    share of its cores (``workers x threads <= cores``: nothing oversubscribes); a lone
    trial (refine, final) runs in this process with every thread.

    Parameters
    ----------
    context : TrialContext
        The run's context (its store is the driver's). Its model's class must be
        importable by a new process (not defined in a notebook's ``__main__``).
    workers : int, optional
        Worker processes (default: one per core, at most 3 — the three chains or
        independent samples at a time).
    """

    def __init__(self, context: TrialContext, workers: int | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        cores = available_cores()
        self.workers = workers or max(1, min(3, cores))
        self.threads = max(1, cores // self.workers)
        self.context = context
        remote = dataclasses.replace(context, base=_on_cpu(context.base), store=None, quiet=True)
        self.pool = ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(remote, self.threads),
        )

    def close(self) -> None:
        """Stop the workers (pending trials are cancelled)."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, trial: Trial):
        """Start ``trial`` in a worker; returns its future."""
        parent = parent_of(trial, self.context)
        checkpoint = str(self.context.store.checkpoint_path(trial.key))
        return self.pool.submit(_execute_in_worker, trial, parent, checkpoint)

    def run(self, trial: Trial, *, keep_model: bool = False) -> TrialResult:
        """A lone trial runs here, with every thread (no other trial shares the cores)."""
        from tridim.run.trial import run_trial

        return run_trial(trial, self.context, keep_model=keep_model)

    def _result(self, reference) -> tuple:
        return reference.result()

    def _wait_one(self, references: list):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(references, return_when=FIRST_COMPLETED)
        return next(iter(done))

    def _cancel(self, reference) -> None:
        reference.cancel()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_WORKER: dict = {}


def _start_worker(context: TrialContext, threads: int) -> None:
    """A worker process's initializer: keep the shared context, take a thread share."""
    torch.set_num_threads(threads)
    _WORKER.update(context=context, threads=threads)


def _execute_in_worker(trial: Trial, parent, checkpoint: str):
    return _execute_remote(trial, _WORKER["context"], parent, _WORKER["threads"], checkpoint)


def _task_cpus(ray, concurrency: int) -> int:
    """CPUs per task: the cluster's share per concurrent trial, capped so that a task
    still fits on the largest live node (Ray never schedules a task across nodes)."""
    total = int(ray.cluster_resources().get("CPU", 1))
    nodes = [n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    largest = int(max(nodes, default=total)) or total
    return max(1, min(total // max(1, concurrency), largest))


def _on_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU copy to ship to workers (each moves it to its own device)."""
    import copy

    return copy.deepcopy(model).cpu()
