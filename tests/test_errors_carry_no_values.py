"""No error anywhere carries a value of the job: each error path a person or a log can see,
fed jobs whose bad values are personal data. The Python API (building a model, validate_job,
submit), the intake's parser, a backfill's rejects file and the CLI's output (submit,
backfill). Hypothesis puts a random value, made unlike any message text, into random fields
of each kind, in the ways a value goes wrong: wrong type, too long, control characters,
not the expected shape."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from producers.intake import Problem, parse_submission
from tasks.models import JobValidationError, model_for, validate_job
from tests.conftest import NOOJEE_PLACE, run_cli

PHONE, NAME = "0412345678", "Jane Smith"
VALID = {
    "noojee.update": {
        "template_id": 41,
        "campaign_id": 41,
        "allocation_id": 38,
        "external_lead_id": "L1",
        "disposition": "Sale",
        "fields": {"MobilePhone": PHONE, "Name": NAME},
    },
    "noojee.insert": {
        "template_id": 41,
        "campaign_id": 41,
        "allocation_id": 38,
        "external_lead_id": "L1",
        "fields": {"MobilePhone": PHONE},
    },
    "trendsic.contact_connection": {
        "contact_id": 7,
        "agent_id": 3,
        "contact": {"Phone": PHONE, "FirstName": NAME},
    },
    "expandable.contact_update": {
        "CUSTOMER_ID": "C1",
        "CUST_CONTACT": "1",
        "CELL_PHONE_NO": PHONE,
        "FIRST_NAME": NAME,
    },
    "missioncapital.contact_user": {"application_id": "00QEa00000ItVf8MAF"},
}

#: Values no message contains by chance: a letter Q, then 10 or more of digits and z.
SECRETS = st.from_regex(r"Q[0-9z]{10,16}", fullmatch=True)


def spoil(secret: str, how: str) -> Any:
    """``secret`` made into a bad value of one kind."""
    return {
        "as text": secret,
        "with NUL": f"{secret}\x00",
        "too long": secret * 400,
        "in a list": [secret],
        "in an object": {"v": secret},
        "with a newline": f"{secret}\n",
        "spaced": f" {secret} ",
    }[how]


def paths(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every value's path in a job's data (the lead fields' and contact's values included)."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in paths(v, (*prefix, k))]
    return [prefix]


def put(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(data))
    inner = copy
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return copy


def every_error_text(kind: str, data: dict[str, Any]) -> str:
    """Everything the Python API and the intake's parser say about ``data``."""
    said = []
    try:
        model_for(kind)(**data)
    except ValidationError as exc:
        said += [str(exc), repr(exc), json.dumps(exc.errors(include_input=False), default=str)]
    try:
        validate_job(kind, data)
    except JobValidationError as exc:
        said += [str(exc), repr(exc.problems)]
    try:
        parse_submission(json.dumps({"kind": kind, "job": data}).encode(), "crm", None)
    except Problem as exc:
        said += [json.dumps(exc.body())]
    return "\n".join(said)


HOW = ["as text", "with NUL", "too long", "in a list", "in an object", "with a newline", "spaced"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(VALID)), secret=SECRETS, how=st.sampled_from(HOW), data=st.data()
)
def test_no_error_of_the_python_api_or_the_intake_quotes_a_bad_value(
    kind: str, secret: str, how: str, data: st.DataObject
) -> None:
    path = data.draw(st.sampled_from(paths(VALID[kind])))
    spoiled = put(VALID[kind], path, spoil(secret, how))
    said = every_error_text(kind, spoiled)
    assert secret not in said, (kind, path, how, said[:500])
    # The job's good personal values never show either, whatever is wrong with another field.
    assert PHONE not in said and NAME not in said


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_field_left_out_or_nulled_names_it_without_the_rest(kind: str) -> None:
    for path in paths(VALID[kind]):
        said = every_error_text(kind, put(VALID[kind], path, None))
        assert PHONE not in said and NAME not in said, (kind, path)


def test_submit_refuses_what_is_not_a_job_and_bad_arguments_without_quoting_them() -> None:
    from producers.submit import _new_job
    from tasks.noojee import NoojeeLeadUpdate

    job = NoojeeLeadUpdate(**VALID["noojee.update"])  # type: ignore[arg-type]
    attempts = [
        lambda: _new_job(VALID["noojee.update"], "bulk", None, "", "", 0),  # type: ignore[arg-type]
        lambda: _new_job(job, "bulk", f"key {PHONE}", "", "", 0),
        lambda: _new_job(job, "bulk", None, "", "", 0, version=f"v{PHONE}"),
        lambda: _new_job(job, f"{NAME}", None, "", "", 0),
    ]
    for attempt in attempts:
        with pytest.raises((TypeError, ValueError)) as refused:
            attempt()
        text = str(refused.value)
        assert PHONE not in text and NAME not in text and "0412345678" not in text


def test_a_backfills_rejects_file_and_output_never_quote_a_value(tmp_path: Path) -> None:
    rows = [
        ["L1", PHONE, NAME, "2026/11/24 09:30"],  # valid
        ["L2", f"{PHONE}x", NAME, "2026/11/24 09:30"],  # not a phone
        ["L3", PHONE, NAME, f"{NAME} at 9"],  # not a date
        ["L\x004", PHONE, f"{NAME}\x00", "2026/11/24 09:30"],  # NUL in an id and a value
        [f" {PHONE} ", PHONE, NAME * 500, "2026/11/24 09:30"],
    ]
    path = tmp_path / "leads.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["external_lead_id", "MobilePhone", "Name", "callback_date"])
        writer.writerows(rows)
    done = run_cli(
        "backfill",
        str(path),
        "-d",
        "noojee",
        "--kind",
        "update",
        "--dry-run",
        "--set",
        "template_id=41",
        "--set",
        "campaign_id=41",
        "--set",
        "allocation_id=38",
        "--set",
        "disposition=Sale",
        cwd=tmp_path,
    )
    rejects = (tmp_path / "leads.csv.rejects.csv").read_text()

    assert done.returncode == 1, done.stdout + done.stderr
    assert [line.split(",")[0] for line in rejects.splitlines()[1:]] == [
        "3",
        "4",
        "5",
        "5",
        "6",
        "6",
    ]
    for text in (rejects, done.stdout, done.stderr):
        assert PHONE not in text and NAME not in text and "Jane" not in text, text


def test_the_cli_submit_names_bad_fields_never_their_values(tmp_path: Path) -> None:
    done = run_cli(
        "submit",
        "noojee-update",
        *NOOJEE_PLACE,
        "--lead-id",
        f"L\x01{PHONE}",
        "--disposition",
        "Sale",
        "--callback-date",
        f"{NAME} 9am",
        "--field",
        f"MobilePhone={PHONE}x",
        "--field",
        f"Name={NAME}\x01",
        cwd=tmp_path,
    )
    assert done.returncode == 2
    out = done.stdout + done.stderr
    assert "nothing was queued" in out and "callback_date" in out and "fields" in out
    assert PHONE not in out and NAME not in out and "Jane" not in out
