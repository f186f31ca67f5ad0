"""The director's host side, owned in one place.

``HostSide`` holds what the daemon does to the host beyond the load-balancing table:

- which data plane was chosen and why (``PlaneChoice``: ``auto`` loads ``ip_vs`` on demand);
- the sysctls the configured services need on that plane (``hacontrol.host``): checked at start,
  on every reload and on every resync period, each mismatch logged once when it appears
  (``host.sysctl``) and shown in the status; set when ``host.set_sysctls`` says so;
- the SNAT table of ``nat.snat`` (``hacontrol.dataplane.snat.SnatTable``) following the VIP group:
  ``follow(vips)`` wraps the group so that the table is installed right after the VIPs are taken
  and removed right before they are released, so the SNAT address is always one this node holds.
  A lone director (no ``ha``) is always active. The table is repaired on every resync period and
  replaced when a reload changes ``nat``.

Nothing here raises into the daemon: errors are logged by the parts and shown in ``status()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.nft import run_nft
from hacontrol.dataplane.select import PlaneChoice
from hacontrol.dataplane.snat import NftRunner, SnatTable
from hacontrol.ha.interfaces import VipManager
from hacontrol.host.needs import required_sysctls
from hacontrol.host.sysctl import SysctlCheck, check_sysctls, host_check
from hacontrol.model import Config
from hacontrol.tasks import cancel_and_wait

log = logs.get("hacontrol.daemon_host")

__all__ = ["HostSide"]


def _snat_for(config: Config, run: NftRunner) -> SnatTable | None:
    if not config.nat.snat:
        return None
    keep = config.ha is None and config.dataplane.keep_on_stop  # a lone director keeps its tables
    return SnatTable(config.nat, keep_on_close=keep, run=run)


class _SnatFollowsVips:
    """A ``VipManager`` that moves the SNAT table with the VIP group it wraps."""

    def __init__(self, vips: VipManager, host: HostSide) -> None:
        self.vips = vips
        self.host = host

    async def take(self, lease: float | None) -> None:
        await self.vips.take(lease)
        await self.host.set_active(True, "took the VIP group")

    async def renew(self, lease: float | None) -> None:
        await self.vips.renew(lease)

    async def release(self) -> None:
        await self.host.set_active(False, "releasing the VIP group")
        await self.vips.release()

    async def present(self) -> bool:
        return await self.vips.present()

    async def announce(self) -> int:
        return await self.vips.announce()

    def describe(self) -> list[dict[str, object]]:
        return self.vips.describe()


class HostSide:
    def __init__(self, config: Config, *, dry_run: bool, run: NftRunner = run_nft) -> None:
        """``run``: how the SNAT table runs nft (tests record it)."""
        self._config = config
        self.dry_run = dry_run
        self._run = run
        self.choice: PlaneChoice | None = None
        self.sysctls: list[SysctlCheck] = []
        self._snat = None if dry_run else _snat_for(config, run)
        self._active = config.ha is None  # what the SNAT table should follow
        self._upkeep: asyncio.Task[None] | None = None

    def follow(self, vips: VipManager) -> VipManager:
        """``vips`` with the SNAT table moving along (``vips`` itself when there is none)."""
        return vips if self.dry_run else _SnatFollowsVips(vips, self)

    async def set_active(self, active: bool, reason: str) -> None:
        self._active = active
        if self._snat is not None:
            await self._snat.set_active(active, reason)

    async def start(self, choice: PlaneChoice, resync_interval: float) -> None:
        """After the plane opened, before HA starts: check the host, set up the SNAT table."""
        self.choice = choice
        if self.dry_run:
            return
        self.sysctls = host_check(self._config, choice.kind)
        if self._snat is not None:
            why = "single director" if self._active else "start: backup until the VIPs are taken"
            await self._snat.set_active(self._active, why)
        self._upkeep = asyncio.create_task(self._keep_up(resync_interval), name="host-upkeep")

    async def _keep_up(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._snat is not None:
                await self._snat.repair()
            self._recheck(self._config)

    def _recheck(self, config: Config) -> None:
        """Read the needed sysctls again; log only the mismatches that are new."""
        if self.choice is None:
            return
        before = {c.key: c.ok for c in self.sysctls}
        checks = check_sysctls(required_sysctls(config, self.choice.kind), report=False)
        for c in checks:
            if not c.ok and before.get(c.key, True):
                log.warning(
                    "host.sysctl", key=c.key, want=c.want, have=c.have, reason=c.why, error=c.error
                )
        self.sysctls = checks

    async def reconfigure(self, config: Config) -> None:
        """A reload: check the new config's needs; replace the SNAT table if ``nat`` changed."""
        old, self._config = self._config, config
        if self.dry_run or self.choice is None:
            return
        if config.host != old.host:
            self.sysctls = host_check(config, self.choice.kind)
        else:
            self._recheck(config)
        if config.nat == old.nat:
            return
        new = _snat_for(config, self._run)
        if self._snat is not None and (new is None or new.table != self._snat.table):
            await self._snat.set_active(False, "reload: nat changed")
        self._snat = new
        if new is not None:
            await new.set_active(self._active, "reload: nat changed")

    async def close(self) -> None:
        await cancel_and_wait(self._upkeep)
        self._upkeep = None
        if self._snat is not None:
            await self._snat.close()

    def status(self) -> dict[str, Any]:
        return {
            "plane": self.choice.as_dict() if self.choice is not None else None,
            "sysctls": [c.as_dict() for c in self.sysctls],
            "snat": self._snat.status() if self._snat is not None else None,
        }
