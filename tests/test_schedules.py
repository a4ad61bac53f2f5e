"""Slot arithmetic (queuectl.schedules): instants given by hand, no clock read."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from queuectl.models import Catchup, duration_ms, format_duration
from queuectl.schedules import (
    Timetable,
    cron_problem,
    due_slots,
    jitter_for,
    run_id,
    wall_to_instant,
    zone_problem,
)

DAY_MS = 86_400_000


def local(slots: list[datetime], zone: str) -> list[str]:
    return [slot.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M %z") for slot in slots]


def test_every_slots_are_aligned_to_the_unix_epoch() -> None:
    table = Timetable(every_ms=15 * 60_000)
    after = datetime(2026, 5, 1, 10, 7, 13, tzinfo=UTC)
    assert table.next_slots(after, 3) == [
        datetime(2026, 5, 1, 10, 15, tzinfo=UTC),
        datetime(2026, 5, 1, 10, 30, tzinfo=UTC),
        datetime(2026, 5, 1, 10, 45, tzinfo=UTC),
    ]
    # Strictly after: a slot equal to `after` is not repeated.
    assert table.next_slots(datetime(2026, 5, 1, 10, 15, tzinfo=UTC), 1) == [
        datetime(2026, 5, 1, 10, 30, tzinfo=UTC)
    ]


def test_every_ignores_the_time_zone_across_dst() -> None:
    table = Timetable(every_ms=3_600_000, timezone="America/New_York")
    slots = table.next_slots(datetime(2026, 11, 1, 4, tzinfo=UTC), 4)
    assert [b - a for a, b in itertools.pairwise(slots)] == [timedelta(hours=1)] * 3


def test_daily_cron_in_berlin_runs_once_every_local_day_for_three_years() -> None:
    table = Timetable(cron=("30 2 * * *",), timezone="Europe/Berlin")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    slots = list(table.slots_between(start, datetime(2029, 1, 1, tzinfo=UTC)))
    zone = ZoneInfo("Europe/Berlin")
    days = [slot.astimezone(zone).date() for slot in slots]
    assert len(days) == len(set(days)) == (date(2029, 1, 1) - date(2026, 1, 1)).days
    times = {slot.astimezone(zone).strftime("%H:%M") for slot in slots}
    assert times == {"02:30", "03:00"}  # 03:00 only where 02:30 did not exist
    gap_days = [s.astimezone(zone).date() for s in slots if s.astimezone(zone).hour == 3]
    assert gap_days == [date(2026, 3, 29), date(2027, 3, 28), date(2028, 3, 26)]


@pytest.mark.parametrize(
    ("times", "after", "expected"),
    [
        # Spring forward: 02:00-03:00 does not exist; 02:30 runs at 03:00, once.
        (
            ("30 1 * * *", "30 2 * * *"),
            datetime(2026, 3, 7, 12, tzinfo=UTC),
            ["2026-03-08 01:30 -0500", "2026-03-08 03:00 -0400", "2026-03-09 01:30 -0400"],
        ),
        # Fall back: 01:00-02:00 happens twice; 01:30 runs once, in the first pass (EDT).
        (
            ("30 1 * * *",),
            datetime(2026, 10, 31, 12, tzinfo=UTC),
            ["2026-11-01 01:30 -0400", "2026-11-02 01:30 -0500", "2026-11-03 01:30 -0500"],
        ),
    ],
)
def test_new_york_transitions_for_a_fixed_time(
    times: tuple[str, ...], after: datetime, expected: list[str]
) -> None:
    zone = "America/New_York"
    slots = Timetable(cron=times, timezone=zone).next_slots(after, len(expected))
    assert local(slots, zone) == expected


def test_new_york_half_hourly_cron_skips_the_gap_and_the_repeated_hour() -> None:
    zone = "America/New_York"
    table = Timetable(cron=("*/30 * * * *",), timezone=zone)
    spring = table.next_slots(datetime(2026, 3, 8, 5, 30, tzinfo=UTC), 4)
    assert local(spring, zone) == [
        "2026-03-08 01:00 -0500",
        "2026-03-08 01:30 -0500",
        "2026-03-08 03:00 -0400",  # 02:00 and 02:30 do not exist: one run, after the gap
        "2026-03-08 03:30 -0400",
    ]
    fall = table.next_slots(datetime(2026, 11, 1, 4, 30, tzinfo=UTC), 5)
    assert local(fall, zone) == [
        "2026-11-01 01:00 -0400",
        "2026-11-01 01:30 -0400",
        "2026-11-01 02:00 -0500",  # the second 01:00 and 01:30 do not run again
        "2026-11-01 02:30 -0500",
        "2026-11-01 03:00 -0500",
    ]


def test_a_scheduler_inside_the_repeated_hour_does_not_rerun_its_first_pass() -> None:
    zone = "America/New_York"
    table = Timetable(cron=("*/30 * * * *",), timezone=zone)
    second_pass = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)  # 01:10 EST
    assert local(table.next_slots(second_pass, 1), zone) == ["2026-11-01 02:00 -0500"]


def test_lord_howe_thirty_minute_shift() -> None:
    zone = "Australia/Lord_Howe"
    table = Timetable(cron=("0 2 * * *", "15 1 * * *"), timezone=zone)
    spring = list(
        table.slots_between(datetime(2026, 10, 3, tzinfo=UTC), datetime(2026, 10, 5, tzinfo=UTC))
    )
    # 2026-10-04 02:00 -> 02:30 (+11): 02:00 does not exist and runs at 02:30.
    assert "2026-10-04 02:30 +1100" in local(spring, zone)
    fall = list(
        table.slots_between(datetime(2026, 4, 3, tzinfo=UTC), datetime(2026, 4, 6, tzinfo=UTC))
    )
    # 2026-04-05 02:00 (+11) -> 01:30 (+10:30): 01:45... happen twice; 01:15 is before that.
    assert local(fall, zone).count("2026-04-05 01:15 +1100") == 1
    assert sum(s.startswith("2026-04-05") for s in local(fall, zone)) == 2


def test_wall_to_instant_in_a_gap_is_the_first_instant_after_it() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert wall_to_instant(datetime(2026, 3, 29, 2, 30), berlin) == datetime(
        2026, 3, 29, 1, tzinfo=UTC
    )
    assert wall_to_instant(datetime(2026, 10, 25, 2, 30), berlin) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )


def test_a_cron_list_merges_and_deduplicates() -> None:
    table = Timetable(cron=("0 * * * *", "@hourly", "30 0 * * *"))
    slots = table.next_slots(datetime(2026, 1, 1, tzinfo=UTC), 3)
    assert slots == [
        datetime(2026, 1, 1, 0, 30, tzinfo=UTC),
        datetime(2026, 1, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 2, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("macro", "after", "first"),
    [
        ("@hourly", datetime(2026, 1, 1, 0, 5, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC)),
        ("@daily", datetime(2026, 1, 1, 5, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)),
        ("@weekly", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 4, tzinfo=UTC)),
        ("@monthly", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)),
        ("@yearly", datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    ],
)
def test_macros(macro: str, after: datetime, first: datetime) -> None:
    assert Timetable(cron=(macro,)).next_slots(after, 1) == [first]


CLEAN = datetime(2026, 6, 1, 12, tzinfo=UTC)  # now, in the catch-up tests


@pytest.mark.parametrize(
    ("catchup", "created", "missed"),
    [
        ("all", ["10:00", "10:30", "11:00", "11:30", "12:00"], 0),
        ("latest", ["12:00"], 4),
        ("none", ["12:00"], 4),
    ],
)
def test_catchup_after_downtime(catchup: str, created: list[str], missed: int) -> None:
    table = Timetable(every_ms=30 * 60_000)
    due = due_slots(
        table,
        last_tick=CLEAN - timedelta(hours=2, minutes=5),
        now=CLEAN + timedelta(seconds=20),
        catchup=Catchup(catchup),
        catchup_window_ms=DAY_MS,
    )
    assert [f"{s:%H:%M}" for s in due.create] == created
    assert due.missed == missed
    assert due.last_missed_at == (CLEAN - timedelta(minutes=30) if missed else None)


def test_catchup_window_limits_what_all_and_latest_create() -> None:
    table = Timetable(every_ms=3_600_000)
    kwargs = {
        "last_tick": CLEAN - timedelta(hours=10, minutes=1),
        "now": CLEAN + timedelta(minutes=30),
        "catchup_window_ms": 3 * 3_600_000,
    }
    everything = due_slots(table, catchup=Catchup.ALL, **kwargs)  # type: ignore[arg-type]
    assert [f"{s:%H}" for s in everything.create] == ["10", "11", "12"]
    assert everything.missed == 8
    latest = due_slots(table, catchup=Catchup.LATEST, **kwargs)  # type: ignore[arg-type]
    assert [f"{s:%H}" for s in latest.create] == ["12"]
    assert latest.missed == 10
    none = due_slots(table, catchup=Catchup.NONE, **kwargs)  # type: ignore[arg-type]
    assert none.create == () and none.missed == 11


def test_latest_gives_nothing_when_every_missed_slot_is_outside_the_window() -> None:
    due = due_slots(
        Timetable(cron=("@daily",)),
        last_tick=datetime(2026, 1, 1, 1, tzinfo=UTC),
        now=datetime(2026, 1, 10, 1, 30, tzinfo=UTC),
        catchup=Catchup.LATEST,
        catchup_window_ms=3_600_000,
    )
    assert due.create == () and due.missed == 9


def test_an_on_time_tick_creates_the_slot_and_misses_nothing() -> None:
    due = due_slots(
        Timetable(every_ms=1000),
        last_tick=CLEAN - timedelta(milliseconds=900),
        now=CLEAN + timedelta(milliseconds=40),
        catchup=Catchup.NONE,
        catchup_window_ms=DAY_MS,
    )
    assert due.create == (CLEAN,) and due.missed == 0


@pytest.mark.parametrize(("catchup", "created"), [("all", 5), ("latest", 1), ("none", 5)])
def test_a_scheduler_a_few_seconds_behind_creates_as_catchup_says(
    catchup: str, created: int
) -> None:
    due = due_slots(
        Timetable(every_ms=1000),
        last_tick=CLEAN - timedelta(seconds=5),
        now=CLEAN + timedelta(milliseconds=500),
        catchup=Catchup(catchup),
        catchup_window_ms=DAY_MS,
    )
    assert due.create[-1] == CLEAN  # the newest slot always runs
    assert (len(due.create), due.missed) == (created, 5 - created)


def test_run_id_is_the_slot_in_utc() -> None:
    slot = datetime(2026, 12, 1, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert run_id("nightly-backup", slot) == "nightly-backup@20261201T013000Z"


def test_jitter_is_fixed_per_slot_and_within_range() -> None:
    slots = Timetable(every_ms=60_000).next_slots(CLEAN, 200)
    delays = [jitter_for("s", slot, 30_000) for slot in slots]
    assert delays == [jitter_for("s", slot, 30_000) for slot in slots]
    assert all(timedelta(0) <= d < timedelta(seconds=30) for d in delays)
    assert len(set(delays)) > 150  # spread, not one fixed offset
    assert (
        jitter_for("other", slots[0], 30_000) != delays[0]
        or jitter_for("other", slots[1], 30_000) != delays[1]
    )
    assert jitter_for("s", slots[0], 0) == timedelta(0)


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("61 * * * *", "bad minute"),
        ("0 25 * * *", "bad hour"),
        ("0 0 32 * *", "bad day-of-month"),
        ("0 0 * 13 *", "bad month"),
        ("0 0 * * 8", "bad day-of-week"),
        ("* * *", "has 3 fields"),
        ("0 0 0 * * *", "has 6 fields"),
        ("@fortnightly", "has 1 fields"),
    ],
)
def test_cron_problem_names_the_field(expr: str, problem: str) -> None:
    found = cron_problem(expr)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    "expr", ["30 2 * * *", "@daily", "0 0 L * *", "0 9 * * 1#2", "*/5 * * * *"]
)
def test_cron_problem_accepts_valid_expressions(expr: str) -> None:
    assert cron_problem(expr) is None


def test_zone_problem() -> None:
    assert zone_problem("Europe/Berlin") is None
    assert zone_problem("UTC") is None
    assert "is not an IANA time zone" in (zone_problem("Mars/Olympus") or "")
    assert zone_problem("../etc/passwd") is not None


@pytest.mark.parametrize(
    ("text", "ms"), [("90s", 90_000), ("15m", 900_000), ("1d", DAY_MS), ("1h30m", 5_400_000)]
)
def test_duration_ms(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "15", "1.5h", "1 h", "h", "1w"])
def test_duration_ms_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        duration_ms(text)


@pytest.mark.parametrize(
    ("ms", "text"), [(21_600_000, "6h"), (5_400_000, "1h30m"), (1500, "1s500ms"), (0, "0s")]
)
def test_format_duration_reads_back(ms: int, text: str) -> None:
    assert format_duration(ms) == text
    assert duration_ms(text) == ms
