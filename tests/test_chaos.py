"""Chaos and contention: workers and jobs killed at random, many writers at once.

Nothing may be lost, nothing may stay stuck, and no job may run more often
than the kills explain.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from queuectl.procs import WATCHDOG_MAIN

from .conftest import QUEUECTL, Run, wait_for

pytestmark = pytest.mark.e2e

CHAOS_JOBS = 1000
KILL_EVERY_S = 0.3
CHAOS_LIMIT_S = 150


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def process_groups_running_jobs(worker_pids: list[int]) -> list[int]:
    """The job process groups the workers have started (each job leads its own group),
    not each worker's lease watchdog (its command line runs procs.WATCHDOG_MAIN)."""
    return [
        child for worker in worker_pids for child in children_of(worker) if not is_watchdog(child)
    ]


def is_watchdog(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return WATCHDOG_MAIN.encode() in argv


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_the_chaos_tells_a_workers_watchdog_from_its_job(run: Run, tmp_path: Path) -> None:
    # Else the chaos below would kill watchdogs and count them as jobs killed.
    started = tmp_path / "started"
    assert run("enqueue", f"touch {started}; sleep 30").returncode == 0
    worker = subprocess.Popen([QUEUECTL, "worker", "run"], stderr=subprocess.DEVNULL)
    try:
        wait_for(started.exists, what="the job to start")
        children = children_of(worker.pid)
        assert len([c for c in children if is_watchdog(c)]) == 1, children
        assert len(process_groups_running_jobs([worker.pid])) == 1, children
    finally:
        worker.send_signal(signal.SIGQUIT)  # interrupts the job: no 30 s wait
        worker.wait(timeout=30)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_random_kills_lose_nothing_and_leave_nothing_stuck(
    run: Run, home: Path, tmp_path: Path
) -> None:
    ran = tmp_path / "ran.txt"
    jobs = [
        {"id": f"chaos-{i:04}", "command": f'echo "$QUEUECTL_JOB_ID" >> {ran}; sleep 0.01'}
        for i in range(CHAOS_JOBS)
    ]
    assert run("enqueue", "-", input=json.dumps(jobs)).returncode == 0
    env = {
        **os.environ,
        "QUEUECTL_LEASE_MS": "2000",
        "QUEUECTL_BACKOFF_MAX_MS": "200",
        "QUEUECTL_POLL_INTERVAL_MS": "50",
    }
    log = tmp_path / "workers.log"  # a file, not a pipe: a full pipe would stall the workers
    with log.open("w") as log_file:
        supervisor = subprocess.Popen(
            [QUEUECTL, "worker", "run", "--count", "4", "--drain"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    rng = random.Random(1234)
    kills = {"worker": 0, "job": 0}
    deadline = time.monotonic() + CHAOS_LIMIT_S
    try:
        while supervisor.poll() is None and time.monotonic() < deadline:
            time.sleep(KILL_EVERY_S)  # the chaos cadence itself, not a synchronisation
            workers = children_of(supervisor.pid)
            targets = {"worker": workers, "job": process_groups_running_jobs(workers)}
            kind = rng.choice(["worker", "job"])
            if not targets[kind]:
                continue
            victim = rng.choice(targets[kind])
            try:
                if kind == "job":
                    os.killpg(victim, signal.SIGKILL)
                else:
                    os.kill(victim, signal.SIGKILL)
                kills[kind] += 1
            except (ProcessLookupError, PermissionError):
                continue
        supervisor.wait(timeout=120)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert supervisor.returncode == 0, log.read_text()[-3000:]

    listed: list[dict[str, Any]] = json.loads(run("list", "--limit", "5000").stdout)
    states = Counter(job["state"] for job in listed)
    counts = json.loads(run("status").stdout)["counts"]
    assert {s: n for s, n in counts.items() if n} == dict(states), "status counts drifted"
    assert set(states) <= {"completed", "dead"}, states
    assert sum(states.values()) == CHAOS_JOBS
    for job in listed:
        if job["state"] == "dead":
            assert job["last_error"].startswith(("worker lost", "killed by signal 9")), job
    runs = Counter(ran.read_text().split())
    assert {job["id"] for job in listed if job["state"] == "completed"} <= set(runs)
    extra = sum(runs.values()) - len(runs)
    total_kills = kills["worker"] + kills["job"]
    assert extra <= total_kills, (extra, kills)
    assert total_kills > 10, f"the chaos did not happen: {kills}"
    with sqlite3.connect(home / "queue.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(
        f"chaos: {CHAOS_JOBS} jobs, kills {kills}, executions {sum(runs.values())}, "
        f"extra {extra}, states {dict(states)}"
    )


ENQUEUER = """
import sys
from queuectl.core import Queue
from queuectl.models import JobSpec
from queuectl.store import open_store
queue = Queue(open_store(sys.argv[1]))
for i in range(int(sys.argv[3])):
    queue.enqueue([JobSpec(command="true", id=f"{sys.argv[2]}-{i}")])
"""

STATUS_LOOP = """
import os, sys, time
from queuectl.core import Queue
from queuectl.store import open_store
queue = Queue(open_store(sys.argv[1]))
deadline = time.monotonic() + 120  # a safety net: the test says when to end, by the file
calls = 0
while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline:
    queue.status()
    calls += 1
print(calls)
"""


def test_enqueuers_workers_and_status_contend_without_locking_errors(
    run: Run, home: Path, tmp_path: Path
) -> None:
    home.mkdir(mode=0o700, exist_ok=True)
    url = f"sqlite:///{home / 'queue.db'}"
    assert run("status").returncode == 0  # create and migrate the store once
    env = {**os.environ, "QUEUECTL_POLL_INTERVAL_MS": "50"}
    enqueuers = [
        subprocess.Popen(
            [sys.executable, "-c", ENQUEUER, url, f"p{n}", "500"], stderr=subprocess.PIPE, text=True
        )
        for n in range(4)
    ]
    # `status` runs from the first enqueue to the last job done (it ran a fixed 15 s, though
    # everything was done within about 6 s).
    status_done = tmp_path / "status-done"
    status = subprocess.Popen(
        [sys.executable, "-c", STATUS_LOOP, url, str(status_done)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = tmp_path / "workers.log"  # a file, not a pipe: a full pipe would stall the workers
    with log.open("w") as log_file:
        workers = subprocess.Popen(
            [QUEUECTL, "worker", "run", "--count", "4"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        for proc in enqueuers:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "locked" not in err

        def all_done() -> bool:
            counts = json.loads(run("status").stdout)["counts"]
            return bool(counts["completed"] == 2000)

        from .conftest import wait_for

        wait_for(all_done, timeout=120, what="all 2,000 jobs to complete")
        status_done.touch()
        calls, err = status.communicate(timeout=60)
        assert status.returncode == 0, err
        assert int(calls) > 0
    finally:
        status_done.touch()
        if status.poll() is None:
            status.kill()
            status.wait()
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout=60)
    assert workers.returncode == 0
    assert "locked" not in log.read_text()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_supervisor_restarts_a_killed_worker_and_stops_cleanly_after_running_jobs(
    run: Run, tmp_path: Path
) -> None:
    from .conftest import wait_for

    log = tmp_path / "supervisor.log"
    with log.open("w") as log_file:
        supervisor = subprocess.Popen(
            [QUEUECTL, "worker", "run", "--count", "2"],
            env={**os.environ, "QUEUECTL_POLL_INTERVAL_MS": "50"},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        first = wait_for(
            lambda: len(children_of(supervisor.pid)) == 2 and children_of(supervisor.pid),
            what="two worker processes",
        )
        os.kill(first[0], signal.SIGKILL)
        wait_for(
            lambda: "died (signal 9); restarting in 1 s" in log.read_text(),
            what="the supervisor to notice the death",
        )
        wait_for(
            lambda: len(set(children_of(supervisor.pid)) - set(first)) == 1,
            what="a replacement worker",
        )
        started, finished = tmp_path / "started", tmp_path / "finished"
        run("enqueue", f"touch {started}; sleep 1; touch {finished}")
        wait_for(started.exists, what="the job to start")
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=30) == 0, log.read_text()
        assert finished.exists(), "the running job was cut short"
        assert children_of(supervisor.pid) == []
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
