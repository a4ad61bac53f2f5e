"""Worker processes: the foreground supervisor, detached start/stop, and pids.json."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import procs
from .errors import QueuectlError
from .models import format_time, utcnow
from .paths import logs_dir, pids_path
from .store import Store, redact_url

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)  # a child that keeps crashing is restarted ever slower
EARLY_CRASH_S = 10.0  # a child that dies this soon after starting has a problem restarts won't fix
EARLY_CRASHES_MAX = 5
STARTUP_TIMEOUT_S = 15.0  # `worker start` waits this long for each worker to register
Log = Callable[[str], None]


def worker_command(options: Sequence[str]) -> list[str]:
    """The command line of one worker process (`worker run --count 1`).

    -P keeps the working directory off sys.path, so a `queuectl/` folder wherever
    workers are started can never stand in for the installed package.
    """
    return [sys.executable, "-P", "-m", "queuectl", "worker", "run", "--count", "1", *options]


def worker_environment(url: str) -> dict[str, str]:
    """The environment of a worker process: the store URL travels here, not in argv,
    where `ps` would show a password to every user."""
    return {**os.environ, "QUEUECTL_DATABASE_URL": url}


@dataclass
class _Child:
    command: list[str]
    proc: subprocess.Popen[bytes]
    started: float
    crashes: int = 0
    early_crashes: int = 0
    restart_at: float | None = None


class Supervisor:
    """Runs N worker processes (and optionally a spool watcher) in the foreground and
    restarts any that crash.

    Signals are forwarded to the children, which treat repeats as one request,
    so a signal sent to the whole process group (Ctrl-C) and a forwarded copy
    count once. A child that exits 0 has stopped or drained and is not restarted.
    """

    def __init__(
        self, url: str, count: int, options: Sequence[str], log: Log, spool: Path | None = None
    ) -> None:
        self.commands = [worker_command(options)] * count
        self.spool_command = None
        if spool is not None:
            self.spool_command = [
                sys.executable,
                "-P",
                "-m",
                "queuectl",
                "spool",
                "watch",
                str(spool),
            ]
            self.commands.append(self.spool_command)
        self.env = worker_environment(url)
        self.log = log
        self.children: list[_Child] = []
        self.stopping = False
        self.failed = False
        self._wake = procs.WakePipe()

    def forward(self, signum: int) -> None:
        """Pass a signal to every child. Safe from a signal handler."""
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.stopping = True
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signum)
        self._wake.wake()

    def run(self) -> int:
        """Run until every child has exited; 0 when all exited cleanly."""
        self.children = [_Child(c, self._spawn(c), time.monotonic()) for c in self.commands]
        while True:
            running = [
                c for c in self.children if c.proc.returncode is None and c.restart_at is None
            ]
            pending = [c for c in self.children if c.restart_at is not None]
            if not running and not pending:
                return 1 if self.failed else 0
            if not self.stopping and all(
                c.command is self.spool_command for c in running + pending
            ):
                self.forward(signal.SIGTERM)  # the workers are done: the watcher goes too
            timeout = None
            if pending:
                timeout = max(0.0, min(c.restart_at or 0 for c in pending) - time.monotonic())
            procs.wait_exited([c.proc for c in running], self._wake, timeout)
            for child in running:
                if child.proc.returncode is not None:
                    self._exited(child)
            for child in pending:
                if self.stopping:
                    child.restart_at = None
                    self.children.remove(child)
                elif (child.restart_at or 0) <= time.monotonic():
                    child.proc, child.restart_at = self._spawn(child.command), None
                    child.started = time.monotonic()

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        # Our own interpreter and fixed arguments.
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=self.env)  # noqa: S603

    def _exited(self, child: _Child) -> None:
        code = child.proc.returncode
        if code == 0 or self.stopping:
            # A repeated SIGTERM can land after a child restored its default handler on
            # the way out; it asked for what the child was already doing.
            if code not in (0, -signal.SIGTERM):
                self.failed = True
            self.children.remove(child)
            return
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        # Killed by a signal (OOM, an operator): restart soon, however often. Exiting with
        # an error soon after starting is a broken install or config: back off, then give up.
        early = code > 0 and time.monotonic() - child.started < EARLY_CRASH_S
        child.early_crashes = child.early_crashes + 1 if early else 0
        if not early:
            child.crashes = 0
        if child.early_crashes >= EARLY_CRASHES_MAX:
            self.log(
                f"worker process {child.proc.pid} died ({how}) {EARLY_CRASHES_MAX} times within "
                f"{EARLY_CRASH_S:g} s of starting; giving up on it (see the errors above)"
            )
            self.failed = True
            self.children.remove(child)
            return
        delay = RESTART_BACKOFF_S[min(child.crashes, len(RESTART_BACKOFF_S) - 1)]
        child.crashes += 1
        self.log(f"worker process {child.proc.pid} died ({how}); restarting in {delay} s")
        child.restart_at = time.monotonic() + delay


# -- detached workers and pids.json ---------------------------------------------------


@contextlib.contextmanager
def _pids_locked() -> Iterator[list[dict[str, Any]]]:
    """pids.json's entries, under an exclusive lock, written back on exit."""
    path = pids_path()
    lock_fd = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(lock_fd, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries = json.loads(path.read_text()).get("workers", [])
        except (FileNotFoundError, ValueError, AttributeError):
            entries = []
        yield entries
        tmp = path.with_name(f".pids.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # its pids are ours
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"workers": entries}, indent=2) + "\n")
        os.replace(tmp, path)


