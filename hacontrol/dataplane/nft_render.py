"""Pure rendering of hacontrol's nftables table (no I/O, no asyncio).

``NftRenderer`` turns a desired ``Table`` into the nft JSON batch that replaces our table
atomically; its ``parse`` reads ``nft -j list table`` back into a ``Table``, flagging hand-edited
services, through ``hacontrol.dataplane.nft_readback`` (which owns the listing side: the service
comment, canonical rules and elements, nft's printed forms).
``hacontrol.dataplane.nft.NftDataplane`` runs nft with what this renders.

Layout of ``table inet <name>`` (made so that one service's change touches only that service's
objects: ``hacontrol.dataplane.nft_delta`` renders such a change as a few commands):

* base chains ``dnat_pre`` (nat prerouting, dstnat) and ``dnat_out`` (nat output, so a client on
  the director works) hold one static rule per family: ``meta l4proto . ip daddr . th dport vmap
  @svc4`` (``@svc6``). The verdict map has one element per service with a weight > 0
  destination: ``tcp . VIP . P : goto s4_<id>``.
* one regular chain per service (``s4_<proto>_<hex address>_<port>``) holding its rule, commented
  ``hc svc <key> <scheduler>``: ``ip daddr VIP tcp dport P dnat ip to <key> map {slot: addr .
  port}``. rr: one slot per destination; wrr (and every other scheduler, approximated, warned
  once): slots repeat each destination by its weight (divided by the gcd, capped at MAX_SLOTS) in
  smooth weighted round-robin order, key ``numgen inc``; sh/mh: the same slots keyed by ``jhash
  ip saddr``; fo: the highest weight destination only. A service without a usable destination has
  a ``return`` rule there (it only carries the comment) and an element in ``nodest4``/``nodest6``.
  Weight-0 destinations get no new flows (established ones keep going: NAT chains only see new
  flows). The slot map is in the rule because numgen's modulus is: a change of a service's slots
  rewrites that one rule (flush its chain, add the rule), nothing else.
* ``no_dest``, jumped to from filter input/forward/output: static rules rejecting new connections
  (tcp reset / port unreachable) to the services of the ``nodest`` sets, instead of letting them
  reach the director's own sockets.
* ``snat_post``: masquerade the real servers' own outbound traffic (``ip saddr @rs4``, ``ct status
  & dnat == 0``), as an LVS-NAT director does; ``rs4``/``rs6`` hold every destination address.
* maps ``weights4`` / ``weights6`` (``proto . vip . port . rs . rsport : weight``) and each service
  rule's comment hold the exact table, so ``snapshot()`` reads it back; the snapshot then re-renders
  what it read and compares it with the live rules and elements: a service whose rules or elements
  were edited by hand comes back with scheduler ``altered:<scheduler>`` (``nft_readback``).
  dr/tunnel forwarding and persistence are refused (DataplaneError naming the service): they
  need IPVS.
"""

from __future__ import annotations

import ipaddress
import math
from functools import reduce
from typing import Any

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft_readback import read_table, service_comment
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)

Json = dict[str, Any]
FAMILY = "inet"
MAX_SLOTS = 256
EXACT = {"rr", "wrr", "sh", "mh", "fo"}
NAT_CHAINS = {  # name: (type, hook, priority)
    "dnat_pre": ("nat", "prerouting", -100),
    "dnat_out": ("nat", "output", -100),
    "snat_post": ("nat", "postrouting", 100),
    "filter_in": ("filter", "input", 0),
    "filter_fwd": ("filter", "forward", 0),
    "filter_out": ("filter", "output", 0),
}
WEIGHT_MAPS = {4: ("weights4", "ipv4_addr"), 6: ("weights6", "ipv6_addr")}


def _ipfam(family: int) -> str:
    return "ip" if family == 4 else "ip6"


def smooth_slots(weights: dict[DestKey, int]) -> list[DestKey]:
    """Slots for weighted round-robin: each dest repeated by its (reduced) weight, interleaved
    like nginx's smooth WRR so consecutive new flows spread out."""
    live = {k: w for k, w in sorted(weights.items()) if w > 0}
    if not live:
        return []
    g = reduce(math.gcd, live.values())
    red = {k: w // g for k, w in live.items()}
    total = sum(red.values())
    if total > MAX_SLOTS:
        red = {k: max(1, round(w * MAX_SLOTS / total)) for k, w in red.items()}
        total = sum(red.values())
    keys, weights_ = list(red), list(red.values())
    current = [0] * len(keys)
    out: list[DestKey] = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights_):
            current[i] += w
            if current[i] > current[best]:  # ties: the first (lowest) key wins
                best = i
        current[best] -= total
        out.append(keys[best])
    return out


