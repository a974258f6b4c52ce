"""The intake under abuse, over loopback only, bounded in time and count: slow unauthenticated
8 MiB uploads, aborted authenticated ones, slow-loris connections, a hung Redis (SIGSTOP), odd
query values and the bounds of a job, all against an intake process of its own and a private
embedded server (stopping it must not touch the session's stack). The intake's RSS is read
from /proc."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

CRM_TOKEN, OPS_TOKEN = "crm-token-0123456789", "ops-token-0123456789"
CRM = {"Authorization": f"Bearer {CRM_TOKEN}"}
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
HEADER_TIMEOUT_S = 2.0
MIB = 1024 * 1024
RSS_CEILING_MB = 150
PHONE, NAME = "0412345678", "Jane Smith"


@dataclass
class Intake:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    redis: Any
    log: Path

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert found is not None
        return int(found.group(1)) / 1024


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    from worker.embedded import EmbeddedRedis

    root = tmp_path_factory.mktemp("hostile")
    with EmbeddedRedis.under(root / "data") as redis_server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
        env.update(
            {
                "CONTACTSYNC_REDIS_URL": redis_server.url,
                "CONTACTSYNC_DATA_DIR": str(root),
                "CONTACTSYNC_INTAKE__TOKENS": json.dumps({"crm": CRM_TOKEN, "ops": OPS_TOKEN}),
                "CONTACTSYNC_INTAKE__OPERATORS": '["ops"]',
                "CONTACTSYNC_INTAKE__HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                "CONTACTSYNC_INTAKE__BODY_TIMEOUT_S": "10",
            }
        )
        port_file, log = root / "intake.port", root / "intake.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker.cli",
                    "intake",
                    "--port",
                    "0",
                    "--port-file",
                    str(port_file),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while not (port_file.exists() and port_file.read_text().strip()):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            port = int(port_file.read_text())
            yield Intake(f"http://127.0.0.1:{port}", port, process, redis_server, log)
        finally:
            process.terminate()
            process.wait(10)


def job(lead: str = "H-1", **overrides: Any) -> dict[str, Any]:
    data = {
        "template_id": 41,
        "campaign_id": 41,
        "allocation_id": 38,
        "external_lead_id": lead,
        "disposition": "Sale",
        "fields": {"MobilePhone": PHONE, "Name": NAME},
    }
    data.update(overrides)
    return {"kind": "noojee.update", "job": data}


def warm(intake: Intake) -> float:
    """Some ordinary traffic, then the RSS it settles at: the baseline."""
    with httpx.Client(base_url=intake.url, headers=CRM, timeout=10) as client:
        for n in range(20):
            assert client.post("/v1/jobs", json=job(f"W-{n}")).status_code == 202
        assert client.get("/openapi.json").status_code == 200
    return intake.rss_mb()


class PeakRss:
    """The intake's RSS sampled every 10 ms while the block runs."""

    def __init__(self, intake: Intake) -> None:
        self.intake, self.peak_mb, self._stop = intake, 0.0, threading.Event()

    def __enter__(self) -> PeakRss:
        def sample() -> None:
            while not self._stop.wait(0.01):
                self.peak_mb = max(self.peak_mb, self.intake.rss_mb())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def settles_near(intake: Intake, baseline_mb: float, within: float = 0.20) -> float:
    """The RSS once it is back within ``within`` of the baseline (waited for, 15 s at most)."""
    deadline = time.monotonic() + 15
    while (rss := intake.rss_mb()) > baseline_mb * (1 + within):
        assert time.monotonic() < deadline, f"RSS {rss:.0f} MB, baseline {baseline_mb:.0f} MB"
        time.sleep(0.1)
    return rss


