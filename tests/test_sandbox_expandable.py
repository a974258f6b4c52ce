"""The Expandable simulator over real HTTP: tokens, answers, scripts and its admin endpoints.
Each test starts its own server on a free port in a background thread and stops it at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from httpx import Response

from sandbox.expandable import NOTES_MAX, RECORD, ExpandableSimConfig, serve
from tests.conftest import simulator_cli, simulator_in_thread
from tests.conftest import wait_briefly as wait_for

pytestmark = pytest.mark.timeout(5)

LOGIN = "/api/auth-token-get"
UPDATE = "/api/customer-contact-update"
CREDENTIALS = {"DATA_SOURCE": "SANDBOX", "USER_NAME": "sandbox", "PASSWORD": "sandbox-password"}
JUAN = {"CUSTOMER_ID": "ABCCORP", "CUST_CONTACT": "JHERNANDEZ"}  # seeded at start


def simulator(**settings: Any) -> contextlib.AbstractContextManager[httpx.Client]:
    """A running simulator and a client for it; the server is stopped and joined on exit."""
    return simulator_in_thread(serve, ExpandableSimConfig(**settings))


def login(client: httpx.Client) -> str:
    answer = client.post(LOGIN, json=CREDENTIALS)
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["AUTH_TOKEN"]
    return token


def update(client: httpx.Client, token: str | None, **fields: Any) -> Response:
    body = {**JUAN, **fields} if token is None else {**JUAN, "AUTH_TOKEN": token, **fields}
    return client.post(UPDATE, json=body)


def stats(client: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = client.get("/_stats").json()
    return answer


def error(status: int, message: str, code: str) -> tuple[int, dict[str, str]]:
    return status, {"MESSAGE": message, "MESSAGE_CODE": code}


def test_update_answers_200_with_the_whole_record_in_the_documented_order() -> None:
    with simulator() as client:
        token = login(client)
        notes = "n" * NOTES_MAX
        answer = update(client, token, E_MAIL="j@example.com", NOTES=notes, ATTACHMENTS="a|b")
        assert answer.status_code == 200
        record = answer.json()
        assert list(record) == list(RECORD)
        assert (record["E_MAIL"], record["NOTES"], record["ATTACHMENTS"]) == (
            "j@example.com",
            notes,
            "a|b",
        )
        assert record["FIRST_NAME"] == "Juan"  # fields not sent are kept
        assert (record["MODIFIED_BY"], record["OPERATOR_ID"]) == ("SANDBOX", "SANDBOX")
        assert record["DATE_LAST_UPDT"] and record["TIME_LAST_UPDT"]
        assert "AUTH_TOKEN" not in record
        assert client.get("/_contacts/ABCCORP/JHERNANDEZ").json() == record
        # "" is a change too: it clears the field.
        assert update(client, token, FIRST_NAME="").json()["FIRST_NAME"] == ""


def test_login_with_wrong_credentials_is_401_and_counted() -> None:
    with simulator(password="s3cret") as client:
        for wrong in ({"PASSWORD": "nope"}, {"USER_NAME": "x"}, {"DATA_SOURCE": "PROD"}):
            body = {**CREDENTIALS, "PASSWORD": "s3cret", **wrong}
            answer = client.post(LOGIN, json=body)
            assert (answer.status_code, answer.json()) == error(
                401, "Auth Token login failure.", "AUTH_TOKEN_LOGIN_FAILURE"
            )
        assert client.post(LOGIN, content=b"{").status_code == 400
        assert client.post(LOGIN, json={"DATA_SOURCE": "SANDBOX"}).status_code == 400
        good = client.post(LOGIN, json={**CREDENTIALS, "PASSWORD": "s3cret"})
        assert good.status_code == 200
        assert len(good.json()["AUTH_TOKEN"]) == 32
        got = stats(client)
        assert (got["logins"], got["login_failures"]) == (1, 3)
        assert got["login_answers"] == {"200": 1, "400": 2, "401": 3}
        assert got["calls"] == 0


@pytest.mark.parametrize(
    ("token", "message", "code"),
    [
        (None, "Auth Token was not provided.", "AUTH_TOKEN_NOT_PROVIDED"),
        ("", "Auth Token was not provided.", "AUTH_TOKEN_NOT_PROVIDED"),
        ("not-a-token", "Auth Token is malformed.", "AUTH_TOKEN_MALFORMED"),
        (12345, "Auth Token is malformed.", "AUTH_TOKEN_MALFORMED"),
        ("0" * 32, "Auth Token login failure.", "AUTH_TOKEN_LOGIN_FAILURE"),
    ],
)
def test_bad_tokens_are_401_and_change_nothing(token: Any, message: str, code: str) -> None:
    with simulator() as client:
        answer = update(client, token, E_MAIL="x@example.com")
        assert (answer.status_code, answer.json()) == error(401, message, code)
        assert client.get("/_contacts/ABCCORP/JHERNANDEZ").json()["E_MAIL"] != "x@example.com"
        assert stats(client)["answers"] == {"401": 1}


def test_token_expires_after_its_ttl_and_a_new_login_works() -> None:
    with simulator(token_ttl_s=0.2) as client:
        token = login(client)
        assert update(client, token, CITY="A").status_code == 200
        wait_for(lambda: update(client, token, CITY="B").status_code == 401)
        expired = update(client, token, CITY="C")
        assert expired.json() == error(401, "Auth Token is expired.", "AUTH_TOKEN_EXPIRED")[1]
        fresh = login(client)
        assert fresh != token
        assert update(client, fresh, CITY="D").json()["CITY"] == "D"
        assert stats(client)["logins"] == 2


def test_expire_tokens_and_the_token_ttl_setting_apply_at_once() -> None:
    with simulator() as client:
        first, second = login(client), login(client)
        assert stats(client)["tokens_valid"] == 2
        assert client.post("/_expire_tokens").json() == {"expired": 2}
        assert update(client, first, CITY="X").json()["MESSAGE"] == "Auth Token is expired."
        assert update(client, second, CITY="X").status_code == 401
        third = login(client)
        assert update(client, third, CITY="Y").status_code == 200

        assert client.post("/_config", json={"token_ttl_s": 0}).json()["token_ttl_s"] == 0
        assert update(client, third, CITY="Z").json()["MESSAGE_CODE"] == "AUTH_TOKEN_EXPIRED"
        client.post("/_config", json={"token_ttl_s": 60})
        assert update(client, third, CITY="Z").status_code == 200  # the TTL is read per call


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "INVALID_JSON"),
        (b"\xff\xfe", "INVALID_JSON"),
        ([], "NOT_AN_OBJECT"),
        ({"CUST_CONTACT": "JHERNANDEZ", "CITY": "X"}, "MISSING_REQUIRED_FIELD"),
        ({**JUAN, "CUSTOMER_ID": 7, "CITY": "X"}, "MISSING_REQUIRED_FIELD"),
        ({**JUAN, "CITY": 7}, "WRONG_TYPE"),
        ({**JUAN, "CITY": None}, "WRONG_TYPE"),
        ({**JUAN, "NOTES": "n" * (NOTES_MAX + 1)}, "NOTES_TOO_LONG"),
        ({**JUAN, "city": "X"}, "UNKNOWN_FIELD"),
        ({**JUAN, "DATE_MODIFIED": "2026-01-01"}, "UNKNOWN_FIELD"),  # answered, not accepted
        (JUAN, "NO_FIELD_TO_UPDATE"),
    ],
)
def test_invalid_request_json_is_400(body: Any, code: str) -> None:
    with simulator() as client:
        token = login(client)
        if isinstance(body, bytes):
            answer = client.post(UPDATE, content=body)
        else:
            answer = client.post(UPDATE, json={**body, "AUTH_TOKEN": token} if body else body)
        assert (answer.status_code, answer.json()) == error(400, "Request JSON is invalid.", code)
        assert stats(client)["codes"] == {code: 1}


def test_unknown_customer_or_contact_is_a_500_business_error() -> None:
    with simulator() as client:
        token = login(client)
        no_customer = update(client, token, CUSTOMER_ID="NOBODY", CITY="X")
        assert (no_customer.status_code, no_customer.json()) == error(
            500, "Customer ID does not exist.", "CUSTOMER_NOT_FOUND"
        )
        no_contact = update(client, token, CUST_CONTACT="NOBODY", CITY="X")
        assert (no_contact.status_code, no_contact.json()) == error(
            500, "Customer Contact does not exist.", "CUST_CONTACT_NOT_FOUND"
        )
        assert client.get("/_contacts/ABCCORP/NOBODY").status_code == 404


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_on_both_endpoints(method: str) -> None:
    with simulator() as client:
        for path in (UPDATE, LOGIN):
            answer = client.request(method, path)
            assert (answer.status_code, answer.json()) == error(
                405, "Request method must be POST.", "METHOD_NOT_ALLOWED"
            )
        got = stats(client)
        assert (got["calls"], got["answers"], got["login_answers"]) == (1, {"405": 1}, {"405": 1})


def test_scripted_answers_in_order_with_the_last_sticky() -> None:
    answers = ["http-500", "http-502", "http-503", "http-504", "http-400", "http-405", "ok"]
    with simulator() as client:
        assert (
            client.post("/_script", json={"id": "ABCCORP", "answers": answers}).status_code == 200
        )
        token = login(client)
        got = [update(client, token, CITY=str(n)) for n in range(len(answers) + 1)]
        assert [a.status_code for a in got] == [500, 502, 503, 504, 400, 405, 200, 200]
        assert got[0].json() == error(500, "An unexpected error occurred.", "UNEXPECTED_ERROR")[1]
        assert got[1].headers["content-type"].startswith("text/html")
        assert "502 Bad Gateway" in got[1].text
        assert got[4].json()["MESSAGE"] == "Request JSON is invalid."
        assert got[5].json()["MESSAGE"] == "Request method must be POST."
        assert got[-1].json()["CITY"] == "7"  # only "ok" calls stored their change
        # Other customers are not scripted.
        assert update(client, token, CUSTOMER_ID="XYZINC", CUST_CONTACT="TJONES").status_code == 400
        assert stats(client)["calls_by_customer"] == {"ABCCORP": 8, "XYZINC": 1}


def test_scripted_401s_really_spoil_the_token_so_only_a_new_login_helps() -> None:
    with simulator(scripts={"ABCCORP": ["http-401-expired", "http-401-login", "ok"]}) as client:
        token = login(client)
        first = update(client, token, CITY="X")
        assert (first.status_code, first.json()["MESSAGE"]) == (401, "Auth Token is expired.")
        assert update(client, token, CITY="X").json()["MESSAGE"] == "Auth Token is expired."

        second_token = login(client)
        second = update(client, second_token, CITY="X")
        assert (second.status_code, second.json()["MESSAGE"]) == (401, "Auth Token login failure.")
        assert update(client, second_token, CITY="X").json()["MESSAGE_CODE"] == (
            "AUTH_TOKEN_LOGIN_FAILURE"
        )
        assert update(client, login(client), CITY="X").status_code == 200
        assert stats(client)["logins"] == 3


def test_down_503_answers_every_api_call_until_up_again() -> None:
    with simulator() as client:
        token = login(client)
        assert client.post("/_config", json={"down": "503"}).json()["down"] == "503"
        for answer in (client.post(LOGIN, json=CREDENTIALS), update(client, token, CITY="X")):
            assert answer.status_code == 503 and "Service Unavailable" in answer.text
        assert client.get(UPDATE).status_code == 503  # down even before the method check
        assert client.get("/_stats").status_code == 200  # admin endpoints stay up
        assert client.post("/_config", json={"down": None}).json()["down"] is None
        assert update(client, token, CITY="X").status_code == 200
        got = stats(client)
        assert (got["answers"], got["login_answers"]) == (
            {"200": 1, "503": 2},
            {"200": 1, "503": 1},
        )


async def concurrent_updates(base_url: str, token: str, n: int) -> list[Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=4) as client:
        body = {**JUAN, "AUTH_TOKEN": token, "CITY": "X"}
        return await asyncio.gather(*(client.post(UPDATE, json=body) for _ in range(n)))


def test_latency_and_in_flight_peak() -> None:
    with simulator(latency_s=0.2) as client:
        token = login(client)
        started = time.monotonic()
        answers = asyncio.run(concurrent_updates(str(client.base_url), token, 3))
        assert time.monotonic() - started < 0.55  # handled concurrently, not one after another
        assert [a.status_code for a in answers] == [200, 200, 200]
        got = stats(client)
        assert (got["calls"], got["in_flight"], got["peak_in_flight"]) == (3, 0, 3)
        assert got["answers"] == {"200": 3}


def test_add_contact_then_update_it_and_reset_restores_the_seed() -> None:
    with simulator(scripts={"NEWCO": ["http-500"]}) as client:
        added = client.post("/_contacts", json={"CUSTOMER_ID": "NEWCO", "CUST_CONTACT": "AB"})
        assert added.status_code == 200 and added.json()["CUSTOMER_ID"] == "NEWCO"
        token = login(client)
        assert update(client, token, CUSTOMER_ID="NEWCO", CUST_CONTACT="AB").status_code == 400
        assert update(
            client, token, CUSTOMER_ID="NEWCO", CUST_CONTACT="AB", CITY="Q"
        ).status_code == (500)
        client.post("/_reset")
        got = stats(client)
        assert (got["calls"], got["logins"], got["answers"], got["calls_by_customer"]) == (
            0,
            0,
            {},
            {},
        )
        assert client.get("/_contacts/NEWCO/AB").status_code == 404
        assert update(client, token, CITY="R").status_code == 200  # tokens survive a reset


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/_script", b"not json"),
        ("/_script", {"id": "ABCCORP", "answers": []}),
        ("/_script", {"id": "ABCCORP", "answers": ["http-418"]}),
        ("/_script", {"id": "ABCCORP"}),
        ("/_script", {"scripts": {"ABCCORP": "ok"}}),
        ("/_config", {"latency": 1}),
        ("/_config", {"latency_s": -1}),
        ("/_config", {"token_ttl_s": "60"}),
        ("/_config", {"token_ttl_s": True}),
        ("/_config", {"down": "500"}),
        ("/_config", {"down": True}),
        ("/_config", []),
        ("/_contacts", {"CUSTOMER_ID": "X"}),
        ("/_contacts", {"CUSTOMER_ID": "X", "CUST_CONTACT": "Y", "CITY": 1}),
        ("/_contacts", {"CUSTOMER_ID": "X", "CUST_CONTACT": "Y", "AUTH_TOKEN": "T"}),
    ],
)
def test_bad_admin_bodies_are_400_and_change_nothing(path: str, body: Any) -> None:
    with simulator() as client:
        kwargs: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        answer = client.post(path, **kwargs)
        assert answer.status_code == 400 and answer.json()["error"]
        assert client.get("/_config").json() == {
            "down": None,
            "latency_s": 0.0,
            "token_ttl_s": 1800,
            "login_refusal": 401,
        }
        assert client.get("/_contacts/X/Y").status_code == 404
        assert update(client, login(client), CITY="ok").status_code == 200  # no script was set


def test_config_infinity_is_refused() -> None:
    with simulator() as client:
        refused = client.post("/_config", content=b'{"token_ttl_s": Infinity}')
        assert refused.status_code == 400 and "token_ttl_s" in refused.json()["error"]


def test_cli_writes_the_port_file_never_prints_the_password_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    args = ("--password", "pw-123", "--data-source", "LIVE", "--username", "bob")
    with simulator_cli("expandable", *args, "--token-ttl", "60", tmp_path=tmp_path) as (
        process,
        url,
        line,
    ):
        assert line == f"expandable simulator listening on {url} (data_source=LIVE)"
        with httpx.Client(base_url=url, timeout=3) as client:
            creds = {"DATA_SOURCE": "LIVE", "USER_NAME": "bob", "PASSWORD": "pw-123"}
            token = client.post(LOGIN, json=creds).json()["AUTH_TOKEN"]
            answer = client.post(UPDATE, json={**JUAN, "AUTH_TOKEN": token, "CITY": "Z"})
            assert (answer.status_code, answer.json()["MODIFIED_BY"]) == (200, "BOB")
    assert process.stdout is not None
    assert "pw-123" not in line + process.stdout.read()


def test_request_log_names_paths_only_never_tokens_or_passwords(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sandbox.expandable")
    with simulator(password="pw-secret-9") as client:
        token = client.post(LOGIN, json={**CREDENTIALS, "PASSWORD": "pw-secret-9"}).json()
        update(client, token["AUTH_TOKEN"], E_MAIL="private@example.com")
    assert f"POST {UPDATE} 200" in caplog.text and f"POST {LOGIN} 200" in caplog.text
    for secret in ("pw-secret-9", token["AUTH_TOKEN"], "private@example.com"):
        assert secret not in caplog.text


# --- each contact's arrivals ------------------------------------------------------------------

MARY = {"CUSTOMER_ID": "ABCCORP", "CUST_CONTACT": "MSMITH"}  # seeded, same customer as Juan


def arrivals(client: httpx.Client, customer: str, contact: str) -> list[dict[str, Any]]:
    """GET /_arrivals/CUSTOMER/CONTACT, each part percent-encoded as the simulator's keys are."""
    answer = client.get(f"/_arrivals/{quote(customer, safe='')}/{quote(contact, safe='')}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["record"] == f"{quote(customer, safe='')}/{quote(contact, safe='')}"
    entries: list[dict[str, Any]] = answer.json()["arrivals"]
    return entries


def outline(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["n"], e["call"], e["status"], e["code"], e["applied"]) for e in entries]


