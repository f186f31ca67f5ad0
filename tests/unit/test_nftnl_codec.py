"""The nf_tables netlink writer of the nftables plane (``nftnl_codec``, ``nftnl_rule``, ``nftnl``).

Checked against two independent references, no kernel needed: the bytes nft 1.0.6 itself sent
for two deltas (``golden/nftnl``, captured with strace; see its README), and pyroute2's own
nf_tables message classes (``pyroute2.netlink.nfnetlink.nftsocket``) decoding every message we
encode for each scheduler and family. Then ``NftNetlink`` talks to a fake kernel at its socket (a
SOCK_SEQPACKET pair): every message acked, an error naming the refused object, a commit that
fails, and the fallbacks (a command not encoded, a socket refused) logged once.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink import nftsocket as p2
from structlog.testing import capture_logs

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft_delta import Refs, address_refs, delta
from hacontrol.dataplane.nft_render import NftRenderer, chain_name
from hacontrol.dataplane.nftnl import NftNetlink
from hacontrol.dataplane.nftnl_codec import NLM_F_ACK, Unencodable, parse_acks
from hacontrol.dataplane.nftnl_rule import encode
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, Table
from hacontrol.dataplane.table import TableService as TS

GOLDEN = Path(__file__).parent / "golden" / "nftnl"
TABLES = NftRenderer("hc", 16).tables()  # the main table and every service table name
CLASSES: dict[int, type[Any]] = {
    p2.NFT_MSG_NEWCHAIN: p2.nft_chain_msg, p2.NFT_MSG_DELCHAIN: p2.nft_chain_msg,
    p2.NFT_MSG_NEWRULE: p2.nft_rule_msg, p2.NFT_MSG_DELRULE: p2.nft_rule_msg,
    p2.NFT_MSG_NEWSET: p2.nft_set_msg, p2.NFT_MSG_NEWSETELEM: p2.nft_set_elem_list_msg,
    p2.NFT_MSG_DELSETELEM: p2.nft_set_elem_list_msg,
}  # fmt: skip
HDR = struct.Struct("=IHHII")


def split(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, seq, whole message) of each netlink message in ``data``."""
    out, off = [], 0
    while off < len(data):
        n, t, f, seq, _pid = HDR.unpack_from(data, off)
        assert n >= HDR.size
        out.append((t, f, seq, data[off : off + n]))
        off += (n + 3) & ~3
    return out


def attrs(body: bytes) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(body):
        n, k = struct.unpack_from("=HH", body, off)
        out.append((k, body[off : off + ((n + 3) & ~3)]))
        off += (n + 3) & ~3
    return out


