"""The JSON API: each route calls the Queue method the CLI calls, and answers JSON.

Errors are the library's own, mapped to a status in one place (`STATUS`) from the
category they carry; the body names the category and what it was about.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core import Queue
from ..errors import Category, QueuectlError, UsageProblem
from ..models import Job, JobState, Schedule, format_time

STATUS: Mapping[Category, int] = {
    "usage": 400,
    "invalid": 400,
    "not_found": 404,
    "conflict": 409,
    "unavailable": 503,
    "failed": 500,
}
MAX_PAGE = 500
DEFAULT_PAGE = 50


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any


def error_reply(exc: QueuectlError) -> Reply:
    """A library error as the API answers it: its status, category, message and data."""
    status = STATUS[exc.category]
    return Reply(
        status,
        {"error": {"status": status, "category": exc.category, "message": str(exc), **exc.data}},
    )


def not_found(what: str) -> Reply:
    message = f"no such endpoint {what!r}: see /api/ for the list"
    return Reply(404, {"error": {"status": 404, "category": "not_found", "message": message}})


def redacted(env: Mapping[str, str]) -> dict[str, str]:
    """Environment values often hold secrets: the API shows their names only."""
    return dict.fromkeys(env, "***")


def job_dict(job: Job) -> dict[str, Any]:
    data = job.to_dict()
    data["env"] = redacted(job.env)
    return data


def schedule_dict(queue: Queue, schedule: Schedule) -> dict[str, Any]:
    data = schedule.to_dict()
    data["template"] = {**data["template"]}
    if "env" in data["template"]:
        data["template"]["env"] = redacted(data["template"]["env"])
    data["next_run"] = None if schedule.suspended else format_time(queue.next_run(schedule))
    data["next_slots"] = [] if schedule.suspended else queue.next_slots(schedule)
    return data


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values or values[-1] == "":
        return None
    return values[-1]


def _limit(query: Mapping[str, list[str]]) -> int:
    raw = _one(query, "limit")
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise UsageProblem(f"limit {raw!r} is not a whole number from 1 to {MAX_PAGE}")
    return int(raw)


def _state(query: Mapping[str, list[str]]) -> JobState | None:
    raw = _one(query, "state")
    if raw is None:
        return None
    try:
        return JobState(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in JobState)
        raise UsageProblem(f"state {raw!r} is not one of {allowed}") from None


def _labels(query: Mapping[str, list[str]]) -> dict[str, str]:
    labels = {}
    for item in query.get("label", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageProblem(f"label {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def jobs_page(queue: Queue, query: Mapping[str, list[str]], state: JobState | None) -> Reply:
    page = queue.page(
        state=state,
        queue=_one(query, "queue"),
        labels=_labels(query),
        cursor=_one(query, "cursor"),
        limit=_limit(query),
    )
    return Reply(200, {"jobs": [job_dict(job) for job in page.jobs], "next": page.next})


def status(queue: Queue) -> dict[str, Any]:
    counts = queue.counts_by_queue()
    per_queue: dict[str, dict[str, int]] = {}
    for (name, state), n in sorted(counts.items()):
        per_queue.setdefault(name, dict.fromkeys((s.value for s in JobState), 0))[state.value] = n
    return {**queue.status(), "queues": per_queue}


def get(
    queue: Queue, parts: list[str], query: Mapping[str, list[str]], *, actions: bool = False
) -> Reply:
    """Answer GET /api/<parts...>; `actions` says whether this server allows them."""
    match parts:
        case [] | [""]:
            return Reply(200, {"endpoints": ENDPOINTS})
        case ["status"]:
            return Reply(200, {**status(queue), "actions": actions})
        case ["throughput"]:
            return Reply(200, {"minutes": queue.throughput()})
        case ["jobs"]:
            return jobs_page(queue, query, _state(query))
        case ["dlq"]:
            return jobs_page(queue, query, JobState.DEAD)
        case ["jobs", job_id]:
            job = queue.get(job_id)
            return Reply(200, {**job_dict(job), "waiting_on": queue.waiting_on(job)})
        case ["jobs", job_id, "log"]:
            tail = queue.log_tail(job_id)
            return Reply(
                200, {"text": tail.text, "origin": tail.origin, "truncated": tail.truncated}
            )
        case ["schedules"]:
            return Reply(200, {"schedules": [schedule_dict(queue, s) for s in queue.schedules()]})
        case ["schedules", schedule_id]:
            return Reply(200, schedule_dict(queue, queue.schedule(schedule_id)))
        case ["workers"]:
            return Reply(200, {"workers": [w.to_dict() for w in queue.live_workers()]})
    return not_found("/api/" + "/".join(parts))


def _retry(queue: Queue, job_id: str) -> dict[str, Any]:
    queue.dlq_retry([job_id])
    return job_dict(queue.get(job_id))


def _cancel(queue: Queue, job_id: str) -> dict[str, Any]:
    return job_dict(queue.cancel(job_id))


def _schedule_action(action: str) -> Callable[[Queue, str], dict[str, Any]]:
    def run(queue: Queue, schedule_id: str) -> dict[str, Any]:
        if action == "trigger":
            return {"schedule": schedule_id, "job": queue.trigger(schedule_id)}
        (queue.pause if action == "pause" else queue.resume)(schedule_id)
        return schedule_dict(queue, queue.schedule(schedule_id))

    return run


ACTIONS: Mapping[tuple[str, str], Callable[[Queue, str], dict[str, Any]]] = {
    ("jobs", "retry"): _retry,
    ("jobs", "cancel"): _cancel,
    ("schedules", "pause"): _schedule_action("pause"),
    ("schedules", "resume"): _schedule_action("resume"),
    ("schedules", "trigger"): _schedule_action("trigger"),
}


def is_action(parts: list[str]) -> bool:
    return len(parts) == 3 and (parts[0], parts[2]) in ACTIONS


def post(queue: Queue, parts: list[str]) -> Reply:
    """Answer POST /api/<kind>/<id>/<action> (the caller checked that actions are allowed)."""
    if not is_action(parts):
        return not_found("/api/" + "/".join(parts))
    kind, target, action = parts
    return Reply(200, ACTIONS[kind, action](queue, target))


ENDPOINTS = {
    "GET /api/status": "counts by state and by queue, live workers, schedules summary",
    "GET /api/throughput": "attempts ended per minute over the last hour, by outcome",
    "GET /api/jobs?state=&queue=&label=K=V&limit=&cursor=": "a page of jobs; `next` is the "
    "cursor of the next page",
    "GET /api/jobs/ID": "one job",
    "GET /api/jobs/ID/log": "the tail of its output",
    "GET /api/dlq?limit=&cursor=": "a page of dead jobs",
    "GET /api/schedules": "every schedule with its next runs",
    "GET /api/schedules/ID": "one schedule",
    "GET /api/workers": "live workers",
    "POST /api/jobs/ID/retry": "dead -> pending (--allow-actions and the token)",
    "POST /api/jobs/ID/cancel": "pending or failed -> canceled (--allow-actions and the token)",
    "POST /api/schedules/ID/pause|resume|trigger": "(--allow-actions and the token)",
}