def test_updates_are_logged_per_contact_in_order_with_codes_and_applied_flags() -> None:
    with simulator() as client:
        script = {"id": "ABCCORP/JHERNANDEZ", "answers": ["http-503", "http-500", "ok"]}
        assert client.post("/_script", json=script).status_code == 200
        token = login(client)
        statuses = [update(client, token, CITY=city).status_code for city in ("A", "B", "C")]
        assert statuses == [503, 500, 200]
        assert update(client, token, **MARY, CITY="M").status_code == 200  # not scripted

        entries = arrivals(client, "ABCCORP", "JHERNANDEZ")
        assert outline(entries) == [
            (1, "update", 503, None, False),
            (2, "update", 500, "UNEXPECTED_ERROR", False),
            (3, "update", 200, None, True),
        ]
        assert [e["fields"] for e in entries] == [{"CITY": "A"}, {"CITY": "B"}, {"CITY": "C"}]
        assert client.get("/_contacts/ABCCORP/JHERNANDEZ").json()["CITY"] == "C"
        records = client.get("/_arrivals").json()["records"]
        assert sorted(records) == ["ABCCORP/JHERNANDEZ", "ABCCORP/MSMITH"]
        assert client.get("/_arrivals/ABCCORP/NOBODY").status_code == 404


def test_a_contacts_script_wins_over_its_customers() -> None:
    scripts = {"ABCCORP": ["http-503"], "ABCCORP/MSMITH": ["http-500", "ok"]}
    with simulator(scripts=scripts) as client:
        token = login(client)
        assert update(client, token, CITY="X").status_code == 503  # the customer's script
        mary = [update(client, token, **MARY, CITY="X").status_code for _ in range(2)]
        assert mary == [500, 200]


