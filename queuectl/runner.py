"""Runner: claim, execute, heartbeat, finish, and recover jobs of lost workers.

One Runner is one worker. `run_once()` claims and runs at most one job;
`run()` loops over it. Signal handlers only call `stop()` or `interrupt()`,
which set a flag and wake the main loop through a pipe.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from random import random as random_fraction

from . import procs
from .config import Config
from .errors import NotRegularFile
from .logcap import CappedLog
from .models import (
    OUTPUT_TAIL_BYTES,
    Jitter,
    Job,
    JobState,
    RetryPolicy,
    WorkerInfo,
    format_duration,
    format_time,
    new_worker_id,
    utcnow,
    worker_host_pid,
    worker_is_local,
    worker_namespace,
)
from .paths import job_log_path, logs_dir, open_regular
from .spawn import KEPT_MAX_CHARS, Environ, spawn
from .store import Store, Transition, open_store

Clock = Callable[[], datetime]
Log = Callable[[str], None]
CHANGE_CHECK_S = 0.025  # idle workers look for new commits this often (PRAGMA data_version)
RECOVER_EVERY_S = 1.0
# A job starts on its claim without asking the store again while the claim (or the last
# renewal) is younger than this fraction of lease_ms; see Runner._claim_gone.
SPAWN_FRESH_FRACTION = 0.1
CANCELED_WHILE_RUNNING = "canceled while running"
JOB_VARIABLES = ("QUEUECTL_JOB_ID", "QUEUECTL_ATTEMPT", "QUEUECTL_WORKER_ID")  # set per attempt
ENVIRONS_KEPT = 64  # distinct job envs whose encoded environment a worker keeps


def backoff_ms(
    config: Config,
    attempts: int,
    policy: RetryPolicy | None = None,
    random: Callable[[], float] = random_fraction,
) -> int:
    """Wait before retry number `attempts`: backoff_base ** attempts seconds, capped at
    backoff_max (the job's own, else the config's), spread by the job's jitter."""
    policy = policy or RetryPolicy()
    base = config.backoff_base if policy.backoff_base is None else policy.backoff_base
    cap = config.backoff_max_ms if policy.backoff_max_ms is None else policy.backoff_max_ms
    try:
        wait = min(base**attempts * 1000, cap)
    except OverflowError:
        wait = cap
    if policy.jitter is Jitter.FULL:
        wait = wait * random()
    elif policy.jitter is Jitter.EQUAL:
        wait = wait / 2 + wait / 2 * random()
    return int(wait)


def past_deadline(job: Job, at: datetime) -> str | None:
    """Why an attempt may not start at `at` (its deadline after the first start), or None."""
    if job.deadline_ms is None or job.first_started_at is None:
        return None
    if at <= job.first_started_at + timedelta(milliseconds=job.deadline_ms):
        return None
    return f"deadline of {format_duration(job.deadline_ms)} exceeded"


def failure_transition(
    job: Job,
    now: datetime,
    config: Config,
    *,
    exit_code: int | None,
    error: str,
    tail: str | None,
    random: Callable[[], float] = random_fraction,
) -> Transition:
    """A failed attempt: retry after a backoff, or move to the DLQ when the job's retry
    rules refuse this exit code, its retries have run out or its deadline would pass."""
    attempts = job.attempts + 1
    policy = job.retry or RetryPolicy()
    # The rules judge exit codes: a timeout, a signal or a lost worker has none, and is
    # retried as any failure (a crashed worker must not send a job to the DLQ).
    never = exit_code is not None and exit_code in policy.never_on_exit_codes
    unlisted = exit_code is not None and bool(policy.on_exit_codes)
    if never or (unlisted and exit_code not in policy.on_exit_codes):
        rule = "never_on_exit_codes" if never else "on_exit_codes"
        codes = list(policy.never_on_exit_codes if never else policy.on_exit_codes)
        why = f"{error}; not retried: retry.{rule} is {codes}"
        return Transition(JobState.DEAD, attempts, now, exit_code, why, tail)
    if attempts > job.max_retries:
        return Transition(JobState.DEAD, attempts, now, exit_code, error, tail)
    available_at = now + timedelta(milliseconds=backoff_ms(config, attempts, policy, random))
    if (late := past_deadline(job, available_at)) is not None:
        return Transition(JobState.DEAD, attempts, now, exit_code, f"{error}; {late}", tail)
    return Transition(JobState.FAILED, attempts, available_at, exit_code, error, tail)


