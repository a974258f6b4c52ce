"""Watching the gate: `contactsync gate status` and the Prometheus metrics, on a real server.

Two gates are built with known figures: a fixed one (held permits, waiters of both priorities,
latency samples, busy answers, an expired lease) and an adaptive one whose limit history is
written in simulated time (the gate scripts take "now" from the caller) over the last minutes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import run_cli
from worker.cli.gates import BLOCKS, sparkline
from worker.gate import BUSY, OK, Gate, GateConfig, LeaseKeeper, Permit, gate_name
from worker.ledger import Ledger
from worker.metrics import FleetCollector, MetricsStep, make_registry, serve
from worker.reports import limit_columns
from worker.settings import Settings

pytestmark = pytest.mark.integration

FIXED_TARGET = "https://pbx-a.example.com"
ADAPTIVE_TARGET = "https://pbx-b.example.com"


def server_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


class IdleKeeper(LeaseKeeper):
    """A holder that never renews its leases: a killed worker, as Redis sees it."""

    def hold(self, gate: Gate, token: str) -> None:
        pass


@dataclass
class Gates:
    prefix: str
    fixed: Gate
    adaptive: Gate
    held: list[Permit]


def build_fixed(client: redis.Redis, prefix: str) -> tuple[Gate, list[Permit]]:
    """limit 2 (fixed), 2 in flight, 1 realtime and 2 bulk waiting, p50 300 ms / p95 500 ms,
    1 busy answer (in the last minute), 1 expired lease."""
    name = gate_name("noojee", FIXED_TARGET)
    config = GateConfig(maximum=2, adaptive=False)
    dead = Gate(
        client,
        name,
        GateConfig(maximum=2, ttl_s=1),
        prefix=prefix,
        target=FIXED_TARGET,
        keeper=IdleKeeper(),
    )
    assert dead.acquire(now_ms=server_ms(client) - 30_000) is not None  # expired 29 s ago
    gate = Gate(client, name, config, prefix=prefix, target=FIXED_TARGET)
    for latency_s in (0.5, 0.1, 0.4, 0.2, 0.3):
        permit = gate.acquire()
        assert permit is not None
        gate.release(permit, latency_s, OK)
    permit = gate.acquire()
    assert permit is not None
    gate.release(permit, 2.0, BUSY)
    held = [gate.acquire(), gate.acquire()]
    assert all(p is not None for p in held)
    # Waiters, registered as acquire registers them (without blocking a thread on the wake list).
    for priority in ("realtime", "bulk", "bulk"):
        granted = gate._acquire(uuid.uuid4().hex, priority, 120.0, None)[0]
        assert not granted
    return gate, [p for p in held if p is not None]


#: When each window of ten calls ran, in ms before now (simulated time); window 6 is a busy answer.
WINDOW_STARTS_MS = [545_000 - 32_000 * w for w in range(16)] + [25_000, 12_000]
BUSY_WINDOW = 6
#: Latencies of the ten calls of a window (mean 145 ms, geometric mean 142 ms: the floor).
WINDOW_LATENCIES_MS = [100 + 10 * i for i in range(10)]
#: The limit after each window closed, and after the last busy answer (2 s ago): halved by the
#: busy answer, back up after two quiet windows (the gate's probe gap; one call at a time never
#: fills 2, so it stays there), halved again.
EXPECTED_LIMITS = [2] * 6 + [1] * 3 + [2] * 9 + [1]


def build_adaptive(client: redis.Redis, prefix: str) -> Gate:
    """An adaptive gate (initial 2, max 8) driven window by window in simulated time."""
    gate = Gate(
        client,
        gate_name("noojee", ADAPTIVE_TARGET),
        GateConfig(maximum=8, adaptive=True, initial=2),
        prefix=prefix,
        target=ADAPTIVE_TARGET,
    )
    now = server_ms(client)

    def call(at: int, latency_ms: float, signal: str) -> None:
        permit = gate.acquire(now_ms=at)
        assert permit is not None
        gate.release(permit, latency_ms / 1000, signal, now_ms=at)

    for window, before in enumerate(WINDOW_STARTS_MS):
        if window == BUSY_WINDOW:
            call(now - before, 2000, BUSY)
            continue
        for i, latency_ms in enumerate(WINDOW_LATENCIES_MS):
            call(now - before + 60 * i, latency_ms, OK)
    call(now - 2_000, 2000, BUSY)
    return gate


@pytest.fixture
def gates(client: redis.Redis) -> Iterator[Gates]:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    fixed, held = build_fixed(client, prefix)
    built = Gates(prefix, fixed, build_adaptive(client, prefix), held)
    yield built
    for permit in held:
        fixed.release(permit, 0.001)


def cli(redis_server: str, prefix: str, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    env.update(
        {"COLUMNS": "250", "CONTACTSYNC_REDIS_URL": redis_server, "CONTACTSYNC_KEY_PREFIX": prefix}
    )
    return run_cli(*args, env=env)


# -- the CLI ------------------------------------------------------------------------------------
def test_the_adaptive_gate_history_is_what_the_windows_did(gates: Gates) -> None:
    status = gates.adaptive.status()
    assert [limit for _, limit, _ in status.history] == EXPECTED_LIMITS


def figures(text: str) -> dict[str, str]:
    """A gate's table as {label: value} (label and value are separated by 2+ spaces)."""
    rows = (re.match(r"\s*(\S.*?)\s{2,}(\S.*?)\s*$", line) for line in text.splitlines())
    return {row[1]: row[2] for row in rows if row}


