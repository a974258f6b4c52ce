"""The one settings object: every knob of contactsync, read from the environment.

Variables use the prefix ``CONTACTSYNC_`` and ``__`` for nesting (``CONTACTSYNC_NOOJEE__API_KEY``);
a ``.env`` file in the working directory is read too. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from worker.gate_policy import PolicyConfig
from worker.sentinel import is_sentinel_url
from worker.sentinel import parse as parse_sentinel_url


class RetrySettings(BaseModel):
    """How a job that failed transiently is tried again (backoff through Redis)."""

    # A validation error must not echo what it was given: it may be a secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    base_delay_s: float = Field(5.0, gt=0, description="first backoff delay; doubles per retry")
    max_delay_s: float = Field(600.0, gt=0, description="cap of one backoff delay")
    window_s: float = Field(
        86_400.0, gt=0, description="a job still failing this long after submission goes to review"
    )
    fault_attempts: int = Field(
        8,
        ge=1,
        description="attempts for faults (5xx, 103, transport) before review; with the default "
        "backoff, 8 attempts span about 10 minutes (Noojee: 'wait a couple of minutes')",
    )
    fast_window_s: float = Field(
        5.0, ge=0, description="in-process retries (tenacity) for this long before backing off"
    )


class PolicySettings(BaseModel):
    """The adaptive limit's controller (``worker/gate_policy.py``); the defaults are what the
    benchmarks pass with. ``config()`` is what the gates take."""

    model_config = ConfigDict(hide_input_in_errors=True)

    window_ms: int = Field(
        500,
        ge=50,
        description="a window of calls closes after at least this "
        "long (and min_samples answers, and twice the limit)",
    )
    min_samples: int = Field(10, ge=2, description="the fewest answers in a window or a decision")
    tolerance: float = Field(
        0.25,
        gt=0,
        le=1,
        description="a latency change of more than this fraction, beyond "
        "doubt, is a change of the PBX (the measurement starts again); cruise measurements are "
        "sized to see a change this large",
    )
    z: float = Field(1.5, gt=0, description="standard errors a probe's or a trial's verdict needs")
    alarm_z: float = Field(
        3.0,
        gt=0,
        description="standard errors an alarm needs: queueing seen while cruising, a "
        "check that finds the floor wrong, a window unlike the rest of its measurement",
    )
    busy_cut: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="a busy answer (109) multiplies the limit by this, once per limit",
    )
    probe_gap: int = Field(
        2,
        ge=0,
        description="at most this many windows between probes "
        "upward (0 after a probe that found room)",
    )
    max_samples: int = Field(
        300,
        ge=10,
        description="a decision still undecided after this many answers takes its best estimate",
    )
    max_decision_ms: int = Field(10_000, ge=100, description="the same, after this long")
    decision_precision: float = Field(
        0.2,
        gt=0,
        description="no verdict before the mean log-latency's standard error is below "
        "this (a heavy-tailed PBX needs more answers per decision)",
    )
    floor_precision: float = Field(
        0.3, gt=0, description="the same for a measurement that becomes the latency floor"
    )
    memory_samples: int = Field(
        200,
        ge=10,
        description="the floor and the noise estimate weigh at most this many past answers",
    )
    recheck_ms: int = Field(
        60_000, ge=1000, description="the floor is verified by one step down at least this often"
    )
    step_fraction: float = Field(
        0.125,
        gt=0,
        le=1,
        description="the smallest probe step, as a fraction of the limit (at least one call)",
    )

    def config(self) -> PolicyConfig:
        return PolicyConfig(**self.model_dump())


class GateSettings(BaseModel):
    """The concurrency gates (``worker/gate.py``): permits are leases in Redis."""

    # A validation error must not echo what it was given: it may be a secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    lease_ttl_s: float = Field(
        3.0,
        gt=0,
        description="a killed worker's permits come back, and its threads waiting "
        "for one are passed over, after at most this long; live ones renew every third of it",
    )
    max_wait_s: float = Field(
        5.0,
        ge=0,
        description="a job that gets no permit within this long goes back to its queue "
        "(no retry is spent), freeing its worker thread for other jobs",
    )
    policy: PolicySettings = PolicySettings()


class NoojeeSettings(BaseModel):
    """Noojee Contact CampaignAPI (the dialer)."""

    # A validation error must not echo what it was given: it may be a secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    base_url: AnyHttpUrl | None = Field(
        None, description="e.g. https://pbx.example.com; unset means the sandbox simulator"
    )
    api_key: SecretStr = Field(SecretStr(""), description="apiKey issued by Noojee support")
    connect_timeout_s: float = Field(5.0, gt=0)
    pbx_queue_timeout_s: float = Field(
        60.0, gt=0, description="how long the PBX queues a call before answering 109 (Noojee: 60)"
    )
    read_timeout_s: float = Field(
        75.0, gt=0, description="must exceed pbx_queue_timeout_s, or a 109 looks like a timeout"
    )
    gate: bool = Field(
        True,
        description="false: no gate at all, calls are limited only by worker threads and "
        "queue inside the PBX (for benchmarks; never on a PBX shared with anyone)",
    )
    max_concurrency: int = Field(
        16,
        ge=1,
        description="most calls in flight to this PBX from the whole fleet; with adaptive off, "
        "exactly this many (set it to the PBX's hardware threads / 2)",
    )
    adaptive: bool = Field(
        True,
        description="learn the PBX's free slots from latency and 109s (it shares them with other "
        "clients and never publishes the number); off: a fixed limit of max_concurrency",
    )
    initial_concurrency: int = Field(
        2, ge=1, description="where the adaptive limit starts before it has measured anything"
    )
    coalesce: bool = Field(
        True,
        description="pending updates of one lead become one call (newest value of each field "
        "wins; updates that set different dispositions are never merged); false: one call each",
    )

    @model_validator(mode="after")
    def _read_timeout_outlasts_pbx_queue(self) -> NoojeeSettings:
        if self.read_timeout_s <= self.pbx_queue_timeout_s:
            raise ValueError(
                f"CONTACTSYNC_NOOJEE__READ_TIMEOUT_S={self.read_timeout_s} must be greater than "
                f"CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S={self.pbx_queue_timeout_s}: the PBX "
                "answers 109 only after that long, and a client timeout leaves the outcome unknown"
            )
        return self


class DestinationSettings(BaseModel):
    """What every HTTP destination besides Noojee shares: timeouts, and its cap of calls in
    flight from the whole fleet (a fixed gate, ``worker/gate.py``)."""

    # A validation error must not echo what it was given: it may be a secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(
        30.0, gt=0, description="a call without an answer this long ends with its outcome unknown"
    )
    max_concurrency: int = Field(
        8, ge=1, description="most calls in flight to this destination from the whole fleet"
    )
    adaptive: bool = Field(
        False,
        description="learn the limit from latency as for Noojee (max_concurrency stays "
        "the ceiling); off: exactly max_concurrency",
    )
    coalesce: bool = Field(
        True,
        description="pending jobs of one record become one call (newest value of each "
        "field wins); false: one call each, in order",
    )

    def missing(self) -> list[str]:
        """Names of the settings (env suffixes) this destination cannot run without."""
        return []

    @staticmethod
    def _unset(**values: object) -> list[str]:
        return [
            name.upper()
            for name, value in values.items()
            if value is None
            or (isinstance(value, SecretStr) and not value.get_secret_value())
            or value == ""
        ]


class MissionCapitalSettings(DestinationSettings):
    """Mission Capital partner API (Salesforce Apex REST ``contactUser``)."""

    login_url: AnyHttpUrl | None = Field(
        None,
        description="OAuth host: https://login.salesforce.com (production) or "
        "https://test.salesforce.com (sandbox orgs)",
    )
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    username: str = ""
    password: SecretStr = SecretStr("")
    security_token: SecretStr = Field(SecretStr(""), description="appended to the password")
    partner_id: str = Field("", description="sent as the PartnerId header")
    partner_name: str = Field("", description="sent as the PartnerName header")
    token_lifetime_s: float = Field(
        7200.0,
        gt=60,
        description="how long a token lasts (Salesforce: about 2 h, never said "
        "in the answer); a new one is fetched at 90 % of it",
    )
    max_concurrency: int = Field(
        10, ge=1, description="most calls in flight (an org allows 25 long-running ones)"
    )

    def missing(self) -> list[str]:
        return self._unset(
            login_url=self.login_url,
            client_id=self.client_id,
            client_secret=self.client_secret,
            username=self.username,
            password=self.password,
            partner_id=self.partner_id,
            partner_name=self.partner_name,
        )


class TrendsicSettings(DestinationSettings):
    """Trendsic Platform Service (ServiceStack ``ContactConnections``). Auth: ``api_key``, or
    ``username`` and ``password`` (credentials login with refresh tokens)."""

    base_url: AnyHttpUrl | None = Field(None, description="e.g. https://api.dynamics.trendsic.com")
    api_key: SecretStr = Field(SecretStr(""), description="sent as the bearer token when set")
    username: str = ""
    password: SecretStr = SecretStr("")

    def missing(self) -> list[str]:
        if self.base_url is None:
            return ["BASE_URL"]
        if self.api_key.get_secret_value():
            return []
        return [
            f"API_KEY (or {n})" for n in self._unset(username=self.username, password=self.password)
        ]


class ExpandableSettings(DestinationSettings):
    """Expandable ERP API (``customer-contact-update``)."""

    base_url: AnyHttpUrl | None = Field(None, description="the customer installation's API host")
    data_source: str = Field("", description="DATA_SOURCE of the login")
    username: str = ""
    password: SecretStr = SecretStr("")
    max_concurrency: int = Field(4, ge=1, description="most calls in flight")

    def missing(self) -> list[str]:
        return self._unset(
            base_url=self.base_url,
            data_source=self.data_source,
            username=self.username,
            password=self.password,
        )


class PauseSettings(BaseModel):
    """A destination that keeps failing (refused connections, 502/503/504) is paused: its jobs
    wait in Redis without spending retries, and one call probes it every ``probe_interval_s``."""

    model_config = ConfigDict(hide_input_in_errors=True)

    after_failures: int = Field(
        5, ge=1, description="consecutive failures, fleet-wide, that pause a destination"
    )
    probe_interval_s: float = Field(5.0, gt=0, description="one probe this often while down")
    config_probe_interval_s: float = Field(
        60.0,
        gt=0,
        description="the same, when the pause is for a login or configuration error "
        "(a person must fix it; Salesforce locks a user after 3,600 logins an hour)",
    )
    limit_probe_interval_s: float = Field(
        300.0,
        gt=0,
        description="the same, when the destination says its allowance of calls "
        "is spent (Salesforce's REQUEST_LIMIT_EXCEEDED: the org's 24 h allowance)",
    )


class FlowerSettings(BaseModel):
    """Flower, the operators' view of the fleet."""

    # A validation error must not echo what it was given: it may be a secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    user: str = "operator"
    password: SecretStr | None = Field(
        None, description="basic-auth password; `contactsync up` generates one when unset"
    )
    port: int = Field(5555, ge=0, le=65535)

    @field_validator("password")
    @classmethod
    def _no_comma(cls, value: SecretStr | None) -> SecretStr | None:
        # Flower splits its basic-auth option on commas (several user:password pairs).
        if value is not None and "," in value.get_secret_value():
            raise ValueError("CONTACTSYNC_FLOWER__PASSWORD must not contain a comma")
        return value


