"""One SQL store for every dialect: the queue's statements and logic, written once.

`SqlStore` holds every statement (`Statements`) and every method of the Store
protocol. A `Dialect` supplies only what truly differs between SQLite and
PostgreSQL: the connection and its transactions (and, for PostgreSQL,
reconnecting), the placeholder style, how instants and JSON are encoded, a few
SQL fragments, wake-ups, and how the schema version is kept.

Writes are safe to replay. A dialect that loses its connection may run a write
again without knowing whether the first try committed; so each write is either
idempotent, or passes `already_done`, which looks at the rows for the first
try's effect and returns its result instead of failing falsely.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import (
    JobConflict,
    JobNotFound,
    NeedsCycle,
    ScheduleNotFound,
    SchemaTooNew,
    StoreError,
    UnknownNeed,
)
from ..models import (
    END_STATES,
    NEED_MET_BY,
    Job,
    JobSpec,
    JobState,
    Need,
    NeedOn,
    NewJob,
    Origin,
    Schedule,
    ScheduleSpec,
    WorkerInfo,
)
from . import (
    Change,
    Heartbeat,
    NewSchedule,
    RunCount,
    ScheduleChange,
    SpoolFile,
    Tick,
    Transition,
    changed_meanwhile,
    conflict,
    job_from_row,
    not_cancelable,
    not_dead,
    redact_url,
    schedule_changed_meanwhile,
    schedule_conflict,
    source_of,
)

T = TypeVar("T")
Conn = Any  # a sqlite3 or psycopg connection: execute(sql, params) -> cursor
MIGRATIONS = Path(__file__).parent / "migrations"
FOLD_AFTER_ROWS = 1000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # run_stats rows of minutes folded together


class Dialect(Protocol):
    """What one database engine supplies to SqlStore."""

    url: str
    name: str  # "sqlite" or "postgres": picks the migration files
    fragments: Mapping[str, str]  # the SQL parts that differ, by the name Statements uses

    def prepare(self, sql: str) -> str:
        """`sql` with `:name` placeholders in this driver's style."""
        ...

    def time(self, value: datetime | None) -> Any:
        """An instant as this database stores it."""
        ...

    def instant(self, value: Any) -> datetime | None:
        """A stored instant as an aware UTC datetime."""
        ...

    def json(self, value: Any) -> Any: ...

    def decode_json(self, value: Any) -> Any: ...

    def read(self, op: Callable[[Conn], T]) -> T:
        """Run a read (reads are safe to repeat after a lost connection)."""
        ...

    def write(
        self,
        op: Callable[[Conn], T],
        *,
        already_done: Callable[[Conn], T | None] | None = None,
        single: bool = False,
    ) -> T:
        """Run `op` in one transaction. If the connection is lost and the write is tried
        again, `already_done` (when given) first looks for the first try's effect.
        `single`: op runs one statement, atomic by itself (a server may then skip the
        round trips of BEGIN and COMMIT)."""
        ...

    def notify(self, conn: Conn) -> None:
        """Inside a write: wake idle workers once it commits (where the engine can)."""
        ...

    def changed(self) -> bool:
        """Cheap: has another connection committed anything since the last call?"""
        ...

    def schema_version(self, conn: Conn) -> int: ...

    def lock_schema(self, conn: Conn) -> None:
        """Inside the migrating write: keep other migrators out until it commits."""
        ...

    def run_migration(self, conn: Conn, script: str, version: int) -> None:
        """Run one migration script and record `version`, inside the migrating write."""
        ...

    def close(self) -> None: ...


# -- the statements -----------------------------------------------------------------------

# `{...}` fields are the dialect's fragments:
#   {each}         a table of the elements of a JSON array parameter: `id IN ({each}(:ids))`
#   {json} {text} {time} {int}  a parameter's type, where PostgreSQL cannot infer it
#   {labels_match} jobs.labels holds every key/value of the :labels object
#   {claim_order}  the index the claim must walk (SQLite would sort every due job)
#   {skip_locked}  the claim's row lock (PostgreSQL: skip rows other claims hold)
#   {stopping}     the partial index of canceled jobs still stopping
#   {for_update}   a row lock held to the commit (PostgreSQL; SQLite has one writer)
#   {key_lock}     a lock on a concurrency key held to the commit (PostgreSQL)
#   {fold_counts}  folding the job counters' deltas (PostgreSQL: see migration 0006)
#   {merge_run_stats}  adding a folded row to one with its key (SQLite; PostgreSQL appends)


_LIST_JOBS = """
SELECT * FROM jobs
 WHERE (:state{{text}} IS NULL OR state = :state)
   AND (:queue{{text}} IS NULL OR queue = :queue)
   AND (:origin{{text}} IS NULL OR origin = :origin)
   AND (:schedule{{text}} IS NULL OR schedule_id = :schedule)
   AND {{labels_match}}
 ORDER BY {order}
 LIMIT coalesce(:limit{{int}}, 9223372036854775807)
"""


_INSERT_SCHEDULE = """
INSERT INTO schedules (id, template, schedule, spec_hash, suspended, last_tick_at, created_at,
                       updated_at, origin, source_file, source_commit, next_slot_at)
VALUES (:id, :template, :schedule, :spec_hash, :suspended, :now, :now, :now, :origin,
        :source_file, :source_commit, :now)
ON CONFLICT (id) DO {on_conflict}
"""
# The newest run pending, processing or failed (waiting to retry): overlap's "previous
# run", found in the index of runs not ended. Conditions on the states that a partial index
# covers are spelled as that index's WHERE is (ORs, not IN lists: migration 0013), so that
# SQLite's planner sees the index covers them.
_LIST_SCHEDULES = """
SELECT schedules.*,
       (SELECT max(id) FROM jobs
         WHERE jobs.schedule_id = schedules.id AND schedule_id IS NOT NULL
           AND (state = 'pending' OR state = 'processing' OR state = 'failed')) AS active_run
  FROM schedules WHERE {where}
"""


_PAGE_ALL = """
SELECT * FROM jobs
 WHERE (:queue{{text}} IS NULL OR queue = :queue) AND {{labels_match}} {after}
 ORDER BY created_at DESC, id DESC LIMIT :limit{{int}}
"""
_PAGE_ENDED = """
SELECT * FROM jobs {{finished_order}}
 WHERE (state = 'completed' OR state = 'dead' OR state = 'canceled') AND state = :state
   AND (:queue{{text}} IS NULL OR queue = :queue) AND {{labels_match}} {after}
 ORDER BY state DESC, finished_at DESC, id DESC LIMIT :limit{{int}}
"""
_PAGE_WAITING = """
SELECT * FROM jobs
 WHERE state = :state
   AND (:queue{{text}} IS NULL OR queue = :queue) AND {{labels_match}} {after}
 ORDER BY state, available_at, id LIMIT :limit{{int}}
"""


class _LostRace(Exception):
    """Another scheduler ticked one of a batch's schedules: the batch is undone."""


class _OverLimit(Exception):
    """A claim went over its concurrency key's limit: it is rolled back."""


CLAIM_TRIES = 3  # a claim rolled back over a key's limit tries again at once, this often
TICKS_PER_WRITE = 200  # schedules ticked per write transaction: claims wait for none long


class Statements:
    """Every statement of the store. The class attributes are the templates; `render`
    fills them in for a dialect. A plain class, not a dataclass: generating a dataclass's
    methods for 78 fields cost every `queuectl` command ~9 ms of start-up."""

    insert_job: str = """
INSERT INTO jobs (id, command, priority, run_at, max_retries, timeout_ms, env, cwd, queue,
                  labels, state, attempts, created_at, updated_at, available_at, origin,
                  source_file, source_commit, spec_hash, schedule_id, needs, waiting, retry,
                  deadline_ms, concurrency_key, concurrency_limit)
VALUES (:id, :command, :priority, :run_at, :max_retries, :timeout_ms, :env, :cwd, :queue,
        :labels, 'pending', 0, :now, :now, :available_at, :origin, :source_file,
        :source_commit, :spec_hash, :schedule_id, :needs, :waiting, :retry, :deadline_ms,
        :concurrency_key, :concurrency_limit)
ON CONFLICT (id) DO NOTHING
"""
    existing_hashes: str = """
SELECT id, spec_hash, origin, source_file, source_commit, created_at FROM jobs
 WHERE id IN ({each}(:ids{json}))
"""
    replace_spec: str = """
UPDATE jobs SET command = :command, priority = :priority, run_at = :run_at,
                max_retries = :max_retries, timeout_ms = :timeout_ms, env = :env, cwd = :cwd,
                queue = :queue, labels = :labels, state = 'pending', attempts = 0,
                available_at = :available_at, updated_at = :now, started_at = NULL,
                finished_at = NULL, exit_code = NULL, last_error = NULL, worker_id = NULL,
                lease_token = NULL, lease_expires_at = NULL, output_tail = '', origin = :origin,
                source_file = :source_file, source_commit = :source_commit,
                spec_hash = :spec_hash, needs = :needs, waiting = :waiting, retry = :retry,
                deadline_ms = :deadline_ms, concurrency_key = :concurrency_key,
                concurrency_limit = :concurrency_limit, first_started_at = NULL,
                created_at = CASE WHEN :fresh THEN :now ELSE created_at END
 WHERE id = :id AND state = :expected_state AND updated_at = :expected_updated_at
   AND state <> 'processing' AND lease_token IS NULL
"""
    prune_job: str = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now
 WHERE id = :id AND state = 'pending' AND updated_at = :expected_updated_at
