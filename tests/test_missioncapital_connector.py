"""Mission Capital connector against the real simulator over HTTP: every row of the answer table
(CRM_APIS.md §2), the fleet's one OAuth token (refreshed once for every thread and client), the
API usage header, outages, secrets, and the job model's validation at the door. What the
simulator cannot say (an unknown ResponseText, malformed headers, a 500 at login) goes through
respx."""

from __future__ import annotations

import functools
import json
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest
import redis
import respx
from pydantic import SecretStr

from sandbox.missioncapital import MissionCapitalSimConfig, serve
from tasks.delivery import Answer, NotConfigured, gateway_outcome
from tasks.missioncapital import (
    CONTACT_USER_PATH,
    OAUTH_PATH,
    MissionCapitalClient,
    MissionCapitalContactUser,
    classify_answer,
    deliver,
    id_suffix,
)
from tasks.models import JobValidationError, validate_job
from tasks.outcomes import Delivered, Reauth, Rejected, Retry, Review
from tests.conftest import simulator_in_thread
from worker.broker import redis_client
from worker.settings import MissionCapitalSettings, get_settings

pytestmark = pytest.mark.timeout(10)

KIND = "missioncapital.contact_user"
APP = "00QEa00000ItVf8MAF"  # the source page's sample Lead id
OTHER_APP = "00QEa00000ItVf9MAF"
ENV = "CONTACTSYNC_MISSIONCAPITAL__"
# Distinctive, so a leak shows in any text.
CLIENT_SECRET = "cs-Secret-9f2c"
PASSWORD = "pw-Secret-71cd"
SECURITY_TOKEN = "st-Secret-3aa8"
SIM = {"client_secret": CLIENT_SECRET, "password": PASSWORD, "security_token": SECURITY_TOKEN}


# -- the simulator and the client --------------------------------------------------------------
@dataclass
class Org:
    """The simulated org: its API URL and a client of its admin port (which survives outages)."""

    url: str
    admin: httpx.Client

    def script(self, application: str, *kinds: str) -> None:
        body = {"id": application, "answers": list(kinds)}
        self.admin.post("/_script", json=body).raise_for_status()

    def configure(self, **values: Any) -> None:
        self.admin.post("/_config", json=values).raise_for_status()

    def expire_tokens(self) -> None:
        self.admin.post("/_expire_tokens").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(self.admin.get("/_stats").json())

    def calls(self, application: str = APP) -> int:
        return int(self.stats()["calls_by_application"].get(application, 0))


@contextmanager
def running_org(**config: Any) -> Iterator[Org]:
    admin_ports: queue.Queue[int] = queue.Queue()
    with_admin_port = functools.partial(serve, admin_port=0, admin_ready=admin_ports.put)
    sim_config = MissionCapitalSimConfig(**{**SIM, **config})
    with simulator_in_thread(with_admin_port, sim_config) as api:
        admin_url = f"http://127.0.0.1:{admin_ports.get(timeout=3)}"
        with httpx.Client(base_url=admin_url, timeout=3) as admin:
            yield Org(str(api.base_url).rstrip("/"), admin)


@pytest.fixture
def prefix(monkeypatch: pytest.MonkeyPatch, redis_server: str) -> Iterator[str]:
    """A private key prefix on the test Valkey, for the gate, the token and the API usage
    (``destination_gate`` and ``record_api_usage`` read the process settings)."""
    key_prefix = f"t{uuid4().hex[:8]}:"
    monkeypatch.setenv("CONTACTSYNC_REDIS_URL", redis_server)
    monkeypatch.setenv("CONTACTSYNC_KEY_PREFIX", key_prefix)
    get_settings.cache_clear()
    redis_client.cache_clear()
    yield key_prefix
    get_settings.cache_clear()
    redis_client.cache_clear()


@pytest.fixture
def org() -> Iterator[Org]:
    with running_org() as running:
        yield running


