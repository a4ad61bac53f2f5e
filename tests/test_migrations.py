"""One migration sequence for both dialects: snapshots, and upgrades in place.

The upgrade tests build a database the way the queuectl before the shared
sequence did (its migration files, its version records) and check that today's
queuectl opens it, upgrades it and keeps every job and count.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from queuectl.core import Queue
from queuectl.models import JobSpec, JobState, Origin, Source
from queuectl.store import Store, Transition, open_store
from queuectl.store.sql import MIGRATIONS, migrations

from .conftest import FakeClock, postgres_schema_url

SNAPSHOTS = Path(__file__).with_name("snapshots")


def test_both_dialects_share_one_numbered_sequence() -> None:
    sqlite = [(number, path.name.split(".")[0]) for number, path in migrations("sqlite")]
    postgres = [(number, path.name.split(".")[0]) for number, path in migrations("postgres")]
    assert sqlite == postgres
    assert [number for number, _ in sqlite] == list(range(1, len(sqlite) + 1))
    assert {p.name for p in MIGRATIONS.iterdir() if p.suffix == ".sql"} == {
        p.name for _, p in migrations("sqlite") + migrations("postgres")
    }


# -- PostgreSQL: the schema snapshot ---------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    yield from postgres_schema_url()


def pg(url: str, sql: str, *args: Any) -> list[Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.encode() if not args else sql, args or None)
        return cur.fetchall() if cur.description else []


def postgres_schema(url: str) -> str:
    """Tables, columns, constraints, indexes, triggers and functions of the test's schema."""
    schema = pg(url, "SELECT current_schema()")[0][0]
    parts = [f"-- version {pg(url, 'SELECT version FROM queuectl_schema')[0][0]}"]
    for (line,) in pg(
        url,
        """
        SELECT table_name || '(' || string_agg(
                   column_name || ' ' || data_type
                   || CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END
                   || coalesce(' DEFAULT ' || column_default, ''), ', ' ORDER BY ordinal_position)
               || ')'
          FROM information_schema.columns WHERE table_schema = current_schema()
         GROUP BY table_name ORDER BY table_name
        """,
    ):
        parts.append(line)
    catalog = """
        SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = current_schema()::regnamespace;
        SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema();
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal;
        SELECT pg_get_functiondef(oid) FROM pg_proc
         WHERE pronamespace = current_schema()::regnamespace
    """
    for query in catalog.split(";"):
        parts.extend(sorted(row[0].strip() for row in pg(url, query)))
    return "\n".join(parts).replace(f"{schema}.", "") + "\n"


def test_postgres_migrating_twice_changes_nothing_and_matches_the_snapshot(pg_url: str) -> None:
    open_store(pg_url).close()
    first = postgres_schema(pg_url)
    open_store(pg_url).close()
    assert postgres_schema(pg_url) == first
    snapshot = SNAPSHOTS / "postgres_schema.sql"
    assert first == snapshot.read_text(), "schema changed: add a migration and update the snapshot"


# -- upgrades in place from the queuectl before the shared sequence -------------------------


def fill(store: Store, clock: FakeClock) -> dict[str, int]:
    """A few jobs in several states, through the store as any queuectl would write them."""
    queue = Queue(store, clock=clock)
    queue.enqueue([JobSpec(command="true", id=f"job-{i}") for i in range(6)])
    lease = clock() + timedelta(seconds=30)
    for i, state in enumerate((JobState.COMPLETED, JobState.DEAD)):
        job = store.claim_next("w", (), clock(), lease, f"t{i}")
        assert job is not None
        store.finish(job.id, f"t{i}", Transition(state, 1, clock(), 1, "x", None), clock())
    store.claim_next("w", (), clock(), lease, "running")
    return {"pending": 3, "processing": 1, "completed": 1, "dead": 1}


def expected_counts(filled: dict[str, int]) -> dict[JobState, int]:
    return {state: filled.get(state.value, 0) for state in JobState}


LEGACY_ROWS = [
    ("old-inline", "inline"),
    ("old-spool", "spool:x.yaml"),
    ("old-apply", "apply:/a/b.yaml"),
]


