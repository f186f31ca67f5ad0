"""The real ``hacontrol run`` process on the nftables data plane, in namespaces (root).

Topology (removed afterwards, pass or fail):

    client (198.51.100.2) --eth0-- director (198.51.100.1 + VIP 198.51.100.10; forwarding;
                                    runs `python -m hacontrol run`, API on a unix socket)
                                      | br0 (192.0.2.1)
                                    rs1 192.0.2.21:8080, rs2 192.0.2.22:8080 (hacontrol.lab.backend)

The main scenario, in order: start -> both servers up with kernel weights and real traffic to both;
kill rs2 -> removed after ``fall`` failed checks (status + health.change log with the reason);
rs2 back -> up again; SIGHUP with a broken file -> refused, old config still running; SIGHUP with
a new weight -> applied, healthy servers stay up (no health.change in the log); SIGTERM -> exits
within 1 s and the nft table stays in place; a new daemon started under continuous client
requests adopts the table: no request fails, nothing is deleted. Then a reload that never
finishes parsing (the file is a FIFO): the API and the checks go on, a second reload gets 409,
SIGTERM ends the process and its parser.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hacontrol.cli_api import ApiError, api_call
from hacontrol.dataplane.nft_render import NftRenderer
from hacontrol.dataplane.table import ServiceKey
from hacontrol.lab import traffic
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp
from hacontrol.lab.scenario import log_events
from tests.integration import nftlist
from tests.reload_children import parser_children

pytestmark = pytest.mark.root

VIP, PORT = "198.51.100.10", 8080
RS = {"rs1": "192.0.2.21", "rs2": "192.0.2.22"}
FALL, RISE, INTERVAL = 3, 2, 0.2
TIMEOUT = 30.0

CLIENT = r"""
import json, socket, sys
out = []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 80), timeout=3)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out.append(data.split(b"\r\n\r\n", 1)[1].decode().strip())
    finally:
        s.close()
print(json.dumps(out))
"""


def config(tmp: Path, table: str, weights: dict[str, int], broken: bool = False) -> str:
    servers = "\n".join(
        f"      - {{address: {RS[name]}, port: {PORT}, weight: {w}}}" for name, w in weights.items()
    )
    return f"""
node: {{name: director}}
api: {{listen: "unix:{tmp}/run/api.sock"}}
dataplane: {{kind: nftables, nft_table: {table}, state_dir: {tmp}/state, resync_interval: 5s,
            keep_on_stop: true}}