def test_refused_tokens_and_bodies_naming_no_contact_are_not_logged_but_outages_are() -> None:
    with simulator() as client:
        token = login(client)
        update(client, "0" * 32, CITY="X")  # a token never issued: 401
        client.post(UPDATE, content=b"not json")
        client.post(UPDATE, json={"CUSTOMER_ID": "ABCCORP", "AUTH_TOKEN": token, "CITY": "X"})
        client.get(UPDATE)  # 405
        update(client, token)  # names the contact but changes nothing: 400
        update(client, token, CUST_CONTACT="NOBODY", CITY="X")  # 500, unknown contact
        client.post("/_config", json={"down": "503"})
        update(client, token, CITY="X")

        # n counts the calls that named a contact: the refused token's took number 1.
        assert outline(arrivals(client, "ABCCORP", "JHERNANDEZ")) == [
            (2, "update", 400, "NO_FIELD_TO_UPDATE", False),
            (4, "update", 503, None, False),
        ]
        assert outline(arrivals(client, "ABCCORP", "NOBODY")) == [
            (3, "update", 500, "CUST_CONTACT_NOT_FOUND", False)
        ]


@pytest.mark.parametrize(
    ("customer", "contact"),
    [("A/B", "C"), ("A", "B/C"), ("100% C", "K?x#1"), ("ÉCOLE", "J+K"), ("a%2Fb", "c")],
)
def test_ids_with_special_characters_are_unambiguous_records_and_script_ids(
    customer: str, contact: str
) -> None:
    with simulator() as client:
        assert (
            client.post(
                "/_contacts", json={"CUSTOMER_ID": customer, "CUST_CONTACT": contact, "CITY": "Old"}
            ).status_code
            == 200
        )
        script_id = f"{quote(customer, safe='')}/{quote(contact, safe='')}"
        script = {"id": script_id, "answers": ["http-503", "ok"]}
        assert list(client.post("/_script", json=script).json()["scripts"]) == [script_id]
        token = login(client)
        named = {"CUSTOMER_ID": customer, "CUST_CONTACT": contact}
        assert [update(client, token, **named, CITY="New").status_code for _ in "ab"] == [503, 200]

        assert outline(arrivals(client, customer, contact)) == [
            (1, "update", 503, None, False),
            (2, "update", 200, None, True),
        ]
        assert list(client.get("/_arrivals").json()["records"]) == [script_id]


