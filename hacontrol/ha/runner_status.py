"""The HA runner's status document: the ``ha`` block of ``GET /status`` (and ``hacontrol status``).

It reads a ``HaRunner`` (role, reason, peer and its paths, faults, VIPs, lease, heartbeat
counters, the last takeover's marks, recent transitions) and builds plain JSON values; it
changes nothing. Times are seconds ago on the runner's monotonic clock, except ``since``
(wall-clock UTC, for people).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hacontrol.ha.runner import HaRunner


def runner_status(r: HaRunner) -> dict[str, Any]:
    """The status document of runner ``r`` (plain JSON values, read only)."""
    now, m = r.clock(), r.fsm
    wall = time.time()

    def ago(at: float | None) -> float | None:
        return None if at is None else round(max(0.0, now - at), 3)

    peer: dict[str, Any] | None = None
    if m.peer is not None:
        pr = m.peer
        peer = {
            "name": pr.name, "role": pr.role.name.lower(), "priority": pr.priority,
            "effective_priority": pr.effective_priority, "alive": m.peer_alive(now),
            "last_heard_ago": ago(pr.last_heard), "config_match": pr.digest_match,
            "blocked": pr.blocked, "healthy": pr.healthy,
            "paths": {p: {"last_heard_ago": ago(t)} for p, t in sorted(r._paths.items())},
        }  # fmt: skip
    t = r.transport
    return {
        "node": r.node, "role": r.role, "reason": m.reason,
        "since_ago": ago(m.since), "since": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall - (now - m.since))),
        "priority": r.params.priority, "effective_priority": m.effective_priority(now),
        "blocked": m.blocked, "handing_over": m.handing_over,
        "faults": [{"name": n, "blocking": b, "reason": why}
                   for n, (b, why) in m.faults.items()],
        "peer": peer, "peers_configured": [str(p) for p in r.cfg.peers],
        "vips": r.vips.describe(), "vips_held": r._held, "lease": r.cfg.lease,
        "epoch": r.epoch,
        "last_takeover": {k: ago(v) for k, v in r._marks.items()},
        "heartbeats": {
            "sent": dict(t.sent) if t else {}, "received": dict(t.received) if t else {},
            "rejected": {k: v for k, v in (t.dropped if t else {}).items() if v},
        },
        "transitions": [
            {"ago": ago(x.at), "from": x.from_role.name.lower(),
             "to": x.to_role.name.lower(), "reason": x.reason}
            for x in list(m.history)[-10:]
        ],
    }  # fmt: skip
