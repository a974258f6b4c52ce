"""The arrival log every simulator keeps per destination record (a Noojee lead, a Mission Capital
application, a Trendsic or Expandable contact): each call on the record with its times, answer and
whether it changed the record, and how many calls on one record were in flight at once. It is
what tests of per-entity ordering read, at GET /_arrivals and in /_stats.

One entry per call on a record, appended when the call is answered:
``{"n", "start", "end", "call", "status", "code", "applied", "fields"}`` where ``n`` numbers the
calls that named a record in the order they arrived (since the last reset; one refused before
it reached its record, not logged, still takes a number), ``start``/``end`` are epoch seconds of
its arrival and its answer, ``code`` is the destination's own code (or null), ``applied`` says
the call's change was stored (even if it repeated the stored values; a read never applies) and
``fields`` are the record fields it carried. A record's entries are in the order the calls
were answered; ``n`` gives the order they arrived.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import tornado.web

from sandbox._serving import send

__all__ = ["Arrival", "ArrivalBounds", "ArrivalLog", "ArrivalsHandler", "arrival_routes"]


@dataclass(frozen=True)
class ArrivalBounds:
    """How many entries the log keeps, per record and in all; past either, the oldest go (and
    are counted as ``arrivals_dropped`` in /_stats).

    An entry keeps the fields its call carried: about 2 KB for a Noojee lead, 5 KB for a
    Trendsic contact (its ~80 fields), so a full log of the default 200,000 holds 0.4-1 GB.
    Long runs that do not read the log can pass smaller bounds in the simulator's config.
    """

    per_record: int = 2_000
    total: int = 200_000

    def __post_init__(self) -> None:
        if self.per_record < 1 or self.total < 1:
            raise ValueError("arrival bounds must be at least 1")


class Arrival:
    """One call on one or more records, from its arrival to its answer (``ArrivalLog.track``).

    The call is logged only once ``answered`` is called, and never after ``refused``: a call
    refused before it reached its record (credentials) is counted in flight but not logged.
    """

    def __init__(self, n: int, generation: int, records: dict[str, dict[str, Any]], call: str):
        self.n = n
        self.generation = generation  # of the log when the call arrived: a reset forgets it
        self.records = records  # record id -> the fields the call carried for it
        self.call = call
        self.start = time.time()
        self.answer: tuple[float, int, Any, bool] | None = None  # (end, status, code, applied)
        self.is_refused = False

    def answered(self, status: int, code: Any, applied: bool) -> None:
        """Record the answer, at the time of this call: the entry's ``end``."""
        self.answer = (time.time(), status, code, applied)

    def refused(self) -> None:
        """The call never reached its record: leave it out of the log."""
        self.is_refused = True


class _Kept:
    """An entry as kept: in its record's deque and in the log-wide order (see ArrivalLog)."""

    __slots__ = ("entry", "live", "record")

    def __init__(self, record: str, entry: dict[str, Any]) -> None:
        self.record = record
        self.entry = entry
        self.live = True


