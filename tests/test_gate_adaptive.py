"""The adaptive limit in simulated time: the real gate scripts on a real server, driven by a
discrete-event model of a PBX (FIFO slots, 109 after 2 s queued, a service time drawn from a
distribution that may change while it runs) and 32 callers that always have work.

Every scenario of issue 11 runs with three seeds: deterministic, and seconds of wall time for a
minute of PBX. The figures are the benchmark's (``bench/gate.py``): utilisation is the
slot-seconds our calls held over the slot-seconds free for us, the queue is our calls waiting
inside the PBX, time-averaged.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from worker.gate import BUSY, OK, Gate, GateConfig, Permit

pytestmark = pytest.mark.integration

T0 = 1_000_000  # simulated epoch (ms); the scripts take "now" from the caller
SEEDS = (1, 2, 3)
QUEUE_TIMEOUT_MS = 2000  # the PBX answers 109 to a call queued this long

#: A service time in ms, drawn with the simulation's random generator.
Service = Callable[[random.Random], float]


def uniform(mean_ms: float, jitter_ms: float = 20) -> Service:
    """``mean_ms`` ± ``jitter_ms``, as the Noojee simulator's default."""
    return lambda rng: rng.uniform(mean_ms - jitter_ms, mean_ms + jitter_ms)


def lognormal(median_ms: float, sigma: float) -> Service:
    """A heavy tail: ``median_ms``, and a 99th percentile of exp(2.33 sigma) times that."""
    return lambda rng: median_ms * math.exp(rng.gauss(0.0, sigma))


@dataclass
class Trace:
    """One point per event: (ms since start, limit, our calls in the PBX, queued, free slots)."""

    points: list[tuple[float, int, int, int, int]] = field(default_factory=list)
    calls: int = 0
    busy: int = 0

    def limits(self, start_ms: float, end_ms: float) -> set[int]:
        return {p[1] for p in self.points if start_ms <= p[0] < end_ms}

    def limit_at(self, ms: float) -> int:
        return [p for p in self.points if p[0] <= ms][-1][1]

    def max_in_pbx(self, start_ms: float, end_ms: float) -> int:
        return max(p[2] for p in self.points if start_ms <= p[0] < end_ms)

    def utilisation(self, start_ms: float, end_ms: float) -> float:
        """Slot-seconds our calls held / slot-seconds free for us, over [start, end)."""
        return self._integral(start_ms, end_ms, 2) / self._integral(start_ms, end_ms, 4)

    def queued(self, start_ms: float, end_ms: float) -> float:
        """Our calls queued inside the PBX, time-averaged over [start, end)."""
        return self._integral(start_ms, end_ms, 3) / (end_ms - start_ms)

    def _integral(self, start_ms: float, end_ms: float, column: int) -> float:
        total = 0.0
        for point, following in itertools.pairwise(self.points):
            t0, t1 = max(start_ms, point[0]), min(end_ms, following[0])
            if t1 > t0:
                total += point[column] * (t1 - t0)
        return total


def simulate(
    client: redis.Redis,
    slots: Sequence[tuple[int, int]] = ((0, 4),),
    service: Sequence[tuple[int, Service]] = ((0, uniform(100)),),
    foreign: Sequence[tuple[int, int]] = (),
    duration_ms: int = 30_000,
    callers: int = 32,
    seed: int = 7,
) -> Trace:
    """``slots``, ``service`` and ``foreign``: (ms, value) steps of the PBX's slots, of its
    service time and of slots held by another client. Returns what happened."""
    rng = random.Random(seed)
    gate = Gate(
        client,
        f"sim-{uuid.uuid4().hex[:8]}",
        GateConfig(maximum=32, adaptive=True, initial=2, max_wait_s=3600),
    )
    events: list[tuple[float, int, str, Any]] = []
    counter = itertools.count()
    tokens = (f"t{n:07d}" for n in itertools.count())  # in order: the run is reproducible

    def at(ms: float, kind: str, data: Any = None) -> None:
        heapq.heappush(events, (ms, next(counter), kind, data))

    pbx: dict[str, Any] = {"slots": slots[0][1], "foreign": 0, "ours": 0, "service": service[0][1]}
    queue: list[tuple[Permit, float]] = []
    waiting: list[str] = []
    trace = Trace()

    def enter(permit: Permit, now: float) -> None:
        queue.append((permit, now))
        admit(now)

    def admit(now: float) -> None:
        while queue and pbx["ours"] + pbx["foreign"] < pbx["slots"]:
            permit, since = queue.pop(0)
            if now - since > QUEUE_TIMEOUT_MS:
                at(now, "busy", (permit, since))
                continue
            pbx["ours"] += 1
            at(now + pbx["service"](rng), "done", (permit, since))

    def ask(now: float) -> None:
        token = next(tokens)
        granted, held, epoch = gate._acquire(token, "bulk", 3600, int(now))[:3]
        if granted:
            enter(Permit(token, held, epoch, 0), now)
        else:
            waiting.append(token)

    def wake(now: float) -> None:
        pipe = client.pipeline(transaction=False)
        for token in waiting:
            pipe.lpop(f"{gate.prefix}wake:{token}")
        for token, handed in zip(list(waiting), pipe.execute(), strict=True):
            if handed is not None:
                waiting.remove(token)
                held, _, epoch = str(handed).partition(":")
                enter(Permit(token, int(held), int(epoch), 0), now)

    for ms, value in slots[1:]:
        at(T0 + ms, "slots", value)
    for ms, value in foreign:
        at(T0 + ms, "foreign", value)
    for ms, draw in service[1:]:
        at(T0 + ms, "service", draw)
    for n in range(callers):
        at(T0 + n, "ask")
    while events:
        now, _, kind, data = heapq.heappop(events)
        if now > T0 + duration_ms:
            break
        if kind == "ask":
            ask(now)
        elif kind in ("done", "busy"):
            permit, since = data
            if kind == "done":
                pbx["ours"] -= 1
                trace.calls += 1
            else:
                trace.busy += 1
            gate.release(
                permit, (now - since) / 1000, OK if kind == "done" else BUSY, now_ms=int(now)
            )
            admit(now)
            wake(now)
            ask(now)
        else:
            pbx[kind] = data
            admit(now)
        limit = int(client.hget(f"{gate.prefix}state", "limit") or 0)
        free = pbx["slots"] - pbx["foreign"]
        trace.points.append((now - T0, limit, pbx["ours"], len(queue), free))
    trace.points.append((duration_ms, *trace.points[-1][1:]))
    return trace


