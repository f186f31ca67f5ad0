"""End to end in the guest: the real daemon (``hacontrol run -c FILE``) drives the real IPVS table.

The guest's root namespace is the NAT director; three real servers (hacontrol.lab.backend, each
counting what it answers) and a client live in namespaces. One daemon process per module, started
once (plus one restart); the tests run in file order and each leaves every real server up:
traffic spreads round-robin, a killed server leaves the table and comes back when restarted,
``ipvsadm -C`` is repaired within one resync, a foreign service is left alone, and a daemon
restart adopts the running table without removing anything (watched by a polling dump).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ipvslab import Director, ipvsadm, kernel_table, wait_for

from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey
from hacontrol.lab.netns import NetnsLab
from hacontrol.lab.scenario import log_events

pytestmark = pytest.mark.ipvs

RESYNC = 3.0  # dataplane.resync_interval of the daemon under test (seconds)
VIP_KEY = ServiceKey("tcp", Director.VIP, 80)
CLIENT = """
import http.client, sys
host, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    c = http.client.HTTPConnection(host, 80, timeout=10)
    c.request("GET", "/")
    print(c.getresponse().read().decode().strip())
    c.close()
"""


def config(state_dir: Path, servers: list[str]) -> str:
    rs = "\n".join(f"      - {{address: {a}, port: 8080}}" for a in servers)
    return f"""
node: {{name: guest-director}}
api: {{listen: "127.0.0.1:9480"}}
dataplane: {{kind: ipvs, resync_interval: {RESYNC}s, keep_on_stop: true, state_dir: {state_dir}}}
logging: {{level: info, format: json}}
services:
  - name: web
    vip: {Director.VIP}
    port: 80
    scheduler: rr
    forwarding: nat
    check: {{type: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}}
    real_servers:
{rs}
"""


@dataclass
class Setup:
    director: Director
    work: Path
    cfg: Path
    daemon: subprocess.Popen[Any] | None = None
    logs: list[Path] = field(default_factory=list)

    def start_daemon(self) -> None:
        log = self.work / f"daemon{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "w") as f:
            self.daemon = subprocess.Popen(
                [sys.executable, "-m", "hacontrol", "run", "-c", str(self.cfg)],
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def stop_daemon(self) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        rc = self.daemon.wait(timeout=60)
        self.daemon = None
        return rc

    def events(self, name: str) -> list[dict[str, Any]]:
        return log_events(self.logs[-1], name)

    def dests(self) -> dict[DestKey, DestSpec] | None:
        svc = kernel_table().get(VIP_KEY)
        return None if svc is None else svc.dests

    def all_up(self) -> bool:
        want = {DestKey(a, 8080): DestSpec(1, "nat") for a in self.director.addresses}
        return self.dests() == want

    def traffic(self, n: int) -> list[int]:
        """n HTTP requests from the client to the VIP; how many each real server answered."""
        before = self.director.counts()
        r = self.director.client.run(
            sys.executable, "-c", CLIENT, Director.VIP, str(n), timeout=120
        )
        assert len(r.stdout.split()) == n, r.stdout
        return [a - b for a, b in zip(self.director.counts(), before, strict=True)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    ipvsadm("-C")
    work = tmp_path_factory.mktemp("e2e")
    lab = NetnsLab()
    director = Director(lab, 3, work)
    s = Setup(director, work, work / "hacontrol.yaml")
    try:
        s.cfg.write_text(config(work / "state", director.addresses))
        for i in range(3):
            director.start_backend(i)
        s.start_daemon()
        yield s
    finally:
        if s.daemon is not None and s.daemon.poll() is None:
            s.daemon.kill()
            s.daemon.wait(timeout=30)
        director.close()
        ipvsadm("-C")
        for log in s.logs:  # shown by pytest -rA when something failed
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")


def test_traffic_spreads_round_robin(setup: Setup) -> None:
    wait_for(setup.all_up, 90, "the daemon to put all three real servers in the kernel")
    assert setup.traffic(30) == [10, 10, 10]


def test_killed_server_leaves_and_returns(setup: Setup) -> None:
    wait_for(setup.all_up, 60, "all real servers up")
    setup.director.kill_backend(1)
    gone = DestKey(setup.director.addresses[1], 8080)
    wait_for(lambda: gone not in (setup.dests() or [gone]), 60, "rs2 to leave the table")
    spread = setup.traffic(10)
    assert spread[1] == 0 and spread[0] + spread[2] == 10
    setup.director.start_backend(1)
    wait_for(setup.all_up, 60, "rs2 to come back")
    assert setup.traffic(3) == [1, 1, 1]


def test_clear_is_repaired_within_one_resync(setup: Setup) -> None:
    wait_for(setup.all_up, 60, "all real servers up")
    ipvsadm("-C")
    t0 = time.monotonic()
    wait_for(setup.all_up, RESYNC + 30, "the table to be repaired")
    took = time.monotonic() - t0
    assert took <= RESYNC + 3.0, f"repaired after {took:.1f}s, resync interval {RESYNC}s"
    assert any(e.get("reason") == "resync" for e in setup.events("dataplane.drift"))


def test_foreign_service_untouched(setup: Setup) -> None:
    ipvsadm("-A", "-t", "198.51.100.99:8000", "-s", "lc")
    ipvsadm("-a", "-t", "198.51.100.99:8000", "-r", "192.0.2.50:8000", "-g", "-w", "7")
    # prove resync passes ran after it: a hand-edited weight of our own is put back
    rs1 = setup.director.addresses[0]
    ipvsadm("-e", "-t", f"{Director.VIP}:80", "-r", f"{rs1}:8080", "-m", "-w", "9")
    wait_for(setup.all_up, RESYNC + 30, "the hand-edited weight to be repaired")
    foreign = kernel_table()[ServiceKey("tcp", "198.51.100.99", 8000)]
    assert foreign.spec.scheduler == "lc"
    assert foreign.dests == {DestKey("192.0.2.50", 8000): DestSpec(7, "dr")}


def test_restart_adopts_table_nothing_removed(setup: Setup) -> None:
    wait_for(setup.all_up, 60, "all real servers up")
    keys = {DestKey(a, 8080) for a in setup.director.addresses}
    samples: list[set[DestKey] | None] = []
    stop = threading.Event()

    def poll() -> None:  # a dump every ~0.1 s for the whole restart
        while not stop.is_set():
            d = setup.dests()
            samples.append(None if d is None else set(d))
            stop.wait(0.1)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        assert setup.stop_daemon() == 0
        setup.start_daemon()

        def verdicts() -> set[str]:
            return {
                e["real_server"]
                for e in setup.events("health.change")
                if e.get("logger") == "hacontrol.daemon" and e.get("to") == "up"
            }

        wait_for(lambda: len(verdicts()) == 3, 90, "the new daemon's three 'up' verdicts")
        # a full resync by the new daemon: hand-edit a weight, wait for the repair
        ipvsadm("-e", "-t", f"{Director.VIP}:80", "-r", f"{setup.director.addresses[2]}:8080",
                "-m", "-w", "5")  # fmt: skip
        wait_for(setup.all_up, RESYNC + 30, "the new daemon to repair the weight")
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert len(samples) >= 10, samples
    missing = [s for s in samples if s != keys]
    assert not missing, f"{len(missing)} of {len(samples)} dumps lacked something: {missing[:3]}"
    assert [e["actions"] for e in setup.events("dataplane.apply")] == [1], setup.events(
        "dataplane.apply"
    )  # only the weight repair: adoption itself changed nothing
    assert ServiceKey("tcp", "198.51.100.99", 8000) in kernel_table()
