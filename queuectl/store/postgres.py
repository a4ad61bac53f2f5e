"""PostgreSQL store: the only module that imports psycopg (the `postgres` extra).

Every host's instants are translated to the database clock (each connection
measures its offset to `clock_timestamp()`), so hosts with skewed clocks agree
on leases and due times. Claims use FOR UPDATE SKIP LOCKED; writes that make
work available send NOTIFY, which idle workers LISTEN for. A lost connection is
re-established with backoff and the operation retried.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from ..errors import (
    JobConflict,
    JobNotFound,
    MigrationFailed,
    SchemaTooNew,
    StoreError,
)
from ..models import Job, JobState, NewJob, WorkerInfo, utcnow
from . import (
    Change,
    Heartbeat,
    SpoolFile,
    Transition,
    changed_meanwhile,
    conflict,
    job_from_row,
    not_cancelable,
    not_dead,
    redact_url,
)

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb
except ImportError as exc:  # pragma: no cover - depends on the install
    raise StoreError(
        "PostgreSQL support needs psycopg 3: install queuectl with its postgres extra "
        "(pip install '.[postgres]' in a clone) or pip install 'psycopg[binary]'"
    ) from exc

T = TypeVar("T")
CHANNEL = "queuectl"
MIGRATION_LOCK = 0x71756575  # pg_advisory_xact_lock key: one migrator at a time
RECONNECT_FOR_S = 120.0
MIN_SKEW = timedelta(seconds=1)
SKEW_EVERY_S = 60.0  # keep retrying a lost connection this long before giving up

INSERT_JOB = """
INSERT INTO jobs (id, command, priority, run_at, max_retries, timeout_ms, env, cwd, queue,
                  labels, state, attempts, created_at, updated_at, available_at, source,
                  source_commit, spec_hash)
VALUES (%(id)s, %(command)s, %(priority)s, %(run_at)s, %(max_retries)s, %(timeout_ms)s,
        %(env)s, %(cwd)s, %(queue)s, %(labels)s, 'pending', 0, %(now)s, %(now)s,
        %(available_at)s, %(source)s, %(source_commit)s, %(spec_hash)s)
ON CONFLICT (id) DO NOTHING
"""
EXISTING_HASHES = "SELECT id, spec_hash, source FROM jobs WHERE id = ANY(%(ids)s)"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"
REPLACE_SPEC = """
UPDATE jobs SET command = %(command)s, priority = %(priority)s, run_at = %(run_at)s,
                max_retries = %(max_retries)s, timeout_ms = %(timeout_ms)s, env = %(env)s,
                cwd = %(cwd)s, queue = %(queue)s, labels = %(labels)s, state = 'pending',
                attempts = 0, available_at = %(available_at)s, updated_at = %(now)s,
                started_at = NULL, finished_at = NULL, exit_code = NULL, last_error = NULL,
                worker_id = NULL, lease_token = NULL, lease_expires_at = NULL, output_tail = '',
                source = %(source)s, source_commit = %(source_commit)s,
                spec_hash = %(spec_hash)s,
                created_at = CASE WHEN %(fresh)s THEN %(now)s ELSE created_at END
 WHERE id = %(id)s AND state = %(expected_state)s AND updated_at = %(expected_updated_at)s
   AND state <> 'processing' AND lease_token IS NULL
"""
PRUNE_JOB = """
UPDATE jobs SET state = 'canceled', updated_at = %(now)s, finished_at = %(now)s
 WHERE id = %(id)s AND state = 'pending' AND updated_at = %(expected_updated_at)s
"""
SPOOL_FILE_SEEN = "SELECT 1 FROM spool_files WHERE claim_id = %(claim_id)s"
RECORD_SPOOL_FILE = """
INSERT INTO spool_files (claim_id, name, content_hash, job_ids, ingested_at)
VALUES (%(claim_id)s, %(name)s, %(content_hash)s, %(job_ids)s, %(now)s)
"""
FORGET_SPOOL_FILES = "DELETE FROM spool_files WHERE ingested_at < %(before)s"
GET_JOB = "SELECT * FROM jobs WHERE id = %(id)s"
GET_JOBS = "SELECT * FROM jobs WHERE id = ANY(%(ids)s)"
APPLIED_PENDING = "SELECT * FROM jobs WHERE state = 'pending' AND source LIKE 'apply:%%'"
LIST_JOBS = """
SELECT * FROM jobs
 WHERE (%(state)s::text IS NULL OR state = %(state)s)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s)
   AND labels @> %(labels)s
 ORDER BY created_at, id
 LIMIT %(limit)s