RETURNING id, has_dependents, lease_token
"""
    spool_file_seen: str = "SELECT 1 FROM spool_files WHERE claim_id = :claim_id"
    record_spool_file: str = """
INSERT INTO spool_files (claim_id, name, content_hash, job_ids, ingested_at)
VALUES (:claim_id, :name, :content_hash, :job_ids, :now)
"""
    forget_spool_files: str = "DELETE FROM spool_files WHERE ingested_at < :before"
    get_job: str = "SELECT * FROM jobs WHERE id = :id"
    get_jobs: str = "SELECT * FROM jobs WHERE id IN ({each}(:ids{json}))"
    list_jobs: str = _LIST_JOBS.format(order="created_at, id")
    # A second statement, not a CASE in ORDER BY, so that both directions read the index.
    list_jobs_newest: str = _LIST_JOBS.format(order="created_at DESC, id DESC")
    # A scan, but only for a warning: `worker run --drain --queue` of a queue with no jobs.
    queue_names: str = "SELECT DISTINCT queue FROM jobs ORDER BY queue"
    # Counters kept by triggers (migrations 0004 and 0006): never a scan of the jobs.
    count_by_state: str = "SELECT state, sum(n) AS n FROM job_counts GROUP BY state"
    fold_counts: str = "{fold_counts}"  # empty where the counters need no folding
    # A running job keeps its claim (lease_token) while it is being stopped: see release_claim.
    cancel_job: str = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now,
                last_error = CASE WHEN state = 'processing' THEN 'canceled while running'
                                  ELSE last_error END
 WHERE id = :id AND (state IN ('pending', 'failed') OR (:running AND state = 'processing'))
RETURNING id, has_dependents, lease_token
"""
    # A canceled job's process is gone: the claim it kept can go too.
    release_claim: str = """
UPDATE jobs SET lease_token = NULL, lease_expires_at = NULL,
                output_tail = coalesce(:output_tail, output_tail)
 WHERE id = :job_id AND lease_token = :token AND state = 'canceled'
RETURNING has_dependents
"""
    retry_dead: str = """
UPDATE jobs SET state = 'pending', attempts = 0, available_at = :now, updated_at = :now,
                exit_code = NULL, last_error = NULL, lease_token = NULL, lease_expires_at = NULL,
                first_started_at = NULL
 WHERE state = 'dead' AND (:ids{json} IS NULL OR id IN ({each}(:ids{json})))
RETURNING id
"""
    # What retry_dead did at :now (a job that was dead has run: it has a started_at).
    retried_at: str = """
SELECT id FROM jobs WHERE state = 'pending' AND attempts = 0 AND updated_at = :now
   AND started_at IS NOT NULL AND (:ids{json} IS NULL OR id IN ({each}(:ids{json})))
"""
    # Ended jobs that may go: no claim left, and no job that still may run waits on them
    # (SPEC 14: a run a needs edge waits on is kept until its children are settled).
    deletable_jobs: str = """
SELECT id FROM jobs {finished_order}
 WHERE (state = 'completed' OR state = 'dead' OR state = 'canceled') AND state = :state
   AND lease_token IS NULL
   AND (:before{time} IS NULL OR finished_at < :before)
   AND (:ids{json} IS NULL OR id IN ({each}(:ids{json})))
   AND NOT EXISTS (SELECT 1 FROM job_needs AS edge JOIN jobs AS child ON child.id = edge.job_id
                    WHERE edge.need_id = jobs.id
                      AND child.state IN ('pending', 'processing', 'failed'))
 ORDER BY finished_at, id
 LIMIT coalesce(:limit{int}, 9223372036854775807)
"""
    delete_jobs: str = """
DELETE FROM jobs
 WHERE id IN ({each}(:ids{json})) AND {by_id_only}state IN ('completed', 'dead', 'canceled')
   AND lease_token IS NULL
   AND NOT EXISTS (SELECT 1 FROM job_needs AS edge JOIN jobs AS child ON child.id = edge.job_id
                    WHERE edge.need_id = jobs.id
                      AND child.state IN ('pending', 'processing', 'failed'))
"""
    forget_edges: str = """
DELETE FROM job_needs WHERE job_id IN ({each}(:ids{json})) OR need_id IN ({each}(:ids{json}))
"""
    read_config: str = "SELECT key, value FROM config"
    write_config: str = """
INSERT INTO config (key, value) VALUES (:key, :value)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
    forget_dead_workers: str = "DELETE FROM workers WHERE lease_expires_at < :before"
    register_worker: str = """
INSERT INTO workers (id, pid, host, queues, started_at, heartbeat_at, lease_expires_at)
VALUES (:id, :pid, :host, :queues, :started_at, :heartbeat_at, :lease_expires_at)
ON CONFLICT (id) DO NOTHING
"""
    heartbeat_worker: str = """
UPDATE workers SET heartbeat_at = :now, lease_expires_at = :lease_until
 WHERE id = :worker_id
RETURNING stop_requested
"""
    renew_job_lease: str = """
UPDATE jobs SET lease_expires_at = :lease_until
 WHERE id = :job_id AND lease_token = :token AND state IN ('processing', 'canceled')
RETURNING state
"""
    deregister_worker: str = "DELETE FROM workers WHERE id = :worker_id"
    live_workers: str = """
SELECT workers.*, (SELECT id FROM jobs WHERE state = 'processing' AND worker_id = workers.id
                    LIMIT 1) AS current_job
  FROM workers WHERE lease_expires_at >= :now ORDER BY started_at, id
"""
    request_stop: str = """
UPDATE workers SET stop_requested = TRUE
 WHERE :ids{json} IS NULL OR id IN ({each}(:ids{json}))
"""
    # One statement: the index holds only jobs whose needs are met (waiting = 0), and a
    # job with a concurrency key is passed over while its key's holders are at the limit
    # (a holder whose lease expired, its worker killed, holds nothing).
    claim_next: str = """
UPDATE jobs SET state = 'processing', worker_id = :worker_id, lease_token = :token,
                started_at = :now, updated_at = :now, finished_at = NULL,
                lease_expires_at = :lease_until,
                first_started_at = coalesce(first_started_at, :now)
 WHERE id = (SELECT id FROM jobs AS candidate {claim_order}
              WHERE state IN ('pending', 'failed') AND waiting = 0 AND available_at <= :now
                AND (:queues{json} IS NULL OR queue IN ({each}(:queues{json})))
                AND (concurrency_key IS NULL
                     OR (SELECT count(*) FROM jobs AS holder
                          WHERE holder.concurrency_key = candidate.concurrency_key
                            AND holder.lease_token IS NOT NULL
                            AND holder.lease_expires_at >= :now) < concurrency_limit)
              ORDER BY priority DESC, created_at, id
              LIMIT 1
              {skip_locked})
RETURNING *
"""
    # Where claims run at once (PostgreSQL), a claim of a keyed job re-counts the key's
    # holders under a lock on the key, and steps back if it went over the limit.
    key_lock: str = "{key_lock}"  # empty where claims are serialized (SQLite)
    claimed_with: str = "SELECT * FROM jobs WHERE state = 'processing' AND lease_token = :token"
    # `<=`: SQLite keeps whole milliseconds, so a lease that ran out under a millisecond
    # before `expired_before` (the runner's own test) must count as run out here too.
    finish_job: str = """
UPDATE jobs SET state = :state, attempts = :attempts, available_at = :available_at,
                exit_code = :exit_code, last_error = :last_error,
                output_tail = coalesce(:output_tail, output_tail),
                updated_at = :now, finished_at = :now,
                lease_token = NULL, lease_expires_at = NULL
 WHERE id = :job_id AND lease_token = :token AND state = 'processing'
   AND (:expired_before{time} IS NULL OR lease_expires_at <= :expired_before)
RETURNING has_dependents
"""
    # Claimed jobs: running ones, and canceled ones whose process may still be stopping.
    processing_jobs: str = """
