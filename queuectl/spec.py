"""Job specs: YAML/JSON loading with node positions, schema validation -> JobSpec.

This is the only module that parses spec text and the only one that calls
jsonschema. Everything after it handles frozen JobSpec objects.

Validation uses schemas/job.schema.json, the single source of truth, twice
over: a small compiled checker handles the common valid case fast (a
100,000-job batch must load in about a second, and jsonschema takes ~45 us a
job), and any job it does not accept is validated again by jsonschema, which
produces the error messages. The compiled checker understands only the
keywords the schema uses; a keyword it does not know disables it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from .errors import Problem, SpecInvalid, UsageProblem
from .models import (
    Catchup,
    Jitter,
    JobSpec,
    Need,
    Overlap,
    RetryPolicy,
    ScheduleSpec,
    duration_ms,
)
from .schedules import cron_problem, zone_problem

if TYPE_CHECKING:
    import yaml

PathTuple = tuple[str | int, ...]
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 40  # far beyond any field's range; Python refuses 4300+ digit ints
# YAML aliases may expand a document to at most this many nodes per byte of text
# (plus a floor), so honest large files pass and alias bombs fail fast.
ALIAS_NODES_PER_BYTE = 2
ALIAS_NODES_FLOOR = 10_000

# RFC 3339 section 5.6 exactly: a `T` separator (not a space) and offset minutes 00-59.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
RFC3339_EXAMPLE = "2026-01-31T02:00:00Z"


def rfc3339_problem(text: str) -> str | None:
    """Why `text` is not a usable RFC 3339 date-time with offset, or None when it is one."""
    if not _RFC3339.match(text):
        return f"is not an RFC 3339 date-time with offset, e.g. {RFC3339_EXAMPLE}"
    try:
        value = datetime.fromisoformat(text.upper())
    except ValueError:
        return f"is not a real date and time (check the day and hour), e.g. {RFC3339_EXAMPLE}"
    try:
        value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is an instant before year 1 in UTC
        return "is before 0001-01-01T00:00:00Z, the earliest instant a job can hold"
    return None


def parse_rfc3339(text: str) -> datetime | None:
    """Parse an RFC 3339 date-time with an offset; None when it is not one."""
    if rfc3339_problem(text) is not None:
        return None
    return datetime.fromisoformat(text.upper())


@functools.cache
def schema_text() -> str:
    """The job schema as shipped inside the package (or, in a source checkout, at the top)."""
    here = Path(__file__).resolve().parent
    for candidate in (
        here / "schemas" / "job.schema.json",
        here.parent / "schemas" / "job.schema.json",
    ):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise FileNotFoundError("job.schema.json is missing from the queuectl installation")


@functools.cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


@functools.cache
def _validator() -> Any:
    import jsonschema  # slow to import: only when a job needs error messages

    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(
        lambda value: not isinstance(value, str) or bool(parse_rfc3339(value))
    )
    return jsonschema.Draft202012Validator(schema(), format_checker=checker)


# --- the compiled fast checker -------------------------------------------------

Check = Callable[[Any], bool]
_ANNOTATIONS = {"$schema", "$id", "title", "description", "default", "x-expected", "$comment"}
_LIMITS: dict[str, Callable[[Any, int], bool]] = {
    "maxLength": lambda v, n: not isinstance(v, str) or len(v) <= n,
    "maxItems": lambda v, n: not isinstance(v, list) or len(v) <= n,
}
_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class _Unsupported(Exception):
    pass


def _compile(node: dict[str, Any]) -> Check:
    checks: list[Check] = []
    for keyword, arg in node.items():
        if keyword in _ANNOTATIONS:
            continue
        checks.append(_compile_keyword(keyword, arg, node))
    return lambda v: all(check(v) for check in checks)


def _compile_keyword(keyword: str, arg: Any, node: dict[str, Any]) -> Check:
    if keyword == "type":
        return _TYPES[arg]
    if keyword == "required":
        return lambda v: not isinstance(v, dict) or all(k in v for k in arg)
    if keyword == "properties":
        props = {k: _compile(s) for k, s in arg.items()}
        return lambda v: (
            not isinstance(v, dict) or all(props[k](x) for k, x in v.items() if k in props)
        )
    if keyword == "additionalProperties":
        known = set(node.get("properties", {}))
        if arg is False:
            return lambda v: not isinstance(v, dict) or all(k in known for k in v)
        extra = _compile(arg)
        return lambda v: (
            not isinstance(v, dict) or all(extra(x) for k, x in v.items() if k not in known)
        )
    if keyword == "propertyNames":
        names = _compile(arg)
        return lambda v: not isinstance(v, dict) or all(names(k) for k in v)
    if keyword == "pattern":
        search = re.compile(arg).search
        return lambda v: not isinstance(v, str) or bool(search(v))
    if keyword == "minLength":
        return lambda v: not isinstance(v, str) or len(v) >= arg
    if keyword == "minItems":
        return lambda v: not isinstance(v, list) or len(v) >= arg
    if keyword == "minimum":
        return lambda v: not _TYPES["number"](v) or v >= arg
    if keyword == "maximum":
        return lambda v: not _TYPES["number"](v) or v <= arg
    if keyword == "prefixItems":
        firsts = [_compile(s) for s in arg]
        return lambda v: (
            not isinstance(v, list) or all(c(x) for c, x in zip(firsts, v, strict=False))
        )
    if keyword == "items":
        item = _compile(arg)
        skip = len(node.get("prefixItems", ()))
        return lambda v: not isinstance(v, list) or all(item(x) for x in v[skip:])
    if keyword == "oneOf":
        options = [_compile(s) for s in arg]
        return lambda v: sum(1 for o in options if o(v)) == 1
    if keyword == "not":
        inner = _compile(arg)
        return lambda v: not inner(v)
    if keyword in _LIMITS:
        limit = _LIMITS[keyword]
        return lambda v: limit(v, arg)
    if keyword == "enum":
        return lambda v: any(type(v) is type(option) and v == option for option in arg)
    if keyword == "uniqueItems":  # on lists of scalars here: their JSON text tells them apart
        return lambda v: (
            not arg or not isinstance(v, list) or len({json.dumps(x) for x in v}) == len(v)
        )
    if keyword == "format" and arg == "date-time":
        return lambda v: not isinstance(v, str) or parse_rfc3339(v) is not None
    raise _Unsupported(keyword)


@functools.cache
def _fast_check() -> Check | None:
    try:
        return _compile(schema())
    except (_Unsupported, KeyError):
        return None


# --- loading text with positions --------------------------------------------------


@dataclass
class Document:
    """One parsed document and where each of its nodes stands in the source text."""

    source: str
    data: Any
    line: int = 1  # where the document starts
    _positions: dict[PathTuple, tuple[int, int]] | None = None
    _key_positions: dict[PathTuple, tuple[int, int]] = field(default_factory=dict)
    # YAML plain scalars that were typed (2030, 1.10, yes) as the user wrote them
    written: dict[PathTuple, str] = field(default_factory=dict)
    base_dir: str | None = None  # what a relative `cwd` is relative to (the file's directory)
    _locate: Callable[[], None] | None = None

    def position(self, path: Sequence[str | int], *, key: bool = False) -> tuple[int, int]:
        """(line, column), 1-based, of the node at `path` (or of its key)."""
        if self._positions is None and self._locate is not None:
            self._locate()
        table = self._key_positions if key else (self._positions or {})
        path = tuple(path)
        while path and path not in table:
            path, key, table = path[:-1], False, self._positions or {}
        return table.get(path, (self.line, 1))


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit


def _construct(
    node: yaml.Node,
    doc: Document,
    path: PathTuple,
    budget: _Budget,
    problems: list[Problem],
) -> Any:
    import yaml

    budget.left -= 1
    if budget.left < 0:
        raise _TooBig
    if len(path) > MAX_DEPTH:
        raise _TooDeep
    positions = doc._positions if doc._positions is not None else {}
    doc._positions = positions
    positions.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if node.tag not in (_PLAIN, _STR, _MAP, _SEQ):
        raise _Bad(node, f"explicit YAML tag {node.tag!r} is not allowed: use plain values")
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _Bad(key_node, "mapping keys must be strings, not lists or mappings")
            key = _construct(key_node, doc, (*path, "<key>"), budget, problems)
            if not isinstance(key, str):
                # YAML 1.2 reads `~`, `3.10` or `true` as null, a number or a boolean: a
                # key that is not text would be renamed silently, so it is refused.
                raise _Bad(key_node, f"mapping key {_as_read(key_node.value, key)}")
            if key in result:
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                problems.append(
                    Problem(
                        doc.source,
                        line,
                        col,
                        _dotted((*path, key)),
                        "duplicate key: remove one of them",
                    )
                )
            doc._key_positions.setdefault(
                (*path, key), (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            )
            result[key] = _construct(value_node, doc, (*path, key), budget, problems)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [
            _construct(item, doc, (*path, i), budget, problems) for i, item in enumerate(node.value)
        ]
    if node.tag == _STR:
        return node.value
    value = _core_scalar(node)
    if not isinstance(value, str):
        doc.written[path] = node.value  # for "quote it" hints that show the value as written
    return value


# Tags the loader gives untagged nodes: a node carrying any other tag had it written
# explicitly, which SPEC section 10 refuses on every node.
_PLAIN = "queuectl:plain"
_STR = "queuectl:quoted"  # not yaml.org's str tag, which `!!str` sets explicitly
_MAP = "queuectl:map"
_SEQ = "queuectl:seq"

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), the
# rules of yaml-language-server and check-jsonschema; pyyaml alone applies YAML 1.1's
# (`on` is true, `010` is 8, `1:30` is 90).
_CORE_NULL = re.compile(r"~|null|Null|NULL|")
_CORE_BOOL = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
    "FALSE": False,
}
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)


def _core_scalar(node: yaml.Node) -> Any:
    """A plain scalar's value under the YAML 1.2 core schema."""
    text: str = node.value
    if _CORE_NULL.fullmatch(text):
        return None
    if text in _CORE_BOOL:
        return _CORE_BOOL[text]
    if _CORE_INT.fullmatch(text):
        if len(text) > MAX_NUMBER_CHARS:  # Python refuses 4300+ digit ints; none is a field
            raise _Bad(node, f"number longer than {MAX_NUMBER_CHARS} characters: not a job field")
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)
    if _CORE_FLOAT.fullmatch(text):
        return float(
            text.replace(".inf", "inf")
            .replace(".Inf", "inf")
            .replace(".INF", "inf")
            .replace(".nan", "nan")
            .replace(".NaN", "nan")
            .replace(".NAN", "nan")
        )
    return text


