"""Trendsic Platform Service (ServiceStack) simulator: /v1/ContactConnections/{ContactId} over HTTP.

Owns the ServiceStack auth (credentials login, bearer and refresh tokens, an API key accepted as
a bearer token), the stored contacts (the ~80-field Contact DTO), validation with ServiceStack
`ResponseStatus` error bodies, scripted answers per ContactId, each contact's arrival log
(sandbox/_records.py: every read and every write, as separate calls) and the admin endpoints
(/_stats, /_script, /_config, /_reset, /_contacts, /_expire_tokens, /_arrivals).

The documented quirk is reproduced: an update that omits a non-nullable date field resets that
field to `0001-01-01T00:00:00.0000000`, so a client must read the contact and send it merged.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
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

import tornado.httpserver
import tornado.netutil
import tornado.web

from sandbox._records import Arrival, ArrivalBounds, ArrivalLog, arrival_routes
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

UNSET_DATE = "0001-01-01T00:00:00.0000000"  # .NET DateTime.MinValue: "unset"
# ISO-8601 with exactly 7 fractional digits (.NET "o"), optionally Z or a +hh:mm offset.
DATE_RE = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\.[0-9]{7}"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?"
)
GUID_RE = re.compile(r"[0-9a-fA-F]{32}")
ROLES = frozenset({"Worker", "Agent", "Administrator"})  # "Requires any of the roles"
SEEDED_IDS = range(1001, 1011)

# The Contact DTO of the seed page, in its order: name -> kind. "date?" is the one nullable date.
FIELDS: dict[str, str] = {
    "ContactId": "int",
    "ContactType": "int",
    "FirstName": "str",
    "LastName": "str",
    "Name": "str",
    "Role": "str",
    "Title": "str",
    "EmailWork": "str",
    "EmailPersonal": "str",
    "District": "str",
    "DistrictID": "int",
    "School": "str",
    "SchoolID": "int",
    "State": "str",
    "StateName": "str",
    "StateID": "int",
    "CountyID": "int",
    "County": "str",
    "Phone": "str",
    "Department": "str",
    "Flow": "str",
    "LastContact": "date",
    "DoNotContact": "bool",
    "Active": "bool",
    "AgentId": "int",
    "PhoneAlt": "str",
    "PeraContactId": "int",
    "RoomNumber": "str",
    "SourceTypeId": "int",
    "SourceTypeDesc": "str",
    "SourceNote": "str",
    "ContactStatusId": "int",
    "ContactStatusDesc": "str",
    "SSN": "str",
    "DateOfBirth": "date",
    "Deleted": "bool",
    "IsShared": "bool",
    "address_line1": "str",
    "address_city": "str",
    "address_state": "str",
    "address_zip": "str",
    "DeletedBy": "str",
    "DeletedDateTimeUtc": "date?",
    "HasNBC": "bool",
    "HasFactFinderSheet": "bool",
    "MiddleInitial": "str",
    "Tags": "str",
    "DateCreated": "date",
    "PhoneLabel": "str",
    "AltPhoneLabel": "str",
    "Carriers": "str",
    "ContactImage": "str",
    "CompanyAffiliation": "str",
    "AdditionalInformation": "str",
    "HasGiftCard": "bool",
    "ContactCategory": "int",
    "WritingAgentId": "int",
    "WritingAgentName": "str",
    "MaritalStatus": "str",
    "TotalDebtAmount": "number",
    "NumberOfDebtAccounts": "int",
    "FactFinderCodeId": "int",
    "BusinessName": "str",
    "DBA": "str",
    "ContactGUID": "guid",
    "ProjectEndDate": "date",
    "Rate": "number",
    "JobID": "int",
    "JobName": "str",
    "JobCount": "int",
    "Locked": "bool",
    "LockedByAgentId": "int",
    "LockedTimestamp": "date",
    "Initials": "str",
    "ContactCategoryName": "str",
    "SMSOptIn": "bool",
}
NON_NULLABLE_DATES = tuple(name for name, kind in FIELDS.items() if kind == "date")
DEFAULTS: dict[str, Any] = {"int": 0, "number": 0, "bool": False, "date": UNSET_DATE}

# Scripted answers: name -> (HTTP status, ErrorCode, Message); "ok" behaves naturally.
SCRIPTED: dict[str, tuple[int, str, str]] = {
    "http-400": (400, "ValidationException", "'Email Work' is not a valid email address."),
    "http-401": (401, "Unauthorized", "Not Authenticated"),
    "http-403": (403, "Forbidden", "Invalid Role"),
    "http-404": (404, "NotFound", "Contact not found"),
    "http-409": (409, "Conflict", "Contact was modified by another user"),
    "http-500": (500, "Exception", "An unexpected error occurred"),
    "http-502": (502, "", "Bad Gateway"),
    "http-503": (503, "", "Service Unavailable"),
    "http-504": (504, "", "Gateway Timeout"),
}
# "slow": held slow_s (POST /_script), then answered as the gateway that gave up; not applied.
SLOW_ANSWER = "http-504"
ANSWER_NAMES = frozenset({"ok", SLOW, *SCRIPTED})

log = logging.getLogger(__name__)

Answer = tuple[int, Any]  # (HTTP status, JSON body or an HTML string as a proxy would send)


@dataclass
class TrendsicSimConfig:
    """How the simulated service behaves. Times are in seconds; `scripts`: ContactId -> answers."""

    username: str = "sandbox-user"
    password: str = "sandbox-pass"  # a sandbox default, not a secret
    api_key: str = "sandbox-api-key"
    token_ttl_s: float = 3600.0  # bearer tokens
    refresh_ttl_s: float = 14 * 86400.0  # refresh tokens live longer
    latency_s: float = 0.0
    role: str = "Agent"
    down: str | None = None  # "503": every non-admin request answers 503
    seed_contacts: bool = True  # ContactIds 1001-1010 exist at start and after /_reset
    scripts: dict[str, list[str]] = field(default_factory=dict)
    arrival_bounds: ArrivalBounds = field(default_factory=ArrivalBounds)


def response_status(code: str, message: str, errors: list[dict[str, Any]] | None = None) -> Any:
    """A ServiceStack error body."""
    return {"ResponseStatus": {"ErrorCode": code, "Message": message, "Errors": errors or []}}


def field_error(code: str, name: str, message: str) -> dict[str, Any]:
    return {"ErrorCode": code, "FieldName": name, "Message": message, "Meta": {}}


def validation_failed(errors: list[dict[str, Any]]) -> Answer:
    return 400, response_status("ValidationException", errors[0]["Message"], errors)


def gateway_page(status: int, message: str) -> str:
    """What a proxy in front of ServiceStack answers for 502/503/504: HTML, not JSON."""
    title = f"<head><title>{status} {message}</title></head>"
    return f"<html>{title}<body><h1>{message}</h1></body></html>"


def blank_contact(contact_id: int) -> dict[str, Any]:
    """A Contact with every field at its .NET default (strings and the nullable date null)."""
    record = {name: DEFAULTS.get(kind) for name, kind in FIELDS.items()}
    record["ContactId"] = contact_id
    return record


def seeded_contact(contact_id: int) -> dict[str, Any]:
    """A deterministic, plausible contact for ids 1001-1010 (all data is fake)."""
    n = contact_id % 100
    first, last = f"Test{n:02d}", f"Contact{n:02d}"
    return {
        **blank_contact(contact_id),
        "ContactType": 1,
        "FirstName": first,
        "LastName": last,
        "Name": f"{first} {last}",
        "EmailWork": f"test{n:02d}@example.invalid",
        "State": "TX",
        "StateName": "Texas",
        "Phone": f"555-01{n:02d}",
        "LastContact": f"2024-03-{n:02d}T14:30:00.0000000",
        "Active": True,
        "AgentId": 7,
        "DateOfBirth": f"1980-01-{n:02d}T00:00:00.0000000",
        "DateCreated": f"2023-11-{n:02d}T09:15:00.0000000",
        "ContactGUID": hashlib.md5(str(contact_id).encode()).hexdigest(),
    }


def validate_contact(contact: Any, prefix: str) -> list[dict[str, Any]]:
    """One error per bad field of one Contact; unknown fields are ignored (as ServiceStack)."""
    if not isinstance(contact, dict):
        return [field_error("InvalidType", prefix, f"'{prefix}' must be a Contact object.")]
    errors = []
    for name, value in contact.items():
        kind = FIELDS.get(name)
        where = f"{prefix}.{name}"
        if kind is None or value is None:  # null: the field's default, as .NET deserializes it
            continue
        if kind in ("int", "number") and not _is_number(value, integer=kind == "int"):
            errors.append(field_error("InvalidType", where, f"'{name}' must be a number."))
        elif kind == "bool" and not isinstance(value, bool):
            errors.append(field_error("InvalidType", where, f"'{name}' must be true or false."))
        elif kind == "str" and not isinstance(value, str):
            errors.append(field_error("InvalidType", where, f"'{name}' must be a string."))
        elif kind in ("date", "date?") and not _is_date(value):
            message = f"'{name}' must be an ISO-8601 date with 7 fractional digits."
            errors.append(field_error("InvalidFormat", where, message))
        elif kind == "guid" and not (isinstance(value, str) and GUID_RE.fullmatch(value)):
            errors.append(field_error("InvalidFormat", where, f"'{name}' must be 32 hex digits."))
    return errors


def validate_request(contact_id: int, body: Any) -> list[dict[str, Any]]:
    """Validate a ContactConnectionRequest {"Contact": [Contact], "ContactId", "AgentId"}."""
    if not isinstance(body, dict):
        return [field_error("InvalidType", "", "The request body must be a JSON object.")]
    errors = []
    if "ContactId" not in body:
        errors.append(field_error("NotEmpty", "ContactId", "'Contact Id' must not be empty."))
    elif body["ContactId"] != contact_id or not _is_number(body["ContactId"], integer=True):
        message = f"'Contact Id' must be equal to the route's ContactId ({contact_id})."
        errors.append(field_error("Equal", "ContactId", message))
    agent_id: Any = body.get("AgentId")
    if not (_is_number(agent_id, integer=True) and agent_id > 0):
        errors.append(field_error("NotEmpty", "AgentId", "'Agent Id' must not be empty."))
    contacts = body.get("Contact")
    if not (isinstance(contacts, list) and len(contacts) == 1):
        message = "'Contact' must hold exactly one Contact."
        return [*errors, field_error("NotEmpty", "Contact", message)]
    errors += validate_contact(contacts[0], "Contact[0]")
    inner_id = contacts[0].get("ContactId") if isinstance(contacts[0], dict) else None
    if _is_number(inner_id, integer=True) and inner_id not in (0, contact_id):
        message = f"'Contact Id' must be equal to the route's ContactId ({contact_id})."
        errors.append(field_error("Equal", "Contact[0].ContactId", message))
    return errors


class TrendsicSimulator:
    """The simulated service: one instance per server, used only from its event loop."""

    def __init__(self, config: TrendsicSimConfig) -> None:
        # A private copy, so /_config and consumed scripts never leak into the caller's object.
        self.config = replace(config, scripts={})
        self.scripts: dict[str, list[str]] = {k: list(v) for k, v in config.scripts.items()}
        self.slow = SlowHolds()
        self.arrivals = ArrivalLog(config.arrival_bounds)  # per ContactId as in the path
        self.bearer_tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.refresh_tokens: dict[str, float] = {}
        self.contacts: dict[int, dict[str, Any]] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self._seed()
        self._reset_stats()

    def make_app(self) -> tornado.web.Application:
        sim = {"sim": self}
        return tornado.web.Application(
            [
                (r"/auth/credentials", _AuthHandler, {**sim, "kind": "login"}),
                (r"/access-token", _AuthHandler, {**sim, "kind": "refresh"}),
                (r"/v1/ContactConnections/([^/]+)", _ContactHandler, sim),
                (r"/_(stats|script|config|reset|expire_tokens|contacts)", _AdminHandler, sim),
                (r"/_(contacts)/([^/]+)", _AdminHandler, sim),
                *arrival_routes(self.arrivals, "([^/]+)", lambda contact_id: contact_id),
            ],
            log_function=_log_request,
        )

    # --- auth -------------------------------------------------------------------------------

    def login(self, body: Any) -> Answer:
        if (down := self._down()) is not None:
            return down
        if not isinstance(body, dict):
            return 400, response_status("SerializationException", "Expected a JSON object")
        errors = [
            field_error("NotEmpty", name, f"'{name}' must not be empty.")
            for name in ("UserName", "Password")
            if not (isinstance(body.get(name), str) and body[name])
        ]
        if errors:
            return validation_failed(errors)
        user_ok = _same(body["UserName"], self.config.username)
        if not (_same(body["Password"], self.config.password) and user_ok):
            self.login_failures += 1
            return 401, response_status("Unauthorized", "Invalid UserName or Password")
        self.logins += 1
        now = time.monotonic()
        refresh = "rt-" + secrets.token_hex(24)
        self.refresh_tokens[refresh] = now + self.config.refresh_ttl_s
        return 200, {
            "UserId": "1",
            "SessionId": secrets.token_hex(10),
            "UserName": self.config.username,
            "BearerToken": self._new_bearer(),
            "RefreshToken": refresh,
            "ResponseStatus": {},
        }

    def refresh(self, body: Any) -> Answer:
        if (down := self._down()) is not None:
            return down
        token = body.get("RefreshToken") if isinstance(body, dict) else None
        if not (isinstance(token, str) and token):
            return validation_failed(
                [field_error("NotEmpty", "RefreshToken", "'Refresh Token' must not be empty.")]
            )
        expiry = self.refresh_tokens.get(token)
        if expiry is None or time.monotonic() >= expiry:
            self.refresh_failures += 1
            return 401, response_status("TokenException", "Invalid RefreshToken")
        self.refreshes += 1
        return 200, {"AccessToken": self._new_bearer()}

    def expire_tokens(self) -> dict[str, Any]:
        """Invalidate every bearer token (refresh tokens and the API key keep working)."""
        expired = len(self.bearer_tokens)
        self.bearer_tokens.clear()
        return {"expired": expired}

    def _new_bearer(self) -> str:
        token = "bt-" + secrets.token_hex(24)
        self.bearer_tokens[token] = time.monotonic() + self.config.token_ttl_s
        return token

    def _authenticate(self, authorization: str | None) -> Answer | None:
        """None if the Authorization header is good, else the 401 to answer."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return 401, response_status("Unauthorized", "Not Authenticated")
        if _same(token, self.config.api_key):
            return None
        expiry = self.bearer_tokens.get(token)
        if expiry is None:
            return 401, response_status("TokenException", "Invalid Token")
        if time.monotonic() >= expiry:
            return 401, response_status("TokenException", "Token has expired")
        return None

    # --- the service ------------------------------------------------------------------------

    async def call(
        self, method: str, raw_id: str, authorization: str | None, body: bytes
    ) -> Answer:
        """Answer one GET/POST/PUT on /v1/ContactConnections/{ContactId}.

        Each is logged on its ContactId (as in the path), a GET as a "read" and a POST/PUT as
        a "write" (applied iff answered 200), unless its credentials or role were refused; it
        counts in flight on the contact throughout, the latency included.
        """
        self.calls_by_method[method] += 1
        self.calls_by_contact[raw_id] += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        payload: Any = _NOT_JSON
        if method != "GET":
            try:
                payload = json.loads(body)
            except ValueError:
                pass
        call = "read" if method == "GET" else "write"
        try:
            with self.arrivals.track({raw_id: _contact_sent(payload)}, call) as arrival:
                if self.config.latency_s > 0:
                    await asyncio.sleep(self.config.latency_s)
                status, answer = await self._answer(method, raw_id, authorization, payload, arrival)
                applied = call == "write" and status == 200
                arrival.answered(status, _error_code(answer), applied)
        finally:
            self.in_flight -= 1
        self.answers[status] += 1
        return status, answer

    async def _answer(
        self, method: str, raw_id: str, authorization: str | None, payload: Any, arrival: Arrival
    ) -> Answer:
        if (down := self._down()) is not None:
            return down
        if (unauthorized := self._authenticate(authorization)) is not None:
            arrival.refused()  # refused before the contact was looked at
            return unauthorized
        if self.config.role not in ROLES:
            arrival.refused()
            return 403, response_status("Forbidden", "Invalid Role")
        script = self.scripts.get(raw_id)
        if script:
            name = script.pop(0) if len(script) > 1 else script[0]  # the last answer is sticky
            if name == SLOW:
                await self.slow.hold(raw_id)
                name = SLOW_ANSWER
            if name != "ok":
                return self._scripted(name)
        if not re.fullmatch(r"[0-9]+", raw_id):
            message = f"'{raw_id}' is not a valid ContactId."
            return validation_failed([field_error("InvalidType", "ContactId", message)])
        contact_id = int(raw_id)
        if method == "GET":
            return self._read(contact_id)
        if payload is _NOT_JSON:
            return 400, response_status("SerializationException", "The body is not valid JSON")
        return self._update(contact_id, payload)

    def _read(self, contact_id: int) -> Answer:
        stored = self.contacts.get(contact_id)
        if stored is None:
            return 404, response_status("NotFound", f"Contact {contact_id} not found")
        return 200, {"Contact": [_wire(stored)]}

    def _update(self, contact_id: int, payload: Any) -> Answer:
        if errors := validate_request(contact_id, payload):
            return validation_failed(errors)
        stored = self.contacts.get(contact_id)
        if stored is None:
            return 404, response_status("NotFound", f"Contact {contact_id} not found")
        sent: dict[str, Any] = payload["Contact"][0]
        merged = dict(stored)
        for name, kind in FIELDS.items():
            if name in sent:
                value = sent[name]
                merged[name] = DEFAULTS.get(kind) if value is None else value
            elif kind == "date":  # the quirk: omitted non-nullable dates are reset
                merged[name] = UNSET_DATE
        merged["ContactId"] = contact_id
        self.contacts[contact_id] = merged
        return 200, {"Contact": [_wire(merged)]}

    def _scripted(self, name: str) -> Answer:
        status, code, message = SCRIPTED[name]
        if status in (502, 503, 504):
            return status, gateway_page(status, message)
        if status == 400:
            return validation_failed([field_error("Email", "Contact[0].EmailWork", message)])
        return status, response_status(code, message)

    def _down(self) -> Answer | None:
        if self.config.down == "503":
            return 503, gateway_page(503, "Service Unavailable")
        return None

    # --- admin ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "logins": self.logins,
            "login_failures": self.login_failures,
            "refreshes": self.refreshes,
            "refresh_failures": self.refresh_failures,
            "calls": sum(self.calls_by_method.values()),
            "calls_by_method": dict(self.calls_by_method),
            "answers": {str(status): n for status, n in sorted(self.answers.items())},
            "calls_by_contact": dict(self.calls_by_contact),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            **self.arrivals.stats(),
            "started_at": self.started_at,
        }

    def set_scripts(self, body: Any) -> dict[str, Any]:
        """Apply {"id": ContactId, "answers": [...], "slow_s"?: S}; the last answer is sticky.
        "slow" holds the call slow_s seconds (default SLOW_S_DEFAULT), then answers 504."""
        if not (isinstance(body, dict) and set(body) - {"slow_s"} == {"id", "answers"}):
            raise ValueError('expected {"id": ContactId, "answers": [...]} (and slow_s)')
        contact_id, answers = body["id"], body["answers"]
        if not (isinstance(contact_id, str | int) and not isinstance(contact_id, bool)):
            raise ValueError(f"id must be a ContactId, got {contact_id!r}")
        if not (isinstance(answers, list) and answers and all(a in ANSWER_NAMES for a in answers)):
            raise ValueError(f"answers must be a non-empty list of {sorted(ANSWER_NAMES)}")
        slow_s = parse_slow_s(body)
        self.slow.update([str(contact_id)], slow_s)
        self.scripts[str(contact_id)] = list(answers)
        return {"scripts": self.scripts}

    def configure(self, body: Any) -> dict[str, Any]:
        """Apply any of latency_s/token_ttl_s/refresh_ttl_s/role/down at once; ValueError if bad."""
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        allowed = {"latency_s", "token_ttl_s", "refresh_ttl_s", "role", "down"}
        for key, value in body.items():
            if key not in allowed:
                raise ValueError(f"unknown setting {key!r}; allowed: {sorted(allowed)}")
            if key == "role" and not (isinstance(value, str) and value):
                raise ValueError(f"role must be a non-empty string, got {value!r}")
            if key == "down" and value not in (None, "503"):
                raise ValueError(f'down must be "503" or null, got {value!r}')
            if key.endswith("_s") and not (_is_number(value) and value >= 0):
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        for key, value in body.items():
            setattr(self.config, key, value)
        return {key: getattr(self.config, key) for key in sorted(allowed)}

    def add_contacts(self, body: Any) -> dict[str, Any]:
        """Apply {ContactId: Contact, ...}: each replaces the stored one; missing fields default."""
        if not (isinstance(body, dict) and body):
            raise ValueError('expected {"ContactId": {Contact fields}, ...}')
        records = {}
        for key, contact in body.items():
            if not re.fullmatch(r"[0-9]+", key):
                raise ValueError(f"ContactId must be digits, got {key!r}")
            if errors := validate_contact(contact, f"{key}"):
                raise ValueError("; ".join(f"{e['FieldName']}: {e['Message']}" for e in errors))
            known = {k: v for k, v in contact.items() if k in FIELDS and v is not None}
            records[int(key)] = {**blank_contact(int(key)), **known, "ContactId": int(key)}
        self.contacts.update(records)
        return {"contacts": sorted(records)}

    def reset(self) -> dict[str, Any]:
        """Scripts, arrivals and stats cleared, contacts back to the seeded ones; tokens and
        config kept."""
        self.scripts.clear()
        self.slow.clear()
        self.arrivals.reset()
        self._seed()
        self._reset_stats()
        return {"reset": True}

    def _seed(self) -> None:
        self.contacts = (
            {cid: seeded_contact(cid) for cid in SEEDED_IDS} if self.config.seed_contacts else {}
        )

    def _reset_stats(self) -> None:
        self.logins = self.login_failures = self.refreshes = self.refresh_failures = 0
        self.calls_by_method: Counter[str] = Counter()
        self.answers: Counter[int] = Counter()
        self.calls_by_contact: Counter[str] = Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.started_at = time.time()