"""
COUNT_BY_STATE = "SELECT state, count(*) AS n FROM jobs GROUP BY state"
# A running job keeps its claim (lease_token) while it is being stopped: see RELEASE_CLAIM.
CANCEL_JOB = """
UPDATE jobs SET state = 'canceled', updated_at = %(now)s, finished_at = %(now)s,
                last_error = CASE WHEN state = 'processing' THEN 'canceled while running'
                                  ELSE last_error END
 WHERE id = %(id)s AND (state IN ('pending', 'failed') OR (%(running)s AND state = 'processing'))
"""
# A canceled job's process is gone: the claim it kept can go too.
RELEASE_CLAIM = """
UPDATE jobs SET lease_token = NULL, lease_expires_at = NULL,
                output_tail = coalesce(%(output_tail)s, output_tail)
 WHERE id = %(job_id)s AND lease_token = %(token)s AND state = 'canceled'
"""
RETRY_DEAD = """
UPDATE jobs SET state = 'pending', attempts = 0, available_at = %(now)s, updated_at = %(now)s,
                exit_code = NULL, last_error = NULL, lease_token = NULL, lease_expires_at = NULL
 WHERE state = 'dead' AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
RETURNING id
"""
PURGE_DEAD = "DELETE FROM jobs WHERE state = 'dead' RETURNING id"
READ_CONFIG = "SELECT key, value FROM config"
WRITE_CONFIG = """
INSERT INTO config (key, value) VALUES (%(key)s, %(value)s)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
FORGET_DEAD_WORKERS = "DELETE FROM workers WHERE lease_expires_at < %(before)s"
REGISTER_WORKER = """
INSERT INTO workers (id, pid, host, queues, started_at, heartbeat_at, lease_expires_at)
VALUES (%(id)s, %(pid)s, %(host)s, %(queues)s, %(started_at)s, %(heartbeat_at)s,
        %(lease_expires_at)s)
"""
HEARTBEAT_WORKER = """
UPDATE workers SET heartbeat_at = %(now)s, lease_expires_at = %(lease_until)s
 WHERE id = %(worker_id)s
RETURNING stop_requested
"""
RENEW_JOB_LEASE = """
UPDATE jobs SET lease_expires_at = %(lease_until)s
 WHERE id = %(job_id)s AND lease_token = %(token)s AND state IN ('processing', 'canceled')
RETURNING state
"""
DEREGISTER_WORKER = "DELETE FROM workers WHERE id = %(worker_id)s"
LIVE_WORKERS = """
SELECT workers.*, (SELECT id FROM jobs WHERE state = 'processing' AND worker_id = workers.id
                    LIMIT 1) AS current_job
  FROM workers WHERE lease_expires_at >= %(now)s ORDER BY started_at, id
"""
REQUEST_STOP = """
UPDATE workers SET stop_requested = true
 WHERE %(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[])
"""
CLAIM_NEXT = """
WITH next AS (
    SELECT id FROM jobs
     WHERE state IN ('pending', 'failed') AND available_at <= %(now)s
       AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
     ORDER BY priority DESC, created_at, id
     LIMIT 1
     FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'processing', worker_id = %(worker_id)s, lease_token = %(token)s,
                started_at = %(now)s, updated_at = %(now)s, finished_at = NULL,
                lease_expires_at = %(lease_until)s
  FROM next
 WHERE jobs.id = next.id
RETURNING jobs.*
"""
FINISH_JOB = """
UPDATE jobs SET state = %(state)s, attempts = %(attempts)s, available_at = %(available_at)s,
                exit_code = %(exit_code)s, last_error = %(last_error)s,
                output_tail = coalesce(%(output_tail)s, output_tail),
                updated_at = %(now)s, finished_at = %(now)s,
                lease_token = NULL, lease_expires_at = NULL
 WHERE id = %(job_id)s AND lease_token = %(token)s AND state = 'processing'
   AND (%(expired_before)s::timestamptz IS NULL OR lease_expires_at < %(expired_before)s)
"""
# Claimed jobs: running ones, and canceled ones whose process may still be stopping.
PROCESSING_JOBS = """
SELECT * FROM jobs WHERE state = 'processing'
UNION ALL
SELECT * FROM jobs WHERE state = 'canceled' AND lease_token IS NOT NULL
"""
CLAIMED_WITH = "SELECT * FROM jobs WHERE state = 'processing' AND lease_token = %(token)s"
DRAIN_BLOCKERS = """
SELECT count(*) AS n FROM jobs
 WHERE (state = 'processing' OR state = 'failed'
        OR (state = 'pending' AND available_at <= %(now)s)
        OR (state = 'canceled' AND lease_token IS NOT NULL))
   AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
"""
NEXT_AVAILABLE_AT = """
SELECT min(available_at) AS at FROM jobs
 WHERE state IN ('pending', 'failed')
   AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
"""


