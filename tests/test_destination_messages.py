"""A destination's message that quotes the job's own personal data is stored masked, the way
the payload is shown: through the real worker and the Noojee simulator, read back over HTTP and
with `contactsync review show` (without --reveal)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Simulator, new_lead_id, run_cli, wait_for_state

pytestmark = pytest.mark.integration

CRM = {"Authorization": "Bearer crm-token-0123456789"}
PHONE, NAME = "0412345678", "Jane Smith"


def test_a_noojee_message_echoing_the_phone_and_name_is_stored_masked(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    lead = new_lead_id()
    simulator.script(lead, ["echo"])  # 110, its message quoting every field sent
    job = {
        "kind": "noojee.update",
        "job": {
            "template_id": 41,
            "campaign_id": 41,
            "allocation_id": 38,
            "external_lead_id": lead,
            "disposition": "Sale",
            "fields": {"MobilePhone": PHONE, "Name": NAME},
        },
    }
    with httpx.Client(base_url=stack.intake_url, timeout=10, headers=CRM) as intake:
        job_id = intake.post("/v1/jobs", json=job).json()["job_id"]
        record = wait_for_state(ledger, job_id, ("review",))
        shown = intake.get(f"/v1/jobs/{job_id}").text

    kept = dict(ledger.r.hgetall(ledger.job_key(job_id)))
    kept.pop("payload")  # the job itself, for the operator; shown masked below
    answers = " ".join(str(v) for v in kept.values()) + " ".join(map(str, record.history))
    assert "MobilePhone=0***78" in record.last_answer and "Name=J***th" in record.last_answer
    for text in (answers, shown, run_cli("review", "show", job_id).stdout):
        assert PHONE not in text and NAME not in text
    assert "0***78" in shown
    revealed = run_cli("review", "show", job_id, "--reveal").stdout
    assert PHONE in revealed  # the payload, on request; the answers stay masked
    assert revealed.count(PHONE) == 1
