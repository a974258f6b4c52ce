"""Sealing stored payloads again, the second half of a key rotation (``worker/codec.py``):
every job record's ``payload`` and ``carried`` fields, read and written back under WATCH, so a
worker that changes a job meanwhile (an absorb, a settlement, a requeue) always wins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis

from worker.codec import PayloadCodec
from worker.ledger import Ledger

#: The job record's fields that hold payloads.
FIELDS = ("payload", "carried")


@dataclass(frozen=True)
class Resealed:
    """How many job records were sealed again, already were, or changed while being read."""

    changed: int
    kept: int
    skipped: int


def reseal_all(ledger: Ledger, codec: PayloadCodec, batch: int = 500) -> Resealed:
    """Seal every stored payload with ``codec``'s first key (open it, without keys)."""
    changed = kept = skipped = 0
    pattern = ledger.job_key("*")
    for key in ledger.r.scan_iter(match=pattern, count=batch, _type="hash"):
        outcome = _reseal(ledger.r, str(key), codec)
        changed += outcome == "changed"
        kept += outcome == "kept"
        skipped += outcome == "skipped"
    return Resealed(changed, kept, skipped)


def _reseal(client: redis.Redis, key: str, codec: PayloadCodec) -> str:
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            values = cast(list[str | None], pipe.hmget(key, list(FIELDS)))
            found = {name: value for name, value in zip(FIELDS, values, strict=True) if value}
            stale = {
                name: codec.seal(codec.unseal(value))
                for name, value in found.items()
                if not codec.sealed_with_first(value)
            }
            if not stale:
                pipe.unwatch()
                return "kept"
            pipe.multi()
            pipe.hset(key, mapping=cast(Any, stale))
            pipe.execute()
        except redis.WatchError:
            return "skipped"
    return "changed"
