"""`python -m benchmarks [--quick] [--repeat N] [--only NAME]...`: run, print, save.

Progress goes to stderr, the Markdown table to stdout, the raw runs to
benchmarks/results/latest.json. Exit 1 when a scenario could not run (one that does not
apply here, such as postgres without a server, is a "skipped" row, not a failure); a missed
target is reported in the table, not in the exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from .harness import (
    BASELINE_CMD,
    BenchError,
    BenchSkipped,
    bench_env,
    bytecode_cache,
    deferred_removal,
    fresh_home,
    keep_homes_in,
    queuectl,
    require_queuectl,
    run,
)
from .report import RESULTS_DIR, ScenarioResult, markdown, session_meta, to_json, write_json
from .scenarios import SCENARIO_NAMES, SCENARIOS, Scenario, Settings


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark the installed queuectl against baselines measured in the same run.",
        epilog=f"Scenarios: {', '.join(SCENARIO_NAMES)} (only with --only: "
        f"{', '.join(s.name for s in SCENARIOS if not s.default)}). "
        f"Raw runs: {RESULTS_DIR / 'latest.json'}",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help="Runs per scenario, each in a fresh QUEUECTL_HOME (default 3; 1 with --quick).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="One run, fewer samples, a 5 s idle window, 1,000 jobs on PostgreSQL: about a "
        "minute and a half, for a smoke check.",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        default=[],
        help="Run only this scenario (repeatable, or comma-separated).",
    )
    parser.add_argument(
        "--keep-homes",
        type=Path,
        metavar="DIR",
        help="Make every QUEUECTL_HOME under DIR and remove none. For sessions run back to "
        "back (before/after): removing a session's homes slows creating files for minutes, "
        "which the next session would pay for. Remove DIR after the last session.",
    )
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    only = [name.strip() for value in args.only for name in value.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SCENARIO_NAMES))
    if unknown:
        parser.error(
            f"unknown scenario {', '.join(unknown)}: choose from {', '.join(SCENARIO_NAMES)}"
        )
    args.only = only
    return args


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warm_up() -> None:
    """Fill the session's bytecode cache: no scenario pays for compiling."""
    with fresh_home() as home:
        env = bench_env(home)
        run(BASELINE_CMD, env=env)
        run(queuectl("status"), env=env)
        run([sys.executable, "-m", "queuectl", "--version"], env=env)


def run_scenario(scenario: Scenario, settings: Settings) -> ScenarioResult:
    """Run one scenario `settings.repeat` times; stop at its first failure."""
    result = ScenarioResult(scenario)
    for number in range(1, settings.repeat + 1):
        load = os.getloadavg()[0]
        started = time.perf_counter()
        try:
            outcome = scenario.run(settings)
        except BenchSkipped as exc:
            result.skipped = str(exc)
            progress(f"{scenario.name}: {exc}")
            break
        except BenchError as exc:
            result.error = str(exc)
        except Exception as exc:  # a bug of ours: say where, keep the other scenarios
            result.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        if result.error is not None:
            progress(f"{scenario.name} run {number}/{settings.repeat}: FAILED: {result.error}")
            break
        took = time.perf_counter() - started
        result.runs.append(outcome)
        result.run_seconds.append(took)
        result.load_averages.append(load)
        progress(
            f"{scenario.name} run {number}/{settings.repeat}: {took:.1f} s "
            f"(load average before: {load:.2f})"
        )
    return result


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops the processes it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    settings = Settings(quick=args.quick, repeat=repeat)
    if args.keep_homes is not None:
        keep_homes_in(args.keep_homes.absolute())
    try:
        require_queuectl()
    except BenchError as exc:
        progress(f"error: {exc}")
        return 1
    selected = [s for s in SCENARIOS if s.name in args.only or (not args.only and s.default)]
    meta = session_meta(settings, argv)
    results: list[ScenarioResult] = []
    session = time.perf_counter()
    try:
        # Every home stays until the last scenario ends: see deferred_removal().
        with bytecode_cache(), deferred_removal():
            warm_up()
            for scenario in selected:
                results.append(run_scenario(scenario, settings))
    except BenchError as exc:
        progress(f"error: queuectl does not run: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted: every process started was stopped; no results written")
        return 130
    meta["load_average_end"] = os.getloadavg()[0]
    meta["seconds"] = round(time.perf_counter() - session, 1)
    write_json(to_json(results, meta), RESULTS_DIR / "latest.json")
    print(markdown(results, meta))
    progress(f"\n{meta['seconds']:.0f} s in all; raw runs in {RESULTS_DIR / 'latest.json'}")
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
