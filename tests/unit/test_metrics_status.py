"""The state series of /metrics (hacontrol.metrics.status_families), the IPVS destination counters
(hacontrol.dataplane.counters) and how the status shows them, parsed back as Prometheus does."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.counters import (
    STATS_CONNS,
    STATS_INBYTES,
    STATS_INPKTS,
    STATS_OUTBYTES,
    STATS_OUTPKTS,
    DestCounters,
    PlaneCounters,
    decode_dest_counters,
    read_ipvs,
)
from hacontrol.dataplane.ipvs_codec import (
    CMD,
    CMD_ATTR_DEST,
    DEST_ACTIVE_CONNS,
    DEST_ADDR,
    DEST_ADDR_FAMILY,
    DEST_FWD_METHOD,
    DEST_INACT_CONNS,
    DEST_PERSIST_CONNS,
    DEST_PORT,
    DEST_STATS,
    DEST_STATS64,
    DEST_WEIGHT,
    nla,
    service_attrs,
)
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.health.state import Health, TargetStatus
from hacontrol.metrics import Metrics
from hacontrol.model import Config, Endpoint, RealServer, ServiceConfig
from hacontrol.status import DataplaneView, NodeView, build_status

A = ipaddress.ip_address
RS1, RS2 = RealServer(A("192.0.2.21"), 8080, weight=2), RealServer(A("192.0.2.22"), 8080)
WEB = ServiceConfig(
    name="web", vip=A("198.51.100.10"), port=80, real_servers=(RS1, RS2),
    sorry_server=Endpoint(A("192.0.2.99"), 8080),
)  # fmt: skip
DNS = ServiceConfig(
    name="dns", vip=A("2001:db8::10"), port=53, protocol="udp",
    real_servers=(RealServer(A("2001:db8::1"), 53),),
)  # fmt: skip
WEB_KEY = ServiceKey("tcp", "198.51.100.10", 80)
D1, D2 = DestKey("192.0.2.21", 8080), DestKey("192.0.2.22", 8080)
NOW = 1000.0
HEALTH = {
    RS1: TargetStatus(Health.UP, since=900.0),
    RS2: TargetStatus(Health.DOWN, since=808.0, last_reason="connection refused"),
}
HA = {
    "role": "active", "since_ago": 42.5, "peer": {"name": "b", "alive": True},
    "vips": [{"address": "198.51.100.10", "interface": "eth0", "present": True},
             {"address": "198.51.100.11", "interface": "eth0", "present": False}],
    "vips_held": True, "config": {"digest": "f00d", "peer_match": False},
}  # fmt: skip
COUNTERS = {
    (WEB_KEY, D1): DestCounters(active=5, inactive=2, persistent=0, connections=40,
                                packets_in=700, packets_out=650, bytes_in=90000,
                                bytes_out=1_200_000),
}  # fmt: skip


def status(
    services: Iterable[ServiceConfig] = (WEB, DNS),
    counters: Any = None,
    ha: dict[str, Any] | None = None,
    last_result: str | None = "ok",
) -> dict[str, Any]:
    cfg = Config(node_name="a", services=tuple(services), source="/etc/x.yaml", digest="f00d")
    kernel = {WEB_KEY: TableService(ServiceSpec(), {D1: DestSpec(2)})}
    return build_status(
        cfg,
        NodeView(node="a", role="standalone", version="0.1", uptime=60.0, config_loaded_ago=5.0),
        DataplaneView(kind="ipvs", last_result=last_result, consecutive_errors=0),
        lambda svc, rs: HEALTH.get(rs),
        kernel,
        NOW,
        ha=ha,
        counters=counters,
    )


def samples(doc: dict[str, Any], plane: str = "ipvs") -> dict[tuple[str, frozenset[Any]], float]:
    text = Metrics().render(doc, plane=plane).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(got: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float | None:
    return got.get((name, frozenset(labels.items())))


def names(got: dict[tuple[str, frozenset[Any]], float]) -> set[str]:
    return {n for n, _ in got}


def test_real_server_series() -> None:
    got = samples(status(counters=COUNTERS))
    rs1 = {"service": "web", "real_server": "192.0.2.21:8080"}
    rs2 = {"service": "web", "real_server": "192.0.2.22:8080"}
    assert value(got, "hacontrol_real_server_health", **rs1, state="up") == 1
    assert value(got, "hacontrol_real_server_health", **rs1, state="down") == 0
    assert value(got, "hacontrol_real_server_health", **rs2, state="down") == 1
    assert value(got, "hacontrol_real_server_health_seconds", **rs2) == 192.0
    assert value(got, "hacontrol_real_server_weight", **rs1) == 2
    assert value(got, "hacontrol_real_server_kernel_weight", **rs1) == 2
    assert value(got, "hacontrol_real_server_kernel_weight", **rs2) is None  # not in the kernel
    assert value(got, "hacontrol_real_server_connections", **rs1, state="active") == 5
    assert value(got, "hacontrol_real_server_connections", **rs1, state="inactive") == 2
    assert value(got, "hacontrol_real_server_connections", **rs2, state="active") == 0
    assert value(got, "hacontrol_real_server_scheduled_connections_total", **rs1) == 40
    assert value(got, "hacontrol_real_server_bytes_total", **rs1, direction="out") == 1_200_000
    assert value(got, "hacontrol_real_server_packets_total", **rs1, direction="in") == 700
    v6 = {"service": "dns", "real_server": "[2001:db8::1]:53"}
    assert value(got, "hacontrol_real_server_health", **v6, state="unknown") == 1
    assert value(got, "hacontrol_service_real_servers", service="web") == 2
    assert value(got, "hacontrol_service_real_servers_up", service="web") == 1
    assert value(got, "hacontrol_service_in_kernel", service="web") == 1
    assert value(got, "hacontrol_service_in_kernel", service="dns") == 0
    assert value(got, "hacontrol_service_sorry_active", service="web") == 0
    assert value(got, "hacontrol_service_sorry_active", service="dns") is None  # none configured
    assert value(got, "hacontrol_service_info", service="dns", vip="2001:db8::10", port="53",
                 protocol="udp", scheduler="wrr", forwarding="nat") == 1  # fmt: skip


def test_connections_unknown_without_counters() -> None:
    """nftables / memory: no per-destination counters, so no connection or traffic series at all
    (an absent series, not a made-up 0)."""
    got = samples(status(counters=None), plane="nftables")
    assert not {n for n in names(got) if n.startswith("hacontrol_real_server_")} & {
        "hacontrol_real_server_connections",
        "hacontrol_real_server_bytes_total",
        "hacontrol_real_server_packets_total",
        "hacontrol_real_server_scheduled_connections_total",
    }
    assert "hacontrol_real_server_health" in names(got)


def test_build_config_dataplane_and_no_ha_without_ha() -> None:
    got = samples(status(), plane="nftables")
    (build,) = [k for k in got if k[0] == "hacontrol_build_info"]
    labels = dict(build[1])
    assert labels["plane"] == "nftables" and labels["version"] and labels["python"].count(".") == 2
    assert value(got, "hacontrol_config_info", digest="f00d") == 1
    assert value(got, "hacontrol_dataplane_last_apply_ok") == 1
    assert value(got, "hacontrol_dataplane_consecutive_errors") == 0
    assert value(got, "hacontrol_uptime_seconds") == 60
    assert not {n for n in names(got) if n.startswith("hacontrol_ha_")} - {
        # the event series of the registry are declared even without HA; no state series
        "hacontrol_ha_role",
    }
    assert "hacontrol_dataplane_last_apply_ok" not in names(samples(status(last_result=None)))
    assert value(samples(status(last_result="error")), "hacontrol_dataplane_last_apply_ok") == 0


def test_ha_series() -> None:
    got = samples(status(ha=HA))
    assert value(got, "hacontrol_ha_peer_alive") == 1
    assert value(got, "hacontrol_ha_peer_config_match") == 0
    assert value(got, "hacontrol_ha_vips_held") == 1
    assert value(got, "hacontrol_ha_vips_present") == 1
    assert value(got, "hacontrol_ha_vips_configured") == 2
    assert value(got, "hacontrol_ha_seconds_since_transition") == 42.5
    never = samples(status(ha={**HA, "peer": None, "config": {"peer_match": None}}))
    assert value(never, "hacontrol_ha_peer_alive") == 0
    assert value(never, "hacontrol_ha_peer_config_match") is None  # unknown: no peer heard


def test_series_leave_with_the_config() -> None:
    """Cardinality follows the config: a service removed by a reload leaves /metrics."""
    before = samples(status((WEB, DNS)))
    after = samples(status((WEB,)))
    assert any(dict(k[1]).get("service") == "dns" for k in before)
    assert not any(dict(k[1]).get("service") == "dns" for k in after)
    per_rs = [k for k in after if dict(k[1]).get("real_server") == "192.0.2.21:8080"]
    assert len(per_rs) == 6  # 3 health states, seconds, weight, kernel weight


# -- IPVS destination counters --------------------------------------------------------------


def dest_attrs(
    addr: str, port: int, active: int, inactive: int, stats64: bool = True
) -> dict[int, Any]:
    raw = bytes(ipaddress.ip_address(addr).packed) + b"\0" * 12
    if stats64:
        stats = DEST_STATS64, b"".join(
            nla(k, struct.pack("=Q", v)) for k, v in ((1, 9), (2, 100), (3, 90), (4, 5000),
                                                       (5, 7000))
        )  # fmt: skip
    else:  # the 32-bit block: u32 counts, u64 bytes
        stats = DEST_STATS, b"".join(
            [nla(1, struct.pack("=I", 9)), nla(2, struct.pack("=I", 100)),
             nla(3, struct.pack("=I", 90)), nla(4, struct.pack("=Q", 5000)),
             nla(5, struct.pack("=Q", 7000))]
        )  # fmt: skip
    return {
        DEST_ADDR: raw, DEST_PORT: struct.pack(">H", port), DEST_FWD_METHOD: struct.pack("=I", 0),
        DEST_WEIGHT: struct.pack("=i", 1), DEST_ADDR_FAMILY: struct.pack("=H", 2),
        DEST_ACTIVE_CONNS: struct.pack("=I", active), DEST_INACT_CONNS: struct.pack("=I", inactive),
        DEST_PERSIST_CONNS: struct.pack("=I", 1), stats[0]: stats[1],
    }  # fmt: skip


@pytest.mark.parametrize("stats64", [True, False])
def test_decode_dest_counters(stats64: bool) -> None:
    c = decode_dest_counters(dest_attrs("192.0.2.21", 8080, 3, 4, stats64))
    assert c == DestCounters(active=3, inactive=4, persistent=1, connections=9, packets_in=100,
                             packets_out=90, bytes_in=5000, bytes_out=7000)  # fmt: skip


def test_stats_attribute_numbers_are_pyroute2s() -> None:
    from pyroute2.netlink.generic import ipvs as p2

    nla_names = [n for n, _ in p2.ipvsstats.stats64.nla_map]
    for name, ours in (("CONNS", STATS_CONNS), ("INPKTS", STATS_INPKTS),
                       ("OUTPKTS", STATS_OUTPKTS), ("INBYTES", STATS_INBYTES),
                       ("OUTBYTES", STATS_OUTBYTES)):  # fmt: skip
        assert nla_names.index(f"IPVS_STATS_ATTR_{name}") == ours, name


def test_decode_dest_counters_of_an_old_kernel() -> None:
    """No counters in the dump at all: zeros, not a crash."""
    a = dest_attrs("192.0.2.21", 8080, 0, 0)
    for k in (DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_PERSIST_CONNS, DEST_STATS64):
        del a[k]
    assert decode_dest_counters(a) == DestCounters(0, 0)


class FakeIpvs:
    """Answers destination dumps from recorded attributes (and fails when told to)."""

    def __init__(self, dests: dict[ServiceKey, list[dict[int, Any]]], fail: bool = False) -> None:
        self.dests, self.fail = dests, fail
        self.asked: list[bytes] = []

    async def dump_nested(self, cmd: int, body: bytes, want: int) -> list[dict[int, Any]]:
        assert (cmd, want) == (CMD["get_dest"], CMD_ATTR_DEST)
        self.asked.append(body)
        if self.fail:
            raise DataplaneError("ipvs: dump: Operation not permitted")
        for key, dests in self.dests.items():
            if body == service_attrs(key, None):
                return dests
        raise DataplaneError("ipvs: dump: No such process")

    async def request(self, cmd: int, body: bytes) -> int:
        raise AssertionError("counters never change the kernel")


class FakePlane:
    def __init__(self, req: FakeIpvs | None) -> None:
        self.req = req

    def ipvs_requests(self) -> FakeIpvs | None:
        return self.req


class Rec:
    def __init__(self, kernel: dict[ServiceKey, TableService]) -> None:
        self.kernel = kernel


class Daemonish:
    """What PlaneCounters reads of the daemon."""

    def __init__(self, dataplane: Any, reconciler: Any, services: Iterable[ServiceConfig]) -> None:
        self.dataplane, self.reconciler = dataplane, reconciler
        self.config = Config(node_name="a", services=tuple(services))


async def test_read_ipvs_and_status() -> None:
    ipvs = FakeIpvs({WEB_KEY: [dest_attrs("192.0.2.21", 8080, 5, 2)]})
    got = await read_ipvs(ipvs, [WEB_KEY])
    assert got[(WEB_KEY, D1)].active == 5 and got[(WEB_KEY, D1)].bytes_out == 7000
    doc = status(counters=got)
    rs1, rs2 = doc["services"][0]["real_servers"]
    assert rs1["connections"] == {"active": 5, "inactive": 2, "persistent": 1}
    assert rs1["traffic"] == {"connections": 9, "packets_in": 100, "packets_out": 90,
                              "bytes_in": 5000, "bytes_out": 7000}  # fmt: skip
    # not in the kernel (down): no connections, known to be none
    assert rs2["connections"] == {"active": 0, "inactive": 0, "persistent": 0}
    assert doc["services"][1]["real_servers"][0]["connections"] == {
        "active": 0, "inactive": 0, "persistent": 0}  # fmt: skip


async def test_plane_counters_only_services_in_the_kernel() -> None:
    ipvs = FakeIpvs({WEB_KEY: [dest_attrs("192.0.2.21", 8080, 1, 0)]})
    kernel = {WEB_KEY: TableService(ServiceSpec(), {D1: DestSpec(2)})}
    source = Daemonish(FakePlane(ipvs), Rec(kernel), [WEB, DNS])
    pc = PlaneCounters(source)
    await pc.refresh()
    assert ipvs.asked == [service_attrs(WEB_KEY, None)]  # dns is not in the kernel: not asked
    assert pc.latest is not None and pc.latest[(WEB_KEY, D1)].active == 1
    source.dataplane = FakePlane(None)
    await pc.refresh()
    assert pc.latest is None  # a plane without counters (nftables)
    source.dataplane, source.reconciler = FakePlane(ipvs), None
    await pc.refresh()
    assert pc.latest is None  # not started: no reconciler yet


async def test_plane_counters_failure_is_unknown_and_logged_once() -> None:
    ipvs = FakeIpvs({WEB_KEY: [dest_attrs("192.0.2.21", 8080, 1, 0)]}, fail=True)
    plane, rec = FakePlane(ipvs), Rec({WEB_KEY: TableService(ServiceSpec(), {})})
    pc = PlaneCounters(Daemonish(plane, rec, [WEB]))
    with capture_logs() as logs:
        pc.latest = {}
        for _ in range(3):
            await pc.refresh()
            assert pc.latest is None
        ipvs.fail = False
        await pc.refresh()
    assert pc.latest is not None
    events = [e["event"] for e in logs]
    assert events == ["dataplane.counters_error", "dataplane.counters_recovered"]
    assert "Operation not permitted" in logs[0]["reason"]
