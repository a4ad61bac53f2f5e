"""Attacks on the spool (issue 14).

1. A group member turns the spool's own folders against a root watcher: an error
   report written through a planted link, pruning let loose on another directory, a
   `.processing/` of their own (with a FIFO for a lock), `.processing/` swapped in the
   middle of a pass. The attacker is a second uid (65534) in a real subprocess.
2. One file no one can process: a name too long for the claim, a name that is not
   UTF-8, content the store refuses, an error the parser did not expect. Each is
   ingested or rejected with a reason, and the others go through.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from queuectl import spec
from queuectl.errors import QueuectlError
from queuectl.spool import Spool, shown
from queuectl.store import Store
from queuectl.store.sql import SqlStore

from .conftest import Run

ATTACKER = 65534  # nobody / nogroup
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the attacker runs as a second uid (65534)"
)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the attacker's uid can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="queuectl-attack-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir(mode=0o700)
    return path


def as_attacker(script: str, *args: object) -> None:
    """Run a shell script as uid and gid 65534, with `$1`... set to `args`."""
    subprocess.run(
        ["sh", "-euc", script, "attacker", *map(str, args)],
        user=ATTACKER,
        group=ATTACKER,
        extra_groups=[],
        cwd="/",
        check=True,
    )


def group_spool(shared: Path) -> Path:
    """A spool in use (its folders made by a root watcher) that group 65534 may write to,
    as issue 14 found it."""
    spool = shared / "spool"
    spool.mkdir()
    for folder in (".processing", "done", "rejected"):
        (spool / folder).mkdir(mode=0o700)
    os.chown(spool, 0, ATTACKER)
    spool.chmod(0o770)
    return spool


def refusal(run: Run, spool: Path) -> str:
    """The one line `spool ingest` refuses the spool with."""
    result = run("spool", "ingest", str(spool), timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("Error: ") : -1]


def group_writable(spool: Path) -> str:
    return (
        f"spool directory '{spool}' is group-writable, so its group could tamper with the "
        f"spool: run `chmod g-w,o-w {spool}`"
    )


def drop(directory: Path | bytes, name: str | bytes, text: str | bytes) -> None:
    """A finished drop, a minute old (settled); names may be bytes that are not UTF-8."""
    path = os.path.join(os.fsencode(directory), os.fsencode(name))
    with open(path, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
    then = time.time() - 60
    os.utime(path, (then, then))


def report_of(folder: Path, name: str) -> dict[str, object]:
    """The error report of a rejected file, read as strict UTF-8 JSON."""
    loaded: dict[str, object] = json.loads(
        (folder / f"{name}.error.json").read_bytes().decode("utf-8")
    )
    return loaded


# -- 1. the spool's folders turned against it --------------------------------------------


@needs_root
def test_a_group_member_cannot_redirect_the_error_report_through_rejected(
    shared: Path, run: Run
) -> None:
    spool = group_spool(shared)
    victim = shared / "victim"
    victim.write_text("only root writes here\n")
    victim.chmod(0o600)
    as_attacker(
        r"""
        cd "$1"
        mv rejected rejected.old && mkdir rejected
        ln -s "$2" rejected/.bad.yaml.error.json.tmp
        ln -s "$2" rejected/bad.yaml.error.json
        printf 'command: [\n' > bad.yaml && touch -d '1 minute ago' bad.yaml
        """,
        spool,
        victim,
    )
    assert refusal(run, spool) == group_writable(spool)
    spool.chmod(0o700)  # the fix the message names; the planted folder is still there
    assert refusal(run, spool) == (
        f"spool folder '{spool}/rejected' is owned by uid 65534, not by the watcher's user (0) "
        "or root, so that user could tamper with it: check what it holds, then move it away "
        "(the watcher creates a fresh one)"
    )
    (spool / "rejected").rename(shared / "quarantine")  # the fix that message names
    result = run("spool", "ingest", str(spool))
    assert result.returncode == 1
    assert "rejected bad.yaml: bad.yaml: owned by uid 65534," in result.stderr
    assert victim.read_text() == "only root writes here\n"
    assert report_of(spool / "rejected", "bad.yaml")["file"] == "bad.yaml"
    assert sorted(os.listdir(spool / "rejected")) == ["bad.yaml", "bad.yaml.error.json"]


@needs_root
def test_a_group_member_cannot_point_the_pruning_of_done_elsewhere(shared: Path, run: Run) -> None:
    spool = group_spool(shared)
    elsewhere = shared / "elsewhere"
    elsewhere.mkdir()
    kept = elsewhere / "ledger-2025.csv"
    kept.write_text("a month old, and not the spool's\n")
    month_ago = time.time() - 30 * 86_400
    os.utime(kept, (month_ago, month_ago))
    as_attacker('cd "$1" && mv done done.old && ln -s "$2" done', spool, elsewhere)
    assert refusal(run, spool) == group_writable(spool)
    spool.chmod(0o700)
    assert refusal(run, spool) == (
        f"spool folder '{spool}/done' is a symbolic link, so the watcher's files could land "
        "anywhere: remove the link (the watcher creates the folder again)"
    )
    assert kept.exists()
    (spool / "done").unlink()
    drop(spool, "good.yaml", "command: echo ok\n")
    assert run("spool", "ingest", str(spool)).returncode == 0
    assert kept.exists() and os.listdir(elsewhere) == [kept.name]
    assert not (spool / "done").is_symlink() and os.listdir(spool / "done") == ["good.yaml"]


@needs_root
def test_a_group_member_cannot_hand_the_watcher_a_processing_folder_of_their_own(
    shared: Path, run: Run
) -> None:
    spool = group_spool(shared)
    # Their own .processing/, with a leftover claim whose "lock" is a FIFO: before issue 14
    # the watcher opened it to ask whether that watcher was alive, and hung for good.
    as_attacker(
        r"""
        cd "$1"
        mv .processing .processing.old && mkdir .processing
        mkfifo .processing/.dead.lock
        printf 'command: echo pwned\n' > ".processing/aaaa@$2@dead@x.yaml"
        """,
        spool,
        socket.gethostname(),
    )
    assert refusal(run, spool) == group_writable(spool)
    spool.chmod(0o700)
    assert refusal(run, spool) == (
        f"spool folder '{spool}/.processing' is owned by uid 65534, not by the watcher's user "
        "(0) or root, so that user could tamper with it: check what it holds, then move it "
        "away (the watcher creates a fresh one)"
    )


@needs_root
def test_a_processing_folder_swapped_in_the_middle_of_a_pass_is_not_followed(
    shared: Path, sqlite_store: Store
) -> None:
    spool_dir = shared / "spool"
    spool_dir.mkdir(mode=0o700)
    host = socket.gethostname()
    swapped: list[str] = []

    def swap_after_the_retake(line: str) -> None:
        """Between the claim and the read: the spool made group-writable under a running
        watcher, and the attacker puts their own file where the claim's name points."""
        if line.startswith("retaking") and not swapped:
            os.chown(spool_dir, 0, ATTACKER)
            spool_dir.chmod(0o770)
            as_attacker(
                r"""
                cd "$1"
                mv .processing .processing.old && mkdir .processing
                printf 'id: evil\ncommand: echo pwned\n' > ".processing/$2"
                """,
                spool_dir,
                claim,
            )
            swapped.append(line)

    with Spool(spool_dir, sqlite_store, log=swap_after_the_retake) as spool:
        claim = f"bbbb@{host}@{spool.watcher}@late.yaml"  # what the retake renames it to
        (spool_dir / ".processing" / f"bbbb@{host}@dead@late.yaml").write_text(
            "id: real\ncommand: echo real\n"
        )
        handled = spool.scan_once()
    assert swapped, "the attack ran"
    assert [(h.name, h.ingested) for h in handled] == [("late.yaml", True)]
    assert [job.id for job in sqlite_store.list_jobs()] == ["real"]
    assert os.listdir(spool_dir / "done") == ["late.yaml"]


