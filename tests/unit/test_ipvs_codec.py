"""The IPVS encoder and dump parser of ``hacontrol.dataplane.ipvs_codec`` (and the sync-daemon
commands of ``ipvs_sync``) against an independent implementation: pyroute2's own IPVS
generic-netlink classes (``pyroute2.netlink.generic.ipvs``: ``ipvsmsg`` and its nested
``service``/``dest``), and the kernel's uapi header ``linux/ip_vs.h`` for what pyroute2 leaves
out (the sync-daemon attributes, flag, forwarding and state values). No kernel needed.

Every constant is compared with pyroute2's (or the header's). Then the real ``IpvsDataplane``
talks to a fake kernel at its socket (a SOCK_SEQPACKET pair replacing the netlink socket, the
family id handed over instead of resolved): every request it sends is decoded by pyroute2 and
compared attribute by attribute with what the action means, acks are as the kernel sends them,
and dump replies (services, destinations, sync daemons) are built with pyroute2's encoder and
parsed by ours.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest
from pyroute2 import netlink as nl
from pyroute2.netlink import nla
from pyroute2.netlink.generic import ipvs as p2

from hacontrol.clock import FakeClock
from hacontrol.dataplane import ipvs, ipvs_codec, ipvs_sync
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.ipvs import IpvsDataplane
from hacontrol.dataplane.ipvs_sync import SyncDaemon, SyncDaemons
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService
from hacontrol.model import SyncConfig

HEADER = Path("/usr/include/linux/ip_vs.h")  # Debian: linux-libc-dev (scripts/dev installs it)
FAMILY = 0x2A  # the generic-netlink family id the fake kernel hands the plane
OPS = {  # our operation -> pyroute2's command constant
    "add_service": "IPVS_CMD_NEW_SERVICE", "update_service": "IPVS_CMD_SET_SERVICE",
    "del_service": "IPVS_CMD_DEL_SERVICE", "get_service": "IPVS_CMD_GET_SERVICE",
    "add_dest": "IPVS_CMD_NEW_DEST", "update_dest": "IPVS_CMD_SET_DEST",
    "del_dest": "IPVS_CMD_DEL_DEST", "get_dest": "IPVS_CMD_GET_DEST",
}  # fmt: skip
# the kernel's attribute policy for the daemon attributes (net/netfilter/ipvs/ip_vs_ctl.c)
DAEMON_TYPES = {
    "IPVS_DAEMON_ATTR_STATE": "uint32", "IPVS_DAEMON_ATTR_MCAST_IFN": "asciiz",
    "IPVS_DAEMON_ATTR_SYNC_ID": "uint32", "IPVS_DAEMON_ATTR_SYNC_MAXLEN": "uint16",
    "IPVS_DAEMON_ATTR_MCAST_GROUP": "ip4addr", "IPVS_DAEMON_ATTR_MCAST_GROUP6": "ip6addr",
    "IPVS_DAEMON_ATTR_MCAST_PORT": "uint16", "IPVS_DAEMON_ATTR_MCAST_TTL": "uint8",
}  # fmt: skip


def parse_uapi(text: str) -> dict[str, int]:
    """``#define NAME number`` and enum members of a C header -> {name: value}."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    defines = re.findall(r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$", text, re.M)
    out = {n: int(v, 0) for n, v in defines}
    for body in re.findall(r"\benum\s*\{(.*?)\}", text, re.S):
        value = 0
        for item in filter(None, (i.strip() for i in body.split(","))):
            name, _, expr = (p.strip() for p in item.partition("="))
            value = int(expr, 0) if expr else value
            out[name] = value
            value += 1
    return out


@pytest.fixture(scope="module")
def uapi(unavailable: Callable[[str], NoReturn]) -> dict[str, int]:
    if not HEADER.exists():
        unavailable(f"{HEADER} missing: apt-get install linux-libc-dev")
    return parse_uapi(HEADER.read_text())


def names(nla_map: Sequence[tuple[str, str]]) -> list[str]:
    return [n for n, _ in nla_map]


def constants(module: object, prefix: str) -> dict[str, int]:
    return {k: v for k, v in vars(module).items() if k.startswith(prefix) and isinstance(v, int)}


