"""The VRRPv3 machine (RFC 5798 §6.4), table-driven: each case is a list of (event, expected
actions, expected state). The cases together take every edge of ``TRANSITIONS`` (checked), and
the RFC's timers (skew time, master down interval) are asserted from the formula."""

from __future__ import annotations

import ipaddress

import pytest

from hacontrol.ha import vrrp_fsm as vf

S = vf.State
ME = ipaddress.IPv4Address("192.0.2.11")
LOW = ipaddress.IPv4Address("192.0.2.5")
HIGH = ipaddress.IPv4Address("192.0.2.20")


def P(**kw: object) -> vf.Params:
    base: dict[str, object] = {"priority": 100, "adver_cs": 100, "address": ME}
    return vf.Params(**{**base, **kw})  # type: ignore[arg-type]


def adv(now: float, prio: int, src: ipaddress.IPv4Address = HIGH, cs: int = 100) -> vf.Received:
    return vf.Received(now, src, prio, cs)


def kinds(actions: list[vf.Action]) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, vf.Transition):
            out.append(f"{a.from_state.name}->{a.to_state.name}")
        elif isinstance(a, vf.Send):
            out.append(f"send{a.priority}")
        else:
            out.append(type(a).__name__.lower())
    return out


# master down for priority 100 at 1 s: 3 + (156/256) = 3.609375 s
MD = 3 + 156 / 256
SKEW = 156 / 256

