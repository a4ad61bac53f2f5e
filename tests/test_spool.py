"""The spool directory: claims, rejections, crash recovery, and a real watcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from queuectl.errors import QueuectlError
from queuectl.models import JobState
from queuectl.spool import Spool
from queuectl.store import Store

from .conftest import QUEUECTL, Run, wait_for


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir(mode=0o700)
    return path


def drop(directory: Path, name: str, text: str | bytes, *, age_s: float = 5.0) -> Path:
    """Write a file as a finished drop: `age_s` old, so it is settled."""
    path = directory / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def claims_in(spool_dir: Path) -> list[str]:
    """Claimed files in .processing/ (watchers' lock files are dotfiles)."""
    return [n for n in os.listdir(spool_dir / ".processing") if not n.startswith(".")]


def error_report(spool_dir: Path, name: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(
        (spool_dir / "rejected" / f"{name}.error.json").read_text()
    )
    return loaded


def test_ingests_valid_files_and_ignores_the_rest(spool_dir: Path, store: Store) -> None:
    drop(spool_dir, "a.yaml", "command: echo a\n")
    drop(spool_dir, "b.json", '[{"id": "b1", "command": "x"}, {"id": "b2", "command": "y"}]')
    for ignored in (".hidden.yaml", "c.yaml.tmp", "d.part", "e.yaml.swp", "f.yaml~", "notes.txt"):
        drop(spool_dir, ignored, "command: nope\n")
    (spool_dir / "sub.yaml").mkdir()
    handled = Spool(spool_dir, store).scan_once()
    assert sorted((h.name, h.ingested) for h in handled) == [("a.yaml", True), ("b.json", True)]
    assert sorted(os.listdir(spool_dir / "done")) == ["a.yaml", "b.json"]
    assert claims_in(spool_dir) == []
    assert {str(j.source) for j in store.list_jobs()} == {"spool:a.yaml", "spool:b.json"}
    assert {"b1", "b2"} <= {j.id for j in store.list_jobs()}
    assert sorted(os.listdir(spool_dir)) == sorted(
        [
            ".hidden.yaml",
            "c.yaml.tmp",
            "d.part",
            "e.yaml.swp",
            "f.yaml~",
            "notes.txt",
            "sub.yaml",
            ".processing",
            "done",
            "rejected",
        ]
    )


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        (
            "schema.yaml",
            "command: x\npriority: high\n",
            "schema.yaml:2:11: priority: 'high' is not of type 'integer'",
        ),
        ("syntax.json", '{"command": ', "syntax.json:1:13: invalid JSON: Expecting value"),
        (
            "binary.yaml",
            b"command: \xff\xfe\n",
            "binary.yaml:1:1: not UTF-8 text: save the file as UTF-8",
        ),
        ("nul.yaml", b"command: a\x00b\n", "nul.yaml:1:1: contains a NUL byte: not a text file"),
        (
            "big.yaml",
            "command: " + "x" * 2_000_000 + "\n",
            "big.yaml: 2000010 bytes is more than spool_max_bytes (1048576): "
            "split the file or raise the limit",
        ),
    ],
)
def test_bad_files_are_rejected_with_an_error_file(
    spool_dir: Path, store: Store, name: str, content: str | bytes, reason: str
) -> None:
    drop(spool_dir, name, content)
    (handled,) = Spool(spool_dir, store).scan_once()
    assert (handled.ingested, handled.reason) == (False, reason)
    assert (spool_dir / "rejected" / name).exists()
    report = error_report(spool_dir, name)
    assert report["reason"] == reason
    assert isinstance(report["errors"], list) and report["errors"]
    assert store.list_jobs() == []


def test_alias_bomb_is_rejected_fast(spool_dir: Path, store: Store) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefghi":
        p = chr(ord(level) - 1)
        bomb += f"{level}: &{level} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    drop(spool_dir, "bomb.yaml", bomb + "command: *i\n")
    started = time.monotonic()
    (handled,) = Spool(spool_dir, store).scan_once()
    assert time.monotonic() - started < 1.0
    assert not handled.ingested and "alias bomb" in (handled.reason or "")


