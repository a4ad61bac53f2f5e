"""The PostgreSQL dialect: the only module that imports psycopg (the `postgres` extra).

Every host's instants are translated to the database clock (each connection
measures its offset to `clock_timestamp()`), so hosts with skewed clocks agree
on leases and due times. Claims skip rows other claims have locked (FOR UPDATE
SKIP LOCKED); writes that make work available send NOTIFY, which idle workers
LISTEN for. A lost connection is re-established with backoff and the operation
tried again, after `already_done` has looked for what the first try did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ..errors import MigrationFailed, StoreError
from ..models import utcnow
from . import redact_url
from .sql import SqlStore, pyformat

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
Conn = psycopg.Connection[Any]
CHANNEL = "queuectl"
MIGRATION_LOCK = 0x71756575  # pg_advisory_xact_lock key: one migrator at a time
RECONNECT_FOR_S = 120.0  # keep retrying a lost connection this long before giving up
ROLLED_BACK_RETRIES = 5  # a write the server rolled back (deadlock, serialization) runs again
MIN_SKEW = timedelta(seconds=1)
SKEW_EVERY_S = 60.0
# Versions recorded by queuectl before the two dialects shared one migration sequence:
# PostgreSQL's 0001 was SQLite's 0001-0003, its 0002 is the shared 0005.
LEGACY_VERSIONS = {1: 3, 2: 5}

FRAGMENTS = {
    "each": "SELECT jsonb_array_elements_text",
    "json": "::jsonb",
    "text": "::text",
    "time": "::timestamptz",
    "int": "::bigint",
    "labels_match": "labels @> :labels::jsonb",
    "claim_order": "",
    "skip_locked": "FOR UPDATE SKIP LOCKED",  # many hosts claim at once: none waits
    "stopping": "",
    "key_lock": "SELECT pg_advisory_xact_lock(hashtext(:key))",
    "for_update": "FOR UPDATE",
    "finished_order": "",
    "by_id_only": "",
    "fold_counts": "SELECT queuectl_fold_job_counts()",
    "merge_run_stats": "",  # appended; queuectl_fold_job_counts() merges (migration 0012)
}


class PostgresDialect:
    """One PostgreSQL database, shared by any number of hosts."""

    name = "postgres"
    fragments: Mapping[str, str] = FRAGMENTS

    def __init__(self, url: str, *, durable: bool) -> None:
        self.url = url
        self.display = redact_url(url)  # for messages: never print a password
        self.durable = durable
        self._skew = timedelta(0)
        self._skew_measured = 0.0
        self._listen: Conn | None = None
        self.conn = self._connect()

    def close(self) -> None:
        self.conn.close()
        if self._listen is not None:
            self._listen.close()

    def _connect(self) -> Conn:
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

    def _measure_skew(self, conn: Conn) -> None:
        row = conn.execute("SELECT clock_timestamp() AS now").fetchone()
        skew = row["now"] - utcnow() if row else timedelta(0)
        # Below a second, the offset is measurement noise (and NTP keeps hosts closer):
        # correcting it would only make a job enqueued here due a moment later there.
        self._skew = skew if abs(skew) >= MIN_SKEW else timedelta(0)
        self._skew_measured = time.monotonic()

    # -- encoding ------------------------------------------------------------------

    def prepare(self, sql: str) -> str:
        return pyformat(sql)

    def time(self, value: datetime | None) -> datetime | None:
        return None if value is None else value + self._skew

    def instant(self, value: Any) -> datetime | None:
        return None if value is None else value - self._skew

    def json(self, value: Any) -> Jsonb:
        return Jsonb(value)

    def decode_json(self, value: Any) -> Any:
        return value  # psycopg decodes jsonb

    # -- running statements ---------------------------------------------------------

    def read(self, op: Callable[[Conn], T]) -> T:
        return self._run(op)

    def write(
        self,
        op: Callable[[Conn], T],
        *,
        already_done: Callable[[Conn], T | None] | None = None,
        single: bool = False,
    ) -> T:
        def in_transaction(conn: Conn) -> T:
            with conn.transaction():
                return op(conn)

        # One statement commits by itself (autocommit): no BEGIN and COMMIT round trips.
        return self._run(op if single else in_transaction, already_done=already_done)

    def _run(
        self,
        operation: Callable[[Conn], T],
        *,
        already_done: Callable[[Conn], T | None] | None = None,
    ) -> T:
        """Run an operation; if the connection is lost, reconnect with backoff and retry.

        A connection can drop after the server committed: before a retry,
        `already_done` may find the first try's result, so it is not done twice.
        """
        delay, deadline = 0.1, time.monotonic() + RECONNECT_FOR_S
        retrying = False
        skew: timedelta | None = None
        rolled_back = 0
        while True:
            try:
                if skew is None:
                    if time.monotonic() - self._skew_measured > SKEW_EVERY_S:
                        self._measure_skew(self.conn)  # clocks get stepped (NTP after boot)
                    skew = self._skew
                else:
                    # A retry keeps the first try's clock (reconnecting measured it anew):
                    # already_done compares the instants the first try wrote.
                    self._skew = skew
                if retrying and already_done is not None:
                    done = already_done(self.conn)
                    if done is not None:
                        return done
                return operation(self.conn)
            except (
                psycopg.errors.DeadlockDetected,
                psycopg.errors.SerializationFailure,
            ) as exc:
                # The server rolled the whole write back: running it again is safe.
                rolled_back += 1
                if rolled_back > ROLLED_BACK_RETRIES:
                    raise StoreError(f"{self.display}: {exc}") from None
                time.sleep(0.01 * rolled_back)
                continue
            except psycopg.OperationalError as exc:
                if not (self.conn.closed or self.conn.broken):
                    raise StoreError(f"{self.display}: {exc}") from None
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{self.display}: connection lost and not regained: {exc}"
                    ) from None
            except psycopg.DataError as exc:
                raise StoreError(f"{self.display}: the server refused a value: {exc}") from None
            except psycopg.InternalError as exc:  # a read-only server or transaction, say
                raise StoreError(f"{self.display}: the server refused: {exc}") from None
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

    def notify(self, conn: Conn) -> None:
        conn.execute(f"SELECT pg_notify('{CHANNEL}', '')")

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

    # -- schema version ---------------------------------------------------------------

    def schema_version(self, conn: Conn) -> int:
        row = conn.execute("SELECT to_regclass('queuectl_schema') IS NOT NULL AS kept").fetchone()
        if not (row and row["kept"]):
            return 0
        row = conn.execute("SELECT max(version) AS v FROM queuectl_schema").fetchone()
        version = int((row or {}).get("v") or 0)
        return LEGACY_VERSIONS.get(version, version)

    def lock_schema(self, conn: Conn) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        # The version table itself is the one thing that cannot be versioned.
        conn.execute("CREATE TABLE IF NOT EXISTS queuectl_schema (version integer NOT NULL)")

    def run_migration(self, conn: Conn, script: str, version: int) -> None:
        conn.execute(script.encode())  # bytes: run as a script, % is no placeholder
        conn.execute("DELETE FROM queuectl_schema")
        conn.execute("INSERT INTO queuectl_schema (version) VALUES (%s)", (version,))


def open_postgres(url: str, *, durable: bool = True) -> SqlStore:
    """Connect to and migrate the PostgreSQL store at `url`."""
    dialect = PostgresDialect(url, durable=durable)
    store = SqlStore(dialect)
    try:
        store.migrate()
    except psycopg.Error as exc:
        dialect.close()
        raise MigrationFailed(
            f"{dialect.display}: migrating the schema failed ({exc}); the database is unchanged"
        ) from None
    except BaseException:
        dialect.close()
        raise
    return store