FOLDER_PROBLEMS = {
    "symlink": "is a symbolic link, so the watcher's files could land anywhere: remove the "
    "link (the watcher creates the folder again)",
    "file": "is not a directory: move it away (the watcher creates the folder again)",
    "foreign": "is owned by uid 65534, not by the watcher's user (0) or root, so that user "
    "could tamper with it: check what it holds, then move it away (the watcher creates a "
    "fresh one)",
    "group": "is group-writable, so its group could tamper with the spool: run "
    "`chmod g-w,o-w {path}`",
    "world": "is world-writable, so anyone could tamper with the spool: run `chmod g-w,o-w {path}`",
}


@pytest.mark.parametrize("folder", [".processing", "done", "rejected"])
@pytest.mark.parametrize("problem", sorted(FOLDER_PROBLEMS))
def test_an_unsafe_folder_stops_the_watcher_before_it_starts(
    spool_dir: Path, tmp_path: Path, sqlite_store: Store, folder: str, problem: str
) -> None:
    path = spool_dir / folder
    target = tmp_path / "elsewhere"
    target.mkdir()
    if problem == "symlink":
        path.symlink_to(target)
    elif problem == "file":
        path.write_text("")
    else:
        path.mkdir()
        if problem == "foreign":
            if os.geteuid() != 0:
                pytest.skip("needs root to give the folder to uid 65534")
            os.chown(path, ATTACKER, ATTACKER)
        path.chmod({"foreign": 0o700, "group": 0o770, "world": 0o707}[problem])
    drop(spool_dir, "job.yaml", "command: x\n")
    with pytest.raises(QueuectlError) as raised:
        Spool(spool_dir, sqlite_store)
    message = FOLDER_PROBLEMS[problem].replace("{path}", str(path))
    assert str(raised.value) == f"spool folder '{path}' {message}"
    assert os.listdir(target) == [] and sqlite_store.list_jobs() == []
    assert (spool_dir / "job.yaml").exists()


