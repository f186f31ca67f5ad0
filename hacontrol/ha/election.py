"""The HA election: which node of the pair should hold the VIP group. Pure functions, no state.

The role machine (hacontrol.ha.fsm) asks these questions of its own state and of the peer's last
heartbeat (``PeerView``); docs/ha-wire.md has the prose. In order: no blocking fault (gateway
lost, tracked interface down, fault drill) beats one; having healthy real servers beats having
none while the peer has some; then the higher effective priority; on a tie the lexicographically
LOWER node name. Effective priority = priority - penalty x (failed tracked items, + 1 if starved:
no healthy real server here while the live peer has some), floor 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hacontrol.ha.fsm_types import PeerView, Role


@dataclass(frozen=True)
class Standing:
    """One side of the election, as the machine sees it now."""

    name: str
    blocked: bool
    starved: bool
    effective_priority: int


def effective_priority(priority: int, penalty: int, hits: int) -> int:
    """``priority`` less ``penalty`` for each hit (failed tracked item, starved), floor 0."""
    return max(0, priority - penalty * hits)


def starved(local_healthy: int, local_total: int, peer: PeerView | None, alive: bool) -> bool:
    """No healthy real server here while the live (``alive``) peer has some."""
    return bool(local_total and not local_healthy and peer and peer.healthy) and alive


def wins(me: Standing, peer: Standing) -> bool:
    """``me`` wins: not blocked, then not starved, then effective priority, then lower name."""
    mine = (not me.blocked, not me.starved, me.effective_priority)
    theirs = (not peer.blocked, not peer.starved, peer.effective_priority)
    return mine > theirs if mine != theirs else me.name < peer.name


def not_serving(peer: PeerView | None) -> bool:
    """The peer is known and cannot hold the VIPs (faulty, stopping or blocked)."""
    return peer is not None and (peer.role in (Role.FAULT, Role.STOPPING) or peer.blocked)


def able_to_take(peer: PeerView | None) -> bool:
    """The peer could take the VIPs over in a handover (a stopping or faulty one will not)."""
    return peer is not None and peer.role in (Role.BACKUP, Role.STARTING) and not peer.blocked


def describe(peer: PeerView) -> str:
    """The peer in a reason: name, role and effective priority."""
    return f"{peer.name} ({peer.role.name.lower()}, priority {peer.effective_priority})"


def split_brain(
    yielding: bool, stalled: bool, won: bool, peer: PeerView
) -> tuple[Literal["lose", "keep", "overlap"], str]:
    """Both nodes active: this node loses (releases), keeps the VIPs (re-announces), or it is
    the overlap of the peer's handover to this node (not split brain), and why. A node handing
    over or recovering from a stall (``yielding``) loses; else the election (``won``) decides."""
    if yielding and not peer.yielding:
        if stalled:
            return "lose", f"peer {peer.name} took over while this node was stalled"
        return "lose", f"peer {peer.name} is active and this node is handing over"
    if peer.yielding and not yielding and peer.handover:
        return "overlap", f"peer {peer.name} still holds the VIPs while handing over to this node"
    if peer.yielding and not yielding:
        return "keep", f"split brain with {peer.name}: the peer is yielding"
    verdict: Literal["lose", "keep"] = "keep" if won else "lose"
    if peer.preempting and not won:
        return "lose", f"preempted by {describe(peer)}"
    return verdict, f"split brain: {'won' if won else 'lost'} election against {describe(peer)}"