def settings_for(url: str, **overrides: Any) -> MissionCapitalSettings:
    values: dict[str, Any] = {
        "login_url": url,
        "client_id": "sandbox-client",
        "client_secret": SecretStr(CLIENT_SECRET),
        "username": "sandbox@example.com",
        "password": SecretStr(PASSWORD),
        "security_token": SecretStr(SECURITY_TOKEN),
        "partner_id": "P-1",
        "partner_name": "contactsync",
        "connect_timeout_s": 0.5,
        "read_timeout_s": 1.5,
    }
    values.update(overrides)
    return MissionCapitalSettings(**values)


@pytest.fixture
def connect(client: redis.Redis, prefix: str) -> Iterator[Any]:
    """``connect(url, **settings)``: a client on the test Valkey; all closed at the end."""
    made: list[MissionCapitalClient] = []

    def make(url: str, **overrides: Any) -> MissionCapitalClient:
        made.append(MissionCapitalClient(settings_for(url, **overrides), client, prefix))
        return made[-1]

    yield make
    for one in made:
        one.close()


def job(application: str = APP) -> MissionCapitalContactUser:
    return MissionCapitalContactUser(application_id=application)


def assert_no_secret(answer: Answer, secrets: list[str]) -> None:
    assert secrets
    for text in (answer.answer, answer.outcome.reason, answer.outcome.code):
        for secret in secrets:
            assert secret not in text


# -- the job at the door -----------------------------------------------------------------------
@pytest.mark.parametrize("application", [APP, APP[:15], "001xx000003DGb2AAG", "001xx000003DGb2"])
def test_15_and_18_character_lead_ids_are_accepted(application: str) -> None:
    made = validate_job(KIND, {"ApplicationID": application})

    assert isinstance(made, MissionCapitalContactUser)
    assert made.application_id == application
    assert made.masked() == {"application_id": application}  # public: not personal data


def test_the_checksum_suffix_is_compared_case_insensitively() -> None:
    assert id_suffix(APP[:15]) == "MAF"
    assert validate_job(KIND, {"application_id": APP[:15] + "maf"})


