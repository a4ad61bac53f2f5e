"""Issue 14: a job never runs twice at once, however its worker pauses, stops or dies, and
wherever its namespace; a job's working directory and log path fail with what happened.

Real stores, real processes, real signals: the pauses are real time passing while the
worker waits, the stops are SIGTSTP and SIGSTOP, the namespace is one made by unshare.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from queuectl import procs
from queuectl.core import Queue
from queuectl.models import JobSpec, JobState, WorkerInfo, utcnow
from queuectl.runner import Runner
from queuectl.store import Store, open_store

from .conftest import QUEUECTL, Run, wait_for
from .processes import read_pid

pytestmark = pytest.mark.e2e  # real worker processes and signals

LEASE_MS = 200  # the shortest lease the config allows: pauses past it stay short
LINUX = sys.platform.startswith("linux")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


# -- a worker paused between claiming a job and starting it ----------------------------


class PausingClock:
    """The real clock, except that its first call after `worker_id` has claimed `job_id`
    takes as long as `pause` does: the worker stalls between the claim and the job's start,
    as a SIGSTOP, a slow disk or a swap storm would stall it."""

    def __init__(self, watch: Store, job_id: str, pause: Callable[[], None]) -> None:
        self.watch = watch  # a connection of the test's own
        self.job_id = job_id
        self.pause = pause
        self.worker_id = ""
        self.paused = False

    def __call__(self) -> datetime:
        if not self.paused:
            job = self.watch.get_job(self.job_id)
            if job and job.state is JobState.PROCESSING and job.worker_id == self.worker_id:
                self.paused = True
                self.pause()
        return utcnow()


def lease_expired(store: Store, job_id: str) -> bool:
    job = store.get_job(job_id)
    assert job is not None and job.lease_expires_at is not None
    return job.lease_expires_at < utcnow()


@pytest.fixture
def short_lease(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUECTL_LEASE_MS", str(LEASE_MS))
    monkeypatch.setenv("QUEUECTL_BACKOFF_MAX_MS", "0")  # a recovered job is due again at once


@pytest.fixture
def watch(store: Store) -> Iterator[Store]:
    opened = open_store(store.url)
    yield opened
    opened.close()


def test_a_job_taken_over_while_its_worker_paused_before_starting_it_is_not_run(
    store: Store, watch: Store, queue: Queue, tmp_path: Path, short_lease: None
) -> None:
    ran = tmp_path / "ran"
    queue.enqueue([JobSpec(command=f'echo "$QUEUECTL_WORKER_ID" >> {ran}', id="once")])
    other = Runner(watch, log=lambda line: None)

    def taken_over() -> None:
        wait_for(lambda: lease_expired(watch, "once"), what="the paused worker's lease to lapse")
        assert other.run_once(), "the other worker recovered the job and ran it"

    clock = PausingClock(watch, "once", taken_over)
    lines: list[str] = []
    paused = Runner(store, clock=clock, log=lines.append)
    clock.worker_id = paused.worker_id

    assert paused.run_once()
    assert clock.paused
    assert paused.jobs_run == 0, "the paused worker started the job all the same"
    assert ran.read_text().split() == [other.worker_id]
    job = queue.get("once")
    assert (job.state, job.attempts, job.worker_id) == (JobState.COMPLETED, 1, other.worker_id)
    assert lines == ["job once: claim lost before it started; not run"]


def test_a_job_canceled_while_its_worker_paused_before_starting_it_is_not_run(
    store: Store, watch: Store, queue: Queue, tmp_path: Path, short_lease: None, home: Path
) -> None:
    ran = tmp_path / "ran"
    queue.enqueue([JobSpec(command=f"touch {ran}", id="dropped")])

    def canceled() -> None:
        wait_for(lambda: lease_expired(watch, "dropped"), what="a pause longer than the lease")
        Queue(watch).cancel("dropped", kill=True)

    clock = PausingClock(watch, "dropped", canceled)
    lines: list[str] = []
    paused = Runner(store, clock=clock, log=lines.append)
    clock.worker_id = paused.worker_id

    assert paused.run_once()
    assert clock.paused
    assert not ran.exists(), "a canceled job was started"
    job = queue.get("dropped")
    assert (job.state, job.ended) == (JobState.CANCELED, True), "its claim was dropped"
    assert lines == ["job dropped: canceled before it started; not run"]
    log = (home / "logs" / "job-dropped.log").read_text()
    assert log.endswith(" canceled before it started: not run\n"), log


# -- a worker that is stopped or dies while its job runs -------------------------------


def process_state(pid: int) -> str:
    """The state letter /proc shows (T: stopped, Z: zombie), or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0].decode()
    except (OSError, IndexError):
        return ""


