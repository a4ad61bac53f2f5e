"""Slot arithmetic of schedules (SPEC section 11): pure functions of the instants given.

No clock is read here: callers pass `now` (and the last tick) in, so tests move time
by hand. cronsim lists cron matches as naive wall-clock times; this module maps each
wall time to one instant in the schedule's zone, which is where the DST rules live:
a wall time inside a spring-forward gap runs at the first instant after the gap, and
a wall time that happens twice runs once, at its first occurrence.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .models import Catchup, ScheduleSpec, to_ms

# cronsim and zoneinfo are imported where a cron expression or a zone is read: every
# `queuectl` command imports this module, and most never need them (~7 ms of start-up).
if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

CRON_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
CRON_FIELDS = "minute hour day-of-month month day-of-week"
ON_TIME = timedelta(minutes=1)  # a slot less late than this is due, not caught up
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def cron_problem(expr: str) -> str | None:
    """Why `expr` is not a 5-field cron expression or macro, naming the field; else None."""
    text = CRON_MACROS.get(expr.strip().lower(), expr)
    if len(text.split()) != 5:
        return (
            f"{expr!r} has {len(text.split())} fields: a cron expression has 5 "
            f"({CRON_FIELDS}), or is one of {', '.join(CRON_MACROS)}"
        )
    from cronsim import CronSim, CronSimError

    try:
        CronSim(text, datetime(2000, 1, 1))
    except CronSimError as exc:  # "Bad minute", "Bad day-of-week", ...
        return f"{expr!r}: {str(exc).lower()} (fields: {CRON_FIELDS})"
    return None


def zone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone, or None."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{name!r} is not an IANA time zone: use e.g. UTC, Europe/Berlin, America/New_York"
    return None


def wall_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive wall-clock time in `zone`, by SPEC 11's DST rules."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(UTC)
    earlier = first.astimezone(UTC)  # for a repeated wall time, fold=0 is the first pass
    if earlier.astimezone(zone).replace(tzinfo=None) == wall:
        return earlier
    # In a gap: fold=1 reads it with the offset after the change, landing before the gap;
    # fold=0 with the offset before, landing after it. The change lies between: find it.
    after_offset = second.utcoffset()
    low, high = second.astimezone(UTC), first.astimezone(UTC)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == after_offset:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0)


@dataclass(frozen=True)
class Timetable:
    """When a schedule's slots fall: cron expressions in a zone, or a fixed interval."""

    cron: tuple[str, ...] = ()
    every_ms: int | None = None
    timezone: str = "UTC"

    @classmethod
    def of(cls, schedule: ScheduleSpec) -> Timetable:
        return cls(cron=schedule.cron, every_ms=schedule.every_ms, timezone=schedule.timezone)

    def slots_after(self, after: datetime) -> Iterator[datetime]:
        """Every slot strictly after `after`, in order, as UTC instants (endless)."""
        if self.every_ms is not None:
            step = self.every_ms
            index = to_ms(after) // step + 1
            while True:
                yield _EPOCH + timedelta(milliseconds=index * step)
                index += 1
        last = after
        for slot in heapq.merge(*(self._cron_slots(expr, after) for expr in self.cron)):
            if slot > last:  # several wall times in a gap (or expressions) share an instant
                last = slot
                yield slot

    def _cron_slots(self, expr: str, after: datetime) -> Iterator[datetime]:
        from zoneinfo import ZoneInfo

        from cronsim import CronSim

        zone = ZoneInfo(self.timezone)
        text = CRON_MACROS.get(expr.strip().lower(), expr)
        # Naive wall times: cronsim does no DST handling of its own on them.
        start = after.astimezone(zone).replace(tzinfo=None)
        for wall in CronSim(text, start):
            slot = wall_to_instant(wall, zone)
            if slot > after:  # the first pass of a repeated hour can lie before `after`
                yield slot

    def next_slots(self, after: datetime, count: int) -> list[datetime]:
        slots = self.slots_after(after)
        return [next(slots) for _ in range(count)]

    def slots_between(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """The slots in (after, until]."""
        for slot in self.slots_after(after):
            if slot > until:
                return
            yield slot


@dataclass(frozen=True)
class Due:
    """What one tick does for one schedule: the slots to create, and what it gives up."""

    create: tuple[datetime, ...]
    missed: int
    last_missed_at: datetime | None
    next_slot: datetime  # the first slot after now: when the schedule next needs a tick


def due_slots(
    timetable: Timetable,
    *,
    last_tick: datetime,
    now: datetime,
    catchup: Catchup,
    catchup_window_ms: int,
) -> Due:
    """The slots in (last_tick, now] to create, by the catch-up policy; the rest are missed.

    `all` creates every slot within the window, `latest` only the most recent one (a
    scheduler that fell a few sub-minute slots behind creates one run, not a burst), and
    `none` only the slots less than a minute late.
    """
    window_start = now - timedelta(milliseconds=catchup_window_ms)
    slots, next_slot = _walk(timetable, last_tick, now)
    on_time = [s for s in slots if now - s < ON_TIME]
    late = [s for s in slots if now - s >= ON_TIME and s >= window_start]
    if catchup is Catchup.ALL:
        create = late + on_time
    elif catchup is Catchup.LATEST:
        create = (late + on_time)[-1:]
    else:
        create = on_time
    chosen = set(create)
    missed = [s for s in slots if s not in chosen]
    return Due(tuple(create), len(missed), missed[-1] if missed else None, next_slot)


@functools.lru_cache(maxsize=4096)
def _walk(
    timetable: Timetable, after: datetime, until: datetime
) -> tuple[tuple[datetime, ...], datetime]:
    """The slots in (after, until], and the first one after `until`: one walk.

    Cached: schedules ticked together share `after` and `until`, so those with the same
    timetable (ten thousand `@hourly` ones, say) walk it once per tick."""
    slots: list[datetime] = []
    for slot in timetable.slots_after(after):
        if slot > until:
            return tuple(slots), slot
        slots.append(slot)
    raise AssertionError("a timetable has no end")


def run_id(schedule_id: str, slot: datetime) -> str:
    """The id of a slot's run: `<schedule id>@<YYYYMMDDTHHMMSSZ>` (the slot in UTC)."""
    return f"{schedule_id}@{slot.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def jitter_for(schedule_id: str, slot: datetime, jitter_ms: int) -> timedelta:
    """A delay in [0, jitter) fixed per schedule and slot: every scheduler computes the same."""
    if jitter_ms <= 0:
        return timedelta(0)
    digest = hashlib.sha256(run_id(schedule_id, slot).encode()).digest()
    return timedelta(milliseconds=int.from_bytes(digest[:8], "big") % jitter_ms)


def format_in_zone(slots: Sequence[datetime], timezone: str) -> list[str]:
    """Slots as RFC 3339 instants in the schedule's zone (as `schedule show` lists them)."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(timezone)
    return [slot.astimezone(zone).isoformat() for slot in slots]
