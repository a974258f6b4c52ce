"""`contactsync gate status`: each gate's limit, calls in flight, waiters, latency and 109s,
with the limit's chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from worker.cli.common import console, fail, main
from worker.reports import limit_columns

if TYPE_CHECKING:
    from worker.gate import GateStatus


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
        (
            "busy answers",
            f"{status.busy_last_minute} in the last minute, {status.busy_total} in total",
        ),
        ("expired leases", f"{status.expired_total} in total"),
        (f"limit, last {minutes} min", _chart(status, now_ms, minutes)),
    ]:
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
@click.option(
    "--minutes",
    default=10,
    show_default=True,
    type=click.IntRange(1, 24 * 60),
    help="How far back the limit chart (and the JSON history) goes.",
)
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
            fail(f"no gate {name}; the gates are: {', '.join(names)}")
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
        console.print(
            "no gates yet: a destination's gate appears in Redis with its first "
            "delivery (`contactsync jobs` shows whether any job ran)"
        )
        return
    for status in statuses:
        _print_gate(status, now_ms, minutes)


if __name__ == "__main__":
    main()
