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
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from . import procs
from .config import Config
from .models import (
    OUTPUT_TAIL_BYTES,
    Job,
    JobState,
    WorkerInfo,
    format_time,
    new_worker_id,
    utcnow,
    worker_host_pid,
)
from .paths import job_log_path, logs_dir
from .store import Store, Transition, open_store

Clock = Callable[[], datetime]
Log = Callable[[str], None]
CHANGE_CHECK_S = 0.025  # idle workers look for new commits this often (PRAGMA data_version)
RECOVER_EVERY_S = 1.0


def backoff_ms(config: Config, attempts: int) -> int:
    """Wait before retry number `attempts`: backoff_base ** attempts seconds, capped."""
    try:
        wait = config.backoff_base**attempts * 1000
    except OverflowError:
        wait = math.inf
    return int(min(wait, config.backoff_max_ms))


def failure_transition(
    job: Job, now: datetime, config: Config, *, exit_code: int | None, error: str, tail: str | None
) -> Transition:
    """A failed attempt: retry after a backoff, or move to the DLQ once retries run out."""
    attempts = job.attempts + 1
    if attempts > job.max_retries:
        return Transition(JobState.DEAD, attempts, now, exit_code, error, tail)
    available_at = now + timedelta(milliseconds=backoff_ms(config, attempts))
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
    print(f"{format_time(utcnow())} {line}", file=sys.stderr, flush=True)


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
        self._lease_renewed = time.monotonic()
        self._last_recover = -math.inf
        self._logs = logs_dir()
        self._environ = dict(os.environ)  # copied once: decoding os.environ per job costs
        self._devnull = os.open(os.devnull, os.O_RDONLY)  # every job's stdin, opened once

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
        beat_stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(beat_stop,), daemon=True)
        beat.start()
        try:
            while not self._stopping:
                if self.run_once():
                    continue
                if drain and self.store.drain_blockers(self.queues, self.clock()) == 0:
                    break
                self._idle_wait()
        finally:
            beat_stop.set()
            beat.join()
            self.store.deregister_worker(self.worker_id)
            self.log(f"worker {self.worker_id} stopped after {self.jobs_run} job(s)")

    def run_once(self) -> bool:
        """Claim and run at most one due job; True if one ran."""
        self.recover_lost_jobs()
        if self._stopping:
            return False
        now = self.clock()
        token = secrets.token_hex(8)
        lease_until = now + timedelta(milliseconds=self.config.lease_ms)
        job = self.store.claim_next(self.worker_id, self.queues, now, lease_until, token)
        if job is None:
            return False
        self._current = (job.id, token)
        self._lease_renewed = started = time.monotonic()
        log_path: Path | None = None
        try:
            log_path = job_log_path(job.id, self._logs)
            attempt = self._execute(job, log_path, token)
        except Exception as exc:  # a failure of ours must not leave the job processing
            attempt = Attempt(None, f"worker error: {exc}")
        tail = _read_tail(log_path) if log_path else None
        self._current = None
        self._record(job, token, attempt, tail, time.monotonic() - started)
        self.jobs_run += 1
        return True

    def _record(
        self, job: Job, token: str, attempt: Attempt, tail: str | None, took: float
    ) -> None:
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
        if not self.store.finish(job.id, token, outcome, now):
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
                ending = f"=== {format_time(self.clock())} canceled while running\n"
                with contextlib.suppress(OSError), open(job_log_path(job_id, self._logs), "a") as f:
                    f.write(ending)
            self.store.release_claim(job_id, token, tail)
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

    def _execute(self, job: Job, log_path: Path, token: str) -> Attempt:
        attempt_no = job.attempts + 1
        shell = isinstance(job.command, str)
        args = ["/bin/sh", "-c", job.command] if isinstance(job.command, str) else list(job.command)
        env = {
            **self._environ,
            **job.env,
            "QUEUECTL_JOB_ID": job.id,
            "QUEUECTL_ATTEMPT": str(attempt_no),
            "QUEUECTL_WORKER_ID": self.worker_id,
        }
        try:
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the logs directory was removed under us: make it again
            self._logs = logs_dir()
            log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            header = (
                f"=== {format_time(self.clock())} attempt {attempt_no} worker {self.worker_id}\n"
            )
            try:
                os.write(log_fd, header.encode())
            except OSError as exc:  # nowhere to put the job's output: don't run it blind
                return Attempt(None, f"cannot write the job's log ({exc.strerror})")
            if job.cwd is not None and not os.path.isdir(job.cwd):
                return self._note(log_fd, Attempt(None, f"working directory not found: {job.cwd}"))
            try:
                proc = subprocess.Popen(  # noqa: S603 - running the job's command is the point
                    args,
                    stdin=self._devnull,
                    stdout=log_fd,
                    stderr=log_fd,
                    cwd=job.cwd,
                    env=env,
                    start_new_session=True,  # its own group: timeouts kill it all
                )
            except FileNotFoundError:
                return self._note(log_fd, Attempt(127, "command not found (exit 127)"))
            except PermissionError:
                return self._note(log_fd, Attempt(126, "command not executable (exit 126)"))
            except OSError as exc:  # E2BIG and friends: the command cannot be started at all
                return self._note(log_fd, Attempt(None, f"could not start: {exc.strerror}"))
            timeout_ms = (
                job.timeout_ms if job.timeout_ms is not None else self.config.job_timeout_ms
            )
            attempt = self._wait(proc, timeout_ms, shell=shell, token=token)
            return self._note(log_fd, attempt)
        finally:
            os.close(log_fd)

    def _note(self, log_fd: int, attempt: Attempt) -> Attempt:
        ending = attempt.error or "exit code 0"
        with contextlib.suppress(OSError):  # a full disk must not hide how the job ended
            os.write(log_fd, f"=== {format_time(self.clock())} {ending}\n".encode())
        return attempt

    def _wait(
        self, proc: subprocess.Popen[bytes], timeout_ms: int, *, shell: bool, token: str
    ) -> Attempt:
        """Wait for the job to exit, its timeout, an interrupt, or the loss of its lease.

        A job whose lease could not be renewed for lease_ms may already be running
        elsewhere (the lease lapsed and another worker recovered it): kill it here, so
        one job never runs twice at the same time.
        """
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms else math.inf
        lease_s = self.config.lease_ms / 1000
        while True:
            now = time.monotonic()
            reason = self._interrupt_reason
            if self._lost_claim is not None and self._lost_claim[0] == token:
                reason = self._lost_claim[1]
            elif now > self._lease_renewed + lease_s:
                reason = f"worker could not renew its lease for {self.config.lease_ms} ms"
            elif now >= deadline:
                reason = f"timed out after {timeout_ms} ms"
            if reason is not None:
                procs.kill_group(proc)
                return Attempt(None, reason)
            wait_s = min(deadline, self._lease_renewed + lease_s) - now
            if procs.wait_exited([proc], self._wake, max(0.0, wait_s) + 0.001):
                return Attempt.from_returncode(proc.returncode, shell=shell)
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
        try:
            while not done.wait(interval):
                current = self._current
                began = time.monotonic()
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
                        self._lease_renewed = began
                    elif self._lost_claim is not None and self._lost_claim[0] == current[1]:
                        pass  # already being stopped
                    elif beat.canceled:
                        self.log(f"job {current[0]}: canceled; stopping it")
                        self._lost_claim = (current[1], "canceled while running")
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

        A worker is gone when its lease has expired, or (sooner) when it ran on
        this host and its process no longer exists. A job canceled while running
        whose worker is gone stays canceled: its processes here are killed and the
        claim it kept is dropped.
        """
        if time.monotonic() - self._last_recover < RECOVER_EVERY_S:
            return 0
        self._last_recover = time.monotonic()
        now = self.clock()
        recovered = 0
        for job in self.store.processing_jobs():
            if job.worker_id is None or job.lease_token is None:
                continue
            host, pid = worker_host_pid(job.worker_id)
            local_dead = host == self.host and pid is not None and not procs.pid_alive(pid)
            expired = job.lease_expires_at is not None and job.lease_expires_at < now
            if not (local_dead or expired):
                continue
            if host == self.host:
                procs.signal_job(job.id, job.worker_id, signal.SIGKILL)
            if job.state is JobState.CANCELED:
                if self.store.release_claim(job.id, job.lease_token, None):
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


def _read_tail(log_path: Path) -> str | None:
    """The last OUTPUT_TAIL_BYTES of the job's log, kept in the store for `logs` anywhere."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - OUTPUT_TAIL_BYTES))
            # NUL cannot be stored in a PostgreSQL text column; the log file keeps the bytes.
            return f.read().decode("utf-8", errors="replace").replace("\0", "\ufffd")
    except OSError:
        return None