@dataclass(frozen=True)
class Attempt:
    """How one run of a job ended."""

    exit_code: int | None
    error: str | None  # None: success

    @classmethod
    def from_returncode(cls, code: int, *, shell: bool) -> Attempt:
        if code == 0:
            return cls(0, None)
        if code < 0:
            return cls(None, f"killed by signal {-code}")
        if code == 127 and shell:
            return cls(127, "command not found (exit 127)")
        if code == 126 and shell:
            return cls(126, "command not executable (exit 126)")
        return cls(code, f"exit code {code}")


def stderr_log(line: str) -> None:
    """A log line on stderr, time-stamped like every line workers and watchers write."""
    procs.write_stderr_line(f"{format_time(utcnow())} {line}")


class Runner:
    """A worker: claims due jobs from the store and runs them one at a time."""

    def __init__(
        self,
        store: Store,
        *,
        queues: Sequence[str] = (),
        poll_interval_ms: int | None = None,
        clock: Clock = utcnow,
        log: Log = stderr_log,
    ) -> None:
        self.store = store
        self.queues = tuple(queues)
        self.clock = clock
        self.log = log
        self.worker_id = new_worker_id()
        self.host = socket.gethostname()
        self.config = Config.resolve(store.read_config())
        self.poll_interval_ms = poll_interval_ms or self.config.poll_interval_ms
        self.jobs_run = 0
        self._stopping = False
        self._interrupt_reason: str | None = None
        self._wake = procs.WakePipe()
        self._current: tuple[str, str] | None = None  # (job id, claim token)
        # (claim token, why): the heartbeat found that claim revoked or taken over
        self._lost_claim: tuple[str, str] | None = None
        # (job id, claim token) of a job canceled while running that is being stopped: the
        # heartbeat keeps its lease, so no one takes its processes for a dead worker's
        self._stopping_claim: tuple[str, str] | None = None
        self._stop_announced = False
        # procs.lease_clock() when the current claim's lease was last set: taken before
        # the write, so the lease runs out no sooner than lease_ms after it
        self._lease_renewed = procs.lease_clock()
        self._watchdog: procs.Watchdog | None = None
        self._last_recover = -math.inf
        self._logs = logs_dir()
        self._environ = dict(os.environ)  # copied once: decoding os.environ per job costs
        self._environs: dict[tuple[tuple[str, str], ...], Environ] = {}
        self._devnull = os.open(os.devnull, os.O_RDONLY)  # every job's stdin, opened once
        self._claimed: tuple[Job, str, float] | None = None  # claimed with the last result

    # -- control (safe from signal handlers) ---------------------------------------

    def stop(self) -> None:
        """Finish the current job, then return from run(). Idempotent."""
        self._stopping = True
        self._wake.wake()

    def interrupt(self, reason: str) -> None:
        """Kill the running job (recorded as a failed attempt) and stop."""
        self._stopping = True
        self._interrupt_reason = reason
        self._wake.wake()

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- the loop --------------------------------------------------------------------

    def run(self, *, drain: bool = False) -> None:
        """Run jobs until stopped (or, with drain, until nothing is left to do)."""
        now = self.clock()
        lease = timedelta(milliseconds=self.config.lease_ms)
        self.store.register_worker(
            WorkerInfo(
                id=self.worker_id,
                pid=os.getpid(),
                host=self.host,
                started_at=now,
                heartbeat_at=now,
                lease_expires_at=now + lease,
                current_job=None,
                queues=self.queues,
            )
        )
        self.log(f"worker {self.worker_id} started (queues: {', '.join(self.queues) or 'all'})")
        if procs.Watchdog.supported():
            self._watchdog = procs.Watchdog()
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(beat_stop,), daemon=True)
        beat.start()
        try:
            # A job claimed with the last result runs even if a stop came meanwhile: it was
            # claimed first, as a claim and then a stop would have gone before.
            while not self._stopping or self._claimed is not None:
                if self.run_once():
                    continue
                if drain and self.store.drain_blockers(self.queues, self.clock()) == 0:
                    break
                self._idle_wait()
        finally:
            beat_stop.set()
            beat.join()
            if self._watchdog is not None:
                self._watchdog.close(guarding=self._current is not None)
                self._watchdog = None
            self.store.deregister_worker(self.worker_id)
            self.log(f"worker {self.worker_id} stopped after {self.jobs_run} job(s)")

    def run_once(self) -> bool:
        """Claim and run at most one due job (or the one the last result claimed); True if
        one ran."""
        self.recover_lost_jobs()
        claimed, self._claimed = self._claimed, None
        if claimed is None and not self._stopping:
            leased = procs.lease_clock()  # before `now`: the lease runs out no sooner than this
            now = self.clock()
            token = secrets.token_hex(8)
            lease_until = now + timedelta(milliseconds=self.config.lease_ms)
            job = self.store.claim_next(self.worker_id, self.queues, now, lease_until, token)
            claimed = (job, token, leased) if job is not None else None
        if claimed is None:
            return False
        job, token, self._lease_renewed = claimed
        if (late := past_deadline(job, self.clock())) is not None:  # no attempt starts now
            outcome = Transition(JobState.DEAD, job.attempts, self.clock(), None, late, None)
            if self.store.finish(job.id, token, outcome, self.clock()):
                self.log(f"job {job.id} dead ({late}) before its attempt {job.attempts + 1}")
            return True
        self._current = (job.id, token)
        started = time.monotonic()
        tail: str | None = None
        try:
            attempt, tail = self._execute(job, token)
        except Exception as exc:  # a failure of ours must not leave the job processing
            attempt = Attempt(None, f"worker error: {exc}")
        self._current = None
        if attempt is None:  # the claim was gone before the job could start
            return True
        self._record(job, token, attempt, tail, time.monotonic() - started)
        self.jobs_run += 1
        return True

    def _record(
        self, job: Job, token: str, attempt: Attempt, tail: str | None, took: float
    ) -> None:
        leased = procs.lease_clock()  # before `now`, for the job claimed with this result
        now = self.clock()
        if attempt.error is None:
            outcome = Transition(JobState.COMPLETED, job.attempts, job.available_at, 0, None, tail)
        else:
            # Backoff settings are read afresh for each failure. The rest of self.config
            # (lease_ms, timeouts, polling) stays as the worker started: its heartbeat runs
            # at the interval that lease_ms set then.
            latest = Config.resolve(self.store.read_config())
            outcome = failure_transition(
                job, now, latest, exit_code=attempt.exit_code, error=attempt.error, tail=tail
            )
        if self._stopping:
            landed = self.store.finish(job.id, token, outcome, now)
        else:  # the next job is claimed in the same write, as the next pass would have
            next_token = secrets.token_hex(8)
            landed, next_job = self.store.finish_and_claim(
                job.id,
                token,
                outcome,
                now,
                worker_id=self.worker_id,
                queues=self.queues,
                lease_until=now + timedelta(milliseconds=self.config.lease_ms),
                next_token=next_token,
            )
            if next_job is not None:
                self._claimed = (next_job, next_token, leased)
        if not landed:
            self._claim_lost(job.id, token, tail)
            return
        detail = f" ({attempt.error})" if attempt.error else ""
        retry = (
            f", retry at {format_time(outcome.available_at)}"
            if outcome.state is JobState.FAILED
            else ""
        )
        self.log(f"job {job.id} {outcome.state.value}{detail} in {took * 1000:.0f} ms{retry}")

    def _claim_lost(self, job_id: str, token: str, tail: str | None) -> None:
        """The attempt's result could not be recorded: say why. If the job was canceled while
        running, stop what is left of it (background children), then drop its claim."""
        current = self.store.get_job(job_id)
        if (
            current is None
            or current.state is not JobState.CANCELED
            or current.lease_token != token
        ):
            self.log(f"job {job_id}: claim lost before the result was recorded; result dropped")
            return
        self._stopping_claim = (job_id, token)
        try:
            procs.stop_job(job_id, self.worker_id)
            if not (self._lost_claim and self._lost_claim[0] == token):  # else _wait noted it
                with contextlib.suppress(OSError, NotRegularFile):
                    fd = _open_log(job_log_path(job_id, self._logs))
                    try:
                        _append(fd, CANCELED_WHILE_RUNNING, self.clock())
                    finally:
                        os.close(fd)
            self.store.release_claim(job_id, token, tail, now=self.clock())
        finally:
            self._stopping_claim = None
        self.log(f"job {job_id}: canceled while running; stopped, no result recorded")

    def _idle_wait(self) -> None:
        """Wait for the poll interval, the next due job, a new commit, or a stop request."""
        wait_s = self.poll_interval_ms / 1000
        next_due = self.store.next_available_at(self.queues)
        if next_due is not None:
            wait_s = min(wait_s, max(0.0, (next_due - self.clock()).total_seconds()))
        deadline = time.monotonic() + wait_s
        while not self._stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._wake.wait(min(remaining, CHANGE_CHECK_S)):
                return
            if self.store.changed():
                return

    # -- executing a job ---------------------------------------------------------------

    def _execute(self, job: Job, token: str) -> tuple[Attempt | None, str | None]:
        """Run one attempt: how it ended (None: not started, nothing to record) and the
        tail of the job's log."""
        log_path = job_log_path(job.id, self._logs)
        try:
            try:
                log_fd = _open_log(log_path)
            except FileNotFoundError:  # the logs directory was removed under us: make it again
                self._logs = logs_dir()
                log_fd = _open_log(log_path)
        except NotRegularFile as exc:
            return Attempt(None, _log_unusable(exc)), None
        cap = CappedLog(log_fd, self.config.log_max_bytes, self.clock)
        try:
            attempt = self._attempt(job, token, log_fd, cap)
            if attempt is None:
                return None, None
            with contextlib.suppress(OSError):  # a log that cannot be cut still ran its job
                cap.rewrite()
            return attempt, _read_tail(log_fd)
        finally:
            os.close(log_fd)

    def _attempt(self, job: Job, token: str, log_fd: int, cap: CappedLog) -> Attempt | None:
        attempt_no = job.attempts + 1
        shell = isinstance(job.command, str)
        args = ("/bin/sh", "-c", job.command) if isinstance(job.command, str) else job.command
        env = self._job_environ(job.env)
        env.set((job.id, str(attempt_no), self.worker_id))
        header = f"=== {format_time(self.clock())} attempt {attempt_no} worker {self.worker_id}\n"
        try:
            os.write(log_fd, header.encode())
        except OSError as exc:  # nowhere to put the job's output: don't run it blind
            return Attempt(None, f"cannot write the job's log ({exc.strerror})")
        gone = self._claim_gone(job.id, token)
        if gone is not None:
            self._not_started(job.id, token, log_fd, canceled=gone == CANCELED_WHILE_RUNNING)
            return None
        watchdog = self._watchdog
        if watchdog is not None:
            watchdog.starting(
                self._lease_renewed + self.config.lease_ms / 1000, job.id, self.worker_id
            )
        try:
            proc = spawn(args, env, job.cwd, self._devnull, log_fd)
        except OSError as exc:
            if watchdog is not None:
                watchdog.disarm()
            return self._note(log_fd, _not_startable(exc, job.cwd))
        if watchdog is not None:
            watchdog.started(proc.pid)
        timeout_ms = job.timeout_ms if job.timeout_ms is not None else self.config.job_timeout_ms
        return self._note(log_fd, self._wait(proc, timeout_ms, cap, shell=shell, token=token))

    def _job_environ(self, job_env: Mapping[str, str]) -> Environ:
        """The environment for a job with this `env`, encoded once for many jobs (a large
        `env` is encoded for its own start only, not kept)."""
        key = tuple(job_env.items())
        environ = self._environs.get(key)
        if environ is None:
            environ = Environ({**self._environ, **job_env}, JOB_VARIABLES)
            if sum(len(name) + len(value) for name, value in key) <= KEPT_MAX_CHARS:
                if len(self._environs) >= ENVIRONS_KEPT:
                    self._environs.clear()
                self._environs[key] = environ
        return environ

    def _claim_gone(self, job_id: str, token: str) -> str | None:
        """None while the claim is ours and young enough to start the job on; else why not.

        Why this is safe (issue 14): the claim, or the last renewal, set the lease to
        run out lease_ms after _lease_renewed. Until then no other worker can take the
        job over: recovery waits for the lease, or for this process's death. So while
        less than SPAWN_FRESH_FRACTION of lease_ms has passed on the lease clock (which
        counts a SIGSTOP, a slow disk, swapping and a suspended machine alike), the
        claim is ours without asking the store, and the job starts with nine tenths of
        its lease ahead, which the heartbeat renews and _wait enforces. That is every
        claim in the normal case, at the cost of reading a clock. A worker that paused
        longer renews first: a renewal that succeeds proves the claim is still ours and
        extends its lease. A pause after this check cannot be ruled out by any check;
        it is bounded the same way: _wait and the watchdog stop the job once the lease
        has run out.
        """
        lease_s = self.config.lease_ms / 1000
        fresh_s = lease_s * SPAWN_FRESH_FRACTION
        while True:
            lost = self._lost_claim
            if lost is not None and lost[0] == token:
                return lost[1]
            if procs.lease_clock() - self._lease_renewed < fresh_s:
                return None
            began = procs.lease_clock()
            now = self.clock()
            beat = self.store.heartbeat(
                self.worker_id, now, now + timedelta(seconds=lease_s), job_id, token
            )
            if beat.canceled:
                return CANCELED_WHILE_RUNNING
            if not beat.claim_held:
                return "another worker took the job over"
            self._lease_renewed = began
            fresh_s = lease_s / 2  # just renewed: half the lease is left for a slow store

    def _not_started(self, job_id: str, token: str, log_fd: int, *, canceled: bool) -> None:
        """The claim was gone before the job could start: run nothing, record nothing.
        A job canceled meanwhile has no process to stop, so its claim is dropped now."""
        what = "canceled before it started" if canceled else "claim lost before it started"
        _append(log_fd, f"{what}: not run", self.clock())
        if canceled:
            self.store.release_claim(job_id, token, None, now=self.clock())
        self.log(f"job {job_id}: {what}; not run")

    def _note(self, log_fd: int, attempt: Attempt) -> Attempt:
        _append(log_fd, attempt.error or "exit code 0", self.clock())
        return attempt

    def _wait(
        self,
        proc: subprocess.Popen[bytes] | procs.Spawned,
        timeout_ms: int,
        cap: CappedLog,
        *,
        shell: bool,
        token: str,
    ) -> Attempt:
        """Wait for the job to exit, its timeout, an interrupt, or the loss of its lease,
        holding its log under log_max_bytes meanwhile.

        A job whose lease could not be renewed for lease_ms may already be running
        elsewhere (the lease lapsed and another worker recovered it): kill it here, so
        one job never runs twice at the same time.
        """
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else math.inf
        lease_s = self.config.lease_ms / 1000
        lapsed = f"worker could not renew its lease for {self.config.lease_ms} ms"
        while True:
            now = time.monotonic()
            lease_left = self._lease_renewed + lease_s - procs.lease_clock()
            reason = self._interrupt_reason
            if self._lost_claim is not None and self._lost_claim[0] == token:
                reason = self._lost_claim[1]
            elif lease_left < 0:
                reason = lapsed
            elif now >= deadline:
                reason = f"timed out after {timeout_ms} ms"
            if reason is not None:
                if self._watchdog is not None:
                    self._watchdog.disarm()  # this worker stops the job itself
                procs.kill_group(proc)
                return Attempt(None, reason)
            wait_s = min(deadline - now, lease_left, cap.check())
            procs.wait_exited([proc], self._wake, max(0.0, wait_s) + 0.001)
            if (code := proc.returncode) is not None:
                if code < 0 and procs.lease_clock() > self._lease_renewed + lease_s:
                    # killed by the watchdog while this worker was stopped
                    return Attempt(None, lapsed)
                return Attempt.from_returncode(code, shell=shell)
            if self._stopping and not self._stop_announced:
                self._stop_announced = True
                self.log(
                    f"stopping: job {self._current[0] if self._current else ''} finishes first "
                    "(Ctrl-C again a second later, or SIGQUIT, interrupts it)"
                )

    # -- leases and recovery -------------------------------------------------------------

    def _heartbeat_loop(self, done: threading.Event) -> None:
        """Renew this worker's lease (and its job's) every lease_ms / 3, on its own connection."""
        store: Store | None = None
        interval = self.config.lease_ms / 3000
        lease_s = self.config.lease_ms / 1000
        try:
            while not done.wait(interval):
                current = self._current
                began = procs.lease_clock()
                now = self.clock()
                lease_until = now + timedelta(milliseconds=self.config.lease_ms)
                claim = current or self._stopping_claim
                try:
                    store = store or open_store(self.store.url, durable=False)
                    beat = store.heartbeat(
                        self.worker_id, now, lease_until, *(claim or (None, None))
                    )
                except Exception as exc:  # a busy or unreachable store: try again next beat
                    self.log(f"heartbeat failed: {exc}")
                    continue
                if current is not None and self._current == current:
                    if beat.claim_held:
                        # A lease that ran out stays run out (a stopped or suspended worker
                        # wakes up here): the job may have been taken over, or killed by
                        # the watchdog, meanwhile; _wait ends the attempt.
                        if began - self._lease_renewed <= lease_s:
                            self._lease_renewed = began
                            if self._watchdog is not None:
                                self._watchdog.renew(began + lease_s)
                        else:
                            self._wake.wake()  # _wait's timer stood still through a suspend
                    elif self._lost_claim is not None and self._lost_claim[0] == current[1]:
                        pass  # already being stopped
                    elif beat.canceled:
                        self.log(f"job {current[0]}: canceled; stopping it")
                        self._lost_claim = (current[1], CANCELED_WHILE_RUNNING)
                        self._wake.wake()
                    else:
                        self.log(f"job {current[0]}: lease lost to another worker; killing it")
                        reason = "worker lost its lease (another worker took the job over)"
                        self._lost_claim = (current[1], reason)
                        self._wake.wake()
                if beat.stop_requested and not self._stopping:
                    self.log("stop requested through the store")
                    self.stop()
        finally:
            if store is not None:
                store.close()

    def recover_lost_jobs(self) -> int:
        """Fail the attempts of processing jobs whose worker is gone; returns how many.

        A worker is gone when its lease has expired, or (sooner) when it ran on this
        host, in this boot and PID namespace (see models.namespace_key), and its
        process no longer exists. A job canceled while running whose worker is gone
        stays canceled: its processes here are killed and the claim it kept is dropped.
        """
        if time.monotonic() - self._last_recover < RECOVER_EVERY_S:
            return 0
        self._last_recover = time.monotonic()
        now = self.clock()
        recovered = 0
        registered: set[str] | None = None
        for job in self.store.processing_jobs():
            if job.worker_id is None or job.lease_token is None:
                continue
            host, pid = worker_host_pid(job.worker_id)
            local_dead = host == self.host and pid is not None and not procs.pid_alive(pid)
            if local_dead and not worker_is_local(job.worker_id):
                # Same host name, but its pid may name a process in another PID namespace
                # or boot (issue 14). An id without a namespace key (an older queuectl's)
                # counts as dead only if the worker is not registered either: a live
                # worker renews its registration with its job's lease, wherever it runs.
                if registered is None:
                    registered = {w.id for w in self.store.live_workers(now)}
                unplaced = worker_namespace(job.worker_id) is None
                local_dead = unplaced and job.worker_id not in registered
            expired = job.lease_expires_at is not None and job.lease_expires_at < now
            if not (local_dead or expired):
                continue
            if host == self.host:
                procs.signal_job(job.id, job.worker_id, signal.SIGKILL)
            if job.state is JobState.CANCELED:
                if self.store.release_claim(job.id, job.lease_token, None, now=now):
                    self.log(f"job {job.id}: canceled while running; stopped (its worker is gone)")
                continue
            reason = "worker lost (process died)" if local_dead else "worker lost (lease expired)"
            outcome = failure_transition(
                job, now, self.config, exit_code=None, error=reason, tail=None
            )
            # Unless its worker is known dead, the lease must still be expired when we write:
            # a heartbeat may have renewed it since processing_jobs() was read.
            expired_before = None if local_dead else now
            if self.store.finish(
                job.id, job.lease_token, outcome, now, expired_before=expired_before
            ):
                recovered += 1
                self.log(f"job {job.id} {outcome.state.value} ({reason}, worker {job.worker_id})")
        return recovered