def legacy_sqlite(path: Path) -> None:
    """A database as queuectl made it before: migrations 0001-0005, user_version 5, with
    jobs of each origin written as it wrote them."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        for number, script in migrations("sqlite")[:5]:
            conn.executescript(script.read_text())
            conn.execute(f"PRAGMA user_version = {number}")
        for job_id, source in LEGACY_ROWS:
            conn.execute(
                "INSERT INTO jobs (id, command, max_retries, state, created_at, updated_at,"
                " available_at, source, spec_hash)"
                " VALUES (?, '\"true\"', 3, 'pending', 1, 1, 1, ?, 'h')",
                (job_id, source),
            )


def assert_legacy_sources(store: Store) -> None:
    shown = {
        job_id: str(job.source)
        for job_id, job in store.get_jobs([i for i, _ in LEGACY_ROWS]).items()
    }
    assert shown == dict(LEGACY_ROWS)
    applied = store.get_job("old-apply")
    assert applied is not None and applied.source == Source(Origin.APPLY, "/a/b.yaml")
    pending_applied = store.list_jobs(state=JobState.PENDING, origin=Origin.APPLY)
    assert [job.id for job in pending_applied] == ["old-apply"]


def test_a_sqlite_database_of_the_previous_release_upgrades_in_place(
    db_path: Path, clock: FakeClock
) -> None:
    legacy_sqlite(db_path)
    store = open_store(f"sqlite:///{db_path}")
    assert_legacy_sources(store)
    filled = fill(store, clock)
    filled["pending"] += len(LEGACY_ROWS)
    assert store.count_by_state() == expected_counts(filled)
    store.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(migrations("sqlite"))


def legacy_postgres(url: str, files: list[str]) -> None:
    """A database as queuectl made it before the shared sequence: its own two files,
    recorded as versions 1 and 2 in queuectl_schema."""
    by_name = {path.name: path for _, path in migrations("postgres")}
    pg(url, "CREATE TABLE queuectl_schema (version integer NOT NULL)")
    for version, name in enumerate(files, start=1):
        pg(url, by_name[name].read_text())
        pg(url, "DELETE FROM queuectl_schema")
        pg(url, "INSERT INTO queuectl_schema (version) VALUES (%s)", version)


@pytest.mark.parametrize(
    "files",
    [
        ["0001_initial.postgres.sql"],
        ["0001_initial.postgres.sql", "0005_stopping_jobs.postgres.sql"],
    ],
    ids=["legacy version 1", "legacy version 2"],
)
def test_a_postgres_database_of_the_previous_release_upgrades_in_place(
    pg_url: str, fresh_pg_url: str, clock: FakeClock, files: list[str]
) -> None:
    legacy_postgres(pg_url, files)
    for job_id, source in LEGACY_ROWS:  # rows the old queuectl wrote, before counts were kept
        pg(
            pg_url,
            "INSERT INTO jobs (id, command, max_retries, state, created_at, updated_at,"
            " available_at, source, spec_hash)"
            " VALUES (%s, '\"true\"', 3, 'pending', now(), now(), now(), %s, 'h')",
            job_id,
            source,
        )
    store = open_store(pg_url)
    assert_legacy_sources(store)
    filled = fill(store, clock)
    filled["pending"] += len(LEGACY_ROWS)
    assert store.count_by_state() == expected_counts(filled)
    store.close()
    open_store(fresh_pg_url).close()
    assert postgres_schema(pg_url) == postgres_schema(fresh_pg_url)


def test_postgres_counts_stay_right_through_folds(pg_url: str, clock: FakeClock) -> None:
    store = open_store(pg_url)
    filled = fill(store, clock)
    assert store.count_by_state() == expected_counts(filled)
    store.heartbeat("w", clock(), clock(), None, None)  # folds the appended counts
    (states, rows) = pg(pg_url, "SELECT count(DISTINCT state), count(*) FROM job_counts")[0]
    assert rows == states, "a fold leaves one row per state"
    assert store.count_by_state() == expected_counts(filled)
    Queue(store, clock=clock).dlq_purge()
    filled.pop("dead")
    assert store.count_by_state() == expected_counts(filled)
    store.close()


# -- 0012: counts per queue and state, rebuilt from the jobs ---------------------------------

ROWS_0011 = [
    ("a1", "default", "pending"),
    ("a2", "default", "completed"),
    ("b1", "mail", "completed"),
    ("b2", "mail", "completed"),
    ("b3", "mail", "dead"),
]
COUNTS_0012 = {
    ("default", JobState.PENDING): 1,
    ("default", JobState.COMPLETED): 1,
    ("mail", JobState.COMPLETED): 2,
    ("mail", JobState.DEAD): 1,
}


def test_0012_counts_a_sqlite_store_s_jobs_per_queue(db_path: Path) -> None:
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        for number, script in migrations("sqlite")[:11]:
            conn.executescript(script.read_text())
            conn.execute(f"PRAGMA user_version = {number}")
        for job_id, queue, state in ROWS_0011:
            conn.execute(
                "INSERT INTO jobs (id, command, max_retries, queue, state, created_at, updated_at,"
                " available_at, spec_hash) VALUES (?, '\"true\"', 3, ?, ?, 1, 1, 1, 'h')",
                (job_id, queue, state),
            )
    store = open_store(f"sqlite:///{db_path}")
    assert store.count_by_queue() == COUNTS_0012
    assert store.count_by_state()[JobState.COMPLETED] == 3
    store.close()


def test_0012_counts_a_postgres_store_s_jobs_per_queue(pg_url: str) -> None:
    pg(pg_url, "CREATE TABLE queuectl_schema (version integer NOT NULL)")
    pg(pg_url, "INSERT INTO queuectl_schema (version) VALUES (0)")
    for number, script in migrations("postgres")[:11]:
        pg(pg_url, script.read_text())
        pg(pg_url, "UPDATE queuectl_schema SET version = %s", number)
    for job_id, queue, state in ROWS_0011:
        pg(
            pg_url,
            "INSERT INTO jobs (id, command, max_retries, queue, state, created_at, updated_at,"
            " available_at, spec_hash) VALUES (%s, '\"true\"', 3, %s, %s, now(), now(), now(),"
            " 'h')",
            job_id,
            queue,
            state,
        )
    store = open_store(pg_url)
    assert store.count_by_queue() == COUNTS_0012
    store.close()


def sqlite_at(path: Path, version: int) -> None:
    """A SQLite store as queuectl left it at schema `version`, with one job of each state."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        for number, script in migrations("sqlite")[:version]:
            conn.executescript(script.read_text())
            conn.execute(f"PRAGMA user_version = {number}")
        for state in JobState:
            conn.execute(
                "INSERT INTO jobs (id, command, max_retries, state, created_at, updated_at,"
                " available_at, spec_hash) VALUES (?, '\"true\"', 3, ?, 1, 1, 1, 'h')",
                (f"job-{state.value}", state.value),
            )


