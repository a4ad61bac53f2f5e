"""Real processes for end-to-end tests: workers started and killed, pids watched."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

from .conftest import QUEUECTL


def q(path: Path) -> str:
    return shlex.quote(str(path))


def pid_gone(pid: int) -> bool:
    """True once `pid` has exited; a zombie waiting for its reaper counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return Path("/proc/self").exists()  # Linux: it vanished; elsewhere kill(0) said alive
    except OSError:
        return False
    return stat.rpartition(b")")[2].split()[0] in (b"Z", b"X")


def read_pid(path: Path) -> int | None:
    """The pid a job wrote to `path`, once it is completely written."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


class Workers:
    """Worker processes of one test; at teardown every process of its home is killed."""

    def __init__(self, home: Path, logs: Path) -> None:
        self.home = home
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A foreground `queuectl worker run`, output in a log file under tmp_path."""
        path = self.logs / f"worker-{len(self.procs)}.log"
        with path.open("wb") as log:
            proc = subprocess.Popen(
                [QUEUECTL, "worker", "run", *options],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        """What the foreground workers and the detached ones logged (for failure messages)."""
        paths = [*sorted(self.logs.glob("worker-*.log")), self.home / "logs" / "workers.log"]
        return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())

    def stop(self) -> None:
        """SIGTERM every foreground process; each must exit 0 (a graceful stop)."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            assert proc.wait(timeout=30) == 0, self.output()

    def detached_pids(self) -> list[int]:
        try:
            entries = json.loads((self.home / "pids.json").read_text())["workers"]
        except FileNotFoundError:
            return []
        return [int(entry["pid"]) for entry in entries]

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for pid in {*self.detached_pids(), *self._processes_of_home()}:
            if pid != os.getpid() and not pid_gone(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _processes_of_home(self) -> set[int]:
        """Processes (detached workers, orphaned jobs) started with this test's home (Linux)."""
        marker = f"QUEUECTL_HOME={self.home}".encode()
        found = set()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    with contextlib.suppress(OSError):
                        if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                            found.add(int(entry))
        return found