def slots_for(spec: ServiceSpec, dests: dict[DestKey, DestSpec]) -> tuple[str, list[DestKey]]:
    """(key kind "numgen" | "jhash", slot list) for a service's new flows."""
    weights = {k: d.weight for k, d in dests.items()}
    if spec.scheduler == "rr":
        return "numgen", [k for k in sorted(weights) if weights[k] > 0]
    if spec.scheduler == "fo":
        live = sorted((k for k in weights if weights[k] > 0), key=lambda k: (-weights[k], k))
        return "numgen", live[:1]
    kind = "jhash" if spec.scheduler in ("sh", "mh") else "numgen"
    return kind, smooth_slots(weights)


def _match(proto: str, field: str, right: Any, op: str = "==") -> Json:
    return {
        "match": {
            "op": op,
            "left": {"payload": {"protocol": proto, "field": field}},
            "right": right,
        }
    }


def _service_match(key: ServiceKey) -> list[Json]:
    return [
        _match(_ipfam(key.family), "daddr", key.address),
        _match(key.protocol, "dport", key.port),
    ]



def check(table: Table) -> None:
    """Refuse what nftables cannot do, naming the service."""
    for key, svc in sorted(table.items()):
        if svc.spec.persistence > 0:
            raise DataplaneError(
                f"nftables: service {key}: persistence {svc.spec.persistence}s is not supported "
                "(needs IPVS)"
            )
        for dk, ds in sorted(svc.dests.items()):
            if ds.forwarding != "nat":
                raise DataplaneError(
                    f"nftables: service {key}: destination {dk} forwarding {ds.forwarding} is not "
                    "supported (only nat; dr/tunnel need IPVS)"
                )
            if (":" in dk.address) != (key.family == 6):
                raise DataplaneError(
                    f"nftables: service {key}: destination {dk} is of another address family"
                )


def chain_name(key: ServiceKey) -> str:
    """The regular chain of one service: ``s4_tcp_c6336401_80`` (address as hex: nft names
    take no colons)."""
    packed = ipaddress.ip_address(key.address).packed.hex()
    return f"s{key.family}_{key.protocol}_{packed}_{key.port}"



def _elem_key(key: ServiceKey) -> Json:
    return {"concat": [key.protocol, key.address, key.port]}


