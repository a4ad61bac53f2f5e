"""SQLite writers queue on a lock file beside the database (woken by the kernel the moment
it is free, where SQLite's own wait sleeps in growing steps); the lock file only orders
writers, so a store without one still works."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import QUEUECTL, Run, wait_for

pytestmark = pytest.mark.e2e


def blocked_on_a_file_lock(pid: int) -> bool:
    return "lock" in Path(f"/proc/{pid}/wchan").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/wchan")
def test_a_writer_waits_on_the_lock_file_and_writes_once_it_is_released(
    run: Run, home: Path
) -> None:
    assert run("status").returncode == 0  # creates the store and its lock file
    db, lock = home / "queue.db", home / "queue.db.lock"
    assert lock.stat().st_mode & 0o777 == 0o600
    held = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        writer = subprocess.Popen(
            [QUEUECTL, "enqueue", "--id", "queued-writer", "true"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: blocked_on_a_file_lock(writer.pid), what="the writer to wait")
        with sqlite3.connect(db) as conn:  # reads go on meanwhile
            assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)
        fcntl.flock(held, fcntl.LOCK_UN)
        out, err = writer.communicate(timeout=30)
    finally:
        os.close(held)
    assert (writer.returncode, out, err) == (0, "queued-writer\n", "")


def test_a_store_whose_lock_file_cannot_be_opened_still_takes_writes(run: Run, home: Path) -> None:
    home.mkdir(parents=True)
    (home / "queue.db.lock").mkdir()  # no file to lock: SQLite's own wait serves
    assert run("enqueue", "--id", "a", "true").returncode == 0
    assert run("worker", "run", "--count", "2", "--drain").returncode == 0
    assert "completed" in run("show", "a").stdout
