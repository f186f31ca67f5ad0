"""The rules of the nftables plane's service chains as nf_tables netlink messages, and the batch.

``rule_messages`` encodes one service rule of ``hacontrol.dataplane.nft_render`` (its JSON form,
as ``nft_delta`` sends it) with the expressions nft 1.0.6 generates for it, in its order:

* ``ip daddr VIP``: ``meta nfproto`` into reg 1, ``cmp eq`` ipv4 / ipv6 (the dependency nft adds in
  an ``inet`` table), ``payload`` network header +16 (4 bytes) or +24 (16 bytes), ``cmp eq``;
* ``tcp dport P``: ``meta l4proto``, ``cmp eq``, ``payload`` transport header +2 (2), ``cmp eq``;
* ``dnat ip to <key> map { slot : addr . port }``: the key ``numgen inc mod N`` into reg 1, or
  ``payload`` of the source address into reg 2 and ``jhash`` of it (length 4 or 16, no seed: the
  kernel draws one) into reg 1; ``lookup`` of reg 1 in an anonymous constant map created in the
  same batch (NEWSET ``__map%d`` with ANONYMOUS|CONSTANT|MAP, an NFTA_SET_ID, integer keys in host
  order, ``ipv4_addr . inet_service`` data, its NEWSETELEM) writing reg 1; ``nat`` dnat with the
  address in reg 1 and the port in the next 32-bit register (reg32 01 for IPv4, reg 2 for IPv6);
* or ``return`` (an ``immediate`` verdict) for a service without destinations;

and its comment as NFTA_RULE_USERDATA (TLV type 0). ``encode`` turns all of a delta's commands
into one batch, with the element and chain messages of ``hacontrol.dataplane.nftnl_codec``.
A rule of any other shape raises ``Unencodable``.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import Any

from hacontrol.dataplane.nftnl_codec import (
    NEWRULE,
    NEWSET,
    NEWSETELEM,
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NFT_RETURN,
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    RULE_CHAIN,
    RULE_EXPRESSIONS,
    RULE_USERDATA,
    TABLE_ATTR,
    Batch,
    Json,
    Unencodable,
    address,
    chain_msg,
    component,
    element_msg,
    message,
    nest,
    nla,
    string,
    u32,
    verdict,
)
from hacontrol.dataplane.table import PROTO_NUM

NFT_META_NFPROTO, NFT_META_L4PROTO = 15, 16
NFPROTO = {"ip": 2, "ip6": 10}
ADDR_LEN = {"ip": 4, "ip6": 16}
DADDR_OFFSET = {"ip": 16, "ip6": 24}
SADDR_OFFSET = {"ip": 12, "ip6": 8}
BASE_NETWORK, BASE_TRANSPORT = 1, 2
REG_VERDICT, REG_1, REG_2, REG32_01 = 0, 1, 2, 9
PROTO_REG = {"ip": REG32_01, "ip6": REG_2}  # the port, right after the address
NFT_NAT_DNAT = 1
ANON_MAP = "__map%d"
SET_ANONYMOUS_CONSTANT_MAP = 0x1 | 0x2 | 0x8
TYPE_INTEGER = 4
CONCAT_DATA_TYPE = {"ip": (7 << 6) | 13, "ip6": (8 << 6) | 13}  # ipv4/6_addr . inet_service
# the set's userdata as nft writes it: key byte order host (1), data byte order 0, no interval
ANON_MAP_UDATA = bytes.fromhex("000401000000010400000000060400000000")
UDATA_RULE_COMMENT = 0


def _expr(name: str, *attrs: bytes) -> bytes:
    return nest(1, string(1, name), nest(2, *attrs))  # NFTA_LIST_ELEM { NAME, DATA }


def _meta(key: int) -> bytes:
    return _expr("meta", u32(2, key), u32(1, REG_1))  # KEY, DREG


def _cmp_eq(value: bytes) -> bytes:
    return _expr("cmp", u32(1, REG_1), u32(2, 0), nest(3, nla(1, value)))  # SREG, OP eq, DATA


def _payload(dreg: int, base: int, offset: int, length: int) -> bytes:
    return _expr("payload", u32(1, dreg), u32(2, base), u32(3, offset), u32(4, length))


def _field(expr: Any, proto: str, name: str) -> Any:
    """The right side of ``match`` ``==`` of ``proto``'s payload field ``name``."""
    if not isinstance(expr, dict) or set(expr) != {"match"}:
        raise Unencodable(f"not a match: {expr!r}")
    m = expr["match"]
    if m.get("op") != "==" or m.get("left") != {"payload": {"protocol": proto, "field": name}}:
        raise Unencodable(f"not a match of {proto} {name}: {expr!r}")
    return m.get("right")


