"""VipGroup and the announcer on a real kernel, in namespaces.

The daemon runs inside its director's namespace, so the code under test runs in a small script
started inside the namespace (``DRIVER``); the test inspects from outside with ``ip`` and reads
the client's neighbour table with pyroute2 inside the client namespace.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from hacontrol.lab.netns import NetnsLab, Ns

pytestmark = pytest.mark.root

# Runs inside a director namespace: argv = op, vips (json [[cidr, ifname]...]), options (json).
DRIVER = r"""
import asyncio, ipaddress, json, sys, time
from hacontrol.ha.vip import VipGroup
from hacontrol.metrics import Metrics
from hacontrol.model import AnnounceConfig, VipConfig

op = sys.argv[1]
vips = [VipConfig(ipaddress.ip_interface(a), i) for a, i in json.loads(sys.argv[2])]
opt = json.loads(sys.argv[3])

async def main():
    m = Metrics()
    g = VipGroup(vips, AnnounceConfig(count=opt.get("count", 3), interval=0.05, refresh=0), m)
    out = {}
    try:
        if op == "take":
            await g.take(opt.get("lease"))
            out["present"] = await g.present()
            if opt.get("announce"):
                out["sent"] = await g.announce()
                out["metric"] = {
                    f: m.announcements.labels(family=f)._value.get() for f in ("ipv4", "ipv6")
                }
        elif op == "hold":  # take, renew every `every` s for `seconds` s
            await g.take(opt["lease"])
            end = time.monotonic() + opt["seconds"]
            while time.monotonic() < end:
                await asyncio.sleep(opt["every"])
                await g.renew(opt["lease"])
            out["present"] = await g.present()
        elif op == "release":
            await g.release()
            out["present"] = await g.present()
        elif op == "present":
            out["present"] = await g.present()
            out["configured"] = {str(v.address): left for v, left in (await g.configured()).items()}
            out["describe"] = g.describe()
    finally:
        await g.close()
    print(json.dumps(out))

if opt.get("uvloop"):  # the daemon's loop: pyroute2's AsyncIPRoute would not run there
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""

NEIGH = r"""
import json, sys
from pyroute2 import IPRoute
with IPRoute() as ipr:
    out = [
        {"lladdr": n.get("NDA_LLADDR"), "state": n["state"]}
        for n in ipr.get_neighbours(dst=sys.argv[1])
    ]
print(json.dumps(out))
"""

POKE = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.socket(fam, socket.SOCK_DGRAM) as s:
    s.sendto(b"x", (sys.argv[1], 9))
