"""Hostile input, property-based: whatever bytes arrive, the answer is a job or a SpecInvalid.

Spec loading, the compiled fast checker, `queuectl enqueue`, `queuectl validate` and the
spool must answer arbitrary input with either valid jobs or one-line problems that name
a position, and never with another exception, a traceback or a hang.

The tests at the end pin down inputs these properties found: line breaks in mapping keys
(once a problem printed on two lines), control characters (a two-line YAML reader
error), integers beyond Python's 4300-digit conversion limit (a ValueError) and JSON
nested just short of the recursion limit (a RecursionError).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

from queuectl import spec
from queuectl.errors import Problem, SpecInvalid
from queuectl.spool import Spool
from queuectl.store import Store, open_store

from .conftest import QUEUECTL, Run

IN_PROCESS = settings(max_examples=150, deadline=2000)
SUBPROCESS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXAMPLE_LIMIT_S = 10.0  # per example, in process: a hang fails instead of stalling the suite
LINE_BREAKS = "\n\r"


def one_line(text: str) -> bool:
    return not any(c in text for c in LINE_BREAKS)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float = EXAMPLE_LIMIT_S) -> Iterator[None]:
    """Fail (raise Hang) when the block runs longer than `seconds`."""

    def expire(signum: int, frame: object) -> None:
        raise Hang(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- checking outcomes ---------------------------------------------------------------------


def check_problem(problem: Problem) -> None:
    assert isinstance(problem, Problem)
    assert problem.source, problem
    assert isinstance(problem.line, int) and problem.line >= 0, problem
    assert isinstance(problem.column, int) and problem.column >= 0, problem
    assert isinstance(problem.message, str) and problem.message, problem
    assert one_line(str(problem)), f"problem is not one line: {problem!s}"


def outcome(raw: bytes, is_json: bool | None) -> list[spec.LoadedSpec] | SpecInvalid:
    """Parse and validate `raw`; the loaded specs or the SpecInvalid, checked either way."""
    try:
        with time_limit():
            docs = spec.parse_spec_bytes(raw, "f.yaml", is_json=is_json)
            loaded = spec.validate_documents(docs)
    except SpecInvalid as exc:
        assert exc.problems
        for problem in exc.problems:
            check_problem(problem)
        assert one_line(str(exc)), str(exc)
        return exc
    assert isinstance(loaded, list)
    assert loaded or all(doc.data == [] for doc in docs), "only an empty list holds no job"
    for item in loaded:
        assert isinstance(item, spec.LoadedSpec)
        assert item.source == "f.yaml"
    return loaded


def check_all_modes(raw: bytes) -> None:
    for is_json in (False, True, None):
        outcome(raw, is_json)


# --- strategies -----------------------------------------------------------------------------

CRAFTED_PREFIXES = [
    b"",
    b"\xef\xbb\xbf",  # UTF-8 BOM
    b"\xff\xfe",  # UTF-16 BOM: not UTF-8
    b"\x00",
    b"\xc3\x28",  # invalid UTF-8
    b"\xed\xa0\x80",  # an encoded surrogate: invalid UTF-8
    b"command: x\r\n",
    b"command: x\r\npriority: 1\r\n",
    b"---\n",
    b"--- !!python/object:os.system\n",
    b"!!python/object/apply:os.system ['true']\n",
    b"command: !!binary aGVsbG8=\n",
    b"command: !custom x\n",
    b"%YAML 1.1\n---\n",
    b"%TAG ! tag:evil.example,2000:\n---\n",
    b"<<: {command: x}\n",
    b"? [a, b]\n: c\n",
    b"{command: x, command: y}\n",
    b'{"command": "x", "command": "y"}',
    b"[",
    b"{",
    b"- command: x\n- command: y\n",
]


def deep(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "flow":
        return b"{a: " * depth + b"1" + b"}" * depth
    if kind == "json":
        return b'{"command": ' + b"[" * depth + b"]" * depth + b"}"
    depth = min(depth, 2_000)  # block style grows quadratically
    return b"".join(b"  " * i + b"a:\n" for i in range(depth)) + b"  " * depth + b"x\n"


def alias_chain(width: int, levels: int) -> bytes:
    """A billion-laughs style document: each level repeats the previous one `width` times."""
    lines = [b"a0: &a0 [" + b", ".join([b"lol"] * width) + b"]"]
    for i in range(1, levels):
        refs = b", ".join([b"*a%d" % (i - 1)] * width)
        lines.append(b"a%d: &a%d [%s]" % (i, i, refs))
    lines.append(b"command: *a%d" % (levels - 1))
    return b"\n".join(lines) + b"\n"


# Depths stay clear of the window just below the recursion limit, which
# test_json_nested_near_the_recursion_limit_is_a_problem sweeps on its own.
DEPTHS = st.sampled_from([1, 2, 63, 64, 65, 66, 100, 500, 5_000, 100_000])
crafted_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda prefix, body: prefix + body,
        st.sampled_from(CRAFTED_PREFIXES),
        st.binary(max_size=80),
    ),
    st.builds(
        lambda prefix, body: prefix + body.encode("utf-8"),
        st.sampled_from(CRAFTED_PREFIXES),
        st.text(max_size=80),
    ),
    st.builds(deep, DEPTHS, st.sampled_from(["list", "flow", "json", "block"])),
    st.builds(alias_chain, st.integers(1, 12), st.integers(1, 9)),
    st.builds(
        lambda n, c: b"command: " + c * n + b"\n",
        st.sampled_from([1, 1_000, 200_000]),
        st.sampled_from([b"x", b" ", b"\\", b"'", b"\xc3\xa9"]),
    ),
)

# Mapping keys never hold line breaks, integers stay printable (see the module docstring).
keys = st.text(alphabet=st.characters(codec="utf-8", exclude_characters=LINE_BREAKS), max_size=12)
huge_ints = st.integers(min_value=-(10**1000), max_value=10**1000)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.sampled_from([-(2**31) - 1, -(2**31), -1, 0, 2**31 - 1, 2**31, 2**63, 10**300]),
    st.floats(),
    st.text(max_size=40),
    st.sampled_from(["\x00", "a\x00b", "\ufeff", "\u2028", "2026-01-31T02:00:00Z", "", " "]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=20,
)

FIELDS = list(spec.schema()["properties"])
valid_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z").filter(lambda s: ".." not in s)
valid_queues = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")
valid_times = st.sampled_from(
    [
        "2026-01-31T02:00:00Z",
        "2026-01-31t02:00:00.123456+05:30",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-00:00",
        "2026-01-31 02:00:00z",
    ]
)
near_valid_times = st.sampled_from(
    [
        "2026-02-30T02:00:00Z",
        "2026-01-31T25:00:00Z",
        "2026-01-31T02:00:00",
        "2026-01-31",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2026-01-31T02:00:00Z\n",
        "\uff12\uff10\uff12\uff16-01-31T02:00:00Z",
    ]
)
text_maps = st.dictionaries(keys, st.text(max_size=10), max_size=3)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(valid_ids, st.text(max_size=10), json_values),
    "command": st.one_of(
        st.text(max_size=20),
        st.lists(st.text(max_size=8), max_size=3),
        st.just(" \t\n"),
        st.just([""]),
        json_values,
    ),
    "priority": st.one_of(
        st.integers(-(2**31) - 2, 2**31 + 1), st.floats(), st.booleans(), json_values
    ),
    "run_at": st.one_of(valid_times, near_valid_times, st.text(max_size=30), json_values),
    "max_retries": st.one_of(st.integers(-2, 2**31 + 1), st.floats(), json_values),
    "timeout_ms": st.one_of(st.integers(-2, 2**31 + 1), st.floats(), json_values),
    "env": st.one_of(text_maps, json_values),
    "cwd": st.one_of(st.text(max_size=10), json_values),
    "queue": st.one_of(valid_queues, st.text(max_size=10), json_values),
    "labels": st.one_of(text_maps, json_values),
}
job_shaped = st.builds(
    lambda known, extra: {**known, **extra},
    st.fixed_dictionaries({}, optional=field_values),
    st.one_of(st.just({}), st.dictionaries(keys, json_values, max_size=2)),
)
# Mostly valid: the common case the fast checker must accept, with one field sometimes off.
valid_field_values: dict[str, st.SearchStrategy[Any]] = {
    "id": valid_ids,
    "priority": st.integers(-(2**31), 2**31 - 1),
    "run_at": valid_times,
    "max_retries": st.integers(0, 2**31 - 1),
    "timeout_ms": st.integers(0, 2**31 - 1),
    "env": st.dictionaries(
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_characters="=\x00\n\r"),
            min_size=1,
            max_size=5,
        ),
        st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5),
        max_size=3,
    ),
    "cwd": st.text(
        alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=10
    ),
    "queue": valid_queues,
    "labels": st.dictionaries(keys.filter(lambda k: "\x00" not in k), st.just("v"), max_size=3),
}
nearly_valid_jobs = st.builds(
    lambda known, command, tweak: {**known, "command": command, **tweak},
    st.fixed_dictionaries({}, optional=valid_field_values),
    st.one_of(
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
            min_size=1,
            max_size=20,
        ),
        st.lists(st.text(max_size=8), min_size=1, max_size=3),
    ),
    st.one_of(st.just({}), st.fixed_dictionaries({}, optional=field_values)),
)


def jsonschema_errors(data: Any) -> list[Any]:
    return list(spec._validator().iter_errors(data))


# --- 1. arbitrary bytes -------------------------------------------------------------------


@IN_PROCESS
@given(crafted_bytes)
@example(b"")
@example(b"\xef\xbb\xbf")
@example(b"\xef\xbb\xbfcommand: x\r\n")
@example(b"command: x\x00\n")
@example(b"command: \xff\n")
@example(alias_chain(10, 9))
@example(deep(100_000, "list"))
@example(deep(100_000, "flow"))
@example(deep(100_000, "json"))
@example(deep(2_000, "block"))
@example(b"- command: x\n  id: a\n- command: y\n  id: a\n")
@example(b"command: x\n---\n---\ncommand: y\n")
def test_any_bytes_load_as_jobs_or_spec_invalid(raw: bytes) -> None:
    check_all_modes(raw)


def test_alias_bomb_is_rejected_fast() -> None:
    with time_limit(5):
        result = outcome(alias_chain(10, 9), None)  # 10**9 nodes if expanded
    assert isinstance(result, SpecInvalid)
    assert "alias" in str(result)


# --- 2. arbitrary JSON-able values and job-shaped dicts -------------------------------------


@IN_PROCESS
@given(json_values)
def test_any_value_as_json_or_yaml_loads_as_jobs_or_spec_invalid(value: Any) -> None:
    as_json = json.dumps(value, ensure_ascii=False).encode()
    check_all_modes(as_json)
    check_all_modes(json.dumps(value).encode())
    check_all_modes(yaml.safe_dump(value, allow_unicode=True).encode())


def check_round_trip(data: dict[str, Any], loaded: list[spec.LoadedSpec]) -> None:
    (item,) = loaded
    job = item.spec
    command = data["command"]
    assert job.command == (tuple(command) if isinstance(command, list) else command)
    assert job.priority == data.get("priority", 0)
    assert job.queue == data.get("queue", "default")
    assert job.id == data.get("id")
    assert job.cwd == data.get("cwd")
    assert job.max_retries == data.get("max_retries")
    assert job.timeout_ms == data.get("timeout_ms")
    assert dict(job.env) == data.get("env", {})
    assert dict(job.labels) == data.get("labels", {})
    if "run_at" in data:
        assert job.run_at == spec.parse_rfc3339(data["run_at"])
        assert job.run_at is not None and job.run_at.tzinfo is not None
    else:
        assert job.run_at is None


@IN_PROCESS
@given(st.one_of(job_shaped, nearly_valid_jobs))
def test_job_shaped_dicts_round_trip_or_spec_invalid(data: dict[str, Any]) -> None:
    errors = jsonschema_errors(data)
    fast = spec._fast_check()
    assert fast is not None, "the compiled checker no longer understands the schema"
    assert not fast(data) or not errors, f"fast checker accepted what jsonschema rejects: {errors}"
    for raw, is_json in (
        (json.dumps(data).encode(), True),
        (json.dumps(data, ensure_ascii=False).encode(), None),
    ):
        result = outcome(raw, is_json)
        event("rejected by jsonschema" if errors else "valid")
        if errors:
            assert isinstance(result, SpecInvalid), result
        else:
            assert not isinstance(result, SpecInvalid), result
            check_round_trip(data, result)


@settings(max_examples=300, deadline=2000)
@given(st.one_of(job_shaped, nearly_valid_jobs, json_values))
def test_fast_checker_never_accepts_what_jsonschema_rejects(data: Any) -> None:
    fast = spec._fast_check()
    assert fast is not None
    assert not fast(data) or not jsonschema_errors(data)


def test_nearly_valid_jobs_are_mostly_accepted_by_the_fast_checker() -> None:
    """Guard the strategies: the valid path must really be exercised, fast checker included."""
    fast = spec._fast_check()
    assert fast is not None
    accepted = 0

    @settings(max_examples=100, deadline=2000, database=None)
    @given(nearly_valid_jobs.filter(lambda d: not jsonschema_errors(d)))
    def count(data: dict[str, Any]) -> None:
        nonlocal accepted
        accepted += bool(fast(data))

    count()
    assert accepted >= 50


# --- 3. the installed CLI: enqueue -----------------------------------------------------------


def job_counts(home: Path) -> dict[str, int]:
    db = home / "queue.db"
    if not db.exists():
        return {}
    store = open_store(f"sqlite:///{db}")
    try:
        return {str(state): n for state, n in store.count_by_state().items() if n}
    finally:
        store.close()


def check_cli_result(
    result: subprocess.CompletedProcess[str], before: dict[str, int], home: Path
) -> None:
    assert result.returncode in (0, 1, 2), result
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode != 0:
        message = result.stderr.rstrip("\n")
        assert message, "a failure must say why"
        assert one_line(message), f"not one line: {message!r}"
        assert job_counts(home) == before, "a failed enqueue stored a job"
    else:
        ids = result.stdout.splitlines()
        # (an empty list of jobs is valid and prints nothing)
        assert all(ids), "a successful enqueue prints each job's id on its own line"
        grown = sum(job_counts(home).values()) - sum(before.values())
        assert 0 <= grown <= len(ids)


cli_stdin = st.one_of(
    crafted_bytes.filter(lambda raw: len(raw) < 100_000),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.one_of(job_shaped, nearly_valid_jobs).map(lambda d: json.dumps(d).encode()),
    st.one_of(job_shaped, nearly_valid_jobs).map(
        lambda d: yaml.safe_dump(d, allow_unicode=True).encode()
    ),
)
no_nul_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=60)
cli_args = st.one_of(
    no_nul_text,
    st.one_of(job_shaped, nearly_valid_jobs, json_values).map(json.dumps),
)


@pytest.mark.e2e
@SUBPROCESS
@given(raw=cli_stdin)
@example(raw=b"")
@example(raw=b'{"command": "x", "priority": "high"}')
@example(raw=b"command: echo ok\n")
def test_enqueue_stdin_answers_with_a_job_or_one_line(run: Run, home: Path, raw: bytes) -> None:
    before = job_counts(home)
    check_cli_result(run("enqueue", "-", input=raw, timeout=30), before, home)


@pytest.mark.e2e
@SUBPROCESS
@given(arg=cli_args)
@example(arg="")
@example(arg="-")
@example(arg="--")
@example(arg="--help-me")
@example(arg="[]")
@example(arg='["echo", "hi"]')
@example(arg="{")
@example(arg=" \t")
def test_enqueue_argument_answers_with_a_job_or_one_line(run: Run, home: Path, arg: str) -> None:
    assume("\x00" not in arg)
    before = job_counts(home)
    # `--` first, so an argument that looks like an option is taken as the job spec.
    check_cli_result(run("enqueue", "--", arg, input=b"", timeout=30), before, home)


# --- 4. the installed CLI: validate ----------------------------------------------------------


@pytest.mark.e2e
@SUBPROCESS
@given(raw=cli_stdin, suffix=st.sampled_from([".yaml", ".yml", ".json", ".JSON"]))
@example(raw=b"command: echo ok\n", suffix=".yaml")
@example(raw=b"\xff", suffix=".json")
def test_validate_answers_zero_or_one_and_touches_no_home(raw: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"spec{suffix}"
        path.write_bytes(raw)
        home = Path(tmp) / "home"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("QUEUECTL_") or k.startswith(("QUEUECTL_TEST_", "QUEUECTL_REQ"))
        }
        result = subprocess.run(
            [QUEUECTL, "validate", str(path)],
            capture_output=True,
            timeout=30,
            env={**env, "QUEUECTL_HOME": str(home)},
            check=False,
        )
        stderr = result.stderr.decode(errors="replace")
        assert result.returncode in (0, 1), stderr
        assert "Traceback" not in stderr, stderr
        assert not home.exists(), "validate created QUEUECTL_HOME"
        if result.returncode == 0:
            assert stderr.startswith("ok: "), stderr


# --- 5. the spool ----------------------------------------------------------------------------

SPOOL_NAMES = ["a.yaml", "b.json", "c.yml", "d.JSON", "e.YAML"]


@SUBPROCESS
@given(contents=st.lists(cli_stdin, min_size=1, max_size=len(SPOOL_NAMES)))
@example(contents=[b"command: ok\n", b"\xff\xfe", b'{"command": "x"}', deep(100_000, "list")])
@example(contents=[b'{"id": "same", "command": "a"}', b'{"id": "same", "command": "b"}'])
def test_spool_files_all_end_in_done_or_rejected(
    sqlite_store: Store, contents: list[bytes]
) -> None:
    names = SPOOL_NAMES[: len(contents)]
    before = sum(sqlite_store.count_by_state().values())
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "spool"
        directory.mkdir(mode=0o700)
        for name, raw in zip(names, contents, strict=True):
            (directory / name).write_bytes(raw)
        with time_limit(), Spool(directory, sqlite_store) as spool:
            handled = spool.scan_once(ready=set(names))
            leftover = [n for n in os.listdir(directory / ".processing") if not n.startswith(".")]
        assert sorted(h.name for h in handled) == sorted(names)
        assert leftover == []
        assert sorted(os.listdir(directory)) == [".processing", "done", "rejected"]
        done = set(os.listdir(directory / "done"))
        rejected = set(os.listdir(directory / "rejected"))
        new_ids: set[str] = set()
        for item in handled:
            if item.ingested:
                assert item.name in done
                # only an empty list of jobs, which is valid, ingests none
                raw = contents[names.index(item.name)]
                is_json = item.name.lower().endswith("json")
                assert item.job_ids or not spec.validate_documents(
                    spec.parse_spec_bytes(raw, item.name, is_json=is_json)
                )
                new_ids.update(item.job_ids)
            else:
                assert item.name in rejected and item.reason
                report = json.loads(
                    (directory / "rejected" / f"{item.name}.error.json").read_text()
                )
                assert report["file"] == item.name
                assert report["errors"]
                assert one_line(report["reason"]), report["reason"]
        assert len(done) == sum(h.ingested for h in handled)
        assert len(rejected) == 2 * sum(not h.ingested for h in handled)  # file + .error.json
        grown = sum(sqlite_store.count_by_state().values()) - before
        assert 0 <= grown <= len(new_ids)


# --- regressions: inputs that once escaped as tracebacks or two-line errors -----------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"command": "x", "env": {"a\\nb": 1}}',
        b'{"command": "x", "a\\nb": 1}',
        b'{"command": "x", "a\\rb": 1}',
        b'{"command": "x", "labels": {"k\\n": 2}}',
    ],
)
def test_line_breaks_in_keys_stay_on_one_line(raw: bytes) -> None:
    check_all_modes(raw)


@pytest.mark.parametrize("raw", [b"\x01", b"command: a\x7fb\n", b"command: x\x1b[31m\n"])
def test_control_characters_give_a_one_line_problem(raw: bytes) -> None:
    for is_json in (False, None):
        problem = outcome(raw, is_json)
        assert isinstance(problem, SpecInvalid)
        assert "\n" not in str(problem), str(problem)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"command": "x", "priority": ' + b"9" * 5000 + b"}",
        b"command: x\npriority: " + b"9" * 5000 + b"\n",
        b"command: x\npriority: 0x" + b"f" * 5000 + b"\n",
    ],
    ids=["json", "yaml-decimal", "yaml-hex"],
)
def test_huge_integers_are_a_problem_not_a_crash(raw: bytes) -> None:
    check_all_modes(raw)


def test_json_nested_near_the_recursion_limit_is_a_problem() -> None:
    limit = sys.getrecursionlimit()
    for depth in range(max(1, limit - 200), limit + 10):
        outcome(deep(depth, "json"), True)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "raw",
    [
        b'{"command": "x", "priority": ' + b"9" * 5000 + b"}",
        b'{"command": "x", "env": {"a\\nb": 1}}',
        b"\x01",
    ],
    ids=["huge-integer", "line-break-in-key", "control-character"],
)
def test_enqueue_answers_hostile_stdin_in_one_line(run: Run, home: Path, raw: bytes) -> None:
    result = run("enqueue", "-", input=raw, timeout=30)
    assert result.returncode in (0, 1, 2), result
    assert "Traceback" not in result.stderr, result.stderr
    assert "\n" not in result.stderr.rstrip("\n"), result.stderr


def test_floats_that_are_whole_numbers_are_integers() -> None:
    """jsonschema counts 2.0 as an integer; the spec then holds the int, not the float."""
    (item,) = spec.parse_specs('{"command": "x", "priority": 2.0, "max_retries": 1.0}', "f.json")
    assert item.spec.priority == 2 and isinstance(item.spec.priority, int)
    assert item.spec.max_retries == 1 and isinstance(item.spec.max_retries, int)
