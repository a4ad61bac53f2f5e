#!/usr/bin/env bash
# A two-minute tour of queuectl on the embedded SQLite store, in a throwaway home.
# Run it with `make demo` (which installs queuectl into .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."

QUEUECTL_HOME="$(mktemp -d)/queuectl-demo"
export QUEUECTL_HOME
export QUEUECTL_BACKOFF_MAX_MS=1000   # keep the retry waits short for the demo
trap 'queuectl worker stop --timeout 10 >/dev/null 2>&1 || true' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "Enqueue jobs inline: a plain command, a JSON spec, a priority job, one that fails"
show queuectl enqueue "echo 'hello from queuectl'; uname -s"
show queuectl enqueue '{"id": "report", "command": ["python3", "-c", "print(6 * 7)"], "labels": {"team": "data"}}'
show queuectl enqueue "echo 'I jumped the queue'" --id urgent --priority 10
show queuectl enqueue "echo 'trying...'; exit 3" --id flaky --max-retries 2

step "Enqueue a batch from stdin (YAML)"
show queuectl enqueue - <<'YAML'
- id: build-1
  command: echo building; sleep 0.2
- id: build-2
  command: echo building too
  queue: default
YAML

step "Drop a job file into the spool directory (write, then rename into place) and ingest it"
mkdir -p -m 700 "$QUEUECTL_HOME/spool"
printf 'id: from-the-spool\ncommand: echo "I arrived as a file"\n' > "$QUEUECTL_HOME/spool/.drop.tmp"
mv "$QUEUECTL_HOME/spool/.drop.tmp" "$QUEUECTL_HOME/spool/drop.yaml"
show queuectl spool ingest

step "Validate and apply the committed job specs in examples/jobs (GitOps)"
show queuectl validate examples/jobs
show queuectl apply examples/jobs --format table
show queuectl apply examples/jobs --format table   # again: everything is unchanged

step "Status before any worker runs"
show queuectl status --format table

step "Run two workers until every job has reached an end state (retries included)"
show queuectl worker run --count 2 --drain

step "The jobs afterwards: 'flaky' ran 3 times and is now in the dead letter queue"
show queuectl list --format table
show queuectl dlq list --format table

step "Its log: one header line per attempt"
show queuectl logs flaky

step "Retry it from the DLQ (attempts reset to 0, spec kept), and run detached workers"
show queuectl dlq retry flaky
show queuectl worker start --count 1
sleep 1   # demo pacing only
show queuectl status
show queuectl worker stop

step "Done. Everything lived in $QUEUECTL_HOME; nothing is left running."
