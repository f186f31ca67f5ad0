"""The HA pair member of ``ha.protocol: vrrp3``: the asyncio shell around the VRRPv3 machine.

It implements the daemon's ``HaComponent`` (hacontrol.process) beside the own protocol's
``HaRunner``: the daemon picks one (hacontrol.daemon_ha.build_ha). It owns the machine
(hacontrol.ha.vrrp_fsm), its one timer (armed at the machine's deadline on the running event
loop, whose time is the injected clock), the raw-socket transport (hacontrol.ha.vrrp_transport)
and one worker that runs the VIP actions in order: on MASTER the VIPs are added (with the lease,
renewed while master) and announced (gratuitous ARP / unsolicited NA through the VIP group's
announcer, from the interface's own MAC: keepalived's default, no virtual MAC), then the notify
command; on leaving MASTER they are removed. A tracked interface or gateway that fails is a
blocking fault (FAULT: priority 0 sent if master, the VIPs released).

What the own protocol has and VRRP cannot carry is listed in the status (``unavailable``) and
a drill is refused with the reason (``DrillError``: HTTP 409), never silently absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.ha import vrrp_fsm as vf
from hacontrol.ha.drills import DrillError
from hacontrol.ha.handoff_rules import Triple
from hacontrol.ha.interfaces import HaIoError, Notifier, Tracker, TrackEvent, VipManager
from hacontrol.ha.vrrp_packet import Advert
from hacontrol.ha.vrrp_status import ROLE, UNAVAILABLE, vrrp_status
from hacontrol.ha.vrrp_transport import VrrpTransport
from hacontrol.metrics import Metrics
from hacontrol.model import HAConfig, VrrpConfig
from hacontrol.tasks import cancel_and_wait

__all__ = ["UNAVAILABLE", "VrrpRunner"]

log = logs.get("hacontrol.ha")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

ROLES = ("starting", "backup", "active", "fault", "stopping")


class VrrpRunner:
    """One VRRPv3 router of the pair (ours beside a keepalived or another hacontrol)."""

    def __init__(
        self,
        cfg: HAConfig,
        node_name: str,
        *,
        clock: Clock,
        metrics: Metrics,
        vips: VipManager,
        notifier: Notifier,
        tracker: Tracker | None = None,
    ) -> None:
        if cfg.vrrp is None:
            raise ValueError("ha.vrrp is required with ha.protocol: vrrp3")
        self.cfg, self.vc, self.node, self.clock = cfg, cfg.vrrp, node_name, clock
        self.metrics, self.vips, self.notifier, self.tracker = metrics, vips, notifier, tracker
        self.version = _family(cfg, cfg.vrrp)
        self.advertised = tuple(
            v.address.ip for v in cfg.vips if v.address.version == self.version
        )
        self.transport = VrrpTransport(
            self.vc.interface, self.vc.vrid, version=self.version, peers=self.vc.unicast_peers,
            source=self.vc.source, clock=clock, on_advert=self._on_advert,
        )  # fmt: skip
        self.fsm: vf.Machine | None = None
        self.held = False
        self.reason = "not started"
        self.since = clock()
        self.history: list[tuple[float, str, str, str]] = []
        self.faults: dict[str, str] = {}
        self._stopping = False
        self._queue: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._renewed = 0.0
        self._mismatch: frozenset[Address] = frozenset(self.advertised)

    # -- HaComponent -----------------------------------------------------------------------

    @property
    def role(self) -> str:
        if self._stopping:
            return "stopping"
        return "starting" if self.fsm is None else ROLE[self.fsm.state]

    def reconfigure(
        self,
        *,
        notifier: Notifier | None = None,
        digest: str | None = None,
        handoff_services: tuple[list[Triple], list[Triple]] | None = None,
    ) -> None:
        """The notify command may change live; the digest and hand-off have no place in VRRP."""
        del digest, handoff_services
        if notifier is not None:
            self.notifier = notifier

    async def start(self) -> None:
        try:
            self.transport.open()
        except HaIoError as e:  # the daemon refuses to start (StartError) with this
            raise ValueError(f"ha.vrrp.interface {self.vc.interface}: {e}") from None
        src = self.transport.source
        assert src is not None  # open() chose it
        self.fsm = vf.Machine(vf.Params(
            priority=self.cfg.priority, adver_cs=self.vc.advert_cs, address=src,
            preempt=self.cfg.preempt, preempt_delay=self.cfg.preempt_delay,
        ))  # fmt: skip
        try:
            present = await self.vips.present()
        except HaIoError as e:
            present = False
            log.error("ha.vip_error", op="present", reason=str(e))
        log.info("vrrp.start", vrid=self.vc.vrid, interface=self.vc.interface, source=str(src),
                 destinations=[str(d) for d in self.transport.destinations],
                 advert_cs=self.vc.advert_cs, vips_present=present,
                 reason="listen for a master for Master_Down_Interval")  # fmt: skip
        if present:  # found from an earlier run: the master re-adds them if it is us
            self._queue.put_nowait(self._release)
        self._tasks = [asyncio.create_task(self._worker(), name="vrrp-actions")]
        if self.tracker is not None:
            self._tasks.append(asyncio.create_task(self._track(self.tracker), name="vrrp-track"))
        self.feed(vf.Start(self.clock()))

    async def stop(self, graceful: bool = True) -> None:
        """Graceful: priority 0 (the backup takes over after its skew time) and the VIPs
        released. Not graceful: silent; the VIPs are left to their lease."""
        if graceful and self.fsm is not None:
            self.feed(vf.Stop(self.clock()))
            await self._drain(5.0)
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        await cancel_and_wait(*self._tasks, quiet=True)
        self._tasks.clear()
        self.transport.close()
        log.info("ha.stop", graceful=graceful, reason="stopped")

    def status(self) -> dict[str, Any]:
        return vrrp_status(self, self.clock())

    async def drill_handover(self) -> dict[str, Any]:
        raise DrillError(f"ha.protocol vrrp3: {UNAVAILABLE['drills']}; stop this daemon "
                         "(priority 0) to hand over")  # fmt: skip

    async def drill_fault(self, seconds: float) -> dict[str, Any]:
        del seconds
        raise DrillError(f"ha.protocol vrrp3: {UNAVAILABLE['drills']}")

    # -- the machine -----------------------------------------------------------------------

    def feed(self, ev: vf.Event) -> None:
        m = self.fsm
        if m is None:
            return
        for a in m.step(ev):
            if isinstance(a, vf.Send):
                self.transport.send(a.priority, self.vc.advert_cs, self.advertised)
                if a.priority and self.held and ev_now(ev) - self._renewed > self._renew_every():
                    self._renewed = ev_now(ev)
                    self._queue.put_nowait(self._renew)
            elif isinstance(a, vf.Take):
                self._queue.put_nowait(functools.partial(self._take, a.reason))
            elif isinstance(a, vf.Release):
                self._queue.put_nowait(self._release)
            elif isinstance(a, vf.Transition):
                self._transition(a, ev_now(ev))
            else:
                level = a.level if a.level in ("warning", "error") else "info"
                getattr(log, level)(a.event, reason=a.reason, node=self.node, **dict(a.fields))
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.fsm is not None and self.fsm.deadline is not None:
            delay = max(0.0, self.fsm.deadline - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.feed(vf.Tick(self.clock()))
        except Exception as e:  # a bug: loud, and keep the timer going
            log.exception("ha.tick_error", reason=repr(e))
            self._arm()

    def _on_advert(self, adv: Advert, src: Address, now: float) -> None:
        if adv.legacy_sum:
            log.warning("vrrp.legacy_checksum", source=str(src), reason="the checksum covers "
                        "the multicast group, not our address: keepalived before 2.1")  # fmt: skip
        theirs = frozenset(adv.addresses)
        if theirs != self._mismatch and theirs != set(self.advertised):  # once per change
            log.warning("vrrp.address_mismatch", source=str(src),
                        theirs=sorted(map(str, adv.addresses)),
                        ours=sorted(map(str, self.advertised)),
                        reason="the peer advertises other VIPs for this router")  # fmt: skip
        self._mismatch = theirs
        self.feed(vf.Received(now, src, adv.priority, adv.max_adver_cs))

    def _transition(self, t: vf.Transition, now: float) -> None:
        frm, to = ROLE[t.from_state], ROLE[t.to_state]
        if t.to_state is vf.State.INITIALIZE:
            to = "stopping"
        self.reason, self.since = t.reason, now
        self.history = [*self.history[-9:], (now, frm, to, t.reason)]
        log.info("ha.transition", reason=t.reason, node=self.node, from_role=frm, to_role=to,
                 vrrp_state=t.to_state.name)  # fmt: skip
        self.metrics.ha_transitions.labels(from_role=frm, to_role=to).inc()
        for r in ROLES:
            self.metrics.ha_role.labels(role=r).set(1 if r == to else 0)

    # -- VIP actions (one worker: in order) -------------------------------------------------

    def _renew_every(self) -> float:
        return 1.0 if self.cfg.lease is None else self.cfg.lease / 3

    async def _take(self, reason: str) -> None:
        await self.vips.take(self.cfg.lease)
        self.held, self._renewed = True, self.clock()
        log.info("ha.vip_take", reason=reason, node=self.node)
        with contextlib.suppress(HaIoError):
            await self.vips.announce()
        await self.notifier.notify("active", reason)

    async def _renew(self) -> None:
        await self.vips.renew(self.cfg.lease)

    async def _release(self) -> None:
        await self.vips.release()
        was, self.held = self.held, False
        if was:
            log.info("ha.vip_release", reason=self.reason, node=self.node)
            await self.notifier.notify(self.role, self.reason)

    async def _worker(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await job()
            except HaIoError as e:  # the next advertisement (renew) or transition retries
                log.error("ha.vip_error", reason=str(e))
            except Exception as e:
                log.exception("ha.action_error", reason=repr(e))
            finally:
                self._queue.task_done()

    async def _drain(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._queue.join()

    # -- tracking ----------------------------------------------------------------------------

    def _on_track(self, ev: TrackEvent) -> None:
        was = bool(self.faults)
        if ev.failed:
            self.faults[ev.name] = ev.reason
        else:
            self.faults.pop(ev.name, None)
        log.info("ha.track", item=ev.name, failed=ev.failed, reason=ev.reason)
        if bool(self.faults) != was:
            self.feed(vf.Fault(self.clock(), bool(self.faults), ev.reason))

    async def _track(self, tracker: Tracker) -> None:
        try:
            await tracker.run(self._on_track)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("ha.track_error", reason=f"tracker stopped: {e!r}")


def ev_now(ev: vf.Event) -> float:
    return ev.now


def _family(cfg: HAConfig, vc: VrrpConfig) -> int:
    if vc.version is not None:
        return vc.version
    return cfg.vips[0].address.version if cfg.vips else 4

