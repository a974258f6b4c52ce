"""Expandable connector: the job model at the door, every row of CRM_APIS.md §4 against the real
simulator (respx where the simulator cannot answer so), the fleet's shared token, and secrets."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as RedisRetry

from sandbox import expandable as expandable_sim
from sandbox.expandable import ExpandableSimConfig, serve
from tasks.delivery import Answer, NotConfigured
from tasks.expandable import (
    FIELDS,
    KEYS,
    NOTES_MAX,
    ExpandableClient,
    ExpandableContactUpdate,
    ExpandableDelivery,
    _client,
    deliver,
)
from tasks.models import JobValidationError, validate_job
from tasks.outcomes import Delivered, Reauth, Rejected, Retry, Review
from tests.conftest import simulator_in_thread
from worker.credentials import SharedToken, Token
from worker.settings import ExpandableSettings, get_settings

pytestmark = pytest.mark.timeout(10)

KIND = "expandable.contact_update"
PASSWORD = "pw-Xq7-expandable-secret"
JUAN = {"CUSTOMER_ID": "ABCCORP", "CUST_CONTACT": "JHERNANDEZ"}  # seeded in the simulator
PRIVATE_E_MAIL = "juan.private@example.com"
SETTINGS_NAMED = (
    "CONTACTSYNC_EXPANDABLE__DATA_SOURCE",
    "CONTACTSYNC_EXPANDABLE__USERNAME",
    "CONTACTSYNC_EXPANDABLE__PASSWORD",
)


def job(**fields: Any) -> ExpandableContactUpdate:
    data = {**JUAN, **(fields or {"E_MAIL": PRIVATE_E_MAIL})}
    built = validate_job(KIND, data)
    assert isinstance(built, ExpandableContactUpdate)
    return built


def refusal(data: dict[str, Any]) -> JobValidationError:
    with pytest.raises(JobValidationError) as caught:
        validate_job(KIND, data)
    return caught.value


# -- the job at the door ---------------------------------------------------------------------------
def test_a_valid_job_sends_expandables_own_field_names_and_only_what_it_sets() -> None:
    update = job(E_MAIL=PRIVATE_E_MAIL, FIRST_NAME="", ATTACHMENTS="http://x.test/|C:\\a.docx")

    assert update.body() == {
        **JUAN,
        "E_MAIL": PRIVATE_E_MAIL,
        "FIRST_NAME": "",
        "ATTACHMENTS": "http://x.test/|C:\\a.docx",
    }
    stored = json.loads(update.model_dump_json())
    assert stored["CUST_CONTACT"] == "JHERNANDEZ" and stored["E_MAIL"] == PRIVATE_E_MAIL
    assert ExpandableContactUpdate.model_validate_json(update.model_dump_json()) == update


def test_only_the_two_keys_are_public_everything_else_is_masked() -> None:
    shown = job(E_MAIL=PRIVATE_E_MAIL, LAST_NAME="Hernandez").masked()

    assert shown["CUSTOMER_ID"] == "ABCCORP" and shown["CUST_CONTACT"] == "JHERNANDEZ"
    assert PRIVATE_E_MAIL not in json.dumps(shown) and "Hernandez" not in json.dumps(shown)


def test_the_job_knows_the_same_fields_as_the_simulator_both_read_from_the_page() -> None:
    assert (KEYS, FIELDS) == (expandable_sim.KEYS, expandable_sim.FIELDS)
    assert set(ExpandableContactUpdate.model_fields) == {*KEYS, *FIELDS}
    assert NOTES_MAX == expandable_sim.NOTES_MAX


def test_notes_of_exactly_the_documented_maximum_are_accepted() -> None:
    assert len(job(NOTES="n" * NOTES_MAX).body()["NOTES"]) == NOTES_MAX


REFUSALS = [
    # (what the job holds, the path named, a fragment of the message)
    ({"CUST_CONTACT": "JHERNANDEZ", "CITY": "Secret-City"}, "CUSTOMER_ID", "Field required"),
    ({**JUAN, "CUST_CONTACT": "", "CITY": "Secret-City"}, "CUST_CONTACT", "at least 1"),
    ({**JUAN, "CUSTOMER_ID": "S" * 65, "CITY": "Secret-City"}, "CUSTOMER_ID", "at most 64"),
    ({**JUAN, "CUST_CONTACT": " JHERNANDEZ", "CITY": "Secret-City"}, "CUST_CONTACT", "spaces"),
    ({**JUAN, "CUSTOMER_ID": 7, "CITY": "Secret-City"}, "CUSTOMER_ID", "valid string"),
    (dict(JUAN), "(job)", "at least one field to change"),
    ({**JUAN, "CITY": None}, "(job)", "at least one field to change"),
    ({**JUAN, "NOTES": "Secret-note " * 2731}, "NOTES", "at most 32765 characters"),
    ({**JUAN, "ATTACHMENTS": "Secret-a||Secret-b"}, "ATTACHMENTS", "item 2 of 3 is empty"),
    ({**JUAN, "ATTACHMENTS": "Secret-a|"}, "ATTACHMENTS", "item 2 of 2 is empty"),
    ({**JUAN, "ATTACHMENTS": "| Secret-a"}, "ATTACHMENTS", "item 1 of 2 is empty"),
    ({**JUAN, "E_MAIL": "Secret at example"}, "E_MAIL", "not an e-mail address"),
    ({**JUAN, "E_MAIL_2": "Secret@localhost"}, "E_MAIL_2", "not an e-mail address"),
    ({**JUAN, "PHONE_NO": 5550100}, "PHONE_NO", "valid string"),
    ({**JUAN, "CITY": "Secret\x00City"}, "CITY", "control characters"),
    ({**JUAN, "CUSTOMER_ID": "ABC\tSecret", "CITY": "X"}, "CUSTOMER_ID", "control characters"),
    ({**JUAN, "FIRST_NAME": "Secret" * 700}, "FIRST_NAME", "at most 4000"),
    ({**JUAN, "EMAIL": "Secret@x.com"}, "(job)", "EMAIL: no such field; did you mean E_MAIL?"),
    ({**JUAN, "e_mail": "Secret@x.com"}, "(job)", "e_mail: no such field; did you mean E_MAIL"),
    ({**JUAN, "SOFCT_USER_17": "Secret"}, "(job)", "one of SOFCT_USER_1 to SOFCT_USER_16"),
    ({**JUAN, "ZIP": "Secret"}, "(job)", "the fields are CUSTOMER_ID, CUST_CONTACT, CONTACT_STA"),
    ({**JUAN, "CITY": "X", "AUTH_TOKEN": "Secret0TOKEN"}, "(job)", "AUTH_TOKEN: credentials never"),
    ({**JUAN, "CITY": "X", "PASSWORD": "Secret-pw"}, "(job)", "CONTACTSYNC_EXPANDABLE__PASSWORD"),
    ({**JUAN, "MODIFIED_BY": "Secret"}, "(job)", "MODIFIED_BY: Expandable sets this audit field"),
    ({**JUAN, "CITY": "X", "Secret@example.com": "x"}, "(job)", "not a field name (not shown)"),
]


@pytest.mark.parametrize(("data", "path", "message"), REFUSALS)
def test_a_refusal_names_the_field_and_never_echoes_the_value(
    data: dict[str, Any], path: str, message: str
) -> None:
    error = refusal(data)

    assert error.kind == KIND
    assert any(p == path and message in m for p, m in error.problems), error.problems
    assert "Secret" not in str(error)


def test_no_field_to_change_lists_the_fields_that_exist() -> None:
    (problem,) = refusal(dict(JUAN)).problems

    for name in ("CONTACT_STATUS", "E_MAIL_2", "SOFCT_USER_16", "NOTES", "ATTACHMENTS"):
        assert name in problem[1]


def test_every_bad_field_is_reported_at_once() -> None:
    error = refusal({**JUAN, "E_MAIL": "nope", "NOTES": "n" * (NOTES_MAX + 1), "ZIP_CODE": 1})

    assert {path for path, _ in error.problems} == {"E_MAIL", "NOTES", "ZIP_CODE"}


# -- the client against the simulator --------------------------------------------------------------
@pytest.fixture(autouse=True)
def _settings_env(monkeypatch: pytest.MonkeyPatch, redis_server: str) -> Iterator[None]:
    """``destination_gate`` reads the settings (Redis URL, key prefix): point them at the test
    Valkey, each test under its own prefix."""
    monkeypatch.setenv("CONTACTSYNC_REDIS_URL", redis_server)
    monkeypatch.setenv("CONTACTSYNC_KEY_PREFIX", fresh_prefix())
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def fresh_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}:"


def settings_for(url: str, **overrides: Any) -> ExpandableSettings:
    values: dict[str, Any] = {
        "base_url": url,
        "data_source": "SANDBOX",
        "username": "sandbox",
        "password": PASSWORD,
        "read_timeout_s": 2.0,
        **overrides,
    }
    return ExpandableSettings(**values)


@contextlib.contextmanager
def simulator(**config: Any) -> Iterator[httpx.Client]:
    with simulator_in_thread(serve, ExpandableSimConfig(**{"password": PASSWORD, **config})) as c:
        yield c


def connector(sim: httpx.Client, client: Redis, prefix: str, **overrides: Any) -> ExpandableClient:
    return ExpandableClient(
        settings_for(str(sim.base_url), **overrides), token_cache=client, prefix=prefix
    )


def script(sim: httpx.Client, *answers: str) -> None:
    sim.post("/_script", json={"id": "ABCCORP", "answers": list(answers)}).raise_for_status()


def stats(sim: httpx.Client) -> dict[str, Any]:
    answer: dict[str, Any] = sim.get("/_stats").json()
    return answer


def test_200_is_delivered_and_keeps_only_the_records_keys(client: Redis) -> None:
    with simulator() as sim:
        answer = connector(sim, client, fresh_prefix()).send(job(E_MAIL=PRIVATE_E_MAIL))

        assert answer.outcome == Delivered("200", "HTTP 200: customer contact updated")
        assert answer.answer == "HTTP 200 CUSTOMER_ID=ABCCORP CUST_CONTACT=JHERNANDEZ"
        assert answer.measured
        assert sim.get("/_contacts/ABCCORP/JHERNANDEZ").json()["E_MAIL"] == PRIVATE_E_MAIL
        assert (stats(sim)["logins"], stats(sim)["calls"]) == (1, 1)


def test_400_request_json_is_invalid_is_rejected(client: Redis) -> None:
    with simulator() as sim:
        script(sim, "http-400")
        answer = connector(sim, client, fresh_prefix()).send(job())

    assert answer.outcome == Rejected(
        "INVALID_JSON",
        "HTTP 400 INVALID_JSON 'Request JSON is invalid.': Expandable refused "
        "the request as invalid (a field name, type or length it does not accept); fix the job, "
        "then requeue",
    )
    assert answer.answer == "HTTP 400 MESSAGE_CODE=INVALID_JSON MESSAGE='Request JSON is invalid.'"
    assert not answer.measured


def test_401_expired_token_is_renewed_once_and_the_call_sent_again(client: Redis) -> None:
    with simulator() as sim:
        script(sim, "http-401-expired", "ok")
        answer = connector(sim, client, fresh_prefix()).send(job())

        assert isinstance(answer.outcome, Delivered)
        assert not answer.measured  # the latency covers a login and two calls
        got = stats(sim)
        assert (got["logins"], got["calls"], got["answers"]) == (2, 2, {"200": 1, "401": 1})


@pytest.mark.parametrize(
    ("cached", "code"),
    [
        ("", "AUTH_TOKEN_NOT_PROVIDED"),
        ("not-a-token", "AUTH_TOKEN_MALFORMED"),
        ("0" * 32, "AUTH_TOKEN_LOGIN_FAILURE"),  # well formed, never issued (or forgotten)
    ],
)
def test_401_for_a_missing_malformed_or_unknown_token_renews_it(
    client: Redis, cached: str, code: str
) -> None:
    with simulator() as sim:
        expandable = connector(sim, client, prefix := fresh_prefix())
        seed = SharedToken(
            client, expandable.shared_token.name, lambda _: Token(cached), prefix=prefix
        )
        seed.get()

        answer = expandable.send(job())

        assert isinstance(answer.outcome, Delivered)
        got = stats(sim)
        assert (got["logins"], got["codes"]) == (1, {code: 1})


def test_401_again_after_the_renewal_is_reauth_naming_the_settings(client: Redis) -> None:
    with simulator() as sim:
        script(sim, "http-401-expired", "http-401-login")
        answer = connector(sim, client, fresh_prefix()).send(job())

        assert isinstance(answer.outcome, Reauth)
        assert answer.outcome.code == "AUTH_TOKEN_LOGIN_FAILURE"
        assert answer.outcome.reason.startswith(
            "HTTP 401 AUTH_TOKEN_LOGIN_FAILURE 'Auth Token login failure.': Expandable refused "
            "a freshly fetched AUTH_TOKEN: check CONTACTSYNC_EXPANDABLE__DATA_SOURCE"
        )
        assert all(name in answer.outcome.reason for name in SETTINGS_NAMED)
        got = stats(sim)
        assert (got["logins"], got["calls"]) == (2, 2)  # renewed once, sent again once


def test_a_refused_login_is_reauth_naming_the_settings_and_no_secret(client: Redis) -> None:
    with simulator(password="the-right-one") as sim:
        answer = connector(sim, client, fresh_prefix()).send(job())

        assert isinstance(answer.outcome, Reauth)
        assert answer.outcome.code == "login-failed"
        assert answer.outcome.reason == (
            "Expandable refused the login (HTTP 401): check CONTACTSYNC_EXPANDABLE__DATA_SOURCE, "
            "CONTACTSYNC_EXPANDABLE__USERNAME and CONTACTSYNC_EXPANDABLE__PASSWORD"
        )
        assert PASSWORD not in answer.outcome.reason + answer.answer
        got = stats(sim)
        assert (got["login_failures"], got["calls"]) == (1, 0)


def test_405_is_rejected_and_pauses_the_destination(client: Redis) -> None:
    with simulator() as sim:
        script(sim, "http-405")
        answer = connector(sim, client, fresh_prefix()).send(job())

    assert isinstance(answer.outcome, Rejected)
    assert answer.outcome.pause
    assert answer.outcome.code == "METHOD_NOT_ALLOWED"
    assert answer.outcome.reason.startswith(
        "HTTP 405 METHOD_NOT_ALLOWED 'Request method must be POST.': Expandable saw a method "
        "other than POST"
    )
    assert "CONTACTSYNC_EXPANDABLE__BASE_URL" in answer.outcome.reason


def test_500_is_a_bounded_retry_with_its_code_but_never_its_free_text_message(
    client: Redis,
) -> None:
    with simulator() as sim:
        script(sim, "http-500")
        answer = connector(sim, client, fresh_prefix()).send(job())

    outcome = answer.outcome
    assert isinstance(outcome, Retry)
    assert (outcome.code, outcome.bounded, outcome.down, outcome.busy) == (
        "UNEXPECTED_ERROR",
        True,
        False,
        False,
    )
    assert outcome.reason.startswith("HTTP 500 UNEXPECTED_ERROR: Expandable could not update")
    assert "unexpected error occurred" not in outcome.reason + answer.answer
    assert answer.answer == (
        "HTTP 500 MESSAGE_CODE=UNEXPECTED_ERROR MESSAGE withheld (29 characters; may quote "
        "contact data)"
    )
    assert answer.measured


def test_500_business_error_unknown_contact_is_a_bounded_retry_too(client: Redis) -> None:
    with simulator() as sim:
        answer = connector(sim, client, fresh_prefix()).send(
            job(CUST_CONTACT="NOBODY", CITY="Springfield")
        )

    assert isinstance(answer.outcome, Retry) and answer.outcome.bounded
    assert answer.outcome.code == "CUST_CONTACT_NOT_FOUND"
    assert "unknown CUSTOMER_ID or CUST_CONTACT" in answer.outcome.reason


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_are_retried_and_count_towards_a_pause(client: Redis, status: int) -> None:
    with simulator() as sim:
        script(sim, f"http-{status}")
        answer = connector(sim, client, fresh_prefix()).send(job())

    assert answer.outcome == Retry(
        f"http-{status}",
        f"Expandable answered HTTP {status} (down or overloaded)",
        bounded=True,
        down=True,
    )
    assert answer.answer.startswith(f"HTTP {status}: ") and "text/html" in answer.answer
    assert not answer.measured


def test_a_login_answered_by_a_down_gateway_is_retried(client: Redis) -> None:
    with simulator(down="503") as sim:
        answer = connector(sim, client, fresh_prefix()).send(job())

        assert answer.outcome == Retry(
            "http-503",
            "Expandable (login) answered HTTP 503 (down or overloaded)",
            bounded=True,
            down=True,
        )
        assert stats(sim)["calls"] == 0


def test_connection_refused_is_retried_as_down(client: Redis) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expandable = ExpandableClient(
        settings_for(f"http://127.0.0.1:{port}"), token_cache=client, prefix=fresh_prefix()
    )

    answer = expandable.send(job())

    assert answer.outcome == Retry(
        "ConnectError", "could not connect to Expandable", bounded=True, down=True
    )


def test_no_answer_within_the_read_timeout_is_a_bounded_retry(client: Redis) -> None:
    with simulator() as sim:
        expandable = connector(sim, client, fresh_prefix(), read_timeout_s=0.2)
        assert isinstance(expandable.send(job()).outcome, Delivered)  # logged in, no latency
        sim.post("/_config", json={"latency_s": 1.0}).raise_for_status()

        answer = expandable.send(job())

    assert isinstance(answer.outcome, Retry)
    assert (answer.outcome.code, answer.outcome.bounded, answer.outcome.down) == (
        "ReadTimeout",
        True,
        False,
    )


def test_redis_out_of_reach_for_the_token_goes_up_to_the_task_and_nothing_is_called(
    client: Redis,
) -> None:
    # Every connector alike: the task puts the job's message back, nothing spent.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = Redis(port=port, socket_connect_timeout=0.5, retry=RedisRetry(NoBackoff(), 0))
    with simulator() as sim:
        with pytest.raises(RedisConnectionError):
            connector(sim, nowhere, fresh_prefix()).send(job())
        assert stats(sim)["logins"] == 0 and stats(sim)["calls"] == 0


# -- the fleet's token -----------------------------------------------------------------------------
def test_clients_sharing_redis_log_in_once(client: Redis) -> None:
    with simulator() as sim:
        prefix = fresh_prefix()
        for _ in range(3):
            assert isinstance(connector(sim, client, prefix).send(job()).outcome, Delivered)

        assert stats(sim)["logins"] == 1


def test_an_expired_token_is_renewed_exactly_once_by_many_threads_and_clients(
    client: Redis,
) -> None:
    with simulator() as sim:
        prefix = fresh_prefix()
        clients = [connector(sim, client, prefix) for _ in range(3)]
        assert isinstance(clients[0].send(job()).outcome, Delivered)
        sim.post("/_expire_tokens").raise_for_status()
        threads_per_client = 4
        start = threading.Barrier(len(clients) * threads_per_client)
        answers: list[Answer] = []
        lock = threading.Lock()

        def deliver_one(expandable: ExpandableClient) -> None:
            start.wait(timeout=5)
            answer = expandable.send(job())
            with lock:
                answers.append(answer)

        threads = [
            threading.Thread(target=deliver_one, args=(c,))
            for c in clients
            for _ in range(threads_per_client)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=8)

        assert [type(a.outcome) for a in answers] == [Delivered] * len(threads)
        got = stats(sim)
        assert got["logins"] == 2  # the first login, and one renewal for the whole fleet
        assert got["codes"] == {"AUTH_TOKEN_EXPIRED": got["calls"] - 1 - len(threads)}


def test_a_token_of_another_data_source_is_never_reused(client: Redis) -> None:
    with simulator() as sim:
        prefix = fresh_prefix()
        sandbox = connector(sim, client, prefix)
        other = connector(sim, client, prefix, data_source="LIVE")

        assert sandbox.shared_token.name != other.shared_token.name
        assert sandbox.gate is not None and other.gate is not None
        assert sandbox.gate.name == other.gate.name  # one installation, one gate


# -- secrets ---------------------------------------------------------------------------------------
def test_no_secret_or_token_reaches_an_answer_or_a_reason(client: Redis) -> None:
    seen: list[Answer] = []
    with simulator() as sim:
        expandable = connector(sim, client, fresh_prefix())
        answers = [
            "ok",
            "http-400",
            "http-401-expired",
            "ok",
            "http-405",
            "http-500",
            "http-503",
            "http-401-expired",
            "http-401-login",
        ]
        script(sim, *answers)
        for _ in range(len(answers) - 2):
            seen.append(expandable.send(job(E_MAIL=PRIVATE_E_MAIL, FIRST_NAME="Juanito")))
        token = expandable.shared_token.get().value
    with simulator(password="another") as refusing:
        seen.append(connector(refusing, client, fresh_prefix()).send(job()))

    assert len(seen) == len(answers) - 1
    assert {type(a.outcome) for a in seen} == {Delivered, Rejected, Retry, Reauth}
    secrets = expandable.secrets()
    assert PASSWORD in secrets and token in secrets
    assert len(secrets) >= 4  # the password and the three tokens the client was given
    for answer in seen:
        text = f"{answer.outcome.code} {answer.outcome.reason} {answer.answer}"
        for secret in (*secrets, PRIVATE_E_MAIL, "Juanito"):
            assert secret not in text


# -- what the simulator cannot answer: respx -------------------------------------------------------
BASE_URL = "https://erp.test"


@pytest.fixture
def erp() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        router.post("/api/auth-token-get").respond(200, json={"AUTH_TOKEN": "T" * 32})
        yield router


def mocked(client: Redis) -> ExpandableClient:
    return ExpandableClient(settings_for(BASE_URL), token_cache=client, prefix=fresh_prefix())


def test_the_token_travels_in_the_json_body_never_in_a_header(
    erp: respx.MockRouter, client: Redis
) -> None:
    update = erp.post("/api/customer-contact-update").respond(200, json={**JUAN, "CITY": "X"})

    mocked(client).send(job(CITY="Springfield", NOTES="hello"))

    login = json.loads(erp.calls[0].request.content)
    assert login == {"DATA_SOURCE": "SANDBOX", "USER_NAME": "sandbox", "PASSWORD": PASSWORD}
    sent = update.calls.last.request
    assert json.loads(sent.content) == {
        **JUAN,
        "CITY": "Springfield",
        "NOTES": "hello",
        "AUTH_TOKEN": "T" * 32,
    }
    assert "authorization" not in sent.headers
    assert sent.url.query == b""


@pytest.mark.parametrize(
    ("status", "expected", "fragment"),
    [
        (404, Rejected, "check CONTACTSYNC_EXPANDABLE__BASE_URL; the destination is paused"),
        (418, Review, "an answer Expandable does not document; a person decides"),
        (501, Retry, "a server error Expandable does not document"),
    ],
)
def test_answers_the_page_does_not_list(
    erp: respx.MockRouter, client: Redis, status: int, expected: type, fragment: str
) -> None:
    erp.post("/api/customer-contact-update").respond(status, text="<html>no</html>")

    answer = mocked(client).send(job())

    assert type(answer.outcome) is expected
    assert answer.outcome.code == str(status)
    assert answer.outcome.reason.startswith(f"HTTP {status}: ")
    assert fragment in answer.outcome.reason
    assert answer.answer == f"HTTP {status}: 15 bytes of text/plain, not an Expandable answer"
    if isinstance(answer.outcome, Rejected):
        assert answer.outcome.pause


def test_a_500_message_or_code_that_could_hold_contact_data_is_withheld(
    erp: respx.MockRouter, client: Redis
) -> None:
    erp.post("/api/customer-contact-update").respond(
        500,
        json={
            "MESSAGE": f"E-mail {PRIVATE_E_MAIL} is already used by Juan Hernandez",
            "MESSAGE_CODE": f"dup {PRIVATE_E_MAIL}",
        },
    )

    answer = mocked(client).send(job())

    assert isinstance(answer.outcome, Retry) and answer.outcome.bounded
    assert answer.outcome.code == "500"
    text = answer.outcome.reason + answer.answer
    assert PRIVATE_E_MAIL not in text and "Hernandez" not in text


def test_a_200_whose_body_is_not_the_record_is_still_delivered(
    erp: respx.MockRouter, client: Redis
) -> None:
    erp.post("/api/customer-contact-update").respond(200, text="OK")

    answer = mocked(client).send(job())

    assert isinstance(answer.outcome, Delivered)
    assert answer.answer == "HTTP 200: 2 bytes of text/plain, not an Expandable answer"


def test_a_login_answered_without_a_token_is_reauth_naming_the_base_url(
    erp: respx.MockRouter, client: Redis
) -> None:
    erp.post("/api/auth-token-get").respond(200, json={"MESSAGE": "hello"})
    update = erp.post("/api/customer-contact-update").respond(200, json=JUAN)

    answer = mocked(client).send(job())

    assert isinstance(answer.outcome, Reauth) and answer.outcome.code == "login-failed"
    assert "CONTACTSYNC_EXPANDABLE__BASE_URL" in answer.outcome.reason
    assert not update.called


def test_a_login_answered_500_with_a_message_code_is_a_refusal_naming_the_settings(
    erp: respx.MockRouter, client: Redis
) -> None:
    # What an installation answers wrong credentials with: a verdict, so the destination is
    # paused (and probed) instead of each job logging in again.
    erp.post("/api/auth-token-get").respond(
        500,
        json={
            "MESSAGE": "The user name or password is incorrect.",
            "MESSAGE_CODE": "INVALID_USER_LOGIN",
        },
    )

    answer = mocked(client).send(job())

    assert isinstance(answer.outcome, Reauth)
    assert "INVALID_USER_LOGIN" in answer.outcome.reason
    assert "CONTACTSYNC_EXPANDABLE__USERNAME" in answer.outcome.reason


def test_a_login_that_fails_with_500_and_no_verdict_is_a_bounded_retry(
    erp: respx.MockRouter, client: Redis
) -> None:
    erp.post("/api/auth-token-get").respond(500, text="<html>Internal Server Error</html>")

    answer = mocked(client).send(job())

    assert answer.outcome == Retry(
        "login-http-500", "the Expandable login answered HTTP 500", bounded=True
    )


# -- configuration and the task --------------------------------------------------------------------
def test_missing_settings_are_named() -> None:
    with pytest.raises(NotConfigured) as caught:
        ExpandableClient(ExpandableSettings())

    for name in ("BASE_URL", "DATA_SOURCE", "USERNAME", "PASSWORD"):
        assert f"CONTACTSYNC_EXPANDABLE__{name}" in str(caught.value)


def test_the_task_is_registered_under_the_destinations_name() -> None:
    assert deliver.name == "expandable.deliver"
    assert deliver.queue == "expandable"
    assert ExpandableDelivery.connector_factory is _client
