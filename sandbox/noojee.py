"""Noojee Contact CampaignAPI simulator (updateLeadFast / insertLeadFast) over real HTTP.

Owns the PBX model (shared slots, FIFO queue, 109 after queue_timeout_s), scripted answers per
lead, the stored leads, each lead's arrival log (sandbox/_records.py: every update or insert that
names it, and how many were in flight on it at once) and the admin endpoints (/_stats, /_script,
/_config, /_reset, /_leads, /_arrivals).

Benchmarks get more: POST /_foreign makes another client of the same PBX hold slots for a while
(through the same FIFO gate, counted apart from "our" calls); /_stats adds exact time averages
since the last reset (value x dt accumulated at every change); GET /_timeline lists every change
of (our in-flight, foreign in-flight, our queued, slots); POST /_peaks starts a new peak window.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from sandbox._records import ArrivalBounds, ArrivalLog, arrival_routes
from sandbox._serving import (
    SLOW,
    SlowHolds,
    announcer,
    log_paths_only,
    parse_slow_s,
    run_admin_action,
    send,
    serve_app,
)

API_PREFIX = "/servicemanager/rest/CampaignAPI"
NO_CHANGE = "<No Change>"
MIN_SERVICE_S = 0.100  # Noojee: "no call finishes in under 100 ms"
CALLBACK_DATE_RE = re.compile(r"[0-9]{4}/[0-9]{2}/[0-9]{2} [0-9]{2}:[0-9]{2}")  # yyyy/MM/dd HH:mm
CALLBACK_FMT = "%Y/%m/%d %H:%M"
ID_PARAMS = (("fTemplateId", 116), ("fCampaignId", 117), ("fAllocationId", 115))
TIMELINE_MAX = 200_000  # changes kept by GET /_timeline; older ones are dropped

# Noojee's answer table, spelled as Noojee spells it (typos included): code -> (message, HTTP).
ANSWERS: dict[int, tuple[str, int]] = {
    0: ("OK", 200),
    101: ("COULDNT_FIND_THE_LEAD", 400),
    102: ("NO_PHONE_FIELDS", 400),
    103: ("EXCEPTION", 500),
    104: ("DNC", 400),
    105: ("DUPLICATE", 400),
    106: ("INVALID_DISPOSTION", 400),
    107: ("DISPOSTION_ISNT_SET_AND_NOCHANGE_SPECIFIED", 400),
    108: ("IMPORT_BUT_NOCHANGE_SPECIFIED", 400),
    109: ("TIMEOUT_TOO_MANY_CONCURRENT_REQUESTS", 400),
    110: ("LEAD_NOT_UPDATED_DUE_TO_CONFLICT", 400),
    111: ("INVALID_TIMEZONE_SPECIFIED", 400),
    112: ("DUPLICATE_EXTERNAL_ID", 400),
    113: ("EDIT_BUT_NO_EXTERNAL_ID_SUPPLIED", 400),
    114: ("INVALID_CALLBACK_DATE_FORMAT", 400),
    115: ("ALLOCATIN_ID_REQUIRED", 400),
    116: ("TEMPLATE_ID_REQUIRED", 400),
    117: ("CAMPAIGN_ID_REQUIRED", 400),
}
#: Service-time distributions (``NoojeeSimConfig.distribution``).
DISTRIBUTIONS = ("uniform", "lognormal")
# Scripts may use codes outside the table, to exercise the worker's "unknown code" path.
UNKNOWN_ANSWER = ("UNKNOWN", 400)
# What a scripted "slow" call answers once held: what the PBX says of a call that waited too long.
SLOW_CODE = 109

Script = list[int | str]  # codes, SLOW or ECHO, one per call, the last sticky
#: A scripted "echo" call answers 110 with a message that quotes the lead's fields, as a PBX's
#: error text may quote what it was sent (what the worker must mask before it stores it).
ECHO = "echo"
ECHO_CODE = 110

log = logging.getLogger(__name__)


@dataclass
class NoojeeSimConfig:
    """How the simulated PBX behaves. Times are in seconds; `scripts` maps lead id -> codes
    (or "slow")."""

    slots: int = 4  # concurrent calls the PBX processes (insert and update share them)
    latency_s: float = 0.100  # service time of one call, holding a slot: mean, or lognormal median
    jitter_s: float = 0.020  # uniform +/- jitter around latency_s (see _service_time_s)
    distribution: str = "uniform"  # or "lognormal": heavy-tailed, median latency_s, log-sd sigma
    sigma: float = 0.77  # lognormal only: 0.77 puts the 99th percentile at about 6 x the median
    queue_timeout_s: float = 60.0  # a queued call that waited this long gets 109
    api_key: str = "sandbox-key"
    scripts: dict[str, Script] = field(default_factory=dict)  # njExternalLeadId -> codes
    seed: int | None = None
    arrival_bounds: ArrivalBounds = field(default_factory=ArrivalBounds)
    #: An update of a lead the PBX never stored answers 101 (COULDNT_FIND_THE_LEAD), as a real
    #: PBX does; off by default, so that updates of any lead id just work in a sandbox.
    strict_leads: bool = False


class SlotGate:
    """The PBX's shared slots: FIFO admission of waiters, capacity changeable at runtime.

    Every caller goes through it, ours and foreign (another client of the same PBX) alike; the
    `foreign` flag only decides which counters a call moves. `on_change` is called after every
    operation that may have changed a count or the capacity.
    """

    def __init__(self, slots: int, on_change: Callable[[], None] | None = None) -> None:
        self.slots = slots
        self.in_flight = 0  # every call holding a slot, ours and foreign
        self.foreign_in_flight = 0
        self.foreign_queued = 0
        self.peak_in_flight = 0
        self.peak_our_in_flight = 0
        self.peak_queued = 0
        self.on_change = on_change
        self._waiters: deque[tuple[asyncio.Future[bool], bool]] = deque()  # (waiter, foreign)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def our_in_flight(self) -> int:
        return self.in_flight - self.foreign_in_flight

    @property
    def our_queued(self) -> int:
        return self.queued - self.foreign_queued

    async def acquire(self, timeout_s: float, foreign: bool = False) -> bool:
        """Take a slot, waiting in FIFO order for at most timeout_s; False if the wait timed out."""
        # Newcomers may not overtake waiters, even when a slot looks free.
        if not self._waiters and self.in_flight < self.slots:
            self._take(foreign)
            self._changed()
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        entry = (waiter, foreign)
        self._waiters.append(entry)
        if foreign:
            self.foreign_queued += 1
        self.peak_queued = max(self.peak_queued, len(self._waiters))
        self._changed()
        timer = loop.call_later(timeout_s, self._expire, entry)
        try:
            return await waiter
        except asyncio.CancelledError:
            # A slot handed over just before the cancel would otherwise leak forever.
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release(foreign)
            else:
                self._forget(entry)
            raise
        finally:
            timer.cancel()

    def release(self, foreign: bool = False) -> None:
        """Give back a slot taken by acquire() with the same `foreign` flag."""
        self.in_flight -= 1
        if foreign:
            self.foreign_in_flight -= 1
        self._admit()
        self._changed()

    def set_slots(self, slots: int) -> None:
        """Raising admits waiters at once; lowering lets holders finish and admits no one new."""
        self.slots = slots
        self._admit()
        self._changed()

    def reset_peaks(self) -> dict[str, int]:
        """Restart the peaks from the current counts; answers the peaks they replace."""
        previous = {
            "peak_in_flight": self.peak_in_flight,
            "peak_our_in_flight": self.peak_our_in_flight,
            "peak_queued": self.peak_queued,
        }
        self.peak_in_flight, self.peak_queued = self.in_flight, self.queued
        self.peak_our_in_flight = self.our_in_flight
        return previous

    def _take(self, foreign: bool) -> None:
        self.in_flight += 1
        if foreign:
            self.foreign_in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        self.peak_our_in_flight = max(self.peak_our_in_flight, self.our_in_flight)

    def _admit(self) -> None:
        while self._waiters and self.in_flight < self.slots:
            waiter, foreign = self._waiters.popleft()
            if foreign:
                self.foreign_queued -= 1
            if not waiter.done():  # done = cancelled by its caller; it holds nothing
                self._take(foreign)
                waiter.set_result(True)

    def _expire(self, entry: tuple[asyncio.Future[bool], bool]) -> None:
        if not entry[0].done():
            self._forget(entry)
            entry[0].set_result(False)

    def _forget(self, entry: tuple[asyncio.Future[bool], bool]) -> None:
        try:
            self._waiters.remove(entry)
        except ValueError:  # already admitted or expired
            return
        if entry[1]:
            self.foreign_queued -= 1
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class GateRecorder:
    """What the gate did since the last reset, measured exactly rather than sampled.

    At every change of (our in-flight, foreign in-flight, our queued, slots) the previous values
    are integrated over the time they held (value x dt), the peak of our in-flight calls is
    updated and a sample [epoch t, our_in_flight, foreign_in_flight, queued, slots] is appended
    to a bounded timeline. Durations use the monotonic clock; sample times are time.time().
    """

    def __init__(self, gate: SlotGate, max_samples: int = TIMELINE_MAX) -> None:
        self.gate = gate
        self.samples: deque[tuple[float, int, int, int, int]] = deque(maxlen=max_samples)
        self.reset()

    def reset(self) -> None:
        """Zero the integrals and the peak; the timeline restarts with one sample of now."""
        self._started_s = self._changed_s = time.monotonic()
        self._our_in_flight_s = self._queued_s = 0.0  # integrals of the value over time
        self._state = self._current()
        self.peak_our_in_flight = self._state[0]
        self.samples.clear()
        self._sample()

    def observe(self) -> None:
        """Called after each gate operation; records only if a tracked value changed."""
        state = self._current()
        if state == self._state:
            return
        self._integrate(time.monotonic())
        self._state = state
        self.peak_our_in_flight = max(self.peak_our_in_flight, state[0])
        self._sample()

    def averages(self) -> dict[str, float]:
        """Time-averaged our in-flight and our queued calls since the last reset."""
        self._integrate(time.monotonic())
        span_s = self._changed_s - self._started_s
        if span_s <= 0:  # read in the same instant as the reset: the average is the value
            our, _, queued, _ = self._state
            return {"our_in_flight_time_avg": our, "queued_time_avg": queued, "span_s": 0.0}
        return {
            "our_in_flight_time_avg": round(self._our_in_flight_s / span_s, 6),
            "queued_time_avg": round(self._queued_s / span_s, 6),
            "span_s": round(span_s, 6),
        }

    def timeline(self, since: float | None = None) -> list[tuple[float, int, int, int, int]]:
        return [s for s in self.samples if since is None or s[0] >= since]

    def _current(self) -> tuple[int, int, int, int]:
        gate = self.gate
        return gate.our_in_flight, gate.foreign_in_flight, gate.our_queued, gate.slots

    def _integrate(self, now_s: float) -> None:
        dt_s = now_s - self._changed_s
        our, _, queued, _ = self._state
        self._our_in_flight_s += our * dt_s
        self._queued_s += queued * dt_s
        self._changed_s = now_s

    def _sample(self) -> None:
        self.samples.append((round(time.time(), 4), *self._state))


class NoojeeSimulator:
    """The simulated CampaignAPI: one instance per server, used only from its event loop."""

    def __init__(self, config: NoojeeSimConfig) -> None:
        # A private copy, so /_config and consumed scripts never leak into the caller's object.
        self.config = replace(config, scripts={})
        self.gate = SlotGate(config.slots)
        self.recorder = GateRecorder(self.gate)
        self.gate.on_change = self.recorder.observe
        self._foreign_calls: set[asyncio.Task[None]] = set()
        self._rng = random.Random(config.seed)
        self.scripts: dict[str, Script] = {k: list(v) for k, v in config.scripts.items()}
        self.slow = SlowHolds()
        self.leads: dict[str, dict[str, Any]] = {}
        self.arrivals = ArrivalLog(config.arrival_bounds)
        self._reset_stats()

    def make_app(self) -> tornado.web.Application:
        """The Noojee endpoints (paths as Noojee's) and the admin endpoints, on one app."""
        sim = {"sim": self}
        return tornado.web.Application(
            [
                (f"{API_PREFIX}/updateLeadFast", _CallHandler, {**sim, "kind": "update"}),
                (f"{API_PREFIX}/insertLeadFast", _CallHandler, {**sim, "kind": "insert"}),
                (r"/_(stats|script|config|reset|foreign|peaks|timeline)", _AdminHandler, sim),
                (r"/_(leads)/(.+)", _AdminHandler, sim),
                *arrival_routes(self.arrivals, "(.+)", lambda lead_id: lead_id),
            ],
            log_function=_log_request,
        )

    def stats(self) -> dict[str, Any]:
        """What GET /_stats answers; `calls` counts calls that reached the PBX (incl. 109).

        in_flight, queued, peak_in_flight and peak_queued count every caller, foreign ones
        included; the our_* and foreign_* counts split them. The *_time_avg values are exact
        time averages since the last reset, over `averaged_over_s` seconds.
        peak_calls_per_record, overlapping_records and arrivals_dropped are the arrival log's
        (an insert counts on each of its leads).
        """
        gate = self.gate
        averages = self.recorder.averages()
        return {
            "calls": self.calls,
            "answers": {str(code): n for code, n in sorted(self.answers.items())},
            "http_401": self.http_401,
            "calls_by_lead": dict(self.calls_by_lead),
            "in_flight": gate.in_flight,
            "our_in_flight": gate.our_in_flight,
            "foreign_in_flight": gate.foreign_in_flight,
            "queued": gate.queued,
            "our_queued": gate.our_queued,
            "foreign_queued": gate.foreign_queued,
            "peak_in_flight": gate.peak_in_flight,
            "peak_our_in_flight": gate.peak_our_in_flight,
            "peak_our_in_flight_since_reset": self.recorder.peak_our_in_flight,
            "peak_queued": gate.peak_queued,
            "slots": gate.slots,
            "busy_slot_s": round(self.busy_slot_s, 6),
            "foreign_busy_slot_s": round(self.foreign_busy_slot_s, 6),
            "our_in_flight_time_avg": averages["our_in_flight_time_avg"],
            "queued_time_avg": averages["queued_time_avg"],
            "averaged_over_s": averages["span_s"],
            **self.arrivals.stats(),
            "started_at": self.started_at,
        }

    def timeline(self, since: str | None) -> dict[str, Any]:
        """What GET /_timeline answers: every recorded change, those at t >= since if given."""
        try:
            since_t = None if since is None else float(since)
        except ValueError:
            raise ValueError(f"since must be a number (epoch seconds), got {since!r}") from None
        return {"samples": self.recorder.timeline(since_t)}

    async def call(self, kind: str, args: dict[str, str], body: bytes) -> tuple[int, Any]:
        """Answer one insert/update call: (HTTP status, JSON answer or plain-text error).

        Past the apiKey, the call is logged on each lead it names (the update's
        njExternalLeadId, each inserted lead's), whatever it answers: applied iff code 0.
        """
        if not hmac.compare_digest(args.get("apiKey", "").encode(), self.config.api_key.encode()):
            self.http_401 += 1
            return 401, "Invalid apiKey"
        lead_id = args.get("njExternalLeadId", "")
        leads: list[tuple[str, dict[str, Any]]] = []
        body_error = None
        try:
            leads = _parse_leads(kind, lead_id, json.loads(body))
        except ValueError as exc:
            body_error = f"Bad request body: {exc}"
        with self.arrivals.track(_fields_by_lead(kind, lead_id, leads), kind) as arrival:
            status, answer = await self._process(kind, args, leads, body_error)
            code = answer["code"] if isinstance(answer, dict) else None
            arrival.answered(status, code, applied=code == 0)
        return status, answer

    async def _process(
        self,
        kind: str,
        args: dict[str, str],
        leads: list[tuple[str, dict[str, Any]]],
        body_error: str | None,
    ) -> tuple[int, Any]:
        # Noojee rejects these before the call reaches the PBX, so they take no slot.
        for name, code in ID_PARAMS:
            if not re.fullmatch(r"[0-9]+", args.get(name, "")):
                return self._answer(code)
        if kind == "update" and not args.get("njExternalLeadId", ""):
            return self._answer(113)
        if body_error is not None:
            return 400, body_error

        if not await self.gate.acquire(self.config.queue_timeout_s):
            return self._answer(109, leads)
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        try:
            await asyncio.sleep(self._service_time_s())
        finally:
            self.busy_slot_s += loop.time() - started_s
            self.gate.release()
        decided = self._decide(kind, leads)
        if decided == SLOW:  # held after its slot is given back: it slows only this lead
            await self.slow.hold(leads[0][0])
            decided = SLOW_CODE
        if decided == ECHO:
            status, answer = self._answer(ECHO_CODE, leads)
            quoted = ", ".join(f"{name}={value}" for name, value in leads[0][1].items())
            return status, {**answer, "message": f"{answer['message']}: lead {quoted}"}
        assert isinstance(decided, int)
        return self._answer(decided, leads)

    def set_scripts(self, body: Any) -> dict[str, Any]:
        """Apply {"lead": ID, "codes": [...]} or {"scripts": {ID: [...]}}; ValueError if bad.

        A code is an integer, "echo" or "slow"; with both the call goes through the PBX as
        usual and stores nothing. "echo" answers 110 with a message quoting the lead's fields;
        "slow" holds the call `slow_s` seconds (the body's, default SLOW_S_DEFAULT), then 109.
        """
        scripts: dict[str, Any]
        if isinstance(body, dict) and "lead" in body:
            scripts = {str(body["lead"]): body.get("codes")}
        elif isinstance(body, dict) and isinstance(body.get("scripts"), dict):
            scripts = {str(k): v for k, v in body["scripts"].items()}
        else:
            raise ValueError('expected {"lead": ID, "codes": [...]} or {"scripts": {ID: [...]}}')
        for lead, codes in scripts.items():
            if not codes or not isinstance(codes, list) or not all(map(_is_code, codes)):
                raise ValueError(
                    f"codes for lead {lead!r} must be a non-empty list of integers, {SLOW!r} or "
                    f"{ECHO!r}"
                )
        slow_s = parse_slow_s(body)
        self.slow.update(scripts, slow_s)
        self.scripts.update({lead: list(codes) for lead, codes in scripts.items()})
        return {"scripts": self.scripts}

    def configure(self, body: Any) -> dict[str, Any]:
        """Apply any of slots/latency_s/jitter_s/queue_timeout_s/distribution/sigma/strict_leads
        at once; ValueError if invalid."""
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        allowed = {
            "slots",
            "latency_s",
            "jitter_s",
            "queue_timeout_s",
            "distribution",
            "sigma",
            "strict_leads",
        }
        for key, value in body.items():
            if key not in allowed:
                raise ValueError(f"unknown setting {key!r}; allowed: {sorted(allowed)}")
            if key == "strict_leads":
                if not isinstance(value, bool):
                    raise ValueError(f"strict_leads must be true or false, got {value!r}")
                continue
            if key == "distribution":
                if value not in DISTRIBUTIONS:
                    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {value!r}")
                continue
            number_ok = _is_int(value) or (key != "slots" and isinstance(value, float))
            if not (number_ok and value >= 0):  # also refuses NaN, which json.loads accepts
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        for key, value in body.items():
            setattr(self.config, key, value)
        if "slots" in body:
            self.gate.set_slots(body["slots"])
        return {key: getattr(self.config, key) for key in sorted(allowed)}

    async def foreign(self, body: Any) -> dict[str, Any]:
        """Apply {"slots": N, "duration_s": D}: another client takes N more slots for D seconds.

        Its N calls queue FIFO like any caller and each hangs up D seconds after this request,
        whether or not it got a slot by then; holds add up. {"slots": 0} ends every foreign
        hold at once. Answers without waiting for the slots; ValueError if the body is bad.
        """
        slots, duration_s = _foreign_request(body)
        if slots == 0:
            await self.end_foreign()
            return {"holding": 0, "until": round(time.time(), 4)}
        until = time.time() + duration_s
        until_s = asyncio.get_running_loop().time() + duration_s
        for _ in range(slots):
            task = asyncio.create_task(self._foreign_call(until_s))
            self._foreign_calls.add(task)
            task.add_done_callback(self._foreign_calls.discard)
        await asyncio.sleep(0)  # let them take their slots or queue before we answer
        return {"holding": slots, "until": round(until, 4)}

    async def end_foreign(self) -> None:
        """Hang up every foreign call: holders release their slots, queued ones leave."""
        calls = list(self._foreign_calls)
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)

    def reset_peaks(self) -> dict[str, Any]:
        """What POST /_peaks answers: the peaks of the window it closes; a new one starts now."""
        return self.gate.reset_peaks()

    async def reset(self) -> dict[str, Any]:
        await self.end_foreign()
        self.scripts.clear()
        self.slow.clear()
        self.leads.clear()
        self.arrivals.reset()
        self._reset_stats()
        return {"reset": True}

    async def _foreign_call(self, until_s: float) -> None:
        """One call of the foreign client: queue like anyone, hold the slot until until_s."""
        loop = asyncio.get_running_loop()
        if not await self.gate.acquire(max(0.0, until_s - loop.time()), foreign=True):
            return  # the hold ended before a slot came free: give up without holding
        started_s = loop.time()
        try:
            await asyncio.sleep(until_s - started_s)
        finally:
            self.foreign_busy_slot_s += loop.time() - started_s
            self.gate.release(foreign=True)

    def _reset_stats(self) -> None:
        self.calls = 0
        self.answers: Counter[int] = Counter()
        self.http_401 = 0
        self.calls_by_lead: Counter[str] = Counter()
        self.busy_slot_s = 0.0
        self.foreign_busy_slot_s = 0.0
        self.started_at = time.time()
        self.gate.reset_peaks()
        self.recorder.reset()

    def _service_time_s(self) -> float:
        """Uniform in latency_s +/- jitter_s, never under Noojee's documented 100 ms.

        A latency_s configured below 100 ms (fast tests) deliberately opts out of that floor;
        the floor is then latency_s - jitter_s (and never below 0).

        Lognormal: median latency_s, log-sd sigma, no floor (half the calls are faster than the
        median; a floor would pile them up on it). A real PBX's heavy tail: a few calls take
        many times the median (sigma 0.77: the 99th percentile is about 6 x the median).
        """
        cfg = self.config
        if cfg.distribution == "lognormal":
            return cfg.latency_s * math.exp(self._rng.gauss(0.0, cfg.sigma))
        low_s, high_s = cfg.latency_s - cfg.jitter_s, cfg.latency_s + cfg.jitter_s
        floor_s = MIN_SERVICE_S if cfg.latency_s >= MIN_SERVICE_S else max(0.0, low_s)
        return max(floor_s, self._rng.uniform(low_s, high_s))

    def _decide(self, kind: str, leads: list[tuple[str, dict[str, Any]]]) -> int | str:
        script = self.scripts.get(leads[0][0])
        if script:
            code = script.pop(0) if len(script) > 1 else script[0]  # the last code is sticky
        elif kind == "update" and self.config.strict_leads and leads[0][0] not in self.leads:
            code = 101
        else:
            code = _natural_code(kind, leads)
        if code == 0:
            self._store(kind, leads)
        return code

    def _store(self, kind: str, leads: list[tuple[str, dict[str, Any]]]) -> None:
        for lead_id, fields in leads:
            if not lead_id:
                continue  # an insert without an external id cannot be looked up later
            if kind == "insert":
                self.leads[lead_id] = dict(fields)
            else:
                stored = self.leads.setdefault(lead_id, {})
                stored.update({k: v for k, v in fields.items() if v != NO_CHANGE})

    def _answer(
        self, code: int, leads: list[tuple[str, dict[str, Any]]] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Count and format an answer; `leads` is given only for calls that reached the PBX."""
        self.answers[code] += 1
        if leads is not None:
            self.calls += 1
            self.calls_by_lead.update({lead_id for lead_id, _ in leads if lead_id})
        message, status = ANSWERS.get(code, UNKNOWN_ANSWER)
        return status, {"code": code, "message": message}


def _natural_code(kind: str, leads: list[tuple[str, dict[str, Any]]]) -> int:
    """What Noojee answers for the payload itself, when no script overrides it."""
    if any(not any(name.endswith("Phone") for name in fields) for _, fields in leads):
        return 102
    if kind == "insert" and any(v == NO_CHANGE for _, f in leads for v in f.values()):
        return 108
    for _, fields in leads:
        date = fields.get("njCallBackDate", NO_CHANGE)
        if date != NO_CHANGE and not _is_callback_date(date):
            return 114
    # njPriority outside 0-100 is accepted: Noojee documents no error code for it.
    return 0


def _fields_by_lead(
    kind: str, lead_id: str, leads: list[tuple[str, dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """The leads a call names, for the arrival log: an update names its njExternalLeadId even
    when its body is bad (fields {}); an insert names the leads of its body that carry an id
    (a lead twice in one body: its last fields, as stored)."""
    if kind == "update":
        return {lead_id: leads[0][1] if leads else {}} if lead_id else {}
    return {lead: fields for lead, fields in leads if lead}


def _parse_leads(kind: str, lead_id: str, payload: Any) -> list[tuple[str, dict[str, Any]]]:
    """(lead id, fields) pairs from a call body; ValueError if the body has the wrong shape."""
    if kind == "update":
        if not isinstance(payload, dict):
            raise ValueError("updateLeadFast expects one JSON object of lead fields")
        return [(lead_id, payload)]
    if not (isinstance(payload, list) and payload and all(isinstance(o, dict) for o in payload)):
        raise ValueError("insertLeadFast expects a non-empty JSON array of lead objects")
    return [(str(lead.get("njExternalLeadId", "")), lead) for lead in payload]


def _is_callback_date(value: Any) -> bool:
    # The regex insists on zero padding, which strptime alone would not; strptime checks the date.
    try:
        return bool(CALLBACK_DATE_RE.fullmatch(value) and datetime.strptime(value, CALLBACK_FMT))
    except (TypeError, ValueError):
        return False


def _foreign_request(body: Any) -> tuple[int, float]:
    """(slots, duration_s) from a POST /_foreign body; duration_s may be left out for slots 0."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object")
    allowed = {"slots", "duration_s"}
    if unknown := sorted(set(body) - allowed):
        raise ValueError(f"unknown setting {unknown[0]!r}; allowed: {sorted(allowed)}")
    slots: Any = body.get("slots")
    if not (_is_int(slots) and slots >= 0):
        raise ValueError(f"slots must be a non-negative integer, got {slots!r}")
    duration_s: Any = body.get("duration_s", 0 if slots == 0 else None)
    number_ok = _is_int(duration_s) or isinstance(duration_s, float)
    if not (number_ok and math.isfinite(duration_s) and duration_s >= 0):  # no NaN, Infinity
        raise ValueError(f"duration_s must be a non-negative number, got {duration_s!r}")
    return slots, float(duration_s)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_code(value: Any) -> bool:
    """A scripted code: an integer, "slow" or "echo"."""
    return _is_int(value) or value in (SLOW, ECHO)


