"""Pure rendering of the connection hand-off table (nftables JSON; no I/O, no asyncio).

Why: with the nftables data plane the NAT state of a connection lives in the conntrack table of
the director that saw its SYN. When the VIP group moves (planned handover, preemption), packets of
connections in flight reach the new active, which has no conntrack entry for them: the client's
segments are picked up mid-stream and DNATed to some real server, or delivered to the (now local)
VIP where no socket answers them but a reset, and the real servers' replies are masqueraded to
the director's own address instead of un-NATed (the client resets them). For a drain period
after it takes the VIPs from a live peer, the new active sends such packets to the peer, which
still holds their state and keeps forwarding them.

``HandoffRules.render(via)`` is the batch that replaces ``table ip <name>`` (and ``table ip6
<name>`` with IPv6 services) atomically (``dup`` exists in the ip and ip6 families only):

* sets ``svc`` (``vip . l4proto . port`` of every service) and ``rs`` (``address . l4proto .
  port`` of every real server and sorry server) of the table's family;
* chain ``pre`` (filter prerouting, priority -150: after the conntrack lookup, before NAT and
  routing). While draining (``via`` names the peer's address per IP family) a packet to a
  service or from a real server's service port that belongs to no local connection is copied to
  the peer (``dup to <peer>``: the copy leaves untracked, unchanged, to the peer's MAC, its TTL
  lowered) and the original dropped. "No local connection" is what conntrack says: ``invalid``
  (a SYN-ACK, FIN or RST of a connection it never saw), or ``new`` for a TCP segment without SYN
  (a mid-stream pick-up) or a UDP datagram from a real server's service port. Such a pick-up is
  dropped before it is confirmed, so it leaves no entry behind. ``ip ttl > 1`` bounds any loop.
  Not draining: the chain is empty.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]
CHAIN = ("pre", "filter", "prerouting", -150)  # name, type, hook, priority
FAMILIES = {4: ("ip", "ipv4_addr", "ttl"), 6: ("ip6", "ipv6_addr", "hoplimit")}

Triple = tuple[str, str, int]  # (address, "tcp" | "udp", port)


@dataclass(frozen=True)
class HandoffRules:
    """The hand-off tables for a set of services (``svc``) and real servers (``rs``)."""

    table_name: str
    svc: frozenset[Triple]
    rs: frozenset[Triple]

    @classmethod
    def of(cls, table_name: str, svc: Iterable[Triple], rs: Iterable[Triple]) -> HandoffRules:
        return cls(table_name, frozenset(svc), frozenset(rs))

    def families(self) -> list[int]:
        """The IP families (4, 6) that have at least one service."""
        return sorted({_family(a) for a, _, _ in self.svc})

    def _ident(self, fam: int) -> Json:
        return {"family": FAMILIES[fam][0], "name": self.table_name}

    def _obj(self, fam: int, kind: str, **fields: Any) -> Json:
        return {kind: {"family": FAMILIES[fam][0], "table": self.table_name, **fields}}

    def _rule(self, fam: int, expr: list[Json], comment: str) -> Json:
        return self._obj(fam, "rule", chain=CHAIN[0], expr=expr, comment=comment)

    def _sets(self, fam: int) -> list[Json]:
        out = []
        for name, items in (("svc", self.svc), ("rs", self.rs)):
            elems = sorted(t for t in items if _family(t[0]) == fam)
            fields: Json = {"name": name, "type": [FAMILIES[fam][1], "inet_proto", "inet_service"]}
            if elems:
                fields["elem"] = [{"concat": [a, p, n]} for a, p, n in elems]
            out.append(self._obj(fam, "set", **fields))
        return out

    def _drain_rules(self, fam: int, peer: str) -> list[Json]:
        ipf, _, ttl_field = FAMILIES[fam]
        ttl = _cmp({"payload": {"protocol": ipf, "field": ttl_field}}, 1, op=">")
        to_svc = _in_set(ipf, "daddr", "dport", "svc")
        from_rs = _in_set(ipf, "saddr", "sport", "rs")
        invalid = _cmp({"ct": {"key": "state"}}, "invalid", op="in")
        new = _cmp({"ct": {"key": "state"}}, "new", op="in")
        tcp = _cmp({"meta": {"key": "l4proto"}}, "tcp")
        udp = _cmp({"meta": {"key": "l4proto"}}, "udp")
        no_syn = _cmp({"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, "syn"]}, 0)
        send: list[Json] = [{"dup": {"addr": peer}}, {"drop": None}]
        out = []
        for where, match in (("to a service", to_svc), ("from a real server", from_rs)):
            out.append(self._rule(fam, [ttl, invalid, match, *send], f"hc handoff invalid {where}"))
            out.append(self._rule(fam, [ttl, new, tcp, no_syn, match, *send],
                                  f"hc handoff mid-stream {where}"))  # fmt: skip
        out.append(self._rule(fam, [ttl, new, udp, from_rs, *send],
                              "hc handoff udp reply from a real server"))  # fmt: skip
        return out

    def render(self, via: dict[int, str] | None = None) -> Json:
        """The nft JSON batch replacing the hand-off tables; ``via`` (IP family -> the peer's
        address) drains: flows unknown here go there. None or empty: not draining."""
        batch: list[Json] = []
        name, ctype, hook, prio = CHAIN
        for fam in self.families():
            ident = self._ident(fam)
            batch += [{"add": {"table": ident}}, {"delete": {"table": ident}}]
            objs = [{"table": ident}]
            objs.append(self._obj(fam, "chain", name=name, type=ctype, hook=hook, prio=prio,
                                  policy="accept"))  # fmt: skip
            objs += self._sets(fam)
            peer = (via or {}).get(fam)
            if peer is not None:
                objs += self._drain_rules(fam, peer)
            batch += [{"add": o} for o in objs]
        return {"nftables": batch}

    def remove(self) -> Json:
        """The batch deleting the tables (absent or not)."""
        batch: list[Json] = []
        for fam in FAMILIES:
            ident = self._ident(fam)
            batch += [{"add": {"table": ident}}, {"delete": {"table": ident}}]
        return {"nftables": batch}


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def _cmp(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _in_set(ipf: str, addr_field: str, port_field: str, set_name: str) -> Json:
    key = {
        "concat": [
            {"payload": {"protocol": ipf, "field": addr_field}},
            {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": port_field}},
        ]
    }
    return _cmp(key, f"@{set_name}")
