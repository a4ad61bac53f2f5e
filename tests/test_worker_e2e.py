"""End to end: the installed `queuectl` in real processes (workers, signals, crashes, leases).

Every test has its own QUEUECTL_HOME. Jobs leave evidence in files under
tmp_path (markers, timestamps, pids) and the tests poll for conditions with a
deadline; no sleep stands in for synchronisation. Worker processes, detached
workers and orphaned jobs are killed at teardown, pass or fail.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import QUEUECTL, Run, wait_for
from .processes import Workers, pid_gone, q, read_pid

pytestmark = [pytest.mark.e2e, pytest.mark.both_backends, pytest.mark.usefixtures("fast_polling")]

NOT_FOUND = "command not found (exit 127)"
STAMP = f'{shlex.quote(sys.executable)} -c "import time; print(repr(time.time()))"'


def instant(text: str) -> float:
    """An RFC 3339 time as shown by `show`, in seconds since the epoch."""
    return datetime.fromisoformat(text).timestamp()


def lasts(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Fail unless `condition` holds at every check for `seconds` seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert condition(), what
        time.sleep(0.02)


@pytest.fixture
def enqueue(run: Run) -> Callable[..., str]:
    """Enqueue one job; return its id."""

    def enqueue_job(job_spec: str, *options: str) -> str:
        result = run("enqueue", job_spec, *options)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    return enqueue_job


@pytest.fixture
def show(run_json: Callable[..., Any]) -> Callable[[str], dict[str, Any]]:
    return lambda job_id: run_json("show", job_id)  # type: ignore[no-any-return]


@pytest.fixture
def drain(run: Run) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`worker run --drain` in the foreground; it must exit 0."""

    def drain_queue(
        *options: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = run("worker", "run", "--drain", *options, env=env)
        assert result.returncode == 0, result.stderr
        return result

    return drain_queue


def state_is(show: Callable[[str], dict[str, Any]], job_id: str, *states: str) -> Any:
    """For wait_for: the job once it is in one of `states`, else None."""
    job = show(job_id)
    return job if job["state"] in states else None


# -- running jobs ---------------------------------------------------------------------


def test_success_path_records_the_job_and_its_output(
    home: Path, run: Run, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    job_id = enqueue("echo hello; echo oops >&2")

    drain()

    job = show(job_id)
    assert (job["state"], job["attempts"], job["exit_code"], job["last_error"]) == (
        "completed",
        0,
        0,
        None,
    )
    logs = run("logs", job_id)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    assert "hello" in lines
    assert "oops" in lines
    assert any(line.startswith("===") and " attempt 1 " in line for line in lines), lines
    assert (home / "logs" / f"job-{job_id}.log").read_text() == logs.stdout


def test_failing_job_without_retries_is_dead_after_one_run(
    tmp_path: Path, run_json: Any, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    runs = tmp_path / "runs"
    job_id = enqueue(f"echo run >> {q(runs)}; exit 3", "--max-retries", "0")

    drain()

    job = show(job_id)
    assert (job["state"], job["attempts"], job["exit_code"], job["last_error"]) == (
        "dead",
        1,
        3,
        "exit code 3",
    )
    assert runs.read_text().splitlines() == ["run"]
    assert run_json("status")["counts"]["dead"] == 1


def test_retries_wait_backoff_base_to_the_power_of_attempts(
    tmp_path: Path, run: Run, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    base = 1.5  # waits of 1.5 s and 2.25 s (base 2 waited 6 s, and 2 * n also gives 2, 4)
    assert run("config", "set", "backoff_base", str(base)).returncode == 0
    stamps = tmp_path / "stamps"
    job_id = enqueue(f"{STAMP} >> {q(stamps)}; exit 1", "--max-retries", "2")

    drain()

    job = show(job_id)
    assert (job["state"], job["attempts"], job["last_error"]) == ("dead", 3, "exit code 1")
    times = [float(line) for line in stamps.read_text().split()]
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Retry n waits base ** n: less than base ** (n + 1) (2.25 s, then 3.375 s), and the
    # second less than base * 2 (3 s), a wait growing linearly.
    for attempts, gap in enumerate(gaps, start=1):
        assert base**attempts - 0.1 <= gap < base ** (attempts + 1), times
    assert gaps[1] < base * 2, times


@pytest.mark.parametrize(
    "command",
    [
        "no-such-command-queuectl-e2e --flag",
        json.dumps(["no-such-binary-queuectl-e2e", "--flag"]),
        json.dumps(["/nonexistent/queuectl-e2e"]),
    ],
    ids=["shell", "argv", "argv-path"],
)
def test_command_not_found_is_exit_127(
    command: str, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    job_id = enqueue(command, "--max-retries", "0")

    drain()

    job = show(job_id)
    assert (job["state"], job["exit_code"], job["last_error"]) == ("dead", 127, NOT_FOUND)


def test_dlq_retry_runs_a_dead_job_again(
    tmp_path: Path, run: Run, run_json: Any, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    runs, marker = tmp_path / "runs", tmp_path / "marker"
    job_id = enqueue(
        f"echo run >> {q(runs)}; [ -e {q(marker)} ] && exit 0; touch {q(marker)}; exit 1",
        "--max-retries",
        "0",
    )
    drain()
    assert show(job_id)["state"] == "dead"

    result = run("dlq", "retry", job_id)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "retried 1 job(s)"
    job = show(job_id)
    assert (job["state"], job["attempts"], job["max_retries"], job["last_error"]) == (
        "pending",
        0,
        0,
        None,
    )
    drain()
    job = show(job_id)
    assert (job["state"], job["attempts"], job["exit_code"]) == ("completed", 0, 0)
    assert runs.read_text().splitlines() == ["run", "run"]
    assert run_json("dlq", "list") == []


def test_jobs_run_by_priority_then_in_creation_order(
    tmp_path: Path, enqueue: Callable[..., str], drain: Any
) -> None:
    order = tmp_path / "order"
    # Ids sort against creation order, so FIFO must come from created_at, not from the id.
    for name, priority in [("z1", 0), ("y2", 5), ("x3", 0), ("w4", 5), ("v5", 10), ("u6", 0)]:
        enqueue(f"echo {name} >> {q(order)}", "--id", name, "--priority", str(priority))

    drain()

    assert order.read_text().split() == ["v5", "y2", "w4", "z1", "x3", "u6"]


def test_jobs_wait_for_their_start_time(
    tmp_path: Path,
    run_json: Any,
    enqueue: Callable[..., str],
    show: Any,
    drain: Any,
    workers: Workers,
) -> None:
    # An hour ahead: however slow this machine is, the drain comes long before it.
    future = enqueue(f"{STAMP} > {q(tmp_path / 'future')}", "--delay", "1h")
    drain()  # future pending jobs do not hold a drain: it exits without running them
    job = show(future)
    assert (job["state"], job["started_at"]) == ("pending", None)
    assert not (tmp_path / "future").exists()

    later = enqueue(f"{STAMP} > {q(tmp_path / 'later')}", "--delay", "3s")
    sooner = enqueue(f"{STAMP} > {q(tmp_path / 'sooner')}", "--delay", "2s")
    workers.start()
    for job_id, name in ((sooner, "sooner"), (later, "later")):
        job = wait_for(
            lambda job_id=job_id: state_is(show, job_id, "completed", "failed", "dead"),
            timeout=15,
            what=f"{name} to finish",
        )
        assert job["state"] == "completed"
        ran_at = float((tmp_path / name).read_text())
        assert instant(job["started_at"]) >= instant(job["available_at"]), job
        assert ran_at >= instant(job["available_at"]), (ran_at, job)


def test_four_workers_run_each_of_200_jobs_exactly_once(
    tmp_path: Path, run: Run, run_json: Any, drain: Any
) -> None:
    ids_file = tmp_path / "ids"
    specs = [{"command": f'echo "$QUEUECTL_JOB_ID" >> {q(ids_file)}'} for _ in range(200)]
    result = run("enqueue", "-", input=json.dumps(specs))
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(set(ids)) == 200

    drain("--count", "4")

    assert Counter(ids_file.read_text().split()) == Counter(ids)
    counts = run_json("status")["counts"]
    assert counts == {**dict.fromkeys(counts, 0), "completed": 200}


def test_timeout_kills_the_jobs_grandchildren(
    tmp_path: Path, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    job_spec = {
        "command": ["sh", "-c", f"sleep 30 & echo $! > {q(pidfile)}; sleep 30"],
        "timeout_ms": 500,
        "max_retries": 0,
    }
    job_id = enqueue(json.dumps(job_spec))

    began = time.monotonic()
    drain()

    assert time.monotonic() - began < 10, "the timed-out job must not run its 30 s"
    job = show(job_id)
    assert (job["state"], job["last_error"]) == ("dead", "timed out after 500 ms")
    grandchild = read_pid(pidfile)
    assert grandchild is not None
    wait_for(lambda: pid_gone(grandchild), timeout=10, what=f"grandchild {grandchild} to die")


# -- detached workers and signals -----------------------------------------------------


def test_detached_workers_start_work_and_stop(
    tmp_path: Path,
    run: Run,
    run_json: Any,
    enqueue: Callable[..., str],
    show: Any,
    workers: Workers,
) -> None:
    began = time.monotonic()
    result = run("worker", "start", "--count", "2")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - began < 5, "worker start must return at once"
    pids = workers.detached_pids()
    assert len(pids) == 2
    live = wait_for(
        lambda: len(ws := run_json("status")["workers"]) == 2 and ws,
        timeout=15,
        what="2 live workers",
    )
    assert {w["pid"] for w in live} == set(pids)

    done = tmp_path / "done"
    job_ids = [enqueue(f"echo {n} >> {q(done)}") for n in range(4)]
    for job_id in job_ids:
        wait_for(lambda job_id=job_id: state_is(show, job_id, "completed"), timeout=15)

    result = run("worker", "stop", "--timeout", "30")

    assert result.returncode == 0, result.stderr + workers.output()
    assert result.stdout.strip() == "stopped 2 worker(s)"
    assert all(pid_gone(pid) for pid in pids)
    assert run_json("status")["workers"] == []
    assert workers.detached_pids() == []
    assert sorted(done.read_text().split()) == ["0", "1", "2", "3"]


def test_stop_waits_for_the_running_job(
    tmp_path: Path, run: Run, enqueue: Callable[..., str], show: Any, workers: Workers
) -> None:
    started, release, finished = (tmp_path / name for name in ("started", "release", "finished"))
    # The first job runs until the test releases it: the stop lands while it runs, however
    # long `worker stop` takes to start on a loaded machine.
    hold = f"while [ ! -e {q(release)} ]; do sleep 0.02; done"
    first = enqueue(f"touch {q(started)}; {hold}; touch {q(finished)}", "--priority", "1")
    second = enqueue(f"touch {q(tmp_path / 'second')}")
    assert run("worker", "start", "--count", "1").returncode == 0
    wait_for(started.exists, timeout=15, what="the first job to start")
    assert show(first)["state"] == "processing"

    stop = subprocess.Popen(
        [QUEUECTL, "worker", "stop", "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: "stopping: job" in workers.output(), what="the worker to take the stop")
    release.touch()
    out, err = stop.communicate(timeout=60)

    assert stop.returncode == 0, err + workers.output()
    assert out.strip() == "stopped 1 worker(s)"
    assert finished.exists()
    job = show(first)
    assert (job["state"], job["exit_code"]) == ("completed", 0)
    assert show(second)["state"] == "pending"
    assert not (tmp_path / "second").exists()


@pytest.mark.parametrize(
    "signals",
    [
        [signal.SIGTERM],
        [signal.SIGTERM, signal.SIGTERM],
        [signal.SIGINT, signal.SIGINT, signal.SIGINT],  # Ctrl-C repeated within a second
    ],
    ids=["sigterm", "sigterm-twice", "sigint-repeated-quickly"],
)
def test_stop_signal_lets_the_running_job_finish(
    signals: list[signal.Signals],
    tmp_path: Path,
    run_json: Any,
    enqueue: Callable[..., str],
    show: Any,
    workers: Workers,
) -> None:
    pidfile, release, finished = (tmp_path / name for name in ("job.pid", "release", "finished"))
    # The first job runs until the test releases it, after the last signal has had its say.
    hold = f"while [ ! -e {q(release)} ]; do sleep 0.02; done"
    first = enqueue(f"echo $$ > {q(pidfile)}; {hold}; touch {q(finished)}", "--priority", "1")
    second = enqueue(f"touch {q(tmp_path / 'second')}")
    worker = workers.start()
    job_pid = wait_for(lambda: read_pid(pidfile), timeout=15, what="the first job to start")

    for n, signum in enumerate(signals):
        if n:  # 0.2 s apart: signals sent back to back would merge into one in the kernel
            lasts(
                lambda: worker.poll() is None and not pid_gone(job_pid),
                0.2,
                "the job must run on after a stop signal",
            )
        worker.send_signal(signum)
    wait_for(lambda: "stopping: job" in workers.output(), what="the worker to take the stop")
    lasts(
        lambda: worker.poll() is None and not pid_gone(job_pid),
        0.2,
        "the job must run on after the last stop signal",
    )
    release.touch()

    assert worker.wait(timeout=20) == 0, workers.output()
    assert finished.exists()
    job = show(first)
    assert (job["state"], job["exit_code"]) == ("completed", 0)
    assert show(second)["state"] == "pending"  # a stopping worker claims nothing new
    assert run_json("status")["counts"]["processing"] == 0


def second_sigint(worker: subprocess.Popen[bytes], job_pid: int) -> None:
    worker.send_signal(signal.SIGINT)
    lasts(
        lambda: worker.poll() is None and not pid_gone(job_pid),
        1.2,
        "the first Ctrl-C must let the job run on",
    )
    worker.send_signal(signal.SIGINT)


def sigquit(worker: subprocess.Popen[bytes], job_pid: int) -> None:
    worker.send_signal(signal.SIGQUIT)


@pytest.mark.parametrize(
    ("interrupt", "reason"),
    [(second_sigint, "second Ctrl-C"), (sigquit, "SIGQUIT")],
    ids=["second-sigint", "sigquit"],
)
def test_interrupt_kills_the_running_job_and_records_it(
    interrupt: Callable[[subprocess.Popen[bytes], int], None],
    reason: str,
    tmp_path: Path,
    run_json: Any,
    enqueue: Callable[..., str],
    show: Any,
    workers: Workers,
) -> None:
    pidfile = tmp_path / "job.pid"
    job_id = enqueue(f"echo $$ > {q(pidfile)}; exec sleep 30", "--max-retries", "0")
    worker = workers.start()
    job_pid = wait_for(lambda: read_pid(pidfile), timeout=15, what="the job to start")

    interrupt(worker, job_pid)

    worker.wait(timeout=20)
    job = show(job_id)
    assert job["state"] == "dead", job  # recorded as a failure; max_retries 0 sends it to the DLQ
    assert job["last_error"].startswith("interrupted"), job
    assert reason in job["last_error"], job
    wait_for(lambda: pid_gone(job_pid), timeout=5, what="the interrupted job to die")
    assert run_json("status")["counts"]["processing"] == 0


def test_a_killed_workers_job_is_recovered_and_retried(
    tmp_path: Path, run: Run, enqueue: Callable[..., str], show: Any, workers: Workers
) -> None:
    env = {"QUEUECTL_LEASE_MS": "1000"}
    pidfile, attempts = tmp_path / "first.pid", tmp_path / "attempts"
    job_id = enqueue(
        f'if [ "$QUEUECTL_ATTEMPT" = 1 ]; then echo $$ > {q(pidfile)}; exec sleep 30; fi; '
        f'echo "$QUEUECTL_ATTEMPT" >> {q(attempts)}'
    )
    crashing = workers.start(env=env)
    orphan = wait_for(lambda: read_pid(pidfile), timeout=15, what="the first attempt to start")
    assert show(job_id)["state"] == "processing"

    crashing.kill()
    crashing.wait()
    assert not pid_gone(orphan), "the job runs in its own session and outlives its worker"
    workers.start(env=env)

    failed = wait_for(
        lambda: state_is(show, job_id, "failed", "dead", "completed"),
        timeout=15,
        what="the job to be recovered",
    )
    assert failed["state"] == "failed", failed
    assert failed["last_error"].startswith("worker lost"), failed
    assert failed["attempts"] == 1
    if sys.platform.startswith("linux"):  # orphans are found through /proc
        wait_for(lambda: pid_gone(orphan), timeout=3, what=f"orphaned attempt {orphan} killed")
    job = wait_for(
        lambda: state_is(show, job_id, "completed", "dead"), timeout=15, what="the retry"
    )
    assert (job["state"], job["attempts"], job["exit_code"]) == ("completed", 1, 0)
    assert attempts.read_text().split() == ["2"]
    assert " attempt 2 " in run("logs", job_id).stdout


def test_status_does_not_list_a_killed_worker(run_json: Any, workers: Workers) -> None:
    worker = workers.start()
    wait_for(
        lambda: [w for w in run_json("status")["workers"] if w["pid"] == worker.pid],
        timeout=15,
        what="the worker to register",
    )

    worker.kill()
    worker.wait()

    # Its lease (30 s by default) has not expired, but this host can see the process is gone,
    # as the runner's own recovery does: `status` lists the live workers only.
    assert [w for w in run_json("status")["workers"] if w["pid"] == worker.pid] == []


# -- config and queues ----------------------------------------------------------------


def test_config_is_shared_by_every_process_and_copied_into_jobs_at_enqueue(
    run: Run, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    result = run("config", "set", "max-retries", "5")
    assert (result.returncode, result.stdout.strip()) == (0, "max_retries = 5")
    assert run("config", "get", "max_retries").stdout.strip() == "5"
    early = enqueue("true")
    assert show(early)["max_retries"] == 5

    assert run("config", "set", "max_retries", "1").returncode == 0
    late = enqueue("true")
    assert run("config", "set", "job_timeout_ms", "300").returncode == 0
    slow = enqueue("sleep 5", "--max-retries", "0")
    drain()

    assert show(early)["max_retries"] == 5  # copied at enqueue: later changes leave it alone
    assert show(late)["max_retries"] == 1
    assert show(early)["state"] == "completed"
    job = show(slow)
    assert (job["state"], job["last_error"]) == ("dead", "timed out after 300 ms")


def test_worker_serves_only_its_queue(
    tmp_path: Path, enqueue: Callable[..., str], show: Any, drain: Any
) -> None:
    ran = tmp_path / "ran"
    jobs = {
        name: enqueue(f"echo {name} >> {q(ran)}", *options)
        for name, options in (("a", ["--queue", "a"]), ("b", ["--queue", "b"]), ("default", []))
    }

    drain("--queue", "a")

    assert show(jobs["a"])["state"] == "completed"
    assert show(jobs["b"])["state"] == "pending"
    assert show(jobs["default"])["state"] == "pending"
    assert ran.read_text().split() == ["a"]


# -- regressions found in review -------------------------------------------------------


def test_a_lost_lease_kills_only_that_job_not_the_next_ones(
    enqueue: Callable[..., str],
    show: Callable[[str], dict[str, Any]],
    workers: Workers,
    home: Path,
    backend: str,
    db_url: str,
) -> None:
    """Another worker took the claim over (here: the token is changed under it)."""
    first = enqueue("sleep 30", "--max-retries", "0")
    workers.start(env={"QUEUECTL_LEASE_MS": "600"})
    wait_for(lambda: state_is(show, first, "processing"), what="the first job to start")
    steal = "UPDATE jobs SET lease_token = 'stolen' WHERE id = '%s'" % first  # noqa: UP031
    if backend == "sqlite":
        import sqlite3

        with sqlite3.connect(home / "queue.db") as conn:
            conn.execute(steal)
    else:
        import psycopg

        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(steal)
    second = enqueue("echo fine", "--max-retries", "0")
    job = wait_for(lambda: state_is(show, second, "completed", "dead"), what="the second job")
    assert job["state"] == "completed", workers.output()
    assert "lease lost to another worker" in workers.output()


def test_nul_bytes_in_output_are_kept_in_the_log(
    enqueue: Callable[..., str],
    drain: Callable[..., subprocess.CompletedProcess[str]],
    show: Callable[[str], dict[str, Any]],
    run: Run,
) -> None:
    job_id = enqueue("printf 'a\\000b\\n'", "--max-retries", "0")
    drain()
    assert show(job_id)["state"] == "completed"
    assert "a\0b" in run("logs", job_id).stdout


def test_workers_never_import_a_queuectl_from_the_working_directory(
    enqueue: Callable[..., str],
    show: Callable[[str], dict[str, Any]],
    tmp_path: Path,
    run: Run,
) -> None:
    trap = tmp_path / "cwd" / "queuectl"
    trap.mkdir(parents=True)
    marker = tmp_path / "hijacked"
    (trap / "__init__.py").write_text("")
    (trap / "__main__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    job_id = enqueue("true")
    result = subprocess.run(
        [QUEUECTL, "worker", "run", "--count", "2", "--drain"],
        cwd=trap.parent,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert show(job_id)["state"] == "completed"


def test_worker_start_reports_a_worker_that_cannot_start(run: Run, home: Path) -> None:
    result = run("worker", "start", env={"QUEUECTL_LEASE_MS": "nonsense"})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: worker pid ")
    assert f"exited at start (exit code 2): see {home}/logs/workers.log" in result.stderr


def test_heartbeats_keep_a_job_longer_than_its_lease_alive(
    enqueue: Callable[..., str],
    drain: Callable[..., subprocess.CompletedProcess[str]],
    show: Callable[[str], dict[str, Any]],
) -> None:
    # 1.5 s is 2.5 leases: unrenewed, the lease would lapse and the job be killed at 0.6 s.
    job_id = enqueue("sleep 1.5", "--max-retries", "0")
    result = drain(env={"QUEUECTL_LEASE_MS": "600"})
    job = show(job_id)
    assert (job["state"], job["attempts"]) == ("completed", 0), result.stderr
    assert "heartbeat failed" not in result.stderr


# -- wait -----------------------------------------------------------------------------


def test_wait_blocks_until_the_jobs_end_and_fails_when_one_did_not_complete(
    tmp_path: Path, enqueue: Callable[..., str], show: Any, workers: Workers
) -> None:
    gate = tmp_path / "gate"
    good = enqueue(f"while [ ! -e {q(gate)} ]; do sleep 0.01; done")
    bad = enqueue("exit 4", "--max-retries", "0")
    waiter = subprocess.Popen(
        [QUEUECTL, "wait", good, bad, "--format", "json"], stdout=subprocess.PIPE, text=True
    )
    workers.start()
    wait_for(lambda: show(good)["state"] == "processing", what="the gated job to start")
    assert waiter.poll() is None  # `good` is still running: wait has not returned
    gate.touch()
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 1  # bad ended dead
    assert [(j["id"], j["state"]) for j in json.loads(out)] == [
        (good, "completed"),
        (bad, "dead"),
    ]


def test_wait_exits_0_when_every_job_completed_and_reads_ids_from_stdin(
    run: Run, workers: Workers
) -> None:
    ids = run("enqueue", "-", input="- {command: 'true'}\n- {command: 'echo two'}\n").stdout
    workers.start()
    result = run("wait", "-", input=ids)
    assert result.returncode == 0, result.stderr
    assert {j["state"] for j in json.loads(result.stdout)} == {"completed"}
    assert [j["id"] for j in json.loads(result.stdout)] == ids.split()


def test_wait_times_out_naming_the_jobs_still_going(run: Run, enqueue: Callable[..., str]) -> None:
    job_id = enqueue("true")  # no worker runs: it stays pending
    result = run("wait", job_id, "--timeout", "200ms")
    assert result.returncode == 1
    warning, error = result.stderr.splitlines()
    assert warning.startswith(f"warning: job {job_id} waits on queue 'default', which no live")
    assert error.startswith(f"Error: timed out after 0.2 s with 1 job(s) not ended: {job_id};")
    assert result.stdout == ""


# -- cancel a running job -----------------------------------------------------------------


def test_cancel_refuses_a_running_job_without_kill(
    tmp_path: Path, run: Run, enqueue: Callable[..., str], show: Any, workers: Workers
) -> None:
    job_id = enqueue(f"while [ ! -e {q(tmp_path / 'gate')} ]; do sleep 0.01; done")
    workers.start()
    wait_for(lambda: show(job_id)["state"] == "processing", what="the job to start")
    result = run("cancel", job_id)
    assert result.returncode == 1
    assert result.stderr == (
        f"Error: job '{job_id}' is processing: use `queuectl cancel --kill {job_id}` to stop it\n"
    )
    (tmp_path / "gate").touch()
    wait_for(lambda: show(job_id)["state"] == "completed", what="the job to complete")


def test_cancel_kill_stops_a_local_job_at_once_and_the_worker_goes_on(
    tmp_path: Path, run: Run, enqueue: Callable[..., str], show: Any, workers: Workers
) -> None:
    """`cancel` itself SIGTERMs a job whose worker is on this host: no heartbeat needed
    (the default lease_ms of 30 s puts the next one 10 s away)."""
    pid_file = tmp_path / "pid"
    job_id = enqueue(f"echo $$ > {q(pid_file)}; while true; do sleep 0.01; done")
    workers.start()
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the job's pid")
    pid = int(pid_file.read_text())

    result = run("cancel", "--kill", job_id)

    assert (result.returncode, result.stdout) == (0, f"canceled {job_id}\n"), result.stderr
    job = show(job_id)
    assert (job["state"], job["last_error"]) == ("canceled", "canceled while running")
    worker_log = tmp_path / "worker-0.log"
    stopped = f"job {job_id}: canceled while running; stopped, no result recorded"
    wait_for(lambda: stopped in worker_log.read_text(), what="the worker to stop the job")
    assert pid_gone(pid)
    assert "canceled; stopping it" not in worker_log.read_text()  # not the heartbeat's doing
    assert run("logs", job_id).stdout.rstrip().endswith("canceled while running")
    assert show(job_id)["state"] == "canceled"  # the worker recorded nothing over it
    next_job = enqueue("echo next")
    wait_for(lambda: show(next_job)["state"] == "completed", what="the next job")


def test_cancel_kill_of_a_job_ignoring_sigterm_holds_until_its_processes_are_gone(
    tmp_path: Path, run: Run, show: Any, workers: Workers
) -> None:
    """The job and a background child both ignore SIGTERM: its worker sees the revoked claim
    at its next heartbeat and SIGKILLs the group. Until then `apply --replace` refuses the
    job, and `wait` returns only once nothing of it runs."""
    pids = tmp_path / "pids"
    script = (
        f"trap '' TERM; (sleep 300 & echo $! >> {q(pids)}; wait) & "
        f"echo $$ >> {q(pids)}; while true; do sleep 0.01; done"
    )
    spec = tmp_path / "jobs" / "stubborn.yaml"
    spec.parent.mkdir()
    spec.write_text(json.dumps({"id": "stubborn", "command": script}))
    assert run("apply", str(spec.parent)).returncode == 0
    # Heartbeats every 2 s: `apply --replace` below runs within that and the 3 s grace.
    workers.start(env={"QUEUECTL_LEASE_MS": "6000"})
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="the pids")

    assert run("cancel", "--kill", "stubborn").returncode == 0
    assert run("cancel", "--kill", "stubborn").returncode == 0  # still stopping: fine
    spec.write_text(json.dumps({"id": "stubborn", "command": "echo replaced"}))
    refused = run("apply", "--replace", str(spec.parent))
    waited = run("wait", "stubborn")

    assert refused.returncode == 1
    assert "a running job is never replaced" in refused.stdout
    assert waited.returncode == 1  # canceled is not completed
    assert all(pid_gone(int(pid)) for pid in pids.read_text().split())  # all gone by then
    worker_log = (tmp_path / "worker-0.log").read_text()
    assert worker_log.count("job stubborn: canceled; stopping it") == 1
    replaced = run("apply", "--replace", str(spec.parent))
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    wait_for(lambda: show("stubborn")["state"] == "completed", what="the replacement to run")


def test_recovery_stops_a_canceled_job_whose_worker_died(
    tmp_path: Path, run: Run, enqueue: Callable[..., str], show: Any, workers: Workers
) -> None:
    pid_file = tmp_path / "pid"
    job_id = enqueue(f"trap '' TERM; echo $$ > {q(pid_file)}; while true; do sleep 0.01; done")
    worker = workers.start()
    wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the job's pid")
    pid = int(pid_file.read_text())
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert run("cancel", "--kill", job_id).returncode == 0  # the job ignores this SIGTERM

    workers.start()  # its recovery finds the orphan of a dead worker on this host

    wait_for(lambda: pid_gone(pid), what="recovery to kill the orphan")
    waited = run("wait", job_id, "--timeout", "20s")
    assert (waited.returncode, waited.stderr) == (
        1,
        f"Error: 1 of 1 job(s) did not complete: {job_id} (canceled); see `queuectl logs ID`\n",
    )
    assert "stopped (its worker is gone)" in (tmp_path / "worker-1.log").read_text()
