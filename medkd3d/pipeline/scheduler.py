"""Run the pipeline's trainings on several worker processes, every teacher before its distilled students.

On a CPU, one PyTorch training of a small 3D network does not keep every core busy (two threads were 1.4x to
1.7x faster than one on the ``quick`` networks, not 2x), so two trainings with one thread each finish sooner than
the same two one after the other. Teachers and the no-KD twins need nothing before them; a distilled student
needs its teacher's checkpoint. A run's evaluation (``evaluate.json``) is a job too, after its training and
behind every training in priority, so the evaluations fill the workers the last trainings leave idle. Each worker
process runs one bundle job at a time with its output (progress bar, MONAI's logs) in the run's ``train.log`` or
``evaluate.log``; the pipeline's own log says when each job starts and ends.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkd3d.utils import usable_cpus

__all__ = ["TrainingJob", "TrainingJobError", "next_jobs", "run_training_jobs", "threads_per_job"]


@dataclass(frozen=True)
class TrainingJob:
    """One bundle training, or evaluation, of the pipeline.

    Args:
        name: the run's name (its output folder), e.g. ``brats_student_effnet3d_no_kd``; its training and its
            evaluation share it, and ``after`` names a training.
        bundle_root: the bundle directory.
        profiles: the bundle profiles merged after ``train.json``.
        overrides: the run's config overrides.
        log_path: where the worker writes the run's output.
        after: the name of the job that must finish first (a distilled student's teacher), or ``None``.
        priority: lower starts first among the jobs that may start (teachers, then distilled students, then
            twins: the longest chain first).
        tracking: MONAI experiment tracking (``"mlflow"``) or ``None``.
        evaluation: run the trained model's evaluation (``train.json`` + ``evaluate.json``, MONAI's ``infer``
            workflow) instead of its training.
    """

    name: str
    bundle_root: str
    profiles: tuple[str, ...]
    overrides: dict[str, Any] = field(hash=False)
    log_path: str
    after: str | None = None
    priority: int = 0
    tracking: str | None = None
    evaluation: bool = False


class TrainingJobError(RuntimeError):
    """A training or evaluation failed in a worker process; the message names the run, the error and its log file."""


def threads_per_job(workers: int, cpu_count: int | None = None) -> int:
    """PyTorch threads of each of ``workers`` concurrent trainings: the CPUs shared out, at least one.

    Args:
        workers: concurrent trainings.
        cpu_count: CPUs available (default: :func:`medkd3d.utils.usable_cpus`).

    Returns:
        ``max(1, cpu_count // workers)``.
    """
    return max(1, (cpu_count or usable_cpus()) // max(1, workers))


def next_jobs(
    pending: Sequence[TrainingJob], done: set[str], free_slots: int, skipped: set[str] = frozenset()
) -> list[TrainingJob]:
    """The pending jobs to start now: those whose ``after`` job is done (or was not run), by ``priority``.

    Args:
        pending: jobs not started yet.
        done: names of the jobs that finished.
        free_slots: how many may start.
        skipped: names of prerequisite jobs that are not part of this run (e.g. a teacher trained earlier).

    Returns:
        At most ``free_slots`` jobs, in start order.
    """
    ready = [
        (index, job)
        for index, job in enumerate(pending)
        if job.after is None or job.after in done or job.after in skipped
    ]
    # by position, not name: a run's training and evaluation share a name
    return [job for _, job in sorted(ready, key=lambda item: (item[1].priority, item[0]))][: max(0, free_slots)]


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors 1 and 2, so C extensions too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a", encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _train(job: TrainingJob, threads: int) -> float:
    """Worker: run ``job`` with ``threads`` PyTorch threads, its output in ``job.log_path``; return its seconds.

    Raises:
        TrainingJobError: for any error of the run, with its type and message; the traceback is in the log (an
            exception of the run itself may not survive pickling back to the pipeline).
    """
    import torch

    from medkd3d.bundles.run import evaluate_bundle, run_bundle_config

    torch.set_num_threads(threads)
    started = time.perf_counter()
    log_path = Path(job.log_path)
    with _output_to(log_path):
        try:
            if job.evaluation:
                evaluate_bundle(job.bundle_root, profiles=job.profiles, **job.overrides)
            else:
                run_bundle_config(
                    job.bundle_root, "train.json", tracking=job.tracking, profiles=job.profiles, **job.overrides
                )
        except Exception as error:
            traceback.print_exc()
            what = "evaluating" if job.evaluation else "training"
            message = f"{what} {job.name} failed: {type(error).__name__}: {error} (log: {log_path})"
            raise TrainingJobError(message) from None
    return time.perf_counter() - started


def run_training_jobs(
    jobs: Sequence[TrainingJob],
    workers: int,
    on_start: Callable[[TrainingJob], None] = lambda job: None,
    on_finish: Callable[[TrainingJob, float], None] = lambda job, seconds: None,
    skipped: set[str] = frozenset(),
    train: Callable[[TrainingJob, int], float] = _train,
) -> None:
    """Run ``jobs`` on ``workers`` processes, each job after the one it names, and call back at start and end.

    Args:
        jobs: the trainings and evaluations.
        workers: concurrent worker processes (each with :func:`threads_per_job` PyTorch threads).
        on_start: called in this process when a job is handed to a worker.
        on_finish: called in this process with a job and its duration in seconds when it succeeds.
        skipped: prerequisite names that are not run here (already trained).
        train: the worker function (a picklable module-level function), :func:`_train` by default.

    Raises:
        TrainingJobError: the first failed job (the others are cancelled or run to their end first).
        ValueError: if a job waits for a job that is neither in ``jobs`` nor in ``skipped``.
    """
    names = {job.name for job in jobs}
    orphans = [job.name for job in jobs if job.after and job.after not in names | set(skipped)]
    if orphans:
        raise ValueError(f"Jobs {orphans} wait for runs that are not scheduled.")
    threads = threads_per_job(workers)
    pending, done = list(jobs), set()
    running: dict[Future, TrainingJob] = {}
    # spawn: a fresh interpreter per worker, not a fork of one that may hold threads and open files
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            while pending or running:
                for job in next_jobs(pending, done, workers - len(running), skipped):
                    pending.remove(job)
                    on_start(job)
                    running[pool.submit(train, job, threads)] = job
                if not running:  # cannot happen with prerequisites checked above; never spin
                    raise ValueError(f"No job can start: {[job.name for job in pending]}.")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    seconds = future.result()
                    done.add(job.name)
                    on_finish(job, seconds)
        except BaseException:
            for future in running:
                future.cancel()
            raise