# ---------------------------------------------------------------------- the numbers themselves
def test_command_numbers_are_pyroute2s(uapi: dict[str, int]) -> None:
    assert set(ipvs_codec.CMD) == set(OPS)
    for op, name in OPS.items():
        assert ipvs_codec.CMD[op] == getattr(p2, name) == uapi[name], op
    for ours, name in [
        (ipvs_sync.CMD_NEW_DAEMON, "IPVS_CMD_NEW_DAEMON"),
        (ipvs_sync.CMD_DEL_DAEMON, "IPVS_CMD_DEL_DAEMON"),
        (ipvs_sync.CMD_GET_DAEMON, "IPVS_CMD_GET_DAEMON"),
    ]:
        assert ours == getattr(p2, name) == uapi[name], name


def test_attribute_numbers_are_pyroute2s(uapi: dict[str, int]) -> None:
    top = names(p2.ipvsmsg.nla_map)
    assert top.index("IPVS_CMD_ATTR_SERVICE") == ipvs_codec.CMD_ATTR_SERVICE
    assert top.index("IPVS_CMD_ATTR_DEST") == ipvs_codec.CMD_ATTR_DEST
    assert top.index("IPVS_CMD_ATTR_DAEMON") == ipvs_sync.CMD_ATTR_DAEMON
    svc, dest = names(p2.ipvsmsg.service.nla_map), names(p2.ipvsmsg.dest.nla_map)
    ours = constants(ipvs_codec, "SVC_")
    assert len(ours) == 9
    for k, v in ours.items():
        assert v == svc.index(f"IPVS_SVC_ATTR_{k[4:]}") == uapi[f"IPVS_SVC_ATTR_{k[4:]}"], k
    ours = constants(ipvs_codec, "DEST_")
    assert len(ours) == 12  # with the counters (hacontrol.dataplane.counters)
    for k, v in ours.items():
        assert v == dest.index(f"IPVS_DEST_ATTR_{k[5:]}") == uapi[f"IPVS_DEST_ATTR_{k[5:]}"], k
    # pyroute2 leaves the daemon attribute undecoded ("hex"): the header is the reference
    ours = constants(ipvs_sync, "DAEMON_")
    assert {f"IPVS_DAEMON_ATTR_{k[7:]}" for k in ours} == set(DAEMON_TYPES)
    for k, v in ours.items():
        assert v == uapi[f"IPVS_DAEMON_ATTR_{k[7:]}"], k


def test_flag_forwarding_and_netlink_values(uapi: dict[str, int]) -> None:
    assert uapi["IP_VS_SVC_F_PERSISTENT"] == ipvs_codec.IP_VS_SVC_F_PERSISTENT
    assert {
        "nat": uapi["IP_VS_CONN_F_MASQ"],
        "tunnel": uapi["IP_VS_CONN_F_TUNNEL"],
        "dr": uapi["IP_VS_CONN_F_DROUTE"],
    } == ipvs_codec.FWD_CODE
    assert {v: k for k, v in ipvs_codec.FWD_CODE.items()} == ipvs_codec.FWD_NAME
    assert {
        "master": uapi["IP_VS_STATE_MASTER"],
        "backup": uapi["IP_VS_STATE_BACKUP"],
    } == ipvs_sync.STATE_CODE
    assert uapi["IP_VS_IFNAME_MAXLEN"] == ipvs_sync.IP_VS_IFNAME_MAXLEN
    assert p2.GENL_VERSION == uapi["IPVS_GENL_VERSION"] == 1  # the plane's genl header says 1
    assert (ipvs_codec.NLM_F_REQUEST, ipvs_codec.NLM_F_ACK, ipvs_codec.NLM_F_DUMP) == (
        nl.NLM_F_REQUEST, nl.NLM_F_ACK, nl.NLM_F_DUMP,
    )  # fmt: skip
    assert (ipvs_codec.NLMSG_ERROR, ipvs_codec.NLMSG_DONE, ipvs_codec.NLA_F_NESTED) == (
        nl.NLMSG_ERROR, nl.NLMSG_DONE, nl.NLA_F_NESTED,
    )  # fmt: skip
    assert ipvs.NETLINK_GENERIC == nl.NETLINK_GENERIC


