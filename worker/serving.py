"""Serving HTTP until stopped: what the intake service and the destination simulators share.

Tornado, already here for Flower; handlers run on one event loop per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

log = logging.getLogger(__name__)


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


class CappedHTTPServer(tornado.httpserver.HTTPServer):
    """tornado's HTTP server with two more limits against hostile clients.

    max_connections_per_client: most connections open at once from one client address; a
    further one is closed as soon as it is accepted (0: no cap). Behind a proxy every client
    has the proxy's address: raise it there, or let the proxy cap them.
    header_timeout_s: how long a client may take to send a request's headers, and how long a
    kept-alive connection may sit idle before its next request (tornado ties both to
    ``idle_connection_timeout``); a slow-loris connection is closed after it.
    """

    def initialize(
        self,
        *args: Any,
        max_connections_per_client: int = 0,
        header_timeout_s: float | None = None,
        **kwargs: Any,
    ) -> None:
        if header_timeout_s is not None:
            kwargs["idle_connection_timeout"] = header_timeout_s
        super().initialize(*args, **kwargs)
        self.max_connections_per_client = max_connections_per_client
        self.open_by_client: Counter[str] = Counter()
        self._client_of: dict[tornado.iostream.IOStream, str] = {}

    def handle_stream(self, stream: tornado.iostream.IOStream, address: Any) -> None:
        client = str(address[0]) if isinstance(address, tuple) and address else ""
        cap = self.max_connections_per_client
        if cap and self.open_by_client[client] >= cap:
            stream.close()
            return
        self.open_by_client[client] += 1
        self._client_of[stream] = client
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        client = self._client_of.pop(getattr(server_conn, "stream", None), None)  # type: ignore[arg-type]
        if client is not None:
            self.open_by_client[client] -= 1
            if self.open_by_client[client] <= 0:
                del self.open_by_client[client]


def release_freed_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc's ``malloc_trim``): after a
    burst of large request bodies the process's RSS falls back instead of keeping its peak.
    A no-op where the C library has no such call."""
    with contextlib.suppress(OSError, AttributeError):
        _libc().malloc_trim(0)


def return_large_blocks_at_once(threshold_bytes: int = 64 * 1024) -> None:
    """Serve allocations of ``threshold_bytes`` or more (request body chunks) from their own
    memory maps, returned to the system when freed: glibc otherwise raises its threshold after
    freeing a large block and keeps later ones in a heap it rarely shrinks."""
    m_mmap_threshold = -3
    with contextlib.suppress(OSError, AttributeError):
        _libc().mallopt(m_mmap_threshold, threshold_bytes)


def _libc() -> Any:
    return ctypes.CDLL(None)


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
    port; ``ready(port)`` is called once listening; ``server_options`` go to
    ``CappedHTTPServer`` (tornado's ``HTTPServer`` options, ``max_connections_per_client``,
    ``header_timeout_s``)."""

    async def run() -> None:
        sockets = tornado.netutil.bind_sockets(port, host)
        server = CappedHTTPServer(make_app(), **server_options)
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
