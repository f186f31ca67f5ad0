"""Human-readable rendering for the ``hacontrol`` CLI: the status table and the drill timeline.

Pure functions from the API's JSON documents to text (no I/O), so each is unit-testable on a dict.
``hacontrol.cli`` fetches the documents and prints what these return.
"""

from __future__ import annotations

from typing import Any

from hacontrol.model import host_port


def _ago(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}s ago" if v < 120 else f"{v / 60:.0f}m ago"


def duration(seconds: float) -> str:
    """A duration for people: 42s, 3m12s, 2h05m, 3d04h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _health(rs: dict[str, Any]) -> str:
    """The health column: how long a server has been down ("down 3m12s")."""
    since = rs.get("health_since_ago")
    if rs["health"] == "down" and since is not None:
        return f"down {duration(since)}"
    return str(rs["health"])


def _conns(rs: dict[str, Any]) -> str:
    """Active/inactive connections, "-" where the plane has no counters (nftables)."""
    c = rs.get("connections")
    return "-" if c is None else f"{c['active']}/{c['inactive']}"


def _s(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}s"


def render_ha(ha: dict[str, Any]) -> list[str]:
    """The HA block of ``hacontrol status``: role since/why, peer, VIPs, last transitions."""
    lines = [
        f"ha role {str(ha['role']).upper()} since {ha.get('since', '-')} "
        f"({_ago(ha.get('since_ago'))}): {ha.get('reason', '-')}",
        f"   priority {ha.get('priority')} (effective {ha.get('effective_priority')})"
        + ("  BLOCKED" if ha.get("blocked") else "")
        + ("  handing over" if ha.get("handing_over") else ""),
    ]
    if ha.get("protocol") == "vrrp3":  # paired with keepalived: say what this mode cannot do
        missing = ", ".join(ha.get("unavailable") or []) or "-"
        lines.append(f"   protocol VRRPv3 (keepalived-compatible); unavailable: {missing}")
    for f in ha.get("faults") or []:
        lines.append(
            f"   fault {f['name']}: {f['reason']}" + (" (blocking)" if f["blocking"] else "")
        )
    cfg = ha.get("config") or {}
    if cfg.get("peer_match") is False:
        lines.append(f"   !!! {cfg.get('warning', 'CONFIG DIGEST MISMATCH with the peer')} !!!")
    peer = ha.get("peer")
    if peer is None:
        configured = ", ".join(ha.get("peers_configured") or []) or "-"
        lines.append(f"   peer: never heard (configured: {configured})")
    else:
        paths = ", ".join(
            f"{p} {_ago(v.get('last_heard_ago'))}" for p, v in (peer.get("paths") or {}).items()
        )
        lines.append(
            f"   peer {peer['name']} {peer['role']} priority {peer['priority']} "
            f"(effective {peer.get('effective_priority')}) "
            f"{'alive' if peer.get('alive') else 'DEAD'}, last heard "
            f"{_ago(peer.get('last_heard_ago'))}; paths: {paths or '-'}"
        )
    lease = ha.get("lease")
    lines.append(
        f"   VIPs {'held here' if ha.get('vips_held') else 'not held here'}, lease "
        + ("off" if lease is None else f"{lease:g}s")
    )
    for v in ha.get("vips") or []:
        left = v.get("lease_left")
        lines.append(
            f"     {v['address']} on {v['interface']}: "
            + ("present" if v.get("present") else "absent")
            + ("" if left is None else f", {left:.1f}s left")
        )
    trans = ha.get("transitions") or []
    if trans:
        lines.append("   last transitions:")
        for t in trans[-5:]:
            lines.append(f"     {_ago(t.get('ago'))}: {t['from']} -> {t['to']}: {t['reason']}")
    return lines


def render_status(doc: dict[str, Any]) -> str:
    """The status document as a readable table (the HA block above the services)."""
    dp = doc["dataplane"]
    lines = [
        f"node {doc['node']}  role {doc['role']}  version {doc['version']}  "
        f"uptime {doc['uptime']:.0f}s" + ("  (dry run)" if doc.get("dry_run") else ""),
        f"config {doc['config']['source']}  digest {str(doc['config']['digest'])[:12]}",
        f"dataplane {dp['kind']}  last apply {dp['last_result'] or '-'} "
        f"({_ago(dp['last_apply_ago'])})  applies {dp['applies']}  "
        f"errors {dp['consecutive_errors']}  drift repairs {dp['drift_repairs']}",
    ]
    if dp.get("error"):
        lines.append(f"  error: {dp['error']}")
    if doc.get("ha"):
        lines += render_ha(doc["ha"])
    for svc in doc["services"]:
        total = len(svc["real_servers"])
        lines.append("")
        lines.append(
            f"{svc['name']}  {svc.get('key', svc['vip'])}  {svc['scheduler']}/{svc['forwarding']}"
            f"  up {svc.get('up', 0)}/{total}  on_failure {svc['on_failure']}"
            + ("" if svc.get("in_kernel", True) is not False else "  NOT IN KERNEL")
        )
        sorry = svc.get("sorry_server")
        if sorry:
            state = {True: "ACTIVE", False: "standby", None: "?"}[sorry["active"]]
            lines.append(f"  sorry server {host_port(sorry['address'], sorry['port'])} {state}")
        rows = [("REAL SERVER", "HEALTH", "WEIGHT", "KERNEL", "CONNS A/I", "LAST CHECK")]
        for rs in svc["real_servers"]:
            lc = rs["last_check"]
            lat = "" if lc.get("latency_ms") is None else f", {lc['latency_ms']:.1f} ms"
            rows.append(
                (
                    host_port(rs["address"], rs["port"]),
                    _health(rs),
                    str(rs["weight"]),
                    "-" if rs["kernel_weight"] is None else str(rs["kernel_weight"]),
                    _conns(rs),
                    f"{lc['reason']} ({_ago(lc['age'])}{lat})",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5]
            )
        for rs in svc["real_servers"]:
            if rs.get("override"):
                lines.append(f"  override {host_port(rs['address'], rs['port'])}: "
                             + _override(rs["override"]))  # fmt: skip
    for lv in (doc.get("overrides") or {}).get("leaving", []):
        left = "?" if lv["connections"] is None else lv["connections"]
        lines.append(
            f"leaving {lv['service']} {lv['real_server']}: not in the config, "
            f"draining ({left} connections, deadline in {lv['deadline_in']:.0f}s)"
        )
    return "\n".join(lines)


def _override(o: dict[str, Any]) -> str:
    """One real server's override, beside its configured values."""
    text = str(o["state"]) + (f" {o['weight']}" if o.get("weight") is not None else "")
    d = o.get("drain")
    if d and not d.get("ended"):
        left = "?" if d["connections"] is None else d["connections"]
        text += f" ({left} connections, deadline in {d['deadline_in']:.0f}s)"
    elif d:
        text += f" ({d['ended']})"
    return f"{text}  [{o['version']}]"


