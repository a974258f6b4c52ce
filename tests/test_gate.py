"""The concurrency gate on a real Redis-compatible server: many threads and processes on one
gate, expiry of a dead holder's lease, priority, hand-off without polling, renewal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from tests.conftest import wait_for
from worker.gate import BUSY, OK, Gate, GateConfig, LeaseKeeper, make_way
from worker.gate_policy import PolicyConfig

pytestmark = pytest.mark.integration


def new_gate(client: redis.Redis, **config: Any) -> Gate:
    config.setdefault("maximum", 1)
    return Gate(client, f"test-{uuid.uuid4().hex[:8]}", GateConfig(**config))


class IdleKeeper(LeaseKeeper):
    """A process that stopped renewing its leases: what a killed worker looks like to Redis."""

    def hold(self, gate: Gate, token: str) -> None:
        pass


HAMMER = textwrap.dedent("""
    import random, sys, threading, time
    import redis
    from worker.gate import Gate, GateConfig
    url, name, limit, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    client = redis.Redis.from_url(url, decode_responses=True)
    gate = Gate(client, name, GateConfig(maximum=limit, ttl_s=5, max_wait_s=10))
    inside = f"{gate.prefix}test:inside"
    def worker():
        for _ in range(rounds):
            permit = gate.acquire("realtime" if random.random() < 0.2 else "bulk")
            assert permit is not None, "no permit within 10 s"
            now_inside = client.incr(inside)
            client.rpush(f"{gate.prefix}test:seen", now_inside)
            time.sleep(random.uniform(0, 0.004))  # the call's work
            client.decr(inside)
            gate.release(permit, 0.002)
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
""")


def test_many_processes_and_threads_never_hold_more_than_the_limit(
    client: redis.Redis, redis_server: str
) -> None:
    limit, rounds = 3, 40
    gate = new_gate(client, maximum=limit)
    args = [sys.executable, "-c", HAMMER, redis_server, gate.name, str(limit), str(rounds)]
    procs = [subprocess.Popen(args) for _ in range(3)]
    # This process hammers too, with its own threads.
    errors: list[BaseException] = []

    def local() -> None:
        try:
            for _ in range(rounds):
                permit = gate.acquire("bulk", wait_s=10)
                assert permit is not None
                assert permit.held <= limit
                seen = client.incr(f"{gate.prefix}test:inside")
                client.rpush(f"{gate.prefix}test:seen", seen)
                client.decr(f"{gate.prefix}test:inside")
                gate.release(permit, 0.001)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=local) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert not errors

    seen = [int(v) for v in client.lrange(f"{gate.prefix}test:seen", 0, -1)]
    assert len(seen) == (3 * 8 + 8) * rounds
    assert max(seen) == limit  # the gate was full, and never over
    status = gate.status()
    assert status.held == 0 and status.waiting == {"realtime": 0, "bulk": 0}


def test_a_dead_holders_lease_expires_and_a_waiter_gets_it(client: redis.Redis) -> None:
    dead = Gate(
        client,
        f"test-{uuid.uuid4().hex[:8]}",
        GateConfig(maximum=1, ttl_s=0.8),
        keeper=IdleKeeper(),
    )
    assert dead.acquire() is not None
    gate = Gate(client, dead.name, GateConfig(maximum=1, ttl_s=0.8))

    started = time.monotonic()
    permit = gate.acquire(wait_s=5)
    waited = time.monotonic() - started

    assert permit is not None
    assert 0.5 < waited < 1.5  # the lease's TTL, not the waiter's 5 s
    assert gate.status().expired_total == 1
    gate.release(permit, 0.01)


def test_a_dead_waiter_is_passed_over_after_one_lease_and_gets_no_permit(
    client: redis.Redis,
) -> None:
    gate = new_gate(client, ttl_s=3, max_wait_s=60)
    t0 = 10_000_000  # simulated time (ms): the scripts take "now" from the caller
    assert gate._acquire("holder", "bulk", 0, t0)[0] == 1
    # A waiter that will never ask again (its worker was killed), then a live one.
    assert gate._acquire("dead", "bulk", 60, t0)[0] == 0
    live = gate._acquire("live", "bulk", 60, t0 + 500)
    assert live.granted == 0 and live.lapses == str(t0 + 500 + 3000)
    assert gate.renew(["holder"], now_ms=t0 + 1000) == []  # the holder's call runs on
    for at in (t0 + 1500, t0 + 2500, t0 + 3200):  # the live one asks again, a third of a lease
        live = gate._acquire("live", "bulk", 60, at, live.lapses)
        assert live.granted == 0 and live.lapses == str(at + 3000)
    assert client.zcard(f"{gate.prefix}waiters") == 2  # its place, moved: no second one
    # It ends after the dead waiter's lease ran out: the permit goes to the live one.
    gate._run("release", "holder", 100, "none", 1, 0, 500, 10, now_ms=t0 + 3300)
    assert client.zscore(f"{gate.prefix}leases", "live") is not None
    assert client.zscore(f"{gate.prefix}leases", "dead") is None


def test_a_waiter_that_asks_again_keeps_its_place_and_one_that_lapsed_goes_to_the_back(
    client: redis.Redis,
) -> None:
    gate = new_gate(client, ttl_s=3, max_wait_s=60)
    t0 = 10_000_000
    assert gate._acquire("holder", "bulk", 0, t0).granted == 1
    first = gate._acquire("first", "bulk", 60, t0)
    second = gate._acquire("second", "bulk", 60, t0 + 10)
    first = gate._acquire("first", "bulk", 60, t0 + 1000, first.lapses)  # a third of a lease on
    assert (first.granted, first.lapses) == (0, str(t0 + 4000))
    gate._run("release", "holder", 100, "none", 1, 0, 500, 10, now_ms=t0 + 1100)
    assert client.zscore(f"{gate.prefix}leases", "first") is not None  # it kept its place
    # "second" never asked again: past its lapse it is passed over; asking then, it starts over.
    gate._run("release", "first", 100, "none", 1, 0, 500, 10, now_ms=t0 + 3100)
    assert client.zscore(f"{gate.prefix}leases", "second") is None
    assert client.zcard(f"{gate.prefix}waiters") == 0
    late = gate._acquire("second", "bulk", 60, t0 + 3200, second.lapses)
    assert late.granted == 1  # (the permit is free now)


def test_status_counts_only_waiters_whose_place_has_not_lapsed(client: redis.Redis) -> None:
    gate = new_gate(client, ttl_s=3, max_wait_s=60)
    holder = gate.acquire()
    assert holder is not None
    assert gate._acquire("live", "bulk", 60, None).granted == 0
    # A place that lapsed long ago, and a member of no known shape: neither waits.
    client.zadd(f"{gate.prefix}waiters", {"gone|1000": 5, "not-a-waiter": 6})
    assert gate.status().waiting == {"realtime": 0, "bulk": 1}
    gate.release(holder, 0.001)


def test_a_killed_process_gives_its_permits_back_within_the_ttl(
    client: redis.Redis, redis_server: str
) -> None:
    gate = new_gate(client, maximum=2, ttl_s=1.0)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
            import sys, time, redis
            from worker.gate import Gate, GateConfig
            client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
            gate = Gate(client, sys.argv[2], GateConfig(maximum=2, ttl_s=1.0))
            permits = [gate.acquire(), gate.acquire()]
            print("held", flush=True)
            time.sleep(600)
        """),
            redis_server,
            gate.name,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert gate.acquire(wait_s=0) is None  # both permits are out, renewed by the holder
        os.kill(holder.pid, signal.SIGKILL)
        killed = time.monotonic()
        first, second = gate.acquire(wait_s=5), gate.acquire(wait_s=5)
        back_after = time.monotonic() - killed
    finally:
        holder.kill()
        holder.wait()
    assert first is not None and second is not None
    gate.release(first, 0.001)
    gate.release(second, 0.001)
    assert back_after < 1.0 + 0.3  # one TTL (renewal every TTL/3 keeps it at most that)


