"""The adaptive limit in simulated time: the real gate scripts on a real server, driven by a
discrete-event model of a PBX (FIFO slots, 100 ms ± 20 ms per call, 109 after 2 s queued) and 32
callers that always have work. Deterministic (seeded), and seconds of wall time for 30 s of PBX."""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from worker.gate import BUSY, OK, Gate, GateConfig, Permit

pytestmark = pytest.mark.integration

T0 = 1_000_000  # simulated epoch (ms); the scripts take "now" from the caller


@dataclass
class Trace:
    """One point per event: (ms since start, limit, our calls in the PBX, queued, free slots)."""

    points: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    calls: int = 0
    busy: int = 0
    queued_time_avg: float = 0.0

    def limit_at(self, ms: float) -> int:
        return [p for p in self.points if p[0] <= ms][-1][1]

    def max_in_pbx(self, start_ms: float, end_ms: float) -> int:
        return max(p[2] for p in self.points if start_ms <= p[0] < end_ms)


def simulate(
    client: redis.Redis,
    slots: list[tuple[int, int]],
    foreign: Sequence[tuple[int, int]] = (),
    duration_ms: int = 30_000,
    callers: int = 32,
    seed: int = 7,
) -> Trace:
    """``slots``/``foreign``: (ms, value) steps of the PBX's slots and of slots held by another
    client. Returns what happened."""
    rng = random.Random(seed)
    gate = Gate(client, f"sim-{uuid.uuid4().hex[:8]}",
                GateConfig(maximum=32, adaptive=True, initial=2, max_wait_s=3600))  # fmt: skip
    events: list[tuple[float, int, str, Any]] = []
    counter = iter(range(10**9))

    def at(ms: float, kind: str, data: Any = None) -> None:
        heapq.heappush(events, (ms, next(counter), kind, data))

    pbx = {"slots": slots[0][1], "foreign": 0, "ours": 0}
    queue: list[tuple[Permit, float]] = []
    waiting: set[str] = set()
    trace = Trace()

    def enter(permit: Permit, now: float) -> None:
        queue.append((permit, now))
        admit(now)

    def admit(now: float) -> None:
        while queue and pbx["ours"] + pbx["foreign"] < pbx["slots"]:
            permit, since = queue.pop(0)
            if now - since > 2000:
                at(now, "busy", (permit, since))
                continue
            pbx["ours"] += 1
            at(now + rng.uniform(80, 120), "done", (permit, since))

    def ask(now: float) -> None:
        token = uuid.uuid4().hex
        granted, held, epoch = gate._acquire(token, "bulk", 3600, int(now))
        if granted:
            enter(Permit(token, held, epoch, 0), now)
        else:
            waiting.add(token)

    def wake(now: float) -> None:
        tokens = sorted(waiting)
        pipe = client.pipeline(transaction=False)
        for token in tokens:
            pipe.lpop(f"{gate.prefix}wake:{token}")
        for token, handed in zip(tokens, pipe.execute(), strict=True):
            if handed is not None:
                waiting.discard(token)
                held, _, epoch = str(handed).partition(":")
                enter(Permit(token, int(held), int(epoch), 0), now)

    for ms, value in slots[1:]:
        at(T0 + ms, "slots", value)
    for ms, value in foreign:
        at(T0 + ms, "foreign", value)
    for n in range(callers):
        at(T0 + n, "ask")
    last, queued_area = float(T0), 0.0
    while events:
        now, _, kind, data = heapq.heappop(events)
        if now > T0 + duration_ms:
            break
        queued_area += len(queue) * (now - last)
        last = now
        if kind == "ask":
            ask(now)
        elif kind in ("done", "busy"):
            permit, since = data
            if kind == "done":
                pbx["ours"] -= 1
                trace.calls += 1
            else:
                trace.busy += 1
            gate.release(permit, (now - since) / 1000, OK if kind == "done" else BUSY,
                         now_ms=int(now))  # fmt: skip
            admit(now)
            wake(now)
            ask(now)
        else:
            pbx[kind] = data
            admit(now)
        limit = int(client.hget(f"{gate.prefix}state", "limit") or 0)
        free = pbx["slots"] - pbx["foreign"]
        trace.points.append((now - T0, limit, pbx["ours"], len(queue), free))
    trace.queued_time_avg = queued_area / (last - T0)
    return trace


def test_steady_pbx_is_kept_full_with_little_queue(client: redis.Redis) -> None:
    trace = simulate(client, slots=[(0, 4)], duration_ms=20_000)

    assert trace.busy == 0
    assert trace.queued_time_avg <= 0.5
    # Full: 4 slots of ~100 ms for the 18 s after start-up is ~720 calls.
    assert trace.calls >= 0.95 * 4 * 20_000 / 100 - 40
    assert all(3 <= p[1] <= 5 for p in trace.points if p[0] > 3000)


def test_limit_follows_the_slots_down_and_up_within_five_seconds(client: redis.Redis) -> None:
    trace = simulate(client, slots=[(0, 4), (10_000, 2), (20_000, 6)], duration_ms=30_000)

    assert trace.busy == 0
    for start, end, slots in [(15_000, 20_000, 2), (25_000, 30_000, 6)]:
        limits = {p[1] for p in trace.points if start <= p[0] < end}
        assert limits <= {slots - 1, slots, slots + 1}, (start, limits)


def test_outside_load_takes_slots_and_gives_them_back(client: redis.Redis) -> None:
    trace = simulate(client, slots=[(0, 6)], foreign=[(10_000, 2), (20_000, 0)])

    assert trace.busy == 0
    # Within 2 s of the other client arriving we are down to its 4 free slots (+1 probing).
    assert trace.max_in_pbx(12_000, 20_000) <= 5
    assert {p[1] for p in trace.points if 12_000 <= p[0] < 20_000} <= {4, 5}
    # And back to ~6 within 5 s of it leaving.
    assert trace.limit_at(25_000) >= 5
    assert trace.max_in_pbx(25_000, 30_000) == 6
