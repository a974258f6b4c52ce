"""The operator's commands against the running system, as a person types them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import (
    NOOJEE_PLACE,
    PERSONAL_VALUES,
    Simulator,
    new_lead_id,
    run_cli,
    wait_for_state,
)

pytestmark = pytest.mark.integration


def submit_by_cli(lead: str) -> str:
    result = run_cli(
        "submit",
        "noojee-update",
        *NOOJEE_PLACE,
        "--lead-id",
        lead,
        "--disposition",
        "Sale",
        "--field",
        "FirstPhone=0383218199",
        "--field",
        "Name=Jane Smith",
        "--field",
        "Email=jane.smith@example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_operator_sees_a_conflict_masked_and_requeues_it_to_delivery(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    lead = new_lead_id()
    simulator.script(lead, [110, 0])
    job_id = submit_by_cli(lead)
    wait_for_state(ledger, job_id, ("review",))

    listing = run_cli("review", "list", "--limit", "1000")
    assert job_id in listing.stdout and "LEAD_NOT_UPDATED_DUE_TO_CONFLICT" in listing.stdout

    shown = run_cli("review", "show", job_id)
    assert shown.returncode == 0
    for text in ("state", "review", "attempt", "code=110", "masked", lead, "Sale"):
        assert text in shown.stdout, text
    assert not any(value in shown.stdout for value in PERSONAL_VALUES)
    revealed = run_cli("review", "show", job_id, "--reveal")
    assert "0383218199" in revealed.stdout  # an operator may ask to see it

    refused = run_cli("review", "requeue", job_id, "--set", "FirstPhone=not-a-phone")
    assert refused.returncode == 2 and "FirstPhone: not a phone number" in refused.stdout
    requeued = run_cli("review", "requeue", job_id, "--set", "disposition=Callback", "--by", "ann")
    assert requeued.returncode == 0, requeued.stdout
    record = wait_for_state(ledger, job_id, ("delivered",))
    assert any(e["event"] == "requeued" and e["by"] == "ann" for e in record.history)
    assert simulator.lead(lead)["njDisposition"] == "Callback"  # type: ignore[index]


def test_operator_discards_a_review_job_and_it_ends_rejected_with_the_reason(
    stack: Any, simulator: Simulator, ledger: Any
) -> None:
    lead = new_lead_id()
    simulator.script(lead, [110])
    job_id = submit_by_cli(lead)
    wait_for_state(ledger, job_id, ("review",))

    assert run_cli("review", "discard", job_id).returncode == 2  # --reason is required
    done = run_cli("review", "discard", job_id, "--reason", "agent already merged it", "--by", "bo")
    assert done.returncode == 0, done.stdout
    record = ledger.get(job_id, with_history=True)
    assert record.state == "rejected"
    assert record.last_reason == "discarded by bo: agent already merged it"
    assert job_id in run_cli("rejected", "list", "--limit", "1000").stdout
    again = run_cli("review", "discard", job_id, "--reason", "twice")
    assert again.returncode == 2 and "is rejected, not review" in again.stdout


def test_jobs_show_and_counts_and_config_keep_secrets_hidden(stack: Any, ledger: Any) -> None:
    job_id = submit_by_cli(new_lead_id())
    wait_for_state(ledger, job_id, ("delivered",))
    shown = run_cli("jobs", "show", job_id)
    assert "delivered" in shown.stdout and "dropped after delivery" in shown.stdout
    assert "delivered" in run_cli("jobs").stdout
    assert "no job nope" in run_cli("jobs", "show", "nope").stdout

    config = run_cli("config")
    assert config.returncode == 0
    assert "sandbox-key" not in config.stdout and "test-flower-password" not in config.stdout
    assert '"api_key": "**********"' in config.stdout
