"""The HA pair's planned handover and its heartbeat defences, between two real ``hacontrol run``
daemons in namespaces (tests/integration/ha/pairlab):

- ``hacontrol drill handover`` on the active while a client sends continuous HTTP requests to a
  real server through the VIP (nftables NAT on the directors): no request fails, the peer takes
  over by the handover (not by the dead interval), the client's entry moves to its MAC;
- forged (wrong key), truncated, oversized, replayed and wrong-version heartbeats sent at the live
  active from the peer's address (director-b's namespace): each dropped, counted by reason in
  its /metrics; a genuine one from the client's address (not a peer) is dropped by the kernel,
  in the daemon's heartbeat guard table (hacontrol.ha.guard), counted there; no role change on
  either node. The genuine packet they derive from is captured off director-b's wire;
- ``hacontrol drill fault``: the peer takes over by the dead interval, the drill's timeline says
  when, and the drilled node comes back as backup.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import time
from hashlib import sha256

import nsprobe
import pytest
from nsprobe import wait_for
from pairlab import ADDRS, HB_PORT, PUB, A, B, MakePair

from hacontrol.ha import packet as pk
from hacontrol.lab import traffic

pytestmark = pytest.mark.root

REJECTED = "hacontrol_ha_heartbeats_rejected_total"


def answers_since(load: traffic.Load, since: float) -> int:
    return sum(1 for r in load.requests() if r.ok and r.t >= since)


def test_planned_handover_under_load_fails_no_request(make_pair: MakePair) -> None:
    pair = make_pair(real_server=True)
    pair.start_pair()

    def peers_healthy() -> bool:
        return all(pair.peer(name)["healthy"] == 1 for name in (A, B))

    # both see the real server up (else b would be the worse node)
    wait_for(peers_healthy, 30, "the real server up at both")
    load = pair.load()
    t_load = time.monotonic()
    wait_for(lambda: answers_since(load, t_load) >= 20, 30, "the client's first answers")
    pair.client_learns(A)

    t0 = time.monotonic()
    r = pair.cli(A, "drill", "handover", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    pair.wait_role(B, "active", 10)
    pair.wait_role(A, "backup", 10)
    tr = pair.last(B)
    assert (tr.frm, tr.to) == ("backup", "active") and tr.reason == f"peer {A} handed over", tr
    pair.wait_vips({B})
    pair.client_learns(B)
    t1 = time.monotonic()
    wait_for(lambda: answers_since(load, t1) >= 30, 30, "answers through director-b")
    load.stop()

    reqs = load.requests()
    failed = [x for x in reqs if not x.ok]
    when = [f"started {x.t - t0:+.3f}s from the drill: {x.error}" for x in failed[:5]]
    assert not failed, f"{len(failed)} of {len(reqs)} requests failed: {when}; drill {r.stdout}"
    timeline = json.loads(r.stdout)
    assert timeline["ok"] is True and timeline["gap"] == 0.0, timeline
    steps = ("vip_added", "announcements_sent", "first_heartbeat_as_active")
    assert [timeline[k] for k in steps] == sorted(timeline[k] for k in steps), timeline
    overlap = pair.events(B, "ha.handover_overlap")
    assert overlap and not pair.events(B, "ha.split_brain"), "a handover is not split brain"
    for name in (A, B):  # the periodic heartbeats from the sender process, the rest from the
        ha = pair.ha(name)  # loop: their interleaved sequence numbers all pass the replay window
        assert ha["beat"]["sender"] == "process" and ha["beat"]["alive"], ha["beat"]
        assert ha["beat"]["sent"] > 0 and "replayed" not in ha["heartbeats"]["rejected"], ha
    gap = traffic.outage(reqs, t0, t1)
    during = len(traffic.between(reqs, t0, t1))
    print(f"handover under load: {during} requests during it, 0 failed, longest gap between "
          f"answers {gap * 1000:.0f} ms; drill: {timeline}")  # fmt: skip


def test_bad_heartbeats_are_dropped_and_counted(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.start_pair()
    pair.client_sees_active(A)
    key = (pair.workdir / "ha.key").read_bytes().strip()
    a_pub = ADDRS[A][0]

    genuine = nsprobe.capture_udp(pair.lab[B], PUB, a_pub, HB_PORT)
    msg = pk.decode(genuine, key)  # it is director-b's, and A has accepted it by now
    assert msg.node == B
    forged = pk.encode(  # "I am active with the highest priority", signed with another key
        dataclasses.replace(msg, role=pk.WireRole.ACTIVE, priority=254, effective_priority=254,
                            seq=msg.seq + 10_000),
        b"not the shared key at all",
    )  # fmt: skip
    v2 = bytearray(genuine)
    v2[4] = pk.VERSION + 1  # a well-signed packet of an unknown version
    v2[-pk.MAC_LEN :] = hmac.new(key, bytes(v2[: -pk.MAC_LEN]), sha256).digest()
    bad = {
        "bad_mac": forged,
        "truncated": genuine[:100],
        "oversized": genuine + bytes(pk.MAX_PACKET + 1 - len(genuine)),
        "replayed": genuine,
        "bad_version": bytes(v2),
    }

    n = 3
    wait_for(lambda: pair.ha(A)["heartbeats"]["received"], 10, "a receiving heartbeats")
    reasons = list(bad)
    before = {reason: pair.metric(A, REJECTED, reason=reason) for reason in reasons}
    shed = pair.guard_dropped(A)
    roles = {name: pair.transitions(name) for name in (A, B)}

    packets = [p for p in bad.values() for _ in range(n)]
    nsprobe.send_udp(pair.lab[B], a_pub, HB_PORT, packets)  # from the peer's own address
    # even genuine bytes, from an address not in ha.peers: shed by the kernel
    nsprobe.send_udp(pair.lab["client"], a_pub, HB_PORT, [genuine] * n)

    def counted() -> bool:
        ok = all(pair.metric(A, REJECTED, reason=r) == before[r] + n for r in reasons)
        return ok and pair.guard_dropped(A) == shed + n

    wait_for(
        counted,
        10,
        f"{n} drops per reason at a",
        lambda: str({r: pair.metric(A, REJECTED, reason=r) - before[r] for r in reasons}),
    )
    status_rejected = pair.ha(A)["heartbeats"]["rejected"]
    assert all(status_rejected.get(r, 0) >= n for r in reasons), status_rejected
    logged = {e["reason"] for e in pair.events(A, "ha.drop")}
    assert set(reasons) <= logged, logged
    # nothing changed: the same roles and histories, the peer still alive, the VIPs still at a
    assert {name: pair.transitions(name) for name in (A, B)} == roles
    assert (pair.role(A), pair.role(B)) == ("active", "backup")
    assert pair.peer(A)["alive"] and pair.peer(A)["priority"] == 100
    assert pair.holders() == {A}
    # and the forged "active, priority 254" never reached the state machine
    assert pair.peer(A)["role"] == "backup"


def test_fault_drill_fails_over_and_the_node_returns_as_backup(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.start_pair()
    pair.client_sees_active(A)

    r = pair.cli(A, "drill", "fault", "--seconds", "1.5", "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    timeline = json.loads(r.stdout)
    assert timeline["ok"] is True, timeline
    # b counts a dead a dead interval after the last heartbeat it heard, which a sent up to one
    # interval before the fault began
    sp = pair.spec
    assert timeline["detection"] >= sp.dead - sp.interval - 0.02, timeline
    assert timeline["gap"] >= timeline["detection"], timeline
    tr = pair.last(B)
    assert (tr.frm, tr.to) == ("backup", "active") and "silent" in tr.reason, tr
    pair.client_learns(B)
    doc = pair.wait_role(A, "backup", 10)  # the drill is over: back, without preempting
    assert [(t.frm, t.to) for t in pair.transitions(A)][-2:] == [
        ("active", "fault"),
        ("fault", "backup"),
    ], doc["ha"]["transitions"]
    pair.wait_vips({B})
    print(f"fault drill: {timeline}")