class IntakeSettings(BaseModel):
    """The HTTP intake (``producers/intake.py``): how services not written in Python submit."""

    # A validation error must not echo what it was given: it may be a secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='client name → bearer token, as JSON: {"crm": "long-random-token"}; the '
        "name is recorded on every job the client submits",
    )
    operators: list[str] = Field(
        default_factory=list,
        description="client names that may read every job and resolve reviews (the others "
        "see only their own jobs)",
    )
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="a larger request is refused with 413"
    )
    session_hours: float = Field(
        12.0,
        gt=0,
        le=24 * 30,
        description="an operator's console login lasts this long (its signed cookie's age)",
    )
    max_buffered_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="request bodies held in memory at once, every "
        "request together; a body that would pass it is refused with 503 and Retry-After, so "
        "many large uploads at once cannot exhaust the intake's memory",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a client must send a request's headers within this long, and "
        "a kept-alive connection idle this long is closed (slow-loris clients)",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="a client must send a request's body within this long"
    )
    max_connections_per_client: int = Field(
        64,
        ge=0,
        description="connections open at once from one client address; more are "
        "closed on accept (0: no cap; behind a proxy, every client has the proxy's address)",
    )
    redis_deadline_s: float = Field(
        1.5,
        gt=0,
        description="a request whose Redis work has not finished in this long is "
        "answered 503 (a hung Redis never holds the intake); /healthz waits at most 0.8 s",
    )

    @model_validator(mode="after")
    def _buffer_holds_one_body(self) -> IntakeSettings:
        if self.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                f"CONTACTSYNC_INTAKE__MAX_BUFFERED_BYTES={self.max_buffered_bytes} must be at "
                f"least CONTACTSYNC_INTAKE__MAX_BODY_BYTES={self.max_body_bytes}, or a body of "
                "the largest accepted size could never be taken"
            )
        return self

    @field_validator("tokens")
    @classmethod
    def _tokens_are_long(cls, tokens: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in tokens.items():
            if not name or not name.isprintable() or len(name) > 64:
                raise ValueError("client names must be 1-64 printable characters")
            if len(token.get_secret_value()) < 16:
                raise ValueError(
                    f"the token of client {name!r} is shorter than 16 characters: use a long "
                    "random one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`"
                )
        return tokens


class BackfillSettings(BaseModel):
    """Bulk backfills from files (``producers/backfill.py``)."""

    model_config = ConfigDict(hide_input_in_errors=True)

    max_queue_depth: int = Field(
        10_000,
        ge=0,
        description="a backfill pauses while its destination's queue holds more jobs than this, "
        "so Redis memory stays bounded; 0 turns the pause off",
    )


class Settings(BaseSettings):
    """Everything a contactsync process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="CONTACTSYNC_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,
    )

    redis_url: str | None = Field(
        None,
        repr=False,  # may hold a password; `masked()` shows it safely
        description="broker and state; unset means the embedded server started by `contactsync up`",
    )
    redis_failover_wait_s: float = Field(
        15.0,
        ge=0,
        description="sentinel:// only: how long a command that lost its primary "
        "waits for the sentinels to name a new one before it fails",
    )
    redis_wait_replicas: int = Field(
        0, ge=0, description="replicas that must have a new job before submit returns (WAIT)"
    )
    redis_wait_timeout_ms: int = Field(
        1000, ge=1, description="how long submit waits for them; fewer: the submit fails"
    )
    data_dir: Path = Field(Path(".contactsync"), description="embedded server data and AOF")
    key_prefix: str = Field("cs:", min_length=1, description="prefix of every ledger key")
    retention_days: float = Field(14.0, gt=0, description="how long finished jobs stay listed")
    visibility_timeout_s: int = Field(
        600,
        ge=5,
        description="a message a worker took and holds this long without claiming its job is "
        "sent again (by the check for lost messages; by kombu itself for rediss://)",
    )
    worker_concurrency: int = Field(8, ge=1, description="threads per worker process")
    broker_window: int = Field(
        1000,
        ge=0,
        description="most messages kept on each broker list (a queue at one priority); a larger "
        "backlog waits in the ledger (no message copy) and is fed in by the workers' rounds, "
        "which keeps the check for lost messages cheap; 0: no limit",
    )
    job_lease_ttl_s: float = Field(
        10.0,
        gt=0,
        description="a worker's claim on a running job lasts this long unless renewed (every "
        "third of it); a killed worker's job is queued again after at most this long, so it "
        "blocks the jobs behind it on the same contact that long, not the visibility timeout",
    )
    metrics_port: int | None = Field(
        9808,
        ge=0,
        le=65535,
        description="Prometheus metrics (gates, job counts) on http://HOST:PORT/metrics; the "
        "figures are fleet-wide, so the first worker on a host serves them and the others skip; "
        "0 turns them off",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="json: one JSON object per log line (time, level, logger, message and, "
        "where known, job_id, destination, outcome, code, latency_ms), for the worker and "
        "the intake",
    )
    payload_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='payload encryption at rest, JSON {"NAME": "BASE64 of 32 bytes", ...}: the '
        "first key seals every payload written, each key opens; unset: payloads are plaintext "
        "(see worker/codec.py for rotation)",
    )
    embedded_appendfsync: Literal["everysec", "always"] = Field(
        "everysec",
        description="how the embedded server (`contactsync up`/`demo`) flushes its append-only "
        "file: everysec (a power failure may lose the last second of submitted jobs and settled "
        "answers; a crash of the server alone loses nothing) or always (fsync before each "
        "answer: nothing acknowledged is lost, at half to two thirds of the write rate, see "
        "`python -m bench durability`). Your own Redis: set its appendfsync there",
    )
    aof_rewrite_after_deliveries: int = Field(
        10_000,
        ge=0,
        description="ask Redis to rewrite its append-only file once this many jobs were "
        "delivered since the last rewrite (and the file grew 4 MB), so delivered personal data "
        "leaves the disk; 0: leave it to Redis's own trigger",
    )
    retry: RetrySettings = RetrySettings()
    gate: GateSettings = GateSettings()
    noojee: NoojeeSettings = NoojeeSettings()
    missioncapital: MissionCapitalSettings = MissionCapitalSettings()
    trendsic: TrendsicSettings = TrendsicSettings()
    expandable: ExpandableSettings = ExpandableSettings()
    pause: PauseSettings = PauseSettings()
    flower: FlowerSettings = FlowerSettings()
    intake: IntakeSettings = IntakeSettings()
    backfill: BackfillSettings = BackfillSettings()

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and is_sentinel_url(value):
            parse_sentinel_url(value)  # its ValueError says what to fix, never repeats the URL
        elif value is not None and urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
            raise ValueError(
                "CONTACTSYNC_REDIS_URL must start with redis://, rediss://, unix:// or sentinel:// "
                "(for example redis://127.0.0.1:6379/0)"
            )
        return value

    @field_validator("payload_keys")
    @classmethod
    def _payload_keys_are_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        from worker.codec import decode_key

        for name, key in keys.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
                raise ValueError("key names must be 1-32 letters, digits, _ or -")
            decode_key(key.get_secret_value())
        return keys

    @field_validator("metrics_port")
    @classmethod
    def _zero_turns_metrics_off(cls, value: int | None) -> int | None:
        return value or None

    def destination_settings(self, name: str) -> Any:
        """The settings of one registered destination (``CONTACTSYNC_<NAME>__*``): the typed
        field of a built-in one (``settings.noojee``), the field ``settings_model()`` added for
        any other, or, on a bare ``Settings()``, that destination's defaults."""
        from worker.destinations import destination

        value = getattr(self, name, None)
        return value if value is not None else destination(name).settings()

    def longest_calls(self) -> tuple[float, str]:
        """The longest calls one job may make, each waiting its full timeouts, over every
        registered destination (``worker/destinations.py``): (seconds, whose and how many)."""
        from worker.destinations import registry

        longest = (0.0, "no destination")
        for declared in registry():
            config = self.destination_settings(declared.name)
            seconds = declared.longest_calls_s(config)
            if seconds > longest[0]:
                calls = declared.calls_per_job
                longest = (
                    seconds,
                    f"{declared.name}: {calls} call{'s' * (calls > 1)} of "
                    f"{config.connect_timeout_s:g} s connect + "
                    f"{config.read_timeout_s:g} s read",
                )
        return longest

    def _longest_calls_s(self) -> float:
        # One Noojee call that waits its full read timeout; the other destinations may make
        # three calls for one job (a login, Trendsic's read before its write, and the write):
        # each destination declares its calls_per_job.
        return self.longest_calls()[0]

    def gate_patience_s(self) -> float:
        """The longest a job waits at a gate for a turn that is near (``worker/gate.py``): what
        the visibility timeout leaves room for once the fast retries and the longest call are
        counted, so even such a task ends well within it (never less than max_wait_s)."""
        room_s = self.visibility_timeout_s / 2 - self.retry.fast_window_s - self._longest_calls_s()
        return max(self.gate.max_wait_s, room_s)

    @model_validator(mode="after")
    def _visibility_covers_longest_task(self) -> Settings:
        # kombu's own transport (rediss://) redelivers an unacknowledged message after
        # visibility_timeout: a task that runs longer than that would run twice. (For redis://
        # and sentinel:// the bound only applies to messages held unclaimed; it is kept the
        # same for every URL.) The longest task is the fast-retry window plus one
        # wait at the gate and the longest call (a waiter near its turn may wait longer, up to
        # what this leaves room for: gate_patience_s).
        calls_s, whose = self.longest_calls()
        longest_s = self.retry.fast_window_s + self.gate.max_wait_s + calls_s
        if self.visibility_timeout_s < 2 * longest_s:
            raise ValueError(
                f"CONTACTSYNC_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s} is too short: a "
                f"task can run {longest_s:.0f} s (the longest calls: {whose}), so set it to at "
                f"least {2 * longest_s:.0f}"
            )
        return self

    def masked(self) -> dict[str, Any]:
        """The effective settings with every secret masked, for `contactsync config`."""
        shown = self.model_dump(mode="json")
        if self.redis_url:
            shown["redis_url"] = mask_url_password(self.redis_url)
        return shown


def mask_url_password(url: str) -> str:
    """``redis://:secret@host:6379/0`` → ``redis://:***@host:6379/0``; a ``password=`` query
    parameter (which redis-py also accepts) and a ``sentinel_password=`` are masked too."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    if parts.query:
        query = [
            (k, "***" if k in {"password", "sentinel_password"} else v)
            for k, v in parse_qsl(parts.query)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def settings_model() -> type[Settings]:
    """``Settings`` with a field for every registered destination that has no typed field of its
    own (``worker/destinations.py``), so its ``CONTACTSYNC_<NAME>__*`` variables are read and
    checked like the built-in ones'."""
    from worker.destinations import registry

    extra: dict[str, Any] = {
        d.name: (d.settings, Field(default_factory=d.settings))
        for d in registry()
        if d.name not in Settings.model_fields
    }
    if not extra:
        return Settings
    model: type[Settings] = create_model("Settings", __base__=Settings, **extra)
    return model


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once (tests call ``get_settings.cache_clear()``)."""
    return settings_model()()


def settings_variable(loc: tuple[int | str, ...]) -> str:
    """The environment variable behind a settings field: ("noojee", "api_key") →
    CONTACTSYNC_NOOJEE__API_KEY (a model-wide check names its variables in its message)."""
    if not loc:
        return "settings"
    return "CONTACTSYNC_" + "__".join(str(part).upper() for part in loc)


def settings_problem(exc: ValidationError | SettingsError) -> str:
    """What is wrong with the configuration, as one line that names each variable and what to
    set it to, never the value given (it may be a secret). The same line wherever the settings
    are read: `contactsync`, `celery -A worker worker`, `celery -A worker flower`."""
    if isinstance(exc, SettingsError):  # e.g. a nested variable set to malformed JSON
        return (
            f"invalid configuration: {exc}; nested settings take JSON, or set each field "
            "with its own variable (CONTACTSYNC_NOOJEE__API_KEY=...)"
        )
    problems = [
        f"{settings_variable(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors(include_input=False, include_url=False)
    ]
    return "invalid configuration (CONTACTSYNC_* variables or .env): " + "; ".join(
        problems
    ).replace("\n", " ")


def exit_for_settings(exc: ValidationError | SettingsError) -> NoReturn:
    """Stop the process with ``settings_problem`` on stderr and exit status 2: a person fixes a
    variable, a traceback would only bury its name."""
    print(f"error: {settings_problem(exc)}", file=sys.stderr)
    sys.exit(2)
