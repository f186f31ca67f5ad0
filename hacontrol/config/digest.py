"""The config digest: a sha256 of what the two nodes of an HA pair must agree on.

``compute_digest`` canonicalises the services and VIP addresses to JSON (order-insensitive, blind
to node-specific fields) so peers can compare configs in their heartbeats.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, is_dataclass
from typing import Any

from hacontrol.model import HAConfig, IPAddress, IPInterface, ServiceConfig


def compute_digest(services: tuple[ServiceConfig, ...], ha: HAConfig | None) -> str:
    """sha256 of what two HA peers must agree on: the services and the VIP addresses.

    Order-insensitive (services by name, real servers by address/port, VIPs by address) and
    blind to node-specific fields (node name, api, bind, peers, priority, VIP interface names)."""
    svcs = [_plain(s) for s in services]
    for s in svcs:
        s["real_servers"].sort(key=lambda rs: (":" in rs["address"], rs["address"], rs["port"]))
    svcs.sort(key=lambda s: s["name"])
    vips = sorted(str(v.address) for v in ha.vips) if ha else []
    doc = {"format": 1, "services": svcs, "vips": vips}
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def _plain(o: Any) -> Any:
    if is_dataclass(o) and not isinstance(o, type):
        return {f.name: _plain(getattr(o, f.name)) for f in fields(o)}
    if isinstance(o, tuple | list):
        return [_plain(x) for x in o]
    if isinstance(o, IPAddress | IPInterface):
        return str(o)
    return o
