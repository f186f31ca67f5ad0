"""The HA runner: the asyncio shell around the pure role machine (hacontrol.ha.fsm).

It owns the machine, the timers (a tick every ``interval`` and a deadline tick just after the
peer's dead interval, both on the running event loop, whose time is the injected clock), the
heartbeat transport and the tracker task, and feeds the machine ticks, heartbeats, local faults,
drills and stop. What it says and who sends it is ``Speaker``'s (hacontrol.ha.beat_speaker): in
the daemon (``beat="process"``) the periodic heartbeats leave from a sender process of their own
(hacontrol.ha.beat_proc), which the tick and every machine step only hand the current content
to. What the machine returns is handled here (``ha.*`` logs; a ``Transition`` is logged as
``ha.transition``, counted and shown in the role gauge) or queued to the action worker. The state
split out of it has one owner each: ``VipActions`` (hacontrol.ha.runner_actions: the action queue,
whether the VIPs are held, the lease renewal, the announce burst, the connection hand-off drain),
``PeerWatch`` (hacontrol.ha.peer: the peer's messages and paths) and ``TakeoverMarks``
(hacontrol.ha.timeline). Drills (hacontrol.ha.drills) use the runner's public surface (``feed``,
``wait_until``, ``settle``, ``peer``, ``marks``); ``status`` is built by hacontrol.ha.runner_status
from plain values; ``reconfigure`` takes what a reload may change live.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.ha import drills
from hacontrol.ha import fsm_types as ft
from hacontrol.ha import packet as pk
from hacontrol.ha.beat_speaker import Speaker
from hacontrol.ha.drills import DrillError
from hacontrol.ha.fsm import Machine, Params
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.interfaces import HaIoError, Notifier, Tracker, TrackEvent, VipManager
from hacontrol.ha.peer import PeerWatch, peer_event
from hacontrol.ha.read_gap import ReadGaps
from hacontrol.ha.runner_actions import Hooks, VipActions
from hacontrol.ha.runner_status import runner_status
from hacontrol.ha.timeline import TakeoverMarks
from hacontrol.ha.transport import HaTransport, next_epoch
from hacontrol.metrics import Metrics
from hacontrol.model import HAConfig
from hacontrol.tasks import cancel_and_wait

if TYPE_CHECKING:
    from hacontrol.ha.handoff import Handoff
    from hacontrol.ha.handoff_rules import Triple

__all__ = ["Attach", "DrillError", "HaRunner", "HealthSummary"]

log = logs.get("hacontrol.ha")

HealthSummary = Callable[[], Iterable[tuple[str, int, int]]]  # (service, healthy, total)
Attach = Callable[[HaTransport], Awaitable[None]]  # gives the transport its datagram endpoint


class HaRunner:
    """One member of an HA pair: start, stop, status, drills and live reconfiguration; the
    role lives in ``fsm``."""

    def __init__(
        self,
        cfg: HAConfig,
        node_name: str,
        key: bytes,
        *,
        clock: Clock,
        metrics: Metrics,
        vips: VipManager,
        notifier: Notifier,
        health_summary: HealthSummary,
        digest: str,
        state_dir: str,
        tracker: Tracker | None = None,
        sock: socket.socket | None = None,
        handoff: Handoff | None = None,
        attach: Attach | None = None,
        beat: str = "loop",
        stall_factor: float = 2.0,
    ) -> None:
        """``sock``: an already bound heartbeat socket; ``attach``: connects the transport to
        another datagram endpoint instead of a UDP socket (in-memory links in tests);
        ``beat``: who sends the periodic heartbeats: ``"process"`` (the daemon: a sender process,
        hacontrol.ha.beat_proc), ``"thread"`` (hacontrol.ha.beat) or ``"loop"`` (its tick: the
        virtual-time tests); ``stall_factor``: an
        event loop silent this many intervals has stalled (the machine's rule, and how long the
        sender thread speaks for a silent loop)."""
        if cfg.bind is None:  # the loader requires it with the own protocol (not with vrrp3)
            raise ValueError("ha.bind is required by the own protocol (ha.protocol: hacontrol)")
        self.cfg, self.node, self.key, self.clock = cfg, node_name, key, clock
        self.bind = cfg.bind
        self.metrics, self.vips, self.tracker = metrics, vips, tracker
        self.health_summary, self.state_dir = health_summary, state_dir
        self._sock, self._attach = sock, attach
        self.params = Params(
            node=node_name, priority=cfg.priority, interval=cfg.interval,
            dead_after=cfg.dead_after, preempt=cfg.preempt, preempt_delay=cfg.preempt_delay,
            penalty=cfg.track.priority_penalty,
            confirm_gateway=tracker is not None and cfg.track.gateway is not None,
            confirm_timeout=cfg.track.gateway_interval + cfg.interval, stall_factor=stall_factor,
        )  # fmt: skip
        self.fsm = Machine(self.params, clock())
        self.transport: HaTransport | None = None
        self.epoch = 0
        self.peer = PeerWatch()
        self.marks = TakeoverMarks()
        hooks = Hooks(
            role=lambda: self.fsm.role,
            peer_alive=lambda now: self.fsm.peer_alive(now),
            feed=self.feed,
            heartbeat_now=lambda: self.speaker.send_now(self.clock()),
        )
        gateway = None if cfg.track.gateway is None else str(cfg.track.gateway)
        self.actions = VipActions(
            vips, cfg.lease, clock=clock, hooks=hooks, marks=self.marks, peer=self.peer,
            notifier=notifier, tracker=tracker, gateway=gateway, handoff=handoff,
        )  # fmt: skip
        self.speaker = Speaker(
            self.params, digest, machine=lambda: self.fsm, actions=self.actions,
            marks=self.marks, health_summary=health_summary, clock=clock, metrics=metrics,
            mode=beat,
        )  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._health: tuple[int, int] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        # the overrides messages heard (type 3): hacontrol.overrides.replicate sets it
        self.on_overrides: Callable[[pk.Message, str, float], None] | None = None

    # -- public surface --------------------------------------------------------------------

    @property
    def role(self) -> str:
        return self.fsm.role.name.lower()

    @property
    def handoff(self) -> Handoff | None:
        """The connection hand-off (nftables plane), None without one."""
        return self.actions.handoff

    @handoff.setter
    def handoff(self, handoff: Handoff | None) -> None:
        self.actions.handoff = handoff

    def reconfigure(
        self,
        *,
        notifier: Notifier | None = None,
        digest: str | None = None,
        handoff_services: tuple[list[Triple], list[Triple]] | None = None,
    ) -> None:
        """What a reload may change while running: the notify command, the config digest the
        heartbeats carry, the services the connection hand-off covers (from its next drain).
        ``None`` keeps the current one. Never touches the VIPs."""
        if notifier is not None:
            self.actions.notifier = notifier
        if digest is not None:
            self.speaker.set_digest(digest)
        if handoff_services is not None and self.actions.handoff is not None:
            self.actions.handoff.cover(*handoff_services)

    def feed(self, ev: ft.Event) -> None:
        """Feed ``ev`` to the role machine: log, count and queue what it returns."""
        for a in self.fsm.step(ev):
            if isinstance(a, ft.Log):
                level = a.level if a.level in ("warning", "error") else "info"
                getattr(log, level)(a.event, reason=a.reason, node=self.node, **dict(a.fields))
            elif isinstance(a, ft.Transition):
                self._transition(a)
            else:
                self.actions.submit(a)
        self.speaker.changed(ev.now)  # the thread's content follows every step
        self._changed.set()

    async def wait_until(self, cond: Callable[[], bool], within: float) -> None:
        """Wait until ``cond()`` holds, re-checked at each machine change and every interval;
        TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            while not cond():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.cfg.interval):
                        await self._changed.wait()

    async def settle(self, within: float) -> None:
        """Wait (bounded) until the queued actions have run."""
        await self.actions.settle(within)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.epoch = next_epoch(self.state_dir)
        try:
            present = await self.vips.present()
        except HaIoError as e:
            log.error("ha.vip_error", op="present", reason=str(e))
            present = False
        handoff = self.actions.handoff
        if handoff is not None:  # before the socket: a heartbeat must meet the machine
            try:
                await handoff.open()
            except HaIoError as e:
                log.error("ha.handoff_error", op="open", reason=f"{e}; moves drop in-flight flows")
                self.actions.handoff = None
        now = self.clock()
        self.fsm = Machine(self.params, now)  # fed Start before any heartbeat can reach it
        self._set_role_gauge()
        log.info("ha.start", epoch=self.epoch, vips_present=present, reason="listening first")
        self.feed(ft.Start(now, present))
        self.transport = HaTransport(
            self.bind, self.cfg.peers, self.key, node=self.node, epoch=self.epoch,
            metrics=self.metrics, clock=self.clock, on_message=self._on_message,
            on_learn=lambda: self.speaker.send_now(self.clock()),  # echo a new peer nonce now
            on_overrides=lambda msg, path, now: self.on_overrides and self.on_overrides(
                msg, path, now),
            reads=ReadGaps(self.cfg.interval, self.params.dead_interval),
        )  # fmt: skip
        if self._attach is not None:
            await self._attach(self.transport)
        else:
            await self.transport.open(self._sock)
        self.speaker.attach(self.transport)
        self._arm_deadline()
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name="ha-tick"),
            asyncio.create_task(self.actions.run(), name="ha-actions"),
        ]
        if self.tracker is not None:
            self._tasks.append(asyncio.create_task(self._track(self.tracker), name="ha-track"))

    async def stop(self, graceful: bool = True) -> None:
        """Graceful: hand over to a live peer (it takes the VIPs at once), wait until it is active
        (bounded), then release the VIPs. Not graceful: stop at once and leave the VIPs to their
        lease (a restarted daemon adopts them if it should be active)."""
        if graceful and self._tasks:
            self.feed(ft.Stop(self.clock()))
            bound = self.params.handover_wait + self.cfg.interval * 2 + 5.0
            with contextlib.suppress(TimeoutError):
                await self.wait_until(lambda: self.fsm.done, bound)
            await self.actions.settle(5.0)
            self.speaker.farewell(self.clock())  # "stopping": a clean stop, not a dead host
        if self._deadline is not None:
            self._deadline.cancel()
        try:
            await cancel_and_wait(*self._tasks, quiet=True)
            await self.actions.close()
        finally:
            self.speaker.stop()  # joined before the socket closes
        self._tasks.clear()
        if self.transport is not None:
            self.transport.close()
        if self.actions.handoff is not None:
            await self.actions.handoff.close()
        log.info("ha.stop", graceful=graceful, reason="stopped")

    # -- what the machine and the world say ------------------------------------------------

    def _transition(self, t: ft.Transition) -> None:
        frm, to = t.from_role.name.lower(), t.to_role.name.lower()
        log.info("ha.transition", reason=t.reason, node=self.node, from_role=frm, to_role=to)
        self.metrics.ha_transitions.labels(from_role=frm, to_role=to).inc()
        self._set_role_gauge()
        if t.to_role is Role.ACTIVE:
            self.marks.begin(t.at)

    def _on_message(self, msg: pk.Message, path: str, now: float) -> None:
        pr = self.fsm.peer
        if not self.peer.admits(msg, path, pr.name if pr else None, self.fsm.peer_alive(now)):
            return
        self.peer.heard(msg, path, now)
        self._arm_deadline()
        self.feed(peer_event(msg, now, self.speaker.digest))

    def _on_track(self, ev: TrackEvent) -> None:
        self.feed(ft.LocalFault(self.clock(), ev.name, ev.failed, ev.blocking, ev.reason))

    async def _track(self, tracker: Tracker) -> None:
        try:
            await tracker.run(self._on_track)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("ha.track_error", reason=f"tracker stopped: {e!r}")

    # -- timers ----------------------------------------------------------------------------

    def _arm_deadline(self) -> None:
        """An extra tick just after the peer's dead interval would end (or this node's start-up
        listen): failure is then detected at the dead interval, not up to one tick later."""
        if self._deadline is not None:
            self._deadline.cancel()
        delay = self.params.dead_interval + min(0.002, self.cfg.interval / 10)
        self._deadline = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline = None
        try:
            self.feed(ft.Tick(self.clock()))
        except Exception as e:
            log.exception("ha.tick_error", reason=repr(e))

    async def _tick_loop(self) -> None:
        interval = self.cfg.interval
        next_at = self.clock()
        while True:
            now = self.clock()
            try:
                summary = self._feed_health(now)
                self.feed(ft.Tick(now))
                if self.transport is not None:
                    self.transport.watch(now)  # a peer silent past its dead interval: no read gap
                self.actions.tick(now, stalled=self.fsm.stall_until is not None)
                self.speaker.tick(now, summary)
            except Exception as e:  # a bug: keep ticking (and heartbeating), loudly
                log.exception("ha.tick_error", reason=repr(e))
            next_at = max(next_at + interval, now + interval / 10)
            await asyncio.sleep(max(0.0, next_at - self.clock()))

    def _feed_health(self, now: float) -> list[tuple[str, int, int]] | None:
        """Read the health summary once for this tick, feed its totals to the machine when they
        changed, and return it for the tick's heartbeat (None when reading it failed)."""
        try:
            summary = [(n, int(h), int(t)) for n, h, t in self.health_summary()]
        except Exception as e:  # a bug elsewhere must not stop the heartbeats
            log.error("ha.health_error", reason=repr(e))
            return None
        totals = (sum(h for _, h, _ in summary), sum(t for _, _, t in summary))
        if totals != self._health:
            self._health = totals
            self.feed(ft.LocalHealth(now, *totals))
        return summary

    # -- heartbeats (hacontrol.ha.beat_speaker) ---------------------------------------------

    def send_overrides(self, payload: bytes) -> int:
        """Send one overrides message (type 3) with ``payload`` on every path; the copies sent
        (0 before start, after stop, or while silent: a fault drill)."""
        return self.speaker.send_overrides(payload)

    def _set_role_gauge(self) -> None:
        for r in Role:
            self.metrics.ha_role.labels(role=r.name.lower()).set(1 if r is self.fsm.role else 0)

    # -- status and drills (hacontrol.ha.runner_status, hacontrol.ha.drills) -------------

    def status(self) -> dict[str, Any]:
        """The ``ha`` block of the daemon's status (see ``runner_status``)."""
        now = self.clock()
        doc = runner_status(
            self.fsm, now=now, node=self.node, epoch=self.epoch,
            peers_configured=[str(p) for p in self.cfg.peers], paths=self.peer.paths(),
            vips=self.vips.describe(), vips_held=self.actions.held, lease=self.cfg.lease,
            last_takeover=self.marks.ago(now), counters=self.transport,
        )  # fmt: skip
        doc["beat"] = self.speaker.status()
        return doc

    async def drill_handover(self) -> dict[str, Any]:
        """Planned handover drill; the timeline (see ``hacontrol.ha.drills.drill_handover``)."""
        return await drills.drill_handover(self)

    async def drill_fault(self, seconds: float) -> dict[str, Any]:
        """Fault drill for ``seconds``; the timeline (see ``hacontrol.ha.drills.drill_fault``)."""
        return await drills.drill_fault(self, seconds)
