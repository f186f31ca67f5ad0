"""Table-driven tests of the pure rise/fall tracker: every edge of the state machine, on the one
hysteresis counter that health checks and the HA gateway tracking share."""

from __future__ import annotations

import pytest

from hacontrol.ha.track import FallCounter
from hacontrol.health.state import Health, ProbeResult
from hacontrol.health.tracker import Hysteresis, Tracker

U, UP, D = Health.UNKNOWN, Health.UP, Health.DOWN


def res(ok: bool, reason: str = "") -> ProbeResult:
    return ProbeResult(
        ok=ok, reason=reason or ("connected" if ok else "connection refused"), latency=0.001
    )


# (name, rise, fall, results "+"/"-", expected state after each, expected change per step)
CASES: list[tuple[str, int, int, str, list[Health]]] = [
    ("unknown->up on first success, even with rise=3", 3, 3, "+", [UP]),
    ("unknown stays unknown below fall", 2, 3, "--", [U, U]),
    ("unknown->down after fall failures", 2, 3, "---", [U, U, D]),
    ("unknown fall=1 -> down at once", 2, 1, "-", [D]),
    ("unknown: success after some failures -> up", 2, 3, "--+", [U, U, UP]),
    ("up->down after fall consecutive failures", 2, 3, "+---", [UP, UP, UP, D]),
    ("up: failures not consecutive never go down", 2, 3, "+--+--+", [UP] * 7),
    ("up fall=1 -> down on first failure", 2, 1, "+-", [UP, D]),
    ("down->up after rise consecutive successes", 2, 2, "--++", [U, D, D, UP]),
    ("down: successes not consecutive stay down", 3, 1, "-++-++-", [D] * 7),
    ("down rise=1 -> up on first success", 1, 1, "-+", [D, UP]),
    ("flap cycle", 2, 2, "+--++--", [UP, UP, D, D, UP, UP, D]),
    ("down stays down on more failures", 2, 2, "-----", [U, D, D, D, D]),
    ("up stays up on more successes", 2, 2, "++++", [UP] * 4),
]


@pytest.mark.parametrize(
    ("name", "rise", "fall", "seq", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_transitions(name: str, rise: int, fall: int, seq: str, expected: list[Health]) -> None:
    t = Tracker(rise, fall, now=0.0)
    assert t.state is U
    prev = U
    for i, (ch, want) in enumerate(zip(seq, expected, strict=True)):
        change = t.observe(res(ch == "+"), now=float(i + 1))
        assert t.state is want, f"step {i}: {seq[: i + 1]}"
        assert change == (want if want is not prev else None), f"step {i}: change"
        if change is not None:
            assert t.status().since == float(i + 1)
        prev = want


def test_counters_and_status() -> None:
    t = Tracker(2, 3, now=5.0)
    st = t.status()
    assert (st.state, st.since, st.last_ok, st.last_at, st.successes, st.failures) == (
        U,
        5.0,
        None,
        None,
        0,
        0,
    )
    assert st.last_reason == "not checked yet"
    t.observe(res(True), now=6.0)
    t.observe(res(False, "timeout after 0.5s"), now=7.0)
    t.observe(res(False, "timeout after 0.5s"), now=8.0)
    st = t.status()
    assert (st.state, st.successes, st.failures, st.last_ok) == (UP, 0, 2, False)
    assert st.last_reason == "timeout after 0.5s"
    assert st.last_at == 8.0 and st.last_latency == 0.001 and st.since == 6.0
    t.observe(res(False), now=9.0)
    st = t.status()
    assert (st.state, st.failures, st.since) == (D, 3, 9.0)  # counters run on across a change
    t.observe(res(True), now=10.0)
    assert (t.status().successes, t.status().failures) == (1, 0)


@pytest.mark.parametrize(
    ("state_seq", "new_rise", "new_fall", "next_seq", "expected"),
    [
        # keeps UP and its failure count; the lower fall applies from the next observation
        ("+--", 2, 3, "-", D),
        ("+-", 2, 1, "", UP),  # reconfigure alone never changes state
        ("+-", 2, 1, "-", D),
        ("+--", 2, 5, "-", UP),  # raised fall: 3 failures no longer enough
        ("---", 2, 2, "", D),
        ("---+", 3, 2, "+", D),  # raised rise: 2 successes not enough now
        ("---+", 3, 2, "++", UP),
        ("-", 2, 3, "", U),  # UNKNOWN stays UNKNOWN
    ],
)
def test_reconfigure_keeps_state(
    state_seq: str, new_rise: int, new_fall: int, next_seq: str, expected: Health
) -> None:
    t = Tracker(2, 3, now=0.0)
    for ch in state_seq:
        t.observe(res(ch == "+"), now=1.0)
    before = t.status()
    t.reconfigure(new_rise, new_fall)
    after = t.status()
    assert before == after
    assert (t.rise, t.fall) == (new_rise, new_fall)
    for ch in next_seq:
        t.observe(res(ch == "+"), now=2.0)
    assert t.state is expected


@pytest.mark.parametrize(("rise", "fall"), [(0, 1), (1, 0), (-1, 3), (True, 2), (2, 1.5)])
def test_bad_thresholds(rise: int, fall: int) -> None:
    with pytest.raises(ValueError):
        Tracker(rise, fall, now=0.0)
    t = Tracker(1, 1, now=0.0)
    with pytest.raises(ValueError):
        t.reconfigure(rise, fall)
    assert (t.rise, t.fall) == (1, 1)


def test_force() -> None:
    t = Tracker(2, 2, now=0.0)
    assert t.force(UP, "no check", now=1.0) is UP
    assert t.force(UP, "no check", now=2.0) is None
    st = t.status()
    assert (st.state, st.since, st.last_reason) == (UP, 1.0, "no check")


@pytest.mark.parametrize(
    ("name", "rise", "fall", "seq", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_hysteresis_alone(
    name: str, rise: int, fall: int, seq: str, expected: list[Health]
) -> None:
    h = Hysteresis(rise, fall)
    for ch, want in zip(seq, expected, strict=True):
        before = h.state
        change = h.observe(ch == "+")
        assert h.state is want and change == (want if want is not before else None)


@pytest.mark.parametrize("fall", [1, 2, 3])
@pytest.mark.parametrize("seq", ["+", "---+", "-+-+--", "+---++", "--+---+", "------"])
def test_gateway_tracking_is_the_same_counter_with_rise_1(fall: int, seq: str) -> None:
    h, fc = Hysteresis(1, fall), FallCounter("gateway:192.0.2.1", "gateway 192.0.2.1", fall)
    for ch in seq:
        change, ev = h.observe(ch == "+"), fc.observe(ch == "+")
        assert (ev is None) == (change is None)
        if ev is not None:
            assert ev.failed == (change is D) and ev.reason.endswith("reachable")
        assert fc.failed == (None if h.state is U else h.state is D)
