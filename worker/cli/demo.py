"""`contactsync demo`: the whole system on the embedded default, fed a realistic sample.

Lead updates for Noojee, among them leads the PBX answers busy (109) before accepting, leads a
person is editing (110), a lead on the do-not-call list (104), a lead that does not exist (101)
and a job the intake refuses; and updates for Mission Capital, Trendsic and Expandable, with an
unknown application, a field the CRM refuses, and every token expired half-way through. Some
come in over the HTTP intake as services send them, most as a backfill file. A live progress
bar, then a table of where every job ended, destination by destination.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from typing import Any

import click
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.cli.stack import Stack
from worker.destinations import destination as registry_destination
from worker.destinations import registry
from worker.embedded import running_url
from worker.ledger import TERMINAL
from worker.settings import get_settings

FIRST = ["Jane", "Omar", "Mei", "Tom", "Priya", "Luca", "Ava", "Kofi", "Sara", "Ivan"]
LAST = ["Smith", "Nguyen", "Okafor", "Rossi", "Khan", "Brown", "Silva", "Cohen", "Ito", "Berg"]
DISPOSITIONS = ["Callback", "Sale", "No Answer", "Interested"]


def sample_jobs(count: int, rng: random.Random) -> tuple[list[Any], dict[str, list[int]]]:
    """``count`` updates and the simulator scripts that make some of them interesting."""
    from tasks.noojee import NoojeeLeadUpdate

    scripts: dict[str, list[int]] = {}
    jobs = []
    for n in range(count):
        lead = f"DEMO-{n:05d}"
        if n % 100 == 7:
            # The PBX says it is busy once, then takes it. (Each 109 also halves the adaptive
            # gate's limit, which then climbs back: a few, not dozens, keep the demo quick.)
            scripts[lead] = [109, 0]
        elif n % 50 == 13:
            scripts[lead] = [110, 0]  # an agent is editing this lead right now
        elif n == 42:
            scripts[lead] = [104]  # on the do-not-call list
        elif n == 99:
            scripts[lead] = [101]  # no such lead in the campaign
        first, last = rng.choice(FIRST), rng.choice(LAST)
        fields = {
            "FirstPhone": f"03 9{rng.randrange(10**7):07d}",
            "Name": f"{first} {last}",
            "Email": f"{first}.{last}@example.com".lower(),
        }
        jobs.append(
            NoojeeLeadUpdate(
                template_id=41,
                campaign_id=41,
                allocation_id=38,
                external_lead_id=lead,
                disposition=rng.choice(DISPOSITIONS),
                priority=rng.randrange(5, 30),
                fields=fields,
                callback_date=f"2026/12/{rng.randrange(1, 29):02d} {rng.randrange(9, 17):02d}:30",
            )
        )
    return jobs, scripts


#: The demo's share of jobs for each of the other destinations.
OTHER_SHARE = 0.1
EXPANDABLE_CONTACTS = [("ABCCORP", "JHERNANDEZ"), ("ABCCORP", "MSMITH"), ("XYZINC", "TJONES")]


def salesforce_id(n: int) -> str:
    """An 18-character Salesforce Lead id with its case-checksum suffix."""
    from tasks.missioncapital import id_suffix

    base = f"00QDm{n:05d}Xy8Qa"
    return base + id_suffix(base)


def other_jobs(count: int, rng: random.Random) -> tuple[list[Any], dict[str, list[Any]]]:
    """``count`` jobs for each of Mission Capital, Trendsic and Expandable, and the scripts (one
    admin body per scripted id) that make some of them interesting."""
    from tasks.models import validate_job

    jobs: list[Any] = []
    for n in range(count):
        jobs.append(
            validate_job("missioncapital.contact_user", {"application_id": salesforce_id(n)})
        )
        first, last = rng.choice(FIRST), rng.choice(LAST)
        jobs.append(
            validate_job(
                "trendsic.contact_connection",
                {
                    "contact_id": 1001 + n % 10,
                    "agent_id": 7,
                    "contact": {
                        "FirstName": first,
                        "LastName": last,
                        "Phone": f"(03) 9{rng.randrange(10**7):07d}",
                    },
                },
            )
        )
        customer, person = EXPANDABLE_CONTACTS[n % len(EXPANDABLE_CONTACTS)]
        jobs.append(
            validate_job(
                "expandable.contact_update",
                {
                    "CUSTOMER_ID": customer,
                    "CUST_CONTACT": person,
                    "CONTACT_STATUS": "A",
                    "NOTES": (
                        f"Called {rng.choice(DISPOSITIONS).lower()} on 2026-11-{n % 28 + 1:02d}"
                    ),
                },
            )
        )
    scripts: dict[str, list[Any]] = {
        # Staging and production mixed up: this application does not exist in this org.
        "missioncapital": [{"id": salesforce_id(3), "answers": ["not-found"]}],
        # The CRM's own validation refuses the first update of contact 1004, field by field.
        "trendsic": [{"id": 1004, "answers": ["http-400", "ok"]}],
        # The ERP finds the first request for XYZINC invalid.
        "expandable": [{"id": "XYZINC", "answers": ["http-400", "ok"]}],
    }
    return jobs, scripts


def run_demo(console: Console, count: int, linger: bool) -> None:
    # Sandboxed, under its own data dir: sample jobs never reach a configured Redis or PBX, and
    # the demo runs beside a `contactsync up` without touching its ledger. Each run starts from
    # an empty one: a second run must report what it did, not find the first run's jobs (its
    # backfill's idempotency keys would name them) and report those again.
    sandbox = get_settings().data_dir / "demo"
    if running_url(sandbox):
        raise click.ClickException(
            f"a demo already runs on {sandbox}: stop it first (Ctrl-C in its terminal)"
        )
    shutil.rmtree(sandbox, ignore_errors=True)
    stack = Stack(sandbox, sandboxed=True, simulator_args=["--slots", "4", "--latency", "0.1"])
    with console.status("starting embedded Redis, the Noojee simulator, a worker and Flower..."):
        stack.start()
    try:
        _run(console, stack, count)
        if linger:
            url = stack.env["CONTACTSYNC_REDIS_URL"]
            console.print(
                "\nThe system keeps running so you can look around; Ctrl-C stops it. In another "
                f"terminal:\n  export CONTACTSYNC_REDIS_URL={url}\n  contactsync review list"
                "\n  contactsync review show JOB_ID\n  contactsync review requeue JOB_ID"
                f"\n  curl -H 'Authorization: Bearer {stack.intake_token}' "
                f"{stack.intake_url}/v1/review",
                highlight=False,
            )
            stack.keep_running(
                lambda event: console.print(f"[yellow]{event}[/yellow]", highlight=False)
            )
        else:
            console.print(
                "`contactsync demo --linger` keeps the system running afterwards, to "
                "look around in Flower and resolve the review jobs."
            )
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping..."):
            stack.stop()


def _run(console: Console, stack: Stack, count: int) -> None:
    from worker.runtime import ledger

    rng = random.Random(2026)
    others = max(1, int(count * OTHER_SHARE))
    jobs, scripts = sample_jobs(count - 3 * others, rng)
    more, other_scripts = other_jobs(others, rng)
    _script_simulators(stack, scripts, other_scripts)
    intake = httpx.Client(
        base_url=stack.intake_url,
        timeout=30,
        headers={"Authorization": f"Bearer {stack.intake_token}"},
    )
    refused = _refused(intake)
    started = time.monotonic()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        noojee_ids, other_ids = _submit(stack, intake, progress, jobs, more)
        _settle(stack, progress, noojee_ids, other_ids, len(more), started)
    intake.close()
    elapsed = time.monotonic() - started
    book = ledger()
    records = [book.get(i, with_history=True) for i in noojee_ids + other_ids]
    _report(console, stack, records, refused, elapsed)


def _script_simulators(
    stack: Stack, noojee: dict[str, list[int]], others: dict[str, list[dict[str, Any]]]
) -> None:
    """Tell the simulators which answers to give (busy leads, conflicts, refusals...)."""
    urls = stack.simulator_urls
    if "noojee" in urls:
        httpx.post(f"{urls['noojee']}/_script", json={"scripts": noojee}).raise_for_status()
    for name, bodies in others.items():
        for body in bodies:
            httpx.post(f"{urls[name]}/_script", json=body).raise_for_status()


def _refused(intake: httpx.Client) -> list[str]:
    """A job that cannot succeed never reaches the queue: the intake names every bad field."""
    answer = intake.post(
        "/v1/jobs",
        json={
            "kind": "noojee.update",
            "job": {
                "template_id": 41,
                "campaign_id": 41,
                "allocation_id": 38,
                "external_lead_id": "X-1",
                "disposition": "Sale",
                "callback_date": "24/12/2026",
                "fields": {"Name": "Al Bo"},
            },
        },
    )
    return [f"{e['path']}: {e['reason']}" for e in answer.json().get("errors", [])]


def _submit(
    stack: Stack, intake: httpx.Client, progress: Progress, jobs: list[Any], more: list[Any]
) -> tuple[list[str], list[str]]:
    """Services post every tenth Noojee update and a third of the other destinations' jobs to
    the intake, one request each, as they happen; a script backfills the rest of the Noojee
    updates from a file, and the rest of the others go in with submit_many(). Returns the
    Noojee job ids and the others'."""
    from producers import submit_many

    live_noojee, live_others = [job for n, job in enumerate(jobs) if n % 10 == 0], more[::3]
    live = live_noojee + live_others
    posting = progress.add_task("intake   ", total=len(live), detail="HTTP, realtime")
    posted = []
    for job in live:
        answer = intake.post(
            "/v1/jobs",
            json={"kind": job.kind, "job": job.model_dump(mode="json", exclude_none=True)},
        )
        answer.raise_for_status()
        posted.append(answer.json()["job_id"])
        progress.advance(posting)
    backfilled = [job for n, job in enumerate(jobs) if n % 10]
    filling = progress.add_task("backfill ", total=len(backfilled), detail="")
    noojee_ids = posted[: len(live_noojee)] + _backfill(
        stack,
        backfilled,
        lambda p: progress.update(
            filling, completed=p.rows_read, detail=f"{p.enqueued} enqueued, bulk"
        ),
    )
    other_ids = posted[len(live_noojee) :] + submit_many(
        [job for n, job in enumerate(more) if n % 3], client="demo"
    )
    return noojee_ids, other_ids


