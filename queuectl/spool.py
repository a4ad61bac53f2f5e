"""Spool directory: job files dropped into a directory become jobs, once.

A file is claimed by an atomic rename into `.processing/`, so two watchers never
ingest one file twice; parsed and validated; its jobs and schedules stored in one
transaction together with a record of the claim; then moved to `done/`. A bad
file goes to `rejected/` beside `<name>.error.json`. A watcher that dies
mid-file leaves the claim in `.processing/`, where the next scan finds it, and
the claim record makes a second insert a no-op. File-system events are only
hints: every event (and a periodic timer) triggers a full rescan.

Safety (issue 14): the spool directory and its three folders are opened once,
checked on the open descriptor (owned by the watcher's user or root, neither
group- nor world-writable, folders not symlinks), and every later operation is
relative to those descriptors with O_NOFOLLOW, so no name is resolved twice
and no link is followed. Whatever a file is called or holds, it ends in
`done/` or `rejected/` and never stops the others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import procs, spec
from .config import Config
from .errors import Problem, QueuectlError, SpecInvalid, StoreReplaced, one_line
from .models import JobSpec, NewJob, Origin, ScheduleSpec, Source, format_time, utcnow
from .paths import home_dir
from .store import NewSchedule, SpoolFile, Store

IGNORED_SUFFIXES = (".tmp", ".part", ".swp", "~")
RESCAN_S = 2.0  # rescan even without events: missed events and settling files
BATCH_FILES = 200  # files ingested per transaction (one fsync for the batch)
FOREIGN_CLAIM_STALE_S = 600  # a claim left by another host is retaken after this
PRUNE_EVERY_S = 3600
NAME_MAX = 255  # bytes in one file name (Linux, macOS)
EPOCH = datetime.fromtimestamp(0, UTC)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
Log = Callable[[str], None]


def default_spool_dir() -> Path:
    path = home_dir() / "spool"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def is_candidate(name: str) -> bool:
    """Whether a directory entry's name is one the spool ingests."""
    return (
        not name.startswith(".")
        and not name.endswith(IGNORED_SUFFIXES)
        and name.lower().endswith(spec.SPEC_SUFFIXES)
    )


def shown(name: str) -> str:
    """A file name as text for logs, reports and the store: bytes that are not UTF-8
    become `\\xNN` and control characters are escaped, so no surrogate gets through."""
    return one_line(os.fsencode(name).decode("utf-8", "backslashreplace"))