def test_script_ids_are_normalised_and_bad_ones_refused() -> None:
    with simulator() as client:
        answer = client.post("/_script", json={"scripts": {"A B": ["ok"], "A%20B/K": ["ok"]}})
        assert list(answer.json()["scripts"]) == ["A%20B", "A%20B/K"]
        for bad in ("A/B/C", "A/", "/K"):
            refused = client.post("/_script", json={"id": bad, "answers": ["ok"]})
            assert refused.status_code == 400 and "CUSTOMER/CONTACT" in refused.json()["error"]


def test_two_updates_of_one_contact_at_once_are_an_overlap_and_of_two_contacts_are_not() -> None:
    with simulator(latency_s=0.3) as client:
        token = login(client)
        answers = asyncio.run(concurrent_updates(str(client.base_url), token, 2))
        assert [a.status_code for a in answers] == [200, 200]
        got = stats(client)
        assert (got["peak_calls_per_record"], got["overlapping_records"]) == (2, 1)

        client.post("/_reset")
        assert client.get("/_arrivals").json() == {"records": {}}
        assert (stats(client)["peak_calls_per_record"], stats(client)["overlapping_records"]) == (
            0,
            0,
        )
        bodies = [
            {**JUAN, "AUTH_TOKEN": token, "CITY": "X"},
            {**MARY, "AUTH_TOKEN": token, "CITY": "Y"},
        ]
        answers = asyncio.run(concurrent_posts(str(client.base_url), bodies))
        assert [a.status_code for a in answers] == [200, 200]
        got = stats(client)
        assert (got["peak_in_flight"], got["peak_calls_per_record"]) == (2, 1)
        assert got["overlapping_records"] == 0