# -- the scenarios of issue 11 -----------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_b_steady_pbx_is_kept_full_with_little_queue(client: redis.Redis, seed: int) -> None:
    trace = simulate(client, duration_ms=30_000, seed=seed)

    assert trace.busy == 0
    assert trace.utilisation(0, 30_000) >= 0.95
    assert trace.queued(0, 30_000) <= 0.5
    assert trace.limits(5_000, 30_000) <= {3, 4, 5}


@pytest.mark.parametrize("seed", SEEDS)
def test_c_limit_follows_the_slots_down_and_up_within_five_seconds(
    client: redis.Redis, seed: int
) -> None:
    trace = simulate(client, slots=[(0, 4), (10_000, 2), (20_000, 6)], seed=seed)

    assert trace.busy == 0
    for start, end, slots in [(15_000, 20_000, 2), (25_000, 30_000, 6)]:
        assert trace.limits(start, end) <= {slots - 1, slots, slots + 1}, (start, slots)
    assert trace.utilisation(0, 30_000) >= 0.90


@pytest.mark.parametrize("seed", SEEDS)
def test_d_outside_load_takes_slots_and_gives_them_back(client: redis.Redis, seed: int) -> None:
    trace = simulate(client, slots=[(0, 6)], foreign=[(10_000, 2), (20_000, 0)], seed=seed)

    assert trace.busy == 0
    # Within 2 s of the other client arriving we are down to its 4 free slots (+1 probing),
    assert trace.max_in_pbx(12_000, 20_000) <= 5
    # and back to 6 within 5 s of it leaving.
    assert trace.max_in_pbx(20_000, 25_000) == 6
    assert trace.limit_at(25_000) >= 5


@pytest.mark.parametrize("seed", SEEDS)
def test_g_a_slower_pbx_keeps_its_slots_full(client: redis.Redis, seed: int) -> None:
    """The PBX's service time goes 100 → 250 ms at 10 s and back at 40 s; its 4 slots stay."""
    service = [(0, uniform(100)), (10_000, uniform(250)), (40_000, uniform(100))]
    trace = simulate(client, service=service, duration_ms=55_000, seed=seed)

    assert trace.busy == 0
    for start in (15_000, 25_000, 45_000):  # every 10 s phase from 5 s after a change
        assert trace.utilisation(start, start + 10_000) >= 0.90, start
    assert trace.queued(0, 55_000) <= 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_h_a_heavy_tailed_pbx_keeps_its_slots_full(client: redis.Redis, seed: int) -> None:
    """Lognormal service, median 100 ms, sigma 0.77 (the 99th percentile about 6 x that)."""
    trace = simulate(client, service=[(0, lognormal(100, 0.77))], duration_ms=60_000, seed=seed)

    assert trace.busy == 0
    assert trace.utilisation(0, 60_000) >= 0.90
    assert trace.queued(0, 60_000) <= 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_j_fewer_slots_and_slower_at_once_settles_at_the_new_slots(
    client: redis.Redis, seed: int
) -> None:
    """At 10 s the PBX goes from 4 slots of 100 ms to 2 slots of 200 ms."""
    trace = simulate(
        client,
        slots=[(0, 4), (10_000, 2)],
        service=[(0, uniform(100)), (10_000, uniform(200))],
        duration_ms=25_000,
        seed=seed,
    )

    assert trace.busy == 0
    assert trace.limits(15_000, 25_000) <= {1, 2, 3}  # 2 ± 1 within 5 s, and it stays there
    assert trace.utilisation(15_000, 25_000) >= 0.90  # at 2, not at 1: the slots are used
