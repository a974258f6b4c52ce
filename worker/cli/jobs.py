"""`contactsync jobs`, `review`, `rejected` and `payloads`: reading the ledger and resolving
the jobs that need a person."""

from __future__ import annotations

import getpass
import json
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from worker.cli.common import console, fail, main, pairs
from worker.reports import when


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
        fail(f"no job {job_id} (unknown id, or its record expired after the retention period)")
    facts = _ledger().order_facts(record)
    table = Table(show_header=False, box=None)
    for label, value in [
        ("job", record.id),
        ("kind", record.kind),
        ("state", record.state),
        ("record", record.entity or "-"),
        ("version", record.version or "-"),
        *order_rows(facts, when),
        ("priority", record.priority),
        ("client", record.client or "-"),
        ("submitted", when(record.submitted_at_ms)),
        ("updated", when(record.updated_at_ms)),
        ("attempts", str(record.attempts)),
        ("faults", str(record.faults)),
        ("last answer", f"{record.last_code} {record.last_reason}".strip() or "-"),
        ("next attempt", when(record.next_attempt_at_ms) if record.state == "retrying" else "-"),
        ("retry until", when(record.retry_until_ms)),
    ]:
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
        at = when(entry.pop("at", 0))
        event = entry.pop("event", "")
        details = " ".join(f"{k}={v}" for k, v in entry.items() if v not in ("", None))
        console.print(f"  {at}  {event:<10} {details}", highlight=False, markup=False)


@main.group(invoke_without_command=True)
@click.pass_context
def jobs(ctx: click.Context) -> None:
    """Job counts by state (`jobs show ID` for one job)."""
    if ctx.invoked_subcommand is None:
        counts = _ledger().counts()
        table = Table(
            "state",
            "jobs",
            caption="delivered, merged, superseded: every job so far "
            "(records expire after the retention; the counts do not). held: waiting "
            "for an earlier job of the same record",
        )
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
    table = Table(
        "job",
        "since",
        "kind",
        "record",
        "attempts",
        "reason",
        title=f"{name}: {ledger.size(name)} job(s)",
    )
    records = ledger.get_many([job_id for job_id, _ in rows])
    for (job_id, at), record in zip(rows, records, strict=True):
        if record is not None:
            table.add_row(
                job_id,
                when(at),
                record.kind,
                escape(record.entity or "-"),
                str(record.attempts),
                escape(f"{record.last_code} {record.last_reason}"),
            )
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
@click.option(
    "--set",
    "changes",
    multiple=True,
    metavar="FIELD=VALUE",
    help="Edit before requeueing, repeatable: a job field (disposition=Sale) or a lead "
    "field (FirstPhone=0383218199).",
)
@click.option("--by", default=getpass.getuser, help="Who resolves it (recorded).")
@click.option(
    "--force",
    is_flag=True,
    help="Send it even though a newer job of the same record was delivered since: "
    "it overwrites that newer data (recorded).",
)
def review_requeue(job_id: str, changes: tuple[str, ...], by: str, force: bool) -> None:
    """Send a job in review (or rejected) to its destination again, optionally edited.

    It joins the end of its record's line: it waits for any job of the same record pending
    before it. Refused if a newer job of the record was delivered since, unless --force."""
    from producers.review import JobValidationError, LedgerConflict, requeue

    try:
        state = requeue(job_id, pairs(changes, "--set"), by, force=force)
    except (JobValidationError, LedgerConflict) as exc:
        fail(f"{exc}\nthe job was not requeued.")
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
        fail(str(exc))
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
    console.print(
        f"{done.changed:,} job(s) sealed again with {key}, {done.kept:,} already "
        f"were, {done.skipped:,} changed meanwhile (and so are)"
    )


@main.group()
def rejected() -> None:
    """Dead-lettered jobs and why (`review requeue ID` sends one again after a fix)."""


@rejected.command("list")
@click.option("--limit", default=50, show_default=True)
@click.option("--offset", default=0, show_default=True)
def rejected_list(limit: int, offset: int) -> None:
    """Rejected jobs with their reasons, oldest first."""
    _listing("rejected", limit, offset)
