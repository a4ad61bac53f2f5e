"""The benchmark scenarios: each one run is a fresh QUEUECTL_HOME and a set of figures.

Every machine-dependent figure comes with a baseline measured in the same run:
the start-up of a bare interpreter (`python -c pass`) for command latencies
(enqueue, apply, validate, spool), the same 2,000 shell spawns from a plain Python
loop for worker throughput, for PostgreSQL the same work on SQLite, and for the
scheduler the same `worker run` with no schedule (CPU) and `queuectl status` on the
same store (`schedule tick`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .harness import (
    BASELINE_CMD,
    PYTHON,
    BenchError,
    BenchSkipped,
    Exit,
    Proc,
    Stopwatch,
    bench_env,
    fresh_home,
    median,
    percentile,
    proc_context_switches,
    proc_cpu_s,
    proc_tree,
    proc_tree_context_switches,
    proc_tree_cpu_s,
    queuectl,
    run,
    wait_until,
)
from .stores import PostgresServer, SqlitePeek

if TYPE_CHECKING:
    from queuectl.store import Store

_T = TypeVar("_T")

THROUGHPUT_WORKERS = (1, 2, 4)
WORKER_START_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 10.0  # one latency-probe job, from enqueue to completed
SETTLE_S = 0.5  # after a worker reports it started, before idle CPU is sampled
POSTGRES_WORKERS = (2, 4)
APPLY_TEAMS = 10  # the declared files sit in one directory per team, as in a GitOps repository
SPOOL_POLL_S = 0.005  # how often the store is read while waiting for a spooled job
SPOOL_IDLE_S = 1.0  # after the watcher's warm-up file, before anything is timed
# Idle time before each latency drop: shorter and longer than the 0.5 s for which
# watchdog's inotify observer holds a move out of the watched directory (the watcher's
# own claim of the previous file) while it waits for a matching move in.
SPOOL_GAPS_S = (0.25, 0.75)
SPOOL_BURST_TIMEOUT_S = 300.0
PEERS_WORKERS = 2  # as the throughput target: N = 2
TSP_ROUND_JOBS = 800  # queued tsp jobs at once: each holds one of ~1,000 server connections
PEER_TIMEOUT_S = 300.0
PEER_INSTALL_TIMEOUT_S = 300.0
PEERS_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-peers.txt"
INSTALL_FLAG_ENV = "QUEUECTL_BENCH_INSTALL"  # =1: the benchmarks may apt-get install peers
SCHEDULE_WORKERS = 2  # `worker run --count 2`: a supervisor, its scheduler thread, 2 workers
SCHEDULE_SETTLE_S = 2.0  # after the workers registered, before the first slot measured
SCHEDULE_GRACE_S = 10.0  # after the last slot measured, for its run to have started
SCHEDULE_IDLE_SETTLE_S = 3.0  # after the workers registered: the scheduler's first passes
# Any 60 s window holds exactly one minute boundary: one tick of every `* * * * *` schedule.
SCHEDULE_BUSY_WINDOW_S = 60.0
SCHEDULE_UNSERVED_QUEUE = "bench-unserved"  # the busy runs' queue: created, never run
SCHEDULE_QUIET_AFTER_MIN = 30  # no daily slot in the next 30 minutes after the setup ...
SCHEDULE_QUIET_BEFORE_MIN = 5  # ... nor in the 5 before it
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Settings:
    """How much work each scenario does; --quick trims the sample counts, and the workload
    only where the figure is a rate (PostgreSQL throughput)."""

    quick: bool = False
    repeat: int = 3

    @property
    def enqueue_runs(self) -> int:
        return 10 if self.quick else 20

    @property
    def baseline_runs(self) -> int:
        return 5

    @property
    def batch_jobs(self) -> int:
        return 10_000

    @property
    def throughput_jobs(self) -> int:
        return 2_000

    @property
    def latency_samples(self) -> int:
        return 20 if self.quick else 50

    @property
    def idle_window_s(self) -> float:
        return 5.0 if self.quick else 10.0

    @property
    def apply_files(self) -> int:
        return 100

    @property
    def apply_jobs_per_file(self) -> int:
        return 100

    @property
    def reapply_runs(self) -> int:
        return 1 if self.quick else 3

    @property
    def validate_files(self) -> int:
        return 1_000

    @property
    def validate_runs(self) -> int:
        return 3 if self.quick else 5

    @property
    def spool_files(self) -> int:
        return 10_000

    @property
    def spool_latency_samples(self) -> int:
        return 10 if self.quick else 30

    @property
    def postgres_jobs(self) -> int:
        return 1_000 if self.quick else 2_000

    @property
    def peers_jobs(self) -> int:
        return 500 if self.quick else 2_000

    @property
    def scale_jobs(self) -> int:
        return 100_000 if self.quick else 1_000_000

    @property
    def scale_pending(self) -> int:
        return 1_000

    @property
    def scale_waiting(self) -> int:
        """Jobs waiting on needs (chains of 100), at the top of the claim order."""
        return 1_000 if self.quick else 10_000

    @property
    def scale_claims(self) -> int:
        return 50 if self.quick else 200

    @property
    def scale_status_runs(self) -> int:
        return 3 if self.quick else 5

    @property
    def prune_jobs(self) -> int:
        return 100_000 if self.quick else 1_000_000

    @property
    def prune_window_s(self) -> float:
        """The stream measured before the prune, beside the prune itself."""
        return 10.0 if self.quick else 20.0

    @property
    def prune_background_batches(self) -> int:
        return 10 if self.quick else 20

    @property
    def schedule_latency_slots(self) -> int:
        return 10 if self.quick else 30

    @property
    def schedule_idle_schedules(self) -> int:
        return 1_000

    @property
    def schedule_idle_window_s(self) -> float:
        return 10.0 if self.quick else 30.0

    @property
    def schedule_tick_schedules(self) -> int:
        return 10_000

    @property
    def schedule_tick_runs(self) -> int:
        return 3 if self.quick else 5

    def to_dict(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "repeat": self.repeat,
            "enqueue_runs": self.enqueue_runs,
            "baseline_runs": self.baseline_runs,
            "batch_jobs": self.batch_jobs,
            "throughput_jobs": self.throughput_jobs,
            "throughput_workers": list(THROUGHPUT_WORKERS),
            "latency_samples": self.latency_samples,
            "idle_window_s": self.idle_window_s,
            "apply_files": self.apply_files,
            "apply_jobs_per_file": self.apply_jobs_per_file,
            "reapply_runs": self.reapply_runs,
            "validate_files": self.validate_files,
            "validate_runs": self.validate_runs,
            "spool_files": self.spool_files,
            "spool_latency_samples": self.spool_latency_samples,
            "spool_gaps_s": list(SPOOL_GAPS_S),
            "postgres_jobs": self.postgres_jobs,
            "postgres_workers": list(POSTGRES_WORKERS),
            "peers_jobs": self.peers_jobs,
            "peers_workers": PEERS_WORKERS,
            "scale_jobs": self.scale_jobs,
            "scale_pending": self.scale_pending,
            "scale_waiting": self.scale_waiting,
            "scale_claims": self.scale_claims,
            "scale_status_runs": self.scale_status_runs,
            "prune_jobs": self.prune_jobs,
            "prune_window_s": self.prune_window_s,
            "prune_background_batches": self.prune_background_batches,
            "schedule_latency_slots": self.schedule_latency_slots,
            "schedule_workers": SCHEDULE_WORKERS,
            "schedule_idle_schedules": self.schedule_idle_schedules,
            "schedule_idle_window_s": self.schedule_idle_window_s,
            "schedule_busy_window_s": SCHEDULE_BUSY_WINDOW_S,
            "schedule_tick_schedules": self.schedule_tick_schedules,
            "schedule_tick_runs": self.schedule_tick_runs,
        }


@dataclass(frozen=True)
class Metric:
    """One figure of a scenario; `target_max` is the spec's bound (the median must be below)."""

    key: str
    label: str
    unit: str  # ms, s, jobs/s, x, %, /s
    target_max: float | None = None
    group: str | None = None  # a part of the scenario that may be skipped (a peer queue)


@dataclass
class RunResult:
    """One run of a scenario: its figures (by Metric.key) and the raw samples behind them."""

    metrics: dict[str, float]
    raw: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # Metric.group -> why it did not run


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    metrics: tuple[Metric, ...]
    run: Callable[[Settings], RunResult]
    default: bool = True  # False: runs only when named with --only (it takes many minutes)


# -- helpers ---------------------------------------------------------------------------


def _baseline(env: dict[str, str], runs: int) -> list[Exit]:
    """`python -c pass` `runs` times (after one untimed warm-up)."""
    run(BASELINE_CMD, env=env)
    return [run(BASELINE_CMD, env=env) for _ in range(runs)]


def _ms(seconds: float) -> float:
    return seconds * 1000


def _store_env(home: Path, db_url: str | None) -> dict[str, str]:
    """bench_env(home), pointed at the store `db_url` if given (else the home's SQLite file)."""
    env = bench_env(home)
    if db_url is not None:
        env["QUEUECTL_DATABASE_URL"] = db_url
    return env


def _init_store(env: dict[str, str]) -> None:
    """Create and migrate the store outside the timed part (`status` touches no job)."""
    run(queuectl("status"), env=env)


def _write_batch(path: Path, jobs: int, command: Callable[[int], str], **fields: object) -> None:
    path.write_text(json.dumps([{"command": command(i), **fields} for i in range(jobs)]))


def _enqueue_batch(env: dict[str, str], path: Path, jobs: int) -> Exit:
    result = run(queuectl("enqueue", "-"), env=env, stdin=path, timeout=120)
    ids = result.stdout.split()
    if len(ids) != jobs or len(set(ids)) != jobs:
        raise BenchError(
            f"`enqueue -` printed {len(ids)} ids ({len(set(ids))} distinct), not {jobs}"
        )
    return result


