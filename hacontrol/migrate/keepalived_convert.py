"""The parsed keepalived.conf -> hacontrol's YAML: the document, and its ``services``.

``convert`` walks the top-level statements in order: ``global_defs`` (``router_id`` names the
node), ``virtual_server`` (by address and port, or ``group NAME`` of a ``virtual_server_group``:
one service per address and port of the group; ``fwmark`` has no hacontrol equivalent) and the
VRRP blocks, handed to ``keepalived_vrrp``. Each service keeps its real servers in order; the
checkers become the service's one check (``keepalived_checks``). Everything else is a comment
saying what was left and why. The text is then loaded by hacontrol's own loader, so what
``convert`` returns is a config ``hacontrol check`` accepts (but for the ``ha.secret_file`` to
create).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

from hacontrol.migrate.keepalived_checks import (
    CHECKERS,
    OTHER_CHECKERS,
    CheckResult,
    CheckSpec,
    Timing,
    convert_checker,
    inherit,
    timing,
)
from hacontrol.migrate.keepalived_parse import Node, Parsed
from hacontrol.migrate.keepalived_source import Issue, KeepalivedError
from hacontrol.migrate.keepalived_values import Ctx, IPAddress, endpoint, fmt_duration, safe_name
from hacontrol.migrate.keepalived_values import unique as unique_name
from hacontrol.migrate.keepalived_vrrp import convert_vrrp
from hacontrol.migrate.yaml_out import Comment, Flow, Map, Seq, emit

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf")
FORWARDING = {"NAT": "nat", "DR": "dr", "TUN": "tunnel"}
MAX_GROUP_ADDRESSES = 256
_WHERE = re.compile(r" \([^()]*:\d+\)")
DEFAULT_SECRET = "/etc/hacontrol/ha.key"


@dataclass
class Output:
    text: str
    notes: int  # comments saying what was not carried over
    warnings: list[Issue] = field(default_factory=list)


def convert(parsed: Parsed, source: str, host: str, secret_file: str = DEFAULT_SECRET) -> Output:
    """The hacontrol YAML for ``parsed``; raises KeepalivedError listing every error."""
    ctx = Ctx(host)
    doc, header, services = Map(), [], Seq()
    node_name: str | None = None
    groups = {n.args[0]: n for n in parsed.nodes if n.keyword == "virtual_server_group" and n.args}
    taken: set[str] = set()
    keys: set[tuple[str, str, int]] = set()
    vrrp: list[Node] = []
    for n in parsed.nodes:
        kw = n.keyword
        if kw == "global_defs":
            for st in n.block():
                if st.keyword == "router_id" and st.args:
                    node_name = safe_name(st.args[0])
                else:
                    header.append(f"global_defs {st.keyword} ({st.where}) not carried over: "
                                  "no hacontrol equivalent")
        elif kw == "virtual_server":
            _virtual_server(ctx, n, groups, services, taken, keys)
        elif kw in ("vrrp_instance", "vrrp_sync_group"):
            vrrp.append(n)
        elif kw != "virtual_server_group":
            header.append(f"{' '.join(n.words[:2])} ({n.where}) not carried over: "
                          + _TOP_WHY.get(kw, "unknown to the importer"))
    for w in parsed.warnings:
        header.append(f"{w}")
    name = node_name or safe_name(host)
    doc.add("node", Flow({"name": name}), "global_defs router_id" if node_name else "the host")
    doc.add("services", services)
    ha = convert_vrrp(ctx, vrrp, secret_file)
    header.extend(ha.header)
    if ctx.errors:
        raise KeepalivedError(ctx.errors)
    incomplete = ha.ha is not None and not ha.complete
    notes = len(header) + _count_notes(doc) + (_count_notes(ha.ha) if ha.ha else 0) + incomplete
    lines = [f"Converted by hacontrol import-keepalived from {source} (config-id {host!r}).",
             f"Lines starting '# keepalived:' say what could not be carried over ({notes})."]
    lines += [f"keepalived: {h}" for h in header]
    if ha.ha is not None and ha.complete:
        doc.add("ha", ha.ha)
    text = emit(doc, lines)
    if ha.ha is not None and incomplete:
        lines = ["keepalived: the ha section below is commented out: keepalived used multicast "
                 "VRRP (no unicast_peer), so the peer director's address is unknown. Write it "
                 "in ha.peers, then uncomment."]
        commented = emit(Map([("ha", ha.ha, None)]))
        text += emit(Map(), lines) + "".join(f"# {ln}\n" for ln in commented.splitlines())
    return Output(text, notes, parsed.warnings)


_TOP_WHY = {
    "vrrp_script": "hacontrol has no tracking scripts (its own checks cover the real servers)",
    "static_ipaddress": "addresses outside the VIPs are left to the system's network config",
    "static_routes": "routes are left to the system's network config",
    "static_rules": "rules are left to the system's network config",
    "SSL": "hacontrol's https check takes no client certificate",
    "linkbeat_use_polling": "hacontrol reads link state from netlink",
    "vrrp_track_file": "hacontrol has no tracking files",
    "track_file": "hacontrol has no tracking files",
    "vrrp_track_process": "hacontrol has no process tracking",
    "bfd_instance": "hacontrol has no BFD",
    "net_namespace": "hacontrol runs in the namespace it is started in",
}


def _count_notes(v: object) -> int:
    if isinstance(v, Comment):
        return 1 if v.text.startswith("keepalived:") else 0
    if isinstance(v, Map):
        return sum(_count_notes(e[1] if isinstance(e, tuple) else e) for e in v.entries)
    if isinstance(v, Seq):
        return sum(_count_notes(i) for i in v.items)
    return 0


def _virtual_server(ctx: Ctx, vs: Node, groups: dict[str, Node], out: Seq, taken: set[str],
                    keys: set[tuple[str, str, int]]) -> None:
    head = " ".join(vs.words[:3])
    if vs.args[:1] == ("fwmark",):
        out.items.append(Comment(f"keepalived: {head} ({vs.where}) not carried over: hacontrol "
                                 "services are an address and a port, not a firewall mark"))
        return
    members: list[tuple[IPAddress, int, str]] = []  # (vip, port, name prefix)
    if vs.args[:1] == ("group",):
        gname = ctx.arg(vs, 1, "group name")
        group = groups.get(gname or "")
        if gname is not None and group is None:
            ctx.error(vs, f"no virtual_server_group {gname!r}")
        if group is not None and gname is not None:
            members = _group_members(ctx, group, out, safe_name(gname))
    else:
        vip = ctx.ip(vs, ctx.arg(vs, 0, "address"))
        port = ctx.integer(vs, ctx.arg(vs, 1, "port"), 1, 65535, "port")
        if vip is not None and port is not None:
            members = [(vip, port, "vs")]
    for vip, port, prefix in members:
        svc = _service(ctx, vs, vip, port)
        if svc is None:
            continue
        proto = str(_get(svc, "protocol"))
        if (proto, str(vip), port) in keys:
            out.items.append(Comment(f"keepalived: {head} ({vs.where}): {proto} {vip} port "
                                     f"{port} is already a service above: not repeated"))
            continue
        keys.add((proto, str(vip), port))
        name = safe_name(f"{prefix}-{vip}-{port}" + ("-udp" if proto == "udp" else ""))
        at = next(i for i, e in enumerate(svc.entries) if isinstance(e, tuple))
        svc.entries.insert(at, ("name", unique_name(name, taken), None))
        out.items.append(svc)


def _get(m: Map, key: str) -> object:
    return next((e[1] for e in m.entries if isinstance(e, tuple) and e[0] == key), None)


def _group_members(ctx: Ctx, group: Node, out: Seq,
                   prefix: str) -> list[tuple[IPAddress, int, str]]:
    members: list[tuple[IPAddress, int, str]] = []
    for st in group.block():
        if st.keyword == "fwmark":
            out.items.append(Comment(f"keepalived: virtual_server_group {group.args[0]} fwmark "
                                     f"({st.where}) not carried over: no firewall marks in "
                                     "hacontrol"))
            continue
        port = ctx.integer(st, ctx.arg(st, 0, "port"), 1, 65535, "port")
        addrs = _range(ctx, st)
        if port is None:
            continue
        members.extend((a, port, prefix) for a in addrs)
        if len(members) > MAX_GROUP_ADDRESSES:
            ctx.error(st, f"more than {MAX_GROUP_ADDRESSES} addresses in the group")
            return []
    return members


def _range(ctx: Ctx, st: Node) -> list[IPAddress]:
    """``192.0.2.1`` or ``192.0.2.1-10`` (the last byte, or the last group of an IPv6)."""
    text, _, last = st.keyword.partition("-")
    first = ctx.ip(st, text)
    if first is None or not last:
        return [first] if first is not None else []
    try:
        end = int(last, 16 if first.version == 6 else 10)
    except ValueError:
        end = -1
    top = 0xFFFF if first.version == 6 else 255
    low = int(first) & top
    if not low <= end <= top:
        ctx.error(st, f"range {st.keyword!r}: the end must be {low}..{top} (the last "
                  f"{'group' if first.version == 6 else 'byte'})")
        return []
    return [ipaddress.ip_address(int(first) + k) for k in range(end - low + 1)]


@dataclass
class _Real:
    node: Node
    entry: dict[str, object]
    inhibit: bool | None
    checks: list[CheckResult]


def _service(ctx: Ctx, vs: Node, vip: IPAddress, port: int) -> Map | None:
    svc, notes = Map(), [f"from {' '.join(vs.words)} ({vs.where})"]
    t = Timing()
    sched, fwd, proto = "wlc", "nat", "udp"
    persistence: float = 0
    inhibit, weight = False, 1
    sorry: str | None = None
    seen = {"protocol": False, "lb_kind": False, "lb_algo": False}
    reals: list[_Real] = []
    for st in vs.block():
        kw = st.keyword
        if timing(ctx, st, t):
            continue
        if kw in ("lb_algo", "lvs_sched"):
            seen["lb_algo"] = True
            a = ctx.arg(st, 0, "scheduler")
            if a in SCHEDULERS:
                sched = a
            elif a is not None:
                notes.append(f"lb_algo {a} ({st.where}) not supported by hacontrol (one of "
                             f"{', '.join(SCHEDULERS)}): keepalived's default wlc used")
        elif kw in ("lb_kind", "lvs_method"):
            seen["lb_kind"] = True
            a = ctx.arg(st, 0, "method")
            if a is not None and a.upper() in FORWARDING:
                fwd = FORWARDING[a.upper()]
            elif a is not None:
                ctx.error(st, f"unknown forwarding method {a!r} (NAT, DR or TUN)")
        elif kw == "protocol":
            seen["protocol"] = True
            a = (ctx.arg(st, 0, "protocol") or "").upper()
            if a in ("TCP", "UDP"):
                proto = a.lower()
            elif a:
                ctx.error(st, f"protocol {a} is not supported by hacontrol (TCP or UDP)")
        elif kw == "persistence_timeout":
            p = ctx.integer(st, st.args[0], 1, 86400, kw) if st.args else 360
            persistence = p if p is not None else 0
        elif kw == "inhibit_on_failure":
            inhibit = _flag(ctx, st)
        elif kw == "weight":
            weight = ctx.integer(st, ctx.arg(st, 0, "weight"), 0, 65535, "weight") or 0
        elif kw == "sorry_server":
            sa = ctx.ip(st, ctx.arg(st, 0, "address"))
            sp = ctx.integer(st, ctx.arg(st, 1, "port"), 1, 65535, "port")
            if sa is not None and sa.version != vip.version:
                ctx.error(st, f"{sa} is not of the family of the virtual server {vip}")
            elif sa is not None and sp is not None:
                sorry = endpoint(sa, sp)
        elif kw == "real_server":
            reals.append(_real(ctx, st, t, vip, port, weight))
        else:
            notes.append(f"{kw} ({st.where}) not carried over: no hacontrol equivalent")
    if not seen["protocol"]:
        notes.append("no protocol: keepalived defaults to UDP (and reports it), so udp here; "
                     "add 'protocol TCP' if TCP was meant")
    for n in notes:
        svc.note(n if n.startswith("from ") else f"keepalived: {n}")
    svc.add("vip", str(vip))
    svc.add("port", port)
    svc.add("protocol", proto)
    svc.add("scheduler", sched, None if seen["lb_algo"] else "keepalived's default")
    svc.add("forwarding", fwd, None if seen["lb_kind"] else "keepalived's default")
    svc.add("persistence", fmt_duration(persistence))
    _finish(svc, reals, inhibit, sorry, fwd, port)
    return svc


def _flag(ctx: Ctx, st: Node) -> bool:
    if not st.args or st.args[0] in ("on", "true", "yes"):
        return True
    if st.args[0] in ("off", "false", "no"):
        return False
    ctx.error(st, f"{st.args[0]!r} is not a boolean (on, off, true, false, yes, no)")
    return False


def _real(ctx: Ctx, rs: Node, vs_t: Timing, vip: IPAddress, vs_port: int, weight: int) -> _Real:
    addr = ctx.ip(rs, ctx.arg(rs, 0, "address"))
    port = ctx.integer(rs, rs.args[1], 0, 65535, "port") if len(rs.args) > 1 else None
    if addr is not None and addr.version != vip.version:
        ctx.error(rs, f"{addr} is not of the family of the virtual server {vip}")
    elif addr == vip:
        ctx.error(rs, f"{addr} is the virtual server's own address")
    entry: dict[str, object] = {"address": str(addr), "port": port or vs_port, "weight": weight}
    real = _Real(rs, entry, None, [])
    own = Timing()
    checkers: list[Node] = []
    for st in rs.block():
        if timing(ctx, st, own):
            continue
        if st.keyword == "weight":
            w = ctx.integer(st, ctx.arg(st, 0, "weight"), 0, 2**31 - 1, "weight")
            if w is not None and w > 65535:
                entry["note"] = f"weight {w} ({st.where}) is above hacontrol's 65535: 65535 used"
                w = 65535
            entry["weight"] = w if w is not None else weight
        elif st.keyword == "inhibit_on_failure":
            real.inhibit = _flag(ctx, st)
        elif st.keyword in CHECKERS:
            checkers.append(st)
        else:
            why = "a checker hacontrol does not have" if st.keyword in OTHER_CHECKERS else (
                "no hacontrol equivalent")
            real.checks.append(CheckResult(None, [f"{st.keyword} ({st.where}) not carried over: "
                                                  + why]))
    t = inherit(vs_t, own)
    real.checks.extend(convert_checker(ctx, c, t) for c in checkers)
    return real


def _template(spec: CheckSpec, address: str) -> CheckSpec:
    """A MISC_CHECK command naming its real server's address, with ``{address}`` instead."""
    if spec.command is None:
        return spec
    return replace(spec, command=tuple(a.replace(address, "{address}") for a in spec.command))