def test_gate_status_prints_every_figure(redis_server: str, gates: Gates) -> None:
    result = cli(redis_server, gates.prefix, "gate")
    assert result.returncode == 0, result.stdout + result.stderr
    # One table per gate, in name order, each titled "name  target".
    first, second = sorted([gates.fixed, gates.adaptive], key=lambda gate: gate.name)
    head, rest = result.stdout.split(first.name)
    assert not head.strip()
    tables = dict(zip([first.name, second.name], rest.split(second.name), strict=True))

    fixed = figures(tables[gates.fixed.name])
    assert FIXED_TARGET in tables[gates.fixed.name].splitlines()[0]
    assert fixed["limit"] == "2 (fixed)"
    assert fixed["in flight"] == "2"
    assert fixed["waiting"] == "1 realtime, 2 bulk"
    assert fixed["latency floor"] == "-"
    assert fixed["latency p50 / p95"] == "300 ms / 500 ms"
    assert fixed["busy answers"] == "1 in the last minute, 1 in total"
    assert fixed["expired leases"] == "1 in total"
    assert fixed["limit, last 10 min"] == "fixed at 2"

    adaptive = figures(tables[gates.adaptive.name])
    assert ADAPTIVE_TARGET in tables[gates.adaptive.name].splitlines()[0]
    assert adaptive["limit"] == "1 (adaptive, max 8)"
    assert adaptive["in flight"] == "0"
    assert adaptive["waiting"] == "0 realtime, 0 bulk"
    assert adaptive["latency floor"] == "142 ms"
    assert adaptive["latency p50 / p95"] == "150 ms / 190 ms"
    assert adaptive["busy answers"] == "1 in the last minute, 2 in total"
    assert adaptive["expired leases"] == "0 in total"
    # 60 columns of 10 s: nothing before the first window (545 s ago), then 2, the busy
    # answer's 1s, 2 again (the last column's highest is 2: the busy answer 2 s ago shares it).
    chart, _, scale = adaptive["limit, last 10 min"].rpartition("  ")
    assert scale == "min 1 max 2"
    line = chart.strip()
    assert len(line) < 60 and set(line) == {BLOCKS[0], BLOCKS[-1]}
    assert re.fullmatch(f"{BLOCKS[-1]}+{BLOCKS[0]}+{BLOCKS[-1]}+", line)


def test_gate_status_of_one_gate_and_of_a_destination(redis_server: str, gates: Gates) -> None:
    one = cli(redis_server, gates.prefix, "gate", "status", gates.fixed.name)
    assert one.returncode == 0 and FIXED_TARGET in one.stdout
    assert ADAPTIVE_TARGET not in one.stdout
    both = cli(redis_server, gates.prefix, "gate", "status", "noojee")
    assert FIXED_TARGET in both.stdout and ADAPTIVE_TARGET in both.stdout
    unknown = cli(redis_server, gates.prefix, "gate", "status", "nope")
    assert unknown.returncode == 2
    assert "no gate nope" in unknown.stdout and gates.fixed.name in unknown.stdout


