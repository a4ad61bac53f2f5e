"""Retention (SPEC 14): prune, delete and dlq purge, in the library with an injected clock
on both stores, and through the CLI with real log files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from queuectl.core import Queue
from queuectl.errors import InvalidState
from queuectl.models import JobState, Need, NeedOn
from queuectl.store import Store

from .conftest import FakeClock, Run
from .test_needs import end, job

DAY_MS = 86_400_000


def ended(store: Store, clock: FakeClock, job_id: str, state: JobState, *needs: str | Need) -> None:
    store.insert_jobs([job(job_id, clock, *needs)], clock())
    if state is JobState.CANCELED:
        Queue(store, clock=clock).cancel(job_id)
    else:
        end(store, clock, job_id, state)


def test_prune_deletes_by_state_and_age_and_keeps_dead_jobs_by_default(
    store: Store, clock: FakeClock
) -> None:
    queue = Queue(store, clock=clock)
    ended(store, clock, "old-done", JobState.COMPLETED)
    ended(store, clock, "old-canceled", JobState.CANCELED)
    ended(store, clock, "old-dead", JobState.DEAD)
    clock.advance(6 * DAY_MS)
    ended(store, clock, "new-done", JobState.COMPLETED)
    clock.advance(2 * DAY_MS)  # the first three ended 8 days ago, new-done 2 days ago

    assert queue.prune(dry_run=True) == {
        JobState.COMPLETED: ["old-done"],
        JobState.CANCELED: ["old-canceled"],
    }  # keep_dead_days 0: the DLQ is kept
    assert store.get_job("old-done") is not None  # a dry run deletes nothing
    assert queue.prune(batch=1) == {
        JobState.COMPLETED: ["old-done"],
        JobState.CANCELED: ["old-canceled"],
    }
    assert sorted(store.get_jobs(["old-done", "old-canceled", "old-dead", "new-done"])) == [
        "new-done",
        "old-dead",
    ]
    pruned = queue.prune(states=[JobState.DEAD, JobState.COMPLETED], older_than_ms=DAY_MS)
    assert pruned == {JobState.DEAD: ["old-dead"], JobState.COMPLETED: ["new-done"]}


def test_prune_keeps_a_parent_until_what_needs_it_has_settled(
    store: Store, clock: FakeClock
) -> None:
    queue = Queue(store, clock=clock)
    ended(store, clock, "parent", JobState.COMPLETED)
    store.insert_jobs([job("other", clock)], clock())
    store.insert_jobs([job("child", clock, "parent", "other")], clock())  # waits on other
    clock.advance(8 * DAY_MS)
    assert queue.prune() == {JobState.COMPLETED: [], JobState.CANCELED: []}
    with pytest.raises(InvalidState, match="parent is needed by a job that may still run"):
        queue.delete(["parent"])
    queue.cancel("other")  # child is canceled with it: settled
    assert queue.prune(older_than_ms=0)[JobState.COMPLETED] == ["parent"]
    assert store.waiting_on("child") == [(Need("other", NeedOn.SUCCESS), JobState.CANCELED)]


def test_delete_refuses_jobs_that_have_not_ended_and_deletes_nothing(
    store: Store, clock: FakeClock
) -> None:
    queue = Queue(store, clock=clock)
    ended(store, clock, "done", JobState.COMPLETED)
    store.insert_jobs([job("waiting", clock)], clock())
    with pytest.raises(InvalidState, match="nothing deleted: waiting is pending"):
        queue.delete(["done", "waiting"])
    assert store.get_job("done") is not None
    assert queue.delete(["done", "done"]) == ["done"]


def test_dlq_purge_takes_ids_an_age_and_a_dry_run(store: Store, clock: FakeClock) -> None:
    queue = Queue(store, clock=clock)
    ended(store, clock, "d1", JobState.DEAD)
    clock.advance(DAY_MS)
    ended(store, clock, "d2", JobState.DEAD)
    ended(store, clock, "ok", JobState.COMPLETED)
    with pytest.raises(InvalidState, match="ok is completed, not dead"):
        queue.dlq_purge(["ok"])
    assert queue.dlq_purge(older_than_ms=DAY_MS // 2, dry_run=True) == ["d1"]
    assert queue.dlq_purge(["d2"]) == ["d2"]
    assert queue.dlq_purge() == ["d1"]


def test_prune_through_the_cli_deletes_the_jobs_and_their_log_files(
    run: Run, run_json: Callable[..., Any], home: Path
) -> None:
    for spec in (
        '{"id": "a", "command": "echo a"}',
        '{"id": "b", "command": "exit 3", "max_retries": 0}',
    ):
        assert run("enqueue", spec).returncode == 0
    assert run("worker", "run", "--drain").returncode == 0
    logs = home / "logs"
    assert (logs / "job-a.log").exists() and (logs / "job-b.log").exists()

    default = run("prune", "--dry-run")  # both ended just now: kept 7 days, and forever
    assert (default.stdout, default.stderr) == (
        "",
        "would prune 0 job(s) (completed 0, canceled 0)\n",
    )
    dry = run("prune", "--older-than", "0s", "--dry-run")  # an age for every state, dead too
    assert (dry.stdout, dry.stderr) == (
        "a\nb\n",
        "would prune 2 job(s) (completed 1, canceled 0, dead 1)\n",
    )
    result = run("prune", "--older-than", "0s", "--state", "completed")
    assert (result.stdout, result.stderr) == ("a\n", "pruned 1 job(s) (completed 1)\n")
    assert not (logs / "job-a.log").exists()
    refused = run("delete", "b", "nope")
    assert (refused.returncode, refused.stderr) == (
        1,
        "Error: job 'nope' not found: check the id with `queuectl list`\n",
    )
    purged = run("dlq", "purge", "--dry-run")
    assert (purged.stdout, purged.stderr) == ("b\n", "would purge 1 job(s)\n")
    assert run("delete", "b").stdout == "b\n"
    assert not (logs / "job-b.log").exists()
    assert json.loads(run("list").stdout) == []


def test_sweep_deletes_old_logs_of_jobs_gone_from_the_store_and_nothing_else(
    store: Store, clock: FakeClock, home: Path
) -> None:
    """A job pruned by a process on another host leaves its log on the host that ran it:
    the sweep finds such logs by their job's absence, once untouched for an hour."""
    queue = Queue(store, clock=clock)
    ended(store, clock, "kept", JobState.COMPLETED)
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    now = clock().timestamp()
    for name in ("job-kept.log", "job-gone.log", "job-gone-recently.log", "workers.log"):
        (logs / name).write_text("output\n")
        touched = now - (60 if name == "job-gone-recently.log" else 3700)
        os.utime(logs / name, (touched, touched))
    (logs / "job-a-directory.log").mkdir()

    assert queue.sweep_logs() == ["gone"]
    assert sorted(p.name for p in logs.iterdir()) == [
        "job-a-directory.log",
        "job-gone-recently.log",
        "job-kept.log",
        "workers.log",
    ]


def test_a_delete_batch_finds_its_jobs_by_id_not_by_walking_every_ended_job(
    sqlite_store: Store,
) -> None:
    """SQLite without statistics chose the index of ended jobs for `state IN (...)` and
    walked all of them for each batch of ids: pruning a million jobs was quadratic."""
    plan = sqlite_store.d.conn.execute(  # type: ignore[attr-defined]
        "EXPLAIN QUERY PLAN " + sqlite_store.sql.delete_jobs,  # type: ignore[attr-defined]
        {"ids": '["a", "b"]'},
    ).fetchall()
    steps = [row[3] for row in plan]
    assert "SEARCH jobs USING PRIMARY KEY (id=?)" in steps, steps
    assert not any("jobs_finished" in step for step in steps), steps
