"""Security properties: private files, ids that cannot escape, specs that never run."""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from queuectl.errors import QueuectlError
from queuectl.paths import job_log_path
from queuectl.store import redact_url

from .conftest import QUEUECTL, Run

pytestmark = pytest.mark.e2e


def test_home_logs_and_database_are_private(run: Run, home: Path) -> None:
    job_id = run("enqueue", "echo secret").stdout.strip()
    assert run("worker", "run", "--drain").returncode == 0
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "logs").stat().st_mode & 0o777 == 0o700
    assert (home / "queue.db").stat().st_mode & 0o777 == 0o600
    assert (home / "logs" / f"job-{job_id}.log").stat().st_mode & 0o777 == 0o600


def test_detached_worker_records_are_private(run: Run, home: Path) -> None:
    assert run("worker", "start").returncode == 0
    try:
        for name in ("pids.json", "pids.lock"):
            assert (home / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        assert run("worker", "stop").returncode == 0


@pytest.mark.parametrize(
    "job_id",
    [
        "../escape",
        "a/b",
        "..",
        "a..b",
        "x\n",
        "/etc/passwd",
        "",
        "a@../x",
        "a..b@20260101T000000Z",
        "a@20260101T000000Z/../x",
    ],
)
def test_job_ids_can_never_name_a_file_outside_the_logs_directory(home: Path, job_id: str) -> None:
    with pytest.raises(QueuectlError, match="is not a valid job id"):
        job_log_path(job_id)


def test_a_schedule_runs_id_names_a_log_file_in_the_logs_directory(home: Path) -> None:
    path = job_log_path("nightly-backup@20261201T013000Z")
    assert path == home / "logs" / "job-nightly-backup@20261201T013000Z.log"


def test_validate_and_apply_never_run_anything_from_a_spec(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    spec = tmp_path / "jobs" / "a.yaml"
    spec.parent.mkdir()
    spec.write_text(f"id: a\ncommand: touch {marker}\nenv: {{X: '$(touch {marker})'}}\n")
    assert run("validate", str(spec)).returncode == 0
    assert run("apply", "--dry-run", str(spec)).returncode == 0
    assert run("apply", str(spec)).returncode == 0
    assert run_json("show", "a")["state"] == "pending"
    assert not marker.exists()


def limited(limit_bytes: int) -> Any:
    """preexec_fn: a file-size limit (Python ignores SIGXFSZ, so writes fail with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))


def test_a_write_that_hits_the_file_size_limit_fails_cleanly_and_loses_nothing(
    run: Run, run_json: Any, home: Path
) -> None:
    kept = run("enqueue", "true", "--id", "kept")
    assert kept.returncode == 0
    size = (home / "queue.db").stat().st_size
    failed = subprocess.run(
        [QUEUECTL, "enqueue", "-"],
        input=json.dumps([{"command": "x" * 2000}] * 200),
        capture_output=True,
        text=True,
        preexec_fn=limited(size),
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("Error: ")
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert [job["id"] for job in run_json("list")] == ["kept"]
    with sqlite3.connect(home / "queue.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_job_whose_log_hits_the_file_size_limit_fails_and_the_worker_goes_on(
    run: Run, run_json: Any
) -> None:
    big = run("enqueue", "head -c 8000000 /dev/zero", "--id", "big", "--max-retries", "0")
    small = run("enqueue", "echo fine", "--id", "small")
    assert big.returncode == small.returncode == 0
    worker = subprocess.run(
        [QUEUECTL, "worker", "run", "--drain"],
        capture_output=True,
        text=True,
        preexec_fn=limited(4_000_000),
        timeout=60,
        check=False,
    )
    assert worker.returncode == 0, worker.stderr
    assert (run_json("show", "big")["state"], run_json("show", "big")["last_error"]) == (
        "dead",
        "killed by signal 25",
    )
    assert run_json("show", "small")["state"] == "completed"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        (
            "postgresql://u@h/db?sslmode=require&PASSWORD=pw",
            "postgresql://u@h/db?sslmode=require&PASSWORD=***",
        ),
        ("postgresql://u@h/db?passwordless=1", "postgresql://u@h/db?passwordless=1"),
        ("postgresql://u@h/db?sslpassword=pw", "postgresql://u@h/db?sslpassword=***"),
        ("postgresql://u@h/db?a=1;password=pw", "postgresql://u@h/db?a=1;password=***"),
        ("sqlite:////var/q.db", "sqlite:////var/q.db"),
    ],
)
def test_passwords_in_store_urls_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