# Path only: the query string carries the apiKey, which must never reach a log.
_log_request = log_paths_only(log)


class _SimHandler(tornado.web.RequestHandler):
    def initialize(self, sim: NoojeeSimulator, kind: str = "") -> None:
        self.sim = sim
        self.kind = kind

    def reply(self, status: int, body: Any) -> None:
        send(self, status, body, "text/plain")


class _CallHandler(_SimHandler):
    async def post(self) -> None:
        args = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        self.reply(*await self.sim.call(self.kind, args, self.request.body))


class _AdminHandler(_SimHandler):
    """GET /_stats, /_timeline, /_leads/ID; POST /_script, /_config, /_foreign, /_peaks,
    /_reset (no apiKey)."""

    async def get(self, action: str, lead_id: str = "") -> None:
        if action == "stats":
            return self.reply(200, self.sim.stats())
        if action == "timeline":
            try:
                return self.reply(200, self.sim.timeline(self.get_query_argument("since", None)))
            except ValueError as exc:
                return self.reply(400, {"error": str(exc)})
        if action != "leads":
            raise tornado.web.HTTPError(405)
        lead = self.sim.leads.get(lead_id)
        self.reply(*((200, lead) if lead is not None else (404, {"error": "unknown lead"})))

    async def post(self, action: str) -> None:
        Answer = dict[str, Any]
        actions: dict[str, Callable[[Any], Answer | Awaitable[Answer]]] = {
            "script": self.sim.set_scripts,
            "config": self.sim.configure,
            "foreign": self.sim.foreign,
            "peaks": lambda _body: self.sim.reset_peaks(),
            "reset": lambda _body: self.sim.reset(),
        }
        await run_admin_action(actions, action, self.request.body, self.reply)


