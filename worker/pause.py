"""Pausing a destination that is down, and probing it until it is back (a circuit breaker whose
state lives in Redis, so the whole fleet sees one pause).

A destination that refuses connections or answers 502/503/504 several times in a row
(``pause.after_failures``, counted fleet-wide) is paused. While paused, its jobs are not sent:
each waits in Redis (the ledger's schedule) until the pause's next probe time, without spending a
retry or a fault. Once per ``pause.probe_interval_s`` one job is let through as the probe; the
first call that succeeds ends the pause, and the waiting jobs come back by themselves, spread
over one probe interval.

A login that is refused, or an answer that says the configuration is broken, pauses the
destination at once and probes it only every ``pause.config_probe_interval_s``: retrying would
not help until a person fixes the settings, and some destinations lock a user who logs in too
often. An answer that says the destination's allowance of calls is spent pauses it at once too,
probed every ``pause.limit_probe_interval_s``: every call meanwhile would spend what it frees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from worker import scripts

log = logging.getLogger(__name__)

#: How long a run of failures is remembered without a new one.
FAILURE_MEMORY_MS = 60_000


@dataclass(frozen=True)
class Verdict:
    """What ``Pause.check`` decided: ``wait_until_ms`` is set when the call must not be made."""

    paused: bool = False
    probe: bool = False
    wait_until_ms: int = 0
    failures: int = 0


@dataclass(frozen=True)
class PauseStatus:
    paused: bool
    reason: str = ""
    since_ms: int = 0
    until_ms: int = 0
    probes: int = 0
    failures: int = 0


class Pause:
    """The pause of one destination endpoint (``name`` is its gate's name). Thread-safe."""

    def __init__(
        self,
        client: redis.Redis,
        name: str,
        *,
        prefix: str = "cs:",
        after_failures: int = 5,
        probe_interval_s: float = 5.0,
        config_probe_interval_s: float = 60.0,
        limit_probe_interval_s: float = 300.0,
    ) -> None:
        self.client = client
        self.name = name
        self.after_failures = after_failures
        self.probe_interval_ms = int(probe_interval_s * 1000)
        self.config_probe_interval_ms = int(config_probe_interval_s * 1000)
        self.limit_probe_interval_ms = int(limit_probe_interval_s * 1000)
        self._keys = [f"{prefix}pause:{name}", f"{prefix}pause:{name}:failures"]
        self._check = scripts.load(client, "pause_check", "pause_lib")
        self._failure = scripts.load(client, "pause_failure")

    def check(self, now_ms: int | None = None) -> Verdict:
        """Before a call. Not paused: go. Paused: wait until ``wait_until_ms``, unless this call
        is the probe."""
        now = _now(now_ms)
        answer = self._check(keys=self._keys, args=[now, self.probe_interval_ms])
        return self.verdict(*(int(v) for v in answer))

    @property
    def claim_args(self) -> tuple[str, int]:
        """What ``Ledger.claim`` needs to check this pause in the step that claims a job (the
        pause's hash, and the probe interval when the pause names none); its answer is turned
        into a ``Verdict`` by ``verdict``."""
        return self._keys[0], self.probe_interval_ms

    def verdict(self, state: int, until_ms: int, failures: int) -> Verdict:
        """``pause_verdict``'s answer (pause_lib.lua) as a ``Verdict``."""
        if state == 0:
            return Verdict(failures=failures)
        if state == 2:
            log.info("%s is paused: this call probes it", self.name)
            return Verdict(paused=True, probe=True)
        return Verdict(paused=True, wait_until_ms=until_ms)

    def failed(self, reason: str, now_ms: int | None = None) -> int:
        """A call found the destination failing. Returns the time the pause lasts until, or 0 if
        the destination is not (yet) paused."""
        return self._record(reason, self.probe_interval_ms, self.after_failures, now_ms)

    def pause_now(self, reason: str, now_ms: int | None = None) -> int:
        """Pause at once: the configuration is broken and a person must fix it."""
        return self._record(reason, self.config_probe_interval_ms, 0, now_ms)

    def pause_spent(self, reason: str, now_ms: int | None = None) -> int:
        """Pause at once: the destination's allowance of calls is spent until it frees some."""
        return self._record(reason, self.limit_probe_interval_ms, 0, now_ms)

    def succeeded(self, verdict: Verdict) -> None:
        """A call got an answer: any run of failures is over. Costs a write only when there was
        one (``verdict`` is what ``check`` said before the call)."""
        if not (verdict.paused or verdict.failures):
            return
        removed = self.client.delete(*self._keys)
        if verdict.paused and removed:
            log.warning("%s answers again: pause over, its jobs resume", self.name)

    def status(self) -> PauseStatus:
        data: dict[str, Any] = self.client.hgetall(self._keys[0])  # type: ignore[assignment]
        failures = int(self.client.get(self._keys[1]) or 0)
        if not data:
            return PauseStatus(False, failures=failures)
        return PauseStatus(
            True,
            str(data.get("reason", "")),
            int(data.get("since_ms", 0)),
            int(data.get("until_ms", 0)),
            int(data.get("probes", 0)),
            failures,
        )

    def _record(self, reason: str, interval_ms: int, after: int, now_ms: int | None) -> int:
        paused, until_ms, newly = (
            int(v)
            for v in self._failure(
                keys=self._keys,
                args=[_now(now_ms), interval_ms, after, reason[:300], FAILURE_MEMORY_MS],
            )
        )
        if newly:
            log.error(
                "%s paused: %s; its jobs wait in Redis and one call probes it every %g s",
                self.name,
                reason,
                interval_ms / 1000,
            )
        return until_ms if paused else 0


def _now(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms
