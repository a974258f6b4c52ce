"""One credential for the whole fleet: a destination's token, cached in Redis.

A destination that limits logins (Salesforce locks a user after 3,600 an hour) must never see a
login per job, per thread or per worker. The token lives in Redis; a worker that finds none, or
one past its refresh time, or whose call was refused with it, logs in under a lock (``SET NX``
with a TTL), so the fleet logs in once and every other worker reuses that login's token.

A token refused by the destination is refreshed only if it is still the cached one: a worker
whose call failed with a token another worker already replaced just takes the new one. A login
that is refused is tried once: the workers that waited for it, and any that come for a token in
the next ``REFUSAL_MEMORY_S``, take its refusal instead of trying the same credentials again (by
then the destination is paused, and its probes try again at their own pace).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from worker import scripts

log = logging.getLogger(__name__)

#: How long a login may take before another worker may try (the lock's TTL).
LOGIN_LOCK_S = 30.0
#: How often a worker waiting for another's login looks for the new token.
WAIT_STEP_S = 0.02
#: How long a refused login answers for every worker that comes for a token.
REFUSAL_MEMORY_S = 5.0


class LoginFailed(Exception):
    """The destination refused the configured credentials; ``str(exc)`` says which settings to
    check and never contains a secret."""


@dataclass(frozen=True)
class Token:
    """``value`` is what calls carry; ``data`` what the login also answered (Salesforce's
    ``instance_url``, a refresh token); ``refresh_at_ms`` 0 means only a refused call renews it."""

    value: str
    data: dict[str, str] = field(default_factory=dict)
    refresh_at_ms: int = 0

    def fresh(self, now_ms: int) -> bool:
        return not self.refresh_at_ms or now_ms < self.refresh_at_ms

    def __repr__(self) -> str:  # never print the token
        return f"Token(value=***, refresh_at_ms={self.refresh_at_ms})"


#: Logs in (or refreshes, given the stale token or None) and returns the new token.
Login = Callable[[Token | None], Token]


class SharedToken:
    """The fleet's token for one destination login. Thread-safe."""

    def __init__(
        self, client: redis.Redis, name: str, login: Login, *, prefix: str = "cs:"
    ) -> None:
        self.client = client
        self.name = name
        self._login = login
        self._key = f"{prefix}token:{name}"
        self._lock_key = f"{prefix}token:{name}:lock"
        self._logins_key = f"{prefix}token:{name}:logins"
        self._refused_key = f"{prefix}token:{name}:refused"
        self._unlock = scripts.load(client, "unlock")

    def get(self) -> Token:
        """The cached token, or a new one if there is none or it is due for renewal."""
        cached = self._read()
        if cached is not None and cached.fresh(_now_ms()):
            return cached
        return self._renew(cached)

    def refresh(self, refused: Token) -> Token:
        """The destination refused ``refused``: a new token, fetched once for the fleet."""
        return self._renew(refused)

    def logins(self) -> int:
        """Logins made for this destination by the whole fleet so far."""
        return int(self.client.get(self._logins_key) or 0)

    def forget(self) -> None:
        self.client.delete(self._key)

    def _renew(self, stale: Token | None) -> Token:
        deadline = time.monotonic() + LOGIN_LOCK_S
        lock = uuid.uuid4().hex
        while True:
            current = self._read()
            if self._replaced(current, stale):
                assert current is not None
                return current
            self._raise_if_refused()
            if self.client.set(self._lock_key, lock, nx=True, px=int(LOGIN_LOCK_S * 1000)):
                try:
                    current = self._read()  # another worker may have finished just now
                    if self._replaced(current, stale):
                        assert current is not None
                        return current
                    self._raise_if_refused()
                    try:
                        token = self._login(current or stale)
                    except LoginFailed as exc:
                        self.client.set(
                            self._refused_key, str(exc), px=int(REFUSAL_MEMORY_S * 1000)
                        )
                        raise
                    self.client.set(
                        self._key,
                        json.dumps(
                            {
                                "value": token.value,
                                "data": token.data,
                                "refresh_at_ms": token.refresh_at_ms,
                            }
                        ),
                    )
                    self.client.incr(self._logins_key)
                    self.client.delete(self._refused_key)
                    log.info("%s: logged in for the fleet", self.name)
                    return token
                finally:
                    self._unlock(keys=[self._lock_key], args=[lock])
            if time.monotonic() > deadline:
                raise LoginFailed(
                    f"{self.name}: another worker's login took over {LOGIN_LOCK_S:g} s"
                )
            time.sleep(WAIT_STEP_S)  # another worker is logging in

    def _raise_if_refused(self) -> None:
        """Another worker's login was refused just now: take its answer."""
        refused = self.client.get(self._refused_key)
        if refused:
            raise LoginFailed(str(refused))

    @staticmethod
    def _replaced(current: Token | None, stale: Token | None) -> bool:
        """A usable token that is not the one we are replacing."""
        if current is None or not current.fresh(_now_ms()):
            return False
        return stale is None or current.value != stale.value

    def _read(self) -> Token | None:
        raw = self.client.get(self._key)
        if not raw:
            return None
        data = json.loads(str(raw))
        return Token(data["value"], dict(data.get("data") or {}), int(data["refresh_at_ms"]))


def _now_ms() -> int:
    return int(time.time() * 1000)
