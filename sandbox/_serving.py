"""What every simulator shares: serving until stopped (``worker/serving.py``), announcing where
it listens, admin actions and scripted answers (the "slow" one included). Arrival logs per record
are in ``sandbox/_records.py``."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import tornado.web

from worker.serving import log_paths_only, send, serve_app, until_stopped, write_port_file

__all__ = [
    "SLOW",
    "SLOW_S_DEFAULT",
    "SlowHolds",
    "announcer",
    "log_paths_only",
    "parse_scripts",
    "parse_slow_s",
    "run_admin_action",
    "send",
    "serve_app",
    "until_stopped",
    "write_port_file",
]

# The scripted answer every simulator knows for read-timeout tests: the call is held, then
# answered as a gateway that gave up (Noojee: 109), and the change is not applied.
SLOW = "slow"
# Longer than any client's read timeout by default (Noojee's is 75 s); /_script's slow_s sets it.
SLOW_S_DEFAULT = 120.0


def announcer(
    name: str, host: str, port_file: str | None, detail: str = ""
) -> Callable[[int], None]:
    """``ready`` for ``serve``: print where the simulator listens (never a secret: ``detail``
    names only what identifies it), and write the port to ``port_file`` if given."""

    def announce(port: int) -> None:
        suffix = f" ({detail})" if detail else ""
        print(f"{name} simulator listening on http://{host}:{port}{suffix}", flush=True)
        if port_file:
            write_port_file(port_file, port)

    return announce


async def run_admin_action(
    actions: Mapping[str, Callable[[Any], Any]],
    action: str,
    body: bytes,
    reply: Callable[[int, Any], None],
) -> None:
    """An admin POST: ``actions[action](JSON body)`` answered 200, a ``ValueError`` (a body that
    is not JSON included) 400 with its message, an unknown action 405."""
    if action not in actions:
        raise tornado.web.HTTPError(405)
    try:
        answer = actions[action](json.loads(body or b"{}"))
        reply(200, await answer if inspect.isawaitable(answer) else answer)
    except ValueError as exc:
        reply(400, {"error": str(exc)})


def parse_scripts(body: Any, allowed: frozenset[str] | set[str]) -> dict[str, list[str]]:
    """Scripted answers from ``{"id": ID, "answers": [...]}`` or ``{"scripts": {ID: [...]}}``,
    each answer one of ``allowed``; ValueError naming what is wrong."""
    scripts: dict[str, Any]
    keys = set(body) - {"slow_s"} if isinstance(body, dict) else set()
    if "id" in keys and keys <= {"id", "answers"}:
        scripts = {str(body["id"]): body.get("answers")}
    elif keys == {"scripts"} and isinstance(body["scripts"], dict):
        scripts = {str(k): v for k, v in body["scripts"].items()}
    else:
        raise ValueError(
            'expected {"id": ID, "answers": [...]} or {"scripts": {ID: [...]}}, '
            "each with an optional slow_s"
        )
    for key, answers in scripts.items():
        if not (isinstance(answers, list) and answers):
            raise ValueError(f"answers for {key!r} must be a non-empty list")
        if bad := [a for a in answers if not isinstance(a, str) or a not in allowed]:
            raise ValueError(f"unknown answer {bad[0]!r}; allowed: {sorted(allowed)}")
    return {key: list(answers) for key, answers in scripts.items()}


def parse_slow_s(body: Any) -> float | None:
    """The optional ``slow_s`` of a POST /_script body; ValueError unless a non-negative
    number."""
    slow_s: Any = body.get("slow_s") if isinstance(body, dict) else None
    if slow_s is None:
        return None
    number_ok = isinstance(slow_s, int | float) and not isinstance(slow_s, bool)
    if not (number_ok and math.isfinite(slow_s) and slow_s >= 0):  # no NaN, no Infinity
        raise ValueError(f"slow_s must be a non-negative number, got {slow_s!r}")
    return float(slow_s)


class SlowHolds:
    """How long a scripted "slow" answer holds a call, per scripted id: the ``slow_s`` of the
    POST /_script that scripted it, else SLOW_S_DEFAULT."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    def update(self, ids: Iterable[str], slow_s: float | None) -> None:
        """A new script for ``ids``: hold its slow answers ``slow_s`` (None: the default)."""
        for script_id in ids:
            if slow_s is None:
                self._seconds.pop(script_id, None)
            else:
                self._seconds[script_id] = slow_s

    def seconds(self, script_id: str) -> float:
        return self._seconds.get(script_id, SLOW_S_DEFAULT)

    async def hold(self, script_id: str) -> None:
        await asyncio.sleep(self.seconds(script_id))

    def clear(self) -> None:
        self._seconds.clear()
