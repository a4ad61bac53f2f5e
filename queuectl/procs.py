"""Waiting on processes without polling, killing process groups, and the lease watchdog.

On Linux a pidfd becomes readable when its process exits, so a worker can
block in select() on its job and on its wake-up pipe at once: no polling loop
(subprocess's own timed wait polls, which halves spawn throughput).

Imported from its own directory, this module is also a worker's watchdog (see Watchdog).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see the watchdog)

if TYPE_CHECKING:  # the watchdog process imports this module: only what it needs at run time
    import subprocess
    from typing import Protocol, TypeVar

FALLBACK_POLL_S = 0.05  # where pidfd_open is missing (macOS)
KILL_GRACE_S = 3.0  # between SIGTERM and SIGKILL of a job's process group
# The worker stops its own job when the lease runs out; its watchdog steps in this much
# later, so a worker that can act always does it first (one SIGTERM, not two).
WATCHDOG_SLACK_S = 0.25
# While a job runs, and right after one ended, its watchdog reads the worker's messages this
# often rather than as each arrives: a reader asleep on the pipe would be woken at every
# write, which costs the worker a context switch per message on a busy machine (and the
# watchdog ~50 µs of CPU per job when jobs are short).
WATCHDOG_READ_S = 0.05

# The watchdog process: this module, imported from its own directory (the package's
# other modules, and anything installed, stay out of it), on the pipe as its stdin.
WATCHDOG_MAIN = "import sys; sys.path[:0] = sys.argv[1:]; import procs; procs._watch(0)"

# Leases run out in real time. CLOCK_BOOTTIME goes on counting while the machine is
# suspended, where CLOCK_MONOTONIC (time.monotonic() on Linux) stands still: a worker
# that slept through its lease must see that it ran out.
_LEASE_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def lease_clock() -> float:
    """Seconds on the clock that leases are measured with (see _LEASE_CLOCK)."""
    return time.clock_gettime(_LEASE_CLOCK)


class WakePipe:
    """A self-pipe: signal handlers write a byte, select() wakes up."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def wake(self) -> None:
        """Safe to call from a signal handler."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self.write_fd, b"!")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self.read_fd, 512):
                pass

    def wait(self, timeout: float | None) -> bool:
        """Block until woken (True) or until timeout seconds pass (False)."""
        ready, _, _ = select.select([self.read_fd], [], [], timeout)
        if ready:
            self.drain()
        return bool(ready)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


def pidfd(pid: int) -> int | None:
    """A pidfd for `pid`, or None where the platform has none (or the process is gone)."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except (OSError, OverflowError):  # OverflowError: no pid is that large
        return None


class Spawned:
    """A child started without subprocess (posix_spawn, fork), with the part of Popen's
    interface queuectl uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


if TYPE_CHECKING:

    class Child(Protocol):
        """What waiting on a child needs: a Popen, or a worker forked by the Supervisor."""

        pid: int

        def poll(self) -> int | None: ...

    C = TypeVar("C", bound=Child)


def wait_exited(procs: Sequence[C], wake: WakePipe, timeout: float | None) -> list[C]:
    """Wait until one of `procs` exits, the pipe is woken, or `timeout` passes.

    Returns the processes that have exited (and are reaped).
    """
    fds = {p: pidfd(p.pid) for p in procs}
    try:
        exited = [p for p in procs if p.poll() is not None]
        if exited:
            return exited
        watch = [fd for fd in fds.values() if fd is not None]
        if len(watch) < len(procs):  # no pidfd: poll, briefly
            timeout = FALLBACK_POLL_S if timeout is None else min(timeout, FALLBACK_POLL_S)
        ready, _, _ = select.select([*watch, wake.read_fd], [], [], timeout)
        if wake.read_fd in ready:
            wake.drain()
        return [p for p in procs if p.poll() is not None]
    finally:
        for fd in fds.values():
            if fd is not None:
                os.close(fd)


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in the group.

    Zombies count for killpg(pgid, 0), and a slow reaper can keep killed
    grandchildren as zombies for seconds, so Linux reads /proc instead.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return True
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def kill_group(proc: subprocess.Popen[bytes] | Spawned, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group led by `proc`, then SIGKILL it after `grace_s`; reap `proc`."""
    _term_group(proc.pid, grace_s, proc.poll)  # reaping the leader stops it counting as a member
    proc.wait()


