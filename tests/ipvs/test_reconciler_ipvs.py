"""The Reconciler over the real IPVS table (in the guest): drift repair, foreign services, adoption.

The desired table comes from service configs and a health map through ``desired_table``, exactly
as the daemon builds it. ``ipvsadm`` plays the administrator editing the table by hand.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from ipvslab import ipvsadm, kernel_table

from hacontrol.dataplane.desired import desired_table, service_key
from hacontrol.dataplane.ipvs import IpvsDataplane
from hacontrol.dataplane.owned import OwnedStore
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, Table
from hacontrol.health.state import Health
from hacontrol.model import RealServer, ServiceConfig

pytestmark = [pytest.mark.ipvs, pytest.mark.usefixtures("clean_ipvs")]


def rs(addr: str, weight: int = 1) -> RealServer:
    return RealServer(ipaddress.ip_address(addr), 8080, weight)


SERVICES = (
    ServiceConfig(
        "web", ipaddress.ip_address("198.51.100.30"), 80, scheduler="wrr",
        real_servers=(rs("192.0.2.21", 3), rs("192.0.2.22", 1), rs("192.0.2.23", 2)),
    ),
    ServiceConfig(
        "dns", ipaddress.ip_address("198.51.100.30"), 53, protocol="udp", scheduler="rr",
        forwarding="dr", real_servers=(rs("192.0.2.24"), rs("192.0.2.25")),
    ),
    ServiceConfig(
        "v6", ipaddress.ip_address("2001:db8::30"), 443, scheduler="sh", persistence=120,
        real_servers=(rs("2001:db8::21"),),
    ),
)  # fmt: skip
WEB = service_key(SERVICES[0])


def build(state: Health) -> object:
    def health(svc: ServiceConfig, r: RealServer) -> Health:
        return state

    return lambda actual: desired_table(SERVICES, health, actual)


def expected() -> Table:
    return desired_table(SERVICES, lambda s, r: Health.UP)


async def test_repairs_clear_and_hand_edits_leaves_foreign(
    plane: IpvsDataplane, tmp_path: Path
) -> None:
    rec = Reconciler(plane, owned_store=OwnedStore(tmp_path))
    rec.set_desired(build(Health.UP))  # type: ignore[arg-type]
    first = await rec.sync_now("start")
    assert first.ok, first.error
    assert kernel_table() == expected()

    ipvsadm("-C")  # an admin wipes the table
    r = await rec.sync_now("resync")
    assert r.ok and r.drift, r
    assert kernel_table() == expected()

    ipvsadm("-e", "-t", "198.51.100.30:80", "-r", "192.0.2.22:8080", "-m", "-w", "50")
    assert kernel_table()[WEB].dests[DestKey("192.0.2.22", 8080)].weight == 50
    r = await rec.sync_now("resync")
    assert r.ok and r.actions == [
        "update_dest tcp/198.51.100.30:80 -> 192.0.2.22:8080 weight=1 forwarding=nat"
    ]
    assert kernel_table() == expected()

    ipvsadm("-A", "-t", "198.51.100.99:8000", "-s", "lc")
    ipvsadm("-a", "-t", "198.51.100.99:8000", "-r", "192.0.2.50:8000", "-g", "-w", "7")
    r = await rec.sync_now("resync")
    assert r.ok and r.actions == []
    foreign = ServiceKey("tcp", "198.51.100.99", 8000)
    table = kernel_table()
    assert table[foreign].dests == {DestKey("192.0.2.50", 8000): DestSpec(7, "dr")}
    assert {k: v for k, v in table.items() if k != foreign} == expected()


async def test_restart_adopts_without_removing(plane: IpvsDataplane, tmp_path: Path) -> None:
    rec = Reconciler(plane, owned_store=OwnedStore(tmp_path))
    rec.set_desired(build(Health.UP))  # type: ignore[arg-type]
    assert (await rec.sync_now("start")).ok
    before = kernel_table()
    # "restart": a new plane and reconciler, no health verdict yet (every target UNKNOWN)
    plane2 = IpvsDataplane()
    await plane2.open()
    try:
        rec2 = Reconciler(plane2, owned_store=OwnedStore(tmp_path))
        rec2.set_desired(build(Health.UNKNOWN))  # type: ignore[arg-type]
        r = await rec2.sync_now("start")
        assert r.ok and r.actions == [], r
        assert kernel_table() == before
        assert rec2.owned == frozenset(before)

        # then the verdicts arrive: one real server DOWN -> only that destination goes
        def health(svc: ServiceConfig, r_: RealServer) -> Health:
            return Health.DOWN if str(r_.address) == "192.0.2.21" else Health.UP

        rec2.set_desired(lambda actual: desired_table(SERVICES, health, actual))
        r = await rec2.sync_now("change")
        assert r.actions == ["del_dest tcp/198.51.100.30:80 -> 192.0.2.21:8080"]
    finally:
        await plane2.close()