# ---------------------------------------------------------------------- decoding helpers
def msg_class(uapi: dict[str, int]) -> type[p2.ipvsmsg]:
    """pyroute2's ipvsmsg, with the daemon attribute decoded by pyroute2's nla machinery using
    the header's numbers (pyroute2 itself leaves it as "hex")."""

    class daemon(nla):
        nla_map = tuple((uapi[n], n, t) for n, t in DAEMON_TYPES.items())

    top = tuple((n, "daemon" if n == "IPVS_CMD_ATTR_DAEMON" else t) for n, t in p2.ipvsmsg.nla_map)
    return type("ipvsmsg_daemon", (p2.ipvsmsg,), {"nla_map": top, "daemon": daemon})


def plain(msg: Any) -> dict[str, Any]:
    """{attribute name: value} of a decoded message or nested attribute, recursively; an
    attribute pyroute2 does not know, or one that appears twice, fails the test."""
    out: dict[str, Any] = {}
    for slot in msg["attrs"]:
        assert slot.name != "UNKNOWN", f"attribute unknown to pyroute2 in {msg}"
        assert slot.name not in out, f"{slot.name} twice"
        value = slot.value
        if isinstance(value, nla):
            value = plain(value) if value.nla_map else {k: value[k] for k, _ in value.fields}
        out[slot.name] = value
    return out


