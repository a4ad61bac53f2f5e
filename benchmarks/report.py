"""The Markdown table and the JSON file of a benchmark session."""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .harness import median
from .scenarios import Metric, RunResult, Scenario, Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class ScenarioResult:
    scenario: Scenario
    runs: list[RunResult] = field(default_factory=list)
    run_seconds: list[float] = field(default_factory=list)
    load_averages: list[float] = field(default_factory=list)  # 1-minute, before each run
    error: str | None = None
    skipped: str | None = None  # why the scenario does not apply here (no error)

    def values(self, metric: Metric) -> list[float]:
        return [r.metrics[metric.key] for r in self.runs if metric.key in r.metrics]

    def skipped_parts(self) -> dict[str, str]:
        """Metric.group -> why that part did not run (the first run's reason)."""
        parts: dict[str, str] = {}
        for run in self.runs:
            for group, reason in run.skipped.items():
                parts.setdefault(group, reason)
        return parts


def format_value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "n/a"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit in ("jobs/s", "files/s"):
        return f"{value:.0f} {unit}"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "/s":
        return f"{value:.1f} /s"
    if unit in ("jobs", "files"):
        return f"{value:,.0f} {unit}"
    if unit == "MB":
        return f"{value:,.1f} MB"
    return f"{value:g} {unit}"


def _verdict(metric: Metric, med: float) -> str:
    if metric.target_max is None:
        return ""
    if math.isnan(med):
        return "n/a"
    return "ok" if med < metric.target_max else "**MISS**"


def markdown(results: list[ScenarioResult], meta: dict[str, Any]) -> str:
    """One table: a row per figure, median/min/max over the runs, target and verdict."""
    settings = meta["settings"]
    lines = [
        "## queuectl benchmarks",
        "",
        f"{settings['repeat']} run(s) per scenario{' (--quick)' if settings['quick'] else ''}; "
        f"Python {meta['python']}, SQLite {meta['sqlite']}, {meta['platform']}, "
        f"{meta['cpus']} CPU(s), commit {meta['commit']}; load average "
        f"{meta['load_average_start']:.2f} at the start, {meta['load_average_end']:.2f} at the end "
        "(other work on the machine skews every figure, ratios least).",
        "",
        "| scenario | figure | median | min | max | target | verdict |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for res in results:
        if res.error is not None:
            lines.append(f"| {res.scenario.name} | **error**: {res.error} | | | | | |")
            continue
        if res.skipped is not None:
            lines.append(f"| {res.scenario.name} | {res.skipped} | | | | | |")
            continue
        parts = res.skipped_parts()
        for metric in res.scenario.metrics:
            vals = res.values(metric)
            if not vals and metric.group in parts:
                continue  # one row below says why
            med = median(vals)
            low = min(vals) if vals else math.nan
            high = max(vals) if vals else math.nan
            target = ""
            if metric.target_max is not None:
                unit = metric.unit if metric.unit == "x" else f" {metric.unit}"
                target = f"< {metric.target_max:g}{unit}"
            cells = [
                res.scenario.name,
                metric.label,
                format_value(med, metric.unit),
                format_value(low, metric.unit),
                format_value(high, metric.unit),
                target,
                _verdict(metric, med),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for reason in parts.values():
            lines.append(f"| {res.scenario.name} | {reason} | | | | | |")
    lines += [
        "",
        "Each run uses a fresh QUEUECTL_HOME, removed only at the end of the session (deleting "
        "thousands of log files slows creating files for minutes after). Ratios are computed "
        "per run against a baseline "
        "measured in that run: `python -c pass` (interpreter start-up) for command times; for "
        "throughput the same 2,000 `/bin/sh -c true` spawns from N threads of a plain Python "
        "loop, `subprocess.run` without `timeout=` (the floor; until issue 19 it passed "
        "`timeout=`, whose polling wait halved the spawn rate and flattered every ratio), "
        "with `os.posix_spawn` + `waitpid` beside it, each the mean of one run just before "
        "and one just after the work; for idle CPU the CPU time one `python -c pass` costs. "
        "Spool figures poll the SQLite file read-only every 5 ms (no `queuectl` start-up in "
        "the measurement); a latency sample runs from just before the rename into place. "
        "The postgres rows measure SQLite beside PostgreSQL in the same run, each PostgreSQL "
        "run in a database created for it and dropped afterwards. "
        "The peers rows run the throughput work (`sh -c true` jobs, 2 workers) through huey "
        "and task-spooler beside queuectl and the floor, all in the same run. The scale rows "
        "insert their jobs directly (sqlite3; one INSERT ... SELECT on PostgreSQL) into a "
        "store `queuectl status` created, then time `status` (as a process and in-process) "
        "and `claim_next` in-process. "
        "The schedule rows run `worker run --count 2`: a latency sample is a run's started_at "
        "minus the slot its id names (an `every: 1s` schedule; the runs are listed once the "
        "slots have passed, so no `queuectl` process starts meanwhile); idle CPU sums the "
        "supervisor, its workers and their watchdogs (/proc), against the same `worker run` "
        "with no schedule, in the same run; `schedule tick` is timed beside `queuectl status` "
        "on the same store (the start-up), after one UPDATE moved every last tick a day back. "
        "The prune-scale rows (only with --only) insert completed jobs finished 10 days ago "
        "directly, with a small log file each, then run `queuectl prune` under `worker run "
        "--count 2` and a stream of 100 `true` jobs a second enqueued in-process; a pickup is "
        "a stream job's started_at minus its created_at, grouped by when it was enqueued "
        "(before the prune, during back-to-back background passes, during the prune); a "
        "batch's write is `store.delete_jobs` timed in-process. "
        "The enqueue figure is the median of its runs' samples; p99 is nearest-rank. "
        "Child Pythons share a private bytecode cache (PYTHONPYCACHEPREFIX), as an installed "
        "package has compiled bytecode.",
    ]
    return "\n".join(lines)


def git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' (modified)' if dirty else ''}"


def session_meta(settings: Settings, argv: list[str]) -> dict[str, Any]:
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": argv,
        "python": platform.python_version(),
        "executable": sys.executable,
        "sqlite": sqlite3.sqlite_version,
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "commit": git_commit(),
        "load_average_start": os.getloadavg()[0],
        "settings": settings.to_dict(),
    }


def to_json(results: list[ScenarioResult], meta: dict[str, Any]) -> dict[str, Any]:
    scenarios = []
    for res in results:
        metrics = []
        for metric in res.scenario.metrics:
            vals = res.values(metric)
            metrics.append(
                {
                    "key": metric.key,
                    "label": metric.label,
                    "unit": metric.unit,
                    "target_max": metric.target_max,
                    "values": vals,
                    "median": median(vals) if vals else None,
                    "min": min(vals) if vals else None,
                    "max": max(vals) if vals else None,
                }
            )
        scenarios.append(
            {
                "name": res.scenario.name,
                "title": res.scenario.title,
                "error": res.error,
                "skipped": res.skipped,
                "skipped_parts": res.skipped_parts(),
                "metrics": metrics,
                "runs": [
                    {"seconds": secs, "load_average": load, "metrics": run.metrics, "raw": run.raw}
                    for run, secs, load in zip(
                        res.runs, res.run_seconds, res.load_averages, strict=True
                    )
                ],
            }
        )
    return {"meta": meta, "scenarios": scenarios}


def write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _finite(value: Any) -> Any:
    """NaN and infinities become null: the file stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
