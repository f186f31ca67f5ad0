"""Replayed heartbeats cannot keep a restarted node down (docs/ha-wire.md, "Freshness"), between
two real ``hacontrol run`` daemons in namespaces (tests/integration/ha/pairlab):

- the attack: record the active's heartbeats off the backup's wire (an AF_PACKET tap in its
  namespace), kill -9 the active, kill -9 and restart the backup, and replay the recording to it
  without pause, from the dead active's own addresses and from a foreign address on the public
  segment. The restarted backup must not believe the recording: it takes the VIPs (kernel
  addresses in its namespace), every foreign packet is shed and counted by its heartbeat guard
  (an nft table: hacontrol.ha.guard), every replayed one
  as ``unconfirmed`` or ``replayed``, and none is counted as received;
- the handshake: a backup restarted next to a live active hears it through the nonce echo in
  time and comes back as backup, never active, and the active never notices a split brain.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import nsprobe
import pytest
from nsprobe import wait_for
from pairlab import ADDRS, CLIENT, HB_PORT, VIPS, A, B, HaPair, MakePair

from hacontrol.ha import packet as pk

pytestmark = pytest.mark.root

REJECTED = "hacontrol_ha_heartbeats_rejected_total"
RECEIVED = "hacontrol_ha_heartbeats_received_total"


class Replayer:
    """Sends each batch of ``batches`` (copies: socket, payload, destination) once, one batch
    every ``gap`` seconds, until stopped; ``done`` is set once they ran out (bounded: ``within``
    seconds)."""

    def __init__(self, batches: list[list[tuple[socket.socket, bytes, str]]], gap: float,
                 within: float = 90.0) -> None:  # fmt: skip
        self.batches, self.gap, self.within = batches, gap, within
        self.sent = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.within
        try:
            for batch in self.batches:
                for sock, data, dst in batch:
                    with contextlib.suppress(OSError):
                        sock.sendto(data, (dst, HB_PORT))
                        self.sent += 1
                if self._stop.wait(self.gap) or time.monotonic() > deadline:
                    return
        finally:
            self.done.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def replaying(pair: HaPair, recording: list[tuple[bytes, str]]) -> Iterator[Replayer]:
    """The recording replayed once, in order, one packet every 100 ms (as often as the pair's
    heartbeats: enough to hold down a receiver that believes them), each packet twice at once:
    from A's own address (the public one for the packets to B's public address, the inside one
    for the others: as A sent them) and from the client, a foreign address of the public segment,
    to B's public address."""
    pub_b = ADDRS[B][0]
    from_a = [nsprobe.udp_socket(pair.lab[A], (ADDRS[A][i], HB_PORT)) for i in (0, 1)]
    foreign = nsprobe.udp_socket(pair.lab["client"], (CLIENT, HB_PORT))
    batches = [[(from_a[0 if dst == pub_b else 1], d, dst), (foreign, d, pub_b)]
               for d, dst in recording]  # fmt: skip
    rep = Replayer(batches, 0.1)
    try:
        yield rep
    finally:
        rep.stop()
        for sk in (*from_a, foreign):
            sk.close()
    assert rep.sent > 0


def test_a_restarted_backup_is_not_kept_down_by_replayed_heartbeats(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.start_pair()
    key = (pair.workdir / "ha.key").read_bytes().strip()

    # 10 s of the active's heartbeats to b on both paths: replayed one every 100 ms, they would
    # hold a believing b down for about 20 s
    recording = nsprobe.record_udp(pair.lab[B], ADDRS[A], HB_PORT, seconds=10.0, limit=1000)
    msgs = [pk.decode(d, key) for d, _ in recording]
    assert len(msgs) >= 100 and {m.node for m in msgs} == {A}, len(msgs)
    assert all(m.role is pk.WireRole.ACTIVE for m in msgs)
    assert {dst for _, dst in recording} == {ADDRS[B][0], ADDRS[B][1]}  # both paths
    # what makes the attack dangerous: to the running backup these were alive (they echo it)
    assert len({m.echo for m in msgs}) == 1 and msgs[0].echo != pk.NO_NONCE

    pair.kill(A)
    pair.kill(B)
    with replaying(pair, recording) as replay:
        pair.start(B)  # a fresh boot of b, hearing only the recording
        pair.wait_role(B, "active", 60)
        wait_for(lambda: set(pair.vips(B)) == set(VIPS), 30, "the VIPs on b", pair.explain)
        # b took over while the recording was still being replayed to it, not after it ran out
        assert not replay.done.is_set(), "b took over only once the replay had run out"
        # the replay went on while b took over: its effect is counted, not obeyed
        # foreign sources never reach the daemon: the kernel's heartbeat guard sheds and counts them
        wait_for(lambda: pair.guard_dropped(B) >= 10, 30,
                 "foreign packets shed by b's heartbeat guard", pair.explain)  # fmt: skip
        wait_for(lambda: pair.metric(B, REJECTED, reason="unconfirmed") >= 1, 30,
                 "replays from a's addresses counted at b", pair.explain)  # fmt: skip
        assert pair.metric(B, RECEIVED) == 0  # nothing was taken for a live peer
        ha = pair.ha(B)
        assert ha["peer"] is None or not ha["peer"]["alive"], ha["peer"]
        assert pair.role(B) == "active"
    tr = pair.last(B)
    assert tr.to == "active", tr
    print(f"b took over despite the replay: {tr.reason}; rejected at b: "
          f"{ha['heartbeats']['rejected']}")  # fmt: skip


def test_a_restarted_backup_confirms_the_live_active_and_stays_backup(
    make_pair: MakePair,
) -> None:
    pair = make_pair()
    pair.start_pair()
    before_a = pair.transitions(A)
    for _ in range(3):  # each restart must come back through the nonce handshake
        pair.kill(B)
        pair.start(B)
        pair.wait_role(B, "backup", 30)
        wait_for(lambda: pair.peer(B).get("alive") and pair.peer(A).get("alive"), 10,
                 "the pair hearing each other again", pair.explain)  # fmt: skip
        assert [t.to for t in pair.transitions(B)] == ["backup"], pair.transitions(B)
    assert pair.transitions(A) == before_a  # a stayed active throughout
    assert pair.role(A) == "active" and pair.holders() == {A}
    assert not pair.events(A, "ha.split_brain") and not pair.events(B, "ha.split_brain")
    # each new boot of b was first heard unconfirmed at a (its first packet echoes nobody)
    assert pair.metric(A, REJECTED, reason="unconfirmed") >= 3
