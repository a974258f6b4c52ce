"""`contactsync backfill`: a CSV or JSON Lines file of jobs, resumable, with its rejects kept."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.cli.common import console, fail, main, pairs


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--destination",
    "-d",
    required=True,
    metavar="NAME|KIND",
    help="A destination (noojee, missioncapital, ...: every registered one) or a job "
    "kind (noojee.insert).",
)
@click.option(
    "--kind",
    "action",
    metavar="ACTION",
    help="The destination's action when it has several (noojee: update or insert).",
)
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["csv", "jsonl"]),
    help="Default: by FILE's extension (.csv; .jsonl or .ndjson).",
)
@click.option(
    "--mapping",
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE.json",
    help='{"file column": "field path", ...}; null or "" ignores the column.',
)
@click.option(
    "--set",
    "constants",
    multiple=True,
    metavar="FIELD=VALUE",
    help="A value for every row, repeatable: --set template_id=41.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Skip the rows an interrupted run of the same file already submitted.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Validate every row and write the rejects file; send nothing (no Redis).",
)
@click.option(
    "--wait", is_flag=True, help="After the last row, wait until every job of the run has ended."
)
@click.option(
    "--max-queue-depth",
    type=click.IntRange(min=0),
    metavar="N",
    help="Pause while the destination's queue holds N jobs or more (default: "
    "CONTACTSYNC_BACKFILL__MAX_QUEUE_DEPTH, 10000; 0: never pause).",
)
@click.option(
    "--version-column",
    metavar="COLUMN",
    help="The column (JSONL: key) with each row's version of its data, an integer or "
    "an RFC 3339 timestamp: a row older than what was delivered for its record "
    "is not sent (superseded).",
)
def backfill(
    file: str,
    destination: str,
    action: str | None,
    file_format: str | None,
    mapping: str | None,
    constants: tuple[str, ...],
    resume: bool,
    dry_run: bool,
    wait: bool,
    max_queue_depth: int | None,
    version_column: str | None,
) -> None:
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
    bar = rp.Progress(
        rp.TextColumn("{task.description:<26}"),
        rp.BarColumn(),
        rp.TaskProgressColumn(),
        rp.TextColumn("{task.fields[figures]}"),
        rp.TimeElapsedColumn(),
        console=errors,
    )
    task = bar.add_task("starting", total=None, figures="", start=False)
    seen: list[BackfillProgress] = []

    def show(p: BackfillProgress) -> None:
        if not seen:
            seen.append(p)
            bar.start()
            bar.start_task(task)
        figures = (
            f"{p.rows_read:,} read  {p.enqueued:,} enqueued  {p.already_queued:,} "
            f"already queued  {p.rejected:,} rejected  {p.rows_per_s:,.0f} rows/s"
        )
        if p.jobs:
            figures += f"  {p.jobs['delivered'] + p.jobs['merged']:,} delivered"
        if p.phase == "waiting":
            ended = p.jobs["jobs"] - p.jobs["pending"]
            bar.update(
                task,
                description=f"delivering ({p.jobs['pending']:,} to go)",
                total=max(p.jobs["jobs"], 1),
                completed=ended,
                figures=figures,
            )
            return
        described = {
            "hashing": "hashing the file",
            "done": "done",
            "reading": "validating" if dry_run else "sending",
            "paused": f"paused: queue {p.queue_depth or 0:,} ≥ {p.queue_cap:,}",
        }
        bar.update(
            task,
            description=described[p.phase],
            total=max(p.bytes_total, 1),
            completed=p.bytes_read,
            figures=figures,
        )

    def note(text: str) -> None:
        errors.print(f"[yellow]note:[/yellow] {escape(text)}")

    try:
        spec = Backfill(
            path=Path(file),
            kind=resolve_kind(destination, action),
            format=file_format,
            mapping=load_mapping(Path(mapping)) if mapping else {},
            constants=pairs(constants, "--set"),
            resume=resume,
            dry_run=dry_run,
            wait=wait,
            max_queue_depth=max_queue_depth,
            version_column=version_column,
        )
        try:
            result = run(spec, show, note)
        finally:
            bar.stop()
    except BackfillError as exc:
        fail(str(exc))
        return
    except KeyboardInterrupt:
        done = f" after row {seen[0].last_row}" if seen and seen[0].last_row else ""
        console.print(
            "interrupted"
            if dry_run
            else f"interrupted{done}: run the same command with --resume to go on from there"
        )
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
        rows.append(
            (
                "resumed",
                f"after row {result.resumed_after:,} ({result.skipped:,} rows "
                "submitted before, counted here)",
            )
        )
    if not dry_run:
        rows += [
            ("enqueued", f"{result.enqueued:,}"),
            ("already queued", f"{result.already_queued:,} (by an earlier run)"),
        ]
    rows += [("rejected", rejected), ("rows/s", f"{result.rows_per_s:,.0f}")]
    if result.pauses:
        rows.append(
            (
                "paused",
                f"{result.pauses} time(s), {result.paused_s:.1f} s in all "
                "(the queue was at its cap)",
            )
        )
    if result.jobs:
        jobs = result.jobs
        merged = f" (+{jobs['merged']:,} merged into them)" if jobs["merged"] else ""
        superseded = f", {jobs['superseded']:,} superseded" if jobs["superseded"] else ""
        rows.append(
            (
                "jobs",
                f"{jobs['delivered']:,} delivered{merged}, {jobs['review']:,} in "
                f"review, {jobs['rejected']:,} rejected{superseded}, "
                f"{jobs['pending']:,} on their way",
            )
        )
    for label, value in rows:
        table.add_row(f"  [bold]{label}[/bold]", escape(value))
    console.print(table)
    if dry_run:
        console.print("nothing was sent (--dry-run)")
        return
    key = checkpoint_key(get_settings().key_prefix, result.run_id)
    console.print(
        f"interrupted runs: the same command with --resume skips what was submitted "
        f"(checkpoint: Redis hash {key}); running it again sends no row twice.\n"
        "jobs that did not deliver: `contactsync review list`, `contactsync rejected "
        "list`",
        highlight=False,
        markup=False,
    )