@pytest.fixture
def worker_with_a_job(
    run: Run, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, str]]:
    """A foreground worker (1 s lease) running a long job: (worker, job pid, job id)."""
    pidfile = tmp_path / "job.pid"
    enqueued = run("enqueue", f"echo $$ > {pidfile}; exec sleep 60", "--max-retries", "0")
    assert enqueued.returncode == 0, enqueued.stderr
    env = {**os.environ, "QUEUECTL_LEASE_MS": "1000", "QUEUECTL_POLL_INTERVAL_MS": "50"}
    with (tmp_path / "worker.log").open("wb") as log:
        # A process group of its own whose parent (this test) is in the same session: the
        # group is not orphaned, so SIGTSTP stops it as Ctrl-Z in a terminal does.
        worker = subprocess.Popen(
            [QUEUECTL, "worker", "run", "--count", "1"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            process_group=0,
        )
    job_pid = 0
    try:
        job_pid = wait_for(lambda: read_pid(pidfile), timeout=15, what="the job to start")
        yield worker, job_pid, enqueued.stdout.strip()
    finally:
        for pid, sig in ((worker.pid, signal.SIGKILL), (job_pid, signal.SIGKILL)):
            if pid and process_state(pid) not in ("", "Z"):
                os.kill(pid, sig)
        worker.wait()


@pytest.mark.skipif(not LINUX, reason="the watchdog needs Linux (pidfd, /proc)")
@pytest.mark.parametrize("stop", [signal.SIGTSTP, signal.SIGSTOP], ids=["SIGTSTP", "SIGSTOP"])
def test_a_stopped_workers_job_is_stopped_once_its_lease_runs_out(
    stop: signal.Signals,
    worker_with_a_job: tuple[subprocess.Popen[bytes], int, str],
    run_json: Callable[..., Any],
    tmp_path: Path,
) -> None:
    worker, job_pid, job_id = worker_with_a_job
    os.kill(worker.pid, stop)
    wait_for(lambda: process_state(worker.pid) == "T", timeout=5, what="the worker to stop")

    wait_for(
        lambda: process_state(job_pid) in ("", "Z"),
        timeout=15,
        what="the job to be stopped once its lease ran out",
    )
    assert process_state(worker.pid) == "T", "the worker itself stayed stopped"

    os.kill(worker.pid, signal.SIGCONT)
    job = wait_for(
        lambda: (j := run_json("show", job_id))["state"] == "dead" and j,
        timeout=15,
        what="the resumed worker to record the attempt",
    )
    assert job["last_error"] == "worker could not renew its lease for 1000 ms"
    worker.terminate()
    assert worker.wait(timeout=15) == 0
    assert "watchdog: job " in (tmp_path / "worker.log").read_text()


@pytest.mark.skipif(not LINUX, reason="the watchdog needs Linux (pidfd, /proc)")
def test_a_dead_workers_job_is_stopped_once_its_lease_runs_out(
    worker_with_a_job: tuple[subprocess.Popen[bytes], int, str],
) -> None:
    worker, job_pid, _ = worker_with_a_job
    worker.kill()
    worker.wait()
    wait_for(
        lambda: process_state(job_pid) in ("", "Z"),
        timeout=15,
        what="the orphaned job to be stopped once its lease ran out, with no other worker",
    )


@pytest.mark.skipif(not LINUX, reason="the watchdog needs Linux (pidfd, /proc)")
def test_an_idle_watchdog_is_killed_at_close_and_a_guarding_one_stops_its_job(
    tmp_path: Path,
) -> None:
    idle = procs.Watchdog()
    idle.starting(procs.lease_clock() + 60, "j-idle", "w")
    idle.disarm()
    idle.close(guarding=False)  # nothing to guard: not waited for until it looks again
    assert idle.proc.returncode == -signal.SIGKILL

    # A job still running when its worker closes the watchdog is stopped by it once its
    # lease runs out, then the watchdog exits by itself.
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)
    guarding = procs.Watchdog()
    guarding.starting(procs.lease_clock() + 0.2, "j-guarded", "w")
    guarding.started(job.pid)
    guarding.close(guarding=True)
    assert guarding.proc.returncode == 0
    assert job.wait(timeout=15) == -signal.SIGTERM