class ArrivalLog:
    """Arrivals per record, bounded, and the calls in flight per record.

    Used from the simulator's event loop only. ``track`` wraps a call; ``reset`` clears the log
    and the overlap counters (calls still in flight keep counting but are not logged: they
    arrived before the reset).
    """

    def __init__(self, bounds: ArrivalBounds | None = None) -> None:
        self.bounds = bounds or ArrivalBounds()
        self._in_flight: Counter[str] = Counter()
        self._generation = 0
        self.peak_calls_per_record = 0
        self._overlapped: set[str] = set()
        self.reset()

    @contextlib.contextmanager
    def track(self, records: Mapping[str, Mapping[str, Any]], call: str) -> Iterator[Arrival]:
        """Count the call in flight on each of ``records`` (id -> fields it carries) until the
        block ends, then log it on each if it was answered (``Arrival.answered``). A call that
        names no record is neither counted nor logged."""
        if records:
            self._arrivals += 1
        arrival = Arrival(
            self._arrivals,
            self._generation,
            {record: dict(fields) for record, fields in records.items()},
            call,
        )
        for record in arrival.records:
            self._in_flight[record] += 1
            calls = self._in_flight[record]
            self.peak_calls_per_record = max(self.peak_calls_per_record, calls)
            if calls >= 2:
                self._overlapped.add(record)
        try:
            yield arrival
        finally:
            for record in arrival.records:
                self._in_flight[record] -= 1
                if not self._in_flight[record]:
                    del self._in_flight[record]
            if arrival.answer is not None and not arrival.is_refused:
                if arrival.generation == self._generation:
                    self._log(arrival)

    def entries(self, record: str) -> list[dict[str, Any]] | None:
        """The record's kept entries, in the order the calls were answered; None if none."""
        kept = self._records.get(record)
        return None if not kept else [k.entry for k in kept]

    def all_entries(self) -> dict[str, list[dict[str, Any]]]:
        return {record: [k.entry for k in kept] for record, kept in self._records.items()}

    def logged_calls(self, record: str) -> int:
        """Calls logged on the record since the reset, dropped entries included."""
        return self._logged[record]

    def stats(self) -> dict[str, int]:
        """What /_stats adds: the most calls on one record in flight at once, how many records
        ever had two or more at once (both since the reset), and the entries dropped."""
        return {
            "peak_calls_per_record": self.peak_calls_per_record,
            "overlapping_records": len(self._overlapped),
            "arrivals_dropped": self.dropped,
        }

    def reset(self) -> None:
        self._generation += 1
        self._arrivals = 0
        self._records: dict[str, deque[_Kept]] = {}
        self._order: deque[_Kept] = deque()  # every entry kept, oldest first (and dropped ones)
        self._kept = 0
        self._logged: Counter[str] = Counter()
        self.dropped = 0
        # Calls in flight across the reset still count: the counters restart from them.
        self.peak_calls_per_record = max(self._in_flight.values(), default=0)
        self._overlapped = {record for record, calls in self._in_flight.items() if calls >= 2}

    def _log(self, arrival: Arrival) -> None:
        assert arrival.answer is not None
        end, status, code, applied = arrival.answer
        for record, fields in arrival.records.items():
            entry = {
                "n": arrival.n,
                "start": arrival.start,
                "end": end,
                "call": arrival.call,
                "status": status,
                "code": code,
                "applied": applied,
                "fields": fields,
            }
            kept = _Kept(record, entry)
            self._records.setdefault(record, deque()).append(kept)
            self._order.append(kept)
            self._kept += 1
            self._logged[record] += 1
            if len(self._records[record]) > self.bounds.per_record:
                self._drop(self._records[record].popleft())
        while self._kept > self.bounds.total:
            oldest = self._order.popleft()
            if oldest.live:
                dropped = self._records[oldest.record].popleft()
                assert dropped is oldest  # a record's entries are in the log-wide order too
                self._drop(oldest)
        # Entries dropped by the per-record bound stay in _order until they reach its head;
        # a few hot records could pile them up, so they are swept out once they outnumber it.
        if len(self._order) > 2 * self.bounds.total:
            self._order = deque(k for k in self._order if k.live)

    def _drop(self, kept: _Kept) -> None:
        kept.live = False
        self._kept -= 1
        self.dropped += 1
        if not self._records[kept.record]:
            del self._records[kept.record]


class ArrivalsHandler(tornado.web.RequestHandler):
    """GET /_arrivals -> {"records": {RECORD: [entries]}}; GET /_arrivals/ID ->
    {"record": RECORD, "arrivals": [entries]}, 404 {"error"} if the record has none. No auth,
    like every admin endpoint. ``record_id`` turns the path's parts into the log's record id."""

    def initialize(self, arrivals: ArrivalLog, record_id: Callable[..., str | None]) -> None:
        self.arrivals = arrivals
        self.record_id = record_id

    def get(self, *parts: str) -> None:
        if not parts:
            return send(self, 200, {"records": self.arrivals.all_entries()})
        record = self.record_id(*parts)
        entries = None if record is None else self.arrivals.entries(record)
        if entries is None:
            return send(self, 404, {"error": "no arrivals for this record"})
        send(self, 200, {"record": record, "arrivals": entries})


def arrival_routes(
    arrivals: ArrivalLog, id_pattern: str, record_id: Callable[..., str | None]
) -> list[Any]:
    """The two /_arrivals routes of a simulator; ``id_pattern`` matches the record's path
    parts (one group per part, as tornado passes them: percent-decoded)."""
    handler = {"arrivals": arrivals, "record_id": record_id}
    return [
        (r"/_arrivals", ArrivalsHandler, handler),
        (rf"/_arrivals/{id_pattern}", ArrivalsHandler, handler),
    ]
