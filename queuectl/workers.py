"""Worker processes: the foreground supervisor, detached start/stop, and pids.json."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from . import procs
from .errors import QueuectlError
from .models import WorkerInfo, format_time, utcnow, worker_is_local
from .paths import home_dir, logs_dir, pids_path
from .store import Store, redact_url

RESTART_BACKOFF_S = (1, 2, 5, 10, 30)  # a child that keeps crashing is restarted ever slower
EARLY_CRASH_S = 10.0  # a child that dies this soon after starting has a problem restarts won't fix
EARLY_CRASHES_MAX = 5
STARTUP_TIMEOUT_S = 15.0  # `worker start` waits this long for each worker to register
SUPERVISOR_PID_ENV = "QUEUECTL_SUPERVISOR_PID"  # set by a Supervisor for its children
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0  # where no parent-death signal exists, children look this often
# A worker registers (started_at) after its process starts: within this window (a store
# being migrated or reconnected to holds it up), give or take the slack of clocks (the
# store's skew correction, tick resolution).
REGISTRATION_WINDOW_S = 120.0
REGISTRATION_SLACK_S = 2.0
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
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
    env = {**os.environ, "QUEUECTL_DATABASE_URL": url}
    env.pop(SUPERVISOR_PID_ENV, None)  # only a Supervisor binds its children to itself
    return env


def bind_to_supervisor() -> bool:
    """In a child of a Supervisor, get SIGTERM (a graceful stop) when the supervisor dies,
    so a SIGKILLed supervisor leaves no orphans behind, nor a restarted one duplicates (#14).
    True in such a child.

    Does nothing in a process no Supervisor started. Removes the marker from the
    environment, so jobs (and workers they start) never inherit it.
    """
    raw = os.environ.pop(SUPERVISOR_PID_ENV, None)
    if raw is None or not raw.isdigit():
        return False
    supervisor = int(raw)
    if not _parent_death_signal(signal.SIGTERM):
        threading.Thread(target=_watch_parent, args=(supervisor,), daemon=True).start()
    # The supervisor may have died before prctl took effect: we were re-parented already.
    if os.getppid() != supervisor:
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _parent_death_signal(sig: int) -> bool:
    """Have the kernel send `sig` when our parent exits (Linux); False where it cannot.

    Linux sends it when the parent *thread* that forked us exits. The Supervisor
    spawns from its main thread (its scheduler thread never does), so that is when
    the supervisor itself dies.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0


def _watch_parent(supervisor: int) -> None:
    while os.getppid() == supervisor:
        time.sleep(PARENT_POLL_S)  # no parent-death signal here: one cheap call a second
    os.kill(os.getpid(), signal.SIGTERM)


def _run_forked(args: list[str], env: dict[str, str]) -> NoReturn:
    """In a forked child: be `queuectl ARGS` as a fresh process would, then exit."""
    code = 1
    try:
        os.environ.clear()
        os.environ.update(env)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        from .cli import cli

        cli.main(args=args, prog_name="queuectl")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@dataclass
class _Child:
    command: list[str]
    proc: subprocess.Popen[bytes] | procs.Spawned
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
        self,
        url: str,
        count: int,
        options: Sequence[str],
        log: Log,
        spool: Path | None = None,
        *,
        fork: bool = False,
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
        self.env = {**worker_environment(url), SUPERVISOR_PID_ENV: str(os.getpid())}
        self.log = log
        self.children: list[_Child] = []
        self.stopping = False
        self.failed = False
        self.fork = fork
        self._wake = procs.WakePipe()

    def forward(self, signum: int) -> None:
        """Pass a signal to every child. Safe from a signal handler."""
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self.stopping = True
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signum)
        self._wake.wake()

    def start(self) -> None:
        """Start every child (run() does, if it was not called first)."""
        if self.fork:
            from . import runner  # noqa: F401 - imported once here, not again in each child
        self.children = [_Child(c, self._spawn(c), time.monotonic()) for c in self.commands]

    def run(self) -> int:
        """Run until every child has exited; 0 when all exited cleanly."""
        if not self.children:
            self.start()
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
                if (code := child.proc.returncode) is not None:
                    self._exited(child, code)
            for child in pending:
                if self.stopping:
                    child.restart_at = None
                    self.children.remove(child)
                elif (child.restart_at or 0) <= time.monotonic():
                    child.proc, child.restart_at = self._spawn(child.command), None
                    child.started = time.monotonic()

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes] | procs.Spawned:
        """A child running `command`, spawned from the supervisor's main thread: the
        children's parent-death signal (bind_to_supervisor) fires when the thread that
        forked them exits, which must be when the supervisor does.

        Forked, where it is safe, rather than a fresh interpreter: a fork skips starting
        Python and importing queuectl again (about half of a short `--drain`). Safe means
        the caller said no store connection is open (SQLite and libpq connections must
        never cross a fork) and this process has no other thread (a lock another thread
        held at the fork would stay held in the child forever); a restart while the
        scheduler thread runs starts a fresh interpreter.
        """
        if self.fork and hasattr(os, "fork") and threading.active_count() == 1:
            sys.stdout.flush()
            sys.stderr.flush()  # else the child would print what was buffered again
            pid = os.fork()
            if pid == 0:
                self._wake.close()
                _run_forked(command[4:], self.env)  # after [python, -P, -m, queuectl]
            return procs.Spawned(pid)
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=self.env)  # noqa: S603

    def _exited(self, child: _Child, code: int) -> None:
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
#
# A pid names a process only while it lives: the kernel hands it to the next one. So
# pids.json records what a pid cannot tell apart, its start time and the boot, and
# `worker start` and `worker stop` act only on processes that match, run queuectl and
# belong to us (#14). Signals go through a pidfd opened before those checks, so a pid
# reused after them is never hit.