def _settle(
    stack: Stack,
    progress: Progress,
    noojee_ids: list[str],
    other_ids: list[str],
    others: int,
    started: float,
) -> None:
    """Watch every job until it ends (or 110 s pass); a third of the way through the other
    destinations' jobs, every token expires: one login each, for the fleet."""
    from worker.runtime import ledger

    book, ids = ledger(), noojee_ids + other_ids
    settling = progress.add_task("settled  ", total=len(ids), detail="")
    expired = False
    while True:
        with book.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(book.job_key(job_id), "state")
            answers = pipe.execute()
        states = Counter(answers)
        done = sum(states[s] for s in TERMINAL)
        detail = "  ".join(f"{s} {states[s]}" for s in SHOWN_STATES if states[s])
        progress.update(settling, completed=done, detail=detail)
        others_done = sum(state in TERMINAL for state in answers[len(noojee_ids) :])
        if not expired and others_done >= others // 3:
            for declared in registry():
                if declared.token_login and declared.name in stack.simulator_urls:
                    url = stack.simulator_urls[declared.name]
                    httpx.post(f"{url}/_expire_tokens").raise_for_status()
            expired = True
        if done == len(ids) or time.monotonic() - started > 110:
            return
        time.sleep(0.2)  # a progress bar's refresh, not synchronisation


