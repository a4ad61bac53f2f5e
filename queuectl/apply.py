"""GitOps: make the store hold exactly the declared jobs, once.

Planning reads the store and decides an action per job; applying writes every
change in one transaction that re-checks each job is as the plan saw it.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import spec
from .config import Config
from .errors import Problem, SpecInvalid
from .models import Job, JobSpec, JobState, NewJob, Origin, Source, utcnow
from .store import Change, Store


@dataclass(frozen=True)
class PlanEntry:
    id: str
    action: str  # create | unchanged | update | conflict | replace | prune
    source: str
    reason: str | None = None  # why a conflict is one

    def to_dict(self) -> dict[str, Any]:
        entry = {"id": self.id, "action": self.action, "source": self.source}
        if self.reason:
            entry["reason"] = self.reason
        return entry


@dataclass(frozen=True)
class Plan:
    entries: list[PlanEntry]
    changes: list[Change]

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
    """Validate the declared specs; every job needs an id. Raises SpecInvalid with all problems."""
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
    spec.jobs_only(validation.specs, "apply")
    return validation.specs


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
    current = store.get_jobs([item.spec.id for item in declared if item.spec.id])
    entries: list[PlanEntry] = []
    changes: list[Change] = []
    sources: dict[str, Source] = {}  # per file: its absolute path and git commit
    for item in declared:
        job_id = item.spec.id or ""
        if item.source not in sources:
            file = Path(item.source).resolve()
            sources[item.source] = Source(Origin.APPLY, str(file), source_commit(file))
        if not isinstance(item.spec, JobSpec):
            continue  # load_declared refused schedules
        new = NewJob.build(
            item.spec,
            source=sources[item.source],
            now=now,
            default_max_retries=config.max_retries,
        )
        existing = current.get(job_id)
        action, reason = _action(existing, new, replace=replace)
        entries.append(
            PlanEntry(job_id, action, item.source, reason if action == "conflict" else None)
        )
        if action in ("create", "update", "replace"):
            expected = (existing.state, existing.updated_at) if existing else None
            changes.append(Change(action, job_id, new, expected))
    if prune:
        roots = [p.resolve() for p in paths]
        declared_ids = {item.spec.id for item in declared}
        for job in store.list_jobs(state=JobState.PENDING, origin=Origin.APPLY):
            path = job.source.file or ""
            if job.id not in declared_ids and job.started_at is None and _under(path, roots):
                entries.append(PlanEntry(job.id, "prune", _display(path)))
                changes.append(Change("prune", job.id, None, (job.state, job.updated_at)))
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
