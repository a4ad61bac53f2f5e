"""Queue: enqueue, inspect, cancel, the dead letter queue and config (what the CLI calls)."""

from __future__ import annotations

import codecs
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal

from . import config as config_mod
from .config import Config
from .errors import (
    InvalidState,
    JobNotFound,
    ScheduleNotFound,
    UsageProblem,
    WaitTimedOut,
    first_few,
)
from .logcap import read_chunks, resume_after_rewrite
from .models import (
    END_STATES,
    INLINE,
    NEED_MET_BY,
    Job,
    JobSpec,
    JobState,
    Need,
    NeedOn,
    NewJob,
    Overlap,
    Schedule,
    ScheduleSpec,
    Source,
    WorkerInfo,
    format_duration,
    format_time,
    utcnow,
    worker_host_pid,
    worker_is_local,
)
from .paths import job_log_path, logs_dir, open_log
from .schedules import Timetable, due_slots, format_in_zone, jitter_for, run_id
from .store import NewSchedule, RunCount, Store, Tick, redact_url

Clock = Callable[[], datetime]
PRUNE_BATCH = 200  # jobs deleted per write: a claim waits a few ms at most behind one
PRUNE_PAUSE_S = 0.005  # between batches: waiting writers (claims) go first
LOG_SWEEP_AGE = timedelta(hours=1)  # a log this long untouched is no running job's
LOG_CHUNK_BYTES = 64 * 1024  # `logs` streams: memory stays flat whatever the log's size
FOLLOW_POLL_S = 0.2


@dataclass(frozen=True)
class Enqueued:
    id: str
    created: bool  # False: an identical job existed, nothing changed


NEED_WORDS = {
    NeedOn.SUCCESS: "complete",
    NeedOn.FAILURE: "fail (go dead)",
    NeedOn.FINISHED: "end (any way)",
}


@dataclass(frozen=True)
class Gate:
    """One thing holding a job back, as `queuectl why` names it."""

    gate: str  # run_at, retry, needs, concurrency, no_worker
    message: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"gate": self.gate, "message": self.message, **self.detail}


def stop_if_local(job_id: str, worker_id: str) -> None:
    """SIGTERM a canceled job's processes now when its worker runs on this host (its
    worker would stop it at its next heartbeat anyway)."""
    # Imported here: enqueue, the hot path, needs none of these.
    import signal
    import socket

    from . import procs

    host, _ = worker_host_pid(worker_id)
    if host == socket.gethostname():
        procs.signal_job(job_id, worker_id, signal.SIGTERM)


@dataclass(frozen=True)
class Ticked:
    """What one tick did for one schedule: the runs it created and the slots it missed."""

    schedule_id: str
    created: tuple[str, ...]
    missed: int
    replaced: tuple[str, ...] = ()  # runs canceled by `overlap: replace`

    def to_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule_id,
            "created": list(self.created),
            "missed": self.missed,
            "replaced": list(self.replaced),
        }


@dataclass(frozen=True)
class JobOutput:
    """A job's output: the full local log file, or the tail kept in the store, as chunks
    (a log can be far larger than memory). The tail comes from the store either because
    the job ran on another host (`store`, `host` names it) or because the log file that
    should be here is gone (`gone`, deleted by hand or with its home)."""

    chunks: Iterable[str]
    origin: Literal["file", "store", "gone", "none"]
    path: Path | None = None
    host: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _decoded(f: BinaryIO) -> Iterator[str]:
    """The file's text from where it stands, in chunks; what is not UTF-8 is replaced."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with f:
        for chunk in read_chunks(f, LOG_CHUNK_BYTES):
            yield decoder.decode(chunk)
    yield decoder.decode(b"", final=True)


def format_number(value: config_mod.Number) -> str:
    """Config values as people write them: 2, not 2.0."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class DrainCounts:
    """Jobs completed and dead so far, and failed now: a drain's outcome is the difference.

    Counted from the store (kept by triggers, so cheap), which covers every worker
    process of a drain; a job another worker finishes meanwhile is counted too.
    """

    completed: int
    dead: int
    failed: int

    def since(self, before: DrainCounts) -> DrainCounts:
        # max: a `dlq purge` during the drain must not make a count negative
        completed = max(0, self.completed - before.completed)
        return DrainCounts(completed, max(0, self.dead - before.dead), self.failed)


