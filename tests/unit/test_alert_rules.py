"""deploy/: the Prometheus alerting rules pass ``promtool check rules`` and their own unit tests
(``promtool test rules``: the alerts fire, and not too early), and every series the rules and the
Grafana dashboard query is one the daemon exports.

promtool is required, never skipped: Debian 12 ships it in the ``prometheus`` package
(/usr/bin/promtool); ``PROMTOOL`` may name another binary.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from hacontrol.dataplane.counters import DestCounters
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.health.state import Health, TargetStatus
from hacontrol.metrics import Metrics
from hacontrol.model import Config, Endpoint, RealServer, ServiceConfig
from hacontrol.status import DataplaneView, NodeView, build_status

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "hacontrol-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "hacontrol-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "hacontrol.json"
NAME = re.compile(r"\b(hacontrol_[a-z0-9_]+|up)\b")
PROMQL_FUNCS_AND_WORDS = {"up"}  # `up` is Prometheus's own series for a target


def promtool() -> str:
    found = os.environ.get("PROMTOOL") or shutil.which("promtool")
    assert found, (
        "promtool not found: install Debian's `prometheus` package (it ships /usr/bin/promtool), "
        "or set PROMTOOL to a promtool binary"
    )
    return found


def run_promtool(*args: str) -> str:
    r = subprocess.run(
        [promtool(), *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_promtool_check_rules() -> None:
    out = run_promtool("check", "rules", RULES.name)
    assert "SUCCESS" in out


def test_promtool_test_rules() -> None:
    out = run_promtool("test", "rules", RULE_TESTS.name)
    assert "SUCCESS" in out


def exported_names() -> set[str]:
    """Every sample name the daemon can export: the event series (each family's samples by its
    type) and the state series of a status document with every block filled in."""
    a = ipaddress.ip_address
    rs = RealServer(a("192.0.2.21"), 8080)
    svc = ServiceConfig(
        name="web", vip=a("198.51.100.10"), port=80, real_servers=(rs,),
        sorry_server=Endpoint(a("192.0.2.99"), 8080),
    )  # fmt: skip
    key, dk = ServiceKey("tcp", "198.51.100.10", 80), DestKey("192.0.2.21", 8080)
    ha = {"since_ago": 1.0, "peer": {"alive": True}, "vips": [{"present": True}],
          "vips_held": True, "config": {"peer_match": True}}  # fmt: skip
    doc = build_status(
        Config(node_name="a", services=(svc,), source="x", digest="d"),
        NodeView(node="a", role="active", version="1", uptime=1.0, config_loaded_ago=1.0),
        DataplaneView(kind="ipvs", last_result="ok"),
        lambda s, r: TargetStatus(Health.UP, since=0.0),
        {key: TableService(ServiceSpec(), {dk: DestSpec(1)})},
        10.0,
        ha=ha,
        counters={(key, dk): DestCounters(1, 1)},
    )
    m = Metrics()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "info": ("_info",)}  # fmt: skip
    names: set[str] = set()
    for fam in m.registry.collect():  # declared series, with or without samples yet
        names.update(fam.name + s for s in suffixes.get(fam.type, ("",)))
    for fam in text_string_to_metric_families(m.render(doc, plane="ipvs").decode()):
        names.update(s.name for s in fam.samples)
    return names


def referenced(exprs: list[str]) -> set[str]:
    return {n for e in exprs for n in NAME.findall(e)}


def rule_exprs() -> list[str]:
    doc: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    assert len(exprs) >= len(panels)  # every panel queries something
    return exprs


def test_rules_and_dashboard_use_exported_series() -> None:
    have = exported_names() | PROMQL_FUNCS_AND_WORDS
    rules, dash = referenced(rule_exprs()), referenced(dashboard_exprs())
    assert rules - have == set(), "alert rules query series the daemon does not export"
    assert dash - have == set(), "the dashboard queries series the daemon does not export"
    # the check above can fail: a made-up name is caught
    assert referenced(["rate(hacontrol_no_such_thing_total[5m])"]) - have
    # what the issue asks to watch is on the dashboard
    for name in ("hacontrol_ha_role", "hacontrol_ha_peer_alive", "hacontrol_real_server_health",
                 "hacontrol_real_server_connections", "hacontrol_real_server_bytes_total",
                 "hacontrol_build_info", "hacontrol_ha_vips_present"):  # fmt: skip
        assert name in dash, name


def test_dashboard_shape() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] == "hacontrol"
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
