"""The VRRPv3 runner's surface without a network: a missing interface refuses the start with a
clear reason (the daemon turns it into a StartError), drills answer with what VRRP lacks
(DrillError: HTTP 409), and the status says ``protocol: vrrp3`` and lists every unavailable
feature before any packet. The wire and the machine in motion are tested against the real
keepalived (tests/integration/test_vrrp_keepalived.py)."""

from __future__ import annotations

import asyncio
import ipaddress
import re

import pytest

from hacontrol.ha.drills import DrillError
from hacontrol.ha.vrrp_runner import VrrpRunner
from hacontrol.ha.vrrp_status import UNAVAILABLE
from hacontrol.metrics import Metrics
from hacontrol.model import HAConfig, VipConfig, VrrpConfig


class NoVips:
    async def take(self, lease: float | None) -> None: ...
    async def renew(self, lease: float | None) -> None: ...
    async def release(self) -> None: ...
    async def present(self) -> bool:
        return False

    async def announce(self) -> int:
        return 0

    def describe(self) -> list[dict[str, object]]:
        return []


class NoNotify:
    async def notify(self, role: str, reason: str) -> None: ...


def runner(iface: str = "hcnosuch0") -> VrrpRunner:
    cfg = HAConfig(
        protocol="vrrp3",
        vrrp=VrrpConfig(51, iface, 100, (ipaddress.ip_address("192.0.2.12"),)),
        vips=(VipConfig(ipaddress.ip_interface("198.51.100.10/24"), "eth0"),
              VipConfig(ipaddress.ip_interface("2001:db8::10/64"), "eth0")),
    )  # fmt: skip
    return VrrpRunner(cfg, "d1", clock=lambda: 1.0, metrics=Metrics(), vips=NoVips(),
                      notifier=NoNotify())  # fmt: skip


def test_missing_interface_refuses_the_start() -> None:
    why = "ha.vrrp.interface hcnosuch0: interface hcnosuch0 does not exist"
    with pytest.raises(ValueError, match=re.escape(why)):
        asyncio.run(runner().start())


@pytest.mark.parametrize("drill", ["handover", "fault"])
def test_drills_are_refused_with_the_reason(drill: str) -> None:
    r = runner()
    coro = r.drill_handover() if drill == "handover" else r.drill_fault(30.0)
    with pytest.raises(DrillError, match=re.escape("ha.protocol vrrp3: a drill needs the peer's")):
        asyncio.run(coro)


def test_status_before_start_lists_what_is_unavailable() -> None:
    doc = runner().status()
    assert doc["protocol"] == "vrrp3" and doc["role"] == "starting" and doc["peer"] is None
    assert [u["feature"] for u in doc["unavailable"]] == list(UNAVAILABLE)
    assert doc["vrrp"]["advertised"] == ["198.51.100.10"]  # the instance's family only
    assert doc["vrrp"]["destinations"] == ["192.0.2.12"] and doc["vrrp"]["version"] == 4