SELECT * FROM jobs WHERE state = 'processing'
UNION ALL
SELECT * FROM jobs {stopping} WHERE state = 'canceled' AND lease_token IS NOT NULL
"""
    drain_blockers: str = """
SELECT count(*) AS n FROM jobs
 WHERE (state = 'processing'
        OR state = 'failed'
        OR (state = 'pending' AND available_at <= :now AND waiting = 0)
        OR (state = 'canceled' AND lease_token IS NOT NULL))
   AND (:queues{json} IS NULL OR queue IN ({each}(:queues{json})))
"""
    next_available_at: str = """
SELECT min(available_at) AS next_at FROM jobs
 WHERE state IN ('pending', 'failed') AND waiting = 0
   AND (:queues{json} IS NULL OR queue IN ({each}(:queues{json})))
"""

    # -- needs (SPEC 12) --
    # Locks the needed jobs (where writers run at once) until the new edges commit: a
    # parent ending meanwhile waits, then sees the edges; or ended first, and is counted.
    lock_needed: str = """
SELECT id FROM jobs WHERE id IN ({each}(:ids{json})) ORDER BY id {for_update}
"""
    # The same for the jobs these jobs need, before their needs are counted afresh.
    lock_needed_by: str = """
SELECT id FROM jobs
 WHERE id IN (SELECT need_id FROM job_needs WHERE job_id IN ({each}(:ids{json})))
 ORDER BY id {for_update}
"""
    insert_need: str = """
INSERT INTO job_needs (job_id, need_id, on_state) VALUES (:job_id, :need_id, :on_state)
ON CONFLICT (job_id, need_id) DO NOTHING
"""
    forget_needs: str = "DELETE FROM job_needs WHERE job_id = :id"
    # Whether a job is upstream of itself: only a job rewritten in place can close a cycle
    # through jobs already stored (a new job cannot be needed by an older one).
    needs_itself: str = """
WITH RECURSIVE upstream (id) AS (
    SELECT need_id FROM job_needs WHERE job_id = :id
    UNION
    SELECT edge.need_id FROM job_needs AS edge JOIN upstream ON edge.job_id = upstream.id
)
SELECT 1 AS found FROM upstream WHERE id = :id LIMIT 1
"""
    mark_dependents: str = """
UPDATE jobs SET has_dependents = TRUE
 WHERE id IN ({each}(:ids{json})) AND has_dependents = FALSE
"""
    # A parent ended: the edges its end meets count down; those it never will meet cancel.
    meet_needs: str = """
UPDATE jobs SET waiting = waiting - 1
 WHERE state = 'pending' AND id IN (SELECT job_id FROM job_needs
                                     WHERE need_id = :id AND on_state IN ({each}(:met{json})))
"""
    fail_needs: str = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now,
                last_error = :upstream
 WHERE state = 'pending' AND id IN (SELECT job_id FROM job_needs
                                     WHERE need_id = :id AND on_state IN ({each}(:unmet{json})))
RETURNING id, has_dependents
"""
    # From scratch: the needs of each job not met (yet) by its parent's state.
    count_waiting: str = """
UPDATE jobs SET waiting = (
    SELECT count(*) FROM job_needs AS edge JOIN jobs AS parent ON parent.id = edge.need_id
     WHERE edge.job_id = jobs.id
       AND NOT ((edge.on_state IN ('success', 'finished') AND parent.state = 'completed')
                OR (edge.on_state IN ('failure', 'finished') AND parent.state = 'dead')
                OR (edge.on_state = 'finished' AND parent.state = 'canceled'
                    AND parent.lease_token IS NULL)))
 WHERE state = 'pending' AND id IN ({each}(:ids{json}))
"""
    # Needs that can never be met any more: the parent ended the other way.
    unmeetable_needs: str = """
SELECT edge.job_id, edge.need_id, parent.state
  FROM job_needs AS edge JOIN jobs AS parent ON parent.id = edge.need_id
 WHERE edge.job_id IN ({each}(:ids{json}))
   AND parent.state IN ('completed', 'dead', 'canceled')
   AND NOT ((edge.on_state IN ('success', 'finished') AND parent.state = 'completed')
            OR (edge.on_state IN ('failure', 'finished') AND parent.state = 'dead')
            OR (edge.on_state = 'finished' AND parent.state = 'canceled'))
 ORDER BY edge.job_id, edge.need_id
"""
    cancel_upstream: str = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now,
                last_error = :upstream
 WHERE id = :id AND state = 'pending'
RETURNING id, has_dependents
"""
    children_of: str = """
SELECT DISTINCT job_id FROM job_needs WHERE need_id IN ({each}(:ids{json}))
"""
    # A parent back from the DLQ: the children it canceled (and theirs) are pending again.
    revive_children: str = """
UPDATE jobs SET state = 'pending', updated_at = :now, finished_at = NULL, last_error = NULL
 WHERE state = 'canceled' AND substr(last_error, 1, length(:prefix)) = :prefix
   AND id IN (SELECT job_id FROM job_needs WHERE need_id = :id)
RETURNING id
"""
    key_holders_now: str = """
SELECT id FROM jobs
 WHERE concurrency_key = :key AND lease_token IS NOT NULL AND lease_expires_at >= :now
 ORDER BY started_at, id
"""
    waiting_on: str = """
SELECT edge.need_id, edge.on_state, parent.state
  FROM job_needs AS edge LEFT JOIN jobs AS parent ON parent.id = edge.need_id
 WHERE edge.job_id = :id ORDER BY edge.need_id
"""

    # An identical re-submission matches no row: nothing changes, not even updated_at.
    upsert_schedule: str = _INSERT_SCHEDULE.format(
        on_conflict="""UPDATE SET template = excluded.template, schedule = excluded.schedule,
    spec_hash = excluded.spec_hash, suspended = excluded.suspended,
    updated_at = excluded.updated_at, origin = excluded.origin,
    source_file = excluded.source_file, source_commit = excluded.source_commit,
    next_slot_at = excluded.next_slot_at
 WHERE schedules.spec_hash <> excluded.spec_hash"""
    )
    # The spool and apply create only: an existing id is theirs to compare, not overwrite.
    create_schedule: str = _INSERT_SCHEDULE.format(on_conflict="NOTHING")
    # Guarded by the spec hash the plan saw, as apply's job writes are by updated_at.
    update_schedule: str = """
UPDATE schedules SET template = :template, schedule = :schedule, spec_hash = :spec_hash,
                     suspended = :suspended, updated_at = :now, origin = :origin,
                     source_file = :source_file, source_commit = :source_commit,
                     next_slot_at = :now
 WHERE id = :id AND spec_hash = :expected_hash
"""
    prune_schedule: str = "DELETE FROM schedules WHERE id = :id AND spec_hash = :expected_hash"
    schedule_stamps: str = """
SELECT spec_hash, created_at, updated_at, origin, source_file, source_commit
  FROM schedules WHERE id = :id
"""
    list_schedules: str = _LIST_SCHEDULES.format(where=":id{text} IS NULL OR id = :id ORDER BY id")
    # Only the schedules with a slot (or a timing change) to handle: the index, not a scan.
    due_schedules: str = _LIST_SCHEDULES.format(
        where="suspended = FALSE AND next_slot_at <= :now ORDER BY next_slot_at, id"
    )
    next_tick_at: str = "SELECT min(next_slot_at) AS next_at FROM schedules WHERE suspended = FALSE"
    # Resuming asks for a tick now, which catches up what was skipped as `catchup` says.
    set_suspended: str = """
UPDATE schedules SET suspended = :suspended, updated_at = :now, next_slot_at = :now
 WHERE id = :id
