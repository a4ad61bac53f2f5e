"""log_max_bytes (SPEC 14): a job's log keeps its beginning and end under the cap, with a
line saying what was cut; a runaway writer holds a bounded amount of disk while it runs.
Real files and real writer processes throughout."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from queuectl.config import Config
from queuectl.errors import ConfigInvalid
from queuectl.logcap import MARKER_ROOM, CappedLog, read_chunks, resume_after_rewrite

from .conftest import Run

CAP = 64 * 1024
CUT_LINE = re.compile(
    rb"=== \S+ log cut: (\d+) bytes of output from the middle \(log_max_bytes is (\d+)\)\n"
)


def now() -> datetime:
    return datetime(2026, 11, 30, 12, tzinfo=UTC)


@pytest.fixture
def log_fd(tmp_path: Path) -> Iterator[int]:
    """A job's log as the worker opens it: read-write, appending."""
    fd = os.open(tmp_path / "job.log", os.O_RDWR | os.O_APPEND | os.O_CREAT)
    yield fd
    os.close(fd)


def lines(first: int, count: int) -> bytes:
    return b"".join(b"line %07d\n" % n for n in range(first, first + count))


def content(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size + 1, 0)


def test_a_log_under_the_cap_is_left_exactly_as_written(log_fd: int) -> None:
    os.write(log_fd, lines(0, 100))
    cap = CappedLog(log_fd, CAP, now)
    assert cap.check() > 0
    assert cap.rewrite() == 0
    assert content(log_fd) == lines(0, 100)


def test_an_oversized_log_keeps_whole_lines_from_its_beginning_and_end(log_fd: int) -> None:
    written = lines(0, 100_000)  # 1.3 MB of 13-byte lines into a 64 KiB cap
    os.write(log_fd, written)
    cap = CappedLog(log_fd, CAP, now)
    cut = cap.rewrite()

    kept = content(log_fd)
    assert len(kept) <= CAP
    match = CUT_LINE.search(kept)
    assert match is not None and int(match[2]) == CAP
    head, tail = kept[: match.start()], kept[match.end() :]
    assert int(match[1]) == cut == len(written) - len(head) - len(tail)
    assert written.startswith(head) and written.endswith(tail)
    assert head.endswith(b"\n") and tail.startswith(b"line ")  # cut between lines
    assert len(head) > CAP // 2 - MARKER_ROOM - 4096 and len(tail) > CAP // 2 - MARKER_ROOM - 4096


def test_output_without_line_ends_is_cut_mid_line_and_the_cut_line_starts_a_line(
    log_fd: int,
) -> None:
    os.write(log_fd, b"x" * (3 * CAP))
    CappedLog(log_fd, CAP, now).rewrite()
    kept = content(log_fd)
    assert len(kept) <= CAP
    assert re.fullmatch(rb"x+\n=== \S+ log cut: \d+ bytes .*\)\nx+", kept, re.DOTALL)


def test_a_log_of_exactly_the_cap_is_not_cut(log_fd: int) -> None:
    os.write(log_fd, b"y" * CAP)
    assert CappedLog(log_fd, CAP, now).rewrite() == 0
    assert os.fstat(log_fd).st_size == CAP


def test_no_cap_leaves_any_size_alone(log_fd: int) -> None:
    os.write(log_fd, b"z" * (4 * CAP))
    cap = CappedLog(log_fd, 0, now)
    assert cap.check() == float("inf") and cap.rewrite() == 0
    assert os.fstat(log_fd).st_size == 4 * CAP


def run_writer(log_fd: int, cap: CappedLog, total: int) -> int:
    """A real process appending `total` bytes of numbered lines to the log while the
    worker's loop checks it; the largest allocation seen on disk."""
    last = total // 13 - 1
    writer = subprocess.Popen(["seq", "-f", "line %07.0f", "0", str(last)], stdout=log_fd)
    peak = 0
    while writer.poll() is None:
        peak = max(peak, os.fstat(log_fd).st_blocks * 512)
        cap.check()
        peak = max(peak, os.fstat(log_fd).st_blocks * 512)
    assert writer.wait() == 0
    return peak


