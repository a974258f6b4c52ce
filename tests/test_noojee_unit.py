"""Noojee connector without a PBX: the answer table (CRM_APIS.md §1), transport errors, the HTTP
requests the client sends (respx), and the job models' validation at the door."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from tasks.models import JobValidationError, validate_job
from tasks.noojee import (
    ANSWERS,
    INSERT_PATH,
    UPDATE_PATH,
    NoojeeClient,
    NoojeeLeadInsert,
    NoojeeLeadUpdate,
    classify_answer,
    classify_transport,
)
from tasks.outcomes import Delivered, Rejected, Retry, Review
from worker.settings import NoojeeSettings

pytestmark = pytest.mark.timeout(5)

BASE_URL = "https://pbx.test"
API_KEY = "k-123"
JANE = {"FirstPhone": "0383218199", "Name": "Jane Smith"}


def job_data(**overrides: Any) -> dict[str, Any]:
    """A valid update (or insert) in Python names; ``None`` in overrides removes a key."""
    data: dict[str, Any] = {
        "template_id": 41,
        "campaign_id": 42,
        "allocation_id": 38,
        "external_lead_id": "L-1001",
        "disposition": "Sale",
        "fields": dict(JANE),
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def refusal(kind: str, data: dict[str, Any]) -> JobValidationError:
    with pytest.raises(JobValidationError) as caught:
        validate_job(kind, data)
    return caught.value


def body(code: int, message: str = "x") -> bytes:
    """A Noojee answer body as the PBX writes it."""
    return json.dumps({"code": code, "message": message}).encode()


# -- the answer table: CRM_APIS.md §1 ----------------------------------------------------------
# (code, HTTP status Noojee sends it with, outcome class, bounded, busy); bounded/busy only Retry.
DOCUMENTED = [
    (0, 200, Delivered, None, None),
    (101, 400, Rejected, None, None),
    (102, 400, Rejected, None, None),
    (103, 500, Retry, True, False),
    (104, 400, Rejected, None, None),
    (105, 400, Rejected, None, None),
    (106, 400, Rejected, None, None),
    (107, 400, Rejected, None, None),
    (108, 400, Rejected, None, None),
    (109, 400, Retry, False, True),
    (110, 400, Review, None, None),
    (111, 400, Rejected, None, None),
    (112, 400, Rejected, None, None),
    (113, 400, Rejected, None, None),
    (114, 400, Rejected, None, None),
    (115, 400, Rejected, None, None),
    (116, 400, Rejected, None, None),
    (117, 400, Rejected, None, None),
]


@pytest.mark.parametrize(
    ("code", "status", "expected", "bounded", "busy"),
    DOCUMENTED,
    ids=[f"code-{row[0]}" for row in DOCUMENTED],
)
def test_every_documented_code_settles_as_the_contract_says(
    code: int, status: int, expected: type, bounded: bool | None, busy: bool | None
) -> None:
    outcome = classify_answer(status, body(code))

    assert type(outcome) is expected
    assert outcome.code == str(code)
    if expected is Retry:
        assert isinstance(outcome, Retry)
        assert (outcome.bounded, outcome.busy) == (bounded, busy)


def test_the_table_holds_exactly_the_documented_codes() -> None:
    assert set(ANSWERS) == {row[0] for row in DOCUMENTED}


def test_fault_103_is_a_bounded_retry_not_a_busy_signal() -> None:
    assert classify_answer(500, body(103)) == Retry(
        "103", ANSWERS[103].reason, bounded=True, busy=False
    )


def test_busy_109_is_an_unbounded_retry_that_tells_the_gate() -> None:
    outcome = classify_answer(400, body(109, "TIMEOUT_TOO_MANY_CONCURRENT_REQUESTS"))

    assert isinstance(outcome, Retry)
    assert not outcome.bounded
    assert outcome.busy


def test_107_reason_says_send_a_real_disposition() -> None:
    outcome = classify_answer(400, body(107))

    assert isinstance(outcome, Rejected)
    assert "send a real disposition" in outcome.reason


@pytest.mark.parametrize("code", [142, 100, 118, 999, -1])
def test_unknown_code_goes_to_review(code: int) -> None:
    outcome = classify_answer(400, body(code))

    assert isinstance(outcome, Review)
    assert outcome.code == str(code)


def test_capitalised_code_and_message_keys_are_tolerated() -> None:
    answer = json.dumps({"Code": 110, "Message": "LEAD_NOT_UPDATED_DUE_TO_CONFLICT"}).encode()

    assert isinstance(classify_answer(400, answer), Review)
    assert classify_answer(400, answer).code == "110"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, 109, Retry),  # the retryable 109 arrives as HTTP 400
        (400, 0, Delivered),  # code 0 is success whatever the status
        (200, 110, Review),
        (500, 104, Rejected),
        (200, 103, Retry),
    ],
)
def test_classification_is_on_code_not_http_status(status: int, code: int, expected: type) -> None:
    assert type(classify_answer(status, body(code))) is expected


def test_non_json_503_is_a_bounded_retry() -> None:
    outcome = classify_answer(503, b"<html>Service Unavailable</html>")

    assert isinstance(outcome, Retry)
    assert outcome.bounded
    assert not outcome.busy
    assert outcome.code == "http-503"


def test_non_json_401_is_a_bounded_retry_naming_the_api_key_variable() -> None:
    outcome = classify_answer(401, b"Unauthorized")

    assert isinstance(outcome, Retry)
    assert outcome.bounded
    assert "CONTACTSYNC_NOOJEE__API_KEY" in outcome.reason


@pytest.mark.parametrize("answer", [b"<html>Not Found</html>", b"", b'["not", "an", "object"]'])
def test_non_json_404_goes_to_review(answer: bytes) -> None:
    outcome = classify_answer(404, answer)

    assert isinstance(outcome, Review)
    assert outcome.code == "http-404"


# -- transport errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ConnectTimeout])
def test_failure_before_the_request_was_sent_is_a_bounded_retry(error: type[Exception]) -> None:
    outcome = classify_transport(error("boom"))

    assert isinstance(outcome, Retry)
    assert outcome.bounded
    assert not outcome.busy
    assert outcome.code == error.__name__


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_failure_after_the_request_was_sent_goes_to_review_as_unknown(
    error: type[Exception],
) -> None:
    outcome = classify_transport(error("boom"))

    assert isinstance(outcome, Review)
    assert "may or may not have applied" in outcome.reason


# -- the client against a mocked PBX -----------------------------------------------------------
@pytest.fixture
def pbx() -> Any:
    with respx.mock(base_url=BASE_URL, assert_all_called=False) as router:
        yield router


@pytest.fixture
def client() -> NoojeeClient:
    return NoojeeClient(NoojeeSettings(base_url=BASE_URL, api_key=API_KEY))


def test_update_posts_ids_and_api_key_as_query_and_the_lead_as_a_json_object(
    pbx: Any, client: NoojeeClient
) -> None:
    route = pbx.post(UPDATE_PATH).respond(200, json={"code": 0, "message": "OK"})
    job = NoojeeLeadUpdate(**job_data(callback_date="2026/11/24 09:30", priority=5))

    answer = client.send(job)

    assert isinstance(answer.outcome, Delivered)
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == "/servicemanager/rest/CampaignAPI/updateLeadFast"
    assert dict(request.url.params) == {
        "fTemplateId": "41",
        "fCampaignId": "42",
        "fAllocationId": "38",
        "njExternalLeadId": "L-1001",
        "apiKey": API_KEY,
    }
    assert json.loads(request.content) == {
        **JANE,
        "njDisposition": "Sale",
        "njCallBackDate": "2026/11/24 09:30",
        "njPriority": 5,
    }


def test_update_body_leaves_out_callback_and_priority_when_unset(
    pbx: Any, client: NoojeeClient
) -> None:
    route = pbx.post(UPDATE_PATH).respond(200, json={"code": 0, "message": "OK"})

    client.send(NoojeeLeadUpdate(**job_data()))

    assert json.loads(route.calls.last.request.content) == {**JANE, "njDisposition": "Sale"}


def test_insert_posts_allow_duplicates_and_a_json_array_of_one_lead(
    pbx: Any, client: NoojeeClient
) -> None:
    route = pbx.post(INSERT_PATH).respond(200, json={"code": 0, "message": "OK"})
    job = NoojeeLeadInsert(**job_data(allow_duplicates=True))

    answer = client.send(job)

    assert isinstance(answer.outcome, Delivered)
    request = route.calls.last.request
    assert request.url.path == "/servicemanager/rest/CampaignAPI/insertLeadFast"
    assert dict(request.url.params) == {
        "fTemplateId": "41",
        "fCampaignId": "42",
        "fAllocationId": "38",
        "allowDuplicates": "true",
        "apiKey": API_KEY,
    }
    assert json.loads(request.content) == [
        {"njExternalLeadId": "L-1001", **JANE, "njDisposition": "Sale"}
    ]


def test_insert_sends_allow_duplicates_false_by_default(pbx: Any, client: NoojeeClient) -> None:
    route = pbx.post(INSERT_PATH).respond(200, json={"code": 0, "message": "OK"})

    client.send(NoojeeLeadInsert(**job_data(disposition=None)))

    request = route.calls.last.request
    assert request.url.params["allowDuplicates"] == "false"
    assert json.loads(request.content) == [{"njExternalLeadId": "L-1001", **JANE}]


def test_client_read_timeout_is_the_configured_read_timeout(pbx: Any) -> None:
    route = pbx.post(UPDATE_PATH).respond(200, json={"code": 0, "message": "OK"})
    settings = NoojeeSettings(
        base_url=BASE_URL, api_key=API_KEY, pbx_queue_timeout_s=60, read_timeout_s=81.5
    )

    NoojeeClient(settings).send(NoojeeLeadUpdate(**job_data()))

    assert route.calls.last.request.extensions["timeout"]["read"] == 81.5


def test_secrets_are_the_api_key(client: NoojeeClient) -> None:
    assert client.secrets() == [API_KEY]


def test_busy_answer_over_http_400_is_classified_by_code(pbx: Any, client: NoojeeClient) -> None:
    pbx.post(UPDATE_PATH).respond(
        400, json={"code": 109, "message": "TIMEOUT_TOO_MANY_CONCURRENT_REQUESTS"}
    )

    outcome = client.send(NoojeeLeadUpdate(**job_data())).outcome

    assert isinstance(outcome, Retry)
    assert outcome.busy


def test_connect_error_gives_a_bounded_retry(pbx: Any, client: NoojeeClient) -> None:
    pbx.post(UPDATE_PATH).mock(side_effect=httpx.ConnectError("connection refused"))

    outcome = client.send(NoojeeLeadUpdate(**job_data())).outcome

    assert isinstance(outcome, Retry)
    assert outcome.bounded
    assert outcome.code == "ConnectError"


def test_client_without_base_url_names_the_variable_to_set() -> None:
    with pytest.raises(RuntimeError, match="CONTACTSYNC_NOOJEE__BASE_URL"):
        NoojeeClient(NoojeeSettings(api_key=API_KEY))


# -- job models ---------------------------------------------------------------------------------
def problem_paths(error: JobValidationError) -> set[str]:
    return {path for path, _ in error.problems}


@pytest.mark.parametrize(
    ("kind", "overrides", "path", "words"),
    [
        (
            "noojee.update",
            {"external_lead_id": None},
            {"external_lead_id", "njExternalLeadId"},
            "required",
        ),
        ("noojee.update", {"template_id": 0}, {"template_id", "fTemplateId"}, "greater than 0"),
        ("noojee.update", {"priority": 101}, {"priority", "njPriority"}, "100"),
        (
            "noojee.update",
            {"callback_date": "24/11/2026 09:30"},
            {"callback_date", "njCallBackDate"},
            "yyyy/MM/dd HH:mm",
        ),
        ("noojee.update", {"fields": {"Name": "Jane Smith"}}, {"fields"}, "phone field"),
        ("noojee.insert", {"fields": {"Name": "Jane Smith"}}, {"fields"}, "phone field"),
        ("noojee.update", {"fields": {"FirstPhone": "12ab"}}, {"fields"}, "FirstPhone"),
        ("noojee.update", {"disposition": None}, {"disposition", "njDisposition"}, "required"),
        ("noojee.update", {"fields": {**JANE, "njFoo": "x"}}, {"fields"}, "njFoo"),
    ],
    ids=[
        "missing-external-lead-id",
        "template-id-0",
        "priority-101",
        "callback-dd/mm/yyyy",
        "update-without-phone",
        "insert-without-phone",
        "phone-12ab",
        "update-without-disposition",
        "nj-field-name",
    ],
)
def test_refused_job_names_the_field(
    kind: str, overrides: dict[str, Any], path: set[str], words: str
) -> None:
    error = refusal(kind, job_data(**overrides))

    assert problem_paths(error) & path, error.problems
    assert any(words in message for _, message in error.problems), error.problems


@pytest.mark.parametrize(
    "overrides",
    [
        {"fields": {**JANE, "Name": "<No Change>"}},
        {"fields": {"FirstPhone": "<No Change>", "SecondPhone": "0383218199"}},
        {"disposition": "<No Change>"},
        {"contact_hours": "<No Change>"},
    ],
    ids=["name", "phone", "disposition", "contact-hours"],
)
def test_no_change_is_refused_on_insert(overrides: dict[str, Any]) -> None:
    error = refusal("noojee.insert", job_data(**overrides))

    assert any("only valid on update" in message for _, message in error.problems)


@pytest.mark.parametrize(
    "overrides",
    [
        {"fields": {**JANE, "FirstPhone": "<no change>"}},
        {"fields": {**JANE, "Name": "<NO CHANGE>"}},
        {"disposition": "<no change>"},
    ],
    ids=["phone", "name", "disposition"],
)
def test_no_change_in_the_wrong_case_asks_to_write_it_exactly(overrides: dict[str, Any]) -> None:
    error = refusal("noojee.update", job_data(**overrides))

    assert any("exactly as <No Change>" in message for _, message in error.problems)


def test_no_change_is_accepted_on_update_for_a_phone_and_the_disposition() -> None:
    job = validate_job(
        "noojee.update",
        job_data(disposition="<No Change>", fields={"FirstPhone": "<No Change>", "Name": "Jane"}),
    )

    assert isinstance(job, NoojeeLeadUpdate)
    assert job.disposition == "<No Change>"
    assert job.lead() == {
        "FirstPhone": "<No Change>",
        "Name": "Jane",
        "njDisposition": "<No Change>",
    }


def test_insert_without_disposition_is_valid() -> None:
    job = validate_job("noojee.insert", job_data(disposition=None))

    assert isinstance(job, NoojeeLeadInsert)
    assert job.disposition is None
    assert "njDisposition" not in job.lead()


@pytest.mark.parametrize("kind", ["noojee.update", "noojee.insert"])
def test_job_without_any_fields_is_refused_for_want_of_a_phone(kind: str) -> None:
    error = refusal(kind, job_data(fields=None))

    assert "fields" in problem_paths(error)


@pytest.mark.parametrize(
    "overrides",
    [
        {"fields": {"Name": "Jane Smith", "FirstPhone": "555-CALL-JANE"}},
        {"fields": {"Name": "Jane Smith", "FirstPhone": "555-CALL-JANE"}, "priority": 101},
        {"fields": {"Name": "Jane Smith", "FirstPhone": "555-CALL-JANE", "Email": 7}},
        {"fields": {"Name": "Jane Smith"}, "Surname": "555-CALL-JANE"},
    ],
    ids=["bad-phone", "bad-phone-and-priority", "non-string-field", "unknown-top-level-key"],
)
def test_refusal_never_repeats_the_personal_values(overrides: dict[str, Any]) -> None:
    for kind in ("noojee.update", "noojee.insert"):
        error = refusal(kind, job_data(**overrides))

        text = str(error) + repr(error.problems)
        assert "Jane Smith" not in text
        assert "555-CALL-JANE" not in text


def test_models_accept_noojee_wire_names() -> None:
    job = validate_job(
        "noojee.update",
        {
            "fTemplateId": 41,
            "fCampaignId": 42,
            "fAllocationId": 38,
            "njExternalLeadId": "L-1001",
            "njDisposition": "Sale",
            "njCallBackDate": "2026/11/24 09:30",
            "njPriority": 5,
            "njContactHours": "Australia/Melbourne",
            "fields": dict(JANE),
        },
    )

    assert isinstance(job, NoojeeLeadUpdate)
    assert (job.template_id, job.campaign_id, job.allocation_id) == (41, 42, 38)
    assert job.external_lead_id == "L-1001"
    assert (job.disposition, job.callback_date, job.priority) == ("Sale", "2026/11/24 09:30", 5)
    assert job.contact_hours == "Australia/Melbourne"


def test_insert_accepts_allow_duplicates_by_wire_name() -> None:
    job = validate_job("noojee.insert", {**job_data(), "allowDuplicates": True})

    assert isinstance(job, NoojeeLeadInsert)
    assert job.allow_duplicates is True


def test_masked_keeps_ids_and_disposition_and_masks_the_contact() -> None:
    job = validate_job("noojee.update", job_data(priority=5))

    shown = job.masked()

    assert shown["template_id"] == 41
    assert shown["campaign_id"] == 42
    assert shown["allocation_id"] == 38
    assert shown["external_lead_id"] == "L-1001"
    assert shown["disposition"] == "Sale"
    assert shown["priority"] == 5
    assert shown["fields"] == {"FirstPhone": "0***99", "Name": "J***th"}
    assert "Jane Smith" not in json.dumps(shown)
    assert "0383218199" not in json.dumps(shown)


@respx.mock
def test_only_code_and_message_of_an_answer_are_kept() -> None:
    from tasks.noojee import NoojeeClient

    client = NoojeeClient(NoojeeSettings(base_url="https://pbx.test", api_key="k-123"))
    job = validate_job("noojee.update", job_data())
    route = respx.post("https://pbx.test/servicemanager/rest/CampaignAPI/updateLeadFast")
    route.mock(
        return_value=httpx.Response(
            400, json={"code": 110, "message": "CONFLICT", "lead": {"FirstPhone": "0383218199"}}
        )
    )
    assert client.send(job).answer == 'HTTP 400 {"code": 110, "message": "CONFLICT"}'
    echo = "<html>POST /updateLeadFast?apiKey=k-123 FirstPhone=0383218199</html>"
    route.mock(return_value=httpx.Response(500, text=echo, headers={"content-type": "text/html"}))
    answer = client.send(job).answer
    assert answer == f"HTTP 500: {len(echo)} bytes of text/html, not a Noojee answer"
