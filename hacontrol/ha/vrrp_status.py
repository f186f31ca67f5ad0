"""The ``ha`` block of the daemon's status for ``ha.protocol: vrrp3`` (a plain JSON document).

Built from the runner's public values only. It keeps the keys the own protocol's status has
(``role``, ``reason``, ``since``, ``priority``, ``peer``, ``vips``, ``transitions``...), so
``hacontrol status`` renders it the same way, and adds ``protocol: vrrp3``, a ``vrrp`` block (the
RFC 5798 timers as they stand) and ``unavailable``: what the own protocol has and VRRP lacks.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Protocol

from hacontrol.ha import vrrp_fsm as vf
from hacontrol.ha.interfaces import VipManager
from hacontrol.ha.vrrp_transport import VrrpTransport
from hacontrol.model import HAConfig, VrrpConfig


class VrrpView(Protocol):
    """The runner's public values the status is built from (hacontrol.ha.vrrp_runner)."""

    cfg: HAConfig
    vc: VrrpConfig
    node: str
    fsm: vf.Machine | None
    transport: VrrpTransport
    vips: VipManager
    held: bool
    reason: str
    since: float
    version: int
    advertised: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    history: list[tuple[float, str, str, str]]
    faults: dict[str, str]

    @property
    def role(self) -> str: ...

ROLE = {vf.State.INITIALIZE: "starting", vf.State.BACKUP: "backup",
        vf.State.MASTER: "active", vf.State.FAULT: "fault"}  # fmt: skip
# what the own protocol adds that VRRPv3 has no field for; shown in the status, drills refused
UNAVAILABLE = {
    "authentication": "VRRPv3 has none (RFC 5798 §9): any host on the link can advertise",
    "replay_freshness": "advertisements carry no sequence number or nonce",
    "health_summaries": "advertisements carry no health: the peer's services are not seen",
    "config_digest": "advertisements carry no config digest: a differing peer is not seen",
    "handover_without_loss": "no connection hand-off or handover message: a move drops "
    "connections in flight (IPVS sync daemons, ha.sync, still replicate them)",
    "drills": "a drill needs the peer's cooperation (handover message), which VRRP lacks",
    "priority_penalty": "a failed tracked item is a fault (priority 0), never a lower priority",
}

__all__ = ["ROLE", "UNAVAILABLE", "VrrpView", "vrrp_status", "wall"]


def wall(now: float, at: float) -> str:
    """``at`` (the clock's seconds) as a UTC timestamp."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (now - at)))


def vrrp_status(r: VrrpView, now: float) -> dict[str, Any]:
    def ago(at: float | None) -> float | None:
        return None if at is None else round(max(0.0, now - at), 3)

    m, vc, t = r.fsm, r.vc, r.transport
    peer: dict[str, Any] | None = None
    if m is not None and m.last is not None:
        last = m.last
        alive = m.state is vf.State.BACKUP and last.priority > 0 and (
            now - last.at <= m.master_down
        )
        peer = {
            "name": str(last.source), "role": "active" if last.priority else "stopping",
            "priority": last.priority, "effective_priority": last.priority,
            "alive": alive or (m.state is vf.State.MASTER and now - last.at <= m.master_down),
            "last_heard_ago": ago(last.at), "max_adver_int_cs": last.max_adver_cs,
            "config_match": None,
            "paths": {str(last.source): {"last_heard_ago": ago(last.at)}},
        }  # fmt: skip
    return {
        "protocol": "vrrp3", "node": r.node, "role": r.role, "reason": r.reason,
        "since_ago": ago(r.since), "since": wall(now, r.since),
        "priority": r.cfg.priority, "effective_priority": r.cfg.priority,
        "blocked": bool(r.faults), "handing_over": False,
        "faults": [{"name": n, "blocking": True, "reason": why} for n, why in r.faults.items()],
        "peer": peer,
        "peers_configured": [str(p) for p in vc.unicast_peers] or [str(t.group)],
        "vips": r.vips.describe(), "vips_held": r.held, "lease": r.cfg.lease,
        "vrrp": {
            "state": None if m is None else m.state.name, "vrid": vc.vrid,
            "interface": vc.interface, "version": r.version,
            "source": None if t.source is None else str(t.source),
            "destinations": [str(d) for d in t.destinations],
            "advert_int_cs": vc.advert_cs,
            "master_adver_int_cs": None if m is None else m.master_adver_cs,
            "skew_time_s": None if m is None else round(m.skew, 4),
            "master_down_interval_s": None if m is None else round(m.master_down, 4),
            "preempt": r.cfg.preempt, "preempt_delay": r.cfg.preempt_delay,
            "advertised": [str(a) for a in r.advertised],
        },
        "heartbeats": {"sent": {"vrrp": t.sent}, "received": {"vrrp": t.received},
                       "rejected": {k: v for k, v in t.dropped.items() if v}},
        "unavailable": [{"feature": k, "reason": v} for k, v in UNAVAILABLE.items()],
        "transitions": [{"ago": ago(at), "from": frm, "to": to, "reason": why}
                        for at, frm, to, why in r.history],
        "states": {s.name: ROLE[s] for s in vf.State},
    }  # fmt: skip