def _open_log(path: Path) -> int:
    """The job's log, opened to append to (the job's output) and to read its tail back.
    A symlink, FIFO or anything but a regular file fails the attempt: a FIFO would hang
    the worker while its heartbeat kept the lease alive (issue 14).

    :raises FileNotFoundError: the logs directory is gone.
    :raises NotRegularFile: something else stands at the path.
    """
    return open_regular(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOCTTY)


def _log_unusable(exc: NotRegularFile) -> str:
    if exc.kind is None:
        return f"cannot open the job's log {exc.path} ({exc.strerror or 'not a regular file'})"
    return f"the job's log {exc.path} is {exc.kind}, not a regular file: remove it"


def _append(log_fd: int, line: str, when: datetime) -> None:
    """A line of ours in the job's log (how the attempt ended, or why it never started)."""
    with contextlib.suppress(OSError):  # a full disk must not hide how the job ended
        os.write(log_fd, f"=== {format_time(when)} {line}\n".encode())


def _not_startable(exc: OSError, cwd: str | None) -> Attempt:
    """A failed attempt whose command could not be started. subprocess reports a failed
    chdir(cwd) with the cwd as the error's filename, a failed exec with the command's."""
    if cwd is not None and exc.filename == cwd:
        if isinstance(exc, FileNotFoundError):
            return Attempt(None, f"working directory not found: {cwd}")
        return Attempt(None, f"cannot enter working directory {cwd}: {exc.strerror}")
    if isinstance(exc, FileNotFoundError):
        return Attempt(127, "command not found (exit 127)")
    if isinstance(exc, PermissionError):
        return Attempt(126, "command not executable (exit 126)")
    return Attempt(None, f"could not start: {exc.strerror}")  # E2BIG and friends


def _read_tail(log_fd: int) -> str | None:
    """The last OUTPUT_TAIL_BYTES of the job's log, kept in the store for `logs` anywhere.
    Read from the descriptor the job wrote to, never by its path again."""
    try:
        size = os.fstat(log_fd).st_size
        data = os.pread(log_fd, OUTPUT_TAIL_BYTES, max(0, size - OUTPUT_TAIL_BYTES))
    except OSError:
        return None
    # NUL cannot be stored in a PostgreSQL text column; the log file keeps the bytes.
    return data.decode("utf-8", errors="replace").replace("\0", "\ufffd")