def test_0014_rewrites_the_checks_in_place_and_open_connections_parse_them_anew(
    db_path: Path,
) -> None:
    sqlite_at(db_path, 13)
    with sqlite3.connect(db_path, isolation_level=None) as other:
        other.execute("SELECT count(*) FROM jobs").fetchone()  # parsed the schema before 0014
        store = open_store(f"sqlite:///{db_path}")
        assert store.count_by_state() == {state: 1 for state in JobState}
        store.close()
        with pytest.raises(sqlite3.IntegrityError, match="state = 'pending' OR state = "):
            other.execute(
                "INSERT INTO jobs (id, command, max_retries, state, created_at, updated_at,"
                " available_at, spec_hash) VALUES ('x', '\"true\"', 3, 'bogus', 1, 1, 1, 'h')"
            )
        assert other.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = dict(other.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'table'"))
    assert "origin = 'inline' OR origin = 'spool' OR origin = 'apply'" in tables["jobs"]
    assert "origin = 'inline' OR origin = 'spool' OR origin = 'apply'" in tables["schedules"]
    assert "on_state = 'success' OR on_state = 'failure'" in tables["job_needs"]


def test_a_schema_edit_sqlite_cannot_parse_changes_nothing(db_path: Path) -> None:
    """0014 only makes the schema faster: an edit whose result SQLite rejects is undone,
    and the store opens and works as before."""
    from queuectl.store.sqlite import _edit_schema

    sqlite_at(db_path, 13)
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        before = conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'jobs'").fetchone()
        conn.execute("BEGIN IMMEDIATE")
        _edit_schema(
            conn,
            "UPDATE sqlite_schema SET sql = replace(sql, 'CHECK (state IN', 'CHECK (state IN (')"
            " WHERE type = 'table' AND name = 'jobs'",
        )
        conn.execute("COMMIT")
        assert conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'jobs'").fetchone() == (
            before
        )
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = open_store(f"sqlite:///{db_path}")
    assert store.count_by_state() == {state: 1 for state in JobState}
    store.close()
