"""HaTransport's receive path without a socket (datagrams handed to ``datagram_received``, sends
caught by a recording DatagramTransport): the source filter before any decoding, the freshness
verdicts (only ``alive`` reaches ``on_message``; ``unconfirmed`` teaches the nonce and calls
``on_learn``), the counters by reason, and the nonce and echo stamped on every copy sent."""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

import pytest

from hacontrol.clock import FakeClock
from hacontrol.ha import packet as p
from hacontrol.ha.transport import DROP_REASONS, HaTransport, new_nonce
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint

KEY = b"unit transport key 0123456789"
ME = bytes.fromhex("0102030405060708")
PEER_NONCE = bytes.fromhex("a1a2a3a4a5a6a7a8")
PEER_IN, PEER_PUB, FOREIGN = "192.0.2.12", "198.51.100.3", "198.51.100.100"


def ep(ip: str, port: int = 5405) -> Endpoint:
    return Endpoint(ipaddress.ip_address(ip), port)


class Sent:
    """A stand-in for asyncio's DatagramTransport: records what is sent where."""

    def __init__(self) -> None:
        self.out: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.out.append((data, addr))

    def close(self) -> None:
        pass


class Rig:
    def __init__(self, peers: tuple[str, ...] = (PEER_IN, PEER_PUB)) -> None:
        self.metrics = Metrics()
        self.got: list[tuple[p.Message, str]] = []
        self.learned = 0
        bind = ep("0.0.0.0") if ":" not in peers[0] else ep("::")
        self.t = HaTransport(
            bind, [ep(x) for x in peers], KEY, node="dir-a", epoch=50, metrics=self.metrics,
            clock=FakeClock(), on_message=lambda m, path, now: self.got.append((m, path)),
            on_learn=self.learn, nonce=ME,
        )  # fmt: skip
        self.wire = Sent()
        self.t.connection_made(self.wire)  # type: ignore[arg-type]

    def learn(self) -> None:
        self.learned += 1

    def feed(self, msg: p.Message, source: str, key: bytes = KEY) -> None:
        self.t.datagram_received(p.encode(msg, key), (source, 5405))

    def rejected(self, reason: str) -> float:
        v = self.metrics.registry.get_sample_value(
            "hacontrol_ha_heartbeats_rejected_total", {"reason": reason}
        )
        return v or 0.0


def hb(seq: int, echo: bytes = ME, epoch: int = 7, node: str = "dir-b", **kw: Any) -> p.Message:
    return p.Message(
        type=p.MsgType.HEARTBEAT, node=node, role=p.WireRole.ACTIVE, priority=100,
        effective_priority=100, epoch=epoch, seq=seq, nonce=PEER_NONCE, echo=echo, **kw,
    )  # fmt: skip


def test_foreign_sources_are_dropped_before_decoding() -> None:
    r = Rig()
    r.feed(hb(1), FOREIGN)  # authentic and fresh, but not from a peer address
    r.t.datagram_received(b"garbage", (FOREIGN, 5405))  # not even decoded
    r.feed(hb(2), "192.0.2.99")  # the peer's subnet, not its address
    assert r.got == [] and r.learned == 0
    assert r.t.dropped["foreign"] == 3 and r.rejected("foreign") == 3
    assert r.t.fresh.echo == p.NO_NONCE  # nothing learned from them
    assert sum(r.t.dropped.values()) == 3


def test_every_peer_address_is_a_path_and_the_port_does_not_matter() -> None:
    r = Rig()
    r.feed(hb(1), PEER_IN)
    r.t.datagram_received(p.encode(hb(2), KEY), (PEER_PUB, 40000))
    assert [path for _, path in r.got] == [f"{PEER_IN}:5405", f"{PEER_PUB}:40000"]


@pytest.mark.parametrize(
    ("peer", "source"),
    [
        ("2001:db8::12", "2001:db8::12"),
        ("fe80::12", "fe80::12%eth1"),  # a link-local source comes with its zone
        (PEER_IN, "::ffff:192.0.2.12"),  # IPv4 on a dual-stack socket
    ],
)
def test_source_forms(peer: str, source: str) -> None:
    r = Rig((peer,))
    r.feed(hb(1), source)
    assert len(r.got) == 1 and r.t.dropped["foreign"] == 0