_NOT_JSON = object()  # a write's body that json.loads refused


def _contact_sent(payload: Any) -> dict[str, Any]:
    """The Contact fields a write carried, for the arrival log ({} for a read or a bad body)."""
    contacts = payload.get("Contact") if isinstance(payload, dict) else None
    if isinstance(contacts, list) and contacts and isinstance(contacts[0], dict):
        return dict(contacts[0])
    return {}


def _error_code(answer: Any) -> Any:
    """The arrival log's `code` of an answer: ServiceStack's ErrorCode, None on success or for
    an HTML gateway page."""
    if isinstance(answer, dict) and isinstance(answer.get("ResponseStatus"), dict):
        return answer["ResponseStatus"].get("ErrorCode")
    return None


def _wire(contact: dict[str, Any]) -> dict[str, Any]:
    """As ServiceStack serializes a DTO by default: null properties are left out."""
    return {name: value for name, value in contact.items() if value is not None}


def _is_date(value: Any) -> bool:
    if not isinstance(value, str) or not (match := DATE_RE.fullmatch(value)):
        return False
    try:
        datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return False
    return True


def _is_number(value: Any, integer: bool = False) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return not integer and isinstance(value, float) and math.isfinite(value)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


# Path only: headers carry bearer tokens and bodies carry passwords and personal data.
_log_request = log_paths_only(log)


