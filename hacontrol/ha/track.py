"""Local fault tracking: tracked interfaces' link state and the gateway's reachability.

``LocalTracker`` implements ``hacontrol.ha.interfaces.Tracker``: ``await run(emit)`` watches until
cancelled and calls ``emit(TrackEvent)`` with each item's first known state and every change.

- Interfaces (``track.interfaces``, plus the interface of every VIP unless
  ``track.vip_interfaces`` is off: ``tracked_interfaces``): link state from rtnetlink link
  events (RTNLGRP_LINK: a netlink socket read from the event loop, messages decoded by
  pyroute2's marshal), after an initial dump (pyroute2 ``IPRoute`` on a worker thread: any
  event loop, uvloop included). A link is up when it is administratively up and running
  (IFF_UP and IFF_RUNNING: carrier present); a missing interface counts as down. Events name
  ``interface:<ifname>``, reasons "interface eth1 down" / "interface eth1 up" / "interface eth1
  missing". A lost netlink event (socket overrun) triggers a fresh dump.
- Gateway (``track.gateway``): one ICMP echo (raw socket; IPv4 or IPv6) every
  ``gateway_interval``; ``gateway_fall`` consecutive misses -> "gateway 198.51.100.1 unreachable";
  the first answer after that -> "gateway 198.51.100.1 reachable". ``probe_gateway()``: one
  fresh probe on demand (its own socket), asked for before a takeover.

Events are emitted, not logged: the runner logs each one once (``ha.track``, with the reason).

The decisions (link flags -> up/down, miss counting) are the pure helpers ``link_up``,
``LinkStates`` and ``FallCounter``; the rest is the I/O shell.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from hacontrol import logs
from hacontrol.clock import Clock, monotonic
from hacontrol.ha.announce import inet_checksum
from hacontrol.ha.interfaces import HaIoError, TrackEvent
from hacontrol.health.state import Health
from hacontrol.health.tracker import Hysteresis
from hacontrol.model import HAConfig, IPAddress, TrackConfig
from hacontrol.tasks import cancel_and_wait

log = logs.get("hacontrol.ha.track")

IFF_UP = 0x1
IFF_RUNNING = 0x40

Emit = Callable[[TrackEvent], None]


# -- pure decisions ------------------------------------------------------------------------------


def link_up(flags: int) -> bool:
    """Administratively up and running (carrier, operstate up/unknown)."""
    return bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)


def tracked_interfaces(ha: HAConfig) -> tuple[str, ...]:
    """``track.interfaces``, then each VIP's interface not already listed (unless
    ``track.vip_interfaces`` is off): a node whose VIP link lost carrier must not hold them."""
    names = list(ha.track.interfaces)
    if ha.track.vip_interfaces:
        names += [v.interface for v in ha.vips]
    return tuple(dict.fromkeys(names))


class LinkStates:
    """Tracked interfaces' last known state -> TrackEvents on change (pure)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        self.state: dict[str, str] = {}  # name -> "up" | "down" | "missing"

    def update(self, name: str, state: str) -> TrackEvent | None:
        if name not in self.names or self.state.get(name) == state:
            return None
        self.state[name] = state
        return TrackEvent(
            name=f"interface:{name}",
            failed=state != "up",
            blocking=True,
            reason=f"interface {name} {state}",
        )

    def snapshot(self, present: dict[str, int]) -> list[TrackEvent]:
        """A full dump (name -> flags of every link): events for what changed, incl. missing."""
        out = []
        for name in self.names:
            ev = self.update(
                name,
                "missing" if name not in present else "up" if link_up(present[name]) else "down",
            )
            if ev is not None:
                out.append(ev)
        return out


class FallCounter:
    """Consecutive probe misses -> failed after ``fall``; recovered on the first answer (pure:
    the health checks' rise/fall counter, hacontrol.health.tracker.Hysteresis, with rise 1)."""

    def __init__(self, name: str, what: str, fall: int) -> None:
        self.name = name
        self.what = what
        self.count = Hysteresis(1, fall)

    @property
    def failed(self) -> bool | None:
        """None until known."""
        state = self.count.state
        return None if state is Health.UNKNOWN else state is Health.DOWN

    def observe(self, ok: bool) -> TrackEvent | None:
        new = self.count.observe(ok)
        if new is None:
            return None
        down = new is Health.DOWN
        return TrackEvent(self.name, down, True, f"{self.what} {'un' * down}reachable")


# -- ICMP echo -----------------------------------------------------------------------------------


def echo_request(ident: int, seq: int, payload: bytes, v6: bool) -> bytes:
    """An ICMP (type 8) or ICMPv6 (type 128) echo request; v6 checksum left to the kernel."""
    if v6:
        return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    csum = inet_checksum(head + payload)
    return struct.pack("!BBHHH", 8, 0, csum, ident, seq) + payload


def is_echo_reply(data: bytes, ident: int, seq: int, v6: bool) -> bool:
    """Whether a raw-socket read is the reply to (ident, seq). IPv4 reads carry the IP header."""
    if not v6:
        if len(data) < 20:
            return False
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < 8:
        return False
    typ, _code, _csum, rid, rseq = struct.unpack("!BBHHH", data[:8])
    return bool(typ == (129 if v6 else 0) and rid == ident and rseq == seq)


def link_event_socket() -> socket.socket:
    """A non-blocking rtnetlink socket subscribed to link events (RTNLGRP_LINK)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((0, RTMGRP_LINK))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, within: float | None) -> bool:
    """Wait until ``fd`` is readable (True) or ``within`` seconds pass (False; None = forever)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(ready, within)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True


