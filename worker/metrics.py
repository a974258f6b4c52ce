"""Prometheus metrics: every gate's figures and the ledger's job counts, read from Redis when
Prometheus scrapes.

The figures are fleet-wide (they live in Redis), so one exporter per host is enough, and any one
for the whole fleet would do: every worker runs ``MetricsStep``; the first on a host binds
``CONTACTSYNC_METRICS_PORT`` (default 9808, ``0`` turns it off) and serves
``http://HOST:PORT/metrics``, the others find the port taken, say so once and carry on.

A scrape never fails because Redis does: whatever could be read is exposed, and
``contactsync_up`` is 0 when something could not be. ``prometheus_client`` is imported only when
the metrics are served or collected, so importing the Celery app stays light.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from celery import bootsteps

from worker.gate import GateStatus, gate_names, read_status

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    import redis
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

log = logging.getLogger(__name__)

#: All interfaces, as exporters usually listen (a container's port must be reachable).
ALL_INTERFACES = "0.0.0.0"  # noqa: S104


class FleetCollector:
    """A ``prometheus_client`` collector (``collect()``) of the gates and job counts.

    ``client`` is called at every scrape (so a Redis that is not configured yet, or down, is an
    ``up 0``, not a crash); ``job_counts`` returns the ledger's jobs per state."""

    def __init__(
        self,
        client: Callable[[], redis.Redis],
        prefix: str,
        job_counts: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self._job_counts = job_counts

    def read(self) -> tuple[list[GateStatus], dict[str, int], bool]:
        """(every gate's status, jobs per state, whether everything could be read)."""
        statuses: list[GateStatus] = []
        counts: dict[str, int] = {}
        ok = True
        try:
            client = self._client()
            names = gate_names(client, self.prefix)
        except Exception as exc:  # most likely Redis is down: trying more would only be slower
            log.warning("metrics: cannot list the gates in Redis: %s", exc)
            return statuses, counts, False
        for name in names:
            try:
                status = read_status(client, f"{self.prefix}gate:{name}:", name)
            except Exception as exc:
                log.warning("metrics: cannot read gate %s: %s", name, exc)
                ok = False
                continue
            if status.maximum:  # no state: the gate's keys were deleted since the names were read
                statuses.append(status)
        read = self._read_counts()
        if read is None:
            ok = False
        else:
            counts = read
        return statuses, counts, ok

    def read_destinations(
        self, statuses: list[GateStatus]
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        """(each gate's pause, if paused; each destination's reported API usage)."""
        from worker.app import destinations

        pauses: dict[str, dict[str, str]] = {}
        usage: dict[str, dict[str, str]] = {}
        try:
            client = self._client()
            with client.pipeline(transaction=False) as pipe:
                for s in statuses:
                    pipe.hgetall(f"{self.prefix}pause:{s.name}")
                for name in destinations():
                    pipe.hgetall(f"{self.prefix}api-usage:{name}")
                answers = pipe.execute()
        except Exception as exc:
            log.warning("metrics: cannot read pauses and API usage: %s", exc)
            return pauses, usage
        for s, answer in zip(statuses, answers, strict=False):
            if answer:
                pauses[s.name] = answer
        for name, answer in zip(destinations(), answers[len(statuses) :], strict=False):
            if answer:
                usage[name] = answer
        return pauses, usage

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        statuses, counts, ok = self.read()
        pauses, usage = self.read_destinations(statuses)
        gate = ["gate", "target"]

        def gauge(name: str, doc: str, labels: list[str] = gate) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"contactsync_{name}", doc, labels=labels)

        def counter(name: str, doc: str) -> CounterMetricFamily:
            # exposed as contactsync_<name>_total
            return CounterMetricFamily(f"contactsync_{name}", doc, labels=gate)

        up = gauge("up", "1 if every figure could be read from Redis at this scrape, else 0", [])
        up.add_metric([], 1 if ok else 0)
        limit = gauge("gate_limit", "Permits the fleet may hold on this gate now")
        maximum = gauge(
            "gate_max", "The highest the gate's limit may go (its fixed limit if not adaptive)"
        )
        adaptive = gauge("gate_adaptive", "1 if the limit follows latency and busy answers")
        in_flight = gauge("gate_in_flight", "Permits held now: calls in flight, fleet-wide")
        waiting = gauge(
            "gate_waiting", "Calls waiting for a permit, by priority", [*gate, "priority"]
        )
        floor = gauge(
            "gate_latency_floor_seconds",
            "Typical (geometric mean) latency at the "
            "highest limit verified to queue nothing: the destination's service "
            "time",
        )
        latency = gauge(
            "gate_latency_seconds",
            "Latency of the calls answered in the last minute, by quantile",
            [*gate, "quantile"],
        )
        busy_minute = gauge("gate_busy_last_minute", "Busy answers (Noojee 109) in the last minute")
        busy_total = counter("gate_busy", "Busy answers (Noojee 109) since the gate was created")
        expired = counter(
            "gate_expired_leases", "Leases that ran out unrenewed (a worker killed mid-call)"
        )
        for s in statuses:
            labels = [s.name, s.target]
            limit.add_metric(labels, s.limit)
            maximum.add_metric(labels, s.maximum)
            adaptive.add_metric(labels, 1 if s.adaptive else 0)
            in_flight.add_metric(labels, s.held)
            for priority, n in sorted(s.waiting.items()):
                waiting.add_metric([*labels, priority], n)
            if s.floor_ms is not None:
                floor.add_metric(labels, s.floor_ms / 1000)
            for quantile, ms in (("0.5", s.p50_ms), ("0.95", s.p95_ms)):
                if ms is not None:
                    latency.add_metric([*labels, quantile], ms / 1000)
            busy_minute.add_metric(labels, s.busy_last_minute)
            busy_total.add_metric(labels, s.busy_total)
            expired.add_metric(labels, s.expired_total)
        paused = gauge(
            "destination_paused",
            "1 while the destination is paused as down or "
            "misconfigured (its jobs wait; one call probes it)",
        )
        for s in statuses:
            paused.add_metric([s.name, s.target], 1 if s.name in pauses else 0)
        api_used = gauge(
            "api_usage_used",
            "API calls used of the allowance, as the destination "
            "last reported it (Salesforce Sforce-Limit-Info)",
            ["destination"],
        )
        api_allowed = gauge(
            "api_usage_allowed", "The API allowance the destination last reported", ["destination"]
        )
        for name, figures in sorted(usage.items()):
            api_used.add_metric([name], float(figures.get("used", 0)))
            api_allowed.add_metric([name], float(figures.get("allowed", 0)))
        jobs = gauge(
            "jobs",
            "Jobs per state in the ledger (delivered, merged, superseded: running totals)",
            ["state"],
        )
        for state, n in counts.items():
            jobs.add_metric([state], n)
        return [
            up,
            limit,
            maximum,
            adaptive,
            in_flight,
            waiting,
            floor,
            latency,
            busy_minute,
            busy_total,
            expired,
            paused,
            api_used,
            api_allowed,
            jobs,
        ]

    def _read_counts(self) -> dict[str, int] | None:
        if self._job_counts is None:
            return {}
        try:
            return dict(self._job_counts())
        except Exception as exc:
            log.warning("metrics: cannot read the job counts: %s", exc)
            return None


def make_registry(collector: FleetCollector) -> CollectorRegistry:
    """A private registry with only our collector (not the process-wide default one)."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def serve(port: int, registry: CollectorRegistry, addr: str = ALL_INTERFACES) -> WSGIServer | None:
    """Serve ``registry`` on ``addr:port`` from a daemon thread; ``None`` if the port is taken
    (another worker on this host serves the same figures) or cannot be bound."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            log.info(
                "metrics: port %d is taken (another worker on this host serves the "
                "fleet-wide figures); this worker does not serve them",
                port,
            )
        else:
            log.warning("metrics: cannot serve on port %d (%s); running without them", port, exc)
        return None
    log.info("metrics: serving Prometheus metrics at http://%s:%d/metrics", addr, port)
    return server


class MetricsStep(bootsteps.StartStopStep):
    """Serves the fleet's metrics from this worker, unless another worker on the host does."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: WSGIServer | None = None

    def start(self, parent: Any) -> None:
        from worker.broker import redis_client
        from worker.runtime import ledger
        from worker.settings import get_settings

        settings = get_settings()
        if settings.metrics_port is None:
            log.info("metrics: off (CONTACTSYNC_METRICS_PORT=0)")
            return
        collector = FleetCollector(redis_client, settings.key_prefix, lambda: ledger().counts())
        self.server = serve(settings.metrics_port, make_registry(collector))

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
