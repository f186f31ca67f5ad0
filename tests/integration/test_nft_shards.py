"""The nftables plane's service tables on the real kernel, with traffic (root, namespaces).

Past 64 services the plane spreads the services' own objects over service tables
``hacontrol_<i>of<n>`` (``hacontrol.dataplane.nft_shards``). Here: a health change of a service
in one of 16 service tables is a netlink batch on that table and the main one, every table and
chain keeps its handle, and traffic follows; growing past 64 services and shrinking back are each
one atomic rewrite that moves every service, traffic flows across both, and the tables left are
exactly the new count's. Uses the lab of test_nft_dataplane (client, director, three real
servers); the filler services have no traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from test_nft_dataplane import HTTP, PORT, RS4, VIP4, Lab, _build, svc
from test_nft_incremental import handles

from hacontrol.dataplane.desired import ConfigDesired
from hacontrol.dataplane.nft import NftDataplane
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.health.state import Health
from hacontrol.model import RealServer, ServiceConfig
from tests.integration import nftlist

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _build(tmp_path_factory.mktemp("nftshards"))


def services(fillers: int) -> list[ServiceConfig]:
    """``web`` (VIP4:80 over the three real servers) and ``fillers`` more on other ports."""
    rs = tuple(RealServer(ip_address(a), PORT, 1) for a in RS4)
    out = [ServiceConfig("web", ip_address(VIP4), 80, scheduler="rr", real_servers=rs)]
    for i in range(fillers):
        out.append(ServiceConfig(f"f{i}", ip_address(VIP4), 1000 + i, real_servers=rs))
    return out


def our_tables(lab: Lab) -> set[str]:
    return set(nftlist.present(lab.director, "hacontrol"))


async def test_a_health_change_in_a_service_table_touches_that_table_only(lab: Lab) -> None:
    health = dict.fromkeys(RS4, Health.UP)
    plane = NftDataplane(netns=lab.director.name, shards=16)
    rec = Reconciler(plane)
    rec.set_desired(ConfigDesired(services(100), lambda s, rs: health[str(rs.address)]))
    try:
        assert (await rec.sync_now("start")).ok
        before = handles(lab)
        home = plane.shard(HTTP)
        assert home.startswith("hacontrol_") and home.endswith("of16")
        assert len(our_tables(lab)) == 17 and home in our_tables(lab)  # 101 services fill all 16
        assert sorted(set(lab.requests(lab.client, VIP4, 6))) == ["rs1", "rs2", "rs3"]
        rewrites, sent = plane.rewrites, dict(plane.netlink.sent) if plane.netlink else {}
        health[RS4[1]] = Health.DOWN
        rec.mark_dirty({HTTP})
        res = await rec.sync_now("change")
        assert res.ok and res.scope == "services"
        assert plane.rewrites == rewrites and handles(lab) == before  # no table rewritten
        assert plane.netlink is not None and plane.netlink.sent["netlink"] == sent["netlink"] + 1
        reads = lab.counts_of(["rs1", "rs2", "rs3"])
        lab.requests(lab.client, VIP4, 10)
        after = lab.counts_of(["rs1", "rs2", "rs3"])
        assert {k: after[k] - reads[k] for k in after} == {"rs1": 5, "rs2": 0, "rs3": 5}
        back = await plane.snapshot(set())
        assert back[HTTP] == svc("rr", [RS4[0], RS4[2]], [1, 1]) and len(back) == 101
        assert plane.count == 16
    finally:
        await plane.remove()
    assert our_tables(lab) == set()


async def test_growing_past_64_services_and_back_moves_them_at_once(lab: Lab) -> None:
    health = dict.fromkeys(RS4, Health.UP)
    plane = lab.plane()
    rec = Reconciler(plane)
    rec.set_desired(ConfigDesired(services(20), lambda s, rs: health[str(rs.address)]))
    try:
        assert (await rec.sync_now("start")).ok
        assert our_tables(lab) == {"hacontrol"} and plane.count == 1
        assert sorted(set(lab.requests(lab.client, VIP4, 3))) == ["rs1", "rs2", "rs3"]
        rewrites = plane.rewrites
        rec.set_desired(ConfigDesired(services(150), lambda s, rs: health[str(rs.address)]))
        assert (await rec.sync_now("reload")).ok
        assert plane.count == 4 and plane.rewrites == rewrites + 1  # one atomic batch
        assert our_tables(lab) == {"hacontrol", *(f"hacontrol_{i}of4" for i in range(4))}
        assert sorted(set(lab.requests(lab.client, VIP4, 3))) == ["rs1", "rs2", "rs3"]
        # the kernel's tables are what the plane reads back, nothing altered, with the count
        fresh = NftDataplane(netns=lab.director.name)
        assert len(await fresh.snapshot(set())) == 151 and fresh.count == 4
        # a few less keeps the count (no rewrite at a boundary)...
        rec.set_desired(ConfigDesired(services(140), lambda s, rs: health[str(rs.address)]))
        assert (await rec.sync_now("reload")).ok and plane.rewrites == rewrites + 1
        # ...four times too many tables moves them back into the main table at once
        rec.set_desired(ConfigDesired(services(10), lambda s, rs: health[str(rs.address)]))
        assert (await rec.sync_now("reload")).ok
        assert plane.count == 1 and plane.rewrites == rewrites + 2
        assert our_tables(lab) == {"hacontrol"}
        assert sorted(set(lab.requests(lab.client, VIP4, 3))) == ["rs1", "rs2", "rs3"]
        assert len(await plane.snapshot(set())) == 11
    finally:
        await plane.remove()
    assert our_tables(lab) == set()
