"""Serving HTTP until stopped: what the intake service and the destination simulators share.

Tornado, already here for Flower; handlers run on one event loop per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
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
    **server_options: Any,
) -> None:
    """Serve ``make_app()`` on ``host:port`` until stopped (blocking). ``port=0`` picks a free
    port; ``ready(port)`` is called once listening; ``server_options`` go to tornado's
    ``HTTPServer`` (``max_body_size``)."""

    async def run() -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        server = tornado.httpserver.HTTPServer(make_app(), **server_options)
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