#: The states the progress bar counts as they come.
SHOWN_STATES = ("delivered", "merged", "retrying", "review", "rejected")


def _backfill(stack: Stack, jobs: list[Any], progress: Any) -> list[str]:
    """Write ``jobs`` (Noojee updates of one campaign) to a CSV file and backfill it, as a
    script would; returns their job ids (derived from the run's idempotency keys)."""
    import csv

    from producers.backfill import Backfill, run
    from worker.ledger import job_id_for

    path = stack.data_dir / "demo-backfill.csv"
    names = ["external_lead_id", "disposition", "callback_date", "priority"]
    lead_fields = ["FirstPhone", "Name", "Email"]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(names + lead_fields)
        for job in jobs:
            out.writerow([getattr(job, n) for n in names] + [job.fields[n] for n in lead_fields])
    result = run(
        Backfill(
            path,
            "noojee.update",
            max_queue_depth=0,
            constants={"template_id": "41", "campaign_id": "41", "allocation_id": "38"},
        ),
        progress,
    )
    # The spreadsheet's row numbers: the header is row 1.
    return [
        job_id_for("noojee", f"backfill:{result.run_id}:{row}") for row in range(2, len(jobs) + 2)
    ]


def _report(
    console: Console, stack: Stack, records: list[Any], refused: list[str], elapsed: float
) -> None:
    table, details, unsettled = _table(stack, records)
    console.print(table)
    merged = sum(r.state == "merged" for r in records)
    if merged:
        console.print(
            f"  {merged} updates of a record that was already being updated were "
            "merged into one call with it (newest value of each field wins)",
            highlight=False,
        )
    busy = [r for r in records if any(e.get("code") == "109" for e in r.history)]
    n109 = sum(1 for r in busy for e in r.history if e.get("code") == "109")
    pbx = httpx.get(f"{stack.simulator_urls['noojee']}/_stats", timeout=10).json()
    console.print(
        f"  noojee: {len(busy)} leads answered busy (109) {n109} times (the PBX "
        f"counted {pbx['answers'].get('109', 0)} in {pbx['calls']} calls), retried "
        "with backoff, then delivered",
        highlight=False,
    )
    for destination, state, n, reason in details:
        colour = {"review": "yellow", "rejected": "red"}.get(state, "blue")
        console.print(
            f"  {destination}: [{colour}]{n} {state}[/{colour}]: {reason}", highlight=False
        )
    if refused:
        console.print(
            f"  [red]refused by the intake[/red] (422, never queued): {'; '.join(refused)}",
            highlight=False,
        )
    if unsettled:
        console.print(f"  [red]{unsettled} not settled in time[/red]: see `contactsync jobs`")
    console.print(
        f"  {len(records)} jobs settled in {elapsed:.1f} s. Every token expired a "
        "third of the way through and was fetched again once for the whole fleet "
        "(logins, token refreshes included). The gate column is the fleet's limit "
        "of calls in flight now (its range over the run).",
        highlight=False,
    )
    user, password = stack.flower_credentials[0], stack.flower_password_shown
    console.print(
        f"Flower: {stack.flower_url}  user [bold]{user}[/bold]  password [bold]{password}[/bold]"
    )
    console.print(
        f"Intake: {stack.intake_url}  bearer token [bold]{stack.intake_token}[/bold] "
        f"(OpenAPI at {stack.intake_url}/openapi.json)",
        highlight=False,
    )


