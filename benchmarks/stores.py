"""The stores behind the benchmarks: a throwaway PostgreSQL database per run, and a
cheap read-only look into a SQLite store.

`PostgresServer.find()` raises BenchSkipped when no server answers, so the scenarios
that need one report a skip instead of failing. Every database it creates is
dropped when its `with` block ends, however the block ends.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from .harness import BenchError, BenchSkipped

if TYPE_CHECKING:
    import psycopg

POSTGRES_URL_ENV = "QUEUECTL_TEST_DATABASE_URL"  # the variable the test suite reads too
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 5
DATABASE_PREFIX = "qbench_"


def redact(url: str) -> str:
    """The URL with any password replaced by `***`, for messages and results."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PostgresServer:
    """A reachable PostgreSQL server, through a maintenance connection (autocommit)."""

    def __init__(self, url: str, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        self.url = url
        self.display = redact(url)
        self._conn = conn
        self.version = conn.info.server_version  # e.g. 150004
        self.created: list[str] = []  # the names of every database made, for the results

    @classmethod
    def find(cls) -> PostgresServer:
        """Connect to $QUEUECTL_TEST_DATABASE_URL (or the local default).

        :raises BenchSkipped: psycopg is missing or no server answers there.
        """
        url = os.environ.get(POSTGRES_URL_ENV) or DEFAULT_POSTGRES_URL
        try:
            import psycopg
        except ImportError:
            raise BenchSkipped(
                "skipped: psycopg is not installed (`pip install -e '.[postgres]'`)"
            ) from None
        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise BenchSkipped(
                f"skipped: no server at {redact(url)} ({_first_line(exc)}); set "
                f"{POSTGRES_URL_ENV} to a server where this user may CREATE DATABASE"
            ) from None
        return cls(url, conn)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new, empty database for one run; yields its URL and drops it afterwards."""
        import psycopg
        from psycopg import sql

        name = f"{DATABASE_PREFIX}{secrets.token_hex(6)}"
        try:
            self._conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise BenchError(
                f"cannot create a database on {self.display}: {_first_line(exc)}"
            ) from None
        self.created.append(name)
        try:
            yield urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))
        finally:
            self._drop(name)

    def _drop(self, name: str) -> None:
        from psycopg import sql

        ident = sql.Identifier(name)
        if self.version >= 130000:  # FORCE ends the sessions a killed worker left behind
            self._conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            return
        self._conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        self._conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


class SqlitePeek:
    """A read-only connection to a SQLite store: one query costs microseconds, not the
    start-up of a `queuectl` process, so polling it does not disturb what it measures.

    Each statement runs in its own implicit transaction (WAL readers never block the
    writer) and sees every commit made before it started.
    """

    def __init__(self, db: Path) -> None:
        self._conn = sqlite3.connect(
            f"{db.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
        )

    def __enter__(self) -> SqlitePeek:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def created_at_ms(self, job_id: str) -> int | None:
        """The job's created_at (integer ms since the epoch), or None if it does not exist."""
        row = self._conn.execute("SELECT created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else int(row[0])

    def count(self, state: str) -> int:
        row = self._conn.execute("SELECT count(*) FROM jobs WHERE state = ?", (state,)).fetchone()
        return int(row[0])
