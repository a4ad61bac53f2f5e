"""How the test suite finds PostgreSQL, and how it reports the tests it could not run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import LOCAL_PG_URL

pytestmark = pytest.mark.e2e  # runs pytest itself in subprocesses

TESTS = Path(__file__).parent


def pytest_in_subprocess(*args: str, **env: str) -> str:
    """Run pytest on this suite with only `env` as the suite's own variables; its output."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUEUECTL_", "PYTEST_XDIST", "PYTEST_CURRENT"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=TESTS.parent,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.stdout + result.stderr


def test_a_local_server_is_used_when_no_url_is_set() -> None:
    import psycopg

    try:
        psycopg.connect(LOCAL_PG_URL, connect_timeout=2).close()
    except psycopg.Error:
        pytest.skip(f"no PostgreSQL server answers at {LOCAL_PG_URL}")
    out = pytest_in_subprocess("tests/test_postgres.py::test_the_test_server_is_used_not_skipped")
    assert "1 passed" in out, out


def test_postgres_skips_are_one_line_that_says_how_to_run_them() -> None:
    out = pytest_in_subprocess("tests/test_store.py", QUEUECTL_TEST_DATABASE_URL="")
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, out
    assert skipped[0].startswith("SKIPPED [")
    assert skipped[0].endswith(
        "PostgreSQL tests skipped: QUEUECTL_TEST_DATABASE_URL is empty: "
        "set it to postgresql://... to run them"
    )
