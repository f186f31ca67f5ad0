"""The ``host:`` section: what the daemon may change on the director itself.

``host: {set_sysctls: true}`` lets the daemon write the sysctls its services need
(``hacontrol.host.sysctl``); without it they are only checked and each mismatch reported.
"""

from __future__ import annotations

from typing import Any

from yaml.nodes import Node

from hacontrol.config.reader import Reader
from hacontrol.config.scalars import scalar
from hacontrol.model import HostConfig

HOST_KEYS = ("set_sysctls",)


def parse_host(r: Reader, node: Node) -> HostConfig | None:
    """``host:`` -> HostConfig; an empty ``host:`` means the defaults."""
    if scalar(node)[0] == "null":
        return HostConfig()
    m = r.mapping(node, "host", HOST_KEYS)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "set_sysctls" in m:
        kw["set_sysctls"] = r.boolean(m["set_sysctls"], "host.set_sysctls")
    return HostConfig(**kw)
