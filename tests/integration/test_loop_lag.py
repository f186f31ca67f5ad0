"""The event loop is never held over half a heartbeat interval by a big table's periodic work
(root, namespaces, nftables plane, a real daemon).

5,000 destinations (500 services x 10 real servers, addresses on the namespace's loopback, one
listener process); resync every second. Once the table is loaded (its ``dataplane.apply`` lines
add every destination), the daemon runs 4 resync intervals (each a kernel read in a child, a
sliced compare, a heap freeze): its loop-lag monitor must log no ``loop.stall`` there, i.e. no
lateness over 100 ms, half the default 200 ms heartbeat interval (``hacontrol/looplag.py``).
The bound is relative to the interval and the table a fraction of the 36,544 destinations
bench/heartbeat_gap.py measures; nothing scrapes the API meanwhile (a scrape of a big table is
itself a hold). The lag must be measured at all: the test also reads the histogram at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hacontrol.cli_api import UnixConnection
from hacontrol.lab.netns import NetnsLab, wait_tcp

pytestmark = pytest.mark.root

SERVICES, RS, RESYNC = 500, [f"192.0.2.{i}" for i in range(1, 11)], 1.0
LISTEN = r"""
import asyncio, sys
async def main():
    async def served(r, w):
        w.close()
    servers = [await asyncio.start_server(served, a, 8080) for a in sys.argv[1:]]
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def config(tmp: Path) -> str:
    check = "check: {type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 3}"
    rs = ", ".join(f"{{address: {a}, port: 8080}}" for a in RS)
    return "\n".join([
        "node: {name: lag}",
        f'api: {{listen: "unix:{tmp}/api.sock"}}',
        f"dataplane: {{kind: nftables, nft_table: hclag, state_dir: {tmp}/state, "
        f"resync_interval: {RESYNC}s, keep_on_stop: false}}",
        "logging: {level: info, format: json}",
        "services:",
        *(f"  - {{name: s{i}, vip: 203.0.113.{1 + i // 250}, port: {1000 + i % 250}, "
          f"scheduler: wrr, {check}, real_servers: [{rs}]}}" for i in range(SERVICES)),
    ]) + "\n"  # fmt: skip


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            ev = json.loads(line)
            if ev.get("event") == name:
                out.append(ev)
    return out


def epoch(ev: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(ev["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_periodic_work_on_a_big_table_never_holds_the_loop(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    ns = netns_lab.add("lag", forward=True)
    for a in RS:
        ns.addr("lo", f"{a}/32")
    servers = ns.popen(sys.executable, "-c", LISTEN, *RS, stdout=subprocess.PIPE, text=True)
    assert servers.stdout is not None and servers.stdout.readline().strip() == "ready"
    wait_tcp(ns, RS[-1], 8080)
    cfg, log = tmp_path / "hc.yaml", tmp_path / "hc.log"
    cfg.write_text(config(tmp_path))
    with open(log, "wb") as out:
        daemon = ns.popen(sys.executable, "-m", "hacontrol", "run", "-c", str(cfg),
                          stdout=out, stderr=out)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        want = SERVICES * len(RS)
        while time.monotonic() < deadline:
            added = sum(e["ops"].get("add_dest", 0) for e in events(log, "dataplane.apply"))
            if added >= want:
                break
            time.sleep(0.2)
        assert added >= want, log.read_text()[-3000:]
        start = time.time()
        time.sleep(RESYNC * 4)  # four periodic resyncs of the whole table
        end = time.time()
        stalls = [e for e in events(log, "loop.stall") if start <= epoch(e) <= end]
        assert stalls == [], stalls
        conn = UnixConnection(str(tmp_path / "api.sock"), 30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        name = "hacontrol_loop_lag_seconds_count"
        count = [ln for ln in text.splitlines() if ln.startswith(name)]
        assert count and float(count[0].split()[1]) > RESYNC * 4 / 0.02 / 2  # it did measure
    finally:
        daemon.terminate()
        daemon.wait(30)
