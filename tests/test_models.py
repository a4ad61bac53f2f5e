"""Job ids, spec hashes and the retry policy."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

import pytest

from queuectl.config import Config
from queuectl.models import (
    ID_PATTERN,
    Jitter,
    Job,
    JobSpec,
    JobState,
    Origin,
    RetryPolicy,
    Source,
    new_job_id,
    utcnow,
)
from queuectl.runner import Attempt, backoff_ms, failure_transition, past_deadline
from queuectl.store import Transition

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


def failed(clock: FakeClock, exit_code: int | None, **fields: object) -> Transition:
    """The outcome of a failed attempt of a job with `fields` (retry rules, deadline)."""
    from tests.test_runner import stored_job

    job = stored_job(clock, **fields)
    config = Config.resolve({}, environ={})
    error = f"exit code {exit_code}"
    return failure_transition(job, clock(), config, exit_code=exit_code, error=error, tail=None)


@pytest.mark.parametrize(
    ("policy", "exit_code", "state", "why"),
    [
        (
            RetryPolicy(never_on_exit_codes=(2, 64)),
            2,
            JobState.DEAD,
            "never_on_exit_codes is [2, 64]",
        ),
        (RetryPolicy(never_on_exit_codes=(2, 64)), 1, JobState.FAILED, None),
        (RetryPolicy(on_exit_codes=(75,)), 75, JobState.FAILED, None),
        (RetryPolicy(on_exit_codes=(75,)), 1, JobState.DEAD, "on_exit_codes is [75]"),
        (RetryPolicy(on_exit_codes=(75,)), None, JobState.FAILED, None),
    ],
)
def test_retry_rules_send_exit_codes_to_dead_at_once(
    clock: FakeClock, policy: RetryPolicy, exit_code: int | None, state: JobState, why: str | None
) -> None:
    outcome = failed(clock, exit_code, retry=policy, max_retries=5)
    assert (outcome.state, outcome.attempts) == (state, 1)
    if why is not None:
        assert outcome.last_error == f"exit code {exit_code}; not retried: retry.{why}"


def fixed(fraction: float) -> Callable[[], float]:
    return lambda: fraction


def test_a_job_backoff_overrides_the_config_and_jitter_spreads_it() -> None:
    config = Config.resolve({}, environ={})  # base 2, cap 1 h
    own = RetryPolicy(backoff_base=3, backoff_max_ms=20_000)
    assert [backoff_ms(config, n, own) for n in (1, 2, 3)] == [3000, 9000, 20000]
    full = RetryPolicy(jitter=Jitter.FULL)
    equal = RetryPolicy(jitter=Jitter.EQUAL)
    assert [backoff_ms(config, 3, full, fixed(r)) for r in (0.0, 0.5, 0.999)] == [
        0,
        4000,
        7992,
    ]
    assert [backoff_ms(config, 3, equal, fixed(r)) for r in (0.0, 0.5)] == [4000, 6000]


def test_a_failure_whose_retry_would_start_past_the_deadline_goes_dead(clock: FakeClock) -> None:
    first = clock() - timedelta(seconds=3)  # the deadline falls 3 s from now
    fields = {"deadline_ms": 6000, "first_started_at": first, "max_retries": 10}
    assert failed(clock, 1, **fields).state is JobState.FAILED  # its retry starts in 2 s
    late = failed(clock, 1, attempts=1, **fields)  # this one would start in 4 s
    assert (late.state, late.last_error) == (JobState.DEAD, "exit code 1; deadline of 6s exceeded")


def test_past_deadline_names_the_deadline(clock: FakeClock) -> None:
    from tests.test_runner import stored_job

    job = stored_job(clock, deadline_ms=21_600_000, first_started_at=clock())
    assert past_deadline(job, clock() + timedelta(hours=6)) is None
    assert past_deadline(job, clock() + timedelta(hours=6, seconds=1)) == "deadline of 6h exceeded"
    assert past_deadline(stored_job(clock), clock() + timedelta(days=999)) is None


def test_a_job_from_its_fields_equals_one_made_by_its_constructor() -> None:
    now = utcnow()
    job = Job(
        id="j1", command="true", priority=0, run_at=None, max_retries=3, timeout_ms=None,
        env={}, cwd=None, queue="default", labels={}, state=JobState.PENDING, attempts=0,
        created_at=now, updated_at=now, available_at=now, started_at=None, finished_at=None,
        exit_code=None, last_error=None, worker_id=None, source=Source(Origin.INLINE),
        spec_hash="h",
    )  # fmt: skip
    fields = {name: getattr(job, name) for name in Job.__dataclass_fields__}
    assert Job.from_fields(fields) == job
    with pytest.raises(TypeError, match="priority"):
        Job.from_fields({k: v for k, v in fields.items() if k != "priority"})