@pytest.mark.parametrize(
    ("application", "says"),
    [
        ("003Dn00000AbCdEIAB", "checksum"),  # the wrong suffix
        ("003dn00000AbCdEIAV", "checksum"),  # one letter's case changed
        ("003Dn00000AbCd", "15 or 18 letters and digits"),
        ("003Dn00000AbCdEIA", "15 or 18 letters and digits"),
        ("003Dn00000AbCdEIAV1", "15 or 18 letters and digits"),
        ("003Dn00000-bCdE", "15 or 18 letters and digits"),
        (" 003Dn00000AbCdE", "15 or 18 letters and digits"),
        ("", "15 or 18 letters and digits"),
    ],
)
def test_a_bad_lead_id_is_refused_naming_the_field_without_echoing_it(
    application: str, says: str
) -> None:
    with pytest.raises(JobValidationError) as caught:
        validate_job(KIND, {"ApplicationID": application})

    [(field, message)] = caught.value.problems
    assert field == "ApplicationID"
    assert says in message
    assert "e.g. 00QEa00000ItVf8MAF" in message
    if application.strip():
        assert application.strip() not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({}, "ApplicationID", "Field required"),
        ({"ApplicationID": 12345}, "ApplicationID", "valid string"),
        ({"ApplicationID": APP, "Email": "jane@example.com"}, "Email", "Extra inputs"),
    ],
)
def test_missing_wrong_type_and_extra_fields_are_refused(
    data: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(JobValidationError) as caught:
        validate_job(KIND, data)

    [(named, message)] = caught.value.problems
    assert named == field
    assert says in message
    assert "jane@example.com" not in str(caught.value)


def test_the_task_is_registered_on_its_own_queue() -> None:
    assert deliver.name == "missioncapital.deliver"
    assert deliver.queue == "missioncapital"


def test_missing_settings_raise_not_configured_naming_them(prefix: str) -> None:
    with pytest.raises(NotConfigured) as caught:
        MissionCapitalClient(MissionCapitalSettings(partner_id="P-1"))

    text = str(caught.value)
    for name in ("LOGIN_URL", "CLIENT_ID", "CLIENT_SECRET", "USERNAME", "PASSWORD", "PARTNER_NAME"):
        assert f"{ENV}{name}" in text
    assert f"{ENV}PARTNER_ID" not in text


# -- the answer table against the simulator: CRM_APIS.md §2 ------------------------------------
def test_is_successful_true_is_delivered_and_the_request_carries_the_partner_headers(
    org: Org, connect: Any
) -> None:
    answer = connect(org.url).send(job())

    assert answer.outcome == Delivered("IsSuccessful", "contact re-enabled for the application")
    assert "Application has been updated successfully" in answer.answer
    assert answer.measured
    stats = org.stats()
    assert (stats["logins"], stats["answers"], stats["calls_by_application"]) == (
        1,
        {"ok": 1},
        {APP: 1},
    )


def test_a_15_character_id_is_delivered_too(org: Org, connect: Any) -> None:
    assert isinstance(connect(org.url).send(job(APP[:15])).outcome, Delivered)


def test_missing_application_id_is_rejected_as_a_contactsync_bug(org: Org, connect: Any) -> None:
    org.script(APP, "missing-id")

    outcome = connect(org.url).send(job()).outcome

    assert isinstance(outcome, Rejected) and not outcome.pause
    assert outcome.code == "missing-application-id"
    assert outcome.reason.startswith("Missing Application ID:")
    assert "contactsync bug" in outcome.reason


def test_application_not_found_goes_to_review_naming_a_staging_production_mix_up(
    connect: Any,
) -> None:
    with running_org(known_applications=[OTHER_APP]) as org:  # the natural answer
        answer = connect(org.url).send(job())

    outcome = answer.outcome
    assert isinstance(outcome, Review)
    assert outcome.code == "application-not-found"
    assert outcome.reason.startswith("Application not found:")
    for words in ("staging", "production", f"{ENV}LOGIN_URL"):
        assert words in outcome.reason
    assert '"ResponseText": "Application not found"' in answer.answer


def test_is_successful_false_is_classified_on_the_body_whatever_the_http_status(
    connect: Any,
) -> None:
    with running_org(known_applications=[OTHER_APP], failure_status=500) as org:
        answer = connect(org.url).send(job())

    assert answer.answer.startswith("HTTP 500 ")
    assert isinstance(answer.outcome, Review)  # not a 500 retry
    assert answer.outcome.code == "application-not-found"


def test_missing_partner_header_is_rejected_and_pauses_naming_the_partner_settings(
    org: Org, connect: Any
) -> None:
    org.script(APP, "missing-header")

    outcome = connect(org.url).send(job()).outcome

    assert isinstance(outcome, Rejected)
    assert outcome.pause
    assert outcome.code == "missing-partner-header"
    assert f"{ENV}PARTNER_ID" in outcome.reason
    assert f"{ENV}PARTNER_NAME" in outcome.reason


@pytest.mark.parametrize("kind", ["invalid-credentials", "http-401"])
def test_a_refused_token_is_refreshed_once_and_the_call_sent_once_more(
    org: Org, connect: Any, kind: str
) -> None:
    org.script(APP, kind, "ok")

    answer = connect(org.url).send(job())

    assert isinstance(answer.outcome, Delivered)
    assert (org.stats()["logins"], org.calls()) == (2, 2)


def test_invalid_username_and_password_twice_is_reauth_naming_the_credentials(
    org: Org, connect: Any
) -> None:
    org.script(APP, "invalid-credentials")  # sticky

    outcome = connect(org.url).send(job()).outcome

    assert isinstance(outcome, Reauth)
    assert outcome.code == "invalid-credentials"
    assert outcome.reason.startswith("Invalid username and password:")
    for name in ("USERNAME", "PASSWORD", "SECURITY_TOKEN"):
        assert f"{ENV}{name}" in outcome.reason
    assert (org.stats()["logins"], org.calls()) == (2, 2)  # one refresh, one resend


def test_invalid_session_id_twice_is_reauth_after_exactly_one_refresh(
    org: Org, connect: Any
) -> None:
    org.script(APP, "http-401")  # sticky

    answer = connect(org.url).send(job())

    outcome = answer.outcome
    assert isinstance(outcome, Reauth)
    assert outcome.code == "INVALID_SESSION_ID"
    assert "INVALID_SESSION_ID" in outcome.reason and f"{ENV}LOGIN_URL" in outcome.reason
    assert '"errorCode": "INVALID_SESSION_ID"' in answer.answer
    assert not answer.measured
    assert (org.stats()["logins"], org.calls()) == (2, 2)


@pytest.mark.parametrize("how", ["scripted", "natural"])
def test_request_limit_exceeded_pauses_the_destination_saying_the_allowance_is_spent(
    org: Org, connect: Any, how: str
) -> None:
    mission = connect(org.url)
    if how == "scripted":
        org.script(APP, "http-403-limit")
    else:
        org.configure(api_limit=1)
        assert isinstance(mission.send(job()).outcome, Delivered)

    outcome = mission.send(job()).outcome

    assert isinstance(outcome, Retry)
    assert outcome.spent and not outcome.bounded and not outcome.down  # no job's budget spent
    assert outcome.code == "REQUEST_LIMIT_EXCEEDED"
    assert "API allowance" in outcome.reason and "spent" in outcome.reason
    assert "CONTACTSYNC_PAUSE__LIMIT_PROBE_INTERVAL_S" in outcome.reason


def test_another_403_goes_to_review_as_a_permission_problem(org: Org, connect: Any) -> None:
    org.script(APP, "http-403")

    outcome = connect(org.url).send(job()).outcome

    assert isinstance(outcome, Review)
    assert outcome.code == "INSUFFICIENT_ACCESS"
    assert "permission" in outcome.reason


@pytest.mark.parametrize(
    ("kind", "code", "says"),
    [
        ("http-404", "NOT_FOUND", "HTTP 404: no /services/apexrest/creditapp/contactUser"),
        ("http-405", "METHOD_NOT_ALLOWED", "HTTP 405: the instance"),
    ],
)
def test_404_and_405_are_rejected_as_configuration_naming_the_instance_and_login_url(
    org: Org, connect: Any, kind: str, code: str, says: str
) -> None:
    org.script(APP, kind)

    outcome = connect(org.url).send(job()).outcome

    assert isinstance(outcome, Rejected) and not outcome.pause
    assert outcome.code == code
    assert outcome.reason.startswith(says)
    assert f"instance {org.url}" in outcome.reason
    assert f"{ENV}LOGIN_URL" in outcome.reason


def test_500_is_a_bounded_retry(org: Org, connect: Any) -> None:
    org.script(APP, "http-500")

    answer = connect(org.url).send(job())

    assert answer.outcome == Retry(
        "APEX_ERROR", "Salesforce failed while running contactUser (HTTP 500)", bounded=True
    )
    assert "APEX_ERROR" in answer.answer


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_answers_are_retries_that_count_towards_a_pause(
    org: Org, connect: Any, status: int
) -> None:
    org.script(APP, f"http-{status}")

    answer = connect(org.url).send(job())

    assert answer.outcome == gateway_outcome(status, "Mission Capital")
    assert answer.outcome.down
    assert not answer.measured


# -- outages -----------------------------------------------------------------------------------
def test_down_503_is_a_gateway_retry_for_the_call_and_for_the_login(org: Org, connect: Any) -> None:
    warm = connect(org.url)
    assert isinstance(warm.send(job()).outcome, Delivered)
    org.configure(down="503")

    assert warm.send(job()).outcome == gateway_outcome(503, "Mission Capital")
    warm.shared_token.forget()
    assert warm.send(job()).outcome == gateway_outcome(503, "Salesforce login")
    assert org.stats()["logins"] == 1  # a login that failed is not a Reauth


def test_refused_connections_are_a_down_retry_for_the_call_and_for_the_login(
    org: Org, connect: Any
) -> None:
    assert isinstance(connect(org.url).send(job()).outcome, Delivered)  # the token is cached
    org.configure(down="refused")

    outcome = connect(org.url).send(job()).outcome  # a new pool: a new connection is refused
    assert isinstance(outcome, Retry) and outcome.down and outcome.bounded
    assert outcome.reason == "could not connect to Mission Capital"

    fresh = connect(org.url)
    fresh.shared_token.forget()
    outcome = fresh.send(job()).outcome
    assert isinstance(outcome, Retry) and outcome.down
    assert outcome.reason == "could not connect to Salesforce login"


def test_no_answer_within_the_read_timeout_is_a_bounded_retry(connect: Any) -> None:
    with running_org(latency_s=1.0) as org:
        outcome = connect(org.url, read_timeout_s=0.2).send(job()).outcome

    assert isinstance(outcome, Retry) and outcome.bounded and not outcome.down
    assert outcome.code == "ReadTimeout"
    assert "safe to repeat" in outcome.reason


# -- the fleet's token -------------------------------------------------------------------------
def test_the_login_sends_password_and_security_token_and_the_token_carries_the_instance(
    org: Org, connect: Any
) -> None:
    mission = connect(org.url, token_lifetime_s=1000)
    before_ms = time.time() * 1000

    token = mission.shared_token.get()

    assert token.data == {"instance_url": org.url}
    assert before_ms + 899_000 <= token.refresh_at_ms <= before_ms + 901_000
    assert token.value in mission.secrets()


def test_an_expired_token_is_refreshed_exactly_once_for_all_threads_and_clients(
    org: Org, connect: Any
) -> None:
    clients = [connect(org.url) for _ in range(3)]
    assert isinstance(clients[0].send(job()).outcome, Delivered)
    assert org.stats()["logins"] == 1
    org.expire_tokens()
    start = threading.Barrier(12)

    def send(i: int) -> Answer:
        start.wait(timeout=3)
        answer: Answer = clients[i % 3].send(job())
        return answer

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))

    assert [type(a.outcome) for a in answers] == [Delivered] * 12
    stats = org.stats()
    assert stats["logins"] == 2
    assert stats["invalid_sessions"] >= 1
    assert clients[0].shared_token.logins() == 2