def ip4(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def af(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def svc_key(k: ServiceKey) -> dict[str, Any]:
    return {
        "IPVS_SVC_ATTR_AF": socket.AF_INET6 if k.family == 6 else socket.AF_INET,
        "IPVS_SVC_ATTR_PROTOCOL": socket.getprotobyname(k.protocol),
        "IPVS_SVC_ATTR_ADDR": k.address,
        "IPVS_SVC_ATTR_PORT": k.port,
    }


def expected(a: Action, uapi: dict[str, int], op: str | None = None) -> dict[str, Any]:
    """What pyroute2 must read in the request for action ``a`` (sent as ``op``)."""
    op = op or a.op
    svc = svc_key(a.service)
    if op in ("add_service", "update_service"):
        assert a.spec is not None
        persistent = a.spec.persistence > 0
        svc |= {
            "IPVS_SVC_ATTR_SCHED_NAME": a.spec.scheduler,
            "IPVS_SVC_ATTR_FLAGS": {
                "flags": uapi["IP_VS_SVC_F_PERSISTENT"] if persistent else 0,
                "mask": 0xFFFFFFFF,
            },
            "IPVS_SVC_ATTR_TIMEOUT": a.spec.persistence,
            # ipvsadm's values: a full v4 mask, the prefix length 128 (a host-order u32) for v6
            "IPVS_SVC_ATTR_NETMASK": ip4(
                struct.pack("=I", 128 if a.service.family == 6 else 0xFFFFFFFF)
            ),
        }
    out: dict[str, Any] = {"IPVS_CMD_ATTR_SERVICE": svc}
    if a.dest is not None:
        dest: dict[str, Any] = {
            "IPVS_DEST_ATTR_ADDR": a.dest.address,
            "IPVS_DEST_ATTR_PORT": a.dest.port,
            "IPVS_DEST_ATTR_ADDR_FAMILY": af(a.dest.address),
        }
        if op != "del_dest":
            assert a.dest_spec is not None
            fwd = {"nat": "IP_VS_CONN_F_MASQ", "tunnel": "IP_VS_CONN_F_TUNNEL",
                   "dr": "IP_VS_CONN_F_DROUTE"}  # fmt: skip
            dest |= {
                "IPVS_DEST_ATTR_FWD_METHOD": uapi[fwd[a.dest_spec.forwarding]],
                "IPVS_DEST_ATTR_WEIGHT": a.dest_spec.weight,
                "IPVS_DEST_ATTR_U_THRESH": 0,
                "IPVS_DEST_ATTR_L_THRESH": 0,
            }
        out["IPVS_CMD_ATTR_DEST"] = dest
    return out


# ---------------------------------------------------------------------- the fake kernel
def reply(cls: type[p2.ipvsmsg], cmd: int, seq: int, attrs: list[Any]) -> bytes:
    """A dump reply message, encoded by pyroute2 (as the kernel answers: NLM_F_MULTI)."""
    m = cls()
    m["cmd"], m["version"] = cmd, p2.GENL_VERSION
    m["header"]["type"], m["header"]["flags"] = FAMILY, nl.NLM_F_MULTI
    m["header"]["sequence_number"], m["header"]["pid"] = seq, 0
    m["attrs"] = attrs
    m.encode()
    return bytes(m.data)


def control(kind: int, seq: int, payload: bytes) -> bytes:
    """A netlink control message (NLMSG_ERROR ack / NLMSG_DONE): netlink's own, not IPVS."""
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


class FakeKernel:
    """The kernel's end of the plane's socket: every request is decoded with ``cls`` (pyroute2)
    and kept; acks and errors as the kernel sends them (an error is always reported, an ack only
    when asked); dumps answered by ``dumps(request)`` -> datagrams of encoded replies."""

    def __init__(self, cls: type[p2.ipvsmsg]) -> None:
        self.cls = cls
        self.requests: list[Any] = []
        self.errno_for: Callable[[Any], int] = lambda m: 0
        self.dumps: Callable[[Any], list[list[bytes]]] = lambda m: []
        self.tasks: list[asyncio.Task[None]] = []
        self.socks: list[socket.socket] = []

    def socket(self) -> socket.socket:
        """Stands in for the plane's netlink socket factory."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        theirs.setblocking(False)
        self.socks += [ours, theirs]
        self.tasks.append(asyncio.get_running_loop().create_task(self.serve(theirs)))
        return ours

    async def serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(sock, 1 << 20):
            off = 0
            while off < len(data):
                n, _kind, flags, seq = struct.unpack_from("=IHHI", data, off)
                msg = self.cls(data[off : off + n])
                msg.decode()
                self.requests.append(msg)
                if flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP:
                    for datagram in self.dumps(msg):
                        await loop.sock_sendall(sock, b"".join(datagram))
                    await loop.sock_sendall(sock, control(nl.NLMSG_DONE, seq, b"\0" * 4))
                else:
                    code = self.errno_for(msg)
                    if code or flags & nl.NLM_F_ACK:  # with CAP_ACK: error + request header
                        ack = struct.pack("=i", -code) + data[off : off + 16]
                        await loop.sock_sendall(sock, control(nl.NLMSG_ERROR, seq, ack))
                off += (n + 3) & ~3

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for s in self.socks:
            s.close()
        for r in results:  # a fake kernel that broke must not pass as a quiet kernel
            if not isinstance(r, asyncio.CancelledError | type(None)):
                raise r


@pytest.fixture
async def kernel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uapi: dict[str, int]
) -> AsyncIterator[tuple[FakeKernel, IpvsDataplane]]:
    """An opened ``IpvsDataplane`` (batches of 2) whose socket leads to a FakeKernel."""
    k = FakeKernel(msg_class(uapi))

    async def family_id() -> int:
        return FAMILY

    # the kernel boundary: the plane's socket factory and its family-id resolution
    monkeypatch.setattr(ipvs, "_netlink_socket", k.socket)
    monkeypatch.setattr(ipvs, "_family_id", family_id)
    proc = tmp_path / "ip_vs"
    proc.write_text("")
    plane = IpvsDataplane(batch=2, proc=str(proc))
    await plane.open()
    try:
        yield k, plane
    finally:
        await plane.close()
        await k.close()


def within(coro: Any) -> Any:
    return asyncio.wait_for(coro, timeout=10)  # a broken fake must fail, never hang


WEB = ServiceKey("tcp", "192.0.2.10", 80)
DNS6 = ServiceKey("udp", "2001:db8::53", 53)
ACTIONS = [
    Action("add_service", WEB, spec=ServiceSpec("wrr", 0)),
    Action("add_service", DNS6, spec=ServiceSpec("sh", 300)),
    Action("update_service", WEB, spec=ServiceSpec("rr", 60)),
    Action("add_dest", WEB, dest=DestKey("198.51.100.1", 8080), dest_spec=DestSpec(5, "nat")),
    Action("add_dest", WEB, dest=DestKey("198.51.100.2", 80), dest_spec=DestSpec(0, "dr")),
    Action("add_dest", DNS6, dest=DestKey("2001:db8::7", 53), dest_spec=DestSpec(100, "tunnel")),
    Action("update_dest", WEB, dest=DestKey("198.51.100.1", 8080), dest_spec=DestSpec(7, "dr")),
    Action("del_dest", WEB, dest=DestKey("198.51.100.2", 80)),
    Action("del_service", DNS6),
]


def check_request(msg: Any, cmd_name: str, flags: int) -> None:
    assert msg["cmd"] == getattr(p2, cmd_name)
    assert msg["version"] == p2.GENL_VERSION
    assert msg["header"]["type"] == FAMILY
    assert msg["header"]["flags"] == flags, cmd_name
    for slot in msg["attrs"]:  # nested attributes say so
        assert slot.get_flags() == nl.NLA_F_NESTED, slot.name


# ---------------------------------------------------------------------- every command we send
async def test_every_table_command_reads_back_in_pyroute2(
    kernel: tuple[FakeKernel, IpvsDataplane], uapi: dict[str, int]
) -> None:
    k, plane = kernel
    await within(plane.apply({}, ACTIONS))
    assert len(k.requests) == len(ACTIONS)
    seqs = [m["header"]["sequence_number"] for m in k.requests]
    assert seqs == sorted(set(seqs))
    for i, (a, msg) in enumerate(zip(ACTIONS, k.requests, strict=True)):
        last_of_batch = i % 2 == 1 or i == len(ACTIONS) - 1  # batch=2: only those ask for an ack
        check_request(msg, OPS[a.op], nl.NLM_F_REQUEST | (nl.NLM_F_ACK if last_of_batch else 0))
        assert plain(msg) == expected(a, uapi), a


async def test_exists_is_retried_as_set_and_gone_is_fine(
    kernel: tuple[FakeKernel, IpvsDataplane], uapi: dict[str, int]
) -> None:
    k, plane = kernel
    first = {p2.IPVS_CMD_NEW_SERVICE: errno.EEXIST, p2.IPVS_CMD_NEW_DEST: errno.EEXIST,
             p2.IPVS_CMD_DEL_DEST: errno.ENOENT, p2.IPVS_CMD_DEL_SERVICE: errno.ESRCH}  # fmt: skip
    k.errno_for = lambda m: first.get(m["cmd"], 0)
    actions = [ACTIONS[0], ACTIONS[3], ACTIONS[7], ACTIONS[8]]
    await within(plane.apply({}, actions))
    sent = [(m["cmd"], plain(m)) for m in k.requests]
    assert sent == [(getattr(p2, OPS[a.op]), expected(a, uapi)) for a in actions] + [
        (p2.IPVS_CMD_SET_SERVICE, expected(ACTIONS[0], uapi, "update_service")),
        (p2.IPVS_CMD_SET_DEST, expected(ACTIONS[3], uapi, "update_dest")),
    ]
    k.errno_for = lambda m: errno.EINVAL
    with pytest.raises(DataplaneError, match=r"add_service tcp/192\.0\.2\.10:80.*EINVAL"):
        await within(plane.apply({}, [ACTIONS[0]]))


# ---------------------------------------------------------------------- dumps we parse
STATS = {"attrs": [("IPVS_STATS_ATTR_CONNS", 12), ("IPVS_STATS_ATTR_INBYTES", 1 << 40)]}


def svc_reply(k: ServiceKey | None, sched: str, flags: int, timeout: int, **extra: Any) -> Any:
    """A service as the kernel dumps it (ip_vs_genl_fill_service), in pyroute2's terms."""
    af = socket.AF_INET6 if k is not None and k.family == 6 else socket.AF_INET
    attrs: list[tuple[str, Any]] = [("IPVS_SVC_ATTR_AF", af)]
    if k is None:
        attrs.append(("IPVS_SVC_ATTR_FWMARK", extra.pop("fwmark")))
    else:
        proto = extra.pop("proto", socket.getprotobyname(k.protocol))
        attrs += [("IPVS_SVC_ATTR_PROTOCOL", proto), ("IPVS_SVC_ATTR_ADDR", k.address),
                  ("IPVS_SVC_ATTR_PORT", k.port)]  # fmt: skip
    attrs += [
        ("IPVS_SVC_ATTR_SCHED_NAME", sched),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFFFFFF}),
        ("IPVS_SVC_ATTR_TIMEOUT", timeout),
        ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255"),
        ("IPVS_SVC_ATTR_STATS", STATS),
        ("IPVS_SVC_ATTR_STATS64", STATS),
    ]
    return [("IPVS_CMD_ATTR_SERVICE", {"attrs": attrs})]


