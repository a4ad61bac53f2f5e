"""Shared fixtures: a private QUEUECTL_HOME per test, the installed command, store and queue."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from queuectl.core import Queue
from queuectl.store import Store, open_store

if TYPE_CHECKING:
    from .processes import Workers

QUEUECTL = str(Path(sys.executable).with_name("queuectl"))
LOCAL_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUIRE_PG = os.environ.get("QUEUECTL_REQUIRE_POSTGRES") == "1"
# Every PostgreSQL skip starts so: the report folds them into one line (see below).
PG_SKIP = "PostgreSQL tests skipped: "


@functools.cache
def pg_url() -> str:
    """The PostgreSQL server to test against: QUEUECTL_TEST_DATABASE_URL ("" for none), else
    the local server when one answers (as `.ci/run` uses it), else none. Asked once."""
    if "QUEUECTL_TEST_DATABASE_URL" in os.environ:
        return os.environ["QUEUECTL_TEST_DATABASE_URL"]
    try:
        import psycopg
    except ImportError:  # installed without the postgres extra
        return ""
    try:
        psycopg.connect(LOCAL_PG_URL, connect_timeout=2).close()
    except psycopg.Error:
        return ""
    return LOCAL_PG_URL


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_backends: run the test on SQLite and on PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests of the store contract (and those marked both_backends) run on both stores."""
    wants_both = "store" in metafunc.fixturenames or metafunc.definition.get_closest_marker(
        "both_backends"
    )
    if wants_both and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["sqlite", "postgres"])


@pytest.fixture
def backend() -> str:
    return "sqlite"


def postgres_schema_url() -> Iterator[str]:
    """A fresh schema in the test server, as a URL whose search_path selects it; dropped after."""
    url = pg_url()
    if not url:
        reason = (
            f"no server answered at {LOCAL_PG_URL} and QUEUECTL_TEST_DATABASE_URL is not set: "
            "start one there, or set QUEUECTL_TEST_DATABASE_URL=postgresql://..."
        )
        if "QUEUECTL_TEST_DATABASE_URL" in os.environ:
            reason = "QUEUECTL_TEST_DATABASE_URL is empty: set it to postgresql://... to run them"
        if REQUIRE_PG:
            pytest.fail(reason + " (QUEUECTL_REQUIRE_POSTGRES=1)")
        pytest.skip(PG_SKIP + reason)
    import psycopg

    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL at {url} is required but unreachable: {exc}")
        # The error stays out of the reason, so that the skips fold into one line.
        pytest.skip(PG_SKIP + f"{url} is unreachable: check the server, or unset the variable")
    schema = f"qt_{uuid.uuid4().hex[:16]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


_PG_SKIP_LINE = postgres_schema_url.__code__.co_firstlineno - 1  # 0-based, as reports hold it


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Report every PostgreSQL skip at one place, so that `-rs` folds them into one line
    ("SKIPPED [80] tests/conftest.py:...: PostgreSQL tests skipped: ... how to run them")
    instead of a line per test; other skips keep their own lines."""
    report = yield
    longrepr = report.longrepr
    if report.skipped and isinstance(longrepr, tuple) and PG_SKIP in str(longrepr[2]):
        report.longrepr = (__file__, _PG_SKIP_LINE, longrepr[2])
    return report


class FakeClock:
    """A clock for library tests: time moves only when the test says so."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += timedelta(milliseconds=ms)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh QUEUECTL_HOME for this test (never the user's, never the working directory)."""
    path = tmp_path / "home"
    monkeypatch.setenv("QUEUECTL_HOME", str(path))
    for name in list(os.environ):
        if (
            name.startswith("QUEUECTL_")
            and name not in ("QUEUECTL_HOME",)
            and not name.startswith(("QUEUECTL_TEST_", "QUEUECTL_REQUIRE_"))
        ):
            monkeypatch.delenv(name)
    return path


@pytest.fixture
def db_path(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    return home / "queue.db"


@pytest.fixture
def db_url(backend: str, home: Path) -> Iterator[str]:
    """The store of this test: the home's SQLite file, or a fresh PostgreSQL schema."""
    if backend == "postgres":
        yield from postgres_schema_url()
    else:
        yield f"sqlite:///{home / 'queue.db'}"


@pytest.fixture
def store(db_url: str, home: Path) -> Iterator[Store]:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    opened = open_store(db_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[Store]:
    opened = open_store(f"sqlite:///{db_path}")
    yield opened
    opened.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(store: Store, clock: FakeClock) -> Queue:
    return Queue(store, clock=clock)


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def run(home: Path, backend: str, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run the installed `queuectl` with this test's home and store; returns the process.

    On SQLite the store is the home's default database, as a new user gets it.
    """
    if backend == "postgres":
        monkeypatch.setenv("QUEUECTL_DATABASE_URL", db_url)

    def run_queuectl(
        *args: str,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        raw = subprocess.run(
            [QUEUECTL, *args],
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        return subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode(errors="replace"),
            raw.stderr.decode(errors="replace"),
        )

    return run_queuectl


@pytest.fixture
def run_json(run: Run) -> Callable[..., Any]:
    """Run a command that must succeed and print JSON; return the parsed output."""

    def run_and_parse(*args: str, **kwargs: Any) -> Any:
        result = run(*args, **kwargs)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return run_and_parse


@pytest.fixture
def fast_polling(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle workers look for due jobs every 50 ms instead of 500 ms (end-to-end modules
    use it: `pytest.mark.usefixtures("fast_polling")`)."""
    monkeypatch.setenv("QUEUECTL_POLL_INTERVAL_MS", "50")


@pytest.fixture
def workers(home: Path, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes for one test, every one of them killed at teardown."""
    from .processes import Workers  # it imports this module

    started = Workers(home, tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def wait_for(condition: Callable[[], Any], *, timeout: float = 30, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
