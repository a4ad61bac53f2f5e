"""SQLite store: the only module that imports sqlite3.

Connections open with isolation_level=None so Python never starts a
transaction on its own; every write goes through `_write()` (BEGIN IMMEDIATE,
so a writer waits for the lock up front instead of failing on upgrade).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import (
    JobConflict,
    JobNotFound,
    MigrationFailed,
    SchemaTooNew,
    StoreError,
    StoreReplaced,
)
from ..models import Job, JobState, NewJob, WorkerInfo, from_ms, to_ms
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
)

MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
BUSY_TIMEOUT_MS = 60_000  # contention waits instead of failing with "database is locked"

INSERT_JOB = """
INSERT INTO jobs (id, command, priority, run_at, max_retries, timeout_ms, env, cwd, queue,
                  labels, state, attempts, created_at, updated_at, available_at, source,
                  source_commit, spec_hash)
VALUES (:id, :command, :priority, :run_at, :max_retries, :timeout_ms, :env, :cwd, :queue,
        :labels, 'pending', 0, :now, :now, :available_at, :source, :source_commit, :spec_hash)
"""
REPLACE_SPEC = """
UPDATE jobs SET command = :command, priority = :priority, run_at = :run_at,
                max_retries = :max_retries, timeout_ms = :timeout_ms, env = :env, cwd = :cwd,
                queue = :queue, labels = :labels, state = 'pending', attempts = 0,
                available_at = :available_at, updated_at = :now, started_at = NULL,
                finished_at = NULL, exit_code = NULL, last_error = NULL, worker_id = NULL,
                lease_token = NULL, lease_expires_at = NULL, output_tail = '', source = :source,
                source_commit = :source_commit, spec_hash = :spec_hash,
                created_at = CASE WHEN :fresh THEN :now ELSE created_at END
 WHERE id = :id AND state = :expected_state AND updated_at = :expected_updated_at
   AND state <> 'processing' AND lease_token IS NULL
"""
PRUNE_JOB = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now
 WHERE id = :id AND state = 'pending' AND updated_at = :expected_updated_at
"""
SPOOL_FILE_SEEN = "SELECT 1 FROM spool_files WHERE claim_id = :claim_id"
RECORD_SPOOL_FILE = """
INSERT INTO spool_files (claim_id, name, content_hash, job_ids, ingested_at)
VALUES (:claim_id, :name, :content_hash, :job_ids, :now)
"""
FORGET_SPOOL_FILES = "DELETE FROM spool_files WHERE ingested_at < :before"
GET_JOBS = "SELECT * FROM jobs WHERE id IN (SELECT value FROM json_each(:ids))"
APPLIED_PENDING = "SELECT * FROM jobs WHERE state = 'pending' AND source LIKE 'apply:%'"
EXISTING_HASHES = """
SELECT id, spec_hash, source FROM jobs WHERE id IN (SELECT value FROM json_each(:ids))
"""
GET_JOB = "SELECT * FROM jobs WHERE id = :id"
LIST_JOBS = """
SELECT * FROM jobs
 WHERE (:state IS NULL OR state = :state)
   AND (:queue IS NULL OR queue = :queue)
   AND NOT EXISTS (SELECT 1 FROM json_each(:labels) AS want
                    WHERE NOT EXISTS (SELECT 1 FROM json_each(jobs.labels) AS have
                                       WHERE have.key = want.key AND have.value = want.value))
 ORDER BY created_at, id
 LIMIT :limit
"""
COUNT_BY_STATE = "SELECT state, n FROM job_counts"  # kept by triggers (migration 0004)
# A running job keeps its claim (lease_token) while it is being stopped: see RELEASE_CLAIM.
CANCEL_JOB = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now,
                last_error = CASE WHEN state = 'processing' THEN 'canceled while running'
                                  ELSE last_error END
 WHERE id = :id AND (state IN ('pending', 'failed') OR (:running AND state = 'processing'))
"""
# A canceled job's process is gone: the claim it kept can go too.
RELEASE_CLAIM = """
UPDATE jobs SET lease_token = NULL, lease_expires_at = NULL,
                output_tail = coalesce(:output_tail, output_tail)
 WHERE id = :job_id AND lease_token = :token AND state = 'canceled'
"""
RETRY_DEAD = """
UPDATE jobs SET state = 'pending', attempts = 0, available_at = :now, updated_at = :now,
                exit_code = NULL, last_error = NULL, lease_token = NULL, lease_expires_at = NULL
 WHERE state = 'dead' AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))
