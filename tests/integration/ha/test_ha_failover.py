"""Failover between two real ``hacontrol run`` daemons in namespaces (tests/integration/ha/pairlab):
the active killed with -9 (and its VIPs then expiring by their lease), the active's links going
down, a graceful SIGTERM (an immediate handover), and the higher-priority node returning and
preempting only after ``preempt_delay``. After each takeover the client's neighbour entry for the
VIP must hold the new active's MAC, changed by its announcement."""

from __future__ import annotations

import math
import signal
import time

import pytest
from nsprobe import wait_for
from pairlab import VIPS, A, B, MakePair

pytestmark = pytest.mark.root


def test_kill9_backup_takes_over_and_the_lease_removes_the_dead_nodes_vips(
    make_pair: MakePair,
) -> None:
    lease = 2.0
    pair = make_pair(lease=lease)
    pair.start_pair()
    pair.client_sees_active(A)
    held = pair.vips(A)
    assert set(held) == set(VIPS)
    assert all(left is not None and left <= math.ceil(lease) for left in held.values()), held

    t_kill = time.monotonic()
    pair.kill(A)
    pair.wait_role(B, "active", 10)
    tr = pair.last(B)
    assert (tr.frm, tr.to) == ("backup", "active") and "silent" in tr.reason, tr
    assert "dead" in tr.reason, tr
    pair.client_learns(B)

    # nobody is left in director-a's namespace to delete its VIPs: only the kernel can
    wait_for(lambda: not pair.vips(A), lease + 10, "director-a's VIPs to expire", pair.explain)
    expired_after = time.monotonic() - t_kill
    assert expired_after < lease + 10
    print(f"takeover {tr.at - t_kill:.3f}s after kill -9; A's VIPs gone {expired_after:.2f}s "
          f"after it (lease {lease}s)")  # fmt: skip

    # the new active renews its own lease: after more than a lease it still holds every VIP
    wait_for(lambda: pair.ha(B)["since_ago"] > lease + 0.5, 20, "b active for over a lease")
    held = pair.vips(B)
    assert set(held) == set(VIPS), held
    assert all(left is not None and left <= math.ceil(lease) for left in held.values()), held
    assert pair.role(B) == "active" and pair.last(B) == tr


def test_active_links_down_backup_takes_over_and_the_return_does_not_flap(
    make_pair: MakePair,
) -> None:
    pair = make_pair()
    pair.start_pair()
    pair.client_sees_active(A)

    pair.links(A, up=False)
    pair.wait_role(B, "active", 10)
    tr = pair.last(B)
    # the links go down one after the other: a may still hand over on the last one it has
    assert (tr.frm, tr.to) == ("backup", "active"), tr
    assert "silent" in tr.reason or tr.reason == f"peer {A} handed over", tr
    pair.client_learns(B)
    doc = pair.wait_role(A, "fault", 10)
    faults = doc["ha"]["faults"]
    assert any(f["blocking"] and f["reason"].endswith(" down") for f in faults), doc["ha"]
    pair.wait_vips({B})  # director-a let its VIPs go itself (no lease wait)

    pair.links(A, up=True)
    doc = pair.wait_role(A, "backup", 10)
    assert "recovered" in doc["ha"]["reason"], doc["ha"]
    # both hear each other again: director-b stays active (no preemption configured)
    wait_for(lambda: pair.peer(B)["alive"] and pair.peer(A)["role"] == "active", 10,
             "the pair to hear each other again", pair.explain)  # fmt: skip
    wait_for(lambda: pair.peer(A)["last_heard_ago"] is not None
             and pair.ha(A)["since_ago"] > 3 * pair.spec.dead, 10, "a settled pair")  # fmt: skip
    assert (pair.role(A), pair.role(B)) == ("backup", "active")
    assert pair.last(B) == tr
    pair.wait_vips({B})


def test_sigterm_hands_over_at_once(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.start_pair()
    pair.client_sees_active(A)

    t_term = time.monotonic()
    pair.signal(A, signal.SIGTERM)
    pair.wait_role(B, "active", 10)
    tr = pair.last(B)
    assert (tr.frm, tr.to) == ("backup", "active"), tr
    assert tr.reason == f"peer {A} handed over", tr  # not "silent ... (dead)"
    pair.client_learns(B)
    assert pair.exit_code(A, 30) == 0, pair.tail(A)
    assert not pair.events(B, "ha.split_brain"), "a handover overlap is not split brain"
    pair.wait_vips({B})
    stopped = pair.events(A, "ha.stopped")
    assert any(e["reason"] == "peer took over" for e in stopped), stopped
    print(f"handover on SIGTERM: b active {tr.at - t_term:.3f}s after the signal "
          f"(dead interval {pair.spec.dead:g}s)")  # fmt: skip


def test_preemption_waits_for_preempt_delay(make_pair: MakePair) -> None:
    delay = 1.5
    pair = make_pair(preempt=True, preempt_delay=delay)
    pair.start_pair()
    pair.client_sees_active(A)

    pair.kill(A)
    pair.wait_role(B, "active", 10)
    pair.client_learns(B)

    pair.start(A)  # the higher-priority node returns
    pair.wait_role(A, "active", 60)
    pair.wait_role(B, "backup", 10)
    trs = pair.transitions(A)
    assert [(t.frm, t.to) for t in trs] == [("starting", "backup"), ("backup", "active")], trs
    assert trs[0].reason == f"peer {B} is active", trs
    assert trs[1].reason.startswith("preempt:"), trs
    waited = trs[1].at - trs[0].at
    assert waited >= delay - 0.01, f"preempted {waited:.3f}s after becoming backup"
    b = pair.last(B)
    assert (b.frm, b.to) == ("active", "backup"), b
    # b let go only once a had taken over (log timestamps: one wall clock for both)
    a_took = [e for e in pair.events(A, "ha.transition") if e["to_role"] == "active"][-1]
    b_left = [e for e in pair.events(B, "ha.transition") if e["to_role"] == "backup"][-1]
    assert b_left["timestamp"] >= a_took["timestamp"], (a_took, b_left)
    pair.wait_vips({A})
    pair.client_learns(A)
    print(f"preempted {waited:.3f}s after joining as backup (preempt_delay {delay}s); "
          f"b let go: {b.reason}")  # fmt: skip
