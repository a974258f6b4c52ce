"""Mission Capital, Trendsic and Expandable through the real system: the embedded Valkey, real
Celery workers (four processes for the fleet-wide tests), and the simulators over HTTP.

- a token that expires mid-run is fetched again exactly once for the whole fleet;
- a destination that is down for 30 s is paused and probed, and every job is delivered after;
- no credential, token or personal value reaches a log, Flower, or a text an operator reads.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import log_text, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FINAL = ("delivered", "merged", "superseded", "review", "rejected")
EXTRA_WORKERS = ("w3", "w4", "w5")
EXPANDABLE_CONTACTS = [("ABCCORP", "JHERNANDEZ"), ("ABCCORP", "MSMITH"), ("XYZINC", "TJONES")]
SECRET_PHONE = "0412 555 013"
SECRET_EMAIL = "mary.private@example.org"
SECRET_SSN = "123-45-6789"
SECRET_DOB = "1980-02-03T00:00:00.0000000"


def lead_id() -> str:
    """A fresh, valid 18-character Salesforce Lead id."""
    from tasks.missioncapital import id_suffix

    base = "00QEa" + uuid.uuid4().hex[:10].upper()
    return base + id_suffix(base)


def job(destination: str, n: int = 0, **extra: Any) -> Any:
    from tasks.models import validate_job

    if destination == "missioncapital":
        return validate_job("missioncapital.contact_user", {"application_id": lead_id()})
    if destination == "trendsic":
        contact = {"Title": f"Dr {n}", **extra}
        return validate_job(
            "trendsic.contact_connection",
            {"contact_id": 1001 + n % 10, "agent_id": 7, "contact": contact},
        )
    customer, person = EXPANDABLE_CONTACTS[n % len(EXPANDABLE_CONTACTS)]
    return validate_job(
        "expandable.contact_update",
        {"CUSTOMER_ID": customer, "CUST_CONTACT": person, "NOTES": f"n{n}", **extra},
    )


def settled(ledger: Any, ids: list[str], timeout_s: float = 60) -> list[Any]:
    def final() -> list[Any] | None:
        records = [ledger.get(i, with_history=True) for i in ids]
        return records if all(r.state in FINAL for r in records) else None

    records: list[Any] = wait_for(final, timeout_s, f"{len(ids)} jobs to settle")
    return records


def all_delivered(ledger: Any, records: list[Any]) -> bool:
    """Every job delivered, itself or merged into a job of the same record that was."""
    carriers = {r.merged_into for r in records if r.state == "merged"}
    return all(r.state in ("delivered", "merged") for r in records) and all(
        ledger.get(c).state == "delivered" for c in carriers
    )


class Sim:
    def __init__(self, url: str) -> None:
        self.url = url

    def post(self, path: str, body: Any = None) -> Any:
        answer = httpx.post(f"{self.url}{path}", json=body if body is not None else {})
        answer.raise_for_status()
        return answer.json()

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_stats").json())


@pytest.fixture(scope="module")
def fleet(stack: Any) -> Iterator[Any]:
    """The session's stack with four worker processes instead of one."""
    running = len(
        [n for n, proc, _ in stack._children if n.startswith("worker-") and proc.poll() is None]
    )
    for name in EXTRA_WORKERS:
        stack.start_worker(name)
    stack.wait_for_workers(running + len(EXTRA_WORKERS))
    try:
        yield stack
    finally:
        for name in EXTRA_WORKERS:
            stack.stop_child(f"worker-{name}")


@pytest.mark.parametrize("destination", ["missioncapital", "trendsic", "expandable"])
def test_each_destination_delivers_through_a_real_worker(
    stack: Any, ledger: Any, destination: str
) -> None:
    from producers import submit

    sim = Sim(stack.simulator_urls[destination])
    before = sim.stats()["calls"]
    ids = [submit(job(destination, n)) for n in range(3)]
    records = settled(ledger, ids)
    assert [r.state for r in records] == ["delivered"] * 3, [r.last_reason for r in records]
    assert sim.stats()["calls"] >= before + 3


@pytest.mark.parametrize("destination", ["missioncapital", "trendsic", "expandable"])
def test_a_token_expired_mid_run_is_fetched_again_once_for_the_whole_fleet(
    fleet: Any, ledger: Any, destination: str
) -> None:
    from producers import submit_many

    sim = Sim(fleet.simulator_urls[destination])

    def logins() -> int:  # Trendsic renews through /access-token with its refresh token
        stats = sim.stats()
        return int(stats["logins"]) + int(stats.get("refreshes", 0))

    first = submit_many([job(destination, n) for n in range(20)])
    settled(ledger, first)  # the fleet has its token now
    before = logins()
    sim.post("/_expire_tokens")
    second = submit_many([job(destination, n) for n in range(60)])
    records = settled(ledger, second)
    assert all_delivered(ledger, records), {r.last_reason for r in records}
    assert logins() == before + 1  # four processes, sixteen threads, one login


