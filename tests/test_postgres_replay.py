"""PostgreSQL: a write whose commit landed but whose reply was lost is not reported as failed.

A proxy on loopback stands between the store and the server. Armed, it lets the
client's COMMIT (or, for a write of one statement, that statement) through,
waits for the server to say the transaction is over, swallows that reply and
closes the connection: the commit landed, the client never heard. The store
reconnects and tries again; it must find what the first try did instead of
reporting a false error.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest

from queuectl.core import Queue
from queuectl.models import INLINE, JobSpec, JobState, NewJob, Origin, ScheduleSpec, Source
from queuectl.store import (
    Change,
    NewSchedule,
    ScheduleChange,
    Store,
    Transition,
    open_store,
)

from .conftest import FakeClock, postgres_schema_url

READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the server's "transaction over, ready" message


class CommitReplyDropper:
    """A TCP proxy to the PostgreSQL server that can lose the reply to one COMMIT."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.armed = threading.Event()
        self.pattern = b"COMMIT"
        self.dropped = 0
        self._closing = False
        self._sockets: list[socket.socket] = []  # every connection's two ends, closed by close()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pattern: bytes = b"COMMIT") -> None:
        """Lose the reply to the next client message holding `pattern`."""
        self.pattern = pattern
        self.armed.set()

    def close(self) -> None:
        """Stop accepting and close every connection: none is left for the garbage
        collector to warn about in a later test."""
        self._closing = True
        self.listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.server)
            self._sockets += [client, upstream]
            swallow = threading.Event()
            threading.Thread(target=self._up, args=(client, upstream, swallow), daemon=True).start()
            threading.Thread(
                target=self._down, args=(upstream, client, swallow), daemon=True
            ).start()

    def _up(self, client: socket.socket, upstream: socket.socket, swallow: threading.Event) -> None:
        with contextlib.suppress(OSError), client, upstream:  # a closed socket ends a pump
            while data := client.recv(65536):
                if self.armed.is_set() and self.pattern in data:
                    self.armed.clear()
                    swallow.set()  # before sending: the reply must not slip through
                upstream.sendall(data)

    def _down(
        self, upstream: socket.socket, client: socket.socket, swallow: threading.Event
    ) -> None:
        seen = b""
        with contextlib.suppress(OSError), upstream, client:  # a closed socket ends a pump
            while data := upstream.recv(65536):
                if swallow.is_set():
                    seen += data
                    if READY_FOR_QUERY in seen:  # committed: now lose the reply
                        self.dropped += 1
                        client.shutdown(socket.SHUT_RDWR)
                        return
                    continue
                client.sendall(data)


@pytest.fixture
def proxied() -> Iterator[tuple[Store, CommitReplyDropper]]:
    """A store whose connections go through the proxy (sslmode=disable: the proxy reads
    the protocol in the clear)."""
    schema_urls = postgres_schema_url()
    url = next(schema_urls)
    parts = urlsplit(url)
    proxy = CommitReplyDropper((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    user = f"{netloc[0]}@" if len(netloc) == 2 else ""
    proxied_url = urlunsplit(
        parts._replace(
            netloc=f"{user}127.0.0.1:{proxy.port}", query=parts.query + "&sslmode=disable"
        )
    )
    store = open_store(proxied_url)
    try:
        yield store, proxy
    finally:
        store.close()
        proxy.close()
        for _ in schema_urls:  # drops the schema
            pass


def new_job(job_id: str, clock: FakeClock, command: str = "true") -> NewJob:
    return NewJob(job_id, JobSpec(command=command, id=job_id), 0, clock(), INLINE)


def dead_job(store: Store, clock: FakeClock, job_id: str) -> None:
    store.insert_jobs([new_job(job_id, clock)], clock())
    store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), f"t-{job_id}")
    outcome = Transition(JobState.DEAD, 1, clock(), 1, "exit code 1", None)
    assert store.finish(job_id, f"t-{job_id}", outcome, clock())


