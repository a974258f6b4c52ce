"""Every field of a job is bounded at the door: ids as the destinations declare them (Int32 where
they say so), whole numbers that are JSON integers (not ``true``, not ``41.0``), the number of
lead fields, lengths, and no control characters in ids or field names. Each bound is checked
through the intake's parser, as a client meets it, and none of its errors quotes the value."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from producers.intake import Problem, parse_submission
from tasks.models import INT32_MAX, JobValidationError, validate_job

pytestmark = pytest.mark.timeout(30)

NOOJEE = {
    "template_id": 41,
    "campaign_id": 41,
    "allocation_id": 38,
    "external_lead_id": "L1",
    "disposition": "Sale",
    "fields": {"FirstPhone": "0383218199", "Name": "Jane Smith"},
}
TRENDSIC = {"contact_id": 7, "agent_id": 3, "contact": {"Phone": "0383218199"}}
EXPANDABLE = {"CUSTOMER_ID": "C1", "CUST_CONTACT": "1", "PHONE_NO": "0383218199"}


def refused(kind: str, job: dict[str, Any]) -> list[tuple[str, str]]:
    """The (path, reason) of every problem the intake names for one job; fails if accepted."""
    body = json.dumps({"kind": kind, "job": job}).encode()
    with pytest.raises(Problem) as caught:
        parse_submission(body, "crm", None)
    assert caught.value.status == 422
    return caught.value.errors


def test_the_valid_jobs_used_here_are_accepted() -> None:
    for kind, job in (
        ("noojee.update", NOOJEE),
        ("trendsic.contact_connection", TRENDSIC),
        ("expandable.contact_update", EXPANDABLE),
    ):
        assert parse_submission(json.dumps({"kind": kind, "job": job}).encode(), "c", None).jobs


@pytest.mark.parametrize("field", ["template_id", "campaign_id", "allocation_id"])
def test_a_4300_digit_noojee_id_is_refused_as_above_int32(field: str) -> None:
    # 4,300 digits is the most Python's json reads; the id still names no Int32.
    errors = refused("noojee.update", {**NOOJEE, field: int("9" * 4300)})

    assert errors == [(f"$.job.{field}", f"Input should be less than or equal to {INT32_MAX}")]


@pytest.mark.parametrize("value", [INT32_MAX + 1, 0, -1])
def test_noojee_ids_outside_int32_or_not_positive_are_refused(value: int) -> None:
    assert [path for path, _ in refused("noojee.update", {**NOOJEE, "template_id": value})] == [
        "$.job.template_id"
    ]


def test_int32_max_itself_is_a_valid_noojee_id() -> None:
    job = validate_job("noojee.update", {**NOOJEE, "template_id": INT32_MAX})
    assert job.template_id == INT32_MAX  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [True, False, 41.0, 41.5, "4 1", "²", "①", "1" * 11, None])
@pytest.mark.parametrize("field", ["template_id", "campaign_id", "allocation_id", "priority"])
def test_a_noojee_whole_number_must_be_a_json_integer(field: str, value: Any) -> None:
    job = {**NOOJEE, field: value}
    if value is None and field == "priority":
        pytest.skip("priority is optional: null leaves it out")
    errors = refused("noojee.update", job)

    assert [path for path, _ in errors] == [f"$.job.{field}"]


@pytest.mark.parametrize("value", [True, 7.0, "7", INT32_MAX + 1])
@pytest.mark.parametrize("field", ["contact_id", "agent_id"])
def test_trendsic_ids_are_strict_int32(field: str, value: Any) -> None:
    assert [
        path for path, _ in refused("trendsic.contact_connection", {**TRENDSIC, field: value})
    ] == [f"$.job.{field}"]


def test_200000_lead_fields_are_refused_without_validating_each() -> None:
    fields = {f"Field{n}Phone": "0412345678" for n in range(200_000)}
    started = time.perf_counter()

    errors = refused("noojee.update", {**NOOJEE, "fields": fields})

    assert [path for path, _ in errors] == ["$.job.fields"]
    assert "at most 200" in errors[0][1]
    assert time.perf_counter() - started < 5  # parsing dominates; validation stops at 201


def test_200_lead_fields_are_accepted() -> None:
    fields = {f"Field{n}Phone": "0412345678" for n in range(200)}
    assert validate_job("noojee.update", {**NOOJEE, "fields": fields})


@pytest.mark.parametrize("lead_id", ["L\x001", "L\n1", "L\x7f1", "L\t1", " L1", "L1?"])
def test_control_characters_and_url_syntax_in_a_lead_id_are_refused(lead_id: str) -> None:
    errors = refused("noojee.update", {**NOOJEE, "external_lead_id": lead_id})

    assert [path for path, _ in errors] == ["$.job.external_lead_id"]


@pytest.mark.parametrize("name", ["First\x00Phone", "FirstPhone\n", "Näme", "1Phone", "a" * 65])
def test_a_lead_field_name_is_a_letter_then_letters_digits_or_underscores(name: str) -> None:
    errors = refused("noojee.update", {**NOOJEE, "fields": {"FirstPhone": "0383218199", name: "x"}})
    assert [path for path, _ in errors] == ["$.job.fields"]
    assert name not in errors[0][1]  # a bad name may be a value put as a key: never echoed


@pytest.mark.parametrize("value", ["Jane\x00Smith", "Jane\x1bSmith", "J" * 4001])
def test_lead_field_values_are_bounded_and_free_of_control_characters(value: str) -> None:
    errors = refused(
        "noojee.update", {**NOOJEE, "fields": {"FirstPhone": "0383218199", "Name": value}}
    )
    assert [path for path, _ in errors] == ["$.job.fields"]


def test_tabs_and_line_breaks_stay_allowed_in_lead_field_values() -> None:
    assert validate_job(
        "noojee.update", {**NOOJEE, "fields": {"FirstPhone": "0383218199", "Notes": "a\tb\r\nc"}}
    )


@pytest.mark.parametrize("field", ["disposition", "contact_hours"])
def test_noojee_names_refuse_control_characters(field: str) -> None:
    assert [path for path, _ in refused("noojee.update", {**NOOJEE, field: "Sa\x00le"})] == [
        f"$.job.{field}"
    ]


@pytest.mark.parametrize("value", ["Jane\x00", "x" * 4001])
def test_trendsic_text_is_bounded_and_free_of_control_characters(value: str) -> None:
    errors = refused("trendsic.contact_connection", {**TRENDSIC, "contact": {"FirstName": value}})
    assert [path for path, _ in errors] == ["$.job.contact.FirstName"]


@pytest.mark.parametrize("key", ["CUSTOMER_ID", "CUST_CONTACT"])
@pytest.mark.parametrize("value", ["C\x001", "C" * 65, True, 1])
def test_expandable_keys_are_short_plain_text(key: str, value: Any) -> None:
    assert [
        path for path, _ in refused("expandable.contact_update", {**EXPANDABLE, key: value})
    ] == [f"$.job.{key}"]


def test_mission_capital_ids_are_salesforce_ids_only() -> None:
    for value in ("00QEa00000ItVf8\x00AF", True, "0" * 4300):
        assert [
            path for path, _ in refused("missioncapital.contact_user", {"application_id": value})
        ] == ["$.job.application_id"]


def test_a_job_model_built_in_python_never_quotes_its_values_in_the_error() -> None:
    from pydantic import ValidationError

    from tasks.noojee import NoojeeLeadUpdate

    with pytest.raises(ValidationError) as caught:
        NoojeeLeadUpdate(**{**NOOJEE, "fields": {"MobilePhone": "0412345678", "Name": 5}})
    text = str(caught.value)
    assert "fields.Name" in text
    assert "0412345678" not in text and "input_value" not in text


def test_validate_job_errors_name_fields_never_values() -> None:
    with pytest.raises(JobValidationError) as caught:
        validate_job(
            "noojee.update",
            {
                **NOOJEE,
                "callback_date": "tomorrow 0412345678",
                "fields": {"MobilePhone": "0412345678x"},
            },
        )
    assert "0412345678" not in str(caught.value)
    assert {path for path, _ in caught.value.problems} == {"callback_date", "fields"}


def test_the_openapi_document_states_the_bounds_in_json_schema_keywords() -> None:
    from producers.openapi import document

    schemas = document()["components"]["schemas"]
    template = schemas["NoojeeLeadUpdate"]["properties"]["fTemplateId"]
    assert (template["exclusiveMinimum"], template["maximum"]) == (0, INT32_MAX)
    assert schemas["NoojeeLeadUpdate"]["properties"]["fields"]["maxProperties"] == 200
    text = json.dumps(document())
    assert not any(f'"{word}": ' in text for word in ("gt", "ge", "lt", "le")), (
        "pydantic wrote a bound as a keyword JSON Schema does not have"
    )
