"""End to end: dependencies between jobs (SPEC 12) and `overlap: queue` schedules, which
chain their runs with needs, through the installed `queuectl` on both stores."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import Run, wait_for
from .processes import Workers, q
from .test_concurrency_e2e import spanned, spans

pytestmark = [pytest.mark.e2e, pytest.mark.both_backends, pytest.mark.usefixtures("fast_polling")]

NO_WORKER = (
    "no live worker serves queue 'default': start one with `queuectl worker start --queue default`"
)


def states(run_json: Callable[..., Any]) -> dict[str, tuple[str, str | None]]:
    """Each job's state and last_error."""
    return {job["id"]: (job["state"], job["last_error"]) for job in run_json("list")}


# -- a pipeline ------------------------------------------------------------------------


def test_a_dead_step_cancels_what_needs_it_and_dlq_retry_runs_the_rest(
    tmp_path: Path, run: Run, run_json: Callable[..., Any]
) -> None:
    """extract -> transform -> load -> publish, with cleanup after load however it ends,
    alert on a dead transform, and report on a dead extract (which never comes)."""
    ran, fixed = tmp_path / "ran", tmp_path / "fixed"

    def step(command: str = "true") -> str:
        return f'echo "$QUEUECTL_JOB_ID" >> {q(ran)}; {command}'

    pipeline: list[dict[str, Any]] = [
        {"id": "extract", "command": step()},
        {
            "id": "transform",
            "command": step(f"[ -e {q(fixed)} ] || exit 3"),  # fails until the fix is in
            "needs": ["extract"],
            "max_retries": 0,
        },
        {"id": "load", "command": step(), "needs": ["transform"]},
        {"id": "publish", "command": step(), "needs": ["load"]},
        {"id": "cleanup", "command": step(), "needs": [{"job": "load", "on": "finished"}]},
        {"id": "alert", "command": step(), "needs": [{"job": "transform", "on": "failure"}]},
        {"id": "report", "command": step(), "needs": [{"job": "extract", "on": "failure"}]},
    ]
    enqueued = run("enqueue", "-", input=json.dumps(pipeline))
    assert (enqueued.returncode, enqueued.stdout.split()) == (0, [j["id"] for j in pipeline])

    # No worker yet: everything after extract waits on its needs.
    why = run("why", "load")
    assert (why.returncode, why.stdout.splitlines()) == (
        0,
        ["load: needs transform to complete: it is pending", f"load: {NO_WORKER}"],
    )
    assert run_json("show", "load")["waiting_on"] == [
        {"job": "transform", "on": "success", "state": "pending"}
    ]
    assert run_json("show", "cleanup")["waiting_on"] == [
        {"job": "load", "on": "finished", "state": "pending"}
    ]

    drained = run("worker", "run", "--drain")
    assert drained.returncode == 0, drained.stderr

    assert states(run_json) == {
        "extract": ("completed", None),
        "transform": ("dead", "exit code 3"),
        "load": ("canceled", "upstream transform dead"),
        "publish": ("canceled", "upstream load canceled"),  # and so on down the graph
        "cleanup": ("completed", None),  # load ended (canceled): cleanup's need is met
        "alert": ("completed", None),
        "report": ("canceled", "upstream extract completed"),
    }
    order = ran.read_text().split()
    assert sorted(order) == ["alert", "cleanup", "extract", "transform"]
    assert order.index("extract") < order.index("transform") < order.index("alert")
    assert run("why", "load").stdout == "load: canceled: not waiting to run\n"

    fixed.touch()
    retried = run("dlq", "retry", "transform")
    assert retried.returncode == 0, retried.stderr

    load = run_json("show", "load")
    assert (load["state"], load["last_error"]) == ("pending", None)
    assert load["waiting_on"] == [{"job": "transform", "on": "success", "state": "pending"}]
    publish = run_json("show", "publish")
    assert (publish["state"], publish["last_error"]) == ("pending", None)
    assert publish["waiting_on"] == [{"job": "load", "on": "success", "state": "pending"}]
    drained = run("worker", "run", "--drain")
    assert drained.returncode == 0, drained.stderr

    assert states(run_json) == {
        "extract": ("completed", None),
        "transform": ("completed", None),
        "load": ("completed", None),
        "publish": ("completed", None),
        "cleanup": ("completed", None),  # it ran once, after load first ended
        "alert": ("completed", None),
        "report": ("canceled", "upstream extract completed"),
    }
    assert ran.read_text().split()[len(order) :] == ["transform", "load", "publish"]