def test_symlink_and_foreign_owner_are_rejected(
    spool_dir: Path, store: Store, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere.yaml"
    target.write_text("command: x\n")
    (spool_dir / "link.yaml").symlink_to(target)
    os.utime(spool_dir / "link.yaml", (1, 1), follow_symlinks=False)
    foreign = drop(spool_dir, "foreign.yaml", "command: x\n")
    chowned = os.geteuid() == 0
    if chowned:
        os.chown(foreign, 65534, 65534)
    handled = {h.name: h for h in Spool(spool_dir, store).scan_once()}
    assert handled["link.yaml"].reason == (
        "link.yaml: a symbolic link: drop the file itself, not a link (it could point anywhere)"
    )
    assert target.read_text() == "command: x\n"
    if chowned:
        assert handled["foreign.yaml"].reason == (
            "foreign.yaml: owned by uid 65534, not by the watcher's user (0) or root: only they "
            "may submit jobs"
        )
    assert store.list_jobs() == [] if chowned else len(store.list_jobs()) == 1


@pytest.mark.parametrize(
    ("mode", "what"),
    [(0o777, "world-writable, so anyone"), (0o770, "group-writable, so its group")],
)
def test_group_or_world_writable_directory_is_refused(
    spool_dir: Path, store: Store, run: Run, mode: int, what: str
) -> None:
    spool_dir.chmod(mode)
    message = (
        f"spool directory '{spool_dir}' is {what} could tamper with the spool: "
        f"run `chmod g-w,o-w {spool_dir}`"
    )
    with pytest.raises(QueuectlError) as raised:
        Spool(spool_dir, store)
    assert str(raised.value) == message
    for command in ("ingest", "watch"):
        result = run("spool", command, str(spool_dir))
        assert (result.returncode, result.stderr) == (1, f"Error: {message}\n")
    assert sorted(os.listdir(spool_dir)) == [], "nothing was created in a refused directory"


def test_same_id_identical_is_a_noop_and_different_is_a_conflict(
    spool_dir: Path, store: Store
) -> None:
    spool = Spool(spool_dir, store)
    drop(spool_dir, "one.yaml", "id: fixed\ncommand: echo 1\n")
    spool.scan_once()
    drop(spool_dir, "one-again.yaml", "id: fixed\ncommand: echo 1\n")
    drop(spool_dir, "two.yaml", "id: fixed\ncommand: echo 2\n")
    handled = {h.name: h for h in spool.scan_once()}
    assert handled["one-again.yaml"].ingested
    assert not handled["two.yaml"].ingested
    assert "already exists with a different spec" in (handled["two.yaml"].reason or "")
    assert [j.id for j in store.list_jobs()] == ["fixed"]
    assert store.get_job("fixed").command == "echo 1"  # type: ignore[union-attr]


NIGHTLY = "id: nightly\ncommand: %s\nschedule: {cron: '30 2 * * *'}\n"


def test_a_schedule_is_ingested_once_and_a_different_spec_for_it_rejected(
    spool_dir: Path, store: Store
) -> None:
    spool = Spool(spool_dir, store)
    drop(spool_dir, "nightly.yaml", NIGHTLY % "./backup.sh")
    (handled,) = spool.scan_once()
    assert (handled.ingested, handled.schedule_ids, handled.job_ids) == (True, ["nightly"], [])
    assert handled.line() == "ingested nightly.yaml: 0 job(s) , 1 schedule(s) nightly"
    (stored,) = store.list_schedules()
    assert (stored.id, stored.spec.template.command, str(stored.source)) == (
        "nightly",
        "./backup.sh",
        "spool:nightly.yaml",
    )
    drop(spool_dir, "again.yaml", NIGHTLY % "./backup.sh")
    drop(spool_dir, "changed.yaml", NIGHTLY % "./other.sh")
    handled_by_name = {h.name: h for h in spool.scan_once()}
    assert handled_by_name["again.yaml"].ingested
    assert not handled_by_name["changed.yaml"].ingested
    assert error_report(spool_dir, "changed.yaml")["reason"] == (
        "changed.yaml: id: schedule 'nightly' already exists with a different spec (from "
        "spool:nightly.yaml): choose another id, re-submit the identical spec (a no-op), or "
        "change it with `queuectl apply` or `queuectl enqueue`"
    )
    (after,) = store.list_schedules()
    assert after == stored  # the identical one changed nothing, not even updated_at


def test_a_file_of_jobs_and_schedules_is_all_or_nothing(spool_dir: Path, store: Store) -> None:
    spool = Spool(spool_dir, store)
    drop(spool_dir, "first.yaml", NIGHTLY % "./backup.sh")
    spool.scan_once()
    mixed = "- {id: fresh-job, command: x}\n- {id: fresh, command: x, schedule: {every: 1h}}\n"
    drop(spool_dir, "conflicting.yaml", mixed + "- " + NIGHTLY.replace("\n", "\n  ") % "./x")
    (rejected,) = spool.scan_once()
    assert not rejected.ingested
    assert "schedule 'nightly' already exists with a different spec" in (rejected.reason or "")
    assert store.list_jobs() == []
    assert [s.id for s in store.list_schedules()] == ["nightly"]
    drop(spool_dir, "mixed.yaml", mixed)
    (ingested,) = spool.scan_once()
    assert (ingested.job_ids, ingested.schedule_ids) == (["fresh-job"], ["fresh"])
    assert [j.id for j in store.list_jobs()] == ["fresh-job"]
    assert [s.id for s in store.list_schedules()] == ["fresh", "nightly"]


@pytest.mark.e2e
@pytest.mark.both_backends
def test_spool_ingest_command_takes_schedules(spool_dir: Path, run: Run, run_json: Any) -> None:
    drop(spool_dir, "nightly.yaml", NIGHTLY % "./backup.sh")
    result = run("spool", "ingest", str(spool_dir))
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        0,
        "1 file(s) ingested, 0 rejected",
    )
    shown = run_json("schedule", "show", "nightly")
    assert (shown["source"], shown["template"]["command"]) == ("spool:nightly.yaml", "./backup.sh")
    assert os.listdir(spool_dir / "done") == ["nightly.yaml"]