logging: {{level: info, format: json}}
services:
  - name: web
    vip: {VIP}
    port: {"eighty" if broken else 80}
    scheduler: wrr
    check: {{type: http, path: /, interval: {int(INTERVAL * 1000)}ms, timeout: 150ms,
             rise: {RISE}, fall: {FALL}}}
    real_servers:
{servers}
"""


@dataclass
class Scene:
    lab: NetnsLab
    client: Ns
    director: Ns
    rs: dict[str, Ns]
    tmp: Path
    table: str
    cfg: Path
    log: Path
    daemon: subprocess.Popen[Any] | None = None

    @property
    def api(self) -> str:
        return f"unix:{self.tmp}/run/api.sock"

    def start_backend(self, name: str) -> None:
        self.rs[name].popen(
            sys.executable, "-m", "hacontrol.lab.backend", "--listen", f"{RS[name]}:{PORT}",
            "--name", name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_tcp(self.director, RS[name], PORT)

    def kill_backend(self, name: str) -> None:
        self.rs[name].kill_all(signal.SIGKILL)

    def status(self) -> dict[str, Any] | None:
        try:
            code, doc = api_call(self.api, "GET", "/v1/status", timeout=5)
        except ApiError:
            return None
        return doc if code == 200 else None

    def servers(self) -> dict[str, dict[str, Any]]:
        doc = self.status()
        if doc is None:
            return {}
        by_addr = {v: k for k, v in RS.items()}
        return {by_addr[r["address"]]: r for r in doc["services"][0]["real_servers"]}

    def events(self, name: str) -> list[dict[str, Any]]:
        return log_events(self.log, name)

    def nft_tables(self) -> list[str]:
        """Our nft tables that exist (the main one, then the service tables)."""
        return nftlist.present(self.director, self.table)

    def nft_tables_full(self) -> bool:
        """The main table and the one service's table (``web``, tcp VIP:80: the main table
        itself, one service) exist."""
        shard = NftRenderer(self.table).shard(ServiceKey("tcp", VIP, 80))
        return self.nft_tables() == nftlist.expected(self.table, {shard})

    def requests(self, n: int) -> list[str]:
        r = self.client.run(sys.executable, "-c", CLIENT, VIP, str(n), timeout=60)
        return list(json.loads(r.stdout))


def wait_until(cond: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    with NetnsLab() as lab:
        client, director = lab.add("cli"), lab.add("dir", forward=True)
        lab.link(client, "eth0", director, "eth0")
        client.addr("eth0", "198.51.100.2/24")
        client.ip("route", "add", "default", "via", "198.51.100.1")
        director.addr("eth0", "198.51.100.1/24")
        director.addr("eth0", f"{VIP}/32")
        lab.bridge(director, "br0")
        director.addr("br0", "192.0.2.1/24")
        rs = {}
        for i, name in enumerate(RS, start=1):
            ns = lab.add(name)
            lab.attach(director, "br0", ns, "eth0", f"p{i}")
            ns.addr("eth0", f"{RS[name]}/24")
            ns.ip("route", "add", "default", "via", "192.0.2.1")
            rs[name] = ns
        table = f"hctest{os.getpid()}"
        cfg = tmp_path / "hacontrol.yaml"
        s = Scene(lab, client, director, rs, tmp_path, table, cfg, tmp_path / "daemon.log")
        for name in RS:
            s.start_backend(name)
        try:
            yield s
        finally:
            if s.log.exists():  # shown by pytest when the test failed
                print(
                    "--- daemon log (tail) ---\n" + "\n".join(s.log.read_text().splitlines()[-40:])
                )
            if s.daemon is not None and s.daemon.poll() is None:
                s.daemon.kill()
                s.daemon.wait(timeout=10)
            for t in nftlist.present(director, table):
                director.run("nft", "delete", "table", "inet", t, check=False)


def test_daemon_on_nftables(scene: Scene) -> None:
    s = scene
    s.cfg.write_text(config(s.tmp, s.table, {"rs1": 2, "rs2": 1}))
    with open(s.log, "wb") as log:
        s.daemon = s.director.popen(
            sys.executable, "-m", "hacontrol", "run", "-c", str(s.cfg), stdout=log, stderr=log
        )
    assert s.daemon is not None

    # 1. both up, kernel weights from the nft table, real traffic reaches both
    t0 = time.monotonic()
    wait_until(
        lambda: (
            {k: (v["health"], v["kernel_weight"]) for k, v in s.servers().items()}
            == {"rs1": ("up", 2), "rs2": ("up", 1)}
        ),
        "both servers up with kernel weights",
    )
    up_after = time.monotonic() - t0
    assert s.nft_tables_full()
    doc = s.status()
    assert doc is not None and doc["dataplane"]["kind"] == "nftables"
    assert doc["dataplane"]["last_result"] == "ok" and doc["role"] == "standalone"
    answers = s.requests(6)
    assert sorted(set(answers)) == ["rs1", "rs2"], answers

    # 2. kill rs2: removed after FALL failed checks, with the reason in status and log
    t_kill = time.monotonic()
    s.kill_backend("rs2")
    wait_until(
        lambda: s.servers().get("rs2", {}).get("kernel_weight", 0) is None,
        "rs2 removed from the kernel",
    )
    removed_after = time.monotonic() - t_kill
    rs2 = s.servers()["rs2"]
    assert rs2["health"] == "down" and rs2["failures"] >= FALL
    assert "refused" in rs2["last_check"]["reason"] or "timeout" in rs2["last_check"]["reason"]
    downs = [e for e in s.events("health.change") if e.get("services") == ["web"]
             and e["to"] == "down"]  # fmt: skip
    assert len(downs) == 1 and downs[0]["real_server"] == f"{RS['rs2']}:{PORT}"
    assert downs[0]["from"] == "up" and downs[0]["reason"] == rs2["last_check"]["reason"]
    assert set(s.requests(4)) == {"rs1"}
    # at least FALL checks at INTERVAL apart (minus jitter) must have failed first
    assert removed_after >= (FALL - 1) * INTERVAL * 0.8

    # 3. rs2 back: up again after RISE checks
    s.start_backend("rs2")
    wait_until(lambda: s.servers().get("rs2", {}).get("kernel_weight") == 1, "rs2 back")

    # 4. SIGHUP with a broken file: refused, the old config keeps running
    before = s.status()
    assert before is not None
    digest = before["config"]["digest"]
    s.cfg.write_text(config(s.tmp, s.table, {"rs1": 2, "rs2": 1}, broken=True))
    s.daemon.send_signal(signal.SIGHUP)
    refused = wait_until(
        lambda: [e for e in s.events("config.reload") if e.get("result") == "error"],
        "config.reload result=error",
    )
    assert any("services[0].port" in line for line in refused[0]["errors"])
    assert "SIGHUP" in refused[0]["reason"]
    assert s.daemon.poll() is None
    doc = s.status()
    assert doc is not None and doc["config"]["digest"] == digest
    assert {k: v["kernel_weight"] for k, v in s.servers().items()} == {"rs1": 2, "rs2": 1}

    # 5. SIGHUP with a new weight: applied, no flap
    changes_before = len(s.events("health.change"))
    s.cfg.write_text(config(s.tmp, s.table, {"rs1": 2, "rs2": 4}))
    t_hup = time.monotonic()
    s.daemon.send_signal(signal.SIGHUP)
    wait_until(lambda: s.servers().get("rs2", {}).get("kernel_weight") == 4, "new weight")
    applied_after = time.monotonic() - t_hup
    ok = [e for e in s.events("config.reload") if e.get("result") == "ok"]
    assert len(ok) == 1 and ok[0]["targets_kept"] == 2 and ok[0]["changed"] is True
    time.sleep(FALL * INTERVAL * 2)  # long enough for a reset to have shown as a flap
    assert len(s.events("health.change")) == changes_before
    assert {k: v["health"] for k, v in s.servers().items()} == {"rs1": "up", "rs2": "up"}

    # 6. SIGTERM: exits within a second and leaves the nft table in place
    t_term, wall_term = time.monotonic(), time.time()
    s.daemon.send_signal(signal.SIGTERM)
    rc = s.daemon.wait(timeout=10)
    stop_took = time.monotonic() - t_term
    assert rc == 0
    assert stop_took < 1.0, f"stop took {stop_took:.2f}s"
    stop = s.events("daemon.stop")
    assert len(stop) == 1 and stop[0]["reason"] == "SIGTERM" and stop[0]["kernel_table"] == "kept"
    stop_logged = datetime.fromisoformat(stop[0]["timestamp"]).timestamp() - wall_term
    assert s.nft_tables_full()
    assert set(s.requests(4)) == {"rs1", "rs2"}  # traffic still flows with the daemon gone

    # 7. restart under continuous client requests: the new daemon adopts the table, none is lost
    runs: list[traffic.Run] = []
    load = traffic.Load(runs, s.client, f"{VIP}:80", count=3000, interval=0.01, duration=60)
    try:
        wait_until(lambda: len(load.requests()) >= 20, "client load running")
        adopt_from = len(s.events("dataplane.apply"))
        kept = nftlist.listing(s.director, s.table)  # every table of ours, as the stop left it
        with open(s.log, "ab") as log:
            s.daemon = s.director.popen(
                sys.executable, "-m", "hacontrol", "run", "-c", str(s.cfg), stdout=log, stderr=log
            )
        wait_until(
            lambda: {k: v["health"] for k, v in s.servers().items()} == {"rs1": "up", "rs2": "up"},
            "restarted daemon sees both up",
        )
        n = len(load.requests())
        wait_until(lambda: len(load.requests()) >= n + 50, "more requests after the restart")
    finally:
        load.stop()
    reqs = load.requests()
    assert traffic.failures(reqs) == 0, [r for r in reqs if not r.ok][:5]
    assert {r.server for r in reqs} == {"rs1", "rs2"}
    # adoption: the restart removed nothing from the kernel tables
    for e in s.events("dataplane.apply")[adopt_from:]:
        assert not any(op.startswith("del") for op in e.get("ops", {})), e
    assert nftlist.listing(s.director, s.table) == kept
    print(
        f"\nmeasured: up after {up_after:.2f}s, removed after {removed_after:.2f}s, "
        f"reload applied after {applied_after:.3f}s, SIGTERM -> daemon.stop logged "
        f"{stop_logged:.3f}s, process exit {stop_took:.3f}s"
    )


def test_slow_reload_blocks_neither_the_api_nor_sigterm(scene: Scene) -> None:
    """A reload whose parse never ends (the file became a FIFO nobody writes): health checks and
    the API go on, a second reload is refused with 409, and SIGTERM ends the process (killing
    the parser) as promptly as without a reload."""
    s = scene
    s.cfg.write_text(config(s.tmp, s.table, {"rs1": 1, "rs2": 1}))
    with open(s.log, "wb") as log:
        s.daemon = s.director.popen(
            sys.executable, "-m", "hacontrol", "run", "-c", str(s.cfg), stdout=log, stderr=log
        )
    assert s.daemon is not None
    wait_until(
        lambda: {k: v["health"] for k, v in s.servers().items()} == {"rs1": "up", "rs2": "up"},
        "both servers up",
    )
    s.cfg.unlink()
    os.mkfifo(s.cfg)
    s.daemon.send_signal(signal.SIGHUP)
    children = wait_until(lambda: parser_children(s.daemon.pid), "the reload's parser running")
    # the API answers and the checks go on while the parser waits
    code, doc = api_call(s.api, "GET", "/healthz", timeout=TIMEOUT)
    assert (code, doc) == (200, {"status": "ok"})
    checks = s.servers()["rs1"]["successes"]
    wait_until(lambda: s.servers()["rs1"]["successes"] > checks + 2, "health checks going on")
    code, doc = api_call(s.api, "POST", "/v1/reload", timeout=TIMEOUT)
    assert code == 409 and doc["error"] == "reload in progress", doc
    assert parser_children(s.daemon.pid) == children  # still the first one, still parsing
    # SIGTERM during the reload: the process ends, the parser with it
    t_term = time.monotonic()
    s.daemon.send_signal(signal.SIGTERM)
    rc = s.daemon.wait(timeout=TIMEOUT)
    stop_took = time.monotonic() - t_term
    assert rc == 0
    assert not any(os.path.exists(f"/proc/{pid}/cmdline") for pid in children)
    stop = s.events("daemon.stop")
    assert len(stop) == 1 and stop[0]["reason"] == "SIGTERM"
    assert [e["result"] for e in s.events("config.reload")] == ["busy", "error"]
    print(f"\nmeasured: SIGTERM during a reload -> process exit {stop_took:.3f}s")
