"""The Mission Capital simulator over real HTTP: login, tokens, contactUser answers, scripts, the
API allowance, outages and the admin endpoints. Each test starts its own server on a free port
in a background thread and stops it at the end."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import Response

from sandbox.missioncapital import MissionCapitalSimConfig, salesforce_id_18, serve
from tests.conftest import simulator_cli
from tests.conftest import wait_briefly as wait_for

pytestmark = pytest.mark.timeout(5)

TOKEN = "/services/oauth2/token"
CONTACT = "/services/apexrest/creditapp/contactUser"
APP = "00QEa00000ItVf8MAF"  # the source page's sample Lead id (18 characters)
LOGIN = {
    "grant_type": "password",
    "client_id": "sandbox-client",
    "client_secret": "sandbox-secret",
    "username": "sandbox@example.com",
    "password": "sandbox-password",
}
PARTNER = {"PartnerId": "P-1", "PartnerName": "contactsync"}
SUCCESS = {"IsSuccessful": True, "ResponseText": "Application has been updated successfully"}


@dataclass
class Sim:
    client: httpx.Client  # the API port (admin endpoints are served there too)
    admin: httpx.Client  # the admin port if one was asked for, else the API port
    base_url: str


@contextmanager
def simulator(admin_port: bool = False, **settings: Any) -> Iterator[Sim]:
    """A running simulator and clients for it; the server is stopped and joined on exit."""
    ports: queue.Queue[int] = queue.Queue()
    admin_ports: queue.Queue[int] = queue.Queue()
    stop = threading.Event()
    kwargs: dict[str, Any] = {"port": 0, "ready": ports.put, "stop": stop}
    if admin_port:
        kwargs |= {"admin_port": 0, "admin_ready": admin_ports.put}
    thread = threading.Thread(
        target=serve, args=(MissionCapitalSimConfig(**settings),), kwargs=kwargs
    )
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{ports.get(timeout=3)}"
        admin_url = f"http://127.0.0.1:{admin_ports.get(timeout=3)}" if admin_port else base_url
        with (
            httpx.Client(base_url=base_url, timeout=3) as client,
            httpx.Client(base_url=admin_url, timeout=3) as admin,
        ):
            yield Sim(client, admin, base_url)
    finally:
        stop.set()
        thread.join(timeout=3)
        assert not thread.is_alive(), "serve() did not return after stop was set"


def login(client: httpx.Client, **fields: str) -> Response:
    return client.post(TOKEN, data={**LOGIN, **fields})


def token(client: httpx.Client) -> str:
    answer = login(client)
    assert answer.status_code == 200, answer.text
    access_token: str = answer.json()["access_token"]
    return access_token


def contact(
    client: httpx.Client, access_token: str, app: str | None = APP, **headers: str
) -> Response:
    sent = {"Authorization": f"Bearer {access_token}", **PARTNER, **headers}
    if app is not None:
        sent["ApplicationID"] = app
    return client.post(CONTACT, headers=sent)


def stats(client: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = client.get("/_stats").json()
    return answer


def configure(client: httpx.Client, **settings: Any) -> dict[str, Any]:
    answer = client.post("/_config", json=settings)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_salesforce_id_checksum() -> None:
    assert salesforce_id_18(APP) == APP
    assert salesforce_id_18(APP[:15]) == APP
    assert salesforce_id_18(APP[:15] + "AAA") is None  # wrong case-checksum suffix
    assert salesforce_id_18("00QEa00000ItVf8MA") is None  # 17 characters
    assert salesforce_id_18("00QEa00000ItVf8-") is None


def test_login_answers_a_salesforce_token_and_counts_logins() -> None:
    with simulator() as sim:
        answer = login(sim.client)
        assert answer.status_code == 200
        body = answer.json()
        assert set(body) == {
            "access_token",
            "instance_url",
            "id",
            "token_type",
            "issued_at",
            "signature",
        }
        assert body["instance_url"] == sim.base_url
        assert body["token_type"] == "Bearer"
        assert body["id"].startswith(f"{sim.base_url}/id/00D")
        assert body["issued_at"].isdigit()
        assert abs(int(body["issued_at"]) / 1000 - time.time()) < 5
        assert answer.headers["Sforce-Limit-Info"] == "api-usage=0/15000"
        login(sim.client)
        got = stats(sim.client)
        assert (got["logins"], got["login_failures"], got["tokens_valid"]) == (2, 0, 2)


def test_wrong_credentials_are_400_invalid_grant_and_count_as_failures() -> None:
    with simulator(security_token="TOK") as sim:
        for wrong in ({"password": "sandbox-password"}, {"username": "other@example.com"}):
            answer = login(sim.client, **wrong)
            assert (answer.status_code, answer.json()) == (
                400,
                {"error": "invalid_grant", "error_description": "authentication failure"},
            )
        assert login(sim.client, password="sandbox-passwordTOK").status_code == 200
        assert login(sim.client, client_id="x").json()["error"] == "invalid_client_id"
        assert login(sim.client, client_secret="x").json()["error"] == "invalid_client"
        assert login(sim.client, grant_type="x").json()["error"] == "unsupported_grant_type"
        got = stats(sim.client)
        assert (got["logins"], got["login_failures"]) == (1, 5)


def test_contact_user_succeeds_and_counts_api_usage_in_the_limit_header() -> None:
    with simulator() as sim:
        access_token = token(sim.client)
        first = contact(sim.client, access_token)
        assert (first.status_code, first.json()) == (200, SUCCESS)
        assert first.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
        second = contact(sim.client, access_token, app=APP[:15])
        assert second.headers["Sforce-Limit-Info"] == "api-usage=2/15000"
        got = stats(sim.client)
        assert got["calls_by_application"] == {APP: 1, APP[:15]: 1}
        assert (got["calls"], got["api_usage"], got["answers"]) == (2, 2, {"ok": 2})


def test_invalid_or_missing_token_is_401_invalid_session_id() -> None:
    with simulator() as sim:
        for headers in ({"Authorization": "Bearer nope"}, {}):
            answer = sim.client.post(CONTACT, headers={**PARTNER, "ApplicationID": APP, **headers})
            assert answer.status_code == 401
            assert answer.json() == [
                {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
            ]
            assert answer.headers["Sforce-Limit-Info"] == "api-usage=0/15000"
        assert stats(sim.client)["invalid_sessions"] == 2


def test_token_expires_after_the_ttl_and_a_new_login_works() -> None:
    with simulator(token_ttl_s=0.2) as sim:
        access_token = token(sim.client)
        assert contact(sim.client, access_token).status_code == 200
        wait_for(lambda: contact(sim.client, access_token).status_code == 401)
        assert stats(sim.client)["tokens_valid"] == 0
        fresh = token(sim.client)
        assert contact(sim.client, fresh).status_code == 200
        assert stats(sim.client)["logins"] == 2


def test_config_ttl_and_expire_tokens_invalidate_issued_tokens() -> None:
    with simulator() as sim:
        access_token = token(sim.client)
        assert configure(sim.client, token_ttl_s=0)["token_ttl_s"] == 0
        assert contact(sim.client, access_token).status_code == 401
        configure(sim.client, token_ttl_s=7200)
        access_token = token(sim.client)
        assert sim.client.post("/_expire_tokens").json() == {"expired": 1}
        assert contact(sim.client, access_token).status_code == 401
        assert contact(sim.client, token(sim.client)).status_code == 200


def test_missing_partner_headers_application_id_and_unknown_application() -> None:
    missing_header = {
        "IsSuccessful": False,
        "ResponseText": "Invalid Request Header. PartnerName or PartnerId parameters are missing.",
    }
    with simulator(known_applications=[APP[:15]]) as sim:
        access_token = token(sim.client)
        for blank in ("PartnerId", "PartnerName"):
            answer = contact(sim.client, access_token, **{blank: ""})
            assert (answer.status_code, answer.json()) == (200, missing_header)
        answer = contact(sim.client, access_token, app=None)
        assert answer.json() == {"IsSuccessful": False, "ResponseText": "Missing Application ID"}
        not_found = {"IsSuccessful": False, "ResponseText": "Application not found"}
        assert contact(sim.client, access_token, app="00QEa00000ItVf9MAF").json() == not_found
        assert contact(sim.client, access_token, app="not-an-id").json() == not_found
        assert contact(sim.client, access_token, app=APP).json() == SUCCESS  # 15 == 18 chars
        assert stats(sim.client)["answers"] == {
            "missing-header": 2,
            "missing-id": 1,
            "not-found": 2,
            "ok": 1,
        }


def test_failure_status_is_configurable() -> None:
    with simulator() as sim:
        configure(sim.client, failure_status=400)
        answer = contact(sim.client, token(sim.client), app="bad")
        assert (answer.status_code, answer.json()["IsSuccessful"]) == (400, False)


SCRIPTED: list[tuple[str, int, Any]] = [
    ("ok", 200, SUCCESS),
    ("not-found", 200, {"IsSuccessful": False, "ResponseText": "Application not found"}),
    ("missing-id", 200, {"IsSuccessful": False, "ResponseText": "Missing Application ID"}),
    (
        "invalid-credentials",
        200,
        {"IsSuccessful": False, "ResponseText": "Invalid username and password"},
    ),
    ("missing-header", 200, None),
    ("http-401", 401, "INVALID_SESSION_ID"),
    ("http-403-limit", 403, "REQUEST_LIMIT_EXCEEDED"),
    ("http-403", 403, "INSUFFICIENT_ACCESS"),
    ("http-404", 404, "NOT_FOUND"),
    ("http-405", 405, "METHOD_NOT_ALLOWED"),
    ("http-500", 500, "APEX_ERROR"),
    ("http-502", 502, "Bad Gateway"),
    ("http-503", 503, "SERVER_UNAVAILABLE"),
    ("http-504", 504, "Gateway Time-out"),
]


@pytest.mark.parametrize(("kind", "status", "expected"), SCRIPTED)
def test_every_scripted_answer_kind(kind: str, status: int, expected: Any) -> None:
    with simulator(scripts={APP: [kind, "ok"]}) as sim:
        access_token = token(sim.client)
        answer = contact(sim.client, access_token)
        assert answer.status_code == status
        assert answer.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
        if isinstance(expected, dict):
            assert answer.json() == expected
        elif kind == "missing-header":
            assert answer.json()["ResponseText"].startswith("Invalid Request Header.")
        elif kind in ("http-502", "http-504"):
            assert expected in answer.text
            assert answer.headers["Content-Type"].startswith("text/html")
        else:
            [error] = answer.json()
            assert error["errorCode"] == expected
            assert isinstance(error["message"], str)
        assert contact(sim.client, access_token).json() == SUCCESS  # the script moved on
        assert stats(sim.client)["answers"] == ({"ok": 2} if kind == "ok" else {kind: 1, "ok": 1})


def test_script_endpoint_last_answer_is_sticky_and_bad_scripts_are_400() -> None:
    with simulator() as sim:
        body = {"id": APP, "answers": ["http-503", "http-500", "not-found"]}
        assert sim.client.post("/_script", json=body).json() == {"scripts": {APP: body["answers"]}}
        access_token = token(sim.client)
        statuses = [contact(sim.client, access_token).status_code for _ in range(4)]
        assert statuses == [503, 500, 200, 200]
        assert contact(sim.client, access_token).json()["ResponseText"] == "Application not found"
        other = sim.client.post("/_script", json={"scripts": {"00Q000000000001": ["ok"]}})
        assert other.status_code == 200
        bad: Any
        for bad in (
            {"id": APP, "answers": []},
            {"id": APP, "answers": ["nope"]},
            {"id": APP, "answers": [200]},
            {"answers": ["ok"]},
            {"scripts": {APP: "ok"}},
            [],
        ):
            answer = sim.client.post("/_script", json=bad)
            assert answer.status_code == 400, bad
            assert "error" in answer.json()
        assert sim.client.post("/_script", content=b"{not json").status_code == 400


def test_limit_exceeded_is_403_once_usage_passes_the_allowance() -> None:
    with simulator(api_limit=2) as sim:
        access_token = token(sim.client)
        assert [contact(sim.client, access_token).status_code for _ in range(2)] == [200, 200]
        answer = contact(sim.client, access_token)
        assert answer.status_code == 403
        assert answer.json() == [
            {"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}
        ]
        assert answer.headers["Sforce-Limit-Info"] == "api-usage=3/2"
        configure(sim.client, api_limit=15000, api_usage=14999)
        assert contact(sim.client, access_token).headers["Sforce-Limit-Info"] == (
            "api-usage=15000/15000"
        )
        assert contact(sim.client, access_token).status_code == 403
        assert stats(sim.client)["answers"] == {"ok": 3, "http-403-limit": 2}


def test_wrong_method_is_405_and_unknown_apex_path_is_404() -> None:
    with simulator() as sim:
        auth = {"Authorization": f"Bearer {token(sim.client)}", **PARTNER, "ApplicationID": APP}
        answer = sim.client.get(CONTACT, headers=auth)
        assert (answer.status_code, answer.json()[0]["errorCode"]) == (405, "METHOD_NOT_ALLOWED")
        answer = sim.client.post("/services/apexrest/creditapp/nope", headers=auth)
        assert (answer.status_code, answer.json()[0]["errorCode"]) == (404, "NOT_FOUND")


def test_down_503_answers_503_to_everything_but_admin() -> None:
    with simulator() as sim:
        access_token = token(sim.client)
        assert configure(sim.client, down="503")["down"] == "503"
        answer = contact(sim.client, access_token)
        assert (answer.status_code, answer.json()[0]["errorCode"]) == (503, "SERVER_UNAVAILABLE")
        assert login(sim.client).status_code == 503
        got = stats(sim.client)
        assert (got["down"], got["down_answers"], got["api_usage"]) == ("503", 2, 0)
        configure(sim.client, down=False)
        assert contact(sim.client, access_token).status_code == 200


def test_down_503_for_a_while_comes_back_by_itself() -> None:
    with simulator() as sim:
        access_token = token(sim.client)
        configure(sim.client, down="503", down_for_s=0.1)
        assert contact(sim.client, access_token).status_code == 503
        wait_for(lambda: contact(sim.client, access_token).status_code == 200)
        assert stats(sim.client)["down"] is None


def test_down_refused_closes_the_api_port_until_up_again() -> None:
    with simulator(admin_port=True) as sim:
        access_token = token(sim.client)
        assert configure(sim.admin, down="refused")["down"] == "refused"
        with httpx.Client(base_url=sim.base_url, timeout=3) as fresh:
            with pytest.raises(httpx.ConnectError):
                fresh.post(TOKEN, data=LOGIN)
        # A connection kept alive from before the outage is dropped without an answer.
        with pytest.raises(httpx.TransportError):
            contact(sim.client, access_token)
        configure(sim.admin, down=None)
        with httpx.Client(base_url=sim.base_url, timeout=3) as fresh:
            assert contact(fresh, access_token).json() == SUCCESS


def test_down_refused_without_an_admin_port_needs_down_for_s() -> None:
    with simulator() as sim:
        answer = sim.client.post("/_config", json={"down": "refused"})
        assert answer.status_code == 400
        configure(sim.client, down="refused", down_for_s=0.1)

        def answers() -> bool:
            try:
                with httpx.Client(base_url=sim.base_url, timeout=1) as fresh:
                    return fresh.get("/_stats").json()["down"] is None
            except httpx.TransportError:
                return False

        wait_for(answers)


@pytest.mark.parametrize(
    "bad",
    [
        {"nope": 1},
        {"token_ttl_s": -1},
        {"latency_s": "1"},
        {"api_limit": 1.5},
        {"api_usage": True},
        {"failure_status": 99},
        {"known_applications": "x"},
        {"down": "sideways"},
        {"down_for_s": 1},
        {"down": "503", "down_for_s": -1},
        [],
    ],
)
def test_config_refuses_bad_bodies_with_400_and_changes_nothing(bad: Any) -> None:
    with simulator() as sim:
        before = sim.client.get("/_config").json()
        answer = sim.client.post("/_config", json=bad)
        assert answer.status_code == 400
        assert "error" in answer.json()
        assert sim.client.get("/_config").json() == before


def test_latency_holds_calls_in_flight_and_reset_clears_everything() -> None:
    with simulator(latency_s=0.3) as sim:
        access_token = token(sim.client)
        sim.client.post("/_script", json={"id": APP, "answers": ["http-500"]})
        answers: list[Response] = []
        thread = threading.Thread(target=lambda: answers.append(contact(sim.client, access_token)))
        thread.start()
        with httpx.Client(base_url=sim.base_url, timeout=3) as watcher:
            wait_for(lambda: stats(watcher)["in_flight"] == 1)
        thread.join(timeout=3)
        assert answers[0].status_code == 500
        got = stats(sim.client)
        assert (got["in_flight"], got["peak_in_flight"]) == (0, 1)

        assert sim.client.post("/_reset").json() == {"reset": True}
        got = stats(sim.client)
        assert (got["calls"], got["logins"], got["api_usage"], got["tokens_valid"]) == (0, 0, 0, 0)
        assert got["answers"] == {} and got["calls_by_application"] == {}
        assert contact(sim.client, access_token).status_code == 401  # tokens forgotten
        configure(sim.client, latency_s=0)
        assert contact(sim.client, token(sim.client)).json() == SUCCESS  # script forgotten


def test_admin_get_and_post_of_unknown_actions_are_405() -> None:
    with simulator() as sim:
        assert sim.client.get("/_reset").status_code == 405
        assert sim.client.post("/_stats").status_code == 405


def test_cli_prints_its_address_writes_the_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    args = ("--password", "pw", "--security-token", "TOK", "--script", f"{APP}=http-504,ok")
    with simulator_cli("missioncapital", *args, "--api-limit", "9", tmp_path=tmp_path) as (
        _,
        url,
        line,
    ):
        assert line == f"missioncapital simulator listening on {url}"
        with httpx.Client(base_url=url, timeout=3) as client:
            assert login(client).status_code == 400
            access_token = login(client, password="pwTOK").json()["access_token"]
            answer = contact(client, access_token)
            assert answer.status_code == 504
            assert answer.headers["Sforce-Limit-Info"] == "api-usage=1/9"
            assert contact(client, access_token).json() == SUCCESS


# --- each application's arrivals and state ---------------------------------------------------

APP_15 = APP[:15]  # the same Lead, spelled with 15 characters


def arrivals(client: httpx.Client, app: str) -> list[dict[str, Any]]:
    answer = client.get(f"/_arrivals/{app}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["record"] == (salesforce_id_18(app) or app)  # the 18-character id
    entries: list[dict[str, Any]] = answer.json()["arrivals"]
    return entries


def outline(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["n"], e["call"], e["status"], e["code"], e["applied"]) for e in entries]


async def concurrent_contacts(base_url: str, access_token: str, apps: list[str]) -> list[Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=4) as client:
        headers = {"Authorization": f"Bearer {access_token}", **PARTNER}
        calls = [client.post(CONTACT, headers={**headers, "ApplicationID": app}) for app in apps]
        return await asyncio.gather(*calls)


def test_arrivals_are_one_record_per_application_whichever_id_length_was_sent() -> None:
    with simulator(scripts={APP_15: ["http-403-limit", "http-500", "ok"]}) as sim:
        access_token = token(sim.client)
        spellings = (APP_15, APP, APP_15)
        statuses = [contact(sim.client, access_token, app).status_code for app in spellings]
        assert statuses == [403, 500, 200]

        entries = arrivals(sim.client, APP_15)
        assert arrivals(sim.client, APP) == entries
        assert outline(entries) == [
            (1, "contactUser", 403, "REQUEST_LIMIT_EXCEEDED", False),
            (2, "contactUser", 500, "APEX_ERROR", False),
            (3, "contactUser", 200, SUCCESS["ResponseText"], True),
        ]
        assert all(e["fields"] == {} and e["start"] <= e["end"] for e in entries)
        assert list(sim.client.get("/_arrivals").json()["records"]) == [APP]
        assert sim.client.get("/_arrivals/00Q000000000001").status_code == 404


def test_partner_failures_and_outages_are_logged_but_refused_sessions_are_not() -> None:
    with simulator(known_applications=[APP]) as sim:
        access_token = token(sim.client)
        contact(sim.client, "expired-token")  # 401: the session, not the application
        contact(sim.client, access_token, app=None)  # no ApplicationID: no record
        wrong_method = {"Authorization": f"Bearer {access_token}", "ApplicationID": APP}
        assert sim.client.get(CONTACT, headers=wrong_method).status_code == 405
        contact(sim.client, access_token, app="00Q000000000001")  # not found
        configure(sim.client, down="503")
        contact(sim.client, access_token)
        configure(sim.client, down=None)

        records = sim.client.get("/_arrivals").json()["records"]
        assert sorted(records) == sorted([APP, salesforce_id_18("00Q000000000001")])
        assert outline(records[APP]) == [(3, "contactUser", 503, "SERVER_UNAVAILABLE", False)]
        [not_found] = records[salesforce_id_18("00Q000000000001")]
        assert (not_found["code"], not_found["applied"]) == ("Application not found", False)


def test_application_state_shows_that_contact_user_re_enabled_it() -> None:
    with simulator(known_applications=[APP], scripts={APP: ["http-503", "ok"]}) as sim:
        fresh = sim.client.get(f"/_applications/{APP_15}")
        assert fresh.json() == {
            "application_id": APP,
            "contact_enabled": False,
            "updates": 0,
            "updated_at": None,
            "calls": 0,
        }
        assert sim.client.get("/_applications/00Q000000000001").status_code == 404  # not known

        access_token = token(sim.client)
        contact(sim.client, access_token)  # 503: nothing changed
        assert sim.client.get(f"/_applications/{APP}").json()["contact_enabled"] is False
        before = time.time()
        assert contact(sim.client, access_token).json() == SUCCESS
        enabled = sim.client.get(f"/_applications/{APP}").json()
        assert (enabled["contact_enabled"], enabled["updates"], enabled["calls"]) == (True, 1, 2)
        assert before <= enabled["updated_at"] <= time.time()

        # Disabled by hand, re-enabled by the next contactUser.
        answer = sim.client.post("/_applications", json={APP_15: {"contact_enabled": False}})
        assert answer.json() == {"applications": [APP]}
        assert sim.client.get(f"/_applications/{APP}").json()["contact_enabled"] is False
        contact(sim.client, access_token, app=APP_15)
        assert sim.client.get(f"/_applications/{APP}").json()["contact_enabled"] is True

        for bad in ({}, {APP: {"contact_enabled": "yes"}}, {APP: {"enabled": True}}, [APP]):
            refused = sim.client.post("/_applications", json=bad)
            assert refused.status_code == 400 and refused.json()["error"], bad
        sim.client.post("/_reset")
        assert sim.client.get(f"/_applications/{APP}").json()["updates"] == 0


def test_two_calls_on_one_application_at_once_are_an_overlap_whatever_the_spelling() -> None:
    with simulator(latency_s=0.3) as sim:
        access_token = token(sim.client)
        answers = asyncio.run(concurrent_contacts(sim.base_url, access_token, [APP, APP_15]))
        assert [a.json() for a in answers] == [SUCCESS, SUCCESS]
        got = stats(sim.client)
        assert (got["peak_calls_per_record"], got["overlapping_records"]) == (2, 1)
        first, second = arrivals(sim.client, APP)
        assert max(first["start"], second["start"]) < min(first["end"], second["end"])


def test_calls_on_different_applications_at_once_are_no_overlap() -> None:
    with simulator(latency_s=0.3) as sim:
        access_token = token(sim.client)
        apps = [APP, "00Q000000000001", "00Q000000000002"]
        answers = asyncio.run(concurrent_contacts(sim.base_url, access_token, apps))
        assert [a.status_code for a in answers] == [200, 200, 200]
        got = stats(sim.client)
        assert (got["peak_in_flight"], got["peak_calls_per_record"]) == (3, 1)
        assert (got["overlapping_records"], got["arrivals_dropped"]) == (0, 0)
        sim.client.post("/_reset")
        assert sim.client.get("/_arrivals").json() == {"records": {}}


def test_slow_answer_outlasts_the_read_timeout_then_is_a_504_that_changed_nothing() -> None:
    with simulator() as sim:
        body = {"id": APP_15, "answers": ["slow", "ok"], "slow_s": 0.5}
        assert sim.client.post("/_script", json=body).json() == {"scripts": {APP: ["slow", "ok"]}}
        access_token = token(sim.client)
        with httpx.Client(base_url=sim.base_url, timeout=0.2) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                contact(impatient, access_token)
        wait_for(lambda: sim.client.get(f"/_arrivals/{APP}").status_code == 200)
        [held] = arrivals(sim.client, APP)
        assert (held["status"], held["code"], held["applied"]) == (504, None, False)
        assert held["end"] - held["start"] >= 0.5
        assert sim.client.get(f"/_applications/{APP}").json()["contact_enabled"] is False
        assert contact(sim.client, access_token).json() == SUCCESS  # the script moved on
        for bad_slow_s in (-1, "2", True):
            refused = sim.client.post("/_script", json={**body, "slow_s": bad_slow_s})
            assert refused.status_code == 400, bad_slow_s
