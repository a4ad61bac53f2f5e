"""The SQLite store: migrations, claiming, fencing and concurrency on a real file."""

from __future__ import annotations

import re
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from queuectl.core import Queue
from queuectl.errors import InvalidState, JobConflict, MigrationFailed
from queuectl.models import INLINE, JobSpec, JobState, NewJob
from queuectl.store import Store, Transition, open_store
from queuectl.store.sql import migrations

from .conftest import FakeClock

SNAPSHOT = Path(__file__).with_name("snapshots") / "sqlite_schema.sql"


def schema_of(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"
        ).fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    return f"-- user_version {version}\n" + ";\n".join(r[0] for r in rows) + ";\n"


def test_migrating_twice_changes_nothing_and_matches_the_snapshot(db_path: Path) -> None:
    open_store(f"sqlite:///{db_path}").close()
    first = schema_of(db_path)
    open_store(f"sqlite:///{db_path}").close()
    assert schema_of(db_path) == first
    assert first == SNAPSHOT.read_text(), "schema changed: add a migration and update the snapshot"


def test_no_check_index_or_trigger_condition_lists_three_or_more_values(db_path: Path) -> None:
    """SQLite evaluates `x IN (a, b, c)` by building a temporary b-tree of the list each
    time a statement runs, and every write evaluates the CHECKs on the columns it writes,
    the WHERE of each partial index and the WHEN of each trigger it may touch: such lists
    cost the hot path (migrations 0013 and 0014)."""
    open_store(f"sqlite:///{db_path}").close()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    long_lists = {
        name: found
        for name, sql in rows
        if (found := [m for m in re.findall(r"\bIN\s*\(([^()]*)\)", sql) if m.count(",") >= 2])
    }
    assert long_lists == {}


def test_failed_migration_leaves_the_version_unchanged(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE config (unrelated TEXT)")  # 0001 will fail creating it
    with pytest.raises(MigrationFailed, match="the database is unchanged"):
        open_store(f"sqlite:///{db_path}")
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"config"}, "the failed migration's earlier statements must roll back"


def test_wal_mode(sqlite_store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def new_job(job_id: str, clock: FakeClock, **fields: object) -> NewJob:
    spec = JobSpec(command="true", id=job_id, **fields)  # type: ignore[arg-type]
    return NewJob(job_id, spec, 3, clock(), INLINE)


def test_insert_is_all_or_nothing_on_conflict(store: Store, clock: FakeClock) -> None:
    assert store.insert_jobs([new_job("a", clock)], clock()) == [True]
    other = NewJob("a", JobSpec(command="false", id="a"), 3, clock(), INLINE)
    with pytest.raises(JobConflict):
        store.insert_jobs([new_job("b", clock), other], clock())
    assert store.get_job("b") is None
    assert store.insert_jobs([new_job("a", clock), new_job("b", clock)], clock()) == [False, True]


def test_claim_order_is_priority_then_creation_then_id(store: Store, clock: FakeClock) -> None:
    store.insert_jobs([new_job("low", clock, priority=-1)], clock())
    clock.advance(1)
    store.insert_jobs([new_job("b-first", clock), new_job("a-first", clock)], clock())
    clock.advance(1)
    store.insert_jobs([new_job("high", clock, priority=5), new_job("later", clock)], clock())
    order = []
    while job := store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "t"):
        order.append(job.id)
    assert order == ["high", "a-first", "b-first", "later", "low"]


def test_claim_skips_jobs_not_yet_due_and_other_queues(store: Store, clock: FakeClock) -> None:
    future = NewJob(
        "future", JobSpec(command="true", id="future"), 3, clock() + timedelta(seconds=5), INLINE
    )
    store.insert_jobs([future, new_job("other", clock, queue="other")], clock())
    lease = clock() + timedelta(seconds=30)
    assert store.claim_next("w", ("default",), clock(), lease, "t") is None
    claimed = store.claim_next("w", ("other",), clock(), lease, "t")
    assert claimed is not None and claimed.id == "other"
    clock.advance(5000)
    claimed = store.claim_next("w", (), clock(), lease, "t")
    assert claimed is not None and claimed.id == "future"


