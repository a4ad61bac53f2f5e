"""Spool directory: job files dropped into a directory become jobs, once.

A file is claimed by an atomic rename into `.processing/`, so two watchers
never ingest one file twice; parsed and validated; its jobs inserted in one
transaction together with a record of the claim; then moved to `done/`. A bad
file goes to `rejected/` beside `<name>.error.json`. A watcher that dies
mid-file leaves the claim in `.processing/`, where the next scan finds it, and
the claim record makes a second insert a no-op. File-system events are only
hints: every event (and a periodic timer) triggers a full rescan.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import socket
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from . import procs, spec
from .config import Config
from .errors import Problem, QueuectlError, SpecInvalid
from .models import NewJob, Origin, Source, format_time, utcnow
from .paths import home_dir
from .store import SpoolFile, Store

IGNORED_SUFFIXES = (".tmp", ".part", ".swp", "~")
RESCAN_S = 2.0  # rescan even without events: missed events and settling files
BATCH_FILES = 200  # files ingested per transaction (one fsync for the batch)
FOREIGN_CLAIM_STALE_S = 600  # a claim left by another host is retaken after this
PRUNE_EVERY_S = 3600
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


@dataclass(frozen=True)
class Handled:
    """What happened to one spool file."""

    name: str
    ingested: bool
    job_ids: list[str] = field(default_factory=list)
    reason: str | None = None

    def line(self) -> str:
        if self.ingested:
            return f"ingested {self.name}: {len(self.job_ids)} job(s) {', '.join(self.job_ids)}"
        return f"rejected {self.name}: {self.reason}"


@dataclass
class _Claim:
    token: str
    name: str
    path: Path  # inside .processing/


class Spool:
    """One spool directory and the store its jobs go to."""

    def __init__(self, directory: Path, store: Store, *, log: Log | None = None) -> None:
        self.dir = directory
        self.store = store
        self.log = log or (lambda line: None)
        mode = directory.stat().st_mode
        if mode & stat.S_IWOTH:
            raise QueuectlError(
                f"spool directory {str(directory)!r} is world-writable, so anyone could inject "
                f"jobs: run `chmod o-w {directory}`"
            )
        self.processing = directory / ".processing"
        self.done = directory / "done"
        self.rejected = directory / "rejected"
        for sub in (self.processing, self.done, self.rejected):
            sub.mkdir(mode=0o700, exist_ok=True)
        self.host = socket.gethostname()
        # Claims carry this watcher's token; the watcher holds an flock on its lock file for
        # as long as it lives, so others can tell its claims from those of a dead watcher
        # (pids are reused, and in a container every watcher is pid 1).
        self.watcher = secrets.token_hex(6)
        self._lock_path = self.processing / f".{self.watcher}.lock"
        self._lock_fd = os.open(self._lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._stopping = False
        self._wake = procs.WakePipe()
        self._last_prune = -float("inf")

    def close(self) -> None:
        """Release this watcher's lock (its claims are all settled by then)."""
        with contextlib.suppress(FileNotFoundError):
            self._lock_path.unlink()
        os.close(self._lock_fd)

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
            claim = self._claim(name)
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
        with os.scandir(self.dir) as entries:
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

    def _claim(
        self, name: str, token: str | None = None, source: Path | None = None
    ) -> _Claim | None:
        token = token or secrets.token_hex(8)
        target = self.processing / f"{token}@{self.host}@{self.watcher}@{name}"
        try:
            os.rename(source or self.dir / name, target)
        except FileNotFoundError:
            return None  # another watcher claimed it first
        return _Claim(token, name, target)

    def _retake_leftovers(self) -> list[_Claim]:
        """Claims left in .processing/ by a watcher that died, retaken under the same token."""
        claims = []
        for entry in sorted(os.listdir(self.processing)):
            parts = entry.split("@", 3)
            if entry.startswith(".") or len(parts) != 4:
                continue
            token, host, watcher, name = parts
            if host == self.host and watcher != self.watcher and self._watcher_alive(watcher):
                continue  # a live watcher is working on it
            if host != self.host:
                with contextlib.suppress(FileNotFoundError):
                    age = time.time() - (self.processing / entry).lstat().st_ctime
                    if age < FOREIGN_CLAIM_STALE_S:
                        continue  # no lock to ask across hosts: wait until it is stale
            claim = self._claim(name, token, self.processing / entry)
            if claim is not None:
                self.log(f"retaking {name}, left half-done by watcher {watcher}")
                claims.append(claim)
        return claims

    def _watcher_alive(self, watcher: str) -> bool:
        """Whether the watcher that owns `watcher`'s lock file still holds it."""
        path = self.processing / f".{watcher}.lock"
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # its owner is gone
        return False

    # -- ingesting claimed files ----------------------------------------------------------

    def _ingest(self, claims: list[_Claim]) -> list[Handled]:
        config = Config.resolve(self.store.read_config())
        now = utcnow()
        parsed: list[tuple[_Claim, SpoolFile]] = []
        handled: list[Handled] = []
        for claim in claims:
            try:
                parsed.append((claim, self._parse(claim, config, now)))
            except SpecInvalid as exc:
                handled.append(self._reject(claim, exc.problems))
            except (OSError, ValueError, OverflowError) as exc:  # one bad file never blocks others
                problem = Problem(claim.name, 0, 0, "", f"could not be read: {exc}")
                handled.append(self._reject(claim, [problem]))
        outcomes = self.store.ingest_spool_files([file for _, file in parsed], now)
        for (claim, file), conflict in zip(parsed, outcomes, strict=True):
            if conflict is None:
                self._move(claim.path, self.done, claim.name, touch=True)
                handled.append(Handled(claim.name, True, [job.id for job in file.jobs]))
            else:
                handled.append(self._reject(claim, [Problem(claim.name, 0, 0, "id", conflict)]))
        return handled

    def _parse(self, claim: _Claim, config: Config, now: Any) -> SpoolFile:
        st = claim.path.lstat()
        limit = config.spool_max_bytes
        reason = None
        if stat.S_ISLNK(st.st_mode):
            reason = "a symbolic link: drop the file itself, not a link (it could point anywhere)"
        elif not stat.S_ISREG(st.st_mode):
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
            raise SpecInvalid([Problem(claim.name, 0, 0, "", reason)])
        fd = os.open(claim.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise SpecInvalid(
                [Problem(claim.name, 0, 0, "", f"more than spool_max_bytes ({limit})")]
            )
        docs = spec.parse_spec_bytes(raw, claim.name, is_json=claim.name.lower().endswith(".json"))
        loaded = spec.validate_documents(docs, source=claim.name)
        source = Source(Origin.SPOOL, claim.name)
        jobs = [
            NewJob.build(item.spec, source=source, now=now, default_max_retries=config.max_retries)
            for item in loaded
        ]
        return SpoolFile(claim.token, claim.name, hashlib.sha256(raw).hexdigest(), jobs)

    def _reject(self, claim: _Claim, problems: list[Problem]) -> Handled:
        final = self._move(claim.path, self.rejected, claim.name)
        reason = "; ".join(str(p) for p in problems[:3]) + (
            f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        report = {
            "file": claim.name,
            "rejected_at": format_time(utcnow()),
            "reason": reason,
            "errors": [p.to_dict() for p in problems],
        }
        tmp = self.rejected / f".{final.name}.error.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, self.rejected / f"{final.name}.error.json")
        return Handled(claim.name, False, reason=reason)

    def _move(self, path: Path, folder: Path, name: str, *, touch: bool = False) -> Path:
        """Move a claimed file to `folder` under its own name (made unique if taken)."""
        target = folder / name
        if target.exists() or target.is_symlink():
            stem, dot, suffix = name.rpartition(".")
            stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
            target = folder / (f"{stem}.{stamp}.{suffix}" if dot else f"{name}.{stamp}")
        os.rename(path, target)
        if touch:  # done/ is pruned by age since ingestion, not since the file was written
            with contextlib.suppress(OSError):
                os.utime(target, follow_symlinks=False)
        return target

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = time.monotonic()
        days = Config.resolve(self.store.read_config()).spool_keep_done_days
        if days <= 0:
            return
        cutoff = time.time() - days * 86_400
        for entry in os.scandir(self.done):
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
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
                except QueuectlError as exc:  # the store is busy or down: claims stay, retry
                    self.log(f"ingest failed, retrying in {RESCAN_S:g} s: {exc}")
                settle = self.next_settle_s()
                self._wake.wait(RESCAN_S if settle is None else min(RESCAN_S, settle + 0.01))
        finally:
            observer.stop()
            observer.join()
            self.log(f"stopped watching {self.dir}")
