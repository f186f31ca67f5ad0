"""The nftables data plane: pure render/parse checks; the real kernel and real traffic (root).

Topology (built once per module, removed afterwards even on failure):

    client (198.51.100.2, 2001:db8:1::2)
      |  eth0
    director (198.51.100.1 + VIPs .10/.11, 2001:db8:1::1 + VIP ::10; forwarding; OUR nft table)
      |  br0 (192.0.2.1, 2001:db8:2::1)
    rs1/rs2/rs3 (192.0.2.11-13, 2001:db8:2::11-13) running hacontrol.lab.backend on :8080,
    each counting what it answered in its own count file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.nft import MAX_SLOTS, NftDataplane, slots_for, smooth_slots
from hacontrol.dataplane.nft_render import chain_name
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)
from hacontrol.lab.netns import NetnsLab, Ns, wait_tcp

VIP4, VIP4_EMPTY, VIP6 = "198.51.100.10", "198.51.100.11", "2001:db8:1::10"
RS4 = ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
RS6 = ["2001:db8:2::11", "2001:db8:2::12", "2001:db8:2::13"]
PORT = 8080
HTTP = ServiceKey("tcp", VIP4, 80)
HTTP6 = ServiceKey("tcp", VIP6, 80)
EMPTY = ServiceKey("tcp", VIP4_EMPTY, 80)

CLIENT = r"""
import json, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(3)
    try:
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out.append(data.split(b"\r\n\r\n", 1)[1].decode().strip())
    except OSError as e:
        out.append("error:" + type(e).__name__)
    finally:
        s.close()
