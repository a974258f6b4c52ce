"""The `contactsync` command: run the system, submit jobs, read the ledger, resolve reviews.

The front door: it may import anything, lazily, so `celery -A worker` stays light; nothing
imports it.
"""

from __future__ import annotations

import getpass
import json
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stop_on_signals() -> None:
    """Let SIGTERM (docker stop, systemd) and SIGINT stop `up` and `demo` cleanly. SIGINT is set
    explicitly: a shell script that starts us in the background leaves it ignored."""

    def interrupt(signum: int, frame: object) -> None:
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

        try:
            return super().invoke(ctx)
        except ValidationError as exc:
            lines = [f"  {_variable(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors(include_input=False, include_url=False)]  # fmt: skip
            _fail("invalid configuration (CONTACTSYNC_* variables or .env):\n" + "\n".join(lines))
        except SettingsError as exc:  # e.g. a nested variable set to malformed JSON
            _fail(f"invalid configuration: {exc}; nested settings take JSON, or set each field "
                  "with its own variable (CONTACTSYNC_NOOJEE__API_KEY=...)")  # fmt: skip
        except RedisNotConfigured as exc:
            _fail(str(exc))
        except RedisConnectionError:
            from worker.broker import redis_url
            from worker.settings import mask_url_password

            _fail(f"cannot reach Redis at {mask_url_password(redis_url())}: start the system with "
                  "`contactsync up`, or set CONTACTSYNC_REDIS_URL to a running server")  # fmt: skip


def _variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable behind a settings field: ("noojee", "api_key") →
    CONTACTSYNC_NOOJEE__API_KEY (a model-wide check names its variables in its message)."""
    if not loc:
        return "settings"
    return "CONTACTSYNC_" + "__".join(str(part).upper() for part in loc)


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
    """Run everything: embedded Redis (unless CONTACTSYNC_REDIS_URL is set), the Noojee
    simulator (unless CONTACTSYNC_NOOJEE__BASE_URL is set), workers and Flower. Ctrl-C stops
    it all."""
    from worker.settings import get_settings
    from worker.stack import Stack

    _stop_on_signals()
    stack = Stack(get_settings().data_dir, workers=workers)
    try:
        with console.status("starting contactsync..."):
            stack.start()
        _print_stack(stack)
        console.print("Ctrl-C stops everything.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stack.stop()


def _print_stack(stack: Any) -> None:
    from worker.broker import redis_url
    from worker.settings import mask_url_password

    user, password = stack.flower_credentials[0], stack.flower_password_shown
    console.print(f"redis      {mask_url_password(redis_url())}  (data under {stack.data_dir})")
    if stack.simulator_url:
        console.print(f"noojee     {stack.simulator_url}  (simulator)")
    console.print(f"workers    {stack.workers}, logs under {stack.log_dir}")
    if stack.flower_url:
        console.print(f"flower     {stack.flower_url}  user [bold]{user}[/bold] "
                      f"password [bold]{password}[/bold]")  # fmt: skip


@main.command()
@click.option("--jobs", "count", default=300, show_default=True, help="Sample updates to send.")
@click.option("--linger/--no-linger", default=None,
              help="Keep the system running after the table (default: only on a terminal).")
def demo(count: int, linger: bool | None) -> None:
    """Start the whole system, deliver a realistic sample through it, and print what happened."""
    from worker.demo import run_demo

    _stop_on_signals()
    run_demo(console, count, sys.stdout.isatty() if linger is None else linger)


@main.group()
def sandbox() -> None:
    """Destination simulators, for trying contactsync without the real systems."""


@sandbox.command(
    "noojee",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.pass_context
def sandbox_noojee(ctx: click.Context) -> None:
    """The Noojee CampaignAPI simulator, e.g. `--slots 4 --port 8081` (`--help` lists all)."""
    from sandbox.noojee import main as simulator

    sys.exit(simulator(list(ctx.args)))


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
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@main.group()
def submit() -> None:
    """Submit one job, validated before anything is queued."""


def _submit(kind: str, opts: dict[str, Any]) -> None:
    import tasks.noojee  # noqa: F401  (registers the Noojee job kinds)
    from producers import submit as submit_job
    from tasks.models import JobValidationError, validate_job

    data: dict[str, Any] = {
        "template_id": opts["template_id"], "campaign_id": opts["campaign_id"],
        "allocation_id": opts["allocation_id"], "external_lead_id": opts["lead_id"],
        "disposition": opts["disposition"], "callback_date": opts["callback_date"],
        "priority": opts["lead_priority"], "contact_hours": opts["contact_hours"],
        "fields": _pairs(opts["fields"], "--field"),
    }  # fmt: skip
    data = {k: v for k, v in data.items() if v is not None}
    try:
        job = validate_job(kind, data)
    except JobValidationError as exc:
        _fail(f"{exc}\nnothing was queued.")
        return
    job_id = submit_job(job, priority="bulk" if opts["bulk"] else "realtime",
                        idempotency_key=opts["idempotency_key"], client="cli")  # fmt: skip
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


# -- the ledger ---------------------------------------------------------------------------------
def _ledger() -> Any:
    from worker.runtime import ledger

    return ledger()


def _show_job(job_id: str, reveal: bool) -> None:
    from tasks.models import model_for

    _load_kinds()
    record = _ledger().get(job_id, with_history=True)
    if record is None:
        _fail(f"no job {job_id} (unknown id, or its record expired after the retention period)")
    table = Table(show_header=False, box=None)
    for label, value in [
        ("job", record.id), ("kind", record.kind), ("state", record.state),
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
        job = model_for(record.kind).model_validate_json(record.payload)
        shown = job.model_dump(mode="json", exclude_none=True) if reveal else job.masked()
        console.print("[bold]payload[/bold]" + ("" if reveal else " (masked; --reveal shows it)"))
        console.print_json(json.dumps(shown))
    else:
        console.print("[bold]payload[/bold] dropped after delivery")
    console.print("[bold]history[/bold] (newest first)")
    for entry in record.history:
        at = _when(entry.pop("at", 0))
        event = entry.pop("event", "")
        details = " ".join(f"{k}={v}" for k, v in entry.items() if v not in ("", None))
        console.print(f"  {at}  {event:<10} {details}", highlight=False, markup=False)


def _load_kinds() -> None:
    import importlib

    from worker.app import destinations

    for name in destinations():
        importlib.import_module(f"tasks.{name}")


@main.group(invoke_without_command=True)
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """Job counts by state (`jobs show ID` for one job)."""
    if ctx.invoked_subcommand is None:
        counts = _ledger().counts()
        table = Table("state", "jobs", caption="delivered: every job delivered so far (records "
                      "expire after the retention; the count does not)")  # fmt: skip
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
    table = Table("job", "since", "kind", "attempts", "reason", title=f"{name}: "
                  f"{ledger.size(name)} job(s)")  # fmt: skip
    for job_id, at in rows:
        record = ledger.get(job_id)
        if record is not None:
            table.add_row(job_id, _when(at), record.kind, str(record.attempts),
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
def review_requeue(job_id: str, changes: tuple[str, ...], by: str) -> None:
    """Send a job in review (or rejected) to its destination again, optionally edited."""
    from producers.review import JobValidationError, LedgerConflict, requeue

    _load_kinds()
    try:
        requeue(job_id, _pairs(changes, "--set"), by)
    except (JobValidationError, LedgerConflict) as exc:
        _fail(f"{exc}\nthe job was not requeued.")
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
def rejected() -> None:
    """Dead-lettered jobs and why (`review requeue ID` sends one again after a fix)."""


@rejected.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
def rejected_list(limit: int, offset: int) -> None:
    """Rejected jobs with their reasons, oldest first."""
    _listing("rejected", limit, offset)


if __name__ == "__main__":
    main()
