"""The arrival log every simulator keeps per record (sandbox/_records.py), without a server:
numbering, overlap counters, the bounds and resets. Each simulator's own tests check it over
HTTP."""

from __future__ import annotations

import contextlib
import random

import pytest

from sandbox._records import ArrivalBounds, ArrivalLog


def answered(log: ArrivalLog, record: str, status: int = 200, applied: bool = True) -> None:
    with log.track({record: {"Name": record}}, "update") as arrival:
        arrival.answered(status, 0 if applied else 109, applied)


def test_entries_carry_the_arrival_number_times_answer_and_a_copy_of_the_fields() -> None:
    log = ArrivalLog()
    fields = {"FirstPhone": "0383218199"}
    with log.track({"L1": fields}, "insert") as arrival:
        arrival.answered(400, 109, applied=False)
    fields["FirstPhone"] = "changed after the call"
    answered(log, "L1")

    first, second = log.entries("L1") or []
    assert {k: v for k, v in first.items() if k not in ("start", "end")} == {
        "n": 1,
        "call": "insert",
        "status": 400,
        "code": 109,
        "applied": False,
        "fields": {"FirstPhone": "0383218199"},
    }
    assert first["start"] <= first["end"] <= second["start"] <= second["end"]
    assert (second["n"], second["applied"]) == (2, True)
    assert log.entries("L2") is None and log.logged_calls("L1") == 2


def test_a_call_on_several_records_is_one_arrival_logged_on_each() -> None:
    log = ArrivalLog()
    with log.track({"A": {"x": 1}, "B": {"x": 2}}, "insert") as arrival:
        arrival.answered(200, 0, applied=True)
    entries = log.all_entries()
    assert sorted(entries) == ["A", "B"]
    assert [e["n"] for e in entries["A"] + entries["B"]] == [1, 1]
    assert (entries["A"][0]["fields"], entries["B"][0]["fields"]) == ({"x": 1}, {"x": 2})


def test_refused_and_unanswered_calls_are_not_logged_but_count_in_flight() -> None:
    log = ArrivalLog()
    with log.track({"A": {}}, "read") as first, log.track({"A": {}}, "read") as second:
        first.answered(401, "Unauthorized", applied=False)
        first.refused()
        second.refused()
    with contextlib.suppress(RuntimeError), log.track({"A": {}}, "read"):
        raise RuntimeError("the call died before it was answered")
    assert log.entries("A") is None
    assert log.stats() == {
        "peak_calls_per_record": 2,
        "overlapping_records": 1,
        "arrivals_dropped": 0,
    }
    answered(log, "A")
    assert [e["n"] for e in log.entries("A") or []] == [4]  # numbers count every arrival


def test_entries_are_in_answer_order_and_n_keeps_the_arrival_order() -> None:
    log = ArrivalLog()
    with log.track({"A": {}}, "write") as early:
        with log.track({"A": {}}, "write") as late:
            late.answered(200, None, applied=True)
        early.answered(409, "Conflict", applied=False)
    assert [(e["n"], e["status"]) for e in log.entries("A") or []] == [(2, 200), (1, 409)]


def test_overlap_counts_calls_in_flight_per_record_not_in_all() -> None:
    log = ArrivalLog()
    with log.track({"A": {}}, "update"), log.track({"B": {}}, "update"):
        pass
    assert log.stats()["peak_calls_per_record"] == 1
    assert log.stats()["overlapping_records"] == 0

    with log.track({"A": {}}, "update"), log.track({"A": {}}, "update"):
        with log.track({"A": {}, "C": {}}, "insert"):
            pass
    with log.track({"C": {}}, "update"), log.track({"C": {}}, "update"):
        pass
    assert log.stats()["peak_calls_per_record"] == 3
    assert log.stats()["overlapping_records"] == 2  # A and C, each counted once


def test_reset_clears_the_log_and_restarts_the_counters_from_the_calls_in_flight() -> None:
    log = ArrivalLog()
    answered(log, "A")
    with log.track({"B": {}}, "update") as b1, log.track({"B": {}}, "update") as b2:
        log.reset()
        assert log.all_entries() == {}
        assert log.stats()["peak_calls_per_record"] == 2  # still in flight across the reset
        assert log.stats()["overlapping_records"] == 1
        b1.answered(200, 0, applied=True)
        b2.answered(200, 0, applied=True)
    # Calls that arrived before the reset are not logged after it; numbering restarts.
    assert log.entries("B") is None
    answered(log, "B")
    assert [e["n"] for e in log.entries("B") or []] == [1]
    log.reset()
    assert log.stats() == {
        "peak_calls_per_record": 0,
        "overlapping_records": 0,
        "arrivals_dropped": 0,
    }


def test_per_record_bound_drops_that_records_oldest_entries() -> None:
    log = ArrivalLog(ArrivalBounds(per_record=3, total=100))
    for _ in range(5):
        answered(log, "A")
    answered(log, "B")
    assert [e["n"] for e in log.entries("A") or []] == [3, 4, 5]
    assert log.stats()["arrivals_dropped"] == 2
    assert log.logged_calls("A") == 5


def test_total_bound_drops_the_oldest_entries_of_any_record() -> None:
    log = ArrivalLog(ArrivalBounds(per_record=10, total=4))
    for record in ("A", "B", "A", "C", "B", "D"):
        answered(log, record)
    kept = {record: [e["n"] for e in entries] for record, entries in log.all_entries().items()}
    assert kept == {"C": [4], "B": [5], "D": [6], "A": [3]}
    assert log.stats()["arrivals_dropped"] == 2


@pytest.mark.parametrize("seed", range(5))
def test_bounds_hold_and_the_newest_entries_stay_whatever_the_mix(seed: int) -> None:
    """Random mixes of hot and cold records against a model: every record keeps its newest
    entries, never more than the per-record bound, and the log never more than the total."""
    rng = random.Random(seed)
    bounds = ArrivalBounds(per_record=rng.randint(1, 6), total=rng.randint(1, 20))
    log = ArrivalLog(bounds)
    logged: list[tuple[int, str]] = []  # (n, record), every call, in order
    for n in range(1, 400):
        record = rng.choice("AAAAABBCDEFG")
        answered(log, record)
        logged.append((n, record))

        # The model: per record its newest per_record entries; in all the newest total of those.
        per_record: dict[str, list[int]] = {}
        for m, r in logged:
            per_record.setdefault(r, []).append(m)
        candidates = sorted(m for ms in per_record.values() for m in ms[-bounds.per_record :])
        expected = set(candidates[-bounds.total :])

        kept = {e["n"] for entries in log.all_entries().values() for e in entries}
        assert kept == expected
        assert log.stats()["arrivals_dropped"] == n - len(expected)
        assert len(log._order) <= 2 * bounds.total + 1  # swept: memory stays bounded


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ArrivalBounds(per_record=0)
