"""Reading hacontrol's nftables tables back from ``nft -j list ruleset inet`` (pure, no I/O).

Owns the listing side of the table layout described in ``hacontrol.dataplane.nft_render``: the
service comment ``hc svc <key> <scheduler>`` that names a service's rule, the weight map elements
that carry the exact table, and the canonical text of rules and elements used to compare a
listing with a rendering. ``read_table(doc, rendering)`` turns a listing into a ``Table`` and the
number of service tables its names say (objects of other tables skipped); it then
re-renders what it read (through the small ``Rendering`` interface, which ``NftRenderer``
implements) and compares that with the live rules and elements: a service whose rules or elements
were edited by hand comes back with scheduler ``altered:<scheduler>``, so the reconciler sees a
difference and the next apply repairs it (``nft flush ruleset`` or deleting every table of ours
reads back as empty; tables of two counts, or a service table no service needs, re-render
everything).

Reading back never depends on /etc/protocols or /etc/services (a minimal Debian root or a container
has neither): nft prints a protocol by name only when /etc/protocols names it, else by number, and
a port by name only with ``-S``; ``read_proto`` and ``read_port`` take both forms, and the dataplane
asks for numbers anyway (``nft -p``). A port printed by name is looked up in the services database
nft itself read it from (the only lookup here; numbers need none).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args

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
ALTERED = "altered:"
PORT_FIELDS = ("sport", "dport")  # payload fields whose values nft may print by service name
RuleKey = tuple[str, str, str, str]  # (table, chain, comment, canonical expressions)
SetId = tuple[str, str]  # (table, set or map name)


class Rendering(Protocol):
    """What reading back needs of the renderer: where things are, the objects a table renders
    to."""

    table_name: str  # the main table

    def owns(self, table: str) -> bool: ...

    def count_of(self, table: str) -> int | None: ...

    def recount(self, count: int) -> Rendering: ...

    def shards(self, keys: Iterable[ServiceKey]) -> set[str]: ...

    def chains(self, shards: Iterable[str]) -> list[Json]: ...

    def service_chain(self, key: ServiceKey) -> Json: ...

    def service_rules(self, key: ServiceKey, svc: TableService) -> list[Json]: ...

    def service_elements(self, key: ServiceKey, svc: TableService) -> dict[SetId, list[Any]]: ...

    def shared_elements(self, table: Table) -> dict[SetId, list[Any]]: ...

    def global_rules(self, shards: Iterable[str]) -> list[Json]: ...

    def renders(self, key: ServiceKey, svc: TableService) -> bool: ...


def service_comment(key: ServiceKey, spec: ServiceSpec) -> str:
    """The comment of a service's rule, which names the service and its scheduler."""
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


def read_elem_key(value: Any) -> ServiceKey:
    """A ``proto . address . port`` element key as nft lists it -> ServiceKey."""
    proto, addr, port = value["concat"]
    return ServiceKey(read_proto(proto), str(addr), read_port(port))


@dataclass
class Listing:
    """What one listing holds of our tables: the services its comments and weight elements name,
    and the live tables, rules, chains and elements to check them against."""

    specs: dict[ServiceKey, ServiceSpec] = field(default_factory=dict)
    dests: dict[ServiceKey, dict[DestKey, DestSpec]] = field(default_factory=dict)
    tables: set[str] = field(default_factory=set)
    rules: list[RuleKey] = field(default_factory=list)
    chains: set[str] = field(default_factory=set)
    elems: dict[SetId, list[Any]] = field(default_factory=dict)  # set/map: elements
    broken: bool = False  # something hand-made that belongs to no service: re-render everything


def read_listing(doc: Json, r: Rendering) -> Listing:
    """Sort the objects of our tables in a listing (``list ruleset inet``: other tables are
    skipped); the main table's weight maps become the destinations of each service."""
    out = Listing()
    for item in doc.get("nftables", []):
        if "table" in item:
            if r.owns(item["table"].get("name", "")):
                out.tables.add(item["table"]["name"])
            continue
        kind = next((k for k in ("rule", "chain", "map", "set") if k in item), None)
        if kind is None or not r.owns(item[kind].get("table", "")):
            continue
        obj = item[kind]
        if kind == "rule":
            comment = obj.get("comment", "")
            out.rules.append((obj["table"], obj["chain"], comment, norm_rule(obj["expr"])))
            parts = comment.split()
            if len(parts) == 4 and parts[:2] == ["hc", "svc"]:
                with contextlib.suppress(ValueError):
                    out.specs[parse_key(parts[2])] = ServiceSpec(parts[3], 0)
        elif kind == "chain":
            out.chains.add(chain_key(obj))
        else:
            out.elems[(obj["table"], obj["name"])] = obj.get("elem", [])
    for name in ("weights4", "weights6"):
        for elem in out.elems.pop((r.table_name, name), []):
            try:
                proto, vip, port, addr, dport = elem[0]["concat"]
                key = ServiceKey(read_proto(proto), vip, read_port(port))
                out.dests.setdefault(key, {})[DestKey(addr, read_port(dport))] = DestSpec(
                    int(elem[1]), "nat"
                )
            except (KeyError, TypeError, ValueError):
                out.broken = True  # a hand-made element: re-render everything
    return out


