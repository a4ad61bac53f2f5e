"""The spec loader and `queuectl validate`: positions, syntax, typos, duplicates, formats."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from queuectl import spec
from queuectl.errors import SpecInvalid

from .conftest import Run

EXAMPLES = Path(__file__).parent.parent / "examples"


def problems_of(text: str, source: str = "f.yaml", *, is_json: bool | None = None) -> list[str]:
    with pytest.raises(SpecInvalid) as info:
        spec.parse_specs(text, source, is_json=is_json)
    return [str(p) for p in info.value.problems]


def test_schema_errors_point_at_the_node_at_every_depth() -> None:
    text = (
        "- id: a\n"
        "  command: echo\n"
        "  env:\n"
        "    GOOD: yes-string\n"
        "    BAD: 3\n"
        "- id: b\n"
        "  command: [echo, 4]\n"
        "  labels: {team: 7}\n"
        "  priority: high\n"
    )
    assert problems_of(text) == [
        'f.yaml:5:10: env.BAD: 3 is read by YAML as a number: quote it ("3") to make it text',
        "f.yaml:7:12: command: ['echo', 4] is not valid: use a non-empty command string, "
        "or a non-empty array of at most 4096 strings "
        "(no NUL bytes; at most 131072 characters each)",
        'f.yaml:8:18: labels.team: 7 is read by YAML as a number: quote it ("7") to make it text',
        "f.yaml:9:13: priority: 'high' is not of type 'integer'",
    ]


def test_json_positions_are_found_on_the_error_path() -> None:
    text = '[\n  {"id": "a", "command": "x"},\n  {"id": "b", "command": "x", "timeout_ms": -5}\n]\n'
    assert problems_of(text, "f.json", is_json=True) == [
        "f.json:3:45: timeout_ms: -5 is less than the minimum of 0"
    ]


def test_typo_is_named_with_a_suggestion_at_the_key() -> None:
    assert problems_of("command: x\nmax_retires: 2\n") == [
        "f.yaml:2:1: max_retires: unknown field: did you mean 'max_retries'?"
    ]


def test_yaml_syntax_error_has_a_position() -> None:
    (problem,) = problems_of("command: [unclosed\nid: x\n")
    assert problem.startswith("f.yaml:2:")
    assert "invalid YAML" in problem


def test_duplicate_keys_and_unsupported_tags_are_rejected() -> None:
    assert problems_of("command: a\ncommand: b\n") == [
        "f.yaml:2:1: command: duplicate key: remove one of them"
    ]
    assert problems_of('{"command": "a", "command": "b"}', "f.json", is_json=True) == [
        "f.json:1:18: command: duplicate key: remove one of them"
    ]
    (problem,) = problems_of("command: !!python/object:os.system echo\n")
    assert "explicit YAML tag 'tag:yaml.org,2002:python/object:os.system' is not allowed" in problem


def test_yaml_timestamps_stay_text_and_are_checked_as_rfc3339() -> None:
    (loaded,) = spec.parse_specs("command: x\nrun_at: 2030-01-01T00:00:00Z\n", "f.yaml")
    assert loaded.spec.run_at is not None and loaded.spec.run_at.year == 2030
    assert problems_of("command: x\nrun_at: 2030-01-01\n") == [
        "f.yaml:2:9: run_at: '2030-01-01' is not an RFC 3339 date-time with offset, "
        "e.g. 2026-01-31T02:00:00Z"
    ]
    assert problems_of("command: x\nrun_at: 2030-02-30T00:00:00Z\n")[0].startswith("f.yaml:2:9")


def test_multi_document_and_list_files() -> None:
    text = "id: a\ncommand: x\n---\n- {id: b, command: y}\n- {id: c, command: [z]}\n"
    loaded = spec.parse_specs(text, "f.yaml")
    assert [item.spec.id for item in loaded] == ["a", "b", "c"]
    assert [item.line for item in loaded] == [1, 4, 5]


def test_alias_bomb_fails_fast_and_big_honest_files_pass() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefghi":
        prev = chr(ord(level) - 1)
        bomb += (
            f"{level}: &{level} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        )
    bomb += "command: *i\n"
    started = time.monotonic()
    (problem,) = problems_of(bomb)
    assert time.monotonic() - started < 1.0
    assert "alias bomb" in problem
    honest = "".join(
        f"- id: job-{i}\n  command: echo {i}\n  labels: {{n: '{i}'}}\n" for i in range(5000)
    )
    assert len(spec.parse_specs(honest, "big.yaml")) == 5000


def test_large_json_batch_loads() -> None:
    text = json.dumps(
        [{"id": f"j{i}", "command": "true", "priority": i % 3} for i in range(100_000)]
    )
    loaded = spec.parse_specs(text, "batch.json")
    assert len(loaded) == 100_000


def test_deep_nesting_is_a_clean_error() -> None:
    (problem,) = problems_of("command: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested deeper" in problem or "invalid YAML" in problem
    (problem,) = problems_of("[" * 100_000 + "]" * 100_000, "f.json", is_json=True)
    assert "nested deeper" in problem


# -- queuectl validate ------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_validate_examples_is_clean(run: Run, home: Path) -> None:
    result = run("validate", str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("ok: ")
    assert not home.exists(), "validate must not create a home or a database"


def test_validate_reports_every_problem_across_files(run: Run, tmp_path: Path, home: Path) -> None:
    write(tmp_path / "jobs" / "a.yaml", "id: same\ncommand: x\n")
    write(tmp_path / "jobs" / "sub" / "b.yml", "id: same\ncommand: y\npriorty: 1\n")
    write(tmp_path / "jobs" / "c.json", '{"command": ')
    write(tmp_path / "jobs" / ".hidden.yaml", "not: [valid")
    write(tmp_path / "jobs" / "notes.txt", "ignored")
    result = run("validate", str(tmp_path / "jobs"))
    assert result.returncode == 1
    jobs = tmp_path / "jobs"
    assert result.stdout.splitlines() == [
        f"{jobs}/c.json:1:13: invalid JSON: Expecting value",
        f"{jobs}/sub/b.yml:3:1: priorty: unknown field: did you mean 'priority'?",
    ] or result.stdout.splitlines() == [
        f"{jobs}/c.json:1:13: invalid JSON: Expecting value",
        f"{jobs}/sub/b.yml:3:1: priorty: unknown field: did you mean 'priority'?",
        f"{jobs}/sub/b.yml:1:5: id: duplicate id 'same' (first declared at {jobs}/a.yaml:1): "
        "ids must be unique",
    ]
    assert result.stderr.strip().endswith("in 3 file(s)")
    assert not home.exists()


def test_validate_duplicate_ids_across_files(run: Run, tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "id: same\ncommand: x\n")
    b = write(tmp_path / "b.yaml", "# comment\nid: same\ncommand: y\n")
    result = run("validate", str(a), str(b))
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"{b}:2:5: id: duplicate id 'same' (first declared at {a}:1): ids must be unique"
    )


@pytest.mark.parametrize("fmt", ["json", "github"])
def test_validate_machine_formats_parse_back(run: Run, tmp_path: Path, fmt: str) -> None:
    bad = write(tmp_path / "bad.yaml", "command: x\npriority: high\n")
    result = run("validate", "--format", fmt, str(bad))
    assert result.returncode == 1
    if fmt == "json":
        assert json.loads(result.stdout) == [
            {
                "file": str(bad),
                "line": 2,
                "column": 11,
                "field": "priority",
                "message": "'high' is not of type 'integer'",
            }
        ]
    else:
        (line,) = result.stdout.splitlines()
        escaped = str(bad).replace(":", "%3A").replace(",", "%2C")
        assert (
            line
            == f"::error file={escaped},line=2,col=11::priority: 'high' is not of type 'integer'"
        )


def test_validate_json_format_clean_prints_an_empty_list(run: Run) -> None:
    result = run("validate", "--format", "json", str(EXAMPLES))
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_validate_usage_errors_exit_2(run: Run, tmp_path: Path) -> None:
    assert run("validate").returncode == 2
    missing = run("validate", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr


def test_validate_rejects_undecodable_and_empty_files(run: Run, tmp_path: Path) -> None:
    write(tmp_path / "empty.yaml", "")
    (tmp_path / "latin1.yaml").write_bytes(b"command: caf\xe9\n")
    result = run("validate", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{tmp_path}/empty.yaml:1:1: no job found: the input is empty",
        f"{tmp_path}/latin1.yaml:1:1: not UTF-8 text: save the file as UTF-8",
    ]


def test_the_schema_is_shipped_and_is_valid_2020_12() -> None:
    import jsonschema

    schema: Any = spec.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"]
    assert schema["additionalProperties"] is False
    assert all("description" in prop for prop in schema["properties"].values())


def test_the_file_schema_accepts_every_example_and_still_checks_each_job() -> None:
    """schemas/job-file.schema.json (for editors and generic tools): one job or a list."""
    schemas = EXAMPLES.parent / "schemas"
    job_schema = json.loads((schemas / "job.schema.json").read_text())
    file_schema = json.loads((schemas / "job-file.schema.json").read_text())
    # Resolve its relative $ref the way an editor does: against the file's own location.
    registry = Registry().with_resource(
        (schemas / "job.schema.json").as_uri(), Resource.from_contents(job_schema)
    )
    validator = Draft202012Validator(
        {**file_schema, "$id": (schemas / "job-file.schema.json").as_uri()}, registry=registry
    )
    documents = [
        doc.data
        for path in sorted((EXAMPLES / "jobs").iterdir())
        for doc in spec.load_yaml(path.read_text(), str(path))
    ]
    assert any(isinstance(data, list) for data in documents)
    for data in documents:
        assert not list(validator.iter_errors(data)), data
    assert list(validator.iter_errors([{"command": "true"}, {"command": "true", "priorty": 1}]))
    assert list(validator.iter_errors({"id": "no-command"}))


def test_a_huge_value_is_cut_short_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"command": ["x" * 200_000]}))
    (problem,) = spec.validate_paths([path]).problems
    assert len(problem.message) < 300
    assert "(1 items) is not valid: use a non-empty command string" in problem.message


# -- YAML 1.2, as editors and check-jsonschema read it (SPEC section 10) -----------------


@pytest.mark.parametrize(
    ("line", "field", "value"),
    [
        ("priority: 010", "priority", 10),  # YAML 1.1: octal 8
        ("priority: 0o17", "priority", 15),  # YAML 1.1: a string, rejected
        ("priority: 0x1F", "priority", 31),
        ("priority: -3", "priority", -3),
        ("labels: {t: 1:30}", "labels", {"t": "1:30"}),  # YAML 1.1: sexagesimal 90
        ("env: {DEBUG: yes}", "env", {"DEBUG": "yes"}),  # YAML 1.1: a boolean, rejected
        ("env: {ON: '1'}", "env", {"ON": "1"}),  # YAML 1.1: the key True
        ("queue: off", "queue", "off"),  # YAML 1.1: a boolean, rejected
        ("labels: {when: 2030-01-01}", "labels", {"when": "2030-01-01"}),
    ],
)
def test_yaml_is_read_with_the_1_2_core_schema(line: str, field: str, value: Any) -> None:
    (loaded,) = spec.parse_specs(f"command: x\n{line}\n", "f.yaml")
    assert getattr(loaded.spec, field) == value


@pytest.mark.parametrize(
    ("line", "shown"),
    [("env: {~: v}", "~"), ("labels: {3.10: py}", "3.10"), ("env: {true: v}", "true")],
)
def test_mapping_keys_that_are_not_text_say_to_quote_them(line: str, shown: str) -> None:
    kind = {"~": "null", "3.10": "a number", "true": "a boolean"}[shown]
    column = line.index("{") + 2
    assert problems_of(f"command: x\n{line}\n") == [
        f'f.yaml:2:{column}: mapping key {shown} is read by YAML as {kind}: quote it ("{shown}") '
        "to make it text"
    ]


@pytest.mark.parametrize(
    "line",
    [
        'command: !!python/object/apply:os.system ["echo pwned"]',
        "command: !!seq [echo, hi]",
        "env: !!map {A: b}",
        "env: !!omap [{A: b}]",
        "id: !!str abc",
    ],
)
def test_explicit_tags_are_rejected_on_every_node(line: str) -> None:
    (problem,) = problems_of(f"{line}\n" if line.startswith("command") else f"command: x\n{line}\n")
    assert "explicit YAML tag" in problem and "is not allowed: use plain values" in problem


def test_yaml_typed_values_say_to_quote_them_as_written() -> None:
    text = "id: 2030\ncommand: x\nenv: {PORT: 8080}\nlabels: {version: 1.10}\n"
    assert problems_of(text) == [
        'f.yaml:1:5: id: 2030 is read by YAML as a number: quote it ("2030") to make it text',
        'f.yaml:3:13: env.PORT: 8080 is read by YAML as a number: quote it ("8080") '
        "to make it text",
        'f.yaml:4:19: labels.version: 1.10 is read by YAML as a number: quote it ("1.10") '
        "to make it text",
    ]


@pytest.mark.parametrize(
    ("run_at", "reason"),
    [
        ('"2030-01-01 02:00:00Z"', "is not an RFC 3339 date-time with offset"),
        ("2030-01-01T02:00:00+05:60", "is not an RFC 3339 date-time with offset"),
        ("2030-01-01T02:00:00+24:00", "is not an RFC 3339 date-time with offset"),
        ("2030-02-30T02:00:00Z", "is not a real date and time"),
        ("0001-01-01T00:00:00+01:00", "is before 0001-01-01T00:00:00Z"),
    ],
)
def test_run_at_follows_rfc3339_exactly(run_at: str, reason: str) -> None:
    (problem,) = problems_of(f"command: x\nrun_at: {run_at}\n")
    written = run_at.strip('"')
    assert problem.startswith(f"f.yaml:2:9: run_at: '{written}' {reason}")


def test_run_at_with_offset_minutes_is_accepted() -> None:
    (loaded,) = spec.parse_specs("command: x\nrun_at: 2030-01-01T02:00:00+05:59\n", "f.yaml")
    assert loaded.spec.run_at is not None and loaded.spec.run_at.utcoffset() is not None


@pytest.mark.parametrize(
    ("command", "valid"),
    [("\u001f", True), ("\u0085", True), ("\ufeff", False), ("\u00a0 \t", False)],
)
def test_command_whitespace_means_what_ecma_262_means(command: str, valid: bool) -> None:
    # JSON Schema patterns are ECMA-262: \s holds U+FEFF but not U+001F or U+0085.
    text = json.dumps({"command": command})
    if valid:
        assert spec.parse_specs(text, "f.json", is_json=True)[0].spec.command == command
    else:
        assert problems_of(text, "f.json", is_json=True)[0].startswith("f.json:1:13: command:")


def test_json_problems_point_at_the_offending_token() -> None:
    text = '[\n  {"id": "a", "command": "x"},\n  {"id": "a", "command": "y"}\n]'
    assert problems_of(text, "f.json", is_json=True) == [
        "f.json:3:10: id: duplicate id 'a' (first declared at f.json:2): ids must be unique"
    ]
    text = '{"command": "x",\n "env": {"A": "1", "A": "2"}}'
    assert problems_of(text, "f.json", is_json=True) == [
        "f.json:2:20: env.A: duplicate key: remove one of them"
    ]
    text = '{"command": "x",\n "priority": ' + "1" * 45 + "}"
    assert problems_of(text, "f.json", is_json=True) == [
        "f.json:2:14: number longer than 40 characters: not a job field"
    ]


def test_a_file_holding_only_a_document_marker_is_empty_at_line_1(run: Run, tmp_path: Path) -> None:
    path = write(tmp_path / "marker.yaml", "---\n")
    result = run("validate", str(path))
    assert result.returncode == 1
    assert result.stdout == f"{path}:1:1: no job found: the input is empty\n"


def test_an_empty_list_is_valid_alone_and_beside_another_file(run: Run, tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.yaml", "[]\n")
    other = write(tmp_path / "other.yaml", "command: x\n")
    for paths in ([empty], [empty, other]):
        result = run("validate", *map(str, paths))
        assert result.returncode == 0, result.stderr
    assert run("validate", str(empty)).stderr == "ok: 0 job(s) in 1 file(s)\n"


def test_github_format_leaves_out_the_position_of_file_level_problems(
    run: Run, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    result = run("validate", "--format", "github", str(fifo))
    assert result.stdout == f"::error file={fifo}::not a regular file\n"


def test_a_needs_chain_longer_than_the_recursion_limit_validates() -> None:
    chain = [f"- {{id: j{i}, command: x, needs: [j{i + 1}]}}" for i in range(3000)]
    chain.append("- {id: j3000, command: x}")
    loaded = spec.parse_specs("\n".join(chain) + "\n", "chain.yaml")
    assert len(loaded) == 3001
    looped = "\n".join([*chain[:-1], "- {id: j3000, command: x, needs: [j0]}"]) + "\n"
    with pytest.raises(SpecInvalid) as caught:
        spec.parse_specs(looped, "loop.yaml")
    assert len(caught.value.problems) == 3001  # one at each needs entry of the cycle
    assert "needs cycle j0 -> j1 -> j2" in caught.value.problems[0].message
