"""End to end: concurrency keys (SPEC 13) held by real workers, on both stores.

Each job writes `start <id> <ns>` and `end <id> <ns>` to a shared file, read from the
system-wide monotonic clock, so the intervals of jobs run by different processes can be
compared. What a job's process records lies inside the time its job was processing: two
recorded intervals that overlap mean two jobs were processing at once.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from .conftest import Run, wait_for
from .processes import Workers, pid_gone, q, read_pid

pytestmark = [pytest.mark.e2e, pytest.mark.both_backends, pytest.mark.usefixtures("fast_polling")]

# argv: the file to note in, then how long the job lasts: seconds, or until a file exists.
NOTE_SPAN = """
import os, sys, time
def note(what):
    with open(sys.argv[1], "a") as f:
        f.write(f"{what} {os.environ['QUEUECTL_JOB_ID']} {time.monotonic_ns()}\\n")
note("start")
until = sys.argv[2]
if until.startswith("/"):
    while not os.path.exists(until):
        time.sleep(0.02)
else:
    time.sleep(float(until))
note("end")
"""

Span = tuple[int, int]


def spanned(job_id: str, notes: Path, until: float | Path, **fields: Any) -> dict[str, Any]:
    """A job that notes when it starts and ends, lasting `until` seconds, or until the
    file `until` exists."""
    command = [sys.executable, "-c", NOTE_SPAN, str(notes), str(until)]
    return {"id": job_id, "command": command, "max_retries": 0, **fields}


def spans(notes: Path) -> dict[str, Span]:
    """Each job's (start, end), in monotonic nanoseconds; each job must have run once."""
    seen: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for line in notes.read_text().splitlines():
        what, job_id, at = line.split()
        seen[job_id][what].append(int(at))
    assert all(len(n["start"]) == len(n["end"]) == 1 for n in seen.values()), dict(seen)
    return {job_id: (n["start"][0], n["end"][0]) for job_id, n in seen.items()}


def most_at_once(intervals: Sequence[Span]) -> int:
    """The largest number of intervals that overlap at one instant (a start at the very
    instant of another's end counts as overlapping)."""
    events = sorted([(start, -1) for start, _ in intervals] + [(end, 1) for _, end in intervals])
    running = most = 0
    for _, step in events:
        running -= step
        most = max(most, running)
    return most


@pytest.fixture
def enqueue_all(run: Run) -> Callable[[list[dict[str, Any]]], None]:
    """Enqueue jobs in one batch (`enqueue -`)."""

    def enqueue(jobs: list[dict[str, Any]]) -> None:
        result = run("enqueue", "-", input=json.dumps(jobs))
        assert result.returncode == 0, result.stderr

    return enqueue


@pytest.mark.parametrize("supervisors", [1, 2], ids=["one-supervisor", "two-supervisors"])
def test_a_concurrency_limit_holds_across_workers_and_is_used(
    supervisors: int,
    tmp_path: Path,
    run_json: Callable[..., Any],
    enqueue_all: Callable[[list[dict[str, Any]]], None],
    workers: Workers,
) -> None:
    """4 workers (in one supervisor, or in two as on two hosts) and 12 jobs sharing a key
    with limit 2: never more than 2 of them at once, but 2 at times."""
    for _ in range(supervisors):
        workers.start("--count", str(4 // supervisors))
    wait_for(lambda: len(run_json("status")["workers"]) == 4, timeout=30, what="4 workers")
    notes = tmp_path / "notes"
    keyed = [f"deploy-{n:02}" for n in range(12)]
    free = [f"free-{n}" for n in range(3)]  # enqueued last: they must not wait behind the key
    enqueue_all(
        [spanned(i, notes, 0.25, concurrency_key="deploy", concurrency_limit=2) for i in keyed]
        + [spanned(i, notes, 0.25) for i in free]
    )

    wait_for(
        lambda: {job["state"] for job in run_json("list", "--limit", "100")} == {"completed"},
        timeout=60,
        what="every job to complete",
    )
    workers.stop()

    ran = spans(notes)
    assert set(ran) == {*keyed, *free}
    assert most_at_once([ran[i] for i in keyed]) == 2  # the limit held, and was used
    # Workers passed over the keyed jobs at their limit and ran the later, free ones.
    assert max(ran[i][1] for i in free) < max(ran[i][0] for i in keyed)
    assert most_at_once(list(ran.values())) > 2


def test_a_killed_holder_frees_its_key_with_its_lease(
    tmp_path: Path,
    run: Run,
    run_json: Callable[..., Any],
    enqueue_all: Callable[[list[dict[str, Any]]], None],
    workers: Workers,
) -> None:
    """A worker SIGKILLed while its job holds a key of limit 1: a free worker does not take
    the next keyed job while the holder lives, and does once the holder's claim is gone."""
    assert run("config", "set", "lease_ms", "2000").returncode == 0
    started, pid_file = tmp_path / "started", tmp_path / "hold.pid"
    enqueue_all(
        [
            {
                "id": "hold",
                "priority": 1,  # claimed first
                "max_retries": 0,
                "concurrency_key": "deploy",
                "command": f"echo hold >> {q(started)}; echo $$ > {q(pid_file)}; exec sleep 60",
            },
            {
                "id": "next",
                "concurrency_key": "deploy",
                "command": f"echo next >> {q(started)}",
            },
        ]
    )
    holder = workers.start()
    orphan = wait_for(lambda: read_pid(pid_file), timeout=30, what="hold to start")

    workers.start()  # a second worker, free
    # The free worker runs a job enqueued after `next`: it passed `next` over.
    enqueue_all([{"id": "free", "command": f"echo free >> {q(started)}"}])
    wait_for(
        lambda: run_json("show", "free")["state"] == "completed",
        timeout=30,
        what="the free worker to run an unkeyed job",
    )
    assert run_json("show", "next")["state"] == "pending"
    why = run("why", "next")
    assert (why.returncode, why.stdout) == (
        0,
        "next: concurrency key deploy at its limit of 1: held by hold\n",
    )

    holder.kill()  # SIGKILL: the job runs on, in its own session, but nothing renews its lease
    holder.wait()

    wait_for(
        lambda: "next" in started.read_text().split(),
        timeout=30,
        what="next to start once the killed holder's claim is gone",
    )
    hold = run_json("show", "hold")
    assert hold["state"] == "dead", hold
    assert hold["last_error"].startswith("worker lost ("), hold
    assert started.read_text().split() == ["hold", "free", "next"]
    wait_for(lambda: pid_gone(orphan), timeout=10, what="the killed holder's job to be stopped")
    wait_for(
        lambda: run_json("show", "next")["state"] == "completed", timeout=30, what="next to end"
    )
