"""Timing, processes and statistics for the benchmarks.

Every process is started in its own session and waited for with a deadline;
`Proc` kills its whole process group when it leaves its `with` block, so a
failed or interrupted benchmark leaves nothing running. Exit is observed
through a pidfd where the platform has one, so a measured wall time is not
rounded up by Popen.wait()'s polling (up to 50 ms per wait).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

VENV_BIN = Path(sys.executable).parent
QUEUECTL = Path(sys.executable).with_name("queuectl")
PYTHON = sys.executable
BASELINE_CMD = (PYTHON, "-c", "pass")
CLK_TCK = os.sysconf("SC_CLK_TCK")
FALLBACK_POLL_S = 0.0005  # wait4(WNOHANG) cadence where pidfd_open is missing
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long


class BenchError(RuntimeError):
    """A scenario could not run (a command failed, or a deadline passed)."""


class BenchSkipped(BenchError):
    """A scenario does not apply here (say, no PostgreSQL server): a row, not a failure."""


# -- time ------------------------------------------------------------------------


class Stopwatch:
    """`with Stopwatch() as sw: ...`, then `sw.seconds` (perf_counter based)."""

    def __init__(self) -> None:
        self.start = 0.0
        self.seconds = math.nan

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.005
) -> float:
    """Poll `predicate` until it is true; return the seconds waited.

    :raises BenchError: `timeout` seconds passed first.
    """
    start = time.monotonic()
    deadline = start + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - start


# -- processes ---------------------------------------------------------------------


_pycache_prefix: Path | None = None


@contextlib.contextmanager
def bytecode_cache() -> Iterator[Path]:
    """A private PYTHONPYCACHEPREFIX for every Python the session starts, removed afterwards.

    An editable install run with PYTHONDONTWRITEBYTECODE=1 (common in containers and CI)
    recompiles queuectl's modules on every command, which would measure the compiler, not
    queuectl; a normal install has its bytecode compiled. The cache lives outside the
    source tree, and baselines use it too.
    """
    global _pycache_prefix
    with tempfile.TemporaryDirectory(prefix="queuectl-bench-pyc-") as tmp:
        _pycache_prefix = Path(tmp)
        try:
            yield _pycache_prefix
        finally:
            _pycache_prefix = None


def bench_env(home: Path) -> dict[str, str]:
    """The environment of every process: this venv first on PATH, a private QUEUECTL_HOME.

    Inherited QUEUECTL_* settings (a database URL, config overrides) are dropped so a
    run measures the defaults.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', os.defpath)}"
    env["QUEUECTL_HOME"] = str(home)
    if _pycache_prefix is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(_pycache_prefix)
    return env


_deferred_removals: list[Path] | None = None
# Set by --keep-homes: every home is made here and left for the caller to remove.
_kept_homes_dir: Path | None = None


def keep_homes_in(directory: Path) -> None:
    """Make every home under `directory` and remove none: a series of sessions run back to
    back (before/after comparisons) then never inherits another's deletions (see
    deferred_removal()); whoever ran the series removes the directory at its end."""
    global _kept_homes_dir
    directory.mkdir(parents=True, exist_ok=True)
    _kept_homes_dir = directory


