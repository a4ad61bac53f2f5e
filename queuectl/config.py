"""Config keys, their validation, and QUEUECTL_<KEY> overrides.

Values are persisted in the store as text and validated on the way in, so a
bad value never reaches a worker. An environment variable QUEUECTL_<KEY>
overrides the stored value for one process.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import ConfigInvalid
from .logcap import MIN_LOG_MAX_BYTES

Number = int | float


@dataclass(frozen=True)
class Key:
    name: str
    default: Number
    parse: Callable[[str], Number]
    rule: str  # the allowed range, in words, for error messages
    check: Callable[[Number], bool]
    help: str


_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)


def _int(text: str) -> int:
    if not _INT.fullmatch(text.strip()):  # int() would also take full-width digits or "1_000"
        raise ValueError(text)
    return int(text)


_BYTES = re.compile(r"([0-9]+)\s*(|k|kb|kib|m|mb|mib|g|gb|gib)", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _bytes(text: str) -> int:
    """A size in bytes: 1048576, 1MiB or 1M (sizes are binary here: 1 MB is 1 MiB too)."""
    match = _BYTES.fullmatch(text.strip())
    if not match:
        raise ValueError(text)
    return int(match[1]) * _UNITS[match[2][:1].lower()]


def _float(text: str) -> float:
    if not _FLOAT.fullmatch(text.strip()):
        raise ValueError(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


KEYS: dict[str, Key] = {
    key.name: key
    for key in (
        Key(
            "max_retries",
            3,
            _int,
            "an integer from 0 to 2147483647",
            lambda v: 0 <= v <= 2_147_483_647,
            "retries after the first run, copied into each job at enqueue",
        ),
        Key(
            "backoff_base",
            2,
            _float,
            "a number > 1 and <= 100",
            lambda v: 1 < v <= 100,
            "a failed job waits backoff_base ** attempts seconds before its retry",
        ),
        Key(
            "backoff_max_ms",
            3_600_000,
            _int,
            "an integer from 0 to 31536000000 (a year)",
            lambda v: 0 <= v <= 31_536_000_000,
            "cap on the wait before a retry, in milliseconds",
        ),
        Key(
            "poll_interval_ms",
            500,
            _int,
            "an integer from 10 to 3600000",
            lambda v: 10 <= v <= 3_600_000,
            "how often an idle worker looks for jobs that became due",
        ),
        Key(
            "job_timeout_ms",
            0,
            _int,
            "an integer from 0 (no timeout) to 2147483647",
            lambda v: 0 <= v <= 2_147_483_647,
            "per-attempt limit for jobs that set no timeout_ms",
        ),
        Key(
            "lease_ms",
            30_000,
            _int,
            "an integer from 200 to 86400000",
            lambda v: 200 <= v <= 86_400_000,
            "a worker that has not heartbeated for this long is presumed dead",
        ),
        Key(
            "spool_max_bytes",
            1_048_576,
            _int,
            "an integer from 1 to 1073741824",
            lambda v: 1 <= v <= 1 << 30,
            "spool files larger than this are rejected",
        ),
        Key(
            "spool_keep_done_days",
            7,
            _float,
            "a number from 0 (keep forever) to 36500",
            lambda v: 0 <= v <= 36_500,
            "ingested spool files are deleted from done/ after this many days",
        ),
        Key(
            "spool_settle_ms",
            1000,
            _int,
            "an integer from 0 to 3600000",
            lambda v: 0 <= v <= 3_600_000,
            "a spool file written in place is taken once unchanged this long "
            "(renaming into place is always safe)",
        ),
        Key(
            "log_max_bytes",
            10 * 1024**2,
            _bytes,
            "0 (no cap) or a size from 4096 to 1TiB, in bytes or with KiB, MiB, GiB",
            lambda v: v == 0 or MIN_LOG_MAX_BYTES <= v <= 1 << 40,
            "no job's log ends larger: it keeps its beginning and end, and says what was cut",
        ),
        Key(
            "keep_completed_days",
            7,
            _float,
            "a number from 0 (keep forever) to 36500",
            lambda v: 0 <= v <= 36_500,
            "`queuectl prune` deletes completed jobs (and their logs) older than this",
        ),
        Key(
            "keep_canceled_days",
            7,
            _float,
            "a number from 0 (keep forever) to 36500",
            lambda v: 0 <= v <= 36_500,
            "`queuectl prune` deletes canceled jobs (and their logs) older than this",
        ),
        Key(
            "keep_dead_days",
            0,
            _float,
            "a number from 0 (keep forever) to 36500",
            lambda v: 0 <= v <= 36_500,
            "`queuectl prune` deletes dead jobs (and their logs) older than this",
        ),
    )
}


# QUEUECTL_* names queuectl reads besides QUEUECTL_<KEY>: its own, those it sets for jobs
# and for a supervisor's workers (a job that runs queuectl inherits them), those of the
# Dockerfile, compose.yaml, contrib/systemd and .ci scripts, and the test suite's prefixes.
OTHER_ENV_NAMES = frozenset(
    {
        "QUEUECTL_HOME",
        "QUEUECTL_SERVE_TOKEN",
        "QUEUECTL_DATABASE_URL",
        "QUEUECTL_JOB_ID",
        "QUEUECTL_ATTEMPT",
        "QUEUECTL_WORKER_ID",
        "QUEUECTL_SUPERVISOR_PID",
        "QUEUECTL_UID",
        "QUEUECTL_STOP_GRACE",
        "QUEUECTL_WORKERS_PER_CONTAINER",
        "QUEUECTL_SPOOL_DIR",
        "QUEUECTL_WORKER_ARGS",
        "QUEUECTL_IMAGE",
        "QUEUECTL_IMAGE_BASE",
        "QUEUECTL_IMAGE_INSTALL",
    }
)
OTHER_ENV_PREFIXES = ("QUEUECTL_TEST_", "QUEUECTL_REQUIRE_")


def unknown_env_warnings(environ: Mapping[str, str]) -> list[str]:
    """One line per QUEUECTL_* variable queuectl does not read (a typo is otherwise silently
    ignored: QUEUECTL_MAX_RETRYS=9), with the name it most likely meant."""
    known = {f"QUEUECTL_{name.upper()}" for name in KEYS} | OTHER_ENV_NAMES
    unknown = sorted(
        name
        for name in environ
        if name.startswith("QUEUECTL_")
        and name not in known
        and not name.startswith(OTHER_ENV_PREFIXES)
    )
    if not unknown:
        return []
    import difflib

    # Compared without the common prefix, which would make every name look alike.
    suffixes = sorted(name.removeprefix("QUEUECTL_") for name in known)
    lines = []
    for name in unknown:
        close = difflib.get_close_matches(name.upper().removeprefix("QUEUECTL_"), suffixes, n=1)
        hint = (
            f"did you mean QUEUECTL_{close[0]}?"
            if close
            else "config keys are read as QUEUECTL_<KEY> (see `queuectl config list`)"
        )
        lines.append(f"warning: {name} is not a queuectl variable and is ignored: {hint}")
    return lines


def normalize_key(key: str) -> str:
    """Map `max-retries` or `MAX_RETRIES` to `max_retries`; unknown keys raise ConfigInvalid."""
    name = key.strip().lower().replace("-", "_")
    if name not in KEYS:
        import difflib

        close = difflib.get_close_matches(name, list(KEYS), n=1)
        hint = f"did you mean {close[0]!r}? (keys: " if close else "use one of "
        raise ConfigInvalid(
            f"unknown config key {key!r}: {hint}{', '.join(KEYS)}{')' if close else ''}"
        )
    return name


def parse_value(name: str, text: str, *, origin: str | None = None) -> Number:
    """Parse and check a value for a config key; raise ConfigInvalid naming the allowed range."""
    key = KEYS[name]
    try:
        value = key.parse(text)
    except ValueError:
        value = None
    if value is None or not key.check(value):
        if origin:  # e.g. an environment variable: name it and the key
            raise ConfigInvalid(f"{origin}: {text!r} is not valid for {name}: use {key.rule}")
        raise ConfigInvalid(f"{name}: {text!r} is not valid: use {key.rule}")
    return value


@dataclass(frozen=True)
class Config:
    """Effective config values: stored values, overridden by QUEUECTL_<KEY> variables."""

    values: Mapping[str, Number]

    @classmethod
    def resolve(cls, stored: Mapping[str, str], environ: Mapping[str, str] | None = None) -> Config:
        environ = os.environ if environ is None else environ
        values: dict[str, Number] = {}
        for name, key in KEYS.items():
            env_name = f"QUEUECTL_{name.upper()}"
            if env_name in environ:
                values[name] = parse_value(name, environ[env_name], origin=env_name)
            elif name in stored:
                values[name] = parse_value(name, stored[name])
            else:
                values[name] = key.default
        return cls(values)

    def __getitem__(self, name: str) -> Number:
        return self.values[name]

    @property
    def max_retries(self) -> int:
        return int(self.values["max_retries"])

    @property
    def backoff_base(self) -> float:
        return float(self.values["backoff_base"])

    @property
    def backoff_max_ms(self) -> int:
        return int(self.values["backoff_max_ms"])

    def keep_days(self, state: str) -> float:
        """How long `prune` keeps jobs that ended in `state` (0: forever)."""
        return float(self.values[f"keep_{state}_days"])

    @property
    def poll_interval_ms(self) -> int:
        return int(self.values["poll_interval_ms"])

    @property
    def job_timeout_ms(self) -> int:
        return int(self.values["job_timeout_ms"])

    @property
    def lease_ms(self) -> int:
        return int(self.values["lease_ms"])

    @property
    def spool_max_bytes(self) -> int:
        return int(self.values["spool_max_bytes"])

    @property
    def spool_settle_ms(self) -> int:
        return int(self.values["spool_settle_ms"])

    @property
    def log_max_bytes(self) -> int:
        return int(self.values["log_max_bytes"])

    @property
    def spool_keep_done_days(self) -> float:
        return float(self.values["spool_keep_done_days"])
