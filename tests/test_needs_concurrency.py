"""Dependencies under concurrent writers (SPEC 12): a job is enqueued with a need on a job
that ends at that very moment, recorded on another connection (another host's worker).

The interleaving is forced: the parent's end is recorded while the child's enqueue has
counted the child's unmet needs but not yet committed. SQLite writers take turns, so
there the end waits for the commit. On PostgreSQL the end lands in between, unless the
enqueue holds a lock that makes it wait.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from queuectl.core import Queue
from queuectl.models import JobSpec, JobState, Need
from queuectl.store import Store, Transition, open_store

from .conftest import wait_for

pytestmark = pytest.mark.both_backends

ENDINGS = {
    JobState.COMPLETED: Transition(JobState.COMPLETED, 0, datetime.now(UTC), 0, None, None),
    JobState.DEAD: Transition(JobState.DEAD, 1, datetime.now(UTC), 1, "exit code 1", None),
}


@pytest.fixture
def elsewhere(db_url: str, store: Store) -> Iterator[Store]:
    """The store as the parent's worker sees it: its own connection."""
    opened = open_store(db_url)
    yield opened
    opened.close()


def waits_on_a_lock(db_url: str, backend_pid: int) -> bool:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
        ).fetchone()
    return row is not None and row[0] == "Lock"


@contextlib.contextmanager
def ending_during_recount(
    store: Store, elsewhere: Store, backend: str, db_url: str, end: Callable[[], bool]
) -> Iterator[list[bool]]:
    """Within the block, the first recount of needs on `store` is followed, before its
    write commits, by `end()` on the other connection (which on PostgreSQL either lands
    or waits on a lock). Yields what `end()` returned, once the block is done."""
    recorded: list[bool] = []
    ends = threading.Thread(target=lambda: recorded.append(end()))
    recount: Any = store._recount  # type: ignore[attr-defined]

    def recount_then_end(*args: Any) -> None:
        recount(*args)  # the needs are counted; the write is not committed
        ends.start()
        if backend == "postgres":
            backend_pid = elsewhere.d.conn.info.backend_pid  # type: ignore[attr-defined]
            wait_for(
                lambda: recorded or waits_on_a_lock(db_url, backend_pid),
                timeout=30,
                what="the end to be recorded, or to wait for the other write",
            )

    store._recount = recount_then_end  # type: ignore[attr-defined]
    try:
        yield recorded
    finally:
        del store._recount  # type: ignore[attr-defined]
        ends.join(timeout=30)


@pytest.mark.parametrize("ending", [JobState.COMPLETED, JobState.DEAD], ids=str)
@pytest.mark.parametrize("siblings", [0, 1], ids=["first-child", "second-child"])
def test_a_child_enqueued_as_its_parent_ends_follows_that_end(
    ending: JobState,
    siblings: int,
    backend: str,
    db_url: str,
    store: Store,
    elsewhere: Store,
) -> None:
    queue = Queue(store)
    queue.enqueue(
        [
            JobSpec(command="true", id="parent"),
            *(
                JobSpec(command="true", id=f"sibling-{n}", needs=(Need("parent"),))
                for n in range(siblings)
            ),
        ]
    )
    now = datetime.now(UTC)
    claimed = elsewhere.claim_next("elsewhere:1", [], now, now + timedelta(minutes=1), "token")
    assert claimed is not None and claimed.id == "parent"

    def end() -> bool:
        return elsewhere.finish("parent", "token", ENDINGS[ending], datetime.now(UTC))

    with ending_during_recount(store, elsewhere, backend, db_url, end) as recorded:
        queue.enqueue([JobSpec(command="true", id="child", needs=(Need("parent"),))])
    assert recorded == [True]

    child = queue.get("child")
    if ending is JobState.COMPLETED:
        assert (child.state, queue.waiting_on(child)) == (JobState.PENDING, [])
        now = datetime.now(UTC)
        runnable: list[str] = []
        while job := elsewhere.claim_next("elsewhere:1", [], now, now, f"t{len(runnable)}"):
            runnable.append(job.id)
        assert sorted(runnable) == ["child", *(f"sibling-{n}" for n in range(siblings))]
    else:
        assert (child.state, child.last_error) == (JobState.CANCELED, "upstream parent dead")


