"""Every command has help with an example and is named in the README."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from queuectl.cli import cli

README = (Path(__file__).parent.parent / "README.md").read_text()


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
