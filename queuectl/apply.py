"""GitOps: make the store hold exactly the declared jobs and schedules, once.

Planning reads the store and decides an action per job and schedule; applying
writes every change in one transaction that re-checks each is as the plan saw it.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import spec
from .config import Config
from .errors import Problem, SpecInvalid
from .models import Job, JobSpec, JobState, NewJob, Origin, Schedule, ScheduleSpec, Source, utcnow
from .store import Change, NewSchedule, ScheduleChange, Store

Kind = Literal["job", "schedule"]


@dataclass(frozen=True)
class PlanEntry:
    id: str
    kind: Kind
    action: str  # create | unchanged | update | conflict | replace | prune
    source: str
    reason: str | None = None  # why a conflict is one

    def to_dict(self) -> dict[str, Any]:
        entry = {"id": self.id, "kind": self.kind, "action": self.action, "source": self.source}
        if self.reason:
            entry["reason"] = self.reason
        return entry


@dataclass(frozen=True)
class Plan:
    entries: list[PlanEntry]
    changes: list[Change | ScheduleChange]

    @property
    def conflicts(self) -> list[PlanEntry]:
        return [e for e in self.entries if e.action == "conflict"]


def _action(current: Job | None, new: NewJob, *, replace: bool) -> tuple[str, str | None]:
    if current is None:
        return "create", None
    if current.spec_hash == new.spec.spec_hash:
        return "unchanged", None
    if current.state is JobState.PENDING and current.attempts == 0 and current.started_at is None:
        return "update", None
    reason = f"the job is {current.state.value}" + (
        "" if current.started_at is None else " and has run"
    )
    running = current.state is JobState.PROCESSING or current.stopping
    if replace and not running:
        return "replace", reason
    if running:
        reason += ": a running job is never replaced; apply again once it ends"
    else:
        reason += ": use --replace to enqueue it afresh"
    return "conflict", reason


def _schedule_action(current: Schedule | None, new: ScheduleSpec) -> str:
    """Schedules never conflict: a changed template applies to runs not yet created."""
    if current is None:
        return "create"
    return "unchanged" if current.spec.spec_hash == new.spec_hash else "update"


def _under(path: str, roots: Sequence[Path]) -> bool:
    candidate = Path(path)
    return any(candidate == root or root in candidate.parents for root in roots)


def _display(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


@functools.cache
def _git_head(directory: Path) -> tuple[Path, str] | None:
    """(work tree root, HEAD commit) for a directory inside a git work tree, else None."""
    try:
        result = subprocess.run(  # noqa: S603 - git on PATH, fixed arguments
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2:
        return None
    return Path(lines[0]).resolve(), lines[1]


@functools.cache
def _git_dirty(root: Path) -> frozenset[Path]:
    """Files of the work tree that differ from HEAD (their commit is marked -dirty)."""
    result = subprocess.run(  # noqa: S603 - git on PATH, fixed arguments
        ["git", "-C", str(root), "status", "--porcelain", "-z", "--untracked-files=all"],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return frozenset(root / entry[3:] for entry in result.stdout.split("\0") if len(entry) > 3)


def source_commit(path: Path) -> str | None:
    """The git commit a spec file comes from; suffixed -dirty when it differs from HEAD."""
    head = _git_head(path.parent)
    if head is None:
        return None
    root, commit = head
    return commit + ("-dirty" if path in _git_dirty(root) else "")


def load_declared(paths: Iterable[Path]) -> list[spec.LoadedSpec]:
    """Validate the declared jobs and schedules; every job needs an id. Raises SpecInvalid
    with all problems."""
    validation = spec.validate_paths(paths)
    problems = list(validation.problems)
    for item in validation.specs:
        if item.spec.id is None:
            problems.append(
                Problem(
                    item.source,
                    item.line,
                    item.column,
                    "id",
                    "apply needs an explicit id: add `id:` to every job",
                )
            )
    if problems:
        raise SpecInvalid(problems)
    return validation.specs


def _check_needs(
    store: Store, declared: Sequence[spec.LoadedSpec], job_ids: set[str | None]
) -> None:
    """Refuse, before planning, needs on ids neither declared nor stored (as the apply
    itself would, so a dry run tells the truth)."""
    outside = {
        need.job
        for item in declared
        if isinstance(item.spec, JobSpec)
        for need in item.spec.needs
        if need.job not in job_ids
    }
    stored = store.get_jobs(sorted(outside)) if outside else {}
    problems = [
        Problem(
            item.source,
            item.line,
            item.column,
            "needs",
            f"job {item.spec.id!r} needs {need.job!r}, which is neither declared here nor in "
            "the store: declare it, or enqueue it first",
        )
        for item in declared
        if isinstance(item.spec, JobSpec)
        for need in item.spec.needs
        if need.job not in job_ids and need.job not in stored
    ]
    if problems:
        raise SpecInvalid(problems)


def plan(
    store: Store,
    paths: Sequence[Path],
    *,
    replace: bool = False,
    prune: bool = False,
    config: Config | None = None,
) -> Plan:
    """Decide what `apply` would do with the declared specs under `paths`."""
    declared = load_declared(paths)
    config = config or Config.resolve(store.read_config())
    now = utcnow()
    job_ids = {item.spec.id for item in declared if isinstance(item.spec, JobSpec)}
    schedule_ids = {item.spec.id for item in declared if isinstance(item.spec, ScheduleSpec)}
    current = store.get_jobs([job_id for job_id in job_ids if job_id])
    _check_needs(store, declared, job_ids)
    schedules = {s.id: s for s in store.list_schedules()}
    entries: list[PlanEntry] = []
    changes: list[Change | ScheduleChange] = []
    sources: dict[str, Source] = {}  # per file: its absolute path and git commit
    for item in declared:
        job_id = item.spec.id or ""
        if item.source not in sources:
            file = Path(item.source).resolve()
            sources[item.source] = Source(Origin.APPLY, str(file), source_commit(file))
        if isinstance(item.spec, ScheduleSpec):
            found = schedules.get(job_id)
            action = _schedule_action(found, item.spec)
            entries.append(PlanEntry(job_id, "schedule", action, item.source))
            if action != "unchanged":
                schedule = NewSchedule(item.spec, sources[item.source])
                seen = found.spec.spec_hash if found else None
                changes.append(ScheduleChange(action, job_id, schedule, seen))
            continue
        new = NewJob.build(
            item.spec,
            source=sources[item.source],
            now=now,
            default_max_retries=config.max_retries,
        )
        existing = current.get(job_id)
        action, reason = _action(existing, new, replace=replace)
        entries.append(
            PlanEntry(job_id, "job", action, item.source, reason if action == "conflict" else None)
        )
        if action in ("create", "update", "replace"):
            expected = (existing.state, existing.updated_at) if existing else None
            changes.append(Change(action, job_id, new, expected))
    if prune:
        roots = [p.resolve() for p in paths]
        for job in store.list_jobs(state=JobState.PENDING, origin=Origin.APPLY):
            path = job.source.file or ""
            if job.schedule_id is not None:
                continue  # a schedule's run: pending while its schedule stays, else pruned with it
            if job.id not in job_ids and job.started_at is None and _under(path, roots):
                entries.append(PlanEntry(job.id, "job", "prune", _display(path)))
                changes.append(Change("prune", job.id, None, (job.state, job.updated_at)))
        for found in schedules.values():
            path = found.source.file or ""
            if (
                found.source.origin is Origin.APPLY
                and found.id not in schedule_ids
                and _under(path, roots)
            ):
                entries.append(PlanEntry(found.id, "schedule", "prune", _display(path)))
                changes.append(ScheduleChange("prune", found.id, None, found.spec.spec_hash))
    return Plan(entries, changes)


def apply(
    store: Store,
    paths: Sequence[Path],
    *,
    dry_run: bool = False,
    replace: bool = False,
    prune: bool = False,
) -> Plan:
    """Plan, then (unless dry_run) write every change in one transaction.

    Conflicts are left alone; the caller reports them. Invalid files raise SpecInvalid
    before anything is written.
    """
    result = plan(store, paths, replace=replace, prune=prune)
    if not dry_run and result.changes:
        store.apply_changes(result.changes, utcnow())
    return result
