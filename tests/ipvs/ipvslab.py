"""Helpers of the in-guest IPVS suite: ipvsadm, its output parsed, polling, a NAT director.

``ipvsadm`` runs it and raises on failure; ``kernel_table`` is ``ipvsadm -Ln`` parsed into a
Table, independently of hacontrol's own netlink codec; ``Director`` turns the guest's root
namespace into a NAT director: a client namespace on 203.0.113.0/24 and real servers rs1..rsN on
/30s of 192.0.2.0/24 (real server i is 192.0.2.(4i-2), the director's side 192.0.2.(4i-3)), the
VIP 198.51.100.10 on a dummy interface. Everything it creates is removed by ``close()``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)
from hacontrol.lab.netns import NetnsLab, Ns

FWD = {"Masq": "nat", "Route": "dr", "Tunnel": "tunnel", "Local": "local"}


def ipvsadm(*args: str, input: str | None = None) -> str:
    r = subprocess.run(["ipvsadm", *args], capture_output=True, text=True, input=input, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"ipvsadm {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


_SVC = re.compile(r"^(TCP|UDP|FWM)\s+(\S+)\s+(\S+)(.*)$")
_DEST = re.compile(r"^\s+->\s+(\S+)\s+(\w+)\s+(-?\d+)\s+\d+\s+\d+")


def _split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def parse_ipvsadm(text: str) -> tuple[Table, list[str]]:
    """``ipvsadm -Ln`` output -> (tcp/udp services as a Table, fwmark service lines)."""
    table: Table = {}
    fwmarks: list[str] = []
    current: ServiceKey | None = None
    for line in text.splitlines():
        m = _SVC.match(line)
        if m:
            proto, where, sched, rest = m.groups()
            if proto == "FWM":
                fwmarks.append(line.strip())
                current = None
                continue
            host, port = _split_hostport(where)
            p = re.search(r"persistent (\d+)", rest)
            current = ServiceKey(proto.lower(), host, port)  # type: ignore[arg-type]
            spec = ServiceSpec(scheduler=sched, persistence=int(p.group(1)) if p else 0)
            table[current] = TableService(spec, {})
            continue
        d = _DEST.match(line)
        if d and current is not None:
            host, port = _split_hostport(d.group(1))
            fwd: Any = FWD.get(d.group(2), d.group(2))
            table[current].dests[DestKey(host, port)] = DestSpec(int(d.group(3)), fwd)
    return table, fwmarks


def kernel_table() -> Table:
    """The kernel's tcp/udp services as ``ipvsadm -Ln`` shows them."""
    return parse_ipvsadm(ipvsadm("-Ln"))[0]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Director:
    """The guest's root namespace as a NAT director: a client namespace on 203.0.113.0/24, real
    servers rs1..rsN each on its own /30 of 192.0.2.0/24, the VIP on a dummy interface.
    Real server i is 192.0.2.(4i-2), its gateway (the director) 192.0.2.(4i-3)."""

    VIP = "198.51.100.10"

    def __init__(self, lab: NetnsLab, servers: int, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.links: list[str] = []
        _ip("link", "add", "hcvip0", "type", "dummy")
        self.links.append("hcvip0")
        _ip("addr", "add", f"{self.VIP}/32", "dev", "hcvip0")
        _ip("link", "set", "hcvip0", "up")
        subprocess.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        self.client = self._attach("cl", "hcc0", "203.0.113.1/24", "203.0.113.2/24", "203.0.113.1")
        self.servers: list[Ns] = []
        self.addresses: list[str] = []
        for i in range(1, servers + 1):
            gw, addr = f"192.0.2.{4 * i - 3}", f"192.0.2.{4 * i - 2}"
            self.servers.append(self._attach(f"rs{i}", f"hcr{i}", f"{gw}/30", f"{addr}/30", gw))
            self.addresses.append(addr)
        self.procs: dict[int, subprocess.Popen[Any]] = {}

    def _attach(self, short: str, root_if: str, root_cidr: str, ns_cidr: str, gw: str) -> Ns:
        ns = self.lab.add(short)
        _ip("link", "add", root_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        _ip("addr", "add", root_cidr, "dev", root_if)
        _ip("link", "set", root_if, "up")
        ns.addr("eth0", ns_cidr)
        ns.up("eth0")
        ns.ip("route", "add", "default", "via", gw)
        return ns

    def count_file(self, i: int) -> Path:
        return self.workdir / f"rs{i + 1}.count"

    def start_backend(self, i: int, port: int = 8080) -> None:
        """Start real server i (0-based): hacontrol.lab.backend, counting what it answers."""
        self.procs[i] = self.servers[i].popen(
            sys.executable, "-m", "hacontrol.lab.backend", "--listen",
            f"{self.addresses[i]}:{port}", "--name", f"rs{i + 1}",
            "--count-file", str(self.count_file(i)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill_backend(self, i: int) -> None:
        p = self.procs.pop(i)
        p.kill()
        p.wait(timeout=30)

    def counts(self) -> list[int]:
        out = []
        for i in range(len(self.servers)):
            f = self.count_file(i)
            out.append(int(f.read_text() or 0) if f.exists() else 0)
        return out

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        self.lab.close()  # deleting the namespaces deletes the veth pairs
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True)
