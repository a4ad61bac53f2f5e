"""Dependencies (SPEC 12) and concurrency keys (SPEC 13) in the store, on both backends,
with an injected clock: what a claim may take, and what a parent's end does downstream."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest

from queuectl.core import Queue
from queuectl.errors import UnknownNeed
from queuectl.models import INLINE, JobSpec, JobState, Need, NeedOn, NewJob
from queuectl.store import Store, Transition, open_store

from .conftest import FakeClock

_tokens = itertools.count()


def job(job_id: str, clock: FakeClock, *needs: str | Need, **fields: object) -> NewJob:
    wanted = tuple(n if isinstance(n, Need) else Need(n) for n in needs)
    spec = JobSpec(command="true", id=job_id, needs=wanted, **fields)  # type: ignore[arg-type]
    return NewJob(job_id, spec, 0, clock(), INLINE)


def claim(store: Store, clock: FakeClock, *, lease_ms: int = 30_000) -> tuple[str, str] | None:
    token = f"t{next(_tokens)}"
    until = clock() + timedelta(milliseconds=lease_ms)
    claimed = store.claim_next("elsewhere:1:ns:x", (), clock(), until, token)
    return None if claimed is None else (claimed.id, token)


def next_claim(store: Store, clock: FakeClock) -> str | None:
    """The id of the job a worker would claim now, if any."""
    claimed = claim(store, clock)
    return None if claimed is None else claimed[0]


def end(store: Store, clock: FakeClock, job_id: str, state: JobState) -> None:
    """Claim `job_id` (it must be the one claimable) and end its attempt in `state`."""
    claimed = claim(store, clock)
    assert claimed is not None and claimed[0] == job_id, claimed
    outcome = Transition(state, 1, clock(), 0 if state is JobState.COMPLETED else 1, None, None)
    assert store.finish(job_id, claimed[1], outcome, clock())


def state_of(store: Store, job_id: str) -> tuple[JobState, int, str | None]:
    found = store.get_job(job_id)
    assert found is not None
    return found.state, found.waiting, found.last_error


def test_a_job_waits_unclaimable_until_its_need_completes(store: Store, clock: FakeClock) -> None:
    store.insert_jobs([job("extract", clock), job("load", clock, "extract")], clock())
    assert state_of(store, "load") == (JobState.PENDING, 1, None)
    end(store, clock, "extract", JobState.COMPLETED)
    assert state_of(store, "load") == (JobState.PENDING, 0, None)
    assert next_claim(store, clock) == "load"


@pytest.mark.parametrize(
    ("on", "parent_end", "child"),
    [
        (NeedOn.SUCCESS, JobState.COMPLETED, (JobState.PENDING, 0, None)),
        (NeedOn.SUCCESS, JobState.DEAD, (JobState.CANCELED, 1, "upstream p dead")),
        (NeedOn.FAILURE, JobState.DEAD, (JobState.PENDING, 0, None)),
        (NeedOn.FAILURE, JobState.COMPLETED, (JobState.CANCELED, 1, "upstream p completed")),
        (NeedOn.FINISHED, JobState.COMPLETED, (JobState.PENDING, 0, None)),
        (NeedOn.FINISHED, JobState.DEAD, (JobState.PENDING, 0, None)),
    ],
)
def test_what_meets_a_need_and_what_cancels_its_job(
    store: Store, clock: FakeClock, on: NeedOn, parent_end: JobState, child: tuple[object, ...]
) -> None:
    store.insert_jobs([job("p", clock), job("c", clock, Need("p", on))], clock())
    end(store, clock, "p", parent_end)
    assert state_of(store, "c") == child


def test_a_canceled_parent_meets_finished_only(store: Store, clock: FakeClock) -> None:
    queue = Queue(store, clock=clock)
    finished = Need("p", NeedOn.FINISHED)
    store.insert_jobs(
        [job("p", clock), job("any", clock, finished), job("ok", clock, "p")], clock()
    )
    queue.cancel("p")
    assert state_of(store, "any") == (JobState.PENDING, 0, None)
    assert state_of(store, "ok") == (JobState.CANCELED, 1, "upstream p canceled")


def test_cancellation_runs_down_a_deep_chain_and_dlq_retry_brings_it_back(
    store: Store, clock: FakeClock
) -> None:
    depth = 1500  # deeper than SQLite's trigger recursion limit: the walk is iterative
    chain = [job("n0", clock)] + [job(f"n{i}", clock, f"n{i - 1}") for i in range(1, depth)]
    store.insert_jobs(chain, clock())
    end(store, clock, "n0", JobState.DEAD)
    assert state_of(store, "n1") == (JobState.CANCELED, 1, "upstream n0 dead")
    assert state_of(store, f"n{depth - 1}") == (
        JobState.CANCELED,
        1,
        f"upstream n{depth - 2} canceled",
    )
    assert Queue(store, clock=clock).dlq_retry(["n0"]) == ["n0"]
    assert state_of(store, "n1") == (JobState.PENDING, 1, None)
    assert state_of(store, f"n{depth - 1}") == (JobState.PENDING, 1, None)
    assert next_claim(store, clock) == "n0"  # only n0: the rest wait on it again
    assert next_claim(store, clock) is None


def test_a_retried_parent_leaves_children_canceled_for_another_reason(
    store: Store, clock: FakeClock
) -> None:
    queue = Queue(store, clock=clock)
    store.insert_jobs([job("p", clock), job("q", clock), job("c", clock, "p", "q")], clock())
    queue.cancel("q")  # c is canceled by q, not by p
    end(store, clock, "p", JobState.DEAD)
    queue.dlq_retry(["p"])
    assert state_of(store, "c") == (JobState.CANCELED, 2, "upstream q canceled")


def test_needs_on_jobs_that_ended_already_count_at_submission(
    store: Store, clock: FakeClock
) -> None:
    store.insert_jobs([job("done", clock), job("failed", clock)], clock())
    end(store, clock, "done", JobState.COMPLETED)
    end(store, clock, "failed", JobState.DEAD)
    store.insert_jobs([job("ready", clock, "done"), job("doomed", clock, "failed")], clock())
    assert state_of(store, "ready") == (JobState.PENDING, 0, None)
    assert state_of(store, "doomed") == (JobState.CANCELED, 1, "upstream failed dead")


def test_an_unknown_need_writes_nothing(store: Store, clock: FakeClock) -> None:
    with pytest.raises(UnknownNeed, match="'b' needs 'ghost'"):
        store.insert_jobs([job("a", clock), job("b", clock, "a", "ghost")], clock())
    assert store.get_job("a") is None  # the batch is all or nothing


def test_waiting_on_and_why_name_the_unmet_needs(store: Store, clock: FakeClock) -> None:
    queue = Queue(store, clock=clock)
    store.insert_jobs(
        [job("a", clock), job("b", clock), job("c", clock, "a", Need("b", NeedOn.FINISHED))],
        clock(),
    )
    end(store, clock, "a", JobState.COMPLETED)
    child = queue.get("c")
    assert queue.waiting_on(child) == [{"job": "b", "on": "finished", "state": "pending"}]
    [gate] = [g for g in queue.why("c") if g.gate == "needs"]
    assert gate.message == "needs b to end (any way): it is pending"


def test_a_concurrency_key_holds_jobs_at_its_limit_until_a_holder_ends(
    store: Store, clock: FakeClock
) -> None:
    keyed = {"concurrency_key": "deploy", "concurrency_limit": 2}
    store.insert_jobs([job(f"d{i}", clock, **keyed) for i in range(3)], clock())
    store.insert_jobs([job("free", clock)], clock())
    first, second = claim(store, clock), claim(store, clock)
    assert first is not None and second is not None
    assert {first[0], second[0]} == {"d0", "d1"}
    assert next_claim(store, clock) == "free"
    assert claim(store, clock) is None  # d2 waits: deploy is at its limit
    [gate] = [g for g in Queue(store, clock=clock).why("d2") if g.gate == "concurrency"]
    assert (gate.gate, gate.detail["held_by"]) == ("concurrency", ["d0", "d1"])
    outcome = Transition(JobState.COMPLETED, 1, clock(), 0, None, None)
    assert store.finish(first[0], first[1], outcome, clock())
    assert next_claim(store, clock) == "d2"


def test_a_holder_whose_lease_expired_frees_its_key(store: Store, clock: FakeClock) -> None:
    keyed = {"concurrency_key": "deploy"}
    store.insert_jobs([job("d0", clock, **keyed), job("d1", clock, **keyed)], clock())
    assert claim(store, clock, lease_ms=1000) is not None  # its worker is then killed
    assert claim(store, clock) is None
    clock.advance(1001)
    claimed = claim(store, clock)
    assert claimed is not None and claimed[0] == "d1"


def test_claims_racing_on_many_connections_never_pass_the_limit(
    store: Store, db_url: str, clock: FakeClock
) -> None:
    keyed = {"concurrency_key": "deploy", "concurrency_limit": 2}
    store.insert_jobs([job(f"d{i}", clock, **keyed) for i in range(40)], clock())
    claimed: list[str] = []
    start = threading.Barrier(8)

    def worker() -> None:
        own = open_store(db_url)  # a connection of its own, as a worker on another host
        try:
            start.wait()
            for _ in range(10):
                got = claim(own, clock)
                if got is not None:
                    claimed.append(got[0])
        finally:
            own.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 2, claimed  # nothing ended: the limit's 2, never more


def test_a_drain_is_not_held_by_a_job_waiting_on_a_need_not_due(
    store: Store, clock: FakeClock
) -> None:
    later = clock() + timedelta(days=1)
    parent = NewJob("later", JobSpec(command="true", id="later"), 0, later, INLINE)
    store.insert_jobs([parent, job("child", clock, "later")], clock())
    assert store.drain_blockers((), clock()) == 0  # nothing can run before tomorrow


def test_dlq_retry_gives_a_job_a_fresh_deadline(store: Store, clock: FakeClock) -> None:
    store.insert_jobs([job("late", clock, deadline_ms=1000)], clock())
    end(store, clock, "late", JobState.DEAD)
    assert store.get_job("late").first_started_at == clock()  # type: ignore[union-attr]
    clock.advance(5000)
    Queue(store, clock=clock).dlq_retry(["late"])
    retried = store.get_job("late")
    assert retried is not None and retried.first_started_at is None


def test_a_job_canceled_while_running_meets_finished_needs_only_once_stopped(
    store: Store, clock: FakeClock
) -> None:
    finished = Need("parent", NeedOn.FINISHED)
    store.insert_jobs([job("parent", clock), job("after", clock, finished)], clock())
    claimed = claim(store, clock)
    assert claimed is not None and claimed[0] == "parent"
    Queue(store, clock=clock).cancel("parent", kill=True)  # its process is still stopping
    assert state_of(store, "after") == (JobState.PENDING, 1, None)
    store.insert_jobs([job("late", clock, finished)], clock())  # counted the same way
    assert state_of(store, "late") == (JobState.PENDING, 1, None)
    assert store.release_claim("parent", claimed[1], None, now=clock())  # now it is gone
    assert state_of(store, "after") == (JobState.PENDING, 0, None)
    assert state_of(store, "late") == (JobState.PENDING, 0, None)