print(json.dumps(out))
"""

PEER = r"""
import socket, sys
s = socket.socket(); s.settimeout(15)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, peer = s.accept(); print(peer[0], flush=True); c.close()
"""


@dataclass
class Lab:
    lab: NetnsLab
    client: Ns
    director: Ns
    rs: list[Ns]
    counts: Path

    def count(self, name: str) -> int:
        return int((self.counts / name).read_text() or 0)

    def counts_of(self, names: list[str]) -> dict[str, int]:
        return {n: self.count(n) for n in names}

    def requests(self, ns: Ns, host: str, n: int, port: int = 80) -> list[str]:
        r = ns.run(sys.executable, "-c", CLIENT, host, str(port), str(n), timeout=120)
        return list(json.loads(r.stdout))

    def plane(self) -> NftDataplane:
        return NftDataplane(netns=self.director.name)


def _build(tmp: Path) -> Iterator[Lab]:
    with NetnsLab() as lab:
        client, director = lab.add("cli"), lab.add("dir", forward=True)
        lab.link(client, "eth0", director, "eth0")
        client.addr("eth0", "198.51.100.2/24")
        client.addr("eth0", "2001:db8:1::2/64")
        client.ip("route", "add", "default", "via", "198.51.100.1")
        client.ip("-6", "route", "add", "default", "via", "2001:db8:1::1")
        for cidr in (
            "198.51.100.1/24",
            f"{VIP4}/32",
            f"{VIP4_EMPTY}/32",
            "2001:db8:1::1/64",
            f"{VIP6}/128",
        ):
            director.addr("eth0", cidr)
        lab.bridge(director, "br0")
        director.addr("br0", "192.0.2.1/24")
        director.addr("br0", "2001:db8:2::1/64")
        servers = []
        for i in range(3):
            rs = lab.add(f"rs{i + 1}")
            lab.attach(director, "br0", rs, "eth0", f"p{i + 1}")
            rs.addr("eth0", f"{RS4[i]}/24")
            rs.addr("eth0", f"{RS6[i]}/64")
            rs.ip("route", "add", "default", "via", "192.0.2.1")
            rs.ip("-6", "route", "add", "default", "via", "2001:db8:2::1")
            for name, listen in (
                (f"rs{i + 1}", f"{RS4[i]}:{PORT}"),
                (f"rs{i + 1}v6", f"[{RS6[i]}]:{PORT}"),
            ):
                rs.popen(
                    sys.executable,
                    "-m",
                    "hacontrol.lab.backend",
                    "--listen",
                    listen,
                    "--name",
                    name,
                    "--count-file",
                    str(tmp / name),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            servers.append(rs)
        # a server of the director's own on the empty service's VIP: must never be reached
        director.popen(
            sys.executable,
            "-m",
            "hacontrol.lab.backend",
            "--listen",
            f"{VIP4_EMPTY}:80",
            "--name",
            "director",
            "--count-file",
            str(tmp / "director"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(3):
            wait_tcp(director, RS4[i], PORT)
            wait_tcp(director, RS6[i], PORT)
        wait_tcp(director, VIP4_EMPTY, 80)
        yield Lab(lab, client, director, servers, tmp)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from _build(tmp_path_factory.mktemp("nftlab"))


def svc(sched: str, addrs: list[str], weights: list[int]) -> TableService:
    return TableService(
        ServiceSpec(sched),
        {DestKey(a, PORT): DestSpec(w) for a, w in zip(addrs, weights, strict=True)},
    )


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


@pytest.mark.root
@pytest.mark.parametrize("shards", [None, 16])  # all in the main table; in service tables
async def test_roundtrip_drift_and_repair(lab: Lab, shards: int | None) -> None:
    plane = NftDataplane(netns=lab.director.name, shards=shards)
    await plane.open()
    lab.director.run("nft", "add", "table", "inet", "foreign")
    lab.director.run("nft", "add", "chain", "inet", "foreign", "c")
    table: Table = {
        HTTP: svc("wrr", RS4, [3, 1, 0]),
        HTTP6: svc("sh", RS6, [1, 2, 1]),
        EMPTY: TableService(ServiceSpec("rr"), {}),
        ServiceKey("udp", VIP4, 53): svc("rr", RS4[:1], [1]),
    }
    try:
        await plane.replace(table)
        assert await plane.snapshot(set()) == table
        # the main table deleted by hand: with service tables the services' rules are still
        # there, their destinations (the weight maps) are gone: all read back altered, and a
        # pass re-renders everything
        lab.director.run("nft", "delete", "table", "inet", "hacontrol")
        back = await plane.snapshot(set())
        if shards:
            assert set(back) == set(table) and plane.count == shards
            assert all(s.spec.scheduler.startswith("altered:") for s in back.values())
            assert not any(s.dests for s in back.values())
            for name in plane.shards(table):  # and every table of ours by hand: nothing left
                lab.director.run("nft", "delete", "table", "inet", name)
            back = await plane.snapshot(set())
        assert back == {}
        rec = Reconciler(plane)
        rec.set_desired(lambda actual: dict(table))
        res = await rec.sync_now("resync")
        assert res.ok and len(res.actions) == 4 + 7  # 4 services, 7 destinations
        assert await plane.snapshot(set()) == table
        lab.director.run("nft", "flush", "ruleset")  # the whole ruleset, foreign included
        lab.director.run("nft", "add", "table", "inet", "foreign")
        res = await rec.sync_now("resync")
        assert res.ok and len(res.drift) == 4 and rec.status().drift_repairs == 1
        assert res.drift[0] == "tcp/198.51.100.10:80 missing"
        assert await plane.snapshot(set()) == table
        # one rule deleted by hand: the service reads back altered (its scheduler was in the
        # rule's comment: unknown now) and is repaired
        chain = chain_name(HTTP)
        shard = plane.shard(HTTP)
        handle = _handle(lab.director, shard, chain, VIP4)
        lab.director.run("nft", "delete", "rule", "inet", shard, chain, "handle", handle)
        res = await rec.sync_now("resync")
        assert res.ok and rec.status().drift_repairs == 2
        assert res.drift == [
            "tcp/198.51.100.10:80 scheduler=altered:unknown persistence=0 (want wrr/0)"
        ]
        assert await plane.snapshot(set()) == table
        # the foreign table was never touched
        assert "table inet foreign" in lab.director.run("nft", "list", "tables").stdout
        await plane.replace({})
        assert "hacontrol" not in lab.director.run("nft", "list", "tables").stdout
    finally:
        lab.director.run("nft", "delete", "table", "inet", "foreign", check=False)
        await plane.remove()


def _handle(ns: Ns, table: str, chain: str, needle: str) -> str:
    out = ns.run("nft", "-a", "list", "chain", "inet", table, chain).stdout
    line = next(x for x in out.splitlines() if needle in x)
    return line.rsplit("handle ", 1)[1].strip()


@pytest.mark.root
async def test_refuses_what_needs_ipvs(lab: Lab) -> None:
    plane = lab.plane()
    bad_fwd = {HTTP: TableService(ServiceSpec(), {DestKey(RS4[0], PORT): DestSpec(1, "dr")})}
    with pytest.raises(DataplaneError, match=r"service tcp/198\.51\.100\.10:80: .* dr"):
        await plane.replace(bad_fwd)
    with pytest.raises(DataplaneError, match=r"service tcp/198\.51\.100\.10:80: persistence"):
        await plane.replace({HTTP: TableService(ServiceSpec("wrr", 30), {})})
    assert await plane.snapshot(set()) == {}  # nothing applied


@pytest.mark.root
async def test_traffic_rr_wrr_removal_ipv6_and_empty(lab: Lab) -> None:
    plane = lab.plane()
    names = ["rs1", "rs2", "rs3"]
    try:
        # rr: exactly even, counted by the servers themselves
        await plane.replace({HTTP: svc("rr", RS4, [5, 1, 1]), EMPTY: svc("rr", [], [])})
        before = lab.counts_of(names)
        got = lab.requests(lab.client, VIP4, 30)
        assert sorted(set(got)) == names
        assert delta(before, lab.counts_of(names)) == {"rs1": 10, "rs2": 10, "rs3": 10}
        # a client on the director itself is balanced too (output hook)
        assert sorted(set(lab.requests(lab.director, VIP4, 3))) == names
        # empty service: refused, never reaching the director's own server on that address
        assert lab.requests(lab.client, VIP4_EMPTY, 3) == ["error:ConnectionRefusedError"] * 3
        assert lab.requests(lab.director, VIP4_EMPTY, 2) == ["error:ConnectionRefusedError"] * 2
        assert lab.count("director") == 0

        # wrr 3:1:0 -> weight 0 gets no new flows
        await plane.replace({HTTP: svc("wrr", RS4, [3, 1, 0])})
        before = lab.counts_of(names)
        lab.requests(lab.client, VIP4, 40)
        assert delta(before, lab.counts_of(names)) == {"rs1": 30, "rs2": 10, "rs3": 0}

        # removed dest gets no new requests
        await plane.replace({HTTP: svc("wrr", [RS4[0], RS4[2]], [1, 1])})
        before = lab.counts_of(names)
        lab.requests(lab.client, VIP4, 20)
        assert delta(before, lab.counts_of(names)) == {"rs1": 10, "rs2": 0, "rs3": 10}

        # the empty service's VIP is back to the director's own socket once not in our table
        assert lab.requests(lab.client, VIP4_EMPTY, 1) == ["director"]

        # IPv6 VIP, wrr 1:1:2
        names6 = ["rs1v6", "rs2v6", "rs3v6"]
        await plane.replace({HTTP6: svc("wrr", RS6, [1, 1, 2])})
        before = lab.counts_of(names6)
        lab.requests(lab.client, VIP6, 40)
        assert delta(before, lab.counts_of(names6)) == {"rs1v6": 10, "rs2v6": 10, "rs3v6": 20}
        # sh: one client always lands on the same server
        await plane.replace({HTTP6: svc("sh", RS6, [1, 1, 1])})
        assert len(set(lab.requests(lab.client, VIP6, 10))) == 1
    finally:
        await plane.remove()


@pytest.mark.root
async def test_real_servers_outbound_is_masqueraded(lab: Lab) -> None:
    plane = lab.plane()
    try:
        await plane.replace({HTTP: svc("rr", RS4, [1, 1, 1])})
        peer = lab.client.popen(
            sys.executable, "-c", PEER, "198.51.100.2", "9000", stdout=subprocess.PIPE, text=True
        )
        assert peer.stdout is not None
        assert peer.stdout.readline().strip() == "ready"
        lab.rs[0].run(
            sys.executable,
            "-c",
            "import socket; socket.create_connection(('198.51.100.2', 9000), 5).close()",
        )
        assert peer.stdout.readline().strip() == "198.51.100.1"  # the director's address
        peer.wait(timeout=10)
    finally:
        await plane.remove()


def _const(table: Table) -> Callable[[Table], Table]:
    return lambda actual: dict(table)


@pytest.mark.root
async def test_reconciler_drives_nft_like_memory(lab: Lab) -> None:
    """The same desired tables give the same snapshots on both planes."""
    nft, mem = lab.plane(), MemoryDataplane()
    tables: list[Table] = [
        {HTTP: svc("wrr", RS4, [2, 1, 1])},
        {HTTP: svc("wrr", RS4[:2], [2, 0]), HTTP6: svc("rr", RS6, [1, 1, 1])},
        {HTTP6: svc("lc", RS6[:1], [1])},
        {},
    ]
    try:
        r1, r2 = Reconciler(nft), Reconciler(mem)
        for t in tables:
            r1.set_desired(_const(t))
            r2.set_desired(_const(t))
            a, b = await r1.sync_now(), await r2.sync_now()
            assert a.ok and b.ok and a.actions == b.actions
            assert await nft.snapshot(set()) == mem.table == t
    finally:
        await nft.remove()


# -- pure parts (no root): rendering, slot lists, reading back a listing -------------------------


def _listing(plane: NftDataplane, table: Table) -> dict[str, object]:
    """What ``nft -j list ruleset inet`` would print for ``table`` (the rendered objects, not
    the add + delete of every table of ours that opens the batch)."""
    batch = plane.render(table)["nftables"][2 * len(plane.tables()) :]
    return {"nftables": [obj["add"] for obj in batch]}


@pytest.mark.parametrize(
    ("sched", "weights", "expect"),
    [
        ("wrr", [3, 1, 0], ["a", "a", "b", "a"]),  # smooth: spread, weight 0 absent
        ("wrr", [2, 2, 2], ["a", "b", "c"]),  # divided by the gcd
        ("rr", [5, 1, 0], ["a", "b"]),  # rr ignores weights, but not weight 0
        ("fo", [1, 3, 3], ["b"]),  # highest weight, first on ties
        ("wrr", [0, 0, 0], []),
    ],
)
def test_slots(sched: str, weights: list[int], expect: list[str]) -> None:
    names = dict(zip(RS4, "abc", strict=True))
    kind, slots = slots_for(ServiceSpec(sched), svc(sched, RS4, weights).dests)
    assert kind == "numgen"
    assert [names[d.address] for d in slots] == expect


def test_slots_are_capped() -> None:
    slots = smooth_slots({DestKey(RS4[0], 1): 10_000, DestKey(RS4[1], 1): 1})
    assert len(slots) <= MAX_SLOTS + 1 and DestKey(RS4[1], 1) in slots


def test_render_parse_roundtrip_and_altered_rules() -> None:
    plane = NftDataplane()
    table: Table = {
        HTTP: svc("wrr", RS4, [3, 1, 0]),
        HTTP6: svc("mh", RS6, [1, 2, 1]),
        EMPTY: TableService(ServiceSpec("rr"), {}),
        ServiceKey("udp", VIP6, 53): svc("lc", RS6[:1], [0]),
    }
    listing = _listing(plane, table)
    assert plane.parse(listing) == table
    assert plane.parse(_listing(plane, {})) == {}
    # a hand-edited dnat rule: that service reads back altered, the others do not
    for obj in listing["nftables"]:  # type: ignore[attr-defined]
        rule = obj.get("rule")
        if rule and rule["chain"] == chain_name(HTTP):
            rule["expr"][-1]["dnat"]["addr"]["map"]["data"]["set"].pop()
    got = plane.parse(listing)
    assert got[HTTP].spec.scheduler == "altered:wrr" and got[HTTP6] == table[HTTP6]
    # a hand-made element of an odd shape in our weights map: everything re-rendered, no crash
    for obj in listing["nftables"]:  # type: ignore[attr-defined]
        if obj.get("map", {}).get("name") == "weights6":
            obj["map"]["elem"].append(["junk", 1])
    got = plane.parse(listing)
    assert {s.spec.scheduler for s in got.values()} == {
        "altered:wrr",
        "altered:mh",
        "altered:rr",
        "altered:lc",
    }


def test_render_refuses_what_needs_ipvs_without_root() -> None:
    with pytest.raises(DataplaneError, match="of another address family"):
        NftDataplane().render({HTTP: svc("rr", RS6[:1], [1])})