def dest_reply(d: DestKey, fwd: int, weight: int) -> Any:
    """A destination as the kernel dumps it (ip_vs_genl_fill_dest), in pyroute2's terms."""
    attrs = [
        ("IPVS_DEST_ATTR_ADDR", d.address), ("IPVS_DEST_ATTR_PORT", d.port),
        ("IPVS_DEST_ATTR_FWD_METHOD", fwd), ("IPVS_DEST_ATTR_WEIGHT", weight),
        ("IPVS_DEST_ATTR_TUN_TYPE", 0), ("IPVS_DEST_ATTR_TUN_PORT", 0),
        ("IPVS_DEST_ATTR_TUN_FLAGS", 0), ("IPVS_DEST_ATTR_U_THRESH", 0),
        ("IPVS_DEST_ATTR_L_THRESH", 0), ("IPVS_DEST_ATTR_ACTIVE_CONNS", 3),
        ("IPVS_DEST_ATTR_INACT_CONNS", 1), ("IPVS_DEST_ATTR_PERSIST_CONNS", 0),
        ("IPVS_DEST_ATTR_ADDR_FAMILY", af(d.address)),
        ("IPVS_DEST_ATTR_STATS", STATS), ("IPVS_DEST_ATTR_STATS64", STATS),
    ]  # fmt: skip
    return [("IPVS_CMD_ATTR_DEST", {"attrs": attrs})]