def test_realtime_waiters_are_served_before_bulk_waiters(client: redis.Redis) -> None:
    gate = new_gate(client, maximum=1)
    holder = gate.acquire()
    assert holder is not None
    order: list[str] = []

    def wait(name: str, priority: str) -> None:
        permit = gate.acquire(priority, wait_s=10)
        assert permit is not None
        order.append(name)
        gate.release(permit, 0.001)

    threads = []
    for name, priority, waiting in [
        ("bulk-1", "bulk", 1),
        ("bulk-2", "bulk", 2),
        ("realtime-1", "realtime", 3),
        ("bulk-3", "bulk", 4),
        ("realtime-2", "realtime", 5),
    ]:
        thread = threading.Thread(target=wait, args=(name, priority))
        thread.start()
        threads.append(thread)
        wait_for(lambda n=waiting: sum(gate.status().waiting.values()) == n, 5, f"{name} to wait")
    gate.release(holder, 0.001)
    for thread in threads:
        thread.join(10)

    assert order == ["realtime-1", "realtime-2", "bulk-1", "bulk-2", "bulk-3"]


def test_a_waiter_is_told_how_many_wait_ahead_of_it_realtime_ones_first(
    client: redis.Redis,
) -> None:
    # The count sizes a waiter's patience (GateConfig.patience_s): a bulk waiter has every
    # realtime waiter ahead of it, whenever they came; a realtime one only the realtime ones.
    gate = new_gate(client, maximum=1)
    holder = gate.acquire()
    assert holder is not None
    arrivals = [("b1", "bulk"), ("r1", "realtime"), ("b2", "bulk"), ("r2", "realtime")]
    turns = {t: gate._acquire(t, p, wait_s=5, now_ms=None).turn for t, p in arrivals}
    assert {t: turn[0] for t, turn in turns.items() if turn} == {"b1": 0, "r1": 0, "b2": 2, "r2": 1}
    assert gate.status().waiting == {"realtime": 2, "bulk": 2}
    gate.release(holder, 0.001)  # handed to r1, the first realtime waiter
    assert client.zscore(f"{gate.prefix}leases", "r1") is not None


