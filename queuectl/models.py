"""The job model: specs as declared, jobs as stored, and their states."""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

DEFAULT_QUEUE = "default"
DEFAULT_PRIORITY = 0
OUTPUT_TAIL_BYTES = 4096
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
# A schedule's run: `<schedule id>@<slot>` (SPEC 11); `@` is refused in ids users give.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}@[0-9]{8}T[0-9]{6}Z$"


class JobState(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD = "dead"
    CANCELED = "canceled"


# States a job never leaves by itself (only `dlq retry` or apply --replace revive one).
END_STATES = frozenset({JobState.COMPLETED, JobState.DEAD, JobState.CANCELED})


DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def duration_ms(text: str) -> int:
    """Milliseconds of a duration string such as `90s`, `15m`, `1d` or `1h30m`.

    :raises ValueError: the text is not a duration.
    """
    parts = _DURATION.findall(text)
    if not parts or "".join(n + unit for n, unit in parts) != text:
        raise ValueError(f"{text!r} is not a duration: use e.g. 30s, 15m, 1h30m, 1d or 250ms")
    return sum(int(n) * DURATION_UNITS_MS[unit] for n, unit in parts)


def format_duration(ms: int) -> str:
    """`ms` as the duration strings specs use: 21600000 -> 6h, 5400000 -> 1h30m."""
    parts = []
    for unit, size in sorted(DURATION_UNITS_MS.items(), key=lambda item: -item[1]):
        count, ms = divmod(ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def utcnow() -> datetime:
    """Return the current time, timezone-aware UTC (the default clock)."""
    return datetime.now(UTC)


def format_time(value: datetime | None) -> str | None:
    """Format an instant as RFC 3339 UTC with milliseconds, e.g. 2026-01-02T03:04:05.678Z."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_ms(value: datetime) -> int:
    """Milliseconds since the Unix epoch (how stores keep instants)."""
    return int(value.timestamp() * 1000)


def from_ms(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1000, UTC)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_id_lock = threading.Lock()
_last_id: list[int] = [0, 0]  # [ms, random] of the newest id made by this process


def new_job_id() -> str:
    """Return a ULID: 26 characters that sort by creation time, unique across processes.

    Within one millisecond the random part is incremented, so ids made by one
    process (a batch enqueue, say) keep their order.
    """
    with _id_lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_id[0]:
            now_ms, rand = _last_id[0], _last_id[1] + 1
        else:
            rand = int.from_bytes(secrets.token_bytes(10), "big") >> 1  # room to increment
        _last_id[0], _last_id[1] = now_ms, rand
    value = (now_ms << 80) | rand
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class NeedOn(enum.StrEnum):
    """Which end of the needed job a `needs` edge waits for (SPEC 12)."""

    SUCCESS = "success"  # completed
    FAILURE = "failure"  # dead
    FINISHED = "finished"  # any end: completed, dead or canceled


# The end states that meet an edge; any other end state means it never will be met.
NEED_MET_BY = {
    NeedOn.SUCCESS: frozenset({JobState.COMPLETED}),
    NeedOn.FAILURE: frozenset({JobState.DEAD}),
    NeedOn.FINISHED: END_STATES,
}


@dataclass(frozen=True)
class Need:
    """One `needs` entry: the job to wait for, and for which end of it."""

    job: str
    on: NeedOn = NeedOn.SUCCESS

    def declared(self) -> str | dict[str, str]:
        return self.job if self.on is NeedOn.SUCCESS else {"job": self.job, "on": self.on.value}

    @classmethod
    def from_declared(cls, data: str | Mapping[str, str]) -> Need:
        if isinstance(data, str):
            return cls(data)
        return cls(data["job"], NeedOn(data.get("on", NeedOn.SUCCESS)))


class Jitter(enum.StrEnum):
    """How retry waits are spread (SPEC 13): none, full (0..wait) or equal (wait/2..wait)."""

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


@dataclass(frozen=True)
class RetryPolicy:
    """A job's own retry rules; what it leaves unset comes from the config."""

    on_exit_codes: tuple[int, ...] = ()  # non-empty: only these exit codes are retried
    never_on_exit_codes: tuple[int, ...] = ()  # these go to dead at once
    backoff_base: float | None = None
    backoff_max_ms: int | None = None
    jitter: Jitter = Jitter.NONE

    def declared(self) -> dict[str, Any]:
        return {
            "on_exit_codes": list(self.on_exit_codes),
            "never_on_exit_codes": list(self.never_on_exit_codes),
            "backoff_base": self.backoff_base,
            "backoff_max_ms": self.backoff_max_ms,
            "jitter": self.jitter.value,
        }

    @classmethod
    def from_declared(cls, data: Mapping[str, Any]) -> RetryPolicy:
        return cls(
            on_exit_codes=tuple(data["on_exit_codes"]),
            never_on_exit_codes=tuple(data["never_on_exit_codes"]),
            backoff_base=data["backoff_base"],
            backoff_max_ms=data["backoff_max_ms"],
            jitter=Jitter(data["jitter"]),
        )


@dataclass(frozen=True)
class JobSpec:
    """A job as declared: inline, in a spool file or in a committed spec file."""

    command: str | tuple[str, ...]
    id: str | None = None
    priority: int = DEFAULT_PRIORITY
    run_at: datetime | None = None
    max_retries: int | None = None
    timeout_ms: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    queue: str = DEFAULT_QUEUE
    labels: Mapping[str, str] = field(default_factory=dict)
    needs: tuple[Need, ...] = ()
    retry: RetryPolicy | None = None
    deadline_ms: int | None = None
    concurrency_key: str | None = None
    concurrency_limit: int = 1  # with a concurrency_key only

    def declared(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict, defaults filled in, without the id.

        The fields of SPEC 12-13 appear only when set: a job declared without them keeps
        the spec hash it had before they existed (apply sees it unchanged)."""
        declared: dict[str, Any] = {
            "command": list(self.command) if isinstance(self.command, tuple) else self.command,
            "priority": self.priority,
            "run_at": format_time(self.run_at),
            "max_retries": self.max_retries,
            "timeout_ms": self.timeout_ms,
            "env": dict(sorted(self.env.items())),
            "cwd": self.cwd,
            "queue": self.queue,
            "labels": dict(sorted(self.labels.items())),
        }
        if self.needs:
            declared["needs"] = [need.declared() for need in self.needs]
        if self.retry is not None:
            declared["retry"] = self.retry.declared()
        if self.deadline_ms is not None:
            declared["deadline_ms"] = self.deadline_ms
        if self.concurrency_key is not None:
            declared["concurrency_key"] = self.concurrency_key
            declared["concurrency_limit"] = self.concurrency_limit
        return declared

    @classmethod
    def from_declared(cls, data: Mapping[str, Any], *, id: str | None = None) -> JobSpec:
        """The spec `declared()` wrote (as stored with a schedule)."""
        command = data["command"]
        return cls(
            command=tuple(command) if isinstance(command, list) else command,
            id=id,
            priority=data["priority"],
            run_at=None if data["run_at"] is None else datetime.fromisoformat(data["run_at"]),
            max_retries=data["max_retries"],
            timeout_ms=data["timeout_ms"],
            env=dict(data["env"]),
            cwd=data["cwd"],
            queue=data["queue"],
            labels=dict(data["labels"]),
            needs=tuple(Need.from_declared(need) for need in data.get("needs", ())),
            retry=RetryPolicy.from_declared(data["retry"]) if "retry" in data else None,
            deadline_ms=data.get("deadline_ms"),
            concurrency_key=data.get("concurrency_key"),
            concurrency_limit=data.get("concurrency_limit", 1),
        )

    @property
    def spec_hash(self) -> str:
        """A hash of the declared spec: equal hashes mean an identical re-submission."""
        canonical = json.dumps(self.declared(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Origin(enum.StrEnum):
    """How a job reached the queue."""

    INLINE = "inline"
    SPOOL = "spool"
    APPLY = "apply"


@dataclass(frozen=True)
class Source:
    """Where a job came from: its origin, the spec file (spool, apply) and, for a file
    applied from a git work tree, its commit."""

    origin: Origin
    file: str | None = None
    commit: str | None = None

    def __str__(self) -> str:
        """As `show` prints it: inline, spool:<file> or apply:<file>."""
        return self.origin.value if self.file is None else f"{self.origin.value}:{self.file}"


INLINE = Source(Origin.INLINE)


@dataclass(frozen=True)
class NewJob:
    """A validated spec with everything decided at enqueue time."""

    id: str
    spec: JobSpec
    max_retries: int
    available_at: datetime
    source: Source
    schedule_id: str | None = None  # a schedule's run: the schedule it belongs to

    @classmethod
    def build(
        cls,
        spec: JobSpec,
        *,
        source: Source,
        now: datetime,
        default_max_retries: int,
        delay_ms: int = 0,
    ) -> NewJob:
        """The one way a spec becomes a job to insert, however it arrived: its id (the
        spec's, or a new one), its retry budget (the spec's, or the config's, copied in
        now) and when it is first due (run_at, or now plus a delay)."""
        return cls(
            id=spec.id or new_job_id(),
            spec=spec,
            max_retries=default_max_retries if spec.max_retries is None else spec.max_retries,
            available_at=spec.run_at or now + timedelta(milliseconds=delay_ms),
            source=source,
        )


class Catchup(enum.StrEnum):
    """Which slots a scheduler creates when it finds them late (SPEC 11)."""

    NONE = "none"
    LATEST = "latest"
    ALL = "all"


class Overlap(enum.StrEnum):
    """What a slot does while the previous run has not ended (SPEC 11)."""

    ALLOW = "allow"
    SKIP = "skip"
    QUEUE = "queue"
    REPLACE = "replace"


# Refused when a schedule is submitted, until the scheduler implements them.
DEFAULT_TIMEZONE = "UTC"
DEFAULT_CATCHUP_WINDOW_MS = 86_400_000


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as declared: when its slots fall, and the job spec of every run."""

    id: str
    template: JobSpec
    cron: tuple[str, ...] = ()
    every_ms: int | None = None
    timezone: str = DEFAULT_TIMEZONE
    catchup: Catchup = Catchup.LATEST
    catchup_window_ms: int = DEFAULT_CATCHUP_WINDOW_MS
    overlap: Overlap = Overlap.SKIP
    jitter_ms: int = 0
    suspend: bool = False
    expect_success_within_ms: int | None = None

    @classmethod
    def from_declared(
        cls, schedule_id: str, fields: Mapping[str, Any], template: JobSpec
    ) -> ScheduleSpec:
        """The spec `declared()` wrote (as the store keeps it)."""
        return cls(
            id=schedule_id,
            template=template,
            cron=tuple(fields["cron"] or ()),
            every_ms=fields["every_ms"],
            timezone=fields["timezone"],
            catchup=Catchup(fields["catchup"]),
            catchup_window_ms=fields["catchup_window_ms"],
            overlap=Overlap(fields["overlap"]),
            jitter_ms=fields["jitter_ms"],
            suspend=fields["suspend"],
            expect_success_within_ms=fields["expect_success_within_ms"],
        )

    def declared(self) -> dict[str, Any]:
        """The schedule fields as a JSON-ready dict, defaults filled in."""
        return {
            "cron": list(self.cron) or None,
            "every_ms": self.every_ms,
            "timezone": self.timezone,
            "catchup": self.catchup.value,
            "catchup_window_ms": self.catchup_window_ms,
            "overlap": self.overlap.value,
            "jitter_ms": self.jitter_ms,
            "suspend": self.suspend,
            "expect_success_within_ms": self.expect_success_within_ms,
        }

    @property
    def spec_hash(self) -> str:
        """A hash of the whole declaration: equal hashes mean an identical re-submission."""
        whole = {"schedule": self.declared(), "template": self.template.declared()}
        canonical = json.dumps(whole, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Job:
    """A job as stored, with its lifecycle fields."""

    id: str
    command: str | tuple[str, ...]
    priority: int
    run_at: datetime | None
    max_retries: int
    timeout_ms: int | None
    env: Mapping[str, str]
    cwd: str | None
    queue: str
    labels: Mapping[str, str]
    state: JobState
    attempts: int
    created_at: datetime
    updated_at: datetime
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    last_error: str | None
    worker_id: str | None
    source: Source
    spec_hash: str
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    output_tail: str = ""
    schedule_id: str | None = None
    needs: tuple[Need, ...] = ()
    waiting: int = 0  # needs not met yet: claimable only at 0
    retry: RetryPolicy | None = None
    deadline_ms: int | None = None
    first_started_at: datetime | None = None  # the deadline counts from here
    concurrency_key: str | None = None
    concurrency_limit: int = 1

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Job:
        """A Job from a value for every field, as a store reads it: without the frozen
        __init__, whose object.__setattr__ per field cost ~12 µs, on every claim."""
        if fields.keys() != _JOB_FIELDS:
            raise TypeError(f"Job fields missing or unknown: {set(fields) ^ _JOB_FIELDS}")
        job = object.__new__(cls)
        job.__dict__.update(fields)
        return job

    @property
    def stopping(self) -> bool:
        """Canceled while running, and its processes may not be gone yet."""
        return self.state is JobState.CANCELED and self.lease_token is not None

    @property
    def ended(self) -> bool:
        """In an end state, with no process left: a job canceled while running keeps its
        claim until its worker (or recovery) has stopped it."""
        return self.state in END_STATES and self.lease_token is None

    def to_dict(self) -> dict[str, Any]:
        """The job as shown by `show` and `list` (JSON-ready)."""
        return {
            "id": self.id,
            "command": list(self.command) if isinstance(self.command, tuple) else self.command,
            "state": self.state.value,
            "priority": self.priority,
            "queue": self.queue,
            "attempts": self.attempts,
            "max_retries": self.max_retries,
            "timeout_ms": self.timeout_ms,
            "run_at": format_time(self.run_at),
            "env": dict(self.env),
            "cwd": self.cwd,
            "labels": dict(self.labels),
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "available_at": format_time(self.available_at),
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
            "exit_code": self.exit_code,
            "last_error": self.last_error,
            "worker_id": self.worker_id,
            "lease_expires_at": format_time(self.lease_expires_at),
            "source": str(self.source),
            "source_commit": self.source.commit,
            "spec_hash": self.spec_hash,
            "schedule": self.schedule_id,
            "needs": [need.declared() for need in self.needs],
            "retry": None if self.retry is None else self.retry.declared(),
            "deadline_ms": self.deadline_ms,
            "first_started_at": format_time(self.first_started_at),
            "concurrency_key": self.concurrency_key,
            "concurrency_limit": self.concurrency_limit if self.concurrency_key else None,
        }


_JOB_FIELDS = Job.__dataclass_fields__.keys()


@dataclass(frozen=True)
class Schedule:
    """A schedule as stored: its declaration, where it came from, and its tick state."""

    spec: ScheduleSpec
    source: Source
    suspended: bool
    last_tick_at: datetime  # every slot up to here is created or counted missed
    missed: int
    last_missed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    active_run: str | None  # the newest run pending, processing or failed (to retry)
    last_success_at: datetime | None = None  # when a run last completed
    overdue: bool = False  # as of the reader's clock: see with_overdue
    stored_hash: str = ""  # the spec hash as stored: what a tick's compare-and-set expects

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def busy(self) -> bool:
        """A run has not ended yet: what `overlap` is about."""
        return self.active_run is not None

    def with_overdue(self, now: datetime) -> Schedule:
        """This schedule with `overdue` set as of `now`: it expects a success within some
        time, and no run completed for that long (counted from its creation before the
        first success). A suspended schedule is not overdue: it was stopped on purpose."""
        within = self.spec.expect_success_within_ms
        if within is None or self.suspended:
            return self
        since = self.last_success_at or self.created_at
        return replace(self, overdue=now - since > timedelta(milliseconds=within))

    def to_dict(self) -> dict[str, Any]:
        """The schedule as `schedule list` and `schedule show` print it (JSON-ready)."""
        return {
            "id": self.id,
            "schedule": self.spec.declared(),
            "template": self.spec.template.declared(),
            "suspended": self.suspended,
            "last_tick_at": format_time(self.last_tick_at),
            "missed": self.missed,
            "last_missed_at": format_time(self.last_missed_at),
            "last_success_at": format_time(self.last_success_at),
            "overdue": self.overdue,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "source": str(self.source),
            "source_commit": self.source.commit,
            "spec_hash": self.spec.spec_hash,
        }


@dataclass(frozen=True)
class WorkerInfo:
    """A registered worker process, as `status` shows it."""

    id: str
    pid: int
    host: str
    started_at: datetime
    heartbeat_at: datetime
    lease_expires_at: datetime
    current_job: str | None
    queues: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "host": self.host,
            "started_at": format_time(self.started_at),
            "heartbeat_at": format_time(self.heartbeat_at),
            "current_job": self.current_job,
            "queues": list(self.queues) or None,
        }


def worker_host_pid(worker_id: str) -> tuple[str, int | None]:
    """The host and pid a worker id names (see new_worker_id)."""
    host, _, rest = worker_id.partition(":")
    pid, _, _ = rest.partition(":")
    return host, int(pid) if pid.isdigit() else None


def worker_namespace(worker_id: str) -> str | None:
    """The boot-and-PID-namespace key a worker id carries (see new_worker_id).

    None for an id that cannot tell: written by queuectl before ids carried a key
    (`host:pid:random`), or by a worker that could not read its own (`host:pid:-:random`).
    """
    parts = worker_id.split(":")
    return parts[2] if len(parts) == 4 and parts[2] != "-" else None


@functools.cache
def namespace_key() -> str | None:
    """A short key for this process's boot and PID namespace, or None where /proc cannot
    tell (not Linux).

    Processes with the same key see the same pids. A host name alone does not say that:
    host-networked containers and cloned VMs share one, yet a pid in one means nothing
    in another (issue 14).
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return hashlib.sha256(f"{boot}/{pid_ns}".encode()).hexdigest()[:8]


def worker_is_local(worker_id: str) -> bool:
    """True when the worker runs on this host, boot and PID namespace, so its pid names the
    same process here: it can be checked and signalled from here."""
    import socket  # only workers need it; enqueue stays lean

    key = worker_namespace(worker_id)
    host, _ = worker_host_pid(worker_id)
    return key is not None and key == namespace_key() and host == socket.gethostname()


def new_worker_id() -> str:
    """A worker id, `host:pid:namespace key:random`: readable, unique per boot and PID
    namespace (see namespace_key), and a random suffix against pid reuse."""
    import socket

    key = namespace_key() or "-"
    return f"{socket.gethostname()}:{os.getpid()}:{key}:{secrets.token_hex(2)}"
