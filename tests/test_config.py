"""Config keys: validation, both spellings, overrides, persistence across processes."""

from __future__ import annotations

from typing import Any

import pytest

from queuectl.config import KEYS, Config
from queuectl.errors import ConfigInvalid

from .conftest import Run


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("max_retries", "5", "5"),
        ("max-retries", "0", "0"),
        ("backoff_base", "1.5", "1.5"),
        ("backoff-base", "3", "3"),
        ("backoff_max_ms", "60000", "60000"),
        ("poll_interval_ms", "100", "100"),
        ("job_timeout_ms", "0", "0"),
        ("lease_ms", "5000", "5000"),
    ],
)
def test_set_then_get_in_another_process(run: Run, key: str, value: str, shown: str) -> None:
    result = run("config", "set", key, value)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{key.replace('-', '_')} = {shown}"
    assert run("config", "get", key).stdout == f"{shown}\n"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "max_retries",
            "-1",
            "max_retries: '-1' is not valid: use an integer from 0 to 2147483647",
        ),
        (
            "max_retries",
            "two",
            "max_retries: 'two' is not valid: use an integer from 0 to 2147483647",
        ),
        (
            "backoff_base",
            "1",
            "backoff_base: '1' is not valid: use a number > 1 and <= 100",
        ),
        (
            "backoff_base",
            "nan",
            "backoff_base: 'nan' is not valid: use a number > 1 and <= 100",
        ),
        (
            "lease_ms",
            "10",
            "lease_ms: '10' is not valid: use an integer from 200 to 86400000",
        ),
        (
            "colour",
            "red",
            "unknown config key 'colour': use one of max_retries, backoff_base, "
            "backoff_max_ms, poll_interval_ms, job_timeout_ms, lease_ms, spool_max_bytes, "
            "spool_keep_done_days, spool_settle_ms, log_max_bytes, keep_completed_days, "
            "keep_canceled_days, keep_dead_days",
        ),
        (
            "log_max_bytes",
            "100",
            "log_max_bytes: '100' is not valid: use 0 (no cap) or a size from 4096 to 1TiB, "
            "in bytes or with KiB, MiB, GiB",
        ),
    ],
)
def test_bad_key_or_value_exits_2_and_writes_nothing(
    run: Run, run_json: Any, key: str, value: str, message: str
) -> None:
    result = run("config", "set", key, value)
    assert (result.returncode, result.stderr.strip()) == (2, f"Error: {message}")
    assert run_json("config", "list") == {name: k.default for name, k in KEYS.items()}


def test_get_unknown_key_exits_2(run: Run) -> None:
    result = run("config", "get", "nope")
    assert result.returncode == 2
    assert result.stderr.startswith("Error: unknown config key 'nope': use one of max_retries")


def test_environment_overrides_for_one_process(run: Run) -> None:
    run("config", "set", "max_retries", "2")
    assert run("config", "get", "max_retries", env={"QUEUECTL_MAX_RETRIES": "9"}).stdout == "9\n"
    assert run("config", "get", "max_retries").stdout == "2\n"
    bad = run("config", "get", "max_retries", env={"QUEUECTL_MAX_RETRIES": "x"})
    assert (bad.returncode, bad.stderr.strip()) == (
        2,
        "Error: QUEUECTL_MAX_RETRIES: 'x' is not valid for max_retries: use an integer from 0 "
        "to 2147483647",
    )


def test_config_change_after_enqueue_keeps_the_jobs_max_retries(run: Run, run_json: Any) -> None:
    run("config", "set", "max-retries", "1")
    first = run("enqueue", "true").stdout.strip()
    run("config", "set", "max-retries", "7")
    second = run("enqueue", "true").stdout.strip()
    assert run_json("show", first)["max_retries"] == 1
    assert run_json("show", second)["max_retries"] == 7


def test_list_shows_effective_values(run: Run, run_json: Any) -> None:
    listed = run_json("config", "list", env={"QUEUECTL_LEASE_MS": "1000"})
    assert listed["lease_ms"] == 1000
    assert listed["max_retries"] == 3
    table = run("config", "list", "--format", "table").stdout
    assert "backoff_max_ms" in table and "3600000" in table


def test_resolve_rejects_a_bad_stored_value_by_name() -> None:
    with pytest.raises(ConfigInvalid, match="max_retries"):
        Config.resolve({"max_retries": "-3"}, environ={})


def test_set_unknown_key_suggests_the_close_one(run: Run) -> None:
    result = run("config", "set", "max_retry", "5")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "Error: unknown config key 'max_retry': did you mean 'max_retries'? (keys: max_retries, "
    )


def test_config_list_shows_numbers_as_they_were_set(run: Run) -> None:
    assert run("config", "set", "backoff_base", "2").returncode == 0
    assert '"backoff_base": 2,' in run("config", "list").stdout


def test_unknown_queuectl_variables_warn_once_with_a_did_you_mean(run: Run) -> None:
    env = {
        "QUEUECTL_MAX_RETRYS": "9",
        "QUEUECTL_COLOUR": "1",
        "QUEUECTL_TEST_ANYTHING": "1",  # the test suite's own
        "QUEUECTL_REQUIRE_POSTGRES": "0",
        "QUEUECTL_JOB_ID": "a-job-that-runs-queuectl",
    }
    result = run("config", "get", "max_retries", env=env)
    assert (result.returncode, result.stdout) == (0, "3\n")
    assert result.stderr.splitlines() == [
        "warning: QUEUECTL_COLOUR is not a queuectl variable and is ignored: config keys are "
        "read as QUEUECTL_<KEY> (see `queuectl config list`)",
        "warning: QUEUECTL_MAX_RETRYS is not a queuectl variable and is ignored: "
        "did you mean QUEUECTL_MAX_RETRIES?",
    ]
    # once per command: a supervisor's workers do not repeat it
    drained = run("worker", "run", "--drain", "--count", "2", env={"QUEUECTL_MAX_RETRYS": "9"})
    assert drained.returncode == 0
    assert drained.stderr.count("QUEUECTL_MAX_RETRYS") == 1


def test_every_queuectl_variable_the_project_reads_is_known() -> None:
    import re
    from pathlib import Path

    from queuectl.config import unknown_env_warnings

    root = Path(__file__).parent.parent
    files = [
        *(p for p in (root / "queuectl").rglob("*.py") if p.name != "config.py"),
        *(root / "contrib").rglob("*"),
        *(root / ".ci").rglob("*"),
        root / "Dockerfile",
        root / "compose.yaml",
        root / "Makefile",
        root / "tests" / "conftest.py",
    ]
    names = {
        name
        for path in files
        if path.is_file()
        for name in re.findall(r"\bQUEUECTL_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    assert "QUEUECTL_WORKER_ARGS" in names  # the scan found the deployment files' names
    assert unknown_env_warnings(dict.fromkeys(names, "1")) == []
