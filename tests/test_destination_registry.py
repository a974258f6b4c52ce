"""The registry is complete and checked: a sixth destination, written at test time into a package
of its own (``tmp_path``, put on PYTHONPATH and named in CONTACTSYNC_DESTINATION_MODULES), is
delivered to end to end by a real Celery worker, editing no file of contactsync. Its calls count in
the visibility-timeout check, and a helper module beside it that declares no ``Destination`` gets
no queue. The steps are README's "Adding a destination", one for one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_ENV, celery_worker, wait_for
from worker.destinations import destination_of, registry

ROOT = Path(__file__).resolve().parents[1]

#: Step 1: one module that declares its Destination, with its job model, answer table, client
#: and task. Nothing else names it.
DESTINATION_MODULE = textwrap.dedent('''
    """A sixth destination: notes on records, over HTTP."""

    from __future__ import annotations

    from collections.abc import Callable
    from typing import Any, ClassVar

    import httpx
    from celery import shared_task
    from pydantic import AnyHttpUrl, Field

    from tasks.delivery import (
        Answer, DeliveryTask, destination_gate, http_timeout, idempotent_transport_outcome,
        require,
    )
    from tasks.models import JobModel
    from tasks.outcomes import Rule
    from worker.destinations import Destination
    from worker.settings import DestinationSettings, get_settings


    class NotesSettings(DestinationSettings):
        base_url: AnyHttpUrl | None = None

        def missing(self) -> list[str]:
            return self._unset(base_url=self.base_url)


    class Note(JobModel):
        """Add a note to one record."""

        kind: ClassVar[str] = "notes.add"
        destination: ClassVar[str] = "notes"
        public_fields: ClassVar[frozenset[str]] = frozenset({"record_id"})
        entity_fields: ClassVar[tuple[str, ...]] = ("record_id",)

        record_id: str = Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9-]+$")
        text: str = Field(min_length=1, max_length=200)


    DESTINATION = Destination(
        name="notes",
        settings=NotesSettings,
        job_kinds=("notes.add",),
        calls_per_job=2,  # say a login and the call
    )

    #: The answer table: the destination's answers, as data.
    ANSWERS = {
        201: Rule("delivered", "note added"),
        404: Rule("rejected", "no such record"),
        503: Rule("down", "the notes service is down"),
    }
    UNKNOWN = Rule("review", "an answer the notes service does not document")


    class NotesClient:
        def __init__(self, settings: NotesSettings) -> None:
            require("notes", settings)
            base_url = str(settings.base_url).rstrip("/")
            self.gate = destination_gate("notes", base_url, settings)
            self._http = httpx.Client(base_url=base_url, timeout=http_timeout(settings))

        def prepare(self, job: JobModel) -> Callable[[], Answer]:
            assert isinstance(job, Note)
            return lambda: self._post(job.record_id, job.text)

        def send(self, job: JobModel) -> Answer:
            return self.prepare(job)()

        def secrets(self) -> list[str]:
            return []

        def _post(self, record_id: str, text: str) -> Answer:
            try:
                response = self._http.post(f"/records/{record_id}/notes", json={"text": text})
            except httpx.TransportError as exc:
                return Answer(idempotent_transport_outcome(exc, "Notes"), type(exc).__name__)
            rule = ANSWERS.get(response.status_code, UNKNOWN)
            return Answer(rule.outcome(str(response.status_code)),
                          f"HTTP {response.status_code}", measured=True)


    def _client() -> NotesClient:
        return NotesClient(get_settings().destination_settings("notes"))


    class NotesDelivery(DeliveryTask):
        abstract = True
        connector_factory: ClassVar[Callable[[], NotesClient]] = staticmethod(_client)


    @shared_task(base=NotesDelivery, bind=True, name="notes.deliver", queue="notes")
    def deliver(self: NotesDelivery, job_id: str) -> dict[str, Any]:
        return self.deliver(job_id)
''')

#: A helper beside it: importable, examined, and no destination.
HELPER_MODULE = textwrap.dedent('''
    """Shared by the package's modules; declares no Destination."""

    def record_path(record_id: str) -> str:
        return f"/records/{record_id}/notes"
