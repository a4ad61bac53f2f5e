"""The benchmark scenarios: each one run is a fresh QUEUECTL_HOME and a set of figures.

Every machine-dependent figure comes with a baseline measured in the same run:
the start-up of a bare interpreter (`python -c pass`) for command latencies, and
the same 2,000 shell spawns from a plain Python loop for worker throughput.
"""

from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .harness import (
    BASELINE_CMD,
    BenchError,
    Exit,
    Proc,
    Stopwatch,
    bench_env,
    fresh_home,
    median,
    percentile,
    proc_context_switches,
    proc_cpu_s,
    queuectl,
    run,
    wait_until,
)

THROUGHPUT_WORKERS = (1, 2, 4)
WORKER_START_TIMEOUT_S = 30.0
JOB_TIMEOUT_S = 10.0  # one latency-probe job, from enqueue to completed
SETTLE_S = 0.5  # after a worker reports it started, before idle CPU is sampled


@dataclass(frozen=True)
class Settings:
    """How much work each scenario does; --quick trims the sample counts, not the workloads."""

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
        }


@dataclass(frozen=True)
class Metric:
    """One figure of a scenario; `target_max` is the spec's bound (the median must be below)."""

    key: str
    label: str
    unit: str  # ms, s, jobs/s, x, %, /s
    target_max: float | None = None


@dataclass
class RunResult:
    """One run of a scenario: its figures (by Metric.key) and the raw samples behind them."""

    metrics: dict[str, float]
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    metrics: tuple[Metric, ...]
    run: Callable[[Settings], RunResult]


# -- helpers ---------------------------------------------------------------------------


def _baseline(env: dict[str, str], runs: int) -> list[Exit]:
    """`python -c pass` `runs` times (after one untimed warm-up)."""
    run(BASELINE_CMD, env=env)
    return [run(BASELINE_CMD, env=env) for _ in range(runs)]


def _ms(seconds: float) -> float:
    return seconds * 1000


def _init_store(env: dict[str, str]) -> None:
    """Create and migrate the store outside the timed part (`status` touches no job)."""
    run(queuectl("status"), env=env)


def _write_batch(path: Path, jobs: int, command: Callable[[int], str]) -> None:
    path.write_text(json.dumps([{"command": command(i)} for i in range(jobs)]))


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


def shell_floor(jobs: int, parallel: int, timeout: float) -> float:
    """Seconds for `jobs` runs of `/bin/sh -c true` from `parallel` threads sharing the work."""
    counter = itertools.count()  # next() on a count is atomic under the GIL
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while next(counter) < jobs:
                subprocess.run(["/bin/sh", "-c", "true"], check=True, timeout=timeout)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(parallel)]
    with Stopwatch() as sw:
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        raise BenchError(f"the shell floor did not finish {jobs} spawns in {timeout:g} s")
    if errors:
        raise BenchError(f"the shell floor failed: {errors[0]}")
    return sw.seconds


def run_throughput(settings: Settings) -> RunResult:
    """`worker run --count N --drain` over 2,000 pre-enqueued `true` jobs, vs the shell floor."""
    jobs = settings.throughput_jobs
    metrics: dict[str, float] = {}
    raw: dict[str, Any] = {"jobs": jobs}
    for workers in THROUGHPUT_WORKERS:
        floor_s = shell_floor(jobs, workers, timeout=120)
        with fresh_home() as home:
            env = bench_env(home)
            batch = home.parent / "batch.json"
            _write_batch(batch, jobs, lambda _i: "true")
            _enqueue_batch(env, batch, jobs)
            cmd = queuectl("worker", "run", "--count", str(workers), "--drain")
            with Proc(cmd, env=env, output_dir=home.parent, name=f"worker-{workers}") as proc:
                result = proc.wait(timeout=300).check(cmd)
            counts = _status_counts(env)
            if counts["completed"] != jobs:
                raise BenchError(f"after --drain with {workers} worker(s), counts are {counts}")
        metrics[f"jobs_per_s_{workers}"] = jobs / result.wall_s
        metrics[f"floor_per_s_{workers}"] = jobs / floor_s
        metrics[f"ratio_{workers}"] = result.wall_s / floor_s
        raw[f"workers_{workers}"] = {
            "wall_s": result.wall_s,
            "cpu_s": result.cpu_s,  # the worker processes and every job they ran
            "cpu_ms_per_job": _ms(result.cpu_s) / jobs,
            "floor_wall_s": floor_s,
        }
    return RunResult(metrics, raw)


def _throughput_metrics() -> tuple[Metric, ...]:
    metrics: list[Metric] = []
    for n in THROUGHPUT_WORKERS:
        metrics += [
            Metric(f"jobs_per_s_{n}", f"`worker run --count {n} --drain`", "jobs/s"),
            Metric(f"floor_per_s_{n}", f"floor: {n} thread(s) of `sh -c true`", "jobs/s"),
            Metric(f"ratio_{n}", f"N={n}: time ÷ floor", "x", 1.5 if n == 2 else None),
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


def run_latency(settings: Settings) -> RunResult:
    """One idle worker (default poll interval); jobs enqueued one at a time."""
    claim_ms: list[float] = []
    exec_ms: list[float] = []
    spawn_to_exec_ms: list[float] = []
    with fresh_home() as home:
        env = bench_env(home)
        _init_store(env)
        base = _baseline(env, settings.baseline_runs)
        cmd = queuectl("worker", "run")
        with Proc(cmd, env=env, output_dir=home.parent, name="worker") as worker:
            _wait_started(worker, env)
            for i in range(settings.latency_samples):
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
    base_ms = median([_ms(b.wall_s) for b in base])
    p50 = percentile(claim_ms, 50)
    return RunResult(
        metrics={
            "claim_p50_ms": p50,
            "claim_p99_ms": percentile(claim_ms, 99),
            "exec_p50_ms": percentile(exec_ms, 50),
            "exec_p99_ms": percentile(exec_ms, 99),
            "baseline_ms": base_ms,
            "ratio": p50 / base_ms,
        },
        raw={
            "claim_ms": claim_ms,
            "exec_ms": exec_ms,
            "spawn_to_exec_ms": spawn_to_exec_ms,
            "baseline_wall_ms": [_ms(b.wall_s) for b in base],
        },
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


# -- the list -----------------------------------------------------------------------------


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
)

SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