CASES: dict[str, tuple[vf.Params, list[tuple[vf.Event, list[str], S]]]] = {
    "start then no master: take over at Master_Down_Interval": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (vf.Tick(MD - 0.01), [], S.BACKUP),
        (vf.Tick(MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
        (vf.Tick(MD + 1.0), ["send100"], S.MASTER),
    ]),
    "a higher-priority master keeps us backup": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (adv(3.0, 150), [], S.BACKUP),
        (vf.Tick(MD + 0.5), [], S.BACKUP),  # the advert at 3.0 pushed the timer to 6.6
        (vf.Tick(3.0 + MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
    ]),
    "preempt: a lower-priority master is ignored, so we take over": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (adv(3.0, 50), [], S.BACKUP),
        (vf.Tick(MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
        (adv(MD + 0.1, 50), [], S.MASTER),  # master: a lower priority is discarded
    ]),
    "nopreempt: a lower-priority master is accepted": (P(preempt=False), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (adv(3.0, 50), [], S.BACKUP),
        (vf.Tick(MD), [], S.BACKUP),
    ]),
    "preempt_delay: accepted until the delay after start has passed": (P(preempt_delay=5.0), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (adv(3.0, 50), [], S.BACKUP),
        (adv(4.5, 50), [], S.BACKUP),
        (vf.Tick(4.5 + MD - 0.01), [], S.BACKUP),
        (adv(6.0, 50), [], S.BACKUP),  # past the delay: ignored, the timer of 4.5 runs out
        (vf.Tick(4.5 + MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
    ]),
    "priority 0 from the master: take over after skew time": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (adv(1.0, 150), [], S.BACKUP),
        (adv(2.0, 0), ["log"], S.BACKUP),
        (vf.Tick(2.0 + SKEW - 0.001), [], S.BACKUP),
        (vf.Tick(2.0 + SKEW), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
    ]),
    "master yields to a higher priority (preemption by the peer)": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (vf.Tick(MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
        (adv(5.0, 150), ["MASTER->BACKUP", "release"], S.BACKUP),
    ]),
    "equal priority: the higher primary address wins": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (vf.Tick(MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
        (adv(5.0, 100, LOW), [], S.MASTER),
        (adv(5.5, 100, HIGH), ["MASTER->BACKUP", "release"], S.BACKUP),
    ]),
    "master answers a priority 0 with an advertisement at once": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (vf.Tick(MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
        (adv(4.0, 0), ["send100"], S.MASTER),
    ]),
    "clean stop as master: priority 0, release": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (vf.Tick(MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
        (vf.Stop(5.0), ["send0", "release", "MASTER->INITIALIZE"], S.INITIALIZE),
        (vf.Tick(9.0), [], S.INITIALIZE),
    ]),
    "stop as backup: nothing sent": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (vf.Stop(1.0), ["BACKUP->INITIALIZE"], S.INITIALIZE),
    ]),
    "fault as master: priority 0, release; cleared: backup again": (P(), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (vf.Tick(MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
        (vf.Fault(5.0, True, "eth1 down"), ["send0", "release", "MASTER->FAULT"], S.FAULT),
        (vf.Tick(20.0), [], S.FAULT),
        (vf.Fault(21.0, False, "eth1 up"), ["FAULT->BACKUP"], S.BACKUP),
        (vf.Tick(21.0 + MD), ["BACKUP->MASTER", "send100", "take"], S.MASTER),
    ]),
    "fault at start and as backup, stop in fault": (P(), [
        (vf.Fault(0.0, True, "eth1 down"), [], S.INITIALIZE),
        (vf.Start(0.0), ["INITIALIZE->FAULT"], S.FAULT),
        (vf.Fault(1.0, False, "up"), ["FAULT->BACKUP"], S.BACKUP),
        (vf.Fault(2.0, True, "down"), ["BACKUP->FAULT"], S.FAULT),
        (vf.Stop(3.0), ["FAULT->INITIALIZE"], S.INITIALIZE),
    ]),
    "the master's interval is learned (a slower master)": (P(priority=200, adver_cs=10), [
        (vf.Start(0.0), ["INITIALIZE->BACKUP"], S.BACKUP),
        (adv(0.1, 250, cs=100), [], S.BACKUP),
        (vf.Tick(0.1 + 0.3 + 0.56 * 0.1), [], S.BACKUP),  # our own 10 cs would have fired
        (vf.Tick(0.1 + 3 + 56 / 256), ["BACKUP->MASTER", "send200", "take"], S.MASTER),
    ]),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_case(name: str) -> None:
    params, steps = CASES[name]
    m = vf.Machine(params)
    for i, (ev, want, state) in enumerate(steps):
        assert kinds(m.step(ev)) == want, f"step {i}: {ev}"
        assert m.state is state, f"step {i}: {ev}"


def test_cases_cover_every_transition() -> None:
    seen = set()
    for params, steps in CASES.values():
        m = vf.Machine(params)
        for ev, _, _ in steps:
            for a in m.step(ev):
                if isinstance(a, vf.Transition):
                    seen.add((a.from_state, a.to_state))
    assert seen == vf.TRANSITIONS


@pytest.mark.parametrize(("prio", "cs", "skew", "down"), [
    (100, 100, 0.609375, 3.609375), (254, 100, 2 / 256, 3 + 2 / 256), (1, 10, 0.0996, 0.3996),
    (150, 400, 4 * 106 / 256, 12 + 4 * 106 / 256),
])  # fmt: skip
def test_rfc_timers(prio: int, cs: int, skew: float, down: float) -> None:
    m = vf.Machine(P(priority=prio, adver_cs=cs))
    assert m.skew == pytest.approx(skew, abs=1e-4)
    assert m.master_down == pytest.approx(down, abs=1e-4)


@pytest.mark.parametrize(("events", "reason"), [
    ([adv(1.0, 50)], "preempt: the master's priority 50 is lower than ours (100)"),
    ([adv(1.0, 150), adv(2.0, 0)], "the master stopped (priority 0)"),
    ([], "no advertisement for 3.61s (Master_Down_Interval)"),
    ([adv(1.0, 50), adv(2.0, 150)], "no advertisement for 3.61s"),
])  # fmt: skip
def test_takeover_reason_says_why(events: list[vf.Received], reason: str) -> None:
    m = vf.Machine(P())
    m.step(vf.Start(0.0))
    for ev in events:
        m.step(ev)
    assert m.deadline is not None
    (t,) = [a for a in m.step(vf.Tick(m.deadline)) if isinstance(a, vf.Transition)]
    assert reason in t.reason
