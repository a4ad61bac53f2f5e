"""Queue's schedule methods with an injected clock, on both stores: what a tick creates,
what it counts missed, overlap, pause/resume, trigger and delete."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from queuectl.core import Queue
from queuectl.errors import ScheduleNotFound
from queuectl.models import Catchup, JobSpec, JobState, Overlap, ScheduleSpec
from queuectl.store import Transition

from .conftest import FakeClock

MINUTE = 60_000
EVERY_MINUTE = ScheduleSpec(
    id="beat", template=JobSpec(command="true", id="beat"), every_ms=MINUTE, overlap=Overlap.ALLOW
)


def runs(queue: Queue, schedule_id: str = "beat") -> list[str]:
    return [job.id for job in queue.list_jobs(schedule_id=schedule_id)]


def test_a_new_schedule_starts_with_the_first_slot_after_it_was_created(
    queue: Queue, clock: FakeClock
) -> None:
    clock.advance(30_000)  # 00:00:30
    [added] = queue.add_schedules([EVERY_MINUTE])
    assert (added.id, added.created) == ("beat", True)
    assert queue.add_schedules([EVERY_MINUTE])[0].created is False
    assert queue.tick() == []
    clock.advance(30_000)  # 00:01:00: the first slot
    [ticked] = queue.tick()
    assert ticked.created == ("beat@20260101T000100Z",)
    assert queue.tick() == []  # the same instant again: nothing new
    [run] = queue.list_jobs(schedule_id="beat")
    assert (run.schedule_id, run.state, run.available_at) == ("beat", JobState.PENDING, clock())
    assert run.to_dict()["schedule"] == "beat"


def test_catchup_latest_creates_the_newest_late_slot_and_counts_the_rest_missed(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([EVERY_MINUTE])
    clock.advance(10 * MINUTE + 5_000)  # ten slots passed while no scheduler ran
    [ticked] = queue.tick()
    assert ticked.created == ("beat@20260101T001000Z",)
    assert ticked.missed == 9
    schedule = queue.schedule("beat")
    assert schedule.missed == 9
    assert schedule.last_missed_at == clock() - timedelta(minutes=1, seconds=5)


def test_catchup_all_creates_every_slot(queue: Queue, clock: FakeClock) -> None:
    queue.add_schedules([replace(EVERY_MINUTE, catchup=Catchup.ALL)])
    clock.advance(3 * MINUTE)
    assert queue.tick()[0].created == (
        "beat@20260101T000100Z",
        "beat@20260101T000200Z",
        "beat@20260101T000300Z",
    )


def test_overlap_skip_counts_a_slot_missed_while_the_previous_run_is_pending(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([replace(EVERY_MINUTE, overlap=Overlap.SKIP)])
    clock.advance(MINUTE)
    assert queue.tick()[0].created == ("beat@20260101T000100Z",)
    clock.advance(MINUTE)
    [ticked] = queue.tick()  # the 00:01 run was never claimed
    assert (ticked.created, ticked.missed) == ((), 1)
    queue.cancel("beat@20260101T000100Z")
    clock.advance(MINUTE)
    assert queue.tick()[0].created == ("beat@20260101T000300Z",)
    assert queue.schedule("beat").missed == 1


def test_pause_stops_runs_and_resume_catches_up_as_catchup_says(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([EVERY_MINUTE])
    queue.pause("beat")
    clock.advance(5 * MINUTE)
    assert queue.tick() == []
    assert queue.status()["schedules"] == {"active": 0, "suspended": 1, "overdue": 0}
    queue.resume("beat")
    assert queue.status()["schedules"] == {"active": 1, "suspended": 0, "overdue": 0}
    [ticked] = queue.tick()  # catchup latest: the newest of the five
    assert (ticked.created, ticked.missed) == (("beat@20260101T000500Z",), 4)


def test_trigger_creates_one_run_now_and_delete_cancels_waiting_runs(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([EVERY_MINUTE])
    clock.advance(12_345)
    assert queue.trigger("beat") == "beat@20260101T000012Z"
    assert queue.trigger("beat") == "beat@20260101T000012Z"  # the same second: the same run
    assert runs(queue) == ["beat@20260101T000012Z"]
    assert queue.delete_schedule("beat") == ["beat@20260101T000012Z"]
    assert queue.get("beat@20260101T000012Z").state is JobState.CANCELED
    with pytest.raises(ScheduleNotFound):
        queue.schedule("beat")
    with pytest.raises(ScheduleNotFound):
        queue.trigger("beat")


def test_next_slots_are_in_the_schedule_zone(queue: Queue) -> None:
    spec = replace(EVERY_MINUTE, every_ms=None, cron=("30 2 * * *",), timezone="Europe/Berlin")
    queue.add_schedules([spec])
    assert queue.next_slots(queue.schedule("beat"), 2) == [
        "2026-01-01T02:30:00+01:00",
        "2026-01-02T02:30:00+01:00",
    ]


def claim(queue: Queue, clock: FakeClock, job_id: str) -> str:
    """Claim `job_id` as a worker of another host would (nothing here to signal); its token."""
    token = f"token-{job_id}"
    job = queue.store.claim_next("elsewhere:1:ns:x", (), clock(), clock() + timedelta(1), token)
    assert job is not None and job.id == job_id
    return token


def complete(queue: Queue, clock: FakeClock, job_id: str) -> None:
    token = claim(queue, clock, job_id)
    outcome = Transition(JobState.COMPLETED, 1, clock(), 0, None, None)
    assert queue.store.finish(job_id, token, outcome, clock())


def test_overlap_replace_cancels_the_runs_still_going_and_creates_the_new_one(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([replace(EVERY_MINUTE, overlap=Overlap.REPLACE, catchup=Catchup.ALL)])
    clock.advance(MINUTE)
    queue.tick()
    claim(queue, clock, "beat@20260101T000100Z")  # running on a worker elsewhere
    clock.advance(MINUTE)
    [ticked] = queue.tick()
    assert ticked.created == ("beat@20260101T000200Z",)
    assert ticked.replaced == ("beat@20260101T000100Z",)
    previous = queue.get("beat@20260101T000100Z")
    # Canceled at once; it keeps its claim until its worker has stopped its process.
    assert (previous.state, previous.last_error) == (
        JobState.CANCELED,
        "replaced by beat@20260101T000200Z",
    )
    assert previous.lease_token is not None
    clock.advance(3 * MINUTE)  # three slots due at once: only the newest runs
    [ticked] = queue.tick()
    assert ticked.created == ("beat@20260101T000500Z",)
    assert (ticked.replaced, ticked.missed) == (("beat@20260101T000200Z",), 2)
    assert queue.get("beat@20260101T000200Z").state is JobState.CANCELED
    assert queue.get("beat@20260101T000500Z").state is JobState.PENDING


def test_expect_success_within_makes_a_schedule_overdue_until_a_run_completes(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([replace(EVERY_MINUTE, expect_success_within_ms=3 * MINUTE)])
    clock.advance(MINUTE)
    queue.tick()
    assert queue.schedule("beat").overdue is False  # counted from its creation
    clock.advance(2 * MINUTE + 1)
    assert queue.schedule("beat").overdue is True
    assert queue.status()["schedules"]["overdue"] == 1
    complete(queue, clock, "beat@20260101T000100Z")
    schedule = queue.schedule("beat")
    assert (schedule.overdue, schedule.last_success_at) == (False, clock())
    assert schedule.to_dict()["overdue"] is False
    clock.advance(3 * MINUTE + 1)
    assert queue.schedule("beat").overdue is True
    queue.pause("beat")  # stopped on purpose: not overdue
    assert queue.status()["schedules"] == {"active": 0, "suspended": 1, "overdue": 0}


def test_a_schedule_without_expect_success_within_is_never_overdue(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([EVERY_MINUTE])
    clock.advance(365 * 24 * 60 * MINUTE)
    assert queue.schedule("beat").overdue is False


def test_overlap_skip_with_catchup_all_runs_only_the_newest_due_slot(
    queue: Queue, clock: FakeClock
) -> None:
    queue.add_schedules([replace(EVERY_MINUTE, catchup=Catchup.ALL, overlap=Overlap.SKIP)])
    clock.advance(3 * MINUTE)
    [ticked] = queue.tick()
    assert (ticked.created, ticked.missed) == (("beat@20260101T000300Z",), 2)
    assert queue.schedule("beat").last_missed_at == clock() - timedelta(minutes=1)