RETURNING id
"""
PURGE_DEAD = "DELETE FROM jobs WHERE state = 'dead' RETURNING id"
READ_CONFIG = "SELECT key, value FROM config"
WRITE_CONFIG = """
INSERT INTO config (key, value) VALUES (:key, :value)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
REGISTER_WORKER = """
INSERT INTO workers (id, pid, host, queues, started_at, heartbeat_at, lease_expires_at)
VALUES (:id, :pid, :host, :queues, :started_at, :heartbeat_at, :lease_expires_at)
"""
HEARTBEAT_WORKER = """
UPDATE workers SET heartbeat_at = :now, lease_expires_at = :lease_until
 WHERE id = :worker_id
RETURNING stop_requested
"""
RENEW_JOB_LEASE = """
UPDATE jobs SET lease_expires_at = :lease_until
 WHERE id = :job_id AND lease_token = :token AND state IN ('processing', 'canceled')
RETURNING state
"""
DEREGISTER_WORKER = "DELETE FROM workers WHERE id = :worker_id"
LIVE_WORKERS = """
SELECT workers.*, (SELECT id FROM jobs WHERE state = 'processing' AND worker_id = workers.id
                    LIMIT 1) AS current_job
  FROM workers WHERE lease_expires_at >= :now ORDER BY started_at, id
"""
FORGET_DEAD_WORKERS = "DELETE FROM workers WHERE lease_expires_at < :before"
REQUEST_STOP = """
UPDATE workers SET stop_requested = 1
 WHERE :ids IS NULL OR id IN (SELECT value FROM json_each(:ids))
"""
CLAIM_NEXT = """
UPDATE jobs SET state = 'processing', worker_id = :worker_id, lease_token = :token,
                started_at = :now, updated_at = :now, finished_at = NULL,
                lease_expires_at = :lease_until
 WHERE id = (SELECT id FROM jobs INDEXED BY jobs_claim_order  -- else SQLite sorts all due jobs
              WHERE state IN ('pending', 'failed') AND available_at <= :now
                AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
              ORDER BY priority DESC, created_at, id
              LIMIT 1)
RETURNING *
"""
FINISH_JOB = """
UPDATE jobs SET state = :state, attempts = :attempts, available_at = :available_at,
                exit_code = :exit_code, last_error = :last_error,
                output_tail = coalesce(:output_tail, output_tail),
                updated_at = :now, finished_at = :now,
                lease_token = NULL, lease_expires_at = NULL
 WHERE id = :job_id AND lease_token = :token AND state = 'processing'
   AND (:expired_before IS NULL OR lease_expires_at < :expired_before)
"""
# Claimed jobs: running ones, and canceled ones whose process may still be stopping.
PROCESSING_JOBS = """
SELECT * FROM jobs WHERE state = 'processing'
UNION ALL
SELECT * FROM jobs INDEXED BY jobs_stopping WHERE state = 'canceled' AND lease_token IS NOT NULL
"""
DRAIN_BLOCKERS = """
SELECT count(*) FROM jobs
 WHERE (state = 'processing'
        OR state = 'failed'
        OR (state = 'pending' AND available_at <= :now)
        OR (state = 'canceled' AND lease_token IS NOT NULL))
   AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
"""
NEXT_AVAILABLE_AT = """
SELECT min(available_at) FROM jobs
 WHERE state IN ('pending', 'failed')
   AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
"""


def _job_params(job: NewJob, now_ms: int) -> dict[str, Any]:
    spec = job.spec
    command = list(spec.command) if isinstance(spec.command, tuple) else spec.command
    return {
        "id": job.id,
        "command": json.dumps(command),
        "priority": spec.priority,
        "run_at": to_ms(spec.run_at) if spec.run_at else None,
        "max_retries": job.max_retries,
        "timeout_ms": spec.timeout_ms,
        "env": json.dumps(dict(spec.env)),
        "cwd": spec.cwd,
        "queue": spec.queue,
        "labels": json.dumps(dict(spec.labels)),
        "now": now_ms,
        "available_at": to_ms(job.available_at),
        "source": job.source,
        "source_commit": job.source_commit,
        "spec_hash": spec.spec_hash,
    }


