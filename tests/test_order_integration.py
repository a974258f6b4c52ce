"""Order per record through the real system: the embedded Valkey, four Celery worker processes,
the four simulators over HTTP, checked at the simulators (each record's stored state and the log
of every call that reached it).

- no lost update: concurrent jobs of one record, each changing another field, all land;
- no stale overwrite: an older job answered busy never lands after a newer one;
- an insert and the update of its lead, back to back, always arrive insert first;
- a worker killed while it runs a record's job holds the record for one lease, not longer;
- and the model test: thousands of jobs over a hundred records per destination, random fields,
  versions, busy/conflict/fault/timeout answers and workers SIGKILLed all along; every record
  ends as the fold of the jobs that reached it, and no call carries an older version after a
  newer one.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import new_lead_id, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ENDED = ("delivered", "merged", "superseded", "review", "rejected")
FLEET = ("o2", "o3", "o4")


@pytest.fixture(scope="module")
def fleet(stack: Any) -> Iterator[Any]:
    """The session's stack with four worker processes."""
    running = [n for n, proc, _ in stack._children if n.startswith("worker-")]
    for name in FLEET:
        stack.start_worker(name)
    stack.wait_for_workers(len(running) + len(FLEET))
    try:
        yield stack
    finally:
        for name in FLEET:
            stack.stop_child(f"worker-{name}")


