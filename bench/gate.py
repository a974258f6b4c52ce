"""The Noojee gate against plain Celery, scenarios A-J and L, side by side in one run.

Each scenario runs twice on a fresh stack: the real embedded Valkey, 4 Celery worker processes
x 8 threads, and the Noojee simulator (100 ms ± 20 ms a call unless the scenario says otherwise,
109 after 2 s queued in the PBX). "celery" is the same fleet without the gate
(CONTACTSYNC_NOOJEE__GATE=false): calls are limited only by the 32 worker threads, as a user
running Celery alone would have it. "gate" puts every call behind the gate.

Utilisation = slot-seconds the PBX spent on our calls / (elapsed x slots available to us), both
integrated over the simulator's timeline (slots changed, minus a foreign client's), elapsed being
the delivery window (see ``Run.measures``). Worker CPU per delivered job is the workers'
user + system time (``/proc/PID/stat``) from the first submit to the end, over the jobs delivered.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

#: The gate's lease TTL (the setting's default), within which a killed worker's permits return.
LEASE_TTL_S = 3.0
WORKERS, THREADS = 4, 8
SERVICE_S = 0.100
#: Timeouts scaled from minutes to seconds (the PBX's 60 s queue becomes 2 s), every ratio the
#: settings check still holding.
BASE_ENV = {
    "CONTACTSYNC_WORKER_CONCURRENCY": str(THREADS),
    "CONTACTSYNC_NOOJEE__PBX_QUEUE_TIMEOUT_S": "2",
    "CONTACTSYNC_NOOJEE__READ_TIMEOUT_S": "5",
    "CONTACTSYNC_NOOJEE__CONNECT_TIMEOUT_S": "2",
    "CONTACTSYNC_RETRY__FAST_WINDOW_S": "1",
    "CONTACTSYNC_RETRY__BASE_DELAY_S": "0.5",
    "CONTACTSYNC_RETRY__MAX_DELAY_S": "2",
    "CONTACTSYNC_GATE__MAX_WAIT_S": "2",
    # Room for a waiter near its turn to wait up to 12 s at a low limit (Settings.gate_patience_s).
    "CONTACTSYNC_VISIBILITY_TIMEOUT_S": "40",
    "CONTACTSYNC_METRICS_PORT": "0",
    **{
        f"CONTACTSYNC_{name}__{knob}": value
        for name in ("MISSIONCAPITAL", "TRENDSIC", "EXPANDABLE")
        for knob, value in (("CONNECT_TIMEOUT_S", "0.5"), ("READ_TIMEOUT_S", "1.5"))
    },
}
NO_GATE = {"CONTACTSYNC_NOOJEE__GATE": "false"}
FIXED_4 = {"CONTACTSYNC_NOOJEE__ADAPTIVE": "false", "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY": "4"}
FIXED_1 = {"CONTACTSYNC_NOOJEE__ADAPTIVE": "false", "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY": "1"}
ADAPTIVE_32 = {"CONTACTSYNC_NOOJEE__ADAPTIVE": "true", "CONTACTSYNC_NOOJEE__MAX_CONCURRENCY": "32"}
#: A heavy-tailed PBX: lognormal service time, median SERVICE_S, the 99th percentile about 6 x it.
LOGNORMAL = ["--distribution", "lognormal", "--sigma", "0.77"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One scenario on one fresh stack: submits, watches, measures."""

    mode: str
    slots: int
    env: dict[str, str]
    stack: Any = None
    started: float = 0.0  # wall clock (epoch s) of the first submit
    cpu_at_start_s: float = 0.0  # the workers' CPU time at the first submit
    limits: list[tuple[float, int, int]] = field(default_factory=list)  # (s, limit, held)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def sim(self) -> str:
        return str(self.stack.simulator_url)

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.sim}/_stats", timeout=10).json())

    def timeline(self) -> list[list[float]]:
        answer = httpx.get(f"{self.sim}/_timeline", params={"since": self.started}, timeout=30)
        return list(answer.json()["samples"])

    def submit(self, count: int, priority: str = "bulk", tag: str = "B") -> list[str]:
        """Submit ``count`` jobs with ``submit_many`` (pipelined, as a backfill would)."""
        from producers import submit_many
        from tasks.noojee import NoojeeLeadUpdate

        if not self.started:
            self.started = time.time()
            self.cpu_at_start_s = self.worker_cpu_s()
        return submit_many(
            [
                NoojeeLeadUpdate(
                    template_id=41,
                    campaign_id=41,
                    allocation_id=38,
                    external_lead_id=f"{tag}-{n}",
                    disposition="Callback",
                    fields={"FirstPhone": f"0383{n:06d}", "Name": "Bench"},
                )
                for n in range(count)
            ],
            priority="realtime" if priority == "realtime" else "bulk",
        )

    def workers(self) -> list[tuple[str, Any]]:
        """(name, process) of each Celery worker of the stack."""
        return [(name, proc) for name, proc, _ in self.stack._children if name.startswith("worker")]

    def worker_cpu_s(self) -> float:
        """User + system CPU seconds of the worker processes (threads included) so far."""
        total = 0
        for _, proc in self.workers():
            with contextlib.suppress(OSError):  # a worker killed by the scenario (F)
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / CLOCK_TICKS

    def worker_log_sizes(self) -> dict[str, int]:
        """How many bytes each worker's log holds now (where new lines will start)."""
        logs = {name: self.stack.log_dir / f"{name}.log" for name, _ in self.workers()}
        return {name: path.stat().st_size if path.exists() else 0 for name, path in logs.items()}

    def worker_log_lines(self, since: dict[str, int]) -> list[str]:
        """The lines the workers wrote after ``since`` (``worker_log_sizes`` earlier)."""
        lines: list[str] = []
        for name, offset in since.items():
            with (self.stack.log_dir / f"{name}.log").open("rb") as log:
                log.seek(offset)
                lines += log.read().decode(errors="replace").splitlines()
        return lines

    def at(self, second: float) -> None:
        """Wait until ``second`` seconds after the first submit (the scenario's clock)."""
        delay = self.started + second - time.time()
        if delay > 0:
            time.sleep(delay)

    def change(self, second: float, **config: float) -> None:
        """At ``second`` of the scenario, change the PBX (``POST /_config``: slots, latency_s)."""
        self.at(second)
        httpx.post(f"{self.sim}/_config", json=config).raise_for_status()

    def elapsed(self) -> float:
        return time.time() - self.started

    def delivered(self) -> int:
        from worker.runtime import ledger

        return ledger().counts()["delivered"]

    def wait_delivered(self, count: int, timeout_s: float = 600) -> float:
        deadline = time.monotonic() + timeout_s
        while self.delivered() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.mode}: only {self.delivered()} of {count} delivered "
                    f"within {timeout_s:g} s"
                )
            time.sleep(0.05)
        return self.elapsed()  # within 50 ms of the last delivery

    def watch_limit(self) -> None:
        """Record the gate's limit and permits out every 100 ms (gate mode only; two cheap
        reads, so the measuring does not compete with the workers for the CPU)."""
        from worker.broker import redis_client
        from worker.gate import gate_names
        from worker.settings import get_settings

        prefix = get_settings().key_prefix
        client = redis_client()

        def loop() -> None:
            gate = ""
            while not self._stop.wait(0.1):
                if not gate:
                    names = gate_names(client, prefix)
                    gate = f"{prefix}gate:{names[0]}:" if names else ""
                if gate and self.started:
                    limit = client.hget(f"{gate}state", "limit")
                    held = client.zcard(f"{gate}leases")
                    self.limits.append((self.elapsed(), int(limit or 0), int(held)))

        threading.Thread(target=loop, daemon=True).start()

    def measures(self, end_s: float | None = None) -> dict[str, Any]:
        """Utilisation, 109s, our calls and queue inside the PBX, from the simulator's timeline.

        Utilisation is measured over the delivery window, from our first call entering the PBX to
        our last call leaving it (or to ``end_s``, for the scenarios that run a fixed time):
        slot-seconds our calls held, over the slot-seconds available to us. The same figure from
        the first submit is reported too; the difference is the time the benchmark took to
        submit its first batch, when there was nothing to deliver yet.
        """
        stats = self.stats()
        samples = self.timeline()
        ours = [s for s in samples if s[1] > 0]
        first = ours[0][0] if ours else self.started
        if end_s is not None:
            end = self.started + end_s
        else:
            idle = [s[0] for s in samples if s[1] == 0 and s[0] > first]
            end = idle[-1] if idle else time.time()

        def held(t0: float) -> float:
            return _integrate(samples, t0, end, lambda s: s[1])

        def available(t0: float) -> float:
            return _integrate(samples, t0, end, lambda s: s[4] - s[2])

        queued = _integrate(samples, first, end, lambda s: s[3])
        delivered = self.delivered()
        cpu_s = self.worker_cpu_s() - self.cpu_at_start_s
        return {
            "elapsed_s": round(end - self.started, 2),
            "delivered": delivered,
            "worker_cpu_ms_per_job": round(1000 * cpu_s / delivered, 2) if delivered else None,
            "delivery_window_s": round(end - first, 2),
            "calls": stats["calls"],
            "answers_109": stats["answers"].get("109", 0),
            "utilisation": round(held(first) / available(first), 3),
            "utilisation_from_first_submit": round(held(self.started) / available(self.started), 3),
            "peak_our_in_flight": stats["peak_our_in_flight_since_reset"],
            "queued_in_pbx_time_avg": round(queued / (end - first), 3),
            "peak_queued_in_pbx": max((int(s[3]) for s in samples), default=0),
        }

    def utilisation_between(self, start_s: float, end_s: float) -> float:
        """Utilisation over [start_s, end_s) of the scenario's clock (seconds after the first
        submit): slot-seconds our calls held over the slot-seconds free for us."""
        samples = self.timeline()
        t0, t1 = self.started + start_s, self.started + end_s
        held = _integrate(samples, t0, t1, lambda s: s[1])
        return round(held / _integrate(samples, t0, t1, lambda s: s[4] - s[2]), 3)


