"""Worker control that never hits the wrong process (#14).

5a: `worker stop` (and `worker start`'s clean-up of pids.json) acts only on processes
verified as ours: same start time and boot as recorded, our user, queuectl, this home
and store. A reused pid, another user's process or another store's worker is left
alone, and our own workers still stop.
5b: the children of a `worker run` supervisor stop gracefully when it dies.

Real processes throughout: other users' through subprocess `user=`, polled with a
deadline. Every process a test starts is killed at teardown, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from queuectl.models import WorkerInfo, namespace_key, utcnow
from queuectl.store import open_store

from .conftest import QUEUECTL, Run, wait_for
from .processes import Workers, pid_gone, q

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"),
        reason="process start times and parent-death signals are Linux (/proc, prctl)",
    ),
]

NOBODY = 65534
LOOKALIKE = "queuectl-lookalike"  # has "queuectl" in its argv, all the old check looked for


def stat_field(pid: int | str, number: int) -> int:
    """Field `number` (from 1, as proc(5) counts) of /proc/<pid>/stat."""
    return int(Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[number - 3])


def start_ticks(pid: int) -> int:
    return stat_field(pid, 22)


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and stat_field(entry, 4) == pid:
                found.add(int(entry))
    return found


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a process as another uid (65534)")


def as_user(uid: int) -> dict[str, Any]:
    return {"user": uid, "group": uid, "extra_groups": []}


def plant(home: Path, pid: int, kind: str) -> None:
    """Put an entry for `pid` in pids.json, first: one left by a worker that exited and
    whose pid `pid` now has ("reused-pid"), or by a queuectl that recorded no start time
    ("older-version": then our own worker's entry is rewritten that way too)."""
    path = home / "pids.json"
    entries = json.loads(path.read_text())["workers"]
    stale = {**entries[0], "pid": pid}
    if kind == "reused-pid":
        stale["start_ticks"] = start_ticks(pid) - 1
        stale["boot_id"] = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    else:
        for entry in [stale, *entries]:
            entry.pop("start_ticks", None)
            entry.pop("boot_id", None)
    path.write_text(json.dumps({"workers": [stale, *entries]}))


class Strangers:
    """Processes that are not ours to stop."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def lookalike(self, uid: int | None = None) -> subprocess.Popen[bytes]:
        """A shell waiting on its stdin with "queuectl" in its argv, as `uid`."""
        proc = subprocess.Popen(
            ["/bin/sh", "-c", "read line", LOOKALIKE],
            stdin=subprocess.PIPE,
            cwd="/",
            **({} if uid is None else as_user(uid)),
        )
        self.procs.append(proc)
        return proc

    def worker(self) -> subprocess.Popen[bytes]:
        """A real queuectl worker of another home and store, once it has registered there."""
        home = self.tmp_path / "other-home"
        home.mkdir(mode=0o700)
        env = {
            **os.environ,
            "QUEUECTL_HOME": str(home),
            "QUEUECTL_DATABASE_URL": f"sqlite:///{home / 'queue.db'}",
        }
        log_path = self.tmp_path / "other-worker.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [QUEUECTL, "worker", "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.procs.append(proc)

        def registered() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"the other store's worker exited: {log_path.read_text()}")
            status = subprocess.run([QUEUECTL, "status"], env=env, capture_output=True, timeout=60)
            return status.returncode == 0 and proc.pid in {
                w["pid"] for w in json.loads(status.stdout)["workers"]
            }

        wait_for(registered, timeout=15, what="the other store's worker to register")
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdin:
                proc.stdin.close()


@pytest.fixture
def workers(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    monkeypatch.setenv("QUEUECTL_POLL_INTERVAL_MS", "50")  # idle workers look every 50 ms
    started = Workers(home, tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


@pytest.fixture
def strangers(tmp_path: Path) -> Iterator[Strangers]:
    started = Strangers(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


ASKED_THROUGH_THE_STORE = (
    "asked 1 worker(s) on this host to stop through the store (not signalled: they could not "
    "be verified as this store's)"
)


def assert_stopped_only_ours(
    result: subprocess.CompletedProcess[str],
    own: int,
    other: subprocess.Popen[bytes],
    *,
    asked: bool = False,
) -> None:
    assert result.returncode == 0, result.stderr
    expected = ["stopped 1 worker(s)", *([ASKED_THROUGH_THE_STORE] if asked else [])]
    assert result.stdout.strip().splitlines() == expected
    assert pid_gone(own)
    assert other.poll() is None, f"pid {other.pid} was signalled: {result.stderr}"


# -- 5a: pids.json entries ---------------------------------------------------------------


@pytest.mark.parametrize("entry", ["reused-pid", "older-version"])
@pytest.mark.parametrize("stranger", ["other-user", "other-store"])
def test_stop_signals_no_stale_entry_and_still_stops_our_worker(
    entry: str, stranger: str, run: Run, home: Path, workers: Workers, strangers: Strangers
) -> None:
    if stranger == "other-user":
        require_root()
    assert run("worker", "start").returncode == 0
    (own,) = workers.detached_pids()
    other = strangers.lookalike(NOBODY) if stranger == "other-user" else strangers.worker()
    plant(home, other.pid, entry)

    result = run("worker", "stop", "--timeout", "30")

    assert_stopped_only_ours(result, own, other)
    assert f"pids.json: dropped the entry of pid {other.pid}, not signalled: " in result.stderr
    assert workers.detached_pids() == []


def test_start_drops_a_stale_entry_from_pids_json(
    run: Run, home: Path, workers: Workers, strangers: Strangers
) -> None:
    assert run("worker", "start").returncode == 0
    (first,) = workers.detached_pids()
    other = strangers.lookalike()
    plant(home, other.pid, "reused-pid")

    result = run("worker", "start")

    assert result.returncode == 0, result.stderr
    pids = workers.detached_pids()
    assert len(pids) == 2 and first in pids and other.pid not in pids
    assert (
        f"pids.json: dropped the entry of pid {other.pid}, not signalled: "
        "its pid now belongs to another process"
    ) in result.stderr
    assert run("worker", "stop").stdout.strip() == "stopped 2 worker(s)"
    assert other.poll() is None


# -- 5a: workers registered in the store -------------------------------------------------


@pytest.mark.parametrize("stranger", ["reused-pid", "other-store"])
def test_stop_signals_no_registered_worker_it_cannot_verify(
    stranger: str, run: Run, home: Path, workers: Workers, strangers: Strangers
) -> None:
    assert run("worker", "start").returncode == 0
    (own,) = workers.detached_pids()
    if stranger == "reused-pid":
        # a worker registered, died without deregistering, and a lookalike got its pid:
        # ours, queuectl in its argv, so only its start time gives it away
        registered = utcnow() - timedelta(seconds=30)
        other = strangers.lookalike()
    else:
        other = strangers.worker()  # started before it "registered" here: its store tells
        registered = utcnow()
    host = socket.gethostname()
    worker_id = f"{host}:{other.pid}:{namespace_key()}:dead"  # this host, boot, namespace
    store = open_store(f"sqlite:///{home / 'queue.db'}")
    try:
        store.register_worker(
            WorkerInfo(
                id=worker_id,
                pid=other.pid,
                host=host,
                started_at=registered,
                heartbeat_at=utcnow(),
                lease_expires_at=utcnow() + timedelta(minutes=5),
                current_job=None,
                queues=(),
            )
        )
    finally:
        store.close()

    result = run("worker", "stop", "--timeout", "30")

    assert_stopped_only_ours(result, own, other, asked=True)
    assert f"worker {worker_id}: pid {other.pid} not signalled (" in result.stderr


# -- 5a: `worker stop` as an unprivileged user -------------------------------------------


class Nobody:
    """queuectl run as uid 65534, with a home of its own."""

    def __init__(self, base: Path, python: str, env: dict[str, str]) -> None:
        self.base, self.python, self.env = base, python, env
        self.home = Path(env["QUEUECTL_HOME"])

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AS_NOBODY_READING_ALL, self.python, "-P", "-m", "queuectl", *args],
            env=self.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=60,
        )


# uid 65534 that may read (only read) every file: our interpreter and packages may sit in
# directories only root can enter (a clone under mktemp -d, root's home). It holds no
# other privilege: signalling another user's process is refused with EPERM, as for anyone.
AS_NOBODY_READING_ALL = [
    "setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
    "--",
]


@pytest.fixture
def nobody(tmp_path: Path) -> Iterator[Nobody]:
    require_root()
    base = Path(tempfile.mkdtemp(prefix="queuectl-nobody-"))  # tmp_path is root's alone
    os.chown(base, NOBODY, NOBODY)
    # our packages (queuectl and its dependencies), without our interpreter's stdlib
    path = [p for p in sys.path if p and os.path.isdir(p) and not p.startswith(sys.base_prefix)]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "QUEUECTL_HOME": str(base / "home"),
        "QUEUECTL_POLL_INTERVAL_MS": "50",
        "PYTHONPATH": os.pathsep.join(path),
    }
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run queuectl as uid 65534")
    user = Nobody(base, sys.executable, env)
    processes = Workers(user.home, tmp_path)
    try:
        yield user
    finally:
        processes.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_stop_as_an_unprivileged_user_skips_another_users_worker_and_stops_its_own(
    nobody: Nobody, strangers: Strangers
) -> None:
    result = nobody.run("worker", "start")
    assert result.returncode == 0, result.stderr
    (own,) = Workers(nobody.home, nobody.base).detached_pids()
    other = strangers.worker()  # root's, on another store: signalling it would be EPERM
    plant(nobody.home, other.pid, "older-version")

    result = nobody.run("worker", "stop", "--timeout", "30")

    assert_stopped_only_ours(result, own, other)
    assert (
        f"pids.json: dropped the entry of pid {other.pid}, not signalled: "
        f"it runs as uid 0, not as uid {NOBODY}"
    ) in result.stderr


# -- 5b: a supervisor's children die with it ---------------------------------------------

CHILD = """
import os, pathlib, signal, sys
marker = pathlib.Path(sys.argv[1])
def on_term(signum, frame):
    marker.write_text(f"SIGTERM, marker {os.environ.get('QUEUECTL_SUPERVISOR_PID')}")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
from queuectl.workers import bind_to_supervisor
bind_to_supervisor()
marker.with_suffix(".ready").touch()
while True:
    signal.pause()
"""
# Starts CHILD bound to itself, or to the pid given (a supervisor that died before
# the child could bind to it, the child now belonging to another parent).
SUPERVISOR = """
import os, subprocess, sys
env = {**os.environ, "QUEUECTL_SUPERVISOR_PID": sys.argv[2] or str(os.getpid())}
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[3]], env=env)
print(child.pid, flush=True)
child.wait()
"""


@pytest.mark.parametrize("supervisor_pid", ["", "1"], ids=["killed-later", "gone-before-bind"])
def test_a_bound_child_gets_sigterm_when_its_supervisor_dies(
    supervisor_pid: str, tmp_path: Path
) -> None:
    marker = tmp_path / "child"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, CHILD, supervisor_pid, str(marker)],
        stdout=subprocess.PIPE,
    )
    assert supervisor.stdout is not None
    child = int(supervisor.stdout.readline())
    try:
        if not supervisor_pid:
            wait_for(marker.with_suffix(".ready").exists, timeout=15, what="the child to bind")
            supervisor.kill()
        said = wait_for(
            lambda: marker.exists() and marker.read_text(), timeout=15, what="SIGTERM in the child"
        )
        assert said == "SIGTERM, marker None"  # and jobs never inherit the marker
        wait_for(lambda: pid_gone(child), timeout=15, what="the child to exit")
    finally:
        supervisor.kill()
        supervisor.wait()
        supervisor.stdout.close()
        if not pid_gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_killed_supervisors_workers_finish_their_job_and_exit(
    tmp_path: Path, run: Run, run_json: Any, workers: Workers
) -> None:
    supervisor = workers.start("--count", "2")
    registered = wait_for(
        lambda: len(ws := run_json("status")["workers"]) == 2 and ws,
        timeout=15,
        what="2 registered workers",
    )
    children = {w["pid"] for w in registered}
    release = tmp_path / "release"
    enqueued = run("enqueue", f"while [ ! -e {q(release)} ]; do sleep 0.01; done")
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    (busy,) = wait_for(
        lambda: [w["pid"] for w in run_json("status")["workers"] if w["current_job"] == job_id],
        timeout=15,
        what="a worker to take the job",
    )

    supervisor.kill()
    supervisor.wait()

    wait_for(
        lambda: all(pid_gone(pid) for pid in children - {busy}),
        timeout=15,
        what="the idle worker to stop with its supervisor",
    )
    assert run_json("show", job_id)["state"] == "processing", "SIGTERM lets the job finish"
    release.touch()
    wait_for(lambda: pid_gone(busy), timeout=15, what="the busy worker to finish and exit")
    job = run_json("show", job_id)
    assert (job["state"], job["exit_code"]) == ("completed", 0)
    assert run_json("status")["workers"] == []


def test_a_killed_supervisors_spool_watcher_exits_too(
    tmp_path: Path, run_json: Any, workers: Workers
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    supervisor = workers.start("--count", "1", "--spool", str(spool))
    wait_for(lambda: run_json("status")["workers"], timeout=15, what="the worker to register")
    children = wait_for(
        lambda: len(found := children_of(supervisor.pid)) == 2 and found,
        timeout=15,
        what="the worker and the spool watcher",
    )

    supervisor.kill()
    supervisor.wait()

    wait_for(
        lambda: all(pid_gone(pid) for pid in children),
        timeout=15,
        what="the worker and the watcher to stop with their supervisor",
    )
    assert run_json("status")["workers"] == []
