"""Shared fixtures: a private QUEUECTL_HOME per test, the installed command, store and queue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from queuectl.core import Queue
from queuectl.store import Store, open_store

QUEUECTL = str(Path(sys.executable).with_name("queuectl"))


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
def store(db_path: Path) -> Iterator[Store]:
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
def run(home: Path) -> Run:
    """Run the installed `queuectl` with this test's home; returns the completed process."""

    def run_queuectl(
        *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [QUEUECTL, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
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
