"""What ships beside the code: the wheel, compose.yaml and the systemd units.

The container image itself is built and exercised by `make image-check`
(podman/buildah), which takes minutes, so it is not part of this suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import venv
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from queuectl.cli import cli

from .conftest import QUEUECTL, wait_for

ROOT = Path(__file__).resolve().parent.parent


def parses_as_queuectl(args: list[str]) -> click.Command:
    """Resolve args to a queuectl subcommand and parse its options, as the real CLI would."""
    # Contexts chained from the root's, as the real CLI makes them (click caches each
    # command's help option from the first context it sees).
    ctx = click.Context(cli, info_name="queuectl", **cli.context_settings)
    command: click.Command = cli
    words = list(args)
    while isinstance(command, click.Group):
        name = words.pop(0)
        assert name in command.commands, f"{args}: no command {name!r}"
        command = command.commands[name]
        if isinstance(command, click.Group):
            ctx = click.Context(command, info_name=name, parent=ctx, **command.context_settings)
    command.make_context(command.name or "", words, parent=ctx)  # raises on a bad option
    return command


# compose.yaml ----------------------------------------------------------------------------


def with_defaults(words: list[str]) -> list[str]:
    """Compose's `${NAME:-default}` interpolation, with nothing set."""
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", word) for word in words]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_compose_has_scalable_workers_a_spool_watcher_and_a_postgres_profile(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert set(services) == {"worker", "spool", "postgres"}
    worker, spool, postgres = services["worker"], services["spool"], services["postgres"]
    # --scale worker=N needs no fixed container name or host port
    assert "container_name" not in worker and "ports" not in worker
    assert "profiles" not in worker and "profiles" not in spool  # on by default
    assert postgres["profiles"] == ["postgres"]
    assert parses_as_queuectl(with_defaults(worker["command"])).name == "run"
    assert spool["command"] == ["spool", "watch", "/spool"]


def test_compose_services_share_the_data_volume_and_the_spool_is_a_bind_mount(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"queuectl-data", "postgres-data"} <= set(compose["volumes"])
    for name in ("worker", "spool"):
        assert "queuectl-data:/data" in services[name]["volumes"], name
    binds = [v for v in services["spool"]["volumes"] if isinstance(v, dict)]
    assert [(b["type"], b["target"]) for b in binds] == [("bind", "/spool")]


