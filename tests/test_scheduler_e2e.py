"""End to end: the scheduler that every `worker run` (and `worker start`) runs, in real
processes on both stores. Conditions are polled with a deadline, never slept for."""

from __future__ import annotations

import itertools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from queuectl.schedules import Timetable, run_id
from queuectl.store import Store

from .conftest import Run, wait_for
from .processes import Workers, pid_gone

pytestmark = [pytest.mark.e2e, pytest.mark.both_backends, pytest.mark.usefixtures("fast_polling")]

CREATED = re.compile(r"^\S+ schedule tick: created run (\S+)$", re.MULTILINE)
RUN_ID = re.compile(r"^tick@\d{8}T\d{6}Z$")


def every_second(overlap: str = "skip") -> str:
    return f"id: tick\ncommand: 'true'\nschedule:\n  every: 1s\n  overlap: {overlap}\n"


@pytest.fixture
def add_schedule(run: Run) -> Callable[[str], None]:
    def add(spec: str) -> None:
        result = run("enqueue", "-", input=spec)
        assert result.returncode == 0, result.stderr

    return add


def runs(run_json: Callable[..., Any], state: str | None = None) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = run_json("list", "--schedule", "tick", "--limit", "1000")
    return [job for job in jobs if state is None or job["state"] == state]


def assert_each_slot_created_once(output: str, jobs: list[dict[str, Any]]) -> None:
    """Every run is named after a slot, and the schedulers created each of them once."""
    created = Counter(CREATED.findall(output))
    assert all(RUN_ID.fullmatch(job["id"]) for job in jobs), jobs
    assert [run_id for run_id, n in created.items() if n > 1] == []
    assert set(created) == {job["id"] for job in jobs}


def test_worker_run_creates_and_completes_each_slots_run_once(
    run_json: Callable[..., Any], add_schedule: Callable[[str], None], workers: Workers
) -> None:
    add_schedule(every_second())
    workers.start("--count", "2")

    wait_for(lambda: len(runs(run_json, "completed")) >= 3, timeout=30, what="3 completed runs")
    workers.stop()

    jobs = runs(run_json)
    assert_each_slot_created_once(workers.output(), jobs)
    assert all(job["schedule"] == "tick" for job in jobs)


@pytest.mark.parametrize("count", [1, 2])
def test_schedules_tick_while_every_worker_is_busy(
    count: int,
    tmp_path: Path,
    run: Run,
    run_json: Callable[..., Any],
    add_schedule: Callable[[str], None],
    workers: Workers,
) -> None:
    go = tmp_path / "go"
    for n in range(count):  # one long job per worker, running until the test says go
        spec = f"id: long-{n}\ncommand: 'while [ ! -e {go} ]; do sleep 0.05; done'\n"
        assert run("enqueue", "-", input=spec).returncode == 0
    workers.start("--count", str(count))
    wait_for(
        lambda: len(run_json("list", "--state", "processing")) == count,
        timeout=30,
        what=f"{count} long job(s) running",
    )
    add_schedule(every_second(overlap="allow"))

    wait_for(lambda: len(runs(run_json)) >= 2, timeout=30, what="2 runs while workers are busy")
    assert runs(run_json, "completed") == []  # no worker was free: the scheduler ran beside them
    assert len(run_json("list", "--state", "processing")) == count
    go.touch()
    wait_for(lambda: runs(run_json, "completed"), timeout=30, what="a run completed")
    workers.stop()

    assert_each_slot_created_once(workers.output(), runs(run_json))


def test_a_drain_creates_no_runs(
    run: Run, run_json: Callable[..., Any], add_schedule: Callable[[str], None]
) -> None:
    add_schedule(every_second(overlap="allow"))
    # The job runs for 1 s, and until 1 s past the schedule's first slot, whichever ends
    # later: a scheduler in the drain would have had a second to make that slot's run.
    first_slot = datetime.fromisoformat(run_json("schedule", "show", "tick")["next_slots"][0])
    until = first_slot.timestamp() + 1
    wait = f"import time; time.sleep(max(1.0, {until!r} - time.time()))"
    job = json.dumps({"id": "slow", "command": [sys.executable, "-c", wait]})
    assert run("enqueue", job).returncode == 0

    result = run("worker", "run", "--count", "2", "--drain")

    assert result.returncode == 0, result.stderr
    assert run_json("show", "slow")["state"] == "completed"
    assert runs(run_json) == []
    assert "schedule tick" not in result.stderr


