"""HA drills: a planned handover and a fault rehearsal on a live pair, measured as timelines.

``drill_handover`` (make before break) and ``drill_fault`` (drop the VIPs and go silent) drive
a running pair member (a ``DrillHost``: ``hacontrol.ha.runner.HaRunner``) through its role
machine and wait, bounded, for the peer to take over. The timeline comes from the peer's
heartbeat takeover block (``hacontrol.ha.peer.peer_takeover``), in seconds from the drill's
start on this node's clock. ``DrillError`` says why a drill cannot run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.ha import fsm_types as ft
from hacontrol.ha.fsm import Machine
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.peer import PeerWatch, peer_takeover
from hacontrol.ha.timeline import TakeoverMarks

__all__ = ["DrillError", "DrillHost", "drill_fault", "drill_handover", "peer_takeover"]

log = logs.get("hacontrol.ha")


class DrillError(Exception):
    """A drill cannot run (this node is not active, no peer able to take over...)."""


class DrillHost(Protocol):
    """What a drill needs of the pair member it runs on."""

    clock: Clock

    @property
    def fsm(self) -> Machine: ...

    @property
    def peer(self) -> PeerWatch: ...

    @property
    def marks(self) -> TakeoverMarks: ...

    def feed(self, ev: ft.Event) -> None:
        """Feed an event to the role machine and act on what it returns."""

    async def wait_until(self, cond: Callable[[], bool], within: float) -> None:
        """Wait until ``cond()`` holds, re-checked at each machine change; TimeoutError after
        ``within`` seconds."""

    async def settle(self, within: float) -> None:
        """Wait (bounded, no error) until the queued actions have run."""


def _role(r: DrillHost) -> str:
    return r.fsm.role.name.lower()


async def _peer_announced(r: DrillHost, within: float) -> None:
    """Wait (bounded) until the peer is active and its heartbeat reports an announcement."""
    with contextlib.suppress(TimeoutError):
        await r.wait_until(r.peer.announced, within)


async def drill_handover(r: DrillHost) -> dict[str, Any]:
    """Planned handover: this active node hands over (make before break). Returns the
    timeline in seconds from the start; ``gap`` is the time no node held the VIPs (0 when
    the peer added them before we removed ours; ``overlap`` says by how much)."""
    if r.fsm.role is not Role.ACTIVE:
        raise DrillError(f"this node is {_role(r)}, not active")
    t0 = r.clock()
    r.feed(ft.DrillHandover(t0))
    if not r.fsm.handing_over:
        raise DrillError("no live backup peer able to take over")
    r.peer.forget_active()
    with contextlib.suppress(TimeoutError):
        await r.wait_until(lambda: r.fsm.role is not Role.ACTIVE, r.fsm.p.handover_wait)
    await r.settle(5.0)
    ok = r.fsm.role is not Role.ACTIVE
    if ok:  # let a heartbeat carrying the peer's first announcement arrive
        await _peer_announced(r, 5 * r.fsm.p.interval + 0.5)
    out: dict[str, Any] = {"drill": "handover", "ok": ok, "handover_sent": 0.0}
    out.update(r.peer.takeover(t0))
    released = r.marks.get("released") if ok else None
    out["released_here"] = None if released is None else round(released - t0, 4)
    if ok and out.get("vip_added") is not None and released is not None:
        out["overlap"] = round(released - t0 - out["vip_added"], 4)
        out["gap"] = max(0.0, -out["overlap"])
    if not ok:
        out["error"] = "the peer did not take over in time; this node kept the VIPs"
    log.info("ha.drill", **{k: v for k, v in out.items() if k != "drill"}, kind="handover",
             reason="planned handover drill")  # fmt: skip
    return out


async def drill_fault(r: DrillHost, seconds: float) -> dict[str, Any]:
    """Unplanned-failover rehearsal: this active node drops its VIPs and goes silent for
    ``seconds`` (it keeps listening, to time the peer's takeover). ``gap`` is the time from
    the fault until the peer's first announcement of the VIPs."""
    if not r.fsm.p.dead_interval < seconds <= 600:
        dead = f"{r.fsm.p.dead_interval:g}"
        raise DrillError(f"seconds must exceed the dead interval ({dead}s) and be <= 600")
    if r.fsm.role is not Role.ACTIVE:
        raise DrillError(f"this node is {_role(r)}, not active")
    t0 = r.clock()
    r.peer.forget_active()
    r.feed(ft.DrillFault(t0, seconds))
    await r.settle(5.0)
    with contextlib.suppress(TimeoutError):
        await r.wait_until(lambda: r.peer.active_since is not None, seconds)
    await _peer_announced(r, max(0.0, t0 + seconds - r.clock()))
    out: dict[str, Any] = {"drill": "fault", "seconds": seconds, "fault": 0.0}
    out.update(r.peer.takeover(t0))
    out["ok"] = out.get("announcements_sent") is not None
    out["gap"] = out.get("announcements_sent")
    with contextlib.suppress(TimeoutError):
        await r.wait_until(lambda: not r.fsm.silent, seconds + 2 * r.fsm.p.interval)
    log.info("ha.drill", **{k: v for k, v in out.items() if k != "drill"}, kind="fault",
             reason="fault drill")  # fmt: skip
    return out
