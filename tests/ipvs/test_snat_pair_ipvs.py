"""Two real daemons (``hacontrol run -c FILE``) on the IPVS plane: the real server's own traffic
leaves with the VIP through whichever director is active, over a crash and a clean hand-over.

The topology of test_host_ipvs.py (qemu guest; each director is a network namespace with its own
IPVS table and nftables), now driven by the daemons themselves:

    outside (203.0.113.2: whoami :9000)      -- bridge "bo" --  d1 o0 203.0.113.11 | d2 o0 .12
    rs (198.51.100.2, gw 198.51.100.1: :8080) -- bridge "bi" --  d1 i0 198.51.100.11 | d2 i0 .12

Each daemon's config (``config``): the IPVS NAT service 203.0.113.10:80 -> 198.51.100.2:8080, the
VIP group {203.0.113.10 on o0, the real server's gateway 198.51.100.1 on i0} (the seed's pair),
``nat.snat`` 198.51.100.0/24 -> the VIP; d1 has the higher priority, no preemption. The crash is
``kill -9`` of d1's daemon plus its switch ports down (a dead host): the daemon leaves its kernel
state behind, the VIPs until their ``ha.lease`` runs out and the SNAT table for good, until a
restarted daemon removes it. HA timers are loose (1 s x 5, lease 12 s): the guest is emulated.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from ipvslab import wait_for

from hacontrol.cli_api import UnixConnection
from hacontrol.lab import whoami
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp

pytestmark = pytest.mark.ipvs

VIP, GW = "203.0.113.10", "198.51.100.1"
RS, OUTSIDE = "198.51.100.2", "203.0.113.2"
VIPS = {f"{VIP}/24", f"{GW}/24"}
ADDRS = {"d1": ("203.0.113.11", "198.51.100.11"), "d2": ("203.0.113.12", "198.51.100.12")}
PRIORITY = {"d1": 150, "d2": 100}
HB_PORT, LEASE = 5405, 12.0
TABLE = "hacontrol_nat"
SLOW = 240.0  # a daemon start (python under TCG, with another qemu maybe beside) or a failover


def config(name: str, work: Path) -> dict[str, Any]:
    peer = "d2" if name == "d1" else "d1"
    check = {"type": "tcp", "interval": "1s", "timeout": "800ms", "rise": 1, "fall": 3}
    return {
        "node": {"name": name},
        "api": {"listen": f"unix:{work / name}.sock"},
        "dataplane": {"kind": "ipvs", "resync_interval": "5s", "state_dir": str(work / name)},
        "logging": {"level": "info", "format": "json"},
        "host": {"set_sysctls": True},
        "services": [{"name": "web", "vip": VIP, "port": 80, "scheduler": "rr",
                      "forwarding": "nat", "check": check,
                      "real_servers": [{"address": RS, "port": 8080}]}],
        "nat": {"snat": [{"source": "198.51.100.0/24", "to": VIP}]},
        "ha": {
            "bind": f"0.0.0.0:{HB_PORT}",
            "peers": [f"{ADDRS[peer][1]}:{HB_PORT}", f"{ADDRS[peer][0]}:{HB_PORT}"],
            "priority": PRIORITY[name],
            "preempt": False,
            "interval": "1s",
            "dead_after": 5,
            "lease": f"{LEASE:g}s",
            "secret_file": str(work / "ha.key"),
            "vips": [{"address": f"{VIP}/24", "interface": "o0"},
                     {"address": f"{GW}/24", "interface": "i0"}],
        },
    }  # fmt: skip


@dataclass
class Pair:
    lab: NetnsLab
    work: Path
    daemons: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)

    @property
    def outside(self) -> Ns:
        return self.lab["out"]

    @property
    def rs(self) -> Ns:
        return self.lab["rs"]

    def start(self, name: str) -> None:
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config(name, self.work), sort_keys=False))
        with open(self.work / f"{name}.log", "a") as log:
            self.daemons[name] = self.lab[name].popen(
                sys.executable, "-m", "hacontrol", "run", "-c", str(path),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def status(self, name: str) -> dict[str, Any] | None:
        conn = UnixConnection(str(self.work / f"{name}.sock"), 10.0)
        try:
            conn.request("GET", "/v1/status")
            resp = conn.getresponse()
            return json.loads(resp.read()) if resp.status == 200 else None
        except OSError:
            return None
        finally:
            conn.close()

    def wait_role(self, name: str, role: str) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            p = self.daemons[name]
            assert p.poll() is None, f"{name} exited ({p.returncode}):\n{self.tail(name)}"
            doc = self.status(name)
            return doc if doc is not None and doc.get("role") == role else None

        return wait_for(ready, SLOW, f"{name} {role}", every=0.5)  # type: ignore[no-any-return]

    def hears_peer(self, name: str) -> bool:
        doc = self.status(name)
        return bool(doc and doc.get("ha") and (doc["ha"].get("peer") or {}).get("alive"))

    def snat_installed(self, name: str) -> bool:
        doc = self.status(name)
        assert doc is not None, f"{name} does not answer:\n{self.tail(name)}"
        return bool(doc["host"]["snat"]["installed"])

    def table_in(self, name: str) -> bool:
        """Whether ``name``'s namespace holds the SNAT table (read from the kernel)."""
        return TABLE in self.lab[name].run("nft", "list", "tables").stdout

    def vips(self, name: str) -> set[str]:
        out = self.lab[name].ip("-j", "addr", "show").stdout
        got = {f"{a['local']}/{a['prefixlen']}" for i in json.loads(out) for a in i["addr_info"]}
        return got & VIPS

    def own_source(self) -> str | None:
        """The source the outside saw for a new connection of the real server (None: failed).
        Probes run on a thread inside the namespace: a python start costs seconds under TCG."""
        try:
            return self.rs.call(lambda: whoami.ask(f"{OUTSIDE}:9000"))
        except OSError:
            return None

    def get(self) -> str | None:
        """The VIP service's answer to the outside (IPVS NAT on the active director)."""

        def fetch() -> str:
            conn = http.client.HTTPConnection(VIP, 80, timeout=5)
            try:
                conn.request("GET", "/")
                return conn.getresponse().read().decode().strip()
            finally:
                conn.close()

        try:
            return self.outside.call(fetch)
        except (OSError, http.client.HTTPException):
            return None

    def ports(self, name: str, up: bool) -> None:
        """``name``'s two switch ports up or down (its links gain or lose carrier)."""
        for port in (f"po{name[-1]}", f"pi{name[-1]}"):
            (self.lab["sw"].up if up else self.lab["sw"].down)(port)

    def kill9(self, name: str) -> None:
        p = self.daemons[name]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)

    def events(self, name: str, event: str) -> list[dict[str, Any]]:
        out = []
        for line in (self.work / f"{name}.log").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and doc.get("event") == event:
                    out.append(doc)
        return out

    def tail(self, name: str, n: int = 40) -> str:
        path = self.work / f"{name}.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return "\n".join(f"{name}| {x}" for x in lines[-n:])


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    with NetnsLab() as lab:
        p = Pair(lab, tmp_path)
        try:
            sw, out, rs = lab.add("sw"), lab.add("out"), lab.add("rs")
            lab.bridge(sw, "bo")
            lab.bridge(sw, "bi")
            lab.attach(sw, "bo", out, "eth0", "po")
            lab.attach(sw, "bi", rs, "eth0", "pr")
            out.addr("eth0", f"{OUTSIDE}/24")
            rs.addr("eth0", f"{RS}/24")
            rs.route("default", GW)
            for i, name in enumerate(("d1", "d2"), start=1):
                d = lab.add(name, forward=True)
                lab.attach(sw, "bo", d, "o0", f"po{i}")
                lab.attach(sw, "bi", d, "i0", f"pi{i}")
                d.addr("o0", f"{ADDRS[name][0]}/24")
                d.addr("i0", f"{ADDRS[name][1]}/24")
            key = tmp_path / "ha.key"
            key.write_text(secrets.token_hex(32) + "\n")
            key.chmod(0o600)
            out.popen(
                sys.executable, "-m", "hacontrol.lab.whoami", "--listen", f"{OUTSIDE}:9000",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            rs.popen(
                sys.executable, "-m", "hacontrol.lab.backend", "--listen", f"{RS}:8080",
                "--name", "rs", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_tcp(rs, RS, 8080, timeout=SLOW)
            yield p
        finally:
            for name, proc in p.daemons.items():  # killed before the namespaces go
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
                print(p.tail(name, 30))  # shown by pytest -rA when something failed


def test_snat_follows_the_daemons_over_a_crash_and_a_hand_over(pair: Pair) -> None:
    # (1) d1 alone becomes active, d2 joins as backup
    pair.start("d1")
    pair.wait_role("d1", "active")
    pair.start("d2")
    pair.wait_role("d2", "backup")
    wait_for(lambda: pair.hears_peer("d1") and pair.hears_peer("d2"), SLOW, "the pair")
    assert pair.vips("d1") == VIPS and pair.vips("d2") == set()
    got = wait_for(pair.get, SLOW, "the VIP service (IPVS NAT on d1) from the outside")
    assert got == "rs"
    assert pair.own_source() == VIP  # the real server's own connection, SNATed by d1
    assert pair.snat_installed("d1") and not pair.snat_installed("d2")
    assert pair.table_in("d1") and not pair.table_in("d2")

    # (2) d1 crashes: kill -9 and its links down; d2 takes the VIPs and the SNAT
    pair.kill9("d1")
    pair.ports("d1", up=False)
    pair.wait_role("d2", "active")
    # the role turns active first, then its action takes the VIPs and the SNAT table with them
    wait_for(lambda: pair.snat_installed("d2") and pair.table_in("d2"), SLOW, "d2's SNAT table")
    wait_for(lambda: pair.own_source() == VIP, SLOW, "the real server's source = VIP via d2")
    wait_for(lambda: pair.get() == "rs", SLOW, "the VIP service through d2")
    assert pair.table_in("d1")  # a kill -9 leaves the table; the VIPs go with their lease
    wait_for(lambda: not pair.vips("d1"), LEASE + SLOW, "d1's VIPs to expire (ha.lease)")

    # d1 comes back: its new daemon removes the leftover table and stays backup (no preempt)
    pair.ports("d1", up=True)
    pair.start("d1")
    pair.wait_role("d1", "backup")
    wait_for(lambda: pair.hears_peer("d1"), SLOW, "d1 hearing d2")
    assert not pair.table_in("d1") and not pair.snat_installed("d1")
    assert pair.own_source() == VIP and pair.vips("d2") == VIPS

    # (3) a clean SIGTERM of the active (d2) hands over to d1 and takes its SNAT table away
    os.killpg(pair.daemons["d2"].pid, signal.SIGTERM)
    assert pair.daemons["d2"].wait(timeout=SLOW) == 0, pair.tail("d2")
    assert not pair.table_in("d2") and pair.vips("d2") == set()
    assert [e["reason"] for e in pair.events("d2", "nat.snat") if not e["active"]][-2:] == [
        "releasing the VIP group",
        "stop",
    ]
    pair.wait_role("d1", "active")
    wait_for(lambda: pair.snat_installed("d1") and pair.table_in("d1"), SLOW, "d1's SNAT table")
    wait_for(lambda: pair.own_source() == VIP, SLOW, "the real server's source = VIP via d1")
    wait_for(lambda: pair.get() == "rs", SLOW, "the VIP service through d1 again")