async def test_snapshot_parses_dumps_pyroute2_encoded(
    kernel: tuple[FakeKernel, IpvsDataplane], uapi: dict[str, int]
) -> None:
    k, plane = kernel
    d1, d2 = DestKey("198.51.100.1", 8080), DestKey("198.51.100.2", 80)
    d3 = DestKey("198.51.100.3", 80)
    d6 = DestKey("2001:db8::7", 53)
    persistent_hashed = uapi["IP_VS_SVC_F_PERSISTENT"] | uapi["IP_VS_SVC_F_HASHED"]
    services = [
        svc_reply(WEB, "rr", persistent_hashed, 60),
        svc_reply(None, "wlc", uapi["IP_VS_SVC_F_HASHED"], 0, fwmark=7),  # foreign: skipped
        svc_reply(DNS6, "sh", uapi["IP_VS_SVC_F_HASHED"], 300),  # a timeout without the flag
        svc_reply(ServiceKey("tcp", "192.0.2.99", 9), "rr", 0, 0, proto=132),  # sctp: skipped
    ]
    dests = {
        (socket.IPPROTO_TCP, WEB.address, WEB.port): [
            dest_reply(d1, uapi["IP_VS_CONN_F_MASQ"], 5),
            dest_reply(d2, uapi["IP_VS_CONN_F_LOCALNODE"], 0),  # read back as nat (never asked)
            dest_reply(d3, uapi["IP_VS_CONN_F_DROUTE"], 3),
        ],
        (socket.IPPROTO_UDP, DNS6.address, DNS6.port): [
            dest_reply(d6, uapi["IP_VS_CONN_F_TUNNEL"], 100)
        ],
    }

    def dumps(m: Any) -> list[list[bytes]]:
        seq = m["header"]["sequence_number"]
        if m["cmd"] == p2.IPVS_CMD_GET_SERVICE:
            msgs = [reply(k.cls, p2.IPVS_CMD_NEW_SERVICE, seq, a) for a in services]
            return [msgs[:3], msgs[3:]]  # two datagrams, then NLMSG_DONE in a third
        key = plain(m)["IPVS_CMD_ATTR_SERVICE"]
        found = dests[
            (key["IPVS_SVC_ATTR_PROTOCOL"], key["IPVS_SVC_ATTR_ADDR"], key["IPVS_SVC_ATTR_PORT"])
        ]
        return [[reply(k.cls, p2.IPVS_CMD_NEW_DEST, seq, a) for a in found]]

    k.dumps = dumps
    table = await within(plane.snapshot(set()))
    assert table == {
        WEB: TableService(ServiceSpec("rr", 60), {d1: DestSpec(5, "nat"), d2: DestSpec(0, "nat"),
                                                  d3: DestSpec(3, "dr")}),
        DNS6: TableService(ServiceSpec("sh", 0), {d6: DestSpec(100, "tunnel")}),
    }  # fmt: skip
    dump = nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    get_svc, *get_dests = k.requests
    check_request(get_svc, "IPVS_CMD_GET_SERVICE", dump)
    assert plain(get_svc) == {}
    assert len(get_dests) == 2
    for msg, key in zip(get_dests, [WEB, DNS6], strict=True):
        check_request(msg, "IPVS_CMD_GET_DEST", dump)
        assert plain(msg) == {"IPVS_CMD_ATTR_SERVICE": svc_key(key)}


