"""Trendsic connector: the job model's validation at the door, every row of CRM_APIS.md §3 sent
through the client to the real simulator (respx where the simulator cannot answer so), the
read-merge-write that keeps dates the job leaves out, and the fleet's one token."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import respx

from sandbox.trendsic import TrendsicSimConfig, serve
from tasks.delivery import Answer, NotConfigured
from tasks.models import JobValidationError, model_for, validate_job
from tasks.outcomes import Delivered, Reauth, Rejected, Retry, Review
from tasks.trendsic import (
    READ,
    UPDATE,
    TrendsicClient,
    TrendsicContactConnection,
    deliver,
)
from tests.conftest import simulator_in_thread
from worker.settings import TrendsicSettings, get_settings

pytestmark = pytest.mark.timeout(10)

KIND = "trendsic.contact_connection"
USERNAME, PASSWORD, API_KEY = "sandbox-user", "sandbox-pass", "sandbox-api-key"
SEEDED_BIRTH = "1980-01-01T00:00:00.0000000"  # DateOfBirth of seeded contact 1001
# Personal values of the jobs below: none may reach a reason or an answer.
PERSONAL = {
    "Phone": "555-0199",
    "SSN": "123-45-6789",
    "EmailWork": "jane.doe@example.com",
    "FirstName": "Janet",
    "DateOfBirth": "1979-12-31T00:00:00.0000000Z",
}


def job(contact_id: int = 1001, agent_id: int = 7, /, **contact: Any) -> TrendsicContactConnection:
    fields = contact or {"Phone": PERSONAL["Phone"]}
    built = validate_job(KIND, {"contact_id": contact_id, "agent_id": agent_id, "contact": fields})
    assert isinstance(built, TrendsicContactConnection)
    return built


def refusal(contact: Any = None, **data: Any) -> list[tuple[str, str]]:
    payload = {"contact_id": 1001, "agent_id": 7, "contact": contact, **data}
    with pytest.raises(JobValidationError) as caught:
        validate_job(KIND, payload)
    text = str(caught.value)
    for value in PERSONAL.values():
        assert value not in text
    return caught.value.problems


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def prefix(monkeypatch: pytest.MonkeyPatch, redis_server: str) -> Iterator[str]:
    """A key prefix of this test's own (tokens, gates), and settings pointing at the test Valkey
    (``destination_gate`` reads them)."""
    key_prefix = f"t{uuid.uuid4().hex[:8]}:"
    monkeypatch.setenv("CONTACTSYNC_REDIS_URL", redis_server)
    monkeypatch.setenv("CONTACTSYNC_KEY_PREFIX", key_prefix)
    get_settings.cache_clear()
    yield key_prefix
    get_settings.cache_clear()


@pytest.fixture
def sim() -> Iterator[httpx.Client]:
    """The Trendsic simulator in a thread; the client talks to its admin endpoints."""
    with simulator_in_thread(serve, TrendsicSimConfig()) as admin:
        yield admin


def connector(base_url: Any, client: redis.Redis, prefix: str, **settings: Any) -> TrendsicClient:
    values = {
        "username": USERNAME,
        "password": PASSWORD,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 2.0,
        **settings,
    }
    return TrendsicClient(TrendsicSettings(base_url=str(base_url), **values), client, prefix)


def stats(sim: httpx.Client) -> dict[str, Any]:
    return dict(sim.get("/_stats").json())


def script(sim: httpx.Client, contact_id: int, *answers: str) -> None:
    sim.post("/_script", json={"id": contact_id, "answers": list(answers)}).raise_for_status()


def stored(sim: httpx.Client, contact_id: int) -> dict[str, Any]:
    return dict(sim.get(f"/_contacts/{contact_id}").json())


def assert_nothing_leaks(answer: Answer, secrets: list[str]) -> None:
    for text in (answer.answer, answer.outcome.reason, answer.outcome.code):
        for value in [*secrets, *PERSONAL.values()]:
            assert value not in text, f"{value!r} leaked into {text!r}"


# -- the job at the door ------------------------------------------------------------------------
def test_a_valid_job_keeps_only_the_given_fields_and_survives_the_ledger_round_trip() -> None:
    built = job(**{**PERSONAL, "DeletedDateTimeUtc": None, "Active": True, "Rate": 2})

    again = TrendsicContactConnection.model_validate_json(built.model_dump_json())

    assert again == built
    assert again.changes() == {**PERSONAL, "DeletedDateTimeUtc": None, "Active": True, "Rate": 2.0}
    assert model_for(KIND) is TrendsicContactConnection


def test_masked_shows_only_the_ids_and_masks_every_contact_value() -> None:
    shown = job(**PERSONAL, AgentId=12345).masked()

    assert (shown["contact_id"], shown["agent_id"]) == (1001, 7)
    assert set(shown["contact"]) == {*PERSONAL, "AgentId"}
    text = json.dumps(shown)
    for value in [*PERSONAL.values(), "12345"]:
        assert value not in text


def test_a_misspelt_field_is_refused_naming_it_and_the_likely_meant_one() -> None:
    problems = refusal({"FirstNme": "Janet", "address_Line1": "1 Main St"})

    assert problems == [
        (
            "contact",
            "unknown field FirstNme (did you mean FirstName?); unknown "
            "field address_Line1 (did you mean address_line1?); Contact field "
            "names are ServiceStack's, case-sensitive",
        )
    ]


def test_a_key_that_is_not_a_field_name_is_not_echoed() -> None:
    problems = refusal({PERSONAL["SSN"]: "x"})

    assert problems[0][1].startswith("a field name that is not a Contact field")


@pytest.mark.parametrize(
    "value",
    [
        "1980-01-03T00:00:00",  # no fraction
        "1980-01-03T00:00:00.000Z",  # 3 digits, not 7
        "1980-02-30T00:00:00.0000000",  # no such day
        "1980-01-03 00:00:00.0000000",
        "1980-01-03T00:00:00.0000000+2:00",
        "1979-12-31T00:00:00.00000000Z",
    ],
)
def test_dates_must_be_servicestack_iso_8601_with_7_fractional_digits(value: str) -> None:
    problems = refusal({"DateOfBirth": value})

    assert problems == [
        (
            "contact.DateOfBirth",
            "must be an ISO-8601 date with exactly 7 "
            "fractional digits, optionally Z or +hh:mm, e.g. "
            "2026-11-23T09:30:00.0000000; 0001-01-01T00:00:00.0000000 means unset",
        )
    ]
    assert value not in str(problems)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-23T09:30:00.0000000",
        "2026-11-23T09:30:00.1234567Z",
        "2026-11-23T09:30:00.0000000+05:30",
        "0001-01-01T00:00:00.0000000",
    ],
)
def test_dates_with_z_an_offset_or_unset_are_accepted(value: str) -> None:
    assert job(LastContact=value).changes() == {"LastContact": value}


def test_each_bad_field_is_named_and_no_value_is_echoed() -> None:
    problems = dict(
        refusal(
            {
                "ContactGUID": "0000-not-hex-" + PERSONAL["SSN"],
                "DoNotContact": "yes",
                "AgentId": "7",
                "FirstName": 5,
                "EmailWork": "jane.doe@",
                "Rate": float("inf"),
                "JobCount": 2**31,
            }
        )
    )

    assert problems == {
        "contact.ContactGUID": "must be 32 hex digits without dashes or braces",
        "contact.DoNotContact": "Input should be a valid boolean",
        "contact.AgentId": "Input should be a valid integer",
        "contact.FirstName": "Input should be a valid string",
        "contact.EmailWork": "not an e-mail address (name@example.com); send null to clear it",
        "contact.Rate": "Input should be a finite number",
        "contact.JobCount": "Input should be less than or equal to 2147483647",
    }


def test_null_clears_a_string_or_the_nullable_date_but_not_a_non_nullable_value() -> None:
    assert job(Tags=None, DeletedDateTimeUtc=None).changes() == {
        "Tags": None,
        "DeletedDateTimeUtc": None,
    }

    problems = dict(refusal({"DateCreated": None, "Active": None, "ContactGUID": None}))

    assert problems == {
        "contact.DateCreated": "cannot be null (a non-nullable .NET value): leave it out to keep "
        "it, or send 0001-01-01T00:00:00.0000000 to reset it",
        "contact.Active": "cannot be null (a non-nullable .NET value): leave it out to keep it, "
        "or send false to reset it",
        "contact.ContactGUID": "cannot be null (a non-nullable .NET value): leave it out to keep "
        "it, or send 32 zeros to reset it",
    }


@pytest.mark.parametrize("contact", [{}, {"ContactId": 1001}])
def test_a_job_must_change_at_least_one_field(contact: dict[str, Any]) -> None:
    assert refusal(contact) == [
        (
            "contact",
            "no field to change: give at least one Contact field besides ContactId, e.g. Phone",
        )
    ]


def test_contact_id_inside_the_contact_must_be_the_job_s() -> None:
    assert refusal({"ContactId": 1002, "Phone": "1"}) == [
        ("(job)", "contact.ContactId must equal contact_id (or be left out)")
    ]
    assert job(ContactId=1001, Phone="1").changes() == {"ContactId": 1001, "Phone": "1"}


def test_ids_are_positive_integers_and_the_contact_is_required() -> None:
    problems = dict(refusal({"Phone": "1"}, contact_id=0, agent_id="7"))
    assert problems == {
        "contact_id": "Input should be greater than 0",
        "agent_id": "Input should be a valid integer",
    }
    with pytest.raises(JobValidationError) as caught:
        validate_job(KIND, {"contact_id": 1, "agent_id": 1})
    assert caught.value.problems == [("contact", "Field required")]


# -- configuration --------------------------------------------------------------------------------
def test_missing_settings_raise_not_configured_naming_them(prefix: str) -> None:
    with pytest.raises(NotConfigured, match="CONTACTSYNC_TRENDSIC__BASE_URL"):
        TrendsicClient(TrendsicSettings())
    with pytest.raises(NotConfigured) as caught:
        TrendsicClient(TrendsicSettings(base_url="https://api.test"))
    assert "CONTACTSYNC_TRENDSIC__API_KEY (or USERNAME)" in str(caught.value)
    assert "CONTACTSYNC_TRENDSIC__API_KEY (or PASSWORD)" in str(caught.value)


def test_the_task_is_registered_on_the_trendsic_queue() -> None:
    assert deliver.name == "trendsic.deliver"
    assert deliver.queue == "trendsic"


# -- delivery: read, merge, write ---------------------------------------------------------------
def test_update_reads_first_and_a_date_not_in_the_job_survives(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    before = stored(sim, 1001)
    assert before["DateOfBirth"] == SEEDED_BIRTH  # the quirk would reset it to 0001-01-01

    answer = connector(sim.base_url, client, prefix).send(job(Phone=PERSONAL["Phone"], Tags="vip"))

    assert answer == Answer(
        Delivered("http-200", f"Trendsic answered HTTP 200 to {UPDATE}: OK"),
        "HTTP 200",
        measured=True,
    )
    after = stored(sim, 1001)
    assert after == {**before, "Phone": PERSONAL["Phone"], "Tags": "vip"}
    assert stats(sim)["calls_by_method"] == {"GET": 1, "POST": 1}


def test_update_sends_the_merged_record_with_the_route_ids_and_the_bearer(
    client: redis.Redis, prefix: str
) -> None:
    record = {
        "ContactId": 1001,
        "FirstName": "Test01",
        "DateCreated": "2023-11-01T09:15:00.0000000",
        "Unknown": "kept as read",
    }
    with respx.mock(base_url="https://api.test", assert_all_called=True) as api:
        api.get("/v1/ContactConnections/1001").respond(200, json={"Contact": [record]})
        update = api.post("/v1/ContactConnections/1001").respond(200, json={"Contact": []})
        answer = connector("https://api.test", client, prefix, api_key="k-1").send(
            job(1001, 9, Phone="555-0100", FirstName=None)
        )

    assert isinstance(answer.outcome, Delivered)
    request = update.calls.last.request
    assert request.headers["Authorization"] == "Bearer k-1"
    assert json.loads(request.content) == {
        "Contact": [{**record, "Phone": "555-0100", "FirstName": None}],
        "ContactId": 1001,
        "AgentId": 9,
    }


# -- the error table, on the read and on the update ---------------------------------------------
# (scripted answer, outcome class, code, what the operator reads after "to <stage>: ").
TABLE = [
    (
        "http-400",
        Rejected,
        "http-400",
        "HTTP 400 ValidationException to {stage}: validation "
        "failed; fix these fields in the job, then requeue: Contact[0].EmailWork (Email: 'Email "
        "Work' is not a valid email address.)",
    ),
    (
        "http-403",
        Review,
        "http-403",
        "HTTP 403 Forbidden to {stage}: Invalid Role: the API user "
        "needs the Worker, Agent or Administrator role in Trendsic; grant one, then requeue",
    ),
    (
        "http-404",
        Rejected,
        "http-404",
        "HTTP 404 NotFound to {stage}: no contact has this ContactId in Trendsic",
    ),
    (
        "http-409",
        Retry,
        "http-409",
        "HTTP 409 Conflict to {stage}: the contact changed while it "
        "was sent; the next attempt reads it again and merges the changes over the new record",
    ),
    (
        "http-500",
        Retry,
        "http-500",
        "HTTP 500 Exception to {stage}: Trendsic failed while handling the call",
    ),
]


@pytest.mark.parametrize("stage", [READ, UPDATE])
@pytest.mark.parametrize(
    ("scripted", "expected", "code", "reason"), TABLE, ids=[row[0] for row in TABLE]
)
def test_every_servicestack_error_settles_as_the_table_says(
    sim: httpx.Client,
    client: redis.Redis,
    prefix: str,
    scripted: str,
    expected: type,
    code: str,
    reason: str,
    stage: str,
) -> None:
    script(sim, 1001, *(["ok", scripted] if stage == UPDATE else [scripted]))

    answer = connector(sim.base_url, client, prefix).send(job(**PERSONAL))

    assert type(answer.outcome) is expected
    assert answer.outcome.code == code
    assert answer.outcome.reason == f"Trendsic answered {reason.format(stage=stage)}"
    if isinstance(answer.outcome, Retry):
        assert (answer.outcome.bounded, answer.outcome.down) == (True, False)
    assert answer.answer.startswith(f"HTTP {code[5:]} ")
    assert stats(sim)["calls_by_method"] == ({"GET": 1} if stage == READ else {"GET": 1, "POST": 1})
    assert stored(sim, 1001)["Phone"] != PERSONAL["Phone"]
    assert_nothing_leaks(answer, [PASSWORD])


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize("stage", [READ, UPDATE])
def test_gateway_errors_are_retries_that_count_towards_a_pause(
    sim: httpx.Client, client: redis.Redis, prefix: str, status: int, stage: str
) -> None:
    script(sim, 1001, *(["ok", f"http-{status}"] if stage == UPDATE else [f"http-{status}"]))

    answer = connector(sim.base_url, client, prefix).send(job())

    assert answer.outcome == Retry(
        f"http-{status}",
        f"Trendsic answered HTTP {status} (down or overloaded)",
        bounded=True,
        down=True,
    )
    assert answer.answer.startswith(f"HTTP {status}: ")
    assert "text/html" in answer.answer
    assert not answer.measured


def test_a_real_invalid_role_goes_to_review(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    sim.post("/_config", json={"role": "Guest"}).raise_for_status()

    outcome = connector(sim.base_url, client, prefix).send(job()).outcome

    assert isinstance(outcome, Review)
    assert "Worker, Agent or Administrator" in outcome.reason


def test_a_contact_that_does_not_exist_is_rejected_on_the_read(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    answer = connector(sim.base_url, client, prefix).send(job(4242))

    assert answer.outcome == Rejected(
        "http-404",
        f"Trendsic answered HTTP 404 NotFound to {READ}: no contact has this ContactId in Trendsic",
    )
    assert answer.answer == (
        'HTTP 404 {"ErrorCode": "NotFound", "Message": "Contact 4242 not found"}'
    )
    assert stats(sim)["calls_by_method"] == {"GET": 1}


def test_after_a_409_the_next_attempt_reads_again_and_delivers(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    script(sim, 1001, "ok", "http-409", "ok")
    trendsic = connector(sim.base_url, client, prefix)

    first = trendsic.send(job())
    second = trendsic.send(job())

    assert isinstance(first.outcome, Retry)
    assert "changed while it was sent" in first.outcome.reason
    assert isinstance(second.outcome, Delivered)
    assert stats(sim)["calls_by_method"] == {"GET": 2, "POST": 2}


def test_a_400_reports_each_field_and_masks_values_the_messages_quote(
    client: redis.Redis, prefix: str
) -> None:
    errors = [
        {
            "ErrorCode": "Email",
            "FieldName": "Contact[0].EmailWork",
            "Message": f"'{PERSONAL['EmailWork']}' is not a valid email address.",
            "Meta": {},
        },
        {
            "ErrorCode": "Length",
            "FieldName": "Contact[0].SSN",
            "Message": f"'SSN' must be 9 digits. You entered '{PERSONAL['SSN']}'.",
            "Meta": {},
        },
        {
            "ErrorCode": "NotEmpty",
            "FieldName": "Contact[0].LastName",
            "Message": "'Last Name' must not be empty (was 'Contact01').",
            "Meta": {},
        },
    ]
    body = {
        "ResponseStatus": {
            "ErrorCode": "ValidationException",
            "Message": errors[0]["Message"],
            "Errors": errors,
        }
    }
    with respx.mock(base_url="https://api.test") as api:
        api.get("/v1/ContactConnections/1001").respond(
            200, json={"Contact": [{"ContactId": 1001, "LastName": "Contact01"}]}
        )
        api.post("/v1/ContactConnections/1001").respond(400, json=body)
        answer = connector("https://api.test", client, prefix, api_key="k-1").send(
            job(EmailWork=PERSONAL["EmailWork"], SSN=PERSONAL["SSN"])
        )

    assert answer.outcome == Rejected(
        "http-400",
        (
            f"Trendsic answered HTTP 400 ValidationException to {UPDATE}: validation failed; fix "
            "these fields in the job, then requeue: Contact[0].EmailWork (Email: '***' is not a "
            "valid email address.); Contact[0].SSN (Length: 'SSN' must be 9 digits. You entered "
            "'***'.); Contact[0].LastName (NotEmpty: 'Last Name' must not be empty (was '***').)"
        ),
    )
    assert answer.answer == (
        'HTTP 400 {"ErrorCode": "ValidationException", "Message": "\'***\' is not a valid email '
        'address.", "Errors": "Contact[0].EmailWork, Contact[0].SSN, Contact[0].LastName"}'
    )
    assert answer.measured
    assert_nothing_leaks(answer, ["Contact01"])


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        (418, {"ResponseStatus": {"ErrorCode": "Teapot"}}, Review, "http-418"),
        (200, {"Contact": []}, Review, "unexpected-read"),
        (200, {"Contact": [{"SSN": PERSONAL["SSN"]}, {}]}, Review, "unexpected-read"),
        (200, "<html>not json</html>", Review, "unexpected-read"),
        (204, "", Review, "unexpected-read"),
    ],
)
def test_an_answer_outside_the_table_goes_to_review(
    client: redis.Redis, prefix: str, status: int, body: Any, expected: type, code: str
) -> None:
    with respx.mock(base_url="https://api.test", assert_all_called=False) as api:
        route = api.get("/v1/ContactConnections/1001")
        if isinstance(body, str):
            route.respond(status, text=body, headers={"content-type": "text/html"})
        else:
            route.respond(status, json=body)
        update = api.post("/v1/ContactConnections/1001").respond(200, json={})
        answer = connector("https://api.test", client, prefix, api_key="k-1").send(job())

    assert type(answer.outcome) is expected
    assert answer.outcome.code == code
    assert "a person decides" in answer.outcome.reason
    assert not update.called
    assert_nothing_leaks(answer, [])


# -- transport errors ---------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("auth", [{"api_key": API_KEY}, {}], ids=["api-key", "credentials-login"])
def test_nothing_listening_is_a_retry_towards_a_pause(
    client: redis.Redis, prefix: str, auth: dict[str, str]
) -> None:
    trendsic = connector(f"http://127.0.0.1:{_closed_port()}", client, prefix, **auth)

    answer = trendsic.send(job())

    assert answer == Answer(
        Retry("ConnectError", "could not connect to Trendsic", bounded=True, down=True),
        "ConnectError",
    )


def test_no_answer_within_the_read_timeout_is_a_bounded_retry(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    sim.post("/_config", json={"latency_s": 1.0}).raise_for_status()
    trendsic = connector(sim.base_url, client, prefix, api_key=API_KEY, read_timeout_s=0.2)

    outcome = trendsic.send(job()).outcome

    assert outcome == Retry(
        "ReadTimeout",
        "Trendsic did not answer within the read timeout; the "
        "call is safe to repeat, so it is sent again",
        bounded=True,
    )


# -- auth ---------------------------------------------------------------------------------------
def test_the_fleet_logs_in_once_and_reuses_the_token(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    first = connector(sim.base_url, client, prefix)
    second = connector(sim.base_url, client, prefix)

    answers = [first.send(job(1001)), second.send(job(1002)), first.send(job(1003))]

    assert all(isinstance(a.outcome, Delivered) for a in answers)
    assert (stats(sim)["logins"], stats(sim)["refreshes"]) == (1, 0)


def test_an_expired_token_is_refreshed_once_for_many_threads_and_clients(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    clients = [connector(sim.base_url, client, prefix) for _ in range(3)]
    assert isinstance(clients[0].send(job(1010)).outcome, Delivered)  # the fleet's one login
    assert sim.post("/_expire_tokens").json() == {"expired": 1}
    start = threading.Barrier(9)
    answers: dict[int, Answer] = {}

    def send(trendsic: TrendsicClient, contact_id: int) -> None:
        start.wait(timeout=5)
        answers[contact_id] = trendsic.send(job(contact_id))

    threads = [threading.Thread(target=send, args=(clients[n % 3], 1001 + n)) for n in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=8)

    assert sorted(answers) == list(range(1001, 1010))
    assert all(isinstance(a.outcome, Delivered) for a in answers.values()), answers
    got = stats(sim)
    assert (got["logins"], got["refreshes"], got["refresh_failures"]) == (1, 1, 0)


def test_a_refused_refresh_token_falls_back_to_the_credentials(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    sim.post("/_config", json={"refresh_ttl_s": 0}).raise_for_status()  # born expired
    trendsic = connector(sim.base_url, client, prefix)
    assert isinstance(trendsic.send(job()).outcome, Delivered)
    sim.post("/_expire_tokens").raise_for_status()

    answer = trendsic.send(job())

    assert isinstance(answer.outcome, Delivered)
    got = stats(sim)
    assert (got["logins"], got["refreshes"], got["refresh_failures"]) == (2, 0, 1)


@pytest.mark.parametrize("stage", [READ, UPDATE])
def test_a_401_is_refreshed_once_resent_once_then_reauth_naming_the_settings(
    sim: httpx.Client, client: redis.Redis, prefix: str, stage: str
) -> None:
    script(sim, 1001, *(["ok", "http-401"] if stage == UPDATE else ["http-401"]))

    answer = connector(sim.base_url, client, prefix).send(job())

    assert answer.outcome == Reauth(
        "http-401",
        (
            f"Trendsic answered HTTP 401 Unauthorized to {stage}: the bearer token was refused; so "
            "was a fresh one fetched for the fleet: check CONTACTSYNC_TRENDSIC__USERNAME and "
            "CONTACTSYNC_TRENDSIC__PASSWORD"
        ),
    )
    assert not answer.measured
    got = stats(sim)
    assert (got["logins"], got["refreshes"]) == (1, 1)
    calls = {"GET": 2} if stage == READ else {"GET": 1, "POST": 2}
    assert got["calls_by_method"] == calls


def test_a_job_refreshes_its_token_at_most_once_across_the_read_and_the_update(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    script(sim, 1001, "http-401", "ok", "http-401")  # read refused, read again, update refused

    outcome = connector(sim.base_url, client, prefix).send(job()).outcome

    assert isinstance(outcome, Reauth)
    assert outcome.reason.startswith(f"Trendsic answered HTTP 401 Unauthorized to {UPDATE}")
    got = stats(sim)
    assert (got["refreshes"], got["calls_by_method"]) == (1, {"GET": 2, "POST": 1})


def test_a_refused_api_key_is_reauth_naming_it_without_any_login(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    trendsic = connector(sim.base_url, client, prefix, api_key="not-the-key")

    answer = trendsic.send(job())

    assert answer.outcome == Reauth(
        "http-401",
        (
            f"Trendsic answered HTTP 401 TokenException to {READ}: the bearer token was refused; "
            "the API key is static, so there is nothing to refresh: check "
            "CONTACTSYNC_TRENDSIC__API_KEY"
        ),
    )
    assert (stats(sim)["logins"], stats(sim)["calls"]) == (0, 1)
    assert_nothing_leaks(answer, ["not-the-key"])


def test_the_api_key_is_the_bearer_and_needs_no_login(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    answer = connector(sim.base_url, client, prefix, api_key=API_KEY).send(job())

    assert isinstance(answer.outcome, Delivered)
    assert stats(sim)["logins"] == 0


def test_a_refused_login_is_reauth_naming_the_settings_and_no_secret(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    wrong = "wrong-password-123"
    answer = connector(sim.base_url, client, prefix, password=wrong).send(job())

    assert answer.outcome == Reauth(
        "login-failed",
        (
            "Trendsic login failed: HTTP 401 Unauthorized; check "
            "CONTACTSYNC_TRENDSIC__USERNAME and CONTACTSYNC_TRENDSIC__PASSWORD"
        ),
    )
    assert stats(sim)["login_failures"] == 1
    assert stats(sim)["calls"] == 0
    assert_nothing_leaks(answer, [wrong])


def test_a_login_while_trendsic_is_down_is_a_retry_not_a_credentials_problem(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    sim.post("/_config", json={"down": "503"}).raise_for_status()

    answer = connector(sim.base_url, client, prefix).send(job())

    assert answer.outcome == Retry(
        "http-503", "Trendsic answered HTTP 503 (down or overloaded)", bounded=True, down=True
    )


def test_a_token_given_only_as_the_ss_tok_cookie_is_used(client: redis.Redis, prefix: str) -> None:
    with respx.mock(base_url="https://api.test", assert_all_called=True) as api:
        api.post("/auth/credentials").respond(
            200,
            json={"SessionId": "s1", "ResponseStatus": {}},
            headers=[
                ("set-cookie", "ss-tok=jwt-from-cookie; path=/; HttpOnly"),
                ("set-cookie", "ss-reftok=rt-cookie; path=/; HttpOnly"),
            ],
        )
        read = api.get("/v1/ContactConnections/1001").respond(
            200, json={"Contact": [{"ContactId": 1001}]}
        )
        api.post("/v1/ContactConnections/1001").respond(200, json={"Contact": []})
        trendsic = connector("https://api.test", client, prefix)
        answer = trendsic.send(job())

    assert isinstance(answer.outcome, Delivered)
    assert read.calls.last.request.headers["Authorization"] == "Bearer jwt-from-cookie"
    assert {"jwt-from-cookie", "rt-cookie"} <= set(trendsic.secrets())


# -- secrets ------------------------------------------------------------------------------------
def _cached_token(client: redis.Redis, prefix: str) -> dict[str, Any]:
    keys = [
        k for k in client.scan_iter(f"{prefix}token:*") if not str(k).endswith((":lock", ":logins"))
    ]
    assert len(keys) == 1
    return dict(json.loads(str(client.get(keys[0]))))


def test_no_secret_or_token_reaches_an_answer_or_a_reason(
    sim: httpx.Client, client: redis.Redis, prefix: str
) -> None:
    trendsic = connector(sim.base_url, client, prefix)
    answers = [trendsic.send(job(**PERSONAL))]
    sim.post("/_expire_tokens").raise_for_status()
    answers.append(trendsic.send(job(1002, **PERSONAL)))  # refreshed
    for scripted in ("http-400", "http-401", "http-403", "http-500", "http-503"):
        script(sim, 1003, "ok", scripted)
        answers.append(trendsic.send(job(1003, **PERSONAL)))
    cached = _cached_token(client, prefix)

    secrets = trendsic.secrets()
    assert {PASSWORD, cached["value"], cached["data"]["refresh_token"]} <= set(secrets)
    assert [type(a.outcome) for a in answers] == [
        Delivered,
        Delivered,
        Rejected,
        Reauth,
        Review,
        Retry,
        Retry,
    ]
    for answer in answers:
        assert_nothing_leaks(answer, secrets)


def test_the_api_key_is_a_secret_to_scrub(client: redis.Redis, prefix: str) -> None:
    trendsic = connector("https://api.test", client, prefix, api_key="k-secret")

    assert set(trendsic.secrets()) == {"k-secret", PASSWORD}