def _finish(svc: Map, reals: list[_Real], inhibit: bool, sorry: str | None, fwd: str,
            port: int) -> None:
    flags = [r.inhibit if r.inhibit is not None else inhibit for r in reals]
    on_failure = "weight0" if flags and all(flags) else "remove"
    if any(flags) and not all(flags):
        svc.note("keepalived: inhibit_on_failure is set on some real servers only: hacontrol "
                 "decides for the whole service, remove used")
    svc.add("on_failure", on_failure, "inhibit_on_failure" if on_failure == "weight0" else None)
    if sorry is not None:
        svc.add("sorry_server", sorry)
    chosen: CheckSpec | None = None
    notes: list[str] = []
    said: set[str] = set()  # the same note for every real server: once
    for r in reals:
        specs = [c.spec for c in r.checks if c.spec is not None]
        for c in r.checks:
            for n in c.notes:
                if (key := _WHERE.sub("", n)) not in said:
                    said.add(key)
                    notes.append(n)
        where = f"real_server {r.entry['address']} ({r.node.where})"
        if len(specs) > 1:
            notes.append(f"{where}: keepalived required all its {len(specs)} checkers to "
                         "pass; hacontrol runs one check per service, the first one")
        spec = _template(specs[0], str(r.entry["address"])) if specs else None
        if spec is None and any(x.checks for x in reals):
            notes.append(f"{where}: no checker, so keepalived kept it up; hacontrol checks it "
                         "as the others")
        elif spec is not None and chosen is None:
            chosen = spec
        elif spec is not None and spec != chosen:
            notes.append(f"{where}: its check differs from the first real server's; hacontrol "
                         "has one check per service, the first one is used")
    for n in notes:
        svc.note(f"keepalived: {n}")
    svc.add("check", chosen.to_map() if chosen else Flow({"type": "none"}),
            None if chosen else "keepalived: no checker, the real servers count as up")
    servers, seen = Seq(), set()
    for r in reals:
        e = dict(r.entry)
        note = e.pop("note", None)
        if note:
            servers.items.append(Comment(f"keepalived: {note}"))
        if fwd != "nat" and e["port"] != port:
            servers.items.append(Comment(f"keepalived: real_server {e['address']} port "
                                         f"{e['port']}: {fwd} cannot change the port, {port} "
                                         "used (as IPVS did)"))
            e["port"] = port
        if (e["address"], e["port"]) in seen:
            servers.items.append(Comment(f"keepalived: real_server {e['address']} "
                                         f"{e['port']} ({r.node.where}) is a duplicate"))
            continue
        seen.add((e["address"], e["port"]))
        servers.items.append(Flow({k: v for k, v in e.items() if isinstance(v, str | int)}))
    svc.add("real_servers", servers)
