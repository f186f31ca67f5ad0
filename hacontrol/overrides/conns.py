"""Connections per destination, read from the kernel for the drain watcher (the I/O shell).

IPVS: the destination's active and inactive connection counters, one destination dump per
service (hacontrol.dataplane.counters.read_ipvs). nftables: the plane keeps no per-destination
counter, so the conntrack table is dumped over netlink (pyroute2 ``AsyncConntrack``) and an entry
counts for (service, destination) when its original direction goes to the service's VIP and port
and its reply comes from the destination. Entries in TIME_WAIT or CLOSE are finished connections
the kernel keeps only to absorb late packets: they do not count (a new connection does not need
the map element any more than they do). A plane with neither (the in-memory one) counts None:
only the deadline ends a drain.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any

from hacontrol.dataplane.base import Dataplane
from hacontrol.dataplane.counters import read_ipvs
from hacontrol.dataplane.table import PROTO_NUM, DestKey, ServiceKey

Pair = tuple[ServiceKey, DestKey]
Flow = tuple[int, str, int, str, int]  # proto, orig dst, orig dport, reply src, reply sport

# nf_conntrack_tcp.h: TCP_CONNTRACK_TIME_WAIT = 7, TCP_CONNTRACK_CLOSE = 8
FINISHED_TCP = frozenset({7, 8})


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

    async def read(pairs: list[Pair]) -> dict[Pair, int] | None:
        dp = plane()
        if dp is None or not pairs:
            return None
        try:
            async with asyncio.timeout(timeout):
                req = dp.ipvs_requests()
                if req is not None:
                    counters = await read_ipvs(req, sorted({sk for sk, _ in pairs}))
                    return {
                        p: (c.active + c.inactive if (c := counters.get(p)) else 0) for p in pairs
                    }
                if dp.kind == "nftables":
                    return count_flows(await conntrack_flows(), pairs)
        except (OSError, TimeoutError, ValueError):
            return None
        return None

    return read
