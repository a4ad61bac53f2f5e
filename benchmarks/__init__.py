"""Benchmarks for queuectl: `python -m benchmarks` (or `make bench`).

Each scenario drives the installed `queuectl` command in real subprocesses,
against a fresh temporary QUEUECTL_HOME per run, and compares every
machine-dependent figure with a baseline measured in the same run (a bare
`python -c pass`, or the same work done by a plain Python loop), so numbers
from different machines can be compared through their ratios.

The scenarios live in `benchmarks.scenarios`, the process and timing helpers in
`benchmarks.harness`, the Markdown table and JSON output in `benchmarks.report`.
"""

from __future__ import annotations