def test_gate_status_json_has_the_figures_and_the_history(redis_server: str, gates: Gates) -> None:
    result = cli(redis_server, gates.prefix, "gate", "status", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["minutes"] == 10
    shown = {gate["name"]: gate for gate in answer["gates"]}
    fixed, adaptive = shown[gates.fixed.name], shown[gates.adaptive.name]
    assert {k: v for k, v in fixed.items() if k != "history"} == {
        "name": gates.fixed.name,
        "target": FIXED_TARGET,
        "limit": 2,
        "max": 2,
        "adaptive": False,
        "in_flight": 2,
        "waiting": {"realtime": 1, "bulk": 2},
        "latency_floor_ms": None,
        "latency_p50_ms": 300.0,
        "latency_p95_ms": 500.0,
        "busy_last_minute": 1,
        "busy_total": 1,
        "expired_leases_total": 1,
    }
    assert fixed["history"] == []
    assert adaptive["limit"] == 1 and adaptive["max"] == 8 and adaptive["adaptive"] is True
    assert adaptive["latency_floor_ms"] == 142.1
    assert (adaptive["latency_p50_ms"], adaptive["latency_p95_ms"]) == (150.0, 190.0)
    assert (adaptive["busy_last_minute"], adaptive["busy_total"]) == (1, 2)
    history = adaptive["history"]
    direct = gates.adaptive.status().history
    assert [(p["at_ms"], p["limit"], p["in_flight"]) for p in history] == direct
    assert [point["limit"] for point in history] == EXPECTED_LIMITS
    assert [point["at_ms"] for point in history] == sorted(p["at_ms"] for p in history)
    assert all(point["in_flight"] in (0.0, 1.0) for point in history)

    # The last five minutes: the windows from 288 s ago on, and the last busy answer.
    recent = cli(redis_server, gates.prefix, "gate", "status", "--json", "--minutes", "5")
    by_name = {gate["name"]: gate for gate in json.loads(recent.stdout)["gates"]}
    since = json.loads(recent.stdout)["now_ms"] - 300_000
    assert [p["at_ms"] for p in by_name[gates.adaptive.name]["history"]] == [
        at for at, _, _ in direct if at >= since
    ]
    assert len(by_name[gates.adaptive.name]["history"]) == 11  # windows from 288 s ago on


def test_no_gates_yet_says_when_they_appear(redis_server: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    result = cli(redis_server, prefix, "gate")
    assert result.returncode == 0
    assert "no gates yet" in result.stdout and "first" in result.stdout
    assert json.loads(cli(redis_server, prefix, "gate", "status", "--json").stdout)["gates"] == []


def test_without_redis_the_gate_command_says_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    result = run_cli("gate", cwd=tmp_path, env={**env, "COLUMNS": "250"})
    assert result.returncode == 2
    assert "CONTACTSYNC_REDIS_URL" in result.stdout and "Traceback" not in result.stderr


def test_gate_status_help_explains_every_figure() -> None:
    text = run_cli("gate", "status", "--help").stdout
    for figure in (
        "limit",
        "in flight",
        "waiting",
        "latency floor",
        "p50 / p95",
        "busy answers",
        "expired leases",
        "limit chart",
        "--json",
        "--minutes",
    ):
        assert figure in text, figure


# -- the chart ----------------------------------------------------------------------------------
def test_sparkline_scales_from_the_lowest_to_the_highest_value() -> None:
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([4, None, 8]) == "▁ █"
    assert sparkline([5, 5, 5]) == "▄▄▄"  # flat: mid-height
    assert sparkline([None, None]) == "  "
    assert sparkline([]) == ""
    assert sparkline([2, 3], lo=1, hi=3) == "▅█"


def test_limit_columns_keep_each_slices_highest_limit_and_carry_it_on() -> None:
    history = [
        (500, 3, 0.0),
        (1_000, 4, 1.0),
        (1_100, 9, 2.0),
        (1_200, 2, 2.0),
        (3_500, 5, 1.0),
        (9_000, 7, 1.0),
    ]
    # 1 s per column from 1 000: the point before the range carries in; 9 000 is out of range.
    assert limit_columns(history, 1_000, 6_000, columns=5) == [9, 2, 5, 5, 5]
    assert limit_columns(history, 0, 1_000, columns=2) == [None, 3]
    assert limit_columns([], 0, 1_000, columns=3) == [None, None, None]
    assert len(limit_columns(history, 0, 600_000)) == 60


# -- the metrics --------------------------------------------------------------------------------
def samples(output: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(output.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_the_collector_exposes_every_gate_and_the_job_counts(
    client: redis.Redis, gates: Gates
) -> None:
    client.hset(f"{gates.prefix}counts", mapping={"delivered": 7, "review": 2})
    collector = FleetCollector(
        lambda: client, gates.prefix, Ledger(client, prefix=gates.prefix).counts
    )
    found = samples(generate_latest(make_registry(collector)))

    def value(name: str, gate: Gate, **labels: str) -> float:
        key = frozenset({"gate": gate.name, "target": gate.target, **labels}.items())
        return found[(f"contactsync_{name}", key)]

    fixed, adaptive = gates.fixed, gates.adaptive
    assert found[("contactsync_up", frozenset())] == 1
    assert value("gate_limit", fixed) == 2 and value("gate_max", fixed) == 2
    assert value("gate_adaptive", fixed) == 0
    assert value("gate_in_flight", fixed) == 2
    assert value("gate_waiting", fixed, priority="realtime") == 1
    assert value("gate_waiting", fixed, priority="bulk") == 2
    assert value("gate_latency_seconds", fixed, quantile="0.5") == pytest.approx(0.3)
    assert value("gate_latency_seconds", fixed, quantile="0.95") == pytest.approx(0.5)
    no_floor = frozenset({"gate": fixed.name, "target": FIXED_TARGET}.items())
    assert ("contactsync_gate_latency_floor_seconds", no_floor) not in found
    assert value("gate_busy_last_minute", fixed) == 1
    assert value("gate_busy_total", fixed) == 1
    assert value("gate_expired_leases_total", fixed) == 1

    assert value("gate_limit", adaptive) == 1 and value("gate_max", adaptive) == 8
    assert value("gate_adaptive", adaptive) == 1
    assert value("gate_latency_floor_seconds", adaptive) == pytest.approx(0.1421)
    assert value("gate_latency_seconds", adaptive, quantile="0.5") == pytest.approx(0.15)
    assert value("gate_latency_seconds", adaptive, quantile="0.95") == pytest.approx(0.19)
    assert value("gate_busy_total", adaptive) == 2

    jobs = {
        dict(labels)["state"]: v
        for (name, labels), v in found.items()
        if name == "contactsync_jobs"
    }
    assert jobs["delivered"] == 7 and jobs["review"] == 2 and jobs["queued"] == 0


def test_a_scrape_survives_redis_being_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = redis.Redis(port=port, retry=Retry(NoBackoff(), 0), decode_responses=True)
    collector = FleetCollector(lambda: down, "cs:", Ledger(down).counts)
    found = samples(generate_latest(make_registry(collector)))
    assert found[("contactsync_up", frozenset())] == 0
    assert not any(name.startswith("contactsync_gate") for name, _ in found)

    def not_configured() -> redis.Redis:
        raise RuntimeError("no Redis to use")

    found = samples(generate_latest(make_registry(FleetCollector(not_configured, "cs:"))))
    assert found[("contactsync_up", frozenset())] == 0
    assert "cannot list the gates" in caplog.text


def test_a_scrape_shows_what_it_could_read(client: redis.Redis, gates: Gates) -> None:
    def counts() -> dict[str, int]:
        raise redis.ConnectionError("gone mid-scrape")

    found = samples(
        generate_latest(make_registry(FleetCollector(lambda: client, gates.prefix, counts)))
    )
    assert found[("contactsync_up", frozenset())] == 0
    key = frozenset({"gate": gates.fixed.name, "target": FIXED_TARGET}.items())
    assert found[("contactsync_gate_limit", key)] == 2
    assert not any(name == "contactsync_jobs" for name, _ in found)


def test_metrics_are_served_over_http(client: redis.Redis, gates: Gates) -> None:
    collector = FleetCollector(lambda: client, gates.prefix)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve(port, make_registry(collector), addr="127.0.0.1")
    assert server is not None
    try:
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        server.shutdown()
        server.server_close()
    assert answer.status_code == 200
    assert (
        f'contactsync_gate_limit{{gate="{gates.fixed.name}",target="{FIXED_TARGET}"}} 2.0'
        in answer.text
    )


def test_a_second_worker_on_the_host_leaves_the_metrics_port_to_the_first(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, redis_server: str
) -> None:
    with socket.socket() as taken:  # the first worker's exporter
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(redis_url=redis_server, metrics_port=port)
        monkeypatch.setattr("worker.settings.get_settings", lambda: settings)
        step = MetricsStep(parent=None)
        with caplog.at_level(logging.INFO, logger="worker.metrics"):
            step.start(parent=None)
        step.stop(parent=None)
    assert step.server is None
    [record] = [r for r in caplog.records if r.name == "worker.metrics"]
    assert record.levelno == logging.INFO and f"port {port} is taken" in record.getMessage()


def test_metrics_port_zero_turns_the_exporter_off(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(metrics_port=0)
    assert settings.metrics_port is None
    assert Settings.model_fields["metrics_port"].default == 9808
    monkeypatch.setattr("worker.settings.get_settings", lambda: settings)
    step = MetricsStep(parent=None)
    step.start(parent=None)
    assert step.server is None