def test_insert_reports_the_jobs_the_lost_reply_created(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    store.insert_jobs([new_job("there", clock)], clock())
    clock.advance(1000)
    proxy.arm()
    created = store.insert_jobs([new_job("there", clock), new_job("new", clock)], clock())
    assert proxy.dropped == 1
    assert created == [False, True]


def test_dlq_retry_after_a_lost_reply(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    dead_job(store, clock, "a")
    dead_job(store, clock, "b")
    queue = Queue(store, clock=clock)
    proxy.arm()
    assert queue.dlq_retry(["a", "a"]) == ["a"]  # a repeated id is one retry
    assert proxy.dropped == 1
    clock.advance(1000)
    proxy.arm()
    assert queue.dlq_retry(None) == ["b"]
    assert proxy.dropped == 2
    assert store.count_by_state()[JobState.PENDING] == 2


@pytest.mark.parametrize("kill", [False, True], ids=["pending", "running --kill"])
def test_cancel_after_a_lost_reply(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock, kill: bool
) -> None:
    store, proxy = proxied
    store.insert_jobs([new_job("c", clock)], clock())
    if kill:
        store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "tok")
    proxy.arm()
    before = store.cancel_job("c", clock(), running=kill)
    assert proxy.dropped == 1
    assert before.lease_token == ("tok" if kill else None)  # what the caller needs from it
    job = store.get_job("c")
    assert job is not None and job.state is JobState.CANCELED


def test_apply_after_a_lost_reply(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    created = NewJob(
        "made", JobSpec(command="true", id="made"), 3, clock(), Source(Origin.APPLY, "a.yaml")
    )
    proxy.arm()
    store.apply_changes([Change("create", "made", created)], clock())
    assert proxy.dropped == 1
    job = store.get_job("made")
    assert job is not None
    clock.advance(1000)
    changed = NewJob(
        "made", JobSpec(command="false", id="made"), 3, clock(), Source(Origin.APPLY, "a.yaml")
    )
    proxy.arm()
    store.apply_changes([Change("update", "made", changed, (job.state, job.updated_at))], clock())
    assert proxy.dropped == 2
    updated = store.get_job("made")
    assert updated is not None and updated.command == "false"
    clock.advance(1000)
    proxy.arm()
    store.apply_changes(
        [Change("prune", "made", None, (updated.state, updated.updated_at))], clock()
    )
    assert proxy.dropped == 3
    pruned = store.get_job("made")
    assert pruned is not None and pruned.state is JobState.CANCELED


def test_apply_of_a_schedule_after_a_lost_reply(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    source = Source(Origin.APPLY, "s.yaml")

    def declared(command: str) -> NewSchedule:
        template = JobSpec(command=command, id="s")
        return NewSchedule(ScheduleSpec(id="s", template=template, every_ms=3_600_000), source)

    first, second = declared("true"), declared("false")
    proxy.arm()
    store.apply_changes([ScheduleChange("create", "s", first)], clock())
    assert proxy.dropped == 1
    clock.advance(1000)
    proxy.arm()
    store.apply_changes([ScheduleChange("update", "s", second, first.spec.spec_hash)], clock())
    assert proxy.dropped == 2
    (stored,) = store.list_schedules()
    assert stored.spec.template.command == "false"
    clock.advance(1000)
    proxy.arm()
    store.apply_changes([ScheduleChange("prune", "s", None, second.spec.spec_hash)], clock())
    assert proxy.dropped == 3
    assert store.list_schedules() == []


def test_a_delete_after_a_lost_reply_still_names_what_it_deleted(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    dead_job(store, clock, "gone")
    proxy.arm()  # the reply to the delete's COMMIT is lost
    assert store.delete_jobs(["gone"]) == ["gone"]
    assert proxy.dropped == 1
    assert store.get_job("gone") is None


def test_finish_after_a_lost_reply_is_recorded_not_dropped(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    store.insert_jobs([new_job("f", clock)], clock())
    store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "tok")
    proxy.arm(b"finished_at = $")  # one statement, committed by itself
    outcome = Transition(JobState.COMPLETED, 0, clock(), 0, None, "out")
    assert store.finish("f", "tok", outcome, clock()) is True
    assert proxy.dropped == 1


def test_release_claim_after_a_lost_reply(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    store.insert_jobs([new_job("r", clock)], clock())
    store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "tok")
    store.cancel_job("r", clock(), running=True)
    proxy.arm(b"coalesce(")  # one statement, committed by itself
    assert store.release_claim("r", "tok", "tail", now=clock()) is True
    assert proxy.dropped == 1


def test_claim_after_a_lost_reply_returns_the_claimed_job(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    store, proxy = proxied
    store.insert_jobs([new_job("k", clock)], clock())
    proxy.arm(b"SET state = 'processing'")  # one statement, committed by itself
    job = store.claim_next("w", (), clock(), clock() + timedelta(seconds=30), "tok")
    assert proxy.dropped == 1
    assert job is not None and job.id == "k"
    assert job.lease_token == "tok"  # noqa: S105 - a claim token, not a password


def test_register_worker_after_a_lost_reply(
    proxied: tuple[Store, CommitReplyDropper], clock: FakeClock
) -> None:
    from queuectl.models import WorkerInfo

    store, proxy = proxied
    now = clock()
    worker = WorkerInfo("h:1:ab", 1, "h", now, now, now + timedelta(seconds=30), None, ())
    proxy.arm()
    store.register_worker(worker)
    assert proxy.dropped == 1
    assert [w.id for w in store.live_workers(now)] == ["h:1:ab"]
