"""The scheduler loop in-process, on both stores: how long it sleeps, what it logs, and
that a failing tick never ends it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from queuectl.core import Queue, Ticked
from queuectl.models import JobSpec, JobState, Overlap, ScheduleSpec
from queuectl.scheduler import RESCAN_S, Scheduler
from queuectl.store import Store

from .conftest import FakeClock, wait_for

MINUTE = 60_000
DAY_MS = 86_400_000
EVERY_MINUTE = ScheduleSpec(
    id="beat", template=JobSpec(command="true", id="beat"), every_ms=MINUTE, overlap=Overlap.ALLOW
)


@pytest.fixture
def lines() -> list[str]:
    return []


@pytest.fixture
def scheduler(db_url: str, clock: FakeClock, lines: list[str]) -> Iterator[Scheduler]:
    opened = Scheduler(db_url, clock=clock, log=lines.append)
    yield opened
    opened.close()


def test_without_active_schedules_it_rereads_them_every_rescan_interval(
    scheduler: Scheduler, queue: Queue
) -> None:
    assert scheduler.run_once() == RESCAN_S
    queue.add_schedules([replace(EVERY_MINUTE, suspend=True)])
    assert scheduler.run_once() == RESCAN_S


def test_it_ticks_then_sleeps_until_the_next_slot(
    scheduler: Scheduler, queue: Queue, clock: FakeClock, lines: list[str]
) -> None:
    queue.add_schedules([EVERY_MINUTE])
    clock.advance(MINUTE - 2_000)  # 00:00:58
    assert scheduler.run_once() == 2.0
    assert queue.list_jobs(schedule_id="beat") == []
    clock.advance(2_000)  # 00:01:00, the slot
    assert scheduler.run_once() == RESCAN_S  # the next slot is a minute away: capped
    assert [job.id for job in queue.list_jobs(schedule_id="beat")] == ["beat@20260101T000100Z"]
    assert lines == ["schedule beat: created run beat@20260101T000100Z"]


def test_the_nearest_slot_of_any_schedule_sets_the_sleep(
    scheduler: Scheduler, queue: Queue, clock: FakeClock
) -> None:
    every_3s = replace(EVERY_MINUTE, id="fast", template=replace(EVERY_MINUTE.template, id="fast"))
    queue.add_schedules([EVERY_MINUTE, replace(every_3s, every_ms=3_000)])
    clock.advance(1_500)
    assert scheduler.run_once() == 1.5


def test_missed_slots_are_logged(
    scheduler: Scheduler, queue: Queue, clock: FakeClock, lines: list[str]
) -> None:
    queue.add_schedules([replace(EVERY_MINUTE, overlap=Overlap.SKIP)])
    clock.advance(3 * MINUTE)  # three slots at once: skip creates the newest only
    scheduler.run_once()
    assert lines == [
        "schedule beat: created run beat@20260101T000300Z",
        "schedule beat: 2 slot(s) missed",
    ]


def test_a_failing_tick_is_logged_and_the_loop_goes_on(
    db_url: str, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    calls: list[int] = []
    tick = Queue.tick

    def fails_once(self: Queue) -> list[Ticked]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("store on fire")
        return tick(self)

    monkeypatch.setattr(Queue, "tick", fails_once)
    scheduler = Scheduler(db_url, log=lines.append)  # the real clock: the loop really sleeps
    with scheduler.in_thread():
        wait_for(lambda: len(calls) >= 2, timeout=15, what="the tick after the failure")
    assert lines[0] == "scheduler: tick failed (store on fire); trying again in 1 s"
    assert not any("still in a tick" in line for line in lines)


def test_it_prunes_a_batch_of_old_ended_jobs_once_a_minute(
    scheduler: Scheduler, queue: Queue, store: Store, clock: FakeClock, lines: list[str]
) -> None:
    from .test_needs import end, job

    store.insert_jobs([job("old", clock)], clock())
    end(store, clock, "old", JobState.COMPLETED)
    clock.advance(3 * DAY_MS)
    store.insert_jobs([job("newer", clock)], clock())
    end(store, clock, "newer", JobState.COMPLETED)
    clock.advance(4 * DAY_MS + 1)  # old ended 7 days ago (keep_completed_days), newer 4
    scheduler.run_once()
    assert sorted(store.get_jobs(["old", "newer"])) == ["newer"]
    assert lines == ["pruned ended jobs past their keep_*_days: completed 1"]
    queue.config_set("keep_completed_days", "1")  # newer is past it now
    clock.advance(30_000)
    scheduler.run_once()
    assert store.get_job("newer") is not None  # a minute has not passed since the last prune
    clock.advance(30_000)
    scheduler.run_once()
    assert store.get_job("newer") is None