def test_a_detached_worker_runs_a_scheduler(
    home: Path, run: Run, run_json: Callable[..., Any], add_schedule: Callable[[str], None]
) -> None:
    add_schedule(every_second())
    assert run("worker", "start").returncode == 0
    try:
        wait_for(lambda: runs(run_json, "completed"), timeout=30, what="a completed run")
    finally:
        result = run("worker", "stop", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    log = (home / "logs" / "workers.log").read_text()
    assert_each_slot_created_once(log, runs(run_json))


def slots_of(jobs: list[dict[str, Any]]) -> list[datetime]:
    stamps = (datetime.strptime(j["id"].split("@")[1], "%Y%m%dT%H%M%SZ") for j in jobs)
    return sorted(stamp.replace(tzinfo=UTC) for stamp in stamps)


def test_many_supervisors_create_each_of_10_slots_exactly_once(
    backend: str,
    run_json: Callable[..., Any],
    add_schedule: Callable[[str], None],
    workers: Workers,
) -> None:
    supervisors = 2 if backend == "sqlite" else 4  # one SQLite file; PostgreSQL for a fleet
    add_schedule(every_second(overlap="allow"))  # every slot gets a run: none is skipped
    for _ in range(supervisors):
        workers.start("--count", "1")

    # 10 slots after the first (each a second of wall time: 20 cost the suite 20 s more).
    wait_for(lambda: len(runs(run_json)) >= 11, timeout=60, what="11 runs")
    workers.stop()

    jobs = runs(run_json)
    assert_each_slot_created_once(workers.output(), jobs)
    slots = slots_of(jobs)
    # No slot skipped between the first and the last: one run per second, each once.
    assert [b - a for a, b in itertools.pairwise(slots)] == [timedelta(seconds=1)] * (
        len(slots) - 1
    )


def rewind(store: Store, backend: str, schedule_id: str, by: timedelta) -> datetime:
    """Leave the store as a scheduler that stopped `by` ago would have: the schedule's last
    tick (and its creation) that far back, its next tick due now. Returns the rewound tick."""
    [schedule] = store.list_schedules(schedule_id)
    at = schedule.last_tick_at - by
    mark = ":{}" if backend == "sqlite" else "%({})s"
    sql = "UPDATE schedules SET last_tick_at = {at}, created_at = {at}, next_slot_at = {at} "
    sql += "WHERE id = {id}"
    params = {"at": store.d.time(at), "id": schedule_id}  # type: ignore[attr-defined]
    store.d.write(  # type: ignore[attr-defined]
        lambda conn: conn.execute(sql.format(at=mark.format("at"), id=mark.format("id")), params)
    )
    return at


@pytest.mark.parametrize("catchup", ["all", "latest", "none"])
def test_a_scheduler_back_after_10_slots_creates_what_catchup_says(
    catchup: str, backend: str, store: Store, run_json: Callable[..., Any], add_schedule: Any
) -> None:
    add_schedule(
        f"id: tick\ncommand: 'true'\nschedule: {{every: 1m, catchup: {catchup}, overlap: allow}}\n"
    )
    stopped_at = rewind(store, backend, "tick", timedelta(minutes=10, seconds=30))

    [ticked] = run_json("schedule", "tick")  # the scheduler is back: one pass

    back_at = datetime.fromisoformat(run_json("schedule", "show", "tick")["last_tick_at"])
    slots = list(Timetable(every_ms=60_000).slots_between(stopped_at, back_at))
    assert len(slots) in (10, 11)  # 10 m 30 s: 10 or 11 minute boundaries
    on_time = [s for s in slots if back_at - s < timedelta(minutes=1)]
    expected = {"all": slots, "latest": slots[-1:], "none": on_time}[catchup]
    assert ticked["created"] == [run_id("tick", s) for s in expected]
    assert ticked["missed"] == len(slots) - len(expected)
    assert run_json("schedule", "show", "tick")["missed"] == len(slots) - len(expected)
    assert [j["id"] for j in runs(run_json)] == ticked["created"]
    # Nothing more is due, unless the clock crossed a minute since: then only that new slot.
    again = [run for ticked in run_json("schedule", "tick") for run in ticked["created"]]
    again_at = datetime.fromisoformat(run_json("schedule", "show", "tick")["last_tick_at"])
    new_slots = Timetable(every_ms=60_000).slots_between(back_at, again_at)
    assert again == [run_id("tick", s) for s in new_slots]


def test_overlap_skip_makes_no_run_while_a_long_one_goes_on(
    tmp_path: Path,
    run_json: Callable[..., Any],
    add_schedule: Callable[[str], None],
    workers: Workers,
) -> None:
    go = tmp_path / "go"
    command = f"while [ ! -e {go} ]; do sleep 0.05; done"
    add_schedule(f"id: tick\ncommand: '{command}'\nschedule: {{every: 1s, overlap: skip}}\n")
    workers.start("--count", "2")  # a worker stays free: only the overlap rule holds runs back

    wait_for(lambda: runs(run_json, "processing"), timeout=30, what="the first run running")
    missed = lambda: run_json("schedule", "show", "tick")["missed"]  # noqa: E731
    wait_for(lambda: missed() >= 3, timeout=30, what="3 slots skipped")
    assert len(runs(run_json)) == 1  # the long run only, on a free second worker
    go.touch()
    wait_for(lambda: len(runs(run_json, "completed")) >= 2, timeout=30, what="a second run")
    workers.stop()

    assert missed() >= 3
    assert_each_slot_created_once(workers.output(), runs(run_json))


def test_overlap_replace_cancels_and_stops_the_running_run(
    tmp_path: Path,
    run_json: Callable[..., Any],
    add_schedule: Callable[[str], None],
    workers: Workers,
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    command = f'echo $$ > {pids}/"$QUEUECTL_JOB_ID"; exec sleep 60'
    add_schedule(f"id: tick\ncommand: '{command}'\nschedule: {{every: 2s, overlap: replace}}\n")
    workers.start("--count", "2")

    replaced = lambda: runs(run_json, "canceled")  # noqa: E731
    started = lambda: [j for j in replaced() if (pids / j["id"]).exists()]  # noqa: E731
    wait_for(lambda: len(replaced()) >= 2 and started(), timeout=30, what="two runs replaced")
    for job in replaced():
        # By a later slot's run: the next one, or a later one where a loaded machine let
        # the scheduler skip slots (a run replaced before it started wrote no pid).
        successor = re.fullmatch(r"replaced by (tick@\d{8}T\d{6}Z)", job["last_error"] or "")
        assert successor is not None and successor.group(1) > job["id"], job
    for job in started():
        pid = int((pids / job["id"]).read_text())
        wait_for(lambda pid=pid: pid_gone(pid), timeout=10, what=f"{job['id']} stopped")
    assert len(runs(run_json, "processing")) <= 1  # never two runs at once, on 2 workers
    workers.stop()
    assert "(overlap: replace)" in workers.output()


def test_pause_stops_runs_and_resume_starts_them_again(
    run: Run, run_json: Callable[..., Any], add_schedule: Callable[[str], None], workers: Workers
) -> None:
    add_schedule(every_second(overlap="allow"))
    workers.start("--count", "1")
    wait_for(lambda: runs(run_json, "completed"), timeout=30, what="a completed run")

    assert run("schedule", "pause", "tick").returncode == 0
    paused = {j["id"] for j in runs(run_json)}
    paused_at = time.monotonic()
    wait_for(lambda: time.monotonic() - paused_at > 3, what="three slots while paused")
    assert {j["id"] for j in runs(run_json)} == paused  # no run for the slots while paused
    assert run_json("status")["schedules"] == {"active": 0, "suspended": 1, "overdue": 0}

    assert run("schedule", "resume", "tick").returncode == 0
    wait_for(lambda: len(runs(run_json)) >= len(paused) + 2, timeout=30, what="runs again")
    workers.stop()

    # The latest of the slots skipped while paused ran (catchup: latest), the others missed.
    assert run_json("schedule", "show", "tick")["missed"] >= 2
    assert_each_slot_created_once(workers.output(), runs(run_json))
