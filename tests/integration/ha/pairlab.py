"""The HA pair under test: two real ``hacontrol run`` daemons in two director namespaces.

``HaPair`` builds the topology on a ``NetnsLab`` (a switch namespace with a public bridge
198.51.100.0/24 and an inside bridge 192.0.2.0/24; director-a 198.51.100.2 / 192.0.2.11 with
priority 150, director-b 198.51.100.3 / 192.0.2.12 with priority 100; a client 198.51.100.100;
optionally a gateway 198.51.100.1 and one HTTP real server 192.0.2.2 routed via the gateway VIP),
writes each daemon's config (docs/config.md), starts and signals the daemons, and observes them:
the status document and /metrics over each daemon's unix API socket, the JSON log lines, the VIPs
in each namespace (``ip -j addr``), the client's neighbour entry for the VIP (pyroute2 inside the
client namespace) and the MAC of each director, through tests/integration/ha/nsprobe. Every
wait polls a condition with a deadline.

A daemon may run as an unprivileged user holding only some capabilities (``start(name,
run_as=RunAs(uid, gid))``: setpriv(1) with ambient capabilities, which the ``nft`` it runs
inherits); the files it reads and the work directory must then be that user's.

Heartbeats go to both of the peer's addresses (two paths: inside and public). A heartbeat
partition is an nftables table ``hctest`` in one director namespace dropping UDP port 5405 both
ways; losing the gateway is the same table dropping ICMP to and from it.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nsprobe
import yaml
from nsprobe import wait_for
from prometheus_client.parser import text_string_to_metric_families

from hacontrol.cli_api import UnixConnection
from hacontrol.lab import traffic
from hacontrol.lab.netns import NetnsLab

A, B = "director-a", "director-b"
VIP, GW_VIP, PREFIX = "198.51.100.10", "192.0.2.1", 24
VIPS = (f"{VIP}/{PREFIX}", f"{GW_VIP}/{PREFIX}")
CLIENT, GATEWAY, RS = "198.51.100.100", "198.51.100.1", "192.0.2.2"
HB_PORT, HTTP_PORT = 5405, 80
PUB, INSIDE = "eth0", "eth1"
ADDRS = {A: ("198.51.100.2", "192.0.2.11"), B: ("198.51.100.3", "192.0.2.12")}
PRIORITY = {A: 150, B: 100}


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


@dataclass(frozen=True)
class Spec:
    """What a test wants of the pair (HA timers short: 100 ms x 3)."""

    interval: float = 0.1
    dead_after: int = 3
    preempt: bool = False  # most scenarios must not flap back by preemption
    preempt_delay: float = 0.0
    lease: float = 3.0
    announce_count: int = 5
    gateway: bool = False  # a gateway namespace, tracked by both directors
    gateway_fall: int = 3  # missed 100 ms probes before the gateway counts as lost
    real_server: bool = False  # an HTTP real server behind the VIP (nftables data plane)
    track_links: bool = True  # list both links in track.interfaces (False: the VIPs' default)

    @property
    def dead(self) -> float:
        return self.interval * self.dead_after


@dataclass(frozen=True)
class RunAs:
    """Run a daemon as ``uid``/``gid`` (and that user's groups) holding only ``caps``: they are
    made ambient, so they survive the exec of python and of the ``nft`` it runs, and the bounding
    set holds nothing else."""

    uid: int
    gid: int
    caps: tuple[str, ...] = ("net_admin", "net_raw")
    wrapper: tuple[str, ...] = ()  # run after setpriv, execs the daemon (e.g. a seccomp filter)

    def argv(self) -> list[str]:
        plus = ",".join(f"+{c}" for c in self.caps)
        some = f"-all,{plus}" if plus else "-all"
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                f"--inh-caps={some}", f"--ambient-caps={some}", f"--bounding-set={some}",
                *self.wrapper]  # fmt: skip


@dataclass(frozen=True)
class Transition:
    # monotonic seconds (this process's clock = the daemons' clock: no time namespace); derived
    # from the status' "ago" at the time of the request, so not part of equality
    at: float = field(compare=False)
    frm: str
    to: str
    reason: str


@dataclass
class HaPair:
    """The pair of one test (made by the ``make_pair`` fixture of conftest.py)."""

    lab: NetnsLab
    workdir: Path
    spec: Spec = Spec()
    daemons: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    runs: list[traffic.Run] = field(default_factory=list)
    _macs: dict[str, str] = field(default_factory=dict)

    # -- building --------------------------------------------------------------------------

    def build(self) -> None:
        lab, sp = self.lab, self.spec
        sw = lab.add("sw")
        lab.bridge(sw, "br-pub")
        lab.bridge(sw, "br-in")
        client = lab.add("client")
        lab.attach(sw, "br-pub", client, PUB, "p-client")
        client.addr(PUB, f"{CLIENT}/{PREFIX}")
        for name, (pub, inside) in ADDRS.items():
            ns = lab.add(name, forward=True)
            tag = name[-1]
            lab.attach(sw, "br-pub", ns, PUB, f"p-{tag}")
            lab.attach(sw, "br-in", ns, INSIDE, f"i-{tag}")
            ns.addr(PUB, f"{pub}/{PREFIX}")
            ns.addr(INSIDE, f"{inside}/{PREFIX}")
        if sp.gateway:
            gw = lab.add("gw")
            lab.attach(sw, "br-pub", gw, PUB, "p-gw")
            gw.addr(PUB, f"{GATEWAY}/{PREFIX}")
        (self.workdir / "ha.key").write_text(secrets.token_hex(32) + "\n")
        (self.workdir / "api.token").write_text(secrets.token_hex(16) + "\n")
        for p in ("ha.key", "api.token"):
            (self.workdir / p).chmod(0o600)
        if sp.real_server:
            self._start_real_server()

    def _start_real_server(self) -> None:
        rs = self.lab.add("rs")
        self.lab.attach(self.lab["sw"], "br-in", rs, "eth0", "i-rs")
        rs.addr("eth0", f"{RS}/{PREFIX}")
        rs.ip("route", "add", "default", "via", GW_VIP)
        log = self.workdir / "rs.log"
        with open(log, "w") as f:
            p = rs.popen(sys.executable, "-m", "hacontrol.lab.backend", "--listen",
                         f"{RS}:{HTTP_PORT}", "--name", "rs1", stdout=f,
                         stderr=subprocess.STDOUT)  # fmt: skip
        wait_for(lambda: "listening on" in log.read_text() or p.poll() is not None, 60,
                 "the real server to listen")  # fmt: skip
        assert p.poll() is None, log.read_text()

    def config(self, name: str) -> dict[str, Any]:
        sp = self.spec
        peer = B if name == A else A
        services: list[dict[str, Any]] = []
        if sp.real_server:
            check = {"type": "tcp", "interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 2}
            services = [{"name": "web", "vip": VIP, "port": HTTP_PORT, "scheduler": "rr",
                         "forwarding": "nat", "check": check,
                         "real_servers": [{"address": RS, "port": HTTP_PORT}]}]  # fmt: skip
        track: dict[str, Any] = {"interfaces": [PUB, INSIDE]} if sp.track_links else {}
        if sp.gateway:
            track.update(gateway=GATEWAY, gateway_interval="100ms", gateway_fall=sp.gateway_fall)
        return {
            "node": {"name": name},
            "api": {"listen": f"unix:{self.sock(name)}",
                    "token_file": str(self.workdir / "api.token")},
            "dataplane": {"kind": "nftables" if sp.real_server else "memory",
                          "state_dir": str(self.workdir / name)},
            "logging": {"level": "info", "format": "json"},
            "services": services,
            "ha": {
                "bind": f"0.0.0.0:{HB_PORT}",
                "peers": [f"{ADDRS[peer][1]}:{HB_PORT}", f"{ADDRS[peer][0]}:{HB_PORT}"],
                "priority": PRIORITY[name],
                "preempt": sp.preempt,
                "preempt_delay": _ms(sp.preempt_delay),
                "interval": _ms(sp.interval),
                "dead_after": sp.dead_after,
                "secret_file": str(self.workdir / "ha.key"),
                "vips": [{"address": VIPS[0], "interface": PUB},
                         {"address": VIPS[1], "interface": INSIDE}],
                "announce": {"count": sp.announce_count, "interval": "50ms", "refresh": "30s"},
                "lease": _ms(sp.lease),
                "track": track,
            },
        }  # fmt: skip

    def sock(self, name: str) -> Path:
        return self.workdir / f"{name[-1]}.sock"

    def config_path(self, name: str) -> Path:
        return self.workdir / f"{name}.yaml"

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- processes -------------------------------------------------------------------------

    def start(
        self, name: str, run_as: RunAs | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[Any]:
        """Start ``name``'s daemon (as ``run_as`` when given; ``env``: extra variables)."""
        path = self.config_path(name)
        path.write_text(yaml.safe_dump(self.config(name), sort_keys=False))
        prefix = run_as.argv() if run_as is not None else []
        full_env = {**os.environ, **env} if env else None
        with open(self.log_path(name), "a") as log:
            p = self.lab[name].popen(*prefix, sys.executable, "-m", "hacontrol", "run", "-c",
                                     str(path), stdout=log, stderr=subprocess.STDOUT,
                                     env=full_env)  # fmt: skip
        self.daemons[name] = p
        return p

    def start_pair(self) -> None:
        """director-a first (it becomes active alone), then director-b (backup)."""
        self.start(A)
        self.wait_role(A, "active", 60)
        self.start(B)
        self.wait_role(B, "backup", 60)
        wait_for(lambda: self.peer(A).get("alive") and self.peer(B).get("alive"), 10,
                 "the pair hearing each other", self.explain)  # fmt: skip
        self.wait_vips({A}, 10)

    def signal(self, name: str, sig: int) -> None:
        os.killpg(self.daemons[name].pid, sig)

    def kill(self, name: str) -> None:
        p = self.daemons[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)

    def exit_code(self, name: str, timeout: float) -> int:
        return self.daemons[name].wait(timeout=timeout)

    def close(self) -> None:
        for r in self.runs:
            with contextlib.suppress(Exception):
                r.stop()
        for p in self.daemons.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGCONT)  # a SIGSTOPped daemon must die too

    def cli(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The ``hacontrol`` CLI inside ``name``'s namespace, pointed at its config."""
        return self.lab[name].run(sys.executable, "-m", "hacontrol", *args, "-c",
                                  str(self.config_path(name)), check=False,
                                  timeout=timeout)  # fmt: skip

    # -- the API -----------------------------------------------------------------------------

    def get(self, name: str, path: str, timeout: float = 5.0) -> tuple[int, bytes] | None:
        conn = UnixConnection(str(self.sock(name)), timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return None
        finally:
            conn.close()

    def status(self, name: str) -> dict[str, Any] | None:
        got = self.get(name, "/v1/status")
        if got is None or got[0] != 200:
            return None
        doc: dict[str, Any] = json.loads(got[1])
        return doc

    def ha(self, name: str) -> dict[str, Any]:
        doc = self.status(name)
        assert doc is not None, f"{name} does not answer"
        assert doc.get("ha") is not None, f"{name} runs without HA: role {doc.get('role')}"
        ha: dict[str, Any] = doc["ha"]
        return ha

    def peer(self, name: str) -> dict[str, Any]:
        """The peer as ``name`` sees it ({} before it heard one)."""
        peer: dict[str, Any] = self.ha(name)["peer"] or {}
        return peer

    def role(self, name: str) -> str | None:
        doc = self.status(name)
        return None if doc is None else str(doc.get("role"))

    def transitions(self, name: str) -> list[Transition]:
        """The last transitions (status), on this process's monotonic clock."""
        before = time.monotonic()
        ha = self.ha(name)
        t0 = (before + time.monotonic()) / 2  # the daemon's "now" lies within the request
        return [Transition(t0 - x["ago"], x["from"], x["to"], x["reason"])
                for x in ha["transitions"]]  # fmt: skip

    def last(self, name: str) -> Transition:
        trs = self.transitions(name)
        assert trs, f"{name} has no transition"
        return trs[-1]

    def metric(self, name: str, metric: str, **labels: str) -> float:
        """One sample of ``name``'s /metrics (0 when the series does not exist yet)."""
        got = self.get(name, "/metrics")
        assert got is not None and got[0] == 200, f"{name}: /metrics unavailable"
        total = 0.0
        for fam in text_string_to_metric_families(got[1].decode()):
            for s in fam.samples:
                if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def guard_dropped(self, name: str) -> int:
        """Packets the heartbeat guard's nft counter (hacontrol.ha.guard) shed in ``name``'s
        namespace: foreign sources, wrong magic, over the per-path rate."""
        r = self.lab[name].run("nft", "-j", "list", "counter", "inet", "hacontrol_hb", "junk")
        items = json.loads(r.stdout)["nftables"]
        return int(next(i["counter"]["packets"] for i in items if "counter" in i))

    def wait_role(self, name: str, role: str, timeout: float = 20.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            doc = self.status(name)
            if doc is not None and doc.get("role") == role:
                return doc
            p = self.daemons.get(name)
            if p is not None and p.poll() is not None:
                raise AssertionError(f"{name} exited ({p.returncode}):\n{self.tail(name)}")
            return None

        return wait_for(ready, timeout, f"{name} {role}", self.explain)

    # -- logs --------------------------------------------------------------------------------

    def events(self, name: str, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path(name).read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if isinstance(d, dict) and (event is None or d.get("event") == event):
                    out.append(d)
        return out

    def tail(self, name: str, n: int = 40) -> str:
        try:
            lines = self.log_path(name).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({name}: no log)"
        return "\n".join(f"{name}| {x}" for x in lines[-n:])

    def explain(self) -> str:
        parts = []
        for name in self.daemons:
            doc = self.status(name)
            vips = self.vips(name)
            parts.append(f"{name}: role {doc and doc.get('role')}, vips {sorted(vips)}")
        return "\n".join(parts + [self.tail(n, 15) for n in self.daemons])

    # -- the kernel: VIPs, MACs, the client's neighbour ----------------------------------------

    def vips(self, name: str) -> dict[str, int | None]:
        """The VIPs configured in ``name``'s namespace -> valid lifetime left (None: forever)."""
        return nsprobe.addresses(self.lab[name], VIPS)

    def holders(self) -> set[str]:
        return {n for n in ADDRS if self.vips(n)}

    def wait_vips(self, holders: set[str], timeout: float = 10.0) -> None:
        """Wait until exactly ``holders`` hold the VIPs (all of them)."""

        def ok() -> bool:
            got = {n: set(self.vips(n)) for n in ADDRS}
            return all(got[n] == (set(VIPS) if n in holders else set()) for n in ADDRS)

        wait_for(ok, timeout, f"the VIPs on exactly {sorted(holders)}", self.explain)

    def mac(self, name: str) -> str:
        if name not in self._macs:
            self._macs[name] = nsprobe.mac_of(self.lab[name], PUB)
        return self._macs[name]

    def client_neighbour(self) -> str | None:
        """The MAC the client's neighbour entry for the VIP holds (pyroute2, in the client ns)."""
        return nsprobe.neighbour(self.lab["client"], VIP)

    def touch_vip(self) -> None:
        """One UDP datagram from the client to the VIP: the client resolves the VIP's MAC."""
        nsprobe.send_udp(self.lab["client"], VIP, 9, [b"x"])

    def client_learns(self, name: str, timeout: float = 10.0) -> None:
        """Wait until the client's neighbour entry for the VIP holds ``name``'s MAC (never
        touches the VIP meanwhile: the entry must change by the new active's announcement)."""
        mac = self.mac(name)
        wait_for(lambda: self.client_neighbour() == mac, timeout,
                 f"the client's neighbour entry for {VIP} = {name}'s MAC {mac} "
                 f"(it holds {self.client_neighbour()})", self.explain)  # fmt: skip

    def client_sees_active(self, name: str) -> None:
        """Make the client resolve the VIP now and check it reaches ``name``."""
        self.touch_vip()
        self.client_learns(name)

    # -- faults ------------------------------------------------------------------------------

    def block(self, name: str, *, heartbeats: bool = False, gateway: bool = False) -> None:
        """Replace ``name``'s test filter: drop heartbeats and/or ICMP with the gateway."""
        rules = []
        if heartbeats:
            rules += [f"udp dport {HB_PORT} drop", f"udp sport {HB_PORT} drop"]
        if gateway:
            rules += [f"ip daddr {GATEWAY} icmp type echo-request drop",
                      f"ip saddr {GATEWAY} icmp type echo-reply drop"]  # fmt: skip
        nsprobe.nft_filter(self.lab[name], rules)

    def unblock(self, name: str) -> None:
        nsprobe.nft_clear(self.lab[name])

    def links(self, name: str, up: bool) -> None:
        """``name``'s switch ports down (its links lose carrier) or up again."""
        sw = self.lab["sw"]
        for port in (f"p-{name[-1]}", f"i-{name[-1]}"):
            (sw.up if up else sw.down)(port)

    # -- client load -------------------------------------------------------------------------

    def load(self, count: int = 3000, interval: float = 0.02, duration: float = 90) -> traffic.Load:
        return traffic.Load(self.runs, self.lab["client"], f"{VIP}:{HTTP_PORT}", count,
                            interval=interval, timeout=1.0, duration=duration)  # fmt: skip


MakePair = Callable[..., HaPair]  # the make_pair fixture: make_pair(**Spec fields) -> HaPair
