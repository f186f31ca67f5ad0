"""LocalTracker on a real kernel: tracked interface link events and gateway reachability.

The tracker runs inside the director namespace (as the daemon does) in a small script that prints
every TrackEvent as a JSON line; the test changes links and addresses with ``ip`` and waits for
the expected event with a deadline.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hacontrol.lab.netns import NetnsLab, Ns

pytestmark = pytest.mark.root

DRIVER = r"""
import asyncio, ipaddress, json, sys, time
from hacontrol.ha.track import LocalTracker
from hacontrol.model import Endpoint, HAConfig, TrackConfig, VipConfig
from hacontrol import logs

logs.configure(stream=sys.stderr)
opt = json.loads(sys.argv[1])
cfg = TrackConfig(
    interfaces=tuple(opt.get("interfaces", ())),
    gateway=ipaddress.ip_address(opt["gateway"]) if opt.get("gateway") else None,
    gateway_interval=opt.get("interval", 0.2),
    gateway_fall=opt.get("fall", 3),
)
tracker = LocalTracker(cfg)
if "vips" in opt:  # as the daemon builds it: from the ha section, VIP interfaces by default
    ha = HAConfig(
        bind=Endpoint(ipaddress.ip_address("192.0.2.11"), 5405), peers=(), secret_file="-",
        vips=tuple(VipConfig(ipaddress.ip_interface(a), i) for a, i in opt["vips"]), track=cfg,
    )
    tracker = LocalTracker.from_config(ha)

def emit(ev):
    print(json.dumps({"t": time.monotonic(), "name": ev.name, "failed": ev.failed,
                      "blocking": ev.blocking, "reason": ev.reason}), flush=True)

async def main():
    print(json.dumps({"ready": time.monotonic()}), flush=True)
    try:
        await asyncio.wait_for(tracker.run(emit), opt.get("seconds", 60))
    except TimeoutError:
        pass

if opt.get("uvloop"):  # the daemon's loop
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


