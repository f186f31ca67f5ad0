"""The heartbeat transport between two network namespaces on a veth: after the nonce handshake
valid heartbeats flow both ways; forged, truncated, oversized, replayed, wrong-version,
self-named and unconfirmed packets sent from a plain UDP socket at the peer's address, and any
packet from another address (foreign), are dropped and counted by reason, and never reach the
receiver's callback."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hacontrol.clock import monotonic
from hacontrol.ha import packet as p
from hacontrol.ha.transport import HaTransport
from hacontrol.lab.netns import LoopThread, NetnsLab, Ns
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint

pytestmark = pytest.mark.root

KEY = b"transport test key"
A_IP, B_IP, PORT = "192.0.2.11", "192.0.2.12", 5405


def udp(ns: Ns, ip: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, port))
        return s

    sock: socket.socket = ns.call(make)
    return sock


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    with NetnsLab() as lab:
        a, b = lab.add("a"), lab.add("b")
        lab.link(a, "eth0", b, "eth0")
        a.addr("eth0", f"{A_IP}/24")
        b.addr("eth0", f"{B_IP}/24")
        yield lab


def transport(
    bind: Endpoint,
    peers: list[Endpoint],
    node: str,
    on_message: Callable[[p.Message, str, float], None] = lambda m, path, now: None,
    *,
    epoch: int = 1,
    metrics: Metrics | None = None,
    guard: p.ReplayGuard | None = None,
    on_learn: Callable[[], None] | None = None,
    nonce: bytes | None = None,
) -> HaTransport:
    """A transport with the test key on the monotonic clock (fresh metrics unless given)."""
    return HaTransport(
        bind,
        peers,
        KEY,
        node=node,
        epoch=epoch,
        metrics=Metrics() if metrics is None else metrics,
        clock=monotonic,
        on_message=on_message,
        on_learn=on_learn,
        guard=guard,
        nonce=nonce,
    )


def ep(ip: str, port: int = PORT) -> Endpoint:
    return Endpoint(ipaddress.ip_address(ip), port)


def hb(node: str) -> p.Message:
    return p.Message(
        type=p.MsgType.HEARTBEAT,
        node=node,
        role=p.WireRole.BACKUP,
        priority=100,
        effective_priority=100,
        epoch=0,
        seq=0,
    )


async def wait_for(cond: Callable[[], bool], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


def rejected(m: Metrics, reason: str) -> float:
    v = m.registry.get_sample_value("hacontrol_ha_heartbeats_rejected_total", {"reason": reason})
    return v or 0.0


async def test_heartbeats_both_ways_and_drops_by_reason(lab: NetnsLab) -> None:
    ma, mb = Metrics(), Metrics()
    got_a: list[tuple[p.Message, str]] = []
    got_b: list[tuple[p.Message, str]] = []
    learned = {"a": 0, "b": 0}

    def learn(side: str) -> Callable[[], None]:
        return lambda: learned.__setitem__(side, learned[side] + 1)

    ta = transport(ep(A_IP), [ep(B_IP)], "dir-a", lambda m, path, now: got_a.append((m, path)),
                   epoch=7, metrics=ma, on_learn=learn("a"))  # fmt: skip
    tb = transport(ep(B_IP), [ep(A_IP)], "dir-b", lambda m, path, now: got_b.append((m, path)),
                   epoch=9, metrics=mb, on_learn=learn("b"))  # fmt: skip
    await ta.open(udp(lab["a"], A_IP, PORT))
    await tb.open(udp(lab["b"], B_IP, PORT))
    lab["a"].addr("eth0", "192.0.2.50/24")  # an address on the segment that is not a peer
    raw = udp(lab["a"], A_IP, 6000)  # the peer's address, another port
    stranger = udp(lab["a"], "192.0.2.50", PORT)
    try:
        # the handshake: a's first packet echoes nobody, so it only teaches b a's nonce; b's
        # answer echoes it (alive at a), and from then on a's packets echo b's nonce
        assert ta.send(hb("dir-a")) == 1
        await wait_for(lambda: tb.dropped["unconfirmed"] == 1 and learned["b"] == 1)
        assert got_b == [] and tb.fresh.echo == ta.nonce
        assert tb.send(hb("dir-b")) == 1
        await wait_for(lambda: len(got_a) == 1 and learned["a"] == 1)
        assert got_a[0][0].echo == ta.nonce and ta.fresh.echo == tb.nonce
        for _ in range(5):
            assert ta.send(hb("dir-a")) == 1
            assert tb.send(hb("dir-b")) == 1
        await wait_for(lambda: len(got_a) == 6 and len(got_b) == 5)
        assert [m.seq for m, _ in got_b] == [2, 3, 4, 5, 6]
        assert {m.epoch for m, _ in got_b} == {7} and {m.echo for m, _ in got_b} == {tb.nonce}
        assert {path for _, path in got_b} == {f"{A_IP}:{PORT}"}
        assert mb.registry.get_sample_value(
            "hacontrol_ha_heartbeats_received_total", {"path": f"{A_IP}:{PORT}"}
        ) == 5  # fmt: skip
        assert ma.registry.get_sample_value(
            "hacontrol_ha_heartbeats_sent_total", {"path": f"{B_IP}:{PORT}"}
        ) == 6  # fmt: skip

        def x(seq: int, echo: bytes = tb.nonce) -> p.Message:  # a third node's, echoing b
            return dataclasses.replace(hb("dir-x"), epoch=1, seq=seq, nonce=b"x" * 8, echo=echo)

        # a genuine-looking packet of dir-a (the test has the key), sent from a's address
        good = p.encode(dataclasses.replace(hb("dir-a"), epoch=7, seq=ta.seq + 30,
                                            nonce=ta.nonce, echo=tb.nonce), KEY)  # fmt: skip
        bad = {
            "bad_mac": p.encode(x(2), b"wrong key"),
            "truncated": good[:50],
            "oversized": good + bytes(1450 - len(good)),
            "bad_version": good[:4] + b"\x01" + good[5:],
            "bad_magic": b"VRRP" + good[4:],
            "self": p.encode(dataclasses.replace(hb("dir-b"), epoch=99, seq=1), KEY),
            "unconfirmed": p.encode(x(3, echo=b"\x05" * 8), KEY),  # echoes a nonce not b's
        }
        raw.sendto(good, (B_IP, PORT))  # accepted once ...
        await wait_for(lambda: len(got_b) == 6)
        raw.sendto(good, (B_IP, PORT))  # ... then a replay
        replay_old = p.encode(dataclasses.replace(hb("dir-a"), epoch=6, seq=100), KEY)
        raw.sendto(replay_old, (B_IP, PORT))  # an older boot epoch of dir-a
        for data in bad.values():
            raw.sendto(data, (B_IP, PORT))
        for data in (good, p.encode(x(4), KEY), b"junk"):  # from a non-peer address
            stranger.sendto(data, (B_IP, PORT))
        expect = {**dict.fromkeys(bad, 1), "unconfirmed": 2, "replayed": 2, "foreign": 3}
        await wait_for(lambda: all(tb.dropped[r] >= n for r, n in expect.items()))
        tb.send(hb("dir-b"))
        ta.send(hb("dir-a"))  # still flowing after the garbage
        await wait_for(lambda: len(got_b) == 7 and len(got_a) == 7)
        assert {r: n for r, n in tb.dropped.items() if n} == expect
        for reason, n in expect.items():
            assert rejected(mb, reason) == n
        assert len(got_b) == 7 and all(m.node == "dir-a" for m, _ in got_b)
        assert got_b[-1][0].node == "dir-a" and tb.fresh.echo == ta.nonce
        assert sum(ta.dropped.values()) == 0
    finally:
        raw.close()
        stranger.close()
        ta.close()
        tb.close()


async def test_ipv6_heartbeats(lab: NetnsLab) -> None:
    a6, b6 = "2001:db8::11", "2001:db8::12"
    lab["a"].addr("eth0", f"{a6}/64")
    lab["b"].addr("eth0", f"{b6}/64")

    def udp6(ns: Ns, ip: str) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.bind((ip, PORT))
            return s

        sock: socket.socket = ns.call(make)
        return sock

    got: list[str] = []
    ta = transport(ep(a6), [ep(b6)], "dir-a")
    tb = transport(ep(b6), [ep(a6)], "dir-b", lambda m, path, now: got.append(path))
    await ta.open(udp6(lab["a"], a6))
    await tb.open(udp6(lab["b"], b6))
    try:
        ta.send(hb("dir-a"))  # teaches b a's nonce; b's answer teaches a b's
        await wait_for(lambda: tb.fresh.echo == ta.nonce)
        tb.send(hb("dir-b"))
        await wait_for(lambda: ta.fresh.echo == tb.nonce)
        for _ in range(3):
            ta.send(hb("dir-a"))
        await wait_for(lambda: len(got) == 3)
        assert set(got) == {f"[{a6}]:{PORT}"} and tb.dropped["unconfirmed"] == 1
    finally:
        ta.close()
        tb.close()


def test_mixed_families_refused() -> None:
    with pytest.raises(ValueError, match="address families"):
        transport(ep(A_IP), [ep("2001:db8::12")], "a")


async def test_two_paths_reordered_are_all_accepted(lab: NetnsLab) -> None:
    """Copies sent to two paths (here: two ports of the peer) each carry their own sequence
    number, so neither is taken for a replay."""
    mb1, mb2, ma = Metrics(), Metrics(), Metrics()
    got: list[int] = []
    guard = p.ReplayGuard()
    b_nonce = bytes.fromhex("b0b1b2b3b4b5b6b7")  # one node b, listening on two ports
    tb1, tb2 = (
        transport(ep(B_IP, port), [ep(A_IP)], "dir-b", lambda m, path, now: got.append(m.seq),
                  metrics=m, guard=guard, nonce=b_nonce)
        for port, m in ((PORT, mb1), (PORT + 1, mb2))
    )  # fmt: skip
    ta = transport(ep(A_IP), [ep(B_IP), ep(B_IP, PORT + 1)], "dir-a", epoch=3, metrics=ma)
    await tb1.open(udp(lab["b"], B_IP, PORT))
    await tb2.open(udp(lab["b"], B_IP, PORT + 1))
    await ta.open(udp(lab["a"], A_IP, PORT))
    try:
        tb1.send(hb("dir-b"))  # a learns b's nonce
        await wait_for(lambda: ta.fresh.echo == b_nonce)
        for _ in range(20):
            assert ta.send(hb("dir-a")) == 2
        await wait_for(lambda: len(got) == 40)
        assert sorted(got) == list(range(1, 41))
        assert sum(tb1.dropped.values()) + sum(tb2.dropped.values()) == 0
    finally:
        for t in (ta, tb1, tb2):
            t.close()


# -- the runner over this transport and the real VIP group, one namespace per director ---------


VIP = "192.0.2.100"


def vip_holders(lab: NetnsLab) -> set[str]:
    return {n for n in ("a", "b") if f"{VIP}/24" in lab[n].ip("-4", "addr", "show", "eth0").stdout}


def mac_of(ns: Ns) -> str:
    return ns.ip("-br", "link", "show", "eth0").stdout.split()[2]


def client_neigh(ns: Ns) -> str | None:
    """The client's neighbour entry for the VIP, read with pyroute2 inside its namespace."""
    from pyroute2 import IPRoute

    def read() -> str | None:
        with IPRoute() as ipr:
            for n in ipr.get_neighbours(dst=VIP):
                mac = n.get_attr("NDA_LLADDR")
                if mac:
                    return str(mac)
        return None

    found: str | None = ns.call(read)
    return found


