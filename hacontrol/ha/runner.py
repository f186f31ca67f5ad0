"""The HA runner: the asyncio shell around the pure role machine (hacontrol.ha.fsm).

It owns the timers (a tick every ``interval``, scheduled from the injected clock), the heartbeat
transport, the tracker task and one action worker (hacontrol.ha.runner_actions) that executes the
machine's actions in order (take/renew/release the VIPs, heartbeat now, announce, notify) through
the Protocols in hacontrol.ha.interfaces. It keeps the VIP lease renewed while this node is active
and healthy. Before it takes the VIPs from a live peer that holds them (planned handover,
preemption) the worker starts a connection hand-off drain (hacontrol.ha.handoff, nftables plane):
flows NATed by the peer stay with it; the drain ends when due, when the peer dies or when this
node releases the VIPs.
Every transition is logged as ``ha.transition``. Drills (hacontrol.ha.drills) and ``status()``
(hacontrol.ha.runner_status) are methods here that delegate to those modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.ha import drills
from hacontrol.ha import fsm_types as ft
from hacontrol.ha import packet as pk
from hacontrol.ha.drills import DrillError
from hacontrol.ha.fsm import Machine, Params
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.interfaces import HaIoError, Notifier, Tracker, TrackEvent, VipManager
from hacontrol.ha.runner_actions import EndDrain, Job, Renew, worker
from hacontrol.ha.runner_status import runner_status
from hacontrol.ha.transport import HaTransport, digest_bytes, next_epoch
from hacontrol.metrics import Metrics
from hacontrol.model import HAConfig

if TYPE_CHECKING:
    from hacontrol.ha.handoff import Handoff

__all__ = ["DrillError", "HaRunner", "HealthSummary"]

log = logs.get("hacontrol.ha")

HealthSummary = Callable[[], Iterable[tuple[str, int, int]]]  # (service, healthy, total)


def _fit(name: str) -> str:
    """A service name cut to the wire's 64 UTF-8 bytes (never empty)."""
    return name.encode()[: pk.MAX_NAME].decode("utf-8", "ignore") or "-"


def _ms_ago(now: float, at: float | None) -> int:
    if at is None:
        return pk.NO_TIME
    return min(max(0, int((now - at) * 1000)), pk.NO_TIME - 1)


