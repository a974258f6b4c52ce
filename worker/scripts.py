"""Loading the Lua scripts of ``worker/lua/``: the one place a script's source is read.

A script may start with a library (``ledger_lib.lua``, ``gate_lib.lua``) that is prepended to its
own source, so the atomic steps that share helpers stay one script each (Lua in Redis has no
``require``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import redis


@cache
def source(name: str, lib: str | None = None) -> str:
    """The text of ``lua/<name>.lua``, with ``lua/<lib>.lua`` in front of it if given."""
    folder = resources.files("worker").joinpath("lua")
    own = folder.joinpath(f"{name}.lua").read_text()
    if lib is None:
        return own
    return f"{folder.joinpath(f'{lib}.lua').read_text()}\n{own}"


def load(client: redis.Redis, name: str, lib: str | None = None) -> Any:
    """``lua/<name>.lua`` (after ``lib``) registered on ``client``: call it with ``keys=`` and
    ``args=``; redis-py sends EVALSHA and loads the script on the first NOSCRIPT."""
    return client.register_script(source(name, lib))
