"""The SNAT table (hacontrol.dataplane.snat) on the real kernel: a real server's own outbound
connection leaves the director with the VIP as its source while the node is active, and not once
it is backup; with the nftables data plane's table present too, the SNAT wins over its masquerade.

    rs (198.51.100.2/24, default via .1)
      | eth0 -- in0
    director (198.51.100.1/24 | 203.0.113.1/24 + VIP 203.0.113.10 on out0; forwarding)
      | out0 -- eth0
    outside (203.0.113.2/24, route back to 198.51.100.0/24 via the director) running
    hacontrol.lab.whoami on :9000, which answers each connection with the source it saw.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from hacontrol.dataplane.nft import NftDataplane
from hacontrol.dataplane.snat import SnatTable
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp
from hacontrol.model import NatConfig, SnatRule

pytestmark = pytest.mark.root

RS, GW = "198.51.100.2", "198.51.100.1"
DIR_OUT, VIP, OUTSIDE = "203.0.113.1", "203.0.113.10", "203.0.113.2"
WHOAMI = f"{OUTSIDE}:9000"
NAT = NatConfig(
    snat=(SnatRule(ipaddress.ip_network("198.51.100.0/24"), ipaddress.ip_address(VIP)),)
)


@dataclass
class Topo:
    rs: Ns
    director: Ns
    outside: Ns

    def source_seen(self) -> str:
        """The source address the outside saw for a new connection from the real server."""
        r = self.rs.run(sys.executable, "-m", "hacontrol.lab.whoami", "--ask", WHOAMI, check=False)
        assert r.returncode == 0, f"the real server could not reach the outside: {r.stderr}"
        return r.stdout.strip()

    def tables(self) -> str:
        return self.director.run("nft", "list", "tables").stdout


@pytest.fixture(scope="module")
def topo() -> Iterator[Topo]:
    with NetnsLab() as lab:
        rs, d, out = lab.add("rs"), lab.add("dir", forward=True), lab.add("out")
        lab.link(rs, "eth0", d, "in0")
        lab.link(d, "out0", out, "eth0")
        rs.addr("eth0", f"{RS}/24")
        rs.route("default", GW)
        d.addr("in0", f"{GW}/24")
        d.addr("out0", f"{DIR_OUT}/24")
        d.addr("out0", f"{VIP}/24")  # secondary: the masquerade keeps picking DIR_OUT
        out.addr("eth0", f"{OUTSIDE}/24")
        out.route("198.51.100.0/24", DIR_OUT)  # so an un-NATed source can be answered too
        out.popen(
            sys.executable, "-m", "hacontrol.lab.whoami", "--listen", WHOAMI,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_tcp(rs, OUTSIDE, 9000)
        yield Topo(rs, d, out)


@pytest.fixture
async def snat(topo: Topo) -> AsyncIterator[SnatTable]:
    table = SnatTable(NAT, netns=topo.director.name)
    try:
        yield table
    finally:
        await table.close()
        assert "hacontrol_nat" not in topo.tables()


async def test_active_snats_to_the_vip_backup_removes_it(topo: Topo, snat: SnatTable) -> None:
    assert topo.source_seen() == RS  # plain routing: the real server's own address
    assert await snat.set_active(True, "test: became master")
    assert "table inet hacontrol_nat" in topo.tables()
    assert topo.source_seen() == VIP
    assert snat.status()["installed"] and snat.status()["error"] is None

    # a flushed table is noticed and repaired on the next resync
    topo.director.run("nft", "delete", "table", "inet", "hacontrol_nat")
    assert topo.source_seen() == RS
    assert await snat.repair()
    assert topo.source_seen() == VIP

    assert await snat.set_active(False, "test: became backup")
    assert "hacontrol_nat" not in topo.tables()
    assert topo.source_seen() == RS
    assert await snat.read() == []


async def test_snat_wins_over_the_nft_planes_masquerade(topo: Topo, snat: SnatTable) -> None:
    plane = NftDataplane(table_name="hcsnattest", netns=topo.director.name)
    await plane.open()
    key = ServiceKey("tcp", VIP, 80)
    service = TableService(ServiceSpec("rr"), {DestKey(RS, 8080): DestSpec(1, "nat")})
    await plane.replace({key: service})
    try:
        # the plane masquerades the real server's own traffic: the outside sees the director
        assert topo.source_seen() == DIR_OUT
        assert await snat.set_active(True, "test: became master")
        assert topo.source_seen() == VIP  # our chain (priority 90) binds first
        assert await snat.set_active(False, "test: became backup")
        assert topo.source_seen() == DIR_OUT
        assert await plane.snapshot(set()) == {key: service}  # the plane's table untouched
    finally:
        await plane.remove()