@pytest.mark.parametrize(
    ("wrong", "names"),
    [
        (
            {"password": SecretStr("pw-Wrong-0001")},
            ["USERNAME", "PASSWORD", "SECURITY_TOKEN", "LOGIN_URL"],
        ),
        ({"security_token": SecretStr("st-Wrong-0002")}, ["SECURITY_TOKEN"]),
        ({"client_id": "not-the-app"}, ["CLIENT_ID"]),
        ({"client_secret": SecretStr("cs-Wrong-0003")}, ["CLIENT_SECRET"]),
    ],
)
def test_a_refused_login_is_reauth_naming_the_settings_and_no_secret(
    org: Org, connect: Any, wrong: dict[str, Any], names: list[str]
) -> None:
    mission = connect(org.url, **wrong)

    answer = mission.send(job())

    outcome = answer.outcome
    assert isinstance(outcome, Reauth)
    assert outcome.code == "login-failed"
    assert outcome.reason.startswith("Salesforce refused the login (")
    for name in names:
        assert f"{ENV}{name}" in outcome.reason
    assert_no_secret(
        answer, [*mission.secrets(), "pw-Wrong-0001", "st-Wrong-0002", "cs-Wrong-0003"]
    )
    assert (org.stats()["login_failures"], org.calls()) == (1, 0)