def test_compose_health_and_graceful_stop(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("worker", "spool"):
        service = services[name]
        assert service["healthcheck"]["test"] == ["CMD", "queuectl", "status"], name
        assert service["stop_signal"] == "SIGTERM"  # graceful: the running job finishes
        assert service["stop_grace_period"], name
        assert service["init"] is True  # something must reap the jobs' orphans
        # with the postgres profile the workers wait for it; without it they do not
        assert service["depends_on"]["postgres"] == {
            "condition": "service_healthy",
            "required": False,
        }
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("podman-compose")),
    reason="no docker-compose binary to run `config` with (the structural tests still ran)",
)
def test_compose_file_is_accepted_by_compose(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose") or shutil.which("podman-compose")
    assert tool
    env = {**os.environ, "QUEUECTL_SPOOL_DIR": str(tmp_path)}
    for profile in ([], ["--profile", "postgres"]):
        result = subprocess.run(
            [tool, "-f", str(ROOT / "compose.yaml"), *profile, "config", "--services"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        expected = {"worker", "spool"} | ({"postgres"} if profile else set())
        assert set(result.stdout.split()) == expected


# Dockerfile (built for real by `make image-check`) ---------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_queuectl_as_a_non_root_user_with_data_volume_and_healthcheck() -> None:
    steps = dockerfile_instructions()
    kinds = [kind for kind, _ in steps]
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")  # overridable base
    assert [args for kind, args in steps if kind == "FROM"] == [
        "${BASE_IMAGE} AS build",
        "${BASE_IMAGE}",
    ]
    final = steps[len(kinds) - 1 - kinds[::-1].index("FROM") :]
    settings = {kind: args for kind, args in final}
    assert settings["USER"] == "${QUEUECTL_UID}:${QUEUECTL_UID}"
    assert ("ARG", "QUEUECTL_UID=10001") in final
    assert settings["VOLUME"] == '["/data"]'
    assert "QUEUECTL_HOME=/data" in settings["ENV"]
    assert settings["ENTRYPOINT"] == '["queuectl"]'
    assert settings["STOPSIGNAL"] == "SIGTERM"
    assert settings["HEALTHCHECK"].endswith('CMD ["queuectl", "status"]')
    install = " ".join(args for kind, args in steps if kind == "RUN")
    assert '".[postgres]"' in install and "--group" not in install  # production deps only


def test_build_context_leaves_out_the_checkout_s_clutter() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # an allowlist: everything not named below is out
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "LICENSE", "queuectl", "schemas", "wheels"}


# contrib/systemd --------------------------------------------------------------------------

UNITS = sorted((ROOT / "contrib" / "systemd").glob("*.service"))


def read_unit(path: Path) -> dict[str, list[str]]:
    """The [Service] settings; a key may repeat (Environment=), so each maps to a list."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_two_units_exist() -> None:
    assert [u.name for u in UNITS] == ["queuectl-spool.service", "queuectl-worker@.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_stops_gracefully_and_restarts(unit: Path) -> None:
    service = {key: values[-1] for key, values in read_unit(unit).items()}
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"]
    assert service["Restart"] == "always"
    assert service["User"] == "queuectl"
    assert "QUEUECTL_HOME=/var/lib/queuectl" in read_unit(unit)["Environment"]
    exec_start = service["ExecStart"].split()
    assert exec_start[0] == "/opt/queuectl/bin/queuectl"
    if unit.name.startswith("queuectl-worker"):
        # the jobs must not get SIGTERM along with the worker, or graceful stop cuts them short
        assert service["KillMode"] == "mixed"
        assert exec_start[1:3] == ["worker", "run"]
        assert '"QUEUECTL_WORKER_ARGS=--count 2"' in read_unit(unit)["Environment"]
        parses_as_queuectl(["worker", "run", "--count", "2"])
    else:
        assert exec_start[1:3] == ["spool", "watch"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd's own checker, with the paths and user swapped for ones this machine has."""
    queuectl = QUEUECTL
    user = (
        os.environ.get("USER")
        or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    )
    paths = []
    for unit in UNITS:
        text = unit.read_text().replace("/opt/queuectl/bin/queuectl", queuectl)
        text = text.replace("User=queuectl", f"User={user}").replace("Group=queuectl", "")
        name = unit.name.replace("@.service", "@main.service")  # verify an instance
        (tmp_path / unit.name).write_text(text)
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


# the wheel --------------------------------------------------------------------------------


@pytest.mark.e2e
def test_wheel_installs_and_runs_in_a_fresh_venv_without_dev_dependencies(tmp_path: Path) -> None:
    """Build the wheel, install it alone into a new venv, and use it outside the checkout."""
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("queuectl-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    installed = subprocess.run(
        [bin_dir / "python", "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {
        "queuectl",
        "click",
        "pyyaml",
        "jsonschema",
        "watchdog",
        "cronsim",
        "tzdata",
        "prometheus_client",
    } <= names
    assert not names & {"pytest", "ruff", "mypy", "hypothesis", "psycopg"}, names

    home = tmp_path / "home"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "QUEUECTL_HOME": str(home),
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
    }

    def queuectl(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        # run from outside the checkout, so nothing can come from the source tree
        return subprocess.run(
            [bin_dir / "queuectl", *args], env=env, cwd=cwd, capture_output=True, text=True
        )

    assert "Usage: queuectl" in queuectl("--help").stdout
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    checked = queuectl("validate", "examples/")
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.startswith("ok: ")
    assert queuectl("enqueue", "echo from the wheel", "--id", "w1").returncode == 0
    drained = queuectl("worker", "run", "--drain")
    assert drained.returncode == 0, drained.stderr
    job = json.loads(queuectl("show", "w1").stdout)
    assert job["state"] == "completed"
    assert "\nfrom the wheel\n" in queuectl("logs", "w1").stdout

    # The dashboard's files ship in the wheel: the installed `serve` serves them.
    log = tmp_path / "serve.err"
    with log.open("w") as err:
        server = subprocess.Popen(
            [bin_dir / "queuectl", "serve", "--port", "0"], env=env, cwd=tmp_path, stderr=err
        )
    try:
        found = wait_for(
            lambda: re.search(r"listening on (http://\S+)", log.read_text()), what="serve"
        )
        for path, needle in [
            ("", b"/static/app.js"),
            ("static/app.js", b"textContent"),
            ("static/app.css", b"--accent"),
            ("metrics", b'queuectl_jobs{queue="default",state="completed"} 1.0'),
        ]:
            with urllib.request.urlopen(found.group(1) + path, timeout=30) as response:  # noqa: S310
                assert needle in response.read(), path
    finally:
        server.terminate()
        server.wait(timeout=30)
