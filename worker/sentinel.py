"""``sentinel://`` URLs: Redis behind Sentinel, for the broker and every client of the state.

The form (one URL, as ``CONTACTSYNC_REDIS_URL``)::

    sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?sentinel_password=SECRET]

``HOST:PORT`` are the sentinels; ``SERVICE`` is the name they monitor (``sentinel monitor
SERVICE ...``); ``PASSWORD`` (and ``USER``) are the data servers', ``sentinel_password`` the
sentinels' own when they have one (``requirepass`` in sentinel.conf). Percent-encode ``/``,
``?`` and ``%`` inside a password.

A parse error never repeats the URL: it may hold a password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

SCHEME = "sentinel"
FORM = "sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]"
#: Where a sentinel listens when a host names no port.
DEFAULT_PORT = 26379
_HOST_PORT = re.compile(
    r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^\s:,/\[\]]+))(?::(?P<port>\d+))?$"
)
_SERVICE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``sentinel://`` URL; its passwords stay out of ``repr``."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    def master_kwargs(self) -> dict[str, Any]:
        """What every connection to the data servers needs (``db``, ``username``, ``password``)."""
        found: dict[str, Any] = {"db": self.db}
        if self.username:
            found["username"] = self.username
        if self.password is not None:
            found["password"] = self.password
        return found

    def sentinel_kwargs(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """Options of the connections to the sentinels themselves: short timeouts (a sentinel
        that does not answer is skipped for the next), and their own password if any."""
        found: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        if self.sentinel_password is not None:
            found["password"] = self.sentinel_password
        return found

    def kombu_url(self) -> str:
        """The broker URL of kombu's Sentinel transport: one ``sentinel://`` per sentinel,
        joined by ``;``, each with the data servers' credentials and database (kombu takes them
        from whichever it is connected through)."""
        auth = ""
        if self.password is not None or self.username:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        hosts = (f"[{h}]" if ":" in h else h for h, _ in self.sentinels)
        return ";".join(
            f"{SCHEME}://{auth}{host}:{port}/{self.db}"
            for host, (_, port) in zip(hosts, self.sentinels, strict=True)
        )

    def kombu_transport_options(self) -> dict[str, Any]:
        """The transport options kombu's Sentinel transport needs on top of ours."""
        return {"master_name": self.service, "sentinel_kwargs": self.sentinel_kwargs()}


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(f"{SCHEME}://")


def _split_auth(authority: str) -> tuple[str | None, str | None, str]:
    """``[USER]:PASSWORD@HOSTS`` → user, password, hosts."""
    if "@" not in authority:
        return None, None, authority
    auth, hosts = authority.rsplit("@", 1)
    if ":" not in auth:
        raise ValueError(f"credentials must be :PASSWORD@ or USER:PASSWORD@ (the form is {FORM})")
    user, password = auth.split(":", 1)
    return unquote(user) or None, unquote(password), hosts


def _sentinels(hosts: str) -> tuple[tuple[str, int], ...]:
    found = []
    for item in hosts.split(","):
        match = _HOST_PORT.match(item.strip())
        if match is None:
            raise ValueError(f"each sentinel must be HOST:PORT, separated by commas ({FORM})")
        port = int(match["port"] or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"a sentinel's port must be 1-65535 ({FORM})")
        found.append((match["v6"] or match["host"], port))
    return tuple(found)


def _service_and_db(path: str) -> tuple[str, int]:
    parts = path.split("/")
    if not parts[0] or len(parts) > 2 or not _SERVICE.match(parts[0]):
        raise ValueError(f"name the service the sentinels monitor after the hosts ({FORM})")
    if len(parts) == 2 and parts[1] and not parts[1].isdigit():
        raise ValueError(f"the database after the service must be a number ({FORM})")
    return parts[0], int(parts[1]) if len(parts) == 2 and parts[1] else 0


def parse(url: str) -> SentinelURL:
    """``sentinel://...`` → ``SentinelURL``; ``ValueError`` with a message that names what to
    fix and never repeats the URL."""
    if not is_sentinel_url(url):
        raise ValueError(f"a Sentinel URL starts with {SCHEME}:// ({FORM})")
    rest, _, query = url[len(SCHEME) + 3 :].partition("?")
    authority, slash, path = rest.partition("/")
    username, password, hosts = _split_auth(authority)
    if not slash:
        raise ValueError(f"name the service the sentinels monitor after the hosts ({FORM})")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"the only option a Sentinel URL takes is ?sentinel_password= ({FORM})")
    service, db = _service_and_db(path)
    return SentinelURL(
        _sentinels(hosts), service, db, username, password, options.get("sentinel_password")
    )