LOG_TAIL_BYTES = 64 * 1024  # what the dashboard shows of a log
RUN_OUTCOMES = ("completed", "failed", "dead")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RUN_MINUTES_KEPT = timedelta(hours=2)  # per-minute attempt counters older than this fold


@dataclass(frozen=True)
class LogTail:
    """The end of a job's output; `origin` is where it was read ("file", "store", "none")."""

    text: str
    origin: Literal["file", "store", "none"]
    truncated: bool


@dataclass(frozen=True)
class Page:
    """One page of jobs and the cursor of the next (None: this was the last)."""

    jobs: list[Job]
    next: str | None


def page_key(job: Job, state: JobState | None) -> datetime:
    """The instant a page of `state` is sorted by (see Queue.page)."""
    if state is None:
        return job.created_at
    if state in END_STATES and job.finished_at is not None:
        return job.finished_at
    return job.available_at


def make_cursor(key: datetime, job_id: str) -> str:
    return f"{(key - EPOCH) // timedelta(microseconds=1)}:{job_id}"


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    micros, sep, job_id = cursor.partition(":")
    if not sep or not micros.isdigit() or not job_id or len(micros) > 18:
        raise UsageProblem(f"cursor {cursor!r} is not one a page gave: start from the first page")
    return EPOCH + timedelta(microseconds=int(micros)), job_id