def test_a_drain_is_not_held_by_a_job_that_needs_a_job_not_due(
    run: Run, run_json: Callable[..., Any]
) -> None:
    """SPEC 4: a pending job whose run_at is in the future does not hold a drain; nor does
    a job that waits for it."""
    # Not due for an hour (a few seconds raced a loaded machine): the drain must not wait.
    assert run("enqueue", "--id", "later", "--delay", "1h", "true").returncode == 0
    for job in (
        {"id": "after", "command": "true", "needs": ["later"]},
        {"id": "now", "command": "true"},
    ):
        assert run("enqueue", json.dumps(job)).returncode == 0

    drained = run("worker", "run", "--drain")

    assert drained.returncode == 0, drained.stderr
    assert states(run_json) == {
        "later": ("pending", None),
        "after": ("pending", None),
        "now": ("completed", None),
    }


# -- needs that cannot be: unknown ids and cycles -------------------------------------


def test_an_unknown_need_is_refused_naming_the_id(run: Run, run_json: Callable[..., Any]) -> None:
    single = run("enqueue", json.dumps({"id": "orphan", "command": "true", "needs": ["ghost"]}))
    batch = run(
        "enqueue",
        "-",
        input=json.dumps(
            [
                {"id": "first", "command": "true"},
                {"id": "second", "command": "true", "needs": ["first", "ghost"]},
            ]
        ),
    )

    for result, job_id in ((single, "orphan"), (batch, "second")):
        assert result.returncode == 1
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(f"Error: job '{job_id}' needs 'ghost',"), line
    assert run_json("list") == []  # nothing of either submission


def position(path: Path, text: str, nth: int = 0) -> str:
    """`path:line:col` of the `nth` occurrence of `text` in the file (1-based line, col)."""
    content = path.read_text()
    at = -1
    for _ in range(nth + 1):
        at = content.index(text, at + 1)
    line = content.count("\n", 0, at) + 1
    column = at - (content.rfind("\n", 0, at) + 1) + 1
    return f"{path.parent.name}/{path.name}:{line}:{column}"