def test_a_file_written_in_place_waits_until_it_settles(spool_dir: Path, store: Store) -> None:
    spool = Spool(spool_dir, store)
    growing = spool_dir / "growing.yaml"
    growing.write_text("command: echo ha")  # just modified: maybe still being written
    assert spool.scan_once() == []
    assert spool.next_settle_s() is not None
    assert growing.exists()
    old = time.time() - 2  # the default spool_settle_ms is one second
    os.utime(growing, (old, old))
    (handled,) = spool.scan_once()
    assert handled.ingested


def test_a_file_renamed_into_place_is_taken_at_once(spool_dir: Path, store: Store) -> None:
    spool = Spool(spool_dir, store)
    (spool_dir / "job.yaml.tmp").write_text("command: echo now\n")
    os.rename(spool_dir / "job.yaml.tmp", spool_dir / "job.yaml")
    (handled,) = spool.scan_once(ready={"job.yaml"})
    assert handled.ingested


def test_leftover_claims_of_a_dead_watcher_are_ingested_once(
    spool_dir: Path, sqlite_store: Store
) -> None:
    from queuectl.store.sql import SqlStore
    from queuectl.store.sqlite import SqliteDialect

    assert isinstance(sqlite_store, SqlStore) and isinstance(sqlite_store.d, SqliteDialect)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = os.uname().nodename
    spool = Spool(spool_dir, sqlite_store)
    drop(spool_dir, "late.yaml", "command: y\n")
    spool.scan_once()
    (token,) = [row[0] for row in sqlite_store.d.conn.execute("SELECT claim_id FROM spool_files")]
    # A watcher died after inserting late.yaml's jobs, before moving it to done/ ...
    os.rename(
        spool_dir / "done" / "late.yaml",
        spool_dir / ".processing" / f"{token}@{host}@{dead.pid}@late.yaml",
    )
    # ... and another died after claiming early.yaml, before inserting anything.
    (spool_dir / ".processing" / f"aaaa@{host}@{dead.pid}@early.yaml").write_text("command: x\n")
    handled = spool.scan_once()
    assert sorted((h.name, h.ingested) for h in handled) == [
        ("early.yaml", True),
        ("late.yaml", True),
    ]
    sources = sorted(str(j.source) for j in sqlite_store.list_jobs())
    assert sources == ["spool:early.yaml", "spool:late.yaml"]
    assert claims_in(spool_dir) == []
    assert sorted(os.listdir(spool_dir / "done")) == ["early.yaml", "late.yaml"]


def test_claims_of_a_live_watcher_are_left_alone(spool_dir: Path, store: Store) -> None:
    with Spool(spool_dir, store) as live, Spool(spool_dir, store) as other:
        busy = spool_dir / ".processing" / f"cccc@{os.uname().nodename}@{live.watcher}@busy.yaml"
        busy.write_text("command: x\n")
        assert other.scan_once() == []
        assert busy.exists(), "a claim whose watcher holds its lock is not taken over"
    # Once that watcher is gone (its lock released), the claim is retaken.
    with Spool(spool_dir, store) as later:
        (handled,) = later.scan_once()
    assert handled.name == "busy.yaml" and handled.ingested