def serve(
    config: NoojeeSimConfig,
    host: str = "127.0.0.1",
    port: int = 8081,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the simulator until SIGINT/SIGTERM, or until `stop` is set (``serve_app``)."""
    serve_app(lambda: NoojeeSimulator(config).make_app(), host, port, ready, stop, "noojee")


def _script_arg(text: str) -> tuple[str, Script]:
    lead, _, codes = text.partition("=")
    try:
        parsed: Script = [code if code in (SLOW, ECHO) else int(code) for code in codes.split(",")]
    except ValueError:
        parsed = []
    if not lead or not parsed:
        raise argparse.ArgumentTypeError(
            f"expected LEAD=CODE[,CODE...] e.g. L1=110,0 (a CODE may be {SLOW}): {text!r}"
        )
    return lead, parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.noojee",
        description="Simulate Noojee Contact's CampaignAPI (updateLeadFast, insertLeadFast) "
        "with a PBX of limited slots: calls queue FIFO and fail with 109 after --queue-timeout. "
        "Times are in seconds.",
        epilog="Admin (no apiKey): GET /_stats, GET /_leads/ID, GET /_timeline?since=T, "
        "POST /_script {lead, codes}, POST /_config {slots, latency_s, jitter_s, queue_timeout_s, "
        "distribution, sigma, strict_leads (an update of a lead never stored answers 101)}, "
        "POST /_foreign {slots, duration_s} (another client holds slots; slots 0 ends holds), "
        "POST /_peaks (restart the peak counters), POST /_reset (clears the arrivals too). "
        'A script code may be "slow": held slow_s (given with the script), then 109, nothing '
        'stored; or "echo": 110 with a message quoting the lead\'s fields. GET /_arrivals: '
        "every lead's calls (n, start, end, call, status, code, applied, "
        "fields); GET /_arrivals/ID: one lead's. /_stats counts peak_calls_per_record and "
        "overlapping_records (leads with 2+ calls in flight at once).",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    add("--port", type=int, default=8081, help="port; 0 picks a free one (default %(default)s)")
    add("--slots", type=int, default=4, help="calls the PBX processes at once (default 4)")
    add("--latency", type=float, default=0.1, metavar="S", help="mean service time (default 0.1)")
    add("--jitter", type=float, default=0.02, metavar="S", help="uniform +/- jitter (default 0.02)")
    add(
        "--distribution",
        choices=DISTRIBUTIONS,
        default="uniform",
        help="service time: uniform (--latency +/- --jitter, default) or lognormal (median "
        "--latency, log-sd --sigma: a heavy tail)",
    )
    add(
        "--sigma",
        type=float,
        default=0.77,
        help="lognormal log-sd (default 0.77: the 99th percentile is 6 x the median)",
    )
    add("--queue-timeout", type=float, default=60, metavar="S", help="max queue wait (default 60)")
    add("--api-key", default="sandbox-key", help="the apiKey to accept (default %(default)s)")
    add(
        "--script",
        type=_script_arg,
        action="append",
        default=[],
        metavar="LEAD=CODE[,CODE...]",
        help="codes, slow or echo for one lead, one per call, the last sticky (repeatable)",
    )
    add("--seed", type=int, default=None, help="random seed for the service-time jitter")
    add("--port-file", metavar="PATH", help="write the bound port to PATH once listening")
    args = parser.parse_args(argv)

    config = NoojeeSimConfig(
        slots=args.slots,
        latency_s=args.latency,
        jitter_s=args.jitter,
        distribution=args.distribution,
        sigma=args.sigma,
        queue_timeout_s=args.queue_timeout,
        api_key=args.api_key,
        scripts=dict(args.script),
        seed=args.seed,
    )

    announce = announcer("noojee", args.host, args.port_file, f"slots={config.slots}")
    serve(config, args.host, args.port, ready=announce)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
