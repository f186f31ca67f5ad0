"""The daemon's host side (``hacontrol.daemon_host.HostSide``) over a recording nft stand-in and
a fake VIP group: the SNAT table follows the VIP group (installed after the VIPs are taken,
removed before they are released), a lone director is active from the start, a reload that
changes ``nat`` replaces the table, a dry run touches nothing. The real kernel:
tests/integration/test_daemon_host.py."""

from __future__ import annotations

import json
from typing import Any

from hacontrol.clock import run_virtual
from hacontrol.config import loads
from hacontrol.daemon_host import HostSide
from hacontrol.dataplane.select import PlaneChoice

BASE = """
node: {name: d1}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    real_servers: [{address: 198.51.100.2, port: 80}]
"""
NAT = "nat: {table: %s, snat: [{source: 198.51.100.0/24, to: 192.0.2.10}]}\n"
CHOICE = PlaneChoice("nftables", "nftables: configured")


class Recorder:
    """Stands in for nft: records each batch as ('install'|'delete', table)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __call__(
        self, *args: str, stdin: bytes | None = None, netns: str | None = None
    ) -> tuple[int, str, str]:
        if stdin is not None:
            batch = json.loads(stdin)["nftables"]
            table = batch[0]["add"]["table"]["name"]
            rules = sum(1 for b in batch if "rule" in b.get("add", {}))
            self.log.append(f"nft {'install' if rules else 'delete'} {table}")
        return 0, "", ""


class Vips:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def take(self, lease: float | None) -> None:
        self.log.append("vips take")

    async def renew(self, lease: float | None) -> None:
        self.log.append("vips renew")

    async def release(self) -> None:
        self.log.append("vips release")

    async def present(self) -> bool:
        return True

    async def announce(self) -> int:
        return 1

    def describe(self) -> list[dict[str, object]]:
        return [{"address": "192.0.2.10/32"}]


def host(text: str, log: list[str], dry_run: bool = False) -> HostSide:
    return HostSide(loads(text, check_files=False), dry_run=dry_run, run=Recorder(log))


def test_snat_follows_the_vip_group() -> None:
    ha = (
        "ha: {bind: 192.0.2.2:5405, peers: [192.0.2.3:5405], secret_file: /nonexistent,\n"
        "     vips: [{address: 192.0.2.10/24, interface: eth0}]}\n"
    )

    async def main() -> tuple[list[str], dict[str, Any]]:
        log: list[str] = []
        h = host(BASE + ha + NAT % "hc_nat", log)
        vips = h.follow(Vips(log))
        await h.start(CHOICE, resync_interval=3600)
        await vips.take(3.0)
        await vips.renew(3.0)
        await vips.release()
        st = h.status()
        await h.close()
        return log, st

    log, st = run_virtual(main())
    assert log == [
        "nft delete hc_nat",  # start: a backup holds no SNAT table
        "vips take",
        "nft install hc_nat",  # after the VIPs: the SNAT address is held
        "vips renew",
        "nft delete hc_nat",  # before the VIPs go
        "vips release",
        "nft delete hc_nat",  # close
    ]
    assert st["plane"] == {"kind": "nftables", "reason": "nftables: configured"}
    assert st["snat"]["active"] is False and st["snat"]["reason"] == "releasing the VIP group"


def test_lone_director_is_active_and_a_reload_replaces_the_table() -> None:
    async def main() -> list[str]:
        log: list[str] = []
        h = host(BASE + NAT % "nat_a", log)
        await h.start(CHOICE, resync_interval=3600)
        await h.reconfigure(loads(BASE + NAT % "nat_b", check_files=False))
        await h.reconfigure(loads(BASE + NAT % "nat_b", check_files=False))  # no change
        await h.reconfigure(loads(BASE, check_files=False))  # nat dropped
        assert h.status()["snat"] is None
        await h.close()
        return log

    assert run_virtual(main()) == [
        "nft install nat_a",
        "nft delete nat_a",
        "nft install nat_b",
        "nft delete nat_b",
    ]


def test_dry_run_touches_nothing() -> None:
    async def main() -> tuple[list[str], dict[str, Any]]:
        log: list[str] = []
        h = host(BASE + NAT % "hc_nat", log, dry_run=True)
        vips = Vips(log)
        assert h.follow(vips) is vips
        await h.start(CHOICE, resync_interval=3600)
        st = h.status()
        await h.close()
        return log, st

    log, st = run_virtual(main())
    assert log == []
    assert st == {"plane": CHOICE.as_dict(), "sysctls": [], "snat": None}