def test_two_watchers_ingest_each_file_once(spool_dir: Path, db_url: str, store: Store) -> None:
    from queuectl.store import open_store

    for i in range(200):
        drop(spool_dir, f"job-{i:03}.yaml", f"command: echo {i}\n")
    counts: list[int] = []

    def watcher() -> None:
        own = open_store(db_url)
        try:
            counts.append(sum(h.ingested for h in Spool(spool_dir, own).scan_once()))
        finally:
            own.close()

    threads = [threading.Thread(target=watcher) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 200
    assert len(store.list_jobs()) == 200
    assert len(os.listdir(spool_dir / "done")) == 200


def test_done_is_pruned_by_age(spool_dir: Path, store: Store) -> None:
    spool = Spool(spool_dir, store)
    stale = spool_dir / "done" / "old.yaml"
    stale.write_text("command: x\n")
    os.utime(stale, (time.time() - 9 * 86_400,) * 2)
    fresh = spool_dir / "done" / "new.yaml"
    fresh.write_text("command: x\n")
    spool.scan_once()
    assert not stale.exists() and fresh.exists()


# -- the real watcher, as users run it ----------------------------------------------------


@pytest.mark.e2e
def test_watcher_ingests_backlog_and_live_drops_then_stops_on_sigterm(
    spool_dir: Path, home: Path, run: Run
) -> None:
    drop(spool_dir, "backlog.yaml", "id: backlog\ncommand: echo old\n")
    watcher = subprocess.Popen(
        [QUEUECTL, "spool", "watch", str(spool_dir)], stderr=subprocess.PIPE, text=True
    )
    try:

        def state(job_id: str) -> str | None:
            result = run("show", job_id)
            return json.loads(result.stdout)["state"] if result.returncode == 0 else None

        assert wait_for(lambda: state("backlog"), what="the backlog file") == JobState.PENDING
        tmp = spool_dir / ".live.yaml"
        tmp.write_text("id: live\ncommand: echo new\n")
        os.rename(tmp, spool_dir / "live.yaml")
        assert wait_for(lambda: state("live"), what="the live drop") == JobState.PENDING
        (spool_dir / "bad.yaml.tmp").write_text("command: [\n")
        os.rename(spool_dir / "bad.yaml.tmp", spool_dir / "bad.yaml")
        wait_for(
            lambda: (spool_dir / "rejected" / "bad.yaml.error.json").exists(), what="the rejection"
        )
    finally:
        watcher.send_signal(signal.SIGTERM)
        _, stderr = watcher.communicate(timeout=20)
    assert watcher.returncode == 0
    assert "ingested backlog.yaml" in stderr
    assert all(line[:4].isdigit() and line[10] == "T" for line in stderr.splitlines())  # stamped
    assert "ingested live.yaml" in stderr
    assert "rejected bad.yaml" in stderr


@pytest.mark.e2e
def test_ingest_command_exit_codes(spool_dir: Path, run: Run) -> None:
    drop(spool_dir, "ok.yaml", "command: x\n")
    result = run("spool", "ingest", str(spool_dir))
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        0,
        "1 file(s) ingested, 0 rejected",
    )
    drop(spool_dir, "bad.yaml", "command: 1\n")
    result = run("spool", "ingest", str(spool_dir))
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        1,
        "0 file(s) ingested, 1 rejected",
    )


@pytest.mark.e2e
def test_worker_run_with_a_spool_watcher_in_the_same_supervisor(
    spool_dir: Path, home: Path, run: Run
) -> None:
    supervisor = subprocess.Popen(
        [QUEUECTL, "worker", "run", "--spool", str(spool_dir)], stderr=subprocess.PIPE, text=True
    )
    try:
        (spool_dir / ".job.tmp").write_text("id: spooled\ncommand: echo ran\n")
        os.rename(spool_dir / ".job.tmp", spool_dir / "job.yaml")

        def state() -> str | None:
            result = run("show", "spooled")
            return json.loads(result.stdout)["state"] if result.returncode == 0 else None

        wait_for(lambda: state() == "completed", what="the spooled job to run")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        _, stderr = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0, stderr
    assert "ingested job.yaml" in stderr
    assert run("worker", "run", "--spool", str(spool_dir), "--drain").returncode == 2


def test_a_relative_cwd_in_the_spool_is_rejected(spool_dir: Path, sqlite_store: Store) -> None:
    drop(spool_dir, "a.yaml", "command: 'true'\ncwd: scripts\n")
    with Spool(spool_dir, sqlite_store) as spool:
        (handled,) = spool.scan_once()
    assert not handled.ingested
    assert handled.reason == (
        "a.yaml:2:6: cwd: 'scripts' is a relative path: a spool file has no directory to "
        "resolve it against; use an absolute path"
    )