def _integrate(
    samples: list[list[float]], start: float, end: float, value: Callable[[list[float]], float]
) -> float:
    """∫ value dt over [start, end] of the step function the timeline samples describe."""
    total = 0.0
    for sample, following in zip(samples, [*samples[1:], None], strict=True):
        t0 = max(start, sample[0])
        t1 = min(end, following[0] if following is not None else end)
        if t1 > t0:
            total += value(sample) * (t1 - t0)
    return total


@contextlib.contextmanager
def fresh_stack(
    mode: str, slots: int, gate_env: dict[str, str], simulator_args: list[str] | None = None
) -> Iterator[Run]:
    from worker.cli.stack import Stack, refresh_settings

    for name in [n for n in os.environ if n.startswith("CONTACTSYNC_")]:
        del os.environ[name]
    data_dir = Path(tempfile.mkdtemp(prefix=f"contactsync-bench-{mode}-"))
    env = {
        **BASE_ENV,
        **(NO_GATE if mode == "celery" else gate_env),
        "CONTACTSYNC_DATA_DIR": str(data_dir),
    }
    os.environ.update(env)
    refresh_settings()  # forget the previous stack's server
    stack = Stack(
        data_dir,
        workers=WORKERS,
        flower=False,
        intake=False,
        simulator_args=[
            "--slots",
            str(slots),
            "--latency",
            str(SERVICE_S),
            "--jitter",
            "0.02",
            "--queue-timeout",
            "2",
            *(simulator_args or []),
        ],
    )
    stack.start()
    run = Run(mode, slots, env, stack)
    httpx.post(f"{run.sim}/_reset").raise_for_status()
    try:
        if mode == "gate":
            run.watch_limit()
        yield run
    finally:
        run._stop.set()
        stack.stop()


