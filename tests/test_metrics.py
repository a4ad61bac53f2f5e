"""Metrics (SPEC 15), read with Prometheus's own parser, and the pages the dashboard reads:
counters kept in the store survive pruning; every query walks an index."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from queuectl.core import Queue
from queuectl.errors import UsageProblem
from queuectl.metrics import DURATION_BUCKETS_S, exposition
from queuectl.models import JobSpec, JobState, ScheduleSpec
from queuectl.store import Store, Transition, open_store

from .conftest import FakeClock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(queue: Queue) -> Samples:
    """Every sample of the exposition, by name and labels, as Prometheus parses it."""
    text = exposition(queue).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def run_one(store: Store, clock: FakeClock, outcome: JobState, ms: int) -> str:
    """Claim the next job, let `ms` pass, and end its attempt as `outcome`."""
    token = f"t-{clock().timestamp()}"
    job = store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), token)
    assert job is not None
    clock.advance(ms)
    transition = Transition(outcome, job.attempts + 1, clock(), 1, "exit code 1", None)
    store.finish(job.id, token, transition, clock())
    return job.id


def test_metrics_count_runs_in_the_store_and_survive_pruning(
    store: Store, queue: Queue, clock: FakeClock
) -> None:
    queue.enqueue([JobSpec(command="true", id=f"a{i}") for i in range(3)])
    queue.enqueue([JobSpec(command="true", id="m0", queue="mail")])
    run_one(store, clock, JobState.COMPLETED, 40)  # a0: 0.04 s
    run_one(store, clock, JobState.FAILED, 3_000)  # a1: 3 s, back to failed
    clock.advance(60_000)
    samples = scrape(queue)

    assert value(samples, "queuectl_jobs", queue="default", state="completed") == 1
    assert value(samples, "queuectl_jobs", queue="default", state="failed") == 1
    assert value(samples, "queuectl_jobs", queue="default", state="pending") == 1
    assert value(samples, "queuectl_jobs", queue="mail", state="pending") == 1
    assert value(samples, "queuectl_jobs", queue="mail", state="dead") == 0
    assert value(samples, "queuectl_job_runs_total", queue="default", outcome="completed") == 1
    assert value(samples, "queuectl_job_runs_total", queue="default", outcome="failed") == 1
    assert value(samples, "queuectl_job_runs_total", queue="mail", outcome="dead") == 0
    hist = "queuectl_job_run_duration_seconds"
    assert value(samples, f"{hist}_bucket", queue="default", le="0.05") == 1
    assert value(samples, f"{hist}_bucket", queue="default", le="2.5") == 1
    assert value(samples, f"{hist}_bucket", queue="default", le="5.0") == 2
    assert value(samples, f"{hist}_bucket", queue="default", le="+Inf") == 2
    assert value(samples, f"{hist}_count", queue="default") == 2
    assert value(samples, f"{hist}_sum", queue="default") == pytest.approx(3.04)
    assert len([k for k in samples if k[0] == f"{hist}_bucket"]) == 2 * (
        len(DURATION_BUCKETS_S) + 1
    )
    # Due since the enqueue, 63.04 s ago (the failed one waits for its retry: not pending).
    age = value(samples, "queuectl_queue_oldest_pending_age_seconds", queue="default")
    assert age == pytest.approx(63.04)
    assert value(samples, "queuectl_workers") == 0

    # Retention deletes the ended jobs: the counters stay.
    clock.advance(1)
    assert queue.prune(older_than_ms=0)[JobState.COMPLETED] == ["a0"]
    after = scrape(queue)
    for outcome in ("completed", "failed"):
        assert value(after, "queuectl_job_runs_total", queue="default", outcome=outcome) == 1
    assert value(after, f"{hist}_count", queue="default") == 2
    assert value(after, "queuectl_jobs", queue="default", state="completed") == 0


def test_schedule_metrics_say_when_a_schedule_is_overdue(queue: Queue, clock: FakeClock) -> None:
    template = JobSpec(command="true", id="nightly")
    queue.add_schedules(
        [
            ScheduleSpec(
                id="nightly",
                template=template,
                every_ms=3_600_000,
                expect_success_within_ms=7_200_000,
            )
        ]
    )
    created = clock()
    samples = scrape(queue)
    next_run = value(samples, "queuectl_schedule_next_run_timestamp_seconds", schedule="nightly")
    assert (
        next_run
        == (created.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)).timestamp()
    )
    assert value(samples, "queuectl_schedule_overdue", schedule="nightly") == 0
    assert value(samples, "queuectl_schedule_missed_total", schedule="nightly") == 0
    assert (
        "queuectl_schedule_last_success_timestamp_seconds",
        frozenset({("schedule", "nightly")}),
    ) not in samples

    clock.advance(3 * 3_600_000)  # no scheduler ticked: no success for 3 h
    samples = scrape(queue)
    assert value(samples, "queuectl_schedule_overdue", schedule="nightly") == 1
    assert (
        value(samples, "queuectl_schedule_next_run_timestamp_seconds", schedule="nightly")
        == next_run
    )


def test_throughput_counts_attempts_per_minute_and_folds_old_minutes(
    store: Store, queue: Queue, clock: FakeClock
) -> None:
    queue.enqueue([JobSpec(command="true", id=f"j{i}") for i in range(3)])
    run_one(store, clock, JobState.COMPLETED, 10)
    run_one(store, clock, JobState.DEAD, 10)
    clock.advance(120_000)
    run_one(store, clock, JobState.COMPLETED, 10)
    minutes = queue.throughput()
    assert len(minutes) == 60
    assert minutes[-1] | {"minute": None} == {
        "minute": None,
        "completed": 1,
        "failed": 0,
        "dead": 0,
    }
    assert minutes[-3] | {"minute": None} == {
        "minute": None,
        "completed": 1,
        "failed": 0,
        "dead": 1,
    }

    clock.advance(3 * 3_600_000)
    queue.prune()  # the background prune folds minutes older than two hours
    assert sum(m["completed"] + m["dead"] for m in queue.throughput()) == 0
    assert sum(t.n for t in queue.run_totals()) == 3  # folded, not lost


def test_pages_walk_each_state_with_a_cursor(store: Store, queue: Queue, clock: FakeClock) -> None:
    for i in range(7):
        queue.enqueue([JobSpec(command="true", id=f"p{i}", queue="q" if i % 2 else "default")])
        clock.advance(1)
    for _ in range(4):
        run_one(store, clock, JobState.COMPLETED, 5)

    def walk(state: JobState | None, **filters: str) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = queue.page(state=state, cursor=cursor, limit=2, **filters)
            seen.extend(job.id for job in page.jobs)
            if page.next is None:
                return seen
            cursor = page.next

    assert walk(None) == [f"p{i}" for i in reversed(range(7))]  # newest first
    assert walk(JobState.COMPLETED) == ["p3", "p2", "p1", "p0"]  # last ended first
    assert walk(JobState.PENDING) == ["p4", "p5", "p6"]  # next due first
    assert walk(JobState.PENDING, queue="q") == ["p5"]
    with pytest.raises(UsageProblem, match="cursor 'nope' is not one a page gave"):
        queue.page(cursor="nope")


OBSERVABILITY_STATEMENTS = (
    "count_by_queue",
    "run_totals",
    "runs_per_minute",
    "oldest_due",
    "page_all",
    "page_ended",
    "page_waiting",
    "page_all_after",
    "page_ended_after",
    "page_waiting_after",
)


def test_no_observability_query_scans_or_sorts_the_jobs(db_path: Path) -> None:
    store = open_store(f"sqlite:///{db_path}")
    statements = store.sql  # type: ignore[attr-defined]
    store.close()
    params = {
        "since": 0,
        "queue": "default",
        "now": 0,
        "state": "dead",
        "labels": "{}",
        "after_key": 1,
        "after_id": "x",
        "limit": 50,
    }
    with sqlite3.connect(db_path) as conn:
        for name in OBSERVABILITY_STATEMENTS:
            sql = getattr(statements, name)
            used = {k: v for k, v in params.items() if f":{k}" in sql}
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", used)]
            reads_jobs = [line for line in plan if " jobs " in f"{line} "]
            assert all("INDEX" in line for line in reads_jobs), (name, plan)
            if reads_jobs:
                assert not any("TEMP B-TREE" in line for line in plan), (name, plan)
            if name.endswith("_after"):  # the cursor bounds the index range
                assert any("<" in line or ">" in line for line in reads_jobs), (name, plan)
