"""The SQLite dialect: the only module that imports sqlite3.

Connections open with isolation_level=None so Python never starts a
transaction on its own; every write goes through `write()` (BEGIN IMMEDIATE,
so a writer waits for the lock up front instead of failing on upgrade).
Instants are integer milliseconds since the epoch, JSON is text.

Writers queue on a lock file beside the database before they ask SQLite for its
write lock. SQLite's own wait sleeps in steps of 1, 2, 5, 10 ms and more and
looks again, so a writer that found the lock taken usually slept long after it
was free (two busy workers lost about 13% of their time so); the kernel wakes a
writer blocked on the lock file the moment it is released. The lock file only
orders our own writers: SQLite's lock still guards the data, and a process that
does not use the file (the sqlite3 shell) is waited for the old way.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..errors import MigrationFailed, StoreError, StoreReplaced
from ..models import from_ms, to_ms
from .sql import SqlStore

T = TypeVar("T")
MIN_SQLITE = (3, 35, 0)  # UPDATE ... RETURNING
BUSY_TIMEOUT_MS = 60_000  # contention waits instead of failing with "database is locked"

FRAGMENTS = {
    "each": "SELECT value FROM json_each",
    "json": "",
    "text": "",
    "time": "",
    "int": "",
    "labels_match": """NOT EXISTS (
        SELECT 1 FROM json_each(:labels) AS want
         WHERE NOT EXISTS (SELECT 1 FROM json_each(jobs.labels) AS have
                            WHERE have.key = want.key AND have.value = want.value))""",
    # Without the hint SQLite sorts every due job to pick the first.
    "claim_order": "INDEXED BY jobs_claim_order",
    "skip_locked": "",  # one writer at a time: nothing to skip
    "stopping": "INDEXED BY jobs_stopping",
    "key_lock": "",  # one writer at a time: a claim's count of holders stands
    "for_update": "",  # one writer at a time: nothing to lock
    "finished_order": "INDEXED BY jobs_finished",
    # Unary + keeps a column out of index choice: without statistics SQLite would find a
    # batch of ids to delete by walking every ended job through jobs_finished.
    "by_id_only": "+",
    "fold_counts": "",  # triggers keep one counter row per state (migration 0004)
    "merge_run_stats": """ON CONFLICT (minute, queue, outcome, le_ms)
        DO UPDATE SET n = n + excluded.n, sum_ms = sum_ms + excluded.sum_ms""",
}


class SqliteDialect:
    """One SQLite file, in WAL mode, through one connection."""

    name = "sqlite"
    fragments: Mapping[str, str] = FRAGMENTS

    def __init__(self, path: Path, *, url: str, durable: bool) -> None:
        self.url = url
        self.path = path
        self._file_id = _file_id(path)
        self._writers = _open_writer_lock(path)
        try:
            self.conn = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
        except sqlite3.Error as exc:
            advice = advice_for(exc) or "check the path"
            raise StoreError(f"{url}: cannot open the database ({exc}): {advice}") from None
        try:
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._data_version = self._read_data_version()
        except BaseException:
            self.conn.close()
            raise

    def close(self) -> None:
        self.conn.close()
        if self._writers is not None:
            os.close(self._writers)

    # -- encoding ------------------------------------------------------------------

    def prepare(self, sql: str) -> str:
        return sql  # sqlite3 takes :name placeholders as they are

    def time(self, value: datetime | None) -> int | None:
        return None if value is None else to_ms(value)

    def instant(self, value: Any) -> datetime | None:
        return from_ms(value)

    def json(self, value: Any) -> str:
        return json.dumps(value)

    def decode_json(self, value: Any) -> Any:
        # Most jobs have no env, labels or needs: skip the parser for those (a claim
        # decodes three of them per job).
        if value == "{}":
            return {}
        if value == "[]":
            return []
        return json.loads(value)

    # -- running statements ---------------------------------------------------------

    def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return op(self.conn)

    def write(
        self,
        op: Callable[[sqlite3.Connection], T],
        *,
        already_done: Callable[[sqlite3.Connection], T | None] | None = None,
        single: bool = False,
    ) -> T:
        """One transaction, even for a single statement: BEGIN IMMEDIATE takes the write
        lock up front, where a statement alone could fail upgrading its read to a write
        (SQLITE_BUSY_SNAPSHOT, which the busy timeout does not retry). `already_done` is
        never needed: a local file loses no replies."""
        self._check_same_file()
        writers = self._writers  # the lock file, held for the transaction (where there is one)
        try:
            if writers is not None:
                fcntl.flock(writers, fcntl.LOCK_EX)
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    result = op(self.conn)
                    self.conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (disk full, I/O error): don't mask it.
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            finally:
                if writers is not None:
                    fcntl.flock(writers, fcntl.LOCK_UN)
        except sqlite3.OperationalError as exc:
            advice = advice_for(exc)
            if advice is None:
                raise
            raise StoreError(f"{self.url}: {exc}: {advice}") from None
        return result

    def notify(self, conn: sqlite3.Connection) -> None:
        """Nothing to send: idle workers watch PRAGMA data_version instead."""

    def changed(self) -> bool:
        self._check_same_file()
        version = self._read_data_version()
        changed, self._data_version = version != self._data_version, version
        return changed

    def _read_data_version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def _check_same_file(self) -> None:
        """Refuse to go on once the file at our path is another one: a worker writing to a
        replaced (or deleted) file would leave new jobs pending and itself unlisted."""
        if _file_id(self.path) != self._file_id:
            raise StoreReplaced(
                f"{self.url}: the database file was replaced or removed while this process "
                "had it open: restart the process so that it opens the file now there"
            )

    # -- schema version ---------------------------------------------------------------

    def schema_version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def lock_schema(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE already holds the one write lock."""

    def run_migration(self, conn: sqlite3.Connection, script: str, version: int) -> None:
        for statement in _statements(script):
            if _EDITS_SCHEMA.search(statement):
                _edit_schema(conn, statement)
            else:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version:d}")


