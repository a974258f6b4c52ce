"""Noojee Contact CampaignAPI simulator (updateLeadFast / insertLeadFast) over real HTTP.

Owns the PBX model (shared slots, FIFO queue, 109 after queue_timeout_s), scripted answers per
lead, the stored leads, and the admin endpoints (/_stats, /_script, /_config, /_reset, /_leads).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import random
import re
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

API_PREFIX = "/servicemanager/rest/CampaignAPI"
NO_CHANGE = "<No Change>"
MIN_SERVICE_S = 0.100  # Noojee: "no call finishes in under 100 ms"
CALLBACK_DATE_RE = re.compile(r"[0-9]{4}/[0-9]{2}/[0-9]{2} [0-9]{2}:[0-9]{2}")  # yyyy/MM/dd HH:mm
CALLBACK_FMT = "%Y/%m/%d %H:%M"
ID_PARAMS = (("fTemplateId", 116), ("fCampaignId", 117), ("fAllocationId", 115))

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
# Scripts may use codes outside the table, to exercise the worker's "unknown code" path.
UNKNOWN_ANSWER = ("UNKNOWN", 400)

log = logging.getLogger(__name__)


@dataclass
class NoojeeSimConfig:
    """How the simulated PBX behaves. Times are in seconds; `scripts` maps lead id -> codes."""

    slots: int = 4  # concurrent calls the PBX processes (insert and update share them)
    latency_s: float = 0.100  # mean service time of one call, holding a slot
    jitter_s: float = 0.020  # uniform +/- jitter around latency_s (see _service_time_s)
    queue_timeout_s: float = 60.0  # a queued call that waited this long gets 109
    api_key: str = "sandbox-key"
    scripts: dict[str, list[int]] = field(default_factory=dict)  # njExternalLeadId -> codes
    seed: int | None = None


class SlotGate:
    """The PBX's shared slots: FIFO admission of waiters, capacity changeable at runtime."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.in_flight = 0
        self.peak_in_flight = 0
        self.peak_queued = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self, timeout_s: float) -> bool:
        """Take a slot, waiting in FIFO order for at most timeout_s; False if the wait timed out."""
        # Newcomers may not overtake waiters, even when a slot looks free.
        if not self._waiters and self.in_flight < self.slots:
            self._take()
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        self.peak_queued = max(self.peak_queued, len(self._waiters))
        timer = loop.call_later(timeout_s, self._expire, waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # A slot handed over just before the cancel would otherwise leak forever.
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()
            else:
                self._forget(waiter)
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        self.in_flight -= 1
        self._admit()

    def set_slots(self, slots: int) -> None:
        """Raising admits waiters at once; lowering lets holders finish and admits no one new."""
        self.slots = slots
        self._admit()

    def reset_peaks(self) -> None:
        self.peak_in_flight, self.peak_queued = self.in_flight, self.queued

    def _take(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _admit(self) -> None:
        while self._waiters and self.in_flight < self.slots:
            waiter = self._waiters.popleft()
            if not waiter.done():  # done = cancelled by its caller; it holds nothing
                self._take()
                waiter.set_result(True)

    def _expire(self, waiter: asyncio.Future[bool]) -> None:
        if not waiter.done():
            self._forget(waiter)
            waiter.set_result(False)

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):  # already admitted or expired
            self._waiters.remove(waiter)


class NoojeeSimulator:
    """The simulated CampaignAPI: one instance per server, used only from its event loop."""

    def __init__(self, config: NoojeeSimConfig) -> None:
        # A private copy, so /_config and consumed scripts never leak into the caller's object.
        self.config = replace(config, scripts={})
        self.gate = SlotGate(config.slots)
        self._rng = random.Random(config.seed)
        self.scripts: dict[str, list[int]] = {k: list(v) for k, v in config.scripts.items()}
        self.leads: dict[str, dict[str, Any]] = {}
        self._reset_stats()

    def make_app(self) -> tornado.web.Application:
        """The Noojee endpoints (paths as Noojee's) and the admin endpoints, on one app."""
        sim = {"sim": self}
        return tornado.web.Application(
            [
                (f"{API_PREFIX}/updateLeadFast", _CallHandler, {**sim, "kind": "update"}),
                (f"{API_PREFIX}/insertLeadFast", _CallHandler, {**sim, "kind": "insert"}),
                (r"/_(stats|script|config|reset)", _AdminHandler, sim),
                (r"/_(leads)/(.+)", _AdminHandler, sim),
            ],
            log_function=_log_request,
        )

    def stats(self) -> dict[str, Any]:
        """What GET /_stats answers; `calls` counts calls that reached the PBX (incl. 109)."""
        return {
            "calls": self.calls,
            "answers": {str(code): n for code, n in sorted(self.answers.items())},
            "http_401": self.http_401,
            "calls_by_lead": dict(self.calls_by_lead),
            "in_flight": self.gate.in_flight,
            "queued": self.gate.queued,
            "peak_in_flight": self.gate.peak_in_flight,
            "peak_queued": self.gate.peak_queued,
            "slots": self.gate.slots,
            "busy_slot_s": round(self.busy_slot_s, 6),
            "started_at": self.started_at,
        }

    async def call(self, kind: str, args: dict[str, str], body: bytes) -> tuple[int, Any]:
        """Answer one insert/update call: (HTTP status, JSON answer or plain-text error)."""
        if not hmac.compare_digest(args.get("apiKey", "").encode(), self.config.api_key.encode()):
            self.http_401 += 1
            return 401, "Invalid apiKey"
        # Noojee rejects these before the call reaches the PBX, so they take no slot.
        for name, code in ID_PARAMS:
            if not re.fullmatch(r"[0-9]+", args.get(name, "")):
                return self._answer(code)
        lead_id = args.get("njExternalLeadId", "")
        if kind == "update" and not lead_id:
            return self._answer(113)
        try:
            leads = _parse_leads(kind, lead_id, json.loads(body))
        except ValueError as exc:
            return 400, f"Bad request body: {exc}"

        if not await self.gate.acquire(self.config.queue_timeout_s):
            return self._answer(109, leads)
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        try:
            await asyncio.sleep(self._service_time_s())
        finally:
            self.busy_slot_s += loop.time() - started_s
            self.gate.release()
        return self._answer(self._decide(kind, leads), leads)

    def set_scripts(self, body: Any) -> dict[str, Any]:
        """Apply {"lead": ID, "codes": [...]} or {"scripts": {ID: [...]}}; ValueError if bad."""
        scripts: dict[str, Any]
        if isinstance(body, dict) and "lead" in body:
            scripts = {str(body["lead"]): body.get("codes")}
        elif isinstance(body, dict) and isinstance(body.get("scripts"), dict):
            scripts = {str(k): v for k, v in body["scripts"].items()}
        else:
            raise ValueError('expected {"lead": ID, "codes": [...]} or {"scripts": {ID: [...]}}')
        for lead, codes in scripts.items():
            if not codes or not isinstance(codes, list) or not all(_is_int(c) for c in codes):
                raise ValueError(f"codes for lead {lead!r} must be a non-empty list of integers")
        self.scripts.update({lead: list(codes) for lead, codes in scripts.items()})
        return {"scripts": self.scripts}

    def configure(self, body: Any) -> dict[str, Any]:
        """Apply any of slots/latency_s/jitter_s/queue_timeout_s at once; ValueError if invalid."""
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        allowed = {"slots", "latency_s", "jitter_s", "queue_timeout_s"}
        for key, value in body.items():
            if key not in allowed:
                raise ValueError(f"unknown setting {key!r}; allowed: {sorted(allowed)}")
            number_ok = _is_int(value) or (key != "slots" and isinstance(value, float))
            if not (number_ok and value >= 0):  # also refuses NaN, which json.loads accepts
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        for key, value in body.items():
            setattr(self.config, key, value)
        if "slots" in body:
            self.gate.set_slots(body["slots"])
        return {key: getattr(self.config, key) for key in sorted(allowed)}

    def reset(self) -> dict[str, Any]:
        self.scripts.clear()
        self.leads.clear()
        self._reset_stats()
        return {"reset": True}

    def _reset_stats(self) -> None:
        self.calls = 0
        self.answers: Counter[int] = Counter()
        self.http_401 = 0
        self.calls_by_lead: Counter[str] = Counter()
        self.busy_slot_s = 0.0
        self.started_at = time.time()
        self.gate.reset_peaks()

    def _service_time_s(self) -> float:
        """Uniform in latency_s +/- jitter_s, never under Noojee's documented 100 ms.

        A latency_s configured below 100 ms (fast tests) deliberately opts out of that floor;
        the floor is then latency_s - jitter_s (and never below 0).
        """
        cfg = self.config
        low_s, high_s = cfg.latency_s - cfg.jitter_s, cfg.latency_s + cfg.jitter_s
        floor_s = MIN_SERVICE_S if cfg.latency_s >= MIN_SERVICE_S else max(0.0, low_s)
        return max(floor_s, self._rng.uniform(low_s, high_s))

    def _decide(self, kind: str, leads: list[tuple[str, dict[str, Any]]]) -> int:
        script = self.scripts.get(leads[0][0])
        if script:
            code = script.pop(0) if len(script) > 1 else script[0]  # the last code is sticky
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # Path only: the query string carries the apiKey, which must never reach a log.
    request = handler.request
    log.debug("%s %s %d", request.method, request.path, handler.get_status())


class _SimHandler(tornado.web.RequestHandler):
    def initialize(self, sim: NoojeeSimulator, kind: str = "") -> None:
        self.sim = sim
        self.kind = kind

    def reply(self, status: int, body: Any) -> None:
        self.set_status(status)
        text = isinstance(body, str)
        self.set_header("Content-Type", "text/plain; charset=UTF-8" if text else "application/json")
        self.finish(body if text else json.dumps(body))


class _CallHandler(_SimHandler):
    async def post(self) -> None:
        args = {name: self.get_query_argument(name) for name in self.request.query_arguments}
        self.reply(*await self.sim.call(self.kind, args, self.request.body))


class _AdminHandler(_SimHandler):
    """GET /_stats, GET /_leads/ID; POST /_script, /_config, /_reset (no apiKey)."""

    async def get(self, action: str, lead_id: str = "") -> None:
        if action == "stats":
            return self.reply(200, self.sim.stats())
        if action != "leads":
            raise tornado.web.HTTPError(405)
        lead = self.sim.leads.get(lead_id)
        self.reply(*((200, lead) if lead is not None else (404, {"error": "unknown lead"})))

    async def post(self, action: str) -> None:
        actions: dict[str, Callable[[Any], dict[str, Any]]] = {
            "script": self.sim.set_scripts,
            "config": self.sim.configure,
            "reset": lambda _body: self.sim.reset(),
        }
        if action not in actions:
            raise tornado.web.HTTPError(405)
        try:
            self.reply(200, actions[action](json.loads(self.request.body or b"{}")))
        except ValueError as exc:  # including a body that is not JSON
            self.reply(400, {"error": str(exc)})


def serve(
    config: NoojeeSimConfig,
    host: str = "127.0.0.1",
    port: int = 8081,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the simulator until SIGINT/SIGTERM (blocking).

    `port=0` picks a free port; `ready(port)` is called once listening. Signals are handled only
    when called from the main thread; to run it in a background thread (tests), pass `stop`:
    serve() closes the server and returns once `stop` is set.
    """

    async def run() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, done.set)
        if stop is not None:
            # threading.Event is not awaitable: a daemon thread forwards it into the loop.
            def forward_stop() -> None:
                stop.wait()
                with contextlib.suppress(RuntimeError):  # the loop already ended on a signal
                    loop.call_soon_threadsafe(done.set)

            threading.Thread(target=forward_stop, name="noojee-sim-stop", daemon=True).start()

        sockets = tornado.netutil.bind_sockets(port, host)
        server = tornado.httpserver.HTTPServer(NoojeeSimulator(config).make_app())
        server.add_sockets(sockets)
        try:
            if ready is not None:
                ready(sockets[0].getsockname()[1])
            await done.wait()
        finally:
            server.stop()
            await server.close_all_connections()

    asyncio.run(run())


def _script_arg(text: str) -> tuple[str, list[int]]:
    lead, _, codes = text.partition("=")
    try:
        parsed = [int(code) for code in codes.split(",")]
    except ValueError:
        parsed = []
    if not lead or not parsed:
        raise argparse.ArgumentTypeError(f"expected LEAD=CODE[,CODE...] e.g. L1=110,0: {text!r}")
    return lead, parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.noojee",
        description="Simulate Noojee Contact's CampaignAPI (updateLeadFast, insertLeadFast) "
        "with a PBX of limited slots: calls queue FIFO and fail with 109 after --queue-timeout. "
        "Times are in seconds.",
        epilog="Admin (no apiKey): GET /_stats, GET /_leads/ID, POST /_script {lead, codes}, "
        "POST /_config {slots, latency_s, jitter_s, queue_timeout_s}, POST /_reset.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    add("--port", type=int, default=8081, help="port; 0 picks a free one (default %(default)s)")
    add("--slots", type=int, default=4, help="calls the PBX processes at once (default 4)")
    add("--latency", type=float, default=0.1, metavar="S", help="mean service time (default 0.1)")
    add("--jitter", type=float, default=0.02, metavar="S", help="uniform +/- jitter (default 0.02)")
    add("--queue-timeout", type=float, default=60, metavar="S", help="max queue wait (default 60)")
    add("--api-key", default="sandbox-key", help="the apiKey to accept (default %(default)s)")
    add("--script", type=_script_arg, action="append", default=[], metavar="LEAD=CODE[,CODE...]",
        help="answer codes for one lead, one per call, the last sticky (repeatable)")  # fmt: skip
    add("--seed", type=int, default=None, help="random seed for the service-time jitter")
    add("--port-file", metavar="PATH", help="write the bound port to PATH once listening")
    args = parser.parse_args(argv)

    config = NoojeeSimConfig(
        slots=args.slots,
        latency_s=args.latency,
        jitter_s=args.jitter,
        queue_timeout_s=args.queue_timeout,
        api_key=args.api_key,
        scripts=dict(args.script),
        seed=args.seed,
    )

    def announce(port: int) -> None:
        url = f"http://{args.host}:{port}"
        print(f"noojee simulator listening on {url} (slots={config.slots})", flush=True)
        if args.port_file:
            # Write then rename, so a parent polling the file never reads a partial number.
            with open(f"{args.port_file}.tmp", "w") as f:
                f.write(f"{port}\n")
            os.replace(f"{args.port_file}.tmp", args.port_file)

    serve(config, args.host, args.port, ready=announce)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