def normal(msgs: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Messages without what may differ from nft's: sequence numbers, our NLM_F_ACK, the
    ids of anonymous sets (renumbered in order of appearance), and the NFTA_SET_ELEM_LIST_SET_ID
    nft adds to elements of named sets (the kernel finds those by name)."""
    ids: dict[bytes, bytes] = {}
    out = []
    for t, f, _seq, raw in msgs:
        body = raw[HDR.size + 4 :]
        kept = []
        named = b"__map%d\0" not in body
        for kind, attr in attrs(body):
            if t & 0xFF in (12, 14) and kind == 4 and named:
                continue
            if (t & 0xFF, kind) in {(9, 10), (12, 4)}:  # NFTA_SET_ID, ..._ELEM_LIST_SET_ID
                attr = attr[:4] + ids.setdefault(attr[4:8], struct.pack(">I", len(ids) + 1))
            kept.append(attr)
        out.append((t, f & ~NLM_F_ACK, raw[HDR.size : HDR.size + 4] + b"".join(kept)))
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_the_batch_is_byte_for_byte_what_nft_sends(n: int) -> None:
    nft = bytes.fromhex((GOLDEN / f"batch{n}.hex").read_text().replace("\n", ""))
    doc = json.loads((GOLDEN / f"delta{n}.json").read_text())
    ours = encode(TABLES, doc["nftables"], 1000)
    theirs_msgs, our_msgs = split(nft), split(ours.data)
    assert len(our_msgs) == len(theirs_msgs) > 10
    # a rule's lookup names its anonymous map by id: renumber the ids inside rules too
    want = [_rule_ids(m) for m in normal(theirs_msgs)]
    got = [_rule_ids(m) for m in normal(our_msgs)]
    for i, (a, b) in enumerate(zip(want, got, strict=True)):
        assert a == b, f"message {i}: type {a[0]:#x}"
    assert all(f & NLM_F_ACK for t, f, _s, _r in our_msgs if t >> 8 == 10)
    seqs = [s for _t, _f, s, _r in our_msgs]
    assert seqs == list(range(1000, 1000 + len(seqs)))


def golden_tables() -> tuple[list[Table], list[ServiceKey]]:
    """The three tables of golden/nftnl (README.md) and the services the deltas touch. Each
    service table a delta touches holds an anchor service (not touched) before and after, so no
    delta adds or deletes a table (those go through nft, not the encoder)."""
    k1, k2 = ServiceKey("tcp", "192.0.2.10", 80), ServiceKey("udp", "2001:db8::10", 53)
    k3, k4 = ServiceKey("tcp", "2001:db8::20", 443), ServiceKey("udp", "192.0.2.11", 53)
    anchors = {  # hc_10of16, hc_3of16, hc_6of16, hc_14of16: the tables of k1, k2, k3, k4
        ServiceKey("tcp", "192.0.2.20", 80): ts("rr", [("203.0.113.1", 80, 1)]),
        ServiceKey("tcp", "2001:db8::30", 443): ts("wrr", [("2001:db8:1::1", 443, 2)]),
        ServiceKey("udp", "2001:db8::31", 53): ts("sh", [("2001:db8:1::2", 53, 1)]),
        ServiceKey("udp", "192.0.2.21", 53): ts("rr", [("203.0.113.2", 53, 1)]),
    }
    a = {**anchors, k1: ts("wrr", [("198.51.100.1", 8080, 1), ("198.51.100.2", 8080, 2)])}
    b = {
        **anchors,
        k1: ts("sh", [("198.51.100.1", 8080, 1), ("198.51.100.2", 8080, 3)]),
        k2: ts("rr", [("2001:db8::1", 53, 1)]),
    }
    c = {
        **anchors,
        k2: ts("rr", [("2001:db8::1", 53, 0)]),
        k3: ts("sh", [("2001:db8::1", 443, 1), ("2001:db8::2", 443, 1)]),
        k4: ts("fo", [("198.51.100.1", 53, 1), ("198.51.100.3", 53, 5)]),
    }
    return [a, b, c], [k1, k2, k3, k4]


def test_the_golden_deltas_are_what_nft_delta_gives_now() -> None:
    """The captured batches stay meaningful: nft_delta still writes the deltas nft was fed
    (the tables of golden/nftnl/README.md), on the main table and four service tables, none
    of them added or deleted."""
    r = NftRenderer("hc", 16)
    (a, b, c), touched = golden_tables()
    anchored = r.shards(k for k in a if k not in touched)
    assert r.shards(touched) == anchored == {"hc_10of16", "hc_3of16", "hc_6of16", "hc_14of16"}
    spans = {1: {"hc", "hc_10of16", "hc_3of16"}, 2: {"hc", *anchored}}
    for n, (old, new) in enumerate(((a, b), (b, c)), 1):
        want = json.loads((GOLDEN / f"delta{n}.json").read_text())["nftables"]
        assert delta(r, old, new, touched, address_refs(old, r)) == want
        objs = [(kind, obj) for cmd in want for what in cmd.values() for kind, obj in what.items()]
        assert "table" not in {kind for kind, _obj in objs}
        assert {obj["table"] for _kind, obj in objs} == spans[n]


def _rule_ids(m: tuple[int, int, bytes]) -> tuple[int, int, bytes]:
    """NFTA_LOOKUP_SET_ID inside a rule (``lookup`` ... ``SET_ID`` n) set to 0."""
    t, f, body = m
    if t & 0xFF != 6:
        return m
    marker = b"\x0c\x00\x01\x00__map%d\x00\x08\x00\x04\x00"
    at = body.find(marker)
    while at >= 0:
        end = at + len(marker)
        body = body[:end] + b"\0\0\0\0" + body[end + 4 :]
        at = body.find(marker, end)
    return t, f, body


def ts(sched: str, dests: list[tuple[str, int, int]]) -> TS:
    return TS(ServiceSpec(sched), {DestKey(a, p): DestSpec(w) for a, p, w in dests})


V4, V6 = ServiceKey("tcp", "192.0.2.10", 80), ServiceKey("udp", "2001:db8::10", 53)
RS4 = [("198.51.100.1", 8080, 1), ("198.51.100.2", 8080, 3)]
RS6 = [("2001:db8::1", 53, 2), ("2001:db8::2", 53, 1)]


def anchors(keys: list[ServiceKey]) -> Table:
    """One service (none of ``keys``, its destination none of theirs) in each service table of
    ``keys``: a delta of ``keys`` from or to a table holding these adds and deletes no table."""
    r = NftRenderer("hc", 16)
    want, out = r.shards(keys), {}
    for port in range(1, 1000):
        key = ServiceKey("tcp", "192.0.2.20", port)
        if r.shard(key) in want:
            want.discard(r.shard(key))
            out[key] = ts("rr", [("203.0.113.1", 80, 1)])
        if not want:
            return out
    raise AssertionError(f"no anchor for {sorted(want)}")


def decoded(data: bytes) -> Iterator[tuple[int, Any]]:
    for t, _f, _seq, raw in split(data):
        if t >> 8 == 10:
            msg = CLASSES[t & 0xFF](raw)
            msg.decode()
            yield t & 0xFF, msg


EXPRS = {
    "rr": ["numgen"], "wrr": ["numgen"], "fo": ["numgen"], "sh": ["payload", "hash"],
}  # fmt: skip


@pytest.mark.parametrize("sched", ["rr", "wrr", "sh", "fo"])
@pytest.mark.parametrize("key", [V4, V6], ids=["ipv4", "ipv6"])
def test_pyroute2_reads_a_new_service_as_nft_would_list_it(sched: str, key: ServiceKey) -> None:
    r = NftRenderer("hc", 16)
    old = anchors([key])
    new: Table = {**old, key: ts(sched, RS4 if key.family == 4 else RS6)}
    cmds = delta(r, old, new, [key], address_refs(old, r))
    msgs = list(decoded(encode(TABLES, cmds, 1).data))
    kinds = [k for k, _m in msgs]
    assert kinds[:2] == [p2.NFT_MSG_NEWCHAIN, p2.NFT_MSG_NEWSET]
    assert msgs[0][1].get_attr("NFTA_CHAIN_NAME") == chain_name(key)
    assert msgs[0][1].get_attr("NFTA_CHAIN_TABLE") == r.shard(key)
    anon = msgs[1][1]
    assert anon.get_attr("NFTA_SET_FLAGS") == {
        "NFT_SET_ANONYMOUS",
        "NFT_SET_CONSTANT",
        "NFT_SET_MAP",
    }
    slots = anon.get_attr("NFTA_SET_DESC").get_attr("NFTA_SET_DESC_SIZE")
    assert slots == {"rr": 2, "wrr": 4 if key.family == 4 else 3, "sh": 4 if key.family == 4 else 3,
                     "fo": 1}[sched]  # fmt: skip
    elems = msgs[2][1].get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")
    assert len(elems) == slots
    assert elems[0].get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE") == b"\0\0\0\0"
    rule = msgs[3][1]
    names = [e.get_attr("NFTA_EXPR_NAME") for e in rule.get_attr("NFTA_RULE_EXPRESSIONS")]
    head = ["meta", "cmp", "payload", "cmp", "meta", "cmp", "payload", "cmp"]
    assert names == [*head, *EXPRS[sched], "lookup", "nat"]
    nat = rule.get_attr("NFTA_RULE_EXPRESSIONS")[-1].get_attr("NFTA_EXPR_DATA")
    assert nat.get_attr("NFTA_NAT_FAMILY") == (2 if key.family == 4 else 10)
    assert nat.get_attr("NFTA_NAT_REG_PROTO_MIN") == (
        "NFT_REG32_01" if key.family == 4 else "NFT_REG_2"
    )
    assert rule.get_attr("NFTA_RULE_USERDATA") == f"hc svc {key} {sched}"
    by_set = {m.get_attr("NFTA_SET_ELEM_LIST_SET"): m for k, m in msgs[4:]}
    fam = key.family
    assert set(by_set) == {f"weights{fam}", f"svc{fam}", f"rs{fam}"}
    tables = {n: m.get_attr("NFTA_SET_ELEM_LIST_TABLE") for n, m in by_set.items()}
    assert tables == {f"weights{fam}": "hc", f"svc{fam}": r.shard(key), f"rs{fam}": "hc"}
    goto = by_set[f"svc{fam}"].get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")[0]
    verdict = goto.get_attr("NFTA_SET_ELEM_DATA").get_attr("NFTA_DATA_VERDICT")
    assert verdict.get_attr("NFTA_VERDICT_CODE") == "NFT_GOTO"
    assert verdict.get_attr("NFTA_VERDICT_CHAIN") == chain_name(key)
    addr = socket.inet_pton(socket.AF_INET if fam == 4 else socket.AF_INET6, key.address)
    proto = bytes([6 if key.protocol == "tcp" else 17, 0, 0, 0])
    prefix = proto + addr + struct.pack(">H", key.port) + b"\0\0"
    marks = {}
    weights = [m for _k, m in msgs[4:] if m.get_attr("NFTA_SET_ELEM_LIST_SET") == f"weights{fam}"]
    for e in (e for m in weights for e in m.get_attr("NFTA_SET_ELEM_LIST_ELEMENTS")):
        k = e.get_attr("NFTA_SET_ELEM_KEY").get_attr("NFTA_DATA_VALUE")
        assert k.startswith(prefix)
        marks[k[len(prefix) :]] = e.get_attr("NFTA_SET_ELEM_DATA").get_attr("NFTA_DATA_VALUE")
    want = {}
    for a, p, w in RS4 if fam == 4 else RS6:
        raw = socket.inet_pton(socket.AF_INET if fam == 4 else socket.AF_INET6, a)
        want[raw + struct.pack(">H", p) + b"\0\0"] = struct.pack("=I", w)  # mark: host order
    assert marks == want


def test_a_service_going_to_no_destination_and_away() -> None:
    r = NftRenderer("hc", 16)
    base = anchors([V4])  # the service table stays: V4 is not its last service
    old: Table = {**base, V4: ts("wrr", RS4)}
    new: Table = {**base, V4: ts("wrr", [(a, p, 0) for a, p, _w in RS4])}
    msgs = list(decoded(encode(TABLES, delta(r, old, new, [V4], address_refs(old, r)), 1).data))
    kinds = [k for k, _m in msgs]
    assert kinds.count(p2.NFT_MSG_DELSETELEM) == 3  # two weights and the verdict element
    flush = next(m for k, m in msgs if k == p2.NFT_MSG_DELRULE)
    assert flush.get_attr("NFTA_RULE_CHAIN") == chain_name(V4)
    assert flush.get_attr("NFTA_RULE_EXPRESSIONS") is None  # every rule of the chain
    rule = next(m for k, m in msgs if k == p2.NFT_MSG_NEWRULE)
    (ret,) = rule.get_attr("NFTA_RULE_EXPRESSIONS")
    code = ret.get_attr("NFTA_EXPR_DATA").get_attr("NFTA_IMMEDIATE_DATA")
    assert code.get_attr("NFTA_DATA_VERDICT").get_attr("NFTA_VERDICT_CODE") == "NFT_RETURN"
    sets = [m.get_attr("NFTA_SET_ELEM_LIST_SET") for k, m in msgs if k == p2.NFT_MSG_NEWSETELEM]
    assert sorted(sets) == ["nodest4", "weights4", "weights4"]
    gone = list(decoded(encode(TABLES, delta(r, new, base, [V4], address_refs(new, r)), 1).data))
    assert [k for k, _m in gone][-2:] == [p2.NFT_MSG_DELRULE, p2.NFT_MSG_DELCHAIN]
    rs = [m for k, m in gone if m.get_attr("NFTA_SET_ELEM_LIST_SET") == "rs4"]
    assert len(rs) == 2  # both addresses leave the masquerade set


RULE = {"family": "inet", "table": "hc", "chain": "c", "comment": "hc svc x rr"}
ELEM = {"family": "inet", "table": "hc", "name": "rs4"}


@pytest.mark.parametrize(
    "cmd",
    [
        {"add": {"table": {"family": "inet", "name": "hc"}}},
        {"add": {"chain": {"family": "inet", "table": "hc", "name": "c", "type": "nat"}}},
        {"add": {"element": {**ELEM, "table": "other", "elem": ["192.0.2.1"]}}},
        {"add": {"element": {**ELEM, "family": "ip", "elem": ["192.0.2.1"]}}},
        {"add": {"element": {**ELEM, "elem": [{"prefix": 1}]}}},
        {"add": {"element": {**ELEM, "elem": [["192.0.2.1", 1.5]]}}},
        {"add": {"rule": {**RULE, "expr": [{"counter": None}]}}},
        {"add": {"rule": {**RULE, "expr": [{"accept": None}]}}},
        {"replace": {"rule": {**RULE, "expr": [{"return": None}]}}},
        {"add": {"rule": {**RULE, "expr": [{"return": None}], "handle": 3}}},
    ],
)  # fmt: skip
def test_what_the_encoder_does_not_produce_exactly_is_refused(cmd: dict[str, Any]) -> None:
    with pytest.raises(Unencodable):
        encode(TABLES, [cmd], 1)


def test_a_rule_of_another_shape_is_refused() -> None:
    r = NftRenderer("hc", 16)
    (rule,) = r.service_rules(V4, ts("rr", RS4))
    body = rule["rule"]
    for broken in (
        [body["expr"][1], body["expr"][0], body["expr"][2]],  # matches swapped
        [*body["expr"][:2], {"dnat": {"family": "ip", "addr": "192.0.2.1"}}],
        [*body["expr"][:2], {"snat": body["expr"][2]["dnat"]}],
        body["expr"][:2],
    ):
        with pytest.raises(Unencodable):
            encode(TABLES, [{"add": {"rule": {**body, "expr": broken}}}], 1)


def test_a_delta_adding_or_deleting_a_service_table_is_left_to_nft() -> None:
    """A service table's first service adds the table (its base chains, maps and static rules)
    and its last one deletes it: not encoded (the plane sends those through nft). The same
    change in a service table that stays is encoded, on that table and the main one."""
    r = NftRenderer("hc", 16)
    table = r.shard(V4)
    alone: Table = {V4: ts("rr", RS4)}
    born = delta(r, {}, alone, [V4], Refs())
    assert born[0] == {"add": {"table": {"family": "inet", "name": table}}}
    dead = delta(r, alone, {}, [V4], address_refs(alone, r))
    assert dead[-1] == {"delete": {"table": {"family": "inet", "name": table}}}
    for cmds in (born, dead):
        with pytest.raises(Unencodable):
            encode(TABLES, cmds, 1)
    base = anchors([V4])
    for old, new in ((base, {**base, **alone}), ({**base, **alone}, base)):
        cmds = delta(r, old, new, [V4], address_refs(old, r))
        assert not [c for c in cmds if "table" in next(iter(c.values()))]
        msgs = list(decoded(encode(TABLES, cmds, 1).data))
        chains = {m.get_attr("NFTA_CHAIN_TABLE") for k, m in msgs if k == p2.NFT_MSG_NEWCHAIN}
        chains |= {m.get_attr("NFTA_CHAIN_TABLE") for k, m in msgs if k == p2.NFT_MSG_DELCHAIN}
        assert chains == {table}
        elems = {m.get_attr("NFTA_SET_ELEM_LIST_TABLE") for k, m in msgs if k in ELEM_MSGS}
        assert elems == {"hc", table}
    with pytest.raises(TypeError):  # one name is not the tables
        encode("hc", cmds, 1)


ELEM_MSGS = (p2.NFT_MSG_NEWSETELEM, p2.NFT_MSG_DELSETELEM)


def ack(seq: int, error: int = 0, text: str = "") -> bytes:
    """An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK and NETLINK_EXT_ACK."""
    body = struct.pack("=i", -error) + HDR.pack(20, 0xA0C, 5, seq, 0)
    flags = 0x100  # NLM_F_CAPPED
    if text:
        raw = text.encode() + b"\0"
        tlv = struct.pack("=HH", 4 + len(raw), 1) + raw
        body += tlv + b"\0" * (-len(tlv) & 3)
        flags |= 0x200  # NLM_F_ACK_TLVS
    return HDR.pack(HDR.size + len(body), 2, flags, seq, 4242) + body


def test_acks_are_read_with_the_kernels_reason() -> None:
    data = ack(7) + ack(8, errno.ENOENT, "Could not process rule: No such file") + ack(9)
    got = parse_acks(data)
    assert [(a.seq, a.error, a.message) for a in got] == [
        (7, 0, ""), (8, errno.ENOENT, "Could not process rule: No such file"), (9, 0, ""),
    ]  # fmt: skip
    with pytest.raises(ValueError):
        parse_acks(ack(7)[:-4])


class FakeKernel:
    """The other end of the plane's socket: answers each batch as nfnetlink does."""

    def __init__(self, refuse: int | None = None, commit_error: int = 0) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.refuse = refuse  # index (from 0) of the object message to refuse with ENOENT
        self.commit_error = commit_error
        self.batches: list[list[tuple[int, int, int, bytes]]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def open(self, netns: str | None) -> socket.socket:
        return self.ours

    def _serve(self) -> None:
        while data := self.theirs.recv(1 << 20):
            msgs = split(data)
            self.batches.append(msgs)
            objects = [m for m in msgs if m[0] >> 8 == 10]
            if self.commit_error:
                self.theirs.send(ack(msgs[0][2], self.commit_error))
                continue
            out = b""
            for i, (_t, _f, seq, _raw) in enumerate(objects):
                out += ack(
                    seq,
                    errno.ENOENT if i == self.refuse else 0,
                    "no such chain" * (i == self.refuse),
                )
            self.theirs.send(out)


R = NftRenderer("hc", 16)
BASE = anchors([V4])
CMDS = delta(NftRenderer("hc", 16), BASE, {**BASE, V4: ts("rr", RS4)}, [V4], address_refs(BASE, R))


async def test_a_batch_is_done_when_every_message_is_acked() -> None:
    k = FakeKernel()
    nl = NftNetlink(netns=None, limit=5.0, opener=k.open)
    try:
        assert await nl.send(TABLES, CMDS)
        assert await nl.send(TABLES, CMDS)
        assert nl.sent == {"netlink": 2, "fallback": 0}
        first, second = k.batches
        assert first[0][0] == 0x10 and first[-1][0] == 0x11  # BATCH_BEGIN ... BATCH_END
        assert second[0][2] > first[-1][2]  # sequence numbers never reused
    finally:
        nl.close()


async def test_a_refused_message_is_named_in_the_error() -> None:
    k = FakeKernel(refuse=3)
    nl = NftNetlink(netns=None, limit=5.0, opener=k.open)
    try:
        with pytest.raises(DataplaneError) as e:
            await nl.send(TABLES, CMDS)
        text = str(e.value)
        assert (
            f"add rule {chain_name(V4)}" in text and "errno 2" in text and "no such chain" in text
        )
        assert nl.mode == "netlink"  # a kernel error is not a reason to leave the path
    finally:
        nl.close()


async def test_a_failed_commit_is_an_error() -> None:
    k = FakeKernel(commit_error=errno.ENOMEM)
    nl = NftNetlink(netns=None, limit=5.0, opener=k.open)
    try:
        with pytest.raises(DataplaneError, match="commit of the transaction"):
            await nl.send(TABLES, CMDS)
    finally:
        nl.close()


async def test_what_cannot_go_by_netlink_goes_to_nft_logged_once() -> None:
    k = FakeKernel()
    nl = NftNetlink(netns=None, limit=5.0, opener=k.open)
    odd = [{"add": {"rule": {**RULE, "expr": [{"counter": None}]}}}]
    with capture_logs() as logs:
        assert not await nl.send(TABLES, odd)
        assert not await nl.send(TABLES, odd)
        assert await nl.send(TABLES, CMDS)
    falls = [e for e in logs if e["event"] == "dataplane.nftnl_fallback"]
    assert len(falls) == 1 and falls[0]["kind"] == "encoder" and "rule" in falls[0]["reason"]
    assert nl.sent == {"netlink": 1, "fallback": 2} and len(k.batches) == 1
    nl.close()

    def refused(netns: str | None) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    nl = NftNetlink(netns=None, limit=5.0, opener=refused)
    with capture_logs() as logs:
        assert not await nl.send(TABLES, CMDS)
        assert not await nl.send(TABLES, CMDS)
    assert nl.mode == "off"
    falls = [e for e in logs if e["event"] == "dataplane.nftnl_fallback"]
    assert len(falls) == 1 and falls[0]["kind"] == "socket"
    nl.close()


async def test_a_batch_over_the_socket_buffers_goes_to_nft() -> None:
    k = FakeKernel()
    k.ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel doubles it
    nl = NftNetlink(netns=None, limit=5.0, opener=k.open)
    r = NftRenderer("hc", 16)
    many: Table = {ServiceKey("tcp", "192.0.2.10", 1000 + i): ts("wrr", RS4) for i in range(20)}
    base = anchors(list(many))  # so the batch is encoded: it is refused for its size alone
    big = delta(r, base, {**base, **many}, list(many), address_refs(base, r))
    assert len(encode(TABLES, big, 1).data) > 2 * 4096
    with capture_logs() as logs:
        assert not await nl.send(TABLES, big)
        assert await nl.send(TABLES, CMDS)  # a small one still goes
    falls = [e for e in logs if e["event"] == "dataplane.nftnl_fallback"]
    assert len(falls) == 1 and falls[0]["kind"] == "size"
    assert nl.sent == {"netlink": 1, "fallback": 1} and len(k.batches) == 1
    nl.close()


async def test_acks_that_do_not_come_are_an_error_and_a_new_socket_follows() -> None:
    silent = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # never answers
    answering = FakeKernel()
    socks = [silent[0], answering.ours]

    def opener(netns: str | None) -> socket.socket:
        return socks.pop(0)

    nl = NftNetlink(netns=None, limit=0.3, opener=opener)
    try:
        with pytest.raises(DataplaneError, match="netlink batch timed out"):
            await nl.send(TABLES, CMDS)
        assert nl.mode == "netlink"
        assert await nl.send(TABLES, CMDS)  # on a new socket (and thread)
        assert socks == [] and len(answering.batches) == 1
    finally:
        nl.close()
        silent[1].close()
