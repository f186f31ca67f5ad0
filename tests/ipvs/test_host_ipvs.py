"""SNAT of a real server's own traffic following the active director, over a failover (the
qemu guest; each director is a network namespace with its own IPVS table):

    outside (203.0.113.2: whoami :9000)      -- bridge "bo" --  d1 o0 203.0.113.11 | d2 o0 .12
    rs (198.51.100.2, gw 198.51.100.1: :8080) -- bridge "bi" --  d1 i0 198.51.100.11 | d2 i0 .12
    the active director holds VIP 203.0.113.10 (o0) and the real server's gateway 198.51.100.1
    (i0); both directors hold the IPVS NAT service 203.0.113.10:80 -> 198.51.100.2:8080.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from ipvslab import wait_for

from hacontrol.config import loads
from hacontrol.dataplane.snat import SnatTable
from hacontrol.host.sysctl import host_check, read_sysctl
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp

pytestmark = pytest.mark.ipvs

VIP, GW = "203.0.113.10", "198.51.100.1"
RS, OUTSIDE = "198.51.100.2", "203.0.113.2"
CONFIG = f"""\
node: {{name: d}}
dataplane: ipvs
host: {{set_sysctls: true}}
services:
  - {{name: web, vip: {VIP}, port: 80, scheduler: rr, forwarding: nat,
     real_servers: [{{address: {RS}, port: 8080}}]}}
nat:
  snat: [{{source: 198.51.100.0/24, to: {VIP}}}]
"""
HTTP_GET = (
    "import sys, urllib.request\n"
    "print(urllib.request.urlopen(f'http://{sys.argv[1]}/', timeout=5).read().decode().strip())"
)


@dataclass
class Pair:
    outside: Ns
    rs: Ns
    directors: list[Ns]

    def own_source(self) -> str:
        """The source address the outside saw for the real server's own new connection."""
        r = self.rs.run(
            sys.executable, "-m", "hacontrol.lab.whoami", "--ask", f"{OUTSIDE}:9000", check=False
        )
        assert r.returncode == 0, f"the real server could not reach the outside: {r.stderr}"
        return r.stdout.strip()

    def get(self, ns: Ns, *, must: bool = True) -> str:
        """An HTTP GET of the VIP service from ``ns`` (through IPVS on the active director);
        with ``must=False`` a failure is an empty answer."""
        r = ns.run(sys.executable, "-c", HTTP_GET, VIP, check=False)
        assert r.returncode == 0 or not must, f"GET {VIP} from {ns.name}: {r.stderr[-300:]}"
        return r.stdout.strip() if r.returncode == 0 else ""

    def hold(self, d: Ns, on: bool) -> None:
        """Add (or remove) the VIP and the gateway address on ``d``; neighbours forget the old
        holder (the HA runner's gratuitous ARP does this in the daemon)."""
        op = "add" if on else "del"
        d.ip("addr", op, f"{VIP}/24", "dev", "o0")
        d.ip("addr", op, f"{GW}/24", "dev", "i0")
        if on:
            for ns in (self.outside, self.rs):
                ns.ip("neigh", "flush", "all")

    def tables(self, d: Ns) -> str:
        return d.run("nft", "list", "tables").stdout


@pytest.fixture
def pair(clean_ipvs: None) -> Iterator[Pair]:
    with NetnsLab() as lab:
        sw, out, rs = lab.add("sw"), lab.add("out"), lab.add("rs")
        d1, d2 = lab.add("d1", forward=True), lab.add("d2", forward=True)
        lab.bridge(sw, "bo")
        lab.bridge(sw, "bi")
        lab.attach(sw, "bo", out, "eth0", "po")
        lab.attach(sw, "bi", rs, "eth0", "pr")
        out.addr("eth0", f"{OUTSIDE}/24")
        rs.addr("eth0", f"{RS}/24")
        rs.route("default", GW)
        for i, d in enumerate((d1, d2), start=1):
            lab.attach(sw, "bo", d, "o0", f"po{i}")
            lab.attach(sw, "bi", d, "i0", f"pi{i}")
            d.addr("o0", f"203.0.113.{10 + i}/24")
            d.addr("i0", f"198.51.100.{10 + i}/24")
            d.run("ipvsadm", "-A", "-t", f"{VIP}:80", "-s", "rr")
            d.run("ipvsadm", "-a", "-t", f"{VIP}:80", "-r", f"{RS}:8080", "-m")
        out.popen(
            sys.executable, "-m", "hacontrol.lab.whoami", "--listen", f"{OUTSIDE}:9000",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        rs.popen(
            sys.executable, "-m", "hacontrol.lab.backend", "--listen", f"{RS}:8080", "--name", "rs",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_tcp(rs, RS, 8080)
        yield Pair(out, rs, [d1, d2])


@pytest.fixture
async def snats(pair: Pair) -> AsyncIterator[list[SnatTable]]:
    cfg = loads(CONFIG)
    made = [SnatTable(cfg.nat, netns=d.name) for d in pair.directors]
    try:
        yield made
    finally:
        for t in made:
            await t.close()


async def test_snat_follows_the_active_director_over_a_failover(
    pair: Pair, snats: list[SnatTable]
) -> None:
    d1, d2 = pair.directors
    s1, s2 = snats
    pair.hold(d1, True)
    assert await s1.set_active(True, "test: d1 master") and await s2.set_active(False, "backup")
    wait_tcp(pair.outside, VIP, 80)
    # IPVS left at its default (vs.conntrack=0): the real server's own traffic is SNATed anyway
    assert d1.call(lambda: read_sysctl("net.ipv4.vs.conntrack")) == "0"
    assert pair.own_source() == VIP
    assert pair.get(pair.outside) == "rs"  # the IPVS NAT service works beside the SNAT

    # the daemon's host check sets what the config needs: vs.conntrack=1 for the hairpin
    cfg = loads(CONFIG)
    for d in (d1, d2):
        checks = d.call(lambda: host_check(cfg, "ipvs"))
        print(d.name, [c.as_dict() for c in checks])
        assert all(c.ok for c in checks) and {c.key for c in checks} == {
            "net.ipv4.ip_forward",
            "net.ipv4.vs.conntrack",
        }
    assert pair.get(pair.rs) == "rs"  # the real server reaching its own VIP service (hairpin)
    assert pair.own_source() == VIP

    # failover: d1 lets go (backup first, so the SNAT never names an address not held)
    assert await s1.set_active(False, "test: d1 backup")
    pair.hold(d1, False)
    pair.hold(d2, True)
    assert await s2.set_active(True, "test: d2 master")
    assert "hacontrol_nat" not in pair.tables(d1) and "hacontrol_nat" in pair.tables(d2)
    wait_for(lambda: pair.get(pair.outside, must=False) == "rs", 15, "the service through d2")
    assert pair.own_source() == VIP
    assert pair.get(pair.rs) == "rs"
    print("d2 ipvs:", d2.run("ipvsadm", "-Ln").stdout)