def test_a_child_brought_back_as_its_other_parent_ends_counts_that_end(
    backend: str, db_url: str, store: Store, elsewhere: Store
) -> None:
    """`dlq retry` of one parent recounts the child's needs while its other parent's end is
    recorded on another connection: one of the two writes must see the other."""
    queue = Queue(store)
    queue.enqueue(
        [
            JobSpec(command="true", id="p1"),
            JobSpec(command="true", id="p2"),
            JobSpec(command="true", id="c", needs=(Need("p1"), Need("p2"))),
        ]
    )
    now = datetime.now(UTC)
    lease = now + timedelta(minutes=1)
    for parent in ("p1", "p2"):
        claimed = elsewhere.claim_next("elsewhere:1", [], now, lease, f"token-{parent}")
        assert claimed is not None and claimed.id == parent
    assert elsewhere.finish("p1", "token-p1", ENDINGS[JobState.DEAD], datetime.now(UTC))
    assert queue.get("c").last_error == "upstream p1 dead"

    def end() -> bool:
        return elsewhere.finish("p2", "token-p2", ENDINGS[JobState.COMPLETED], datetime.now(UTC))

    with ending_during_recount(store, elsewhere, backend, db_url, end) as recorded:
        assert queue.dlq_retry(["p1"]) == ["p1"]  # c is pending again and counted
    assert recorded == [True]

    now = datetime.now(UTC)
    claimed = elsewhere.claim_next("elsewhere:1", [], now, lease, "token-again")
    assert claimed is not None and claimed.id == "p1"
    assert elsewhere.finish("p1", "token-again", ENDINGS[JobState.COMPLETED], datetime.now(UTC))
    child = queue.get("c")
    assert (child.state, child.waiting) == (JobState.PENDING, 0)  # claimable


@pytest.fixture
def own_database(backend: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own: its deadlock counter counts only it."""
    if backend != "postgres":
        pytest.skip("SQLite runs one write at a time: there is no lock order to get wrong")
    import psycopg

    from .conftest import pg_url

    base = urlsplit(pg_url())
    name = f"qt_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(base.geturl(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(base._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(base.geturl(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


def deadlocks(db_url: str) -> int:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_apply_of_a_child_and_its_parents_end_take_locks_in_one_order(
    own_database: str,
) -> None:
    """A worker's finish locks the parent, then updates its children; an apply that
    rewrites a child must lock the parent first too, or the two deadlock."""
    from queuectl.models import INLINE, NewJob
    from queuectl.store import Change

    db_url = own_database
    store, elsewhere = open_store(db_url), open_store(db_url)
    try:
        now = datetime.now(UTC)
        parent = NewJob("p", JobSpec(command="true", id="p"), 0, now, INLINE)
        child_spec = JobSpec(command="true", id="c", needs=(Need("p"),))
        store.insert_jobs([parent, NewJob("c", child_spec, 0, now, INLINE)], now)
        claimed = elsewhere.claim_next("elsewhere:1", [], now, now + timedelta(minutes=1), "token")
        assert claimed is not None and claimed.id == "p"
        child = store.get_job("c")
        assert child is not None
        rewritten = NewJob("c", replace(child_spec, command="echo rewritten"), 0, now, INLINE)
        change = Change("update", "c", rewritten, (child.state, child.updated_at))
        before = deadlocks(db_url)

        applied: list[bool] = []
        apply = threading.Thread(
            target=lambda: applied.append(store.apply_changes([change], datetime.now(UTC)) is None)
        )
        settle: Any = elsewhere._settle  # type: ignore[attr-defined]

        def apply_then_settle(*args: Any, **kwargs: Any) -> None:
            # The finish holds the parent's row lock; the apply starts now and must wait for it.
            apply.start()
            backend_pid = store.d.conn.info.backend_pid  # type: ignore[attr-defined]
            wait_for(
                lambda: applied or waits_on_a_lock(db_url, backend_pid),
                timeout=30,
                what="the apply to wait for the parent's lock",
            )
            settle(*args, **kwargs)

        elsewhere._settle = apply_then_settle  # type: ignore[attr-defined]
        try:
            assert elsewhere.finish("p", "token", ENDINGS[JobState.COMPLETED], datetime.now(UTC))
        finally:
            del elsewhere._settle  # type: ignore[attr-defined]
        apply.join(timeout=30)
        assert applied == [True]
        assert deadlocks(db_url) == before  # no write was rolled back and run again
        done = store.get_job("c")
        assert done is not None and (done.command, done.waiting) == ("echo rewritten", 0)
    finally:
        store.close()
        elsewhere.close()