def test_a_cycle_across_two_files_is_refused_by_validate_and_apply(
    tmp_path: Path, run: Run, run_json: Callable[..., Any]
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    a, b = specs / "a.yaml", specs / "b.yaml"
    a.write_text("id: a\ncommand: 'true'\nneeds: [b]\n")
    b.write_text(
        "- id: c\n"
        "  command: 'true'\n"
        "- id: b\n"
        "  command: 'true'\n"
        "  needs:\n"
        "    - c\n"
        "    - {job: a, on: finished}\n"
    )
    cycle = "needs cycle a -> b -> a"
    expected = [
        f"{position(a, 'b]')}: needs.0: {cycle}",
        f"{position(b, '{job: a')}: needs.1: {cycle}",
    ]

    validated = run("validate", "specs", cwd=tmp_path)
    applied = run("apply", "specs", cwd=tmp_path)

    assert validated.returncode == 1, validated.stderr
    assert [line.partition(":")[0] for line in expected] == ["specs/a.yaml", "specs/b.yaml"]
    for output in (validated.stdout, applied.stderr):
        problems = [line.removeprefix("Error: ") for line in output.splitlines()]
        for want in expected:
            assert any(line.startswith(want) for line in problems), (want, output)
    assert applied.returncode == 1, applied.stderr
    assert run_json("list") == []  # nothing applied, not even c


def drop(spool: Path, name: str, text: str) -> None:
    """A spool file written a while ago: settled, the watcher takes it at once."""
    path = spool / name
    path.write_text(text)
    then = time.time() - 60
    os.utime(path, (then, then))


def test_the_spool_rejects_a_file_with_an_unknown_need_or_a_cycle(
    tmp_path: Path, run: Run, run_json: Callable[..., Any]
) -> None:
    stored = run("enqueue", json.dumps({"id": "stored", "command": "true"}))
    assert stored.returncode == 0, stored.stderr
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    drop(  # a need on a job in the store, and one on a job further down the same file
        spool,
        "good.yaml",
        "- {id: g1, command: 'true', needs: [stored, g2]}\n- {id: g2, command: 'true'}\n",
    )
    drop(
        spool,
        "unknown.yaml",
        "- {id: u1, command: 'true'}\n- {id: u2, command: 'true', needs: [u1, ghost]}\n",
    )
    drop(
        spool,
        "cycle.yaml",
        "- {id: c1, command: 'true', needs: [c2]}\n- {id: c2, command: 'true', needs: [c1]}\n",
    )

    ingested = run("spool", "ingest", str(spool))

    assert ingested.returncode == 1
    assert ingested.stderr.splitlines()[-1] == "1 file(s) ingested, 2 rejected"
    assert sorted(os.listdir(spool / "done")) == ["good.yaml"]
    assert sorted(os.listdir(spool / "rejected")) == [
        "cycle.yaml",
        "cycle.yaml.error.json",
        "unknown.yaml",
        "unknown.yaml.error.json",
    ]
    unknown = json.loads((spool / "rejected" / "unknown.yaml.error.json").read_text())
    assert "job 'u2' needs 'ghost'" in unknown["reason"], unknown
    cycle = json.loads((spool / "rejected" / "cycle.yaml.error.json").read_text())
    assert [(e["line"], e["field"]) for e in cycle["errors"]] == [(1, "needs.0"), (2, "needs.0")]
    assert all("needs cycle c1 -> c2 -> c1" in e["message"] for e in cycle["errors"]), cycle
    # Nothing of a rejected file is stored; the good one waits on its needs.
    assert {job["id"] for job in run_json("list")} == {"stored", "g1", "g2"}
    assert sorted(w["job"] for w in run_json("show", "g1")["waiting_on"]) == ["g2", "stored"]


# -- overlap: queue --------------------------------------------------------------------


def schedule_runs(run_json: Callable[..., Any]) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = run_json("list", "--schedule", "tick", "--limit", "1000")
    return sorted(jobs, key=lambda job: job["id"])  # slot order


def test_overlap_queue_runs_each_run_after_the_previous_one_ends(
    tmp_path: Path, run: Run, run_json: Callable[..., Any], workers: Workers
) -> None:
    """Slots every second, runs that last until the test says go, and a second worker
    free: runs pile up, each waiting on the one before it, and never run at once."""
    notes, go = tmp_path / "notes", tmp_path / "go"
    template = spanned("tick", notes, go)
    template["schedule"] = {"every": "1s", "overlap": "queue"}
    added = run("enqueue", "-", input=json.dumps(template))
    assert added.returncode == 0, added.stderr
    workers.start("--count", "2")

    def backlog() -> list[dict[str, Any]] | None:
        """The runs, once one is running and two wait behind it."""
        created = schedule_runs(run_json)
        pending = [job for job in created if job["state"] == "pending"]
        running = bool(created) and created[0]["state"] == "processing"
        return created if running and len(pending) >= 2 else None

    first, *queued = wait_for(backlog, timeout=30, what="two runs queued behind a running one")
    assert run("schedule", "pause", "tick").returncode == 0
    assert first["state"] == "processing"  # the other worker stays free: the needs hold
    assert all(job["state"] == "pending" for job in queued), queued
    previous = {b["id"]: a["id"] for a, b in itertools.pairwise([first, *queued])}
    for job in queued:  # each waits for the run before it to end, however it ends
        shown = run_json("show", job["id"])
        assert shown["needs"] == [{"job": previous[job["id"]], "on": "finished"}], shown
        waits = "processing" if previous[job["id"]] == first["id"] else "pending"
        assert shown["waiting_on"] == [
            {"job": previous[job["id"]], "on": "finished", "state": waits}
        ], shown
    created = schedule_runs(run_json)  # the pause is in: no more runs

    go.touch()
    wait_for(
        lambda: all(job["state"] == "completed" for job in schedule_runs(run_json)),
        timeout=30,
        what="every queued run to complete after the pause",
    )
    assert [job["id"] for job in schedule_runs(run_json)] == [job["id"] for job in created]
    workers.stop()

    ran = spans(notes)
    assert sorted(ran) == [job["id"] for job in created]
    order = sorted(ran, key=lambda run_id: ran[run_id][0])
    assert order == sorted(ran)  # in slot order
    for before, after in itertools.pairwise(order):
        assert ran[before][1] < ran[after][0], (before, after)  # one after the other
