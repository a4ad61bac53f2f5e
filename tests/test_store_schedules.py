"""The schedules in the store (both backends): upsert, pause, delete, and the tick's
compare-and-set that creates each slot's run once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from queuectl.errors import ScheduleNotFound
from queuectl.models import INLINE, JobSpec, JobState, NewJob, Origin, ScheduleSpec, Source
from queuectl.schedules import run_id
from queuectl.store import NewSchedule, Store, Tick

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = ScheduleSpec(
    id="nightly", template=JobSpec(command=("echo", "hi"), id="nightly"), cron=("0 2 * * *",)
)


def schedule(spec: ScheduleSpec = SPEC) -> NewSchedule:
    return NewSchedule(spec, INLINE)


def run(slot: datetime, spec: ScheduleSpec = SPEC) -> NewJob:
    job_spec = replace(spec.template, id=run_id(spec.id, slot), run_at=slot)
    return NewJob(
        id=run_id(spec.id, slot),
        spec=job_spec,
        max_retries=3,
        available_at=slot,
        source=INLINE,
        schedule_id=spec.id,
    )


def tick(last: datetime, at: datetime, slots: list[datetime], missed: int = 0) -> Tick:
    return Tick(
        schedule_id=SPEC.id,
        spec_hash=SPEC.spec_hash,
        last_tick_at=last,
        tick_at=at,
        runs=[run(slot) for slot in slots],
        missed=missed,
        last_missed_at=slots[0] - timedelta(days=1) if missed else None,
        next_slot_at=at + timedelta(days=1),
    )


def test_upsert_creates_then_is_a_no_op_then_updates_the_template(store: Store) -> None:
    assert store.upsert_schedule(schedule(), T0) == "created"
    assert store.upsert_schedule(schedule(), T0 + timedelta(hours=1)) == "unchanged"
    changed = replace(SPEC, template=replace(SPEC.template, command="./backup.sh"))
    source = Source(Origin.APPLY, "jobs/nightly.yaml", "abc123")
    later = T0 + timedelta(hours=2)
    assert store.upsert_schedule(NewSchedule(changed, source), later) == "updated"
    [stored] = store.list_schedules()
    assert stored.spec == changed
    assert stored.source == source
    assert (stored.created_at, stored.updated_at) == (T0, later)
    assert stored.last_tick_at == T0  # an update keeps the tick state: no slot replayed
    assert (stored.suspended, stored.missed, stored.last_missed_at, stored.busy) == (
        False,
        0,
        None,
        False,
    )


def test_list_one_and_suspend_resume(store: Store) -> None:
    store.upsert_schedule(schedule(), T0)
    other = replace(SPEC, id="hourly", template=replace(SPEC.template, id="hourly"))
    store.upsert_schedule(schedule(other), T0)
    assert [s.id for s in store.list_schedules()] == ["hourly", "nightly"]
    assert [s.id for s in store.list_schedules("nightly")] == ["nightly"]
    assert store.list_schedules("nope") == []
    store.set_suspended("nightly", True, T0)
    assert store.list_schedules("nightly")[0].suspended is True
    store.set_suspended("nightly", False, T0)
    assert store.list_schedules("nightly")[0].suspended is False
    with pytest.raises(ScheduleNotFound, match="'nope' not found"):
        store.set_suspended("nope", True, T0)


def test_tick_creates_runs_and_a_stale_tick_writes_nothing(store: Store) -> None:
    store.upsert_schedule(schedule(), T0)
    slot = T0 + timedelta(hours=2)
    now = slot + timedelta(seconds=1)
    assert store.tick([tick(T0, now, [slot], missed=2)], now) == [[]]
    # A second scheduler that read the same last tick loses the compare-and-set.
    assert store.tick([tick(T0, now + timedelta(seconds=1), [slot])], now) == [None]
    [job] = store.list_jobs(schedule_id="nightly")
    assert (job.id, job.schedule_id) == ("nightly@20260101T020000Z", "nightly")
    assert job.state is JobState.PENDING
    assert job.to_dict()["schedule"] == "nightly"
    [stored] = store.list_schedules()
    assert (stored.last_tick_at, stored.missed, stored.busy) == (now, 2, True)
    assert stored.last_missed_at == slot - timedelta(days=1)
    assert store.list_jobs(schedule_id="other") == []
    assert store.next_tick_at() == now + timedelta(days=1)


def test_due_schedules_are_those_whose_next_slot_has_come(store: Store) -> None:
    store.upsert_schedule(schedule(), T0)  # new: due at once, for its first tick
    assert [s.id for s in store.due_schedules(T0)] == ["nightly"]
    assert store.next_tick_at() == T0
    next_slot = T0 + timedelta(hours=2)
    store.tick([replace(tick(T0, T0, []), next_slot_at=next_slot)], T0)
    assert store.due_schedules(next_slot - timedelta(seconds=1)) == []
    assert [s.id for s in store.due_schedules(next_slot)] == ["nightly"]
    store.set_suspended("nightly", True, T0)
    assert (store.due_schedules(next_slot), store.next_tick_at()) == ([], None)
    store.set_suspended("nightly", False, T0)  # resuming asks for a tick now
    assert store.next_tick_at() == T0


def test_tick_leaves_a_triggered_run_as_it_is_and_skips_a_suspended_schedule(
    store: Store,
) -> None:
    store.upsert_schedule(schedule(), T0)
    slot = T0 + timedelta(hours=2)
    store.insert_jobs([run(slot)], T0)  # as `schedule trigger` creates one
    assert store.tick([tick(T0, slot, [slot])], slot) == [[]]
    assert [j.id for j in store.list_jobs(schedule_id="nightly")] == [run_id("nightly", slot)]
    store.set_suspended("nightly", True, slot)
    later = slot + timedelta(days=1)
    assert store.tick([tick(slot, later, [later])], later) == [None]
    assert len(store.list_jobs(schedule_id="nightly")) == 1


def test_delete_cancels_waiting_runs_only(store: Store) -> None:
    store.upsert_schedule(schedule(), T0)
    slots = [T0 + timedelta(days=i) for i in range(2)]
    store.tick([tick(T0, slots[1], slots)], slots[1])
    claimed = store.claim_next("w", [], slots[1], slots[1] + timedelta(minutes=1), "tok")
    assert claimed is not None and claimed.id == run_id("nightly", slots[0])
    assert store.delete_schedule("nightly", slots[1]) == [run_id("nightly", slots[1])]
    assert store.list_schedules() == []
    states = {j.id: j.state for j in store.list_jobs(schedule_id="nightly")}
    assert states == {
        run_id("nightly", slots[0]): JobState.PROCESSING,
        run_id("nightly", slots[1]): JobState.CANCELED,
    }
    with pytest.raises(ScheduleNotFound):
        store.delete_schedule("nightly", slots[1])


def test_a_batch_with_one_stale_tick_writes_the_others(store: Store) -> None:
    other = replace(SPEC, id="hourly", template=replace(SPEC.template, id="hourly"))
    store.upsert_schedule(schedule(), T0)
    store.upsert_schedule(schedule(other), T0)
    slot = T0 + timedelta(hours=2)
    fresh = tick(T0, slot, [slot])
    stale = replace(fresh, schedule_id="hourly", spec_hash=other.spec_hash, last_tick_at=slot)
    stale = replace(stale, runs=[run(slot, other)])
    assert store.tick([fresh, stale], slot) == [[], None]
    assert [j.id for j in store.list_jobs(schedule_id="nightly")] == [run_id("nightly", slot)]
    assert store.list_jobs(schedule_id="hourly") == []
