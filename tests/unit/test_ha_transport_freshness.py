"""The freshness rules of hacontrol.ha.freshness, table-driven: which authentic heartbeats count as
a live peer, which only teach the peer's nonce, which are replays; a replay flood cannot hold a
stale echo against the real peer (hypothesis); two nodes converge within a round trip after either
restarts; the golden handshake vectors carry the same verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.ha import packet as p
from hacontrol.ha.freshness import Freshness

ME = bytes.fromhex("5e5e5e5e5e5e5e01")  # this boot's nonce
OLD = bytes.fromhex("5e5e5e5e5e5e5e00")  # our previous boot's nonce (what recordings echo)
Z = p.NO_NONCE


def nonce(tag: str) -> bytes:
    """A peer boot's nonce, e.g. ``nonce("A5")``: node A's boot of epoch 5."""
    return tag.encode().ljust(8, b".")


@dataclass(frozen=True)
class Pkt:
    node: str
    epoch: int
    seq: int
    echo: bytes

    @property
    def nonce(self) -> bytes:
        return nonce(f"{self.node}{self.epoch}")


# each step: the packet, then (verdict kind, learned, what we echo afterwards)
CASES: dict[str, list[tuple[Pkt, tuple[str, bool, bytes]]]] = {
    "restarted receiver, dead peer's recording replayed: never alive": [
        (Pkt("A", 5, 10, OLD), ("unconfirmed", True, nonce("A5"))),
        (Pkt("A", 5, 11, OLD), ("unconfirmed", False, nonce("A5"))),
        (Pkt("A", 5, 12, OLD), ("unconfirmed", False, nonce("A5"))),
    ],
    "handshake: a stale echo teaches, the echo of this boot is alive": [
        (Pkt("A", 5, 10, OLD), ("unconfirmed", True, nonce("A5"))),
        (Pkt("A", 5, 11, ME), ("alive", False, nonce("A5"))),
    ],
    "both start: the first packet echoes nothing": [
        (Pkt("A", 5, 1, Z), ("unconfirmed", True, nonce("A5"))),
        (Pkt("A", 5, 2, ME), ("alive", False, nonce("A5"))),
    ],
    "the same packet twice is a replay": [
        (Pkt("A", 5, 1, ME), ("alive", True, nonce("A5"))),
        (Pkt("A", 5, 1, ME), ("replayed", False, nonce("A5"))),
    ],
    "an older boot's recording after the current boot is a replay": [
        (Pkt("A", 6, 1, Z), ("unconfirmed", True, nonce("A6"))),
        (Pkt("A", 5, 900, OLD), ("replayed", False, nonce("A6"))),
    ],
    "an older boot first, then the current one: the newer nonce wins": [
        (Pkt("A", 5, 900, OLD), ("unconfirmed", True, nonce("A5"))),
        (Pkt("A", 6, 3, OLD), ("unconfirmed", True, nonce("A6"))),
        (Pkt("A", 6, 4, ME), ("alive", False, nonce("A6"))),
        (Pkt("A", 5, 901, OLD), ("replayed", False, nonce("A6"))),
    ],
    "the confirmed peer restarts: its new boot is adopted, then confirms": [
        (Pkt("A", 5, 1, ME), ("alive", True, nonce("A5"))),
        (Pkt("A", 7, 1, Z), ("unconfirmed", True, nonce("A7"))),
        (Pkt("A", 7, 2, ME), ("alive", False, nonce("A7"))),
    ],
    "another node's recording never displaces a peer that confirmed us": [
        (Pkt("A", 5, 1, ME), ("alive", True, nonce("A5"))),
        (Pkt("X", 9, 1, OLD), ("unconfirmed", False, nonce("A5"))),
        (Pkt("X", 9, 2, Z), ("unconfirmed", False, nonce("A5"))),
    ],
    "unconfirmed only: the highest boot epoch wins, whoever sent it": [
        (Pkt("X", 3, 1, OLD), ("unconfirmed", True, nonce("X3"))),
        (Pkt("A", 5, 1, OLD), ("unconfirmed", True, nonce("A5"))),
        (Pkt("X", 4, 1, OLD), ("unconfirmed", False, nonce("A5"))),
    ],
    "a packet that echoes us beats any unconfirmed epoch": [
        (Pkt("X", 9, 1, OLD), ("unconfirmed", True, nonce("X9"))),
        (Pkt("A", 5, 1, ME), ("alive", True, nonce("A5"))),
    ],
    "our previous boot's nonce is never ours": [
        (Pkt("A", 5, 1, OLD), ("unconfirmed", True, nonce("A5"))),
        (Pkt("A", 5, 2, Z), ("unconfirmed", False, nonce("A5"))),
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_freshness_rules(case: str) -> None:
    f = Freshness(ME)
    assert f.echo == Z  # heard nobody yet
    got = []
    for pkt, _ in CASES[case]:
        v = f.check(pkt.node, pkt.epoch, pkt.seq, pkt.nonce, pkt.echo)
        got.append((v.kind, v.learned, f.echo))
    assert got == [want for _, want in CASES[case]]


@pytest.mark.parametrize("bad", [Z, b"short", bytes(9)])
def test_boot_nonce_must_be_eight_nonzero_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError):
        Freshness(bad)


# -- a replay flood cannot lock the real peer out ------------------------------------------------

recorded = st.builds(
    Pkt,
    node=st.sampled_from(["A", "X"]),
    epoch=st.integers(1, 99),  # A's older boots; X: any boot of some other node
    seq=st.integers(0, 2000),
    echo=st.sampled_from([OLD, Z]),  # recordings made before this boot cannot echo ME
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), recorded), max_size=60))
def test_a_replay_flood_never_holds_a_stale_echo_against_the_live_peer(
    steps: list[tuple[bool, Pkt]],
) -> None:
    """Recordings (A's older boots, any boot of another node X, echoing anything but this boot)
    interleaved with the live peer A of boot 100: recordings are never alive, and from the live
    peer's first packet that echoes us on, we echo A100's nonce whatever the recordings do."""
    f = Freshness(ME)
    live_seq, confirmed = 0, False
    for live, rec in steps:
        if live:
            live_seq += 1
            v = f.check("A", 100, 10_000 + live_seq, nonce("A100"), ME)
            assert v.kind == "alive"
            confirmed = True
        else:
            v = f.check(rec.node, rec.epoch, rec.seq, rec.nonce, rec.echo)
            assert v.kind != "alive"
        if confirmed:
            assert f.echo == nonce("A100")


# -- two nodes: restart convergence --------------------------------------------------------------


class Node:
    """A node's freshness plus its packet counter; ``answer`` follows the transport's rule (send
    one heartbeat at once when the echo changed)."""

    def __init__(self, name: str, epoch: int, me: bytes) -> None:
        self.name, self.epoch, self.seq, self.f = name, epoch, 0, Freshness(me)
        self.alive_heard = 0

    def packet(self) -> tuple[str, int, int, bytes, bytes]:
        self.seq += 1
        return (self.name, self.epoch, self.seq, self.f.nonce, self.f.echo)

    def receive(self, pkt: tuple[str, int, int, bytes, bytes]) -> bool:
        """Whether it answers at once."""
        v = self.f.check(*pkt)
        self.alive_heard += v.kind == "alive"
        return v.learned


def exchange(first: Node, second: Node, limit: int = 10) -> int:
    """``first`` sends one heartbeat; each side answers at once while its echo changes. Returns
    the packets it took until both have heard the other alive (bounded)."""
    sender, receiver, n = first, second, 0
    pkt = sender.packet()
    while n < limit:
        n += 1
        answers = receiver.receive(pkt)
        if first.alive_heard and second.alive_heard:
            return n
        if not answers:
            return n
        sender, receiver = receiver, sender
        pkt = sender.packet()
    return n


@pytest.mark.parametrize("who", ["backup restarts", "active restarts", "both start"])
def test_a_restart_converges_within_a_round_trip(who: str) -> None:
    a, b = Node("A", 5, nonce("A5")), Node("B", 6, nonce("B6"))
    if who != "both start":
        exchange(a, b)  # the pair runs and has confirmed each other
        assert a.alive_heard and b.alive_heard
        if who == "backup restarts":
            b = Node("B", 8, nonce("B8"))
        else:
            a = Node("A", 8, nonce("A8"))
        a.alive_heard = b.alive_heard = 0
    # the restarted node's first heartbeat (or the periodic one of the other) starts it
    n = exchange(b, a)
    assert a.alive_heard and b.alive_heard, who
    assert n <= 3  # its packet, the answer (alive at it), the answer to that (alive at the other)


# -- the golden handshake vectors carry these verdicts ---------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "ha"
KEY = b"hacontrol golden vector key 0001"


def test_golden_handshake_vectors() -> None:
    """dir-b restarted (first_of_boot, its nonce b1..b8): dir-a's heartbeat that echoes dir-b's
    previous boot (echo_stale) only teaches dir-b dir-a's nonce; the one that echoes the new boot
    (echo_fresh) is alive."""
    first, stale, fresh = (
        p.decode((GOLDEN / f"heartbeat_{n}.bin").read_bytes(), KEY)
        for n in ("first_of_boot", "echo_stale", "echo_fresh")
    )
    b = Freshness(first.nonce)
    assert first.echo == p.NO_NONCE
    v = b.check(stale.node, stale.epoch, stale.seq, stale.nonce, stale.echo)
    assert (v.kind, v.learned, b.echo) == ("unconfirmed", True, stale.nonce)
    v = b.check(fresh.node, fresh.epoch, fresh.seq, fresh.nonce, fresh.echo)
    assert (v.kind, v.learned) == ("alive", False)
    # and dir-a, hearing dir-b's first packet of the new boot, learns its nonce
    a = Freshness(stale.nonce)
    v = a.check(first.node, first.epoch, first.seq, first.nonce, first.echo)
    assert (v.kind, v.learned, a.echo) == ("unconfirmed", True, fresh.echo)