def _term_group(pgid: int, grace_s: float, reap: Callable[[], object] = lambda: None) -> None:
    """SIGTERM the process group, then SIGKILL it if anything in it outlives `grace_s`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap()
        if not group_alive(pgid):
            return
        time.sleep(0.02)  # only on the kill path, bounded by the grace period
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_job(job_id: str, worker_id: str, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM whatever still runs for this attempt on this host, then SIGKILL it after
    `grace_s`. Found by its environment markers, not by a process group id, which could
    have been reused once the group's leader was reaped."""
    signal_job(job_id, worker_id, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while job_processes(job_id, worker_id) - {os.getpgrp()}:
        if time.monotonic() >= deadline:
            signal_job(job_id, worker_id, signal.SIGKILL)
            return
        time.sleep(0.02)  # only on the kill path, bounded by the grace period


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie awaiting its reaper."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no pid is that large
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def queuectl_alive(pid: int) -> bool:
    """Alive, and (where /proc tells) still running queuectl rather than a reused pid."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"queuectl" in f.read()
    except OSError:
        return True


def signal_job(job_id: str, worker_id: str, sig: int) -> None:
    """Send `sig` to the process groups on this host running `job_id` for `worker_id`,
    except the caller's own (a job may cancel itself)."""
    for pgid in job_processes(job_id, worker_id) - {os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def job_processes(job_id: str, worker_id: str) -> set[int]:
    """Process groups on this host still running `job_id` for `worker_id` (Linux /proc only).

    A worker killed mid-job leaves its job running in its own session; the
    worker that recovers the job kills it first, so the job never runs twice
    at the same time.
    """
    marker_job = f"QUEUECTL_JOB_ID={job_id}".encode()
    marker_worker = f"QUEUECTL_WORKER_ID={worker_id}".encode()
    groups: set[int] = set()
    with contextlib.suppress(FileNotFoundError):
        entries = os.listdir("/proc")
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
                if marker_job in environ and marker_worker in environ:
                    groups.add(os.getpgid(int(entry)))
            except OSError:
                continue
    return groups


class Watchdog:
    """Bounds a worker's running job to its lease when the worker itself cannot act.

    A job runs in a session of its own, so it goes on when its worker is stopped
    (Ctrl-Z, SIGSTOP), hangs or dies, and would run twice at once after its lease ran
    out and another worker took it over (issue 14). The watchdog is a small process in
    a session of its own, out of reach of the worker's Ctrl-Z. The worker tells it
    which job is starting and when its lease runs out, then the job's process group,
    then each renewal; when the lease runs out unrenewed, the watchdog stops the job
    as a timeout would.

    Messages are single lines on a pipe, each written whole (below PIPE_BUF). The
    write end is non-blocking: a stopped or dead watchdog must not stall the worker.
    """

    def __init__(self) -> None:
        import subprocess

        read_fd, self._fd = os.pipe()
        try:
            # The standard library only (-I -S): nothing of the environment to import. The
            # module is imported, not run as a script, so its compiled bytecode serves.
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-I", "-S", "-c", WATCHDOG_MAIN, os.path.dirname(__file__)],
                stdin=read_fd,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read_fd)
        os.set_blocking(self._fd, False)

    @staticmethod
    def supported() -> bool:
        """Linux only: the watchdog tells a live job from a reused pid by a pidfd."""
        return hasattr(os, "pidfd_open") and os.path.isdir("/proc")

    def starting(self, deadline: float, job_id: str, worker_id: str) -> None:
        """The job is about to start; its lease runs out at `deadline` (lease_clock).
        Sent before the spawn, so a worker stopped before started() is covered too."""
        self._send(f"s {deadline!r} {job_id} {worker_id}\n")

    def started(self, pgid: int) -> None:
        """The job runs in process group `pgid`."""
        self._send(f"a {pgid}\n")

    def renew(self, deadline: float) -> None:
        """The current job's lease was renewed until `deadline`."""
        self._send(f"r {deadline!r}\n")

    def disarm(self) -> None:
        """No job to watch: it could not start, or the worker is stopping it itself."""
        self._send("d\n")

    def close(self, *, guarding: bool) -> None:
        """Let the watchdog exit, and reap it. While a job of ours may still run
        (`guarding`), it stops that job if its lease runs out first; else it has nothing
        left to do and is killed, rather than waited for until its next look at the pipe
        (up to WATCHDOG_READ_S, at the end of every worker)."""
        import subprocess

        os.close(self._fd)
        if not guarding:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(KILL_GRACE_S + 1)

    def _send(self, message: str) -> None:
        with contextlib.suppress(OSError):
            os.write(self._fd, message.encode())


class _Watched:
    """The job a watchdog guards."""

    def __init__(self, deadline: float, job_id: str, worker_id: str) -> None:
        self.deadline = deadline
        self.job_id = job_id
        self.worker_id = worker_id
        self.pgid = 0
        # a pidfd (-1: gone before it could be taken): it never names a process that reused
        # the pid
        self.leader: int | None = None

    def hold_leader(self) -> None:
        """Take a pidfd of the group's leader, once its pgid is known."""
        if self.pgid and self.leader is None:
            try:
                self.leader = os.pidfd_open(self.pgid)
            except OSError:  # exited and reaped already: it ended by itself
                self.leader = -1

    def ended_by_itself(self) -> bool:
        """Its leader has exited; the leftovers of a job that exited are left alone."""
        if self.leader is None:
            return False
        return self.leader < 0 or bool(select.select([self.leader], [], [], 0)[0])

    def stop(self) -> None:
        _log(
            f"watchdog: job {self.job_id} outlived its lease (its worker {self.worker_id} is "
            "stopped, hung or gone); stopping it"
        )
        if self.pgid:
            _term_group(self.pgid, KILL_GRACE_S)
        else:  # the worker stopped before it could say which group: find it by its markers
            stop_job(self.job_id, self.worker_id)

    def close(self) -> None:
        if self.leader is not None and self.leader >= 0:
            os.close(self.leader)


def _watch(fd: int) -> None:
    """The watchdog's loop: follow the worker's messages on `fd`, and stop the job once its
    lease has run out. At the worker's end (end of file) exit, or, while a job of its runs
    on, stop that job when its lease runs out first (a worker on the same host may recover
    it sooner: see Runner.recover_lost_jobs)."""
    os.set_blocking(fd, False)
    job: _Watched | None = None
    buffered = b""
    worker_gone = False
    busy = False  # a job ended since the last look that found no message
    while True:
        if job is None:
            if worker_gone:
                return
            if busy:  # the next job most likely follows at once: read its messages in a batch
                time.sleep(WATCHDOG_READ_S)
            else:
                select.select([fd], [], [])  # idle: sleep until the next job (or the end)
        else:
            time.sleep(
                max(0.0, min(WATCHDOG_READ_S, job.deadline + WATCHDOG_SLACK_S - lease_clock()))
            )
        data, worker_gone = _read_all(fd, worker_gone)
        busy = busy and bool(data)
        *lines, buffered = (buffered + data).split(b"\n")
        # One job at a time: a job's start means the one before it has ended, so only the
        # last start (or disarm) in a batch and what follows it matter.
        for index in range(len(lines) - 1, 0, -1):
            if lines[index][:1] in (b"s", b"d"):
                del lines[:index]
                break
        for line in lines:
            kind, *fields = line.decode().split(" ")
            if kind == "r" and job is not None:
                job.deadline = max(job.deadline, float(fields[0]))
            elif kind == "a" and job is not None:
                job.pgid = int(fields[0])
            elif kind in ("s", "d"):
                if job is not None:
                    job.close()
                job = _Watched(float(fields[0]), *fields[1:]) if kind == "s" else None
        if job is None:
            continue
        job.hold_leader()
        if job.ended_by_itself():
            job.close()
            job = None
            busy = True
        elif lease_clock() >= job.deadline + WATCHDOG_SLACK_S:
            job.stop()
            job.close()
            job = None


def _read_all(fd: int, at_end: bool) -> tuple[bytes, bool]:
    """What the pipe holds now, and whether the worker has closed it."""
    chunks = []
    while not at_end:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        chunks.append(chunk)
        at_end = not chunk
    return b"".join(chunks), at_end


def write_stderr_line(line: str) -> None:
    """One line on stderr in one write: workers share their supervisor's stderr, and with
    PYTHONUNBUFFERED set print() writes the text and its newline apart, so two workers'
    lines could run together into one. A line that cannot be written is dropped: a worker
    whose log reader went away (a closed pipe, a restarted journal) goes on running jobs."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: no stderr at all
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _log(line: str) -> None:
    """A line on stderr (the worker's), time-stamped like the worker's own."""
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    write_stderr_line(f"{stamp} {line}")
