"""The IPVS connection sync daemons through the plane (in the guest), and two directors syncing.

``SyncDaemons`` (hacontrol.dataplane.ipvs_sync) programs the master and backup sync daemons over
the plane's own netlink socket; what runs is read back twice: ``ipvsadm -L --daemon`` (parsed
here, independently of our codec) and the plane's GET_DAEMON decode. Each director is a network
namespace of the guest (each netns has its own IPVS table and sync daemons): a connection a
client makes through director 1 must appear in director 2's connection table (``ipvsadm -Lnc``)
with the same client address and port, learned from director 1's master daemon by director 2's
backup daemon, as the peer of an HA pair needs when the VIPs move.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from ipvslab import wait_for

from hacontrol.config import loads
from hacontrol.daemon_ha import start_sync
from hacontrol.dataplane.ipvs import IpvsDataplane
from hacontrol.dataplane.ipvs_sync import SyncDaemon, SyncDaemons
from hacontrol.lab.netns import NetnsLab, Ns
from hacontrol.model import SyncConfig

pytestmark = pytest.mark.ipvs

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
VIP = "198.51.100.10"
_DAEMON = re.compile(r"^(master|backup) sync daemon \(mcast=([^,]+), syncid=(\d+)(.*)\)\s*$")


@contextlib.contextmanager
def in_netns(ns: Ns) -> Iterator[None]:
    """Run this thread in ``ns`` for the block (sockets made inside stay in ``ns``)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns.name}")
        try:
            yield
        finally:
            if _libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")
    finally:
        os.close(target)
        os.close(home)


async def open_plane(ns: Ns) -> IpvsDataplane:
    """An IpvsDataplane whose netlink socket lives in ``ns`` (its own IPVS table)."""
    plane = IpvsDataplane()
    with in_netns(ns):
        await plane.open()
    return plane


def ipvsadm_daemons(ns: Ns) -> list[SyncDaemon]:
    """``ipvsadm -L --daemon`` in ``ns``, parsed (multicast details when ipvsadm prints them)."""
    out = []
    for line in ns.run("ipvsadm", "-L", "--daemon").stdout.splitlines():
        m = _DAEMON.match(line.strip())
        assert m, f"unexpected ipvsadm --daemon line {line!r}"
        extra = dict(re.findall(r"(\w+)=([^,\s]+)", m.group(4)))
        out.append(
            SyncDaemon(
                m.group(1),  # type: ignore[arg-type]
                m.group(2),
                int(m.group(3)),
                maxlen=int(extra["maxlen"]) if "maxlen" in extra else None,
                group=extra.get("group"),
                port=int(extra["port"]) if "port" in extra else None,
                ttl=int(extra["ttl"]) if "ttl" in extra else None,
            )
        )
    return sorted(out, key=lambda d: d.state)


def full(ds: list[SyncDaemon]) -> list[tuple[object, ...]]:
    """Every field, multicast details included (equality ignores them)."""
    return sorted((d.state, d.interface, d.syncid, d.maxlen, d.group, d.port, d.ttl) for d in ds)


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    with NetnsLab() as lab:
        yield lab


@pytest.fixture
async def planes() -> AsyncIterator[list[IpvsDataplane]]:
    """Planes to close before the namespaces go (their sockets keep a netns alive)."""
    opened: list[IpvsDataplane] = []
    try:
        yield opened
    finally:
        for p in opened:
            await p.close()


@pytest.fixture
async def syncs() -> AsyncIterator[list[SyncDaemons]]:
    """Sync managers whose periodic re-check must end before the loop does."""
    made: list[SyncDaemons] = []
    try:
        yield made
    finally:
        for s in made:
            await s.close(keep=True)


async def test_sync_daemons_started_read_back_repaired_replaced_stopped(
    lab: NetnsLab, planes: list[IpvsDataplane]
) -> None:
    ns = lab.add("sd")
    ns.ip("link", "add", "sync0", "type", "dummy")
    ns.ip("link", "set", "sync0", "multicast", "on")
    ns.addr("sync0", "192.0.2.129/25")
    ns.up("sync0")
    plane = await open_plane(ns)
    planes.append(plane)
    assert ipvsadm_daemons(ns) == []

    # a missing interface is an error value (the kernel refuses it), not an exception
    missing = SyncDaemons(plane, SyncConfig("nosuch0", 7), clock=lambda: 0.0)
    assert not await missing.reconcile("start")
    assert missing.error is not None and "nosuch0" in missing.error
    print("missing interface:", missing.error)
    assert ipvsadm_daemons(ns) == [] and not missing.status(0.0)["ok"]

    sync = SyncDaemons(plane, SyncConfig("sync0", 7), clock=lambda: 0.0)
    assert await sync.reconcile("start"), sync.error
    want = [SyncDaemon("backup", "sync0", 7), SyncDaemon("master", "sync0", 7)]
    by_ipvsadm = ipvsadm_daemons(ns)
    by_plane = sorted(await sync.read(), key=lambda d: d.state)
    assert by_ipvsadm == want and by_plane == want
    print("ipvsadm:", full(by_ipvsadm), "\nplane:  ", full(by_plane))
    for ours, theirs in zip(by_plane, by_ipvsadm, strict=True):  # details ipvsadm prints
        for attr in ("maxlen", "group", "port", "ttl"):
            if getattr(theirs, attr) is not None:
                assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert by_plane[0].group == "224.0.0.81" and by_plane[0].port == 8848
    assert sync.status(0.0)["ok"] and len(sync.status(0.0)["daemons"]) == 2

    # nothing to do when everything runs; a daemon stopped by hand is started again
    assert sync.changes == 2 and await sync.reconcile("resync") and sync.changes == 2
    ns.run("ipvsadm", "--stop-daemon", "backup")
    assert ipvsadm_daemons(ns) == [SyncDaemon("master", "sync0", 7)]
    assert await sync.reconcile("resync") and sync.changes == 3
    assert ipvsadm_daemons(ns) == want

    # another syncid in the config: both replaced
    other = SyncDaemons(plane, SyncConfig("sync0", 9), clock=lambda: 0.0)
    assert await other.reconcile("start"), other.error
    assert ipvsadm_daemons(ns) == [
        SyncDaemon("backup", "sync0", 9),
        SyncDaemon("master", "sync0", 9),
    ]

    # keep: left running (like the table); not keep: both stopped
    await other.close(keep=True)
    assert len(ipvsadm_daemons(ns)) == 2
    await other.close(keep=False)
    assert ipvsadm_daemons(ns) == [] and await other.read() == []


