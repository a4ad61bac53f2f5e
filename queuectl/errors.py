"""Errors raised by the queuectl library.

Each message is one line: what failed, on which input, and what to do. The CLI
maps QueuectlError to exit code 1 and UsageProblem to exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

# What kind of failure an error is, for callers that are not the CLI (the HTTP API maps
# each to a status: 400, 404, 409, 503, 500). The CLI needs only usage vs the rest.
Category = Literal["usage", "invalid", "not_found", "conflict", "unavailable", "failed"]


def first_few(items: Sequence[str], limit: int = 10) -> str:
    """Items for a one-line message: the first `limit`, then how many more."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class QueuectlError(Exception):
    """An operation failed; the message says why and what to do.

    `category` says what sort of failure it is and `data` what it was about (a job id, a
    state), so an API can answer with a status and fields, not only the wording."""

    category: ClassVar[Category] = "failed"

    @property
    def data(self) -> dict[str, Any]:
        return {}


class UsageProblem(QueuectlError):
    """The command was called with a value it cannot accept (exit code 2)."""

    category: ClassVar[Category] = "usage"


class ConfigInvalid(UsageProblem):
    """A config key is unknown or its value is out of range."""


class JobNotFound(QueuectlError):
    category: ClassVar[Category] = "not_found"

    def __init__(self, job_id: str, message: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message or f"job {job_id!r} not found: check the id with `queuectl list`")

    @property
    def data(self) -> dict[str, Any]:
        return {"job_id": self.job_id}

    @classmethod
    def while_waiting(cls, job_id: str) -> JobNotFound:
        return cls(
            job_id,
            f"job {job_id!r} was deleted while waiting for it (by `dlq purge`?): "
            "its outcome is unknown",
        )


class ScheduleNotFound(QueuectlError):
    category: ClassVar[Category] = "not_found"

    def __init__(self, schedule_id: str) -> None:
        self.schedule_id = schedule_id
        super().__init__(
            f"schedule {schedule_id!r} not found: check the id with `queuectl schedule list`"
        )

    @property
    def data(self) -> dict[str, Any]:
        return {"schedule_id": self.schedule_id}


class WaitTimedOut(QueuectlError):
    """`wait` gave up before every job had ended."""


class InvalidState(QueuectlError):
    """The job is not in a state that allows the operation (`job_id` and its `state`, when
    one job is meant)."""

    category: ClassVar[Category] = "conflict"

    def __init__(
        self, message: str, *, job_id: str | None = None, state: str | None = None
    ) -> None:
        self.job_id, self.state = job_id, state
        super().__init__(message)

    @property
    def data(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "state": self.state} if self.job_id else {}


class JobConflict(QueuectlError):
    """A job with this id exists with a different spec."""

    category: ClassVar[Category] = "conflict"


class UnknownNeed(QueuectlError):
    """A job needs a job that is neither in the store nor in the same submission."""

    def __init__(self, job_id: str, need_id: str) -> None:
        self.job_id = job_id
        self.need_id = need_id
        super().__init__(
            f"job {job_id!r} needs {need_id!r}, which is not in the store: submit {need_id!r} "
            "first, or in the same batch (one `enqueue -`, spool file or apply)"
        )


class NeedsCycle(QueuectlError):
    """A job rewritten in place would need itself through jobs already stored."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id!r} would wait for itself: its needs lead back to it through jobs "
            "already in the store; remove one of the needs"
        )


class ConcurrentChange(QueuectlError):
    """A job changed between planning and applying; nothing was written."""

    category: ClassVar[Category] = "conflict"


class NotRegularFile(QueuectlError):
    """Something other than a regular file stands at a path where queuectl keeps one (a
    job's log): a link, a FIFO, a directory; or it could not be opened (`strerror`)."""

    def __init__(self, path: str, kind: str | None, strerror: str | None) -> None:
        self.path, self.kind, self.strerror = path, kind, strerror
        what = f"is {kind}" if kind else f"cannot be opened ({strerror})"
        super().__init__(f"{path!r} {what}, not a regular file: remove it")


class StoreError(QueuectlError):
    """The store cannot be opened or used."""

    category: ClassVar[Category] = "unavailable"


class StoreReplaced(StoreError):
    """The SQLite file was replaced or removed while this process had it open."""


class SchemaTooNew(StoreError):
    """The database was written by a newer queuectl."""


class MigrationFailed(StoreError):
    """A schema migration failed; the database was left at its previous version."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a job spec, with its position in the source text."""

    source: str
    line: int
    column: int
    field: str
    message: str

    def to_dict(self) -> dict[str, str | int]:
        """As `validate --format json` prints it (and a spool rejection records it)."""
        return {
            "file": self.source,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
        }

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return one_line(text)


def one_line(text: str) -> str:
    """Escape line breaks and other control characters: an error is one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class SpecInvalid(QueuectlError):
    """One or more job specs broke the schema; `problems` lists every one."""

    category: ClassVar[Category] = "invalid"

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        first = str(self.problems[0])
        more = len(self.problems) - 1
        super().__init__(first + (f" (and {more} more problem(s))" if more else ""))
