"""An operator's console session: who logged in, when, and the CSRF token of their forms, in a
cookie signed with a key derived from the intake's tokens.

The cookie is HttpOnly and SameSite=Strict (Secure over HTTPS), scoped to ``/console``. Its
signature is tornado's (HMAC-SHA256). The key is derived from every configured token, so every
intake process with the same settings accepts the same sessions, and changing any token ends
every session.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

COOKIE = "cs_console"


def cookie_secret(tokens: dict[str, str]) -> str:
    """The signing key of session cookies, derived from the configured tokens (never one of
    them: a cookie reveals nothing of a token)."""
    material = json.dumps(sorted(tokens.items())).encode()
    return hashlib.blake2b(material, key=b"contactsync-console-session", digest_size=32).hexdigest()


@dataclass(frozen=True)
class Session:
    """``client``: the operator's client name (recorded on what they do); ``csrf``: the token
    each of their forms carries; ``issued_ms``: when they logged in."""

    client: str
    csrf: str
    issued_ms: int

    @classmethod
    def new(cls, client: str) -> Session:
        return cls(client, secrets.token_urlsafe(24), int(time.time() * 1000))

    def dump(self) -> str:
        return json.dumps({"c": self.client, "x": self.csrf, "t": self.issued_ms})

    @classmethod
    def read(cls, raw: bytes | None) -> Session | None:
        """The session of a verified cookie value; None if absent or malformed."""
        if not raw:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["c"]), str(data["x"]), int(data["t"]))
        except (ValueError, KeyError, TypeError):
            return None

    def expired(self, hours: float) -> bool:
        return time.time() * 1000 - self.issued_ms > hours * 3_600_000

    def csrf_ok(self, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(presented.encode(), self.csrf.encode())
