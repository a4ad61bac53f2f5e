"""`python -m benchmarks.serve_scale [--jobs N] [--db URL] [--repeat R]`: how fast `queuectl
serve` answers with a big store (SPEC 15: every page and API call under 200 ms with
1,000,000 jobs).

Fills a store (a fresh SQLite file, or the PostgreSQL database --db names, which must be
empty and is left filled) with N jobs in one bulk INSERT through the store's own
connection: 95% completed over the last days, 3% pending, 1% dead, 1% canceled, on
three queues, a seventh labelled; and an hour of attempt counters. Then starts
`queuectl serve` on it and times every page and API call R times, printing the median
and the slowest per endpoint, in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from queuectl.models import to_ms, utcnow
from queuectl.store import open_store

TARGET_MS = 200
SPACING_MS = 500  # between two jobs' creation: 1,000,000 jobs span about six days

SQLITE_FILL = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :count - 1),
     j AS (SELECT i, :now - (:count - i) * :spacing AS t,
                  CASE WHEN i % 100 < 95 THEN 'completed' WHEN i % 100 < 98 THEN 'pending'
                       WHEN i % 100 = 98 THEN 'dead' ELSE 'canceled' END AS state
             FROM n)
INSERT INTO jobs (id, command, max_retries, cwd, queue, labels, state, attempts, created_at,
                  updated_at, available_at, started_at, finished_at, exit_code, last_error,
                  spec_hash, output_tail)
SELECT printf('bench-%08d', i), '"echo bench"', 3, '/tmp',
       CASE i % 10 WHEN 0 THEN 'mail' WHEN 1 THEN 'reports' ELSE 'default' END,
       CASE WHEN i % 7 = 0 THEN '{"team": "a"}' ELSE '{}' END, state,
       CASE state WHEN 'dead' THEN 4 ELSE 0 END, t, t + 900, t,
       CASE WHEN state IN ('completed', 'dead') THEN t + 100 END,
       CASE WHEN state IN ('completed', 'dead', 'canceled') THEN t + 900 END,
       CASE state WHEN 'completed' THEN 0 WHEN 'dead' THEN 1 END,
       CASE state WHEN 'dead' THEN 'exit code 1' END, 'bench', 'bench output'
  FROM j WHERE true
"""
POSTGRES_FILL = """
WITH j AS (SELECT i, to_timestamp((%(now)s - (%(count)s - i) * %(spacing)s) / 1000.0) AS t,
                  CASE WHEN i %% 100 < 95 THEN 'completed' WHEN i %% 100 < 98 THEN 'pending'
                       WHEN i %% 100 = 98 THEN 'dead' ELSE 'canceled' END AS state
             FROM generate_series(0, %(count)s - 1) AS i)
INSERT INTO jobs (id, command, max_retries, cwd, queue, labels, state, attempts, created_at,
                  updated_at, available_at, started_at, finished_at, exit_code, last_error,
                  spec_hash, output_tail)
SELECT 'bench-' || lpad(i::text, 8, '0'), '"echo bench"', 3, '/tmp',
       CASE i %% 10 WHEN 0 THEN 'mail' WHEN 1 THEN 'reports' ELSE 'default' END,
       CASE WHEN i %% 7 = 0 THEN '{"team": "a"}'::jsonb ELSE '{}'::jsonb END, state,
       CASE state WHEN 'dead' THEN 4 ELSE 0 END, t, t + interval '900 ms', t,
       CASE WHEN state IN ('completed', 'dead') THEN t + interval '100 ms' END,
       CASE WHEN state IN ('completed', 'dead', 'canceled') THEN t + interval '900 ms' END,
       CASE state WHEN 'completed' THEN 0 WHEN 'dead' THEN 1 END,
       CASE state WHEN 'dead' THEN 'exit code 1' END, 'bench', 'bench output'
  FROM j
"""
# An hour of attempt counters, as the finish trigger would have left them.
SQLITE_RUNS = """
WITH RECURSIVE m(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM m WHERE k < 59)
INSERT INTO run_stats (minute, queue, outcome, le_ms, n, sum_ms)
SELECT (:now / 60000 - k) * 60000, q.name, o.name, 100, 40 + k % 7, 2000
  FROM m, (SELECT 'default' AS name UNION ALL SELECT 'mail') AS q,
       (SELECT 'completed' AS name UNION ALL SELECT 'dead') AS o WHERE true
"""
POSTGRES_RUNS = """
INSERT INTO run_stats (minute, queue, outcome, le_ms, n, sum_ms)
SELECT date_trunc('minute', now()) - k * interval '1 minute', q, o, 100, 40 + k % 7, 2000
  FROM generate_series(0, 59) AS k, unnest(ARRAY['default', 'mail']) AS q,
       unnest(ARRAY['completed', 'dead']) AS o
"""


