"""A change of a few services as a few nftables commands, not a new table (pure, no I/O).

``delta(renderer, old, new, touched)`` turns the services ``touched`` from their ``old`` state
into their ``new`` one with commands on the objects of those services only (see the layout in
``hacontrol.dataplane.nft_render``): elements of the weight maps, of the ``svc`` verdict map and
of the ``nodest`` sets; the service's own chain (added, flushed and given its new rule, or
deleted); and the ``rs`` masquerade sets, by a reference count of each address. The
table and its base chains are never replaced, so their handles stay and established flows are
untouched. Order inside the one transaction: element deletes, chain flushes and deletes, chain
adds and rules, element adds (a verdict element must go before its chain, and come after it).

The kernel state after ``delta`` equals what ``render(new)`` would give (tested on nftables).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hacontrol.dataplane.nft_readback import norm_elem
from hacontrol.dataplane.nft_render import Json, NftRenderer, check
from hacontrol.dataplane.table import ServiceKey, Table, TableService


def _elements(r: NftRenderer, key: ServiceKey, svc: TableService | None) -> dict[str, Any]:
    """{(set name, canonical text): element} of one service."""
    out: dict[tuple[str, str], Any] = {}
    if svc is None:
        return {}
    for name, items in r.service_elements(key, svc).items():
        for e in items:
            out[(name, norm_elem(e))] = e
    return out  # type: ignore[return-value]


def _key_only(elem: Any) -> Any:
    """What a delete names: the key of a map element, the element of a set."""
    return elem[0] if isinstance(elem, list) else elem


def delta(
    r: NftRenderer, old: Table, new: Table, touched: Iterable[ServiceKey], refs: AddrRefs
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
    rs_dels, rs_adds = _rs_changes(r, old, new, keys, refs)
    return dels + rs_dels + chain_ops + adds + rs_adds


AddrRefs = dict[tuple[int, str], int]  # (family, address): destinations using it


def address_refs(table: Table) -> AddrRefs:
    """How many destinations use each address (the masquerade sets' reference counts)."""
    out: AddrRefs = {}
    for key, svc in table.items():
        for d in svc.dests:
            out[(key.family, d.address)] = out.get((key.family, d.address), 0) + 1
    return out


def _rs_changes(
    r: NftRenderer, old: Table, new: Table, keys: list[ServiceKey], refs: AddrRefs
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
            adds.append({"add": r.element(f"rs{family}", [addr])})
        else:
            dels.append({"delete": r.element(f"rs{family}", [addr])})
    for tag in [t for t, n in refs.items() if n <= 0]:
        del refs[tag]
    return dels, adds