def _insert_jobs(conn: sqlite3.Connection, jobs: Sequence[NewJob], now_ms: int) -> list[bool]:
    """Insert jobs inside the caller's transaction; an identical existing id is a no-op."""
    existing = {
        row["id"]: row
        for row in conn.execute(EXISTING_HASHES, {"ids": json.dumps([j.id for j in jobs])})
    }
    created: list[bool] = []
    rows: list[dict[str, Any]] = []
    for job in jobs:
        found = existing.get(job.id)
        if found is not None:
            if found["spec_hash"] != job.spec.spec_hash:
                raise conflict(job.id, found["source"])
            created.append(False)
            continue
        created.append(True)
        rows.append(_job_params(job, now_ms))
    conn.executemany(INSERT_JOB, rows)
    return created


def _queues_param(queues: Sequence[str]) -> str | None:
    return json.dumps(list(queues)) if queues else None


def _job_from_row(row: sqlite3.Row) -> Job:
    return job_from_row(row, decode=json.loads, instant=from_ms)


def _worker_from_row(row: sqlite3.Row) -> WorkerInfo:
    return WorkerInfo(
        id=row["id"],
        pid=row["pid"],
        host=row["host"],
        started_at=from_ms(row["started_at"]),  # type: ignore[arg-type]
        heartbeat_at=from_ms(row["heartbeat_at"]),  # type: ignore[arg-type]
        lease_expires_at=from_ms(row["lease_expires_at"]),  # type: ignore[arg-type]
        current_job=row["current_job"],
        queues=tuple(json.loads(row["queues"])),
    )


MIGRATIONS = Path(__file__).parent / "migrations" / "sqlite"


