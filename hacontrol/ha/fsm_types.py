"""The value types the HA state machine (hacontrol.ha.fsm) consumes and produces.

Events carry ``now`` (monotonic seconds from the injected clock); actions are what the runner must
do. All frozen, plain values: no I/O here. ``Role`` is the one role enum of the code; the wire
carries its own byte values (``hacontrol.ha.packet.WireRole``), mapped to and from it in one place
(``hacontrol.ha.peer.to_wire`` / ``from_wire``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Role(enum.IntEnum):
    STARTING = 0
    BACKUP = 1
    ACTIVE = 2
    FAULT = 3
    STOPPING = 4


# -- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    now: float
    vips_present: bool = False


@dataclass(frozen=True)
class Tick:
    now: float


@dataclass(frozen=True)
class PeerHeard:
    now: float
    name: str
    role: Role
    priority: int
    effective_priority: int
    blocked: bool = False
    yielding: bool = False
    handover: bool = False  # a HANDOVER message: take over now
    healthy: int = 0
    digest_match: bool = True


@dataclass(frozen=True)
class LocalFault:
    now: float
    name: str
    failed: bool
    blocking: bool
    reason: str


@dataclass(frozen=True)
class LocalHealth:
    now: float
    healthy: int
    total: int


@dataclass(frozen=True)
class DrillHandover:
    now: float


@dataclass(frozen=True)
class DrillFault:
    now: float
    seconds: float


@dataclass(frozen=True)
class Stop:
    now: float


@dataclass(frozen=True)
class GatewayChecked:
    """The answer to ``ProbeGateway``: one fresh probe of the tracked gateway, sent after the
    machine asked for it (``ok``: it answered)."""

    now: float
    ok: bool
    reason: str = ""


Event = (
    Start | Tick | PeerHeard | LocalFault | LocalHealth | DrillHandover | DrillFault | Stop
    | GatewayChecked
)  # fmt: skip

# -- actions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakeVips:
    adopt: bool = False


@dataclass(frozen=True)
class ReleaseVips:
    pass


@dataclass(frozen=True)
class Announce:
    pass


@dataclass(frozen=True)
class SendHeartbeatNow:
    pass


@dataclass(frozen=True)
class ProbeGateway:
    """Probe the tracked gateway once, now, and feed the answer back as ``GatewayChecked``."""


@dataclass(frozen=True)
class Notify:
    role: str
    reason: str


@dataclass(frozen=True)
class Log:
    event: str
    reason: str
    level: str = "info"
    fields: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Transition:
    """The machine moved from one role to another (also its ``history`` record). The runner logs
    it as ``ha.transition`` (keys ``from_role``, ``to_role``, ``reason``), counts it and sets the
    role gauge."""

    at: float
    from_role: Role
    to_role: Role
    reason: str


Action = (
    TakeVips | ReleaseVips | Announce | SendHeartbeatNow | ProbeGateway | Notify | Log | Transition
)


@dataclass
class PeerView:
    name: str
    role: Role
    priority: int
    effective_priority: int
    blocked: bool
    yielding: bool
    healthy: int
    last_heard: float
    digest_match: bool
    handover: bool = False  # its last message was a HANDOVER (it gives the VIPs to this node)
    # it went backup -> active while heard alive and this node active: a preemption, not a
    # healed partition (only the reason logged for the resulting double active differs)
    preempting: bool = False
