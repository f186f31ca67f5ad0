"""Drain on the real IPVS table, in the guest: the ``hacontrol run`` process, the CLI, ipvsadm.

The scenarios of tests/integration/test_drain_nft.py on the IPVS plane. The guest's root namespace
is the NAT director (ipvslab.Director: a client namespace, real servers rs1 and rs2 in their own
namespaces); each real server runs test_drain_nft's ``HOLD_SERVER`` (HTTP for the checks and the
short requests, a long-lived connection for a client that says ``HOLD``). To pin a held connection
on rs1, rs2 is disabled while it opens, then enabled. The kernel's view is read with ``ipvsadm``
(weights, ActiveConn, the connection list), independently of hacontrol's netlink codec.

In order: drain rs1 with a connection open -> weight 0 in the kernel at once, new requests go to
rs2, the held connection keeps working and keeps rs1 in the table (ActiveConn 1, the drain counts
1) until it closes; then rs1 leaves while IPVS still lists the closed connection (TIME_WAIT: the
drain does not wait out the kernel's inactive counter). The drained state survives a daemon
restart. A drain with a short deadline removes rs1 with its connection still open. A reload that
drops rs1 from the config while a connection is open keeps it at weight 0 (leaving) and removes
it when the connection ends.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from ipvslab import Director, ipvsadm, wait_for
from test_daemon_ipvs import CLIENT

from hacontrol.cli_api import ApiError, api_call
from hacontrol.lab.netns import NetnsLab
from hacontrol.lab.scenario import log_events
from tests.integration.test_drain_nft import HOLD_CLIENT, HOLD_SERVER

pytestmark = [pytest.mark.ipvs, pytest.mark.usefixtures("clean_ipvs")]

PORT = 8080
VIP = f"{Director.VIP}:80"
WAIT = 90.0  # seconds for anything the daemon does (generous: TCG emulation)


def config(work: Path, weights: dict[str, int]) -> str:
    rs = "\n".join(
        f"      - {{address: {a}, port: {PORT}, weight: {w}}}" for a, w in weights.items()
    )
    return f"""
node: {{name: guest-director}}
api: {{listen: "unix:{work}/api.sock"}}
dataplane: {{kind: ipvs, resync_interval: 3s, keep_on_stop: true, state_dir: {work}/state}}
logging: {{level: info, format: json}}
services:
  - name: web
    vip: {Director.VIP}
    port: 80
    scheduler: wrr
    forwarding: nat
    check: {{type: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}}
    real_servers:
{rs}
"""


_DEST = re.compile(r"^\s+->\s+(\S+):(\d+)\s+\w+\s+(-?\d+)\s+(\d+)\s+(\d+)")


def kernel_dests() -> dict[str, tuple[int, int, int]]:
    """Address -> (weight, ActiveConn, InActConn) of the VIP's destinations per ``ipvsadm -Ln``."""
    out: dict[str, tuple[int, int, int]] = {}
    inside = False
    for line in ipvsadm("-Ln").splitlines():
        if line.startswith(("TCP", "UDP", "FWM")):
            inside = line.split()[1] == VIP
            continue
        m = _DEST.match(line)
        if inside and m:
            out[m.group(1)] = (int(m.group(3)), int(m.group(4)), int(m.group(5)))
    return out


def conn_states(dest: str) -> list[str]:
    """The states of IPVS connections to ``dest`` (``ipvsadm -Lnc``: pro expire state src vip
    dest)."""
    lines = ipvsadm("-Lnc").splitlines()
    return [w[2] for w in (ln.split() for ln in lines) if len(w) >= 6 and w[5] == f"{dest}:{PORT}"]


