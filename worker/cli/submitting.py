"""`contactsync submit`: one job of any registered kind from the command line."""

from __future__ import annotations

import json
from typing import Any

import click

from worker.cli.common import Registered, console, fail, fill_later, main, pairs


def _noojee_options(func: Any) -> Any:
    options = [
        click.option("--template-id", type=int, required=True, help="fTemplateId"),
        click.option("--campaign-id", type=int, required=True, help="fCampaignId"),
        click.option("--allocation-id", type=int, required=True, help="fAllocationId"),
        click.option("--lead-id", required=True, help="njExternalLeadId"),
        click.option(
            "--disposition",
            help="njDisposition (required on update; <No Change> keeps the current one)",
        ),
        click.option("--callback-date", help="njCallBackDate, yyyy/MM/dd HH:mm"),
        click.option("--priority", "lead_priority", type=int, help="njPriority, 0-100"),
        click.option("--contact-hours", help="njContactHours (timezone name)"),
        click.option(
            "--field",
            "fields",
            multiple=True,
            metavar="NAME=VALUE",
            help="A lead field, repeatable; at least one ...Phone field.",
        ),
        click.option("--bulk", is_flag=True, help="Submit as bulk (default realtime)."),
        click.option("--idempotency-key", help="Same key twice: delivered once."),
        click.option(
            "--version",
            "version",
            metavar="V",
            help="Your version of this data (integer, or RFC 3339 timestamp with its "
            "offset): older than one delivered for the lead → not sent.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.group(cls=Registered)
def submit() -> None:
    """Submit one job, validated before anything is queued."""


def _submit(kind: str, opts: dict[str, Any]) -> None:
    data: dict[str, Any] = {
        "template_id": opts["template_id"],
        "campaign_id": opts["campaign_id"],
        "allocation_id": opts["allocation_id"],
        "external_lead_id": opts["lead_id"],
        "disposition": opts["disposition"],
        "callback_date": opts["callback_date"],
        "priority": opts["lead_priority"],
        "contact_hours": opts["contact_hours"],
        "fields": pairs(opts["fields"], "--field"),
    }
    _queue(kind, {k: v for k, v in data.items() if v is not None}, opts)


def _queue(kind: str, data: dict[str, Any], opts: dict[str, Any]) -> None:
    from producers import submit as submit_job
    from tasks.models import JobValidationError, validate_job

    try:
        job = validate_job(kind, data)
    except JobValidationError as exc:
        fail(f"{exc}\nnothing was queued.")
        return
    try:
        job_id = submit_job(
            job,
            priority="bulk" if opts["bulk"] else "realtime",
            idempotency_key=opts["idempotency_key"],
            client="cli",
            version=opts["version"],
        )
    except ValueError as exc:
        fail(f"{exc}\nnothing was queued.")
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

    @submit.command(
        kind.replace(".", "-").replace("_", "-"),
        help=f"{summary} (`{kind}`; the fields as the intake takes them).",
    )
    @click.option(
        "--job",
        "job_json",
        required=True,
        metavar="JSON",
        help="The job's fields, a JSON object; @FILE reads it from FILE.",
    )
    @click.option("--bulk", is_flag=True, help="Submit as bulk (default realtime).")
    @click.option("--idempotency-key", help="Same key twice: delivered once.")
    @click.option(
        "--version",
        "version",
        metavar="V",
        help="Your version of this data (integer, or RFC 3339 timestamp with its "
        "offset): older than one delivered for the record → not sent.",
    )
    def run(job_json: str, **opts: Any) -> None:
        from pathlib import Path

        text = Path(job_json[1:]).read_text() if job_json.startswith("@") else job_json
        try:
            data = json.loads(text)
        except ValueError as exc:  # the message names a position, never the text
            fail(
                f"--job is not JSON ({exc.__class__.__name__} at character "
                f"{getattr(exc, 'pos', '?')}); nothing was queued."
            )
            return
        if not isinstance(data, dict):
            fail("--job must be a JSON object of the job's fields; nothing was queued.")
        _queue(kind, data, opts)


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


fill_later(submit, _kind_commands)
