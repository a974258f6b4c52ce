"""The Trendsic (ServiceStack) simulator over real HTTP: auth, ContactConnections, validation,
the omitted-date quirk, scripts, roles and the admin endpoints. Each test starts its own server
on a free port in a background thread and stops it at the end."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx import Response

from sandbox.trendsic import UNSET_DATE, TrendsicSimConfig, serve
from tests.conftest import simulator_cli, simulator_in_thread
from tests.conftest import wait_briefly as wait_for

pytestmark = pytest.mark.timeout(5)

API_KEY = "sandbox-api-key"
CREDENTIALS = {"UserName": "sandbox-user", "Password": "sandbox-pass", "RememberMe": True}
PATH = "/v1/ContactConnections/{}"


def simulator(**settings: Any) -> contextlib.AbstractContextManager[httpx.Client]:
    """A running simulator and a client for it; the server is stopped and joined on exit."""
    return simulator_in_thread(serve, TrendsicSimConfig(**settings))


def bearer(token: str = API_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def read(client: httpx.Client, contact_id: int | str, token: str = API_KEY) -> Response:
    return client.get(PATH.format(contact_id), headers=bearer(token))


def write(
    client: httpx.Client,
    contact_id: int,
    contact: dict[str, Any],
    method: str = "POST",
    token: str = API_KEY,
    **body: Any,
) -> Response:
    payload = {"Contact": [contact], "ContactId": contact_id, "AgentId": 7, **body}
    return client.request(method, PATH.format(contact_id), json=payload, headers=bearer(token))


def login(client: httpx.Client) -> dict[str, Any]:
    answer = client.post("/auth/credentials", json=CREDENTIALS)
    assert answer.status_code == 200, answer.text
    session: dict[str, Any] = answer.json()
    return session


def stats(client: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = client.get("/_stats").json()
    return answer


def error_of(answer: Response) -> dict[str, Any]:
    status: dict[str, Any] = answer.json()["ResponseStatus"]
    return status


# --- auth -------------------------------------------------------------------------------------


def test_credentials_login_answers_servicestack_tokens_that_authorize_calls() -> None:
    with simulator() as client:
        session = login(client)
        assert set(session) == {
            "UserId",
            "SessionId",
            "UserName",
            "BearerToken",
            "RefreshToken",
            "ResponseStatus",
        }
        assert (session["UserName"], session["ResponseStatus"]) == ("sandbox-user", {})
        answer = read(client, 1001, token=session["BearerToken"])
        assert answer.status_code == 200
        assert answer.json()["Contact"][0]["ContactId"] == 1001
        assert stats(client)["logins"] == 1


def test_wrong_password_is_401_with_a_response_status_and_never_a_token() -> None:
    with simulator() as client:
        answer = client.post("/auth/credentials", json={**CREDENTIALS, "Password": "nope"})
        assert answer.status_code == 401
        assert answer.json() == {
            "ResponseStatus": {
                "ErrorCode": "Unauthorized",
                "Message": "Invalid UserName or Password",
                "Errors": [],
            }
        }
        missing = client.post("/auth/credentials", json={"UserName": "sandbox-user"})
        assert missing.status_code == 400
        assert [e["FieldName"] for e in error_of(missing)["Errors"]] == ["Password"]
        assert (stats(client)["logins"], stats(client)["login_failures"]) == (0, 1)


def test_missing_or_unknown_bearer_is_401_and_the_api_key_works_without_login() -> None:
    with simulator() as client:
        assert client.get(PATH.format(1001)).status_code == 401
        unknown = read(client, 1001, token="bt-forged")
        assert (unknown.status_code, error_of(unknown)["ErrorCode"]) == (401, "TokenException")
        assert read(client, 1001).status_code == 200  # the API key
        client.post("/_expire_tokens")
        assert read(client, 1001).status_code == 200  # the API key never expires
        assert stats(client)["answers"] == {"200": 2, "401": 2}


def test_expired_bearer_is_401_then_the_refresh_token_gets_a_working_one() -> None:
    with simulator() as client:
        session = login(client)
        assert read(client, 1001, token=session["BearerToken"]).status_code == 200
        assert client.post("/_expire_tokens").json() == {"expired": 1}
        expired = read(client, 1001, token=session["BearerToken"])
        assert expired.status_code == 401

        refreshed = client.post("/access-token", json={"RefreshToken": session["RefreshToken"]})
        assert refreshed.status_code == 200
        assert set(refreshed.json()) == {"AccessToken"}
        assert read(client, 1001, token=refreshed.json()["AccessToken"]).status_code == 200

        bad = client.post("/access-token", json={"RefreshToken": "rt-forged"})
        assert bad.status_code == 401
        assert (stats(client)["refreshes"], stats(client)["refresh_failures"]) == (1, 1)


def test_token_ttl_elapses_to_token_has_expired() -> None:
    with simulator(token_ttl_s=0) as client:  # every bearer is issued already expired
        session = login(client)
        expired = read(client, 1001, token=session["BearerToken"])
        assert (expired.status_code, error_of(expired)["Message"]) == (401, "Token has expired")
        client.post("/_config", json={"token_ttl_s": 3600})
        fresh = client.post("/access-token", json={"RefreshToken": session["RefreshToken"]})
        assert read(client, 1001, token=fresh.json()["AccessToken"]).status_code == 200


# --- reads and writes -------------------------------------------------------------------------


def test_read_answers_the_full_contact_dto_and_unknown_is_404() -> None:
    with simulator() as client:
        contact = read(client, 1003).json()["Contact"][0]
        assert contact["DateOfBirth"] == "1980-01-03T00:00:00.0000000"
        assert len(contact["ContactGUID"]) == 32
        assert "DeletedDateTimeUtc" not in contact  # null properties are left out
        assert len(contact) > 40
        unknown = read(client, 999)
        assert (unknown.status_code, error_of(unknown)["ErrorCode"]) == (404, "NotFound")


def test_merged_update_keeps_every_field_and_both_post_and_put_work() -> None:
    with simulator() as client:
        merged = {**read(client, 1001).json()["Contact"][0], "Phone": "555-9999"}
        answer = write(client, 1001, merged)
        assert answer.status_code == 200
        assert answer.json()["Contact"][0] == merged
        put = write(client, 1001, {**merged, "Tags": "vip"}, method="PUT")
        assert put.json()["Contact"][0]["Tags"] == "vip"
        assert client.get("/_contacts/1001").json() == {**merged, "Tags": "vip"}
        assert stats(client)["calls_by_method"] == {"GET": 1, "POST": 1, "PUT": 1}


def test_quirk_an_update_omitting_non_nullable_dates_resets_them_to_unset() -> None:
    with simulator() as client:
        before = read(client, 1002).json()["Contact"][0]
        answer = write(client, 1002, {"ContactId": 1002, "Phone": "555-0000"})
        after = answer.json()["Contact"][0]
        assert answer.status_code == 200
        for name in ("DateOfBirth", "DateCreated", "LastContact", "ProjectEndDate"):
            assert after[name] == UNSET_DATE, name
        assert before["DateOfBirth"] != UNSET_DATE  # data the non-merging client lost
        assert (after["Phone"], after["FirstName"]) == ("555-0000", before["FirstName"])


def test_update_of_an_unknown_contact_is_404() -> None:
    with simulator() as client:
        answer = write(client, 4242, {"ContactId": 4242, "Phone": "1"}, method="PUT")
        assert (answer.status_code, error_of(answer)["ErrorCode"]) == (404, "NotFound")


def test_validation_reports_one_error_per_bad_field() -> None:
    with simulator() as client:
        contact = {
            "DateOfBirth": "1980-01-03T00:00:00",  # no fractional digits
            "LastContact": "2024-02-30T10:00:00.0000000",  # no such day
            "DateCreated": "2024-01-01T10:00:00.000Z",  # 3 digits, not 7
            "ContactGUID": "0000-not-hex",
            "DoNotContact": "yes",
            "AgentId": "7",
            "FirstName": 5,
            "ContactId": 1,
        }
        answer = write(client, 1001, contact, ContactId=1002)
        assert answer.status_code == 400
        status = error_of(answer)
        assert status["ErrorCode"] == "ValidationException"
        assert status["Message"] == status["Errors"][0]["Message"]
        by_field = {e["FieldName"]: e["ErrorCode"] for e in status["Errors"]}
        assert by_field == {
            "ContactId": "Equal",
            "Contact[0].DateOfBirth": "InvalidFormat",
            "Contact[0].LastContact": "InvalidFormat",
            "Contact[0].DateCreated": "InvalidFormat",
            "Contact[0].ContactGUID": "InvalidFormat",
            "Contact[0].DoNotContact": "InvalidType",
            "Contact[0].AgentId": "InvalidType",
            "Contact[0].FirstName": "InvalidType",
            "Contact[0].ContactId": "Equal",
        }
        assert all(e["Meta"] == {} for e in status["Errors"])
        assert client.get("/_contacts/1001").json()["Phone"] == "555-0101"  # nothing stored


def test_validation_of_the_request_envelope() -> None:
    with simulator() as client:
        no_contact = client.post(PATH.format(1001), json={"ContactId": 1001}, headers=bearer())
        fields = [e["FieldName"] for e in error_of(no_contact)["Errors"]]
        assert (no_contact.status_code, fields) == (400, ["AgentId", "Contact"])
        two = write(client, 1001, {}, Contact=[{}, {}], AgentId=0)
        assert [e["FieldName"] for e in error_of(two)["Errors"]] == ["AgentId", "Contact"]
        not_json = client.post(PATH.format(1001), content=b"{", headers=bearer())
        assert error_of(not_json)["ErrorCode"] == "SerializationException"
        bad_id = read(client, "abc")
        assert (bad_id.status_code, error_of(bad_id)["Errors"][0]["FieldName"]) == (
            400,
            "ContactId",
        )


def test_valid_dates_with_offset_or_z_and_a_null_nullable_date_are_accepted() -> None:
    with simulator() as client:
        merged = read(client, 1004).json()["Contact"][0]
        merged |= {
            "DateOfBirth": "1979-12-31T00:00:00.0000000Z",
            "LastContact": "2024-05-01T08:00:00.1234567-05:00",
            "DeletedDateTimeUtc": None,
            "ContactGUID": "ABCDEF0123456789abcdef0123456789",
            "Rate": 1.5,
        }
        answer = write(client, 1004, merged)
        assert answer.status_code == 200, answer.text
        assert answer.json()["Contact"][0]["Rate"] == 1.5


# --- scripts, roles, down ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        ("http-400", 400, "ValidationException"),
        ("http-401", 401, "Unauthorized"),
        ("http-403", 403, "Forbidden"),
        ("http-404", 404, "NotFound"),
        ("http-409", 409, "Conflict"),
        ("http-500", 500, "Exception"),
    ],
)
def test_scripted_servicestack_errors(answer: str, status: int, code: str) -> None:
    with simulator() as client:
        assert client.post("/_script", json={"id": 1001, "answers": [answer]}).status_code == 200
        got = write(client, 1001, read(client, 1005).json()["Contact"][0] | {"ContactId": 1001})
        assert (got.status_code, error_of(got)["ErrorCode"]) == (status, code)
        if status == 400:
            assert error_of(got)["Errors"][0]["FieldName"] == "Contact[0].EmailWork"


@pytest.mark.parametrize("status", [502, 503, 504])
def test_scripted_gateway_errors_are_html_not_json(status: int) -> None:
    with simulator() as client:
        client.post("/_script", json={"id": "1001", "answers": [f"http-{status}"]})
        got = read(client, 1001)
        assert got.status_code == status
        assert got.headers["content-type"].startswith("text/html")


def test_script_answers_in_order_and_the_last_is_sticky_per_contact() -> None:
    with simulator(scripts={"1001": ["http-503", "ok", "http-409"]}) as client:
        codes = [read(client, 1001).status_code for _ in range(4)]
        assert codes == [503, 200, 409, 409]
        assert read(client, 1002).status_code == 200
        assert stats(client)["calls_by_contact"] == {"1001": 4, "1002": 1}


def test_guest_role_is_403_invalid_role() -> None:
    with simulator() as client:
        client.post("/_config", json={"role": "Guest"})
        answer = read(client, 1001)
        assert answer.status_code == 403
        assert answer.json()["ResponseStatus"]["Message"] == "Invalid Role"
        assert error_of(answer)["ErrorCode"] == "Forbidden"
        client.post("/_config", json={"role": "Worker"})
        assert read(client, 1001).status_code == 200


def test_down_answers_503_to_everything_but_admin() -> None:
    with simulator() as client:
        assert client.post("/_config", json={"down": "503"}).json()["down"] == "503"
        assert read(client, 1001).status_code == 503
        assert client.post("/auth/credentials", json=CREDENTIALS).status_code == 503
        assert client.get("/_stats").status_code == 200
        client.post("/_config", json={"down": None})
        assert read(client, 1001).status_code == 200


# --- admin ------------------------------------------------------------------------------------


def test_stats_count_methods_answers_contacts_and_in_flight_peak() -> None:
    with simulator(latency_s=0.2) as client:
        base_url = str(client.base_url)
        done: list[int] = []

        def slow_read() -> None:
            with httpx.Client(base_url=base_url, timeout=3) as other:
                done.append(read(other, 1001).status_code)

        threads = [threading.Thread(target=slow_read) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_for(lambda: stats(client)["in_flight"] == 2)
        for thread in threads:
            thread.join(timeout=3)
        assert done == [200, 200]
        got = stats(client)
        assert (got["in_flight"], got["peak_in_flight"], got["calls"]) == (0, 2, 2)
        assert got["answers"] == {"200": 2}
        assert got["calls_by_method"] == {"GET": 2}


def test_contacts_endpoint_adds_records_and_reset_restores_the_seed() -> None:
    with simulator(seed_contacts=False) as client:
        assert read(client, 1001).status_code == 404
        added = client.post("/_contacts", json={"77": {"FirstName": "Ann", "Active": True}})
        assert added.json() == {"contacts": [77]}
        stored = client.get("/_contacts/77").json()
        assert (stored["ContactId"], stored["FirstName"], stored["DateOfBirth"]) == (
            77,
            "Ann",
            UNSET_DATE,
        )
        assert client.get("/_contacts/78").status_code == 404
        client.post("/_script", json={"id": 77, "answers": ["http-500"]})
        assert client.post("/_reset").json() == {"reset": True}
        assert client.get("/_contacts/77").status_code == 404
        assert stats(client)["calls"] == 0


def test_reset_restores_seeded_contacts_and_clears_scripts() -> None:
    with simulator() as client:
        write(client, 1001, {"ContactId": 1001})
        client.post("/_script", json={"id": 1001, "answers": ["http-500"]})
        client.post("/_reset")
        answer = read(client, 1001)
        assert answer.status_code == 200
        assert answer.json()["Contact"][0]["DateOfBirth"] != UNSET_DATE


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_script", {"id": 1001}),
        ("/_script", {"id": 1001, "answers": []}),
        ("/_script", {"id": 1001, "answers": ["http-418"]}),
        ("/_script", {"id": True, "answers": ["ok"]}),
        ("/_config", {"latency_s": -1}),
        ("/_config", {"token_ttl_s": "soon"}),
        ("/_config", {"role": ""}),
        ("/_config", {"down": "500"}),
        ("/_config", {"slots": 3}),
        ("/_config", [1]),
        ("/_contacts", {"abc": {}}),
        ("/_contacts", {"1": {"DateOfBirth": "yesterday"}}),
        ("/_contacts", {}),
    ],
)
def test_bad_admin_bodies_are_400(path: str, body: Any) -> None:
    with simulator() as client:
        answer = client.post(path, json=body)
        assert answer.status_code == 400
        assert "error" in answer.json()


def test_admin_body_that_is_not_json_is_400() -> None:
    with simulator() as client:
        answer = client.post("/_config", content=b"{nope")
        assert answer.status_code == 400


def test_cli_writes_the_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    args = ("--latency", "0", "--api-key", "k2", "--script", "1001=http-409,ok")
    with simulator_cli("trendsic", *args, tmp_path=tmp_path) as (_, url, line):
        assert line == f"trendsic simulator listening on {url}"
        with httpx.Client(base_url=url, timeout=3) as client:
            assert read(client, 1001, token="k2").status_code == 409
            assert read(client, 1001, token="k2").status_code == 200
            assert read(client, 1001).status_code == 401  # the default key is not configured


# --- each contact's arrivals ------------------------------------------------------------------


def arrivals(client: httpx.Client, contact_id: int | str) -> list[dict[str, Any]]:
    answer = client.get(f"/_arrivals/{contact_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["record"] == str(contact_id)
    entries: list[dict[str, Any]] = answer.json()["arrivals"]
    return entries


def outline(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["n"], e["call"], e["status"], e["code"], e["applied"]) for e in entries]


async def concurrent_reads(base_url: str, contact_ids: list[int]) -> list[Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=4) as client:
        calls = [client.get(PATH.format(c), headers=bearer()) for c in contact_ids]
        return await asyncio.gather(*calls)


def test_reads_and_writes_are_separate_arrivals_in_order_with_what_they_applied() -> None:
    with simulator() as client:
        stored = read(client, 1001).json()["Contact"][0]
        client.post("/_script", json={"id": 1001, "answers": ["http-409", "ok"]})
        assert write(client, 1001, {**stored, "FirstName": "Lost"}).status_code == 409
        merged = read(client, 1001).json()["Contact"][0]
        assert write(client, 1001, {**merged, "FirstName": "Newest"}).status_code == 200

        entries = arrivals(client, 1001)
        assert outline(entries) == [
            (1, "read", 200, None, False),
            (2, "write", 409, "Conflict", False),
            (3, "read", 200, None, False),
            (4, "write", 200, None, True),
        ]
        assert [e["fields"].get("FirstName") for e in entries] == [None, "Lost", None, "Newest"]
        assert entries[0]["fields"] == {} and entries[3]["fields"]["ContactId"] == 1001
        assert all(a["end"] <= b["start"] for a, b in itertools.pairwise(entries))
        assert client.get("/_contacts/1001").json()["FirstName"] == "Newest"
        assert list(client.get("/_arrivals").json()["records"]) == ["1001"]
        assert client.get("/_arrivals/1002").status_code == 404


def test_refused_credentials_and_roles_are_not_logged_but_outages_and_bad_calls_are() -> None:
    with simulator() as client:
        read(client, 1001, token="bt-forged")  # 401
        client.post("/_config", json={"role": "Guest"})
        read(client, 1001)  # 403 Invalid Role
        client.post("/_config", json={"role": "Agent", "down": "503"})
        read(client, 1001)  # the gateway's 503
        client.post("/_config", json={"down": None})
        client.post(PATH.format(1001), content=b"not json", headers=bearer())
        read(client, "abc")

        assert outline(arrivals(client, 1001)) == [
            (3, "read", 503, None, False),
            (4, "write", 400, "SerializationException", False),
        ]
        assert outline(arrivals(client, "abc")) == [(5, "read", 400, "ValidationException", False)]


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [("http-503", 503, None), ("http-500", 500, "Exception"), ("http-409", 409, "Conflict")],
)
def test_scripted_busy_and_fault_answers_are_logged_not_applied(
    answer: str, status: int, code: str | None
) -> None:
    with simulator(scripts={"1001": [answer, "ok"]}) as client:
        assert write(client, 1001, {"FirstName": "Refused"}).status_code == status
        assert write(client, 1001, {"FirstName": "Kept"}).status_code == 200
        assert outline(arrivals(client, 1001)) == [
            (1, "write", status, code, False),
            (2, "write", 200, None, True),
        ]
        assert client.get("/_contacts/1001").json()["FirstName"] == "Kept"


def test_two_reads_of_one_contact_at_once_overlap_but_a_read_then_its_write_do_not() -> None:
    with simulator(latency_s=0.3) as client:
        stored = read(client, 1001).json()["Contact"][0]
        write(client, 1001, stored)  # one job: its read, then its write
        assert (stats(client)["peak_calls_per_record"], stats(client)["overlapping_records"]) == (
            1,
            0,
        )
        answers = asyncio.run(concurrent_reads(str(client.base_url), [1001, 1001]))
        assert [a.status_code for a in answers] == [200, 200]
        after = stats(client)
        assert (after["peak_calls_per_record"], after["overlapping_records"]) == (2, 1)


def test_reads_of_different_contacts_at_once_are_no_overlap_and_reset_clears_the_log() -> None:
    with simulator(latency_s=0.3) as client:
        answers = asyncio.run(concurrent_reads(str(client.base_url), [1001, 1002, 1003]))
        assert [a.status_code for a in answers] == [200, 200, 200]
        after = stats(client)
        assert (after["peak_in_flight"], after["peak_calls_per_record"]) == (3, 1)
        assert (after["overlapping_records"], after["arrivals_dropped"]) == (0, 0)
        client.post("/_reset")
        assert client.get("/_arrivals").json() == {"records": {}}


def test_slow_answer_outlasts_the_read_timeout_then_is_a_504_that_changed_nothing() -> None:
    with simulator() as client:
        stored = read(client, 1001).json()["Contact"][0]
        script = {"id": 1001, "answers": ["slow", "ok"], "slow_s": 0.5}
        assert client.post("/_script", json=script).status_code == 200
        with httpx.Client(base_url=str(client.base_url), timeout=0.2) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                write(impatient, 1001, {**stored, "FirstName": "Slow"})
        wait_for(lambda: len(arrivals(client, 1001)) == 2)
        held = arrivals(client, 1001)[1]
        assert (held["call"], held["status"], held["applied"]) == ("write", 504, False)
        assert held["end"] - held["start"] >= 0.5 and held["fields"]["FirstName"] == "Slow"
        assert client.get("/_contacts/1001").json()["FirstName"] == stored["FirstName"]
        assert client.post("/_script", json={**script, "slow_s": -1}).status_code == 400
