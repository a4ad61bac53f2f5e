"""Every command has help with an example and is named in the README."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from queuectl.cli import cli
from queuectl.config import KEYS

from .conftest import QUEUECTL

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def all_commands(group: click.Group = cli, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        found.append((path, command))
        if isinstance(command, click.Group):
            found += all_commands(command, f"{path} ")
    return found


@pytest.mark.parametrize(("path", "command"), all_commands(), ids=lambda v: str(v))
def test_every_command_has_help_and_is_documented(path: str, command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*path.split(), "--help"])
    assert result.exit_code == 0
    assert command.help, f"{path} has no docstring"
    if not isinstance(command, click.Group):
        assert "Example" in command.help, f"{path} --help shows no example"
    assert f"queuectl {path}" in README, f"the README does not mention `queuectl {path}`"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{path} {param.opts[0]} has no help"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.split("## ")[0]
    assert "make demo" in head and "make test" in head


def test_generated_references_are_current() -> None:
    """In a fresh interpreter: click caches help options per command, so other tests that
    build contexts in this process could change what --help shows."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_cli_reference_covers_every_command_and_config_key() -> None:
    reference = (ROOT / "docs" / "cli.md").read_text()
    for path, _ in all_commands():
        assert f"\n## queuectl {path}\n" in reference
    for key in KEYS:
        assert f"| `{key}` |" in reference


def test_spec_reference_covers_every_schema_field() -> None:
    reference = (ROOT / "docs" / "job-spec.md").read_text()
    schema = json.loads((ROOT / "schemas" / "job.schema.json").read_text())
    for field in schema["properties"]:
        assert f"\n## {field}\n" in reference


MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}"


def test_docs_index_links_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        if page.name != "README.md":
            assert str(page.relative_to(ROOT / "docs")) in index, f"docs/README.md misses {page}"


def test_bash_completion_completes_commands_and_options() -> None:
    """The documented `_QUEUECTL_COMPLETE=bash_source queuectl` works with the installed command."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMP_")}
    source = subprocess.run(
        [QUEUECTL],
        env={**env, "_QUEUECTL_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "_queuectl_completion" in source and "complete -o nosort" in source

    def complete(words: str) -> list[str]:
        result = subprocess.run(
            [QUEUECTL],
            env={
                **env,
                "_QUEUECTL_COMPLETE": "bash_complete",
                "COMP_WORDS": words,
                "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
            },
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.split()

    assert "plain,worker" in complete("queuectl wor")
    assert "plain,--drain" in complete("queuectl worker run --dr")


@pytest.mark.e2e
def test_demo_runs_the_whole_flow_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """`make demo` runs examples/demo.sh: it must succeed, show each step, and clean up."""
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path),  # the demo's throwaway home goes here
        "PATH": f"{Path(QUEUECTL).parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
    }
    env.pop("QUEUECTL_HOME", None)
    env.pop("QUEUECTL_DATABASE_URL", None)
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in (
        "$ queuectl enqueue",
        "$ queuectl spool ingest",
        "$ queuectl apply examples/jobs",
        "$ queuectl worker run --count 2 --drain",
        "$ queuectl dlq list",
        "$ queuectl dlq retry flaky",
        "$ queuectl logs flaky",
        "$ queuectl status",
    ):
        assert step in out, f"the demo no longer shows {step!r}"
    # flaky: the first run and 2 retries, then the DLQ
    assert "attempt 3 worker" in out and "attempt 4 worker" not in out
    assert list(tmp_path.iterdir()) == [], "the demo left files behind"
    assert not processes_with_env_prefix("QUEUECTL_HOME=" + str(tmp_path)), "left running"


def processes_with_env_prefix(prefix: str) -> list[int]:
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = environ.read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if any(v.startswith(prefix.encode()) for v in variables):
            found.append(int(environ.parent.name))
    return found