def _map_key(fam: str, key: Any, slots: int) -> list[bytes]:
    """The expressions writing the slot number to reg 1."""
    if key == {"numgen": {"mode": "inc", "mod": slots, "offset": 0}}:
        return [_expr("numgen", u32(1, REG_1), u32(2, slots), u32(3, 0), u32(4, 0))]
    saddr = {"payload": {"protocol": fam, "field": "saddr"}}
    if key == {"jhash": {"mod": slots, "expr": saddr}}:
        n = ADDR_LEN[fam]
        return [
            _payload(REG_2, BASE_NETWORK, SADDR_OFFSET[fam], n),
            _expr("hash", u32(1, REG_2), u32(2, REG_1), u32(3, n), u32(4, slots),
                  u32(6, 0), u32(7, 0)),
        ]  # fmt: skip
    raise Unencodable(f"map key of another kind: {key!r}")


def _anon_map(batch: Batch, table: str, fam: str, data: Any) -> int:
    """NEWSET + NEWSETELEM of the constant slot map; its set id."""
    if not isinstance(data, list) or not data:
        raise Unencodable(f"slot map without elements: {data!r}")
    items = []
    for i, item in enumerate(data):
        if not (isinstance(item, list) and len(item) == 2 and item[0] == i):
            raise Unencodable(f"slot map element out of order: {item!r}")
        target = item[1]
        if not isinstance(target, dict) or set(target) != {"concat"} or len(target["concat"]) != 2:
            raise Unencodable(f"slot data not address . port: {target!r}")
        addr, port = target["concat"]
        raw = address(addr)
        if len(raw) != ADDR_LEN[fam] or not isinstance(port, int):
            raise Unencodable(f"slot data of another family: {target!r}")
        key = nest(1, nla(1, struct.pack("=I", i)))
        value = nest(2, nla(1, raw + component(port)))
        items.append(nest(i + 1, key, value))
    set_id = batch.new_set_id()
    dlen = ADDR_LEN[fam] + 4
    body = (
        string(TABLE_ATTR, table) + string(2, ANON_MAP) + u32(3, SET_ANONYMOUS_CONSTANT_MAP)
        + u32(4, TYPE_INTEGER) + u32(5, 4) + u32(6, CONCAT_DATA_TYPE[fam]) + u32(7, dlen)
        + u32(10, set_id) + nest(9, u32(1, len(data))) + nla(13, ANON_MAP_UDATA)
    )  # fmt: skip
    batch.add(NEWSET, NLM_F_CREATE, body, f"add anonymous map of {len(data)} slots")
    elems = string(TABLE_ATTR, table) + string(2, ANON_MAP) + u32(4, set_id) + nest(3, *items)
    batch.add(NEWSETELEM, NLM_F_CREATE, elems, f"add {len(data)} slots to the anonymous map")
    return set_id


