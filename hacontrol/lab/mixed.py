"""A VRRPv3 pair in the lab's HA cluster: each director runs keepalived or hacontrol in
``ha.protocol: vrrp3`` mode, on the same virtual router (the mixed pair of a migration).

It owns what differs between the two kinds: the config each one gets (the lab's daemon config
with a vrrp3 ``ha`` section, or a keepalived.conf with the same VIP group, priority and
interval: keepalived's defaults otherwise, as a keepalived user has them), starting and
stopping each (keepalived inside the director's namespace with its own pid files:
``keepalived -n -l -G -D --vrrp -f CONF -p PID -r VRRP_PID``), its role as it reports it, and
which director holds the VIP group. A director that runs keepalived also runs a standalone
hacontrol daemon (no ``ha``): it keeps the data plane, so only the VIP mover differs.

Used by tests/integration/test_vrrp_keepalived.py and bench/vrrp_bench.py. Documentation
addresses only (the lab's plan: hacontrol.lab.topology).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Literal

import yaml

from hacontrol.lab.topology import API, GATEWAY, INSIDE_IF, PUBLIC_IF, VIP, Cluster

__all__ = ["VRID", "Kind", "MixedPair"]

Kind = Literal["hacontrol", "keepalived"]
VRID = 51
GROUP = (VIP, GATEWAY)

KA_CONF = """\
global_defs {{
    router_id {name}
    vrrp_version 3
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface {interface}
    virtual_router_id {vrid}
    priority {priority}
    advert_int {advert}
{unicast}    virtual_ipaddress {{
        {vip}/24 dev {public}
        {gateway}/24 dev {inside}
    }}
}}
"""


class MixedPair:
    """Directors of ``c`` (its HA form), each given a kind; ``unicast``: peers by address,
    else multicast 224.0.0.18; ``advert``: the advertisement interval in seconds."""

    def __init__(
        self,
        c: Cluster,
        kinds: dict[str, Kind],
        *,
        advert: float = 1.0,
        unicast: bool = False,
        lease: float | None = None,
    ) -> None:
        """``lease``: how long hacontrol's VIPs outlive a killed daemon (default the larger of 3 s
        and 4 advertisement intervals)."""
        self.c, self.kinds, self.advert, self.unicast = c, kinds, advert, unicast
        self.lease = max(3.0, 4 * advert) if lease is None else lease
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.started: dict[str, int] = {}

    def path(self, name: str, ext: str) -> Path:
        return self.c.workdir / f"{name}.vrrp.{ext}"

    def peer_of(self, name: str) -> str:
        return next(d.inside for n, d in self.c.directors.items() if n != name)

    def write(self, name: str) -> None:
        d = self.c.directors[name]
        cfg = self.c.config(d)
        cfg["logging"]["level"] = "info"
        ha = cfg.pop("ha")
        if self.kinds[name] == "hacontrol":
            for key in ("interval", "dead_after"):  # the own heartbeat's timers
                ha.pop(key)
            ha["protocol"] = "vrrp3"
            ha["preempt_delay"] = "0s"  # keepalived's default
            vrrp: dict[str, Any] = {"vrid": VRID, "interface": INSIDE_IF,
                                    "advert_int": round(self.advert * 100)}  # fmt: skip
            if self.unicast:
                vrrp |= {"unicast_peers": [self.peer_of(name)], "source": d.inside}
            ha["vrrp"] = vrrp
            ha["lease"] = f"{self.lease:g}s"
            cfg["ha"] = ha
        else:
            uni = (f"    unicast_src_ip {d.inside}\n    unicast_peer {{\n"
                   f"        {self.peer_of(name)}\n    }}\n") if self.unicast else ""  # fmt: skip
            self.path(name, "conf").write_text(KA_CONF.format(
                name=name, interface=INSIDE_IF, vrid=VRID, priority=d.priority,
                advert=f"{self.advert:g}", unicast=uni, vip=VIP, gateway=GATEWAY,
                public=PUBLIC_IF, inside=INSIDE_IF,
            ))  # fmt: skip
        self.c.config_path(name).write_text(yaml.safe_dump(cfg, sort_keys=False))

    def log(self, name: str) -> Path:
        if self.kinds[name] == "keepalived":
            return self.path(name, "log")
        return self.c.log_path(name)

    def start(self, name: str) -> None:
        self.write(name)
        self.started[name] = _size(self.log(name))
        self.c.start_daemon(name)  # hacontrol (vrrp3), or the data plane beside keepalived
        if self.kinds[name] == "keepalived":
            for x in ("pid", "vrrp.pid"):  # a killed keepalived leaves its pid files
                self.path(name, x).unlink(missing_ok=True)
            with open(self.log(name), "a") as log:
                self.procs[name] = self.c.ns(name).popen(
                    "keepalived", "-n", "-l", "-G", "-D", "--vrrp",
                    "-f", str(self.path(name, "conf")), "-p", str(self.path(name, "pid")),
                    "-r", str(self.path(name, "vrrp.pid")), stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal the VIP mover of ``name`` (and its helpers) and wait for it to exit;
        SIGTERM is a clean stop (priority 0), SIGKILL a crash."""
        p = self.procs.pop(name, None)
        if p is not None:
            pids = [-p.pid]
            for x in ("pid", "vrrp.pid"):
                with contextlib.suppress(OSError, ValueError):
                    pids.append(int(self.path(name, x).read_text().strip()))
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)
            self.c.kill_daemon(name, signal.SIGTERM)
        else:
            self.c.kill_daemon(name, sig)

    def stop_all(self) -> None:
        for name in list(self.c.directors):
            self.stop(name, signal.SIGKILL)
            for cidr, ifname in ((f"{VIP}/24", PUBLIC_IF), (f"{GATEWAY}/24", INSIDE_IF)):
                self.c.ns(name).ip("addr", "del", cidr, "dev", ifname, check=False)

    def role(self, name: str) -> str | None:
        """"active" / "backup" / "fault" / "starting" / "stopping" as the director says (the
        status API, or keepalived's last ``Entering ... STATE`` since its start)."""
        if self.kinds[name] == "hacontrol":
            r = self.c.ns(name).run("curl", "-s", "-m", "2", f"http://{API}/v1/status",
                                    check=False)  # fmt: skip
            with contextlib.suppress(ValueError, AttributeError):
                return str(json.loads(r.stdout)["ha"]["role"])
            return None
        last = None
        text = _read(self.log(name), self.started.get(name, 0))
        for line in text.splitlines():
            for st, role in (("MASTER", "active"), ("BACKUP", "backup"), ("FAULT", "fault")):
                if f"Entering {st} STATE" in line:
                    last = role
        return last

    def holds(self, name: str) -> bool:
        """True if ``name`` has the whole VIP group configured."""
        r = self.c.ns(name).ip("-j", "addr", "show", check=False)
        with contextlib.suppress(ValueError):
            addrs = {a.get("local") for i in json.loads(r.stdout) for a in i.get("addr_info", [])}
            return all(v in addrs for v in GROUP)
        return False

    def holders(self) -> list[str]:
        return [n for n in self.c.directors if self.holds(n)]

    def log_text(self, name: str) -> str:
        return _read(self.log(name), self.started.get(name, 0))


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _read(path: Path, offset: int) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        f.seek(offset)
        return f.read()
    return ""