@pytest.mark.parametrize("can_punch", [True, False], ids=["punching holes", "rewriting"])
def test_the_middle_is_freed_while_the_job_writes_and_the_end_kept_exactly(
    log_fd: int, can_punch: bool, tmp_path: Path
) -> None:
    os.write(log_fd, b"=== header\n")
    cap = CappedLog(log_fd, CAP, now, can_punch=can_punch)
    total = 20_000_000
    peak = run_writer(log_fd, cap, total)
    # Checked back to back here: on disk, the log held a small part of what was written.
    assert peak < total / 8, peak
    if can_punch:
        assert os.fstat(log_fd).st_size > total  # freed in place: the size stays, blocks go
        with open(tmp_path / "job.log", "rb") as reader:
            chunks = list(read_chunks(reader, 1 << 16))
        skipped = [c for c in chunks if c.startswith(b"\n=== log cut: ")]
        assert len(skipped) == 1 and b"\0" not in b"".join(chunks)
    cap.rewrite()
    kept = content(log_fd)
    assert len(kept) <= CAP and kept.startswith(b"=== header\nline 0000000\n")
    if can_punch:  # nothing the job wrote after a check was lost (a rewrite may lose some)
        assert kept.endswith(b"line %07d\n" % (total // 13 - 1))
        tail = kept[CUT_LINE.search(kept).end() :]  # type: ignore[union-attr]
        first = int(tail[5:12])
        assert tail == lines(first, total // 13 - first)


def test_a_follower_past_the_end_of_a_rewritten_log_goes_on_from_the_cut_line(
    log_fd: int, tmp_path: Path
) -> None:
    os.write(log_fd, lines(0, 20_000))
    with open(tmp_path / "job.log", "rb") as follower:
        follower.seek(0, os.SEEK_END)  # it had read everything so far
        os.write(log_fd, b"=== exit code 0\n")
        CappedLog(log_fd, CAP, now).rewrite()
        resume_after_rewrite(follower)
        rest = b"".join(read_chunks(follower, 4096))
    assert rest.startswith(b"=== 2026-11-30T12:00:00.000Z log cut: ")
    assert rest.endswith(b"line 0019999\n=== exit code 0\n")


@pytest.mark.parametrize(
    ("text", "value"), [("1MiB", 1 << 20), ("1m", 1 << 20), ("65536", 65536), ("0", 0)]
)
def test_log_max_bytes_takes_sizes(text: str, value: int) -> None:
    assert Config.resolve({"log_max_bytes": text}, {}).log_max_bytes == value


@pytest.mark.parametrize("text", ["100", "1.5MiB", "2TiB", "-1", "ten"])
def test_log_max_bytes_refuses_what_is_not_a_usable_size(text: str) -> None:
    with pytest.raises(ConfigInvalid, match="log_max_bytes"):
        Config.resolve({}, {"QUEUECTL_LOG_MAX_BYTES": text})


@pytest.mark.e2e
def test_a_job_writing_200_mb_into_a_1_mib_cap_ends_with_a_1_mib_log(run: Run, home: Path) -> None:
    assert run("config", "set", "log_max_bytes", "1MiB").returncode == 0
    command = "yes output-line | head -c 200000000; echo; echo last-line"
    assert run("enqueue", "--id", "big", "--max-retries", "0", command).returncode == 0
    assert run("worker", "run", "--drain").returncode == 0

    log = (home / "logs" / "job-big.log").read_bytes()
    assert len(log) <= 1 << 20
    assert re.match(rb"=== \S+ attempt 1 worker \S+\noutput-line\n", log)
    match = CUT_LINE.search(log)
    assert match is not None and int(match[1]) > 198_000_000
    assert re.search(rb"\nlast-line\n=== \S+ exit code 0\n$", log)
    shown = run("logs", "big")
    assert shown.stdout.encode() == log
    assert run("show", "big").stdout.count("last-line") == 1  # the stored tail is the end


@pytest.mark.e2e
def test_a_job_writing_without_end_holds_a_bounded_amount_of_disk(run: Run, home: Path) -> None:
    assert run("config", "set", "log_max_bytes", "1MiB").returncode == 0
    assert (
        run(
            "enqueue",
            "--id",
            "endless",
            "--max-retries",
            "0",
            "--timeout-ms",
            "1000",
            "yes endless-output-line",
        ).returncode
        == 0
    )
    path = home / "logs" / "job-endless.log"
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, path.stat().st_blocks * 512)
            done.wait(0.002)  # a sampling interval, not a synchronisation

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert run("worker", "run", "--drain").returncode == 0
    finally:
        done.set()
        watcher.join()
    log = path.read_bytes()
    assert len(log) <= 1 << 20 and b"timed out after 1000 ms" in log
    match = CUT_LINE.search(log)
    assert match is not None
    written = int(match[1])
    # However fast the job wrote, the disk held a small fraction of it at any moment.
    assert peak < written / 4, (peak, written)
