"""Shared fixtures. Integration tests run the real thing as `contactsync up` does: an embedded
Valkey on a free port (never the machine's own Redis), the Noojee simulator over HTTP, a Celery
worker process and Flower, with timeouts scaled down from minutes to seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from worker.destinations import registry
from worker.settings import DestinationSettings

# Seconds instead of minutes, but every ratio the settings validate still holds.
TEST_ENV = {
    "CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S": "2",
    "CONTACTSYNC_NOOJEE__READ_TIMEOUT_S": "4",
    "CONTACTSYNC_NOOJEE__CONNECT_TIMEOUT_S": "2",
    "CONTACTSYNC_RETRY__BASE_DELAY_S": "0.2",
    "CONTACTSYNC_RETRY__MAX_DELAY_S": "1",
    "CONTACTSYNC_RETRY__FAST_WINDOW_S": "0.5",
    "CONTACTSYNC_RETRY__FAULT_ATTEMPTS": "3",
    "CONTACTSYNC_GATE__MAX_WAIT_S": "0.5",
    "CONTACTSYNC_VISIBILITY_TIMEOUT_S": "14",
    "CONTACTSYNC_JOB_LEASE_TTL_S": "3",
    "CONTACTSYNC_GATE__LEASE_TTL_S": "3",
    # Every destination with the shared settings (all but Noojee, whose PBX queue sets its own).
    **{
        f"CONTACTSYNC_{d.name.upper()}__{knob}": value
        for d in registry()
        if issubclass(d.settings, DestinationSettings)
        for knob, value in (("CONNECT_TIMEOUT_S", "0.5"), ("READ_TIMEOUT_S", "1.5"))
    },
    "CONTACTSYNC_PAUSE__PROBE_INTERVAL_S": "1",
    "CONTACTSYNC_PAUSE__CONFIG_PROBE_INTERVAL_S": "3",
    "CONTACTSYNC_PAUSE__LIMIT_PROBE_INTERVAL_S": "3",
    "CONTACTSYNC_WORKER_CONCURRENCY": "4",
    "CONTACTSYNC_FLOWER__PORT": "0",
    "CONTACTSYNC_INTAKE__PORT": "0",
    "CONTACTSYNC_INTAKE__TOKENS": '{"crm": "crm-token-0123456789", "ops": "ops-token-0123456789"}',
    "CONTACTSYNC_INTAKE__OPERATORS": '["ops"]',
    "CONTACTSYNC_METRICS_PORT": "0",
}


def _clean_environment() -> None:
    for name in list(os.environ):
        if name.startswith(("CONTACTSYNC_", "FLOWER_")):
            del os.environ[name]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from worker.cli.stack import Stack

    _clean_environment()
    data_dir = tmp_path_factory.mktemp("contactsync")
    os.environ.update(TEST_ENV)
    os.environ["CONTACTSYNC_DATA_DIR"] = str(data_dir)
    os.environ["CONTACTSYNC_FLOWER__PASSWORD"] = "test-flower-password"
    stack = Stack(
        data_dir, simulator_args=["--latency", "0.03", "--jitter", "0.005", "--queue-timeout", "2"]
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        _clean_environment()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Valkey (the embedded binary) on a free port, for tests that need only Redis."""
    from worker.embedded import EmbeddedRedis

    with EmbeddedRedis.under(tmp_path_factory.mktemp("valkey")) as server:
        yield server.url


@pytest.fixture(scope="session")
def client(redis_server: str) -> Iterator[Any]:
    """A client (replies as str) of the private server of ``redis_server``. One for the session:
    the process's lease keeper renews permits through the client their gate was built with, so
    closing it under a test's feet would break renewals of gates still holding permits."""
    import redis

    client = redis.Redis.from_url(redis_server, decode_responses=True)
    yield client
    client.close()


