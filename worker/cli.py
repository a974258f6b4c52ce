"""The `contactsync` command: run the system, submit jobs, read the ledger, resolve reviews.

The front door: it may import anything, lazily, so `celery -A worker` stays light; nothing
imports it.
"""

from __future__ import annotations

import getpass
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# Shared with the operator's console; re-exported for the tests of `gate status`.
from worker.reports import CHART_COLUMNS, limit_columns  # noqa: F401

if TYPE_CHECKING:
    from worker.gate import GateStatus

console = Console()


def _when(ms: int) -> str:
    from worker.reports import when

    return when(ms)


def _stop_on_signals() -> None:
    """Let SIGTERM (docker stop, systemd) and SIGINT stop `up` and `demo` cleanly. SIGINT is set
    explicitly: a shell script that starts us in the background leaves it ignored.

    The first signal starts the shutdown and every later one is ignored: an impatient second
    Ctrl-C landing between the first and `Stack.stop()` would otherwise abort the shutdown
    half-way (exit 1, and children left behind)."""

    def interrupt(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    sys.exit(2)


class _Main(click.Group):
    """Turns the two errors a person can fix (configuration, an unreachable Redis) into a
    message that says what to do, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from pydantic import ValidationError
        from pydantic_settings import SettingsError
        from redis.exceptions import ConnectionError as RedisConnectionError

        from worker.broker import RedisNotConfigured
        from worker.settings import exit_for_settings

        try:
            return super().invoke(ctx)
        except (ValidationError, SettingsError) as exc:
            exit_for_settings(exc)
        except RedisNotConfigured as exc:
            _fail(str(exc))
        except RedisConnectionError:
            from worker.broker import redis_url
            from worker.settings import mask_url_password

            _fail(f"cannot reach Redis at {mask_url_password(redis_url())}: start the system with "
                  "`contactsync up`, or set CONTACTSYNC_REDIS_URL to a running server")  # fmt: skip


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """contactsync: deliver contact updates to CRMs and dialers through Celery and Redis.

    Configuration comes from CONTACTSYNC_* environment variables (or a .env file); see
    `contactsync config`. Without CONTACTSYNC_REDIS_URL, `up` and `demo` start an embedded
    Redis-compatible server under ./.contactsync/.
    """


# -- running ------------------------------------------------------------------------------------
@main.command()
def config() -> None:
    """Show the effective settings, secrets masked."""
    from worker.broker import RedisNotConfigured, redis_url
    from worker.settings import get_settings, mask_url_password

    shown = get_settings().masked()
    try:
        shown["effective_redis_url"] = mask_url_password(redis_url())
    except RedisNotConfigured as exc:
        shown["effective_redis_url"] = None
        console.print(f"[yellow]note:[/yellow] {exc}")
    console.print_json(json.dumps(shown))


@main.command()
@click.option("--workers", default=1, show_default=True, help="Celery worker processes.")
def up(workers: int) -> None:
    """Run everything: embedded Redis (unless CONTACTSYNC_REDIS_URL is set), a simulator for
    each destination that is not configured (e.g. unless CONTACTSYNC_NOOJEE__BASE_URL is set),
    workers, Flower and the HTTP intake. Ctrl-C stops it all."""
    from worker.settings import get_settings
    from worker.stack import Stack

    _stop_on_signals()
    stack = Stack(get_settings().data_dir, workers=workers)
    try:
        with console.status("starting contactsync..."):
            stack.start()
        _print_stack(stack)
        console.print("Ctrl-C stops everything. A server or worker that dies is started again "
                      f"(and noted in {stack.log_dir / 'supervisor.log'}).")  # fmt: skip
        stack.keep_running(lambda event: console.print(f"[yellow]{escape(event)}[/yellow]"))
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stack.stop()


def _print_stack(stack: Any) -> None:
    from worker.broker import redis_url
    from worker.settings import mask_url_password

    user, password = stack.flower_credentials[0], stack.flower_password_shown
    console.print(f"redis      {mask_url_password(redis_url())}  (data under {stack.data_dir})")
    for name, url in stack.simulator_urls.items():
        console.print(f"{name:<10} {url}  (simulator)", highlight=False)
    console.print(f"workers    {stack.workers}, logs under {stack.log_dir}")
    if stack.flower_url:
        console.print(f"flower     {stack.flower_url}  user [bold]{user}[/bold] "
                      f"password [bold]{password}[/bold]")  # fmt: skip
    if stack.intake_url:
        token = (f"bearer token [bold]{stack.intake_token}[/bold] (client local, an operator)"
                 if stack.intake_token else "tokens from CONTACTSYNC_INTAKE__TOKENS")
        console.print(f"intake     {stack.intake_url}  {token}", highlight=False)


@main.command()
@click.option("--jobs", "count", default=300, show_default=True, help="Sample updates to send.")
@click.option("--linger/--no-linger", default=None,
              help="Keep the system running after the table (default: only on a terminal).")
def demo(count: int, linger: bool | None) -> None:
    """Start the whole system, deliver a realistic sample through it, and print what happened."""
    from worker.demo import run_demo

    _stop_on_signals()
    run_demo(console, count, sys.stdout.isatty() if linger is None else linger)


@main.command()
@click.option("--host", help="Address to listen on (default: CONTACTSYNC_INTAKE__HOST).")
@click.option("--port", type=int, help="Port (default: CONTACTSYNC_INTAKE__PORT; 0: any free).")
@click.option("--port-file", type=click.Path(dir_okay=False), hidden=True,
              help="Write the port listened on to this file (for `up`).")  # fmt: skip
def intake(host: str | None, port: int | None, port_file: str | None) -> None:
    """Serve the HTTP intake: POST /v1/jobs (one job or up to 1,000), GET /v1/jobs/ID,
    GET /v1/review, POST /v1/review/ID/requeue|discard, GET /healthz, GET /openapi.json.

    Clients authenticate with `Authorization: Bearer TOKEN`, the tokens named in
    CONTACTSYNC_INTAKE__TOKENS ('{"crm": "long-random-token"}'); the names in
    CONTACTSYNC_INTAKE__OPERATORS may read every job and resolve reviews. Jobs are realtime
    unless the request says "priority": "bulk". Ctrl-C stops it.
    """
    from producers.intake import serve
    from worker.serving import write_port_file
    from worker.settings import get_settings

    settings = get_settings().intake
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    settings = settings.model_copy(update=overrides)

    def ready(bound: int) -> None:
        console.print(f"intake listening on http://{settings.host}:{bound} "
                      f"({len(settings.tokens)} client token(s))", highlight=False)  # fmt: skip
        if port_file:
            write_port_file(port_file, bound)

    try:
        serve(settings, ready=ready)
    except ValueError as exc:
        _fail(str(exc))


class _Registered(click.Group):
    """A group with a command per registered destination or job kind, added the first time its
    commands are listed or looked up: `contactsync --help` need not import every destination."""

    populate: Callable[[], None] | None = None

    def _load(self) -> None:
        populate, self.populate = self.populate, None
        if populate is not None:
            populate()

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)


@main.group(cls=_Registered)
def sandbox() -> None:
    """Destination simulators, for trying contactsync without the real systems."""


def _simulator_command(name: str, module: str, summary: str) -> None:
    @sandbox.command(
        name,
        help=f"{summary} (`--help` lists its options)",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )
    @click.pass_context
    def run(ctx: click.Context) -> None:
        import importlib

        simulator = importlib.import_module(module)
        sys.exit(simulator.main(list(ctx.args)))


def _simulator_commands() -> None:
    """`contactsync sandbox NAME [OPTIONS]`: the simulator of each registered destination."""
    from worker.destinations import registry

    for declared in registry():
        if declared.simulator is not None:
            _simulator_command(declared.name, declared.simulator, declared.simulator_summary)


def _fill_later(group: click.Group, populate: Callable[[], None]) -> None:
    assert isinstance(group, _Registered)
    group.populate = populate


_fill_later(sandbox, _simulator_commands)


# -- submitting ---------------------------------------------------------------------------------
def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            _fail(f"{option} {value!r}: write it as NAME=VALUE")
        pairs[key] = val
    return pairs


def _noojee_options(func: Any) -> Any:
    options = [
        click.option("--template-id", type=int, required=True, help="fTemplateId"),
        click.option("--campaign-id", type=int, required=True, help="fCampaignId"),
        click.option("--allocation-id", type=int, required=True, help="fAllocationId"),
        click.option("--lead-id", required=True, help="njExternalLeadId"),
        click.option("--disposition", help="njDisposition (required on update; <No Change> "
                                           "keeps the current one)"),
        click.option("--callback-date", help="njCallBackDate, yyyy/MM/dd HH:mm"),
        click.option("--priority", "lead_priority", type=int, help="njPriority, 0-100"),
        click.option("--contact-hours", help="njContactHours (timezone name)"),
        click.option("--field", "fields", multiple=True, metavar="NAME=VALUE",
                     help="A lead field, repeatable; at least one ...Phone field."),
        click.option("--bulk", is_flag=True, help="Submit as bulk (default realtime)."),
        click.option("--idempotency-key", help="Same key twice: delivered once."),
        click.option("--version", "version", metavar="V",
                     help="Your version of this data (integer, or RFC 3339 timestamp with its "
                          "offset): older than one delivered for the lead → not sent."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@main.group(cls=_Registered)
def submit() -> None:
    """Submit one job, validated before anything is queued."""


def _submit(kind: str, opts: dict[str, Any]) -> None:
    data: dict[str, Any] = {
        "template_id": opts["template_id"], "campaign_id": opts["campaign_id"],
        "allocation_id": opts["allocation_id"], "external_lead_id": opts["lead_id"],
        "disposition": opts["disposition"], "callback_date": opts["callback_date"],
        "priority": opts["lead_priority"], "contact_hours": opts["contact_hours"],
        "fields": _pairs(opts["fields"], "--field"),
    }  # fmt: skip
    _queue(kind, {k: v for k, v in data.items() if v is not None}, opts)


def _queue(kind: str, data: dict[str, Any], opts: dict[str, Any]) -> None:
    from producers import submit as submit_job
    from tasks.models import JobValidationError, validate_job

    try:
        job = validate_job(kind, data)
    except JobValidationError as exc:
        _fail(f"{exc}\nnothing was queued.")
        return
    try:
        job_id = submit_job(job, priority="bulk" if opts["bulk"] else "realtime",
                            idempotency_key=opts["idempotency_key"], client="cli",
                            version=opts["version"])  # fmt: skip
    except ValueError as exc:
        _fail(f"{exc}\nnothing was queued.")
        return
    console.print(job_id)


@submit.command("noojee-update")
@_noojee_options
def submit_noojee_update(**opts: Any) -> None:
    """Update a Noojee lead (updateLeadFast)."""
    _submit("noojee.update", opts)


@submit.command("noojee-insert")
@_noojee_options
def submit_noojee_insert(**opts: Any) -> None:
    """Insert a Noojee lead (insertLeadFast)."""
    _submit("noojee.insert", opts)


def _kind_command(kind: str, summary: str) -> None:
    """`contactsync submit KIND-NAME --job JSON`: a job of any registered kind, its fields as
    the intake takes them (``POST /v1/jobs``)."""

    @submit.command(kind.replace(".", "-").replace("_", "-"),
                    help=f"{summary} (`{kind}`; the fields as the intake takes them).")
    @click.option("--job", "job_json", required=True, metavar="JSON",
                  help="The job's fields, a JSON object; @FILE reads it from FILE.")
    @click.option("--bulk", is_flag=True, help="Submit as bulk (default realtime).")
    @click.option("--idempotency-key", help="Same key twice: delivered once.")
    @click.option("--version", "version", metavar="V",
                  help="Your version of this data (integer, or RFC 3339 timestamp with its "
                       "offset): older than one delivered for the record → not sent.")
    def run(job_json: str, **opts: Any) -> None:
        from pathlib import Path

        text = Path(job_json[1:]).read_text() if job_json.startswith("@") else job_json
        try:
            data = json.loads(text)
        except ValueError as exc:  # the message names a position, never the text
            _fail(f"--job is not JSON ({exc.__class__.__name__} at character "
                  f"{getattr(exc, 'pos', '?')}); nothing was queued.")
            return
        if not isinstance(data, dict):
            _fail("--job must be a JSON object of the job's fields; nothing was queued.")
        _queue(kind, data, opts)  # fmt: skip


def _kind_commands() -> None:
    from tasks.models import model_for
    from worker.destinations import registry

    named = {"noojee.update", "noojee.insert"}  # the commands above, with an option per field
    for declared in registry():
        for kind in declared.job_kinds:
            if kind not in named:
                paragraph = (model_for(kind).__doc__ or kind).strip().split("\n\n")[0]
                sentence = " ".join(paragraph.split()).split(". ")[0].rstrip(".")
                _kind_command(kind, sentence.replace("``", "`"))


_fill_later(submit, _kind_commands)


# -- backfills ----------------------------------------------------------------------------------
@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--destination", "-d", required=True, metavar="NAME|KIND",
              help="A destination (noojee, missioncapital, ...: every registered one) or a job "
                   "kind (noojee.insert).")
@click.option("--kind", "action", metavar="ACTION",
              help="The destination's action when it has several (noojee: update or insert).")
@click.option("--format", "file_format", type=click.Choice(["csv", "jsonl"]),
              help="Default: by FILE's extension (.csv; .jsonl or .ndjson).")
@click.option("--mapping", type=click.Path(exists=True, dir_okay=False), metavar="FILE.json",
              help='{"file column": "field path", ...}; null or "" ignores the column.')
@click.option("--set", "constants", multiple=True, metavar="FIELD=VALUE",
              help="A value for every row, repeatable: --set template_id=41.")
@click.option("--resume", is_flag=True,
              help="Skip the rows an interrupted run of the same file already submitted.")
@click.option("--dry-run", is_flag=True,
              help="Validate every row and write the rejects file; send nothing (no Redis).")
@click.option("--wait", is_flag=True,
              help="After the last row, wait until every job of the run has ended.")
@click.option("--max-queue-depth", type=click.IntRange(min=0), metavar="N",
              help="Pause while the destination's queue holds N jobs or more (default: "
                   "CONTACTSYNC_BACKFILL__MAX_QUEUE_DEPTH, 10000; 0: never pause).")
@click.option("--version-column", metavar="COLUMN",
              help="The column (JSONL: key) with each row's version of its data, an integer or "
                   "an RFC 3339 timestamp: a row older than what was delivered for its record "
                   "is not sent (superseded).")
def backfill(
    file: str, destination: str, action: str | None, file_format: str | None,
    mapping: str | None, constants: tuple[str, ...], resume: bool, dry_run: bool, wait: bool,
    max_queue_depth: int | None, version_column: str | None,
) -> None:  # fmt: skip
    """Queue one bulk job per row of FILE (CSV or JSONL), streamed in constant memory.

    CSV: the header names a field in each column (after --mapping): a job field by its name
    or its wire name (template_id or fTemplateId), a dotted path into a nested object
    (contact.Phone), or, for Noojee, any other name is a lead field (FirstPhone, Name;
    fields.NAME forces one). A column that names no field stops the backfill before any row is
    read. Empty cells are left out. JSONL: each line is one job's data as a JSON object
    (--mapping renames its top-level keys).

    Every row is validated; a row that fails goes to FILE.rejects.csv (row,field,reason; the
    spreadsheet's row number, or the JSONL line; never the value) and the rest go on. Each row
    is submitted with the idempotency key backfill:RUN:ROW, RUN being a hash of the file, the
    kind, the mapping and the --set values: running the same file again sends no row twice.
    A checkpoint in Redis (cs:backfill:RUN) lets --resume skip what an interrupted run
    submitted. While the destination's queue holds --max-queue-depth jobs, the backfill
    pauses, so a backfill never fills Redis.

    \b
    Example:
      contactsync backfill leads.csv -d noojee --kind update --mapping columns.json \\
          --set template_id=41 --set campaign_id=41 --set allocation_id=38 --wait
    with columns.json: {"Lead": "external_lead_id", "Mobile": "FirstPhone", "Notes": null}

    \b
    Exit status: 0 every row queued (now or by an earlier run), 1 some rows rejected (see
    FILE.rejects.csv), 2 the backfill could not start (nothing sent).
    """
    from pathlib import Path

    from rich import progress as rp

    from producers.backfill import (
        Backfill,
        BackfillError,
        BackfillProgress,
        load_mapping,
        resolve_kind,
        run,
    )

    errors = Console(stderr=True)
    bar = rp.Progress(rp.TextColumn("{task.description:<26}"), rp.BarColumn(),
                      rp.TaskProgressColumn(), rp.TextColumn("{task.fields[figures]}"),
                      rp.TimeElapsedColumn(), console=errors)  # fmt: skip
    task = bar.add_task("starting", total=None, figures="", start=False)
    seen: list[BackfillProgress] = []

    def show(p: BackfillProgress) -> None:
        if not seen:
            seen.append(p)
            bar.start()
            bar.start_task(task)
        figures = (f"{p.rows_read:,} read  {p.enqueued:,} enqueued  {p.already_queued:,} "
                   f"already queued  {p.rejected:,} rejected  {p.rows_per_s:,.0f} rows/s")
        if p.jobs:
            figures += f"  {p.jobs['delivered'] + p.jobs['merged']:,} delivered"
        if p.phase == "waiting":
            ended = p.jobs["jobs"] - p.jobs["pending"]
            bar.update(task, description=f"delivering ({p.jobs['pending']:,} to go)",
                       total=max(p.jobs["jobs"], 1), completed=ended, figures=figures)
            return
        described = {"hashing": "hashing the file", "done": "done",
                     "reading": "validating" if dry_run else "sending",
                     "paused": f"paused: queue {p.queue_depth or 0:,} ≥ {p.queue_cap:,}"}
        bar.update(task, description=described[p.phase], total=max(p.bytes_total, 1),
                   completed=p.bytes_read, figures=figures)  # fmt: skip

    def note(text: str) -> None:
        errors.print(f"[yellow]note:[/yellow] {escape(text)}")

    try:
        spec = Backfill(
            path=Path(file), kind=resolve_kind(destination, action), format=file_format,
            mapping=load_mapping(Path(mapping)) if mapping else {},
            constants=_pairs(constants, "--set"), resume=resume, dry_run=dry_run, wait=wait,
            max_queue_depth=max_queue_depth, version_column=version_column,
        )  # fmt: skip
        try:
            result = run(spec, show, note)
        finally:
            bar.stop()
    except BackfillError as exc:
        _fail(str(exc))
        return
    except KeyboardInterrupt:
        done = f" after row {seen[0].last_row}" if seen and seen[0].last_row else ""
        console.print("interrupted" if dry_run else f"interrupted{done}: run the same command "
                      "with --resume to go on from there")  # fmt: skip
        sys.exit(130)
    _print_backfill(result, dry_run)
    if not result.ok:
        sys.exit(1)


def _print_backfill(result: Any, dry_run: bool) -> None:
    from producers.backfill import checkpoint_key
    from worker.settings import get_settings

    title = f"{'dry run' if dry_run else 'backfill'} {result.run_id} ({result.kind})"
    table = Table(show_header=False, box=None, title=title, title_justify="left")
    rejected = f"{result.rejected:,}"
    if result.rejects_path is not None:
        rejected += f"  (rows and reasons in {result.rejects_path})"
    rows = [("rows read", f"{result.rows_read:,}")]
    if result.resumed_after:
        rows.append(("resumed", f"after row {result.resumed_after:,} ({result.skipped:,} rows "
                                "submitted before, counted here)"))  # fmt: skip
    if not dry_run:
        rows += [("enqueued", f"{result.enqueued:,}"),
                 ("already queued", f"{result.already_queued:,} (by an earlier run)")]
    rows += [("rejected", rejected), ("rows/s", f"{result.rows_per_s:,.0f}")]
    if result.pauses:
        rows.append(("paused", f"{result.pauses} time(s), {result.paused_s:.1f} s in all "
                               "(the queue was at its cap)"))  # fmt: skip
    if result.jobs:
        jobs = result.jobs
        merged = f" (+{jobs['merged']:,} merged into them)" if jobs["merged"] else ""
        superseded = f", {jobs['superseded']:,} superseded" if jobs["superseded"] else ""
        rows.append(("jobs", f"{jobs['delivered']:,} delivered{merged}, {jobs['review']:,} in "
                             f"review, {jobs['rejected']:,} rejected{superseded}, "
                             f"{jobs['pending']:,} on their way"))
    for label, value in rows:
        table.add_row(f"  [bold]{label}[/bold]", escape(value))
    console.print(table)
    if dry_run:
        console.print("nothing was sent (--dry-run)")
        return
    key = checkpoint_key(get_settings().key_prefix, result.run_id)
    console.print(f"interrupted runs: the same command with --resume skips what was submitted "
                  f"(checkpoint: Redis hash {key}); running it again sends no row twice.\n"
                  "jobs that did not deliver: `contactsync review list`, `contactsync rejected "
                  "list`", highlight=False, markup=False)  # fmt: skip


# -- the ledger ---------------------------------------------------------------------------------
def _ledger() -> Any:
    from worker.runtime import ledger

    return ledger()


def _show_job(job_id: str, reveal: bool) -> None:
    from tasks.models import load_kinds, model_for
    from worker.codec import unseal
    from worker.reports import order_rows

    load_kinds()
    record = _ledger().get(job_id, with_history=True)
    if record is None:
        _fail(f"no job {job_id} (unknown id, or its record expired after the retention period)")
    facts = _ledger().order_facts(record)
    table = Table(show_header=False, box=None)
    for label, value in [
        ("job", record.id), ("kind", record.kind), ("state", record.state),
        ("record", record.entity or "-"), ("version", record.version or "-"),
        *order_rows(facts, _when),
        ("priority", record.priority), ("client", record.client or "-"),
        ("submitted", _when(record.submitted_at_ms)), ("updated", _when(record.updated_at_ms)),
        ("attempts", str(record.attempts)), ("faults", str(record.faults)),
        ("last answer", f"{record.last_code} {record.last_reason}".strip() or "-"),
        ("next attempt", _when(record.next_attempt_at_ms) if record.state == "retrying" else "-"),
        ("retry until", _when(record.retry_until_ms)),
    ]:  # fmt: skip
        table.add_row(f"[bold]{label}[/bold]", escape(value))
    console.print(table)
    if record.payload:
        job = model_for(record.kind).model_validate_json(unseal(record.payload))
        shown = job.model_dump(mode="json", exclude_none=True) if reveal else job.masked()
        console.print("[bold]payload[/bold]" + ("" if reveal else " (masked; --reveal shows it)"))
        console.print_json(json.dumps(shown))
    else:
        console.print("[bold]payload[/bold] dropped after delivery")
    console.print("[bold]history[/bold] (newest first)")
    if not record.history and record.state == "delivered":
        console.print("  a bulk job delivered at its first attempt (the ledger keeps no more)")
    for entry in record.history:
        at = _when(entry.pop("at", 0))
        event = entry.pop("event", "")
        details = " ".join(f"{k}={v}" for k, v in entry.items() if v not in ("", None))
        console.print(f"  {at}  {event:<10} {details}", highlight=False, markup=False)


@main.group(invoke_without_command=True)
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """Job counts by state (`jobs show ID` for one job)."""
    if ctx.invoked_subcommand is None:
        counts = _ledger().counts()
        table = Table("state", "jobs", caption="delivered, merged, superseded: every job so far "
                      "(records expire after the retention; the counts do not). held: waiting "
                      "for an earlier job of the same record")  # fmt: skip
        for state, n in counts.items():
            table.add_row(state, str(n))
        console.print(table)


@jobs.command("show")
@click.argument("job_id")
@click.option("--reveal", is_flag=True, help="Show personal data in the payload unmasked.")
def jobs_show(job_id: str, reveal: bool) -> None:
    """A job's state, attempts, answers and (masked) payload."""
    _show_job(job_id, reveal)


def _listing(name: str, limit: int, offset: int) -> None:
    ledger = _ledger()
    rows = ledger.listing(name, offset, limit)
    table = Table("job", "since", "kind", "record", "attempts", "reason", title=f"{name}: "
                  f"{ledger.size(name)} job(s)")  # fmt: skip
    records = ledger.get_many([job_id for job_id, _ in rows])
    for (job_id, at), record in zip(rows, records, strict=True):
        if record is not None:
            table.add_row(job_id, _when(at), record.kind, escape(record.entity or "-"),
                          str(record.attempts),
                          escape(f"{record.last_code} {record.last_reason}"))  # fmt: skip
    console.print(table)


@main.group()
def review() -> None:
    """The manual-review queue: jobs a person must decide on (Noojee 110, unknown answers)."""


@review.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
def review_list(limit: int, offset: int) -> None:
    """Jobs waiting for review, oldest first."""
    _listing("review", limit, offset)


@review.command("show")
@click.argument("job_id")
@click.option("--reveal", is_flag=True, help="Show personal data in the payload unmasked.")
def review_show(job_id: str, reveal: bool) -> None:
    """The job's payload, every attempt and the destination's answers."""
    _show_job(job_id, reveal)


@review.command("requeue")
@click.argument("job_id")
@click.option("--set", "changes", multiple=True, metavar="FIELD=VALUE",
              help="Edit before requeueing, repeatable: a job field (disposition=Sale) or a lead "
                   "field (FirstPhone=0383218199).")  # fmt: skip
@click.option("--by", default=getpass.getuser, help="Who resolves it (recorded).")
@click.option("--force", is_flag=True,
              help="Send it even though a newer job of the same record was delivered since: "
                   "it overwrites that newer data (recorded).")  # fmt: skip
def review_requeue(job_id: str, changes: tuple[str, ...], by: str, force: bool) -> None:
    """Send a job in review (or rejected) to its destination again, optionally edited.

    It joins the end of its record's line: it waits for any job of the same record pending
    before it. Refused if a newer job of the record was delivered since, unless --force."""
    from producers.review import JobValidationError, LedgerConflict, requeue

    try:
        state = requeue(job_id, _pairs(changes, "--set"), by, force=force)
    except (JobValidationError, LedgerConflict) as exc:
        _fail(f"{exc}\nthe job was not requeued.")
        return
    if state == "held":
        console.print(f"requeued {job_id}: held behind earlier jobs of the same record")
    else:
        console.print(f"requeued {job_id}")


@review.command("discard")
@click.argument("job_id")
@click.option("--reason", required=True, help="Why it is discarded (recorded).")
@click.option("--by", default=getpass.getuser, help="Who resolves it (recorded).")
def review_discard(job_id: str, reason: str, by: str) -> None:
    """Give up on a job in review: it ends rejected, with your reason."""
    from producers.review import LedgerConflict, discard

    try:
        discard(job_id, reason, by)
    except (LedgerConflict, ValueError) as exc:
        _fail(str(exc))
    console.print(f"discarded {job_id}")


@main.group()
def payloads() -> None:
    """Payload encryption at rest (CONTACTSYNC_PAYLOAD_KEYS; see `payloads new-key`)."""


@payloads.command("new-key")
def payloads_new_key() -> None:
    """Print a fresh key: put it first in CONTACTSYNC_PAYLOAD_KEYS ('{"k2": "NEW", "k1": ...}')
    on every process, the old keys after it."""
    from worker.codec import new_key

    click.echo(new_key())


@payloads.command("reseal")
def payloads_reseal() -> None:
    """Seal every stored payload again with the first key of CONTACTSYNC_PAYLOAD_KEYS (or open
    them all, with no key), so the keys after it can be dropped: the second half of a key
    rotation. Safe while workers run: a job that changes meanwhile is left as they wrote it
    (with the first key already)."""
    from worker.codec import payload_codec
    from worker.payload_store import reseal_all

    done = reseal_all(_ledger(), payload_codec())
    key = "the first key" if payload_codec().enabled else "no key (plaintext)"
    console.print(f"{done.changed:,} job(s) sealed again with {key}, {done.kept:,} already "
                  f"were, {done.skipped:,} changed meanwhile (and so are)")  # fmt: skip


@main.group()
def rejected() -> None:
    """Dead-lettered jobs and why (`review requeue ID` sends one again after a fix)."""


@rejected.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
def rejected_list(limit: int, offset: int) -> None:
    """Rejected jobs with their reasons, oldest first."""
    _listing("rejected", limit, offset)


# -- the gates ----------------------------------------------------------------------------------
BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(
    values: Sequence[float | None], lo: float | None = None, hi: float | None = None
) -> str:
    """One block per value, from ▁ at ``lo`` to █ at ``hi`` (default: the values' own min and
    max); ``None`` (nothing known) is a space, and a flat line sits at mid-height."""
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    lo = min(known) if lo is None else lo
    hi = max(known) if hi is None else hi
    top = len(BLOCKS) - 1
    chars = []
    for v in values:
        if v is None:
            chars.append(" ")
        elif hi <= lo:
            chars.append(BLOCKS[top // 2])
        else:
            chars.append(BLOCKS[max(0, min(top, round((v - lo) / (hi - lo) * top)))])
    return "".join(chars)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _chart(status: GateStatus, now_ms: int, minutes: int) -> str:
    if not status.history:
        if not status.adaptive:
            return f"fixed at {status.limit}"
        return "nothing measured yet (a point per window of calls)"
    start = now_ms - minutes * 60_000
    # The limit now ends the line: a changed setting moves it without a window closing.
    points = [*status.history, (now_ms, status.limit, float(status.held))]
    shown = [limit for at, limit, _ in points if start <= at <= now_ms]
    before = [limit for at, limit, _ in points if at < start]
    shown += before[-1:]
    lo, hi = min(shown), max(shown)
    line = sparkline(limit_columns(points, start, now_ms + 1), lo, hi)
    return f"{line}  min {lo} max {hi}"


def _print_gate(status: GateStatus, now_ms: int, minutes: int) -> None:
    mode = f"adaptive, max {status.maximum}" if status.adaptive else "fixed"
    waiting = status.waiting
    title = f"[bold]{escape(status.name)}[/bold]  {escape(status.target or '(no target)')}"
    table = Table(show_header=False, box=None, title=title, title_justify="left")
    for label, value in [
        ("limit", f"{status.limit} ({mode})"),
        ("in flight", str(status.held)),
        ("waiting", f"{waiting.get('realtime', 0)} realtime, {waiting.get('bulk', 0)} bulk"),
        ("latency floor", _ms(status.floor_ms)),
        ("latency p50 / p95", f"{_ms(status.p50_ms)} / {_ms(status.p95_ms)}"),
        ("busy answers", f"{status.busy_last_minute} in the last minute, "
                         f"{status.busy_total} in total"),
        ("expired leases", f"{status.expired_total} in total"),
        (f"limit, last {minutes} min", _chart(status, now_ms, minutes)),
    ]:  # fmt: skip
        table.add_row(f"  {label}", escape(value))
    console.print(table)
    console.print()


@main.group(invoke_without_command=True)
@click.pass_context
def gate(ctx: click.Context) -> None:
    """The concurrency gates: how many calls the fleet has in flight to each destination
    (`gate` alone: the status of every gate; `gate status --help` explains the figures)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(gate_status)


@gate.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, history included.")
@click.option("--minutes", default=10, show_default=True, type=click.IntRange(1, 24 * 60),
              help="How far back the limit chart (and the JSON history) goes.")  # fmt: skip
def gate_status(name: str | None, as_json: bool, minutes: int) -> None:
    """Each gate's figures, fleet-wide, read from Redis. NAME is a gate (noojee:3f2a9c1e0b)
    or a destination (noojee: all its gates); without it, every gate.

    \b
    limit              permits the fleet may hold now; adaptive: learnt from latency and busy
                       answers, never above max; fixed: always max
    in flight          permits held now: calls running against the destination
    waiting            calls waiting for a permit; realtime ones are served before bulk
    latency floor      adaptive: the typical (geometric mean) latency at the highest limit
                       verified to queue nothing: the destination's own service time
    latency p50 / p95  median and 95th percentile of the calls answered in the last minute
    busy answers       "too busy" answers (Noojee 109), in the last minute and in total
    expired leases     permits that came back because their holder stopped renewing them
                       (a worker killed mid-call), in total
    limit chart        the limit over the last --minutes, one column per 1/60 of it showing
                       the highest limit in that slice, with the lowest and highest beside it
                       (a gate keeps its last 1440 windows: at full load, about 12 minutes)
    """
    from worker.broker import redis_client
    from worker.gate import gate_names, read_status
    from worker.reports import gate_json
    from worker.settings import get_settings

    client = redis_client()
    prefix = get_settings().key_prefix
    names = gate_names(client, prefix)
    if name is not None:
        picked = [n for n in names if n == name or n.startswith(f"{name}:")]
        if names and not picked:
            _fail(f"no gate {name}; the gates are: {', '.join(names)}")
        names = picked
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    statuses = [read_status(client, f"{prefix}gate:{n}:", n) for n in names]
    if as_json:
        since = now_ms - minutes * 60_000
        gates = [gate_json(s, since) for s in statuses]
        click.echo(json.dumps({"now_ms": now_ms, "minutes": minutes, "gates": gates}, indent=2))
        return
    if not statuses:
        console.print("no gates yet: a destination's gate appears in Redis with its first "
                      "delivery (`contactsync jobs` shows whether any job ran)")  # fmt: skip
        return
    for status in statuses:
        _print_gate(status, now_ms, minutes)


if __name__ == "__main__":
    main()
