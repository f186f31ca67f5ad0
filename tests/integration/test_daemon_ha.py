"""Two real ``hacontrol run`` daemons form an HA pair (root): a smoke test of the wiring.

Uses the lab's two-director cluster (hacontrol.lab.topology, HA form: director-a priority 150,
director-b 100 on public, inside and heartbeat bridges, a client, three real servers). Checks: one
active (the higher priority) and one backup, which removes the VIPs it found at start; the VIP
group (198.51.100.10/24 public, 192.0.2.1/24 inside gateway) only on the active; each status
shows the peer; /metrics counts heartbeats and transitions; ``hacontrol drill handover`` through
the CLI moves the VIPs (make before break) and prints a timeline; a reload that needs a restart
keeps the VIPs; SIGTERM of the active hands over (the backup's transition reason says the peer
handed over, not that it died) and the daemon exits promptly; the last node stops at once.
The full scenario suite lives elsewhere (H2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hacontrol.lab.netns import NetnsLab
from hacontrol.lab.topology import API, GATEWAY, INSIDE_IF, PUBLIC_IF, VIP, Cluster, Timing

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"
    ),
]

A, B = "director-a", "director-b"
GROUP = {VIP, GATEWAY}
# no preemption during the test's lifetime: after the handover a stays backup
TIMING = Timing(preempt_delay=600.0)


def status(c: Cluster, name: str) -> dict[str, Any] | None:
    r = c.hacontrol(name, "status", "--api", API, "--json", timeout=30)
    if r.returncode != 0:
        return None
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def vips_on(c: Cluster, name: str) -> set[str]:
    """The VIP group addresses configured in ``name``'s namespace."""
    found = set()
    for ifname in (PUBLIC_IF, INSIDE_IF):
        r = c.ns(name).ip("-j", "addr", "show", "dev", ifname, check=False)
        for link in json.loads(r.stdout or "[]"):
            for a in link.get("addr_info", []):
                if a.get("local") in GROUP:
                    found.add(a["local"])
    return found


def until(cond: Callable[[], Any], timeout: float, what: str, c: Cluster) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            logs = {d: c.log_path(d).read_text()[-3000:] for d in (A, B) if c.log_path(d).exists()}
            raise AssertionError(f"timed out waiting for {what}; logs: {logs}")
        time.sleep(0.1)


def roles(c: Cluster) -> tuple[str | None, str | None]:
    sa, sb = status(c, A), status(c, B)
    return (sa or {}).get("role"), (sb or {}).get("role")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    lab = NetnsLab()
    try:
        c = Cluster(lab, tmp_path, ha=True, timing=TIMING)
        c.build()
        yield c
        for d in (A, B):
            c.kill_daemon(d, signal.SIGKILL)
    finally:
        lab.close()