class _SimHandler(tornado.web.RequestHandler):
    def initialize(self, sim: TrendsicSimulator, kind: str = "") -> None:
        self.sim = sim
        self.kind = kind

    def reply(self, status: int, body: Any) -> None:
        send(self, status, body)


class _AuthHandler(_SimHandler):
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            body = None
        self.reply(*(self.sim.login(body) if self.kind == "login" else self.sim.refresh(body)))


class _ContactHandler(_SimHandler):
    async def _call(self, contact_id: str) -> None:
        method = self.request.method or "GET"
        auth = self.request.headers.get("Authorization")
        self.reply(*await self.sim.call(method, contact_id, auth, self.request.body))

    get = post = put = _call


class _AdminHandler(_SimHandler):
    """GET /_stats, /_contacts/ID; POST /_script, /_config, /_contacts, /_expire_tokens, /_reset."""

    async def get(self, action: str, contact_id: str = "") -> None:
        if action == "stats":
            return self.reply(200, self.sim.stats())
        if action != "contacts" or not contact_id:
            raise tornado.web.HTTPError(405)
        stored = self.sim.contacts.get(int(contact_id)) if contact_id.isdigit() else None
        found = (200, _wire(stored)) if stored is not None else (404, {"error": "unknown contact"})
        self.reply(*found)

    async def post(self, action: str, contact_id: str = "") -> None:
        actions: dict[str, Callable[[Any], dict[str, Any]]] = {
            "script": self.sim.set_scripts,
            "config": self.sim.configure,
            "contacts": self.sim.add_contacts,
            "expire_tokens": lambda _body: self.sim.expire_tokens(),
            "reset": lambda _body: self.sim.reset(),
        }
        if contact_id:
            raise tornado.web.HTTPError(405)
        await run_admin_action(actions, action, self.request.body, self.reply)