class Simulator:
    """The running Noojee simulator's admin API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def script(self, lead: str, codes: list[int]) -> None:
        httpx.post(f"{self.url}/_script", json={"lead": lead, "codes": codes}).raise_for_status()

    def configure(self, **values: float) -> None:
        httpx.post(f"{self.url}/_config", json=values).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_stats").json())

    def calls(self, lead: str) -> int:
        return int(self.stats()["calls_by_lead"].get(lead, 0))

    def lead(self, lead: str) -> dict[str, Any] | None:
        answer = httpx.get(f"{self.url}/_leads/{lead}")
        return None if answer.status_code == 404 else dict(answer.json())

    def arrivals(self, record: str) -> list[dict[str, Any]]:
        """The calls logged on one record (GET /_arrivals/ID), in the order they were answered;
        [] if none. Works for any simulator whose record id is one path part (quoted here)."""
        answer = httpx.get(f"{self.url}/_arrivals/{quote(record, safe='')}")
        return [] if answer.status_code == 404 else list(answer.json()["arrivals"])


@pytest.fixture
def simulator(stack: Any) -> Simulator:
    return Simulator(stack.simulator_url)


#: Where a Noojee lead is placed, as `contactsync submit noojee-update` takes it.
NOOJEE_PLACE = ("--template-id", "41", "--campaign-id", "41", "--allocation-id", "38")


def celery_worker(*args: str) -> list[str]:
    """The command of a real Celery worker of this project, at INFO, without gossip or mingle
    (they only slow a test's start); ``args`` add queues (-Q), a name (-n), threads (-c)."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker",
        "worker",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        *args,
    ]


def end_lease(ledger: Any, job_id: str) -> None:
    """Make a claimed job's lease run out now: its score in the ``running`` set is its lease
    (the claim itself, the job hash's lock field, stays until a script clears or replaces it)."""
    ledger.r.zadd(ledger.set_key("running"), {job_id: 0})


def wait_for(check: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll until ``check()`` returns something truthy; fail naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def new_lead_id() -> str:
    return f"L-{uuid.uuid4().hex[:12]}"


def sample_update(lead_id: str, **overrides: Any) -> Any:
    from tasks.noojee import NoojeeLeadUpdate

    data: dict[str, Any] = {
        "template_id": 41,
        "campaign_id": 41,
        "allocation_id": 38,
        "external_lead_id": lead_id,
        "disposition": "Sale",
        "callback_date": "2026/11/24 09:30",
        "fields": {
            "FirstPhone": "0383218199",
            "Name": "Jane Smith",
            "Email": "jane.smith@example.com",
        },
    }
    data.update(overrides)
    return NoojeeLeadUpdate(**data)


PERSONAL_VALUES = ("0383218199", "Jane Smith", "jane.smith@example.com")


@pytest.fixture
def ledger(stack: Any) -> Any:
    from worker.runtime import ledger as runtime_ledger

    return runtime_ledger()


def wait_for_state(
    ledger: Any, job_id: str, states: tuple[str, ...], timeout_s: float = 30.0
) -> Any:
    def settled() -> Any:
        record = ledger.get(job_id, with_history=True)
        return record if record is not None and record.state in states else None

    return wait_for(settled, timeout_s, f"job {job_id} to reach {'/'.join(states)}")


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`contactsync ARGS` as a person runs it (by default in this process's environment, which
    the stack fixture points at its server)."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "250"} if env is None else env,
        timeout=60,
    )


@contextlib.contextmanager
def simulator_in_thread(serve: Callable[..., None], config: Any) -> Iterator[httpx.Client]:
    """``serve(config)`` of a simulator in a thread on a free port, and a client for it; the
    server is stopped and joined on exit."""
    import queue
    import threading

    ports: queue.Queue[int] = queue.Queue()
    stop = threading.Event()
    thread = threading.Thread(
        target=serve, args=(config,), kwargs={"port": 0, "ready": ports.put, "stop": stop}
    )
    thread.start()
    try:
        port = ports.get(timeout=3)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3) as client:
            yield client
    finally:
        stop.set()
        thread.join(timeout=3)
        assert not thread.is_alive(), "serve() did not return after stop was set"


def wait_briefly(condition: Callable[[], bool], deadline_s: float = 3.0) -> None:
    """Poll ``condition`` every 5 ms (simulator state changes in milliseconds)."""
    give_up = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < give_up, "condition not met before the deadline"
        time.sleep(0.005)


@contextlib.contextmanager
def simulator_cli(
    name: str, *args: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``python -m sandbox.NAME --port 0 --port-file F ARGS`` as a person runs it. Yields the
    process, its base URL and the line it printed; on leaving, SIGTERM must stop it cleanly."""
    port_file = tmp_path / f"{name}.port"
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            f"sandbox.{name}",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            *args,
        ],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(port_file.exists, 5, f"the {name} simulator's port file")
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        yield process, f"http://127.0.0.1:{int(port_file.read_text())}", line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.wait()


def log_text(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(directory.glob("*.log")))
