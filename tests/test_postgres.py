"""PostgreSQL-only behaviour: many worker processes, NOTIFY wake-ups, lost connections."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from queuectl.errors import SchemaTooNew
from queuectl.store import open_store
from queuectl.store.sql import migrations

from .conftest import QUEUECTL, Run, postgres_schema_url, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def backend() -> str:
    return "postgres"


@pytest.fixture
def pg_url(db_url: str) -> str:
    return f"{db_url}&application_name=qt_{Path(db_url).name[-16:]}"


def admin(sql: str, *args: Any) -> list[Any]:
    import psycopg

    from .conftest import pg_url

    with psycopg.connect(pg_url(), autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def test_migrations_are_versioned_and_a_newer_schema_is_refused(db_url: str) -> None:
    open_store(db_url).close()
    open_store(db_url).close()
    schema = db_url.rsplit("%3D", 1)[1]
    (row,) = admin(f"SELECT version FROM {schema}.queuectl_schema")
    assert row == (len(migrations("postgres")),)
    admin(f"UPDATE {schema}.queuectl_schema SET version = 99")
    with pytest.raises(SchemaTooNew, match="schema version 99"):
        open_store(db_url)


def test_four_worker_processes_drain_1000_jobs_each_once(run: Run, tmp_path: Path) -> None:
    ran = tmp_path / "ran.txt"
    jobs = [{"command": f'echo "$QUEUECTL_JOB_ID" >> {ran}'} for _ in range(1000)]
    enqueued = run("enqueue", "-", input=json.dumps(jobs))
    assert enqueued.returncode == 0, enqueued.stderr
    ids = enqueued.stdout.split()
    result = run("worker", "run", "--count", "4", "--drain", timeout=240)
    assert result.returncode == 0, result.stderr
    counts = Counter(ran.read_text().split())
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, "a job ran twice"
    workers = {line.split()[2] for line in result.stderr.splitlines() if " started " in line}
    assert len(workers) == 4
    status = json.loads(run("status").stdout)
    assert status["counts"]["completed"] == 1000


@pytest.fixture
def worker(pg_url: str, home: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [QUEUECTL, "--db", pg_url, "worker", "run", "--poll-interval", "600000"],
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc
    proc.terminate()
    proc.communicate(timeout=30)


def live_workers(run: Run) -> list[Any]:
    workers: list[Any] = json.loads(run("status").stdout)["workers"]
    return workers


def test_notify_wakes_an_idle_worker_without_waiting_for_the_poll(
    run: Run, worker: subprocess.Popen[str], tmp_path: Path
) -> None:
    wait_for(lambda: live_workers(run), what="the worker to register")
    marker = tmp_path / "ran"
    job_id = run("enqueue", f"touch {marker}").stdout.strip()
    # The poll interval is 10 minutes: only the NOTIFY can start the job this soon.
    wait_for(marker.exists, timeout=20, what="the job to start")
    wait_for(
        lambda: json.loads(run("show", job_id).stdout)["state"] == "completed",
        what="the job to complete",
    )


def test_a_lost_connection_is_reestablished_and_the_job_recorded(
    run: Run, worker: subprocess.Popen[str], pg_url: str, tmp_path: Path
) -> None:
    app = pg_url.rsplit("application_name=", 1)[1]
    wait_for(lambda: live_workers(run), what="the worker to register")
    started, release = tmp_path / "started", tmp_path / "release"
    job_id = run(
        "enqueue", f"touch {started}; while [ ! -e {release} ]; do sleep 0.05; done"
    ).stdout.strip()
    wait_for(started.exists, what="the job to start")
    killed = admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        app,
    )
    assert len(killed) >= 2, "the worker's connections were not found"
    release.touch()
    wait_for(
        lambda: json.loads(run("show", job_id).stdout)["state"] == "completed",
        what="the job's result to be recorded after the reconnect",
    )
    second = tmp_path / "second"
    run("enqueue", f"touch {second}")
    wait_for(second.exists, what="the worker to keep working after the reconnect")
    assert worker.poll() is None


def test_the_test_server_is_used_not_skipped() -> None:
    urls = postgres_schema_url()
    url = next(urls)
    assert url.startswith(("postgresql://", "postgres://"))
    urls.close()


def test_urls_with_passwords_are_redacted_and_urls_need_a_database(
    db_url: str, run: Run, home: Path
) -> None:
    with_password = db_url.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    assert with_password != db_url
    status = run("--db", with_password, "status")
    assert status.returncode == 0, status.stderr
    assert "s3cret" not in status.stdout
    assert json.loads(status.stdout)["store"].startswith("postgresql://postgres:***@")
    bare = run("--db", "postgresql://", "status")
    assert (bare.returncode, bare.stderr.strip()) == (
        1,
        "Error: 'postgresql://' names no database: use postgresql://user@host:5432/dbname",
    )