@dataclass(frozen=True)
class ProcessIdentity:
    """What tells a process from a later one with the same pid."""

    start_ticks: int  # field 22 of /proc/<pid>/stat: clock ticks after boot
    boot_id: str

    def started(self) -> float:
        """When the process started, in seconds since the epoch."""
        ticks_per_s = os.sysconf("SC_CLK_TCK")
        return (
            time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + self.start_ticks / ticks_per_s
        )


@dataclass(frozen=True)
class _Seen:
    """A live process, as /proc shows it."""

    identity: ProcessIdentity
    uid: int
    cmdline: bytes


def _look(pid: int) -> _Seen | None:
    """Process `pid` as /proc shows it; None if it is gone, a zombie, or there is no /proc."""
    proc = Path(f"/proc/{pid}")
    try:
        fields = (proc / "stat").read_bytes().rpartition(b")")[2].split()
        uid = proc.stat().st_uid
        cmdline = (proc / "cmdline").read_bytes()
        boot_id = BOOT_ID_PATH.read_text().strip()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return _Seen(ProcessIdentity(int(fields[19]), boot_id), uid, cmdline)


def _environ(pid: int) -> dict[str, str] | None:
    """The environment of `pid` (readable for our own processes, or as root)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _home_of(env: dict[str, str]) -> str:
    raw = env.get("QUEUECTL_HOME")
    home = Path(raw).expanduser() if raw else Path(env.get("HOME", "/nonexistent")) / ".queuectl"
    return os.path.realpath(home)


NOT_RUNNING = "it is not running"


def _absent(pid: int) -> str:
    """Why a process /proc does not show cannot be acted on."""
    # alive but not in /proc: no /proc here (macOS), or hidden from us (hidepid)
    return "it cannot be inspected" if procs.pid_alive(pid) else NOT_RUNNING


def _not_ours(seen: _Seen) -> str | None:
    """Why a process is no queuectl process of ours (None when it is one)."""
    euid = os.geteuid()
    if euid != 0 and seen.uid != euid:
        return f"it runs as uid {seen.uid}, not as uid {euid}"
    if b"queuectl" not in seen.cmdline:
        return "it does not run queuectl"
    return None


PID_MAX = 2**22  # Linux's limit (pid_max): a larger "pid" in pids.json is garbage


def _entry_pid(entry: dict[str, Any]) -> int:
    pid = entry.get("pid")
    return pid if type(pid) is int and 0 < pid <= PID_MAX else 0  # not bool: True is no pid


def _entry_problem(entry: dict[str, Any], seen: _Seen) -> str | None:
    """Why the live process of a pids.json entry may not be acted on (None when it may)."""
    if why := _not_ours(seen):
        return why
    if "start_ticks" in entry or "boot_id" in entry:
        recorded = (entry.get("start_ticks"), entry.get("boot_id"))
        if recorded != (seen.identity.start_ticks, seen.identity.boot_id):
            return "its pid now belongs to another process"
        return None
    # Written by a queuectl that recorded no start time: trust only a detached worker
    # (its argv) whose environment says it was started for this home and the entry's store.
    if b"\0worker\0run\0" not in seen.cmdline:
        return "an entry without a start time, and the process is no queuectl worker"
    env = _environ(_entry_pid(entry))
    if env is None:
        return "an entry without a start time, and the process's environment is unreadable"
    url = env.get("QUEUECTL_DATABASE_URL")
    if (
        url is None
        or redact_url(url) != entry.get("db")
        or _home_of(env) != os.path.realpath(home_dir())
    ):
        return "an entry without a start time, and the process is no worker of this home"
    return None


def _registration_problem(worker: WorkerInfo, url: str, seen: _Seen) -> str | None:
    """Why the local process of a registered worker may not be signalled (None when it may)."""
    if why := _not_ours(seen):
        return why
    started, registered = seen.identity.started(), worker.started_at.timestamp()
    if started > registered + REGISTRATION_SLACK_S:
        return "its pid now belongs to a process started after the worker registered"
    if started < registered - REGISTRATION_WINDOW_S:
        return "its pid belongs to a process started long before the worker registered"
    env = _environ(worker.pid)
    if env is not None and env.get("QUEUECTL_DATABASE_URL", url) != url:
        return "it is a worker of another store"
    return None


class _Target:
    """A process verified as one of our workers, held by a pidfd where there is one."""

    def __init__(self, pid: int, fd: int | None, identity: ProcessIdentity) -> None:
        self.pid, self.fd, self.identity = pid, fd, identity

    def signal(self, sig: int) -> None:
        """:raises PermissionError: the kernel refused (EPERM)."""
        with contextlib.suppress(ProcessLookupError):
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:  # a kernel without pidfds (before 5.3): checked just before, a small race
                os.kill(self.pid, sig)

    def alive(self) -> bool:
        if self.fd is not None:
            return not select.select([self.fd], [], [], 0)[0]  # readable once it has exited
        seen = _look(self.pid)
        return seen is not None and seen.identity == self.identity

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


Problem = Callable[[_Seen], "str | None"]


def _verify(pid: int, problem: Problem) -> _Seen | str:
    """The live process `pid` if `problem` finds none in it, else why it may not be acted on."""
    if pid <= 0 or pid == os.getpid():
        return "not a worker's pid"
    seen = _look(pid)
    if seen is None:
        return _absent(pid)
    return problem(seen) or seen


def _open_verified(pid: int, problem: Problem) -> _Target | str:
    """A target for `pid`, or why it is not one. The pidfd is opened before the checks, so
    whatever they verified is what it signals."""
    fd = procs.pidfd(pid) if pid > 0 else None
    found = _verify(pid, problem)
    if isinstance(found, str):
        if fd is not None:
            os.close(fd)
        return found
    return _Target(pid, fd, found.identity)


@contextlib.contextmanager
def _pids_locked() -> Iterator[list[dict[str, Any]]]:
    """pids.json's entries, under an exclusive lock, written back on exit."""
    path = pids_path()
    lock_fd = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(lock_fd, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            entries = [e for e in json.loads(path.read_text())["workers"] if isinstance(e, dict)]
        except (FileNotFoundError, ValueError, LookupError, TypeError):
            entries = []
        yield entries
        tmp = path.with_name(f".pids.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # its pids are ours
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"workers": entries}, indent=2) + "\n")
        os.replace(tmp, path)


