"""Connection hand-off between the pair's directors at a VIP move (nftables data plane only).

``Handoff`` owns the hand-off nftables table (rendered by the pure
``hacontrol.ha.handoff_rules``) in the daemon's network namespace, and picks the peer address
packets are handed to: per IP family the first configured peer address on a connected network
(asked of the kernel through pyroute2). The runner (``hacontrol.ha.runner``) calls ``begin``
just before this node takes the VIP group from a live peer that held it (a planned handover
or a preemption), ``end`` when the drain period is over, the peer is dead or this node
releases the VIPs, and ``close`` on stop.

While draining, packets of connections this node has no conntrack entry for (connections the
peer NATed before the move: the client's segments to a VIP, the real servers' replies through
the gateway VIP) are handed to the peer, which still holds their NAT state and keeps forwarding
them (they reach it by ``dup to``, unchanged, to its MAC: no policy routing, and a VIP now
local here does not swallow them); every new connection is served here. An unplanned takeover
(dead peer) never drains. A drain ends early when the peer goes silent, unless its last
heartbeat said it was stopping: a daemon restarted or upgraded leaves its kernel forwarding
those connections (the chaos soak lost every long connection at a restart before).
With the IPVS data plane the equivalent is the IPVS connection sync daemon (`ha.sync`,
hacontrol/dataplane/ipvs_sync.py).
Errors are ``HaIoError``; the runner logs them and goes on without the hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from hacontrol import logs
from hacontrol.ha.handoff_rules import HandoffRules, Triple
from hacontrol.ha.interfaces import HaIoError
from hacontrol.ha.vip import Rtnl
from hacontrol.model import Config

__all__ = ["DRAIN", "Handoff", "services_of"]

log = logs.get("hacontrol.ha.handoff")

DRAIN = 60.0  # seconds after a move during which flows without local state go to the peer


def services_of(cfg: Config) -> tuple[list[Triple], list[Triple]]:
    """(vip, proto, port) of every service and (address, proto, port) of every real server and
    sorry server of ``cfg``."""
    svc: list[Triple] = []
    rs: list[Triple] = []
    for s in cfg.services:
        svc.append((str(s.vip), s.protocol, s.port))
        ends = [r.endpoint for r in s.real_servers]
        if s.sorry_server is not None:
            ends.append(s.sorry_server)
        rs += [(str(e.address), s.protocol, e.port) for e in ends]
    return svc, rs


class Handoff:
    """The hand-off table, rule and route of one director (see the module doc)."""

    def __init__(
        self,
        rules: HandoffRules,
        peers: Iterable[str],
        *,
        drain: float = DRAIN,
        netns: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.rules, self.drain, self.netns, self.timeout = rules, drain, netns, timeout
        self.peers = [ipaddress.ip_address(p) for p in peers]
        self.until: float | None = None  # end of the drain period (runner's clock)
        self.via: dict[int, str] = {}  # family -> the peer address packets are routed to
        self._rtnl = Rtnl()
        self._open = False

    @property
    def draining(self) -> bool:
        return self.until is not None

    def cover(self, services: Iterable[Triple], real_servers: Iterable[Triple]) -> None:
        """Hand off these services and real servers from the next drain on (a reload); the
        table keeps its name."""
        self.rules = HandoffRules.of(self.rules.table_name, services, real_servers)

    async def _nft(self, doc: dict[str, Any]) -> None:
        """Run one nft JSON batch (through a memfd: see NftDataplane._nft)."""
        argv = ["nft", "-j", "-f", "-"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        fd = os.memfd_create("hacontrol-handoff")
        try:
            os.write(fd, json.dumps(doc).encode())
            os.lseek(fd, 0, os.SEEK_SET)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=fd, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
            except OSError as e:
                raise HaIoError(f"handoff: cannot run nft: {e}") from e
        finally:
            os.close(fd)
        try:
            async with asyncio.timeout(self.timeout):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise HaIoError(f"handoff: nft timed out after {self.timeout}s") from None
        if proc.returncode:
            raise HaIoError(f"handoff: nft failed: {err.decode().strip()[-300:]}")

    def _on_link(self, ipr: Any) -> dict[int, str]:
        """Per family, the first peer address the kernel reaches without a gateway."""
        via: dict[int, str] = {}
        for peer in self.peers:
            if peer.version in via or peer.version not in self.rules.families():
                continue
            try:
                routes = ipr.route("get", dst=str(peer))
            except NetlinkError:
                continue  # unreachable from here: try the next path
            if routes and routes[0].get("RTA_GATEWAY") is None:
                via[peer.version] = str(peer)
        return via

    async def open(self) -> None:
        """Install the (empty) table and find the peer address flows are handed to."""
        await self._nft(self.rules.render())
        try:
            self.via = await self._rtnl.call(self._on_link)
        except (NetlinkError, OSError) as e:
            self._rtnl.reset()
            raise HaIoError(f"handoff: route to the peer: {e}") from e
        self._open = True
        missing = [f"IPv{f}" for f in self.rules.families() if f not in self.via]
        why = "flows without local state go to the peer during a drain"
        if missing:
            why += f"; no on-link peer address for {', '.join(missing)}"
        log.info("ha.handoff_ready", via=self.via, missing=missing, reason=why)

    async def begin(self, now: float, reason: str) -> None:
        """Start (or extend) a drain period: flows unknown here go to the peer."""
        if not self._open or not self.via:
            return
        if self.until is None:
            await self._nft(self.rules.render(self.via))
        self.until = now + self.drain
        log.info("ha.handoff_drain", state="begin", via=self.via, seconds=self.drain,
                 reason=reason)  # fmt: skip

    def due(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    async def end(self, reason: str) -> None:
        """End the drain: every flow is served here again."""
        if self.until is None:
            return
        await self._nft(self.rules.render())  # on error still draining: the runner retries
        self.until = None
        log.info("ha.handoff_drain", state="end", reason=reason)

    async def close(self) -> None:
        """Remove the table."""
        self.until = None
        if self._open:
            with contextlib.suppress(HaIoError):
                await self._nft(self.rules.remove())
            self._open = False
        self._rtnl.close()