def test_pair_elects_hands_over_and_stops_gracefully(cluster: Cluster) -> None:
    c = cluster
    # b finds the VIP group configured at start (a leftover): it listens first, then, being the
    # backup, removes it
    c.ns(B).addr(PUBLIC_IF, f"{VIP}/24")
    c.ns(B).addr(INSIDE_IF, f"{GATEWAY}/24")
    assert vips_on(c, B) == GROUP
    for d in (A, B):
        c.start_daemon(d)
    until(lambda: roles(c) == ("active", "backup"), 60, "a active, b backup", c)
    until(lambda: vips_on(c, A) == GROUP and not vips_on(c, B), 30, "the VIPs on a only", c)

    sa, sb = status(c, A), status(c, B)
    assert sa is not None and sb is not None
    assert sa["ha"]["peer"]["name"] == B and sa["ha"]["peer"]["role"] == "backup"
    assert sb["ha"]["peer"]["name"] == A and sb["ha"]["peer"]["role"] == "active"
    assert sa["ha"]["config"]["peer_match"] is True and sb["ha"]["config"]["peer_match"] is True
    assert sa["ha"]["vips_held"] and not sb["ha"]["vips_held"]
    assert sa["ha"]["peer"]["paths"], "the peer's paths are listed"
    text = c.status_text(A)
    assert "ha role ACTIVE" in text and f"peer {B} backup" in text
    assert text.index("ha role") < text.index("web "), "the HA block is above the services"

    # planned handover through the CLI (token from the config's api.token_file)
    r = c.hacontrol(A, "drill", "handover", "--api", API, "-c", str(c.config_path(A)), "--json",
                    timeout=90)  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    drill = json.loads(r.stdout)
    assert drill["drill"] == "handover" and drill["ok"] is True
    assert drill["vip_added"] is not None and drill["released_here"] is not None
    # make before break, on this node's clock: released only after hearing the peer active
    # (which says "active" only once it holds the VIPs)
    assert drill["released_here"] >= drill["first_heartbeat_as_active"], drill
    until(lambda: roles(c) == ("backup", "active"), 30, "b active, a backup", c)
    until(lambda: vips_on(c, B) == GROUP and not vips_on(c, A), 30, "the VIPs on b only", c)

    # a drill without the token is refused
    r = c.hacontrol(B, "drill", "handover", "--api", API, "--token-file", "/dev/null")
    assert r.returncode != 0 and "401" in r.stderr

    # the HA series of /metrics count heartbeats both ways and the transitions
    metrics = c.ns(B).run(
        sys.executable, "-c", f"import urllib.request as u; print(u.urlopen('http://{API}/metrics')"
        ".read().decode())", check=False,
    ).stdout  # fmt: skip
    assert series(metrics, "hacontrol_ha_heartbeats_sent_total") > 0
    assert series(metrics, "hacontrol_ha_heartbeats_received_total") > 0
    assert series(metrics, 'hacontrol_ha_transitions_total{from_role="backup",to_role="active"}')
    assert series(metrics, 'hacontrol_ha_role{role="active"}') == 1

    # a reload with an ha change that needs a restart keeps the VIPs where they are
    path = c.config_path(B)
    path.write_text(path.read_text().replace("priority: 100", "priority: 90"))
    r = c.hacontrol(B, "reload", "-c", str(path))
    assert r.returncode == 0 and "needs a restart (running values kept): ha.priority" in r.stdout
    assert vips_on(c, B) == GROUP and (status(c, B) or {}).get("role") == "active"

    # SIGTERM of the active: it hands over first, then exits promptly
    p = c.daemons.pop(B)
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGTERM)
    rc = p.wait(timeout=30)
    took = time.monotonic() - t0
    assert rc == 0
    assert not vips_on(c, B), "the stopped daemon released its VIPs"
    until(lambda: (status(c, A) or {}).get("role") == "active", 30, "a active after b's stop", c)
    until(lambda: vips_on(c, A) == GROUP, 30, "the VIPs back on a", c)
    sa = status(c, A)
    assert sa is not None
    last = sa["ha"]["transitions"][-1]
    assert last["to"] == "active" and "handed over" in last["reason"], last
    # bounded: the handover waits for the peer (a few heartbeats), then the rest stops in < 1 s
    assert took < 1.0 + TIMING.hb_interval * 2 * TIMING.dead_after * 2, took
    log = c.log_path(B).read_text()
    stopped = [json.loads(ln) for ln in log.splitlines() if '"ha.stopped"' in ln]
    assert stopped and stopped[-1]["graceful"] is True
    print(f"SIGTERM of the active (live backup): exit after {took:.3f}s")

    # the last node stops at once: its peer is gone (it neither waits for a handover)
    p = c.daemons.pop(A)
    t0 = time.monotonic()
    os.killpg(p.pid, signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    took = time.monotonic() - t0
    assert not vips_on(c, A)
    assert "handover timed out" not in c.log_path(A).read_text()
    print(f"SIGTERM of the last node: exit after {took:.3f}s")


def series(text: str, name: str) -> float:
    """The sum of the samples of ``name`` (a metric name, or a name with its labels)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total
