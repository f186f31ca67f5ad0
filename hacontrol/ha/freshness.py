"""Heartbeat freshness: which authentic heartbeats prove a live peer (pure: no socket, no clock).

Each daemon draws a random boot nonce when it starts (``NONCE_LEN`` bytes, never all zero) and
puts it in every packet it sends, with the echo of the peer nonce it has adopted (all zero until
it adopts one). A peer counts as alive only through a packet that echoes **our current** boot
nonce: the peer heard this boot, so the packet was made after we started, and nothing recorded
before can pass for it. ``Freshness.check`` classifies one authentic packet (MAC verified, source
allowed, not our own name) -- ``Verdict.kind``:

- ``replayed``: its (epoch, seq) was seen before or is too old (``ReplayGuard``); nothing changes.
- ``alive``: it echoes our nonce; the caller hands it on (election, "peer is active", the dead
  interval).
- ``unconfirmed``: it does not; it never refreshes liveness. It may only teach us the peer's
  nonce, so that we echo it and the peer can confirm us.

Which peer nonce we echo (adoption):

- the nonce of a packet that echoed us (``alive``) is always adopted: that sender heard this boot;
- an ``unconfirmed`` packet's nonce is adopted only if its boot epoch is higher than the adopted
  one's and, when the adopted one was confirmed, it comes from the same node (that peer
  restarted). A recording of an older boot can so never displace a newer one, and a recording of
  some other node never displaces a peer that confirmed us. The real peer learns our nonce from
  our own packets whatever we echo, echoes it, and is then adopted: old packets cannot lock it out.

``Verdict.learned``: the echo changed; the caller should answer at once (a heartbeat now), so a
restarted node is confirmed within a round trip instead of an interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hacontrol.ha.packet import NO_NONCE, NONCE_LEN, ReplayGuard

Kind = Literal["alive", "unconfirmed", "replayed"]


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    learned: bool = False  # the echo we send changed: answer now


@dataclass(frozen=True)
class Adopted:
    """The peer boot whose nonce we echo."""

    node: str
    epoch: int
    nonce: bytes
    confirmed: bool  # adopted from a packet that echoed our nonce


class Freshness:
    """Our boot nonce, the peer nonce we echo and the replay guard, for one transport."""

    def __init__(self, nonce: bytes, guard: ReplayGuard | None = None) -> None:
        if len(nonce) != NONCE_LEN or nonce == NO_NONCE:
            raise ValueError(f"the boot nonce must be {NONCE_LEN} bytes, not all zero")
        self.nonce = nonce
        self.guard = guard or ReplayGuard()
        self.adopted: Adopted | None = None

    @property
    def echo(self) -> bytes:
        """What our packets echo: the adopted peer nonce (all zero before any)."""
        return self.adopted.nonce if self.adopted is not None else NO_NONCE

    def check(self, node: str, epoch: int, seq: int, nonce: bytes, echo: bytes) -> Verdict:
        """The verdict on one authentic packet of ``node`` (and remember what it taught)."""
        if self.guard.check(node, epoch, seq) is not None:
            return Verdict("replayed")
        alive = echo == self.nonce
        a = self.adopted
        adopt = (
            alive
            or a is None
            or (epoch > a.epoch and (not a.confirmed or node == a.node))
        )
        if not adopt:
            return Verdict("unconfirmed")
        learned = a is None or a.nonce != nonce
        self.adopted = Adopted(node, epoch, nonce, alive)
        return Verdict("alive" if alive else "unconfirmed", learned)