def serve(
    config: TrendsicSimConfig,
    host: str = "127.0.0.1",
    port: int = 8083,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run the simulator until SIGINT/SIGTERM, or until `stop` is set (``serve_app``)."""
    serve_app(lambda: TrendsicSimulator(config).make_app(), host, port, ready, stop, "trendsic")


def _script_arg(text: str) -> tuple[str, list[str]]:
    contact_id, _, answers = text.partition("=")
    parsed = answers.split(",") if answers else []
    if not contact_id or not parsed or not all(a in ANSWER_NAMES for a in parsed):
        raise argparse.ArgumentTypeError(
            f"expected ID=ANSWER[,ANSWER...] with answers in {sorted(ANSWER_NAMES)}: {text!r}"
        )
    return contact_id, parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.trendsic",
        description="Simulate the Trendsic Platform Service (ServiceStack): "
        "POST /auth/credentials, POST /access-token, GET/POST/PUT /v1/ContactConnections/{id}. "
        "Contacts 1001-1010 exist at start. Times are in seconds.",
        epilog="Admin (no auth): GET /_stats, GET /_contacts/ID, POST /_contacts {ID: Contact}, "
        "GET /_arrivals (every contact's calls: n, start, end, call read|write, status, code, "
        "applied, fields), GET /_arrivals/ID (one contact's), "
        "POST /_script {id, answers, slow_s} (answer slow: held slow_s, then 504, not applied), "
        "POST /_config {latency_s, token_ttl_s, refresh_ttl_s, role, down}, "
        "POST /_expire_tokens, POST /_reset. /_stats counts peak_calls_per_record and "
        "overlapping_records (contacts with 2+ calls in flight at once).",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    add("--port", type=int, default=8083, help="port; 0 picks a free one (default %(default)s)")
    add("--username", default="sandbox-user", help="UserName to accept (default %(default)s)")
    add("--password", default="sandbox-pass", help="Password to accept (sandbox default)")
    add("--api-key", default="sandbox-api-key", help="API key accepted as a bearer token")
    add("--token-ttl", type=float, default=3600, metavar="S", help="bearer token life (3600)")
    add("--latency", type=float, default=0.05, metavar="S", help="service time per call (0.05)")
    add(
        "--script",
        type=_script_arg,
        action="append",
        default=[],
        metavar="ID=ANSWER[,...]",
        help="answers for one ContactId, one per call, the last sticky (repeatable)",
    )
    add("--port-file", metavar="PATH", help="write the bound port to PATH once listening")
    args = parser.parse_args(argv)

    config = TrendsicSimConfig(
        username=args.username,
        password=args.password,
        api_key=args.api_key,
        token_ttl_s=args.token_ttl,
        latency_s=args.latency,
        scripts=dict(args.script),
    )

    serve(config, args.host, args.port, ready=announcer("trendsic", args.host, args.port_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
