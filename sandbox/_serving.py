"""What every simulator shares: serving until stopped (``worker/serving.py``), announcing where
it listens, admin actions and scripted answers."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

import tornado.web

from worker.serving import log_paths_only, send, serve_app, until_stopped, write_port_file

__all__ = ["announcer", "log_paths_only", "parse_scripts", "run_admin_action", "send",
           "serve_app", "until_stopped", "write_port_file"]  # fmt: skip


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
    if isinstance(body, dict) and "id" in body and set(body) <= {"id", "answers"}:
        scripts = {str(body["id"]): body.get("answers")}
    elif isinstance(body, dict) and set(body) == {"scripts"} and isinstance(body["scripts"], dict):
        scripts = {str(k): v for k, v in body["scripts"].items()}
    else:
        raise ValueError('expected {"id": ID, "answers": [...]} or {"scripts": {ID: [...]}}')
    for key, answers in scripts.items():
        if not (isinstance(answers, list) and answers):
            raise ValueError(f"answers for {key!r} must be a non-empty list")
        if bad := [a for a in answers if not isinstance(a, str) or a not in allowed]:
            raise ValueError(f"unknown answer {bad[0]!r}; allowed: {sorted(allowed)}")
    return {key: list(answers) for key, answers in scripts.items()}