class _TooBig(Exception):
    pass


class _TooDeep(Exception):
    pass


class _Bad(Exception):
    def __init__(self, node: Any, message: str) -> None:
        super().__init__(message)
        self.line = node.start_mark.line + 1
        self.column = node.start_mark.column + 1


def _dotted(path: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in path)


@functools.cache
def _yaml_loader() -> type:
    import yaml

    base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        """Marks untagged nodes for _construct, which types them by YAML 1.2 rules."""

        def resolve(self, kind: type, value: Any, implicit: Any) -> str:
            if kind is yaml.ScalarNode:
                return _PLAIN if implicit[0] else _STR
            return _MAP if kind is yaml.MappingNode else _SEQ

    return Loader


def load_yaml(text: str, source: str) -> list[Document]:
    """Parse YAML (one or more documents) into Documents; raise SpecInvalid on bad text."""
    import yaml

    budget = _Budget(ALIAS_NODES_FLOOR + ALIAS_NODES_PER_BYTE * len(text))
    docs: list[Document] = []
    problems: list[Problem] = []
    try:
        for node in yaml.compose_all(text, Loader=_yaml_loader()):
            if node is None or (node.tag == _PLAIN and node.value == ""):
                continue  # an empty document (`---` alone) holds no job
            doc = Document(source, None, line=node.start_mark.line + 1, _positions={})
            doc.data = _construct(node, doc, (), budget, problems)
            docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        reason = exc.problem or exc.context or "invalid YAML"
        raise SpecInvalid([Problem(source, line, col, "", f"invalid YAML: {reason}")]) from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        reason = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise SpecInvalid([Problem(source, line, 1, "", f"invalid YAML: {reason}")]) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecInvalid([Problem(source, 1, 1, "", f"invalid YAML: {first}")]) from None
    except _Bad as exc:
        raise SpecInvalid([Problem(source, exc.line, exc.column, "", str(exc))]) from None
    except _TooBig:
        raise SpecInvalid(
            [
                Problem(
                    source,
                    1,
                    1,
                    "",
                    "YAML aliases expand too far (alias bomb?): write the values out",
                )
            ]
        ) from None
    except (_TooDeep, RecursionError):
        raise SpecInvalid(
            [
                Problem(
                    source, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels: a job spec is flat"
                )
            ]
        ) from None
    if problems:
        raise SpecInvalid(problems)
    return docs


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number longer than {MAX_NUMBER_CHARS} characters: not a job field")
    return int(text)