def _table(stack: Stack, records: list[Any]) -> tuple[Table, list[tuple[str, str, int, str]], int]:
    """Where every job went, destination by destination: (the table, the reasons of the jobs
    that did not deliver, how many have not ended)."""
    table = Table(title=f"contactsync demo: {len(records)} contact updates to four destinations")
    for column, justify in (
        ("destination", "left"),
        ("delivered", "right"),
        ("merged", "right"),
        ("review", "right"),
        ("rejected", "right"),
        ("gate", "left"),
        ("logins", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    details: list[tuple[str, str, int, str]] = []
    unsettled = 0
    for destination in (d.name for d in registry()):
        mine = [r for r in records if r.destination == destination]
        if not mine:
            continue
        states = Counter(r.state for r in mine)
        unsettled += sum(n for state, n in states.items() if state not in TERMINAL)
        for state in ("review", "rejected", "superseded"):
            for reason, n in Counter(r.last_reason for r in mine if r.state == state).items():
                details.append((destination, state, n, reason))
        logins = _logins(stack, destination)
        table.add_row(
            destination,
            str(states["delivered"]),
            str(states["merged"]),
            str(states["review"]),
            str(states["rejected"]),
            _gate_summary(destination),
            "-" if logins is None else str(logins),
        )
    return table, details, unsettled


def _logins(stack: Stack, destination: str) -> int | None:
    """Logins the destination's simulator saw, token refreshes included (None: no login)."""
    url = stack.simulator_urls.get(destination)
    if not (url and registry_destination(destination).token_login):
        return None
    stats = httpx.get(f"{url}/_stats").json()
    return int(stats.get("logins", 0)) + int(stats.get("refreshes", 0))


def _gate_summary(destination: str) -> str:
    """The destination's gate: its limit now and its range over the run, e.g. ``4 (2-5)``."""
    from worker.broker import redis_client
    from worker.gate import gate_names, read_status

    client, prefix = redis_client(), get_settings().key_prefix
    names = [n for n in gate_names(client, prefix) if n.split(":")[0] == destination]
    if not names:
        return "-"
    status = read_status(client, f"{prefix}gate:{names[0]}:", names[0])
    limits = [limit for _, limit, _ in status.history] or [status.limit]
    kind = "adaptive" if status.adaptive else "fixed"
    return f"{status.limit} ({min(limits)}-{max(limits)}, {kind})"