# -- the scenarios -----------------------------------------------------------------------------
def scenario_a(run: Run) -> dict[str, Any]:
    """2,000 bulk jobs, 4 slots, gate fixed at 4."""
    run.submit(2000)
    end = run.wait_delivered(2000)
    return run.measures(end)


def scenario_b(run: Run) -> dict[str, Any]:
    """The same, adaptive, max concurrency 32."""
    return scenario_a(run)


def scenario_c(run: Run) -> dict[str, Any]:
    """Adaptive; the PBX's slots go 4 → 2 at 10 s → 6 at 20 s."""
    run.submit(3000)
    for second, slots in [(10, 2), (20, 6)]:
        run.change(second, slots=slots)
    run.at(30)
    result = run.measures(30)
    if run.limits:
        result["limit_settled_after_s"] = {
            f"{slots} slots at {second} s": _settled(run.limits, second, second + 10, slots)
            for second, slots in [(10, 2), (20, 6)]
        }
        result["limit_by_second"] = _by_second(run.limits)
    return result


def scenario_d(run: Run) -> dict[str, Any]:
    """Adaptive; 6 slots; a foreign client holds 2 of them from 10 s to 20 s."""
    run.submit(3000)
    run.at(10)
    httpx.post(f"{run.sim}/_foreign", json={"slots": 2, "duration_s": 10}).raise_for_status()
    run.at(30)
    result = run.measures(30)
    samples = run.timeline()
    start = run.started

    def ours(t0: float, t1: float) -> int:
        return max((int(s[1]) for s in samples if start + t0 <= s[0] < start + t1), default=0)

    foreign_in = next(
        (s[0] - start - 10 for s in samples if s[0] >= start + 10 and s[2] >= 2), None
    )
    back = next((s[0] - start - 20 for s in samples if s[0] >= start + 20 and s[1] >= 6), None)
    result.update(
        {
            "foreign_client_waited_s": round(foreign_in, 3) if foreign_in is not None else None,
            "our_max_in_flight_10_to_20_s": ours(10, 20),
            "our_max_in_flight_12_to_20_s": ours(12, 20),
            "our_back_to_6_after_s": round(back, 2) if back is not None else None,
        }
    )
    if run.limits:
        result["limit_by_second"] = _by_second(run.limits)
    return result


