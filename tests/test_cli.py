"""The core commands, driven through the installed `queuectl` in subprocesses."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from queuectl.store.sql import migrations

from .conftest import QUEUECTL, Run

pytestmark = pytest.mark.e2e


def enqueue_ok(run: Run, *args: str, input: str | None = None) -> list[str]:
    result = run("enqueue", *args, input=input)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.split()


def test_enqueue_plain_command_prints_only_the_new_id(run: Run, run_json: Any) -> None:
    (job_id,) = enqueue_ok(run, "echo hello")
    job = run_json("show", job_id)
    assert job["command"] == "echo hello"
    assert job["state"] == "pending"
    assert job["attempts"] == 0
    assert job["max_retries"] == 3
    assert job["source"] == "inline"


def test_enqueue_json_object_with_every_field(run: Run, run_json: Any) -> None:
    spec = {
        "id": "nightly.report:1",
        "command": ["python3", "-c", "print(1)"],
        "priority": 7,
        "run_at": "2030-01-02T03:04:05+01:00",
        "max_retries": 5,
        "timeout_ms": 1500,
        "env": {"A": "1"},
        "cwd": "/tmp",
        "queue": "reports",
        "labels": {"team": "data"},
    }
    assert enqueue_ok(run, json.dumps(spec)) == ["nightly.report:1"]
    job = run_json("show", "nightly.report:1")
    assert job["command"] == ["python3", "-c", "print(1)"]
    assert job["run_at"] == "2030-01-02T02:04:05.000Z"
    assert job["available_at"] == job["run_at"]
    assert {
        k: job[k]
        for k in ("priority", "max_retries", "timeout_ms", "env", "cwd", "queue", "labels")
    } == {
        k: spec[k]
        for k in ("priority", "max_retries", "timeout_ms", "env", "cwd", "queue", "labels")
    }


def test_enqueue_argv_array_argument_is_one_command(run: Run, run_json: Any) -> None:
    (job_id,) = enqueue_ok(run, '["printf", "%s", "a b"]')
    assert run_json("show", job_id)["command"] == ["printf", "%s", "a b"]


def test_enqueue_options_override_the_spec(run: Run, run_json: Any) -> None:
    ids = enqueue_ok(
        run,
        '{"command": "true", "env": {"A": "1"}}',
        "--id",
        "opt",
        "--priority",
        "-2",
        "--max-retries",
        "0",
        "--timeout-ms",
        "10",
        "--queue",
        "q1",
        "--env",
        "B=2",
        "--label",
        "k=v=w",
    )
    job = run_json("show", ids[0])
    assert (job["id"], job["priority"], job["max_retries"], job["timeout_ms"], job["queue"]) == (
        "opt",
        -2,
        0,
        10,
        "q1",
    )
    assert job["env"] == {"A": "1", "B": "2"}
    assert job["labels"] == {"k": "v=w"}


@pytest.mark.parametrize("delay", ["90s", "1m30s", "1m 30s", "1.5m"])
def test_enqueue_delay_sets_available_at_in_the_future(run: Run, run_json: Any, delay: str) -> None:
    (job_id,) = enqueue_ok(run, "true", "--delay", delay)
    job = run_json("show", job_id)
    assert job["run_at"] is None
    from datetime import datetime

    created = datetime.fromisoformat(job["created_at"])
    available = datetime.fromisoformat(job["available_at"])
    assert 89.9 <= (available - created).total_seconds() <= 90.1


def test_enqueue_stdin_list_is_one_transaction_with_one_id_per_line(
    run: Run, run_json: Any
) -> None:
    jobs = [{"id": f"batch-{i}", "command": "true"} for i in range(5)]
    assert enqueue_ok(run, "-", input=json.dumps(jobs)) == [j["id"] for j in jobs]
    bad = [{"id": "ok-1", "command": "true"}, {"id": "bad", "command": 3}]
    result = run("enqueue", "-", input=json.dumps(bad))
    assert result.returncode == 1
    assert "<stdin>" in result.stderr
    assert run("show", "ok-1").returncode == 1, "a failed batch must write nothing"


def test_enqueue_stdin_yaml_documents(run: Run) -> None:
    text = "id: y1\ncommand: echo one\n---\n- id: y2\n  command: [echo, two]\n  priority: 3\n"
    assert enqueue_ok(run, "-", input=text) == ["y1", "y2"]


def test_identical_resubmission_is_a_noop_and_a_different_spec_conflicts(
    run: Run, run_json: Any
) -> None:
    spec = '{"id": "same", "command": "echo 1"}'
    assert enqueue_ok(run, spec) == ["same"]
    assert enqueue_ok(run, spec) == ["same"]
    assert enqueue_ok(run, "echo 1", "--id", "same") == ["same"]
    result = run("enqueue", '{"id": "same", "command": "echo 2"}')
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "Error: job 'same' already exists with a different spec (from inline): choose another "
        "id, or re-submit the identical spec (a no-op)"
    )
    assert run_json("show", "same")["command"] == "echo 1"
    assert run_json("status")["counts"]["pending"] == 1


BAD_INPUT = [
    # (arguments, stdin, exit code, the stderr line)
    (
        ['{"command": "x",'],
        None,
        1,
        "Error: <argument>:1:17: invalid JSON: Expecting property name enclosed in double quotes",
    ),
    (
        ['{"priority": 1}'],
        None,
        1,
        "Error: <argument>:1:1: command: required field is missing: add it",
    ),
    (
        ['{"command": ""}'],
        None,
        1,
        "Error: <argument>:1:13: command: '' is not valid: use a non-empty command string, "
        "or a non-empty array of at most 4096 strings "
        "(no NUL bytes; at most 131072 characters each)",
    ),
    (
        [""],
        None,
        1,
        "Error: <argument>: command: '' is not valid: use a non-empty command string, "
        "or a non-empty array of at most 4096 strings "
        "(no NUL bytes; at most 131072 characters each)",
    ),
    (
        ['{"command": "x", "priorty": 1}'],
        None,
        1,
        "Error: <argument>:1:18: priorty: unknown field: did you mean 'priority'?",
    ),
    (
        ['{"command": "x", "priority": "high"}'],
        None,
        1,
        "Error: <argument>:1:30: priority: 'high' is not of type 'integer'",
    ),
    (
        ['{"command": "x", "max_retries": -1}'],
        None,
        1,
        "Error: <argument>:1:33: max_retries: -1 is less than the minimum of 0",
    ),
    (
        ['{"command": "x", "run_at": "next tuesday"}'],
        None,
        1,
        "Error: <argument>:1:28: run_at: 'next tuesday' is not an RFC 3339 date-time with offset, "
        "e.g. 2026-01-31T02:00:00Z",
    ),
    (
        ['{"command": "x", "run_at": "2026-01-01T00:00:00"}'],
        None,
        1,
        "Error: <argument>:1:28: run_at: '2026-01-01T00:00:00' is not an RFC 3339 date-time with "
        "offset, e.g. 2026-01-31T02:00:00Z",
    ),
    (
        ["x", "--id", "a/b"],
        None,
        1,
        "Error: <argument>: id: 'a/b' is not valid: use letters, digits, '.', '_', ':' or '-', "
        "starting with a letter or digit, at most 128 characters, without '..'",
    ),
    (
        ["x", "--id", "a..b"],
        None,
        1,
        "Error: <argument>: id: 'a..b' is not valid: use letters, digits, '.', '_', ':' or '-', "
        "starting with a letter or digit, at most 128 characters, without '..'",
    ),
    (
        ["x", "--id", "a b"],
        None,
        1,
        "Error: <argument>: id: 'a b' is not valid: use letters, digits, '.', '_', ':' or '-', "
        "starting with a letter or digit, at most 128 characters, without '..'",
    ),
    (
        ["x", "--max-retries", "-1"],
        None,
        2,
        "Error: Invalid value for '--max-retries': -1 is not in the range 0<=x<=2147483647. "
        "(see 'queuectl enqueue --help')",
    ),
    (
        ["x", "--delay", "soon"],
        None,
        2,
        "Error: Invalid value for '--delay': 'soon' is not a duration: use e.g. 30s, 5m, 1m30s, "
        "2h, 1d or 250ms (see 'queuectl enqueue --help')",
    ),
    (
        ["x", "--run-at", "2030-01-01T00:00:00Z", "--delay", "1s"],
        None,
        2,
        "Error: --run-at and --delay both set a start time: use one of them "
        "(see 'queuectl enqueue --help')",
    ),
    (
        ["-"],
        "- id: d\n  command: a\n- id: d\n  command: b\n",
        1,
        "Error: <stdin>:3:7: id: duplicate id 'd' (first declared at <stdin>:1): ids must be "
        "unique",
    ),
    (
        ["-"],
        "command: a\ncommand: b\n",
        1,
        "Error: <stdin>:2:1: command: duplicate key: remove one of them",
    ),
    (["-"], "", 1, "Error: <stdin>:1:1: no job found: the input is empty"),
    (["-"], b"command: caf\xe9\n", 1, "Error: <stdin>:1:1: not UTF-8 text: save the file as UTF-8"),
    (
        ['{"command": "x", "run_at": "0001-01-01T00:00:00+01:00"}'],
        None,
        1,
        "Error: <argument>:1:28: run_at: '0001-01-01T00:00:00+01:00' is before "
        "0001-01-01T00:00:00Z, the earliest instant a job can hold",
    ),
    (
        ["x", "--delay", "99999999999d"],
        None,
        2,
        "Error: Invalid value for '--delay': '99999999999d' is more than 3650 days: use --run-at "
        "for a far date (see 'queuectl enqueue --help')",
    ),
    (
        ["-"],
        "a: [1, 2\n",
        1,
        "Error: <stdin>:2:1: invalid YAML: *",
    ),  # the parser's own words follow
]


@pytest.mark.parametrize(("args", "stdin", "code", "message"), BAD_INPUT)
def test_bad_input_is_one_line_with_no_write(
    run: Run, run_json: Any, args: list[str], stdin: str | bytes | None, code: int, message: str
) -> None:
    result = run("enqueue", *args, input=stdin)
    assert result.returncode == code
    if message.endswith("*"):
        assert result.stderr.startswith(message[:-1])
        assert len(result.stderr.strip().splitlines()) == 1
    else:
        assert result.stderr.strip() == message
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert sum(run_json("status")["counts"].values()) == 0


def test_list_filters_and_limits(run: Run, run_json: Any) -> None:
    enqueue_ok(run, "true", "--id", "a", "--queue", "q1", "--label", "team=x")
    enqueue_ok(run, "true", "--id", "b", "--queue", "q2", "--label", "team=y")
    enqueue_ok(run, "true", "--id", "c", "--queue", "q1")
    assert run("cancel", "c").stdout.strip() == "canceled c"
    ids = lambda *a: [j["id"] for j in run_json("list", *a)]  # noqa: E731
    assert ids() == ["a", "b", "c"]
    assert ids("--queue", "q1") == ["a", "c"]
    assert ids("--label", "team=y") == ["b"]
    assert ids("--state", "canceled") == ["c"]
    assert ids("--limit", "1") == ["a"]
    table = run("list", "--format", "table").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "PRIORITY"]
    assert len(table) == 4


def test_list_bad_state_is_a_usage_error(run: Run) -> None:
    result = run("list", "--state", "nope")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "'nope' is not one of" in result.stderr


def test_status_counts_every_state_and_no_workers(run: Run, run_json: Any) -> None:
    enqueue_ok(run, "true")
    status = run_json("status")
    assert status["counts"] == {
        "pending": 1,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "dead": 0,
        "canceled": 0,
    }
    assert status["workers"] == []


def test_show_and_cancel_unknown_job_exit_1(run: Run) -> None:
    for command in ("show", "cancel", "logs"):
        result = run(command, "ghost")
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            == "Error: job 'ghost' not found: check the id with `queuectl list`"
        )


def test_cancel_only_pending_failed_or_with_kill_processing(run: Run) -> None:
    enqueue_ok(run, "true", "--id", "j")
    assert run("cancel", "j").returncode == 0
    for again in (["cancel", "j"], ["cancel", "--kill", "j"]):
        result = run(*again)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "Error: job 'j' is canceled: only pending, failed or (with --kill) processing jobs "
            "can be canceled"
        )


def test_logs_before_any_run(run: Run) -> None:
    enqueue_ok(run, "true", "--id", "quiet")
    result = run("logs", "quiet")
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.strip() == "job quiet has no output yet"


def test_dlq_retry_errors(run: Run) -> None:
    enqueue_ok(run, "true", "--id", "alive")
    unknown = run("dlq", "retry", "ghost")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "Error: job 'ghost' not found: check the id with `queuectl list`",
    )
    not_dead = run("dlq", "retry", "alive")
    assert not_dead.returncode == 1
    assert not_dead.stderr.strip() == (
        "Error: job 'alive' is pending, not dead: `dlq retry` takes jobs listed by "
        "`queuectl dlq list`"
    )
    assert run("dlq", "retry").returncode == 2
    assert run("dlq", "retry", "--all").stdout.strip() == "retried 0 job(s)"
    purged = run("dlq", "purge")
    assert (purged.stdout, purged.stderr) == ("", "purged 0 job(s)\n")  # ids on stdout
    assert run("dlq", "list").stdout.strip() == "[]"


def test_database_that_is_not_sqlite_is_refused(run: Run, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_text("this is not a database, just text that is long enough " * 20)
    before = bogus.read_bytes()
    result = run("--db", f"sqlite:///{bogus}", "status")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"Error: sqlite:///{bogus}: not a usable queuectl SQLite database"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    assert bogus.read_bytes() == before


def test_database_from_a_newer_queuectl_is_refused(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    assert run("--db", f"sqlite:///{path}", "status").returncode == 0
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 999")
    result = run("--db", f"sqlite:///{path}", "enqueue", "true")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: sqlite:///{path}: the database has schema version 999, written by a newer "
        f"queuectl (this one knows up to {len(migrations('sqlite'))}): upgrade queuectl"
    )


def test_unknown_db_url_and_missing_directory(run: Run, tmp_path: Path) -> None:
    result = run("--db", "mysql://x", "status")
    assert (result.returncode, result.stderr.strip()) == (
        1,
        "Error: unsupported database URL 'mysql://x': use sqlite:///path/to/file.db or "
        "postgresql://user@host:port/dbname",
    )
    missing = tmp_path / "nope" / "q.db"
    result = run("--db", f"sqlite:///{missing}", "status")
    assert result.returncode == 1
    assert "does not exist: create it first" in result.stderr


def test_relative_sqlite_url_is_relative_to_the_working_directory(run: Run, tmp_path: Path) -> None:
    import subprocess

    from .conftest import QUEUECTL

    result = subprocess.run(
        [QUEUECTL, "--db", "sqlite:///rel.db", "enqueue", "true"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "rel.db").exists()


def test_home_and_database_are_private(run: Run, home: Path) -> None:
    enqueue_ok(run, "true")
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / "queue.db").stat().st_mode & 0o777 == 0o600


def test_database_url_from_environment(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "env.db"
    result = run("enqueue", "true", env={"QUEUECTL_DATABASE_URL": f"sqlite:///{path}"})
    assert result.returncode == 0
    assert path.exists()


def test_python_dash_m_and_version(run: Run) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "queuectl", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("queuectl, version ")


def test_logs_follow_prints_output_until_the_job_ends(run: Run, tmp_path: Path) -> None:
    import subprocess

    from .conftest import QUEUECTL, wait_for

    release = tmp_path / "release"
    job_id = run(
        "enqueue", f"echo first; while [ ! -e {release} ]; do sleep 0.05; done; echo second"
    ).stdout.strip()
    worker = subprocess.Popen([QUEUECTL, "worker", "run", "--drain"], stderr=subprocess.DEVNULL)
    follower = subprocess.Popen(
        [QUEUECTL, "logs", job_id, "--follow"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert follower.stdout is not None
        wait_for(lambda: "first" in follower.stdout.readline(), what="the first line")
        release.touch()
        rest = follower.stdout.read()
        assert follower.wait(timeout=30) == 0
        assert "second" in rest
        assert "exit code 0" in rest
    finally:
        release.touch()
        worker.wait(timeout=30)
        follower.kill()
        follower.wait()
        if follower.stdout is not None:
            follower.stdout.close()


# -- inline enqueue, as a shell user expects (SPEC "Inline enqueue") ---------------------


@pytest.mark.parametrize(
    "command",
    ["[ -f /etc/passwd ] && echo yes > out", "{ echo a; } > out", '[[ -n "$HOME" ]]'],
)
def test_enqueue_shell_commands_starting_with_brackets_are_commands(
    run: Run, run_json: Any, tmp_path: Path, command: str
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    result = run("enqueue", command, cwd=here)
    assert result.returncode == 0, result.stderr
    assert run_json("show", result.stdout.strip())["command"] == command
    if command.endswith("> out"):  # `[[` is bash's; the job runs in /bin/sh
        assert run("worker", "run", "--drain").returncode == 0
        assert (here / "out").read_text().strip() in ("yes", "a")


@pytest.mark.parametrize("arg", ['{"command": ', '[ "echo", 1'])
def test_enqueue_text_starting_like_json_is_a_json_error(run: Run, arg: str) -> None:
    result = run("enqueue", arg)
    assert result.returncode == 1
    assert result.stderr.startswith("Error: <argument>:1:") and "invalid JSON" in result.stderr


def test_enqueue_refuses_a_spec_file_path_with_a_hint(run: Run, tmp_path: Path) -> None:
    (tmp_path / "jobs.yaml").write_text("command: echo hi\n")
    result = run("enqueue", "jobs.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "Error: 'jobs.yaml' is a spec file, not a command: enqueue its jobs with "
        "`queuectl enqueue - < jobs.yaml`, or declare them with `queuectl apply jobs.yaml`\n"
    )
    assert run("list").stdout.strip() == "[]"


def test_inline_jobs_run_in_the_directory_enqueue_ran_in(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    ops = tmp_path / "ops"
    (ops / "sub").mkdir(parents=True)  # a cwd that exists: the drain is not held by retries
    script = ops / "run.sh"
    script.write_text("#!/bin/sh\npwd > where\n")
    script.chmod(0o755)
    (plain,) = enqueue_ok_in(run, ops, "./run.sh")
    (chosen,) = enqueue_ok_in(run, tmp_path, "pwd > where", "--cwd", "ops")
    (relative,) = enqueue_ok_in(run, tmp_path, '{"command": "true", "cwd": "ops/sub"}')
    (piped,) = enqueue_ok_in(run, ops, "-", input="command: 'true'\n")
    assert run_json("show", plain)["cwd"] == str(ops)
    assert run_json("show", chosen)["cwd"] == str(ops)
    assert run_json("show", relative)["cwd"] == str(ops / "sub")
    assert run_json("show", piped)["cwd"] == str(ops)
    assert run("worker", "run", "--drain").returncode == 0
    assert run_json("show", plain)["state"] == "completed"
    assert (ops / "where").read_text().strip() == str(ops)


def enqueue_ok_in(run: Run, where: Path, *args: str, input: str | None = None) -> list[str]:
    result = run("enqueue", *args, input=input, cwd=where)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_apply_resolves_a_relative_cwd_against_the_spec_file(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    jobs = tmp_path / "repo" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "a.yaml").write_text("id: a\ncommand: 'true'\ncwd: ../scripts\n")
    result = run("apply", str(jobs), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert run_json("show", "a")["cwd"] == str(tmp_path / "repo" / "scripts")


# -- list and dlq list never truncate silently (SPEC section 14) -------------------------


def test_list_says_on_stderr_when_rows_were_left_out_and_newest_comes_first(
    run: Run, run_json: Any
) -> None:
    ids = enqueue_ok(run, "-", input="".join(f"- {{id: j{i}, command: x}}\n" for i in range(5)))
    result = run("list", "--limit", "3")
    assert [job["id"] for job in json.loads(result.stdout)] == ids[:3]
    assert result.stderr == (
        "showing the oldest 3 job(s); more match: raise --limit, narrow with "
        "--state/--queue/--label, or use --newest\n"
    )
    newest = run("list", "--limit", "2", "--newest")
    assert [job["id"] for job in json.loads(newest.stdout)] == ids[:-3:-1]
    assert "showing the newest 2 job(s)" in newest.stderr
    complete = run("list", "--limit", "5")
    assert len(json.loads(complete.stdout)) == 5 and complete.stderr == ""


def test_dlq_list_says_on_stderr_when_rows_were_left_out(run: Run) -> None:
    enqueue_ok(
        run,
        "-",
        input="".join(f"- {{id: d{i}, command: 'false', max_retries: 0}}\n" for i in range(3)),
    )
    assert run("worker", "run", "--drain").returncode == 0
    result = run("dlq", "list", "--limit", "2", "--newest")
    assert [job["id"] for job in json.loads(result.stdout)] == ["d2", "d1"]
    assert result.stderr.startswith("showing the newest 2 job(s); more match")


# -- worker run --drain ends with a summary; CI can fail on dead jobs -------------------


@pytest.mark.parametrize("count", ["1", "2"])
def test_drain_ends_with_a_summary_and_fail_on_dead_exits_1(run: Run, count: str) -> None:
    enqueue_ok(run, "-", input="- {command: 'true'}\n- {command: 'exit 3', max_retries: 0}\n")
    result = run("worker", "run", "--drain", "--count", count)
    assert result.returncode == 0, result.stderr
    summaries = [line for line in result.stderr.splitlines() if line.startswith("drained:")]
    assert summaries == ["drained: 1 completed, 1 dead, 0 still failing"]  # one, at the end
    assert result.stderr.splitlines()[-1] == summaries[0]
    enqueue_ok(run, "-", input="{command: 'exit 3', max_retries: 0}\n")
    result = run("worker", "run", "--drain", "--count", count, "--fail-on-dead")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [
        "drained: 0 completed, 1 dead, 0 still failing",
        "Error: 1 job(s) ended dead during the drain: see `queuectl dlq list`",
    ]
    enqueue_ok(run, "true")
    assert run("worker", "run", "--drain", "--count", count, "--fail-on-dead").returncode == 0


# -- waiting on a job nobody will run says so (issue 15) --------------------------------

UNSERVED = (
    "warning: job {id} waits on queue 'ci', which no live worker serves: "
    "start one with `queuectl worker start --queue ci` (or `worker run --queue ci`)"
)


def test_wait_on_a_queue_no_worker_serves_says_so_once(run: Run) -> None:
    (job_id,) = enqueue_ok(run, "true", "--queue", "ci")
    result = run("wait", job_id, "--timeout", "1s")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        UNSERVED.format(id=job_id),
        f"Error: timed out after 1 s with 1 job(s) not ended: {job_id}; raise --timeout, "
        "or check the workers with `queuectl status`",
    ]


def test_logs_follow_on_a_queue_no_worker_serves_says_so_once(run: Run, tmp_path: Path) -> None:
    import subprocess

    from .conftest import QUEUECTL, wait_for

    (job_id,) = enqueue_ok(run, "echo done", "--queue", "ci")
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        follower = subprocess.Popen([QUEUECTL, "logs", job_id, "--follow"], stderr=sink)
    try:
        wait_for(lambda: err.read_text(), what="the warning")
        assert follower.poll() is None  # still following
        # a worker for the queue makes the job run, and the follower end
        assert run("worker", "run", "--drain", "--queue", "ci").returncode == 0
        assert follower.wait(timeout=30) == 0
    finally:
        follower.kill()
        follower.wait()
    assert err.read_text().splitlines() == [UNSERVED.format(id=job_id)]


def test_drain_of_a_queue_no_job_is_on_warns_with_the_queues_there_are(run: Run) -> None:
    enqueue_ok(run, "true", "--queue", "ci")
    result = run("worker", "run", "--drain", "--queue", "cii")
    assert result.returncode == 0
    assert result.stderr.splitlines()[0] == (
        "warning: no job in this store is on queue 'cii' (did you mean 'ci'?); queues with jobs: ci"
    )
    result = run("worker", "run", "--drain", "--queue", "ci")
    assert result.returncode == 0
    assert "warning" not in result.stderr


def test_cancel_several_ids_reports_each_and_exits_1_if_any_failed(run: Run, run_json: Any) -> None:
    enqueue_ok(run, "true", "--id", "a")
    enqueue_ok(run, "true", "--id", "b")
    assert run("cancel", "b").returncode == 0
    result = run("cancel", "a", "ghost", "b", "a")
    assert result.returncode == 1
    assert result.stdout == "canceled a\n"
    assert result.stderr.splitlines() == [
        "Error: job 'ghost' not found: check the id with `queuectl list`",
        "Error: job 'b' is canceled: only pending, failed or (with --kill) processing jobs "
        "can be canceled",
        "Error: 2 of 3 job(s) not canceled",
    ]
    assert run_json("show", "a")["state"] == "canceled"
    enqueue_ok(run, "true", "--id", "c")
    enqueue_ok(run, "true", "--id", "d")
    result = run("cancel", "c", "d")
    assert (result.returncode, result.stdout, result.stderr) == (0, "canceled c\ncanceled d\n", "")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30", 30_000),
        ("250ms", 250),
        ("1m30s", 90_000),
        ("1h30m", 5_400_000),
        ("1d2h", 93_600_000),
        ("2m 500ms", 120_500),
    ],
)
def test_durations_accept_compound_forms(text: str, ms: int) -> None:
    from queuectl.cli import Duration

    assert Duration().convert(text, None, None) == ms


@pytest.mark.parametrize("text", ["1m30", "m30s", "1x", "1m-30s", ""])
def test_durations_refuse_what_is_not_one(text: str) -> None:
    import click

    from queuectl.cli import Duration

    with pytest.raises(click.BadParameter, match="is not a duration"):
        Duration().convert(text, None, None)


def test_wait_timeout_takes_a_compound_duration(run: Run) -> None:
    (job_id,) = enqueue_ok(run, "true")
    assert run("cancel", job_id).returncode == 0
    result = run("wait", job_id, "--timeout", "1m30s")
    assert result.returncode == 1  # ended, but canceled: not a usage error
    assert result.stderr.startswith("Error: 1 of 1 job(s) did not complete")


def test_a_too_long_id_is_counted_as_written(run: Run) -> None:
    result = run("enqueue", "true", "--id", "a" * 130)
    assert result.returncode == 1
    assert "… (130 characters) is not valid: use letters" in result.stderr


def test_logs_says_the_log_file_is_gone_when_it_was_deleted(run: Run, home: Path) -> None:
    (job_id,) = enqueue_ok(run, "echo kept in the store")
    assert run("worker", "run", "--drain").returncode == 0
    log = home / "logs" / f"job-{job_id}.log"
    log.unlink()
    result = run("logs", job_id)
    assert result.returncode == 0
    assert result.stderr == (
        f"(the log file {log} is gone; here are the last 4 KiB kept in the store)\n"
    )
    assert "kept in the store\n" in result.stdout


@pytest.mark.parametrize("command", [["enqueue", "-"], ["list"]])
def test_a_reader_that_leaves_early_is_no_failure(
    run: Run, home: Path, command: list[str], tmp_path: Path
) -> None:
    # `queuectl enqueue - < jobs.json | head -1` under `set -o pipefail`: an exit code of 1
    # would make the script enqueue every job again.
    jobs = tmp_path / "jobs.json"  # 10,000 ids: far more than a pipe holds
    jobs.write_text(json.dumps([{"command": "true"}] * 10_000))
    if command == ["list"]:
        assert run("enqueue", "-", input=jobs.read_text()).returncode == 0
    script = f'"{QUEUECTL}" {" ".join(command)} < "{jobs}" | head -1; echo "${{PIPESTATUS[0]}}"'
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    first, code = done.stdout.split()
    assert code == "0", done.stderr
    assert "Error" not in done.stderr and "Traceback" not in done.stderr
    assert first.startswith(("01", "["))
    assert json.loads(run("status").stdout)["counts"]["pending"] == 10_000


def test_a_worker_whose_log_reader_left_goes_on_running_jobs(run: Run, home: Path) -> None:
    # Its log lines hit a closed pipe: dropped, and the worker neither stops early nor
    # reports a clean stop with jobs left behind.
    for _ in range(5):
        assert run("enqueue", "true").returncode == 0
    script = (
        f'"{QUEUECTL}" worker run --drain --fail-on-dead 2>&1 | head -1; echo "${{PIPESTATUS[0]}}"'
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    assert done.stdout.splitlines()[-1] == "0", done.stdout
    assert json.loads(run("status").stdout)["counts"]["completed"] == 5


def test_a_closed_stdout_is_no_failure(run: Run, home: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", f'"{QUEUECTL}" list >&-'], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