def open_sqlite(path: Path, *, url: str, durable: bool = True) -> SqlStore:
    """Open (creating it 0600 if needed) and migrate the SQLite store at `path`."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StoreError(
            f"SQLite {sqlite3.sqlite_version} is too old: queuectl needs 3.35 or newer "
            "(upgrade Python or its sqlite3 library)"
        )
    if not path.parent.is_dir():
        raise StoreError(f"{url}: directory {str(path.parent)!r} does not exist: create it first")
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
                f"{url}: cannot create {str(path)!r} ({exc.strerror}): choose a writable location"
            ) from None
    try:
        dialect = SqliteDialect(path, url=url, durable=durable)
    except sqlite3.DatabaseError as exc:  # the pragmas: a file that is no database, say
        raise _unusable(url, exc) from None
    store = SqlStore(dialect)
    try:
        try:
            store.migrate()
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc) or "encrypted" in str(exc):
                raise
            raise MigrationFailed(
                f"{url}: migrating the schema failed ({exc}); the database is unchanged"
            ) from None
    except sqlite3.DatabaseError as exc:
        dialect.close()
        raise _unusable(url, exc) from None
    except BaseException:
        dialect.close()
        raise
    return store


def _unusable(url: str, exc: sqlite3.Error) -> StoreError:
    hint = advice_for(exc)
    if hint is not None:  # a sound file we may not write to, or a busy one
        return StoreError(f"{url}: {exc}: {hint}")
    return StoreError(
        f"{url}: not a usable queuectl SQLite database ({exc}): "
        "point --db at another file or move this one away"
    )


_EDITS_SCHEMA = re.compile(r"^\s*UPDATE\s+sqlite_schema\b", re.IGNORECASE | re.MULTILINE)


def _edit_schema(conn: sqlite3.Connection, statement: str) -> None:
    """Run an UPDATE of sqlite_schema as SQLite's ALTER TABLE documentation describes for
    changes every stored row already meets (such as a CHECK rewritten to mean the same):
    with writable_schema on, then a new schema cookie, so that every connection parses the
    schema again. Where SQLite refuses the edit (defensive mode) or could not parse the
    result, nothing changes: such a migration only makes the schema faster."""
    cookie = int(conn.execute("PRAGMA schema_version").fetchone()[0])
    conn.execute("SAVEPOINT edit_schema")
    try:
        conn.execute("PRAGMA writable_schema = ON")
        try:
            conn.execute(statement)
            conn.execute(f"PRAGMA schema_version = {cookie + 1:d}")
        finally:
            conn.execute("PRAGMA writable_schema = OFF")
        conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # parses it anew
    except sqlite3.DatabaseError:
        conn.execute("ROLLBACK TO edit_schema")
    conn.execute("RELEASE edit_schema")


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


def _open_writer_lock(path: Path) -> int | None:
    """The lock file writers queue on (`<database>.lock`, 0600 like the database), or None
    where it cannot be made (a read-only directory): SQLite's own wait serves there."""
    try:
        return os.open(
            path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
    except OSError:
        return None


def _file_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def advice_for(exc: sqlite3.Error) -> str | None:
    """What to do about an operational error a user can meet; None for a bug of ours."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"another process held the write lock for over {BUSY_TIMEOUT_MS // 1000} s; retry"
    if "full" in text or "disk I/O" in text:
        return "free some disk space and retry; nothing was written"
    if "readonly" in text or "unable to open" in text:
        return "check that the file and its directory are writable"
    return None