class Held:
    """A long-lived connection through the VIP, from the client namespace."""

    def __init__(self, d: Director) -> None:
        self.p = d.client.popen(
            sys.executable, "-c", HOLD_CLIENT, Director.VIP,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.first = self.line()

    def line(self) -> str:
        assert self.p.stdout is not None
        return str(self.p.stdout.readline()).strip()

    def ping(self) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write("x\n")
        self.p.stdin.flush()
        return self.line()

    def close(self) -> None:
        assert self.p.stdin is not None
        self.p.stdin.close()
        assert self.line() == "closed"
        self.p.wait(timeout=30)


@dataclass
class Scene:
    d: Director
    work: Path
    cfg: Path
    log: Path
    daemon: subprocess.Popen[Any] | None = None

    @property
    def api(self) -> str:
        return f"unix:{self.work}/api.sock"

    @property
    def rs1(self) -> str:
        return self.d.addresses[0]

    @property
    def rs2(self) -> str:
        return self.d.addresses[1]

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "hacontrol", "run", "-c", str(self.cfg)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(timeout=60)
        self.daemon = None

    def cli(self, *args: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "hacontrol", args[0], "--api", self.api, *args[1:]],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r.stdout

    def get(self, path: str) -> dict[str, Any]:
        try:
            code, doc = api_call(self.api, "GET", path, timeout=10)
        except ApiError:
            return {}
        return doc if code == 200 else {}

    def servers(self) -> dict[str, dict[str, Any]]:
        """Real server address -> its entry in /v1/status."""
        services = self.get("/v1/status").get("services") or [{"real_servers": []}]
        return {r["address"]: r for r in services[0]["real_servers"]}

    def override(self, addr: str) -> dict[str, Any]:
        got: dict[str, Any] = self.servers().get(addr, {}).get("override") or {}
        return got

    def leaving(self) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = self.get("/v1/overrides").get("leaving", [])
        return got

    def weights(self) -> dict[str, int]:
        return {a: w for a, (w, _, _) in kernel_dests().items()}

    def requests(self, n: int) -> set[str]:
        """Which real servers answered n new HTTP connections to the VIP."""
        r = self.d.client.run(sys.executable, "-c", CLIENT, Director.VIP, str(n), timeout=120)
        names = r.stdout.split()
        assert len(names) == n, r.stdout
        return set(names)

    def hold_on_rs1(self) -> Held:
        """A held connection that surely goes to rs1: rs2 is disabled while it opens."""
        self.cli("disable", "web", f"{self.rs2}:{PORT}")
        wait_for(lambda: self.rs2 not in self.weights(), WAIT, "rs2 out of the kernel")
        held = Held(self.d)
        assert held.first == "held rs1"
        self.cli("enable", "web", f"{self.rs2}:{PORT}")
        wait_for(lambda: self.weights().get(self.rs2), WAIT, "rs2 back in the kernel")
        return held

    def events(self, name: str) -> list[dict[str, Any]]:
        return log_events(self.log, name)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    lab = NetnsLab()
    d = Director(lab, 2, tmp_path)
    s = Scene(d, tmp_path, tmp_path / "hacontrol.yaml", tmp_path / "daemon.log")
    try:
        for i, ns in enumerate(d.servers):
            ns.popen(sys.executable, "-c", HOLD_SERVER, f"rs{i + 1}", d.addresses[i], str(PORT))
        s.cfg.write_text(config(tmp_path, {s.rs1: 1, s.rs2: 1}))
        s.start()
        yield s
    finally:
        if s.daemon is not None and s.daemon.poll() is None:
            s.daemon.kill()
            s.daemon.wait(timeout=30)
        d.close()
        if s.log.exists():  # shown by pytest -rA when something failed
            print(f"--- daemon log\n{s.log.read_text()[-6000:]}")


def test_drain_on_ipvs(scene: Scene, tmp_path: Path) -> None:
    s = scene
    rs1, rs2 = s.rs1, s.rs2
    wait_for(lambda: s.weights() == {rs1: 1, rs2: 1}, WAIT, "both real servers in the kernel")

    # 1. drain rs1 while a connection to it is open
    held = s.hold_on_rs1()
    s.cli("drain", "web", f"{rs1}:{PORT}", "--deadline", "5m")
    wait_for(lambda: s.weights().get(rs1) == 0, WAIT, "rs1 at weight 0 in the kernel")
    assert s.requests(6) == {"rs2"}  # new connections avoid it
    assert held.ping() == "pong rs1"  # the open one keeps working
    ov = wait_for(
        lambda: (o := s.override(rs1)) and o["drain"]["connections"] == 1 and o,
        WAIT, "the drain to count rs1's connection",
    )  # fmt: skip
    assert ov["state"] == "draining" and ov["drain"]["ended"] is None
    assert kernel_dests()[rs1][:2] == (0, 1)  # still in the table: weight 0, ActiveConn 1
    assert "ESTABLISHED" in conn_states(rs1)
    held.close()
    wait_for(lambda: rs1 not in s.weights(), WAIT, "rs1 removed once its connection ended")
    # IPVS still lists the closed connection (TIME_WAIT, 2 min): the drain did not wait for it
    assert conn_states(rs1) and "ESTABLISHED" not in conn_states(rs1), conn_states(rs1)
    assert s.override(rs1)["state"] == "drained"
    assert s.override(rs1)["drain"]["ended"] == "drained"
    assert s.requests(4) == {"rs2"}

    # 2. the drained state survives a restart
    s.stop()
    assert s.weights() == {rs2: 1}  # keep_on_stop: the table stays as it was
    s.start()
    wait_for(lambda: s.servers().get(rs1, {}).get("health") == "up", WAIT, "rs1 checked again")
    wait_for(lambda: s.servers().get(rs2, {}).get("health") == "up", WAIT, "rs2 checked again")
    assert s.override(rs1)["state"] == "drained"
    assert s.weights() == {rs2: 1}
    assert s.requests(4) == {"rs2"}

    # 3. a short deadline ends a drain with the connection still open
    s.cli("enable", "web", f"{rs1}:{PORT}")
    wait_for(lambda: s.weights().get(rs1) == 1, WAIT, "rs1 enabled")
    held = s.hold_on_rs1()
    s.cli("drain", "web", f"{rs1}:{PORT}", "--deadline", "2s")
    wait_for(lambda: rs1 not in s.weights(), WAIT, "rs1 cut at the deadline")
    assert "ESTABLISHED" in conn_states(rs1)  # cut from the table with its connection open
    assert s.override(rs1)["drain"]["ended"] == "deadline"
    held.close()

    # 4. dropped from the config with a connection open: drained, not cut
    s.cli("clear", "web", f"{rs1}:{PORT}")
    wait_for(lambda: s.weights().get(rs1) == 1, WAIT, "rs1 back after clear")
    held = s.hold_on_rs1()
    s.cfg.write_text(config(tmp_path, {rs2: 3}))
    assert s.daemon is not None
    s.daemon.send_signal(signal.SIGHUP)
    wait_for(lambda: rs1 not in s.servers() and s.leaving(), WAIT, "rs1 leaving")
    wait_for(lambda: s.leaving()[0]["connections"] == 1, WAIT, "its connection counted")
    assert s.weights() == {rs1: 0, rs2: 3}  # kept at weight 0 while its connection lives
    assert s.requests(4) == {"rs2"}
    assert held.ping() == "pong rs1"
    held.close()
    wait_for(lambda: not s.leaving(), WAIT, "rs1 gone once its connection ended")
    assert s.weights() == {rs2: 3}
    assert [e["reason"] for e in s.events("override.drained")] == [
        "drained", "deadline", "drained"]  # fmt: skip
