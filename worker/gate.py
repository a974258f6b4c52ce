"""The concurrency gate: how many calls a destination may have in flight, fleet-wide.

One gate per destination key (Noojee: per PBX base URL, since insert and update and every other
client share its slots). Its state lives in Redis, so every worker thread, process and host sees
the same permits. The atomic steps are Lua scripts (``lua/gate_*.lua``, with ``gate_lib.lua``
prepended):

- **acquire**: a permit is a lease (a member of ``leases`` scored by its expiry) granted only while
  fewer leases are held than the limit. Otherwise the caller joins the waiters, realtime before
  bulk, and blocks on its own wake list: a release hands the permit over inside Redis and pushes
  to that list, so the waiter wakes with the permit already its own (no polling, no race).
- **renew**: a ``LeaseKeeper`` thread per process extends the leases of running calls every third
  of the TTL; a killed worker stops renewing, and its permits come back within one TTL.
- **release**: gives the permit back, records the call's latency (or a busy answer) in the
  adaptive limit's window, and hands free permits to waiters. The release that closes a window
  (exactly one, fleet-wide) gets its figures back: that process runs the controller
  (``worker/gate_policy.py``, a pure function) and **adjust** applies the new limit, unless a
  newer window was closed meanwhile.

A caller that cannot get a permit within ``max_wait_s`` gets ``None`` and its job goes back to
its queue (see ``tasks/delivery.py``); no retry budget is spent on waiting. Unless its turn is
near: when the line of waiters is longer than the permits can serve within ``max_wait_s`` (a low
limit, many threads), a waiter waits for its expected turn, up to ``max_patience_s``. Otherwise
the back of the line would time out, go back to the queue and join the back of the line again,
over and over: CPU spent on every job for no call more.

**Making way**: under a backlog every worker thread may be waiting here with a bulk job, and a
realtime job just submitted would sit in the queue until some thread is free to fetch it. So a
producer that publishes a realtime job calls ``make_way``: one bulk waiter of that destination
gives up its wait (its job goes back to the queue), and its thread fetches the realtime job,
which Redis serves first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import redis

from worker import scripts
from worker.gate_policy import PolicyConfig, PolicyState, Window, decide

log = logging.getLogger(__name__)

#: What a call tells the gate on release.
OK, BUSY, NONE = "ok", "busy", "none"
#: Gate priority of each job priority: realtime waiters are served first.
PRIORITY = {"realtime": 0, "bulk": 1}
#: Added to a bulk waiter's place in the waiters set (gate_lib.lua's BULK).
BULK_PLACE = 2**40
HOST = socket.gethostname()
#: How far back `status` counts busy answers and latency samples.
RECENT_MS = 60_000


@dataclass(frozen=True)
class GateConfig:
    """adaptive: the limit follows latency and busy answers (starting at ``initial``, never above
    ``maximum``, decided by ``policy``); otherwise it is fixed at ``maximum``."""

    maximum: int
    adaptive: bool = False
    initial: int = 2
    ttl_s: float = 10.0
    max_wait_s: float = 5.0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: The longest a waiter waits for a turn that is near (None: ``max_wait_s``, no longer).
    max_patience_s: float | None = None

    def patience_s(self, ahead: int, latency_ms: int, limit: int) -> float:
        """How long a waiter with ``ahead`` waiters in front of it waits: its turn (the line
        moves ``limit`` calls per mean latency) with half as much again to spare, at least
        ``max_wait_s``, at most ``max_patience_s``."""
        turn_s = 1.5 * (ahead + 1) * latency_ms / 1000 / max(1, limit)
        return max(self.max_wait_s, min(turn_s, self.max_patience_s or self.max_wait_s))


@dataclass(frozen=True)
class Permit:
    """A granted lease. ``held`` is how many permits were out (this one included) at the grant;
    ``epoch`` which limit it was granted under (samples of older limits do not count)."""

    token: str
    held: int
    epoch: int
    waited_s: float


class Answer(NamedTuple):
    """What the acquire script said."""

    granted: int
    #: granted: the permits held after the grant; waiting: ms until the waiter looks again
    value: int
    epoch: int = 0
    #: waiting: when its place in line lapses unless it asks again (ms), as its member names it
    lapses: str = ""
    #: its first ask, waiting: (waiters ahead of it, the calls' mean latency in ms, the limit)
    turn: tuple[int, int, int] | None = None


@dataclass
class GateStatus:
    """What `contactsync gate status` and the metrics show (times in milliseconds)."""

    name: str
    target: str
    limit: int
    maximum: int
    adaptive: bool
    held: int
    waiting: dict[str, int]
    floor_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    busy_last_minute: int
    busy_total: int
    expired_total: int
    history: list[tuple[int, int, float]] = field(default_factory=list)  # (ms, limit, in flight)


#: The gate's atomic steps: ``lua/gate_<op>.lua``, each after ``lua/gate_lib.lua``.
OPS = ("acquire", "release", "adjust", "renew", "cancel", "sweep")


def gate_name(destination: str, target: str = "") -> str:
    """``noojee:3f2a9c1e0b`` for the PBX at ``target``: one gate per destination endpoint, so two
    PBXes never share permits and every worker pointed at the same one does."""
    if not target:
        return destination
    digest = hashlib.sha256(target.rstrip("/").lower().encode()).hexdigest()[:10]
    return f"{destination}:{digest}"


class Gate:
    """A fleet-wide concurrency gate in Redis. Thread-safe; build one per process and reuse it."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        config: GateConfig,
        *,
        prefix: str = "cs:",
        target: str = "",
        destination: str = "",
        keeper: LeaseKeeper | None = None,
    ) -> None:
        self.client = client
        self.name = name
        self.make_way_key = make_way_key(prefix, destination or name.split(":")[0])
        self.config = config
        self.target = target
        self.prefix = f"{prefix}gate:{name}:"
        self._keys = [self.prefix, registry_key(prefix)]
        self._scripts = {op: scripts.load(client, f"gate_{op}", "gate_lib") for op in OPS}
        self._keeper = keeper or LeaseKeeper.for_process()

    # -- the calls' side ----------------------------------------------------------------------
    def acquire(
        self, priority: str = "bulk", wait_s: float | None = None, now_ms: int | None = None
    ) -> Permit | None:
        """A permit, or ``None`` if none came within ``wait_s`` (default: ``max_wait_s``, longer
        if the caller's turn is near, see ``GateConfig.patience_s``), or if a bulk caller was
        asked to make way for a realtime job."""
        cfg = self.config
        patient = wait_s is None and cfg.max_patience_s is not None
        wait_s = cfg.max_wait_s if wait_s is None else wait_s
        # host/pid/random: whose permits are out is visible in Redis (and to the F benchmark).
        token = f"{HOST}/{os.getpid()}/{uuid.uuid4().hex[:16]}"
        started = time.monotonic()
        answer = self._acquire(token, priority, wait_s, now_ms)
        if patient and answer.turn and cfg.patience_s(*answer.turn) > wait_s:
            # Its turn takes longer than max_wait_s, but not too long: keep its place, longer.
            wait_s = cfg.patience_s(*answer.turn)
            answer = self._acquire(token, priority, wait_s, now_ms, answer.lapses)
        # Granted: the permits held after the grant; not granted: how long to wait (ms) before
        # looking again. Each answer of the scripts says which by its first field.
        granted, held_or_wait_ms, epoch, lapses = answer.granted, answer.value, answer.epoch, ""
        deadline = started + wait_s
        while not granted:
            lapses = answer.lapses or lapses  # (its place in line names it)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                granted, held_or_wait_ms, epoch = self._run("cancel", token, lapses, now_ms=now_ms)
                if not granted:
                    return None
                break
            # Block until a release hands us the permit, or until we should look again (our
            # wait ends, or the oldest lease would have expired: its holder may be dead).
            timeout = max(0.001, min(remaining, held_or_wait_ms / 1000))
            keys = [self._key(f"wake:{token}")]
            if priority != "realtime":
                keys.append(self.make_way_key)
            woken = self.client.blpop(keys, timeout=timeout)
            if woken is not None and woken[0] == self.make_way_key:
                granted, held_or_wait_ms, epoch = self._run("cancel", token, lapses, now_ms=now_ms)
                if not granted:  # (a permit handed over at that very moment is kept)
                    return None
                break
            if woken is not None:
                held, _, handed_epoch = str(woken[1]).partition(":")
                granted, held_or_wait_ms, epoch = 1, int(held), int(handed_epoch or 0)
            else:
                answer = self._acquire(
                    token, priority, max(0.0, deadline - time.monotonic()), now_ms, lapses
                )
                granted, held_or_wait_ms, epoch = answer.granted, answer.value, answer.epoch
        permit = Permit(token, held_or_wait_ms, epoch, time.monotonic() - started)
        self._keeper.hold(self, token)
        return permit

    def release(
        self, permit: Permit, latency_s: float, signal: str = NONE, now_ms: int | None = None
    ) -> int:
        """Give the permit back; ``signal`` says what the call saw (``OK``: a normal answer, its
        latency a sample; ``BUSY``: the destination said it is overloaded; ``NONE``: nothing to
        learn). Returns the limit after this release."""
        self._keeper.forget(self, permit.token)
        policy = self.config.policy
        answer = self._scripts["release"](
            keys=self._keys,
            args=[
                "" if now_ms is None else now_ms,
                permit.token,
                round(latency_s * 1000, 1),
                signal,
                permit.held,
                permit.epoch,
                policy.window_ms,
                policy.min_samples,
            ],
        )
        held_before, limit = int(answer[0]), int(answer[1])
        if not held_before:
            log.warning(
                "gate %s: a call outlived its permit (lease expired while it ran)", self.name
            )
        if len(answer) > 3:  # this release closed a window: decide the next limit
            try:
                limit = self._adjust(_pairs(answer[3]), _pairs(answer[4]), now_ms)
            except Exception:  # the permit is back; the window is decided by the next closer
                log.exception("gate %s: could not decide the limit after a window", self.name)
        return limit

    def _adjust(self, window: dict[str, str], policy: dict[str, str], now_ms: int | None) -> int:
        """Run the controller on a window this process closed, and apply its decision."""
        closed = Window(
            limit=int(window["limit"]),
            n=int(window["n"]),
            log_sum=float(window["log_sum"]),
            log_sq_sum=float(window["log_sq_sum"]),
            held_sum=float(window["held_sum"]),
            busy=int(window["busy"]),
            end_ms=int(window["end_ms"]),
        )
        decision = decide(
            PolicyState.from_fields(policy), closed, self.config.policy, self.config.maximum
        )
        held = f"{closed.held_sum / closed.n:.2f}" if closed.n else "0.00"
        flat = [v for pair in decision.state.fields().items() for v in pair]
        applied, limit = self._scripts["adjust"](
            keys=self._keys,
            args=[
                "" if now_ms is None else now_ms,
                window["seq"],
                decision.limit,
                held,
                *flat,
            ],
        )
        if applied:
            log.debug(
                "gate %s: limit %s -> %s (%s)",
                self.name,
                closed.limit,
                decision.limit,
                decision.reason,
            )
        return int(limit)

    @contextmanager
    def permit(
        self, priority: str = "bulk", wait_s: float | None = None
    ) -> Iterator[Permit | None]:
        """``with gate.permit() as p:`` releases with ``NONE`` on the way out (tests, tools)."""
        permit = self.acquire(priority, wait_s)
        started = time.monotonic()
        try:
            yield permit
        finally:
            if permit is not None:
                self.release(permit, time.monotonic() - started)

    def renew(self, tokens: list[str], now_ms: int | None = None) -> list[str]:
        """Extend these leases by one TTL; returns the tokens whose lease was already gone."""
        if not tokens:
            return []
        lost = self._scripts["renew"](
            keys=self._keys,
            args=["" if now_ms is None else now_ms, int(self.config.ttl_s * 1000), *tokens],
        )
        return [str(t) for t in lost]

    def sweep(self, dead: list[str], now_ms: int | None = None) -> tuple[int, int]:
        """Give back the permits of these dead processes ("host/pid") and pass over their
        waiters now (see ``worker/liveness.py``); returns (permits, waiters)."""
        if not dead:
            return 0, 0
        gone, passed, _ = self._run("sweep", *dead, now_ms=now_ms)
        return gone, passed

    # -- looking -------------------------------------------------------------------------------
    def status(self) -> GateStatus:
        return read_status(self.client, self.prefix, self.name)

    def _acquire(
        self,
        token: str,
        priority: str,
        wait_s: float,
        now_ms: int | None,
        lapses: str | None = None,
    ) -> Answer:
        """Ask for a permit. ``lapses``: this token asked before and waits (a release may
        have handed it a permit meanwhile); when its place lapses, as the last answer said ('':
        it has none)."""
        cfg = self.config
        answer = self._scripts["acquire"](
            keys=self._keys,
            args=[
                "" if now_ms is None else now_ms,
                token,
                PRIORITY.get(priority, 1),
                int(cfg.ttl_s * 1000),
                int(wait_s * 1000),
                int(cfg.adaptive),
                cfg.initial,
                cfg.maximum,
                self.target,
                self.name,
                int(lapses is not None),
                lapses or "",
            ],
        )
        values = [int(float(v)) for v in answer] + [0, 0]
        if values[0] or len(answer) < 3:
            return Answer(values[0], values[1], values[2])
        turn = (values[3], values[4], values[5]) if len(answer) == 6 else None
        return Answer(0, values[1], 0, str(values[2]), turn)

    def _run(self, op: str, *args: Any, now_ms: int | None = None) -> tuple[int, int, int]:
        answer = self._scripts[op](keys=self._keys, args=["" if now_ms is None else now_ms, *args])
        values = [int(float(v)) for v in answer] + [0, 0, 0]
        return values[0], values[1], values[2]

    def _key(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"


def read_status(client: redis.Redis, prefix: str, name: str) -> GateStatus:
    """A gate's figures, read from Redis (``prefix`` is the gate's own, ending in ``:``)."""
    seconds, micros = client.time()
    now = int(seconds) * 1000 + int(micros) // 1000
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(f"{prefix}state")
    pipe.zcount(f"{prefix}leases", f"({now}", "+inf")
    pipe.zrange(f"{prefix}waiters", 0, -1, withscores=True)
    pipe.hgetall(f"{prefix}policy")
    pipe.lrange(f"{prefix}samples", 0, -1)
    pipe.zcount(f"{prefix}busy", now - RECENT_MS, "+inf")
    pipe.lrange(f"{prefix}history", 0, -1)
    state, held, waiters, policy, samples, busy, history = pipe.execute()

    def still_waits(member: str) -> bool:  # "token|when its place lapses (ms)", gate_lib's
        at = member.rpartition("|")[2]
        return at.isdigit() and int(at) >= now

    still = [place for member, place in waiters if still_waits(str(member))]

    def recent(items: list[str]) -> list[float]:
        pairs = (item.split(":", 1) for item in items)
        return [float(v) for at, v in pairs if int(at) >= now - RECENT_MS]

    floor = PolicyState.from_fields(policy).floor
    latencies = sorted(recent(samples))
    points = []
    for item in reversed(history):
        at, limit, inflight = item.split(":")
        points.append((int(at), int(limit), float(inflight)))
    return GateStatus(
        name=name,
        target=state.get("target", ""),
        limit=int(state.get("limit", 0)),
        maximum=int(state.get("max", 0)),
        adaptive=state.get("adaptive") == "1",
        held=int(held),
        waiting={
            "realtime": sum(1 for place in still if place < BULK_PLACE),
            "bulk": sum(1 for place in still if place >= BULK_PLACE),
        },
        floor_ms=round(floor.ms, 1) if floor.n else None,
        p50_ms=_percentile(latencies, 0.50),
        p95_ms=_percentile(latencies, 0.95),
        busy_last_minute=int(busy),
        busy_total=int(state.get("busy_total", 0)),
        expired_total=int(state.get("expired", 0)),
        history=points,
    )


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A Redis reply [field, value, field, value, ...] as a dict of strings."""
    return {str(k): str(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}


def make_way_key(prefix: str, destination: str) -> str:
    """The list bulk waiters of a destination's gates also block on (see ``make_way``)."""
    return f"{prefix}make-way:{destination}"


def make_way(client: redis.Redis, prefix: str, destination: str, jobs: int = 1) -> None:
    """Ask up to ``jobs`` bulk waiters at ``destination``'s gates to give up their wait, so their
    threads fetch the realtime jobs just published. Unclaimed requests lapse after 2 s (by then
    a thread has come free anyway)."""
    key = make_way_key(prefix, destination)
    pipe = client.pipeline(transaction=False)
    pipe.lpush(key, *(["1"] * min(jobs, 64)))
    pipe.ltrim(key, 0, 63)
    pipe.pexpire(key, 2000)
    pipe.execute()


def registry_key(prefix: str) -> str:
    """The set of every gate's name (each acquire adds its gate)."""
    return f"{prefix}gates"


def gate_names(client: redis.Redis, prefix: str) -> list[str]:
    """Every gate that has been used (``noojee:3f2a9c1e0b``, ...)."""
    return sorted(str(name) for name in cast(set[str], client.smembers(registry_key(prefix))))


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class LeaseKeeper:
    """Renews the leases this process holds, every third of each gate's TTL, on one thread. A
    lease is renewed once it is a third of a TTL old (its grant gave it a whole TTL): the short
    calls most jobs make end before that, and cost no renewal at all."""

    _process: LeaseKeeper | None = None
    _process_lock = threading.Lock()

    def __init__(self) -> None:
        #: gate -> token -> when its lease was granted or last renewed (time.monotonic())
        self._held: dict[Gate, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wakeup = threading.Event()

    @classmethod
    def for_process(cls) -> LeaseKeeper:
        with cls._process_lock:
            if cls._process is None:
                cls._process = cls()
            return cls._process

    def hold(self, gate: Gate, token: str) -> None:
        with self._lock:
            tokens = self._held.setdefault(gate, {})
            if not tokens:
                self._wakeup.set()  # this gate's TTL may be shorter than the current interval
            tokens[token] = time.monotonic()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="contactsync-lease-keeper", daemon=True
                )
                self._thread.start()

    def forget(self, gate: Gate, token: str) -> None:
        with self._lock:
            self._held.get(gate, {}).pop(token, None)

    def renew_once(self) -> None:
        """Renew the leases a third of a TTL old or more."""
        now = time.monotonic()
        with self._lock:
            due = {
                gate: sorted(
                    t for t, since in tokens.items() if now - since >= gate.config.ttl_s / 3
                )
                for gate, tokens in self._held.items()
            }
        for gate, tokens in due.items():
            if not tokens:
                continue
            try:
                lost = gate.renew(tokens)
            except Exception as exc:  # keep renewing the others; this thread must not die
                log.warning("gate %s: could not renew %d lease(s): %s", gate.name, len(tokens), exc)
                continue
            with self._lock:
                held = self._held.get(gate, {})
                for token in tokens:
                    if token in held:
                        held[token] = now
                # A lease released while this renewal ran was given back, not lost.
                lost = [token for token in lost if held.pop(token, None) is not None]
            for _ in lost:
                log.warning("gate %s: a lease expired before it was renewed", gate.name)

    def _run(self) -> None:
        while True:
            with self._lock:
                ttls = [gate.config.ttl_s for gate, tokens in self._held.items() if tokens]
            # A timer, not synchronisation: leases must be renewed well before they expire.
            self._wakeup.wait(min(ttls, default=10.0) / 3)
            self._wakeup.clear()
            self.renew_once()
