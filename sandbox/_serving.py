"""What every simulator shares: serving until stopped, and announcing where it listens."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web


async def until_stopped(stop: threading.Event | None, name: str) -> None:
    """Return on SIGINT/SIGTERM (when run from the main thread) or once ``stop`` is set (tests
    run simulators in background threads and stop them this way)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, done.set)
    if stop is not None:
        # threading.Event is not awaitable: a daemon thread forwards it into the loop.
        def forward_stop() -> None:
            stop.wait()
            with contextlib.suppress(RuntimeError):  # the loop already ended on a signal
                loop.call_soon_threadsafe(done.set)

        threading.Thread(target=forward_stop, name=f"{name}-sim-stop", daemon=True).start()
    await done.wait()


def serve_app(
    make_app: Callable[[], tornado.web.Application],
    host: str,
    port: int,
    ready: Callable[[int], None] | None,
    stop: threading.Event | None,
    name: str,
) -> None:
    """Serve ``make_app()`` on ``host:port`` until stopped (blocking). ``port=0`` picks a free
    port; ``ready(port)`` is called once listening."""

    async def run() -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        server = tornado.httpserver.HTTPServer(make_app())
        server.add_sockets(sockets)
        try:
            if ready is not None:
                ready(sockets[0].getsockname()[1])
            await until_stopped(stop, name)
        finally:
            server.stop()
            await server.close_all_connections()

    asyncio.run(run())


def write_port_file(path: str, port: int) -> None:
    """Write then rename, so a parent polling the file never reads a partial number."""
    with open(f"{path}.tmp", "w") as f:
        f.write(f"{port}\n")
    os.replace(f"{path}.tmp", path)


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


def log_paths_only(log: logging.Logger) -> Callable[[tornado.web.RequestHandler], None]:
    """A tornado ``log_function`` that logs method, path and status only: query strings,
    headers and bodies carry API keys, tokens, passwords and personal data."""

    def log_request(handler: tornado.web.RequestHandler) -> None:
        request = handler.request
        log.debug("%s %s %d", request.method, request.path, handler.get_status())

    return log_request


def send(
    handler: tornado.web.RequestHandler, status: int, body: Any, text_type: str = "text/html"
) -> None:
    """Finish with ``body``: a ``str`` as ``text_type`` (an error page), anything else as JSON."""
    handler.set_status(status)
    text = isinstance(body, str)
    handler.set_header(
        "Content-Type", f"{text_type}; charset=UTF-8" if text else "application/json"
    )
    handler.finish(body if text else json.dumps(body))