"""

V4 = "198.51.100.10/24"
V6 = "2001:db8:100::10/64"


def drive(ns: Ns, op: str, vips: list[tuple[str, str]], **opt: object) -> dict[str, object]:
    r = ns.run(sys.executable, "-c", DRIVER, op, json.dumps(vips), json.dumps(opt), check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def has_addr(ns: Ns, ifname: str, cidr: str) -> bool:
    r = ns.ip("-j", "addr", "show", "dev", ifname)
    ip, plen = cidr.split("/")
    for link in json.loads(r.stdout):
        for a in link.get("addr_info", []):
            if a.get("local") == ip and str(a.get("prefixlen")) == plen:
                return True
    return False


def addr_info(ns: Ns, ifname: str, cidr: str) -> dict[str, object]:
    ip = cidr.split("/")[0]
    for link in json.loads(ns.ip("-j", "addr", "show", "dev", ifname).stdout):
        for a in link.get("addr_info", []):
            if a.get("local") == ip:
                return dict(a)
    raise AssertionError(f"{cidr} not on {ifname}")


def mac_of(ns: Ns, ifname: str) -> str:
    return str(json.loads(ns.ip("-j", "link", "show", "dev", ifname).stdout)[0]["address"])


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Pair:
    a: Ns
    b: Ns
    client: Ns


@pytest.fixture
def lan(netns_lab: NetnsLab) -> Iterator[Pair]:
    """Directors a, b and a client on one bridge (198.51.100.0/24, 2001:db8:100::/64)."""
    lab = netns_lab
    sw = lab.add("sw")
    lab.bridge(sw, "br0")
    nodes = {}
    for i, name in ((11, "a"), (12, "b"), (100, "c")):
        ns = lab.add(name)
        lab.attach(sw, "br0", ns, "eth0", f"p{name}")
        ns.addr("eth0", f"198.51.100.{i}/24")
        ns.addr("eth0", f"2001:db8:100::{i}/64")
        nodes[name] = ns
    yield Pair(nodes["a"], nodes["b"], nodes["c"])


@pytest.mark.parametrize("cidr", [V4, V6])
def test_lease_not_renewed_is_removed_by_the_kernel(lan: Pair, cidr: str) -> None:
    out = drive(lan.a, "take", [(cidr, "eth0")], lease=2)
    assert out["present"] is True
    info = addr_info(lan.a, "eth0", cidr)
    assert 0 < int(str(info["valid_life_time"])) <= 2
    assert 0 < int(str(info["preferred_life_time"])) <= 2
    if ":" in cidr:
        assert info.get("nodad") is True
    gone_after = wait_until(lambda: not has_addr(lan.a, "eth0", cidr), 10, f"{cidr} to expire")
    assert gone_after > 0.5  # it was there, then the kernel removed it
    assert drive(lan.a, "present", [(cidr, "eth0")])["present"] is False


@pytest.mark.parametrize("cidr", [V4, V6])
def test_renewed_lease_keeps_the_vip(lan: Pair, cidr: str) -> None:
    proc = lan.a.popen(
        sys.executable,
        "-c",
        DRIVER,
        "hold",
        json.dumps([(cidr, "eth0")]),
        json.dumps({"lease": 2, "seconds": 5, "every": 0.5}),
    )
    try:
        wait_until(lambda: has_addr(lan.a, "eth0", cidr), 10, f"{cidr} to appear")
        start = time.monotonic()
        # well past the 2 s lease, it must have stayed the whole time
        while time.monotonic() - start < 4:
            assert has_addr(lan.a, "eth0", cidr), "renewed VIP vanished"
            time.sleep(0.2)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # no more renewals: the kernel removes it within the lease
    wait_until(lambda: not has_addr(lan.a, "eth0", cidr), 10, f"{cidr} to expire")


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_take_release_present_idempotent(lan: Pair, uvloop: bool) -> None:
    vips = [(V4, "eth0"), (V6, "eth0")]
    assert drive(lan.a, "present", vips, uvloop=uvloop)["present"] is False
    assert drive(lan.a, "take", vips, lease=None, uvloop=uvloop)["present"] is True
    assert drive(lan.a, "take", vips, lease=None, uvloop=uvloop)["present"] is True  # idempotent
    assert addr_info(lan.a, "eth0", V4)["valid_life_time"] == 4294967295
    out = drive(lan.a, "present", vips)
    assert out["configured"] == {V4: None, V6: None}
    assert all(d["present"] for d in out["describe"])  # type: ignore[attr-defined]
    # adopting: take with a lease turns the forever address into a leased one
    drive(lan.a, "take", vips, lease=30)
    assert 0 < int(str(addr_info(lan.a, "eth0", V4)["valid_life_time"])) <= 30
    out = drive(lan.a, "release", vips, uvloop=uvloop)
    assert out["present"] is False
    assert not has_addr(lan.a, "eth0", V4) and not has_addr(lan.a, "eth0", V6)
    assert drive(lan.a, "release", vips)["present"] is False  # nothing held: no-op
    # the director's own addresses are untouched
    assert has_addr(lan.a, "eth0", "198.51.100.11/24")


def test_missing_interface_is_a_typed_error(lan: Pair) -> None:
    r = lan.a.run(
        sys.executable, "-c", DRIVER, "take", json.dumps([(V4, "nope0")]), "{}", check=False
    )
    assert r.returncode != 0
    assert "HaIoError" in r.stderr and "interface nope0 not found" in r.stderr


def neighbour(client: Ns, ip: str) -> list[dict[str, object]]:
    r = client.run(sys.executable, "-c", NEIGH, ip)
    out: list[dict[str, object]] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("cidr", [V4, V6])
def test_announce_moves_the_clients_neighbour_entry(lan: Pair, cidr: str, uvloop: bool) -> None:
    ip = cidr.split("/")[0]
    mac_a, mac_b = mac_of(lan.a, "eth0"), mac_of(lan.b, "eth0")
    assert mac_a != mac_b
    drive(lan.a, "take", [(cidr, "eth0")], lease=None)
    # the client talks to the VIP: its neighbour entry learns A's MAC
    lan.client.run(sys.executable, "-c", POKE, ip)
    wait_until(
        lambda: any(n["lladdr"] == mac_a for n in neighbour(lan.client, ip)),
        10,
        "client to resolve the VIP to A",
    )
    # A dies silently (its VIP gone, nothing sent); B takes the VIP and announces
    drive(lan.a, "release", [(cidr, "eth0")])
    out = drive(lan.b, "take", [(cidr, "eth0")], lease=None, announce=True, count=3, uvloop=uvloop)
    fam = "ipv6" if ":" in cidr else "ipv4"
    assert out["sent"] == 3
    assert out["metric"] == {
        "ipv4": 3.0 if fam == "ipv4" else 0.0,
        "ipv6": 3.0 if fam == "ipv6" else 0.0,
    }
    wait_until(
        lambda: [n["lladdr"] for n in neighbour(lan.client, ip)] == [mac_b],
        5,
        "client's neighbour entry to hold B's MAC",
    )
