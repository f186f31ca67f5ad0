"""Split brain and stalls between two real ``hacontrol run`` daemons in namespaces: the active
SIGSTOPped past the dead interval then continued, a backup SIGSTOPped for 2 s, and a
heartbeat-only partition (nftables drops UDP 5405 in one namespace) with the gateway reachable
(both go active; after healing exactly one stays and re-announces) and with the gateway lost on
the cut-off side (it does not take over)."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from typing import Any

import pytest
from nsprobe import wait_for
from pairlab import VIPS, A, B, HaPair, MakePair

pytestmark = pytest.mark.root

ANNOUNCED = "hacontrol_ha_announcements_total"


def received(pair: HaPair, name: str) -> int:
    return sum(pair.ha(name)["heartbeats"]["received"].values())


def wall(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def one_active(pair: HaPair, active: str, backup: str) -> bool:
    return (pair.role(active), pair.role(backup)) == ("active", "backup")


def test_active_stopped_past_the_dead_interval_then_continued(make_pair: MakePair) -> None:
    pair = make_pair(lease=10.0)  # the stopped node's VIPs outlive the stop: a real split brain
    pair.start_pair()
    pair.client_sees_active(A)

    pair.signal(A, signal.SIGSTOP)
    pair.wait_role(B, "active", 10)
    tr = pair.last(B)
    assert "silent" in tr.reason, tr
    pair.client_learns(B)
    # b's takeover burst is over (a burst still running would cover a re-announce)
    bursts = wait_for(lambda: len(pair.events(B, "ha.announce")), 10, "b's announce burst")
    announced = pair.metric(B, ANNOUNCED)
    assert set(pair.vips(A)) == set(VIPS), "the stopped node still has its VIPs (lease 10s)"

    t_cont = time.monotonic()
    pair.signal(A, signal.SIGCONT)
    wait_for(lambda: one_active(pair, B, A), 10, "exactly one active (b)", pair.explain)
    a = pair.last(A)
    assert (a.frm, a.to) == ("active", "backup"), a
    assert "stalled" in a.reason or "split brain" in a.reason, a
    assert pair.last(B) == tr  # the winner never let go
    # a noticed its own stall, and yielded within about one interval of hearing b again
    stall = pair.events(A, "ha.stall")
    yielded = [e for e in pair.events(A, "ha.transition") if e["to_role"] == "backup"]
    assert stall and yielded, (stall, yielded)
    took = wall(yielded[-1]) - wall(stall[-1])
    assert 0 <= took <= 1.0, f"a yielded {took:.3f}s after noticing its stall"
    # the winner re-announces, and the client's entry stays on it
    wait_for(lambda: len(pair.events(B, "ha.announce")) > bursts, 10, "b re-announcing",
             pair.explain)  # fmt: skip
    assert pair.metric(B, ANNOUNCED) > announced
    reassert = pair.events(B, "ha.split_brain") + pair.events(B, "ha.peer_returned")
    assert reassert, "b logged no split brain / peer return"
    pair.wait_vips({B})
    pair.client_learns(B)
    print(f"a yielded {took * 1000:.0f} ms after noticing its stall, "
          f"{a.at - t_cont:.3f}s after SIGCONT; b: {reassert[-1]['reason']}")  # fmt: skip


def test_backup_stopped_for_2s_does_not_seize_the_vips(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.start_pair()
    pair.client_sees_active(A)
    a_before, b_before = pair.transitions(A), pair.transitions(B)

    pair.signal(B, signal.SIGSTOP)
    time.sleep(2.0)  # the scenario itself: a backup frozen for 2 s
    pair.signal(B, signal.SIGCONT)
    # it must notice the stall, then hear 3 dead intervals' worth of fresh heartbeats (2 paths)
    wait_for(lambda: pair.events(B, "ha.stall"), 10, "b noticing its stall", pair.explain)
    base = received(pair, B)
    fresh = 2 * 3 * pair.spec.dead_after
    wait_for(lambda: received(pair, B) >= base + fresh, 15, "fresh heartbeats at b")
    assert pair.transitions(B) == b_before, pair.transitions(B)
    assert pair.transitions(A) == a_before, pair.transitions(A)
    assert (pair.role(A), pair.role(B)) == ("active", "backup")
    assert pair.holders() == {A}
    pair.client_learns(A)


def test_heartbeat_partition_with_gateway_heals_to_one_active(make_pair: MakePair) -> None:
    pair = make_pair(gateway=True)
    pair.start_pair()
    pair.client_sees_active(A)

    pair.block(B, heartbeats=True)  # both still reach the gateway
    pair.wait_role(B, "active", 10)
    assert "silent" in pair.last(B).reason
    pair.client_learns(B)  # b announced: the client now goes to b
    assert pair.role(A) == "active"  # a too: split brain, as expected in a partition
    assert pair.holders() == {A, B}

    t_heal = time.monotonic()
    pair.unblock(B)
    wait_for(lambda: one_active(pair, A, B), 10, "exactly one active (a)", pair.explain)
    b = pair.last(B)
    assert (b.frm, b.to) == ("active", "backup") and "split brain" in b.reason, b
    # they hear each other within an interval of the heal; resolving takes about one more
    assert b.at - t_heal <= 1.0, f"b yielded {b.at - t_heal:.3f}s after the partition ended"
    pair.wait_vips({A})
    pair.client_learns(A)  # the winner re-announced
    assert pair.events(A, "ha.split_brain") or pair.events(A, "ha.peer_returned")
    print(f"split brain healed: b backup {b.at - t_heal:.3f}s after the partition ended")


def test_heartbeat_partition_without_gateway_does_not_take_over(make_pair: MakePair) -> None:
    pair = make_pair(gateway=True)
    pair.start_pair()
    pair.client_sees_active(A)

    pair.block(B, gateway=True)  # b loses its gateway first...
    doc = pair.wait_role(B, "fault", 10)
    assert "gateway" in doc["ha"]["reason"] and "unreachable" in doc["ha"]["reason"], doc["ha"]
    b_before = pair.transitions(B)
    pair.block(B, gateway=True, heartbeats=True)  # ...then the heartbeats too

    dead = pair.spec.dead

    def cut_off(name: str) -> bool:
        peer = pair.peer(name)
        return not peer["alive"] and peer["last_heard_ago"] >= 3 * dead

    wait_for(lambda: cut_off(B) and cut_off(A), 10, "both silent for 3 dead intervals")
    assert pair.transitions(B) == b_before and pair.role(B) == "fault"
    assert pair.role(A) == "active"
    assert pair.holders() == {A}
    pair.client_learns(A)

    pair.unblock(B)
    doc = pair.wait_role(B, "backup", 10)
    assert "recovered" in doc["ha"]["reason"], doc["ha"]
    wait_for(lambda: pair.peer(B)["alive"], 10, "b hearing a again")
    assert pair.role(A) == "active" and pair.holders() == {A}


def test_gateway_and_heartbeats_lost_at_once_never_take_the_vips(make_pair: MakePair) -> None:
    # the gateway check (5 x 100 ms) is slower than the dead interval (3 x 100 ms): the backup
    # confirms its gateway with a fresh probe before it takes over, and that probe goes unanswered
    pair = make_pair(gateway=True, gateway_fall=5)
    pair.start_pair()
    pair.client_sees_active(A)
    b_before = pair.transitions(B)

    pair.block(B, gateway=True, heartbeats=True)
    dead = pair.spec.dead
    wait_for(lambda: pair.role(B) == "fault" and pair.peer(B)["last_heard_ago"] >= 3 * dead,
             10, "b cut off and without its gateway", pair.explain)  # fmt: skip
    assert [t.to for t in pair.transitions(B)[len(b_before) :]] == ["fault"], pair.transitions(B)
    assert pair.events(B, "ha.takeover_held"), "b did not hold back on its unanswered probe"
    assert pair.client_neighbour() == pair.mac(A)  # nobody sent the client elsewhere
