"""The heartbeat transport between two network namespaces on a veth: valid heartbeats flow both
ways; forged, truncated, oversized, replayed, wrong-version and self-named packets sent from a raw
UDP socket are dropped and counted by reason, and never reach the receiver's callback."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import ipaddress
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hacontrol.clock import monotonic
from hacontrol.ha import packet as p
from hacontrol.ha.transport import HaTransport
from hacontrol.lab.netns import NetnsLab, Ns
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint

pytestmark = pytest.mark.root

KEY = b"transport test key"
A_IP, B_IP, PORT = "192.0.2.11", "192.0.2.12", 5405
CLONE_NEWNET = 0x40000000


def in_netns(ns: Ns, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread that has entered ``ns``'s network namespace (sockets made there
    stay there)."""
    out: dict[str, Any] = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["v"] = fn()
        except BaseException as e:  # re-raised in the caller
            out["e"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


def udp(ns: Ns, ip: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((ip, port))
        return s

    sock: socket.socket = in_netns(ns, make)
    return sock


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    with NetnsLab() as lab:
        a, b = lab.add("a"), lab.add("b")
        lab.link(a, "eth0", b, "eth0")
        a.addr("eth0", f"{A_IP}/24")
        b.addr("eth0", f"{B_IP}/24")
        yield lab


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
    ta = HaTransport(
        ep(A_IP),
        [ep(B_IP)],
        KEY,
        node="dir-a",
        epoch=7,
        metrics=ma,
        clock=monotonic,
        on_message=lambda m, path, now: got_a.append((m, path)),
    )
    tb = HaTransport(
        ep(B_IP),
        [ep(A_IP)],
        KEY,
        node="dir-b",
        epoch=9,
        metrics=mb,
        clock=monotonic,
        on_message=lambda m, path, now: got_b.append((m, path)),
    )
    await ta.open(udp(lab["a"], A_IP, PORT))
    await tb.open(udp(lab["b"], B_IP, PORT))
    raw = udp(lab["a"], A_IP, 6000)
    try:
        for _ in range(5):
            assert ta.send(hb("dir-a")) == 1
            assert tb.send(hb("dir-b")) == 1
        await wait_for(lambda: len(got_a) == 5 and len(got_b) == 5)
        assert [m.seq for m, _ in got_b] == [1, 2, 3, 4, 5]
        assert {m.epoch for m, _ in got_b} == {7} and {path for _, path in got_b} == {
            f"{A_IP}:{PORT}"
        }
        assert (
            mb.registry.get_sample_value(
                "hacontrol_ha_heartbeats_received_total", {"path": f"{A_IP}:{PORT}"}
            )
            == 5
        )
        assert (
            ma.registry.get_sample_value(
                "hacontrol_ha_heartbeats_sent_total", {"path": f"{B_IP}:{PORT}"}
            )
            == 5
        )

        good = p.encode(dataclasses.replace(hb("dir-x"), epoch=1, seq=1), KEY)
        bad = {
            "bad_mac": p.encode(dataclasses.replace(hb("dir-x"), epoch=1, seq=2), b"wrong key"),
            "truncated": good[:50],
            "oversized": good + bytes(1450 - len(good)),
            "bad_version": good[:4] + b"\x02" + good[5:],
            "bad_magic": b"VRRP" + good[4:],
            "self": p.encode(dataclasses.replace(hb("dir-b"), epoch=99, seq=1), KEY),
        }
        raw.sendto(good, (B_IP, PORT))  # accepted once ...
        await wait_for(lambda: len(got_b) == 6)
        raw.sendto(good, (B_IP, PORT))  # ... then a replay
        replay_old = p.encode(dataclasses.replace(hb("dir-a"), epoch=6, seq=100), KEY)
        raw.sendto(replay_old, (B_IP, PORT))  # an older boot epoch of dir-a
        for data in bad.values():
            raw.sendto(data, (B_IP, PORT))
        expect = {**dict.fromkeys(bad, 1), "replayed": 2}
        await wait_for(lambda: all(tb.dropped[r] >= n for r, n in expect.items()))
        tb.send(hb("dir-b"))
        ta.send(hb("dir-a"))  # still flowing after the garbage
        await wait_for(lambda: len(got_b) == 7 and len(got_a) == 6)
        assert {r: n for r, n in tb.dropped.items() if n} == expect
        for reason, n in expect.items():
            assert rejected(mb, reason) == n
        assert len(got_b) == 7 and all(m.node in ("dir-a", "dir-x") for m, _ in got_b)
        assert sum(ta.dropped.values()) == 0
    finally:
        raw.close()
        ta.close()
        tb.close()


async def test_two_paths_reordered_are_all_accepted(lab: NetnsLab) -> None:
    """Copies sent to two paths (here: two ports of the peer) each carry their own sequence
    number, so neither is taken for a replay."""
    mb1, mb2, ma = Metrics(), Metrics(), Metrics()
    got: list[int] = []
    guard = p.ReplayGuard()
    tb1 = HaTransport(
        ep(B_IP),
        [ep(A_IP)],
        KEY,
        node="dir-b",
        epoch=1,
        metrics=mb1,
        clock=monotonic,
        on_message=lambda m, path, now: got.append(m.seq),
        guard=guard,
    )
    tb2 = HaTransport(
        ep(B_IP, PORT + 1),
        [ep(A_IP)],
        KEY,
        node="dir-b",
        epoch=1,
        metrics=mb2,
        clock=monotonic,
        on_message=lambda m, path, now: got.append(m.seq),
        guard=guard,
    )
    ta = HaTransport(
        ep(A_IP),
        [ep(B_IP), ep(B_IP, PORT + 1)],
        KEY,
        node="dir-a",
        epoch=3,
        metrics=ma,
        clock=monotonic,
        on_message=lambda m, path, now: None,
    )
    await tb1.open(udp(lab["b"], B_IP, PORT))
    await tb2.open(udp(lab["b"], B_IP, PORT + 1))
    await ta.open(udp(lab["a"], A_IP, PORT))
    try:
        for _ in range(20):
            assert ta.send(hb("dir-a")) == 2
        await wait_for(lambda: len(got) == 40)
        assert sorted(got) == list(range(1, 41))
        assert sum(tb1.dropped.values()) + sum(tb2.dropped.values()) == 0
    finally:
        for t in (ta, tb1, tb2):
            t.close()
