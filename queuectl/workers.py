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
from typing import Any

from . import procs
from .models import format_time, utcnow
from .paths import logs_dir, pids_path
from .store import Store

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)  # a child that keeps crashing is restarted ever slower
Log = Callable[[str], None]


def worker_command(url: str, options: Sequence[str]) -> list[str]:
    """The command line of one worker process (`worker run --count 1`)."""
    return [
        sys.executable,
        "-m",
        "queuectl",
        "--db",
        url,
        "worker",
        "run",
        "--count",
        "1",
        *options,
    ]


@dataclass
class _Child:
    slot: int
    proc: subprocess.Popen[bytes]
    crashes: int = 0
    restart_at: float | None = None


class Supervisor:
    """Runs N worker processes in the foreground and restarts any that crash.

    Signals are forwarded to the children, which treat repeats as one request,
    so a signal sent to the whole process group (Ctrl-C) and a forwarded copy
    count once. A child that exits 0 has stopped or drained and is not restarted.
    """

    def __init__(self, url: str, count: int, options: Sequence[str], log: Log) -> None:
        self.command = worker_command(url, options)
        self.count = count
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
        self.children = [_Child(slot, self._spawn()) for slot in range(self.count)]
        while True:
            running = [
                c for c in self.children if c.proc.returncode is None and c.restart_at is None
            ]
            pending = [c for c in self.children if c.restart_at is not None]
            if not running and not pending:
                return 1 if self.failed else 0
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
                    child.proc, child.restart_at = self._spawn(), None

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command, stdin=subprocess.DEVNULL)

    def _exited(self, child: _Child) -> None:
        code = child.proc.returncode
        if code == 0 or self.stopping:
            if code != 0:
                self.failed = True
            self.children.remove(child)
            return
        delay = RESTART_BACKOFF_S[min(child.crashes, len(RESTART_BACKOFF_S) - 1)]
        child.crashes += 1
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        self.log(f"worker process {child.proc.pid} died ({how}); restarting in {delay} s")
        child.restart_at = time.monotonic() + delay


# -- detached workers and pids.json ---------------------------------------------------


@contextlib.contextmanager
def _pids_locked() -> Iterator[list[dict[str, Any]]]:
    """pids.json's entries, under an exclusive lock, written back on exit."""
    path = pids_path()
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries = json.loads(path.read_text()).get("workers", [])
        except (FileNotFoundError, ValueError, AttributeError):
            entries = []
        yield entries
        tmp = path.with_name(f".pids.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"workers": entries}, indent=2) + "\n")
        os.replace(tmp, path)


def start_detached(url: str, count: int, options: Sequence[str]) -> list[int]:
    """Start `count` detached worker processes, recorded in pids.json; return their pids."""
    log_path = logs_dir() / "workers.log"
    started = []
    with _pids_locked() as entries:
        entries[:] = [e for e in entries if procs.queuectl_alive(int(e.get("pid", 0)))]
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            for _ in range(count):
                proc = subprocess.Popen(
                    worker_command(url, options),
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    start_new_session=True,
                )
                started.append(proc.pid)
                entries.append(
                    {
                        "pid": proc.pid,
                        "db": url,
                        "started_at": format_time(utcnow()),
                        "log": str(log_path),
                    }
                )
        finally:
            os.close(fd)
    return started


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