def fill(url: str, count: int) -> None:
    store = open_store(url)
    conn: Any = store.d.conn  # type: ignore[attr-defined]
    params = {"count": count, "now": to_ms(utcnow()), "spacing": SPACING_MS}
    if url.startswith("sqlite"):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(SQLITE_FILL, params)
        conn.execute(SQLITE_RUNS, params)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    else:
        with conn.transaction():
            conn.execute(POSTGRES_FILL, params)
            conn.execute(POSTGRES_RUNS)
            conn.execute("SELECT queuectl_fold_job_counts()")
        conn.execute("ANALYZE")
    store.close()


def get(url: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (our server)
        body = response.read()
    return (time.perf_counter() - start) * 1000, body


def endpoints(base: str, count: int) -> list[str]:
    """Every page the dashboard reads and every API call, deep pages included."""
    middle = f"bench-{count // 2 - count // 2 % 100:08d}"  # a completed job
    job = json.loads(get(f"{base}api/jobs/{middle}")[1])
    finished = job["finished_at"]
    created = job["created_at"]

    def cursor(instant: str) -> str:
        from datetime import datetime

        moment = datetime.fromisoformat(instant.replace("Z", "+00:00"))
        return f"{int(moment.timestamp() * 1000) * 1000}:{middle}"

    return [
        "",
        "static/app.js",
        "healthz",
        "metrics",
        "api/status",
        "api/throughput",
        "api/jobs",
        f"api/jobs?cursor={cursor(created)}",
        "api/jobs?state=completed",
        f"api/jobs?state=completed&cursor={cursor(finished)}",
        "api/jobs?state=pending",
        "api/jobs?state=dead",
        "api/jobs?state=canceled",
        "api/jobs?queue=mail",
        "api/jobs?state=completed&queue=reports",
        "api/jobs?label=team=a",
        "api/dlq",
        f"api/jobs/{middle}",
        f"api/jobs/{middle}/log",
        "api/schedules",
        "api/workers",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--db", help="an empty PostgreSQL database (default: a new SQLite file)")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="queuectl-serve-scale-"))
    url = args.db or f"sqlite:///{home / 'queue.db'}"
    start = time.perf_counter()
    fill(url, args.jobs)
    print(f"filled {args.jobs:,} jobs in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    env_home = {"QUEUECTL_HOME": str(home)}
    log = home / "serve.err"
    with log.open("w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "queuectl", "--db", url, "serve", "--port", "0"],
            stderr=err,
            env={**__import__("os").environ, **env_home},
        )
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"listening on (http://\S+)", log.read_text())):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start: {log.read_text()}")
            time.sleep(0.05)
        base = found.group(1)
        rows = []
        for path in endpoints(base, args.jobs):
            get(base + path)  # warm: the first read of a page loads it from disk
            times = [get(base + path)[0] for _ in range(args.repeat)]
            rows.append((path, statistics.median(times), max(times)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"| endpoint ({args.jobs:,} jobs, {url.split(':')[0]}) | median ms | max ms |")
    print("|---|---:|---:|")
    for path, median, slowest in rows:
        flag = "" if slowest < TARGET_MS else " (over target)"
        print(f"| /{path} | {median:.1f} | {slowest:.1f}{flag} |")
    return 0 if all(slowest < TARGET_MS for _, _, slowest in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
