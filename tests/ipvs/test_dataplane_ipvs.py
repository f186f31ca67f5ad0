"""IpvsDataplane against the real kernel (in the guest): applied tables read back identically.

Every table applied here is compared twice: with ``ipvsadm -Ln`` (parsed independently of our
codec) and with ``snapshot()``. Covers NAT ("Masq"), DR ("Route"), tunnel, wrr weights including
0, persistence, udp, IPv6, scheduler changes, forwarding changes in place, EEXIST-as-set,
delete-of-missing, per-action errors, fwmark services (skipped by snapshot), and pyroute2's own
decoder agreeing with ours.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from ipvslab import ipvsadm, kernel_table, parse_ipvsadm

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.diff import Action, diff
from hacontrol.dataplane.ipvs import IpvsDataplane
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    Fwd,
    Proto,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
    copy_table,
)

pytestmark = [pytest.mark.ipvs, pytest.mark.usefixtures("clean_ipvs")]

WEB = ServiceKey("tcp", "198.51.100.10", 80)
DR = ServiceKey("tcp", "198.51.100.11", 80)
TUN = ServiceKey("tcp", "198.51.100.12", 80)
STICKY = ServiceKey("tcp", "198.51.100.13", 443)
DNS = ServiceKey("udp", "198.51.100.14", 53)
V6 = ServiceKey("tcp", "2001:db8::10", 80)


def d(addr: str, port: int = 8080) -> DestKey:
    return DestKey(addr, port)


TABLE: Table = {
    WEB: TableService(
        ServiceSpec("wrr"),
        {d("192.0.2.2"): DestSpec(5, "nat"), d("192.0.2.3"): DestSpec(1, "nat"),
         d("192.0.2.4"): DestSpec(0, "nat")},
    ),
    DR: TableService(
        ServiceSpec("rr"),
        {d("192.0.2.6", 80): DestSpec(1, "dr"), d("192.0.2.7", 80): DestSpec(2, "dr")},
    ),
    TUN: TableService(ServiceSpec("wlc"), {d("203.0.113.7", 80): DestSpec(3, "tunnel")}),
    STICKY: TableService(
        ServiceSpec("sh", persistence=300), {d("192.0.2.8", 443): DestSpec(1, "nat")}
    ),
    DNS: TableService(ServiceSpec("mh"), {d("192.0.2.10", 53): DestSpec(1, "nat"),
                                          d("192.0.2.11", 53): DestSpec(4, "nat")}),
    V6: TableService(
        ServiceSpec("wrr", persistence=60),
        {d("2001:db8::2"): DestSpec(2, "nat"), d("2001:db8::3"): DestSpec(1, "dr")},
    ),
}  # fmt: skip


async def converge(plane: IpvsDataplane, desired: Table) -> list[Action]:
    actual = await plane.snapshot(set(desired))
    actions = diff(desired, actual, set(desired) | set(actual))
    await plane.apply(desired, actions)
    return actions


async def test_round_trip_all_kinds(plane: IpvsDataplane) -> None:
    actions = await converge(plane, TABLE)
    assert len(actions) == len(TABLE) + sum(len(s.dests) for s in TABLE.values())
    assert kernel_table() == TABLE
    assert await plane.snapshot(set()) == TABLE
    text = ipvsadm("-Ln")
    assert "192.0.2.2:8080" in text and "Masq" in text and "Route" in text and "Tunnel" in text
    assert "persistent 300" in text


async def test_changes_applied_in_place(plane: IpvsDataplane) -> None:
    await converge(plane, TABLE)
    new = copy_table(TABLE)
    new[WEB].dests[d("192.0.2.3")] = DestSpec(7, "nat")  # weight
    new[WEB].dests[d("192.0.2.2")] = DestSpec(5, "dr")  # forwarding, in place
    del new[WEB].dests[d("192.0.2.4")]
    new[DR] = TableService(ServiceSpec("wrr", persistence=30), new[DR].dests)  # scheduler + sticky
    new[STICKY] = TableService(ServiceSpec("sh"), new[STICKY].dests)  # persistence off
    del new[TUN]
    new[DNS].dests[d("192.0.2.12", 53)] = DestSpec(1, "nat")
    actions = await converge(plane, new)
    ops = sorted(a.op for a in actions)
    assert ops == ["add_dest", "del_dest", "del_service", "update_dest", "update_dest",
                   "update_service", "update_service"]  # fmt: skip
    assert kernel_table() == new
    assert await plane.snapshot(set()) == new


async def test_set_keeps_nat(plane: IpvsDataplane) -> None:
    """pyroute2's default fwd_method is DR: a weight change must not turn Masq into Route."""
    await converge(plane, {WEB: TABLE[WEB]})
    await plane.apply({}, [Action("update_dest", WEB, dest=d("192.0.2.3"), dest_spec=DestSpec(9))])
    line = next(x for x in ipvsadm("-Ln").splitlines() if "192.0.2.3:8080" in x)
    assert line.split()[2:4] == ["Masq", "9"]


