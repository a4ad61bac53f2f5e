"""The runner driven one step at a time, on a real store and real processes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from queuectl.core import Queue
from queuectl.models import INLINE, Job, JobSpec, JobState
from queuectl.runner import Runner, stderr_log
from queuectl.spawn import KEPT_MAX_CHARS
from queuectl.store import Store

from .conftest import FakeClock


def stored_job(clock: FakeClock, **fields: Any) -> Job:
    values: dict[str, Any] = dict(
        id="j",
        command="true",
        priority=0,
        run_at=None,
        max_retries=3,
        timeout_ms=None,
        env={},
        cwd=None,
        queue="default",
        labels={},
        state=JobState.PROCESSING,
        attempts=0,
        created_at=clock(),
        updated_at=clock(),
        available_at=clock(),
        started_at=clock(),
        finished_at=None,
        exit_code=None,
        last_error=None,
        worker_id="w",
        source=INLINE,
        spec_hash="h",
    )
    values.update(fields)
    return Job(**values)


def make_runner(store: Store, clock: FakeClock) -> Runner:
    return Runner(store, clock=clock, log=lambda line: None)


def claim_elsewhere(store: Store, clock: FakeClock) -> None:
    """The next job claimed by a worker on another host, with a 30 s lease and token "tok"."""
    store.claim_next("elsewhere:4242:beef", (), clock(), clock() + timedelta(seconds=30), "tok")


def test_run_once_runs_one_job_with_its_env_and_cwd(
    store: Store, queue: Queue, clock: FakeClock, tmp_path: Path, home: Path
) -> None:
    out = tmp_path / "out"
    queue.enqueue(
        [
            JobSpec(
                command=f'echo "$GREETING $QUEUECTL_ATTEMPT $PWD" > {out}',
                id="env",
                env={"GREETING": "hi"},
                cwd=str(tmp_path),
            )
        ]
    )
    runner = make_runner(store, clock)
    assert runner.run_once()
    assert not runner.run_once()
    assert out.read_text() == f"hi 1 {tmp_path}\n"
    job = queue.get("env")
    assert (job.state, job.attempts, job.exit_code) == (JobState.COMPLETED, 0, 0)


def test_a_large_job_env_is_used_for_its_job_and_not_kept(
    store: Store, queue: Queue, clock: FakeClock, tmp_path: Path, home: Path
) -> None:
    # Small envs are encoded once and kept for the jobs that share them; a large one would
    # hold the worker's memory long after its job ended.
    out = tmp_path / "out"
    big = "y" * (KEPT_MAX_CHARS + 1)
    queue.enqueue(
        [
            JobSpec(command=f'echo "${{#BIG}}" > {out}', id="big", env={"BIG": big}),
            JobSpec(command="true", id="small", env={"SMALL": "1"}),
        ]
    )
    runner = make_runner(store, clock)
    assert runner.run_once() and runner.run_once()
    assert out.read_text() == f"{len(big)}\n"
    assert [dict(key) for key in runner._environs] == [{"SMALL": "1"}]


def test_missing_cwd_is_a_failed_attempt(
    store: Store, queue: Queue, clock: FakeClock, home: Path
) -> None:
    queue.enqueue([JobSpec(command="true", id="nowhere", cwd="/no/such/dir", max_retries=0)])
    assert make_runner(store, clock).run_once()
    job = queue.get("nowhere")
    assert (job.state, job.last_error) == (
        JobState.DEAD,
        "working directory not found: /no/such/dir",
    )


def test_argv_command_not_found(store: Store, queue: Queue, clock: FakeClock, home: Path) -> None:
    queue.enqueue([JobSpec(command=("no-such-binary-xyz", "arg"), id="argv", max_retries=0)])
    assert make_runner(store, clock).run_once()
    job = queue.get("argv")
    assert (job.exit_code, job.last_error) == (127, "command not found (exit 127)")


def test_output_tail_is_kept_in_the_store(
    store: Store, queue: Queue, clock: FakeClock, home: Path
) -> None:
    queue.enqueue([JobSpec(command="seq 1 5000", id="chatty")])
    assert make_runner(store, clock).run_once()
    tail = queue.get("chatty").output_tail
    assert 4000 <= len(tail.encode()) <= 4096
    assert "5000\n" in tail
    os.remove(home / "logs" / "job-chatty.log")
    output = queue.output("chatty")
    # it ran here, so the file is gone, not elsewhere (issue 15)
    assert (output.origin, output.text) == ("gone", tail)
    assert output.path == home / "logs" / "job-chatty.log"


def test_the_tail_of_a_job_another_host_ran_is_named_as_such(
    store: Store, queue: Queue, clock: FakeClock, home: Path, backend: str
) -> None:
    from queuectl.store import Transition

    queue.enqueue([JobSpec(command="true", id="far")])
    claim_elsewhere(store, clock)
    done = Transition(JobState.COMPLETED, 0, clock(), 0, None, "far away\n")
    assert store.finish("far", "tok", done, clock())
    output = queue.output("far")
    assert output.text == "far away\n"
    # SQLite: the logs live beside the one database file, so the file was deleted
    expected = ("gone", "elsewhere") if backend == "sqlite" else ("store", "elsewhere")
    assert (output.origin, output.host) == expected


def test_expired_lease_of_another_host_is_recovered_as_a_failed_attempt(
    store: Store, queue: Queue, clock: FakeClock, home: Path
) -> None:
    queue.enqueue([JobSpec(command="true", id="lost")])
    claim_elsewhere(store, clock)
    runner = make_runner(store, clock)
    clock.advance(29_000)
    assert runner.recover_lost_jobs() == 0, "the lease has not expired yet"
    clock.advance(2_000)
    runner._last_recover = float("-inf")
    assert runner.recover_lost_jobs() == 1
    job = queue.get("lost")
    assert (job.state, job.attempts, job.last_error) == (
        JobState.FAILED,
        1,
        "worker lost (lease expired)",
    )
    assert job.available_at == clock() + timedelta(seconds=2)


def test_a_lease_expired_less_than_a_millisecond_ago_is_recovered(
    store: Store, queue: Queue, clock: FakeClock, home: Path
) -> None:
    # SQLite keeps whole milliseconds: the store's guard must agree with the runner's
    # own test of the lease, or the job stays claimed until the next recovery pass.
    queue.enqueue([JobSpec(command="true", id="lost")])
    claim_elsewhere(store, clock)
    runner = make_runner(store, clock)
    clock.now += timedelta(seconds=30, microseconds=400)
    assert runner.recover_lost_jobs() == 1
    assert queue.get("lost").state is JobState.FAILED


def test_dead_local_worker_is_recovered_without_waiting_for_its_lease(
    store: Store, queue: Queue, clock: FakeClock, home: Path
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    runner = make_runner(store, clock)
    queue.enqueue([JobSpec(command="true", id="orphan", max_retries=0)])
    store.claim_next(
        f"{runner.host}:{gone.pid}:0000", (), clock(), clock() + timedelta(seconds=30), "tok"
    )
    assert runner.recover_lost_jobs() == 1
    job = queue.get("orphan")
    assert (job.state, job.last_error) == (JobState.DEAD, "worker lost (process died)")


def test_unserved_names_jobs_whose_queue_no_live_worker_serves(
    queue: Queue, store: Store, clock: FakeClock
) -> None:
    from queuectl.models import WorkerInfo, new_worker_id

    (job,) = queue.enqueue([JobSpec(command="true", queue="ci")])
    waiting = [queue.get(job.id)]
    assert [j.id for j in queue.unserved(waiting)] == [job.id]  # no worker at all

    def register(*queues: str) -> None:
        now = clock()
        store.register_worker(
            WorkerInfo(
                new_worker_id(),
                os.getpid(),
                "here",
                now,
                now,
                now + timedelta(minutes=1),
                None,
                queues,
            )
        )

    register("other")
    assert [j.id for j in queue.unserved(waiting)] == [job.id]
    register("ci")
    assert queue.unserved(waiting) == []


class _RecordingRaw(io.RawIOBase):
    """A raw stream that keeps each write() it gets, as the kernel would see them."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.writes.append(bytes(data))
        return len(data)


def test_a_log_line_is_one_write_even_on_an_unbuffered_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PYTHONUNBUFFERED gives stderr this shape; print() would write text and newline
    # apart, and the lines of workers sharing a supervisor's stderr would run together.
    raw = _RecordingRaw()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, write_through=True))
    stderr_log("worker w1 started (queues: all)")
    (write,) = raw.writes
    assert write.endswith(b" worker w1 started (queues: all)\n")
