"""The Noojee simulator over real HTTP: answers, scripts, the slot queue and its admin endpoints.
Each test starts its own server on a free port in a background thread and stops it at the end."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import Response

from sandbox.noojee import NoojeeSimConfig, serve

pytestmark = pytest.mark.timeout(5)

UPDATE = "/servicemanager/rest/CampaignAPI/updateLeadFast"
INSERT = "/servicemanager/rest/CampaignAPI/insertLeadFast"
IDS = {"fTemplateId": "41", "fCampaignId": "41", "fAllocationId": "38"}
KEY = "sandbox-key"
JANE = {"FirstPhone": "0383218199", "Name": "Jane Smith", "njDisposition": "Sale"}
FAST = {"latency_s": 0.01, "jitter_s": 0.0}


@contextmanager
def simulator(**settings: Any) -> Iterator[httpx.Client]:
    """A running simulator and a client for it; the server is stopped and joined on exit."""
    ports: queue.Queue[int] = queue.Queue()
    stop = threading.Event()
    config = NoojeeSimConfig(**{**FAST, **settings})
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


def update(client: httpx.Client, lead: str, fields: dict[str, Any], **params: str) -> Response:
    query = {**IDS, "njExternalLeadId": lead, "apiKey": KEY, **params}
    return client.post(UPDATE, params=query, json=fields)


def wait_for(condition: Callable[[], bool], deadline_s: float = 3.0) -> None:
    give_up = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < give_up, "condition not met before the deadline"
        time.sleep(0.005)


async def concurrent_updates(base_url: str, leads: list[str]) -> list[Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=4) as client:
        calls = [
            client.post(UPDATE, params={**IDS, "njExternalLeadId": lead, "apiKey": KEY}, json=JANE)
            for lead in leads
        ]
        return await asyncio.gather(*calls)


def fire_in_background(base_url: str, leads: list[str]) -> tuple[threading.Thread, list[Response]]:
    """Send concurrent updates from another thread, so the test can watch the queue meanwhile."""
    answers: list[Response] = []
    thread = threading.Thread(
        target=lambda: answers.extend(asyncio.run(concurrent_updates(base_url, leads)))
    )
    thread.start()
    return thread, answers


def test_update_answers_0_and_stores_the_lead_merging_no_change_fields() -> None:
    with simulator() as client:
        first = update(client, "9856", {**JANE, "SecondPhone": "0400000000"})
        assert (first.status_code, first.json()) == (200, {"code": 0, "message": "OK"})
        update(client, "9856", {"FirstPhone": "0399999999", "SecondPhone": "<No Change>"})

        stored = client.get("/_leads/9856").json()
        assert stored["FirstPhone"] == "0399999999"
        assert stored["SecondPhone"] == "0400000000"
        assert stored["Name"] == "Jane Smith"
        assert client.get("/_stats").json()["calls_by_lead"] == {"9856": 2}


def test_unknown_lead_is_404_json() -> None:
    with simulator() as client:
        answer = client.get("/_leads/nobody")
        assert (answer.status_code, answer.json()) == (404, {"error": "unknown lead"})


def test_wrong_api_key_is_401_plain_text_and_takes_no_slot() -> None:
    with simulator() as client:
        answer = update(client, "9856", JANE, apiKey="wrong")
        assert (answer.status_code, answer.text) == (401, "Invalid apiKey")
        stats = client.get("/_stats").json()
        assert (stats["http_401"], stats["calls"], stats["peak_in_flight"]) == (1, 0, 0)


def test_missing_template_id_is_116_before_the_pbx() -> None:
    with simulator() as client:
        answer = client.post(
            UPDATE,
            params={"fCampaignId": "41", "fAllocationId": "38", "njExternalLeadId": "1"}
            | {"apiKey": KEY},
            json=JANE,
        )
        assert (answer.status_code, answer.json()["code"]) == (400, 116)
        assert answer.json()["message"] == "TEMPLATE_ID_REQUIRED"
        assert client.get("/_stats").json()["calls"] == 0


def test_update_without_external_id_is_113_and_non_integer_allocation_is_115() -> None:
    with simulator() as client:
        assert update(client, "", JANE).json()["code"] == 113
        assert update(client, "1", JANE, fAllocationId="abc").json()["code"] == 115


def test_scripted_110_then_0_answers_110_once_then_0_for_ever() -> None:
    with simulator(scripts={"L1": [110, 0]}) as client:
        codes = [update(client, "L1", JANE).json()["code"] for _ in range(3)]
        assert codes == [110, 0, 0]
        assert client.get("/_stats").json()["answers"] == {"0": 2, "110": 1}


def test_script_endpoint_replaces_a_script_and_the_last_code_is_sticky() -> None:
    with simulator() as client:
        assert client.post("/_script", json={"lead": "L2", "codes": [104]}).status_code == 200
        assert [update(client, "L2", JANE).json()["code"] for _ in range(2)] == [104, 104]
        client.post("/_script", json={"scripts": {"L2": [103, 0]}})
        failed = update(client, "L2", JANE)
        assert (failed.status_code, failed.json()["message"]) == (500, "EXCEPTION")
        assert client.get("/_leads/L2").status_code == 404
        assert update(client, "L2", JANE).json()["code"] == 0
        assert client.get("/_leads/L2").json()["Name"] == "Jane Smith"


def test_insert_with_no_change_value_is_108() -> None:
    with simulator() as client:
        leads = [{"njExternalLeadId": "N1", "FirstPhone": "0383218199", "Name": "<No Change>"}]
        answer = client.post(INSERT, params={**IDS, "apiKey": KEY}, json=leads)
        assert (answer.status_code, answer.json()["code"]) == (400, 108)
        assert answer.json()["message"] == "IMPORT_BUT_NOCHANGE_SPECIFIED"


def test_insert_stores_each_lead_and_requires_a_phone_field() -> None:
    with simulator() as client:
        leads = [{"njExternalLeadId": "I1", **JANE}, {"njExternalLeadId": "I2", **JANE}]
        assert client.post(INSERT, params={**IDS, "apiKey": KEY}, json=leads).json()["code"] == 0
        assert client.get("/_leads/I2").json()["FirstPhone"] == JANE["FirstPhone"]
        assert update(client, "I3", {"Name": "No Phone"}).json()["code"] == 102


def test_bad_callback_date_is_114_and_the_documented_format_is_0() -> None:
    with simulator() as client:
        day_first = update(client, "D1", {**JANE, "njCallBackDate": "24/11/2026 09:30"})
        assert day_first.json() == {"code": 114, "message": "INVALID_CALLBACK_DATE_FORMAT"}
        no_such_day = update(client, "D1", {**JANE, "njCallBackDate": "2026/02/30 09:30"})
        assert no_such_day.json()["code"] == 114
        good = {**JANE, "njCallBackDate": "2026/11/24 09:30", "njPriority": 500}
        assert update(client, "D1", good).json()["code"] == 0


def test_one_slot_queue_times_out_with_109_and_never_runs_two_at_once() -> None:
    settings = {"slots": 1, "latency_s": 0.2, "jitter_s": 0.0, "queue_timeout_s": 0.3}
    with simulator(**settings) as client:
        answers = asyncio.run(concurrent_updates(str(client.base_url), ["A", "B", "C", "D"]))
        codes = sorted(answer.json()["code"] for answer in answers)
        assert 109 in codes
        assert all(a.status_code == 400 for a in answers if a.json()["code"] == 109)
        stats = client.get("/_stats").json()
        assert stats["peak_in_flight"] == 1
        assert stats["peak_queued"] >= 1
        assert (stats["in_flight"], stats["queued"], stats["calls"]) == (0, 0, 4)
        assert stats["answers"]["109"] == codes.count(109)


def test_raising_slots_through_config_admits_queued_callers_at_once() -> None:
    settings = {"slots": 1, "latency_s": 1.0, "jitter_s": 0.0, "queue_timeout_s": 4.0}
    with simulator(**settings) as client:
        thread, answers = fire_in_background(str(client.base_url), ["A", "B", "C"])
        wait_for(lambda: client.get("/_stats").json()["queued"] == 2)

        assert client.post("/_config", json={"slots": 3}).json()["slots"] == 3
        stats = client.get("/_stats").json()
        assert (stats["in_flight"], stats["queued"], stats["slots"]) == (3, 0, 3)

        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0, 0, 0]


def test_lowering_slots_lets_holders_finish_but_admits_no_one_new() -> None:
    settings = {"slots": 2, "latency_s": 0.3, "jitter_s": 0.0, "queue_timeout_s": 4.0}
    with simulator(**settings) as client:
        thread, answers = fire_in_background(str(client.base_url), ["A", "B", "C", "D"])
        wait_for(lambda: client.get("/_stats").json()["queued"] == 2)
        client.post("/_config", json={"slots": 1})

        # Both holders have answered: exactly one waiter took a slot, the other still waits.
        wait_for(lambda: client.get("/_stats").json()["calls"] >= 2)
        stats = client.get("/_stats").json()
        assert (stats["in_flight"], stats["queued"], stats["peak_in_flight"]) == (1, 1, 2)
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0, 0, 0, 0]


def test_config_rejects_unknown_settings_and_reset_clears_everything() -> None:
    with simulator(scripts={"L1": [104]}) as client:
        refused = client.post("/_config", json={"slot": 2})
        assert refused.status_code == 400 and "slot" in refused.json()["error"]
        update(client, "L1", JANE)
        update(client, "L2", JANE)
        client.post("/_reset")
        assert client.get("/_stats").json()["calls"] == 0
        assert client.get("/_leads/L2").status_code == 404
        assert update(client, "L1", JANE).json()["code"] == 0


def test_cli_prints_its_address_writes_the_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    root = Path(__file__).resolve().parents[1]
    argv = ["--port", "0", "--port-file", str(port_file), "--slots", "2", "--script", "L1=110,0"]
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.noojee", *argv],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(port_file.exists, deadline_s=4)
        port = int(port_file.read_text())
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line == f"noojee simulator listening on http://127.0.0.1:{port} (slots=2)"
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3) as client:
            assert update(client, "L1", JANE).json()["code"] == 110
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=3) == 0
    finally:
        process.kill()
        process.wait()