class Queue:
    """The job queue on one store."""

    def __init__(self, store: Store, *, clock: Clock = utcnow) -> None:
        self.store = store
        self.clock = clock

    def config(self) -> Config:
        return Config.resolve(self.store.read_config())

    # -- jobs --------------------------------------------------------------------

    def enqueue(self, specs: Sequence[JobSpec], *, delay_ms: int = 0) -> list[Enqueued]:
        """Enqueue jobs in one transaction; an identical re-submission of an id is a no-op.

        :raises JobConflict: an id exists with a different spec (nothing is enqueued).
        """
        if delay_ms and any(spec.run_at is not None for spec in specs):
            raise UsageProblem("a job with run_at cannot also take --delay: use one of them")
        now = self.clock()
        retries = self.config().max_retries
        jobs = [
            NewJob.build(
                spec, source=INLINE, now=now, default_max_retries=retries, delay_ms=delay_ms
            )
            for spec in specs
        ]
        created = self.store.insert_jobs(jobs, now)
        return [
            Enqueued(job.id, was_created) for job, was_created in zip(jobs, created, strict=True)
        ]

    def submit(
        self, specs: Sequence[JobSpec | ScheduleSpec], *, delay_ms: int = 0
    ) -> list[Enqueued]:
        """Enqueue the jobs and store the schedules of one submission, in the given order."""
        schedules = [s for s in specs if isinstance(s, ScheduleSpec)]
        jobs = [s for s in specs if isinstance(s, JobSpec)]
        if schedules and delay_ms:
            raise UsageProblem("--delay applies to jobs, not schedules: their slots say when")
        added = iter(self.add_schedules(schedules))
        enqueued = iter(self.enqueue(jobs, delay_ms=delay_ms) if jobs else [])
        return [next(added if isinstance(s, ScheduleSpec) else enqueued) for s in specs]

    def get(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def waiting_on(self, job: Job) -> list[dict[str, Any]]:
        """The needs of a job not met yet, each with the needed job's state (SPEC 12)."""
        if not job.needs or job.state is not JobState.PENDING:
            return []
        return [
            {"job": need.job, "on": need.on.value, "state": state.value if state else None}
            for need, state in self.store.waiting_on(job.id)
            if state not in NEED_MET_BY[need.on]
        ]

    def why(self, job_id: str) -> list[Gate]:
        """Every gate holding a pending or failed job back now (SPEC 13); [] for a job that
        nothing holds (a worker should claim it soon) or that is not waiting to run."""
        job = self.get(job_id)
        if job.state not in (JobState.PENDING, JobState.FAILED):
            return []
        now = self.clock()
        gates: list[Gate] = []
        if job.available_at > now:
            what = "retry" if job.state is JobState.FAILED else "run_at"
            wait = format_duration(int((job.available_at - now).total_seconds() * 1000))
            gates.append(
                Gate(
                    what,
                    f"{what} not reached: due at {format_time(job.available_at)} (in {wait})",
                    {"until": format_time(job.available_at)},
                )
            )
        for need in self.waiting_on(job):
            wanted = NEED_WORDS[NeedOn(need["on"])]
            state = need["state"] or "no longer stored"
            gates.append(Gate("needs", f"needs {need['job']} to {wanted}: it is {state}", need))
        if job.concurrency_key is not None:
            holders = self.store.key_holders(job.concurrency_key, now)
            if len(holders) >= job.concurrency_limit:
                gates.append(
                    Gate(
                        "concurrency",
                        f"concurrency key {job.concurrency_key} at its limit of "
                        f"{job.concurrency_limit}: held by {', '.join(holders)}",
                        {
                            "key": job.concurrency_key,
                            "limit": job.concurrency_limit,
                            "held_by": holders,
                        },
                    )
                )
        if self.unserved([job]):
            gates.append(
                Gate(
                    "no_worker",
                    f"no live worker serves queue {job.queue!r}: start one with "
                    f"`queuectl worker start --queue {job.queue}`",
                    {"queue": job.queue},
                )
            )
        return gates

    def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        newest: bool = False,
        schedule_id: str | None = None,
    ) -> list[Job]:
        return self.store.list_jobs(
            state=state,
            queue=queue,
            labels=labels,
            limit=limit,
            newest=newest,
            schedule_id=schedule_id,
        )

    def list_page(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int,
        newest: bool = False,
        schedule_id: str | None = None,
    ) -> tuple[list[Job], bool]:
        """At most `limit` jobs, and whether more matched (SPEC section 14: never truncate
        silently). One row past the limit tells, without counting the whole table."""
        jobs = self.list_jobs(
            state=state,
            queue=queue,
            labels=labels,
            limit=limit + 1,
            newest=newest,
            schedule_id=schedule_id,
        )
        return jobs[:limit], len(jobs) > limit

    def unserved(self, jobs: Iterable[Job]) -> list[Job]:
        """The jobs waiting to run (pending, or failed and due for a retry) on a queue that no
        live worker serves: nothing will ever run them until a worker starts."""
        waiting = [job for job in jobs if job.state in (JobState.PENDING, JobState.FAILED)]
        if not waiting:
            return []
        workers = self.live_workers()
        if any(not worker.queues for worker in workers):  # a worker serving every queue
            return []
        served = {name for worker in workers for name in worker.queues}
        return [job for job in waiting if job.queue not in served]

    def wait(
        self,
        job_ids: Sequence[str],
        *,
        timeout_s: float | None = None,
        on_unserved: Callable[[list[Job]], None] | None = None,
    ) -> list[Job]:
        """Block until every job is completed, dead or canceled; return them in the given order.

        Polls, starting at 50 ms and backing off to 1 s, so that a long wait costs the store
        next to nothing. Raises WaitTimedOut, naming the jobs still going, after timeout_s.
        `on_unserved` is told, once per job, of jobs that no live worker would run.
        """
        wanted = list(dict.fromkeys(job_ids))
        ended: dict[str, Job] = {}
        told: set[str] = set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        interval = 0.05
        first_look = True
        while True:
            going = [job_id for job_id in wanted if job_id not in ended]
            found = self.store.get_jobs(going)
            for job_id in going:
                if job_id not in found:
                    if first_look:
                        raise JobNotFound(job_id)
                    raise JobNotFound.while_waiting(job_id)
                if found[job_id].ended:
                    ended[job_id] = found[job_id]
            first_look = False
            going = [job_id for job_id in wanted if job_id not in ended]
            if not going:
                return [ended[job_id] for job_id in wanted]
            if on_unserved is not None:
                untold = [found[job_id] for job_id in going if job_id not in told]
                if lost := self.unserved(untold):
                    told.update(job.id for job in lost)
                    on_unserved(lost)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimedOut(
                    f"timed out after {timeout_s:.3f}".rstrip("0").rstrip(".")
                    + f" s with {len(going)} job(s) not ended: {first_few(going)}; "
                    "raise --timeout, or check the workers with `queuectl status`"
                )
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(pause, 0))
            interval = min(interval * 1.5, 1.0)

    def cancel(self, job_id: str, *, kill: bool = False) -> Job:
        """Cancel a pending or failed job; with kill, a processing one too.

        A processing job becomes canceled at once, but keeps its claim until it has
        stopped: its worker sees the revoked claim at its next heartbeat (within
        lease_ms / 3), SIGTERMs the job's process group, SIGKILLs what is left 3 s
        later, records nothing and drops the claim. When that worker runs on this host,
        the SIGTERM is sent from here, now.
        """
        before = self.store.cancel_job(job_id, self.clock(), running=kill)
        if before.lease_token is not None and before.worker_id is not None:  # running, or stopping
            stop_if_local(job_id, before.worker_id)
        return self.get(job_id)

    def status(self) -> dict[str, Any]:
        counts = self.store.count_by_state()
        schedules = self.schedules()
        suspended = sum(s.suspended for s in schedules)
        return {
            "counts": {state.value: counts[state] for state in JobState},
            "workers": [w.to_dict() for w in self.live_workers()],
            "schedules": {
                "active": len(schedules) - suspended,
                "suspended": suspended,
                "overdue": sum(s.overdue for s in schedules),
            },
            "store": redact_url(self.store.url),
        }

    def queues_without_jobs(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """Of `names`, the queues no job in the store is on; and every queue that has jobs."""
        known = self.store.queue_names()
        return [name for name in names if name not in known], known

    def drain_counts(self) -> DrainCounts:
        counts = self.store.count_by_state()
        return DrainCounts(
            counts[JobState.COMPLETED], counts[JobState.DEAD], counts[JobState.FAILED]
        )

    def live_workers(self) -> list[WorkerInfo]:
        """Workers whose lease holds, less those of this host, boot and PID namespace whose
        process is gone (a worker killed with SIGKILL cannot deregister; its lease would
        linger)."""
        from . import procs

        return [
            w
            for w in self.store.live_workers(self.clock())
            if not worker_is_local(w.id) or procs.pid_alive(w.pid)
        ]

    def output(self, job_id: str) -> JobOutput:
        """The job's output: the local log file if this machine has it, else the stored tail."""
        job = self.get(job_id)
        path = job_log_path(job_id)
        log = open_log(path)
        if log is not None:
            return JobOutput(_decoded(log), "file", path)
        if job.output_tail:
            import socket

            host = worker_host_pid(job.worker_id)[0] if job.worker_id else None
            # SQLite: every worker writes its logs beside the one database (hosts sharing it
            # share a volume), so a missing file was deleted, wherever the job ran.
            elsewhere = host not in (None, socket.gethostname()) and not self.store.url.startswith(
                "sqlite"
            )
            return JobOutput([job.output_tail], "store" if elsewhere else "gone", path, host)
        return JobOutput([], "none", path)

    def follow_output(
        self,
        job_id: str,
        *,
        poll_s: float = FOLLOW_POLL_S,
        on_unserved: Callable[[list[Job]], None] | None = None,
    ) -> Iterator[str]:
        """The log file's content as it grows, until the job reaches an end state.

        `on_unserved` is told once if the job waits on a queue no live worker serves."""
        path = job_log_path(job_id)
        log: BinaryIO | None = None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            while True:
                job = self.get(job_id)
                done = job.ended  # read before the file: no lost tail
                if on_unserved is not None and (lost := self.unserved([job])):
                    on_unserved(lost)
                    on_unserved = None  # said once
                log = log or open_log(path)
                if log is not None:
                    resume_after_rewrite(log)
                    for chunk in read_chunks(log, LOG_CHUNK_BYTES):
                        yield decoder.decode(chunk)
                if done:
                    yield decoder.decode(b"", final=True)
                    return
                time.sleep(poll_s)  # following a file is polling by nature
        finally:
            if log is not None:
                log.close()

    def log_tail(self, job_id: str, max_bytes: int = LOG_TAIL_BYTES) -> LogTail:
        """The end of the job's output (at most `max_bytes`, from a line start): the local
        log file if this machine has it, else the tail kept in the store."""
        job = self.get(job_id)
        log = open_log(job_log_path(job_id))
        if log is None:
            tail = job.output_tail or ""
            return LogTail(tail[-max_bytes:], "store" if tail else "none", len(tail) > max_bytes)
        with log:
            size = log.seek(0, 2)
            start = max(0, size - max_bytes)
            log.seek(start)
            data = log.read(max_bytes)
        if start:
            data = data[data.find(b"\n") + 1 :]  # from a whole line
        return LogTail(data.decode("utf-8", errors="replace"), "file", start > 0)

    # -- observability (SPEC 15) -------------------------------------------------------

    def counts_by_queue(self) -> dict[tuple[str, JobState], int]:
        """Jobs per (queue, state), from counters: never a count of the jobs table."""
        return self.store.count_by_queue()

    def run_totals(self) -> list[RunCount]:
        """Every attempt ever ended, per queue, outcome and duration bucket."""
        return self.store.run_totals()

    def oldest_due(self, queues: Iterable[str]) -> dict[str, datetime]:
        """Per queue, when its longest-waiting due pending job became due (queues with none
        left out)."""
        now = self.clock()
        found = {queue: self.store.oldest_due(queue, now) for queue in queues}
        return {queue: at for queue, at in found.items() if at is not None}

    def throughput(self, minutes: int = 60) -> list[dict[str, Any]]:
        """Attempts ended in each of the last `minutes` minutes (the current one last), by
        outcome."""
        now = self.clock()
        last = now.replace(second=0, microsecond=0)
        first = last - timedelta(minutes=minutes - 1)
        rows: dict[datetime, dict[str, Any]] = {
            first + timedelta(minutes=i): {"minute": format_time(first + timedelta(minutes=i))}
            | dict.fromkeys(RUN_OUTCOMES, 0)
            for i in range(minutes)
        }
        for minute, outcome, n in self.store.runs_per_minute(first):
            row = rows.get(minute)
            if row is not None and outcome in RUN_OUTCOMES:
                row[outcome] += n
        return list(rows.values())

    def page(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        labels: Mapping[str, str] | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """One page of jobs, through an index from `cursor` (the `next` of the page before):
        every job newest first; ended ones by when they ended, newest first; waiting and
        running ones by when they are due, oldest first.

        :raises UsageProblem: the cursor is not one a page gave.
        """
        after = None if cursor is None else parse_cursor(cursor)
        jobs = self.store.page_jobs(
            state=state, queue=queue, labels=labels, after=after, limit=limit + 1
        )
        more = len(jobs) > limit
        jobs = jobs[:limit]
        next_cursor = make_cursor(page_key(jobs[-1], state), jobs[-1].id) if more else None
        return Page(jobs, next_cursor)

    # -- schedules -----------------------------------------------------------------

    def add_schedules(
        self, specs: Sequence[ScheduleSpec], *, source: Source = INLINE
    ) -> list[Enqueued]:
        """Store schedules: new ones start with their first slot after now; another spec
        for an existing id becomes the template of runs not yet created; an identical one
        is a no-op (`created` False)."""
        now = self.clock()
        return [
            Enqueued(s.id, self.store.upsert_schedule(NewSchedule(s, source), now) != "unchanged")
            for s in specs
        ]

    def schedules(self) -> list[Schedule]:
        now = self.clock()
        return [s.with_overdue(now) for s in self.store.list_schedules()]

    def schedule(self, schedule_id: str) -> Schedule:
        found = self.store.list_schedules(schedule_id)
        if not found:
            raise ScheduleNotFound(schedule_id)
        return found[0].with_overdue(self.clock())

    def next_slots(self, schedule: Schedule, count: int = 5) -> list[str]:
        """The next `count` slots after now, as RFC 3339 instants in the schedule's zone."""
        slots = Timetable.of(schedule.spec).next_slots(self.clock(), count)
        return format_in_zone(slots, schedule.spec.timezone)

    def next_run(self, schedule: Schedule) -> datetime:
        """The first slot after the schedule's last tick: its next run when schedulers keep
        ticking, in the past when none has for a while (metrics alert on that)."""
        return Timetable.of(schedule.spec).next_slots(schedule.last_tick_at, 1)[0]

    def next_tick_at(self) -> datetime | None:
        """When the earliest active schedule next needs a tick; None when none is active."""
        return self.store.next_tick_at()

    def pause(self, schedule_id: str) -> None:
        self.store.set_suspended(schedule_id, True, self.clock())

    def resume(self, schedule_id: str) -> None:
        """Resume a schedule; the slots it skipped are caught up as its `catchup` says."""
        self.store.set_suspended(schedule_id, False, self.clock())

    def delete_schedule(self, schedule_id: str) -> list[str]:
        """Delete a schedule; its runs waiting to start are canceled (their ids returned)."""
        return self.store.delete_schedule(schedule_id, self.clock())

    def trigger(self, schedule_id: str) -> str:
        """Create one run now, outside the timetable; its id names now as a slot."""
        schedule = self.schedule(schedule_id)
        now = self.clock()
        retries = self.config().max_retries
        run = self._run(schedule, now.replace(microsecond=0), now, retries, jitter=False)
        self.store.insert_jobs([run], now)
        return run.id

    def tick(self) -> list[Ticked]:
        """One scheduler pass: create the due runs of every schedule with a slot due, and
        count its missed slots.

        Safe to run on any number of hosts at once: each schedule's tick is a
        compare-and-set on what this pass read, and a run's id is its slot.
        """
        now = self.clock()
        due = self.store.due_schedules(now)
        if not due:
            return []  # the common case, read from an index: no config, no write
        retries = self.config().max_retries
        ticks = [self._tick_of(schedule, now, retries) for schedule in due]
        done: list[Ticked] = []
        for tick, replaced in zip(ticks, self.store.tick(ticks, now), strict=True):
            if replaced is None:
                continue  # another scheduler ticked this schedule meanwhile
            for job in replaced:
                if job.lease_token is not None and job.worker_id is not None:  # it was running
                    stop_if_local(job.id, job.worker_id)
            if tick.runs or tick.missed:
                runs = tuple(r.id for r in tick.runs)
                done.append(
                    Ticked(tick.schedule_id, runs, tick.missed, tuple(j.id for j in replaced))
                )
        return done

    def _tick_of(self, schedule: Schedule, now: datetime, retries: int) -> Tick:
        """What a tick at `now` does for one schedule, by its catch-up and overlap rules."""
        spec = schedule.spec
        due = due_slots(
            Timetable.of(spec),
            last_tick=schedule.last_tick_at,
            now=now,
            catchup=spec.catchup,
            catchup_window_ms=spec.catchup_window_ms,
        )
        create: Sequence[datetime] = due.create
        skipped: Sequence[datetime] = ()
        if create and spec.overlap in (Overlap.SKIP, Overlap.REPLACE):
            # One run at a time: only the newest of the slots due (the older ones are
            # counted missed); with skip, none while a run is still going.
            keep = 0 if spec.overlap is Overlap.SKIP and schedule.busy else 1
            create, skipped = create[len(create) - keep :], create[: len(create) - keep]
        missed_at = (s for s in (due.last_missed_at, *skipped) if s is not None)
        runs = [self._run(schedule, slot, now, retries) for slot in create]
        if spec.overlap is Overlap.QUEUE:
            # Each run starts after the one before it has ended, however it ended.
            previous = schedule.active_run
            for i, run in enumerate(runs):
                if previous is not None:
                    needs = (Need(previous, NeedOn.FINISHED),)
                    runs[i] = replace(run, spec=replace(run.spec, needs=needs))
                previous = run.id
        return Tick(
            schedule_id=spec.id,
            spec_hash=schedule.stored_hash,
            last_tick_at=schedule.last_tick_at,
            tick_at=now,
            runs=runs,
            missed=due.missed + len(skipped),
            last_missed_at=max(missed_at, default=None),
            next_slot_at=due.next_slot,
            replace_previous=spec.overlap is Overlap.REPLACE and bool(runs),
        )

    def _run(
        self,
        schedule: Schedule,
        slot: datetime,
        now: datetime,
        retries: int,
        *,
        jitter: bool = True,
    ) -> NewJob:
        """The run of `slot`: the template, named after the slot, due at slot + jitter."""
        spec = schedule.spec
        start = slot + jitter_for(spec.id, slot, spec.jitter_ms) if jitter else slot
        template = replace(spec.template, id=run_id(spec.id, slot), run_at=start)
        run = NewJob.build(template, source=schedule.source, now=now, default_max_retries=retries)
        return replace(run, schedule_id=spec.id)

    # -- dead letter queue ---------------------------------------------------------

    def dlq_list(self, *, limit: int | None = None, newest: bool = False) -> list[Job]:
        return self.list_jobs(state=JobState.DEAD, limit=limit, newest=newest)

    def dlq_retry(self, job_ids: Sequence[str] | None) -> list[str]:
        """Move dead jobs (all of them when job_ids is None) back to pending with attempts 0."""
        return self.store.retry_dead(job_ids, self.clock())

    def dlq_purge(
        self,
        job_ids: Sequence[str] | None = None,
        *,
        older_than_ms: int | None = None,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete dead jobs (those given, or all) and their log files; with older_than,
        only those dead for longer. Ids given that are not dead are refused, nothing
        deleted."""
        if job_ids:
            self._refuse_undeletable(job_ids, only=JobState.DEAD)
        before = (
            None if older_than_ms is None else self.clock() - timedelta(milliseconds=older_than_ms)
        )
        found = self.store.deletable_jobs(
            JobState.DEAD, job_ids=job_ids or None, finished_before=before
        )
        return found if dry_run else self._delete(found)

    def delete(self, job_ids: Sequence[str]) -> list[str]:
        """Delete finished jobs and their log files; refuse (nothing deleted) if any has
        not finished, or a job that may still run needs it."""
        self._refuse_undeletable(job_ids)
        return self._delete(list(dict.fromkeys(job_ids)))

    def prune(
        self,
        *,
        states: Sequence[JobState] = (JobState.COMPLETED, JobState.CANCELED, JobState.DEAD),
        older_than_ms: int | None = None,
        dry_run: bool = False,
        batch: int = PRUNE_BATCH,
        max_batches: int | None = None,
    ) -> dict[JobState, list[str]]:
        """Delete ended jobs older than their state's keep_*_days (or `older_than_ms`), in
        batches (each a short write; at most `max_batches` per state), with their log
        files. Jobs a needs edge still waits on are kept until the jobs that need them are
        settled."""
        config = self.config()
        now = self.clock()
        if not dry_run:  # housekeeping of the attempt counters too (migration 0012)
            self.store.fold_run_stats(now - RUN_MINUTES_KEPT)
        pruned: dict[JobState, list[str]] = {}
        for state in states:
            keep_ms = older_than_ms
            if keep_ms is None:
                days = config.keep_days(state)
                if days == 0:
                    continue  # kept forever
                keep_ms = int(days * 86_400_000)
            before = now - timedelta(milliseconds=keep_ms)
            if dry_run:
                pruned[state] = self.store.deletable_jobs(state, finished_before=before)
                continue
            done: list[str] = []
            batches = itertools.count(1)
            while found := self.store.deletable_jobs(state, finished_before=before, limit=batch):
                deleted = self._delete(found)
                done.extend(deleted)
                if len(found) < batch or not deleted or next(batches) == max_batches:
                    break
                # Back to back, this process could take the write lock again before a
                # waiting claim is scheduled; a pause costs 25 s per million jobs.
                time.sleep(PRUNE_PAUSE_S)
            pruned[state] = done
        return pruned

    def _refuse_undeletable(self, job_ids: Sequence[str], *, only: JobState | None = None) -> None:
        jobs = self.store.get_jobs(job_ids)
        problems = []
        for job_id in dict.fromkeys(job_ids):
            job = jobs.get(job_id)
            if job is None:
                raise JobNotFound(job_id)
            if only is not None and job.state is not only:
                problems.append(f"{job_id} is {job.state.value}, not {only.value}")
            elif not job.ended:
                problems.append(f"{job_id} is {job.state.value}")
            elif not self.store.deletable_jobs(job.state, job_ids=[job_id]):
                problems.append(f"{job_id} is needed by a job that may still run")
        if problems:
            raise InvalidState(
                f"nothing deleted: {'; '.join(problems)} (only ended jobs that no waiting job "
                "needs can be deleted)"
            )

    def sweep_logs(self, *, older_than: timedelta = LOG_SWEEP_AGE) -> list[str]:
        """Delete this host's log files of jobs no longer in the store, untouched for
        `older_than`; the ids. A job's log lives on the host that ran it, and a job pruned
        or deleted by a process on another host (PostgreSQL) leaves it there; so does a
        process that died between deleting a job and its log."""
        cutoff = (self.clock() - older_than).timestamp()
        directory = logs_dir()
        found: dict[str, str] = {}
        with os.scandir(directory) as entries:
            for entry in entries:
                job_id = entry.name.removeprefix("job-").removesuffix(".log")
                if (
                    len(job_id) + 8 == len(entry.name)
                    and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < cutoff
                ):
                    found[job_id] = entry.path
        swept = []
        ids = list(found)
        for start in range(0, len(ids), PRUNE_BATCH):
            chunk = ids[start : start + PRUNE_BATCH]
            kept = self.store.get_jobs(chunk)
            for job_id in chunk:
                if job_id not in kept:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(found[job_id])
                    swept.append(job_id)
        return swept

    def _delete(self, job_ids: Sequence[str]) -> list[str]:
        deleted = self.store.delete_jobs(job_ids)
        directory = logs_dir()
        for job_id in deleted:
            with contextlib.suppress(FileNotFoundError):
                job_log_path(job_id, directory).unlink()
        return deleted

    # -- config --------------------------------------------------------------------

    def config_set(self, key: str, value: str) -> tuple[str, str]:
        name = config_mod.normalize_key(key)
        text = format_number(config_mod.parse_value(name, value))
        self.store.write_config(name, text)
        return name, text

    def config_get(self, key: str) -> str:
        name = config_mod.normalize_key(key)
        return format_number(self.config()[name])

    def config_list(self) -> dict[str, config_mod.Number]:
        config = self.config()
        # 2, not 2.0: as `config get` shows it and as it was set
        return {
            name: int(value) if isinstance(value, float) and value.is_integer() else value
            for name in config_mod.KEYS
            for value in (config[name],)
        }