async def test_add_existing_is_set_and_delete_missing_is_fine(plane: IpvsDataplane) -> None:
    await converge(plane, {WEB: TABLE[WEB]})
    again = [
        Action("add_service", WEB, spec=ServiceSpec("rr")),
        Action("add_dest", WEB, dest=d("192.0.2.2"), dest_spec=DestSpec(3, "nat")),
        Action("del_dest", WEB, dest=d("192.0.2.99")),
        Action("del_service", ServiceKey("tcp", "198.51.100.99", 80)),
    ]
    await plane.apply({}, again)
    got = kernel_table()[WEB]
    assert got.spec == ServiceSpec("rr")
    assert got.dests[d("192.0.2.2")] == DestSpec(3, "nat")


async def test_errors_name_the_action_and_errno(plane: IpvsDataplane) -> None:
    missing = ServiceKey("tcp", "198.51.100.98", 80)
    acts = [
        Action("add_dest", missing, dest=d("192.0.2.2"), dest_spec=DestSpec(1, "nat")),
        Action("add_service", WEB, spec=ServiceSpec("rr")),  # still applied after the failure
    ]
    with pytest.raises(DataplaneError) as e:
        await plane.apply({}, acts)
    assert "add_dest tcp/198.51.100.98:80 -> 192.0.2.2:8080" in str(e.value)
    assert "ESRCH" in str(e.value)
    assert WEB in kernel_table()
    with pytest.raises(DataplaneError, match="no-such-sched"):
        await plane.apply({}, [Action("update_service", WEB, spec=ServiceSpec("no-such-sched"))])


async def test_foreign_fwmark_service_is_skipped(plane: IpvsDataplane) -> None:
    ipvsadm("-A", "-f", "42", "-s", "rr")
    ipvsadm("-a", "-f", "42", "-r", "192.0.2.2:80", "-m")
    await converge(plane, {WEB: TABLE[WEB]})
    assert await plane.snapshot(set()) == {WEB: TABLE[WEB]}
    assert parse_ipvsadm(ipvsadm("-Ln"))[1] == ["FWM  42 rr"]


async def test_big_table_in_batches(plane: IpvsDataplane) -> None:
    """More actions than one pipelined batch (and EEXIST retries spanning batches)."""
    plane.batch = 64
    big: Table = {
        ServiceKey("tcp", "198.51.100.20", 1000 + i): TableService(
            ServiceSpec("wrr"), {d(f"192.0.2.{j + 1}"): DestSpec(j % 4, "nat") for j in range(20)}
        )
        for i in range(20)
    }
    await converge(plane, big)
    assert kernel_table() == big
    await plane.apply(big, diff(big, {}, set()))  # everything exists: 420 EEXIST -> set
    assert await plane.snapshot(set()) == big


def pyroute2_table() -> Table:
    """The kernel table as pyroute2's own IPVS decoder reads it (sync API: call off the loop)."""
    from pyroute2 import IPVS, IPVSDest, IPVSService

    names: dict[int, Fwd] = {0: "nat", 2: "tunnel", 3: "dr"}
    protos: dict[int, Proto] = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}
    seen: Table = {}
    with IPVS() as ipvs:
        for m in ipvs.service("dump"):
            s = IPVSService.from_message(m)
            flags = s["IPVS_SVC_ATTR_FLAGS"]["flags"]
            persist = s["IPVS_SVC_ATTR_TIMEOUT"] if flags & 1 else 0
            key = ServiceKey(protos[s["protocol"]], s["addr"], s["port"])
            dests = {}
            for dm in ipvs.dest("dump", service=s):
                x = IPVSDest.from_message(dm)
                fwd = names[x["IPVS_DEST_ATTR_FWD_METHOD"] & 7]  # NOT x["fwd_method"]
                dests[DestKey(x["addr"], x["port"])] = DestSpec(x["weight"], fwd)
            seen[key] = TableService(ServiceSpec(s["sched_name"], persist), dests)
    return seen


async def test_pyroute2_decoder_agrees(plane: IpvsDataplane) -> None:
    await converge(plane, TABLE)
    assert await asyncio.to_thread(pyroute2_table) == TABLE


def test_works_under_uvloop() -> None:
    """The daemon runs on uvloop, which refuses pyroute2's AsyncIPVS endpoint."""
    import uvloop

    async def scenario() -> Table:
        p = IpvsDataplane()
        await p.open()
        try:
            await converge(p, {WEB: TABLE[WEB], V6: TABLE[V6]})
            return await p.snapshot(set())
        finally:
            await p.close()

    assert uvloop.run(scenario()) == {WEB: TABLE[WEB], V6: TABLE[V6]}
    assert kernel_table() == {WEB: TABLE[WEB], V6: TABLE[V6]}


async def test_open_without_ipvs_is_a_clear_error() -> None:
    p = IpvsDataplane(proc="/nonexistent/ip_vs")
    with pytest.raises(DataplaneError, match="no IPVS"):
        await p.open()