# ---------------------------------------------------------------------- the sync daemons
async def test_sync_daemon_commands_and_dump(
    kernel: tuple[FakeKernel, IpvsDataplane], uapi: dict[str, int]
) -> None:
    """Starting, replacing and reading the sync daemons, against a fake kernel that keeps the
    daemons its requests (decoded by pyroute2 with the header's numbers) start and stop."""
    k, plane = kernel
    ifn, syncid = "IPVS_DAEMON_ATTR_MCAST_IFN", "IPVS_DAEMON_ATTR_SYNC_ID"
    running: dict[int, dict[str, Any]] = {  # a backup on another interface runs already
        uapi["IP_VS_STATE_BACKUP"]: {ifn: "eth9", syncid: 7}
    }

    def apply(m: Any) -> int:
        d = plain(m)["IPVS_CMD_ATTR_DAEMON"]
        state = d.pop("IPVS_DAEMON_ATTR_STATE")
        if m["cmd"] == p2.IPVS_CMD_NEW_DAEMON:
            running[state] = d
        elif m["cmd"] == p2.IPVS_CMD_DEL_DAEMON:
            del running[state]
        return 0

    def dumps(m: Any) -> list[list[bytes]]:
        seq = m["header"]["sequence_number"]
        return [[
            reply(k.cls, p2.IPVS_CMD_NEW_DAEMON, seq, [("IPVS_CMD_ATTR_DAEMON", {"attrs": [
                ("IPVS_DAEMON_ATTR_STATE", state), *d.items(),
                ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", 1472),
                ("IPVS_DAEMON_ATTR_MCAST_GROUP", "224.0.0.81"),
                ("IPVS_DAEMON_ATTR_MCAST_PORT", 8848), ("IPVS_DAEMON_ATTR_MCAST_TTL", 1),
            ]})])
            for state, d in sorted(running.items())
        ]]  # fmt: skip

    k.errno_for, k.dumps = apply, dumps
    sync = SyncDaemons(plane, SyncConfig("eth1", 7), clock=FakeClock())
    first = await within(sync.read())
    assert [d.view() for d in first] == [{
        "state": "backup", "interface": "eth9", "syncid": 7, "maxlen": 1472,
        "group": "224.0.0.81", "port": 8848, "ttl": 1,
    }]  # fmt: skip
    assert await within(sync.reconcile("test")), sync.error
    assert sync.running == [SyncDaemon("master", "eth1", 7), SyncDaemon("backup", "eth1", 7)]
    sent = [(m["cmd"], m["header"]["flags"], plain(m)) for m in k.requests]
    ack, dump = nl.NLM_F_REQUEST | nl.NLM_F_ACK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    master, backup = uapi["IP_VS_STATE_MASTER"], uapi["IP_VS_STATE_BACKUP"]
    on_eth1 = {ifn: "eth1", syncid: 7}

    def daemon(state: int, **more: Any) -> dict[str, Any]:
        return {"IPVS_CMD_ATTR_DAEMON": {"IPVS_DAEMON_ATTR_STATE": state, **more}}

    assert sent == [
        (p2.IPVS_CMD_GET_DAEMON, dump, {}),  # sync.read()
        (p2.IPVS_CMD_GET_DAEMON, dump, {}),  # reconcile: read, start, replace, read back
        (p2.IPVS_CMD_NEW_DAEMON, ack, daemon(master, **on_eth1)),
        (p2.IPVS_CMD_DEL_DAEMON, ack, daemon(backup)),
        (p2.IPVS_CMD_NEW_DAEMON, ack, daemon(backup, **on_eth1)),
        (p2.IPVS_CMD_GET_DAEMON, dump, {}),
    ]
