"""A real `queuectl serve` for end-to-end tests: a store filled through the command, the
server on a free port (its URL read from its stderr), stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .conftest import QUEUECTL, wait_for

TOKEN = "test-token-0123456789abcdef"  # noqa: S105 (a test server's token)
XSS = "<script>window.pwned=1</script>"
XSS_ID = "xss-job"
XSS_LABEL = "<b>bold</b>"


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUEUECTL_")}
    return {**env, "QUEUECTL_HOME": str(home), **extra}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [QUEUECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=True
    )


def fill(home: Path) -> None:
    """A dead job whose output, command and label are markup; a completed one; one pending
    till 2100; a schedule. Run by a real worker, so the log is a real file."""
    env = env_for(home)
    specs = [
        {"id": XSS_ID, "command": f"echo '{XSS}'; exit 3", "max_retries": 0,
         "labels": {"tag": XSS_LABEL}},
        {"id": "done-job", "command": "echo done"},
        {"id": "later-job", "command": "true", "run_at": "2100-01-01T00:00:00Z"},
        {"id": "nightly", "command": "true", "schedule": {"every": "1h"}},
    ]  # fmt: skip
    subprocess.run(
        [QUEUECTL, "enqueue", "-"], input=json.dumps(specs), env=env, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    cli(env, "worker", "run", "--drain", "--count", "1", "--poll-interval", "50")


@contextlib.contextmanager
def serving(home: Path, *args: str, token: str | None = TOKEN) -> Iterator[str]:
    """`queuectl serve --port 0 ARGS` on the home's store; yields its URL."""
    env = env_for(home, **({"QUEUECTL_SERVE_TOKEN": token} if token else {}))
    log = home / f"serve-{len(list(home.glob('serve-*')))}.err"
    with log.open("w") as err:
        proc = subprocess.Popen([QUEUECTL, "serve", "--port", "0", *args], env=env, stderr=err)
    try:

        def url() -> str | None:
            found = re.search(r"listening on (http://\S+)", log.read_text())
            if found is None and proc.poll() is not None:
                raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()}")
            return found.group(1) if found else None

        yield wait_for(url, timeout=30, what="queuectl serve to listen")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def request(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, body): JSON decoded, other bodies as text; errors are answers too."""
    req = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    if method == "POST":
        req.data = b""
    try:
        with urllib.request.urlopen(req, timeout=30) as response:  # noqa: S310
            status, body, kind = (
                response.status,
                response.read(),
                response.headers.get_content_type(),
            )
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(), exc.headers.get_content_type()
    return status, json.loads(body) if kind == "application/json" else body.decode()
