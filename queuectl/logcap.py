"""Keep a job's log under `log_max_bytes`: its beginning, its end, and a line saying what
was cut between them.

The job writes straight into its log file (an O_APPEND descriptor, no pipe through the
worker): ordinary jobs pay nothing, and a daemon the job leaves behind can go on writing.
While the job runs, the worker frees the middle of an oversized log in place with
fallocate(PUNCH_HOLE). The job keeps appending at the end, and no byte written after the
check is touched, so nothing is lost to a race; on disk the log holds about
log_max_bytes plus what the job writes between two checks (the checks come sooner the
faster it writes). When the attempt has ended, the log is rewritten once as head, cut
line, tail. Where holes cannot be punched (not Linux, or a filesystem without them),
the same rewrite runs during the job instead: bytes the job writes during the rewrite
itself may be lost, but the disk stays bounded all the same.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import BinaryIO, cast

from .models import format_time

CUT_WORDS = b" log cut: "  # in every cut line; `logs --follow` finds the line by it
MARKER_ROOM = 256  # bytes kept free for the cut line: the cap holds head + line + tail
MIN_LOG_MAX_BYTES = 4096
CHECK_MIN_S = 0.02  # a fast writer is checked 50 times a second at most
CHECK_MAX_S = 0.25  # a quiet one 4 times: a sudden burst runs unchecked this long at most
LINE_SEARCH = 4096  # cut at a line end found this close to the cut point, else mid-line

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


Fallocate = Callable[[int, int, int, int], int]


@functools.cache  # ctypes and libc at the first punch: most processes never punch a hole
def _load_fallocate() -> Fallocate | None:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):  # not glibc/musl: the rewrite serves instead
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return cast(Fallocate, fallocate)


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free [offset, offset + length) of the file, keeping its size; False where the
    platform or filesystem cannot."""
    fallocate = _load_fallocate()
    if fallocate is None:
        return False
    if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    import ctypes

    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


class CappedLog:
    """One attempt's view of the job's log descriptor, holding it to `max_bytes`."""

    def __init__(
        self, fd: int, max_bytes: int, clock: Callable[[], datetime], *, can_punch: bool = True
    ) -> None:
        self.fd = fd
        self.clock = clock
        self.max_bytes = max_bytes
        self.head_max = (max_bytes - MARKER_ROOM) // 2
        self.tail_max = max_bytes - MARKER_ROOM - self.head_max
        self.can_punch = can_punch
        self.head_len: int | None = None  # fixed by the first rewrite: later ones keep it
        self.freed_to = self.head_max  # the middle is free (or cut) up to here
        self.cut_bytes = 0  # cut by rewrites during the attempt
        self._last = (time.monotonic(), self._size())
        self._delay_s = CHECK_MIN_S

    def check(self) -> float:
        """Free the middle of an oversized log now; seconds until the next check is due."""
        if not self.max_bytes:
            return math.inf
        now = time.monotonic()
        size = self._size()
        if size > self.max_bytes:
            with contextlib.suppress(OSError):  # the final rewrite tries again
                if self.can_punch:
                    self._punch_middle(size)
                if not self.can_punch:
                    self.rewrite()
            size = self._size()
        written = size + self.cut_bytes  # everything the job wrote, cut or kept
        then, before = self._last
        self._last = (now, written)
        # Look again when, at the rate seen, about one more cap's worth is written, but at
        # most twice as late as last time: a rate measured over a moment is a poor guess.
        rate = max(written - before, 0) / max(now - then, 1e-3)
        fits = self.max_bytes / rate if rate else CHECK_MAX_S
        self._delay_s = min(max(fits, CHECK_MIN_S), 2 * self._delay_s, CHECK_MAX_S)
        return self._delay_s

    def _punch_middle(self, size: int) -> None:
        block = os.fstat(self.fd).st_blksize or 4096
        start = -(-self.freed_to // block) * block  # whole blocks only: nothing kept is zeroed
        end = (size - self.tail_max) // block * block
        if end - start < block:
            return
        if punch_hole(self.fd, start, end - start):
            self.freed_to = end
        else:
            self.can_punch = False

    def rewrite(self) -> int:
        """Rewrite an oversized log as head, cut line, tail; the bytes cut (0: it fit)."""
        size = self._size()
        if not self.max_bytes or size <= self.max_bytes:
            return 0
        if self.head_len is None:
            self.head_len = self._head_end()
        tail_from = self._tail_start(size)
        tail = os.pread(self.fd, size - tail_from, tail_from)
        cut = tail_from - self.head_len
        line = (
            f"=== {format_time(self.clock())}{CUT_WORDS.decode()}"
            f"{cut} bytes of output from the middle (log_max_bytes is {self.max_bytes})\n"
        ).encode()
        if self.head_len and os.pread(self.fd, 1, self.head_len - 1) != b"\n":
            line = b"\n" + line
        os.ftruncate(self.fd, self.head_len)
        os.write(self.fd, line[:MARKER_ROOM] + tail)  # O_APPEND: right after the head
        self.freed_to = self.head_max
        self.cut_bytes += cut
        return cut

    def _head_end(self) -> int:
        """Where the kept beginning ends: just after a line end near head_max."""
        low = max(0, self.head_max - LINE_SEARCH)
        newline = os.pread(self.fd, self.head_max - low, low).rfind(b"\n")
        return low + newline + 1 if newline >= 0 else self.head_max

    def _tail_start(self, size: int) -> int:
        """Where the kept end starts: just after a line end near size - tail_max."""
        start = size - self.tail_max
        newline = os.pread(self.fd, LINE_SEARCH, start).find(b"\n")
        return start + newline + 1 if 0 <= newline < size - start - 1 else start

    def _size(self) -> int:
        return os.fstat(self.fd).st_size


def read_chunks(f: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """The file's bytes from where it stands to its end, skipping the middle of a running
    job's oversized log (freed, so it would read as NULs) with one line saying so."""
    fd = f.fileno()
    holes = hasattr(os, "SEEK_DATA")
    while True:
        pos, size = f.tell(), chunk_bytes
        if holes:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
                size = min(size, os.lseek(fd, data_at, os.SEEK_HOLE) - data_at)
            except OSError:  # ENXIO: nothing but the end past pos
                data_at = pos
            f.seek(data_at)
            if data_at > pos:
                yield (
                    f"\n=== {CUT_WORDS.decode().strip()} {data_at - pos} bytes skipped "
                    "(the job is running; log_max_bytes keeps its beginning and end)\n"
                ).encode()
        chunk = f.read(size or chunk_bytes)
        if not chunk:
            return
        yield chunk


def resume_after_rewrite(f: BinaryIO) -> None:
    """A reader whose position is past the end of a log that was rewritten under it goes
    on from the cut line, so it misses neither the line nor the job's last output."""
    with contextlib.suppress(OSError):
        if os.fstat(f.fileno()).st_size >= f.tell():
            return
        f.seek(0)
        data = f.read()
        at = data.rfind(CUT_WORDS)
        f.seek(data.rfind(b"\n", 0, at) + 1 if at >= 0 else len(data))