def test_a_release_wakes_a_waiter_at_once(client: redis.Redis) -> None:
    # With a 30 s lease, a waiter that polled would look again only after seconds.
    gate = new_gate(client, maximum=1, ttl_s=30)
    holder = gate.acquire()
    assert holder is not None
    granted_at: list[float] = []

    def wait() -> None:
        permit = gate.acquire(wait_s=20)
        granted_at.append(time.monotonic())
        assert permit is not None
        gate.release(permit, 0.001)

    thread = threading.Thread(target=wait)
    thread.start()
    wait_for(lambda: gate.status().waiting["bulk"] == 1, 5, "the waiter to wait")
    released_at = time.monotonic()
    gate.release(holder, 0.001)
    thread.join(10)

    assert granted_at and granted_at[0] - released_at < 0.05


def test_a_lease_is_renewed_while_its_call_outlasts_the_ttl(client: redis.Redis) -> None:
    gate = new_gate(client, maximum=1, ttl_s=0.6)
    permit = gate.acquire()
    assert permit is not None
    # The call runs for four TTLs; a waiter must not get the permit meanwhile.
    assert gate.acquire(wait_s=2.4) is None
    status = gate.status()
    assert status.held == 1 and status.expired_total == 0
    gate.release(permit, 2.4)
    assert gate.status().held == 0


def test_a_waiter_that_gives_up_leaves_nothing_behind(client: redis.Redis) -> None:
    gate = new_gate(client, maximum=1)
    holder = gate.acquire()
    assert holder is not None

    assert gate.acquire("realtime", wait_s=0.2) is None

    assert gate.status().waiting == {"realtime": 0, "bulk": 0}
    assert client.keys(f"{gate.prefix}wake:*") == []
    gate.release(holder, 0.001)


def test_fixed_limit_ignores_busy_answers_and_follows_the_setting(client: redis.Redis) -> None:
    gate = new_gate(client, maximum=4)
    for _ in range(3):
        permit = gate.acquire()
        assert permit is not None
        assert gate.release(permit, 60, BUSY) == 4
    raised = Gate(client, gate.name, GateConfig(maximum=6))
    with raised.permit() as permit:
        assert permit is not None
    assert raised.status().limit == 6


def test_adaptive_limit_halves_on_a_busy_answer(client: redis.Redis) -> None:
    gate = new_gate(client, maximum=32, adaptive=True, initial=8)
    permit = gate.acquire()
    assert permit is not None
    assert gate.release(permit, 60, BUSY) == 4
    status = gate.status()
    assert status.busy_last_minute == 1 and status.busy_total == 1


def test_adaptive_limit_never_leaves_its_bounds(client: redis.Redis) -> None:
    gate = new_gate(client, maximum=3, adaptive=True, initial=10)
    permit = gate.acquire()
    assert permit is not None and gate.status().limit == 3
    for _ in range(5):
        assert gate.release(permit, 60, BUSY) >= 1
        permit = gate.acquire()
        assert permit is not None
    gate.release(permit, 0.1, OK)
    assert gate.status().limit == 1


def test_a_bulk_waiter_makes_way_for_a_realtime_job_and_a_realtime_waiter_does_not(
    client: redis.Redis,
) -> None:
    gate = new_gate(client, maximum=1)
    holder = gate.acquire()
    assert holder is not None
    outcome: dict[str, Any] = {}

    def wait(priority: str) -> None:
        started = time.monotonic()
        outcome[priority] = (gate.acquire(priority, wait_s=10), time.monotonic() - started)

    threads = [threading.Thread(target=wait, args=(p,)) for p in ("realtime", "bulk")]
    for thread in threads:
        thread.start()
    wait_for(lambda: sum(gate.status().waiting.values()) == 2, 5, "both to wait")

    make_way(client, "cs:", gate.name.split(":")[0])  # a realtime job was just published
    threads[1].join(5)

    permit, waited = outcome["bulk"]
    assert permit is None and waited < 1  # gave up at once, not after its 10 s
    assert gate.status().waiting == {"realtime": 1, "bulk": 0}
    gate.release(holder, 0.001)
    threads[0].join(5)
    assert outcome["realtime"][0] is not None
    gate.release(outcome["realtime"][0], 0.001)


