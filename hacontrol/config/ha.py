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
    IPAddress,
    SyncConfig,
    TrackConfig,
    VipConfig,
    VrrpConfig,
    dead_interval,
)

HA_KEYS = (
    "bind", "peers", "priority", "preempt", "preempt_delay", "interval", "dead_after",
    "secret_file", "vips", "announce", "lease", "track", "notify", "notify_timeout", "sync",
    "protocol", "vrrp",
)  # fmt: skip
PROTOCOLS = ("hacontrol", "vrrp3")
OWN_ONLY = ("interval", "dead_after")  # the own heartbeat's timers: refused with vrrp3
_DEFAULTS = {f.name: f.default for f in fields(HAConfig) if f.default is not MISSING}


def parse_ha(r: Reader, node: Node, *, check_files: bool) -> HAConfig | None:
    """Validate the ``ha:`` mapping; record issues in ``r`` and return None if any."""
    start = r.mark()
    m = r.mapping(node, "ha", HA_KEYS)
    if m is None:
        return None
    kw: dict[str, Any] = {}
    protocol = r.choice(m["protocol"], "ha.protocol", PROTOCOLS) if "protocol" in m else None
    vrrp3 = protocol == "vrrp3"
    if protocol is not None:
        kw["protocol"] = protocol
    _protocol_keys(r, node, m, vrrp3)
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
    if vrrp3 and "vrrp" in m:
        kw["vrrp"] = vrrp = parse_vrrp(r, m["vrrp"])
        if vrrp is not None:
            _vrrp_family(r, m["vrrp"], vrrp, kw.get("vips", ()))
    _check_lease(r, m, kw)
    if not r.clean_since(start):
        return None
    ha = HAConfig(**kw)
    if "lease" not in m and ha.lease is not None:
        # the model's 3s default is too short for a slow heartbeat (1s x 3 = 3s): derive it
        slowest = ha.vrrp.advert_cs * 4 / 100 if ha.vrrp else ha.dead_interval
        ha = replace(ha, lease=max(ha.lease, 2 * slowest))
    return ha


def _protocol_keys(r: Reader, node: Node, m: dict[str, Node], vrrp3: bool) -> None:
    """What each protocol requires and refuses. With vrrp3, ``bind``/``peers``/``secret_file``
    may stay (checked, unused: ready for the switch back to the own protocol)."""
    where = (r.key_line(node), 0)
    if vrrp3:
        if "vrrp" not in m:
            r.error(where, "ha.vrrp", "missing (required with protocol vrrp3)")
        for key in OWN_ONLY:
            if key in m:
                r.error(m[key], join("ha", key), "the own heartbeat's timer: with protocol "
                        "vrrp3 the timers are ha.vrrp.advert_int's (VRRP's master down interval)")
        return
    for key in ("bind", "peers", "secret_file"):
        if key not in m:
            r.error(where, join("ha", key), "missing (required)")
    if "vrrp" in m:
        r.error(m["vrrp"], "ha.vrrp", "only with protocol: vrrp3 (ha.protocol is hacontrol)")


def parse_vrrp(r: Reader, node: Node) -> VrrpConfig | None:
    """``ha.vrrp: {vrid, interface, advert_int, unicast_peers, source}``."""
    keys = ("vrid", "interface", "advert_int", "unicast_peers", "source")
    m = r.mapping(node, "ha.vrrp", keys, required=("vrid", "interface"))
    if m is None:
        return None
    start = r.mark()
    kw: dict[str, Any] = {}
    if "vrid" in m:
        kw["vrid"] = r.integer(m["vrid"], "ha.vrrp.vrid", 1, 255)
    if "interface" in m:
        kw["interface"] = r.string(m["interface"], "ha.vrrp.interface", pattern=IFNAME_RE)
    if "advert_int" in m:
        kw["advert_cs"] = _advert(r, m["advert_int"])
    if "source" in m:
        kw["source"] = r.address(m["source"], "ha.vrrp.source")
    if "unicast_peers" in m:
        peers: list[IPAddress] = []
        for i, item in enumerate(r.sequence(m["unicast_peers"], "ha.vrrp.unicast_peers") or []):
            p = f"ha.vrrp.unicast_peers[{i}]"
            a = r.address(item, p)
            if a is None:
                continue
            if a in peers:
                r.error(item, p, f"duplicate peer {a}")
            elif peers and a.version != peers[0].version:
                r.error(item, p, f"IPv{a.version} peer among IPv{peers[0].version} peers")
            elif kw.get("source") is not None and a == kw["source"]:
                r.error(item, p, f"is this node's own source address {a}")
            else:
                peers.append(a)
        kw["unicast_peers"] = tuple(peers)
        src = kw.get("source")
        if peers and src is not None and src.version != peers[0].version:
            r.error(m["source"], "ha.vrrp.source", f"IPv{src.version} source for IPv"
                    f"{peers[0].version} unicast peers")  # fmt: skip
    if not r.clean_since(start) or kw.get("vrid") is None or kw.get("interface") is None:
        return None
    return VrrpConfig(**kw)


def _advert(r: Reader, node: Node) -> int | None:
    """An integer is centiseconds (VRRPv3's unit), a string a duration in whole centiseconds."""
    kind, value = scalar(node)
    path = "ha.vrrp.advert_int"
    if kind == "integer":
        if not 5 <= value <= 4095:
            hint = (" (an integer is centiseconds: keepalived's 'advert_int 1' is 100 or 1s)"
                    if 0 < value < 5 else "")  # fmt: skip
            r.error(node, path, f"must be 5..4095 centiseconds, got {value}{hint}")
            return None
        return int(value)
    seconds = r.duration(node, path, 0.05, 40.95)
    if seconds is None:
        return None
    cs = round(seconds * 100)
    if abs(cs - seconds * 100) > 1e-6:
        r.error(node, path, f"must be whole centiseconds (10ms steps), got {node.value}")
        return None
    return cs


def _vrrp_family(r: Reader, node: Node, vrrp: VrrpConfig, vips: tuple[VipConfig, ...]) -> None:
    """The instance must advertise at least one VIP of its family."""
    version = vrrp.version or (vips[0].address.version if vips else None)
    if version is None:
        r.error(node, "ha.vrrp", "no VIP in ha.vips: a VRRP instance advertises its VIPs")
    elif not any(v.address.version == version for v in vips):
        r.error(node, "ha.vrrp", f"no IPv{version} VIP in ha.vips to advertise "
                "(the instance's family is that of its peers or source)")  # fmt: skip


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
