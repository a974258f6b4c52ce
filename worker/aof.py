"""Rewriting the append-only file after many deliveries, so delivered personal data leaves the
disk: a delivered job's payload is deleted from Redis at once, but the commands that wrote it
stay in the AOF until the server rewrites it (Redis's own trigger waits for the file to double,
which a large, steady AOF may take days to do).

One worker of the fleet looks every ``CHECK_S`` (a lock in Redis) and asks for ``BGREWRITEAOF``
when at least ``after_deliveries`` jobs were delivered since the last rewrite it asked for and
the AOF grew by ``MIN_GROWTH_BYTES`` since its last rewrite. Keys: ``{prefix}aof-rewrite`` hash
(``delivered``: the delivered count at the last rewrite asked for, ``at_ms``).
"""

from __future__ import annotations

import logging
from typing import cast

import redis

from worker.ledger import now_ms

log = logging.getLogger(__name__)

#: How often one worker of the fleet checks.
CHECK_S = 30.0
#: A rewrite is not worth it for an AOF that grew less than this since its last rewrite.
MIN_GROWTH_BYTES = 4 * 1024 * 1024


class AofRewriter:
    """Asks the server for an AOF rewrite when enough was delivered (``check``).

    client: a ``decode_responses=True`` client. after_deliveries: deliveries since the last
    rewrite that call for one (0: never). min_growth_bytes: growth of the AOF since its last
    rewrite below which it is not worth it."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        after_deliveries: int,
        min_growth_bytes: int = MIN_GROWTH_BYTES,
    ) -> None:
        self.r = client
        self.key = f"{prefix}aof-rewrite"
        self.turn_key = f"{prefix}aof-rewrite:turn"
        self.counts_key = f"{prefix}counts"
        self.after_deliveries = after_deliveries
        self.min_growth_bytes = min_growth_bytes
        self.refused = False

    def check(self, every_s: float = CHECK_S) -> bool:
        """Ask for a rewrite if one is due and it is this process's turn (one a fleet per
        ``every_s``); True if it asked."""
        if not self.after_deliveries or self.refused:
            return False
        if not self.r.set(self.turn_key, "1", nx=True, px=int(every_s * 1000)):
            return False
        delivered = int(cast(str | None, self.r.hget(self.counts_key, "delivered")) or 0)
        last = int(cast(str | None, self.r.hget(self.key, "delivered")) or 0)
        if delivered < last:  # the counts were reset (a new server)
            last = 0
        if delivered - last < self.after_deliveries:
            return False
        info = cast(dict[str, int | str], self.r.info("persistence"))
        if not int(info.get("aof_enabled", 0)):
            return False
        growth = int(info.get("aof_current_size", 0)) - int(info.get("aof_base_size", 0))
        if growth < self.min_growth_bytes or int(info.get("aof_rewrite_in_progress", 0)):
            return False
        try:
            self.r.bgrewriteaof()
        except redis.ResponseError as exc:  # a managed Redis may refuse (or rename) the command
            log.warning(
                "the server refused BGREWRITEAOF (%s): delivered data stays in its "
                "append-only file until it rewrites it itself",
                exc,
            )
            self.refused = True
            return False
        self.r.hset(self.key, mapping={"delivered": delivered, "at_ms": now_ms()})
        log.info(
            "asked the server to rewrite its append-only file: %d jobs delivered since the "
            "last rewrite, the file grew %.0f MB",
            delivered - last,
            growth / 1e6,
        )
        return True