def _status_counts(env: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = json.loads(run(queuectl("status"), env=env).stdout)["counts"]
    return counts


def _wait_started(worker: Proc, env: dict[str, str]) -> None:
    """Wait until `status` lists the worker as live (it has registered and is polling)."""

    def started() -> bool:
        if not worker.alive():
            raise BenchError(f"the worker exited early: {worker.read_stderr().strip()[-300:]}")
        workers = json.loads(run(queuectl("status"), env=env).stdout)["workers"]
        return any(w.get("pid") == worker.pid for w in workers)

    wait_until(started, timeout=WORKER_START_TIMEOUT_S, what="the worker to start", interval=0.05)


def _instant(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- 1. enqueue ---------------------------------------------------------------------------


def run_enqueue(settings: Settings) -> RunResult:
    """Wall time of one `queuectl enqueue "true"` process vs `python -c pass`, interleaved."""
    with fresh_home() as home:
        env = bench_env(home)
        first = run(queuectl("enqueue", "true"), env=env)  # creates and migrates the store
        run(BASELINE_CMD, env=env)
        enq: list[Exit] = []
        base: list[Exit] = []
        for _ in range(settings.enqueue_runs):
            base.append(run(BASELINE_CMD, env=env))
            enq.append(run(queuectl("enqueue", "true"), env=env))
    enq_ms = median([_ms(e.wall_s) for e in enq])
    base_ms = median([_ms(b.wall_s) for b in base])
    return RunResult(
        metrics={"enqueue_ms": enq_ms, "baseline_ms": base_ms, "ratio": enq_ms / base_ms},
        raw={
            "first_enqueue_ms": _ms(first.wall_s),
            "enqueue_wall_ms": [_ms(e.wall_s) for e in enq],
            "enqueue_cpu_ms": [_ms(e.cpu_s) for e in enq],
            "baseline_wall_ms": [_ms(b.wall_s) for b in base],
            "baseline_cpu_ms": [_ms(b.cpu_s) for b in base],
        },
    )


# -- 2. batch -------------------------------------------------------------------------------


def run_batch(settings: Settings) -> RunResult:
    """`queuectl enqueue -` of one JSON array of 10,000 jobs on stdin, into an existing store."""
    jobs = settings.batch_jobs
    with fresh_home() as home:
        env = bench_env(home)
        batch = home.parent / "batch.json"
        _write_batch(batch, jobs, lambda i: f"echo job {i}")
        _init_store(env)
        base = _baseline(env, settings.baseline_runs)
        result = _enqueue_batch(env, batch, jobs)
        input_bytes = batch.stat().st_size
        pending = _status_counts(env)["pending"]
        if pending != jobs:
            raise BenchError(f"after the batch, {pending} jobs are pending, not {jobs}")
    base_ms = median([_ms(b.wall_s) for b in base])
    return RunResult(
        metrics={
            "wall_s": result.wall_s,
            "baseline_ms": base_ms,
            "ratio": _ms(result.wall_s) / base_ms,
        },
        raw={
            "jobs": jobs,
            "input_bytes": input_bytes,
            "cpu_s": result.cpu_s,
            "baseline_wall_ms": [_ms(b.wall_s) for b in base],
        },
    )


# -- 3. throughput ------------------------------------------------------------------------


FLOOR_ARGV = ("/bin/sh", "-c", "true")
FLOOR_TIMEOUT_S = 120.0  # for all of a floor's spawns together, not for each


def _spawn_subprocess() -> None:
    # No `timeout=`: Popen.wait(timeout) polls waitpid with sleeps from about 1 ms,
    # doubling, so it notices each exit late and roughly halves the spawn rate on 2 cores
    # (issue 19). Without it, wait() blocks in waitpid and returns at the exit.
    subprocess.run(FLOOR_ARGV, check=True)


def _spawn_posix() -> None:
    pid = os.posix_spawn(FLOOR_ARGV[0], list(FLOOR_ARGV), os.environ)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise BenchError(f"{' '.join(FLOOR_ARGV)!r} ended with wait status {status}")


FLOOR_SPAWNS: dict[str, Callable[[], None]] = {
    "subprocess": _spawn_subprocess,
    "posix_spawn": _spawn_posix,
}


def shell_floor(jobs: int, parallel: int, *, spawn: str = "subprocess") -> float:
    """Seconds for `jobs` runs of `/bin/sh -c true` from `parallel` threads sharing the
    work: `subprocess.run(...)` (the floor every throughput ratio divides by), or
    `os.posix_spawn` + `os.waitpid` (reported beside it).

    A hang is caught by the joining thread's deadline (FLOOR_TIMEOUT_S for the whole
    floor), which costs the spawns nothing; a hung thread is a daemon, so it cannot keep
    the session alive.
    """
    spawn_one = FLOOR_SPAWNS[spawn]
    counter = itertools.count()  # next() on a count is atomic under the GIL
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while next(counter) < jobs:
                spawn_one()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(parallel)]
    with Stopwatch() as sw:
        for t in threads:
            t.start()
        deadline = time.monotonic() + FLOOR_TIMEOUT_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise BenchError(f"the {spawn} floor did not finish {jobs} spawns in {FLOOR_TIMEOUT_S:g} s")
    if errors:
        raise BenchError(f"the {spawn} floor failed: {errors[0]}")
    return sw.seconds


@dataclass(frozen=True)
class Floors:
    """The floors of one measurement, each the mean of a run just before and one just
    after the work it is the yardstick for (so a change of load in between weighs on
    both sides alike)."""

    shell_s: float  # subprocess.run: the floor
    posix_s: float  # os.posix_spawn + os.waitpid
    samples: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        return {"shell_s": self.shell_s, "posix_spawn_s": self.posix_s, **self.samples}


def bracket_floors(jobs: int, parallel: int, work: Callable[[], _T]) -> tuple[_T, Floors]:
    """`work()` between two measurements of both floors, interleaved: one definition of
    the floor serves every throughput figure (throughput, postgres, peers)."""
    samples: dict[str, list[float]] = {name: [] for name in FLOOR_SPAWNS}

    def measure() -> None:
        for name in FLOOR_SPAWNS:
            samples[name].append(shell_floor(jobs, parallel, spawn=name))

    measure()
    result = work()
    measure()
    floors = Floors(
        shell_s=sum(samples["subprocess"]) / 2,
        posix_s=sum(samples["posix_spawn"]) / 2,
        samples={f"{name}_samples_s": values for name, values in samples.items()},
    )
    return result, floors


def _drain(jobs: int, workers: int, db_url: str | None = None, **fields: object) -> Exit:
    """`worker run --count N --drain` over `jobs` pre-enqueued `true` jobs (with `fields`
    added to each spec), in a fresh home (and the store at `db_url`, if given)."""
    with fresh_home() as home:
        env = _store_env(home, db_url)
        batch = home.parent / "batch.json"
        _write_batch(batch, jobs, lambda _i: "true", **fields)
        _enqueue_batch(env, batch, jobs)
        cmd = queuectl("worker", "run", "--count", str(workers), "--drain")
        with Proc(cmd, env=env, output_dir=home.parent, name=f"worker-{workers}") as proc:
            result = proc.wait(timeout=300).check(cmd)
        counts = _status_counts(env)
        if counts["completed"] != jobs:
            raise BenchError(f"after --drain with {workers} worker(s), counts are {counts}")
    return result


THROUGHPUT_TARGET = 2.2  # N=2, SQLite: time ÷ floor (issue 19: at least 0.45x the floor's rate)


def run_throughput(settings: Settings) -> RunResult:
    """`worker run --count N --drain` over 2,000 pre-enqueued `true` jobs, vs the shell floor."""
    jobs = settings.throughput_jobs
    metrics: dict[str, float] = {}
    raw: dict[str, Any] = {"jobs": jobs}
    for workers in THROUGHPUT_WORKERS:
        result, floors = bracket_floors(jobs, workers, functools.partial(_drain, jobs, workers))
        metrics[f"jobs_per_s_{workers}"] = jobs / result.wall_s
        metrics[f"floor_per_s_{workers}"] = jobs / floors.shell_s
        metrics[f"posix_spawn_per_s_{workers}"] = jobs / floors.posix_s
        metrics[f"ratio_{workers}"] = result.wall_s / floors.shell_s
        metrics[f"posix_ratio_{workers}"] = result.wall_s / floors.posix_s
        raw[f"workers_{workers}"] = {
            "wall_s": result.wall_s,
            "cpu_s": result.cpu_s,  # the worker processes and every job they ran
            "cpu_ms_per_job": _ms(result.cpu_s) / jobs,
            "floor_wall_s": floors.shell_s,
            "floors": floors.to_dict(),
        }
    # The claim's concurrency-key check, at a limit the 2 workers never reach: its cost.
    plain = _drain(jobs, 2)
    keyed = _drain(jobs, 2, concurrency_key="bench", concurrency_limit=2)
    metrics["keyed_per_s_2"] = jobs / keyed.wall_s
    metrics["unkeyed_per_s_2"] = jobs / plain.wall_s
    metrics["keyed_ratio_2"] = keyed.wall_s / plain.wall_s
    raw["keyed_2"] = {"wall_s": keyed.wall_s, "plain_wall_s": plain.wall_s}
    return RunResult(metrics, raw)


def _throughput_metrics() -> tuple[Metric, ...]:
    metrics: list[Metric] = []
    for n in THROUGHPUT_WORKERS:
        target = THROUGHPUT_TARGET if n == 2 else None
        metrics += [
            Metric(
                f"floor_per_s_{n}",
                f"floor: {n} thread(s) of `subprocess.run(sh -c true)`",
                "jobs/s",
            ),
            Metric(
                f"posix_spawn_per_s_{n}",
                f"beside it: {n} thread(s) of `posix_spawn` + `waitpid`",
                "jobs/s",
            ),
            Metric(f"jobs_per_s_{n}", f"`worker run --count {n} --drain`", "jobs/s"),
            Metric(f"ratio_{n}", f"N={n}: time ÷ floor", "x", target),
            Metric(f"posix_ratio_{n}", f"N={n}: time ÷ posix_spawn floor", "x"),
        ]
    metrics += [
        Metric("keyed_per_s_2", "N=2, every job with a concurrency_key (limit 2)", "jobs/s"),
        Metric("unkeyed_per_s_2", "N=2, the same jobs without a key (same run)", "jobs/s"),
        Metric("keyed_ratio_2", "N=2: time with a key ÷ without", "x"),
    ]
    return tuple(metrics)


# -- 4. pickup latency ------------------------------------------------------------------------


def _stamp(path: Path) -> float | None:
    """The `date +%s.%N` a job wrote, once the line is complete."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return float(text) if text.endswith("\n") else None


def _pickup(home: Path, env: dict[str, str], samples: int) -> dict[str, list[float]]:
    """Probe jobs enqueued one at a time for one idle `worker run` (default poll interval)."""
    claim_ms: list[float] = []
    exec_ms: list[float] = []
    spawn_to_exec_ms: list[float] = []
    cmd = queuectl("worker", "run")
    with Proc(cmd, env=env, output_dir=home.parent, name="worker") as worker:
        _wait_started(worker, env)
        for i in range(samples):
            stamp = home.parent / f"start-{i}.txt"
            before_spawn = time.time()
            job_cmd = f"date +%s.%N > {shlex.quote(str(stamp))}"
            job_id = run(queuectl("enqueue", job_cmd), env=env).stdout.strip()
            started_cmd = _wait_stamp(stamp, worker, job_id)
            job = _wait_completed(env, job_id)
            created = _instant(job["created_at"])
            claim_ms.append(_ms(_instant(job["started_at"]) - created))
            exec_ms.append(_ms(started_cmd - created))
            spawn_to_exec_ms.append(_ms(started_cmd - before_spawn))
    return {"claim_ms": claim_ms, "exec_ms": exec_ms, "spawn_to_exec_ms": spawn_to_exec_ms}


def run_latency(settings: Settings) -> RunResult:
    """One idle worker (default poll interval); jobs enqueued one at a time."""
    with fresh_home() as home:
        env = bench_env(home)
        _init_store(env)
        base = _baseline(env, settings.baseline_runs)
        samples = _pickup(home, env, settings.latency_samples)
    base_ms = median([_ms(b.wall_s) for b in base])
    p50 = percentile(samples["claim_ms"], 50)
    return RunResult(
        metrics={
            "claim_p50_ms": p50,
            "claim_p99_ms": percentile(samples["claim_ms"], 99),
            "exec_p50_ms": percentile(samples["exec_ms"], 50),
            "exec_p99_ms": percentile(samples["exec_ms"], 99),
            "baseline_ms": base_ms,
            "ratio": p50 / base_ms,
        },
        raw={**samples, "baseline_wall_ms": [_ms(b.wall_s) for b in base]},
    )


def _wait_stamp(path: Path, worker: Proc, job_id: str) -> float:
    """The instant the probe job's command ran, once it has written it."""
    found: list[float] = []

    def written() -> bool:
        value = _stamp(path)
        if value is None:
            if not worker.alive():
                raise BenchError(f"the worker exited: {worker.read_stderr().strip()[-300:]}")
            return False
        found.append(value)
        return True

    wait_until(written, timeout=JOB_TIMEOUT_S, what=f"job {job_id} to start", interval=0.002)
    return found[0]


def _wait_completed(env: dict[str, str], job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def completed() -> bool:
        job: dict[str, Any] = json.loads(run(queuectl("show", job_id), env=env).stdout)
        if job["state"] not in ("pending", "processing", "completed"):
            raise BenchError(f"latency probe {job_id} ended {job['state']}: {job['last_error']}")
        found.update(job)
        return bool(job["state"] == "completed")

    wait_until(completed, timeout=JOB_TIMEOUT_S, what=f"job {job_id} to complete", interval=0.01)
    return found


# -- 5. idle CPU ------------------------------------------------------------------------------


def run_idle(settings: Settings) -> RunResult:
    """CPU time of one idle `worker run` over a window, from /proc/PID/stat."""
    window = settings.idle_window_s
    with fresh_home() as home:
        env = bench_env(home)
        _init_store(env)
        base = _baseline(env, settings.baseline_runs)
        cmd = queuectl("worker", "run")
        with Proc(cmd, env=env, output_dir=home.parent, name="worker") as worker:
            _wait_started(worker, env)
            time.sleep(SETTLE_S)
            cpu0, switches0, t0 = (
                proc_cpu_s(worker.pid),
                proc_context_switches(worker.pid),
                time.monotonic(),
            )
            deadline = t0 + window
            while (left := deadline - time.monotonic()) > 0:
                time.sleep(min(left, 0.5))
                if not worker.alive():
                    raise BenchError(f"the idle worker exited: {worker.read_stderr()[-300:]}")
            cpu1, switches1, t1 = (
                proc_cpu_s(worker.pid),
                proc_context_switches(worker.pid),
                time.monotonic(),
            )
    elapsed = t1 - t0
    cpu = cpu1 - cpu0
    base_cpu_ms = median([_ms(b.cpu_s) for b in base])
    return RunResult(
        metrics={
            "cpu_pct": 100 * cpu / elapsed,
            "wakeups_per_s": (switches1 - switches0) / elapsed,
            "baseline_cpu_ms": base_cpu_ms,
            "ratio": _ms(cpu) * (10.0 / elapsed) / base_cpu_ms if base_cpu_ms else float("nan"),
        },
        raw={
            "window_s": elapsed,
            "cpu_s": cpu,
            "context_switches": switches1 - switches0,
            "baseline_cpu_ms": [_ms(b.cpu_s) for b in base],
        },
    )


# -- 6. apply ---------------------------------------------------------------------------------


def _write_declared(root: Path, files: int, per_file: int) -> None:
    """`files` YAML files of `per_file` jobs each, in one directory per team, as a GitOps
    repository would hold them: explicit ids, priorities, queues, labels, some scheduled."""
    for f in range(files):
        team = f"team-{f % APPLY_TEAMS:02d}"
        folder = root / team
        folder.mkdir(exist_ok=True)
        parts = [f"# {per_file} report jobs of {team}\n"]
        for j in range(per_file):
            i = f * per_file + j
            parts.append(
                f"- id: {team}.report-{i:05d}\n"
                f"  command: echo report {i} >> /dev/null\n"
                f"  priority: {i % 10}\n"
                f"  max_retries: {i % 4}\n"
                f"  timeout_ms: 600000\n"
                f"  queue: {team}\n"
                f"  labels: {{team: {team}, kind: report, batch: b{f:03d}}}\n"
            )
            if i % 10 == 0:
                parts.append(f'  run_at: "2030-01-01T02:00:00Z"\n  env: {{REPORT: "{i}"}}\n')
        (folder / f"reports-{f:03d}.yaml").write_text("".join(parts))


def _git_commit_all(root: Path, env: dict[str, str]) -> bool:
    """Make `root` a git work tree with everything committed (apply then records the commit);
    False where git is missing, and the directory stays a plain one."""
    git = shutil.which("git")
    if git is None:
        return False
    config = ["-c", "user.name=queuectl-bench", "-c", "user.email=bench@localhost"]
    config += ["-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "declared jobs"]):
        run([git, "-C", str(root), *config, *args], env=env)
    return True


def _apply(env: dict[str, str], root: Path, jobs: int, action: str) -> Exit:
    """`queuectl apply DIR`, checked: the plan has `jobs` entries, every one `action`."""
    result = run(queuectl("apply", str(root)), env=env, timeout=120)
    plan: list[dict[str, Any]] = json.loads(result.stdout)
    actions = {entry["action"] for entry in plan}
    if len(plan) != jobs or actions != {action}:
        raise BenchError(
            f"`apply` planned {len(plan)} jobs with actions {actions}, expected {jobs} {action}"
        )
    return result


def run_apply(settings: Settings) -> RunResult:
    """`queuectl apply DIR` of 10,000 declared jobs into an existing store, then again unchanged."""
    jobs = settings.apply_files * settings.apply_jobs_per_file
    with fresh_home() as home:
        env = bench_env(home)
        root = home.parent / "jobs"
        root.mkdir()
        _write_declared(root, settings.apply_files, settings.apply_jobs_per_file)
        in_git = _git_commit_all(root, env)
        _init_store(env)
        base = _baseline(env, settings.baseline_runs)
        first = _apply(env, root, jobs, "create")
        again = [_apply(env, root, jobs, "unchanged") for _ in range(settings.reapply_runs)]
        pending = _status_counts(env)["pending"]
        if pending != jobs:
            raise BenchError(f"after apply, {pending} jobs are pending, not {jobs}")
        sample: dict[str, Any] = json.loads(
            run(queuectl("show", "team-00.report-00000"), env=env).stdout
        )
        if in_git and not sample.get("source_commit"):
            raise BenchError(f"an applied job records no source_commit: {sample}")
    base_ms = median([_ms(b.wall_s) for b in base])
    reapply_s = median([r.wall_s for r in again])
    return RunResult(
        metrics={
            "apply_s": first.wall_s,
            "reapply_s": reapply_s,
            "baseline_ms": base_ms,
            "apply_ratio": _ms(first.wall_s) / base_ms,
            "reapply_ratio": _ms(reapply_s) / base_ms,
        },
        raw={
            "jobs": jobs,
            "files": settings.apply_files,
            "git_work_tree": in_git,
            "apply_cpu_s": first.cpu_s,
            "reapply_wall_s": [r.wall_s for r in again],
            "reapply_cpu_s": [r.cpu_s for r in again],
            "baseline_wall_ms": [_ms(b.wall_s) for b in base],
        },
    )


# -- 7. validate ------------------------------------------------------------------------------


def run_validate(settings: Settings) -> RunResult:
    """`queuectl validate DIR` over 1,000 one-job YAML files (it opens no store)."""
    files = settings.validate_files
    with fresh_home() as home:
        env = bench_env(home)
        root = home.parent / "specs"
        root.mkdir()
        for i in range(files):
            (root / f"job-{i:04d}.yaml").write_text(
                f"id: check-{i:04d}\ncommand: echo check {i}\npriority: {i % 5}\n"
                f"labels: {{suite: nightly}}\n"
            )
        base = _baseline(env, settings.baseline_runs)
        cmd = queuectl("validate", str(root))
        run(cmd, env=env)  # untimed: the page cache holds the files for every timed run
        timed = [run(cmd, env=env) for _ in range(settings.validate_runs)]
        expected = f"ok: {files} job(s) in {files} file(s)"
        if timed[-1].stderr.strip() != expected:
            raise BenchError(f"`validate` said {timed[-1].stderr.strip()!r}, not {expected!r}")
    base_ms = median([_ms(b.wall_s) for b in base])
    wall_s = median([t.wall_s for t in timed])
    return RunResult(
        metrics={"validate_s": wall_s, "baseline_ms": base_ms, "ratio": _ms(wall_s) / base_ms},
        raw={
            "files": files,
            "validate_wall_s": [t.wall_s for t in timed],
            "validate_cpu_s": [t.cpu_s for t in timed],
            "baseline_wall_ms": [_ms(b.wall_s) for b in base],
        },
    )


# -- 8. spool ---------------------------------------------------------------------------------


def _spool_job(job_id: str) -> str:
    return f"id: {job_id}\ncommand: echo {job_id}\nlabels: {{via: spool}}\n"


def _drop(spool: Path, name: str, text: str) -> tuple[float, float]:
    """Write `name.tmp` in the spool, then rename it to `name`, as writers are told to.

    Returns the instant just before the rename: (time.time(), time.perf_counter()).
    """
    tmp = spool / f"{name}.tmp"
    tmp.write_text(text)
    instant = time.time(), time.perf_counter()
    os.rename(tmp, spool / name)
    return instant


def _wait_spooled(peek: SqlitePeek, watcher: Proc, job_id: str, timeout: float) -> int:
    """Poll the store every 5 ms until the job exists; return its created_at (epoch ms)."""
    found: list[int] = []

    def exists() -> bool:
        created = peek.created_at_ms(job_id)
        if created is not None:
            found.append(created)
            return True
        if not watcher.alive():
            raise BenchError(f"the spool watcher exited: {watcher.read_stderr().strip()[-300:]}")
        return False

    wait_until(exists, timeout=timeout, what=f"spooled job {job_id}", interval=SPOOL_POLL_S)
    return found[0]


@contextlib.contextmanager
def _spool_watcher(home: Path, env: dict[str, str]) -> Iterator[tuple[Path, Proc, SqlitePeek]]:
    """A running `queuectl spool watch DIR`, known to be up: its warm-up file was ingested.

    Yields (DIR, the watcher, a read-only peek into the store); the watcher is stopped
    when the block ends.
    """
    spool = home.parent / "spool"
    spool.mkdir(mode=0o700)
    _init_store(env)
    cmd = queuectl("spool", "watch", str(spool))
    with (
        Proc(cmd, env=env, output_dir=home.parent, name="spool-watch") as watcher,
        SqlitePeek(home / "queue.db") as peek,
    ):
        _drop(spool, "warm-up.yaml", _spool_job("warm-up"))
        _wait_spooled(peek, watcher, "warm-up", timeout=WORKER_START_TIMEOUT_S)
        time.sleep(SPOOL_IDLE_S)  # the watcher is idle again before anything is timed
        yield spool, watcher, peek


def _spool_burst(files: int) -> dict[str, float]:
    """`files` one-job files dropped as fast as one writer can; until every job is pending."""
    drops = [(f"burst-{i:05d}.yaml", _spool_job(f"burst-{i:05d}")) for i in range(files)]
    expected = files + 1  # and the warm-up job
    with fresh_home() as home:
        env = bench_env(home)
        with _spool_watcher(home, env) as (spool, watcher, peek):

            def all_pending() -> bool:
                if peek.count("pending") >= expected:
                    return True
                if not watcher.alive():
                    raise BenchError(f"the spool watcher exited: {watcher.read_stderr()[-300:]}")
                return False

            start = time.perf_counter()
            for name, text in drops:
                _drop(spool, name, text)
            dropped = time.perf_counter()
            wait_until(
                all_pending,
                timeout=SPOOL_BURST_TIMEOUT_S,
                what=f"{files} spooled jobs to be pending",
                interval=0.01,
            )
            end = time.perf_counter()
        counts = _status_counts(env)
        rejected = sorted(p.name for p in (spool / "rejected").iterdir())
        done = sum(1 for _ in (spool / "done").iterdir())
        if counts["pending"] != expected or rejected or done != expected:
            raise BenchError(
                f"after the burst: counts {counts}, {done} files done, rejected {rejected[:4]}"
            )
    return {"drop_s": dropped - start, "all_pending_s": end - start, "after_last_s": end - dropped}


def _spool_latency(samples: int, gap_s: float) -> dict[str, list[float]]:
    """An idle watcher; one file renamed into place `gap_s` after the previous job appeared."""
    seen_ms: list[float] = []
    created_ms: list[float] = []
    with fresh_home() as home:
        env = bench_env(home)
        with _spool_watcher(home, env) as (spool, watcher, peek):
            for i in range(samples):
                time.sleep(gap_s)
                job_id = f"gap{round(gap_s * 1000)}-{i:03d}"
                wall, counter = _drop(spool, f"{job_id}.yaml", _spool_job(job_id))
                created = _wait_spooled(peek, watcher, job_id, timeout=JOB_TIMEOUT_S)
                seen_ms.append(_ms(time.perf_counter() - counter))
                created_ms.append(created - _ms(wall))
    return {"seen_ms": seen_ms, "created_ms": created_ms}


def run_spool(settings: Settings) -> RunResult:
    """A burst of 10,000 one-job files into a running watcher, then drop-to-pending latency."""
    with fresh_home() as home:
        base = _baseline(bench_env(home), settings.baseline_runs)
    files = settings.spool_files
    burst = _spool_burst(files)
    metrics = {
        "all_pending_s": burst["all_pending_s"],
        "drop_s": burst["drop_s"],
        "files_per_s": files / burst["all_pending_s"],
        "burst_ratio": burst["all_pending_s"] / burst["drop_s"],
    }
    raw: dict[str, Any] = {"files": files, "burst": burst}
    for gap_s in SPOOL_GAPS_S:
        key = f"gap{round(gap_s * 1000)}"
        lat = _spool_latency(settings.spool_latency_samples, gap_s)
        metrics[f"{key}_p50_ms"] = percentile(lat["seen_ms"], 50)
        metrics[f"{key}_p99_ms"] = percentile(lat["seen_ms"], 99)
        raw[key] = lat
    base_ms = median([_ms(b.wall_s) for b in base])
    metrics["baseline_ms"] = base_ms
    metrics["latency_ratio"] = metrics[f"gap{round(SPOOL_GAPS_S[-1] * 1000)}_p50_ms"] / base_ms
    raw["baseline_wall_ms"] = [_ms(b.wall_s) for b in base]
    return RunResult(metrics, raw)


def _spool_metrics() -> tuple[Metric, ...]:
    metrics = [
        Metric("all_pending_s", "10,000 files dropped: first drop to all pending", "s", 30.0),
        Metric("drop_s", "the writer alone: 10,000 `.tmp` writes and renames", "s"),
        Metric("files_per_s", "files ingested per second, over the burst", "files/s"),
        Metric("burst_ratio", "all pending ÷ the writer alone", "x"),
    ]
    for gap_s in SPOOL_GAPS_S:
        key = f"gap{round(gap_s * 1000)}"
        when = f"{gap_s:g} s after the previous job appeared"
        metrics += [
            Metric(f"{key}_p50_ms", f"rename to job in the store, {when}, p50", "ms", 100.0),
            Metric(f"{key}_p99_ms", f"rename to job in the store, {when}, p99", "ms"),
        ]
    metrics += [
        Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
        Metric("latency_ratio", f"p50 ({SPOOL_GAPS_S[-1]:g} s gap) ÷ baseline", "x"),
    ]
    return tuple(metrics)


# -- 9. PostgreSQL ----------------------------------------------------------------------------


def _pickup_on(settings: Settings, server: PostgresServer | None) -> dict[str, list[float]]:
    """Pickup latency samples in a fresh home, on SQLite or in a fresh PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(server.database()) if server is not None else None
        home = stack.enter_context(fresh_home())
        env = _store_env(home, db_url)
        _init_store(env)
        return _pickup(home, env, settings.latency_samples)


def run_postgres(settings: Settings) -> RunResult:
    """Throughput (N = 2, 4) and pickup latency on PostgreSQL, beside SQLite in the same run."""
    jobs = settings.postgres_jobs
    metrics: dict[str, float] = {}
    with PostgresServer.find() as server:
        raw: dict[str, Any] = {"jobs": jobs, "server": server.display, "version": server.version}
        for n in POSTGRES_WORKERS:

            def both(n: int = n) -> tuple[Exit, Exit]:
                lite = _drain(jobs, n)
                with server.database() as db_url:
                    return lite, _drain(jobs, n, db_url)

            (lite, pg), floors = bracket_floors(jobs, n, both)
            floor_s = floors.shell_s
            metrics[f"sqlite_jobs_per_s_{n}"] = jobs / lite.wall_s
            metrics[f"pg_jobs_per_s_{n}"] = jobs / pg.wall_s
            metrics[f"floor_per_s_{n}"] = jobs / floor_s
            metrics[f"sqlite_ratio_{n}"] = lite.wall_s / floor_s
            metrics[f"pg_ratio_{n}"] = pg.wall_s / floor_s
            metrics[f"pg_vs_sqlite_{n}"] = pg.wall_s / lite.wall_s
            raw[f"workers_{n}"] = {
                "floor_wall_s": floor_s,
                "floors": floors.to_dict(),
                "sqlite_wall_s": lite.wall_s,
                "sqlite_cpu_s": lite.cpu_s,
                "pg_wall_s": pg.wall_s,
                "pg_cpu_s": pg.cpu_s,  # the worker processes and their jobs, not the server
            }
        lite_lat = _pickup_on(settings, None)
        pg_lat = _pickup_on(settings, server)
        raw["databases"] = list(server.created)
    for name, lat in (("sqlite", lite_lat), ("pg", pg_lat)):
        metrics[f"{name}_claim_p50_ms"] = percentile(lat["claim_ms"], 50)
        metrics[f"{name}_claim_p99_ms"] = percentile(lat["claim_ms"], 99)
        metrics[f"{name}_exec_p50_ms"] = percentile(lat["exec_ms"], 50)
        raw[f"{name}_latency"] = lat
    metrics["pg_vs_sqlite_claim"] = metrics["pg_claim_p50_ms"] / metrics["sqlite_claim_p50_ms"]
    return RunResult(metrics, raw)


def _postgres_metrics() -> tuple[Metric, ...]:
    metrics: list[Metric] = []
    for n in POSTGRES_WORKERS:
        target = THROUGHPUT_TARGET if n == 2 else None
        metrics += [
            Metric(f"sqlite_jobs_per_s_{n}", f"N={n}: SQLite, `worker run --drain`", "jobs/s"),
            Metric(f"pg_jobs_per_s_{n}", f"N={n}: PostgreSQL, `worker run --drain`", "jobs/s"),
            Metric(
                f"floor_per_s_{n}",
                f"N={n}: floor, {n} thread(s) of `subprocess.run(sh -c true)`",
                "jobs/s",
            ),
            Metric(f"sqlite_ratio_{n}", f"N={n}: SQLite time ÷ floor", "x", target),
            Metric(f"pg_ratio_{n}", f"N={n}: PostgreSQL time ÷ floor", "x", target),
            Metric(f"pg_vs_sqlite_{n}", f"N={n}: PostgreSQL time ÷ SQLite time", "x"),
        ]
    for what, key, target in (
        ("created_at to started_at, p50", "claim_p50_ms", 50.0),
        ("created_at to started_at, p99", "claim_p99_ms", None),
        ("created_at to command start, p50", "exec_p50_ms", None),
    ):
        metrics += [
            Metric(f"sqlite_{key}", f"pickup: SQLite, {what}", "ms", target),
            Metric(f"pg_{key}", f"pickup: PostgreSQL, {what}", "ms", target),
        ]
    metrics.append(Metric("pg_vs_sqlite_claim", "pickup p50: PostgreSQL ÷ SQLite", "x"))
    return tuple(metrics)


# -- 10. peers ----------------------------------------------------------------------------------


HUEY_MODULE = "queuectl_bench_huey"
HUEY_SOURCE = '''"""The peer workload for huey: one task that spawns `/bin/sh -c true`."""

import os
import subprocess

from huey import SqliteHuey

huey = SqliteHuey("bench", filename=os.environ["QUEUECTL_BENCH_HUEY_DB"])


@huey.task()
def spawn():
    subprocess.run(["/bin/sh", "-c", "true"], check=True)
    return 1  # huey stores no None result: a non-None one is the completion counter


def enqueue(jobs):
    for _ in range(jobs):
        spawn()
'''
_huey_install: list[str | None] = []  # once per session: None when huey imports, else why not


def _ensure_huey() -> str | None:
    """Install huey into this venv if it is missing; the reason it is unusable, or None."""
    if _huey_install:
        return _huey_install[0]
    reason: str | None = None
    if importlib.util.find_spec("huey") is None:
        cmd = [PYTHON, "-m", "pip", "install", "--quiet", "huey"]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=PEER_INSTALL_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"`{' '.join(cmd)}` failed: {exc}"
        else:
            if done.returncode != 0:
                tail = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                reason = f"`{' '.join(cmd)}` exited {done.returncode}: {tail}"
        importlib.invalidate_caches()
        if reason is None and importlib.util.find_spec("huey") is None:
            reason = f"huey is still not importable after `{' '.join(cmd)}`"
    _huey_install.append(reason)
    return reason


def _huey_version(env: dict[str, str]) -> str:
    cmd = [PYTHON, "-c", "import huey; print(huey.__version__)"]
    return run(cmd, env=env).stdout.strip()


def _run_huey(jobs: int) -> dict[str, Any]:
    """Pre-enqueue `jobs` tasks into a SqliteHuey file, then time a `-k process -w 2`
    consumer from its spawn until every result is in the result store."""
    with fresh_home(prefix="queuectl-bench-huey-") as home:
        work = home.parent
        (work / f"{HUEY_MODULE}.py").write_text(HUEY_SOURCE)
        db = work / "huey.db"
        env = bench_env(home)
        env["PYTHONPATH"] = str(work)
        env["QUEUECTL_BENCH_HUEY_DB"] = str(db)
        version = _huey_version(env)
        enqueue = [PYTHON, "-c", f"import {HUEY_MODULE} as m; m.enqueue({jobs})"]
        enqueued = run(enqueue, env=env, timeout=PEER_TIMEOUT_S)
        cmd = [
            PYTHON,
            "-m",
            "huey.bin.huey_consumer",
            f"{HUEY_MODULE}.huey",
            "-k",
            "process",
            "-w",
            str(PEERS_WORKERS),
        ]
        conn = sqlite3.connect(db, timeout=10, isolation_level=None)
        try:
            with Proc(cmd, env=env, output_dir=work, name="huey-consumer") as consumer:

                def all_results() -> bool:
                    row = conn.execute("SELECT count(*) FROM kv").fetchone()
                    if int(row[0]) >= jobs:
                        return True
                    if not consumer.alive():
                        raise BenchError(
                            f"the huey consumer exited: {consumer.read_stderr().strip()[-300:]}"
                        )
                    return False

                wait_until(
                    all_results,
                    timeout=PEER_TIMEOUT_S,
                    what=f"{jobs} huey results",
                    interval=SPOOL_POLL_S,
                )
                wall_s = time.perf_counter() - consumer.started
                cpu_s = proc_cpu_s(consumer.pid)  # the consumer process alone
                log = consumer.read_stderr()
            left = int(conn.execute("SELECT count(*) FROM task").fetchone()[0])
        finally:
            conn.close()
        failures = [line for line in log.splitlines() if "Unhandled exception" in line]
        if failures or left:
            raise BenchError(f"huey: {left} task(s) left, {len(failures)} failed: {failures[:1]}")
    return {
        "wall_s": wall_s,
        "consumer_cpu_s": cpu_s,
        "enqueue_s": enqueued.wall_s,
        "version": version,
        "settings": "SqliteHuey defaults (WAL, fsync=None), huey_consumer -k process -w 2",
    }


def _find_tsp() -> str | None:
    """The task-spooler client: `tsp` (Debian) or `ts`, if that is not moreutils' ts."""
    for name in ("tsp", "ts"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run(
                [path, "-V"], capture_output=True, text=True, timeout=5, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "spooler" in (out.stdout + out.stderr).lower():
            return path
    return None


def _ensure_tsp() -> tuple[str | None, str | None]:
    """(the tsp binary, None), or (None, why it is missing); apt-get installs it only as
    root under CI or QUEUECTL_BENCH_INSTALL=1."""
    found = _find_tsp()
    if found is not None:
        return found, None
    allowed = os.environ.get("CI") or os.environ.get(INSTALL_FLAG_ENV) == "1"
    how = (
        "task-spooler is not installed: `apt-get install task-spooler` (or run the benchmarks "
        f"as root with {INSTALL_FLAG_ENV}=1 to let them install it)"
    )
    if not allowed or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, how
    cmd = ["apt-get", "install", "-y", "-q", "task-spooler"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PEER_INSTALL_TIMEOUT_S, env=env
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"`{' '.join(cmd)}` failed: {exc}"
    found = _find_tsp()
    if found is None:
        tail = (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return None, f"`{' '.join(cmd)}` exited {done.returncode}: {tail}"
    return found, None


def _tsp_release(fifo: Path, timeout: float) -> int:
    """Open the FIFO the blocker job reads, once it reads it; closing the fd releases it."""
    fds: list[int] = []

    def reader_waiting() -> bool:
        try:
            fds.append(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader yet
                return False
            raise
        return True

    wait_until(reader_waiting, timeout=timeout, what="the tsp blocker job to start")
    return fds[0]


PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def _subreaper() -> Iterator[None]:
    """Adopt the orphans started inside the block (a tsp job runner outlives the client that
    forked it) and reap them at its end: where init does not reap, they would stay zombies."""
    libc = ctypes.CDLL(None, use_errno=True)
    adopted = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        if adopted:
            libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
            for pid in _adopted_children("tsp"):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _adopted_children(comm: str) -> list[int]:
    """Children of this process named `comm` (Popen starts none of that name)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if fields.get("Name") == comm and fields.get("PPid", "").strip() == str(os.getpid()):
            found.append(int(entry))
    return found


def _kill_tsp_leftovers(socket: str) -> None:
    """SIGKILL every process of ours still carrying this run's unique TS_SOCKET (the server
    and job runners, which live in sessions of their own)."""
    marker = f"TS_SOCKET={socket}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


def _tsp_round(
    tsp: str, client: list[str], env: dict[str, str], fifo: Path, jobs: int
) -> tuple[float, float]:
    """One round: a blocker job holding both slots, `jobs` queued `sh -c true` jobs and a
    final two-slot sentinel; timed from the blocker's release until `tsp -w` returns (the
    sentinel, the last job added, ran after every job before it). (timed s, enqueue s)."""
    os.mkfifo(fifo, 0o600)
    fd: int | None = None
    try:
        blocker = ["sh", "-c", f"cat {shlex.quote(str(fifo))} > /dev/null"]
        run([*client, "-n", "-N", str(PEERS_WORKERS), *blocker], env=env)
        fd = _tsp_release(fifo, timeout=WORKER_START_TIMEOUT_S)
        with Stopwatch() as queued:
            for _ in range(jobs):
                run([*client, "-n", "sh", "-c", "true"], env=env)
        # A bare `tsp -w` waits for the last job added: the id a client prints may come from
        # its forked runner, after run() has read its stdout.
        run([*client, "-n", "-N", str(PEERS_WORKERS), "true"], env=env)
        with Proc([tsp, "-w"], env=env, name="tsp-wait") as waiter:
            start = time.perf_counter()
            os.close(fd)
            fd = None
            waited = waiter.wait(PEER_TIMEOUT_S).check(waiter.cmd)
        return waited.wall_s - (start - waiter.started), queued.seconds
    finally:
        if fd is not None:
            os.close(fd)
        else:  # a blocker still waiting on the FIFO ends at EOF: release it
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def _run_tsp(tsp: str, jobs: int) -> dict[str, Any]:
    """`tsp -S 2` with its own socket, `jobs` `sh -c true` jobs in rounds of at most
    TSP_ROUND_JOBS (each queued job holds a server connection, and tsp allows about 1,000:
    more block the enqueuing client); the rounds' timed parts are summed."""
    rounds = [min(TSP_ROUND_JOBS, jobs - done) for done in range(0, jobs, TSP_ROUND_JOBS)]
    expected = jobs + 2 * len(rounds)  # and each round's blocker and sentinel
    with fresh_home(prefix="queuectl-bench-tsp-") as home, _subreaper():
        work = home.parent
        env = {k: v for k, v in bench_env(home).items() if not k.startswith("TS_")}
        env.update(
            TS_SOCKET=str(work / "tsp.socket"), TMPDIR=str(work), TS_MAXFINISHED=str(expected)
        )
        timed: list[float] = []
        queued: list[float] = []
        try:
            # A tsp client forks the server, and the runner of its job, into its own process
            # group, which run() kills when it reaps the client: `setsid -w` gives each a
            # session of its own. _kill_tsp_leftovers() ends them all however this ends.
            client = ["setsid", "-w", tsp]
            run([*client, "-S", str(PEERS_WORKERS)], env=env)
            for number, size in enumerate(rounds):
                took, enqueue_s = _tsp_round(tsp, client, env, work / f"release-{number}", size)
                timed.append(took)
                queued.append(enqueue_s)
            listing = run([tsp, "-l"], env=env).stdout.splitlines()
            version = run([tsp, "-V"], env=env, check=False)
        finally:
            run([tsp, "-K"], env=env, check=False, timeout=10)
            _kill_tsp_leftovers(env["TS_SOCKET"])
        done_ok = sum(
            1 for line in listing[1:] if line.split()[1:2] == ["finished"] and " 0 " in line
        )
        if done_ok != expected:
            raise BenchError(f"tsp: {done_ok} of {expected} jobs finished with exit 0")
    return {
        "wall_s": sum(timed),
        "round_jobs": rounds,
        "round_wall_s": timed,
        "enqueue_s": sum(queued),
        "version": (version.stdout + version.stderr).strip().splitlines()[0],
        "settings": f"tsp -S 2, own TS_SOCKET, -n; rounds of <= {TSP_ROUND_JOBS} jobs, each "
        "between a blocker and a sentinel job (both -N 2, both in the timed part)",
    }


def run_peers(settings: Settings) -> RunResult:
    """2,000 `sh -c true` jobs on 2 workers: queuectl, huey (SQLite) and task-spooler,
    each against the shell floor measured in the same run."""
    jobs = settings.peers_jobs
    n = PEERS_WORKERS
    ours, floors = bracket_floors(jobs, n, functools.partial(_drain, jobs, n))
    floor_s = floors.shell_s
    metrics: dict[str, float] = {
        "floor_per_s": jobs / floor_s,
        "posix_spawn_per_s": jobs / floors.posix_s,
        "queuectl_jobs_per_s": jobs / ours.wall_s,
        "queuectl_ratio": ours.wall_s / floor_s,
    }
    raw: dict[str, Any] = {
        "jobs": jobs,
        "workers": n,
        "floor_wall_s": floor_s,
        "floors": floors.to_dict(),
        "queuectl": {"wall_s": ours.wall_s, "cpu_s": ours.cpu_s},
    }
    skipped: dict[str, str] = {}
    why = _ensure_huey()
    if why is None:
        huey = _run_huey(jobs)
        metrics["huey_jobs_per_s"] = jobs / huey["wall_s"]
        metrics["huey_ratio"] = huey["wall_s"] / floor_s
        metrics["huey_vs_queuectl"] = huey["wall_s"] / ours.wall_s
        raw["huey"] = huey
    else:
        skipped["huey"] = (
            f"huey skipped: {why}; install it by hand with `{PYTHON} -m pip install -r "
            f"{PEERS_REQUIREMENTS.relative_to(PEERS_REQUIREMENTS.parents[1])}`"
        )
    tsp, why = _ensure_tsp()
    if tsp is not None:
        try:
            spooler = _run_tsp(tsp, jobs)
        except BenchError as exc:
            skipped["tsp"] = f"task-spooler skipped: it misbehaved ({exc})"
        else:
            metrics["tsp_jobs_per_s"] = jobs / spooler["wall_s"]
            metrics["tsp_ratio"] = spooler["wall_s"] / floor_s
            metrics["tsp_vs_queuectl"] = spooler["wall_s"] / ours.wall_s
            raw["tsp"] = {"binary": tsp, **spooler}
    else:
        skipped["tsp"] = f"task-spooler skipped: {why}"
    raw["skipped"] = skipped
    return RunResult(metrics, raw, skipped)


def _peers_metrics() -> tuple[Metric, ...]:
    n = PEERS_WORKERS
    return (
        Metric("floor_per_s", f"floor: {n} threads of `subprocess.run(sh -c true)`", "jobs/s"),
        Metric(
            "posix_spawn_per_s", f"beside it: {n} threads of `posix_spawn` + `waitpid`", "jobs/s"
        ),
        Metric("queuectl_jobs_per_s", f"queuectl `worker run --count {n} --drain`", "jobs/s"),
        Metric("queuectl_ratio", "queuectl: time ÷ floor", "x", THROUGHPUT_TARGET),
        Metric(
            "huey_jobs_per_s", f"huey (SqliteHuey, `-k process -w {n}`)", "jobs/s", None, "huey"
        ),
        Metric("huey_ratio", "huey: time ÷ floor", "x", None, "huey"),
        Metric("huey_vs_queuectl", "huey time ÷ queuectl time", "x", None, "huey"),
        Metric("tsp_jobs_per_s", f"task-spooler (`tsp -S {n}`)", "jobs/s", None, "tsp"),
        Metric("tsp_ratio", "task-spooler: time ÷ floor", "x", None, "tsp"),
        Metric("tsp_vs_queuectl", "task-spooler time ÷ queuectl time", "x", None, "tsp"),
    )


# -- 11. scale ----------------------------------------------------------------------------------


SCALE_BUILD_CHUNK = 50_000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SCALE_INSERT = """
INSERT INTO jobs (id, command, priority, run_at, max_retries, timeout_ms, env, cwd, queue,
                  labels, state, attempts, created_at, updated_at, available_at, started_at,
                  finished_at, exit_code, worker_id, origin, spec_hash)
VALUES (?, '"true"', 0, NULL, ?, NULL, '{}', NULL, 'default', '{}', ?, ?, ?, ?, ?, ?, ?, ?, ?,
        'inline', ?)
"""


def _ulid(ms: int, serial: int) -> str:
    """A ULID as queuectl makes them (48-bit ms, 80-bit random part), the serial as random."""
    value = (ms << 80) | serial
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _scale_rows(jobs: int, pending: int, start_ms: int) -> Iterator[tuple[object, ...]]:
    """`jobs` rows of `true` as `enqueue` writes them, one ms apart; all but the newest
    `pending` completed by a worker a moment later, as `worker run` leaves them."""
    from queuectl.config import Config
    from queuectl.models import JobSpec

    spec_hash = JobSpec(command="true").spec_hash
    max_retries = Config.resolve({}).max_retries
    done = jobs - pending
    for i in range(jobs):
        created = start_ms + i
        if i < done:
            yield (
                _ulid(created, i), max_retries, "completed", 1, created, created + 20,
                created, created + 5, created + 20, 0, "bench-host:1:0000", spec_hash,
            )  # fmt: skip
        else:
            yield (
                _ulid(created, i), max_retries, "pending", 0, created, created,
                created, None, None, None, None, spec_hash,
            )  # fmt: skip


def _build_scale_store(db: Path, jobs: int, pending: int) -> None:
    """Insert the rows straight into a store `queuectl status` created and migrated."""
    start_ms = int(time.time() * 1000) - jobs - 60_000  # all created in the past
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")  # the build is not what is measured
        conn.execute("BEGIN")
        rows = _scale_rows(jobs, pending, start_ms)
        while chunk := list(itertools.islice(rows, SCALE_BUILD_CHUNK)):
            conn.executemany(SCALE_INSERT, chunk)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _plan(conn: sqlite3.Connection, sql: str, params: dict[str, object]) -> dict[str, Any]:
    """EXPLAIN QUERY PLAN of `sql`, and how it reaches the jobs table.

    `access`: "index search" (SEARCH only: a bounded seek), "partial-index scan" (a walk of
    an index holding only some rows, such as jobs_claim_order's claimable jobs),
    "index scan" (a walk of every entry of a full index: O(rows)) or "table scan".
    """
    lines = [str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    on_jobs = [line for line in lines if line.split()[1:2] == ["jobs"]]
    index_of = {line: m.group(1) for line in on_jobs if (m := re.search(r"INDEX (\w+)", line))}
    used = set(index_of.values())
    partial = {
        str(name)
        for name, ddl in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        if name in used and ddl is not None and " WHERE " in ddl.upper()
    }
    scans = [line for line in on_jobs if line.startswith("SCAN")]
    if any(line not in index_of for line in scans):
        access = "table scan"
    elif scans and all(index_of[line] in partial for line in scans):
        access = "partial-index scan"
    elif scans:
        access = "index scan"
    elif on_jobs:
        access = "index search"
    else:
        access = "unknown"
    return {
        "plan": lines,
        "access": access,
        "covering_index": any("COVERING INDEX" in line for line in on_jobs),
        "indexes": sorted(used),
        "partial_indexes": sorted(partial),
    }


def run_scale(settings: Settings) -> RunResult:
    """A SQLite store of 1,000,000 jobs (1,000 pending): `status` and the claim."""
    from queuectl.store import open_store
    from queuectl.store.sql import SqlStore
    from queuectl.store.sqlite import SqliteDialect

    jobs, pending = settings.scale_jobs, settings.scale_pending
    with fresh_home() as home:
        env = bench_env(home)
        _init_store(env)
        db = home / "queue.db"
        url = f"sqlite:///{db.absolute()}"
        with Stopwatch() as built:
            _build_scale_store(db, jobs, pending)
        store = open_store(url)
        try:
            if not (isinstance(store, SqlStore) and isinstance(store.d, SqliteDialect)):
                raise BenchError(f"{url} did not open a SQLite store")
            metrics, raw = _measure_scale(settings, store, env, built.seconds)
            with Stopwatch() as opened:
                open_store(url).close()
            now_ms = int(datetime.now(UTC).timestamp() * 1000)
            params: dict[str, object] = {
                "worker_id": "bench",
                "token": "0",
                "now": now_ms,
                "lease_until": now_ms + 60_000,
                "queues": None,
            }
            raw["query_plans"] = {
                "CLAIM_NEXT": _plan(store.d.conn, store.sql.claim_next, params),
                "COUNT_BY_STATE": _plan(store.d.conn, store.sql.count_by_state, {}),
            }
        finally:
            store.close()
        raw["db_bytes"] = db.stat().st_size
        raw["open_store_ms"] = _ms(opened.seconds)
    return RunResult(metrics, raw)


def _add_waiting(store: Store, waiting: int) -> None:
    """`waiting` jobs through queuectl, in chains of 100 whose heads wait on a job due
    next year: every one waits on a need, at priority 100, ahead of every claimable job."""
    from queuectl.models import INLINE, JobSpec, Need, NewJob

    now = datetime.now(UTC)
    later = now + timedelta(days=365)
    for chain in range(waiting // 100):
        head = f"waiting-{chain}-root"
        jobs = [NewJob(head, JobSpec(command="true", id=head), 0, later, INLINE)]
        for link in range(100):
            job_id, needs = f"waiting-{chain}-{link}", (Need(jobs[-1].id),)
            spec = JobSpec(command="true", id=job_id, needs=needs, priority=100)
            jobs.append(NewJob(job_id, spec, 0, now, INLINE))
        store.insert_jobs(jobs, now)


def _measure_scale(
    settings: Settings, store: Store, env: dict[str, str], build_s: float
) -> tuple[dict[str, float], dict[str, Any]]:
    """`status` as a process and in-process, then the claim, on a store built with
    settings.scale_jobs jobs of which settings.scale_pending are pending, plus
    settings.scale_waiting jobs waiting on needs (and their chains' heads, not due)."""
    from queuectl.core import Queue

    jobs, pending = settings.scale_jobs, settings.scale_pending
    waiting = settings.scale_waiting
    _add_waiting(store, waiting)
    jobs, pending = jobs + waiting + waiting // 100, pending + waiting + waiting // 100
    counts = {state.value: n for state, n in store.count_by_state().items()}
    if counts["pending"] != pending or sum(counts.values()) != jobs:
        raise BenchError(f"the built store counts {counts}, not {jobs} jobs")
    base = _baseline(env, settings.baseline_runs)
    cli: list[Exit] = []
    status_ms: list[float] = []
    count_ms: list[float] = []
    queue = Queue(store)
    for _ in range(settings.scale_status_runs):
        base.append(run(BASELINE_CMD, env=env))
        cli.append(run(queuectl("status"), env=env))
        with Stopwatch() as sw:
            queue.status()
        status_ms.append(_ms(sw.seconds))
        with Stopwatch() as sw:
            store.count_by_state()
        count_ms.append(_ms(sw.seconds))
    claim_ms: list[float] = []
    from queuectl.store import open_store

    worker_store = open_store(store.url, durable=False)  # as `worker run` opens it
    try:
        for i in range(settings.scale_claims):
            now = datetime.now(UTC)
            with Stopwatch() as sw:
                job = worker_store.claim_next("bench", [], now, now + timedelta(minutes=5), f"t{i}")
            if job is None or job.id.startswith("waiting-"):
                raise BenchError(f"claim {i + 1} found no pending job, or a waiting one: {job}")
            claim_ms.append(_ms(sw.seconds))
    finally:
        worker_store.close()
    base_ms = median([_ms(b.wall_s) for b in base])
    cli_ms = median([_ms(c.wall_s) for c in cli])
    metrics = {
        "build_s": build_s,
        "status_cli_ms": cli_ms,
        "baseline_ms": base_ms,
        "status_cli_ratio": cli_ms / base_ms,
        "status_lib_ms": median(status_ms),
        "count_ms": median(count_ms),
        "claim_p50_ms": percentile(claim_ms, 50),
        "claim_p99_ms": percentile(claim_ms, 99),
    }
    raw: dict[str, Any] = {
        "jobs": jobs,
        "pending": pending,
        "counts": counts,
        "status_cli_wall_ms": [_ms(c.wall_s) for c in cli],
        "baseline_wall_ms": [_ms(b.wall_s) for b in base],
        "status_lib_ms": status_ms,
        "count_by_state_ms": count_ms,
        "claim_ms": claim_ms,
    }
    return metrics, raw


def _scale_metrics() -> tuple[Metric, ...]:
    return (
        Metric("build_s", "build: rows inserted directly (not through queuectl)", "s", 60.0),
        Metric("status_cli_ms", "`queuectl status` process", "ms", 100.0),
        Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
        Metric("status_cli_ratio", "`queuectl status` ÷ baseline", "x"),
        Metric("status_lib_ms", "`Queue(open_store(url)).status()` in-process", "ms", 100.0),
        Metric("count_ms", "`store.count_by_state()` alone", "ms"),
        Metric(
            "claim_p50_ms",
            "`claim_next()` as a worker does it (10,000 jobs waiting on needs ahead), p50",
            "ms",
            5.0,
        ),
        Metric("claim_p99_ms", "`claim_next()` as a worker does it, p99", "ms", 5.0),
    )


PG_SCALE_BUILD = """
INSERT INTO jobs (id, command, max_retries, state, attempts, created_at, updated_at,
                  available_at, started_at, finished_at, exit_code, worker_id, origin, spec_hash)
SELECT 'scale-' || lpad(i::text, 8, '0'), '"true"', 3,
       CASE WHEN i > %(done)s THEN 'pending' ELSE 'completed' END, 0,
       t, t, t, CASE WHEN i > %(done)s THEN NULL ELSE t END,
       CASE WHEN i > %(done)s THEN NULL ELSE t END,
       CASE WHEN i > %(done)s THEN NULL ELSE 0 END,
       CASE WHEN i > %(done)s THEN NULL ELSE 'bench-host:1:0000' END, 'inline', %(hash)s
  FROM generate_series(1, %(jobs)s) AS i,
       LATERAL (SELECT now() - interval '2 days' + i * interval '1 millisecond' AS t) AS at
"""


def run_scale_postgres(settings: Settings) -> RunResult:
    """A PostgreSQL store of 1,000,000 jobs (1,000 pending): `status` and the claim."""
    import psycopg

    from queuectl.models import JobSpec
    from queuectl.store import open_store

    jobs, pending = settings.scale_jobs, settings.scale_pending
    with PostgresServer.find() as server, server.database() as url, fresh_home() as home:
        env = {**bench_env(home), "QUEUECTL_DATABASE_URL": url}
        _init_store(env)
        params = {"jobs": jobs, "done": jobs - pending, "hash": JobSpec(command="true").spec_hash}
        with Stopwatch() as built, psycopg.connect(url, autocommit=True) as conn:
            conn.execute(PG_SCALE_BUILD, params)
            conn.execute("VACUUM ANALYZE jobs")
        store = open_store(url)
        try:
            metrics, raw = _measure_scale(settings, store, env, built.seconds)
        finally:
            store.close()
    return RunResult(metrics, raw)


# -- 12. schedules --------------------------------------------------------------------------


def _postgres_or_skip(skipped: dict[str, str]) -> PostgresServer | None:
    """The server for a scenario's PostgreSQL rows, or None with the reason in `skipped`."""
    try:
        return PostgresServer.find()
    except BenchSkipped as exc:
        skipped["postgres"] = f"PostgreSQL rows {exc}"
        return None


def _wait_workers(supervisor: Proc, env: dict[str, str], count: int) -> None:
    """Wait until `status` lists `count` live workers (a supervisor's children register
    themselves, under their own pids)."""

    def started() -> bool:
        if not supervisor.alive():
            raise BenchError(f"the supervisor exited early: {supervisor.read_stderr()[-300:]}")
        workers = json.loads(run(queuectl("status"), env=env).stdout)["workers"]
        return len(workers) >= count

    wait_until(started, timeout=WORKER_START_TIMEOUT_S, what="the workers to start", interval=0.1)


def _sleep_until(proc: Proc, deadline: float, clock: Callable[[], float]) -> None:
    """Sleep until clock() reaches `deadline`, checking twice a second that `proc` lives."""
    while (left := deadline - clock()) > 0:
        time.sleep(min(left, 0.5))
        if not proc.alive():
            raise BenchError(f"the supervisor exited: {proc.read_stderr().strip()[-300:]}")


def _slot_of(run_id: str) -> float:
    """The slot named by a run id `<schedule id>@YYYYMMDDTHHMMSSZ`, as a Unix time."""
    stamp = run_id.rpartition("@")[2]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()


def _write_schedules(
    path: Path, crons: list[str], *, queue: str | None = None, overlap: str | None = None
) -> None:
    """One JSON array (YAML's flow style) of schedules of `true`, one per cron expression."""
    specs: list[dict[str, Any]] = []
    for i, cron in enumerate(crons):
        spec: dict[str, Any] = {
            "id": f"bench-{i:05d}",
            "command": "true",
            "schedule": {"cron": cron} if overlap is None else {"cron": cron, "overlap": overlap},
        }
        if queue is not None:
            spec["queue"] = queue
        specs.append(spec)
    path.write_text(json.dumps(specs))


def _daily_crons(count: int, now: datetime) -> list[str]:
    """`count` daily cron expressions (UTC), spread over the minutes of the day except the
    SCHEDULE_QUIET_BEFORE_MIN before `now` and the SCHEDULE_QUIET_AFTER_MIN after it: a
    window measured soon after sees no slot, and each has exactly one slot in the day
    before `now`, well inside the default catch-up window of 1 day."""
    start = now.hour * 60 + now.minute
    usable = [
        (start + offset) % 1440
        for offset in range(SCHEDULE_QUIET_AFTER_MIN + 1, 1440 - SCHEDULE_QUIET_BEFORE_MIN)
    ]
    minutes = (usable[i % len(usable)] for i in range(count))
    return [f"{m % 60} {m // 60} * * *" for m in minutes]


# -- 12a. slot-to-start latency --


def _slot_latency(home: Path, env: dict[str, str], slots: int) -> dict[str, list[float]]:
    """An `every: 1s` schedule (jitter 0, overlap allow) under one idle `worker run
    --count 2`: for `slots` consecutive slots, when its run was created and started."""
    schedule_id = "bench-every-1s"
    spec = {
        "id": schedule_id,
        "command": "true",
        "schedule": {"every": "1s", "jitter": "0s", "overlap": "allow"},
    }
    run(queuectl("enqueue", json.dumps(spec)), env=env)
    cmd = queuectl("worker", "run", "--count", str(SCHEDULE_WORKERS))
    runs: dict[float, dict[str, Any]] = {}
    with Proc(cmd, env=env, output_dir=home.parent, name="scheduler") as supervisor:
        _wait_workers(supervisor, env, SCHEDULE_WORKERS)
        first = float(math.ceil(time.time() + SCHEDULE_SETTLE_S))
        wanted = [first + i for i in range(slots)]
        # Nothing else runs until the last slot has passed: no `queuectl` process (whose
        # start-up takes a core for a while) competes with the scheduler and the workers.
        _sleep_until(supervisor, wanted[-1] + 1.0, time.time)

        def all_started() -> bool:
            listed = json.loads(
                run(queuectl("list", "--schedule", schedule_id, "--limit", "1000"), env=env).stdout
            )
            runs.clear()
            runs.update({_slot_of(job["id"]): job for job in listed})
            return all(runs.get(slot, {}).get("started_at") for slot in wanted)

        wait_until(
            all_started,
            timeout=SCHEDULE_GRACE_S,
            what=f"the runs of {slots} slots to start",
            interval=0.25,
        )
    created_ms: list[float] = []
    pickup_ms: list[float] = []
    start_ms: list[float] = []
    for slot in wanted:
        job = runs[slot]
        created, started = _instant(job["created_at"]), _instant(job["started_at"])
        created_ms.append(_ms(created - slot))
        pickup_ms.append(_ms(started - created))
        start_ms.append(_ms(started - slot))
    return {"start_ms": start_ms, "created_ms": created_ms, "pickup_ms": pickup_ms}


def _slot_latency_on(server: PostgresServer | None, slots: int) -> dict[str, list[float]]:
    """_slot_latency in a fresh home, on SQLite or in a fresh PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(server.database()) if server is not None else None
        home = stack.enter_context(fresh_home())
        env = _store_env(home, db_url)
        _init_store(env)
        return _slot_latency(home, env, slots)


def run_schedule_latency(settings: Settings) -> RunResult:
    """Slot to run start of an `every: 1s` schedule, idle workers; SQLite, then PostgreSQL."""
    slots = settings.schedule_latency_slots
    with fresh_home() as home:
        base = _baseline(bench_env(home), settings.baseline_runs)
    base_ms = median([_ms(b.wall_s) for b in base])
    metrics: dict[str, float] = {"baseline_ms": base_ms}
    raw: dict[str, Any] = {"slots": slots, "baseline_wall_ms": [_ms(b.wall_s) for b in base]}
    skipped: dict[str, str] = {}
    samples = {"sqlite": _slot_latency_on(None, slots)}
    server = _postgres_or_skip(skipped)
    if server is not None:
        with server:
            samples["pg"] = _slot_latency_on(server, slots)
            raw["postgres"] = {"server": server.display, "version": server.version}
    for name, lat in samples.items():
        metrics[f"{name}_p50_ms"] = percentile(lat["start_ms"], 50)
        metrics[f"{name}_p99_ms"] = percentile(lat["start_ms"], 99)
        metrics[f"{name}_created_p50_ms"] = percentile(lat["created_ms"], 50)
        metrics[f"{name}_created_p99_ms"] = percentile(lat["created_ms"], 99)
        metrics[f"{name}_pickup_p50_ms"] = percentile(lat["pickup_ms"], 50)
        raw[name] = lat
    metrics["ratio"] = metrics["sqlite_p50_ms"] / base_ms
    if "pg" in samples:
        metrics["pg_vs_sqlite"] = metrics["pg_p50_ms"] / metrics["sqlite_p50_ms"]
    raw["skipped"] = skipped
    return RunResult(metrics, raw, skipped)


def _schedule_latency_metrics() -> tuple[Metric, ...]:
    metrics: list[Metric] = []
    for key, store, group in (("sqlite", "SQLite", None), ("pg", "PostgreSQL", "postgres")):
        metrics += [
            Metric(f"{key}_p50_ms", f"{store}: slot to started_at, p50", "ms", 100.0, group),
            Metric(f"{key}_p99_ms", f"{store}: slot to started_at, p99", "ms", None, group),
            Metric(
                f"{key}_created_p50_ms",
                f"{store}: slot to created_at (scheduler wake-up and tick), p50",
                "ms",
                None,
                group,
            ),
            Metric(
                f"{key}_created_p99_ms",
                f"{store}: slot to created_at, p99",
                "ms",
                None,
                group,
            ),
            Metric(
                f"{key}_pickup_p50_ms",
                f"{store}: created_at to started_at (a worker's claim), p50",
                "ms",
                None,
                group,
            ),
        ]
    metrics += [
        Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
        Metric("ratio", "SQLite p50 ÷ baseline", "x"),
        Metric("pg_vs_sqlite", "p50: PostgreSQL ÷ SQLite", "x", None, "postgres"),
    ]
    return tuple(metrics)


# -- 12b. idle CPU of a scheduling supervisor --


def _supervisor_cpu(
    home: Path,
    env: dict[str, str],
    *,
    window_s: float,
    queues: tuple[str, ...] = (),
) -> dict[str, Any]:
    """CPU of one `worker run --count 2` (the supervisor with its scheduler thread, and
    its workers) over `window_s`, once its workers run and its scheduler settled."""
    cmd = queuectl("worker", "run", "--count", str(SCHEDULE_WORKERS))
    for name in queues:
        cmd += ["--queue", name]
    with Proc(cmd, env=env, output_dir=home.parent, name="supervisor") as supervisor:
        _wait_workers(supervisor, env, SCHEDULE_WORKERS)
        time.sleep(SCHEDULE_IDLE_SETTLE_S)
        pending_before = _status_counts(env)["pending"]
        processes = len(proc_tree(supervisor.pid))
        cpu0, own0 = proc_tree_cpu_s(supervisor.pid), proc_cpu_s(supervisor.pid)
        switches0 = proc_tree_context_switches(supervisor.pid)
        t0 = time.monotonic()
        _sleep_until(supervisor, t0 + window_s, time.monotonic)
        cpu1, own1 = proc_tree_cpu_s(supervisor.pid), proc_cpu_s(supervisor.pid)
        switches1 = proc_tree_context_switches(supervisor.pid)
        t1 = time.monotonic()
        pending_after = _status_counts(env)["pending"]
        log = supervisor.read_stderr()
    elapsed = t1 - t0
    return {
        "cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
        # The supervisor process alone: its scheduler thread, and the supervising.
        "supervisor_cpu_pct": 100 * (own1 - own0) / elapsed,
        "wakeups_per_s": (switches1 - switches0) / elapsed,
        "window_s": elapsed,
        "cpu_s": cpu1 - cpu0,
        "processes": processes,  # the supervisor, its workers and their watchdogs
        "runs_created": pending_after - pending_before,  # no worker serves them (busy)
        "tick_failures": log.count("tick failed"),
    }


def _idle_with(
    schedules: list[str] | None, *, window_s: float, queue: str | None = None
) -> dict[str, Any]:
    """_supervisor_cpu in a fresh home holding a schedule per cron expression given (none:
    the baseline). With `queue`, the runs go to a queue the workers do not serve, with
    overlap allow: every slot creates a run, though the runs before it still wait."""
    with fresh_home() as home:
        env = bench_env(home)
        _init_store(env)
        setup_s = math.nan
        if schedules:
            path = home.parent / "schedules.json"
            _write_schedules(path, schedules, queue=queue, overlap="allow" if queue else None)
            setup_s = _enqueue_batch(env, path, len(schedules)).wall_s
        queues = ("default",) if queue is not None else ()
        return {"setup_s": setup_s, **_supervisor_cpu(home, env, window_s=window_s, queues=queues)}


def run_schedule_idle_cpu(settings: Settings) -> RunResult:
    """CPU of an idle `worker run --count 2`: with no schedule (the baseline), with 1,000
    daily schedules none of which is due, with 1,000 every-minute schedules."""
    count, window = settings.schedule_idle_schedules, settings.schedule_idle_window_s
    base = _idle_with(None, window_s=window)
    quiet = _idle_with(_daily_crons(count, datetime.now(UTC)), window_s=window)
    busy = _idle_with(
        ["* * * * *"] * count, window_s=SCHEDULE_BUSY_WINDOW_S, queue=SCHEDULE_UNSERVED_QUEUE
    )
    if busy["runs_created"] < count:
        raise BenchError(
            f"the every-minute window saw {busy['runs_created']} runs created, not {count}"
        )
    failures = base["tick_failures"] + quiet["tick_failures"] + busy["tick_failures"]
    if failures:
        raise BenchError(f"the scheduler logged {failures} failed tick(s)")
    return RunResult(
        metrics={
            "quiet_cpu_pct": quiet["cpu_pct"],
            "quiet_added_pct": quiet["cpu_pct"] - base["cpu_pct"],
            "quiet_supervisor_pct": quiet["supervisor_cpu_pct"],
            "quiet_wakeups_per_s": quiet["wakeups_per_s"],
            "busy_cpu_pct": busy["cpu_pct"],
            "busy_added_pct": busy["cpu_pct"] - base["cpu_pct"],
            "busy_supervisor_pct": busy["supervisor_cpu_pct"],
            "busy_wakeups_per_s": busy["wakeups_per_s"],
            "base_cpu_pct": base["cpu_pct"],
            "base_supervisor_pct": base["supervisor_cpu_pct"],
            "base_wakeups_per_s": base["wakeups_per_s"],
            "quiet_ratio": quiet["cpu_pct"] / base["cpu_pct"] if base["cpu_pct"] else math.nan,
            "busy_ratio": busy["cpu_pct"] / base["cpu_pct"] if base["cpu_pct"] else math.nan,
        },
        raw={"schedules": count, "baseline": base, "quiet": quiet, "busy": busy},
    )


def _schedule_idle_metrics() -> tuple[Metric, ...]:
    return (
        Metric(
            "quiet_cpu_pct",
            "1,000 daily schedules, none due: CPU of supervisor and workers, % of one core",
            "%",
            1.0,
        ),
        Metric("quiet_added_pct", "1,000 daily: added to the baseline's CPU", "%", 1.0),
        Metric("quiet_supervisor_pct", "1,000 daily: the supervisor process alone", "%"),
        Metric("quiet_wakeups_per_s", "1,000 daily: context switches per second", "/s"),
        Metric(
            "busy_cpu_pct",
            "1,000 `* * * * *` schedules (1,000 runs created in the 60 s window): CPU",
            "%",
        ),
        Metric("busy_added_pct", "1,000 `* * * * *`: added to the baseline's CPU", "%"),
        Metric("busy_supervisor_pct", "1,000 `* * * * *`: the supervisor process alone", "%"),
        Metric("busy_wakeups_per_s", "1,000 `* * * * *`: context switches per second", "/s"),
        Metric("base_cpu_pct", "baseline: the same `worker run`, no schedule: CPU", "%"),
        Metric("base_supervisor_pct", "baseline: the supervisor process alone", "%"),
        Metric("base_wakeups_per_s", "baseline: context switches per second", "/s"),
        Metric("quiet_ratio", "1,000 daily ÷ baseline (CPU)", "x"),
        Metric("busy_ratio", "1,000 `* * * * *` ÷ baseline (CPU)", "x"),
    )


# -- 12c. schedule tick --


def _tick_all_due(env: dict[str, str], db_url: str | None) -> None:
    """Move every schedule's last tick a day back, its next tick due now: as a scheduler
    that stopped a day ago leaves them. Each daily schedule has one slot due."""
    if db_url is None:
        db = Path(env["QUEUECTL_HOME"]) / "queue.db"
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        try:
            conn.execute(
                "UPDATE schedules SET last_tick_at = last_tick_at - ?, next_slot_at = 0", (DAY_MS,)
            )
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as pg:
        pg.execute(
            "UPDATE schedules SET last_tick_at = last_tick_at - interval '1 day', "
            "next_slot_at = 'epoch'"
        )


def _tick(env: dict[str, str], schedules: int, due: bool) -> Exit:
    """One `queuectl schedule tick`, checked: a run for every schedule, or nothing done."""
    result = run(queuectl("schedule", "tick"), env=env, timeout=600)
    ticked: list[dict[str, Any]] = json.loads(result.stdout)
    created = sum(len(t["created"]) for t in ticked)
    missed = sum(t["missed"] for t in ticked)
    expected = schedules if due else 0
    if created != expected or missed:
        raise BenchError(
            f"`schedule tick` created {created} runs and missed {missed}, expected {expected} and 0"
        )
    return result


def _tick_on(server: PostgresServer | None, settings: Settings) -> dict[str, Any]:
    """In a fresh home (and PostgreSQL database): 10,000 daily schedules through one
    `enqueue -`, a tick with all due, then ticks with none due beside `queuectl status`."""
    count = settings.schedule_tick_schedules
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(server.database()) if server is not None else None
        home = stack.enter_context(fresh_home())
        env = _store_env(home, db_url)
        _init_store(env)
        path = home.parent / "schedules.json"
        _write_schedules(path, _daily_crons(count, datetime.now(UTC)))
        setup = _enqueue_batch(env, path, count)
        _tick(env, count, due=False)  # untimed: the first tick after creation finds none due
        _tick_all_due(env, db_url)
        all_due = _tick(env, count, due=True)
        pending = _status_counts(env)["pending"]
        if pending != count:
            raise BenchError(f"after the tick, {pending} runs are pending, not {count}")
        none_due: list[Exit] = []
        status: list[Exit] = []
        for _ in range(settings.schedule_tick_runs):
            status.append(run(queuectl("status"), env=env))
            none_due.append(_tick(env, count, due=False))
    return {
        "setup_s": setup.wall_s,
        "all_due_s": all_due.wall_s,
        "all_due_cpu_s": all_due.cpu_s,
        "none_due_s": median([t.wall_s for t in none_due]),
        "none_due_cpu_s": median([t.cpu_s for t in none_due]),
        "status_s": median([s.wall_s for s in status]),
        "none_due_wall_s": [t.wall_s for t in none_due],
        "status_wall_s": [s.wall_s for s in status],
    }


def run_schedule_tick(settings: Settings) -> RunResult:
    """`queuectl schedule tick` over 10,000 schedules: all due, then none due, beside
    `queuectl status` on the same store; SQLite, then PostgreSQL."""
    skipped: dict[str, str] = {}
    results = {"sqlite": _tick_on(None, settings)}
    server = _postgres_or_skip(skipped)
    if server is not None:
        with server:
            results["pg"] = _tick_on(server, settings)
    metrics: dict[str, float] = {}
    for name, res in results.items():
        for key in ("setup_s", "all_due_s", "all_due_cpu_s", "none_due_s", "status_s"):
            metrics[f"{name}_{key}"] = res[key]
        metrics[f"{name}_all_due_ratio"] = res["all_due_s"] / res["status_s"]
        metrics[f"{name}_none_due_ratio"] = res["none_due_s"] / res["status_s"]
    raw: dict[str, Any] = {"schedules": settings.schedule_tick_schedules, **results}
    raw["skipped"] = skipped
    return RunResult(metrics, raw, skipped)


def _schedule_tick_metrics() -> tuple[Metric, ...]:
    metrics: list[Metric] = []
    for key, store, group in (("sqlite", "SQLite", None), ("pg", "PostgreSQL", "postgres")):
        metrics += [
            Metric(
                f"{key}_setup_s",
                f"{store}: setup, 10,000 schedules by `enqueue -`",
                "s",
                None,
                group,
            ),
            Metric(
                f"{key}_all_due_s",
                f"{store}: `schedule tick`, all 10,000 due (10,000 runs)",
                "s",
                1.0,
                group,
            ),
            Metric(f"{key}_all_due_cpu_s", f"{store}: all due, CPU of the tick", "s", None, group),
            Metric(f"{key}_none_due_s", f"{store}: `schedule tick`, none due", "s", 1.0, group),
            Metric(f"{key}_status_s", f"{store}: baseline: `queuectl status`", "s", None, group),
            Metric(f"{key}_all_due_ratio", f"{store}: all due ÷ status", "x", None, group),
            Metric(f"{key}_none_due_ratio", f"{store}: none due ÷ status", "x", None, group),
        ]
    return tuple(metrics)


# -- the list -----------------------------------------------------------------------------


# -- 13. pruning at scale ---------------------------------------------------------------


PRUNE_KEEP_DAYS_AGO = 10  # the bulk's finished_at: past the default keep_completed_days (7)
PRUNE_WORKERS = 2
PRUNE_STREAM_PER_S = 100.0  # the steady stream of `true` jobs the workers run meanwhile
PRUNE_SETTLE_S = 3.0  # after the workers registered and the stream began, before measuring
PRUNE_TIMEOUT_S = 3_600.0
PRUNE_LOG_TEXT = (  # what the runner writes around a silent `true`
    b"=== 2026-01-01T00:00:00.000Z attempt 1 worker bench-host:1:0000\n"
    b"=== 2026-01-01T00:00:00.020Z exit code 0\n"
)
PG_PRUNE_FILL = """
INSERT INTO jobs (id, command, max_retries, state, attempts, created_at, updated_at,
                  available_at, started_at, finished_at, exit_code, worker_id, origin, spec_hash)
SELECT %(prefix)s || lpad(i::text, 8, '0'), '"true"', 3, 'completed', 1, t, t, t, t, t, 0,
       'bench-host:1:0000', 'inline', %(hash)s
  FROM generate_series(1, %(jobs)s) AS i,
       LATERAL (SELECT %(start)s::timestamptz + i * interval '1 millisecond' AS t) AS at
"""


@contextlib.contextmanager
def _queuectl_home(home: Path) -> Iterator[None]:
    """QUEUECTL_HOME=home in this process: in-process prunes unlink the home's log files."""
    before = os.environ.get("QUEUECTL_HOME")
    os.environ["QUEUECTL_HOME"] = str(home)
    try:
        yield
    finally:
        if before is None:
            del os.environ["QUEUECTL_HOME"]
        else:
            os.environ["QUEUECTL_HOME"] = before


def _write_logs(logs: Path, ids: Iterator[str]) -> int:
    """One small log file per job id, where the runner puts it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    written = 0
    for job_id in ids:
        fd = os.open(logs / f"job-{job_id}.log", flags, 0o600)
        try:
            os.write(fd, PRUNE_LOG_TEXT)
        finally:
            os.close(fd)
        written += 1
    return written


def _fill_completed(url: str, jobs: int, start: datetime, prefix: str) -> list[str]:
    """`jobs` completed `true` jobs, one ms apart from `start`, inserted straight into the
    store (triggers keep job_counts right); returns their ids."""
    from queuectl.models import JobSpec

    if url.startswith("sqlite:"):
        start_ms = int(start.timestamp() * 1000)
        ids: list[str] = []
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("BEGIN IMMEDIATE")
            rows = _scale_rows(jobs, 0, start_ms)
            while chunk := list(itertools.islice(rows, SCALE_BUILD_CHUNK)):
                conn.executemany(SCALE_INSERT, chunk)
                ids += [str(row[0]) for row in chunk]
            conn.execute("COMMIT")
        finally:
            conn.close()
        return ids
    import psycopg

    params = {"jobs": jobs, "start": start, "prefix": prefix, "hash": JobSpec("true").spec_hash}
    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute(PG_PRUNE_FILL, params)
    return [f"{prefix}{i:08d}" for i in range(1, jobs + 1)]


def _db_size(url: str) -> dict[str, Any]:
    """How big the store is: SQLite, the file, its -wal and page counts; PostgreSQL, the
    database, the jobs table with its indexes and TOAST, and its tuple statistics."""
    if url.startswith("sqlite:"):
        db = Path(url.removeprefix("sqlite:///"))
        wal = db.with_name(db.name + "-wal")
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            pragmas = {
                name: int(conn.execute(f"PRAGMA {name}").fetchone()[0])
                for name in ("page_size", "page_count", "freelist_count", "auto_vacuum")
            }
        finally:
            conn.close()
        size = db.stat().st_size
        wal_size = wal.stat().st_size if wal.exists() else 0
        return {"bytes": size + wal_size, "db_bytes": size, "wal_bytes": wal_size, **pragmas}
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute("SELECT pg_stat_clear_snapshot()")
        row = pg.execute(
            "SELECT pg_database_size(current_database()), pg_total_relation_size('jobs'),"
            "       n_live_tup, n_dead_tup, autovacuum_count, vacuum_count,"
            "       last_autovacuum::text"
            "  FROM pg_stat_user_tables WHERE relname = 'jobs'"
        ).fetchone()
    if row is None:
        raise BenchError("no statistics for the jobs table")
    keys = ("database_bytes", "jobs_bytes", "live_tuples", "dead_tuples", "autovacuums")
    sizes = dict(zip((*keys, "vacuums", "last_autovacuum"), row, strict=True))
    sizes["bytes"] = sizes["jobs_bytes"]
    return sizes


def _checkpoint(url: str) -> None:
    """SQLite: fold the WAL into the file and truncate it, so the file size is the store's."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


def _vacuum(url: str, how: str = "VACUUM") -> float:
    """Seconds `how` (VACUUM, or on PostgreSQL also VACUUM FULL) took on the store."""
    with Stopwatch() as sw:
        if url.startswith("sqlite:"):
            conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute(how)
            finally:
                conn.close()
        else:
            import psycopg

            with psycopg.connect(url, autocommit=True) as pg:
                pg.execute(f"{how} jobs")  # `how` is one of two constants
    _checkpoint(url)
    return sw.seconds


class _Stream:
    """A steady stream of `true` jobs, enqueued in-process (as `queuectl enqueue` writes
    them) PRUNE_STREAM_PER_S a second; each job remembers the phase it was enqueued in."""

    def __init__(self, url: str, per_s: float) -> None:
        self.url = url
        self.period_s = 1.0 / per_s
        self.phase = "warm-up"
        self.phase_started: list[tuple[str, float]] = [("warm-up", time.time())]
        self.sent: list[tuple[str, str, float]] = []  # (id, phase, enqueue call seconds)
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="prune-stream", daemon=True)

    def __enter__(self) -> _Stream:
        self._thread.start()
        return self

    def begin(self, phase: str) -> None:
        """Jobs enqueued from now on belong to `phase`; claims from now on are in its window."""
        self.phase_started.append((phase, time.time()))
        self.phase = phase

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _feed(self) -> None:
        from queuectl.core import Queue
        from queuectl.models import JobSpec
        from queuectl.store import open_store

        store = open_store(self.url)
        try:
            queue = Queue(store)
            due = time.monotonic()
            for number in itertools.count():
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                due += self.period_s
                job_id, phase = f"stream-{number:07d}", self.phase
                with Stopwatch() as sw:
                    queue.enqueue([JobSpec("true", id=job_id)])
                self.sent.append((job_id, phase, sw.seconds))
        except BaseException as exc:  # reported by the caller
            self.errors.append(exc)
        finally:
            store.close()


def _stream_figures(url: str, stream: _Stream, timeout: float) -> dict[str, dict[str, Any]]:
    """Per phase: pickup (created_at to started_at, the claim's delay as a job sees it, by
    the phase the job was enqueued in), the largest gap between consecutive claims
    (started_at of any stream job) while the phase lasted, and the enqueue call's time."""
    from queuectl.models import JobState
    from queuectl.store import open_store

    ids = [job_id for job_id, _, _ in stream.sent]
    unsettled = (JobState.PENDING, JobState.PROCESSING, JobState.FAILED)
    store = open_store(url)
    try:

        def all_finished() -> bool:  # a count, not the jobs: cheap enough to poll
            counts = store.count_by_state()
            return not any(counts.get(state, 0) for state in unsettled)

        wait_until(all_finished, timeout=timeout, what="every stream job to end", interval=0.5)
        jobs = store.get_jobs(ids)
    finally:
        store.close()
    every_start = sorted(job.started_at.timestamp() for job in jobs.values() if job.started_at)
    bounds = [*stream.phase_started, ("end", math.inf)]
    phases: dict[str, dict[str, Any]] = {}
    for (phase, since), (_, until) in itertools.pairwise(bounds):
        mine = [(jobs[i], secs) for i, p, secs in stream.sent if p == phase]
        pickup = [
            _ms((job.started_at - job.created_at).total_seconds())
            for job, _ in mine
            if job.started_at is not None
        ]
        window = [t for t in every_start if since <= t < until]
        gaps = [_ms(b - a) for a, b in itertools.pairwise(window)]
        enqueue = [_ms(secs) for _, secs in mine]
        phases[phase] = {
            "jobs": len(mine),
            "seconds": (until if math.isfinite(until) else window[-1] if window else since) - since,
            "claims": len(window),
            "pickup_p50_ms": percentile(pickup, 50),
            "pickup_p99_ms": percentile(pickup, 99),
            "pickup_max_ms": max(pickup, default=math.nan),
            "claim_gap_max_ms": max(gaps, default=math.nan),
            "enqueue_p50_ms": percentile(enqueue, 50),
            "enqueue_max_ms": max(enqueue, default=math.nan),
        }
    return phases


class _TimedDeletes:
    """A store whose delete_jobs calls are timed: each is one batch's write transaction
    (and a read-back of what is gone), the time a claim could wait on it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.write_ms: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def delete_jobs(self, job_ids: list[str]) -> list[str]:
        with Stopwatch() as sw:
            deleted = self._store.delete_jobs(job_ids)
        self.write_ms.append(_ms(sw.seconds))
        return deleted


def _background_batches(url: str, home: Path, batches: int) -> dict[int, dict[str, Any]]:
    """`batches` passes of the workers' background prune (`Queue.prune(max_batches=1)`, one
    batch per state), back to back, each timed whole and in its write: with the batch
    size the workers use (PRUNE_BATCH), then with a tenth of it, for comparison."""
    from typing import cast

    from queuectl.core import PRUNE_BATCH, Queue
    from queuectl.store import open_store

    store = open_store(url, durable=False)  # as the scheduler thread opens it
    results: dict[int, dict[str, Any]] = {}
    try:
        with _queuectl_home(home):
            for size in (PRUNE_BATCH, PRUNE_BATCH // 10):
                timed = _TimedDeletes(store)
                queue = Queue(cast("Store", timed))
                passes_ms: list[float] = []
                deleted = 0
                for _ in range(batches):
                    with Stopwatch() as sw:
                        pruned = queue.prune(batch=size, max_batches=1)
                    passes_ms.append(_ms(sw.seconds))
                    deleted += sum(len(ids) for ids in pruned.values())
                results[size] = {
                    "deleted": deleted,
                    "pass_ms": passes_ms,
                    "write_ms": timed.write_ms,
                }
    finally:
        store.close()
    return results


def _logs_left(logs: Path) -> int:
    """Log files in the home other than the stream's."""
    with os.scandir(logs) as entries:
        return sum(1 for e in entries if not e.name.startswith("job-stream-"))


def _prune_scale(settings: Settings, server: PostgresServer | None) -> RunResult:
    jobs = settings.prune_jobs
    with contextlib.ExitStack() as stack:
        db_url = stack.enter_context(server.database()) if server is not None else None
        home = stack.enter_context(fresh_home(prefix="queuectl-bench-prune-"))
        env = _store_env(home, db_url)
        _init_store(env)
        url = db_url or f"sqlite:///{(home / 'queue.db').absolute()}"
        logs = home / "logs"
        logs.mkdir(mode=0o700, exist_ok=True)
        start = datetime.now(UTC) - timedelta(days=PRUNE_KEEP_DAYS_AGO, milliseconds=jobs)
        with Stopwatch() as filled:
            ids = _fill_completed(url, jobs, start, "bulk-")
            if db_url is not None:
                import psycopg

                with psycopg.connect(db_url, autocommit=True) as pg:
                    pg.execute("VACUUM ANALYZE jobs")  # as autovacuum leaves an old table
            _checkpoint(url)
        with Stopwatch() as wrote:
            log_files = _write_logs(logs, iter(ids))
        del ids
        sizes = {"before": _db_size(url)}
        cmd = queuectl("worker", "run", "--count", str(PRUNE_WORKERS))
        prune_cmd = queuectl("prune", "--state", "completed", "--older-than", "1d")
        with Proc(cmd, env=env, output_dir=home.parent, name="prune-workers") as workers:
            _wait_workers(workers, env, PRUNE_WORKERS)
            with _Stream(url, PRUNE_STREAM_PER_S) as stream:
                time.sleep(PRUNE_SETTLE_S)
                stream.begin("before")
                time.sleep(settings.prune_window_s)
                stream.begin("background")
                background = _background_batches(url, home, settings.prune_background_batches)
                stream.begin("prune")
                pruned = run(prune_cmd, env=env, timeout=PRUNE_TIMEOUT_S)
                sizes["after_prune_live"] = _db_size(url)
                backlog = {state.value: n for state, n in _open_counts(url).items()}
                stream.begin("after")
                time.sleep(PRUNE_SETTLE_S)
            if stream.errors:
                raise BenchError(f"the stream's enqueue failed: {stream.errors[0]}")
            # Claims starved during the prune leave a backlog: let the workers catch up.
            phases = _stream_figures(url, stream, timeout=PRUNE_TIMEOUT_S)
            worker_log = workers.read_stderr()
        by_cli = len(pruned.stdout.split())
        left = _logs_left(logs)
        counts = {state.value: n for state, n in _open_counts(url).items()}
        if left or counts.get("completed", 0) != len(stream.sent):
            raise BenchError(f"after the prune: {left} bulk log files left, counts {counts}")
        sizes["after_prune"] = _db_size(url)
        _checkpoint(url)
        sizes["after_prune_checkpoint"] = _db_size(url)
        reuse = max(1, jobs // 10)
        _fill_completed(url, reuse, datetime.now(UTC) - timedelta(hours=1), "reuse-")
        _checkpoint(url)
        sizes["after_reinsert"] = _db_size(url)
        vacuum_s = _vacuum(url)
        sizes["after_vacuum"] = _db_size(url)
        extra: dict[str, float] = {}
        if db_url is not None:
            _fill_completed(url, reuse, datetime.now(UTC) - timedelta(hours=1), "again-")
            sizes["after_vacuum_reinsert"] = _db_size(url)
            extra["vacuum_full_s"] = _vacuum(url, "VACUUM FULL")
            sizes["after_vacuum_full"] = _db_size(url)
    mb = 1 / 1_000_000
    before, during = phases["before"], phases["prune"]
    bg = phases["background"]
    big, small = background.values()
    bg_deleted = sum(b["deleted"] for b in background.values())
    grown = sizes["after_reinsert"]["bytes"] - sizes["after_prune_checkpoint"]["bytes"]
    metrics = {
        "jobs": float(jobs),
        "log_files": float(log_files),
        "fill_s": filled.seconds + wrote.seconds,
        "prune_s": pruned.wall_s,
        "prune_per_s": jobs / pruned.wall_s,
        "before_pickup_p99_ms": before["pickup_p99_ms"],
        "before_pickup_max_ms": before["pickup_max_ms"],
        "prune_pickup_p99_ms": during["pickup_p99_ms"],
        "prune_pickup_max_ms": during["pickup_max_ms"],
        "stall_ratio": during["pickup_max_ms"] / before["pickup_max_ms"],
        "before_gap_max_ms": before["claim_gap_max_ms"],
        "prune_gap_max_ms": during["claim_gap_max_ms"],
        "prune_enqueue_max_ms": during["enqueue_max_ms"],
        "backlog": float(backlog.get("pending", 0)),
        "prune_claims_per_s": during["claims"] / during["seconds"],
        "bg_write_p50_ms": percentile(big["write_ms"], 50),
        "bg_write_max_ms": max(big["write_ms"], default=math.nan),
        "bg_pass_p50_ms": percentile(big["pass_ms"], 50),
        "bg_small_write_p50_ms": percentile(small["write_ms"], 50),
        "bg_small_write_max_ms": max(small["write_ms"], default=math.nan),
        "bg_pickup_max_ms": bg["pickup_max_ms"],
        "size_before_mb": sizes["before"]["bytes"] * mb,
        "size_after_mb": sizes["after_prune_checkpoint"]["bytes"] * mb,
        "wal_after_mb": sizes["after_prune_live"].get("wal_bytes", 0) * mb,
        "reinsert_growth_mb": grown * mb,
        "vacuum_s": vacuum_s,
        "size_vacuum_mb": sizes["after_vacuum"]["bytes"] * mb,
        **extra,
    }
    if db_url is not None:
        metrics["vacuum_reinsert_growth_mb"] = (
            sizes["after_vacuum_reinsert"]["bytes"] - sizes["after_vacuum"]["bytes"]
        ) * mb
        metrics["size_vacuum_full_mb"] = sizes["after_vacuum_full"]["bytes"] * mb
    raw: dict[str, Any] = {
        "jobs": jobs,
        "reinserted": reuse,
        "deleted_by_prune_command": by_cli,
        "deleted_in_background_passes": bg_deleted,
        "deleted_by_workers_meanwhile": jobs - by_cli - bg_deleted,
        "stream_per_s": PRUNE_STREAM_PER_S,
        "counts_right_after_prune": backlog,
        "phases": phases,
        "background": background,
        "sizes": sizes,
        "worker_prune_lines": [line for line in worker_log.splitlines() if "pruned" in line],
    }
    return RunResult(metrics, raw)


def _open_counts(url: str) -> dict[Any, int]:
    from queuectl.store import open_store

    store = open_store(url)
    try:
        return dict(store.count_by_state())
    finally:
        store.close()


def run_prune_scale(settings: Settings) -> RunResult:
    """Prune 1,000,000 completed jobs and their log files from SQLite under 2 busy workers."""
    return _prune_scale(settings, None)


def run_prune_scale_postgres(settings: Settings) -> RunResult:
    """The same on PostgreSQL, in a database made for it."""
    with PostgresServer.find() as server:
        return _prune_scale(settings, server)


def _prune_metrics(postgres: bool) -> tuple[Metric, ...]:
    vacuum = "plain `VACUUM jobs`" if postgres else "`VACUUM`"
    metrics = [
        Metric("jobs", "completed jobs, finished 10 days ago (inserted directly)", "jobs"),
        Metric("log_files", "their log files, as the runner lays them out", "files"),
        Metric("fill_s", "setup: rows and log files (not timed below)", "s"),
        Metric("prune_s", "`queuectl prune --state completed --older-than 1d`", "s"),
        Metric("prune_per_s", "jobs deleted per second, log files included", "jobs/s"),
        Metric("before_pickup_p99_ms", "stream pickup before the prune, p99", "ms"),
        Metric("before_pickup_max_ms", "stream pickup before the prune, longest", "ms"),
        Metric("prune_pickup_p99_ms", "stream pickup during the prune, p99", "ms"),
        Metric("prune_pickup_max_ms", "stream pickup during the prune, longest", "ms"),
        Metric("stall_ratio", "longest pickup: during ÷ before", "x"),
        Metric("before_gap_max_ms", "longest gap between two claims, before", "ms"),
        Metric("prune_gap_max_ms", "longest gap between two claims, during the prune", "ms"),
        Metric("prune_enqueue_max_ms", "longest enqueue during the prune", "ms"),
        Metric("backlog", "stream jobs still pending when the prune ended", "jobs"),
        Metric(
            "prune_claims_per_s",
            f"stream jobs claimed per second during the prune (of {PRUNE_STREAM_PER_S:g} enqueued)",
            "/s",
        ),
        Metric("bg_write_p50_ms", "background batch of 500: its delete write, p50", "ms"),
        Metric("bg_write_max_ms", "background batch of 500: its delete write, longest", "ms", 5.0),
        Metric("bg_pass_p50_ms", "background pass (select, delete, unlink 500 logs), p50", "ms"),
        Metric("bg_small_write_p50_ms", "the same with batches of 50: the write, p50", "ms"),
        Metric("bg_small_write_max_ms", "the same with batches of 50: the write, longest", "ms"),
        Metric(
            "bg_pickup_max_ms", "stream pickup during back-to-back background passes, longest", "ms"
        ),
        Metric("size_before_mb", "store size before", "MB"),
        Metric("size_after_mb", "store size after the prune", "MB"),
    ]
    if not postgres:
        metrics.append(
            Metric("wal_after_mb", "its -wal file, right after the prune (workers running)", "MB")
        )
    metrics += [
        Metric("reinsert_growth_mb", "growth from re-inserting 10% of the jobs, no VACUUM", "MB"),
        Metric("vacuum_s", vacuum, "s"),
        Metric("size_vacuum_mb", f"store size after {vacuum} (and the 10% re-inserted)", "MB"),
    ]
    if postgres:
        metrics += [
            Metric(
                "vacuum_reinsert_growth_mb", "growth from re-inserting 10% more after VACUUM", "MB"
            ),
            Metric("vacuum_full_s", "`VACUUM FULL jobs` (an exclusive lock throughout)", "s"),
            Metric("size_vacuum_full_mb", "store size after VACUUM FULL", "MB"),
        ]
    return tuple(metrics)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "enqueue",
        'one `queuectl enqueue "true"` process',
        (
            Metric("enqueue_ms", '`queuectl enqueue "true"` (median of runs)', "ms"),
            Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
            Metric("ratio", "enqueue ÷ baseline", "x", 4.0),
        ),
        run_enqueue,
    ),
    Scenario(
        "batch",
        "10,000 jobs as one JSON array on stdin (`enqueue -`)",
        (
            Metric("wall_s", "`queuectl enqueue -` of 10,000 jobs", "s", 2.0),
            Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
            Metric("ratio", "batch ÷ baseline", "x"),
        ),
        run_batch,
    ),
    Scenario(
        "throughput",
        "2,000 `true` jobs drained by N workers, vs the same spawns from a Python loop",
        _throughput_metrics(),
        run_throughput,
    ),
    Scenario(
        "latency",
        "pickup latency of one idle worker (default poll interval)",
        (
            Metric("claim_p50_ms", "created_at to started_at, p50", "ms", 50.0),
            Metric("claim_p99_ms", "created_at to started_at, p99", "ms"),
            Metric("exec_p50_ms", "created_at to command start, p50", "ms"),
            Metric("exec_p99_ms", "created_at to command start, p99", "ms"),
            Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
            Metric("ratio", "claim p50 ÷ baseline", "x"),
        ),
        run_latency,
    ),
    Scenario(
        "idle",
        "CPU of one idle `queuectl worker run`",
        (
            Metric("cpu_pct", "CPU, percent of one core", "%", 1.0),
            Metric("wakeups_per_s", "context switches per second", "/s"),
            Metric("baseline_cpu_ms", "baseline: CPU of one `python -c pass`", "ms"),
            Metric("ratio", "idle CPU per 10 s ÷ baseline CPU", "x"),
        ),
        run_idle,
    ),
    Scenario(
        "apply",
        "`queuectl apply DIR` of 10,000 declared jobs in 100 YAML files (a git work tree)",
        (
            Metric("apply_s", "`queuectl apply DIR`: 10,000 jobs created", "s", 5.0),
            Metric("reapply_s", "`queuectl apply DIR` again: 10,000 unchanged", "s", 3.0),
            Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
            Metric("apply_ratio", "apply ÷ baseline", "x"),
            Metric("reapply_ratio", "re-apply ÷ baseline", "x"),
        ),
        run_apply,
    ),
    Scenario(
        "validate",
        "`queuectl validate DIR` of 1,000 one-job YAML files",
        (
            Metric("validate_s", "`queuectl validate DIR` (median of runs)", "s", 3.0),
            Metric("baseline_ms", "baseline: `python -c pass`", "ms"),
            Metric("ratio", "validate ÷ baseline", "x"),
        ),
        run_validate,
    ),
    Scenario(
        "spool",
        "one-job files renamed into a running `queuectl spool watch DIR`",
        _spool_metrics(),
        run_spool,
    ),
    Scenario(
        "postgres",
        "throughput and pickup latency on PostgreSQL, beside SQLite measured in the same run",
        _postgres_metrics(),
        run_postgres,
    ),
    Scenario(
        "peers",
        "2,000 `sh -c true` jobs on 2 workers: queuectl beside huey and task-spooler",
        _peers_metrics(),
        run_peers,
    ),
    Scenario(
        "scale",
        "a SQLite store of 1,000,000 jobs (1,000 pending): `status` and the claim",
        _scale_metrics(),
        run_scale,
    ),
    Scenario(
        "scale-postgres",
        "a PostgreSQL store of 1,000,000 jobs (1,000 pending): `status` and the claim",
        _scale_metrics(),
        run_scale_postgres,
    ),
    Scenario(
        "prune-scale",
        "prune 1,000,000 completed jobs and their log files from SQLite under 2 busy workers",
        _prune_metrics(postgres=False),
        run_prune_scale,
        default=False,
    ),
    Scenario(
        "prune-scale-postgres",
        "prune 1,000,000 completed jobs and their log files from PostgreSQL under 2 busy workers",
        _prune_metrics(postgres=True),
        run_prune_scale_postgres,
        default=False,
    ),
    Scenario(
        "schedule-latency",
        "an `every: 1s` schedule under an idle `worker run --count 2`: slot to run start",
        _schedule_latency_metrics(),
        run_schedule_latency,
    ),
    Scenario(
        "schedule-idle-cpu",
        "CPU of an idle `worker run --count 2` (supervisor, scheduler, workers) "
        "with 1,000 schedules",
        _schedule_idle_metrics(),
        run_schedule_idle_cpu,
    ),
    Scenario(
        "schedule-tick",
        "`queuectl schedule tick` over 10,000 schedules: all due, none due",
        _schedule_tick_metrics(),
        run_schedule_tick,
    ),
)

SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