def _migrations() -> list[tuple[int, Path]]:
    """(version, file) of every shipped migration, in order (read only when applied)."""
    return sorted((int(p.name[:4]), p) for p in MIGRATIONS.glob("*.sql"))


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (complete_statement keeps trigger bodies whole)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in buffer.splitlines()
    ):
        raise MigrationFailed(
            f"migration ends with an incomplete statement: {buffer.strip()[:60]!r}"
        )


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _advice(exc: sqlite3.Error) -> str | None:
    """What to do about an operational error a user can meet; None for a bug of ours."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"another process held the write lock for over {BUSY_TIMEOUT_MS // 1000} s; retry"
    if "full" in text or "disk I/O" in text:
        return "free some disk space and retry; nothing was written"
    if "readonly" in text or "unable to open" in text:
        return "check that the file and its directory are writable"
    return None


class SqliteStore:
    """A queue in one SQLite file, in WAL mode."""

    def __init__(self, path: Path, *, url: str, durable: bool = True) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"SQLite {sqlite3.sqlite_version} is too old: queuectl needs 3.35 or newer "
                "(upgrade Python or its sqlite3 library)"
            )
        self.url = url
        self.path = path
        if not path.parent.is_dir():
            raise StoreError(
                f"{url}: directory {str(path.parent)!r} does not exist: create it first"
            )
        if path.is_dir():
            raise StoreError(f"{url}: {str(path)!r} is a directory: name a database file")
        if not path.exists():
            # Queue data is private: create the file 0600 before SQLite does (WAL files copy it).
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(
                    f"{url}: cannot create {str(path)!r} ({exc.strerror}): "
                    "choose a writable location"
                ) from None
        self._file_id = _file_id(path)
        try:
            self.conn = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
        except sqlite3.Error as exc:
            advice = _advice(exc) or "check the path"
            raise StoreError(f"{url}: cannot open the database ({exc}): {advice}") from None
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            hint = _advice(exc)
            if hint is not None:  # a sound file we may not write to, or a busy one
                raise StoreError(f"{url}: {exc}: {hint}") from None
            raise StoreError(
                f"{url}: not a usable queuectl SQLite database ({exc}): "
                "point --db at another file or move this one away"
            ) from None
        except BaseException:
            self.conn.close()
            raise
        self._data_version = self._read_data_version()

    def close(self) -> None:
        self.conn.close()

    # -- plumbing ----------------------------------------------------------------

    def _check_same_file(self) -> None:
        """Refuse to go on once the file at our path is another one: a worker writing to a
        replaced (or deleted) file would leave new jobs pending and itself unlisted."""
        if _file_id(self.path) != self._file_id:
            raise StoreReplaced(
                f"{self.url}: the database file was replaced or removed while this process "
                "had it open: restart the process so that it opens the file now there"
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self._check_same_file()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (disk full, I/O error): don't mask it.
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            advice = _advice(exc)
            if advice is None:
                raise
            raise StoreError(f"{self.url}: {exc}: {advice}") from None

    def _migrate(self) -> None:
        migrations = _migrations()
        latest = migrations[-1][0]
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == latest:
            return
        if version > latest:
            raise SchemaTooNew(
                f"{self.url}: the database has schema version {version}, written by a newer "
                f"queuectl (this one knows up to {latest}): upgrade queuectl"
            )
        try:
            with self._write() as conn:
                # Re-read under the write lock: another process may have migrated meanwhile.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for number, path in migrations:
                    if number <= version:
                        continue
                    for statement in _statements(path.read_text(encoding="utf-8")):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number:d}")
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "encrypted" in str(exc):
                raise
            raise MigrationFailed(
                f"{self.url}: migrating the schema failed ({exc}); the database is unchanged"
            ) from None

    def _read_data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        self._check_same_file()
        version = self._read_data_version()
        changed, self._data_version = version != self._data_version, version
        return changed

    # -- jobs --------------------------------------------------------------------

    def insert_jobs(self, jobs: Sequence[NewJob], now: datetime) -> list[bool]:
        with self._write() as conn:
            return _insert_jobs(conn, jobs, to_ms(now))

    def ingest_spool_files(self, files: Sequence[SpoolFile], now: datetime) -> list[str | None]:
        now_ms = to_ms(now)
        outcomes: list[str | None] = []
        with self._write() as conn:
            for file in files:
                if conn.execute(SPOOL_FILE_SEEN, {"claim_id": file.claim_id}).fetchone():
                    outcomes.append(None)  # ingested before a crash: nothing to do twice
                    continue
                conn.execute("SAVEPOINT spool_file")
                try:
                    _insert_jobs(conn, file.jobs, now_ms)
                except JobConflict as exc:
                    conn.execute("ROLLBACK TO spool_file")
                    outcomes.append(str(exc))
                else:
                    conn.execute(
                        RECORD_SPOOL_FILE,
                        {
                            "claim_id": file.claim_id,
                            "name": file.name,
                            "content_hash": file.content_hash,
                            "now": now_ms,
                            "job_ids": json.dumps([job.id for job in file.jobs]),
                        },
                    )
                    outcomes.append(None)
                conn.execute("RELEASE spool_file")
        return outcomes

    def forget_spool_files(self, before: datetime) -> int:
        with self._write() as conn:
            return conn.execute(FORGET_SPOOL_FILES, {"before": to_ms(before)}).rowcount

    def get_job(self, job_id: str) -> Job | None:
        row = self.conn.execute(GET_JOB, {"id": job_id}).fetchone()
        return _job_from_row(row) if row else None

    def get_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        rows = self.conn.execute(GET_JOBS, {"ids": json.dumps(list(job_ids))})
        return {row["id"]: _job_from_row(row) for row in rows}

    def applied_pending_jobs(self) -> list[Job]:
        return [_job_from_row(row) for row in self.conn.execute(APPLIED_PENDING)]

    def apply_changes(self, changes: Sequence[Change], now: datetime) -> None:
        now_ms = to_ms(now)
        with self._write() as conn:
            for change in changes:
                expected = change.expected
                guard = {
                    "expected_state": expected[0].value if expected else None,
                    "expected_updated_at": to_ms(expected[1]) if expected else None,
                }
                if change.action == "create" and change.job is not None:
                    try:
                        conn.execute(INSERT_JOB, _job_params(change.job, now_ms))
                    except sqlite3.IntegrityError:
                        raise changed_meanwhile(change.job_id) from None
                    continue
                if change.action in ("update", "replace") and change.job is not None:
                    params = {
                        **_job_params(change.job, now_ms),
                        **guard,
                        "fresh": change.action == "replace",
                    }
                    written = conn.execute(REPLACE_SPEC, params).rowcount
                elif change.action == "prune":
                    params = {"id": change.job_id, "now": now_ms, **guard}
                    written = conn.execute(PRUNE_JOB, params).rowcount
                else:
                    raise ValueError(f"unknown change {change.action!r}")
                if written != 1:
                    raise changed_meanwhile(change.job_id)

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
            "labels": json.dumps(dict(labels or {})),
            "limit": -1 if limit is None else limit,
        }
        return [_job_from_row(row) for row in self.conn.execute(LIST_JOBS, params)]

    def count_by_state(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for row in self.conn.execute(COUNT_BY_STATE):
            counts[JobState(row["state"])] = row["n"]
        return counts

    def cancel_job(self, job_id: str, now: datetime, *, running: bool = False) -> Job:
        with self._write() as conn:
            before = self.get_job(job_id)
            if before is None:
                raise JobNotFound(job_id)
            params = {"id": job_id, "now": to_ms(now), "running": running}
            if conn.execute(CANCEL_JOB, params).rowcount == 0 and not (running and before.stopping):
                raise not_cancelable(job_id, before.state.value)
            return before

    def retry_dead(self, job_ids: Sequence[str] | None, now: datetime) -> list[str]:
        with self._write() as conn:
            if job_ids is not None:
                for job_id in job_ids:
                    job = self.get_job(job_id)
                    if job is None:
                        raise JobNotFound(job_id)
                    if job.state is not JobState.DEAD:
                        raise not_dead(job_id, job.state.value)
            ids = json.dumps(list(job_ids)) if job_ids is not None else None
            return [row["id"] for row in conn.execute(RETRY_DEAD, {"ids": ids, "now": to_ms(now)})]

    def purge_dead(self) -> list[str]:
        with self._write() as conn:
            return [row["id"] for row in conn.execute(PURGE_DEAD)]

    # -- config ------------------------------------------------------------------

    def read_config(self) -> dict[str, str]:
        return {row["key"]: row["value"] for row in self.conn.execute(READ_CONFIG)}

    def write_config(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(WRITE_CONFIG, {"key": key, "value": value})

    # -- workers -----------------------------------------------------------------

    def register_worker(self, worker: WorkerInfo) -> None:
        with self._write() as conn:
            conn.execute(FORGET_DEAD_WORKERS, {"before": to_ms(worker.started_at)})
            conn.execute(
                REGISTER_WORKER,
                {
                    "id": worker.id,
                    "pid": worker.pid,
                    "host": worker.host,
                    "queues": json.dumps(list(worker.queues)),
                    "started_at": to_ms(worker.started_at),
                    "heartbeat_at": to_ms(worker.heartbeat_at),
                    "lease_expires_at": to_ms(worker.lease_expires_at),
                },
            )

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
            "now": to_ms(now),
            "lease_until": to_ms(lease_until),
            "job_id": job_id,
            "token": token,
        }
        with self._write() as conn:
            row = conn.execute(HEARTBEAT_WORKER, params).fetchone()
            job = conn.execute(RENEW_JOB_LEASE, params).fetchone() if job_id else None
        return Heartbeat(
            stop_requested=bool(row and row[0]),
            claim_held=job_id is None or (job is not None and job[0] == "processing"),
            canceled=job is not None and job[0] == "canceled",
        )

    def deregister_worker(self, worker_id: str) -> None:
        with self._write() as conn:
            conn.execute(DEREGISTER_WORKER, {"worker_id": worker_id})

    def live_workers(self, now: datetime) -> list[WorkerInfo]:
        return [_worker_from_row(r) for r in self.conn.execute(LIVE_WORKERS, {"now": to_ms(now)})]

    def request_stop(self, worker_ids: Sequence[str] | None = None) -> int:
        ids = json.dumps(list(worker_ids)) if worker_ids is not None else None
        with self._write() as conn:
            return conn.execute(REQUEST_STOP, {"ids": ids}).rowcount

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
            "now": to_ms(now),
            "lease_until": to_ms(lease_until),
            "queues": _queues_param(queues),
        }
        with self._write() as conn:
            row = conn.execute(CLAIM_NEXT, params).fetchone()
        return _job_from_row(row) if row else None

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
            "expired_before": to_ms(expired_before) if expired_before else None,
            "job_id": job_id,
            "token": token,
            "state": outcome.state.value,
            "attempts": outcome.attempts,
            "available_at": to_ms(outcome.available_at),
            "exit_code": outcome.exit_code,
            "last_error": outcome.last_error,
            "output_tail": outcome.output_tail,
            "now": to_ms(now),
        }
        with self._write() as conn:
            return conn.execute(FINISH_JOB, params).rowcount == 1

    def release_claim(self, job_id: str, token: str, output_tail: str | None) -> bool:
        params = {"job_id": job_id, "token": token, "output_tail": output_tail}
        with self._write() as conn:
            return conn.execute(RELEASE_CLAIM, params).rowcount == 1

    def processing_jobs(self) -> list[Job]:
        return [_job_from_row(r) for r in self.conn.execute(PROCESSING_JOBS)]

    def drain_blockers(self, queues: Sequence[str], now: datetime) -> int:
        params = {"now": to_ms(now), "queues": _queues_param(queues)}
        return int(self.conn.execute(DRAIN_BLOCKERS, params).fetchone()[0])

    def next_available_at(self, queues: Sequence[str]) -> datetime | None:
        row = self.conn.execute(NEXT_AVAILABLE_AT, {"queues": _queues_param(queues)}).fetchone()
        return from_ms(row[0])
