"""``dataplane: auto`` on a kernel with ip_vs as a module NOT loaded (the qemu guest).

The plane choice requests the genl family IPVS, the kernel loads ip_vs, the choice is ipvs; a wrr
service added through the plane then loads ip_vs_wrr (the kernel's own request_module for an
unknown scheduler). ip_vs is unloaded first: the guest harness loads it at boot, and any IPVS
connection still in the table holds the module until it expires, so this file is named to run
first in tests/ipvs (alphabetically) and the unload waits, bounded, for such leftovers.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from ipvslab import ipvsadm

from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.select import IPVS_PROC, choose_plane, open_plane
from hacontrol.dataplane.table import ServiceKey, ServiceSpec
from hacontrol.model import DataplaneConfig

pytestmark = pytest.mark.ipvs

UNLOAD_WAIT = 240  # s: IPVS TIME_WAIT/FIN_WAIT entries of earlier tests live up to 120 s

IPVS_MODULES = ("ip_vs_rr", "ip_vs_wrr", "ip_vs_sh", "ip_vs_mh", "ip_vs")  # dependents first


def have_proc() -> bool:
    return os.path.exists(IPVS_PROC)


def loaded(module: str) -> bool:
    with open("/proc/modules", encoding="ascii") as f:
        return any(line.split()[0] == module for line in f)


def unload_ipvs() -> None:
    """Empty the table, stop the sync daemons, unload ip_vs and its schedulers. Connections of
    earlier tests (and namespaces being torn down) hold ip_vs until they expire: retry, bounded."""
    ipvsadm("-C")
    for state in ("master", "backup"):
        subprocess.run(["ipvsadm", "--stop-daemon", state], capture_output=True, timeout=30)
    deadline = time.monotonic() + UNLOAD_WAIT
    while True:
        r = subprocess.run(
            ["modprobe", "-r", *IPVS_MODULES], capture_output=True, text=True, timeout=60
        )
        if r.returncode == 0 and not loaded("ip_vs"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"cannot unload ip_vs in {UNLOAD_WAIT}s: {r.stderr.strip()} "
                f"(connections left: {ipvsadm('-Lnc').count(chr(10)) - 2})"
            )
        time.sleep(0.5)


@pytest.fixture
def no_ipvs() -> Iterator[None]:
    """ip_vs unloaded for the test; the harness's modules loaded again afterwards."""
    unload_ipvs()
    try:
        yield
    finally:
        ipvsadm("-C")
        subprocess.run(["modprobe", "-a", *IPVS_MODULES], capture_output=True, timeout=60)


async def test_auto_loads_ip_vs_and_a_scheduler_on_demand(no_ipvs: None) -> None:
    assert not have_proc() and not loaded("ip_vs") and not loaded("ip_vs_wrr")
    choice = await choose_plane(DataplaneConfig(kind="auto"))
    print("choice:", choice)
    assert choice.kind == "ipvs"
    assert choice.reason == "ipvs: auto, loaded on demand via genl family request"
    assert have_proc() and loaded("ip_vs")

    # the daemon's path: open the plane the config asks for; add a wrr service through it
    plane, again = await open_plane(DataplaneConfig(kind="auto"))
    try:
        assert plane.kind == "ipvs" and again.reason.startswith("ipvs: auto, kernel has IPVS")
        assert not loaded("ip_vs_wrr")
        key = ServiceKey("tcp", "198.51.100.10", 80)
        await plane.apply({}, [Action("add_service", key, spec=ServiceSpec("wrr"))])
        assert loaded("ip_vs_wrr")
        assert "TCP  198.51.100.10:80 wrr" in ipvsadm("-Ln")
    finally:
        await plane.close()
