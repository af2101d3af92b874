"""The pipeline's training scheduler: prerequisites, priorities, worker processes and failures."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from medkd3d.pipeline.scheduler import (
    TrainingJob,
    TrainingJobError,
    _train,
    next_jobs,
    run_training_jobs,
    threads_per_job,
)
from medkd3d.utils import usable_cpus


def _job(
    name: str,
    tmp_path: Path,
    after: str | None = None,
    priority: int = 0,
    evaluation: bool = False,
    log: str | None = None,
    **overrides,
) -> TrainingJob:
    return TrainingJob(
        name=name, bundle_root=str(tmp_path), profiles=(), overrides=overrides,
        log_path=str(tmp_path / f"{log or name}.log"), after=after, priority=priority, evaluation=evaluation,
    )  # fmt: skip


def fake_train(job: TrainingJob, threads: int) -> float:
    """A worker that records when it ran (module level: the spawned workers import it by name)."""
    started = time.time()
    if job.overrides.get("fail"):
        raise TrainingJobError(f"training {job.name} failed: ValueError: bad (log: {job.log_path})")
    time.sleep(job.overrides.get("seconds", 0.3))
    record = {"start": started, "end": time.time(), "threads": threads}
    Path(job.log_path).write_text(json.dumps(record))
    return record["end"] - started


def test_next_jobs_waits_for_prerequisites_and_starts_the_longest_chains_first(tmp_path: Path) -> None:
    teacher, twin = _job("teacher", tmp_path, priority=0), _job("twin", tmp_path, priority=2)
    student = _job("student", tmp_path, after="teacher", priority=1)
    pending = [twin, student, teacher]
    assert next_jobs(pending, done=set(), free_slots=2) == [teacher, twin]  # the student waits for its teacher
    assert next_jobs(pending, done=set(), free_slots=1) == [teacher]
    assert next_jobs([twin, student], done={"teacher"}, free_slots=2) == [student, twin]
    # a teacher trained by an earlier run does not hold its student back
    assert next_jobs([twin, student], done=set(), free_slots=2, skipped={"teacher"}) == [student, twin]
    assert next_jobs(pending, done=set(), free_slots=0) == []


def test_threads_are_shared_out_between_the_workers() -> None:
    assert threads_per_job(2, cpu_count=2) == 1
    assert threads_per_job(2, cpu_count=16) == 8
    assert threads_per_job(4, cpu_count=2) == 1  # never zero


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_threads_follow_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # a job pinned to 4 of 64 CPUs (taskset, a container's cpuset) must not start 32 threads per worker
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert usable_cpus() == 4
    assert threads_per_job(2) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set())
    assert usable_cpus() == 1  # never zero


def test_workers_run_in_parallel_and_a_student_after_its_teacher(tmp_path: Path) -> None:
    jobs = [
        _job("teacher", tmp_path, priority=0, seconds=1.0),
        _job("student", tmp_path, after="teacher", priority=1),
        _job("twin", tmp_path, priority=2, seconds=1.0),
    ]
    started, finished = [], []
    run_training_jobs(
        jobs, workers=2, train=fake_train, on_start=lambda j: started.append(j.name),
        on_finish=lambda j, seconds: finished.append((j.name, seconds)),
    )  # fmt: skip
    runs = {j.name: json.loads(Path(j.log_path).read_text()) for j in jobs}
    assert started[:2] == ["teacher", "twin"] and started[2] == "student"
    assert runs["student"]["start"] >= runs["teacher"]["end"]  # the prerequisite finished first
    assert runs["twin"]["start"] < runs["teacher"]["end"]  # two workers at once
    assert {name for name, _ in finished} == {"teacher", "student", "twin"}
    assert all(seconds > 0 for _, seconds in finished)


def test_a_failed_run_stops_the_schedule_with_its_message(tmp_path: Path) -> None:
    jobs = [_job("teacher", tmp_path, fail=True), _job("student", tmp_path, after="teacher")]
    with pytest.raises(TrainingJobError, match=r"training teacher failed: ValueError: bad \(log: .*teacher.log\)"):
        run_training_jobs(jobs, workers=2, train=fake_train)
    assert not (tmp_path / "student.log").exists()  # never started


def test_a_job_waiting_for_an_unscheduled_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wait for runs that are not scheduled"):
        run_training_jobs([_job("student", tmp_path, after="teacher")], workers=2, train=fake_train)


def test_evaluations_wait_for_their_training_and_fill_the_worker_the_trainings_leave_idle(tmp_path: Path) -> None:
    jobs = [
        _job("teacher", tmp_path, priority=0, seconds=1.0),
        # long enough that the evaluation's worker process starts within it on a loaded machine
        _job("student", tmp_path, after="teacher", priority=1, seconds=3.0),
        # a run's evaluation shares its training's name and waits for it
        _job("teacher", tmp_path, after="teacher", priority=3, evaluation=True, log="teacher_eval", seconds=0.2),
        _job("student", tmp_path, after="student", priority=3, evaluation=True, log="student_eval", seconds=0.2),
    ]
    run_training_jobs(jobs, workers=2, train=fake_train)
    runs = {Path(j.log_path).stem: json.loads(Path(j.log_path).read_text()) for j in jobs}
    assert runs["teacher_eval"]["start"] >= runs["teacher"]["end"]
    assert runs["student_eval"]["start"] >= runs["student"]["end"]
    # the teacher's evaluation ran on the second worker while the student trained
    assert runs["teacher_eval"]["end"] < runs["student"]["end"]


@pytest.mark.parametrize("evaluation, verb", [(False, "training"), (True, "evaluating")])
def test_a_failing_bundle_run_is_named_with_its_job_and_log(tmp_path: Path, evaluation: bool, verb: str) -> None:
    job = _job("teacher", tmp_path, evaluation=evaluation)  # tmp_path has no configs/: the bundle run fails
    with pytest.raises(TrainingJobError, match=rf"^{verb} teacher failed: .* \(log: .*teacher\.log\)$"):
        _train(job, threads=1)
