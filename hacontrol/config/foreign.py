"""Recognise a file that is not a hacontrol config but another tool's, to say what to do with it.

Only keepalived's for now: ``hacontrol check -c keepalived.conf`` answers with the command that
converts it instead of a YAML error. Pure: looks at the text only. A file is taken for a
keepalived.conf when its first statement (after blank lines and ``#`` / ``!`` comments) is one of
keepalived's top-level keywords followed by a blank, a ``{`` or the end of the line — never a
YAML mapping key (``virtual_server:``).
"""

from __future__ import annotations

import re

KEEPALIVED_KEYWORDS = (
    "global_defs", "vrrp_instance", "vrrp_sync_group", "vrrp_script", "virtual_server",
    "virtual_server_group", "static_ipaddress", "static_routes", "include", "includer",
    "includea", "includem", "includew", "includeb", "linkbeat_interfaces", "bfd_instance",
    "vrrp_track_file", "track_file", "net_namespace", "SSL",
)
_FIRST = re.compile(r"[ \t]*(?:@\^?\S+[ \t]+)?([A-Za-z_]+)(?:[ \t{]|$)")


def keepalived_hint(text: str, source: str) -> tuple[int, str] | None:
    """(line, reason) when ``text`` looks like a keepalived.conf, else None."""
    for number, line in enumerate(text[:65536].split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        m = _FIRST.match(line)
        if m is None or m.group(1) not in KEEPALIVED_KEYWORDS:
            return None
        return number, (
            f"this looks like a keepalived.conf ({m.group(1)}), not a hacontrol config: "
            f"convert it with hacontrol import-keepalived {source} -o hacontrol.yaml "
            "(docs/migrate-from-keepalived.md)"
        )
    return None
