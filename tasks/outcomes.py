"""The outcome vocabulary shared by every connector, and nothing else.

A connector turns one destination answer into exactly one of these; ``tasks.delivery`` settles it.
``code`` is the destination's own answer code (``"109"``, ``"http-503"``, ``"ConnectError"``) and
``reason`` what an operator reads; neither may contain personal data or secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Delivered:
    """The destination applied the update."""

    code: str = "0"
    reason: str = "delivered"


@dataclass(frozen=True)
class Retry:
    """Transient: the same request may succeed later.

    bounded: a fault (5xx, exception code, transport error) that is retried only
    ``retry.fault_attempts`` times before review; unbounded retries (Noojee 109, the PBX is busy)
    end only when the retry window closes.
    busy: the destination said it is overloaded (109); the concurrency gate wants to know.
    down: the destination itself is failing (refused connections, 502/503/504), not this job;
    enough of these in a row pause it (``worker/pause.py``).
    spent: the destination's allowance of calls is spent (Salesforce's REQUEST_LIMIT_EXCEEDED):
    the destination is paused at once and probed every ``pause.limit_probe_interval_s``; no
    job spends a retry on it.
    """

    code: str
    reason: str
    bounded: bool = False
    busy: bool = False
    down: bool = False
    spent: bool = False


@dataclass(frozen=True)
class Review:
    """A person must decide (a conflicting edit, an unknown answer, an unknown outcome)."""

    code: str
    reason: str


@dataclass(frozen=True)
class Rejected:
    """Will never succeed as sent; dead-lettered with the reason, can be requeued after a fix.
    pause: the answer says the destination's configuration is broken (no job can succeed until
    a person fixes it), so the destination is paused too."""

    code: str
    reason: str
    pause: bool = False


@dataclass(frozen=True)
class Reauth:
    """The credential was refused even after the connector refreshed it once for the fleet (or
    the login itself failed): the destination is misconfigured, so it is paused, and its jobs
    wait for a person to fix the credentials."""

    code: str
    reason: str


@dataclass(frozen=True)
class Superseded:
    """Not sent: the producer's version of this job is older than one already delivered for
    the same record (``by``: the job that delivered it). Decided before any call, never by a
    connector."""

    code: str
    reason: str
    by: str = ""


Outcome = Delivered | Retry | Review | Rejected | Reauth


#: One word for each class of answer, the same for every connector (CRM_APIS.md's classes, with
#: Retry split by what the answer says of the destination).
Verdict = Literal[
    "delivered",
    "busy",
    "retry",
    "fault",
    "down",
    "spent",
    "review",
    "rejected",
    "broken",
    "refused",
]


@dataclass(frozen=True)
class Rule:
    """How one destination answer settles: a row of a connector's answer table, which maps the
    destination's own codes to these (data, readable as the vendor's documentation).

    verdict: ``delivered``; ``busy`` (the destination is overloaded: Noojee's 109; retried,
    unbounded, and the gate is told); ``retry`` (transient, until the retry window closes);
    ``fault`` (transient, a bounded number of times); ``down`` (the destination is failing: a
    bounded retry that counts towards a pause); ``spent`` (its allowance of calls is spent: it is
    paused, nothing spent); ``review``; ``rejected``; ``broken`` (rejected, and the destination
    paused: its configuration is broken); ``refused`` (the credential was refused).
    reason: what the operator reads. code: the outcome's code when the answer has none of its
    own. measured: the destination did the work, so the call's latency says how loaded it is.
    """

    verdict: Verdict
    reason: str
    code: str = ""
    measured: bool = False

    def outcome(self, code: str = "", reason: str | None = None) -> Outcome:
        """The outcome of an answer this row matched: ``code`` is the answer's own code (this
        row's ``code`` wins), ``reason`` replaces this row's when the answer adds to it."""
        code, reason = self.code or code, self.reason if reason is None else reason
        verdict = self.verdict
        if verdict == "delivered":
            return Delivered(code, reason)
        if verdict in ("busy", "retry", "fault", "down", "spent"):
            return Retry(
                code,
                reason,
                bounded=verdict in ("fault", "down"),
                busy=verdict == "busy",
                down=verdict == "down",
                spent=verdict == "spent",
            )
        if verdict == "review":
            return Review(code, reason)
        if verdict == "refused":
            return Reauth(code, reason)
        return Rejected(code, reason, pause=verdict == "broken")