TIMELINE = (
    ("handover_sent", "handover sent to the peer"),
    ("fault", "fault: this node drops its VIPs and goes silent"),
    ("detection", "peer detected it (became active)"),
    ("vip_added", "peer added the VIPs"),
    ("announcements_sent", "peer sent its first announcements"),
    ("first_heartbeat_as_active", "first heartbeat from the peer as active"),
    ("released_here", "this node released its VIPs"),
)


def render_drill(doc: dict[str, Any]) -> str:
    """A drill result as a readable timeline."""
    kind = doc.get("drill", "?")
    head = f"drill {kind}" + (f" ({doc['seconds']:g}s)" if doc.get("seconds") else "")
    lines = [head + (": ok" if doc.get("ok") else ": FAILED")]
    steps = [(doc[k], what) for k, what in TIMELINE if isinstance(doc.get(k), int | float)]
    for at, what in sorted(steps, key=lambda x: x[0]):
        lines.append(f"  {at * 1000:+9.1f} ms  {what}")
    if doc.get("announce_count"):
        lines.append(f"  announcements sent by the peer: {doc['announce_count']}")
    if "overlap" in doc:
        lines.append(f"  overlap (both held the VIPs): {_s(doc['overlap'])}")
    lines.append(f"  gap: {_s(doc.get('gap'))}")
    if doc.get("error"):
        lines.append(f"  error: {doc['error']}")
    return "\n".join(lines)