def test_unconfirmed_teaches_the_nonce_and_asks_for_an_answer() -> None:
    r = Rig()
    stale = bytes.fromhex("0102030405060700")  # our previous boot
    r.feed(hb(1, echo=stale), PEER_IN)
    assert r.got == [] and r.learned == 1
    assert r.t.fresh.echo == PEER_NONCE and "dir-b" in r.t.unconfirmed
    assert r.t.dropped["unconfirmed"] == 1 and r.rejected("unconfirmed") == 1
    r.feed(hb(2, echo=stale), PEER_PUB)  # nothing new: no second answer
    assert r.learned == 1 and r.t.dropped["unconfirmed"] == 2
    r.feed(hb(3), PEER_IN)  # echoes this boot: alive, handed on
    assert [m.seq for m, _ in r.got] == [3] and r.learned == 1
    assert "dir-b" not in r.t.unconfirmed and r.t.received == {f"{PEER_IN}:5405": 1}
    r.feed(hb(3), PEER_PUB)  # the same packet again, spoofed from the other path
    assert r.t.dropped["replayed"] == 1 and len(r.got) == 1


def test_drops_by_reason_never_reach_the_callback() -> None:
    r = Rig()
    r.feed(hb(1, node="dir-a"), PEER_IN)  # our own name
    r.feed(hb(2), PEER_IN, key=b"another key entirely")
    r.t.datagram_received(p.encode(hb(3), KEY)[:60], (PEER_IN, 5405))
    assert r.got == [] and r.learned == 0
    assert {k: v for k, v in r.t.dropped.items() if v} == {"self": 1, "bad_mac": 1, "truncated": 1}
    assert set(r.t.dropped) == set(DROP_REASONS)


def test_every_copy_carries_the_boot_nonce_and_the_current_echo() -> None:
    r = Rig()
    base = dataclasses.replace(hb(0), node="dir-a", nonce=p.NO_NONCE, echo=p.NO_NONCE)
    assert r.t.send(base) == 2
    first = [p.decode(d, KEY) for d, _ in r.wire.out]
    assert [(m.nonce, m.echo, m.epoch, m.seq) for m in first] == [
        (ME, p.NO_NONCE, 50, 1), (ME, p.NO_NONCE, 50, 2),
    ]  # fmt: skip
    assert [a for _, a in r.wire.out] == [(PEER_IN, 5405), (PEER_PUB, 5405)]
    r.feed(hb(1, echo=p.NO_NONCE), PEER_IN)  # the peer's first packet: learn its nonce
    r.wire.out.clear()
    r.t.send(base)
    assert {p.decode(d, KEY).echo for d, _ in r.wire.out} == {PEER_NONCE}


def test_new_nonce_is_random_and_never_zero() -> None:
    seen = {new_nonce() for _ in range(100)}
    assert len(seen) == 100 and p.NO_NONCE not in seen
    assert all(len(n) == p.NONCE_LEN for n in seen)


def test_overrides_messages_pass_the_same_checks_and_skip_the_role_machine() -> None:
    r = Rig()
    overrides: list[tuple[p.Message, str]] = []
    r.t.on_overrides = lambda m, path, now: overrides.append((m, path))
    ov = dataclasses.replace(hb(1), type=p.MsgType.OVERRIDES, payload=b"section")
    r.feed(ov, PEER_IN)
    assert [m.payload for m, _ in overrides] == [b"section"] and r.got == []
    r.feed(ov, PEER_IN)  # the same (epoch, seq) again: replayed, like a heartbeat
    r.feed(dataclasses.replace(ov, seq=2, echo=bytes(8)), PEER_IN)  # does not echo us
    r.feed(dataclasses.replace(ov, seq=3), PEER_IN, key=b"another key of 16+ bytes")
    assert len(overrides) == 1
    assert (r.rejected("replayed"), r.rejected("unconfirmed"), r.rejected("bad_mac")) == (1, 1, 1)
    r.feed(hb(4), PEER_IN)  # heartbeats still go to the role machine
    assert len(r.got) == 1 and len(overrides) == 1
    r.t.send(ov)  # sent like a heartbeat, each copy stamped; not counted as heartbeats
    assert len(r.wire.out) == 2 and all(p.decode(d, KEY).payload == b"section"
                                        for d, _ in r.wire.out)  # fmt: skip
    assert r.t.sent == {}