def load_json(text: str, source: str) -> Document:
    """Parse JSON as JSON (fast for big batches); positions are found only if needed."""
    duplicates = False

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicates
        result = dict(pairs)
        duplicates = duplicates or len(result) != len(pairs)
        return result

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise SpecInvalid(
            [Problem(source, exc.lineno, exc.colno, "", f"invalid JSON: {exc.msg}")]
        ) from None
    except ValueError as exc:  # from _bounded_int: the YAML reading of the text has positions
        raise SpecInvalid(
            _positioned_problems(text, source) or [Problem(source, 1, 1, "", str(exc))]
        ) from None
    except RecursionError:
        raise SpecInvalid(
            [
                Problem(
                    source, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels: a job spec is flat"
                )
            ]
        ) from None
    if duplicates:  # rare: composing the text as YAML finds each duplicate key's position
        raise SpecInvalid(_positioned_problems(text, source))
    doc = Document(source, data)
    doc._locate = functools.partial(_locate_json, doc, text)
    return doc


def _as_yaml(text: str) -> str:
    # YAML refuses lone surrogate escapes that JSON allows; a same-length stand-in keeps
    # every position where it was.
    return re.sub(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", r"\\u003f", text)


def _positioned_problems(text: str, source: str) -> list[Problem]:
    """The problems the YAML reading of JSON text finds (duplicate keys, huge numbers),
    each at its token."""
    try:
        load_yaml(_as_yaml(text), source)
    except SpecInvalid as exc:
        return list(exc.problems)
    return []


def _locate_json(doc: Document, text: str) -> None:
    """Find node positions in JSON text by composing it as YAML (only on the error path)."""
    doc._positions = {}
    try:
        (located,) = load_yaml(_as_yaml(text), doc.source)
    except (SpecInvalid, ValueError):
        return
    doc._positions, doc._key_positions = located._positions or {}, located._key_positions


def load_text(text: str, source: str, *, is_json: bool | None = None) -> list[Document]:
    """Parse spec text: JSON when it is JSON (by suffix or first character), else YAML."""
    text = text.removeprefix("\ufeff")
    if is_json is None:
        is_json = text.lstrip()[:1] in ("{", "[")
        if is_json:
            try:
                return [load_json(text, source)]
            except SpecInvalid:
                pass  # YAML flow style also starts with { or [: let the YAML parser judge
            return load_yaml(text, source)
    return [load_json(text, source)] if is_json else load_yaml(text, source)


# --- validation -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec (a job, or a schedule) and where it was declared."""

    spec: JobSpec | ScheduleSpec
    source: str
    line: int
    column: int


def job_entries(doc: Document) -> Iterator[tuple[PathTuple, Any]]:
    """The jobs in a document: one mapping, or a list of them."""
    if isinstance(doc.data, list):
        for i, item in enumerate(doc.data):
            yield (i,), item
    else:
        yield (), doc.data


RelativeCwd = Literal["keep", "resolve", "refuse"]


def validate_documents(
    docs: Sequence[Document], *, source: str = "<input>", relative_cwd: RelativeCwd = "keep"
) -> list[LoadedSpec]:
    """Validate every job in the documents; raise SpecInvalid listing every problem.

    A relative `cwd` is kept, resolved against its document's base_dir (SPEC section
    10: against the spec file's directory, or where `enqueue` ran), or refused (the
    spool, whose files have no directory of their own).
    """
    fast = _fast_check()
    problems: list[Problem] = []
    loaded: list[LoadedSpec] = []
    places: list[tuple[Document, PathTuple]] = []  # where each loaded job's id stands
    for doc in docs:
        for prefix, data in job_entries(doc):
            cwd = data.get("cwd") if isinstance(data, dict) else None
            if isinstance(cwd, str) and cwd and not os.path.isabs(cwd) and relative_cwd != "keep":
                if relative_cwd == "refuse" or doc.base_dir is None:
                    line, col = doc.position((*prefix, "cwd"))
                    problems.append(
                        Problem(
                            doc.source,
                            line,
                            col,
                            "cwd",
                            f"{cwd!r} is a relative path: a spool file has no directory to "
                            "resolve it against; use an absolute path",
                        )
                    )
                    continue
                data["cwd"] = os.path.normpath(os.path.join(doc.base_dir, cwd))
            places.append((doc, prefix))
            bad = _surrogate_path(data)
            if bad is not None:
                problems.append(_surrogate_problem(doc, prefix, bad))
                places.pop()
                continue
            if isinstance(data, dict) and "schedule" in data:
                found = list(_problems(doc, prefix, data)) or _schedule_problems(doc, prefix, data)
                if found:
                    problems.extend(found)
                    places.pop()
                else:
                    line, col = doc.position(prefix)
                    loaded.append(LoadedSpec(_to_spec(data), doc.source, line, col))
                continue
            if fast is not None and fast(data):
                if found := _job_problems(doc, prefix, data):
                    problems.extend(found)
                    places.pop()
                    continue
                line, col = (doc.line, 1) if doc._locate else doc.position(prefix)
                loaded.append(LoadedSpec(_to_spec(data), doc.source, line, col))
                continue
            try:
                found = sorted(  # a missing field is often a typo's consequence: name it first
                    _problems(doc, prefix, data),
                    key=lambda p: (p.message.startswith("required"), p.line, p.column),
                )
            except RecursionError:  # describing a value nested ~1000 deep
                line, col = doc.position(prefix)
                found = [
                    Problem(
                        doc.source,
                        line,
                        col,
                        "",
                        f"nested deeper than {MAX_DEPTH} levels: a job spec is flat",
                    )
                ]
            if found or (found := _job_problems(doc, prefix, data)):
                problems.extend(found)
                places.pop()
            else:  # the fast checker was stricter than jsonschema: trust jsonschema
                line, col = doc.position(prefix)
                loaded.append(LoadedSpec(_to_spec(data), doc.source, line, col))
    problems.extend(_duplicate_ids(loaded, places))
    problems.extend(_needs_cycles(loaded, places))
    if problems:
        raise SpecInvalid(problems)
    return loaded


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_path(data: Any, path: PathTuple = ()) -> PathTuple | None:
    """Where a lone surrogate stands in the data (a JSON `\\ud800` escape, or argv bytes
    that are not UTF-8), or None. No store can hold one: SQLite's text and PostgreSQL
    refuse it, so it is refused here, before anything is written."""
    if isinstance(data, str):
        return path if not data.isascii() and _SURROGATE.search(data) else None
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str) and _surrogate_path(key) is not None:
                return (*path, key)
            found = _surrogate_path(value, (*path, key))
            if found is not None:
                return found
    elif isinstance(data, list):
        for i, item in enumerate(data):
            found = _surrogate_path(item, (*path, i))
            if found is not None:
                return found
    return None