def _text(value: str) -> str:
    """Any text made storable: a lone surrogate becomes its `\\udNNN` escape."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _fit(stem: str, tail: str) -> str:
    """`stem + tail`, with the stem cut short and marked by a hash if that is longer
    than NAME_MAX bytes."""
    raw, end = os.fsencode(stem), os.fsencode(tail)
    if len(raw) + len(end) <= NAME_MAX:
        return stem + tail
    digest = hashlib.sha256(raw).hexdigest()[:8]
    head = raw[: NAME_MAX - len(end) - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}~{digest}{tail}"


def _report_name(name: str) -> str:
    return _fit(name, ".error.json")


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _unsafe(st: os.stat_result, kind: str, path: Path, owner_fix: str) -> str | None:
    """Why a directory the watcher works in is unsafe (a one-line message), or None."""
    where, euid = f"{kind} {str(path)!r}", os.geteuid()
    if st.st_uid not in (euid, 0):
        return (
            f"{where} is owned by uid {st.st_uid}, not by the watcher's user ({euid}) or root, "
            f"so that user could tamper with it: {owner_fix}"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        who, harm = ("world", "anyone") if st.st_mode & stat.S_IWOTH else ("group", "its group")
        return (
            f"{where} is {who}-writable, so {harm} could tamper with the spool: "
            f"run `chmod g-w,o-w {path}`"
        )
    return None


@dataclass(frozen=True)
class Handled:
    """What happened to one spool file (`name` as the file system has it)."""

    name: str
    ingested: bool
    job_ids: list[str] = field(default_factory=list)
    reason: str | None = None
    schedule_ids: list[str] = field(default_factory=list)

    def line(self) -> str:
        name = shown(self.name)
        if not self.ingested:
            return f"rejected {name}: {self.reason}"
        line = f"ingested {name}: {len(self.job_ids)} job(s) {', '.join(self.job_ids)}"
        if self.schedule_ids:
            line += f", {len(self.schedule_ids)} schedule(s) {', '.join(self.schedule_ids)}"
        return line


@dataclass(frozen=True)
class _Claim:
    token: str
    name: str  # the file's own name
    # In .processing/: the file renamed to `token@host@watcher@name`, or, where that would
    # pass NAME_MAX, a folder `token@host@watcher` that holds the file under its own name.
    entry: str
    folder: bool = False

    @property
    def shown(self) -> str:
        return shown(self.name)

    def problem(self, message: str) -> Problem:
        return Problem(self.shown, 0, 0, "", message)


class Spool:
    """One spool directory and the store its jobs go to.

    :raises QueuectlError: the directory or one of its folders is not safe to work in.
    """

    def __init__(self, directory: Path, store: Store, *, log: Log | None = None) -> None:
        self.dir = directory
        self.store = store
        self.log = log or (lambda line: None)
        self.host = socket.gethostname()
        # Claims carry this watcher's token; the watcher holds an flock on its lock file for
        # as long as it lives, so others can tell its claims from those of a dead watcher
        # (pids are reused, and in a container every watcher is pid 1).
        self.watcher = secrets.token_hex(6)
        self._fds: list[int] = []
        try:
            self._dir_fd = self._open_directory()
            self._processing_fd = self._open_folder(".processing")
            self._done_fd = self._open_folder("done")
            self._rejected_fd = self._open_folder("rejected")
            self._lock_name = f".{self.watcher}.lock"
            self._lock_fd = os.open(
                self._lock_name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=self._processing_fd,
            )
            self._fds.append(self._lock_fd)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except BaseException:
            self._close_fds()
            raise
        self._stopping = False
        self._wake = procs.WakePipe()
        self._last_prune = -float("inf")

    def _open_directory(self) -> int:
        """The spool directory, opened once: every later step is relative to this fd.

        The path may run through symlinks (an admin's choice); the directory it ends at
        is what must be safe, and that is checked on the fd, not on the name.
        """
        where = f"spool directory {str(self.dir)!r}"
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise QueuectlError(f"{where} cannot be opened: {exc.strerror}") from None
        self._fds.append(fd)
        st = os.fstat(fd)
        owner_fix = f"run `chown {os.geteuid()} {self.dir}`, or run the watcher as uid {st.st_uid}"
        problem = _unsafe(st, "spool directory", self.dir, owner_fix)
        if problem:
            raise QueuectlError(problem)
        return fd

    def _open_folder(self, name: str) -> int:
        """`.processing/`, `done/` or `rejected/`: created 0700, or checked if present."""
        path = self.dir / name
        where = f"spool folder {str(path)!r}"
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=self._dir_fd)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=self._dir_fd)
        except OSError as exc:
            # O_NOFOLLOW with O_DIRECTORY fails on a link with ELOOP or ENOTDIR: tell which.
            link = exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(
                os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False).st_mode
            )
            if link:
                raise QueuectlError(
                    f"{where} is a symbolic link, so the watcher's files could land anywhere: "
                    "remove the link (the watcher creates the folder again)"
                ) from None
            if exc.errno == errno.ENOTDIR:
                raise QueuectlError(
                    f"{where} is not a directory: move it away (the watcher creates the "
                    "folder again)"
                ) from None
            raise QueuectlError(f"{where} cannot be opened: {exc.strerror}") from None
        self._fds.append(fd)
        owner_fix = "check what it holds, then move it away (the watcher creates a fresh one)"
        problem = _unsafe(os.fstat(fd), "spool folder", path, owner_fix)
        if problem:
            raise QueuectlError(problem)
        return fd

    def close(self) -> None:
        """Release this watcher's lock (its claims are all settled by then)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._lock_name, dir_fd=self._processing_fd)
        self._close_fds()
        self._wake.close()

    def _close_fds(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one pass ---------------------------------------------------------------------

    def scan_once(self, *, ready: Collection[str] = ()) -> list[Handled]:
        """Claim and ingest every file that is ready; `ready` names files known complete
        (renamed into place), which skip the settle wait."""
        self._maybe_prune()
        claims = self._retake_leftovers()
        for name in self._settled(ready):
            try:
                claim = self._claim(name)
            except OSError as exc:  # it cannot even be moved: say so, and take the others
                self.log(f"cannot claim {shown(name)}: {exc.strerror}")
                continue
            if claim is not None:
                claims.append(claim)
        handled: list[Handled] = []
        for start in range(0, len(claims), BATCH_FILES):
            handled += self._ingest(claims[start : start + BATCH_FILES])
        for item in handled:
            self.log(item.line())
        return handled

    def next_settle_s(self) -> float | None:
        """Seconds until the newest unsettled candidate file settles (None: none waiting)."""
        settle = self._settle_s()
        waits = [settle - age for _, age in self._candidates() if age < settle]
        return max(0.0, min(waits)) if waits else None

    def _candidates(self) -> list[tuple[str, float]]:
        """(name, seconds since last modified) of each candidate, oldest first."""
        now = time.time()
        found = []
        with os.scandir(self._dir_fd) as entries:
            for entry in entries:
                if not is_candidate(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                found.append((entry.name, now - st.st_mtime, st.st_mtime))
        found.sort(key=lambda item: (item[2], item[0]))
        return [(name, age) for name, age, _ in found]

    def _settled(self, ready: Collection[str]) -> list[str]:
        settle = self._settle_s()
        return [name for name, age in self._candidates() if name in ready or age >= settle]

    def _settle_s(self) -> float:
        return Config.resolve(self.store.read_config()).spool_settle_ms / 1000

    @contextlib.contextmanager
    def _claimed(self, claim: _Claim) -> Iterator[tuple[int, str]]:
        """The directory fd and name to reach a claimed file by."""
        if not claim.folder:
            yield self._processing_fd, claim.entry
            return
        fd = os.open(claim.entry, DIR_FLAGS, dir_fd=self._processing_fd)
        try:
            yield fd, claim.name
        finally:
            os.close(fd)

    def _claim(self, name: str) -> _Claim | None:
        return self._take(secrets.token_hex(8), name, self._dir_fd, name)

    def _take(self, token: str, name: str, src_fd: int, src: str) -> _Claim | None:
        """Rename a file into .processing/ as this watcher's claim; None if it is gone
        (another watcher claimed it first)."""
        prefix = f"{token}@{self.host}@{self.watcher}"
        entry = f"{prefix}@{name}"
        if len(os.fsencode(entry)) <= NAME_MAX:
            try:
                os.rename(src, entry, src_dir_fd=src_fd, dst_dir_fd=self._processing_fd)
            except FileNotFoundError:
                return None
            return _Claim(token, name, entry)
        # A long name gets a folder of its own, so it keeps its name. (Watchdog may not
        # watch the new folder yet: the unpaired move can delay events by half a second.)
        os.mkdir(prefix, 0o700, dir_fd=self._processing_fd)
        claim = _Claim(token, name, prefix, folder=True)
        try:
            with self._claimed(claim) as (fd, _):
                os.rename(src, name, src_dir_fd=src_fd, dst_dir_fd=fd)
        except OSError as exc:
            os.rmdir(prefix, dir_fd=self._processing_fd)
            if isinstance(exc, FileNotFoundError):
                return None
            raise
        return claim

    def _retake_leftovers(self) -> list[_Claim]:
        """Claims left in .processing/ by a watcher that died, retaken under the same token."""
        claims = []
        for entry in sorted(os.listdir(self._processing_fd)):
            parts = entry.split("@", 3)
            if entry.startswith(".") or len(parts) < 3:
                continue
            host, watcher = parts[1:3]
            mine = (host, watcher) == (self.host, self.watcher)  # left by a failed pass
            try:
                if not mine and not self._is_abandoned(entry, host, watcher):
                    continue
                claim = self._retake(entry, parts, mine)
            except OSError as exc:  # not a claim this queuectl made: leave it, take the rest
                self.log(f"left {shown(entry)} in .processing/ alone: {exc.strerror}")
                continue
            if claim is not None:
                if not mine:
                    self.log(f"retaking {claim.shown}, left half-done by watcher {watcher}")
                claims.append(claim)
        return claims

    def _retake(self, entry: str, parts: list[str], mine: bool) -> _Claim | None:
        token = parts[0]
        if len(parts) == 4:
            if mine:
                return _Claim(token, parts[3], entry)
            return self._take(token, parts[3], self._processing_fd, entry)
        prefix = f"{token}@{self.host}@{self.watcher}"
        if not mine:
            try:
                os.rename(
                    entry, prefix, src_dir_fd=self._processing_fd, dst_dir_fd=self._processing_fd
                )
            except FileNotFoundError:
                return None  # another watcher retook it first
        fd = os.open(prefix, DIR_FLAGS, dir_fd=self._processing_fd)
        try:
            names = sorted(os.listdir(fd))
        finally:
            os.close(fd)
        if not names:  # the watcher died between making the folder and the rename
            os.rmdir(prefix, dir_fd=self._processing_fd)
            return None
        return _Claim(token, names[0], prefix, folder=True)

    def _is_abandoned(self, entry: str, host: str, watcher: str) -> bool:
        if host == self.host:
            return not self._watcher_alive(watcher)
        try:  # no lock to ask across hosts: wait until the claim is stale
            st = os.stat(entry, dir_fd=self._processing_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return time.time() - st.st_ctime >= FOREIGN_CLAIM_STALE_S

    def _watcher_alive(self, watcher: str) -> bool:
        """Whether the watcher that owns `watcher`'s lock file still holds it."""
        name = f".{watcher}.lock"
        try:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                dir_fd=self._processing_fd,
            )
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._processing_fd)  # its owner is gone
        return False

    # -- ingesting claimed files ----------------------------------------------------------

    def _ingest(self, claims: list[_Claim]) -> list[Handled]:
        config = Config.resolve(self.store.read_config())
        now = utcnow()
        parsed: list[tuple[_Claim, SpoolFile]] = []
        handled: list[Handled] = []
        for claim in claims:
            # One bad file never blocks the others: whatever parsing it raises, it is
            # rejected with the reason, and an unexpected error names its type.
            try:
                parsed.append((claim, self._parse(claim, config, now)))
            except SpecInvalid as exc:
                handled.append(self._reject(claim, exc.problems))
            except OSError as exc:
                reason = f"could not be read: {exc.strerror or exc}"
                handled.append(self._reject(claim, [claim.problem(reason)]))
            except Exception as exc:
                reason = f"could not be processed: {type(exc).__name__}: {exc}"
                handled.append(self._reject(claim, [claim.problem(reason)]))
        outcomes = self._store([file for _, file in parsed], now)
        for (claim, file), problem in zip(parsed, outcomes, strict=True):
            if problem is None:
                self._move(claim, self._done_fd, touch=True)
                handled.append(
                    Handled(
                        claim.name,
                        True,
                        [job.id for job in file.jobs],
                        schedule_ids=[s.spec.id for s in file.schedules],
                    )
                )
            else:
                handled.append(self._reject(claim, [problem]))
        return handled

    def _store(self, files: list[SpoolFile], now: datetime) -> list[Problem | None]:
        """Insert the files' jobs; None for each file stored, or the problem with it."""
        if not files:
            return []
        try:
            outcomes = self.store.ingest_spool_files(files, now)
        except Exception:
            # Nothing of the batch was written. If the store cannot write, the probe
            # raises and the claims stay for the next pass; otherwise one file broke the
            # transaction: find it by storing the files one at a time.
            self._probe_store()
            return [self._store_one(file, now) for file in files]
        return [
            None if conflict is None else Problem(file.name, 0, 0, "id", conflict)
            for file, conflict in zip(files, outcomes, strict=True)
        ]

    def _store_one(self, file: SpoolFile, now: datetime) -> Problem | None:
        """Store one file. A file that fails alone, and again after the store has shown
        that it can write, is refused for what it holds."""
        try:
            return self._stored(file, now)
        except Exception:
            self._probe_store()
        try:
            return self._stored(file, now)
        except Exception as exc:
            reason = f"the store refused it: {type(exc).__name__}: {exc}"
            return Problem(file.name, 0, 0, "", _text(reason))

    def _stored(self, file: SpoolFile, now: datetime) -> Problem | None:
        (conflict,) = self.store.ingest_spool_files([file], now)
        return None if conflict is None else Problem(file.name, 0, 0, "id", conflict)

    def _probe_store(self) -> None:
        """Raise unless the store can write. A delete that matches nothing is still a write
        statement: a read-only database or a lost connection refuses it, a full disk not."""
        self.store.forget_spool_files(EPOCH)

    def _parse(self, claim: _Claim, config: Config, now: datetime) -> SpoolFile:
        limit = config.spool_max_bytes
        with self._claimed(claim) as (dir_fd, name):
            try:
                # O_NONBLOCK: a FIFO opens at once (and is then refused) instead of hanging.
                fd = os.open(
                    name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                link = "a symbolic link: drop the file itself, not a link (it could point anywhere)"
                raise SpecInvalid([claim.problem(link)]) from None
        try:
            # Every check is on the open file, so nothing can be swapped in after it.
            st = os.fstat(fd)
            reason = None
            if not stat.S_ISREG(st.st_mode):
                reason = "not a regular file"
            elif st.st_uid not in (os.geteuid(), 0):
                reason = (
                    f"owned by uid {st.st_uid}, not by the watcher's user ({os.geteuid()}) or "
                    "root: only they may submit jobs"
                )
            elif st.st_size > limit:
                reason = (
                    f"{st.st_size} bytes is more than spool_max_bytes ({limit}): split the "
                    "file or raise the limit"
                )
            if reason:
                raise SpecInvalid([claim.problem(reason)])
            with open(fd, "rb", closefd=False) as f:
                raw = f.read(limit + 1)
        finally:
            os.close(fd)
        if len(raw) > limit:
            raise SpecInvalid([claim.problem(f"more than spool_max_bytes ({limit})")])
        is_json = claim.name.lower().endswith(".json")
        docs = spec.parse_spec_bytes(raw, claim.shown, is_json=is_json)
        loaded = spec.validate_documents(docs, source=claim.shown, relative_cwd="refuse")
        source = Source(Origin.SPOOL, claim.shown)
        jobs = [
            NewJob.build(item.spec, source=source, now=now, default_max_retries=config.max_retries)
            for item in loaded
            if isinstance(item.spec, JobSpec)
        ]
        schedules = [
            NewSchedule(item.spec, source) for item in loaded if isinstance(item.spec, ScheduleSpec)
        ]
        digest = hashlib.sha256(raw).hexdigest()
        return SpoolFile(claim.token, claim.shown, digest, jobs, schedules)

    def _reject(self, claim: _Claim, problems: list[Problem]) -> Handled:
        final = self._move(claim, self._rejected_fd)
        reason = _text(
            "; ".join(str(p) for p in problems[:3])
            + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
        )
        report = {
            "file": claim.shown,
            "rejected_at": format_time(utcnow()),
            "reason": reason,
            "errors": [
                {k: _text(v) if isinstance(v, str) else v for k, v in p.to_dict().items()}
                for p in problems
            ],
        }
        # A fresh tmp name, created (never opened through a link) and renamed into place.
        tmp = f".{claim.token}.error.json.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=self._rejected_fd)  # a crash's leftover; a link itself goes
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self._rejected_fd,
        )
        with open(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(report, indent=2) + "\n")
        os.rename(
            tmp,
            _report_name(final),
            src_dir_fd=self._rejected_fd,
            dst_dir_fd=self._rejected_fd,
        )
        return Handled(claim.name, False, reason=reason)

    def _move(self, claim: _Claim, folder_fd: int, *, touch: bool = False) -> str:
        """Move a claimed file to a folder under its own name (made unique if taken, or in
        `rejected/` if its report's name is); the name it got."""
        report = folder_fd == self._rejected_fd

        def taken(name: str) -> bool:
            return _exists(name, folder_fd) or (report and _exists(_report_name(name), folder_fd))

        target = claim.name
        if taken(target):
            stem, dot, suffix = claim.name.rpartition(".")
            stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
            target = _fit(stem, f".{stamp}.{suffix}") if dot else _fit(claim.name, f".{stamp}")
        with self._claimed(claim) as (dir_fd, name):
            os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=folder_fd)
        if touch:  # done/ is pruned by age since ingestion, not since the file was written
            with contextlib.suppress(OSError):
                os.utime(target, dir_fd=folder_fd, follow_symlinks=False)
        if claim.folder:
            os.rmdir(claim.entry, dir_fd=self._processing_fd)
        return target

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = time.monotonic()
        days = Config.resolve(self.store.read_config()).spool_keep_done_days
        if days <= 0:
            return
        cutoff = time.time() - days * 86_400
        with os.scandir(self._done_fd) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                        os.unlink(entry.name, dir_fd=self._done_fd)
        self.store.forget_spool_files(utcnow() - timedelta(days=days))

    # -- watching ------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the file at hand, then return from watch(). Safe from a signal handler."""
        self._stopping = True
        self._wake.wake()

    def watch(self) -> None:
        """Ingest what is there, then react to file events until stopped."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        ready: set[str] = set()
        spool = self

        class Hints(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                top = str(spool.dir)
                src = os.fsdecode(event.src_path)
                dest = os.fsdecode(getattr(event, "dest_path", "") or "")
                if os.path.dirname(dest) == top and event.event_type == "moved":
                    ready.add(os.path.basename(dest))  # renamed into place: complete
                elif os.path.dirname(src) != top:
                    return  # inside .processing/, done/ or rejected/: our own doing
                spool._wake.wake()

        observer = Observer()
        # Recursive, so the claim (a move into .processing/) is seen whole: watchdog holds
        # a move whose other half it has not seen for half a second, delaying every event.
        observer.schedule(Hints(), str(self.dir), recursive=True)
        observer.start()
        self.log(f"watching {self.dir}")
        try:
            while not self._stopping:
                names = set(ready)
                ready.difference_update(names)
                try:
                    self.scan_once(ready=names)
                except StoreReplaced:
                    raise  # retrying cannot help: the process must open the new file
                except QueuectlError as exc:  # the store is busy or down: claims stay, retry
                    self.log(f"ingest failed, retrying in {RESCAN_S:g} s: {exc}")
                settle = self.next_settle_s()
                self._wake.wait(RESCAN_S if settle is None else min(RESCAN_S, settle + 0.01))
        finally:
            observer.stop()
            observer.join()
            self.log(f"stopped watching {self.dir}")