def _dnat_exprs(batch: Batch, table: str, expr: list[Any]) -> list[bytes]:
    if len(expr) != 3:
        raise Unencodable(f"service rule of {len(expr)} expressions")
    dnat = expr[2].get("dnat") if isinstance(expr[2], dict) and len(expr[2]) == 1 else None
    if (
        not isinstance(dnat, dict)
        or set(dnat) != {"family", "addr"}
        or dnat["family"] not in ADDR_LEN
    ):
        raise Unencodable(f"not a dnat to a map: {expr[2]!r}")
    fam = dnat["family"]
    vip = address(str(_field(expr[0], fam, "daddr")))
    proto = expr[1]["match"]["left"]["payload"]["protocol"]
    port = _field(expr[1], proto, "dport") if proto in PROTO_NUM else None
    if not isinstance(port, int) or len(vip) != ADDR_LEN[fam]:
        raise Unencodable(f"not a service match: {expr[:2]!r}")
    amap = dnat["addr"].get("map") if isinstance(dnat["addr"], dict) else None
    if not isinstance(amap, dict) or set(amap) != {"key", "data"}:
        raise Unencodable(f"dnat address not a map: {dnat!r}")
    slots = amap["data"].get("set") if isinstance(amap["data"], dict) else None
    key_exprs = _map_key(fam, amap["key"], len(slots) if isinstance(slots, list) else 0)
    set_id = _anon_map(batch, table, fam, slots)
    return [
        _meta(NFT_META_NFPROTO), _cmp_eq(bytes([NFPROTO[fam]])),
        _payload(REG_1, BASE_NETWORK, DADDR_OFFSET[fam], len(vip)), _cmp_eq(vip),
        _meta(NFT_META_L4PROTO), _cmp_eq(bytes([PROTO_NUM[proto]])),
        _payload(REG_1, BASE_TRANSPORT, 2, 2), _cmp_eq(struct.pack(">H", port)),
        *key_exprs,
        _expr("lookup", u32(2, REG_1), u32(3, REG_1), string(1, ANON_MAP), u32(4, set_id)),
        _expr("nat", u32(1, NFT_NAT_DNAT), u32(2, NFPROTO[fam]), u32(3, REG_1),
              u32(5, PROTO_REG[fam])),
    ]  # fmt: skip


def rule_messages(batch: Batch, table: str, obj: Json) -> None:
    """The messages adding one service rule (``{"chain", "expr", "comment"}``) to ``batch``."""
    chain, expr, comment = obj.get("chain"), obj.get("expr"), obj.get("comment")
    if not isinstance(chain, str) or not isinstance(expr, list) or not isinstance(comment, str):
        raise Unencodable(f"rule without chain, expressions or comment: {obj!r}")
    if set(obj) - {"family", "table", "chain", "expr", "comment"}:
        raise Unencodable(f"rule with other fields: {sorted(obj)}")
    if expr == [{"return": None}]:
        exprs = [_expr("immediate", u32(1, REG_VERDICT), nest(2, verdict(NFT_RETURN)))]
    else:
        try:
            exprs = _dnat_exprs(batch, table, expr)
        except (KeyError, TypeError, AttributeError) as e:
            raise Unencodable(f"rule of another shape ({type(e).__name__}: {e})") from e
    text = comment.encode() + b"\0"
    if len(text) > 255:
        raise Unencodable(f"comment of {len(text)} bytes")
    udata = bytes([UDATA_RULE_COMMENT, len(text)]) + text
    body = (
        string(TABLE_ATTR, table) + string(RULE_CHAIN, chain)
        + nest(RULE_EXPRESSIONS, *exprs) + nla(RULE_USERDATA, udata)
    )  # fmt: skip
    batch.add(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, body, f"add rule {chain} ({comment})")


def encode(tables: Collection[str], commands: list[Json], begin: int) -> Batch:
    """The batch of ``commands`` (``nft_delta``'s) on the ``tables`` (family inet: ours, the
    main one and its service tables); sequence numbers from ``begin`` (the BATCH_BEGIN) on."""
    if isinstance(tables, str):
        raise TypeError("tables: a collection of names, not one name")
    batch = Batch(begin)
    batch.parts.append(message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, begin, b"", family=0))
    for cmd in commands:
        if len(cmd) != 1:
            raise Unencodable(f"not one command: {cmd!r}")
        ((op, what),) = cmd.items()
        if not isinstance(what, dict) or len(what) != 1:
            raise Unencodable(f"not one object: {cmd!r}")
        ((kind, obj),) = what.items()
        table = obj.get("table")
        if obj.get("family") != "inet" or not isinstance(table, str) or table not in tables:
            raise Unencodable(f"object outside our inet tables: {cmd!r}")
        if kind == "element" and op in ("add", "delete"):
            element_msg(batch, table, op, obj)
        elif kind == "chain":
            chain_msg(batch, table, op, obj)
        elif kind == "rule" and op == "add":
            rule_messages(batch, table, obj)
        else:
            raise Unencodable(f"{op} {kind}")
    end = batch.next_seq()
    batch.parts.append(message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, b"", family=0))
    return batch