"""
    delete_schedule: str = "DELETE FROM schedules WHERE id = :id"
    cancel_runs: str = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now
 WHERE schedule_id = :id AND state IN ('pending', 'failed')
RETURNING id, has_dependents, lease_token
"""
    canceled_runs_at: str = """
SELECT id FROM jobs WHERE schedule_id = :id AND state = 'canceled' AND updated_at = :now
"""
    # `overlap: replace`: a running run keeps its claim until its worker has stopped it.
    replace_runs: str = """
UPDATE jobs SET state = 'canceled', updated_at = :now, finished_at = :now,
                last_error = :replaced_by
 WHERE schedule_id = :id AND (state = 'pending' OR state = 'processing' OR state = 'failed')
   AND id <> :replaced_by_id
RETURNING *
"""
    # Compare-and-set on what the scheduler read: of schedulers racing, one records the tick.
    tick_schedule: str = """
UPDATE schedules SET last_tick_at = :tick_at, missed = missed + :missed,
                     last_missed_at = coalesce(:last_missed_at{time}, last_missed_at),
                     next_slot_at = :next_slot_at
 WHERE id = :id AND last_tick_at = :last_tick_at AND spec_hash = :spec_hash
   AND suspended = FALSE
"""

    # -- observability (SPEC 15): counters kept by triggers (migration 0012) --
    count_by_queue: str = """
SELECT queue, state, sum(n) AS n FROM job_counts GROUP BY queue, state ORDER BY queue, state
"""
    run_totals: str = """
SELECT queue, outcome, le_ms, sum(n) AS n, sum(sum_ms) AS sum_ms FROM run_stats
 GROUP BY queue, outcome, le_ms ORDER BY queue, outcome, le_ms
"""
    runs_per_minute: str = """
SELECT minute, outcome, sum(n) AS n FROM run_stats WHERE minute >= :since
 GROUP BY minute, outcome ORDER BY minute, outcome
"""
    # Minutes too old for the dashboard's hour fold into one row per key, at the epoch.
    fold_run_minutes: str = """
INSERT INTO run_stats (minute, queue, outcome, le_ms, n, sum_ms)
SELECT :epoch{time}, queue, outcome, le_ms, sum(n), sum(sum_ms) FROM run_stats
 WHERE minute > :epoch{time} AND minute < :before
 GROUP BY queue, outcome, le_ms
{merge_run_stats}
"""
    forget_run_minutes: str = """
DELETE FROM run_stats WHERE minute > :epoch{time} AND minute < :before
"""
    # The first entry of the queue in the index of pending jobs by queue (migration 0012).
    oldest_due: str = """
SELECT min(available_at) AS available_at FROM jobs
 WHERE state = 'pending' AND waiting = 0 AND queue = :queue AND available_at <= :now
"""
    # Pages for the dashboard, each walking an index from a keyset cursor (never OFFSET):
    # every job newest first; ended jobs by when they ended, newest first; waiting and
    # running ones in the order they became due. A first page and a page after a cursor
    # are two statements: an `:after IS NULL OR ...` would keep the cursor out of the
    # index range, and a deep page would walk every page before it.
    page_all: str = _PAGE_ALL.format(after="")
    page_all_after: str = _PAGE_ALL.format(after="AND (created_at, id) < (:after_key, :after_id)")
    page_ended: str = _PAGE_ENDED.format(after="")
    page_ended_after: str = _PAGE_ENDED.format(
        after="AND (finished_at, id) < (:after_key, :after_id)"
    )
    page_waiting: str = _PAGE_WAITING.format(after="")
    page_waiting_after: str = _PAGE_WAITING.format(
        after="AND (available_at, id) > (:after_key, :after_id)"
    )

    def render(self, dialect: Dialect) -> Statements:
        """The statements in the dialect's SQL and placeholder style."""
        rendered = Statements()
        for name in Statements.__annotations__:
            template = getattr(self, name)
            setattr(rendered, name, dialect.prepare(template.format_map(dialect.fragments)))
        return rendered


