"""Entity keys, versions and coalescing as pure functions: what each job kind says about the
record it writes and about merging, and the plan a claimed head follows (tasks/ordering.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tasks.expandable import ExpandableContactUpdate
from tasks.missioncapital import MissionCapitalContactUser, id_suffix
from tasks.models import JobModel, version_key
from tasks.noojee import NO_CHANGE, NoojeeLeadInsert, NoojeeLeadUpdate
from tasks.ordering import plan
from tasks.trendsic import TrendsicContactConnection
from worker.ledger import HELD, MERGED, SUPERSEDED, Claim, JobRecord


def update(lead: str = "L1", disposition: str = "Sale", **fields: str) -> NoojeeLeadUpdate:
    return NoojeeLeadUpdate(
        template_id=41,
        campaign_id=41,
        allocation_id=38,
        external_lead_id=lead,
        disposition=disposition,
        fields={"FirstPhone": "0383218199", **fields},
    )


def record(job: JobModel, job_id: str, seq: int, state: str = HELD, **more: Any) -> JobRecord:
    return JobRecord(
        id=job_id,
        kind=job.kind,
        state=state,
        submitted_at_ms=0,
        updated_at_ms=0,
        destination=job.destination,
        payload=job.model_dump_json(),
        seq=seq,
        entity=job.entity_key(),
        priority=more.pop("priority", "bulk"),
        **more,
    )


CLAIMED = Claim("claimed", "queued")


# -- entity keys ---------------------------------------------------------------------------------
def test_insert_and_update_of_one_lead_share_a_key_and_other_leads_do_not() -> None:
    insert = NoojeeLeadInsert(
        template_id=1,
        campaign_id=2,
        allocation_id=3,
        external_lead_id="L1",
        fields={"FirstPhone": "0383218199"},
    )
    assert insert.entity_key() == update("L1").entity_key() == "noojee:L1"
    assert update("L2").entity_key() != update("L1").entity_key()


def test_both_forms_of_a_salesforce_id_are_one_application() -> None:
    base = "00QEa00000ItVf8"
    short = MissionCapitalContactUser(application_id=base)
    long = MissionCapitalContactUser(application_id=base + id_suffix(base))
    assert short.entity_key() == long.entity_key() == f"missioncapital:{base}"


def test_separators_inside_ids_cannot_make_two_records_one() -> None:
    def contact(customer: str, contact: str) -> str:
        return ExpandableContactUpdate(
            CUSTOMER_ID=customer, CUST_CONTACT=contact, NOTES="x"
        ).entity_key()

    assert contact("a/b", "c") != contact("a", "b/c")
    assert contact("a:b", "c") != contact("a", "b:c")
    assert update("a:b").entity_key() != update("a%3Ab").entity_key()


def test_every_kind_declares_its_entity() -> None:
    with pytest.raises(TypeError, match="entity_fields"):

        class Orphan(JobModel):  # a new destination's job that forgot it
            kind = "orphan.job"
            destination = "orphan"


# -- versions ------------------------------------------------------------------------------------
def test_versions_are_integers_or_timestamps_with_an_offset() -> None:
    assert version_key(42) == ("42", "42".zfill(20))
    assert version_key("42")[1] == version_key(42)[1]
    utc = version_key("2026-11-30T09:30:00Z")[1]
    assert version_key("2026-11-30T19:30:00+10:00")[1] == utc  # the same instant
    assert version_key(datetime(2026, 11, 30, 9, 30, 0, 1, tzinfo=UTC))[1] > utc
    for bad in (True, -1, 10**19, "2026-11-30T09:30:00", "yesterday", "2026-11-30", 1.5):
        with pytest.raises(ValueError, match="version"):
            version_key(bad)  # type: ignore[arg-type]


@given(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=9999)),
)
def test_a_later_timestamp_always_sorts_later(when: datetime, later_by: timedelta) -> None:
    early = when.replace(tzinfo=UTC)
    assert version_key(early)[1] < version_key(early + later_by)[1]


@given(st.integers(0, 10**19 - 2), st.integers(1, 10**6))
def test_a_larger_integer_always_sorts_later(value: int, more: int) -> None:
    assert version_key(value)[1] < version_key(min(value + more, 10**19 - 1))[1]


# -- merging each kind ---------------------------------------------------------------------------
def test_noojee_updates_merge_newest_field_wins_and_no_change_keeps_the_older_value() -> None:
    older = update(Name="Jane", Email="j@example.com")
    newer = update(Name="Janet", Email=NO_CHANGE, SecondPhone=NO_CHANGE)
    assert older.mergeable(newer)
    merged = older.merge(newer)
    assert merged.fields == {
        "FirstPhone": "0383218199",
        "Name": "Janet",
        "Email": "j@example.com",
        "SecondPhone": NO_CHANGE,
    }


def test_noojee_updates_that_set_different_dispositions_are_never_merged() -> None:
    assert not update(disposition="Sale").mergeable(update(disposition="Callback"))
    assert update(disposition="Sale").mergeable(update(disposition=NO_CHANGE))
    assert update(disposition=NO_CHANGE).merge(update(disposition="Sale")).disposition == "Sale"
    assert update(disposition="Sale").merge(update(disposition=NO_CHANGE)).disposition == "Sale"
    other_place = update().model_copy(update={"allocation_id": 39})
    assert not update().mergeable(other_place)
    insert = NoojeeLeadInsert(
        template_id=41,
        campaign_id=41,
        allocation_id=38,
        external_lead_id="L1",
        fields={"FirstPhone": "0383218199"},
    )
    assert not update().mergeable(insert) and not insert.mergeable(update())


def test_trendsic_and_expandable_merge_field_by_field() -> None:
    first = TrendsicContactConnection.model_validate(
        {"contact_id": 7, "agent_id": 1, "contact": {"FirstName": "Ann", "Title": "Dr"}}
    )
    second = TrendsicContactConnection.model_validate(
        {"contact_id": 7, "agent_id": 2, "contact": {"FirstName": "Anne", "LastName": "Lee"}}
    )
    merged = first.merge(second)
    assert merged.changes() == {"FirstName": "Anne", "Title": "Dr", "LastName": "Lee"}
    assert merged.agent_id == 2
    a = ExpandableContactUpdate(CUSTOMER_ID="C", CUST_CONTACT="K", CITY="Perth", NOTES="n")
    b = ExpandableContactUpdate(CUSTOMER_ID="C", CUST_CONTACT="K", CITY="Hobart", NOTES="")
    assert a.merge(b).changes() == {"CITY": "Hobart", "NOTES": ""}  # "" clears: a value too


# -- the plan ------------------------------------------------------------------------------------
def test_a_head_takes_over_every_mergeable_job_behind_it() -> None:
    head = update(Name="A")
    jobs = [update(Name="B"), update(Title="Dr"), update(Name="C")]
    held = [record(j, f"f{n}", n + 2) for n, j in enumerate(jobs)]
    held[1] = record(jobs[1], "f1", 3, priority="realtime", retry_until_ms=99)
    decided = plan(record(head, "h", 1, "running"), head, CLAIMED, held, coalesce=True)
    assert [(t.id, t.outcome, t.by) for t in decided.taken] == [
        ("f0", MERGED, "h"),
        ("f1", MERGED, "h"),
        ("f2", MERGED, "h"),
    ]
    assert isinstance(decided.job, NoojeeLeadUpdate)
    assert decided.job.fields == {"FirstPhone": "0383218199", "Name": "C", "Title": "Dr"}
    assert decided.newest == (4, "f2")
    assert (decided.priority, decided.retry_until_ms) == ("realtime", 99)


def test_a_different_disposition_is_where_merging_stops() -> None:
    head = update()
    held = [
        record(update(Name="B"), "f0", 2),
        record(update("L1", "Callback"), "f1", 3),
        record(update(Name="D"), "f2", 4),
    ]
    decided = plan(record(head, "h", 1, "running"), head, CLAIMED, held, coalesce=True)
    assert [t.id for t in decided.taken] == ["f0"]


def test_coalescing_off_sends_the_head_alone() -> None:
    head = update()
    held = [record(update(Name="B"), "f0", 2)]
    decided = plan(record(head, "h", 1, "running"), head, CLAIMED, held, coalesce=False)
    assert not decided.absorbs and decided.job is head


def test_a_head_older_than_a_delivered_version_is_superseded_unless_forced() -> None:
    head = update()
    v3 = record(head, "h", 1, "running", version="3", vkey="3".zfill(20))
    delivered_v5 = Claim("claimed", "queued", 0, "5".zfill(20), "v5job")
    assert "v5job" in plan(v3, head, delivered_v5, [], True).superseded
    forced = record(head, "h", 1, "running", version="3", vkey="3".zfill(20), force="1")
    assert plan(forced, head, delivered_v5, [], True).superseded == ""
    unversioned = record(head, "h", 1, "running")
    assert plan(unversioned, head, delivered_v5, [], True).superseded == ""


def test_versions_decide_the_fold_and_old_versions_behind_are_superseded() -> None:
    head = update(Name="v6")
    delivered_v4 = Claim("claimed", "queued", 3, "4".zfill(20), "v4job")
    held = [
        record(update(Name="v5", Title="t5"), "f0", 2, version="5", vkey="5".zfill(20)),
        record(update(Name="v2"), "f1", 3, version="2", vkey="2".zfill(20)),
        record(update(Title="none"), "f2", 4),
    ]
    head_record = record(head, "h", 1, "running", version="6", vkey="6".zfill(20))
    decided = plan(head_record, head, delivered_v4, held, coalesce=True)
    assert [(t.id, t.outcome) for t in decided.taken] == [
        ("f0", MERGED),
        ("f1", SUPERSEDED),
        ("f2", MERGED),
    ]
    assert [t.by for t in decided.taken if t.outcome == SUPERSEDED] == ["v4job"]
    assert isinstance(decided.job, NoojeeLeadUpdate)
    # v5 folds under v6 (older version first); the unversioned job after v6 folds last.
    assert decided.job.fields["Name"] == "v6" and decided.job.fields["Title"] == "none"
    assert decided.version == ("6", "6".zfill(20), "h")


FIELD_NAMES = ["Name", "Title", "City", "Email"]


@given(
    st.lists(
        st.dictionaries(st.sampled_from(FIELD_NAMES), st.sampled_from(["a", "b", "c"]), min_size=1),
        min_size=1,
        max_size=8,
    )
)
def test_the_merged_job_is_the_fold_of_the_jobs_in_submission_order(
    changes: list[dict[str, str]],
) -> None:
    jobs = [update(**fields) for fields in changes]
    held = [record(job, f"f{n}", n + 2) for n, job in enumerate(jobs[1:])]
    decided = plan(record(jobs[0], "h", 1, "running"), jobs[0], CLAIMED, held, coalesce=True)
    expected: dict[str, str] = {}
    for fields in changes:
        expected.update(fields)
    assert isinstance(decided.job, NoojeeLeadUpdate)
    assert {k: v for k, v in decided.job.fields.items() if k != "FirstPhone"} == expected
    assert len(decided.taken) == len(jobs) - 1
    assert json.loads(decided.job.model_dump_json())  # a payload the ledger can store


def test_a_field_taken_from_an_older_version_loses_to_a_newer_one_merged_later() -> None:
    head = update(Name="v6")
    first = [
        record(update(Title="from-v36"), "f36", 2, version="36", vkey="36".zfill(20)),
        record(update(City="from-v40"), "f40", 3, version="40", vkey="40".zfill(20)),
    ]
    head_record = record(head, "h", 1, "running", version="6", vkey="6".zfill(20))
    stage1 = plan(head_record, head, CLAIMED, first, coalesce=True)
    assert stage1.job.fields["Title"] == "from-v36" and stage1.carried
    # The head went round again (a busy answer, say) carrying that merge; version 39 arrived.
    carrying = record(
        stage1.job, "h", 1, "running", version="40", vkey="40".zfill(20), carried=stage1.carried
    )
    later = [record(update(Title="from-v39"), "f39", 4, version="39", vkey="39".zfill(20))]
    stage2 = plan(carrying, stage1.job, CLAIMED, later, coalesce=True)
    assert isinstance(stage2.job, NoojeeLeadUpdate)
    assert stage2.job.fields == {
        "FirstPhone": "0383218199",
        "Name": "v6",
        "Title": "from-v39",
        "City": "from-v40",
    }
    assert len(json.loads(stage2.carried)) == 4


def test_coalescing_is_a_setting_of_each_destination(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.noojee import deliver as noojee
    from tasks.trendsic import deliver as trendsic
    from worker.settings import get_settings

    monkeypatch.setenv("CONTACTSYNC_TRENDSIC__COALESCE", "false")
    get_settings.cache_clear()
    try:
        assert (noojee._coalesces(), trendsic._coalesces()) == (True, False)
    finally:
        monkeypatch.delenv("CONTACTSYNC_TRENDSIC__COALESCE")
        get_settings.cache_clear()
