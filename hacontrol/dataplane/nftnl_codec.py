"""The nf_tables netlink wire format of the nftables plane's per-event changes (pure, no I/O).

``encode(table, commands, seq)`` turns the JSON commands of ``hacontrol.dataplane.nft_delta`` (a
few services' element deletes and adds, chain adds / flushes / deletes, and their rules) into one
nfnetlink batch: ``NFNL_MSG_BATCH_BEGIN``, one message per object, ``NFNL_MSG_BATCH_END``, every
object message asking for an ack (NLM_F_ACK). The bytes are what nft 1.0.6 itself sends for the
same commands (captured with ``strace -e write``; ``tests/unit/test_nftnl_codec.py`` holds the
capture): element keys are concatenations whose components are each padded to 4 bytes
(protocol: 1 byte, address: 4 or 16, port: 2 in network order), weights are ``mark`` data in host
order, a verdict element's data is ``goto <chain>``; a flush is a DELRULE naming only the chain.
The rules themselves (expressions, their anonymous slot map) are encoded by
``hacontrol.dataplane.nftnl_rule``.

Anything this does not know how to encode exactly (an object or expression the plane's layout
does not have) raises ``Unencodable`` with the reason: the caller then sends that batch through
nft instead, never something approximate. ``parse_acks`` reads the kernel's answers back.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from hacontrol.dataplane.nlmsg import HDR, attributes, messages
from hacontrol.dataplane.table import PROTO_NUM

Json = dict[str, Any]

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFPROTO_INET = 1
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x400, 0x800
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLA_F_NESTED = 0x8000
NLMSGERR_ATTR_MSG = 1
# nf_tables message types (include/uapi/linux/netfilter/nf_tables.h)
NEWCHAIN, DELCHAIN, NEWRULE, DELRULE, NEWSET, NEWSETELEM, DELSETELEM = 3, 5, 6, 8, 9, 12, 14
# attributes
TABLE_ATTR = 1  # NFTA_{CHAIN,RULE,SET,SET_ELEM_LIST}_TABLE
CHAIN_NAME = 3
RULE_CHAIN, RULE_EXPRESSIONS, RULE_USERDATA = 2, 4, 7
SET_NAME, SET_FLAGS, SET_KEY_TYPE, SET_KEY_LEN = 2, 3, 4, 5
SET_DATA_TYPE, SET_DATA_LEN, SET_DESC, SET_ID, SET_USERDATA = 6, 7, 9, 10, 13
SET_DESC_SIZE = 1
LIST_SET, LIST_ELEMENTS, LIST_SET_ID = 2, 3, 4
ELEM_KEY, ELEM_DATA = 1, 2
DATA_VALUE, DATA_VERDICT = 1, 2
VERDICT_CODE, VERDICT_CHAIN = 1, 2
NFT_GOTO, NFT_RETURN = -4, -5

_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (network order)


class Unencodable(Exception):
    """A command this encoder does not produce exactly (the caller falls back to nft)."""


def nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n & 3)


def nest(kind: int, *parts: bytes) -> bytes:
    return nla(kind | NLA_F_NESTED, b"".join(parts))


def u32(kind: int, value: int) -> bytes:
    """A big-endian 32-bit attribute (nf_tables' integers are all network order)."""
    return nla(kind, struct.pack(">I", value & 0xFFFFFFFF))


def string(kind: int, text: str) -> bytes:
    return nla(kind, text.encode() + b"\0")


def message(mtype: int, flags: int, seq: int, body: bytes, family: int = NFPROTO_INET) -> bytes:
    """One nfnetlink message: nlmsghdr, nfgenmsg (version 0), ``body``."""
    res = socket.htons(NFNL_SUBSYS_NFTABLES) if mtype < 0x100 else 0
    head = _NFGEN.pack(family, 0, res)  # a batch delimiter names the subsystem in res_id
    return HDR.pack(HDR.size + len(head) + len(body), mtype, flags, seq, 0) + head + body


def nft_type(msg: int) -> int:
    return (NFNL_SUBSYS_NFTABLES << 8) | msg


# -- values -------------------------------------------------------------------------------------


def address(text: str) -> bytes:
    """An IPv4 or IPv6 address in network order (4 or 16 bytes)."""
    fam = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_pton(fam, text)
    except OSError as e:
        raise Unencodable(f"not an address: {text!r}") from e


def component(value: Any) -> bytes:
    """One field of a concatenated key, padded to 4 bytes: a protocol name (inet_proto, 1 byte),
    an address, or a port (inet_service, 2 bytes big-endian)."""
    if isinstance(value, str) and value in PROTO_NUM:
        raw = bytes([PROTO_NUM[value]])
    elif isinstance(value, str):
        raw = address(value)
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF:
        raw = struct.pack(">H", value)
    else:
        raise Unencodable(f"not a key component: {value!r}")
    return raw + b"\0" * (-len(raw) & 3)


def key_bytes(value: Any) -> bytes:
    """A set key: ``{"concat": [...]}`` or a single address."""
    if isinstance(value, dict) and set(value) == {"concat"}:
        return b"".join(component(v) for v in value["concat"])
    if isinstance(value, str) and value not in PROTO_NUM:
        return address(value)
    raise Unencodable(f"not a set key: {value!r}")


def verdict(code: int, chain: str | None = None) -> bytes:
    """NFTA_DATA_VERDICT: the code and, for jump / goto, the chain."""
    parts = [u32(VERDICT_CODE, code)]
    if chain is not None:
        parts.append(string(VERDICT_CHAIN, chain))
    return nest(DATA_VERDICT, *parts)


def elem_data(value: Any) -> bytes:
    """A map element's data: a weight (``mark``, host order) or ``goto`` a chain."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF:
        return nest(ELEM_DATA, nla(DATA_VALUE, struct.pack("=I", value)))
    if isinstance(value, dict) and set(value) == {"goto"}:
        return nest(ELEM_DATA, verdict(NFT_GOTO, value["goto"]["target"]))
    raise Unencodable(f"not element data of this plane: {value!r}")


# -- the batch ----------------------------------------------------------------------------------


@dataclass
class Batch:
    """The messages of one transaction: ``data`` (to send in one sendmsg) and, per sequence
    number asking an ack, what it does (an error names it)."""

    begin: int
    what: dict[int, str] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)
    set_ids: int = 0

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)

    def next_seq(self) -> int:
        return self.begin + 1 + len(self.what)

    def add(self, mtype: int, flags: int, body: bytes, what: str) -> None:
        seq = self.next_seq()
        self.what[seq] = what
        self.parts.append(message(nft_type(mtype), flags | NLM_F_REQUEST | NLM_F_ACK, seq, body))

    def new_set_id(self) -> int:
        self.set_ids += 1
        return self.set_ids


def element_msg(batch: Batch, table: str, op: str, obj: Json) -> None:
    name = obj.get("name")
    elems = obj.get("elem")
    if not isinstance(name, str) or not isinstance(elems, list) or not elems:
        raise Unencodable(f"element command without set name or elements: {obj!r}")
    items = []
    for i, e in enumerate(elems, 1):
        if op == "add" and isinstance(e, list) and len(e) == 2:  # a map element: key, data
            items.append(nest(i, nest(ELEM_KEY, nla(DATA_VALUE, key_bytes(e[0]))), elem_data(e[1])))
        else:
            items.append(nest(i, nest(ELEM_KEY, nla(DATA_VALUE, key_bytes(e)))))
    body = string(TABLE_ATTR, table) + string(LIST_SET, name) + nest(LIST_ELEMENTS, *items)
    mtype, flags = (NEWSETELEM, NLM_F_CREATE) if op == "add" else (DELSETELEM, 0)
    shown = ", ".join(_show(e) for e in elems)
    batch.add(mtype, flags, body, f"{op} element {name} {{ {shown} }}")


def _show(elem: Any) -> str:
    if isinstance(elem, list):
        return f"{_show(elem[0])} : {_show(elem[1])}"
    if isinstance(elem, dict) and "concat" in elem:
        return " . ".join(str(v) for v in elem["concat"])
    if isinstance(elem, dict) and "goto" in elem:
        return f"goto {elem['goto']['target']}"
    return str(elem)


def chain_msg(batch: Batch, table: str, op: str, obj: Json) -> None:
    name = obj.get("name")
    if not isinstance(name, str) or set(obj) - {"family", "table", "name"}:
        raise Unencodable(f"chain command of another kind than a regular chain: {obj!r}")
    if op == "add":
        batch.add(NEWCHAIN, NLM_F_CREATE, string(TABLE_ATTR, table) + string(CHAIN_NAME, name),
                  f"add chain {name}")  # fmt: skip
    elif op == "flush":  # DELRULE naming the chain only: every rule of it
        batch.add(DELRULE, 0, string(TABLE_ATTR, table) + string(RULE_CHAIN, name),
                  f"flush chain {name}")  # fmt: skip
    elif op == "delete":
        batch.add(DELCHAIN, 0, string(TABLE_ATTR, table) + string(CHAIN_NAME, name),
                  f"delete chain {name}")  # fmt: skip
    else:
        raise Unencodable(f"chain command {op}")


# -- acks ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """The kernel's answer to one message: ``error`` 0 (done) or a positive errno."""

    seq: int
    error: int
    message: str = ""


def parse_acks(data: bytes) -> list[Ack]:
    """The NLMSG_ERROR messages (acks and errors) in one received datagram; others skipped.
    ``nlmsg.Malformed`` (a ValueError) for a message that runs past the datagram."""
    out: list[Ack] = []
    for mtype, flags, seq, body in messages(data):
        if mtype != NLMSG_ERROR or len(body) < 4 + HDR.size:
            continue
        (code,) = struct.unpack_from("=i", body)
        text = ""
        if flags & NLM_F_ACK_TLVS:
            orig_len = HDR.unpack_from(body, 4)[0]
            start = 4 + (HDR.size if flags & NLM_F_CAPPED else orig_len)
            text = _ext_message(body[start:])
        out.append(Ack(seq, -code, text))
    return out


def _ext_message(tlvs: bytes) -> str:
    for kind, value in attributes(tlvs):
        if kind == NLMSGERR_ATTR_MSG:
            return value.split(b"\0", 1)[0].decode(errors="replace")
    return ""
