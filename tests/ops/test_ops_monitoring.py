"""monitoring/: promtool accepts and unit-tests the alert rules; the dashboard's queries parse
and use only metrics the daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from flanneld.backends.wireguard.backend import HealthCollector
from flanneld.metrics import Metrics

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed"),
]

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "prometheus" / "flannel-alerts.yml"
DASHBOARD = MONITORING / "grafana" / "flannel-dashboard.json"
METRIC_RE = re.compile(r"\bflannel_[a-z_]+\b")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def exported_names() -> set[str]:
    """Every series name the daemon can export (from the # TYPE lines of a rendering), the
    backends' own collectors included."""
    m = Metrics(backend="vxlan", per_peer=True)
    m.registry.register(HealthCollector(SimpleNamespace(health={})))  # type: ignore[arg-type]
    names = set()
    for line in m.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_check_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rules_unit_tests() -> None:
    out = promtool("test", "rules", "flannel-alerts.test.yml", cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_example_prometheus_config() -> None:
    out = promtool("check", "config", "prometheus.example.yml", cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr


def test_required_alerts_present() -> None:
    rules = yaml.safe_load(RULES.read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "FlannelLeaseExpiringSoon",
        "FlannelEtcdErrorsRising",
        "FlannelDropsRising",
        "FlannelDriftRepairs",
        "FlannelNodeNotReady",
        "FlannelWatchResetsFrequent",
        "FlannelSubnetPoolNearlyFull",
    } <= names


def dashboard_exprs() -> list[str]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_metric_names_exist() -> None:
    exported = exported_names()
    used = set(METRIC_RE.findall(RULES.read_text()))
    for expr in dashboard_exprs():
        used |= set(METRIC_RE.findall(expr))
    assert used, "no metric referenced?"
    assert used <= exported, f"not exported by flanneld.metrics: {sorted(used - exported)}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule for promtool."""
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace("$instance", ".*").replace("$job", ".*")
        assert "$" not in concrete, expr
        rules.append({"record": f"flannel:dashboard_query_{i}", "expr": concrete})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