def test_finish_is_fenced_by_the_claim_token(store: Store, clock: FakeClock) -> None:
    store.insert_jobs([new_job("j", clock)], clock())
    job = store.claim_next("w1", (), clock(), clock() + timedelta(seconds=30), "token-1")
    assert job is not None and job.state is JobState.PROCESSING
    done = Transition(JobState.COMPLETED, 0, clock(), 0, None, "out")
    assert not store.finish("j", "stale-token", done, clock())
    assert store.get_job("j").state is JobState.PROCESSING  # type: ignore[union-attr]
    assert store.finish("j", "token-1", done, clock())
    assert not store.finish("j", "token-1", done, clock()), "a result is recorded once"
    finished = store.get_job("j")
    assert finished is not None
    assert (finished.state, finished.output_tail, finished.lease_token) == (
        JobState.COMPLETED,
        "out",
        None,
    )


def test_eight_threads_drain_300_jobs_each_claimed_once(
    store: Store, db_url: str, clock: FakeClock
) -> None:
    url = db_url
    setup = open_store(url)
    Queue(setup, clock=clock).enqueue([JobSpec(command="true") for _ in range(300)])
    setup.close()
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def drain(worker: int) -> None:
        store = open_store(url, durable=False)
        try:
            while job := store.claim_next(
                f"w{worker}", (), clock(), clock() + timedelta(seconds=30), f"t{worker}"
            ):
                with lock:
                    claimed.append(job.id)
                done = Transition(JobState.COMPLETED, 0, clock(), 0, None, None)
                assert store.finish(job.id, f"t{worker}", done, clock())
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(claimed) == 300
    assert len(set(claimed)) == 300
    check = open_store(url)
    assert check.count_by_state()[JobState.COMPLETED] == 300
    check.close()


def test_dlq_retry_resets_and_keeps_the_spec(store: Store, queue: Queue, clock: FakeClock) -> None:
    queue.enqueue([JobSpec(command="false", id="d", max_retries=4, labels={"k": "v"})])
    store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "t")
    dead = Transition(JobState.DEAD, 5, clock(), 1, "exit code 1", "tail")
    assert store.finish("d", "t", dead, clock())
    assert [j.id for j in queue.dlq_list()] == ["d"]
    clock.advance(1000)
    assert queue.dlq_retry(["d"]) == ["d"]
    job = queue.get("d")
    assert (job.state, job.attempts, job.max_retries, dict(job.labels)) == (
        JobState.PENDING,
        0,
        4,
        {"k": "v"},
    )
    assert (job.last_error, job.exit_code, job.available_at) == (None, None, clock())


def test_processing_jobs_and_drain_blockers(store: Store, clock: FakeClock) -> None:
    future = NewJob(
        "future", JobSpec(command="true", id="future"), 3, clock() + timedelta(hours=1), INLINE
    )
    store.insert_jobs([future, new_job("now", clock)], clock())
    assert store.drain_blockers((), clock()) == 1, "a future job does not hold a drain"
    store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "t")
    assert [j.id for j in store.processing_jobs()] == ["now"]
    assert store.drain_blockers((), clock()) == 1
    assert store.next_available_at(()) == clock() + timedelta(hours=1)


def test_the_claim_walks_the_claim_order_index(sqlite_store: Store) -> None:
    from queuectl.store.sql import SqlStore
    from queuectl.store.sqlite import SqliteDialect

    assert isinstance(sqlite_store, SqlStore) and isinstance(sqlite_store.d, SqliteDialect)
    plan = sqlite_store.d.conn.execute(
        "EXPLAIN QUERY PLAN " + sqlite_store.sql.claim_next,
        {"worker_id": "w", "token": "t", "now": 0, "lease_until": 0, "queues": None},
    ).fetchall()
    details = " | ".join(row["detail"] for row in plan)
    assert "jobs_claim_order" in details
    assert "TEMP B-TREE" not in details, details


def test_recovery_does_not_take_a_claim_whose_lease_was_renewed(
    store: Store, clock: FakeClock
) -> None:
    store.insert_jobs([new_job("j", clock)], clock())
    store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "t")
    lost = Transition(JobState.FAILED, 1, clock(), None, "worker lost (lease expired)", None)
    clock.advance(10_000)  # the lease runs until +30 s: not expired at +10 s
    assert not store.finish("j", "t", lost, clock(), expired_before=clock())
    clock.advance(25_000)
    assert store.finish("j", "t", lost, clock(), expired_before=clock())


def group_by_state(db_path: Path) -> dict[str, int]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
    counts = dict.fromkeys([s.value for s in JobState], 0)
    counts.update(dict(rows))
    return counts


