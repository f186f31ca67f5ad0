"""The HA role state machine: every transition in the table, the refusal of every other move, and
two-node simulations (election, split brain, preemption, stalls, handover, faults, stop)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import pytest

from hacontrol.ha import fsm
from hacontrol.ha import fsm_types as ft
from hacontrol.ha.fsm import Machine, Params
from hacontrol.ha.fsm_types import (
    Announce,
    DrillFault,
    DrillHandover,
    GatewayChecked,
    LocalFault,
    LocalHealth,
    Log,
    Notify,
    PeerHeard,
    ProbeGateway,
    ReleaseVips,
    Role,
    SendHeartbeatNow,
    Start,
    Stop,
    TakeVips,
    Tick,
)

P = Params(node="b", priority=100, interval=1.0, dead_after=3, preempt=True, preempt_delay=10.0)


def new(now: float = 0.0, vips_present: bool = False, **kw: object) -> Machine:
    m = Machine(dataclasses.replace(P, **kw), now)  # type: ignore[arg-type]
    m.step(Start(now, vips_present))
    return m


def heard(now: float, role: Role, eff: int = 50, name: str = "a", **kw: object) -> PeerHeard:
    return PeerHeard(now, name, role, 150, eff, **kw)  # type: ignore[arg-type]


def fault(now: float, failed: bool = True, blocking: bool = True) -> LocalFault:
    return LocalFault(now, "gateway:192.0.2.1", failed, blocking, "gateway lost")


def role_of(m: Machine) -> Role:
    """The role, read through a call (mypy would otherwise keep an earlier narrowing)."""
    return m.role


def ticks(start: float, stop: float, step: float = 1.0) -> list[ft.Event]:
    n = round((stop - start) / step)
    return [Tick(start + i * step) for i in range(n + 1)]


def feed(m: Machine, events: Sequence[ft.Event]) -> list[ft.Action]:
    out: list[ft.Action] = []
    for ev in events:
        out += m.step(ev)
    return out


def reached(m: Machine, role: Role) -> bool:
    return any(t.to_role is role for t in m.history)


# Each row: (from, to, events from a fresh machine at t=0, a word in the last transition's reason)
S = Role
TRANSITION_CASES: list[tuple[Role, Role, list[ft.Event], str]] = [
    (S.STARTING, S.BACKUP, [heard(0.5, S.ACTIVE)], "is active"),
    (S.STARTING, S.ACTIVE, ticks(0, 3), "no peer heard"),
    (S.STARTING, S.ACTIVE, [heard(0.5, S.BACKUP, eff=50), *ticks(1, 3)], "won election"),
    (S.STARTING, S.ACTIVE, [heard(0.5, S.ACTIVE, handover=True)], "handed over"),
    (S.STARTING, S.FAULT, [fault(0.2), *ticks(1, 3)], "gateway lost"),
    (S.STARTING, S.STOPPING, [Stop(0.5)], "stop"),
    (S.BACKUP, S.ACTIVE, [heard(0.5, S.ACTIVE), *ticks(1, 4)], "silent"),
    (S.BACKUP, S.ACTIVE, [heard(0.5, S.ACTIVE), heard(1, S.ACTIVE, handover=True)], "handed over"),
    (S.BACKUP, S.ACTIVE, [heard(0.5, S.ACTIVE), heard(1, S.FAULT, blocked=True)], "no active"),
    (S.BACKUP, S.ACTIVE, [heard(0.5, S.ACTIVE), heard(1, S.BACKUP, eff=50)], "won election"),
    (S.BACKUP, S.ACTIVE, [*(heard(t / 2, S.ACTIVE, eff=90) for t in range(25))], "preempt"),
    (S.BACKUP, S.FAULT, [heard(0.5, S.ACTIVE), fault(1)], "gateway lost"),
    (S.BACKUP, S.STOPPING, [heard(0.5, S.ACTIVE), Stop(1)], "stop"),
    (S.ACTIVE, S.BACKUP, [*ticks(0, 3), heard(3.5, S.ACTIVE, eff=150)], "split brain: lost"),
    (
        S.ACTIVE,
        S.BACKUP,
        [*ticks(0, 3), heard(3.5, S.BACKUP), DrillHandover(4), heard(4.5, S.ACTIVE)],
        "handing over",
    ),
    (S.ACTIVE, S.FAULT, [*ticks(0, 3), DrillFault(3.5, 5)], "drill"),
    (
        S.ACTIVE,
        S.FAULT,
        [*ticks(0, 3), heard(3.5, S.BACKUP, eff=100), fault(4), heard(4.5, S.ACTIVE)],
        "handing over",
    ),
    (S.ACTIVE, S.STOPPING, [*ticks(0, 3), Stop(3.5)], "stop"),
    (S.FAULT, S.BACKUP, [heard(0.5, S.ACTIVE), fault(1), fault(2, failed=False)], "recovered"),
    (S.FAULT, S.STOPPING, [fault(0.5), *ticks(1, 3), Stop(4)], "stop"),
]


def test_cases_cover_every_transition_in_the_table() -> None:
    table = {(a, b) for a, tos in fsm.TRANSITIONS.items() for b in tos}
    assert {(a, b) for a, b, _, _ in TRANSITION_CASES} == table


@pytest.mark.parametrize(
    ("frm", "to", "events", "why"),
    TRANSITION_CASES,
    ids=[f"{a.name}->{b.name}:{w}" for a, b, _, w in TRANSITION_CASES],
)
def test_transition(frm: Role, to: Role, events: list[ft.Event], why: str) -> None:
    m = new()
    acts = feed(m, events)
    last = m.history[-1]
    assert (last.from_role, last.to_role) == (frm, to)
    assert why in last.reason
    assert Notify(to.name.lower(), last.reason) in acts
    moves = [a for a in acts if isinstance(a, ft.Transition)]
    assert moves[-1] == last  # the typed action is the history record
    assert not [a for a in acts if isinstance(a, Log) and a.event == "ha.transition"]
    if to is Role.ACTIVE:
        assert any(isinstance(a, TakeVips) for a in acts) and Announce() in acts
    if to in (Role.BACKUP, Role.FAULT) and frm is not Role.STARTING:
        assert ReleaseVips() in acts


ILLEGAL = [(a, b) for a, b in itertools.product(Role, Role) if b not in fsm.TRANSITIONS[a]]


@pytest.mark.parametrize(("frm", "to"), ILLEGAL, ids=[f"{a.name}->{b.name}" for a, b in ILLEGAL])
def test_illegal_move_refused(frm: Role, to: Role) -> None:
    m = new()
    m.role = frm
    with pytest.raises(fsm.IllegalTransition):
        m.move(1.0, to, "test")
    assert m.role is frm and len(m.history) == 0


def test_no_peer_waits_full_dead_interval() -> None:
    m = new()
    feed(m, ticks(0, 2))
    assert role_of(m) is Role.STARTING
    feed(m, [Tick(3.0)])
    assert role_of(m) is Role.ACTIVE


def test_startup_adopts_present_vips_when_it_should_be_active() -> None:
    m = new(vips_present=True)
    acts = feed(m, ticks(0, 3))
    assert TakeVips(adopt=True) in acts and ReleaseVips() not in acts


def test_startup_releases_present_vips_when_peer_active() -> None:
    m = new(vips_present=True)
    acts = feed(m, [heard(0.5, Role.ACTIVE)])
    assert role_of(m) is Role.BACKUP and ReleaseVips() in acts


def test_backup_does_not_declare_dead_within_dead_interval() -> None:
    m = new()
    feed(m, [heard(0.5, Role.ACTIVE), *ticks(1, 3)])
    assert role_of(m) is Role.BACKUP  # 2.5 s of silence < 3 s
    feed(m, [Tick(3.6)])
    assert role_of(m) is Role.ACTIVE


def test_lost_gateway_never_takes_over() -> None:
    m = new()
    feed(m, [heard(0.5, Role.ACTIVE), fault(1), *ticks(2, 30)])
    assert role_of(m) is Role.FAULT and not reached(m, Role.ACTIVE)
    feed(m, [fault(31, failed=False), Tick(32)])
    assert role_of(m) is Role.BACKUP  # recovered: listens a fresh dead interval first
    feed(m, ticks(33, 35))
    assert role_of(m) is Role.ACTIVE


def test_blocked_active_without_peer_lets_go() -> None:
    m = new()
    feed(m, [*ticks(0, 3)])
    acts = feed(m, [fault(3.5)])
    assert role_of(m) is Role.FAULT and ReleaseVips() in acts
    assert "no peer heard" in m.history[-1].reason


def test_blocked_active_keeps_vips_when_peer_is_blocked_too() -> None:
    m = new()
    feed(m, [*ticks(0, 3), heard(3.2, Role.BACKUP, blocked=True), fault(3.5), Tick(4)])
    assert role_of(m) is Role.ACTIVE and not m.handing_over


def test_nonblocking_fault_lowers_priority_only() -> None:
    m = new()
    feed(m, [LocalFault(0.1, "interface:eth1", True, False, "eth1 down")])
    assert m.effective_priority(0.2) == 50 and not m.blocked


def test_health_aware_priority() -> None:
    m = new()
    feed(m, [LocalHealth(0.1, 0, 3), heard(0.2, Role.ACTIVE, eff=150, healthy=2)])
    assert m.effective_priority(0.3) == 50
    feed(m, [heard(0.4, Role.ACTIVE, eff=150, healthy=0)])
    assert m.effective_priority(0.5) == 100  # nobody has healthy servers: no penalty


@pytest.mark.parametrize(
    ("preempt", "delay", "expect_at"),
    [(True, 10.0, 10.0), (True, 0.0, 0.0), (False, 10.0, None)],
)
def test_preempt_delay(preempt: bool, delay: float, expect_at: float | None) -> None:
    m = new(preempt=preempt, preempt_delay=delay)
    feed(m, [heard(i / 2, Role.ACTIVE, eff=90) for i in range(60)])
    became = [t.at for t in m.history if t.to_role is Role.ACTIVE]
    assert became == ([expect_at] if expect_at is not None else [])


def test_preempt_timer_restarts_when_condition_breaks() -> None:
    m = new(preempt_delay=3.0)
    feed(
        m,
        [
            heard(0, Role.ACTIVE, eff=90),
            heard(1, Role.ACTIVE, eff=90),
            heard(2, Role.ACTIVE, eff=120),
            heard(3, Role.ACTIVE, eff=90),
            heard(5, Role.ACTIVE, eff=90),
        ],
    )
    assert role_of(m) is Role.BACKUP
    feed(m, [heard(6, Role.ACTIVE, eff=90)])
    assert role_of(m) is Role.ACTIVE


def test_equal_priority_never_preempts() -> None:
    m = new(preempt_delay=0.0)
    feed(m, [heard(t / 2, Role.ACTIVE, eff=100, name="z") for t in range(20)])
    assert role_of(m) is Role.BACKUP


@pytest.mark.parametrize(
    ("me", "peer", "i_win"), [("alpha", "beta", True), ("beta", "alpha", False)]
)
def test_tie_broken_by_lower_name(me: str, peer: str, i_win: bool) -> None:
    m = new(node=me)
    feed(m, [*ticks(0, 3), heard(3.5, Role.ACTIVE, eff=100, name=peer)])
    assert (role_of(m) is Role.ACTIVE) == i_win


def test_stall_does_not_declare_peer_dead() -> None:
    m = new()
    feed(m, [heard(0.5, Role.ACTIVE, eff=150), Tick(1.0)])
    acts = m.step(Tick(9.0))  # the loop was frozen for 8 s
    assert role_of(m) is Role.BACKUP
    assert any(isinstance(a, Log) and a.event == "ha.stall" for a in acts)
    feed(m, [heard(9.1, Role.ACTIVE, eff=150), *ticks(10, 11)])
    assert role_of(m) is Role.BACKUP
    feed(m, ticks(12, 13))  # but a peer that then stays silent a full dead interval is dead
    assert role_of(m) is Role.ACTIVE


def test_stall_detected_on_packet_before_tick() -> None:
    m = new()
    feed(m, [heard(0.5, Role.ACTIVE), Tick(1.0), heard(9.0, Role.ACTIVE), Tick(9.01)])
    assert m.listen_until >= 12.0 and role_of(m) is Role.BACKUP


def test_handover_timeout_keeps_vips() -> None:
    m = new()
    feed(m, [*ticks(0, 3), heard(3.5, Role.BACKUP), DrillHandover(4)])
    assert m.handing_over and m.yielding
    acts = feed(m, [heard(t, Role.BACKUP) for t in (4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 10.5, 11.5)])
    assert role_of(m) is Role.ACTIVE and not m.handing_over
    assert any(isinstance(a, Log) and a.event == "ha.handover_failed" for a in acts)


def test_handover_refused_without_able_peer() -> None:
    m = new()
    acts = feed(m, [*ticks(0, 3), DrillHandover(3.5)])
    assert not m.handing_over
    assert any(isinstance(a, Log) and a.event == "ha.handover_refused" for a in acts)


def test_fault_drill_is_silent_then_recovers_as_backup() -> None:
    m = new()
    feed(m, [*ticks(0, 3), DrillFault(3.5, 2.0)])
    assert role_of(m) is Role.FAULT and m.silent
    feed(m, [heard(4.0, Role.ACTIVE), Tick(5.6)])
    assert role_of(m) is Role.BACKUP and not m.silent


def test_stop_when_not_active_releases_at_once() -> None:
    m = new()
    acts = feed(m, [heard(0.5, Role.ACTIVE), Stop(1.0)])
    assert m.done and ReleaseVips() in acts


def test_stop_active_waits_for_peer_then_releases() -> None:
    m = new()
    feed(m, [*ticks(0, 3), heard(3.5, Role.BACKUP)])
    acts = m.step(Stop(4.0))
    assert role_of(m) is Role.STOPPING and m.handing_over and not m.done
    assert ReleaseVips() not in acts and SendHeartbeatNow() in acts
    assert m.step(heard(4.1, Role.BACKUP)) == []
    acts = m.step(heard(4.2, Role.ACTIVE))
    assert m.done and ReleaseVips() in acts
    assert m.step(Tick(5.0)) == []


def test_stop_active_releases_after_timeout_without_peer_taking() -> None:
    m = new()
    feed(m, [*ticks(0, 3), heard(3.5, Role.BACKUP)])
    m.step(Stop(4.0))
    acts = feed(m, ticks(5, 12))
    assert m.done and ReleaseVips() in acts


@pytest.mark.parametrize("peer_role", [Role.STOPPING, Role.FAULT, Role.ACTIVE])
def test_stop_active_does_not_wait_for_a_peer_that_cannot_take(peer_role: Role) -> None:
    m = new()
    feed(m, [*ticks(0, 3)])
    assert role_of(m) is Role.ACTIVE
    m.step(heard(3.5, peer_role, blocked=peer_role is Role.FAULT))
    assert role_of(m) is Role.ACTIVE  # an active peer (priority 50) lost the split brain
    acts = m.step(Stop(3.6))
    assert m.done and not m.handing_over and ReleaseVips() in acts


def test_config_digest_mismatch_is_logged_once() -> None:
    m = new()
    acts = feed(m, [heard(t / 2, Role.ACTIVE, digest_match=False) for t in range(4)])
    assert [a.level for a in acts if isinstance(a, Log) and a.event == "ha.config_mismatch"] == [
        "error"
    ]


# -- a tracked gateway is confirmed before taking over from a dead peer -----------------------

SILENT = [heard(0.5, Role.ACTIVE), *ticks(1, 4)]  # the peer is dead at 3.5; the tick at 4 sees it
GW_OK, GW_DOWN = GatewayChecked(4.01, True), GatewayChecked(4.01, False, "gateway x no answer")

# (case, events, role after, ProbeGateway count, log events expected, a word of the reason)
GATEWAY_CASES: list[tuple[str, list[ft.Event], Role, int, set[str], str]] = [
    ("probe first, take on the answer", [*SILENT, GW_OK], S.ACTIVE, 1,
     {"ha.gateway_confirm"}, "gateway answered"),
    ("no answer: stays backup", [*SILENT, GW_DOWN, Tick(4.5)], S.BACKUP, 1,
     {"ha.gateway_confirm", "ha.takeover_held"}, ""),
    ("retried an interval after a miss, then takes",
     [*SILENT, GW_DOWN, Tick(5.0), Tick(6.0), GatewayChecked(6.01, True)], S.ACTIVE, 2,
     {"ha.gateway_confirm", "ha.takeover_held"}, "silent"),
    ("an unanswered probe times out and is retried", [*SILENT, *ticks(4.25, 6, 0.25)], S.BACKUP,
     2, {"ha.gateway_confirm", "ha.takeover_held"}, ""),
    ("peer heard again: the late answer is ignored",
     [*SILENT, heard(4.005, Role.ACTIVE), GW_OK, Tick(4.5)], S.BACKUP, 1, set(), ""),
    ("gateway fault meanwhile: fault, the answer ignored", [*SILENT, fault(4.005), GW_OK],
     S.FAULT, 1, set(), "gateway lost"),
    ("starting without a peer: probe first", [*ticks(0, 3), GatewayChecked(3.01, True)],
     S.ACTIVE, 1, {"ha.gateway_confirm"}, "no peer heard"),
    ("starting without a peer nor gateway answer", ticks(0, 5), S.STARTING, 2,
     {"ha.takeover_held"}, ""),
    ("an answer from an earlier episode does not count",
     [*ticks(0, 3), GatewayChecked(3.01, True), heard(3.5, Role.ACTIVE, eff=150), *ticks(4, 7)],
     S.BACKUP, 2, {"ha.gateway_confirm"}, "split brain"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("events", "role", "probes", "logged", "why"),
    [c[1:] for c in GATEWAY_CASES],
    ids=[c[0] for c in GATEWAY_CASES],
)
def test_gateway_confirmed_before_taking_over(
    events: list[ft.Event], role: Role, probes: int, logged: set[str], why: str
) -> None:
    m = new(confirm_gateway=True, confirm_timeout=0.5)
    acts = feed(m, events)
    assert role_of(m) is role
    assert acts.count(ProbeGateway()) == probes
    events_logged = [a.event for a in acts if isinstance(a, Log)]
    assert logged <= set(events_logged)
    assert events_logged.count("ha.takeover_held") <= 1  # once per silent-peer episode
    assert events_logged.count("ha.gateway_confirm") <= probes
    if why:
        assert why in m.history[-1].reason
    was_active = role is Role.ACTIVE or why == "split brain"  # the last row: active once
    assert reached(m, Role.ACTIVE) == was_active


def test_without_a_tracked_gateway_no_probe() -> None:
    m = new()
    acts = feed(m, [*SILENT])
    assert role_of(m) is Role.ACTIVE and ProbeGateway() not in acts


# -- two machines talking ---------------------------------------------------------------------


class Pair:
    """Two machines ticking every ``dt``, each heartbeat delivered unless the link is cut."""

    def __init__(self, pa: Params, pb: Params, dt: float = 0.25) -> None:
        self.t, self.dt = 0.0, dt
        self.m = {"a": Machine(pa, 0.0), "b": Machine(pb, 0.0)}
        self.frozen: set[str] = set()
        self.link = True
        self.log: list[tuple[float, str, ft.Action]] = []
        for n, m in self.m.items():
            self._do(n, m.step(Start(0.0)))

    def _do(self, n: str, acts: list[ft.Action]) -> None:
        self.log += [(self.t, n, a) for a in acts]

    def restart(self, n: str, params: Params) -> None:
        self.m[n] = Machine(params, self.t)
        self._do(n, self.m[n].step(Start(self.t)))

    def beat(self, src: str) -> PeerHeard:
        m = self.m[src]
        return PeerHeard(
            self.t,
            m.p.node,
            m.role,
            m.p.priority,
            m.effective_priority(self.t),
            blocked=m.blocked,
            yielding=m.yielding,
            handover=m.handing_over,
        )

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / self.dt)):
            self.t += self.dt
            for n, m in self.m.items():
                if n not in self.frozen:
                    self._do(n, m.step(Tick(self.t)))
            for src, dst in (("a", "b"), ("b", "a")):
                up = self.link and src not in self.frozen and dst not in self.frozen
                if up and not self.m[src].silent and not self.m[src].done:
                    self._do(dst, self.m[dst].step(self.beat(src)))

    def roles(self) -> tuple[Role, Role]:
        return self.m["a"].role, self.m["b"].role

    def first(self, n: str, kind: type, after: float = 0.0) -> float:
        return min(t for t, who, a in self.log if who == n and isinstance(a, kind) and t >= after)

    def index(self, n: str, kind: type, after: float = 0.0) -> int:
        """Position of the first such action: orders actions taken at the same instant."""
        return min(
            i
            for i, (t, who, a) in enumerate(self.log)
            if who == n and isinstance(a, kind) and t >= after
        )


PA = Params(node="a", priority=150, interval=0.25, dead_after=3, preempt_delay=2.0)
PB = dataclasses.replace(PA, node="b", priority=100)


def test_pair_elects_higher_priority_and_stays() -> None:
    s = Pair(PA, PB)
    s.run(5)
    assert s.roles() == (Role.ACTIVE, Role.BACKUP)
    assert not reached(s.m["b"], Role.ACTIVE)


def test_pair_equal_priority_lower_name_wins() -> None:
    s = Pair(dataclasses.replace(PA, priority=100), PB)
    s.run(5)
    assert s.roles() == (Role.ACTIVE, Role.BACKUP)


def test_split_brain_resolves_within_one_interval() -> None:
    s = Pair(PA, PB)
    s.run(3)
    s.link = False
    s.run(3)
    assert s.roles() == (Role.ACTIVE, Role.ACTIVE)
    healed = s.t
    s.link = True
    s.run(PA.interval)
    assert s.roles() == (Role.ACTIVE, Role.BACKUP)
    assert s.first("b", ReleaseVips, healed) <= healed + PA.interval
    assert s.first("a", Announce, healed) <= healed + PA.interval
    s.run(5)
    assert s.roles() == (Role.ACTIVE, Role.BACKUP)


def test_stalled_active_yields_without_flapping() -> None:
    s = Pair(PA, PB)
    s.run(3)
    s.frozen.add("a")  # SIGSTOP of the active for longer than the dead interval
    s.run(2)
    assert s.m["b"].role is Role.ACTIVE
    resumed = s.t
    s.frozen.clear()
    s.run(0.5)
    assert s.roles() == (Role.BACKUP, Role.ACTIVE)  # a yields although its priority is higher
    assert s.first("a", ReleaseVips, resumed) <= resumed + PA.interval
    b_moves = len(s.m["b"].history)
    s.run(PA.preempt_delay + 0.5)  # then preemption brings a back, once
    assert s.roles() == (Role.ACTIVE, Role.BACKUP)
    assert len(s.m["b"].history) == b_moves + 1
    # b steps down for a preemption, and its log says so (not "split brain")
    assert s.m["b"].history[-1].reason.startswith("preempted by a"), s.m["b"].history[-1]


def test_short_backup_stall_does_not_seize() -> None:
    s = Pair(PA, PB)
    s.run(3)
    s.frozen.add("b")
    s.run(2)  # b frozen for 2 s (dead interval is 0.75 s)
    s.frozen.clear()
    s.run(3)
    assert s.roles() == (Role.ACTIVE, Role.BACKUP) and not reached(s.m["b"], Role.ACTIVE)


def test_planned_handover_is_make_before_break() -> None:
    s = Pair(PA, dataclasses.replace(PB, preempt=False))
    s.run(3)
    t0 = s.t
    s._do("a", s.m["a"].step(DrillHandover(s.t)))
    s.run(1)
    assert s.roles() == (Role.BACKUP, Role.ACTIVE)
    took, released = s.first("b", TakeVips, t0), s.first("a", ReleaseVips, t0)
    assert s.index("b", TakeVips, t0) < s.index("a", ReleaseVips, t0)
    assert took <= released <= took + PA.interval
    assert took <= t0 + PA.interval  # without waiting for the dead interval


def test_graceful_stop_hands_over() -> None:
    s = Pair(PA, PB)
    s.run(3)
    t0 = s.t
    s._do("a", s.m["a"].step(Stop(s.t)))
    s.run(1)
    assert s.m["a"].done and s.m["b"].role is Role.ACTIVE
    assert s.index("b", TakeVips, t0) < s.index("a", ReleaseVips, t0)


def logged(s: Pair, n: str) -> list[str]:
    return [a.event for _, who, a in s.log if who == n and isinstance(a, Log)]


@pytest.mark.parametrize("how", ["drill", "stop"])
def test_handover_overlap_is_not_split_brain(how: str) -> None:
    s = Pair(PA, dataclasses.replace(PB, preempt=False))
    s.run(3)
    s._do("a", s.m["a"].step(DrillHandover(s.t) if how == "drill" else Stop(s.t)))
    s.run(1)
    assert s.m["b"].role is Role.ACTIVE
    assert "ha.split_brain" not in logged(s, "b") + logged(s, "a")
    if how == "drill":  # the old active still holds the VIPs when b takes: said as what it is
        assert "ha.handover_overlap" in logged(s, "b")


def test_active_with_lost_gateway_hands_over_then_recovers() -> None:
    s = Pair(PA, PB)
    s.run(3)
    s._do("a", s.m["a"].step(fault(s.t)))
    s.run(1)
    assert s.roles() == (Role.FAULT, Role.ACTIVE)
    s._do("a", s.m["a"].step(fault(s.t, failed=False)))
    s.run(0.5)
    assert s.roles() == (Role.BACKUP, Role.ACTIVE)
    s.run(PA.preempt_delay + 0.5)
    assert s.roles() == (Role.ACTIVE, Role.BACKUP)


def test_no_healthy_servers_hands_over_to_healthy_peer() -> None:
    s = Pair(PA, PB)
    s.run(3)
    s._do("a", s.m["a"].step(LocalHealth(s.t, 0, 3)))
    s.m["b"].step(LocalHealth(s.t, 3, 3))
    orig = s.beat

    def beat(src: str) -> PeerHeard:
        return dataclasses.replace(orig(src), healthy=3 if src == "b" else 0)

    s.beat = beat  # type: ignore[method-assign]
    s.run(1)
    assert s.roles() == (Role.BACKUP, Role.ACTIVE)
    assert "handing over" in s.m["a"].history[-1].reason
    handover = [
        a for _, n, a in s.log if n == "a" and isinstance(a, Log) and a.event == "ha.handover"
    ]
    assert "no healthy real server" in handover[0].reason


def test_active_links_down_then_back_returns_by_preemption_only() -> None:
    s = Pair(PA, PB)
    s.run(3)
    s.link = False  # the active's links go down: its tracker reports it, heartbeats stop
    s._do("a", s.m["a"].step(LocalFault(s.t, "interface:eth0", True, True, "eth0 down")))
    s.run(2)
    assert s.roles() == (Role.FAULT, Role.ACTIVE)
    back = s.t
    s._do("a", s.m["a"].step(LocalFault(s.t, "interface:eth0", False, True, "eth0 up")))
    s.link = True
    s.run(1)
    assert s.roles() == (Role.BACKUP, Role.ACTIVE)  # no flap back at once
    s.run(PA.preempt_delay + 0.5)
    assert s.roles() == (Role.ACTIVE, Role.BACKUP)
    assert s.first("a", TakeVips, back) >= back + PA.preempt_delay


def test_partition_with_lost_gateway_backup_stays_out() -> None:
    s = Pair(PA, PB)
    s.run(3)
    s._do("b", s.m["b"].step(fault(s.t)))
    s.link = False
    s.run(5)
    assert s.roles() == (Role.ACTIVE, Role.FAULT)


def test_fault_drill_pair() -> None:
    s = Pair(PA, dataclasses.replace(PB, preempt=False))
    s.run(3)
    t0 = s.t
    s._do("a", s.m["a"].step(DrillFault(s.t, 2.0)))
    s.run(1.5)
    assert s.roles() == (Role.FAULT, Role.ACTIVE)
    assert t0 + PA.dead_interval <= s.first("b", TakeVips, t0) <= t0 + PA.dead_interval + 0.5
    s.run(1.5)
    assert s.roles() == (Role.BACKUP, Role.ACTIVE)
