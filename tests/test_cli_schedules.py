"""`queuectl schedule ...` through the installed command, on both stores: create, list,
show, pause/resume, trigger, delete, tick, and concurrent ticks creating a slot's run once."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from queuectl.core import Queue
from queuectl.models import JobSpec, ScheduleSpec, utcnow
from queuectl.store import Store

from .conftest import QUEUECTL, Run

pytestmark = pytest.mark.both_backends

HOURLY = """\
id: hourly
command: echo hourly
schedule:
  cron: "0 * * * *"
  timezone: America/New_York
"""


def test_enqueue_a_schedule_then_list_show_and_pause_resume(
    run: Run, run_json: Callable[..., Any]
) -> None:
    created = run("enqueue", "-", input=HOURLY)
    assert (created.returncode, created.stdout) == (0, "hourly\n")
    assert run("enqueue", "-", input=HOURLY).stdout == "hourly\n"  # identical: a no-op
    [listed] = run_json("schedule", "list")
    assert (listed["id"], listed["suspended"], listed["missed"]) == ("hourly", False, 0)
    assert listed["schedule"]["cron"] == ["0 * * * *"]
    assert listed["template"]["command"] == "echo hourly"
    table = run("schedule", "list", "--format", "table").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "WHEN", "TIMEZONE"]
    assert table[1].split()[:2] == ["hourly", "0"]

    shown = run_json("schedule", "show", "hourly")
    slots = [datetime.fromisoformat(s) for s in shown["next_slots"]]
    assert len(slots) == 5
    assert all(s.minute == 0 and s.second == 0 for s in slots)
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(slots))
    assert slots[0].utcoffset() in (timedelta(hours=-5), timedelta(hours=-4))  # the zone's
    assert slots[0] > utcnow()

    assert run("schedule", "pause", "hourly").stdout == "paused hourly\n"
    assert run_json("schedule", "show", "hourly")["suspended"] is True
    assert run_json("status")["schedules"] == {"active": 0, "suspended": 1, "overdue": 0}
    assert run("schedule", "resume", "hourly").stdout == "resumed hourly\n"
    assert run_json("status")["schedules"] == {"active": 1, "suspended": 0, "overdue": 0}


def test_trigger_prints_the_run_id_and_delete_cancels_pending_runs(
    run: Run, run_json: Callable[..., Any]
) -> None:
    run("enqueue", "-", input=HOURLY)
    triggered = run("schedule", "trigger", "hourly")
    assert triggered.returncode == 0, triggered.stderr
    run_id = triggered.stdout.strip()
    assert run_id.startswith("hourly@") and run_id.endswith("Z") and len(run_id) == 23
    job = run_json("show", run_id)
    assert (job["schedule"], job["state"], job["command"]) == ("hourly", "pending", "echo hourly")
    assert [j["id"] for j in run_json("list", "--schedule", "hourly")] == [run_id]
    assert run_json("list", "--schedule", "other") == []

    deleted = run("schedule", "delete", "hourly")
    assert deleted.stdout == "deleted hourly; canceled 1 run(s) waiting to start\n"
    assert run_json("show", run_id)["state"] == "canceled"
    assert run_json("schedule", "list") == []


def test_unknown_schedules_and_bad_options_are_one_line_errors(run: Run) -> None:
    for command in ("show", "pause", "resume", "trigger", "delete"):
        result = run("schedule", command, "nope")
        assert result.returncode == 1
        assert result.stderr == (
            "Error: schedule 'nope' not found: check the id with `queuectl schedule list`\n"
        )
    usage = run("schedule", "list", "--format", "xml")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    delayed = run("enqueue", "--delay", "5m", "-", input=HOURLY)
    assert delayed.returncode == 2
    assert delayed.stderr.startswith("Error: --delay applies to jobs, not schedules")


def a_due_schedule(store: Store) -> None:
    """A schedule created 90 minutes ago, never ticked since: its latest slot is due now."""
    past = utcnow() - timedelta(minutes=90)
    spec = ScheduleSpec(id="late", template=JobSpec(command="true", id="late"), every_ms=3_600_000)
    Queue(store, clock=lambda: past).add_schedules([spec])


def test_tick_creates_the_due_run_once(run_json: Callable[..., Any], store: Store) -> None:
    a_due_schedule(store)
    [ticked] = run_json("schedule", "tick")
    [created] = ticked["created"]
    assert created.startswith("late@") and created.endswith("0000Z")
    assert run_json("schedule", "tick") == []
    assert [j["id"] for j in run_json("list", "--schedule", "late")] == [created]
    assert run_json("schedule", "show", "late")["missed"] == ticked["missed"]


def test_concurrent_ticks_create_a_slot_run_exactly_once(
    run_json: Callable[..., Any], store: Store, db_url: str
) -> None:
    a_due_schedule(store)
    ticks = [
        subprocess.Popen(
            [QUEUECTL, "schedule", "tick"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "QUEUECTL_DATABASE_URL": db_url},
        )
        for _ in range(6)
    ]
    outputs = []
    for process in ticks:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        outputs.append(json.loads(out))
    created = [run_id for out in outputs for t in out for run_id in t["created"]]
    assert len(created) == 1
    runs = run_json("list", "--schedule", "late")
    assert [j["id"] for j in runs] == created