TEMPLATES = Statements()
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def pyformat(sql: str) -> str:
    """`:name` placeholders as `%(name)s` (and a literal % as %%), for psycopg."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


def migrations(dialect: str) -> list[tuple[int, Path]]:
    """(version, file) of the dialect's migrations: one sequence, numbered alike for every
    dialect (a dialect with nothing to do for a step ships a file that says so)."""
    return sorted((int(p.name[:4]), p) for p in MIGRATIONS.glob(f"*.{dialect}.sql"))


# -- the store ---------------------------------------------------------------------------


class SqlStore:
    """The queue in one SQL database, through its dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect
        self.url = dialect.url
        self.sql = TEMPLATES.render(dialect)

    def close(self) -> None:
        self.d.close()

    def changed(self) -> bool:
        return self.d.changed()

    # -- schema ----------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema up to the newest migration (one writer at a time).

        :raises SchemaTooNew: the database was written by a newer queuectl.
        """
        steps = migrations(self.d.name)
        latest = steps[-1][0]
        version = self.d.read(self.d.schema_version)
        if version == latest:
            return  # the common case: no write lock taken at start-up
        self._refuse_newer(version, latest)

        def op(conn: Conn) -> None:
            self.d.lock_schema(conn)
            version = self.d.schema_version(conn)  # another process may have migrated
            self._refuse_newer(version, latest)
            for number, path in steps:
                if number > version:
                    self.d.run_migration(conn, path.read_text(encoding="utf-8"), number)

        self.d.write(op)

    def _refuse_newer(self, version: int, latest: int) -> None:
        if version > latest:
            raise SchemaTooNew(
                f"{self.display}: the database has schema version {version}, written by a "
                f"newer queuectl (this one knows up to {latest}): upgrade queuectl"
            )

    @property
    def display(self) -> str:
        return redact_url(self.url)

    def _fold_counts(self, conn: Conn) -> None:
        """Fold the count deltas that state changes appended (PostgreSQL: see 0006)."""
        if self.sql.fold_counts:
            conn.execute(self.sql.fold_counts)

    # -- encoding --------------------------------------------------------------------

    def _job(self, row: Any) -> Job:
        return job_from_row(row, decode=self.d.decode_json, instant=self.d.instant)

    def _ids(self, ids: Sequence[str] | None) -> Any:
        return None if ids is None else self.d.json(list(ids))

    def _job_params(self, job: NewJob, now: datetime) -> dict[str, Any]:
        spec = job.spec
        command = list(spec.command) if isinstance(spec.command, tuple) else spec.command
        return {
            "id": job.id,
            "command": self.d.json(command),
            "priority": spec.priority,
            "run_at": self.d.time(spec.run_at),
            "max_retries": job.max_retries,
            "timeout_ms": spec.timeout_ms,
            "env": self.d.json(dict(spec.env)),
            "cwd": spec.cwd,
            "queue": spec.queue,
            "labels": self.d.json(dict(spec.labels)),
            "now": self.d.time(now),
            "available_at": self.d.time(job.available_at),
            "origin": job.source.origin.value,
            "source_file": job.source.file,
            "source_commit": job.source.commit,
            "spec_hash": spec.spec_hash,
            "schedule_id": job.schedule_id,
            "needs": self.d.json([need.declared() for need in spec.needs]),
            "waiting": len(spec.needs),  # until _wait_on_needs counts what is met already
            "retry": None if spec.retry is None else self.d.json(spec.retry.declared()),
            "deadline_ms": spec.deadline_ms,
            "concurrency_key": spec.concurrency_key,
            "concurrency_limit": spec.concurrency_limit,
        }

    def _schedule(self, row: Any) -> Schedule:
        template = JobSpec.from_declared(self.d.decode_json(row["template"]), id=row["id"])
        fields = self.d.decode_json(row["schedule"])
        return Schedule(
            spec=ScheduleSpec.from_declared(row["id"], fields, template),
            source=source_of(row),
            suspended=bool(row["suspended"]),
            last_tick_at=self._required(row["last_tick_at"]),
            missed=int(row["missed"]),
            last_missed_at=self.d.instant(row["last_missed_at"]),
            created_at=self._required(row["created_at"]),
            updated_at=self._required(row["updated_at"]),
            active_run=row["active_run"],
            last_success_at=self.d.instant(row["last_success_at"]),
            stored_hash=row["spec_hash"],
        )

    @contextlib.contextmanager
    def _savepoint(self, conn: Conn) -> Iterator[None]:
        """A nested all-or-nothing step inside a write."""
        conn.execute("SAVEPOINT step")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO SAVEPOINT step")
            conn.execute("RELEASE SAVEPOINT step")
            raise
        conn.execute("RELEASE SAVEPOINT step")

    # -- jobs ------------------------------------------------------------------------

    def _existing(self, conn: Conn, jobs: Sequence[NewJob]) -> dict[str, Any]:
        params = {"ids": self._ids([j.id for j in jobs])}
        return {row["id"]: row for row in conn.execute(self.sql.existing_hashes, params)}

    def _insert_jobs(self, conn: Conn, jobs: Sequence[NewJob], now: datetime) -> list[bool]:
        """Insert jobs inside the caller's write; an identical existing id is a no-op."""
        existing = self._existing(conn, jobs)
        created: list[bool] = []
        rows = []
        for job in jobs:
            found = existing.get(job.id)
            if found is None:
                created.append(True)
                rows.append(self._job_params(job, now))
                continue
            if found["spec_hash"] != job.spec.spec_hash:
                raise conflict(job.id, source_of(found))
            created.append(False)
        if rows:
            cursor = conn.cursor()
            try:
                cursor.executemany(self.sql.insert_job, rows)
                inserted = cursor.rowcount
            finally:
                cursor.close()
            if inserted != len(rows):  # a concurrent insert took an id: same spec, or conflict
                raced = self._existing(conn, jobs)
                for job in jobs:
                    if raced[job.id]["spec_hash"] != job.spec.spec_hash:
                        raise conflict(job.id, source_of(raced[job.id]))
            new = [job for job, was_created in zip(jobs, created, strict=True) if was_created]
            self._wait_on_needs(conn, new, now)
            if len(rows) >= FOLD_AFTER_ROWS:  # a big batch: leave status a few rows to add
                self._fold_counts(conn)
            self.d.notify(conn)
        return created

    # -- needs (SPEC 12) ----------------------------------------------------------------

    def _wait_on_needs(self, conn: Conn, jobs: Sequence[NewJob], now: datetime) -> None:
        """Record the needs of jobs just written (inside the caller's write): each needed id
        must exist by now; a need already met is counted met, one that never can be
        cancels the job at once, as a parent ending that way later would."""
        edges = [(job.id, need) for job in jobs for need in job.spec.needs]
        if not edges:
            return
        needed = sorted({need.job for _, need in edges})
        found = conn.execute(self.sql.lock_needed, {"ids": self._ids(needed)})
        known = {row["id"] for row in found}
        for job_id, need in edges:
            if need.job not in known:
                raise UnknownNeed(job_id, need.job)
        cursor = conn.cursor()
        try:
            cursor.executemany(
                self.sql.insert_need,
                [{"job_id": j, "need_id": n.job, "on_state": n.on.value} for j, n in edges],
            )
        finally:
            cursor.close()
        conn.execute(self.sql.mark_dependents, {"ids": self._ids(needed)})
        self._recount(conn, sorted({job_id for job_id, _ in edges}), now)

    def _recount(self, conn: Conn, job_ids: Sequence[str], now: datetime) -> None:
        """Count the unmet needs of pending jobs from scratch; cancel those with a need
        that can no longer be met (and, down the graph, what waited on them)."""
        if not job_ids:
            return
        ids = self._ids(job_ids)
        conn.execute(self.sql.lock_needed_by, {"ids": ids}).fetchall()  # see lock_needed
        conn.execute(self.sql.count_waiting, {"ids": ids})
        ended: list[tuple[str, JobState]] = []
        for row in conn.execute(self.sql.unmeetable_needs, {"ids": ids}).fetchall():
            params = {
                "id": row["job_id"],
                "now": self.d.time(now),
                "upstream": f"upstream {row['need_id']} {row['state']}",
            }
            if conn.execute(self.sql.cancel_upstream, params).fetchone() is not None:
                ended.append((row["job_id"], JobState.CANCELED))
        self._settle(conn, ended, now)

    def _settle(
        self,
        conn: Conn,
        ended: Sequence[tuple[str, JobState]],
        now: datetime,
        *,
        meet: bool = True,
    ) -> None:
        """Jobs just ended: count down the needs their end meets (unless `meet` is False)
        and cancel the jobs whose needs it never will, breadth first down the graph (any
        depth, no recursion)."""
        todo = list(ended)
        while todo:
            parent, state = todo.pop()
            if state not in END_STATES:
                continue
            met = [on.value for on, states in NEED_MET_BY.items() if state in states]
            unmet = [on.value for on, states in NEED_MET_BY.items() if state not in states]
            params = {"id": parent, "met": self.d.json(met), "unmet": self.d.json(unmet)}
            if meet:
                conn.execute(self.sql.meet_needs, params)
            upstream = f"upstream {parent} {state.value}"
            canceled = conn.execute(
                self.sql.fail_needs, {**params, "now": self.d.time(now), "upstream": upstream}
            ).fetchall()
            todo.extend((row["id"], JobState.CANCELED) for row in canceled)

    def _revive(self, conn: Conn, parents: Sequence[str], now: datetime) -> None:
        """Jobs back to pending: the jobs they canceled as `upstream` are pending again, down
        the graph, and every child of theirs has its needs counted afresh."""
        revived: list[str] = []
        todo = list(parents)
        while todo:
            parent = todo.pop()
            params = {"id": parent, "prefix": f"upstream {parent} ", "now": self.d.time(now)}
            back = [row["id"] for row in conn.execute(self.sql.revive_children, params)]
            revived.extend(back)
            todo.extend(back)
        touched = [*parents, *revived]
        children = conn.execute(self.sql.children_of, {"ids": self._ids(touched)}).fetchall()
        self._recount(conn, sorted({row["job_id"] for row in children}), now)

    def _ended(self, conn: Conn, rows: Sequence[Any], now: datetime) -> None:
        """Settle the needs on jobs a statement just canceled (rows with id, has_dependents
        and, for jobs that were running, lease_token). A job canceled while running meets
        no `finished` need until its processes are gone (release_claim): what waits for
        it to end must not start beside it."""
        ended = [row for row in rows if row["has_dependents"]]
        stopping = [(row["id"], JobState.CANCELED) for row in ended if row["lease_token"]]
        gone = [(row["id"], JobState.CANCELED) for row in ended if not row["lease_token"]]
        self._settle(conn, gone, now)
        self._settle(conn, stopping, now, meet=False)

    def waiting_on(self, job_id: str) -> list[tuple[Need, JobState | None]]:
        def op(conn: Conn) -> list[tuple[Need, JobState | None]]:
            rows = conn.execute(self.sql.waiting_on, {"id": job_id}).fetchall()
            return [
                (
                    Need(row["need_id"], NeedOn(row["on_state"])),
                    None if row["state"] is None else JobState(row["state"]),
                )
                for row in rows
            ]

        return self.d.read(op)

    def key_holders(self, key: str, now: datetime) -> list[str]:
        params = {"key": key, "now": self.d.time(now)}
        rows = self.d.read(lambda conn: conn.execute(self.sql.key_holders_now, params).fetchall())
        return [row["id"] for row in rows]

    def insert_jobs(self, jobs: Sequence[NewJob], now: datetime) -> list[bool]:
        def done(conn: Conn) -> list[bool] | None:
            # Created by the first try: the same spec, created at this very instant.
            existing = self._existing(conn, jobs)
            stamp = self.d.time(now)
            if len(existing) < len({job.id for job in jobs}):
                return None
            if any(existing[j.id]["spec_hash"] != j.spec.spec_hash for j in jobs):
                return None
            return [existing[j.id]["created_at"] == stamp for j in jobs]

        return self.d.write(lambda conn: self._insert_jobs(conn, jobs, now), already_done=done)

    def ingest_spool_files(self, files: Sequence[SpoolFile], now: datetime) -> list[str | None]:
        def op(conn: Conn) -> list[str | None]:
            outcomes: list[str | None] = []
            for file in files:
                if conn.execute(self.sql.spool_file_seen, {"claim_id": file.claim_id}).fetchone():
                    outcomes.append(None)  # ingested before a crash (or a lost reply)
                    continue
                try:
                    with self._savepoint(conn):  # one file all-or-nothing
                        self._insert_jobs(conn, file.jobs, now)
                        self._create_schedules(conn, file.schedules, now)
                        conn.execute(
                            self.sql.record_spool_file,
                            {
                                "claim_id": file.claim_id,
                                "name": file.name,
                                "content_hash": file.content_hash,
                                "now": self.d.time(now),
                                "job_ids": self.d.json([job.id for job in file.jobs]),
                            },
                        )
                except (JobConflict, UnknownNeed) as exc:
                    outcomes.append(str(exc))
                else:
                    outcomes.append(None)
            return outcomes

        return self.d.write(op)  # replay-safe: spool_file_seen finds the first try's files

    def forget_spool_files(self, before: datetime) -> int:
        params = {"before": self.d.time(before)}
        return int(
            self.d.write(
                lambda conn: conn.execute(self.sql.forget_spool_files, params).rowcount,
                single=True,
            )
        )

    def get_job(self, job_id: str) -> Job | None:
        row = self.d.read(lambda conn: conn.execute(self.sql.get_job, {"id": job_id}).fetchone())
        return self._job(row) if row else None

    def get_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        params = {"ids": self._ids(job_ids)}
        rows = self.d.read(lambda conn: conn.execute(self.sql.get_jobs, params).fetchall())
        return {row["id"]: self._job(row) for row in rows}

    def apply_changes(self, changes: Sequence[Change | ScheduleChange], now: datetime) -> None:
        jobs = [change for change in changes if isinstance(change, Change)]
        schedules = [change for change in changes if isinstance(change, ScheduleChange)]

        def op(conn: Conn) -> bool:
            for schedule in schedules:
                self._apply_schedule(conn, schedule, now)
            rewritten: list[NewJob] = []  # created, or with a new spec: needs written after all
            # Parents before children, as a finish locks them: no deadlock with a worker.
            needed = sorted({n.job for c in jobs if c.job is not None for n in c.job.spec.needs})
            if needed:
                conn.execute(self.sql.lock_needed, {"ids": self._ids(needed)}).fetchall()
            for change in jobs:
                expected = change.expected
                guard = {
                    "expected_state": expected[0].value if expected else None,
                    "expected_updated_at": self.d.time(expected[1]) if expected else None,
                }
                if change.action == "create" and change.job is not None:
                    params = self._job_params(change.job, now)
                    written = conn.execute(self.sql.insert_job, params).rowcount
                    rewritten.append(change.job)
                elif change.action in ("update", "replace") and change.job is not None:
                    params = {
                        **self._job_params(change.job, now),
                        **guard,
                        "fresh": change.action == "replace",
                    }
                    written = conn.execute(self.sql.replace_spec, params).rowcount
                    conn.execute(self.sql.forget_needs, {"id": change.job_id})
                    rewritten.append(change.job)
                elif change.action == "prune":
                    params = {"id": change.job_id, "now": self.d.time(now), **guard}
                    pruned = conn.execute(self.sql.prune_job, params).fetchall()
                    self._ended(conn, pruned, now)
                    written = len(pruned)
                else:
                    raise ValueError(f"unknown change {change.action!r}")
                if written != 1:
                    raise changed_meanwhile(change.job_id)
            # After every write: they may need one another. A job back to pending brings
            # back what it had canceled as `upstream`.
            self._wait_on_needs(conn, rewritten, now)
            for job in rewritten:
                if (
                    job.spec.needs
                    and conn.execute(self.sql.needs_itself, {"id": job.id}).fetchone()
                ):
                    raise NeedsCycle(job.id)
            self._revive(conn, [job.id for job in rewritten], now)
            self.d.notify(conn)
            return True

        def done(conn: Conn) -> bool | None:
            # Every change shows, stamped with this apply's instant: the first try committed.
            stamp = self.d.time(now)
            for schedule in schedules:
                row = conn.execute(self.sql.schedule_stamps, {"id": schedule.schedule_id})
                found = row.fetchone()
                if schedule.schedule is None:
                    if found is not None:
                        return None  # a prune not yet done
                elif (
                    found is None
                    or found["spec_hash"] != schedule.schedule.spec.spec_hash
                    or found["updated_at"] != stamp
                ):
                    return None
            ids = [change.job_id for change in jobs]
            rows = {r["id"]: r for r in conn.execute(self.sql.get_jobs, {"ids": self._ids(ids)})}
            for change in jobs:
                row = rows.get(change.job_id)
                if row is None or row["updated_at"] != stamp:
                    return None
                if change.job is not None and row["spec_hash"] != change.job.spec.spec_hash:
                    return None
            return True

        self.d.write(op, already_done=done)

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
        params = {
            "schedule": schedule_id,
            "state": state.value if state else None,
            "queue": queue,
            "origin": origin.value if origin else None,
            "labels": self.d.json(dict(labels or {})),
            "limit": limit,
        }
        statement = self.sql.list_jobs_newest if newest else self.sql.list_jobs
        rows = self.d.read(lambda conn: conn.execute(statement, params).fetchall())
        return [self._job(row) for row in rows]

    def queue_names(self) -> list[str]:
        rows = self.d.read(lambda conn: conn.execute(self.sql.queue_names).fetchall())
        return [str(row["queue"]) for row in rows]

    # -- observability (SPEC 15) ------------------------------------------------------

    def count_by_queue(self) -> dict[tuple[str, JobState], int]:
        rows = self.d.read(lambda conn: conn.execute(self.sql.count_by_queue).fetchall())
        return {(row["queue"], JobState(row["state"])): int(row["n"]) for row in rows}

    def run_totals(self) -> list[RunCount]:
        rows = self.d.read(lambda conn: conn.execute(self.sql.run_totals).fetchall())
        return [
            RunCount(
                row["queue"], row["outcome"], int(row["le_ms"]), int(row["n"]), int(row["sum_ms"])
            )
            for row in rows
        ]

    def runs_per_minute(self, since: datetime) -> list[tuple[datetime, str, int]]:
        params = {"since": self.d.time(since)}
        rows = self.d.read(lambda conn: conn.execute(self.sql.runs_per_minute, params).fetchall())
        return [(self._required(row["minute"]), row["outcome"], int(row["n"])) for row in rows]

    def fold_run_stats(self, before: datetime) -> None:
        params = {"epoch": self.d.time(EPOCH), "before": self.d.time(before)}

        def op(conn: Conn) -> None:
            conn.execute(self.sql.fold_run_minutes, params)
            conn.execute(self.sql.forget_run_minutes, params)

        self.d.write(op)  # replay-safe: a second fold of folded minutes finds none

    def oldest_due(self, queue: str, now: datetime) -> datetime | None:
        params = {"queue": queue, "now": self.d.time(now)}
        row = self.d.read(lambda conn: conn.execute(self.sql.oldest_due, params).fetchone())
        return self.d.instant(row["available_at"]) if row and row["available_at"] else None

    def page_jobs(
        self,
        *,
        state: JobState | None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        after: tuple[datetime, str] | None = None,
        limit: int = 50,
    ) -> list[Job]:
        if state is None:
            statement = self.sql.page_all_after if after else self.sql.page_all
        elif state in END_STATES:
            statement = self.sql.page_ended_after if after else self.sql.page_ended
        else:
            statement = self.sql.page_waiting_after if after else self.sql.page_waiting
        params = {
            "state": state.value if state else None,
            "queue": queue,
            "labels": self.d.json(dict(labels or {})),
            "limit": limit,
        }
        if after:
            params |= {"after_key": self.d.time(after[0]), "after_id": after[1]}
        rows = self.d.read(lambda conn: conn.execute(statement, params).fetchall())
        return [self._job(row) for row in rows]

    def count_by_state(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for row in self.d.read(lambda conn: conn.execute(self.sql.count_by_state).fetchall()):
            counts[JobState(row["state"])] = int(row["n"])
        return counts

    def cancel_job(self, job_id: str, now: datetime, *, running: bool = False) -> Job:
        stamp = self.d.time(now)

        def op(conn: Conn) -> Job:
            row = conn.execute(self.sql.get_job, {"id": job_id}).fetchone()
            if row is None:
                raise JobNotFound(job_id)
            before = self._job(row)
            params = {"id": job_id, "now": stamp, "running": running}
            canceled = conn.execute(self.sql.cancel_job, params).fetchall()
            self._ended(conn, canceled, now)
            if not canceled and not (running and before.stopping):
                raise not_cancelable(job_id, before.state.value)
            return before

        def done(conn: Conn) -> Job | None:
            # Canceled at this very instant: the first try did it. The job keeps the claim
            # it had (if it was running), which is what the caller needs from `before`.
            row = conn.execute(self.sql.get_job, {"id": job_id}).fetchone()
            if row is None or row["state"] != "canceled" or row["updated_at"] != stamp:
                return None
            return self._job(row)

        return self.d.write(op, already_done=done)

    def retry_dead(self, job_ids: Sequence[str] | None, now: datetime) -> list[str]:
        if job_ids is not None:
            job_ids = list(dict.fromkeys(job_ids))  # `dlq retry a a` retries a once
        params = {"ids": self._ids(job_ids), "now": self.d.time(now)}

        def op(conn: Conn) -> list[str]:
            for job_id in job_ids or ():
                row = conn.execute(self.sql.get_job, {"id": job_id}).fetchone()
                if row is None:
                    raise JobNotFound(job_id)
                if row["state"] != JobState.DEAD:
                    raise not_dead(job_id, row["state"])
            retried = [row["id"] for row in conn.execute(self.sql.retry_dead, params)]
            self._revive(conn, retried, now)
            self.d.notify(conn)
            return retried

        def done(conn: Conn) -> list[str] | None:
            retried = [row["id"] for row in conn.execute(self.sql.retried_at, params)]
            complete = job_ids is None or len(retried) == len(job_ids)
            return retried if retried and complete else None

        return self.d.write(op, already_done=done)

    def deletable_jobs(
        self,
        state: JobState,
        *,
        job_ids: Sequence[str] | None = None,
        finished_before: datetime | None = None,
        limit: int | None = None,
    ) -> list[str]:
        params = {
            "state": state.value,
            "ids": self._ids(job_ids),
            "before": self.d.time(finished_before),
            "limit": limit,
        }
        rows = self.d.read(lambda conn: conn.execute(self.sql.deletable_jobs, params).fetchall())
        return [row["id"] for row in rows]

    def delete_jobs(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        params = {"ids": self._ids(job_ids)}

        def op(conn: Conn) -> None:
            conn.execute(self.sql.delete_jobs, params)
            left = {row["id"] for row in conn.execute(self.sql.get_jobs, params)}
            gone = [job_id for job_id in job_ids if job_id not in left]
            conn.execute(self.sql.forget_edges, {"ids": self._ids(gone)})

        self.d.write(op)  # deleting again what is gone deletes nothing: safe to replay
        # Whatever of them is gone now was deleted, by this call or a concurrent one.
        left = self.get_jobs(job_ids)
        return [job_id for job_id in job_ids if job_id not in left]

    # -- schedules -------------------------------------------------------------------

    def _schedule_params(self, schedule: NewSchedule, now: datetime) -> dict[str, Any]:
        spec = schedule.spec
        return {
            "id": spec.id,
            "template": self.d.json(spec.template.declared()),
            "schedule": self.d.json(spec.declared()),
            "spec_hash": spec.spec_hash,
            "suspended": spec.suspend,
            "now": self.d.time(now),
            "origin": schedule.source.origin.value,
            "source_file": schedule.source.file,
            "source_commit": schedule.source.commit,
        }

    def _create_schedules(
        self, conn: Conn, schedules: Sequence[NewSchedule], now: datetime
    ) -> None:
        """Create schedules inside the caller's write; an identical existing one is a no-op,
        a different one a JobConflict (the spool's rule for ids, as for jobs)."""
        for schedule in schedules:
            params = self._schedule_params(schedule, now)
            if conn.execute(self.sql.create_schedule, params).rowcount == 1:
                continue
            row = conn.execute(self.sql.schedule_stamps, params).fetchone()
            if row["spec_hash"] != schedule.spec.spec_hash:
                raise schedule_conflict(schedule.spec.id, source_of(row))

    def _apply_schedule(self, conn: Conn, change: ScheduleChange, now: datetime) -> None:
        """One schedule write of an apply, only if the schedule is as the plan saw it."""
        params: dict[str, Any] = {"id": change.schedule_id, "now": self.d.time(now)}
        if change.schedule is not None:
            params.update(self._schedule_params(change.schedule, now))
        params["expected_hash"] = change.expected_hash
        if change.action == "create":
            written = conn.execute(self.sql.create_schedule, params).rowcount
        elif change.action == "update":
            written = conn.execute(self.sql.update_schedule, params).rowcount
        elif change.action == "prune":
            written = conn.execute(self.sql.prune_schedule, params).rowcount
            self._ended(conn, conn.execute(self.sql.cancel_runs, params).fetchall(), now)
        else:
            raise ValueError(f"unknown change {change.action!r}")
        if written != 1:
            raise schedule_changed_meanwhile(change.schedule_id)

    def upsert_schedule(self, schedule: NewSchedule, now: datetime) -> str:
        spec = schedule.spec
        stamp = self.d.time(now)
        params = self._schedule_params(schedule, now)

        def op(conn: Conn) -> str:
            before = conn.execute(self.sql.schedule_stamps, params).fetchone()
            if before is not None and before["spec_hash"] == spec.spec_hash:
                return "unchanged"
            conn.execute(self.sql.upsert_schedule, params)
            self.d.notify(conn)  # running schedulers pick the new timetable up at once
            return "created" if before is None else "updated"

        def done(conn: Conn) -> str | None:
            # This spec, written at this very instant: the first try committed.
            row = conn.execute(self.sql.schedule_stamps, params).fetchone()
            if row is None or row["spec_hash"] != spec.spec_hash or row["updated_at"] != stamp:
                return None
            return "created" if row["created_at"] == stamp else "updated"

        return self.d.write(op, already_done=done)

    def list_schedules(self, schedule_id: str | None = None) -> list[Schedule]:
        params = {"id": schedule_id}
        rows = self.d.read(lambda conn: conn.execute(self.sql.list_schedules, params).fetchall())
        return [self._schedule(row) for row in rows]

    def set_suspended(self, schedule_id: str, suspended: bool, now: datetime) -> None:
        params = {"id": schedule_id, "suspended": suspended, "now": self.d.time(now)}
        written = self.d.write(
            lambda conn: conn.execute(self.sql.set_suspended, params).rowcount, single=True
        )
        if written == 0:
            raise ScheduleNotFound(schedule_id)

    def delete_schedule(self, schedule_id: str, now: datetime) -> list[str]:
        params = {"id": schedule_id, "now": self.d.time(now)}

        def op(conn: Conn) -> list[str]:
            if conn.execute(self.sql.delete_schedule, params).rowcount == 0:
                raise ScheduleNotFound(schedule_id)
            canceled = conn.execute(self.sql.cancel_runs, params).fetchall()
            self._ended(conn, canceled, now)
            return sorted(row["id"] for row in canceled)

        def done(conn: Conn) -> list[str] | None:
            if conn.execute(self.sql.schedule_stamps, params).fetchone():
                return None  # still there: the first try did not commit
            return sorted(row["id"] for row in conn.execute(self.sql.canceled_runs_at, params))

        return self.d.write(op, already_done=done)

    def due_schedules(self, now: datetime) -> list[Schedule]:
        params = {"now": self.d.time(now)}
        rows = self.d.read(lambda conn: conn.execute(self.sql.due_schedules, params).fetchall())
        return [self._schedule(row) for row in rows]

    def next_tick_at(self) -> datetime | None:
        row = self.d.read(lambda conn: conn.execute(self.sql.next_tick_at).fetchone())
        return self.d.instant(row["next_at"]) if row else None

    def tick(self, ticks: Sequence[Tick], now: datetime) -> list[list[Job] | None]:
        results: list[list[Job] | None] = []
        for start in range(0, len(ticks), TICKS_PER_WRITE):
            results.extend(self._tick_some(ticks[start : start + TICKS_PER_WRITE], now))
        return results

    def _tick_some(self, ticks: Sequence[Tick], now: datetime) -> list[list[Job] | None]:
        """One write for a few ticks: each is a compare-and-set of its own."""
        stamp = self.d.time(now)
        params = [
            {
                "id": tick.schedule_id,
                "spec_hash": tick.spec_hash,
                "last_tick_at": self.d.time(tick.last_tick_at),
                "tick_at": self.d.time(tick.tick_at),
                "missed": tick.missed,
                "last_missed_at": self.d.time(tick.last_missed_at),
                "next_slot_at": self.d.time(tick.next_slot_at),
            }
            for tick in ticks
        ]

        def compare_and_set(conn: Conn) -> list[bool]:
            """Which ticks won: all at once (one batch), else each on its own (a race)."""
            try:
                with self._savepoint(conn):
                    cursor = conn.cursor()
                    try:
                        cursor.executemany(self.sql.tick_schedule, params)
                        if cursor.rowcount == len(params):
                            return [True] * len(params)
                    finally:
                        cursor.close()
                    raise _LostRace
            except _LostRace:
                return [conn.execute(self.sql.tick_schedule, p).rowcount == 1 for p in params]

        def op(conn: Conn) -> list[list[Job] | None]:
            results: list[list[Job] | None] = []
            runs: list[dict[str, Any]] = []
            for tick, won in zip(ticks, compare_and_set(conn), strict=True):
                if not won:
                    results.append(None)  # another scheduler ticked it (or it changed) meanwhile
                    continue
                replaced: list[Job] = []
                if tick.replace_previous and tick.runs:
                    newest = tick.runs[-1].id
                    replace = {
                        "id": tick.schedule_id,
                        "now": stamp,
                        "replaced_by": f"replaced by {newest}",
                        "replaced_by_id": newest,
                    }
                    rows = conn.execute(self.sql.replace_runs, replace).fetchall()
                    self._ended(conn, rows, now)
                    replaced = [self._job(row) for row in rows]
                results.append(replaced)
                for run in tick.runs:
                    if not run.spec.needs:
                        runs.append(self._job_params(run, now))
                    elif conn.execute(self.sql.insert_job, self._job_params(run, now)).rowcount:
                        self._wait_on_needs(conn, [run], now)  # queued after the previous run
                        self.d.notify(conn)
            if runs:
                # ON CONFLICT DO NOTHING: a run `schedule trigger` made already stays as it is.
                cursor = conn.cursor()
                try:
                    cursor.executemany(self.sql.insert_job, runs)
                finally:
                    cursor.close()
                self.d.notify(conn)
            return results

        def done(conn: Conn) -> list[list[Job] | None] | None:
            # The write is all or nothing: if it committed, the ticks it won show their
            # tick_at (their replaced runs are canceled; their workers stop them).
            found = [
                conn.execute(self.sql.list_schedules, tick_params).fetchone()
                for tick_params in params
            ]
            won = [
                row is not None and row["last_tick_at"] == tick_params["tick_at"]
                for row, tick_params in zip(found, params, strict=True)
            ]
            if not any(won):
                return None
            return [[] if w else None for w in won]

        return self.d.write(op, already_done=done)

    # -- config ----------------------------------------------------------------------

    def read_config(self) -> dict[str, str]:
        rows = self.d.read(lambda conn: conn.execute(self.sql.read_config).fetchall())
        return {row["key"]: row["value"] for row in rows}

    def write_config(self, key: str, value: str) -> None:
        params = {"key": key, "value": value}
        self.d.write(lambda conn: conn.execute(self.sql.write_config, params), single=True)

    # -- workers ---------------------------------------------------------------------

    def register_worker(self, worker: WorkerInfo) -> None:
        params = {
            "id": worker.id,
            "pid": worker.pid,
            "host": worker.host,
            "queues": self.d.json(list(worker.queues)),
            "started_at": self.d.time(worker.started_at),
            "heartbeat_at": self.d.time(worker.heartbeat_at),
            "lease_expires_at": self.d.time(worker.lease_expires_at),
            "before": self.d.time(worker.started_at),
        }

        def op(conn: Conn) -> None:
            conn.execute(self.sql.forget_dead_workers, params)
            conn.execute(self.sql.register_worker, params)

        self.d.write(op)

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
            "now": self.d.time(now),
            "lease_until": self.d.time(lease_until),
            "job_id": job_id,
            "token": token,
        }

        def op(conn: Conn) -> Heartbeat:
            self._fold_counts(conn)  # every beat of every worker: the deltas stay few
            row = conn.execute(self.sql.heartbeat_worker, params).fetchone()
            job = conn.execute(self.sql.renew_job_lease, params).fetchone() if job_id else None
            return Heartbeat(
                stop_requested=bool(row and row["stop_requested"]),
                claim_held=job_id is None or (job is not None and job["state"] == "processing"),
                canceled=job is not None and job["state"] == "canceled",
            )

        return self.d.write(op)  # the same renewal twice is one renewal

    def deregister_worker(self, worker_id: str) -> None:
        params = {"worker_id": worker_id}
        self.d.write(lambda conn: conn.execute(self.sql.deregister_worker, params), single=True)

    def live_workers(self, now: datetime) -> list[WorkerInfo]:
        params = {"now": self.d.time(now)}
        rows = self.d.read(lambda conn: conn.execute(self.sql.live_workers, params).fetchall())
        return [
            WorkerInfo(
                id=row["id"],
                pid=row["pid"],
                host=row["host"],
                started_at=self._required(row["started_at"]),
                heartbeat_at=self._required(row["heartbeat_at"]),
                lease_expires_at=self._required(row["lease_expires_at"]),
                current_job=row["current_job"],
                queues=tuple(self.d.decode_json(row["queues"])),
            )
            for row in rows
        ]

    def _required(self, value: Any) -> datetime:
        instant = self.d.instant(value)
        if instant is None:
            raise StoreError("a stored row lacks a required time: the database is damaged")
        return instant

    def request_stop(self, worker_ids: Sequence[str] | None = None) -> int:
        params = {"ids": self._ids(worker_ids)}
        return int(
            self.d.write(
                lambda conn: conn.execute(self.sql.request_stop, params).rowcount, single=True
            )
        )

    def claim_next(
        self,
        worker_id: str,
        queues: Sequence[str],
        now: datetime,
        lease_until: datetime,
        token: str,
    ) -> Job | None:
        params = self._claim_params(worker_id, queues, now, lease_until, token)
        op = self._claim_op(params)
        for _ in range(CLAIM_TRIES):
            try:
                row = self.d.write(
                    op,
                    already_done=lambda conn: conn.execute(
                        self.sql.claimed_with, params
                    ).fetchone(),
                    single=not self.sql.key_lock,
                )
            except _OverLimit:
                continue  # another claim took the key's last slot: the next try passes it by
            return self._job(row) if row else None
        return None  # claims keep racing for keys: the worker tries again at its next poll

    def _claim_params(
        self,
        worker_id: str,
        queues: Sequence[str],
        now: datetime,
        lease_until: datetime,
        token: str,
    ) -> dict[str, Any]:
        return {
            "worker_id": worker_id,
            "token": token,
            "now": self.d.time(now),
            "lease_until": self.d.time(lease_until),
            "queues": self._ids(queues) if queues else None,
        }

    def _claim_op(self, params: dict[str, Any]) -> Callable[[Conn], Any]:
        def op(conn: Conn) -> Any:
            row = conn.execute(self.sql.claim_next, params).fetchone()
            if row is None or row["concurrency_key"] is None or not self.sql.key_lock:
                return row
            # Claims run at once here: count the key's holders again, under the key's lock
            # (held to the commit); over the limit, the claim is rolled back.
            key = {"key": row["concurrency_key"], "now": params["now"]}
            conn.execute(self.sql.key_lock, key)
            if (
                len(conn.execute(self.sql.key_holders_now, key).fetchall())
                > row["concurrency_limit"]
            ):
                raise _OverLimit
            return row

        return op

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
        if self.sql.key_lock:  # a claim that may roll back over a key's limit stands alone
            landed = self.finish(job_id, token, outcome, now)
            return landed, self.claim_next(worker_id, queues, now, lease_until, next_token)
        finish = self._finish_op(
            job_id, outcome, now, self._finish_params(job_id, token, outcome, now)
        )
        claim = self._claim_op(self._claim_params(worker_id, queues, now, lease_until, next_token))
        landed, row = self.d.write(lambda conn: (finish(conn), claim(conn)))
        return bool(landed), self._job(row) if row else None

    def finish(
        self,
        job_id: str,
        token: str,
        outcome: Transition,
        now: datetime,
        *,
        expired_before: datetime | None = None,
    ) -> bool:
        params = self._finish_params(job_id, token, outcome, now, expired_before)
        op = self._finish_op(job_id, outcome, now, params)

        def done(conn: Conn) -> bool | None:
            # The outcome is there, written at this very instant, claim dropped: it was ours.
            row = conn.execute(self.sql.get_job, {"id": job_id}).fetchone()
            landed = (
                row is not None
                and row["state"] == outcome.state.value
                and row["attempts"] == outcome.attempts
                and row["updated_at"] == params["now"]
                and row["lease_token"] is None
            )
            return True if landed else None

        return bool(self.d.write(op, already_done=done))

    def _finish_params(
        self,
        job_id: str,
        token: str,
        outcome: Transition,
        now: datetime,
        expired_before: datetime | None = None,
    ) -> dict[str, Any]:
        return {
            "expired_before": self.d.time(expired_before),
            "job_id": job_id,
            "token": token,
            "state": outcome.state.value,
            "attempts": outcome.attempts,
            "available_at": self.d.time(outcome.available_at),
            "exit_code": outcome.exit_code,
            "last_error": outcome.last_error,
            "output_tail": outcome.output_tail,
            "now": self.d.time(now),
        }

    def _finish_op(
        self, job_id: str, outcome: Transition, now: datetime, params: dict[str, Any]
    ) -> Callable[[Conn], bool]:
        def op(conn: Conn) -> bool:
            row = conn.execute(self.sql.finish_job, params).fetchone()
            if row is not None and row["has_dependents"]:  # in the same write, or never
                self._settle(conn, [(job_id, outcome.state)], now)
            return row is not None

        return op

    def release_claim(
        self, job_id: str, token: str, output_tail: str | None, *, now: datetime
    ) -> bool:
        params = {"job_id": job_id, "token": token, "output_tail": output_tail}

        def op(conn: Conn) -> bool:
            row = conn.execute(self.sql.release_claim, params).fetchone()
            if row is not None and row["has_dependents"]:
                # Its processes are gone only now: `on: finished` needs are met now.
                self._settle(conn, [(job_id, JobState.CANCELED)], now)
            return row is not None

        def done(conn: Conn) -> bool | None:
            row = conn.execute(self.sql.get_job, {"id": job_id}).fetchone()
            released = row is not None and row["state"] == "canceled" and not row["lease_token"]
            return True if released else None

        return bool(self.d.write(op, already_done=done))

    def processing_jobs(self) -> list[Job]:
        rows = self.d.read(lambda conn: conn.execute(self.sql.processing_jobs).fetchall())
        return [self._job(row) for row in rows]

    def drain_blockers(self, queues: Sequence[str], now: datetime) -> int:
        params = {"now": self.d.time(now), "queues": self._ids(queues) if queues else None}
        row = self.d.read(lambda conn: conn.execute(self.sql.drain_blockers, params).fetchone())
        return int(row["n"]) if row else 0

    def next_available_at(self, queues: Sequence[str]) -> datetime | None:
        params = {"queues": self._ids(queues) if queues else None}
        row = self.d.read(lambda conn: conn.execute(self.sql.next_available_at, params).fetchone())
        return self.d.instant(row["next_at"]) if row else None