class Pinger:
    """One raw ICMP socket towards one address; ``await ping(timeout)`` -> answered or not."""

    def __init__(self, target: IPAddress) -> None:
        self.target = target
        self.v6 = target.version == 6
        self.ident = int.from_bytes(os.urandom(2), "big")
        self.seq = 0
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if self.v6:
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.setblocking(False)
            self._sock = s
        return self._sock

    async def ping(self, within: float) -> bool:
        """Send one echo request; True if its reply arrives within ``within`` seconds."""
        loop = asyncio.get_running_loop()
        self.seq = (self.seq + 1) & 0xFFFF
        seq = self.seq
        try:
            s = self._socket()
            s.sendto(echo_request(self.ident, seq, b"hacontrol-gw", self.v6), (str(self.target), 0))
        except OSError as e:  # no route, network down, no CAP_NET_RAW...
            log.debug(
                "ha.track.ping_error", target=str(self.target), error=str(e), reason="send failed"
            )
            await asyncio.sleep(within)
            return False
        deadline = loop.time() + within
        while (left := deadline - loop.time()) > 0:
            if not await _readable(loop, s.fileno(), left):
                return False
            while True:
                try:
                    data, addr = s.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return False
                source = ipaddress.ip_address(addr[0].split("%")[0])
                if source == self.target and is_echo_reply(data, self.ident, seq, self.v6):
                    return True
        return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- the tracker ---------------------------------------------------------------------------------


class LocalTracker:
    """Tracked interfaces + gateway for one node (``HAConfig.track``)."""

    def __init__(self, config: TrackConfig, *, clock: Clock = monotonic) -> None:
        self.config = config
        self.clock = clock
        self.links = LinkStates(config.interfaces)
        self.gateway: FallCounter | None = None
        if config.gateway is not None:
            self.gateway = FallCounter(
                f"gateway:{config.gateway}", f"gateway {config.gateway}", config.gateway_fall
            )
        self._fresh: Pinger | None = None  # on-demand probes (probe_gateway)

    @classmethod
    def from_config(cls, ha: HAConfig) -> LocalTracker | None:
        """A tracker for ``ha.track`` (and the VIPs' interfaces), or None when nothing is
        tracked."""
        t = replace(ha.track, interfaces=tracked_interfaces(ha))
        return cls(t) if t.interfaces or t.gateway is not None else None

    def _emit(self, emit: Emit, event: TrackEvent | None) -> None:
        if event is not None:
            emit(event)  # logged once, by the runner (ha.track)

    async def probe_gateway(self) -> bool:
        """One fresh echo to the gateway, now (own socket and ident, so it never steals the
        periodic probe's replies); True if it answered within 0.9 x ``gateway_interval``."""
        if self.config.gateway is None:
            raise HaIoError("no gateway is tracked")
        if self._fresh is None:
            self._fresh = Pinger(self.config.gateway)
        return await self._fresh.ping(within=self.config.gateway_interval * 0.9)

    async def run(self, emit: Emit) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            if self.links.names:
                tasks.append(asyncio.create_task(self._watch_links(emit), name="ha-track-links"))
            if self.gateway is not None:
                tasks.append(asyncio.create_task(self._watch_gateway(emit), name="ha-track-gw"))
            if tasks:
                await asyncio.gather(*tasks)
            else:
                await asyncio.Event().wait()  # nothing to track: idle until cancelled
        finally:
            await cancel_and_wait(*tasks, quiet=True)
            if self._fresh is not None:
                self._fresh.close()
                self._fresh = None

    # interfaces

    @staticmethod
    def _dump_sync() -> dict[str, int]:
        with IPRoute() as ipr:
            return {
                str(msg.get("IFLA_IFNAME")): int(msg["flags"])
                for msg in ipr.get_links()
                if msg.get("IFLA_IFNAME")
            }

    async def _watch_links(self, emit: Emit) -> None:
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            sock: socket.socket | None = None
            try:
                sock = link_event_socket()  # subscribe first, then dump: no gap
                for ev in self.links.snapshot(await asyncio.to_thread(self._dump_sync)):
                    self._emit(emit, ev)
                names: dict[int, str] = {}
                marshal = MarshalRtnl()
                while True:
                    await _readable(loop, sock.fileno(), None)
                    while True:
                        try:
                            data = sock.recv(1 << 20)
                        except (BlockingIOError, InterruptedError):
                            break
                        for msg in marshal.parse(data):
                            self._on_link(msg, names, emit)
                    backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as e:  # overrun (ENOBUFS) or a socket error: resubscribe + dump
                log.warning("ha.track.resync", error=repr(e), reason="link event stream lost")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if sock is not None:
                    sock.close()

    def _on_link(self, msg: Any, names: dict[int, str], emit: Emit) -> None:
        kind = msg["header"]["type"]
        if kind not in (RTM_NEWLINK, RTM_DELLINK):
            return
        index = msg["index"]
        name = msg.get("IFLA_IFNAME")
        old = names.get(index)
        if old is not None and old != name:  # renamed away: the old name is gone
            self._emit(emit, self.links.update(old, "missing"))
        if name is None:
            return
        if kind == RTM_DELLINK:
            names.pop(index, None)
            self._emit(emit, self.links.update(name, "missing"))
            return
        names[index] = name
        self._emit(emit, self.links.update(name, "up" if link_up(msg["flags"]) else "down"))

    # gateway

    async def _watch_gateway(self, emit: Emit) -> None:
        assert self.gateway is not None and self.config.gateway is not None
        interval = self.config.gateway_interval
        pinger = Pinger(self.config.gateway)
        try:
            while True:
                started = self.clock()
                ok = await pinger.ping(within=interval * 0.9)
                self._emit(emit, self.gateway.observe(ok))
                await asyncio.sleep(max(0.0, started + interval - self.clock()))
        finally:
            pinger.close()
