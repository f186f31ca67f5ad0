"""A change of a few services as a few nftables commands, not a new table (pure, no I/O).

``delta(renderer, old, new, touched)`` turns the services ``touched`` from their ``old`` state
into their ``new`` one with commands on the objects of those services only (see the layout in
``hacontrol.dataplane.nft_render``): elements of the weight maps, of the ``svc`` verdict map and
of the ``nodest`` sets; the service's own chain (added, flushed and given its new rule, or
deleted); and the ``rs`` masquerade sets, by a reference count of each address. The
tables and their base chains are never replaced, so their handles stay and established flows
are untouched, except that a service table is added with its first service and deleted with its
last (by a count of services per service table, kept with the address counts in ``Refs``).
Order inside the one transaction: service tables added, element deletes, chain flushes and
deletes, chain adds and rules, element adds (a verdict element must go before its chain, and
come after it), service tables deleted.

The kernel state after ``delta`` equals what ``render(new)`` would give (tested on nftables).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hacontrol.dataplane.nft_readback import norm_elem
from hacontrol.dataplane.nft_render import Json, NftRenderer, SetId, check
from hacontrol.dataplane.table import ServiceKey, Table, TableService


def _elements(
    r: NftRenderer, key: ServiceKey, svc: TableService | None
) -> dict[tuple[SetId, str], Any]:
    """{(set, canonical text): element} of one service."""
    out: dict[tuple[SetId, str], Any] = {}
    if svc is None:
        return {}
    for where, items in r.service_elements(key, svc).items():
        for e in items:
            out[(where, norm_elem(e))] = e
    return out


def _key_only(elem: Any) -> Any:
    """What a delete names: the key of a map element, the element of a set."""
    return elem[0] if isinstance(elem, list) else elem


def delta(
    r: NftRenderer, old: Table, new: Table, touched: Iterable[ServiceKey], refs: Refs
) -> list[Json]:
    """The commands taking the ``touched`` services from ``old`` to ``new`` (both whole tables,
    only the touched services are read); ``refs``: ``address_refs(old)``, updated to ``new``'s
    (undo by recomputing it when the commands fail)."""
    keys = sorted(set(touched))
    check({k: new[k] for k in keys if k in new})
    dels: list[Json] = []
    chain_ops: list[Json] = []
    adds: list[Json] = []
    for key in keys:
        was, now = old.get(key), new.get(key)
        before, after = _elements(r, key, was), _elements(r, key, now)
        for tag in sorted(set(before) - set(after)):
            dels.append({"delete": r.element(tag[0], [_key_only(before[tag])])})
        for tag in sorted(set(after) - set(before)):
            adds.append({"add": r.element(tag[0], [after[tag]])})
        chain = r.service_chain(key)
        if now is None:
            if was is not None:
                chain_ops += [{"flush": chain}, {"delete": chain}]
            continue
        rules = r.service_rules(key, now)
        if was is None:
            chain_ops += [{"add": chain}, *({"add": rule} for rule in rules)]
        elif rules != r.service_rules(key, was):
            chain_ops += [{"flush": chain}, *({"add": rule} for rule in rules)]
    rs_dels, rs_adds = _rs_changes(r, old, new, keys, refs.addrs)
    born, gone = _shard_changes(r, old, new, keys, refs.shards)
    tables = [{"add": o} for shard in born for o in r.shard_objects(shard)]
    dead = [{"delete": {"table": {"family": "inet", "name": shard}}} for shard in gone]
    return tables + dels + rs_dels + chain_ops + adds + rs_adds + dead


@dataclass
class Refs:
    """Reference counts of a table: destinations per address (the masquerade sets) and services
    per service table (which exist)."""

    addrs: dict[tuple[int, str], int] = field(default_factory=dict)  # (family, address): dests
    shards: dict[str, int] = field(default_factory=dict)  # service table: services

    def copy(self) -> Refs:
        return Refs(dict(self.addrs), dict(self.shards))


def address_refs(table: Table, r: NftRenderer) -> Refs:
    """The reference counts of ``table``."""
    out = Refs()
    for key, svc in table.items():
        shard = r.shard(key)
        out.shards[shard] = out.shards.get(shard, 0) + 1
        for d in svc.dests:
            out.addrs[(key.family, d.address)] = out.addrs.get((key.family, d.address), 0) + 1
    return out


def _shard_changes(
    r: NftRenderer, old: Table, new: Table, keys: list[ServiceKey], counts: dict[str, int]
) -> tuple[list[str], list[str]]:
    """Service tables that get their first service (born) and lose their last (gone);
    ``counts`` is updated to ``new``'s."""
    before = {r.shard(k) for k in keys} - {r.table_name}  # the main one is never born
    was = {s: counts.get(s, 0) for s in before}
    for key in keys:
        shard = r.shard(key)
        counts[shard] = counts.get(shard, 0) + (key in new) - (key in old)
    born = sorted(s for s in before if was[s] <= 0 < counts[s])
    gone = sorted(s for s in before if counts[s] <= 0 < was[s])
    for shard in gone:
        del counts[shard]
    return born, gone


def _rs_changes(
    r: NftRenderer,
    old: Table,
    new: Table,
    keys: list[ServiceKey],
    refs: dict[tuple[int, str], int],
) -> tuple[list[Json], list[Json]]:
    """Masquerade set elements: an address enters with its first destination and leaves with its
    last (an address is often shared by services). ``refs`` (the counts of ``old``) is updated
    to the counts of ``new``."""
    before = dict(refs)
    for key in keys:
        for table, step in ((old, -1), (new, 1)):
            svc = table.get(key)
            for d in svc.dests if svc is not None else ():
                tag = (key.family, d.address)
                refs[tag] = refs.get(tag, 0) + step
    dels: list[Json] = []
    adds: list[Json] = []
    for tag in sorted(t for t in refs if (refs[t] > 0) != (before.get(t, 0) > 0)):
        family, addr = tag
        if refs[tag] > 0:
            adds.append({"add": r.element((r.table_name, f"rs{family}"), [addr])})
        else:
            dels.append({"delete": r.element((r.table_name, f"rs{family}"), [addr])})
    for tag in [t for t, n in refs.items() if n <= 0]:
        del refs[tag]
    return dels, adds
