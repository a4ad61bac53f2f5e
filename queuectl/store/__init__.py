"""The Store protocol, the one interface core and runner use, and open_store(url).

One implementation serves every backend: `sql.SqlStore`, with the queue's
statements written once, over a thin dialect (`sqlite.py`, `postgres.py`).
Instants cross this interface as aware UTC datetimes; queue rules (retry
policy, backoff) stay in the callers, which pass the resulting transition in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConcurrentChange, InvalidState, JobConflict, StoreError
from ..models import (
    Job,
    JobState,
    Need,
    NewJob,
    Origin,
    RetryPolicy,
    Schedule,
    ScheduleSpec,
    Source,
    WorkerInfo,
)


@dataclass(frozen=True)
class Transition:
    """The outcome of one attempt, as the store records it (fenced by the claim token)."""

    state: JobState
    attempts: int
    available_at: datetime
    exit_code: int | None
    last_error: str | None
    output_tail: str | None  # None keeps the stored tail


@dataclass(frozen=True)
class Change:
    """One write of an apply: `create` a job, `update`/`replace` one in place, or `prune` it.

    `expected` is the (state, updated_at) the plan saw; the write happens only if the
    job is still exactly so, which keeps a concurrent claim from being overwritten.
    """

    action: str
    job_id: str
    job: NewJob | None = None
    expected: tuple[JobState, datetime] | None = None


@dataclass(frozen=True)
class NewSchedule:
    """A validated schedule to store, and where it was declared."""

    spec: ScheduleSpec
    source: Source


@dataclass(frozen=True)
class ScheduleChange:
    """One schedule write of an apply: `create` it, `update` it (the template of runs not
    yet created), or `prune` it (delete it, canceling its runs waiting to start).

    `expected_hash` is the spec hash the plan saw (None: absent); the write happens only
    if the schedule is still so.
    """

    action: str
    schedule_id: str
    schedule: NewSchedule | None = None
    expected_hash: str | None = None


@dataclass(frozen=True)
class SpoolFile:
    """The validated jobs and schedules of one claimed spool file."""

    claim_id: str  # unique per claim: a crash-and-retry of the same claim inserts once
    name: str
    content_hash: str
    jobs: Sequence[NewJob]
    schedules: Sequence[NewSchedule] = ()


@dataclass(frozen=True)
class Tick:
    """One scheduler's pass over one schedule, written only if the schedule is still as
    it read it (`last_tick_at`, `spec_hash`): of schedulers racing, one wins."""

    schedule_id: str
    spec_hash: str
    last_tick_at: datetime  # as read
    tick_at: datetime  # the new last_tick_at
    runs: Sequence[NewJob]
    missed: int
    last_missed_at: datetime | None
    next_slot_at: datetime  # when the schedule next needs a tick
    replace_previous: bool = False  # cancel the runs still going first (`overlap: replace`)


@dataclass(frozen=True)
class RunCount:
    """Attempts of one queue that ended one way (`outcome`: completed, failed or dead) in
    one duration bucket (`le_ms`, its upper bound; -1 for +Inf), and their total duration."""

    queue: str
    outcome: str
    le_ms: int
    n: int
    sum_ms: int


@dataclass(frozen=True)
class Heartbeat:
    stop_requested: bool
    claim_held: bool  # False when the current job's claim was taken over or canceled
    canceled: bool = False  # the job was canceled while running: stop it (its lease still holds)


class Store(Protocol):
    """What every backend provides. Methods return lists or dataclasses, never cursors."""

    url: str

    def close(self) -> None: ...

    # jobs
    def insert_jobs(self, jobs: Sequence[NewJob], now: datetime) -> list[bool]:
        """Insert jobs in one transaction; per job True if created, False if an identical job
        existed. Raises JobConflict (and inserts nothing) if an id exists with another spec."""
        ...

    def ingest_spool_files(self, files: Sequence[SpoolFile], now: datetime) -> list[str | None]:
        """Insert each file's jobs and create its schedules in one transaction, file by
        file all-or-nothing (the file's claim record included). An identical existing job
        or schedule is a no-op; a different one rejects the file.

        Per file: None if ingested (or already ingested under this claim), else the
        conflict that rejected it.
        """
        ...

    def forget_spool_files(self, before: datetime) -> int:
        """Drop the ingest records of files ingested before `before`."""
        ...

    def get_job(self, job_id: str) -> Job | None: ...

    def get_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """The jobs among `job_ids` that exist, by id."""
        ...

    def apply_changes(self, changes: Sequence[Change | ScheduleChange], now: datetime) -> None:
        """Make every change in one transaction, or none.

        :raises ConcurrentChange: a job or schedule changed since the plan was made.
        """
        ...

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        origin: Origin | None = None,
        limit: int | None = None,
        newest: bool = False,
        schedule_id: str | None = None,
    ) -> list[Job]:
        """Jobs oldest first (created_at, then id), or newest first."""
        ...

    def count_by_state(self) -> dict[JobState, int]: ...

    def queue_names(self) -> list[str]:
        """Every queue some job in the store is on, sorted."""
        ...

    def cancel_job(self, job_id: str, now: datetime, *, running: bool = False) -> Job:
        """pending/failed (and processing, when running) -> canceled; returns the job as it
        was before. A processing job keeps its claim token, which no longer lets its worker
        renew or finish: the worker stops it, then release_claim drops the token. Raises
        JobNotFound or InvalidState."""
        ...

    def retry_dead(self, job_ids: Sequence[str] | None, now: datetime) -> list[str]:
        """dead -> pending with attempts 0 (all dead jobs when job_ids is None)."""
        ...

    def deletable_jobs(
        self,
        state: JobState,
        *,
        job_ids: Sequence[str] | None = None,
        finished_before: datetime | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Jobs in an end state (`state`) that may be deleted now, oldest end first: no
        claim left, and no job that may still run needs them (SPEC 14)."""
        ...

    def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        """Delete those of the jobs that are still deletable (see deletable_jobs), with
        their needs edges; return the ids that are gone."""
        ...

    # observability (SPEC 15): counters kept by triggers, pages read through indexes
    def count_by_queue(self) -> dict[tuple[str, JobState], int]:
        """Jobs per (queue, state) that has or had any."""
        ...

    def run_totals(self) -> list[RunCount]:
        """Every attempt that ended, ever (they outlive pruned jobs), summed per bucket."""
        ...

    def runs_per_minute(self, since: datetime) -> list[tuple[datetime, str, int]]:
        """(minute, outcome, attempts) for each minute since `since` that had any."""
        ...

    def fold_run_stats(self, before: datetime) -> None:
        """Fold the per-minute attempt counters of minutes before `before` together."""
        ...

    def oldest_due(self, queue: str, now: datetime) -> datetime | None:
        """When the longest-waiting due pending job of `queue` became due."""
        ...

    def page_jobs(
        self,
        *,
        state: JobState | None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """One page of jobs after a keyset cursor (sort key, id): every job newest first;
        ended ones by finished_at, newest first; others by available_at, oldest first."""
        ...

    # schedules
    def upsert_schedule(self, schedule: NewSchedule, now: datetime) -> str:
        """Store a schedule: "created", "updated" (another spec for its id: the template of
        runs not yet created) or "unchanged" (an identical re-submission)."""
        ...

    def list_schedules(self, schedule_id: str | None = None) -> list[Schedule]:
        """Every schedule by id (or just the one named, if it exists)."""
        ...

    def set_suspended(self, schedule_id: str, suspended: bool, now: datetime) -> None:
        """Pause or resume a schedule. Raises ScheduleNotFound."""
        ...

    def delete_schedule(self, schedule_id: str, now: datetime) -> list[str]:
        """Delete a schedule and cancel its runs waiting to start (pending, or failed and
        waiting to retry); return their ids. Raises ScheduleNotFound."""
        ...

    def waiting_on(self, job_id: str) -> list[tuple[Need, JobState | None]]:
        """Every need of the job, with the needed job's state (None: no longer stored)."""
        ...

    def key_holders(self, key: str, now: datetime) -> list[str]:
        """The jobs holding a concurrency key now (running, or stopping), oldest first."""
        ...

    def due_schedules(self, now: datetime) -> list[Schedule]:
        """The active schedules whose next slot (or a change of timing) is at or before now."""
        ...

    def next_tick_at(self) -> datetime | None:
        """When the earliest active schedule next needs a tick; None when none is active."""
        ...

    def tick(self, ticks: Sequence[Tick], now: datetime) -> list[list[Job] | None]:
        """For each tick (a compare-and-set of its own), in few writes: cancel the runs still
        going if `replace_previous`, create its runs (each id at most once, ever) and record
        its missed slots and next slot. Per tick: the runs it canceled (as they were), or
        None (nothing written) if another scheduler ticked that schedule first."""
        ...

    # config
    def read_config(self) -> dict[str, str]: ...

    def write_config(self, key: str, value: str) -> None: ...

    # workers
    def register_worker(self, worker: WorkerInfo) -> None: ...

    def heartbeat(
        self,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        job_id: str | None,
        token: str | None,
    ) -> Heartbeat: ...

    def deregister_worker(self, worker_id: str) -> None: ...

    def live_workers(self, now: datetime) -> list[WorkerInfo]: ...

    def request_stop(self, worker_ids: Sequence[str] | None = None) -> int: ...

    def claim_next(
        self,
        worker_id: str,
        queues: Sequence[str],
        now: datetime,
        lease_until: datetime,
        token: str,
    ) -> Job | None:
        """Atomically claim the next due job (priority desc, created_at, id) or return None."""
        ...

    def finish(
        self,
        job_id: str,
        token: str,
        outcome: Transition,
        now: datetime,
        *,
        expired_before: datetime | None = None,
    ) -> bool:
        """Record an attempt's outcome if `token` still holds the claim (and, with
        expired_before, only if the claim's lease expired before then); else change nothing."""
        ...

    def finish_and_claim(
        self,
        job_id: str,
        token: str,
        outcome: Transition,
        now: datetime,
        *,
        worker_id: str,
        queues: Sequence[str],
        lease_until: datetime,
        next_token: str,
    ) -> tuple[bool, Job | None]:
        """finish(), then claim_next() for the same worker: in one write where the claim
        cannot roll back (SQLite), which saves a transaction per job; apart elsewhere."""
        ...

    def release_claim(
        self, job_id: str, token: str, output_tail: str | None, *, now: datetime
    ) -> bool:
        """Drop the claim a job canceled while running kept (its process is gone now), and
        keep the attempt's output tail for `logs` on other hosts."""
        ...

    def processing_jobs(self) -> list[Job]:
        """Every claimed job (running, or canceled and still stopping), so the runner can
        recover those whose worker is gone."""
        ...

    def drain_blockers(self, queues: Sequence[str], now: datetime) -> int:
        """How many jobs keep `worker run --drain` alive: processing, due, or awaiting a retry."""
        ...

    def next_available_at(self, queues: Sequence[str]) -> datetime | None:
        """The earliest instant a pending or failed job becomes due."""
        ...

    def changed(self) -> bool:
        """Cheap check: has anything been committed by another connection since the last call?"""
        ...


class Row(Protocol):
    """A row read by column name (sqlite3.Row, or a dict from psycopg)."""

    def __getitem__(self, column: str) -> Any: ...

    def keys(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


def job_from_row(
    row: Row,
    *,
    decode: Callable[[Any], Any],
    instant: Callable[[Any], datetime | None],
) -> Job:
    """A Job from a row of the jobs table; `decode` reads a JSON column, `instant` a time
    column (each backend stores them its own way)."""
    if not isinstance(row, dict):  # sqlite3.Row finds a name by comparing it with each
        row = dict(zip(row.keys(), row, strict=True))
    command = decode(row["command"])

    def required(column: str) -> datetime:
        value = instant(row[column])
        if value is None:
            raise StoreError(f"job {row['id']!r} has no {column}: the jobs table is damaged")
        return value

    return Job.from_fields(
        dict(
            id=row["id"],
            command=tuple(command) if isinstance(command, list) else command,
            priority=row["priority"],
            run_at=instant(row["run_at"]),
            max_retries=row["max_retries"],
            timeout_ms=row["timeout_ms"],
            env=decode(row["env"]),
            cwd=row["cwd"],
            queue=row["queue"],
            labels=decode(row["labels"]),
            state=JobState(row["state"]),
            attempts=row["attempts"],
            created_at=required("created_at"),
            updated_at=required("updated_at"),
            available_at=required("available_at"),
            started_at=instant(row["started_at"]),
            finished_at=instant(row["finished_at"]),
            exit_code=row["exit_code"],
            last_error=row["last_error"],
            worker_id=row["worker_id"],
            source=source_of(row),
            spec_hash=row["spec_hash"],
            lease_token=row["lease_token"],
            lease_expires_at=instant(row["lease_expires_at"]),
            output_tail=row["output_tail"],
            schedule_id=row["schedule_id"],
            needs=tuple(Need.from_declared(need) for need in decode(row["needs"])),
            waiting=row["waiting"],
            retry=None if row["retry"] is None else RetryPolicy.from_declared(decode(row["retry"])),
            deadline_ms=row["deadline_ms"],
            first_started_at=instant(row["first_started_at"]),
            concurrency_key=row["concurrency_key"],
            concurrency_limit=row["concurrency_limit"],
        )
    )


def source_of(row: Row) -> Source:
    """A job's Source from its origin, source_file and source_commit columns."""
    return Source(Origin(row["origin"]), row["source_file"], row["source_commit"])


# Errors both backends raise, worded once.


def conflict(job_id: str, source: Source) -> JobConflict:
    return JobConflict(
        f"job {job_id!r} already exists with a different spec (from {source}): choose another "
        "id, or re-submit the identical spec (a no-op)"
    )


def changed_meanwhile(job_id: str) -> ConcurrentChange:
    return ConcurrentChange(
        f"job {job_id!r} changed while the apply was planned (a worker claimed it?): "
        "nothing was written; run the apply again"
    )


def schedule_changed_meanwhile(schedule_id: str) -> ConcurrentChange:
    return ConcurrentChange(
        f"schedule {schedule_id!r} changed while the apply was planned: nothing was written; "
        "run the apply again"
    )


def schedule_conflict(schedule_id: str, source: Source) -> JobConflict:
    return JobConflict(
        f"schedule {schedule_id!r} already exists with a different spec (from {source}): "
        "choose another id, re-submit the identical spec (a no-op), or change it with "
        "`queuectl apply` or `queuectl enqueue`"
    )


def not_cancelable(job_id: str, state: str) -> InvalidState:
    if state == "processing":
        return InvalidState(
            f"job {job_id!r} is processing: use `queuectl cancel --kill {job_id}` to stop it",
            job_id=job_id,
            state=state,
        )
    return InvalidState(
        f"job {job_id!r} is {state}: only pending, failed or (with --kill) processing jobs "
        "can be canceled",
        job_id=job_id,
        state=state,
    )


def not_dead(job_id: str, state: str) -> InvalidState:
    return InvalidState(
        f"job {job_id!r} is {state}, not dead: `dlq retry` takes jobs listed by "
        "`queuectl dlq list`",
        job_id=job_id,
        state=state,
    )


def redact_url(url: str) -> str:
    """The URL with its password (user:password@ or ?password=) replaced by ***."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(?i)(^|[&;])(\w*password=)[^&;]*", r"\1\2***", query)
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # unsplitting can rewrite a URL (sqlite:////abs.db) it need not touch
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def sqlite_path(url: str) -> Path:
    """The file of a sqlite:/// URL: relative to the working directory, or absolute with ////."""
    path = url.removeprefix("sqlite:///")
    if not path:
        raise StoreError(
            f"{url!r} names no file: use sqlite:///relative.db or sqlite:////abs/path.db"
        )
    return Path(path)


def open_store(url: str, *, durable: bool = True) -> Store:
    """Open (and migrate) the store at `url`.

    durable=False lets a worker commit its own state transitions with
    synchronous=NORMAL: a transition lost to power loss means a re-run, which
    at-least-once delivery allows. Acknowledged user writes stay durable.
    """
    if url.startswith("sqlite:///"):
        from .sqlite import open_sqlite

        return open_sqlite(sqlite_path(url), url=url, durable=durable)
    if url.startswith(("postgresql://", "postgres://")):
        if not urlsplit(url).path.strip("/"):
            raise StoreError(
                f"{redact_url(url)!r} names no database: use postgresql://user@host:5432/dbname"
            )
        from .postgres import open_postgres

        return open_postgres(url, durable=durable)
    raise StoreError(
        f"unsupported database URL {redact_url(url)!r}: use sqlite:///path/to/file.db or "
        "postgresql://user@host:port/dbname"
    )
