"""The nftables plane changes a few services with a few commands (root, namespaces).

A health change reaches the kernel as element updates and the touched service's own chain: the
table and its base chains keep their handles (no whole-table rewrite), the reconciler reads
nothing, and traffic follows. A seeded random sequence of changes applied command by command
leaves the same kernel listing as rendering the final table whole. Uses the lab of
test_nft_dataplane (client, director, three real servers).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from test_nft_dataplane import HTTP, PORT, RS4, VIP4, Lab, _build, svc

from hacontrol.dataplane.desired import ConfigDesired
from hacontrol.dataplane.diff import diff
from hacontrol.dataplane.nft import NftDataplane
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, Table
from hacontrol.dataplane.table import TableService as TS
from hacontrol.health.state import Health
from hacontrol.model import RealServer, ServiceConfig
from tests.integration import nftlist


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _build(tmp_path_factory.mktemp("nftinc"))


def handles(lab: Lab, name: str = "hacontrol") -> dict[tuple[str, str], int]:
    """The handle of each of our tables (main and service tables) and of each of their chains,
    by (table, chain or "") (a table rewrite gives new ones)."""
    got: dict[tuple[str, str], int] = {}
    for item in nftlist.ours(lab.director, name):
        if "table" in item:
            got[(item["table"]["name"], "")] = item["table"]["handle"]
        elif "chain" in item:
            got[(item["chain"]["table"], item["chain"]["name"])] = item["chain"]["handle"]
    return got


@pytest.mark.root
async def test_a_health_change_is_element_updates_and_traffic_follows(lab: Lab) -> None:
    svcs = [
        ServiceConfig(
            "web",
            ip_address(VIP4),
            80,
            scheduler="rr",
            real_servers=tuple(RealServer(ip_address(a), PORT, 1) for a in RS4),
        )
    ]
    health: dict[str, Health] = dict.fromkeys(RS4, Health.UP)
    plane = lab.plane()
    rec = Reconciler(plane)
    rec.set_desired(ConfigDesired(svcs, lambda s, rs: health[str(rs.address)]))
    try:
        assert (await rec.sync_now("start")).ok
        # the main table and the one service table of the one service
        assert nftlist.present(lab.director, "hacontrol") == nftlist.expected(
            "hacontrol", {plane.shard(HTTP)}
        )
        before = handles(lab)
        rewrites, reads = plane.rewrites, lab.counts_of(["rs1", "rs2", "rs3"])
        assert sorted(set(lab.requests(lab.client, VIP4, 6))) == ["rs1", "rs2", "rs3"]
        health[RS4[1]] = Health.DOWN
        rec.mark_dirty({HTTP})
        res = await rec.sync_now("change")
        assert res.ok and res.scope == "services"
        assert res.actions == [f"del_dest tcp/{VIP4}:80 -> {RS4[1]}:{PORT}"]
        assert plane.rewrites == rewrites  # no whole-table render
        assert handles(lab) == before  # table and every chain kept: no rewrite
        reads = lab.counts_of(["rs1", "rs2", "rs3"])
        lab.requests(lab.client, VIP4, 10)
        after = lab.counts_of(["rs1", "rs2", "rs3"])
        assert {k: after[k] - reads[k] for k in after} == {"rs1": 5, "rs2": 0, "rs3": 5}
        # every server down: the service rejects instead of reaching the director
        for a in RS4:
            health[a] = Health.DOWN
        rec.mark_dirty({HTTP})
        assert (await rec.sync_now("change")).ok and handles(lab) == before
        assert lab.requests(lab.client, VIP4, 2) == ["error:ConnectionRefusedError"] * 2
        health[RS4[2]] = Health.UP
        rec.mark_dirty({HTTP})
        assert (await rec.sync_now("change")).ok and handles(lab) == before
        assert set(lab.requests(lab.client, VIP4, 3)) == {"rs3"}
        # what the commands left reads back as the table, nothing altered
        assert await plane.snapshot(set()) == {HTTP: svc("rr", RS4[2:], [1])}
        # every change went as the plane's own netlink batch (hacontrol.dataplane.nftnl)
        assert plane.netlink is not None and plane.netlink.sent == {"netlink": 3, "fallback": 0}
    finally:
        await plane.remove()


def _random_table(rnd: random.Random) -> Table:
    out: Table = {}
    for port in rnd.sample(range(1000, 1012), rnd.randint(1, 8)):
        key = ServiceKey(rnd.choice(["tcp", "udp"]), VIP4, port)
        dests = {
            DestKey(a, PORT): DestSpec(rnd.randint(0, 3))
            for a in rnd.sample([*RS4, "192.0.2.21", "192.0.2.22"], rnd.randint(0, 4))
        }
        out[key] = TS(ServiceSpec(rnd.choice(["rr", "wrr", "sh", "fo"])), dests)
    return out


@pytest.mark.root
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_commands_leave_what_a_full_render_leaves(lab: Lab, seed: int) -> None:
    rnd = random.Random(seed)
    inc, ref = lab.plane(), NftDataplane("hcref", netns=lab.director.name)
    try:
        await inc.replace(_random_table(rnd))
        for _ in range(12):
            now = await inc.snapshot(set())
            want = _random_table(rnd)
            actions = diff(want, now, set(now))
            await inc.apply(want, actions)
            assert inc.rewrites == 1  # only the first load
            await ref.replace(want)
            got = nftlist.listing(lab.director, "hacontrol")  # every table of ours
            assert got == nftlist.listing(lab.director, "hcref")
            tables = nftlist.expected("hacontrol", inc.shards(want))  # come and go with services
            assert nftlist.present(lab.director, "hacontrol") == tables
            assert await inc.snapshot(set()) == want
    finally:
        await inc.remove()
        await ref.remove()
