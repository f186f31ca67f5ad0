"""What this node knows of its peer beyond the role machine's view, and the wire's roles.

``PeerWatch`` owns the peer's messages as heard by the runner: the last one and when it came,
its first message as active (for drill timelines), when each path last delivered one, and the
names of third nodes ignored once each. ``peer_takeover`` reads the peer's takeover block as a
timeline on our clock. ``to_wire`` / ``from_wire`` map ``hacontrol.ha.fsm_types.Role`` (the one
role enum) to and from the wire's byte values (``hacontrol.ha.packet.WireRole``), and
``peer_event`` turns a message into the machine's ``PeerHeard`` event. No I/O.
"""

from __future__ import annotations

from types import MappingProxyType

from hacontrol import logs
from hacontrol.ha import fsm_types as ft
from hacontrol.ha import packet as pk
from hacontrol.ha.fsm_types import Role

__all__ = ["PeerWatch", "from_wire", "peer_event", "peer_takeover", "to_wire"]

log = logs.get("hacontrol.ha")

_TO_WIRE = MappingProxyType({r: pk.WireRole[r.name] for r in Role})
_FROM_WIRE = MappingProxyType({w: r for r, w in _TO_WIRE.items()})


def to_wire(role: Role) -> pk.WireRole:
    """The wire's value for ``role``."""
    return _TO_WIRE[role]


def from_wire(role: pk.WireRole) -> Role:
    """The role a decoded message carries."""
    return _FROM_WIRE[role]


def peer_event(msg: pk.Message, now: float, digest: bytes) -> ft.PeerHeard:
    """The machine's event for ``msg`` heard at ``now`` (``digest``: our config digest)."""
    return ft.PeerHeard(
        now, msg.node, from_wire(msg.role), msg.priority, msg.effective_priority,
        blocked=bool(msg.flags & pk.FLAG_BLOCKED), yielding=bool(msg.flags & pk.FLAG_YIELDING),
        handover=msg.type is pk.MsgType.HANDOVER, healthy=msg.healthy_total,
        digest_match=msg.digest == digest,
    )  # fmt: skip


def peer_takeover(
    msg: pk.Message | None,
    at: float | None,
    recv: float,
    t0: float,
    first: pk.Message | None = None,
) -> dict[str, float | int | None]:
    """The peer's takeover steps on our clock, relative to ``t0``; one-way delay is neglected
    (sub-ms on a LAN). ``at``: when its first message as active (``first``) came; ``msg``: its
    last message, received at ``recv``. Each step is read from ``first`` when that carries it,
    so steps and the first heartbeat share one reference (the wire's whole milliseconds then
    never put a step after that heartbeat), else from ``msg``. Empty unless the peer is active."""
    if msg is None or at is None or from_wire(msg.role) is not Role.ACTIVE:
        return {}

    def when(field: str) -> float | None:
        for m, ref in ((first, at), (msg, recv)):
            ms = getattr(m.takeover, field) if m is not None else pk.NO_TIME
            if ms != pk.NO_TIME:
                return round(ref - ms / 1000 - t0, 4)
        return None

    return {
        "detection": when("detected_ago_ms"), "vip_added": when("vip_added_ago_ms"),
        "announcements_sent": when("announced_ago_ms"),
        "announce_count": msg.takeover.announce_count,
        "first_heartbeat_as_active": round(at - t0, 4),
    }  # fmt: skip


class PeerWatch:
    """The peer's messages as heard (see the module doc)."""

    def __init__(self) -> None:
        self._last: pk.Message | None = None
        self._last_at = 0.0
        self._active_at: float | None = None  # when a message from an active peer came
        self._first_active: pk.Message | None = None  # that message (drill timelines)
        self._paths: dict[str, float] = {}
        self._strangers: set[str] = set()

    def admits(self, msg: pk.Message, path: str, peer: str | None, alive: bool) -> bool:
        """False for a third node speaking while ``peer`` (the machine's peer) is alive: a
        config error, logged once per name (``ha.unexpected_peer``); its message is ignored."""
        if peer is None or msg.node == peer or not alive:
            return True
        if msg.node not in self._strangers:
            self._strangers.add(msg.node)
            why = f"a third node speaks with our key while {peer} is the peer; ignored"
            log.error("ha.unexpected_peer", peer=msg.node, path=path, reason=why)
        return False

    def heard(self, msg: pk.Message, path: str, now: float) -> None:
        """Record ``msg``, received on ``path`` at ``now``."""
        self._paths[path] = now
        self._last, self._last_at = msg, now
        if from_wire(msg.role) is not Role.ACTIVE:
            self._active_at = self._first_active = None
        elif self._active_at is None:
            self._active_at, self._first_active = now, msg

    def forget_active(self) -> None:
        """Start timing afresh: the peer's next message as active is its first (drills)."""
        self._active_at = self._first_active = None

    @property
    def last(self) -> pk.Message | None:
        return self._last

    @property
    def active_since(self) -> float | None:
        """When its first message as active (since the last ``forget_active``) came."""
        return self._active_at

    def announced(self) -> bool:
        """The peer is active and its last heartbeat reports announcement packets sent."""
        msg = self._last
        return self._active_at is not None and msg is not None and msg.takeover.announce_count > 0

    def holder(self) -> str | None:
        """The peer's name if its last message said it holds the VIPs."""
        msg = self._last
        return msg.node if msg is not None and msg.flags & pk.FLAG_VIPS_HELD else None

    def paths(self) -> dict[str, float]:
        """Each path (``host:port``) and when a message last came on it."""
        return dict(self._paths)

    def takeover(self, t0: float) -> dict[str, float | int | None]:
        """The peer's last takeover as a timeline from ``t0`` (``peer_takeover``)."""
        return peer_takeover(self._last, self._active_at, self._last_at, t0, self._first_active)
