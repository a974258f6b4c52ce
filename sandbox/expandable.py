"""Expandable ERP API simulator (auth-token-get, customer-contact-update) over real HTTP.

Owns the auth tokens (issued by POST /api/auth-token-get, carried in the JSON body of every call,
expiring after token_ttl_s), the stored customer contacts keyed by (CUSTOMER_ID, CUST_CONTACT),
scripted answers per CUSTOMER_ID or per contact, each contact's arrival log (sandbox/_records.py)
and the admin endpoints (/_stats, /_script, /_config, /_reset, /_expire_tokens, /_contacts,
/_arrivals).

A contact is named in one string as "CUSTOMER/CONTACT", each part percent-encoded as by
urllib.parse.quote(part, safe="") (record_key): ids holding "/" or "%" stay unambiguous. The
arrival log's records and contact scripts use it; a customer's script id is its encoded id.

What the source page documents is followed to the letter: UPPER_SNAKE field names, NOTES up to
32,765 characters, 200 with the whole updated record, 400 "Request JSON is invalid.", 401 for a
token not provided / malformed / login failure, 405 "Request method must be POST.", 500 with
{"MESSAGE", "MESSAGE_CODE"}. What it leaves open is decided here and marked so: the MESSAGE_CODE
values, the token format, the 500 messages, the date formats, the order of the checks.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import math
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

import tornado.httpserver
import tornado.netutil
import tornado.web

from sandbox._records import Arrival, ArrivalBounds, ArrivalLog, arrival_routes
from sandbox._serving import (
    SLOW,
    SlowHolds,
    announcer,
    log_paths_only,
    parse_scripts,
    parse_slow_s,
    run_admin_action,
    send,
    serve_app,
)

LOGIN_PATH = "/api/auth-token-get"
UPDATE_PATH = "/api/customer-contact-update"
NOTES_MAX = 32_765  # documented: "Notes can be up to 32,765 characters long."
TOKENS_MAX = 10_000  # issued tokens remembered (so old ones answer "expired"); oldest dropped
# Our choice, not documented: 32 upper-case hex digits. Anything else is "malformed".
TOKEN_RE = re.compile(r"[0-9A-F]{32}")

KEYS = ("CUSTOMER_ID", "CUST_CONTACT")
# The fields a call may change, in the order of the source page's "Full Request JSON".
FIELDS = (
    "CONTACT_STATUS",
    "FIRST_NAME",
    "LAST_NAME",
    "INITIAL",
    "TITLE",
    "MAIL_STOP",
    "ADDRESS_1",
    "ADDRESS_2",
    "ADDRESS_3",
    "CITY",
    "STATE",
    "ZIP_CODE",
    "COUNTRY",
    "PHONE_NO",
    "FAX_NO",
    "CELL_PHONE_NO",
    "PAGER_NO",
    "E_MAIL",
    "E_MAIL_2",
    "WEB_ADDRESS",
    *(f"SOFCT_USER_{n}" for n in range(1, 17)),
    "NOTES",
    "ATTACHMENTS",
)
AUDIT = (
    "CREATED_BY",
    "DATE_CREATED",
    "MODIFIED_BY",
    "DATE_MODIFIED",
    "OPERATOR_ID",
    "DATE_LAST_UPDT",
    "TIME_LAST_UPDT",
)
# The record a 200 answers, in the order of the source page's "Success Response".
RECORD = (*KEYS, *FIELDS[:-2], *AUDIT, *FIELDS[-2:])
REQUEST_KEYS = frozenset({*KEYS, *FIELDS, "AUTH_TOKEN"})
DATE_FMT, TIME_FMT = "%Y-%m-%d", "%H:%M:%S"  # our choice: the page shows only ""

# Documented messages (the page's failure list); the MESSAGE_CODE values are ours.
INVALID_JSON = "Request JSON is invalid."
NOT_PROVIDED = "Auth Token was not provided."
MALFORMED = "Auth Token is malformed."
LOGIN_FAILURE = "Auth Token login failure."
EXPIRED = "Auth Token is expired."  # named in CRM_APIS.md, not on the source page
BAD_LOGIN = "The user name or password is incorrect."  # ours: login_refusal 500
NOT_POST = "Request method must be POST."
# 500 carries business errors and faults alike (messages and codes are ours).
CUSTOMER_NOT_FOUND = ("Customer ID does not exist.", "CUSTOMER_NOT_FOUND")
CONTACT_NOT_FOUND = ("Customer Contact does not exist.", "CUST_CONTACT_NOT_FOUND")
UNEXPECTED = ("An unexpected error occurred.", "UNEXPECTED_ERROR")

# Scripted answers. "ok" answers what the call itself deserves (200, or 500 for an unknown
# contact); the others replace that answer, after the token and the JSON were found valid.
# "slow" holds the call slow_s (POST /_script), then answers as the gateway that gave up.
SCRIPT_ANSWERS = (
    "ok",
    "http-400",
    "http-401-expired",
    "http-401-login",
    "http-405",
    "http-500",
    "http-502",
    "http-503",
    "http-504",
    SLOW,
)
SLOW_ANSWER = "http-504"
GATEWAY = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
DOWN_VALUES = ("502", "503", "504")

# Fictitious contacts present at start and after /_reset; the first is the page's example.
SEED_CONTACTS: tuple[dict[str, str], ...] = (
    {
        "CUSTOMER_ID": "ABCCORP",
        "CUST_CONTACT": "JHERNANDEZ",
        "FIRST_NAME": "Juan",
        "LAST_NAME": "Hernandez",
        "E_MAIL": "jhernandez@abccorp.com",
        "CONTACT_STATUS": "A",
    },
    {
        "CUSTOMER_ID": "ABCCORP",
        "CUST_CONTACT": "MSMITH",
        "FIRST_NAME": "Mary",
        "LAST_NAME": "Smith",
        "PHONE_NO": "555-0100",
        "CONTACT_STATUS": "A",
    },
    {
        "CUSTOMER_ID": "XYZINC",
        "CUST_CONTACT": "TJONES",
        "FIRST_NAME": "Tom",
        "LAST_NAME": "Jones",
        "CITY": "Springfield",
        "CONTACT_STATUS": "A",
    },
)

Answer = tuple[int, Any]  # (HTTP status, JSON-able body, or str for an HTML gateway page)

log = logging.getLogger(__name__)


@dataclass
class ExpandableSimConfig:
    """How the simulated ERP behaves. Times in seconds; `scripts` maps a script id (CUSTOMER_ID,
    or CUSTOMER/CONTACT: see script_key) -> answers."""

    data_source: str = "SANDBOX"
    username: str = "sandbox"
    password: str = field(default="sandbox-password", repr=False)
    token_ttl_s: float = 1800.0
    latency_s: float = 0.0  # added to every API call (login and update)
    down: str | None = None  # "503" (or "502", "504"): every API call answers that status
    #: How a wrong login is answered: 401 "Auth Token login failure." (the seed page's word for
    #: a token's), or 500 with a MESSAGE_CODE, as some installations answer auth-token-get.
    login_refusal: int = 401
    scripts: dict[str, list[str]] = field(default_factory=dict)
    arrival_bounds: ArrivalBounds = field(default_factory=ArrivalBounds)


def record_key(customer: str, contact: str) -> str:
    """A contact's name in one string, "CUSTOMER/CONTACT" with each part percent-encoded: the
    arrival log's record id, and a contact's script id."""
    return f"{quote(customer, safe='')}/{quote(contact, safe='')}"


def script_key(script_id: str) -> str:
    """A script id as kept: "CUSTOMER" (every contact of the customer) or "CUSTOMER/CONTACT"
    (one contact), each part percent-decoded then encoded again as record_key does, so that
    "A B" and "A%20B" are one id; ValueError if it is neither."""
    parts = script_id.split("/")
    if len(parts) > 2 or not all(parts):
        raise ValueError(f"a script id is CUSTOMER or CUSTOMER/CONTACT, got {script_id!r}")
    return "/".join(quote(unquote(part), safe="") for part in parts)


@dataclass
class _Token:
    issued_s: float  # time.monotonic()
    expired: bool = False  # set by a scripted http-401-expired / http-401-login


class _Invalid(Exception):
    """A request body refused with 400 "Request JSON is invalid."; args[0] is the code."""


class ExpandableSimulator:
    """The simulated Expandable API: one instance per server, used only from its event loop."""

    def __init__(self, config: ExpandableSimConfig) -> None:
        # A private copy, so /_config and consumed scripts never leak into the caller's object.
        self.config = replace(config, scripts={})
        self.scripts: dict[str, list[str]] = {
            script_key(k): list(v) for k, v in config.scripts.items()
        }
        self.slow = SlowHolds()
        self.arrivals = ArrivalLog(config.arrival_bounds)  # per record_key(CUSTOMER, CONTACT)
        self.tokens: dict[str, _Token] = {}
        self.expired_before_s = -math.inf  # tokens issued at or before this are expired
        self.contacts: dict[tuple[str, str], dict[str, str]] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self._seed_contacts()
        self._reset_stats()

    def make_app(self) -> tornado.web.Application:
        sim = {"sim": self}
        return tornado.web.Application(
            [
                (LOGIN_PATH, _ApiHandler, {**sim, "kind": "login"}),
                (UPDATE_PATH, _ApiHandler, {**sim, "kind": "update"}),
                (r"/_(stats|script|config|reset|expire_tokens|contacts)", _AdminHandler, sim),
                (r"/_(contacts)/([^/]+)/([^/]+)", _AdminHandler, sim),
                *arrival_routes(self.arrivals, "([^/]+)/([^/]+)", record_key),
            ],
            log_function=_log_request,
        )

    # --- the API -------------------------------------------------------------------------

    def early_answer(self, kind: str, method: str) -> Answer | None:
        """An answer given before the body is looked at: the server is down, or not a POST.
        An update POST is left to update(), which logs it on its contact even when down."""
        if kind == "update" and method == "POST":
            return None
        early = self._early_answer(method)
        if early is None:
            return None
        if kind == "update":
            self.calls += 1
        return self._count(kind, early)

    def _early_answer(self, method: str) -> Answer | None:
        down = self.config.down
        if down is not None:
            return _gateway(int(down))
        if method != "POST":
            return _error(405, NOT_POST, "METHOD_NOT_ALLOWED")
        return None

    async def login(self, body: bytes) -> Answer:
        """POST /api/auth-token-get {"DATA_SOURCE", "USER_NAME", "PASSWORD"} -> AUTH_TOKEN."""
        await self._latency()
        try:
            payload = json.loads(body)
        except ValueError:
            return self._count("login", _error(400, INVALID_JSON, "INVALID_JSON"))
        names = ("DATA_SOURCE", "USER_NAME", "PASSWORD")
        if not (isinstance(payload, dict) and all(isinstance(payload.get(n), str) for n in names)):
            return self._count("login", _error(400, INVALID_JSON, "INVALID_JSON"))
        cfg = self.config
        expected = (cfg.data_source, cfg.username, cfg.password)
        # Every comparison runs, so the time taken does not tell which one failed.
        matches = [_same(payload[n], want) for n, want in zip(names, expected, strict=True)]
        if not all(matches):
            self.login_failures += 1
            if cfg.login_refusal == 500:  # as some installations answer wrong credentials
                return self._count("login", _error(500, BAD_LOGIN, "INVALID_USER_LOGIN"))
            return self._count("login", _error(401, LOGIN_FAILURE, "AUTH_TOKEN_LOGIN_FAILURE"))
        token = secrets.token_hex(16).upper()
        self.tokens[token] = _Token(time.monotonic())
        while len(self.tokens) > TOKENS_MAX:
            del self.tokens[next(iter(self.tokens))]
        self.logins += 1
        return self._count("login", (200, {"AUTH_TOKEN": token}))

    async def update(self, body: bytes) -> Answer:
        """POST /api/customer-contact-update: answer one call, counting it while in flight.

        A body naming CUSTOMER_ID and CUST_CONTACT is logged on that contact whatever it
        answers (an outage's gateway page included; applied iff 200), unless its token was
        refused; it counts in flight on the contact throughout, the latency included.
        """
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            payload = json.loads(body)
        except ValueError:  # includes bytes that are not UTF-8
            payload = _NOT_JSON
        try:
            with self.arrivals.track(_fields_by_record(payload), "update") as arrival:
                if self.config.down is not None:
                    answer = _gateway(int(self.config.down))
                else:
                    await self._latency()
                    answer = await self._update(payload, arrival)
                status, answer_body = answer
                code = answer_body.get("MESSAGE_CODE") if isinstance(answer_body, dict) else None
                arrival.answered(status, code, applied=status == 200)
            return self._count("update", answer)
        finally:
            self.in_flight -= 1

    async def _update(self, payload: Any, arrival: Arrival) -> Answer:
        # Order of the checks (ours): JSON object, token, fields, script, then the business.
        if payload is _NOT_JSON:
            return _error(400, INVALID_JSON, "INVALID_JSON")
        if not isinstance(payload, dict):
            return _error(400, INVALID_JSON, "NOT_AN_OBJECT")
        customer = payload.get("CUSTOMER_ID")
        if isinstance(customer, str) and customer:
            self.calls_by_customer[customer] += 1
        token = payload.get("AUTH_TOKEN")
        if (refused := self._check_token(token)) is not None:
            arrival.refused()  # the token was refused before the contact was looked at
            return refused
        try:
            key, changes = _contact_fields(payload, require_change=True)
        except _Invalid as exc:
            return _error(400, INVALID_JSON, str(exc))
        scripted, script_id = self._next_script(*key)
        if scripted == SLOW:
            await self.slow.hold(script_id)
            scripted = SLOW_ANSWER
        if scripted != "ok":
            return self._scripted(scripted, str(token))
        if not any(stored_key[0] == key[0] for stored_key in self.contacts):
            return _error(500, *CUSTOMER_NOT_FOUND)
        record = self.contacts.get(key)
        if record is None:
            return _error(500, *CONTACT_NOT_FOUND)
        record.update(changes)
        now = datetime.now()
        record.update(
            MODIFIED_BY=self.config.username.upper(),
            DATE_MODIFIED=now.strftime(DATE_FMT),
            OPERATOR_ID=self.config.username.upper(),
            DATE_LAST_UPDT=now.strftime(DATE_FMT),
            TIME_LAST_UPDT=now.strftime(TIME_FMT),
        )
        return 200, dict(record)

    def _check_token(self, token: Any) -> Answer | None:
        if token is None or token == "":
            return _error(401, NOT_PROVIDED, "AUTH_TOKEN_NOT_PROVIDED")
        if not (isinstance(token, str) and TOKEN_RE.fullmatch(token)):
            return _error(401, MALFORMED, "AUTH_TOKEN_MALFORMED")
        issued = self.tokens.get(token)
        if issued is None:  # well formed, but never issued here (or long forgotten)
            return _error(401, LOGIN_FAILURE, "AUTH_TOKEN_LOGIN_FAILURE")
        if self._is_expired(issued):
            return _error(401, EXPIRED, "AUTH_TOKEN_EXPIRED")
        return None

    def _is_expired(self, token: _Token) -> bool:
        age_s = time.monotonic() - token.issued_s
        return (
            token.expired
            or token.issued_s <= self.expired_before_s
            or (age_s >= self.config.token_ttl_s)
        )

    def _next_script(self, customer: str, contact: str) -> tuple[str, str]:
        """(the next scripted answer, its script id): the contact's script, else its
        customer's; ("ok", "") if neither has one."""
        for script_id in (record_key(customer, contact), quote(customer, safe="")):
            script = self.scripts.get(script_id)
            if script:  # the last answer is sticky
                return (script.pop(0) if len(script) > 1 else script[0]), script_id
        return "ok", ""

    def _scripted(self, answer: str, token: str) -> Answer:
        if answer in ("http-401-expired", "http-401-login"):
            # The token really goes bad: a client that retries it unchanged is refused again.
            self.tokens[token].expired = True
            if answer == "http-401-login":
                del self.tokens[token]
                return _error(401, LOGIN_FAILURE, "AUTH_TOKEN_LOGIN_FAILURE")
            return _error(401, EXPIRED, "AUTH_TOKEN_EXPIRED")
        status = int(answer.removeprefix("http-"))
        if status in GATEWAY:
            return _gateway(status)
        return {
            400: _error(400, INVALID_JSON, "INVALID_JSON"),
            405: _error(405, NOT_POST, "METHOD_NOT_ALLOWED"),
            500: _error(500, *UNEXPECTED),
        }[status]

    async def _latency(self) -> None:
        if self.config.latency_s > 0:
            await asyncio.sleep(self.config.latency_s)

    def _count(self, kind: str, answer: Answer) -> Answer:
        status, body = answer
        (self.login_answers if kind == "login" else self.answers)[status] += 1
        if isinstance(body, dict) and "MESSAGE_CODE" in body:
            self.codes[body["MESSAGE_CODE"]] += 1
        return answer

    # --- the admin endpoints -------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What GET /_stats answers. `calls` counts every request to the update endpoint."""
        return {
            "logins": self.logins,
            "login_failures": self.login_failures,
            "login_answers": _by_status(self.login_answers),
            "calls": self.calls,
            "answers": _by_status(self.answers),
            "codes": dict(sorted(self.codes.items())),
            "calls_by_customer": dict(self.calls_by_customer),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            **self.arrivals.stats(),
            "tokens_valid": sum(not self._is_expired(t) for t in self.tokens.values()),
            "started_at": self.started_at,
        }

    def set_scripts(self, body: Any) -> dict[str, Any]:
        """Apply {"id": ID, "answers": [...]} or {"scripts": {ID: [...]}}, each with an optional
        slow_s for "slow" answers. ID: a CUSTOMER_ID, or CUSTOMER/CONTACT for one contact
        (its script wins over its customer's); see script_key."""
        slow_s = parse_slow_s(body)
        scripts = {script_key(k): v for k, v in parse_scripts(body, set(SCRIPT_ANSWERS)).items()}
        self.slow.update(scripts, slow_s)
        self.scripts.update(scripts)
        return {"scripts": self.scripts}

    def configure(self, body: Any) -> dict[str, Any]:
        """Apply any of latency_s, token_ttl_s, down, password (the one the login accepts) and
        login_refusal (401, or 500 with a MESSAGE_CODE, as some installations answer wrong
        credentials) at once; ValueError (nothing applied)."""
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        allowed = ("down", "latency_s", "token_ttl_s", "password", "login_refusal")
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key not in allowed:
                raise ValueError(f"unknown setting {key!r}; allowed: {list(allowed)}")
            if key == "password":
                if not (isinstance(value, str) and value):
                    raise ValueError("password must be a non-empty string")
                changes[key] = value
            elif key == "login_refusal":
                if value not in (401, 500):
                    raise ValueError(f"login_refusal must be 401 or 500, got {value!r}")
                changes[key] = value
            elif key == "down":
                down = None if value is None else str(value)
                if down is not None and down not in DOWN_VALUES:
                    raise ValueError(f"down must be null or one of {DOWN_VALUES}, got {value!r}")
                changes[key] = down
            elif _is_number(value) and math.isfinite(value) and value >= 0:  # no NaN, Infinity
                changes[key] = float(value)
            else:
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        for key, value in changes.items():
            setattr(self.config, key, value)
        return self.settings()

    def settings(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "down": cfg.down,
            "latency_s": cfg.latency_s,
            "token_ttl_s": cfg.token_ttl_s,
            "login_refusal": cfg.login_refusal,
        }

    def expire_tokens(self) -> dict[str, Any]:
        """POST /_expire_tokens: every token issued so far answers "expired" from now on."""
        valid = sum(not self._is_expired(t) for t in self.tokens.values())
        self.expired_before_s = time.monotonic()
        return {"expired": valid}

    def add_contact(self, body: Any) -> dict[str, Any]:
        """POST /_contacts {CUSTOMER_ID, CUST_CONTACT, fields...}: add or replace a contact."""
        if not isinstance(body, dict) or "AUTH_TOKEN" in body:
            raise ValueError("expected a JSON object of contact fields (no AUTH_TOKEN)")
        try:
            key, fields = _contact_fields(body, require_change=False)
        except _Invalid as exc:
            raise ValueError(f"invalid contact: {exc}") from None
        return dict(self._store(key, fields))

    def contact(self, customer: str, contact: str) -> dict[str, str] | None:
        record = self.contacts.get((customer, contact))
        return None if record is None else dict(record)

    def reset(self) -> dict[str, Any]:
        """Scripts, arrivals and stats cleared, contacts back to the seed. Config and tokens are
        kept."""
        self.scripts.clear()
        self.slow.clear()
        self.arrivals.reset()
        self._seed_contacts()
        self._reset_stats()
        return {"reset": True}

    def _store(self, key: tuple[str, str], fields: dict[str, str]) -> dict[str, str]:
        today = datetime.now().strftime(DATE_FMT)
        record = dict.fromkeys(RECORD, "")
        record.update(CUSTOMER_ID=key[0], CUST_CONTACT=key[1], CREATED_BY="SANDBOX")
        record.update(DATE_CREATED=today, DATE_LAST_UPDT=today, **fields)
        self.contacts[key] = record
        return record

    def _seed_contacts(self) -> None:
        self.contacts.clear()
        for seed in SEED_CONTACTS:
            key, fields = _contact_fields(dict(seed), require_change=False)
            self._store(key, fields)

    def _reset_stats(self) -> None:
        self.logins = 0
        self.login_failures = 0
        self.login_answers: Counter[int] = Counter()
        self.calls = 0
        self.answers: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.calls_by_customer: Counter[str] = Counter()
        self.peak_in_flight = self.in_flight
        self.started_at = time.time()


def _contact_fields(
    payload: dict[str, Any], require_change: bool
) -> tuple[tuple[str, str], dict[str, str]]:
    """((CUSTOMER_ID, CUST_CONTACT), fields to set) from a body; _Invalid(code) if it is bad.

    Every present field counts as a change, "" included (it clears the field). ATTACHMENTS is
    stored as sent: the page says pipe-separated but names no rule to enforce.
    """
    if unknown := set(payload) - REQUEST_KEYS:
        raise _Invalid("UNKNOWN_FIELD") from ValueError(sorted(unknown))
    customer, contact = payload.get("CUSTOMER_ID"), payload.get("CUST_CONTACT")
    if not (isinstance(customer, str) and customer and isinstance(contact, str) and contact):
        raise _Invalid("MISSING_REQUIRED_FIELD")
    fields = {name: payload[name] for name in FIELDS if name in payload}
    if not all(isinstance(value, str) for value in fields.values()):
        raise _Invalid("WRONG_TYPE")
    if len(fields.get("NOTES", "")) > NOTES_MAX:
        raise _Invalid("NOTES_TOO_LONG")
    if require_change and not fields:
        raise _Invalid("NO_FIELD_TO_UPDATE")
    return (customer, contact), fields


_NOT_JSON = object()  # a body that json.loads refused


def _fields_by_record(payload: Any) -> dict[str, dict[str, Any]]:
    """The contact a call names and the fields it carries, for the arrival log; {} if the body
    does not name both CUSTOMER_ID and CUST_CONTACT."""
    if not isinstance(payload, dict):
        return {}
    customer, contact = payload.get("CUSTOMER_ID"), payload.get("CUST_CONTACT")
    if not (isinstance(customer, str) and customer and isinstance(contact, str) and contact):
        return {}
    return {record_key(customer, contact): {n: payload[n] for n in FIELDS if n in payload}}


def _error(status: int, message: str, code: str) -> Answer:
    return status, {"MESSAGE": message, "MESSAGE_CODE": code}


def _gateway(status: int) -> Answer:
    """What the reverse proxy in front of the ERP answers: an HTML page, not JSON."""
    title = f"{status} {GATEWAY[status]}"
    return status, f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _by_status(counter: Counter[int]) -> dict[str, int]:
    return {str(status): n for status, n in sorted(counter.items())}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# Path only: bodies carry the AUTH_TOKEN, the PASSWORD and personal data.
_log_request = log_paths_only(log)


class _SimHandler(tornado.web.RequestHandler):
    def initialize(self, sim: ExpandableSimulator, kind: str = "") -> None:
        self.sim = sim
        self.kind = kind

    def reply(self, status: int, body: Any) -> None:
        send(self, status, body)


class _ApiHandler(_SimHandler):
    """The two API endpoints: POST only; every other method is answered 405 in prepare()."""

    def prepare(self) -> None:
        early = self.sim.early_answer(self.kind, self.request.method or "")
        if early is not None:
            self.reply(*early)

    async def post(self) -> None:
        if self.kind == "login":
            self.reply(*await self.sim.login(self.request.body))
        else:
            self.reply(*await self.sim.update(self.request.body))


class _AdminHandler(_SimHandler):
    """GET /_stats, /_config, /_contacts/CUSTOMER/CONTACT; POST /_script, /_config, /_reset,
    /_expire_tokens, /_contacts (no token)."""

    def get(self, action: str, customer: str = "", contact: str = "") -> None:
        if action == "stats":
            return self.reply(200, self.sim.stats())
        if action == "config":
            return self.reply(200, self.sim.settings())
        if action != "contacts" or not customer:
            raise tornado.web.HTTPError(405)
        record = self.sim.contact(customer, contact)
        self.reply(*((200, record) if record is not None else (404, {"error": "unknown contact"})))

    async def post(self, action: str, *_ids: str) -> None:
        actions: dict[str, Callable[[Any], dict[str, Any]]] = {
            "script": self.sim.set_scripts,
            "config": self.sim.configure,
            "contacts": self.sim.add_contact,
            "expire_tokens": lambda _body: self.sim.expire_tokens(),
            "reset": lambda _body: self.sim.reset(),
        }
        if _ids:
            raise tornado.web.HTTPError(405)
        await run_admin_action(actions, action, self.request.body, self.reply)


def serve(
    config: ExpandableSimConfig,
    host: str = "127.0.0.1",
    port: int = 8084,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the simulator until SIGINT/SIGTERM, or until `stop` is set (``serve_app``)."""
    serve_app(lambda: ExpandableSimulator(config).make_app(), host, port, ready, stop, "expandable")


def _script_arg(text: str) -> tuple[str, list[str]]:
    script_id, _, answers = text.partition("=")
    parsed = answers.split(",") if answers else []
    try:
        script_key(script_id)
    except ValueError:
        parsed = []
    if not parsed or any(a not in SCRIPT_ANSWERS for a in parsed):
        raise argparse.ArgumentTypeError(
            "expected CUSTOMER[/CONTACT]=ANSWER[,ANSWER...] with answers from "
            f"{list(SCRIPT_ANSWERS)}: {text!r}"
        )
    return script_id, parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.expandable",
        description="Simulate the Expandable ERP API (auth-token-get, customer-contact-update): "
        "tokens in the JSON body that expire after --token-ttl seconds, stored contacts, "
        "scripted answers per CUSTOMER_ID or per CUSTOMER/CONTACT.",
        epilog="Admin (no token): GET /_stats, GET /_config, GET /_contacts/CUSTOMER/CONTACT, "
        "GET /_arrivals (every contact's calls, keyed CUSTOMER/CONTACT with each part "
        "percent-encoded: n, start, end, call, status, code, applied, fields), "
        "GET /_arrivals/CUSTOMER/CONTACT (one contact's), "
        'POST /_script {"id", "answers", "slow_s"} (id CUSTOMER or CUSTOMER/CONTACT; answer '
        "slow: held slow_s, then 504, not applied), POST /_config {latency_s, token_ttl_s, down}, "
        "POST /_contacts {CUSTOMER_ID, CUST_CONTACT, ...}, POST /_expire_tokens, POST /_reset. "
        "/_stats counts peak_calls_per_record and overlapping_records (contacts with 2+ calls "
        "in flight at once).",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    add("--port", type=int, default=8084, help="port; 0 picks a free one (default %(default)s)")
    add("--port-file", metavar="PATH", help="write the bound port to PATH once listening")
    add("--data-source", default="SANDBOX", help="DATA_SOURCE to accept (default %(default)s)")
    add("--username", default="sandbox", help="USER_NAME to accept (default %(default)s)")
    add("--password", default="sandbox-password", help="PASSWORD to accept (sandbox default)")
    add("--token-ttl", type=float, default=1800, metavar="S", help="token lifetime (default 1800)")
    add("--latency", type=float, default=0.0, metavar="S", help="added to each call (default 0)")
    add(
        "--script",
        type=_script_arg,
        action="append",
        default=[],
        metavar="CUSTOMER[/CONTACT]=ANSWER[,ANSWER...]",
        help="answers for a CUSTOMER_ID or one contact, one per call, the last sticky (repeatable)",
    )
    args = parser.parse_args(argv)

    config = ExpandableSimConfig(
        data_source=args.data_source,
        username=args.username,
        password=args.password,
        token_ttl_s=args.token_ttl,
        latency_s=args.latency,
        scripts=dict(args.script),
    )

    # Never the password: only what identifies the installation.
    detail = f"data_source={config.data_source}"
    serve(
        config,
        args.host,
        args.port,
        ready=announcer("expandable", args.host, args.port_file, detail),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