def touch_vip(ns: Ns) -> None:
    """One UDP datagram to the VIP from ``ns``: makes its kernel resolve the VIP's MAC."""

    def send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"hello", (VIP, 9))

    ns.call(send)


def wait_sync(cond: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@pytest.fixture
def cluster() -> Iterator[NetnsLab]:
    with NetnsLab() as lab:
        sw = lab.add("sw")
        lab.bridge(sw, "br0")
        for n, ip in (("a", A_IP), ("b", B_IP), ("c", "192.0.2.50")):
            ns = lab.add(n)
            lab.attach(sw, "br0", ns, "eth0", f"p{n}")
            ns.addr("eth0", f"{ip}/24")
        yield lab


def test_runner_pair_moves_the_vip_and_the_clients_neighbour(
    cluster: NetnsLab, tmp_path: Path
) -> None:
    from hacontrol.ha.notify import CommandNotifier
    from hacontrol.ha.runner import HaRunner
    from hacontrol.ha.vip import VipGroup
    from hacontrol.model import AnnounceConfig, HAConfig, VipConfig

    lab = cluster
    vips = (VipConfig(ipaddress.ip_interface(f"{VIP}/24"), "eth0"),)
    announce = AnnounceConfig(count=3, interval=0.02, refresh=0)
    loops = {n: LoopThread(lab[n]) for n in ("a", "b")}
    runners: dict[str, HaRunner] = {}
    ips = {"a": A_IP, "b": B_IP}
    for n, prio in (("a", 150), ("b", 100)):
        cfg = HAConfig(
            bind=ep(ips[n]), peers=(ep(ips["b" if n == "a" else "a"]),), secret_file="-",
            priority=prio, preempt=False, interval=0.1, dead_after=3, vips=vips,
            announce=announce, lease=1.0,
        )  # fmt: skip

        async def make(cfg: HAConfig = cfg, n: str = n) -> HaRunner:
            r = HaRunner(
                cfg, f"dir-{n}", KEY, clock=monotonic, metrics=Metrics(),
                vips=VipGroup(vips, announce, Metrics()), notifier=CommandNotifier((), node=n),
                health_summary=lambda: [("web", 1, 1)], digest="cd" * 32,
                state_dir=str(tmp_path / n),
            )  # fmt: skip
            await r.start()
            return r

        runners[n] = loops[n].run(make())
    try:
        a, b = runners["a"], runners["b"]
        wait_sync(lambda: (a.role, b.role) == ("active", "backup") and vip_holders(lab) == {"a"})
        touch_vip(lab["c"])  # the client resolves the VIP's MAC
        wait_sync(lambda: client_neigh(lab["c"]) == mac_of(lab["a"]), within=5)

        tl = loops["a"].run(a.drill_handover())  # planned: make before break
        assert tl["ok"] and tl["gap"] == 0.0, tl
        assert (a.role, b.role) == ("backup", "active") and vip_holders(lab) == {"b"}
        wait_sync(lambda: client_neigh(lab["c"]) == mac_of(lab["b"]))

        tl = loops["b"].run(b.drill_fault(1.0))  # unplanned: b goes dark, a detects and takes
        assert tl["ok"] and 0.2 <= tl["detection"] <= 0.6 and tl["gap"] < 0.7, tl
        assert a.role == "active" and "a" in vip_holders(lab)
        wait_sync(lambda: client_neigh(lab["c"]) == mac_of(lab["a"]))
        wait_sync(lambda: b.role == "backup" and vip_holders(lab) == {"a"})

        loops["a"].run(a.stop(graceful=False))  # like kill -9: the lease removes a's VIP
        t0 = time.monotonic()
        wait_sync(lambda: vip_holders(lab) == {"b"}, within=5)
        assert b.role == "active"
        wait_sync(lambda: "a" not in vip_holders(lab), within=5)
        assert time.monotonic() - t0 < 3.0
        wait_sync(lambda: client_neigh(lab["c"]) == mac_of(lab["b"]))
    finally:
        for n, r in runners.items():
            with contextlib.suppress(Exception):
                loops[n].run(r.stop(graceful=False))
        for lp in loops.values():
            lp.close()
