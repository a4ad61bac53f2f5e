"""The `queuectl` command: parse arguments, call the library, print, map errors.

No SQL and no queue rules live here. Every error reaches the user as one
`Error: ...` line on stderr: exit 1 when the operation failed, 2 for bad usage.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, TypeVar

import click

from . import __version__
from . import config as config_mod
from .core import DrainCounts, Queue
from .errors import Problem, QueuectlError, SpecInvalid, UsageProblem, first_few
from .models import Job, JobState, Schedule, ScheduleSpec, format_duration
from .paths import default_db_url
from .store import open_store

F = TypeVar("F", bound=Callable[..., Any])
if TYPE_CHECKING:
    _ParamType = click.ParamType[Any, Any]
else:
    _ParamType = click.ParamType
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
INT32 = 2**31


class UsageFailure(click.ClickException):
    """A bad value caught by our own checks: one line, exit code 2."""

    exit_code = 2


class QueuectlGroup(click.Group):
    """Maps library errors to one stderr line and the exit codes of the spec."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageProblem as exc:
            raise UsageFailure(str(exc)) from exc
        except QueuectlError as exc:
            raise click.ClickException(str(exc)) from exc
        except BrokenPipeError:
            # `queuectl list | head`: the reader of the output left, nothing is wrong. Caught
            # here, before click's own handling of EPIPE exits 1: a script under `set -o
            # pipefail` would take `enqueue - | head -1` for a failure and enqueue again.
            if not _output_reader_left():
                raise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `queuectl`: just the help
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            sys.exit(0)
        except click.UsageError as exc:  # click's own: keep it to one line, with a pointer
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"Error: {exc.format_message()}{where}", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except OSError as exc:  # a full disk, a removed directory: one line, not a traceback
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            click.echo(f"Error: {os_error_line(exc)}", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


def _output_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout, or not one that polls
        return False


def main() -> NoReturn:
    """The `queuectl` command: run it, then leave without tearing the interpreter down.

    Freeing every module and object at exit costs a `queuectl` process 20-30 ms, more
    than many commands take, and buys nothing: the store was closed with the command's
    context, and the output is flushed here. With another thread still running (none
    should be), the exit is the ordinary one, which waits for it.
    """
    try:
        cli(prog_name="queuectl")
        code: str | int | None = 0
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code
    if not isinstance(code, int) or threading.active_count() > 1:
        sys.exit(code)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the descriptor was closed when we started
                stream.flush()
    except BrokenPipeError:
        pass  # the reader left before the last lines: nothing is wrong (see QueuectlGroup)
    except OSError:
        sys.exit(code)  # Python reports what could not be written, as it would have
    os._exit(code)


def os_error_line(exc: OSError) -> str:
    """An unexpected OSError in words: the operation (where it was raised), the file, the
    errno; writing the output is named as such."""
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    what = f"{exc.strerror or exc} ({code})"
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}queuectl{os.sep}" in f.filename]
    if exc.filename is None and frames and frames[-1].name in ("echo", "write", "flush"):
        return f"cannot write the output: {what}"
    where = f" in {Path(ours[-1].filename).stem}.{ours[-1].name}" if ours else ""
    target = f" on {os.fsdecode(exc.filename)!r}" if exc.filename is not None else ""
    return f"{what}{target}{where}: check that path and its permissions, or report it as a bug"


class App:
    """What commands share: the database URL and a queue opened on first use."""

    def __init__(self, db: str | None) -> None:
        self.db = db
        self._queue: Queue | None = None

    @property
    def url(self) -> str:
        return self.db or default_db_url()

    def queue(self, *, durable: bool = True) -> Queue:
        if self._queue is None:
            self._queue = Queue(open_store(self.url, durable=durable))
        return self._queue

    def close(self) -> None:
        if self._queue is not None:
            self._queue.store.close()
            self._queue = None


pass_app = click.make_pass_decorator(App)


# -- parameter types and shared options ------------------------------------------------


class Text(_ParamType):
    """A name typed on the command line (a job id, a queue): it must be text. Bytes that are
    not UTF-8 reach Python as lone surrogates, which no store can hold or look up."""

    name = "TEXT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value)
        if not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text):
            shown = os.fsencode(text).decode("utf-8", "backslashreplace")  # the bytes as typed
            self.fail(f"'{shown}' is not valid UTF-8 text", param, ctx)
        return text


TEXT = Text()


class KeyValue(_ParamType):
    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        key, sep, val = str(value).partition("=")
        if not sep or not key:
            self.fail(f"{value!r} is not KEY=VALUE", param, ctx)
        return key, val


class Duration(_ParamType):
    """30s, 5m, 1m30s, 1h30m, 1d, 250ms, or plain seconds; converted to milliseconds."""

    name = "DURATION"
    MAX_MS = 3650 * 86_400_000
    UNITS: ClassVar[dict[str, int]] = {
        "ms": 1,
        "s": 1000,
        "m": 60_000,
        "h": 3_600_000,
        "d": 86_400_000,
    }
    PART = r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value)
        if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", text):  # plain seconds
            ms = int(float(text) * 1000)
        elif re.fullmatch(rf"\s*(?:{self.PART}\s*)+", text):  # compound: 1h30m, 1m30s
            parts = re.findall(self.PART, text)
            ms = int(sum(float(n) * self.UNITS[unit] for n, unit in parts))
        else:
            self.fail(
                f"{value!r} is not a duration: use e.g. 30s, 5m, 1m30s, 2h, 1d or 250ms",
                param,
                ctx,
            )
        if ms > self.MAX_MS:
            hint = ": use --run-at for a far date" if param and param.name == "delay" else ""
            self.fail(f"{value!r} is more than 3650 days{hint}", param, ctx)
        return ms


class DateTime(_ParamType):
    name = "RFC3339"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from . import spec

        problem = spec.rfc3339_problem(str(value))
        if problem is not None:
            self.fail(f"{value!r} {problem}", param, ctx)
        return str(value)