class Events:
    """The tracker process and the events it printed."""

    def __init__(self, ns: Ns, **opt: object) -> None:
        self.proc = ns.popen(
            sys.executable,
            "-c",
            DRIVER,
            json.dumps(opt),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.expect(lambda e: "ready" in e, 20, "tracker to start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.q.put(json.loads(line))

    def expect(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                err = ""
                if self.proc.poll() is not None and self.proc.stderr is not None:
                    err = self.proc.stderr.read()[-2000:]
                raise AssertionError(f"no event {what} within {timeout}s; seen {self.seen}\n{err}")
            try:
                ev = self.q.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self.seen.append(ev)
            if pred(ev):
                return ev

    def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Events arriving in the next ``seconds`` (expected: none)."""
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.q.get(timeout=left))
            except queue.Empty:
                break
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def reason(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("reason") == text


@dataclass
class Net:
    d: Ns  # the director (tracker inside)
    peer: Ns  # the other end of the director's eth1
    gw: Ns  # the gateway on eth0


@pytest.fixture
def net(netns_lab: NetnsLab) -> Iterator[Net]:
    lab = netns_lab
    d, peer, gw = lab.add("d"), lab.add("peer"), lab.add("gw")
    lab.link(d, "eth0", gw, "eth0")
    lab.link(d, "eth1", peer, "eth1")
    d.addr("eth0", "198.51.100.11/24")
    d.addr("eth0", "2001:db8:100::11/64")
    gw.addr("eth0", "198.51.100.1/24")
    gw.addr("eth0", "2001:db8:100::1/64")
    # else the kernel flushes the gateway's IPv6 address when its link goes down
    gw.sysctl("net.ipv6.conf.eth0.keep_addr_on_down", "1")
    d.addr("eth1", "192.0.2.11/24")
    peer.addr("eth1", "192.0.2.12/24")
    yield Net(d, peer, gw)


@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_interface_down_up_missing(net: Net, uvloop: bool) -> None:
    ev = Events(net.d, interfaces=["eth1", "eth0"], seconds=60, uvloop=uvloop)
    try:
        first = ev.expect(reason("interface eth1 up"), 10, "initial eth1 state")
        assert first["name"] == "interface:eth1" and first["failed"] is False
        assert first["blocking"] is True
        ev.expect(reason("interface eth0 up"), 10, "initial eth0 state")

        t0 = time.monotonic()
        net.d.down("eth1")  # administratively down on the director
        down = ev.expect(reason("interface eth1 down"), 5, "eth1 down")
        assert down["failed"] is True and down["name"] == "interface:eth1"
        assert down["t"] - t0 < 1.0, f"detected after {down['t'] - t0:.3f}s"

        net.d.up("eth1")
        up = ev.expect(reason("interface eth1 up"), 5, "eth1 recovery")
        assert up["failed"] is False

        t0 = time.monotonic()
        net.peer.down("eth1")  # the far end goes away: carrier lost
        down = ev.expect(reason("interface eth1 down"), 5, "eth1 carrier loss")
        assert down["t"] - t0 < 1.0
        net.peer.up("eth1")
        ev.expect(reason("interface eth1 up"), 5, "eth1 carrier back")

        net.peer.ip("link", "del", "eth1")  # the veth pair is deleted
        missing = ev.expect(reason("interface eth1 missing"), 5, "eth1 missing")
        assert missing["failed"] is True
        # eth0 never changed: no event for it besides the initial one
        assert [e for e in ev.seen if e.get("name") == "interface:eth0"] == [
            e for e in ev.seen if e.get("reason") == "interface eth0 up"
        ][:1]
    finally:
        ev.stop()


def test_a_vips_interface_is_tracked_by_default(net: Net) -> None:
    """No ``track.interfaces``: the VIP's interface is watched anyway, and losing its carrier
    (the far end of the veth goes down: IFF_UP stays, IFF_RUNNING goes) is a blocking fault."""
    ev = Events(net.d, vips=[["192.0.2.100/24", "eth1"]], seconds=60)
    try:
        first = ev.expect(reason("interface eth1 up"), 10, "initial eth1 state")
        assert first["blocking"] is True and first["failed"] is False
        net.peer.down("eth1")
        down = ev.expect(reason("interface eth1 down"), 5, "eth1 carrier loss")
        assert down["failed"] is True and down["blocking"] is True
        link = json.loads(net.d.ip("-j", "link", "show", "eth1").stdout)[0]
        assert {"UP", "NO-CARRIER"} <= set(link["flags"]), link  # admin up, no carrier
        net.peer.up("eth1")
        ev.expect(reason("interface eth1 up"), 5, "eth1 carrier back")
        assert not [e for e in ev.seen if "eth0" in e.get("reason", "")]  # eth0: no VIP there
    finally:
        ev.stop()


def test_a_missing_interface_at_start_is_a_fault(net: Net) -> None:
    ev = Events(net.d, interfaces=["eth7"], seconds=30)
    try:
        e = ev.expect(reason("interface eth7 missing"), 10, "eth7 missing at start")
        assert e["failed"] is True
    finally:
        ev.stop()


@pytest.mark.parametrize(
    ("gateway", "uvloop"),
    [("198.51.100.1", False), ("2001:db8:100::1", False), ("198.51.100.1", True)],
)
def test_gateway_reachability(net: Net, gateway: str, uvloop: bool) -> None:
    interval, fall = 0.2, 3
    ev = Events(net.d, gateway=gateway, interval=interval, fall=fall, seconds=90, uvloop=uvloop)
    up, down = f"gateway {gateway} reachable", f"gateway {gateway} unreachable"
    cidr = f"{gateway}/{64 if ':' in gateway else 24}"
    try:
        e = ev.expect(reason(up), 10, "gateway answering")
        assert e["name"] == f"gateway:{gateway}" and e["failed"] is False
        assert ev.quiet(1.0) == []  # steady while it answers

        # the gateway's link goes down
        t0 = time.monotonic()
        net.gw.down("eth0")
        e = ev.expect(reason(down), 10, "gateway unreachable (link down)")
        took = e["t"] - t0
        assert e["failed"] is True and e["blocking"] is True
        # fall misses, each `interval` apart: not before (fall - 1) intervals
        assert (fall - 1) * interval <= took < fall * interval + 2.0, took
        net.gw.up("eth0")
        ev.expect(reason(up), 10, "gateway back (link up)")

        # the gateway's address is removed
        net.gw.ip("addr", "del", cidr, "dev", "eth0")
        ev.expect(reason(down), 10, "gateway unreachable (address removed)")
        net.gw.addr("eth0", cidr)
        ev.expect(reason(up), 10, "gateway back (address restored)")
    finally:
        ev.stop()