def scenario_e(run: Run) -> dict[str, Any]:
    """5,000 bulk jobs running, then 50 realtime jobs at 1 per second."""
    from worker.runtime import ledger

    run.submit(5000)
    run.at(12)
    realtime: list[str] = []
    for n in range(50):
        run.at(12 + n)
        realtime += run.submit(1, priority="realtime", tag=f"RT{n}")
    book = ledger()
    deadline = time.monotonic() + 60
    records: list[Any] = []
    while time.monotonic() < deadline:
        records = [book.get(job_id) for job_id in realtime]
        if all(r is not None and r.state == "delivered" for r in records):
            break
        time.sleep(0.1)
    done = [
        book.get(r.id, with_history=True)
        for r in records
        if r is not None and r.state == "delivered"
    ]
    latencies = sorted((r.updated_at_ms - r.submitted_at_ms) / 1000 for r in done if r)
    # Where the time went: waiting for a permit, the call itself, and the rest (waiting for a
    # free worker thread to fetch it, and recording).
    attempts = [next(e for e in r.history if e.get("event") == "attempt") for r in done if r]
    waits = sorted(a.get("gate_wait_ms", 0) / 1000 for a in attempts)
    calls = sorted(a.get("latency_ms", 0) / 1000 for a in attempts)
    result = run.measures()
    result.update(
        {
            "realtime_delivered": len(latencies),
            "realtime_p50_s": _quantile(latencies, 0.50),
            "realtime_p99_s": _quantile(latencies, 0.99),
            "realtime_max_s": latencies[-1] if latencies else None,
            "realtime_gate_wait_p50_max_s": [_quantile(waits, 0.5), waits[-1] if waits else None],
            "realtime_call_p50_max_s": [_quantile(calls, 0.5), calls[-1] if calls else None],
            "bulk_delivered_meanwhile": run.delivered() - len(latencies),
        }
    )
    return result


