"""Our nftables tables as the kernel lists them, for the integration tests (root).

The nftables plane named ``name`` owns the main ``table inet <name>`` and, past 64 services, the
service tables ``<name>_<i>of<n>`` that hold a service at the moment
(``hacontrol.dataplane.nft_shards``), so a
test that looks at "our table" reads all of them, from one ``nft -j -p list ruleset inet``:
``ours`` (the listed objects), ``present`` (which of our tables exist), ``listing`` (a normal
form to compare two planes' tables: handles dropped, element lists sorted, the table names
mapped to ``T`` and ``T_<i>of<n>``, so which service table an object is in still counts),
``elements`` (each set's and map's elements, by table and name) and ``text`` (the nft text of
our tables, for a grep).
"""

from __future__ import annotations

import json
from typing import Any

from hacontrol.dataplane.nft_shards import Layout
from hacontrol.lab.netns import Ns

Item = dict[str, Any]


def owner(item: Item) -> str:
    """The table an item of a listing is in (a table item: its own name)."""
    kind, body = next(iter(item.items()))
    return str(body["name"] if kind == "table" else body.get("table", ""))


def is_ours(table: str, name: str) -> bool:
    """``table`` is the main table ``name`` or one of its service tables ``name_<i>of<n>``."""
    return Layout(name).parse(table) is not None


def ours(ns: Ns, name: str) -> list[Item]:
    """The items of ``nft -j -p list ruleset inet`` in our tables (no metainfo)."""
    out = ns.run("nft", "-j", "-p", "list", "ruleset", "inet").stdout
    items = json.loads(out)["nftables"] if out.strip() else []
    return [i for i in items if "metainfo" not in i and is_ours(owner(i), name)]


def present(ns: Ns, name: str) -> list[str]:
    """Our tables that exist, sorted (the main one first)."""
    return sorted((owner(i) for i in ours(ns, name) if "table" in i), key=lambda t: (t != name, t))


def expected(name: str, tables: set[str]) -> list[str]:
    """What ``present`` gives when the services are in ``tables`` (``NftRenderer.shards``: the
    main table itself up to 64 services)."""
    return [name, *sorted(tables - {name})]


def neutral(table: str, name: str) -> str:
    """``name`` -> ``T``, ``name_3of4`` -> ``T_3of4``."""
    return "T" + table[len(name) :]


def normal(items: list[Item], name: str) -> list[str]:
    """A comparable form of ``items``: handles dropped, every element list sorted (order is not
    state), table names neutral (``T``, ``T_<i>of<n>``: a shard keeps counting), sorted."""
    out = []
    for item in items:
        kind, body = next(iter(item.items()))
        body = dict(body)
        body.pop("handle", None)
        field = "name" if kind == "table" else "table"
        body[field] = neutral(body[field], name)
        if "elem" in body:
            body["elem"] = sorted(json.dumps(e, sort_keys=True) for e in body["elem"])
        out.append(kind + json.dumps(body, sort_keys=True))
    return sorted(out)


def listing(ns: Ns, name: str) -> list[str]:
    """``normal`` of all our tables ([] when none exists)."""
    return normal(ours(ns, name), name)


def elements(ns: Ns, name: str) -> dict[tuple[str, str], list[Any]]:
    """{(table, set or map name): its elements} over our tables."""
    got: dict[tuple[str, str], list[Any]] = {}
    for item in ours(ns, name):
        for kind in ("set", "map"):
            if kind in item:
                got[(item[kind]["table"], item[kind]["name"])] = item[kind].get("elem", [])
    return got


def text(ns: Ns, name: str) -> str:
    """The nft text listing of each of our tables, joined ("" when none exists)."""
    parts = []
    for table in present(ns, name):
        r = ns.run("nft", "list", "table", "inet", table, check=False)
        parts.append(r.stdout if r.returncode == 0 else "")  # gone since: nothing of it
    return "".join(parts)