# -- each destination's records at its simulator -------------------------------------------------
@dataclass
class Target:
    """One destination's records: make one, build a job that sets fields on it, read it back."""

    name: str
    url: str
    fields: tuple[str, str, str]
    busy: Any  # the scripted answer that says "busy, try later"

    def post(self, path: str, body: Any) -> Any:
        answer = httpx.post(f"{self.url}{path}", json=body, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def new_record(self) -> str:
        if self.name == "noojee":
            return new_lead_id()
        if self.name == "missioncapital":
            from tasks.missioncapital import id_suffix

            base = "00QEa" + uuid.uuid4().hex[:10].upper()
            record = base + id_suffix(base)
            self.post("/_applications", {record: {"contact_enabled": False}})
            return record
        if self.name == "trendsic":
            record = str(random.randint(10**6, 2 * 10**9))
            self.post("/_contacts", {record: {"FirstName": "start"}})
            return record
        record = f"ORD{uuid.uuid4().hex[:10].upper()}/K1"
        customer, contact = record.split("/")
        self.post("/_contacts", {"CUSTOMER_ID": customer, "CUST_CONTACT": contact})
        return record

    def job(self, record: str, values: dict[str, str]) -> Any:
        from tasks.models import validate_job

        if self.name == "noojee":
            return validate_job(
                "noojee.update",
                {
                    "template_id": 41,
                    "campaign_id": 41,
                    "allocation_id": 38,
                    "external_lead_id": record,
                    "disposition": "Sale",
                    "fields": {"FirstPhone": "0383218199", **values},
                },
            )
        if self.name == "missioncapital":
            return validate_job("missioncapital.contact_user", {"application_id": record})
        if self.name == "trendsic":
            return validate_job(
                "trendsic.contact_connection",
                {"contact_id": int(record), "agent_id": 7, "contact": values},
            )
        customer, contact = record.split("/")
        return validate_job(
            "expandable.contact_update",
            {"CUSTOMER_ID": customer, "CUST_CONTACT": contact, **values},
        )

    def stored(self, record: str) -> dict[str, Any]:
        path = {
            "noojee": "_leads",
            "missioncapital": "_applications",
            "trendsic": "_contacts",
            "expandable": "_contacts",
        }[self.name]
        parts = record if self.name == "expandable" else quote(record, safe="")
        answer = httpx.get(f"{self.url}/{path}/{parts}", timeout=10)
        return dict(answer.json()) if answer.status_code == 200 else {}

    def arrivals(self, record: str) -> list[dict[str, Any]]:
        parts = record if self.name == "expandable" else quote(record, safe="")
        answer = httpx.get(f"{self.url}/_arrivals/{parts}", timeout=10)
        return [] if answer.status_code == 404 else list(answer.json()["arrivals"])

    def script(self, record: str, answers: list[Any], slow_s: float | None = None) -> None:
        key = "lead" if self.name == "noojee" else "id"
        body: dict[str, Any] = {key: record, ("codes" if key == "lead" else "answers"): answers}
        if slow_s is not None:
            body["slow_s"] = slow_s
        self.post("/_script", body)

    @property
    def ok(self) -> Any:
        return 0 if self.name == "noojee" else "ok"


def targets(stack: Any) -> dict[str, Target]:
    urls = stack.simulator_urls
    return {
        "noojee": Target("noojee", urls["noojee"], ("Name", "Title", "City"), 109),
        "missioncapital": Target(
            "missioncapital", urls["missioncapital"], ("", "", ""), "http-403-limit"
        ),
        "trendsic": Target(
            "trendsic", urls["trendsic"], ("FirstName", "LastName", "Title"), "http-503"
        ),
        "expandable": Target(
            "expandable", urls["expandable"], ("FIRST_NAME", "LAST_NAME", "TITLE"), "http-503"
        ),
    }


def settled(ledger: Any, ids: list[str], timeout_s: float = 90) -> list[Any]:
    def ended() -> list[Any] | None:
        records = [ledger.get(i) for i in ids]
        return records if all(r is not None and r.state in ENDED for r in records) else None

    records: list[Any] = wait_for(ended, timeout_s, f"{len(ids)} jobs to end")
    return records


def fleet_redis() -> Any:
    from worker.broker import redis_client

    return redis_client()


def assert_no_overlap(target: Target, record: str) -> None:
    """No two calls on one record were in flight at once (a Trendsic job's read and write are
    two calls, one after the other)."""
    calls = sorted(target.arrivals(record), key=lambda a: a["start"])
    for before, after in itertools.pairwise(calls):
        assert after["start"] >= before["end"], (target.name, record, before, after)


DESTINATIONS = ["noojee", "missioncapital", "trendsic", "expandable"]


# -- lost updates --------------------------------------------------------------------------------
@pytest.mark.parametrize("destination", DESTINATIONS)
def test_concurrent_jobs_of_one_record_each_changing_a_field_all_land(
    fleet: Any, ledger: Any, destination: str
) -> None:
    from producers import submit

    target = targets(fleet)[destination]
    records = [target.new_record() for _ in range(10)]
    jobs: list[tuple[str, str, str]] = []
    for record in records:
        for field in target.fields:
            jobs.append((record, field, f"{field or 'x'}-{uuid.uuid4().hex[:6]}"))
    ids: list[str] = []
    lock = threading.Lock()

    def send(part: list[tuple[str, str, str]]) -> None:
        for record, field, value in part:
            job_id = submit(target.job(record, {field: value} if field else {}))
            with lock:
                ids.append(job_id)

    # Submitted together, from three threads, as services would.
    senders = [threading.Thread(target=send, args=(jobs[n::3],)) for n in range(3)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    ended = settled(ledger, ids)
    assert {r.state for r in ended} <= {"delivered", "merged"}, {r.last_reason for r in ended}
    for record in records:
        stored = target.stored(record)
        if destination == "missioncapital":
            assert stored["contact_enabled"] is True
        else:
            for rec, field, value in jobs:
                if rec == record:
                    assert stored.get(field) == value, (destination, record, field)
        assert_no_overlap(target, record)


# -- stale overwrites ----------------------------------------------------------------------------
@pytest.mark.parametrize("newer_after_busy", [False, True])
@pytest.mark.parametrize("destination", DESTINATIONS)
def test_an_older_job_answered_busy_never_lands_after_a_newer_one(
    fleet: Any, ledger: Any, destination: str, newer_after_busy: bool
) -> None:
    from producers import submit

    target = targets(fleet)[destination]
    field = target.fields[0]
    # Mission Capital's busy answer (REQUEST_LIMIT_EXCEEDED) pauses it fleet-wide for
    # limit_probe_interval_s, so its records are answered busy one pause after another: three
    # show the order as well as five, in half the time.
    records = [target.new_record() for _ in range(3 if destination == "missioncapital" else 5)]
    ids = []
    for record in records:
        target.script(record, [target.busy, target.ok])
        ids.append(submit(target.job(record, {field: "older"} if field else {})))
        if not newer_after_busy:
            ids.append(submit(target.job(record, {field: "newer"} if field else {})))
    if newer_after_busy:  # each newer job submitted once its older one was answered busy
        for record in records:
            wait_for(lambda r=record: target.arrivals(r), 20, "the busy answer")
            ids.append(submit(target.job(record, {field: "newer"} if field else {})))
    settled(ledger, ids)
    for record in records:
        calls = target.arrivals(record)
        assert calls[0]["applied"] is False  # answered busy
        if not field:
            assert target.stored(record)["contact_enabled"] is True
            assert_no_overlap(target, record)
            continue
        assert target.stored(record)[field] == "newer"
        landed = [a["fields"].get(field) for a in calls if a["applied"]]
        assert landed[-1] == "newer"
        assert "older" not in landed[landed.index("newer") :]
        assert_no_overlap(target, record)


def test_an_insert_and_the_update_of_its_lead_always_arrive_insert_first(
    fleet: Any, ledger: Any, simulator: Any
) -> None:
    from producers import submit
    from tasks.models import validate_job

    simulator.configure(strict_leads=True)  # an update of an unknown lead: 101, as a PBX does
    try:
        leads, ids = [new_lead_id() for _ in range(100)], []
        for lead in leads:
            place = {
                "template_id": 41,
                "campaign_id": 41,
                "allocation_id": 38,
                "external_lead_id": lead,
            }
            ids.append(
                submit(
                    validate_job(
                        "noojee.insert",
                        {**place, "fields": {"FirstPhone": "0383218199", "Name": "new"}},
                    )
                )
            )
            ids.append(
                submit(
                    validate_job(
                        "noojee.update",
                        {
                            **place,
                            "disposition": "Sale",
                            "fields": {"FirstPhone": "<No Change>", "Name": "updated"},
                        },
                    )
                )
            )
        ended = settled(ledger, ids, 120)
    finally:
        simulator.configure(strict_leads=False)
    assert {r.state for r in ended} == {"delivered"}, {r.last_reason for r in ended}
    for lead in leads:
        calls = simulator.arrivals(lead)
        assert [c["call"] for c in calls] == ["insert", "update"], lead
        assert [c["code"] for c in calls] == [0, 0]  # never 101
        assert simulator.lead(lead)["Name"] == "updated"


# -- a worker killed while it holds a record ------------------------------------------------------
def test_a_worker_killed_while_it_holds_a_record_holds_it_one_lease_at_most(
    fleet: Any, ledger: Any
) -> None:
    from producers import submit
    from worker.settings import get_settings

    target = targets(fleet)["trendsic"]
    record = target.new_record()
    # The first call on the record hangs (the gateway gives up after 60 s); every later one is
    # answered at once.
    target.script(record, ["slow", "ok"], slow_s=60)
    first = submit(target.job(record, {"FirstName": "first"}))
    wait_for(lambda: ledger.get(first).state == "running", 20, "the first job to run")
    second = submit(target.job(record, {"FirstName": "second"}))
    assert ledger.get(second).state == "held"

    # The claim's token says whose it is: host/pid/random.
    claim = wait_for(lambda: fleet_redis().hget(ledger.job_key(first), "lock"), 5, "its claim")
    pid = int(claim.split("/")[1])
    name = next(n for n, proc, _ in fleet._children if proc.pid == pid).removeprefix("worker-")
    killed_at = time.monotonic()
    fleet.kill_child(f"worker-{name}")
    try:
        # The first job runs again once its claim lapses, and takes the second along (merged).
        def both() -> bool:
            return ledger.get(first).state in ENDED and ledger.get(second).state in ENDED

        wait_for(both, 30, "both jobs to end")
        took_s = time.monotonic() - killed_at
        assert took_s < get_settings().visibility_timeout_s, took_s
        assert ledger.get(first).state == "delivered"
        assert ledger.get(second).state in ("delivered", "merged")
        assert target.stored(record)["FirstName"] == "second"
        writes = [a for a in target.arrivals(record) if a["call"] == "write" and a["applied"]]
        assert writes[-1]["fields"]["FirstName"] == "second"
        events = [e["event"] for e in ledger.get(first, with_history=True).history]
        assert "lease-expired" in events
    finally:
        fleet.start_worker(name)
        fleet.wait_for_workers(4)


# -- the model test ------------------------------------------------------------------------------
#: Per destination: the fields jobs change, the field that carries a versioned job's version (so
#: the arrival log shows what each call carried), what may answer before the first success, and
#: how long a "slow" answer holds a call (beyond the client's read timeout).
MODEL = {
    "noojee": (("Name", "Title", "City", "Region"), "Version", [109, 110, 103, "slow"], 5),
    # (REQUEST_LIMIT_EXCEEDED speaks for the whole org, not one record: test_holds_integration)
    "missioncapital": ((), "", ["http-503", "http-500", "slow"], 2),
    "trendsic": (
        ("FirstName", "LastName", "Title", "Department"),
        "Tags",
        ["http-503", "http-500", "http-409", "slow"],
        2,
    ),
    "expandable": (
        ("FIRST_NAME", "LAST_NAME", "TITLE", "CITY"),
        "SOFCT_USER_1",
        ["http-503", "http-500", "slow"],
        2,
    ),
}
RECORDS, JOBS = 100, 2000


@dataclass
class Planned:
    """A job of the model test: its record, the fields it sets, its version (or None)."""

    destination: str
    record: str
    values: dict[str, str]
    version: int | None
    n: int = 0  # submission order
    job_id: str = ""


def plan_jobs(rng: random.Random, destination: str, target: Target) -> list[Planned]:
    fields, version_field, bad, slow_s = MODEL[destination]
    records = [target.new_record() for _ in range(RECORDS)]
    versioned = set(rng.sample(records, RECORDS // 2))
    # A timeout holds a worker thread (and a Noojee permit) for the whole read timeout: rarer.
    weights = [1.0 if answer != "slow" else 0.3 for answer in bad]
    for record in records:
        if rng.random() < 0.5:  # some failures first; once a call succeeds, every later one does
            prefix = rng.choices(bad, weights, k=rng.randint(1, 3))
            target.script(record, [*prefix, target.ok], slow_s=slow_s)
    planned = []
    for n in range(JOBS):
        record = rng.choice(records)
        values = {name: f"{name[:2]}{n}" for name in rng.sample(fields, min(len(fields), 2))}
        version = rng.randint(1, 40) if record in versioned else None
        if version is not None and version_field:
            values[version_field] = str(version)
        planned.append(Planned(destination, record, values, version))
    return planned


def expected_fold(jobs: list[tuple[Planned, Any]]) -> dict[str, str]:
    """What a record must hold: the changes of the jobs that reached it (delivered, or merged
    into a job that was), folded oldest version first, then in submission order (a record's
    jobs either all have versions or none has)."""
    applied = sorted(jobs, key=lambda pair: (pair[0].version or 0, pair[0].n))
    state: dict[str, str] = {}
    for planned, _ in applied:
        state.update(planned.values)
    return state


def test_model_many_jobs_per_record_random_answers_versions_and_killed_workers(
    fleet: Any, ledger: Any
) -> None:
    from producers import submit_many

    rng = random.Random(20261201)
    all_targets = targets(fleet)
    planned = [job for name, target in all_targets.items() for job in plan_jobs(rng, name, target)]
    rng.shuffle(planned)
    for n, job in enumerate(planned):
        job.n = n

    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            for start in range(0, len(planned), 200):
                chunk = planned[start : start + 200]
                priority = rng.choice(["realtime", "bulk"])
                for name, target in all_targets.items():
                    jobs = [j for j in chunk if j.destination == name]
                    ids = submit_many(
                        [target.job(j.record, j.values) for j in jobs],
                        priority,
                        versions=[j.version for j in jobs],
                    )
                    for job, job_id in zip(jobs, ids, strict=True):
                        job.job_id = job_id
            outcome["records"] = _all_ended(ledger, [j.job_id for j in planned], 240)
        except BaseException as exc:  # reported by the test's thread
            outcome["error"] = exc

    # Workers are killed and started again from this thread: a worker dies with the thread
    # that started it (die_with_parent), so not from a thread that ends first.
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    kills: list[str] = []
    try:
        while driver.is_alive():
            driver.join(rng.uniform(2, 4))  # a timer: when to kill, not synchronisation
            if driver.is_alive():
                name = rng.choice(["w1", *FLEET])
                fleet.kill_child(f"worker-{name}")
                kills.append(name)
                fleet.start_worker(name)
    finally:
        driver.join()
        fleet.wait_for_workers(4)
    if "error" in outcome:
        raise outcome["error"]
    records = outcome["records"]
    assert len(kills) >= 5, kills

    by_id = dict(zip([j.job_id for j in planned], records, strict=True))
    for name, target in all_targets.items():
        _check_destination(name, target, [j for j in planned if j.destination == name], by_id)


def _all_ended(ledger: Any, ids: list[str], timeout_s: float) -> list[Any]:
    def ended() -> list[Any] | None:
        records: list[Any] = []
        for start in range(0, len(ids), 1000):
            records += ledger.get_many(ids[start : start + 1000])
        missing = [i for i, r in zip(ids, records, strict=True) if r is None]
        assert not missing, f"{len(missing)} job records vanished"
        return records if all(r.state in ENDED for r in records) else None

    def stuck() -> str:
        records = ledger.get_many(ids)
        return str(sorted({r.state for r in records if r.state not in ENDED}))

    try:
        found: list[Any] = wait_for(ended, timeout_s, "every job to end")
    except AssertionError:
        raise AssertionError(f"jobs still {stuck()} after {timeout_s} s") from None
    return found


def _check_destination(
    name: str, target: Target, jobs: list[Planned], by_id: dict[str, Any]
) -> None:
    _, version_field, _, _ = MODEL[name]
    per_record: dict[str, list[Planned]] = {}
    for job in jobs:
        per_record.setdefault(job.record, []).append(job)
    for record, mine in per_record.items():
        applied = []
        for job in mine:
            ended = by_id[job.job_id]
            carrier = by_id.get(ended.merged_into) if ended.state == "merged" else ended
            if carrier is None and ended.state == "merged":  # carried by a job of the record
                carrier = next(by_id[j.job_id] for j in mine if j.job_id == ended.merged_into)
            if carrier is not None and carrier.state == "delivered":
                applied.append((job, ended))
            if ended.state == "superseded":
                winner = next(j for j in mine if j.job_id == ended.superseded_by)
                assert (winner.version or 0) >= (job.version or 0), (record, job, winner)
        stored = target.stored(record)
        if name == "missioncapital":
            assert stored["contact_enabled"] is bool(applied), record
            continue
        for field, value in expected_fold(applied).items():
            if stored.get(field) != value:
                story = [
                    (
                        j.job_id[:6],
                        by_id[j.job_id].state,
                        j.version,
                        j.n,
                        by_id[j.job_id].merged_into[:6],
                        j.values,
                    )
                    for j in mine
                ]
                calls = [
                    (
                        a["n"],
                        a["call"],
                        a["status"],
                        a["applied"],
                        {
                            k: v
                            for k, v in a["fields"].items()
                            if k in MODEL[name][0] + (version_field,)
                        },
                    )
                    for a in target.arrivals(record)
                ]
                raise AssertionError(
                    f"{name} {record} {field}: {stored.get(field)} != {value}"
                    f"\njobs: {story}\ncalls: {calls}"
                )
        calls = [a for a in target.arrivals(record) if a["applied"]]
        if version_field:
            versions = [
                int(a["fields"][version_field]) for a in calls if version_field in a["fields"]
            ]
            assert versions == sorted(versions), (name, record, versions)


# -- what operators and clients see --------------------------------------------------------------
def test_a_job_in_review_holds_back_nothing_and_its_requeue_names_the_newer_job(
    fleet: Any, ledger: Any, simulator: Any
) -> None:
    from producers import submit
    from producers.review import NewerDelivered, requeue
    from tests.conftest import run_cli

    target = targets(fleet)["noojee"]
    lead = new_lead_id()
    simulator.script(lead, [110, 0])
    older = submit(target.job(lead, {"Name": "older"}))
    wait_for(lambda: ledger.get(older).state == "review", 20, "the conflict")
    newer = submit(target.job(lead, {"Name": "newer"}))
    wait_for(lambda: ledger.get(newer).state == "delivered", 20, "the newer job")

    shown = run_cli("review", "show", older)
    assert f"newer delivered  {newer}" in " ".join(shown.stdout.split("\n")), shown.stdout
    with pytest.raises(NewerDelivered, match=newer):
        requeue(older, {}, by="op")
    refused = run_cli("review", "requeue", older, "--by", "op")
    assert refused.returncode != 0 and newer in refused.stderr + refused.stdout
    assert ledger.get(older).state == "review"  # a refused requeue changes nothing

    assert requeue(older, {}, by="op", force=True) in ("queued", "held")
    wait_for(lambda: ledger.get(older).state == "delivered", 20, "the forced requeue")
    assert simulator.lead(lead)["Name"] == "older"  # what --force means: it overwrote newer
    forced = [e for e in ledger.get(older, with_history=True).history if e["event"] == "requeued"]
    assert forced and forced[0].get("force") == "1" and forced[0]["by"] == "op"


def test_merged_and_superseded_jobs_say_so_in_the_cli_the_intake_and_flower(
    fleet: Any, ledger: Any, simulator: Any
) -> None:
    from producers import submit_many
    from tests.conftest import run_cli

    target = targets(fleet)["noojee"]
    lead = new_lead_id()
    simulator.script(lead, [109, 109, 109, 0])  # busy long enough for the rest to be held
    first, *rest = submit_many(
        [target.job(lead, {"Name": f"n{n}"}) for n in range(4)], versions=[5, 6, 7, 8]
    )
    settled(ledger, [first, *rest])
    assert ledger.get(first).state == "delivered"
    assert {ledger.get(i).state for i in rest} == {"merged"}
    stale = submit_many([target.job(lead, {"Name": "stale"})], versions=[4])[0]
    settled(ledger, [stale])
    assert ledger.get(stale).state == "superseded"
    assert simulator.lead(lead)["Name"] == "n3"

    merged = rest[0]
    shown = run_cli("jobs", "show", merged).stdout
    assert "merged into" in shown and first in shown
    assert "superseded by" in run_cli("jobs", "show", stale).stdout
    counts = run_cli("jobs").stdout
    assert "merged" in counts and "superseded" in counts and "held" in counts

    ops = {"Authorization": "Bearer ops-token-0123456789"}
    view = httpx.get(f"{fleet.intake_url}/v1/jobs/{merged}", headers=ops, timeout=10).json()
    assert view["state"] == "merged"
    assert view["merged_into"] == {"job_id": first, "state": "delivered"}
    view = httpx.get(f"{fleet.intake_url}/v1/jobs/{stale}", headers=ops, timeout=10).json()
    assert (view["state"], view["version"]) == ("superseded", "4")
    assert view["superseded_by"] in (first, *rest)

    auth = fleet.flower_credentials

    def flower(job_id: str) -> Any:
        answer = httpx.get(f"{fleet.flower_url}/api/task/info/{job_id}", auth=auth, timeout=10)
        return answer.json() if answer.status_code == 200 else None

    wait_for(lambda: (flower(merged) or {}).get("state") == "MERGED", 20, "Flower's MERGED")
    wait_for(lambda: (flower(stale) or {}).get("state") == "SUPERSEDED", 20, "SUPERSEDED")


def test_a_job_revoked_in_flower_while_retrying_ends_rejected_with_why(
    fleet: Any, ledger: Any, simulator: Any
) -> None:
    from producers import submit
    from worker.app import app

    target = targets(fleet)["noojee"]
    lead = new_lead_id()
    simulator.script(lead, [109])  # busy for ever: the job retries until revoked
    job_id = submit(target.job(lead, {"Name": "x"}))
    wait_for(lambda: ledger.get(job_id).state == "retrying", 20, "the job to retry")
    app.control.revoke(job_id)  # what Flower's Revoke button sends
    record = wait_for(
        lambda: (r := ledger.get(job_id, with_history=True)).state == "rejected" and r,
        30,
        "the revoked job to end",
    )
    assert record.last_code == "revoked" and "revoked by an operator" in record.last_reason
    assert record.history[0]["event"] == "revoked"
    simulator.script(lead, [0])
