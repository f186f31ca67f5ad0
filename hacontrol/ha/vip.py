"""The VIP group: the addresses the active director holds, with a kernel lease, over pyroute2.

``VipGroup`` implements ``hacontrol.ha.interfaces.VipManager``. Every VIP of the group moves
together. ``take(lease)`` adds (or adopts) each address with ``valid_lft = preferred_lft =
ceil(lease)`` seconds; ``renew(lease)`` pushes that lifetime forward while this node is healthy, so
the kernel itself removes the VIPs of a daemon killed with -9 or hung; ``release()`` removes them;
``present()`` reads the kernel. IPv6 VIPs are added with ``nodad`` (no DAD delay: usable and
announceable at once). Every change goes through pyroute2 (one ``IPRoute`` on a worker thread, see
``Rtnl``) in the current network namespace (the daemon runs inside its director's namespace),
never through ``ip``.

After ``take`` the group keeps a periodic announce refresh running (``announce.refresh``) until
``release``; ``announce()`` sends one burst (see ``hacontrol.ha.announce``). Errors are raised
as ``HaIoError`` after every VIP was tried; nothing here retries: the runner's next tick does.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import math
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from hacontrol import logs
from hacontrol.clock import Clock, monotonic
from hacontrol.ha.announce import Announcer
from hacontrol.ha.interfaces import HaIoError
from hacontrol.metrics import Metrics
from hacontrol.model import AnnounceConfig, HAConfig, VipConfig
from hacontrol.tasks import cancel_and_wait

log = logs.get("hacontrol.ha.vip")

T = TypeVar("T")

FOREVER = 0xFFFFFFFF  # the kernel's infinite address lifetime
MAX_LEASE = FOREVER - 1


def lifetime(lease: float | None) -> int:
    """Lease seconds -> the kernel's integer lifetime (rounded up; None = forever)."""
    if lease is None:
        return FOREVER
    if not lease > 0:
        raise ValueError(f"lease must be > 0 seconds or None, got {lease}")
    return min(math.ceil(lease), MAX_LEASE)


