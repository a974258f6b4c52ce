"""Destination-wide holds through the real system: an answer that speaks for the whole
destination (its credentials refused, its allowance of calls spent) pauses it for the fleet, and
one call probes it per interval; no job spends its retries or faults on it, and every job is
delivered once the destination is back."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ENDED = ("delivered", "merged", "superseded", "review", "rejected")


def post(url: str, body: Any) -> Any:
    answer = httpx.post(url, json=body, timeout=10)
    answer.raise_for_status()
    return answer.json()


def stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/_stats", timeout=10).json())


def watch(count: Any, seconds: float) -> list[tuple[float, int]]:
    """``count()`` every 0.1 s for ``seconds`` (a measurement over time, not synchronisation)."""
    seen, started = [], time.monotonic()
    while time.monotonic() - started < seconds:
        seen.append((time.monotonic() - started, int(count())))
        time.sleep(0.1)
    return seen


def most_in_any_window(seen: list[tuple[float, int]], window_s: float) -> int:
    return max(
        max(n for t, n in seen if start <= t < start + window_s)
        - min(n for t, n in seen if t >= start)
        for start, _ in seen
    )


def test_an_expandable_login_refused_with_a_500_pauses_it_and_names_the_settings(
    stack: Any, ledger: Any
) -> None:
    from producers import submit_many
    from tasks.models import validate_job
    from worker.settings import get_settings

    url = stack.simulator_urls["expandable"]
    contacts = [("HOLD", f"C{n}-{uuid.uuid4().hex[:6]}") for n in range(10)]
    for customer, contact in contacts:
        post(f"{url}/_contacts", {"CUSTOMER_ID": customer, "CUST_CONTACT": contact})
    password = get_settings().expandable.password.get_secret_value()
    post(f"{url}/_config", {"password": "changed-by-the-erp-admin", "login_refusal": 500})
    post(f"{url}/_expire_tokens", {})  # the fleet's cached token is refused: it logs in again
    try:
        before = stats(url)["login_failures"]
        ids = submit_many(
            [
                validate_job(
                    "expandable.contact_update",
                    {"CUSTOMER_ID": c, "CUST_CONTACT": k, "NOTES": "held"},
                )
                for c, k in contacts
            ]
        )
        interval = get_settings().pause.config_probe_interval_s
        seen = watch(lambda: stats(url)["login_failures"] - before, 3 * interval)
        assert seen[-1][1] >= 1
        assert most_in_any_window(seen, interval) <= 2, seen
        records = [ledger.get(i, with_history=True) for i in ids]
        assert all(r.state not in ENDED for r in records)  # waiting, not failed
        assert max(r.faults for r in records) == 0
        paused = [e["reason"] for r in records for e in r.history if e["event"] == "paused"]
        assert paused and all("CONTACTSYNC_EXPANDABLE__PASSWORD" in p for p in paused)
        assert all(password not in p for p in paused)
    finally:
        post(f"{url}/_config", {"password": password, "login_refusal": 401})
    wait_for(
        lambda: all(ledger.get(i).state == "delivered" for i in ids),
        30,
        "the jobs once the credentials work again",
    )


def test_request_limit_exceeded_pauses_mission_capital_for_the_whole_fleet(
    stack: Any, ledger: Any
) -> None:
    from producers import submit_many
    from tasks.missioncapital import id_suffix
    from tasks.models import validate_job
    from worker.settings import get_settings

    url = stack.simulator_urls["missioncapital"]
    allowance = stats(url)["api_limit"]
    post(f"{url}/_config", {"api_limit": 0})  # the org's allowance is spent
    try:
        before = stats(url)["calls"]
        bases = ["00QEa" + uuid.uuid4().hex[:10].upper() for _ in range(20)]
        ids = submit_many(
            [
                validate_job("missioncapital.contact_user", {"application_id": b + id_suffix(b)})
                for b in bases
            ]
        )
        interval = get_settings().pause.limit_probe_interval_s
        seen = watch(lambda: stats(url)["calls"] - before, 3 * interval)
        # The calls in flight when the first answer came back (one per worker thread at most)
        # were sent already; from then on, one call per probe interval for the whole fleet.
        first = next(t for t, n in seen if n)
        assert seen[-1][1] <= get_settings().missioncapital.max_concurrency + 3, seen
        after = [(t, n) for t, n in seen if t >= first + 0.5]
        assert most_in_any_window(after, interval) <= 1, seen
        records = [ledger.get(i, with_history=True) for i in ids]
        assert all(r.state not in ENDED for r in records)
        assert max(r.faults for r in records) == 0 and max(r.retries for r in records) == 0
    finally:
        post(f"{url}/_config", {"api_limit": allowance, "api_usage": 0})
    wait_for(
        lambda: all(ledger.get(i).state == "delivered" for i in ids),
        30,
        "the jobs once the allowance is back",
    )
