"""How the drain watcher counts an IPVS destination's connections (hacontrol.overrides.conns):
TCP counts established connections only (the inactive counter keeps closed ones in TIME_WAIT for
minutes), UDP counts its inactive ones (IPVS never marks a UDP connection active). The reader is
driven through a fake netlink dump of recorded destination attributes."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from hacontrol.dataplane.counters import DestCounters
from hacontrol.dataplane.ipvs_codec import (
    CMD,
    CMD_ATTR_DEST,
    DEST_ACTIVE_CONNS,
    DEST_ADDR,
    DEST_ADDR_FAMILY,
    DEST_FWD_METHOD,
    DEST_INACT_CONNS,
    DEST_PORT,
    DEST_WEIGHT,
    service_attrs,
)
from hacontrol.dataplane.table import DestKey, ServiceKey
from hacontrol.overrides.conns import conn_reader, ipvs_live

WEB = ServiceKey("tcp", "198.51.100.10", 80)
DNS = ServiceKey("udp", "198.51.100.10", 53)
RS1, RS2 = DestKey("192.0.2.2", 8080), DestKey("192.0.2.6", 8080)


def test_tcp_counts_established_only_udp_counts_inactive() -> None:
    # a closed TCP connection lingers as inactive (TIME_WAIT): not a reason to keep draining
    assert ipvs_live(WEB, DestCounters(active=0, inactive=3)) == 0
    assert ipvs_live(WEB, DestCounters(active=2, inactive=3)) == 2
    assert ipvs_live(DNS, DestCounters(active=0, inactive=4)) == 4
    assert ipvs_live(WEB, None) == 0  # not in the kernel: nothing to wait for


def attrs(dest: DestKey, active: int, inactive: int) -> dict[int, Any]:
    return {
        DEST_ADDR: ipaddress.ip_address(dest.address).packed + b"\0" * 12,
        DEST_PORT: struct.pack(">H", dest.port), DEST_FWD_METHOD: struct.pack("=I", 0),
        DEST_WEIGHT: struct.pack("=i", 0), DEST_ADDR_FAMILY: struct.pack("=H", 2),
        DEST_ACTIVE_CONNS: struct.pack("=I", active),
        DEST_INACT_CONNS: struct.pack("=I", inactive),
    }  # fmt: skip


class Dumps:
    """Answers destination dumps per service, as the kernel would."""

    def __init__(self, dests: dict[ServiceKey, list[dict[int, Any]]]) -> None:
        self.dests = dests

    async def dump_nested(self, cmd: int, body: bytes, want: int) -> list[dict[int, Any]]:
        assert (cmd, want) == (CMD["get_dest"], CMD_ATTR_DEST)
        return next(d for k, d in self.dests.items() if body == service_attrs(k, None))


class Plane:
    kind = "ipvs"

    def __init__(self, req: Dumps) -> None:
        self.req = req

    def ipvs_requests(self) -> Dumps:
        return self.req


async def test_reader_over_a_destination_dump() -> None:
    dumps = Dumps({
        WEB: [attrs(RS1, 1, 0), attrs(RS2, 0, 5)],  # RS2: five closed connections in TIME_WAIT
        DNS: [attrs(RS1, 0, 2)],
    })  # fmt: skip
    read = conn_reader(lambda: Plane(dumps))  # type: ignore[arg-type,return-value]
    gone = DestKey("192.0.2.10", 8080)  # no longer in the kernel
    got = await read([(WEB, RS1), (WEB, RS2), (DNS, RS1), (WEB, gone)])
    assert got == {(WEB, RS1): 1, (WEB, RS2): 0, (DNS, RS1): 2, (WEB, gone): 0}
