"""The HA election (hacontrol.ha.election), table-driven: who wins, effective priority, starved,
who can serve or take over, and the split-brain verdict."""

from __future__ import annotations

import pytest

from hacontrol.ha import election
from hacontrol.ha.election import Standing
from hacontrol.ha.fsm_types import PeerView, Role


def peer(
    role: Role = Role.BACKUP,
    *,
    blocked: bool = False,
    yielding: bool = False,
    healthy: int = 1,
    handover: bool = False,
    prio: int = 100,
) -> PeerView:
    return PeerView("b", role, prio, prio, blocked, yielding, healthy, 0.0, True, handover)


A = Standing("a", blocked=False, starved=False, effective_priority=100)


@pytest.mark.parametrize(
    ("me", "them", "won"),
    [
        (A, Standing("b", False, False, 100), True),  # tie: the lower name
        (Standing("c", False, False, 100), Standing("b", False, False, 100), False),
        (A, Standing("b", False, False, 101), False),  # higher effective priority
        (Standing("c", False, False, 90), Standing("b", False, False, 80), True),
        (Standing("c", False, False, 0), Standing("b", True, False, 200), True),  # unblocked
        (A, Standing("b", False, True, 200), True),  # not starved beats starved
        (Standing("a", False, True, 200), Standing("b", False, False, 1), False),
        (Standing("a", True, False, 200), Standing("b", False, True, 0), False),  # blocked first
    ],
)
def test_wins(me: Standing, them: Standing, won: bool) -> None:
    assert election.wins(me, them) is won
    if (me.blocked, me.starved, me.effective_priority) != (
        them.blocked,
        them.starved,
        them.effective_priority,
    ):
        assert election.wins(them, me) is not won  # exactly one side wins


@pytest.mark.parametrize(
    ("priority", "penalty", "hits", "want"),
    [(100, 50, 0, 100), (100, 50, 1, 50), (100, 50, 2, 0), (100, 50, 3, 0), (100, 30, 1, 70)],
)
def test_effective_priority(priority: int, penalty: int, hits: int, want: int) -> None:
    assert election.effective_priority(priority, penalty, hits) == want


@pytest.mark.parametrize(
    ("healthy", "total", "pv", "alive", "want"),
    [
        (0, 2, peer(healthy=1), True, True),
        (0, 2, peer(healthy=1), False, False),  # a dead peer serves nothing
        (0, 2, peer(healthy=0), True, False),  # nobody has healthy servers: no penalty
        (1, 2, peer(healthy=1), True, False),
        (0, 0, peer(healthy=1), True, False),  # no real servers configured here
        (0, 2, None, False, False),
    ],
)
def test_starved(healthy: int, total: int, pv: PeerView | None, alive: bool, want: bool) -> None:
    assert election.starved(healthy, total, pv, alive) is want


@pytest.mark.parametrize(
    ("pv", "serving", "able"),
    [
        (None, False, False),
        (peer(Role.BACKUP), False, True),
        (peer(Role.STARTING), False, True),
        (peer(Role.ACTIVE), False, False),
        (peer(Role.FAULT), True, False),
        (peer(Role.STOPPING), True, False),
        (peer(Role.BACKUP, blocked=True), True, False),
    ],
)
def test_not_serving_and_able_to_take(pv: PeerView | None, serving: bool, able: bool) -> None:
    assert election.not_serving(pv) is serving
    assert election.able_to_take(pv) is able


def test_describe() -> None:
    assert election.describe(peer(Role.ACTIVE, prio=70)) == "b (active, priority 70)"


ACT = Role.ACTIVE


@pytest.mark.parametrize(
    ("yielding", "stalled", "won", "pv", "verdict", "why"),
    [
        (True, False, True, peer(ACT), "lose", "this node is handing over"),
        (True, True, True, peer(ACT), "lose", "took over while this node was stalled"),
        (False, False, False, peer(ACT, yielding=True, handover=True), "overlap", "handing over"),
        (False, False, False, peer(ACT, yielding=True), "keep", "the peer is yielding"),
        (False, False, True, peer(ACT), "keep", "split brain: won election against b"),
        (False, False, False, peer(ACT), "lose", "split brain: lost election against b"),
        (True, False, True, peer(ACT, yielding=True), "keep", "won election"),  # both yield
        (True, False, False, peer(ACT, yielding=True), "lose", "lost election"),
    ],
)
def test_split_brain(
    yielding: bool, stalled: bool, won: bool, pv: PeerView, verdict: str, why: str
) -> None:
    got, reason = election.split_brain(yielding, stalled, won, pv)
    assert got == verdict
    assert why in reason
