"""The lab's cluster: the seed's LVS-NAT cluster built in network namespaces on one machine.

``Cluster`` owns the addressing plan, builds the namespaces and links on a ``NetnsLab``, writes
each director's daemon config, and starts, kills and queries the processes (real servers and
daemons). The first form has one director; the HA form has two (director-a, director-b) sharing
the public and inside bridges, with a third bridge for heartbeats, and the VIP group
(public VIP + inside gateway) is then added and removed by the daemons themselves.

Only documentation ranges are used: public 198.51.100.0/24, inside 192.0.2.0/24, heartbeat link
203.0.113.0/24. Nothing leaves the namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hacontrol.lab.netns import NetnsLab, Ns
from hacontrol.lab.traffic import Run

VIP = "198.51.100.10"
PORT = 80
TARGET = f"{VIP}:{PORT}"
CLIENT = "198.51.100.100"
GATEWAY = "192.0.2.1"
REAL_SERVERS = {"rs1": "192.0.2.2", "rs2": "192.0.2.3", "rs3": "192.0.2.4"}
API = "127.0.0.1:9480"
HB_PORT = 5405
PUBLIC_IF, INSIDE_IF, HB_IF = "eth0", "eth1", "eth2"


@dataclass(frozen=True)
class Director:
    """One director: its node name (also its namespace's short name) and own addresses."""

    name: str
    public: str  # its own public address
    inside: str  # its own inside address (the single director holds the gateway itself)
    heartbeat: str | None = None  # its address on the heartbeat link (HA form)
    priority: int = 100


SINGLE = (Director("director", "198.51.100.2", GATEWAY),)
PAIR = (
    Director("director-a", "198.51.100.2", "192.0.2.11", "203.0.113.11", priority=150),
    Director("director-b", "198.51.100.3", "192.0.2.12", "203.0.113.12", priority=100),
)


@dataclass(frozen=True)
class Timing:
    """Check and HA timing used by the lab (short, so the demonstration is quick)."""

    check_interval: float = 0.5
    check_timeout: float = 0.25
    rise: int = 2
    fall: int = 2
    hb_interval: float = 0.2
    dead_after: int = 3
    preempt_delay: float = 2.0
    lease: float = 3.0


class Cluster:
    """The namespaces, links and processes of one lab run."""

    def __init__(self, lab: NetnsLab, workdir: Path, ha: bool = False, timing: Timing = Timing()):
        self.lab = lab
        self.workdir = workdir
        self.ha = ha
        self.timing = timing
        self.directors = {d.name: d for d in (PAIR if ha else SINGLE)}
        self.backends: dict[str, subprocess.Popen[Any]] = {}
        self._log_offset: dict[str, int] = {}
        self.daemons: dict[str, subprocess.Popen[Any]] = {}
        self.runs: list[Run] = []  # client loads and status watchers (hacontrol.lab.traffic)

    # ------------------------------------------------------------ building

    def build(self) -> None:
        lab = self.lab
        sw = lab.add("switch")
        for br in ("br-pub", "br-in", *(["br-hb"] if self.ha else [])):
            lab.bridge(sw, br)
        client = lab.add("client")
        lab.attach(sw, "br-pub", client, PUBLIC_IF, "pub-client")
        client.addr(PUBLIC_IF, f"{CLIENT}/24")
        for d in self.directors.values():
            ns = lab.add(d.name, forward=True)
            tag = d.name.removeprefix("director").strip("-") or "d"
            lab.attach(sw, "br-pub", ns, PUBLIC_IF, f"pub-{tag}")
            lab.attach(sw, "br-in", ns, INSIDE_IF, f"in-{tag}")
            ns.addr(PUBLIC_IF, f"{d.public}/24")
            ns.addr(INSIDE_IF, f"{d.inside}/24")
            if d.heartbeat:
                lab.attach(sw, "br-hb", ns, HB_IF, f"hb-{tag}")
                ns.addr(HB_IF, f"{d.heartbeat}/24")
            if not self.ha:  # standalone: the VIP is configured by hand, as on the seed
                ns.addr(PUBLIC_IF, f"{VIP}/24")
        for rs, address in REAL_SERVERS.items():
            ns = lab.add(rs)
            lab.attach(sw, "br-in", ns, "eth0", f"in-{rs}")
            ns.addr("eth0", f"{address}/24")
            ns.ip("route", "add", "default", "via", GATEWAY)
            self.start_backend(rs)
        for rs in REAL_SERVERS:
            self.wait_backend(rs)

    def ns(self, short: str) -> Ns:
        return self.lab[short]

    @property
    def client(self) -> Ns:
        return self.lab["client"]

    # ------------------------------------------------------------ real servers

    def count_file(self, rs: str) -> Path:
        return self.workdir / f"{rs}.count"

    def start_backend(self, rs: str) -> None:
        log = open(self.workdir / f"{rs}.log", "a")  # noqa: SIM115 - handed to the child
        with log:
            self._log_offset[rs] = log.tell()
            self.backends[rs] = self.ns(rs).popen(
                sys.executable, "-m", "hacontrol.lab.backend", "--listen",
                f"{REAL_SERVERS[rs]}:{PORT}", "--name", rs, "--count-file",
                str(self.count_file(rs)), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_backend(self, rs: str, timeout: float = 60.0) -> None:
        """Wait until ``rs``'s server says it listens (its log line; no extra process)."""
        log, p = self.workdir / f"{rs}.log", self.backends[rs]
        deadline = time.monotonic() + timeout
        start = self._log_offset.get(rs, 0)  # the log is appended to by every start
        while f"{rs}: listening on" not in log.read_text(errors="replace")[start:]:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{rs}'s server did not start: {log.read_text()[-500:]}")
            time.sleep(0.05)

    def stop_backend(self, rs: str, sig: int = signal.SIGKILL) -> None:
        p = self.backends.pop(rs)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        p.wait(timeout=10)

    def served(self, rs: str) -> int:
        """How many requests ``rs`` itself has answered (its count file)."""
        try:
            return int(self.count_file(rs).read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def served_all(self) -> dict[str, int]:
        return {rs: self.served(rs) for rs in REAL_SERVERS}

    # ------------------------------------------------------------ daemons

    def config(self, d: Director) -> dict[str, Any]:
        """The daemon config for director ``d`` (the YAML of docs/config.md)."""
        t = self.timing
        state = self.workdir / d.name
        state.mkdir(exist_ok=True)
        cfg: dict[str, Any] = {
            "node": {"name": d.name},
            "api": {"listen": API},
            "dataplane": {"kind": "auto", "state_dir": str(state)},
            "logging": {"level": "info", "format": "json"},
            "services": [
                {
                    "name": "web",
                    "vip": VIP,
                    "port": PORT,
                    "protocol": "tcp",
                    "scheduler": "rr",
                    "forwarding": "nat",
                    # tcp (connect) checks: an http check would be counted by the real servers
                    # too, and the lab shows the servers' own counts of client requests
                    "check": {
                        "type": "tcp",
                        "interval": f"{int(t.check_interval * 1000)}ms",
                        "timeout": f"{int(t.check_timeout * 1000)}ms",
                        "rise": t.rise,
                        "fall": t.fall,
                    },
                    "real_servers": [
                        {"address": a, "port": PORT, "weight": 1} for a in REAL_SERVERS.values()
                    ],
                }
            ],
        }
        if self.ha:
            cfg["api"]["token_file"] = str(self._secret("api.token"))
            peers = [p for p in self.directors.values() if p.name != d.name]
            cfg["ha"] = {
                "bind": f"0.0.0.0:{HB_PORT}",
                "peers": [f"{p.inside}:{HB_PORT}" for p in peers]
                + [f"{p.heartbeat}:{HB_PORT}" for p in peers if p.heartbeat],
                "priority": d.priority,
                "preempt": True,
                "preempt_delay": f"{int(t.preempt_delay * 1000)}ms",
                "interval": f"{int(t.hb_interval * 1000)}ms",
                "dead_after": t.dead_after,
                "secret_file": str(self._secret("ha.key")),
                "vips": [
                    {"address": f"{VIP}/24", "interface": PUBLIC_IF},
                    {"address": f"{GATEWAY}/24", "interface": INSIDE_IF},
                ],
                "announce": {"count": 5, "interval": "50ms", "refresh": "30s"},
                "lease": f"{int(t.lease * 1000)}ms",
                "track": {"interfaces": [PUBLIC_IF, INSIDE_IF]},
            }
        return cfg

    def _secret(self, name: str) -> Path:
        p = self.workdir / name
        if not p.exists():
            p.write_text(secrets.token_hex(32) + "\n")
            p.chmod(0o600)
        return p

    def config_path(self, name: str) -> Path:
        return self.workdir / f"{name}.yaml"

    def write_config(self, name: str) -> Path:
        path = self.config_path(name)
        path.write_text(yaml.safe_dump(self.config(self.directors[name]), sort_keys=False))
        return path

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def start_daemon(self, name: str) -> subprocess.Popen[Any]:
        path = self.config_path(name)
        if not path.exists():
            self.write_config(name)
        with open(self.log_path(name), "a") as log:
            p = self.ns(name).popen(
                sys.executable, "-m", "hacontrol", "run", "-c", str(path),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.daemons[name] = p
        return p

    def kill_daemon(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.daemons.pop(name, None)
        if p is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)

    def daemon_alive(self, name: str) -> bool:
        p = self.daemons.get(name)
        return p is not None and p.poll() is None

    def hacontrol(
        self, name: str, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``hacontrol`` CLI inside director ``name``'s namespace (the timeout is generous:
        a CLI start takes seconds in the emulated IPVS guest on a busy host)."""
        return self.ns(name).run(sys.executable, "-m", "hacontrol", *args, check=False,
                                 timeout=timeout)  # fmt: skip

    def status_text(self, name: str) -> str:
        r = self.hacontrol(name, "status", "--api", API)
        return (r.stdout if r.returncode == 0 else r.stderr).rstrip()

    # ------------------------------------------------------------ power (HA form)

    def _ports(self, name: str) -> list[str]:
        tag = name.removeprefix("director").strip("-") or "d"
        return [f"pub-{tag}", f"in-{tag}", *([f"hb-{tag}"] if self.ha else [])]

    def power_off(self, name: str) -> None:
        """Like a power loss: the daemon dies at once (SIGKILL) and every link goes dark."""
        self.kill_daemon(name, signal.SIGKILL)
        ns = self.ns(name)
        for port in self._ports(name):
            self.ns("switch").down(port)
        for ifname in (PUBLIC_IF, INSIDE_IF, *([HB_IF] if self.ha else [])):
            ns.down(ifname)

    def power_on(self, name: str) -> None:
        """Links back up, then the daemon starts again."""
        ns = self.ns(name)
        for ifname in (PUBLIC_IF, INSIDE_IF, *([HB_IF] if self.ha else [])):
            ns.up(ifname)
        for port in self._ports(name):
            self.ns("switch").up(port)
        self.start_daemon(name)

    def mac(self, name: str, ifname: str = PUBLIC_IF) -> str | None:
        r = self.ns(name).ip("-j", "link", "show", ifname, check=False)
        with contextlib.suppress(ValueError, IndexError, KeyError):
            return str(json.loads(r.stdout)[0]["address"])
        return None

    def neighbour(self, name: str, address: str, ifname: str = PUBLIC_IF) -> str | None:
        """The MAC ``name``'s neighbour table holds for ``address`` (None if no entry)."""
        r = self.ns(name).ip("-j", "neigh", "show", address, "dev", ifname, check=False)
        with contextlib.suppress(ValueError, IndexError, KeyError):
            return str(json.loads(r.stdout)[0]["lladdr"])
        return None

    def holder(self, mac: str | None) -> str | None:
        """Which director owns ``mac`` on its public interface."""
        return next((d for d in self.directors if mac and self.mac(d) == mac), None)

    # ------------------------------------------------------------ --keep

    def how_to_explore(self) -> list[str]:
        first = next(iter(self.directors))
        lines = [f"namespaces: {' '.join(ns.name for ns in self.lab.namespaces.values())}"]
        lines.append(f"files (configs, logs, counts): {self.workdir}")
        lines.append(f"client:   ip netns exec {self.client.name} curl -s http://{VIP}:{PORT}/")
        for d in self.directors:
            lines.append(
                f"status:   ip netns exec {self.ns(d).name} {sys.executable} -m hacontrol "
                f"status --api {API}"
            )
        lines.append(f"table:    ip netns exec {self.ns(first).name} nft list ruleset")
        lines.append(f"stop rs2: ip netns pids {self.ns('rs2').name} | xargs -r kill")
        if self.ha:
            lines.append(
                f"handover: ip netns exec {self.ns(first).name} {sys.executable} -m hacontrol "
                f"drill handover -c {self.config_path(first)}"
            )
            lines.append(f"VIPs:     ip -n {self.ns(first).name} -br addr")
        lines.append(f"shell:    ip netns exec {self.client.name} bash")
        return lines