def test_a_destination_down_for_30_s_is_paused_probed_and_resumes_by_itself(
    fleet: Any, ledger: Any
) -> None:
    from producers import submit_many
    from worker.settings import get_settings

    sim = Sim(fleet.simulator_urls["expandable"])
    settled(ledger, submit_many([job("expandable", n) for n in range(3)]))  # logged in, warm

    def requests() -> int:
        stats = sim.stats()
        return int(stats["calls"]) + sum(stats["login_answers"].values())

    # Forty contacts, one job each: forty jobs that may run at once, as before ordering per
    # record (jobs of one contact wait for each other, and would meet the outage one by one).
    from tasks.models import validate_job

    contacts = [("ABCCORP", f"DOWN{n}") for n in range(40)]
    for customer, person in contacts:
        sim.post("/_contacts", {"CUSTOMER_ID": customer, "CUST_CONTACT": person})
    sim.post("/_config", {"down": "503"})
    try:
        ids = submit_many(
            [
                validate_job(
                    "expandable.contact_update",
                    {"CUSTOMER_ID": customer, "CUST_CONTACT": person, "NOTES": "down"},
                )
                for customer, person in contacts
            ]
        )
        went_down = time.monotonic()
        # Measure what reaches the destination while it is down: requests seen, every 0.25 s.
        seen: list[tuple[float, int]] = []
        while time.monotonic() - went_down < 30:
            seen.append((time.monotonic() - went_down, requests()))
            time.sleep(0.25)
    finally:
        sim.post("/_config", {"down": None})
    records = settled(ledger, ids, timeout_s=60)

    assert all_delivered(ledger, records), {(r.state, r.last_reason) for r in records}
    assert max(r.faults for r in records) <= 1  # the failures before the pause, at most one each
    # After the first failures paused it (within a few seconds), one probe per interval.
    interval = get_settings().pause.probe_interval_s
    settled_at = next(n for t, n in seen if t >= 5)
    probes = seen[-1][1] - settled_at
    expected = (seen[-1][0] - 5) / interval
    assert probes <= expected + 2, (probes, expected, seen)
    windows = [
        max(n for t, n in seen if t <= start + interval) - min(n for t, n in seen if t >= start)
        for start in range(5, 29)
    ]
    assert max(windows) <= 2, windows  # never more than one probe per interval (plus its login)
    paused = [e for r in records for e in r.history if e.get("event") == "paused"]
    assert paused, "the jobs waited for the pause"
    assert all("paused" in e["reason"] for e in paused)


def test_no_secret_token_or_personal_value_reaches_logs_flower_or_reasons(
    stack: Any, ledger: Any
) -> None:
    from producers import submit
    from worker.broker import redis_client
    from worker.settings import get_settings

    ids = [
        submit(
            job(
                "trendsic",
                1,
                SSN=SECRET_SSN,
                DateOfBirth=SECRET_DOB,
                Phone=SECRET_PHONE,
                EmailPersonal=SECRET_EMAIL,
            )
        ),
        submit(job("expandable", 2, PHONE_NO=SECRET_PHONE, E_MAIL=SECRET_EMAIL)),
        submit(job("missioncapital")),
    ]
    records = settled(ledger, ids)
    assert [r.state for r in records] == ["delivered"] * 3, [r.last_reason for r in records]

    settings = get_settings()
    secrets = [
        settings.missioncapital.password.get_secret_value(),
        settings.missioncapital.client_secret.get_secret_value(),
        settings.trendsic.password.get_secret_value(),
        settings.expandable.password.get_secret_value(),
        settings.noojee.api_key.get_secret_value(),
        settings.flower.password.get_secret_value() if settings.flower.password else "",
    ]
    client = redis_client()
    tokens = [
        str(client.get(key))
        for key in client.scan_iter(f"{settings.key_prefix}token:*")
        if not str(key).endswith((":lock", ":logins"))
    ]
    tokens = [t.split('"value": "')[1].split('"')[0] for t in tokens if '"value": "' in t]
    assert tokens, "the fleet's tokens are cached in Redis"
    personal = [SECRET_SSN, SECRET_DOB, SECRET_PHONE, SECRET_EMAIL, "0412555013"]
    forbidden = [s for s in secrets + tokens + personal if s]

    auth = (stack.flower_credentials[0], stack.flower_credentials[1])
    flower = [httpx.get(f"{stack.flower_url}/api/tasks", auth=auth, timeout=10).text]
    flower += [httpx.get(f"{stack.flower_url}/task/{i}", auth=auth, timeout=10).text for i in ids]
    operator_texts = [f"{r.last_reason} {r.last_answer} {r.history}" for r in records]
    shown = "\n".join([log_text(stack.log_dir), *flower, *operator_texts])
    leaked = [value for value in forbidden if value in shown]
    assert not leaked, f"{len(leaked)} secret or personal value(s) leaked"