@needs_root
def test_the_directory_reached_is_checked_not_the_path(
    spool_dir: Path, tmp_path: Path, sqlite_store: Store
) -> None:
    link = tmp_path / "via-link"
    link.symlink_to(spool_dir)
    drop(spool_dir, "job.yaml", "command: x\n")
    with Spool(link, sqlite_store) as spool:  # a symlinked path to a safe directory is fine
        (handled,) = spool.scan_once()
    assert handled.ingested
    os.chown(spool_dir, ATTACKER, ATTACKER)
    with pytest.raises(QueuectlError) as raised:
        Spool(link, sqlite_store)
    assert str(raised.value) == (
        f"spool directory '{link}' is owned by uid 65534, not by the watcher's user (0) or "
        f"root, so that user could tamper with it: run `chown 0 {link}`, or run the watcher "
        "as uid 65534"
    )


# -- 2. one file no one can process ------------------------------------------------------

LONG_OK = "a" * 220 + ".yaml"  # 225 bytes: legal, but not with a claim prefix in front
LONG_BAD = "b" * 250 + ".json"  # 255 bytes: NAME_MAX itself, and rejected


def test_names_too_long_for_a_claim_prefix_keep_their_names(
    spool_dir: Path, sqlite_store: Store
) -> None:
    drop(spool_dir, LONG_OK, "command: echo long\n")
    drop(spool_dir, LONG_BAD, '{"command": ')
    drop(spool_dir, "small.yaml", "command: echo small\n")
    with Spool(spool_dir, sqlite_store) as spool:
        handled = {h.name: h.ingested for h in spool.scan_once()}
        assert handled == {LONG_OK: True, LONG_BAD: False, "small.yaml": True}
        drop(spool_dir, LONG_BAD, '{"command": ')  # the same name again: both are kept
        assert [h.ingested for h in spool.scan_once()] == [False]
    assert sorted(os.listdir(spool_dir / "done")) == [LONG_OK, "small.yaml"]
    rejected = os.listdir(spool_dir / "rejected")
    assert len(rejected) == 4 and LONG_BAD in rejected
    assert all(len(name.encode()) <= 255 for name in rejected)
    reports = [n for n in rejected if n.endswith(".error.json")]
    for report in reports:
        assert json.loads((spool_dir / "rejected" / report).read_text())["file"] == LONG_BAD
    assert len(reports) == 2
    assert os.listdir(spool_dir / ".processing") == []


def test_claim_folders_left_by_a_dead_watcher_are_retaken(
    spool_dir: Path, sqlite_store: Store
) -> None:
    host = socket.gethostname()
    with Spool(spool_dir, sqlite_store) as spool:
        left = spool_dir / ".processing" / f"cccc@{host}@dead"
        left.mkdir()
        (left / LONG_OK).write_text("command: echo long\n")
        (spool_dir / ".processing" / f"dddd@{host}@dead").mkdir()  # died before the rename
        (handled,) = spool.scan_once()
    assert (handled.name, handled.ingested) == (LONG_OK, True)
    assert os.listdir(spool_dir / "done") == [LONG_OK]
    assert os.listdir(spool_dir / ".processing") == []
    assert [str(job.source) for job in sqlite_store.list_jobs()] == [f"spool:{LONG_OK}"]


