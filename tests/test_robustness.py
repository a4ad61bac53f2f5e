"""Inputs and surroundings that used to crash later or mislead (issue 14, items 4 and 5).

Each test drives the installed `queuectl` in a subprocess, as a user would, and
checks for one clear line on stderr and the right exit code: never a traceback,
never a hang, never a half-written job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import QUEUECTL, Run, wait_for

pytestmark = pytest.mark.e2e

SURROGATE_JSON = '{"command": "true",\n "cwd": "/tmp/\\ud800"}'


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- 4a: lone surrogates are refused at validation, with a position ------------------


def test_validate_names_the_position_of_a_lone_surrogate(run: Run, tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(SURROGATE_JSON)
    result = run("validate", str(spec))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        f"{spec}:2:9: cwd: is not valid Unicode text (a lone surrogate such as \\ud800, or "
        "bytes that are not UTF-8): write the character itself, or a complete surrogate pair"
    )


@pytest.mark.both_backends
def test_enqueue_refuses_a_lone_surrogate_and_writes_nothing(run: Run, run_json: Any) -> None:
    result = run("enqueue", SURROGATE_JSON)
    assert result.returncode == 1
    assert one_error_line(result.stderr).startswith("Error: <argument>:2:9: cwd: is not valid")
    piped = run("enqueue", "-", input='[{"command": "true", "env": {"A": "\\udfff"}}]')
    assert piped.returncode == 1
    assert "env.A: is not valid Unicode text" in one_error_line(piped.stderr)
    assert run_json("list") == []  # and list still works: nothing undecodable was stored


def test_enqueue_refuses_argv_bytes_that_are_not_utf8(run: Run, run_json: Any) -> None:
    raw = subprocess.run(
        [QUEUECTL, "enqueue", b"echo \xff", "--env", b"A=\xfe"],
        capture_output=True,
        timeout=60,
        env=os.environ,
    )
    assert raw.returncode == 1
    line = one_error_line(raw.stderr.decode())
    assert "<argument>: command: is not valid Unicode text" in line
    assert run_json("list") == []


# -- 4b: numbers too big for the store are usage errors --------------------------------


@pytest.mark.parametrize("command", [["list"], ["dlq", "list"]])
def test_a_huge_limit_is_a_usage_error(run: Run, command: list[str]) -> None:
    result = run(*command, "--limit", "99999999999999999999999")
    assert result.returncode == 2
    assert "is not in the range 1<=x<=2147483647" in one_error_line(result.stderr)


# -- 4c: an unexpected OSError names the operation, the file and the errno -------------


def test_an_os_error_names_its_operation_not_the_disk(run: Run, home: Path) -> None:
    home.mkdir(parents=True)
    (home / "logs").write_text("a file where the logs directory belongs\n")
    result = run("worker", "start")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert line == (
        f"Error: File exists (EEXIST) on {str(home / 'logs')!r} in paths.logs_dir: check that "
        "path and its permissions, or report it as a bug"
    )


def test_output_that_cannot_be_written_says_so(home: Path) -> None:
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [QUEUECTL, "list"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert result.returncode == 1
    assert one_error_line(result.stderr) == (
        "Error: cannot write the output: No space left on device (ENOSPC)"
    )


# -- 5c/5d: `logs` refuses what is not a regular file, and streams big logs ---------------


@pytest.mark.parametrize("follow", [False, True], ids=["logs", "logs --follow"])
def test_logs_refuses_a_fifo_instead_of_hanging(run: Run, home: Path, follow: bool) -> None:
    assert run("enqueue", "true", "--id", "piped").returncode == 0
    (home / "logs").mkdir(mode=0o700)
    fifo = home / "logs" / "job-piped.log"
    os.mkfifo(fifo)
    result = run("logs", "piped", *(["--follow"] if follow else []), timeout=30)
    assert result.returncode == 1
    stderr = result.stderr
    if follow:  # no worker runs: --follow says so first
        warning, _, stderr = stderr.partition("\n")
        assert warning.startswith("warning: job piped waits on queue 'default'")
    assert one_error_line(stderr) == (
        f"Error: the log {str(fifo)!r} is not a regular file: remove it (a log is a regular file)"
    )


def test_logs_does_not_follow_a_symlink(run: Run, home: Path, tmp_path: Path) -> None:
    assert run("enqueue", "true", "--id", "linked").returncode == 0
    secret = tmp_path / "secret"
    secret.write_text("not the job's output\n")
    (home / "logs").mkdir(mode=0o700)
    (home / "logs" / "job-linked.log").symlink_to(secret)
    result = run("logs", "linked")
    assert result.returncode == 1
    assert "not the job's output" not in result.stdout
    assert one_error_line(result.stderr).startswith("Error: cannot open the log")


def test_logs_streams_a_big_log_in_flat_memory(run: Run, home: Path) -> None:
    assert run("enqueue", "true", "--id", "chatty").returncode == 0
    (home / "logs").mkdir(mode=0o700)
    size = 150 * 1024 * 1024
    log = home / "logs" / "job-chatty.log"
    with open(log, "wb") as f:
        f.write(b"first line\n")
        f.truncate(size)  # sparse: quick to make, as long to read as a written one
    # A parent of its own, so the peak memory measured is that of `queuectl logs` alone.
    measure = (
        "import resource, subprocess, sys\n"
        "out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE).stdout\n"
        "print(len(out), resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", measure, QUEUECTL, "logs", "chatty"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed, peak_kib = map(int, result.stdout.split())
    assert printed == size
    assert peak_kib < 100 * 1024, f"`logs` peaked at {peak_kib} KiB for a {size} byte log"


# -- 5e: a worker notices that its database file was replaced ----------------------------


def test_a_replaced_database_file_is_noticed_and_the_new_one_served(
    run: Run, run_json: Any, home: Path, tmp_path: Path
) -> None:
    assert run("status").returncode == 0
    supervisor = subprocess.Popen(
        [QUEUECTL, "worker", "run", "--count", "2"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(run_json("status")["workers"]) == 2, what="two workers")
        other = tmp_path / "other-home"
        assert run("status", env={"QUEUECTL_HOME": str(other)}).returncode == 0
        os.replace(other / "queue.db", home / "queue.db")
        for leftover in ("queue.db-wal", "queue.db-shm"):
            (home / leftover).unlink(missing_ok=True)
        job_id = run("enqueue", "true").stdout.strip()
        wait_for(
            lambda: run_json("show", job_id)["state"] == "completed",
            what="the job in the new file to run",
        )
        wait_for(lambda: len(run_json("status")["workers"]) == 2, what="workers on the new file")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=60)
    assert "the database file was replaced or removed while this process had it open" in stderr


def test_worker_run_refuses_an_unsafe_spool_before_starting_anything(
    run: Run, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    spool.chmod(0o770)
    result = run("worker", "run", "--count", "2", "--spool", str(spool), timeout=30)
    assert result.returncode == 1
    assert one_error_line(result.stderr) == (
        f"Error: spool directory {str(spool)!r} is group-writable, so its group could tamper "
        f"with the spool: run `chmod g-w,o-w {spool}`"
    )


@pytest.mark.parametrize(
    "command",
    [["show"], ["logs"], ["cancel"], ["dlq", "retry"], ["wait"], ["list", "--queue"]],
    ids=lambda c: " ".join(c),
)
def test_names_that_are_not_utf8_are_usage_errors(home: Path, command: list[str]) -> None:
    raw = subprocess.run(
        [QUEUECTL, *command, b"ab\xff"], capture_output=True, timeout=60, env=os.environ
    )
    assert raw.returncode == 2
    line = one_error_line(raw.stderr.decode())
    assert "'ab\\xff' is not valid UTF-8 text" in line


def test_a_pid_no_process_can_have_in_pids_json_is_dropped(run: Run, home: Path) -> None:
    assert run("status").returncode == 0
    (home / "pids.json").write_text('{"workers": [{"pid": 99999999999}, {"pid": true}]}')
    result = run("worker", "stop")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.strip() == "stopped 0 worker(s)"
    assert "dropped the entry of pid 99999999999," in result.stderr
    assert "dropped the entry of pid true," in result.stderr


def test_a_spool_watcher_whose_database_file_was_replaced_exits(
    run: Run, home: Path, tmp_path: Path
) -> None:
    assert run("status").returncode == 0
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    watcher = subprocess.Popen(
        [QUEUECTL, "spool", "watch", str(spool)], stderr=subprocess.PIPE, text=True
    )
    try:
        assert watcher.stderr is not None
        wait_for(lambda: "watching" in watcher.stderr.readline(), what="the watcher to start")
        other = tmp_path / "other-home"
        assert run("status", env={"QUEUECTL_HOME": str(other)}).returncode == 0
        os.replace(other / "queue.db", home / "queue.db")
        (spool / "job.yaml").write_text("command: 'true'\n")
        assert watcher.wait(timeout=30) == 1  # a supervisor restarts it on the new file
        rest = watcher.stderr.read()
    finally:
        watcher.kill()
        watcher.communicate()
    assert "the database file was replaced or removed" in rest
