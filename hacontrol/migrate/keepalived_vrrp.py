"""keepalived's ``vrrp_instance`` and ``vrrp_sync_group`` blocks -> hacontrol's ``ha:`` section.

hacontrol pairs two directors and moves all its VIPs together, as one keepalived sync group
does; the instances are merged in file order, the first one giving the priority, timers and
peers, and every difference between instances (a second instance with another priority, one
outside the sync group, so moved on its own by keepalived) is a note. Mapped: ``priority``
(1..254; 255, the VRRP address owner, becomes 254), ``advert_int`` -> ``interval`` with
``dead_after: 3`` (VRRP's master down interval is about 3 advertisements), ``nopreempt`` ->
``preempt: false``, ``preempt_delay`` (keepalived's default 0 s written out: hacontrol's is 10 s),
``unicast_src_ip`` / ``unicast_peer`` -> ``bind`` / ``peers`` on hacontrol's heartbeat port,
``virtual_ipaddress`` (and ``..._excluded``) with ``dev`` (else the instance's ``interface``) ->
``vips``, ``track_interface`` -> ``track.interfaces``, ``garp_master_repeat`` / ``..._refresh``
-> ``announce``, and the notify scripts -> one ``ha.notify`` command: a ``/bin/sh -c`` dispatcher
(written out in the file, the scripts' words quoted) that runs ``notify_master`` / ``_backup`` /
``_fault`` / ``_stop`` on the matching hacontrol role and ``notify`` with keepalived's arguments
(``INSTANCE|GROUP NAME STATE PRIORITY``). Without unicast peers (multicast VRRP) the peer's
address is unknown: the section is returned as incomplete, for the caller to comment out.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass, field

from hacontrol.migrate.keepalived_parse import Node, split_script
from hacontrol.migrate.keepalived_values import Ctx, IPAddress, endpoint, fmt_duration
from hacontrol.migrate.yaml_out import Flow, Map, Seq

HEARTBEAT_PORT = 5405
ROLES = {"master": ("active", "MASTER"), "backup": ("backup", "BACKUP"),
         "fault": ("fault", "FAULT"), "stop": ("stopping", "STOP")}
_WHY = {
    "authentication": "hacontrol's heartbeats carry an HMAC-SHA256 with the key in "
    "ha.secret_file; the VRRP password is not reused",
    "track_script": "hacontrol has no tracking scripts",
    "virtual_router_id": "hacontrol's own heartbeat has no router id (the VRRPv3 mode that "
    "pairs with keepalived is separate work)",
    "state": "hacontrol has no initial state: the higher priority takes the VIPs",
}


@dataclass
class Instance:
    node: Node
    name: str
    priority: int = 100
    advert: float = 1.0
    preempt: bool = True
    preempt_delay: float = 0.0
    interface: str | None = None
    src: IPAddress | None = None
    peers: list[IPAddress] = field(default_factory=list)
    vips: list[tuple[str, str | None, Node]] = field(default_factory=list)
    track: list[str] = field(default_factory=list)
    announce: dict[str, object] = field(default_factory=dict)
    scripts: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Vrrp:
    """The ``ha:`` mapping (None without instances), the notes for the file's header, and
    whether the mapping can be used as is (False: the peer's address is unknown)."""

    ha: Map | None
    header: list[str]
    complete: bool = True


def convert_vrrp(ctx: Ctx, nodes: list[Node], secret_file: str) -> Vrrp:
    """The instances and sync groups among ``nodes`` -> ``ha:``."""
    insts = [_instance(ctx, n) for n in nodes if n.keyword == "vrrp_instance" and n.args]
    groups = [n for n in nodes if n.keyword == "vrrp_sync_group"]
    header: list[str] = []
    if not insts:
        header += [f"vrrp_sync_group ({g.where}) has no vrrp_instance to go with" for g in groups]
        return Vrrp(None, header)
    first = insts[0]
    members: dict[str, str] = {}
    group_scripts: list[tuple[str, tuple[str, ...], str]] = []
    for g in groups:
        for st in g.block():
            if st.keyword == "group":
                members.update({name: g.args[0] if g.args else "" for c in st.block()
                                for name in c.words})
                members.update({name: g.args[0] if g.args else "" for name in st.args})
            elif (role := _notify_role(st.keyword)) is not None:
                if (argv := _script(ctx, st)) is not None:
                    group_scripts.append((role, argv, g.args[0] if g.args else ""))
            else:
                header.append(f"vrrp_sync_group {st.keyword} ({st.where}) not carried over: "
                              + _WHY.get(st.keyword, "no hacontrol equivalent"))
    names = [members.get(i.name) for i in insts]
    if len(insts) > 1 and (None in names or len(set(names)) > 1):
        header.append(f"the vrrp_instances {', '.join(i.name for i in insts)} are not all in one "
                      "vrrp_sync_group: keepalived moved them independently, hacontrol moves "
                      "all the VIPs together")
    ha = Map()
    for inst in insts:
        for n in inst.notes:
            ha.note(f"keepalived: {inst.name}: {n}")
        if inst is first:
            continue
        for what, mine, theirs in (("priority", inst.priority, first.priority),
                                   ("advert_int", inst.advert, first.advert),
                                   ("preempt", inst.preempt, first.preempt),
                                   ("unicast peers", inst.peers, first.peers)):
            if mine != theirs:
                ha.note(f"keepalived: {inst.name} has {what} {mine}, {first.name} {theirs}: "
                        f"hacontrol has one for all its VIPs, {first.name}'s used")
    src = first.src
    complete = bool(first.peers)
    bind = endpoint(src, HEARTBEAT_PORT) if src else f"0.0.0.0:{HEARTBEAT_PORT}"
    ha.add("bind", bind, "unicast_src_ip; hacontrol's heartbeat is UDP, open this port"
           if src else "no unicast_src_ip: all addresses")
    peers = [endpoint(p, HEARTBEAT_PORT) for p in first.peers] or [f"PEER:{HEARTBEAT_PORT}"]
    if len(first.peers) > 1:
        ha.note("keepalived: several unicast_peer addresses: hacontrol pairs exactly two "
                "directors and takes them as paths to one peer")
    ha.add("peers", Flow(list(peers)), "unicast_peer" if complete else
           "keepalived used multicast VRRP: write the peer director's address here")
    prio = first.priority
    if prio == 255:
        ha.note("keepalived: priority 255 (the VRRP address owner) is above hacontrol's 254")
        prio = 254
    ha.add("priority", prio)
    ha.add("preempt", first.preempt, None if first.preempt else "nopreempt")
    ha.add("preempt_delay", fmt_duration(first.preempt_delay), "keepalived's default: at once"
           if first.preempt_delay == 0 else None)
    ha.add("interval", fmt_duration(min(max(first.advert, 0.01), 10.0)), "advert_int")
    if not 0.01 <= first.advert <= 10.0:
        ha.note(f"keepalived: advert_int {first.advert} is outside hacontrol's 10ms..10s")
    ha.add("dead_after", 3, "as VRRP: the master is down after about 3 advertisements")
    ha.add("secret_file", secret_file, "CREATE IT on both directors, the same key: install "
           f"-m 0600 /dev/null {secret_file} && head -c 32 /dev/urandom > {secret_file}")
    vips, seen = Seq(), set()
    for inst in insts:
        for addr, dev, node in inst.vips:
            key = addr.split("/")[0]
            if key in seen:
                continue
            seen.add(key)
            if dev is None:
                ctx.error(node, f"{addr}: no dev and no interface in {inst.name}")
                continue
            vips.items.append(Flow({"address": addr, "interface": dev}))
    ha.add("vips", vips)
    announce = {k: v for i in reversed(insts) for k, v in i.announce.items()}
    if announce:
        ha.add("announce", Flow(announce))  # type: ignore[arg-type]
    track = list(dict.fromkeys(t for i in insts for t in i.track))
    if track:
        ha.add("track", Map([("interfaces", Flow(list(track)), "track_interface")]))
    scripts = [(r, a, "GROUP", g) for r, a, g in group_scripts]
    scripts += [(r, a, "INSTANCE", i.name) for i in insts for r, a in i.scripts]
    if scripts:
        ha.add("notify", Flow(_dispatcher(scripts, prio)), "the notify scripts: see the note below")
        ha.note("keepalived: the notify command above runs the notify scripts on the matching "
                "role (MASTER = active); hacontrol kills it after notify_timeout (5s), "
                "keepalived let its scripts run; 'notify' gets the configured priority")
    return Vrrp(ha, header, complete)


def _notify_role(kw: str) -> str | None:
    if kw == "notify":
        return "generic"
    return kw[len("notify_") :] if kw.startswith("notify_") and kw[7:] in ROLES else None


def _dispatcher(scripts: list[tuple[str, tuple[str, ...], str, str]], prio: int) -> list[str]:
    sh = ['case "$1" in ' + " ".join(f"{hc}) s={ka} ;;" for hc, ka in ROLES.values())
          + ' *) exit 0 ;; esac']
    for role, argv, kind, name in scripts:
        cmd = shlex.join(argv)
        if role == "generic":
            sh.append(f'{cmd} {kind} {shlex.quote(name)} "$s" {prio}')
        else:
            sh.append(f'if [ "$s" = {ROLES[role][1]} ]; then {cmd}; fi')
    return ["/bin/sh", "-c", "; ".join(sh), "hacontrol-notify", "{role}"]


def _script(ctx: Ctx, st: Node) -> tuple[str, ...] | None:
    line = split_script(st.raw)
    argv = split_script(line[1]) if line and len(line) > 1 else None
    if not argv:
        ctx.error(st, f"cannot split the script {st.raw!r} (an open quote, or no program)")
        return None
    return tuple(argv)


def _instance(ctx: Ctx, node: Node) -> Instance:
    inst = Instance(node, node.args[0])
    for st in node.block():
        kw = st.keyword
        if kw == "priority":
            inst.priority = ctx.integer(st, ctx.arg(st, 0, "priority"), 1, 255, kw) or 100
        elif kw == "advert_int":
            inst.advert = ctx.seconds(st, ctx.arg(st, 0, "seconds"), kw, 0.01) or 1.0
        elif kw == "nopreempt":
            inst.preempt = False
        elif kw == "preempt":
            inst.preempt = True
        elif kw == "preempt_delay":
            inst.preempt_delay = ctx.seconds(st, ctx.arg(st, 0, "seconds"), kw) or 0.0
        elif kw == "interface":
            inst.interface = ctx.arg(st, 0, "interface")
        elif kw == "unicast_src_ip":
            inst.src = ctx.ip(st, ctx.arg(st, 0, "address"))
        elif kw == "unicast_peer":
            inst.peers += [p for c in st.block() if (p := ctx.ip(c, c.keyword)) is not None]
        elif kw in ("virtual_ipaddress", "virtual_ipaddress_excluded"):
            for c in st.block():
                _vip(ctx, inst, c, excluded=kw.endswith("excluded"))
        elif kw == "track_interface":
            for c in st.block():
                inst.track.append(c.keyword)
                if len(c.words) > 1:
                    inst.notes.append(f"track_interface {' '.join(c.words)} ({c.where}): a "
                                      "weight is not carried over: a tracked link that is down "
                                      "is a fault in hacontrol")
        elif kw == "garp_master_repeat":
            inst.announce["count"] = ctx.integer(st, ctx.arg(st, 0, "count"), 0, 100, kw)
        elif kw == "garp_master_refresh":
            v = ctx.seconds(st, ctx.arg(st, 0, "seconds"), kw) or 0.0
            inst.announce["refresh"] = fmt_duration(v if v == 0 else min(max(v, 1.0), 86400.0))
        elif (role := _notify_role(kw)) is not None:
            if (argv := _script(ctx, st)) is not None:
                inst.scripts.append((role, argv))
        else:
            why = _WHY.get(kw, "no hacontrol equivalent")
            inst.notes.append(f"{' '.join(st.words[:2])} ({st.where}) not carried over: {why}")
    return inst


def _vip(ctx: Ctx, inst: Instance, c: Node, excluded: bool) -> None:
    try:
        iface = ipaddress.ip_interface(c.keyword)
    except ValueError:
        ctx.error(c, "not an address (ADDRESS[/PREFIX])")
        return
    if ctx.ip(c, str(iface.ip)) is None:
        return
    dev, extra = inst.interface, []
    words = list(c.args)
    while words:
        w = words.pop(0)
        if w == "dev" and words:
            dev = words.pop(0)
        else:
            extra.append(w)
    text = c.keyword if "/" in c.keyword else str(iface.ip)
    if extra:
        inst.notes.append(f"virtual_ipaddress {c.keyword} ({c.where}): {' '.join(extra)} not "
                          "carried over: no hacontrol equivalent")
    if excluded:
        inst.notes.append(f"virtual_ipaddress_excluded {c.keyword} ({c.where}) is a VIP here "
                          "(keepalived left it out of its adverts)")
    inst.vips.append((text, dev, c))
