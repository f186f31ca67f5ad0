"""The status document builder (pure): kernel weights, health, ages, sorry server, filters."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)
from hacontrol.health.state import Health, TargetStatus
from hacontrol.model import Config, Endpoint, RealServer, ServiceConfig
from hacontrol.status import (
    DataplaneView,
    HealthLookup,
    NodeView,
    build_status,
    filter_service,
)

A = ipaddress.ip_address
RS1 = RealServer(A("198.51.100.1"), 80, weight=3)
RS2 = RealServer(A("198.51.100.2"), 80, weight=1)
SORRY = Endpoint(A("198.51.100.9"), 8080)
WEB = ServiceConfig(
    name="web", vip=A("192.0.2.10"), port=80, real_servers=(RS1, RS2), sorry_server=SORRY
)
DNS = ServiceConfig(
    name="dns",
    vip=A("2001:db8::10"),
    port=53,
    protocol="udp",
    real_servers=(RealServer(A("2001:db8::1"), 53),),
)
CFG = Config(
    node_name="d1", services=(WEB, DNS), source="/etc/hacontrol/hacontrol.yaml", digest="f00d"
)
NOW = 500.0
NODE = NodeView(
    node="d1", role="standalone", version="0.1.0", uptime=12.3456, config_loaded_ago=2.0
)
WEB_KEY = ServiceKey("tcp", "192.0.2.10", 80)


def health_of(table: dict[str, TargetStatus]) -> HealthLookup:
    def lookup(svc: ServiceConfig, rs: RealServer) -> TargetStatus | None:
        return table.get(str(rs.endpoint))

    return lookup


STATUSES = {
    "198.51.100.1:80": TargetStatus(
        Health.UP,
        since=400.0,
        last_ok=True,
        last_reason="connected",
        last_at=499.5,
        last_latency=0.0012,
        successes=7,
    ),
    "198.51.100.2:80": TargetStatus(
        Health.DOWN,
        since=490.0,
        last_ok=False,
        last_reason="connection refused",
        last_at=499.0,
        last_latency=0.0003,
        failures=4,
    ),
}


def kernel(dests: dict[DestKey, DestSpec]) -> Table:
    return {WEB_KEY: TableService(ServiceSpec("wrr"), dests)}


def build(kern: Table | None, dp: DataplaneView | None = None) -> dict[str, Any]:
    return build_status(
        CFG,
        NODE,
        dp or DataplaneView(kind="memory"),
        health_of(STATUSES),
        kern,
        NOW,
    )


def test_document_top_level() -> None:
    doc = build(
        None,
        DataplaneView(
            kind="nftables",
            last_result="error",
            error="boom",
            consecutive_errors=2,
            last_apply_ago=3.0,
            applies=5,
            drift_repairs=1,
        ),
    )
    assert doc["node"] == "d1" and doc["role"] == "standalone" and doc["version"] == "0.1.0"
    assert doc["uptime"] == 12.346
    assert doc["config"] == {
        "source": "/etc/hacontrol/hacontrol.yaml",
        "digest": "f00d",
        "loaded_ago": 2.0,
    }
    dp = doc["dataplane"]
    assert isinstance(dp, dict)
    assert (dp["kind"], dp["last_result"], dp["error"], dp["consecutive_errors"]) == (
        "nftables",
        "error",
        "boom",
        2,
    )
    assert (dp["applies"], dp["drift_repairs"], dp["last_apply_ago"]) == (5, 1, 3.0)
    assert doc["ha"] is None


def _web(doc: dict[str, Any]) -> dict[str, Any]:
    services = doc["services"]
    assert isinstance(services, list)
    return next(s for s in services if s["name"] == "web")


@pytest.mark.parametrize(
    ("dests", "w1", "w2", "sorry_active", "in_kernel"),
    [
        # no kernel snapshot yet: weights unknown (null), sorry state unknown
        (None, None, None, None, None),
        # rs1 up in the kernel with its weight, rs2 removed
        ({DestKey("198.51.100.1", 80): DestSpec(3)}, 3, None, False, True),
        # on_failure weight0 style: rs2 present with weight 0
        (
            {DestKey("198.51.100.1", 80): DestSpec(3), DestKey("198.51.100.2", 80): DestSpec(0)},
            3,
            0,
            False,
            True,
        ),
        # nothing serves: the sorry server is in the kernel
        ({DestKey("198.51.100.9", 8080): DestSpec(1)}, None, None, True, True),
        # the service is not in the kernel at all
        ({}, None, None, False, False),
    ],
)
def test_kernel_weights_and_sorry(
    dests: dict[DestKey, DestSpec] | None,
    w1: int | None,
    w2: int | None,
    sorry_active: bool | None,
    in_kernel: bool | None,
) -> None:
    kern = None if dests is None else (kernel(dests) if dests else {})
    web = _web(build(kern))
    rss = web["real_servers"]
    assert isinstance(rss, list)
    assert [r["kernel_weight"] for r in rss] == [w1, w2]
    assert web["sorry_server"] == {"address": "198.51.100.9", "port": 8080, "active": sorry_active}
    assert web["in_kernel"] is in_kernel


def test_real_server_fields() -> None:
    web = _web(build(kernel({DestKey("198.51.100.1", 80): DestSpec(3)})))
    rs1, rs2 = web["real_servers"]
    assert rs1 == {
        "address": "198.51.100.1",
        "port": 80,
        "weight": 3,
        "kernel_weight": 3,
        "health": "up",
        "health_since_ago": 100.0,
        "last_check": {"ok": True, "reason": "connected", "age": 0.5, "latency_ms": 1.2},
        "successes": 7,
        "failures": 0,
        "connections": None,  # a plane without counters (nftables, memory): unknown
        "traffic": None,
    }
    assert rs2["health"] == "down" and rs2["failures"] == 4
    assert rs2["last_check"]["reason"] == "connection refused"
    assert web["up"] == 1
    assert (web["scheduler"], web["forwarding"], web["on_failure"]) == ("wrr", "nat", "remove")


def test_unchecked_target_is_unknown() -> None:
    doc = build(None)
    dns = next(s for s in doc["services"] if s["name"] == "dns")
    rs = dns["real_servers"][0]
    assert rs["health"] == "unknown" and rs["last_check"]["ok"] is None
    assert rs["last_check"]["age"] is None and rs["kernel_weight"] is None
    assert dns["protocol"] == "udp" and dns["vip"] == "2001:db8::10"
    assert dns["key"] == "udp/[2001:db8::10]:53"
    assert dns["sorry_server"] is None


def test_filter_service() -> None:
    doc = build(None)
    only = filter_service(doc, "dns")
    assert only is not None and [s["name"] for s in only["services"]] == ["dns"]
    assert filter_service(doc, "nope") is None


def test_ha_block_and_role_pass_through() -> None:
    ha = {"role": "backup", "peer": {"name": "d2", "role": "active"}, "transitions": []}
    node = NodeView(node="d1", role="backup", version="0.1.0", uptime=1.0, config_loaded_ago=1.0)
    doc = build_status(CFG, node, DataplaneView(kind="memory"), health_of(STATUSES), None, NOW, ha)
    assert doc["role"] == "backup" and doc["ha"] == ha
    assert doc["ha"] is not ha  # a copy: the caller's dict is not served by reference
    assert list(doc).index("ha") < list(doc).index("services")
