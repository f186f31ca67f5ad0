"""The IPVS generic-netlink wire format: constants, attribute encoding and decoding (pure).

Owns the numbers of ``include/uapi/linux/ip_vs.h`` and of netlink that hacontrol speaks (commands,
service and destination attributes, flags, forwarding codes), the encoders of a service's and a
destination's nested attributes, the encoding of one ``Action`` as a request body, the message
header, and the decoders of dumped services and destinations. No socket and no asyncio:
``hacontrol.dataplane.ipvs`` sends and receives what this encodes and decodes, and
``hacontrol.dataplane.counters`` / ``ipvs_sync`` build on the same attributes.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from typing import Any

from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.table import (
    PROTO_NAME,
    PROTO_NUM,
    DestKey,
    DestSpec,
    Fwd,
    ServiceKey,
    ServiceSpec,
)

# netlink message types / flags
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLA_F_NESTED = 0x8000
# IPVS generic-netlink commands and attributes (include/uapi/linux/ip_vs.h)
CMD = {
    "add_service": 1, "update_service": 2, "del_service": 3, "get_service": 4,
    "add_dest": 5, "update_dest": 6, "del_dest": 7, "get_dest": 8,
}  # fmt: skip
CMD_ATTR_SERVICE, CMD_ATTR_DEST = 1, 2
SVC_AF, SVC_PROTOCOL, SVC_ADDR, SVC_PORT, SVC_FWMARK = 1, 2, 3, 4, 5
SVC_SCHED_NAME, SVC_FLAGS, SVC_TIMEOUT, SVC_NETMASK = 6, 7, 8, 9
DEST_ADDR, DEST_PORT, DEST_FWD_METHOD, DEST_WEIGHT = 1, 2, 3, 4
DEST_U_THRESH, DEST_L_THRESH, DEST_ADDR_FAMILY = 5, 6, 11
# destination counters (decoded by hacontrol.dataplane.counters): connection counts (u32) and the
# nested traffic statistics, 32-bit (STATS) and 64-bit (STATS64, kernels since 4.x)
DEST_ACTIVE_CONNS, DEST_INACT_CONNS, DEST_PERSIST_CONNS, DEST_STATS, DEST_STATS64 = 7, 8, 9, 10, 12
IP_VS_SVC_F_PERSISTENT = 0x1
FWD_CODE: dict[str, int] = {"nat": 0, "tunnel": 2, "dr": 3}  # IP_VS_CONN_F_MASQ/TUNNEL/DROUTE
FWD_NAME: dict[int, Fwd] = {0: "nat", 2: "tunnel", 3: "dr"}
RETRY_AS_SET = {"add_service": "update_service", "add_dest": "update_dest"}
GONE_OK = (errno.ENOENT, errno.ESRCH)
GENL_VERSION = 1


def header(family: int, cmd: int, flags: int, seq: int, body: bytes) -> bytes:
    """A generic-netlink request: netlink header, genl header (``cmd``, version 1), ``body``."""
    hdr = struct.pack("=IHHIIBBH", 20 + len(body), family, flags, seq, 0, cmd, GENL_VERSION, 0)
    return hdr + body


def nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)


def _addr(address: str) -> tuple[int, bytes]:
    """(address family, 16-byte union nf_inet_addr) of a textual address."""
    if ":" in address:
        return socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address)
    return socket.AF_INET, socket.inet_pton(socket.AF_INET, address) + b"\0" * 12


def _text(family: int, raw: bytes) -> str:
    if family == socket.AF_INET6:
        return str(ipaddress.IPv6Address(raw[:16]))
    return socket.inet_ntop(socket.AF_INET, raw[:4])


def service_key_attrs(key: ServiceKey) -> bytes:
    af, raw = _addr(key.address)
    return (
        nla(SVC_AF, struct.pack("=H", af))
        + nla(SVC_PROTOCOL, struct.pack("=H", PROTO_NUM[key.protocol]))
        + nla(SVC_ADDR, raw)
        + nla(SVC_PORT, struct.pack(">H", key.port))
    )


def service_attrs(key: ServiceKey, spec: ServiceSpec | None) -> bytes:
    """The nested IPVS_CMD_ATTR_SERVICE: the key, plus the settings when ``spec`` is given."""
    body = service_key_attrs(key)
    if spec is not None:
        flags = IP_VS_SVC_F_PERSISTENT if spec.persistence > 0 else 0
        netmask = 128 if key.family == 6 else 0xFFFFFFFF
        body += (
            nla(SVC_SCHED_NAME, spec.scheduler.encode() + b"\0")
            + nla(SVC_FLAGS, struct.pack("=II", flags, 0xFFFFFFFF))
            + nla(SVC_TIMEOUT, struct.pack("=I", max(0, int(spec.persistence))))
            + nla(SVC_NETMASK, struct.pack("=I", netmask))
        )
    return nla(CMD_ATTR_SERVICE | NLA_F_NESTED, body)


def dest_attrs(dest: DestKey, spec: DestSpec | None) -> bytes:
    """The nested IPVS_CMD_ATTR_DEST: address and port, plus forwarding and weight if given."""
    af, raw = _addr(dest.address)
    body = (
        nla(DEST_ADDR, raw)
        + nla(DEST_PORT, struct.pack(">H", dest.port))
        + nla(DEST_ADDR_FAMILY, struct.pack("=H", af))
    )
    if spec is not None:
        body += (
            nla(DEST_FWD_METHOD, struct.pack("=I", FWD_CODE[spec.forwarding]))
            + nla(DEST_WEIGHT, struct.pack("=i", spec.weight))
            + nla(DEST_U_THRESH, b"\0\0\0\0")
            + nla(DEST_L_THRESH, b"\0\0\0\0")
        )
    return nla(CMD_ATTR_DEST | NLA_F_NESTED, body)


def parse_attrs(data: bytes | memoryview, start: int = 0, end: int | None = None) -> dict[int, Any]:
    """Netlink attributes in data[start:end] -> {type (flags stripped): payload bytes}."""
    out: dict[int, Any] = {}
    end = len(data) if end is None else end
    while start + 4 <= end:
        n, kind = struct.unpack_from("=HH", data, start)
        if n < 4:
            break
        out[kind & 0x3FFF] = bytes(data[start + 4 : start + n])
        start += (n + 3) & ~3
    return out


def decode_service(a: dict[int, Any]) -> tuple[ServiceKey, ServiceSpec] | None:
    """A dumped service; None for what a Table cannot hold (fwmark, other protocols)."""
    if struct.unpack("=I", a[SVC_FWMARK])[0] if SVC_FWMARK in a else 0:
        return None
    proto = PROTO_NAME.get(struct.unpack("=H", a[SVC_PROTOCOL])[0])
    if proto is None or SVC_ADDR not in a:
        return None
    family = struct.unpack("=H", a[SVC_AF])[0]
    port = struct.unpack(">H", a[SVC_PORT])[0]
    flags = struct.unpack_from("=I", a[SVC_FLAGS])[0] if SVC_FLAGS in a else 0
    timeout = struct.unpack("=I", a[SVC_TIMEOUT])[0] if SVC_TIMEOUT in a else 0
    sched = a.get(SVC_SCHED_NAME, b"").split(b"\0", 1)[0].decode()
    persistence = timeout if flags & IP_VS_SVC_F_PERSISTENT else 0
    key = ServiceKey(proto, _text(family, a[SVC_ADDR]), port)
    return key, ServiceSpec(scheduler=sched, persistence=persistence)


def decode_dest(a: dict[int, Any], svc_family: int) -> tuple[DestKey, int, int]:
    """(key, forwarding code, weight) of a dumped destination."""
    family = struct.unpack("=H", a[DEST_ADDR_FAMILY])[0] if DEST_ADDR_FAMILY in a else svc_family
    key = DestKey(_text(family, a[DEST_ADDR]), struct.unpack(">H", a[DEST_PORT])[0])
    fwd = struct.unpack("=I", a[DEST_FWD_METHOD])[0] & 0x7
    return key, fwd, struct.unpack("=i", a[DEST_WEIGHT])[0]


def encode_action(a: Action, op: str, cache: dict[ServiceKey, bytes]) -> tuple[Action, int, bytes]:
    """(action, command, body) of ``a`` sent as ``op``; ``cache`` keeps each service's key
    attributes across the actions of one apply."""
    if op in ("add_service", "update_service", "del_service"):
        return a, CMD[op], service_attrs(a.service, a.spec if op != "del_service" else None)
    svc = cache.get(a.service)
    if svc is None:
        svc = cache[a.service] = service_attrs(a.service, None)
    assert a.dest is not None
    return a, CMD[op], svc + dest_attrs(a.dest, a.dest_spec if op != "del_dest" else None)
