"""The lab's second form (``hacontrol lab --ha``): two directors, the VIP group moving between.

director-a (priority 150) and director-b (100) share the public and inside bridges and a third
heartbeat bridge; the VIP group (198.51.100.10/24 public, 192.0.2.1/24 the real servers' gateway)
is taken by the daemons themselves. The scenario shows round-robin through the active; cuts
director-a's power (daemon SIGKILL and every link down) under continuous client requests and
measures the outage the client sees; powers it back and measures preemption; runs a planned
handover (``hacontrol drill handover``) under continuous requests: no request may fail (make
before break; connections in flight at the move are handed back to the director that NATed them,
hacontrol.ha.handoff), else the lab fails. After each move it reads the client's neighbour entry
for the VIP to show which director's MAC it holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from hacontrol.lab import traffic
from hacontrol.lab.scenario import (
    LabError,
    Report,
    Say,
    Step,
    Watch,
    continuous,
    failed,
    finish,
    in_table,
    kill_server,
    r3,
    restart_server,
    round_robin,
)
from hacontrol.lab.topology import API, REAL_SERVERS, VIP, Cluster

A, B = "director-a", "director-b"


def role(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda doc: doc.get("role") == name


def serving(doc: dict[str, Any]) -> bool:
    return doc.get("role") == "active" and all(in_table(doc, a) for a in REAL_SERVERS.values())


def missing_pieces(c: Cluster) -> list[str]:
    """What the installed hacontrol lacks for this form (empty when everything is there)."""
    missing = []
    for d in c.directors:
        argv = [sys.executable, "-m", "hacontrol", "check", "-c", str(c.write_config(d))]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            missing.append(f"`hacontrol check` refuses {d}'s ha: section: "
                           f"{(r.stderr or r.stdout).strip()[:600]}")  # fmt: skip
            break
    r = subprocess.run([sys.executable, "-m", "hacontrol", "drill", "--help"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    if r.returncode != 0:
        missing.append("the `hacontrol drill` command (planned handover)")
    return missing


class Pair:
    """The running pair: its cluster, the status watchers and the progress printer."""

    def __init__(self, c: Cluster, say: Say) -> None:
        self.c, self.say = c, say
        self.watch: dict[str, Watch] = {}

    def start(self, name: str) -> None:
        self.c.start_daemon(name)
        if name not in self.watch:
            self.watch[name] = Watch(self.c, name)

    def vip_at(self, expect: str, within: float = 5.0) -> str | None:
        """The director whose MAC the client's neighbour entry for the VIP holds, once it holds
        ``expect`` or ``within`` seconds have passed. (A gratuitous ARP that lands within the
        entry's locktime, 1 s, of the old holder's last answer is ignored by the kernel; the new
        active repeats its announcement after that window, so the entry moves within ~1.2 s.)"""
        deadline = time.monotonic() + within
        while True:
            at = self.c.holder(self.c.neighbour("client", VIP))
            if at == expect or time.monotonic() > deadline:
                return at
            time.sleep(0.05)

    def show(self) -> None:
        for d in self.c.directors:
            if self.c.daemon_alive(d):
                self.say.block(self.c.status_text(d))


def run_pair(c: Cluster, report: Report, say: Say, n: int) -> None:
    missing = missing_pieces(c)
    if missing:
        raise LabError("the HA pieces are not ready: " + "; ".join(missing))
    t = time.monotonic()
    c.build()
    say(f"built namespaces {', '.join(ns.name for ns in c.lab.namespaces.values())}")
    report.steps.append(Step("build", "client, director-a/b, rs1..rs3 on three bridges",
                             {"seconds": r3(time.monotonic() - t)}))  # fmt: skip
    p = Pair(c, say)

    t = time.monotonic()
    for d in c.directors:
        p.start(d)
    _, doc = p.watch[A].until(lambda d: True, t, 60, "an answer from director-a's API")
    if doc.get("role") == "standalone":
        raise LabError(
            "the HA pieces are not ready: the daemon runs standalone although its config has "
            "an ha: section (no HA runner wired into the daemon)"
        )
    t_a, doc = p.watch[A].until(serving, t, 60, "director-a active with three servers up")
    p.watch[B].until(role("backup"), t, 60, "director-b backup")
    report.dataplane = doc.get("dataplane", {}).get("kind")
    say(f"director-a active, director-b backup ({report.dataplane})")
    p.show()
    report.steps.append(Step("start", "both daemons started; a (priority 150) takes the VIPs",
                             {"active_s": r3(t_a - t)}))  # fmt: skip

    step = round_robin(c, n, "round-robin", say)
    step.measured["vip_at"] = p.vip_at(A)
    step.what += " through the active"
    report.steps.append(step)
    report.steps.append(kill_server(c, p.watch[A], say))
    report.steps.append(restart_server(c, p.watch[A], say))

    # power loss of the active
    load = continuous(c)
    t_cut = time.monotonic()
    c.power_off(A)
    say("director-a powered off (daemon SIGKILL, links down) under continuous requests")
    t_b, _ = p.watch[B].until(role("active"), t_cut, 30, "director-b active")
    reqs = finish(load, t_b)
    m = {
        "takeover_s": r3(t_b - t_cut), "outage_s": r3(traffic.outage(reqs, t_cut, t_b)),
        **failed(reqs, t_cut), "requests": len(traffic.between(reqs, t_cut)),
        "vip_at": p.vip_at(B),
    }  # fmt: skip
    say(f"director-b active after {m['takeover_s']}s; the client saw an outage of "
        f"{m['outage_s']}s and {m['failed']} failed requests")  # fmt: skip
    p.show()
    report.steps.append(Step("power loss", "director-a dies; b takes the VIP group", m))

    # power back: preemption
    load = continuous(c)
    t_on = time.monotonic()
    c.power_on(A)
    say("director-a powered on again")
    t_pre, _ = p.watch[A].until(serving, t_on, 60, "director-a active again (preemption)")
    p.watch[B].until(role("backup"), t_on, 30, "director-b back to backup")
    reqs = finish(load, t_pre)
    m = {
        "preempted_s": r3(t_pre - t_on), "outage_s": r3(traffic.outage(reqs, t_on, t_pre)),
        **failed(reqs, t_on), "requests": len(traffic.between(reqs, t_on)),
        "vip_at": p.vip_at(A),
    }  # fmt: skip
    say(f"director-a active again after {m['preempted_s']}s (preempt_delay "
        f"{c.timing.preempt_delay}s); {m['failed']} failed requests")  # fmt: skip
    report.steps.append(Step("power back", "director-a returns and preempts", m))

    # planned handover, then (preempt: true) a takes the VIPs back after preempt_delay
    load = continuous(c)
    t_h = time.monotonic()
    r = c.hacontrol(A, "drill", "handover", "--json", "--api", API, "-c", str(c.config_path(A)))
    if r.returncode != 0:
        load.stop()
        raise LabError(f"hacontrol drill handover failed: {(r.stderr or r.stdout).strip()}")
    t_hb, _ = p.watch[B].until(role("active"), t_h, 30, "director-b active after the handover")
    vip_at = p.vip_at(B)
    limit = c.timing.preempt_delay + 15
    t_back, _ = p.watch[A].until(role("active"), t_hb, limit, "director-a preempting back")
    reqs = finish(load, t_back)
    # the two moves are preempt_delay apart: split the requests half-way between them (the
    # status polls tell each move up to 0.1 s late)
    t_mid = (t_hb + t_back) / 2
    m = {
        "handover_s": r3(t_hb - t_h), **failed(reqs, t_h, t_mid),
        "longest_gap_s": r3(traffic.outage(reqs, t_h, t_mid)),
        "requests": len(traffic.between(reqs, t_h, t_mid)), "vip_at": vip_at,
    }  # fmt: skip
    m.update(_drill_timeline(r.stdout))
    say(f"planned handover to director-b in {m['handover_s']}s: {m['failed']} failed requests, "
        f"longest gap {m['longest_gap_s']}s")  # fmt: skip
    report.steps.append(Step("handover", "hacontrol drill handover on a, under load", m))
    if m["failed"]:  # make before break, and the connection hand-off keeps in-flight ones
        raise LabError(f"the planned handover lost {m['failed']} requests (must be 0): {m}")
    m = {
        "back_s": r3(t_back - t_hb), **failed(reqs, t_mid),
        "longest_gap_s": r3(traffic.outage(reqs, t_mid)),
        "requests": len(traffic.between(reqs, t_mid)), "vip_at": p.vip_at(A),
    }  # fmt: skip
    say(f"director-a preempted back after {m['back_s']}s: {m['failed']} failed requests")
    p.show()
    report.steps.append(Step("preempt back", "a (higher priority) takes the VIPs back", m))

    step = round_robin(c, n, "round-robin again", say)
    step.measured["vip_at"] = p.vip_at(A)
    report.steps.append(step)


def _drill_timeline(out: str) -> dict[str, float]:
    """The drill's own timeline (``hacontrol drill handover --json``), seconds from the handover:
    when the peer added the VIPs, when this node released them, their overlap and the gap."""
    try:
        doc = json.loads(out)
    except ValueError:
        return {}
    keys = ("vip_added", "released_here", "overlap", "gap")
    if not isinstance(doc, dict):
        return {}
    return {f"drill_{k}_s": round(float(doc[k]), 4) for k in keys
            if isinstance(doc.get(k), int | float)}  # fmt: skip
