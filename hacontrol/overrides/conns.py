"""Connections per destination, read from the kernel for the drain watcher (the I/O shell).

IPVS: the destination's connection counters, one destination dump per service
(hacontrol.dataplane.counters.read_ipvs), as ``ipvs_live`` counts them: for TCP the active
(ESTABLISHED) connections only, since the inactive counter also holds every closed connection in
TIME_WAIT, FIN_WAIT or CLOSE for up to two minutes after it ended (a drain would wait for them);
for UDP, whose IPVS connections are never active, the inactive ones. nftables: the plane keeps
no per-destination counter, so the conntrack table is read (``/proc/net/nf_conntrack`` of the
daemon's namespace, on a worker thread; the netlink dump, pyroute2 ``AsyncConntrack``, where
the kernel has no such file) and an entry counts for (service, destination) when its original
direction goes to the service's VIP and port and its reply comes from the destination. Entries
in TIME_WAIT or CLOSE are finished connections the kernel keeps only to absorb late packets: they
do not count. A plane with neither (the in-memory one) counts None: only the deadline ends a
drain.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.base import Dataplane, DataplaneError
from hacontrol.dataplane.counters import DestCounters, read_ipvs
from hacontrol.dataplane.table import PROTO_NUM, DestKey, ServiceKey

log = logs.get("hacontrol.overrides")
Pair = tuple[ServiceKey, DestKey]
Flow = tuple[int, str, int, str, int]  # proto, orig dst, orig dport, reply src, reply sport

# nf_conntrack_tcp.h: TCP_CONNTRACK_TIME_WAIT = 7, TCP_CONNTRACK_CLOSE = 8
FINISHED_TCP = frozenset({7, 8})


def ipvs_live(service: ServiceKey, counters: DestCounters | None) -> int:
    """The live connections of one IPVS destination (pure): TCP counts its active connections
    (inactive ones are closed or half-open: TIME_WAIT, FIN_WAIT, CLOSE, SYN_RECV), UDP its
    inactive ones (IPVS never marks a UDP connection active; each lives until its timeout)."""
    if counters is None:
        return 0
    if service.protocol == "tcp":
        return counters.active
    return counters.active + counters.inactive


def flow_of(pair: Pair) -> Flow:
    sk, dk = pair
    return (PROTO_NUM[sk.protocol], sk.address, sk.port, dk.address, dk.port)


def count_flows(flows: Iterable[Flow], wanted: Iterable[Pair]) -> dict[Pair, int]:
    """How many ``flows`` (one per live conntrack entry) go to each wanted pair (pure)."""
    index = {flow_of(p): p for p in wanted}
    out = dict.fromkeys(index.values(), 0)
    for f in flows:
        p = index.get(f)
        if p is not None:
            out[p] += 1
    return out


def _flow(entry: Any) -> Flow | None:
    """The flow of one pyroute2 ConntrackEntry; None for a finished TCP one."""
    orig, reply = entry.tuple_orig, entry.tuple_reply
    if orig is None or reply is None:
        return None
    info = entry.protoinfo
    if orig.proto == socket.IPPROTO_TCP and info is not None and info.state in FINISHED_TCP:
        return None
    return (orig.proto, str(orig.daddr), orig.dport, str(reply.saddr), reply.sport)


PROC_CONNTRACK = "/proc/net/nf_conntrack"
_PROTO = {"tcp": 6, "udp": 17}
_FINISHED = frozenset({"TIME_WAIT", "CLOSE"})


def parse_proc(lines: Iterable[str]) -> list[Flow]:
    """The live flows of ``/proc/net/nf_conntrack`` lines (pure): ``ipv4 2 tcp 6 431999
    ESTABLISHED src=C dst=VIP sport=.. dport=80 src=RS dst=C sport=8080 dport=.. ...``."""
    out: list[Flow] = []
    for line in lines:
        words = line.split()
        if len(words) < 6 or words[2] not in _PROTO:
            continue
        if words[2] == "tcp" and words[5] in _FINISHED:
            continue
        kv: dict[str, list[str]] = {}
        for w in words:
            k, eq, v = w.partition("=")
            if eq:
                kv.setdefault(k, []).append(v)
        try:
            dst, dport = kv["dst"][0], int(kv["dport"][0])
            rsrc, rsport = kv["src"][1], int(kv["sport"][1])
        except (KeyError, IndexError, ValueError):
            continue
        out.append((_PROTO[words[2]], _canon(dst), dport, _canon(rsrc), rsport))
    return out


def _canon(addr: str) -> str:
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr


def read_flows() -> list[Flow]:
    """This namespace's live conntrack flows: ``/proc/net/nf_conntrack`` where the kernel has it
    (complete: pyroute2 0.9.7's netlink dump was seen to drop an entry of a multi-part dump),
    else the netlink dump."""
    try:
        with open(PROC_CONNTRACK) as f:
            return parse_proc(f)
    except FileNotFoundError:
        return conntrack_flows_blocking()


def conntrack_flows_blocking() -> list[Flow]:
    """``conntrack_flows`` on a loop of its own (a worker thread): pyroute2's asyncio sockets
    do not run on every loop the daemon may use (uvloop)."""
    return asyncio.run(conntrack_flows())


async def conntrack_flows() -> list[Flow]:
    """Every live conntrack entry of this network namespace, over netlink."""
    from pyroute2.conntrack import AsyncConntrack  # only the nftables plane needs it

    out: list[Flow] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        ct = AsyncConntrack(nfgen_family=family)
        try:
            async for entry in await ct.dump_entries():
                f = _flow(entry)
                if f is not None:
                    out.append(f)
        finally:
            ct.close()
    return out


def conn_reader(
    plane: Callable[[], Dataplane | None], timeout: float = 2.0
) -> Callable[[list[Pair]], Any]:
    """The ``ConnReader`` of the plane in use: IPVS counters, conntrack on nftables."""

    failed = [""]  # the last failure, logged once

    async def read(pairs: list[Pair]) -> dict[Pair, int] | None:
        dp = plane()
        if dp is None or not pairs:
            return None
        try:
            async with asyncio.timeout(timeout):
                req = dp.ipvs_requests()
                if req is not None:
                    counters = await read_ipvs(req, sorted({sk for sk, _ in pairs}))
                    return {p: ipvs_live(p[0], counters.get(p)) for p in pairs}
                if dp.kind == "nftables":
                    flows = await asyncio.to_thread(read_flows)
                    return count_flows(flows, pairs)
        except (DataplaneError, OSError, TimeoutError, ValueError) as e:
            text = f"{type(e).__name__}: {e}"
            if text != failed[0]:
                log.warning("override.error", reason=f"connection count: {text}")
            failed[0] = text
            return None
        return None

    return read