class HaRunner:
    """One member of an HA pair: start, stop, status and drills; the role lives in ``fsm``."""

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
    ) -> None:
        self.cfg, self.node, self.key, self.clock = cfg, node_name, key, clock
        self.metrics, self.vips, self.notifier, self.tracker = metrics, vips, notifier, tracker
        self.health_summary, self.state_dir, self._sock = health_summary, state_dir, sock
        self.handoff = handoff  # in-flight connections follow the VIP move (nftables plane)
        self.digest = digest_bytes(digest)
        self.params = Params(
            node=node_name, priority=cfg.priority, interval=cfg.interval,
            dead_after=cfg.dead_after, preempt=cfg.preempt, preempt_delay=cfg.preempt_delay,
            penalty=cfg.track.priority_penalty,
            confirm_gateway=tracker is not None and cfg.track.gateway is not None,
            confirm_timeout=cfg.track.gateway_interval + cfg.interval,
        )  # fmt: skip
        self.fsm = Machine(self.params, clock())
        self.transport: HaTransport | None = None
        self.epoch = 0
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._side: set[asyncio.Task[None]] = set()  # announce bursts, notify runs
        self._announce_task: asyncio.Task[None] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._held = self._taking = False
        self._last_renew = float("-inf")
        self._health: tuple[int, int] | None = None
        self._paths: dict[str, float] = {}
        self._peer_last: pk.Message | None = None
        self._peer_last_at = 0.0
        self._peer_active_at: float | None = None  # when a message from an active peer came
        self._peer_first_active: pk.Message | None = None  # that message (drill timelines)
        self._marks: dict[str, float] = {}  # detected, vip_added, announced, hb_active
        self._announce_count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._deadline: asyncio.TimerHandle | None = None
        self._strangers: set[str] = set()
        self._drain_ending = False

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def role(self) -> str:
        return self.fsm.role.name.lower()

    async def start(self) -> None:
        self.epoch = next_epoch(self.state_dir)
        try:
            present = await self.vips.present()
        except HaIoError as e:
            log.error("ha.vip_error", op="present", reason=str(e))
            present = False
        if self.handoff is not None:  # before the socket: a heartbeat must meet the machine
            try:
                await self.handoff.open()
            except HaIoError as e:
                log.error("ha.handoff_error", op="open", reason=f"{e}; moves drop in-flight flows")
                self.handoff = None
        now = self.clock()
        self.fsm = Machine(self.params, now)  # fed Start before any heartbeat can reach it
        self._set_role_gauge()
        log.info("ha.start", epoch=self.epoch, vips_present=present, reason="listening first")
        self._feed(ft.Start(now, present))
        self.transport = HaTransport(
            self.cfg.bind, self.cfg.peers, self.key, node=self.node, epoch=self.epoch,
            metrics=self.metrics, clock=self.clock, on_message=self._on_message,
            on_learn=lambda: self._send_heartbeat(self.clock()),  # echo a new peer nonce now
        )  # fmt: skip
        await self.transport.open(self._sock)
        self._arm_deadline()
        self._tasks = [
            asyncio.create_task(self._tick_loop(), name="ha-tick"),
            asyncio.create_task(worker(self), name="ha-actions"),
        ]
        if self.tracker is not None:
            self._tasks.append(asyncio.create_task(self._track(self.tracker), name="ha-track"))

    async def stop(self, graceful: bool = True) -> None:
        """Graceful: hand over to a live peer (it takes the VIPs at once), wait until it is active
        (bounded), then release the VIPs. Not graceful: stop at once and leave the VIPs to their
        lease (a restarted daemon adopts them if it should be active)."""
        if graceful and self._tasks:
            self._feed(ft.Stop(self.clock()))
            bound = self.params.handover_wait + self.cfg.interval * 2 + 5.0
            with contextlib.suppress(TimeoutError):
                await self._wait(lambda: self.fsm.done, bound)
            await self._drain(5.0)
        if self._deadline is not None:
            self._deadline.cancel()
        for t in [*self._tasks, *([self._probe_task] if self._probe_task else [])]:
            t.cancel()
        for t in [*self._tasks, *self._side]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.transport is not None:
            self.transport.close()
        if self.handoff is not None:
            await self.handoff.close()
        log.info("ha.stop", graceful=graceful, reason="stopped")

    # -- feeding the machine ---------------------------------------------------------------

    def _feed(self, ev: ft.Event) -> None:
        acts = self.fsm.step(ev)
        for a in acts:
            if not isinstance(a, ft.Log):
                self._taking |= isinstance(a, ft.TakeVips)  # no "active" heartbeat until done
                self._queue.put_nowait(a)
                self._idle.clear()
                continue
            fields = dict(a.fields)
            level = a.level if a.level in ("warning", "error") else "info"
            getattr(log, level)(a.event, reason=a.reason, node=self.node, **fields)
            if a.event == "ha.transition":
                frm, to = str(fields["from_role"]), str(fields["to_role"])
                self.metrics.ha_transitions.labels(from_role=frm, to_role=to).inc()
                self._set_role_gauge()
                if to == "active":
                    self._marks, self._announce_count = {"detected": ev.now}, 0
        self._changed.set()

    def _on_message(self, msg: pk.Message, path: str, now: float) -> None:
        pr = self.fsm.peer
        if pr is not None and msg.node != pr.name and self.fsm.peer_alive(now):
            if msg.node not in self._strangers:  # once per name: this is a config error
                self._strangers.add(msg.node)
                why = f"a third node speaks with our key while {pr.name} is the peer; ignored"
                log.error("ha.unexpected_peer", peer=msg.node, path=path, reason=why)
            return
        self._paths[path] = now
        self._peer_last, self._peer_last_at = msg, now
        self._arm_deadline()
        role = Role(int(msg.role))
        if role is Role.ACTIVE and self._peer_active_at is None:
            self._peer_active_at, self._peer_first_active = now, msg
        elif role is not Role.ACTIVE:
            self._peer_active_at = self._peer_first_active = None
        self._feed(
            ft.PeerHeard(
                now, msg.node, role, msg.priority, msg.effective_priority,
                blocked=bool(msg.flags & pk.FLAG_BLOCKED),
                yielding=bool(msg.flags & pk.FLAG_YIELDING),
                handover=msg.type is pk.MsgType.HANDOVER, healthy=msg.healthy_total,
                digest_match=msg.digest == self.digest,
            )
        )  # fmt: skip

    def _on_track(self, ev: TrackEvent) -> None:
        self._feed(ft.LocalFault(self.clock(), ev.name, ev.failed, ev.blocking, ev.reason))

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
            self._feed(ft.Tick(self.clock()))
        except Exception as e:
            log.exception("ha.tick_error", reason=repr(e))

    async def _tick_loop(self) -> None:
        interval = self.cfg.interval
        next_at = self.clock()
        while True:
            now = self.clock()
            try:
                summary = self._feed_health(now)
                self._feed(ft.Tick(now))
                self._maybe_renew(now)
                self._maybe_end_drain(now)
                self._send_heartbeat(now, summary)
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
            self._feed(ft.LocalHealth(now, *totals))
        return summary

    def _maybe_renew(self, now: float) -> None:
        m, lease = self.fsm, self.cfg.lease
        if m.role not in (Role.ACTIVE, Role.STOPPING) or self._taking or m.stall_until is not None:
            return
        if not self._held and m.role is Role.ACTIVE:  # a failed take: try again every tick
            for act in (ft.TakeVips(adopt=True), ft.Announce(), ft.SendHeartbeatNow()):
                self._queue.put_nowait(act)
            self._taking = True
            self._idle.clear()
        elif self._held and lease is not None and now - self._last_renew >= min(lease / 3, 1.0):
            self._last_renew = now
            self._queue.put_nowait(Renew())

    def _maybe_end_drain(self, now: float) -> None:
        h = self.handoff
        if h is None or not h.draining or self._drain_ending:
            return
        why = None
        if h.due(now):
            why = "drain period over"
        elif not self.fsm.peer_alive(now):
            why = "peer dead: nothing to hand off to"
        if why is not None:
            self._drain_ending = True
            self._queue.put_nowait(EndDrain(why))
            self._idle.clear()

    def _message(
        self, now: float, summary: Iterable[tuple[str, int, int]] | None = None
    ) -> pk.Message:
        """The heartbeat to send now; ``summary``: the health summary already read this tick
        (else it is read here)."""
        m = self.fsm
        flags = (
            (pk.FLAG_BLOCKED if m.blocked else 0)
            | (pk.FLAG_YIELDING if m.yielding else 0)
            | (pk.FLAG_VIPS_HELD if self._held else 0)
        )
        top = sorted(self.health_summary() if summary is None else summary)[: pk.MAX_SERVICES]
        mk = self._marks if m.role is Role.ACTIVE else {}
        return pk.Message(
            type=pk.MsgType.HANDOVER if m.handing_over else pk.MsgType.HEARTBEAT,
            node=self.node, role=pk.WireRole(int(m.role)), priority=self.params.priority,
            effective_priority=min(254, m.effective_priority(now)), epoch=0, seq=0,
            digest=self.digest, flags=flags,
            health=tuple(pk.ServiceHealth(_fit(n), min(h, t, 65535), min(t, 65535))
                         for n, h, t in top),
            takeover=pk.Takeover(
                _ms_ago(now, mk.get("detected")), _ms_ago(now, mk.get("vip_added")),
                _ms_ago(now, mk.get("announced")), self._announce_count if mk else 0,
            ),
        )  # fmt: skip

    def _send_heartbeat(
        self, now: float, summary: Iterable[tuple[str, int, int]] | None = None
    ) -> None:
        m = self.fsm
        if self.transport is None or m.silent or (m.done and not m.handing_over):
            return
        if self._taking and m.role is Role.ACTIVE:
            return  # say "active" only once the VIPs are held (make before break)
        self.transport.send(self._message(now, summary))
        if m.role is Role.ACTIVE and self._held and "hb_active" not in self._marks:
            self._marks["hb_active"] = now

    async def _drain(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)

    async def _wait(self, cond: Callable[[], bool], within: float) -> None:
        deadline = self.clock() + within
        while not cond():
            left = deadline - self.clock()
            if left <= 0:
                raise TimeoutError
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, self.cfg.interval))

    def _set_role_gauge(self) -> None:
        for r in Role:
            self.metrics.ha_role.labels(role=r.name.lower()).set(1 if r is self.fsm.role else 0)

    # -- status and drills (hacontrol.ha.runner_status, hacontrol.ha.drills) -------------

    def status(self) -> dict[str, Any]:
        """The ``ha`` block of the daemon's status (see ``runner_status``)."""
        return runner_status(self)

    async def drill_handover(self) -> dict[str, Any]:
        """Planned handover drill; the timeline (see ``hacontrol.ha.drills.drill_handover``)."""
        return await drills.drill_handover(self)

    async def drill_fault(self, seconds: float) -> dict[str, Any]:
        """Fault drill for ``seconds``; the timeline (see ``hacontrol.ha.drills.drill_fault``)."""
        return await drills.drill_fault(self, seconds)