def test_canceling_a_processing_job_revokes_its_claim(store: Store, clock: FakeClock) -> None:
    store.insert_jobs([new_job("j", clock)], clock())
    lease = clock() + timedelta(seconds=30)
    assert store.claim_next("w1", (), clock(), lease, "token-1") is not None
    with pytest.raises(InvalidState, match="cancel --kill"):
        store.cancel_job("j", clock())
    before = store.cancel_job("j", clock(), running=True)
    assert (before.state, before.worker_id) == (JobState.PROCESSING, "w1")
    after = store.get_job("j")
    assert after is not None
    # canceled at once, but its claim stays until its process is known to be gone
    assert (after.state, after.lease_token, after.last_error) == (
        JobState.CANCELED,
        "token-1",
        "canceled while running",
    )
    assert not after.ended
    assert [job.id for job in store.processing_jobs()] == ["j"]  # recovery still sees it
    later = lease + timedelta(seconds=10)
    beat = store.heartbeat("w1", clock(), later, "j", "token-1")
    # the worker learns to stop the job, and its heartbeat keeps the fence from expiring
    assert (beat.claim_held, beat.canceled) == (False, True)
    assert store.get_job("j").lease_expires_at == later  # type: ignore[union-attr]
    done = Transition(JobState.COMPLETED, 0, clock(), 0, None, "out")
    assert not store.finish("j", "token-1", done, clock()), "the worker records nothing"
    assert store.cancel_job("j", clock(), running=True).stopping  # again: fine, still stopping
    with pytest.raises(InvalidState):
        store.cancel_job("j", clock())
    assert not store.release_claim("j", "another-token", None, now=clock())
    assert store.release_claim("j", "token-1", "its output", now=clock())
    released = store.get_job("j")
    assert released is not None
    assert (released.state, released.lease_token, released.ended, released.output_tail) == (
        JobState.CANCELED,
        None,
        True,
        "its output",
    )
    assert store.processing_jobs() == []


def test_state_counts_kept_by_triggers_match_a_full_count(
    sqlite_store: Store, db_path: Path, clock: FakeClock
) -> None:
    queue = Queue(sqlite_store, clock=clock)
    queue.enqueue([JobSpec(command="true", id=f"j{i}") for i in range(6)])
    lease = clock() + timedelta(seconds=30)
    for token in ("a", "b", "c"):
        job = sqlite_store.claim_next("w", (), clock(), lease, token)
        assert job is not None
        state = {"a": JobState.COMPLETED, "b": JobState.DEAD, "c": JobState.FAILED}[token]
        sqlite_store.finish(job.id, token, Transition(state, 1, clock(), 1, "x", None), clock())
    queue.cancel("j5")
    queue.dlq_retry(None)
    queue.enqueue([JobSpec(command="false", id="gone")])
    job = sqlite_store.claim_next("w", (), clock(), lease, "d")
    assert job is not None
    sqlite_store.finish(job.id, "d", Transition(JobState.DEAD, 1, clock(), 1, "x", None), clock())
    queue.dlq_purge()
    stored = {state.value: n for state, n in sqlite_store.count_by_state().items()}
    assert stored == group_by_state(db_path)


def test_the_counts_migration_counts_existing_jobs(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:  # version 3: no counts yet
        for number, script in migrations("sqlite")[:3]:
            conn.executescript(script.read_text())
            conn.execute(f"PRAGMA user_version = {number}")
        for i in range(5):
            conn.execute(
                "INSERT INTO jobs (id, command, max_retries, state, created_at, updated_at,"
                " available_at, source, spec_hash)"
                " VALUES (?, '\"true\"', 3, 'pending', 1, 1, 1, 'inline', 'h')",
                (f"j{i}",),
            )
    store = open_store(f"sqlite:///{db_path}")
    assert store.count_by_state()[JobState.PENDING] == 5
    store.close()


def test_list_jobs_oldest_or_newest_first(store: Store, clock: FakeClock) -> None:
    store.insert_jobs([new_job("old", clock)], clock())
    clock.advance(1)
    store.insert_jobs([new_job("b-new", clock), new_job("a-new", clock)], clock())
    assert [j.id for j in store.list_jobs()] == ["old", "a-new", "b-new"]
    assert [j.id for j in store.list_jobs(newest=True)] == ["b-new", "a-new", "old"]
    assert [j.id for j in store.list_jobs(newest=True, limit=1)] == ["b-new"]


def test_queue_names_are_the_distinct_queues_of_the_jobs(queue: Queue, store: Store) -> None:
    assert store.queue_names() == []
    queue.enqueue([JobSpec(command="a", queue="ci"), JobSpec(command="b"), JobSpec(command="c")])
    assert store.queue_names() == ["ci", "default"]
    assert queue.queues_without_jobs(["cii", "ci"]) == (["cii"], ["ci", "default"])
