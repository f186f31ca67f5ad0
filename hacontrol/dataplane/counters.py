"""Per-destination counters of the data plane: connections and traffic of each real server.

``decode_dest_counters`` reads what an IPVS destination dump carries besides its key and weight
(``IPVS_DEST_ATTR_ACTIVE_CONNS`` / ``INACT_CONNS`` / ``PERSIST_CONNS`` and the nested
``STATS64``, else the 32-bit ``STATS``; attribute numbers from include/uapi/linux/ip_vs.h, as
pyroute2's ``netlink/generic/ipvs.py`` maps them). ``PlaneCounters`` holds the last reading: the
API refreshes it right before it builds a status document or a /metrics page (one destination dump
per service the kernel holds, bounded in time), so nothing counts on a hot path. It asks its
``source`` (the daemon) for the plane, the reconciler and the config each time.

Only IPVS has these counters: the nftables plane (a dnat map per service, no per-destination
counter) and the in-memory plane read as None, which the status and /metrics show as unknown.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from hacontrol import logs
from hacontrol.dataplane.base import Dataplane, DataplaneError, IpvsRequests
from hacontrol.dataplane.desired import service_key
from hacontrol.dataplane.ipvs_codec import (
    CMD,
    CMD_ATTR_DEST,
    DEST_ACTIVE_CONNS,
    DEST_INACT_CONNS,
    DEST_PERSIST_CONNS,
    DEST_STATS,
    DEST_STATS64,
    decode_dest,
    parse_attrs,
    service_attrs,
)
from hacontrol.dataplane.table import DestKey, ServiceKey, Table
from hacontrol.model import Config

__all__ = ["Counters", "DestCounters", "PlaneCounters", "decode_dest_counters", "read_ipvs"]

log = logs.get("hacontrol.dataplane.counters")

# IPVS_STATS_ATTR_* inside (DEST|SVC)_ATTR_STATS(64)
STATS_CONNS, STATS_INPKTS, STATS_OUTPKTS, STATS_INBYTES, STATS_OUTBYTES = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class DestCounters:
    """One destination's counters as the kernel reports them (totals since it was added)."""

    active: int  # established connections
    inactive: int  # connections in any other state (FIN_WAIT, TIME_WAIT, SYN_RECV...)
    persistent: int = 0  # persistence templates
    connections: int = 0  # connections scheduled to it
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


# (service, destination) -> its counters
Counters = Mapping[tuple[ServiceKey, DestKey], DestCounters]


def _uint(raw: bytes | None) -> int:
    """An unsigned native-endian attribute of 4 or 8 bytes (0 when absent or of another size)."""
    if raw is None:
        return 0
    if len(raw) == 8:
        return int(struct.unpack("=Q", raw)[0])
    if len(raw) == 4:
        return int(struct.unpack("=I", raw)[0])
    return 0


def decode_dest_counters(a: Mapping[int, Any]) -> DestCounters:
    """The counters of a dumped destination's attributes ({type: payload bytes})."""
    nested = a.get(DEST_STATS64) or a.get(DEST_STATS)
    stats = parse_attrs(nested) if nested else {}
    return DestCounters(
        active=_uint(a.get(DEST_ACTIVE_CONNS)),
        inactive=_uint(a.get(DEST_INACT_CONNS)),
        persistent=_uint(a.get(DEST_PERSIST_CONNS)),
        connections=_uint(stats.get(STATS_CONNS)),
        packets_in=_uint(stats.get(STATS_INPKTS)),
        packets_out=_uint(stats.get(STATS_OUTPKTS)),
        bytes_in=_uint(stats.get(STATS_INBYTES)),
        bytes_out=_uint(stats.get(STATS_OUTBYTES)),
    )


async def read_ipvs(
    req: IpvsRequests, services: Iterable[ServiceKey]
) -> dict[tuple[ServiceKey, DestKey], DestCounters]:
    """One destination dump per service in ``services`` (each must be in the kernel)."""
    out: dict[tuple[ServiceKey, DestKey], DestCounters] = {}
    for key in services:
        family = 10 if key.family == 6 else 2  # AF_INET6 / AF_INET
        dests = await req.dump_nested(CMD["get_dest"], service_attrs(key, None), CMD_ATTR_DEST)
        for a in dests:
            dk, _fwd, _weight = decode_dest(a, family)
            out[(key, dk)] = decode_dest_counters(a)
    return out


class KernelView(Protocol):
    """Where the kernel table as last read is kept (the reconciler)."""

    @property
    def kernel(self) -> Table: ...


class Source(Protocol):
    """What the counters are read from (the daemon): the plane, the reconciler (where the
    kernel table was last read) and the config in use."""

    @property
    def dataplane(self) -> Dataplane | None: ...

    @property
    def reconciler(self) -> KernelView | None: ...

    @property
    def config(self) -> Config: ...


class PlaneCounters:
    """The last counters read from the plane; None when it has none or the read failed."""

    def __init__(self, source: Source, timeout: float = 2.0) -> None:
        self.source = source
        self.timeout = timeout
        self.latest: Counters | None = None
        self.error: str | None = None

    async def refresh(self) -> None:
        """Read the counters of the configured services the kernel table (as the reconciler
        last read it) holds, through the plane. None for a plane without counters; a failure
        or a read slower than ``timeout`` leaves them unknown, logged once."""
        src = self.source
        dp, rec, services = src.dataplane, src.reconciler, src.config.services
        req = dp.ipvs_requests() if dp is not None else None
        if req is None or rec is None:
            self.latest = None
            return
        kernel = rec.kernel
        keys = [k for k in map(service_key, services) if k in kernel]
        try:
            async with asyncio.timeout(self.timeout):
                self.latest = await read_ipvs(req, keys)
        except (DataplaneError, OSError, TimeoutError) as e:
            self.latest = None
            text = str(e) or f"timed out after {self.timeout}s"
            if text != self.error:
                log.warning("dataplane.counters_error", reason=text)
            self.error = text
            return
        if self.error is not None:
            log.info("dataplane.counters_recovered", reason="destination dump answered")
        self.error = None
