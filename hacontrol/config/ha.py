"""The ``ha:`` section of the config file: the HA pair's peering, VIPs, tracking and notify hook.

Parsed with the ``Reader`` of ``hacontrol.config.reader`` (so errors share its
``FILE:LINE: FIELD: reason`` format); produces ``hacontrol.model.HAConfig``. The key itself is read
by the HA code, not kept here: the loader checks ``secret_file`` with the rule the daemon applies
(``hacontrol.config.secrets.read_key``; skippable with ``check_files=False``). The lease is checked
against ``interval * dead_after`` whenever those three are valid, whatever else is wrong.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, replace
from typing import Any

from yaml.nodes import Node

from hacontrol.config.limits import DURATIONS
from hacontrol.config.reader import Reader
from hacontrol.config.scalars import IFNAME_RE, fmt_duration, join, scalar
from hacontrol.config.secrets import read_key
from hacontrol.model import (
    AnnounceConfig,
    Endpoint,
    HAConfig,
    SyncConfig,
    TrackConfig,
    VipConfig,
    dead_interval,
)

HA_KEYS = (
    "bind", "peers", "priority", "preempt", "preempt_delay", "interval", "dead_after",
    "secret_file", "vips", "announce", "lease", "track", "notify", "notify_timeout", "sync",
)  # fmt: skip
_DEFAULTS = {f.name: f.default for f in fields(HAConfig) if f.default is not MISSING}


def parse_ha(r: Reader, node: Node, *, check_files: bool) -> HAConfig | None:
    """Validate the ``ha:`` mapping; record issues in ``r`` and return None if any."""
    start = r.mark()
    m = r.mapping(node, "ha", HA_KEYS, required=("bind", "peers", "secret_file"))
    if m is None:
        return None
    kw: dict[str, Any] = {}
    bind = r.endpoint(m["bind"], "ha.bind", unspecified=True) if "bind" in m else None
    kw["bind"] = bind
    if "peers" in m:
        kw["peers"] = _peers(r, m["peers"], bind)
    if "priority" in m:
        kw["priority"] = r.integer(m["priority"], "ha.priority", 1, 254)
    if "preempt" in m:
        kw["preempt"] = r.boolean(m["preempt"], "ha.preempt")
    for key in ("preempt_delay", "interval", "notify_timeout"):
        if key in m:
            kw[key] = r.duration(m[key], join("ha", key), *DURATIONS[join("ha", key)])
    if "dead_after" in m:
        kw["dead_after"] = r.integer(m["dead_after"], "ha.dead_after", 2, 1000)
    if "secret_file" in m:
        kw["secret_file"] = r.file_path(
            m["secret_file"], "ha.secret_file", check=read_key if check_files else None
        )
    if "vips" in m:
        kw["vips"] = _vips(r, m["vips"])
    if "announce" in m:
        kw["announce"] = _announce(r, m["announce"])
    if "track" in m:
        kw["track"] = _track(r, m["track"])
    if "notify" in m:
        kw["notify"] = r.argv(m["notify"], "ha.notify") if scalar(m["notify"])[0] != "null" else ()
    if "lease" in m:
        kw["lease"] = _lease(r, m["lease"])
    if "sync" in m and scalar(m["sync"])[0] != "null":
        kw["sync"] = _sync(r, m["sync"])
    _check_lease(r, m, kw)
    if not r.clean_since(start):
        return None
    ha = HAConfig(**kw)
    if "lease" not in m and ha.lease is not None:
        # the model's 3s default is too short for a slow heartbeat (1s x 3 = 3s): derive it
        ha = replace(ha, lease=max(ha.lease, 2 * ha.dead_interval))
    return ha


def _check_lease(r: Reader, m: dict[str, Node], kw: dict[str, Any]) -> None:
    """A set lease must outlast the dead interval (checked when the three values are valid)."""
    lease, interval, dead_after = (
        kw.get(k, _DEFAULTS[k]) for k in ("lease", "interval", "dead_after")
    )
    if "lease" not in m or None in (lease, interval, dead_after):
        return  # unset (derived from the others), off, or invalid (already reported)
    if lease <= dead_interval(interval, dead_after):
        r.error(
            m["lease"],
            "ha.lease",
            f"must be greater than interval * dead_after "
            f"({fmt_duration(dead_interval(interval, dead_after))}), got {fmt_duration(lease)}",
        )


def _peers(r: Reader, node: Node, bind: Endpoint | None) -> tuple[Endpoint, ...]:
    items = r.sequence(node, "ha.peers")
    if items is None:
        return ()
    if not items:
        r.error(node, "ha.peers", "must list at least one address of the peer")
    out: list[Endpoint] = []
    for i, item in enumerate(items):
        p = f"ha.peers[{i}]"
        ep = r.endpoint(item, p)
        if ep is None:
            continue
        if bind is not None and ep.address.version != bind.address.version:
            r.error(
                item,
                p,
                f"IPv{ep.address.version} peer for an IPv{bind.address.version} bind {bind}",
            )
        elif bind is not None and ep == bind:
            r.error(item, p, f"is this node's own bind address {bind}")
        elif ep in out:
            r.error(item, p, f"duplicate peer {ep}")
        else:
            out.append(ep)
    return tuple(out)


def _vips(r: Reader, node: Node) -> tuple[VipConfig, ...]:
    items = r.sequence(node, "ha.vips", optional=True)
    out: list[VipConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items or []):
        p = f"ha.vips[{i}]"
        m = r.mapping(item, p, ("address", "interface"), required=("address", "interface"))
        if not m or "address" not in m:
            continue
        iface = (
            r.string(m["interface"], join(p, "interface"), pattern=IFNAME_RE)
            if "interface" in m
            else None
        )
        addr = r.interface(m["address"], join(p, "address"))
        if addr is None:
            continue
        key = str(addr.ip)
        if key in seen:
            r.error(
                m["address"],
                join(p, "address"),
                f"duplicate vip {addr.ip} (also ha.vips[{seen[key]}])",
            )
            continue
        seen[key] = i
        if iface is not None:
            out.append(VipConfig(addr, iface))
    return tuple(out)


def _announce(r: Reader, node: Node) -> AnnounceConfig | None:
    m = r.mapping(node, "ha.announce", ("count", "interval", "refresh"))
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "count" in m:
        kw["count"] = r.integer(m["count"], "ha.announce.count", 0, 100)
    for key in ("interval", "refresh"):
        if key in m:
            p = join("ha.announce", key)
            kw[key] = r.duration(m[key], p, *DURATIONS[p])
    return AnnounceConfig(**kw)


def _track(r: Reader, node: Node) -> TrackConfig | None:
    keys = ("interfaces", "vip_interfaces", "gateway", "gateway_interval", "gateway_fall",
            "priority_penalty")  # fmt: skip
    m = r.mapping(node, "ha.track", keys)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "vip_interfaces" in m:
        kw["vip_interfaces"] = r.boolean(m["vip_interfaces"], "ha.track.vip_interfaces")
    if "interfaces" in m and (
        items := r.sequence(m["interfaces"], "ha.track.interfaces", optional=True)
    ):
        names = [
            r.string(n, f"ha.track.interfaces[{i}]", pattern=IFNAME_RE) for i, n in enumerate(items)
        ]
        kw["interfaces"] = tuple(dict.fromkeys(n for n in names if n is not None))
    if "gateway" in m and scalar(m["gateway"])[0] != "null":
        kw["gateway"] = r.address(m["gateway"], "ha.track.gateway")
    if "gateway_interval" in m:
        kw["gateway_interval"] = r.duration(
            m["gateway_interval"], "ha.track.gateway_interval",
            *DURATIONS["ha.track.gateway_interval"],
        )  # fmt: skip
    if "gateway_fall" in m:
        kw["gateway_fall"] = r.integer(m["gateway_fall"], "ha.track.gateway_fall", 1, 1000)
    if "priority_penalty" in m:
        kw["priority_penalty"] = r.integer(
            m["priority_penalty"], "ha.track.priority_penalty", 0, 254
        )
    return TrackConfig(**kw)


def _lease(r: Reader, node: Node) -> float | None:
    """A duration, or off (``off``/``false``/``null``) -> None."""
    kind, value = scalar(node)
    if kind == "null" or (kind == "boolean" and value is False) or value == "off":
        return None
    return r.duration(node, "ha.lease", *DURATIONS["ha.lease"])


def _sync(r: Reader, node: Node) -> SyncConfig | None:
    """``ha.sync: {interface, syncid}``: the IPVS connection sync daemons."""
    m = r.mapping(node, "ha.sync", ("interface", "syncid"), required=("interface",))
    if m is None or "interface" not in m:
        return None
    iface = r.string(m["interface"], "ha.sync.interface", pattern=IFNAME_RE)
    syncid = r.integer(m["syncid"], "ha.sync.syncid", 0, 255) if "syncid" in m else 0
    if iface is None or syncid is None:
        return None
    return SyncConfig(iface, syncid)