def send_until_answered(
    sock: socket.socket, piece: bytes, total_bytes: int, pace_s: float = 0.0
) -> int:
    """Send ``piece`` after ``piece`` (``pace_s`` apart: a slow client) until ``total_bytes``
    are sent, the intake answers (the socket turns readable) or hangs up; returns the bytes
    sent."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    sent = 0
    while sent < total_bytes and not selector.select(0):
        try:
            sock.sendall(piece)
        except OSError:
            break
        sent += len(piece)
        if pace_s:
            time.sleep(pace_s)  # the client's own pace: what is measured
    return sent


def read_answer(sock: socket.socket) -> bytes:
    """Whatever the intake sends until it closes (a reset ends it too)."""
    answer = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except OSError:
        pass
    return answer


def upload(
    intake: Intake,
    path: str,
    headers: dict[str, str],
    send_bytes: int,
    pace_s: float = 0.0,
    abort: bool = False,
) -> bytes:
    """Declare an 8 MiB JSON body to ``path``, send ``send_bytes`` of it in 64 KiB pieces,
    stop as soon as the intake answers; then read the answer, or (``abort``) just hang up."""
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {8 * MIB}",
        "Content-Type: application/json",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        send_until_answered(sock, b"[" + b" " * (64 * 1024 - 1), send_bytes, pace_s)
        return b"" if abort else read_answer(sock)


def in_threads(count: int, work: Callable[[int], bytes]) -> list[bytes]:
    answers: list[bytes] = [b""] * count

    def run(n: int) -> None:
        answers[n] = work(n)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


# -- memory ----------------------------------------------------------------------------------
def test_40_slow_unauthenticated_8_mib_uploads_are_refused_before_their_body(
    intake: Intake,
) -> None:
    baseline = warm(intake)
    paths = [
        "/v1/review/" + "a" * 32 + "/discard",
        "/v1/review/" + "b" * 32 + "/requeue",
        "/no/such/route",
        "/v1/jobs",
    ]
    with PeakRss(intake) as peak:
        answers = in_threads(40, lambda n: upload(intake, paths[n % 4], {}, 8 * MIB, 0.01))

    assert all(a.startswith(b"HTTP/1.1 401") for a in answers), {a[:40] for a in answers}
    assert peak.peak_mb < RSS_CEILING_MB, (peak.peak_mb, baseline)
    after = settles_near(intake, baseline)
    print(f"RSS baseline {baseline:.0f} MB, peak {peak.peak_mb:.0f} MB, after {after:.0f} MB")


def test_pages_and_console_forms_never_buffer_a_large_body(intake: Intake) -> None:
    """The console's pages, /docs, the redirects and the static files do not stream their
    bodies: the server takes at most 64 KiB for them. The console's forms stream theirs against
    their own 64 KiB cap."""
    baseline = warm(intake)
    paths = [
        "/console/",
        "/console/review",
        "/docs",
        "/",
        "/redoc",
        "/console/static/x.css",
        "/console/login",
        "/console/bulk",
    ]
    with PeakRss(intake) as peak:
        answers = in_threads(40, lambda n: upload(intake, paths[n % len(paths)], {}, 8 * MIB, 0.01))

    by_path = {paths[n % len(paths)]: a[:12] for n, a in enumerate(answers)}
    assert all(a.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413")) for a in answers), by_path
    assert by_path["/console/login"] == by_path["/console/bulk"] == b"HTTP/1.1 413"
    assert peak.peak_mb < RSS_CEILING_MB, (peak.peak_mb, baseline)
    after = settles_near(intake, baseline)
    print(f"RSS baseline {baseline:.0f} MB, peak {peak.peak_mb:.0f} MB, after {after:.0f} MB")


def test_240_aborted_authenticated_uploads_leave_nothing_behind(intake: Intake) -> None:
    baseline = warm(intake)
    with PeakRss(intake) as peak:
        for _ in range(6):  # rounds of 40 at once, each hanging up after 6 MiB of 8
            in_threads(40, lambda n: upload(intake, "/v1/jobs", CRM, 6 * MIB, abort=True))

    assert peak.peak_mb < RSS_CEILING_MB, (peak.peak_mb, baseline)
    after = settles_near(intake, baseline)
    print(f"RSS baseline {baseline:.0f} MB, peak {peak.peak_mb:.0f} MB, after {after:.0f} MB")
    assert httpx.get(f"{intake.url}/healthz").status_code == 200


def test_300_slowloris_connections_are_closed_within_the_header_timeout(
    intake: Intake,
) -> None:
    socks = []
    started = time.monotonic()
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", intake.port), timeout=5)
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n")
        sock.setblocking(False)
        socks.append(sock)
    closed_at: dict[int, float] = {}
    selector = selectors.DefaultSelector()
    for n, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, n)
    deadline = started + HEADER_TIMEOUT_S + 3
    while len(closed_at) < len(socks) and time.monotonic() < deadline:
        for key, _ in selector.select(0.25):
            try:
                data = key.fileobj.recv(1024)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:
                closed_at[key.data] = time.monotonic() - started
                selector.unregister(key.fileobj)
        for n, sock in enumerate(socks):  # trickle a header byte: it must not buy time
            if n not in closed_at:
                try:
                    sock.send(b"X")
                except OSError:
                    pass
    for sock in socks:
        sock.close()

    assert len(closed_at) == 300, f"{300 - len(closed_at)} still open"
    print(f"slowloris: all 300 closed, the last after {max(closed_at.values()):.2f} s")
    assert max(closed_at.values()) <= HEADER_TIMEOUT_S + 1.5, max(closed_at.values())
    assert httpx.get(f"{intake.url}/healthz").status_code == 200  # and it still serves


# -- a hung Redis ----------------------------------------------------------------------------
def test_with_redis_stopped_submits_answer_503_within_2_s_and_healthz_within_1_s(
    intake: Intake,
) -> None:
    pid = intake.redis._process.pid
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    with httpx.Client(base_url=intake.url, headers=CRM, timeout=10, limits=limits) as client:
        assert client.get("/healthz").status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            timings: list[tuple[int, float]] = []
            bodies = [json.dumps(job(f"S-{n}")).encode() for n in range(12)]

            def submit(n: int) -> bytes:
                started = time.monotonic()
                answer = client.post("/v1/jobs", content=bodies[n])
                timings.append((answer.status_code, time.monotonic() - started))
                return b""

            in_threads(12, submit)  # more than the intake's Redis threads: they all hang
            started = time.monotonic()
            health = client.get("/healthz")
            health_s = time.monotonic() - started
            started = time.monotonic()
            openapi = client.get("/openapi.json")
            openapi_s = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        print(
            f"Redis stopped: submits 503 after at most {max(t for _, t in timings):.2f} s, "
            f"/healthz after {health_s:.2f} s"
        )
        assert {status for status, _ in timings} == {503}, timings
        assert max(seconds for _, seconds in timings) < 2.0, timings
        assert (health.status_code, health.json()["redis"]) == (503, "unreachable")
        assert health_s < 1.0, health_s
        assert openapi.status_code == 200 and openapi_s < 1.0

        deadline = time.monotonic() + 40  # the hung threads finish once Redis answers
        while client.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.post("/v1/jobs", json=job("S-after")).status_code == 202


def test_with_redis_stopped_the_console_answers_503_and_the_intake_keeps_serving(
    intake: Intake,
) -> None:
    """The console shares the intake's event loop: its Redis calls run on the intake's Redis
    threads with a deadline, never on the loop."""
    pid = intake.redis._process.pid
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    with httpx.Client(base_url=intake.url, timeout=10, limits=limits) as console:
        login = console.post("/console/login", data={"token": OPS_TOKEN, "next": "/console/"})
        assert login.status_code == 303 and console.get("/console/").status_code == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            timings: list[tuple[int, float]] = []
            pages = ["/console/", "/console/review", "/console/search?q=" + "a" * 32]

            def browse(n: int) -> bytes:
                started = time.monotonic()
                answer = console.get(pages[n % len(pages)])
                timings.append((answer.status_code, time.monotonic() - started))
                return b""

            in_threads(12, browse)  # more than the intake's Redis threads: they all hang
            started = time.monotonic()
            health = httpx.get(f"{intake.url}/healthz", timeout=10)
            health_s = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        print(
            f"Redis stopped: console pages 503 after at most "
            f"{max(t for _, t in timings):.2f} s, /healthz after {health_s:.2f} s"
        )
        assert {status for status, _ in timings} == {503}, timings
        assert max(seconds for _, seconds in timings) < 2.0, timings
        assert health.status_code == 503 and health_s < 1.0, health_s

        deadline = time.monotonic() + 40  # the hung threads finish once Redis answers
        while console.get("/console/").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


# -- odd input -------------------------------------------------------------------------------
ODD_QUERY_VALUES = [
    "²",
    "①",
    "٣",
    "1" * 5000,
    "-1",
    "1e3",
    " 1",
    "0x10",
    "1.0",
    "",
    "+1",
    "\uff11",
    "\u00a0",
    "%00",
    "9" * 11,
    "null",
    "[]",
    "1,2",
    "١٢",
    "true",
    "0b1",
    "1_000",
    "10000000000",
]


def test_odd_query_values_are_422_never_500_and_never_logged(intake: Intake) -> None:
    with httpx.Client(base_url=intake.url, headers=OPS, timeout=10) as client:
        answers = {
            value: client.get("/v1/review", params={"offset": value}) for value in ODD_QUERY_VALUES
        }
        raw = client.get("/v1/review?limit=%FF%FE")  # not UTF-8
    assert {v: a.status_code for v, a in answers.items() if a.status_code != 422} == {}
    assert raw.status_code in (400, 422) and "\\xff" not in raw.text
    log = intake.log.read_text(errors="replace")
    assert "Traceback" not in log and "1" * 50 not in log and "²" not in log


def test_the_bounds_of_a_job_hold_over_http(intake: Intake) -> None:
    with httpx.Client(base_url=intake.url, headers=CRM, timeout=30) as client:
        huge_id = client.post(
            "/v1/jobs",
            content=json.dumps(job(template_id=int("9" * 4300))).encode(),
            headers={"Content-Type": "application/json"},
        )
        true_id = client.post("/v1/jobs", json=job(campaign_id=True))
        nul = client.post("/v1/jobs", json=job("H\x00-1"))
        fields = {f"F{n}Phone": PHONE for n in range(200_000)}
        many = client.post("/v1/jobs", json=job(fields=fields))
        plain = client.post(
            "/v1/jobs", content=json.dumps(job()), headers={"Content-Type": "text/plain"}
        )
        form = client.post("/v1/jobs", data={"kind": "noojee.update"})

    for answer, path in (
        (huge_id, "$.job.template_id"),
        (true_id, "$.job.campaign_id"),
        (nul, "$.job.external_lead_id"),
        (many, "$.job.fields"),
    ):
        assert answer.status_code == 422, answer.text
        assert [e["path"] for e in answer.json()["errors"]] == [path]
        assert PHONE not in answer.text and NAME not in answer.text
    assert (plain.status_code, form.status_code) == (415, 415)
    assert "application/json" in plain.json()["error"]


def test_a_chunked_body_past_the_limit_is_413_not_an_empty_400(intake: Intake) -> None:
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CRM_TOKEN}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"%x\r\n" % (64 * MIB))  # one chunk of 64 MiB declared
        sent = send_until_answered(sock, b" " * (256 * 1024), 64 * MIB)
        answer = read_answer(sock)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"MAX_BODY_BYTES" in body
    # Refused as it passed the limit, not once 64 MiB were read (the loopback's socket buffers
    # hold a few MiB that were sent before the answer could be seen).
    assert sent < 24 * MIB