# -- API usage and secrets ---------------------------------------------------------------------
def test_every_answer_records_the_api_usage_header(
    org: Org, connect: Any, client: redis.Redis, prefix: str
) -> None:
    org.configure(api_limit=9000, api_usage=41)
    org.script(APP, "http-500")

    connect(org.url).send(job())

    usage = client.hgetall(f"{prefix}api-usage:missioncapital")
    assert (usage["used"], usage["allowed"]) == ("42", "9000")


def test_no_secret_or_token_reaches_an_answer_or_a_reason(org: Org, connect: Any) -> None:
    mission = connect(org.url)
    answers = [mission.send(job())]
    for kind in (
        "invalid-credentials",
        "http-401",
        "http-403",
        "http-404",
        "http-500",
        "missing-header",
        "http-502",
    ):
        org.script(APP, kind)
        answers.append(mission.send(job()))
    refused = connect(org.url, password=SecretStr("pw-Wrong-0001"))
    tokens = [mission.shared_token.get().value]
    refused.shared_token.forget()  # the fleet's token is shared: make this one log in
    answers.append(refused.send(job()))
    assert isinstance(answers[-1].outcome, Reauth)

    secrets = mission.secrets()
    assert {CLIENT_SECRET, PASSWORD, SECURITY_TOKEN, PASSWORD + SECURITY_TOKEN} <= set(secrets)
    assert set(tokens) <= set(secrets)
    assert org.stats()["logins"] >= 3  # tokens were refreshed on the way: all of them known
    for answer in answers:
        assert_no_secret(answer, [*secrets, "pw-Wrong-0001"])


