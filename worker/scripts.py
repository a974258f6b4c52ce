"""Loading the Lua scripts of ``worker/lua/``: the one place a script's source is read.

A script may start with libraries (``ledger_lib.lua``, ``gate_lib.lua``, ``pause_lib.lua``) that
are prepended to its own source, so the atomic steps that share helpers stay one script each
(Lua in Redis has no ``require``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis


@cache
def source(name: str, lib: str | tuple[str, ...] | None = None) -> str:
    """The text of ``lua/<name>.lua``, with ``lua/<lib>.lua`` (each of them, in order) in front
    of it if given."""
    folder = resources.files("worker").joinpath("lua")
    libs = (lib,) if isinstance(lib, str) else lib or ()
    parts = [folder.joinpath(f"{part}.lua").read_text() for part in (*libs, name)]
    return "\n".join(parts)


def load(client: redis.Redis, name: str, lib: str | tuple[str, ...] | None = None) -> Any:
    """``lua/<name>.lua`` (after ``lib``) registered on ``client``: call it with ``keys=`` and
    ``args=``; redis-py sends EVALSHA and loads the script on the first NOSCRIPT."""
    return client.register_script(source(name, lib))