MIGRATIONS = Path(__file__).parent / "migrations" / "postgres"


def _migrations() -> list[tuple[int, str]]:
    return sorted(
        (int(p.name[:4]), p.read_text(encoding="utf-8")) for p in MIGRATIONS.glob("*.sql")
    )


class PostgresStore:
    """A queue in one PostgreSQL database, shared by any number of hosts."""

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self.url = url
        self.display = redact_url(url)  # for messages: never print a password
        self.durable = durable
        self._skew = timedelta(0)
        self._skew_measured = 0.0
        self._listen: psycopg.Connection[Any] | None = None
        self.conn = self._connect()
        try:
            self._migrate()
        except psycopg.Error as exc:
            self.conn.close()
            raise MigrationFailed(
                f"{self.display}: migrating the schema failed ({exc}); the database is unchanged"
            ) from None
        except BaseException:
            self.conn.close()
            raise

    # -- plumbing ------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"cannot connect to {self.display} ({reason}): check the URL and that the server "
                "is running"
            ) from None
        if not self.durable:  # a worker's own transitions: a lost one only means a re-run
            conn.execute("SET synchronous_commit = off")
        self._measure_skew(conn)
        return conn

    def _measure_skew(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT clock_timestamp() AS now").fetchone()
        skew = row["now"] - utcnow() if row else timedelta(0)
        # Below a second, the offset is measurement noise (and NTP keeps hosts closer):
        # correcting it would only make a job enqueued here due a moment later there.
        self._skew = skew if abs(skew) >= MIN_SKEW else timedelta(0)
        self._skew_measured = time.monotonic()

    def _db(self, value: datetime | None) -> datetime | None:
        return None if value is None else value + self._skew

    def _local(self, value: datetime | None) -> datetime | None:
        return None if value is None else value - self._skew

    def _run(
        self,
        operation: Callable[[psycopg.Connection[Any]], T],
        *,
        already_done: Callable[[psycopg.Connection[Any]], T | None] | None = None,
    ) -> T:
        """Run an operation; if the connection is lost, reconnect with backoff and retry.

        A connection can drop after the server committed: before a retry,
        `already_done` may find the first try's result, so it is not done twice.
        """
        delay, deadline = 0.1, time.monotonic() + RECONNECT_FOR_S
        retrying = False
        while True:
            try:
                if time.monotonic() - self._skew_measured > SKEW_EVERY_S:
                    self._measure_skew(self.conn)  # clocks get stepped (NTP after boot)
                if retrying and already_done is not None:
                    done = already_done(self.conn)
                    if done is not None:
                        return done
                return operation(self.conn)
            except psycopg.OperationalError as exc:
                if not (self.conn.closed or self.conn.broken):
                    raise StoreError(f"{self.display}: {exc}") from None
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{self.display}: connection lost and not regained: {exc}"
                    ) from None
            except psycopg.DataError as exc:
                raise StoreError(f"{self.display}: the server refused a value: {exc}") from None
            retrying = True
            while True:
                time.sleep(delay)  # backing off from a server that is down
                delay = min(delay * 2, 5.0)
                try:
                    self.conn = self._connect()
                    break
                except StoreError:
                    if time.monotonic() > deadline:
                        raise

    @contextlib.contextmanager
    def _tx(self, conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
        with conn.transaction():
            yield conn

    def _migrate(self) -> None:
        migrations = _migrations()
        latest = migrations[-1][0]
        with self._tx(self.conn) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # The version table itself is the one thing that cannot be versioned.
            conn.execute("CREATE TABLE IF NOT EXISTS queuectl_schema (version integer NOT NULL)")
            row = conn.execute("SELECT max(version) AS v FROM queuectl_schema").fetchone()
            version = (row or {}).get("v") or 0
            if version > latest:
                raise SchemaTooNew(
                    f"{self.display}: the database has schema version {version}, written by a "
                    f"newer queuectl (this one knows up to {latest}): upgrade queuectl"
                )
            for number, sql in migrations:
                if number > version:
                    conn.execute(sql.encode())
            if latest > version:
                conn.execute("DELETE FROM queuectl_schema")
                conn.execute("INSERT INTO queuectl_schema (version) VALUES (%s)", (latest,))

    def close(self) -> None:
        self.conn.close()
        if self._listen is not None:
            self._listen.close()

    def changed(self) -> bool:
        """True when a NOTIFY arrived (or the listening connection had to be re-made)."""
        try:
            if self._listen is None or self._listen.closed or self._listen.broken:
                self._listen = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                self._listen.execute(f"LISTEN {CHANNEL}")
                return True
            return sum(1 for _ in self._listen.notifies(timeout=0)) > 0
        except psycopg.Error:
            self._listen = None  # fall back to polling until the server is back
            return True

    def _job(self, row: Mapping[str, Any]) -> Job:
        return job_from_row(row, decode=lambda value: value, instant=self._local)

    def _job_params(self, job: NewJob, now: datetime) -> dict[str, Any]:
        spec = job.spec
        command = list(spec.command) if isinstance(spec.command, tuple) else spec.command
        return {
            "id": job.id,
            "command": Jsonb(command),
            "priority": spec.priority,
            "run_at": self._db(spec.run_at),
            "max_retries": job.max_retries,
            "timeout_ms": spec.timeout_ms,
            "env": Jsonb(dict(spec.env)),
            "cwd": spec.cwd,
            "queue": spec.queue,
            "labels": Jsonb(dict(spec.labels)),
            "now": self._db(now),
            "available_at": self._db(job.available_at),
            "source": job.source,
            "source_commit": job.source_commit,
            "spec_hash": spec.spec_hash,
        }

    def _insert_jobs(
        self, conn: psycopg.Connection[Any], jobs: Sequence[NewJob], now: datetime
    ) -> list[bool]:
        ids = [job.id for job in jobs]
        existing = {r["id"]: r for r in conn.execute(EXISTING_HASHES, {"ids": ids}).fetchall()}
        created: list[bool] = []
        rows = []
        for job in jobs:
            found = existing.get(job.id)
            if found is None:
                created.append(True)
                rows.append(self._job_params(job, now))
                continue
            if found["spec_hash"] != job.spec.spec_hash:
                raise conflict(job.id, found["source"])
            created.append(False)
        if rows:
            with conn.cursor() as cur:
                cur.executemany(INSERT_JOB, rows)
                if cur.rowcount != len(rows):  # a concurrent insert took an id: check it
                    raced = {r["id"]: r for r in conn.execute(EXISTING_HASHES, {"ids": ids})}
                    for job in jobs:
                        if raced[job.id]["spec_hash"] != job.spec.spec_hash:
                            raise conflict(job.id, raced[job.id]["source"])
            conn.execute(NOTIFY)
        return created

    # -- jobs ----------------------------------------------------------------------------

    def insert_jobs(self, jobs: Sequence[NewJob], now: datetime) -> list[bool]:
        def op(conn: psycopg.Connection[Any]) -> list[bool]:
            with self._tx(conn):
                return self._insert_jobs(conn, jobs, now)

        return self._run(op)

    def ingest_spool_files(self, files: Sequence[SpoolFile], now: datetime) -> list[str | None]:
        def op(conn: psycopg.Connection[Any]) -> list[str | None]:
            outcomes: list[str | None] = []
            with self._tx(conn):
                for file in files:
                    if conn.execute(SPOOL_FILE_SEEN, {"claim_id": file.claim_id}).fetchone():
                        outcomes.append(None)
                        continue
                    try:
                        with conn.transaction():  # a savepoint: one file all-or-nothing
                            self._insert_jobs(conn, file.jobs, now)
                            conn.execute(
                                RECORD_SPOOL_FILE,
                                {
                                    "claim_id": file.claim_id,
                                    "name": file.name,
                                    "content_hash": file.content_hash,
                                    "now": self._db(now),
                                    "job_ids": Jsonb([job.id for job in file.jobs]),
                                },
                            )
                    except JobConflict as exc:
                        outcomes.append(str(exc))
                    else:
                        outcomes.append(None)
            return outcomes

        return self._run(op)

    def forget_spool_files(self, before: datetime) -> int:
        def op(conn: psycopg.Connection[Any]) -> int:
            return conn.execute(FORGET_SPOOL_FILES, {"before": self._db(before)}).rowcount

        return self._run(op)

    def get_job(self, job_id: str) -> Job | None:
        row = self._run(lambda conn: conn.execute(GET_JOB, {"id": job_id}).fetchone())
        return self._job(row) if row else None

    def get_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        rows = self._run(lambda conn: conn.execute(GET_JOBS, {"ids": list(job_ids)}).fetchall())
        return {row["id"]: self._job(row) for row in rows}

    def applied_pending_jobs(self) -> list[Job]:
        return [self._job(r) for r in self._run(lambda c: c.execute(APPLIED_PENDING).fetchall())]

    def apply_changes(self, changes: Sequence[Change], now: datetime) -> None:
        def op(conn: psycopg.Connection[Any]) -> None:
            with self._tx(conn):
                for change in changes:
                    expected = change.expected
                    guard = {
                        "expected_state": expected[0].value if expected else None,
                        "expected_updated_at": self._db(expected[1]) if expected else None,
                    }
                    if change.action == "create" and change.job is not None:
                        if (
                            conn.execute(INSERT_JOB, self._job_params(change.job, now)).rowcount
                            != 1
                        ):
                            raise changed_meanwhile(change.job_id)
                        continue
                    if change.action in ("update", "replace") and change.job is not None:
                        params = {
                            **self._job_params(change.job, now),
                            **guard,
                            "fresh": change.action == "replace",
                        }
                        written = conn.execute(REPLACE_SPEC, params).rowcount
                    elif change.action == "prune":
                        params = {"id": change.job_id, "now": self._db(now), **guard}
                        written = conn.execute(PRUNE_JOB, params).rowcount
                    else:
                        raise ValueError(f"unknown change {change.action!r}")
                    if written != 1:
                        raise changed_meanwhile(change.job_id)
                conn.execute(NOTIFY)

        self._run(op)

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        params = {
            "state": state.value if state else None,
            "queue": queue,
            "labels": Jsonb(dict(labels or {})),
            "limit": limit,
        }
        rows = self._run(lambda conn: conn.execute(LIST_JOBS, params).fetchall())
        return [self._job(row) for row in rows]

    def count_by_state(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for row in self._run(lambda conn: conn.execute(COUNT_BY_STATE).fetchall()):
            counts[JobState(row["state"])] = row["n"]
        return counts

    def cancel_job(self, job_id: str, now: datetime, *, running: bool = False) -> Job:
        def op(conn: psycopg.Connection[Any]) -> Job:
            with self._tx(conn):
                before = conn.execute(GET_JOB + " FOR UPDATE", {"id": job_id}).fetchone()
                if before is None:
                    raise JobNotFound(job_id)
                params = {"id": job_id, "now": self._db(now), "running": running}
                job = self._job(before)
                if conn.execute(CANCEL_JOB, params).rowcount == 0 and not (
                    running and job.stopping
                ):
                    raise not_cancelable(job_id, before["state"])
                return job

        return self._run(op)

    def retry_dead(self, job_ids: Sequence[str] | None, now: datetime) -> list[str]:
        def op(conn: psycopg.Connection[Any]) -> list[str]:
            with self._tx(conn):
                for job_id in job_ids or ():
                    row = conn.execute(GET_JOB + " FOR UPDATE", {"id": job_id}).fetchone()
                    if row is None:
                        raise JobNotFound(job_id)
                    if row["state"] != JobState.DEAD:
                        raise not_dead(job_id, row["state"])
                ids = list(job_ids) if job_ids is not None else None
                rows = conn.execute(RETRY_DEAD, {"ids": ids, "now": self._db(now)}).fetchall()
                conn.execute(NOTIFY)
                return [row["id"] for row in rows]

        return self._run(op)

    def purge_dead(self) -> list[str]:
        return [r["id"] for r in self._run(lambda conn: conn.execute(PURGE_DEAD).fetchall())]

    # -- config --------------------------------------------------------------------------

    def read_config(self) -> dict[str, str]:
        rows = self._run(lambda conn: conn.execute(READ_CONFIG).fetchall())
        return {row["key"]: row["value"] for row in rows}

    def write_config(self, key: str, value: str) -> None:
        self._run(lambda conn: conn.execute(WRITE_CONFIG, {"key": key, "value": value}))

    # -- workers -------------------------------------------------------------------------

    def register_worker(self, worker: WorkerInfo) -> None:
        params = {
            "id": worker.id,
            "pid": worker.pid,
            "host": worker.host,
            "queues": Jsonb(list(worker.queues)),
            "started_at": self._db(worker.started_at),
            "heartbeat_at": self._db(worker.heartbeat_at),
            "lease_expires_at": self._db(worker.lease_expires_at),
            "before": self._db(worker.started_at),
        }

        def op(conn: psycopg.Connection[Any]) -> None:
            with self._tx(conn):
                conn.execute(FORGET_DEAD_WORKERS, params)
                conn.execute(REGISTER_WORKER, params)

        self._run(op)

    def heartbeat(
        self,
        worker_id: str,
        now: datetime,
        lease_until: datetime,
        job_id: str | None,
        token: str | None,
    ) -> Heartbeat:
        params = {
            "worker_id": worker_id,
            "now": self._db(now),
            "lease_until": self._db(lease_until),
            "job_id": job_id,
            "token": token,
        }

        def op(conn: psycopg.Connection[Any]) -> Heartbeat:
            with self._tx(conn):
                row = conn.execute(HEARTBEAT_WORKER, params).fetchone()
                job = conn.execute(RENEW_JOB_LEASE, params).fetchone() if job_id else None
            return Heartbeat(
                stop_requested=bool(row and row["stop_requested"]),
                claim_held=job_id is None or (job is not None and job["state"] == "processing"),
                canceled=job is not None and job["state"] == "canceled",
            )

        return self._run(op)

    def deregister_worker(self, worker_id: str) -> None:
        self._run(lambda conn: conn.execute(DEREGISTER_WORKER, {"worker_id": worker_id}))

    def live_workers(self, now: datetime) -> list[WorkerInfo]:
        rows = self._run(lambda conn: conn.execute(LIVE_WORKERS, {"now": self._db(now)}).fetchall())
        return [
            WorkerInfo(
                id=row["id"],
                pid=row["pid"],
                host=row["host"],
                started_at=row["started_at"] - self._skew,
                heartbeat_at=row["heartbeat_at"] - self._skew,
                lease_expires_at=row["lease_expires_at"] - self._skew,
                current_job=row["current_job"],
                queues=tuple(row["queues"]),
            )
            for row in rows
        ]

    def request_stop(self, worker_ids: Sequence[str] | None = None) -> int:
        ids = list(worker_ids) if worker_ids is not None else None
        return self._run(lambda conn: conn.execute(REQUEST_STOP, {"ids": ids}).rowcount)

    def claim_next(
        self,
        worker_id: str,
        queues: Sequence[str],
        now: datetime,
        lease_until: datetime,
        token: str,
    ) -> Job | None:
        params = {
            "worker_id": worker_id,
            "token": token,
            "now": self._db(now),
            "lease_until": self._db(lease_until),
            "queues": list(queues) or None,
        }

        row = self._run(
            lambda conn: conn.execute(CLAIM_NEXT, params).fetchone(),
            already_done=lambda conn: conn.execute(CLAIMED_WITH, params).fetchone(),
        )
        return self._job(row) if row else None

    def finish(
        self,
        job_id: str,
        token: str,
        outcome: Transition,
        now: datetime,
        *,
        expired_before: datetime | None = None,
    ) -> bool:
        params = {
            "expired_before": self._db(expired_before),
            "job_id": job_id,
            "token": token,
            "state": outcome.state.value,
            "attempts": outcome.attempts,
            "available_at": self._db(outcome.available_at),
            "exit_code": outcome.exit_code,
            "last_error": outcome.last_error,
            "output_tail": outcome.output_tail,
            "now": self._db(now),
        }

        return self._run(lambda conn: conn.execute(FINISH_JOB, params).rowcount == 1)

    def release_claim(self, job_id: str, token: str, output_tail: str | None) -> bool:
        params = {"job_id": job_id, "token": token, "output_tail": output_tail}
        return self._run(lambda conn: conn.execute(RELEASE_CLAIM, params).rowcount == 1)

    def processing_jobs(self) -> list[Job]:
        return [self._job(r) for r in self._run(lambda c: c.execute(PROCESSING_JOBS).fetchall())]

    def drain_blockers(self, queues: Sequence[str], now: datetime) -> int:
        params = {"now": self._db(now), "queues": list(queues) or None}
        row = self._run(lambda conn: conn.execute(DRAIN_BLOCKERS, params).fetchone())
        return int(row["n"]) if row else 0

    def next_available_at(self, queues: Sequence[str]) -> datetime | None:
        params = {"queues": list(queues) or None}
        row = self._run(lambda conn: conn.execute(NEXT_AVAILABLE_AT, params).fetchone())
        return self._local(row["at"]) if row else None