def _drop_entry(entry: dict[str, Any], why: str, log: Log) -> None:
    if why != NOT_RUNNING:  # a worker that exited: nothing worth saying
        pid = json.dumps(entry.get("pid"))[:40]  # as written: it may be no number at all
        log(f"pids.json: dropped the entry of pid {pid}, not signalled: {why}")


def start_detached(
    store: Store, count: int, options: Sequence[str], *, log: Log = procs.write_stderr_line
) -> list[int]:
    """Start `count` detached worker processes, recorded in pids.json; return their pids
    once each has registered with the store.

    :raises QueuectlError: a worker exited instead of starting.
    """
    log_path = logs_dir() / "workers.log"
    started: list[subprocess.Popen[bytes]] = []
    with _pids_locked() as entries:
        kept = []
        for entry in entries:
            found = _verify(_entry_pid(entry), functools.partial(_entry_problem, entry))
            if isinstance(found, str):
                _drop_entry(entry, found, log)
            else:
                kept.append(entry)
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
                # Read before we reap it: the start time of our child is still its own.
                seen = _look(proc.pid)
                identity: dict[str, int | str | None] = {"start_ticks": None, "boot_id": None}
                if seen is not None:
                    identity = {
                        "start_ticks": seen.identity.start_ticks,
                        "boot_id": seen.identity.boot_id,
                    }
                kept.append(
                    {
                        "pid": proc.pid,
                        **identity,
                        "db": redact_url(store.url),
                        "started_at": format_time(utcnow()),
                        "log": str(log_path),
                    }
                )
        finally:
            os.close(fd)
            entries[:] = kept
    _wait_registered(store, started, log_path)
    return [proc.pid for proc in started]


