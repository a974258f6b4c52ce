"""The operator's console in a real browser (Debian's chromium, driven by Playwright), through the
real stack: log in, read why a job is in review, fix it and watch it deliver, discard, bulk
requeue, retry now, and the gate's limit following the PBX. Each step checks the ledger as well
as the page. `make screenshots` runs it to rewrite the README's screenshots (docs/screenshots/);
other runs write them to a temporary folder, so that a test run leaves the tree clean."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

CHROMIUM = Path("/usr/bin/chromium")
#: The network here is closed: without these, Chromium keeps trying to reach Google.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPS_TOKEN = "ops-token-0123456789"
#: Where the screenshots go: `make screenshots` sets it to docs/screenshots.
SCREENSHOTS = Path(
    os.environ.get("CONTACTSYNC_SCREENSHOTS")
    or Path(tempfile.gettempdir()) / "contactsync-screenshots"
)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(
            "no /usr/bin/chromium: `make test` installs Debian's chromium where apt-get "
            "runs as root; elsewhere run `apt-get install chromium` to run these tests"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, stack: Any) -> Iterator[Any]:
    """A logged-in console page at 1280x800."""
    context = browser.new_context(viewport=DESKTOP, base_url=stack.intake_url)
    context.set_default_timeout(20_000)
    tab = context.new_page()
    log_in(tab)
    yield tab
    context.close()


def log_in(tab: Any, token: str = OPS_TOKEN) -> None:
    tab.goto("/console/")
    assert "/console/login" in tab.url  # nothing readable without a session
    tab.fill("#token", token)
    tab.click("section.login button")
    tab.wait_for_url("**/console/")


def fits(tab: Any) -> bool:
    """No horizontal scrolling of the page itself (wide tables scroll inside their box)."""
    return bool(tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def shoot(tab: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.set_viewport_size(DESKTOP)
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def submit_job(lead: str, **overrides: Any) -> str:
    from producers import submit

    return str(submit(sample_update(lead, **overrides), client="crm"))


def job_in_review(simulator: Simulator, ledger: Any) -> tuple[str, str]:
    """A job of a new lead that the PBX answers 110 (conflict): (lead, job id), in review."""
    lead = new_lead_id()
    simulator.script(lead, [110])
    job_id = submit_job(lead)
    wait_for_state(ledger, job_id, ("review",))
    return lead, job_id


def test_a_wrong_token_is_refused_and_an_operator_logs_in(browser: Any, stack: Any) -> None:
    context = browser.new_context(viewport=DESKTOP, base_url=stack.intake_url)
    tab = context.new_page()
    tab.goto("/console/review")
    assert "/console/login" in tab.url
    tab.fill("#token", "crm-token-0123456789")  # a client, not an operator
    tab.click("section.login button")
    assert "not an operator" in tab.inner_text(".problem")
    tab.fill("#token", OPS_TOKEN)
    tab.click("section.login button")
    tab.wait_for_url("**/console/review")  # back where it was going
    assert tab.inner_text("header .who") == "ops"
    cookie = next(c for c in context.cookies() if c["name"] == "cs_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    context.close()


def test_a_110_job_is_found_in_review_fixed_after_an_error_requeued_and_delivered(
    page: Any, simulator: Simulator, ledger: Any
) -> None:
    lead, job_id = job_in_review(simulator, ledger)

    page.goto(f"/console/review?q={lead}")
    row = page.locator(f'tr[data-job="{job_id}"]')
    assert "110" in row.inner_text() and "conflict" in row.inner_text().lower()
    page.goto("/console/review")
    shoot(page, "review")
    page.goto(f"/console/review?q={lead}")
    page.click(f'tr[data-job="{job_id}"] a.job-link')
    page.wait_for_url(f"**/console/jobs/{job_id}")
    assert page.get_attribute(".badge", "data-state") == "review"
    assert "LEAD_NOT_UPDATED_DUE_TO_CONFLICT" in page.inner_text(".why .reason")
    assert not any(value in page.content() for value in PERSONAL_VALUES)
    shoot(page, "job")

    # An invalid value: the error stands next to the field, and nothing changed.
    page.fill('input[name="f:callback_date"]', "tomorrow at nine")
    page.click("button.requeue")
    error = page.locator('.field-error[data-field="callback_date"]')
    assert "yyyy/MM/dd HH:mm" in error.inner_text()
    assert page.get_attribute('input[name="f:callback_date"]', "aria-invalid") == "true"
    record = ledger.get(job_id)
    assert record.state == "review" and "tomorrow" not in record.payload

    # Fixed, the lead unlocked at the PBX: requeued, then delivered.
    simulator.script(lead, [0])
    page.fill('input[name="f:callback_date"]', "2026/12/24 09:30")
    page.click("button.requeue")
    page.wait_for_url(f"**/console/jobs/{job_id}?done=*")
    assert "Requeued" in page.inner_text(".done")
    delivered = wait_for_state(ledger, job_id, ("delivered",))
    requeued = next(e for e in delivered.history if e["event"] == "requeued")
    assert requeued["by"] == "ops" and requeued["edited"] == "callback_date"
    assert simulator.lead(lead)["njCallBackDate"] == "2026/12/24 09:30"
    page.reload()
    assert page.get_attribute(".badge", "data-state") == "delivered"


def test_a_job_in_review_is_discarded_with_a_reason(
    page: Any, simulator: Simulator, ledger: Any
) -> None:
    _, job_id = job_in_review(simulator, ledger)
    page.goto(f"/console/jobs/{job_id}")
    page.click("button.discard")  # no reason: refused, next to the field
    assert "required" in page.inner_text('.field-error[data-field="reason"]')
    assert ledger.get(job_id).state == "review"
    page.fill("#reason", "duplicate of a manual update")
    page.click("button.discard")
    page.wait_for_url(f"**/console/jobs/{job_id}?done=discarded")
    assert page.get_attribute(".badge", "data-state") == "rejected"
    record = ledger.get(job_id, with_history=True)
    assert record.state == "rejected"
    assert record.last_reason == "discarded by ops: duplicate of a manual update"
    assert record.history[0]["event"] == "discarded" and record.history[0]["by"] == "ops"


def test_fifty_rejected_jobs_are_requeued_in_bulk_after_a_fix(
    page: Any, simulator: Simulator, ledger: Any
) -> None:
    batch = f"L-bulk{uuid.uuid4().hex[:8]}"
    leads = [f"{batch}-{n:02d}" for n in range(50)]
    simulator.configure(slots=8)
    httpx_post_scripts(simulator, {key: [104] for key in leads})  # on the do-not-call list
    ids = [submit_job(lead) for lead in leads]
    for job_id in ids:
        wait_for_state(ledger, job_id, ("rejected",), timeout_s=60)
    assert all("104" == ledger.get(i).last_code for i in ids)

    httpx_post_scripts(simulator, {key: [0] for key in leads})  # the fix: off the list
    page.goto(f"/console/rejected?code=104&q={batch}")
    assert page.get_attribute("h1 .count", "data-total") == "50"
    page.select_option('select[name="action"]', "requeue")
    page.click('button[name="scope"][value="matching"]')
    assert page.get_attribute(".confirm-count", "data-count") == "50"
    assert "Requeue 50 rejected jobs?" in page.inner_text("h1")
    assert {ledger.get(i).state for i in ids} == {"rejected"}  # nothing before confirming
    page.click("form.confirm button.primary")
    result = page.locator(".bulk-result")
    assert result.get_attribute("data-done") == "50" and result.get_attribute("data-refused") == "0"
    for job_id in ids:
        record = wait_for_state(ledger, job_id, ("delivered",), timeout_s=60)
        assert any(e["event"] == "requeued" and e["by"] == "ops" for e in record.history)
    simulator.configure(slots=4)


def httpx_post_scripts(simulator: Simulator, scripts: dict[str, list[int]]) -> None:
    import httpx

    httpx.post(f"{simulator.url}/_script", json={"scripts": scripts}).raise_for_status()


def test_a_retrying_job_is_retried_now(page: Any, simulator: Simulator, ledger: Any) -> None:
    lead = new_lead_id()
    simulator.script(lead, [103, 103, 0])  # faults: retried through the schedule
    job_id = submit_job(lead)
    schedule = ledger.set_key("schedule")
    far = {"at": 0}

    def pushed_back() -> bool:
        # As production's backoff would (up to 10 min): the test settings retry in a second.
        far["at"] = int(ledger.r.time()[0]) * 1000 + 600_000
        if ledger.r.zadd(schedule, {job_id: far["at"]}, xx=True, ch=True):
            ledger.r.hset(ledger.job_key(job_id), "next_attempt_at_ms", far["at"])
            return True
        assert ledger.get(job_id).state != "delivered", "the job delivered before it retried"
        return False

    wait_for(pushed_back, 30, "the job to wait for its retry")
    assert ledger.get(job_id).state == "retrying"
    page.goto("/console/retrying")
    row = page.locator(f'tr[data-job="{job_id}"]')
    assert "in 10 min" in row.inner_text() or "in 9 min" in row.inner_text()
    row.locator("button").click()
    page.wait_for_url("**/console/retrying?*done=retry-now*")
    assert "due now" in page.inner_text(".done")
    record = wait_for_state(ledger, job_id, ("delivered",), timeout_s=20)
    assert any(e["event"] == "retry-now" and e["by"] == "ops" for e in record.history)


def test_the_overview_shows_the_gate_limit_change_when_the_pbx_slots_change(
    page: Any, simulator: Simulator, ledger: Any, stack: Any
) -> None:
    from producers import submit_many
    from worker.gate import gate_names, read_status

    def noojee_limit() -> tuple[str, int] | None:
        names = [n for n in gate_names(ledger.r, ledger.prefix) if n.startswith("noojee:")]
        if not names:
            return None  # no Noojee job went through yet
        return names[0], read_status(ledger.r, f"{ledger.prefix}gate:{names[0]}:", names[0]).limit

    submit_job(new_lead_id())  # the gate exists once a job went through
    name, before = wait_for(noojee_limit, 20, "the Noojee gate")
    page.goto("/console/")
    shown = page.locator(f'article[data-gate="{name}"] .limit')
    assert int(shown.get_attribute("data-limit")) == before

    # The test worker has 4 threads: a limit of 4 cannot be seen to grow, one of 2+ can shrink.
    slots, up = (1, False) if before >= 2 else (4, True)
    simulator.configure(slots=slots)
    jobs = [sample_update(new_lead_id()) for _ in range(400)]
    ids = submit_many(jobs, priority="bulk", client="crm")

    def moved() -> int | None:
        limit = (noojee_limit() or ("", before))[1]
        return limit if limit != before and (limit > before) == up else None

    changed = wait_for(moved, 120, f"the limit to move {'up' if up else 'down'}")
    page.reload()
    now_shown = int(shown.get_attribute("data-limit"))
    assert now_shown != before and (now_shown > before) == up, (before, changed, now_shown)
    assert page.locator(f'article[data-gate="{name}"] svg.chart polyline').count() == 1
    shoot(page, "overview")
    simulator.configure(slots=4)
    for job_id in ids:
        wait_for_state(ledger, job_id, ("delivered", "merged"), timeout_s=120)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["1280x800", "phone"])
def test_every_page_works_on_a_desktop_and_a_phone(
    browser: Any, stack: Any, simulator: Simulator, ledger: Any, viewport: dict[str, int]
) -> None:
    lead, job_id = job_in_review(simulator, ledger)
    context = browser.new_context(viewport=viewport, base_url=stack.intake_url)
    tab = context.new_page()
    log_in(tab)
    pages = [
        "/console/",
        "/console/review",
        "/console/rejected",
        "/console/retrying",
        "/console/running",
        "/console/queued",
        "/console/merged",
        "/console/superseded",
        f"/console/jobs/{job_id}",
        f"/console/search?q={lead}",
        "/docs",
    ]
    for path in pages:
        answer = tab.goto(path)
        assert answer is not None and answer.status == 200, path
        assert fits(tab), f"{path} scrolls sideways at {viewport}"
        assert tab.locator("h1").count() >= 1
    tab.goto(f"/console/jobs/{job_id}")
    assert tab.locator("button.requeue").is_visible() and tab.locator("button.discard").is_visible()
    context.close()