def test_names_that_are_not_utf8_are_shown_escaped_and_stored_as_text(
    spool_dir: Path, sqlite_store: Store
) -> None:
    drop(spool_dir, b"caf\xe9.yaml", "command: echo cafe\n")
    drop(spool_dir, b"bad\xff\nname.json", '{"command": ')
    lines: list[str] = []
    with Spool(spool_dir, sqlite_store, log=lines.append) as spool:
        handled = {os.fsencode(h.name): h.ingested for h in spool.scan_once()}
    assert handled == {b"caf\xe9.yaml": True, b"bad\xff\nname.json": False}
    (job,) = sqlite_store.list_jobs()
    assert str(job.source) == "spool:caf\\xe9.yaml"
    assert f"ingested caf\\xe9.yaml: 1 job(s) {job.id}" in lines
    assert "rejected bad\\xff\\nname.json: bad\\xff\\nname.json:1:13: invalid JSON: " in "\n".join(
        lines
    )
    assert os.listdir(os.fsencode(spool_dir / "done")) == [b"caf\xe9.yaml"]
    report = report_of(spool_dir / "rejected", os.fsdecode(b"bad\xff\nname.json"))
    assert report["file"] == "bad\\xff\\nname.json"


def read_only(store: Store, on: bool) -> None:
    """Make the store refuse every write (as a full-up replica or a read-only file does)."""
    assert isinstance(store, SqlStore)
    if store.d.name == "sqlite":
        store.d.conn.execute(f"PRAGMA query_only = {int(on)}")
    else:
        store.d.conn.execute(f"SET default_transaction_read_only = {'on' if on else 'off'}")


def refuse_job_id(store: Store, job_id: str) -> None:
    """A trigger in the real database that refuses one job id, as a server refuses a value."""
    assert isinstance(store, SqlStore)
    if store.d.name == "sqlite":
        store.d.conn.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON jobs WHEN NEW.id = '{job_id}' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
        return
    store.d.conn.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.id = '{job_id}' THEN RAISE EXCEPTION 'refused by a trigger' "
        "USING ERRCODE = '22023'; END IF; RETURN NEW; END $$"
    )
    store.d.conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON jobs FOR EACH ROW EXECUTE FUNCTION refuse()"
    )


def test_a_file_the_store_refuses_is_rejected_and_the_others_ingested(
    spool_dir: Path, store: Store
) -> None:
    refuse_job_id(store, "poison")
    drop(spool_dir, "a-good.yaml", "id: good-a\ncommand: echo a\n")
    drop(spool_dir, "b-poison.yaml", "id: poison\ncommand: echo p\n")
    drop(spool_dir, "c-surrogate.json", '{"id": "sur", "command": "x", "cwd": "/\\ud800"}')
    drop(spool_dir, "d-good.yaml", "id: good-d\ncommand: echo d\n")
    with Spool(spool_dir, store) as spool:
        handled = {h.name: h for h in spool.scan_once()}
        assert {name: h.ingested for name, h in handled.items()} == {
            "a-good.yaml": True,
            "b-poison.yaml": False,
            "c-surrogate.json": False,
            "d-good.yaml": True,
        }
        assert (handled["b-poison.yaml"].reason or "").startswith(
            "b-poison.yaml: the store refused it: "
        )
        assert "refused by a trigger" in (handled["b-poison.yaml"].reason or "")
        assert sorted(job.id for job in store.list_jobs()) == ["good-a", "good-d"]
        # A store that cannot write at all is not the file's fault: the claim stays.
        read_only(store, True)
        drop(spool_dir, "e-late.yaml", "id: late\ncommand: echo late\n")
        with pytest.raises(Exception, match=r"read-?only"):
            spool.scan_once()
        assert [n for n in os.listdir(spool_dir / ".processing") if not n.startswith(".")]
        read_only(store, False)
        assert [(h.name, h.ingested) for h in spool.scan_once()] == [("e-late.yaml", True)]
    assert sorted(os.listdir(spool_dir / "rejected")) == [
        "b-poison.yaml",
        "b-poison.yaml.error.json",
        "c-surrogate.json",
        "c-surrogate.json.error.json",
    ]