''')


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """The throwaway package ``notesdest`` (its destination module and a helper) under
    ``tmp_path/src``."""
    root = tmp_path / "src" / "notesdest"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "notes.py").write_text(DESTINATION_MODULE)
    (root / "helpers.py").write_text(HELPER_MODULE)
    return root.parent


class NotesService:
    """Step 3: the destination's simulator, a tiny HTTP server in a thread. It keeps every note
    it was sent, by record."""

    def __init__(self) -> None:
        self.notes: dict[str, list[str]] = {}
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                found = re.fullmatch(r"/records/([A-Za-z0-9-]+)/notes", self.path)
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status = 404 if found is None or found[1].startswith("missing") else 201
                if status == 201:
                    service.notes.setdefault(found[1], []).append(body["text"])
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def notes_service() -> Iterator[NotesService]:
    service = NotesService()
    service.thread.start()
    try:
        yield service
    finally:
        service.server.shutdown()
        service.server.server_close()
        service.thread.join(timeout=5)


def _env(package_root: Path, redis_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Step 2 and 4: the package on PYTHONPATH, named in CONTACTSYNC_DESTINATION_MODULES, and
    its settings (CONTACTSYNC_NOTES__*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTACTSYNC_", "FLOWER_"))}
    env.update(
        {
            **TEST_ENV,
            "PYTHONPATH": os.pathsep.join([str(package_root), str(ROOT)]),
            "CONTACTSYNC_DESTINATION_MODULES": "notesdest",
            "CONTACTSYNC_REDIS_URL": redis_url,
            "CONTACTSYNC_DATA_DIR": str(data_dir),
            "CONTACTSYNC_NOTES__CONNECT_TIMEOUT_S": "0.5",
            "CONTACTSYNC_NOTES__READ_TIMEOUT_S": "1.5",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "250",
            **extra,
        }
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_sixth_destination_in_its_own_package_is_delivered_by_a_real_worker(
    package: Path, notes_service: NotesService, redis_server: str, tmp_path: Path
) -> None:
    import redis

    from worker.ledger import Ledger

    url = redis_server.rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    env = _env(package, url, tmp_path, CONTACTSYNC_NOTES__BASE_URL=notes_service.url)

    # Its settings are read and shown like the built-in ones'.
    shown = _cli(env, "config")
    assert shown.returncode == 0, shown.stderr + shown.stdout
    assert f'"base_url": "{notes_service.url}/"' in shown.stdout

    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        celery_worker("-n", "notes@%h"),
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: "ready." in log.read_text() or worker.poll() is not None, 60, "the worker")
        assert worker.poll() is None, log.read_text()
        # One queue per destination that declares one: the four built-in ones and notes; the
        # helper module beside it is none.
        queues = set(re.findall(r"\.> (\S+)\s+exchange=", log.read_text()))
        assert queues == {d.name for d in registry()} | {"notes"}, queues
        assert "helpers" not in queues and "notes.deliver" in log.read_text()

        # `contactsync submit` has a command for the new kind, from the registry.
        submitted = _cli(
            env,
            "submit",
            "notes-add",
            "--job",
            '{"record_id": "R-17", "text": "called back, all good"}',
        )
        assert submitted.returncode == 0, submitted.stderr + submitted.stdout
        job_id = submitted.stdout.strip()
        refused = _cli(
            env, "submit", "notes-add", "--job", '{"record_id": "missing-1", "text": "nobody home"}'
        )
        assert refused.returncode == 0, refused.stderr + refused.stdout

        book = Ledger(client, prefix="cs:")

        def ended(job: str) -> Any:
            record = book.get(job)
            return (
                record if record is not None and record.state in ("delivered", "rejected") else None
            )

        delivered = wait_for(lambda: ended(job_id), 60, "the notes job to be delivered")
        rejected = wait_for(lambda: ended(refused.stdout.strip()), 60, "the refused job")
    finally:
        worker.terminate()
        worker.wait(30)
        client.close()

    assert delivered.state == "delivered" and delivered.destination == "notes"
    assert notes_service.notes == {"R-17": ["called back, all good"]}
    # The answer table decided the other one: 404 is "rejected: no such record".
    assert rejected.state == "rejected" and "no such record" in rejected.last_reason


def test_the_visibility_check_counts_the_new_destinations_calls(
    package: Path, redis_server: str, tmp_path: Path
) -> None:
    # Two calls of 0.5 s + 10 s: 21 s, plus the fast window and a gate wait of 0.5 s each: a
    # task may run 22 s, so 14 s (TEST_ENV's) is too short, because of this destination alone.
    env = _env(package, redis_server, tmp_path, CONTACTSYNC_NOTES__READ_TIMEOUT_S="10")
    refused = _cli(env, "config")

    assert refused.returncode == 2
    said = refused.stdout + refused.stderr
    assert "CONTACTSYNC_VISIBILITY_TIMEOUT_S=14 is too short" in said
    assert "notes: 2 calls of 0.5 s connect + 10 s read" in said
    assert "at least 44" in said

    # The same settings without the new destination registered are accepted: its calls, and
    # nothing else, made the difference.
    without = {k: v for k, v in env.items() if k != "CONTACTSYNC_DESTINATION_MODULES"}
    assert _cli(without, "config").returncode == 0


def test_a_module_without_a_destination_declaration_is_not_one(package: Path) -> None:
    import tasks.auth

    # tasks/ holds helpers too (the shared auth flow, the delivery base, the models): every module
    # there is examined, and only those that declare a Destination are destinations.
    assert destination_of(tasks.auth) is None
    assert {d.module: d.name for d in registry()} == {
        "tasks.expandable": "expandable",
        "tasks.missioncapital": "missioncapital",
        "tasks.noojee": "noojee",
        "tasks.trendsic": "trendsic",
    }
    # So is the helper beside the new destination (imported alone: the destination module
    # itself is only ever imported by the subprocesses above, which name its package).
    sys.path.insert(0, str(package))
    try:
        import notesdest.helpers

        assert destination_of(notesdest.helpers) is None
    finally:
        sys.path.remove(str(package))
        for name in [n for n in sys.modules if n == "notesdest" or n.startswith("notesdest.")]:
            del sys.modules[name]


def test_every_declared_kind_is_a_registered_job_model() -> None:
    from tasks.models import kinds

    declared = {kind for d in registry() for kind in d.job_kinds}
    assert declared == set(kinds())
