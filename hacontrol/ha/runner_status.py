"""The HA runner's status document: the ``ha`` block of ``GET /status`` (and ``hacontrol status``).

``runner_status`` builds plain JSON values from what the runner hands it: the role machine
(role, reason, peer, faults, recent transitions), the peer's paths, the VIPs, the takeover
marks and the heartbeat counters (with the read gaps per path, hacontrol.ha.read_gap); it
changes nothing. Times are seconds ago on the runner's
monotonic clock, except ``since`` (wall-clock UTC, for people).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from hacontrol.ha.fsm import Machine


class Counters(Protocol):
    """The heartbeat counters (``hacontrol.ha.transport.HaTransport``), per path or reason."""

    @property
    def sent(self) -> Mapping[str, int]: ...

    @property
    def received(self) -> Mapping[str, int]: ...

    @property
    def dropped(self) -> Mapping[str, int]: ...

    def read_gaps(self) -> Mapping[str, Mapping[str, float | int]]: ...


def runner_status(
    m: Machine,
    *,
    now: float,
    node: str,
    epoch: int,
    peers_configured: Sequence[str],
    paths: Mapping[str, float],
    vips: list[dict[str, object]],
    vips_held: bool,
    lease: float | None,
    last_takeover: Mapping[str, float],
    counters: Counters | None,
) -> dict[str, Any]:
    """The status document (plain JSON values, read only). ``paths``: when each peer path was
    last heard; ``last_takeover``: each takeover mark as seconds ago."""
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
            "paths": {p: {"last_heard_ago": ago(t)} for p, t in sorted(paths.items())},
        }  # fmt: skip
    t = counters
    return {
        "node": node, "role": m.role.name.lower(), "reason": m.reason,
        "since_ago": ago(m.since), "since": time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall - (now - m.since))),
        "priority": m.p.priority, "effective_priority": m.effective_priority(now),
        "blocked": m.blocked, "handing_over": m.handing_over,
        "faults": [{"name": n, "blocking": b, "reason": why}
                   for n, (b, why) in m.faults.items()],
        "peer": peer, "peers_configured": list(peers_configured),
        "vips": vips, "vips_held": vips_held, "lease": lease,
        "epoch": epoch,
        "last_takeover": dict(last_takeover),
        "heartbeats": {
            "sent": dict(t.sent) if t else {}, "received": dict(t.received) if t else {},
            "rejected": {k: v for k, v in (t.dropped if t else {}).items() if v},
            "read_gaps": {p: dict(g) for p, g in t.read_gaps().items()} if t else {},
        },
        "transitions": [
            {"ago": ago(x.at), "from": x.from_role.name.lower(),
             "to": x.to_role.name.lower(), "reason": x.reason}
            for x in list(m.history)[-10:]
        ],
    }  # fmt: skip
