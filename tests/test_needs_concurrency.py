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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

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