def conns(ns: Ns) -> list[tuple[str, str, str, str]]:
    """``ipvsadm -Lnc`` in ``ns``: (state, source, virtual, destination) per entry."""
    out = []
    for line in ns.run("ipvsadm", "-Lnc").stdout.splitlines()[2:]:
        f = line.split()
        if len(f) >= 6:
            out.append((f[2], f[3], f[4], f[5]))
    return out


PAIR = """\
node: {{name: d}}
dataplane: ipvs
ha:
  bind: "192.0.2.129:5405"
  peers: ["192.0.2.130:5405"]
  secret_file: /nonexistent/key
  sync: {{interface: {ifname}, syncid: 1}}
"""


async def test_connection_through_director1_appears_on_director2(
    lab: NetnsLab, planes: list[IpvsDataplane], syncs: list[SyncDaemons]
) -> None:
    cl, d1, d2, be = lab.add("cl"), lab.add("d1", forward=True), lab.add("d2"), lab.add("be")
    lab.link(cl, "c0", d1, "c1")
    lab.link(be, "b0", d1, "b1")
    lab.link(d1, "s1", d2, "s2")  # the pair's inside / heartbeat link
    cl.addr("c0", "203.0.113.2/24")
    cl.route("default", "203.0.113.1")
    d1.addr("c1", "203.0.113.1/24")
    d1.addr("b1", "192.0.2.1/30")
    be.addr("b0", "192.0.2.2/30")
    be.route("default", "192.0.2.1")  # NAT: replies go back through the director
    d1.addr("s1", "192.0.2.129/25")
    d2.addr("s2", "192.0.2.130/25")
    d1.addr("lo", f"{VIP}/32")
    for d in (d1, d2):  # both directors hold the table; only the VIP moves in a pair
        d.run("ipvsadm", "-A", "-t", f"{VIP}:80", "-s", "rr")
        d.run("ipvsadm", "-a", "-t", f"{VIP}:80", "-r", "192.0.2.2:8080", "-m")

    # BOTH a master and a backup on each director, same syncid, started as the daemon does
    # (hacontrol.daemon_ha.start_sync from an ``ha.sync`` config) through the plane
    for d, ifname in ((d1, "s1"), (d2, "s2")):
        plane = await open_plane(d)
        planes.append(plane)
        cfg = loads(PAIR.format(ifname=ifname), check_files=False)
        sync = await start_sync(cfg, plane, lambda: 0.0)
        assert sync is not None
        syncs.append(sync)
        assert sync.status(0.0)["ok"], sync.error
        assert [x.state for x in ipvsadm_daemons(d)] == ["backup", "master"]

    # a real server that accepts and waits for a request line: the connection stays open
    be.popen(
        sys.executable, "-m", "http.server", "8080", "--bind", "192.0.2.2",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    probe = "exec 3<>/dev/tcp/192.0.2.2/8080"
    wait_for(lambda: be.run("bash", "-c", probe, check=False).returncode == 0, 30, "real server")
    # the client connects through d1 and sends three 1-byte segments: with the default
    # sync_threshold (3) the third packet of an ESTABLISHED connection is synced
    script = (
        f"exec 3<>/dev/tcp/{VIP}/80 || exit 1; "
        "for c in G E T; do printf %s $c >&3; sleep 0.3; done; sleep 60"
    )
    client = cl.popen("bash", "-c", script)
    on_d1 = wait_for(
        lambda: [c for c in conns(d1) if c[1].startswith("203.0.113.2:") and c[0] == "ESTABLISHED"],
        15, "the client's connection on director 1", every=0.3,
    )  # fmt: skip
    source = on_d1[0][1]
    seen_on_d1 = time.monotonic()
    assert on_d1[0][2:] == (f"{VIP}:80", "192.0.2.2:8080")
    on_d2 = wait_for(
        lambda: [c for c in conns(d2) if c[1] == source], 15, "the connection synced to d2", 0.3
    )
    print("d1:", on_d1, "\nd2:", on_d2, f"\nsynced within {time.monotonic() - seen_on_d1:.1f}s")
    assert on_d2[0][2:] == (f"{VIP}:80", "192.0.2.2:8080")
    assert on_d2[0][0] == "ESTABLISHED"
    assert client.poll() is None  # the connection was still open all along