def test_an_unexpected_error_in_one_file_rejects_only_that_file(
    spool_dir: Path, sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    validate = spec.validate_documents

    def validator_with_a_bug(docs: list[spec.Document], *, source: str, **kw: Any) -> object:
        if source == "buggy.yaml":
            raise RuntimeError("a bug the parser did not expect")
        return validate(docs, source=source, **kw)

    monkeypatch.setattr(spec, "validate_documents", validator_with_a_bug)
    drop(spool_dir, "buggy.yaml", "command: echo a\n")
    drop(spool_dir, "fine.yaml", "command: echo b\n")
    lines: list[str] = []
    with Spool(spool_dir, sqlite_store, log=lines.append) as spool:
        handled = {h.name: h.ingested for h in spool.scan_once()}
    assert handled == {"buggy.yaml": False, "fine.yaml": True}
    assert (
        "rejected buggy.yaml: buggy.yaml: could not be processed: RuntimeError: a bug the "
        "parser did not expect"
    ) in lines


def test_a_rejected_file_never_replaces_another_rejected_file(
    spool_dir: Path, sqlite_store: Store
) -> None:
    drop(spool_dir, "a.yaml.error.json", '{"command": ')
    os.utime(spool_dir / "a.yaml.error.json", (1, 1))  # oldest: rejected first
    drop(spool_dir, "a.yaml", "command: [\n")
    with Spool(spool_dir, sqlite_store) as spool:
        assert [h.ingested for h in spool.scan_once()] == [False, False]
    rejected = spool_dir / "rejected"
    assert (rejected / "a.yaml.error.json").read_text() == '{"command": '
    assert len(os.listdir(rejected)) == 4


@pytest.mark.e2e
def test_spool_ingest_takes_every_file_whatever_its_name(spool_dir: Path, run: Run) -> None:
    drop(spool_dir, LONG_OK, "command: echo long\n")
    drop(spool_dir, b"caf\xe9.yaml", "command: echo cafe\n")
    drop(spool_dir, "plain.yaml", "command: echo plain\n")
    drop(spool_dir, "broken.json", '{"command": ')
    result = run("spool", "ingest", str(spool_dir))
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        1,
        "3 file(s) ingested, 1 rejected",
    )
    assert "Traceback" not in result.stderr
    assert os.listdir(spool_dir / ".processing") == []


# -- the property: any name, any bytes -------------------------------------------------

SUFFIXES = [b".yaml", b".yml", b".json", b".JSON"]
name_stems = st.one_of(
    st.binary(min_size=1, max_size=250),
    st.text(min_size=1, max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(min_value=200, max_value=250).map(lambda n: b"n" * n),
).map(lambda stem: stem.replace(b"/", b"_").replace(b"\0", b"_"))
file_names = st.builds(
    lambda stem, suffix: (stem + suffix)[-255:], name_stems, st.sampled_from(SUFFIXES)
).filter(lambda name: not name.startswith(b"."))
contents = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"command: echo ok\n",
            b'{"command": "x", "cwd": "/\\ud800"}',
            b'[{"command": "a"}, {"command": "b"}]',
            b"\xff\xfe",
        ]
    ),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files=st.dictionaries(file_names, contents, min_size=1, max_size=5))
@example(files={LONG_OK.encode(): b"command: ok\n", b"x\xff.json": b'{"cwd": "\\ud800"}'})
def test_any_file_ends_in_done_or_rejected_and_never_stops_the_others(
    sqlite_store: Store, files: dict[bytes, bytes]
) -> None:
    assume(not any(name + b".error.json" in files for name in files))
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir(mode=0o700)
        for name, raw in files.items():
            drop(directory, name, raw)
        names = {os.fsdecode(name) for name in files}
        with Spool(directory, sqlite_store, log=lines.append) as spool:
            handled = spool.scan_once(ready=names)
        assert sorted(h.name for h in handled) == sorted(names)
        assert sorted(os.listdir(directory)) == [".processing", "done", "rejected"]
        assert [n for n in os.listdir(directory / ".processing") if not n.startswith(".")] == []
        done = set(os.listdir(directory / "done"))
        rejected = set(os.listdir(directory / "rejected"))
        assert done == {h.name for h in handled if h.ingested}
        assert len(rejected) == 2 * sum(not h.ingested for h in handled)
        for item in handled:
            if not item.ingested:
                assert item.name in rejected and item.reason
                reports = [
                    r
                    for r in rejected
                    if r.endswith(".error.json")
                    and json.loads((directory / "rejected" / r).read_bytes().decode())["file"]
                    == shown(item.name)
                ]
                assert reports, item
    for line in lines:
        line.encode("utf-8")  # valid text: no surrogate escapes
        assert "\n" not in line
    for job in sqlite_store.list_jobs():
        str(job.source).encode("utf-8")
