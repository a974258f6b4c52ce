"""The console over plain HTTP, through the real stack: nothing without a session, no personal
data or secret in any page unless revealed (and every reveal in the job's history), CSRF, the
intake's human-readable pages, and Flower telling why a job needs a person."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import (
    PERSONAL_VALUES,
    Simulator,
    new_lead_id,
    sample_update,
    wait_for,
    wait_for_state,
)

pytestmark = pytest.mark.integration

OPS_TOKEN = "ops-token-0123456789"
LISTS = ("review", "rejected", "retrying", "running", "queued", "merged", "superseded")


@pytest.fixture
def anonymous(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.intake_url, timeout=10) as client:
        yield client


@pytest.fixture
def operator(stack: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.intake_url, timeout=20) as client:
        answer = client.post("/console/login", data={"token": OPS_TOKEN, "next": "/console/"})
        assert answer.status_code == 303 and "cs_console" in client.cookies
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="_csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)


def review_job(simulator: Simulator, ledger: Any) -> str:
    from producers import submit

    lead = new_lead_id()
    simulator.script(lead, [110])
    job_id = str(submit(sample_update(lead), client="crm"))
    wait_for_state(ledger, job_id, ("review",))
    return job_id


def test_every_page_and_action_refuses_a_caller_without_a_session(
    anonymous: httpx.Client, simulator: Simulator, ledger: Any
) -> None:
    job_id = review_job(simulator, ledger)
    pages = [
        "/console/",
        "/console/search?q=x",
        f"/console/jobs/{job_id}",
        *(f"/console/{name}" for name in LISTS),
    ]
    for path in pages:
        answer = anonymous.get(path)
        assert answer.status_code == 302, path
        assert answer.headers["location"].startswith("/console/login?next=")
        assert job_id not in answer.text
    actions = [
        f"/console/jobs/{job_id}/{a}" for a in ("reveal", "requeue", "discard", "retry-now")
    ] + ["/console/bulk", "/console/logout"]
    for path in actions:
        answer = anonymous.post(
            path,
            data={
                "reason": "x",
                "list": "review",
                "action": "discard",
                "scope": "matching",
                "confirm": "1",
            },
        )
        assert answer.status_code == 403, path
        assert not any(v in answer.text for v in PERSONAL_VALUES)
    # A forged or tampered cookie is no session either.
    forged = httpx.Client(
        base_url=str(anonymous.base_url),
        cookies={"cs_console": '{"c": "ops", "x": "a", "t": 9999999999999}'},
    )
    assert forged.get("/console/").status_code == 302
    forged.close()
    assert ledger.get(job_id).state == "review"  # nothing acted


def test_a_non_operator_token_cannot_log_in(anonymous: httpx.Client) -> None:
    for token in ("crm-token-0123456789", "not-a-token-at-all", ""):
        answer = anonymous.post("/console/login", data={"token": token})
        assert answer.status_code == 401
        assert "cs_console" not in answer.headers.get("set-cookie", "")


def test_an_action_without_the_session_csrf_token_is_refused(
    operator: httpx.Client, simulator: Simulator, ledger: Any
) -> None:
    job_id = review_job(simulator, ledger)
    for data in ({}, {"_csrf": "not-the-token"}):
        answer = operator.post(f"/console/jobs/{job_id}/discard", data={**data, "reason": "x"})
        assert answer.status_code == 403
    assert ledger.get(job_id).state == "review"


def test_no_page_shows_personal_data_unless_revealed_and_every_reveal_is_in_the_history(
    operator: httpx.Client, simulator: Simulator, ledger: Any, stack: Any
) -> None:
    job_id = review_job(simulator, ledger)
    record = ledger.get(job_id)
    pages = [
        "/console/",
        f"/console/jobs/{job_id}",
        f"/console/search?q={record.entity}",
        f"/console/search?q={job_id}",
        *(f"/console/{name}" for name in LISTS),
        *(f"/console/{name}?q=L-&sort=attempts" for name in LISTS),
        "/docs",
    ]
    secrets = (
        *PERSONAL_VALUES,
        OPS_TOKEN,
        "crm-token-0123456789",
        "test-flower-password",
        "sandbox-key",
    )
    for path in pages:
        answer = operator.get(path, follow_redirects=True)
        assert answer.status_code == 200, path
        assert answer.headers["cache-control"] == "no-store"
        shown = [value for value in secrets if value in answer.text]
        assert not shown, f"{path} shows {shown}"

    page = operator.get(f"/console/jobs/{job_id}").text
    revealed = operator.post(f"/console/jobs/{job_id}/reveal", data={"_csrf": csrf_of(page)})
    assert revealed.status_code == 200
    assert all(value in revealed.text for value in PERSONAL_VALUES)
    history = ledger.get(job_id, with_history=True).history
    assert history[0]["event"] == "revealed" and history[0]["by"] == "ops"
    again = operator.get(f"/console/jobs/{job_id}").text  # masked again, the reveal listed
    assert not any(value in again for value in PERSONAL_VALUES)
    assert "revealed" in again
    log = (stack.log_dir / "intake.log").read_text()
    assert not any(value in log for value in PERSONAL_VALUES)


def test_a_requeue_refused_for_newer_data_names_the_job_and_can_be_forced(
    operator: httpx.Client, simulator: Simulator, ledger: Any
) -> None:
    from producers import submit

    lead = new_lead_id()
    simulator.script(lead, [110])
    older = str(submit(sample_update(lead), client="crm"))
    wait_for_state(ledger, older, ("review",))
    simulator.script(lead, [0])
    newer = str(submit(sample_update(lead, disposition="Callback"), client="crm"))
    wait_for_state(ledger, newer, ("delivered",))

    page = operator.get(f"/console/jobs/{older}").text
    assert newer in page and 'name="force"' in page
    refused = operator.post(f"/console/jobs/{older}/requeue", data={"_csrf": csrf_of(page)})
    assert refused.status_code == 409 and newer in refused.text
    assert ledger.get(older).state == "review"
    forced = operator.post(
        f"/console/jobs/{older}/requeue", data={"_csrf": csrf_of(page), "force": "1"}
    )
    assert forced.status_code == 303
    record = wait_for_state(ledger, older, ("delivered",))
    assert any(e["event"] == "requeued" and e.get("force") == "1" for e in record.history)


def test_search_finds_a_job_by_id_idempotency_key_and_record(
    operator: httpx.Client, ledger: Any
) -> None:
    from producers import submit

    lead = new_lead_id()
    job_id = str(submit(sample_update(lead), client="crm", idempotency_key=f"evt-{lead}"))
    wait_for_state(ledger, job_id, ("delivered",))
    by_id = operator.get(f"/console/search?q={job_id}")
    assert by_id.status_code == 302 and by_id.headers["location"] == f"/console/jobs/{job_id}"
    by_key = operator.get(f"/console/search?q=evt-{lead}").text
    assert job_id in by_key and "idempotency key" in by_key
    by_record = operator.get(f"/console/search?q={lead}").text
    assert f"noojee:{lead}" in by_record and job_id in by_record  # its newest delivery


def test_the_intake_serves_a_front_page_and_readable_api_docs(anonymous: httpx.Client) -> None:
    assert anonymous.get("/").headers["location"] == "/console/"
    assert anonymous.get("/redoc").headers["location"] == "/docs"
    docs = anonymous.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    for text in (
        "POST",
        "/v1/jobs",
        "/v1/review/{job_id}/requeue",
        "NoojeeLeadUpdate",
        "njCallBackDate",
        "Idempotency-Key",
    ):
        assert text in docs.text
    assert "https://" not in docs.text.split("<main>")[0]  # no CDN: only our own files
    css = re.search(r'href="(/console/static/console\.css[^"]*)"', docs.text)
    assert css and anonymous.get(css.group(1)).status_code == 200


def test_flower_shows_why_a_job_is_in_review_and_its_state(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    job_id = review_job(simulator, ledger)
    auth = stack.flower_credentials

    def info() -> Any:
        answer = httpx.get(f"{stack.flower_url}/api/task/info/{job_id}", auth=auth, timeout=10)
        body = answer.json() if answer.status_code == 200 else {}
        return body if body.get("state") == "REVIEW" and body.get("result") else None

    shown = wait_for(info, 20, "Flower's REVIEW with a result")
    assert "110" in shown["result"] and "CONFLICT" in shown["result"]
    assert "job state: review" in shown["result"] and f"/console/jobs/{job_id}" in shown["result"]
    page = httpx.get(f"{stack.flower_url}/task/{job_id}", auth=auth, timeout=10).text
    assert "LEAD_NOT_UPDATED_DUE_TO_CONFLICT" in page and "job state: review" in page
    assert not any(value in page for value in PERSONAL_VALUES)
