"""What the console reads from the ledger, the gates and the pauses: lists of jobs by state
(filtered, sorted, a page at a time), the overview's figures, and search.

Reads only; every figure comes from Redis at the request. The ledger keeps a sorted set for
most states (``review``, ``rejected``, ``schedule``, ``running``, ``dispatched``/``ready``,
``recent:merged``/``recent:superseded``): a page in the set's own order is one ``ZRANGE`` and
one pipelined read of 50 records, whatever the set's size. A filter or another order reads a
few fields of every job in the set (``Ledger.fields_of``): linear, measured by
``python -m bench console``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from worker.gate import GateStatus, gate_names, read_status
from worker.ledger import RETRYING, JobRecord, Ledger, job_id_for
from worker.pause import Pause, PauseStatus
from worker.reports import chart_points, chart_span_ms

#: The lists of the console: each reads one or more of the ledger's sorted sets.
LISTS = ("review", "rejected", "retrying", "running", "queued", "merged", "superseded")
#: Lists whose jobs an operator can requeue (and, for review, discard) in bulk.
RESOLVABLE = ("review", "rejected")
SORTS = ("age", "attempts")
#: Fields a filtered listing reads of each job in the set.
SCAN_FIELDS = ("kind", "last_code", "last_reason", "attempts", "state", "entity")
#: How long the overview's per-destination counts of the large sets are reused (seconds).
BREAKDOWN_TTL_S = 15.0


@dataclass(frozen=True)
class Filter:
    """What an operator narrowed a list to: a destination, a last answer code, text in the
    reason or the record; sorted by age (the set's order) or attempts."""

    destination: str = ""
    code: str = ""
    text: str = ""
    sort: str = "age"
    newest_first: bool = False

    @property
    def narrows(self) -> bool:
        return bool(self.destination or self.code or self.text)

    def params(self) -> dict[str, str]:
        """As query parameters (only those set)."""
        shown = {
            "destination": self.destination,
            "code": self.code,
            "q": self.text,
            "sort": "" if self.sort == "age" else self.sort,
            "order": "desc" if self.newest_first else "",
        }
        return {k: v for k, v in shown.items() if v}

    def admits(self, kind: str, code: str, reason: str, entity: str) -> bool:
        if self.destination and kind.partition(".")[0] != self.destination:
            return False
        if self.code and code != self.code:
            return False
        if self.text:
            needle = self.text.lower()
            return needle in reason.lower() or needle in entity.lower()
        return True


@dataclass
class Row:
    """One job in a list: its record and the set's score (when it got there, is due, or its
    lease ends), and for running jobs what it is doing."""

    record: JobRecord
    score_ms: int
    phase: str = ""
    worker: str = ""
    latest: dict[str, Any] = field(default_factory=dict)


@dataclass
class Page:
    rows: list[Row]
    total: int
    offset: int
    limit: int
    scanned: bool  # every job in the set was read (a filter, or another order)


def sets_of(ledger: Ledger, name: str, destinations: list[str]) -> list[str]:
    """The ledger sets behind a console list."""
    if name in ("review", "rejected", "running"):
        return [name]
    if name == "retrying":
        return ["schedule"]
    if name in ("merged", "superseded"):
        return [f"recent:{name}"]
    if name == "queued":
        return [
            s
            for d in destinations
            for s in (f"dispatched:{d}", f"ready:{d}:realtime", f"ready:{d}:bulk")
        ]
    raise ValueError(f"no list {name}")


def job_page(
    ledger: Ledger, name: str, wanted: Filter, offset: int, limit: int, destinations: list[str]
) -> Page:
    """One page of a list. Unfiltered, in the set's order: a slice of the set. Otherwise every
    job's few fields are read, filtered and sorted first (``scanned``)."""
    keys = sets_of(ledger, name, destinations)
    if wanted.destination and name == "queued":
        keys = [k for k in keys if k.split(":")[1] == wanted.destination]
    if len(keys) == 1 and not wanted.narrows and wanted.sort == "age" and name != "retrying":
        total = ledger.size(keys[0])
        slice_ = ledger.listing(keys[0], offset, limit, newest_first=wanted.newest_first)
        return Page(_rows(ledger, name, slice_), total, offset, limit, scanned=False)
    scored = _scan(ledger, name, keys, wanted)
    chosen = scored[offset : offset + limit]
    return Page(
        _rows(ledger, name, [(i, s) for i, s, _ in chosen]),
        len(scored),
        offset,
        limit,
        scanned=True,
    )


def matching_ids(ledger: Ledger, name: str, wanted: Filter, destinations: list[str]) -> list[str]:
    """Every job of a list that ``wanted`` admits, in the list's order (a bulk action's
    selection)."""
    return [
        job_id for job_id, _, _ in _scan(ledger, name, sets_of(ledger, name, destinations), wanted)
    ]


def _scan(ledger: Ledger, name: str, keys: list[str], wanted: Filter) -> list[tuple[str, int, int]]:
    """(id, score, attempts) of every job in ``keys`` that ``wanted`` admits, sorted."""
    members: list[tuple[str, int]] = []
    for key in keys:
        members += ledger.listing(key, 0, 10**9)
    fields = ledger.fields_of([m for m, _ in members], SCAN_FIELDS)
    kept: list[tuple[str, int, int]] = []
    for (job_id, score), (kind, code, reason, attempts, state, entity) in zip(
        members, fields, strict=True
    ):
        if kind is None:
            continue  # its record expired: the set is pruned later
        if name == "retrying" and state != RETRYING:
            continue  # the schedule also holds rechecks of jobs that are running or queued
        if wanted.admits(kind, code or "", reason or "", entity or ""):
            kept.append((job_id, score, int(attempts or 0)))
    if wanted.sort == "attempts":
        kept.sort(key=lambda row: (row[2], row[1]), reverse=not wanted.newest_first)
    else:
        kept.sort(key=lambda row: row[1], reverse=wanted.newest_first)
    return kept


def _rows(ledger: Ledger, name: str, slice_: list[tuple[str, int]]) -> list[Row]:
    records = ledger.get_many([job_id for job_id, _ in slice_])
    rows = [
        Row(record, score)
        for (_, score), record in zip(slice_, records, strict=True)
        if record is not None
    ]
    if name == "running" and rows:
        pipe = ledger.r.pipeline(transaction=False)
        for row in rows:
            pipe.lindex(ledger.history_key(row.record.id), 0)
        for row, latest in zip(rows, pipe.execute(), strict=True):
            row.worker = row.record.lock.rsplit("/", 1)[0]
            row.latest = json.loads(latest) if latest else {}
            row.phase = phase(row.record)
    return rows


def phase(record: JobRecord) -> str:
    """What a running job is doing: ``calling`` its destination (it holds a permit and its call
    has run for a second or more: worker/claims.py marks it), or ``waiting`` (for a permit at
    the gate, or for the pause's verdict: both take no call; or its call started just now)."""
    if record.state != "running":
        return ""
    if record.calling_since_ms and record.calling_since_ms >= record.updated_at_ms:
        return "calling"
    return "waiting"


# -- the overview -----------------------------------------------------------------------------
@dataclass
class GateView:
    """A gate as the overview shows it: its figures, its pause, the limit chart over the last
    ``span_s`` and the lowest and highest limit in that time."""

    status: GateStatus
    pause: PauseStatus
    chart: list[int | None]
    span_s: int
    low: int
    high: int


@dataclass
class Overview:
    counts: dict[str, int]
    by_destination: dict[str, dict[str, int]]
    gates: list[GateView]
    now_ms: int
    breakdown_age_s: float


#: Sets larger than this are counted per destination at most every ``BREAKDOWN_TTL_S``.
LIVE_COUNT_MAX = 10_000
_breakdown_cache: dict[tuple[str, str], tuple[float, dict[str, int]]] = {}


def overview(ledger: Ledger, destinations: list[str], minutes: int = 10) -> Overview:
    """Counts by state, and by destination for the states that have a set; every gate's figures
    with its pause and its limit chart over the last ``minutes``."""
    client = ledger.r
    seconds, micros = client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    gates = []
    for name in gate_names(client, ledger.prefix):
        status = read_status(client, f"{ledger.prefix}gate:{name}:", name)
        if not status.maximum:
            continue
        pause = Pause(client, name, prefix=ledger.prefix).status()
        span = chart_span_ms(status, now, minutes * 60_000)
        seen = [limit for at, limit, _ in status.history if at >= now - span] + [status.limit]
        gates.append(
            GateView(
                status, pause, chart_points(status, now, span), span // 1000, min(seen), max(seen)
            )
        )
    by_destination, age = _breakdown(ledger, destinations)
    return Overview(ledger.counts(), by_destination, gates, now, age)


def _breakdown(ledger: Ledger, destinations: list[str]) -> tuple[dict[str, dict[str, int]], float]:
    """Jobs per destination in each listed state: queued from each queue's sets, the others by
    reading each job's kind. A set of more than ``LIVE_COUNT_MAX`` (the review set may hold
    100,000) is recounted at most every ``BREAKDOWN_TTL_S``; returns the oldest count's age."""
    table = {
        d: dict.fromkeys(("queued", "running", "retrying", "review", "rejected"), 0)
        for d in destinations
    }
    pipe = ledger.r.pipeline(transaction=False)
    for d in destinations:
        for key in (f"dispatched:{d}", f"ready:{d}:realtime", f"ready:{d}:bulk"):
            pipe.zcard(ledger.set_key(key))
    sizes = pipe.execute()
    for i, d in enumerate(destinations):
        table[d]["queued"] = sum(int(n) for n in sizes[3 * i : 3 * i + 3])
    oldest = 0.0
    for name, key in (
        ("running", "running"),
        ("retrying", "schedule"),
        ("review", "review"),
        ("rejected", "rejected"),
    ):
        counted = _per_destination(ledger, name, key)
        oldest = max(oldest, counted[1])
        for destination, n in counted[0].items():
            if destination in table:
                table[destination][name] = n
    return table, oldest


def _per_destination(ledger: Ledger, name: str, key: str) -> tuple[dict[str, int], float]:
    cached = _breakdown_cache.get((ledger.prefix, key))
    now = time.monotonic()
    if (
        cached is not None
        and now - cached[0] < BREAKDOWN_TTL_S
        and ledger.size(key) > LIVE_COUNT_MAX
    ):
        return cached[1], now - cached[0]
    counts: dict[str, int] = {}
    ids = [job_id for job_id, _ in ledger.listing(key, 0, 10**9)]
    for kind, state in ledger.fields_of(ids, ("kind", "state")):
        if kind and (name != "retrying" or state == RETRYING):
            destination = kind.partition(".")[0]
            counts[destination] = counts.get(destination, 0) + 1
    _breakdown_cache[(ledger.prefix, key)] = (now, counts)
    return counts, 0.0


# -- search -----------------------------------------------------------------------------------
@dataclass
class Found:
    """What a search found: jobs (by id or idempotency key) and records (by entity key)."""

    jobs: list[tuple[str, JobRecord]] = field(default_factory=list)  # (how it matched, record)
    records: list[dict[str, Any]] = field(default_factory=list)


def search(ledger: Ledger, text: str, destinations: list[str], clients: list[str]) -> Found:
    """Find jobs by id, by idempotency key (as the producer gave it: the intake records a
    client's key as ``client:key``, so each client's form is tried), and records by entity key
    (``noojee:9856``, or the record's id alone, tried at every destination)."""
    text = text.strip()
    found = Found()
    if not text or len(text) > 300:
        return found
    candidates: list[tuple[str, str]] = []
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower()):
        candidates.append(("job id", text.lower()))
    for d in destinations:
        candidates.append((f"idempotency key at {d}", job_id_for(d, text)))
        candidates += [
            (f"idempotency key of client {c} at {d}", job_id_for(d, f"{c}:{text}")) for c in clients
        ]
    records = ledger.get_many([job_id for _, job_id in candidates])
    seen = set()
    for (how, _), record in zip(candidates, records, strict=True):
        if record is not None and record.id not in seen:
            seen.add(record.id)
            found.jobs.append((how, record))
    prefix, sep, _ = text.partition(":")
    entities = (
        [text]
        if sep and prefix in destinations
        else [f"{d}:{quote(text, safe='/')}" for d in destinations]
    )
    for entity in entities:
        line = ledger.line(entity, 1000)
        last = ledger.last_delivery(entity)
        if line or last is not None:
            pending = [r for r in ledger.get_many(line) if r is not None]
            found.records.append({"entity": entity, "pending": pending, "last": last})
    return found
