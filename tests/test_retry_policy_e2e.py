"""End to end: per-job retry rules and deadlines (SPEC 13), run by real workers on both
stores. Each job appends its id to a file on every run, so the runs are counted apart
from what the store says."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Run

pytestmark = [pytest.mark.e2e, pytest.mark.both_backends, pytest.mark.usefixtures("fast_polling")]

FAST = {"backoff_max": "10ms"}  # retries at once: these tests are about which, not when


@pytest.fixture
def ran(tmp_path: Path) -> Path:
    return tmp_path / "ran"


def counting(ran: Path, command: str) -> str:
    """`command`, after noting the run in `ran`."""
    return f'echo "$QUEUECTL_JOB_ID" >> {shlex.quote(str(ran))}; {command}'


def runs(ran: Path) -> Counter[str]:
    return Counter(ran.read_text().split()) if ran.exists() else Counter()


@pytest.fixture
def drain(run: Run) -> Callable[[list[dict[str, Any]]], str]:
    """Enqueue jobs in one batch, then `worker run --drain`; returns what the worker logged."""

    def enqueue_and_drain(jobs: list[dict[str, Any]]) -> str:
        enqueued = run("enqueue", "-", input=json.dumps(jobs))
        assert enqueued.returncode == 0, enqueued.stderr
        drained = run("worker", "run", "--drain")
        assert drained.returncode == 0, drained.stderr
        return drained.stderr

    return enqueue_and_drain


UNTIL_ATTEMPT_3 = '[ "$QUEUECTL_ATTEMPT" -ge 3 ] || exit {code}'

# id, command, retry rules, max_retries -> state, attempts, last_error
RETRY_RULES: list[tuple[str, str, dict[str, list[int]], int, tuple[str, int, str | None]]] = [
    (
        "never-2",
        "exit 2",
        {"never_on_exit_codes": [2]},
        3,
        ("dead", 1, "exit code 2; not retried: retry.never_on_exit_codes is [2]"),
    ),
    (
        "never-2-exit-1",
        UNTIL_ATTEMPT_3.format(code=1),
        {"never_on_exit_codes": [2]},
        3,
        ("completed", 2, None),
    ),
    (
        "on-75",
        UNTIL_ATTEMPT_3.format(code=75),
        {"on_exit_codes": [75]},
        3,
        ("completed", 2, None),
    ),
    (
        "on-75-exit-1",
        "exit 1",
        {"on_exit_codes": [75]},
        3,
        ("dead", 1, "exit code 1; not retried: retry.on_exit_codes is [75]"),
    ),
    (
        "on-75-out-of-retries",
        "exit 75",
        {"on_exit_codes": [75]},
        1,
        ("dead", 2, "exit code 75"),
    ),
    (
        "on-none",  # an empty on_exit_codes retries every code
        "exit 1",
        {"on_exit_codes": []},
        1,
        ("dead", 2, "exit code 1"),
    ),
]


def test_retry_rules_pick_which_exit_codes_are_retried(
    ran: Path, run_json: Callable[..., Any], drain: Callable[[list[dict[str, Any]]], str]
) -> None:
    drain(
        [
            {
                "id": job_id,
                "command": counting(ran, command),
                "retry": {**rules, **FAST},
                "max_retries": max_retries,
            }
            for job_id, command, rules, max_retries, _ in RETRY_RULES
        ]
    )

    ended = {job["id"]: job for job in run_json("list")}
    for job_id, *_, expected in RETRY_RULES:
        job = ended[job_id]
        assert (job["state"], job["attempts"], job["last_error"]) == expected, job
    # Runs: each failed attempt, and the successful one.
    assert runs(ran) == {
        job_id: attempts + (state == "completed")
        for job_id, *_, (state, attempts, _) in RETRY_RULES
    }


def test_a_deadline_ends_retries_before_max_retries(
    ran: Path, run_json: Callable[..., Any], drain: Callable[[list[dict[str, Any]]], str]
) -> None:
    """Retries 1.5 s apart, then 2.25 s: the deadline of 2 s passes before max_retries."""
    drain(
        [
            {
                "id": "late",
                "command": counting(ran, "exit 1"),
                "deadline": "2s",
                "max_retries": 10,
                "retry": {"backoff_base": 1.5},
            }
        ]
    )

    job = run_json("show", "late")
    assert (job["state"], job["last_error"]) == ("dead", "exit code 1; deadline of 2s exceeded")
    assert 1 <= job["attempts"] < 10 + 1
    assert runs(ran) == {"late": job["attempts"]}


def test_no_attempt_starts_past_the_deadline(
    ran: Path, run_json: Callable[..., Any], drain: Callable[[list[dict[str, Any]]], str]
) -> None:
    """The retry of `late` is due within its deadline, but the only worker is busy until
    after it: the retry is not started, and the job is dead without another run."""
    log = drain(
        [
            {
                "id": "late",
                "priority": 1,  # runs first, then `busy` holds the worker
                "command": counting(ran, "exit 1"),
                "deadline": "2s",
                "max_retries": 10,
                "retry": {"backoff_max": "1s"},
            },
            {"id": "busy", "command": counting(ran, "sleep 2.5")},
        ]
    )

    job = run_json("show", "late")
    assert (job["state"], job["attempts"], job["last_error"]) == (
        "dead",
        1,
        "deadline of 2s exceeded",
    )
    assert runs(ran) == {"late": 1, "busy": 1}
    assert "job late dead (deadline of 2s exceeded) before its attempt 2" in log


def test_dlq_retry_runs_a_job_that_went_dead_past_its_deadline(
    tmp_path: Path,
    ran: Path,
    run: Run,
    run_json: Callable[..., Any],
    drain: Callable[[list[dict[str, Any]]], str],
) -> None:
    fixed = tmp_path / "fixed"
    fails_slowly = f"[ -e {shlex.quote(str(fixed))} ] && exit 0; sleep 1.2; exit 1"
    drain(  # its first attempt outlasts its deadline
        [{"id": "slow", "command": counting(ran, fails_slowly), "deadline": "1s", "max_retries": 3}]
    )
    job = run_json("show", "slow")
    assert (job["state"], job["last_error"]) == ("dead", "exit code 1; deadline of 1s exceeded")

    fixed.touch()
    assert run("dlq", "retry", "slow").returncode == 0
    drain([])

    job = run_json("show", "slow")
    assert (job["state"], job["last_error"]) == ("completed", None)
    assert runs(ran) == {"slow": 2}
