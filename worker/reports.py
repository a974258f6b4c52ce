"""How the ledger's and the gates' facts read to a person: the words and figures that the CLI
(`jobs show`, `gate status`) and the operator's console both show, written once.

Presentation only: it reads nothing from Redis and formats what it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.gate import GateStatus

#: Columns of a limit chart: each shows the highest limit of its slice of the time range.
CHART_COLUMNS = 60


def when(ms: int) -> str:
    """An epoch-milliseconds time as UTC text; ``-`` for none."""
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def order_rows(
    facts: dict[str, Any], when: Callable[[int], str] = when, force_hint: str = "--force"
) -> list[tuple[str, str]]:
    """What a job's place among the jobs of its record says (``Ledger.order_facts``), as
    (label, text) rows; ``force_hint`` names how to force a requeue where it is shown."""
    rows = []
    if "merged_into" in facts:
        carrier = facts["merged_into"]
        rows.append(
            (
                "merged into",
                f"{carrier['job_id']} (now {carrier['state']}): its call "
                "carries this job's changes",
            )
        )
    if "superseded_by" in facts:
        rows.append(
            (
                "superseded by",
                f"{facts['superseded_by']}, which delivered a newer "
                "version of the record; this job was not sent",
            )
        )
    if "waits_behind" in facts:
        behind = facts["waits_behind"]
        rows.append(
            (
                "waits behind",
                f"{behind['jobs']} earlier job(s) of the record; the first is {behind['head']}",
            )
        )
    if "newer_delivered" in facts:
        newer = facts["newer_delivered"]
        rows.append(
            (
                "newer delivered",
                f"{newer['job_id']} at {when(newer['at_ms'])}: a "
                f"requeue would overwrite it (needs {force_hint})",
            )
        )
    return rows


def limit_columns(
    history: Sequence[tuple[int, int, float]],
    start_ms: int,
    end_ms: int,
    columns: int = CHART_COLUMNS,
) -> list[int | None]:
    """The limit over ``[start_ms, end_ms)`` in ``columns`` equal slices of time, the highest
    limit each slice saw. ``history`` is (ms, limit, in flight), oldest first; a limit holds
    until the next point, so a slice without a point keeps the one before it, and slices before
    the first point are ``None``."""
    width = (end_ms - start_ms) / columns
    held: int | None = None
    i = 0
    while i < len(history) and history[i][0] < start_ms:
        held = history[i][1]
        i += 1
    values: list[int | None] = []
    for column in range(columns):
        edge = start_ms + (column + 1) * width
        top = held
        while i < len(history) and history[i][0] < edge:
            held = history[i][1]
            top = held if top is None else max(top, held)
            i += 1
        values.append(top)
    return values


def chart_points(status: GateStatus, now_ms: int, span_ms: int) -> list[int | None]:
    """The limit chart of a gate over the last ``span_ms``: ``limit_columns`` of its history,
    ended by the limit now (a changed setting moves it without a window closing)."""
    points = [*status.history, (now_ms, status.limit, float(status.held))]
    return limit_columns(points, now_ms - span_ms, now_ms + 1)


def chart_span_ms(status: GateStatus, now_ms: int, longest_ms: int = 600_000) -> int:
    """How far back a gate's chart goes: its whole history, at least a minute and at most
    ``longest_ms`` (a young gate's few points would otherwise crowd into the last column)."""
    if not status.history:
        return 60_000
    return max(60_000, min(longest_ms, now_ms - status.history[0][0]))


def gate_json(status: GateStatus, since_ms: int) -> dict[str, Any]:
    """A gate's figures as `gate status --json` gives them, history since ``since_ms``."""
    return {
        "name": status.name,
        "target": status.target,
        "limit": status.limit,
        "max": status.maximum,
        "adaptive": status.adaptive,
        "in_flight": status.held,
        "waiting": dict(status.waiting),
        "latency_floor_ms": status.floor_ms,
        "latency_p50_ms": status.p50_ms,
        "latency_p95_ms": status.p95_ms,
        "busy_last_minute": status.busy_last_minute,
        "busy_total": status.busy_total,
        "expired_leases_total": status.expired_total,
        "history": [
            {"at_ms": at, "limit": limit, "in_flight": inflight}
            for at, limit, inflight in status.history
            if at >= since_ms
        ],
    }
