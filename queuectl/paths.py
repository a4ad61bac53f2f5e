"""Where queuectl keeps its files: $QUEUECTL_HOME, else ~/.queuectl (created 0700)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import NotRegularFile, QueuectlError
from .models import ID_PATTERN, RUN_ID_PATTERN

_ID = re.compile(f"{ID_PATTERN}|{RUN_ID_PATTERN}")


def home_dir() -> Path:
    """The home directory, created with mode 0700 on first use."""
    raw = os.environ.get("QUEUECTL_HOME")
    home = Path(raw).expanduser() if raw else Path.home() / ".queuectl"
    if not home.is_dir():
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise QueuectlError(
                f"cannot create the queuectl home {str(home)!r} ({exc.strerror}): "
                "set QUEUECTL_HOME to a writable directory"
            ) from None
    return home


def default_db_url() -> str:
    return f"sqlite:///{(home_dir() / 'queue.db').absolute()}"


def logs_dir() -> Path:
    path = home_dir() / "logs"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def job_log_path(job_id: str, directory: Path | None = None) -> Path:
    """The log file of a job (in `directory`, default the home's logs/); ids that could
    escape the logs directory are refused."""
    if not _ID.fullmatch(job_id) or ".." in job_id:
        raise QueuectlError(f"{job_id!r} is not a valid job id: no log file can belong to it")
    return (directory or logs_dir()) / f"job-{job_id}.log"


def pids_path() -> Path:
    return home_dir() / "pids.json"


def open_regular(path: Path, flags: int, mode: int = 0o600) -> int:
    """A descriptor on the regular file at `path` (blocking, as usual), opened without
    following a symlink and without blocking: a FIFO planted there would hang the opener.

    :raises FileNotFoundError: nothing is there (or its directory is gone).
    :raises NotRegularFile: something else is there, or it could not be opened.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise NotRegularFile(str(path), _kind(path), exc.strerror) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(str(path), _kind(path) or "not a regular file", None)
    os.set_blocking(fd, True)
    return fd


def _kind(path: Path) -> str | None:
    """What stands at `path`, in words, when it is not a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
    )
    if stat.S_ISREG(mode):
        return None
    return next((word for test, word in kinds if test(mode)), "a socket or device")


def open_log(path: Path) -> BinaryIO | None:
    """A job's log file opened for reading, or None if there is none.

    :raises QueuectlError: something other than a regular file stands there.
    """
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except NotRegularFile as exc:
        if exc.strerror:
            raise QueuectlError(
                f"cannot open the log {str(path)!r} ({exc.strerror}): remove whatever stands "
                "there (a log is a regular file)"
            ) from None
        raise QueuectlError(
            f"the log {str(path)!r} is not a regular file: remove it (a log is a regular file)"
        ) from None
    return os.fdopen(fd, "rb")
