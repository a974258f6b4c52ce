"""Mission Capital partner API simulator (Salesforce Apex REST `contactUser`) over real HTTP.

Owns the OAuth2 username-password login (`POST /services/oauth2/token`), the issued tokens and
their expiry, the org's API allowance (`Sforce-Limit-Info`, 403 REQUEST_LIMIT_EXCEEDED), the
`contactUser` answers (natural ones and scripted ones per ApplicationID), what `contactUser`
changes on each application (contact re-enabled), each application's arrival log
(sandbox/_records.py), outages ("503" or "refused") and the admin endpoints (/_stats, /_script,
/_config, /_reset, /_expire_tokens, /_applications, /_arrivals).

An application is one record whichever spelling of its id a call sends: its 15-character id
and its 18-character id (the 15 plus a case checksum) are the same Lead, so scripts, arrivals
and state are kept under the 18-character id (an id that is not well formed: as sent).

Admin endpoints take no token and are never affected by `down`. Logs carry paths only: never
query strings, headers, form fields, tokens or secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import logging
import math
import random
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from sandbox._records import Arrival, ArrivalBounds, ArrivalLog, arrival_routes
from sandbox._serving import (
    SLOW,
    SlowHolds,
    log_paths_only,
    parse_scripts,
    parse_slow_s,
    run_admin_action,
    send,
    until_stopped,
    write_port_file,
)

TOKEN_PATH = "/services/oauth2/token"
CONTACT_USER_PATH = "/services/apexrest/creditapp/contactUser"
ORG_ID = "00D5e000000SimEAA"  # 18-character ids, as Salesforce spells them
USER_ID = "0055e000000SimAAA"
LIMIT_HEADER = "Sforce-Limit-Info"
ID_CHARS = re.compile(r"[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?")
SUFFIX_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
SUCCESS_TEXT = "Application has been updated successfully"  # the source page's sample

# Salesforce platform errors: a JSON array of {"message", "errorCode"} objects.
INVALID_SESSION = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
LIMIT_EXCEEDED = [
    {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
]
INVALID_GRANT = {"error": "invalid_grant", "error_description": "authentication failure"}

# Answer kinds a script may use -> (HTTP status, body; a str body is sent as text/html).
# IsSuccessful answers use the configured `failure_status` (200 by default) when false.
PARTNER_ANSWERS: dict[str, tuple[bool, str]] = {
    "ok": (True, SUCCESS_TEXT),
    "not-found": (False, "Application not found"),
    "missing-id": (False, "Missing Application ID"),
    "missing-header": (
        False,
        "Invalid Request Header. PartnerName or PartnerId parameters are missing.",
    ),
    "invalid-credentials": (False, "Invalid username and password"),
}
HTTP_ANSWERS: dict[str, tuple[int, Any]] = {
    "http-401": (401, INVALID_SESSION),
    "http-403-limit": (403, LIMIT_EXCEEDED),
    "http-403": (
        403,
        [
            {
                "message": "You do not have access to the Apex class named: contactUser",
                "errorCode": "INSUFFICIENT_ACCESS",
            }
        ],
    ),
    "http-404": (404, [{"message": "Could not find a match for URL", "errorCode": "NOT_FOUND"}]),
    "http-405": (
        405,
        [
            {
                "message": "HTTP Method 'POST' not allowed. Allowed are GET",
                "errorCode": "METHOD_NOT_ALLOWED",
            }
        ],
    ),
    "http-500": (
        500,
        [
            {
                "message": "System.NullPointerException: Attempt to de-reference a null object",
                "errorCode": "APEX_ERROR",
            }
        ],
    ),
    "http-502": (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "http-503": (
        503,
        [{"message": "Server temporarily unavailable", "errorCode": "SERVER_UNAVAILABLE"}],
    ),
    "http-504": (504, "<html><body><h1>504 Gateway Time-out</h1></body></html>"),
}
# "slow": held slow_s (POST /_script), then answered as the gateway that gave up; not applied.
SLOW_ANSWER = "http-504"
ANSWER_KINDS = frozenset(PARTNER_ANSWERS) | frozenset(HTTP_ANSWERS) | {SLOW}
DOWN_MODES = ("503", "refused")

log = logging.getLogger(__name__)


@dataclass
class MissionCapitalSimConfig:
    """How the simulated org behaves. Times are in seconds; `scripts` maps ApplicationID ->
    answer kinds (see ANSWER_KINDS), one per call, the last one sticky."""

    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    username: str = "sandbox@example.com"
    password: str = "sandbox-password"
    security_token: str = ""  # Salesforce expects password + security token in `password`
    token_ttl_s: float = 7200.0  # measured from issue, with the ttl in force when checked
    latency_s: float = 0.0  # mean service time of one contactUser call
    jitter_s: float = 0.0  # uniform +/- around latency_s
    api_limit: int = 15000  # ALLOWED in Sforce-Limit-Info
    known_applications: list[str] | None = None  # None: every well-formed id is known
    failure_status: int = 200  # HTTP status of IsSuccessful: false (undocumented by the API)
    down: str | None = None  # None (up), "503" or "refused"
    scripts: dict[str, list[str]] = field(default_factory=dict)
    seed: int | None = None
    arrival_bounds: ArrivalBounds = field(default_factory=ArrivalBounds)


def salesforce_id_18(value: str) -> str | None:
    """The 18-character form of a Salesforce id, or None if `value` is not a well-formed id.

    An 18-character id must carry the right case-checksum suffix (3 characters, one per block
    of 5, each encoding which of the block's characters are upper case).
    """
    if not ID_CHARS.fullmatch(value):
        return None
    base = value[:15]
    suffix = ""
    for start in range(0, 15, 5):
        bits = sum(1 << i for i, char in enumerate(base[start : start + 5]) if char.isupper())
        suffix += SUFFIX_ALPHABET[bits]
    if len(value) == 18 and value[15:].upper() != suffix:
        return None
    return base + suffix


def application_key(application_id: str) -> str:
    """Where an application's scripts, arrivals and state are kept: its 18-character id, or the
    id as sent if it is not a well-formed Salesforce id."""
    return salesforce_id_18(application_id) or application_id


class _Listener:
    """The API port, which `down: "refused"` closes (new connections are refused) and reopens
    on the same port."""

    def __init__(self, app: tornado.web.Application, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self.server: tornado.httpserver.HTTPServer | None = None

    def open(self) -> int:
        if self.server is None:
            sockets = tornado.netutil.bind_sockets(self.port, self.host)
            self.port = sockets[0].getsockname()[1]
            self.server = tornado.httpserver.HTTPServer(self.app)
            self.server.add_sockets(sockets)
        return self.port

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()  # closes the listening sockets; open connections live on
            self.server = None


class MissionCapitalSimulator:
    """The simulated org: one instance per server, used only from its event loop."""

    def __init__(self, config: MissionCapitalSimConfig) -> None:
        # A private copy, so /_config and consumed scripts never leak into the caller's object.
        self.config = replace(
            config,
            scripts={},
            known_applications=None
            if config.known_applications is None
            else list(config.known_applications),
        )
        self.scripts: dict[str, list[str]] = {
            application_key(k): list(v) for k, v in config.scripts.items()
        }
        self.slow = SlowHolds()
        self.arrivals = ArrivalLog(config.arrival_bounds)
        # What contactUser changed, per application key (see application()).
        self.applications: dict[str, dict[str, Any]] = {}
        self._rng = random.Random(config.seed)
        self.tokens: dict[str, float] = {}  # access token -> issued at (monotonic seconds)
        self.listener: _Listener | None = None  # set by serve(); needed for down "refused"
        self.has_admin_port = False  # set by serve(): the admin port survives "refused"
        self._up_timer: asyncio.TimerHandle | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self._reset_stats()

    def make_app(self, admin_only: bool = False) -> tornado.web.Application:
        """The Salesforce endpoints and the admin endpoints, or the admin endpoints alone."""
        sim = {"sim": self}
        admin: list[Any] = [
            (r"/_(stats|script|config|reset|expire_tokens|applications)", _AdminHandler, sim),
            (r"/_(applications)/([^/]+)", _AdminHandler, sim),
            *arrival_routes(self.arrivals, "([^/]+)", application_key),
        ]
        api: list[Any] = [
            (TOKEN_PATH, _TokenHandler, sim),
            (CONTACT_USER_PATH, _ContactUserHandler, sim),
            (r"/services/.*", _ContactUserHandler, {**sim, "unknown_path": True}),
        ]
        return tornado.web.Application(
            admin if admin_only else [*admin, *api], log_function=_log_request
        )

    # -- the Salesforce endpoints ------------------------------------------------------------

    def login(self, form: dict[str, str], base_url: str) -> tuple[int, dict[str, Any]]:
        """Answer POST /services/oauth2/token: (HTTP status, JSON body)."""
        cfg = self.config
        failure: dict[str, str] | None = None
        if form.get("grant_type") != "password":
            failure = {
                "error": "unsupported_grant_type",
                "error_description": "grant type not supported",
            }
        elif not _same(form.get("client_id", ""), cfg.client_id):
            failure = {
                "error": "invalid_client_id",
                "error_description": "client identifier invalid",
            }
        elif not _same(form.get("client_secret", ""), cfg.client_secret):
            failure = {"error": "invalid_client", "error_description": "invalid client credentials"}
        elif not (
            _same(form.get("username", ""), cfg.username)
            & _same(form.get("password", ""), cfg.password + cfg.security_token)
        ):
            failure = INVALID_GRANT
        if failure is not None:
            self.login_failures += 1
            return 400, failure
        self.logins += 1
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(40)}"
        self.tokens[token] = time.monotonic()
        identity = f"{base_url}/id/{ORG_ID}/{USER_ID}"
        issued_at = str(int(time.time() * 1000))
        digest = hmac.new(cfg.client_secret.encode(), (identity + issued_at).encode(), "sha256")
        return 200, {
            "access_token": token,
            "instance_url": base_url,
            "id": identity,
            "token_type": "Bearer",
            "issued_at": issued_at,
            "signature": base64.b64encode(digest.digest()).decode(),
        }

    async def contact_user(
        self, headers: dict[str, str | None], method: str = "POST", unknown_path: bool = False
    ) -> tuple[int, Any]:
        """Answer one contactUser call: (HTTP status, JSON body or HTML text).

        Order: outage 503, latency, session (401), API allowance (counts the call; 403 past the
        limit), wrong method/path (405/404), the ApplicationID's script, then the natural
        answer: partner headers, ApplicationID present, ApplicationID known, success.

        A POST to contactUser with an ApplicationID is logged on that application (applied iff
        IsSuccessful), unless its session was refused; it counts in flight on it throughout.
        """
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        application = (headers.get("ApplicationID") or "").strip()
        on_record = application and method == "POST" and not unknown_path
        records: dict[str, dict[str, Any]] = {application_key(application): {}} if on_record else {}
        try:
            with self.arrivals.track(records, "contactUser") as arrival:
                status, answer = await self._contact_user(headers, method, unknown_path, arrival)
                successful = isinstance(answer, dict) and answer["IsSuccessful"] is True
                arrival.answered(status, _own_code(answer), applied=successful)
            return status, answer
        finally:
            self.in_flight -= 1

    async def _contact_user(
        self, headers: dict[str, str | None], method: str, unknown_path: bool, arrival: Arrival
    ) -> tuple[int, Any]:
        if self.config.down == "503":
            self.down_answers += 1
            return self._http("http-503")
        delay_s = self._service_time_s()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if not self._token_valid(headers.get("Authorization") or ""):
            self.invalid_sessions += 1
            arrival.refused()  # the session was refused, not the application
            return self._http("http-401")
        self.api_usage += 1
        if self.api_usage > self.config.api_limit:
            return self._http("http-403-limit")
        if unknown_path:
            return self._http("http-404")
        if method != "POST":
            status, _ = HTTP_ANSWERS["http-405"]
            self.answers["http-405"] += 1
            message = f"HTTP Method '{method}' not allowed. Allowed are POST"
            return status, [{"message": message, "errorCode": "METHOD_NOT_ALLOWED"}]
        application = (headers.get("ApplicationID") or "").strip()
        if application:
            self.calls_by_application[application] += 1
        key = application_key(application)
        script = self.scripts.get(key)
        if script:
            kind = script.pop(0) if len(script) > 1 else script[0]  # the last kind is sticky
        else:
            kind = self._natural_kind(headers, application)
        if kind == SLOW:
            await self.slow.hold(key)
            kind = SLOW_ANSWER
        if kind in HTTP_ANSWERS:
            return self._http(kind)
        if kind == "ok":
            self._contact_enabled(key)
        return self._partner(kind)

    def _contact_enabled(self, key: str) -> None:
        """What a successful contactUser changes: the applicant may be contacted again."""
        state = self.applications.setdefault(key, _new_application())
        state["contact_enabled"] = True
        state["updates"] += 1
        state["updated_at"] = time.time()

    def _natural_kind(self, headers: dict[str, str | None], application: str) -> str:
        if not (headers.get("PartnerId") or "").strip():
            return "missing-header"
        if not (headers.get("PartnerName") or "").strip():
            return "missing-header"
        if not application:
            return "missing-id"
        id18 = salesforce_id_18(application)
        known = self.config.known_applications
        if id18 is None or (known is not None and id18 not in _ids_18(known)):
            return "not-found"
        return "ok"

    def _token_valid(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("bearer", "oauth") or not token.strip():
            return False
        issued_s = self.tokens.get(token.strip())
        if issued_s is None:
            return False
        if time.monotonic() - issued_s >= self.config.token_ttl_s:
            del self.tokens[token.strip()]
            return False
        return True

    def _exists(self, key: str) -> bool:
        known = self.config.known_applications
        if known is None:
            return salesforce_id_18(key) is not None
        return key in _ids_18(known)

    def _http(self, kind: str) -> tuple[int, Any]:
        self.answers[kind] += 1
        return HTTP_ANSWERS[kind]

    def _partner(self, kind: str) -> tuple[int, dict[str, Any]]:
        self.answers[kind] += 1
        successful, text = PARTNER_ANSWERS[kind]
        status = 200 if successful else self.config.failure_status
        return status, {"IsSuccessful": successful, "ResponseText": text}

    def _service_time_s(self) -> float:
        cfg = self.config
        if cfg.jitter_s <= 0:
            return max(0.0, cfg.latency_s)
        return max(
            0.0, self._rng.uniform(cfg.latency_s - cfg.jitter_s, cfg.latency_s + cfg.jitter_s)
        )

    def limit_info(self) -> str:
        return f"api-usage={self.api_usage}/{self.config.api_limit}"

    # -- the admin endpoints -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What GET /_stats answers. `calls` counts every request to the Salesforce REST paths
        (outage 503s and 401s included); `api_usage` only those that passed the session check."""
        return {
            "logins": self.logins,
            "login_failures": self.login_failures,
            "calls": self.calls,
            "answers": dict(sorted(self.answers.items())),
            "invalid_sessions": self.invalid_sessions,
            "down_answers": self.down_answers,
            "calls_by_application": dict(self.calls_by_application),
            "api_usage": self.api_usage,
            "api_limit": self.config.api_limit,
            "tokens_valid": self._tokens_valid(),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            **self.arrivals.stats(),
            "down": self.config.down,
            "started_at": self.started_at,
        }

    def set_scripts(self, body: Any) -> dict[str, Any]:
        """Apply {"id": ID, "answers": [...]} or {"scripts": {ID: [...]}}, with an optional
        slow_s for "slow" answers; ValueError if bad. A 15-character id scripts its
        18-character twin too (both are one application)."""
        slow_s = parse_slow_s(body)
        scripts = {application_key(k): v for k, v in parse_scripts(body, ANSWER_KINDS).items()}
        self.slow.update(scripts, slow_s)
        self.scripts.update(scripts)
        return {"scripts": self.scripts}

    def application(self, application_id: str) -> dict[str, Any] | None:
        """What GET /_applications/ID answers (a 15- or 18-character id): contact_enabled (false
        until a contactUser call succeeds on it), updates (the successful calls), updated_at
        (epoch seconds of the last, or null), calls (every call logged on it); None if the
        application does not exist and no call ever changed it."""
        key = application_key(application_id)
        state = self.applications.get(key)
        if state is None and not self._exists(key):
            return None
        calls = self.arrivals.logged_calls(key)
        return {"application_id": key, **(state or _new_application()), "calls": calls}

    def set_applications(self, body: Any) -> dict[str, Any]:
        """Apply {ID: {"contact_enabled": bool}, ...}: e.g. disable contact, so that a test can
        see contactUser re-enable it; ValueError if bad (nothing applied)."""
        if not (isinstance(body, dict) and body):
            raise ValueError('expected {"ApplicationID": {"contact_enabled": true|false}, ...}')
        for application_id, state in body.items():
            if not (
                isinstance(state, dict)
                and set(state) == {"contact_enabled"}
                and isinstance(state["contact_enabled"], bool)
            ):
                raise ValueError(f'{application_id!r}: expected {{"contact_enabled": bool}}')
        for application_id, state in body.items():
            key = application_key(application_id)
            self.applications.setdefault(key, _new_application()).update(state)
        return {"applications": sorted(application_key(k) for k in body)}

    def configure(self, body: Any) -> dict[str, Any]:
        """Apply any settings at once (all or none); ValueError if one is invalid.

        token_ttl_s, latency_s, jitter_s: non-negative numbers; api_limit, api_usage:
        non-negative integers; failure_status: 100-599; known_applications: list of ids or
        null; down: null/false (up), "503" or "refused"; down_for_s: with down, back up after
        that many seconds.
        """
        if not isinstance(body, dict):
            raise ValueError("expected a JSON object")
        numbers = {"token_ttl_s", "latency_s", "jitter_s"}
        integers = {"api_limit", "api_usage"}
        allowed = {*numbers, *integers, "failure_status", "known_applications", "down"}
        allowed.add("down_for_s")
        for key, value in body.items():
            if key not in allowed:
                raise ValueError(f"unknown setting {key!r}; allowed: {sorted(allowed)}")
            if key in numbers and not _non_negative(value):
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
            if key in integers and not (_is_int(value) and value >= 0):
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        if "failure_status" in body:
            status = body["failure_status"]
            if not (_is_int(status) and 100 <= status <= 599):
                raise ValueError(f"failure_status must be an HTTP status, got {status!r}")
        known = body.get("known_applications")
        if known is not None and not (
            isinstance(known, list) and all(isinstance(k, str) for k in known)
        ):
            raise ValueError("known_applications must be a list of ids or null")
        down: Any = body.get("down", self.config.down)
        if down is False:
            down = None
        if down is not None and down not in DOWN_MODES:
            raise ValueError(f"down must be null, false, '503' or 'refused', got {down!r}")
        down_for_s: Any = body.get("down_for_s")
        if down_for_s is not None and not (_non_negative(down_for_s) and "down" in body):
            raise ValueError("down_for_s must be a non-negative number, given with down")
        if body.get("down") == "refused":
            if self.listener is None:
                raise ValueError("down 'refused' needs a server started by serve()")
            if down_for_s is None and not self.has_admin_port:
                raise ValueError(
                    "down 'refused' closes the port of these admin endpoints: give down_for_s, "
                    "or start the simulator with an admin port"
                )

        for key in (*numbers, "api_limit", "failure_status", "known_applications"):
            if key in body:
                setattr(self.config, key, body[key])
        if "api_usage" in body:  # a counter of the org, not a setting: jump close to the limit
            self.api_usage = body["api_usage"]
        if "down" in body:
            self._set_down(down, down_for_s)
        return self.settings()

    def settings(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "token_ttl_s": cfg.token_ttl_s,
            "latency_s": cfg.latency_s,
            "jitter_s": cfg.jitter_s,
            "api_limit": cfg.api_limit,
            "api_usage": self.api_usage,
            "failure_status": cfg.failure_status,
            "known_applications": cfg.known_applications,
            "down": cfg.down,
        }

    def expire_tokens(self) -> dict[str, Any]:
        expired = len(self.tokens)
        self.tokens.clear()
        return {"expired": expired}

    def reset(self) -> dict[str, Any]:
        """Forget scripts, tokens, application states, arrivals and counters (incl. api_usage);
        settings stay."""
        self.scripts.clear()
        self.slow.clear()
        self.tokens.clear()
        self.applications.clear()
        self.arrivals.reset()
        self._reset_stats()
        return {"reset": True}

    def _set_down(self, down: str | None, down_for_s: float | None) -> None:
        if self._up_timer is not None:
            self._up_timer.cancel()
            self._up_timer = None
        self.config.down = down
        if self.listener is not None:
            if down == "refused":
                self.listener.close()
            else:
                self.listener.open()
        if down is not None and down_for_s is not None:
            loop = asyncio.get_running_loop()
            self._up_timer = loop.call_later(down_for_s, self._set_down, None, None)

    def _tokens_valid(self) -> int:
        now_s, ttl_s = time.monotonic(), self.config.token_ttl_s
        return sum(1 for issued_s in self.tokens.values() if now_s - issued_s < ttl_s)

    def _reset_stats(self) -> None:
        self.logins = 0
        self.login_failures = 0
        self.calls = 0
        self.answers: Counter[str] = Counter()
        self.invalid_sessions = 0
        self.down_answers = 0
        self.calls_by_application: Counter[str] = Counter()
        self.api_usage = 0
        self.peak_in_flight = self.in_flight
        self.started_at = time.time()


def _new_application() -> dict[str, Any]:
    return {"contact_enabled": False, "updates": 0, "updated_at": None}


def _own_code(answer: Any) -> Any:
    """The arrival log's `code` of an answer: a platform error's errorCode, a partner answer's
    ResponseText (IsSuccessful's words); None for an HTML page."""
    if isinstance(answer, list) and answer and isinstance(answer[0], dict):
        return answer[0].get("errorCode")
    if isinstance(answer, dict):
        return answer.get("ResponseText")
    return None


def _ids_18(ids: list[str]) -> set[str]:
    return {id18 for id18 in map(salesforce_id_18, ids) if id18 is not None}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _non_negative(value: Any) -> bool:
    number_ok = _is_int(value) or isinstance(value, float)
    return bool(number_ok and math.isfinite(value) and value >= 0)  # no NaN, no Infinity


# Path only: never the query string, the headers (token) or the form (secrets).
_log_request = log_paths_only(log)


class _SimHandler(tornado.web.RequestHandler):
    def initialize(self, sim: MissionCapitalSimulator, unknown_path: bool = False) -> None:
        self.sim = sim
        self.unknown_path = unknown_path

    def reply(self, status: int, body: Any, limit_info: bool = False) -> None:
        if limit_info:
            self.set_header(LIMIT_HEADER, self.sim.limit_info())
        send(self, status, body)

    def check_xsrf_cookie(self) -> None:  # an API, not a browser form
        return None


class _TokenHandler(_SimHandler):
    async def post(self) -> None:
        if self.sim.config.down == "503":
            self.sim.down_answers += 1
            return self.reply(*HTTP_ANSWERS["http-503"], limit_info=True)
        form = {name: self.get_body_argument(name) for name in self.request.body_arguments}
        base_url = f"{self.request.protocol}://{self.request.host}"
        self.reply(*self.sim.login(form, base_url), limit_info=True)


class _ContactUserHandler(_SimHandler):
    async def handle(self) -> None:
        if self.sim.config.down == "refused":
            # A keep-alive connection opened before the outage: drop it without an answer.
            self.request.connection.close()  # type: ignore[union-attr]
            return
        names = ("Authorization", "PartnerId", "PartnerName", "ApplicationID")
        headers = {name: self.request.headers.get(name) for name in names}
        answer = await self.sim.contact_user(
            headers, self.request.method or "POST", self.unknown_path
        )
        self.reply(*answer, limit_info=True)

    post = get = put = patch = delete = handle


class _AdminHandler(_SimHandler):
    """GET /_stats, /_config, /_applications/ID; POST /_script, /_config, /_reset,
    /_expire_tokens, /_applications (no token)."""

    async def get(self, action: str, application_id: str = "") -> None:
        if action == "stats":
            return self.reply(200, self.sim.stats())
        if action == "config":
            return self.reply(200, self.sim.settings())
        if action == "applications" and application_id:
            state = self.sim.application(application_id)
            found = (200, state) if state is not None else (404, {"error": "unknown application"})
            return self.reply(*found)
        raise tornado.web.HTTPError(405)

    async def post(self, action: str, application_id: str = "") -> None:
        actions: dict[str, Callable[[Any], dict[str, Any]]] = {
            "script": self.sim.set_scripts,
            "config": self.sim.configure,
            "reset": lambda _body: self.sim.reset(),
            "expire_tokens": lambda _body: self.sim.expire_tokens(),
            "applications": self.sim.set_applications,
        }
        if application_id:
            raise tornado.web.HTTPError(405)
        await run_admin_action(actions, action, self.request.body, self.reply)


def serve(
    config: MissionCapitalSimConfig,
    host: str = "127.0.0.1",
    port: int = 8082,
    ready: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    admin_port: int | None = None,
    admin_ready: Callable[[int], None] | None = None,
) -> None:
    """Run the simulator until SIGINT/SIGTERM (blocking).

    `port=0` picks a free port; `ready(port)` is called once listening. With `admin_port`
    (0 = free port, reported to `admin_ready`) the admin endpoints are also served on a port
    that `down: "refused"` leaves open. Signals are handled only when called from the main
    thread; to run it in a background thread (tests), pass `stop`: serve() closes the servers
    and returns once `stop` is set.
    """

    async def run() -> None:
        sim = MissionCapitalSimulator(config)
        listener = _Listener(sim.make_app(), host, port)
        sim.listener = listener
        admin_server: tornado.httpserver.HTTPServer | None = None
        if admin_port is not None:
            admin_sockets = tornado.netutil.bind_sockets(admin_port, host)
            admin_server = tornado.httpserver.HTTPServer(sim.make_app(admin_only=True))
            admin_server.add_sockets(admin_sockets)
            sim.has_admin_port = True
        bound = listener.open() if config.down != "refused" else None
        try:
            if admin_server is not None and admin_ready is not None:
                admin_ready(admin_sockets[0].getsockname()[1])
            if ready is not None and bound is not None:
                ready(bound)
            await until_stopped(stop, "missioncapital")
        finally:
            if listener.server is not None:
                server = listener.server
                listener.close()
                await server.close_all_connections()
            if admin_server is not None:
                admin_server.stop()
                await admin_server.close_all_connections()

    if config.down == "refused" and admin_port is None:
        raise ValueError("starting with down 'refused' needs an admin port to come back up")
    asyncio.run(run())


def _script_arg(text: str) -> tuple[str, list[str]]:
    app_id, _, kinds = text.partition("=")
    parsed = [kind.strip() for kind in kinds.split(",") if kind.strip()]
    if not app_id or not parsed or any(kind not in ANSWER_KINDS for kind in parsed):
        raise argparse.ArgumentTypeError(
            f"expected ID=KIND[,KIND...] with KIND in {sorted(ANSWER_KINDS)}: {text!r}"
        )
    return app_id, parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.missioncapital",
        description="Simulate Mission Capital's partner API on Salesforce: the OAuth2 password "
        f"login ({TOKEN_PATH}) and Apex REST contactUser ({CONTACT_USER_PATH}). "
        "Times are in seconds.",
        epilog="Admin (no token): GET /_stats, GET /_config, "
        "GET /_applications/ID (contact_enabled, updates, updated_at, calls), "
        "POST /_applications {ID: {contact_enabled}}, "
        "GET /_arrivals (every application's calls, keyed by its 18-character id: n, start, end, "
        "call, status, code, applied, fields), GET /_arrivals/ID (15 or 18 characters), "
        "POST /_script {id, answers, slow_s}, "
        "POST /_config {token_ttl_s, latency_s, jitter_s, api_limit, api_usage, failure_status, "
        "known_applications, down, down_for_s}, POST /_expire_tokens, POST /_reset. "
        f"Answer kinds: {', '.join(sorted(ANSWER_KINDS))} (slow: held slow_s, then 504, not "
        "applied). /_stats counts peak_calls_per_record and overlapping_records (applications "
        "with 2+ calls in flight at once).",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    add("--port", type=int, default=8082, help="port; 0 picks a free one (default %(default)s)")
    add("--port-file", metavar="PATH", help="write the bound port to PATH once listening")
    add(
        "--admin-port",
        type=int,
        default=None,
        help="also serve the admin endpoints here (0 = free)",
    )
    add("--admin-port-file", metavar="PATH", help="write the bound admin port to PATH")
    add("--client-id", default="sandbox-client", help="OAuth client_id (default %(default)s)")
    add("--client-secret", default="sandbox-secret", help="OAuth client_secret to accept")
    add("--username", default="sandbox@example.com", help="username (default %(default)s)")
    add("--password", default="sandbox-password", help="password to accept")
    add("--security-token", default="", help="security token appended to the password")
    add("--token-ttl", type=float, default=7200, metavar="S", help="token life (default 7200)")
    add("--latency", type=float, default=0.0, metavar="S", help="contactUser time (default 0)")
    add("--jitter", type=float, default=0.0, metavar="S", help="uniform +/- jitter (default 0)")
    add("--api-limit", type=int, default=15000, help="ALLOWED API calls (default %(default)s)")
    add(
        "--known-application",
        action="append",
        default=None,
        metavar="ID",
        help="an ApplicationID that exists (repeatable); default: every well-formed id",
    )
    add(
        "--script",
        type=_script_arg,
        action="append",
        default=[],
        metavar="ID=KIND[,KIND...]",
        help="answers for one ApplicationID, one per call, the last sticky (repeatable)",
    )
    add("--seed", type=int, default=None, help="random seed for the latency jitter")
    args = parser.parse_args(argv)

    config = MissionCapitalSimConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        username=args.username,
        password=args.password,
        security_token=args.security_token,
        token_ttl_s=args.token_ttl,
        latency_s=args.latency,
        jitter_s=args.jitter,
        api_limit=args.api_limit,
        known_applications=args.known_application,
        scripts=dict(args.script),
        seed=args.seed,
    )

    def announce(port: int) -> None:
        print(f"missioncapital simulator listening on http://{args.host}:{port}", flush=True)
        if args.port_file:
            write_port_file(args.port_file, port)

    def announce_admin(port: int) -> None:
        print(f"missioncapital simulator admin on http://{args.host}:{port}", flush=True)
        if args.admin_port_file:
            write_port_file(args.admin_port_file, port)

    serve(
        config,
        args.host,
        args.port,
        ready=announce,
        admin_port=args.admin_port,
        admin_ready=announce_admin,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
