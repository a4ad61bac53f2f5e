#!/usr/bin/env bash
# A short tour of queuectl on the embedded SQLite store, in a throwaway home.
# Run it with `make demo` (which installs queuectl into .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."

demo_dir="$(mktemp -d)"
export QUEUECTL_HOME="$demo_dir/queuectl-demo"
export QUEUECTL_BACKOFF_BASE=1.5   # retry waits of 1.5 s, then 2.25 s (base ** attempts)
trap 'queuectl worker stop --timeout 10 >/dev/null 2>&1 || true; rm -rf "$demo_dir"' EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Print a command exactly as you would type it, then run it.
show() { printf '$ %s\n' "$1"; eval "$1"; }

step "Enqueue jobs inline: a plain command, a JSON spec, a priority job, one that fails"
show 'queuectl enqueue "echo hello from queuectl; uname -s"'
show "queuectl enqueue '{\"id\": \"report\", \"command\": [\"python3\", \"-c\", \"print(6 * 7)\"], \"labels\": {\"team\": \"data\"}}'"
show 'queuectl enqueue "echo I jumped the queue" --id urgent --priority 10'
show 'queuectl enqueue "echo trying...; exit 3" --id flaky --max-retries 2'

step "Enqueue a batch from stdin (YAML)"
show 'printf "%s\n" "- {id: build-1, command: echo building}" "- {id: build-2, command: echo building too}" | queuectl enqueue -'

step "Drop a job file into the spool directory (write, then rename into place) and ingest it"
show 'mkdir -p -m 700 "$QUEUECTL_HOME/spool"'
show 'echo "{id: from-the-spool, command: echo I arrived as a file}" > "$QUEUECTL_HOME/spool/.drop.tmp"'
show 'mv "$QUEUECTL_HOME/spool/.drop.tmp" "$QUEUECTL_HOME/spool/drop.yaml"'
show 'queuectl spool ingest'

step "Validate and apply the committed job specs in examples/jobs (GitOps)"
show 'queuectl validate examples/jobs'
show 'queuectl apply examples/jobs --format table'
show 'queuectl apply examples/jobs --format table   # again: everything is unchanged'

step "Status before any worker runs"
show 'queuectl status --format table'

step "Run two workers until every due job has reached an end state (retries included)"
show 'queuectl worker run --count 2 --drain'

step "The jobs afterwards: 'flaky' ran 3 times and is now in the dead letter queue"
show 'queuectl list --format table'
show 'queuectl dlq list --format table'

step "Its log: one header line per attempt, the retries 1.5 s and 2.25 s apart (backoff)"
show 'queuectl logs flaky'

step "The pipeline in examples/jobs/pipeline.yaml: each step waited for the one it needs"
show 'queuectl list --label pipeline=etl-example --format table'
show 'queuectl logs etl-load'

step "A job held back by a need: 'queuectl why' names every gate"
show 'queuectl enqueue "echo first" --id first --delay 1m'
show "queuectl enqueue '{\"id\": \"second\", \"command\": \"echo second\", \"needs\": [\"first\"]}'"
show 'queuectl why second'
show 'queuectl cancel first   # second can never run now: it is canceled too'
show 'queuectl list --state canceled --format table'

step "A schedule: one run every 2 s, created by the scheduler inside every worker (not in drains)"
show 'printf "%s\n" "id: heartbeat" "command: date -u +%T" "schedule: {every: 2s}" | queuectl enqueue -'
show 'queuectl worker start --count 1'
echo "(waiting for two runs of heartbeat to complete)"
deadline=$((SECONDS + 30))
until [ "$(queuectl list --schedule heartbeat --state completed --format table | grep -c '^heartbeat@')" -ge 2 ]; do
  if [ "$SECONDS" -ge "$deadline" ]; then echo "heartbeat did not complete two runs in 30 s" >&2; exit 1; fi
  sleep 0.2
done
show 'queuectl schedule list --format table'
show 'queuectl list --schedule heartbeat --format table   # its runs: <schedule id>@<slot in UTC>'
show 'queuectl schedule show heartbeat'
show 'queuectl schedule pause heartbeat'
show 'queuectl worker stop'

step "Retry it from the DLQ (attempts reset to 0, spec kept) with a detached worker"
show 'queuectl dlq retry flaky'
show 'queuectl worker start --count 1'
show 'queuectl status'
show 'queuectl worker stop'

step "Done"
echo "'flaky' fails on purpose: it was retrying again when the demo stopped its worker."
echo "Jobs scheduled for later (examples/jobs) wait for their run_at."
echo "'heartbeat' is paused; 'hourly-report' (examples/jobs) runs hourly, 08:00 to 18:00 Berlin time, while a worker runs."
echo "Everything lived in a throwaway QUEUECTL_HOME, now deleted; nothing is left running."