def scenario_f(run: Run) -> dict[str, Any]:
    """SIGKILL a worker that holds permits: its permits come back, no job is lost."""
    from worker.broker import redis_client
    from worker.gate import gate_names
    from worker.settings import get_settings

    jobs = 600
    run.submit(jobs)
    run.at(5)
    workers = [(name, proc) for name, proc, _ in run.stack._children if name.startswith("worker")]
    client = redis_client()
    prefix = get_settings().key_prefix
    leases_key = ""
    victim_name, victim = workers[0]
    held: list[str] = []
    if run.mode == "gate":
        leases_key = f"{prefix}gate:{gate_names(client, prefix)[0]}:leases"
        for _ in range(200):  # find a worker holding permits right now
            tokens = [str(t) for t in client.zrange(leases_key, 0, -1)]
            pids = {int(t.split("/")[1]) for t in tokens}
            holding = [(n, p) for n, p in workers if p.pid in pids]
            if holding:
                victim_name, victim = holding[0]
                held = [t for t in tokens if int(t.split("/")[1]) == victim.pid]
                break
            time.sleep(0.01)
    expiry_ms = [client.zscore(leases_key, t) for t in held]
    seconds, micros = client.time()
    killed_ms = int(seconds) * 1000 + int(micros) // 1000
    killed = time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    permits_back = lease_bound = None
    if held:
        # The leases end one TTL after their last renewal (or grant), which came before the
        # kill; the next gate script then reaps them. Measured every 2 ms.
        lease_bound = round((max(e or killed_ms for e in expiry_ms) - killed_ms) / 1000, 3)
        while any(client.zscore(leases_key, t) is not None for t in held):
            time.sleep(0.002)
        permits_back = round(time.monotonic() - killed, 3)
    end = run.wait_delivered(jobs, timeout_s=180)
    stats = run.stats()
    twice = sum(1 for n in stats["calls_by_lead"].values() if n > 1)
    result = run.measures(end)
    result.update(
        {
            "killed": victim_name,
            "permits_it_held": len(held),
            "permits_back_after_s": permits_back,
            "leases_ended_after_s": lease_bound,
            "delivered": run.delivered(),
            "jobs": jobs,
            "leads_called_twice": twice,
        }
    )
    return result


def scenario_g(run: Run) -> dict[str, Any]:
    """Adaptive; 4 slots throughout; the service time goes 100 → 250 ms at 10 s, back at 40 s."""
    run.submit(3000)
    for second, latency_s in [(10, 0.25), (40, SERVICE_S)]:
        run.change(second, latency_s=latency_s)
    run.at(55)
    result = run.measures(55)
    result["utilisation_by_phase"] = {
        f"{t0}-{t0 + 10} s": run.utilisation_between(t0, t0 + 10) for t0 in (15, 25, 45)
    }
    if run.limits:
        result["limit_by_second"] = _by_second(run.limits)
    return result


def scenario_h(run: Run) -> dict[str, Any]:
    """Adaptive; 4 slots; lognormal service time, median 100 ms, sigma 0.77; 60 s."""
    run.submit(3000)
    run.at(60)
    result = run.measures(60)
    if run.limits:
        result["limit_by_second"] = _by_second(run.limits)
    return result


def scenario_j(run: Run) -> dict[str, Any]:
    """Adaptive; at 10 s the PBX goes from 4 slots of 100 ms to 2 slots of 200 ms at once."""
    run.submit(1500)
    run.change(10, slots=2, latency_s=0.2)
    run.at(25)
    result = run.measures(25)
    result["utilisation_15_to_25_s"] = run.utilisation_between(15, 25)
    if run.limits:
        result["limit_settled_after_s"] = _settled(run.limits, 10, 25, 2)
        result["limit_by_second"] = _by_second(run.limits)
    return result


