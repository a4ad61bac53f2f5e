"""Schedule specs (SPEC 11): the schema, the checks it cannot express, and the typed result."""

from __future__ import annotations

import pytest

from queuectl import spec
from queuectl.errors import SpecInvalid
from queuectl.models import Catchup, JobSpec, Overlap, ScheduleSpec


def problems_of(text: str, source: str = "s.yaml") -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        spec.parse_specs(text, source)
    return [str(p) for p in info.value.problems]


def test_a_full_schedule_becomes_a_typed_schedule_spec() -> None:
    text = (
        "id: nightly-backup\n"
        "command: ./backup.sh\n"
        "timeout_ms: 3600000\n"
        "schedule:\n"
        '  cron: "30 2 * * *"\n'
        "  timezone: Europe/Berlin\n"
        "  catchup: all\n"
        "  catchup_window: 2d\n"
        "  overlap: replace\n"
        "  jitter: 90s\n"
        "  suspend: true\n"
        "  expect_success_within: 26h\n"
    )
    [loaded] = spec.parse_specs(text, "s.yaml")
    assert loaded.spec == ScheduleSpec(
        id="nightly-backup",
        template=JobSpec(command="./backup.sh", id="nightly-backup", timeout_ms=3_600_000),
        cron=("30 2 * * *",),
        timezone="Europe/Berlin",
        catchup=Catchup.ALL,
        catchup_window_ms=2 * 86_400_000,
        overlap=Overlap.REPLACE,
        jitter_ms=90_000,
        suspend=True,
        expect_success_within_ms=26 * 3_600_000,
    )


def test_defaults_and_every() -> None:
    [loaded] = spec.parse_specs("id: tick\ncommand: date\nschedule: {every: 15m}\n", "s.yaml")
    assert isinstance(loaded.spec, ScheduleSpec)
    assert loaded.spec.every_ms == 900_000 and loaded.spec.cron == ()
    assert (loaded.spec.timezone, loaded.spec.catchup, loaded.spec.overlap) == (
        "UTC",
        Catchup.LATEST,
        Overlap.SKIP,
    )
    assert loaded.spec.catchup_window_ms == 86_400_000 and loaded.spec.jitter_ms == 0


def test_a_cron_list_is_kept_in_order() -> None:
    text = "id: t\ncommand: x\nschedule:\n  cron: ['@hourly', '0 9 * * 1#2']\n"
    [loaded] = spec.parse_specs(text, "s.yaml")
    assert isinstance(loaded.spec, ScheduleSpec)
    assert loaded.spec.cron == ("@hourly", "0 9 * * 1#2")


def test_a_bad_cron_field_is_named_at_its_position() -> None:
    text = "id: t\ncommand: x\nschedule:\n  cron: '61 2 * * *'\n"
    assert problems_of(text) == [
        "s.yaml:4:9: schedule.cron: '61 2 * * *': bad minute "
        "(fields: minute hour day-of-month month day-of-week): fix the expression"
    ]


def test_a_bad_entry_of_a_cron_list_is_found_at_its_item() -> None:
    text = "id: t\ncommand: x\nschedule:\n  cron:\n    - '@daily'\n    - '0 0 * * 9'\n"
    assert problems_of(text) == [
        "s.yaml:6:7: schedule.cron.1: '0 0 * * 9': bad day-of-week "
        "(fields: minute hour day-of-month month day-of-week): fix the expression"
    ]


def test_an_unknown_time_zone_is_an_error_at_its_position() -> None:
    text = "id: t\ncommand: x\nschedule:\n  every: 1h\n  timezone: Europe/Atlantis\n"
    assert problems_of(text) == [
        "s.yaml:5:13: schedule.timezone: 'Europe/Atlantis' is not an IANA time zone: "
        "use e.g. UTC, Europe/Berlin, America/New_York"
    ]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("{catchup: sometimes, every: 1h}", "schedule.catchup: 'sometimes' is not valid: use none"),
        ("{overlap: wait, every: 1h}", "schedule.overlap: 'wait' is not valid: use allow"),
        ("{every: 15 minutes}", "schedule.every: '15 minutes' is not valid: use a duration"),
        ("{every: 1h, cron: '@daily'}", "schedule: give either cron or every"),
        ("{timezone: UTC}", "schedule: give either cron or every"),
        ("{every: 1500ms}", "schedule.every: '1500ms': use whole seconds"),
        (
            "{every: 1h, retry: 3}",
            "schedule: Additional properties are not allowed ('retry' was unexpected)",
        ),
    ],
)
def test_schedule_field_errors(rule: str, expected: str) -> None:
    [problem] = problems_of(f"id: t\ncommand: x\nschedule: {rule}\n")
    assert expected in problem


def test_a_schedule_needs_an_id_and_no_run_at() -> None:
    text = "command: x\nrun_at: '2030-01-01T00:00:00Z'\nschedule: {every: 1h}\n"
    assert problems_of(text) == [
        "s.yaml:1:1: id: a schedule needs an id (its runs are named <id>@<slot>): add one",
        "s.yaml:2:9: run_at: a schedule's runs start at their slots: remove run_at "
        "(use jitter to spread them)",
    ]


def test_at_sign_is_refused_in_ids_so_run_ids_never_collide() -> None:
    [problem] = problems_of("id: backup@20261201T013000Z\ncommand: x\n")
    assert problem.startswith("s.yaml:1:5: id: 'backup@20261201T013000Z' is not valid")


def test_identical_declarations_hash_alike_and_any_change_shows() -> None:
    base = "id: t\ncommand: x\nschedule: {every: 1h}\n"
    [a] = spec.parse_specs(base, "a.yaml")
    [b] = spec.parse_specs(base, "b.yaml")
    [c] = spec.parse_specs(base.replace("1h", "2h"), "c.yaml")
    [d] = spec.parse_specs(base.replace("command: x", "command: y"), "d.yaml")
    assert a.spec.spec_hash == b.spec.spec_hash
    assert len({a.spec.spec_hash, c.spec.spec_hash, d.spec.spec_hash}) == 3


def test_a_schedule_template_cannot_need_jobs() -> None:
    text = "- {id: t, command: x, needs: [a], schedule: {every: 1h}}\n"
    with pytest.raises(SpecInvalid) as caught:
        spec.parse_specs(text, "s.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "s.yaml:1:30: needs: a schedule's runs cannot need other jobs: remove needs "
        "(overlap: queue runs each after the previous one)"
    ]