# -- what the simulator cannot say (respx) -----------------------------------------------------
LOGIN_URL = "https://login.test"
INSTANCE = "https://mc.test"
LOGIN_OK = {
    "access_token": "00D!tok-Secret-55e",
    "instance_url": INSTANCE,
    "id": "x",
    "token_type": "Bearer",
    "issued_at": "1",
    "signature": "s",
}


@pytest.fixture
def mocked(connect: Any) -> Iterator[tuple[respx.MockRouter, MissionCapitalClient]]:
    with respx.mock(assert_all_called=False) as router:
        router.post(f"{LOGIN_URL}{OAUTH_PATH}").respond(200, json=LOGIN_OK)
        yield router, connect(LOGIN_URL)


def contact_route(router: respx.MockRouter) -> respx.Route:
    return router.post(f"{INSTANCE}{CONTACT_USER_PATH}")


def test_the_wire_format_of_login_and_contact_user(mocked: Any) -> None:
    router, mission = mocked
    route = contact_route(router).respond(200, json={"IsSuccessful": True, "ResponseText": "ok"})

    assert isinstance(mission.send(job()).outcome, Delivered)

    login = router.calls[0].request
    form = dict(httpx.QueryParams(login.content.decode()))
    assert form == {
        "grant_type": "password",
        "client_id": "sandbox-client",
        "client_secret": CLIENT_SECRET,
        "username": "sandbox@example.com",
        "password": PASSWORD + SECURITY_TOKEN,
    }
    sent = route.calls.last.request
    assert sent.method == "POST" and sent.content == b""
    assert sent.headers["Authorization"] == f"Bearer {LOGIN_OK['access_token']}"
    assert sent.headers["Content-Type"] == "application/json"
    assert (sent.headers["PartnerId"], sent.headers["PartnerName"]) == ("P-1", "contactsync")
    assert sent.headers["ApplicationID"] == APP


def test_an_undocumented_response_text_goes_to_review(mocked: Any) -> None:
    router, mission = mocked
    contact_route(router).respond(
        200, json={"IsSuccessful": False, "ResponseText": "Lead is converted"}
    )

    answer = mission.send(job())

    assert isinstance(answer.outcome, Review)
    assert answer.outcome.code == "unknown-response"
    assert "not in the documented table" in answer.outcome.reason
    assert "Lead is converted" in answer.answer


def test_a_body_that_is_not_a_salesforce_answer_is_kept_only_by_size_and_type(
    mocked: Any,
) -> None:
    router, mission = mocked
    contact_route(router).respond(200, html=f"<p>{APP} {CLIENT_SECRET}</p>")

    answer = mission.send(job())

    assert isinstance(answer.outcome, Review)
    assert answer.outcome.code == "http-200"
    assert answer.answer.startswith("HTTP 200: ") and "bytes of text/html" in answer.answer
    assert CLIENT_SECRET not in answer.answer