def start_detached(store: Store, count: int, options: Sequence[str]) -> list[int]:
    """Start `count` detached worker processes, recorded in pids.json; return their pids
    once each has registered with the store.

    :raises QueuectlError: a worker exited instead of starting.
    """
    log_path = logs_dir() / "workers.log"
    started: list[subprocess.Popen[bytes]] = []
    with _pids_locked() as entries:
        entries[:] = [e for e in entries if procs.queuectl_alive(int(e.get("pid", 0)))]
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            for _ in range(count):
                proc = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
                    worker_command(options),
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    start_new_session=True,
                    env=worker_environment(store.url),
                )
                started.append(proc)
                entries.append(
                    {
                        "pid": proc.pid,
                        "db": redact_url(store.url),
                        "started_at": format_time(utcnow()),
                        "log": str(log_path),
                    }
                )
        finally:
            os.close(fd)
    _wait_registered(store, started, log_path)
    return [proc.pid for proc in started]


def _wait_registered(store: Store, started: list[subprocess.Popen[bytes]], log_path: Path) -> None:
    host = socket.gethostname()
    waiting = {proc.pid: proc for proc in started}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        for pid, proc in list(waiting.items()):
            if proc.poll() is not None:
                raise QueuectlError(
                    f"worker pid {pid} exited at start (exit code {proc.returncode}): "
                    f"see {log_path}"
                )
        registered = {w.pid for w in store.live_workers(utcnow()) if w.host == host}
        for pid in registered & set(waiting):
            del waiting[pid]
        if waiting:
            time.sleep(0.05)  # other processes: nothing to block on but the store


@dataclass(frozen=True)
class StopReport:
    stopped: list[int]
    still_running: list[int]
    remote: int  # workers on other hosts asked to stop through the store


def stop_workers(store: Store, timeout_s: float) -> StopReport:
    """Ask every worker of this home and store to stop gracefully, and wait for them."""
    host = socket.gethostname()
    live = store.live_workers(utcnow())
    with _pids_locked() as entries:
        targets = {int(e["pid"]) for e in entries if procs.queuectl_alive(int(e.get("pid", 0)))}
        targets |= {w.pid for w in live if w.host == host and procs.queuectl_alive(w.pid)}
        remote = [w.id for w in live if w.host != host]
        if remote:
            store.request_stop(remote)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        waiting = set(targets)
        while waiting and time.monotonic() < deadline:
            waiting = {pid for pid in waiting if procs.pid_alive(pid)}
            if waiting:
                time.sleep(0.05)  # not our children: no pidfd wait without a race
        entries[:] = [e for e in entries if int(e.get("pid", 0)) in waiting]
    return StopReport(sorted(targets - waiting), sorted(waiting), len(remote))
