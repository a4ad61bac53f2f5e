"""`queuectl apply`: the GitOps plan, driven through the installed command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import Run

pytestmark = [pytest.mark.e2e, pytest.mark.both_backends]
EXAMPLES = Path(__file__).parent.parent / "examples"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def plan_of(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {entry["id"]: entry["action"] for entry in json.loads(result.stdout)}


def test_apply_examples_twice_is_a_noop(run: Run, run_json: Any) -> None:
    first = run("apply", str(EXAMPLES))
    assert first.returncode == 0, first.stderr
    assert set(plan_of(first).values()) == {"create"}
    assert len(plan_of(first)) == 13  # 12 jobs and the hourly-report schedule
    before = run_json("list")
    second = run("apply", str(EXAMPLES))
    assert second.returncode == 0
    assert set(plan_of(second).values()) == {"unchanged"}
    assert run_json("list") == before


def test_update_in_place_while_pending_and_never_run(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    spec = write(tmp_path / "jobs" / "a.yaml", "id: a\ncommand: echo one\n")
    assert plan_of(run("apply", str(spec))) == {"a": "create"}
    created = run_json("show", "a")
    write(spec, "id: a\ncommand: echo two\npriority: 4\n")
    result = run("apply", str(spec))
    assert (result.returncode, plan_of(result)) == (0, {"a": "update"})
    job = run_json("show", "a")
    assert (job["command"], job["priority"], job["created_at"]) == (
        "echo two",
        4,
        created["created_at"],
    )


def test_conflict_after_a_run_and_replace(run: Run, run_json: Any, tmp_path: Path) -> None:
    spec = write(tmp_path / "a.yaml", "id: a\ncommand: 'true'\n")
    run("apply", str(spec))
    assert run("worker", "run", "--drain").returncode == 0
    write(spec, "id: a\ncommand: echo changed\n")
    result = run("apply", str(spec))
    assert result.returncode == 1
    (entry,) = json.loads(result.stdout)
    assert entry == {
        "id": "a",
        "kind": "job",
        "action": "conflict",
        "source": str(spec),
        "reason": "the job is completed and has run: use --replace to enqueue it afresh",
    }
    assert result.stderr.strip().endswith("Error: 1 conflict(s) left alone: see the plan's reasons")
    assert run_json("show", "a")["command"] == "true"
    table = run("apply", "--dry-run", "--format", "table", str(spec)).stdout.splitlines()
    assert table[1].split(None, 4)[1:] == [  # nothing cut
        "job",
        "conflict",
        str(spec),
        "the job is completed and has run: use --replace to enqueue it afresh",
    ]
    replaced = run("apply", "--replace", str(spec))
    assert (replaced.returncode, plan_of(replaced)) == (0, {"a": "replace"})
    job = run_json("show", "a")
    assert (job["state"], job["attempts"], job["command"]) == ("pending", 0, "echo changed")


def test_one_bad_file_changes_nothing(run: Run, run_json: Any, tmp_path: Path) -> None:
    write(tmp_path / "jobs" / "good.yaml", "id: good\ncommand: x\n")
    write(tmp_path / "jobs" / "bad.yaml", "id: bad\ncommand: x\npriority: high\n")
    result = run("apply", str(tmp_path / "jobs"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"Error: {tmp_path}/jobs/bad.yaml:3:11: priority: 'high' is not of type 'integer'",
        "Error: nothing applied: fix the 1 problem(s) above",
    ]
    assert run_json("list") == []


def test_every_applied_job_needs_an_id(run: Run, tmp_path: Path) -> None:
    spec = write(tmp_path / "a.yaml", "- id: a\n  command: x\n- command: y\n")
    result = run("apply", str(spec))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"Error: {spec}:3:3: id: apply needs an explicit id: add `id:` to every job"
    )


def test_dry_run_writes_nothing(run: Run, run_json: Any, home: Path) -> None:
    result = run("apply", "--dry-run", str(EXAMPLES))
    assert result.returncode == 0
    assert set(plan_of(result).values()) == {"create"}
    assert result.stderr.startswith("dry run, nothing written: 13 create")
    assert run_json("list") == []


def test_prune_cancels_pending_jobs_no_longer_declared(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    jobs = tmp_path / "jobs"
    write(jobs / "a.yaml", "- {id: a, command: x}\n- {id: b, command: y}\n")
    write(tmp_path / "elsewhere" / "c.yaml", "id: c\ncommand: z\n")
    run("apply", str(jobs))
    run("apply", str(tmp_path / "elsewhere"))
    run("enqueue", "true", "--id", "inline-job")
    write(jobs / "a.yaml", "- {id: a, command: x}\n")
    assert plan_of(run("apply", str(jobs))) == {"a": "unchanged"}
    assert run_json("show", "b")["state"] == "pending"
    result = run("apply", "--prune", str(jobs))
    assert result.returncode == 0
    assert json.loads(result.stdout)[1]["action"] == "prune"
    assert plan_of(result) == {"a": "unchanged", "b": "prune"}
    states = {j["id"]: j["state"] for j in run_json("list")}
    assert states == {"a": "pending", "b": "canceled", "c": "pending", "inline-job": "pending"}


def test_source_file_and_git_commit_are_recorded(run: Run, run_json: Any, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    spec = write(repo / "jobs" / "a.yaml", "id: a\ncommand: x\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "jobs"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    run("apply", str(repo / "jobs"))
    job = run_json("show", "a")
    assert job["source"] == f"apply:{spec.resolve()}"
    assert job["source_commit"] == head
    outside = write(tmp_path / "loose" / "b.yaml", "id: b\ncommand: x\n")
    run("apply", str(outside))
    assert run_json("show", "b")["source_commit"] is None


def test_table_format(run: Run) -> None:
    result = run("apply", "--format", "table", str(EXAMPLES))
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "KIND", "ACTION", "SOURCE", "REASON"]
    assert len(lines) == 14  # the header, 12 jobs and the hourly-report schedule


def plan_rows(result: subprocess.CompletedProcess[str]) -> list[tuple[str, str, str]]:
    return [(e["id"], e["kind"], e["action"]) for e in json.loads(result.stdout)]


SCHEDULED = (
    "- {id: setup, command: echo setup}\n"
    "- {id: nightly, command: %s, schedule: {cron: '30 2 * * *'}}\n"
)


def test_schedules_are_created_updated_and_pruned_beside_jobs(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    spec = write(tmp_path / "decl" / "mixed.yaml", SCHEDULED % "./backup.sh")
    created = run("apply", str(spec.parent))
    assert created.returncode == 0, created.stderr
    assert plan_rows(created) == [("setup", "job", "create"), ("nightly", "schedule", "create")]
    schedule = run_json("schedule", "show", "nightly")
    assert (schedule["template"]["command"], schedule["source"]) == (
        "./backup.sh",
        f"apply:{spec.resolve()}",
    )
    assert plan_rows(run("apply", str(spec.parent))) == [
        ("setup", "job", "unchanged"),
        ("nightly", "schedule", "unchanged"),
    ]
    assert run_json("schedule", "show", "nightly")["updated_at"] == schedule["updated_at"]
    earlier = run("schedule", "trigger", "nightly").stdout.strip()
    write(spec, SCHEDULED % "./backup.sh --full")
    updated = run("apply", "--prune", str(spec.parent))
    assert plan_rows(updated) == [("setup", "job", "unchanged"), ("nightly", "schedule", "update")]
    assert run_json("schedule", "show", "nightly")["template"]["command"] == "./backup.sh --full"
    # The template is for runs not yet created; a declared schedule's run is never pruned.
    assert (run_json("show", earlier)["command"], run_json("show", earlier)["state"]) == (
        "./backup.sh",
        "pending",
    )
    write(spec, "- {id: setup, command: echo setup}\n")
    pruned = run("apply", "--prune", "--format", "table", str(spec.parent))
    assert pruned.returncode == 0, pruned.stderr
    assert [line.split()[:3] for line in pruned.stdout.splitlines()] == [
        ["ID", "KIND", "ACTION"],
        ["setup", "job", "unchanged"],
        ["nightly", "schedule", "prune"],
    ]
    assert run_json("schedule", "list") == []
    assert run_json("show", earlier)["state"] == "canceled"
    assert run_json("show", "setup")["state"] == "pending"


def test_prune_leaves_schedules_of_other_paths_and_of_enqueue(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    here = write(tmp_path / "here" / "s.yaml", "id: mine\ncommand: x\nschedule: {every: 1h}\n")
    write(tmp_path / "there" / "s.yaml", "id: theirs\ncommand: x\nschedule: {every: 1h}\n")
    run("apply", str(tmp_path / "there"))
    run("apply", str(here.parent))
    enqueued = run("enqueue", "-", input="id: inline\ncommand: x\nschedule: {every: 1h}\n")
    assert enqueued.returncode == 0, enqueued.stderr
    write(here, "id: kept\ncommand: x\nschedule: {every: 2h}\n")
    result = run("apply", "--prune", str(here.parent))
    assert plan_rows(result) == [("kept", "schedule", "create"), ("mine", "schedule", "prune")]
    assert [s["id"] for s in run_json("schedule", "list")] == ["inline", "kept", "theirs"]


def test_dry_run_and_an_invalid_file_change_no_schedule(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    decl = tmp_path / "decl"
    write(decl / "a.yaml", SCHEDULED % "./backup.sh")
    dry = run("apply", "--dry-run", str(decl))
    assert (dry.returncode, dry.stderr) == (0, "dry run, nothing written: 2 create\n")
    assert plan_rows(dry) == [("setup", "job", "create"), ("nightly", "schedule", "create")]
    assert (run_json("schedule", "list"), run_json("list")) == ([], [])
    bad = write(decl / "b.yaml", "id: later\ncommand: x\nschedule: {every: 1500ms}\n")
    result = run("apply", str(decl))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: {bad}:3:19: schedule.every: '1500ms': use whole seconds, at least 1s "
        "(run ids name the second)",
        "Error: nothing applied: fix the 1 problem(s) above",
    ]
    assert (run_json("schedule", "list"), run_json("list")) == ([], [])


def test_needs_on_unknown_ids_and_cycles_through_stored_jobs_are_refused(
    run: Run, run_json: Any, tmp_path: Path
) -> None:
    ghost = write(tmp_path / "ghost" / "b.yaml", "id: b\ncommand: x\nneeds: [ghost]\n")
    dry = run("apply", "--dry-run", str(ghost.parent))
    assert dry.returncode == 1
    assert dry.stderr.splitlines()[0] == (
        f"Error: {ghost}:1:1: needs: job 'b' needs 'ghost', which is neither declared here "
        "nor in the store: declare it, or enqueue it first"
    )
    later = 'run_at: "2031-01-01T00:00:00Z"\n'
    one = write(tmp_path / "one" / "a.yaml", f"id: a\ncommand: x\n{later}")
    write(tmp_path / "two" / "b.yaml", "id: b\ncommand: x\nneeds: [a]\n")
    assert run("apply", str(one.parent)).returncode == 0
    assert run("apply", str(tmp_path / "two")).returncode == 0
    one.write_text(f"id: a\ncommand: x\n{later}needs: [b]\n")  # a -> b -> a, via the store
    result = run("apply", str(one.parent))
    assert (result.returncode, result.stderr) == (
        1,
        "Error: job 'a' would wait for itself: its needs lead back to it through jobs "
        "already in the store; remove one of the needs\n",
    )
    assert run_json("show", "a")["needs"] == []  # nothing applied
