"""hacontrol on a host without netbase: no /etc/protocols, no /etc/services (root).

A fresh debootstrap minbase root and most container images lack both files; nft then prints a
protocol by number (``6``) where a full host prints ``"tcp"``. Each test runs in a private mount
namespace (``unshare -m``) with an empty file bind-mounted over both, so the host's own files are
untouched and the mounts vanish with the process. Before running anything, the wrapper checks that
the name lookups really fail inside (else the test would prove nothing) and stops with exit 97.

* the README's first command, ``hacontrol lab --single``: the real daemon programs its nftables
  table and real traffic reaches every real server, also after one is killed and restarted;
* the nftables plane with a reconciler, tcp and udp, IPv4 and IPv6: one pass applies, the read-back
  equals what was rendered, the next pass has nothing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_lab import check_real_server_steps

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nft") is None,
        reason="needs root, unshare and nft",
    ),
]

NOT_HIDDEN = 97
# $0: the empty file; "$@": the command. Hides the files that exist (a host may lack them already).
HIDE = r"""
set -e
for f in /etc/protocols /etc/services; do
    if [ -e "$f" ]; then mount --bind "$0" "$f"; fi
done
"$1" -c '
import socket, sys
for name, look in (("protocols", lambda: socket.getprotobyname("tcp")),
                   ("services", lambda: socket.getservbyname("http", "tcp"))):
    try:
        look()
    except OSError:
        continue
    print(f"the {name} database is still readable", file=sys.stderr)
    sys.exit(97)
'
exec timeout -k 5 240 "$@"
"""

PLANE = r"""
import asyncio, json, subprocess
from hacontrol.dataplane.nft import NftDataplane
from hacontrol.dataplane.nft_shards import Layout
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.lab.netns import NetnsLab

def svc(sched, dests):
    return TableService(ServiceSpec(sched), {DestKey(a, p): DestSpec(w) for a, p, w in dests})

TABLE = {
    ServiceKey("tcp", "198.51.100.10", 80): svc("wrr", [("192.0.2.11", 8080, 2),
                                                         ("192.0.2.12", 8080, 1)]),
    ServiceKey("udp", "198.51.100.10", 53): svc("rr", [("192.0.2.11", 53, 1)]),
    ServiceKey("tcp", "2001:db8:1::10", 443): svc("sh", [("2001:db8:2::11", 443, 1)]),
    ServiceKey("udp", "2001:db8:1::10", 53): svc("rr", [("2001:db8:2::12", 5353, 1)]),
}

async def main(ns):
    plane = NftDataplane(netns=ns.name)
    await plane.open()
    rec = Reconciler(plane)
    rec.set_desired(lambda actual: dict(TABLE))
    try:
        first, second = await rec.sync_now(), await rec.sync_now()
        listed = json.loads(ns.run("nft", "-j", "list", "ruleset", "inet").stdout)
        protos = {"weights": [], "svc": []}  # weights maps (main table); svc verdict maps
        for item in listed["nftables"]:
            m = item.get("map", {})
            if Layout("hacontrol").parse(m.get("table", "")) is None:
                continue
            where = "weights" if m["name"].startswith("weights") else "svc"
            protos[where] += [e[0]["concat"][0] for e in m.get("elem", [])]
        return {
            "first": [first.ok, first.error, len(first.actions)],
            "second": [second.ok, second.error, second.actions],
            "snapshot_equal": await plane.snapshot(set()) == TABLE,
            "listed_protocols": protos,
        }
    finally:
        await plane.remove()

with NetnsLab() as lab:
    print(json.dumps(asyncio.run(main(lab.add("dir")))))
"""


def run_hidden(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``argv`` in a private mount namespace where /etc/protocols and /etc/services are empty."""
    empty = tmp_path / "empty"
    empty.write_text("")
    p = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", HIDE, str(empty),
         sys.executable, *argv],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:  # interrupt the lab so it removes its namespaces, then wait
            os.killpg(p.pid, signal.SIGINT)
            out, err = p.communicate(timeout=60)
    assert p.returncode != NOT_HIDDEN, err
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def test_lab_single_runs_without_netbase(tmp_path: Path) -> None:
    r = run_hidden(tmp_path, "-m", "hacontrol", "lab", "--single", "--json", "--requests", "9")
    assert r.returncode == 0, r.stderr[-4000:]
    rep: dict[str, Any] = json.loads(r.stdout)
    assert rep["ok"] is True and rep["error"] is None, rep
    assert rep["dataplane"] == ("ipvs" if Path("/proc/net/ip_vs").exists() else "nftables")
    assert rep["cleanup"] == {"namespaces_left": 0}
    steps = {s["step"]: s["measured"] for s in rep["steps"]}
    assert steps["start"]["all_up_s"] > 0  # every real server up AND in the kernel table
    check_real_server_steps(steps)  # real traffic through the table, kill and restart included


def test_nft_plane_reads_back_without_netbase(tmp_path: Path) -> None:
    r = run_hidden(tmp_path, "-c", PLANE)
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout.splitlines()[-1])  # the daemon's log lines come first
    # nft itself cannot name the protocols here: the condition of the bug holds
    protos = got["listed_protocols"]  # per destination (weights), per service (verdict maps)
    assert sorted(protos["weights"]) == [6, 6, 6, 17, 17]
    assert sorted(protos["svc"]) == [6, 6, 17, 17]
    assert got["first"] == [True, None, 4 + 5]  # 4 services + 5 destinations added, verified
    assert got["second"] == [True, None, []]  # steady state: the read-back matched the render
    assert got["snapshot_equal"] is True
