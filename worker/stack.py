"""The whole system on one machine, as `contactsync up` and `contactsync demo` run it: the
embedded server (unless CONTACTSYNC_REDIS_URL is set), the simulator (unless a real Noojee URL
is configured), Celery workers and Flower, each a child process logging under ``data_dir/logs``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from worker.embedded import EmbeddedRedis, die_with_parent, free_port
from worker.settings import get_settings

SIM_API_KEY = "sandbox-key"


def refresh_settings() -> None:
    """Re-read settings and rebuild what was derived from them after the environment changed."""
    from worker.app import app
    from worker.broker import broker_url, redis_client
    from worker.runtime import ledger

    get_settings.cache_clear()
    redis_client.cache_clear()
    ledger.cache_clear()
    app.conf.broker_url = broker_url()
    # Drop the broker connections and producers made for the previous URL (what Celery itself
    # does after a fork), so a second stack in the same process (benchmarks) publishes to its own.
    if app._pool is not None:
        app._pool.force_close_all()
    app._after_fork()


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1
) -> None:
    """Poll ``check()`` until it is true; raise naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout_s:g} s")
        time.sleep(interval_s)


@dataclass
class Stack:
    """Children started in order and stopped in reverse. ``env`` is what they (and this process,
    after ``start``) see: the Redis URL, the simulator URL and key, Flower's credentials.

    sandboxed: ignore configured endpoints and always use a private embedded server and the
    simulators, so sample traffic (the demo) can never reach a real queue or destination.
    """

    data_dir: Path
    workers: int = 1
    flower: bool = True
    sandboxed: bool = False
    simulator_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    flower_url: str = ""
    flower_credentials: tuple[str, str] = ("", "")
    flower_password_generated: bool = False
    simulator_url: str = ""
    _children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)

    @property
    def flower_password_shown(self) -> str:
        """Flower's password as `up` may print it: a generated one in full (nobody else knows
        it), a configured one not at all (output ends up in logs)."""
        if self.flower_password_generated:
            return self.flower_credentials[1]
        return "(from CONTACTSYNC_FLOWER__PASSWORD)"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start(self) -> Stack:
        settings = get_settings()
        self.data_dir = self.data_dir.resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            if settings.redis_url is None or self.sandboxed:
                self.redis = EmbeddedRedis.under(self.data_dir).start()
                self.env["CONTACTSYNC_REDIS_URL"] = self.redis.url
            if settings.noojee.base_url is None or self.sandboxed:
                self._start_simulator()
            self._apply_env()
            for n in range(1, self.workers + 1):
                self.start_worker(f"w{n}")
            self._wait_for_workers(self.workers)
            if self.flower:
                self._start_flower()
        except BaseException:
            self.stop()
            raise
        return self

    def _apply_env(self) -> None:
        os.environ.update(self.env)
        refresh_settings()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with_parent(),
        )  # fmt: skip
        self._children.append((name, proc, log))
        return proc

    def _start_simulator(self) -> None:
        port_file = self.data_dir / "simulator.port"
        port_file.unlink(missing_ok=True)
        self._spawn("simulator", [
            sys.executable, "-m", "sandbox.noojee", "--port", "0", "--port-file", str(port_file),
            "--api-key", SIM_API_KEY, *self.simulator_args,
        ])  # fmt: skip
        wait_until(port_file.exists, 20, "the Noojee simulator")
        self.simulator_url = f"http://127.0.0.1:{port_file.read_text().strip()}"
        self.env["CONTACTSYNC_NOOJEE__BASE_URL"] = self.simulator_url
        self.env["CONTACTSYNC_NOOJEE__API_KEY"] = SIM_API_KEY

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start one Celery worker process (``celery -A worker worker``) named ``name@host``,
        without gossip and mingle (worker state we do not use; less work for its main thread)."""
        return self._spawn(f"worker-{name}", [
            sys.executable, "-m", "celery", "-A", "worker", "worker", "-n", f"{name}@%h",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle",
        ])  # fmt: skip

    def _wait_for_workers(self, count: int) -> None:
        from worker.app import app

        def ready() -> bool:
            self._check_children()
            return len(app.control.ping(timeout=0.5) or []) >= count

        wait_until(ready, 60, f"{count} Celery worker(s)", interval_s=0)

    def _start_flower(self) -> None:
        flower = get_settings().flower
        self.flower_password_generated = flower.password is None
        password = (
            flower.password.get_secret_value() if flower.password else secrets.token_urlsafe(12)
        )
        self.flower_credentials = (flower.user, password)
        port = flower.port if flower.port and _port_free(flower.port) else free_port()
        self.env["FLOWER_BASIC_AUTH"] = f"{flower.user}:{password}"
        self.env["FLOWER_PORT"] = str(port)
        self._spawn("flower", [sys.executable, "-m", "celery", "-A", "worker", "flower",
                               "--address=127.0.0.1", f"--port={port}"])  # fmt: skip
        self.flower_url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            self._check_children()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.flower_url}/healthcheck", timeout=1).status_code == 200
            return False

        wait_until(answers, 60, "Flower")

    def _check_children(self) -> None:
        for name, proc, _ in self._children:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode}; see {self.log_dir}/{name}.log"
                )

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop every child (SIGTERM, then SIGKILL), then the embedded server. A second Ctrl-C
        or SIGTERM meanwhile is ignored: interrupting this would leave the server orphaned."""
        with _signals_ignored():
            self._stop(timeout_s)

    def _stop(self, timeout_s: float) -> None:
        for _name, proc, _log in reversed(self._children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc, log in reversed(self._children):
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
        self._children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0