def scenario_l(run: Run) -> dict[str, Any]:
    """Gate fixed at 1 (4 slots): 31 of the 32 threads wait at the gate, and go back to the
    queue after GATE__MAX_WAIT_S without a permit, for 60 s. What the churn costs."""
    from worker.broker import redis_client
    from worker.settings import get_settings

    handed_back = f"{get_settings().key_prefix}handed-back"
    logs = run.worker_log_sizes()
    before = int(redis_client().get(handed_back) or 0)
    run.submit(3000)
    run.at(60)
    result = run.measures(60)
    lines = run.worker_log_lines(logs)
    # Our INFO line for every job that ends (its outcome and latency), and Celery's for every
    # message taken and every task that succeeds (off unless at DEBUG): one each per message at
    # any limit.
    per_message = [
        line
        for line in lines
        if " received" in line or "] succeeded in " in line or " settled: " in line
    ]
    result.update(
        {
            "requeues": int(redis_client().get(handed_back) or 0) - before,
            "log_lines": len(lines) - len(per_message),
            "log_lines_per_message": len(per_message),
            "warnings": sum(1 for line in lines if "WARNING" in line or "Traceback" in line),
            "warning_lines": [line[:300] for line in lines if "WARNING" in line][:5],
        }
    )
    return result


def _settled(limits: list[tuple[float, int, int]], since: float, until: float, slots: int) -> Any:
    """Seconds after ``since`` from which the limit stays within ±1 of ``slots`` until ``until``."""
    window = [(t, limit) for t, limit, _ in limits if since <= t < until]
    settled = None
    for t, limit in window:
        if abs(limit - slots) <= 1:
            settled = t if settled is None else settled
        else:
            settled = None
    return round(settled - since, 2) if settled is not None else None


def _by_second(limits: list[tuple[float, int, int]]) -> list[int]:
    seconds: dict[int, int] = {}
    for t, limit, _ in limits:
        seconds[int(t)] = limit
    return [seconds.get(s, 0) for s in range(max(seconds, default=-1) + 1)]


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    slots: int
    gate_env: dict[str, str]
    run: Callable[[Run], dict[str, Any]]
    #: The target (for the gate) as text, and its check on the gate's figures (and on those of
    #: the scenarios that ran before it in the same run, by key).
    target: str
    met: Callable[[dict[str, Any], dict[str, Any]], bool]
    simulator_args: tuple[str, ...] = ()


def _c_met(r: dict[str, Any], _: dict[str, Any]) -> bool:
    settled = r.get("limit_settled_after_s", {}).values()
    return (
        r["answers_109"] == 0
        and all(s is not None and s <= 5 for s in settled)
        and r["utilisation"] >= 0.90
    )


def _g_met(r: dict[str, Any], _: dict[str, Any]) -> bool:
    return (
        all(u >= 0.90 for u in r["utilisation_by_phase"].values())
        and r["answers_109"] == 0
        and r["queued_in_pbx_time_avg"] <= 0.5
    )


def _j_met(r: dict[str, Any], _: dict[str, Any]) -> bool:
    settled = r.get("limit_settled_after_s")
    return r["answers_109"] == 0 and settled is not None and settled <= 5


def _l_met(r: dict[str, Any], earlier: dict[str, Any]) -> bool:
    a = earlier.get("A", {}).get("gate", {}).get("worker_cpu_ms_per_job")
    per_minute = r["log_lines"] * 60 / r["elapsed_s"]
    return a is not None and r["worker_cpu_ms_per_job"] <= 1.3 * a and per_minute < 100


