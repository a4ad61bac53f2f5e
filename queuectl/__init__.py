"""queuectl: a command-line background job queue."""

from __future__ import annotations

from .core import Enqueued, JobOutput, Queue
from .errors import (
    ConfigInvalid,
    InvalidState,
    JobConflict,
    JobNotFound,
    QueuectlError,
    SchemaTooNew,
    SpecInvalid,
    StoreError,
)
from .models import Job, JobSpec, JobState
from .store import Store, open_store

__version__ = "0.1.0"

__all__ = [
    "ConfigInvalid",
    "Enqueued",
    "InvalidState",
    "Job",
    "JobConflict",
    "JobNotFound",
    "JobOutput",
    "JobSpec",
    "JobState",
    "Queue",
    "QueuectlError",
    "SchemaTooNew",
    "SpecInvalid",
    "Store",
    "StoreError",
    "__version__",
    "open_store",
]