@pytest.mark.parametrize("header", [None, "", "api-usage=", "api-usage=a/b", "per-app=3/4"])
def test_a_missing_or_malformed_usage_header_is_tolerated(
    mocked: Any, client: redis.Redis, prefix: str, header: str | None
) -> None:
    router, mission = mocked
    headers = {} if header is None else {"Sforce-Limit-Info": header}
    contact_route(router).respond(200, json={"IsSuccessful": True}, headers=headers)

    assert isinstance(mission.send(job()).outcome, Delivered)
    assert client.hgetall(f"{prefix}api-usage:missioncapital") == {}


def test_the_usage_header_is_found_among_other_limits(
    mocked: Any, client: redis.Redis, prefix: str
) -> None:
    router, mission = mocked
    header = "api-usage=18/15000, per-app-api-usage=17/250(appName=sample)"
    contact_route(router).respond(
        200, json={"IsSuccessful": True}, headers={"Sforce-Limit-Info": header}
    )

    mission.send(job())

    usage = client.hgetall(f"{prefix}api-usage:missioncapital")
    assert (usage["used"], usage["allowed"]) == ("18", "15000")


def test_a_500_at_login_is_a_bounded_retry_not_a_reauth(mocked: Any) -> None:
    router, mission = mocked
    router.post(f"{LOGIN_URL}{OAUTH_PATH}").respond(500, text="oops")

    outcome = mission.send(job()).outcome

    assert outcome == Retry("http-500", "Salesforce login failed (HTTP 500)", bounded=True)


@pytest.mark.parametrize(
    "answer",
    [
        {"instance_url": INSTANCE},
        {"access_token": "t", "instance_url": "mc.test"},
        {"access_token": "", "instance_url": INSTANCE},
    ],
)
def test_a_login_answer_without_token_or_instance_is_reauth(
    mocked: Any, answer: dict[str, Any]
) -> None:
    router, mission = mocked
    router.post(f"{LOGIN_URL}{OAUTH_PATH}").respond(200, json=answer)

    outcome = mission.send(job()).outcome

    assert isinstance(outcome, Reauth)
    assert f"{ENV}LOGIN_URL" in outcome.reason


def test_a_login_refused_without_an_oauth_error_names_every_setting(mocked: Any) -> None:
    router, mission = mocked
    router.post(f"{LOGIN_URL}{OAUTH_PATH}").respond(404, text="<html>no</html>")

    outcome = mission.send(job()).outcome

    assert isinstance(outcome, Reauth)
    assert outcome.reason.startswith("Salesforce refused the login (HTTP 404)")
    for name in (
        "LOGIN_URL",
        "CLIENT_ID",
        "CLIENT_SECRET",
        "USERNAME",
        "PASSWORD",
        "SECURITY_TOKEN",
    ):
        assert f"{ENV}{name}" in outcome.reason


def test_a_read_error_after_sending_is_retried_the_call_being_safe_to_repeat(
    mocked: Any,
) -> None:
    router, mission = mocked
    contact_route(router).mock(side_effect=httpx.ReadError("reset"))

    outcome = mission.send(job()).outcome

    assert outcome == Retry(
        "ReadError", "transport error ReadError talking to Mission Capital", bounded=True
    )


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, None, Reauth),  # a 401 without a body is still a refused token
        (400, [{"errorCode": "JSON_PARSER_ERROR", "message": "x"}], Review),
        (429, None, Review),
        (200, {"IsSuccessful": "yes"}, Review),
    ],
)
def test_answers_outside_the_table(status: int, body: Any, expected: type) -> None:
    assert type(classify_answer(status, body)) is expected


def test_the_platform_error_code_decides_before_the_status() -> None:
    limit = [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}]
    assert isinstance(classify_answer(403, limit), Retry)
    assert isinstance(classify_answer(403, json.loads('[{"errorCode": "X"}]')), Review)