# -- worker identity -------------------------------------------------------------------


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


def claim_as(store: Store, worker_id: str, job_id: str) -> None:
    now = utcnow()
    job = store.claim_next(worker_id, (), now, now + timedelta(minutes=5), f"tok-{job_id}")
    assert job is not None and job.id == job_id


@pytest.mark.skipif(not LINUX, reason="PID namespaces and boot ids are Linux's")
def test_only_a_worker_of_this_pid_namespace_and_boot_is_known_dead_by_its_pid(
    store: Store, queue: Queue, home: Path
) -> None:
    runner = Runner(store, log=lambda line: None)
    key = runner.worker_id.split(":")[2]
    foreign_key = "0" * 8 if key != "0" * 8 else "1" * 8
    ids = {
        "here": f"{runner.host}:{dead_pid()}:{key}:beef",
        "elsewhere": f"{runner.host}:{dead_pid()}:{foreign_key}:beef",
    }
    for job_id, worker_id in ids.items():
        queue.enqueue([JobSpec(command="true", id=job_id, max_retries=0)])
        claim_as(store, worker_id, job_id)

    assert runner.recover_lost_jobs() == 1
    assert queue.get("here").last_error == "worker lost (process died)"
    elsewhere = queue.get("elsewhere")
    assert (elsewhere.state, elsewhere.worker_id) == (JobState.PROCESSING, ids["elsewhere"])
    host, pid, key, _ = runner.worker_id.split(":")  # still readable: host:pid:key:random
    assert (host, pid, len(key)) == (runner.host, str(os.getpid()), 8)


def test_a_worker_id_of_an_older_queuectl_is_known_dead_only_once_unregistered(
    store: Store, queue: Queue, home: Path
) -> None:
    runner = Runner(store, log=lambda line: None)
    old_id = f"{runner.host}:{dead_pid()}:beef"  # host:pid:random, no namespace key
    now = utcnow()
    store.register_worker(
        WorkerInfo(old_id, 4242, runner.host, now, now, now + timedelta(minutes=5), None, ())
    )
    queue.enqueue([JobSpec(command="true", id="old", max_retries=0)])
    claim_as(store, old_id, "old")

    assert runner.recover_lost_jobs() == 0, "a registered worker may live in another namespace"
    assert queue.get("old").state is JobState.PROCESSING

    store.deregister_worker(old_id)
    runner._last_recover = float("-inf")
    assert runner.recover_lost_jobs() == 1
    assert queue.get("old").last_error == "worker lost (process died)"


@needs_root
@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_a_worker_in_another_pid_namespace_keeps_its_job_while_its_lease_holds(
    store: Store, queue: Queue, home: Path
) -> None:
    # Inside the namespace the worker gets a pid that is free out here, so a check of its
    # pid from here would wrongly find it dead.
    pid = dead_pid()
    queue.enqueue([JobSpec(command="sleep 60", id="contained", max_retries=0)])
    script = (
        f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid && "
        f"{QUEUECTL} worker run --count 1; exit $?"  # a child, not exec'd: it gets `pid`
    )
    namespaced = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "QUEUECTL_DATABASE_URL": store.url},
    )
    try:
        job = wait_for(
            lambda: (j := queue.get("contained")).state is JobState.PROCESSING and j,
            timeout=20,
            what="the namespaced worker to claim the job",
        )
        assert job.worker_id is not None and job.worker_id.split(":")[1] == str(pid)
        local = Runner(store, log=lambda line: None)
        assert local.host == job.worker_id.split(":")[0]

        assert local.recover_lost_jobs() == 0
        assert queue.get("contained").lease_token == job.lease_token
    finally:
        namespaced.kill()  # --kill-child: its namespace goes with it
        namespaced.wait()


# -- a working directory that cannot be entered -----------------------------------------


