"""Waiting on processes without polling, and killing process groups.

On Linux a pidfd becomes readable when its process exits, so a worker can
block in select() on its job and on its wake-up pipe at once: no polling loop
(subprocess's own timed wait polls, which halves spawn throughput).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence

FALLBACK_POLL_S = 0.05  # where pidfd_open is missing (macOS)
KILL_GRACE_S = 3.0  # between SIGTERM and SIGKILL of a job's process group


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
    except OSError:
        return None


def wait_exited(
    procs: Sequence[subprocess.Popen[bytes]], wake: WakePipe, timeout: float | None
) -> list[subprocess.Popen[bytes]]:
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


def kill_group(proc: subprocess.Popen[bytes], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group led by `proc`, then SIGKILL it after `grace_s`; reap `proc`."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it stops counting as a member
        if not group_alive(pgid):
            break
        time.sleep(0.02)  # only on the kill path, bounded by the grace period
    else:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait()


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
    except ProcessLookupError:
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
