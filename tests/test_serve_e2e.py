"""`queuectl serve` as a user runs it: a real server on a free port, real HTTP requests,
a real SQLite file (the pages' SQL runs on both stores in test_metrics.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import QUEUECTL
from .serving import TOKEN, XSS, XSS_ID, XSS_LABEL, env_for, fill, request, serving

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("serve")]  # one server per run

BEARER = {"Authorization": f"Bearer {TOKEN}"}
ANY_HOST = "0.0.0.0"  # noqa: S104 (refused, never bound)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "home"
    fill(path)
    return path


@pytest.fixture(scope="module")
def url(home: Path) -> Iterator[str]:
    with serving(home, "--allow-actions") as found:
        yield found


def test_every_endpoint_answers_json_or_metrics(url: str) -> None:
    assert request(url + "healthz") == (200, {"ok": True, "status": "OK"})
    status, text = request(url + "metrics")
    assert status == 200
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"queuectl_jobs", "queuectl_job_runs", "queuectl_job_run_duration_seconds"} <= names
    status, body = request(url + "api/status")
    assert status == 200 and body["counts"]["dead"] == 1 and body["actions"] is True
    assert body["queues"]["default"]["completed"] == 1
    status, body = request(url + "api/jobs?state=dead")
    assert [job["id"] for job in body["jobs"]] == [XSS_ID] and body["next"] is None
    assert body["jobs"][0]["labels"] == {"tag": XSS_LABEL}
    status, body = request(url + f"api/jobs/{XSS_ID}/log")
    assert status == 200 and XSS in body["text"] and body["origin"] == "file"
    page = request(url + "api/jobs?limit=2")[1]
    rest = request(url + f"api/jobs?limit=2&cursor={page['next']}")[1]
    # one batch, one instant: newest first means by id, descending
    assert [j["id"] for j in page["jobs"] + rest["jobs"]] == [XSS_ID, "later-job", "done-job"]
    assert request(url + "api/dlq")[1]["jobs"][0]["id"] == XSS_ID
    schedules = request(url + "api/schedules")[1]["schedules"]
    assert schedules[0]["id"] == "nightly" and len(schedules[0]["next_slots"]) == 5
    assert request(url + "api/workers") == (200, {"workers": []})
    status, html = request(url)
    assert status == 200 and "/static/app.js" in html


@pytest.mark.parametrize(
    ("path", "method", "status", "category"),
    [
        ("api/jobs/no-such-job", "GET", 404, "not_found"),
        ("api/jobs/no-such-job/retry", "POST", 404, "not_found"),
        ("api/jobs/done-job/cancel", "POST", 409, "conflict"),
        ("api/jobs/done-job/retry", "POST", 409, "conflict"),
        ("api/schedules/no-such/pause", "POST", 404, "not_found"),
        ("api/jobs?state=bogus", "GET", 400, "usage"),
        ("api/jobs?cursor=bogus", "GET", 400, "usage"),
        ("api/jobs?limit=0", "GET", 400, "usage"),
        ("api/nothing-here", "GET", 404, "not_found"),
    ],
)
def test_errors_are_json_with_the_status_of_their_kind(
    url: str, path: str, method: str, status: int, category: str
) -> None:
    got, body = request(url + path, method=method, headers=BEARER)
    assert (got, body["error"]["status"], body["error"]["category"]) == (status, status, category)
    if path.startswith("api/jobs/no-such-job"):
        assert body["error"]["job_id"] == "no-such-job"
    if category == "conflict":
        assert body["error"]["state"] == "completed"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),  # no token
        ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
        ({"X-Queuectl-Token": TOKEN[:-1]}, 401),
        ({"Cookie": f"token={TOKEN}"}, 401),  # never from a cookie
        ({**BEARER, "Origin": "http://evil.example"}, 403),  # another origin
        ({**BEARER, "Host": "evil.example"}, 403),  # a rebound DNS name
    ],
)
def test_no_state_change_without_the_token_from_this_origin(
    url: str, headers: dict[str, str], status: int
) -> None:
    got, body = request(url + f"api/jobs/{XSS_ID}/retry", method="POST", headers=headers)
    assert got == status, body
    assert request(url + f"api/jobs/{XSS_ID}")[1]["state"] == "dead"  # nothing changed


def test_a_read_only_server_refuses_actions_even_with_the_token(home: Path) -> None:
    with serving(home) as read_only:
        got, body = request(read_only + f"api/jobs/{XSS_ID}/retry", method="POST", headers=BEARER)
        assert got == 403 and "--allow-actions" in body["error"]["message"]
        assert request(read_only + "api/status")[1]["actions"] is False


def test_actions_change_the_state(url: str) -> None:
    got, body = request(url + "api/jobs/later-job/cancel", method="POST", headers=BEARER)
    assert (got, body["state"]) == (200, "canceled")
    got, body = request(url + "api/schedules/nightly/pause", method="POST", headers=BEARER)
    assert (got, body["suspended"]) == (200, True)
    got, body = request(url + "api/schedules/nightly/trigger", method="POST", headers=BEARER)
    assert got == 200 and body["job"].startswith("nightly@")


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (["--host", ANY_HOST], {}, 2, f"Error: --host {ANY_HOST} is not a loopback address"),
        (["--allow-actions"], {}, 2, "Error: --allow-actions needs a token"),
        ([], {"QUEUECTL_SERVE_TOKEN": "short"}, 2, "Error: QUEUECTL_SERVE_TOKEN has 5 characters"),
    ],
)
def test_serve_refuses_to_start_unsafely(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    result = subprocess.run(
        [QUEUECTL, "serve", "--port", "0", *args],
        env=env_for(tmp_path / "home", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == code
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_a_port_in_use_is_one_line(home: Path, url: str) -> None:
    port = url.rstrip("/").rsplit(":", 1)[1]
    result = subprocess.run(
        [QUEUECTL, "serve", "--port", port],
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_beyond_loopback_every_read_needs_the_token_too(home: Path) -> None:
    with serving(home, "--host", ANY_HOST) as found:
        url = found.replace(ANY_HOST, "127.0.0.1")
        assert request(url + "api/status")[0] == 401
        assert request(url + "metrics")[0] == 401
        assert request(url + "api/status", headers=BEARER)[0] == 200
        assert request(url + "metrics", headers=BEARER)[0] == 200
        assert request(url + "healthz")[0] == 200  # for load balancers and HEALTHCHECKs
        assert request(url)[0] == 200  # the page, which then asks for the token
