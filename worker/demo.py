"""`contactsync demo`: the whole system on the embedded default, fed a realistic sample.

A few hundred Noojee lead updates, among them leads the PBX answers busy (109) before accepting,
leads a person is editing (110), a lead on the do-not-call list (104), a lead that does not exist
(101) and a job refused at the door; a live progress bar; then a table of where every job ended.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from worker.ledger import TERMINAL
from worker.settings import get_settings
from worker.stack import Stack

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
        fields = {"FirstPhone": f"03 9{rng.randrange(10**7):07d}", "Name": f"{first} {last}",
                  "Email": f"{first}.{last}@example.com".lower()}  # fmt: skip
        jobs.append(NoojeeLeadUpdate(
            template_id=41, campaign_id=41, allocation_id=38, external_lead_id=lead,
            disposition=rng.choice(DISPOSITIONS), priority=rng.randrange(5, 30), fields=fields,
            callback_date=f"2026/12/{rng.randrange(1, 29):02d} {rng.randrange(9, 17):02d}:30",
        ))  # fmt: skip
    return jobs, scripts


def run_demo(console: Console, count: int, linger: bool) -> None:
    # Sandboxed, under its own data dir: sample jobs never reach a configured Redis or PBX, and
    # the demo runs beside a `contactsync up` without touching its ledger.
    stack = Stack(get_settings().data_dir / "demo", sandboxed=True,
                  simulator_args=["--slots", "4", "--latency", "0.1"])  # fmt: skip
    with console.status("starting embedded Redis, the Noojee simulator, a worker and Flower..."):
        stack.start()
    try:
        _run(console, stack, count)
        if linger:
            url = stack.env["CONTACTSYNC_REDIS_URL"]
            console.print(
                "\nThe system keeps running so you can look around; Ctrl-C stops it. In another "
                f"terminal:\n  export CONTACTSYNC_REDIS_URL={url}\n  contactsync review list"
                "\n  contactsync review show JOB_ID\n  contactsync review requeue JOB_ID",
                highlight=False,
            )
            while True:
                time.sleep(3600)
        else:
            console.print("`contactsync demo --linger` keeps the system running afterwards, to "
                          "look around in Flower and resolve the review jobs.")  # fmt: skip
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping..."):
            stack.stop()


def _run(console: Console, stack: Stack, count: int) -> None:
    from producers import submit
    from tasks.models import JobValidationError, validate_job
    from worker.runtime import ledger

    rng = random.Random(2026)
    jobs, scripts = sample_jobs(count, rng)
    if stack.simulator_url:
        httpx.post(f"{stack.simulator_url}/_script", json={"scripts": scripts}).raise_for_status()
    try:  # a job that cannot succeed never reaches the queue
        validate_job("noojee.update", {
            "template_id": 41, "campaign_id": 41, "allocation_id": 38, "external_lead_id": "X-1",
            "disposition": "Sale", "callback_date": "24/12/2026", "fields": {"Name": "Al Bo"},
        })  # fmt: skip
        refused: list[str] = []
    except JobValidationError as exc:
        refused = [f"{path}: {message}" for path, message in exc.problems]

    book = ledger()
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        sending = progress.add_task("submitted", total=len(jobs), detail="")
        ids = []
        for n, job in enumerate(jobs):
            ids.append(submit(job, priority="realtime" if n % 10 == 0 else "bulk", client="demo"))
            progress.advance(sending)
        settling = progress.add_task("settled  ", total=len(ids), detail="")
        while True:
            with book.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(book.job_key(job_id), "state")
                states = Counter(pipe.execute())
            done = sum(states[s] for s in TERMINAL)
            detail = "  ".join(f"{s} {states[s]}" for s in ("delivered", "retrying", "review",
                                                            "rejected") if states[s])  # fmt: skip
            progress.update(settling, completed=done, detail=detail)
            if done == len(ids) or time.monotonic() - started > 110:
                break
            time.sleep(0.2)
    elapsed = time.monotonic() - started
    _report(console, stack, [book.get(i, with_history=True) for i in ids], refused, elapsed)


def _report(
    console: Console, stack: Stack, records: list[Any], refused: list[str], elapsed: float
) -> None:
    busy = [r for r in records if any(e.get("code") == "109" for e in r.history)]
    by_state: dict[str, Counter[str]] = {s: Counter() for s in ("delivered", "review", "rejected")}
    unsettled = 0
    for record in records:
        if record.state in by_state:
            by_state[record.state][record.last_reason] += 1
        else:
            unsettled += 1
    table = Table(title=f"contactsync demo: {len(records)} Noojee lead updates", show_lines=False)
    table.add_column("outcome")
    table.add_column("jobs", justify="right")
    table.add_column("why")
    table.add_row("[green]delivered[/green]", str(sum(by_state["delivered"].values())), "code 0")
    n109 = sum(1 for r in busy for e in r.history if e.get("code") == "109")
    table.add_row("  of which retried (109)", str(len(busy)),
                  f"{n109} busy answers from the PBX, retried with backoff")  # fmt: skip
    for state, colour in (("review", "yellow"), ("rejected", "red")):
        for reason, n in by_state[state].most_common():
            table.add_row(f"[{colour}]{'in review' if state == 'review' else state}[/{colour}]",
                          str(n), reason)  # fmt: skip
    if refused:
        table.add_row("[red]refused at submit[/red]", "1", "; ".join(refused))
    if unsettled:
        table.add_row("[red]not settled in time[/red]", str(unsettled), "see contactsync jobs")
    table.add_row("elapsed", f"{elapsed:.1f} s", f"{len(records) / elapsed:.0f} jobs/s through "
                  "a PBX with 4 slots of ~100 ms each")  # fmt: skip
    table.add_row("gate", _gate_summary(), "calls in flight the fleet may have, learnt from "
                  "latency and 109s (`contactsync gate status`)")  # fmt: skip
    console.print(table)
    user, password = stack.flower_credentials[0], stack.flower_password_shown
    console.print(f"Flower: {stack.flower_url}  user [bold]{user}[/bold]  password "
                  f"[bold]{password}[/bold]")  # fmt: skip


def _gate_summary() -> str:
    """The Noojee gate's limit now and its range over the run, e.g. ``4 (2-5)``."""
    from worker.broker import redis_client
    from worker.gate import gate_names, read_status

    client, prefix = redis_client(), get_settings().key_prefix
    names = [n for n in gate_names(client, prefix) if n.startswith("noojee")]
    if not names:
        return "-"
    status = read_status(client, f"{prefix}gate:{names[0]}:", names[0])
    limits = [limit for _, limit, _ in status.history] or [status.limit]
    return f"{status.limit} ({min(limits)}-{max(limits)})"
