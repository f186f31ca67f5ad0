"""The HA runner's actions: the VIP group as this node holds it, and the one worker that acts.

``VipActions`` owns everything about executing the role machine's actions (hacontrol.ha.fsm):
the queue (the machine's actions plus its own lease renewals and drain ends), whether the VIPs
are held or being taken, the last renewal, the announce burst, the gateway probe and the side
tasks (announce bursts, notify runs) that ``close`` awaits, and the connection hand-off
(hacontrol.ha.handoff, nftables plane) with its drain. ``run`` executes the queue in order
through the Protocols in hacontrol.ha.interfaces: take/renew/release the VIPs, heartbeat now,
announce, notify, a fresh gateway probe. Before a take from a live peer that holds the VIPs it
starts the drain. An I/O error is logged as ``ha.vip_error``, a bug as ``ha.action_error``;
neither stops the worker. What it needs of the runner comes in as ``Hooks`` (plain callables),
the takeover marks as ``TakeoverMarks`` and the peer as ``PeerWatch``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hacontrol import logs
from hacontrol.ha import fsm_types as ft
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.interfaces import HaIoError, Notifier, Tracker, VipManager
from hacontrol.ha.peer import PeerWatch, from_wire
from hacontrol.ha.timeline import TakeoverMarks

if TYPE_CHECKING:
    from hacontrol.ha.handoff import Handoff

__all__ = ["EndDrain", "Hooks", "Job", "Renew", "VipActions"]

log = logs.get("hacontrol.ha")


class Renew:
    """Internal action: push the lease forward."""


class EndDrain:
    """Internal action: end the connection hand-off drain (``hacontrol.ha.handoff``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


Job = ft.Action | Renew | EndDrain  # what the queue holds


@dataclass(frozen=True)
class Hooks:
    """What the actions need of the runner."""

    role: Callable[[], Role]  # the machine's role now
    peer_alive: Callable[[float], bool]  # the machine's verdict at ``now``
    feed: Callable[[ft.Event], None]  # an event for the machine (a gateway probe's answer)
    heartbeat_now: Callable[[], None]  # send a heartbeat at once


class VipActions:
    """The action queue and the VIP group's state on this node (see the module doc)."""

    def __init__(
        self,
        vips: VipManager,
        lease: float | None,
        *,
        clock: Callable[[], float],
        hooks: Hooks,
        marks: TakeoverMarks,
        peer: PeerWatch,
        notifier: Notifier,
        tracker: Tracker | None = None,
        gateway: str | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.vips, self.lease, self.clock, self.hooks = vips, lease, clock, hooks
        self.marks, self.peer, self.tracker, self.gateway = marks, peer, tracker, gateway
        self.notifier = notifier  # replaced by a reload that changes ha.notify
        self.handoff = handoff  # in-flight connections follow the VIP move (nftables plane)
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._held = self._taking = self._drain_ending = False
        self._last_renew = float("-inf")
        self._announce_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> bool:
        """The VIPs are held here (the last take succeeded and no release followed)."""
        return self._held

    @property
    def taking(self) -> bool:
        """A take is queued or running: do not say "active" yet (make before break)."""
        return self._taking

    def submit(self, act: Job) -> None:
        """Queue one action (executed in order by ``run``)."""
        self._taking |= isinstance(act, ft.TakeVips)
        self._queue.put_nowait(act)
        self._idle.clear()

    def tick(self, now: float, stalled: bool) -> None:
        """Each tick: retry a failed take, renew the lease when due, end a drain when due."""
        self._maybe_renew(now, stalled)
        self._maybe_end_drain(now)

    def _maybe_renew(self, now: float, stalled: bool) -> None:
        role, lease = self.hooks.role(), self.lease
        if role not in (Role.ACTIVE, Role.STOPPING) or self._taking or stalled:
            return
        if not self._held and role is Role.ACTIVE:  # a failed take: try again every tick
            for act in (ft.TakeVips(adopt=True), ft.Announce(), ft.SendHeartbeatNow()):
                self.submit(act)
        elif self._held and lease is not None and now - self._last_renew >= min(lease / 3, 1.0):
            self._last_renew = now
            self.submit(Renew())

    def _maybe_end_drain(self, now: float) -> None:
        h = self.handoff
        if h is None or not h.draining or self._drain_ending:
            return
        why = None
        if h.due(now):
            why = "drain period over"
        elif not self.hooks.peer_alive(now) and not self._peer_stopped():
            why = "peer dead: nothing to hand off to"
        if why is not None:
            self._drain_ending = True
            self.submit(EndDrain(why))

    def _peer_stopped(self) -> bool:
        """The peer's last word was a clean stop (STOPPING): its daemon is gone, its kernel
        keeps the connections' NAT state (a restart, an upgrade), so the drain goes on until
        its period ends. A peer silent after ACTIVE or BACKUP may be a dead host: end it."""
        last = self.peer.last
        return last is not None and from_wire(last.role) is Role.STOPPING

    async def settle(self, within: float) -> None:
        """Wait (bounded) until every queued action has run."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._idle.wait()

    async def run(self) -> None:
        """The one action task: forever, the next queued action."""
        while True:
            act = await self._queue.get()
            try:
                await self._execute(act)
            except HaIoError as e:
                log.error("ha.vip_error", action=type(act).__name__, reason=str(e))
            except Exception as e:  # a bug: keep the daemon running, loudly
                log.exception("ha.action_error", action=type(act).__name__, reason=repr(e))
            finally:
                if isinstance(act, ft.TakeVips):
                    self._taking = False
                if self._queue.empty():
                    self._idle.set()

    async def close(self) -> None:
        """Stop the gateway probe and wait for the side tasks (after ``run`` was cancelled)."""
        if self._probe_task is not None:
            self._probe_task.cancel()
        for t in list(self._side):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _execute(self, act: Job) -> None:
        """One action (a stale take, renewal or announce is skipped)."""
        role = self.hooks.role()
        if isinstance(act, ft.TakeVips):
            if role is not Role.ACTIVE:
                return  # superseded: the machine moved on before this ran
            self._taking = True
            await self._begin_drain()
            await self.vips.take(self.lease)
            self._held, self._last_renew = True, self.clock()
            self.marks.first("vip_added", self._last_renew)
        elif isinstance(act, Renew):
            if self._held and role in (Role.ACTIVE, Role.STOPPING):
                await self.vips.renew(self.lease)
        elif isinstance(act, ft.ReleaseVips):
            if self._announce_task is not None:
                self._announce_task.cancel()
            self._held = False
            await self.vips.release()
            self.marks.last("released", self.clock())
            if self.handoff is not None and self.handoff.draining:
                self.submit(EndDrain("released the VIP group"))
        elif isinstance(act, EndDrain):
            self._drain_ending = False
            if self.handoff is not None:
                await self.handoff.end(act.reason)
        elif isinstance(act, ft.SendHeartbeatNow):
            self.hooks.heartbeat_now()
        elif isinstance(act, ft.Announce):
            if self._held and (self._announce_task is None or self._announce_task.done()):
                self._announce_task = self._spawn(self._announce())
                await asyncio.sleep(0)  # its first round goes out before the next heartbeat
        elif isinstance(act, ft.Notify):
            self._spawn(self.notifier.notify(act.role, act.reason))
        elif isinstance(act, ft.ProbeGateway) and (not self._probe_task or self._probe_task.done()):
            self._probe_task = self._spawn(self._probe_gateway())

    async def _begin_drain(self) -> None:
        """Before taking the VIPs from a live peer that holds them: hand its flows back to it."""
        h, now, holder = self.handoff, self.clock(), self.peer.holder()
        if h is None or holder is None or not self.hooks.peer_alive(now):
            return
        try:
            await h.begin(now, f"taking the VIP group from {holder}, which holds its flows")
        except HaIoError as e:
            log.error("ha.handoff_error", op="begin", reason=str(e))

    async def _probe_gateway(self) -> None:
        """One fresh gateway probe for the machine (a takeover waits for its answer)."""
        gw, why = self.gateway, ""
        try:
            if self.tracker is None:
                raise HaIoError("no tracker")
            ok = await self.tracker.probe_gateway()
        except Exception as e:  # the machine retries; its own timeout covers a hang
            ok, why = False, f"gateway {gw} probe failed: {e}"
        if not ok:
            why = why or f"gateway {gw} did not answer a fresh probe"
        self.hooks.feed(ft.GatewayChecked(self.clock(), ok, why))

    async def _announce(self) -> None:
        """One announce burst for the held VIPs (counted for the takeover timeline)."""
        self.marks.first("announced", self.clock())
        try:
            self.marks.add_announced(await self.vips.announce())
        except HaIoError as e:
            log.error("ha.announce_error", reason=str(e))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A side task (announce burst, notify run, gateway probe) that ``close`` awaits."""
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)
        return task
