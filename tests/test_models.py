"""Job ids, spec hashes and the retry policy."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta

import pytest

from queuectl.config import Config
from queuectl.models import ID_PATTERN, JobSpec, JobState, new_job_id
from queuectl.runner import Attempt, backoff_ms, failure_transition

from .conftest import FakeClock


def test_generated_ids_are_unique_valid_and_sorted_by_creation() -> None:
    ids = [new_job_id() for _ in range(5000)]
    assert len(set(ids)) == 5000
    assert ids == sorted(ids)
    assert all(re.match(ID_PATTERN, i) for i in ids)


def test_ids_from_separate_processes_sort_by_creation_time() -> None:
    code = "from queuectl.models import new_job_id; print(new_job_id())"
    ids = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(3)
    ]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


def test_spec_hash_ignores_defaults_spelled_out_and_sees_changes() -> None:
    plain = JobSpec(command="echo")
    assert plain.spec_hash == JobSpec(command="echo", priority=0, queue="default").spec_hash
    assert plain.spec_hash != JobSpec(command="echo", priority=1).spec_hash
    assert plain.spec_hash != JobSpec(command=("echo",)).spec_hash


@pytest.mark.parametrize(
    ("attempts_before", "max_retries", "state", "wait_ms"),
    [
        (0, 0, JobState.DEAD, 0),
        (0, 3, JobState.FAILED, 2000),
        (1, 3, JobState.FAILED, 4000),
        (2, 3, JobState.FAILED, 8000),
        (3, 3, JobState.DEAD, 0),
    ],
)
def test_failure_transition_retries_with_exponential_backoff_then_dead(
    clock: FakeClock, attempts_before: int, max_retries: int, state: JobState, wait_ms: int
) -> None:
    from tests.test_runner import stored_job

    job = stored_job(clock, attempts=attempts_before, max_retries=max_retries)
    config = Config.resolve({}, environ={})
    outcome = failure_transition(job, clock(), config, exit_code=3, error="exit code 3", tail=None)
    assert (outcome.state, outcome.attempts) == (state, attempts_before + 1)
    assert outcome.available_at == clock() + timedelta(milliseconds=wait_ms)


def test_backoff_is_capped_and_never_overflows() -> None:
    config = Config.resolve({"backoff_max_ms": "10000"}, environ={})
    assert backoff_ms(config, 3) == 8000
    assert backoff_ms(config, 4) == 10000
    assert backoff_ms(config, 100_000) == 10000


@pytest.mark.parametrize(
    ("code", "shell", "exit_code", "error"),
    [
        (0, True, 0, None),
        (3, True, 3, "exit code 3"),
        (127, True, 127, "command not found (exit 127)"),
        (127, False, 127, "exit code 127"),
        (-9, True, None, "killed by signal 9"),
    ],
)
def test_attempt_errors_are_one_line_in_the_spec_words(
    code: int, shell: bool, exit_code: int | None, error: str | None
) -> None:
    assert Attempt.from_returncode(code, shell=shell) == Attempt(exit_code, error)