class NftRenderer:
    """Renders and parses one named ``inet`` table; pure, so it needs no root and no nft binary."""

    def __init__(self, table_name: str = "hacontrol") -> None:
        self.table_name = table_name

    # -- rendering ------------------------------------------------------------------------------

    def _obj(self, kind: str, **fields: Any) -> Json:
        return {kind: {"family": FAMILY, "table": self.table_name, **fields}}

    def _rule(self, chain: str, expr: list[Json], comment: str) -> Json:
        return self._obj("rule", chain=chain, expr=expr, comment=comment)

    def element(self, name: str, elems: list[Any]) -> Json:
        """An ``element`` object (for add / delete commands)."""
        return self._obj("element", name=name, elem=elems)

    def service_chain(self, key: ServiceKey) -> Json:
        return self._obj("chain", name=chain_name(key))

    def service_rules(self, key: ServiceKey, svc: TableService) -> list[Json]:
        """The rule of the service's own chain."""
        fam = _ipfam(key.family)
        kind, slots = slots_for(svc.spec, svc.dests)
        comment = service_comment(key, svc.spec)
        chain = chain_name(key)
        if not slots:
            return [self._rule(chain, [{"return": None}], comment)]
        if kind == "jhash":
            hkey: Json = {
                "jhash": {
                    "mod": len(slots),
                    "expr": {"payload": {"protocol": fam, "field": "saddr"}},
                }
            }
        else:
            hkey = {"numgen": {"mode": "inc", "mod": len(slots), "offset": 0}}
        data = [[i, {"concat": [d.address, d.port]}] for i, d in enumerate(slots)]
        dnat = {"dnat": {"family": fam, "addr": {"map": {"key": hkey, "data": {"set": data}}}}}
        return [self._rule(chain, [*_service_match(key), dnat], comment)]

    def service_elements(self, key: ServiceKey, svc: TableService) -> dict[str, list[Any]]:
        """The service's elements, per set or map name (not ``rs4``/``rs6``: shared)."""
        fam = key.family
        weights = [
            [{"concat": [key.protocol, key.address, key.port, d.address, d.port]}, s.weight]
            for d, s in sorted(svc.dests.items())
        ]
        out: dict[str, list[Any]] = {WEIGHT_MAPS[fam][0]: weights}
        if slots_for(svc.spec, svc.dests)[1]:
            out[f"svc{fam}"] = [[_elem_key(key), {"goto": {"target": chain_name(key)}}]]
        else:
            out[f"nodest{fam}"] = [_elem_key(key)]
        return out

    def shared_elements(self, table: Table) -> dict[str, list[Any]]:
        """The elements services share: every destination address per family (``rs4``/``rs6``)."""
        return {f"rs{family}": sorted(addrs) for family, addrs in rs_addresses(table).items()}

    def renders(self, key: ServiceKey, svc: TableService) -> bool:
        """Can nftables do this service (``check`` passes)?"""
        try:
            check({key: svc})
        except DataplaneError:
            return False
        return True

    def global_rules(self) -> list[Json]:
        """The static rules of the base chains and ``no_dest`` (they name sets, not elements)."""
        rules = [
            self._rule(c, [{"jump": {"target": "no_dest"}}], "hc jump")
            for c in ("filter_in", "filter_fwd", "filter_out")
        ]
        for family in (4, 6):
            fam = _ipfam(family)
            daddr = {"payload": {"protocol": fam, "field": "daddr"}}
            concat = [{"meta": {"key": "l4proto"}}, daddr]
            vmap = {
                "vmap": {
                    "key": {"concat": [*concat, {"payload": {"protocol": "th", "field": "dport"}}]},
                    "data": f"@svc{family}",
                }
            }
            for chain in ("dnat_pre", "dnat_out"):
                rules.append(self._rule(chain, [vmap], f"hc vmap {fam}"))
            icmp = "icmp" if family == 4 else "icmpv6"
            rejects: list[tuple[str, Json]] = [
                ("tcp", {"reject": {"type": "tcp reset"}}),
                ("udp", {"reject": {"type": icmp, "expr": "port-unreachable"}}),
            ]
            for proto, verdict in rejects:
                port = {"payload": {"protocol": proto, "field": "dport"}}
                match = {
                    "match": {
                        "op": "==",
                        "left": {"concat": [*concat, port]},
                        "right": f"@nodest{family}",
                    }
                }
                rules.append(self._rule("no_dest", [match, verdict], f"hc nodest {proto} {fam}"))
            not_dnat = {
                "match": {
                    "op": "!=",
                    "left": {"&": [{"ct": {"key": "status"}}, "dnat"]},
                    "right": "dnat",
                }
            }
            rules.append(
                self._rule(
                    "snat_post",
                    [_match(fam, "saddr", f"@rs{family}"), not_dnat, {"masquerade": None}],
                    f"hc masquerade {fam}",
                )
            )
        return rules

    def chains(self) -> list[Json]:
        out = [
            self._obj("chain", name=name, type=t, hook=h, prio=p, policy="accept")
            for name, (t, h, p) in NAT_CHAINS.items()
        ]
        return [*out, self._obj("chain", name="no_dest")]

    def sets(self, table: Table) -> list[Json]:
        """Every named set and map, with the table's elements."""
        elems: dict[str, list[Any]] = {}
        for key, svc in sorted(table.items()):
            for name, items in self.service_elements(key, svc).items():
                elems.setdefault(name, []).extend(items)
        elems.update(self.shared_elements(table))
        out = []
        for family, (wname, addr_type) in WEIGHT_MAPS.items():
            svc_type = ["inet_proto", addr_type, "inet_service"]
            for name, fields in (
                (wname, {"map": "mark", "type": [*svc_type, addr_type, "inet_service"]}),
                (f"svc{family}", {"map": "verdict", "type": svc_type}),
                (f"nodest{family}", {"type": svc_type}),
                (f"rs{family}", {"type": addr_type}),
            ):
                obj: Json = {"name": name, **fields}
                if elems.get(name):
                    obj["elem"] = elems[name]
                out.append(self._obj("map" if "map" in fields else "set", **obj))
        return out

    def render(self, table: Table) -> Json:
        """The nft JSON batch replacing our table with ``table`` (deleting it when empty)."""
        check(table)
        ident = {"family": FAMILY, "name": self.table_name}
        batch: list[Json] = [{"add": {"table": ident}}, {"delete": {"table": ident}}]
        if table:
            batch.append({"add": {"table": ident}})
            objs = [*self.chains(), *(self.service_chain(k) for k in sorted(table))]
            objs += self.sets(table)
            for key, svc in sorted(table.items()):
                objs += self.service_rules(key, svc)
            objs += self.global_rules()
            batch += [{"add": o} for o in objs]
        return {"nftables": batch}

    def parse(self, doc: Json) -> Table:
        """Our table as listed by ``nft -j list table`` -> Table (``nft_readback.read_table``)."""
        return read_table(doc, self)


def rs_addresses(table: Table) -> dict[int, set[str]]:
    """Every destination address per family (the masquerade sets)."""
    out: dict[int, set[str]] = {4: set(), 6: set()}
    for key, svc in table.items():
        out[key.family].update(d.address for d in svc.dests)
    return out