class Rtnl:
    """pyroute2's ``IPRoute`` on one worker thread, usable from any event loop.

    (``AsyncIPRoute`` needs the stock asyncio loop: uvloop refuses its AF_NETLINK endpoint, and
    the daemon runs on uvloop.) One socket, reused; calls run one at a time, in order. Each call
    is a quick netlink request/response, so the thread never blocks for long.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hacontrol-rtnl")
        self._ipr: Any = None
        self._stale = False

    def _run(self, fn: Callable[[Any], T]) -> T:
        if self._stale and self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None
        self._stale = False
        if self._ipr is None:
            self._ipr = IPRoute()
        return fn(self._ipr)

    async def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(ipr)`` on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn)

    def reset(self) -> None:
        """Open a fresh socket on the next call (after an error)."""
        self._stale = True

    def close(self) -> None:
        def close() -> None:
            if self._ipr is not None:
                with contextlib.suppress(Exception):
                    self._ipr.close()
                self._ipr = None

        with contextlib.suppress(RuntimeError):  # already shut down
            self._pool.submit(close)
        self._pool.shutdown(wait=False)


@dataclass
class _Seen:
    """Last observed state of one VIP (for ``describe``)."""

    present: bool = False
    expires: float | None = None  # monotonic deadline of the lifetime we set; None = forever


class VipGroup:
    """The VIP group of ``HAConfig.vips`` on this node."""

    def __init__(
        self,
        vips: Sequence[VipConfig],
        announce: AnnounceConfig | None = None,
        metrics: Metrics | None = None,
        *,
        clock: Clock = monotonic,
        announcer: Announcer | None = None,
    ) -> None:
        self.vips = tuple(vips)
        self.clock = clock
        self.announcer = announcer or Announcer(self.vips, announce, metrics)
        self._rtnl = Rtnl()
        self._lock = asyncio.Lock()
        self._seen = {v: _Seen() for v in self.vips}
        self._held = False
        self._refresh: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, ha: HAConfig, metrics: Metrics | None = None, *, clock: Clock = monotonic
    ) -> VipGroup:
        """The group of ``ha.vips`` announced per ``ha.announce``."""
        return cls(ha.vips, ha.announce, metrics, clock=clock)

    # -- netlink (on the Rtnl worker thread) --------------------------------------------------

    @staticmethod
    def _index(ifname: str) -> int:
        try:
            return socket.if_nametoindex(ifname)
        except OSError as e:
            raise HaIoError(f"interface {ifname} not found") from e

    async def _replace(self, vip: VipConfig, life: int) -> None:
        kw: dict[str, Any] = {
            "address": str(vip.address.ip),
            "prefixlen": vip.address.network.prefixlen,
            "valid_lft": life,
            "preferred_lft": life,
        }
        if vip.address.version == 6:
            kw["flags"] = IFA_F_NODAD

        def replace(ipr: Any) -> None:
            ipr.addr("replace", index=self._index(vip.interface), **kw)

        await self._rtnl.call(replace)

    async def _delete(self, vip: VipConfig) -> bool:
        """Remove one VIP; False if it was not there."""

        def delete(ipr: Any) -> bool:
            try:
                index = self._index(vip.interface)
            except HaIoError:
                return False  # no interface, no address
            try:
                ipr.addr(
                    "del",
                    index=index,
                    address=str(vip.address.ip),
                    prefixlen=vip.address.network.prefixlen,
                )
            except NetlinkError as e:
                if e.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                    return False
                raise
            return True

        return await self._rtnl.call(delete)

    async def _configured(self) -> dict[VipConfig, int | None]:
        """The VIPs configured in the kernel now, with their remaining valid lifetime."""

        def dump(ipr: Any) -> dict[VipConfig, int | None]:
            found: dict[tuple[int, str, int], int | None] = {}
            for msg in ipr.addr("dump"):
                addr = msg.get("IFA_ADDRESS")
                if addr is None:
                    continue
                info = msg.get("IFA_CACHEINFO")
                valid = info["ifa_valid"] if info is not None else FOREVER
                key = (msg["index"], ipaddress.ip_address(addr).compressed, msg["prefixlen"])
                found[key] = None if valid == FOREVER else int(valid)
            out: dict[VipConfig, int | None] = {}
            for vip in self.vips:
                try:
                    index = socket.if_nametoindex(vip.interface)
                except OSError:
                    continue
                key = (index, vip.address.ip.compressed, vip.address.network.prefixlen)
                if key in found:
                    out[vip] = found[key]
            return out

        return await self._rtnl.call(dump)

    async def _each(self, what: str, op: Any) -> None:
        """Run ``op(vip)`` for every VIP; raise one HaIoError naming every failure."""
        errors: dict[str, str] = {}
        for vip in self.vips:
            try:
                await op(vip)
            except HaIoError as e:
                errors[str(vip.address)] = str(e)
            except (NetlinkError, OSError) as e:
                errors[str(vip.address)] = f"{vip.interface}: {e}"
                self._rtnl.reset()
        if errors:
            log.error("ha.vip.error", op=what, errors=errors, reason=f"{what} failed")
            raise HaIoError(f"{what} failed: " + "; ".join(f"{a}: {m}" for a, m in errors.items()))

    # -- VipManager ------------------------------------------------------------------------------

    async def take(self, lease: float | None) -> None:
        """Add every VIP with the lease lifetime (adopting any already present)."""
        life = lifetime(lease)
        async with self._lock:
            self._held = True
            await self._each("take", lambda vip: self._set(vip, life, lease))
            log.info(
                "ha.vip.take",
                vips=[str(v.address) for v in self.vips],
                lease=lease,
                reason="taking the VIP group",
            )
            self._start_refresh()

    async def renew(self, lease: float | None) -> None:
        """Push every held VIP's lifetime to ``lease`` from now; re-adds a vanished VIP."""
        life = lifetime(lease)
        async with self._lock:
            if not self._held:
                return
            await self._each("renew", lambda vip: self._set(vip, life, lease))

    async def _set(self, vip: VipConfig, life: int, lease: float | None) -> None:
        await self._replace(vip, life)
        seen = self._seen[vip]
        seen.present = True
        seen.expires = None if lease is None else self.clock() + life

    async def release(self) -> None:
        """Stop the refresh and remove every VIP of the group (present or not)."""
        async with self._lock:
            self._held = False
            await self._stop_refresh()

            removed: list[str] = []

            async def drop(vip: VipConfig) -> None:
                if await self._delete(vip):
                    removed.append(str(vip.address))
                self._seen[vip] = _Seen()

            try:
                await self._each("release", drop)
            finally:
                if removed:  # a node that held nothing releases silently
                    log.info("ha.vip.release", vips=removed, reason="released the VIP group")

    async def present(self) -> bool:
        """True if any VIP of the group is configured now (read from the kernel)."""
        return bool(await self.configured())

    async def configured(self) -> dict[VipConfig, int | None]:
        """Which VIPs are configured now, with their remaining kernel lifetime (None = forever)."""
        try:
            found = await self._configured()
        except (NetlinkError, OSError) as e:
            self._rtnl.reset()
            raise HaIoError(f"address dump failed: {e}") from e
        now = self.clock()
        for vip, seen in self._seen.items():
            seen.present = vip in found
            left = found.get(vip)
            seen.expires = None if left is None or not seen.present else now + left
        return found

    async def announce(self) -> int:
        """One burst of gratuitous ARP / unsolicited NA for every VIP; packets sent."""
        return await self.announcer.burst("took the VIP group")

    def describe(self) -> list[dict[str, object]]:
        now = self.clock()
        out: list[dict[str, object]] = []
        for vip in self.vips:
            seen = self._seen[vip]
            left = None if seen.expires is None else max(0.0, round(seen.expires - now, 3))
            out.append(
                {
                    "address": str(vip.address),
                    "interface": vip.interface,
                    "present": seen.present,
                    "lease_left": left if seen.present else None,
                }
            )
        return out

    # -- refresh and shutdown --------------------------------------------------------------------

    def _start_refresh(self) -> None:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(
                self.announcer.refresh_forever(), name="ha-announce-refresh"
            )

    async def _stop_refresh(self) -> None:
        task, self._refresh = self._refresh, None
        await cancel_and_wait(task)

    async def close(self) -> None:
        """Stop the refresh and close the netlink socket (leaves the VIPs as they are)."""
        await self._stop_refresh()
        self._rtnl.close()
