"""Starting a job's process: glibc's posix_spawn gives what subprocess.Popen gave (its own
session, stdin from /dev/null, output in the log, no other descriptor, default signals,
the same errors), and the Popen fallback is held to the same checks. Real processes."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from queuectl import spawn as spawn_module
from queuectl.spawn import GLIBC, KEPT_MAX_CHARS, Environ, Glibc, spawn

LIBCS = [pytest.param(GLIBC, id="posix_spawn"), pytest.param(None, id="Popen")]
if GLIBC is None:
    LIBCS = LIBCS[1:]

PROBE = r"""
echo "sid $(cut -d' ' -f6 /proc/$$/stat) pid $$"
while IFS= read -r l; do case $l in SigBlk*|SigIgn*) echo "$l";; esac; done </proc/$$/status
(ls /proc/$$/fd) > fds; tr '\n' ' ' < fds; echo
read line; echo "stdin [$line] $?"
pwd
"""


@pytest.fixture
def log(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "job.log", os.O_RDWR | os.O_APPEND | os.O_CREAT)
    yield fd
    os.close(fd)


@pytest.fixture
def devnull() -> Iterator[int]:
    fd = os.open(os.devnull, os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("libc", LIBCS)
def test_a_job_runs_in_its_own_session_with_nothing_inherited_but_its_output(
    libc: Glibc | None, log: int, devnull: int, tmp_path: Path
) -> None:
    leaked = os.open(tmp_path, os.O_RDONLY)  # inheritable: only closing keeps it out
    os.set_inheritable(leaked, True)
    hangup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        proc = spawn(
            ["/bin/sh", "-c", PROBE], Environ(os.environ), str(tmp_path), devnull, log, libc=libc
        )
        assert proc.wait() == 0
    finally:
        signal.signal(signal.SIGHUP, hangup)
        os.close(leaked)
    out = (tmp_path / "job.log").read_text().splitlines()
    sid, pid = out[0].split()[1], out[0].split()[3]
    assert sid == pid  # a session (and process group) of its own
    # Read by the shell itself: while it waits for a child (grep), dash blocks every signal.
    # Its descriptors are listed by a child writing to a file, not into a pipe: the shell
    # holds a pipeline's pipe until it has started both ends, and saves a redirected
    # descriptor while the command runs: a subshell redirects its own.
    masks = dict(line.split(":\t") for line in out[1:3])  # SigBlk, then SigIgn
    ignored, blocked = int(masks["SigIgn"], 16), int(masks["SigBlk"], 16)
    # SIGPIPE and SIGXFSZ, which Python ignores, are back at their defaults. posix_spawn
    # also empties the mask and resets every other signal, glibc's own two and one the
    # worker inherited ignored included; Popen leaves those as the calling thread has them.
    for sig in (13, 25):
        assert not ignored & 1 << (sig - 1), (sig, masks)
    if libc is not None:
        assert ignored == 0, masks
        assert blocked == 0, masks
    else:
        assert ignored & 1 << (signal.SIGHUP - 1), masks
    assert out[3].split() == ["0", "1", "2"]
    assert out[4] == "stdin [] 1"  # /dev/null: at its end at once
    assert out[5] == str(tmp_path)


@pytest.mark.parametrize("libc", LIBCS)
def test_errors_name_the_directory_or_the_command_as_popen_does(
    libc: Glibc | None, log: int, devnull: int, tmp_path: Path
) -> None:
    env = Environ(os.environ)
    with pytest.raises(FileNotFoundError) as missing_dir:
        spawn(["true"], env, str(tmp_path / "gone"), devnull, log, libc=libc)
    assert missing_dir.value.filename == str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError) as missing_cmd:
        spawn(["no-such-command-here"], env, str(tmp_path), devnull, log, libc=libc)
    assert missing_cmd.value.filename == "no-such-command-here"
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        spawn(["./not-executable"], env, str(tmp_path), devnull, log, libc=libc)


@pytest.mark.parametrize("libc", LIBCS)
def test_commands_are_found_on_the_jobs_own_path_and_relative_to_its_directory(
    libc: Glibc | None, log: int, devnull: int, tmp_path: Path
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "only-in-the-jobs-path"
    tool.write_text("#!/bin/sh\necho found on PATH\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    env = Environ({**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert spawn([tool.name], env, None, devnull, log, libc=libc).wait() == 0
    assert spawn(["./bin/" + tool.name], env, str(tmp_path), devnull, log, libc=libc).wait() == 0
    assert (tmp_path / "job.log").read_text() == "found on PATH\n" * 2


@pytest.mark.parametrize("libc", LIBCS)
def test_an_environment_encoded_once_serves_each_start_with_its_own_values(
    libc: Glibc | None, log: int, devnull: int, tmp_path: Path
) -> None:
    # The job's own env over the worker's; the per-attempt names over both.
    fixed = {**os.environ, "SHARED": "worker", "JOB_OWN": "job", "QUEUECTL_JOB_ID": "from env"}
    env = Environ(fixed, ("QUEUECTL_JOB_ID", "QUEUECTL_ATTEMPT"))
    show = 'echo "$SHARED $JOB_OWN $QUEUECTL_JOB_ID $QUEUECTL_ATTEMPT"'
    for job_id, attempt in (("a", "1"), ("b", "2")):
        env.set((job_id, attempt))
        assert spawn(["/bin/sh", "-c", show], env, None, devnull, log, libc=libc).wait() == 0
    assert (tmp_path / "job.log").read_text().splitlines() == ["worker job a 1", "worker job b 2"]


@pytest.mark.parametrize("libc", LIBCS)
def test_each_start_gets_its_own_directory_and_output_when_they_change(
    libc: Glibc | None, devnull: int, tmp_path: Path
) -> None:
    # The descriptors and directories repeat, as a worker's do: each start still gets its own.
    logs = [tmp_path / "one.log", tmp_path / "two.log"]
    dirs = [tmp_path / "first", tmp_path / "second"]
    for d in dirs:
        d.mkdir()
    for _ in range(2):
        for log_path, cwd in zip(logs, dirs, strict=True):
            fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                proc = spawn(
                    ["/bin/sh", "-c", "pwd"], Environ(os.environ), str(cwd), devnull, fd, libc=libc
                )
                assert proc.wait() == 0
            finally:
                os.close(fd)
    assert logs[0].read_text() == f"{dirs[0]}\n" * 2
    assert logs[1].read_text() == f"{dirs[1]}\n" * 2


@pytest.mark.skipif(GLIBC is None, reason="posix_spawn through glibc only")
def test_a_long_command_is_run_but_not_kept_encoded(log: int, devnull: int) -> None:
    # A worker keeps the argv of short commands it runs often; a command can be ~2 MB, and
    # 64 of those kept would hold the worker's memory long after the jobs ended.
    spawn_module._argv.cache_clear()
    long_command = ["/bin/sh", "-c", "true", "x" * (KEPT_MAX_CHARS + 1)]
    assert spawn(long_command, Environ(os.environ), None, devnull, log).wait() == 0
    assert spawn_module._argv.cache_info().currsize == 0
    assert spawn(["/bin/sh", "-c", "true"], Environ(os.environ), None, devnull, log).wait() == 0
    assert spawn_module._argv.cache_info().currsize == 1