def test_a_waiter_whose_turn_is_near_waits_for_it_beyond_max_wait(client: redis.Redis) -> None:
    # A gate of 1 whose calls take 0.4 s: the waiter right behind the holder needs about that,
    # more than its 0.25 s max_wait. Without patience it would go back to its queue and come
    # back to the end of the line; with it, it keeps its place until its turn.
    gate = new_gate(client, maximum=1, max_wait_s=0.25, max_patience_s=5)
    for _ in range(3):  # the gate learns how long its calls take
        permit = gate.acquire()
        assert permit is not None
        gate.release(permit, 0.4, OK)
    holder = gate.acquire()
    assert holder is not None
    released = threading.Timer(0.4, gate.release, args=(holder, 0.4, OK))  # the holder's call
    released.start()
    started = time.monotonic()
    permit = gate.acquire()
    waited = time.monotonic() - started
    released.join()

    assert permit is not None and 0.3 < waited < 1.0
    gate.release(permit, 0.4, OK)


def test_patience_is_bounded_and_an_explicit_wait_is_kept_exactly(client: redis.Redis) -> None:
    gate = new_gate(client, maximum=1, max_wait_s=0.25, max_patience_s=0.5)
    for _ in range(3):
        permit = gate.acquire()
        assert permit is not None
        gate.release(permit, 2.0, OK)  # a turn would take 3 s: more than the patience
    holder = gate.acquire()
    assert holder is not None
    started = time.monotonic()
    assert gate.acquire() is None
    assert 0.4 < time.monotonic() - started < 0.9  # max_patience_s, not the turn's 3 s
    started = time.monotonic()
    assert gate.acquire(wait_s=0.1) is None
    assert time.monotonic() - started < 0.35  # asked for 0.1 s: no patience added
    gate.release(holder, 0.01)
    assert gate.status().waiting == {"realtime": 0, "bulk": 0}


def test_a_window_is_decided_once_and_the_next_waits_for_that_decision(
    client: redis.Redis,
) -> None:
    """The release that closes a window gets it (to run the controller); until its decision is
    applied no other window closes, and a decision is applied once. A closer that never comes
    back is given up after PENDING_MS (1 s here): the fleet goes on, its late decision dropped."""
    policy = PolicyConfig(window_ms=0, min_samples=2)
    gate = new_gate(client, maximum=8, adaptive=True, initial=1, policy=policy)
    t = 5_000_000

    def release_raw(at: int) -> list[Any]:
        """One call answered in 100 ms, released without deciding (as a closer that died)."""
        permit = gate.acquire(wait_s=0, now_ms=at)
        assert permit is not None
        return list(
            gate._scripts["release"](
                keys=gate._keys, args=[at, permit.token, 100.0, OK, permit.held, permit.epoch, 0, 2]
            )
        )

    def adjust(seq: str, limit: int, at: int) -> list[int]:
        return [
            int(v) for v in gate._scripts["adjust"](keys=gate._keys, args=[at, seq, limit, "1.00"])
        ]

    assert len(release_raw(t)) == 3  # one answer: no window yet
    closed = release_raw(t + 10)
    window = dict(zip(closed[3][::2], closed[3][1::2], strict=True))
    assert (window["n"], window["limit"]) == (2, 1)
    assert len(release_raw(t + 20)) == 3 and len(release_raw(t + 30)) == 3  # pending: no close
    assert adjust(window["seq"], 1, t + 40) == [1, 1]  # (the same limit: answers keep counting)
    assert adjust(window["seq"], 3, t + 41) == [0, 1]  # applied once only
    next_window = release_raw(t + 50)
    assert len(next_window) == 5  # the next window closes once the decision is in
    # Its closer dies; after PENDING_MS another release closes a window, and the dead closer's
    # decision, if it ever came, would be dropped.
    assert len(release_raw(t + 60)) == 3
    assert len(release_raw(t + 50 + 1000)) == 5
    stale = dict(zip(next_window[3][::2], next_window[3][1::2], strict=True))["seq"]
    assert adjust(stale, 8, t + 1100)[0] == 0
    assert gate.status().limit == 1


def test_a_controller_that_fails_costs_no_release(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: Any) -> None:
        raise ZeroDivisionError("a bug in the controller")

    monkeypatch.setattr("worker.gate.decide", broken)
    gate = new_gate(
        client, maximum=8, adaptive=True, initial=1, policy=PolicyConfig(window_ms=0, min_samples=2)
    )
    for _ in range(2):  # the second release closes a window
        permit = gate.acquire()
        assert permit is not None
        assert gate.release(permit, 0.1, OK) == 1
    assert gate.status().held == 0
    assert "could not decide the limit" in caplog.text
