"""The ``nat:`` section: source NAT of the real servers' own outbound traffic.

``nat: {table: hacontrol_nat, snat: [{source: 198.51.100.0/24, to: 192.0.2.10, out_interface:
eth0}]}``. The rules live in one nftables table of their own (``hacontrol.dataplane.snat``),
installed only while this director is active, so ``to`` must be an address the active node holds:
with ``ha:`` it must be one of ``ha.vips``. Checked here: the prefix (no host bits), the family of
``to`` against ``source``, duplicates, and that the table name differs from the data plane's.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from yaml.nodes import Node

from hacontrol.config.reader import Reader
from hacontrol.config.scalars import IFNAME_RE, NFT_TABLE_RE, scalar
from hacontrol.dataplane.nft_shards import Layout
from hacontrol.model import HAConfig, IPNetwork, NatConfig, SnatRule

NAT_KEYS = ("snat", "table")
SNAT_KEYS = ("source", "to", "out_interface")


def parse_nat(r: Reader, node: Node, ha: HAConfig | None, plane_table: str) -> NatConfig | None:
    """``nat:`` -> NatConfig (``ha`` for the ``to`` check, ``plane_table``: the nftables data
    plane's table, which this one must not replace)."""
    if scalar(node)[0] == "null":
        return NatConfig()
    start = r.mark()
    m = r.mapping(node, "nat", NAT_KEYS)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "table" in m:
        table = r.string(m["table"], "nat.table", pattern=NFT_TABLE_RE)
        if table is not None and table == plane_table:
            r.error(m["table"], "nat.table", f"must differ from dataplane.nft_table ({table!r})")
        elif table is not None and Layout(plane_table).parse(table) is not None:
            r.error(m["table"], "nat.table",
                    f"must differ from the data plane's service tables ({plane_table}_<i>of<n>)")
        kw["table"] = table
    if "snat" in m and (items := r.sequence(m["snat"], "nat.snat", optional=True)) is not None:
        vips = {v.address.ip for v in ha.vips} if ha is not None else None
        rules: list[SnatRule] = []
        seen: dict[tuple[IPNetwork, str | None], int] = {}
        for i, item in enumerate(items):
            path = f"nat.snat[{i}]"
            rule = _rule(r, item, path, vips)
            if rule is None:
                continue
            key = (rule.source, rule.out_interface)
            if key in seen:
                r.error(
                    item, path, f"duplicate of nat.snat[{seen[key]}] (same source and interface)"
                )
                continue
            seen[key] = i
            rules.append(rule)
        kw["snat"] = tuple(rules)
    return NatConfig(**kw) if r.clean_since(start) else None


def _rule(r: Reader, node: Node, path: str, vips: set[Any] | None) -> SnatRule | None:
    start = r.mark()
    m = r.mapping(node, path, SNAT_KEYS, required=("source", "to"))
    if m is None:
        return None
    source = _network(r, m["source"], f"{path}.source") if "source" in m else None
    to = r.address(m["to"], f"{path}.to") if "to" in m else None
    out_if = None
    if "out_interface" in m:
        out_if = r.string(
            m["out_interface"], f"{path}.out_interface", pattern=IFNAME_RE, optional=True
        )
    if source is not None and to is not None:
        if source.version != to.version:
            r.error(m["to"], f"{path}.to", f"must be of the family of source {source}, got {to}")
        elif vips is not None and to not in vips:
            held = ", ".join(sorted(str(v) for v in vips)) or "none"
            r.error(
                m["to"],
                f"{path}.to",
                f"must be one of ha.vips ({held}), got {to}: the SNAT follows the active role, "
                "so it may only use an address the active director holds",
            )
    if not r.clean_since(start) or source is None or to is None:
        return None
    return SnatRule(source, to, out_if)


def _network(r: Reader, node: Node, path: str) -> IPNetwork | None:
    text = r.text(node, path, "an address/prefix (198.51.100.0/24)")
    if text is None:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        r.error(node, path, f"invalid address/prefix {text!r}")
        return None
    if ipaddress.ip_interface(text).ip != net.network_address:
        r.error(node, path, f"has host bits set: {text!r} (did you mean {net}?)")
        return None
    return net
