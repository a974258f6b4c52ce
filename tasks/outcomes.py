"""The outcome vocabulary shared by every connector, and nothing else.

A connector turns one destination answer into exactly one of these; ``tasks.delivery`` settles it.
``code`` is the destination's own answer code (``"109"``, ``"http-503"``, ``"ConnectError"``) and
``reason`` what an operator reads; neither may contain personal data or secrets.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """

    code: str
    reason: str
    bounded: bool = False
    busy: bool = False


@dataclass(frozen=True)
class Review:
    """A person must decide (a conflicting edit, an unknown answer, an unknown outcome)."""

    code: str
    reason: str


@dataclass(frozen=True)
class Rejected:
    """Will never succeed as sent; dead-lettered with the reason, can be requeued after a fix."""

    code: str
    reason: str


@dataclass(frozen=True)
class Reauth:
    """The credential is stale: refresh it once for the fleet, then retry."""

    code: str
    reason: str


Outcome = Delivered | Retry | Review | Rejected | Reauth
