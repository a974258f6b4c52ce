"""The whole system on one machine, as `contactsync up` and `contactsync demo` run it: the
embedded server (unless CONTACTSYNC_REDIS_URL is set), a simulator for each destination that is
not configured (``sandbox/``), Celery workers and Flower, each a child process logging under
``data_dir/logs``.
"""

from __future__ import annotations

import contextlib
import functools
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

from worker.destinations import Destination, destination, registry
from worker.embedded import (
    PRIVATE_FILE,
    EmbeddedRedis,
    die_with_parent,
    free_port,
    make_private_dir,
)
from worker.settings import get_settings, mask_url_password


def simulated() -> list[Destination]:
    """Every registered destination that has a simulator, in the order they are started."""
    return [d for d in registry() if d.simulator is not None]


def refresh_settings() -> None:
    """Re-read settings and rebuild what was derived from them after the environment changed."""
    from worker.app import app, broker_settings
    from worker.broker import redis_client
    from worker.codec import payload_codec
    from worker.runtime import ledger

    get_settings.cache_clear()
    payload_codec.cache_clear()
    redis_client.cache_clear()
    ledger.cache_clear()
    app.conf.update(broker_settings())
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
    simulator_args: extra options of the Noojee simulator; ``simulator_options`` those of any.
    """

    data_dir: Path
    workers: int = 1
    flower: bool = True
    intake: bool = True
    sandboxed: bool = False
    simulator_args: list[str] = field(default_factory=list)
    simulator_options: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    redis: EmbeddedRedis | None = None
    flower_url: str = ""
    flower_credentials: tuple[str, str] = ("", "")
    flower_password_generated: bool = False
    intake_url: str = ""
    intake_token: str = ""
    simulator_urls: dict[str, str] = field(default_factory=dict)
    _children: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = field(default_factory=list)
    #: What each child was started with, and when; restarts by name (``supervise``).
    _commands: dict[str, list[str]] = field(default_factory=dict)
    _started_at: dict[str, float] = field(default_factory=dict)
    _restarts: dict[str, Restart] = field(default_factory=dict)

    @property
    def flower_password_shown(self) -> str:
        """Flower's password as `up` may print it: a generated one in full (nobody else knows
        it), a configured one not at all (output ends up in logs)."""
        if self.flower_password_generated:
            return self.flower_credentials[1]
        return "(from CONTACTSYNC_FLOWER__PASSWORD)"

    @property
    def simulator_url(self) -> str:
        """The Noojee simulator's URL ("" if a real PBX is configured)."""
        return self.simulator_urls.get("noojee", "")

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def start(self) -> Stack:
        settings = get_settings()
        self.data_dir = self.data_dir.resolve()
        make_private_dir(self.data_dir)  # the server's data and the logs: 0700
        make_private_dir(self.log_dir)
        try:
            if settings.redis_url is None or self.sandboxed:
                self.redis = EmbeddedRedis.under(
                    self.data_dir, appendfsync=get_settings().embedded_appendfsync
                ).start()
                self._started_at["redis"] = time.monotonic()
                self.env["CONTACTSYNC_REDIS_URL"] = self.redis.url
            self._start_simulators(
                [
                    d.name
                    for d in simulated()
                    if self.sandboxed or not d.configured(settings.destination_settings(d.name))
                ]
            )
            self._apply_env()
            for n in range(1, self.workers + 1):
                self.start_worker(f"w{n}")
            self.wait_for_workers(self.workers)
            if self.flower:
                self._start_flower()
            if self.intake:
                self._start_intake()
        except BaseException:
            self.stop()
            raise
        return self

    def _apply_env(self) -> None:
        os.environ.update(self.env)
        refresh_settings()

    def supervise(self) -> list[str]:
        """Start again, with backoff, the embedded server and every child that died: call it
        every half second or so from the thread that started the stack (a child dies with the
        thread that started it). Returns what it saw and did, for the screen and the log."""
        events: list[str] = []
        now = time.monotonic()
        if self.redis is not None and not self.redis.alive:
            restart = self._restarts.setdefault("redis", Restart())
            if restart.due(now, events, "the embedded server", self._started_at.get("redis")):
                try:
                    self.redis.restart()
                    self._started_at["redis"] = time.monotonic()
                    events.append(
                        f"the embedded server is back on "
                        f"{mask_url_password(self.redis.url)} (its append-only file "
                        "replayed)"
                    )
                except RuntimeError as exc:
                    events.append(f"the embedded server did not start again: {exc}")
        for name, proc, log in list(self._children):
            if proc.poll() is None:
                continue
            restart = self._restarts.setdefault(name, Restart())
            if restart.due(
                now, events, f"{name} (exit code {proc.returncode})", self._started_at.get(name)
            ):
                log.close()
                self._children.remove((name, proc, log))
                self._spawn(name, self._commands[name])
                events.append(f"{name} started again (logs: {self.log_dir / name}.log)")
        return events

    def keep_running(self, report: Callable[[str], None], tick_s: float = 0.5) -> None:
        """Supervise until interrupted (Ctrl-C, SIGTERM): every event goes to ``report`` and,
        with its time, to ``logs/supervisor.log``."""
        log = self.log_dir / "supervisor.log"
        while True:
            for event in self.supervise():
                report(event)
                with log.open("a") as out:
                    out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {event}\n")
            time.sleep(tick_s)  # a supervisor's round, not synchronisation

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self._commands[name] = args
        self._started_at[name] = time.monotonic()
        log = (self.log_dir / f"{name}.log").open("ab")
        os.chmod(log.fileno(), PRIVATE_FILE)
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._children.append((name, proc, log))
        return proc

    def _start_simulators(self, names: list[str]) -> None:
        """Start them all, then wait for each to listen (they start in parallel)."""
        port_files = {}
        for name in names:
            sim = destination(name)
            port_file = port_files[name] = self.data_dir / f"simulator-{name}.port"
            port_file.unlink(missing_ok=True)
            extra = self.simulator_args if name == "noojee" else []
            self._spawn(
                f"simulator-{name}",
                [
                    sys.executable,
                    "-m",
                    str(sim.simulator),
                    "--port",
                    "0",
                    "--port-file",
                    str(port_file),
                    *sim.sandbox_args,
                    *extra,
                    *self.simulator_options.get(name, []),
                ],
            )
        for name, port_file in port_files.items():
            wait_until(functools.partial(self._started, port_file), 20, f"the {name} simulator")
            url = self.simulator_urls[name] = f"http://127.0.0.1:{port_file.read_text().strip()}"
            sim = destination(name)
            variables = {sim.url_setting.upper(): url, **sim.sandbox_env}
            for suffix, value in variables.items():
                self.env[f"CONTACTSYNC_{name.upper()}__{suffix}"] = value

    def _started(self, port_file: Path) -> bool:
        self._check_children()
        return port_file.exists() and bool(port_file.read_text().strip())

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        """Start one Celery worker process (``celery -A worker worker``) named ``name@host``,
        without gossip and mingle (worker state we do not use; less work for its main thread)."""
        return self._spawn(
            f"worker-{name}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "worker",
                "-n",
                f"{name}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
        )

    def wait_for_workers(self, count: int) -> None:
        """Until ``count`` workers answer a ping."""
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
        self._spawn(
            "flower",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "flower",
                "--address=127.0.0.1",
                f"--port={port}",
            ],
        )
        self.flower_url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            self._check_children()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.flower_url}/healthcheck", timeout=1).status_code == 200
            return False

        wait_until(answers, 60, "Flower")

    def _start_intake(self) -> None:
        """The HTTP intake, with a generated operator token for the client ``local`` unless
        CONTACTSYNC_INTAKE__TOKENS names the clients."""
        import json

        intake = get_settings().intake
        if not intake.tokens or self.sandboxed:
            self.intake_token = secrets.token_urlsafe(24)
            self.env["CONTACTSYNC_INTAKE__TOKENS"] = json.dumps({"local": self.intake_token})
            self.env["CONTACTSYNC_INTAKE__OPERATORS"] = json.dumps(["local"])
        port = intake.port if intake.port and _port_free(intake.port) else 0
        port_file = self.data_dir / "intake.port"
        port_file.unlink(missing_ok=True)
        self._spawn(
            "intake",
            [
                sys.executable,
                "-m",
                "worker.cli",
                "intake",
                "--port",
                str(port),
                "--port-file",
                str(port_file),
            ],
        )
        wait_until(functools.partial(self._started, port_file), 30, "the intake")
        self.intake_url = f"http://{intake.host}:{port_file.read_text().strip()}"

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

    def kill_child(self, name: str) -> None:
        """SIGKILL one child's process group by name (a worker is ``worker-NAME``) and forget
        it: a crash, as chaos tests and benchmarks make them."""
        for entry in [c for c in self._children if c[0] == name]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(entry[1].pid, signal.SIGKILL)
            entry[1].wait()
            self._children.remove(entry)

    def stop_child(self, name: str, timeout_s: float = 15.0) -> None:
        """Stop one child by name (a worker is ``worker-NAME``): SIGTERM, then SIGKILL."""
        for entry in [c for c in self._children if c[0] == name]:
            _signal(entry[1], signal.SIGTERM)
            _reap(entry[1], entry[2], timeout_s)
            self._children.remove(entry)

    def _stop(self, timeout_s: float) -> None:
        for _name, proc, _log in reversed(self._children):
            _signal(proc, signal.SIGTERM)
        for _name, proc, log in reversed(self._children):
            _reap(proc, log, timeout_s)
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


@dataclass
class Restart:
    """When a dead process may start again: after 1 s, then twice as long each time it dies
    within a minute of starting, up to 30 s; once it has lived a minute, after 1 s again."""

    failures: int = 0
    not_before: float = 0.0
    noticed: bool = False

    def due(self, now: float, events: list[str], what: str, started_at: float | None) -> bool:
        """Whether to start it now; notes the death once (in ``events``) when first seen."""
        if not self.noticed:
            lived = now - started_at if started_at is not None else 0.0
            self.failures = 1 if lived >= 60 else self.failures + 1
            delay = min(30.0, 2.0 ** (self.failures - 1))
            self.not_before = now + delay
            self.noticed = True
            events.append(f"{what} died; starting it again in {delay:g} s")
        if now < self.not_before:
            return False
        self.noticed = False
        return True


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal a child's whole process group (it runs in its own session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)


def _reap(proc: subprocess.Popen[bytes], log: IO[bytes], timeout_s: float) -> None:
    """Wait for a signalled child; SIGKILL it if it takes longer than ``timeout_s``."""
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


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