@contextlib.contextmanager
def deferred_removal() -> Iterator[None]:
    """Within the block, fresh_home() leaves each home in place; all go when it ends.

    Right after a run's 2,000 log files were deleted, creating files on ext4 was measured
    10-25x slower for minutes (issue 19; the inode allocator steps around recently
    deleted inodes, `recently_deleted()` in fs/ext4/ialloc.c). Removing each home right
    after its scenario made the next scenario pay for it in its timed part, so a session
    removes every home once nothing is measured any more. A fresh directory per home
    would not help: its files take their inodes from the same file system.
    """
    global _deferred_removals
    outer, _deferred_removals = _deferred_removals, []
    try:
        yield
    finally:
        pending, _deferred_removals = _deferred_removals, outer
        for tmp in reversed(pending):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def fresh_home(prefix: str = "queuectl-bench-") -> Iterator[Path]:
    """A new temporary QUEUECTL_HOME, removed afterwards (at the end of the enclosing
    deferred_removal() block, if there is one)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=_kept_homes_dir))
    try:
        home = tmp / "home"
        home.mkdir(mode=0o700)
        yield home
    finally:
        if _kept_homes_dir is not None:
            pass  # the caller removes them all, after its series of sessions
        elif _deferred_removals is not None:
            _deferred_removals.append(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass(frozen=True)
class Exit:
    """How a process ended: wall time from spawn to exit, CPU of it and its reaped children."""

    returncode: int
    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str

    def check(self, cmd: Sequence[str]) -> Exit:
        if self.returncode != 0:
            detail = self.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
            raise BenchError(f"{' '.join(cmd)!r} exited {self.returncode}: {detail[0]}")
        return self


class Proc:
    """A child process in its own session, with its output in files.

    Leaving the `with` block stops the whole process group: SIGTERM, then SIGKILL
    after STOP_GRACE_S.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str],
        stdin: Path | None = None,
        output_dir: Path | None = None,
        name: str = "proc",
    ) -> None:
        self.cmd = list(cmd)
        self.stdout_path = self.stderr_path = None
        self._files: list[IO[bytes]] = []
        if output_dir is not None:
            self.stdout_path = output_dir / f"{name}.out"
            self.stderr_path = output_dir / f"{name}.err"
            out: IO[bytes] = open(self.stdout_path, "w+b")
            err: IO[bytes] = open(self.stderr_path, "w+b")
        else:
            out = tempfile.TemporaryFile()
            err = tempfile.TemporaryFile()
        self._files += [out, err]
        stdin_file: IO[bytes] | int = subprocess.DEVNULL
        if stdin is not None:
            stdin_file = open(stdin, "rb")
            self._files.append(stdin_file)
        self.started = time.perf_counter()
        try:
            self.popen = subprocess.Popen(
                self.cmd,
                env=dict(env),
                stdin=stdin_file,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_files()
            raise BenchError(f"cannot start {' '.join(self.cmd)!r}: {exc}") from exc
        self.pid = self.popen.pid
        self._out, self._err = out, err
        self.exit: Exit | None = None
        self._exited_at: float | None = None

    def __enter__(self) -> Proc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait(self, timeout: float) -> Exit:
        """Wait for exit and reap; kill the group and raise BenchError after `timeout` s."""
        if self.exit is not None:
            return self.exit
        if not self._wait_exited(timeout):
            self.stop(grace_s=0.0)
            raise BenchError(f"{' '.join(self.cmd)!r} still running after {timeout:g} s")
        return self._reap()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """End the process group (SIGTERM, SIGKILL after grace_s) and reap the leader."""
        if self.exit is None:
            self._signal_group(signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
            if not self._wait_exited(grace_s):
                self._signal_group(signal.SIGKILL)
                self._wait_exited(STOP_GRACE_S)
            with contextlib.suppress(ChildProcessError):
                self._reap()
        self._close_files()

    def alive(self) -> bool:
        return self.exit is None and not self._wait_exited(0.0)

    def read_stderr(self) -> str:
        if self.stderr_path is None:
            raise BenchError("stderr is only readable while running with an output_dir")
        return self.stderr_path.read_text(errors="replace")

    # -- plumbing --------------------------------------------------------------

    def _signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def _wait_exited(self, timeout: float) -> bool:
        """True once the process has exited (not reaped yet, so wait4 gets its rusage)."""
        if self._exited_at is None and self._poll_exited(timeout):
            self._exited_at = time.perf_counter()
        return self._exited_at is not None

    def _poll_exited(self, timeout: float) -> bool:
        if hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                return True  # already reaped
            try:
                ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
                return bool(ready)
            finally:
                os.close(fd)
        deadline = time.monotonic() + timeout
        while True:
            # WNOWAIT leaves the child reapable for wait4 below.
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(FALLBACK_POLL_S)

    def _reap(self) -> Exit:
        # Stragglers (children the leader left in its group) die while the leader is still an
        # unreaped zombie: its pid, so the group id, cannot have been reused yet.
        self._signal_group(signal.SIGKILL)
        _, status, usage = os.wait4(self.pid, 0)
        wall = (self._exited_at or time.perf_counter()) - self.started
        code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = code  # we reaped it: tell Popen, so it never waits again
        self._out.flush()
        self._err.flush()
        self.exit = Exit(
            returncode=code,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            stdout=_read_all(self._out),
            stderr=_read_all(self._err),
        )
        return self.exit

    def _close_files(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()
        self._files.clear()


def _read_all(f: IO[bytes]) -> str:
    f.seek(0)
    return f.read().decode(errors="replace")


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: Path | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> Exit:
    """Run a command to completion; its wall time runs from spawn to exit."""
    with Proc(cmd, env=env, stdin=stdin) as proc:
        result = proc.wait(timeout)
    return result.check(cmd) if check else result


def queuectl(*args: str) -> list[str]:
    return [str(QUEUECTL), *args]


def require_queuectl() -> None:
    if not QUEUECTL.exists():
        raise BenchError(
            f"{QUEUECTL} not found: run the benchmarks with the venv's python "
            "(`make install`, then `.venv/bin/python -m benchmarks`)"
        )


# -- /proc -------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_tree(pid: int) -> list[int]:
    """`pid` and every live descendant of it (by parent pid, from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rpartition(b")")[2].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        member = todo.pop()
        found.append(member)
        todo += children.get(member, [])
    return found


def proc_tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants, with the children each has reaped
    (utime + stime + cutime + cstime): a child that exits and is waited for during a
    window still counts, through its parent."""
    total = 0
    for member in proc_tree(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            with open(f"/proc/{member}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            total += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return total / CLK_TCK


def proc_tree_context_switches(pid: int) -> int:
    """proc_context_switches summed over `pid` and its live descendants."""
    return sum(proc_context_switches(member) for member in proc_tree(pid))


def proc_context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches summed over the threads of a process."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError):
                text = Path(f"/proc/{pid}/task/{task}/status").read_text()
                for line in text.splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    return total


# -- statistics --------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the largest one)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