def _wait_registered(store: Store, started: list[subprocess.Popen[bytes]], log_path: Path) -> None:
    waiting = {proc.pid: proc for proc in started}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while waiting and time.monotonic() < deadline:
        for pid, proc in list(waiting.items()):
            if proc.poll() is not None:
                raise QueuectlError(
                    f"worker pid {pid} exited at start (exit code {proc.returncode}): "
                    f"see {log_path}"
                )
        registered = {w.pid for w in store.live_workers(utcnow()) if worker_is_local(w.id)}
        for pid in registered & set(waiting):
            del waiting[pid]
        if waiting:
            time.sleep(0.05)  # other processes: nothing to block on but the store


@dataclass(frozen=True)
class StopReport:
    stopped: list[int]
    still_running: list[int]
    remote: int  # workers on other hosts asked to stop through the store
    refused: list[int] = field(default_factory=list)  # ours, but the kernel said EPERM
    # live workers on this host that could not be verified as ours to signal (another
    # user's, another PID namespace's, no /proc): asked to stop through the store instead
    unverified: int = 0


def stop_workers(
    store: Store, timeout_s: float, *, log: Log = procs.write_stderr_line
) -> StopReport:
    """Ask every worker of this home and store to stop gracefully, and wait for them.

    Signals only processes verified as ours (see ProcessIdentity); every other
    registered worker of the store is asked through the store, which it reads at
    its next heartbeat.
    """
    live = store.live_workers(utcnow())
    targets: dict[int, _Target] = {}
    try:
        with _pids_locked() as entries:
            entries[:] = _entry_targets(entries, targets, log)
            asked, unverified = _registered_targets(live, store.url, targets, log)
            refused = []
            for pid, target in targets.items():
                try:
                    target.signal(signal.SIGTERM)
                except PermissionError:  # never stops us from stopping the others
                    refused.append(pid)
                    log(f"worker pid {pid}: not allowed to signal it (EPERM)")
            asked += [w.id for w in live if worker_is_local(w.id) and w.pid in refused]
            if asked:
                store.request_stop(asked)
            waiting = _wait_exited([t for t in targets.values() if t.pid not in refused], timeout_s)
            still = {t.pid for t in waiting} | set(refused)
            entries[:] = [e for e in entries if _entry_pid(e) in still]
    finally:
        for target in targets.values():
            target.close()
    remote = sum(1 for w in live if not worker_is_local(w.id))
    stopped = sorted(set(targets) - still)
    return StopReport(stopped, sorted(t.pid for t in waiting), remote, sorted(refused), unverified)


def _entry_targets(
    entries: list[dict[str, Any]], targets: dict[int, _Target], log: Log
) -> list[dict[str, Any]]:
    """Add the verified processes of pids.json to `targets`; return the entries kept."""
    kept = []
    for entry in entries:
        pid = _entry_pid(entry)
        found = _open_verified(pid, functools.partial(_entry_problem, entry))
        if isinstance(found, str):
            _drop_entry(entry, found, log)
            continue
        kept.append(entry)
        if pid in targets:  # the same worker twice
            found.close()
        else:
            targets[pid] = found
    return kept


def _registered_targets(
    live: list[WorkerInfo], url: str, targets: dict[int, _Target], log: Log
) -> tuple[list[str], int]:
    """Add this host's registered workers verified as ours to `targets`; return the ids of
    the others, to ask through the store, and how many of those run here unverified."""
    asked: list[str] = []
    unverified = 0
    for worker in live:
        local = worker_is_local(worker.id)
        if local and worker.pid in targets:
            continue
        if local:
            found = _open_verified(
                worker.pid, functools.partial(_registration_problem, worker, url)
            )
            if isinstance(found, _Target):
                targets[worker.pid] = found
                continue
            if found != NOT_RUNNING:
                unverified += 1
                log(
                    f"worker {worker.id}: pid {worker.pid} not signalled ({found}); "
                    "asked it to stop through the store"
                )
        asked.append(worker.id)  # harmless if it is a dead worker's registration
    return asked, unverified


def _wait_exited(targets: list[_Target], timeout_s: float) -> list[_Target]:
    """Wait up to `timeout_s` for `targets` to exit; return those still running."""
    deadline = time.monotonic() + timeout_s
    while waiting := [t for t in targets if t.alive()]:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        fds = [t.fd for t in waiting if t.fd is not None]
        if len(fds) == len(waiting):
            select.select(fds, [], [], left)  # a pidfd turns readable on exit
        else:
            time.sleep(min(left, 0.05))  # no pidfds: poll
        targets = waiting
    return waiting