def _surrogate_problem(doc: Document, prefix: PathTuple, path: PathTuple) -> Problem:
    line, col = doc.position(prefix + path)
    return Problem(
        doc.source,
        line,
        col,
        _dotted(path),
        "is not valid Unicode text (a lone surrogate such as \\ud800, or bytes that are not "
        "UTF-8): write the character itself, or a complete surrogate pair",
    )


def _problems(doc: Document, prefix: PathTuple, data: Any) -> Iterator[Problem]:
    if not isinstance(data, dict):
        line, col = doc.position(prefix)
        yield Problem(
            doc.source,
            line,
            col,
            "",
            f"expected a job (a mapping with a command), got {_kind(data)}",
        )
        return
    errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    for err in errors:
        path = tuple(err.absolute_path)
        field_name, message, key = _describe(err, data)
        written = doc.written.get(prefix + path)
        if written is not None and _wants_string(err.schema):
            message = _as_read(written, err.instance)
        line, col = doc.position(prefix + path + ((field_name,) if key else ()), key=key)
        yield Problem(doc.source, line, col, field_name or _dotted(path), message)


def _describe(err: Any, data: dict[str, Any]) -> tuple[str, str, bool]:
    """(field, message, points-at-key) for one jsonschema error, in words a user can act on."""
    if err.validator == "additionalProperties" and not err.absolute_path:
        known = list(schema()["properties"])
        unknown = [k for k in err.instance if k not in known]
        name = unknown[0] if unknown else ""
        import difflib

        hint = difflib.get_close_matches(name, known, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"allowed fields: {', '.join(known)}"
        return name, f"unknown field: {fix}", True
    if err.validator == "required":
        missing = [k for k in err.validator_value if k not in err.instance]
        return ", ".join(missing), "required field is missing: add it", False
    expected = err.schema.get("x-expected") or _parent_expected(err)
    shown = _shown(err.instance)
    if expected:
        return "", f"{shown} is not valid: use {expected}", False
    if err.validator == "format" and isinstance(err.instance, str):
        return "", f"{shown} {rfc3339_problem(err.instance)}", False
    return "", err.message.replace(repr(err.instance), shown), False


def _shown(value: Any, limit: int = 60) -> str:
    """A value for an error message: its repr, cut short so that one line stays readable."""
    text = repr(value)
    if len(text) <= limit:
        return text
    # The value's own length: its repr adds quotes and escapes.
    if isinstance(value, list | dict):
        size = f"{len(value)} items"
    else:
        size = f"{len(value) if isinstance(value, str) else len(text)} characters"
    return f"{text[: limit - 20]}… ({size})"


def _parent_expected(err: Any) -> str | None:
    """The x-expected of the property whose sub-schema failed (for oneOf/not branches)."""
    path = list(err.absolute_path)
    if not path or not isinstance(path[0], str):
        return None
    prop = schema()["properties"].get(path[0], {})
    expected = prop.get("x-expected")
    return str(expected) if expected else None


def _as_read(written: str, value: Any) -> str:
    """A typed YAML scalar shown as the user wrote it, and the fix (quoting)."""
    kind = "null" if value is None else "a boolean" if isinstance(value, bool) else "a number"
    return f'{written} is read by YAML as {kind}: quote it ("{written}") to make it text'


def _wants_string(node: dict[str, Any]) -> bool:
    """Whether a string is one of the things this schema node accepts."""
    kind = node.get("type")
    if kind == "string" or (isinstance(kind, list) and "string" in kind):
        return True
    return any(_wants_string(option) for option in node.get("oneOf", ()))


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _duplicate_ids(
    loaded: Sequence[LoadedSpec], places: Sequence[tuple[Document, PathTuple]]
) -> Iterator[Problem]:
    """Ids declared twice, each at its `id` value (positions are looked up only here)."""
    first: dict[str, tuple[Document, PathTuple]] = {}
    for item, (doc, prefix) in zip(loaded, places, strict=True):
        job_id = item.spec.id
        if job_id is None:
            continue
        if job_id in first:
            seen_doc, seen_prefix = first[job_id]
            seen_line, _ = seen_doc.position((*seen_prefix, "id"))
            line, col = doc.position((*prefix, "id"))
            yield Problem(
                item.source,
                line,
                col,
                "id",
                f"duplicate id {job_id!r} (first declared at {seen_doc.source}:{seen_line}): "
                "ids must be unique",
            )
        else:
            first[job_id] = (doc, prefix)


def _needs_cycles(
    loaded: Sequence[LoadedSpec], places: Sequence[tuple[Document, PathTuple]]
) -> list[Problem]:
    """A problem at each `needs` entry of every cycle in the batch, naming the cycle (a
    batch's jobs can only need jobs of the batch or older ones, so no cycle reaches out)."""
    entries: dict[str, tuple[Document, PathTuple, dict[str, int]]] = {}
    for item, (doc, prefix) in zip(loaded, places, strict=True):
        if isinstance(item.spec, JobSpec) and item.spec.id and item.spec.needs:
            index = {need.job: i for i, need in enumerate(item.spec.needs)}
            entries[item.spec.id] = (doc, prefix, index)
    found: list[Problem] = []
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def report(cycle: list[str]) -> None:
        shown = " -> ".join([*cycle, cycle[0]])
        for here, there in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
            doc, prefix, index = entries[here]
            line, col = doc.position((*prefix, "needs", index[there]))
            found.append(
                Problem(
                    doc.source,
                    line,
                    col,
                    f"needs.{index[there]}",
                    f"needs cycle {shown}: these jobs would wait for one another forever; "
                    "remove one of the needs",
                )
            )

    # Depth first with a stack of its own: a chain of any length, no recursion limit.
    for root in entries:
        if root in state:
            continue
        path: list[str] = [root]
        pending: list[Iterator[str]] = [iter(entries[root][2])]
        state[root] = "open"
        while pending:
            need = next(pending[-1], None)
            if need is None:
                state[path.pop()] = "done"
                pending.pop()
            elif need not in entries:
                continue  # outside the batch, or without needs: no cycle through it
            elif state.get(need) == "open":
                report(path[path.index(need) :])
            elif need not in state:
                state[need] = "open"
                path.append(need)
                pending.append(iter(entries[need][2]))
    return found


def _job_problems(doc: Document, prefix: PathTuple, data: dict[str, Any]) -> list[Problem]:
    """What the schema cannot say about a schema-valid job, each at its position."""
    found: list[Problem] = []

    def problem(path: PathTuple, field_name: str, message: str) -> None:
        line, col = doc.position(prefix + path)
        found.append(Problem(doc.source, line, col, field_name, message))

    if "concurrency_limit" in data and "concurrency_key" not in data:
        problem(
            ("concurrency_limit",),
            "concurrency_limit",
            "a limit needs a concurrency_key to count by: add one, or remove the limit",
        )
    retry = data.get("retry", {})
    both = set(retry.get("on_exit_codes", ())) & set(retry.get("never_on_exit_codes", ()))
    if both:
        problem(
            ("retry", "never_on_exit_codes"),
            "retry.never_on_exit_codes",
            f"exit code(s) {sorted(both)} are in on_exit_codes too: list each in one of them",
        )
    seen: set[str] = set()
    for i, need in enumerate(data.get("needs", ())):
        need_id = need if isinstance(need, str) else need["job"]
        if need_id == data.get("id"):
            problem(("needs", i), f"needs.{i}", f"{need_id!r} needs itself: remove the entry")
        elif need_id in seen:
            problem(("needs", i), f"needs.{i}", f"{need_id!r} is needed twice: keep one entry")
        seen.add(need_id)
    return found


def _schedule_problems(doc: Document, prefix: PathTuple, data: dict[str, Any]) -> list[Problem]:
    """What the schema cannot say about a schema-valid schedule, each at its position."""
    rule = data["schedule"]
    found: list[Problem] = []

    def problem(path: PathTuple, field_name: str, message: str) -> None:
        line, col = doc.position(prefix + path)
        found.append(Problem(doc.source, line, col, field_name, message))

    if "id" not in data:
        problem((), "id", "a schedule needs an id (its runs are named <id>@<slot>): add one")
    if "run_at" in data:
        problem(
            ("run_at",),
            "run_at",
            "a schedule's runs start at their slots: remove run_at (use jitter to spread them)",
        )
    if "needs" in data:
        problem(
            ("needs",),
            "needs",
            "a schedule's runs cannot need other jobs: remove needs (overlap: queue runs "
            "each after the previous one)",
        )
    if ("cron" in rule) == ("every" in rule):
        problem(("schedule",), "schedule", "give either cron or every (not both, not neither)")
    crons = rule.get("cron", [])
    for i, expr in enumerate([crons] if isinstance(crons, str) else crons):
        why = cron_problem(expr)
        if why is not None:
            where = ("schedule", "cron") if isinstance(crons, str) else ("schedule", "cron", i)
            problem(where, _dotted(where), f"{why}: fix the expression")
    every_ms = duration_ms(rule["every"]) if "every" in rule else None
    if every_ms is not None and (every_ms < 1000 or every_ms % 1000):
        problem(
            ("schedule", "every"),
            "schedule.every",
            f"{rule['every']!r}: use whole seconds, at least 1s (run ids name the second)",
        )
    zone = rule.get("timezone")
    if zone is not None and (why := zone_problem(zone)) is not None:
        problem(("schedule", "timezone"), "schedule.timezone", why)
    return found


def _to_spec(data: dict[str, Any]) -> JobSpec | ScheduleSpec:
    if "schedule" in data:
        rule = data["schedule"]
        crons = rule.get("cron", ())
        within = rule.get("expect_success_within")
        return ScheduleSpec(
            id=data["id"],
            template=_to_job_spec({k: v for k, v in data.items() if k != "schedule"}),
            cron=(crons,) if isinstance(crons, str) else tuple(crons),
            every_ms=duration_ms(rule["every"]) if "every" in rule else None,
            timezone=rule.get("timezone", "UTC"),
            catchup=Catchup(rule.get("catchup", "latest")),
            catchup_window_ms=duration_ms(rule.get("catchup_window", "1d")),
            overlap=Overlap(rule.get("overlap", "skip")),
            jitter_ms=duration_ms(rule.get("jitter", "0s")),
            suspend=bool(rule.get("suspend", False)),
            expect_success_within_ms=duration_ms(within) if within is not None else None,
        )
    return _to_job_spec(data)


def _to_job_spec(data: dict[str, Any]) -> JobSpec:
    command = data["command"]
    run_at = data.get("run_at")
    return JobSpec(
        command=tuple(command) if isinstance(command, list) else command,
        id=data.get("id"),
        priority=int(data.get("priority", 0)),
        run_at=parse_rfc3339(run_at) if run_at is not None else None,
        max_retries=_opt_int(data.get("max_retries")),
        timeout_ms=_opt_int(data.get("timeout_ms")),
        env=dict(data.get("env", {})),
        cwd=data.get("cwd"),
        queue=data.get("queue", "default"),
        labels=dict(data.get("labels", {})),
        needs=tuple(Need.from_declared(need) for need in data.get("needs", ())),
        retry=_to_retry(data["retry"]) if "retry" in data else None,
        deadline_ms=duration_ms(data["deadline"]) if "deadline" in data else None,
        concurrency_key=data.get("concurrency_key"),
        concurrency_limit=int(data.get("concurrency_limit", 1)),
    )


def _to_retry(rule: dict[str, Any]) -> RetryPolicy:
    backoff_max = rule.get("backoff_max")
    base = rule.get("backoff_base")
    return RetryPolicy(
        on_exit_codes=tuple(sorted(rule.get("on_exit_codes", ()))),
        never_on_exit_codes=tuple(sorted(rule.get("never_on_exit_codes", ()))),
        backoff_base=None if base is None else float(base),
        backoff_max_ms=None if backoff_max is None else duration_ms(backoff_max),
        jitter=Jitter(rule.get("jitter", "none")),
    )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_specs(text: str, source: str, *, is_json: bool | None = None) -> list[LoadedSpec]:
    """Parse and validate spec text; raise SpecInvalid with every problem's position."""
    return validate_documents(load_text(text, source, is_json=is_json), source=source)


SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def spec_files(paths: Iterable[Path]) -> list[Path]:
    """The spec files named by `paths`: files as given, directories searched recursively
    for *.yaml, *.yml and *.json (hidden files and directories skipped), sorted."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        for candidate in sorted(path.rglob("*")):
            relative = candidate.relative_to(path).parts
            if (
                candidate.suffix.lower() in SPEC_SUFFIXES
                and candidate.is_file()
                and not any(part.startswith(".") for part in relative)
            ):
                found.append(candidate)
    unique: dict[Path, Path] = {}
    for path in found:  # `validate a.yaml a.yaml` or a file inside a directory also given
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


MAX_SPEC_BYTES = 256 * 1024 * 1024  # far above any honest batch; /dev/zero is not a spec


def read_limited(stream: BinaryIO, source: str) -> bytes:
    """Read at most MAX_SPEC_BYTES; raise SpecInvalid naming `source` beyond that."""
    raw = stream.read(MAX_SPEC_BYTES + 1)
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecInvalid(
            [
                Problem(
                    source,
                    0,
                    0,
                    "",
                    f"larger than {MAX_SPEC_BYTES >> 20} MiB: split it into several files",
                )
            ]
        )
    return raw


def read_spec_file(path: Path) -> list[Document]:
    """Load one spec file (JSON by suffix, else YAML); raise SpecInvalid naming the file."""
    try:
        if not path.is_file():
            raise SpecInvalid([Problem(str(path), 0, 0, "", "not a regular file")])
        with open(path, "rb") as f:
            raw = read_limited(f, str(path))
    except OSError as exc:
        raise SpecInvalid([Problem(str(path), 0, 0, "", f"cannot read: {exc.strerror}")]) from None
    docs = parse_spec_bytes(raw, str(path), is_json=path.suffix.lower() == ".json")
    for doc in docs:
        doc.base_dir = str(path.absolute().parent)
    return docs


def parse_spec_bytes(raw: bytes, source: str, *, is_json: bool | None) -> list[Document]:
    """Decode and parse the bytes of a spec file; raise SpecInvalid naming `source`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecInvalid(
            [Problem(source, line, 1, "", "not UTF-8 text: save the file as UTF-8")]
        ) from None
    if "\0" in text:
        line = text[: text.index("\0")].count("\n") + 1
        raise SpecInvalid([Problem(source, line, 1, "", "contains a NUL byte: not a text file")])
    docs = load_text(text, source, is_json=is_json)
    if not docs:
        raise SpecInvalid([Problem(source, 1, 1, "", "no job found: the input is empty")])
    return docs


@dataclass
class Validation:
    """The outcome of validating a set of files: every valid spec and every problem."""

    specs: list[LoadedSpec]
    problems: list[Problem]
    files: int


def validate_paths(paths: Iterable[Path]) -> Validation:
    """Validate every spec file under `paths` as one set (ids must be unique across it)."""
    files = spec_files(paths)
    docs: list[Document] = []
    problems: list[Problem] = []
    for path in files:
        try:
            docs.extend(read_spec_file(path))
        except SpecInvalid as exc:
            problems.extend(exc.problems)
    specs: list[LoadedSpec] = []
    if docs:
        try:
            specs = validate_documents(docs, relative_cwd="resolve")
        except SpecInvalid as exc:
            problems.extend(exc.problems)
    if not files:
        problems.append(
            Problem(
                ", ".join(map(str, paths)), 0, 0, "", "no spec files found (*.yaml, *.yml, *.json)"
            )
        )
    order = {str(path): i for i, path in enumerate(files)}
    problems.sort(key=lambda p: (order.get(p.source, -1), p.line, p.column))
    return Validation(specs, problems, len(files))


def inline_specs(
    arg: str, stdin: BinaryIO, overrides: dict[str, Any], *, cwd: str
) -> list[LoadedSpec]:
    """The jobs of `queuectl enqueue ARG`: JSON, a plain command string, or `-` for stdin.

    `overrides` (from command-line options) replace fields of every job; `env` and
    `labels` are merged into the job's own. A job without `cwd` runs in `cwd` (where
    `enqueue` ran, as with at(1)), and a relative one is resolved against it.
    """
    source = "<stdin>" if arg == "-" else "<argument>"
    if arg == "-":
        docs = parse_spec_bytes(read_limited(stdin, source), source, is_json=None)
    elif _looks_like_json(arg):
        docs = [load_json(arg, "<argument>")]
        data = docs[0].data
        if isinstance(data, list) and data and all(isinstance(x, str) for x in data):
            docs[0].data = {"command": data}  # an argv array: exec'd without a shell
    else:
        if Path(arg).suffix.lower() in SPEC_SUFFIXES and Path(arg).is_file():
            raise UsageProblem(
                f"{arg!r} is a spec file, not a command: enqueue its jobs with "
                f"`queuectl enqueue - < {arg}`, or declare them with `queuectl apply {arg}`"
            )
        docs = [Document("<argument>", {"command": arg}, line=0, _positions={})]
    jobs = [data for doc in docs for _, data in job_entries(doc)]
    if "id" in overrides and len(jobs) > 1:
        raise UsageProblem(
            f"--id names one job but the input holds {len(jobs)}: set ids in the spec"
        )
    for data in jobs:
        if not isinstance(data, dict):
            continue
        for key, value in overrides.items():
            if key in ("env", "labels") and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        data.setdefault("cwd", cwd)
    for doc in docs:
        doc.base_dir = cwd
    return validate_documents(docs, source=source, relative_cwd="resolve")


def _looks_like_json(arg: str) -> bool:
    """Whether `enqueue ARG` means JSON (SPEC "Inline enqueue"): a JSON object or array, or
    text that starts like one (`{"`, `["`), whose error is then a JSON error. Anything
    else is a shell command: `[ -f x ] && y`, `[[ -n $A ]]`, `{ a; b; } > out`."""
    text = arg.lstrip()
    if text[:1] not in ("{", "["):
        return False
    if re.match(r"[{\[]\s*\"", text):
        return True
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
