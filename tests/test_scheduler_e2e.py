"""End to end: the scheduler that every `worker run` (and `worker start`) runs, in real
processes on both stores. Conditions are polled with a deadline, never slept for."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Run, wait_for
from .test_worker_e2e import Workers

pytestmark = [pytest.mark.e2e, pytest.mark.both_backends]

CREATED = re.compile(r"^\S+ schedule tick: created run (\S+)$", re.MULTILINE)
RUN_ID = re.compile(r"^tick@\d{8}T\d{6}Z$")


def every_second(overlap: str = "skip") -> str:
    return f"id: tick\ncommand: 'true'\nschedule:\n  every: 1s\n  overlap: {overlap}\n"


@pytest.fixture
def started(home: Path, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(home, tmp_path)
    try:
        yield workers
    finally:
        workers.cleanup()


@pytest.fixture(autouse=True)
def fast_polling(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUEUECTL_POLL_INTERVAL_MS", "50")


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
    run_json: Callable[..., Any], add_schedule: Callable[[str], None], started: Workers
) -> None:
    add_schedule(every_second())
    started.start("--count", "2")

    wait_for(lambda: len(runs(run_json, "completed")) >= 3, timeout=30, what="3 completed runs")
    started.stop()

    jobs = runs(run_json)
    assert_each_slot_created_once(started.output(), jobs)
    assert all(job["schedule"] == "tick" for job in jobs)


def test_two_supervisors_on_one_store_create_each_slots_run_once(
    run_json: Callable[..., Any], add_schedule: Callable[[str], None], started: Workers
) -> None:
    add_schedule(every_second(overlap="allow"))  # every slot gets a run: none is skipped
    started.start("--count", "2")
    started.start("--count", "2")

    wait_for(lambda: len(runs(run_json, "completed")) >= 4, timeout=30, what="4 completed runs")
    started.stop()

    jobs = runs(run_json)
    assert_each_slot_created_once(started.output(), jobs)
    assert len(jobs) >= 4


@pytest.mark.parametrize("count", [1, 2])
def test_schedules_tick_while_every_worker_is_busy(
    count: int,
    tmp_path: Path,
    run: Run,
    run_json: Callable[..., Any],
    add_schedule: Callable[[str], None],
    started: Workers,
) -> None:
    go = tmp_path / "go"
    for n in range(count):  # one long job per worker, running until the test says go
        spec = f"id: long-{n}\ncommand: 'while [ ! -e {go} ]; do sleep 0.05; done'\n"
        assert run("enqueue", "-", input=spec).returncode == 0
    started.start("--count", str(count))
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
    started.stop()

    assert_each_slot_created_once(started.output(), runs(run_json))


def test_a_drain_creates_no_runs(
    run: Run, run_json: Callable[..., Any], add_schedule: Callable[[str], None]
) -> None:
    add_schedule(every_second(overlap="allow"))
    # The job outlasts at least one slot, so a scheduler in the drain would have made a run.
    assert run("enqueue", "-", input="id: slow\ncommand: sleep 2.5\n").returncode == 0

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
