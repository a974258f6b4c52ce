"""The Noojee simulator over real HTTP: answers, scripts, the slot queue and its admin endpoints.
Each test starts its own server on a free port in a background thread and stops it at the end."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import Response

from sandbox._records import ArrivalBounds
from sandbox.noojee import NoojeeSimConfig, NoojeeSimulator, serve
from tests.conftest import Simulator, simulator_cli, simulator_in_thread
from tests.conftest import wait_briefly as wait_for

pytestmark = pytest.mark.timeout(5)

UPDATE = "/servicemanager/rest/CampaignAPI/updateLeadFast"
INSERT = "/servicemanager/rest/CampaignAPI/insertLeadFast"
IDS = {"fTemplateId": "41", "fCampaignId": "41", "fAllocationId": "38"}
KEY = "sandbox-key"
JANE = {"FirstPhone": "0383218199", "Name": "Jane Smith", "njDisposition": "Sale"}
FAST = {"latency_s": 0.01, "jitter_s": 0.0}


def simulator(**settings: Any) -> contextlib.AbstractContextManager[httpx.Client]:
    """A running simulator and a client for it; the server is stopped and joined on exit."""
    return simulator_in_thread(serve, NoojeeSimConfig(**{**FAST, **settings}))


def update(client: httpx.Client, lead: str, fields: dict[str, Any], **params: str) -> Response:
    query = {**IDS, "njExternalLeadId": lead, "apiKey": KEY, **params}
    return client.post(UPDATE, params=query, json=fields)


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
    args = ("--slots", "2", "--script", "L1=110,0")
    with simulator_cli("noojee", *args, tmp_path=tmp_path) as (_, url, line):
        assert line == f"noojee simulator listening on {url} (slots=2)"
        with httpx.Client(base_url=url, timeout=3) as client:
            assert update(client, "L1", JANE).json()["code"] == 110


def service_times_s(config: NoojeeSimConfig, calls: int = 20_000) -> list[float]:
    """What the simulated PBX would take for ``calls`` calls, sorted (seeded: deterministic)."""
    sim = NoojeeSimulator(config)
    return sorted(sim._service_time_s() for _ in range(calls))


def test_lognormal_service_is_heavy_tailed_around_its_median_with_no_100_ms_floor() -> None:
    times = service_times_s(
        NoojeeSimConfig(distribution="lognormal", latency_s=0.1, sigma=0.77, seed=3)
    )
    median, p99 = times[len(times) // 2], times[int(0.99 * len(times))]
    assert median == pytest.approx(0.100, rel=0.03)
    assert p99 / median == pytest.approx(6.0, rel=0.12)  # exp(2.326 x 0.77)
    assert times[0] < 0.03  # half the calls are faster than the median: no floor piles them up


def test_uniform_service_stays_within_its_jitter_and_above_100_ms() -> None:
    times = service_times_s(NoojeeSimConfig(latency_s=0.1, jitter_s=0.02, seed=3), 2_000)
    assert 0.1 <= times[0] and times[-1] <= 0.12  # below 100 ms is Noojee's floor
    assert service_times_s(NoojeeSimConfig(latency_s=0.25, jitter_s=0.02, seed=3), 200)[0] >= 0.23


def test_config_switches_distribution_and_latency_while_running_and_refuses_bad_ones() -> None:
    with simulator(seed=5) as client:
        answer = client.post(
            "/_config", json={"distribution": "lognormal", "sigma": 0.5, "latency_s": 0.2}
        )
        assert answer.status_code == 200, answer.text
        wanted = {"distribution": "lognormal", "sigma": 0.5, "latency_s": 0.2}
        assert wanted.items() <= answer.json().items()
        for bad in ({"distribution": "pareto"}, {"distribution": 1}, {"sigma": -0.1}):
            refused = client.post("/_config", json=bad)
            assert refused.status_code == 400 and next(iter(bad)) in refused.json()["error"]
        assert client.post("/_config", json={}).json()["distribution"] == "lognormal"


def test_a_running_simulator_takes_its_new_service_time_for_the_next_calls() -> None:
    sim = NoojeeSimulator(NoojeeSimConfig(latency_s=0.1, jitter_s=0.0, seed=1))
    assert sim._service_time_s() == pytest.approx(0.1)
    sim.configure({"latency_s": 0.25})
    assert sim._service_time_s() == pytest.approx(0.25)
    sim.configure({"distribution": "lognormal", "sigma": 0.0})
    assert sim._service_time_s() == pytest.approx(0.25)  # no spread: exactly the median


def test_cli_takes_a_lognormal_distribution(tmp_path: Path) -> None:
    args = ("--distribution", "lognormal", "--sigma", "0.6", "--latency", "0.05")
    with simulator_cli("noojee", *args, tmp_path=tmp_path) as (_, url, _line):
        with httpx.Client(base_url=url, timeout=3) as client:
            settings = client.post("/_config", json={}).json()
    assert (settings["distribution"], settings["sigma"], settings["latency_s"]) == (
        "lognormal",
        0.6,
        0.05,
    )


def stats(client: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = client.get("/_stats").json()
    return answer


def foreign(client: httpx.Client, slots: int, duration_s: float) -> dict[str, Any]:
    answer = client.post("/_foreign", json={"slots": slots, "duration_s": duration_s})
    assert answer.status_code == 200, answer.text
    hold: dict[str, Any] = answer.json()
    return hold


def test_foreign_hold_takes_slots_so_our_call_waits_and_is_not_counted_as_ours() -> None:
    with simulator(slots=2, latency_s=0.05, queue_timeout_s=4.0) as client:
        hold = foreign(client, 2, 0.6)
        assert hold["holding"] == 2 and hold["until"] == pytest.approx(time.time() + 0.6, abs=0.2)
        held = stats(client)
        assert (held["foreign_in_flight"], held["our_in_flight"], held["in_flight"]) == (2, 0, 2)

        # Our call queues behind the foreign client and is answered only once its hold ends.
        assert update(client, "A", JANE).json()["code"] == 0
        assert time.time() >= hold["until"] + 0.05 - 0.02

        after = stats(client)
        assert (after["calls"], after["answers"], after["calls_by_lead"]) == (1, {"0": 1}, {"A": 1})
        assert after["busy_slot_s"] == pytest.approx(0.05, abs=0.03)
        assert after["foreign_busy_slot_s"] == pytest.approx(2 * 0.6, abs=0.15)
        assert (after["foreign_in_flight"], after["in_flight"], after["queued"]) == (0, 0, 0)
        assert (after["peak_in_flight"], after["peak_our_in_flight"]) == (2, 1)


def test_foreign_calls_queue_fifo_behind_ours_and_ahead_of_later_ones() -> None:
    with simulator(slots=1, latency_s=0.3, queue_timeout_s=4.0) as client:
        thread, answers = fire_in_background(str(client.base_url), ["A"])
        wait_for(lambda: stats(client)["our_in_flight"] == 1)
        hold = foreign(client, 1, 0.8)  # A holds the only slot: the foreign call queues
        queued = stats(client)
        assert (queued["foreign_queued"], queued["our_queued"], queued["queued"]) == (1, 0, 1)

        # B arrives after the foreign call, so it waits for the whole foreign hold.
        assert update(client, "B", JANE).json()["code"] == 0
        assert time.time() >= hold["until"] + 0.3 - 0.02
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0]
        after = stats(client)
        assert after["foreign_busy_slot_s"] == pytest.approx(0.8 - 0.3, abs=0.1)
        assert (after["calls"], after["foreign_queued"], after["foreign_in_flight"]) == (2, 0, 0)


def test_a_foreign_call_still_queued_when_its_duration_ends_gives_up_without_holding() -> None:
    with simulator(slots=1, latency_s=0.6, queue_timeout_s=4.0) as client:
        thread, answers = fire_in_background(str(client.base_url), ["A"])
        wait_for(lambda: stats(client)["our_in_flight"] == 1)
        foreign(client, 1, 0.15)
        assert stats(client)["foreign_queued"] == 1
        wait_for(lambda: stats(client)["foreign_queued"] == 0)

        gave_up = stats(client)
        assert (gave_up["foreign_in_flight"], gave_up["foreign_busy_slot_s"]) == (0, 0)
        assert gave_up["our_in_flight"] == 1  # A (0.6 s) still holds the slot: no one got it
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0]
        assert stats(client)["peak_in_flight"] == 1


def test_foreign_slots_0_and_reset_end_every_hold_at_once() -> None:
    with simulator(slots=2, queue_timeout_s=4.0) as client:
        foreign(client, 1, 30)
        foreign(client, 1, 30)  # holds add up
        thread, answers = fire_in_background(str(client.base_url), ["A"])
        wait_for(lambda: stats(client)["our_queued"] == 1)

        assert client.post("/_foreign", json={"slots": 0}).json()["holding"] == 0
        ended = stats(client)
        assert (ended["foreign_in_flight"], ended["foreign_queued"]) == (0, 0)
        assert ended["foreign_busy_slot_s"] < 2  # the time actually held, not 2 x 30 s
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0]  # admitted at once

        foreign(client, 3, 30)  # two hold, one queues
        held = stats(client)
        assert (held["foreign_in_flight"], held["foreign_queued"], held["our_queued"]) == (2, 1, 0)
        assert client.post("/_reset").json() == {"reset": True}
        reset = stats(client)
        assert (reset["foreign_in_flight"], reset["foreign_queued"], reset["queued"]) == (0, 0, 0)
        assert (reset["foreign_busy_slot_s"], reset["peak_in_flight"]) == (0, 0)
        assert update(client, "B", JANE).json()["code"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        [],
        {"duration_s": 1},
        {"slots": -1, "duration_s": 1},
        {"slots": 1.5, "duration_s": 1},
        {"slots": True, "duration_s": 1},
        {"slots": 1},
        {"slots": 1, "duration_s": -0.5},
        {"slots": 1, "duration_s": "1"},
        {"slots": 1, "duration_s": None},
        {"slots": 1, "duration_s": 1, "until": 5},
    ],
)
def test_foreign_refuses_a_bad_body_with_400_and_holds_nothing(body: Any) -> None:
    with simulator() as client:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        answer = client.post("/_foreign", **kwargs)
        assert answer.status_code == 400 and answer.json()["error"]
        assert stats(client)["foreign_in_flight"] == 0


def test_foreign_refuses_infinite_duration_and_timeline_refuses_a_bad_since() -> None:
    with simulator() as client:
        infinity = b'{"slots": 1, "duration_s": Infinity}'  # which json.loads accepts
        infinite = client.post("/_foreign", content=infinity)
        assert infinite.status_code == 400 and "duration_s" in infinite.json()["error"]
        bad_since = client.get("/_timeline", params={"since": "yesterday"})
        assert bad_since.status_code == 400 and "since" in bad_since.json()["error"]


def test_timeline_records_one_sample_per_change_and_filters_by_since() -> None:
    started = time.time()
    with simulator(slots=1, latency_s=0.05, queue_timeout_s=4.0) as client:
        asyncio.run(concurrent_updates(str(client.base_url), ["A", "B"]))
        client.post("/_config", json={"slots": 3})
        foreign(client, 1, 0.1)
        wait_for(lambda: stats(client)["foreign_in_flight"] == 0)

        samples = client.get("/_timeline").json()["samples"]
        # [our_in_flight, foreign_in_flight, queued (ours), slots] at each change, in order.
        assert [s[1:] for s in samples] == [
            [0, 0, 0, 1],  # the state at start (or at the last reset)
            [1, 0, 0, 1],  # A takes the slot
            [1, 0, 1, 1],  # B queues
            [1, 0, 0, 1],  # A hangs up, B takes the slot in the same instant
            [0, 0, 0, 1],  # B hangs up
            [0, 0, 0, 3],  # /_config slots 3
            [0, 1, 0, 3],  # the foreign call holds a slot
            [0, 0, 0, 3],  # and gives it back after 0.1 s
        ]
        times = [s[0] for s in samples]
        assert times == sorted(times) and started - 1 <= times[0] and times[-1] <= time.time()
        assert times[-1] - times[-2] == pytest.approx(0.1, abs=0.05)

        since = samples[5][0]
        recent = client.get("/_timeline", params={"since": since}).json()["samples"]
        assert recent == [s for s in samples if s[0] >= since] and 3 <= len(recent) < len(samples)

        client.post("/_reset")
        assert [s[1:] for s in client.get("/_timeline").json()["samples"]] == [[0, 0, 0, 3]]


def test_time_averages_are_exact_integrals_since_the_reset() -> None:
    with simulator(slots=1, latency_s=0.8, queue_timeout_s=4.0) as client:
        thread, answers = fire_in_background(str(client.base_url), ["A", "B"])
        wait_for(lambda: stats(client)["our_queued"] == 1)
        client.post("/_reset")  # from here on: one call in flight and one queued, throughout

        wait_for(lambda: stats(client)["averaged_over_s"] >= 0.3)
        steady = stats(client)
        assert steady["our_in_flight"] == 1 and steady["our_queued"] == 1  # nothing changed
        assert steady["our_in_flight_time_avg"] == pytest.approx(1.0, abs=1e-3)
        assert steady["queued_time_avg"] == pytest.approx(1.0, abs=1e-3)

        # Later: one call held the slot until B ended; B was queued until A ended, and B ran
        # for exactly latency_s, so the two integrals differ by 0.8 slot-seconds.
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0, 0]
        done = stats(client)
        span_s = done["averaged_over_s"]
        in_flight_s = done["our_in_flight_time_avg"] * span_s
        queued_s = done["queued_time_avg"] * span_s
        assert in_flight_s - queued_s == pytest.approx(0.8, abs=0.05)
        assert 0 < done["our_in_flight_time_avg"] < 1 and done["peak_our_in_flight"] == 1


def test_foreign_calls_do_not_count_in_our_time_average_or_our_peaks() -> None:
    with simulator(slots=2) as client:
        client.post("/_reset")
        foreign(client, 2, 0.2)
        wait_for(lambda: stats(client)["foreign_in_flight"] == 0)
        after = stats(client)
        assert (after["our_in_flight_time_avg"], after["queued_time_avg"]) == (0, 0)
        assert (after["peak_our_in_flight"], after["peak_our_in_flight_since_reset"]) == (0, 0)
        assert after["peak_in_flight"] == 2


def test_peaks_endpoint_restarts_only_the_peak_window() -> None:
    with simulator(slots=3, latency_s=0.3, queue_timeout_s=4.0) as client:
        thread, _ = fire_in_background(str(client.base_url), ["A", "B", "C", "D"])
        wait_for(lambda: stats(client)["our_in_flight"] == 3)
        thread.join(timeout=4)

        closed = client.post("/_peaks").json()
        assert closed == {"peak_in_flight": 3, "peak_our_in_flight": 3, "peak_queued": 1}
        window = stats(client)
        assert (window["peak_in_flight"], window["peak_our_in_flight"]) == (0, 0)
        assert (window["peak_queued"], window["peak_our_in_flight_since_reset"]) == (0, 3)
        assert (window["calls"], window["calls_by_lead"]["D"]) == (4, 1)  # the rest is kept

        foreign(client, 1, 0.05)
        wait_for(lambda: stats(client)["foreign_in_flight"] == 0)
        assert (stats(client)["peak_in_flight"], stats(client)["peak_our_in_flight"]) == (1, 0)
        client.post("/_reset")
        assert stats(client)["peak_our_in_flight_since_reset"] == 0


def test_lowering_slots_under_foreign_holds_admits_no_one_until_under_the_new_count() -> None:
    with simulator(slots=2, latency_s=0.05, queue_timeout_s=4.0) as client:
        foreign(client, 1, 0.3)
        last = foreign(client, 1, 0.8)
        client.post("/_config", json={"slots": 1})
        thread, answers = fire_in_background(str(client.base_url), ["A"])
        wait_for(lambda: stats(client)["our_queued"] == 1)

        # The first hold ends: 1 call still holds a slot, which is the new count, so A waits.
        wait_for(lambda: stats(client)["foreign_in_flight"] == 1)
        waiting = stats(client)
        assert (waiting["in_flight"], waiting["our_queued"], waiting["slots"]) == (1, 1, 1)
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0]
        assert time.time() >= last["until"] + 0.05 - 0.02

        # The holders ran over the new count for a while, but A only ever ran alone.
        samples = client.get("/_timeline").json()["samples"]
        after_lowering = [s[1:3] for s in samples if s[4] == 1]
        assert [0, 2] in after_lowering and [1, 0] in after_lowering
        assert all(theirs == 0 for our, theirs in after_lowering if our)


# --- the arrival log per lead ---------------------------------------------------------------


def arrivals(client: httpx.Client, lead: str) -> list[dict[str, Any]]:
    answer = client.get(f"/_arrivals/{lead}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["record"] == lead
    entries: list[dict[str, Any]] = answer.json()["arrivals"]
    return entries


def outline(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["n"], e["call"], e["status"], e["code"], e["applied"]) for e in entries]


def test_arrivals_log_every_call_on_a_lead_in_order_with_what_it_answered_and_applied() -> None:
    started = time.time()
    with simulator(scripts={"L1": [110, 0]}) as client:
        update(client, "L1", {**JANE, "Name": "First"})
        update(client, "L2", JANE)
        update(client, "L1", {**JANE, "Name": "Second"})

        entries = arrivals(client, "L1")
        assert outline(entries) == [(1, "update", 400, 110, False), (3, "update", 200, 0, True)]
        assert [e["fields"]["Name"] for e in entries] == ["First", "Second"]
        assert started <= entries[0]["start"] <= entries[0]["end"] <= entries[1]["start"]
        assert entries[1]["end"] - entries[1]["start"] >= FAST["latency_s"]
        assert client.get("/_leads/L1").json()["Name"] == "Second"

        everything = client.get("/_arrivals").json()["records"]
        assert sorted(everything) == ["L1", "L2"] and everything["L1"] == entries
        missing = client.get("/_arrivals/L3")
        assert missing.status_code == 404 and missing.json()["error"]


def test_an_insert_is_one_arrival_logged_on_each_lead_it_names() -> None:
    with simulator() as client:
        leads = [
            {"njExternalLeadId": "I1", **JANE},
            {**JANE, "Name": "No id"},
            {"njExternalLeadId": "I2", **JANE, "Name": "Two"},
        ]
        assert client.post(INSERT, params={**IDS, "apiKey": KEY}, json=leads).json()["code"] == 0
        records = client.get("/_arrivals").json()["records"]
        assert sorted(records) == ["I1", "I2"]  # a lead without an id is no record
        assert outline(records["I1"]) == outline(records["I2"]) == [(1, "insert", 200, 0, True)]
        assert records["I2"][0]["fields"] == leads[2]


def test_calls_refused_before_naming_a_lead_are_not_logged_but_errors_on_a_lead_are() -> None:
    with simulator() as client:
        update(client, "K1", JANE, apiKey="wrong")  # 401
        client.post(INSERT, params={**IDS, "apiKey": KEY}, content=b"not json")
        update(client, "", JANE)  # 113: no lead
        update(client, "K2", JANE, fTemplateId="")  # 116, on lead K2
        client.post(UPDATE, params={**IDS, "njExternalLeadId": "K3", "apiKey": KEY}, json=[1])

        assert sorted(client.get("/_arrivals").json()["records"]) == ["K2", "K3"]
        assert outline(arrivals(client, "K2")) == [(1, "update", 400, 116, False)]  # n: named ones
        [bad_body] = arrivals(client, "K3")
        assert (bad_body["status"], bad_body["code"], bad_body["fields"]) == (400, None, {})


def test_busy_and_fault_answers_are_logged_not_applied() -> None:
    with simulator(scripts={"B1": [109, 103, 0]}) as client:
        codes = [update(client, "B1", JANE).json()["code"] for _ in range(3)]
        assert codes == [109, 103, 0]
        assert outline(arrivals(client, "B1")) == [
            (1, "update", 400, 109, False),
            (2, "update", 500, 103, False),
            (3, "update", 200, 0, True),
        ]


def test_two_calls_in_flight_on_one_lead_are_an_overlap_even_queued_in_the_pbx() -> None:
    with simulator(slots=1, latency_s=0.3, queue_timeout_s=4.0) as client:
        thread, answers = fire_in_background(str(client.base_url), ["A", "A"])
        wait_for(lambda: stats(client)["our_queued"] == 1)  # one holds the slot, one waits
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0, 0]
        after = stats(client)
        assert (after["peak_calls_per_record"], after["overlapping_records"]) == (2, 1)
        first, second = arrivals(client, "A")
        assert second["start"] < first["end"]  # the log shows the overlap too


def test_concurrent_calls_on_different_leads_are_no_overlap() -> None:
    with simulator(slots=3, latency_s=0.3, queue_timeout_s=4.0) as client:
        thread, answers = fire_in_background(str(client.base_url), ["A", "B", "C"])
        wait_for(lambda: stats(client)["our_in_flight"] == 3)
        thread.join(timeout=4)
        assert [answer.json()["code"] for answer in answers] == [0, 0, 0]
        after = stats(client)
        assert (after["peak_calls_per_record"], after["overlapping_records"]) == (1, 0)
        assert after["arrivals_dropped"] == 0


def test_an_insert_overlaps_an_update_of_each_of_its_leads() -> None:
    with simulator(slots=2, latency_s=0.3, queue_timeout_s=4.0) as client:
        thread, _ = fire_in_background(str(client.base_url), ["I2"])
        wait_for(lambda: stats(client)["our_in_flight"] == 1)
        leads = [{"njExternalLeadId": "I1", **JANE}, {"njExternalLeadId": "I2", **JANE}]
        assert client.post(INSERT, params={**IDS, "apiKey": KEY}, json=leads).json()["code"] == 0
        thread.join(timeout=4)
        after = stats(client)
        assert (after["peak_calls_per_record"], after["overlapping_records"]) == (2, 1)


def test_slow_answer_holds_the_call_without_a_slot_then_answers_109_and_applies_nothing() -> None:
    with simulator(slots=1) as client:
        body = {"lead": "S1", "codes": ["slow", 0], "slow_s": 0.6}
        assert client.post("/_script", json=body).json()["scripts"] == {"S1": ["slow", 0]}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up: outcome unknown to it
            update_with_timeout(str(client.base_url), "S1", timeout_s=0.2)
        # Held without a slot: another lead goes through the one-slot PBX meanwhile.
        assert update(client, "S2", JANE).json()["code"] == 0
        assert client.get("/_arrivals/S1").status_code == 404  # not answered yet

        wait_for(lambda: client.get("/_arrivals/S1").status_code == 200)
        [held] = arrivals(client, "S1")
        assert (held["status"], held["code"], held["applied"]) == (400, 109, False)
        assert held["end"] - held["start"] >= 0.6
        assert client.get("/_leads/S1").status_code == 404
        assert update(client, "S1", JANE).json()["code"] == 0  # the script moved on
        assert arrivals(client, "S1")[-1]["applied"] is True


def update_with_timeout(base_url: str, lead: str, timeout_s: float) -> Response:
    with httpx.Client(base_url=base_url, timeout=timeout_s) as client:
        return update(client, lead, JANE)


def update_never_answered(base_url: str, lead: str) -> None:
    """An update whose answer never comes: the server stops first (or the read times out)."""
    with pytest.raises(httpx.TransportError):
        update_with_timeout(base_url, lead, timeout_s=3)


def test_a_slow_answer_still_held_does_not_keep_the_simulator_from_stopping() -> None:
    with simulator(scripts={"S1": ["slow"]}) as client:  # held the default 120 s
        thread = threading.Thread(target=update_never_answered, args=(str(client.base_url), "S1"))
        thread.start()
        # Served its PBX time and now held: the slot's time is counted, the answer is not.
        wait_for(lambda: stats(client)["busy_slot_s"] > 0 and stats(client)["calls"] == 0)
    thread.join(timeout=4)  # serve() returned within the fixture's 3 s: nothing waited 120 s
    assert not thread.is_alive()


def test_script_refuses_a_bad_slow_s_and_codes_that_are_neither_integers_nor_slow() -> None:
    with simulator() as client:
        for bad in (
            {"lead": "S", "codes": ["slow"], "slow_s": -1},
            {"lead": "S", "codes": ["slow"], "slow_s": "1"},
            {"lead": "S", "codes": ["fast"]},
        ):
            answer = client.post("/_script", json=bad)
            assert answer.status_code == 400 and answer.json()["error"], bad
        assert client.post("/_script", json={"lead": "S", "codes": [0]}).status_code == 200


def test_reset_clears_the_arrivals_and_the_overlap_counters() -> None:
    with simulator(slots=2, latency_s=0.2, queue_timeout_s=4.0) as client:
        asyncio.run(concurrent_updates(str(client.base_url), ["A", "A"]))
        assert stats(client)["overlapping_records"] == 1
        client.post("/_reset")
        assert client.get("/_arrivals").json() == {"records": {}}
        reset = stats(client)
        assert (reset["peak_calls_per_record"], reset["overlapping_records"]) == (0, 0)
        update(client, "A", JANE)
        assert [e["n"] for e in arrivals(client, "A")] == [1]


def test_arrivals_past_the_bounds_drop_the_oldest_and_are_counted() -> None:
    with simulator(arrival_bounds=ArrivalBounds(per_record=2, total=3)) as client:
        for lead in ("A", "A", "A", "B", "C"):
            update(client, lead, JANE)
        records = client.get("/_arrivals").json()["records"]
        assert {lead: [e["n"] for e in entries] for lead, entries in records.items()} == {
            "A": [3],
            "B": [4],
            "C": [5],
        }
        assert stats(client)["arrivals_dropped"] == 2


def test_cli_scripts_a_slow_answer() -> None:
    from sandbox.noojee import _script_arg

    assert _script_arg("L1=slow,0") == ("L1", ["slow", 0])


def test_the_admin_helper_reads_one_leads_arrivals_whatever_its_id() -> None:
    with simulator() as client:
        for lead in ("a/b", "x y%", "Ünïcode"):
            update(client, lead, JANE)
            assert [e["fields"] for e in Simulator(str(client.base_url)).arrivals(lead)] == [JANE]
        assert sorted(client.get("/_arrivals").json()["records"]) == ["a/b", "x y%", "Ünïcode"]
        assert Simulator(str(client.base_url)).arrivals("nobody") == []