def limit_option(func: F) -> F:
    func = click.option(
        "--newest", is_flag=True, help="Newest first (with --limit: the newest N jobs)."
    )(func)
    return click.option(
        "--limit",
        type=click.IntRange(1, INT32 - 1),  # a bound the stores' integers can hold
        default=1000,
        show_default=True,
        help="At most N jobs; a line on stderr says when more matched.",
    )(func)


def emit_page(jobs: Sequence[Job], more: bool, fmt: str, *, newest: bool) -> None:
    emit_jobs(jobs, fmt)
    if more:
        which = "newest" if newest else "oldest"
        other = "--newest" if not newest else "no --newest"
        click.echo(
            f"showing the {which} {len(jobs)} job(s); more match: raise --limit, narrow with "
            f"--state/--queue/--label, or use {other}",
            err=True,
        )


def format_option(func: F, *, default: str = "json") -> F:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["json", "table"]),
        default=default,
        show_default=True,
        help="json for programs, table for people.",
    )(func)


def table_first_option(func: F) -> F:
    """--format for commands people read first (`why`): table (lines) unless asked."""
    return format_option(func, default="table")


def emit(data: Any, fmt: str, columns: Sequence[str] = (), *, cut: bool = True) -> None:
    """Print data as JSON, or as an aligned table of `columns` (list of dicts) / key-value rows.

    With cut, long cells (commands, errors) are shortened to keep rows on one line."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rows = data if isinstance(data, list) else [{"key": k, "value": v} for k, v in data.items()]
    columns = columns or ["key", "value"]
    table = [[_cell(row.get(c), 60 if cut else None) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _cell(value: Any, width: int | None) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


JOB_COLUMNS = (
    "id",
    "state",
    "priority",
    "queue",
    "attempts",
    "available_at",
    "command",
    "last_error",
)


def emit_jobs(jobs: Sequence[Job], fmt: str) -> None:
    emit([job.to_dict() for job in jobs], fmt, JOB_COLUMNS)


# -- the group -----------------------------------------------------------------------------


@click.group(cls=QueuectlGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--db",
    envvar="QUEUECTL_DATABASE_URL",
    metavar="URL",
    help="Store URL: sqlite:///rel.db, sqlite:////abs.db or postgresql://... "
    "[default: $QUEUECTL_HOME/queue.db; env: QUEUECTL_DATABASE_URL]",
)
@click.version_option(__version__, "--version", prog_name="queuectl")
@click.pass_context
def cli(ctx: click.Context, db: str | None) -> None:
    """queuectl: run shell commands as background jobs, with retries and a dead letter queue.

    \b
    Example:
        queuectl enqueue "echo hello"
        queuectl worker run --drain
        queuectl status --format table
    """
    if "QUEUECTL_SUPERVISOR_PID" not in os.environ:  # else the supervisor has warned already
        for line in config_mod.unknown_env_warnings(os.environ):
            click.echo(line, err=True)
    app = App(db)
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command(name="enqueue")
@click.argument("job_spec", metavar="SPEC")
@click.option("--id", "job_id", help="Job id (default: generated, sortable by creation time).")
@click.option(
    "--priority", type=click.IntRange(-INT32, INT32 - 1), help="Higher runs first (default 0)."
)
@click.option("--run-at", type=DateTime(), help="Not before this RFC 3339 instant.")
@click.option("--delay", type=Duration(), help="Not before this long from now: 30s, 5m, 1h30m.")
@click.option(
    "--max-retries", type=click.IntRange(0, INT32 - 1), help="Retries after the first run."
)
@click.option(
    "--timeout-ms", type=click.IntRange(0, INT32 - 1), help="Per-attempt limit; 0 = none."
)
@click.option("--queue", "queue_name", help="Named queue (default 'default').")
@click.option("--env", "env", type=KeyValue(), multiple=True, help="Environment for the job.")
@click.option("--label", "labels", type=KeyValue(), multiple=True, help="Label the job.")
@click.option(
    "--cwd",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run in this directory (default: where enqueue runs; a spec's relative cwd is "
    "resolved against it).",
)
@pass_app
def enqueue_cmd(
    app: App,
    job_spec: str,
    job_id: str | None,
    priority: int | None,
    run_at: str | None,
    delay: int | None,
    max_retries: int | None,
    timeout_ms: int | None,
    queue_name: str | None,
    env: tuple[tuple[str, str], ...],
    labels: tuple[tuple[str, str], ...],
    cwd: Path | None,
) -> None:
    """Enqueue a job: a command string, a JSON job object, or - for JSON/YAML on stdin.

    A spec with a `schedule` field declares a schedule (recurring runs) instead.

    SPEC is JSON when it parses as a JSON object or array (or starts with {" or [");
    anything else is a shell command, so '[ -f x ] && y' works. Jobs without a cwd
    run in the directory enqueue was run in. Prints each new job id on its own line.
    Re-submitting an identical job with the same id is a no-op that prints the id; a
    different spec is a conflict.

    \b
    Examples:
        queuectl enqueue "make nightly" --priority 5 --max-retries 2
        queuectl enqueue '{"id": "report-1", "command": ["python", "report.py"]}'
        queuectl enqueue - < jobs.yaml
    """
    if run_at and delay is not None:
        raise click.UsageError("--run-at and --delay both set a start time: use one of them")
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "id": job_id,
            "priority": priority,
            "run_at": run_at,
            "max_retries": max_retries,
            "timeout_ms": timeout_ms,
            "queue": queue_name,
        }.items()
        if value is not None
    }
    if env:
        overrides["env"] = dict(env)
    if labels:
        overrides["labels"] = dict(labels)
    here = os.getcwd()
    if cwd is not None:
        overrides["cwd"] = os.path.join(here, cwd)
    from . import spec

    loaded = spec.inline_specs(job_spec, sys.stdin.buffer, overrides, cwd=here)
    results = app.queue().submit([item.spec for item in loaded], delay_ms=delay or 0)
    for result in results:
        click.echo(result.id)


@cli.command(name="list")
@click.option("--state", type=click.Choice([s.value for s in JobState]), help="Only this state.")
@click.option("--queue", "queue_name", type=TEXT, help="Only this queue.")
@click.option("--label", "labels", type=KeyValue(), multiple=True, help="Only jobs with label.")
@click.option("--schedule", "schedule_id", type=TEXT, help="Only the runs of this schedule.")
@limit_option
@format_option
@pass_app
def list_cmd(
    app: App,
    state: str | None,
    queue_name: str | None,
    labels: tuple[tuple[str, str], ...],
    schedule_id: str | None,
    limit: int,
    newest: bool,
    fmt: str,
) -> None:
    """List jobs, oldest first (--newest: newest first).

    At most --limit jobs; when more match, a line on stderr says so.

    \b
    Example:
        queuectl list --state failed --label team=data --format table
        queuectl list --newest --limit 20
    """
    jobs, more = app.queue().list_page(
        state=JobState(state) if state else None,
        queue=queue_name,
        labels=dict(labels),
        limit=limit,
        newest=newest,
        schedule_id=schedule_id,
    )
    emit_page(jobs, more, fmt, newest=newest)


@cli.command(name="show")
@click.argument("job_id", metavar="ID", type=TEXT)
@format_option
@pass_app
def show_cmd(app: App, job_id: str, fmt: str) -> None:
    """Show one job with all its fields.

    \b
    Example:
        queuectl show 01JD4X2ZK8Q3V6T9W0B7N5M1C2
    """
    queue = app.queue()
    job = queue.get(job_id)
    emit({**job.to_dict(), "waiting_on": queue.waiting_on(job)}, fmt)


@cli.command(name="why")
@click.argument("job_id", metavar="ID", type=TEXT)
@table_first_option
@pass_app
def why_cmd(app: App, job_id: str, fmt: str) -> None:
    """Say what holds a pending or failed job back, one gate per line: run_at or retry
    time not reached, needs not met, its concurrency key at its limit, no live worker
    serving its queue.

    \b
    Example:
        queuectl why load-warehouse
    """
    queue = app.queue()
    job = queue.get(job_id)
    gates = queue.why(job_id)
    if fmt == "json":
        emit({"id": job.id, "state": job.state.value, "gates": [g.to_dict() for g in gates]}, fmt)
    elif gates:
        for gate in gates:
            click.echo(f"{job.id}: {gate.message}")
    elif job.state in (JobState.PENDING, JobState.FAILED):
        click.echo(f"{job.id}: nothing holds it: a free worker claims it next")
    else:
        click.echo(f"{job.id}: {job.state.value}: not waiting to run")


@cli.command(name="status")
@format_option
@pass_app
def status_cmd(app: App, fmt: str) -> None:
    """Show job counts per state (counts.dead is the DLQ size), schedules and live workers.

    \b
    Example:
        queuectl status --format table
    """
    status = app.queue().status()
    if fmt == "json":
        emit(status, fmt)
        return
    emit(status["counts"], fmt)
    schedules = status["schedules"]
    click.echo(
        f"\n{schedules['active']} active schedule(s), {schedules['suspended']} suspended, "
        f"{schedules['overdue']} overdue"
    )
    click.echo(f"\n{len(status['workers'])} live worker(s)")
    if status["workers"]:
        emit(
            status["workers"],
            fmt,
            ("id", "pid", "host", "started_at", "heartbeat_at", "current_job"),
        )


@cli.command(name="metrics")
@pass_app
def metrics_cmd(app: App) -> None:
    """Print the store's metrics in the Prometheus text format.

    Counts per queue and state, live workers, the age of the oldest due pending job
    per queue, attempts ended (a counter per queue and outcome, and a duration
    histogram) and, per schedule, its next run, last success, missed slots and
    whether it is overdue. Counters live in the store: every host reads the same.

    \b
    Example:
        queuectl metrics > /var/lib/node_exporter/queuectl.prom
    """
    from .metrics import exposition

    click.echo(exposition(app.queue()).decode(), nl=False)


MIN_TOKEN_CHARS = 16


@cli.command(name="serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback needs QUEUECTL_SERVE_TOKEN.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8470,
    show_default=True,
    help="Port to listen on (0: any free port). The URL is printed on stderr.",
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Allow retry, cancel, pause, resume and trigger, each with the token.",
)
@pass_app
def serve_cmd(app: App, host: str, port: int, allow_actions: bool) -> None:
    """Serve /metrics, /healthz, a JSON API under /api/ and a dashboard at /.

    Read-only unless started with --allow-actions, which needs a token in the
    environment variable QUEUECTL_SERVE_TOKEN (16 characters or more); every
    state-changing request must carry it as `Authorization: Bearer TOKEN`. Binding
    an address other than loopback needs the token too, and then every API read
    and /metrics need it as well. Runs until SIGTERM or Ctrl-C.

    \b
    Examples:
        queuectl serve
        QUEUECTL_SERVE_TOKEN=$(openssl rand -hex 32) queuectl serve --allow-actions
    """
    from .serve import ServeOptions, is_loopback, make_server

    token = os.environ.get("QUEUECTL_SERVE_TOKEN") or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UsageFailure(
            f"QUEUECTL_SERVE_TOKEN has {len(token)} characters: use {MIN_TOKEN_CHARS} or more "
            "(e.g. `openssl rand -hex 32`)"
        )
    if allow_actions and token is None:
        raise UsageFailure(
            "--allow-actions needs a token: set QUEUECTL_SERVE_TOKEN (e.g. to the output of "
            "`openssl rand -hex 32`)"
        )
    if not is_loopback(host) and token is None:
        raise UsageFailure(
            f"--host {host} is not a loopback address: set QUEUECTL_SERVE_TOKEN to serve "
            "beyond this machine, or bind 127.0.0.1"
        )
    options = ServeOptions(app.url, host, port, allow_actions=allow_actions, token=token)
    try:
        server = make_server(options)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}: choose another --port "
            "(0 picks a free one) or stop what holds it"
        ) from None
    mode = "actions allowed with the token" if allow_actions else "read-only"
    click.echo(f"queuectl serve: listening on {server.url} ({mode})", err=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return: not from the thread running it.
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()


@cli.command(name="cancel")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=TEXT)
@click.option(
    "--kill", is_flag=True, help="Also cancel a running job: its worker stops it and moves on."
)
@pass_app
def cancel_cmd(app: App, job_ids: tuple[str, ...], kill: bool) -> None:
    """Cancel pending or failed jobs; with --kill, running ones too.

    Each id is canceled on its own: `canceled ID` on stdout for each one that was,
    an `Error:` line on stderr for each one that could not be, and exit 1 if any
    could not. A running job canceled with --kill is canceled at once and gets
    SIGTERM: from here when its worker is on this host, else from its worker within
    lease_ms / 3. Its worker SIGKILLs whatever is left of it 3 s later, records
    nothing for that attempt and moves on; until then `wait` and `apply --replace`
    treat it as still running.

    \b
    Example:
        queuectl cancel nightly-backup
        queuectl cancel --kill runaway-job other-job
    """
    queue = app.queue()
    ids = list(dict.fromkeys(job_ids))
    failed = 0
    for job_id in ids:
        try:
            job = queue.cancel(job_id, kill=kill)
        except QueuectlError as exc:
            if len(ids) == 1:  # the error alone says it all
                raise
            click.echo(f"Error: {exc}", err=True)
            failed += 1
        else:
            click.echo(f"canceled {job.id}")
    if failed:
        raise click.ClickException(f"{failed} of {len(ids)} job(s) not canceled")


def warn_unserved(jobs: Sequence[Job]) -> None:
    """One stderr line per queue: these jobs wait for a worker that does not exist."""
    by_queue: dict[str, list[str]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job.id)
    for name, ids in by_queue.items():
        only = "" if name == "default" else f" --queue {name}"
        click.echo(
            f"warning: job {first_few(ids, 3)} waits on queue {name!r}, which no live worker "
            f"serves: start one with `queuectl worker start{only}` (or `worker run{only}`)",
            err=True,
        )


@cli.command(name="wait")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=TEXT)
@click.option(
    "--timeout", type=Duration(), help="Give up after this long: 30s, 5m, 1m30s (default: never)."
)
@format_option
@pass_app
def wait_cmd(app: App, job_ids: tuple[str, ...], timeout: int | None, fmt: str) -> None:
    """Wait until every job has ended; exit 0 only if all of them completed.

    A job ends completed, dead (out of retries) or canceled; a failed job waiting
    for its retry has not ended yet. Prints the jobs once all have ended. Exit 1
    when any ended otherwise, or when --timeout passed first (naming the jobs still
    going). ID - reads ids from stdin, one
    per line, as `enqueue` prints them.

    \b
    Example:
        queuectl wait "$(queuectl enqueue 'make test')" --timeout 30m
        queuectl enqueue - < examples/jobs/ci-steps.yaml | queuectl wait -
    """
    if "-" in job_ids:
        job_ids = tuple(i for i in job_ids if i != "-") + tuple(sys.stdin.read().split())
        if not job_ids:
            raise UsageProblem("wait -: no job ids on stdin: pipe in the output of `enqueue`")
    timeout_s = None if timeout is None else timeout / 1000
    jobs = app.queue().wait(job_ids, timeout_s=timeout_s, on_unserved=warn_unserved)
    emit_jobs(jobs, fmt)
    unfinished = [f"{job.id} ({job.state})" for job in jobs if job.state != JobState.COMPLETED]
    if unfinished:
        raise QueuectlError(
            f"{len(unfinished)} of {len(jobs)} job(s) did not complete: {first_few(unfinished)}; "
            "see `queuectl logs ID`"
        )


@cli.command(name="logs")
@click.argument("job_id", metavar="ID", type=TEXT)
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the job ends.")
@pass_app
def logs_cmd(app: App, job_id: str, follow: bool) -> None:
    """Print a job's output (stdout and stderr, one header line per attempt).

    Shows the local log file when this machine has it, else the last 4 KiB kept in
    the store.

    \b
    Example:
        queuectl logs nightly-backup --follow
    """
    queue = app.queue()
    if follow:
        for chunk in queue.follow_output(job_id, on_unserved=warn_unserved):
            click.echo(chunk, nl=False)
        return
    output = queue.output(job_id)
    if output.origin == "none":
        click.echo(f"job {job_id} has no output yet", err=True)
    elif output.origin == "store":
        click.echo(
            f"(the last 4 KiB kept in the store; the full log is on {output.host}, "
            "the host that ran the job)",
            err=True,
        )
    elif output.origin == "gone":
        click.echo(
            f"(the log file {output.path} is gone; here are the last 4 KiB kept in the store)",
            err=True,
        )
    for chunk in output.chunks:
        click.echo(chunk, nl=False)


# -- dead letter queue ----------------------------------------------------------------


@cli.group(name="dlq", cls=QueuectlGroup)
def dlq_group() -> None:
    """The dead letter queue: jobs that ran out of retries."""


@dlq_group.command(name="list")
@limit_option
@format_option
@pass_app
def dlq_list_cmd(app: App, limit: int, newest: bool, fmt: str) -> None:
    """List dead jobs, oldest first (--newest: newest first).

    At most --limit jobs; when more are dead, a line on stderr says so.

    \b
    Example:
        queuectl dlq list --format table
    """
    jobs, more = app.queue().list_page(state=JobState.DEAD, limit=limit, newest=newest)
    emit_page(jobs, more, fmt, newest=newest)


@dlq_group.command(name="retry")
@click.argument("job_ids", metavar="[ID]...", nargs=-1, type=TEXT)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead job.")
@pass_app
def dlq_retry_cmd(app: App, job_ids: tuple[str, ...], retry_all: bool) -> None:
    """Move dead jobs back to pending with attempts reset to 0 (their spec is kept).

    \b
    Examples:
        queuectl dlq retry nightly-backup
        queuectl dlq retry --all
    """
    if job_ids and retry_all:
        raise click.UsageError("give job ids or --all, not both")
    if not job_ids and not retry_all:
        raise click.UsageError("name the dead jobs to retry, or pass --all")
    retried = app.queue().dlq_retry(None if retry_all else list(job_ids))
    click.echo(f"retried {len(retried)} job(s)")


END_STATES_ORDER = (JobState.COMPLETED, JobState.CANCELED, JobState.DEAD)


def echo_deleted(job_ids: Sequence[str], summary: str) -> None:
    """The ids deleted (or that would be) on stdout, for scripts; the summary on stderr."""
    for job_id in job_ids:
        click.echo(job_id)
    click.echo(summary, err=True)


@dlq_group.command(name="purge")
@click.argument("job_ids", metavar="[ID]...", nargs=-1, type=TEXT)
@click.option(
    "--older-than", type=Duration(), help="Only jobs dead for longer than this: 30d, 12h."
)
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
@pass_app
def dlq_purge_cmd(
    app: App, job_ids: tuple[str, ...], older_than: int | None, dry_run: bool
) -> None:
    """Delete dead jobs (the ids given, or all of them) and their log files.

    Prints the ids deleted, one per line. A job some waiting job still needs (with
    `on: failure` or `finished`) is kept until that job has settled.

    \b
    Examples:
        queuectl dlq purge --older-than 30d --dry-run
        queuectl dlq purge nightly-backup-2026-11-29
    """
    purged = app.queue().dlq_purge(job_ids, older_than_ms=older_than, dry_run=dry_run)
    echo_deleted(purged, f"{'would purge' if dry_run else 'purged'} {len(purged)} job(s)")


@cli.command(name="delete")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=TEXT)
@pass_app
def delete_cmd(app: App, job_ids: tuple[str, ...]) -> None:
    """Delete ended jobs (completed, dead or canceled) and their log files.

    Refuses, deleting nothing, when any of them has not ended or a job that may still
    run needs it.

    \b
    Example:
        queuectl delete report-2026-11-01 report-2026-11-02
    """
    deleted = app.queue().delete(job_ids)
    echo_deleted(deleted, f"deleted {len(deleted)} job(s)")


@cli.command(name="prune")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in END_STATES_ORDER]),
    help="Only jobs that ended in this state (repeatable). Default: all three.",
)
@click.option(
    "--older-than",
    type=Duration(),
    help="Ended longer ago than this (3d, 12h) instead of the config's keep_*_days.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing.")
@pass_app
def prune_cmd(app: App, states: tuple[str, ...], older_than: int | None, dry_run: bool) -> None:
    """Delete ended jobs older than keep_completed_days, keep_canceled_days and
    keep_dead_days (0 keeps them forever), with their log files, in small batches.

    Prints the ids deleted (or, with --dry-run, that would be), one per line, and a count
    per state on stderr. Jobs a needs edge still waits on are kept until the jobs that
    need them have settled.

    \b
    Examples:
        queuectl prune --dry-run
        queuectl prune --state completed --older-than 3d
    """
    chosen = [JobState(s) for s in states] or list(END_STATES_ORDER)
    pruned = app.queue().prune(states=chosen, older_than_ms=older_than, dry_run=dry_run)
    every = [job_id for ids in pruned.values() for job_id in ids]
    counts = ", ".join(f"{state.value} {len(ids)}" for state, ids in pruned.items())
    verb = "would prune" if dry_run else "pruned"
    echo_deleted(every, f"{verb} {len(every)} job(s)" + (f" ({counts})" if counts else ""))


# -- schedules ------------------------------------------------------------------------

SCHEDULE_COLUMNS = (
    "id",
    "when",
    "timezone",
    "overlap",
    "suspended",
    "overdue",
    "missed",
    "last_success_at",
)


def schedule_row(schedule: Schedule) -> dict[str, Any]:
    """A schedule as `schedule list --format table` shows it: `when` is its cron or interval."""
    spec = schedule.spec
    when = " | ".join(spec.cron) if spec.cron else f"every {format_duration(spec.every_ms or 0)}"
    return {**schedule.to_dict(), "when": when, **spec.declared()}


@cli.group(name="schedule", cls=QueuectlGroup)
def schedule_group() -> None:
    """Schedules: recurring jobs, declared with a `schedule` field and enqueued like jobs."""


@schedule_group.command(name="list")
@format_option
@pass_app
def schedule_list_cmd(app: App, fmt: str) -> None:
    """List every schedule, by id.

    \b
    Example:
        queuectl schedule list --format table
    """
    schedules = app.queue().schedules()
    if fmt == "json":
        emit([s.to_dict() for s in schedules], fmt)
    else:
        emit([schedule_row(s) for s in schedules], fmt, SCHEDULE_COLUMNS)


@schedule_group.command(name="show")
@click.argument("schedule_id", metavar="ID", type=TEXT)
@format_option
@pass_app
def schedule_show_cmd(app: App, schedule_id: str, fmt: str) -> None:
    """Show one schedule, with its next 5 slots in its time zone.

    \b
    Example:
        queuectl schedule show nightly-backup
    """
    queue = app.queue()
    schedule = queue.schedule(schedule_id)
    emit({**schedule.to_dict(), "next_slots": queue.next_slots(schedule)}, fmt)


@schedule_group.command(name="pause")
@click.argument("schedule_id", metavar="ID", type=TEXT)
@pass_app
def schedule_pause_cmd(app: App, schedule_id: str) -> None:
    """Stop creating runs of a schedule until `schedule resume`.

    \b
    Example:
        queuectl schedule pause nightly-backup
    """
    app.queue().pause(schedule_id)
    click.echo(f"paused {schedule_id}")


@schedule_group.command(name="resume")
@click.argument("schedule_id", metavar="ID", type=TEXT)
@pass_app
def schedule_resume_cmd(app: App, schedule_id: str) -> None:
    """Resume a paused schedule; the slots it skipped are caught up as its `catchup` says.

    \b
    Example:
        queuectl schedule resume nightly-backup
    """
    app.queue().resume(schedule_id)
    click.echo(f"resumed {schedule_id}")


@schedule_group.command(name="trigger")
@click.argument("schedule_id", metavar="ID", type=TEXT)
@pass_app
def schedule_trigger_cmd(app: App, schedule_id: str) -> None:
    """Create one run of a schedule now; prints its id (<id>@<now as a slot>).

    \b
    Example:
        queuectl schedule trigger nightly-backup
    """
    click.echo(app.queue().trigger(schedule_id))


@schedule_group.command(name="delete")
@click.argument("schedule_id", metavar="ID", type=TEXT)
@pass_app
def schedule_delete_cmd(app: App, schedule_id: str) -> None:
    """Delete a schedule; its runs waiting to start are canceled, the others kept.

    \b
    Example:
        queuectl schedule delete nightly-backup
    """
    canceled = app.queue().delete_schedule(schedule_id)
    click.echo(f"deleted {schedule_id}; canceled {len(canceled)} run(s) waiting to start")


@schedule_group.command(name="tick")
@format_option
@pass_app
def schedule_tick_cmd(app: App, fmt: str) -> None:
    """Create the runs that are due now, count missed slots, and exit.

    For hosts that drive queuectl from their own timer. Safe to run on many hosts at
    once: each slot's run is created once. Prints what this pass did.

    \b
    Example:
        queuectl schedule tick --format table
    """
    # A tick lost to a power cut is made again by the next (a run's id is its slot): its
    # commits need not wait for the disk, as a worker's scheduler's do not.
    ticked = [t.to_dict() for t in app.queue(durable=False).tick()]
    if fmt == "table":  # one cell per list
        ticked = [
            {**t, "created": " ".join(t["created"]), "replaced": " ".join(t["replaced"])}
            for t in ticked
        ]
    emit(ticked, fmt, ("schedule", "created", "missed", "replaced"))


# -- config ---------------------------------------------------------------------------


@cli.group(name="config", cls=QueuectlGroup)
def config_group() -> None:
    """Settings kept in the store (QUEUECTL_<KEY> overrides one for one process)."""


@config_group.command(name="set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@pass_app
def config_set_cmd(app: App, key: str, value: str) -> None:
    """Set a config key (see `queuectl config list`); `-` and `_` are both accepted.

    Running workers read the config when they start: restart them after changing
    lease_ms, job_timeout_ms or poll_interval_ms.

    \b
    Example:
        queuectl config set max-retries 5
    """
    name, text = app.queue().config_set(key, value)
    click.echo(f"{name} = {text}")


@config_group.command(name="get")
@click.argument("key")
@pass_app
def config_get_cmd(app: App, key: str) -> None:
    """Print the effective value of a key, bare.

    \b
    Example:
        queuectl config get backoff_base
    """
    click.echo(app.queue().config_get(key))


@config_group.command(name="list")
@format_option
@pass_app
def config_list_cmd(app: App, fmt: str) -> None:
    """Print every key with its effective value.

    \b
    Example:
        queuectl config list --format table
    """
    emit(app.queue().config_list(), fmt)


# -- workers --------------------------------------------------------------------------


@cli.group(name="worker", cls=QueuectlGroup)
def worker_group() -> None:
    """Run the workers that execute jobs."""


def _check_queue_names(
    ctx: click.Context, param: click.Parameter, names: tuple[str, ...]
) -> tuple[str, ...]:
    from . import spec

    pattern = re.compile(spec.schema()["properties"]["queue"]["pattern"])
    for name in names:
        if not pattern.search(name):
            raise click.BadParameter(
                f"{name!r} is not a queue name: letters, digits, '.', '_', ':' or '-' "
                "(repeat --queue to serve several)",
                ctx,
                param,
            )
    return names


def worker_options(func: F) -> F:
    func = click.option(
        "--queue",
        "queues",
        multiple=True,
        callback=_check_queue_names,
        help="Serve only this queue (repeatable; default: all).",
    )(func)
    func = click.option(
        "--poll-interval",
        type=click.IntRange(10, INT32 - 1),
        metavar="MS",
        help="How often an idle worker looks for due jobs [config poll_interval_ms].",
    )(func)
    func = click.option(
        "--count",
        "-c",
        type=click.IntRange(min=1, max=256),
        default=1,
        show_default=True,
        help="Number of worker processes.",
    )(func)
    return func


def _passthrough(poll_interval: int | None, queues: Sequence[str], drain: bool) -> list[str]:
    args = [] if poll_interval is None else ["--poll-interval", str(poll_interval)]
    for name in queues:
        args += ["--queue", name]
    return args + (["--drain"] if drain else [])


@worker_group.command(name="run")
@worker_options
@click.option(
    "--drain", is_flag=True, help="Exit 0 once nothing is processing, due, or waiting for a retry."
)
@click.option(
    "--fail-on-dead",
    is_flag=True,
    help="With --drain: exit 1 when a job ended dead during the drain (for CI).",
)
@click.option(
    "--spool",
    "spool_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also run a spool watcher on this directory, in the same supervisor.",
)
@pass_app
def worker_run_cmd(
    app: App,
    count: int,
    poll_interval: int | None,
    queues: tuple[str, ...],
    drain: bool,
    fail_on_dead: bool,
    spool_dir: Path | None,
) -> None:
    """Run workers in the foreground (for containers, systemd and CI).

    SIGTERM or Ctrl-C: finish the current job, then exit. A second Ctrl-C (a second
    or more later) or SIGQUIT interrupts the running job, which is recorded as failed.

    Also runs a scheduler, which creates the runs of schedules at their slots (one per
    `worker run`, beside its workers; none with --drain, which only empties the queue).

    \b
    Examples:
        queuectl worker run --count 4
        queuectl worker run --drain        # CI: run everything, then exit
        queuectl worker run --count 2 --spool /var/spool/queuectl
    """
    from .workers import bind_to_supervisor

    supervised = bind_to_supervisor()  # a supervisor's child stops when its supervisor dies
    if fail_on_dead and not drain:
        raise click.UsageError("--fail-on-dead needs --drain: a worker that never ends cannot fail")
    if spool_dir is not None and drain:
        raise click.UsageError(
            "--spool watches until stopped, so it cannot --drain: "
            "run `queuectl spool ingest DIR` first, then `worker run --drain`"
        )
    if count > 1 or spool_dir is not None:
        from .workers import Supervisor

        queue = app.queue()  # opens and migrates the store once, before the children start
        if spool_dir is not None:
            from .spool import Spool

            Spool(spool_dir, queue.store).close()  # an unsafe spool stops us here, once
        url = queue.store.url
        supervisor = Supervisor(
            url,
            count,
            _passthrough(poll_interval, queues, drain),
            log=lambda line: click.echo(line, err=True),
            spool=spool_dir.absolute() if spool_dir else None,
            # A forked child shows this process's environment in /proc, where `worker
            # stop` checks which store a worker serves: fork only where that tells true.
            fork=os.environ.get("QUEUECTL_DATABASE_URL", url) == url,
        )
        before = queue.drain_counts() if drain else None
        if drain:
            _warn_empty_queues(queue, queues)
        app.close()  # no connection may cross the fork that starts the children
        with _signals(supervisor.forward):
            supervisor.start()  # before the scheduler's thread: forked, one thread
            with _scheduler(url, drain):
                code = supervisor.run()
        if before is not None and code == 0:
            _drain_summary(app.queue(), before, fail_on_dead=fail_on_dead)
        sys.exit(code)

    from .runner import Runner
    from .spawn import keep_freed_heap

    keep_freed_heap()
    runner = Runner(app.queue(durable=False).store, queues=queues, poll_interval_ms=poll_interval)
    first_sigint: list[float] = []

    def on_signal(signum: int) -> None:
        if signum == signal.SIGQUIT:
            runner.interrupt("interrupted by SIGQUIT")
        elif signum == signal.SIGINT:
            now = time.monotonic()
            if not first_sigint:
                first_sigint.append(now)
                runner.stop()
            elif now - first_sigint[0] >= 1.0:  # repeats within a second are one request
                runner.interrupt("interrupted by a second Ctrl-C")
        else:
            runner.stop()

    # The supervisor of `--count N` sums up (and warns about) the drain once, for all its
    # children.
    before = app.queue().drain_counts() if drain and not supervised else None
    if before is not None:
        _warn_empty_queues(app.queue(), queues)
    # A supervisor's children leave the schedules to the supervisor's scheduler.
    with _signals(on_signal), _scheduler(runner.store.url, drain or supervised):
        runner.run(drain=drain)
    if before is not None:
        _drain_summary(app.queue(), before, fail_on_dead=fail_on_dead)


def _scheduler(url: str, off: bool) -> contextlib.AbstractContextManager[None]:
    """A scheduler in a thread while the block runs, unless `off`.

    Not while draining: a drain ends once nothing is left to do, and a schedule's
    runs would keep coming (`schedule tick` first creates what is due, if wanted).
    """
    if off:
        return contextlib.nullcontext()
    from .scheduler import Scheduler

    return Scheduler(url).in_thread()


def _warn_empty_queues(queue: Queue, queues: Sequence[str]) -> None:
    """A drain of a queue no job was ever on is most likely a typo (`--queue cii`): say so."""
    import difflib

    if not queues:  # serving every queue
        return
    empty, known = queue.queues_without_jobs(queues)
    for name in empty:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        click.echo(
            f"warning: no job in this store is on queue {name!r}{hint}; queues with jobs: "
            f"{', '.join(known) or 'none'}",
            err=True,
        )


def _drain_summary(queue: Queue, before: DrainCounts, *, fail_on_dead: bool) -> None:
    """The one line a drain ends with; with fail_on_dead, exit 1 when a job died."""
    summary = queue.drain_counts().since(before)
    click.echo(
        f"drained: {summary.completed} completed, {summary.dead} dead, "
        f"{summary.failed} still failing",
        err=True,
    )
    if fail_on_dead and summary.dead:
        raise click.ClickException(
            f"{summary.dead} job(s) ended dead during the drain: see `queuectl dlq list`"
        )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


class _signals:
    """Install a handler for SIGTERM, SIGINT and SIGQUIT; restore the previous ones after."""

    def __init__(self, handler: Callable[[int], None]) -> None:
        self.handler = handler
        self.previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> None:
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.handler(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)


@worker_group.command(name="start")
@worker_options
@pass_app
def worker_start_cmd(
    app: App, count: int, poll_interval: int | None, queues: tuple[str, ...]
) -> None:
    """Start detached worker processes (recorded in pids.json); return once each has registered.

    \b
    Example:
        queuectl worker start --count 3
    """
    from .workers import start_detached

    store = app.queue().store  # fail here, not in a detached child, if the store is unusable
    pids = start_detached(store, count, _passthrough(poll_interval, queues, drain=False))
    click.echo(f"started {len(pids)} worker(s): pid {', '.join(map(str, pids))}")


@worker_group.command(name="stop")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60,
    show_default=True,
    metavar="S",
    help="Seconds to wait for running jobs to finish.",
)
@pass_app
def worker_stop_cmd(app: App, timeout: float) -> None:
    """Stop every worker of this home and store gracefully (each finishes its job).

    \b
    Example:
        queuectl worker stop --timeout 120
    """
    from .workers import stop_workers

    report = stop_workers(app.queue().store, timeout)
    click.echo(f"stopped {len(report.stopped)} worker(s)")
    if report.remote:
        click.echo(f"asked {report.remote} worker(s) on other hosts or PID namespaces to stop")
    if report.unverified:
        click.echo(
            f"asked {report.unverified} worker(s) on this host to stop through the store "
            "(not signalled: they could not be verified as this store's)"
        )
    if report.refused:
        raise click.ClickException(
            f"not allowed to signal worker pid {', '.join(map(str, report.refused))}: "
            "run `worker stop` as the user that started them"
        )
    if report.still_running:
        pids = ", ".join(map(str, report.still_running))
        raise click.ClickException(
            f"{len(report.still_running)} worker(s) still running after {timeout:g} s "
            f"(pid {pids}): they are finishing a job; wait, or run `worker stop` again"
        )


# -- declared specs: validate and apply ---------------------------------------------------


def _github_escape(text: str, *, prop: bool = False) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if prop else text


def emit_problems(problems: Sequence[Problem], fmt: str) -> None:
    """Print validation problems: text lines, a JSON list, or GitHub workflow annotations."""
    if fmt == "json":
        click.echo(
            json.dumps(
                [p.to_dict() for p in problems],
                indent=2,
                ensure_ascii=False,
            )
        )
    elif fmt == "github":
        for p in problems:
            text = f"{p.field}: {p.message}" if p.field else p.message
            # A file-level problem (line 0) has no position: GitHub wants none, not 0.
            where = f",line={p.line},col={p.column}" if p.line else ""
            click.echo(
                f"::error file={_github_escape(p.source, prop=True)}{where}::{_github_escape(text)}"
            )
    else:
        for p in problems:
            click.echo(str(p))


spec_paths = click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path)
)


@cli.command(name="validate")
@spec_paths
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="text for people, json for programs, github for workflow annotations.",
)
def validate_cmd(paths: tuple[Path, ...], fmt: str) -> None:
    """Validate job-spec files and directories (recursively) without touching any store.

    Checks the schema, date-times, YAML/JSON syntax and duplicate ids across every
    file given. Prints `path:line:col: field: message` per problem; exits 1 if any.

    \b
    Examples:
        queuectl validate jobs/
        queuectl validate --format github jobs/*.yaml
    """
    from . import spec

    result = spec.validate_paths(paths)
    if result.problems or fmt == "json":
        emit_problems(result.problems, fmt)
    if result.problems:
        click.echo(f"{len(result.problems)} problem(s) in {result.files} file(s)", err=True)
        sys.exit(1)
    schedules = sum(isinstance(item.spec, ScheduleSpec) for item in result.specs)
    counted = f"{len(result.specs) - schedules} job(s)"
    if schedules:
        counted += f" and {schedules} schedule(s)"
    click.echo(f"ok: {counted} in {result.files} file(s)", err=True)


@cli.command(name="apply")
@spec_paths
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option(
    "--replace", is_flag=True, help="Enqueue changed jobs afresh even if they ran or were canceled."
)
@click.option(
    "--prune",
    is_flag=True,
    help=(
        "Cancel pending jobs and delete schedules an earlier apply of these paths created "
        "that are no longer declared."
    ),
)
@format_option
@pass_app
def apply_cmd(
    app: App, paths: tuple[Path, ...], dry_run: bool, replace: bool, prune: bool, fmt: str
) -> None:
    """Make the queue hold exactly the declared jobs and schedules, once (GitOps).

    Every job needs an id. Per job the plan is create, unchanged, update (pending and
    never run), conflict (changed after it ran: left alone, exit 1), replace (with
    --replace) or prune (with --prune). Per schedule it is create, unchanged, update
    (the template of runs not yet created) or prune (deleted; its runs waiting to
    start are canceled). Each plan row names its kind, job or schedule. The plan is
    printed as JSON even when conflicts make the exit code 1. All changes are one
    transaction: an invalid file changes nothing.

    \b
    Examples:
        queuectl apply jobs/ --dry-run
        queuectl apply jobs/ --prune
    """
    from . import apply as apply_mod

    try:
        result = apply_mod.apply(
            app.queue().store, list(paths), dry_run=dry_run, replace=replace, prune=prune
        )
    except SpecInvalid as exc:
        for problem in exc.problems:
            click.echo(f"Error: {problem}", err=True)
        raise click.ClickException(
            f"nothing applied: fix the {len(exc.problems)} problem(s) above"
        ) from exc
    # Nothing cut: a plan's reason and source are what a person reads the table for.
    emit(
        [e.to_dict() for e in result.entries],
        fmt,
        ("id", "kind", "action", "source", "reason"),
        cut=False,
    )
    counts = {
        a: sum(e.action == a for e in result.entries)
        for a in ("create", "update", "replace", "prune", "unchanged", "conflict")
    }
    summary = ", ".join(f"{n} {a}" for a, n in counts.items() if n) or "nothing declared"
    click.echo(f"{'dry run, nothing written: ' if dry_run else ''}{summary}", err=True)
    if result.conflicts:
        raise click.ClickException(
            f"{len(result.conflicts)} conflict(s) left alone: see the plan's reasons"
        )


# -- spool directory --------------------------------------------------------------------


@cli.group(name="spool", cls=QueuectlGroup)
def spool_group() -> None:
    """Turn job and schedule files dropped into a directory into jobs and schedules.

    Write a file as `name.yaml.tmp` (or a dotfile) and rename it into place: the
    rename is atomic, so a half-written file is never read.
    """


spool_dir_argument = click.argument(
    "directory",
    required=False,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)


def _open_spool(app: App, directory: Path | None) -> Any:
    from .runner import stderr_log
    from .spool import Spool, default_spool_dir

    return Spool(directory or default_spool_dir(), app.queue().store, log=stderr_log)


@spool_group.command(name="watch")
@spool_dir_argument
@pass_app
def spool_watch_cmd(app: App, directory: Path | None) -> None:
    """Watch DIRECTORY (default $QUEUECTL_HOME/spool) and ingest files as they arrive.

    Ingests what is already there first, including files a stopped watcher left
    half-done. SIGTERM or Ctrl-C stops it after the file at hand.

    \b
    Example:
        queuectl spool watch /var/spool/queuectl
    """
    from .workers import bind_to_supervisor

    bind_to_supervisor()  # a supervisor's child stops when its supervisor dies
    with _open_spool(app, directory) as spool, _signals(lambda signum: spool.stop()):
        spool.watch()


@spool_group.command(name="ingest")
@spool_dir_argument
@pass_app
def spool_ingest_cmd(app: App, directory: Path | None) -> None:
    """Ingest the files in DIRECTORY once (for cron or CI); exit 1 if any was rejected.

    Files written in place are taken once unchanged for spool_settle_ms (default 1 s).

    \b
    Example:
        queuectl spool ingest ~/.queuectl/spool
    """
    with _open_spool(app, directory) as spool:
        handled = spool.scan_once()
        while (settle := spool.next_settle_s()) is not None:
            time.sleep(settle + 0.01)  # a file written in place: let it settle, then take it
            handled += spool.scan_once()
    rejected = [h for h in handled if not h.ingested]
    click.echo(
        f"{len(handled) - len(rejected)} file(s) ingested, {len(rejected)} rejected", err=True
    )
    if rejected:
        sys.exit(1)