def read_table(doc: Json, r: Rendering) -> tuple[Table, int]:
    """Our tables as listed by ``nft -j list ruleset inet`` -> (Table, the number of service
    tables they are spread over) (see module doc); empty when none of them is listed."""
    listing = read_listing(doc, r)
    specs, dests, broken = listing.specs, listing.dests, listing.broken
    for key in dests.keys() - specs.keys():  # its rule was deleted by hand
        specs[key] = ServiceSpec(ALTERED + "unknown")
    table: Table = {k: TableService(s, dests.get(k, {})) for k, s in specs.items()}
    counts = {c for t in listing.tables if (c := r.count_of(t)) is not None and c > 1}
    count = max(counts, default=1)  # (the main table says nothing of the count)
    if not listing.tables and not table:
        return table, count
    broken |= len(counts) > 1  # tables of two layouts: re-render everything
    r = r.recount(count)
    # verify: the live rules and elements must be exactly what this table renders to
    shards = r.shards(table)
    want_chains = {chain_key(c["chain"]) for c in r.chains(shards)}
    want_chains |= {chain_key(r.service_chain(k)["chain"]) for k in table}
    live = set(listing.rules)
    expected: set[RuleKey] = set()
    altered: set[ServiceKey] = set()
    owner: dict[tuple[SetId, str], ServiceKey] = {}
    want_elems: set[tuple[SetId, str]] = set()
    for key, svc in table.items():
        ok = r.renders(key, svc)
        mine = _keyed(r.service_rules(key, svc)) if ok else []
        expected.update(mine)
        if not mine or not all(x in live for x in mine):
            altered.add(key)
        if ok:
            for where, items_ in r.service_elements(key, svc).items():
                if where[1].startswith("weights"):
                    continue
                for e in items_:
                    tag = (where, norm_elem(e))
                    want_elems.add(tag)
                    owner[tag] = key
    for where, shared in r.shared_elements(table).items():
        want_elems.update((where, norm_elem(a)) for a in shared)
    live_tags: set[tuple[SetId, str]] = set()
    for where, elems in listing.elems.items():
        for e in elems:
            try:
                live_tags.add((where, norm_elem(e)))
            except (KeyError, TypeError, ValueError):
                broken = True
    for tag in want_elems ^ live_tags:  # an element missing or extra: whose is it?
        if tag in owner:
            altered.add(owner[tag])
        else:
            broken = True
    own = _keyed(r.global_rules(shards))
    expected.update(own)
    by_comment = {service_comment(k, s.spec): k for k, s in table.items()}
    unknown = False
    for rule in live - expected:  # an extra or edited rule: whose is it?
        if rule[2] in by_comment:
            altered.add(by_comment[rule[2]])
        else:
            unknown = True
    if (
        unknown
        or broken
        or listing.tables != {r.table_name, *shards}
        or listing.chains != want_chains
        or len(listing.rules) != len(live)
        or not all(x in live for x in own)
    ):
        altered = set(table)  # any other hand edit: re-render everything
    for key in altered:
        svc = table[key]
        if svc.spec.scheduler.startswith(ALTERED):
            continue
        table[key] = TableService(ServiceSpec(ALTERED + svc.spec.scheduler), svc.dests)
    return table, count


def _keyed(objs: list[Json]) -> list[RuleKey]:
    return [
        (o["rule"]["table"], o["rule"]["chain"], o["rule"]["comment"], norm_rule(o["rule"]["expr"]))
        for o in objs
    ]


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


def chain_key(chain: Json) -> str:
    """What of a chain must match its rendering: table, name, type, hook, priority, policy."""
    fields = ("table", "name", "type", "hook", "prio", "policy")
    return norm_rule({k: chain.get(k) for k in fields})


def norm_rule(expr: Any) -> str:
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
