"""HA drills: a planned handover and a fault rehearsal on a live pair, measured as timelines.

``drill_handover`` (make before break) and ``drill_fault`` (drop the VIPs and go silent) drive
a running ``HaRunner`` through its role machine and wait, bounded, for the peer to take over.
The timeline comes from the peer's heartbeat takeover block (``peer_takeover``), in seconds from
the drill's start on this node's clock. ``DrillError`` says why a drill cannot run.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from hacontrol import logs
from hacontrol.ha import fsm_types as ft
from hacontrol.ha import packet as pk
from hacontrol.ha.fsm_types import Role

if TYPE_CHECKING:
    from hacontrol.ha.runner import HaRunner

log = logs.get("hacontrol.ha")


class DrillError(Exception):
    """A drill cannot run (this node is not active, no peer able to take over...)."""


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
    if msg is None or at is None or Role(int(msg.role)) is not Role.ACTIVE:
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


async def _peer_announced(r: HaRunner, within: float) -> None:
    """Wait (bounded) until the peer is active and its heartbeat reports an announcement."""

    def seen() -> bool:
        msg = r._peer_last
        return msg is not None and msg.takeover.announce_count > 0

    with contextlib.suppress(TimeoutError):
        await r._wait(lambda: r._peer_active_at is not None and seen(), within)


async def drill_handover(r: HaRunner) -> dict[str, Any]:
    """Planned handover: this active node hands over (make before break). Returns the
    timeline in seconds from the start; ``gap`` is the time no node held the VIPs (0 when
    the peer added them before we removed ours; ``overlap`` says by how much)."""
    if r.fsm.role is not Role.ACTIVE:
        raise DrillError(f"this node is {r.role}, not active")
    t0 = r.clock()
    r._feed(ft.DrillHandover(t0))
    if not r.fsm.handing_over:
        raise DrillError("no live backup peer able to take over")
    r._peer_active_at = r._peer_first_active = None
    with contextlib.suppress(TimeoutError):
        await r._wait(lambda: r.fsm.role is not Role.ACTIVE, r.params.handover_wait)
    await r._drain(5.0)
    ok = r.fsm.role is not Role.ACTIVE
    if ok:  # let a heartbeat carrying the peer's first announcement arrive
        await _peer_announced(r, 5 * r.cfg.interval + 0.5)
    out: dict[str, Any] = {"drill": "handover", "ok": ok, "handover_sent": 0.0}
    out.update(
        peer_takeover(r._peer_last, r._peer_active_at, r._peer_last_at, t0, r._peer_first_active)
    )
    released = r._marks.get("released") if ok else None
    out["released_here"] = None if released is None else round(released - t0, 4)
    if ok and out.get("vip_added") is not None and released is not None:
        out["overlap"] = round(released - t0 - out["vip_added"], 4)
        out["gap"] = max(0.0, -out["overlap"])
    if not ok:
        out["error"] = "the peer did not take over in time; this node kept the VIPs"
    log.info("ha.drill", **{k: v for k, v in out.items() if k != "drill"}, kind="handover",
             reason="planned handover drill")  # fmt: skip
    return out


async def drill_fault(r: HaRunner, seconds: float) -> dict[str, Any]:
    """Unplanned-failover rehearsal: this active node drops its VIPs and goes silent for
    ``seconds`` (it keeps listening, to time the peer's takeover). ``gap`` is the time from
    the fault until the peer's first announcement of the VIPs."""
    if not r.params.dead_interval < seconds <= 600:
        dead = f"{r.params.dead_interval:g}"
        raise DrillError(f"seconds must exceed the dead interval ({dead}s) and be <= 600")
    if r.fsm.role is not Role.ACTIVE:
        raise DrillError(f"this node is {r.role}, not active")
    t0 = r.clock()
    r._peer_active_at = r._peer_first_active = None
    r._feed(ft.DrillFault(t0, seconds))
    await r._drain(5.0)
    with contextlib.suppress(TimeoutError):
        await r._wait(lambda: r._peer_active_at is not None, seconds)
    await _peer_announced(r, max(0.0, t0 + seconds - r.clock()))
    out: dict[str, Any] = {"drill": "fault", "seconds": seconds, "fault": 0.0}
    out.update(
        peer_takeover(r._peer_last, r._peer_active_at, r._peer_last_at, t0, r._peer_first_active)
    )
    out["ok"] = out.get("announcements_sent") is not None
    out["gap"] = out.get("announcements_sent")
    with contextlib.suppress(TimeoutError):
        await r._wait(lambda: not r.fsm.silent, seconds + 2 * r.cfg.interval)
    log.info("ha.drill", **{k: v for k, v in out.items() if k != "drill"}, kind="fault",
             reason="fault drill")  # fmt: skip
    return out