def test_a_cwd_that_is_a_file_fails_with_what_happened(
    store: Store, queue: Queue, tmp_path: Path, home: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    queue.enqueue([JobSpec(command=("true",), id="filecwd", cwd=str(not_a_dir), max_retries=0)])
    assert Runner(store, log=lambda line: None).run_once()
    job = queue.get("filecwd")
    assert (job.state, job.exit_code, job.last_error) == (
        JobState.DEAD,
        None,
        f"cannot enter working directory {not_a_dir}: Not a directory",
    )


@needs_root
@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_a_cwd_the_worker_may_not_enter_fails_with_what_happened(
    run: Run, run_json: Callable[..., Any], tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    spec = {"command": "true", "cwd": str(locked), "max_retries": 0}
    job_id = run("enqueue", json.dumps(spec)).stdout.strip()
    # Root without the capabilities that bypass permissions: the mode-000 directory is
    # closed to it as to any user (uid 65534 may not run an interpreter under /root).
    unprivileged = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    worker = subprocess.run(
        [*unprivileged, QUEUECTL, "worker", "run", "--drain"], capture_output=True, timeout=60
    )
    assert worker.returncode == 0, worker.stderr
    job = run_json("show", job_id)
    assert (job["exit_code"], job["last_error"]) == (
        None,
        f"cannot enter working directory {locked}: Permission denied",
    )


# -- something other than a regular file at the log path -------------------------------


def test_a_fifo_at_the_log_path_fails_the_attempt_instead_of_hanging(
    run: Run, run_json: Callable[..., Any], home: Path
) -> None:
    job_id = run("enqueue", "true", "--max-retries", "0").stdout.strip()
    (home / "logs").mkdir(exist_ok=True)
    os.mkfifo(home / "logs" / f"job-{job_id}.log")
    worker = run("worker", "run", "--drain", timeout=30)
    assert worker.returncode == 0, worker.stderr
    job = run_json("show", job_id)
    assert (job["state"], job["last_error"]) == (
        "dead",
        f"the job's log {home / 'logs' / f'job-{job_id}.log'} is a FIFO, not a regular file: "
        "remove it",
    )


def test_a_symlink_at_the_log_path_is_not_followed(
    store: Store, queue: Queue, tmp_path: Path, home: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    queue.enqueue([JobSpec(command="echo overwritten", id="linked", max_retries=0)])
    log = home / "logs" / "job-linked.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.symlink_to(victim)
    assert Runner(store, log=lambda line: None).run_once()
    assert victim.read_text() == "precious\n"
    job = queue.get("linked")
    assert (job.state, job.last_error) == (
        JobState.DEAD,
        f"the job's log {log} is a symbolic link, not a regular file: remove it",
    )


def test_a_log_replaced_by_a_fifo_while_the_job_runs_does_not_hang_the_tail(
    run: Run, run_json: Callable[..., Any], home: Path
) -> None:
    swap = (
        'log="$QUEUECTL_HOME/logs/job-$QUEUECTL_JOB_ID.log"; echo before; rm "$log"; mkfifo "$log"'
    )
    job_id = run("enqueue", swap, "--max-retries", "0").stdout.strip()
    worker = run("worker", "run", "--drain", timeout=30)
    assert worker.returncode == 0, worker.stderr
    assert run_json("show", job_id)["state"] == "completed"
    store = open_store(f"sqlite:///{home / 'queue.db'}")
    job = store.get_job(job_id)
    store.close()
    assert job is not None and "before\n" in job.output_tail, "the tail of the file it wrote"


@pytest.mark.skipif(not LINUX, reason="the watchdog needs Linux (pidfd, /proc)")
def test_a_watchdog_guards_a_job_that_starts_right_after_others_ended() -> None:
    # After a job ends, the watchdog reads the next ones' messages in batches: the job that
    # follows a burst of short ones is guarded all the same.
    watchdog = procs.Watchdog()
    try:
        for number in range(20):
            short = subprocess.Popen(["true"], start_new_session=True)
            watchdog.starting(procs.lease_clock() + 60, f"j-short-{number}", "w")
            watchdog.started(short.pid)
            short.wait()
        long = subprocess.Popen(["sleep", "60"], start_new_session=True)
        watchdog.starting(procs.lease_clock() + 0.2, "j-long", "w")
        watchdog.started(long.pid)
        assert long.wait(timeout=15) == -signal.SIGTERM
    finally:
        watchdog.close(guarding=False)
