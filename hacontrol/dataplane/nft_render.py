"""Pure rendering of hacontrol's nftables tables (no I/O, no asyncio).

``NftRenderer`` turns a desired ``Table`` into the nft JSON batch that replaces our tables
atomically; its ``parse`` reads ``nft -j list ruleset inet`` back into a ``Table``, flagging
hand-edited services, through ``hacontrol.dataplane.nft_readback`` (which owns the listing side:
the service comment, canonical rules and elements, nft's printed forms).
``hacontrol.dataplane.nft.NftDataplane`` runs nft with what this renders.

Layout: a main ``table inet <name>`` and, past 64 services, service tables ``<name>_<i>of<n>``
(``hacontrol.dataplane.nft_shards``: which table holds a service, and why; with one, the
service objects below are in the main table itself). A service table exists only while it holds
a service (a delta adds it with its first and deletes it with its last).

* each service table has base chains ``dnat_pre`` (nat prerouting, dstnat) and ``dnat_out`` (nat
  output, so a client on the director works) holding one static rule per family: ``meta l4proto
  . ip daddr . th dport vmap @svc4`` (``@svc6``). The verdict map has one element per service of
  the table with a weight > 0 destination: ``tcp . VIP . P : goto s4_<id>``. A new flow passes
  the dnat chains of the service tables in turn until one NATs it (one hash lookup each).
* one regular chain per service (``s4_<proto>_<hex address>_<port>``), in its service table,
  holding its rule, commented
  ``hc svc <key> <scheduler>``: ``ip daddr VIP tcp dport P dnat ip to <key> map {slot: addr .
  port}``. rr: one slot per destination; wrr (and every other scheduler, approximated, warned
  once): slots repeat each destination by its weight (divided by the gcd, capped at MAX_SLOTS) in
  smooth weighted round-robin order, key ``numgen inc``; sh/mh: the same slots keyed by ``jhash
  ip saddr``; fo: the highest weight destination only. A service without a usable destination has
  a ``return`` rule there (it only carries the comment) and an element in ``nodest4``/``nodest6``
  (main table).
  Weight-0 destinations get no new flows (established ones keep going: NAT chains only see new
  flows). The slot map is in the rule because numgen's modulus is: a change of a service's slots
  rewrites that one rule (flush its chain, add the rule), nothing else.
The main table holds what is not one service's:
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
from collections.abc import Iterable
from typing import Any

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft_readback import read_table, service_comment
from hacontrol.dataplane.nft_shards import Layout
from hacontrol.dataplane.nft_slots import slots_for
from hacontrol.dataplane.table import ServiceKey, Table, TableService

Json = dict[str, Any]
FAMILY = "inet"
EXACT = {"rr", "wrr", "sh", "mh", "fo"}
MAIN_CHAINS = {  # name: (type, hook, priority)
    "snat_post": ("nat", "postrouting", 100),
    "filter_in": ("filter", "input", 0),
    "filter_fwd": ("filter", "forward", 0),
    "filter_out": ("filter", "output", 0),
}
SHARD_CHAINS = {"dnat_pre": ("nat", "prerouting", -100), "dnat_out": ("nat", "output", -100)}
WEIGHT_MAPS = {4: ("weights4", "ipv4_addr"), 6: ("weights6", "ipv6_addr")}


def _ipfam(family: int) -> str:
    return "ip" if family == 4 else "ip6"


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



def _svc_type(addr_type: str) -> list[str]:
    """The type of a set keyed by service: ``inet_proto . <addr_type> . inet_service``."""
    return ["inet_proto", addr_type, "inet_service"]


def _elem_key(key: ServiceKey) -> Json:
    return {"concat": [key.protocol, key.address, key.port]}


SetId = tuple[str, str]  # (table, set or map name)


class NftRenderer:
    """Renders and parses our ``inet`` tables (the main one, named ``table_name``, and its
    ``count`` service tables); pure, so it needs no root and no nft binary."""

    def __init__(self, table_name: str = "hacontrol", count: int = 1) -> None:
        self.table_name = table_name
        self.layout = Layout(table_name, count)

    @property
    def count(self) -> int:
        return self.layout.count

    def recount(self, count: int) -> NftRenderer:
        """The same tables with ``count`` service tables."""
        return NftRenderer(self.table_name, count)

    # -- where things are -----------------------------------------------------------------------

    def shard(self, key: ServiceKey) -> str:
        """The table holding ``key``'s chain, rule and verdict element."""
        return self.layout.shard(key)

    def shards(self, keys: Iterable[ServiceKey]) -> set[str]:
        """The tables holding the services ``keys`` (the main one when there is one)."""
        return {self.layout.shard(k) for k in keys}

    def tables(self) -> list[str]:
        """Every table name of ours, whatever the count, the main one first."""
        return self.layout.every_name()

    def owns(self, table: str) -> bool:
        return self.layout.parse(table) is not None

    def count_of(self, table: str) -> int | None:
        """How many service tables the name of one of ours says there are (1: the main one);
        None when it is not ours."""
        return self.layout.parse(table)

    # -- rendering ------------------------------------------------------------------------------

    def _obj(self, kind: str, table: str, **fields: Any) -> Json:
        return {kind: {"family": FAMILY, "table": table, **fields}}

    def _rule(self, table: str, chain: str, expr: list[Json], comment: str) -> Json:
        return self._obj("rule", table, chain=chain, expr=expr, comment=comment)

    def element(self, where: SetId, elems: list[Any]) -> Json:
        """An ``element`` object (for add / delete commands) of set ``where``."""
        return self._obj("element", where[0], name=where[1], elem=elems)

    def service_chain(self, key: ServiceKey) -> Json:
        return self._obj("chain", self.shard(key), name=chain_name(key))

    def service_rules(self, key: ServiceKey, svc: TableService) -> list[Json]:
        """The rule of the service's own chain."""
        fam = _ipfam(key.family)
        kind, slots = slots_for(svc.spec, svc.dests)
        comment = service_comment(key, svc.spec)
        chain, table = chain_name(key), self.shard(key)
        if not slots:
            return [self._rule(table, chain, [{"return": None}], comment)]
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
        return [self._rule(table, chain, [*_service_match(key), dnat], comment)]

    def service_elements(self, key: ServiceKey, svc: TableService) -> dict[SetId, list[Any]]:
        """The service's elements, per set or map (not ``rs4``/``rs6``: shared)."""
        fam = key.family
        weights = [
            [{"concat": [key.protocol, key.address, key.port, d.address, d.port]}, s.weight]
            for d, s in sorted(svc.dests.items())
        ]
        out: dict[SetId, list[Any]] = {(self.table_name, WEIGHT_MAPS[fam][0]): weights}
        if slots_for(svc.spec, svc.dests)[1]:
            goto = {"goto": {"target": chain_name(key)}}
            out[(self.shard(key), f"svc{fam}")] = [[_elem_key(key), goto]]
        else:
            out[(self.table_name, f"nodest{fam}")] = [_elem_key(key)]
        return out

    def shared_elements(self, table: Table) -> dict[SetId, list[Any]]:
        """The elements services share: every destination address per family (``rs4``/``rs6``)."""
        return {
            (self.table_name, f"rs{family}"): sorted(addrs)
            for family, addrs in rs_addresses(table).items()
        }

    def renders(self, key: ServiceKey, svc: TableService) -> bool:
        """Can nftables do this service (``check`` passes)?"""
        try:
            check({key: svc})
        except DataplaneError:
            return False
        return True

    def global_rules(self, shards: Iterable[str]) -> list[Json]:
        """The static rules of the main table's chains and of the service tables ``shards``
        (they name sets, not elements)."""
        main = self.table_name
        rules = [
            self._rule(main, c, [{"jump": {"target": "no_dest"}}], "hc jump")
            for c in ("filter_in", "filter_fwd", "filter_out")
        ]
        for family in (4, 6):
            fam = _ipfam(family)
            daddr = {"payload": {"protocol": fam, "field": "daddr"}}
            concat = [{"meta": {"key": "l4proto"}}, daddr]
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
                comment = f"hc nodest {proto} {fam}"
                rules.append(self._rule(main, "no_dest", [match, verdict], comment))
            not_dnat = {
                "match": {
                    "op": "!=",
                    "left": {"&": [{"ct": {"key": "status"}}, "dnat"]},
                    "right": "dnat",
                }
            }
            masq = [_match(fam, "saddr", f"@rs{family}"), not_dnat, {"masquerade": None}]
            rules.append(self._rule(main, "snat_post", masq, f"hc masquerade {fam}"))
        for shard in sorted(shards):
            rules += self.shard_rules(shard)
        return rules

    def shard_rules(self, shard: str) -> list[Json]:
        """The static rules of one service table: the verdict map lookups."""
        rules = []
        for family in (4, 6):
            fam = _ipfam(family)
            daddr = {"payload": {"protocol": fam, "field": "daddr"}}
            dport = {"payload": {"protocol": "th", "field": "dport"}}
            key = {"concat": [{"meta": {"key": "l4proto"}}, daddr, dport]}
            vmap = {"vmap": {"key": key, "data": f"@svc{family}"}}
            for chain in SHARD_CHAINS:
                rules.append(self._rule(shard, chain, [vmap], f"hc vmap {fam}"))
        return rules

    def chains(self, shards: Iterable[str]) -> list[Json]:
        """The main table's chains and the base chains of the service tables ``shards``."""
        out = self._base_chains(self.table_name, MAIN_CHAINS)
        out.append(self._obj("chain", self.table_name, name="no_dest"))
        for shard in sorted(shards):
            out += self.shard_chains(shard)
        return out

    def shard_chains(self, shard: str) -> list[Json]:
        return self._base_chains(shard, SHARD_CHAINS)

    def _base_chains(self, table: str, chains: dict[str, tuple[str, str, int]]) -> list[Json]:
        return [
            self._obj("chain", table, name=name, type=t, hook=h, prio=p, policy="accept")
            for name, (t, h, p) in chains.items()
        ]

    def shard_sets(self, shard: str, elems: dict[SetId, list[Any]] | None = None) -> list[Json]:
        """The verdict maps of one service table, with their elements in ``elems``."""
        out = []
        for family, (_w, addr_type) in WEIGHT_MAPS.items():
            obj: Json = {"name": f"svc{family}", "map": "verdict", "type": _svc_type(addr_type)}
            if elems and elems.get((shard, obj["name"])):
                obj["elem"] = elems[(shard, obj["name"])]
            out.append(self._obj("map", shard, **obj))
        return out

    def shard_objects(self, shard: str) -> list[Json]:
        """Everything a service table holds but its services' chains, rules and elements: the
        ``add`` objects creating it (the table first)."""
        ident = {"table": {"family": FAMILY, "name": shard}}
        return [ident, *self.shard_chains(shard), *self.shard_sets(shard), *self.shard_rules(shard)]

    def sets(self, table: Table) -> list[Json]:
        """Every named set and map of the main table and of the table's service tables, with the
        table's elements."""
        elems = self.all_elements(table)
        out = []
        for family, (wname, addr_type) in WEIGHT_MAPS.items():
            svc_type = _svc_type(addr_type)
            for name, fields in (
                (wname, {"map": "mark", "type": [*svc_type, addr_type, "inet_service"]}),
                (f"nodest{family}", {"type": svc_type}),
                (f"rs{family}", {"type": addr_type}),
            ):
                obj: Json = {"name": name, **fields}
                if elems.get((self.table_name, name)):
                    obj["elem"] = elems[(self.table_name, name)]
                out.append(self._obj("map" if "map" in fields else "set", self.table_name, **obj))
        for shard in sorted(self.shards(table)):
            out += self.shard_sets(shard, elems)
        return out

    def all_elements(self, table: Table) -> dict[SetId, list[Any]]:
        elems: dict[SetId, list[Any]] = {}
        for key, svc in sorted(table.items()):
            for where, items in self.service_elements(key, svc).items():
                elems.setdefault(where, []).extend(items)
        elems.update(self.shared_elements(table))
        return elems

    def render(self, table: Table) -> Json:
        """The nft JSON batch replacing our tables with ``table`` (deleting them all when it is
        empty, and every service table it has no service in)."""
        check(table)
        batch: list[Json] = []
        for name in self.tables():
            ident = {"family": FAMILY, "name": name}
            batch += [{"add": {"table": ident}}, {"delete": {"table": ident}}]
        if table:
            shards = sorted(self.shards(table))
            objs: list[Json] = [{"table": {"family": FAMILY, "name": self.table_name}}]
            objs += self.chains(())
            for shard in shards:
                if shard != self.table_name:
                    objs.append({"table": {"family": FAMILY, "name": shard}})
                objs += self.shard_chains(shard)
            objs += [self.service_chain(k) for k in sorted(table)]
            objs += self.sets(table)
            for key, svc in sorted(table.items()):
                objs += self.service_rules(key, svc)
            objs += self.global_rules(shards)
            batch += [{"add": o} for o in objs]
        return {"nftables": batch}

    def parse(self, doc: Json) -> Table:
        """Our tables as listed by ``nft -j list ruleset inet`` -> Table
        (``nft_readback.read_table``)."""
        return read_table(doc, self)[0]

    def parse_layout(self, doc: Json) -> tuple[Table, int]:
        """``parse``, and the number of service tables the listing's services are in."""
        return read_table(doc, self)


def rs_addresses(table: Table) -> dict[int, set[str]]:
    """Every destination address per family (the masquerade sets)."""
    out: dict[int, set[str]] = {4: set(), 6: set()}
    for key, svc in table.items():
        out[key.family].update(d.address for d in svc.dests)
    return out