SCENARIOS = [
    Scenario(
        "A",
        "2,000 bulk jobs, 4 slots, gate fixed at 4",
        4,
        FIXED_4,
        scenario_a,
        "utilisation ≥ 0.95; 0 x 109; never more than 4 of our calls in the PBX",
        lambda r, _: (
            r["utilisation"] >= 0.95 and r["answers_109"] == 0 and r["peak_our_in_flight"] <= 4
        ),
    ),
    Scenario(
        "B",
        "same, adaptive, max concurrency 32",
        4,
        ADAPTIVE_32,
        scenario_b,
        "utilisation ≥ 0.95; 109s ≤ 0.5 % of calls; time-avg queue in the PBX ≤ 0.5",
        lambda r, _: (
            r["utilisation"] >= 0.95
            and r["answers_109"] <= 0.005 * r["calls"]
            and r["queued_in_pbx_time_avg"] <= 0.5
        ),
    ),
    Scenario(
        "C",
        "adaptive, slots 4 → 2 at 10 s → 6 at 20 s",
        4,
        ADAPTIVE_32,
        scenario_c,
        "limit within ±1 of the slots within 5 s of each change; 0 x 109; utilisation "
        "≥ 0.90 over the run",
        _c_met,
    ),
    Scenario(
        "D",
        "adaptive, 6 slots, a foreign client holds 2 from 10 s to 20 s",
        6,
        ADAPTIVE_32,
        scenario_d,
        "our calls in flight ≤ 4 (+1 probing) in the window; back to ~6 within 5 s",
        lambda r, _: (
            r["our_max_in_flight_12_to_20_s"] <= 5
            and r["our_back_to_6_after_s"] is not None
            and r["our_back_to_6_after_s"] <= 5
        ),
    ),
    Scenario(
        "E",
        "5,000 bulk jobs running, then 50 realtime jobs at 1/s",
        4,
        ADAPTIVE_32,
        scenario_e,
        f"realtime submit→delivered p99 ≤ {2 * SERVICE_S + 0.1:.1f} s",
        lambda r, _: r["realtime_delivered"] == 50 and r["realtime_p99_s"] <= 2 * SERVICE_S + 0.1,
    ),
    Scenario(
        "F",
        "SIGKILL a worker that holds permits",
        4,
        FIXED_4,
        scenario_f,
        f"its permits back within the lease TTL ({LEASE_TTL_S:g} s, +50 ms for the next "
        "Redis call to reap them and for measuring); no job lost",
        lambda r, _: (
            r["permits_back_after_s"] is not None
            and r["permits_back_after_s"] <= LEASE_TTL_S + 0.05
            and r["delivered"] == r["jobs"]
        ),
    ),
    Scenario(
        "G",
        "adaptive, 4 slots, service 100 → 250 ms at 10 s → 100 ms at 40 s",
        4,
        ADAPTIVE_32,
        scenario_g,
        "utilisation ≥ 0.90 in each 10 s phase from 5 s after a change; 0 x 109; "
        "time-avg queue in the PBX ≤ 0.5",
        _g_met,
    ),
    Scenario(
        "H",
        "adaptive, 4 slots, lognormal service (median 100 ms, sigma 0.77), 60 s",
        4,
        ADAPTIVE_32,
        scenario_h,
        "utilisation ≥ 0.90; 0 x 109; time-avg queue in the PBX ≤ 1.0",
        lambda r, _: (
            r["utilisation"] >= 0.90
            and r["answers_109"] == 0
            and r["queued_in_pbx_time_avg"] <= 1.0
        ),
        tuple(LOGNORMAL),
    ),
    Scenario(
        "J",
        "adaptive, at 10 s slots 4 → 2 and service 100 → 200 ms at once",
        4,
        ADAPTIVE_32,
        scenario_j,
        "limit settled at 2 ± 1 within 5 s; 0 x 109",
        _j_met,
    ),
    Scenario(
        "L",
        "gate fixed at 1, 4 slots, 32 threads: requeue churn for 60 s",
        4,
        FIXED_1,
        scenario_l,
        "worker CPU per delivered job ≤ 1.3 x A's (gate); fewer than 100 log "
        "lines a minute besides Celery's per-message ones",
        _l_met,
    ),
]


def run(keys: list[str] | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scenario in SCENARIOS:
        if keys and scenario.key not in keys:
            continue
        entry: dict[str, Any] = {"title": scenario.title, "target": scenario.target}
        for mode in ("celery", "gate"):
            print(f"  {scenario.key} {mode} …", flush=True)
            with fresh_stack(
                mode, scenario.slots, scenario.gate_env, list(scenario.simulator_args)
            ) as current:
                try:
                    entry[mode] = scenario.run(current)
                except RuntimeError as exc:  # a scenario that did not finish: say so, go on
                    print(f"  {scenario.key} {mode}: {exc}", flush=True)
                    entry[mode] = {"error": str(exc)}
        entry["met"] = "error" not in entry["gate"] and scenario.met(entry["gate"], results)
        results[scenario.key] = entry
    return results