async def concurrent_posts(base_url: str, bodies: list[dict[str, Any]]) -> list[Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=4) as client:
        return await asyncio.gather(*(client.post(UPDATE, json=body) for body in bodies))


def test_slow_answer_outlasts_the_read_timeout_then_is_a_504_that_changed_nothing() -> None:
    with simulator() as client:
        script = {"id": "ABCCORP", "answers": ["slow", "ok"], "slow_s": 0.5}
        assert client.post("/_script", json=script).status_code == 200
        token = login(client)
        with httpx.Client(base_url=str(client.base_url), timeout=0.2) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                update(impatient, token, CITY="Slow")
        wait_for(lambda: client.get("/_arrivals/ABCCORP/JHERNANDEZ").status_code == 200)
        [held] = arrivals(client, "ABCCORP", "JHERNANDEZ")
        assert (held["status"], held["code"], held["applied"]) == (504, None, False)
        assert held["end"] - held["start"] >= 0.5
        assert client.get("/_contacts/ABCCORP/JHERNANDEZ").json()["CITY"] != "Slow"
        assert update(client, token, CITY="Later").status_code == 200  # the script moved on
        assert client.post("/_script", json={**script, "slow_s": None}).status_code == 200
        not_a_number = b'{"id": "ABCCORP", "answers": ["slow"], "slow_s": NaN}'
        assert client.post("/_script", content=not_a_number).status_code == 400
