"""A mass failure lands in the kernel in a few batches (root, namespaces, nftables plane).

A real ``hacontrol run`` daemon in a ``director`` namespace serves 20 services x 10 real servers:
200 addresses (192.0.2.20-219) on the ``rs`` namespace's interface, all served by ONE small
asyncio process listening on each of them (port 8080). The process is killed: every real server
dies at the same moment (the kernel then refuses each check's connection). The checks see it
spread over one check interval (their first probes are spread uniformly); the daemon's
reconciler must put the burst into a few passes (change passes start at most every
``coalesce``), not one per server. Asserted: every service ends with no destination and in the
``nodest4`` set, the tables hold no weight element and no service verdict element (every
service table's ``svc4``); the 200 removals took a handful of
``dataplane.apply`` passes, all of scope ``services`` (no kernel read); the clean stop
(``keep_on_stop: false``) leaves no table of ours, service tables included; no timing assert.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hacontrol.lab.netns import NetnsLab, wait_tcp
from hacontrol.lab.scenario import log_events as events
from tests.integration import nftlist

pytestmark = pytest.mark.root

SERVICES, PER = 20, 10
ADDRS = [f"192.0.2.{20 + i}" for i in range(SERVICES * PER)]
PORT, TABLE = 8080, "hcmass"
# 200 removals detected over about one check interval (200 ms) + timeouts; passes start at most
# every 100 ms (the reconciler's default ``coalesce``): 3-4. Without the coalescing, this machine
# gave 2-9 (the nft transactions themselves gather what arrives meanwhile; a faster one gives
# more): tests/unit/test_reconciler_coalesce.py pins the coalescing down in virtual time.
MAX_PASSES = 6

LISTEN = r"""
import asyncio, sys
async def main():
    async def served(r, w):
        w.close()
    servers = [await asyncio.start_server(served, a, 8080, backlog=64) for a in sys.argv[1:]]
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def config(tmp: Path) -> str:
    check = "check: {type: tcp, interval: 200ms, timeout: 150ms, rise: 1, fall: 2}"
    lines = [
        "node: {name: mass}",
        f'api: {{listen: "unix:{tmp}/api.sock"}}',
        f"dataplane: {{kind: nftables, nft_table: {TABLE}, state_dir: {tmp}/state, "
        "resync_interval: 600s, keep_on_stop: false}",
        "logging: {level: info, format: json}",
        "services:",
    ]
    for s in range(SERVICES):
        rs = ", ".join(f"{{address: {a}, port: {PORT}}}" for a in ADDRS[s * PER : (s + 1) * PER])
        lines.append(
            f"  - {{name: s{s}, vip: 198.51.100.10, port: {1000 + s}, scheduler: rr, "
            f"{check}, real_servers: [{rs}]}}"
        )
    return "\n".join(lines) + "\n"


def wait(cond: Any, what: str, limit: float, log: Path) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    tail = log.read_text()[-3000:]
    raise AssertionError(f"timed out after {limit}s waiting for {what}:\n{tail}")


def table(lab: NetnsLab) -> dict[str, list[Any]]:
    """Elements of each set and map by name over our tables, the main one and the service tables
    (``svc4``: every service table's joined; {} while the daemon has not made them yet)."""
    got: dict[str, list[Any]] = {}
    for (_, name), elems in nftlist.elements(lab["director"], TABLE).items():
        got.setdefault(name, []).extend(elems)
    return got


def test_a_mass_failure_is_a_few_batches(netns_lab: NetnsLab, tmp_path: Path) -> None:
    lab = netns_lab
    director, rs = lab.add("director", forward=True), lab.add("rs")
    lab.link(director, "eth1", rs, "eth0")
    director.addr("eth1", "192.0.2.1/24")
    for a in ADDRS:
        rs.addr("eth0", f"{a}/24")
    rs.route("198.51.100.0/24", "192.0.2.1")
    director.addr("lo", "198.51.100.10/32")
    servers = rs.popen(sys.executable, "-c", LISTEN, *ADDRS, stdout=subprocess.PIPE, text=True)
    assert servers.stdout is not None and servers.stdout.readline().strip() == "ready"
    wait_tcp(director, ADDRS[-1], PORT)
    cfg, log = tmp_path / "hc.yaml", tmp_path / "hc.log"
    cfg.write_text(config(tmp_path))
    with open(log, "wb") as out:
        daemon = director.popen(sys.executable, "-m", "hacontrol", "run", "-c", str(cfg),
                                stdout=out, stderr=out)  # fmt: skip
    try:
        wait(lambda: len([e for e in events(log, "health.change") if e.get("to") == "up"])
             == len(ADDRS), "every real server up", 60, log)  # fmt: skip
        wait(lambda: len(table(lab).get("weights4", [])) == len(ADDRS), "the table full", 30, log)
        assert len(table(lab)["svc4"]) == SERVICES  # one verdict element each, in its shard
        applies = len(events(log, "dataplane.apply"))

        servers.kill()  # every real server dies at once
        servers.wait(10)

        wait(lambda: len(table(lab).get("nodest4", [])) == SERVICES, "every service empty", 30, log)
        wait(lambda: len([e for e in events(log, "health.change") if e.get("to") == "down"])
             == len(ADDRS), "every real server down", 30, log)  # fmt: skip
        after = table(lab)
        assert after.get("weights4", []) == [] and after.get("svc4", []) == []
        assert len(after["nodest4"]) == SERVICES
        passes = events(log, "dataplane.apply")[applies:]
        assert sum(p["actions"] for p in passes) == len(ADDRS)
        assert all(p["ops"] == {"del_dest": p["actions"]} for p in passes)
        assert {p["scope"] for p in passes} == {"services"}  # no kernel read
        assert 1 <= len(passes) <= MAX_PASSES, [p["actions"] for p in passes]
        print(f"mass failure: {len(ADDRS)} removals in {len(passes)} passes: "
              f"{[p['actions'] for p in passes]}")  # fmt: skip
        # keep_on_stop: false: a clean stop deletes the main table and every service table
        assert nftlist.present(lab["director"], TABLE)[0] == TABLE
        daemon.terminate()
        assert daemon.wait(30) == 0
        assert nftlist.present(lab["director"], TABLE) == []
    finally:
        daemon.terminate()
        daemon.wait(30)
