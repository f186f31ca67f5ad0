"""A foreign change to our nftables table is repaired at once, not at the next resync (root).

A real ``hacontrol run`` on the nftables plane in a namespace, with ``resync_interval: 3600s`` so
only the notification watch can repair in time: ``nft flush table inet <ours>`` and ``nft delete
table inet <ours>``, of the main table and of a service's own table (``<ours>_<i>of<n>``), are
followed by the tables as they were (all our tables' listing compared, handles aside), each
logged ``dataplane.foreign_change`` with its reason, while a change to a foreign table in the same
namespace and the daemon's own commits (its start, a health change) ask for nothing. Then the
plane alone, from the host, on both ways of sending batches (libnftables in-process, the nft
binary): its own rewrites are not foreign, a flush by someone else is, once.

Topology (one namespace, removed afterwards): the director with its loopback holding the VIP
192.0.2.10 and two real servers 192.0.2.21/.22:8080 (``hacontrol.lab.backend``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hacontrol.dataplane.nft import NftDataplane, NftRenderer
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp
from hacontrol.lab.scenario import log_events
from tests.integration import nftlist

pytestmark = pytest.mark.root

VIP, PORT = "192.0.2.10", 8080
RS = ("192.0.2.21", "192.0.2.22")
TIMEOUT = 30.0
SVC = ServiceKey("tcp", VIP, 80)


@dataclass
class Scene:
    ns: Ns
    tmp: Path
    table: str
    log: Path
    daemon: subprocess.Popen[Any] | None = None

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ns.run("nft", *args, check=check)

    def listing(self) -> list[str] | None:
        """All our tables (main and service tables) without handles, element lists sorted;
        None when none exists."""
        return nftlist.listing(self.ns, self.table) or None

    def events(self, name: str) -> list[dict[str, Any]]:
        return log_events(self.log, name)

    def foreign_changes(self) -> int:
        return sum(int(e["changes"]) for e in self.events("dataplane.foreign_change"))


def wait_until(cond: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def config(tmp: Path, table: str) -> str:
    servers = "\n".join(f"      - {{address: {a}, port: {PORT}}}" for a in RS)
    return f"""
node: {{name: director}}
api: {{listen: "unix:{tmp}/run/api.sock"}}
dataplane: {{kind: nftables, nft_table: {table}, state_dir: {tmp}/state, resync_interval: 3600s,
            keep_on_stop: false}}
