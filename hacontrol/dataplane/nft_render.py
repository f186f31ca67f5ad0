"""Pure rendering and reading back of hacontrol's nftables table (no I/O, no asyncio).

``NftRenderer`` turns a desired ``Table`` into the nft JSON batch that replaces our table
atomically, and parses ``nft -j list table`` back into a ``Table``, flagging hand-edited services.
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
  were edited by hand comes back with scheduler ``altered:<scheduler>``, so the reconciler sees a
  difference and the next apply repairs it (``nft flush ruleset`` or deleting the table reads back
  as empty). dr/tunnel forwarding and persistence are refused (DataplaneError naming the service):
  they need IPVS.

Reading back never depends on /etc/protocols or /etc/services (a minimal Debian root or a container
has neither): nft prints a protocol by name only when /etc/protocols names it, else by number, and
a port by name only with ``-S``; ``read_proto`` and ``read_port`` take both forms, and the dataplane
asks for numbers anyway (``nft -p``). A port printed by name is looked up in the services database
nft itself read it from (the only lookup here; numbers need none).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import socket
from functools import reduce
from typing import Any, get_args

from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.table import (
    PROTO_NAME,
    PROTO_NUM,
    DestKey,
    DestSpec,
    Proto,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)

Json = dict[str, Any]
FAMILY = "inet"
MAX_SLOTS = 256
ALTERED = "altered:"
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
PORT_FIELDS = ("sport", "dport")  # payload fields whose values nft may print by service name


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


def _comment(key: ServiceKey, spec: ServiceSpec) -> str:
    return f"hc svc {key} {spec.scheduler}"


def read_proto(value: Any) -> Proto:
    """A service's protocol as nft prints it: a name (``"tcp"``, when /etc/protocols has it) or a
    number (``6``: with ``-p`` or without /etc/protocols) -> ``"tcp"`` / ``"udp"``."""
    if isinstance(value, str) and value in PROTO_NUM:
        return PROTO_NAME[PROTO_NUM[value]]
    if isinstance(value, int | str) and not isinstance(value, bool) and str(value).isdigit():
        name = PROTO_NAME.get(int(value))
        if name is not None:
            return name
    raise ValueError(f"not the protocol of a service: {value!r}")


def read_port(value: Any) -> int:
    """A port as nft prints it: a number (the default), or a service name (only with ``nft -S``,
    which resolved it from /etc/services, so the same lookup succeeds here)."""
    if isinstance(value, int) and not isinstance(value, bool):
        port = value
    elif isinstance(value, str) and value.isdigit():
        port = int(value)
    elif isinstance(value, str) and value:
        try:
            port = socket.getservbyname(value)
        except OSError:
            raise ValueError(f"unknown service name {value!r}") from None
    else:
        raise ValueError(f"not a port: {value!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {value!r}")
    return port


def parse_key(text: str) -> ServiceKey:
    proto, _, rest = text.partition("/")
    host, _, port = rest.rpartition(":")
    if proto not in get_args(Proto) or not host or not port.isdigit():
        raise ValueError(f"not a service key: {text!r}")
    return ServiceKey(proto, host.strip("[]"), int(port))  # type: ignore[arg-type]


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


def read_elem_key(value: Any) -> ServiceKey:
    """A ``proto . address . port`` element key as nft lists it -> ServiceKey."""
    proto, addr, port = value["concat"]
    return ServiceKey(read_proto(proto), str(addr), read_port(port))


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
        comment = _comment(key, svc.spec)
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
        for family, addrs in rs_addresses(table).items():
            elems[f"rs{family}"] = sorted(addrs)
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

    # -- reading back ---------------------------------------------------------------------------

    def parse(self, doc: Json) -> Table:
        """Our table as listed by ``nft -j list table`` -> Table (see module doc)."""
        items = doc.get("nftables", [])
        specs: dict[ServiceKey, ServiceSpec] = {}
        rules: list[tuple[str, str, str]] = []
        chains: set[str] = set()
        dests: dict[ServiceKey, dict[DestKey, DestSpec]] = {}
        live_elems: dict[str, list[Any]] = {}
        broken = False
        for item in items:
            if "rule" in item:
                r = item["rule"]
                comment = r.get("comment", "")
                rules.append((r["chain"], comment, _norm(r["expr"])))
                parts = comment.split()
                if len(parts) == 4 and parts[:2] == ["hc", "svc"]:
                    with contextlib.suppress(ValueError):
                        specs[parse_key(parts[2])] = ServiceSpec(parts[3], 0)
            elif "chain" in item:
                chains.add(_chain_key(item["chain"]))
            elif "map" in item or "set" in item:
                obj = item.get("map") or item["set"]
                live_elems[obj["name"]] = obj.get("elem", [])
        for name in ("weights4", "weights6"):
            for elem in live_elems.pop(name, []):
                try:
                    proto, vip, port, addr, dport = elem[0]["concat"]
                    key = ServiceKey(read_proto(proto), vip, read_port(port))
                    dests.setdefault(key, {})[DestKey(addr, read_port(dport))] = DestSpec(
                        int(elem[1]), "nat"
                    )
                except (KeyError, TypeError, ValueError):
                    broken = True  # a hand-made element: re-render everything
        for key in dests.keys() - specs.keys():  # its rule was deleted by hand
            specs[key] = ServiceSpec(ALTERED + "unknown")
        table: Table = {k: TableService(s, dests.get(k, {})) for k, s in specs.items()}
        # verify: the live rules and elements must be exactly what this table renders to
        want_chains = {_chain_key(c["chain"]) for c in self.chains()}
        want_chains |= {_chain_key(self.service_chain(k)["chain"]) for k in table}
        live = set(rules)
        expected: set[tuple[str, str, str]] = set()
        altered: set[ServiceKey] = set()
        owner: dict[tuple[str, str], ServiceKey] = {}
        want_elems: set[tuple[str, str]] = set()
        for key, svc in table.items():
            ok = _safe_check({key: svc})
            mine = self._keyed(self.service_rules(key, svc)) if ok else []
            expected.update(mine)
            if not mine or not all(r in live for r in mine):
                altered.add(key)
            if ok:
                for name, items_ in self.service_elements(key, svc).items():
                    if name.startswith("weights"):
                        continue
                    for e in items_:
                        tag = (name, norm_elem(e))
                        want_elems.add(tag)
                        owner[tag] = key
        for family, addrs in rs_addresses(table).items():
            want_elems.update((f"rs{family}", norm_elem(a)) for a in addrs)
        live_tags: set[tuple[str, str]] = set()
        for name, elems in live_elems.items():
            for e in elems:
                try:
                    live_tags.add((name, norm_elem(e)))
                except (KeyError, TypeError, ValueError):
                    broken = True
        for tag in want_elems ^ live_tags:  # an element missing or extra: whose is it?
            if tag in owner:
                altered.add(owner[tag])
            else:
                broken = True
        own = self._keyed(self.global_rules())
        expected.update(own)
        by_comment = {_comment(k, s.spec): k for k, s in table.items()}
        unknown = False
        for rule in live - expected:  # an extra or edited rule: whose is it?
            if rule[1] in by_comment:
                altered.add(by_comment[rule[1]])
            else:
                unknown = True
        if (
            unknown
            or broken
            or chains != want_chains
            or len(rules) != len(live)
            or not all(r in live for r in own)
        ):
            altered = set(table)  # any other hand edit: re-render everything
        for key in altered:
            svc = table[key]
            if svc.spec.scheduler.startswith(ALTERED):
                continue
            table[key] = TableService(ServiceSpec(ALTERED + svc.spec.scheduler), svc.dests)
        return table

    @staticmethod
    def _keyed(objs: list[Json]) -> list[tuple[str, str, str]]:
        return [(o["rule"]["chain"], o["rule"]["comment"], _norm(o["rule"]["expr"])) for o in objs]


def rs_addresses(table: Table) -> dict[int, set[str]]:
    """Every destination address per family (the masquerade sets)."""
    out: dict[int, set[str]] = {4: set(), 6: set()}
    for key, svc in table.items():
        out[key.family].update(d.address for d in svc.dests)
    return out


def norm_elem(elem: Any) -> str:
    """Canonical text of a set or map element: keys with protocol and port as numbers."""
    key, value = (elem[0], elem[1]) if isinstance(elem, list) else (elem, None)
    if isinstance(key, dict) and "concat" in key:
        parts = list(key["concat"])
        k = read_elem_key({"concat": parts[:3]})
        key = [PROTO_NUM[k.protocol], k.address, k.port]
        if len(parts) == 5:  # a weight element: ... . rs . rsport
            key += [str(parts[3]), read_port(parts[4])]
        elif len(parts) != 3:
            raise ValueError(f"not an element of ours: {elem!r}")
    return json.dumps([key, value], sort_keys=True)


def _chain_key(chain: Json) -> str:
    """What of a chain must match its rendering: name, type, hook, priority, policy."""
    return _norm({k: chain.get(k) for k in ("name", "type", "hook", "prio", "policy")})


def _norm(expr: Any) -> str:
    """Canonical text of a rule's expressions, anonymous set/map elements compared order-free
    (the two shapes we render: a dnat map and a match against a set), ports as numbers whether
    nft printed them so or by name; anything else verbatim."""
    if not isinstance(expr, list):
        return json.dumps(expr, sort_keys=True)
    parts: list[str] = []
    for e in expr:
        try:
            if "dnat" in e:
                m = e["dnat"]["addr"]["map"]
                data = sorted(
                    (int(i), v["concat"][0], read_port(v["concat"][1])) for i, v in m["data"]["set"]
                )
                parts.append(
                    json.dumps(["dnat", e["dnat"]["family"], m["key"], data], sort_keys=True)
                )
                continue
            right = e["match"]["right"] if "match" in e else None
            if isinstance(right, int | str) and _port_field(e["match"]["left"]):
                e = {"match": {**e["match"], "right": read_port(right)}}
            if isinstance(right, dict) and isinstance(right.get("set"), list):
                elems = sorted(right["set"], key=str)
                parts.append(
                    json.dumps([e["match"]["op"], e["match"]["left"], elems], sort_keys=True)
                )
                continue
        except (KeyError, TypeError, ValueError):
            pass
        parts.append(json.dumps(e, sort_keys=True))
    return "|".join(parts)


def _port_field(left: Any) -> bool:
    """Is a match's left side a port (``tcp dport``, ``udp sport`` ...)?"""
    payload = left.get("payload") if isinstance(left, dict) else None
    return isinstance(payload, dict) and payload.get("field") in PORT_FIELDS


def _safe_check(table: Table) -> bool:
    try:
        check(table)
    except DataplaneError:
        return False
    return True