logging: {{level: info, format: json}}
services:
  - name: web
    vip: {VIP}
    port: 80
    scheduler: wrr
    check: {{type: tcp, interval: 500ms, timeout: 400ms, rise: 1, fall: 2}}
    real_servers:
{servers}
"""


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    with NetnsLab() as lab:
        ns = lab.add("dir", forward=True)
        for a in (VIP, *RS):
            ns.addr("lo", f"{a}/32")
        for a in RS:
            ns.popen(
                sys.executable, "-m", "hacontrol.lab.backend", "--listen", f"{a}:{PORT}",
                "--name", a, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            wait_tcp(ns, a, PORT)
        s = Scene(ns, tmp_path, f"hcwatch{os.getpid()}", tmp_path / "daemon.log")
        try:
            yield s
        finally:
            if s.log.exists():  # shown by pytest when the test failed
                print("--- daemon log ---\n" + "\n".join(s.log.read_text().splitlines()[-40:]))
            if s.daemon is not None and s.daemon.poll() is None:
                s.daemon.kill()
                s.daemon.wait(timeout=10)
            for table in nftlist.present(ns, s.table):
                ns.run("nft", "delete", "table", "inet", table, check=False)


def test_a_flush_and_a_delete_of_our_table_are_repaired_before_any_resync(scene: Scene) -> None:
    s = scene
    cfg = s.tmp / "hacontrol.yaml"
    cfg.write_text(config(s.tmp, s.table))
    with open(s.log, "wb") as log:
        s.daemon = s.ns.popen(
            sys.executable, "-m", "hacontrol", "run", "-c", str(cfg), stdout=log, stderr=log
        )
    # both servers up: the table holds the service with both destinations
    wait_until(
        lambda: all(any(a in x for x in s.listing() or []) for a in RS),
        "the table with both real servers",
    )  # each check comes up on its own: wait for both
    full = s.listing()
    assert full is not None and all(any(a in x for x in full) for a in RS)

    # our own commits are no foreign change: the start, and a health change (rs2 down and up)
    rs2 = next(p for p in s.ns.procs if f"{RS[1]}:{PORT}" in " ".join(map(str, p.args)))
    rs2.kill()
    rs2.wait(timeout=10)
    wait_until(lambda: not any(RS[1] in x for x in s.listing() or []), "rs2 out of the table")
    s.ns.popen(
        sys.executable, "-m", "hacontrol.lab.backend", "--listen", f"{RS[1]}:{PORT}",
        "--name", RS[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: s.listing() == full, "rs2 back in the table")

    # a foreign table in the same namespace, changed: nothing asked
    other = f"hcother{os.getpid()}"
    try:
        s.nft("add", "table", "inet", other)
        s.nft("add", "chain", "inet", other, "c")
        s.nft("add", "rule", "inet", other, "c", "counter")
        s.nft("flush", "table", "inet", other)

        # the flush of ours: repaired (resync is an hour away), logged with the reason
        s.nft("flush", "table", "inet", s.table)
        wait_until(lambda: s.listing() == full, "the flushed table repaired")
        wait_until(lambda: s.foreign_changes() >= 1, "dataplane.foreign_change logged")
        first = s.events("dataplane.foreign_change")[0]
        assert "delrule" in first["reason"] and "by nft" in first["reason"], first
        # only the flush of ours counted: not the foreign table's four transactions, nor our
        # own start and health changes
        assert s.foreign_changes() == 1

        # the delete of ours: repaired as well
        s.nft("delete", "table", "inet", s.table)
        wait_until(lambda: s.listing() == full, "the deleted table repaired")
        wait_until(lambda: s.foreign_changes() >= 2, "the delete logged")
        assert any("deltable" in e["reason"] for e in s.events("dataplane.foreign_change"))

        # the same for the service's own table (its dnat chains, verdict map and chain; the main
        # table itself while it holds every service, up to 64)
        shard = NftRenderer(s.table).shard(SVC)
        assert nftlist.present(s.ns, s.table) == nftlist.expected(s.table, {shard})
        s.nft("flush", "table", "inet", shard)
        wait_until(lambda: s.listing() == full, "the flushed service table repaired")
        wait_until(lambda: s.foreign_changes() >= 3, "the service table's flush logged")
        s.nft("delete", "table", "inet", shard)
        wait_until(lambda: s.listing() == full, "the deleted service table repaired")
        wait_until(lambda: s.foreign_changes() >= 4, "the service table's delete logged")
        reasons = [e["reason"] for e in s.events("dataplane.foreign_change")]
        assert len(reasons) == 4 and "deltable" in reasons[3], reasons
        assert not s.events("dataplane.error") and s.daemon.poll() is None
    finally:
        s.nft("delete", "table", "inet", other, check=False)


def _table(weight: int) -> dict[ServiceKey, TableService]:
    dests = {DestKey(a, PORT): DestSpec(weight=weight) for a in RS}
    return {SVC: TableService(ServiceSpec(scheduler="wrr"), dests)}


@pytest.mark.parametrize("in_process", [True, False], ids=["libnftables", "nft-binary"])
async def test_the_planes_own_rewrites_are_not_foreign(scene: Scene, in_process: bool) -> None:
    s = scene
    seen: list[tuple[str, int]] = []
    got = asyncio.Event()

    def changed(reason: str, count: int) -> None:
        seen.append((reason, count))
        got.set()

    dp = NftDataplane(s.table, netns=s.ns.name, in_process=in_process)
    try:
        await dp.open()
        dp.watch(changed)
        assert dp.watcher is not None
        async with asyncio.timeout(TIMEOUT):
            await dp.watcher.watching.wait()
        for w in (1, 2, 3):  # whole-table rewrites of ours, through the chosen runner
            await dp.replace(_table(w))
        sent = dp.exec.sent
        assert sent["lib" if in_process else "binary"] >= 3
        await asyncio.to_thread(s.nft, "flush", "table", "inet", s.table)
        async with asyncio.timeout(TIMEOUT):
            await got.wait()
        assert len(seen) == 1 and seen[0][1] == 1 and "by nft" in seen[0][0], seen
        assert dp.watcher.tracker.own_seen >= 3 and dp.watcher.tracker.foreign_seen == 1
    finally:
        await dp.close()
